"""What a generated token costs on hardware you run, beside what an API charges for it.

A machine costs the same every hour, busy or idle: an hourly price (a rented instance kept
running) or a purchase price spread over the years it is used, plus its electricity. Only
the hours it is busy produce tokens, at the throughput a load test measured. So

    cost per million output tokens = cost per hour / (utilization x tokens/s x 3600) x 1e6

and against an API's price per million output tokens the machine breaks even at the
utilization where the two are equal; the monthly volume that keeps it that busy is the
break-even volume. Below it the API is cheaper, above it the machine, up to its capacity
(utilization 1). Only output tokens are counted, as the throughput figures count them.

The defaults below are published list prices, each with its source and date: examples of
each kind of price, not a quote for your hardware. Set the price of the machine that
measured the throughput.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from ..core.errors import InputError, real

HOURS_PER_YEAR = 8760  # 365 x 24
HOURS_PER_MONTH = HOURS_PER_YEAR / 12  # 730, the month cloud providers bill by
COLUMNS = ["tokens_per_s", "usd_per_m_tokens", "api_usd_per_m_tokens", "vs_api"]
COLUMNS += ["break_even_utilization", "break_even_m_tokens_month", "capacity_m_tokens_month"]


def _price(name: str, value: object) -> float:
    return real(name, value, "a price >= 0 in US dollars", lambda x: x >= 0, "Enter a list price.")


def _throughput(name: str, value: object) -> float:
    return real(
        name,
        value,
        "a measured throughput > 0 tokens/s",
        lambda x: x > 0,
        "A level that generated nothing has no cost per token: re-run its load test "
        "(notebooks 03 and 10) or leave it out.",
    )


def _utilization(value: object) -> float:
    return real(
        "utilization",
        value,
        "a share of the hours in (0, 1]",
        lambda x: 0 < x <= 1,
        "0.25 means busy 6 hours a day; 1 means busy every hour.",
    )


def _source(value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InputError(
            f"source={value!r}: say where the price comes from (a price list and the date "
            "you read it, or an invoice), so the cost can be checked later."
        )


@dataclass(frozen=True)
class HourlyPrice:
    """A machine rented by the hour, running all the time (on demand, or reserved)."""

    usd_per_hour: float
    source: str  # where the price is published, and when it was read

    def __post_init__(self) -> None:
        _price("usd_per_hour", self.usd_per_hour)
        _source(self.source)

    def per_hour(self) -> float:
        """US dollars per hour the machine runs."""
        return self.usd_per_hour


@dataclass(frozen=True)
class PurchasePrice:
    """A machine bought outright, used for `years`, drawing `watts` at `usd_per_kwh`."""

    usd: float
    years: float
    watts: float
    usd_per_kwh: float
    source: str  # where each figure is published, and when it was read

    def __post_init__(self) -> None:
        _price("usd", self.usd)
        real(
            "years",
            self.years,
            "a service life > 0 years",
            lambda x: x > 0,
            "Use the years you will run it (US tax rules depreciate computers over 5).",
        )
        real("watts", self.watts, "a power draw >= 0 W", lambda x: x >= 0, "Use its maximum.")
        _price("usd_per_kwh", self.usd_per_kwh)
        _source(self.source)

    def per_hour(self) -> float:
        """The purchase spread over every hour of its service life, plus electricity
        (drawn whenever it is switched on, which is every hour)."""
        return self.usd / (self.years * HOURS_PER_YEAR) + self.watts / 1000 * self.usd_per_kwh


Price = HourlyPrice | PurchasePrice

# --- Published prices (examples; read on the date each source names) ------------------

# 4 vCPUs = 2 physical cores, like the 2-core machine the course's tiny runs are measured on.
CLOUD_CPU = HourlyPrice(
    0.17,
    "AWS EC2 On-Demand, c5.xlarge (4 vCPU = 2 cores, 8 GiB), US East (N. Virginia), Linux: "
    "$0.17/h; https://aws.amazon.com/ec2/pricing/on-demand/ (list price read 2026-12)",
)
# One NVIDIA T4, the GPU of the course's colab-t4 profile.
CLOUD_T4 = HourlyPrice(
    0.526,
    "AWS EC2 On-Demand, g4dn.xlarge (1x NVIDIA T4, 4 vCPU, 16 GiB), US East (N. Virginia), "
    "Linux: $0.526/h; https://aws.amazon.com/ec2/instance-types/g4/ (list price read 2026-12)",
)
OWNED_MINI_PC = PurchasePrice(
    usd=599,
    years=5,
    watts=65,
    usd_per_kwh=0.1545,
    source=(
        "Apple Mac mini (M4, 16 GB, 256 GB): $599 US list price at launch, "
        "https://www.apple.com/mac-mini/ (October 2024); 65 W: Apple's stated maximum draw; "
        "5 years: the recovery period of computers in IRS Publication 946 (MACRS 5-year "
        "property); $0.1545/kWh: EIA Electricity Monthly Update, US residential average "
        "for January 2024, https://www.eia.gov/electricity/monthly/update/end-use.php"
    ),
)
# An API's price per million output tokens, for comparison.
API_USD_PER_M_OUTPUT = 0.60
API_SOURCE = (
    "OpenAI GPT-4o mini, $0.60 per 1M output tokens; https://platform.openai.com/docs/pricing "
    "(read 2026-12)"
)


def usd_per_million_tokens(price: Price, tokens_per_s: float, utilization: float = 1.0) -> float:
    """US dollars per million output tokens from a machine at `price` that generates
    `tokens_per_s` while busy and is busy a share `utilization` of its hours."""
    _check_price(price)
    tps = _throughput("tokens_per_s", tokens_per_s)
    busy = _utilization(utilization)
    return price.per_hour() / (busy * tps * 3600) * 1e6


def break_even_utilization(price: Price, tokens_per_s: float, api_usd_per_m: float) -> float:
    """The share of its hours the machine must be busy for its tokens to cost what the API
    charges; above 1 it cannot get there at this throughput (inf for a free API)."""
    _check_price(price)
    tps = _throughput("tokens_per_s", tokens_per_s)
    api = _price("api_usd_per_m", api_usd_per_m)
    at_full_load = price.per_hour() / (tps * 3600) * 1e6  # $/M tokens, busy every hour
    return math.inf if api == 0 else at_full_load / api


def capacity_m_tokens_per_month(tokens_per_s: float) -> float:
    """Million output tokens a month the machine generates when busy every hour."""
    return _throughput("tokens_per_s", tokens_per_s) * 3600 * HOURS_PER_MONTH / 1e6


def cost_table(
    throughput: pd.Series,
    price: Price,
    api_usd_per_m: float = API_USD_PER_M_OUTPUT,
    utilization: float = 1.0,
) -> pd.DataFrame:
    """One row per measured throughput (tokens/s, indexed e.g. by server and users): its
    cost per million output tokens at `utilization`, the API's price beside it, the ratio,
    and the break-even utilization and monthly volume against that API price.

    A break-even utilization above 1 leaves the volume empty (NaN): this machine cannot
    reach the API's price at that throughput, however busy it is. No throughput (no load
    test saved yet) gives a table with no rows.
    """
    _check_price(price)
    if not isinstance(throughput, pd.Series):
        raise InputError(
            f"throughput is a {type(throughput).__name__}; pass a pandas Series of tokens/s, "
            "e.g. wrapup.serving_throughput(table)."
        )
    api = _price("api_usd_per_m", api_usd_per_m)
    _utilization(utilization)
    rows = []
    for label, tps in throughput.items():
        tps = _throughput(f"throughput[{label!r}]", tps)
        usd = usd_per_million_tokens(price, tps, utilization)
        share = break_even_utilization(price, tps, api)
        capacity = capacity_m_tokens_per_month(tps)
        rows.append(
            {
                "tokens_per_s": tps,
                "usd_per_m_tokens": usd,
                "api_usd_per_m_tokens": api,
                "vs_api": usd / api if api else math.inf,
                "break_even_utilization": share,
                "break_even_m_tokens_month": share * capacity if share <= 1 else math.nan,
                "capacity_m_tokens_month": capacity,
            }
        )
    return pd.DataFrame(rows, index=throughput.index, columns=COLUMNS)


def break_even_answer(costs: pd.DataFrame) -> str:
    """'When does the machine win?' answered from a cost_table(): for its highest
    throughput, the cost per million tokens beside the API's and the break-even point."""
    if costs.empty:
        return "No serving figures yet: run notebooks 03 and 10, then this notebook again."
    best = costs.loc[costs["tokens_per_s"].idxmax()]
    label = ", ".join(map(str, best.name)) if isinstance(best.name, tuple) else best.name
    start = (
        f"At its highest measured throughput ({label}: {best['tokens_per_s']:.1f} tokens/s) "
        f"the machine costs ${best['usd_per_m_tokens']:.2f} per million output tokens at the "
        f"stated utilization, against the API's ${best['api_usd_per_m_tokens']:.2f}"
    )
    if best["break_even_utilization"] > 1:
        return (
            f"{start}; even busy every hour it costs "
            f"{best['break_even_utilization']:.1f}x the API's price, so at this throughput the "
            "API is cheaper at any volume."
        )
    return (
        f"{start}; it breaks even when busy {best['break_even_utilization']:.0%} of its hours, "
        f"{best['break_even_m_tokens_month']:.1f} million output tokens a month (its capacity: "
        f"{best['capacity_m_tokens_month']:.1f} million). Above that volume the machine is "
        "cheaper, below it the API."
    )


def _check_price(price: object) -> None:
    if not isinstance(price, (HourlyPrice, PurchasePrice)):
        raise InputError(
            f"price is a {type(price).__name__}; pass cost.HourlyPrice(usd_per_hour, source) "
            "or cost.PurchasePrice(usd, years, watts, usd_per_kwh, source)."
        )
