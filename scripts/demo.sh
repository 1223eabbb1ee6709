#!/usr/bin/env bash
# The main job: builds taiyi and runs a full txt2img on the tiny Taiyi model bundled in
# the repo (tests/fixtures/tiny-taiyi: real Taiyi layout and tokenizer, tiny random
# weights, so the picture is noise) in eager and in graph mode, writing taiyi-demo-eager.png
# and taiyi-demo.png with their parameters and printing per-stage timings. Then it times a
# UNet step of the full-size Taiyi config with random weights. Extra arguments go to txt2img.
set -euo pipefail
cd "$(dirname "$0")/.."
taiyi=$(scripts/build.sh)
"$taiyi" info --model tests/fixtures/tiny-taiyi
# The same model code both ways: eager (op by op), then graph (traced, optimised, replayed).
for mode in eager graph; do
  out=taiyi-demo.png
  [ "$mode" = eager ] && out=taiyi-demo-eager.png
  "$taiyi" txt2img --model tests/fixtures/tiny-taiyi --prompt "飞流直下三千尺, 疑是银河落九天, 唯美, 插画" \
    --negative-prompt "低质量, 模糊" --steps 20 --cfg-scale 7.5 --seed 42 --mode "$mode" --output "$out" "$@"
done
"$taiyi" bench unet --model configs/taiyi-v0.1 --random-weights --width 256 --height 256 --batch 2 \
  --context 77 --repeat 1 --json
