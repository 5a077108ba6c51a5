"""The shared officer block codec (station/drivers/zfy.py): both layouts, limits, and each option.

The last tests pin down what each driver asks of the codec, so that the three drivers'
differences stay visible in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from station.drivers import scsi_dv16, usb_vendor_proto, vendor_library, zfy
from station.drivers.base import OfficerInfo, ProtocolError

NAME_32 = "张三李四王五赵六孙七周八吴九郑十"  # 16 characters, 32 bytes in GBK
FULL = OfficerInfo("B100001", "100001", NAME_32, "110101000000", "北京市公安局城关派出所交警一大队")
SHORT = OfficerInfo("B2", "7", "李四", "", "城关派出所")
# (field, offset, slot) in each layout
OFFSETS = {
    "94": [("serial", 0, 8), ("officer_no", 8, 7), ("officer_name", 15, 33), ("unit_no", 48, 13),
           ("unit_name", 61, 33)],
    "89": [("serial", 0, 7), ("officer_no", 7, 6), ("officer_name", 13, 32), ("unit_no", 45, 12),
           ("unit_name", 57, 32)],
}  # fmt: skip


def test_layout_tables() -> None:
    assert zfy.LAYOUTS == {"94": (8, 7, 33, 13, 33), "89": (7, 6, 32, 12, 32)}
    assert (zfy.block_size("94"), zfy.block_size("89")) == (94, 89)
    assert tuple(OfficerInfo.__dataclass_fields__) == zfy.FIELDS
    with pytest.raises(ValueError, match="unknown officer block layout '95'") as info:
        zfy.block_size("95")
    assert not isinstance(info.value, zfy.OfficerBlockError)  # a configuration bug, not data


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["94", "89"])
@pytest.mark.parametrize("info", [FULL, SHORT], ids=["at-the-limit", "short"])
def test_round_trip_gbk(layout: str, info: OfficerInfo) -> None:
    raw = zfy.encode(info, layout, "gbk")
    assert len(raw) == int(layout)
    for attr, offset, slot in OFFSETS[layout]:
        text = getattr(info, attr).encode("gbk")
        assert raw[offset : offset + slot] == text.ljust(slot, b"\0")
    assert zfy.decode(raw, layout, "gbk") == info
    assert zfy.decode(bytearray(raw), layout, "gbk") == info
    assert zfy.decode(memoryview(raw), layout, "gbk") == info


def test_full_fields_are_packed_without_terminators_in_89() -> None:
    raw = zfy.encode(FULL, "89", "gbk")
    assert raw[:13] == b"B100001100001"
    assert raw[13:45] == NAME_32.encode("gbk")
    assert b"\0" not in raw  # every field full
    assert zfy.encode(FULL, "94", "gbk").count(b"\0") == 5  # one terminator each


def test_gbk_name_of_exactly_32_bytes_fits_and_33_does_not() -> None:
    assert len(NAME_32.encode("gbk")) == 32
    for too_long in (NAME_32 + "A", "A" + NAME_32, NAME_32[:15] + "AAA", "张" * 17):
        for layout in ("94", "89"):
            with pytest.raises(zfy.OfficerBlockError, match="at most 32") as info:
                zfy.encode(OfficerInfo("B100001", "100001", too_long), layout, "gbk")
            assert info.value.field == "officer_name"
            assert "userName" in str(info.value) and "bytes in gbk" in str(info.value)


@pytest.mark.parametrize(
    ("attr", "value", "limit"),
    [("serial", "B1000012", 7), ("officer_no", "1000012", 6), ("unit_no", "1" * 13, 12),
     ("unit_name", "城" * 16 + "A", 32)],
)  # fmt: skip
def test_every_field_refuses_one_byte_too_many(attr: str, value: str, limit: int) -> None:
    fields = {"serial": "B100001", "officer_no": "100001", attr: value}
    with pytest.raises(zfy.OfficerBlockError, match=f"{attr} .* at most {limit}") as info:
        zfy.encode(OfficerInfo(**fields), "94", "gbk")
    assert info.value.field == attr
    assert isinstance(info.value, ValueError)


def test_unencodable_text() -> None:
    with pytest.raises(zfy.OfficerBlockError, match="cannot be written in gbk"):
        zfy.encode(OfficerInfo("B100001", "100001", "👮"), "94", "gbk")
    with pytest.raises(zfy.OfficerBlockError, match=r"serial .* cannot be written in ascii"):
        zfy.encode(OfficerInfo("B10000号", "100001"), "94", "ascii")


@given(
    st.text(alphabet="ABZ019-张三李四城关派出所", min_size=1, max_size=7),
    st.text(alphabet="0123456789", min_size=1, max_size=6),
    st.text(alphabet="ab 张三 李四", max_size=16),
    st.sampled_from(["94", "89"]),
)
def test_round_trip_property(serial: str, officer_no: str, name: str, layout: str) -> None:
    info = OfficerInfo(serial, officer_no, name.strip())
    limits = dict(zip(zfy.FIELDS, zfy.TEXT_BYTES, strict=True))
    if all(len(getattr(info, a).encode("gbk")) <= n for a, n in limits.items()):
        assert zfy.decode(zfy.encode(info, layout, "gbk"), layout, "gbk") == info
    else:
        with pytest.raises(zfy.OfficerBlockError, match="at most"):
            zfy.encode(info, layout, "gbk")


# --- control characters ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["a\nb", "tab\there", "del\x7f", "bell\x07"])
def test_control_characters_are_refused_by_default(bad: str) -> None:
    with pytest.raises(zfy.OfficerBlockError, match=r"officer_name .* control characters"):
        zfy.encode(OfficerInfo("B100001", "100001", bad), "94", "gbk")
    raw = zfy.encode(OfficerInfo("B100001", "100001", bad), "94", "gbk", allow_control=True)
    with pytest.raises(zfy.OfficerBlockError, match="userName holds control characters"):
        zfy.decode(raw, "94", "gbk")
    assert zfy.decode(raw, "94", "gbk", allow_control=True).officer_name == bad


def test_nul_is_never_written() -> None:
    for allow_control in (False, True):
        with pytest.raises(zfy.OfficerBlockError, match=r"unit_name .*(NUL|control)"):
            zfy.encode(
                OfficerInfo("B100001", "100001", unit_name="a\0b"),
                "89",
                "gbk",
                allow_control=allow_control,
            )


# --- the NUL of the 94 layout ---------------------------------------------------------------


def test_missing_nul_in_the_94_layout() -> None:
    raw = bytearray(zfy.encode(FULL, "94", "gbk"))
    raw[0:8] = b"B1000012"  # the serial fills its slot: no terminator
    with pytest.raises(zfy.OfficerBlockError, match=r"cSerial is not NUL-terminated .*89-byte"):
        zfy.decode(bytes(raw), "94", "gbk")
    # read to the end of the slot, as a reader that only splits at NULs does
    assert zfy.decode(bytes(raw), "94", "gbk", require_nul=False).serial == "B1000012"


def test_junk_after_the_nul_is_ignored() -> None:
    raw = bytearray(zfy.encode(FULL, "94", "gbk"))
    raw[8:15] = b"1\0junk\0"
    assert zfy.decode(bytes(raw), "94", "gbk").officer_no == "1"


def test_a_packed_block_read_as_94_and_the_other_way_round() -> None:
    packed = zfy.encode(FULL, "89", "gbk")
    with pytest.raises(zfy.OfficerBlockError, match="89 bytes, layout 94 has 94") as info:
        zfy.decode(packed, "94", "gbk")
    assert info.value.field is None
    # a 94-byte block read through an 89-byte window: the serial's NUL starts userNo
    common = zfy.encode(OfficerInfo("B100001", "100001"), "94", "gbk")
    with pytest.raises(zfy.OfficerBlockError, match=r"userNo is empty .*94-byte"):
        zfy.decode(common[:89], "89", "gbk")


# --- empty serial and officer number --------------------------------------------------------


@pytest.mark.parametrize("layout", ["94", "89"])
def test_empty_serial_or_officer_number(layout: str) -> None:
    for info, attr in (
        (OfficerInfo("", "100001"), "serial"),
        (OfficerInfo("  ", "100001"), "serial"),
        (OfficerInfo("B100001", ""), "officer_no"),
    ):
        with pytest.raises(zfy.OfficerBlockError, match=f"{attr} must not be empty") as e:
            zfy.encode(info, layout, "gbk")
        assert e.value.field == attr
        raw = zfy.encode(info, layout, "gbk", require_ids=False)
        cfield = "cSerial" if attr == "serial" else "userNo"
        with pytest.raises(zfy.OfficerBlockError, match=f"{cfield} is empty"):
            zfy.decode(raw, layout, "gbk")
        assert zfy.decode(raw, layout, "gbk", require_ids=False, strip=False) == info
    assert zfy.decode(bytes(int(layout)), layout, "gbk", require_ids=False) == OfficerInfo("", "")


def test_the_other_fields_may_be_empty() -> None:
    info = OfficerInfo("B100001", "100001")
    for layout in ("94", "89"):
        raw = zfy.encode(info, layout, "gbk")
        assert raw.rstrip(b"\0") == (b"B100001\x00100001" if layout == "94" else b"B100001100001")
        assert zfy.decode(raw, layout, "gbk") == info


# --- undecodable text, whitespace -----------------------------------------------------------


def test_undecodable_text_is_an_error_unless_lenient(caplog: pytest.LogCaptureFixture) -> None:
    raw = bytearray(zfy.encode(OfficerInfo("B100001", "100001"), "94", "gbk"))
    raw[15:46] = NAME_32.encode("gbk")[:31]  # the last character cut in two
    with pytest.raises(zfy.OfficerBlockError, match="userName is not valid gbk: d5 c5") as e:
        zfy.decode(bytes(raw), "94", "gbk")
    assert e.value.field == "officer_name"
    with caplog.at_level(logging.WARNING, logger="station.drivers.zfy"):
        info = zfy.decode(bytes(raw), "94", "gbk", lenient_text=True)
    assert info.officer_name == NAME_32[:15] + "\ufffd"
    assert "userName is not valid gbk" in caplog.text and "replacement" in caplog.text


def test_identifiers_are_never_decoded_leniently() -> None:
    raw = bytearray(zfy.encode(OfficerInfo("B100001", "100001"), "94", "gbk"))
    raw[0:3] = b"B\xff1"
    with pytest.raises(zfy.OfficerBlockError, match="cSerial is not valid gbk: 42 ff 31"):
        zfy.decode(bytes(raw), "94", "gbk", lenient_text=True)


def test_whitespace_is_stripped_on_reading_unless_asked_not_to() -> None:
    info = OfficerInfo(" B1001", "100001", " 张三 ", "1 ", "")
    raw = zfy.encode(info, "94", "gbk")  # written as given
    assert raw[:8] == b" B1001\0\0"
    assert zfy.decode(raw, "94", "gbk") == OfficerInfo("B1001", "100001", "张三", "1", "")
    assert zfy.decode(raw, "94", "gbk", strip=False) == info


# --- what each driver asks of the codec -----------------------------------------------------

Decoder = Callable[[bytes], OfficerInfo]
DRIVERS: dict[str, tuple[Decoder, type[Exception]]] = {
    "scsi_dv16": (lambda b: scsi_dv16.decode_officer_block(b, "94", "gbk"), ProtocolError),
    "vendor_library": (
        lambda b: vendor_library.decode_officer_block(b, "94", "gbk"),
        ProtocolError,
    ),
    "usb_vendor_proto": (usb_vendor_proto.unpack_officer, usb_vendor_proto.WireError),
}


def _block(**raw: bytes) -> bytes:
    """A 94-byte block with these raw field slots (others from FULL), unterminated if full."""
    out = b""
    for attr, _, slot in OFFSETS["94"]:
        out += raw.get(attr, getattr(FULL, attr).encode("gbk")).ljust(slot, b"\0")
    return out


@pytest.mark.parametrize(
    ("case", "block", "accepted_by"),
    [
        ("serial without NUL", _block(serial=b"B1000012"), {"scsi_dv16", "usb_vendor_proto"}),
        ("tab in a name", _block(officer_name=b"a\tb"), {"vendor_library", "usb_vendor_proto"}),
        ("cut GBK name", _block(officer_name=NAME_32.encode("gbk")[:31]), {"vendor_library"}),
        ("empty officer no", _block(officer_no=b""), {"usb_vendor_proto"}),
        ("bad serial", _block(serial=b"B\xff1"), set()),
        ("short block", bytes(93), set()),
    ],
)
def test_each_driver_keeps_its_reading(case: str, block: bytes, accepted_by: set[str]) -> None:
    for name, (decode, error) in DRIVERS.items():
        if name in accepted_by:
            decode(block)
        else:
            with pytest.raises(error):
                decode(block)


def test_each_driver_keeps_its_error_types_and_whitespace() -> None:
    too_long = OfficerInfo("B100001", "100001", "张" * 17)
    with pytest.raises(ProtocolError, match="at most 32"):
        scsi_dv16.encode_officer_block(too_long, "94")
    with pytest.raises(ValueError, match="at most 32"):
        vendor_library.encode_officer_block(too_long, "94", "gbk")
    with pytest.raises(usb_vendor_proto.WireError, match="at most 32"):
        usb_vendor_proto.pack_officer(usb_vendor_proto.OfficerBlock("B100001", "100001", "张" * 17))
    # the wire keeps text as sent, and leaves empty identifiers to OfficerBlock.problems()
    block = usb_vendor_proto.OfficerBlock("", " 1 ", "a\tb")
    raw = usb_vendor_proto.pack_officer(block)
    assert usb_vendor_proto.unpack_officer(raw) == block
    assert block.problems() == ["serial is empty"]
    assert isinstance(block, OfficerInfo)
    assert scsi_dv16.decode_officer_block(zfy.encode(SHORT, "89", "gbk"), "89") == SHORT
