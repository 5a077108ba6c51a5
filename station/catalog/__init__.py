"""The catalog: a SQLite file that knows every recorder, file, session and event."""

from station.catalog.accounts_models import LoginThrottle, User, UserSession
from station.catalog.db import Catalog
from station.catalog.forward_models import ForwardObject, ForwardPart
from station.catalog.models import (
    Alarm,
    CollectionSession,
    Event,
    IngestJob,
    Officer,
    OutboxEntry,
    PlatformCommand,
    Recorder,
    StationState,
    StoredDisk,
    StoredFile,
)

__all__ = [
    "Alarm",
    "Catalog",
    "CollectionSession",
    "Event",
    "ForwardObject",
    "ForwardPart",
    "IngestJob",
    "LoginThrottle",
    "Officer",
    "OutboxEntry",
    "PlatformCommand",
    "Recorder",
    "StationState",
    "StoredDisk",
    "StoredFile",
    "User",
    "UserSession",
]
