#!/usr/bin/env python3
"""Hash throughput on the emulated cabinet CPU: SHA-256, XXH3-128, BLAKE3, and pairs.

    .venv/bin/python bench/hashes.py [--mib 512] [--repeat 3] [--chunks-kib 256,1024,4096]
        [--no-quota] [--no-mask]

Each variant hashes --mib MiB of random bytes held in memory, one chunk at a time through
a memoryview (as station/ingest/transfer.py does), in a child process put in the cabinet's cgroup
(bench/cabinet.py: 0.84 CPU, SHA extensions masked). Variants and chunk sizes are
interleaved and repeated --repeat times; the median is reported: wall MB/s (what the
quota allows) and CPU-s per GiB (what it costs). Needs root (the cgroup).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from cabinet import CabinetCpu  # noqa: E402

VARIANTS = ["sha256", "xxh3_128", "blake3", "sha256+xxh3_128", "sha256+blake3", "sha256+sha256"]
GIB = 1 << 30
MB = 1_000_000

CHILD = r"""
import hashlib, json, os, sys, time, resource
import blake3, xxhash
variant, mib, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
buf = bytearray(os.urandom(chunk))
mv = memoryview(buf)
makers = {"sha256": hashlib.sha256, "xxh3_128": xxhash.xxh3_128, "blake3": blake3.blake3}
hs = [makers[v]() for v in variant.split("+")]
n = mib * (1 << 20) // chunk
r0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
for _ in range(n):
    for h in hs:
        h.update(mv)
for h in hs:
    h.digest()
wall = time.perf_counter() - t0
r1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
print(json.dumps({"wall": wall, "cpu": cpu, "bytes": n * chunk}))
"""


def run(cab: CabinetCpu, variant: str, mib: int, chunk: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, variant, str(mib), str(chunk)],
        env=cab.env(os.environ),
        preexec_fn=cab.enter,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, default=512)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--chunks-kib", default="256,1024,4096")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--no-quota", action="store_true", help="no CPU quota (mask only)")
    p.add_argument("--no-mask", action="store_true", help="keep the SHA extensions")
    args = p.parse_args(argv)
    chunks = [int(c) * 1024 for c in args.chunks_kib.split(",")]
    variants = args.variants.split(",")
    figures: dict[tuple[str, int], list[dict[str, float]]] = {}
    with CabinetCpu(None if args.no_quota else 0.84, mask_sha=not args.no_mask) as cab:
        print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cab.describe()}")
        print(f"# load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}")
        for _ in range(args.repeat):
            for chunk in chunks:
                for v in variants:
                    figures.setdefault((v, chunk), []).append(run(cab, v, args.mib, chunk))
    print(f"{'variant':<18} {'chunk KiB':>9} {'MB/s':>7} {'CPU-s/GiB':>9}  (median of runs)")
    for chunk in chunks:
        for v in variants:
            rs = figures[(v, chunk)]
            rate = statistics.median(r["bytes"] / MB / r["wall"] for r in rs)
            cpu = statistics.median(r["cpu"] / (r["bytes"] / GIB) for r in rs)
            print(f"{v:<18} {chunk // 1024:>9} {rate:>7.0f} {cpu:>9.2f}")
    print(f"# load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
