#!/usr/bin/env bash
# Install (or upgrade) prodrec as a systemd service on 64-bit Raspberry Pi OS (Bookworm or Trixie).
# Idempotent: run it again after `git pull` to upgrade the code; it never overwrites
# /etc/prodrec/config.toml or the product database, and installs the default model only if none is
# installed yet.
#
# Usage: sudo systemd/install.sh [options]
#   --dry-run          print every action, change nothing (no root needed)
#   --root DIR         install the files into DIR (a staging or test root) instead of /; system
#                      commands (apt-get, useradd, venv, pip, systemctl) are printed, not run
#   --model DIR        model bundle to install when none is installed (default: models/default)
#   --no-apt           skip apt-get (packages already installed)
#   --no-start         enable the service but do not (re)start it
#   --web-password-file FILE
#                      set the web page's password from the first line of FILE (for unattended
#                      installs; the file can be deleted afterwards). Without it, set one later
#                      with `sudo prodrec web set-password` before opening the page beyond
#                      127.0.0.1 ([web] host in the config)
#   -h, --help
#
# What it does, in order:
#   1. apt packages: python3-picamera2 (libcamera; built against apt's python3-numpy),
#      python3-numpy, python3-venv, python3-pip, libcap-dev
#   2. the service user `prodrec` (group prodrec, member of `video` for the camera)
#   3. /opt/prodrec/venv with --system-site-packages (so picamera2 and apt's numpy are visible),
#      pip requirements from systemd/requirements-pi.txt constrained to apt's numpy version
#   4. the code in /opt/prodrec/app (device/ and the docs; replaced whole on upgrade) and the
#      command /usr/local/bin/prodrec (= python -m device, run as the service user)
#   5. /etc/prodrec/config.toml if absent (always refreshes config.toml.default beside it)
#   6. the model bundle in /var/lib/prodrec/model if absent
#   7. the unit /etc/systemd/system/prodrec.service (+ restart back-off drop-in on systemd >= 254),
#      daemon-reload, enable, (re)start; with --web-password-file, the web page's password
#      (stored as a salted hash beside the product database) before the start
set -euo pipefail

NAME=prodrec
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DRY_RUN=0
ROOT=""
MODEL_SRC="$SRC/models/default"
DO_APT=1
DO_START=1
WEB_PASSWORD_FILE=""

die() { echo "install.sh: error: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$2; shift ;;
    --root=*) ROOT=${1#--root=} ;;
    --model) [ $# -ge 2 ] || die "--model needs a directory"; MODEL_SRC=$2; shift ;;
    --model=*) MODEL_SRC=${1#--model=} ;;
    --no-apt) DO_APT=0 ;;
    --no-start) DO_START=0 ;;
    --web-password-file) [ $# -ge 2 ] || die "--web-password-file needs a file"
      WEB_PASSWORD_FILE=$2; shift ;;
    --web-password-file=*) WEB_PASSWORD_FILE=${1#--web-password-file=} ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done

if [ -n "$ROOT" ]; then
  [ "$DRY_RUN" = 1 ] || mkdir -p "$ROOT" || die "cannot create --root $ROOT"
  ROOT=$(cd "$ROOT" 2>/dev/null && pwd || echo "$ROOT")
fi

# shellcheck source=actions.sh
. "$(dirname "${BASH_SOURCE[0]}")/actions.sh"

model_id() { sed -n 's/.*"model_id": *"\([^"]*\)".*/\1/p' "$1/model.json" 2>/dev/null | head -1; }

# --- checks --------------------------------------------------------------------------------------
[ -d "$SRC/device" ] || die "run this script from a prodrec checkout (no device/ in $SRC)"
[ -f "$SRC/device/default_config.toml" ] || die "$SRC/device/default_config.toml is missing"
if [ -n "$WEB_PASSWORD_FILE" ]; then
  # Checked before anything is installed: a typo must not leave a half-configured device.
  [ -r "$WEB_PASSWORD_FILE" ] || die "--web-password-file $WEB_PASSWORD_FILE cannot be read"
  # The rule of `prodrec web set-password` (8 characters at least, a final CR dropped), checked
  # here so that it cannot fail after the code is installed. The password stays out of argv.
  web_pw=$(head -n 1 "$WEB_PASSWORD_FILE" | tr -d '\r')
  [ "${#web_pw}" -ge 8 ] || die "--web-password-file $WEB_PASSWORD_FILE: its first line (the \
password) has ${#web_pw} characters; the web page needs 8 at least"
  unset web_pw
fi
if live; then
  [ "$(id -u)" = 0 ] || die "run as root: sudo $0 (or --dry-run to see what it would do)"
  arch=$(uname -m)
  [ "$arch" = aarch64 ] || die "64-bit Raspberry Pi OS (aarch64) is required, this is $arch: \
the LiteRT runtime has no 32-bit ARM wheels"
  codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
  case "$codename" in
    bookworm|trixie) ;;
    *) echo "install.sh: warning: tested on Raspberry Pi OS Bookworm and Trixie, this is" \
         "'${codename:-unknown}'; continuing" >&2 ;;
  esac
