#!/usr/bin/env bash
# The GPU machine's check, offline, from files carried to it: parity of the CUDA provider against the CPU
# provider (tiny, small, nano-9b-v2-slice; fp32, fp16, bf16, int4), the host <-> device bytes of a decode
# step (computed from the runner's bindings), decode/prefill tokens/s at batch 1 and 8 (CUDA graphs: not
# supported yet). What each check does and its tolerances: bench/gpu_check.py. Writes one JSON report and
# prints a summary; exits 1 when a check failed.
#
#   bash scripts/gpu-check.sh [--provider cpu|cuda] [--quick] [--wheels DIR] [--out FILE] [--work DIR]
#
#   --provider   cuda (default) or cpu: the same checks without a GPU (parity against the PyTorch reference)
#   --quick      the tiny preset only (`--provider cpu --quick` runs in the tests)
#   --wheels     install the wheels under DIR first (pip --no-index): *.whl in DIR or its subfolders, and
#                wheels cut by scripts/gpu-wheels.sh (NAME.part-00, -01, ... in numbered subfolders),
#                glued back in part order
#   --out        the JSON report (default: $OUT/gpu-check.json when OUT is set, else ./gpu-check.json)
#   --work       where checkpoints and bundles are exported (default: a fresh temporary folder)
#
# Runs from this checkout without installing it: export/ is linked as nemotron_export. The Python is
# $PYTHON, else python3 (on the GPU machine, the one that holds torch).
set -euo pipefail

usage() { sed -n '8,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

provider=cuda quick="" wheels="" out="" work=""
while (( $# )); do
    case $1 in
        --provider) provider=${2:?}; shift 2 ;;
        --quick) quick=--quick; shift ;;
        --wheels) wheels=${2:?}; shift 2 ;;
        --out) out=${2:?}; shift 2 ;;
        --work) work=${2:?}; shift 2 ;;
        -h|--help) usage ;;
        *) echo "gpu-check.sh: unknown option $1" >&2; usage ;;
    esac
done
[[ $provider == cpu || $provider == cuda ]] || { echo "gpu-check.sh: --provider cpu or cuda" >&2; exit 2; }
if [[ -z $out ]]; then out=${OUT:+$OUT/}gpu-check.json; fi
out=$(realpath -m "$out")
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
scratch=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
work=$(realpath -m "${work:-$scratch/work}")

if [[ -n $wheels ]]; then
    mkdir -p "$scratch/wheels" "$scratch/site"
    find "$wheels" -name '*.whl' -exec cp {} "$scratch/wheels/" \;
    # Parts sort by their suffix (.part-00, -01, ...), whichever folder holds them.
    while read -r name; do
        find "$wheels" -name "$name.part-*" -printf '%f\t%p\n' | sort | cut -f2 | xargs cat >"$scratch/wheels/$name"
    done < <(find "$wheels" -name '*.whl.part-*' -printf '%f\n' | sed 's/\.part-[0-9]*$//' | sort -u)
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$scratch/site" "$scratch"/wheels/*.whl
    export PYTHONPATH="$scratch/site${PYTHONPATH:+:$PYTHONPATH}"
fi

# This checkout's packages under their import names, ahead of any installed copy.
mkdir -p "$scratch/src"
ln -s "$repo/edge_runtime" "$scratch/src/edge_runtime"
ln -s "$repo/export" "$scratch/src/nemotron_export"
export PYTHONPATH="$scratch/src:$repo${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

cd "$repo"
status=0
"$python" -m bench.gpu_check --provider "$provider" $quick --out "$out" --work "$work" || status=$?
echo "report: $out"
exit "$status"
