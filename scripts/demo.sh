#!/usr/bin/env bash
# The whole loop in about a minute, on any machine, no camera needed:
#   1. sets up .venv with the device's requirements (numpy, OpenCV, LiteRT) if needed
#   2. renders the demo scene: real product photos (demo/enroll, demo/unknown) placed and removed,
#      in front of a static background, with sensor noise and slow lighting drift
#   3. enrolls the products of demo/enroll from their photos into a temporary product database
#      (one product of the scene is never enrolled)
#   4. runs the device app (`python -m device run`) on the scene and prints each recognition event
#   5. checks the events against the scene's ground truth; exits non-zero if any is wrong
#
# Usage: scripts/demo.sh [--model DIR] [--python PY] [--threshold X] [--keep]
#   --model DIR     model bundle (default: models/default)
#   --python PY     use this Python as it is instead of setting up .venv
#   --threshold X   override the bundle's calibrated unknown threshold
#   --keep          keep the work folder (scene video, database, events, crops)
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=models/default
PY=""
THRESHOLD=""
KEEP=0
die() { echo "demo: error: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --model) [ $# -ge 2 ] || die "--model needs a directory"; MODEL=$2; shift ;;
    --python) [ $# -ge 2 ] || die "--python needs an interpreter"; PY=$2; shift ;;
    --threshold) [ $# -ge 2 ] || die "--threshold needs a number"; THRESHOLD=$2; shift ;;
    --keep) KEEP=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done

SECONDS=0
step() { printf '\n== [%3ds] %s\n' "$SECONDS" "$*"; }

# --- 1. Python environment -----------------------------------------------------------------------
if [ -z "$PY" ]; then
  step "setting up .venv (device requirements: numpy, OpenCV, LiteRT)"
  if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv \
      || die "could not create .venv: install the venv module (Debian/Ubuntu: apt install python3-venv)"
  fi
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt \
    || die "pip could not install requirements.txt into .venv (network? see the error above)"
  PY=.venv/bin/python
fi
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || die "$("$PY" -V 2>&1) is too old: the device needs Python 3.10 or newer"

# --- the model -----------------------------------------------------------------------------------
if [ ! -f "$MODEL/model.json" ] || [ ! -f "$MODEL/model.tflite" ]; then
  die "no model bundle in $MODEL (model.tflite + model.json). models/default is part of the \
repository; if it is missing, make one with \`python -m convert\` (README: desktop workflow) and \
pass --model DIR"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/prodrec-demo.XXXXXX")
if [ "$KEEP" = 0 ]; then trap 'rm -rf "$WORK"' EXIT; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL=2
DB="$WORK/products.db"

# --- 2. the scene --------------------------------------------------------------------------------
step "rendering the demo scene from the photos in demo/enroll and demo/unknown"
"$PY" demo/demo.py scene --out "$WORK/scene.avi"

# --- 3. enrollment -------------------------------------------------------------------------------
step "enrolling the products of demo/enroll from photos (model: $MODEL)"
"$PY" -m device enroll --from-images demo/enroll --model "$MODEL" --db "$DB" --log-level WARNING
"$PY" -m device products list --model "$MODEL" --db "$DB" --log-level WARNING

# --- 4. recognition ------------------------------------------------------------------------------
step "running the device app on the scene (python -m device run); one line per placement"
run_args=(--source "$WORK/scene.avi" --model "$MODEL" --db "$DB" --log-level WARNING
  --save-crops "$WORK/crops")
[ -z "$THRESHOLD" ] || run_args+=(--threshold "$THRESHOLD")
"$PY" -m device run "${run_args[@]}" \
  | "$PY" demo/demo.py show --truth "$WORK/scene.json" --events "$WORK/events.jsonl"

# --- 5. verdict ----------------------------------------------------------------------------------
step "checking the events against the scene's ground truth"
status=0
"$PY" demo/demo.py report --truth "$WORK/scene.json" --events "$WORK/events.jsonl" || status=$?
if [ "$KEEP" = 1 ]; then
  echo "work folder kept: $WORK (scene.avi, scene.json, events.jsonl: the raw JSON events, crops/, products.db)"
fi
echo "finished in ${SECONDS}s"
exit "$status"
