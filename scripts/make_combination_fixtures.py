#!/usr/bin/env python3
# Makes Tests/PEFTTests/Fixtures/combination.h5: Hugging Face PEFT's `add_weighted_adapter` on a tiny
# random LlamaForCausalLM (hidden 32, 2 layers, 4 heads, 2 kv heads, vocab 64, intermediate 64) with
# four random LoRA adapters (init_lora_weights=False, so B != 0) on q_proj/v_proj — "a", "b", "d"
# (r = 4, different alphas) and "c" (r = 6, q_proj only: unequal ranks and partial coverage) — and one
# call per combination type (linear, cat, svd, ties, dare_linear, dare_ties, magnitude_prune and the
# *_svd variants; density 0.5 where it applies; negative weights included).
#
# Datasets (float32 unless said):
#   <HF key>                                   base model weights (model.embed_tokens.weight, …)
#   adapters/<adapter>/<module>.lora_A|.lora_B  source adapter tensors, (r, in) and (out, r)
#   combos/<combo>/<module>.lora_A|.lora_B      PEFT's combined adapter tensors; its scaling is 1, so its
#                                               ΔW is B·A (not stored: the test multiplies, which is
#                                               what must match where SVD signs make A/B differ)
#   masks/<combo>/<module>.<A|B|delta>.<adapter>  uint8 (flattened) DARE masks drawn by torch.bernoulli,
#                                               recorded so that DARE can be compared exactly
#   fixture/input_ids (B, T), fixture/logits/base and fixture/logits/<combo> (B, T, V) for the combos
#                                               in LOGITS: the base, and the model with only <combo> on
# Root string attributes: `config` (our ModelConfig JSON), `adapters` (name → r, lora_alpha,
# target_modules), `combinations` (list of name, type, adapters, weights, density, svd_rank, svd_clamp,
# majority_sign_method, as passed to add_weighted_adapter), `peft_version`.
#
# Re-run (needs torch, transformers, peft, h5py, numpy; never a dependency of the Swift build):
#   .venv/bin/python scripts/make_combination_fixtures.py
# Read by Tests/PEFTTests/LoRACombinationTests.swift.

import json
import os

import h5py
import numpy as np
import peft
import peft.utils.merge_utils as merge_utils
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

SEED = 4321
B, T, V = 1, 6, 64
LOGITS = {"linear", "cat", "svd", "ties", "dare_ties"}
OUT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "PEFTTests", "Fixtures"))
MODULES = [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]

ADAPTERS = {  # name → (r, lora_alpha, target_modules)
    "a": (4, 8, ["q_proj", "v_proj"]),
    "b": (4, 16, ["q_proj", "v_proj"]),
    "d": (4, 2, ["q_proj", "v_proj"]),
    "c": (6, 12, ["q_proj"]),
}

# name, type, adapters, weights, extra keyword arguments of add_weighted_adapter
COMBOS = [
    ("linear", "linear", ["a", "b", "d"], [0.6, -0.3, 0.5], {}),
    ("single", "ties", ["b"], [0.7], {"density": 0.5}),  # one adapter: PEFT uses linear whatever the type
    ("cat", "cat", ["a", "c"], [0.8, -0.5], {}),
    ("svd", "svd", ["a", "c"], [0.8, -0.5], {}),
    ("svd_clamp", "svd", ["a", "b"], [0.6, 0.4], {"svd_rank": 5, "svd_clamp": 0.9}),
    ("ties", "ties", ["a", "b", "d"], [0.6, -0.3, 0.5], {"density": 0.5}),
    ("ties_frequency", "ties", ["a", "b", "d"], [0.6, 0.3, 0.5], {"density": 0.7, "majority_sign_method": "frequency"}),
    ("magnitude_prune", "magnitude_prune", ["a", "b", "d"], [0.6, -0.3, 0.5], {"density": 0.5}),
    ("dare_linear", "dare_linear", ["a", "b", "d"], [0.6, -0.3, 0.5], {"density": 0.5}),
    ("dare_ties", "dare_ties", ["a", "b", "d"], [0.6, -0.3, 0.5], {"density": 0.5}),
    ("dare_ties_full", "dare_ties", ["a", "b", "d"], [0.6, -0.3, 0.5], {"density": 1.0}),
    ("ties_svd", "ties_svd", ["a", "b", "c"], [0.6, -0.3, 0.5], {"density": 0.5}),
    ("magnitude_prune_svd", "magnitude_prune_svd", ["a", "c"], [0.6, 0.5], {"density": 0.5, "svd_rank": 4}),
    ("dare_linear_svd", "dare_linear_svd", ["a", "c"], [0.6, 0.5], {"density": 0.5}),
    ("dare_ties_svd", "dare_ties_svd", ["a", "b", "c"], [0.6, -0.3, 0.5], {"density": 0.5}),
]


def f32(x) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().numpy() if torch.is_tensor(x) else x, dtype=np.float32)


