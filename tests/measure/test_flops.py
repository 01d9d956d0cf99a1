"""FLOPs: the analytical count against calflops (eager attention), generation composition, fallbacks, MFU."""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap

import pytest

from lem.measure import flops as fl
from lem.measure.flops import (
    FlopsUnavailable,
    RequestTokens,
    analytical_cost,
    calflops_count,
    calflops_fit,
    count_run_flops,
    flops_summary,
    generation_flops,
    params_cost,
    run_flops,
    transformer_shape,
)
from lem.measure.flops import run as flops_run
from lem.measure.gpu_peaks import find_gpu, peak_flops_per_s

needs_calflops = pytest.mark.skipif(not fl.calflops_available(), reason="calflops not installed (pip install calflops)")


def llama_gqa(**overrides):
    from transformers import LlamaConfig

    kwargs = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def gpt2_small():
    from transformers import GPT2Config

    return GPT2Config(vocab_size=1000, n_embd=128, n_layer=2, n_head=4, n_positions=512, bos_token_id=0, eos_token_id=0)


# --- analytical vs calflops (eager attention, its own process) ---------------------------


@needs_calflops
@pytest.mark.parametrize("make_config", [llama_gqa, gpt2_small], ids=["llama-gqa-gated", "gpt2-plain"])
def test_analytical_prefill_matches_calflops(make_config):
    config = make_config()
    fit = calflops_fit(config, check_length=100)
    cost = analytical_cost(config)
    for n, counted in fit.prefill_flops.items():
        assert cost.forward_flops(n) == pytest.approx(counted, rel=0.02)  # calflops adds softmax/activation/norm ops
        assert cost.forward_flops(n) == 2 * fit.prefill_macs[n]  # the matmuls themselves agree exactly
    # The counts follow one prefill + per-step decode structure, and a counted decode step agrees with it.
    assert fit.structure_error < 1e-9
    assert cost.forward_flops(1, fit.decode["kv_tokens"]) == pytest.approx(fit.decode["flops"], rel=0.02)


