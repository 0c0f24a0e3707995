"""Price list, chargeback rates and organization names: parse from YAML or CSV, load.

``llmpulse pricing load FILE`` accepts

* YAML with any of the keys ``prices``, ``chargeback_rates``, ``organizations``
  (lists of rows; numbers are read as exact decimals, never floats), or
* CSV with a header naming the columns of exactly one of those row kinds.

Every row is validated; one bad row rejects the whole file with its row number.
Loading the same row again replaces it (newest load wins), so files can be
re-applied safely.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import yaml
from clickhouse_connect.driver.client import Client
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llmpulse.processors.errors import InputError
from llmpulse.processors.stream.codec import describe_validation_error
from llmpulse.schemas.events import Identifier

_PRICE = Annotated[Decimal, Field(ge=0, le=1_000_000, decimal_places=9, allow_inf_nan=False)]


class PricingFileError(InputError, ValueError):
    """The pricing file is unreadable or has an invalid row (one-line message)."""


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("effective_from", mode="before", check_fields=False)
    @classmethod
    def _utc(cls, value: Any) -> Any:
        # A date means midnight UTC; a timestamp must say its zone.
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise ValueError("timestamp needs a time zone (e.g. 2026-01-01T00:00:00Z)")
            return value.astimezone(UTC)
        if isinstance(value, date):
            return datetime(value.year, value.month, value.day, tzinfo=UTC)
        if isinstance(value, str) and len(value) == 10:
            return datetime.fromisoformat(value).replace(tzinfo=UTC)
        return value


class PriceRow(_Row):
    """List price of one provider model from ``effective_from`` on, USD per million tokens."""

    provider: Identifier
    model: Identifier
    effective_from: datetime
    input_per_mtok: _PRICE
    output_per_mtok: _PRICE
    cached_per_mtok: _PRICE


class RateRow(_Row):
    """Chargeback multiplier of one organization from ``effective_from`` on."""

    org_id: Identifier
    effective_from: datetime
    rate: Annotated[Decimal, Field(ge=0, le=100, decimal_places=4, allow_inf_nan=False)]


class OrgRow(_Row):
    """Display name of an organization."""

    org_id: Identifier
    name: Annotated[str, Field(min_length=1, max_length=200)]


_KINDS: dict[str, tuple[type[_Row], str]] = {
    "prices": (PriceRow, "prices"),
    "chargeback_rates": (RateRow, "chargeback_rates"),
    "organizations": (OrgRow, "organizations"),
}


@dataclass
class PricingData:
    prices: list[PriceRow] = field(default_factory=list)
    chargeback_rates: list[RateRow] = field(default_factory=list)
    organizations: list[OrgRow] = field(default_factory=list)


class _DecimalLoader(yaml.SafeLoader):
    """YAML loader that reads floats as exact ``Decimal`` (2.50 stays 2.50)."""


_DecimalLoader.add_constructor(
    "tag:yaml.org,2002:float",
    lambda loader, node: Decimal(str(loader.construct_scalar(node))),  # type: ignore[arg-type]
)


def parse_file(path: Path) -> PricingData:
    """Parse and validate a YAML or CSV pricing file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PricingFileError(f"cannot read {path}: {exc.strerror}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        return _parse_yaml(path, text)
    if path.suffix.lower() == ".csv":
        return _parse_csv(path, text)
    raise PricingFileError(f"{path.name}: unknown file type (use .yaml, .yml or .csv)")


def _parse_yaml(path: Path, text: str) -> PricingData:
    try:
        doc = yaml.load(text, Loader=_DecimalLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        raise PricingFileError(f"{path.name}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(doc, dict) or not doc:
        raise PricingFileError(
            f"{path.name}: expected a mapping with prices/chargeback_rates/organizations"
        )
    unknown = set(doc) - set(_KINDS)
    if unknown:
        raise PricingFileError(
            f"{path.name}: unknown section(s) {', '.join(sorted(map(str, unknown)))}"
        )
    data = PricingData()
    for kind, rows in doc.items():
        if not isinstance(rows, list):
            raise PricingFileError(f"{path.name}: {kind} must be a list of rows")
        getattr(data, kind).extend(_validate_rows(path, kind, rows))
    return data


def _parse_csv(path: Path, text: str) -> PricingData:
    reader = csv.DictReader(text.splitlines())
    header = set(reader.fieldnames or [])
    for kind, (model, _table) in _KINDS.items():
        if header == set(model.model_fields):
            data = PricingData()
            getattr(data, kind).extend(_validate_rows(path, kind, list(reader), first_line=2))
            return data
    raise PricingFileError(
        f"{path.name}: header {sorted(header)} matches none of: "
        + "; ".join(f"{k}={sorted(m.model_fields)}" for k, (m, _t) in _KINDS.items())
    )


def _validate_rows(path: Path, kind: str, rows: list[Any], first_line: int = 1) -> list[Any]:
    model = _KINDS[kind][0]
    out = []
    for n, row in enumerate(rows, start=first_line):
        if isinstance(row, dict):
            row = {k: (v if v != "" else None) for k, v in row.items()}
        try:
            out.append(model.model_validate(row))
        except ValidationError as exc:
            raise PricingFileError(
                f"{path.name}: {kind} row {n}: {describe_validation_error(exc, limit=2)}"
            ) from None
    return out


def load(client: Client, data: PricingData) -> dict[str, int]:
    """Insert every row; returns rows loaded per table."""
    counts: dict[str, int] = {}
    for kind, (model, table) in _KINDS.items():
        rows: list[_Row] = getattr(data, kind)
        if rows:
            cols = list(model.model_fields)
            client.insert(table, [[getattr(r, c) for c in cols] for r in rows], column_names=cols)
        counts[table] = len(rows)
    return counts
