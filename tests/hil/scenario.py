"""The HIL guest's test driver: gadget recorders, the real daemon, and what happened.

Runs inside the guest (guest_init.sh), reads /hil/plan.json written by the
host test, and writes /hil/result.json. Console lines starting with "HIL:"
are the host's view of progress; "HIL-ASK: <what>" asks the host to act (plug
the foreign stick over QMP) and waits for /hil/<what>.done.
"""

from __future__ import annotations

import contextlib
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
import time
import traceback
import urllib.request
from pathlib import Path
from typing import Any

import pyudev

HERE = Path(__file__).resolve().parent
T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"HIL: [{time.monotonic() - T0:6.2f}] {msg}", flush=True)


def wait_for(pred: Any, timeout: float, what: str, poll: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def wait_udev() -> None:
    """guest_init.sh starts us before udev and the USB modules are ready."""
    wait_for(Path("/run/hil/udev-ready").exists, 180, "udev and the USB modules", poll=0.1)


class Gadget:
    """A gadget_recorder.py process and its FIFO."""

    def __init__(self, out: Path, spec: dict[str, Any]) -> None:
        self.name = spec["name"]
        self.state_file = out / f"{self.name}.json"
        self.control = Path("/run/hil") / f"{self.name}.ctl"
        self.control.parent.mkdir(parents=True, exist_ok=True)
        spec = {**spec, "state_file": str(self.state_file), "control": str(self.control)}
        spec_file = Path("/run/hil") / f"{self.name}.spec.json"
        spec_file.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        self.state_file.unlink(missing_ok=True)
        log = open(out / f"{self.name}.log", "wb")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "gadget_recorder.py"), str(spec_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._started, 120, f"{self.name} to start", poll=0.1)

    def _started(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
        return self.state_file.exists()

    def state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def send(self, command: str) -> None:
        fd = os.open(self.control, os.O_WRONLY)
        try:
            os.write(fd, command.encode() + b"\n")
        finally:
            os.close(fd)

    def wait_mode(self, mode: str, timeout: float = 30) -> None:
        wait_for(lambda: self.state().get("mode") == mode, timeout, f"{self.name} {mode}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.send("quit")
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def usb_devices(ctx: pyudev.Context) -> list[pyudev.Device]:
    return list(ctx.list_devices(subsystem="usb", DEVTYPE="usb_device"))


def below(ctx: pyudev.Context, sys_path: str, subsystem: str) -> list[pyudev.Device]:
    prefix = sys_path.rstrip("/") + "/"
    return [d for d in ctx.list_devices(subsystem=subsystem) if d.sys_path.startswith(prefix)]


# --- smoke: one recorder, the driver by hand ------------------------------------------


def smoke(out: Path, plan: dict[str, Any]) -> dict[str, Any]:
    """Stage 3/4: pyudev sees the gadget, the pyusb driver identifies it, the disk mounts."""
    from station.devices.udev import UdevBus
    from station.drivers.usb_vendor import UsbVendorConfig, UsbVendorDriver

    result: dict[str, Any] = {"timings": {}}
    t = result["timings"]
    spec = plan["recorders"][0]
    wait_udev()
    ctx = pyudev.Context()
    gadget = Gadget(out, spec)
    started = time.monotonic()
    gadget.send("dock")

    def vendor_device() -> pyudev.Device | None:
        for d in usb_devices(ctx):
            if d.properties.get("ID_VENDOR_ID") == f"{spec['vendor_id']:04x}":
                return d
        return None

    dev = wait_for(vendor_device, 30, "the gadget in udev")
    t["dock_to_udev_s"] = time.monotonic() - started
    result["udev"] = {k: dev.properties.get(k) for k in dev.properties}
    say(f"gadget at {dev.sys_name} ID_PATH={dev.properties.get('ID_PATH')}")
    bus = UdevBus({1: plan["port_map"]["1"]})
    snap = bus.scan()
    result["scan"] = {str(p): d.properties | {"key": d.key} for p, d in snap.items()}
    docked = snap[1]
    driver = UsbVendorDriver(
        UsbVendorConfig(usb_ids=[f"{spec['vendor_id']:04x}:{spec['product_id']:04x}"])
    )
    result["match"] = driver.match(docked)
    started = time.monotonic()
    with driver.open(docked, ["123456", spec["password"]]) as rec:
        t["open_s"] = time.monotonic() - started
        started = time.monotonic()
        result["id_code"] = rec.id_code()
        info = rec.officer_info()
        result["officer"] = info.__dict__
        result["battery"] = rec.battery_percent()
        t["identify_s"] = time.monotonic() - started
        started = time.monotonic()
        import datetime as dt

        result["drift_s"] = rec.set_clock(dt.datetime.now())
        t["set_clock_s"] = time.monotonic() - started
        started = time.monotonic()
        rec.enter_mass_storage()
        t["set_msdc_s"] = time.monotonic() - started

        def card_node() -> str | None:
            for d in usb_devices(ctx):
                if d.sys_path == docked.path or d.sys_name == docked.properties["USB_PORT"]:
                    for b in below(ctx, d.sys_path, "block"):
                        if b.properties.get("ID_FS_TYPE") in ("vfat", "exfat"):
                            return b.device_node
            return None

        node = wait_for(card_node, 30, "the card's block device")
        t["switch_to_block_s"] = time.monotonic() - started
        result["alive_after_switch"] = rec.alive()
    mnt = Path("/run/hil/mnt")
    mnt.mkdir(parents=True, exist_ok=True)
    opts = "nosuid,nodev,noexec,utf8,codepage=936,shortname=mixed,flush,ro"
    subprocess.run(["mount", "-t", "vfat", "-o", opts, node, str(mnt)], check=True)
    t["switch_to_mounted_s"] = time.monotonic() - started
    files = []
    for root, _dirs, names in os.walk(os.fsencode(mnt)):
        for n in names:
            p = os.path.join(root, n)
            files.append([os.fsdecode(os.path.relpath(p, os.fsencode(mnt))), os.path.getsize(p)])
    result["card_files"] = sorted(files)
    subprocess.run(["umount", str(mnt)], check=True)
    started = time.monotonic()
    gadget.send("unplug")
    wait_for(lambda: not os.path.exists(docked.path), 30, "the port to empty")
    t["unplug_to_gone_s"] = time.monotonic() - started
    gadget.stop()
    result["gadget"] = gadget.state()
    return result


# --- full: the real daemon against four recorders and a foreign stick -----------------


def loopback_up() -> None:
    """Bring `lo` up (the guest has no network setup): the daemon serves HTTP on it."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH", fcntl.ioctl(s, siocgifflags, ifr)[:18])[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH14s", b"lo", flags | iff_up, b""))


def disk_by_serial(serial: str) -> str:
    """/dev/vdX of the virtio drive the host gave this serial."""
    for p in Path("/sys/block").glob("vd*"):
        with contextlib.suppress(OSError):
            if (p / "serial").read_text().strip() == serial:
                return f"/dev/{p.name}"
    raise RuntimeError(f"no virtio drive with serial {serial}")


def mounted_sources() -> set[str]:
    return {line.split()[0] for line in Path("/proc/mounts").read_text().splitlines()}


def stick_nodes() -> list[str]:
    """Block devices of the foreign stick: SCSI disks behind QEMU's xhci."""
    out = []
    for p in Path("/sys/block").glob("sd*"):
        if XHCI_PCI in os.path.realpath(p):
            out.append(f"/dev/{p.name}")
    return out


XHCI_PCI = "0000:00:05.0"


class Daemon:
    """`python3 -m station run` in the background, and its HTTP API."""

    def __init__(self, out: Path, config: Path, port: int, token: str, env: dict[str, str]) -> None:
        self.port, self.token = port, token
        self.log = out / "daemon.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "station", "run", "--config", str(config)],
            env={**os.environ, **env},
            stdout=open(self.log, "wb"),  # noqa: SIM115 - lives with the process
            stderr=subprocess.STDOUT,
            cwd=os.environ.get("PYTHONPATH", "/repo").split(":")[0],
        )

    def api(self, path: str) -> Any:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=20) as r:
            return json.load(r)

    def healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the daemon exited with {self.proc.returncode}")
        try:
            return self.api("/api/v1/health").get("status") == "ok"
        except (OSError, ValueError):
            return False

    def slots(self) -> dict[int, dict[str, Any]]:
        return {s["port"]: s for s in self.api("/api/v1/status")["slots"]}

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode


