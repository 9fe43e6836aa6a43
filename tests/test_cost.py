"""Cost per million tokens on owned or rented hardware, beside an API's price: the arithmetic
on cases worked by hand, and the nonsense it refuses. Pure arithmetic, milliseconds."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from llmops_lib.core.errors import InputError
from llmops_lib.planning import cost

RENTED = cost.HourlyPrice(0.36, "a test price")
# $876 over 1 year = $0.10 an hour; 100 W at $0.20/kWh = $0.02 an hour: $0.12 an hour.
OWNED = cost.PurchasePrice(usd=876, years=1, watts=100, usd_per_kwh=0.20, source="a test price")


def test_an_hourly_price_per_million_tokens_worked_by_hand():
    """100 tokens/s: a million tokens take 1e6 / 100 = 10,000 s = 2.777... h; at $0.36 an
    hour that is $1.00. Busy only half the hours, each token carries twice the idle time:
    $2.00."""
    assert cost.usd_per_million_tokens(RENTED, 100) == pytest.approx(1.00)
    assert cost.usd_per_million_tokens(RENTED, 100, utilization=0.5) == pytest.approx(2.00)


def test_a_purchase_price_per_million_tokens_worked_by_hand():
    """$876 / (1 year x 8,760 h) = $0.10 an hour, plus 0.1 kW x $0.20 = $0.02: $0.12 an hour.
    At 10 tokens/s a million tokens take 100,000 s = 27.78 h: 27.78 x $0.12 = $3.33."""
    assert OWNED.per_hour() == pytest.approx(0.12)
    assert cost.usd_per_million_tokens(OWNED, 10) == pytest.approx(10 / 3)


def test_break_even_worked_by_hand():
    """Busy every hour, the machine above costs $3.33 per million tokens; an API charging
    $10 is matched at a third of the hours. The machine makes 10 x 3600 x 730 = 26.28
    million tokens a month at most, so the break-even volume is 26.28 / 3 = 8.76 million:
    the same as its monthly cost, $0.12 x 730 = $87.60, divided by $10 per million. An API
    charging $1 is never matched: $3.33 / $1 = 3.33 times the hours there are."""
    table = cost.cost_table(pd.Series({"owned": 10.0}), OWNED, api_usd_per_m=10)
    row = table.loc["owned"]
    assert row["usd_per_m_tokens"] == pytest.approx(10 / 3)
    assert row["vs_api"] == pytest.approx(1 / 3)
    assert row["break_even_utilization"] == pytest.approx(1 / 3)
    assert row["capacity_m_tokens_month"] == pytest.approx(26.28)
    assert row["break_even_m_tokens_month"] == pytest.approx(8.76)
    assert cost.break_even_utilization(OWNED, 10, api_usd_per_m=1) == pytest.approx(10 / 3)
    cheap_api = cost.cost_table(pd.Series({"owned": 10.0}), OWNED, api_usd_per_m=1)
    assert math.isnan(cheap_api.loc["owned", "break_even_m_tokens_month"])


def test_the_table_keeps_the_throughputs_index_and_its_utilization():
    throughput = pd.Series(
        [100.0, 400.0],
        index=pd.MultiIndex.from_tuples([("server", 1), ("server", 8)], names=["server", "users"]),
    )
    table = cost.cost_table(throughput, RENTED, api_usd_per_m=0.5, utilization=0.5)
    assert list(table.index) == [("server", 1), ("server", 8)]
    assert list(table.columns) == cost.COLUMNS
    assert table["usd_per_m_tokens"].tolist() == pytest.approx([2.00, 0.50])
    # Break-even does not depend on the utilization stated, only on the price and speed.
    assert table["break_even_utilization"].tolist() == pytest.approx([2.0, 0.5])


def test_no_throughput_yet_gives_a_table_with_no_rows_and_an_answer_that_says_so():
    table = cost.cost_table(pd.Series([], dtype=float), RENTED)
    assert table.empty and list(table.columns) == cost.COLUMNS
    assert cost.break_even_answer(table).startswith("No serving figures yet")


def test_the_answer_names_the_fastest_level_and_its_break_even():
    """At 40 tokens/s the machine above costs $0.12 / (40 x 3600) x 1e6 = $0.83 per million
    busy every hour: 1/12 of the API's $10, so it breaks even busy 8% of its hours. The
    volume is its monthly cost over the API's price, 8.76 million tokens, whatever the
    speed; the speed sets the capacity, 40 x 3600 x 730 = 105.1 million."""
    throughput = pd.Series({("a", 1): 10.0, ("a", 8): 40.0})
    reachable = cost.break_even_answer(cost.cost_table(throughput, OWNED, api_usd_per_m=10))
    assert "(a, 8: 40.0 tokens/s)" in reachable and "$0.83 per million" in reachable
    assert "busy 8% of its hours, 8.8 million output tokens a month" in reachable
    assert "capacity: 105.1 million" in reachable
    out_of_reach = cost.break_even_answer(cost.cost_table(throughput, OWNED, api_usd_per_m=0.1))
    assert "API is cheaper at any volume" in out_of_reach


def test_the_published_defaults_carry_their_sources():
    for price in (cost.CLOUD_CPU, cost.CLOUD_T4, cost.OWNED_MINI_PC):
        assert "http" in price.source and price.per_hour() > 0
    assert "http" in cost.API_SOURCE and cost.API_USD_PER_M_OUTPUT > 0


NAN = float("nan")


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: cost.usd_per_million_tokens(RENTED, 0), r"tokens_per_s=0: needs .*> 0.*re-run"),
        (lambda: cost.usd_per_million_tokens(RENTED, -5), "tokens_per_s=-5"),
        (lambda: cost.usd_per_million_tokens(RENTED, NAN), "tokens_per_s=nan"),
        (lambda: cost.usd_per_million_tokens(RENTED, True), "tokens_per_s=True"),
        (lambda: cost.usd_per_million_tokens(RENTED, 10, 0), r"utilization=0: .*\(0, 1\]"),
        (lambda: cost.usd_per_million_tokens(RENTED, 10, 1.5), r"utilization=1.5.*6 hours a day"),
        (lambda: cost.usd_per_million_tokens(RENTED, 10, NAN), "utilization=nan"),
        (lambda: cost.HourlyPrice(-0.1, "x"), r"usd_per_hour=-0.1: needs a price >= 0"),
        (lambda: cost.HourlyPrice(NAN, "x"), "usd_per_hour=nan"),
        (lambda: cost.HourlyPrice(0.5, ""), "source='': say where the price comes from"),
        (lambda: cost.PurchasePrice(-1, 5, 60, 0.2, "x"), "usd=-1"),
        (lambda: cost.PurchasePrice(600, 0, 60, 0.2, "x"), r"years=0: .*depreciate"),
        (lambda: cost.PurchasePrice(600, 5, -60, 0.2, "x"), "watts=-60"),
        (lambda: cost.PurchasePrice(600, 5, 60, NAN, "x"), "usd_per_kwh=nan"),
        (lambda: cost.break_even_utilization(RENTED, 10, -1), "api_usd_per_m=-1"),
        (lambda: cost.cost_table(pd.Series({"x": 0.0}), RENTED), r"throughput\['x'\]=0.0"),
        (lambda: cost.cost_table(pd.Series({"x": 1.0}), RENTED, NAN), "api_usd_per_m=nan"),
        (lambda: cost.cost_table(pd.Series({"x": 1.0}), RENTED, 1, 2), "utilization=2"),
        (lambda: cost.cost_table([1.0], RENTED), "pandas Series of tokens/s"),
        (lambda: cost.cost_table(pd.Series({"x": 1.0}), 0.36), "cost.HourlyPrice"),
    ],
)
def test_nonsense_is_refused_with_the_argument_and_the_fix(call, named):
    with pytest.raises(InputError, match=named):
        call()
