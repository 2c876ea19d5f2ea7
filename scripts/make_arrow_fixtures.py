#!/usr/bin/env python3
"""Writes the Arrow IPC fixtures, with pyarrow and Hugging Face datasets (in the venv scripts/make-venv makes):

- Tests/FormatsTests/Fixtures/arrow/: the tables of scripts/make_parquet_fixtures.py (types, nested,
  logical) and more.arrow (large strings, bytes and lists, fixed-size lists, dictionary-encoded strings
  with 8- and 32-bit indexes and a null, 64-bit dates, second times and timestamps, a null column,
  string and binary views inline and not, as polars writes strings),
  each written as Arrow IPC: types.arrow (the streaming format, as `datasets` writes its files),
  types.feather (Feather v2, the file format, uncompressed), types-zstd.feather (ZSTD bodies, two rows a
  batch), types-lz4.feather (LZ4 frames), nested.arrow, logical.arrow and more.arrow (streams);
  union.arrow (a union column, which SwiftPEFT must refuse by name); with arrow.json, each file's rows as pyarrow reads them, in the JSON
  SwiftPEFT makes of them (as logical.json: maps as objects, dates and times as isoformat, decimals and
  half floats as numbers, UUIDs as text, bytes as text when UTF-8).
- Tests/TrainingTests/Fixtures/tables/: examples.feather (the examples of scripts/make_table_fixtures.py
  as pandas' to_feather writes them: Feather v2, LZ4; its rows added to lines.json) and saved/, a
  DatasetDict that `datasets`' save_to_disk wrote: train (the examples in two shards) and test (the first
  two), read back with load_from_disk.

Run: .venv/bin/python scripts/make_arrow_fixtures.py (after scripts/make_parquet_fixtures.py)
"""
import datetime
import json
import os
import shutil
import sys

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.ipc as ipc

sys.path.insert(0, os.path.dirname(__file__))
from make_parquet_fixtures import LOGICAL, LOGICAL_ROWS, NESTED, NESTED_ROWS, TYPE_ROWS, TYPES, as_json  # noqa: E402
from make_table_fixtures import EXAMPLES, FIELDS, OUT as TABLES, update_lines  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..")
ARROW = os.path.join(ROOT, "Tests", "FormatsTests", "Fixtures", "arrow")

MORE = pa.schema([
    ("big_text", pa.large_string()), ("big_bytes", pa.large_binary()), ("big_list", pa.large_list(pa.int16())),
    ("pair", pa.list_(pa.float32(), 2)), ("label", pa.dictionary(pa.int8(), pa.string())),
    ("role", pa.dictionary(pa.int32(), pa.string())), ("day_ms", pa.date64()), ("t_s", pa.time32("s")),
    ("ts_s", pa.timestamp("s")), ("nothing", pa.null()), ("small", pa.uint8()), ("flag", pa.bool_()),
    ("view", pa.string_view()), ("bytes_view", pa.binary_view()),
])
MORE_ROWS = [
    {"big_text": "größer", "big_bytes": b"\x00\xff", "big_list": [1, -2], "pair": [0.5, -1.0], "label": "pos",
     "role": "user", "day_ms": datetime.date(2024, 2, 29), "t_s": datetime.time(23, 59, 59),
     "ts_s": datetime.datetime(1969, 7, 20, 20, 17, 40), "nothing": None, "small": 255, "flag": True,
     "view": "short", "bytes_view": b"longer than twelve bytes"},
    {k: None for k in MORE.names},
    {"big_text": "", "big_bytes": b"ok", "big_list": [], "pair": [2.0, 3.0], "label": "neg", "role": "assistant",
     "day_ms": datetime.date(1970, 1, 1), "t_s": datetime.time(0, 0, 1), "ts_s": datetime.datetime(2038, 1, 19, 3, 14, 8),
     "nothing": None, "small": 0, "flag": False, "view": "a string view longer than twelve bytes, ü", "bytes_view": b"\x00\x01"},
    {"big_text": "a", "big_bytes": b"", "big_list": [None, 7], "pair": None, "label": "pos", "role": None,
     "day_ms": datetime.date(1900, 3, 1), "t_s": datetime.time(12, 0), "ts_s": datetime.datetime(1970, 1, 1),
     "nothing": None, "small": 7, "flag": None, "view": "", "bytes_view": b"twelve bytes"},
]


