"""The host side of the power-cut tier: disk images, the saved guest, the cuts, the verdict.

Used by tests/hil/test_powercut.py (10 cuts) and bench/powercut.py (the soak). See
tests/hil/powercut.py for the guest side and docs/hil.md ("Tier 3") for the design.

- The **disks** are raw images made here with `mkfs.ext4` (default options): `cards`
  (populated with `mkfs.ext4 -d` from a folder of simulated recorders: `bus/port-N`
  docked, `spare/` docked later, and the manifest of every card file: path, size,
  SHA-256), `disk1` and `disk2` (the store; disk 1 smaller than the footage, so the
  store moves to disk 2 part-way), `catalog` (SQLite), and `code`, read-only: the
  station's packages compiled for `/pc/code` and the site-packages they import.
  All are virtio-blk drives with `cache=writeback`: what the guest flushed reaches the
  image file, what it had not is lost with the QEMU process.
- The **saved guest**: one boot imports what the daemon imports (most of a minute
  under TCG) and is saved with QMP `migrate`. Every cycle restores it in a new QEMU
  process on the same images, so a cycle costs seconds of restore and not a boot and a
  minute of imports; the daemon itself (`station run`) starts from scratch each time.
- A **cut** is SIGKILL of QEMU at a random moment, from `random.Random(seed)` (printed;
  `--seed` replays the choices, not the guest's timing): a share of the cuts during
  start-up and recovery (up to the last measured start-up time after the fork), the
  others up to `collect_cut_max_s` after the daemon first answered its health check,
  while it copies, verifies, commits and clears cards (and sweeps retention).
  The guest clock is put forward `clock_step_s` each cycle, so that footage collected
  in the first cycles passes its retention period (1 day) in the later ones and
  retention sweeps delete it while the cuts go on.
"""

from __future__ import annotations

import compileall
import json
import os
import random
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
from hil_image import GuestImage, ensure_image
from hil_vm import REPO, Vm

TOKEN = "pc-token-0123456789abcdef"
WEB_PORT = 8080
MB = 2**20
DISKS = {  # drive serial -> where the guest mounts it
    "cards": "/srv/cards",
    "disk1": "/srv/disk1",
    "disk2": "/srv/disk2",
    "catalog": "/var/lib/station",
}
EXTRA_PACKAGES = (
    "jinja2", "multipart", "python_multipart", "itsdangerous", "tomli_w", "yaml",
    "station.platform.secrets",  # imported by load_config only when a secret is sealed
    "cryptography.hazmat.primitives.ciphers.aead",
    "cryptography.hazmat.primitives.asymmetric.ed25519",
)  # fmt: skip


@dataclass
class Settings:
    """One power-cut run."""

    cuts: int = 10
    seed: int = 1
    ports: int = 3
    recorders: int = 0  # 0: ports + 1 per cut (fresh recorders to dock, so there is work)
    files: int = 4  # per recorder, besides its device log
    size_mb: float = 0.35  # about this much per video
    # A cut lands either during start-up and recovery (this share of the cuts: uniform
    # from 1 s to the previous cycle's start-up time), or while collecting: uniform in
    # [0, collect_cut_max_s] after the daemon first answered /api/v1/health.
    startup_share: float = 0.3
    collect_cut_max_s: float = 12.0
    retention_days: int = 1
    clock_step_s: float = 0.0  # 0: so that about the first third of the footage expires
    memory_mb: int = 1024
    drain_timeout_s: float = 420.0

    def __post_init__(self) -> None:
        if not self.recorders:
            self.recorders = self.ports + self.cuts
        if not self.clock_step_s:
            self.clock_step_s = self.retention_days * 86400 / max(1.0, self.cuts * 2 / 3)


@dataclass
class Cut:
    cycle: int
    after_s: float  # from the daemon's fork to the kill
    healthy: bool  # it had answered /api/v1/health by then
    log_tail: str  # the daemon's last log line before the cut
    collecting: bool = False  # it had begun copying, storing or clearing in this cycle
    step: str = ""  # what its last log line says it had just done

    @staticmethod
    def classify(line: str) -> str:
        for needle, step in (
            ("card_file_deleted", "card file deleted"),
            ("file_stored", "file committed"),
            ("resuming at byte", "resumed a copy"),
            ("recovery:", "recovery"),
            ("store_recovered", "recovery"),
            ("file_deleted", "retention deletion"),
            ("clock_set", "recorder identified"),
            ("recorder_", "recorder identified"),
            ("docked", "recorder docked"),
            ("alembic", "start-up"),
            ("disk", "start-up"),
            ("station_started", "start-up"),
        ):
            if needle in line:
                return step
        return "other" if line else "nothing logged"


