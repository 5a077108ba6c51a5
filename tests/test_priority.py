"""S30 priority collection: "collect first" on one port slows the others down.

Through the running daemon and the browser's own route (CSRF token and all). The
speeds are far apart on purpose (the others share 0.05 MB/s), so the checks hold on
a slow machine; the rate the priority port reaches is measured by bench/priority.py.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx
from conftest import StationProc, card_hashes, wait_for

from station.ingest.priority import PriorityGate
from station.sim.recorder import RecorderSpec


def kiosk(st: StationProc) -> httpx.Client:
    c = httpx.Client(base_url=st.url(""), timeout=60)
    c.headers["X-CSRF-Token"] = c.get("/ui/api/session").json()["csrf"]
    return c


def events(st: StationProc, kind: str) -> list[dict[str, Any]]:
    return st.api("/api/v1/events", kind=kind)["items"]


def test_the_chosen_port_is_collected_first_and_the_others_slow_down(
    make_station: Any,
) -> None:
    st = make_station(recorders={"priority_others_mb_s": 0.05})
    waiting = st.build(
        RecorderSpec(serial="P000001", officer_no="200001", files=4, size_mb=2, read_mb_s=2)
    )
    others = [
        st.build(
            RecorderSpec(
                serial=f"P00000{p}", officer_no=f"20000{p}", files=4, size_mb=4, read_mb_s=2
            ),
            seed=p,
        )
        for p in (2, 3)
    ]
    source = card_hashes(waiting)
    for p, rec in zip((2, 3), others, strict=True):
        st.dock(p, rec)
    st.dock(1, waiting)
    for p in (1, 2, 3):
        st.wait_state(p, "collecting")

    c = kiosk(st)
    r = c.post("/ui/api/ports/1/priority")
    assert r.status_code == 200, r.text
    assert r.json() == {"priority_port": 1}
    assert [s["priority"] for s in st.api("/api/v1/status")["slots"][:3]] == [True, False, False]

    slot = st.wait_state(1, "complete")
    assert slot["files_done"] == len(source)
    # The others were held to their small shared budget meanwhile: neither is done.
    status = {s["port"]: s for s in st.api("/api/v1/status")["slots"]}
    for p in (2, 3):
        assert status[p]["state"] == "collecting"
        assert status[p]["bytes_done"] < status[p]["bytes_total"]
        assert not status[p]["priority"]

    # The priority ends with its collection; the others go back to full speed and finish.
    ended = wait_for(lambda: events(st, "priority_cleared"), what="priority_cleared")
    assert ended[0]["port"] == 1 and ended[0]["message"] == "the port is complete"
    set_ = events(st, "priority_set")
    assert len(set_) == 1 and set_[0]["port"] == 1 and set_[0]["actor"] == "kiosk"
    for p in (2, 3):
        st.wait_state(p, "complete")
    assert not any(s["priority"] for s in st.api("/api/v1/status")["slots"])


def test_priority_can_be_taken_back_and_needs_a_collecting_port(make_station: Any) -> None:
    st = make_station(recorders={"priority_others_mb_s": 0.05})
    for p in (1, 2):
        spec = RecorderSpec(
            serial=f"Q00000{p}", officer_no=f"30000{p}", files=3, size_mb=2, read_mb_s=1
        )
        st.dock(p, st.build(spec, seed=p))
        st.wait_state(p, "collecting")
    c = kiosk(st)

    # an empty port, a port out of range, no CSRF token
    assert c.post("/ui/api/ports/5/priority").status_code == 409
    assert c.post("/ui/api/ports/0/priority").status_code == 422
    assert httpx.post(st.url("/ui/api/ports/1/priority")).status_code == 403

    assert c.post("/ui/api/ports/2/priority").status_code == 200
    assert c.post("/ui/api/ports/1/priority").status_code == 200  # moves to port 1
    assert [s["priority"] for s in st.api("/api/v1/status")["slots"][:2]] == [True, False]
    assert c.delete("/ui/api/ports/2/priority").json() == {"priority_port": 1}  # not port 2's
    assert c.delete("/ui/api/ports/1/priority").json() == {"priority_port": None}
    assert not any(s["priority"] for s in st.api("/api/v1/status")["slots"])
    kinds = [(e["kind"], e["port"]) for e in st.api("/api/v1/events")["items"]]
    assert [k for k in kinds if k[0].startswith("priority")] == [
        ("priority_set", 2),
        ("priority_set", 1),
        ("priority_cleared", 1),
    ]
    for p in (1, 2):
        st.wait_state(p, "complete")


def test_the_gate_holds_the_others_to_their_shared_budget() -> None:
    gate = PriorityGate(others_mb_s=1.0)
    stop = threading.Event()
    assert gate.take(3, 10 << 20, stop)  # nobody first: no wait at all
    gate.set(1)
    assert gate.take(1, 10 << 20, stop)  # the priority port never waits
    stop.set()
    # another port owes the bucket ten seconds: it waits, and a stop ends the wait
    assert not gate.take(2, 10_000_000, stop)
    assert gate.release(2) is False and gate.port == 1
    assert gate.release(1) is True and gate.port is None
