"""The mount helper (station/devices/mountd.py): it mounts cards in the daemon's namespace, and
refuses everything else a compromised daemon could ask of it.

The helper runs as it does on a station (a process of its own, on its own socket); the
card images are real FAT32 and ext4 filesystems, mounted through FUSE (this kernel has
no vfat), and a loop device stands for a block device that is not on USB.
"""

from __future__ import annotations

import array
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import needs_root

from station.devices.mount import BlockDevice, HelperMounter, MountError

pytestmark = needs_root


@pytest.fixture
def cards(tmp_path: Path) -> Path:
    root = tmp_path / "cards"
    root.mkdir(mode=0o700)
    return root


@pytest.fixture
def images(tmp_path: Path) -> Path:
    d = tmp_path / "images"
    d.mkdir()
    img = d / "card.img"
    subprocess.run(
        ["mkfs.vfat", "-C", "-F", "32", str(img), "65536"], check=True, capture_output=True
    )
    (tmp_path / "DCIM").mkdir()
    (tmp_path / "DCIM" / "A.AVI").write_bytes(b"footage" * 1000)
    subprocess.run(
        ["mcopy", "-s", "-m", "-i", str(img), str(tmp_path / "DCIM"), "::/"],
        check=True,
        capture_output=True,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    )
    return d


def _start_helper(tmp_path: Path, cards: Path, images: Path, *peers: str) -> Iterator[Path]:
    # a folder every user can pass through: one test asks as another user
    home = Path(tempfile.mkdtemp(prefix="mountd-", dir="/tmp"))
    home.chmod(0o711)
    sock = home / "mountd.sock"
    args = ["--root", str(cards), "--socket", str(sock), "--images", str(images), *peers]
    proc = subprocess.Popen(
        [sys.executable, "-m", "station.devices.mountd", *args],
        stderr=open(tmp_path / "mountd.log", "wb"),  # noqa: SIM115 - the helper's for life
    )
    deadline = time.monotonic() + 30
    while not sock.exists():
        assert proc.poll() is None, (tmp_path / "mountd.log").read_text()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield sock
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def helper(tmp_path: Path, cards: Path, images: Path) -> Iterator[Path]:
    """The helper serving this test process and its children (no systemd unit here)."""
    yield from _start_helper(tmp_path, cards, images, "--peer-process", str(os.getpid()))


def _target(cards: Path) -> Path:
    t = cards / f"port-1.{uuid.uuid4().hex[:12]}"
    t.mkdir(mode=0o700)
    return t


def _card(node: Path | str) -> BlockDevice:
    return BlockDevice(str(node), "vfat", "/sys/nowhere")