@needs_calflops
def test_generate_with_padding_matches_calflops_generate():
    # calflops counting a real model.generate on a left-padded batch, in its own process.
    script = textwrap.dedent(
        """
        import json, torch
        from transformers import LlamaConfig, LlamaForCausalLM
        from calflops import calculate_flops
        cfg = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=1, bos_token_id=2)
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).eval()
        model.set_attn_implementation("eager")
        g = model.generation_config
        g.max_new_tokens = g.min_new_tokens = 6; g.do_sample = False; g.pad_token_id = 0; g.eos_token_id = 1
        ids = torch.randint(3, 1000, (3, 12)); mask = torch.ones(3, 12, dtype=torch.long)
        ids[1, :5] = 0; mask[1, :5] = 0; ids[2, :9] = 0; mask[2, :9] = 0
        flops, macs, _ = calculate_flops(model=model, kwargs={"input_ids": ids, "attention_mask": mask},
                                         forward_mode="generate", output_as_string=False, print_results=False)
        print(json.dumps({"flops": flops, "macs": macs}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    counted = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    requests = [RequestTokens(12, 6, 12, 0), RequestTokens(7, 6, 12, 0), RequestTokens(3, 6, 12, 0)]
    executed = run_flops(analytical_cost(llama_gqa()), requests).executed.total_flops
    assert executed == 2 * counted["macs"]
    assert executed == pytest.approx(counted["flops"], rel=0.02)


@needs_calflops
def test_tiny_checkpoint_auto_uses_calflops_and_records_agreement(tmp_path):
    from transformers import AutoConfig

    from tests.tiny_model import make_tiny_model_dir

    path = make_tiny_model_dir(tmp_path / "tiny")
    config = AutoConfig.from_pretrained(path)
    requests = [RequestTokens(20, 8, 24, 0), RequestTokens(24, 5, 24, 0)]
    rec = count_run_flops("auto", requests, config=config, model_path=str(path))
    assert rec.source == "calflops" and rec.strategy == "auto"
    assert rec.calflops_vs_analytical == pytest.approx(1.0, abs=0.02)
    analytical = run_flops(analytical_cost(config), requests).executed.total_flops
    assert rec.total_flops == pytest.approx(analytical, rel=0.02)
    assert rec.prefill_flops + rec.decode_flops == pytest.approx(rec.total_flops)


@needs_calflops
def test_calflops_failure_stays_in_its_process_and_falls_back(monkeypatch):
    import torch
    import torch.nn.functional as F

    linear, matmul = F.linear, torch.matmul
    with pytest.raises(FlopsUnavailable, match="injected failure.*stayed inside the worker"):
        calflops_fit(llama_gqa(), check_length=64, inject_failure=True)  # the worker's torch *was* left patched
    assert F.linear is linear and torch.matmul is matmul  # ours was not

    monkeypatch.setattr(flops_run, "calflops_fit", functools.partial(calflops_fit, inject_failure=True))
    rec = count_run_flops("auto", [RequestTokens(30, 10)], config=llama_gqa())
    assert rec.source == "analytical"
    assert any("calflops: RuntimeError: injected failure" in n for n in rec.notes)
    monkeypatch.undo()

    # Counting again after the failure gives the same numbers: nothing doubled (fresh workers, no cache).
    monkeypatch.setattr(calflops_count, "_calflops_cache_file", lambda *a: None)
    first = calflops_fit(llama_gqa(), check_length=64)
    second = calflops_fit(llama_gqa(), check_length=64)
    assert first.prefill_flops == second.prefill_flops
    assert first.prefill_flops[64] == pytest.approx(analytical_cost(llama_gqa()).forward_flops(64), rel=0.02)


def test_calflops_counts_off_the_structure_are_not_used_by_auto(monkeypatch):
    cost = analytical_cost(llama_gqa())
    skewed = fl.ForwardCost(cost.per_token_flops * 1.5, cost.per_query_key_flops, cost.per_logit_flops, source="calflops")
    fit = fl.CalflopsFit(skewed, {64: 1}, {64: 1}, None, structure_error=0.05, check_length=64)
    monkeypatch.setattr(flops_run, "calflops_fit", lambda *a, **k: fit)
    monkeypatch.setattr(calflops_count, "calflops_available", lambda: True)
    auto = count_run_flops("auto", [RequestTokens(30, 10)], config=llama_gqa())
    assert auto.source == "analytical" and any("do not follow" in n for n in auto.notes)
    forced = count_run_flops("calflops", [RequestTokens(30, 10)], config=llama_gqa())
    assert forced.source == "calflops" and any("structure check off by 5.00%" in n for n in forced.notes)
    assert forced.total_flops > auto.total_flops


def test_calflops_missing_falls_back_with_install_hint(monkeypatch):
    monkeypatch.setattr(calflops_count, "calflops_available", lambda: False)
    rec = count_run_flops("calflops", [RequestTokens(30, 10)], config=llama_gqa())
    assert rec.source == "analytical" and rec.strategy == "calflops"
    assert "calflops: not installed (pip install calflops)" in rec.notes


# --- analytical structure ----------------------------------------------------------------


def test_decode_step_grows_linearly_with_kv_length():
    cost = analytical_cost(llama_gqa())
    steps = [cost.forward_flops(1, kv) for kv in (10, 11, 12, 50, 51)]
    assert steps[1] - steps[0] == steps[2] - steps[1] == steps[4] - steps[3] == cost.per_query_key_flops > 0
    assert steps[3] - steps[0] == 40 * cost.per_query_key_flops
    # generation_flops' closed form equals the step-by-step sum; decode of a longer prompt costs more.
    g = generation_flops(cost, 10, 6)
    assert g.decode_flops == sum(cost.forward_flops(1, 10 + k) for k in range(1, 6))
    assert generation_flops(cost, 40, 6).decode_flops - g.decode_flops == 5 * 30 * cost.per_query_key_flops
    assert generation_flops(cost, 10, 1).decode_flops == 0  # the first token comes from the prefill


def test_gqa_reduces_kv_projection_flops_only():
    gqa, mha = transformer_shape(llama_gqa()), transformer_shape(llama_gqa(num_key_value_heads=4))
    head_dim, hidden, layers = 16, 64, 2
    # k and v projections shrink from 4 to 2 heads; nothing else changes.
    assert mha.cost().per_token_flops - gqa.cost().per_token_flops == 2 * layers * 2 * hidden * (4 - 2) * head_dim
    assert mha.cost().per_query_key_flops == gqa.cost().per_query_key_flops
    assert mha.cost().per_logit_flops == gqa.cost().per_logit_flops


def _linear_weights_per_token(config) -> int:
    """Multiply-accumulates per token of every linear layer but the lm head, read off the built model."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    head = model.get_output_embeddings()
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not head)


