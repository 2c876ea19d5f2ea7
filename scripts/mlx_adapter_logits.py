#!/usr/bin/env python3
# Loads a tiny Hugging Face base model folder with mlx-lm (float32, on the CPU), applies an mlx-lm adapter
# folder (adapter_config.json + adapters.safetensors) with mlx-lm's own `load_adapters`, and prints the
# logits for the given ids, for each adapter folder in turn (on a freshly loaded base), as JSON
# [{"adapter": ..., "shape": [...], "logits": [...]}, ...] on stdout.
# Usage: python scripts/mlx_adapter_logits.py BASE_FOLDER '[[1,2,3],[4,5,6]]' ADAPTER_FOLDER [ADAPTER_FOLDER ...]
# Used by Tests/FormatsTests/MLXAdapterTests.swift (mlx-lm reads the folders we export) and by
# scripts/make_mlx_fixtures.py.

import json
import sys
from pathlib import Path

import mlx.core as mx
from mlx_lm.tuner.utils import load_adapters
from mlx_lm.utils import _get_classes

mx.set_default_device(mx.cpu)


def load_base(folder):
    """The model in `folder` as mlx-lm builds it. For GPT-2, the keys lose transformers' "transformer."
    prefix first and `n_ctx` is `n_positions`: mlx-lm's GPT-2 reads the original checkpoint's names
    ("h.0.attn.c_attn.weight") and config."""
    config = json.loads((Path(folder) / "config.json").read_text())
    if config["model_type"] == "gpt2":
        config.setdefault("n_ctx", config["n_positions"])  # the original GPT-2 config's name for it
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    weights = mx.load(str(Path(folder) / "model.safetensors"))
    if config["model_type"] == "gpt2":
        weights = {k.removeprefix("transformer."): v for k, v in weights.items() if k != "lm_head.weight"}
    weights = model.sanitize(weights) if hasattr(model, "sanitize") else weights
    model.load_weights(list(weights.items()), strict=True)
    model.eval()
    return model


def logits(model, ids):
    out = model(mx.array(ids))
    mx.eval(out)
    return out


def main() -> None:
    base, ids, results = sys.argv[1], json.loads(sys.argv[2]), []
    for adapter in sys.argv[3:]:
        model = load_adapters(load_base(base), adapter)
        model.eval()
        out = logits(model, ids)
        results.append({"adapter": adapter, "shape": list(out.shape), "logits": [float(x) for x in out.reshape(-1).tolist()]})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
