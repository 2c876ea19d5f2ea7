#!/usr/bin/env python3
# Makes the mlx-lm adapter fixtures Tests/FormatsTests/Fixtures/mlx/: adapters on the tiny PEFT fixture
# bases (Tests/FormatsTests/Fixtures/peft/{llama,gpt2}) made as `mlx_lm.lora` makes them (the base frozen,
# `linear_to_lora_layers`, the trainable parameters saved with `mx.save_safetensors`, the run's arguments
# saved by mlx-lm's `save_config`), their weights random instead of trained (B ≠ 0, DoRA magnitudes
# perturbed):
#   llama-lora  LoRA r 4, scale 2.5 on q_proj, v_proj and down_proj of the last block only (num_layers 1)
#   llama-dora  DoRA r 2, scale 3 on every linear layer of both blocks (no keys: mlx-lm's default)
#   gpt2-lora   LoRA r 4, scale 20 (mlx-lm's default) on every linear layer (num_layers -1: all blocks)
# Each folder also holds expected.safetensors: `input_ids` (B, T) and the float32 `logits` (B, T, V)
# that mlx-lm gives after loading the folder with its own `load_adapters`.
# Re-run (needs mlx and mlx-lm, which scripts/make-venv installs; never a dependency of the Swift build):
#   .venv/bin/python scripts/make_mlx_fixtures.py
# Read by Tests/FormatsTests/MLXAdapterTests.swift.

import os
import shutil
import sys

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.tuner.utils import linear_to_lora_layers
from mlx_lm.utils import save_config
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mlx_adapter_logits import load_adapters, load_base, logits  # noqa: E402

SEED = 1618
B, T, V = 2, 5, 61
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
BASES = os.path.join(ROOT, "Tests", "FormatsTests", "Fixtures", "peft")
OUT = os.path.join(ROOT, "Tests", "FormatsTests", "Fixtures", "mlx")

ADAPTERS = [
    ("llama-lora", "llama", "lora", 1, {"rank": 4, "scale": 2.5, "dropout": 0.0,
                                        "keys": ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"]}),
    ("llama-dora", "llama", "dora", 2, {"rank": 2, "scale": 3.0, "dropout": 0.0}),
    ("gpt2-lora", "gpt2", "lora", -1, {"rank": 4, "scale": 20.0, "dropout": 0.1}),
]


def make(name, family, fine_tune_type, num_layers, lora_parameters, rng):
    base = os.path.join(BASES, family)
    model = load_base(base)
    model.freeze()
    linear_to_lora_layers(model, num_layers, lora_parameters, use_dora=fine_tune_type == "dora")
    # Trained weights stand-in: B random, and DoRA's magnitudes moved off the base's norms.
    updates = []
    for key, value in tree_flatten(model.trainable_parameters()):
        shape = value.shape
        if key.endswith(".lora_b"):
            updates.append((key, mx.array(rng.normal(0, 0.2, shape).astype(np.float32))))
        elif key.endswith(".m"):
            updates.append((key, value * mx.array(1 + 0.2 * rng.standard_normal(shape).astype(np.float32))))
        else:
            updates.append((key, mx.array(rng.uniform(-0.3, 0.3, shape).astype(np.float32))))
    model.load_weights(updates, strict=False)
    folder = os.path.join(OUT, name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    mx.save_safetensors(os.path.join(folder, "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
    save_config({"model": "tiny-" + family, "fine_tune_type": fine_tune_type, "num_layers": num_layers,
                 "lora_parameters": lora_parameters, "adapter_path": "adapters", "iters": 0, "batch_size": 4,
                 "learning_rate": 1e-5, "seed": SEED, "data": "data", "train": True},
                os.path.join(folder, "adapter_config.json"))
    # What mlx-lm itself gives for the saved folder, on a freshly loaded base.
    ids = rng.integers(0, V, size=(B, T)).astype(np.int64)
    loaded = load_adapters(load_base(base), folder)
    loaded.eval()
    out = np.array(logits(loaded, ids.tolist()), dtype=np.float32)
    before = np.array(logits(load_base(base), ids.tolist()), dtype=np.float32)
    assert np.abs(out - before).max() > 1e-3, name + ": the adapter changes nothing"
    save_file({"input_ids": ids, "logits": out}, os.path.join(folder, "expected.safetensors"))
    n = len(tree_flatten(model.trainable_parameters()))
    print(f"{name}: {n} tensors, logits {out.shape}, max change {np.abs(out - before).max():.4f}")


def main() -> None:
    mx.random.seed(SEED)
    rng = np.random.default_rng(SEED)
    for spec in ADAPTERS:
        make(*spec, rng)


if __name__ == "__main__":
    main()
