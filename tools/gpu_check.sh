#!/usr/bin/env bash
# The project's prepared GPU check: on one NVIDIA H100/H200 with Python + torch preinstalled and
# no detectron2 (the GPU machines, see docs/benchmarks.md "GPU check"), in at most 8 minutes:
#
#   1. environment   versions, CUDA device, nvcc                          -> environment.json
#   2. build_cuda    compile clusterformer._C with its CUDA kernels (sm_90)
#   3. cuda_tests    the tests marked `cuda` (kernel vs CPU kernel, gradcheck, fp16/bf16)
#                                                                           -> cuda_tests.xml
#   4. ms_deform_attn  python -m tools.benchmark.ms_deform_attn on cuda (fp32/fp16/bf16)
#                                                                  -> ms_deform_attn_cuda.*
#   5. train_bf16    python -m tools.benchmark.train_step --core: training steps of the `make run`
#                    model under bf16 autocast, without detectron2      -> train_step_cuda_bf16.*
#   6. bench_fp32    python -m tools.benchmark --device cuda: panoptic 800x1344, backbones,
#                    components
#                                                                          -> benchmark_cuda.*
#   7. bench_bf16    the same under bf16 autocast                     -> benchmark_cuda_bf16.*
#
# Everything goes to the output folder ($OUT or --out DIR): the files above, logs/<step>.log and
# gpu_check.md (every step with its status, exit code, wall time and command). A failing step is
# recorded and the next one runs; the exit status is non-zero if any step failed.
#
#   OUT=/some/dir tools/gpu_check.sh              # on the GPU machine
#   PYTHON=.venv-modern/bin/python tools/gpu_check.sh --dry-run --out /tmp/gpu_check
#
# --dry-run runs the same steps on the CPU with tiny inputs (no build, the CUDA tests report as
# skipped), in about a minute, and still records the command every step runs on the GPU.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: tools/gpu_check.sh [--out DIR] [--dry-run] [--budget SECONDS]

  --out DIR         output folder (default: $OUT; one of the two is required)
  --dry-run         the same steps on the CPU with tiny inputs, without building (a test)
  --budget SECONDS  wall-clock limit of the whole check (default 480: the 8 minutes it is
                    sized for); every step's own timeout is cut to what is left
environment: PYTHON (default python3), TORCH_CUDA_ARCH_LIST (default 9.0, Hopper)
EOF
}

out_dir=${OUT:-}
dry_run=0
budget=480
while [ $# -gt 0 ]; do
  case $1 in
    --out) out_dir=${2:?--out needs a folder}; shift 2 ;;
    --out=*) out_dir=${1#--out=}; shift ;;
    --dry-run) dry_run=1; shift ;;
    --budget) budget=${2:?--budget needs seconds}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [ -z "$out_dir" ]; then
  echo "gpu_check.sh: no output folder: set OUT or pass --out DIR" >&2
  exit 2
fi
case $budget in
  '' | *[!0-9]*) echo "gpu_check.sh: --budget takes whole seconds, got $budget" >&2; exit 2 ;;
esac

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
mkdir -p "$out_dir/logs"
OUT=$(cd "$out_dir" && pwd)  # absolute: the commands are recorded and may be rerun elsewhere
PYTHON=${PYTHON:-python3}
ARCHS=${TORCH_CUDA_ARCH_LIST:-9.0}
# The tools (run with -m from $REPO) import clusterformer from the checkout: nothing is
# pip-installed on the GPU machine.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export MPLBACKEND=Agg PYTHONDONTWRITEBYTECODE=1
# The GPU machine has no network: nothing may wait on the Hugging Face hub (random-init peers).
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ "$dry_run" = 1 ]; then
  # The dry run is a test on shared CPU machines: one thread unless the caller says otherwise,
  # and the CPU path even where a GPU is visible (its CUDA tests then report as skipped).
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} CUDA_VISIBLE_DEVICES=""
fi

# Room kept for `timeout --kill-after` and the summary, so the whole check ends within budget.
KILL_GRACE=10
RESERVE=5
# Microseconds; wall times are computed in bash so the check needs nothing beyond coreutils.
now_us() {
  if [ -n "${EPOCHREALTIME:-}" ]; then
    printf '%s' "${EPOCHREALTIME/[.,]/}"
  else
    printf '%s' "$(($(date +%s%N) / 1000))"
  fi
}
seconds_since() {
  local us=$(($(now_us) - $1))
  printf '%d.%d' $((us / 1000000)) $((us / 100000 % 10))
}
started=$(now_us)
SECONDS=0

