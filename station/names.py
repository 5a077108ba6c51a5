"""Names on the recorder's card (GA/T 947 section 3) and safe names for the store.

The card is a FAT32/exFAT disk whose paths reach us as bytes: usually UTF-8 or
ASCII, sometimes GBK, occasionally garbage. `parse_card_path` turns such a path
into a `CardName` (officer, device, time, sequence number, IMP flag, kind) and
never raises on any bytes. `safe_relpath` / `safe_component` make the one file
name the store writes (`<disk>/<officer>/<serial>/<date>/<safe name>`): a
single harmless component on ext4, FAT, exFAT and Windows.

Layouts seen on cards::

    DCIM/100ANDRO/<name>                                normal
    DCIM/101ANDRO/<name>                                important (IMP)
    DCIM/SEGTEMP/<name>                                 pre-record segments
    DCIM/10xANDRO/<device no>/<officer no>/<date>/<name>  newer builds
    Record/ Photo/ Audio/ Log/ ...                      other vendors

File names are ``<officer no>_<device no>_<yyyyMMddHHmmss>_<NNNN>[IMP].<ext>``,
or, in dated folders, just ``<yyyyMMddHHmmss>_<NNNN>[IMP].<ext>``.

Decoding is done per '/'-separated component: 0x2F never occurs inside a
multibyte UTF-8 or GBK character, so splitting first is safe, and a card with
UTF-8 folders and GBK file names still reads right. Backslash is *not* a
separator: it is a legal GBK trail byte (``'乗'`` is ``b'\\x81\\x5c'``).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from typing import Literal

__all__ = [
    "CardName",
    "Kind",
    "is_important",
    "parse_card_path",
    "safe_component",
    "safe_relpath",
]

Kind = Literal["video", "photo", "audio", "log", "other"]

_KINDS: dict[str, Kind] = {
    "avi": "video",
    "mp4": "video",
    "mov": "video",
    "dav": "video",
    "jpg": "photo",
    "jpeg": "photo",
    "wav": "audio",
    "mp3": "audio",
    "aac": "audio",
    "amr": "audio",
    "txt": "log",
    "log": "log",
}

_FLAGS = re.ASCII | re.IGNORECASE

# Officer and device numbers: ASCII letters, digits and '-' (police numbers are
# digits, device numbers alphanumeric). Underscore separates the fields.
_ID = r"[0-9A-Z][0-9A-Z-]{0,31}"
# Optional IMP marker between the sequence number and the extension.
_IMP_SUFFIX = r"(?:[_-]?IMP(?:ORTANT)?)?"
_FULL_NAME = re.compile(
    rf"(?P<officer>{_ID})_(?P<device>{_ID})_(?P<ts>[0-9]{{14}})_(?P<seq>[0-9]{{4}})"
    rf"{_IMP_SUFFIX}\.[^.]+",
    _FLAGS,
)
_SHORT_NAME = re.compile(
    rf"(?P<ts>[0-9]{{14}})_(?P<seq>[0-9]{{4}}){_IMP_SUFFIX}\.[^.]+",
    _FLAGS,
)
_ID_FOLDER = re.compile(_ID, _FLAGS)
_DATE_FOLDER = re.compile(r"([0-9]{4})[-_]?([0-9]{2})[-_]?([0-9]{2})", re.ASCII)
# Folder names that belong to the layout, never officer or device numbers.
_LAYOUT_FOLDER = re.compile(
    r"DCIM|SEGTEMP|[0-9]{3}ANDRO|RECORD|PHOTO|AUDIO|LOG|VIDEO|IMP|IMPORTANT", _FLAGS
)

# IMP rule, name part (see `is_important`).
_IMP_AT_END = re.compile(r"(?<![A-Z])IMP\Z", _FLAGS)  # applied to the stem
_IMP_TOKEN = re.compile(r"_IMP(?:ORTANT)?(?![A-Z])", _FLAGS)  # applied to the name
_IMP_FOLDERS = frozenset({"IMP", "IMPORTANT"})


@dataclass(frozen=True)
class CardName:
    """One file path on a recorder's card, decoded and parsed.

    `raw` is the path exactly as on the card; `display` the path decoded for
    people, per component (UTF-8, else GBK, else UTF-8 with backslashreplace);
    `name` its last non-empty component. `officer_no`, `device_no`,
    `recorded_at` (naive local time, None if absent or not a real time) and
    `seq` come from the name forms; `important` is `is_important`; `kind` and
    `ext` (lower case, no dot, "" if none) come from the extension.
    """

    raw: bytes
    display: str
    name: str
    officer_no: str | None
    device_no: str | None
    recorded_at: datetime | None
    seq: int | None
    important: bool
    kind: Kind
    ext: str


def _decode(part: bytes) -> tuple[str, str]:
    """Decode one component: (for display, for matching).

    UTF-8 if valid, else GBK if valid, else UTF-8 with backslashreplace for
    display; the matching text uses U+FFFD instead, so that an undecodable
    byte never looks like an ASCII letter (``\\xff`` ends in ``f``).
    """
    for codec in ("utf-8", "gbk"):
        try:
            text = part.decode(codec)
        except UnicodeDecodeError:
            continue
        return text, text
    return part.decode("utf-8", "backslashreplace"), part.decode("utf-8", "replace")


def _split_ext(name: str) -> tuple[str, str]:
    """(stem, extension without dot); leading dots are not an extension ('.x' -> no ext)."""
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem.strip("."):
        return name, ""
    return stem, ext


def _ascii_upper(text: str) -> str | None:
    """`text` upper-cased if it is ASCII, else None (no Unicode case tricks)."""
    return text.upper() if text.isascii() else None


def _in_important_folder(folders: list[str]) -> bool:
    """True if a folder is IMP/IMPORTANT, or the path runs through DCIM/101ANDRO."""
    upper = [_ascii_upper(f) for f in folders]
    if any(u in _IMP_FOLDERS for u in upper):
        return True
    return any(a == "DCIM" and b == "101ANDRO" for a, b in pairwise(upper))


def is_important(name: str, folders: list[str] | tuple[str, ...] = ()) -> bool:
    """The GA/T 947 IMP rule for file `name` lying in `folders` (outermost first).

    Exactly, all case-insensitive and ASCII-only (`stem` is `name` without its
    last ``.ext``; a "letter" is A-Z):

    1. the stem ends in ``IMP`` not preceded by a letter
       (``_0001IMP.AVI``, ``_0001_IMP.AVI``, ``-IMP.MP4``, ``IMP.JPG``), or
    2. the name contains ``_IMP`` or ``_IMPORTANT`` not followed by a letter
       (``A_B_20240101120000_0001_IMP.AVI``, ``X_IMP_0001.AVI``, ``X_IMP2.AVI``), or
    3. a folder on the path is named ``IMP`` or ``IMPORTANT`` exactly, or the
       path runs through ``DCIM/101ANDRO`` (at any depth below it).

    It does not fire on ``SIMPLE.TXT``, ``IMPORT.LOG``, ``LIMP_0001.AVI``,
    ``SHRIMP.JPG``, ``X_IMPORT.LOG``, ``X_IMPACT.AVI``, ``DCIM/100ANDRO/...``,
    ``DCIM/SEGTEMP/...``, or folders such as ``IMPORTS/`` or ``101ANDRO/``
    without ``DCIM/`` in front.
    """
    stem, _ = _split_ext(name)
    if _IMP_AT_END.search(stem) or _IMP_TOKEN.search(name):
        return True
    return _in_important_folder(list(folders))


def _timestamp(ts: str) -> datetime | None:
    """Naive local datetime from yyyyMMddHHmmss, None if it is not a real time."""
    try:
        return datetime(
            int(ts[0:4]), int(ts[4:6]), int(ts[6:8]), int(ts[8:10]), int(ts[10:12]), int(ts[12:14])
        )
    except ValueError:
        return None


def _is_date_folder(folder: str) -> bool:
    """True for a real date written yyyyMMdd, yyyy-MM-dd or yyyy_MM_dd."""
    m = _DATE_FOLDER.fullmatch(folder)
    if not m:
        return False
    try:
        datetime(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return False
    return True


def _is_id_folder(folder: str) -> bool:
    """True if `folder` can be an officer or device number (and is not a layout folder)."""
    return bool(_ID_FOLDER.fullmatch(folder)) and not _LAYOUT_FOLDER.fullmatch(folder)


def parse_card_path(raw: bytes) -> CardName:
    """Parse a card path (bytes below the card root, '/'-separated); never raises on bytes.

    Empty components (doubled or trailing slashes, a leading slash) are kept in
    `display` but ignored otherwise; `name` is the last non-empty component.
    Officer and device come from the full name form, or for the short form
    from ``<device no>/<officer no>/<date>/`` folders directly above the file
    (the date folder must be a real date). See `is_important` for the IMP rule.
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise TypeError(f"card path must be bytes, not {type(raw).__name__}")
    raw = bytes(raw)
    parts = raw.split(b"/")
    decoded = [_decode(p) for p in parts]
    display = "/".join(d for d, _ in decoded)
    kept = [dm for p, dm in zip(parts, decoded, strict=True) if p]
    name, match_name = kept[-1] if kept else ("", "")
    folders = [m for _, m in kept[:-1]]

    ext = _split_ext(name)[1].lower()
    officer = device = None
    recorded_at = None
    seq = None
    m = _FULL_NAME.fullmatch(match_name)
    if m:
        officer, device = m["officer"], m["device"]
    else:
        m = _SHORT_NAME.fullmatch(match_name)
        if (
            m
            and len(folders) >= 3
            and _is_date_folder(folders[-1])
            and _is_id_folder(folders[-2])
            and _is_id_folder(folders[-3])
        ):
            device, officer = folders[-3], folders[-2]
    if m:
        recorded_at = _timestamp(m["ts"])
        seq = int(m["seq"])

    return CardName(
        raw=raw,
        display=display,
        name=name,
        officer_no=officer,
        device_no=device,
        recorded_at=recorded_at,
        seq=seq,
        important=is_important(match_name, folders),
        kind=_KINDS.get(ext, "other"),
        ext=ext,
    )


