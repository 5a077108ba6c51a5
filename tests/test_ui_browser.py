"""What people see: the touchscreen and the console in real headless Chromium at 1024x600.

Runs Debian's /usr/bin/chromium through Playwright against a real station
daemon (tests/conftest.py) with simulated recorders. Skipped when Chromium or
Playwright is missing. With UPDATE_SCREENSHOTS=1 the main screens are saved to
docs/screenshots/ (for the README and docs/ui.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    StationProc,
    free_port,
    needs_root,
    sha256_file,
    tmpfs_disks,
    wait_for,
    write_config,
)

from station import accounts
from station.catalog import Catalog
from station.sim.recorder import RecorderSpec

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")

SHOTS = Path(__file__).parent.parent / "docs" / "screenshots"
ADMIN = ("900001", "135790")
OFFICER = ("800001", "246801")
OTHER_OFFICER = ("800002", "112233")
AUDITOR = ("700001", "998877")
LOCKME = ("800009", "445566")
SECURITY = ("600001", "864200")


def shot(page: Any, name: str, tmp: Path) -> None:
    """A screenshot: into docs/screenshots/ when asked to update them, else the test's folder."""
    folder = SHOTS if os.environ.get("UPDATE_SCREENSHOTS") else tmp
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"))


@pytest.fixture(scope="module")
def st(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StationProc]:
    root = tmp_path_factory.mktemp("ui") / "station"
    for d in ("disk1", "disk2", "bus"):
        (root / d).mkdir(parents=True)
    port = free_port()
    proc = StationProc(
        root,
        write_config(
            root,
            port,
            station={"id": "PG-0001", "name": "平谷采集站 1"},
            registration={"mode": "manual"},
        ),
        port,
    )
    try:
        proc.start()
        catalog = Catalog(proc.db)
        for (no, pin), role, name in (
            (ADMIN, "administrator", "赵管理"),
            (OFFICER, "officer", "王五"),
            (OTHER_OFFICER, "officer", "李四"),
            (AUDITOR, "auditor", "孙审计"),
            (LOCKME, "officer", "周六"),
            (SECURITY, "security_admin", "钱安全"),
        ):
            accounts.create_user(catalog, no, pin, role=role, name=name)
        catalog.close()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--disable-sync",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, st: StationProc) -> Iterator[Any]:
    ctx = browser.new_context(
        viewport={"width": 1024, "height": 600},
        has_touch=True,
        accept_downloads=True,
        locale="zh-CN",
        bypass_csp=True,  # the pages' CSP forbids eval, which wait_for_function uses
    )
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert not errors, errors


def slot_state(page: Any, port: int) -> str | None:
    return page.evaluate(
        "p => { const e = document.querySelector(`.slot[data-port='${p}']`);"
        " return e ? e.dataset.state : null; }",
        port,
    )


def tap(page: Any, digits: str) -> None:
    for d in digits:
        page.click(f".kp-key[data-key='{d}']")


def keypad_login(page: Any, officer_no: str, pin: str) -> None:
    page.wait_for_selector(".kp-panel")
    page.click(".kp-input[name='officer_no']")
    tap(page, officer_no)
    page.click(".kp-input[name='secret']")
    tap(page, pin)
    page.click(".kp-ok")


def dock(st: StationProc, port: int, seed: int, **spec: Any) -> None:
    st.dock(port, st.build(RecorderSpec(**spec), seed=seed))


# --- the station screen ----------------------------------------------------------------------


def test_station_screen_registration_and_collection(
    st: StationProc, page: Any, tmp_path: Path
) -> None:
    page.goto(st.url("/"))
    page.wait_for_function("document.body.dataset.conn === 'live'")
    page.wait_for_selector(".slot[data-port='8']")
    assert page.evaluate("document.querySelectorAll('.slot').length") == 8
    assert page.inner_text("#mode-text") == "手动注册"
    assert page.inner_text(".slot[data-port='3'] .slot-state") == "空闲"
    shot(page, "station-empty", tmp_path)

    # a recorder docked at port 3 shows in window 3, within a second, and nowhere else
    recorder = st.build(
        RecorderSpec(serial="K000003", officer_no=OFFICER[0], officer_name="王五",
                     unit_name="平谷分局 城关派出所", files=4, imp=1, size_mb=8,
                     battery_percent=64, read_mb_s=4),
        seed=3,
    )  # fmt: skip
    t0 = time.monotonic()
    st.dock(3, recorder)
    page.wait_for_function(
        "document.querySelector(\".slot[data-port='3']\").dataset.state !== 'empty'",
        timeout=5000,
    )
    assert time.monotonic() - t0 < 1.0, "the dock took more than a second to show"
    page.wait_for_function(
        "document.querySelector(\".slot[data-port='3']\").dataset.state === 'unregistered'"
    )
    for p in (1, 2, 4, 5, 6, 7, 8):
        assert slot_state(page, p) == "empty"
    win = ".slot[data-port='3']"
    assert page.inner_text(f"{win} .rec-name") == "王五"
    assert page.inner_text(f"{win} .v-officer") == OFFICER[0]
    assert page.inner_text(f"{win} .v-serial") == "K000003"
    assert page.inner_text(f"{win} .rec-unit") == "平谷分局 城关派出所"
    assert page.inner_text(f"{win} .battery-text") == "64%"
    assert "等待管理员审批" in page.inner_text(f"{win} .msg")
    shot(page, "station-unregistered", tmp_path)

    # register it: the administrator's number and PIN on the on-screen keypad
    page.click(f"{win} .register-btn")
    page.wait_for_selector(".kp-panel")
    assert page.input_value(".kp-input[name='officer_no']") == OFFICER[0]  # confirm the officer
    page.click(".kp-input[name='admin_no']")
    tap(page, ADMIN[0])
    page.click(".kp-input[name='secret']")
    tap(page, "000000")  # wrong PIN first: refused, dialog stays
    shot(page, "station-register-keypad", tmp_path)
    page.click(".kp-ok")
    page.wait_for_selector(".kp-error:not([hidden])")
    assert "警号或密码错误" in page.inner_text(".kp-error")
    assert slot_state(page, 3) == "unregistered"
    page.click(".kp-input[name='secret']")
    tap(page, ADMIN[1])
    page.click(".kp-ok")
    page.wait_for_selector(".kp-panel", state="detached")

    page.wait_for_function(
        "document.querySelector(\".slot[data-port='3']\").dataset.state === 'collecting'",
        timeout=30000,
    )
    page.wait_for_function(
        "document.querySelector(\".slot[data-port='3'] .speed\").textContent.includes('MB/')",
        timeout=30000,
    )
    shot(page, "station-collecting", tmp_path)
    page.wait_for_function(
        "document.querySelector(\".slot[data-port='3']\").dataset.state === 'complete'",
        timeout=120000,
    )
    assert "可以拔出" in page.inner_text(f"{win} .msg")
    shot(page, "station-complete", tmp_path)

    page.click("#lang-btn")
    page.wait_for_function(
        "document.querySelector(\".slot[data-port='3'] .slot-state\").textContent === 'Complete'"
    )
    assert "unplug" in page.inner_text(f"{win} .msg")
    shot(page, "station-complete-en", tmp_path)
    page.click("#lang-btn")
    page.wait_for_function(
        "document.querySelector(\".slot[data-port='3'] .slot-state\").textContent === '已完成'"
    )
    st.undock(3)
    page.wait_for_function(
        "document.querySelector(\".slot[data-port='3']\").dataset.state === 'empty'"
    )


