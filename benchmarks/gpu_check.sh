#!/usr/bin/env bash
# One prepared GPU check (issue 14): everything the project wants measured on a GPU, in one run of < 8 minutes.
#
#   bash benchmarks/gpu_check.sh [--out DIR]     # on a machine with one CUDA GPU, from the repository root
#   bash benchmarks/gpu_check.sh --dry-run       # anywhere: checks that every command below exists and parses
#
# Stages (each under its own time limit, trimmed so the whole run stays inside BUDGET_S):
#   gpu_tests   the `gpu`-marked tests (pytest -m gpu)
#   meta_bf16   bench_meta_step.py --size gpu --levers --precision bf16 (BERT-base, time and peak memory)
#   meta_fp32   the same in fp32
#   floor_bf16  bench_meta_step.py --size gpu --floor (the meta step against its physical floor)
#   violet      bench_violet_step.py: Violet-base MELTR steps, 5 frames of 224², batch sized to the card
# Output, in DIR (default $OUT if set, else benchmarks/gpu_check_out): one log and one JSON per stage and
# gpu_check.md, a single markdown table of the results (card, status, time and headline numbers per stage)
# followed by each benchmark's own table. A failed stage is reported in the table; the others still run.
set -uo pipefail

PY=${PYTHON:-python}
BUDGET_S=${BUDGET_S:-470}
DRY=0
DIR=${OUT:-benchmarks/gpu_check_out}
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) DIR="$2"; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

# name | time limit (s) | command (run from the repository root)
STAGES=(
  "gpu_tests|70|$PY -m pytest -q -p no:cacheprovider -m gpu tests"
  "meta_bf16|120|$PY benchmarks/bench_meta_step.py --size gpu --levers --precision bf16 --rounds 5 --json DIR/meta_bf16.json"
  "meta_fp32|110|$PY benchmarks/bench_meta_step.py --size gpu --levers --precision fp32 --rounds 5 --json DIR/meta_fp32.json"
  "floor_bf16|40|$PY benchmarks/bench_meta_step.py --size gpu --floor --precision bf16 --rounds 8"
  "violet|130|$PY benchmarks/bench_violet_step.py --backbone violet_base --precision bf16 --max-batch 64 --cycles 3 --json DIR/violet.json"
)

field() { echo "$1" | cut -d'|' -f"$2"; }

# ---- dry run: every file, module, CLI option and test selection the stages use ---------------------------
dry_check() {
  local failures=0 stage name cmd script opt n
  declare -A helps=()
  if ! $PY -c "import torch, pytest, numpy, meltr_ray; import meltr_ray.run, meltr_ray.core.bilevel" 2>/dev/null; then
    echo "FAIL: $PY cannot import torch, pytest, numpy and meltr_ray"; failures=$((failures + 1))
  fi
  for stage in "${STAGES[@]}"; do
    name=$(field "$stage" 1); cmd=$(field "$stage" 3)
    if [[ "$cmd" == *"-m pytest"* ]]; then          # the marker is registered and some test carries it
      n=$(grep -rl --include='test_*.py' "pytest.mark.gpu" tests | wc -l)
      markers=$($PY -m pytest --markers -p no:cacheprovider 2>/dev/null)   # not piped: with pipefail, grep -q
      if ! grep -q "^@pytest.mark.gpu" <<<"$markers"; then                 # quitting early failed pytest (EPIPE)
        echo "FAIL: $name: pytest has no registered gpu marker"; failures=$((failures + 1))
      elif [ "$n" -lt 1 ]; then echo "FAIL: $name: no test file uses the gpu marker"; failures=$((failures + 1))
      else echo "ok   $name: gpu marker registered, used in $n test file(s)"; fi
      continue
    fi
    script=$(echo "$cmd" | awk '{print $2}')
    if [ ! -f "$script" ]; then echo "FAIL: $name: $script missing"; failures=$((failures + 1)); continue; fi
    if [ -z "${helps[$script]+x}" ]; then
      if ! helps[$script]=$($PY "$script" --help 2>&1); then
        echo "FAIL: $name: $script --help exits non-zero"; failures=$((failures + 1)); continue
      fi
    fi
    for opt in $(echo "$cmd" | grep -o -- '--[a-z][a-z0-9-]*'); do
      if ! grep -q -- "$opt\b" <<<"${helps[$script]}"; then
        echo "FAIL: $name: $script has no option $opt"; failures=$((failures + 1))
      fi
    done
    echo "ok   $name: $script and its options"
  done
  command -v nvidia-smi >/dev/null || echo "note: nvidia-smi not found here (needed only for the card's name)"
  command -v timeout >/dev/null || { echo "FAIL: no timeout command"; failures=$((failures + 1)); }
  if [ "$failures" -gt 0 ]; then echo "DRY RUN FAILED: $failures problem(s)"; return 1; fi
  echo "DRY RUN OK: ${#STAGES[@]} stages, budget ${BUDGET_S} s"
}