def _configs():
    import transformers as t

    small = dict(vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    return {
        "llama": t.LlamaConfig(**small, intermediate_size=96, num_key_value_heads=2),
        "mistral": t.MistralConfig(**small, intermediate_size=96, num_key_value_heads=1),
        "qwen2": t.Qwen2Config(**small, intermediate_size=96, num_key_value_heads=2),
        "gemma": t.GemmaConfig(**small, intermediate_size=96, num_key_value_heads=1, head_dim=32),
        "phi3": t.Phi3Config(**small, intermediate_size=96, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2),
        "gpt_neox": t.GPTNeoXConfig(**small, intermediate_size=96),
        "phi": t.PhiConfig(**small, intermediate_size=96),
        "starcoder2": t.Starcoder2Config(**small, intermediate_size=96, num_key_value_heads=2),
        "gpt2": t.GPT2Config(vocab_size=500, n_embd=64, n_layer=2, n_head=4),
    }


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "gemma", "phi3", "gpt_neox", "phi", "starcoder2", "gpt2"])
def test_analytical_linear_layers_match_the_built_model(model_type):
    config = _configs()[model_type]
    shape = transformer_shape(config)
    assert shape.gated_mlp == (model_type in {"llama", "mistral", "qwen2", "gemma", "phi3"})
    assert shape.linear_macs_per_token == _linear_weights_per_token(config)


def test_tied_lm_head_is_still_counted():
    tied, untied = llama_gqa(tie_word_embeddings=True), llama_gqa(tie_word_embeddings=False)
    assert analytical_cost(tied).per_logit_flops == analytical_cost(untied).per_logit_flops == 2 * 64 * 1000


def test_unsupported_architecture_falls_back_to_params_with_reason():
    from transformers import MixtralConfig

    config = MixtralConfig(vocab_size=500, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=4)
    rec = count_run_flops("analytical", [RequestTokens(16, 4)], config=config)
    assert rec.source == "2x_params"
    assert any("mixture of experts" in n for n in rec.notes)
    assert rec.total_flops and rec.total_flops > 0


# --- executed vs useful ------------------------------------------------------------------


def test_padding_and_finished_rows_count_as_executed_not_useful():
    cost = analytical_cost(llama_gqa())
    batch = [RequestTokens(5, 3, 10, 0), RequestTokens(10, 7, 10, 0)]
    result = run_flops(cost, batch)
    assert result.executed == generation_flops(cost, 10, 7, batch_size=2)
    assert result.useful.total_flops == generation_flops(cost, 5, 3).total_flops + generation_flops(cost, 10, 7).total_flops
    assert result.executed.total_flops > result.useful.total_flops
    # An engine that pads to a fixed width computes that width, wider than any prompt in the batch.
    bucketed = run_flops(cost, [RequestTokens(5, 3, 16, 0), RequestTokens(10, 7, 16, 0)])
    assert bucketed.executed == generation_flops(cost, 16, 7, batch_size=2)
    # Two batches are counted apart; unpadded requests (continuous batching) execute exactly what is useful.
    two = run_flops(cost, [RequestTokens(5, 3, 5, 0), RequestTokens(10, 7, 10, 1)])
    assert two.executed.total_flops == two.useful.total_flops
    alone = run_flops(cost, [RequestTokens(5, 3), RequestTokens(10, 7)])
    assert alone.executed == alone.useful


