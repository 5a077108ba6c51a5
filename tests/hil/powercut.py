"""The power-cut guest (tier 3, HIL.md): the real daemon on ext4 virtio disks, cut by the host.

Runs inside the HIL guest as PID 1's successor (guest_init.sh, when the run folder
holds `powercut.json`). Two phases:

- **prepare** (a fresh boot, once per test run): load ext4, mount the read-only code
  disk (the station's packages and their Python dependencies), import everything
  `station run` imports (under TCG that is most of a minute), unmount the 9p shares
  (a mounted 9p share blocks QEMU's migration) and print `PC: snapshot-ready`. The
  host saves the whole machine with QMP `migrate` and kills that QEMU. The data disks
  have never been mounted or read by then.
- **cycles**: the host restores that state in a new QEMU (`-incoming`) with the same
  disk images, and writes one `GO {json}` line on the console. The guest sets its
  clock and reseeds its random generator from it (a restored machine has the
  snapshot's), mounts the shared folder and the ext4 disks (store disks, catalog,
  recorders' cards), and forks the daemon: `station run --config ...`, the
  production entry point, in a child of the process that imported it (so start-up
  recovery, migrations, collection, retention are all the real thing). While it runs,
  the guest undocks recorders whose card is empty and docks the next spare one, as
  officers would. The host kills QEMU (SIGKILL) at a random moment: a power cut.
  The last cycle (`final`) is not cut: the guest docks every spare, waits until every
  card is empty and nothing is collecting, stops the daemon with SIGTERM, checks the
  invariants against the host's manifest (`check`) and writes `/hil/report.json`.

Console lines starting with `PC:` are the host's view of progress.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from pathlib import Path
from typing import Any

T0 = time.monotonic()
CODE = Path("/pc")  # the read-only code disk: /pc/code (station, drivers, web), /pc/site
CONFIG = Path("/run/pc/station.toml")
SHARE_OPTS = "trans=virtio,version=9p2000.L,msize=512000"
BLKFLSBUF = 0x1261
RNDADDENTROPY = 0x40085203
RNDRESEEDCRNG = 0x5207
# what `station run` imports, beyond station.cli (measured with -X importtime on a host run);
# a module missing here is only imported later, more slowly
PRELOAD = (
    "station.cli",
    "station.runtime",
    "station.devices.simbus",
    "station.drivers.simulated",
    "station.media.playback",
    "station.accounts",
    "station.search",
    "station.retention.annotations",
    "station.web.app",
    "station.web.i18n",
    "station.settings",
    "station.web.auth",
    "station.web.ui",
    "station.web.media",
    "watchdog.observers",
    "watchdog.observers.inotify",
    "pydantic.v1",
    "av",
    "argon2",
    "babel.dates",
    "babel.messages.pofile",
    "httptools",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.http.h11_impl",
    "uvicorn.protocols.websockets.auto",
    "uvicorn.lifespan.off",
    "uvicorn.loops.asyncio",
    "alembic.command",
    "alembic.runtime.migration",
    "alembic.runtime.environment",
    "alembic.script",
    "alembic.ddl.sqlite",
    "sqlalchemy.dialects.sqlite",
    "sqlalchemy.dialects.sqlite.pysqlite",
    "logging.config",
)


def say(msg: str) -> None:
    print(f"PC: [{time.monotonic() - T0:7.2f}] {msg}", flush=True)


def run(*cmd: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.returncode} {r.stderr.strip()}")


def disk_by_serial(serial: str) -> str:
    """/dev/vdX of the virtio drive the host gave this serial."""
    for p in Path("/sys/block").glob("vd*"):
        with contextlib.suppress(OSError):
            if (p / "serial").read_text().strip() == serial:
                return f"/dev/{p.name}"
    raise RuntimeError(f"no virtio drive with serial {serial}")


def loopback_up() -> None:
    """Bring `lo` up (the guest has no network setup): the daemon serves HTTP on it."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH", fcntl.ioctl(s, siocgifflags, ifr)[:18])[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH14s", b"lo", flags | iff_up, b""))


def mounted(path: str) -> bool:
    return any(line.split()[1] == path for line in Path("/proc/mounts").read_text().splitlines())


# --- prepare --------------------------------------------------------------------------------


def prepare(share: Path) -> dict[str, Any]:
    plan = json.loads((share / "powercut.json").read_text("utf-8"))
    run("modprobe", "-a", "ext4", "crc32c_generic")
    CODE.mkdir(exist_ok=True)
    run("mount", "-t", "ext4", "-o", "ro,noload", disk_by_serial(plan["code_disk"]), str(CODE))
    sys.path[:0] = [str(CODE / "code"), str(CODE / "site")]
    os.environ["PYTHONPATH"] = f"{CODE / 'code'}:{CODE / 'site'}"
    loopback_up()
    started = time.monotonic()
    missing = []
    for name in PRELOAD:
        try:
            __import__(name)
        except Exception as e:
            missing.append(f"{name}: {type(e).__name__}: {e}")
    say(f"preloaded {len(sys.modules)} modules in {time.monotonic() - started:.1f} s")
    for m in missing:
        say(f"not preloaded: {m}")
    os.chdir("/")
    for tag in ("hil", "site", "repo"):
        if mounted(f"/{tag}"):
            run("umount", f"/{tag}")
    return plan


# --- one cycle --------------------------------------------------------------------------------


def seed_machine(go: dict[str, Any]) -> None:
    """A restored machine has the snapshot's clock and random state: set both from the host."""
    time.clock_settime(time.CLOCK_REALTIME, float(go["epoch"]))
    entropy = bytes.fromhex(go["entropy"])
    with open("/dev/urandom", "wb") as f:
        info = struct.pack("ii", len(entropy) * 8, len(entropy)) + entropy
        fcntl.ioctl(f, RNDADDENTROPY, info)
        fcntl.ioctl(f, RNDRESEEDCRNG)


def mount_disks(plan: dict[str, Any]) -> None:
    for serial, where in plan["disks"].items():
        node = disk_by_serial(serial)
        fd = os.open(node, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, BLKFLSBUF)  # nothing read before the snapshot may be believed
        finally:
            os.close(fd)
        Path(where).mkdir(parents=True, exist_ok=True)
        run("mount", "-t", "ext4", node, where)


def card_files(card: Path) -> dict[str, Path]:
    out = {}
    for root, _dirs, names in os.walk(card):
        for n in names:
            p = Path(root) / n
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(card))] = p
    return out


