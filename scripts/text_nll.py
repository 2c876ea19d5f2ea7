#!/usr/bin/env python3
# text_nll.py: the mean next-token loss of a model on the "text" lines of a JSONL file, each line scored
# alone as `swiftpeft eval` scores a text: its tokens (no BOS) then the end-of-text token, every position
# after the first predicted. Shared by scripts/llamacpp_nll.py and scripts/mlx_nll.py, which give it their
# model's tokenizer and logits.
import json
import sys

import numpy as np


def report(data, tokenize, logits):
    """Prints {"loss", "tokens"} for the lines of `data`: `tokenize(text)` gives a line's ids (the
    end-of-text token last), `logits(ids)` the (len(ids), V) logits."""
    total, count = 0.0, 0
    with open(data) as f:
        for line in f:
            if not line.strip():
                continue
            ids = tokenize(json.loads(line)["text"])
            z = np.array(logits(ids), dtype=np.float64)
            z -= z.max(axis=1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
            total -= sum(logp[i, ids[i + 1]] for i in range(len(ids) - 1))
            count += len(ids) - 1
    json.dump({"loss": total / count, "tokens": count}, sys.stdout)
    print()