def test_without_kv_cache_every_step_recomputes_the_sequence():
    cost = analytical_cost(llama_gqa())
    no_cache = generation_flops(cost, 10, 4, kv_cache=False)
    assert no_cache.decode_flops == sum(cost.forward_flops(10 + k) for k in range(1, 4))
    assert no_cache.decode_flops > generation_flops(cost, 10, 4).decode_flops


def test_causal_attention_counts_half_the_square():
    cost = analytical_cost(llama_gqa())
    full, causal = cost.forward_flops(8), cost.forward_flops(8, causal_attention=True)
    assert full - causal == cost.per_query_key_flops * (64 - 36)  # 8·8 pairs vs 8·9/2
    assert cost.forward_flops(1, 20, causal_attention=True) == cost.forward_flops(1, 20)  # a decode step sees every key


# --- 2 x params ----------------------------------------------------------------------------


def test_params_strategy_is_two_flops_per_non_embedding_parameter_per_token():
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(llama_gqa(tie_word_embeddings=False))
    total = sum(p.numel() for p in model.parameters())
    embed, head = 1000 * 64, 1000 * 64
    cost = params_cost(model)
    assert cost.per_token_flops == 2 * (total - embed - head)
    assert cost.per_logit_flops == 2 * head and cost.per_query_key_flops == 0
    rec = count_run_flops("params", [RequestTokens(30, 10)], model=model)
    assert rec.source == "2x_params"
    # 30 prompt tokens + 9 decode tokens fed, 10 logit rows (one per forward).
    assert rec.total_flops == 2 * (total - embed - head) * (30 + 9) + 2 * head * 10


def test_off_counts_nothing():
    rec = count_run_flops("off", [RequestTokens(30, 10)], config=llama_gqa())
    assert rec.total_flops is None and rec.source is None and rec.notes


# --- achieved FLOP/s and MFU -------------------------------------------------------------


def test_mfu_is_null_on_cpu_and_computed_for_a_known_gpu():
    rec = count_run_flops("analytical", [RequestTokens(100, 50, 120, 0), RequestTokens(120, 20, 120, 0)], config=llama_gqa())
    cpu = flops_summary(rec, output_tokens=70, generation_wall_s=2.0, device_type="cpu", device_name="AMD EPYC 7T83 64-Core Processor", dtype="float32")
    assert cpu["mfu"] is None and cpu["hfu"] is None and cpu["peak_flops_per_s"] is None
    assert cpu["flops_per_s"] == pytest.approx(rec.total_flops / 2.0)
    assert cpu["executed_flops_per_output_token"] == pytest.approx(rec.total_flops / 70)
    assert cpu["useful_flops_per_output_token"] == pytest.approx(rec.useful_flops / 70)
    assert any("null on CPU" in n for n in cpu["notes"])

    gpu = flops_summary(rec, output_tokens=70, generation_wall_s=2.0, device_type="cuda", device_name="NVIDIA H100 80GB HBM3", dtype="bfloat16")
    assert gpu["peak_flops_per_s"] == 989.5e12
    assert gpu["mfu"] == pytest.approx(rec.useful_flops / 2.0 / 989.5e12)
    assert gpu["hfu"] == pytest.approx(rec.total_flops / 2.0 / 989.5e12)
    assert gpu["hfu"] > gpu["mfu"]  # padding and finished rows are executed but not useful

    unknown = flops_summary(rec, 70, 2.0, device_type="cuda", device_name="NVIDIA Mystery GPU", dtype="bfloat16")
    assert unknown["mfu"] is None and any("no peak" in n for n in unknown["notes"])
    # The peak stored in the record (late aggregation from raw records) is used as is.
    stored = count_run_flops("analytical", [RequestTokens(100, 50)], config=llama_gqa(), device_name="NVIDIA L4", dtype="float16")
    assert stored.peak_flops_per_s == 121e12
    assert flops_summary(stored.__dict__, 50, 1.0, device_type="cuda")["mfu"] == pytest.approx(stored.useful_flops / 121e12)


