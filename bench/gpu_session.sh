#!/usr/bin/env bash
# One step of a GPU-host session (a host with no package registry that forgets everything when given back): stage
# carried wheel folders, install them and llmopt, run the test suite on CUDA, verify, bench, asv; every step packs
# what the host measured so far into OUT/session.tgz (results/<machine>/, results/asv/, logs/).
#
#   bench/gpu_session.sh OUT stage DIR...        copy wheel folders (made by wheelhouse.sh) into the staging folder
#   bench/gpu_session.sh OUT install             join split wheels, pip install them offline, install llmopt; with
#                                                a staged llmopt.bundle, move the carried .git's main to the bundle's
#   bench/gpu_session.sh OUT test [PYTEST ARGS]  pytest on CUDA (GPU tier and CPU tier)
#   bench/gpu_session.sh OUT verify TECHNIQUE [LLMOPT ARGS]  llmopt verify --device cuda, outcomes recorded
#   bench/gpu_session.sh OUT bench TECHNIQUE [LLMOPT ARGS]   llmopt bench (every available impl side by side)
#   bench/gpu_session.sh OUT asv [BENCH REGEX...]  asv runs for HEAD on this machine's name, one per regex (default: one
#                                                per suite of bench/asv), each saving its results before the next starts
#                                                and stopped after LLMOPT_ASV_TIMEOUT seconds (default 400): a run cut
#                                                by a budget loses only its own suite (asv writes results at the end)
#   bench/gpu_session.sh OUT asv-at SHA [BENCH REGEX...]  the same for an earlier commit, checked out and installed
#                                                beside the tree (its own suites, its own code), then llmopt reinstalled
# asv and asv-at need a git repository with the commit: the carried .git, or, where it lacks it, STAGE/llmopt.bundle (made with
# `git bundle create .wheelhouse/cN/llmopt.bundle --all` and staged with the wheels). Set LLMOPT_COMMIT=<sha> in the
# command when git cannot read the carried .git: benchmark rows record it.
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
# the carried checkout belongs to another user: trust it through the environment (no writable global config needed)
export GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=safe.directory GIT_CONFIG_VALUE_0="*"
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
      sync_git >>"$log" 2>&1
      ensure_llmopt; python3 -m pip list 2>/dev/null | grep -iE "flash|vllm|bitsandbytes|asv|llmopt|triton|^torch " | tee -a "$log" ;;
    test)
      ensure_llmopt
      python3 -m pytest --junitxml="$keep/logs/junit.xml" "$@" 2>&1 | tee "$log" | tail -40 || status=1 ;;
    verify|bench)
      ensure_llmopt
      llmopt "$name" "$@" --device cuda --out "$keep/results/$(machine)" 2>&1 | tee -a "$log" || status=1 ;;
    asv)
      ensure_llmopt
      local head=${LLMOPT_COMMIT:-$(git -C "$repo" rev-parse HEAD)}  # the tree's commit
      git_repo=$(readable_repo "$head" 2>"$log") || { cat "$log"; status=1; return; }
      run_asv "$repo" "$(git -C "$git_repo" rev-parse "$head")" "$@" 2>&1 | tee -a "$log" | tail -30 || status=1 ;;
    asv-at)
      local commit=${1:?asv-at needs a commit} tree=/tmp/llmopt-at; shift
      git_repo=$(readable_repo "$commit" 2>"$log") || { cat "$log"; status=1; return; }
      rm -rf "$tree"; git -C "$git_repo" worktree add -f --detach "$tree" "$commit" >>"$log" 2>&1 || status=1
      python3 -m pip install -q --no-build-isolation --no-deps -e "$tree" >>"$log" 2>&1 &&
        run_asv "$tree" "$(git -C "$git_repo" rev-parse "$commit")" "$@" 2>&1 | tee -a "$log" | tail -30 || status=1
      python3 -m pip install -q --no-build-isolation --no-deps -e . >>"$log" 2>&1 ;;
    run)
      ensure_llmopt
      python3 "$@" 2>&1 | tee "$log" | tail -40 || status=1 ;;
    *) echo "unknown step $name"; status=2 ;;
  esac
}

sync_git() {  # the carried .git can lag behind the tree: move its main (and HEAD) to the staged bundle's, so that git,
  [ -f "$stage/llmopt.bundle" ] || return 0  # asv and the dashboard test see the tree's commits
  git -C "$repo" fetch -q --update-head-ok "$stage/llmopt.bundle" "+refs/heads/main:refs/heads/main" &&
    echo "carried .git: main now $(git -C "$repo" rev-parse --short HEAD) from the staged bundle"
}

readable_repo() {  # readable_repo COMMIT: a git repository holding COMMIT: the carried .git (a copy that may lag
  local commit=$1  # behind the tree), else a clone of the staged bundle
  if git -C "$repo" cat-file -e "$commit^{commit}" 2>/dev/null; then echo "$repo"; return; fi
  echo "the carried .git has no commit $commit (HEAD there: $(git -C "$repo" rev-parse HEAD 2>&1 | head -1))" >&2
  [ -f "$stage/llmopt.bundle" ] || { echo "no $stage/llmopt.bundle to clone either" >&2; return 1; }
  [ -d /tmp/llmopt-git ] || git clone -q "$stage/llmopt.bundle" /tmp/llmopt-git >&2 || return 1
  echo /tmp/llmopt-git
}

run_asv() {  # run_asv TREE COMMIT [BENCH REGEX...]: asv over the llmopt installed from TREE, one `asv run` per regex
  local tree=$1 commit=$2 name conf=asv.conf.json code=0 pattern; shift 2  # (default: one per suite), results copied
  name=$(machine)                                                          # to keep after each
  if [ "$git_repo" != "$repo" ]; then  # asv reads commits from the bundle's clone
    conf=asv-host.conf.json; sed "s|\"repo\": \".\"|\"repo\": \"$git_repo\"|" "$tree/asv.conf.json" >"$tree/$conf"
  fi
  local patterns=("$@")
  if [ ${#patterns[@]} -eq 0 ]; then
    for suite in "$tree"/bench/asv/[a-z]*.py; do patterns+=("^$(basename "$suite" .py)\\."); done
  fi
  # each command re-sends the tree: asv merges into the results it finds there, so seed them with what earlier
  # commands of this session saved (else a second run at the same commit replaces the first's file)
  [ -d "$keep/results/asv" ] && mkdir -p "$tree/results/asv" && cp -r "$keep/results/asv/." "$tree/results/asv/"
  (cd "$tree" && asv machine --yes --machine "$name" >/dev/null) || return 1
  for pattern in "${patterns[@]}"; do
    echo "--- asv --bench $pattern"
    (cd "$tree" && timeout -k 5 "${LLMOPT_ASV_TIMEOUT:-400}" asv run --config "$conf" -E existing:python3 \
       --set-commit-hash "$commit" --launch-method spawn --machine "$name" --bench "$pattern") || code=1
    mkdir -p "$keep/results/asv" && cp -r "$tree/results/asv/." "$keep/results/asv/"
  done
  return $code
}

pack() { tar czf "$out/session.tgz" -C "$keep" results logs; }
args=()
for a in "$@" ";"; do
  if [ "$a" = ";" ]; then [ ${#args[@]} -gt 0 ] && { step "${args[@]}"; pack; }; args=(); else args+=("$a"); fi
done
pack
exit $status
