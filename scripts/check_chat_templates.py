#!/usr/bin/env python3
# check_chat_templates.py: renders real models' chat templates here (template-check, the library's
# Jinja interpreter) and with transformers' own jinja2 environment, on the same conversations, and
# counts where they differ. The templates come from two source packages on PyPI, downloaded once
# into data/cache/chat-templates: llama-cpp-python 0.3.36 (llama.cpp's models/templates, copied from
# models on the Hugging Face hub) and vllm 0.33.0 (its examples and built-in templates).
#
#   .venv/bin/python scripts/check_chat_templates.py [--template-check PATH] [--show N]
#
# Prints one line per template that renders differently or fails on one side only, then the counts.
# Exit status 1 when a rendering differs or only one side fails, beyond the differences listed in
# KNOWN (explained there).
import copy
import io
import json
import os
import subprocess
import sys
import tarfile
import urllib.request
from datetime import datetime

from transformers.utils.chat_template_utils import _compile_jinja_template

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CACHE = os.path.join(ROOT, "data", "cache", "chat-templates")
SOURCES = [  # (package, version, member path prefix, name prefix)
    ("llama-cpp-python", "0.3.36", "/vendor/llama.cpp/models/templates/", "llamacpp-"),
    ("vllm", "0.33.0", "/examples/", "vllm-"),
    ("vllm", "0.33.0", "/vllm/transformers_utils/chat_templates/", "vllm-builtin-"),
]
# Differences explained, not bugs to fix: (template, case) → why.
KNOWN = {
    # "…"|safe + text: jinja2's Markup escapes the text it is added to (quotes become &#34;); this
    # interpreter has no Markup strings.
    ("llamacpp-meetkai-functionary-medium-v3.1", "tools"): "Markup escaping of '|safe' + text",
    ("llamacpp-meetkai-functionary-medium-v3.1", "tools-ids9"): "Markup escaping of '|safe' + text",
    ("llamacpp-meetkai-functionary-medium-v3.1", "args-string"): "Markup escaping of '|safe' + text",
    # The template calls tojson on a generator (a map object): jinja2 refuses, this interpreter's map gives a list.
    ("llamacpp-llama-cpp-deepseek-r1", "tools"): "tojson of a generator",
    ("llamacpp-llama-cpp-deepseek-r1", "tools-ids9"): "tojson of a generator",
    ("llamacpp-llama-cpp-deepseek-r1", "args-string"): "tojson of a generator",
}

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "description": "The city"}}, "required": ["city"]}}}


def call(call_id, arguments):
    return {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}


CASES = {
    "basic": {"messages": [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "What is 2+2?"}],
              "add_generation_prompt": True},
    "no-system": {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
                  "add_generation_prompt": False},
    "tools": {"tools": [WEATHER], "add_generation_prompt": False, "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [call("call_1", {"city": "Paris"})]},
        {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "{\"celsius\": 19}"},
        {"role": "assistant", "content": "It is 19 °C."}]},
    "tools-ids9": {"tools": [WEATHER], "add_generation_prompt": False, "messages": [  # Mistral's nine-character ids
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [call("abcDEF123", {"city": "Paris"})]},
        {"role": "tool", "tool_call_id": "abcDEF123", "name": "get_weather", "content": "{\"celsius\": 19}"},
        {"role": "assistant", "content": "It is 19 °C."}]},
    "args-string": {"tools": [WEATHER], "add_generation_prompt": False, "messages": [  # OpenAI's arguments string, null content
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call("abcDEF123", "{\"city\": \"Paris\"}")]}]},
    "thinking": {"add_generation_prompt": True, "kwargs": {"enable_thinking": False}, "messages": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>Add them.</think>4", "reasoning_content": "Add them."},
        {"role": "user", "content": "3+3?"}]},
    "multi-turn": {"add_generation_prompt": False, "kwargs": {"enable_thinking": True}, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}]},
}
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
NOW = datetime(2026, 7, 26, 12, 0)  # a Sunday; template-check's strftime_now gives the same