def test_collect_first_from_the_screen(st: StationProc, page: Any, tmp_path: Path) -> None:
    page.goto(st.url("/"))
    page.wait_for_function("document.body.dataset.conn === 'live'")
    for port in (5, 6):
        serial = f"K00000{port}"
        dock(st, port, port, serial=serial, officer_no=OFFICER[0], officer_name="王五",
             files=4, imp=0, size_mb=6, read_mb_s=1.5)  # fmt: skip
        st.wait_state(port, "unregistered")
        st.cli("recorders", "approve", serial)
    win = ".slot[data-port='6']"
    page.wait_for_selector(f"{win} .first-btn:not([hidden])", timeout=60000)
    assert page.inner_text(f"{win} .first-btn") == "优先"
    page.click(f"{win} .first-btn")
    page.wait_for_selector(f"{win} .first-btn[aria-pressed='true']")
    assert page.inner_text(f"{win} .first-btn") == "优先"
    assert "6 号口优先采集" in page.inner_text("#toast")
    assert page.get_attribute(".slot[data-port='5'] .first-btn", "aria-pressed") == "false"
    slots = st.api("/api/v1/status")["slots"]
    assert [s["port"] for s in slots if s["priority"]] == [6]
    shot(page, "station-collect-first", tmp_path)

    # tapped again: back to equal shares
    page.click(f"{win} .first-btn")
    page.wait_for_selector(f"{win} .first-btn[aria-pressed='false']")
    assert not any(s["priority"] for s in st.api("/api/v1/status")["slots"])
    page.click(f"{win} .first-btn")
    page.wait_for_selector(f"{win} .first-btn[aria-pressed='true']")
    for port in (5, 6):
        st.wait_state(port, "complete")
        st.undock(port)
    page.wait_for_selector(".slot.is-first", state="detached")


def test_direction_and_control_characters_from_a_recorder_are_shown_not_obeyed(
    st: StationProc, page: Any
) -> None:
    """A recorder calls its officer "王\u202e五 OK" (RIGHT-TO-LEFT OVERRIDE, then text):
    the window shows a visible mark instead of letting it reverse what follows."""
    page.goto(st.url("/"))
    page.wait_for_function("document.body.dataset.conn === 'live'")
    dock(st, 8, 8, serial="K000088", officer_no="700088", officer_name="王\u202e五\u0007 OK",
         files=1, imp=0, size_mb=1)  # fmt: skip
    st.wait_state(8, "unregistered")
    win = ".slot[data-port='8']"
    page.wait_for_function(
        "w => (document.querySelector(w) || {}).innerText.includes('700088')", arg=win
    )
    text = page.inner_text(win)
    assert "王⟨U+202E⟩五⟨U+0007⟩ OK" in text, text
    assert "\u202e" not in text and "\u0007" not in text
    st.undock(8)


# --- the console ----------------------------------------------------------------------------


def _collected(st: StationProc) -> list[dict[str, Any]]:
    return wait_for(
        lambda: st.api("/api/v1/files", officer_no=OFFICER[0])["items"], 60, "collected files"
    )


