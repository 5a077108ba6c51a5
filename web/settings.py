"""The settings page's model, kept here for the code that imports it from the web side.

The settings themselves (what they are, where they are stored, how a change goes
live) are the station's: `station.settings`, reached through `station.api`.
"""

from __future__ import annotations

from station.api import Settings

__all__ = ["Settings"]
