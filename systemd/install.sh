#!/usr/bin/env bash
# Install (or upgrade) the collection station on a Debian 12 machine. Run as root.
#
#   systemd/install.sh [options]
#
#   --source DIR             the station's source tree (default: the checkout holding this script)
#   --root DIR               install into the Debian 12 root file system at DIR instead of /
#                            (it is entered with chroot, /proc, /sys and /dev mounted read-only
#                            in a private mount namespace; nothing is started)
#   --no-kiosk               leave out the touchscreen kiosk (cage + chromium)
#   --station-id ID          station.id written into a new configuration (default: STATION-<hostname>)
#   --allow-unmounted-disks  do not mark empty, unmounted store folders immutable
#   --ntp HOST[,HOST...]     keep the clock right with systemd-timesyncd from these time servers
#                            (the force's own; may be given more than once). Retention ages
#                            footage by this clock, see docs/reliability.md
#   --packages-only          only install the Debian packages, then stop
#   --print-packages         print the Debian packages it would install, then stop
#
# What it does, each step skipped when already done (running it again upgrades):
#   Debian packages; the system user "station" (the kiosk's); /etc/station/station.toml
#   with a generated API token if there is none (and /etc/profile.d/station.sh, which
#   points the station commands at it); /var/lib/station and the store folders;
#   the venv /opt/station with the station installed from the source tree (pip may fetch
#   the dependencies from PyPI, or from PIP_INDEX_URL / PIP_FIND_LINKS); the units, their
#   generated drop-in and the udev rule; units enabled, never started.
# With --root, pip inside the root uses this machine's proxy settings and CA bundle
# (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, http(s)_proxy, PIP_CERT or SSL_CERT_FILE) and its
# download cache when PIP_CACHE_DIR is set; STATION_APT_ARCHIVES=DIR keeps the downloaded
# Debian packages in DIR instead of the root (both used by tests/test_install.py).
# See docs/deploy.md.
set -euo pipefail

PREFIX=/opt/station
CONF_DIR=/etc/station
CONFIG=$CONF_DIR/station.toml
UNIT_DIR=/etc/systemd/system
RULES=/etc/udev/rules.d/99-station.rules
KIOSK_HOME=/var/lib/station-kiosk

RUNTIME_PACKAGES=(
  python3 python3-venv ca-certificates systemd udev kmod e2fsprogs util-linux mount
  espeak-ng alsa-utils smartmontools dosfstools exfatprogs fusefat exfat-fuse fuse3
  libusb-1.0-0 systemd-timesyncd
)
# cage is built with Xwayland support and will not start without it (Debian's package does
# not even recommend it).
KIOSK_PACKAGES=(cage xwayland chromium fonts-wqy-microhei libgl1-mesa-dri libpam-systemd dbus)

SOURCE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=/
KIOSK=1
STATION_ID=
GUARD_DISKS=1
MODE=install
NTP=

say() { printf 'install.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --source) SOURCE=${2:?--source needs a folder}; shift 2 ;;
    --root) ROOT=${2:?--root needs a folder}; shift 2 ;;
    --no-kiosk) KIOSK=0; shift ;;
    --station-id) STATION_ID=${2:?--station-id needs a value}; shift 2 ;;
    --allow-unmounted-disks) GUARD_DISKS=0; shift ;;
    --ntp) NTP="${NTP:+$NTP,}${2:?--ntp needs a time server}"; shift 2 ;;
    --packages-only) MODE=packages; shift ;;
    --print-packages) MODE=print; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

# copy_tree SRC DST: what installing needs from a source tree (not its venv, its demo
# data or its benchmark output)
copy_tree() {
  local items=() i
  for i in pyproject.toml setup.cfg setup.py MANIFEST.in README.md station \
    systemd docs/deploy.md .revision; do
    [ ! -e "$1/$i" ] || items+=("$i")
  done
  tar -C "$1" -c --exclude=__pycache__ --exclude='*.egg-info' --exclude='*.pyc' \
    "${items[@]}" | tar -C "$2" -x
}

