"""Independent reference computations for billing tests (plain Python Decimal)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal

from llmpulse.schemas import LLMOutcome

NINE = Decimal("0.000000001")


@dataclass(frozen=True)
class Price:
    effective_from: datetime
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_per_mtok: Decimal


def expected_allocation(
    outcomes: Iterable[LLMOutcome],
    prices: Mapping[tuple[str, str], list[Price]],
    rates: Mapping[str, list[tuple[datetime, Decimal]]],
    default_rate: Decimal,
) -> dict[tuple[str, str], dict[str, Decimal | int]]:
    """(org, operation) -> requests, tokens, cost, list cost (exact), unpriced, charge (exact)."""
    out: dict[tuple[str, str], dict[str, Decimal | int]] = defaultdict(
        lambda: {
            "requests": 0,
            "tokens": 0,
            "cost": Decimal(0),
            "list": Decimal(0),
            "unpriced": 0,
            "charge": Decimal(0),
        }
    )
    for o in outcomes:
        cell = out[(o.org_id, o.operation.value)]
        cell["requests"] = int(cell["requests"]) + 1
        cell["tokens"] = int(cell["tokens"]) + o.input_tokens + o.output_tokens
        cell["cost"] = Decimal(cell["cost"]) + o.cost_usd
        applicable = [
            p for p in prices.get((o.provider, o.model), []) if p.effective_from <= o.event_time
        ]
        if applicable:
            p = max(applicable, key=lambda x: x.effective_from)
            micro = (
                (o.input_tokens - o.cached_tokens) * p.input_per_mtok
                + o.output_tokens * p.output_per_mtok
                + o.cached_tokens * p.cached_per_mtok
            )
            cell["list"] = Decimal(cell["list"]) + micro / Decimal(1_000_000)
        else:
            cell["unpriced"] = int(cell["unpriced"]) + 1
        rate_rows = [r for r in rates.get(o.org_id, []) if r[0] <= o.event_time]
        rate = max(rate_rows)[1] if rate_rows else default_rate
        cell["charge"] = Decimal(cell["charge"]) + o.cost_usd * rate
    return dict(out)


def round9(value: Decimal) -> Decimal:
    return value.quantize(NINE, rounding=ROUND_HALF_EVEN)