def fetch_templates():
    out = os.path.join(CACHE, "templates")
    done = os.path.join(out, ".complete")  # written last: a download or extraction cut short is redone
    if os.path.exists(done):
        return out
    os.makedirs(out, exist_ok=True)
    for package, version, prefix, name_prefix in SOURCES:
        # PyPI's simple index as JSON (PEP 691): the source package of this version.
        index = urllib.request.Request(f"https://pypi.org/simple/{package}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        files = json.load(urllib.request.urlopen(index, timeout=60))["files"]
        sdist = next(f for f in files if f["filename"] == f"{package.replace('-', '_')}-{version}.tar.gz")
        path = os.path.join(CACHE, sdist["filename"])
        if not os.path.exists(path):
            print(f"downloading {sdist['url']} ({sdist['size'] / 1e6:.1f} MB)", flush=True)
            data = urllib.request.urlopen(sdist["url"], timeout=600).read()
            with open(path + ".tmp", "wb") as f:
                f.write(data)
            os.replace(path + ".tmp", path)
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                rest = m.name.split("/", 1)[-1]
                if not ("/" + rest).startswith(prefix) or not m.name.endswith(".jinja") or not m.isfile():
                    continue
                name = os.path.basename(m.name)
                if prefix == "/examples/" and not (name.startswith("template_") or name.startswith("tool_chat_template_")):
                    continue
                with open(os.path.join(out, name_prefix + name), "wb") as f:
                    f.write(tar.extractfile(m).read())
    open(done, "w").close()
    return out


def reference(templates):
    results = {}
    for file in sorted(os.listdir(templates)):
        if not file.endswith(".jinja"):
            continue
        with open(os.path.join(templates, file), encoding="utf-8", newline="") as f:
            source = f.read()
        r = {}
        for name, c in CASES.items():
            c = copy.deepcopy(c)
            context = dict(messages=c["messages"], tools=c.get("tools"), documents=None,
                           add_generation_prompt=c["add_generation_prompt"], strftime_now=lambda fmt: NOW.strftime(fmt), **SPECIAL)
            context.update(c.get("kwargs", {}))
            try:
                r[name] = {"ok": True, "text": _compile_jinja_template(source).render(**context)}
            except Exception as e:  # a template's own raise_exception, or what jinja2 refuses
                r[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        results[file[: -len(".jinja")]] = r
    return results


def main():
    args = sys.argv[1:]
    binary = args[args.index("--template-check") + 1] if "--template-check" in args else os.path.join(ROOT, ".build", "release", "template-check")
    if not os.path.exists(binary):
        subprocess.run(["swift", "build", "-c", "release", "--product", "template-check"], cwd=ROOT, check=True)
    templates = fetch_templates()
    cases_path, ours_path = os.path.join(CACHE, "cases.json"), os.path.join(CACHE, "ours.json")
    with open(cases_path, "w", encoding="utf-8") as f:
        json.dump(CASES, f, ensure_ascii=False)
    subprocess.run([binary, "--templates", templates, "--cases", cases_path, "--out", ours_path], check=True)
    with open(ours_path, encoding="utf-8") as f:
        ours = json.load(f)
    theirs = reference(templates)
    counts = {"same text": 0, "same failure": 0, "different text": 0, "different failure": 0, "fails here only": 0, "fails in jinja2 only": 0}
    unexplained = 0
    for t in sorted(theirs):
        for name in CASES:
            a, b = theirs[t][name], ours[t][name]
            if a["ok"] and b["ok"]:
                kind = "same text" if a["text"] == b["text"] else "different text"
            elif not a["ok"] and not b["ok"]:
                # A template's own raise_exception must come through with its message.
                own = a["error"].startswith("TemplateError: ") and a["error"][len("TemplateError: "):] not in b["error"]
                kind = "different failure" if own else "same failure"
            else:
                kind = "fails here only" if a["ok"] else "fails in jinja2 only"
            counts[kind] += 1
            if kind in ("same text", "same failure"):
                continue
            why = KNOWN.get((t, name))
            unexplained += why is None
            detail = why or (b.get("error") or a.get("error") or "")[:160]
            if kind == "different text" and why is None:
                x, y = a["text"], b["text"]
                i = next((k for k in range(min(len(x), len(y))) if x[k] != y[k]), min(len(x), len(y)))
                detail = f"at {i}: jinja2 {x[max(0, i - 20):i + 40]!r}, here {y[max(0, i - 20):i + 40]!r}"
            print(f"{kind}: {t} / {name}: {detail}" + ("" if why is None else " (known)"))
    total = sum(counts.values())
    print(f"{len(theirs)} templates × {len(CASES)} conversations = {total}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    print(f"unexplained: {unexplained}")
    sys.exit(1 if unexplained else 0)


if __name__ == "__main__":
    main()
