#!/usr/bin/env bash
# Deploy a new model bundle (made by `python -m convert`) to an installed prodrec device.
# The previous model is kept as /var/lib/prodrec/model.previous (roll back by deploying it).
# Products survive: on start the service re-embeds every stored view from its stored crop with
# the new model (a few ms per view).
#
# Usage: sudo /opt/prodrec/app/systemd/deploy-model.sh BUNDLE_DIR [--root DIR] [--no-restart]
#   --root DIR      a root made by install.sh --root (tests); systemctl is printed, not run
#   --no-restart    swap the files only
set -euo pipefail

NAME=prodrec
ROOT=""
RESTART=1
BUNDLE=""
die() { echo "deploy-model.sh: error: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$2; shift ;;
    --no-restart) RESTART=0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *) [ -z "$BUNDLE" ] || die "one bundle directory only"; BUNDLE=$1 ;;
  esac
  shift
done
[ -n "$BUNDLE" ] || die "usage: deploy-model.sh BUNDLE_DIR (a folder with model.tflite and model.json)"
[ -z "$ROOT" ] && [ "$(id -u)" != 0 ] && die "run as root (sudo)"

STATE="$ROOT/var/lib/$NAME"
[ -d "$STATE" ] || die "$STATE does not exist: install prodrec first (systemd/install.sh)"
# Check the bundle with the device's own reader: every file present (the cohort too), model.json
# valid, and the .tflite and the cohort the ones model.json describes (sha256). Only the standard
# library is needed for that.
CODE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# A bundle without a calibrated threshold only runs where the config sets one: refuse it otherwise,
# here, rather than let the service fail on its next start.
PYTHONPATH="$CODE" "${PYTHON:-python3}" - "$BUNDLE" "$ROOT/etc/$NAME/config.toml" <<'EOF' || die "not deploying $BUNDLE"
import sys
try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
from device.bundle import read_bundle_meta
from device.errors import BundleError
try:
    meta = read_bundle_meta(sys.argv[1])
except BundleError as exc:
    sys.exit(f"deploy-model.sh: {exc}")
if meta.threshold is None:
    try:
        with open(sys.argv[2], "rb") as fh:
            configured = tomllib.load(fh).get("matcher", {}).get("threshold")
    except FileNotFoundError:
        configured = None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        sys.exit(f"deploy-model.sh: cannot read {sys.argv[2]} ({exc}): fix it first")
    if configured is None:
        sys.exit(
            f"deploy-model.sh: {sys.argv[1]} has no calibrated threshold (model.json threshold "
            f"is null) and {sys.argv[2]} sets no [matcher] threshold: calibrate the run "
            "(python -m training calibrate RUN_DIR) and convert it again, or set the threshold "
            "in the config first"
        )
else:
    try:
        with open(sys.argv[2], "rb") as fh:
            configured = tomllib.load(fh).get("matcher", {}).get("threshold")
    except (OSError, tomllib.TOMLDecodeError):
        configured = None
    if configured is not None:
        print(
            f"deploy-model.sh: warning: {sys.argv[2]} sets [matcher] threshold = {configured}, "
            f"which overrides this bundle's calibrated {meta.threshold:.4f}; remove it from the "
            "config unless it was chosen for this model",
            file=sys.stderr,
        )
print(f"bundle {meta.name}: {meta.input.height}x{meta.input.width} {meta.input.dtype}, "
      f"{meta.output.embedding_dim}-d, threshold {meta.threshold}, model id {meta.model_id[:12]}")
EOF

run() { echo "+ $*"; "$@"; }
sys() {
  if [ -n "$ROOT" ]; then echo "+ $*    [skipped: --root]"; else echo "+ $*"; "$@"; fi
}
model_id() { sed -n 's/.*"model_id": *"\([^"]*\)".*/\1/p' "$1/model.json" 2>/dev/null | head -1; }
# A bundle is the whole folder: model.json, the .tflite and, in format 2, the cohort (plus notes).
bundle_files=()
for f in "$BUNDLE"/*; do [ ! -f "$f" ] || bundle_files+=("$f"); done
# The same model already in place, every file byte for byte: nothing to do. The same model with a
# file missing or damaged (e.g. its cohort, left out by an older install.sh): repaired in place.
# Either way model.previous stays what it is, the real previous model to roll back to.
same_files() {
  local f
  for f in "${bundle_files[@]}"; do cmp -s "$f" "$STATE/model/${f##*/}" || return 1; done
}
same_model=0
if [ -d "$STATE/model" ] && [ "$(model_id "$STATE/model")" = "$(model_id "$BUNDLE")" ]; then
  same_model=1
fi
if [ "$same_model" = 1 ] && same_files; then
  echo "this model ($(model_id "$BUNDLE" | cut -c1-12)) is already deployed; model.previous is kept"
else
  [ "$same_model" = 0 ] || echo "repairing the installed copy of this model; model.previous is kept"
  run rm -rf "$STATE/model.new"
  run mkdir -p "$STATE/model.new"
  run cp "${bundle_files[@]}" "$STATE/model.new/"
  sys chown -R "$NAME:$NAME" "$STATE/model.new"
  [ "$RESTART" = 0 ] || sys systemctl stop "$NAME.service"
  if [ "$same_model" = 1 ]; then
    run rm -rf "$STATE/model.damaged"
    run mv "$STATE/model" "$STATE/model.damaged"
  elif [ -d "$STATE/model" ]; then
    run rm -rf "$STATE/model.previous"
    run mv "$STATE/model" "$STATE/model.previous"
  fi
  run mv "$STATE/model.new" "$STATE/model"
  run rm -rf "$STATE/model.damaged"
fi
if [ "$RESTART" = 1 ]; then
  # A service that hit its start limit (e.g. installed without a usable model) would refuse the
  # start: clear that first.
  sys systemctl reset-failed "$NAME.service"
  sys systemctl start "$NAME.service"
  echo "deployed; the service re-embeds the stored products on start: journalctl -u $NAME -f"
  if [ -d "$STATE/model.previous" ]; then
    echo "if it does not start, roll back: sudo $0 $STATE/model.previous"
  fi
else
  echo "deployed; restart the service to use it: sudo systemctl restart $NAME"
fi
