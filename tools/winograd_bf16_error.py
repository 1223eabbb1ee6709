#!/usr/bin/env python3
"""Error of a 3x3 convolution in bf16: direct (input and weights rounded) against Winograd F(2x2,3x3)
and F(4x4,3x3) with the transformed input B^T d B and weights G g G^T rounded to bf16, each against
the exact convolution of the f32 values (float64), as relative L2. Why conv2d_winograd_bf16_avx512.cpp
uses F(2x2,3x3): its transforms hold only 0, +-1 (and 1/2 in G), so rounding in the transform
domain costs about 1.6x the direct error; F(4x4,3x3)'s coefficients (up to 5 in B, 8 in A) make it
about 10x.

  PY=$(bench/peers/setup.sh | tail -1)   # numpy
  $PY tools/winograd_bf16_error.py [--cin 320] [--cout 64] [--size 16]

Inputs are SiLU of standard normals (what a UNet convolution reads after GroupNorm + SiLU), weights
normal with variance 1 / (9 Cin).
"""
import argparse

import numpy as np


def bf16(a):
    """Rounds to bf16 (nearest even) and returns float64."""
    u = np.asarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return u.view(np.float32).astype(np.float64)


BT2 = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], float)
G2 = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], float)
AT2 = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], float)
BT4 = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], float)
G4 = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
               [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], float)
AT4 = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], float)


def conv_direct(x, w):
    """Same-padded 3x3 convolution of x [C, H, W] with w [O, C, 3, 3]."""
    c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    out = np.zeros((w.shape[0], h, wd))
    for ky in range(3):
        for kx in range(3):
            out += np.einsum("oc,chw->ohw", w[:, :, ky, kx], xp[:, ky:ky + h, kx:kx + wd])
    return out


def conv_winograd(x, w, bt, g, at, m, rnd):
    """The same convolution by F(m x m, 3x3), rnd applied to V and U."""
    c, h, wd = x.shape
    a = m + 2
    xp = np.pad(x, ((0, 0), (1, 1 + a), (1, 1 + a)))
    u = rnd(np.einsum("ik,ockl,jl->ocij", g, w, g))
    nty, ntx = h // m, wd // m
    tiles = np.zeros((c, nty, ntx, a, a))
    for ty in range(nty):
        for tx in range(ntx):
            tiles[:, ty, tx] = xp[:, ty * m:ty * m + a, tx * m:tx * m + a]
    v = rnd(np.einsum("ik,ctskl,jl->ctsij", bt, tiles, bt))
    y = np.einsum("ik,otskl,jl->otsij", at, np.einsum("ocij,ctsij->otsij", u, v), at)
    out = np.zeros((w.shape[0], h, wd))
    for ty in range(nty):
        for tx in range(ntx):
            out[:, ty * m:ty * m + m, tx * m:tx * m + m] = y[:, ty, tx]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cin", type=int, default=320)
    ap.add_argument("--cout", type=int, default=64)
    ap.add_argument("--size", type=int, default=16, help="image edge, a multiple of 4")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.cin, args.size, args.size)).astype(np.float32)
    x = (x / (1 + np.exp(-x))).astype(np.float32)
    w = (rng.standard_normal((args.cout, args.cin, 3, 3)) / np.sqrt(9 * args.cin)).astype(np.float32)
    xd, wd = x.astype(np.float64), w.astype(np.float64)
    ref = conv_direct(xd, wd)

    def err(y):
        return np.linalg.norm(y - ref) / np.linalg.norm(ref)

    print(f"Cin {args.cin}, Cout {args.cout}, {args.size}x{args.size}: relative L2 against the exact convolution")
    print(f"  direct, x and w rounded to bf16       {err(conv_direct(bf16(x), bf16(w))):.2e}")
    print(f"  F(2x2,3x3), V and U rounded to bf16   {err(conv_winograd(xd, wd, BT2, G2, AT2, 2, bf16)):.2e}")
    print(f"  F(4x4,3x3), V and U rounded to bf16   {err(conv_winograd(xd, wd, BT4, G4, AT4, 4, bf16)):.2e}")


if __name__ == "__main__":
    main()
