// Fused causal attention with grouped-query heads over (B, T, H, D) tensors, the layout the
// projections produce, so no head permute is ever copied: each head is a strided matrix that
// cblas_sgemm reads with its leading dimension. Saves one probability buffer (B, H, T, S) per
// call for the backward (none in inference) and recomputes nothing else.

import Foundation

extension Tensor {
    /// Scaled-dot-product attention.
    /// - q: (B, T, H, D); k, v: (B, S, KVH, D) with S ≥ T and H a multiple of KVH (query head h
    ///   reads key/value head h / (H / KVH)).
    /// - The last T keys are the queries' own positions; earlier keys (a prefix, a KV cache) are
    ///   visible to every query. With `causal`, query i sees key j when j ≤ S − T + i.
    /// - keyMask: optional (B, S) values, 0 hides that key (padding). A query that sees no key
    ///   outputs zeros.
    /// - Returns (B, T, H, D) = softmax(q kᵀ · scale + mask) v, scale defaulting to 1/√D.
    public static func attention(q q0: Tensor, k k0: Tensor, v v0: Tensor, keyMask: [Float]? = nil,
                                 causal: Bool = true, scale: Float? = nil) -> Tensor {
        check(q0.rank == 4 && k0.rank == 4 && v0.rank == 4 && k0.shape == v0.shape,
                     "[attention] needs q (B, T, H, D) and k, v (B, S, KVH, D); got q \(q0.shape), k \(k0.shape), v \(v0.shape)")
        let (B, T, H, D) = (q0.shape[0], q0.shape[1], q0.shape[2], q0.shape[3])
        let (S, KVH) = (k0.shape[1], k0.shape[2])
        check(k0.shape[0] == B && k0.shape[3] == D && S >= T && KVH > 0 && H % KVH == 0,
                     "[attention] q \(q0.shape) and k \(k0.shape) do not fit: same B and D, S ≥ T, H a multiple of KVH")
        check(keyMask == nil || keyMask!.count == B * S, "[attention] keyMask needs B·S = \(B * S) values, got \(keyMask!.count)")
        // Heads must have unit stride along D; other strides are passed to BLAS as they are.
        let q = q0.layout.strides[3] == 1 ? q0 : q0.contiguous()
        let k = k0.layout.strides[3] == 1 ? k0 : k0.contiguous()
        let v = v0.layout.strides[3] == 1 ? v0 : v0.contiguous()
        let sc = scale ?? 1 / Float(D).squareRoot()
        let group = H / KVH
        let (qs, ks, vs) = (q.layout.strides, k.layout.strides, v.layout.strides)
        let pq = UnsafePointer(q.basePointer), pk = UnsafePointer(k.basePointer), pv = UnsafePointer(v.basePointer)
        let training = Autograd.isRecording && (q.requiresGrad || k.requiresGrad || v.requiresGrad)
        // (B, H, T, S) probabilities when training; one (T, S) scratch otherwise.
        let probs = Storage(count: (training ? B * H : 1) * T * S)
        let out = Tensor.empty([B, T, H, D])
        let po = out.basePointer
        let mask = keyMask
        Profiler.measure(.attention) {
            for b in 0..<B {
                for h in 0..<H {
                    let kv = h / group
                    let p = probs.pointer + (training ? (b * H + h) * T * S : 0)
                    let qbh = pq + b * qs[0] + h * qs[2], kbh = pk + b * ks[0] + kv * ks[2], vbh = pv + b * vs[0] + kv * vs[2]
                    // scores (T, S) = scale · Q Kᵀ
                    sgemm(transA: false, transB: true, m: T, n: S, k: D, alpha: sc, a: qbh, lda: qs[1], b: kbh, ldb: ks[1],
                          beta: 0, c: p, ldc: S)
                    maskedSoftmaxRows(p, rows: T, cols: S, causal: causal, mask: mask, maskOffset: b * S)
                    // out (T, D) = P V, written into the (B, T, H, D) output with row stride H·D
                    sgemm(transA: false, transB: false, m: T, n: D, k: S, a: p, lda: S, b: vbh, ldb: vs[1],
                          beta: 0, c: po + b * T * H * D + h * D, ldc: H * D)
                }
            }
        }
        guard training else { return out }
        return make(out, op: "attention", inputs: [q, k, v]) { g in Profiler.measure(.attention) {
            let pg = UnsafePointer(g.basePointer)
            let dq = q.requiresGrad ? Tensor.empty(q.shape) : nil
            let dk = k.requiresGrad ? Tensor.zeros([B, S, KVH, D]) : nil
            let dv = v.requiresGrad ? Tensor.zeros([B, S, KVH, D]) : nil
            let dp = Storage(count: T * S)
            for b in 0..<B {
                for h in 0..<H {
                    let kv = h / group
                    let p = UnsafePointer(probs.pointer + (b * H + h) * T * S)
                    let gbh = pg + b * T * H * D + h * D  // dO (T, D), row stride H·D
                    let qbh = pq + b * qs[0] + h * qs[2], kbh = pk + b * ks[0] + kv * ks[2], vbh = pv + b * vs[0] + kv * vs[2]
                    let kvOff = b * S * KVH * D + kv * D
                    if let dv {  // dV (S, D) += Pᵀ dO
                        sgemm(transA: true, transB: false, m: S, n: D, k: T, a: p, lda: S, b: gbh, ldb: H * D,
                              beta: 1, c: dv.basePointer + kvOff, ldc: KVH * D)
                    }
                    guard dq != nil || dk != nil else { continue }
                    // dP (T, S) = dO Vᵀ, then dS = P ⊙ (dP − rowsum(dP ⊙ P)) in place.
                    sgemm(transA: false, transB: true, m: T, n: S, k: D, a: gbh, lda: H * D, b: vbh, ldb: vs[1],
                          beta: 0, c: dp.pointer, ldc: S)
                    softmaxBackwardRows(p, dp.pointer, rows: T, cols: S)
                    if let dq {  // dQ (T, D) = scale · dS K
                        sgemm(transA: false, transB: false, m: T, n: D, k: S, alpha: sc, a: dp.pointer, lda: S,
                              b: kbh, ldb: ks[1], beta: 0, c: dq.basePointer + b * T * H * D + h * D, ldc: H * D)
                    }
                    if let dk {  // dK (S, D) += scale · dSᵀ Q
                        sgemm(transA: true, transB: false, m: S, n: D, k: T, alpha: sc, a: dp.pointer, lda: S,
                              b: qbh, ldb: qs[1], beta: 1, c: dk.basePointer + kvOff, ldc: KVH * D)
                    }
                }
            }
            if let dq { q.accumulateGrad(owned: dq) }
            if let dk { k.accumulateGrad(owned: dk) }
            if let dv { v.accumulateGrad(owned: dv) }
        } }
    }
}

