"""The platform link's pure parts and its catalog pieces, without a network: the breaker,
the outbox, signatures, configuration overlays, and retention's central and 2016 rules."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from station.catalog import Catalog, Officer, OutboxEntry, Recorder, StoredFile
from station.catalog.db import append_event
from station.config import ConfigError, StationConfig, parse_config
from station.platform import outbox, signing
from station.platform.breaker import Breaker
from station.platform.link import overlay
from station.platform.protocol import Command
from station.platform.sm3 import Sm3Digester, digests
from station.retention.annotations import AnnotationError, ProtectionError, annotate
from station.retention.sweeper import (
    CentralCheck,
    DeletionRefused,
    DiskFacts,
    FileFacts,
    RetentionSweeper,
    Rules,
    plan_sweep,
    upcoming_deletions,
)

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
RULES = Rules(days={"normal": 180, "important": 365, "evidence": None}, high_water=0.9,
              low_water=0.7)  # fmt: skip
GB = 10**9


def f(i: int, age_days: float, **kw: Any) -> FileFacts:
    return FileFacts(i, "/d1", GB, NOW - dt.timedelta(days=age_days), "normal", False, **kw)


# --- retention: central copies and permanent categories -----------------------------------


def test_expired_files_wait_for_their_central_copy() -> None:
    files = [f(1, 200, central_state="verified"), f(2, 200), f(3, 200, central_state="failed")]
    check = CentralCheck(platform=True)
    plan = plan_sweep(files, [DiskFacts("/d1", 100 * GB, 90 * GB)], RULES, NOW,
                      central_ok=check.verified)  # fmt: skip
    assert plan.expired == [1]
    assert sorted(plan.waiting_central) == [2, 3]


def test_full_disks_never_overwrite_an_unverified_file() -> None:
    files = [f(i, 10, central_state="verified" if i == 3 else None) for i in range(1, 21)]
    full = [DiskFacts("/d1", 20 * GB, 0)]
    plan = plan_sweep(files, full, RULES, NOW, central_ok=CentralCheck(platform=True).verified)
    assert plan.overwrite == [3]  # not the older, unverified 1 and 2
    assert plan.cannot_make_room == ["/d1"]  # the unverified stay, the disk stays full
    assert {1, 2} <= set(plan.waiting_central)


def test_forwarded_copy_counts_as_central() -> None:
    check = CentralCheck(forward=True, forwarded=lambda i: i == 2)
    assert check.required
    assert not check.verified(f(1, 1)) and check.verified(f(2, 1))
    assert not CentralCheck(forward=True).verified(f(2, 1))  # the forwarder is not running yet
    assert not CentralCheck().required


def test_permanent_categories_are_never_deleted() -> None:
    files = [f(1, 5000, category="case_evidence"), f(2, 5000, category="obstruction"), f(3, 5000)]
    plan = plan_sweep(files, [DiskFacts("/d1", 3 * GB, 0)], RULES, NOW)
    assert plan.expired == [3] and plan.overwrite == []
    assert plan.permanent == [1, 2]
    young = [f(1, 1, category="major_incident"), f(2, 1, category="major_case")]
    plan = plan_sweep(young, [DiskFacts("/d1", 2 * GB, 0)], RULES, NOW)
    assert plan.overwrite == [] and plan.cannot_make_room == ["/d1"]


def test_upcoming_deletions_are_listed_ahead() -> None:
    files = [f(1, 179), f(2, 170), f(3, 100), f(4, 179, category="major_case"),
             dataclasses.replace(f(5, 179), level="evidence")]  # fmt: skip
    soon = upcoming_deletions(files, RULES, NOW, 14)
    assert [x.id for x, _ in soon] == [1, 2]
    assert soon[0][1] == NOW + dt.timedelta(days=1)
    assert upcoming_deletions(files, RULES, NOW, 0) == []


# --- the catalog: outbox, categories, SM3 --------------------------------------------------


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    c = Catalog(tmp_path / "catalog.db")
    c.migrate()
    return c


def add_file(catalog: Catalog, disk: Path, name: str, data: bytes) -> int:
    import hashlib

    (disk / name).write_bytes(data)
    with catalog.write() as s:
        off = s.query(Officer).first() or Officer(officer_no="100001", name="Li")
        rec = s.query(Recorder).first() or Recorder(serial="R1", officer=off)
        s.add_all([off, rec])
        s.flush()
        row = StoredFile(officer_id=off.id, recorder_id=rec.id, card_path=name.encode(),
                         name=name, disk=str(disk), rel_path=name, size=len(data),
                         sha256=hashlib.sha256(data).hexdigest())  # fmt: skip
        s.add(row)
        s.flush()
        append_event(s, "file_stored", name, file_id=row.id)
        return row.id


def test_outbox_fills_once_and_keeps_order(catalog: Catalog, tmp_path: Path) -> None:
    ids = [add_file(catalog, tmp_path, f"f{i}.avi", bytes([i]) * 100) for i in range(3)]
    with catalog.write() as s:
        append_event(s, "alarm_raised", "disk full", code="storage_full", subject="")
    added = outbox.fill(catalog, "S1", sm3=False)
    assert added == 3 + 4 + 1  # files, log entries, the alarm
    assert outbox.fill(catalog, "S1", sm3=False) == 0  # nothing twice
    assert outbox.depth(catalog) == {"file": 3, "alarm": 1, "log": 4, "receipt": 0, "report": 0}
    files = outbox.pending(catalog, "file", 10)
    assert [e.key for e in files] == [f"S1:{i}" for i in ids]
    # the platform answers: one accepted, one duplicate (delivered), one not answered
    settled = outbox.settle(catalog, files, {files[0].key: ("accepted", None),
                                             files[1].key: ("duplicate", None)})  # fmt: skip
    assert settled == 2
    assert [e.key for e in outbox.pending(catalog, "file", 10)] == [files[2].key]
    outbox.settle(catalog, files[2:], {files[2].key: ("rejected", "bad")})
    assert outbox.depth(catalog)["file"] == 0
    with catalog.read() as s:
        assert s.get(OutboxEntry, files[2].id).answer == "rejected"


def test_files_wait_for_sm3_before_they_are_queued(catalog: Catalog, tmp_path: Path) -> None:
    import hashlib
    import threading

    data = b"footage" * 1000
    fid = add_file(catalog, tmp_path, "a.avi", data)
    bad = add_file(catalog, tmp_path, "b.avi", b"x" * 10)
    (tmp_path / "b.avi").write_bytes(b"y" * 10)  # changed on disk since it was stored
    outbox.fill(catalog, "S1", sm3=True)
    assert outbox.depth(catalog)["file"] == 0
    Sm3Digester(catalog, threading.Event()).round()
    with catalog.read() as s:
        assert s.get(StoredFile, fid).sm3 == hashlib.new("sm3", data).hexdigest()
        assert s.get(StoredFile, bad).sm3 is None
        assert "no longer matches" in s.get(StoredFile, bad).sm3_error
    outbox.fill(catalog, "S1", sm3=True)
    assert outbox.depth(catalog)["file"] == 2  # the bad one goes too, without an SM3
    assert digests(tmp_path / "a.avi")[1] == hashlib.new("sm3", data).hexdigest()


def test_retention_category_is_an_administrators_choice(catalog: Catalog, tmp_path: Path) -> None:
    fid = add_file(catalog, tmp_path, "c.avi", b"z" * 10)
    with pytest.raises(ProtectionError):
        annotate(catalog, fid, by="officer", category="case_evidence")
    with pytest.raises(AnnotationError, match="unknown retention category"):
        annotate(catalog, fid, by="admin", category="forever", admin=True)
    annotate(catalog, fid, by="admin", category="case_evidence", admin=True)
    sweeper = RetentionSweeper(catalog, RULES)
    with pytest.raises(DeletionRefused, match="permanently"):
        sweeper.delete(fid, "asked", by="someone", confirmed=True)
    assert not sweeper.delete(fid, "expired")
    with pytest.raises(ProtectionError):
        annotate(catalog, fid, by="officer", category="")
    annotate(catalog, fid, by="admin", category="", admin=True)
    assert sweeper.delete(fid, "asked", by="someone", confirmed=True)
    with catalog.read() as s:
        from sqlalchemy import select

        from station.catalog import Event

        msgs = [e.message for e in s.scalars(select(Event).where(Event.kind == "file_annotated"))]
    assert [m.split(" (")[0] for m in msgs] == [
        "retention_category: None -> 'case_evidence'",
        "retention_category: 'case_evidence' -> None",
    ]  # fmt: skip


# --- breaker, signatures, configuration ----------------------------------------------------


def test_breaker_backs_off_then_opens_then_probes() -> None:
    b = Breaker(base_s=1, max_s=8, open_after=3, open_s=30, jitter=0)
    assert b.ready(0) and b.state == "closed"
    assert b.failure(0) == 1 and not b.ready(0.5) and b.ready(1)
    assert b.failure(1) == 2 and b.state == "backing_off"
    assert b.failure(3) == 30 and b.state == "open"
    assert not b.ready(32) and b.ready(33)  # one probe when due
    b.failure(33)
    assert b.state == "open" and not b.ready(60)
    b.success()
    assert b.state == "closed" and b.ready(0)


def test_signatures(tmp_path: Path) -> None:
    signing.new_key(tmp_path / "k", tmp_path / "k.pub")
    signing.new_key(tmp_path / "o", tmp_path / "o.pub")
    cmd = Command(id="1", station_id="S", kind="self_check", issued_at=NOW.isoformat())
    good = signing.sign(cmd, signing.load_private(tmp_path / "k"))
    signing.verify(good, signing.load_public(tmp_path / "k.pub"))
    with pytest.raises(signing.SignatureError, match="not signed"):
        signing.verify(cmd, signing.load_public(tmp_path / "k.pub"))
    with pytest.raises(signing.SignatureError, match="does not verify"):
        signing.verify(good, signing.load_public(tmp_path / "o.pub"))
    tampered = good.model_copy(update={"args": {"port": 3}})
    with pytest.raises(signing.SignatureError, match="does not verify"):
        signing.verify(tampered, signing.load_public(tmp_path / "k.pub"))
    with pytest.raises(signing.SignatureError, match="no command key"):
        signing.verify(good, None)


def test_pulled_configuration_is_validated_like_the_file() -> None:
    base = StationConfig()
    new = overlay(base, {"retention": {"days": 200}, "registration": {"mode": "manual"}}, "v2")
    assert new.retention.days == 200 and new.registration.mode == "manual"
    assert new.retention.high_water_percent == base.retention.high_water_percent
    assert base.retention.days == 180  # the running one is untouched
    with pytest.raises(ConfigError, match=r"v3: invalid configuration\n  retention.days"):
        overlay(base, {"retention": {"days": 0}}, "v3")
    with pytest.raises(ConfigError, match=r"retention\.dayz: unknown key"):
        overlay(base, {"retention": {"dayz": 10}}, "v3")
    with pytest.raises(ConfigError, match="cannot be set by the platform"):
        overlay(base, {"api": {"tokens": []}}, "v4")


def test_platform_section_is_strict() -> None:
    with pytest.raises(ConfigError, match="url, token is not set"):
        parse_config({"platform": {"enabled": True}})
    with pytest.raises(ConfigError, match=r"platform\.url"):
        parse_config({"platform": {"url": "ftp://x"}})
    with pytest.raises(ConfigError, match=r"platform\.heartbeat: unknown key"):
        parse_config({"platform": {"heartbeat": 3}})
    assert parse_config({"integrity": {"sm3": True}}).integrity.sm3


def test_stored_secrets_are_encrypted_with_a_key_outside_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tomli_w

    from station.config import load_config
    from station.platform import secrets

    monkeypatch.delenv("STATION_SECRETS_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    conf = tmp_path / "station.toml"
    secrets.new_key(tmp_path / "secrets.key")
    key = secrets.load_key(tmp_path / "secrets.key")
    token = secrets.encrypt(key, "platform.token", "the-platform-secret")
    s3 = secrets.encrypt(key, "forward.secret_access_key", "the-s3-secret")
    assert "the-platform-secret" not in token
    conf.write_text(tomli_w.dumps({
        "platform": {"enabled": True, "url": "https://p.example", "token": token},
        "forward": {"secret_access_key": s3},
    }))  # fmt: skip
    cfg = load_config(conf)
    assert cfg.platform.token.get_secret_value() == "the-platform-secret"
    assert cfg.forward.secret_access_key.get_secret_value() == "the-s3-secret"
    # a value moved to another key does not decrypt
    conf.write_text(tomli_w.dumps({"platform": {"token": s3}}))
    with pytest.raises(ConfigError, match=r"platform\.token: cannot be decrypted"):
        load_config(conf)
    # without the key, or with another station's
    conf.write_text(tomli_w.dumps({"platform": {"token": token}}))
    (tmp_path / "secrets.key").unlink()
    with pytest.raises(ConfigError, match=r"secrets key .* does not exist"):
        load_config(conf)
    secrets.new_key(tmp_path / "secrets.key")
    with pytest.raises(ConfigError, match="cannot be decrypted"):
        load_config(conf)
    # the key may come from elsewhere (systemd's LoadCredential, or STATION_SECRETS_KEY)
    other = tmp_path / "elsewhere.key"
    other.write_text(key.hex())
    monkeypatch.setenv("STATION_SECRETS_KEY", str(other))
    assert load_config(conf).platform.token.get_secret_value() == "the-platform-secret"


def test_the_protocol_document_is_the_reference_platforms() -> None:
    from station.platform.reference import openapi_document

    committed = (Path(__file__).parent.parent / "docs" / "platform-openapi.json").read_text()
    assert committed == openapi_document(), (
        "docs/platform-openapi.json is stale: python -m station.platform.reference --openapi"
    )
