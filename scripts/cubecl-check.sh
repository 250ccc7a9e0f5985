#!/usr/bin/env bash
# burnish on burn's CubeCL stack without a GPU: burn-wgpu (burn-cubecl + burn-fusion, the
# stack burn-cuda is made of, with the WGSL compiler) on Mesa's lavapipe, which runs Vulkan
# on the CPU. What it proves about CUDA, and what it cannot: docs/architecture.md.
#
#   scripts/cubecl-check.sh          # the CubeCL suite, then `burnish --device wgpu train`
#
# 1. installs Mesa's Vulkan drivers (Debian's mesa-vulkan-drivers) when lavapipe is absent;
# 2. builds and runs the CubeCL suite, tests/tests/cubecl.rs (burnish-tests, feature wgpu):
#    the toy BERT and toy Llama trained on burn-wgpu and on burn-ndarray, compared;
# 3. the command on wgpu: the toy sentiment config trained with `--device wgpu`.
#
# Not in .ci/run: the wgpu stack is a second build of burn (burn-backend gets another
# feature, so burn and every burnish crate are compiled again), about 25 minutes cold on 2
# cores, which with the rest of CI would pass the 60-minute budget. Timings are printed.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d /work ] && [ -w /work ]; then
  export CARGO_TARGET_DIR=/work/.burnish-target
fi

if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
  echo "installing Mesa's Vulkan drivers (lavapipe)"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get install -y --no-install-recommends mesa-vulkan-drivers
fi

secs() { date +%s; }
# The suite and the command in one cargo invocation, and the suite's binary run directly:
# built apart, or through `cargo test` (which also turns on burnish-cli's dev-dependencies),
# their features on burn's crates differ and the whole stack is compiled twice (measured:
# 680 s more). No incremental caches: the suite's crates are built once per change.
wgpu=(--locked -p burnish-tests -p burnish-cli --features burnish-tests/wgpu,burnish-cli/wgpu)
t0=$(secs)
suite=$(CARGO_INCREMENTAL=0 cargo build "${wgpu[@]}" --test cubecl --bin burnish \
  --message-format=json-render-diagnostics \
  | grep '"name":"cubecl"' | grep -o '"executable":"[^"]*"' | cut -d'"' -f4)
test -x "$suite"
t1=$(secs)
# As `cargo test` runs it: from the package's directory.
(cd tests && "$suite" --nocapture)
t2=$(secs)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"${CARGO_TARGET_DIR:-target}/debug/burnish" --device wgpu train --config tests/assets/configs/toy-ner.toml \
  --output-dir "$out/run"
test -f "$out/run/final/model.safetensors"
t3=$(secs)
echo "cubecl-check: build $((t1 - t0)) s, suite run $((t2 - t1)) s, command run $((t3 - t2)) s"
