"""Secrets out of what leaves the station: by key name from the configuration, then by value.

A support bundle removes secrets twice: by key name from the configuration
(`redact`), then by value from every file of the bundle (`_scrub`), so a token
or password quoted in a log line is blanked as well.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr

from station.config import StationConfig

REDACTED = "<redacted>"
# A configuration key whose name contains one of these holds a secret.
SECRET_WORDS = ("token", "password", "passwd", "passphrase", "secret", "credential", "key")
# Secrets shorter than this are not searched for in free text (they would blank dates);
# those shorter than ANYWHERE_LEN only where they stand alone (not inside a longer number).
MIN_SCRUB_LEN = 6
ANYWHERE_LEN = 12
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s:]+:[^/@\s]+@", re.I)


def _is_secret_key(name: str) -> bool:
    name = name.lower()
    return any(w in name for w in SECRET_WORDS)


def redact(value: Any, *, secret: bool = False) -> Any:
    """A copy of a configuration mapping with every secret value replaced by REDACTED.

    A value is secret when its key (or a key above it) names a secret (`SECRET_WORDS`);
    lists keep their length so the bundle still shows how many tokens are set. Credentials
    inside URLs (``scheme://user:password@host``) are removed wherever they appear.
    """
    if isinstance(value, dict):
        return {k: redact(v, secret=secret or _is_secret_key(str(k))) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, secret=secret) for v in value]
    if value is None or isinstance(value, bool):
        return value
    if secret:
        return REDACTED
    if isinstance(value, str):
        return _URL_CREDENTIALS.sub(rf"\g<scheme>{REDACTED}@", value)
    return value


def secret_values(value: Any, *, secret: bool = False) -> set[str]:
    """Every string held under a secret key of a configuration mapping."""
    found: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            found |= secret_values(v, secret=secret or _is_secret_key(str(k)))
    elif isinstance(value, list | tuple):
        for v in value:
            found |= secret_values(v, secret=secret)
    elif secret and isinstance(value, str | int) and not isinstance(value, bool):
        found.add(str(value))
    elif isinstance(value, str):
        found.update(m.group(0) for m in _URL_CREDENTIALS.finditer(value))
    return found


def _scrub(text: str, secrets: set[str]) -> str:
    """`text` with every secret value blanked, and credentials in URLs.

    A long secret is blanked wherever it appears; a short one (a six-digit device
    password) only where it stands alone, not inside a longer number or word, so
    sizes, hashes and ids stay readable.
    """
    for s in sorted(secrets, key=len, reverse=True):  # longest first: no partial leftovers
        if len(s) >= ANYWHERE_LEN:
            text = text.replace(s, REDACTED)
        elif len(s) >= MIN_SCRUB_LEN:
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(s)}(?![A-Za-z0-9])", REDACTED, text)
    return _URL_CREDENTIALS.sub(rf"\g<scheme>{REDACTED}@", text)


def _config_mapping(config: StationConfig) -> dict[str, Any]:
    """The effective configuration (defaults included) as plain JSON-able data."""
    data = config.model_dump(mode="json")
    # SecretStr dumps as "**********"; get the real value too, so it can be scrubbed by value.
    for name, section in config:
        if hasattr(section, "model_dump"):
            data[name] = _reveal(section, data[name])
    return data


def _reveal(model: Any, dumped: Any) -> Any:

    if isinstance(model, SecretStr | SecretBytes):
        return str(model.get_secret_value())
    if isinstance(model, BaseModel) and isinstance(dumped, dict):
        return {k: _reveal(getattr(model, k, None), v) for k, v in dumped.items()}
    if isinstance(model, list | tuple) and isinstance(dumped, list):
        return [_reveal(m, d) for m, d in zip(model, dumped, strict=False)]
    return dumped
