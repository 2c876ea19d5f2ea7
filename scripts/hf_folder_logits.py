#!/usr/bin/env python3
# Loads a Hugging Face model folder with transformers (AutoModelForCausalLM, float32, eager attention)
# and prints its logits for the given ids as JSON {"shape": [...], "logits": [...]} on stdout.
# Usage: python scripts/hf_folder_logits.py FOLDER '[[1,2,3],[4,5,6]]'
# Used by Tests/FormatsTests/SafetensorsTests.swift to check that transformers reads our saved folders.

import json
import sys

import torch
from transformers import AutoModelForCausalLM


def main() -> None:
    folder, ids = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").float().eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    json.dump({"shape": list(logits.shape), "logits": [float(x) for x in logits.reshape(-1)]}, sys.stdout)


if __name__ == "__main__":
    main()
