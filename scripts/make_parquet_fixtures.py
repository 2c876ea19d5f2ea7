#!/usr/bin/env python3
"""Writes the Parquet fixtures, with pyarrow (in the venv scripts/make-venv makes):

- Tests/FormatsTests/Fixtures/parquet/: types.parquet (every column kind SwiftPEFT reads: int32, int64,
  float, double, bool, string, each with nulls; a list of strings with a null list, an empty list and a
  null item; a struct with a null struct; a list of structs) written eight ways (pyarrow's defaults:
  Snappy, dictionary, v1 pages; uncompressed PLAIN v2 pages; two rows per row group; a tiny dictionary
  page limit, so pages fall back from dictionary to PLAIN; ZSTD; GZIP with v2 pages; LZ4_RAW; every other
  encoding pyarrow writes: DELTA_BINARY_PACKED, DELTA_LENGTH_BYTE_ARRAY, DELTA_BYTE_ARRAY, BYTE_STREAM_SPLIT,
  RLE booleans), with types.json, its rows as pyarrow reads them (table.to_pylist(), keys in column
  order); brotli.parquet, whose codec SwiftPEFT must refuse by name; hand-made.parquet
  (one string column, one row, written here byte by byte; pyarrow reads it) and three of its kind whose
  offset and size, page size, or a v2 page's level lengths are near Int64.max (to be refused, not to
  overflow a sum); nested.parquet (lists of lists, structs of lists and structs, maps with string and
  integer keys, tool calls inside messages: every depth and kind of null), logical.parquet (timestamps
  before and after 1970, in ms, us and ns, UTC or not; dates; times; decimals; half floats; UUIDs;
  fixed-size bytes; unsigned integers past the signed range), logical-int96.parquet (its timestamps as
  the legacy INT96) and logical-v2.parquet (decimals as integers, v2 pages, no dictionary,
  BYTE_STREAM_SPLIT on the fixed-size columns), unannotated.parquet (written here byte by byte, as
  protobuf and old writers store repeated fields: groups and repeated fields without a LIST
  annotation, which the spec's backward-compatibility rules read as structs and lists), with
  logical.json: each file's rows as pyarrow reads
  them, in the JSON SwiftPEFT makes of them (maps as objects; dates, times and timestamps as Python's
  isoformat; decimals and half floats as numbers; UUIDs as text; bytes that are UTF-8 as text, others
  as lists of byte values; integers past Int64 as floats).
- Tests/TrainingTests/Fixtures/tables/: examples.parquet and examples-v2.parquet, the examples of
  scripts/make_table_fixtures.py (Alpaca instruction data), and chat.parquet with chat.jsonl, a
  "messages" list of structs as Hugging Face's chat data sets store it, with an int64 "id" column;
  chat-tools.parquet with chat-tools.jsonl, tool-calling chat (messages whose "tool_calls" hold
  structs, a "tools" column of JSON schemas as nested structs) beside a timestamp column; the
  rows each file starts are added to lines.json (rows count from 1); examples.tsv.zst, the TSV of
  scripts/make_table_fixtures.py compressed with Zstandard in two frames (its lines those of the TSV).

Run: .venv/bin/python scripts/make_parquet_fixtures.py (after scripts/make_table_fixtures.py)
"""
import datetime
import decimal
import json
import os
import sys
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(__file__))
from make_table_fixtures import EXAMPLES, FIELDS, OUT as TABLES, update_lines  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..")
PARQUET = os.path.join(ROOT, "Tests", "FormatsTests", "Fixtures", "parquet")

