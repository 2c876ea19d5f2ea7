// One line per differentiable op: a central-difference gradient check on contiguous inputs and,
// where the op accepts views, on transposed or sliced inputs.

import XCTest
import TestSupport
@testable import TensorCore

/// Keeps samples away from 0 so kinks (relu, clamp, max ties) are not straddled by ±eps.
let awayFromZero: (Float) -> Float = { $0 >= 0 ? $0 + 0.2 : $0 - 0.2 }
let positive: (Float) -> Float = { abs($0) + 0.5 }

let ids: [Int32] = [3, 0, 3, 1, 4, 2]

let gradCases: [GradCase] = [
    // Binary arithmetic with broadcasting.
    GradCase(name: "add", shapes: [[2, 3, 4], [2, 3, 4]]) { $0[0] + $0[1] },
    GradCase(name: "add broadcast", shapes: [[2, 3, 4], [3, 1]]) { $0[0] + $0[1] },
    GradCase(name: "sub broadcast", shapes: [[4], [2, 3, 4]]) { $0[0] - $0[1] },
    GradCase(name: "mul broadcast", shapes: [[2, 1, 4], [3, 1]]) { $0[0] * $0[1] },
    GradCase(name: "div", shapes: [[2, 3], [2, 3]], domain: positive) { $0[0] / $0[1] },
    GradCase(name: "div broadcast", shapes: [[2, 3], [3]], domain: positive) { $0[0] / $0[1] },
    // A per-column scale (IA3) and a bias: their gradients are column sums (`Tensor.columnSums`).
    GradCase(name: "mul by a column scale", shapes: [[2, 3, 4], [4]]) { $0[0] * $0[1] },
    GradCase(name: "mul by a column scale on the left", shapes: [[1, 4], [3, 4]]) { $0[0] * $0[1] },
    GradCase(name: "add a bias", shapes: [[2, 3, 4], [1, 4]]) { $0[0] + $0[1] },
    GradCase(name: "addingBias into y", shapes: [[2, 3, 4], [4]]) { Tensor.addingBias($0[0] * 1.5, $0[1], intoY: true) },  // y: a fresh product
    GradCase(name: "add transposed+sliced", shapes: [[4, 3], [3, 6]]) { $0[0].transposed() + $0[1].slice(axis: 1, 1, 5) },
    GradCase(name: "mul sliced", shapes: [[5, 4], [3, 4]]) { $0[0].slice(axis: 0, 1, 4) * $0[1] },
    GradCase(name: "scalar ops", shapes: [[3, 4]]) { (2 * $0[0] + 1.5 - 0.5) / 3 },
    GradCase(name: "neg", shapes: [[3, 4]]) { -$0[0] },
    // Unary math and activations.
    GradCase(name: "exp", shapes: [[3, 4]]) { $0[0].exp() },
    GradCase(name: "exp transposed", shapes: [[4, 3]]) { $0[0].transposed().exp() },
    GradCase(name: "log", shapes: [[3, 4]], domain: positive) { $0[0].log() },
    GradCase(name: "sqrt", shapes: [[3, 4]], domain: positive) { $0[0].sqrt() },
    GradCase(name: "rsqrt", shapes: [[3, 4]], domain: positive) { $0[0].rsqrt() },
    GradCase(name: "pow 3", shapes: [[3, 4]]) { $0[0].pow(3) },
    GradCase(name: "pow 0.5", shapes: [[3, 4]], domain: positive) { $0[0].pow(0.5) },
    GradCase(name: "tanh", shapes: [[3, 4]]) { $0[0].tanh() },
    GradCase(name: "sigmoid", shapes: [[3, 4]]) { $0[0].sigmoid() },
    GradCase(name: "relu", shapes: [[3, 4]], domain: awayFromZero) { $0[0].relu() },
    GradCase(name: "gelu tanh", shapes: [[3, 4]]) { $0[0].geluTanh() },
    GradCase(name: "gelu erf", shapes: [[3, 4]]) { $0[0].gelu() },
    GradCase(name: "gelu erf sliced", shapes: [[6, 4]]) { $0[0].slice(axis: 0, 2, 5).gelu() },
    GradCase(name: "silu", shapes: [[3, 4]]) { $0[0].silu() },
    GradCase(name: "swiglu", shapes: [[3, 4], [3, 4]]) { Tensor.swiglu(gate: $0[0], up: $0[1]) },
    GradCase(name: "lowRankUpdate", shapes: [[2, 3, 5], [2, 3, 4], [2, 4], [5, 2]]) {
        Tensor.lowRankUpdate($0[0], x: $0[1], a: $0[2], b: $0[3], scale: 1.5)
    },
    GradCase(name: "lowRankUpdate into y", shapes: [[2, 3, 5], [2, 3, 4], [2, 4], [5, 2]]) {
        Tensor.lowRankUpdate($0[0] * 1.5, x: $0[1], a: $0[2], b: $0[3], scale: 1.5, intoY: true)  // y: a fresh product
    },
        GradCase(name: "lowRankUpdate (sliced x)", shapes: [[3, 5], [3, 6], [2, 4], [5, 2]]) {
        Tensor.lowRankUpdate($0[0], x: $0[1].slice(axis: 1, 1, 5), a: $0[2], b: $0[3], scale: 0.5)
    },
    // Two layers sharing x: one x [A₁; A₂]ᵀ, each output adding its own columns (a third layer's
    // output reads U too, so both expand pullbacks add into one dU).
    GradCase(name: "lowRankProject + lowRankExpand", shapes: [[2, 3, 5], [2, 3, 4], [2, 3, 6], [2, 6], [3, 6], [5, 2], [4, 3]]) {
        let u = Tensor.lowRankProject($0[2], a: [$0[3], $0[4]])  // (6, 5)
        let y1 = Tensor.lowRankExpand($0[0], u: u, column: 0, b: $0[5], scale: 1.5)
        let y2 = Tensor.lowRankExpand($0[1], u: u, column: 2, b: $0[6], scale: 0.5)
        return Tensor.concat([y1, y2, u.reshaped([2, 3, 5])], axis: 2)
    },
    GradCase(name: "lowRankProject (sliced x)", shapes: [[3, 5], [3, 7], [2, 4], [1, 4], [5, 1]]) {
        let u = Tensor.lowRankProject($0[1].slice(axis: 1, 2, 6), a: [$0[2], $0[3]])  // (3, 3)
        return Tensor.lowRankExpand($0[0], u: u, column: 2, b: $0[4], scale: 2)
    },
    GradCase(name: "swiglu (transposed gate)", shapes: [[4, 3], [3, 4]]) { Tensor.swiglu(gate: $0[0].transposed(), up: $0[1]) },
    GradCase(name: "clamp", shapes: [[4, 5]], domain: { $0 * 2 + ($0 > 0 ? 0.1 : -0.1) }) { $0[0].clamp(min: -1.05, max: 1.05) },
    GradCase(name: "where", shapes: [[3, 4], [4]]) {
        Tensor.where(Tensor(shape: [3, 1], data: [1, 0, 1]), $0[0], $0[1])
    },
    GradCase(name: "maskedFill", shapes: [[3, 4]]) {
        $0[0].maskedFill(Tensor(shape: [1, 4], data: [0, 1, 0, 1]), -5)
    },
    // Reductions.
    GradCase(name: "sum all", shapes: [[3, 4]]) { $0[0].sum() },
    GradCase(name: "sum axes keepDims", shapes: [[2, 3, 4]]) { $0[0].sum(axes: [0, 2], keepDims: true) },
    GradCase(name: "sum axis", shapes: [[2, 3, 4]]) { $0[0].sum(axes: [1]) },
    GradCase(name: "sum transposed", shapes: [[2, 3, 4]]) { $0[0].transposed(0, 2).sum(axes: [-1]) },
    GradCase(name: "mean", shapes: [[2, 3, 4]]) { $0[0].mean(axes: [-1], keepDims: true) },
    GradCase(name: "max axis", shapes: [[3, 5]]) { $0[0].max(axis: 1) },
    GradCase(name: "max axis 0 keepDims", shapes: [[4, 3]]) { $0[0].max(axis: 0, keepDims: true) },
    // Softmax family.
    GradCase(name: "softmax", shapes: [[3, 5]]) { $0[0].softmax() },
    GradCase(name: "softmax transposed", shapes: [[5, 3]]) { $0[0].transposed().softmax() },
    GradCase(name: "logSoftmax", shapes: [[2, 3, 5]]) { $0[0].logSoftmax() },
    // Matrix products: plain, transposed operands (BLAS flags), batched, broadcast, folded.
    GradCase(name: "matmul", shapes: [[3, 4], [4, 5]]) { $0[0].matmul($0[1]) },
    GradCase(name: "matmul A transposed", shapes: [[4, 3], [4, 5]]) { $0[0].transposed().matmul($0[1]) },
    GradCase(name: "matmul B transposed", shapes: [[3, 4], [5, 4]]) { $0[0].matmul($0[1].transposed()) },
    GradCase(name: "matmul both transposed", shapes: [[4, 3], [5, 4]]) { $0[0].transposed().matmul($0[1].transposed()) },
    GradCase(name: "matmul sliced", shapes: [[5, 4], [4, 7]]) { $0[0].slice(axis: 0, 1, 4).matmul($0[1].slice(axis: 1, 2, 6)) },
    GradCase(name: "matmul batched", shapes: [[2, 3, 4], [2, 4, 5]]) { $0[0].matmul($0[1]) },
    GradCase(name: "matmul batched transposed", shapes: [[2, 3, 4], [2, 5, 4]]) { $0[0].matmul($0[1].transposed()) },
    GradCase(name: "matmul 3D @ 2D (folded)", shapes: [[2, 3, 4], [4, 5]]) { $0[0].matmul($0[1]) },
    GradCase(name: "matmul 3D @ 2Dᵀ (linear)", shapes: [[2, 3, 4], [5, 4]]) { $0[0].matmul($0[1].transposed()) },
    GradCase(name: "matmul 2D @ 3D (broadcast A)", shapes: [[3, 4], [2, 4, 5]]) { $0[0].matmul($0[1]) },
    GradCase(name: "matmul batch broadcast", shapes: [[2, 1, 3, 4], [3, 4, 2]]) { $0[0].matmul($0[1]) },
    GradCase(name: "matmul permuted 4D", shapes: [[2, 3, 2, 4], [2, 3, 2, 4]]) {
        // (B, T, H, D) → (B, H, T, D) @ (B, H, D, T): attention scores
        $0[0].permuted([0, 2, 1, 3]).matmul($0[1].permuted([0, 2, 3, 1]))
    },
    // Shape ops.
    GradCase(name: "reshape", shapes: [[2, 6]]) { $0[0].reshaped([3, -1]) * Tensor.arange(0, 4) },
    GradCase(name: "reshape transposed", shapes: [[3, 4]]) { $0[0].transposed().reshaped([2, 6]) },
    GradCase(name: "reshape size-1 axes of a slice (view)", shapes: [[2, 3, 4]]) { $0[0].slice(axis: 1, 1, 2).reshaped([2, 1, 1, 4]).reshaped([2, 4]) },
    GradCase(name: "permute", shapes: [[2, 3, 4]]) { $0[0].permuted([2, 0, 1]) },
    GradCase(name: "slice", shapes: [[4, 5]]) { $0[0].slice(axis: 1, 1, 4) },
    GradCase(name: "expand", shapes: [[3, 1]]) { $0[0].expand([2, 3, 4]) },
    GradCase(name: "contiguous", shapes: [[3, 4]]) { $0[0].transposed().contiguous() },
    GradCase(name: "concat", shapes: [[2, 3], [2, 2]]) { Tensor.concat([$0[0], $0[1], $0[0]], axis: 1) },
    GradCase(name: "concat axis 0 transposed", shapes: [[3, 2], [1, 3]]) { Tensor.concat([$0[0].transposed(), $0[1]], axis: 0) },
    GradCase(name: "split", shapes: [[2, 6]]) {
        let p = $0[0].split([1, 2, 3], axis: 1)
        return Tensor.concat([p[2], p[0]], axis: 1) * p[1].sum(axes: [1], keepDims: true)
    },
    // Neural-network kernels.
    GradCase(name: "embedding", shapes: [[5, 3]]) { Tensor.embedding($0[0], ids: ids, shape: [2, 3]) },
    GradCase(name: "layerNorm", shapes: [[3, 6], [6], [6]]) { $0[0].layerNorm(weight: $0[1], bias: $0[2]) },
    GradCase(name: "layerNorm sliced", shapes: [[3, 8], [6], [6]]) { $0[0].slice(axis: 1, 1, 7).layerNorm(weight: $0[1], bias: $0[2]) },
    GradCase(name: "layerNorm no affine", shapes: [[4, 5]]) { $0[0].layerNorm(weight: nil, bias: nil) },
    GradCase(name: "rmsNorm", shapes: [[3, 6], [6]]) { $0[0].rmsNorm(weight: $0[1]) },
    GradCase(name: "rmsNorm transposed", shapes: [[6, 3], [6]]) { $0[0].transposed().rmsNorm(weight: $0[1], eps: 1e-5) },
    GradCase(name: "crossEntropy", shapes: [[4, 7]]) { $0[0].crossEntropy(targets: [1, 6, 0, 3]) },
    GradCase(name: "crossEntropy ignore", shapes: [[2, 2, 5]]) { $0[0].crossEntropy(targets: [4, -100, 0, -100]) },
    GradCase(name: "crossEntropy transposed", shapes: [[5, 3]]) { $0[0].transposed().crossEntropy(targets: [2, 4, -100]) },
    GradCase(name: "dropout", shapes: [[4, 6]]) {
        var rng = RNG(seed: 7)  // same mask on every call
        return $0[0].dropout(0.3, rng: &rng)
    },
    GradCase(name: "rope", shapes: [[2, 3, 5, 4]]) { $0[0].rope(theta: 10000, positionOffset: 2) },
    GradCase(name: "rope permuted", shapes: [[1, 5, 2, 4]]) { $0[0].permuted([0, 2, 1, 3]).rope(theta: 100) },
    GradCase(name: "rope scaled (llama3 divisors)", shapes: [[2, 3, 5, 4]]) { $0[0].rope(theta: 10000, positionOffset: 2, divisors: [1, 3.5]) },
]

