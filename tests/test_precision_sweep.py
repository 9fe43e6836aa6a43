"""Notebook 02's precision sweep on a faked T4: 15 GB, one 8B model at a time, OOM as a row.

No GPU: `FakeGPU` keeps the allocations that are still referenced (weak references, so an
allocation lives exactly as long as a real tensor would) and raises torch's own
OutOfMemoryError when one would pass its budget, as CUDA's allocator does. The fake models
hold their memory in a reference cycle, as bitsandbytes' 4-bit weights do, so only the
garbage collector frees a dropped one: a sweep that merely drops its references fails here.
"""

from __future__ import annotations

import weakref

import pandas as pd
import pytest
import torch
from fakes import FakeChat

from llmops_lib.core import datasets, hardware
from llmops_lib.engines import hf
from llmops_lib.lessons import gpu_plan
from llmops_lib.lessons.nb02 import precision_sweep
from llmops_lib.planning import catalog, memory, profiles
from llmops_lib.session import Session

LLAMA_8B = catalog.get("llama-3.1-8b-instruct")


class Block:
    """A stretch of GPU memory (of a model, or of `owner` None); freed when nothing refers
    to it any more."""

    def __init__(self, gb: float, owner: object = None) -> None:
        self.gb, self.owner = gb, owner


class FakeGPU:
    """GPU memory with a budget: `allocate` past it raises torch.OutOfMemoryError."""

    def __init__(self, budget_gb: float) -> None:
        self.budget_gb = budget_gb
        self._live: weakref.WeakSet[Block] = weakref.WeakSet()
        self.peak_models = 0  # most models with memory on the GPU at once

    @property
    def live_gb(self) -> float:
        return sum(block.gb for block in self._live)

    def allocate(self, gb: float, owner: object = None) -> Block:
        if self.live_gb + gb > self.budget_gb:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {gb:.2f} GiB. GPU 0 has a total "
                f"capacity of {self.budget_gb:.2f} GiB of which "
                f"{self.budget_gb - self.live_gb:.2f} GiB is free.\nmore text"
            )
        block = Block(gb, owner)
        self._live.add(block)
        owners = {id(b.owner) for b in self._live if b.owner is not None}
        self.peak_models = max(self.peak_models, len(owners))
        return block


class GPUModel(FakeChat):
    """A transformers model as the sweep sees it, its weights on a FakeGPU in 4 shards
    (loaded one by one, like safetensors shards), planned by the course's planner."""

    def __init__(self, gpu: FakeGPU, precision: str, hw) -> None:
        super().__init__(token_probs={"Yes": 0.6, "No": 0.3}, replies=lambda m: "Yes it is")
        self.plan = hf.check(LLAMA_8B, precision, hw)  # a PrecisionError before loading
        self.load_s = 0.0
        self._cycle = self  # bitsandbytes' 4-bit weights sit in reference cycles too
        self.shards: list[Block] = []
        for _ in range(4):
            self.shards.append(gpu.allocate(self.plan.total_gb / 4, owner=self))

    def chat(self, messages, max_tokens=256, temperature=0.0, stream=False, **generate_kw):
        return super().chat(messages, max_tokens=max_tokens, temperature=temperature)

    def close(self) -> None:
        super().close()
        self.shards = []  # HFModel.close() drops its weights the same way


@pytest.fixture
def t4(monkeypatch):
    monkeypatch.setattr(hf, "bitsandbytes_devices", lambda: {"cpu", "cuda"})
    return gpu_plan.T4


@pytest.fixture(scope="module")
def texts() -> dict[str, pd.DataFrame]:
    data = datasets.load_assessments()
    in_prompt, _ = datasets.split(data, k_per_class=1, seed=0)
    fewshot = data[data["set"] == "fewshot"].drop(in_prompt.index)
    return {
        "calibration": fewshot.groupby(["lang", "label"]).head(1),
        "evaluation": data[data["set"] == "eval"].groupby(["lang", "label"]).head(1),
    }


def sweep(gpu: FakeGPU, hw, texts) -> pd.DataFrame:
    session = Session(profile=profiles.get("colab-t4"), hardware=hw)
    return precision_sweep.compare_precisions(
        lambda p: GPUModel(gpu, p, hw), precision_sweep.precisions(session), **texts
    )


def test_the_t4_sweep_holds_one_8b_model_at_a_time(t4, texts):
    gpu = FakeGPU(gpu_plan.T4_USABLE_GB)
    table = sweep(gpu, t4, texts)
    assert list(table.index) == ["fp16", "int8", "nf4"]
    planned = memory.machine_plan(LLAMA_8B, "fp16", t4).total_gb
    assert f"needs about {planned:.1f} GB" in table.loc["fp16", "note"]  # refused, not loaded
    # int8 (11.2 GB planned) and nf4 (7.1 GB) together would not fit in 15 GB.
    assert table.loc[["int8", "nf4"], "note"].eq("").all(), table["note"].to_dict()
    assert table.loc[["int8", "nf4"], "accuracy"].notna().all()
    assert gpu.peak_models == 1
    assert gpu.live_gb == 0  # nothing left on the GPU after the sweep


def test_an_out_of_memory_load_becomes_a_row_and_frees_its_shards(t4, texts):
    gpu = FakeGPU(gpu_plan.T4_USABLE_GB)
    elsewhere = gpu.allocate(5.0)  # held by something else: int8 (11.2) no longer fits
    table = sweep(gpu, t4, texts)
    note = table.loc["int8", "note"]
    assert note.startswith("out of memory, what it had loaded was freed: CUDA out of memory")
    assert "more text" not in note  # one line of torch's message
    # nf4 (7.1 GB) fits beside the 5 GB only if int8's loaded shards were freed.
    assert table.loc["nf4", "note"] == "" and table.loc["nf4", "accuracy"] >= 0
    assert gpu.live_gb == elsewhere.gb


def test_other_errors_are_not_hidden_as_rows(t4, texts):
    def broken(precision):
        raise KeyError("a bug, not a lack of memory")

    with pytest.raises(KeyError, match="a bug"):
        precision_sweep.compare_precisions(broken, ("int8",), **texts)


@pytest.mark.parametrize(
    "err, oom",
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (RuntimeError("CUDA error: out of memory"), True),
        (MemoryError(), True),
        (RuntimeError("expected scalar type Half but found Float"), False),
        (ValueError("out of memory"), False),
    ],
)
def test_what_counts_as_out_of_memory(err, oom):
    assert hardware.is_out_of_memory(err) is oom


@pytest.mark.parametrize(
    "profile, bf16, expected",
    [
        ("tiny", False, ("fp32", "int8", "nf4")),
        ("colab-t4", False, ("fp16", "int8", "nf4")),
        ("colab-l4", True, ("bf16", "int8", "nf4")),
        ("colab-t4", True, ("bf16", "int8", "nf4")),  # nf4 profile on a GPU with bf16
    ],
)
def test_the_sweep_compares_the_profiles_full_precision_then_int8_and_nf4(profile, bf16, expected):
    from dataclasses import replace

    session = Session(profile=profiles.get(profile), hardware=replace(gpu_plan.T4, bf16=bf16))
    assert precision_sweep.precisions(session) == expected