class Timeline:
    """Slot states as the API shows them, with guest times: the run's story."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.last: dict[int, str] = {}

    def update(self, slots: dict[int, dict[str, Any]]) -> None:
        for port, slot in slots.items():
            state = slot["state"]
            if self.last.get(port) != state:
                self.last[port] = state
                self.events.append(
                    {
                        "t": round(time.monotonic() - T0, 2),
                        "port": port,
                        "state": state,
                        "error": slot.get("error"),
                        "bytes_done": slot.get("bytes_done"),
                    }
                )
                say(f"port {port}: {state}" + (f" ({slot['error']})" if slot.get("error") else ""))

    def first(self, port: int, state: str, after: float = 0.0) -> float | None:
        for e in self.events:
            if e["port"] == port and e["state"] == state and e["t"] >= after:
                return e["t"]
        return None


def ask_host(out: Path, what: str, timeout: float = 60) -> None:
    """Have the host do something (over QMP) and wait until it says it is done."""
    done = out / f"{what}.done"
    done.unlink(missing_ok=True)
    print(f"HIL-ASK: {what}", flush=True)
    wait_for(done.exists, timeout, f"the host to do {what}", poll=0.1)


def big_job_offset(db: Path, card_path: bytes) -> tuple[int, str] | None:
    """The durable offset and state of the big file's transfer, if it started."""
    if not db.exists():
        return None
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            row = con.execute(
                "SELECT durable_offset, state FROM ingest_jobs WHERE card_path = ? "
                "ORDER BY id DESC LIMIT 1",
                (card_path,),
            ).fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    return (int(row[0]), str(row[1])) if row else None