fi
note "installing $NAME from $SRC${ROOT:+ into root $ROOT}$([ "$DRY_RUN" = 1 ] && echo ' (dry run)')"

# --- 1. packages ---------------------------------------------------------------------------------
APT_PACKAGES=(python3 python3-venv python3-pip python3-numpy python3-picamera2 libcap-dev)
if [ "$DO_APT" = 1 ]; then
  note "apt packages"
  sys apt-get update
  # --no-install-recommends: picamera2 recommends the Qt/OpenGL preview stack, useless headless.
  sys env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${APT_PACKAGES[@]}"
fi

# --- 2. service user -----------------------------------------------------------------------------
note "service user $NAME (groups: $NAME, video)"
if live && getent passwd "$NAME" >/dev/null; then
  echo "   user $NAME exists"
  sys usermod -a -G video "$NAME"
else
  getent group video >/dev/null 2>&1 || ! live || sys groupadd --system video
  sys useradd --system --user-group --groups video --home-dir "/var/lib/$NAME" \
    --no-create-home --shell /usr/sbin/nologin --comment "prodrec service" "$NAME"
fi

# --- 3. venv and pip requirements ----------------------------------------------------------------
note "virtual environment $VENV (--system-site-packages: picamera2 and numpy come from apt)"
if [ -x "$VENV/bin/python" ] && ! grep -qi '^include-system-site-packages *= *true' "$VENV/pyvenv.cfg"; then
  echo "   $VENV was made without --system-site-packages (picamera2 would be missing): recreating"
  sys rm -rf "$VENV"
fi
if live && [ -x "$VENV/bin/python" ]; then
  echo "   $VENV exists"
else
  # --clear: a venv whose python is gone (e.g. after an OS upgrade) is rebuilt, not patched.
  sys python3 -m venv --system-site-packages --clear "$VENV"
fi
# Pin numpy to apt's: picamera2 (and simplejpeg) from apt are compiled against it, and a pip numpy
# in the venv would shadow it ("numpy.dtype size changed" / "compiled against ABI version").
CONSTRAINTS="$OPT/constraints.txt"
act mkdir -p "$OPT"
if live; then
  apt_numpy=$(/usr/bin/python3 -c 'import numpy; print(numpy.__version__)') \
    || die "apt's python3-numpy does not import; reinstall it: apt-get install --reinstall python3-numpy"
  echo "   apt's numpy: $apt_numpy"
  printf '# written by install.sh: the numpy apt installed, which picamera2 is built against\nnumpy==%s\n' \
    "$apt_numpy" > "$CONSTRAINTS"
else
  echo "+ write $CONSTRAINTS: numpy==<version of apt's python3-numpy>"
fi
# A numpy that pip once put inside the venv shadows apt's: remove it (the usual cause of
# "numpy.dtype size changed" after someone ran `pip install numpy` there).
if live && "$VENV/bin/python" -c \
    'import sys, numpy; sys.exit(0 if numpy.__file__.startswith(sys.prefix) else 1)' 2>/dev/null; then
  echo "   a pip-installed numpy in $VENV shadows apt's: removing it"
  sys "$VENV/bin/python" -m pip uninstall -y numpy
fi
sys "$VENV/bin/python" -m pip install --disable-pip-version-check --upgrade \
  -r "$SRC/systemd/requirements-pi.txt" -c "$CONSTRAINTS"