def main() -> None:
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rope_theta=10000, rms_norm_eps=1e-6, tie_word_embeddings=False,
        max_position_embeddings=64, bos_token_id=None, eos_token_id=None, pad_token_id=None,
        attn_implementation="eager")).float().eval()
    with torch.no_grad():  # not an identity anywhere: norms N(1, 0.2), the rest N(0, 0.2)
        for name, p in hf.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.2
            p.copy_(noise + 1.0 if p.ndim == 1 else noise)
    ours = dict(family="llama", vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, intermediate_size=64, norm="rms_norm", norm_eps=1e-6, mlp="swiglu",
                positions="rope", rope_theta=10000, attention_bias=False, projection_bias=False,
                tie_word_embeddings=False, max_position_embeddings=64, dropout=0)
    base_state = {k: f32(v) for k, v in hf.state_dict().items() if k in dict(hf.named_parameters())}

    model = None
    for name, (r, alpha, targets) in ADAPTERS.items():
        cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, init_lora_weights=False)
        if model is None:
            model = get_peft_model(hf, cfg, adapter_name=name)
        else:
            model.add_adapter(name, cfg)
    model.eval()
    inner = model.base_model.model

    def lora(module: str):
        return inner.get_submodule(module)

    # Record DARE's Bernoulli masks (same draws as merge_utils.random_pruning).
    recorded: list[torch.Tensor] = []

    def random_pruning(tensor, density, rescale):
        mask = torch.bernoulli(torch.full_like(input=tensor, fill_value=density))
        recorded.append(mask)
        pruned = tensor * mask
        return pruned / density if rescale else pruned

    merge_utils.random_pruning = random_pruning

    ids = torch.randint(0, V, (B, T), generator=gen)
    with torch.no_grad(), model.disable_adapter():
        base_logits = model(input_ids=ids).logits

    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "combination.h5")
    combos_meta = []
    with h5py.File(path, "w", libver=("v110", "v110")) as f:
        for key, t in base_state.items():
            f.create_dataset(key, data=t)
        for name in ADAPTERS:
            for m in MODULES:
                layer = lora(m)
                if name in layer.lora_A:
                    f.create_dataset(f"adapters/{name}/{m}.lora_A", data=f32(layer.lora_A[name].weight))
                    f.create_dataset(f"adapters/{name}/{m}.lora_B", data=f32(layer.lora_B[name].weight))
        f.create_dataset("fixture/input_ids", data=f32(ids))
        f.create_dataset("fixture/logits/base", data=f32(base_logits))

        for cname, ctype, adapters, weights, kw in COMBOS:
            recorded.clear()
            model.add_weighted_adapter(adapters, weights, cname, combination_type=ctype, **kw)
            cfg = model.peft_config[cname]
            assert cfg.r == cfg.lora_alpha, (cname, cfg.r, cfg.lora_alpha)
            is_svd = ctype.endswith("svd")
            # Masks in PEFT's call order: per module, (A then B | ΔW), per adapter targeting it.
            calls = iter(recorded)
            for m in MODULES:
                layer = lora(m)
                if cname not in layer.lora_A:
                    continue
                A, Bm = layer.lora_A[cname].weight, layer.lora_B[cname].weight
                assert layer.scaling[cname] == 1.0, (cname, layer.scaling[cname])
                f.create_dataset(f"combos/{cname}/{m}.lora_A", data=f32(A))
                f.create_dataset(f"combos/{cname}/{m}.lora_B", data=f32(Bm))
                assert torch.allclose(layer.get_delta_weight(cname), Bm @ A)
                if ctype.startswith("dare") and kw["density"] < 1:
                    valid = [a for a in adapters if a in layer.lora_A]
                    for part in (["delta"] if is_svd else ["A", "B"]):
                        for a in valid:
                            mask = next(calls)
                            expect = {"A": layer.lora_A[a].weight.shape, "B": layer.lora_B[a].weight.shape,
                                      "delta": layer.base_layer.weight.shape}[part]
                            assert mask.shape == expect, (cname, m, part, a, mask.shape, expect)
                            f.create_dataset(f"masks/{cname}/{m}.{part}.{a}", data=f32(mask).reshape(-1).astype(np.uint8))
            assert next(calls, None) is None, f"{cname}: unconsumed DARE masks"
            model.set_adapter(cname)
            with torch.no_grad():
                if cname in LOGITS:
                    f.create_dataset(f"fixture/logits/{cname}", data=f32(model(input_ids=ids).logits))
            combos_meta.append(dict(name=cname, type=ctype, adapters=adapters, weights=weights,
                                    density=kw.get("density"), svd_rank=kw.get("svd_rank"),
                                    svd_clamp=kw.get("svd_clamp"),
                                    majority_sign_method=kw.get("majority_sign_method", "total")))

        def attr(key: str, value: str) -> None:  # fixed-length UTF-8 string attribute
            data = value.encode("utf-8")
            f.attrs.create(key, np.array(data, dtype=f"S{len(data)}"))

        attr("config", json.dumps(ours))
        attr("adapters", json.dumps({n: dict(r=r, lora_alpha=a, target_modules=t) for n, (r, a, t) in ADAPTERS.items()}))
        attr("combinations", json.dumps(combos_meta))
        attr("peft_version", peft.__version__)
    print(f"wrote {path} ({os.path.getsize(path) // 1024} KB, peft {peft.__version__})")


if __name__ == "__main__":
    main()
