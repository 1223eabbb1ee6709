#!/usr/bin/env python3
"""The fit behind gelu16 (src/taiyi/ops/cpu/bf16_pairs_avx512.h): the exact GELU g Phi(g) as
g / (1 + e^-l(g)), l = logit(Phi) = ln(Phi(g) / Phi(-g)), an odd function, fitted by g P(g^2) with
P of degree 5 on [-4.5, 4.5] (g is clamped there: past it Phi is within 3.4e-6 of its end value).
The fit minimises the largest error of l (iteratively reweighted least squares): for g < 0 that is
the relative error of Phi, for g > 0 it shrinks by 1 - Phi. Prints the coefficients of -log2(e) P
(highest first, the order of the kernel's Horner steps), rounded to f32, and the errors of the
whole formula evaluated in float64 with those coefficients (the kernel adds exp2_avx512's 7.5e-5
and vrcp14ps' 2^-14 relative error).

  PY=$(bench/peers/setup.sh | tail -1)   # numpy
  $PY tools/gelu_fit.py [--clamp 4.5] [--terms 6]
"""
import argparse
import math

import numpy as np

LOG2E = 1.4426950408889634


def phi(x):
    return 0.5 * np.vectorize(math.erfc)(-x / math.sqrt(2.0))


def fit(clamp, terms, iterations=300):
    """Coefficients c (f32, lowest first) of -log2(e) P, and the largest error of l."""
    x = np.linspace(-clamp, clamp, 40001)
    target = np.log(phi(x)) - np.log(phi(-x))
    a = np.stack([x ** (2 * i + 1) for i in range(terms)], 1)
    w = np.ones_like(x)
    best = None
    for _ in range(iterations):
        c, *_ = np.linalg.lstsq(a * w[:, None], target * w, rcond=None)
        c32 = (-LOG2E * c).astype(np.float32)
        err = np.abs(a @ c32.astype(np.float64) / -LOG2E - target)
        if best is None or err.max() < best[0]:
            best = (err.max(), c32)
        w = w * (1 + 2 * err / err.max())
    return best[1], best[0]


def gelu_fitted(g, c, clamp):
    gc = np.clip(g, -clamp, clamp)
    t = gc * gc
    p = np.zeros_like(g)
    for coef in reversed(c.astype(np.float64)):
        p = p * t + coef
    return g / (1 + np.exp2(p * gc))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clamp", type=float, default=4.5)
    ap.add_argument("--terms", type=int, default=6)
    args = ap.parse_args()
    c, err_l = fit(args.clamp, args.terms)
    print("largest error of l on the fit's range: %.3g" % err_l)
    print("coefficients of -log2(e) P, highest first:")
    for coef in reversed(c):
        print("  %r" % float(coef))
    g = np.linspace(-12, 12, 240001)
    exact = g * phi(g)
    got = gelu_fitted(g, c, args.clamp)
    err = np.abs(got - exact)
    big = np.abs(exact) > 1e-3
    print("largest relative error where |gelu| > 1e-3: %.3g" % (err[big] / np.abs(exact[big])).max())
    print("largest error / |g|: %.3g" % (err / np.maximum(np.abs(g), 1e-30)).max())


if __name__ == "__main__":
    main()
