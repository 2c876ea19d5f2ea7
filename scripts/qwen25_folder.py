#!/usr/bin/env python3
# qwen25_folder.py: writes a Hugging Face folder shaped like Qwen2.5's (the real Qwen2 vocabulary of
# 151,936 ids from llama.cpp's ggml-vocab-qwen2.gguf, a tokenizer.json as transformers' Qwen2Tokenizer
# saves it: NFC normalizer, Split regex then ByteLevel, ChatML added tokens; a config.json with Qwen2.5's
# fields, sliding_window set but unused, tied embeddings; bf16 safetensors) around a tiny random model,
# then prints what transformers makes of it: each text's ids and the float32 logits of the last one.
# GGUFTests.testAQwen25ShapedFolderGivesTransformersIDsAndLogits compares SwiftPEFT with it.
#
#   .venv/bin/python scripts/qwen25_folder.py VOCAB.gguf OUT_FOLDER '["text", ...]'
import json
import os
import sys

import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

CHATML = ("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{'<|im_start|>assistant\\n'}}{% endif %}")


def main():
    vocab_file, out, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    g = AutoTokenizer.from_pretrained(os.path.dirname(vocab_file), gguf_file=os.path.basename(vocab_file))
    state = json.loads(g.backend_tokenizer.to_str())
    added = {a["content"]: a["id"] for a in state["added_tokens"] if not a["content"].startswith("[PAD")}
    vocab = {k: v for k, v in state["model"]["vocab"].items() if k not in added}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["model"]["merges"]]
    t = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    t.add_special_tokens({"additional_special_tokens": [a for a in sorted(added, key=added.get) if a not in ("<|im_end|>", "<|endoftext|>")]})
    t.chat_template = CHATML
    t.save_pretrained(out)
    config = Qwen2Config(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                         tie_word_embeddings=True, use_sliding_window=False, sliding_window=32768, max_window_layers=21,
                         bos_token_id=151643, eos_token_id=151645)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    model = Qwen2ForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    ids = [t(x, add_special_tokens=False)["input_ids"] for x in texts]
    with torch.no_grad():
        logits = model(torch.tensor([ids[-1]])).logits[0].flatten().tolist()
    print(json.dumps({"ids": ids, "logits": logits}))


if __name__ == "__main__":
    main()
