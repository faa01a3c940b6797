#!/usr/bin/env bash
# The whole pipeline on sample_data/, stage by stage, as a user would type it.
set -uo pipefail
cd "$(dirname "$0")/.."
FER=${FER:-.venv/bin/fer}
CONFIG=${CONFIG:-configs/sample.yaml}
started=$(date +%s)
step() {
  echo
  echo "\$ fer $*"
  "$FER" "$@" --config "$CONFIG" || { echo "demo: 'fer $*' failed (exit $?)"; exit 1; }
}
step index
step split
step detect
step track
step trim
echo
echo "\$ fer status"
"$FER" status --config "$CONFIG"
echo
echo "demo finished in $(( $(date +%s) - started )) s; artifacts are in demo-work/"
