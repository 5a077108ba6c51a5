"""The machine the suite runs on has everything the suite uses, installed by `./dev`.

A test that needs a program or a folder from a Debian package the developers
happened to have (udev, once) passes on their machines and fails on a fresh one.
These checks make that fail here, naming the package:

- every program the tests, benchmarks and the daemon run (found by reading
  their source for `subprocess` calls and `need`/`which` look-ups) is listed in
  HOST_TOOLS with the Debian package that provides it;
- every package listed there is in `./dev`'s APT_PACKAGES, unless Debian
  installs it on every system (priority "required");
- every listed program and folder is present on this machine.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])

# Debian's "required" packages: debootstrap puts them on every system.
REQUIRED = {
    "coreutils",
    "tar",
    "util-linux",
    "mount",
    "dpkg",
    "libc-bin",
    "apt",
    "findutils",
    "e2fsprogs",
}

# program -> the Debian package that provides it
HOST_TOOLS = {
    "apt-cache": "apt",
    "apt-get": "apt",
    "adb": "adb",
    "blkid": "util-linux",
    "cc": "gcc",
    "chattr": "e2fsprogs",
    "chroot": "coreutils",
    "cp": "coreutils",
    "cpio": "cpio",
    "debootstrap": "debootstrap",
    "depmod": "kmod",
    "e2fsck": "e2fsprogs",
    "df": "coreutils",
    "dmesg": "util-linux",
    "dpkg-deb": "dpkg",
    "dpkg-query": "dpkg",
    "espeak-ng": "espeak-ng",
    "find": "findutils",
    "fusefat": "fusefat",
    "fusermount3": "fuse3",
    "gcc": "gcc",
    "journalctl": "systemd",
    "ldconfig": "libc-bin",
    "losetup": "mount",
    "lsattr": "e2fsprogs",
    "lsblk": "util-linux",
    "mcopy": "mtools",
    "mdir": "mtools",
    "mkfs.exfat": "exfatprogs",
    "mkfs.ext4": "e2fsprogs",
    "mkfs.vfat": "dosfstools",
    "mount": "mount",
    "mount.exfat-fuse": "exfat-fuse",
    "nsenter": "util-linux",
    "qemu-system-x86_64": "qemu-system-x86",
    "rm": "coreutils",
    "sha256sum": "coreutils",
    "smartctl": "smartmontools",
    "sync": "coreutils",
    "systemctl": "systemd",
    "systemd-analyze": "systemd",
    "systemd-nspawn": "systemd-container",
    "tar": "tar",
    "timedatectl": "systemd",
    "udevadm": "udev",  # tests/test_install.py runs it from a generated probe script
    "umockdev-wrapper": "umockdev",
    "umount": "mount",
    "unshare": "util-linux",
    "zstd": "zstd",
}
# programs only the benchmarks run, installed by them or by hand (docs/benchmarks.md)
BENCH_ONLY = {"faketime": "faketime", "py-spy": "py-spy (PyPI)", "git": "git"}
# absolute paths the tests run, and folders they bind over
HOST_PATHS = {
    "/usr/lib/systemd/system-generators/systemd-fstab-generator": "systemd",
    "/etc/udev/rules.d": "udev",  # tests/test_install.py mounts the station's rules over it
    "/usr/share/fonts/opentype/noto": "fonts-noto-cjk",  # the browser tests' Chinese text
    "/usr/bin/chromium": "chromium",
}

CALLS = {"run", "Popen", "check_output", "check_call", "call", "_run", "need", "which"}


def apt_packages() -> set[str]:
    text = (REPO / "dev").read_text()
    m = re.search(r"APT_PACKAGES=\((.*?)\)", text, re.S)
    assert m, "./dev has no APT_PACKAGES=( ... ) list"
    body = "\n".join(line.split("#", 1)[0] for line in m.group(1).splitlines())
    return set(body.split())


def programs_run(*roots: str) -> dict[str, str]:
    """{program: a file that runs it} for every literal program name in a subprocess call."""
    found: dict[str, str] = {}
    for root in roots:
        for path in sorted((REPO / root).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.Call) or not node.args:
                    continue
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                if name not in CALLS:
                    continue
                first = node.args[0]
                if isinstance(first, ast.List | ast.Tuple) and first.elts:
                    first = first.elts[0]
                elif name not in ("need", "which"):
                    continue
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    prog = first.value
                    if prog and " " not in prog:
                        found.setdefault(prog, str(path.relative_to(REPO)))
    return found


def test_every_program_the_suite_runs_is_listed_with_its_package():
    run = programs_run("tests", "station", "bench")
    unlisted = {
        p: where
        for p, where in run.items()
        if p not in HOST_TOOLS and p not in BENCH_ONLY and p not in HOST_PATHS
    }
    assert not unlisted, (
        "programs run by the code with no Debian package named in tests/test_host.py "
        f"(add them to HOST_TOOLS and to ./dev's APT_PACKAGES): {unlisted}"
    )
    bench = {p: w for p, w in run.items() if p in BENCH_ONLY and not w.startswith("bench/")}
    assert not bench, f"BENCH_ONLY programs run outside bench/: {bench}"


def test_every_package_the_suite_needs_is_installed_by_dev():
    listed = apt_packages()
    wanted = {*HOST_TOOLS.values(), *HOST_PATHS.values()} - REQUIRED
    missing = sorted(wanted - listed)
    assert not missing, f"add to APT_PACKAGES in ./dev: {' '.join(missing)}"


@pytest.mark.parametrize("program", sorted(HOST_TOOLS))
def test_program_is_installed(program):
    assert shutil.which(program, path=SBIN_PATH), (
        f"{program} is missing: Debian package {HOST_TOOLS[program]} (run ./dev setup)"
    )


@pytest.mark.parametrize("path", sorted(HOST_PATHS))
def test_path_exists(path):
    assert Path(path).exists(), f"{path} is missing: Debian package {HOST_PATHS[path]}"
