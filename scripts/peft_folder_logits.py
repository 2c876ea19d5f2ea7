#!/usr/bin/env python3
# Loads a Hugging Face base model folder with transformers (float32, eager attention), applies a PEFT
# adapter folder with `PeftModel.from_pretrained`, and prints the logits of the real tokens (virtual-token
# positions of prompt tuning / P-Tuning dropped) for the given ids, for each adapter folder in turn (on a
# freshly loaded base), as JSON [{"adapter": ..., "shape": [...], "logits": [...]}, ...] on stdout.
# Usage: python scripts/peft_folder_logits.py BASE_FOLDER '[[1,2,3],[4,5,6]]' ADAPTER_FOLDER [ADAPTER_FOLDER ...]
# Used by Tests/FormatsTests/PEFTFolderTests.swift to check that PEFT reads the folders we export.

import json
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def main() -> None:
    base, ids, results = sys.argv[1], torch.tensor(json.loads(sys.argv[2])), []
    for adapter in sys.argv[3:]:
        model = AutoModelForCausalLM.from_pretrained(base, attn_implementation="eager").float().eval()
        model = PeftModel.from_pretrained(model, adapter).eval()
        with torch.no_grad():
            logits = model(input_ids=ids).logits[:, -ids.shape[1]:, :]
        results.append({"adapter": adapter, "shape": list(logits.shape), "logits": [float(x) for x in logits.reshape(-1)]})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
