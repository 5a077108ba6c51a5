"""The cabinet's CPU, emulated on a faster machine: a CPU quota and no SHA extensions.

The cabinet (CONTRACT.md) has a 2.41 GHz 2-core Celeron-class CPU with no SHA
extensions. On the project's VM a process limited to 0.84 CPU (cgroup CPU quota:
`cpu.cfs_quota_us = 84000` per `cpu.cfs_period_us = 100000` with cgroup v1, `cpu.max
= "84000 100000"` with cgroup v2) with OpenSSL told not to use the SHA extensions
(`OPENSSL_ia32cap=":~0x20000000"`, bit 29 of the extended feature word) hashes
SHA-256 at about 117 MiB/s, about what a Silvermont core at 2.4 GHz does (issue #15).

    with CabinetCpu(quota=0.84) as cab:
        subprocess.Popen(cmd, env=cab.env(os.environ), preexec_fn=cab.enter)

Needs root (it creates a cgroup). The quota applies to the whole group: the daemon
and everything it starts share 0.84 CPU, like the cabinet's daemon shares its cores.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

NO_SHA_EXT = ":~0x20000000"  # OPENSSL_ia32cap: clear the SHA extensions' bit
PERIOD_US = 100_000
V1 = Path("/sys/fs/cgroup/cpu")
V2 = Path("/sys/fs/cgroup")


class CabinetError(Exception):
    """The emulation could not be set up (not root, no cgroup CPU controller)."""


class CabinetCpu:
    """A cgroup with a CPU quota of `quota` CPUs; `mask_sha` masks the SHA extensions."""

    def __init__(self, quota: float | None = 0.84, *, mask_sha: bool = True) -> None:
        self.quota = quota
        self.mask_sha = mask_sha
        self.path: Path | None = None
        self.version = 0

    def __enter__(self) -> CabinetCpu:
        if self.quota is not None:
            self._create()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def describe(self) -> str:
        parts = []
        if self.quota is not None:
            parts.append(f"CPU quota {self.quota:g} CPU (cgroup v{self.version} {self.path})")
        if self.mask_sha:
            parts.append(f"OPENSSL_ia32cap={NO_SHA_EXT} (SHA extensions masked)")
        return ", ".join(parts) or "the machine as it is"

    def _create(self) -> None:
        assert self.quota is not None
        quota_us = round(self.quota * PERIOD_US)
        name = f"station-bench-{os.getpid()}"
        if (V1 / "cpu.cfs_quota_us").exists():
            path = V1 / name
            path.mkdir(exist_ok=True)
            (path / "cpu.cfs_period_us").write_text(f"{PERIOD_US}\n")
            (path / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")
            self.version = 1
        elif (V2 / "cgroup.controllers").exists():
            if "cpu" not in (V2 / "cgroup.subtree_control").read_text().split():
                (V2 / "cgroup.subtree_control").write_text("+cpu\n")
            path = V2 / name
            path.mkdir(exist_ok=True)
            (path / "cpu.max").write_text(f"{quota_us} {PERIOD_US}\n")
            self.version = 2
        else:
            raise CabinetError("no cgroup CPU controller found (v1 cpu or v2 cpu.max)")
        self.path = path

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        """The environment for a process of the emulated cabinet."""
        env = dict(base)
        if self.mask_sha:
            env["OPENSSL_ia32cap"] = NO_SHA_EXT
        return env

    def enter(self) -> None:
        """Move the calling process into the group (a `preexec_fn`)."""
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(f"{os.getpid()}\n")

    def add(self, pid: int) -> None:
        """Move another process into the group."""
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(f"{pid}\n")

    def throttled_s(self) -> float:
        """Seconds the group's processes were held back by the quota so far."""
        if self.path is None:
            return 0.0
        stat = self.path / "cpu.stat"
        with contextlib.suppress(OSError):
            for line in stat.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "throttled_time":  # v1, ns
                    return int(value) / 1e9
                if key == "throttled_usec":  # v2
                    return int(value) / 1e6
        return 0.0

    def close(self) -> None:
        """Remove the group (its processes must have exited; waits up to 5 s)."""
        if self.path is None:
            return
        deadline = time.monotonic() + 5
        while True:
            try:
                self.path.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        self.path = None
