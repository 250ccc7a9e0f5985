#!/usr/bin/env bash
# CUDA checks of burnish, for a GPU machine without network (about 5 minutes on an H200).
#
# Prepare on a machine with the toolchain and crates (no GPU needed):
#   scripts/gpu-check.sh build          # test binaries + burnish with --features cuda,
#                                       # copied into gpu-check/ (carry that folder)
# Then on the GPU machine, from the repository root:
#   scripts/gpu-check.sh run            # or: PEAK_TFLOPS=989 scripts/gpu-check.sh run
#
# `run` does:
#   1. the reference and parity tests (AdamW, clipping, loss scaler, BERT/Llama forward,
#      task heads, 10 training steps against transformers) on CUDA;
#   2. bf16 and fp16 (and fp32) fine-tune throughput of all-MiniLM-L6-v2 (the compact
#      derivative in assets/ when ../shared is absent) and of BERT-base-sized random
#      weights, for a fixed number of steps: samples/s, tokens/s, TFLOP/s, model FLOPs
#      utilization against PEAK_TFLOPS (the GPU's dense bf16/fp16 peak; H200: 989), and
#      peak GPU memory (nvidia-smi, sampled every 100 ms);
#   3. the missing-device message: --device cuda:99 must exit 2 with a sentence;
#   4. on a machine with 2 or more GPUs, data parallel: the same 30-step fine-tune of
#      all-MiniLM-L6-v2 on 1 GPU and on all of them ([distributed] devices), items/s and
#      the last logged loss of each (equal within float tolerance: same global batch).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}

build() {
  mkdir -p "$OUT/bin"
  cargo build --release -p burnish-cli --features cuda
  local target=${CARGO_TARGET_DIR:-target}
  cp "$target/release/burnish" "$OUT/bin/burnish"
  # The reference and parity tests, compiled against CUDA (burnish-tests' `cuda` feature).
  cargo test --release -p burnish-tests --features cuda --no-run --message-format=json \
    | python3 -c '
import json, sys, shutil
for line in sys.stdin:
    m = json.loads(line)
    exe = m.get("executable")
    if m.get("reason") == "compiler-artifact" and exe and m["target"]["kind"] == ["test"]:
        name = m["target"]["name"]
        if name in ("adamw_reference", "clip_reference", "scaler_reference", "model_parity",
                    "head_parity", "trainer_parity", "schedule_reference"):
            shutil.copy(exe, sys.argv[1] + "/" + name)
            print("test binary:", name)
' "$OUT/bin"
  echo "carry $OUT/ (and tests/reference/fixtures, assets/: tracked files) to the GPU machine"
}

peak_memory() { # runs "$@" while sampling GPU memory; prints the peak in MiB on stderr
  local log
  log=$(mktemp)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$log" &
  local smi=$!
  local rc=0
  "$@" || rc=$?
  kill "$smi" 2>/dev/null || true
  wait "$smi" 2>/dev/null || true
  echo "  peak GPU memory: $(sort -n "$log" | tail -1) MiB" >&2
  rm -f "$log"
  return $rc
}

run() {
  local bin=$OUT/bin
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  echo "== 1. reference and parity tests on CUDA"
  local failed=0
  for t in schedule_reference adamw_reference clip_reference scaler_reference \
           model_parity head_parity trainer_parity; do
    # The binaries were compiled elsewhere: point them at this checkout's fixtures.
    if BURNISH_TESTS_DIR="$PWD/tests" "$bin/$t" --test-threads 1 -q >"$OUT/$t.log" 2>&1; then
      echo "  $t: ok ($(grep -o '[0-9]* passed' "$OUT/$t.log" | tail -1))"
    else
      echo "  $t: FAILED (see $OUT/$t.log)"; failed=1
    fi
  done

  echo "== 2. fine-tune throughput (fixed steps, synthetic batches)"
  local minilm=../shared/models/all-MiniLM-L6-v2
  [ -d "$minilm" ] || minilm=assets/minilm-compact
  local peak=${PEAK_TFLOPS:-989}
  for precision in bf16 fp16 fp32; do
    echo "-- all-MiniLM-L6-v2 ($minilm), batch 64 x 128, $precision"
    peak_memory "$bin/burnish" --device cuda bench --model "$minilm" --batch-size 64 \
      --seq-len 128 --steps 30 --precision "$precision" --peak-tflops "$peak"
    echo "-- BERT-base random weights, batch 32 x 512, $precision"
    peak_memory "$bin/burnish" --device cuda bench --random bert-base --batch-size 32 \
      --seq-len 512 --steps 20 --precision "$precision" --peak-tflops "$peak"
  done
  echo "-- BERT-base, bf16, activation checkpointing is a train option; see docs/benchmarks.md"

  echo "== 3. a missing device is a message, not a crash"
  set +e
  "$bin/burnish" --device cuda:99 bench --random minilm --steps 1 2>"$OUT/missing.log"
  local rc=$?
  set -e
  echo "  exit $rc: $(head -c 300 "$OUT/missing.log")"
  [ "$rc" = 2 ] || failed=1

  local gpus
  gpus=$(nvidia-smi -L | wc -l)
  echo "== 4. data parallel: 1 GPU vs $gpus GPUs"
  if [ "$gpus" -lt 2 ]; then
    echo "  one GPU: skipped"
  else
    local devices="\"cuda:0\"" i
    for ((i = 1; i < gpus; i++)); do devices="$devices, \"cuda:$i\""; done
    for set in "\"cuda:0\"" "$devices"; do
      local dir
      dir=$(mktemp -d)
      cat >"$dir/run.toml" <<TOML
[model]
path = "$PWD/$minilm"
task = "sequence-classification"
labels = ["negative", "positive"]
dropout = 0.0
[data]
train = "$PWD/tests/assets/data/toy-sentiment/train.jsonl"
max_length = 128
[train]
max_steps = 30
batch_size = 64
lr = 2e-5
precision = "bf16"
log_every = 1
output_dir = "$dir/out"
[distributed]
devices = [$set]
TOML
      if "$bin/burnish" train --config "$dir/run.toml" --quiet >"$dir/log" 2>&1; then
        python3 - "$dir/out/metrics.jsonl" "$set" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"train"' in l]
speed = sorted(r["items_per_second"] for r in rows[3:])
print(f"  devices [{sys.argv[2]}]: {speed[len(speed) // 2]:.0f} items/s (median), "
      f"last loss {rows[-1]['loss']:.6f}")
PY
      else
        echo "  devices [$set]: FAILED: $(tail -c 300 "$dir/log")"; failed=1
      fi
    done
  fi
  return $failed
}

case "${1:-}" in
  build) build ;;
  run) run ;;
  *) echo "usage: $0 build|run" >&2; exit 2 ;;
esac