/// In-place softmax of each row of scores (rows × cols) over the keys a query may see.
private func maskedSoftmaxRows(_ p: UnsafeMutablePointer<Float>, rows: Int, cols: Int, causal: Bool,
                               mask: [Float]?, maskOffset: Int) {
    let shift = cols - rows
    mask.withOptionalPointer { m in
        parallelRanges(rows, cost: cols) { lo, hi in
            for i in lo..<hi {
                let row = p + i * cols
                let visible = causal ? min(cols, shift + i + 1) : cols
                if let m {  // padding: hidden keys take -inf, so their exp is 0
                    for j in 0..<visible where m[maskOffset + j] == 0 { row[j] = -.infinity }
                }
                let mx = rowMax(row, visible)
                if mx == -.infinity {  // nothing visible
                    for j in 0..<cols { row[j] = 0 }
                    continue
                }
                let inv = 1 / expShiftedSum(row, row, visible, shift: mx)
                for j in 0..<visible { row[j] *= inv }
                for j in visible..<cols { row[j] = 0 }
            }
        }
    }
}

/// dS = P ⊙ (dP − Σ_j dP ⊙ P) per row, in place in `dp`.
private func softmaxBackwardRows(_ p: UnsafePointer<Float>, _ dp: UnsafeMutablePointer<Float>, rows: Int, cols: Int) {
    parallelRanges(rows, cost: cols) { lo, hi in
        for i in lo..<hi {
            let pr = p + i * cols, dr = dp + i * cols
            var dot: Float = 0
            for j in 0..<cols { dot += pr[j] * dr[j] }
            for j in 0..<cols { dr[j] = pr[j] * (dr[j] - dot) }
        }
    }
}

extension Optional where Wrapped == [Float] {
    /// Calls `body` with a pointer to the array's storage, or nil.
    func withOptionalPointer<R>(_ body: (UnsafePointer<Float>?) -> R) -> R {
        switch self {
        case .some(let a): return a.withUnsafeBufferPointer { body($0.baseAddress) }
        case .none: return body(nil)
        }
    }
}
