#!/usr/bin/env python3
# make_gguf_quant_fixtures.py: writes Tests/FormatsTests/Fixtures/gguf/quants.gguf, one tensor per GGML
# quantization type SwiftPEFT reads (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL,
# IQ4_XS) holding random blocks, and quants-expected.gguf, the same tensors as F32 as gguf-py's numpy
# `gguf.quants.dequantize` (a port of ggml's dequantize_row_*) gives them. Both files are written by
# gguf-py's own GGUFWriter. GGUFTests.testEveryQuantizationMatchesGGUFPy reads both with the Swift reader.
#
# The blocks are random bytes (every bit pattern of the quants and scales), with each block's f16 scale
# fields set to finite values in ±[1e-3, 0.1] so every expected value is finite. Deterministic: a fixed seed.
#
#     scripts/make-venv && .venv/bin/python scripts/make_gguf_quant_fixtures.py
#
# The build and the tests never need Python; only re-recording does.

import os

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.normpath(os.path.join(HERE, "..", "Tests", "FormatsTests", "Fixtures", "gguf"))

# Byte offsets of each block's f16 scale fields (d, and dmin or m where the type has one).
HALVES = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
    T.IQ4_NL: [0], T.IQ4_XS: [0],
}
ROWS, COLUMNS = 3, 512  # 512 = 2 super-blocks of 256 per row


def main():
    rng = np.random.RandomState(20261130)
    quant = gguf.GGUFWriter(os.path.join(OUT, "quants.gguf"), "swiftpeft-fixture")
    expected = gguf.GGUFWriter(os.path.join(OUT, "quants-expected.gguf"), "swiftpeft-fixture")
    for qtype, halves in HALVES.items():
        block, size = GGML_QUANT_SIZES[qtype]
        blocks = ROWS * COLUMNS // block
        raw = rng.randint(0, 256, size=(blocks, size)).astype(np.uint8)
        for off in halves:
            h = (rng.uniform(1e-3, 0.1, size=blocks) * rng.choice([-1, 1], size=blocks)).astype(np.float16)
            raw[:, off:off + 2] = h.view(np.uint8).reshape(blocks, 2)
        raw = raw.reshape(ROWS, COLUMNS // block * size)
        values = gguf.quants.dequantize(raw, qtype).astype(np.float32)  # (ROWS, COLUMNS)
        assert values.shape == (ROWS, COLUMNS) and np.isfinite(values).all(), qtype.name
        quant.add_tensor(qtype.name, raw, raw_dtype=qtype)  # its shape in bytes: (ROWS, bytes per row)
        expected.add_tensor(qtype.name, values)
    for w in (quant, expected):
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    print(f"wrote {len(HALVES)} tensors of ({ROWS}, {COLUMNS}) to {OUT}/quants.gguf and quants-expected.gguf")


if __name__ == "__main__":
    main()
