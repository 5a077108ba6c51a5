"""Stored secrets (platform credentials, S3 keys) encrypted at rest, with a key kept apart.

A secret in the configuration file may be written `"enc:v1:<base64>"`: AES-256-GCM
under the station's secrets key, with the secret's own dotted name (`platform.token`)
as associated data, so a value cannot be moved to another key. The key (32 random
bytes, hex) is never in the configuration file; it is read, in order, from the file
named by `STATION_SECRETS_KEY`, from systemd's credential `station-secrets.key`
(`LoadCredential=`, in `$CREDENTIALS_DIRECTORY`), or from `secrets.key` beside the
configuration file (mode 0600, root's).

    python -m station.platform.secrets new-key --config /etc/station/station.toml
    echo -n 'the secret' | python -m station.platform.secrets encrypt platform.token \\
        --config /etc/station/station.toml
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "enc:v1:"
KEY_FILE = "secrets.key"
CREDENTIAL = "station-secrets.key"
# the secrets the station stores in its configuration file (section, key)
SECRET_KEYS = (("platform", "token"), ("forward", "secret_access_key"))


class SecretsError(Exception):
    """A secret cannot be decrypted; the message names it and the key file."""


def key_path(config_path: str | os.PathLike[str] | None) -> Path | None:
    if env := os.environ.get("STATION_SECRETS_KEY"):
        return Path(env)
    if creds := os.environ.get("CREDENTIALS_DIRECTORY"):
        p = Path(creds) / CREDENTIAL
        if p.exists():
            return p
    return Path(config_path).parent / KEY_FILE if config_path else None


def load_key(path: Path) -> bytes:
    try:
        key = bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        raise SecretsError(f"the secrets key {path} does not exist") from None
    except ValueError:
        raise SecretsError(f"{path}: the secrets key is not hex") from None
    if len(key) != 32:
        raise SecretsError(f"{path}: the secrets key must be 32 bytes (64 hex digits)")
    return key


def new_key(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
        f.flush()
        os.fsync(f.fileno())


def encrypt(key: bytes, name: str, value: str) -> str:
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, value.encode(), name.encode())
    return PREFIX + base64.b64encode(nonce + sealed).decode()


def decrypt(key: bytes, name: str, value: str) -> str:
    try:
        raw = base64.b64decode(value.removeprefix(PREFIX), validate=True)
        return AESGCM(key).decrypt(raw[:12], raw[12:], name.encode()).decode()
    except (ValueError, InvalidTag):
        raise SecretsError(
            f"{name}: cannot be decrypted with this station's secrets key "
            "(another station's value, or another key's?)"
        ) from None


def reveal(data: dict[str, Any], config_path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The configuration mapping with its encrypted secrets decrypted (in memory only)."""
    key: bytes | None = None
    for section, name in SECRET_KEYS:
        value = (data.get(section) or {}).get(name)
        if not (isinstance(value, str) and value.startswith(PREFIX)):
            continue
        if key is None:
            path = key_path(config_path)
            if path is None:
                raise SecretsError(f"{section}.{name} is encrypted but no secrets key is known")
            key = load_key(path)
        data[section] = {**data[section], name: decrypt(key, f"{section}.{name}", value)}
    return data


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m station.platform.secrets", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("new-key", help="make the secrets key (refuses to overwrite one)")
    k.add_argument("--config", required=True)
    e = sub.add_parser("encrypt", help="encrypt stdin for KEY (e.g. platform.token)")
    e.add_argument("name", choices=[f"{s}.{n}" for s, n in SECRET_KEYS])
    e.add_argument("--config", required=True)
    args = p.parse_args(argv)
    path = key_path(args.config)
    assert path is not None
    if args.cmd == "new-key":
        new_key(path)
        print(path)
        return
    print(encrypt(load_key(path), args.name, sys.stdin.read()))


if __name__ == "__main__":
    main()
