#!/usr/bin/env python3
# Makes the Hugging Face folder fixtures Tests/FormatsTests/Fixtures/hf/{llama,qwen2,gpt2}/: tiny random
# models (llama with grouped-query attention, saved in shards; qwen2 with tied embeddings; gpt2 with a
# tokenizer.json, vocabulary sized to it) written by transformers `save_pretrained(safe_serialization=True)`,
# weights perturbed as in make_model_fixtures.py, plus expected.safetensors (`input_ids` (B, T) and
# transformers' float32 `logits` (B, T, V)).
# Re-run (needs torch, transformers, numpy; never a dependency of the Swift build):
#   .venv/bin/python scripts/make_hf_fixtures.py
# Read by Tests/FormatsTests/SafetensorsTests.swift.

import json
import os
import shutil

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

SEED = 4321
B, T, V = 2, 6, 97
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
OUT = os.path.join(ROOT, "Tests", "FormatsTests", "Fixtures", "hf")
TOKENIZER = os.path.join(ROOT, "Tests", "TokenizersTests", "Fixtures", "tokenizer_gpt2.json")
with open(TOKENIZER) as _f:
    _tok = json.load(_f)
GPT2_V = max(list(_tok["model"]["vocab"].values()) + [t["id"] for t in _tok["added_tokens"]]) + 1


def perturb(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Norm weights from N(1, 0.2), everything else (biases included) from N(0, 0.2)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm_weight = p.ndim == 1 and name.endswith(".weight")
            noise = torch.randn(p.shape, generator=gen) * 0.2
            p.copy_(noise + 1.0 if is_norm_weight else noise)


def builds():
    yield "llama", LlamaForCausalLM(LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rope_theta=10000, rms_norm_eps=1e-6, tie_word_embeddings=False,
        max_position_embeddings=64, bos_token_id=None, eos_token_id=None, pad_token_id=None,
        attn_implementation="eager")), "40KB"
    yield "qwen2", Qwen2ForCausalLM(Qwen2Config(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rope_theta=1000000, rms_norm_eps=1e-6, tie_word_embeddings=True,
        max_position_embeddings=64, use_sliding_window=False, bos_token_id=None, eos_token_id=None,
        attn_implementation="eager")), None
    yield "gpt2", GPT2LMHeadModel(GPT2Config(  # the vocabulary of tokenizer_gpt2.json
        vocab_size=GPT2_V, n_positions=32, n_embd=16, n_layer=2, n_head=2, activation_function="gelu_new",
        resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, layer_norm_epsilon=1e-5, bos_token_id=0, eos_token_id=0,
        attn_implementation="eager")), None


def main() -> None:
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    for name, model, shard in builds():
        model = model.float().eval()
        perturb(model, gen)
        ids = torch.randint(0, model.config.vocab_size, (B, T), generator=gen)
        with torch.no_grad():
            logits = model(input_ids=ids).logits  # (B, T, V)
        folder = os.path.join(OUT, name)
        shutil.rmtree(folder, ignore_errors=True)
        kwargs = {"max_shard_size": shard} if shard else {}
        model.save_pretrained(folder, safe_serialization=True, **kwargs)
        if name == "gpt2":
            shutil.copy(TOKENIZER, os.path.join(folder, "tokenizer.json"))
        gc = os.path.join(folder, "generation_config.json")
        if os.path.exists(gc):
            os.remove(gc)
        save_file({"input_ids": ids.numpy().astype(np.int64), "logits": logits.numpy().astype(np.float32)},
                  os.path.join(folder, "expected.safetensors"))
        size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
        assert size < 200_000, f"{folder} is {size} bytes"
        print(f"{folder}: {sorted(os.listdir(folder))}, {size} bytes, logits std {logits.std().item():.3f}")


if __name__ == "__main__":
    main()