def test_login_search_play_and_download(st: StationProc, page: Any, tmp_path: Path) -> None:
    files = _collected(st)
    page.goto(st.url("/ui/console"))
    shot(page, "console-login", tmp_path)
    keypad_login(page, *OFFICER)
    page.wait_for_selector("#results .row")
    assert page.inner_text("#who-name").endswith(OFFICER[0])
    rows = page.locator("#results .row").count()
    assert rows == len(files)
    # thumbnails and lengths come in as they are made, in the background
    page.wait_for_selector("#results .row.kind-video .thumb img", timeout=60000)
    page.wait_for_function(
        "document.querySelector('#results .row.kind-video .row-duration').textContent"
        ".match(/^\\d+:\\d\\d$/)",
        timeout=60000,
    )
    page.wait_for_function(
        "[...document.querySelectorAll('#results .thumb img')].every(i => i.complete)"
    )
    shot(page, "console-files", tmp_path)

    # search: videos only
    page.select_option("select[name='kind']", "video")
    page.click("#search button[type='submit']")
    page.wait_for_function(
        "[...document.querySelectorAll('#results .row')].every(r => r.classList.contains("
        "'kind-video'))"
    )
    videos = [f for f in files if f["name"].upper().endswith(".AVI")]
    assert page.locator("#results .row").count() == len(videos)

    # play one: the browser copy (H.264) plays in the <video> element
    page.locator("#results .row").first.click()
    page.wait_for_selector("video.player")
    page.wait_for_function(
        "(() => { const v = document.querySelector('video.player');"
        " return v && v.dataset.playing === '1' && v.videoWidth > 0; })()",
        timeout=60000,
    )
    assert page.evaluate("document.querySelector('video.player').videoWidth") == 640
    shot(page, "console-player", tmp_path)

    # the station's own controls: pause, one frame forward, a bookmark into the note
    # (once the seekable copy has replaced the stream)
    page.wait_for_selector("#viewer-status", state="hidden", timeout=60000)
    page.click(".pc-play")
    page.wait_for_function("document.querySelector('video.player').paused")
    # away from the end (a short clip on a slow machine may have played through it):
    # a frame forward from the last frame has nowhere to go
    page.evaluate("document.querySelector('video.player').currentTime = 0.2")
    page.wait_for_function(
        "(() => { const v = document.querySelector('video.player');"
        " return !v.seeking && Math.abs(v.currentTime - 0.2) < 0.05; })()"
    )
    before = page.evaluate("document.querySelector('video.player').currentTime")
    page.click(".pc-frame-fwd")
    page.wait_for_function(
        "t => { const v = document.querySelector('video.player');"
        " return v.paused && v.currentTime > t && v.currentTime < t + 0.1; }",
        arg=before,
    )
    page.click(".pc-mark")
    assert page.input_value("#annotate textarea[name='note']").startswith("[0:0")
    page.fill("#annotate textarea[name='note']", "")

    # annotate: level, case number, note
    page.select_option("#annotate select[name='level']", "evidence")
    page.fill("#annotate input[name='case_no']", "PG2026-0042")
    page.fill("#annotate textarea[name='note']", "路口纠纷 现场录像")
    page.click("#annotate button[type='submit']")
    page.wait_for_function("document.querySelector('#toast').textContent === '已保存'")
    fid = int(page.get_attribute("#download-one", "href").split("/")[3])
    row = st.query("SELECT level, case_no, note FROM files WHERE id = ?", fid)[0]
    assert row == ("evidence", "PG2026-0042", "路口纠纷 现场录像")

    # back, search the note, select everything and download a zip
    page.click("#back-to-results")
    page.select_option("select[name='kind']", "")
    page.click("#search button[type='reset']")
    page.wait_for_function(f"document.querySelectorAll('#results .row').length === {len(files)}")
    page.click("#select-page")
    with page.expect_download() as dl:
        page.click("#zip-btn")
    path = tmp_path / "files.zip"
    dl.value.save_as(path)
    with zipfile.ZipFile(path) as z:
        manifest = z.read("MANIFEST.sha256").decode()
        meta = json.loads(z.read("manifest.json"))
        lines = [ln.split("  ", 1) for ln in manifest.splitlines()]
        assert len(lines) == len(files)
        by_id = {f["id"]: f for f in files}
        for digest, member in lines:
            data = z.read(member)
            assert hashlib.sha256(data).hexdigest() == digest
        for e in meta["files"]:
            stored = by_id[e["file_id"]]
            assert e["sha256"] == stored["sha256"] == sha256_file(Path(stored["stored_path"]))
            assert e["matches_catalog"] is True
        assert meta["created_by"] == OFFICER[0]
    kinds = {e["kind"] for e in st.api("/api/v1/events", actor=OFFICER[0])["items"]}
    assert {"login", "file_viewed", "file_annotated", "files_downloaded"} <= kinds


def test_officer_sees_only_own_files(st: StationProc, page: Any) -> None:
    _collected(st)
    page.goto(st.url("/ui/console"))
    keypad_login(page, *OTHER_OFFICER)
    page.wait_for_selector("#results .empty")
    assert page.locator("#results .row").count() == 0
    # no officer filter, no log or settings tabs for an officer
    assert not page.is_visible("#search input[name='officer_no']")
    assert not page.is_visible(".tab[data-view='log']")
    assert not page.is_visible(".tab[data-view='settings']")


def test_five_wrong_pins_lock_the_account(st: StationProc, page: Any, tmp_path: Path) -> None:
    page.goto(st.url("/ui/console"))
    for i in range(5):
        keypad_login(page, LOCKME[0], "000000")
        page.wait_for_selector(".kp-error:not([hidden])")
        text = page.inner_text(".kp-error")
        if i < 4:
            assert "警号或密码错误" in text
        page.click(".kp-cancel")
        page.goto(st.url("/ui/console"))
    keypad_login(page, *LOCKME)  # the right PIN: still refused while locked
    page.wait_for_selector(".kp-error:not([hidden])")
    assert "锁定" in page.inner_text(".kp-error")
    shot(page, "console-locked", tmp_path)
    kinds = [e["kind"] for e in st.api("/api/v1/events", officer_no=LOCKME[0])["items"]]
    assert kinds.count("login_failed") == 5
    assert "account_locked" in kinds and "login" not in kinds
    # the security administrator sees the lock in the accounts list
    page.click(".kp-cancel")
    page.goto(st.url("/ui/console"))
    keypad_login(page, *SECURITY)
    page.wait_for_selector(f".user-row[data-officer='{LOCKME[0]}']")
    assert "已锁定" in page.inner_text(f".user-row[data-officer='{LOCKME[0]}']")