@dataclass
class Outcome:
    settings: Settings
    dir: Path
    cuts: list[Cut] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    fsck: dict[str, str] = field(default_factory=dict)  # image -> e2fsck -fn complaint
    error: str | None = None

    @property
    def counts(self) -> dict[str, int]:
        c = self.report.get("counts", {})
        return {
            "cuts": len(self.cuts),
            "files": int(self.report.get("files", 0)),
            "lost": c.get("lost", 0),
            "duplicated": c.get("duplicated", 0),
            "corrupted": c.get("corrupted", 0) + c.get("sidecar_mismatch", 0),
            "early wipes": c.get("early_wipes", 0),
            "quarantined": len(self.report.get("quarantined", [])),
            "retention deleted": int(self.report.get("retention_deleted", 0)),
            "wrongly deleted": c.get("wrongly_deleted", 0),
        }

    @property
    def steps(self) -> dict[str, int]:
        """How many cuts came after each kind of step (the daemon's last log line)."""
        out: dict[str, int] = {}
        for c in self.cuts:
            out[c.step] = out.get(c.step, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def summary(self) -> str:
        s = self.settings
        figures = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        collecting = sum(c.collecting for c in self.cuts)
        return (
            f"power cuts (seed {s.seed}): {figures}; {collecting} cuts while collecting, "
            f"last steps {self.steps}; {self.timings.get('total_s', '?')} s"
        )

    def explain(self, tail: int = 4000) -> str:
        logs = sorted((self.dir / "logs").glob("daemon-*.log"))
        last = logs[-1].read_text(errors="replace")[-tail:] if logs else ""
        consoles = sorted(self.dir.glob("console-*.log"))
        console = consoles[-1].read_text(errors="replace")[-tail:] if consoles else ""
        problems = json.dumps(self.report.get("problems", {}), indent=1)[:6000]
        return (
            f"{self.summary()}\nerror: {self.error}\nproblems: {problems}\nfsck: {self.fsck}\n"
            f"--- last console ---\n{console}\n--- last daemon log ---\n{last}\n"
            f"(run folder: {self.dir})"
        )


# --- images --------------------------------------------------------------------------------


def _mkfs(image: Path, size_mb: int, label: str, source: Path | None = None) -> None:
    image.unlink(missing_ok=True)
    cmd = ["mkfs.ext4", "-q", "-F", "-L", label]
    if source is not None:
        cmd += ["-d", str(source)]
    r = subprocess.run(
        [*cmd, str(image), f"{size_mb}M"],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"},
    )
    if r.returncode != 0:
        raise RuntimeError(f"mkfs.ext4 {image}: {r.stderr.strip()}")


def _du(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def site_tops() -> list[str]:
    """Top-level site-packages entries the daemon imports (found by importing them here)."""
    site = sysconfig.get_paths()["purelib"]
    probe = (
        "import importlib, os, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from powercut import PRELOAD\n"
        f"for m in (*PRELOAD, *{EXTRA_PACKAGES!r}):\n"
        "    try: importlib.import_module(m)\n"
        "    except Exception: pass\n"
        "site = sys.argv[1]\n"
        "tops = set()\n"
        "for mod in list(sys.modules.values()):\n"
        "    f = getattr(mod, '__file__', None) or ''\n"
        "    if f.startswith(site + os.sep):\n"
        "        tops.add(os.path.relpath(f, site).split(os.sep)[0])\n"
        "print('\\n'.join(sorted(tops)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, site], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout.split()
    tops = {t for t in out if not t.startswith(("__editable__", "_distutils_hack"))}
    for entry in os.listdir(site):  # vendored libraries and package metadata
        if entry.endswith((".libs", ".dist-info")):
            tops.add(entry)
    return sorted(tops)


def build_code_disk(run_dir: Path) -> Path:
    """The read-only `code` disk: /code (station, drivers, web, compiled) and /site."""
    root = run_dir / "codefs"
    shutil.rmtree(root, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("station",):
        shutil.copytree(REPO / package, root / "code" / package, ignore=ignore)
    ok = compileall.compile_dir(
        root / "code", quiet=1, stripdir=str(root / "code"), prependdir="/pc/code", workers=2
    )
    assert ok, "the station's code does not compile"
    site = Path(sysconfig.get_paths()["purelib"])

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    for top in site_tops():
        src = site / top
        if src.is_dir():
            shutil.copytree(src, root / "site" / top, symlinks=True, copy_function=link)
        elif src.exists():
            (root / "site").mkdir(parents=True, exist_ok=True)
            link(str(src), str(root / "site" / top))
    image = run_dir / "code.img"
    _mkfs(image, int(_du(root) * 1.25 / MB) + 64, "pccode", root)
    shutil.rmtree(root)
    return image


def build_cards(run_dir: Path, s: Settings, rng: random.Random) -> dict[str, Any]:
    """Simulated recorders on an ext4 image; the manifest of every card file."""
    from station.names import parse_card_path
    from station.sim.recorder import RecorderSpec, build_recorder

    root = run_dir / "cardsfs"
    shutil.rmtree(root, ignore_errors=True)
    (root / "bus").mkdir(parents=True)
    (root / "spare").mkdir()
    (root / "done").mkdir()
    work = run_dir / "building"
    work.mkdir(exist_ok=True)
    files = []
    for i in range(s.recorders):
        serial = f"PC{i + 1:05d}"
        officer = f"{300001 + i}"
        spec = RecorderSpec(
            serial=serial,
            officer_no=officer,
            officer_name=f"Officer {i + 1}",
            id_code=f"ZFY{i + 1:03d}",
            files=s.files,
            imp=1,
            size_mb=s.size_mb,
        )
        folder = build_recorder(work, spec, seed=rng.randrange(1 << 30))
        card = folder / "card"
        for p in sorted(card.rglob("*")):
            if p.is_file():
                rel = str(p.relative_to(card))
                files.append(
                    {
                        "serial": serial,
                        "officer_no": officer,
                        "path": rel,
                        "size": p.stat().st_size,
                        "sha256": _sha256(p),
                        "important": parse_card_path(os.fsencode(rel)).important,
                    }
                )
        target = (
            root / "bus" / f"port-{i + 1}" if i < s.ports else root / "spare" / f"{i:04d}-{serial}"
        )
        os.rename(folder, target)
    shutil.rmtree(work)
    footage = sum(f["size"] for f in files)
    _mkfs(run_dir / "cards.img", int(footage * 1.6 / MB) + 32, "pccards", root)
    shutil.rmtree(root)
    return {"files": files, "bytes": footage}


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def station_config(s: Settings) -> dict[str, Any]:
    return {
        "station": {"id": "PC-0001", "name": "Power-cut station"},
        "store": {
            "disks": [DISKS["disk1"], DISKS["disk2"]],
            "min_free_mb": 1,
            "sync_every_mb": 1,
            "chunk_kb": 256,
            "scrub_mb_s": 0.0,
        },
        "database": {"url": f"sqlite:///{DISKS['catalog']}/catalog.db"},
        "bus": {"kind": "simulated", "path": f"{DISKS['cards']}/bus", "ports": s.ports},
        "registration": {"mode": "auto"},
        "retention": {
            "days": s.retention_days,
            "sweep_interval_s": 4.0,
            "max_clock_jump_days": max(1.0, 2 * s.clock_step_s / 86400),
        },
        "web": {"host": "127.0.0.1", "port": WEB_PORT},
        "api": {"tokens": [TOKEN]},
        "alarms": {"check_clock": False},
        "network": {"interval_s": 3600.0},
        "voice": {"enabled": False},
    }


# --- the run ---------------------------------------------------------------------------------


def _fsck(image: Path) -> str:
    """e2fsck -fn's complaint about an image, or "" when it is clean."""
    r = subprocess.run(
        ["e2fsck", "-fn", str(image)],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"},
    )
    return "" if r.returncode == 0 else (r.stdout + r.stderr)[-1500:]


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return ""
    return lines[-1][-300:] if lines else ""


class Runner:
    def __init__(self, run_dir: Path, s: Settings, log: Callable[[str], None] = print) -> None:
        self.dir = run_dir
        self.s = s
        self.log = log
        self.rng = random.Random(s.seed)
        self.out = Outcome(s, run_dir)
        self.image: GuestImage | None = None
        self.state = run_dir / "guest.state"
        self.startup_s = 12.0  # fork to healthy, as last measured

    def drives(self) -> dict[str, Path]:
        return {"code": self.dir / "code.img", **{k: self.dir / f"{k}.img" for k in DISKS}}

    def vm(self, name: str, incoming: bool) -> Vm:
        assert self.image is not None
        vm = Vm(
            self.image,
            self.dir,
            self.drives(),
            memory_mb=self.s.memory_mb,
            drive_options={"code": "readonly=on"},
            extra_args=["-incoming", f"exec:cat {self.state}"] if incoming else [],
            console_input=True,
        )
        vm.console_path = self.dir / f"console-{name}.log"
        return vm

    def setup(self) -> None:
        t = time.monotonic()
        self.image = self._own_copy(ensure_image(log=self.log))
        self.out.timings["image_s"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        manifest = build_cards(self.dir, self.s, self.rng)
        (self.dir / "manifest.json").write_text(json.dumps(manifest, indent=1), "utf-8")
        footage = int(manifest["bytes"] / MB) + 1
        _mkfs(self.dir / "disk1.img", max(16, int(footage * 0.6) + 8), "pcdisk1")
        _mkfs(self.dir / "disk2.img", int(footage * 1.5) + 32, "pcdisk2")
        _mkfs(self.dir / "catalog.img", 64, "pccatalog")
        build_code_disk(self.dir)
        (self.dir / "station.toml").write_text(tomli_w.dumps(station_config(self.s)), "utf-8")
        plan = {
            "code_disk": "code",
            "disks": DISKS,
            "cards_root": DISKS["cards"],
            "ports": self.s.ports,
            "web_port": WEB_PORT,
            "token": TOKEN,
            "catalog": f"{DISKS['catalog']}/catalog.db",
            "store_disks": [DISKS["disk1"], DISKS["disk2"]],
            "retention_days": self.s.retention_days,
            "drain_timeout_s": self.s.drain_timeout_s,
            "settle_s": 6.0,
        }
        (self.dir / "powercut.json").write_text(json.dumps(plan, indent=1), "utf-8")
        self.out.timings["images_s"] = round(time.monotonic() - t, 1)
        self.log(
            f"powercut: seed {self.s.seed}, {len(manifest['files'])} card files "
            f"({manifest['bytes'] / MB:.1f} MiB) on {self.s.recorders} recorders, "
            f"{self.s.ports} ports, {self.s.cuts} cuts ({self.s.startup_share:.0%} in start-up, "
            f"the others up to {self.s.collect_cut_max_s} s into collecting)"
        )

    def _own_copy(self, image: GuestImage) -> GuestImage:
        """The kernel and root, linked into the run folder: every restore needs the very
        files the saved machine booted, even if the cache is rebuilt or pruned meanwhile
        (another checkout's hil_image.py on the same machine prunes this one's image)."""
        own = self.dir / "guest"
        own.mkdir(exist_ok=True)
        for f in (image.vmlinux, image.initrd):
            try:
                os.link(f, own / f.name)
            except OSError:
                shutil.copy2(f, own / f.name)
        return GuestImage(own, image.kernel_version, image.built_now, image.seconds)

    def save_guest(self) -> None:
        """Boot once, let the guest import the daemon's code, save the machine to a file."""
        t = time.monotonic()
        vm = self.vm("prepare", incoming=False)
        vm.start()
        try:
            vm.wait_line(r"^PC: .*snapshot-ready", 400)
            self.out.timings["prepare_boot_s"] = round(time.monotonic() - t, 1)
            self.state.unlink(missing_ok=True)
            vm.qmp("migrate", uri=f"exec:cat > {self.state}")
            deadline = time.monotonic() + 120
            while True:
                status = vm.qmp("query-migrate").get("status")
                if status == "completed":
                    break
                if status in ("failed", "cancelled") or time.monotonic() > deadline:
                    raise RuntimeError(f"saving the guest: migration {status}")
                time.sleep(0.2)
        finally:
            vm.kill()
        self.out.timings["prepare_s"] = round(time.monotonic() - t, 1)
        self.log(
            f"powercut: guest saved in {self.out.timings['prepare_s']} s "
            f"({self.state.stat().st_size / MB:.0f} MiB)"
        )

    def restore(self, n: int, final: bool) -> Vm:
        vm = self.vm(f"{n:03d}", incoming=True)
        vm.start()
        try:
            self._resume(vm, n, final)
        except BaseException:
            vm.kill()
            raise
        return vm

    def _resume(self, vm: Vm, n: int, final: bool) -> None:
        """Wait until the saved machine runs again; hand it its GO line."""
        deadline = time.monotonic() + 60
        while True:
            try:
                if vm.qmp("query-status").get("status") == "running":
                    break
            except (OSError, RuntimeError):
                if vm._qmp is not None:  # not connected yet: start over next time
                    vm._qmp.close()
                    vm._qmp = None
                    vm._qmp_buf = b""
            if vm.proc is not None and vm.proc.poll() is not None:
                raise RuntimeError(f"cycle {n}: QEMU exited while restoring\n{vm.console()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"cycle {n}: the guest was not restored in time")
            time.sleep(0.1)
        go = {
            "cycle": n,
            "epoch": time.time() + n * self.s.clock_step_s,
            "entropy": self.rng.randbytes(32).hex(),
            "final": final,
        }
        vm.send_console("GO " + json.dumps(go))

    def cut(self, n: int) -> None:
        during_startup = self.rng.random() < self.s.startup_share
        if during_startup:
            delay = self.rng.uniform(1.0, max(1.5, self.startup_s))
        else:
            delay = self.rng.uniform(0.0, self.s.collect_cut_max_s)
        vm = self.restore(n, final=False)
        try:
            vm.wait_line(rf"^PC: .*cycle {n}: daemon \d+ started", 120)
            forked = time.monotonic()
            if not during_startup:
                vm.wait_line(rf"^PC: .*cycle {n}: daemon healthy", 300)
                self.startup_s = time.monotonic() - forked
            started = time.monotonic()
            while time.monotonic() - started < delay:
                if vm.proc is not None and vm.proc.poll() is not None:
                    raise RuntimeError(f"cycle {n}: the guest died before its cut")
                time.sleep(0.02)
            vm.proc.kill()  # type: ignore[union-attr] - the power cut
            vm.proc.wait()  # type: ignore[union-attr]
            after = time.monotonic() - forked
        finally:
            vm.kill()
        console = vm.console_path.read_text(errors="replace")
        if "PC: " in console and ("cycle failed" in console or "exited on its own" in console):
            raise RuntimeError(f"cycle {n}: the guest reported a failure\n{console[-3000:]}")
        log = self.dir / "logs" / f"daemon-{n:03d}.log"
        tail = _last_line(log)
        text = log.read_text(errors="replace") if log.exists() else ""
        cut = Cut(
            n,
            round(after, 2),
            f"cycle {n}: daemon healthy" in console,
            tail,
            any(w in text for w in ("file_stored", "card_file_deleted", "resuming at byte")),
            Cut.classify(tail),
        )
        self.out.cuts.append(cut)
        when = "start-up" if during_startup else f"healthy + {delay:.2f} s"
        self.log(f"powercut: cut {n} at {cut.after_s:6.2f} s ({when}; {cut.step}): {tail[:140]}")

    def finish(self) -> None:
        n = self.s.cuts + 1
        vm = self.restore(n, final=True)
        try:
            vm.wait_line(r"^PC: .*(report written|cycle failed)", self.s.drain_timeout_s + 200)
            vm.wait_exit(60)
        except (TimeoutError, RuntimeError) as e:
            self.out.error = f"final cycle: {e}"
        finally:
            vm.kill()
        report = self.dir / "report.json"
        if report.exists():
            self.out.report = json.loads(report.read_text("utf-8"))
            self.out.error = self.out.error or self.out.report.get("error")
        else:
            self.out.error = self.out.error or "the guest wrote no report"
        for name in ("cards", "disk1", "disk2", "catalog"):
            if complaint := _fsck(self.dir / f"{name}.img"):
                self.out.fsck[name] = complaint

    def run(self) -> Outcome:
        started = time.monotonic()
        try:
            self.setup()
            self.save_guest()
            t = time.monotonic()
            for n in range(1, self.s.cuts + 1):
                self.cut(n)
            self.out.timings["cuts_s"] = round(time.monotonic() - t, 1)
            t = time.monotonic()
            self.finish()
            self.out.timings["final_s"] = round(time.monotonic() - t, 1)
        except (TimeoutError, RuntimeError) as e:
            self.out.error = str(e)
        self.out.timings["total_s"] = round(time.monotonic() - started, 1)
        (self.dir / "outcome.json").write_text(
            json.dumps(
                {
                    "settings": self.s.__dict__,
                    "counts": self.out.counts,
                    "cuts": [c.__dict__ for c in self.out.cuts],
                    "steps": self.out.steps,
                    "report_counts": self.out.report.get("counts"),
                    "timings": self.out.timings,
                    "fsck": self.out.fsck,
                    "error": self.out.error,
                },
                indent=1,
            ),
            "utf-8",
        )
        self.log(self.out.summary())
        return self.out


def run_powercuts(run_dir: Path, s: Settings, log: Callable[[str], None] = print) -> Outcome:
    run_dir.mkdir(parents=True, exist_ok=True)
    return Runner(run_dir, s, log).run()
