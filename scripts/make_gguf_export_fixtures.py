#!/usr/bin/env python3
# make_gguf_export_fixtures.py: writes Tests/FormatsTests/Fixtures/gguf-export/, what llama.cpp's own
# converters make of a tiny LLaMA model and a LoRA adapter of it. GGUFExportTests writes the same files
# with SwiftPEFT (`saveGGUFModel`, `exportGGUFLoRA`) and compares them tensor by tensor, byte by byte.
#
#   model/         a Hugging Face folder: LlamaForCausalLM (2 layers, hidden 64, 4 heads, 2 KV heads,
#                  FFN 80, untied head) with random weights, and the GPT-2-style byte-level BPE tokenizer
#                  of Tests/FormatsTests/Fixtures/hf/gpt2 (512 tokens) with a ChatML template
#   lora/          a PEFT LoRA folder (r 4, alpha 8, every linear layer and lm_head, random A and B)
#   model-f32.gguf, model-f16.gguf, model-bf16.gguf, model-q8_0.gguf
#                  `convert_hf_to_gguf.py --outtype …` of model/ (FFN 80 is not a multiple of Q8_0's
#                  block of 32, so ffn_down falls back to F16 there, as the converter does)
#   lora-f32.gguf  `convert_lora_to_gguf.py --outtype f32 --base model/` of lora/
#   qwen2/, qwen2-lora/, qwen2-f32.gguf, qwen2-lora-f32.gguf
#                  the same for a Qwen2ForCausalLM (q, k, v biases; tied embeddings) and a LoRA on its
#                  q, k, v and down projections: llama.cpp's "qwen2" architecture, rows in Hugging Face's order
#   llama3/, llama3-f32.gguf, llama3-expected.safetensors
#                  a LlamaForCausalLM with Llama 3.1's RoPE scaling (rope_type llama3: factor 32, frequency
#                  factors 1 and 4, original context 8192, θ 500000, as Llama 3.2), its conversion (the
#                  scaling as llama.cpp's rope_freqs.weight) and transformers' logits on fixed ids; its
#                  tokenizer.json has Llama 3's post-processor (BOS first), written as add_bos_token true
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
from safetensors.torch import save_file
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

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
        "import conversion.qwen as qwen\n"
        "qwen.Qwen2Model.set_vocab = base.TextModel._set_vocab_gpt2\n"
        f"sys.argv = [{script!r}] + {args!r}\n"
        f"runpy.run_path({os.path.join(llama, script)!r}, run_name='__main__')\n")
    subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL)


