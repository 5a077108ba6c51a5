"""The station on a real Debian 12 machine: units, installer, udev rule, sandbox, watchdog.

- `systemd-analyze verify` on the repository's units (in a stub root holding the
  programs they name) and on the installed units inside a real Debian root; the data
  disks' fstab lines through systemd's own fstab generator (nofail: a dead disk does
  not hold up the boot);
- systemd/install.sh run in a throw-away Debian 12 root (debootstrap minbase plus the
  station's Debian packages, cached under /var/cache/station-install-root, used
  through an overlay so the cache stays clean): the user, folders, configuration
  with a generated token, venv, units enabled, udev rule; run a second time after
  the port map and the disks changed;
- that root booted with systemd-nspawn, where the real systemd starts the daemon with
  the unit's real sandbox: Type=notify and the watchdog, the capability set, the
  read-only system, a missing data disk and one mounted later, the kiosk unit
  (cage and Chromium on a headless screen) showing the UI, a recorder card mounted,
  read and cleared inside the sandbox, a simulated recorder collected onto the data
  disk, a reload, a hung daemon killed by the watchdog and restarted, `station
  diagnose`, `station config export|import`, an upgrade by the installer;
- the generated udev rule run by the real udevadm against a umockdev dock.

Needs root, the network (Debian mirror, PyPI) the first time, and the Debian packages
debootstrap, systemd, systemd-container, dosfstools, mtools, umockdev (./dev installs
them). Warm, about 2 minutes on the 2-core test machine. Cold, with nothing cached,
it downloads about 350 MB and takes about 3 minutes in all; when only the station's
Debian package list changed (it keys the cached root), about 1 minute more.
STATION_INSTALL_CACHE and STATION_DEBIAN_MIRROR move the cache and the mirror.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, needs_root

from station.config import load_config

pytestmark = [needs_root, pytest.mark.machine]

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = REPO / "systemd"
INSTALL = SYSTEMD / "install.sh"
UNITS = ("station.service", "station-kiosk.service")
# the daemon's helpers: socket-activated, enabled through their sockets
HELPER_UNITS = (
    "station-mountd.service",
    "station-mountd.socket",
    "station-media.socket",
    "station-media@.service",
)
SOCKETS = ("station-mountd.socket", "station-media.socket")
CACHE = Path(os.environ.get("STATION_INSTALL_CACHE", "/var/cache/station-install-root"))
MIRROR = os.environ.get("STATION_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE = "base-bookworm-minbase-1"  # change the number to rebuild the cached root
CAP_SYS_RAWIO = 17
PORT_MAP = {1: "1-1.1", 2: "pci-0000:00:14.0-usb-0:1.2"}  # one of each style
DISK3 = "/data/disk3"


def run(cmd: list[Any], *, timeout: float = 120, check: bool = True, **kw: Any) -> Any:
    """subprocess.run with text output; on failure the message shows the command's output."""
    cmd = [str(c) for c in cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and r.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited with {r.returncode}\n--- stdout\n{r.stdout[-4000:]}"
            f"\n--- stderr\n{r.stderr[-4000:]}"
        )
    return r


def need(*programs: str) -> None:
    """Fail (not skip) when a program the tests drive is missing: say which package."""
    packages = {
        "debootstrap": "debootstrap",
        "systemd-analyze": "systemd",
        "systemd-nspawn": "systemd-container",
        "mkfs.vfat": "dosfstools",
        "mcopy": "mtools",
        "umockdev-wrapper": "umockdev gir1.2-umockdev-1.0 python3-gi",
    }
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        pytest.fail(
            f"missing {', '.join(missing)}: apt-get install "
            + " ".join(packages.get(p, p) for p in missing)
        )


# --- the repository's units ---------------------------------------------------------------


def _stub_root(tmp_path: Path) -> Path:
    """A root with systemd's own units and an executable at every path the units name."""
    root = tmp_path / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for link in ("bin", "sbin", "lib"):
        (root / link).symlink_to(f"usr/{link}")
    for exe in (
        "opt/station/bin/station",
        "opt/station/bin/python",
        "usr/bin/cage",
        "usr/bin/chromium",
        "usr/bin/kill",
    ):
        path = root / exe
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    return root


def _verify(root: Path, *units: str) -> subprocess.CompletedProcess[str]:
    return run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}"]
        + [f"/etc/systemd/system/{u}" for u in units],
        check=False,
    )


def _verified(*units: str) -> tuple[str, ...]:
    """The unit files to give systemd-analyze verify: a template as one instance of it."""
    return tuple(u.replace("@.", "@1.") for u in units)


def test_the_units_verify(tmp_path):
    need("systemd-analyze")
    root = _stub_root(tmp_path)
    for unit in UNITS + HELPER_UNITS:
        shutil.copy(SYSTEMD / unit, root / "etc/systemd/system" / unit)
    r = _verify(root, *_verified(*UNITS, *HELPER_UNITS))
    assert (r.returncode, r.stdout + r.stderr) == (0, "")

    # The check is real: a misspelt key, a bad value and a missing program are caught.
    bad = (SYSTEMD / "station.service").read_text()
    bad = bad.replace("PrivateTmp=yes", "PrivateTemp=yes").replace(
        "WatchdogSec=30", "WatchdogSec=x"
    )
    bad = bad.replace("/opt/station/bin/station run", "/opt/nowhere/station run")
    (root / "etc/systemd/system/bad.service").write_text(bad)
    r = _verify(root, "bad.service")
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "Unknown key 'PrivateTemp'" in out
    assert "Failed to parse sec value, ignoring: x" in out
    assert "/opt/nowhere/station is not executable" in out


def test_the_unit_keeps_to_its_capabilities():
    text = (SYSTEMD / "station.service").read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if re.match(r"^[A-Z]\w+=", line)
    )
    assert settings["CapabilityBoundingSet"].split() == ["CAP_SYS_RAWIO"]
    assert settings["AmbientCapabilities"] == ""
    allowed = re.findall(r"(?m)^DeviceAllow=(.*)$", text)
    assert allowed == ["char-usb_device rw", "char-sg rw", "block-sd r", "char-alsa rw"]
    assert re.findall(r"(?m)^SystemCallFilter=(.*)$", text) == [
        "@system-service",
        "~@privileged @resources",
        "adjtimex clock_adjtime",
    ]
    for key, value in {
        "Type": "notify",
        "Restart": "always",
        "StartLimitIntervalSec": "0",
        "LimitNOFILE": "65536",
        "WatchdogSec": "30",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "DevicePolicy": "closed",
        # /dev read-only: the daemon cannot put a link or a node of its own there for the
        # mount helper (device nodes still open read-write on a read-only mount)
        "ReadOnlyPaths": "/run /dev",
        "Wants": "station-mountd.socket station-media.socket",
    }.items():
        assert settings[key] == value, key


