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
import os
import sys

from llama_cpp import Llama

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from text_nll import report  # noqa: E402


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

    def logits(ids):
        llm.reset()
        llm.eval(ids)
        return llm.scores[:len(ids)]

    report(args.data, lambda text: llm.tokenize(text.encode(), add_bos=False, special=False) + [llm.token_eos()], logits)


if __name__ == "__main__":
    main()
