"""The GPU lessons' memory on a T4, step by step, from the planner (gpu_plan.peaks)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from llmops_lib.core.errors import InputError, UnknownNameError
from llmops_lib.engines import hf
from llmops_lib.lessons import gpu_plan
from llmops_lib.lessons.nb07 import sweeps
from llmops_lib.planning import catalog, memory, roofline

VERDICT = "fits 15 GB"
LLAMA_8B = catalog.get("llama-3.1-8b-instruct")
CHAT_GGUF = catalog.get("llama-3-8b-instruct-gguf")


@pytest.mark.parametrize("notebook", ["02", "07"])
def test_every_gpu_step_of_the_t4_lessons_fits_or_is_refused_before_loading(notebook):
    table = gpu_plan.peaks(notebook)
    assert set(table[VERDICT]) <= {"yes", "no: refused before loading"}, table[VERDICT]
    assert (table.loc[table[VERDICT] == "yes", "planned GB"] <= 15).all()
    assert not table["held on the GPU"].str.contains(r" \+ ").any()  # one thing at a time


def test_02_plans_the_classifier_in_each_precision_the_notebook_loads():
    table = gpu_plan.peaks("02")
    planned = {
        p: round(memory.machine_plan(LLAMA_8B, p, gpu_plan.T4, 2048).total_gb, 1)
        for p in hf.QUANTIZED
    }
    assert table.loc["7 · precision sweep: int8", "planned GB"] == planned["int8"]
    assert table.loc["under the hood: raw nf4", "planned GB"] == planned["nf4"]
    # fp16 (16 GB of weights alone) is the one step hf.check refuses on a T4
    refused = table.index[table[VERDICT] != "yes"]
    assert list(refused) == ["7 · precision sweep: fp16"]


def test_07_plans_the_chat_gguf_by_the_share_of_its_layers_on_the_gpu():
    table = gpu_plan.peaks("07")
    whole = memory.plan(CHAT_GGUF, "Q6_K", 15, 2048).total_gb
    half = next(k for k in sweeps.offload_plan(CHAT_GGUF.n_layers) if " of " in k)
    assert table.loc["4 · offload sweep: all layers", "planned GB"] == round(whole, 1)
    assert table.loc[f"4 · offload sweep: {half}", "planned GB"] == round(whole / 2, 1)
    assert table.loc["4 · offload sweep: 0 layers (CPU)", "held on the GPU"] == "nothing"
    copies = 2 * roofline.GPU_COPY_MB / 1000  # source and destination
    assert table.loc["6 · GPU copy bandwidth", "planned GB"] == round(copies, 1)


def test_a_step_that_does_not_fit_says_so():
    small = replace(gpu_plan.T4, gpu_vram_gb=8.0)
    on_07 = gpu_plan.peaks("07", hw=small)
    assert on_07.loc["4 · offload sweep: all layers", "fits 8 GB"] == "NO: out of memory"
    on_02 = gpu_plan.peaks("02", hw=small)
    assert on_02.loc["7 · precision sweep: int8", "fits 8 GB"] == "no: refused before loading"


def test_another_profile_and_gpu_follow_their_roles():
    l4 = replace(gpu_plan.T4, gpu_name="NVIDIA L4", gpu_vram_gb=22.0, bf16=True)
    table = gpu_plan.peaks("02", profile="colab-l4", hw=l4)
    assert "7 · precision sweep: bf16" in table.index
    assert table.loc["3-6 · session.model('classifier')", "held on the GPU"].endswith(
        "in bf16 on transformers"
    )
    with pytest.raises(UnknownNameError, match="'05'.*02, 07"):
        gpu_plan.peaks("05")


def test_the_gguf_type_comes_from_the_file_name():
    assert memory.gguf_type(CHAT_GGUF) == "Q6_K"
    assert memory.gguf_type("smollm2-135m-instruct") == "Q4_1"
    with pytest.raises(InputError, match="no GGUF type"):
        memory.gguf_type(LLAMA_8B)