def test_a_card_is_mounted_in_the_asking_namespace_only_with_the_stations_options(
    helper: Path, cards: Path, images: Path
) -> None:
    target = _target(cards)
    client = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from station.devices.mount import BlockDevice, HelperMounter
        m = HelperMounter(Path({str(helper)!r}), "fuse")
        target = Path({str(target)!r})
        m.mount(BlockDevice({str(images / "card.img")!r}, "vfat", "/sys/x"), target)
        opts = [l.split()[5] for l in open("/proc/self/mountinfo") if l.split()[4] == str(target)]
        print("OPTS", opts[0], flush=True)
        print("FILES", sorted(p.name for p in (target / "DCIM").iterdir()), flush=True)
        sys.stdin.readline()
        m.unmount(target)
        print("UNMOUNTED", not target.is_mount(), flush=True)
        """
    )
    # the daemon runs in a mount namespace of its own (systemd's sandbox)
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", client],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    opts = proc.stdout.readline()
    files = proc.stdout.readline()
    assert files.strip() == "FILES ['A.AVI']", (opts, files, proc.stderr.read())
    assert {"nosuid", "nodev", "noexec"} <= set(opts.split()[1].split(","))
    assert not os.path.ismount(target)  # not in the helper's (the host's) namespace
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "UNMOUNTED True"
    assert proc.wait(30) == 0


@pytest.mark.parametrize(
    "where, expected",
    [
        ("outside", "is not a card folder below"),
        ("bad-name", "is not a card folder below"),
        ("symlink", "is not a plain folder"),
        ("in-use", "is in use"),
    ],
)
def test_targets_other_than_a_fresh_card_folder_are_refused(
    helper: Path, cards: Path, images: Path, tmp_path: Path, where: str, expected: str
) -> None:
    if where == "outside":
        target = tmp_path / f"port-1.{uuid.uuid4().hex[:12]}"
        target.mkdir()
    elif where == "bad-name":
        target = cards / "etc"
        target.mkdir()
    elif where == "symlink":
        (tmp_path / "elsewhere").mkdir()
        target = cards / f"port-1.{uuid.uuid4().hex[:12]}"
        target.symlink_to(tmp_path / "elsewhere")
    else:
        target = _target(cards)
        (target / "something").touch()
    with pytest.raises(MountError, match=expected):
        HelperMounter(helper, "fuse").mount(_card(images / "card.img"), target)
    assert not os.path.ismount(target)


def test_sources_other_than_a_usb_card_are_refused(
    helper: Path, cards: Path, images: Path, tmp_path: Path
) -> None:
    m = HelperMounter(helper, "fuse")
    outside = tmp_path / "card.img"
    outside.write_bytes((images / "card.img").read_bytes())
    with pytest.raises(MountError, match="is not a device node"):
        m.mount(_card(outside), _target(cards))
    with pytest.raises(MountError, match="is not a device node"):
        m.mount(_card("/dev/../etc/shadow"), _target(cards))
    (images / "link.img").symlink_to(outside)
    with pytest.raises(MountError, match=r"is not a card image|Too many levels of symbolic links"):
        m.mount(_card(images / "link.img"), _target(cards))
    # a block device that is not on USB: a loop device holding a FAT card
    loop = subprocess.run(
        ["losetup", "-f", "--show", str(outside)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        with pytest.raises(MountError, match="is not a USB disk"):
            m.mount(_card(loop), _target(cards))
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
    # a card image that holds another filesystem
    ext4 = images / "disk.img"
    with open(ext4, "wb") as f:
        f.truncate(8 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(ext4)], check=True, capture_output=True)
    with pytest.raises(MountError, match="holds ext4, not a card's FAT or exFAT"):
        m.mount(_card(ext4), _target(cards))
    assert not [t for t in cards.iterdir() if os.path.ismount(t)]


def _raw(sock: Path, payload: bytes, fds: list[int]) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(sock))
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        s.sendmsg([payload], anc)
        return dict(json.loads(s.makefile("rb").readline()))


def test_malformed_requests_and_other_users_are_refused_and_the_helper_goes_on(
    helper: Path, cards: Path, images: Path
) -> None:
    ns = os.open("/proc/self/ns/mnt", os.O_RDONLY)
    try:
        assert "exactly one namespace" in str(_raw(helper, b'{"op": "mount"}', [])["error"])
        assert "not a request" in str(_raw(helper, b"\xff{", [ns])["error"])
        assert "unknown operation" in str(
            _raw(
                helper, json.dumps({"op": "remount", "target": str(_target(cards))}).encode(), [ns]
            )["error"]
        )
    finally:
        os.close(ns)
    # only root may ask (the socket is root's alone too; opened up here to reach the check)
    os.chmod(helper, 0o666)
    card, target = str(images / "card.img"), str(_target(cards))
    nobody = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from station.devices.mount import BlockDevice, HelperMounter
        os.setgid(65534); os.setuid(65534)
        card = BlockDevice({card!r}, "vfat", "/sys/x")
        HelperMounter(Path({str(helper)!r}), "fuse").mount(card, Path({target!r}))
        """
    )
    r = subprocess.run([sys.executable, "-c", nobody], capture_output=True, text=True, check=False)
    assert r.returncode != 0 and "only the station (root) may ask" in r.stderr
    # and it still serves the station
    target = _target(cards)
    m = HelperMounter(helper, "fuse")
    m.mount(_card(images / "card.img"), target)
    assert os.path.ismount(target)
    m.unmount(target)
    assert not os.path.ismount(target)


