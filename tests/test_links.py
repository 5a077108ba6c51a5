"""Shared USB links: the topology from the ports' USB paths and the per-link scheduling.

The scheduler is driven with explicit times (`now`), so nothing here depends on how fast
the machine is; the daemon-level half (a real station collecting recorders behind one
simulated hub) checks the order recorders complete in and the status's expected finish.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from station.devices.bus import Link
from station.devices.udev import UdevBus, port_links, split_port_path
from station.ingest.priority import MB, LinkScheduler

MIB = 1 << 20


def test_usb_paths_are_split_into_root_hub_and_ports() -> None:
    assert split_port_path("1-1.2") == ("usb1", ["1", "2"])
    assert split_port_path("3-2") == ("usb3", ["2"])
    assert split_port_path("pci-0000:00:14.0-usb-0:1.4.3") == (
        "pci-0000:00:14.0-usb-0",
        ["1", "4", "3"],
    )
    assert split_port_path("usb1") is None
    assert split_port_path("1-x") is None


def test_ports_behind_one_root_port_share_a_link() -> None:
    """Ports 1-4 behind a hub on root port 1-1, ports 5-6 behind one on 1-2 (by ID_PATH),
    port 7 on a root port of its own, port 8 on another controller: two shared links."""
    port_map = {
        1: "1-1.1", 2: "1-1.2", 3: "1-1.3", 4: "1-1.4",
        5: "pci-0000:00:14.0-usb-0:2.1", 6: "pci-0000:00:14.0-usb-0:2.2",
        7: "1-3", 8: "2-1.1",
    }  # fmt: skip
    links = port_links(port_map, 35.0)
    assert [(x.name, x.ports, x.mb_s, x.hub) for x in links] == [
        ("usb1:1", (1, 2, 3, 4), 35.0, "1-1"),
        ("pci-0000:00:14.0-usb-0:2", (5, 6), 35.0, "pci-0000:00:14.0-usb-0:2"),
    ]
    assert UdevBus(port_map, link_mb_s=40.0).links()[0].mb_s == 40.0


def hub(*ports: int, mb_s: float = 40.0) -> LinkScheduler:
    return LinkScheduler([Link("hub-1", ports, mb_s)])


def test_the_least_left_reads_first_and_the_others_only_fill_the_link() -> None:
    s = hub(1, 2, 3)
    t = 100.0
    assert s.may_read(2, 0, left=100 * MIB, important=False, now=t)  # first: least left
    # until port 2's own rate is known (a second of reading first), the others wait
    assert not s.may_read(1, 0, left=500 * MIB, important=False, now=t)
    for i in range(36):  # port 2 reads 35 MB a second
        assert s.may_read(2, MB, left=(100 - i) * MIB, important=False, now=t + i / 35)
    assert s._ports[2].solo == pytest.approx(35 * MB)
    t += 36 / 35
    # port 1 may fill the 3.8 MB/s that port 2 leaves of the link's 38.8
    assert s.may_read(1, 0, left=500 * MIB, important=False, now=t)
    assert s.may_read(1, 3 * MB, left=497 * MIB, important=False, now=t)
    assert not s.may_read(1, MB, left=496 * MIB, important=False, now=t)  # room used up
    # port 3 comes third (the most left): the two ahead of it fill the link
    assert not s.may_read(3, 0, left=700 * MIB, important=False, now=t)
    # port 2 done: port 1 is first now; port 3 waits until port 1's own rate is known
    s.done(2)
    assert s._order(s.links[0], t + 0.1) == [1, 3]
    assert s.may_read(1, 0, left=496 * MIB, important=False, now=t + 0.1)
    assert not s.may_read(3, 0, left=700 * MIB, important=False, now=t + 0.1)
    for i in range(22):  # port 1 reads 20 MB a second (a slower recorder)
        s.may_read(1, MB, left=(496 - i) * MIB, important=False, now=t + 0.1 + i / 20)
    t += 0.1 + 22 / 20
    assert s._ports[1].solo == pytest.approx(20 * MB)
    assert s.may_read(3, 15 * MB, left=685 * MIB, important=False, now=t)
    assert not s.may_read(3, 4 * MB, left=681 * MIB, important=False, now=t)  # 19 > 18.8


def test_the_first_port_between_two_files_leaves_the_link_to_the_next() -> None:
    s = hub(1, 2)
    for i in range(40):  # port 1 reads first at 35 MB/s for over a second
        s.may_read(1, MB, left=(400 - i) * MIB, important=False, now=i / 35)
    t = 39 / 35
    assert not s.may_read(2, 4 * MB, left=800 * MIB, important=False, now=t)
    # port 1 finishes a file (second look, catalog) and has not read for 0.3 s
    assert s.may_read(2, 0, left=800 * MIB, important=False, now=t + 0.3)
    assert s.may_read(2, 8 * MB, left=792 * MIB, important=False, now=t + 0.35)
    # it reads again: port 2 is back to what it leaves
    s.may_read(1, MB, left=360 * MIB, important=False, now=t + 0.4)
    assert not s.may_read(2, MB, left=791 * MIB, important=False, now=t + 0.45)


def test_imp_files_first_then_least_left_and_collect_first_on_top() -> None:
    s = hub(1, 2, 3)
    t = 10.0
    s.may_read(1, 0, left=10 * MIB, important=False, now=t)
    s.may_read(2, 0, left=900 * MIB, important=True, now=t)  # IMP files being copied
    s.may_read(3, 0, left=500 * MIB, important=False, now=t)
    assert s._order(s.links[0], t) == [2, 1, 3]
    s.priority = lambda: 3  # "collect first" tapped for port 3
    assert s._order(s.links[0], t) == [3, 2, 1]


def test_a_port_that_stopped_reading_leaves_its_turn() -> None:
    s = hub(1, 2)
    s.may_read(1, 39 * MB, left=MIB, important=False, now=0.5)
    assert not s.may_read(2, 0, left=800 * MIB, important=False, now=0.6)  # its rate unknown
    # port 1 says nothing for over a second (unplugged mid-file, finishing a long step)
    assert s.may_read(2, 0, left=800 * MIB, important=False, now=2.0)


def test_scheduling_off_a_port_on_no_link_and_an_unknown_rate_never_wait() -> None:
    off = LinkScheduler([Link("hub-1", (1, 2), 40.0)], enabled=False)
    off.may_read(1, 40 * MB, left=MIB, important=False, now=1.0)
    assert off.may_read(2, 40 * MB, left=800 * MIB, important=False, now=1.0)
    s = hub(1, 2)
    assert s.may_read(5, 40 * MB, left=MIB, important=False, now=1.0)  # no shared link
    unknown = LinkScheduler([Link("root", (1, 2), None)])
    unknown.may_read(1, 40 * MB, left=MIB, important=False, now=1.0)
    assert unknown.may_read(2, 40 * MB, left=800 * MIB, important=False, now=1.0)
    # a link of one port is no shared link
    assert LinkScheduler([Link("alone", (4,), 40.0)]).links == []


def test_a_waiting_port_stops_when_told_and_shows_it_is_alive() -> None:
    s = hub(1, 2)
    s.priority = lambda: 1
    stop = threading.Event()
    beats: list[float] = []

    def keep_first() -> None:  # port 1 reads on, filling the link
        while not stop.is_set():
            s.may_read(1, 100 * MB, left=500 * MIB, important=False)  # fills it, however slow
            time.sleep(0.05)

    t = threading.Thread(target=keep_first)
    t.start()
    try:
        time.sleep(0.2)
        threading.Timer(0.5, stop.set).start()
        ok = s.take(2, 0, stop, left=MIB, important=False, waiting=lambda: beats.append(1))
    finally:
        stop.set()
        t.join()
    assert ok is False and beats


def test_expected_finish_counts_the_ports_ahead_on_the_link() -> None:
    s = hub(1, 2)
    t = 50.0
    for i in range(40):  # port 1 at 40 MB/s, 100 MB left; port 2 waits with 200 MB
        s.may_read(1, MB, left=100 * MB, important=False, now=t + i / 40)
    s.may_read(2, 0, left=200 * MB, important=False, now=t + 0.99)
    first = s.expected_s(1, 100 * MB, 40 * MB, now=t + 0.99)
    second = s.expected_s(2, 200 * MB, 0.0, now=t + 0.99)
    assert first == pytest.approx(2.5, rel=0.05)
    assert second == pytest.approx(7.5, rel=0.05)  # after port 1's 100 MB, its own 200
    assert s.expected_s(7, 100 * MB, 20 * MB) == pytest.approx(5.0)  # on no shared link
    assert s.expected_s(7, 100 * MB, 0.0) is None


def test_the_simulated_bus_reports_its_links(tmp_path) -> None:
    from station.devices.simbus import SimulatedBus

    bus = tmp_path / "bus"
    bus.mkdir()
    assert SimulatedBus(bus, 8).links() == []
    (bus / "links.json").write_text(
        json.dumps({"links": [{"name": "hub-1", "ports": [1, 2, 9], "mb_s": 40}]})
    )
    (link,) = SimulatedBus(bus, 8).links()
    assert (link.ports, link.mb_s, link.hub) == ((1, 2), 40.0, "hub-1")
    (bus / "links.json").write_text("{not json")
    assert SimulatedBus(bus, 8).links() == []  # a bad file: no links, the station runs


def test_station_ports_show_names_the_shared_links(tmp_path) -> None:
    from click.testing import CliRunner

    from station.cli import cli

    config = tmp_path / "station.toml"
    config.write_text(
        f'[station]\nid = "T1"\n[store]\ndisks = ["{tmp_path / "d1"}"]\n'
        f'[database]\nurl = "sqlite:///{tmp_path / "c.db"}"\n'
        '[bus]\nkind = "udev"\nports = 4\nlink_mb_s = 38\n'
        '[bus.port_map]\n"1" = "1-1.1"\n"2" = "1-1.2"\n"3" = "1-2"\n'
    )
    r = CliRunner().invoke(cli, ["ports", "show", "--config", str(config), "--json"])
    assert r.exit_code == 0, r.output
    rows = {x["port"]: x for x in json.loads(r.output)["ports"]}
    assert rows[1]["link"] == rows[2]["link"] == "usb1:1" and rows[1]["shared_with"] == [2]
    assert rows[1]["hub"] == "1-1" and rows[1]["link_mb_s"] == 38
    assert rows[3]["link"] is None and rows[4]["usb_path"] is None
    r = CliRunner().invoke(cli, ["ports", "show", "--config", str(config)])
    assert r.exit_code == 0, r.output
    assert "link usb1:1: ports 1, 2 behind 1-1" in r.output
    assert "scheduling per shared link: on" in r.output