class Cards:
    """The recorders' disk: `bus/port-N` docked, `spare/` to dock next, `done/` put away."""

    def __init__(self, root: Path, ports: int) -> None:
        self.bus = root / "bus"
        self.spare = root / "spare"
        self.done = root / "done"
        self.ports = ports
        self.done.mkdir(exist_ok=True)

    def spares(self) -> list[Path]:
        return sorted(p for p in self.spare.iterdir() if p.is_dir()) if self.spare.is_dir() else []

    def rotate(self) -> list[str]:
        """Put away recorders whose card is empty; dock spares on free ports."""
        moves = []
        spares = self.spares()
        for port in range(1, self.ports + 1):
            slot = self.bus / f"port-{port}"
            if slot.is_dir() and not card_files(slot / "card"):
                serial = json.loads((slot / "recorder.json").read_text("utf-8"))["serial"]
                os.rename(slot, self.done / f"{serial}-{time.time_ns()}")
                moves.append(f"undocked {serial} from port {port}")
            if not slot.exists() and spares:
                spare = spares.pop(0)
                os.rename(spare, slot)
                moves.append(f"docked {spare.name} on port {port}")
        return moves

    def all_empty(self) -> bool:
        return not self.spares() and all(
            not card_files(p / "card") for p in self.bus.glob("port-*") if p.is_dir()
        )


