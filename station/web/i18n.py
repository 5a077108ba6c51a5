"""Translations of the touchscreen and console: gettext catalogues read with Babel.

The source language is English: the pages and scripts carry English message
ids only (`_("...")` and `N_("...")` in JavaScript and Python, `data-i18n`
attributes in HTML), and `station/web/locale/<lang>/LC_MESSAGES/messages.po` holds the
translations. Chinese (zh-CN) is the default language. The browser gets one
language's catalogue as JSON from `/ui/i18n/<lang>.json`.

Keeping the catalogues in step with the code:

    .venv/bin/python -m station.web.i18n extract   # rewrite messages.pot, merge it into each .po

then translate the new entries in each `messages.po`; `tests/test_ui_i18n.py`
fails while any message of the code has no Chinese translation.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

from babel.messages.catalog import Catalog as MessageCatalog
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po, write_po

WEB = Path(__file__).parent
LOCALE = WEB / "locale"
DOMAIN = "messages"
LANGUAGES = {"zh-CN": "zh_CN", "en": "en"}  # web name -> gettext locale folder
DEFAULT_LANGUAGE = "zh-CN"
KEYWORDS = {"_": None, "N_": None}
METHOD_MAP = [
    ("static/vendor/**", "ignore"),  # third-party builds carry no station messages
    ("static/**.js", "javascript"),
    ("static/**.html", "station.web.i18n:extract_html"),
    ("**.py", "python"),
]
# plain scripts, no JSX (else `a < b` reads as a tag); template literals are parsed
OPTIONS = {"static/**.js": {"jsx": "false", "parse_template_string": "true"}}

_HTML_ATTR = re.compile(r'data-i18n(?:-[a-z]+)?="([^"]+)"')


def N_(message: str) -> str:
    """Mark a string for translation where it is defined; it is translated where shown."""
    return message


def extract_html(
    fileobj: IO[bytes], keywords: Any, comment_tags: Any, options: Any
) -> Iterator[tuple[int, str, str, list[str]]]:
    """Babel extractor for the pages: the message ids of `data-i18n*` attributes."""
    text = fileobj.read().decode("utf-8")
    for m in _HTML_ATTR.finditer(text):
        yield text.count("\n", 0, m.start()) + 1, "", m.group(1), []


def extract_messages() -> MessageCatalog:
    """Every message id used by the web code, with where it is used."""
    cat = MessageCatalog(project="station", charset="utf-8")
    for filename, lineno, message, comments, context in extract_from_dir(
        WEB, METHOD_MAP, options_map=OPTIONS, keywords=KEYWORDS, comment_tags=("i18n:",)
    ):
        if filename.startswith("locale"):
            continue
        cat.add(message, None, [(filename, lineno)], auto_comments=comments, context=context)
    return cat


def po_path(lang: str) -> Path:
    return LOCALE / LANGUAGES[lang] / "LC_MESSAGES" / f"{DOMAIN}.po"


@lru_cache(maxsize=4)
def messages(lang: str) -> dict[str, str]:
    """msgid -> translation for one language (untranslated and fuzzy entries left out)."""
    if lang not in LANGUAGES:
        lang = DEFAULT_LANGUAGE
    with open(po_path(lang), "rb") as f:
        cat = read_po(f, locale=LANGUAGES[lang])
    return {
        str(m.id): str(m.string)
        for m in cat
        if m.id and isinstance(m.id, str) and m.string and not m.fuzzy
    }


def gettext(lang: str, message: str) -> str:
    """One message in a language (the English id when it has no translation)."""
    return messages(lang).get(message, message)


def _update() -> None:
    template = extract_messages()
    LOCALE.mkdir(exist_ok=True)
    with open(LOCALE / f"{DOMAIN}.pot", "wb") as f:
        write_po(f, template, omit_header=False, sort_output=True)
    for lang, folder in LANGUAGES.items():
        path = po_path(lang)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            with open(path, "rb") as f:
                cat = read_po(f, locale=folder)
        else:
            cat = MessageCatalog(locale=folder, project="station", charset="utf-8")
        cat.update(template, no_fuzzy_matching=True)
        cat.obsolete.clear()
        with open(path, "wb") as f:
            write_po(f, cat, sort_output=True, width=100)
        missing = sum(1 for m in cat if m.id and not m.string)
        print(f"{path.relative_to(WEB)}: {len(cat)} messages, {missing} untranslated")


if __name__ == "__main__":
    if sys.argv[1:] != ["extract"]:
        print("usage: python -m station.web.i18n extract", file=sys.stderr)
        sys.exit(2)
    _update()