TYPES = pa.schema([
    ("i32", pa.int32()), ("i64", pa.int64()), ("f32", pa.float32()), ("f64", pa.float64()),
    ("flag", pa.bool_()), ("text", pa.string()),
    ("tags", pa.list_(pa.string())),
    ("point", pa.struct([("name", pa.string()), ("x", pa.int64())])),
    ("turns", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
])
TYPE_ROWS = [
    {"i32": 1, "i64": -(2 ** 40), "f32": 0.5, "f64": 3.25, "flag": True, "text": "héllo, \"world\"\n",
     "tags": ["a", "b"], "point": {"name": "p", "x": 7},
     "turns": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
    {"i32": None, "i64": None, "f32": None, "f64": None, "flag": None, "text": None,
     "tags": None, "point": None, "turns": None},
    {"i32": -7, "i64": 2 ** 62, "f32": -1.75, "f64": 1e-300, "flag": False, "text": "",
     "tags": [], "point": {"name": None, "x": None}, "turns": []},
    {"i32": 2 ** 31 - 1, "i64": 0, "f32": 2.0, "f64": -0.0, "flag": True, "text": "字 🙂",
     "tags": ["c", None, "a"], "point": {"name": "q", "x": -1},
     "turns": [None, {"role": "tool", "content": None}]},
    {"i32": 3, "i64": 5, "f32": 8.0, "f64": 13.0, "flag": False, "text": "a",
     "tags": ["a"], "point": {"name": "p", "x": 7}, "turns": [{"role": "user", "content": "hi"}]},
]

CALL = pa.struct([("type", pa.string()), ("function", pa.struct([("name", pa.string()), ("arguments", pa.string())]))])
NESTED = pa.schema([
    ("matrix", pa.list_(pa.list_(pa.int64()))),
    ("person", pa.struct([("name", pa.string()), ("tags", pa.list_(pa.string())),
                          ("address", pa.struct([("city", pa.string()), ("zip", pa.int32())]))])),
    ("scores", pa.map_(pa.string(), pa.int64())),
    ("names", pa.map_(pa.int32(), pa.string())),
    ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string()), ("tool_calls", pa.list_(CALL))]))),
    ("grid", pa.list_(pa.struct([("name", pa.string()), ("cells", pa.list_(pa.list_(pa.string())))]))),
])
NESTED_ROWS = [
    {"matrix": [[1, 2], [3]], "person": {"name": "a", "tags": ["x", "y"], "address": {"city": "Paris", "zip": 75001}},
     "scores": [("a", 1), ("b", None)], "names": [(1, "one"), (-2, "minus two")],
     "messages": [{"role": "user", "content": "Weather in Paris?", "tool_calls": None},
                  {"role": "assistant", "content": None, "tool_calls": [
                      {"type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}]}],
     "grid": [{"name": "g", "cells": [["a", "b"], [], None, [None, "c"]]}]},
    {"matrix": None, "person": None, "scores": None, "names": None, "messages": None, "grid": None},
    {"matrix": [], "person": {"name": None, "tags": None, "address": None}, "scores": [], "names": [],
     "messages": [], "grid": [None, {"name": None, "cells": None}]},
    {"matrix": [[], None, [None, 4]], "person": {"name": "b", "tags": [], "address": {"city": None, "zip": None}},
     "scores": [("z", 3)], "names": [(7, None)],
     "messages": [None, {"role": "tool", "content": "18 C", "tool_calls": []},
                  {"role": "assistant", "content": "It is 18 C.", "tool_calls": [None, {"type": None, "function": None}]}],
     "grid": [{"name": "h", "cells": [[None]]}]},
    {"matrix": [[5]], "person": {"name": "c", "tags": [None], "address": {"city": "Köln", "zip": 50667}},
     "scores": [("a", 1)], "names": [(1, "one")],
     "messages": [{"role": "assistant", "content": "ok", "tool_calls": None}], "grid": []},
]

LOGICAL = pa.schema([
    ("ts_us", pa.timestamp("us")), ("ts_ms_utc", pa.timestamp("ms", tz="UTC")), ("ts_ns", pa.timestamp("ns")),
    ("day", pa.date32()), ("t_us", pa.time64("us")), ("t_ms", pa.time32("ms")),
    ("dec", pa.decimal128(10, 3)), ("big_dec", pa.decimal128(30, 2)), ("half", pa.float16()), ("id", pa.uuid()),
    ("fixed", pa.binary(3)), ("u32", pa.uint32()), ("u64", pa.uint64()), ("i8", pa.int8()),
])
LOGICAL_ROWS = [
    {"ts_us": datetime.datetime(2024, 1, 2, 3, 4, 5, 123456), "ts_ms_utc": datetime.datetime(2024, 2, 29, 23, 59, 59, 999000),
     "ts_ns": datetime.datetime(2001, 9, 9, 1, 46, 40), "day": datetime.date(2024, 2, 29), "t_us": datetime.time(1, 2, 3, 4),
     "t_ms": datetime.time(23, 59, 59, 999000), "dec": decimal.Decimal("-12.345"), "big_dec": decimal.Decimal("-123456789012345678901234.56"),
     "half": 1.5, "id": uuid.UUID(int=0x0123456789ABCDEF0011223344556677).bytes, "fixed": b"\xff\x00\x01",
     "u32": 2 ** 32 - 1, "u64": 2 ** 64 - 1, "i8": -128},
    {k: None for k in LOGICAL.names},
    {"ts_us": datetime.datetime(1969, 12, 31, 23, 59, 59, 500000), "ts_ms_utc": datetime.datetime(1900, 3, 1),
     "ts_ns": datetime.datetime(1970, 1, 1), "day": datetime.date(1, 1, 1), "t_us": datetime.time(0, 0),
     "t_ms": datetime.time(12, 0, 0, 1000), "dec": decimal.Decimal("0.001"), "big_dec": decimal.Decimal("99.99"),
     "half": 2 ** -24, "id": uuid.UUID(int=1).bytes, "fixed": b"abc", "u32": 2 ** 31, "u64": 2 ** 63, "i8": 127},
]


def as_json(v):
    """A value of pyarrow's to_pylist() as the JSON SwiftPEFT makes of it."""
    if isinstance(v, dict):
        return {str(k) if not isinstance(k, bool) else json.dumps(k): as_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [as_json(x) for x in v]
    if isinstance(v, (datetime.datetime, datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            return list(v)
    if isinstance(v, int) and not isinstance(v, bool) and v >= 2 ** 63:
        return float(v)
    if hasattr(v, "isoformat"):  # pandas' Timestamp (nanoseconds)
        return v.isoformat()
    if type(v).__module__ == "numpy":
        return v.item()
    return v


def pyarrow_rows(path):
    return [as_json(r) for r in pq.read_table(path).to_pylist(maps_as_pydicts="strict")]


# A Thrift compact-protocol writer, enough for hand-made files whose sizes and offsets no writer would
# put there (near Int64.max): a reader must refuse them, not overflow adding them.
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def zigzag(n):
    return (n << 1) ^ (n >> 63)


I32, I64, BINARY, LIST, STRUCT = 5, 6, 8, 9, 12


def struct(fields):
    """fields: [(id, type, value)] in id order; value: int, bytes, a struct's fields, or (element type, items)."""
    out, last = bytearray(), 0
    for fid, ftype, value in fields:
        out.append(((fid - last) << 4) | ftype)
        last = fid
        out += encode(ftype, value)
    return bytes(out + b"\x00")


def encode(ftype, value):
    if ftype in (I32, I64):
        return varint(zigzag(value))
    if ftype == BINARY:
        return varint(len(value)) + value
    if ftype == STRUCT:
        return struct(value)
    etype, items = value
    head = bytes([(len(items) << 4) | etype]) if len(items) < 15 else bytes([0xF0 | etype]) + varint(len(items))
    return head + b"".join(encode(etype, v) for v in items)


def hand_made(page, offset=4, size=None):
    """PAR1, `page` (a page header and its data) at 4, and a footer: one required string column "text", one row."""
    size = len(page) if size is None else size
    meta = [(1, I32, 6), (2, LIST, (I32, [0])), (3, LIST, (BINARY, [b"text"])), (4, I32, 0), (5, I64, 1),
            (6, I64, size), (7, I64, size), (9, I64, offset)]
    footer = struct([
        (1, I32, 1),
        (2, LIST, (STRUCT, [[(4, BINARY, b"schema"), (5, I32, 1)], [(1, I32, 6), (3, I32, 0), (4, BINARY, b"text")]])),
        (3, I64, 1),
        (4, LIST, (STRUCT, [[(1, LIST, (STRUCT, [[(2, I64, offset), (3, STRUCT, meta)]])), (2, I64, size), (3, I64, 1)]])),
    ])
    return b"PAR1" + page + footer + len(footer).to_bytes(4, "little") + b"PAR1"


def v1_page(data, stored=None, values=1):
    header = struct([(1, I32, 0), (2, I32, len(data)), (3, I32, len(data) if stored is None else stored),
                     (5, STRUCT, [(1, I32, values), (2, I32, 0), (3, I32, 3), (4, I32, 3)])])
    return header + data


def rle_levels(levels, max_level):
    """Levels in the RLE/bit-packed hybrid, one RLE run per level, after their 4-byte length; none when max_level is 0."""
    if max_level == 0:
        return b""
    width = (max_level.bit_length() + 7) // 8
    runs = b"".join(varint(1 << 1) + level.to_bytes(width, "little") for level in levels)
    return len(runs).to_bytes(4, "little") + runs


# Groups without a LIST annotation, as protobuf's and other old writers store repeated fields: the Parquet
# spec's backward-compatibility rules read a repeated field outside a LIST group as a list of required
# items, and an unannotated group as a struct, even when its one child is repeated. Each leaf:
# (path, physical type, repetition of each node on its path, converted type, [(rep, def, value or None)]).
UNANNOTATED_ROWS = 3
UNANNOTATED = [
    (["msg", "ids"], 1, [1, 2], None, [(0, 2, 1), (1, 2, 2), (0, 0, None), (0, 1, None)]),
    (["turns", "role"], 6, [2, 0], 0, [(0, 1, b"user"), (1, 1, b"bot"), (0, 0, None), (0, 1, b"x")]),
    (["turns", "n"], 1, [2, 1], None, [(0, 2, 1), (1, 1, None), (0, 0, None), (0, 2, 3)]),
    (["single", "item", "name"], 6, [1, 2, 0], 0, [(0, 2, b"a"), (0, 1, None), (0, 0, None)]),
]


def unannotated_file():
    """The UNANNOTATED columns as one row group of uncompressed PLAIN v1 pages, with their schema."""
    schema, seen = [[(4, BINARY, b"schema"), (5, I32, 0)]], {}
    for path, ptype, repetitions, converted, _ in UNANNOTATED:
        for depth in range(len(path)):
            key = tuple(path[:depth + 1])
            if key in seen:
                continue
            leaf = depth == len(path) - 1
            parent = seen.get(key[:-1], 0)
            schema[parent][-1] = (5, I32, schema[parent][-1][2] + 1)  # one more child
            fields = ([(1, I32, ptype)] if leaf else []) + [(3, I32, repetitions[depth]), (4, BINARY, key[-1].encode())]
            fields += [] if leaf else [(5, I32, 0)]
            fields += [(6, I32, converted)] if leaf and converted is not None else []
            seen[key] = len(schema)
            schema.append(fields)
    body, chunks = b"PAR1", []
    for path, ptype, repetitions, _, entries in UNANNOTATED:
        max_rep = sum(r == 2 for r in repetitions)
        max_def = sum(r != 0 for r in repetitions)
        values = b"".join(v.to_bytes(4, "little", signed=True) if ptype == 1 else len(v).to_bytes(4, "little") + v
                          for _, d, v in entries if d == max_def)
        data = rle_levels([r for r, _, _ in entries], max_rep) + rle_levels([d for _, d, _ in entries], max_def) + values
        page = v1_page(data, values=len(entries))
        chunks.append([(2, I64, len(body)), (3, STRUCT, [
            (1, I32, ptype), (2, LIST, (I32, [0, 3])), (3, LIST, (BINARY, [n.encode() for n in path])), (4, I32, 0),
            (5, I64, len(entries)), (6, I64, len(page)), (7, I64, len(page)), (9, I64, len(body))])])
        body += page
    footer = struct([(1, I32, 1), (2, LIST, (STRUCT, schema)), (3, I64, UNANNOTATED_ROWS),
                     (4, LIST, (STRUCT, [[(1, LIST, (STRUCT, chunks)), (2, I64, len(body) - 4), (3, I64, UNANNOTATED_ROWS)]]))])
    return body + footer + len(footer).to_bytes(4, "little") + b"PAR1"


def main():
    os.makedirs(PARQUET, exist_ok=True)
    types = pa.Table.from_pylist(TYPE_ROWS, schema=TYPES)
    ways = {
        "types.parquet": {},
        "types-plain-v2.parquet": {"compression": "none", "use_dictionary": False, "data_page_version": "2.0"},
        "types-row-groups.parquet": {"row_group_size": 2, "data_page_version": "2.0"},
        "types-fallback.parquet": {"dictionary_pagesize_limit": 16, "data_page_size": 32, "write_batch_size": 1},
        "types-zstd.parquet": {"compression": "zstd"},
        "types-gzip.parquet": {"compression": "gzip", "data_page_version": "2.0"},
        "types-lz4.parquet": {"compression": "lz4"},  # LZ4_RAW
        # Each encoding besides PLAIN and the dictionary's that pyarrow writes, on the columns it suits.
        "types-encodings.parquet": {"use_dictionary": False, "data_page_version": "2.0", "column_encoding": {
            "i32": "DELTA_BINARY_PACKED", "i64": "DELTA_BINARY_PACKED", "f32": "BYTE_STREAM_SPLIT", "f64": "BYTE_STREAM_SPLIT",
            "flag": "RLE", "text": "DELTA_BYTE_ARRAY", "tags.list.element": "DELTA_LENGTH_BYTE_ARRAY",
            "point.name": "DELTA_BYTE_ARRAY", "point.x": "DELTA_BINARY_PACKED",
            "turns.list.element.role": "DELTA_LENGTH_BYTE_ARRAY", "turns.list.element.content": "DELTA_BYTE_ARRAY"}},
    }
    for name, options in ways.items():
        path = os.path.join(PARQUET, name)
        pq.write_table(types, path, **options)
        assert pq.read_table(path).to_pylist() == TYPE_ROWS, name
    with open(os.path.join(PARQUET, "types.json"), "w") as f:
        json.dump(TYPE_ROWS, f, indent=1, ensure_ascii=False)
        f.write("\n")
    nested_json = {}
    nested = pa.Table.from_pylist(NESTED_ROWS, schema=NESTED)
    pq.write_table(nested, os.path.join(PARQUET, "nested.parquet"))
    nested_json["nested.parquet"] = pyarrow_rows(os.path.join(PARQUET, "nested.parquet"))
    logical = pa.Table.from_pylist(LOGICAL_ROWS, schema=LOGICAL)
    for name, options in {"logical.parquet": {},
                          "logical-int96.parquet": {"use_deprecated_int96_timestamps": True},
                          "logical-v2.parquet": {"store_decimal_as_integer": True, "data_page_version": "2.0", "use_dictionary": False,
                                                 "column_encoding": {"half": "BYTE_STREAM_SPLIT", "id": "BYTE_STREAM_SPLIT",
                                                                     "fixed": "BYTE_STREAM_SPLIT", "big_dec": "DELTA_BYTE_ARRAY"}}}.items():
        path = os.path.join(PARQUET, name)
        pq.write_table(logical, path, **options)
        nested_json[name] = pyarrow_rows(path)
    path = os.path.join(PARQUET, "unannotated.parquet")
    with open(path, "wb") as f:
        f.write(unannotated_file())
    nested_json["unannotated.parquet"] = pyarrow_rows(path)
    assert nested_json["unannotated.parquet"] == [
        {"msg": {"ids": [1, 2]}, "turns": [{"role": "user", "n": 1}, {"role": "bot", "n": None}], "single": {"item": [{"name": "a"}]}},
        {"msg": None, "turns": [], "single": {"item": []}},
        {"msg": {"ids": []}, "turns": [{"role": "x", "n": 3}], "single": None}], nested_json["unannotated.parquet"]
    with open(os.path.join(PARQUET, "logical.json"), "w") as f:
        json.dump(nested_json, f, indent=1, ensure_ascii=False)
        f.write("\n")
    small = pa.table({"text": ["a", "b"]})
    pq.write_table(small, os.path.join(PARQUET, "brotli.parquet"), compression="brotli")

    near_max = 2 ** 63 - 1
    hand = {
        "hand-made.parquet": hand_made(v1_page(b"\x02\x00\x00\x00hi")),
        "huge-offset.parquet": hand_made(v1_page(b"\x02\x00\x00\x00hi"), offset=2 ** 62, size=2 ** 62 + 5),
        "huge-page.parquet": hand_made(v1_page(b"\x02\x00\x00\x00hi", stored=near_max)),
        "huge-levels.parquet": hand_made(struct([(1, I32, 3), (2, I32, 6), (3, I32, 6), (8, STRUCT, [
            (1, I32, 1), (2, I32, 0), (3, I32, 1), (4, I32, 0), (5, I32, near_max - 2), (6, I32, 5)])]) + b"\x02\x00\x00\x00hi"),
    }
    for name, data in hand.items():
        with open(os.path.join(PARQUET, name), "wb") as f:
            f.write(data)
    assert pq.read_table(os.path.join(PARQUET, "hand-made.parquet")).to_pylist() == [{"text": b"hi"}]  # (no STRING annotation)

    examples = pa.Table.from_pylist(EXAMPLES, schema=pa.schema([(f, pa.string()) for f in FIELDS]))
    pq.write_table(examples, os.path.join(TABLES, "examples.parquet"))
    pq.write_table(examples, os.path.join(TABLES, "examples-v2.parquet"), compression="none", data_page_version="2.0",
                   row_group_size=4)
    chats = [
        {"id": 1, "messages": [{"role": "user", "content": "What is a tuple?"},
                               {"role": "assistant", "content": "An immutable sequence."}]},
        {"id": 2, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"},
                               {"role": "assistant", "content": "Hi, \"you\"."}]},
    ]
    schema = pa.schema([("id", pa.int64()),
                        ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])))])
    pq.write_table(pa.Table.from_pylist(chats, schema=schema), os.path.join(TABLES, "chat.parquet"))
    with open(os.path.join(TABLES, "chat.jsonl"), "w") as f:
        for c in chats:
            f.write(json.dumps({"messages": c["messages"]}) + "\n")
    tool_chats = [
        {"created": datetime.datetime(2025, 5, 1, 12, 0),
         "tools": [{"type": "function", "function": {"name": "weather", "description": "The weather in a city", "parameters": {
             "type": "object", "properties": {"city": {"type": "string", "description": "The city"}}, "required": ["city"]}}}],
         "messages": [{"role": "user", "content": "Weather in Paris?", "tool_calls": None},
                      {"role": "assistant", "content": None, "tool_calls": [
                          {"type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                      {"role": "tool", "content": "18 C", "tool_calls": None},
                      {"role": "assistant", "content": "It is 18 C in Paris.", "tool_calls": None}]},
        {"created": datetime.datetime(2025, 5, 2, 8, 30), "tools": None,
         "messages": [{"role": "user", "content": "Hi", "tool_calls": None}, {"role": "assistant", "content": "Hello!", "tool_calls": []}]},
    ]
    path = os.path.join(TABLES, "chat-tools.parquet")
    pq.write_table(pa.Table.from_pylist(tool_chats), path)
    with open(os.path.join(TABLES, "chat-tools.jsonl"), "w") as f:
        for row in pyarrow_rows(path):  # as Hugging Face's to_json writes the rows, null columns left out
            f.write(json.dumps({k: v for k, v in row.items() if k != "created" and v is not None}, ensure_ascii=False) + "\n")
    # The TSV Zstandard-compressed whole (as data sets ship .zst files), in two frames.
    with open(os.path.join(TABLES, "examples.tsv"), "rb") as f:
        tsv = f.read()
    with open(os.path.join(TABLES, "examples.tsv.zst"), "wb") as f:
        for part in (tsv[:len(tsv) // 3], tsv[len(tsv) // 3:]):
            f.write(pa.compress(part, codec="zstd", asbytes=True))
    with pa.CompressedInputStream(os.path.join(TABLES, "examples.tsv.zst"), "zstd") as f:
        assert f.read() == tsv
    rows = list(range(1, len(EXAMPLES) + 1))
    update_lines(lambda lines: lines.update({"examples.parquet": rows, "examples-v2.parquet": rows, "examples.tsv.zst": lines["examples.tsv"]}))
    print(f"wrote {len(ways) + 10} files to {os.path.normpath(PARQUET)} and 7 to {os.path.normpath(TABLES)}")


if __name__ == "__main__":
    main()
