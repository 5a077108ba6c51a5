"""Card names (GA/T 947 section 3): parsing, the IMP rule, safe store names."""

from __future__ import annotations

import os
import re
import tempfile
import unicodedata
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from station.names import (
    CardName,
    is_important,
    parse_card_path,
    safe_component,
    safe_relpath,
)

OFFICER = "001234"
DEVICE = "D0012345"
TS = "20240301083015"
WHEN = datetime(2024, 3, 1, 8, 30, 15)
FULL = f"{OFFICER}_{DEVICE}_{TS}_0001"
SHORT = f"{TS}_0001"

WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {
    f"{d}{n}" for d in ("COM", "LPT") for n in "0123456789¹²³"
}


def p(text: str) -> CardName:
    return parse_card_path(text.encode())


def assert_safe(name: str, max_bytes: int = 200) -> None:
    """The portable-name rules, checked independently of the implementation."""
    assert name not in ("", ".", "..")
    assert len(name.encode("utf-8")) <= max_bytes
    assert not any(c in name for c in '/\\\0<>:"|?*')
    assert not any(unicodedata.category(c) in ("Cc", "Cs") for c in name)
    assert not name.startswith((".", " ", "-", "~"))
    assert not name.endswith((".", " "))
    assert name.split(".", 1)[0].rstrip(" ").upper() not in WINDOWS_RESERVED


# --- name forms ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("ext", "kind"),
    [
        ("AVI", "video"),
        ("MP4", "video"),
        ("MOV", "video"),
        ("DAV", "video"),
        ("JPG", "photo"),
        ("JPEG", "photo"),
        ("WAV", "audio"),
        ("MP3", "audio"),
        ("AAC", "audio"),
        ("AMR", "audio"),
        ("TXT", "log"),
        ("LOG", "log"),
        ("avi", "video"),
        ("Mp4", "video"),
        ("jpg", "photo"),
        ("BIN", "other"),
        ("DAT", "other"),
    ],
)
def test_full_name_every_extension(ext: str, kind: str) -> None:
    c = p(f"DCIM/100ANDRO/{FULL}.{ext}")
    assert c.officer_no == OFFICER
    assert c.device_no == DEVICE
    assert c.recorded_at == WHEN
    assert c.seq == 1
    assert c.kind == kind
    assert c.ext == ext.lower()
    assert not c.important
    assert c.name == f"{FULL}.{ext}"
    assert c.display == f"DCIM/100ANDRO/{FULL}.{ext}"
    assert c.raw == f"DCIM/100ANDRO/{FULL}.{ext}".encode()


def test_full_name_at_card_root_and_other_layouts() -> None:
    for folder in ("", "Record/", "Photo/", "Audio/", "Log/", "DCIM/SEGTEMP/"):
        c = p(f"{folder}{FULL}.MP4")
        assert (c.officer_no, c.device_no, c.recorded_at, c.seq) == (OFFICER, DEVICE, WHEN, 1)
        assert not c.important


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        (f"Record/{FULL}.MP4", "video"),
        (f"Photo/{FULL}.JPG", "photo"),
        (f"Audio/{FULL}.WAV", "audio"),
        (f"Log/{FULL}.LOG", "log"),
        ("Log/system.txt", "log"),
    ],
)
def test_record_photo_audio_log_layouts(path: str, kind: str) -> None:
    c = p(path)
    assert c.kind == kind
    assert not c.important


def test_letters_and_dashes_in_numbers() -> None:
    c = p(f"JX-0012_ab12CD_{TS}_0999.avi")
    assert (c.officer_no, c.device_no, c.seq) == ("JX-0012", "ab12CD", 999)


def test_sequence_numbers() -> None:
    assert p(f"{OFFICER}_{DEVICE}_{TS}_0999.AVI").seq == 999
    assert p(f"{OFFICER}_{DEVICE}_{TS}_0001.AVI").seq == 1
    assert p(f"{OFFICER}_{DEVICE}_{TS}_0000.AVI").seq == 0