@pytest.mark.parametrize(
    "device_name, dtype, expected",
    [
        ("NVIDIA H100 80GB HBM3", "bfloat16", 989.5e12),
        ("NVIDIA B200", "float32", 75e12),  # HGX B200 (1000 W); 80 is GB200's
        ("NVIDIA B200", "bfloat16", 2250e12),
        ("NVIDIA GB200", "float32", 80e12),
        ("NVIDIA GB200", "bfloat16", 2500e12),
        ("NVIDIA H100 PCIe", "float16", 756e12),
        ("NVIDIA H100 NVL", "bfloat16", 835.5e12),
        ("NVIDIA H200", "bfloat16", 989.5e12),
        ("NVIDIA GH200 480GB", "bfloat16", 989.5e12),
        ("NVIDIA A100-SXM4-80GB", "bfloat16", 312e12),
        ("NVIDIA A100-PCIE-40GB", "float32", 19.5e12),
        ("NVIDIA A100-SXM4-40GB", "float32", 19.5e12),
        ("NVIDIA L40S", "bfloat16", 362.05e12),
        ("NVIDIA L4", "bfloat16", 121e12),
        ("NVIDIA A10G", "bfloat16", 125e12),
        ("NVIDIA A10", "float32", 31.2e12),
        ("NVIDIA GeForce RTX 4090", "bfloat16", 165.2e12),
        ("Tesla V100-SXM2-16GB", "float16", 125e12),
        ("Tesla V100-PCIE-32GB", "float16", 112e12),
        ("Tesla V100-SXM2-16GB", "bfloat16", None),  # no bfloat16 tensor cores
        ("Tesla T4", "float16", 65e12),
        ("AMD EPYC 7T83 64-Core Processor", "float32", None),
        ("NVIDIA Mystery GPU", "bfloat16", None),
    ],
)
def test_gpu_peak_lookup(device_name, dtype, expected):
    assert peak_flops_per_s(device_name, dtype) == expected


def test_gpu_peak_tf32_and_aliases():
    assert peak_flops_per_s("NVIDIA A100-SXM4-80GB", "float32", tf32=True) == 156e12
    assert peak_flops_per_s("NVIDIA A100-SXM4-80GB", "bf16") == 312e12
    assert find_gpu("NVIDIA L40S").name == "L40S" and find_gpu("NVIDIA L40").name == "L40" and find_gpu("NVIDIA L4").name == "L4"
    assert find_gpu(None) is None


@needs_calflops
def test_calflops_counts_are_cached_per_architecture(monkeypatch, tmp_path):
    monkeypatch.setenv("LEM_CACHE_DIR", str(tmp_path))
    first = calflops_fit(llama_gqa(), check_length=64)
    assert len(list((tmp_path / "flops").glob("calflops-*.json"))) == 1

    def no_worker(*a, **k):
        raise AssertionError("the cached counts should have been used")

    monkeypatch.setattr(calflops_count.subprocess, "run", no_worker)
    again = calflops_fit(llama_gqa(), check_length=64)
    assert again.prefill_flops == first.prefill_flops and again.decode == first.decode
    other = llama_gqa()
    other.num_hidden_layers += 1  # another architecture: counted afresh
    with pytest.raises(AssertionError, match="cached counts"):
        calflops_fit(other, check_length=64)