def store_listing(disks: list[str]) -> dict[str, list[Any]]:
    """Every file under the store disks: path -> [size, sha256]."""
    out = {}
    for disk in disks:
        for root, _dirs, files in os.walk(disk):
            for name in files:
                p = os.path.join(root, name)
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                out[p] = [os.path.getsize(p), h.hexdigest()]
    return out


def catalog_dump(db: Path) -> dict[str, Any]:
    """The catalog rows the host checks."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    con.row_factory = sqlite3.Row
    try:
        files = [
            dict(r) | {"card_path": bytes(r["card_path"]).hex()}
            for r in con.execute(
                "SELECT f.card_path, f.name, f.disk, f.rel_path, f.size, f.sha256, f.important, "
                "f.kind, f.recorded_at, f.deleted_at, f.session_id, o.officer_no, r.serial "
                "FROM files f JOIN officers o ON o.id = f.officer_id "
                "JOIN recorders r ON r.id = f.recorder_id"
            )
        ]
        sessions = [
            dict(r)
            for r in con.execute(
                "SELECT s.id, r.serial, s.port, s.state, s.started_at, s.ended_at, s.files_total, "
                "s.files_done, s.bytes_total, s.bytes_done, s.bytes_read, s.clock_drift_s, "
                "s.battery_percent, s.error FROM collection_sessions s "
                "JOIN recorders r ON r.id = s.recorder_id ORDER BY s.id"
            )
        ]
        recorders = [
            dict(r)
            for r in con.execute(
                "SELECT r.serial, r.id_code, r.status, r.clock_drift_s, r.battery_percent, "
                "r.last_port, o.officer_no FROM recorders r "
                "LEFT JOIN officers o ON o.id = r.officer_id"
            )
        ]
        jobs = [
            dict(r) | {"card_path": bytes(r["card_path"]).hex()}
            for r in con.execute(
                "SELECT j.id, r.serial, j.card_path, j.size, j.state, j.durable_offset "
                "FROM ingest_jobs j JOIN recorders r ON r.id = j.recorder_id ORDER BY j.id"
            )
        ]
        events = [
            dict(r)
            for r in con.execute(
                "SELECT id, at, kind, port, serial, officer_no, message, data FROM events "
                "ORDER BY id"
            )
        ]
    finally:
        con.close()
    return {
        "files": files,
        "sessions": sessions,
        "recorders": recorders,
        "jobs": jobs,
        "events": events,
    }


def card_listing(node: str, where: Path) -> list[list[Any]]:
    """Files left on a card image, read with the kernel's vfat (read-only)."""
    where.mkdir(parents=True, exist_ok=True)
    opts = "ro,nosuid,nodev,noexec,utf8,codepage=936"
    subprocess.run(["mount", "-t", "vfat", "-o", opts, node, str(where)], check=True)
    try:
        files = []
        for root, _dirs, names in os.walk(os.fsencode(where)):
            for n in names:
                p = os.path.join(root, n)
                rel = os.path.relpath(p, os.fsencode(where))
                files.append([os.fsdecode(rel), os.path.getsize(p)])
        return sorted(files)
    finally:
        subprocess.run(["umount", str(where)], check=False)


