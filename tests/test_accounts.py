"""Accounts (S31): argon2 hashes, roles, lockout after five wrong PINs, sessions that end."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from station import accounts
from station.accounts import AccountError
from station.catalog import Catalog, Event, User
from station.catalog.models import utcnow


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    c = Catalog(tmp_path / "catalog.db")
    c.migrate()
    yield c
    c.close()


def kinds(catalog: Catalog) -> list[str]:
    with catalog.read() as s:
        return [e.kind for e in s.query(Event).order_by(Event.id)]


def test_secret_is_stored_only_as_an_argon2id_hash(catalog: Catalog) -> None:
    accounts.create_user(catalog, "900001", "135790", role="administrator", name="赵")
    with catalog.read() as s:
        u = s.query(User).one()
    assert u.password_hash.startswith("$argon2id$")
    assert "135790" not in u.password_hash
    assert accounts.authenticate(catalog, "900001", "135790").account is not None
    assert accounts.authenticate(catalog, "900001", "135791").account is None


def test_create_refuses_bad_role_short_secret_and_duplicates(catalog: Catalog) -> None:
    with pytest.raises(AccountError, match="role"):
        accounts.create_user(catalog, "1", "123456", role="root")
    with pytest.raises(AccountError, match="at least"):
        accounts.create_user(catalog, "1", "12345", role="officer")
    accounts.create_user(catalog, "1", "123456", role="officer")
    with pytest.raises(AccountError, match="exists"):
        accounts.create_user(catalog, "1", "654321", role="officer")


def test_five_wrong_secrets_lock_even_the_right_one_until_the_lock_ends(catalog: Catalog) -> None:
    accounts.create_user(catalog, "800001", "246801", role="officer")
    now = utcnow()
    for i in range(4):
        r = accounts.authenticate(catalog, "800001", "000000", now=now)
        assert (r.account, r.reason) == (None, "bad_credentials"), i
    r = accounts.authenticate(catalog, "800001", "000000", now=now)
    assert r.reason == "locked"
    assert accounts.authenticate(catalog, "800001", "246801", now=now).reason == "locked"
    later = now + dt.timedelta(minutes=accounts.LOCK_MINUTES, seconds=1)
    assert accounts.authenticate(catalog, "800001", "246801", now=later).account is not None
    log = kinds(catalog)
    assert log.count("login_failed") == 5
    assert "account_locked" in log and "login_refused" in log


def test_a_success_resets_the_failure_count(catalog: Catalog) -> None:
    accounts.create_user(catalog, "800001", "246801", role="officer")
    for _ in range(4):
        accounts.authenticate(catalog, "800001", "x")
    assert accounts.authenticate(catalog, "800001", "246801").account is not None
    for _ in range(4):
        assert accounts.authenticate(catalog, "800001", "x").reason == "bad_credentials"


def test_administrator_unlocks(catalog: Catalog) -> None:
    accounts.create_user(catalog, "900001", "135790", role="administrator")
    accounts.create_user(catalog, "800001", "246801", role="officer")
    for _ in range(5):
        accounts.authenticate(catalog, "800001", "x")
    assert accounts.get_user(catalog, "800001").locked
    accounts.update_user(catalog, "800001", by="900001", unlock=True)
    assert accounts.authenticate(catalog, "800001", "246801").account is not None


def test_unknown_and_disabled_accounts(catalog: Catalog) -> None:
    assert accounts.authenticate(catalog, "nobody", "123456").reason == "bad_credentials"
    accounts.create_user(catalog, "900001", "135790", role="administrator")
    accounts.create_user(catalog, "800001", "246801", role="officer")
    accounts.update_user(catalog, "800001", by="900001", active=False)
    assert accounts.authenticate(catalog, "800001", "246801").reason == "disabled"


def test_a_disabled_account_does_not_say_so_to_a_wrong_secret(catalog: Catalog) -> None:
    accounts.create_user(catalog, "900001", "135790", role="administrator")
    accounts.create_user(catalog, "800001", "246801", role="officer")
    accounts.update_user(catalog, "800001", by="900001", active=False)
    assert accounts.authenticate(catalog, "800001", "999999").reason == "bad_credentials"


def test_one_wrong_pin_now_and_then_never_keeps_an_account_locked(catalog: Catalog) -> None:
    accounts.create_user(catalog, "900001", "135790", role="administrator")
    now = utcnow()
    for i in range(20):  # a wrong PIN every 16 minutes for five hours
        t = now + dt.timedelta(minutes=16 * i)
        assert accounts.authenticate(catalog, "900001", "000000", now=t).reason == (
            "bad_credentials"
        ), i
        assert accounts.authenticate(catalog, "900001", "135790", source="10.0.0.9",
                                     now=t).account is not None  # fmt: skip


def test_a_lock_holds_for_its_source_only_and_doubles(catalog: Catalog) -> None:
    accounts.create_user(catalog, "900001", "135790", role="administrator")
    now = utcnow()

    def guess(at: dt.datetime) -> str | None:
        for _ in range(accounts.MAX_FAILURES):
            r = accounts.authenticate(catalog, "900001", "0", source="10.0.0.66", now=at)
        return r.reason

    assert guess(now) == "locked"
    # from the attacker's address even the right secret is refused; from another it works
    r = accounts.authenticate(catalog, "900001", "135790", source="10.0.0.66", now=now)
    assert r.reason == "locked"
    r = accounts.authenticate(catalog, "900001", "135790", source="127.0.0.1", now=now)
    assert r.account is not None
    # the next lock in a row lasts twice as long
    second = now + dt.timedelta(minutes=accounts.LOCK_MINUTES, seconds=1)
    assert guess(second) == "locked"
    t = second + dt.timedelta(minutes=accounts.LOCK_MINUTES, seconds=1)
    assert accounts.authenticate(catalog, "900001", "135790", source="10.0.0.66",
                                 now=t).reason == "locked"  # fmt: skip
    t = second + dt.timedelta(minutes=2 * accounts.LOCK_MINUTES, seconds=1)
    assert accounts.authenticate(catalog, "900001", "135790", source="10.0.0.66",
                                 now=t).account is not None  # fmt: skip


def test_station_users_unlock(tmp_path, catalog: Catalog) -> None:
    import subprocess
    import sys

    import tomli_w

    accounts.create_user(catalog, "900001", "135790", role="administrator")
    for _ in range(accounts.MAX_FAILURES):
        accounts.authenticate(catalog, "900001", "0", source="10.0.0.66")
    assert accounts.get_user(catalog, "900001").locked
    config = tmp_path / "station.toml"
    config.write_text(tomli_w.dumps({
        "station": {"id": "T-1"}, "store": {"disks": [str(tmp_path / "d")]},
        "database": {"url": f"sqlite:///{catalog.path}"},
    }))  # fmt: skip
    r = subprocess.run([sys.executable, "-m", "station", "users", "unlock", "900001",
                        "--config", str(config)], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0 and "900001 unlocked" in r.stdout, r.stderr
    r = accounts.authenticate(catalog, "900001", "135790", source="10.0.0.66")
    assert r.account is not None
    assert "user_changed" in kinds(catalog)


def test_sessions_end_on_logout_idle_and_absolute_expiry(catalog: Catalog) -> None:
    a = accounts.create_user(catalog, "800001", "246801", role="officer")
    token = accounts.start_session(catalog, a)
    assert accounts.session_account(catalog, token).officer_no == "800001"
    assert accounts.session_account(catalog, token + "x") is None
    now = utcnow()
    # idle: no request for longer than the idle time
    assert accounts.session_account(catalog, token, idle_minutes=5, now=now + dt.timedelta(
        minutes=6)) is None  # fmt: skip
    assert accounts.session_account(catalog, token) is None  # ended for good

    t2 = accounts.start_session(catalog, a)
    # activity keeps it alive, up to the absolute limit
    step = now
    for _ in range(5):
        step += dt.timedelta(minutes=4)
        assert accounts.session_account(catalog, t2, idle_minutes=5, now=step) is not None
    late = now + dt.timedelta(hours=accounts.MAX_SESSION_HOURS, minutes=1)
    assert accounts.session_account(catalog, t2, idle_minutes=10**6, now=late) is None

    t3 = accounts.start_session(catalog, a)
    accounts.end_session(catalog, t3)
    assert accounts.session_account(catalog, t3) is None
    assert {"login", "logout", "session_ended"} <= set(kinds(catalog))


def test_new_secret_or_disabling_ends_sessions(catalog: Catalog) -> None:
    accounts.create_user(catalog, "900001", "135790", role="administrator")
    a = accounts.create_user(catalog, "800001", "246801", role="officer")
    token = accounts.start_session(catalog, a)
    accounts.update_user(catalog, "800001", by="900001", secret="999999")
    assert accounts.session_account(catalog, token) is None
    assert accounts.authenticate(catalog, "800001", "999999").account is not None
    token = accounts.start_session(catalog, a)
    accounts.update_user(catalog, "800001", by="900001", active=False)
    assert accounts.session_account(catalog, token) is None


def test_the_last_administrator_stays(catalog: Catalog) -> None:
    accounts.create_user(catalog, "900001", "135790", role="administrator")
    with pytest.raises(AccountError, match="at least one"):
        accounts.update_user(catalog, "900001", by="900001", active=False)
    with pytest.raises(AccountError, match="at least one"):
        accounts.update_user(catalog, "900001", by="900001", role="officer")
    accounts.create_user(catalog, "900002", "135790", role="administrator")
    accounts.update_user(catalog, "900001", by="900002", role="auditor")
    assert accounts.count_admins(catalog) == 1


def test_csrf_token_is_bound_to_the_session(catalog: Catalog) -> None:
    a = accounts.create_user(catalog, "800001", "246801", role="officer")
    t1, t2 = accounts.start_session(catalog, a), accounts.start_session(catalog, a)
    assert accounts.csrf_token(t1) == accounts.csrf_token(t1)
    assert accounts.csrf_token(t1) != accounts.csrf_token(t2)
    assert t1 not in accounts.csrf_token(t1)


def test_roles() -> None:
    base = dict(id=1, officer_no="1", name="", active=True, locked=False, failed_logins=0)
    assert accounts.Account(role="administrator", **base).sees_all_files
    assert accounts.Account(role="auditor", **base).sees_all_files
    assert not accounts.Account(role="officer", **base).sees_all_files
    assert not accounts.Account(role="auditor", **base).is_admin


def test_a_recent_secret_may_not_come_back(catalog: Catalog, monkeypatch) -> None:
    monkeypatch.setattr(accounts, "_policy", accounts.SecretPolicy(history=2))
    accounts.create_user(catalog, "900001", "111111", role="administrator")
    accounts.update_user(catalog, "900001", by="900001", secret="222222")
    for old in ("111111", "222222"):  # the current one and the one before it
        with pytest.raises(AccountError, match="must differ from the last 2"):
            accounts.update_user(catalog, "900001", by="900001", secret=old)
    accounts.update_user(catalog, "900001", by="900001", secret="333333")
    accounts.update_user(catalog, "900001", by="900001", secret="111111")  # 3 ago: allowed
    assert accounts.authenticate(catalog, "900001", "111111").account is not None


def test_a_secret_expires_for_the_roles_the_policy_names(catalog: Catalog, monkeypatch) -> None:
    monkeypatch.setattr(accounts, "_policy", accounts.SecretPolicy(max_age_days=90))
    accounts.create_user(catalog, "900001", "135790", role="administrator")
    accounts.create_user(catalog, "800001", "246801", role="officer")
    with catalog.write() as s:
        for u in s.query(User):
            u.password_changed_at = utcnow() - dt.timedelta(days=91)
    admin = accounts.authenticate(catalog, "900001", "135790").account
    officer = accounts.authenticate(catalog, "800001", "246801").account
    assert admin is not None and admin.must_change and admin.as_dict()["must_change"]
    assert officer is not None and not officer.must_change  # keypad PINs: not listed
    accounts.update_user(catalog, "900001", by="900001", secret="975310")
    assert not accounts.authenticate(catalog, "900001", "975310").account.must_change


def test_the_policy_comes_from_the_configuration(tmp_path: Path) -> None:
    from station.config import ConfigError, parse_config

    config = parse_config({"accounts": {"min_secret_length": 8, "secret_max_age_days": 30}})
    accounts.configure(config.accounts)
    try:
        with pytest.raises(AccountError, match="at least 8"):
            accounts.check_secret_policy("1234567")
    finally:
        accounts.configure(parse_config({}).accounts)
    with pytest.raises(ConfigError, match="secret_max_age_roles"):
        parse_config({"accounts": {"secret_max_age_roles": ["superuser"]}})


def test_an_enrolled_second_factor_is_asked_for_and_good_once(catalog: Catalog) -> None:
    import pyotp

    accounts.create_user(catalog, "900001", "135790", role="administrator")
    accounts.create_user(catalog, "800001", "246801", role="officer")
    secret = accounts.enroll_totp(catalog, "900001", by="cli")
    totp, now = pyotp.TOTP(secret), utcnow()
    assert accounts.authenticate(catalog, "900001", "135790").reason == "second_factor"
    wrong = accounts.authenticate(catalog, "900001", "135790", code="000000")
    assert wrong.account is None and wrong.reason == "bad_credentials"  # counts as a failure
    good = accounts.authenticate(catalog, "900001", "135790", code=totp.at(now), now=now)
    assert good.account is not None
    again = accounts.authenticate(catalog, "900001", "135790", code=totp.at(now), now=now)
    assert again.account is None, "a code was taken twice"
    assert accounts.authenticate(catalog, "800001", "246801").account is not None  # officers
    accounts.enroll_totp(catalog, "900001", by="cli", remove=True)
    assert accounts.authenticate(catalog, "900001", "135790").account is not None
    assert "login_failed" in kinds(catalog)


def test_a_required_second_factor_refuses_an_account_without_one(
    catalog: Catalog, monkeypatch
) -> None:
    monkeypatch.setattr(accounts, "_policy", accounts.SecretPolicy(second_factor_required=True))
    accounts.create_user(catalog, "900001", "135790", role="security_admin")
    r = accounts.authenticate(catalog, "900001", "135790")
    assert r.account is None and r.reason == "second_factor_unenrolled"