@pytest.mark.parametrize(
    "ts",
    [
        "20241301083015",  # month 13
        "20240230083015",  # 30 February
        "00000101000000",  # year 0
        "20240301250000",  # hour 25
        "20240301236000",  # minute 60
        "20240301235960",  # second 60
    ],
)
def test_invalid_timestamp_gives_none_but_keeps_the_rest(ts: str) -> None:
    c = p(f"DCIM/100ANDRO/{OFFICER}_{DEVICE}_{ts}_0007IMP.AVI")
    assert c.recorded_at is None
    assert (c.officer_no, c.device_no, c.seq, c.important) == (OFFICER, DEVICE, 7, True)


@pytest.mark.parametrize(
    "name",
    [
        "001234_D01_2024030108301_0001.AVI",  # 13-digit time
        "001234_D01_20240301083015_001.AVI",  # 3-digit sequence
        "001234_D01_20240301083015_00001.AVI",  # 5-digit sequence
        "001234_D01_20240301083015_0001",  # no extension
        "001234_20240301083015_0001.AVI",  # one number only
        "001234_D01_20240301083015_0001(1).AVI",
        "张三_D01_20240301083015_0001.AVI",  # officer not a number
        "IMG_0001.JPG",
        "README.TXT",
    ],
)
def test_names_outside_the_forms(name: str) -> None:
    c = p(f"Record/{name}")
    assert (c.officer_no, c.device_no, c.recorded_at, c.seq) == (None, None, None, None)


def test_short_name_outside_dated_folders() -> None:
    c = p(f"DCIM/100ANDRO/{SHORT}.AVI")
    assert (c.officer_no, c.device_no) == (None, None)
    assert (c.recorded_at, c.seq, c.kind) == (WHEN, 1, "video")


@pytest.mark.parametrize("top", ["DCIM/100ANDRO", "DCIM/101ANDRO", "DCIM/SEGTEMP", "Record", ""])
@pytest.mark.parametrize("date", ["20240301", "2024-03-01", "2024_03_01"])
def test_short_name_in_nested_dated_layout(top: str, date: str) -> None:
    path = f"{top}/{DEVICE}/{OFFICER}/{date}/{SHORT}.MP4".lstrip("/")
    c = p(path)
    assert (c.device_no, c.officer_no, c.recorded_at, c.seq) == (DEVICE, OFFICER, WHEN, 1)
    assert c.important == (top == "DCIM/101ANDRO")
    assert c.name == f"{SHORT}.MP4"


def test_full_name_wins_over_dated_folders() -> None:
    c = p(f"DCIM/100ANDRO/OTHERDEV/999999/20240301/{FULL}.AVI")
    assert (c.officer_no, c.device_no) == (OFFICER, DEVICE)


@pytest.mark.parametrize(
    "path",
    [
        f"DCIM/100ANDRO/20240301/{SHORT}.AVI",  # layout folders are not numbers
        f"DCIM/101ANDRO/IMP/20240301/{SHORT}.AVI",
        f"Record/Video/20240301/{SHORT}.AVI",
        f"{DEVICE}/{OFFICER}/20241301/{SHORT}.AVI",  # not a real date
        f"{DEVICE}/{OFFICER}/notadate/{SHORT}.AVI",
        f"{DEVICE}/{OFFICER}/{SHORT}.AVI",  # no date folder
        f"{OFFICER}/20240301/{SHORT}.AVI",  # one number only
        f"{DEVICE}/张三/20240301/{SHORT}.AVI",
        f"{DEVICE}/a_b/20240301/{SHORT}.AVI",
    ],
)
def test_dated_layout_needs_real_numbers_and_date(path: str) -> None:
    c = p(path)
    assert (c.officer_no, c.device_no) == (None, None)
    assert c.seq == 1