# systemd-analyze security's exposure (0 safe .. 10 exposed) of each unit, at most: the
# daemon was at 4.5 with CAP_SYS_ADMIN, no device list, no system-call filter, FFmpeg inside
EXPOSURE = {"station.service": 2.8, "station-mountd.service": 2.7, "station-media@1.service": 0.5}


def test_systemd_analyze_security_scores_the_sandboxes(tmp_path):
    need("systemd-analyze")
    root = _stub_root(tmp_path)
    for unit in UNITS + HELPER_UNITS:
        shutil.copy(SYSTEMD / unit, root / "etc/systemd/system" / unit)
    scores = {}
    for unit in EXPOSURE:
        r = run(
            ["systemd-analyze", "security", "--offline=yes", f"--root={root}", "--no-pager", unit],
            check=False,
        )
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout)
        assert m, r.stdout + r.stderr
        scores[unit] = float(m.group(1))
    assert all(scores[u] <= EXPOSURE[u] for u in EXPOSURE), scores
    # the check is real: the daemon's unit as it was scores worse
    old = (SYSTEMD / "station.service").read_text()
    old = re.sub(r"(?m)^(DevicePolicy|DeviceAllow|SystemCallFilter)=.*\n", "", old)
    old = old.replace(
        "CapabilityBoundingSet=CAP_SYS_RAWIO", "CapabilityBoundingSet=CAP_SYS_ADMIN CAP_SYS_RAWIO"
    )
    (root / "etc/systemd/system/station.service").write_text(old)
    r = run(
        ["systemd-analyze", "security", "--offline=yes", f"--root={root}", "station.service"],
        check=False,
    )
    assert float(re.findall(r"exposure level for \S+: ([0-9.]+)", r.stdout)[0]) > 4.0


def _fstab_units(tmp_path: Path, fstab: str) -> Path:
    """What systemd's own fstab generator makes of `fstab` (as at boot)."""
    tmp_path.mkdir()
    (tmp_path / "fstab").write_text(fstab)
    out = tmp_path / "generated"
    for d in ("normal", "early", "late"):
        (out / d).mkdir(parents=True)
    run(
        [
            "/usr/lib/systemd/system-generators/systemd-fstab-generator",
            out / "normal",
            out / "early",
            out / "late",
        ],
        env={**os.environ, "SYSTEMD_FSTAB": str(tmp_path / "fstab"), "SYSTEMD_PROC_CMDLINE": ""},
    )
    return out / "normal"


def test_a_dead_data_disk_does_not_hold_up_the_boot(tmp_path):
    # Checked through the generator itself: a container ignores fstab's device lines.
    example = (SYSTEMD / "fstab.example").read_text()
    units = _fstab_units(tmp_path / "nofail", example)
    for disk in ("srv-disk1.mount", "srv-disk2.mount"):
        text = (units / disk).read_text()
        options = re.search(r"(?m)^Options=(.*)$", text)[1].split(",")
        assert {"nofail", "nodev", "nosuid", "noexec", "noatime"} <= set(options), disk
        # only wanted by local-fs.target, not ordered before it: the boot goes on without it
        assert (units / "local-fs.target.wants" / disk).is_symlink(), disk
        assert not (units / "local-fs.target.requires" / disk).exists(), disk
        assert "Before=local-fs.target" not in text, disk
    timeouts = list(units.glob("dev-disk-by*.device.d/*.conf"))
    assert len(timeouts) == 2
    assert all("JobRunningTimeoutSec=10s" in t.read_text() for t in timeouts)
    # The check is real: without nofail the same lines would hold local-fs.target.
    units = _fstab_units(tmp_path / "plain", example.replace("nofail,", ""))
    assert (units / "local-fs.target.requires" / "srv-disk1.mount").is_symlink()
    assert "Before=local-fs.target" in (units / "srv-disk1.mount").read_text()


# --- the cached Debian roots ----------------------------------------------------------------


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    """One builder at a time (other test runs may share the cache)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _build(name: str, make: Any) -> Path:
    """CACHE/name, made by make(tmp) into a temporary folder and renamed when complete."""
    root = CACHE / name
    if (root / ".complete").exists():
        return root
    tmp = CACHE / f".{name}.{os.getpid()}"
    _remove_tree(tmp)
    make(tmp)
    (tmp / ".complete").touch()
    _remove_tree(root)
    tmp.rename(root)
    return root


def _base_root() -> Path:
    """Debian 12 minbase (debootstrap): about 2 minutes the first time."""
    need("debootstrap")
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)

    def make(tmp: Path) -> None:
        run(
            ["debootstrap", "--variant=minbase", f"--cache-dir={debs}", "bookworm", tmp, MIRROR],
            timeout=1200,
        )

    return _build(BASE, make)


def _packages_root() -> Path:
    """The base root plus every Debian package install.sh installs, keyed by that list."""
    packages = run([INSTALL, "--print-packages"]).stdout.split()
    key = hashlib.sha256(" ".join([BASE, *packages]).encode()).hexdigest()[:12]
    name = f"pkgs-{key}"

    def make(tmp: Path) -> None:
        run(["cp", "-a", "--reflink=auto", _base_root(), tmp], timeout=600)
        (tmp / ".complete").unlink()
        env = {**os.environ, "STATION_APT_ARCHIVES": str(CACHE / "debs")}
        run([INSTALL, "--root", tmp, "--packages-only"], env=env, timeout=1800)

    root = _build(name, make)
    for old in CACHE.glob("pkgs-*"):  # roots of older package lists, unused for a day
        if old.name != name and time.time() - old.stat().st_mtime > 86400:
            _remove_tree(old)
    return root


def _remove_tree(path: Path) -> None:
    """rm -rf, also through the immutable folders install.sh leaves."""
    if not path.exists() and not path.is_symlink():
        return
    run(["chattr", "-R", "-i", path], check=False)
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        run(["rm", "-rf", "--one-file-system", path], check=False)


# --- installing ---------------------------------------------------------------------------------


@dataclass
class Installed:
    """An installed Debian root (an overlay on the cached one) and what the runs said."""

    root: Path
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]
    first_config: bytes
    durations: dict[str, float] = field(default_factory=dict)

    def path(self, p: str) -> Path:
        return self.root / p.lstrip("/")

    def chroot(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside the root, with /proc, /sys and /dev mounted read-only."""
        r = self.root
        setup = (
            f"mount -t proc -o ro proc {r}/proc && mount -t sysfs -o ro sysfs {r}/sys && "
            f"mount --bind /dev {r}/dev && mount -o remount,bind,ro {r}/dev && "
            f"mount -t tmpfs tmpfs {r}/run && mount -t tmpfs tmpfs {r}/tmp && "
            f'exec chroot {r} /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"'
        )
        return run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", setup, "sh", *cmd],
            check=check,
            timeout=300,
        )