def test_administrator_screens(st: StationProc, page: Any, tmp_path: Path) -> None:
    _collected(st)
    page.goto(st.url("/ui/console"))
    keypad_login(page, *ADMIN)
    page.wait_for_selector("#results .row")
    page.click(".tab[data-view='log']")
    page.wait_for_selector("#log-list .log-row")
    shot(page, "console-log", tmp_path)
    assert page.is_hidden(".tab[data-view='users']")  # accounts: the security administrator

    # settings: registration mode applies at once (the station screen's mode pill follows)
    page.click(".tab[data-view='settings']")
    page.wait_for_function("document.querySelector('[name=retention_days]').value !== ''")
    shot(page, "console-settings", tmp_path)
    page.check("input[name='registration_mode'][value='auto']")
    page.click("#settings button[type='submit']")
    page.wait_for_selector("#toast:not([hidden])")
    wait_for(lambda: st.api("/api/v1/status")["station"]["mode"] == "auto", 10, "auto mode")
    page.check("input[name='registration_mode'][value='manual']")
    page.click("#settings button[type='submit']")
    wait_for(lambda: st.api("/api/v1/status")["station"]["mode"] == "manual", 10, "manual mode")


def test_the_security_administrator_manages_accounts_and_sees_no_footage(
    st: StationProc, page: Any, tmp_path: Path
) -> None:
    page.goto(st.url("/ui/console"))
    keypad_login(page, *SECURITY)
    page.wait_for_selector(f".user-row[data-officer='{LOCKME[0]}']")  # the first view
    assert page.inner_text("#who-role") == "安全管理员"
    for tab in ("files", "settings"):
        assert page.is_hidden(f".tab[data-view='{tab}']"), tab
    assert page.is_visible(".tab[data-view='log']")
    shot(page, "console-users", tmp_path)


def test_an_expired_pin_is_changed_on_the_keypad_first(st: StationProc, page: Any) -> None:
    who = ("600008", "864208")
    catalog = Catalog(st.db)
    accounts.create_user(catalog, who[0], who[1], role="audit_admin")
    catalog.close()
    st.query(
        "UPDATE users SET password_changed_at = '2020-01-01 00:00:00.000000' WHERE officer_no = ?",
        who[0],
    )
    page.goto(st.url("/ui/console"))
    keypad_login(page, *who)
    page.wait_for_selector(".kp-input[name='again']")  # the change, before anything else
    assert "密码已过期" in page.inner_text(".kp-panel")
    for name, digits in (("current", who[1]), ("new", "975318"), ("again", "975318")):
        page.click(f".kp-input[name='{name}']")
        tap(page, digits)
    page.click(".kp-ok")
    page.wait_for_selector("#log-list .log-row")  # the audit administrator's own view
    assert page.inner_text("#who-role") == "审计管理员"


def test_an_administrator_with_a_second_factor_logs_in_with_its_code(
    st: StationProc, page: Any
) -> None:
    import pyotp

    who = ("900007", "135797")
    catalog = Catalog(st.db)
    accounts.create_user(catalog, who[0], who[1], role="administrator")
    secret = accounts.enroll_totp(catalog, who[0], by="test")
    catalog.close()
    page.goto(st.url("/ui/console"))
    keypad_login(page, *who)
    page.wait_for_selector(".kp-input[name='code']")  # asked for after the right PIN
    page.click(".kp-input[name='code']")
    tap(page, pyotp.TOTP(secret).now())
    page.click(".kp-ok")
    page.wait_for_selector("#results")
    page.wait_for_function("document.querySelector('#who-name').textContent.includes('900007')")


def test_screen_recovers_when_the_daemon_restarts(
    st: StationProc, page: Any, tmp_path: Path
) -> None:
    page.goto(st.url("/"))
    page.wait_for_function("document.body.dataset.conn === 'live'")
    st.stop()
    page.wait_for_function("document.body.dataset.conn === 'reconnecting'", timeout=20000)
    # not a screen that looks current: every window greyed, the clock and network blank,
    # and in plain words that nothing is collected
    page.wait_for_function("document.body.dataset.down === '1'", timeout=20000)
    assert page.is_visible("#down")
    assert "采集站未在采集" in page.inner_text("#down")
    assert page.inner_text("#clock-time") == "--:--:--"
    filters = page.eval_on_selector_all(".slot", "s => s.map(e => getComputedStyle(e).filter)")
    assert filters and all("grayscale(1)" in f for f in filters), filters
    shot(page, "station-daemon-down", tmp_path)
    st.start()
    page.wait_for_function("document.body.dataset.conn === 'live'", timeout=30000)
    # and it is live: a dock shows up without reloading the page
    dock(st, 6, 6, serial="K000006", officer_no=OFFICER[0], files=1, imp=0, size_mb=0.3)
    page.wait_for_function(
        "document.querySelector(\".slot[data-port='6']\").dataset.state !== 'empty'",
        timeout=10000,
    )
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    assert page.is_hidden("#down")


def test_zip_manifest_is_checkable(tmp_path: Path) -> None:
    """`sha256sum -c MANIFEST.sha256` accepts the manifest format we write."""
    if not shutil.which("sha256sum"):
        pytest.skip("no sha256sum")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a/b/x.AVI", b"hello")
        z.writestr(
            "MANIFEST.sha256",
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824  a/b/x.AVI\n",
        )
    zipfile.ZipFile(io.BytesIO(buf.getvalue())).extractall(tmp_path)
    subprocess.run(["sha256sum", "-c", "MANIFEST.sha256"], cwd=tmp_path, check=True)


# --- what the windows say, in every state, fitted to their boxes -----------------------------

LONG_NAME = "阿卜杜热合曼·买买提艾力·艾合买提"  # a long Uyghur name, in Chinese characters
LONG_UNIT = "新疆维吾尔自治区乌鲁木齐市公安局天山分局交通警察大队"


def _slot(port: int, state: str, **over: Any) -> dict[str, Any]:
    name = "欧阳娜娜" if port % 2 else LONG_NAME
    rec = {"serial": f"GX9A2B7C{port:02d}", "officer_no": f"65010{port}",
           "officer_name": name, "unit_name": LONG_UNIT}  # fmt: skip
    s: dict[str, Any] = {
        "port": port, "state": state, "recorder": None if state == "empty" else rec,
        "battery_percent": 15 if port % 3 == 0 else 87, "files_total": 128, "files_done": 127,
        "bytes_total": 31_900_000_000, "bytes_done": 31_899_000_000, "bytes_per_s": 38_400_000,
        "error": None, "priority": False, "reason": None, "reason_params": {},
        "removed_early": None,
    }  # fmt: skip
    s.update(over)
    return s


