#!/usr/bin/env bash
# One step of a GPU-host session (a host with no package registry that forgets everything when given back): stage
# carried wheel folders, install them and llmopt, run the test suite on CUDA, verify, bench, asv; every step packs
# what the host measured so far into OUT/session.tgz (results/<machine>/, results/asv/, logs/).
#
#   bench/gpu_session.sh OUT stage DIR...        copy wheel folders (made by wheelhouse.sh) into the staging folder
#   bench/gpu_session.sh OUT install             join split wheels, pip install them offline, install llmopt
#   bench/gpu_session.sh OUT test [PYTEST ARGS]  pytest on CUDA (GPU tier and CPU tier)
#   bench/gpu_session.sh OUT verify TECHNIQUE [LLMOPT ARGS]  llmopt verify --device cuda, outcomes recorded
#   bench/gpu_session.sh OUT bench TECHNIQUE [LLMOPT ARGS]   llmopt bench (every available impl side by side)
#   bench/gpu_session.sh OUT asv [BENCH REGEX]   asv run for HEAD on this machine's name (needs git to read the carried
#                                                .git; on 2026-11-25 it could not, see results/h100/logs)
# Set LLMOPT_COMMIT=<sha> in the command when git cannot read the carried .git there: rows record it.
#   bench/gpu_session.sh OUT run SCRIPT ARGS...  any python module or script, output logged
# Steps chain in one call: `... OUT install \; verify attention \; bench attention`. The whole call stops after
# LLMOPT_BUDGET seconds (default 570, under a 10-minute command limit) and OUT/session.tgz is packed after every step,
# so a step cut short loses only itself.
set -uo pipefail
out=${1:?usage: gpu_session.sh OUT STEP [ARGS] [\; STEP ARGS]...}
if [ -z "${LLMOPT_INNER:-}" ]; then
  LLMOPT_INNER=1 timeout -k 10 "${LLMOPT_BUDGET:-570}" bash "$0" "$@"; code=$?
  [ $code -eq 124 ] && echo "=== stopped at the time budget (LLMOPT_BUDGET)"
  tar czf "$out/session.tgz" -C /tmp/llmopt-session results logs
  exit $code
fi
shift
repo=$(cd "$(dirname "$0")/.." && pwd)
keep=/tmp/llmopt-session            # survives between calls while the host stays warm
stage=$keep/stage
mkdir -p "$out" "$keep/results" "$keep/logs" "$stage"
export PYTHONUNBUFFERED=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
git config --global --add safe.directory "*" 2>/dev/null  # the carried checkout belongs to another user
cd "$repo"
status=0

machine() { python3 -c "from llmopt.bench.machine import machine_name; print(machine_name('cuda'))"; }

ensure_llmopt() {
  python3 -c "import llmopt.bench.cli" 2>/dev/null && return
  python3 -m pip install -q --no-build-isolation --no-deps -e . >"$keep/logs/install-llmopt.log" 2>&1
}

step() {
  local name=$1; shift
  local log="$keep/logs/$(date +%H%M%S)-$name.log"
  echo "=== $name $* ($(date -u +%H:%M:%S))"
  case $name in
    stage)
      for dir in "$@"; do cp -r "$dir"/. "$stage"/; done; ls -la "$stage" | tail -n +2 ;;
    install)
      { nvidia-smi; python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"; } >"$log" 2>&1
      if ls "$stage"/*.whl* >/dev/null 2>&1; then
        (cd "$stage" && for first in *.whl.part-00; do [ -e "$first" ] || continue; whl=${first%.part-00};
          cat "$whl".part-* >"$whl" && rm "$whl".part-*; done
         python3 -m pip install -q --no-deps --no-cache-dir ./*.whl) >>"$log" 2>&1 || status=1
      fi
      ensure_llmopt; python3 -m pip list 2>/dev/null | grep -iE "flash|vllm|bitsandbytes|asv|llmopt|triton|^torch " | tee -a "$log" ;;
    test)
      ensure_llmopt
      python3 -m pytest -q -x --junitxml="$keep/logs/junit.xml" "$@" 2>&1 | tee "$log" | tail -40 || status=1 ;;
    verify|bench)
      ensure_llmopt
      llmopt "$name" "$@" --device cuda --out "$keep/results/$(machine)" 2>&1 | tee -a "$log" || status=1 ;;
    asv)
      ensure_llmopt
      local name; name=$(machine)
      git rev-parse --verify HEAD >/dev/null 2>&1 || { echo "git cannot read the carried .git here:";
        git rev-parse --verify HEAD 2>&1 | head -3; ls -la .git | head -5; } | tee "$log"
      asv machine --yes --machine "$name" >>"$log" 2>&1
      asv run -E existing:python3 --set-commit-hash "$(git rev-parse HEAD)" --launch-method spawn --machine "$name" \
        ${1:+--bench "$1"} 2>&1 | tee -a "$log" | tail -30 || status=1
      mkdir -p "$keep/results/asv" && cp -r results/asv/. "$keep/results/asv/" ;;
    run)
      ensure_llmopt
      python3 "$@" 2>&1 | tee "$log" | tail -40 || status=1 ;;
    *) echo "unknown step $name"; status=2 ;;
  esac
}

pack() { tar czf "$out/session.tgz" -C "$keep" results logs; }
args=()
for a in "$@" ";"; do
  if [ "$a" = ";" ]; then [ ${#args[@]} -gt 0 ] && { step "${args[@]}"; pack; }; args=(); else args+=("$a"); fi
done
pack
exit $status
