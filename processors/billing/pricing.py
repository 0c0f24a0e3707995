"""Price list, chargeback rates and organization names: parse from YAML or CSV, load.

``llmpulse pricing load FILE`` accepts

* YAML with any of the keys ``prices``, ``chargeback_rates``, ``organizations``
  (lists of rows; numbers are read as exact decimals, never floats), or
* CSV with a header naming the columns of exactly one of those row kinds.

Every row is validated; one bad row rejects the whole file with its row number.
Two rows of one file for the same key (provider, model and effective_from of a
price, also when written in different time zones) are a conflict and reject the
file too: the table would keep only one of them. Loading the same row again in
a later load replaces it (newest load wins), so files can be re-applied safely.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, ClassVar

import yaml
from clickhouse_connect.driver.client import Client
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llmpulse.processors.billing.reports import parse_instant, utc_instant
from llmpulse.processors.errors import InputError
from llmpulse.processors.stream.codec import describe_validation_error
from llmpulse.processors.userinput import read_text, shorten
from llmpulse.schemas.events import Identifier

_PRICE = Annotated[Decimal, Field(ge=0, le=1_000_000, decimal_places=9, allow_inf_nan=False)]


class PricingFileError(InputError, ValueError):
    """The pricing file is unreadable or has an invalid row (one-line message)."""


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The fields the table keeps one row per (its ReplacingMergeTree key).
    key: ClassVar[tuple[str, ...]]

    @field_validator("effective_from", mode="before", check_fields=False)
    @classmethod
    def _utc(cls, value: Any) -> datetime:
        # The rules of report periods: a date means midnight UTC, a timestamp
        # must say its zone, both within the dates billing supports. Strings
        # (all of CSV) are parsed here, never as pydantic's Unix seconds.
        if isinstance(value, str):
            return parse_instant(value, "value")
        if isinstance(value, datetime):
            return utc_instant(value, "value", shorten(value.isoformat()))
        if isinstance(value, date):
            midnight = datetime(value.year, value.month, value.day, tzinfo=UTC)
            return utc_instant(midnight, "value", shorten(value.isoformat()))
        raise ValueError("must be a date (YYYY-MM-DD) or an RFC 3339 timestamp with a zone")


class PriceRow(_Row):
    """List price of one provider model from ``effective_from`` on, USD per million tokens."""

    key = ("provider", "model", "effective_from")
    provider: Identifier
    model: Identifier
    effective_from: datetime
    input_per_mtok: _PRICE
    output_per_mtok: _PRICE
    cached_per_mtok: _PRICE


class RateRow(_Row):
    """Chargeback multiplier of one organization from ``effective_from`` on."""

    key = ("org_id", "effective_from")
    org_id: Identifier
    effective_from: datetime
    rate: Annotated[Decimal, Field(ge=0, le=100, decimal_places=4, allow_inf_nan=False)]


class OrgRow(_Row):
    """Display name of an organization."""

    key = ("org_id",)
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
    """YAML loader that reads floats as exact ``Decimal`` (2.50 stays 2.50).

    Values the row validation can judge reach it instead of failing the
    parse: ``.nan`` and ``.inf`` become the non-finite decimals a price
    rejects, and an impossible timestamp (2026-02-30) stays a string. A key
    written twice in one mapping (two ``prices:`` sections) is an error, not
    a silent "last one wins".
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _value in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key {shorten(key_node.value)} appears twice",
                        key_node.start_mark,
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)

    def exact_decimal(self, node: yaml.ScalarNode) -> Decimal:
        text = str(self.construct_scalar(node))
        try:
            return Decimal(text)
        except InvalidOperation:
            value = self.construct_yaml_float(node)  # .nan, .inf, or base 60 (1:30.5)
        if math.isfinite(value):
            raise yaml.constructor.ConstructorError(
                None, None, f"{shorten(text)} is not an exact decimal number", node.start_mark
            )
        return Decimal(value)

    def timestamp_or_text(self, node: yaml.ScalarNode) -> date | str:
        try:
            stamp: date = self.construct_yaml_timestamp(node)
        except (ValueError, OverflowError):
            return str(self.construct_scalar(node))
        return stamp


_DecimalLoader.add_constructor("tag:yaml.org,2002:float", _DecimalLoader.exact_decimal)
_DecimalLoader.add_constructor("tag:yaml.org,2002:timestamp", _DecimalLoader.timestamp_or_text)


def parse_file(path: Path) -> PricingData:
    """Parse and validate a YAML or CSV pricing file."""
    text = read_text(path, PricingFileError)
    if path.suffix.lower() in (".yaml", ".yml"):
        return _parse_yaml(path, text)
    if path.suffix.lower() == ".csv":
        return _parse_csv(path, text)
    raise PricingFileError(f"{path.name}: unknown file type (use .yaml, .yml or .csv)")


def _parse_yaml(path: Path, text: str) -> PricingData:
    try:
        doc = yaml.load(text, Loader=_DecimalLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        line = f" at line {exc.problem_mark.line + 1}" if exc.problem_mark else ""
        raise PricingFileError(
            f"{path.name}: not valid YAML{line}: {exc.problem or exc.context}"
        ) from None
    except yaml.YAMLError as exc:
        raise PricingFileError(f"{path.name}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(doc, dict) or not doc:
        raise PricingFileError(
            f"{path.name}: expected a mapping with prices/chargeback_rates/organizations"
        )
    unknown = set(doc) - set(_KINDS)
    if unknown:
        raise PricingFileError(
            f"{path.name}: unknown section(s) {shorten(', '.join(sorted(map(str, unknown))))}"
        )
    data = PricingData()
    for kind, rows in doc.items():
        if not isinstance(rows, list):
            raise PricingFileError(f"{path.name}: {kind} must be a list of rows")
        getattr(data, kind).extend(_validate_rows(path, kind, rows))
    return data


def _parse_csv(path: Path, text: str) -> PricingData:
    reader = csv.DictReader(text.splitlines())
    try:
        header = set(reader.fieldnames or [])
        rows = list(reader)
    except csv.Error as exc:
        raise PricingFileError(f"{path.name}: not valid CSV: {exc}") from None
    for kind, (model, _table) in _KINDS.items():
        if header == set(model.model_fields):
            data = PricingData()
            getattr(data, kind).extend(_validate_rows(path, kind, rows, first_line=2))
            return data
    raise PricingFileError(
        f"{path.name}: header {shorten(', '.join(sorted(header)))} matches none of: "
        + "; ".join(f"{k}={sorted(m.model_fields)}" for k, (m, _t) in _KINDS.items())
    )


def _validate_rows(path: Path, kind: str, rows: list[Any], first_line: int = 1) -> list[Any]:
    """Validated rows; a bad row or two rows for one key reject them all (row numbers named)."""
    model = _KINDS[kind][0]
    out = []
    first_of: dict[tuple[Any, ...], int] = {}
    for n, row in enumerate(rows, start=first_line):
        if isinstance(row, dict):
            row = {k: (v if v != "" else None) for k, v in row.items()}
        try:
            valid = model.model_validate(row)
        except ValidationError as exc:
            raise PricingFileError(
                f"{path.name}: {kind} row {n}: {describe_validation_error(exc, limit=2)}"
            ) from None
        key = tuple(getattr(valid, f) for f in model.key)
        if key in first_of:
            shown = ", ".join(v.isoformat() if isinstance(v, datetime) else v for v in key)
            raise PricingFileError(
                f"{path.name}: {kind} rows {first_of[key]} and {n} conflict: same "
                f"{', '.join(model.key)} ({shown}); keep one"
            )
        first_of[key] = n
        out.append(valid)
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
