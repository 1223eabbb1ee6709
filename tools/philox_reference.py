#!/usr/bin/env python3
"""Reference values for taiyi's PhiloxGenerator (tests/pipeline/generator_test.cpp).

Re-implements AUTOMATIC1111 stable-diffusion-webui modules/rng_philox.py (the "NV" RNG that imitates
torch.randn on CUDA) with plain Python integers and floats instead of numpy, following numpy's type rules:
the Philox words are uint32 (multiply in uint64, split into hi/lo words), the two float32 constants are
rounded to float32 once, and the Box-Muller arithmetic runs in float64 (uint32 array times a float32 array
promotes to float64), rounded to float32 at the end.

    python3 tools/philox_reference.py     # prints C++ initialisers of float32 bit patterns
"""

import math
import struct

M = (0xD2511F53, 0xCD9E8D57)
W = (0x9E3779B9, 0xBB67AE85)
MASK32 = 0xFFFFFFFF


def f32(x):
    """Rounds a Python float to float32 (as numpy's float32 conversion does)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def f32_bits(x):
    return struct.unpack("<I", struct.pack("<f", x))[0]


TWO_POW32_INV = f32(2.3283064e-10)
TWO_POW32_INV_2PI = f32(2.3283064e-10 * 6.2831855)


def philox4x32(counter, key, rounds=10):
    c = list(counter)
    k0, k1 = key
    for r in range(rounds):
        p0 = c[0] * M[0]
        p1 = c[2] * M[1]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & MASK32, (p0 >> 32) ^ c[3] ^ k1, p0 & MASK32]
        if r + 1 < rounds:
            k0 = (k0 + W[0]) & MASK32
            k1 = (k1 + W[1]) & MASK32
    return c


def box_muller(x, y):
    u = x * TWO_POW32_INV + TWO_POW32_INV / 2
    v = y * TWO_POW32_INV_2PI + TWO_POW32_INV_2PI / 2
    s = math.sqrt(-2.0 * math.log(u))
    return f32(s * math.sin(v))


class Generator:
    def __init__(self, seed):
        self.seed = seed
        self.offset = 0

    def randn(self, n):
        key = (self.seed & MASK32, (self.seed >> 32) & MASK32)
        out = []
        for i in range(n):
            g = philox4x32((self.offset, 0, i, 0), key)
            out.append(box_muller(g[0], g[1]))
        self.offset += 1
        return out


def emit(name, values):
    print(f"// {name}: " + " ".join(f"{v:.8g}" for v in values))
    print("{" + ", ".join(f"0x{f32_bits(v):08x}u" for v in values) + "},")


def main():
    # Random123 kat_vectors for the raw counter function, re-derived here.
    for ctr, key in [((0, 0, 0, 0), (0, 0)), ((MASK32,) * 4, (MASK32, MASK32)),
                     ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0))]:
        print("// philox4x32_10", [f"{w:08x}" for w in ctr], [f"{w:08x}" for w in key], "->",
              [f"{w:08x}" for w in philox4x32(ctr, key)])
    g = Generator(0)
    emit("seed 0, first call, 12 values (rng_philox.py docstring: shape (3, 4))", g.randn(12))
    emit("seed 0, second call, 5 values", g.randn(5))
    emit("seed 42, first call, 8 values", Generator(42).randn(8))
    emit("seed 2**32 + 42, first call, 8 values (the high word is part of the key)", Generator(2**32 + 42).randn(8))
    emit("seed 2**64 - 1, first call, 4 values", Generator(2**64 - 1).randn(4))


if __name__ == "__main__":
    main()
