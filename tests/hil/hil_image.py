"""Build, once, the guest that runs the HIL tests: a Debian 12 kernel and a small root.

The result is two files in a cache folder outside the repository, keyed by a
hash of this file (which holds every input: the package list, the kernel
modules, the early init): `vmlinux` (the uncompressed kernel, booted directly
by QEMU) and `initrd.cpio` (the whole root file system as an uncompressed
initramfs). What the guest does after boot lives in the repository
(guest_init.sh, reached through the shared folder), so editing the test never
rebuilds the image.

Run as a script to build (or just locate) the image: `python3 tests/hil/hil_image.py`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

CACHE_ROOT = Path(os.environ.get("STATION_HIL_CACHE", "/var/cache/station-hil"))
# modprobe, depmod, ldconfig and chroot live in sbin, which a user's PATH may lack
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
KERNEL_META = "linux-image-amd64"  # depends on the current linux-image-6.1.0-N-amd64

# The guest's own packages (with their dependencies, resolved by apt). The station's
# Python dependencies are not here: the guest imports them from the host's venv (the
# same Debian Python 3.11) over 9p.
GUEST_PACKAGES = (
    # what a minimal Debian needs to boot a shell script as PID 1
    "base-files",
    "base-passwd",
    "dash",
    "coreutils",
    "libc-bin",
    "util-linux",
    "mount",
    "procps",
    # the guest's work
    "python3",
    "python3-pyudev",
    "python3-usb",  # brings libusb-1.0-0 for pyusb
    "libstdc++6",  # for the manylinux wheels in the venv (PyAV)
    "udev",
    "kmod",
    "dosfstools",
    "exfatprogs",
)
# Groups udev's rules name that base-passwd does not create (udev's postinst does).
EXTRA_GROUPS = ("input:x:101:", "kvm:x:102:", "render:x:103:", "sgx:x:104:")

# Kernel modules copied into the guest, with what they depend on.
GUEST_MODULES = (
    # the shared folders and the card drives
    "virtio_pci",
    "virtio_blk",
    "9p",
    "9pnet_virtio",
    # the USB host side: QEMU's xhci (the foreign stick), USB disks
    "xhci_pci",
    "usb_storage",
    "sd_mod",
    # the gadget side: recorders on dummy_hcd
    "dummy_hcd",
    "libcomposite",
    "usb_f_fs",
    "usb_f_mass_storage",
    "configfs",
    # cards
    "vfat",
    "exfat",
    "nls_ascii",
    "nls_utf8",
    "nls_cp437",
    "nls_cp936",
    "nls_iso8859-1",
    "loop",
    # the power-cut tier (test_powercut.py): store, catalog and cards on ext4 virtio disks
    "ext4",
    "crc32c_generic",
)

# Trimmed from the root (glob patterns): not needed to run, and every megabyte is
# unpacked at boot.
TRIM = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bash-completion",
    "usr/share/common-licenses",
    "usr/lib/python3.11/test",
    "usr/lib/python3.11/idlelib",
    "usr/lib/python3.11/tkinter",
    "usr/lib/python3.11/ensurepip",
    "usr/lib/python3.11/pydoc_data",
    "usr/lib/python3.11/lib2to3",
    "usr/lib/udev/hwdb.bin",
    "usr/lib/udev/hwdb.d",
    "usr/lib/x86_64-linux-gnu/gconv",
    # perl comes with usrmerge, which a root that is born merged does not need
    "usr/bin/perl*",
    "usr/share/perl*",
    "usr/lib/x86_64-linux-gnu/perl*",
    "usr/lib/x86_64-linux-gnu/libperl.so*",
    "usr/share/debconf",
)

# PID 1 of the guest: mount the shared folders and hand over to the repository's
# guest_init.sh, so that the test's guest side can change without a rebuild.
EARLY_INIT = r"""#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts /dev/shm /run /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
modprobe -a virtio_pci virtio_blk 9pnet_virtio 9p
opts=trans=virtio,version=9p2000.L,msize=512000
for tag in repo site hil; do
  mkdir -p "/$tag"
  mount -t 9p -o "$opts,cache=loose" "$tag" "/$tag" 2>/dev/null ||
    mount -t 9p -o "$opts" "$tag" "/$tag" || echo "HIL: no shared folder $tag"