# --- the IMP rule ---------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        f"DCIM/100ANDRO/{FULL}IMP.AVI",
        f"DCIM/100ANDRO/{FULL}_IMP.AVI",
        f"DCIM/100ANDRO/{FULL}-IMP.AVI",
        f"DCIM/100ANDRO/{FULL}imp.avi",
        f"DCIM/100ANDRO/{FULL}_Imp.Mp4",
        f"DCIM/100ANDRO/{FULL}_IMPORTANT.AVI",
        f"DCIM/100ANDRO/{SHORT}IMP.AVI",
        f"DCIM/100ANDRO/{SHORT}_IMP.JPG",
        f"DCIM/100ANDRO/{OFFICER}_IMP_{TS}_0001.AVI",  # _IMP anywhere
        "Record/X_IMP_0001.AVI",
        "Record/X_IMP2.AVI",
        "Record/_IMP.AVI",
        "Record/IMP.JPG",
        "Record/0001IMP",  # no extension
        "Record/张三IMP.AVI",
        f"DCIM/101ANDRO/{FULL}.AVI",
        f"dcim/101andro/{FULL}.AVI",
        f"DCIM/101ANDRO/{DEVICE}/{OFFICER}/20240301/{SHORT}.AVI",
        f"DCIM/101ANDRO/any/depth/below/{FULL}.JPG",
        f"IMP/{FULL}.AVI",
        f"Record/imp/{FULL}.AVI",
        f"Record/Important/{FULL}.AVI",
        f"IMPORTANT/{DEVICE}/{OFFICER}/20240301/{SHORT}.AVI",
    ],
)
def test_important(path: str) -> None:
    assert p(path).important


@pytest.mark.parametrize(
    "path",
    [
        f"DCIM/100ANDRO/{FULL}.AVI",
        f"DCIM/SEGTEMP/{FULL}.AVI",
        f"DCIM/100ANDRO/{DEVICE}/{OFFICER}/20240301/{SHORT}.AVI",
        "Log/SIMPLE.TXT",
        "Log/IMPORT.LOG",
        "Record/LIMP_0001.AVI",
        "Record/SHRIMP.JPG",
        "Record/LIMP.AVI",
        "Record/X_IMPORT.LOG",
        "Record/X_IMPACT.AVI",
        "Record/X_IMPL.TXT",
        "Record/IMPOSSIBLE.MP4",
        "Record/SIMP_IMPRINT.JPG",
        "Record/x.IMP",  # IMP as the extension
        f"IMPORTS/{FULL}.AVI",
        f"SIMPLE/{FULL}.AVI",
        f"Record/IMP_/{FULL}.AVI",
        f"101ANDRO/{FULL}.AVI",  # not below DCIM
        f"DCIM/102ANDRO/{FULL}.AVI",
        f"DCIM/x/101ANDRO/{FULL}.AVI",
        f"DCIM/101ANDROX/{FULL}.AVI",
        "",
        "/",
    ],
)
def test_not_important(path: str) -> None:
    assert not p(path).important


def test_important_folder_is_not_the_file() -> None:
    # A *file* named IMPORTANT (no extension) is marked by the name rule, not the folder rule.
    assert is_important("IMPORTANT", ()) is False
    assert is_important("x.AVI", ("DCIM", "101ANDRO")) is True
    assert is_important("x.AVI", ("DCIM", "100ANDRO")) is False


def test_unicode_case_tricks_do_not_match() -> None:
    # U+0131 dotless i upper-cases to "I" in Python; only ASCII counts.
    assert not p(f"Record/ımp/{FULL}.AVI").important
    assert not p("Record/X_ımp.AVI").important


def test_undecodable_byte_before_imp() -> None:
    # b"\xff" is displayed as "\\xff", whose "f" must not count as a letter.
    c = parse_card_path(b"Record/\xffIMP.AVI")
    assert c.important
    assert c.display == "Record/\\xffIMP.AVI"


# --- encodings ------------------------------------------------------------------


def test_gbk_name() -> None:
    raw = "张三_0001.AVI".encode("gbk")
    c = parse_card_path(raw)
    assert c.display == c.name == "张三_0001.AVI"
    assert (c.kind, c.ext) == ("video", "avi")
    assert safe_relpath(raw) == "张三_0001.AVI"