packages() {
  printf '%s\n' "${RUNTIME_PACKAGES[@]}"
  if [ "$KIOSK" = 1 ]; then printf '%s\n' "${KIOSK_PACKAGES[@]}"; fi
}

if [ "$MODE" = print ]; then packages; exit 0; fi
[ "$(id -u)" = 0 ] || die "run me as root"
SOURCE=$(cd "$SOURCE" && pwd)
if [ ! -f "$SOURCE/pyproject.toml" ] || [ ! -d "$SOURCE/station" ]; then
  die "$SOURCE is not the station's source tree (no pyproject.toml / station/)"
fi

# --- into another root: the same script, run inside it with chroot -------------------------

if [ "$(cd "$ROOT" && pwd -P)" != / ]; then
  ROOT=$(cd "$ROOT" && pwd -P)
  [ -f "$ROOT/etc/debian_version" ] || die "$ROOT does not look like a Debian root file system"
  command -v unshare >/dev/null || die "unshare (util-linux) is needed for --root"
  args=(--source /var/tmp/station-src)
  [ "$KIOSK" = 1 ] || args+=(--no-kiosk)
  [ -z "$STATION_ID" ] || args+=(--station-id "$STATION_ID")
  [ "$GUARD_DISKS" = 1 ] || args+=(--allow-unmounted-disks)
  [ -z "$NTP" ] || args+=(--ntp "$NTP")
  [ "$MODE" = install ] || args+=(--packages-only)
  # The commit the tree was built from, for `station diagnose` (git is outside the root).
  revision=$(git -C "$SOURCE" describe --always --dirty 2>/dev/null || true)
  # The source is copied in (pip builds in the tree); mounts live in a private
  # namespace, so they disappear with it whatever happens.
  export ROOT SOURCE revision
  export -f copy_tree
  export STATION_PIP_CACHE=${PIP_CACHE_DIR:-}
  # shellcheck disable=SC2016  # expanded by the inner bash, from the exported variables
  exec unshare --mount --propagation private -- bash -euo pipefail -c '
    rm -rf "$ROOT/var/tmp/station-src"
    mkdir -p "$ROOT/var/tmp/station-src"
    copy_tree "$SOURCE" "$ROOT/var/tmp/station-src"
    [ -z "$revision" ] || echo "$revision" >"$ROOT/var/tmp/station-src/.revision"
    # no service may start inside the root while packages are installed
    policy="$ROOT/usr/sbin/policy-rc.d"
    if [ -e "$policy" ]; then
      trap "rm -rf \"\$ROOT/var/tmp/station-src\"" EXIT
    else
      trap "rm -rf \"\$ROOT/var/tmp/station-src\" \"\$policy\"" EXIT
      printf "#!/bin/sh\nexit 101\n" >"$policy"
      chmod 0755 "$policy"
    fi
    mount -t proc -o ro,nosuid,nodev,noexec proc "$ROOT/proc"
    mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$ROOT/sys"
    mount --bind /dev "$ROOT/dev" && mount -o remount,bind,ro "$ROOT/dev"
    mount -t devpts -o newinstance,ptmxmode=0666,nosuid,noexec devpts "$ROOT/dev/pts" 2>/dev/null || true
    mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$ROOT/run"
    if [ -f /etc/resolv.conf ]; then
      touch "$ROOT/etc/resolv.conf" 2>/dev/null || true
      mount --bind "$(readlink -f /etc/resolv.conf)" "$ROOT/etc/resolv.conf" \
        && mount -o remount,bind,ro "$ROOT/etc/resolv.conf"
    fi
    if [ -n "${STATION_APT_ARCHIVES:-}" ]; then   # keep downloaded .debs outside the root
      mkdir -p "$STATION_APT_ARCHIVES/partial" "$ROOT/var/cache/apt/archives"
      mount --bind "$STATION_APT_ARCHIVES" "$ROOT/var/cache/apt/archives"
    fi
    pip_env=()
    if [ -n "$STATION_PIP_CACHE" ]; then
      mkdir -p "$STATION_PIP_CACHE" "$ROOT/var/cache/station-pip"
      mount --bind "$STATION_PIP_CACHE" "$ROOT/var/cache/station-pip"
      pip_env=(PIP_CACHE_DIR=/var/cache/station-pip)
    fi
    # A site proxy: its settings, and the CA bundle this machine trusts, go in with pip.
    for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL http_proxy https_proxy no_proxy; do
      [[ "${!v:-}" != http* ]] || pip_env+=("$v=${!v}")
    done
    ca=${PIP_CERT:-${SSL_CERT_FILE:-}}
    if [ -n "$ca" ] && [ -f "$ca" ]; then
      cp "$ca" "$ROOT/run/station-install-ca.crt"
      pip_env+=(PIP_CERT=/run/station-install-ca.crt)
    fi
    chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "${pip_env[@]}" \
      bash /var/tmp/station-src/systemd/install.sh "$@"
  ' install.sh "${args[@]}"