# every state and every reason the screen words (station/web/app.py slot_reason)
EARLY = {"serial": "GX9A2B7C01", "officer_no": "650101", "officer_name": LONG_NAME,
         "state": "collecting"}  # fmt: skip
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("empty", {}),
    ("empty", {"removed_early": EARLY}),
    ("identifying", {"files_total": 0, "bytes_total": 0}),
    ("collecting", {"priority": True}),
    ("collecting", {}),
    ("complete", {}),
    ("unregistered", {"reason": "waiting_approval"}),
    ("unregistered", {"reason": "possible_clone", "reason_params": {"other_port": "7"}}),
    (
        "unregistered",
        {
            "reason": "officer_changed",
            "reason_params": {"reported": "650199", "registered": "650101"},
        },
    ),
    (
        "unregistered",
        {
            "reason": "officer_has_recorder",
            "reason_params": {"officer": "650101", "other": "GX9A2B7C99"},
        },
    ),
    ("unregistered", {"reason": "block_changed"}),
    ("unregistered", {"reason": "held"}),
    ("error", {"reason": "not_a_recorder", "recorder": None}),
    ("error", {"reason": "wrong_password"}),
    ("error", {"reason": "storage_full"}),
    ("error", {"reason": "files_kept", "reason_params": {"n": "12"}}),
    ("error", {"reason": "internal_error"}),
    ("error", {"reason": "recorder_error"}),
]


def _status(slots: list[dict[str, Any]], alarms: list[dict[str, Any]] | None = None) -> str:
    return json.dumps({
        "station": {"id": "PG-0001", "name": "平谷采集站 1", "version": "1",
                    "time": "2026-12-03T10:00:00+08:00", "mode": "manual"},
        "network": {"online": True},
        "disks": [{"total_bytes": 7_681_000_000_000, "free_bytes": 6_120_000_000_000,
                   "active": True, "health": "healthy"},
                  {"total_bytes": 15_362_000_000_000, "free_bytes": 15_360_000_000_000,
                   "active": False, "health": "healthy"}],
        "alarms": alarms or [],
        "slots": slots,
    }, ensure_ascii=False)  # fmt: skip


class ScreenFeed:
    """The screen's two data routes answered by the test: the page's own code renders
    whatever status it is given (the stream reconnects every 0.2 s and fetches it)."""

    def __init__(self, page: Any) -> None:
        self.body = _status([_slot(p, "empty") for p in range(1, 9)])
        page.route("**/ui/state", lambda route: route.fulfill(
            status=200, content_type="application/json", body=self.body))  # fmt: skip
        page.route("**/ui/stream", lambda route: route.fulfill(
            status=200, content_type="text/event-stream",
            body=f"retry: 200\nevent: status\ndata: {self.body}\n\n"))  # fmt: skip

    def show(self, page: Any, slots: list[dict[str, Any]], **kw: Any) -> None:
        self.body = _status(slots, **kw)
        want = [s.get("reason") or ("removed_early" if s.get("removed_early") else "")
                for s in slots]  # fmt: skip
        page.wait_for_function(
            "w => { const s = [...document.querySelectorAll('.slot')]"
            ".sort((a, b) => a.dataset.port - b.dataset.port);"
            " return s.length === w.length && s.every((e, i) => e.dataset.reason === w[i]); }",
            arg=want,
        )
        page.evaluate("() => new Promise(r => requestAnimationFrame(() => setTimeout(r, 50)))")


OVERFLOWS = """() => {
  const bad = [];
  const where = (e) => `${e.closest('.slot') ? 'port ' + e.closest('.slot').dataset.port : ''}`
    + ` ${e.className || e.tagName}: "${e.textContent.trim().slice(0, 40)}"`;
  for (const box of document.querySelectorAll('.slot, #topbar, #alarm-banner')) {
    if (box.hidden) continue;
    const b = box.getBoundingClientRect();
    for (const e of [box, ...box.querySelectorAll('*')]) {
      const cs = getComputedStyle(e);
      if (cs.visibility === 'hidden' || !e.getClientRects().length) continue; // not shown
      const text = [...e.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
      const r = e.getBoundingClientRect();
      if (text && (r.left < b.left - 1 || r.right > b.right + 1 || r.top < b.top - 1
                   || r.bottom > b.bottom + 1)) bad.push('outside its window: ' + where(e));
      if (cs.display === 'inline' || !(text || e.classList.contains('slot-body'))) continue;
      const wide = e.scrollWidth - e.clientWidth;
      if (wide > 1) bad.push(`${wide} px too wide: ` + where(e));
      // text taller than a box that shows it anyway (a glyph above its line) hides nothing
      const tall = e.scrollHeight - e.clientHeight;
      if (cs.overflowY !== 'visible' && tall > 1) bad.push(`${tall} px too tall: ` + where(e));
    }
  }
  return bad;
}"""


@pytest.mark.parametrize("lang", ["zh-CN", "en"])
def test_no_text_of_a_port_window_overflows_its_box(
    st: StationProc, page: Any, tmp_path: Path, lang: str
) -> None:
    """Every state and reason, with long names and units, in both languages: every text
    element fits its box (scrollWidth against clientWidth, scrollHeight against
    clientHeight) and stays inside its window; nothing is cut off with an ellipsis."""
    feed = ScreenFeed(page)
    page.goto(st.url(f"/?lang={lang}"))
    page.wait_for_selector(".slot[data-port='8']")
    problems: list[str] = []
    for i in range(0, len(VARIANTS), 8):
        chunk = VARIANTS[i : i + 8]
        slots = [_slot(n + 1, state, **over) for n, (state, over) in enumerate(chunk)]
        slots += [_slot(p, "empty") for p in range(len(slots) + 1, 9)]
        feed.show(page, slots)
        problems += [f"{lang} {[v[1].get('reason') for v in chunk]}: {p}"
                     for p in page.evaluate(OVERFLOWS)]  # fmt: skip
        shot(page, f"station-states-{i // 8 + 1}{'' if lang == 'zh-CN' else '-en'}", tmp_path)
    assert not problems, "\n".join(problems)