def test_only_card_folders_are_unmounted(helper: Path, cards: Path, tmp_path: Path) -> None:
    """A compromised daemon could ask to lift the read-only binds of its own sandbox."""
    ns = os.open("/proc/self/ns/mnt", os.O_RDONLY)
    try:
        for target in ("/", "/usr", str(cards), str(cards / ".." / "port-1.0123456789ab")):
            answer = _raw(helper, json.dumps({"op": "unmount", "target": target}).encode(), [ns])
            assert answer["ok"] is False and "is not a card folder" in str(answer["error"])
    finally:
        os.close(ns)


def _mounts_of(pid: int, below: Path) -> list[str]:
    """Mount points below `below` in the namespace of `pid`."""
    lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    return [m for m in (line.split()[4] for line in lines) if m.startswith(str(below) + "/")]


def test_a_root_process_that_is_not_the_station_is_refused_and_logged(
    tmp_path: Path, cards: Path, images: Path
) -> None:
    """Any root process could reach the socket: only the daemon's is served."""
    card = _card(images / "card.img")
    # the helper as on a station: it serves station.service's cgroup, which we are not in
    helper = _start_helper(tmp_path, cards, images)
    sock = next(helper)
    try:
        target = _target(cards)
        with pytest.raises(
            MountError, match=r"is not the station daemon: cgroup .*station\.service"
        ):
            HelperMounter(sock, "fuse").mount(card, target)
        assert not os.path.ismount(target)
    finally:
        next(helper, None)
    assert f"refused (process {os.getpid()})" in (tmp_path / "mountd.log").read_text()
    # the helper serving one process tree: a root process outside it (an orphan, adopted by
    # init) is refused; the tree itself is served
    helper = _start_helper(tmp_path, cards, images, "--peer-process", str(os.getpid()))
    sock = next(helper)
    try:
        target = _target(cards)
        orphan = textwrap.dedent(
            f"""
            import os, sys
            from pathlib import Path
            from station.devices.mount import BlockDevice, HelperMounter, MountError
            if os.fork():
                os._exit(0)
            while os.getppid() == {os.getpid()}:  # adopted by init (or a subreaper above)
                pass
            try:
                HelperMounter(Path({str(sock)!r}), "fuse").mount(
                    BlockDevice({str(images / "card.img")!r}, "vfat", "/sys/x"),
                    Path({str(target)!r}),
                )
                print("MOUNTED", flush=True)
            except MountError as e:
                print("REFUSED", e, flush=True)
            """
        )
        # the orphan's output comes through the pipe after its parent has exited
        r = subprocess.run(
            [sys.executable, "-c", orphan], capture_output=True, text=True, timeout=60, check=True
        )
        assert r.stdout.startswith("REFUSED") and "is not the station daemon" in r.stdout, r
        assert not os.path.ismount(target)
        m = HelperMounter(sock, "fuse")
        m.mount(card, target)
        assert os.path.ismount(target)
        m.unmount(target)
    finally:
        next(helper, None)
    assert "is not the station daemon" in (tmp_path / "mountd.log").read_text()


def test_a_namespace_that_is_not_the_askers_own_is_refused(
    helper: Path, cards: Path, images: Path, tmp_path: Path
) -> None:
    """A daemon passing on another namespace (one it got hold of) gets nothing mounted there."""
    other = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sleep", "300"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        ours = os.stat("/proc/self/ns/mnt").st_ino
        while os.stat(f"/proc/{other.pid}/ns/mnt").st_ino == ours:  # unshare not done yet
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ns = os.open(f"/proc/{other.pid}/ns/mnt", os.O_RDONLY)
        target = _target(cards)
        request = {"op": "mount", "kind": "fuse", "node": str(images / "card.img")}
        try:
            answer = _raw(helper, json.dumps({**request, "target": str(target)}).encode(), [ns])
        finally:
            os.close(ns)
        assert answer["ok"] is False, answer
        assert "the namespace sent is not that of the asker" in str(answer["error"])
        assert not _mounts_of(other.pid, cards) and not os.path.ismount(target)
        assert "not that of the asker" in (tmp_path / "mountd.log").read_text()
        # the asker's own namespace is served, as before
        ns = os.open("/proc/self/ns/mnt", os.O_RDONLY)
        try:
            answer = _raw(helper, json.dumps({**request, "target": str(target)}).encode(), [ns])
        finally:
            os.close(ns)
        assert answer == {"ok": True} and os.path.ismount(target)
        HelperMounter(helper, "fuse").unmount(target)
    finally:
        other.kill()
        other.wait()