done
if [ -x /repo/tests/hil/guest_init.sh ] || [ -f /repo/tests/hil/guest_init.sh ]; then
  exec /bin/sh /repo/tests/hil/guest_init.sh
fi
echo "HIL: /repo/tests/hil/guest_init.sh not found; powering off"
echo o >/proc/sysrq-trigger
sleep 10
"""


@dataclass(frozen=True)
class GuestImage:
    """A built guest: boot `vmlinux` with `initrd`."""

    folder: Path
    kernel_version: str
    built_now: bool
    seconds: float

    @property
    def vmlinux(self) -> Path:
        return self.folder / "vmlinux"

    @property
    def initrd(self) -> Path:
        return self.folder / "initrd.cpio"


def cache_key() -> str:
    """The hash of every builder input: this file."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def image_folder() -> Path:
    return CACHE_ROOT / f"guest-{cache_key()}"


def missing_tools() -> list[str]:
    """Host commands the build and the boot need, that are not installed."""
    need = (
        "qemu-system-x86_64",
        "apt-get",
        "dpkg-deb",
        "tar",
        "cpio",
        "modprobe",
        "depmod",
        "ldconfig",
        "chroot",
        "mkfs.vfat",
        "mcopy",
    )
    found = [t for t in need if shutil.which(t, path=SBIN_PATH)]
    return [t for t in need if t not in found]


def ensure_image(log: Callable[[str], None] = print) -> GuestImage:
    """The cached guest image, built first if it is not there yet (under a lock)."""
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    folder = image_folder()
    started = time.monotonic()
    with _locked(CACHE_ROOT / ".lock"):
        if (folder / "ready").exists():
            version = (folder / "ready").read_text().strip()
            return GuestImage(folder, version, False, time.monotonic() - started)
        version = _build(folder, log)
    _prune_old(folder)
    return GuestImage(folder, version, True, time.monotonic() - started)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _prune_old(keep: Path) -> None:
    """Drop images built from older versions of this file."""
    for p in CACHE_ROOT.glob("guest-*"):
        if p != keep and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def _run(cmd: list[str], log: Callable[[str], None], **kw: object) -> str:
    """Run a build step (sbin on PATH: modprobe, depmod, ldconfig, chroot); its stdout."""
    started = time.monotonic()
    env = {**os.environ, "PATH": SBIN_PATH}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, **kw)  # type: ignore[call-overload]
    if r.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        )
    what = " ".join(cmd[:2])
    log(f"hil-image: {what} ({time.monotonic() - started:.1f} s)")
    return r.stdout


