#!/usr/bin/env bash
# The GPU check in one script (at most 9.5 minutes): the CUDA tests, then the GPU benchmark.
#
#   bash benchmarks/gpu_check.sh          # on a CUDA machine, from the repository root
#   bash benchmarks/gpu_check.sh --dry    # anywhere: the CPU-safe parts (the tests skip, a tiny benchmark)
#   PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh --dry    # with another interpreter
#   bash benchmarks/gpu_check.sh --demo   # instead: the GPU demo (`larp demo --device cuda`, at most 10 minutes)
#   bash benchmarks/gpu_check.sh --demo --dry   # the GPU demo's preset, quick, on the CPU
#
# Everything lands in $OUT (default ./gpu_check_out): gpu_check.json (each part's status, exit code and
# seconds, plus the benchmark's numbers), gpu_check.log (all output), cuda_tests.xml, gpu_bench.json.
# Each part runs under its own timeout and the summary is written whatever fails. PyAV and lpips, which a
# bare GPU machine may lack, are installed from wheels in .whl/ (fetched beforehand on a machine with an
# index: `pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64
# -d .whl av lpips`; for --demo also matplotlib and its dependencies, without --no-deps), with no index,
# into .gpu_site/ (or $GPU_CHECK_SITE). The demo's figures land in $OUT/demo/ (metrics.json, demo.json with
# each stage's seconds, report.html, two pictures) and in the summary.
set -u
cd "$(dirname "$0")/.."
DRY=0
DEMO=0
for arg in "$@"; do
    case $arg in
        --dry) DRY=1 ;;
        --demo) DEMO=1 ;;
        *) echo "unknown option $arg (expected --dry, --demo)" >&2; exit 2 ;;
    esac
done
export OUT=${OUT:-$PWD/gpu_check_out} DRY
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: >"$LOG"
export PY=${PYTHON:-python3}
export SITE=${GPU_CHECK_SITE:-$PWD/.gpu_site}  # the wheels of .whl/, installed once and kept
export PYTHONUNBUFFERED=1
export PYTHONPATH="$SITE:$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)
PARTS=()

part() {  # part NAME SECONDS COMMAND...: run under a timeout, log everything, record status
    local name=$1 limit=$2 t0 rc status
    shift 2
    t0=$(date +%s)
    echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
    if declare -F "$1" >/dev/null; then  # a function of this script: run it in a child shell
        timeout --kill-after=10 "$limit" bash -c "$(declare -f "$1"); $*" >>"$LOG" 2>&1
    else
        timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
    fi
    rc=$?
    case $rc in
        0) status=ok ;;
        124|137) status=timeout ;;
        *) status=failed ;;
    esac
    echo "=== $name: $status (exit $rc, $(( $(date +%s) - t0 ))s)" | tee -a "$LOG"
    PARTS+=("$name $status $rc $(( $(date +%s) - t0 ))")
    return 0
}

summary() {  # the JSON summary, written on every exit
    local parts_json="" entry name status rc secs
    for entry in "${PARTS[@]}"; do
        read -r name status rc secs <<<"$entry"
        parts_json+="${parts_json:+, }\"$name\": {\"status\": \"$status\", \"exit\": $rc, \"seconds\": $secs}"
    done
    local bench=null demo=null
    [ -s "$OUT/gpu_bench.json" ] && bench=$(cat "$OUT/gpu_bench.json")
    [ $DEMO = 1 ] && [ -s "$OUT/demo/metrics.json" ] && demo=$(cat "$OUT/demo/metrics.json")
    printf '{"dry": %s, "seconds": %s, "commit": "%s", "parts": {%s},\n "bench": %s,\n "demo": %s}\n' \
        "$([ $DRY = 1 ] && echo true || echo false)" "$(( $(date +%s) - START ))" \
        "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "$parts_json" "$bench" "$demo" >"$OUT/gpu_check.json"
    echo "summary: $OUT/gpu_check.json"
    for entry in "${PARTS[@]}"; do echo "  $entry"; done
}
trap summary EXIT

env_info() {
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    "$PY" -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available()); print(torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
}

install_wheels() {
    if "$PY" -c "import av, lpips" 2>/dev/null; then
        echo "av and lpips are importable already"
        return 0
    fi
    ls .whl/*.whl >/dev/null 2>&1 || { echo "no wheels in .whl/: fetch av and lpips first (see the header)"; return 1; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
    "$PY" -c "import av, lpips; print('av', av.__version__, 'lpips ok')"
}

gpu_demo() {  # the demo in a scratch folder (its data and videos stay there), its figures into $OUT/demo
    local work=${GPU_DEMO_DIR:-$PWD/runs/demo_gpu} where=(--device cuda)
    [ "$DRY" = 1 ] && where=(--preset gpu --device cpu --quick)
    "$PY" -m larp demo "${where[@]}" --overwrite --out "$work" || return 1
    mkdir -p "$OUT/demo"
    cp "$work/metrics.json" "$work/demo.json" "$work/report.html" "$work/pictures/samples.png" \
        "$work/pictures/class3.png" "$OUT/demo/"
}

part env 30 env_info
part wheels 90 install_wheels
if [ $DEMO = 1 ]; then
    part demo 570 gpu_demo
elif [ $DRY = 1 ]; then
    # Without CUDA the tests are collected and skipped: a check that they import and are marked.
    part cuda_tests 240 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/cuda --junitxml="$OUT/cuda_tests.xml"
    part gpu_bench 240 "$PY" benchmarks/gpu_bench.py --dry --out "$OUT/gpu_bench.json"
else
    part cuda_tests 260 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/cuda --junitxml="$OUT/cuda_tests.xml" -ra
    part gpu_bench 190 "$PY" benchmarks/gpu_bench.py --out "$OUT/gpu_bench.json"
fi
