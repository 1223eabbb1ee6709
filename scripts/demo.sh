#!/usr/bin/env bash
# The main job: builds taiyi and runs a full txt2img on the tiny Taiyi model bundled in
# the repo (tests/fixtures/tiny-taiyi: real Taiyi layout and tokenizer, tiny random
# weights, so the picture is noise), writing taiyi-demo.png with its parameters and
# printing per-stage timings. Then it times a UNet step of the full-size Taiyi config
# with random weights. Extra arguments go to the txt2img run.
set -euo pipefail
cd "$(dirname "$0")/.."
taiyi=$(scripts/build.sh)
"$taiyi" info --model tests/fixtures/tiny-taiyi
"$taiyi" txt2img --model tests/fixtures/tiny-taiyi --prompt "飞流直下三千尺, 疑是银河落九天, 唯美, 插画" \
  --negative-prompt "低质量, 模糊" --steps 20 --cfg-scale 7.5 --seed 42 --output taiyi-demo.png "$@"
"$taiyi" bench unet --model configs/taiyi-v0.1 --random-weights --width 256 --height 256 --batch 2 \
  --context 77 --repeat 1 --json
