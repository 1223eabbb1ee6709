#!/usr/bin/env python3
"""bf16's error against fp32, measured with taiyi itself (graph mode, `--dtype bf16`).

On a CPU with bf16 (AMX or avx512_bf16) this measures oneDNN's bf16 kernels. On one without, set
TAIYI_BF16_EMULATE=1 (the default here when the CPU lacks bf16): the f32 kernels then get weights
rounded to bf16 and round every convolution's and linear's input to bf16, the same arithmetic up to
the order of the f32 accumulation (graph/passes/prepack_weights.cpp).

  PY=$(bench/peers/setup.sh | tail -1)   # numpy + safetensors (+ Pillow for the image)
  $PY tools/bf16_error.py                           # the fixtures (tests/fixtures)
  $PY tools/bf16_error.py --full bench/out/taiyi-random   # + a full-size UNet step, VAE, BERT

Prints, per case, fp32 and bf16 against the golden (diffusers) output and bf16 against fp32:
max |diff| and relative L2 (||a - b|| / ||b||).
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
from safetensors.numpy import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAIYI = os.environ.get("TAIYI", os.path.join(ROOT, "build", "taiyi"))
FIX = os.path.join(ROOT, "tests", "fixtures")


def cpu_has_bf16():
    flags = open("/proc/cpuinfo").read()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def rel_l2(a, b):
    return float(np.linalg.norm((a - b).ravel()) / max(np.linalg.norm(b.ravel()), 1e-30))


def eval_taiyi(component, model, inputs, dtype, tmp):
    inp, out = os.path.join(tmp, "in.safetensors"), os.path.join(tmp, f"out-{dtype}.safetensors")
    save_file({k: np.ascontiguousarray(v) for k, v in inputs.items()}, inp)
    subprocess.run([TAIYI, "eval", component, "-m", model, "-i", inp, "-o", out, "--dtype", dtype], check=True,
                   stdout=subprocess.DEVNULL)
    return load_file(out)


def report(name, f32, bf16, golden=None):
    cols = [f"{name:44s}"]
    if golden is not None:
        cols.append(f"fp32 vs golden max {np.abs(f32 - golden).max():.2e} relL2 {rel_l2(f32, golden):.2e}")
        cols.append(f"bf16 vs golden max {np.abs(bf16 - golden).max():.2e} relL2 {rel_l2(bf16, golden):.2e}")
    cols.append(f"bf16 vs fp32 max {np.abs(bf16 - f32).max():.2e} relL2 {rel_l2(bf16, f32):.2e} "
                f"(|fp32| max {np.abs(f32).max():.2f})")
    print(" | ".join(cols), flush=True)


def fixtures(tmp):
    model = os.path.join(FIX, "tiny-taiyi")
    g = load_file(os.path.join(FIX, "golden", "unet.safetensors"))
    for case in sorted({k.split("/")[0] for k in g}):
        ins = {k: g[f"{case}/{k}"] for k in ("sample", "timestep", "encoder_hidden_states")}
        r = [eval_taiyi("unet", model, ins, d, tmp)["noise_pred"] for d in ("fp32", "bf16")]
        report(f"fixture unet {case}", *r, g[f"{case}/noise_pred"])
    g = load_file(os.path.join(FIX, "golden", "vae.safetensors"))
    for case in ("b1_8x8", "b2_8x12"):
        r = [eval_taiyi("vae_decode", model, {"latents": g[f"decode/{case}/latents"]}, d, tmp)["image"]
             for d in ("fp32", "bf16")]
        report(f"fixture vae_decode {case}", *r, g[f"decode/{case}/image"])
    g = load_file(os.path.join(FIX, "golden", "text_encoder.safetensors"))
    r = [eval_taiyi("text_encoder", model, {"input_ids": g["input_ids"]}, d, tmp)["last_hidden_state"]
         for d in ("fp32", "bf16")]
    report("fixture text_encoder", *r, g["last_hidden_state"])
    # The fixture pipeline, through the CLI: the 8-bit image.
    imgs = []
    for d in ("fp32", "bf16"):
        png = os.path.join(tmp, f"img-{d}.png")
        subprocess.run([TAIYI, "txt2img", "-m", model, "-p", "滔滔江水, 连绵不绝, 唯美, 插画", "--steps", "20",
                        "-s", "42", "-W", "64", "-H", "64", "-q", "-o", png, "--dtype", d], check=True)
        from PIL import Image
        imgs.append(np.asarray(Image.open(png)).astype(np.int32))
    print(f"{'fixture txt2img 64x64, 20 steps PNDM, seed 42':44s} | bf16 vs fp32 pixels max |diff| "
          f"{np.abs(imgs[1] - imgs[0]).max()} of 255, mean {np.abs(imgs[1] - imgs[0]).mean():.3f}", flush=True)


def full(model, tmp):
    rng = np.random.default_rng(0)
    ins = {"sample": rng.standard_normal((2, 4, 64, 64), dtype=np.float32),
           "timestep": np.array([801], dtype=np.int64),
           "encoder_hidden_states": rng.standard_normal((2, 512, 768), dtype=np.float32)}
    r = [eval_taiyi("unet", model, ins, d, tmp)["noise_pred"] for d in ("fp32", "bf16")]
    report("full unet 64x64 b2 ctx512 t801", *r)
    lat = {"latents": rng.standard_normal((1, 4, 64, 64), dtype=np.float32)}
    r = [eval_taiyi("vae_decode", model, lat, d, tmp)["image"] for d in ("fp32", "bf16")]
    report("full vae_decode 512x512", *r)
    ids = np.zeros((2, 512), dtype=np.int64)
    ids[:, 0], ids[:, 1:20], ids[:, 20] = 101, rng.integers(1000, 20000, (2, 19)), 102
    r = [eval_taiyi("text_encoder", model, {"input_ids": ids}, d, tmp)["last_hidden_state"] for d in ("fp32", "bf16")]
    report("full text_encoder 2x512", *r)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", metavar="MODEL_DIR", help="also a full-size model folder (random weights will do)")
    ap.add_argument("--no-fixtures", action="store_true")
    args = ap.parse_args()
    if not cpu_has_bf16():
        os.environ.setdefault("TAIYI_BF16_EMULATE", "1")
    mode = "oneDNN bf16" if cpu_has_bf16() else (
        "emulated (TAIYI_BF16_EMULATE=1)" if os.environ.get("TAIYI_BF16_EMULATE", "0") != "0" else "f32 fallback")
    print(f"bf16 here: {mode}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_fixtures:
            fixtures(tmp)
        if args.full:
            full(args.full, tmp)


if __name__ == "__main__":
    sys.exit(main())
