"""Recorder registration (S36): binding a recorder's serial to an officer."""

from __future__ import annotations

import json
from dataclasses import asdict

from sqlalchemy import select
from sqlalchemy.orm import Session

from station.catalog import Catalog, Officer, Recorder
from station.catalog.db import append_event
from station.catalog.models import utcnow
from station.drivers.base import OfficerInfo
from station.errors import RegistrationError

WAITING_FOR_APPROVAL = "waiting for an administrator to register it"


def block_json(info: OfficerInfo) -> str:
    return json.dumps(asdict(info), ensure_ascii=False, sort_keys=True)


def officer_for(s: Session, info: OfficerInfo) -> Officer:
    """The officer named by a recorder's block, created if the station does not know it."""
    officer = s.scalars(select(Officer).where(Officer.officer_no == info.officer_no)).first()
    if officer is None:
        officer = Officer(
            officer_no=info.officer_no,
            name=info.officer_name,
            unit_no=info.unit_no,
            unit_name=info.unit_name,
        )
        s.add(officer)
        s.flush()
    return officer


def claimed_by_other(s: Session, officer_no: str, serial: str) -> str | None:
    """The serial of another registered recorder bound to officer `officer_no`, if any:
    in automatic mode a recorder's own claim must not take another's officer."""
    return s.scalar(
        select(Recorder.serial)
        .join(Officer, Officer.id == Recorder.officer_id)
        .where(
            Officer.officer_no == officer_no,
            Recorder.status == "registered",
            Recorder.serial != serial,
        )
        .limit(1)
    )


def register(
    s: Session,
    r: Recorder,
    block: OfficerInfo,
    *,
    how: str,
    by: str,
    officer: OfficerInfo | None = None,
    port: int | None = None,
) -> Officer:
    """Bind recorder `r` to `officer` (default: the one its block names) and remember the
    block it reports now as its registered block: later dockings must report the same."""
    bound = officer_for(s, officer or block)
    r.status, r.officer_id = "registered", bound.id
    r.registered_how, r.registered_at, r.registered_by = how, utcnow(), by
    r.block_officer_no, r.block_officer_name = block.officer_no, block.officer_name
    r.block_unit_no, r.block_unit_name = block.unit_no, block.unit_name
    s.flush()
    append_event(
        s,
        "recorder_registered",
        f"{r.serial} assigned to officer {bound.officer_no}",
        actor=by,
        port=port,
        serial=r.serial,
        officer_no=bound.officer_no,
        how=how,
    )
    return bound


def approve(
    catalog: Catalog, serial: str, *, officer_no: str | None = None, by: str = "administrator"
) -> Recorder:
    """Register (or re-confirm) a recorder by hand, to `officer_no` or to the officer its
    last reported block names; the reported block becomes the registered one."""
    with catalog.write() as s:
        r = s.scalars(select(Recorder).where(Recorder.serial == serial)).first()
        if r is None:
            raise RegistrationError(f"no recorder with serial {serial!r} has docked here")
        reported = json.loads(r.reported_block or "{}")
        if not reported.get("officer_no") and not officer_no:
            raise RegistrationError(f"recorder {serial} reports no officer: give --officer-no")
        block = OfficerInfo(
            serial=serial,
            officer_no=reported.get("officer_no", ""),
            officer_name=reported.get("officer_name", ""),
            unit_no=reported.get("unit_no", ""),
            unit_name=reported.get("unit_name", ""),
        )
        officer = None
        if officer_no and officer_no != block.officer_no:
            officer = OfficerInfo(serial=serial, officer_no=officer_no)
        register(s, r, block, how="manual", by=by, officer=officer)
        s.flush()
        s.expunge(r)
        return r
