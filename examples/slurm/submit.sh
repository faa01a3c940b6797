#!/usr/bin/env bash
# Submit the whole fercli pipeline to SLURM as jobs chained by dependencies:
#
#   prepare (index, split) -> one array per per-item stage (--shard K/N) -> one array
#   task per CV fold (--fold K) -> finish (finalize, fuse, evaluate, report)
#
# Usage: bash examples/slurm/submit.sh CONFIG.yaml [NSHARDS]   (NSHARDS default 8)
# Run it from the folder where logs/ should go; the jobs inherit this environment (FER,
# CONFIG, NSHARDS), so activate fercli's virtualenv first or set FER=/path/to/fer.
#
# SBATCH_ARGS: extra sbatch options for every job, after the scripts' #SBATCH lines so
# they win, e.g. SBATCH_ARGS="--partition=gpu --account=lab" or, on a small CPU-only
# cluster, SBATCH_ARGS="--cpus-per-task=1 --mem=2G --gres=none" (tests/test_slurm.py).
# Split on spaces: no quoting inside.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONFIG="$(realpath "${1:?usage: submit.sh CONFIG.yaml [NSHARDS]}")"
NSHARDS="${2:-8}"
FER="${FER:-fer}"
read -r -a EXTRA <<< "${SBATCH_ARGS:-}"
STAGES="detect track trim augment extract"
export CONFIG NSHARDS FER

# The fold count comes from the config itself (split.folds), so the fold array matches it.
# (`fer config show` prints YAML: the split section in block or flow style.)
FOLDS="$("$FER" config show --config "$CONFIG" | awk '
    /^split:/ {s = 1} /^[^ #]/ && !/^split:/ {s = 0}
    s && match($0, /[{ ]folds: *[0-9]+/) {
        v = substr($0, RSTART, RLENGTH); gsub(/[^0-9]/, "", v); print v; exit }')"
[ -n "$FOLDS" ] || { echo "cannot read split.folds from $CONFIG" >&2; exit 2; }
mkdir -p logs

# sbatch --parsable prints "ID" or "ID;CLUSTER": keep the ID
submit() { sbatch --parsable "${EXTRA[@]}" "$@" | cut -d';' -f1; }

jid="$(submit "$HERE/prepare.sbatch")"
echo "prepare: job $jid"
for stage in $STAGES; do
    # afterok on an array job waits for every one of its tasks.
    jid="$(submit --dependency="afterok:$jid" --array="1-$NSHARDS" --job-name="fer-$stage" \
        "$HERE/stage_array.sbatch" "$stage")"
    echo "$stage: array job $jid (shards 1..$NSHARDS)"
done
jid="$(submit --dependency="afterok:$jid" --array="0-$((FOLDS - 1))" \
    "$HERE/cv_fold_array.sbatch")"
echo "cv-train: array job $jid (folds 0..$((FOLDS - 1)))"
jid="$(submit --dependency="afterok:$jid" "$HERE/finish.sbatch")"
echo "finish: job $jid"