fi

# --- Debian packages ------------------------------------------------------------------------

mapfile -t WANT < <(packages)
missing=()
for p in "${WANT[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == *"ok installed" ]] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ "$MODE" = packages ] && { say "Debian packages installed"; exit 0; }

booted=0
[ -d /run/systemd/system ] && booted=1   # a running systemd (not a chroot)

# write FILE MODE: stdin to FILE atomically, only when it changed
put() {
  local file=$1 mode=$2 tmp
  tmp=$(mktemp "$file.XXXXXX")
  cat >"$tmp"
  chmod "$mode" "$tmp"
  if [ -f "$file" ] && cmp -s "$tmp" "$file"; then
    rm -f "$tmp"
    chmod "$mode" "$file"
  else
    mv -f "$tmp" "$file"
  fi
}

# --- the kiosk's user -----------------------------------------------------------------------
# The daemon runs as root (docs/deploy.md, "Why root"); "station" is the unprivileged
# user of the touchscreen session, with no access to the configuration or the store.

if ! getent passwd station >/dev/null; then
  say "creating the system user station"
  useradd --system --user-group --home-dir "$KIOSK_HOME" --no-create-home \
    --shell /usr/sbin/nologin --comment "Collection station kiosk" station
fi
for g in video render input; do
  getent group "$g" >/dev/null && usermod -a -G "$g" station
done
install -d -m 0700 -o station -g station "$KIOSK_HOME"

# --- the venv ---------------------------------------------------------------------------

