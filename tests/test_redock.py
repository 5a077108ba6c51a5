"""A driver that says "gone" while the recorder stays docked is not re-docked in a loop.

The real daemon (`station run`) on the simulated bus; the simulated driver's
`gone_while_docked` fault makes every call raise DeviceGone while the port
folder stays. The station rescans and collects the same docking anew, but per
port at most every `station.devices.ports.RECHECK_MIN_S` seconds: counted as
`device_docked` entries in the system log over a window.
"""

from __future__ import annotations

import json
import time

from conftest import StationProc, wait_for

from station.devices.ports import RECHECK_MIN_S
from station.sim.recorder import RecorderSpec

WINDOW_S = 3 * RECHECK_MIN_S  # long enough for three re-dockings per port, at most


def _docked(st: StationProc) -> dict[int, int]:
    rows = st.query("SELECT port, count(*) FROM events WHERE kind = 'device_docked' GROUP BY port")
    return {port: n for port, n in rows}


def test_gone_while_docked_is_redocked_at_most_every_recheck_interval(
    station: StationProc,
) -> None:
    gone_ports = (1, 2)
    for port in (*gone_ports, 3):
        rec = station.build(
            RecorderSpec(serial=f"G{port:06d}", officer_no=f"70000{port}", files=2, imp=0),
            seed=port,
        )
        if port in gone_ports:
            data = json.loads((rec / "recorder.json").read_text())
            data["faults"] = {"gone_while_docked": True}
            (rec / "recorder.json").write_text(json.dumps(data))
        station.dock(port, rec)
    # the first docking, and the first re-docking (the port has not been rechecked yet)
    wait_for(
        lambda: all(_docked(station).get(p, 0) >= 2 for p in gone_ports),
        what="both faulty ports re-docked once",
    )
    t0 = time.monotonic()
    before = _docked(station)
    time.sleep(WINDOW_S)
    after = _docked(station)
    elapsed = time.monotonic() - t0  # at least the time between the two counts
    for port in gone_ports:
        # re-dockings RECHECK_MIN_S apart: one at each end of the window and one per
        # interval in between; one more for an entry of before the window that the log
        # writer committed late (a busy machine). Without the limit: dozens.
        most = int(elapsed / RECHECK_MIN_S) + 2
        assert after[port] - before[port] <= most, (port, before, after, elapsed)
    # and it does go on: each port is re-docked again (the same docking, collected anew)
    wait_for(
        lambda: all(_docked(station)[p] > after[p] for p in gone_ports),
        what="each faulty port re-docked again",
    )
    # the healthy recorder beside them is collected, docked once
    station.wait_state(3, "complete")
    assert _docked(station)[3] == 1
