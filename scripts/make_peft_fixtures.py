#!/usr/bin/env python3
# Makes the Hugging Face PEFT adapter-folder fixtures Tests/FormatsTests/Fixtures/peft/: two tiny random
# base models saved as Hugging Face folders (`llama` with grouped-query attention, `gpt2` with Conv1D
# layers; weights perturbed), and PEFT adapters on them saved with PEFT's `save_pretrained`
# (adapter_config.json + adapter_model.safetensors): LoRA (init_lora_weights=False, so B ≠ 0), DoRA
# (magnitudes perturbed), IA3 (init_ia3_weights=False), prompt tuning, prefix tuning with projection and
# P-Tuning (MLP) — the last two saved as PEFT saves them, the encoder OUTPUT as `prompt_embeddings`.
# Each adapter folder also holds expected.safetensors: `input_ids` (B, T) and PEFT's float32 `logits`
# (B, T, V) for the real tokens (virtual-token positions dropped).
# Re-run (needs torch, transformers, peft, safetensors; never a dependency of the Swift build):
#   .venv/bin/python scripts/make_peft_fixtures.py
# Read by Tests/FormatsTests/PEFTFolderTests.swift.

import os
import shutil

import numpy as np
import torch
from peft import (IA3Config, LoraConfig, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig,
                  get_peft_model)
from safetensors.numpy import save_file
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

SEED = 2718
B, T, V = 2, 5, 61
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
OUT = os.path.join(ROOT, "Tests", "FormatsTests", "Fixtures", "peft")


def perturb(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Norm weights from N(1, 0.2), everything else (biases included) from N(0, 0.2)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.2
            p.copy_(noise + 1.0 if p.ndim == 1 and name.endswith(".weight") else noise)


def base(family: str) -> torch.nn.Module:
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(
            vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rope_theta=10000, rms_norm_eps=1e-6, tie_word_embeddings=False,
            max_position_embeddings=64, bos_token_id=None, eos_token_id=None, pad_token_id=None,
            attn_implementation="eager")).float().eval()
    return GPT2LMHeadModel(GPT2Config(
        vocab_size=V, n_positions=32, n_embd=16, n_layer=2, n_head=2, activation_function="gelu_new",
        resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, layer_norm_epsilon=1e-5, bos_token_id=0, eos_token_id=0,
        attn_implementation="eager")).float().eval()


def adapters():
    """(folder name, base family, PEFT config)."""
    yield "llama-lora", "llama", LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False, task_type="CAUSAL_LM")
    yield "llama-dora", "llama", LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "k_proj", "down_proj"],
                                            use_dora=True, init_lora_weights=False, task_type="CAUSAL_LM")
    yield "llama-ia3", "llama", IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"],
                                          init_ia3_weights=False, task_type="CAUSAL_LM")
    yield "llama-prompt", "llama", PromptTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM")
    yield "llama-prefix", "llama", PrefixTuningConfig(num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=8,
                                                      task_type="CAUSAL_LM")
    yield "llama-ptuning", "llama", PromptEncoderConfig(num_virtual_tokens=3, encoder_hidden_size=8, task_type="CAUSAL_LM")
    yield "gpt2-lora", "gpt2", LoraConfig(r=4, lora_alpha=16, target_modules=["c_attn"], fan_in_fan_out=True,
                                          init_lora_weights=False, task_type="CAUSAL_LM")
    yield "gpt2-ia3", "gpt2", IA3Config(init_ia3_weights=False, task_type="CAUSAL_LM")
    yield "gpt2-prefix", "gpt2", PrefixTuningConfig(num_virtual_tokens=2, task_type="CAUSAL_LM")


def main() -> None:
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    shutil.rmtree(OUT, ignore_errors=True)
    for family in ["llama", "gpt2"]:
        model = base(family)
        perturb(model, gen)
        model.save_pretrained(os.path.join(OUT, family), safe_serialization=True)
        gc = os.path.join(OUT, family, "generation_config.json")
        if os.path.exists(gc):
            os.remove(gc)
    ids = torch.randint(0, V, (B, T), generator=gen)
    for name, family, config in adapters():
        torch.manual_seed(SEED + len(name))
        model = base(family)
        missing, unexpected = model.load_state_dict(load_file(os.path.join(OUT, family, "model.safetensors")), strict=False)
        assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
        model.tie_weights()
        peft_model = get_peft_model(model, config).eval()
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_magnitude_vector" in n:  # DoRA starts at ‖W + sBA‖: move it away
                    p.mul_(1 + 0.3 * torch.randn(p.shape, generator=gen))
                elif "prompt_encoder" in n and p.requires_grad:  # encoder weights: a visible effect
                    p.add_(0.1 * torch.randn(p.shape, generator=gen))
            logits = peft_model(input_ids=ids).logits[:, -T:, :]  # (B, T, V): real tokens only
        folder = os.path.join(OUT, name)
        peft_model.save_pretrained(folder)
        readme = os.path.join(folder, "README.md")
        if os.path.exists(readme):
            os.remove(readme)
        save_file({"input_ids": ids.numpy().astype(np.int64), "logits": logits.numpy().astype(np.float32)},
                  os.path.join(folder, "expected.safetensors"))
        print(f"{name}: {sorted(os.listdir(folder))}, logits std {logits.std().item():.3f}")
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
    assert total < 400_000, f"{OUT} is {total} bytes"
    print(f"{OUT}: {total} bytes")


if __name__ == "__main__":
    main()