# --- races: a compromised daemon swapping names while the helper works -----------------------

SWAPPER = """
import ctypes, os, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
RENAME_EXCHANGE = 2
stop, pause, paused = threading.Event(), threading.Event(), threading.Event()
swaps = [0]


def swap(a, b):
    # exchange two names over and over (a mounted folder cannot move: EBUSY, ignored)
    while not stop.is_set():
        if pause.is_set():
            paused.set()
            while pause.is_set() and not stop.is_set():
                stop.wait(0.001)
            paused.clear()
        if libc.renameat2(-100, a.encode(), -100, b.encode(), RENAME_EXCHANGE) == 0:
            swaps[0] += 1


class still:
    # names hold still inside: for looking at what was mounted, and letting go of it

    def __enter__(self):
        pause.set()
        paused.wait()

    def __exit__(self, *exc):
        pause.clear()


def start(a, b):
    t = threading.Thread(target=swap, args=(a, b), daemon=True)
    t.start()
    return t


def mounts_below(where):
    lines = open("/proc/self/mountinfo").read().splitlines()
    return [m for m in (line.split()[4] for line in lines) if m.startswith(where + "/")]
"""


def _race(tmp_path: Path, body: str) -> dict[str, object]:
    """Run `body` (after SWAPPER) as the daemon would: root, in a mount namespace of its
    own; its last line of output is a JSON summary."""
    script = tmp_path / "race.py"
    script.write_text(SWAPPER + textwrap.dedent(body))
    r = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    return {**json.loads(r.stdout.splitlines()[-1]), "stderr": r.stderr[-3000:]}


RACE_ROUNDS = 30


