#!/usr/bin/env python3
"""Writes Tests/TrainingTests/Fixtures/tables/: the same examples as JSON Lines (the reference), as a
JSON array (json.dump, indented), as JSON Lines in a .json file (as Hugging Face's Dataset.to_json
writes them), as CSV and TSV (Python's csv module: RFC 4180 quoting, "\r\n" row ends), and as CSV
with a byte order mark and an unnamed index column (as Excel's "CSV UTF-8" and pandas' to_csv write
them), the CSV again gzip-compressed in two members (examples.csv.gz); and lines.json: for each file, the line each record starts on, found here with Python's own
readers (csv.reader's line_num, json.JSONDecoder.raw_decode), for SwiftPEFT's readers to match.

Only the standard library. Run: python3 scripts/make_table_fixtures.py
"""
import csv
import gzip
import io
import json
import os

OUT = os.path.join(os.path.dirname(__file__), "..", "Tests", "TrainingTests", "Fixtures", "tables")

# Cells that quoting must carry: commas, quotes, line breaks (both kinds), tabs, leading and trailing
# spaces, non-ASCII text, an empty input, a cell that is only a quote.
EXAMPLES = [
    {"instruction": "Say hello, politely.", "input": "", "output": "Hello, \"friend\"."},
    {"instruction": "Translate to French", "input": "The cat\nsat on the mat.", "output": "Le chat s'est assis sur le tapis."},
    {"instruction": "Split on tabs", "input": "a\tb\tc", "output": "[\"a\", \"b\", \"c\"]"},
    {"instruction": "  Keep the spaces  ", "input": "\"", "output": "A lone quote: \""},
    {"instruction": "Windows line ends", "input": "one\r\ntwo", "output": "Zwei Zeilen: ü, é, 字, 🙂"},
    {"instruction": "Add", "input": "2+2", "output": "4"},
]
FIELDS = ["instruction", "input", "output"]


def csv_text(delimiter, index=False):
    buf = io.StringIO(newline="")
    w = csv.writer(buf, delimiter=delimiter)
    w.writerow(([""] if index else []) + FIELDS)
    for k, e in enumerate(EXAMPLES):
        w.writerow(([str(k)] if index else []) + [e[f] for f in FIELDS])
    return buf.getvalue()


def csv_start_lines(text, delimiter):
    """The line each data row starts on, as csv.reader counts lines (header skipped)."""
    r = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    starts, previous_end = [], 0
    for row in r:
        starts.append(previous_end + 1)
        previous_end = r.line_num
    return starts[1:]


def json_array_start_lines(text):
    """The line each item of the top-level array starts on."""
    dec, i, starts = json.JSONDecoder(), text.index("[") + 1, []
    while True:
        while text[i] in " \t\r\n,":
            i += 1
        if text[i] == "]":
            return starts
        starts.append(text.count("\n", 0, i) + 1)
        _, i = dec.raw_decode(text, i)


def write_lines(lines):
    with open(os.path.join(OUT, "lines.json"), "w") as f:
        json.dump(lines, f, indent=1, sort_keys=True)
        f.write("\n")


def update_lines(change):
    """Lets `change` add the files another fixture script writes to lines.json (which main() writes first)."""
    with open(os.path.join(OUT, "lines.json")) as f:
        lines = json.load(f)
    change(lines)
    write_lines(lines)


def main():
    os.makedirs(OUT, exist_ok=True)
    files = {
        "examples.jsonl": "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in EXAMPLES),
        "examples.json": json.dumps(EXAMPLES, indent=2, ensure_ascii=False) + "\n",
        "examples-lines.json": "".join(json.dumps(e) + "\n" for e in EXAMPLES),
        "examples.csv": csv_text(","),
        "examples.tsv": csv_text("\t"),
        "examples-excel.csv": "\ufeff" + csv_text(",", index=True),
    }
    lines = {}
    for name, text in files.items():
        with open(os.path.join(OUT, name), "w", encoding="utf-8", newline="") as f:
            f.write(text)
        plain = text.lstrip("\ufeff")
        if name.endswith(".csv"):
            lines[name] = csv_start_lines(plain, ",")
        elif name.endswith(".tsv"):
            lines[name] = csv_start_lines(plain, "\t")
        elif name == "examples.json":
            lines[name] = json_array_start_lines(plain)
        else:
            lines[name] = list(range(1, len(EXAMPLES) + 1))
    # The readers above agree with the examples: each file reads back to EXAMPLES.
    for name, text in files.items():
        plain = text.lstrip("\ufeff")
        if name.endswith(".jsonl") or name == "examples-lines.json":
            back = [json.loads(l) for l in plain.splitlines() if l.strip()]
        elif name == "examples.json":
            back = json.loads(plain)
        else:
            rows = list(csv.DictReader(io.StringIO(plain, newline=""), delimiter="\t" if name.endswith(".tsv") else ","))
            back = [{f: r[f] for f in FIELDS} for r in rows]
        assert back == EXAMPLES, name
    # The CSV gzip-compressed as two members (as `cat a.gz b.gz` joins them), cut mid-row: read as one file.
    raw = files["examples.csv"].encode("utf-8")
    with open(os.path.join(OUT, "examples.csv.gz"), "wb") as f:
        f.write(gzip.compress(raw[:len(raw) // 2], mtime=0) + gzip.compress(raw[len(raw) // 2:], mtime=0))
    with gzip.open(os.path.join(OUT, "examples.csv.gz"), "rb") as f:
        assert f.read() == raw
    lines["examples.csv.gz"] = lines["examples.csv"]
    write_lines(lines)
    print(f"wrote {len(files) + 2} files to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
