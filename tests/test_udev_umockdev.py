"""Tier 1: the real UdevBus and PortWatcher on real pyudev, fed real udev events by umockdev.

umockdev's preload library has to be in place before libudev is loaded, so each
scenario runs tests/umockdev_scenarios.py in a subprocess under
``umockdev-wrapper``, with this interpreter (the venv must be built on Debian's
/usr/bin/python3 with --system-site-packages for the UMockdev GI bindings). The
script checks the exact PortChange sequences itself and prints a JSON summary;
the checks below restate the essentials. See docs/testing-udev.md.

Needs the Debian packages umockdev, gir1.2-umockdev-1.0 and python3-gi. Without
umockdev-wrapper these tests are skipped, except under CI, where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).with_name("umockdev_scenarios.py")
TIMEOUT_S = 120  # each scenario takes 1 to 5 s; generous for a slow, busy machine
PACKAGES = "umockdev gir1.2-umockdev-1.0 python3-gi"


def in_ci() -> bool:
    """True when the CI variable says so (CI=true, as GitHub and GitLab set it)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def wrapper() -> str:
    """umockdev-wrapper's path; skip without it, but fail in CI."""
    path = shutil.which("umockdev-wrapper")
    if path is None:
        message = f"umockdev-wrapper is not installed (apt-get install {PACKAGES})"
        if in_ci():
            pytest.fail(f"{message}; CI must run the udev tests", pytrace=False)
        pytest.skip(message)
    return path


class Runs:
    """Scenario subprocesses under umockdev-wrapper, each with its own $TMPDIR."""

    def __init__(self, wrapper: str, tmp: Path) -> None:
        self.wrapper = wrapper
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str) -> None:
        """Start scenario `name` unless it is already running."""
        if name in self.procs:
            return
        tmpdir = self.tmp / name  # a crashed run leaves its testbed here, not in /tmp
        tmpdir.mkdir()
        cmd = [self.wrapper, sys.executable, str(SCRIPT), name]
        if os.geteuid() == 0:
            # libudev reads the host's udev database (/run/udev) even under umockdev:
            # give the scenario an empty one, so the machine's own devices cannot leak in
            cmd = [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                'mount -t tmpfs tmpfs /run/udev 2>/dev/null || true; exec "$0" "$@"',
                *cmd,
            ]
        self.procs[name] = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**os.environ, "TMPDIR": str(tmpdir)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def result(self, name: str) -> dict:
        """Scenario `name`'s JSON result; the test fails if it failed."""
        self.start(name)
        proc = self.procs[name]
        try:
            stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            pytest.fail(f"scenario {name} ran over {TIMEOUT_S} s\n{stderr}", pytrace=False)
        if proc.returncode != 0:
            pytest.fail(
                f"scenario {name} exited {proc.returncode}\n--- stderr\n{stderr}\n"
                f"--- stdout\n{stdout}",
                pytrace=False,
            )
        lines = stdout.strip().splitlines()
        assert lines, f"scenario {name} printed nothing; stderr: {stderr}"
        result = json.loads(lines[-1])
        assert result["ok"] is True
        assert result["scenario"] == name
        return result

    def close(self) -> None:
        """Kill what still runs (a test failed before reading its result)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@pytest.fixture(scope="module")
def runs(wrapper: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Start every selected scenario at once, except the latency one.

    The scenarios mostly wait (debounce, settling), so running them side by side
    takes the time of the longest, not of all. The latency scenario runs alone,
    last, so that other scenarios do not load the machine while it measures.
    """
    pool = Runs(wrapper, tmp_path_factory.mktemp("umockdev"))
    for item in request.session.items:
        name = getattr(item, "function", None) and getattr(item.function, "scenario", None)
        if name and getattr(item, "module", None) is request.module and name != "latency":
            pool.start(name)
    yield pool
    pool.close()


@pytest.fixture
def result(runs: Runs, request: pytest.FixtureRequest) -> dict:
    """The JSON result of the scenario the test is marked with."""
    return runs.result(request.function.scenario)


def scenario(name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Mark a test as checking scenario `name` (so the pool starts it early)."""

    def mark(test: Callable[..., None]) -> Callable[..., None]:
        test.scenario = name  # type: ignore[attr-defined]
        return test

    return mark


def summary(changes: list) -> list[tuple]:
    """(port, old product id, new product id) of each change in a scenario's JSON."""
    return [
        (port, old and old["product_id"], new and new["product_id"]) for port, old, new in changes
    ]


@scenario("plug_unplug")
def test_plug_and_unplug_on_port_3(result):
    assert summary(result["changes"]) == [(3, None, "0101"), (3, "0101", None)]
    docked = result["changes"][0][2]
    assert (docked["vendor_id"], docked["serial"], docked["usb_port"]) == (
        "2c4e",
        "ZFY0003",
        "1-1.3",
    )
    assert docked["path"] == "/sys/devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1.3"


@scenario("reenumerate")
def test_reenumeration_as_mass_storage_on_the_same_port(result):
    assert summary(result["changes"]) == [
        (3, None, "0101"),
        (3, "0101", "0102"),  # fast switch: one change, old key out, new key in
        (3, "0102", None),
        (3, None, "0101"),  # slow switch: out, then in
        (3, "0101", None),
        (3, None, "0102"),
        (3, "0102", None),
    ]
    _, old, new = result["changes"][1]
    assert old["path"] == new["path"]
    assert old["devnum"] != new["devnum"]
    assert [(b["sys_name"], b["fs_type"]) for b in result["card_below_new_device"]] == [
        ("sda", None),
        ("sda1", "vfat"),
    ]
    assert result["station_mount_find_card_device"]["node"] == "/dev/sda1"


@scenario("early_unplug")
def test_unplugged_before_identification_leaves_nothing(result):
    assert result["outcomes"]["0ms"] == "nothing"
    assert set(result["outcomes"].values()) <= {"nothing", "add+remove"}


@scenario("two_at_once")
def test_two_recorders_docking_at_once(result):
    assert [r["gap_ms"] for r in result["rounds"]] == [0, 3, 8]
    assert summary(result["changes"][:4]) == [
        (1, None, "0101"),
        (2, None, "0101"),
        (1, "0101", None),
        (2, "0101", None),
    ]


@scenario("ignored")
def test_unmapped_ports_and_bare_hubs_are_ignored(result):
    assert result["pokes_while_ignored"] >= 3  # the events came, and made no change
    assert [(p, o and o["usb_port"], n and n["usb_port"]) for p, o, n in result["changes"]] == [
        (4, None, "1-1.4.2"),
        (4, "1-1.4.2", None),
    ]


@scenario("present_at_start")
def test_a_recorder_docked_before_start_is_found_by_the_first_scan(result):
    assert summary(result["changes"]) == [(3, None, "0101"), (3, "0101", None)]


@scenario("latency")
def test_event_to_change_latency(result, capsys):
    with capsys.disabled():
        print(
            "\nudev event -> PortChange, debounce 50 ms (median/max ms): plug "
            f"{result['plug_event_to_change_ms']['median']}/"
            f"{result['plug_event_to_change_ms']['max']}, unplug "
            f"{result['unplug_event_to_change_ms']['median']}/"
            f"{result['unplug_event_to_change_ms']['max']}; event -> bus poke "
            f"{result['plug_event_to_poke_ms']['median']}"
        )
    for kind in ("plug", "unplug"):
        latency = result[f"{kind}_event_to_change_ms"]
        assert latency["min"] >= 50  # never before the debounce
        assert latency["max"] < 2000  # generous: a busy machine must not fail this