def fork_daemon(log: Path) -> int:
    """`station run --config CONFIG` in a child: the same code path as `python -m station run`.

    Its output reaches `log` (on the shared folder, written through) through a pipe, each
    line stamped with the seconds since the fork, so that a log shows where the time
    went and what the daemon was doing when the power went.
    """
    read_end, write_end = os.pipe()
    forked = time.monotonic()
    pid = os.fork()
    if pid:
        os.close(write_end)
        threading.Thread(target=_copy_log, args=(read_end, log, forked), daemon=True).start()
        return pid
    code = 1
    try:
        os.close(read_end)
        os.setsid()
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        os.close(write_end)
        sys.stdin = open(os.devnull)  # noqa: SIM115 - the child's whole life
        import runpy

        sys.argv = ["station", "run", "--config", str(CONFIG)]
        try:
            runpy.run_module("station", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _copy_log(fd: int, log: Path, since: float) -> None:
    with open(fd, "rb", buffering=0) as src, open(log, "ab", buffering=0) as out:
        pending = b""
        while chunk := src.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            stamp = f"{time.monotonic() - since:7.2f} ".encode()
            if lines:
                out.write(b"".join(stamp + line + b"\n" for line in lines))
        if pending:
            out.write(pending + b"\n")


def api(plan: dict[str, Any], path: str) -> Any:
    req = urllib.request.Request(
        f"http://127.0.0.1:{plan['web_port']}{path}",
        headers={"Authorization": f"Bearer {plan['token']}"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def healthy(plan: dict[str, Any]) -> bool:
    try:
        return api(plan, "/api/v1/health").get("status") == "ok"
    except (OSError, ValueError):
        return False


def cycle(share: Path, plan: dict[str, Any], go: dict[str, Any]) -> None:
    seed_machine(go)
    share.mkdir(exist_ok=True)
    run("mount", "-t", "9p", "-o", SHARE_OPTS, "hil", str(share))  # no cache: written through
    n = int(go["cycle"])
    mount_disks(plan)
    CONFIG.parent.mkdir(parents=True, exist_ok=True)
    CONFIG.write_bytes((share / "station.toml").read_bytes())
    cards = Cards(Path(plan["cards_root"]), int(plan["ports"]))
    for move in cards.rotate():
        say(move)
    log = share / "logs" / f"daemon-{n:03d}.log"
    log.parent.mkdir(exist_ok=True)
    pid = fork_daemon(log)
    say(f"cycle {n}: daemon {pid} started")
    if not go.get("final"):
        # until the power goes: keep docking, as officers do, and say when it answers
        up = False
        while True:
            time.sleep(1.0)
            for move in cards.rotate():
                say(move)
            if not up and healthy(plan):
                up = True
                say(f"cycle {n}: daemon healthy")
            if os.waitpid(pid, os.WNOHANG)[0]:
                say(f"cycle {n}: the daemon exited on its own")
                while True:
                    time.sleep(60)
    final(share, plan, pid, cards, n)


def final(share: Path, plan: dict[str, Any], pid: int, cards: Cards, n: int) -> None:
    """Collect everything still on the cards, stop the daemon cleanly, check, report."""
    started = time.monotonic()
    deadline = started + float(plan["drain_timeout_s"])
    result: dict[str, Any] = {"cycle": n}
    idle_since = None
    up_at = None
    while time.monotonic() < deadline:
        time.sleep(1.0)
        if os.waitpid(pid, os.WNOHANG)[0]:
            result["error"] = "the daemon exited during the final collection"
            break
        for move in cards.rotate():
            say(move)
        if up_at is None:
            if not healthy(plan):
                continue
            up_at = time.monotonic() - started
            say(f"cycle {n}: daemon healthy")
        slots = api(plan, "/api/v1/status")["slots"]
        busy = [s["port"] for s in slots if s["state"] not in ("complete", "empty", "error")]
        if cards.all_empty() and not busy:
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since >= float(plan["settle_s"]):
                break  # a retention sweep has had time to run
        else:
            idle_since = None
    else:
        result["error"] = "the final collection did not finish in time"
    result["final_slots"] = api(plan, "/api/v1/status")["slots"] if healthy(plan) else None
    result["drain_s"] = round(time.monotonic() - started, 1)
    result["healthy_after_s"] = up_at
    os.kill(pid, signal.SIGTERM)
    t = time.monotonic()
    status = None
    while time.monotonic() - t < 90:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(st)
            break
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    result["daemon_exit"] = status
    say(f"cycle {n}: daemon stopped ({status}); checking")
    manifest = json.loads((share / "manifest.json").read_text("utf-8"))
    result |= check(plan, manifest)
    (share / "report.json").write_text(json.dumps(result, indent=1, default=str), "utf-8")
    os.sync()
    for where in plan["disks"].values():
        subprocess.run(["umount", where], check=False)
    say("report written")


# --- the invariants -----------------------------------------------------------------------


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def parse_time(v: Any) -> dt.datetime | None:
    if v is None:
        return None
    t = dt.datetime.fromisoformat(str(v))
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t


def check(plan: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    """Every source file against the cards, the catalog and the store disks."""
    sources = {(f["serial"], f["path"]): f for f in manifest["files"]}
    # what is left on the cards, wherever the recorder is now (docked, spare, put away)
    root = Path(plan["cards_root"])
    on_card: dict[tuple[str, str], str] = {}
    for folder in [*root.glob("bus/port-*"), *root.glob("spare/*"), *root.glob("done/*")]:
        serial = json.loads((folder / "recorder.json").read_text("utf-8"))["serial"]
        for rel, p in card_files(folder / "card").items():
            on_card[(serial, rel)] = sha256(p)
    con = sqlite3.connect(f"file:{plan['catalog']}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT f.id, f.card_path, f.disk, f.rel_path, f.size, f.sha256, o.officer_no, "
            "r.serial, f.level, f.legal_hold, f.important, f.collected_at, f.deleted_at, "
            "f.deleted_by, f.delete_reason FROM files f JOIN officers o ON o.id = f.officer_id "
            "JOIN recorders r ON r.id = f.recorder_id"
        ).fetchall()
        log = con.execute(
            "SELECT id, kind, file_id, message FROM events "
            "WHERE kind IN ('file_stored', 'file_adopted', 'card_file_deleted') ORDER BY id"
        ).fetchall()
        kinds = dict(con.execute("SELECT kind, count(*) FROM events GROUP BY kind").fetchall())
        jobs = dict(
            con.execute("SELECT state, count(*) FROM ingest_jobs GROUP BY state").fetchall()
        )
        unfinished = con.execute(
            "SELECT j.id, r.serial, j.card_path, j.state, j.file_id FROM ingest_jobs j "
            "JOIN recorders r ON r.id = j.recorder_id WHERE j.state NOT IN ('cleared', 'abandoned')"
        ).fetchall()
    finally:
        con.close()
    days = int(plan["retention_days"])
    out: dict[str, list[str]] = {
        k: []
        for k in (
            "lost",
            "duplicated",
            "corrupted",
            "early_wipes",
            "sidecar_mismatch",
            "rows_without_file",
            "files_without_row",
            "staging_left",
            "wrongly_deleted",
            "deleted_file_left",
            "left_on_card",
            "card_changed",
            "unknown_rows",
            "deletion_unlogged",
        )
    }
    live: dict[tuple[str, str], list[tuple]] = {}
    deleted: dict[tuple[str, str], list[tuple]] = {}
    stored_paths: set[str] = set()
    good_copy: set[tuple[str, str]] = set()
    for row in rows:
        (fid, card_path, disk, rel, size, digest, officer_no, serial, level, hold, important) = row[
            :11
        ]
        collected_at, deleted_at, deleted_by, reason = row[11:]
        key = (serial, bytes(card_path).decode("utf-8", "surrogateescape"))
        src = sources.get(key)
        path = Path(disk) / rel
        if src is None:
            out["unknown_rows"].append(f"file {fid}: {key} is no source file")
        if deleted_at is not None:
            deleted.setdefault(key, []).append(row)
            protected = bool(important) or level in ("important", "evidence") or bool(hold)
            expired = parse_time(collected_at) + dt.timedelta(days=days) <= parse_time(deleted_at)
            if deleted_by != "retention" or protected or not (expired or "high-water" in reason):
                out["wrongly_deleted"].append(
                    f"file {fid} {key}: by {deleted_by} ({reason}); protected={protected} "
                    f"collected {collected_at} deleted {deleted_at}"
                )
            if path.exists():
                out["deleted_file_left"].append(f"file {fid}: {path}")
            continue
        live.setdefault(key, []).append(row)
        stored_paths.add(str(path))
        if not path.exists():
            out["rows_without_file"].append(f"file {fid} {key}: {path}")
            continue
        actual = sha256(path)
        if actual != digest or (src and (digest != src["sha256"] or size != src["size"])):
            out["corrupted"].append(
                f"file {fid} {key}: row {digest[:12]} file {actual[:12]} "
                f"source {src['sha256'][:12] if src else None}"
            )
        elif src:
            good_copy.add(key)
        if src and officer_no != src["officer_no"]:
            out["corrupted"].append(
                f"file {fid} {key}: officer {officer_no} != {src['officer_no']}"
            )
        try:
            sc = json.loads((Path(disk) / ".meta" / f"{rel}.json").read_text("utf-8"))
        except (OSError, ValueError) as e:
            out["sidecar_mismatch"].append(f"file {fid} {path}: {type(e).__name__}: {e}")
        else:
            want = (digest, officer_no, serial, level, hold, None)
            got = tuple(
                sc.get(k)
                for k in ("sha256", "officer_no", "serial", "level", "legal_hold", "deleted_at")
            )
            if got != want:
                out["sidecar_mismatch"].append(f"file {fid} {path}: sidecar {got} != row {want}")
    by_digest: dict[tuple[str, str, str], int] = {}
    for key, found in live.items():
        for row in found:
            k3 = (*key, row[5])
            by_digest[k3] = by_digest.get(k3, 0) + 1
        if len(found) > 1:
            ids = [r[0] for r in found]
            out["duplicated"].append(f"{key} x{len(found)} (files {ids})")
    committed: set[int] = set()
    logged_deletions = {file_id for _id, kind, file_id, _m in log if kind == "card_file_deleted"}
    for ev_id, kind, file_id, message in log:
        if kind != "card_file_deleted":
            committed.add(file_id)
        elif file_id not in committed:
            out["early_wipes"].append(
                f"event {ev_id}: {message} (file {file_id}) before its commit"
            )
    retained = 0
    for key, src in sources.items():
        card_sha = on_card.get(key)
        if card_sha is not None:
            out["left_on_card"].append(f"{key}")
            if card_sha != src["sha256"]:
                out["card_changed"].append(f"{key}: card {card_sha[:12]} != {src['sha256'][:12]}")
            else:
                continue
        if key in good_copy:
            if not any(r[0] in logged_deletions for r in live[key]):
                ids = [r[0] for r in live[key]]
                out["deletion_unlogged"].append(f"{key} (file {ids}): no card_file_deleted event")
            continue
        gone = [
            r
            for r in deleted.get(key, [])
            if r[5] == src["sha256"]
            and not any(w.startswith(f"file {r[0]} ") for w in out["wrongly_deleted"])
        ]
        if gone and key not in live:
            retained += 1
            if not any(r[0] in logged_deletions for r in gone):
                ids = [r[0] for r in gone]
                out["deletion_unlogged"].append(f"{key} (file {ids}): no card_file_deleted event")
            continue
        why = "stored copy bad" if key in live else "no live row"
        out["lost"].append(f"{key}: not on its card and {why}")
        if card_sha is None:
            out["early_wipes"].append(f"{key}: deleted from its card, not stored")
    disks = [Path(d) for d in plan["store_disks"]]
    quarantined = []
    for disk in disks:
        for dirpath, dirnames, names in os.walk(disk):
            if Path(dirpath) == disk:
                dirnames[:] = [d for d in dirnames if d not in (".staging", ".meta", ".quarantine")]
                # the station's own files at a disk's root (identity marker, log anchor)
                names = [n for n in names if not n.startswith(".station-")]
            for name in names:
                p = os.path.join(dirpath, name)
                if p not in stored_paths:
                    out["files_without_row"].append(p)
        for dirpath, _dirnames, names in os.walk(disk / ".quarantine"):
            for name in names:
                p = Path(dirpath) / name
                digest = sha256(p)
                match = [k for k, s in sources.items() if s["sha256"] == digest]
                safe = [k for k in match if k in good_copy or on_card.get(k) == digest]
                quarantined.append(
                    {"path": str(p), "sha256": digest, "source": match, "also_kept": bool(safe)}
                )
        staging = disk / ".staging"
        if staging.is_dir():
            out["staging_left"] += [str(p) for p in staging.iterdir()]
    return {
        "files": len(sources),
        "stored": len(good_copy),
        "retention_deleted": retained,
        "counts": {k: len(v) for k, v in out.items()},
        "problems": {k: v[:50] for k, v in out.items() if v},
        "quarantined": quarantined,
        "events": kinds,
        "jobs": jobs,
        "jobs_not_cleared": [
            f"job {j} {serial} {bytes(path).decode('utf-8', 'replace')}: {state} (file {fid})"
            for j, serial, path, state, fid in unfinished
        ][:50],
    }


def main() -> int:
    share = Path(sys.argv[1] if len(sys.argv) > 1 else "/hil")
    try:
        plan = prepare(share)
    except Exception:
        traceback.print_exc()
        say("prepare failed")
        return 1
    say("snapshot-ready")
    # after the snapshot: each restored machine reads its own GO line from the console
    while True:
        line = sys.stdin.readline()
        if not line:
            time.sleep(0.5)
            continue
        if not line.startswith("GO "):
            continue
        try:
            cycle(share, plan, json.loads(line[3:]))
        except Exception:
            traceback.print_exc()
            say("cycle failed")
        break
    os.sync()
    say("done")
    return 0


if __name__ == "__main__":
    code = main()
    if os.getpid() == 1:  # PID 1 must not exit: power off instead
        with contextlib.suppress(OSError):
            Path("/proc/sysrq-trigger").write_text("o")
        time.sleep(30)
    sys.exit(code)
