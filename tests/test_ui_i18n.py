"""Every string of the pages goes through the gettext catalogues, and Chinese is complete."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from station.web import i18n

WEB = Path(i18n.__file__).parent
CJK = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")


@pytest.fixture(scope="module")
def extracted() -> set[str]:
    return {str(m.id) for m in i18n.extract_messages() if m.id}


def test_the_code_has_many_messages(extracted: set[str]) -> None:
    assert len(extracted) > 150
    assert {"Register", "Wrong officer number or PIN", "Dock a recorder"} <= extracted


def test_every_message_has_a_chinese_translation(extracted: set[str]) -> None:
    zh = i18n.messages("zh-CN")
    missing = sorted(m for m in extracted if not zh.get(m))
    assert not missing, f"untranslated in zh_CN/messages.po: {missing}"
    assert zh["Complete"] == "已完成"


def test_placeholders_survive_translation(extracted: set[str]) -> None:
    for lang in i18n.LANGUAGES:
        table = i18n.messages(lang)
        for m in extracted:
            if m in table:
                want = set(re.findall(r"\{(\w+)\}", m))
                assert set(re.findall(r"\{(\w+)\}", table[m])) == want, (lang, m)


def test_no_chinese_is_written_in_the_code() -> None:
    """Chinese lives only in the catalogues (no string hard-coded in two languages)."""
    offenders = []
    for p in [*WEB.glob("static/*"), *WEB.glob("*.py")]:
        if p.suffix in (".js", ".html", ".py", ".css"):
            for n, line in enumerate(p.read_text("utf-8").splitlines(), 1):
                if CJK.search(line):
                    offenders.append(f"{p.name}:{n}: {line.strip()}")
    assert not offenders, offenders


def test_catalogue_files_are_current(extracted: set[str]) -> None:
    """messages.pot lists what the code uses (run `python -m station.web.i18n extract` when not)."""
    from babel.messages.pofile import read_po

    with open(WEB / "locale" / "messages.pot", "rb") as f:
        pot = {str(m.id) for m in read_po(f) if m.id}
    assert pot == extracted


def test_unknown_language_falls_back_to_chinese() -> None:
    assert i18n.gettext("xx", "Empty") == "空闲"
    assert i18n.gettext("en", "Empty") == "Empty"
    assert i18n.gettext("en", "Other language") == "中文"
