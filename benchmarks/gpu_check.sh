#!/usr/bin/env bash
# One command on a CUDA machine: the CUDA tests, `twodtm bench` at 4096^2 with a
# 512^3 template and 13 defocus planes in fp32 and fp16, the fp16 z-score error
# against fp32, and Leopard-EM's loop on the same sizes when it is installed.
# Writes one JSON of figures, gpu_check.json, in the directory given as the first
# argument (default: $OUT, else ./gpu_check_out), plus each step's log there.
#
#   bash benchmarks/gpu_check.sh [OUTPUT_DIRECTORY]
#
# Every step has its own time limit; a step that fails or
# runs out of time is recorded in the JSON and the script goes on (8 minutes at
# most in all: 130 + 80 + 80 + 80 + 110 s). Sizes can be
# changed for a smoke test on a CPU, e.g.
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_IMAGE=256 GPU_CHECK_TEMPLATE=32 \
#   GPU_CHECK_ORIENTATIONS=4 bash benchmarks/gpu_check.sh /tmp/check
# Leopard-EM: LEOPARD_PYTHON (default /tmp/leopard-venv/bin/python, else this
# python if it imports leopard_em); see benchmarks/README_leopard.md.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-${OUT:-./gpu_check_out}}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
DEVICE="${GPU_CHECK_DEVICE:-cuda:0}"
IMAGE="${GPU_CHECK_IMAGE:-4096}"
TEMPLATE="${GPU_CHECK_TEMPLATE:-512}"
DEFOCUS="${GPU_CHECK_DEFOCUS:-13}"
ORIENTATIONS="${GPU_CHECK_ORIENTATIONS:-256}"
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"
started=$(date +%s)

step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep rc and log
    local name="$1" limit="$2"
    shift 2
    local t0=$(date +%s)
    echo "== $name (limit ${limit} s): $*" >&2
    timeout --kill-after=10 "$limit" "$@" >"$DIR/$name.out" 2>"$DIR/$name.log"
    local rc=$?
    echo "{\"rc\": $rc, \"seconds\": $(( $(date +%s) - t0 ))}" >"$DIR/$name.status"
    echo "   rc $rc after $(( $(date +%s) - t0 )) s" >&2
}

# 1. Tests that run on CUDA: device-parametrised ones ([cuda-...]) and those
#    named or marked cuda (pytest's -k matches marker names too).
step tests 130 "$PYTHON" -m pytest -q -k cuda -m "not slow" -p no:cacheprovider \
    tests/

# 2. The engine alone, fp32 then fp16 (same synthetic inputs).
bench=("$PYTHON" -m twodtm bench --device "$DEVICE" --image-size "$IMAGE"
    --template-size "$TEMPLATE" --defocus "$DEFOCUS"
    --orientations "$ORIENTATIONS" --json)
step bench_fp32 80 "${bench[@]}" --precision fp32
step bench_fp16 80 "${bench[@]}" --precision fp16

# 3. fp16 against fp32 on the same orientations: z-score error.
step fp16_error 80 "$PYTHON" -c "
import json, sys
from twodtm.programs.benchmark import precision_error
n = int(sys.argv[1])
print(json.dumps(precision_error((n, n), int(sys.argv[2]), 8, int(sys.argv[3]),
                                 sys.argv[4], 'fp16')))
" "$IMAGE" "$TEMPLATE" "$DEFOCUS" "$DEVICE"

# 4. Leopard-EM 1.3.0's own loop on the same sizes, if it is installed.
LEOPARD="${LEOPARD_PYTHON:-/tmp/leopard-venv/bin/python}"
if [ ! -x "$LEOPARD" ] && "$PYTHON" -c "import leopard_em" 2>/dev/null; then
    LEOPARD="$(command -v "$PYTHON")"
fi
if [ -x "$LEOPARD" ] && "$LEOPARD" -c "import leopard_em" 2>/dev/null; then
    step leopard 110 "$PYTHON" benchmarks/vs_leopard.py --leopard-python "$LEOPARD" \
        --device "$DEVICE" --image-size "$IMAGE" --template-size "$TEMPLATE" \
        --defocus "$DEFOCUS" --orientations 32 --orientation-batch-size 16 \
        --repeats 1 --json
else
    echo '{"rc": null, "seconds": 0, "skipped": "Leopard-EM not installed"}' \
        >"$DIR/leopard.status"
    : >"$DIR/leopard.out"
fi

# 5. One JSON of everything.
"$PYTHON" - "$DIR" "$started" <<'EOF'
import json, platform, subprocess, sys, time
from pathlib import Path

directory, started = Path(sys.argv[1]), float(sys.argv[2])


def last_json(path: Path):
    """The last JSON document printed (bench prints one line; vs_leopard indents)."""
    text = path.read_text() if path.exists() else ""
    start = text.rfind("\n{") + 1 if text.lstrip().startswith("{") else -1
    for candidate in (text.strip(), text[start:] if start >= 0 else ""):
        try:
            return json.loads(candidate)
        except ValueError:
            pass
    for line in reversed(text.splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def gpu() -> str:
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        return done.stdout.strip() or done.stderr.strip()
    except (OSError, subprocess.SubprocessError) as err:
        return f"nvidia-smi unavailable: {err}"


figures = {"host": platform.node(), "gpu": gpu(), "python": platform.python_version()}
try:
    import torch
    figures["torch"] = torch.__version__
    figures["cuda"] = torch.version.cuda
except ImportError:
    pass
for name in ("tests", "bench_fp32", "bench_fp16", "fp16_error", "leopard"):
    status_file = directory / f"{name}.status"
    status = json.loads(status_file.read_text()) if status_file.exists() else {}
    record = {"status": status}
    if name == "tests":
        lines = (directory / "tests.out").read_text().splitlines()
        record["summary"] = lines[-1] if lines else ""
    else:
        record["result"] = last_json(directory / f"{name}.out")
    log = directory / f"{name}.log"
    if status.get("rc") not in (0, None) and log.exists():
        record["log_tail"] = log.read_text()[-2000:]
    figures[name] = record
b32 = (figures["bench_fp32"].get("result") or {})
b16 = (figures["bench_fp16"].get("result") or {})
figures["summary"] = {
    "fp32_correlations_per_second": b32.get("correlations_per_second"),
    "fp16_correlations_per_second": b16.get("correlations_per_second"),
    "fp32_transform_floor_ratio": b32.get("transform_floor_ratio"),
    "fp32_peak_memory_bytes": b32.get("peak_memory_bytes"),
    "fp16_max_abs_zscore_error": (figures["fp16_error"].get("result") or {}).get(
        "max_abs_zscore_error"),
    "leopard_correlations_per_second": (figures["leopard"].get("result") or {}).get(
        "leopard_correlations_per_second"),
    "seconds": time.time() - started,
}
(directory / "gpu_check.json").write_text(json.dumps(figures, indent=1))
print(json.dumps(figures["summary"], indent=1))
EOF
echo "figures: $DIR/gpu_check.json ($(( $(date +%s) - started )) s)" >&2