if live; then
  # Fail now, with the cause, rather than in the service's first start.
  "$VENV/bin/python" - <<'EOF' || die "the venv cannot import what the service needs (see above)"
import numpy, cv2, sys
print(f"   numpy {numpy.__version__} from {numpy.__file__}")
print(f"   opencv {cv2.__version__}")
if "/usr/lib/python3/dist-packages" not in numpy.__file__:
    sys.exit("numpy in the venv shadows apt's numpy: picamera2 will break; "
             "`/opt/prodrec/venv/bin/pip uninstall numpy`")
import picamera2  # noqa: F401
from ai_edge_litert.interpreter import Interpreter  # noqa: F401
import starlette, uvicorn, multipart  # noqa: F401,E401 - the web page ([web])
print("   picamera2, ai_edge_litert and the web server import")
EOF
  # The model that will run: the installed one on an upgrade (kept), else the one to install.
  # The same model as the one to install: check that one (an installed copy that an older
  # install.sh left without its cohort is completed in step 6, after this check).
  check_model=$MODEL_SRC
  if [ -f "$STATE/model/model.json" ] \
      && [ "$(model_id "$STATE/model")" != "$(model_id "$MODEL_SRC")" ]; then
    check_model=$STATE/model
  fi
  if [ -f "$check_model/model.json" ]; then
    # One real inference with the model being installed: a runtime that imports but cannot
    # run the model (an ABI mismatch with apt's numpy) shows here, not at the first start.
    PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$SRC" "$VENV/bin/python" - "$check_model" <<'EOF' \
      || die "the runtime cannot run the model $check_model (see above)"
import sys
import numpy as np
from device.embedder import Embedder
with Embedder(sys.argv[1]) as emb:
    vec = emb.embed(np.full((200, 200, 3), 128, np.uint8))
    print(f"   one inference with {emb.meta.name}: {vec.shape[0]}-d, norm {np.linalg.norm(vec):.3f}")
EOF
  fi
fi

# --- 4. code -------------------------------------------------------------------------------------
note "code -> $APP"
act mkdir -p "$OPT"
act rm -rf "$APP.new"
act mkdir -p "$APP.new"
act cp -R "$SRC/device" "$APP.new/device"
act rm -rf "$APP.new/device/__pycache__"
for f in README.md LICENSE requirements.txt; do
  [ ! -f "$SRC/$f" ] || act cp "$SRC/$f" "$APP.new/$f"
done
[ ! -d "$SRC/docs" ] || act cp -R "$SRC/docs" "$APP.new/docs"
act cp -R "$SRC/systemd" "$APP.new/systemd"
# Swap in whole: a half-copied tree is never the running code.
act rm -rf "$APP.old"
if [ -d "$APP" ] || [ "$DRY_RUN" = 1 ]; then act mv "$APP" "$APP.old"; fi
act mv "$APP.new" "$APP"
act rm -rf "$APP.old"
sys "$VENV/bin/python" -m compileall -q "$APP/device"
act mkdir -p "$ROOT/usr/local/bin"
act install -m 0755 "$SRC/systemd/prodrec-cli.sh" "$ROOT/usr/local/bin/$NAME"

# --- 5. configuration ----------------------------------------------------------------------------
note "configuration $ETC/config.toml"
act mkdir -p "$ETC"
act install -m 0644 "$SRC/device/default_config.toml" "$ETC/config.toml.default"
if [ -e "$ETC/config.toml" ]; then
  echo "   keeping the existing $ETC/config.toml (compare with config.toml.default after upgrades)"
else
  act install -m 0640 "$SRC/device/default_config.toml" "$ETC/config.toml"
  sys chgrp "$NAME" "$ETC/config.toml"
fi