# --- alarms ----------------------------------------------------------------------------------


def _screen(browser: Any, url: str, lang: str = "zh-CN") -> Any:
    ctx = browser.new_context(viewport={"width": 1024, "height": 600}, has_touch=True,
                              locale="zh-CN", bypass_csp=True)  # fmt: skip
    pg = ctx.new_page()
    pg.goto(f"{url}?lang={lang}")
    pg.wait_for_function("document.body.dataset.conn === 'live'")
    return pg


@needs_root
def test_storage_full_stays_alarmed_while_a_recorder_is_blocked(
    make_station: Any, browser: Any, tmp_path: Path
) -> None:
    """Two 12 MB disks fill up with a recorder docked: its port waits for space, and the
    alarm stays raised (and first in the banner) for as long as it waits, though a 0-byte
    file would still fit; it ends when the recorder leaves."""
    from station.runtime import DISK_CHECK_S

    st2 = make_station(start=False, store={"min_free_mb": 2})
    st2.wrapper = tmpfs_disks((st2.disks[0], "12m"), (st2.disks[1], "12m"))
    st2.start()
    st2.dock(4, st2.build(RecorderSpec(serial="H000004", officer_no="700004", files=12, imp=1,
                                       size_mb=3.0), seed=4))  # fmt: skip
    slot = st2.wait_state(4, "error", timeout=240)
    assert "storage full" in slot["error"]
    pg = _screen(browser, st2.url("/"))
    try:
        # several disk checks later (each used to clear it: a 0-byte file fits)
        for _ in range(3):
            time.sleep(DISK_CHECK_S)
            codes = [a["code"] for a in st2.api("/api/v1/status")["alarms"]]
            assert "storage_full" in codes, codes
            assert st2.slot(4)["state"] == "error"
        pg.wait_for_selector("#alarm-banner:not([hidden])")
        assert "存储硬盘已满" in pg.inner_text("#alarm-text")
        assert pg.get_attribute(".slot[data-port='4']", "data-reason") == "storage_full"
        assert "有空间后自动继续" in pg.inner_text(".slot[data-port='4'] .advice")
        st2.undock(4)
        wait_for(
            lambda: "storage_full" not in [a["code"] for a in st2.api("/api/v1/status")["alarms"]],
            30,
            "storage_full cleared once nothing waits for space",
        )
    finally:
        pg.context.close()


# Machado, Oliveira and Fernandes (2009): deuteranopia, severity 1, as an SVG colour matrix
DEUTERANOPIA = (
    "0.367322 0.860646 -0.227968 0 0  0.280085 0.672501 0.047413 0 0  "
    "-0.011820 0.042940 0.968881 0 0  0 0 0 1 0"
)


