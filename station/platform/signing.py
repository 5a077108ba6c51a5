"""Ed25519 signatures of platform commands (`cryptography`): the platform signs, the station
verifies against the public key installed on it (`platform.command_key`)."""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from station.platform.protocol import Command


class SignatureError(Exception):
    """The command is not signed, or not by the installed key."""


def new_key(private_path: Path, public_path: Path) -> None:
    """A fresh key pair: the private PEM for the platform, the public PEM for the stations."""
    key = Ed25519PrivateKey.generate()
    private_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    private_path.chmod(0o600)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def load_private(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key")
    return key


def sign(command: Command, key: Ed25519PrivateKey) -> Command:
    sig = base64.b64encode(key.sign(command.signed_bytes())).decode()
    return command.model_copy(update={"signature": sig})


def verify(command: Command, key: Ed25519PublicKey | None) -> None:
    """Raise SignatureError unless `command` carries a valid signature by `key`."""
    if key is None:
        raise SignatureError("no command key is installed on this station")
    if not command.signature:
        raise SignatureError("the command is not signed")
    try:
        sig = base64.b64decode(command.signature, validate=True)
        key.verify(sig, command.signed_bytes())
    except (InvalidSignature, ValueError):
        raise SignatureError("the signature does not verify with the installed key") from None