# Llama 3's post-processor (a BOS in front of every text), with the tiny tokenizer's <|endoftext|> as the BOS.
BOS_FIRST = {"type": "Sequence", "processors": [
    {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
    {"type": "TemplateProcessing",
     "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
     "pair": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
              {"SpecialToken": {"id": "<|endoftext|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
     "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [256], "tokens": ["<|endoftext|>"]}}}]}


def save_model(model, model_dir, std=0.05, bos_first=False):
    """A Hugging Face folder: random weights, the tiny tokenizer and its ChatML template (with
    bos_first, Llama 3's post-processor, which the converter writes as add_bos_token true)."""
    os.makedirs(model_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    model.save_pretrained(model_dir, safe_serialization=True)
    if os.path.exists(os.path.join(model_dir, "generation_config.json")):
        os.remove(os.path.join(model_dir, "generation_config.json"))
    with open(os.path.join(ROOT, "Tests", "FormatsTests", "Fixtures", "hf", "gpt2", "tokenizer.json")) as f:
        tokenizer = f.read()
    if bos_first:
        tokenizer = tokenizer.replace('"post_processor": null', '"post_processor": ' + json.dumps(BOS_FIRST), 1)
        assert "TemplateProcessing" in tokenizer
    with open(os.path.join(model_dir, "tokenizer.json"), "w") as f:
        f.write(tokenizer)
    with open(os.path.join(model_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|pad|>",
                   "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHATML}, f, indent=2, sort_keys=True)


def save_lora(model, targets, lora_dir):
    """A PEFT LoRA folder (r 4, alpha 8, random A and B) without a base name."""
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=targets))
    peft_model.save_pretrained(lora_dir)
    with open(os.path.join(lora_dir, "adapter_config.json")) as f:
        adapter_config = json.load(f)
    adapter_config["base_model_name_or_path"] = None  # the converter is given --base
    adapter_config["target_modules"] = sorted(adapter_config["target_modules"])  # PEFT writes a set, in any order
    with open(os.path.join(lora_dir, "adapter_config.json"), "w") as f:
        json.dump(adapter_config, f, indent=2, sort_keys=True)
    for f in os.listdir(lora_dir):
        if f not in ("adapter_config.json", "adapter_model.safetensors"):
            os.remove(os.path.join(lora_dir, f))


def main():
    torch.manual_seed(0)
    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    model_dir, lora_dir = os.path.join(OUT, "model"), os.path.join(OUT, "lora")
    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
                         tie_word_embeddings=False, bos_token_id=256, eos_token_id=256, pad_token_id=257)
    model = LlamaForCausalLM(config).float().eval()
    save_model(model, model_dir)
    save_lora(model, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"], lora_dir)

    qwen_dir, qwen_lora_dir = os.path.join(OUT, "qwen2"), os.path.join(OUT, "qwen2-lora")
    qwen_config = Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6, rope_theta=1000000.0,
                              tie_word_embeddings=True, use_sliding_window=False, bos_token_id=256, eos_token_id=256)
    qwen = Qwen2ForCausalLM(qwen_config).float().eval()
    save_model(qwen, qwen_dir)
    save_lora(qwen, ["q_proj", "k_proj", "v_proj", "down_proj"], qwen_lora_dir)

    llama3_dir = os.path.join(OUT, "llama3")
    llama3_config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=500000.0,
                                rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                              "original_max_position_embeddings": 8192},
                                tie_word_embeddings=True, bos_token_id=256, eos_token_id=256)
    llama3 = LlamaForCausalLM(llama3_config).float().eval()
    save_model(llama3, llama3_dir, std=0.3, bos_first=True)  # sharp attention: the logits depend on the rotary frequencies
    ids = torch.tensor([[(i * 37 + 11) % 512 for i in range(200)]])
    with torch.no_grad():
        logits = LlamaForCausalLM.from_pretrained(llama3_dir, torch_dtype=torch.float32).eval()(ids).logits
    save_file({"input_ids": ids.to(torch.float32), "logits": logits[0].contiguous()}, os.path.join(OUT, "llama3-expected.safetensors"))

    with tempfile.TemporaryDirectory() as tmp:
        llama = llama_cpp_source(tmp)
        for outtype in ("f32", "f16", "bf16", "q8_0"):
            convert(llama, "convert_hf_to_gguf.py", ["--outtype", outtype, "--outfile", os.path.join(OUT, f"model-{outtype}.gguf"), model_dir])
        convert(llama, "convert_lora_to_gguf.py", ["--outtype", "f32", "--base", model_dir,
                                                   "--outfile", os.path.join(OUT, "lora-f32.gguf"), lora_dir])
        convert(llama, "convert_hf_to_gguf.py", ["--outtype", "f32", "--outfile", os.path.join(OUT, "qwen2-f32.gguf"), qwen_dir])
        convert(llama, "convert_hf_to_gguf.py", ["--outtype", "f32", "--outfile", os.path.join(OUT, "llama3-f32.gguf"), llama3_dir])
        convert(llama, "convert_lora_to_gguf.py", ["--outtype", "f32", "--base", qwen_dir,
                                                   "--outfile", os.path.join(OUT, "qwen2-lora-f32.gguf"), qwen_lora_dir])
    for f in sorted(os.listdir(OUT)):
        p = os.path.join(OUT, f)
        print(f, os.path.getsize(p) if os.path.isfile(p) else sorted(os.listdir(p)))


if __name__ == "__main__":
    main()
