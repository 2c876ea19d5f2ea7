// The fused attention against the same math composed from primitive ops.

import XCTest
import TestSupport
@testable import TensorCore

final class AttentionTests: XCTestCase {
    /// softmax(q kᵀ/√D + causal/window/padding mask) v with kv heads repeated, built from primitives.
    func composed(q: Tensor, k: Tensor, v: Tensor, mask: [Float]?, window: Int? = nil) -> Tensor {
        let (B, T, H, D) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3])
        let (S, KVH) = (k.shape[1], k.shape[2])
        let qh = q.permuted([0, 2, 1, 3])  // (B, H, T, D)
        // repeat kv heads: (B, S, KVH, D) → (B, KVH, 1, S, D) → expand (B, KVH, G, S, D) → (B, H, S, D)
        func rep(_ x: Tensor) -> Tensor {
            x.permuted([0, 2, 1, 3]).reshaped([B, KVH, 1, S, D]).expand([B, KVH, H / KVH, S, D]).reshaped([B, H, S, D])
        }
        let scores = qh.matmul(rep(k).transposed()) * (1 / Float(D).squareRoot())  // (B, H, T, S)
        var hidden = [Float](repeating: 0, count: B * T * S)
        for b in 0..<B { for i in 0..<T { for j in 0..<S where j > S - T + i || j <= S - T + i - (window ?? S + 1) || (mask?[b * S + j] ?? 1) == 0 { hidden[(b * T + i) * S + j] = 1 } } }
        let masked = scores.maskedFill(Tensor(shape: [B, 1, T, S], data: hidden), -1e30)
        return masked.softmax().matmul(rep(v)).permuted([0, 2, 1, 3]).contiguous()  // (B, T, H, D)
    }

    func testFusedMatchesComposed() {
        var rng = RNG(seed: 11)
        let q = Tensor.normal([2, 4, 6, 8], rng: &rng)
        let k = Tensor.normal([2, 7, 2, 8], rng: &rng)
        let v = Tensor.normal([2, 7, 2, 8], rng: &rng)
        let mask: [Float] = [1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1]
        for m in [nil, mask] {
            let fused = Tensor.attention(q: q, k: k, v: v, keyMask: m)
            let ref = composed(q: q, k: k, v: v, mask: m)
            XCTAssertEqual(fused.shape, [2, 4, 6, 8])
            assertClose(fused.toArray(), ref.toArray(), rtol: 1e-4, atol: 1e-5, "attention mask \(m != nil)")
        }
    }

    /// Several query blocks (causal skipping of the keys above the diagonal), with and without a
    /// prefix, padding and a query row that sees no key, against the composed reference.
    func testQueryBlocksMatchComposed() {
        let saved = attentionQueryBlock
        defer { attentionQueryBlock = saved }
        var rng = RNG(seed: 13)
        let q = Tensor.normal([2, 7, 6, 4], rng: &rng)
        for S in [7, 10] {
            let k = Tensor.normal([2, S, 3, 4], rng: &rng), v = Tensor.normal([2, S, 3, 4], rng: &rng)
            var mask = [Float](repeating: 1, count: 2 * S)
            mask[S - 7] = 0  // hides key S−7 of row 0 (its first own position: that query sees only the prefix, or nothing)
            mask[S + 3] = 0
            for m in [nil, mask] {
                let ref = composed(q: q, k: k, v: v, mask: m).toArray()
                for block in [1, 2, 3, 64] {
                    attentionQueryBlock = block
                    let fused = Tensor.attention(q: q, k: k, v: v, keyMask: m).toArray()
                    let hidden = S == 7 && m != nil  // query 0 of batch 0 sees no key: zeros (the reference gives a mean)
                    let check = hidden ? Array(fused[(6 * 4)...]) : fused, want = hidden ? Array(ref[(6 * 4)...]) : ref
                    assertClose(check, want, rtol: 1e-4, atol: 1e-5, "S \(S), block \(block), mask \(m != nil)")
                    if hidden { XCTAssertEqual(Array(fused[0..<(6 * 4)]), [Float](repeating: 0, count: 24)) }
                }
            }
        }
    }

    /// A sliding window over several query blocks, with a prefix and padding: each query sees its
    /// last `window` positions. The blocks whose keys all fall before a window are skipped.
    func testSlidingWindowMatchesComposed() {
        let saved = attentionQueryBlock
        defer { attentionQueryBlock = saved }
        var rng = RNG(seed: 17)
        let q = Tensor.normal([2, 9, 4, 4], rng: &rng)
        for S in [9, 12] {
            let k = Tensor.normal([2, S, 2, 4], rng: &rng), v = Tensor.normal([2, S, 2, 4], rng: &rng)
            var mask = [Float](repeating: 1, count: 2 * S)
            mask[S + 5] = 0
            for m in [nil, mask] {
                for window in [1, 2, 4, 11, 40] {
                    var ref = composed(q: q, k: k, v: v, mask: m, window: window).toArray()
                    // A query whose window holds only hidden keys outputs zeros (the reference gives a mean).
                    for b in 0..<2 { for i in 0..<9 {
                        let keys = max(0, S - 9 + i - window + 1)...(S - 9 + i)
                        if keys.allSatisfy({ (m?[b * S + $0] ?? 1) == 0 }) { for e in 0..<16 { ref[(b * 9 + i) * 16 + e] = 0 } }
                    } }
                    if window >= S && m == nil { assertClose(ref, composed(q: q, k: k, v: v, mask: m).toArray(), rtol: 0, atol: 0, "a window past every key hides nothing") }
                    for block in [1, 2, 4, 64] {
                        attentionQueryBlock = block
                        let fused = Tensor.attention(q: q, k: k, v: v, keyMask: m, window: window).toArray()
                        assertClose(fused, ref, rtol: 1e-4, atol: 1e-5, "S \(S), window \(window), block \(block), mask \(m != nil)")
                    }
                }
            }
        }
    }

    /// Dropout on the probabilities: the composed softmax times the mask the hash gives, scaled by
    /// 1/(1 − rate), over several query blocks, with GQA, a prefix, a window and padding; and the
    /// hash keeps the share of entries it should.
    func testDropoutMatchesComposedWithTheSameMask() {
        let saved = attentionQueryBlock
        defer { attentionQueryBlock = saved }
        var rng = RNG(seed: 19)
        let (B, T, H, D, S, KVH) = (2, 6, 4, 4, 8, 2)
        let q = Tensor.normal([B, T, H, D], rng: &rng)
        let k = Tensor.normal([B, S, KVH, D], rng: &rng), v = Tensor.normal([B, S, KVH, D], rng: &rng)
        var mask = [Float](repeating: 1, count: B * S)
        mask[S + 4] = 0
        let (rate, seed): (Float, UInt64) = (0.3, 1234)
        for window in [nil, 3] as [Int?] {
            // softmax (B, H, T, S) ⊙ keep / (1 − rate), then the same product with V as without dropout
            let (qh, rep) = (q.permuted([0, 2, 1, 3]), { (x: Tensor) in
                x.permuted([0, 2, 1, 3]).reshaped([B, KVH, 1, S, D]).expand([B, KVH, H / KVH, S, D]).reshaped([B, H, S, D])
            })
            var hidden = [Float](repeating: 0, count: B * T * S)
            for b in 0..<B { for i in 0..<T { for j in 0..<S where j > S - T + i || j <= S - T + i - (window ?? S + 1) || mask[b * S + j] == 0 {
                hidden[(b * T + i) * S + j] = 1
            } } }
            let probs = (qh.matmul(rep(k).transposed()) * (1 / Float(D).squareRoot()))
                .maskedFill(Tensor(shape: [B, 1, T, S], data: hidden), -1e30).softmax()  // (B, H, T, S)
            let keep = (0..<(B * H * T * S)).map { attentionDropoutKeeps(seed: seed, index: UInt64($0), rate: rate) ? 1 / (1 - rate) : Float(0) }
            let ref = (probs * Tensor(shape: [B, H, T, S], data: keep)).matmul(rep(v)).permuted([0, 2, 1, 3]).contiguous().toArray()
            for block in [1, 4, 64] {
                attentionQueryBlock = block
                let fused = Tensor.attention(q: q, k: k, v: v, keyMask: mask, window: window, dropout: (rate, seed)).toArray()
                assertClose(fused, ref, rtol: 1e-4, atol: 1e-5, "dropout, window \(window ?? 0), block \(block)")
            }
            let plain = Tensor.attention(q: q, k: k, v: v, keyMask: mask, window: window).toArray()
            XCTAssertGreaterThan(zip(plain, ref).map { abs($0 - $1) }.max()!, 1e-2, "the mask changes the output")
            XCTAssertEqual(Tensor.attention(q: q, k: k, v: v, keyMask: mask, window: window, dropout: (0, seed)).toArray(), plain,
                           "rate 0 is no dropout")
        }
        let kept = (0..<200_000).filter { attentionDropoutKeeps(seed: 7, index: UInt64($0), rate: 0.1) }.count
        XCTAssertEqual(Double(kept) / 200_000, 0.9, accuracy: 0.005, "rate 0.1 keeps 90%")
        XCTAssertNotEqual((0..<64).map { attentionDropoutKeeps(seed: 7, index: UInt64($0), rate: 0.5) },
                          (0..<64).map { attentionDropoutKeeps(seed: 8, index: UInt64($0), rate: 0.5) }, "the seed matters")
    }

    /// Inference records nothing and keeps no (B, H, T, S) buffer; same values as training mode.
    func testInferenceMatchesTraining() {
        var rng = RNG(seed: 12)
        let q = Tensor.normal([1, 3, 2, 4], rng: &rng), k = Tensor.normal([1, 3, 2, 4], rng: &rng)
        let v = Tensor.normal([1, 3, 2, 4], rng: &rng)
        q.requiresGrad = true
        let train = Tensor.attention(q: q, k: k, v: v)
        let infer = withNoGrad { Tensor.attention(q: q, k: k, v: v) }
        XCTAssertTrue(train.requiresGrad)
        XCTAssertFalse(infer.requiresGrad)
        XCTAssertEqual(train.toArray(), infer.toArray())
    }
}