final class GradientTests: XCTestCase {
    func testEveryOpGradient() {
        for c in gradCases {
            checkGradient(c)
        }
    }

    /// The checker itself must catch a wrong pullback: x² recorded with derivative 3x.
    func testCheckerCatchesAWrongGradient() {
        let wrong = GradCase(name: "wrong square", shapes: [[5]]) { xs in
            let x = xs[0]
            let y = x.detached() * x.detached()
            return Tensor.make(y, op: "wrongSquare", inputs: [x]) { g in
                x.accumulateGrad((g * x.detached() * 3).contiguousData())
            }
        }
        XCTAssertGreaterThan(checkGradient(wrong, report: false), 0.1)
        let right = GradCase(name: "square", shapes: [[5]]) { $0[0] * $0[0] }
        XCTAssertLessThan(checkGradient(right), 1e-2)
    }
}

/// Attention cases: plain causal, grouped-query with a prefix (S > T), padding mask, strided heads.
let attentionCases: [GradCase] = [
    GradCase(name: "attention causal", shapes: [[2, 3, 2, 4], [2, 3, 2, 4], [2, 3, 2, 4]]) {
        Tensor.attention(q: $0[0], k: $0[1], v: $0[2])
    },
    GradCase(name: "attention GQA + prefix", shapes: [[1, 3, 4, 2], [1, 5, 2, 2], [1, 5, 2, 2]]) {
        Tensor.attention(q: $0[0], k: $0[1], v: $0[2])
    },
    GradCase(name: "attention key mask", shapes: [[2, 3, 2, 2], [2, 3, 1, 2], [2, 3, 1, 2]]) {
        Tensor.attention(q: $0[0], k: $0[1], v: $0[2], keyMask: [1, 1, 1, 0, 1, 1])
    },
    GradCase(name: "attention sliding window + prefix + mask", shapes: [[2, 5, 2, 2], [2, 7, 1, 2], [2, 7, 1, 2]]) {
        Tensor.attention(q: $0[0], k: $0[1], v: $0[2], keyMask: [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1], window: 3)
    },
    GradCase(name: "attention dropout + GQA + prefix + mask", shapes: [[2, 4, 2, 2], [2, 6, 1, 2], [2, 6, 1, 2]]) {
        Tensor.attention(q: $0[0], k: $0[1], v: $0[2], keyMask: [1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1], dropout: (0.4, 99))
    },
    GradCase(name: "attention window + dropout + prefix", shapes: [[1, 5, 2, 2], [1, 8, 1, 2], [1, 8, 1, 2]]) {
        Tensor.attention(q: $0[0], k: $0[1], v: $0[2], window: 3, dropout: (0.3, 5))
    },
    GradCase(name: "attention strided (fused qkv slices)", shapes: [[2, 3, 12]]) {
        // (B, T, 3C) → three (B, T, H, D) views with row stride 3C
        let qkv = $0[0].reshaped([2, 3, 3, 2, 2])
        return Tensor.attention(q: qkv.slice(axis: 2, 0, 1).reshaped([2, 3, 2, 2]),
                                k: qkv.slice(axis: 2, 1, 2).reshaped([2, 3, 2, 2]),
                                v: qkv.slice(axis: 2, 2, 3).reshaped([2, 3, 2, 2]), causal: false, scale: 0.7)
    },
    GradCase(name: "attention GQA strided (fused qkv slices)", shapes: [[2, 3, 16]]) {
        // (B, T, 4·2 + 2·2 + 2·2) → q (B, T, 4, 2) and k, v (B, T, 2, 2) views with row stride 16:
        // the group's query rows are gathered from a strided q, dQ scattered back
        Tensor.attention(q: $0[0].slice(axis: 2, 0, 8).reshaped([2, 3, 4, 2]),
                         k: $0[0].slice(axis: 2, 8, 12).reshaped([2, 3, 2, 2]),
                         v: $0[0].slice(axis: 2, 12, 16).reshaped([2, 3, 2, 2]))
    },
]

