#!/usr/bin/env python3
# Makes the model parity fixtures Tests/ModelsTests/Fixtures/{gpt2,llama,qwen2}.h5: tiny random
# GPT-2, LLaMA and Qwen2 models built with Hugging Face transformers (float32, eval, eager attention),
# their weights (one dataset per state_dict key) and PyTorch's logits, masked logits, loss and (llama)
# greedy continuation, plus our ModelConfig as the JSON root attribute `config`.
# Re-run (needs torch, transformers, h5py, numpy; never a dependency of the Swift build):
#   .venv/bin/python scripts/make_model_fixtures.py
# Read by Tests/ModelsTests/ModelParityTests.swift.

import json
import os

import h5py
import numpy as np
import torch
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

SEED = 1234
B, T, V = 2, 7, 97
PAD = 2  # right padding on the second row of the masked input
OUT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "ModelsTests", "Fixtures"))


def perturb(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Re-initializes every parameter so no part of the model is an identity or zero: norm weights
    from N(1, 0.2) (not identity), everything else, biases included, from N(0, 0.2). With C = 32
    this gives logits of standard deviation ~1, so softmax and the loss are far from uniform."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm_weight = p.ndim == 1 and name.endswith(".weight")  # LayerNorm / RMSNorm scales
            noise = torch.randn(p.shape, generator=gen) * 0.2
            p.copy_(noise + 1.0 if is_norm_weight else noise)


def gpt2():
    hf = GPT2LMHeadModel(GPT2Config(
        vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=4, activation_function="gelu_new",
        resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, layer_norm_epsilon=1e-5, bos_token_id=0, eos_token_id=0,
        attn_implementation="eager"))
    ours = dict(family="gpt2", vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4, intermediate_size=128, norm="layer_norm", norm_eps=1e-5, mlp="gelu_new",
                positions="learned", rope_theta=0, attention_bias=True, projection_bias=True,
                tie_word_embeddings=True, max_position_embeddings=32, dropout=0)
    return hf, ours


def llama():
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rope_theta=10000, rms_norm_eps=1e-6, tie_word_embeddings=False,
        max_position_embeddings=64, bos_token_id=None, eos_token_id=None, pad_token_id=None,
        attn_implementation="eager"))
    ours = dict(family="llama", vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, intermediate_size=64, norm="rms_norm", norm_eps=1e-6, mlp="swiglu",
                positions="rope", rope_theta=10000, attention_bias=False, projection_bias=False,
                tie_word_embeddings=False, max_position_embeddings=64, dropout=0)
    return hf, ours


def qwen2():
    hf = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rope_theta=10000, rms_norm_eps=1e-6, tie_word_embeddings=True,
        max_position_embeddings=64, use_sliding_window=False, bos_token_id=None, eos_token_id=None,
        attn_implementation="eager"))
    ours = dict(family="llama", vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, intermediate_size=64, norm="rms_norm", norm_eps=1e-6, mlp="swiglu",
                positions="rope", rope_theta=10000, attention_bias=True, projection_bias=False,
                tie_word_embeddings=True, max_position_embeddings=64, dropout=0)
    return hf, ours


def f32(x) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().numpy() if torch.is_tensor(x) else x, dtype=np.float32)


def make(name: str, build, gen: torch.Generator) -> None:
    model, ours = build()
    model = model.float().eval()
    perturb(model, gen)
    tied = ours["tie_word_embeddings"]
    if tied:  # the perturbed head must still be the embedding table
        assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()

    ids = torch.randint(0, V, (B, T), generator=gen)  # (B, T)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, T - PAD:] = 0  # second row right-padded
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)  # HF shifts labels: mean over B·(T-1) predictions
        logits, loss = out.logits, out.loss  # (B, T, V), ()
        logits_masked = model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)

    params = dict(model.named_parameters())  # skips buffers such as rotary inv_freq
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, f"{name}.h5")
    with h5py.File(path, "w") as f:
        for key, t in model.state_dict().items():
            if key not in params:
                continue
            if tied and key == "lm_head.weight":  # tied to the embedding table: not stored
                continue
            assert "/" not in key, key
            f.create_dataset(key, data=f32(t))
        f.create_dataset("fixture/input_ids", data=f32(ids))  # (B, T)
        f.create_dataset("fixture/attention_mask", data=f32(mask))  # (B, T)
        f.create_dataset("fixture/logits", data=f32(logits))  # (B, T, V)
        f.create_dataset("fixture/logits_masked", data=f32(logits_masked))  # (B, T, V)
        f.create_dataset("fixture/loss", data=f32(loss.reshape(1)))  # (1,)
        if name == "llama":
            prompt = torch.randint(0, V, (1, 5), generator=gen)
            with torch.no_grad():
                seq = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                     max_new_tokens=8, min_new_tokens=8, pad_token_id=0)
            greedy = seq[0, 5:]
            assert greedy.numel() == 8, greedy
            # Every step's top-1 must beat top-2 clearly, or float32 noise could flip the argmax.
            with torch.no_grad():
                step_logits = model(seq).logits[0, 4:-1]  # (8, V): the logits that chose each new token
            top2 = step_logits.topk(2, dim=-1)
            assert torch.equal(top2.indices[:, 0], greedy), (top2.indices[:, 0], greedy)
            margin = (top2.values[:, 0] - top2.values[:, 1]).min().item()
            assert margin > 1e-3, f"greedy margin {margin} too small; change SEED"
            f.create_dataset("fixture/generate_prompt", data=f32(prompt[0]))  # (5,)
            f.create_dataset("fixture/generate_greedy", data=f32(greedy))  # (8,)
        s = json.dumps(ours, sort_keys=True).encode()
        f.attrs.create("config", data=s, dtype=h5py.string_dtype("utf-8", len(s)))  # fixed-length UTF-8
    print(f"{path}: {os.path.getsize(path)} bytes, loss {loss.item():.6f}, "
          f"logits std {logits.std().item():.3f}")


def main() -> None:
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    for name, build in [("gpt2", gpt2), ("llama", llama), ("qwen2", qwen2)]:
        make(name, build, gen)


if __name__ == "__main__":
    main()