def _head_colour(png: bytes, box: dict[str, float]) -> tuple[float, float, float]:
    """The most common colour of a window's head (its background, not its text)."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    crop = img.crop((int(box["x"]), int(box["y"]), int(box["x"] + box["width"]),
                     int(box["y"] + box["height"])))  # fmt: skip
    counts = sorted(crop.getcolors(maxcolors=1 << 20) or [], reverse=True)
    return tuple(float(c) for c in counts[0][1])  # type: ignore[return-value]


def _luminance(rgb: tuple[float, float, float]) -> float:
    def lin(c: float) -> float:
        c /= 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_complete_and_error_differ_for_colour_blind_eyes(
    st: StationProc, page: Any, tmp_path: Path
) -> None:
    """Under a simulated deuteranopia (the page seen through a colour matrix) the heads of a
    complete and a failed window still differ clearly in lightness, and each carries its
    own large shape (a tick, a cross) and a state word large enough for 1.5 m."""
    feed = ScreenFeed(page)
    page.goto(st.url("/"))
    page.wait_for_selector(".slot[data-port='8']")
    slots = [_slot(1, "complete"), _slot(2, "error", reason="files_kept",
                                         reason_params={"n": "3"})]  # fmt: skip
    feed.show(page, slots + [_slot(p, "empty") for p in range(3, 9)])
    page.evaluate(
        """m => {
        const ns = 'http://www.w3.org/2000/svg';
        const svg = document.createElementNS(ns, 'svg');
        svg.setAttribute('width', '0'); svg.setAttribute('height', '0');
        svg.style.position = 'absolute';
        svg.innerHTML = `<filter id="deut"><feColorMatrix type="matrix" values="${m}"/></filter>`;
        document.body.appendChild(svg);
        document.documentElement.style.filter = 'url(#deut)';
      }""",
        DEUTERANOPIA,
    )
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => setTimeout(r, 100)))")
    png = page.screenshot()
    shot(page, "station-deuteranopia", tmp_path)
    heads = [page.locator(f".slot[data-port='{p}'] .slot-head").bounding_box() for p in (1, 2)]
    ok, bad = (_head_colour(png, h) for h in heads)  # type: ignore[arg-type]
    light, dark = sorted((_luminance(ok), _luminance(bad)), reverse=True)
    contrast = (light + 0.05) / (dark + 0.05)
    assert contrast >= 3.0, (ok, bad, contrast)  # WCAG's ratio for large text and shapes
    for port, mark in ((1, "✓"), (2, "✕")):
        m = page.locator(f".slot[data-port='{port}'] .slot-mark")
        assert m.inner_text() == mark
        box = m.bounding_box()
        assert box and box["width"] >= 40 and box["height"] >= 40
        size = page.evaluate(
            "p => parseFloat(getComputedStyle(document.querySelector("
            "`.slot[data-port='${p}'] .slot-state`)).fontSize)",
            port,
        )
        assert size >= 26, size  # about 7 mm on this 7-inch screen: legible at 1.5 m


def test_the_banner_shows_the_most_severe_alarm_first_and_the_list_acknowledges(
    st: StationProc, page: Any, tmp_path: Path
) -> None:
    """A warning raised first and a critical alarm after it: the banner shows the critical
    one, in words, with the count; the alarm list orders by severity and an administrator
    acknowledges one there with their number and PIN (it stays raised)."""
    from station.health.alarms import AlarmBook

    catalog = Catalog(st.db)
    book = AlarmBook(catalog)
    book.raise_("forward_failing", "upload to central storage failing: timeout", "test-fwd")
    book.raise_("store_corrupt", "/srv/disk1/800001/K1/x.AVI: hash differs", "test-corrupt")
    try:
        page.goto(st.url("/"))
        page.wait_for_function(
            "(document.querySelector('#alarm-text') || {}).textContent === '发现损坏的存储文件'",
            timeout=30000,
        )
        n = len(st.api("/api/v1/status")["alarms"])
        assert page.inner_text("#alarm-count") == str(n)
        shot(page, "station-alarm-banner", tmp_path)
        page.click("#alarm-banner")
        page.wait_for_selector(".al-row[data-code='store_corrupt']")
        rows = page.eval_on_selector_all(
            ".al-row", "rs => rs.map(r => [r.dataset.code, r.className])"
        )
        sev = ["critical" if "sev-critical" in cls else "warning" for _, cls in rows]
        assert sev == sorted(sev, key=lambda s: s != "critical"), rows
        codes = [c for c, _ in rows]
        assert codes.index("store_corrupt") < codes.index("forward_failing")
        assert "上传到中心存储失败" in page.inner_text(".al-row[data-code='forward_failing']")
        shot(page, "station-alarm-list", tmp_path)

        page.click(".al-row[data-code='store_corrupt'] .al-ack")
        page.click(".kp-input[name='admin_no']")
        tap(page, ADMIN[0])
        page.click(".kp-input[name='secret']")
        tap(page, ADMIN[1])
        page.click(".kp-ok")
        page.wait_for_selector(".kp-panel", state="detached")
        page.wait_for_selector(".al-row.acked[data-code='store_corrupt']", timeout=30000)
        assert "已确认" in page.inner_text(".al-row[data-code='store_corrupt']")
        row = st.query(
            "SELECT acked_by, cleared_at FROM alarms WHERE code = 'store_corrupt'"
            " AND subject = 'test-corrupt'"
        )[0]
        assert row == (ADMIN[0], None)  # acknowledged, still raised
        page.click(".al-close")
    finally:
        book.clear("forward_failing", "test-fwd")
        book.clear("store_corrupt", "test-corrupt")
        catalog.close()


def test_a_recorder_pulled_out_early_is_shown_said_and_logged(st: StationProc, page: Any) -> None:
    """Unplugged while collecting: its window says the collection did not finish, with
    the recorder's identity, instead of going quietly back to empty; the log has it."""
    page.goto(st.url("/"))
    page.wait_for_function("document.body.dataset.conn === 'live'")
    dock(st, 7, 77, serial="K000077", officer_no=OFFICER[0], officer_name="王五",
         files=6, imp=0, size_mb=6, read_mb_s=1)  # fmt: skip
    st.wait_state(7, "unregistered")
    st.cli("recorders", "approve", "K000077")
    st.wait_state(7, "collecting", timeout=60)
    st.undock(7)
    win = ".slot[data-port='7']"
    page.wait_for_selector(f"{win}[data-reason='removed_early']", timeout=20000)
    assert page.get_attribute(win, "data-state") == "empty"
    text = page.inner_text(win)
    assert "未完成" in text and "K000077" in text and "采集未完成就被拔出" in text
    kinds = [e["kind"] for e in st.api("/api/v1/events", serial="K000077")["items"]]
    assert "recorder_removed_early" in kinds
    # docked again: the notice gives way to the new collection
    dock(st, 7, 77, serial="K000077", officer_no=OFFICER[0], officer_name="王五",
         files=1, imp=0, size_mb=0.3)  # fmt: skip
    page.wait_for_selector(f"{win}:not([data-reason='removed_early'])", timeout=20000)
    st.wait_state(7, "complete", timeout=120)
    st.undock(7)


def _logged_out(page: Any) -> bool:
    return page.evaluate(
        "fetch('/ui/api/session', {credentials: 'same-origin'}).then(r => r.json())"
        ".then(s => !s.user)"
    )


def test_the_kiosk_returns_to_the_port_windows(st: StationProc, page: Any, tmp_path: Path) -> None:
    """The console opened from the station screen gives the screen back to the port
    windows (ending the session) when a recorder docks, on logout and when idle, and
    shows a strip of the ports meanwhile."""
    page.goto(st.url("/"))
    page.wait_for_function("document.body.dataset.conn === 'live'")
    page.click("#files-btn")
    page.wait_for_url("**/ui/console?kiosk=1")
    keypad_login(page, *ADMIN)
    page.wait_for_selector("#view-files:not([hidden])")
    page.wait_for_selector("#port-strip .chip[data-port='8']")
    shot(page, "console-kiosk-strip", tmp_path)

    # a recorder docks: back to the windows, where it shows
    dock(st, 2, 22, serial="K000022", officer_no=OFFICER[0], files=1, imp=0, size_mb=0.3)
    page.wait_for_url(st.url("/"), timeout=20000)
    page.wait_for_function(
        "(document.querySelector('.slot[data-port=\"2\"]') || {dataset: {}}).dataset.state"
        " && document.querySelector('.slot[data-port=\"2\"]').dataset.state !== 'empty'",
        timeout=20000,
    )
    assert _logged_out(page)

    # logout
    page.click("#files-btn")
    keypad_login(page, *ADMIN)
    page.wait_for_selector("#view-files:not([hidden])")
    page.click("#logout-btn")
    page.wait_for_url(st.url("/"), timeout=20000)
    assert _logged_out(page)

    # idle (here after 2 s without a touch)
    page.goto(st.url("/ui/console?kiosk=1&idle_s=2"))
    keypad_login(page, *ADMIN)
    page.wait_for_selector("#view-files:not([hidden])")
    page.wait_for_url(st.url("/"), timeout=30000)
    assert _logged_out(page)
    st.cli("recorders", "approve", "K000022")
    st.wait_state(2, "complete", timeout=120)
    st.undock(2)