def stream(table, path, **options):
    with ipc.new_stream(path, table.schema, options=ipc.IpcWriteOptions(**options)) as w:
        w.write_table(table)


def rows(path):
    with pa.memory_map(path) as source:
        data = source.read_buffer()
    table = ipc.open_file(data).read_all() if data[:6] == b"ARROW1" else ipc.open_stream(data).read_all()
    return [as_json(r) for r in table.to_pylist(maps_as_pydicts="strict")]


def main():
    os.makedirs(ARROW, exist_ok=True)
    types = pa.Table.from_pylist(TYPE_ROWS, schema=TYPES)
    stream(types, os.path.join(ARROW, "types.arrow"))
    feather.write_feather(types, os.path.join(ARROW, "types.feather"), compression="uncompressed")
    feather.write_feather(types, os.path.join(ARROW, "types-zstd.feather"), compression="zstd", chunksize=2)
    feather.write_feather(types, os.path.join(ARROW, "types-lz4.feather"), compression="lz4")
    union = pa.UnionArray.from_sparse(pa.array([0, 1], type=pa.int8()), [pa.array([1, 2]), pa.array(["a", "b"])])
    stream(pa.table({"id": [1, 2], "either": union}), os.path.join(ARROW, "union.arrow"))
    stream(pa.Table.from_pylist(NESTED_ROWS, schema=NESTED), os.path.join(ARROW, "nested.arrow"))
    stream(pa.Table.from_pylist(LOGICAL_ROWS, schema=LOGICAL), os.path.join(ARROW, "logical.arrow"))
    stream(pa.Table.from_pylist(MORE_ROWS, schema=MORE), os.path.join(ARROW, "more.arrow"))
    expected = {name: rows(os.path.join(ARROW, name))
                for name in ["types.arrow", "types.feather", "types-zstd.feather", "types-lz4.feather", "nested.arrow", "logical.arrow", "more.arrow"]}
    for name in ["types.arrow", "types.feather", "types-zstd.feather", "types-lz4.feather"]:
        assert expected[name] == as_json(TYPE_ROWS), name
    with open(os.path.join(ARROW, "arrow.json"), "w") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)
        f.write("\n")

    import datasets  # noqa: E402 (only for the saved folder)
    examples = pa.Table.from_pylist(EXAMPLES, schema=pa.schema([(f, pa.string()) for f in FIELDS]))
    examples.to_pandas().to_feather(os.path.join(TABLES, "examples.feather"))  # pandas' defaults: Feather v2, LZ4
    assert feather.read_table(os.path.join(TABLES, "examples.feather")).to_pylist() == EXAMPLES
    saved = os.path.join(TABLES, "saved")
    shutil.rmtree(saved, ignore_errors=True)
    train = datasets.Dataset(examples)
    dd = datasets.DatasetDict({"train": train, "test": train.select(range(2))})
    dd.save_to_disk(saved, num_shards={"train": 2, "test": 1})
    back = datasets.load_from_disk(saved)
    assert back["train"].to_list() == EXAMPLES and back["test"].to_list() == EXAMPLES[:2]
    assert sorted(os.listdir(os.path.join(saved, "train"))) == [
        "data-00000-of-00002.arrow", "data-00001-of-00002.arrow", "dataset_info.json", "state.json"], os.listdir(os.path.join(saved, "train"))
    update_lines(lambda lines: lines.update({"examples.feather": list(range(1, len(EXAMPLES) + 1))}))
    print(f"wrote 9 files to {os.path.normpath(ARROW)}, examples.feather and saved/ to {os.path.normpath(TABLES)}")


if __name__ == "__main__":
    main()