def test_utf8_name() -> None:
    raw = "Record/张三_0001.AVI".encode()
    c = parse_card_path(raw)
    assert c.name == "张三_0001.AVI"
    assert safe_relpath(raw) == "张三_0001.AVI"


def test_utf8_folders_with_gbk_name() -> None:
    raw = "录像/".encode() + "李四_IMP.MP4".encode("gbk")
    c = parse_card_path(raw)
    assert c.display == "录像/李四_IMP.MP4"
    assert c.important


def test_gbk_trail_byte_backslash_is_not_a_separator() -> None:
    raw = "乗务_0001.AVI".encode("gbk")
    assert b"\\" in raw
    c = parse_card_path(raw)
    assert c.name == "乗务_0001.AVI"
    assert safe_relpath(raw) == "乗务_0001.AVI"


def test_gbk_dated_layout() -> None:
    raw = f"DCIM/101ANDRO/{DEVICE}/{OFFICER}/20240301/".encode() + f"{SHORT}.AVI".encode("gbk")
    c = parse_card_path(raw)
    assert (c.officer_no, c.device_no, c.important) == (OFFICER, DEVICE, True)


@pytest.mark.parametrize(
    "raw",
    [
        b"Record/\xff\xfe_0001.AVI",  # invalid UTF-8 and invalid GBK
        b"Record/\x80abc.AVI",  # 0x80 alone is not GBK
        b"Record/abc\xd5.AVI",  # truncated GBK / UTF-8 sequence
        b"Record/\xed\xa0\x80.AVI",  # UTF-8-encoded surrogate
        b"Record/\xc0\xaf\xff.AVI",  # overlong "/" (valid GBK alone), then 0xFF
    ],
)
def test_undecodable_names_are_readable_and_deterministic(raw: bytes) -> None:
    c = parse_card_path(raw)
    assert "\\x" in c.name
    assert c.display == raw.decode("utf-8", "backslashreplace")
    assert c.ext == "avi"
    s = safe_relpath(raw)
    assert s == safe_relpath(raw)
    assert s.endswith(".AVI")
    assert "_x" in s
    assert_safe(s)


def test_invalid_utf8_but_valid_gbk_prefers_gbk() -> None:
    assert parse_card_path(b"\xd5\xc5").name == "张"
    assert parse_card_path(b"\xc0\xaf").name == "蜡"  # overlong UTF-8 "/" is GBK


def test_raw_is_kept_exactly() -> None:
    raw = b"//DCIM//./100ANDRO/\xff/"
    c = parse_card_path(raw)
    assert c.raw == raw
    assert c.display == "//DCIM//./100ANDRO/\\xff/"
    assert c.name == "\\xff"


def test_bytearray_and_memoryview_accepted_str_rejected() -> None:
    raw = f"Record/{FULL}.AVI".encode()
    assert parse_card_path(bytearray(raw)) == parse_card_path(raw)
    assert parse_card_path(memoryview(raw)) == parse_card_path(raw)
    assert isinstance(parse_card_path(bytearray(raw)).raw, bytes)
    with pytest.raises(TypeError):
        parse_card_path("Record/x.AVI")  # type: ignore[arg-type]


