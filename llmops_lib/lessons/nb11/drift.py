"""Has the traffic changed? Two-sample tests between a reference batch and a current one.

Univariate (`univariate`): each logged quantity on its own. Continuous ones (input length,
confidence, latency) get the two-sample Kolmogorov-Smirnov test, which compares whole
distributions without assuming a shape; categorical ones (language, predicted label) get the
chi-squared test of a 2 x k contingency table. PSI (population stability index), the
credit-scoring habit, is printed beside KS as an effect size: a p-value says "different",
PSI says "how much". PSI has no notion of sample size: on small batches sampling alone
lifts it (`psi_noise`), so its bins keep 10+ reference rows each and the levels sampling
alone reaches (on average, and in 95 % of random re-splits) are printed beside it. A batch
counts as drifted when any test is significant after a Bonferroni correction: with five
tests at 0.05 each, one false alarm in four batches.

Multivariate (`domain_classifier`): train a classifier to tell reference rows from current
rows by their embeddings; if it beats chance (cross-validated ROC AUC against a permutation
baseline), something changed systematically, even if no single number shows it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ...core import results
from ...core.errors import InputError
from ..nb08.evaluation import confidence

DRIFT_TESTS = results.Kind("11_drift_tests", ".csv", "11", "drift tests of the traffic")
TAKEAWAYS = results.Kind("11_takeaways", ".csv", "11", "the figures behind 11's takeaways")

ALPHA = 0.05  # a batch drifts when a p-value is below ALPHA / the number of tests (Bonferroni)
PSI_LARGE = 0.25  # the credit-scoring rule of thumb: a PSI above it is "a large shift"
CONTINUOUS = ("input chars", "confidence", "latency ms")
CATEGORICAL = ("lang", "predicted")


def features(log: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """The quantities a service logs anyway, per prediction, from an evaluation log.

    Needs no ground truth: drift detection works on traffic nobody has labelled yet.
    """
    if log.empty:
        raise InputError("The log is empty; log some predictions first.")
    return pd.DataFrame(
        {
            "input chars": log["text"].str.len(),
            "confidence": confidence(log["p_positive"], threshold),
            "latency ms": log["latency_ms"],
            "lang": log["lang"],
            "predicted": log["predicted"],
        },
        index=log.index,
    )


def _numbers(values: pd.Series, name: str, batch: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.size < 2:
        raise InputError(f"{batch} batch has {array.size} value(s) of {name!r}; a test needs 2+.")
    if np.isnan(array).any():
        raise InputError(f"{batch} batch has NaN in {name!r}; drop or fix those rows first.")
    return array


MIN_PER_BIN = 10  # reference rows per PSI bin, at least
MAX_BINS = 10


def psi_bins(n_reference: int, min_per_bin: int = MIN_PER_BIN) -> int:
    """PSI's bins for a reference of `n_reference` rows: the usual 10, fewer when a bin would
    hold under `min_per_bin` reference rows (2 at least)."""
    if n_reference < 2 or min_per_bin < 1:
        raise InputError(
            f"psi_bins needs 2+ reference rows and min_per_bin >= 1; got "
            f"{n_reference}, {min_per_bin}."
        )
    return max(2, min(MAX_BINS, n_reference // min_per_bin))


def psi_noise(n_reference: int, n_current: int, bins: int) -> float:
    """The PSI two samples of the same distribution reach on average, from sampling alone:
    about (bins - 1) * (1/n_reference + 1/n_current).

    PSI grows with every bin's random wobble, so its rule of thumb (> 0.25 a large shift)
    assumes thousands of rows: two no-drift batches of 40 rows on 10 bins average about 0.45.
    Read a PSI against this level, or use a test whose p-value accounts for the sample size.
    """
    if min(n_reference, n_current) < 1 or bins < 1:
        raise InputError("psi_noise needs batch sizes and a bin count of 1 or more.")
    return (bins - 1) * (1 / n_reference + 1 / n_current)


def _psi(ref: np.ndarray, cur: np.ndarray, bins: int | None) -> tuple[float, int]:
    """PSI and the number of bins it used (tied reference values can merge bins)."""
    bins = psi_bins(len(ref)) if bins is None else bins
    if bins < 2:
        raise InputError(f"bins={bins}: PSI needs 2 or more bins.")
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)))
    if len(edges) < 3:  # (nearly) constant reference: one inner edge at its value
        edges = np.array([-np.inf, np.nextafter(ref.min(), np.inf), np.inf])
    edges[0], edges[-1] = -np.inf, np.inf
    ref_n = np.histogram(ref, edges)[0] + 0.5
    cur_n = np.histogram(cur, edges)[0] + 0.5
    ref_p, cur_p = ref_n / ref_n.sum(), cur_n / cur_n.sum()
    return float(np.sum((cur_p - ref_p) * np.log(cur_p / ref_p))), len(edges) - 1


def psi_if_same(
    reference: Sequence[float],
    current: Sequence[float],
    quantile: float = 0.95,
    permutations: int = 200,
    seed: int = 0,
) -> float:
    """The PSI that `quantile` of random re-splits of the pooled rows stay below: what these
    batch sizes give when nothing changed (a permutation baseline). A PSI above it is
    unusual for batches this small; `psi_noise` is the average such a split reaches."""
    ref = _numbers(pd.Series(reference), "psi", "reference")
    cur = _numbers(pd.Series(current), "psi", "current")
    if not 0 < quantile < 1 or permutations < 1:
        raise InputError(f"quantile={quantile}, permutations={permutations}: use 0-1 and 1+.")
    pool, rng = np.r_[ref, cur], np.random.default_rng(seed)
    values = []
    for _ in range(permutations):
        shuffled = rng.permutation(pool)
        values.append(_psi(shuffled[: len(ref)], shuffled[len(ref) :], None)[0])
    return float(np.quantile(values, quantile))


def psi(reference: Sequence[float], current: Sequence[float], bins: int | None = None) -> float:
    """Population stability index over the reference's quantile bins.

    sum((cur% - ref%) * ln(cur% / ref%)); rule of thumb, for large batches: < 0.1 stable,
    0.1-0.25 a shift worth a look, > 0.25 a large shift. By default the bins hold at least
    MIN_PER_BIN reference rows each (`psi_bins`); `psi_noise` says what sampling alone gives
    at a batch size. Empty bins get half a count, so one empty bin in a small batch does not
    make the index infinite.
    """
    ref = _numbers(pd.Series(reference), "psi", "reference")
    cur = _numbers(pd.Series(current), "psi", "current")
    return _psi(ref, cur, bins)[0]


def univariate(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    continuous: Sequence[str] = CONTINUOUS,
    categorical: Sequence[str] = CATEGORICAL,
    alpha: float = ALPHA,
    psi_permutations: int = 200,
) -> pd.DataFrame:
    """One row per feature: the test, its statistic and p-value, PSI (continuous only) with
    `psi noise`, the PSI sampling alone gives on average at these batch sizes and bins, and
    `psi 95% if same`, the level 95 % of random re-splits of the pooled rows stay below
    (`psi_if_same` over `psi_permutations` re-splits; 0 skips it), and `drift`:
    p below alpha / number of tests (Bonferroni, so the batch's false-alarm rate stays near
    alpha)."""
    from scipy.stats import chi2_contingency, ks_2samp

    if not 0 < alpha < 1:
        raise InputError(f"alpha={alpha}: use a significance level between 0 and 1, e.g. 0.05.")
    rows = []
    for name in continuous:
        ref = _numbers(reference[name], name, "reference")
        cur = _numbers(current[name], name, "current")
        result = ks_2samp(ref, cur)
        value, bins = _psi(ref, cur, None)
        rows.append(
            {
                "feature": name,
                "test": "KS",
                "statistic": result.statistic,
                "p_value": result.pvalue,
                "psi": value,
                "psi noise": psi_noise(len(ref), len(cur), bins),
                "psi 95% if same": (
                    psi_if_same(ref, cur, permutations=psi_permutations)
                    if psi_permutations
                    else np.nan
                ),
            }
        )
    for name in categorical:
        for batch, frame in (("reference", reference), ("current", current)):
            if len(frame) < 2 or frame[name].isna().any():
                raise InputError(f"{batch} batch: {name!r} needs 2+ values and no NaN.")
        table = pd.crosstab(
            np.r_[np.zeros(len(reference)), np.ones(len(current))],
            np.r_[reference[name].to_numpy(), current[name].to_numpy()],
        )
        if table.shape[1] < 2:  # one category in both batches: the mix cannot have changed
            statistic, p = 0.0, 1.0
        else:
            statistic, p = chi2_contingency(table)[:2]
        rows.append(
            {
                "feature": name,
                "test": "chi-squared",
                "statistic": float(statistic),
                "p_value": float(p),
                "psi": np.nan,
                "psi noise": np.nan,
                "psi 95% if same": np.nan,
            }
        )
    table = pd.DataFrame(rows).set_index("feature")
    table["drift"] = table["p_value"] < alpha / len(table)
    return table


def alarm_rate(
    pool: pd.DataFrame,
    current_pool: pd.DataFrame | None = None,
    n: int = 20,
    runs: int = 20,
    seed: int = 0,
    **tests,
) -> pd.DataFrame:
    """Repeat the univariate tests on fresh random batches of `n` rows, `runs` times.

    Without `current_pool` both batches come from `pool`, disjoint: every alarm is a false
    one. With it the current batch comes from `current_pool`: the share of runs flagged is
    the detection rate. One row per run: the smallest p-value and whether it was flagged.
    """
    if runs < 1 or n < 2:
        raise InputError(f"alarm_rate needs runs >= 1 and n >= 2 rows a batch; got {runs}, {n}.")
    need = 2 * n if current_pool is None else n
    if len(pool) < need or (current_pool is not None and len(current_pool) < n):
        raise InputError(f"Batches of n={n} need {need}+ rows in the pool; have {len(pool)}.")
    rng = np.random.default_rng(seed)
    rows = []
    for run in range(runs):
        picked = pool.iloc[rng.permutation(len(pool))[:need]]
        reference = picked.iloc[:n]
        if current_pool is None:
            current = picked.iloc[n:]
        else:
            current = current_pool.iloc[rng.permutation(len(current_pool))[:n]]
        table = univariate(reference, current, psi_permutations=0, **tests)
        rows.append({"run": run, "min p": table["p_value"].min(), "drift": table["drift"].any()})
    return pd.DataFrame(rows).set_index("run")


def domain_classifier(
    reference: np.ndarray, current: np.ndarray, permutations: int = 30, seed: int = 0
) -> pd.Series:
    """Can a logistic regression tell current embeddings from reference ones?

    auc: 5-fold cross-validated ROC AUC (0.5 = cannot tell them apart). The permutation
    baseline refits with shuffled batch labels `permutations` times: p_value is the share of
    shuffles that did as well, so a small batch cannot fake a high AUC.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, permutation_test_score

    reference, current = np.asarray(reference, float), np.asarray(current, float)
    if min(len(reference), len(current)) < 5:
        raise InputError(
            f"domain_classifier needs 5+ embeddings per batch for 5-fold cross-validation; "
            f"got {len(reference)} and {len(current)}."
        )
    if np.isnan(reference).any() or np.isnan(current).any():
        raise InputError("Embeddings contain NaN; embed the texts again.")
    x = np.vstack([reference, current])
    y = np.r_[np.zeros(len(reference)), np.ones(len(current))]
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    auc, permuted, p = permutation_test_score(
        LogisticRegression(max_iter=1000),
        x,
        y,
        scoring="roc_auc",
        cv=folds,
        n_permutations=permutations,
        random_state=seed,
    )
    return pd.Series({"auc": auc, "auc shuffled (mean)": permuted.mean(), "p_value": p})


def plot_batches(batches: dict[str, pd.DataFrame], columns: Sequence[str] = CONTINUOUS[:2]):
    """Histograms of `columns`, one panel each, one outline per batch, on shared bins."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(columns), figsize=(5.5 * len(columns), 3.6), squeeze=False)
    for ax, column in zip(axes[0], columns, strict=True):
        values = np.concatenate([b[column].to_numpy(float) for b in batches.values()])
        bins = np.histogram_bin_edges(values, bins=15)
        for name, batch in batches.items():
            ax.hist(
                batch[column], bins=bins, histtype="step", density=True, linewidth=1.8, label=name
            )
        ax.set(title=column, xlabel=column, ylabel="density")
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    return fig
