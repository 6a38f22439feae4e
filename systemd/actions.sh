# Shared by install.sh and uninstall.sh (sourced, not run): target paths and how actions are
# carried out. Needs NAME, ROOT and DRY_RUN set.

# Target paths (inside ROOT when given).
OPT="$ROOT/opt/$NAME"
APP="$OPT/app"
VENV="$OPT/venv"
ETC="$ROOT/etc/$NAME"
STATE="$ROOT/var/lib/$NAME"
UNIT_DIR="$ROOT/etc/systemd/system"

# `act` changes files under the target root: printed, and run unless --dry-run.
# `sys` changes the running system (packages, users, services): printed, and run only when
# working on the real root (no --dry-run, no --root).
show() { local q; q=$(printf '%q ' "$@"); echo "+ ${q% }"; }
act() {
  show "$@"
  [ "$DRY_RUN" = 1 ] || "$@"
}
sys() {
  if [ "$DRY_RUN" = 1 ]; then
    show "$@"
  elif [ -n "$ROOT" ]; then
    echo "$(show "$@")    [skipped: --root]"
  else
    show "$@"
    "$@"
  fi
}
note() { echo "== $*"; }
live() { [ "$DRY_RUN" = 0 ] && [ -z "$ROOT" ]; }
