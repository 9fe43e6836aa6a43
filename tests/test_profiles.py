from dataclasses import replace

import pytest

from llmops_lib.core.errors import UnknownNameError
from llmops_lib.core.hardware import Hardware
from llmops_lib.engines import registry
from llmops_lib.planning import catalog, profiles

CPU = Hardware("local", 2, 2, 24.0, None, None, None, False, False)
T4 = replace(CPU, runtime="colab", gpu_name="Tesla T4", gpu_vram_gb=15.8, compute_capability=(7, 5))
L4 = replace(
    CPU,
    runtime="colab",
    gpu_name="NVIDIA L4",
    gpu_vram_gb=23.7,
    compute_capability=(8, 9),
    bf16=True,
)


@pytest.mark.parametrize(
    "hw, expected",
    [
        (CPU, "tiny"),
        (T4, "colab-t4"),
        (L4, "colab-l4"),
        (replace(L4, runtime="local"), "tiny"),
        (replace(CPU, runtime="colab"), "tiny"),
    ],
)
def test_default_profile_follows_runtime_and_gpu(hw, expected, monkeypatch):
    monkeypatch.delenv("LLMOPS_PROFILE", raising=False)
    assert profiles.resolve(None, hw).name == expected


def test_env_var_and_argument_choose_the_profile(monkeypatch):
    monkeypatch.setenv("LLMOPS_PROFILE", "local-cpu")
    assert profiles.resolve(None, CPU).name == "local-cpu"
    assert profiles.resolve("colab-l4", CPU).name == "colab-l4"


def test_unknown_profile_names_value_and_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        profiles.get("huge")
    assert "'huge'" in str(err.value)
    for name in profiles.PROFILES:
        assert name in str(err.value)


def test_unknown_role_lists_valid_roles():
    with pytest.raises(UnknownNameError) as err:
        profiles.get("tiny").choice("translator")
    assert "'translator'" in str(err.value) and "classifier" in str(err.value)


@pytest.mark.parametrize("name", list(profiles.PROFILES))
def test_every_profile_fills_every_role_with_a_catalog_model(name):
    profile = profiles.get(name)
    assert set(profile.roles) == set(profiles.ROLES)
    for choice in profile.roles.values():
        assert choice.model in catalog.MODELS
        assert choice.backend in registry.ENGINES


OFFLINE = ["tiny", "served"]  # served: the tiny models, chat and guard on a local server


def test_only_the_tiny_profiles_are_offline_and_use_packaged_models():
    assert [n for n, p in profiles.PROFILES.items() if p.offline] == OFFLINE
    for name in OFFLINE:
        roles = profiles.get(name).roles.values()
        assert all(c.spec.offline for c in roles if c.backend != "transformers")


def test_the_offline_profile_is_the_quick_one_and_the_lessons_read_the_flag(monkeypatch):
    assert [n for n, p in profiles.PROFILES.items() if p.quick] == OFFLINE
    from llmops_lib.lessons.nb09 import kv_sweep, quant_sweep

    quick_t4 = replace(profiles.get("colab-t4"), quick=True)
    monkeypatch.setitem(profiles.PROFILES, "colab-t4", quick_t4)
    assert quant_sweep.settings_for("colab-t4") is quant_sweep.QUICK
    assert kv_sweep.settings_for("colab-t4") is kv_sweep.QUICK


def test_unknown_model_lists_known_ones():
    with pytest.raises(UnknownNameError) as err:
        catalog.get("gpt-5")
    assert "'gpt-5'" in str(err.value) and "llama-3.1-8b-instruct" in str(err.value)


def test_catalog_architecture_numbers_are_consistent():
    for spec in catalog.MODELS.values():
        assert spec.n_heads % spec.n_kv_heads == 0, spec.key  # grouped-query attention
        assert 0 < spec.global_layers() <= spec.n_layers
        if spec.hf_repo and spec.gated:
            assert spec.page.startswith("https://huggingface.co/")
