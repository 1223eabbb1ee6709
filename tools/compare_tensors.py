"""Prints the max abs difference between two tensors in safetensors files and fails
above a bound. Usage: compare_tensors.py A.safetensors NAME_A B.safetensors NAME_B [BOUND]"""
import sys

import safetensors_lite

a_file, a_name, b_file, b_name = sys.argv[1:5]
bound = float(sys.argv[5]) if len(sys.argv) > 5 else 1e-4
_, a_shape, a = safetensors_lite.read(a_file)[a_name]
_, b_shape, b = safetensors_lite.read(b_file)[b_name]
if a_shape != b_shape:
    sys.exit(f"shape {a_shape} != {b_shape}")
err = max(abs(x - y) for x, y in zip(a, b))
print(f"{a_name}: max abs error vs diffusers {err:.3g} (bound {bound:g}) over {len(a)} values")
if not err <= bound:
    sys.exit(1)