quoted() {
  local text
  text=$(printf '%q ' "$@")
  printf '%s' "${text% }"
}

names=() statuses=() codes=() walls=() limits=() notes=() gpu_commands=() dry_commands=()
failed=0

# run_step NAME TIMEOUT: runs the array `gpu` (or `dry` in a dry run; an empty `dry` skips the
# step there) under `timeout`, output in logs/NAME.log. `label` replaces the recorded command
# where the command itself would be unreadable (inline Python).
run_step() {
  local name=$1 own_limit=$2 limit status code=0 start wall gpu_text dry_text=""
  local log="$OUT/logs/$name.log"
  gpu_text=${label:-$(quoted "${gpu[@]}")}
  if [ "$dry_run" = 1 ] && [ ${#dry[@]} -gt 0 ]; then
    dry_text=${label:-$(quoted "${dry[@]}")}
  fi
  limit=$((budget - SECONDS - KILL_GRACE - RESERVE))
  [ "$limit" -gt "$own_limit" ] && limit=$own_limit
  echo "==> [$name] GPU command: $gpu_text"
  [ -n "$dry_text" ] && echo "    [$name] dry run: $dry_text"
  start=$(now_us)
  if [ "$dry_run" = 1 ] && [ ${#dry[@]} -eq 0 ]; then
    status=skipped code=- limit=-
    echo "skipped in the dry run" >"$log"
  elif [ "$limit" -lt 5 ]; then
    status="not run (budget spent)" code=- failed=1
    echo "not run: $((budget - SECONDS)) s of the $budget s budget left" >"$log"
  else
    local cmd
    if [ "$dry_run" = 1 ]; then cmd=("${dry[@]}"); else cmd=("${gpu[@]}"); fi
    timeout --kill-after="$KILL_GRACE" "$limit" "${cmd[@]}" >"$log" 2>&1 </dev/null || code=$?
    if [ "$code" = 0 ]; then
      status=ok
    elif [ "$code" = 124 ] || [ "$code" = 137 ]; then
      status="TIMEOUT (${limit} s)" failed=1
    else
      status=FAILED failed=1
    fi
  fi
  wall=$(seconds_since "$start")
  echo "    [$name] $status, exit $code, $wall s (log: logs/$name.log)"
  if [ "$status" != ok ] && [ "$status" != skipped ]; then
    tail -n 5 "$log" | sed 's/^/    | /'
  fi
  names+=("$name") statuses+=("$status") codes+=("$code") walls+=("$wall")
  limits+=("$limit") notes+=("") gpu_commands+=("$gpu_text") dry_commands+=("$dry_text")
  label=""
}

# Amends the last recorded step (a check made on its outputs after it ran).
set_last() {
  local i=$((${#names[@]} - 1))
  statuses[i]=$1
  notes[i]=$2
}

# ---- 1. environment ----------------------------------------------------------------------
# Versions of what the steps use, read as the project's modern environment lists them; the GPU
# machine has no network, so a missing package cannot be installed and is named here first.
read -r -d '' ENV_CHECK <<'EOF' || true
import importlib.metadata as md, json, platform, re, shutil, subprocess, sys
out, mode = sys.argv[1], sys.argv[2]
names = []
for line in open("requirements/modern.txt"):
    line = line.split("#")[0].strip()
    if line:
        names.append(re.split(r"[<>=!~;\[ ]", line)[0])
names.append("setuptools")  # torch.utils.cpp_extension builds with it; Python 3.12 lacks it
info = {"mode": mode, "python": platform.python_version(), "executable": sys.executable}
info["packages"] = {}
for name in names:
    try:
        info["packages"][name] = md.version(name)
    except md.PackageNotFoundError:
        info["packages"][name] = None
import torch
info["torch_cuda"] = torch.version.cuda
info["cuda_available"] = torch.cuda.is_available()
if info["cuda_available"]:
    info["device"] = torch.cuda.get_device_name()
    info["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
nvcc = shutil.which("nvcc")
info["nvcc"] = nvcc and (subprocess.run(
    [nvcc, "--version"], capture_output=True, text=True).stdout.splitlines() or [""])[-1]
smi = shutil.which("nvidia-smi")
info["nvidia_smi"] = smi and subprocess.run(
    [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
    capture_output=True, text=True).stdout.strip()
import clusterformer.modeling  # noqa: F401  (the model core, without detectron2)
from clusterformer.modeling.ops import extension_available
info["extension_before_build"] = {d: extension_available(d) for d in ("cpu", "cuda")}
json.dump(info, open(out, "w"), indent=2)
print(json.dumps(info, indent=2))
needed = ["torch", "numpy", "scipy", "timm", "transformers", "fvcore", "matplotlib", "pytest"]
needed += ["setuptools"] if mode == "gpu" else []
missing = [n for n in needed if info["packages"].get(n) is None]
problems = [f"missing packages {missing}"] if missing else []
if mode == "gpu" and not info["cuda_available"]:
    problems.append("torch sees no CUDA device")
if mode == "gpu" and not nvcc:
    problems.append("no nvcc on PATH: the CUDA kernels cannot be built")
sys.exit("; ".join(problems) or None)
EOF
gpu=("$PYTHON" -c "$ENV_CHECK" "$OUT/environment.json" gpu)
dry=("$PYTHON" -c "$ENV_CHECK" "$OUT/environment.json" dry)
label="$(quoted "$PYTHON") -c <environment check of tools/gpu_check.sh> $(quoted "$OUT/environment.json")"
run_step environment 60

# ---- 2. build ------------------------------------------------------------------------------
# As `make build-modern`: FORCE_CUDA=1 also turns a failed CUDA compile into an error.
gpu=(env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCHS" "$PYTHON" setup.py -q build_ext --inplace)
dry=()
run_step build_cuda 200

# ---- 3. CUDA tests -------------------------------------------------------------------------
# Only the files that have `cuda` tests are collected: collecting all of tests/ costs more than
# these tests take, and its module-level skips (a missing optional package) would be counted as
# skipped tests.
mapfile -t cuda_test_files < <(grep -rl --include="test_*.py" "pytest.mark.cuda" tests | sort)
[ ${#cuda_test_files[@]} -gt 0 ] || cuda_test_files=(tests)
gpu=("$PYTHON" -m pytest "${cuda_test_files[@]}" -m cuda -p no:cacheprovider -q
  --junitxml="$OUT/cuda_tests.xml")
dry=("${gpu[@]}")
run_step cuda_tests 120
# pytest passes when every test is skipped; on the GPU a skipped CUDA test means the kernels
# were not built or not found, which is what this check is for.
read -r -d '' JUNIT_CHECK <<'EOF' || true
import sys, xml.etree.ElementTree as ET
cases = [c for c in ET.parse(sys.argv[1]).iter("testcase")]
def count(tag):
    return sum(1 for c in cases if c.find(tag) is not None)
print(len(cases), count("failure") + count("error"), count("skipped"))
EOF
if [ "${statuses[-1]}" = ok ] || [ "${statuses[-1]}" = FAILED ]; then
  if counts=$("$PYTHON" -c "$JUNIT_CHECK" "$OUT/cuda_tests.xml" 2>>"$OUT/logs/cuda_tests.log"); then
    read -r n_tests n_failed n_skipped <<<"$counts"
    note="$n_tests tests: $((n_tests - n_failed - n_skipped)) passed, $n_failed failed, $n_skipped skipped"
    if [ "$n_tests" = 0 ]; then
      set_last FAILED "no CUDA test was collected"
      failed=1
    elif [ "$dry_run" = 1 ] && [ "$n_skipped" = "$n_tests" ]; then
      set_last skipped "$note (dry run: no GPU)"
    elif [ "$dry_run" = 0 ] && [ "$n_skipped" != 0 ]; then
      set_last FAILED "$note: a skipped CUDA test means no usable CUDA kernel"
      failed=1
    else
      set_last "${statuses[-1]}" "$note"
    fi
  else
    set_last FAILED "no readable cuda_tests.xml"
    failed=1
  fi
  echo "    [cuda_tests] ${statuses[-1]}: ${notes[-1]}"
fi

# ---- 4. deformable attention op ------------------------------------------------------------
gpu=("$PYTHON" -m tools.benchmark.ms_deform_attn --devices cuda --output-dir "$OUT")
dry=("$PYTHON" -m tools.benchmark.ms_deform_attn --devices cpu --quick --threads 1
  --output-dir "$OUT")
run_step ms_deform_attn 90

# ---- 5. bf16 training smoke run ------------------------------------------------------------
# --core: the `make run` model built without detectron2; the tool exits non-zero on a
# non-finite loss, which is the smoke test's failure.
gpu=("$PYTHON" -m tools.benchmark.train_step --core --device cuda --amp --rounds 5 --warmup 2
  --output-dir "$OUT" --suffix _bf16)
dry=("$PYTHON" -m tools.benchmark.train_step --core --device cpu --amp --threads 1 --rounds 1
  --warmup 0 --variant make_run SOLVER.IMS_PER_BATCH 2 --output-dir "$OUT" --suffix _bf16)
run_step train_bf16 90

# ---- 6./7. benchmarks ----------------------------------------------------------------------
# Panoptic first: it is the open target of docs/benchmarks.md, and tools.benchmark saves its JSON
# after every suite, so a run cut by the budget keeps the suites it finished. The bf16 run skips
# the FLOP counts (the same as fp32's). The dry run, a test, runs the backbones suite (timm's
# peers) in fp32 only and the panoptic one (transformers' Mask2Former) under bf16 only, the
# stricter of the two, which halves its slowest steps' imports and model builds.
suites=(panoptic backbones components)
gpu=("$PYTHON" -m tools.benchmark --device cuda --suites "${suites[@]}" --panoptic-size 800 1344
  --output-dir "$OUT")
dry_options=(--device cpu --size-classes tiny --backbone-sizes 64 --panoptic-size 64 64
  --component-sizes 64 --warmup 0 --repeats 1 --threads 1 --no-memory --no-flops
  --output-dir "$OUT")
dry=("$PYTHON" -m tools.benchmark --suites backbones components "${dry_options[@]}")
run_step bench_fp32 180
gpu+=(--amp --no-flops --suffix _bf16)
dry=("$PYTHON" -m tools.benchmark --suites panoptic components "${dry_options[@]}" --amp
  --suffix _bf16)
run_step bench_bf16 150

# ---- summary -------------------------------------------------------------------------------
total=$(seconds_since "$started")
revision=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  revision="$revision + uncommitted changes"
fi
if [ "$dry_run" = 1 ]; then
  mode="dry run on the CPU (tiny inputs: no figure of it is a GPU measurement)"
else
  mode="GPU"
fi
n_failed=0
for s in "${statuses[@]}"; do
  case $s in ok | skipped) ;; *) n_failed=$((n_failed + 1)) ;; esac
done
{
  echo "# GPU check"
  echo
  echo "\`tools/gpu_check.sh\`, $mode; $(date -u +%Y-%m-%dT%H:%M:%SZ) on ${HOSTNAME:-$(uname -n)},"
  echo "revision $revision, \`$PYTHON\`, budget $budget s, $total s in all."
  echo "Result: **$((${#names[@]} - n_failed)) of ${#names[@]} steps ok or skipped, $n_failed failed**."
  echo
  echo "| step | status | exit | wall s | timeout s | log | note |"
  echo "|---|---|---:|---:|---:|---|---|"
  for i in "${!names[@]}"; do
    echo "| ${names[i]} | ${statuses[i]} | ${codes[i]} | ${walls[i]} | ${limits[i]} |" \
      "logs/${names[i]}.log | ${notes[i]} |"
  done
  echo
  echo "## Commands"
  echo
  echo "Run from the repository root with \`PYTHONPATH=<repo>\`; on the GPU:"
  echo
  for i in "${!names[@]}"; do
    echo "* ${names[i]}: \`${gpu_commands[i]}\`"
    if [ -n "${dry_commands[i]}" ]; then
      echo "  * dry run: \`${dry_commands[i]}\`"
    fi
  done
  echo
  echo "## Outputs"
  echo
  (cd "$OUT" && find . -maxdepth 1 -type f ! -name gpu_check.md | sed 's|^\./||' | sort |
    sed 's/^/* /')
} >"$OUT/gpu_check.md"

echo
echo "GPU check, $mode: $n_failed of ${#names[@]} steps failed, $total s; summary: $OUT/gpu_check.md"
[ "$failed" = 0 ]