# --- 6. state: model bundle (the product database is created by the service) ---------------------
note "state $STATE"
act mkdir -p "$STATE"
# A bundle is the whole folder: model.json, the .tflite and, in format 2, the cohort (plus notes).
bundle_files=()
for f in "$MODEL_SRC"/*; do [ ! -f "$f" ] || bundle_files+=("$f"); done
if [ -e "$STATE/model/model.json" ]; then
  echo "   keeping the installed model $STATE/model (see README: deploying a new model)"
  # The same model installed by an older install.sh that copied model.json and the .tflite only:
  # add the files it lacks (the cohort), or the service refuses the bundle.
  if [ "$(model_id "$STATE/model")" = "$(model_id "$MODEL_SRC")" ]; then
    for f in "${bundle_files[@]}"; do
      [ -e "$STATE/model/${f##*/}" ] || act cp "$f" "$STATE/model/"
    done
  fi
elif [ -f "$MODEL_SRC/model.json" ] && [ -f "$MODEL_SRC/model.tflite" ]; then
  act rm -rf "$STATE/model.new"
  act mkdir -p "$STATE/model.new"
  act cp "${bundle_files[@]}" "$STATE/model.new/"
  act mv "$STATE/model.new" "$STATE/model"
else
  echo "install.sh: warning: no model bundle at $MODEL_SRC (model.tflite + model.json);" \
    "copy one to $STATE/model before starting the service" >&2
fi
sys chown -R "$NAME:$NAME" "$STATE"
sys chmod 0750 "$STATE"

# --- 7. systemd unit -----------------------------------------------------------------------------
note "systemd unit $UNIT_DIR/$NAME.service"
act mkdir -p "$UNIT_DIR"
act install -m 0644 "$SRC/systemd/$NAME.service" "$UNIT_DIR/$NAME.service"
# RestartSteps/RestartMaxDelaySec (growing restart delays) exist from systemd 254 (Trixie);
# Bookworm's 252 would log "Unknown key" for them.
systemd_version=${SYSTEMD_VERSION:-$(systemctl --version 2>/dev/null | awk 'NR==1 {print $2}' || true)}
systemd_version=${systemd_version%%[!0-9]*}
DROPIN_DIR="$UNIT_DIR/$NAME.service.d"
if [ -n "$systemd_version" ] && [ "$systemd_version" -ge 254 ]; then
  echo "   systemd $systemd_version: restart delays grow up to 60 s (restart-backoff.conf)"
  act mkdir -p "$DROPIN_DIR"
  act install -m 0644 "$SRC/systemd/restart-backoff.conf" "$DROPIN_DIR/restart-backoff.conf"
else
  echo "   systemd ${systemd_version:-unknown} < 254: fixed 5 s restart delay"
  [ ! -e "$DROPIN_DIR/restart-backoff.conf" ] || act rm -f "$DROPIN_DIR/restart-backoff.conf"
fi
sys systemctl daemon-reload
sys systemctl enable "$NAME.service"
if [ -n "$WEB_PASSWORD_FILE" ]; then
  note "web page password (from $WEB_PASSWORD_FILE)"
  # The installed command runs as the service user, so the hash file is the service's own.
  sys sh -c "head -n 1 \"\$1\" | \"\$2\" web set-password --password-stdin --config \"\$3\"" \
    set-password "$WEB_PASSWORD_FILE" "$ROOT/usr/local/bin/$NAME" "$ETC/config.toml"
fi
if [ "$DO_START" = 1 ]; then
  # restart, not start: an upgrade must run the new code.
  sys systemctl reset-failed "$NAME.service"  # a start limit hit before must not block it
  sys systemctl restart "$NAME.service"
fi

note "done"
cat <<EOF
   status:   systemctl status $NAME
   log:      journalctl -u $NAME -f      (recognition events are the JSON lines)
   config:   /etc/$NAME/config.toml      then: sudo systemctl restart $NAME
   products: sudo $NAME products list --config /etc/$NAME/config.toml
   enroll:   sudo systemctl stop $NAME     (it holds the camera)
             sudo $NAME enroll "Product name" --config /etc/$NAME/config.toml
             sudo systemctl start $NAME
   web page: http://127.0.0.1:8080 on this device (from a laptop: ssh -L 8080:127.0.0.1:8080);
             for the shop's network: sudo $NAME web set-password --config /etc/$NAME/config.toml,
             then [web] host and the unit's IPAddressAllow (README: "From another computer")
   remove:   sudo /opt/$NAME/app/systemd/uninstall.sh   (keeps /var/lib/$NAME unless --purge)
EOF