final class FusedOpValueTests: XCTestCase {
    /// The fused ops equal the compositions they replace.
    func testFusedOpsEqualTheirCompositions() {
        var rng = RNG(seed: 21)
        let g = Tensor.normal([4, 6], rng: &rng), u = Tensor.normal([4, 6], rng: &rng)
        assertClose(Tensor.swiglu(gate: g, up: u).toArray(), (g.silu() * u).toArray(), rtol: 1e-6, atol: 1e-7, "swiglu")
        let y = Tensor.normal([4, 5], rng: &rng), x = Tensor.normal([4, 6], rng: &rng)
        let a = Tensor.normal([3, 6], rng: &rng), b = Tensor.normal([5, 3], rng: &rng)
        assertClose(Tensor.lowRankUpdate(y, x: x, a: a, b: b, scale: 2).toArray(),
                    (y + (x.matmul(a.transposed()) * 2).matmul(b.transposed())).toArray(), rtol: 1e-5, atol: 1e-6, "lowRankUpdate")
        let fresh = y.copy()
        let into = Tensor.lowRankUpdate(fresh, x: x, a: a, b: b, scale: 2, intoY: true)
        XCTAssertTrue(into.storage === fresh.storage, "intoY adds into y's own buffer")
        assertClose(into.toArray(), (y + (x.matmul(a.transposed()) * 2).matmul(b.transposed())).toArray(), rtol: 1e-5, atol: 1e-6, "intoY")
        let a2 = Tensor.normal([2, 6], rng: &rng), b2 = Tensor.normal([5, 2], rng: &rng)
        let shared = Tensor.lowRankProject(x, a: [a, a2])  // (4, 5)
        assertClose(Tensor.lowRankExpand(y, u: shared, column: 3, b: b2, scale: 0.5).toArray(),
                    (y + (x.matmul(a2.transposed()) * 0.5).matmul(b2.transposed())).toArray(), rtol: 1e-5, atol: 1e-6, "lowRankExpand")
        let bias = Tensor.normal([5], rng: &rng), product = y.copy()
        let biased = Tensor.addingBias(product, bias, intoY: true)
        XCTAssertTrue(biased.storage === product.storage, "intoY adds the bias into y's own buffer")
        XCTAssertEqual(biased.toArray(), (y + bias).toArray(), "addingBias")
    }
}

