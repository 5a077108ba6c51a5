"""What the routes are given: the station's API and the browser side's own state.

As the FastAPI template does it: `Annotated` aliases of `Depends(...)`, so a route
names what it needs in its signature (`api: ApiDep`, `ctx: UI`). Both live on the
app (`create_app` puts them in `app.state`), none at import time.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from station.api import StationAPI

ACCESS_LOG_EVERY_S = 600  # one "viewed" event per session, file and way of viewing


def get_api(request: Request) -> StationAPI:
    return request.app.state.api


ApiDep = Annotated[StationAPI, Depends(get_api)]


@dataclass
class UIContext:
    """What the browser-facing routes share besides the station: who viewed which file
    lately, and the one-time zip links."""

    _seen: dict[tuple[str, int, str], float] = field(default_factory=dict)
    tickets: dict[str, tuple[float, int, list[int]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def first_access(self, who: str, file_id: int, how: str) -> bool:
        """Whether this viewing is new (not the same person re-reading ranges of one file)."""
        now = time.monotonic()
        key = (who, file_id, how)
        with self.lock:
            last = self._seen.get(key)
            if last is not None and now - last < ACCESS_LOG_EVERY_S:
                return False
            self._seen[key] = now
            if len(self._seen) > 10_000:
                cutoff = now - ACCESS_LOG_EVERY_S
                self._seen = {k: v for k, v in self._seen.items() if v > cutoff}
            return True


def ui(request: Request) -> UIContext:
    return request.app.state.ui


UI = Annotated[UIContext, Depends(ui)]
