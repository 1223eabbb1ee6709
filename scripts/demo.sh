#!/usr/bin/env bash
# The main job on the tiny Taiyi model bundled in the repo (tests/fixtures/tiny-taiyi):
# builds taiyi, runs the UNet and the VAE decoder on the golden inputs through
# `taiyi eval`, checks them against diffusers' outputs, and times a UNet step of
# the full-size Taiyi config with random weights.
set -euo pipefail
cd "$(dirname "$0")/.."
taiyi=$(scripts/build.sh)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
model=tests/fixtures/tiny-taiyi
python3 tools/golden_case.py tests/fixtures/golden/unet.safetensors b2_8x8_t801 "$out/unet_in.safetensors"
"$taiyi" eval unet --model "$model" --inputs "$out/unet_in.safetensors" --output "$out/unet_out.safetensors"
python3 tools/compare_tensors.py "$out/unet_out.safetensors" noise_pred \
  tests/fixtures/golden/unet.safetensors b2_8x8_t801/noise_pred
"$taiyi" bench unet --model configs/taiyi-v0.1 --random-weights --width 256 --height 256 --batch 2 \
  --context 77 --repeat 1 --json
