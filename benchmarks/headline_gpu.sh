#!/usr/bin/env bash
# The paper's headline on one GPU: mondrian_2k (~92% replicates in Yoon et al.)
# and mondrian_2k_gm_6k (~0.2%), each trained, sampled (respaced ancestral
# chain) and evaluated with the 'short' budget of configs/mondrian_2k.py (6k
# steps, dropout 0: 384 draws per Mondrian, enough that mondrian_2k is expected
# to copy), one after the other, then both replicate ratios beside the paper's.
#
#   bash benchmarks/headline_gpu.sh                  # ~8.8 min projected on one H100
#   bash benchmarks/headline_gpu.sh --config.training.num_steps=4000   # flags go to both runs
#
# Environment: HEADLINE_ARG (config argument, default short,bf16), HEADLINE_ROOT
# (workdirs' parent, default runs/headline), PYTHON (default python), OUT (if
# set, each run's report.json, train_summary.json and log are copied there as
# soon as that run ends, so a command cut short keeps the first run).
# The projection and why these settings: docs/headline_gpu.md.
set -uo pipefail
cd "$(dirname "$0")/.."
ARG="${HEADLINE_ARG:-short,bf16}"
ROOT="${HEADLINE_ROOT:-runs/headline}"
PY="${PYTHON:-python}"
mkdir -p "$ROOT"
status=0
for name in mondrian_2k mondrian_2k_gm_6k; do
  workdir="$ROOT/${name}_${ARG//,/_}"
  mkdir -p "$workdir"
  start=$(date +%s)
  "$PY" main.py --config="configs/$name.py:$ARG" --workdir="$workdir" --mode=all "$@" \
    2>&1 | tee "$workdir/headline.log"
  rc=${PIPESTATUS[0]}
  echo "$(( $(date +%s) - start ))" > "$workdir/headline_wall_seconds"
  echo "== $name: exit $rc after $(cat "$workdir/headline_wall_seconds") s"
  [ "$rc" -ne 0 ] && status=$rc
  if [ -n "${OUT:-}" ]; then
    for f in eval/report.json train_summary.json headline.log headline_wall_seconds; do
      [ -f "$workdir/$f" ] && cp "$workdir/$f" "$OUT/${name}_$(basename "$f")"
    done
  fi
done

"$PY" - "$ROOT" "$ARG" <<'EOF'
import json, os, sys
root, arg = sys.argv[1], sys.argv[2]
paper = {"mondrian_2k": 0.92, "mondrian_2k_gm_6k": 0.002}
try:  # the projection beside the measurement: what the GPU run calibrates
  sys.path.insert(0, "benchmarks")
  import headline_budget as hb
  projected = dict(zip(paper, hb.projection(arg)))
except Exception as e:  # pylint: disable=broad-except
  print(f"(no projection: {type(e).__name__}: {e})")
  projected = {}
print(f"\n| run ({arg}) | replicate ratio | 95% CI | paper | wall s | projected s "
      "| train images/s | train MFU | steps | samples, chain |")
print("|---|---|---|---|---|---|---|---|---|---|")
for name, ref in paper.items():
  wd = os.path.join(root, f"{name}_{arg.replace(',', '_')}")
  def read(path):
    try:
      with open(os.path.join(wd, path)) as f:
        return json.load(f)
    except (OSError, ValueError):
      return {}
  r, s, p = read("eval/report.json"), read("train_summary.json"), projected.get(name)
  ratio = r.get("replicate_ratio")
  ci = r.get("replicate_ci95") or [None, None]
  rate = s.get("images_per_second")  # after the compiling first step; the final save included
  mfu = rate * 3 * p["forward_gflop"] * 1e9 / p["peak_flops"] if rate and p else None
  cells = [f"{ratio:.4f}" if ratio is not None else "no report",
           f"{ci[0]:.4f}-{ci[1]:.4f}" if None not in ci else "-", f"{ref:.1%}",
           str(read("headline_wall_seconds") or "-"), f"{p['total_s']:.0f}" if p else "-",
           f"{rate:.0f}" if rate else "-", f"{mfu:.1%}" if mfu is not None else "-",
           str(s.get("step", "-")), f"{r.get('num_samples', '-')}, {r.get('sampling_chain', '-')}"]
  print(f"| {name} | " + " | ".join(cells) + " |")
EOF
exit $status
