#!/usr/bin/env bash
# Times taiyi and the engines a user would pick instead (bench/peers: PyTorch eager and
# torch.compile, OpenVINO; pinned PyPI versions) on the same shapes and threads, one process
# per point, one point at a time, and prints one table with each peer's time over taiyi's.
#
#   bench/compare.sh                       # unet only (the UNet step), all peers
#   COMPONENTS="unet vae_decode text_encoder txt2img" bench/compare.sh
#   PEERS="torch:eager_fp32 openvino:f32" REPEAT=3 bench/compare.sh   # 3 timed runs a point (default
#                                          # 10 for the text encoder, 5 for the VAE, 3 for the rest)
#   ROUNDS=3 bench/compare.sh              # every point 3 times, interleaved (A B C A B C ...)
#
# Needs a built taiyi (scripts/build.sh) and the peers' venv (bench/peers/setup.sh; several GB,
# made once per machine). Results (JSON lines) go to bench/out/<date>/; the table to stdout.
#
# txt2img loads a model folder from disk in both engines, as a user does (the load is not timed;
# peak RSS includes it): TXT2IMG_MODEL, by default bench/out/taiyi-random, a Taiyi-shaped pipeline
# of random weights that diffusers writes (save_pretrained, safetensors, 4.2 GB) the first time.
# TXT2IMG_MODEL= (empty) builds random weights in memory instead, in both engines.
# The other components always use random weights built in memory.
# ROUNDS > 1 runs the whole list of points that many times, one round after another, so that a
# slow spell of the machine hits taiyi and the peers alike; the table takes each point's median
# over the rounds and gives the spread of the per-round speed-ups.
set -euo pipefail
cd "$(dirname "$0")/.."
COMPONENTS=${COMPONENTS:-unet}
PEERS=${PEERS:-"torch:eager_fp32 torch:eager_bf16_cl torch:compile_bf16 openvino:default openvino:f32"}
TAIYI_VARIANTS=${TAIYI_VARIANTS-"graph:fp32 graph:bf16"}  # set but empty: peers only
REPEAT=${REPEAT:-}  # timed runs per point; unset: 10 for the text encoder (0.1 s a run), 5 for the VAE, else 3
ROUNDS=${ROUNDS:-1}
round=1
THREADS=${THREADS:-$(nproc)}
WIDTH=${WIDTH:-512}
HEIGHT=${HEIGHT:-512}
CONTEXT=${CONTEXT:-512}
STEPS=${STEPS:-20}
TXT2IMG_WARMUP=${TXT2IMG_WARMUP:-1}  # 0: one run per engine, first-run compile included
POINT_TIMEOUT=${POINT_TIMEOUT:-3600}  # seconds per point; a peer past it is recorded as timed out
TXT2IMG_MODEL=${TXT2IMG_MODEL-bench/out/taiyi-random}
taiyi=${TAIYI:-build/taiyi}
[ -x "$taiyi" ] || taiyi=$(scripts/build.sh)
PY=${PEER_PYTHON:-$(bench/peers/setup.sh | tail -1)}
out=bench/out/$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
results="$out/results.jsonl"
export PEER_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
if [[ " $PEERS " == *" torch:"* ]] && [ ! -e /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 ]; then
  echo "warning: libjemalloc2 is not installed: the PyTorch peers run with glibc malloc, not their best case" \
    "(bench/peers/README.md; apt-get install -y libjemalloc2)" >&2
fi
if [[ " $COMPONENTS " == *" txt2img "* ]] && [ -n "$TXT2IMG_MODEL" ] && [ ! -f "$TXT2IMG_MODEL/model_index.json" ]; then
  echo "== writing the random Taiyi pipeline to $TXT2IMG_MODEL (diffusers save_pretrained)" >&2
  "$PY" bench/peers/peer.py --engine torch --variant eager_fp32 --component txt2img --context "$CONTEXT" \
    --save-model "$TXT2IMG_MODEL" 2>"$out/save_model.log"
fi
repeat_of() {  # the timed runs of a component's points
  if [ -n "$REPEAT" ]; then
    echo "$REPEAT"
  else
    case "$1" in text_encoder) echo 10 ;; vae_decode) echo 5 ;; *) echo 3 ;; esac
  fi
}
txt2img_model() {  # the model arguments of a txt2img point: taiyi, peer
  if [ -z "$TXT2IMG_MODEL" ]; then
    [ "$1" = taiyi ] && echo "--model configs/taiyi-v0.1 --random-weights"
  else
    echo "--model $TXT2IMG_MODEL"
  fi
}

run_point() {  # label, command...: keeps the last stdout line (JSON), tagged with the label
  local label=$1
  shift
  echo "== $label (round $round of $ROUNDS)" >&2
  local line
  if line=$(timeout "$POINT_TIMEOUT" "$@" 2>"$out/$(echo "$label" | tr ' /:' '___').log" | tail -1) &&
    [ -n "$line" ]; then
    python3 -c 'import json,sys; d=json.loads(sys.argv[2]); d["label"]=sys.argv[1]; d["round"]=int(sys.argv[3]); print(json.dumps(d))' \
      "$label" "$line" "$round" >>"$results"
  else
    echo "   failed or timed out after ${POINT_TIMEOUT} s (see $out)" >&2
    python3 -c 'import json,sys; print(json.dumps({"label": sys.argv[1], "failed": True, "timeout_s": int(sys.argv[2]), "round": int(sys.argv[3])}))' \
      "$label" "$POINT_TIMEOUT" "$round" >>"$results"
  fi
}

for round in $(seq 1 "$ROUNDS"); do
  for comp in $COMPONENTS; do
    for v in $TAIYI_VARIANTS; do
      mode=${v%%:*}
      dtype=${v##*:}
      model=(--model configs/taiyi-v0.1 --random-weights)
      extra=(--repeat "$(repeat_of "$comp")")
      if [ "$comp" = txt2img ]; then
        read -r -a model <<<"$(txt2img_model taiyi)"
        extra=(--steps "$STEPS" --repeat 1 --warmup "$TXT2IMG_WARMUP")
      fi
      run_point "$comp taiyi $mode $dtype" "$taiyi" bench "$comp" "${model[@]}" \
        --width "$WIDTH" --height "$HEIGHT" --context "$CONTEXT" --threads "$THREADS" --mode "$mode" \
        --dtype "$dtype" "${extra[@]}" --json
    done
    for p in $PEERS; do
      engine=${p%%:*}
      variant=${p##*:}
      [ "$comp" = txt2img ] && [ "$engine" = openvino ] && continue  # the harness has no OpenVINO pipeline
      env=()
      # The peers' README: jemalloc is PyTorch eager's best case; never with OpenVINO (its TBB aborts).
      if [ "$engine" = torch ] && [ -e /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 ]; then
        env=(env LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
          MALLOC_CONF=oversize_threshold:1,background_thread:true,dirty_decay_ms:-1,muzzy_decay_ms:-1)
      fi
      extra=(--repeat "$(repeat_of "$comp")")
      if [ "$comp" = txt2img ]; then
        read -r -a model <<<"$(txt2img_model peer)"
        extra=(--steps "$STEPS" --repeat 1 --warmup "$TXT2IMG_WARMUP" "${model[@]}")
      fi
      run_point "$comp $engine $variant" "${env[@]}" "$PY" bench/peers/peer.py --engine "$engine" \
        --variant "$variant" --component "$comp" --width "$WIDTH" --height "$HEIGHT" --context "$CONTEXT" "${extra[@]}"
    done
  done
done
python3 bench/compare_table.py "$results" | tee "$out/table.md"
