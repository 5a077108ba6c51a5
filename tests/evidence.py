"""The evidence invariants every fault run checks (issue: evidence safety).

1. Every file that was on a recorder is stored exactly once, byte for byte,
   catalogued with the right officer, recorder and hash.
2. No file is deleted from a recorder before its stored copy is verified and
   committed (a file deleted early shows up as lost in 1).
3. No catalog row without its file; no stored file without a row; every live
   row's sidecar says what the row says (hash, officer, recorder, grade, hold, retention
   category, live).
4. Nothing is quarantined (a quarantined file is a file the station could not account
   for), and no card file was deleted before its file was committed (read from the
   system log directly, not only as a loss).
5. A resumed transfer reads again only what it had not made durable (the fault tests).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from station.names import parse_card_path

HIDDEN = {".staging", ".meta", ".quarantine", ".mirror"}
ROOT_FILES = {".station-disk.json", ".station-log-anchor.json"}  # the station's, not evidence


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def card_files(recorder: Path) -> dict[bytes, tuple[int, str]]:
    card = os.fsencode(recorder / "card")
    out = {}
    for root, _dirs, files in os.walk(card):
        for f in files:
            p = os.path.join(root, f)
            if os.path.isfile(p) and not os.path.islink(p):
                out[os.path.relpath(p, card)] = (os.path.getsize(p), sha256(Path(os.fsdecode(p))))
    return out


@dataclass
class Ledger:
    """What went onto the recorders, to check against what the station did."""

    # serial -> (officer_no, {card path: (size, sha256)})
    sources: dict[str, tuple[str, dict[bytes, tuple[int, str]]]] = field(default_factory=dict)

    def add(self, serial: str, officer_no: str, recorder: Path) -> None:
        self.sources[serial] = (officer_no, card_files(recorder))

    @property
    def total_files(self) -> int:
        return sum(len(files) for _, files in self.sources.values())

    def recheck_bytes(self, full_mb: int = 64) -> int:
        """Bytes the second look re-reads in full before a card copy is deleted: files
        marked IMP, and every file up to `store.card_recheck_full_mb` (default 64)."""
        return sum(
            size
            for _, files in self.sources.values()
            for path, (size, _) in files.items()
            if parse_card_path(path).important or size <= full_mb * 2**20
        )

    def largest_recheck(self, full_mb: int = 64) -> int:
        """The largest file the second look re-reads in full (a look cut short by an unplug
        is made again: at most this much more per unplug)."""
        return max(
            (
                size
                for _, files in self.sources.values()
                for path, (size, _) in files.items()
                if parse_card_path(path).important or size <= full_mb * 2**20
            ),
            default=0,
        )

    @property
    def total_bytes(self) -> int:
        return sum(size for _, files in self.sources.values() for size, _ in files.values())


@dataclass
class Findings:
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    corrupted: list[str] = field(default_factory=list)
    misattributed: list[str] = field(default_factory=list)
    rows_without_file: list[str] = field(default_factory=list)
    files_without_row: list[str] = field(default_factory=list)
    left_on_card: list[str] = field(default_factory=list)
    staging_left: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    sidecar_mismatch: list[str] = field(default_factory=list)
    wiped_before_commit: list[str] = field(default_factory=list)

    def problems(self) -> dict[str, list[str]]:
        return {k: v for k, v in self.__dict__.items() if v}


def check(db: Path, disks: list[Path], ledger: Ledger, cards: dict[str, Path]) -> Findings:
    """Compare the catalog, the disks and the cards with the ledger."""
    out = Findings()
    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            "SELECT f.card_path, f.disk, f.rel_path, f.size, f.sha256, o.officer_no, r.serial, "
            "f.level, f.legal_hold, f.retention_category "
            "FROM files f JOIN officers o ON o.id = f.officer_id "
            "JOIN recorders r ON r.id = f.recorder_id WHERE f.deleted_at IS NULL"
        ).fetchall()
        log = con.execute(
            "SELECT id, kind, file_id, message FROM events "
            "WHERE kind IN ('file_stored', 'file_adopted', 'card_file_deleted') ORDER BY id"
        ).fetchall()
    finally:
        con.close()
    committed: set[int] = set()
    for ev_id, kind, file_id, message in log:
        if kind != "card_file_deleted":
            committed.add(file_id)
        elif file_id not in committed:
            out.wiped_before_commit.append(f"event {ev_id}: {message} (file {file_id})")
    seen: dict[tuple[str, bytes], int] = {}
    stored_paths = set()
    for card_path, disk, rel, size, digest, officer_no, serial, level, hold, category in rows:
        key = (serial, bytes(card_path))
        seen[key] = seen.get(key, 0) + 1
        path = Path(disk) / rel
        stored_paths.add(str(path))
        src = ledger.sources.get(serial)
        expected = src[1].get(bytes(card_path)) if src else None
        if not path.exists():
            out.rows_without_file.append(str(path))
            continue
        if expected is None or (size, digest) != expected or sha256(path) != digest:
            out.corrupted.append(f"{serial} {card_path!r} -> {path}")
        if src and officer_no != src[0]:
            out.misattributed.append(f"{serial} {card_path!r}: {officer_no} != {src[0]}")
        try:
            sc = json.loads((Path(disk) / ".meta" / f"{rel}.json").read_text("utf-8"))
        except (OSError, ValueError) as e:
            out.sidecar_mismatch.append(f"{path}: {e}")
        else:
            want = (digest, officer_no, serial, level, hold, category, None)
            keys = ("sha256", "officer_no", "serial", "level", "legal_hold",
                    "retention_category", "deleted_at")  # fmt: skip
            got = tuple(sc.get(k) for k in keys)
            if got != want:
                out.sidecar_mismatch.append(f"{path}: sidecar {got} != row {want}")
    for serial, (_, files) in ledger.sources.items():
        for card_path in files:
            n = seen.get((serial, card_path), 0)
            if n == 0:
                out.lost.append(f"{serial} {card_path!r}")
            elif n > 1:
                out.duplicated.append(f"{serial} {card_path!r} x{n}")
    for disk in disks:
        for root, dirs, files in os.walk(disk):
            if Path(root) == disk:
                dirs[:] = [d for d in dirs if d not in HIDDEN]
            for f in files:
                p = os.path.join(root, f)
                if p not in stored_paths and not (Path(root) == disk and f in ROOT_FILES):
                    out.files_without_row.append(p)
        for root, _dirs, files in os.walk(disk / ".quarantine"):
            out.quarantined += [os.path.join(root, f) for f in files]
        staging = disk / ".staging"
        if staging.is_dir():
            out.staging_left += [str(p) for p in staging.iterdir()]
    for serial, recorder in cards.items():
        left = card_files(recorder)
        out.left_on_card += [f"{serial} {p!r}" for p in left]
    return out