def test_a_card_folder_swapped_for_a_link_never_gets_the_link_target_mounted(
    helper: Path, cards: Path, images: Path, tmp_path: Path
) -> None:
    """The target is opened once, component by component without following a link, and
    mounted on through that descriptor: a name swapped meanwhile changes nothing."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "secret").write_text("ORIGINAL")
    a, b = _target(cards), cards / f"port-1.{uuid.uuid4().hex[:12]}"
    b.symlink_to(victim)
    summary = _race(
        tmp_path,
        f"""
        import json
        from pathlib import Path
        from station.devices.mount import BlockDevice, HelperMounter, MountError
        m = HelperMounter(Path({str(helper)!r}), "fuse")
        card = BlockDevice({str(images / "card.img")!r}, "vfat", "/sys/x")
        names = [{str(a)!r}, {str(b)!r}]
        seen, errors, mounted = [], set(), 0
        start(*names)
        for i in range({RACE_ROUNDS}):
            try:
                m.mount(card, Path(names[i % 2]))
                mounted += 1
            except MountError as e:
                errors.add(str(e).split(": ", 1)[-1])
            with still():
                where = mounts_below({str(tmp_path)!r})
                seen += where
                if os.path.ismount({str(victim)!r}) or where != [p for p in where if p in names]:
                    break
                for p in where:
                    m.unmount(Path(p))
        stop.set()
        print(json.dumps({{"seen": sorted(set(seen)), "errors": sorted(errors),
                          "mounted": mounted, "swaps": swaps[0],
                          "left": mounts_below({str(tmp_path)!r})}}))
        """,
    )
    assert set(summary["seen"]) <= {str(a), str(b)}, summary  # type: ignore[arg-type]
    assert not summary["left"], summary
    assert summary["mounted"], summary  # the helper kept serving the real folder
    assert all("plain folder" in e for e in summary["errors"]), summary  # type: ignore[union-attr]
    assert (victim / "secret").read_text() == "ORIGINAL"
    assert sorted(p.name for p in victim.iterdir()) == ["secret"]


def test_a_card_image_swapped_for_a_link_never_gets_the_other_image_mounted(
    helper: Path, cards: Path, images: Path, tmp_path: Path
) -> None:
    """The source is opened once without following a link, and checked, probed and
    mounted through that descriptor: another filesystem swapped in is never mounted."""
    other = tmp_path / "other.img"
    subprocess.run(
        ["mkfs.vfat", "-C", "-F", "32", str(other), "65536"], check=True, capture_output=True
    )
    (tmp_path / "SECRET.TXT").write_text("not a card")
    subprocess.run(
        ["mcopy", "-i", str(other), str(tmp_path / "SECRET.TXT"), "::/"],
        check=True,
        capture_output=True,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    )
    (images / "swap.img").symlink_to(other)
    summary = _race(
        tmp_path,
        f"""
        import json
        from pathlib import Path
        from station.devices.mount import BlockDevice, HelperMounter, MountError
        m = HelperMounter(Path({str(helper)!r}), "fuse")
        card = BlockDevice({str(images / "card.img")!r}, "vfat", "/sys/x")
        contents, errors = [], set()
        start({str(images / "card.img")!r}, {str(images / "swap.img")!r})
        for i in range({RACE_ROUNDS}):
            target = Path({str(cards)!r}) / f"port-1.{{i:012x}}"
            target.mkdir(mode=0o700)
            try:
                m.mount(card, target)
                contents.append(sorted(p.name for p in target.iterdir()))
                m.unmount(target)
            except MountError as e:
                errors.add(str(e).split(": ", 1)[-1])
            target.rmdir()
        stop.set()
        print(json.dumps({{"contents": contents, "errors": sorted(errors), "swaps": swaps[0],
                          "left": mounts_below({str(tmp_path)!r})}}))
        """,
    )
    assert summary["contents"], summary  # the real card was mounted, at least sometimes
    assert all(c == ["DCIM"] for c in summary["contents"]), summary  # type: ignore[union-attr]
    assert not summary["left"], summary


def test_a_card_root_swapped_for_one_with_a_link_never_unmounts_anything_else(
    tmp_path: Path, images: Path
) -> None:
    """Unmounting is umount2(UMOUNT_NOFOLLOW) of a name below the card root's descriptor:
    a card root swapped for a folder whose card is a link to a mount of the sandbox (a
    masked /run/dbus, say) never gets that mount lifted."""
    run = tmp_path / "run"
    root, evil, victim = run / "cards", run / "evil", tmp_path / "victim"
    for d in (root, evil, victim):
        d.mkdir(parents=True)
    name = f"port-1.{uuid.uuid4().hex[:12]}"
    (root / name).mkdir()
    (evil / name).symlink_to(victim)
    helper = _start_helper(tmp_path, root, images, "--peer-process", str(os.getpid()))
    sock = next(helper)
    try:
        summary = _race(
            tmp_path,
            f"""
            import json, subprocess
            from pathlib import Path
            from station.devices.mount import HelperMounter
            victim = {str(victim)!r}
            subprocess.run(["mount", "-t", "tmpfs", "mask", victim], check=True)
            m = HelperMounter(Path({str(sock)!r}), "kernel")
            card = "/" + {name!r}
            start({str(root)!r}, {str(evil)!r})
            def is_mount(p):  # the names move under our feet
                try:
                    return os.path.ismount(p)
                except OSError:
                    return False

            remounted = 0
            for i in range({RACE_ROUNDS * 3}):
                for d in ({str(root)!r} + card, {str(evil)!r} + card):  # the card folder
                    if os.path.isdir(d) and not os.path.islink(d) and not is_mount(d):
                        r = subprocess.run(["mount", "-t", "tmpfs", "card", d], check=False)
                        remounted += r.returncode == 0
                m.unmount(Path({str(root)!r} + card), lazy=i % 2 == 0)
                if not is_mount(victim):
                    break
            stop.set()
            print(json.dumps({{"victim": is_mount(victim), "remounted": remounted,
                              "swaps": swaps[0]}}))
            """,
        )
    finally:
        next(helper, None)
    assert summary["victim"] is True, summary
    assert int(summary["remounted"]) > 1, summary  # the real card was let go of, sometimes