# --- hostile paths --------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"/etc/passwd", "passwd"),
        (b"../../../etc/passwd", "passwd"),
        (b"DCIM/../../x.AVI", "x.AVI"),
        (b"..", "_"),
        (b".", "_"),
        (b"a/..", "_"),
        (b"a/.", "_"),
        (b"...", "_"),
        (b"", "_"),
        (b"/", "_"),
        (b"//", "_"),
        (b"Record/", "Record"),  # trailing slash: last non-empty component
        (b".hidden", "_hidden"),
        (b"..foo.AVI", "_foo.AVI"),
        (b" .x", "_x"),
        (b"x.AVI. . ", "x.AVI"),
        (b"name...", "name"),
        (b"-rf", "_-rf"),
        (b"~root", "_~root"),
        (b"a\\b.AVI", "a_b.AVI"),
        (b"..\\..\\x", "__.._x"),
        (b"C:x.AVI", "C_x.AVI"),
        (b'a<b>c:d"e|f?g*h.AVI', "a_b_c_d_e_f_g_h.AVI"),
        (b"a\x00b.AVI", "a_b.AVI"),
        (b"a\nb\rc\td\x1b[31m.AVI", "a_b_c_d_[31m.AVI"),
        (b"a\x7fb.AVI", "a_b.AVI"),
        (b"Record/x.AVI\x00/../../etc", "etc"),
    ],
)
def test_hostile_paths(raw: bytes, expected: str) -> None:
    assert safe_relpath(raw) == expected
    assert_safe(expected)


@pytest.mark.parametrize(
    "name",
    [
        "CON",
        "con",
        "PRN.AVI",
        "aux.txt",
        "NUL.tar.gz",
        "Nul",
        "COM1",
        "com9.log",
        "LPT1.JPG",
        "lpt9",
        "COM0",
        "COM¹.AVI",
        "LPT³",
        "CONIN$",
        "conout$.txt",
        "CON .AVI",
        "CON. ",
    ],
)
def test_windows_reserved_names_get_a_prefix(name: str) -> None:
    out = safe_component(name)
    assert out.startswith("_")
    assert_safe(out)
    assert safe_relpath(f"Record/{name}".encode()) == out


@pytest.mark.parametrize("name", ["CONSOLE.AVI", "COM10", "LPT", "NULL.TXT", "AUXX", "XCON"])
def test_not_reserved(name: str) -> None:
    assert safe_component(name) == name


def test_unicode_kept() -> None:
    for name in ("张三_0001.AVI", "警号１２３.MP4", "ÄÖÜ é.jpg", "录像 2024.MOV", "😀.AVI"):
        assert safe_component(name) == name


def test_bidi_override_surrogates_and_separators_replaced() -> None:
    assert safe_component("evil\u202eIVA.exe") == "evil_IVA.exe"
    assert safe_component("a\udcffb.AVI") == "a_b.AVI"
    assert safe_component("a\u2028b\u2029c\x85.AVI") == "a_b_c_.AVI"


# --- length ---------------------------------------------------------------------


def test_300_byte_name() -> None:
    name = "A" * 296 + ".AVI"
    assert len(name) == 300
    out = safe_relpath(f"Record/{name}".encode())
    assert len(out.encode()) <= 200
    assert out.endswith(".AVI")
    assert out.startswith("A" * 150)
    assert "~" in out
    assert_safe(out)


def test_short_names_not_touched() -> None:
    name = "A" * 196 + ".AVI"
    assert safe_component(name) == name
    assert "~" in safe_component("A" * 197 + ".AVI")


def test_chinese_is_never_cut_mid_character() -> None:
    for n in range(60, 110):
        name = "张" * n + ".MP4"
        out = safe_component(name)
        out.encode("utf-8")  # whole characters only
        assert len(out.encode()) <= 200
        assert out.endswith(".MP4")
        assert out.startswith("张")
        assert out == name or re.fullmatch(r"张+~[0-9a-f]{8}\.MP4", out)


def test_four_byte_characters_and_small_limit() -> None:
    out = safe_component("😀" * 100 + ".AVI", max_bytes=32)
    assert len(out.encode()) <= 32
    assert out.startswith("😀")
    assert out.endswith(".AVI")


def test_truncated_names_stay_distinct_and_deterministic() -> None:
    a = "A" * 300 + "1.AVI"
    b = "A" * 300 + "2.AVI"
    assert safe_component(a) != safe_component(b)
    assert safe_component(a) == safe_component(a)
    # the hash is of the original, so names that only differ in replaced characters differ too
    assert safe_component("A" * 300 + "<.AVI") != safe_component("A" * 300 + ">.AVI")