def _install(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIP_CACHE_DIR": str(CACHE / "pip")}
    return run(
        [INSTALL, "--root", root, "--station-id", "TEST-0001", *extra], env=env, timeout=1200
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """install.sh run twice in a fresh Debian 12 root: as shipped, then after an edit."""
    durations: dict[str, float] = {}
    started = time.monotonic()
    with _cache_lock():
        lower = _packages_root()
    durations["cached roots"] = time.monotonic() - started
    work = tmp_path_factory.mktemp("install")
    upper, workdir, root = work / "upper", work / "work", work / "root"
    for d in (upper, workdir, root):
        d.mkdir()
    run(
        [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={lower},upperdir={upper},workdir={workdir}",
            root,
        ]
    )
    try:
        started = time.monotonic()
        first = _install(root)
        durations["first install"] = time.monotonic() - started
        config_path = root / "etc/station/station.toml"
        first_config = config_path.read_bytes()
        # The administrator maps the dock's ports and adds a disk, then runs it again.
        text = first_config.decode().replace(
            'disks = ["/srv/disk1", "/srv/disk2"]',
            f'disks = ["/srv/disk1", "/srv/disk2", "{DISK3}"]',
        )
        text += "\n[bus.port_map]\n" + "".join(f'{k} = "{v}"\n' for k, v in PORT_MAP.items())
        config_path.write_text(text)
        started = time.monotonic()
        # loopback time servers: the booted root's timesyncd reaches nothing outside
        second = _install(root, "--ntp", "127.0.0.1", "--ntp", "127.0.0.2")
        durations["second install"] = time.monotonic() - started
        yield Installed(root, first, second, first_config, durations)
    finally:
        print(f"\ninstall timings: { {k: round(v) for k, v in durations.items()} }")
        run(["umount", "--lazy", root], check=False)
        _remove_tree(work)


def test_the_installer_creates_the_kiosk_user(installed):
    users = {
        line.split(":")[0]: line.split(":")
        for line in installed.path("/etc/passwd").read_text().splitlines()
    }
    _, _, uid, _, _, home, shell = users["station"]
    assert 100 <= int(uid) < 1000  # a system user
    assert (home, shell) == ("/var/lib/station-kiosk", "/usr/sbin/nologin")
    groups = {
        line.split(":")[0]: line.split(":")[3].split(",")
        for line in installed.path("/etc/group").read_text().splitlines()
    }
    assert "station" in groups["video"] and "station" in groups["input"]
    st = installed.path(home).stat()
    assert (st.st_uid, st.st_mode & 0o777) == (int(uid), 0o700)


def _mode(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid, st.st_mode & 0o7777


def test_the_installer_creates_the_folders_with_their_permissions(installed):
    for folder in ("/var/lib/station", "/srv/disk1", "/srv/disk2", DISK3):
        assert _mode(installed.path(folder)) == (0, 0, 0o700), folder
    assert _mode(installed.path("/etc/station")) == (0, 0, 0o755)
    # Nothing is mounted on the store folders: immutable, so an absent disk can never
    # fill the system disk.
    for folder in ("/srv/disk1", "/srv/disk2", DISK3):
        flags = run(["lsattr", "-d", installed.path(folder)]).stdout.split()[0]
        assert "i" in flags, folder
    assert "marked immutable" in installed.first.stderr


def test_the_configuration_is_generated_with_a_token_and_valid(installed):
    path = installed.path("/etc/station/station.toml")
    assert _mode(path) == (0, 0, 0o600)
    config = load_config(path)  # the host's station.config: it must accept the file
    (token,) = config.api.tokens
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    assert config.station.id == "TEST-0001"
    assert config.bus.kind == "udev" and config.registration.mode == "auto"
    assert [str(d) for d in config.store.disks] == ["/srv/disk1", "/srv/disk2", DISK3]
    # the second run kept the configuration: same token, same bytes, only the edit
    assert token in installed.first_config.decode()
    assert "keeping /etc/station/station.toml" in installed.second.stderr
    assert "@" not in path.read_text().split("[api]")[1].split("\n")[1]  # no placeholder


def test_the_units_are_installed_and_enabled(installed):
    for unit in UNITS + SOCKETS:
        target = "sockets" if unit.endswith(".socket") else "multi-user"
        link = installed.path(f"/etc/systemd/system/{target}.target.wants/{unit}")
        assert link.is_symlink() and os.readlink(link) == f"/etc/systemd/system/{unit}"
    for unit in UNITS + HELPER_UNITS:
        assert (
            installed.path(f"/etc/systemd/system/{unit}").read_bytes()
            == (SYSTEMD / unit).read_bytes()
        )
    dropin = installed.path("/etc/systemd/system/station.service.d/10-paths.conf").read_text()
    for folder in ("/srv/disk1", "/srv/disk2", DISK3, "/var/lib/station"):
        assert f"ReadWritePaths=-{folder}\n" in dropin
    assert installed.path("/etc/pam.d/station-kiosk").exists()
    env = installed.path("/etc/station/kiosk.env").read_text()
    assert "STATION_UI_URL=http://127.0.0.1:8080/" in env
    modules = installed.path("/etc/modules-load.d/station.conf").read_text().split()
    assert {"vfat", "exfat", "nls_cp936", "sg", "fuse"} <= set(modules)
    profile = installed.path("/etc/profile.d/station.sh").read_text()
    assert "export STATION_CONFIG=/etc/station/station.toml\n" in profile


def test_the_installed_units_verify_inside_the_root(installed):
    r = _verify(installed.root, *_verified(*UNITS, *HELPER_UNITS))
    assert (r.returncode, r.stdout + r.stderr) == (0, "")


def test_the_clock_is_kept_by_the_forces_time_servers(installed):
    conf = installed.path("/etc/systemd/timesyncd.conf.d/station.conf").read_text()
    assert "NTP=127.0.0.1 127.0.0.2" in conf and "FallbackNTP=\n" in conf
    out = installed.chroot("systemctl", "is-enabled", "systemd-timesyncd.service", check=False)
    assert out.stdout.strip() == "enabled", out


def test_the_udev_rule_is_installed_with_the_port_map(installed):
    rules = installed.path("/etc/udev/rules.d/99-station.rules").read_text()
    assert 'KERNELS=="1-1.1", ENV{STATION_PORT}="1"' in rules  # the second run's port map
    assert 'ENV{ID_PATH}=="pci-0000:00:14.0-usb-0:1.2|' in rules and 'STATION_PORT}="2"' in rules
    assert "@PORTS@" not in rules
    # udevadm of the installed system parses it without a complaint
    out = installed.chroot("udevadm", "test", "--action=add", "/sys/class/net/lo", check=False)
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if "99-station.rules" in ln]
    assert lines and not [ln for ln in lines if re.search(r"rules:\d+ (Invalid|Unknown)", ln)]


def test_the_station_runs_inside_the_root(installed):
    r = installed.chroot("/opt/station/bin/station", "--help")
    assert "Collection station" in r.stdout
    assert installed.chroot("/usr/local/bin/station", "--help").returncode == 0
    # Every module imports with only the declared dependencies installed.
    r = installed.chroot(
        "/opt/station/bin/python",
        "-c",
        textwrap.dedent(
            """
            import importlib, pkgutil, station
            from pathlib import Path
            bad, seen = [], set()
            for m in pkgutil.walk_packages(station.__path__, "station."):
                if ".migrations" in m.name or m.name.endswith("__main__"):
                    continue
                seen.add(m.name)
                try:
                    importlib.import_module(m.name)
                except Exception as e:
                    bad.append(f"{m.name}: {type(e).__name__}: {e}")
            for name in ("station.web.app", "station.drivers.base", "station.devices.ports"):
                if name not in seen:
                    bad.append(f"{name}: not installed")
            root = Path(station.__file__).parent
            for data in ("web/static/index.html", "web/locale/zh_CN/LC_MESSAGES/messages.po",
                         "catalog/migrations/env.py"):
                if not (root / data).is_file():
                    bad.append(f"{data}: not installed")
            print("\\n".join(bad))
            """
        ),
    )
    assert r.stdout.strip() == "", "modules that do not import:\n" + r.stdout
    info = installed.path("/opt/station/INSTALLED").read_text()
    assert "version=" in info and "kiosk=1" in info


# --- the udev rule on a (umockdev) dock ----------------------------------------------------------

UDEV_PROBE = """
import json, subprocess, sys
sys.path[:0] = [{tests!r}, {repo!r}]
import umockdev_scenarios as u
dock = u.Dock(u.load_umockdev())
plugged = {{
    "1-1.1": dock.plug_recorder("1-1.1", serial="S1", storage=True),
    "1-1.2": dock.plug_recorder("1-1.2", serial="S2", storage=True),
    "1-1.5": dock.plug_recorder("1-1.5", serial="S5", storage=True),
}}
seen = {{}}
for name, dev in plugged.items():
    for path in dev.paths:
        r = subprocess.run(["udevadm", "test", "--action=add", path],
                           capture_output=True, text=True)
        props = dict(l.split("=", 1) for l in r.stdout.splitlines()
                     if "=" in l and l.split("=", 1)[0].isupper())
        seen[path] = {{"port": name, "rc": r.returncode, "props": props}}
print(json.dumps(seen))
"""


def test_the_udev_rule_tags_what_is_docked_on_a_mapped_port(installed, tmp_path):
    need("umockdev-wrapper")
    rules = tmp_path / "rules.d"
    rules.mkdir()
    shutil.copy(installed.path("/etc/udev/rules.d/99-station.rules"), rules)
    probe = tmp_path / "probe.py"
    probe.write_text(UDEV_PROBE.format(tests=str(REPO / "tests"), repo=str(REPO)))
    # udevadm reads /etc/udev/rules.d: give it only ours, in a private mount namespace
    r = run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            f'mount --bind {rules} /etc/udev/rules.d && exec umockdev-wrapper "$@"',
            "sh",
            sys.executable,
            probe,
        ],
        timeout=120,
    )
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(seen) == 21  # 3 recorders: device, interface, host, target, lun, disk, part
    for path, d in seen.items():
        props = d["props"]
        assert d["rc"] == 0, path
        if d["port"] == "1-1.5":  # not on a mapped port: left alone
            assert "STATION_PORT" not in props and "UDISKS_IGNORE" not in props, path
            continue
        want = "1" if d["port"] == "1-1.1" else "2"
        assert props.get("STATION_PORT") == want, (path, props)
        assert "station-dock" in props.get("TAGS", ""), path
        assert props.get("ID_MM_DEVICE_IGNORE") == "1", path
        if "/block/" in path:
            assert (props.get("UDISKS_IGNORE"), props.get("UDISKS_AUTO")) == ("1", "0"), path


