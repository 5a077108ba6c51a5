#!/usr/bin/env python3
"""Priority benchmark (S30): the "collect first" port against the same recorder alone.

    .venv/bin/python bench/priority.py [--size-gib 0.25] [--recorders 8] [--read-mb-s 20]
        [--skip-limited] [--skip-unlimited] [--nice N] [--source CHECKOUT] [--keep]

Target (issue #6): with 8 recorders collecting, the priority port reaches at least 90 %
of the rate it gets when alone.

Per case ("limited": every card read at --read-mb-s, like USB 2.0; "unlimited"):

1. alone: a fresh `station run` (bench/ingest.py's daemon, cards and checks), page
   cache dropped, only recorder 1 docked on port 1; its rate = card bytes / time from
   the dock to its slot `complete`.
2. priority: a fresh daemon, all recorders docked at once; as soon as port 1 is
   collecting, "collect first" is chosen the way the touchscreen does it
   (`POST /ui/api/ports/1/priority` with the browser's CSRF token); port 1's rate is
   measured the same way. The run goes on until every recorder is complete, and the
   catalog, the store and the cards are checked as in bench/ingest.py.

Exit status: 0 every target met, 1 one missed, 2 the benchmark itself failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import ingest as ing  # noqa: E402  bench/ingest.py: the daemon, the cards, the checks

TARGET = 0.90


@dataclasses.dataclass
class Run:
    name: str
    recorders: int
    port1_bytes: int
    port1_s: float  # dock to complete
    priority_at_s: float | None  # dock to "collect first" accepted
    others_at_port1_done: int  # bytes the other ports had collected by then
    all_done_s: float

    @property
    def port1_mb_s(self) -> float:
        return self.port1_bytes / ing.MB / self.port1_s


def run(
    name: str, cards: list[Path], read_mb_s: float | None, work: Path, args: argparse.Namespace
) -> Run:
    root = work / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    n = len(cards)
    daemon = ing.Daemon(root, ports=8, source=args.source, nice=args.nice)
    staged = root / "bus" / ".building"
    total_files = total_bytes = 0
    for i, c in enumerate(cards):
        ing.fresh_copy(c, staged / f"rec-{i + 1:02d}", read_mb_s)
        f, s = ing.card_stats(staged / f"rec-{i + 1:02d}")
        total_files, total_bytes = total_files + f, total_bytes + s
    port1_bytes = ing.card_stats(staged / "rec-01")[1]
    ing.log(f"{name}: {n} recorder(s), {total_bytes / ing.MB:.0f} MB, port 1 {port1_bytes} B")
    kiosk: httpx.Client | None = None
    try:
        daemon.start()
        time.sleep(1.0)
        ing.drop_caches()
        t0 = time.monotonic()
        for i in range(n):
            ing.dock(daemon.bus, i + 1, staged / f"rec-{i + 1:02d}")
        prioritised: float | None = None
        if n > 1:
            kiosk = httpx.Client(base_url=f"http://127.0.0.1:{daemon.port}", timeout=30)
            kiosk.headers["X-CSRF-Token"] = kiosk.get("/ui/api/session").json()["csrf"]
        done: dict[int, float] = {}
        others_then = 0
        deadline = t0 + max(300.0, 4 * total_bytes / ing.MB / 20)
        while len(done) < n:
            time.sleep(0.05)
            slots = daemon.status()["slots"][:n]
            now = time.monotonic()
            if kiosk is not None and prioritised is None and slots[0]["state"] == "collecting":
                r = kiosk.post("/ui/api/ports/1/priority")
                if r.status_code != 200:
                    raise ing.BenchError(f"collect first refused: {r.status_code} {r.text}")
                prioritised = now - t0
            for s in slots:
                if s["state"] == "error":
                    raise ing.BenchError(f"port {s['port']} in error: {s['error']}")
                if s["state"] == "complete" and s["port"] not in done:
                    done[s["port"]] = now - t0
                    if s["port"] == 1:
                        others_then = sum(o["bytes_done"] for o in slots[1:])
            if now > deadline:
                raise ing.BenchError(f"{name}: not complete in time: {slots}")
        files = daemon.files_total()
    except BaseException:
        print(daemon.log_tail(), file=sys.stderr)
        raise
    finally:
        if kiosk is not None:
            kiosk.close()
        daemon.stop()
    stored = ing.store_stats(daemon.disks)
    left = sum(ing.card_stats(daemon.bus / f"port-{i + 1}")[0] for i in range(n))
    if files != total_files or stored != (total_files, total_bytes) or left:
        raise ing.BenchError(
            f"{name}: catalog {files} files, store {stored}, cards "
            f"{total_files} files / {total_bytes} B, {left} left on the cards"
        )
    if not args.keep:
        shutil.rmtree(root)
    result = Run(name, n, port1_bytes, done[1], prioritised, others_then, max(done.values()))
    ing.log(f"{name}: port 1 {result.port1_mb_s:.1f} MB/s, all done in {result.all_done_s:.1f} s")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gib", type=float, default=0.25, help="card size per recorder")
    p.add_argument("--recorders", type=int, default=8, help="recorders in the priority run")
    p.add_argument("--read-mb-s", type=float, default=20.0, help="read limit, limited case")
    p.add_argument("--skip-limited", action="store_true")
    p.add_argument("--skip-unlimited", action="store_true")
    p.add_argument("--nice", type=int, default=0, help="run the daemon at this nice value")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep", action="store_true", help="keep the run folders")
    p.add_argument("--source", type=Path, default=ing.ROOT, help="run the daemon from here")
    args = p.parse_args(argv)
    if not 2 <= args.recorders <= 8:
        p.error("--recorders must be 2-8 (the station has 8 ports)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    load = os.getloadavg()
    cards = ing.ensure_cards(args.size_gib, args.recorders, args.seed)
    work = ing.RUNS / ("priority-" + dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    cases = [("limited", args.read_mb_s)] * (not args.skip_limited)
    cases += [("unlimited", None)] * (not args.skip_unlimited)
    rows: list[tuple[str, Run, Run]] = []
    try:
        for case, rate in cases:
            alone = run(f"{case}-alone", cards[:1], rate, work, args)
            first = run(f"{case}-priority", cards, rate, work, args)
            rows.append((case, alone, first))
    except ing.BenchError as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 2
    print("=" * 96)
    print(
        f"priority benchmark  {dt.datetime.now():%Y-%m-%d %H:%M}  {ing.machine()}\n"
        f"command: python {' '.join(sys.argv)}\n"
        f"load average at the start: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; "
        f"took {time.monotonic() - started:.0f} s"
    )
    print("-" * 96)
    print(
        f"{'case':10} {'alone MB/s':>10} {'first MB/s':>10} {'ratio':>6} "
        f"{'first at s':>10} {'others MB by then':>17} {'all done s':>10}"
    )
    ok = True
    for case, alone, first in rows:
        ratio = first.port1_mb_s / alone.port1_mb_s
        ok &= ratio >= TARGET
        print(
            f"{case:10} {alone.port1_mb_s:10.1f} {first.port1_mb_s:10.1f} {ratio:6.2f} "
            f"{first.priority_at_s or 0:10.2f} {first.others_at_port1_done / ing.MB:17.0f} "
            f"{first.all_done_s:10.1f}"
        )
    print("-" * 96)
    for case, alone, first in rows:
        ratio = first.port1_mb_s / alone.port1_mb_s
        print(
            f"{'PASS' if ratio >= TARGET else 'FAIL'}  {case}: priority port >= "
            f"{TARGET:.0%} of its rate alone   {ratio:.1%}"
        )
    print("=" * 96)
    out = ing.OUT / "priority"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"results-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    figures = [[c, dataclasses.asdict(a), dataclasses.asdict(f)] for c, a, f in rows]
    path.write_text(json.dumps(figures, indent=2))
    print(f"raw figures: {path}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