pyver=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ -x "$PREFIX/bin/python" ] \
  && [ "$("$PREFIX/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" != "$pyver" ]; then
  say "$PREFIX was built for another Python: rebuilding it"
  rm -rf "$PREFIX"
fi
if [ ! -x "$PREFIX/bin/python" ]; then
  say "creating the venv $PREFIX"
  python3 -m venv "$PREFIX"
fi
build=$(mktemp -d /var/tmp/station-build.XXXXXX)
trap 'rm -rf "$build"' EXIT
copy_tree "$SOURCE" "$build"
say "installing the station into $PREFIX (pip)"
"$PREFIX/bin/python" -m pip install -q --no-input --disable-pip-version-check \
  --upgrade-strategy only-if-needed "$build"
revision=$(cat "$SOURCE/.revision" 2>/dev/null || git -C "$SOURCE" describe --always --dirty 2>/dev/null || true)
version=$("$PREFIX/bin/python" -c 'import station; print(station.__version__)')
put "$PREFIX/INSTALLED" 0644 <<EOF
version=$version
revision=${revision:-unknown}
installed=$(date -u +%Y-%m-%dT%H:%M:%SZ)
kiosk=$KIOSK
EOF
install -d -m 0755 "$PREFIX/share/doc/station"
for f in README.md docs/deploy.md; do
  [ ! -f "$SOURCE/$f" ] || install -m 0644 "$SOURCE/$f" "$PREFIX/share/doc/station/"
done
install -m 0644 "$SOURCE/systemd/station.toml.example" "$SOURCE/systemd/fstab.example" \
  "$PREFIX/share/doc/station/"
ln -sfn "$PREFIX/bin/station" /usr/local/bin/station

# --- the configuration --------------------------------------------------------------------

install -d -m 0755 -o root -g root "$CONF_DIR"
check_config() {
  "$PREFIX/bin/python" -c 'import sys
from station.config import ConfigError, load_config
try:
    load_config(sys.argv[1])
except ConfigError as e:
    sys.exit(str(e))' "$1"
}
if [ ! -e "$CONFIG" ]; then
  token=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
  [ ${#token} = 64 ] || die "could not read a token from /dev/urandom"
  id=${STATION_ID:-STATION-$(hostname -s 2>/dev/null || echo 0001)}
  [[ "$id" =~ ^[A-Za-z0-9._-]+$ ]] || die "station id $id: use letters, digits, . _ -"
  tmp=$(mktemp "$CONFIG.XXXXXX")
  chmod 0600 "$tmp"
  sed -e "s/@STATION_ID@/$id/" -e "s/@API_TOKEN@/$token/" \
    "$SOURCE/systemd/station.toml.example" >"$tmp"
  check_config "$tmp" || { rm -f "$tmp"; die "the generated configuration is invalid"; }
  mv "$tmp" "$CONFIG"
  say "wrote $CONFIG (station $id) with a new API token: see [api] tokens there"
else
  check_config "$CONFIG" || die "fix $CONFIG first (the service would not start with it)"
  say "keeping $CONFIG"
fi
chown root:root "$CONFIG"
chmod 0600 "$CONFIG"
# Administrators' login shells: `station status`, `station diagnose`, ... without --config.
put /etc/profile.d/station.sh 0644 <<EOF
# Collection station (install.sh): the configuration the station commands use.
export STATION_CONFIG=$CONFIG
EOF

# What the rest needs from the configuration, one "kind<TAB>value" a line.
facts=$("$PREFIX/bin/python" - "$CONFIG" <<'PY'
import re
import sys
from pathlib import Path

from station.config import load_config

c = load_config(sys.argv[1])
safe = re.compile(r"^/[A-Za-z0-9._/+@:-]*$")
for d in c.store.disks:
    print(f"disk\t{d}")
paths = [*c.store.disks, c.database_path.parent]
for p in (c.bus.mount_root, c.bus.path):
    if not Path(p).is_relative_to("/run/station"):
        paths.append(p)
for p in paths:
    if not safe.match(str(p)):
        sys.exit(f"{p}: use a path of letters, digits and . _ / + @ : -")
    print(f"rw\t{p}")
host = c.web.host if c.web.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
host = f"[{host}]" if ":" in host else host
print(f"url\thttp://{host}:{c.web.port}/")
for port, usb in sorted(c.bus.port_map.items()):
    usb = usb.strip()
    if not re.fullmatch(r"[A-Za-z0-9:._-]+", usb):
        sys.exit(f"bus.port_map.{port}: {usb!r} is not a USB port path")
    if re.fullmatch(r"\d+-\d+(\.\d+)*", usb):  # kernel port name: match it and below
        rule = f'KERNELS=="{usb}", ENV{{STATION_PORT}}="{port}"'
    else:  # udev ID_PATH: the port itself, devices behind it, its interfaces
        rule = f'ENV{{ID_PATH}}=="{usb}|{usb}.*|{usb}:*", ENV{{STATION_PORT}}="{port}"'
    print(f"udev\t{rule}")
PY
) || die "could not read $CONFIG"
field() { printf '%s\n' "$facts" | awk -F'\t' -v k="$1" '$1 == k { print $2 }'; }

# --- folders ----------------------------------------------------------------------------

install -d -m 0700 -o root -g root /var/lib/station
while read -r d; do
  [ -n "$d" ] || continue
  if mountpoint -q "$d"; then
    chown root:root "$d"; chmod 0700 "$d"
    continue
  fi
  flags=$(lsattr -d "$d" 2>/dev/null || true)
  if [[ "${flags%% *}" == *i* ]]; then
    continue   # already guarded
  fi
  install -d -m 0700 -o root -g root "$d"
  if [ "$GUARD_DISKS" = 1 ] && [ -z "$(ls -A "$d")" ]; then
    # Nothing mounted: make the empty mount point immutable so an absent disk can never
    # fill the system disk (the daemon sees it as not writable: disk_missing).
    if chattr +i "$d" 2>/dev/null; then
      say "$d: not mounted yet, marked immutable until a disk is mounted on it (fstab.example)"
    else
      say "warning: $d is not mounted and could not be marked immutable"
    fi
  fi
done < <(field disk)
while read -r d; do
  [ -z "$d" ] || [ -e "$d" ] || install -d -m 0700 -o root -g root "$d"
done < <(field rw)

# --- units and udev -----------------------------------------------------------------------

# The daemon, and its two helpers: the mount helper (the only one that may mount) and the
# media worker (decodes recorder video, sandboxed), both socket-activated.
for u in station.service station-mountd.service station-mountd.socket \
  station-media.socket station-media@.service; do
  install -m 0644 "$SOURCE/systemd/$u" "$UNIT_DIR/$u"
done
install -d -m 0755 "$UNIT_DIR/station.service.d"
{
  echo "# Generated by install.sh from $CONFIG: the folders the service may write."
  echo "# Run install.sh again after changing store.disks or database.url."
  echo "[Service]"
  while read -r p; do
    [ -z "$p" ] || echo "ReadWritePaths=-$p"
  done < <(field rw)
} | put "$UNIT_DIR/station.service.d/10-paths.conf" 0644

install -d -m 0755 /etc/udev/rules.d
ports=$(field udev)
[ -n "$ports" ] || ports="# (bus.port_map is empty: no dock port is mapped yet)"
awk -v ports="$ports" '$0 == "# @PORTS@" { print ports; next } { print }' \
  "$SOURCE/systemd/99-station.rules" | put "$RULES" 0644

# Card file systems, character sets and SCSI generic nodes ready at boot (the service
# itself may not load modules: ProtectKernelModules).
printf '%s\n' "# Collection station (install.sh)" vfat exfat nls_utf8 nls_cp936 fuse sg \
  | put /etc/modules-load.d/station.conf 0644

units=(station.service station-mountd.socket station-media.socket)
if [ "$KIOSK" = 1 ]; then
  install -m 0644 "$SOURCE/systemd/station-kiosk.service" "$UNIT_DIR/station-kiosk.service"
  put /etc/pam.d/station-kiosk 0644 <<'EOF'
# The touchscreen kiosk session (station-kiosk.service): a logind session on its VT.
auth     required pam_unix.so nullok
account  required pam_unix.so
session  required pam_unix.so
session  required pam_systemd.so
EOF
  put "$CONF_DIR/kiosk.env" 0644 <<EOF
# Generated by install.sh from $CONFIG (web.host, web.port).
STATION_UI_URL=$(field url)
EOF
  units+=(station-kiosk.service)
fi

if [ -n "$NTP" ]; then
  case "$NTP" in *[!A-Za-z0-9.:,_-]*) die "--ntp: not a host name or address list: $NTP" ;; esac
  mkdir -p /etc/systemd/timesyncd.conf.d
  put /etc/systemd/timesyncd.conf.d/station.conf 0644 <<EOF
# Generated by install.sh --ntp: the station's clock decides when footage expires.
[Time]
NTP=${NTP//,/ }
FallbackNTP=
EOF
  units+=(systemd-timesyncd.service)
fi

if [ "$booted" = 1 ]; then
  systemctl daemon-reload
  udevadm control --reload 2>/dev/null || true
fi
systemctl enable "${units[@]}" 2>&1 | sed 's/^/install.sh: /' >&2 || true
for u in "${units[@]}"; do
  systemctl is-enabled -q "$u" || die "could not enable $u"
done

# What is installed now is the station's known state: the daemon compares its code and
# configuration with this at every start (alarm "integrity"; station/health/integrity.py).
PYTHONDONTWRITEBYTECODE=1 "$PREFIX/bin/station" integrity record --config "$CONFIG" --by install.sh \
  | sed 's/^/install.sh: /' >&2

say "done: station $version (${revision:-unknown}) in $PREFIX; units enabled: ${units[*]}"
if [ "$booted" = 1 ]; then
  if systemctl is-active -q station.service; then
    say "the station is running the old version: systemctl restart ${units[*]}"
  else
    say "start it with: systemctl start ${units[*]}  (or reboot)"
  fi
fi
