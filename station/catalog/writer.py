"""The system log's single writer thread: events from the loop, in order, without waiting.

The event loop must not wait for a commit (tens of milliseconds while 8
recorders write, and the API would wait meanwhile), so what the loop logs goes
to one writer thread, in the order it was queued.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from station.catalog import Catalog
from station.catalog.db import append_event

log = logging.getLogger(__name__)


class LogWriter:
    """Appends events to the catalog's log on one thread, in the order they are queued."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="looplog")

    def queue(self, kind: str, message: str = "", **fields: Any) -> Future[None]:
        """Append `kind` to the log on the writer thread; a failure is logged."""

        def write() -> None:
            with self.catalog.write() as s:
                append_event(s, kind, message, **fields)

        def failed(f: Future[None]) -> None:
            if not f.cancelled() and f.exception() is not None:
                log.error("system log: %s not written: %s", kind, f.exception())

        fut = self.run_in_order(write)
        fut.add_done_callback(failed)
        return fut

    def run_in_order(self, work: Callable[[], None]) -> Future[None]:
        """Run `work` on the writer thread after what is queued already, in the caller's
        context: an event queued for a person's request keeps its source."""
        return self._pool.submit(contextvars.copy_context().run, work)

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        self._pool.shutdown(wait=True)
