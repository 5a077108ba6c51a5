"""Boot the HIL guest under QEMU and talk to it: its console, QMP, the shared folder.

The guest (hil_image.py) shares three folders over 9p: the repository (read
only), the host venv's site-packages (read only: the station's Python
dependencies, the same Debian Python 3.11 on both sides), and a run folder
where the host puts `plan.json` and the guest writes its results. Card images
are virtio drives. A foreign USB stick is hot-plugged on QEMU's xhci over QMP.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sysconfig
import threading
import time
from pathlib import Path
from typing import Any

from hil_image import GuestImage

REPO = Path(__file__).resolve().parents[2]
XHCI_PCI_SLOT = 5  # 0000:00:05.0: keeps the stick's udev ID_PATH fixed
STICK_PORT = 1
# pci=noacpi: PCI interrupts routed by the BIOS tables, not the ACPI interpreter, which
# costs seconds per device under TCG (acpi=off would also lose the HPET, and with it a
# calibrated TSC: the guest clock then runs slow). No crypto self-tests, no speculation
# mitigations: this guest only runs our tests.
KERNEL_ARGS = (
    "console=ttyS0 quiet loglevel=4 panic=-1 rdinit=/init tsc=reliable "
    "mitigations=off cryptomgr.notests pci=noacpi"
)


def kvm_usable() -> bool:
    """KVM only where the CPU shows hardware virtualisation (HIL.md: else TCG)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    flags = Path("/proc/cpuinfo").read_text(errors="replace")
    return bool(re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.M))


def site_packages() -> Path:
    """The site-packages of the Python running the tests (the project's venv)."""
    return Path(sysconfig.get_paths()["purelib"])


