#!/usr/bin/env bash
# Remove the prodrec service installed by systemd/install.sh.
# Keeps the product database and model (/var/lib/prodrec) and the configuration (/etc/prodrec)
# unless --purge is given: reinstalling later brings every product back.
#
# Usage: sudo systemd/uninstall.sh [options]
#   --purge        also delete /var/lib/prodrec (the product database!), /etc/prodrec and the
#                  prodrec user
#   --dry-run      print every action, change nothing
#   --root DIR     remove from an installation made with install.sh --root DIR; system commands
#                  (systemctl, userdel) are printed, not run
#   -h, --help
# apt packages (python3-picamera2, ...) are left installed: other software may use them.
set -euo pipefail

NAME=prodrec
DRY_RUN=0
PURGE=0
ROOT=""

die() { echo "uninstall.sh: error: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --purge) PURGE=1 ;;
    --dry-run) DRY_RUN=1 ;;
    --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$2; shift ;;
    --root=*) ROOT=${1#--root=} ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
if [ -n "$ROOT" ]; then
  [ -d "$ROOT" ] || die "--root $ROOT is not a directory"
  ROOT=$(cd "$ROOT" && pwd)
fi

# shellcheck source=actions.sh
. "$(dirname "${BASH_SOURCE[0]}")/actions.sh"

if live; then
  [ "$(id -u)" = 0 ] || die "run as root: sudo $0 (or --dry-run to see what it would do)"
fi

echo "== stopping and disabling $NAME.service"
# `|| true`: a unit that is already gone or stopped is what we want.
sys systemctl disable --now "$NAME.service" || true
act rm -f "$UNIT_DIR/$NAME.service"
# Our drop-in goes; the admin's own (`systemctl edit prodrec`: override.conf) stays unless --purge,
# so a reinstall keeps their customisation.
DROPIN_DIR="$UNIT_DIR/$NAME.service.d"
if [ "$PURGE" = 1 ]; then
  act rm -rf "$DROPIN_DIR"
else
  act rm -f "$DROPIN_DIR/restart-backoff.conf"
  if [ -d "$DROPIN_DIR" ] && [ -z "$(ls -A "$DROPIN_DIR")" ]; then act rmdir "$DROPIN_DIR"; fi
fi
sys systemctl daemon-reload
sys systemctl reset-failed "$NAME.service" || true

echo "== removing the code, the venv and the command"
act rm -rf "$OPT"
act rm -f "$ROOT/usr/local/bin/$NAME"

if [ "$PURGE" = 1 ]; then
  echo "== --purge: deleting the product database, the model and the configuration"
  act rm -rf "$STATE"
  act rm -rf "$ETC"
  if ! live || getent passwd "$NAME" >/dev/null; then
    sys userdel "$NAME"
  fi
else
  echo "== kept: $STATE (product database and model) and $ETC (configuration)"
  echo "   reinstalling brings every product back; to delete them: sudo rm -rf $STATE $ETC"
fi
echo "== done"