def test_long_extension_is_not_kept_apart() -> None:
    out = safe_component("a." + "b" * 300)
    assert len(out.encode()) <= 200
    assert out.startswith("a.bbb")
    assert_safe(out)


def test_truncation_keeps_reserved_prefix_and_leading_fix() -> None:
    assert safe_component("CON." + "x" * 300).startswith("_CON.")
    assert safe_component("." * 300 + "x").startswith("_")
    assert_safe(safe_component("CON." + "x" * 300))


def test_max_bytes_too_small() -> None:
    with pytest.raises(ValueError):
        safe_component("x", max_bytes=31)
    with pytest.raises(ValueError):
        safe_relpath(b"x", max_bytes=0)


# --- properties -----------------------------------------------------------------

# Paths made of card-like pieces, so that the interesting branches are reached
# far more often than with uniformly random bytes.
_PIECES = st.sampled_from(
    [
        b"DCIM",
        b"100ANDRO",
        b"101ANDRO",
        b"SEGTEMP",
        b"IMP",
        b"Record",
        b"..",
        b".",
        b"",
        b"/",
        b"\\",
        b"\x00",
        b"\xff",
        b"\x80",
        "张三".encode("gbk"),
        "张三".encode(),
        b"\x81\\",
        b"_IMP",
        b"IMP.",
        b".AVI",
        b"CON",
        b" ",
        DEVICE.encode(),
        OFFICER.encode(),
        b"20240301",
        TS.encode(),
        b"_0001",
    ]
)
_PATHS = st.one_of(
    st.binary(max_size=400),
    st.lists(st.one_of(_PIECES, st.binary(max_size=8)), max_size=40).map(b"".join),
    st.lists(
        st.sampled_from([b"\xe5\xbc\xa0", b"\xd5\xc5", b"A", b"\xf0\x9f\x98\x80"]), max_size=150
    )
    .map(b"".join)
    .map(lambda b: b + b".AVI"),
)
_MAX = st.integers(min_value=32, max_value=255)


@settings(max_examples=1500, deadline=None)
@given(raw=_PATHS, max_bytes=_MAX)
def test_safe_relpath_properties(raw: bytes, max_bytes: int) -> None:
    out = safe_relpath(raw, max_bytes)
    assert "/" not in out
    assert "\0" not in out
    assert out not in ("", ".", "..")
    assert len(out.encode("utf-8")) <= max_bytes
    assert safe_relpath(raw, max_bytes) == out
    assert_safe(out, max_bytes)
    base = "/srv/store/001234/D0012345/20240301"
    joined = os.path.normpath(os.path.join(base, out))
    assert os.path.dirname(joined) == base
    assert os.path.commonpath([base, joined]) == base


@settings(max_examples=1500, deadline=None)
@given(
    name=st.text(st.characters(exclude_categories=()), max_size=300),  # surrogates included
    max_bytes=_MAX,
)
def test_safe_component_properties(name: str, max_bytes: int) -> None:
    out = safe_component(name, max_bytes)
    assert_safe(out, max_bytes)
    assert safe_component(name, max_bytes) == out
    # already safe names are a fixed point
    assert safe_component(out, max_bytes) == out


@settings(max_examples=1500, deadline=None)
@given(raw=_PATHS)
def test_parse_card_path_never_raises(raw: bytes) -> None:
    c = parse_card_path(raw)
    assert c.raw == raw
    assert "/" not in c.name
    assert c.kind in ("video", "photo", "audio", "log", "other")
    assert c.ext == c.ext.lower()
    assert c.display.count("/") == raw.count(b"/")
    assert (c.officer_no is None) == (c.device_no is None)


@settings(max_examples=300, deadline=None)
@given(raw=_PATHS)
def test_safe_names_can_be_created_on_this_filesystem(raw: bytes) -> None:
    out = safe_relpath(raw)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, out)
        with open(path, "wb") as f:
            f.write(b"x")
        assert os.listdir(d) == [out]
