"""Notebook 01's experiments on the SetFit encoder: how many examples a class needs, and
how fine-tuning pulls the labels apart in the embedding space (a score and a plot)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ...core import datasets, results
from ...core.errors import InputError, non_empty, whole
from ...core.progress import bar
from ..scoring import score

if TYPE_CHECKING:  # the type only: lessons reach the engine through the session
    from ...engines.encoder import EncoderClassifier

K_SWEEP = results.Kind("01-setfit-k-sweep", ".csv", "01", "encoder accuracy")  # k_sweep()'s table


def k_sweep(
    df: pd.DataFrame,
    ks: Sequence[int],
    session: Any,
    iterations: int = 10,
    seed: int = 0,
    trained: Mapping[int, EncoderClassifier] | None = None,
) -> pd.DataFrame:
    """Train one classifier per k (examples per class and language) on `df`'s few-shot rows
    and score each on the same held-out rows: how much do a few more examples buy?

    `trained`: classifiers already trained on `datasets.split(df, k, seed)` with the same
    `iterations` and `seed`, by k (e.g. the lesson's own k=3 one). They are scored, not
    trained again: the same rows, iterations and seed give the same classifier, so a
    second training would only cost CPU time.
    """
    ks = [whole(f"ks[{i}]", k) for i, k in enumerate(non_empty("ks", ks))]
    trained = dict(trained or {})
    if unknown := set(trained) - set(ks):
        raise InputError(f"trained= has classifiers for k={sorted(unknown)}, not in ks={ks}.")
    rows = []
    for k in bar(ks, desc="k sweep", unit="model"):  # one bar, not one per training
        train_rows, test = datasets.split(df, k, seed)
        if k in trained:
            clf = trained[k]
        else:
            clf = session.train(
                "encoder",
                train_rows["text"],
                train_rows["label"],
                iterations=iterations,
                seed=seed,
                progress=False,
            )
        scores = score(test, clf.predict(test["text"]))
        train_s = float("nan") if clf.train_s is None else round(clf.train_s, 1)  # None: loaded
        row = {"k": k, "train texts": len(train_rows), "train s": train_s, "test texts": len(test)}
        row.update({f"accuracy {lang}": scores.loc[lang, "accuracy"] for lang in scores.index})
        rows.append(row)
    return pd.DataFrame(rows).set_index("k")


def verdict_separation(panels: dict[str, np.ndarray], frame: pd.DataFrame) -> pd.DataFrame:
    """How far the labels of `frame` pull apart in each embedding space, per language.

    The silhouette score of the label clusters (cosine distance): near 0 the two labels
    are mixed, towards 1 they form separate groups. It reads in numbers what the PCA plot
    shows by eye, in the full space rather than its 2-D shadow.
    """
    from sklearn.metrics import silhouette_score

    rows = {}
    for title, embeddings in panels.items():
        if len(embeddings) != len(frame):
            raise InputError(f"Panel {title!r}: {len(embeddings)} embeddings, {len(frame)} rows.")
        positions = frame.groupby("lang").indices
        rows[title] = {
            lang: silhouette_score(embeddings[at], frame["label"].to_numpy()[at], metric="cosine")
            for lang, at in positions.items()
        }
    return pd.DataFrame(rows).T.rename_axis(columns="separation of the labels")


def pca_2d(embeddings: np.ndarray) -> np.ndarray:
    """Project embeddings to their two main directions, to look at them in a plot."""
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=0).fit_transform(embeddings)


def plot_pca(panels: dict[str, np.ndarray], frame: pd.DataFrame, highlight=None):
    """Side-by-side 2-D PCA views of embeddings of the rows of `frame`, one per panel.

    Colour: label; marker: language; `highlight` (index labels of `frame`, e.g. the
    training examples) get a black ring. Each panel gets its own PCA, fitted to its own
    embeddings, because the point is how the classes separate within each space.
    """
    import matplotlib.pyplot as plt

    colours = {"positive": "tab:green", "negative": "tab:red"}
    markers = {"en": "o", "de": "^"}
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    ringed = frame.index.isin(list(highlight if highlight is not None else []))
    for ax, (title, embeddings) in zip(axes[0], panels.items(), strict=True):
        if len(embeddings) != len(frame):
            raise InputError(f"Panel {title!r}: {len(embeddings)} embeddings, {len(frame)} rows.")
        points = pca_2d(embeddings)
        for (label, lang), rows in frame.groupby(["label", "lang"]).indices.items():
            ax.scatter(
                *points[rows].T,
                c=colours.get(label, "tab:blue"),
                marker=markers.get(lang, "s"),
                alpha=0.7,
                label=f"{label} ({lang})",
            )
        ax.scatter(
            *points[ringed].T,
            s=140,
            facecolors="none",
            edgecolors="black",
            label="training example",
        )
        ax.set(title=title, xlabel="PC 1", ylabel="PC 2")
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    return fig
