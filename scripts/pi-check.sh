#!/usr/bin/env bash
# The Raspberry Pi install, proven without a Pi: for each release, an ARM64 Debian root
# (debootstrap --arch=arm64, run through qemu-user-static), in which
#   1. systemd/install.sh runs for real, as root, as on a Pi: apt packages, the service user, the
#      venv with pip's aarch64 wheels constrained to apt's numpy, the import checks and one
#      inference, the code, config, model and unit, `systemctl enable` (--no-start: nothing can
#      start a unit in a chroot; systemctl ignores daemon-reload there), the web page's password
#      (--web-password-file; the hash must be the service user's and not the password);
#   2. install.sh again, as an upgrade over an installed model without its cohort (what the
#      install.sh before 9df0c95 left): it must complete the model;
#   3. the installed CLI wrapper validates the installed configuration as the service user;
#   4. the demo (scripts/demo.sh) runs with the installed venv and the installed code
#      (/opt/prodrec/app/device) and the installed model (/var/lib/prodrec/model);
#   5. `systemd-analyze verify` checks the installed unit with that release's systemd.
# Debian Bookworm has no python3-picamera2 (it comes from the Raspberry Pi OS archive): where a release
# lacks it, a stand-in package is installed first, and the log says so. The stand-in imports; it
# opens no camera (no camera can be tested here anyway).
#
# Usage: sudo [PI_CHECK_CPU=cortex-a72|cortex-a76|cortex-a53] scripts/pi-check.sh
#            [--release bookworm|trixie]... [--cache DIR] [--rebuild]
#   --release R   check this release (repeatable; default: bookworm, then trixie)
#   --cache DIR   where the base roots are kept between runs (default /var/cache/prodrec-pi-check)
#   --rebuild     build the base roots again (after a Debian point release, say)
# Needs root, network access to deb.debian.org and PyPI, and about 3 GB in the cache. The host's
# locally added CA certificates (PI_CHECK_CA_DIR, default /usr/local/share/ca-certificates, e.g.
# a TLS-intercepting proxy's) are added to each root, so pip there trusts what the host trusts. The
# committed code (git HEAD) is checked, not uncommitted changes. CPU-heavy (everything runs
# emulated): run it under `nice`, one release at a time (it does). Exit 0 when every release
# passed; the last lines say which passed. Logs: CACHE/logs/RELEASE-TIME.log.
set -euo pipefail
# The whole script is one block, read before it runs: bash reads a script as it goes, and an edit
# of this file during a (long) run would otherwise run a mix of the two versions.
{

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=/var/cache/prodrec-pi-check
RELEASES=()
REBUILD=0
MIRROR=${PI_CHECK_MIRROR:-http://deb.debian.org/debian}
CA_DIR=${PI_CHECK_CA_DIR:-/usr/local/share/ca-certificates}
# The CPU qemu emulates. Its default ("max") announces SVE and SME, which no Raspberry Pi has, so
# kernels a Pi never runs could be chosen. A Pi 4 is a Cortex-A72, a Pi 5 a Cortex-A76, a Pi 3 /
# Zero 2 W a Cortex-A53.
QEMU_CPU=${PI_CHECK_CPU:-cortex-a72}
export QEMU_CPU
die() { echo "pi-check: error: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --release) [ $# -ge 2 ] || die "--release needs a name"; RELEASES+=("$2"); shift ;;
    --cache) [ $# -ge 2 ] || die "--cache needs a directory"; CACHE=$2; shift ;;
    --rebuild) REBUILD=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
[ ${#RELEASES[@]} -gt 0 ] || RELEASES=(bookworm trixie)
for r in "${RELEASES[@]}"; do
  case "$r" in bookworm|trixie) ;; *) die "unknown release '$r' (bookworm or trixie)" ;; esac
done
[ "$(id -u)" = 0 ] || die "run as root (debootstrap and chroot need it)"

# --- the host: debootstrap, qemu-user-static and an aarch64 binfmt handler ----------------------
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
[ -x /usr/bin/qemu-aarch64-static ] || need+=(qemu-user-static)
command -v update-binfmts >/dev/null || need+=(binfmt-support)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]} (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
    || die "cannot mount binfmt_misc: this machine cannot run ARM64 programs through qemu"
fi
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 \
  || die "cannot register qemu-aarch64 with binfmt_misc"

mkdir -p "$CACHE/logs"
exec 9>"$CACHE/.lock"
flock -n 9 || die "another pi-check is running (lock $CACHE/.lock)"
COMMIT=$(git -C "$SRC" rev-parse --short HEAD)
# The code checked is this commit's, taken now: commits made during the (long) run do not mix in.
SOURCE_TAR="$CACHE/source-$COMMIT.tar"
git -C "$SRC" archive --format=tar HEAD > "$SOURCE_TAR"

ROOT=""
cleanup() {
  [ -n "$ROOT" ] || return 0
  for m in dev/pts dev sys proc; do
    mountpoint -q "$ROOT/$m" && umount -l "$ROOT/$m"
  done
  rm -rf "$ROOT"
  ROOT=""
}
trap cleanup EXIT

# in_root CMD...: run in the ARM64 root with a clean environment, as root. SYSTEMD_OFFLINE=1:
# systemctl must not talk to the host's PID 1. It would find out it is in a chroot by itself,
# through /proc/1/root, but a sandbox may deny that (then daemon-reload fails: "System has not
# been booted with systemd").
in_root() {
  chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb QEMU_CPU="$QEMU_CPU" \
    SYSTEMD_OFFLINE=1 \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}

# The stand-in for python3-picamera2, a package of its own so that apt considers it installed.
standin_deb() {
  local dir
  dir=$(mktemp -d)
  mkdir -p "$dir/DEBIAN" "$dir/usr/lib/python3/dist-packages/picamera2"
  cat > "$dir/DEBIAN/control" <<EOF
Package: python3-picamera2
Version: 0~prodrec.pi.check
Architecture: all
Maintainer: prodrec pi-check <nobody@localhost>
Depends: python3, python3-numpy
Description: stand-in for Raspberry Pi OS's picamera2 (pi-check only)
 Installed by prodrec's scripts/pi-check.sh on a Debian release without python3-picamera2.
EOF
  cat > "$dir/usr/lib/python3/dist-packages/picamera2/__init__.py" <<'EOF'
"""Stand-in for picamera2 (prodrec scripts/pi-check.sh): Debian lacks python3-picamera2, which
Raspberry Pi OS ships. It imports; it opens no camera."""


class Picamera2:
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("picamera2 stand-in (pi-check): there is no camera here")

    @staticmethod
    def global_camera_info() -> list:
        return []
EOF
  dpkg-deb --root-owner-group --build "$dir" "$1" >/dev/null
  rm -rf "$dir"
}

check_release() {
  local release=$1 base="$CACHE/$release-arm64.tar" t0=$SECONDS
  if [ "$REBUILD" = 1 ] || [ ! -s "$base" ]; then
    echo "== [$release] building the ARM64 base root (debootstrap; cached in $base)"
    local build="$CACHE/$release-build"
    rm -rf "$build"
    # What a Raspberry Pi OS Lite image has and the install relies on: systemd (the unit),
    # ca-certificates (pip), sudo/runuser (util-linux is essential), no Python yet.
    debootstrap --arch=arm64 --variant=minbase \
      --include=systemd,systemd-sysv,ca-certificates,dbus \
      "$release" "$build" "$MIRROR"
    rm -f "$build/var/cache/apt/archives/"*.deb
    tar -C "$build" -cf "$base.tmp" . && mv "$base.tmp" "$base"
    rm -rf "$build"
  fi
  ROOT=$(mktemp -d "$CACHE/$release-run.XXXXXX")
  tar -C "$ROOT" -xf "$base"
  mount -t proc proc "$ROOT/proc"
  # No sysfs: it would describe this machine's x86 CPUs, and LiteRT's CPU detection (cpuinfo)
  # reading x86 topology as an ARM one crashed the first inference (SIGSEGV). Without it cpuinfo
  # logs "failed to parse" and uses defaults; on a Pi, /sys describes the Pi.
  mount --bind /dev "$ROOT/dev"
  mount --bind /dev/pts "$ROOT/dev/pts"
  cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
  # A host that reaches the network through a TLS-intercepting proxy trusts the proxy's CA through
  # a certificate its admin added (/usr/local/share/ca-certificates); a fresh root does not, and
  # pip fails with CERTIFICATE_VERIFY_FAILED. Those local CAs (only those, not Debian's bundle) are
  # added to the root the way an admin would add them on a Pi behind the same proxy.
  local cas=("$CA_DIR"/*.crt)
  if [ -e "${cas[0]}" ]; then
    echo "== [$release] adding the host's local CA certificates to the root: ${cas[*]##*/}"
    mkdir -p "$ROOT/usr/local/share/ca-certificates"
    cp -L "${cas[@]}" "$ROOT/usr/local/share/ca-certificates/"
    in_root update-ca-certificates >/dev/null
    # pip may carry its own CA list (certifi) rather than the system's: point it at the system's.
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$ROOT/etc/pip.conf"
  fi
  echo "deb $MIRROR $release main" > "$ROOT/etc/apt/sources.list"
  echo "== [$release] $(in_root uname -m) (qemu -cpu $QEMU_CPU), $(in_root systemctl --version | head -1)"

  mkdir -p "$ROOT/root/prodrec"
  tar -x -C "$ROOT/root/prodrec" -f "$SOURCE_TAR"
  in_root apt-get update -qq
  if in_root apt-cache show python3-picamera2 >/dev/null 2>&1; then
    echo "== [$release] python3-picamera2 is in this release: the real package is installed"
  else
    echo "== [$release] python3-picamera2 is NOT in Debian $release (Raspberry Pi OS ships it):" \
      "installing a stand-in package that imports but opens no camera"
    standin_deb "$ROOT/root/python3-picamera2-standin.deb"
    in_root sh -c 'cd /root && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends ./python3-picamera2-standin.deb'
  fi

  echo "== [$release] systemd/install.sh --no-start --web-password-file (for real, as root)"
  printf 'pi-check-%s\n' "$release" > "$ROOT/root/web-password.txt"
  in_root sh -c 'cd /root/prodrec && systemd/install.sh --no-start \
    --web-password-file /root/web-password.txt'
  echo "== [$release] the web page's password hash is the service user's"
  in_root sh -c 'test "$(stat -c %U /var/lib/prodrec/web-password)" = prodrec \
    && ! grep -q pi-check /var/lib/prodrec/web-password'

  echo "== [$release] install.sh again, as an upgrade over a model an older install.sh left" \
    "without its cohort (it must complete it, not fail its inference check on it)"
  rm -f "$ROOT/var/lib/prodrec/model/cohort.npy"
  in_root sh -c 'cd /root/prodrec && systemd/install.sh --no-start --no-apt'
  test -f "$ROOT/var/lib/prodrec/model/cohort.npy"

  echo "== [$release] the installed command validates the installed configuration"
  in_root /usr/local/bin/prodrec run --validate-config --config /etc/prodrec/config.toml

  echo "== [$release] systemd-analyze verify on the installed unit"
  in_root systemd-analyze verify /etc/systemd/system/prodrec.service
  in_root systemctl is-enabled prodrec.service

  echo "== [$release] the demo with the installed venv, code (/opt/prodrec/app) and model"
  local work="$ROOT/root/demo-check"
  mkdir -p "$work"
  cp -R "$ROOT/root/prodrec/demo" "$ROOT/root/prodrec/scripts" "$work/"
  ln -s /opt/prodrec/app/device "$work/device"
  in_root sh -c 'cd /root/demo-check && scripts/demo.sh --python /opt/prodrec/venv/bin/python \
    --model /var/lib/prodrec/model'
  echo "== [$release] PASS in $((SECONDS - t0)) s (commit $COMMIT)"
  cleanup
}

passed=()
failed=()
for release in "${RELEASES[@]}"; do
  log="$CACHE/logs/$release-$(date -u +%Y%m%dT%H%M%SZ).log"
  echo "== [$release] log: $log"
  # One release at a time, each in a subshell (errexit on, its own clean-up): a failure is
  # recorded and the next release still runs. Not inside `if`, which would turn errexit off.
  set +e
  ( set -e; trap cleanup EXIT; check_release "$release" ) 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" = 0 ]; then passed+=("$release"); else failed+=("$release"); fi
done
echo "pi-check at commit $COMMIT: passed: ${passed[*]:-none}; failed: ${failed[*]:-none}"
[ ${#failed[@]} -eq 0 ]
exit
}
