#!/usr/bin/env bash
# The default params run with other seeds, as DVC experiments each in a temporary copy (the workspace is left as it
# is), then the training noise between them and the committed run at HEAD (`slmops noise` -> reports/noise.json,
# which `slmops report` adds to its accuracy tests) and their table: one row per seed.
#   scripts/seeds.sh            # seeds 1 and 2 beside HEAD's
#   scripts/seeds.sh 1 2 3 4
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv/bin ] && PATH="$PWD/.venv/bin:$PATH" # the project's dvc and slmops, activated or not
if [ -n "$(git status --porcelain -- params.yaml dvc.lock)" ]; then
    echo "seeds.sh: commit params.yaml and dvc.lock first: the seeds are compared with the run committed at HEAD" >&2
    exit 2
fi
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(1 2)
names=()
for seed in "${seeds[@]}"; do
    dvc exp remove "seed-$seed" >/dev/null 2>&1 || true # a rerun replaces the experiment of that name
    start=$(date +%s)
    dvc exp run --temp -S "seed=$seed" -n "seed-$seed"
    echo "seed $seed: dvc repro took $(($(date +%s) - start)) s"
    names+=("seed-$seed")
done
slmops noise HEAD "${names[@]}"
