#!/bin/sh
# `prodrec ...` on an installed device = `python -m device ...` with the installed code and venv,
# run as the service user so the product database stays owned by it. Installed by install.sh as
# /usr/local/bin/prodrec. Example:  sudo prodrec products list --config /etc/prodrec/config.toml
set -e
if [ "$(id -u)" = 0 ]; then
  exec runuser -u prodrec -- "$0" "$@"
fi
# PYTHONSAFEPATH (Python 3.11+; ignored before): not the current directory first, so `prodrec`
# typed inside a clone of the repository runs the installed code, never the clone's (which could
# migrate the database under the service).
PYTHONSAFEPATH=1 PYTHONPATH=/opt/prodrec/app${PYTHONPATH:+:$PYTHONPATH} \
  exec /opt/prodrec/venv/bin/python -m device "$@"
