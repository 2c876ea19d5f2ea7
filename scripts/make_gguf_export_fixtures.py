#!/usr/bin/env python3
# make_gguf_export_fixtures.py: writes Tests/FormatsTests/Fixtures/gguf-export/, what llama.cpp's own
# converters make of a tiny LLaMA model and a LoRA adapter of it. GGUFExportTests writes the same files
# with SwiftPEFT (`saveGGUFModel`, `exportGGUFLoRA`) and compares them tensor by tensor, byte by byte.
#
#   model/         a Hugging Face folder: LlamaForCausalLM (2 layers, hidden 64, 4 heads, 2 KV heads,
#                  FFN 80, untied head) with random weights, and the GPT-2-style byte-level BPE tokenizer
#                  of Tests/FormatsTests/Fixtures/hf/gpt2 (512 tokens) with a ChatML template
#   lora/          a PEFT LoRA folder (r 4, alpha 8, every linear layer and lm_head, random A and B)
#   model-f32.gguf, model-f16.gguf, model-q8_0.gguf
#                  `convert_hf_to_gguf.py --outtype …` of model/ (FFN 80 is not a multiple of Q8_0's
#                  block of 32, so ffn_down falls back to F16 there, as the converter does)
#   lora-f32.gguf  `convert_lora_to_gguf.py --outtype f32 --base model/` of lora/
#
# The converters are llama.cpp's, from the llama-cpp-python 0.3.36 source package on PyPI (downloaded
# once into data/cache/chat-templates, shared with check_chat_templates.py), run with this venv's torch,
# transformers and peft. llama.cpp names a byte-level pre-tokenizer by hashing known models' tokens; this
# tiny tokenizer is none of them, so the converter is told it is "gpt-2" (its regex is GPT-2's).
#
#     scripts/make-venv && .venv/bin/python scripts/make_gguf_export_fixtures.py
#
# The build and the tests never need Python; only re-recording does.

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(ROOT, "Tests", "FormatsTests", "Fixtures", "gguf-export")
CACHE = os.path.join(ROOT, "data", "cache", "chat-templates")
PACKAGE, VERSION = "llama-cpp-python", "0.3.36"
CHATML = ("{% for message in messages %}{{ '<|endoftext|>' + message['role'] + '\n' + message['content'] + '<|pad|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|endoftext|>assistant\n' }}{% endif %}")


def llama_cpp_source(tmp):
    """llama.cpp's converters and gguf-py, extracted from the cached (or downloaded) source package."""
    name = f"{PACKAGE.replace('-', '_')}-{VERSION}.tar.gz"
    path = os.path.join(CACHE, name)
    if not os.path.exists(path):
        os.makedirs(CACHE, exist_ok=True)
        index = urllib.request.Request(f"https://pypi.org/simple/{PACKAGE}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        sdist = next(f for f in json.load(urllib.request.urlopen(index, timeout=60))["files"] if f["filename"] == name)
        print(f"downloading {sdist['url']} ({sdist['size'] / 1e6:.1f} MB)", flush=True)
        data = urllib.request.urlopen(sdist["url"], timeout=600).read()
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path)
    keep = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/")
    with tarfile.open(path) as tar:
        members = [m for m in tar.getmembers()
                   if m.isfile() and m.name.split("/vendor/llama.cpp/", 1)[-1].startswith(keep) and "/vendor/llama.cpp/" in m.name]
        tar.extractall(tmp, members=members, filter="data")
    return os.path.join(tmp, f"{PACKAGE.replace('-', '_')}-{VERSION}", "vendor", "llama.cpp")


def convert(llama, script, args):
    """Runs one of llama.cpp's converters with the tiny tokenizer's pre-tokenizer named (see above)."""
    code = (
        "import runpy, sys\n"
        f"sys.path[:0] = [{llama!r}, {os.path.join(llama, 'gguf-py')!r}]\n"
        "import conversion.base as base\n"
        "base.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'gpt-2'\n"
        "import conversion.llama as llama\n"
        "llama.LlamaModel.set_vocab = base.TextModel._set_vocab_gpt2\n"  # a tokenizer.json, no SentencePiece model
        f"sys.argv = [{script!r}] + {args!r}\n"
        f"runpy.run_path({os.path.join(llama, script)!r}, run_name='__main__')\n")
    subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL)


def main():
    torch.manual_seed(0)
    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    model_dir, lora_dir = os.path.join(OUT, "model"), os.path.join(OUT, "lora")
    os.makedirs(model_dir)
    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
                         tie_word_embeddings=False, bos_token_id=256, eos_token_id=256, pad_token_id=257)
    model = LlamaForCausalLM(config).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    model.save_pretrained(model_dir, safe_serialization=True)
    for f in ("generation_config.json",):
        if os.path.exists(os.path.join(model_dir, f)):
            os.remove(os.path.join(model_dir, f))
    shutil.copy(os.path.join(ROOT, "Tests", "FormatsTests", "Fixtures", "hf", "gpt2", "tokenizer.json"), model_dir)
    with open(os.path.join(model_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|pad|>",
                   "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHATML}, f, indent=2, sort_keys=True)

    lora_config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"])
    peft_model = get_peft_model(model, lora_config)
    peft_model.save_pretrained(lora_dir)
    with open(os.path.join(lora_dir, "adapter_config.json")) as f:
        adapter_config = json.load(f)
    adapter_config["base_model_name_or_path"] = None  # the converter is given --base
    with open(os.path.join(lora_dir, "adapter_config.json"), "w") as f:
        json.dump(adapter_config, f, indent=2, sort_keys=True)
    for f in os.listdir(lora_dir):
        if f not in ("adapter_config.json", "adapter_model.safetensors"):
            os.remove(os.path.join(lora_dir, f))

    with tempfile.TemporaryDirectory() as tmp:
        llama = llama_cpp_source(tmp)
        for outtype in ("f32", "f16", "q8_0"):
            convert(llama, "convert_hf_to_gguf.py", ["--outtype", outtype, "--outfile", os.path.join(OUT, f"model-{outtype}.gguf"), model_dir])
        convert(llama, "convert_lora_to_gguf.py", ["--outtype", "f32", "--base", model_dir,
                                                   "--outfile", os.path.join(OUT, "lora-f32.gguf"), lora_dir])
    for f in sorted(os.listdir(OUT)):
        p = os.path.join(OUT, f)
        print(f, os.path.getsize(p) if os.path.isfile(p) else sorted(os.listdir(p)))


if __name__ == "__main__":
    main()