# --- safe names for the store -------------------------------------------------

_WINDOWS_INVALID = frozenset('<>:"|?*/\\')
# Bidirectional overrides and isolates: they make "evil\u202eIVA.exe" look like "evilexe.AVI".
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{dev}{n}" for dev in ("COM", "LPT") for n in "0123456789\u00b9\u00b2\u00b3"}
)
_HASH_LEN = 8  # hex digits of sha256 appended to truncated names
_MAX_EXT_BYTES = 16  # longer "extensions" are not kept apart when truncating
MIN_MAX_BYTES = 32


def _bad_char(c: str) -> bool:
    """True for characters that must not appear in a stored file name."""
    if c in _WINDOWS_INVALID or c in _BIDI_CONTROLS:
        return True
    # Cc: C0/C1 controls and DEL; Cs: lone surrogates (not encodable);
    # Zl/Zp: line and paragraph separators.
    return unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp")


def _is_reserved(name: str) -> bool:
    """True if Windows treats `name` as a device (CON, NUL.txt, com1 .tar.gz, ...)."""
    return name.split(".", 1)[0].rstrip(" ").upper() in _RESERVED


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def _truncate_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of `text` that is at most `max_bytes` in UTF-8 (whole characters)."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")


def safe_component(name: str, max_bytes: int = 200) -> str:
    """A single harmless file name (ext4, FAT, exFAT, Windows) made from `name`.

    In order: control characters (C0, C1, DEL), lone surrogates, line/paragraph
    separators, bidi overrides, ``/ \\ < > : " | ? *`` become ``_``; leading
    dots and spaces are stripped and replaced by one ``_`` (so ``.``, ``..``
    and ``.hidden`` cannot occur); a leading ``-`` or ``~`` gets a ``_`` in
    front (no option or tilde-expansion tricks); trailing dots and spaces are
    stripped; an empty result becomes ``_``; Windows device names (CON, PRN,
    AUX, NUL, COM0-9, LPT0-9, COM¹²³/LPT¹²³, CONIN$, CONOUT$, with any
    extension, any case) get a ``_`` in front. Other characters, Chinese
    included, are kept as they are.

    If the result is longer than `max_bytes` in UTF-8, the stem is cut at a
    character boundary and ``~`` plus 8 hex digits of the SHA-256 of the
    original `name` are appended before the extension (kept if at most 16
    bytes), so distinct long names stay distinct. `max_bytes` must be >= 32.
    """
    if max_bytes < MIN_MAX_BYTES:
        raise ValueError(f"max_bytes must be at least {MIN_MAX_BYTES}, not {max_bytes}")
    out = "".join("_" if _bad_char(c) else c for c in name)
    stripped = out.lstrip(". ")
    if stripped != out:
        out = "_" + stripped
    if out.startswith(("-", "~")):
        out = "_" + out
    out = out.rstrip(". ") or "_"
    if _is_reserved(out):
        out = "_" + out
    if _utf8_len(out) <= max_bytes:
        return out

    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LEN]
    tag = "~" + digest
    stem, ext = _split_ext(out)
    ext_part = "." + ext if ext else ""
    if _utf8_len(ext_part) > _MAX_EXT_BYTES + 1:
        stem, ext_part = out, ""
    # Budget >= 32 - 9 - 17 = 6 bytes, so at least one character of the
    # (already safe) start of the stem survives: no leading '.', '-', '~'.
    stem = _truncate_utf8(stem, max_bytes - len(tag) - _utf8_len(ext_part))
    return stem + tag + ext_part


def safe_relpath(raw: bytes, max_bytes: int = 200) -> str:
    """The store's file name for card path `raw`: its last component, made safe.

    Folders are dropped (the store files by officer, serial and date), so
    ``..``, absolute paths and slashes cannot escape the target folder.
    Undecodable names are taken from `CardName.display` (backslashreplace,
    ``\\`` then becomes ``_``), so they stay readable and deterministic.
    Different card paths can give the same name (``DCIM/100ANDRO/x.AVI`` and
    ``DCIM/101ANDRO/x.AVI``); the caller must handle collisions.
    """
    return safe_component(parse_card_path(raw).name, max_bytes)