def _build(folder: Path, log: Callable[[str], None]) -> str:
    tmp = Path(tempfile.mkdtemp(prefix="build-", dir=CACHE_ROOT))
    try:
        if not _apt_lists_ready():
            _run(["apt-get", "update", "-qq"], log)
        # the kernel and the root are independent: overlap them
        with ThreadPoolExecutor(max_workers=1) as pool:
            kernel = pool.submit(_kernel, tmp, log)
            _base_root(tmp, log)
            version = kernel.result()
        _root(tmp, version, log)
        out = tmp / "out"
        out.mkdir()
        shutil.move(tmp / "vmlinux", out / "vmlinux")
        _pack(tmp / "root", out / "initrd.cpio", log)
        (out / "ready").write_text(version + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        out.rename(folder)
        return version
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _apt_lists_ready() -> bool:
    lists = Path("/var/lib/apt/lists")
    return any(lists.glob("*_Packages*")) if lists.is_dir() else False


def _kernel(tmp: Path, log: Callable[[str], None]) -> str:
    """Download the current Debian 12 kernel; leave tmp/vmlinux and tmp/kroot."""
    deps = _run(["apt-cache", "depends", KERNEL_META], log)
    m = re.search(r"Depends: (linux-image-(6\.1\.0-\d+-amd64))\b", deps)
    if m is None:
        raise RuntimeError(f"cannot tell the kernel package from:\n{deps}")
    package, version = m.group(1), m.group(2)
    debs = tmp / "kernel-deb"
    debs.mkdir()
    os.chmod(debs, 0o777)  # apt's sandbox user downloads into it
    _run(["apt-get", "download", "-q", package], log, cwd=debs)
    (deb,) = debs.glob("linux-image-*.deb")
    _run(["dpkg-deb", "-x", str(deb), str(tmp / "kroot")], log)
    deb.unlink()
    vmlinuz = tmp / "kroot" / "boot" / f"vmlinuz-{version}"
    (tmp / "vmlinux").write_bytes(extract_vmlinux(vmlinuz.read_bytes()))
    _run(["depmod", "-b", str(tmp / "kroot"), version], log)
    return version


def extract_vmlinux(image: bytes) -> bytes:
    """The ELF kernel inside a bzImage: find the compressed payload and inflate it."""
    tried = []
    for magic, inflate in (
        (b"\xfd7zXZ\x00", lambda d: lzma.LZMADecompressor().decompress(d)),
        (b"\x1f\x8b\x08", lambda d: zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(d)),
        (b"\x28\xb5\x2f\xfd", _unzstd),
    ):
        start = image.find(magic)
        while start >= 0:
            tried.append(magic)
            with contextlib.suppress(Exception):
                out = inflate(image[start:])
                if out[:4] == b"\x7fELF":
                    return out
            start = image.find(magic, start + 1)
    raise RuntimeError(f"no ELF kernel found in the image (tried {len(tried)} payloads)")


def _unzstd(data: bytes) -> bytes:
    r = subprocess.run(["zstd", "-dc"], input=data, capture_output=True)
    return r.stdout


def _base_root(tmp: Path, log: Callable[[str], None]) -> None:
    """The guest's root from Debian packages: downloaded by apt, unpacked, no scripts run.

    apt resolves the dependencies against an empty package database (so the host's
    own packages do not count) and downloads them in parallel; each package is
    unpacked with dpkg-deb. What the packages' maintainer scripts would have done
    and the guest needs is done here: users and groups, the linker cache, the
    Python byte code. About 20 s, where debootstrap takes 75 to 170 s.
    """
    debs = tmp / "debs"
    (debs / "partial").mkdir(parents=True)
    status = tmp / "dpkg-status"
    status.touch()
    _run(
        [
            "apt-get",
            "-q",
            "-y",
            "--download-only",
            "-o",
            f"Dir::State::status={status}",
            "-o",
            f"Dir::Cache::archives={debs}",
            "-o",
            "Dir::Cache::pkgcache=",
            "-o",
            "Dir::Cache::srcpkgcache=",
            "-o",
            "Debug::NoLocking=1",
            "-o",
            "APT::Install-Recommends=0",
            "-o",
            "APT::Sandbox::User=root",
            "install",
            *GUEST_PACKAGES,
        ],
        log,
    )
    root = tmp / "root"
    for d in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64"):
        (root / d).mkdir(parents=True)
    for link in ("bin", "sbin", "lib", "lib64"):  # Debian 12 is merged-/usr
        (root / link).symlink_to(f"usr/{link}")
    started = time.monotonic()
    packages = sorted(debs.glob("*.deb"))
    with ThreadPoolExecutor(max_workers=4) as pool:
        for name, error in pool.map(lambda deb: _unpack(deb, root), packages):
            if error:
                raise RuntimeError(f"unpacking {name} failed: {error}")
    log(f"hil-image: {len(packages)} packages unpacked ({time.monotonic() - started:.1f} s)")
    etc = root / "etc"
    shutil.copy(root / "usr/share/base-passwd/passwd.master", etc / "passwd")
    groups = (root / "usr/share/base-passwd/group.master").read_text()
    (etc / "group").write_text(groups + "".join(g + "\n" for g in EXTRA_GROUPS))
    (etc / "mtab").symlink_to("/proc/self/mounts")
    for link, target in (("var/run", "/run"), ("var/lock", "/run/lock")):
        if not (root / link).is_symlink():
            shutil.rmtree(root / link, ignore_errors=True)
            (root / link).symlink_to(target)
    _run(["ldconfig", "-r", str(root)], log)
    _run(
        [
            "chroot",
            str(root),
            "/usr/bin/python3",
            "-m",
            "compileall",
            "-q",
            "/usr/lib/python3.11",
            "/usr/lib/python3/dist-packages",
        ],
        log,
    )


def _unpack(deb: Path, root: Path) -> tuple[str, str]:
    """Unpack one package over the merged-/usr root: (name, error or "")."""
    feed = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    tar = subprocess.run(
        ["tar", "-x", "--keep-directory-symlink", "-C", str(root)],
        stdin=feed.stdout,
        capture_output=True,
        text=True,
    )
    assert feed.stdout is not None
    feed.stdout.close()
    if feed.wait() != 0 or tar.returncode != 0:
        return deb.name, tar.stderr.strip() or f"dpkg-deb exited {feed.returncode}"
    return deb.name, ""


def _root(tmp: Path, version: str, log: Callable[[str], None]) -> None:
    """Add the kernel modules and the early init to the root, and trim it."""
    root = tmp / "root"
    kroot = tmp / "kroot"
    wanted: set[str] = set()
    for module in GUEST_MODULES:
        cmd = ["modprobe", "-d", str(kroot), "-S", version, "--show-depends", module]
        out = _run(cmd, lambda _: None)
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0] == "insmod":
                wanted.add(parts[1])
    src_mods = kroot / "lib" / "modules" / version
    dst_mods = root / "usr" / "lib" / "modules" / version
    for path in sorted(wanted):
        rel = Path(path).relative_to(src_mods)
        (dst_mods / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dst_mods / rel)
    for name in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        shutil.copy2(src_mods / name, dst_mods / name)
    _run(["depmod", "-b", str(root), version], log)
    for pattern in TRIM:
        for p in root.glob(pattern):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    (root / "var" / "log").mkdir(exist_ok=True)
    init = root / "init"
    init.write_text(EARLY_INIT)
    init.chmod(0o755)
    (root / "etc" / "hostname").write_text("hil\n")
    log(f"hil-image: {len(wanted)} kernel modules for {version}")


def _pack(root: Path, dest: Path, log: Callable[[str], None]) -> None:
    """An uncompressed newc cpio of the root (the kernel unpacks it fastest)."""
    names = subprocess.run(
        ["find", ".", "-mindepth", "1"], cwd=root, capture_output=True, check=True
    ).stdout
    with open(dest, "wb") as out:
        r = subprocess.run(
            ["cpio", "--quiet", "-o", "-H", "newc", "--reproducible"],
            cwd=root,
            input=names,
            stdout=out,
            stderr=subprocess.PIPE,
        )
    if r.returncode != 0:
        raise RuntimeError(f"cpio failed: {r.stderr.decode(errors='replace')}")
    log(f"hil-image: initrd {dest.stat().st_size / 2**20:.0f} MiB")


def main() -> int:
    """Build the image if needed and print where it is."""
    if missing := missing_tools():
        print(f"missing host tools: {', '.join(missing)}", file=sys.stderr)
        return 2
    img = ensure_image()
    state = "built" if img.built_now else "cached"
    print(f"{state} in {img.seconds:.1f} s: {img.folder} (kernel {img.kernel_version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