def full(out: Path, plan: dict[str, Any]) -> dict[str, Any]:
    """Stage 5: the real daemon, four recorders at once, a resume, a foreign stick."""
    result: dict[str, Any] = {"timings": {}, "checks": {}}
    t = result["timings"]
    checks = result["checks"]
    loopback_up()
    disks = plan["store_disks"]
    for disk in disks:
        Path(disk).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", disk], check=True)
    Path(plan["database"]).parent.mkdir(parents=True, exist_ok=True)
    daemon = Daemon(
        out, out / "station.toml", plan["web_port"], plan["token"], plan.get("daemon_env", {})
    )
    say("daemon starting")
    wait_udev()
    gadgets = []
    for spec in plan["recorders"]:
        own = {k: v for k, v in spec.items() if k != "card_serial"}
        gadgets.append(Gadget(out, own | {"card": disk_by_serial(spec["card_serial"])}))
    say("gadgets ready (unplugged)")
    started = time.monotonic()
    wait_for(daemon.healthy, 240, "the daemon to answer /api/v1/health", poll=0.5)
    t["daemon_start_s"] = round(time.monotonic() - started + (started - T0), 2)
    say("daemon up")
    timeline = Timeline()
    timeline.update(daemon.slots())

    stick_port = plan["stick_port"]
    ask_host(out, "stick-in")
    t_stick = time.monotonic() - T0
    wait_for(stick_nodes, 60, "the foreign stick's disk", poll=0.2)
    checks["stick_nodes"] = stick_nodes()

    # four recorders docked at once
    t_dock = time.monotonic() - T0
    for g in gadgets:
        g.send("dock")
    say("4 recorders docked")

    resume = plan["resume"]
    resume_port = resume["port"]
    resume_gadget = gadgets[resume_port - 1]
    big_path = resume["card_path"].encode()
    db = Path(plan["database"])
    phase = "wait-mid-file"
    checks["resume"] = {}
    stick_mounted = False
    deadline = time.monotonic() + plan.get("collect_timeout_s", 300)
    next_api = 0.0
    slots: dict[int, dict[str, Any]] = {}
    while True:
        # the API costs a Python request under emulation: while waiting for the
        # moment to pull the cable, watch the catalog closely and the API less
        if time.monotonic() >= next_api or phase != "wait-mid-file":
            slots = daemon.slots()
            timeline.update(slots)
            next_api = time.monotonic() + 1.0
        if any(n in mounted_sources() for n in stick_nodes()):
            stick_mounted = True
        if phase == "wait-mid-file":
            job = big_job_offset(db, big_path)
            if job and job[1] != "copying":
                phase = "missed"
                checks["resume"]["missed"] = f"the big file's transfer ended ({job[1]}) first"
            elif job and job[0] >= resume["unplug_after_bytes"]:
                resume_gadget.send("unplug")
                checks["resume"]["durable_offset_at_unplug"] = job[0]
                checks["resume"]["unplugged_at"] = round(time.monotonic() - T0, 2)
                say(f"port {resume_port}: unplugged mid-file at durable byte {job[0]}")
                phase = "unplugged"
        elif phase == "unplugged" and slots[resume_port]["state"] == "empty":
            checks["resume"]["empty_at"] = round(time.monotonic() - T0, 2)
            job = big_job_offset(db, big_path)
            checks["resume"]["offset_after_unplug"] = job[0] if job else None
            time.sleep(1.0)
            resume_gadget.send("dock")
            checks["resume"]["redocked_at"] = round(time.monotonic() - T0, 2)
            say(f"port {resume_port}: re-docked")
            phase = "redocked"
        done = all(slots[p]["state"] == "complete" for p in range(1, len(gadgets) + 1))
        if done and phase in ("redocked", "missed"):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"collection not complete: {slots}")
        time.sleep(0.1 if phase == "wait-mid-file" else 0.25)
    t["dock_to_all_complete_s"] = round(time.monotonic() - T0 - t_dock, 2)
    for port in range(1, len(gadgets) + 1):
        first_collecting = timeline.first(port, "collecting", t_dock)
        if first_collecting is not None:
            t[f"port{port}_dock_to_collecting_s"] = round(first_collecting - t_dock, 2)
        first_complete = timeline.first(port, "complete", t_dock)
        if first_complete is not None:
            t[f"port{port}_dock_to_complete_s"] = round(first_complete - t_dock, 2)

    # the foreign stick: seen on its port, left alone, and its removal noticed
    slots = daemon.slots()
    timeline.update(slots)
    checks["stick_slot"] = slots.get(stick_port)
    checks["stick_mounted"] = stick_mounted or any(n in mounted_sources() for n in stick_nodes())
    ask_host(out, "stick-out")
    wait_for(lambda: not stick_nodes(), 30, "the stick to go", poll=0.2)
    try:
        wait_for(lambda: daemon.slots()[stick_port]["state"] == "empty", 20, "port 5 empty", 0.25)
        checks["stick_slot_after_removal"] = "empty"
    except TimeoutError:
        checks["stick_slot_after_removal"] = daemon.slots()[stick_port]
    t["stick_plugged_at_s"] = round(t_stick, 2)

    result["final_slots"] = daemon.slots()
    result["timeline"] = timeline.events
    checks["card_mounts_left"] = [
        line for line in Path("/proc/mounts").read_text().splitlines() if "/run/station" in line
    ]
    started = time.monotonic()
    checks["daemon_exit"] = daemon.stop()
    t["daemon_stop_s"] = round(time.monotonic() - started, 2)
    say(f"daemon stopped ({checks['daemon_exit']})")

    for g in gadgets:
        g.stop()
    result["gadgets"] = {g.name: g.state() for g in gadgets}
    result["cards_left"] = {
        g.name: card_listing(disk_by_serial(spec["card_serial"]), Path("/run/hil/check") / g.name)
        for g, spec in zip(gadgets, plan["recorders"], strict=True)
    }
    result["catalog"] = catalog_dump(db)
    result["store"] = store_listing(disks)
    return result


def main() -> int:
    out = Path(sys.argv[1])
    plan = json.loads((out / "plan.json").read_text(encoding="utf-8"))
    result: dict[str, Any]
    try:
        result = {"smoke": smoke, "full": full}[plan.get("mode", "smoke")](out, plan)
        result["ok"] = True
    except Exception as e:
        traceback.print_exc()
        result = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
    result["guest_seconds"] = time.monotonic() - T0
    (out / "result.json").write_text(json.dumps(result, indent=1, ensure_ascii=False, default=str))
    subprocess.run(["dmesg"], stdout=open(out / "dmesg.txt", "wb"), check=False)  # noqa: SIM115
    say("done" if result.get("ok") else f"failed: {result.get('error')}")
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
