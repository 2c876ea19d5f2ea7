#!/usr/bin/env python3
# llamacpp_nll.py: the mean next-token loss llama.cpp (through llama-cpp-python) gives a model, with or
# without a LoRA adapter file, on the "text" lines of a JSONL file; scripts/check-llamacpp compares it with
# `swiftpeft eval` on the same lines. Each line is scored alone as `swiftpeft eval` scores a text: its
# tokens (no BOS) then the end-of-text token, every position after the first predicted.
#
#   .venv-llamacpp/bin/python scripts/llamacpp_nll.py MODEL.gguf DATA.jsonl [--lora ADAPTER.gguf]
#
# Prints one JSON object: {"loss", "tokens"}.
import argparse
import json
import sys

import numpy as np
from llama_cpp import Llama


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--lora")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    kw = dict(model_path=args.model, logits_all=True, n_ctx=1024, n_threads=args.threads, verbose=False)
    if args.lora:
        kw["lora_path"] = args.lora
    llm = Llama(**kw)
    total, count = 0.0, 0
    with open(args.data) as f:
        for line in f:
            if not line.strip():
                continue
            text = json.loads(line)["text"]
            ids = llm.tokenize(text.encode(), add_bos=False, special=False) + [llm.token_eos()]
            llm.reset()
            llm.eval(ids)
            logits = np.array(llm.scores[:len(ids)], dtype=np.float64)
            logits -= logits.max(axis=1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
            total -= sum(logp[i, ids[i + 1]] for i in range(len(ids) - 1))
            count += len(ids) - 1
    json.dump({"loss": total / count, "tokens": count}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
