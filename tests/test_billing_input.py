"""Bad billing input is one short error naming the problem (issue 13 items 9 and 10).

Unit tier: pricing files are parsed and report periods checked before any
database is opened.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from llmpulse.cli.common import UsageError
from llmpulse.cli.files import write_text
from llmpulse.processors.billing import pricing, reports
from llmpulse.processors.errors import InputError, LlmpulseError
from llmpulse.processors.userinput import read_text, shorten

PRICE = "{provider: openai, model: gpt-4o, effective_from: %s, input_per_mtok: %s, "
PRICE += "output_per_mtok: 10, cached_per_mtok: 1}"
PRICE_HEADER = "provider,model,effective_from,input_per_mtok,output_per_mtok,cached_per_mtok\n"


def _yaml(tmp_path: Path, *rows: tuple[str, str]) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text("prices:\n" + "".join(f"  - {PRICE % row}\n" for row in rows))
    return path


def _error(path: Path) -> str:
    with pytest.raises(pricing.PricingFileError) as info:
        pricing.parse_file(path)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("value", [".nan", ".NaN", ".inf", "-.inf", ".Inf"])
def test_pricing_rejects_non_finite_yaml_numbers(tmp_path: Path, value: str) -> None:
    path = _yaml(tmp_path, ("2026-01-01", value))
    assert _error(path) == "p.yaml: prices row 1: input_per_mtok: Input should be a finite number"


def test_pricing_rejects_an_inexact_yaml_number(tmp_path: Path) -> None:
    # A base-60 float (1:30.5 = 90.5) has no exact decimal text.
    assert _error(_yaml(tmp_path, ("2026-01-01", "1:30.5"))) == (
        "p.yaml: not valid YAML at line 2: '1:30.5' is not an exact decimal number"
    )


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("2026-02-30", "'2026-02-30' is not a date (YYYY-MM-DD) or RFC 3339 timestamp"),
        ("2026-02-30T00:00:00Z", "'2026-02-30T00:00:00Z' is not a date"),
        ("0000-01-01", "'0000-01-01' is not a date"),
        ("0001-01-01", "'0001-01-01' is outside the dates billing supports"),
        ("0001-01-01T00:00:00+01:00", "'0001-01-01T00:00:00+01:00' is outside the dates"),
        ("9999-12-31T23:00:00-05:00", "'9999-12-31T23:00:00-05:00' is outside the dates"),
        ("2026-01-01 00:00:00", "'2026-01-01T00:00:00' has no time zone"),
        ("1767225600", "must be a date (YYYY-MM-DD) or an RFC 3339 timestamp with a zone"),
    ],
)
def test_pricing_rejects_invalid_yaml_dates(tmp_path: Path, value: str, problem: str) -> None:
    message = _error(_yaml(tmp_path, (value, "1")))
    assert message.startswith("p.yaml: prices row 1: effective_from: Value error, "), message
    assert problem in message


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("2026-02-30", "'2026-02-30' is not a date"),
        # Used to load as a naive timestamp, and digits as Unix seconds.
        ("2026-01-01T00:00:00", "'2026-01-01T00:00:00' has no time zone"),
        ("17672256000", "'17672256000' is not a date"),
    ],
)
def test_pricing_rejects_invalid_csv_dates(tmp_path: Path, value: str, problem: str) -> None:
    path = tmp_path / "p.csv"
    path.write_text(f"{PRICE_HEADER}openai,gpt-4o,{value},1,2,3\n")
    message = _error(path)
    assert message.startswith("p.csv: prices row 2: effective_from: Value error, "), message
    assert problem in message


@pytest.mark.parametrize("name", ["p.yaml", "p.csv"])
def test_pricing_rejects_a_file_that_is_not_utf8(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"org_id,name\nacme,Acme \xff\n")
    assert _error(path) == f"cannot read '{path}': not UTF-8 text (invalid byte at offset 22)"


def test_pricing_rejects_a_csv_field_over_the_csv_limit(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text(f'org_id,name\nacme,"{"x" * 200_000}"\n')
    assert _error(path) == "p.csv: not valid CSV: field larger than field limit (131072)"


def test_conflicting_prices_in_two_time_zones_reject_the_file(tmp_path: Path) -> None:
    path = _yaml(
        tmp_path,
        ("2026-01-01T00:00:00Z", "1"),
        ("2026-02-01", "1"),
        ("2026-01-01T01:00:00+01:00", "2"),
    )
    assert _error(path) == (
        "p.yaml: prices rows 1 and 3 conflict: same provider, model, effective_from "
        "(openai, gpt-4o, 2026-01-01T00:00:00+00:00); keep one"
    )


def test_conflicting_csv_prices_name_their_lines(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text(
        PRICE_HEADER
        + "openai,gpt-4o,2026-01-01,1,2,3\n"
        + "openai,gpt-4o,2025-12-31T19:00:00-05:00,1,2,3\n"
    )
    assert _error(path) == (
        "p.csv: prices rows 2 and 3 conflict: same provider, model, effective_from "
        "(openai, gpt-4o, 2026-01-01T00:00:00+00:00); keep one"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "chargeback_rates:\n"
            "  - {org_id: acme, effective_from: 2026-01-01, rate: 1.1}\n"
            "  - {org_id: acme, effective_from: 2026-01-01T00:00:00Z, rate: 1.2}\n",
            "chargeback_rates rows 1 and 2 conflict: same org_id, effective_from",
        ),
        (
            "organizations:\n  - {org_id: acme, name: Acme}\n  - {org_id: acme, name: ACME}\n",
            "organizations rows 1 and 2 conflict: same org_id (acme)",
        ),
        # YAML keeps the last of two equal keys: the first section would vanish.
        (
            "organizations:\n  - {org_id: acme, name: Acme}\n"
            "organizations:\n  - {org_id: hooli, name: Hooli}\n",
            "not valid YAML at line 3: key 'organizations' appears twice",
        ),
        (
            "organizations:\n  - {org_id: acme, name: Acme, name: ACME}\n",
            "not valid YAML at line 2: key 'name' appears twice",
        ),
    ],
)
def test_other_conflicts_reject_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    assert message in _error(path)


def test_distinct_rows_and_yaml_merge_keys_still_load(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "prices:\n"
        f"  - &base {PRICE % ('2026-01-01T00:00:00Z', '1')}\n"
        "  - {<<: *base, effective_from: 2026-01-01T00:00:01Z}\n"
        "  - {<<: *base, model: gpt-4o-mini}\n"
    )
    data = pricing.parse_file(path)
    assert [(p.model, p.effective_from.second) for p in data.prices] == [
        ("gpt-4o", 0),
        ("gpt-4o", 1),
        ("gpt-4o-mini", 0),
    ]
    assert all(p.effective_from.tzinfo is UTC for p in data.prices)


@pytest.mark.parametrize("period", ["0000-01", "1969-12", "2149-06", "9999-12"])
def test_period_outside_the_supported_months(period: str) -> None:
    with pytest.raises(reports.BillingInputError) as info:
        reports.parse_period(period)
    assert str(info.value) == (
        f"period {period!r} is outside the months billing supports (1970-01 to 2149-05)"
    )


def test_supported_months_at_both_ends() -> None:
    assert reports.parse_period("1970-01")[1] == reports.EARLIEST
    assert reports.parse_period("2149-05")[2] == reports.LATEST


@pytest.mark.parametrize(
    "text", ["0001-01-01", "1969-12-31T23:59:59Z", "0001-01-01T00:00:00+01:00", "2149-06-02"]
)
def test_instant_outside_the_supported_dates(text: str) -> None:
    with pytest.raises(reports.BillingInputError) as info:
        reports.parse_instant(text, "start")
    assert str(info.value) == (
        f"start {text!r} is outside the dates billing supports (1970-01-01 to 2149-06-01 UTC)"
    )


def test_cost_report_refuses_year_one_before_reading_anything() -> None:
    # It used to take the "1-01" of strftime for a malformed month.
    with pytest.raises(reports.BillingInputError, match="start '0001-01-01T00:00:00"):
        reports.cost_report(
            None,  # type: ignore[arg-type]
            datetime(1, 1, 1, tzinfo=UTC),
            datetime(2026, 1, 1, tzinfo=UTC),
            default_rate=Decimal(1),
        )


def test_long_values_are_cut_in_messages() -> None:
    long = "x" * 100_000
    for call in (
        lambda: reports.parse_instant(long, "start"),
        lambda: reports.parse_period(long),
    ):
        with pytest.raises(reports.BillingInputError) as info:
            call()
        assert len(str(info.value)) < 350
        assert "(100000 characters)" in str(info.value)
    assert shorten("short") == "'short'"


def test_read_text_names_the_problem(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"cannot read '.*missing\.txt': No such file"):
        read_text(tmp_path / "missing.txt", UsageError)
    with pytest.raises(UsageError, match="Is a directory"):
        read_text(tmp_path, UsageError)


@pytest.mark.parametrize(
    ("name", "reason"),
    [("missing/out.csv", "its folder does not exist"), (".", "it is a folder")],
)
def test_write_text_to_a_bad_path_is_bad_input(tmp_path: Path, name: str, reason: str) -> None:
    with pytest.raises(UsageError) as info:
        write_text(tmp_path / name, "x")
    assert str(info.value) == f"cannot write {shorten(tmp_path / name)}: {reason}"


def test_write_text_on_a_full_disk_is_a_runtime_failure() -> None:
    # /dev/full refuses every write with ENOSPC, like a full disk.
    with pytest.raises(LlmpulseError) as info:
        write_text(Path("/dev/full"), "x")
    assert not isinstance(info.value, InputError)
    assert str(info.value).endswith(": No space left on device")