final class ColumnSumTests: XCTestCase {
    /// Column sums split over the threads (rows · C above the parallel threshold) equal a plain sum.
    func testColumnSumsEqualPlainSums() {
        var rng = RNG(seed: 33)
        let g = Tensor.normal([3, 100, 200], rng: &rng), x = Tensor.normal([3, 100, 200], rng: &rng)
        assertClose(Tensor.columnSums(g, times: x, to: [200])!.toArray(), (g * x).sum(axes: [0, 1]).toArray(),
                    rtol: 1e-4, atol: 1e-4, "Σ g ⊙ x")
        assertClose(Tensor.columnSums(g, to: [1, 1, 200])!.toArray(), g.sum(axes: [0, 1]).toArray(), rtol: 1e-4, atol: 1e-4, "Σ g")
        XCTAssertNil(Tensor.columnSums(g, to: [3, 1, 200]), "only the last axis may stay")
        XCTAssertNil(Tensor.columnSums(g.transposed(1, 2), to: [100]), "contiguous only")
    }
}

final class LinearCrossEntropyTests: XCTestCase {
    let targets: [Int32] = [3, -100, 0, 4, 1, -100]

    /// Gradients of h and of a trainable head, in one chunk and in chunks of 2 and 1 rows.
    func testGradients() {
        let saved = (linearCrossEntropyChunk, linearCrossEntropyMinRows)
        defer { (linearCrossEntropyChunk, linearCrossEntropyMinRows) = saved }
        linearCrossEntropyMinRows = 1
        for chunk in [1 << 22, 10, 5] {
            linearCrossEntropyChunk = chunk
            checkGradient(GradCase(name: "linearCrossEntropy chunk \(chunk)", shapes: [[2, 3, 4], [5, 4]]) {
                Tensor.linearCrossEntropy($0[0], weight: $0[1], targets: self.targets)
            })
        }
    }

