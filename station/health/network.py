"""Is the station on the network? A real TCP connect, or the link state."""

from __future__ import annotations

import socket

import psutil


def check_network(target: str | None, timeout: float = 3.0) -> bool:
    """True when `target` ("host:port") accepts a TCP connection, or, with no
    target, when any non-loopback interface is up."""
    if target:
        host, _, port = target.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                return True
        except (OSError, ValueError):
            return False
    stats = psutil.net_if_stats()
    return any(s.isup for name, s in stats.items() if name != "lo")