class Vm:
    """One QEMU guest: started with `start`, ended when it powers off (or `kill`)."""

    def __init__(
        self,
        image: GuestImage,
        run_dir: Path,
        drives: dict[str, Path],
        memory_mb: int = 2048,
        drive_options: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        console_input: bool = False,
    ) -> None:
        self.image = image
        self.run_dir = run_dir
        self.drives = drives
        self.drive_options = drive_options or {}  # serial -> extra -drive options
        self.memory_mb = memory_mb
        self.extra_args = extra_args or []  # e.g. -incoming (test_powercut.py)
        self.console_input = console_input  # keep the console's input open: `send_console`
        self.qmp_path = run_dir / "qmp.sock"
        self.console_path = run_dir / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: queue.Queue[str] = queue.Queue()
        self.started_at = 0.0
        self._reader: threading.Thread | None = None
        self._qmp: socket.socket | None = None
        self._qmp_buf = b""

    def command(self) -> list[str]:
        accel = (
            ["-accel", "kvm", "-cpu", "host"] if kvm_usable() else ["-accel", "tcg,thread=multi"]
        )
        if accel[1] != "kvm":
            accel += ["-cpu", "max"]
        cmd = [
            shutil.which("qemu-system-x86_64") or "qemu-system-x86_64",
            *accel,
            "-m",
            str(self.memory_mb),
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
            "-kernel",
            str(self.image.vmlinux),
            "-initrd",
            str(self.image.initrd),
            "-append",
            KERNEL_ARGS,
            "-qmp",
            f"unix:{self.qmp_path},server=on,wait=off",
            "-device",
            f"qemu-xhci,id=xhci,addr={XHCI_PCI_SLOT:#x}",
        ]
        shares = (
            ("repo", REPO, True),
            ("site", site_packages(), True),
            ("hil", self.run_dir, False),
        )
        for tag, path, readonly in shares:
            spec = f"local,path={path},mount_tag={tag},security_model=none,id={tag}"
            cmd += ["-virtfs", spec + (",readonly=on" if readonly else "")]
        for serial, drive in self.drives.items():  # the guest finds them by serial
            cmd += [
                "-drive",
                f"file={drive},if=none,format=raw,cache=writeback,id={serial}"
                + (f",{self.drive_options[serial]}" if serial in self.drive_options else ""),
                "-device",
                f"virtio-blk-pci,drive={serial},serial={serial}",
            ]
        return cmd + self.extra_args

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.qmp_path.unlink(missing_ok=True)
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.PIPE if self.console_input else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._reader = threading.Thread(target=self._read_console, daemon=True)
        self._reader.start()

    def _read_console(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with open(self.console_path, "w", encoding="utf-8", errors="replace") as log:
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                log.write(f"[{time.monotonic() - self.started_at:7.2f}] {line}\n")
                log.flush()
                self.lines.put(line)
        self.lines.put("")  # end of console: the VM is gone

    def wait_line(self, pattern: str, timeout: float) -> re.Match[str]:
        """The next console line matching `pattern` (a regex)."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no console line /{pattern}/ in {timeout:.0f} s")
            try:
                line = self.lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if line == "" and self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the VM ended before /{pattern}/")
            if m := rx.search(line):
                return m

    def send_console(self, line: str) -> None:
        """Type one line on the guest's serial console (needs `console_input`)."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        finally:
            if self._reader is not None:
                self._reader.join(5)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None

    def console(self, tail: int = 12000) -> str:
        try:
            return self.console_path.read_text(errors="replace")[-tail:]
        except FileNotFoundError:
            return ""

    # --- QMP --------------------------------------------------------------------------

    def qmp(self, execute: str, **arguments: Any) -> Any:
        """One QMP command; its `return` value, or RuntimeError with QMP's error."""
        if self._qmp is None:
            self._qmp = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._qmp.settimeout(30)
            self._qmp.connect(str(self.qmp_path))
            self._qmp_read()  # the greeting
            self._qmp_send("qmp_capabilities")
        return self._qmp_send(execute, **arguments)

    def _qmp_send(self, execute: str, **arguments: Any) -> Any:
        assert self._qmp is not None
        msg: dict[str, Any] = {"execute": execute}
        if arguments:
            msg["arguments"] = arguments
        self._qmp.sendall(json.dumps(msg).encode() + b"\r\n")
        while True:
            reply = self._qmp_read()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise RuntimeError(f"QMP {execute}: {reply['error']}")
            # an asynchronous event: not ours

    def _qmp_read(self) -> dict[str, Any]:
        assert self._qmp is not None
        while b"\n" not in self._qmp_buf:
            chunk = self._qmp.recv(65536)
            if not chunk:
                raise RuntimeError("QMP connection closed")
            self._qmp_buf += chunk
        line, self._qmp_buf = self._qmp_buf.split(b"\n", 1)
        return json.loads(line)

    def plug_stick(self, image: Path, serial: str) -> None:
        """Hot-plug QEMU's usb-storage (46f4:0001) with `image` on the xhci."""
        self.qmp(
            "blockdev-add",
            **{
                "node-name": "stick0",
                "driver": "raw",
                "file": {"driver": "file", "filename": str(image)},
            },
        )
        self.qmp(
            "device_add",
            driver="usb-storage",
            id="stick",
            bus="xhci.0",
            port=str(STICK_PORT),
            drive="stick0",
            serial=serial,
            removable=True,
        )

    def unplug_stick(self) -> None:
        self.qmp("device_del", id="stick")


def smoke(run_dir: Path) -> dict[str, Any]:
    """One recorder driven by hand in the guest (no daemon): gadget, udev, pyusb, mount."""
    from hil_cards import build_card, recorder_files
    from hil_image import ensure_image

    run_dir.mkdir(parents=True, exist_ok=True)
    build_card(run_dir / "card1.img", recorder_files("100001", "A000001", "20261120", 100))
    recorder = {
        "name": "rec1",
        "udc": "dummy_udc.0",
        "card": "/dev/vda",
        "serial": "A000001",
        "officer_no": "100001",
        "officer_name": "张三",
        "password": "000000",
        "clock_offset_s": -3600.0,
    }
    plan = {
        "mode": "smoke",
        "ports": 1,
        "port_map": {"1": "platform-dummy_hcd.0-usb-0:1"},
        "recorders": [recorder | {"vendor_id": 0x1209, "product_id": 7, "disk_product_id": 8}],
    }
    (run_dir / "plan.json").write_text(json.dumps(plan, ensure_ascii=False), "utf-8")
    vm = Vm(ensure_image(), run_dir, {"card1": run_dir / "card1.img"})
    vm.start()
    try:
        vm.wait_line(r"HIL: scenario exit", 300)
        vm.wait_exit(60)
    finally:
        vm.kill()
    return json.loads((run_dir / "result.json").read_text("utf-8"))


if __name__ == "__main__":
    import sys

    out = smoke(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/hil-smoke"))
    out.pop("udev", None)
    print(json.dumps(out, indent=1, ensure_ascii=False))
    sys.exit(0 if out.get("ok") else 1)
