"""Extracts one case of a golden file (tensors named <case>/<name>) into an inputs
file for `taiyi eval` (tensors named <name>).
Usage: golden_case.py GOLDEN.safetensors CASE OUT.safetensors"""
import sys

import safetensors_lite

golden, case, out = sys.argv[1:4]
tensors = {k[len(case) + 1 :]: v for k, v in safetensors_lite.read(golden).items() if k.startswith(case + "/")}
if not tensors:
    sys.exit(f"{golden}: no case '{case}'")
safetensors_lite.write(out, tensors)
