#!/usr/bin/env bash
# The whole pipeline on sample_data/, stage by stage, as a user would type it.
set -uo pipefail
cd "$(dirname "$0")/.."
FER=${FER:-.venv/bin/fer}
CONFIG=${CONFIG:-configs/sample.yaml}
started=$(date +%s)
fer() {
  echo
  echo "\$ fer $*"
  "$FER" "$@" || { status=$?; echo "demo: 'fer $*' failed (exit $status)"; exit "$status"; }
}
fer weights pull minixception-fer2013
for stage in index split detect track trim augment extract; do
  fer "$stage" --config "$CONFIG"
done
# two models, so that late fusion has something to fuse: the thesis's 1D-CNN (a --set
# override) and the config's pooled model; each run lives in its own folder under
# work/{cv-train,finalize}/runs
fer cv-train --config "$CONFIG" --set train.model=cnn1d
fer finalize --config "$CONFIG" --set train.model=cnn1d
fer cv-train --config "$CONFIG"
fer finalize --config "$CONFIG"
fer fuse --config "$CONFIG"
fer evaluate --config "$CONFIG"
fer report --config "$CONFIG"
# new videos: one test subject's clip, and a long video of four clips back to back
mkdir -p demo-work/new-videos
.venv/bin/python scripts/concat_videos.py demo-work/new-videos/long.avi \
  sample_data/F001_happy_tex.avi sample_data/F001_sad_tex.avi \
  sample_data/F001_surprise_tex.avi sample_data/F001_angry_tex.avi
RUN=$(ls -d demo-work/finalize/runs/pooled-* | head -n 1)
fer predict sample_data/F002_fear_tex.avi --run "$RUN" --out demo-work/predict
fer predict demo-work/new-videos/long.avi --run "$RUN" --window 2 --stride 1 \
  --map positive=happy,surprise --map negative=angry,disgust,fear,sad --out demo-work/predict
fer status --config "$CONFIG"
echo
echo "demo finished in $(( $(date +%s) - started )) s"
echo "report: demo-work/report/report.html   predictions: demo-work/predict/"
