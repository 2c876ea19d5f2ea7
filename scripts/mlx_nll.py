#!/usr/bin/env python3
# mlx_nll.py: the mean next-token loss mlx-lm gives a Hugging Face model folder, with or without an mlx-lm
# adapter folder (loaded by mlx-lm's own `load`), on the "text" lines of a JSONL file; scripts/check-mlx
# compares it with `swiftpeft eval` on the same lines. Each line is scored alone as `swiftpeft eval`
# scores a text: its tokens (no BOS) then the end-of-text token, every position after the first predicted.
#
#   .venv/bin/python scripts/mlx_nll.py MODEL_FOLDER DATA.jsonl [--adapter ADAPTER_FOLDER]
#
# The model runs in float32 (a bf16 folder's weights widened), as swiftpeft runs it; a quantized folder
# (`mlx_lm.convert -q`) keeps its packed weights.
# Prints one JSON object: {"loss", "tokens"}.
import argparse
import os
import sys

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm import load

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from text_nll import report  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--adapter")
    args = ap.parse_args()
    mx.set_default_device(mx.cpu)
    model, tokenizer = load(args.model, adapter_path=args.adapter)
    # In float32, as swiftpeft computes: a bf16 or fp16 folder's weights (a quantized one's scales and
    # biases too) widen exactly; the packed words stay as they are.
    model.load_weights([(k, v.astype(mx.float32)) for k, v in tree_flatten(model.parameters())
                        if mx.issubdtype(v.dtype, mx.floating)], strict=False)
    report(args.data,
           lambda text: tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id],
           lambda ids: model(mx.array([ids]))[0].astype(mx.float32))

if __name__ == "__main__":
    main()