# --- booted: the real systemd runs the installed station ----------------------------------------


@dataclass
class Container:
    """The installed root booted with systemd-nspawn; commands run inside with nsenter."""

    installed: Installed
    pid: int  # the container's systemd, as the host sees it
    disk1: Path  # the host folder mounted on /srv/disk1
    proc: subprocess.Popen[bytes]

    def sh(self, *cmd: str, check: bool = True, timeout: float = 120) -> Any:
        return run(["nsenter", "-t", self.pid, "-a", "--", *cmd], check=check, timeout=timeout)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.sh("systemctl", "show", unit, "-p", ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_active(self, unit: str = "station.service", timeout: float = 90) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            state = self.show(unit, "ActiveState", "SubState", "MainPID", "NRestarts", "Result")
            if state["ActiveState"] == "active":
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"{unit} is not active: {state}\n{self.journal(unit)}")
            time.sleep(0.5)

    def journal(self, unit: str = "station.service", lines: int = 80) -> str:
        return self.sh("journalctl", "--no-pager", "-n", str(lines), "-u", unit).stdout

    def python(self, code: str, check: bool = True) -> Any:
        return self.sh("/opt/station/bin/python", "-c", textwrap.dedent(code), check=check)

    def api(self, path: str) -> Any:
        out = self.python(
            f"""
            import httpx, json, tomllib
            c = tomllib.load(open("/etc/station/station.toml", "rb"))
            h = {{"Authorization": "Bearer " + c["api"]["tokens"][0]}}
            url = f"http://127.0.0.1:{{c['web']['port']}}{path}"
            print(json.dumps(httpx.get(url, headers=h).json()))
            """
        ).stdout
        return json.loads(out)

    def daemon_reload_restart(self) -> dict[str, str]:
        self.sh("systemctl", "daemon-reload")
        self.sh("systemctl", "restart", "station.service")
        return self.wait_active()


