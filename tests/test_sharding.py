"""Sharding plans from the memory planner, and the TGI/vLLM commands generated from them."""

from __future__ import annotations

import pytest

from llmops_lib.planning import catalog, launch, memory, sharding

LLAMA_70B = catalog.get("llama-3.1-70b-instruct")


def test_llama_70b_fp16_needs_several_80gb_gpus_and_its_shards_add_up():
    plan = sharding.shard_plan(LLAMA_70B, "fp16", "H100")
    assert plan.shards >= 2
    total = memory.weight_bytes(LLAMA_70B, "fp16") / memory.GB
    assert plan.weights_gb == pytest.approx(total)
    per_gpu = plan.per_gpu()
    assert len(per_gpu) == plan.shards
    assert per_gpu["weights GB"].sum() == pytest.approx(total)
    assert per_gpu["overhead GB"].sum() == pytest.approx(memory.OVERHEAD_FRACTION * total)


@pytest.mark.parametrize("model", ["mixtral-8x7b-instruct", "llama-3.1-70b-instruct"])
@pytest.mark.parametrize("precision", ["bf16", "fp8", "nf4"])
@pytest.mark.parametrize("gpu", ["A100-80", "H100", "L4"])
def test_every_plan_fits_and_uses_the_fewest_shards(model, precision, gpu):
    plan = sharding.shard_plan(model, precision, gpu)
    spec = catalog.get(model)
    used = plan.weights_per_gpu_gb + plan.overhead_gb / plan.shards
    kv = plan.max_sequences * plan.kv_per_sequence_per_gpu_gb
    assert plan.max_sequences >= 1 and used + kv <= plan.gpu_gb
    kv_seq = memory.kv_cache_bytes(spec, plan.context_tokens) / memory.GB
    assert plan.kv_per_sequence_gb == pytest.approx(kv_seq)
    fewer = [d for d in sharding.tp_degrees(spec) if d < plan.shards]
    for shards in fewer:  # every smaller split leaves no room for one sequence
        free = plan.gpu_gb - (plan.weights_gb + plan.overhead_gb) / shards
        assert free < kv_seq / min(shards, spec.n_kv_heads)


def test_lower_precision_never_needs_more_gpus():
    shards = [sharding.shard_plan(LLAMA_70B, p, "L4").shards for p in ("bf16", "fp8", "nf4")]
    assert shards == sorted(shards, reverse=True)


def test_table_has_one_row_per_model_precision_gpu():
    table = sharding.plan_table()
    assert len(table) == 2 * 3 * 3
    assert table.loc[("llama-3.1-70b-instruct", "bf16", "H100"), "shards"] >= 2


def test_a_model_too_big_for_one_node_says_what_to_do():
    with pytest.raises(ValueError, match="Llama 3.1 70B.*lower precision"):
        sharding.shard_plan(LLAMA_70B, "bf16", "T4")


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_tgi_command_follows_the_plan():
    plan = sharding.shard_plan(LLAMA_70B, "nf4", "L4", context_tokens=8192)
    argv = launch.tgi_command(plan, max_new_tokens=1024)
    image = next(a for a in argv if "text-generation-inference" in a)
    assert ":" in image and not image.endswith(":latest")
    assert _flag(argv, "--model-id") == LLAMA_70B.hf_repo
    assert _flag(argv, "--num-shard") == str(plan.shards)
    assert _flag(argv, "--quantize") == "bitsandbytes-nf4"
    assert _flag(argv, "--max-total-tokens") == "8192"
    assert _flag(argv, "--max-input-tokens") == "7168"


def test_vllm_command_follows_the_plan():
    plan = sharding.shard_plan(LLAMA_70B, "bf16", "A100-80", context_tokens=4096)
    argv = launch.vllm_command(plan)
    assert _flag(argv, "--model") == LLAMA_70B.hf_repo
    assert _flag(argv, "--tensor-parallel-size") == str(plan.shards)
    assert _flag(argv, "--max-model-len") == "4096"
    assert _flag(argv, "--dtype") == "bfloat16"
    assert "--quantization" not in argv


def test_16_bit_plans_do_not_quantize_and_unsupported_ones_are_refused():
    plan = sharding.shard_plan(LLAMA_70B, "fp16", "H100")
    assert "--quantize" not in launch.tgi_command(plan)
    int8 = sharding.shard_plan(LLAMA_70B, "int8", "H100")
    assert _flag(launch.tgi_command(int8), "--quantize") == "bitsandbytes"
    with pytest.raises(ValueError, match="vLLM cannot quantize to 'int8'"):
        launch.vllm_command(int8)


def test_shell_form_keeps_every_argument():
    plan = sharding.shard_plan(LLAMA_70B, "fp8", "H100")
    argv = launch.vllm_command(plan)
    assert launch.as_shell(argv).replace("\\\n    ", "").split() == argv
