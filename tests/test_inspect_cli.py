"""`edgecert inspect` on certificates made by openssl: thresholds to the second, actions at the edges."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import CliResult, openssl_cert

START = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
LIFETIMES = {"90 days": timedelta(days=90), "10 minutes": timedelta(minutes=10)}
JSON_KEYS = {
    "subject",
    "thumbprintSha256",
    "notBefore",
    "notAfter",
    "lifetimeSeconds",
    "renewAfter",
    "urgentAfter",
    "action",
    "reason",
}


def z(instant: datetime) -> str:
    return instant.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(params=[(k, lt) for k in ("ec", "rsa") for lt in LIFETIMES], ids=lambda p: f"{p[0]}-{p[1]}")
def made_by_openssl(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, timedelta]:
    key, lifetime_name = request.param
    lifetime = LIFETIMES[lifetime_name]
    cert = openssl_cert(tmp_path, f"{key}-device", key=key, not_before=START, not_after=START + lifetime)
    return cert, lifetime


def test_renew_after_is_80_percent_of_lifetime_to_the_second(
    made_by_openssl: tuple[Path, timedelta], run_cli: Callable[..., CliResult]
) -> None:
    cert, lifetime = made_by_openssl
    result = run_cli("inspect", str(cert), "--json", "--now", z(START))
    assert result.code == 0, result.err
    data = result.json()
    assert set(data) == JSON_KEYS
    assert data["notBefore"] == z(START)
    assert data["notAfter"] == z(START + lifetime)
    assert data["lifetimeSeconds"] == int(lifetime.total_seconds())
    assert data["renewAfter"] == z(START + lifetime * 8 / 10)
    assert data["urgentAfter"] == z(START + lifetime * 95 / 100)
    assert data["action"] == "wait"


def test_renew_at_duration_counts_back_from_not_after(tmp_path: Path, run_cli: Callable[..., CliResult]) -> None:
    cert = openssl_cert(tmp_path, "rsa-90d", key="rsa", not_before=START, not_after=START + timedelta(days=90))
    data = run_cli("inspect", str(cert), "--json", "--renew-at", "30d", "--now", z(START)).json()
    assert data["renewAfter"] == z(START + timedelta(days=60))


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        (("renewAfter", -1), "wait"),
        (("renewAfter", 0), "renew"),
        (("renewAfter", +1), "renew"),
        (("urgentAfter", -1), "renew"),
        (("urgentAfter", 0), "renew-urgent"),
        (("urgentAfter", +1), "renew-urgent"),
        (("notAfter", -1), "renew-urgent"),
        (("notAfter", 0), "renew-urgent"),
        (("notAfter", +1), "renew-expired"),
    ],
    ids=[
        "a second before renewAfter: wait",
        "at renewAfter: renew",
        "a second after renewAfter: renew",
        "a second before urgentAfter: renew",
        "at urgentAfter: urgent",
        "a second after urgentAfter: urgent",
        "a second before notAfter: urgent",
        "at notAfter, still valid: urgent",
        "a second after notAfter: expired",
    ],
)
def test_action_one_second_either_side_of_each_threshold(
    made_by_openssl: tuple[Path, timedelta],
    run_cli: Callable[..., CliResult],
    offset: tuple[str, int],
    expected: str,
) -> None:
    cert, _ = made_by_openssl
    base = run_cli("inspect", str(cert), "--json", "--now", z(START)).json()
    edge = datetime.strptime(base[offset[0]], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    result = run_cli("inspect", str(cert), "--json", "--now", z(edge + timedelta(seconds=offset[1])))
    assert result.json()["action"] == expected
    assert result.code == (1 if expected == "renew-expired" else 0)


def test_expired_certificate_says_renew_expired(tmp_path: Path, run_cli: Callable[..., CliResult]) -> None:
    cert = openssl_cert(
        tmp_path, "old", key="ec", not_before=START - timedelta(days=100), not_after=START - timedelta(days=10)
    )
    result = run_cli("inspect", str(cert), "--json", "--now", z(START))
    assert result.code == 1
    assert result.json()["action"] == "renew-expired"
    assert "expired" in result.json()["reason"]


def test_device_schedule_lies_between_thresholds(tmp_path: Path, run_cli: Callable[..., CliResult]) -> None:
    cert = openssl_cert(tmp_path, "sched", key="ec", not_before=START, not_after=START + timedelta(days=90))
    data = run_cli("inspect", str(cert), "--json", "--device-id", "line-3-press-7", "--now", z(START)).json()
    assert set(data) == JSON_KEYS | {"scheduledAt"}
    assert data["renewAfter"] <= data["scheduledAt"] <= data["urgentAfter"]
    windowed = run_cli(
        "inspect", str(cert), "--json", "--device-id", "line-3-press-7", "--window", "02:00/2h", "--now", z(START)
    ).json()
    hour = int(windowed["scheduledAt"][11:13])
    assert 2 <= hour < 4


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--renew-at", "80"], "--renew-at"),
        (["--renew-at", "120%"], "more than 100%"),
        (["--now", "2026-03-01T00:00:00"], "no time zone"),
        (["--window", "25:00/2h"], "--window"),
    ],
    ids=["percent without sign", "percent over 100", "naive --now", "bad window"],
)
def test_bad_input_exits_2_with_remedy(
    tmp_path: Path, run_cli: Callable[..., CliResult], args: list[str], needle: str
) -> None:
    cert = openssl_cert(tmp_path, "c", key="ec", not_before=START, not_after=START + timedelta(days=1))
    result = run_cli("inspect", str(cert), *args)
    assert result.code == 2
    assert needle in result.err
    assert "remedy:" in result.err


def test_not_a_certificate_exits_2(tmp_path: Path, run_cli: Callable[..., CliResult]) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("hello")
    result = run_cli("inspect", str(bogus))
    assert result.code == 2
    assert "remedy:" in result.err