if [ "$DRY" = 1 ]; then dry_check; exit $?; fi

# ---- the real run -----------------------------------------------------------------------------------------
mkdir -p "$DIR"
START=$(date +%s)
CARD=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -1)
STATUS_FILE="$DIR/status.tsv"
: >"$STATUS_FILE"
for stage in "${STAGES[@]}"; do
  name=$(field "$stage" 1); limit=$(field "$stage" 2); cmd=$(field "$stage" 3)
  left=$((BUDGET_S - ($(date +%s) - START)))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 10 ]; then printf '%s\tskipped (budget)\t0\n' "$name" >>"$STATUS_FILE"; continue; fi
  echo "== $name (limit ${limit} s): ${cmd//DIR/$DIR}"
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" bash -c "${cmd//DIR/$DIR}" >"$DIR/$name.log" 2>&1
  rc=$?
  case $rc in 0) st=ok ;; 124|137) st="timed out" ;; *) st="failed (rc $rc)" ;; esac
  printf '%s\t%s\t%s\n' "$name" "$st" "$(($(date +%s) - t0))" >>"$STATUS_FILE"
  tail -3 "$DIR/$name.log"
done

CARD="$CARD" DIR="$DIR" $PY - <<'EOF'
import json, os
d = os.environ["DIR"]
status = [line.rstrip("\n").split("\t") for line in open(f"{d}/status.tsv")]
def load(name):
    try:
        return json.load(open(f"{d}/{name}.json"))
    except (OSError, ValueError):
        return None
def tail(name, n=1):
    try:
        return [l.strip() for l in open(f"{d}/{name}.log") if l.strip()][-n:]
    except OSError:
        return [""]
def meta(name):
    r = load(name)
    if not r:
        return "-"
    v = r["variants"]
    parts = [f"{k} {v[k]['wall_x_mtl']:.2f}× time" + (f", {v[k]['memory_x_mtl']:.2f}× memory" if "memory_x_mtl" in v[k] else "")
             for k in ("meltr_k0", "meltr_k3", "meltr_k3_heads_shared_ab") if k in v]
    return f"MTL {v['mtl']['wall_ms']:.1f} ms/step; " + "; ".join(parts)
def violet():
    r = load("violet")
    return "-" if not r else (f"{r['clips_per_s']:.1f} clips/s at batch {r['batch']} ({r['frames']} × "
                              f"{r['image_size']}², {r['precision']}), {r['ms_per_step']:.0f} ms/step, "
                              f"peak {r['peak_memory_gib']:.1f} GiB")
headline = {"gpu_tests": lambda: tail("gpu_tests")[0], "meta_bf16": lambda: meta("meta_bf16"),
            "meta_fp32": lambda: meta("meta_fp32"),
            "floor_bf16": lambda: next((l for l in tail("floor_bf16", 20) if l.startswith("cycle x MTL")), "-"),
            "violet": violet}
lines = [f"GPU check on **{os.environ.get('CARD') or 'unknown card'}**", "",
         "| stage | status | seconds | result |", "|---|---|---|---|"]
for name, st, secs in status:
    lines.append(f"| {name} | {st} | {secs} | {headline.get(name, lambda: '-')()} |")
lines.append("")
for name, _, _ in status:
    log = f"{d}/{name}.log"
    if name != "gpu_tests" and os.path.exists(log):
        body = [l.rstrip() for l in open(log) if l.startswith("|") or l.startswith("size=") or l.startswith("cycle")]
        if body:
            lines += [f"### {name}", "", *body, ""]
open(f"{d}/gpu_check.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
