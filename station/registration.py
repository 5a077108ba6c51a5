"""Recorder registration (S36): binding a recorder's serial to an officer."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from drivers.base import OfficerInfo
from station.catalog import Catalog, Officer, Recorder
from station.catalog.db import append_event
from station.catalog.models import utcnow


class RegistrationError(Exception):
    """The registration request cannot be carried out."""


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


def approve(
    catalog: Catalog, serial: str, *, officer_no: str | None = None, by: str = "administrator"
) -> Recorder:
    """Register a recorder by hand, to `officer_no` or to the officer its block names."""
    with catalog.write() as s:
        r = s.scalars(select(Recorder).where(Recorder.serial == serial)).first()
        if r is None:
            raise RegistrationError(f"no recorder with serial {serial!r} has docked here")
        no = officer_no or r.block_officer_no
        if not no:
            raise RegistrationError(f"recorder {serial} reports no officer: give --officer-no")
        same = no == r.block_officer_no
        officer = officer_for(
            s,
            OfficerInfo(
                serial=serial,
                officer_no=no,
                officer_name=r.block_officer_name if same else "",
                unit_no=r.block_unit_no if same else "",
                unit_name=r.block_unit_name if same else "",
            ),
        )
        r.status, r.officer_id = "registered", officer.id
        r.registered_how, r.registered_at, r.registered_by = "manual", utcnow(), by
        append_event(
            s,
            "recorder_registered",
            f"{serial} assigned to officer {no}",
            actor=by,
            serial=serial,
            officer_no=no,
            how="manual",
        )
        s.flush()
        s.expunge(r)
        return r
