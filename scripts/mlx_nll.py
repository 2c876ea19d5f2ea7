#!/usr/bin/env python3
# mlx_nll.py: the mean next-token loss mlx-lm gives a Hugging Face model folder, with or without an mlx-lm
# adapter folder (loaded by mlx-lm's own `load`), on the "text" lines of a JSONL file; scripts/check-mlx
# compares it with `swiftpeft eval` on the same lines. Each line is scored alone as `swiftpeft eval`
# scores a text: its tokens (no BOS) then the end-of-text token, every position after the first predicted.
#
#   .venv/bin/python scripts/mlx_nll.py MODEL_FOLDER DATA.jsonl [--adapter ADAPTER_FOLDER]
#
# Prints one JSON object: {"loss", "tokens"}.
import argparse
import json
import sys

import mlx.core as mx
import numpy as np
from mlx_lm import load


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--adapter")
    args = ap.parse_args()
    mx.set_default_device(mx.cpu)
    model, tokenizer = load(args.model, adapter_path=args.adapter)
    total, count = 0.0, 0
    with open(args.data) as f:
        for line in f:
            if not line.strip():
                continue
            ids = tokenizer.encode(json.loads(line)["text"], add_special_tokens=False) + [tokenizer.eos_token_id]
            logits = model(mx.array([ids]))[0].astype(mx.float32)
            logits = np.array(logits, dtype=np.float64)
            logits -= logits.max(axis=1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
            total -= sum(logp[i, ids[i + 1]] for i in range(len(ids) - 1))
            count += len(ids) - 1
    json.dump({"loss": total / count, "tokens": count}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
