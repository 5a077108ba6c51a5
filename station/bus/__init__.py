"""Detection: which device sits on which physical dock port."""

from station.bus.base import Bus, PortChange, PortWatcher

__all__ = ["Bus", "PortChange", "PortWatcher"]
