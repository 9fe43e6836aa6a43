"""SetFit few-shot classifier on the tiny profile's MiniLM encoder (real training, on CPU)."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pandas as pd
import pytest

from llmops_lib.core.datasets import load_assessments, split
from llmops_lib.core.errors import InputError
from llmops_lib.engines import encoder
from llmops_lib.lessons.nb01 import few_shot
from llmops_lib.lessons.scoring import score
from llmops_lib.planning import signing

# 40 held-out English texts, balanced: guessing scores 0.5 and reaches 0.70 (28 of 40)
# with probability below 1 %. SetFit on the 5 English examples per class scored 0.85 here.
CHANCE = 0.5
MARGIN = 0.2


@pytest.fixture(scope="module")
def english():
    """(train, test) for English: all 5 few-shot examples per class, 40 held-out texts."""
    return split(load_assessments("en"), k_per_class=5, seed=0)


@pytest.fixture(scope="module")
def trained(session, english, no_network_module):
    """Trained once for the module, offline: the tiny profile needs no network to train."""
    train, _ = english
    base = session.model_path("encoder")
    return encoder.train(train["text"], train["label"], base, iterations=10)


@pytest.mark.model
def test_beats_chance_on_held_out_english(trained, english):
    _, test = english
    accuracy = score(test, trained.predict(test["text"])).loc["en", "accuracy"]
    assert accuracy >= CHANCE + MARGIN, f"accuracy {accuracy:.3f} on {len(test)} texts"


@pytest.mark.model
def test_probabilities_agree_with_labels(trained, english):
    _, test = english
    texts = list(test["text"][:8])
    proba = trained.predict_proba(texts)
    assert list(proba.columns) == trained.labels == ["negative", "positive"]
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert list(proba.idxmax(axis=1)) == trained.predict(texts)


@pytest.mark.model
def test_save_and_load_give_identical_predictions(trained, english, tmp_path):
    """Saved and loaded again without network (the module's fixtures block it)."""
    _, test = english
    texts = list(test["text"])
    path = trained.save(tmp_path)
    again = encoder.EncoderClassifier.load(path)
    assert again.predict(texts) == trained.predict(texts)
    np.testing.assert_allclose(
        again.predict_proba(texts).to_numpy(), trained.predict_proba(texts).to_numpy(), atol=1e-6
    )
    assert trained.save(tmp_path) != path  # a second save never replaces the first


@pytest.mark.model
def test_fine_tuning_changes_the_embeddings(session, trained, english):
    _, test = english
    texts = list(test["text"][:4])
    before = encoder.embed(texts, session.model_path("encoder"))
    after = trained.embed(texts)
    assert before.shape == after.shape == (4, session.spec("encoder").hidden_size)
    assert not np.allclose(before, after, atol=1e-4)


@pytest.mark.model
def test_latency_table_has_one_row_per_text(trained, english):
    _, test = english
    texts = list(test["text"][:3])
    table = encoder.latency(trained, texts)
    assert list(table["text"]) == texts
    assert list(table["predicted"]) == trained.predict(texts)


@pytest.mark.model
def test_k_sweep_scores_a_classifier_it_is_given_instead_of_training(trained, monkeypatch):
    monkeypatch.setattr(encoder, "train", lambda *a, **k: pytest.fail("trained again"))
    df = load_assessments("en")  # `trained` came from split(df, 5, seed=0), as the sweep's k=5
    sweep = few_shot.k_sweep(df, [5], None, iterations=10, seed=0, trained={5: trained})
    _, test = split(df, k_per_class=5, seed=0)
    expected = score(test, trained.predict(test["text"])).loc["en", "accuracy"]
    assert sweep.loc[5, "accuracy en"] == expected
    assert sweep.loc[5, "train texts"] == 10


def test_k_sweep_refuses_classifiers_for_a_k_it_does_not_sweep():
    with pytest.raises(ValueError, match=r"k=\[4\], not in ks=\[2, 3\]"):
        few_shot.k_sweep(load_assessments("en"), [2, 3], None, trained={4: None})


@pytest.mark.parametrize(
    ("texts", "labels", "match"),
    [
        (["a", "b"], ["x"], "one per text"),
        (["a", "b"], ["x", "x"], "at least two labels"),
        (["a", "b", "c", "d"], "pnpn", "labels must be a list of texts, got str 'pnpn'"),
        ("abcd", ["p", "n", "p", "n"], "texts must be a list of texts, got str"),
        (["a", None], ["p", "n"], r"texts\[1\] is NoneType"),
        (["a", "b"], ["p", float("nan")], r"labels\[1\] is float nan"),
        (["a", "\ud800"], ["p", "n"], r"texts\[1\] is not valid Unicode"),
        ([], [], "texts is empty"),
    ],
)
def test_train_rejects_bad_input_before_loading_anything(texts, labels, match, tmp_path):
    with pytest.raises(InputError, match=match):
        encoder.train(texts, labels, tmp_path / "no-encoder-here")


class FakeSetFit:
    """What EncoderClassifier needs of a SetFitModel: labels and a predict per text."""

    labels = ["negative", "positive"]

    def __init__(self):
        self.calls = []

    def predict(self, texts):
        self.calls.append(texts)
        return ["positive" for _ in texts]


@pytest.mark.parametrize(
    ("texts", "match"),
    [
        ("a str", "got str 'a str'"),
        ([], "is empty"),
        ([3], r"texts\[0\] is int"),
        (["\udc80"], "lone surrogate"),
    ],
)
def test_a_classifier_refuses_what_is_not_a_list_of_texts(texts, match):
    model = FakeSetFit()
    clf = encoder.EncoderClassifier(model)
    for call in (clf.predict, clf.predict_proba, clf.embed):
        with pytest.raises(InputError, match=match):
            call(texts)
    assert model.calls == []  # one text per character never reached the model
    assert clf.predict(["one text"]) == ["positive"]


def test_load_rejects_a_folder_without_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_head.pkl"):
        encoder.EncoderClassifier.load(tmp_path)


class RunsCode:
    """What a crafted model_head.pkl holds: unpickling it calls os.mkdir(marker)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_load_refuses_folders_this_machine_did_not_sign_before_unpickling(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOPS_CACHE", str(tmp_path / "cache"))
    folder, marker = tmp_path / "crafted", tmp_path / "code-ran"
    folder.mkdir()
    (folder / "model_head.pkl").write_bytes(pickle.dumps(RunsCode(marker)))
    with pytest.raises(signing.UntrustedFolderError, match="no readable .*trust=True"):
        encoder.EncoderClassifier.load(folder)
    signing.sign_folder(folder)
    signing.check_folder(folder)  # signed here: accepted
    monkeypatch.setenv("LLMOPS_CACHE", str(tmp_path / "other-machine"))
    with pytest.raises(signing.UntrustedFolderError, match="not written on this machine"):
        encoder.EncoderClassifier.load(folder)
    monkeypatch.setenv("LLMOPS_CACHE", str(tmp_path / "cache"))
    (folder / "config.json").write_text("{}")  # a file added after the save
    with pytest.raises(signing.UntrustedFolderError, match="files changed"):
        encoder.EncoderClassifier.load(folder)
    assert not marker.exists()  # nothing was unpickled


def _swap_on_load(monkeypatch, folder, marker, load):
    """SetFit's loader, preceded by an attacker who swaps `folder`'s model_head.pkl for a
    foreign pickle: the moment between the manifest check and the load."""
    from setfit import SetFitModel

    def racing(path, **kwargs):
        (folder / "model_head.pkl").write_bytes(pickle.dumps(RunsCode(marker)))
        return load(path, **kwargs)

    monkeypatch.setattr(SetFitModel, "from_pretrained", racing)


def test_a_head_swapped_after_the_check_is_never_unpickled(tmp_path, monkeypatch):
    """SetFit reads model_head.pkl itself (joblib.load): here a stand-in does the same."""
    import joblib

    monkeypatch.setenv("LLMOPS_CACHE", str(tmp_path / "cache"))
    folder, marker = tmp_path / "saved", tmp_path / "code-ran"
    folder.mkdir()
    joblib.dump({"head": "the trained one"}, folder / "model_head.pkl")
    signing.sign_folder(folder)
    _swap_on_load(
        monkeypatch, folder, marker, lambda path, **_: joblib.load(f"{path}/model_head.pkl")
    )
    loaded = encoder.EncoderClassifier.load(folder)
    assert loaded.model == {"head": "the trained one"}  # the bytes that were checked
    assert not marker.exists()  # the foreign pickle never ran


@pytest.mark.model
def test_a_real_classifier_loads_the_checked_bytes_despite_a_swap(trained, english, tmp_path):
    from setfit import SetFitModel

    _, test = english
    folder, marker = trained.save(tmp_path), tmp_path / "code-ran"
    with pytest.MonkeyPatch.context() as patch:
        _swap_on_load(patch, folder, marker, SetFitModel.from_pretrained)
        loaded = encoder.EncoderClassifier.load(folder)
    assert not marker.exists()
    assert loaded.predict(test["text"][:5]) == trained.predict(test["text"][:5])
    with pytest.raises(signing.UntrustedFolderError, match="files changed"):
        encoder.EncoderClassifier.load(folder)  # the swap itself is caught on the next load


@pytest.mark.model
def test_setfits_own_trainer_gives_the_libraries_classifier(session, english, tmp_path):
    """Notebook 01's raw cell: SetFitModel.from_pretrained + Trainer, same seed and data."""
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    train, test = english
    train = train.groupby("label").head(2)  # 4 texts, 1 iteration: seconds
    texts = list(test["text"][:6])
    base = session.model_path("encoder")
    raw = SetFitModel.from_pretrained(str(base), local_files_only=True)
    data = Dataset.from_dict({"text": list(train["text"]), "label": list(train["label"])})
    args = TrainingArguments(
        output_dir=str(tmp_path),
        num_iterations=1,
        seed=0,
        report_to="none",
        save_strategy="no",
        show_progress_bar=False,
    )
    Trainer(model=raw, args=args, train_dataset=data).train()
    library = encoder.train(train["text"], train["label"], base, iterations=1, progress=False)
    assert list(raw.predict(texts)) == library.predict(texts)
    np.testing.assert_allclose(
        raw.predict_proba(texts, as_numpy=True), library.predict_proba(texts).to_numpy(), atol=1e-4
    )


def test_verdict_separation_tells_grouped_labels_from_mixed_ones():
    # Per language: English labels sit in two tight groups, German ones are interleaved.
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"lang": ["en"] * 8 + ["de"] * 8, "label": ["positive", "negative"] * 8})
    grouped = np.where(frame["label"].to_numpy()[:8, None] == "positive", [1.0, 0.0], [0.0, 1.0])
    mixed = rng.normal(size=(8, 2))
    table = few_shot.verdict_separation({"space": np.vstack([grouped, mixed])}, frame)
    assert table.loc["space", "en"] > 0.9
    assert abs(table.loc["space", "de"]) < 0.3


def test_verdict_separation_refuses_embeddings_of_other_rows():
    frame = pd.DataFrame({"lang": ["en"] * 4, "label": ["positive", "negative"] * 2})
    with pytest.raises(InputError, match="3 embeddings, 4 rows"):
        few_shot.verdict_separation({"space": np.zeros((3, 2))}, frame)