def osk_type(page: Any, keys: str) -> None:
    """Tap keys of the on-screen keyboard (a space is its space bar)."""
    for k in keys:
        page.click(f".osk .hg-button[data-skbtn='{'{space}' if k == ' ' else k}']")


def osk_pinyin(page: Any, pinyin: str, char: str) -> None:
    """Type a syllable in pinyin on the on-screen keyboard and tap its character."""
    osk_type(page, pinyin)
    page.click(f".hg-candidate-box-list-item:text-is('{char}')")


def test_a_delete_with_its_reason_typed_on_the_on_screen_keyboard(
    st: StationProc, page: Any, tmp_path: Path
) -> None:
    """In the kiosk an administrator finds a recorder's files by its serial (letters and
    digits) and deletes one with a reason typed in pinyin and letters, all on the
    on-screen keyboard; the station's own message replaces the browser's bubble."""
    dock(st, 5, 55, serial="KX55A", officer_no=OFFICER[0], officer_name="王五",
         files=2, imp=0, size_mb=0.3)  # fmt: skip
    st.wait_state(5, "unregistered")
    st.cli("recorders", "approve", "KX55A")
    st.wait_state(5, "complete", timeout=120)
    st.undock(5)
    page.goto(st.url("/ui/console?kiosk=1"))
    keypad_login(page, *ADMIN)
    page.wait_for_selector("#view-files:not([hidden])")

    page.click("#search input[name='serial']")
    page.wait_for_selector(".osk")
    osk_type(page, "kx55")
    page.click(".osk .hg-button[data-skbtn='{shift}']")
    osk_type(page, "A")
    assert page.input_value("#search input[name='serial']") == "kx55A"
    page.fill("#search input[name='serial']", "KX55A")  # the search is exact: upper case
    page.click(".osk .hg-button[data-skbtn='{done}']")
    page.wait_for_selector(".osk", state="detached")
    page.click("#search button[type='submit']")
    page.wait_for_function(
        "document.querySelectorAll('#results .row').length > 0"
        " && [...document.querySelectorAll('#results .row-sub')]"
        ".every(r => r.textContent.includes('KX55A'))"
    )
    fid = int(page.get_attribute("#results .row", "data-id"))
    page.locator("#results .row").first.click()
    page.wait_for_selector("#delete-one:not([hidden])")
    page.click("#delete-one")
    page.wait_for_selector(".dialog textarea[name='reason']")
    page.click(".dialog .btn.danger")  # no reason: the station says so, in Chinese
    page.wait_for_selector(".dialog-error:not([hidden])")
    assert "请填写" in page.inner_text(".dialog-error")

    page.click(".dialog textarea[name='reason']")
    page.wait_for_selector(".osk[data-mode='pinyin']")
    osk_pinyin(page, "chong", "重")
    osk_pinyin(page, "fu", "复")
    osk_pinyin(page, "lu", "录")
    page.click(".osk .hg-button[data-skbtn='{mode}']")  # to ABC
    page.wait_for_selector(".osk[data-mode='letters']")
    osk_type(page, " test 1")
    shot(page, "console-keyboard", tmp_path)
    assert page.input_value(".dialog textarea[name='reason']") == "重复录 test 1"
    page.click(".dialog .btn.danger")
    page.wait_for_selector("#toast:not([hidden])")
    assert "已删除" in page.inner_text("#toast")
    ev = [e for e in st.api("/api/v1/events", file_id=fid)["items"] if e["kind"] == "file_deleted"]
    assert ev and "重复录 test 1" in ev[-1]["message"], ev


def test_the_administrator_has_an_alarm_page_and_a_recorder_list(
    st: StationProc, page: Any, tmp_path: Path
) -> None:
    from station.health.alarms import AlarmBook

    dock(st, 1, 11, serial="K000011", officer_no="800011", files=1, imp=0, size_mb=0.3)
    st.wait_state(1, "unregistered")  # manual mode: pending
    catalog = Catalog(st.db)
    book = AlarmBook(catalog)
    book.raise_("disk_degraded", "disk 2 reallocated sectors rising", "test-page")
    try:
        page.goto(st.url("/ui/console"))
        keypad_login(page, *ADMIN)
        page.wait_for_selector("#view-files:not([hidden])")
        page.click(".tab[data-view='recorders']")
        row = page.wait_for_selector(".rec-row[data-serial='K000011']")
        assert "等待注册" in row.inner_text() and "800011" in row.inner_text()
        shot(page, "console-recorders", tmp_path)
        page.click(".tab[data-view='alarms']")
        row = page.wait_for_selector(".alarm-row[data-code='disk_degraded']")
        assert "存储硬盘老化" in row.inner_text() and "未确认" in row.inner_text()
        shot(page, "console-alarms", tmp_path)
        row.query_selector("button").click()
        page.wait_for_selector(".alarm-row[data-code='disk_degraded'] >> text=已由 900001 确认")
        acked = st.query("SELECT acked_by FROM alarms WHERE subject = 'test-page'")[0][0]
        assert acked == ADMIN[0]
    finally:
        book.clear("disk_degraded", "test-page")
        catalog.close()
        st.undock(1)
