#!/usr/bin/env python3
# make_fixtures.py: writes Tests/TensorCoreTests/Fixtures/ops.json, the numpy reference values that
# Tests/TensorCoreTests/ReferenceTests.swift checks the TensorCore forward ops against.
#
# Re-run from the package root after changing a case (the output is deterministic: two runs give
# byte-identical JSON, so a diff shows exactly what changed):
#
#     python3 scripts/make_fixtures.py
#
# Needs python3 and numpy only (no torch, no scipy). Inputs come from np.random.default_rng(0),
# are rounded to float32 and stored; expected outputs are computed in float64 from those float32
# inputs and then rounded to float32. Large inputs (to reach the parallel code paths) are not
# stored: they are drawn from the project's own RNG (re-implemented below, bit-exact) and their
# expected outputs are stored for every `stride`-th element only, to keep the file small.
#
# The file also records reference output of the project's RNG (Sources/TensorCore/RNG.swift):
# SplitMix64 seeding, xoshiro256**, nextFloat, nextDouble and Box–Muller normals.

import math
import os
import sys

import numpy as np

OUT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                        "Tests", "TensorCoreTests", "Fixtures", "ops.json")

MASK64 = (1 << 64) - 1


# ---------------------------------------------------------------------------------------------
# The project's RNG, re-implemented with explicit 64-bit masking.

def _rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & MASK64


class ProjectRNG:
    """xoshiro256** seeded by SplitMix64, exactly as Sources/TensorCore/RNG.swift."""

    def __init__(self, seed):
        x = seed & MASK64
        words = []
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & MASK64
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
            words.append(z ^ (z >> 31))
        self.s = words
        self.spare = None

    def next(self):
        s0, s1, s2, s3 = self.s
        result = (_rotl((s1 * 5) & MASK64, 7) * 9) & MASK64
        t = (s1 << 17) & MASK64
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        s3 = _rotl(s3, 45)
        self.s = [s0, s1, s2, s3]
        return result

    def next_float(self):
        # Float(next >> 40) * 2^-24: exact in float32.
        return np.float32((self.next() >> 40) * (1.0 / 16777216.0))

    def next_double(self):
        return (self.next() >> 11) * (1.0 / 9007199254740992.0)

    def next_normal(self):
        if self.spare is not None:
            s = self.spare
            self.spare = None
            return np.float32(s)
        u1 = 1.0 - self.next_double()
        u2 = self.next_double()
        r = math.sqrt(-2.0 * math.log(u1))
        self.spare = r * math.sin(2.0 * math.pi * u2)
        return np.float32(r * math.cos(2.0 * math.pi * u2))


def project_uniform(shape, seed):
    """Tensor.uniform(shape, low: -1, high: 1, rng: RNG(seed)): -1 + 2·u is exact in float32."""
    rng = ProjectRNG(seed)
    n = int(np.prod(shape))
    u = np.array([rng.next_float() for _ in range(n)], dtype=np.float32)
    return (np.float32(-1) + np.float32(2) * u).astype(np.float32).reshape(shape)


# ---------------------------------------------------------------------------------------------
# Encoding helpers.

class F32List:
    """A list of float32 values, written with the shortest text that round-trips in float32."""

    def __init__(self, values):
        self.values = np.asarray(values, dtype=np.float32).reshape(-1)


def f32_text(v):
    v = np.float32(v)
    if np.isnan(v):
        return '"nan"'
    if np.isinf(v):
        return '"inf"' if v > 0 else '"-inf"'
    return str(v)