def _container_init(nspawn: subprocess.Popen[bytes], timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if nspawn.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited with {nspawn.returncode}")
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{nspawn.pid}/task/{nspawn.pid}/children").read_text().split()
            for child in children:
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return int(child)
        time.sleep(0.2)
    raise AssertionError("the container's systemd did not start")


@pytest.fixture(scope="module")
def booted(installed: Installed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    need("systemd-nspawn")
    disk1 = tmp_path_factory.mktemp("disk1")
    # The container shares the host's network: a port of its own, not a busy 8080.
    config = installed.path("/etc/station/station.toml")
    text = config.read_text()
    assert text.count("\nport = 8080") == 1
    port = free_port()
    config.write_text(text.replace("\nport = 8080", f"\nport = {port}"))
    kiosk_env = installed.path("/etc/station/kiosk.env")  # as install.sh would write it
    env = kiosk_env.read_text()
    assert env.count(":8080/") == 1
    kiosk_env.write_text(env.replace(":8080/", f":{port}/"))
    log = open(tmp_path_factory.mktemp("nspawn") / "console.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            "systemd-nspawn",
            "--quiet",
            f"--directory={installed.root}",
            f"--machine=station-test-{os.getpid()}",
            "--boot",
            "--register=no",
            "--keep-unit",
            "--console=passive",
            "--capability=CAP_SYS_RAWIO",  # nspawn keeps it from containers by default
            "--bind=/dev/fuse",
            f"--bind={disk1}:/srv/disk1",  # the one data disk that is "mounted"
            f"--bind={CACHE / 'pip'}:/var/cache/station-pip",  # for the upgrade
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    pid = 0
    try:
        pid = _container_init(proc)
        box = Container(installed, pid, disk1, proc)
        # Until its systemd answers on its bus and has finished starting up, "offline",
        # "initializing" or "starting" (or nothing); "degraded" is fine (a container).
        deadline = time.monotonic() + 120
        while (
            state := box.sh("systemctl", "is-system-running", check=False).stdout.strip()
        ) not in (
            "running",
            "degraded",
        ):
            assert time.monotonic() < deadline, f"the container did not finish booting: {state}"
            time.sleep(0.5)
        yield box
    finally:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGRTMIN + 3)  # systemd: halt
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
        log.close()


def test_systemd_starts_the_daemon_once_it_says_it_is_ready(booted):
    booted.wait_active()
    props = booted.show(
        "station.service",
        "Type",
        "NotifyAccess",
        "WatchdogUSec",
        "WatchdogTimestampMonotonic",
        "StatusText",
        "NRestarts",
        "UnitFileState",
    )
    assert props["Type"] == "notify" and props["NotifyAccess"] == "main"
    assert props["WatchdogUSec"] == "30s"
    assert int(props["WatchdogTimestampMonotonic"]) > 0  # WATCHDOG=1 arrived
    assert props["StatusText"]  # STATUS= arrived
    assert (props["NRestarts"], props["UnitFileState"]) == ("0", "enabled")


def _probe(booted: Container, pid: str, path: str) -> bool:
    """Whether the daemon (in its own mount namespace) could create a file at `path`."""
    r = booted.sh(
        "nsenter",
        "-t",
        pid,
        "-m",
        "--",
        "sh",
        "-c",
        f"touch {path}.probe && rm {path}.probe",
        check=False,
    )
    return r.returncode == 0


def test_the_daemon_runs_with_one_capability_in_a_read_only_system(booted):
    pid = booted.wait_active()["MainPID"]
    status = booted.sh("cat", f"/proc/{pid}/status").stdout
    caps = {
        k: v.strip() for k, v in re.findall(r"^(Cap\w+|NoNewPrivs|Seccomp):\s*(\S+)", status, re.M)
    }
    assert caps["Seccomp"] == "2"  # a system-call filter
    wanted = 1 << CAP_SYS_RAWIO
    assert int(caps["CapBnd"], 16) == wanted and int(caps["CapEff"], 16) == wanted
    assert caps["NoNewPrivs"] == "1"
    writable = {
        p: _probe(booted, pid, p)
        for p in (
            "/var/lib/station/x",
            "/srv/disk1/x",
            "/run/station/x",
            "/tmp/x",
            "/etc/x",
            "/etc/station/x",
            "/usr/x",
            "/opt/station/x",
            "/var/lib/x",
            "/run/x",
            "/srv/disk2/x",
            "/root/x",
        )
    }
    assert [p for p, w in writable.items() if w] == [
        "/var/lib/station/x",
        "/srv/disk1/x",
        "/run/station/x",
        "/tmp/x",
    ]


def test_a_missing_data_disk_is_an_alarm_not_a_failure(booted):
    booted.wait_active()
    assert booted.api("/api/v1/health")["status"] == "ok"
    status = booted.api("/api/v1/status")
    health = {d["path"]: (d["active"], d["health"]) for d in status["disks"]}
    assert health["/srv/disk1"][0] is True
    assert health["/srv/disk2"][1] == health[DISK3][1] == "missing"
    missing = {a["subject"] for a in status["alarms"] if a["code"] == "disk_missing"}
    assert missing == {"/srv/disk2", DISK3}
    assert (booted.disk1 / ".staging").is_dir()  # the store was set up on the mounted disk


def test_the_installed_station_checks_its_integrity_manifest(booted):
    """install.sh recorded what it installed. The test then edited the configuration (its
    port) as an administrator might: the daemon saw it at start. Once recorded, no alarm."""
    booted.wait_active()
    manifest = json.loads(booted.installed.path("/opt/station/INTEGRITY.json").read_text())
    assert "station/runtime.py" in manifest["files"] and manifest["config"]
    alarms = {a["code"]: a for a in booted.api("/api/v1/status")["alarms"]}
    assert "station.toml changed" in alarms["integrity"]["message"]
    r = booted.sh("bash", "-lc", "station integrity check", check=False)
    assert r.returncode == 1 and "changed since it was last recorded" in r.stdout
    assert "changed:" not in r.stdout and "missing:" not in r.stdout  # code as installed
    booted.sh("bash", "-lc", "station integrity record --by tech7")
    assert "as recorded" in booted.sh("bash", "-lc", "station integrity check").stdout
    before = booted.wait_active()["MainPID"]
    booted.sh("systemctl", "restart", "station.service", timeout=180)
    assert booted.wait_active()["MainPID"] != before
    assert "integrity" not in {a["code"] for a in booted.api("/api/v1/status")["alarms"]}


def test_a_data_disk_mounted_later_is_writable_inside_the_sandbox(booted):
    """nofail: the station started without /srv/disk2; the disk comes up afterwards."""
    pid = booted.wait_active()["MainPID"]
    assert not _probe(booted, pid, "/srv/disk2/x")  # the empty, immutable mount point
    booted.sh("mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "disk2", "/srv/disk2")
    try:
        # the mount propagates into the daemon's namespace, writable, without a restart
        assert _probe(booted, pid, "/srv/disk2/x")
        assert not _probe(booted, pid, "/srv/x")  # and nothing else around it
    finally:
        booted.sh("umount", "--lazy", "/srv/disk2")
    assert not _probe(booted, pid, "/srv/disk2/x")
    assert booted.wait_active()["MainPID"] == pid


def test_the_kiosk_is_enabled_but_waits_for_a_screen(booted):
    props = booted.show("station-kiosk.service", "UnitFileState", "ConditionResult", "ActiveState")
    # a container has no /dev/tty0: the condition keeps it from failing on a headless box
    assert props == {"UnitFileState": "enabled", "ConditionResult": "no", "ActiveState": "inactive"}


KIOSK_CLIENT = """
import os, re, sys
port = int(sys.argv[1])
sockets = {}  # socket inode -> (pid, user id, command) of every process but root's
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
        comm = open(f"/proc/{pid}/comm").read().strip()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            m = re.fullmatch(r"socket:\\[(\\d+)\\]", os.readlink(f"/proc/{pid}/fd/{fd}"))
            if m and uid:
                sockets[m.group(1)] = (pid, uid, comm)
    except OSError:
        pass
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    for line in open(table).read().splitlines()[1:]:
        f = line.split()
        if int(f[2].rsplit(":", 1)[1], 16) == port and f[3] == "01" and f[9] in sockets:
            print(*sockets[f[9]])
"""


def test_the_kiosk_shows_the_station_ui(booted):
    """The kiosk unit as installed, on a headless screen: cage starts Chromium as the
    unprivileged user in a logind session, and it connects to the station's UI."""
    booted.wait_active()
    port = load_config(booted.installed.path("/etc/station/station.toml")).web.port
    units = booted.installed.path("/etc/systemd/system")
    dropin = units / "station-kiosk.service.d" / "90-headless.conf"
    dropin.parent.mkdir(exist_ok=True)
    # No VT, no GPU in a container: only what the screen needs is replaced.
    dropin.write_text(
        "[Unit]\nConditionPathExists=\n"
        "[Service]\nTTYPath=\nStandardInput=null\nTTYReset=no\nTTYVHangup=no\n"
        "TTYVTDisallocate=no\n"
        "Environment=WLR_BACKENDS=headless WLR_LIBINPUT_NO_DEVICES=1 WLR_RENDERER=pixman\n"
    )
    probe = "/usr/local/lib/station-test/kiosk_client.py"
    booted.installed.path(probe).parent.mkdir(parents=True, exist_ok=True)
    booted.installed.path(probe).write_text(KIOSK_CLIENT)
    booted.sh("systemctl", "daemon-reload")
    try:
        booted.sh("systemctl", "start", "station-kiosk.service")
        station_uid = next(
            line.split(":")[2]
            for line in booted.installed.path("/etc/passwd").read_text().splitlines()
            if line.startswith("station:")
        )
        deadline = time.monotonic() + 90
        while True:
            out = booted.sh("/opt/station/bin/python", probe, str(port)).stdout
            clients = [line.split() for line in out.splitlines()]
            if clients:
                break
            state = booted.show("station-kiosk.service", "ActiveState")["ActiveState"]
            assert state == "active" and time.monotonic() < deadline, (
                f"no browser connected to the UI (kiosk {state})\n"
                + booted.journal("station-kiosk.service")
            )
            time.sleep(1)
        assert {(uid, comm) for _, uid, comm in clients} == {(station_uid, "chromium")}
        sessions = booted.sh("loginctl", "list-sessions", "--no-legend").stdout
        assert re.search(rf"\s{station_uid}\s+station\b", sessions), sessions
        props = booted.show("station-kiosk.service", "ActiveState", "NRestarts", "User")
        assert props == {"ActiveState": "active", "NRestarts": "0", "User": "station"}
        started = time.monotonic()
        booted.sh("systemctl", "stop", "station-kiosk.service", timeout=60)
        assert time.monotonic() - started < 15  # TimeoutStopSec=10s at worst
    finally:
        booted.sh("systemctl", "stop", "station-kiosk.service", check=False, timeout=60)
        dropin.unlink(missing_ok=True)
        booted.sh("systemctl", "daemon-reload")


MOUNT_PROBE = """
import hashlib, os, subprocess, sys
from pathlib import Path
from station.devices.mount import BlockDevice, DirectMounter, MountedCard, MountError, make_mounter
image = sys.argv[1]
# /dev is read-only: no name there can be replaced, yet device nodes open read-write
try:
    os.symlink("/etc/shadow", "/dev/station-probe")
    print("DEVLINK made")
except OSError as e:
    print("DEVLINK", e.strerror)
fd = os.open("/dev/null", os.O_RDWR); os.write(fd, b"x"); os.close(fd)
print("DEVRW ok")
# the daemon cannot lift its read-only file system, nor mount by itself
r = subprocess.run(["mount", "-o", "remount,rw", "/"], capture_output=True, text=True)
print("REMOUNT", r.returncode, r.stderr.strip())
marker = Path("/run/station/usb-device"); marker.touch()
dev = BlockDevice(image, "vfat", str(marker))
direct = Path("/run/station/cards/port-1.000000000000")
direct.mkdir(parents=True, exist_ok=True, mode=0o700)
try:
    DirectMounter("fuse").mount(dev, direct)  # fusefat may say nothing when it fails
    print("DIRECT MOUNTED" if direct.is_mount() else "DIRECT REFUSED (not mounted)")
except MountError as e:
    print("DIRECT REFUSED", e)
# the mount helper mounts it in this namespace
target = Path("/run/station/cards/port-1.0123456789ab")
target.mkdir(mode=0o700)
mounter = make_mounter("fuse", "auto")
print("MOUNTER", type(mounter).__name__)
mounter.mount(dev, target)
card = MountedCard(mounter, dev, target)
print("LISTED", sorted(f.path.decode() for f in card.list_files()))
print("SHA256", hashlib.sha256(card.read_range(b"DCIM/100ANDRO/A.AVI", 0, 1 << 20)).hexdigest())
card.delete_file(b"DCIM/100ANDRO/A.AVI")
print("DELETED", card.stat_file(b"DCIM/100ANDRO/A.AVI") is None)
card.close()
print("UNMOUNTED", not target.exists())
# and refuses what is not a card on a card folder
elsewhere = Path("/run/station/elsewhere"); elsewhere.mkdir(exist_ok=True)
second = Path("/run/station/cards/port-2.0123456789ab")
for node, where in ((image, elsewhere), ("/dev/null", second)):
    where.mkdir(exist_ok=True)
    try:
        mounter.mount(BlockDevice(node, "vfat", str(marker)), where)
        print("HELPER MOUNTED", node, where)
    except MountError as e:
        print("HELPER REFUSED", e)
"""

MEDIA_PROBE = """
import sys
from pathlib import Path
from station.media.playback import Transcoder
job = Transcoder(Path("/var/lib/station/probe-cache")).start(Path(sys.argv[1]), "a" * 64)
job.done.wait(300)
print("PLAYED", job.error, job.frames_done, "av" in sys.modules)
"""


def _probe_unit(script: str, arg: str) -> str:
    """station.service as a oneshot running a probe script: the very same sandbox."""
    text = (SYSTEMD / "station.service").read_text()
    text = re.sub(r"(?m)^(ExecReload|WatchdogSec|TimeoutAbortSec|Restart)=.*\n", "", text)
    text = text.replace("Type=notify", "Type=oneshot")
    text = re.sub(
        r"(?m)^ExecStart=.*$",
        f"ExecStart=/opt/station/bin/python /usr/local/lib/station-test/{script} {arg}",
        text,
    )
    return text.split("[Install]")[0]


@contextlib.contextmanager
def _probe_service(booted: Container, name: str, script: str, code: str, arg: str):
    root = booted.installed.root
    (root / "usr/local/lib/station-test").mkdir(parents=True, exist_ok=True)
    (root / "usr/local/lib/station-test" / script).write_text(code)
    units = root / "etc/systemd/system"
    shutil.copytree(units / "station.service.d", units / f"{name}.service.d", dirs_exist_ok=True)
    (units / f"{name}.service").write_text(_probe_unit(script, arg))
    booted.sh("systemctl", "daemon-reload")
    try:
        yield
    finally:
        (units / f"{name}.service").unlink(missing_ok=True)
        shutil.rmtree(units / f"{name}.service.d", ignore_errors=True)
        booted.sh("systemctl", "daemon-reload")


def test_a_card_is_mounted_by_the_helper_read_and_cleared_inside_the_sandbox(booted, tmp_path):
    need("mkfs.vfat", "mcopy")
    data = os.urandom(300_000)
    img, src = tmp_path / "card.img", tmp_path / "DCIM/100ANDRO"
    src.mkdir(parents=True)
    (src / "A.AVI").write_bytes(data)
    (src / "B.JPG").write_bytes(b"jpeg")
    run(["mkfs.vfat", "-C", "-F", "32", img, "65536"])
    run(
        ["mcopy", "-s", "-m", "-i", img, tmp_path / "DCIM", "::/"],
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    )
    root = booted.installed.root
    (root / "var/lib/station/test-cards").mkdir(exist_ok=True)
    shutil.copy(img, root / "var/lib/station/test-cards/card.img")
    # the helper as installed, told that card images below this folder are cards too
    dropin = root / "etc/systemd/system/station-mountd.service.d/90-test.conf"
    dropin.parent.mkdir(exist_ok=True)
    dropin.write_text(
        "[Service]\nExecStart=\nExecStart=/opt/station/bin/python -m station.devices.mountd "
        "--root /run/station/cards --images /var/lib/station/test-cards "
        "--peer-cgroup /system.slice/station-mount.service\n"
    )
    try:
        with _probe_service(
            booted,
            "station-mount",
            "mount_probe.py",
            MOUNT_PROBE,
            "/var/lib/station/test-cards/card.img",
        ):
            booted.sh("systemctl", "restart", "station-mountd.socket")
            booted.sh("systemctl", "start", "station-mount.service")
            out = booted.journal("station-mount.service")
            # a root process on the station that is not the daemon is refused
            foreign = booted.python(
                """
                from pathlib import Path
                from station.devices.mount import BlockDevice, HelperMounter, MountError
                t = Path("/run/station/cards/port-3.0123456789ab")
                t.mkdir(parents=True, exist_ok=True)
                try:
                    HelperMounter(Path("/run/station-mountd.sock"), "fuse").mount(
                        BlockDevice("/var/lib/station/test-cards/card.img", "vfat", "/"), t
                    )
                    print("FOREIGN MOUNTED")
                except MountError as e:
                    print("FOREIGN REFUSED", e)
                """,
                check=False,
            ).stdout
            helper_log = booted.journal("station-mountd.service")
        assert "FOREIGN REFUSED" in foreign and "is not the station daemon" in foreign, foreign
        assert "is not the station daemon" in helper_log, helper_log
        assert "DEVLINK Read-only file system" in out and "DEVRW ok" in out, out
        assert re.search(r"REMOUNT [1-9]", out), out
        assert "DIRECT REFUSED" in out and "DIRECT MOUNTED" not in out, out
        assert "MOUNTER HelperMounter" in out
        assert "LISTED ['DCIM/100ANDRO/A.AVI', 'DCIM/100ANDRO/B.JPG']" in out
        assert f"SHA256 {hashlib.sha256(data).hexdigest()}" in out
        assert "DELETED True" in out and "UNMOUNTED True" in out
        assert "is not a card folder below /run/station/cards" in out
        assert re.search(r"HELPER REFUSED .*/dev/null is not a block device", out), out
        assert "HELPER MOUNTED" not in out, out
    finally:
        dropin.unlink(missing_ok=True)
        booted.sh("systemctl", "daemon-reload")
        booted.sh("systemctl", "restart", "station-mountd.socket", check=False)


def test_playback_is_decoded_by_the_sandboxed_media_worker(booted, tmp_path):
    import av
    from PIL import Image

    video = booted.installed.root / "var/lib/station/probe.avi"
    with av.open(str(video), "w", format="avi") as c:
        v = c.add_stream("mjpeg", rate=10)
        v.width, v.height, v.pix_fmt = 320, 240, "yuvj420p"
        for i in range(20):
            frame = av.VideoFrame.from_image(Image.new("RGB", (320, 240), (i * 10, 90, 30)))
            for packet in v.encode(frame.reformat(format="yuvj420p")):
                c.mux(packet)
        for packet in v.encode():
            c.mux(packet)
    video.chmod(0o600)  # root's, as stored footage is: the worker gets a descriptor
    with _probe_service(
        booted, "station-play", "media_probe.py", MEDIA_PROBE, "/var/lib/station/probe.avi"
    ):
        booted.sh("systemctl", "start", "station-play.service", timeout=300)
        out = booted.journal("station-play.service")
    assert "PLAYED None 20 False" in out, out
    workers = booted.sh(
        "journalctl", "--no-pager", "-o", "cat", "-u", "station-media@*", check=False
    ).stdout
    assert "Started station-media@" in booted.sh("journalctl", "--no-pager", "-o", "cat").stdout
    assert "Traceback" not in workers, workers


def test_the_installed_service_collects_a_recorder(booted):
    config = booted.installed.path("/etc/station/station.toml")
    original = config.read_text()
    simulated = original.replace(
        'kind = "udev"', 'kind = "simulated"\npath = "/run/station/simbus"'
    )
    assert simulated != original
    config.write_text(simulated)
    try:
        booted.daemon_reload_restart()
        booted.sh(
            "/opt/station/bin/station",
            "sim",
            "dock",
            "1",
            "--bus",
            "/run/station/simbus",
            "--files",
            "3",
            "--imp",
            "1",
            "--size-mb",
            "0.3",
            "--serial",
            "NS000001",
            timeout=180,
        )
        deadline = time.monotonic() + 180
        while (slot := booted.api("/api/v1/status")["slots"][0])["state"] != "complete":
            assert slot["state"] != "error" and time.monotonic() < deadline, (
                f"{slot}\n{booted.journal()}"
            )
            time.sleep(1)
        files = booted.api("/api/v1/files?serial=NS000001")["items"]
        assert len(files) >= 3
        for f in files:  # on the data disk, as the host sees it
            on_disk = booted.disk1 / Path(f["stored_path"]).relative_to("/srv/disk1")
            assert hashlib.sha256(on_disk.read_bytes()).hexdigest() == f["sha256"]
    finally:
        config.write_text(original)
        booted.daemon_reload_restart()


def test_reload_rereads_the_configuration(booted):
    before = booted.wait_active()["MainPID"]
    booted.sh("systemctl", "reload", "station.service")
    deadline = time.monotonic() + 30
    while "configuration reloaded" not in booted.journal(lines=20):
        assert time.monotonic() < deadline, booted.journal()
        time.sleep(0.5)
    assert booted.wait_active()["MainPID"] == before  # the same process: no restart


def test_a_hung_daemon_is_killed_by_the_watchdog_and_restarted(booted):
    dropin = booted.installed.path("/etc/systemd/system/station.service.d/90-test.conf")
    dropin.write_text("[Service]\nWatchdogSec=4s\nTimeoutAbortSec=3s\nRestartSec=1s\n")
    try:
        state = booted.daemon_reload_restart()
        first = int(
            booted.show("station.service", "WatchdogTimestampMonotonic")[
                "WatchdogTimestampMonotonic"
            ]
        )
        time.sleep(3)
        pings = booted.show("station.service", "WatchdogTimestampMonotonic", "NRestarts")
        assert int(pings["WatchdogTimestampMonotonic"]) > first  # pinging every 2 s
        restarts = int(pings["NRestarts"])
        booted.sh("kill", "-STOP", state["MainPID"])  # hung: the loop stops petting
        deadline = time.monotonic() + 30
        while int(booted.show("station.service", "NRestarts")["NRestarts"]) == restarts:
            assert time.monotonic() < deadline, booted.journal()
            time.sleep(0.5)
        after = booted.wait_active()
        assert after["MainPID"] != state["MainPID"]
        assert "Watchdog timeout" in booted.journal()
    finally:
        dropin.unlink(missing_ok=True)
        booted.daemon_reload_restart()


def test_diagnose_on_the_installed_station(booted):
    booted.wait_active()
    # a login shell knows the configuration (/etc/profile.d/station.sh): no --config
    out = booted.sh(
        "bash", "-lc", "station diagnose --out /root/support.tar.gz", timeout=180
    ).stdout.strip()
    assert out == "/root/support.tar.gz"
    bundle = booted.installed.path(out)
    assert bundle.stat().st_mode & 0o777 == 0o600
    token = load_config(booted.installed.path("/etc/station/station.toml")).api.tokens[0]
    assert token.encode() not in gzip.decompress(bundle.read_bytes())
    with tarfile.open(bundle) as tar:
        files = {n.split("/", 1)[1]: tar.extractfile(n).read().decode() for n in tar.getnames()}
    assert "Started station.service" in files["journal.txt"]
    assert "station.service" in files["system.txt"]  # systemctl status
    assert json.loads(files["status.json"])["answering"] is True
    versions = json.loads(files["summary.json"])["versions"]
    assert versions["installed"]["kiosk"] == "1"
    assert versions["python_executable"].startswith("/opt/station/")
    assert versions["debian_packages"]["smartmontools"][0].isdigit()
    disks = {d["path"]: d for d in json.loads(files["disks.json"])}
    assert disks["/srv/disk1"]["writable"] and not disks["/srv/disk2"]["writable"]  # immutable
    assert "station_started" in {e["kind"] for e in json.loads(files["events.json"])}
    assert files["errors.txt"] == "(none)\n"


def test_settings_export_and_import_on_the_installed_station(booted):
    booted.wait_active()
    config = booted.installed.path("/etc/station/station.toml")
    original = config.read_bytes()
    booted.sh("bash", "-lc", "station config export --out /root/settings.tar.gz")
    assert booted.installed.path("/root/settings.tar.gz").stat().st_mode & 0o777 == 0o600
    config.write_bytes(original.replace(b'name = "Collection station"', b'name = "Edited"'))
    try:
        r = booted.sh("bash", "-lc", "station config import /root/settings.tar.gz --by tech")
        assert "changed: station" in r.stdout and "restart the station" in r.stdout
        assert config.read_bytes() == original
        assert (config.stat().st_uid, config.stat().st_mode & 0o777) == (0, 0o600)
        assert booted.installed.path("/etc/station/station.toml.bak").exists()
        # the restored configuration is one the real service starts with
        before = booted.wait_active()["MainPID"]
        booted.sh("systemctl", "restart", "station.service", timeout=180)
        assert booted.wait_active()["MainPID"] != before
        assert booted.api("/api/v1/status")["station"]["name"] == "Collection station"
        events = booted.sh(
            "bash", "-lc", "station events --kind settings_imported --format json"
        ).stdout
        assert [e["actor"] for e in json.loads(events)] == ["tech"]
    finally:
        config.write_bytes(original)
        booted.installed.path("/etc/station/station.toml.bak").unlink(missing_ok=True)


def test_running_the_installer_again_upgrades_the_running_station(booted):
    root = booted.installed.root
    src = root / "var/tmp/station-src-next"
    src.mkdir()
    for item in ("pyproject.toml", "README.md", "station", "systemd", "docs"):
        if (REPO / item).is_dir():
            shutil.copytree(REPO / item, src / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / item, src / item)
    # The next version: another version number, and a changed unit.
    old = re.search(r'(?m)^version = "([^"]+)"', (REPO / "pyproject.toml").read_text())[1]
    new = f"{old}.post7"
    for path, line in (
        ("pyproject.toml", 'version = "{}"'),
        ("station/__init__.py", '__version__ = "{}"'),
    ):
        text = (src / path).read_text()
        assert text.count(line.format(old)) == 1, path
        (src / path).write_text(text.replace(line.format(old), line.format(new)))
    unit = (src / "systemd/station.service").read_text() + "# the next version\n"
    (src / "systemd/station.service").write_text(unit)
    env = ["-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8"]
    env.append("PIP_CACHE_DIR=/var/cache/station-pip")
    ca = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    if ca and Path(ca).is_file():  # a proxy's CA this machine trusts (as install.sh --root does)
        shutil.copy(ca, root / "var/tmp/host-ca.crt")
        env.append("PIP_CERT=/var/tmp/host-ca.crt")
    config = booted.installed.path("/etc/station/station.toml").read_bytes()
    before = booted.wait_active()["MainPID"]
    try:
        r = booted.sh(
            "env",
            *env,
            "bash",
            "/var/tmp/station-src-next/systemd/install.sh",
            "--source",
            "/var/tmp/station-src-next",
            timeout=900,
        )
    finally:
        shutil.rmtree(src, ignore_errors=True)
    assert "the station is running the old version: systemctl restart" in r.stderr
    assert booted.installed.path("/etc/station/station.toml").read_bytes() == config
    assert booted.wait_active()["MainPID"] == before  # the installer never restarts it
    assert f"version={new}\n" in booted.installed.path("/opt/station/INSTALLED").read_text()
    assert booted.installed.path("/etc/systemd/system/station.service").read_text() == unit
    assert booted.api("/api/v1/status")["station"]["version"] == old  # until restarted
    booted.sh("systemctl", "restart", "station.service")
    assert booted.wait_active()["MainPID"] != before
    assert booted.api("/api/v1/status")["station"]["version"] == new


def test_stop_is_clean(booted):
    booted.wait_active()
    booted.sh("systemctl", "stop", "station.service", timeout=180)
    props = booted.show("station.service", "ActiveState", "Result", "ExecMainStatus")
    assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
    booted.sh("systemctl", "start", "station.service", timeout=180)
    booted.wait_active()