    /// Same loss and gradients as the unfused head + cross-entropy, scaled by the upstream gradient.
    func testMatchesUnfused() {
        let saved = (linearCrossEntropyChunk, linearCrossEntropyMinRows)
        defer { (linearCrossEntropyChunk, linearCrossEntropyMinRows) = saved }
        (linearCrossEntropyChunk, linearCrossEntropyMinRows) = (10, 1)
        var rng = RNG(seed: 5)
        let h = Tensor.normal([2, 3, 4], rng: &rng), w = Tensor.normal([5, 4], rng: &rng)
        h.requiresGrad = true
        w.requiresGrad = true
        let fused = Tensor.linearCrossEntropy(h, weight: w, targets: targets)
        (fused * 0.5).backward()
        let (gh, gw) = (h.grad!.toArray(), w.grad!.toArray())
        h.zeroGrad(); w.zeroGrad()
        let plain = h.matmul(w.transposed()).crossEntropy(targets: targets)
        (plain * 0.5).backward()
        XCTAssertEqual(fused.item(), plain.item(), accuracy: 1e-5)
        assertClose(gh, h.grad!.toArray(), rtol: 1e-4, atol: 1e-6, "dH")
        assertClose(gw, w.grad!.toArray(), rtol: 1e-4, atol: 1e-6, "dW")
        let none = Tensor.linearCrossEntropy(h, weight: w, targets: [Int32](repeating: -100, count: 6))
        XCTAssertEqual(none.item(), 0)
    }
}

final class AttentionGradientTests: XCTestCase {
    func testAttentionGradients() {
        for c in attentionCases { checkGradient(c) }
    }

    /// Query blocks of 2 rows on 5 queries: several blocks, causal skipping of the keys above the
    /// diagonal, a prefix and padding; the backward recomputes each block from the saved log-sum-exp.
    func testAttentionGradientsOverSeveralQueryBlocks() {
        let saved = attentionQueryBlock
        attentionQueryBlock = 2
        defer { attentionQueryBlock = saved }
        for c in attentionCases { checkGradient(c) }
        checkGradient(GradCase(name: "attention 5 queries, prefix 2, GQA, mask", shapes: [[2, 5, 4, 2], [2, 7, 2, 2], [2, 7, 2, 2]]) {
            Tensor.attention(q: $0[0], k: $0[1], v: $0[2], keyMask: [1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0])
        })
    }
}
