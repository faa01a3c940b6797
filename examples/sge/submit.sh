#!/usr/bin/env bash
# Submit the whole fercli pipeline to Grid Engine (SGE, UGE, OGS) as jobs chained by
# -hold_jid:
#
#   prepare (index, split) -> one array per per-item stage (--shard K/N) -> one array
#   task per CV fold (--fold K) -> finish (finalize, fuse, evaluate, report)
#
# Usage: bash examples/sge/submit.sh CONFIG.yaml [NSHARDS]   (NSHARDS default 8)
# Run it from the folder where logs/ should go; the jobs inherit this environment (-V:
# FER, CONFIG, NSHARDS), so activate fercli's virtualenv first or set FER=/path/to/fer.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONFIG="$(realpath "${1:?usage: submit.sh CONFIG.yaml [NSHARDS]}")"
NSHARDS="${2:-8}"
FER="${FER:-fer}"
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

job_id() { cut -d. -f1; }  # qsub -terse prints "ID" or, for arrays, "ID.1-N:1"

jid="$(qsub -terse "$HERE/prepare.sge" | job_id)"
echo "prepare: job $jid"
for stage in $STAGES; do
    # -hold_jid on an array job waits for every one of its tasks.
    jid="$(qsub -terse -hold_jid "$jid" -t "1-$NSHARDS" -N "fer-$stage" \
        "$HERE/stage_array.sge" "$stage" | job_id)"
    echo "$stage: array job $jid (shards 1..$NSHARDS)"
done
jid="$(qsub -terse -hold_jid "$jid" -t "1-$FOLDS" "$HERE/cv_fold_array.sge" | job_id)"
echo "cv-train: array job $jid (folds 0..$((FOLDS - 1)) as tasks 1..$FOLDS)"
jid="$(qsub -terse -hold_jid "$jid" "$HERE/finish.sge" | job_id)"
echo "finish: job $jid"
