"""The GA/T 947.4 officer block (ZFY_INFO): one codec for every driver.

shared/GAT947.md section 1. Five text fields in struct order, GBK on every
recorder seen: serial (at most 7 bytes of text), officer number (6), officer
name (32), unit number (12) and unit name (32). Two layouts hold them:

- "94", the common one: each field in a slot one byte larger than its text and
  ended by a NUL (8 + 7 + 33 + 13 + 33 bytes);
- "89", the older packed one: slots exactly as large as the text, short values
  padded with NULs, full ones not terminated (7 + 6 + 32 + 12 + 32 bytes).

A field's text ends at its first NUL or at the end of its slot. Nothing is ever
truncated: a value longer than its field is refused whole, so a GBK character
is never cut in two, and NUL is never written inside a value.

Drivers differ in what they accept from a recorder or a caller; each difference
is a keyword option of `encode` and `decode`, and the defaults are the strict
reading:

- `require_ids`: the serial and the officer number must not be empty or blank.
- `allow_control`: let C0 control characters and DEL through (NUL still ends a
  field on reading and is still refused on writing).
- `require_nul` (decode): in the 94 layout a field must hold its NUL; one that
  fills its slot suggests the block is really in the packed 89 layout.
- `lenient_text` (decode): the display fields (officer name, unit number, unit
  name) that are not valid text become U+FFFD, with a warning logged, rather than
  an error; the serial and the officer number always decode exactly.
- `strip` (decode): strip surrounding whitespace from every field.

Every refusal is an `OfficerBlockError` (a ValueError), which each driver maps
to its own error type. This module needs the standard library and station.drivers.base
only (itself standard library only): the ZFYV wire module,
station/drivers/usb_vendor_proto.py, uses it in the HIL guest without the station's
dependencies.
"""

from __future__ import annotations

import logging
import re
from typing import Literal

from station.drivers.base import OfficerInfo

log = logging.getLogger(__name__)

Layout = Literal["94", "89"]

# In struct order: OfficerInfo attributes, ZFY_INFO members, most bytes of text in each.
FIELDS = ("serial", "officer_no", "officer_name", "unit_no", "unit_name")
C_FIELDS = ("cSerial", "userNo", "userName", "unitNo", "unitName")
TEXT_BYTES = (7, 6, 32, 12, 32)
# The two fields that identify the recorder and its officer.
IDENTIFIERS = frozenset({"serial", "officer_no"})
# Slot sizes by layout: with a NUL after each field, or packed.
LAYOUTS: dict[str, tuple[int, ...]] = {
    "94": tuple(n + 1 for n in TEXT_BYTES),  # (8, 7, 33, 13, 33)
    "89": TEXT_BYTES,
}

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class OfficerBlockError(ValueError):
    """An officer block, or a value for one, that the codec refuses.

    `field` is the OfficerInfo attribute at fault, or None for the block as a whole.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def slot_sizes(layout: str) -> tuple[int, ...]:
    """The five field slot sizes of a layout; ValueError for an unknown layout."""
    try:
        return LAYOUTS[layout]
    except KeyError:
        raise ValueError(f"unknown officer block layout {layout!r}") from None


def block_size(layout: str) -> int:
    """Size in bytes of ZFY_INFO in a layout: 94 or 89."""
    return sum(slot_sizes(layout))


def encode(
    info: OfficerInfo,
    layout: str,
    encoding: str,
    *,
    require_ids: bool = True,
    allow_control: bool = False,
) -> bytes:
    """The officer block bytes; OfficerBlockError for a value the layout cannot hold."""
    sizes = slot_sizes(layout)
    out = bytearray()
    for attr, cfield, room, size in zip(FIELDS, C_FIELDS, TEXT_BYTES, sizes, strict=True):
        value: str = getattr(info, attr)
        if require_ids and attr in IDENTIFIERS and not value.strip():
            raise OfficerBlockError(f"{attr} must not be empty", attr)
        if not allow_control and _CONTROL.search(value):
            raise OfficerBlockError(f"{attr} {value!r} contains control characters", attr)
        try:
            raw = value.encode(encoding)
        except UnicodeEncodeError:
            raise OfficerBlockError(
                f"{attr} {value!r} cannot be written in {encoding}", attr
            ) from None
        if b"\0" in raw:
            raise OfficerBlockError(f"{attr} {value!r} contains a NUL character", attr)
        if len(raw) > room:
            raise OfficerBlockError(
                f"{attr} {value!r} is {len(raw)} bytes in {encoding}; "
                f"the {cfield} field holds at most {room}",
                attr,
            )
        out += raw.ljust(size, b"\0")
    return bytes(out)


def decode(
    data: bytes,
    layout: str,
    encoding: str,
    *,
    require_ids: bool = True,
    allow_control: bool = False,
    require_nul: bool = True,
    lenient_text: bool = False,
    strip: bool = True,
) -> OfficerInfo:
    """Parse officer block bytes; OfficerBlockError for a block the options do not allow."""
    sizes = slot_sizes(layout)
    data = bytes(data)
    if len(data) != sum(sizes):
        raise OfficerBlockError(
            f"officer block is {len(data)} bytes, layout {layout} has {sum(sizes)}"
        )
    values: dict[str, str] = {}
    pos = 0
    for attr, cfield, size in zip(FIELDS, C_FIELDS, sizes, strict=True):
        raw, nul, _ = data[pos : pos + size].partition(b"\0")
        pos += size
        if require_nul and layout == "94" and not nul:
            raise OfficerBlockError(
                f"officer block field {cfield} is not NUL-terminated "
                f"(is the block really in the packed 89-byte layout?)",
                attr,
            )
        lenient = lenient_text and attr not in IDENTIFIERS
        text = _decode_text(raw, attr, cfield, encoding, lenient)
        if (attr in IDENTIFIERS or not allow_control) and _CONTROL.search(text):
            # allow_control is for the display fields only: never in a serial or number
            raise OfficerBlockError(f"officer block field {cfield} holds control characters", attr)
        if require_ids and attr in IDENTIFIERS and not text.strip():
            hint = " (is the block really in the 94-byte layout?)" if layout == "89" else ""
            raise OfficerBlockError(f"officer block field {cfield} is empty{hint}", attr)
        values[attr] = text.strip() if strip else text
    return OfficerInfo(**values)


def _decode_text(raw: bytes, attr: str, cfield: str, encoding: str, lenient: bool) -> str:
    """One field's text; undecodable bytes are an error, or U+FFFD and a warning if lenient."""
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError:
        if not lenient:
            raise OfficerBlockError(
                f"officer block field {cfield} is not valid {encoding}: {raw.hex(' ')}", attr
            ) from None
    log.warning(
        "officer block field %s is not valid %s (%s): decoded with replacement",
        cfield,
        encoding,
        raw.hex(" "),
    )
    return raw.decode(encoding, errors="replace")
