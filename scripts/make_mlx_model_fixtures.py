#!/usr/bin/env python3
# Makes the mlx-lm model folder fixtures Tests/FormatsTests/Fixtures/mlx-model/: tiny models with random
# weights saved by mlx-lm itself as `mlx_lm.convert` saves them (`quantize_model`, `save_model`,
# `save_config`; no tokenizer):
#   llama-q4     LLaMA, tied embedding, bf16 weights, every layer 4-bit with group size 32 (as the
#                mlx-community "-4bit" models: the embedding too, the scales and biases in bf16)
#   llama-mixed  LLaMA, untied head, float32, `mixed_3_6` (3 bits, 6 for v_proj, down_proj and the head,
#                per-layer entries in the config) as `mlx_lm.convert --quant-predicate mixed_3_6` writes it
#                without --q-group-size (every layer's "group_size" null: mlx's default, 64), and one
#                projection left unquantized
#   gpt2-q8      GPT-2, 8-bit with group size 64 (mlx-lm's GPT-2 layout: "model."-prefixed keys, every
#                Conv1D matrix transposed to (out, in))
#   gpt2-f16     GPT-2 in float16, not quantized (the same layout)
# Each folder also holds expected.safetensors: `input_ids` (B, T) and the float32 `logits` (B, T, V) that
# mlx-lm's own `load_model` gives for the folder, its float weights cast to float32 first.
# dequantize.safetensors holds, for each bit width b mlx's affine mode has (1, 2, 3, 4, 5, 6, 8), a
# random (3, 128) matrix quantized by `mx.quantize` with group size 32: `b{b}.weight` (U32),
# `b{b}.scales`, `b{b}.biases` (bf16 for 4 bits, float32 otherwise) and `b{b}.expected`, what
# `mx.dequantize` gives back in float32.
# Re-run (needs mlx and mlx-lm, which scripts/make-venv installs; never a dependency of the Swift build):
#   .venv/bin/python scripts/make_mlx_model_fixtures.py
# Read by Tests/FormatsTests/MLXModelTests.swift.

import json
import os
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_map
from mlx_lm.convert import mixed_quant_predicate_builder
from mlx_lm.utils import _get_classes, load_model, quantize_model, save_config, save_model
from safetensors.numpy import save_file

mx.set_default_device(mx.cpu)

SEED = 2718
B, T, V = 2, 6, 61
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "Tests" / "FormatsTests" / "Fixtures" / "mlx-model"

LLAMA = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
         "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "vocab_size": V,
         "max_position_embeddings": 64, "rope_theta": 10000.0, "tie_word_embeddings": True,
         "architectures": ["LlamaForCausalLM"]}
GPT2 = {"model_type": "gpt2", "n_embd": 64, "n_head": 4, "n_layer": 2, "n_positions": 32, "n_ctx": 32,
        "layer_norm_epsilon": 1e-5, "vocab_size": V, "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"]}


def random_model(config, rng, dtype):
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    params = tree_map(lambda p: mx.array(rng.normal(0, 0.3, p.shape).astype(np.float32)).astype(dtype),
                      model.parameters())
    model.update(params)
    mx.eval(model.parameters())
    return model


def expected(folder, rng):
    model, _ = load_model(folder)
    floats = {k: v.astype(mx.float32) for k, v in tree_flatten(model.parameters())
              if mx.issubdtype(v.dtype, mx.floating)}
    model.load_weights(list(floats.items()), strict=False)
    model.eval()
    ids = rng.integers(0, V, size=(B, T)).astype(np.int64)
    out = model(mx.array(ids))
    mx.eval(out)
    save_file({"input_ids": ids, "logits": np.array(out, dtype=np.float32)}, str(folder / "expected.safetensors"))


def make(name, config, rng, dtype, quantize=None):
    folder = OUT / name
    shutil.rmtree(folder, ignore_errors=True)
    model = random_model(config, rng, dtype)
    config = dict(config)
    if quantize is not None:
        group_size, bits, predicate = quantize
        model, config = quantize_model(model, config, group_size, bits,
                                       quant_predicate=predicate(model, group_size) if predicate else None)
    save_model(folder, model)
    save_config(config, config_path=folder / "config.json")
    expected(folder, rng)
    with open(folder / "config.json") as f:
        q = json.load(f).get("quantization")
    print(f"{name}: {len(tree_flatten(model.parameters()))} tensors, quantization {q}")


def mixed(model, group_size):
    recipe = mixed_quant_predicate_builder("mixed_3_6", model, group_size)

    def predicate(path, module):
        return False if path == "model.layers.1.self_attn.o_proj" else recipe(path, module)
    return predicate


def dequantize_table(rng):
    out = {}
    for bits in (1, 2, 3, 4, 5, 6, 8):
        w = mx.array(rng.standard_normal((3, 128)).astype(np.float32))
        if bits == 4:
            w = w.astype(mx.bfloat16)
        q, s, b = mx.quantize(w, group_size=32, bits=bits)
        # In float32, as we decode (bf16 scales and biases widen exactly; mlx would round a bf16 result).
        d = mx.dequantize(q, s.astype(mx.float32), b.astype(mx.float32), group_size=32, bits=bits)
        out.update({f"b{bits}.weight": q, f"b{bits}.scales": s, f"b{bits}.biases": b, f"b{bits}.expected": d})
    mx.save_safetensors(str(OUT / "dequantize.safetensors"), out)


def main() -> None:
    mx.random.seed(SEED)
    rng = np.random.default_rng(SEED)
    os.makedirs(OUT, exist_ok=True)
    make("llama-q4", LLAMA, rng, mx.bfloat16, (32, 4, None))
    make("llama-mixed", dict(LLAMA, tie_word_embeddings=False), rng, mx.float32, (None, None, mixed))
    make("gpt2-q8", GPT2, rng, mx.float32, (64, 8, None))
    make("gpt2-f16", GPT2, rng, mx.float16)
    dequantize_table(rng)


if __name__ == "__main__":
    main()