def dump(obj, indent=0):
    pad = "  " * indent
    if isinstance(obj, F32List):
        return "[" + ",".join(f32_text(v) for v in obj.values) + "]"
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [pad + "  " + dump_str(k) + ": " + dump(v, indent + 1) for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        if all(isinstance(v, (int, str, bool, type(None))) for v in obj):
            return "[" + ",".join(dump(v) for v in obj) + "]"
        return "[\n" + ",\n".join(pad + "  " + dump(v, indent + 1) for v in obj) + "\n" + pad + "]"
    if isinstance(obj, bool):
        return "true" if obj else "false"
    if obj is None:
        return "null"
    if isinstance(obj, (int, np.integer)):
        return str(int(obj))
    if isinstance(obj, (float, np.floating)):
        return f32_text(obj)
    if isinstance(obj, str):
        return dump_str(obj)
    raise TypeError(f"cannot encode {type(obj)}")


def dump_str(s):
    assert all(32 <= ord(c) < 127 and c not in '"\\' for c in s), s
    return '"' + s + '"'


rng = np.random.default_rng(0)


def randn(*shape, scale=1.0, shift=0.0):
    return np.asarray(rng.standard_normal(shape) * scale + shift).astype(np.float32)


def positive(*shape, low=0.1, high=4.0):
    return np.asarray(rng.uniform(low, high, shape)).astype(np.float32)


# Input tensors, stored once each under "tensors" and referenced by name from the cases.
TENSORS = {}
_TENSOR_KEYS = {}


def stored_tensor(arr):
    key = (arr.shape, arr.tobytes())
    if key not in _TENSOR_KEYS:
        name = f"t{len(TENSORS)}"
        _TENSOR_KEYS[key] = name
        TENSORS[name] = {"shape": list(arr.shape), "data": F32List(arr)}
    return _TENSOR_KEYS[key]


def inp(arr, permute=None, slice_=None):
    """An input spec: a reference to stored float32 data plus optional views the Swift side applies
    in order: permute (axes) then slice (axis, start, end). Returns (spec, float64 view)."""
    arr = np.asarray(arr, dtype=np.float32)
    spec = {"ref": stored_tensor(arr)}
    view = arr.astype(np.float64)
    if permute is not None:
        spec["permute"] = list(permute)
        view = view.transpose(permute)
    if slice_ is not None:
        axis, start, end = slice_
        spec["slice"] = [axis, start, end]
        idx = [slice(None)] * view.ndim
        idx[axis] = slice(start, end)
        view = view[tuple(idx)]
    return spec, view


def big_inp(shape, seed):
    """A large input drawn in Swift by Tensor.uniform(shape, low: -1, high: 1, rng: RNG(seed))."""
    return {"shape": list(shape), "uniform_seed": seed}, project_uniform(shape, seed).astype(np.float64)


def out(arr, stride=None):
    arr = np.asarray(arr, dtype=np.float64).astype(np.float32)
    spec = {"shape": list(arr.shape)}
    if stride is not None:
        spec["stride"] = stride
        spec["data"] = F32List(arr.reshape(-1)[::stride])
    else:
        spec["data"] = F32List(arr)
    return spec


# ---------------------------------------------------------------------------------------------
# Reference functions (float64).

erf = np.vectorize(math.erf, otypes=[np.float64])


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def gelu_erf(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def softmax(x):
    m = np.max(x, axis=-1, keepdims=True)
    e = np.exp(x - m)
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(x):
    m = np.max(x, axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def layer_norm(x, w, b, eps):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y


def rms_norm(x, w, eps):
    y = x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
    return y * w if w is not None else y


def cross_entropy(logits, targets, ignore_index=-100):
    v = logits.shape[-1]
    rows = logits.reshape(-1, v)
    lsm = log_softmax(rows)
    losses = [-lsm[r, t] for r, t in enumerate(targets) if t != ignore_index]
    return np.float64(np.mean(losses)) if losses else np.float64(0.0)


def rope(x, theta, offset):
    *_, t, d = x.shape
    h = d // 2
    i = np.arange(h, dtype=np.float64)
    freq = theta ** (-2.0 * i / d)
    angle = (offset + np.arange(t, dtype=np.float64))[:, None] * freq[None, :]  # (T, D/2)
    c, s = np.cos(angle), np.sin(angle)
    a, b = x[..., :h], x[..., h:]
    return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)


# ---------------------------------------------------------------------------------------------
# Cases.

def binary_cases():
    cases = []
    fns = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}
    shapes = [
        ("same shape", (2, 3, 4), (2, 3, 4)),
        ("trailing vector", (2, 3, 4), (4,)),
        ("column (stride-0 last axis)", (2, 3, 4), (3, 1)),
        ("left broadcast", (3, 1), (2, 3, 5)),
        ("both broadcast", (4, 1, 3), (1, 5, 1)),
        ("rank-0 right", (2, 3), ()),
        ("rank-0 left", (), (3, 2)),
    ]
    for op, fn in fns.items():
        for label, sa, sb in shapes:
            a = randn(*sa, scale=2.0)
            b = positive(*sb, low=0.5, high=3.0) * np.where(rng.random(sb) < 0.5, -1, 1).astype(np.float32) \
                if op == "div" else randn(*sb, scale=2.0)
            (ap, av), (bp, bv) = inp(a), inp(b)
            cases.append({"name": f"{op} {label} {list(sa)} {list(sb)}", "op": op, "a": ap, "b": bp,
                          "out": out(fn(av, bv))})
    # Views as operands: a transposed left operand and a sliced right one.
    for op, fn in fns.items():
        (ap, av) = inp(randn(4, 3), permute=[1, 0])
        (bp, bv) = inp(positive(3, 6) if op == "div" else randn(3, 6), slice_=[1, 1, 5])
        cases.append({"name": f"{op} transposed + sliced views", "op": op, "a": ap, "b": bp,
                      "out": out(fn(av, bv))})
    # Large: parallel row split, with a broadcast row vector.
    (ap, av) = big_inp((96, 700), 101)
    (bp, bv) = inp(randn(700))
    cases.append({"name": "add big (96,700)+(700)", "op": "add", "a": ap, "b": bp, "out": out(av + bv, stride=211)})
    (ap, av) = big_inp((96, 700), 102)
    (bp, bv) = inp(randn(96, 1))
    cases.append({"name": "mul big (96,700)*(96,1)", "op": "mul", "a": ap, "b": bp, "out": out(av * bv, stride=211)})
    return cases


def scalar_cases():
    x = randn(3, 4, scale=2.0)
    xp, xv = inp(x)
    return [
        {"name": "x + 1.5", "op": "add", "s": 1.5, "x": xp, "out": out(xv + 1.5)},
        {"name": "x - 0.25", "op": "sub", "s": 0.25, "x": xp, "out": out(xv - 0.25)},
        {"name": "x * -3", "op": "mul", "s": -3.0, "x": xp, "out": out(xv * -3.0)},
        {"name": "x / 4", "op": "div", "s": 4.0, "x": xp, "out": out(xv / 4.0)},
        {"name": "2.5 + x", "op": "radd", "s": 2.5, "x": xp, "out": out(2.5 + xv)},
        {"name": "0.5 * x", "op": "rmul", "s": 0.5, "x": xp, "out": out(0.5 * xv)},
        {"name": "-x", "op": "neg", "s": 0.0, "x": xp, "out": out(-xv)},
    ]


def unary_cases():
    cases = []
    general = randn(4, 6, scale=2.5)
    general.reshape(-1)[:6] = [0.0, -0.0, 1e-3, -1e-3, 6.0, -6.0]
    wide = np.concatenate([randn(18, scale=4.0), np.array([-30, -20, -12, 12, 20, 30], np.float32)]).reshape(4, 6)
    pos = positive(4, 6, low=0.05, high=9.0)

    def add(op, x, fn, params=None, permute=None):
        if permute is not None:
            xp, xv = inp(np.ascontiguousarray(x.T), permute=permute)
        else:
            xp, xv = inp(x)
        with np.errstate(divide="ignore", invalid="ignore"):
            y = fn(xv)
        label = " ".join(f"{k}={v}" for k, v in (params or {}).items())
        case = {"name": op + (" on transposed view" if permute else "") + (f" {label}" if label else ""),
                "op": op, "x": xp, "out": out(y)}
        if params:
            case.update(params)
        cases.append(case)

    add("exp", randn(4, 6, scale=3.0), np.exp)
    add("exp", randn(4, 6, scale=3.0), np.exp, permute=[1, 0])
    add("log", pos, np.log)
    add("log", np.array([[0.0, 1.0, 2.0, 1e-20], [1e20, 0.5, 3.0, 7.25]], np.float32), np.log)
    add("sqrt", pos, np.sqrt)
    add("sqrt", np.array([0.0, 1e-30, 4.0, 1e30], np.float32), np.sqrt)
    add("rsqrt", pos, lambda v: 1.0 / np.sqrt(v))
    add("rsqrt", np.array([0.0, 1e-30, 4.0, 1e30], np.float32), lambda v: 1.0 / np.sqrt(v))
    add("pow", general, lambda v: v ** 2.0, {"p": 2.0})
    add("pow", general, lambda v: v ** 3.0, {"p": 3.0})
    add("pow", pos, lambda v: v ** 0.5, {"p": 0.5})
    add("pow", pos, lambda v: v ** -1.5, {"p": -1.5})
    add("pow", pos, lambda v: v ** 2.7, {"p": 2.7})
    add("tanh", wide, np.tanh)
    add("sigmoid", wide, sigmoid)
    add("relu", general, lambda v: np.maximum(v, 0.0))
    add("gelu_tanh", wide, gelu_tanh)
    add("gelu_tanh", general, gelu_tanh)
    add("gelu_erf", wide, gelu_erf)
    add("gelu_erf", general, gelu_erf)
    add("gelu_erf", general, gelu_erf, permute=[1, 0])
    add("silu", wide, lambda v: v * sigmoid(v))
    add("silu", general, lambda v: v * sigmoid(v))
    add("clamp", general, lambda v: np.clip(v, -0.5, 0.7), {"min": -0.5, "max": 0.7})
    add("clamp", general, lambda v: np.clip(v, 1.0, 1.0), {"min": 1.0, "max": 1.0})
    # Large: parallel chunks.
    xp, xv = big_inp((64, 640), 103)
    xs = (np.float32(4.0) * xv.astype(np.float32)).astype(np.float64)  # Swift scales in float32 first
    cases.append({"name": "gelu_tanh big (64,640) of 4*u", "op": "gelu_tanh", "x": xp, "prescale": 4.0,
                  "out": out(gelu_tanh(xs), stride=97)})
    xp, xv = big_inp((64, 640), 104)
    cases.append({"name": "exp big (64,640)", "op": "exp", "x": xp, "out": out(np.exp(xv), stride=89)})
    return cases


def where_cases():
    cases = []
    cond = (rng.random((2, 1, 4)) < 0.5).astype(np.float32)
    cond[0, 0, 0], cond[1, 0, 1] = 0.5, -2.0  # any nonzero value is true
    a, b = randn(3, 4), randn(2, 3, 1)
    (cp, cv), (ap, av), (bp, bv) = inp(cond), inp(a), inp(b)
    cases.append({"name": "where broadcast (2,1,4) (3,4) (2,3,1)", "cond": cp, "a": ap, "b": bp,
                  "out": out(np.where(cv != 0, av, bv))})
    cond = (rng.random((3, 5)) < 0.5).astype(np.float32)
    (cp, cv), (ap, av), (bp, bv) = inp(cond), inp(randn(5, 3), permute=[1, 0]), inp(randn(3, 5))
    cases.append({"name": "where same shape, transposed a", "cond": cp, "a": ap, "b": bp,
                  "out": out(np.where(cv != 0, av, bv))})
    return cases


def masked_fill_cases():
    cases = []
    x = randn(2, 3, 4)
    mask = np.triu(np.ones((3, 4), np.float32), k=1)  # causal-style mask, broadcast over axis 0
    (xp, xv), (mp, mv) = inp(x), inp(mask)
    for value in [float("-inf"), -1e9, 7.5]:
        cases.append({"name": f"maskedFill {value}", "x": xp, "mask": mp, "value": value,
                      "out": out(np.where(mv != 0, np.float64(np.float32(value)), xv))})
    return cases


def reduce_cases():
    cases = []
    x = randn(2, 3, 4, scale=2.0)
    xp, xv = inp(x)
    for axes in [None, [0], [1], [2], [-1], [0, 2], [1, 2], [0, 1, 2]]:
        for keep in [False, True]:
            ax = None if axes is None else tuple(axes)
            for op, fn in [("sum", np.sum), ("mean", np.mean)]:
                cases.append({"name": f"{op} axes {axes} keepDims {keep}", "op": op, "x": xp, "axes": axes,
                              "keep_dims": keep, "out": out(fn(xv, axis=ax, keepdims=keep))})
    # Strided input (permuted view).
    pp, pv = inp(randn(4, 2, 3), permute=[1, 2, 0])
    for axes in [[0], [2], [0, 1], None]:
        cases.append({"name": f"sum of permuted view axes {axes}", "op": "sum", "x": pp, "axes": axes,
                      "keep_dims": False, "out": out(np.sum(pv, axis=None if axes is None else tuple(axes)))})
    # Max over one axis.
    for axis in [0, 1, 2, -1]:
        for keep in [False, True]:
            cases.append({"name": f"max axis {axis} keepDims {keep}", "op": "max", "x": xp, "axis": axis,
                          "keep_dims": keep, "out": out(np.max(xv, axis=axis, keepdims=keep))})
    neg = -positive(3, 5)
    np_, nv = inp(neg)
    cases.append({"name": "max of all-negative rows", "op": "max", "x": np_, "axis": 1, "keep_dims": False,
                  "out": out(np.max(nv, axis=1))})
    cases.append({"name": "max of permuted view", "op": "max", "x": pp, "axis": 1, "keep_dims": True,
                  "out": out(np.max(pv, axis=1, keepdims=True))})
    # Large: rows summed in parallel, columns summed sequentially.
    bp, bv = big_inp((48, 900), 105)
    cases.append({"name": "sum big (48,900) axis 1", "op": "sum", "x": bp, "axes": [1], "keep_dims": False,
                  "long_accumulation": True, "out": out(bv.sum(axis=1))})
    cases.append({"name": "sum big (48,900) axis 0 keepDims", "op": "sum", "x": bp, "axes": [0], "keep_dims": True,
                  "long_accumulation": True, "out": out(bv.sum(axis=0, keepdims=True), stride=7)})
    cases.append({"name": "mean big (48,900) all", "op": "mean", "x": bp, "axes": None, "keep_dims": False,
                  "long_accumulation": True, "out": out(bv.mean())})
    return cases


def softmax_cases():
    cases = []
    x = randn(2, 3, 5, scale=3.0)
    x[0, 1] = [-np.inf, 0.5, -np.inf, 2.0, -1.0]           # masked entries
    xp, xv = inp(x)
    cases.append({"name": "softmax (2,3,5) with -inf entries", "op": "softmax", "x": xp, "out": out(softmax(xv))})
    cases.append({"name": "logSoftmax (2,3,5) with -inf entries", "op": "log_softmax", "x": xp,
                  "out": out(log_softmax(xv))})
    # Stability: without subtracting the max, exp overflows (1000) or loses everything (-80 vs 80).
    big = np.array([[1000.0, 1001.0, 999.0, 1000.5, 998.0],
                    [-80.0, 0.0, 80.0, 10.0, -10.0],
                    [-1000.0, -999.0, -1001.0, -998.5, -1000.0]], np.float32)
    bp_, bv_ = inp(big)
    cases.append({"name": "softmax large-magnitude rows", "op": "softmax", "x": bp_, "large_magnitude": True,
                  "out": out(softmax(bv_))})
    cases.append({"name": "logSoftmax large-magnitude rows", "op": "log_softmax", "x": bp_, "large_magnitude": True,
                  "out": out(log_softmax(bv_))})
    tp, tv = inp(randn(7, 4, scale=2.0), permute=[1, 0])
    cases.append({"name": "softmax transposed view", "op": "softmax", "x": tp, "out": out(softmax(tv))})
    cases.append({"name": "logSoftmax transposed view", "op": "log_softmax", "x": tp, "out": out(log_softmax(tv))})
    one, ov = inp(randn(3, 1))
    cases.append({"name": "softmax of width 1", "op": "softmax", "x": one, "out": out(softmax(ov))})
    bp, bv = big_inp((60, 600), 106)
    bv6 = (np.float32(6.0) * bv.astype(np.float32)).astype(np.float64)  # Swift scales in float32 first
    cases.append({"name": "softmax big (60,600) of 6*u", "op": "softmax", "x": bp, "prescale": 6.0,
                  "long_accumulation": True, "out": out(softmax(bv6), stride=97)})
    cases.append({"name": "logSoftmax big (60,600) of 6*u", "op": "log_softmax", "x": bp, "prescale": 6.0,
                  "long_accumulation": True, "out": out(log_softmax(bv6), stride=97)})
    return cases


def matmul_cases():
    cases = []

    def add(name, a, b):
        (ap, av), (bp, bv) = a, b
        cases.append({"name": name, "a": ap, "b": bp, "out": out(np.matmul(av, bv))})

    add("2-D (3,4)@(4,5)", inp(randn(3, 4)), inp(randn(4, 5)))
    add("2-D A@B^T (B stored (5,4))", inp(randn(3, 4)), inp(randn(5, 4), permute=[1, 0]))
    add("2-D A^T@B (A stored (4,3))", inp(randn(4, 3), permute=[1, 0]), inp(randn(4, 5)))
    add("2-D A^T@B^T", inp(randn(4, 3), permute=[1, 0]), inp(randn(5, 4), permute=[1, 0]))
    add("2-D column-sliced A (row stride 8)", inp(randn(3, 8), slice_=[1, 2, 6]), inp(randn(4, 5)))
    add("2-D (1,4)@(4,1)", inp(randn(1, 4)), inp(randn(4, 1)))
    add("batched (2,3,4)@(2,4,5)", inp(randn(2, 3, 4)), inp(randn(2, 4, 5)))
    add("batched broadcast (2,1,3,4)@(3,4,5)", inp(randn(2, 1, 3, 4)), inp(randn(3, 4, 5)))
    add("batched broadcast (1,3,4)@(2,1,4,2)", inp(randn(1, 3, 4)), inp(randn(2, 1, 4, 2)))
    add("2-D @ batched (3,4)@(2,4,5)", inp(randn(3, 4)), inp(randn(2, 4, 5)))
    add("3-D @ 2-D (2,3,4)@(4,5) (folded)", inp(randn(2, 3, 4)), inp(randn(4, 5)))
    add("3-D @ 2-D transposed weight (2,3,4)@W^T, W (5,4)", inp(randn(2, 3, 4)), inp(randn(5, 4), permute=[1, 0]))
    add("4-D @ 2-D (2,2,3,4)@(4,3) (folded)", inp(randn(2, 2, 3, 4)), inp(randn(4, 3)))
    add("batched with transposed batched right (2,3,4)@(2,5,4)^T", inp(randn(2, 3, 4)), inp(randn(2, 5, 4), permute=[0, 2, 1]))
    add("batch-sliced 3-D @ 2-D", inp(randn(4, 3, 4), slice_=[0, 1, 3]), inp(randn(4, 2)))
    add("row-sliced 3-D @ 2-D (not foldable)", inp(randn(2, 5, 4), slice_=[1, 1, 4]), inp(randn(4, 2)))
    # Attention-style: q (B,T,H,D) → (B,H,T,D); k (B,T,H,D) → (B,H,D,T).
    add("attention scores q.k^T from (B,T,H,D) views", inp(randn(2, 3, 2, 4), permute=[0, 2, 1, 3]),
        inp(randn(2, 3, 2, 4), permute=[0, 2, 3, 1]))
    add("attention values p.v from (B,T,H,D) view", inp(randn(2, 2, 3, 3)), inp(randn(2, 3, 2, 4), permute=[0, 2, 1, 3]))
    return cases


def layer_norm_cases():
    cases = []
    x = randn(2, 3, 8, scale=2.0, shift=0.5)
    xp, xv = inp(x)
    (wp, wv), (bp, bv) = inp(randn(8, scale=0.5, shift=1.0)), inp(randn(8, scale=0.5))
    cases.append({"name": "layerNorm weight+bias", "x": xp, "weight": wp, "bias": bp, "eps": 1e-5,
                  "out": out(layer_norm(xv, wv, bv, 1e-5))})
    cases.append({"name": "layerNorm weight only", "x": xp, "weight": wp, "eps": 1e-5,
                  "out": out(layer_norm(xv, wv, None, 1e-5))})
    cases.append({"name": "layerNorm no affine", "x": xp, "eps": 1e-5, "out": out(layer_norm(xv, None, None, 1e-5))})
    sp, sv = inp(randn(3, 8, scale=1e-3))  # variance comparable to eps
    cases.append({"name": "layerNorm tiny variance (eps matters)", "x": sp, "weight": wp, "bias": bp, "eps": 1e-5,
                  "out": out(layer_norm(sv, wv, bv, 1e-5))})
    tp, tv = inp(randn(8, 4), permute=[1, 0])
    cases.append({"name": "layerNorm transposed view", "x": tp, "weight": wp, "bias": bp, "eps": 1e-5,
                  "out": out(layer_norm(tv, wv, bv, 1e-5))})
    bigp, bigv = big_inp((64, 512), 107)
    (w2p, w2v), (b2p, b2v) = inp(randn(512, scale=0.5, shift=1.0)), inp(randn(512, scale=0.5))
    cases.append({"name": "layerNorm big (64,512)", "x": bigp, "weight": w2p, "bias": b2p, "eps": 1e-5,
                  "long_accumulation": True, "out": out(layer_norm(bigv, w2v, b2v, 1e-5), stride=97)})
    return cases


def rms_norm_cases():
    cases = []
    x = randn(2, 3, 8, scale=2.0)
    xp, xv = inp(x)
    wp, wv = inp(randn(8, scale=0.5, shift=1.0))
    cases.append({"name": "rmsNorm weight", "x": xp, "weight": wp, "eps": 1e-6, "out": out(rms_norm(xv, wv, 1e-6))})
    cases.append({"name": "rmsNorm no weight", "x": xp, "eps": 1e-6, "out": out(rms_norm(xv, None, 1e-6))})
    sp, sv = inp(randn(3, 8, scale=1e-3))  # mean square comparable to eps
    cases.append({"name": "rmsNorm tiny values (eps matters)", "x": sp, "weight": wp, "eps": 1e-6,
                  "out": out(rms_norm(sv, wv, 1e-6))})
    tp, tv = inp(randn(8, 4), permute=[1, 0])
    cases.append({"name": "rmsNorm transposed view", "x": tp, "weight": wp, "eps": 1e-6,
                  "out": out(rms_norm(tv, wv, 1e-6))})
    bigp, bigv = big_inp((64, 512), 108)
    w2p, w2v = inp(randn(512, scale=0.5, shift=1.0))
    cases.append({"name": "rmsNorm big (64,512)", "x": bigp, "weight": w2p, "eps": 1e-6,
                  "long_accumulation": True, "out": out(rms_norm(bigv, w2v, 1e-6), stride=97)})
    return cases


def cross_entropy_cases():
    cases = []
    logits = randn(6, 7, scale=2.0)
    targets = [3, -100, 0, 6, -100, 2]
    lp, lv = inp(logits)
    cases.append({"name": "crossEntropy (6,7) with 2 ignored", "logits": lp, "targets": targets,
                  "out": out(cross_entropy(lv, targets))})
    t_all = [1, 4, 0, 6, 5, 2]
    cases.append({"name": "crossEntropy (6,7) none ignored", "logits": lp, "targets": t_all,
                  "out": out(cross_entropy(lv, t_all))})
    l3 = randn(2, 3, 5, scale=3.0)
    l3[1, 0] = [500.0, 490.0, 510.0, 505.0, 0.0]  # large logits: log-sum-exp must subtract the max
    t3 = [4, 0, -100, 2, 1, -100]
    l3p, l3v = inp(l3)
    cases.append({"name": "crossEntropy (2,3,5) large logits", "logits": l3p, "targets": t3,
                  "out": out(cross_entropy(l3v, t3))})
    t_none = [-100] * 6
    cases.append({"name": "crossEntropy all ignored is 0", "logits": lp, "targets": t_none,
                  "out": out(cross_entropy(lv, t_none))})
    tp, tv = inp(randn(7, 4, scale=2.0), permute=[1, 0])
    t4 = [0, 6, -100, 3]
    cases.append({"name": "crossEntropy transposed view", "logits": tp, "targets": t4,
                  "out": out(cross_entropy(tv, t4))})
    return cases


def embedding_cases():
    w = randn(10, 4)
    wp, wv = inp(w)
    ids = [3, 0, 9, 3, 7, 1]
    cases = [{"name": "embedding (10,4) ids (2,3)", "weight": wp, "ids": ids, "id_shape": [2, 3],
              "out": out(wv[np.array(ids).reshape(2, 3)])}]
    ids1 = [9, 9, 0, 5]
    cases.append({"name": "embedding ids (4)", "weight": wp, "ids": ids1, "id_shape": [4],
                  "out": out(wv[np.array(ids1)])})
    tp, tv = inp(randn(4, 6), permute=[1, 0])
    ids2 = [5, 2, 0]
    cases.append({"name": "embedding of transposed weight view", "weight": tp, "ids": ids2, "id_shape": [3],
                  "out": out(tv[np.array(ids2)])})
    return cases


def rope_cases():
    cases = []
    x = randn(2, 2, 5, 8)
    xp, xv = inp(x)
    cases.append({"name": "rope (2,2,5,8) offset 3 theta 1e4", "x": xp, "theta": 10000.0, "offset": 3,
                  "out": out(rope(xv, 10000.0, 3))})
    cases.append({"name": "rope (2,2,5,8) offset 0 theta 1e4", "x": xp, "theta": 10000.0, "offset": 0,
                  "out": out(rope(xv, 10000.0, 0))})
    # (B,T,H,D) stored, viewed as (B,H,T,D) the way attention does it.
    pp, pv = inp(randn(1, 6, 3, 4), permute=[0, 2, 1, 3])
    cases.append({"name": "rope permuted view (1,3,6,4) offset 3 theta 1e4", "x": pp, "theta": 10000.0,
                  "offset": 3, "out": out(rope(pv, 10000.0, 3))})
    sp, sv = inp(randn(4, 6))
    cases.append({"name": "rope (4,6) offset 11 theta 500", "x": sp, "theta": 500.0, "offset": 11,
                  "out": out(rope(sv, 500.0, 11))})
    return cases


def shape_cases():
    cases = []
    x = randn(2, 3, 4)
    xp, xv = inp(x)
    for perm in [[2, 0, 1], [1, 0, 2], [0, 2, 1], [2, 1, 0]]:
        cases.append({"name": f"permute {perm}", "op": "permute", "x": xp, "perm": perm,
                      "out": out(xv.transpose(perm))})
    for a0, a1 in [(-2, -1), (0, 2), (1, 0)]:
        cases.append({"name": f"transpose {a0} {a1}", "op": "transpose", "x": xp, "axes": [a0, a1],
                      "out": out(np.swapaxes(xv, a0, a1))})
    for axis, s, e in [(0, 1, 2), (1, 1, 3), (2, 0, 3), (-1, 2, 4), (1, 2, 2)]:
        idx = [slice(None)] * 3
        idx[axis] = slice(s, e)
        cases.append({"name": f"slice axis {axis} {s}..<{e}", "op": "slice", "x": xp, "axis": axis,
                      "start": s, "end": e, "out": out(xv[tuple(idx)])})
    pp, pv = inp(randn(4, 2, 3), permute=[1, 2, 0])
    cases.append({"name": "slice of permuted view", "op": "slice", "x": pp, "axis": 2, "start": 1, "end": 3,
                  "out": out(pv[:, :, 1:3])})
    cases.append({"name": "reshape of permuted view (copy)", "op": "reshape", "x": pp, "new_shape": [3, -1],
                  "out": out(pv.reshape(3, -1))})
    cases.append({"name": "reshape contiguous", "op": "reshape", "x": xp, "new_shape": [4, 6],
                  "out": out(xv.reshape(4, 6))})
    cases.append({"name": "reshape adding size-1 axes to a permuted view", "op": "reshape", "x": pp,
                  "new_shape": [2, 1, 3, 4, 1], "out": out(pv.reshape(2, 1, 3, 4, 1))})
    qp, qv = inp(randn(3, 6, 2), slice_=[1, 2, 3])
    cases.append({"name": "reshape dropping a size-1 axis of a sliced view", "op": "reshape", "x": qp,
                  "new_shape": [3, 2], "out": out(qv.reshape(3, 2))})
    ep, ev = inp(randn(3, 1))
    cases.append({"name": "expand (3,1) to (2,3,4)", "op": "expand", "x": ep, "new_shape": [2, 3, 4],
                  "out": out(np.broadcast_to(ev, (2, 3, 4)))})
    cases.append({"name": "split axis 2 [1,3]", "op": "split", "x": xp, "axis": 2, "sizes": [1, 3],
                  "outs": [out(xv[:, :, :1]), out(xv[:, :, 1:])]})
    # concat
    a, b, c = randn(2, 1, 4), randn(2, 3, 4), randn(2, 2, 4)
    (ap, av), (bp, bv), (cp, cv) = inp(a), inp(b), inp(c)
    cases.append({"name": "concat axis 1", "op": "concat", "xs": [ap, bp, cp], "axis": 1,
                  "out": out(np.concatenate([av, bv, cv], axis=1))})
    (dp, dv), (fp, fv) = inp(randn(1, 3, 4)), inp(randn(3, 3, 4))
    cases.append({"name": "concat axis 0", "op": "concat", "xs": [dp, fp], "axis": 0,
                  "out": out(np.concatenate([dv, fv], axis=0))})
    (gp, gv), (hp, hv) = inp(randn(2, 3, 2)), inp(randn(4, 2, 3), permute=[1, 2, 0])
    cases.append({"name": "concat axis -1 with a permuted view", "op": "concat", "xs": [gp, hp], "axis": -1,
                  "out": out(np.concatenate([gv, hv], axis=-1))})
    (ip, iv), (jp, jv) = inp(randn(3, 5), slice_=[1, 1, 4]), inp(randn(3, 2))
    cases.append({"name": "concat axis 1 with a sliced view", "op": "concat", "xs": [ip, jp], "axis": 1,
                  "out": out(np.concatenate([iv, jv], axis=1))})
    return cases


def rng_fixture():
    r = ProjectRNG(42)
    raw = [str(r.next()) for _ in range(8)]
    r = ProjectRNG(42)
    floats = [r.next_float() for _ in range(8)]
    r = ProjectRNG(42)
    doubles = [r.next_double() for _ in range(4)]
    r = ProjectRNG(42)
    normals = [r.next_normal() for _ in range(9)]
    uniform = project_uniform((8,), 7)
    return {
        "seed": 42,
        "raw_u64": raw,
        "next_float": F32List(floats),
        # Doubles as their exact 53-bit integer numerators (value = n · 2^-53).
        "next_double_numerators": [str(int(d * 9007199254740992.0)) for d in doubles],
        "next_normal": F32List(normals),
        "uniform_seed7_low_-1_high_1": F32List(uniform),
    }


def main():
    fixture = {
        "about": "Generated by scripts/make_fixtures.py (python3 + numpy); do not edit by hand. "
                 "Re-run: python3 scripts/make_fixtures.py",
        "numpy_version_used": np.__version__.split(".")[0] + ".x",
        "rng": rng_fixture(),
        "binary": binary_cases(),
        "scalar": scalar_cases(),
        "unary": unary_cases(),
        "where": where_cases(),
        "masked_fill": masked_fill_cases(),
        "reduce": reduce_cases(),
        "softmax": softmax_cases(),
        "matmul": matmul_cases(),
        "layer_norm": layer_norm_cases(),
        "rms_norm": rms_norm_cases(),
        "cross_entropy": cross_entropy_cases(),
        "embedding": embedding_cases(),
        "rope": rope_cases(),
        "shape": shape_cases(),
    }
    fixture["tensors"] = TENSORS
    text = dump(fixture) + "\n"
    os.makedirs(os.path.dirname(OUT_PATH), exist_ok=True)
    with open(OUT_PATH, "w", encoding="ascii", newline="\n") as f:
        f.write(text)
    print(f"wrote {os.path.relpath(OUT_PATH)} ({len(text)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
