#!/usr/bin/env python3
"""Power-cut soak: the QEMU guest running the daemon killed --cuts times (tier 3, HIL.md).

    .venv/bin/python bench/powercut.py [--cuts 100] [--seed N] [--out DIR] [--ports 3]
        [--files 4] [--size-mb 0.35] [--startup-share 0.3] [--collect-cut-max 12] [--keep]

The same run as tests/hil/test_powercut.py (tests/hil/powercut_host.py), with more cuts:
the real daemon on ext4 virtio disks in the HIL guest, QEMU SIGKILLed at random moments
(a --startup-share of them during start-up and recovery, the others up to
--collect-cut-max seconds after the daemon first answered, while it collects; from --seed), the
guest restored from a saved machine on the same disk images, recorders docked as cards
empty, retention sweeping footage that the stepped-forward guest clock has aged; then a
last clean run collects everything left and the guest checks the invariants against
the host's manifest of every card file.

Prints the seed, the counts (cuts, files, lost, duplicated, corrupted, early wipes,
quarantined, retention deleted, wrongly deleted) and the time. Exit status 0 when every
invariant held, 1 when one broke (the run folder is kept: report.json, outcome.json,
console-*.log, logs/daemon-*.log), 2 when the run itself failed.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "hil")]

from powercut_host import Settings, run_powercuts  # noqa: E402

FAILURES = (
    "lost",
    "duplicated",
    "corrupted",
    "early wipes",
    "wrongly deleted",
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cuts", type=int, default=100)
    ap.add_argument("--seed", type=int, default=None, help="default: a fresh one, printed")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "powercut")
    ap.add_argument("--ports", type=int, default=3)
    ap.add_argument("--files", type=int, default=4, help="files per recorder, besides its log")
    ap.add_argument("--size-mb", type=float, default=0.35)
    ap.add_argument("--startup-share", type=float, default=0.3, help="cuts during start-up")
    ap.add_argument(
        "--collect-cut-max", type=float, default=12.0, help="other cuts: up to this many s"
    )
    ap.add_argument("--keep", action="store_true", help="keep the disk images after a pass")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    settings = Settings(
        cuts=args.cuts,
        seed=seed,
        ports=args.ports,
        files=args.files,
        size_mb=args.size_mb,
        startup_share=args.startup_share,
        collect_cut_max_s=args.collect_cut_max,
        drain_timeout_s=900.0,
    )
    run_dir = args.out / f"seed-{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    print(f"powercut soak: seed {seed}, {args.cuts} cuts, run folder {run_dir}", flush=True)
    started = time.monotonic()
    out = run_powercuts(
        run_dir, settings, log=lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True)
    )
    counts = out.counts
    print(json.dumps({"seed": seed, **counts, "seconds": round(time.monotonic() - started)}))
    for k, v in counts.items():
        print(f"  {k:18} {v}")
    print(f"  {'cuts collecting':18} {sum(c.collecting for c in out.cuts)}")
    print(f"  {'last steps':18} {out.steps}")
    print(f"  {'seed':18} {seed}")
    print(f"  {'time':18} {(time.monotonic() - started) / 60:.1f} min")
    if out.fsck:
        print(f"  e2fsck complaints: {sorted(out.fsck)}")
    problems = {k: v for k, v in out.report.get("counts", {}).items() if v}
    if problems:
        print(f"  findings: {problems}")
    if out.error or not out.report:
        print(out.explain())
        return 2
    if any(counts[k] for k in FAILURES) or problems or out.fsck:
        print(out.explain())
        return 1
    if not args.keep:
        for img in run_dir.glob("*.img"):
            img.unlink()
        (run_dir / "guest.state").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
