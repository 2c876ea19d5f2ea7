// Fused causal attention with grouped-query heads over (B, T, H, D) tensors, the layout the
// projections produce, so no head permute is ever copied: each head is a strided matrix that
// cblas_sgemm reads with its leading dimension. Queries go in blocks of `queryBlock` rows, and a
// block's scores stop at the last key its last row may see, so causal attention skips the blocks
// above the diagonal. Training saves one log-sum-exp per query row (B, H, T), not the (T, S)
// probabilities: the backward recomputes each block's scores (FlashAttention-2's trade). Heads run
// in parallel, one single-threaded GEMM per block; the backward splits by key/value head, so the
// query heads of a GQA group that add into the same dK, dV rows run on one thread. A sliding
// window (Mistral) also bounds each block's keys from below, so the blocks it hides are skipped too.
// Dropout on the probabilities (GPT-2's attn_pdrop) draws each entry's mask from a hash of a seed and
// the entry's index, so the backward regenerates the forward's mask without storing it.

import CBLAS
import Foundation

/// Query rows per block (tests lower it to exercise several blocks on small inputs).
nonisolated(unsafe) var attentionQueryBlock = 64

extension Tensor {
    /// Scaled-dot-product attention.
    /// - q: (B, T, H, D); k, v: (B, S, KVH, D) with S ≥ T and H a multiple of KVH (query head h
    ///   reads key/value head h / (H / KVH)).
    /// - The last T keys are the queries' own positions; earlier keys (a prefix, a KV cache) are
    ///   visible to every query unless a window hides them. With `causal`, query i sees key j when
    ///   j ≤ S − T + i.
    /// - window: a sliding window (Mistral's `sliding_window`): query i also needs
    ///   j > S − T + i − window, so it sees at most `window` keys, its own included. Key indexes are
    ///   positions, prefix and cache included. Needs `causal`; nil: no lower bound.
    /// - dropout: while training, each probability is zeroed with chance `rate` and the rest are
    ///   scaled by 1/(1 − rate). Entry (b, h, i, j) is kept when `attentionDropoutKeeps(seed:index:rate:)`
    ///   says so for index ((b·H + h)·T + i)·S + j, the same in the backward pass.
    /// - keyMask: optional (B, S) values, 0 hides that key (padding). A query that sees no key
    ///   outputs zeros.
    /// - Returns (B, T, H, D) = softmax(q kᵀ · scale + mask) v, scale defaulting to 1/√D.
    public static func attention(q q0: Tensor, k k0: Tensor, v v0: Tensor, keyMask: [Float]? = nil,
                                 causal: Bool = true, window: Int? = nil, dropout: (rate: Float, seed: UInt64)? = nil,
                                 scale: Float? = nil) -> Tensor {
        check(q0.rank == 4 && k0.rank == 4 && v0.rank == 4 && k0.shape == v0.shape,
                     "[attention] needs q (B, T, H, D) and k, v (B, S, KVH, D); got q \(q0.shape), k \(k0.shape), v \(v0.shape)")
        let (B, T, H, D) = (q0.shape[0], q0.shape[1], q0.shape[2], q0.shape[3])
        let (S, KVH) = (k0.shape[1], k0.shape[2])
        check(k0.shape[0] == B && k0.shape[3] == D && S >= T && KVH > 0 && H % KVH == 0,
                     "[attention] q \(q0.shape) and k \(k0.shape) do not fit: same B and D, S ≥ T, H a multiple of KVH")
        check(keyMask == nil || keyMask!.count == B * S, "[attention] keyMask needs B·S = \(B * S) values, got \(keyMask!.count)")
        check(window == nil || (causal && window! > 0), "[attention] a sliding window needs causal attention and a positive size, got \(window!)")
        check(dropout == nil || (dropout!.rate >= 0 && dropout!.rate < 1), "[attention] dropout rate \(dropout!.rate) is not in [0, 1)")
        // Heads must have unit stride along D; other strides are passed to BLAS as they are.
        let q = q0.layout.strides[3] == 1 ? q0 : q0.contiguous()
        let k = k0.layout.strides[3] == 1 ? k0 : k0.contiguous()
        let v = v0.layout.strides[3] == 1 ? v0 : v0.contiguous()
        let geo = AttentionGeometry(B: B, T: T, H: H, D: D, S: S, KVH: KVH, causal: causal, window: window,
                                    dropout: dropout.flatMap { $0.rate > 0 ? $0 : nil },
                                    scale: scale ?? 1 / Float(D).squareRoot(), q: q, k: k, v: v, mask: keyMask)
        let training = Autograd.isRecording && (q.requiresGrad || k.requiresGrad || v.requiresGrad)
        let lse = training ? Storage(count: B * H * T) : nil  // (B, H, T) log-sum-exp per query row
        let out = Tensor.empty([B, T, H, D])
        Profiler.measure(.attention) { geo.forward(out: out.basePointer, lse: lse?.pointer) }
        guard training, let lse else { return out }
        return make(out, op: "attention", inputs: [q, k, v]) { g in
            Profiler.measure(.attention) {
                let dq = q.requiresGrad ? Tensor.empty(q.shape) : nil
                let dk = k.requiresGrad ? Tensor.zeros([B, S, KVH, D]) : nil
                let dv = v.requiresGrad ? Tensor.zeros([B, S, KVH, D]) : nil
                geo.backward(dO: UnsafePointer(g.basePointer), lse: UnsafePointer(lse.pointer),
                             dq: dq?.basePointer, dk: dk?.basePointer, dv: dv?.basePointer)
                if let dq { q.accumulateGrad(owned: dq) }
                if let dk { k.accumulateGrad(owned: dk) }
                if let dv { v.accumulateGrad(owned: dv) }
            }
        }
    }
}

/// Shapes, strides and pointers of one attention call, and its forward and backward loops.
private struct AttentionGeometry {
    let B: Int, T: Int, H: Int, D: Int, S: Int, KVH: Int
    let causal: Bool
    let window: Int?
    let dropout: (rate: Float, seed: UInt64)?
    let scale: Float
    let q: Tensor, k: Tensor, v: Tensor
    let mask: [Float]?

    init(B: Int, T: Int, H: Int, D: Int, S: Int, KVH: Int, causal: Bool, window: Int?, dropout: (rate: Float, seed: UInt64)?,
         scale: Float, q: Tensor, k: Tensor, v: Tensor, mask: [Float]?) {
        (self.B, self.T, self.H, self.D, self.S, self.KVH) = (B, T, H, D, S, KVH)
        (self.causal, self.window, self.dropout, self.scale) = (causal, window, dropout, scale)
        (self.q, self.k, self.v, self.mask) = (q, k, v, mask)
    }

    var group: Int { H / KVH }
    var blockRows: Int { max(1, min(T, attentionQueryBlock)) }
    var blocks: Int { (T + blockRows - 1) / blockRows }
    /// Keys query row i may see (before padding): the prefix and positions up to its own.
    func visible(_ i: Int) -> Int { causal ? min(S, S - T + i + 1) : S }
    /// First key query row i may see: 0, or the start of its sliding window.
    func firstVisible(_ i: Int) -> Int { window.map { max(0, S - T + i - $0 + 1) } ?? 0 }
    /// Query row of (b, h, i) in q; key/value row j of (b, kv) in k and v.
    func qRow(_ b: Int, _ h: Int, _ i: Int) -> UnsafePointer<Float> {
        UnsafePointer(q.basePointer) + b * q.layout.strides[0] + i * q.layout.strides[1] + h * q.layout.strides[2]
    }
    func kRow(_ b: Int, _ kv: Int, _ j: Int) -> UnsafePointer<Float> {
        UnsafePointer(k.basePointer) + b * k.layout.strides[0] + j * k.layout.strides[1] + kv * k.layout.strides[2]
    }
    func vRow(_ b: Int, _ kv: Int, _ j: Int) -> UnsafePointer<Float> {
        UnsafePointer(v.basePointer) + b * v.layout.strides[0] + j * v.layout.strides[1] + kv * v.layout.strides[2]
    }
    /// Keys kStart..<kEnd that some row of the block i0..<i0+rows may see.
    func keyRange(_ i0: Int, _ rows: Int) -> (kStart: Int, kEnd: Int) { (firstVisible(i0), visible(i0 + rows - 1)) }

    /// Runs `tasks` in parallel over the cores, OpenBLAS single-threaded inside (one thread
    /// policy: the cores are split between tasks, never between BLAS threads and tasks).
    func parallel(_ tasks: Int, _ body: (Int, UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>) -> Void) {
        let work = tasks * T * S * D
        let chunks = work >= (1 << 18) ? min(hardwareThreads, tasks) : 1
        if chunks > 1 { openblas_set_num_threads(1); insideParallelRegion = true }
        defer { if chunks > 1 { insideParallelRegion = false; openblas_set_num_threads(Int32(blasThreads)) } }
        let scratchCount = blockRows * S
        func run(_ c: Int) {
            let scores = UnsafeMutablePointer<Float>.allocate(capacity: 2 * scratchCount)  // scores/P and dP of one block
            defer { scores.deallocate() }
            for t in (tasks * c / chunks)..<(tasks * (c + 1) / chunks) { body(t, scores, scores + scratchCount) }
        }
        if chunks == 1 { run(0) } else { WorkerPool.shared.run(chunks) { run($0) } }
    }

    /// Dropout on row i of head (b, h) over keys kStart..<kStart+n, in place: dropped entries 0,
    /// kept ones scaled by 1/(1 − rate). Nothing without dropout.
    func dropRow(_ row: UnsafeMutablePointer<Float>, b: Int, h: Int, i: Int, kStart: Int, n: Int) {
        guard let (rate, seed) = dropout else { return }
        let scaleKept = 1 / (1 - rate), first = UInt64(((b * H + h) * T + i) * S + kStart)
        for j in 0..<n {
            row[j] = attentionDropoutKeeps(seed: seed, index: first + UInt64(j), rate: rate) ? row[j] * scaleKept : 0
        }
    }

    /// Scores of query rows i0..<i0+rows of head (b, h) against keys kStart..<kEnd into p (rows, n =
    /// kEnd − kStart), turned into probabilities in place (0 where a row may not look). With `lse`
    /// given (backward) the saved log-sum-exp is used; otherwise it is computed and, when `saveLSE`
    /// is non-nil, stored there.
    func probabilities(_ p: UnsafeMutablePointer<Float>, b: Int, h: Int, i0: Int, rows: Int, kStart: Int, kEnd: Int,
                       lse: UnsafePointer<Float>?, saveLSE: UnsafeMutablePointer<Float>?) {
        let n = kEnd - kStart
        sgemm(transA: false, transB: true, m: rows, n: n, k: D, alpha: scale, a: qRow(b, h, i0), lda: q.layout.strides[1],
              b: kRow(b, h / group, kStart), ldb: k.layout.strides[1], beta: 0, c: p, ldc: n)
        mask.withOptionalPointer { m in
            for r in 0..<rows {
                let i = i0 + r
                let (lo, hi) = (firstVisible(i) - kStart, visible(i) - kStart)  // this row's keys within the block's
                let row = p + r * n + lo, count = hi - lo
                if let m {  // padding: hidden keys take -inf, so their exp is 0
                    let rowMask = m + b * S + kStart + lo
                    for j in 0..<count where rowMask[j] == 0 { row[j] = -.infinity }
                }
                if let lse {  // backward: P = exp(s − lse) from the saved statistic
                    let l = lse[i]
                    if l == -.infinity { for j in 0..<count { row[j] = 0 } } else {
                        for j in 0..<count { row[j] = fastExp(row[j] - l) }
                    }
                } else {
                    let mx = rowMax(row, count)
                    if mx == -.infinity {  // nothing visible: the row outputs zeros
                        for j in 0..<count { row[j] = 0 }
                        saveLSE?[i] = -.infinity
                    } else {
                        let sum = expShiftedSum(row, row, count, shift: mx)
                        let inv = 1 / sum
                        for j in 0..<count { row[j] *= inv }
                        saveLSE?[i] = mx + Foundation.log(sum)
                    }
                }
                for j in 0..<lo { p[r * n + j] = 0 }
                for j in hi..<n { p[r * n + j] = 0 }
            }
        }
    }

    func forward(out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>?) {
        parallel(B * H) { task, p, _ in
            let (b, h) = (task / H, task % H)
            for blk in 0..<blocks {
                let i0 = blk * blockRows, rows = min(blockRows, T - i0)
                let (kStart, kEnd) = keyRange(i0, rows)
                probabilities(p, b: b, h: h, i0: i0, rows: rows, kStart: kStart, kEnd: kEnd, lse: nil,
                              saveLSE: lse.map { $0 + (b * H + h) * T })
                if dropout != nil {
                    for r in 0..<rows { dropRow(p + r * (kEnd - kStart), b: b, h: h, i: i0 + r, kStart: kStart, n: kEnd - kStart) }
                }
                // out rows (rows, D) = P V, into the (B, T, H, D) output with row stride H·D
                sgemm(transA: false, transB: false, m: rows, n: D, k: kEnd - kStart, a: p, lda: kEnd - kStart,
                      b: vRow(b, h / group, kStart), ldb: v.layout.strides[1], beta: 0, c: out + (b * T + i0) * H * D + h * D, ldc: H * D)
            }
        }
    }

    func backward(dO: UnsafePointer<Float>, lse: UnsafePointer<Float>, dq: UnsafeMutablePointer<Float>?,
                  dk: UnsafeMutablePointer<Float>?, dv: UnsafeMutablePointer<Float>?) {
        let (qs, ks, vs) = (q.layout.strides, k.layout.strides, v.layout.strides)
        parallel(B * KVH) { task, p, dp in
            let (b, kv) = (task / KVH, task % KVH)
            for h in (kv * group)..<((kv + 1) * group) {
                for blk in 0..<blocks {
                    let i0 = blk * blockRows, rows = min(blockRows, T - i0)
                    let (kStart, kEnd) = keyRange(i0, rows)
                    let n = kEnd - kStart
                    let kvOff = (b * S + kStart) * KVH * D + kv * D  // (n, D) rows of this head in dK, dV, stride KVH·D
                    let gRows = dO + (b * T + i0) * H * D + h * D  // dO (rows, D), row stride H·D
                    probabilities(p, b: b, h: h, i0: i0, rows: rows, kStart: kStart, kEnd: kEnd,
                                  lse: lse + (b * H + h) * T, saveLSE: nil)
                    if let dv {  // dV (n, D) += P'ᵀ dO, P' the dropped probabilities (built in dp, free until dP)
                        var used = UnsafePointer(p)
                        if dropout != nil {
                            dp.update(from: p, count: rows * n)
                            for r in 0..<rows { dropRow(dp + r * n, b: b, h: h, i: i0 + r, kStart: kStart, n: n) }
                            used = UnsafePointer(dp)
                        }
                        sgemm(transA: true, transB: false, m: n, n: D, k: rows, a: used, lda: n, b: gRows, ldb: H * D,
                              beta: 1, c: dv + kvOff, ldc: KVH * D)
                    }
                    guard dq != nil || dk != nil else { continue }
                    // dP (rows, n) = dO Vᵀ (through the dropout mask), then dS = P ⊙ (dP − rowsum(dP ⊙ P)) in place.
                    sgemm(transA: false, transB: true, m: rows, n: n, k: D, a: gRows, lda: H * D, b: vRow(b, kv, kStart), ldb: vs[1],
                          beta: 0, c: dp, ldc: n)
                    for r in 0..<rows {
                        let pr = p + r * n, dr = dp + r * n
                        dropRow(dr, b: b, h: h, i: i0 + r, kStart: kStart, n: n)
                        let dot = rowDot(pr, dr, n)
                        for j in 0..<n { dr[j] = pr[j] * (dr[j] - dot) }
                    }
                    if let dq {  // dQ (rows, D) = scale · dS K
                        sgemm(transA: false, transB: false, m: rows, n: D, k: n, alpha: scale, a: dp, lda: n,
                              b: kRow(b, kv, kStart), ldb: ks[1], beta: 0, c: dq + (b * T + i0) * H * D + h * D, ldc: H * D)
                    }
                    if let dk {  // dK (n, D) += scale · dSᵀ Q
                        sgemm(transA: true, transB: false, m: n, n: D, k: rows, alpha: scale, a: dp, lda: n,
                              b: qRow(b, h, i0), ldb: qs[1], beta: 1, c: dk + kvOff, ldc: KVH * D)
                    }
                }
            }
        }
    }
}

/// Whether attention dropout keeps entry `index` for `seed`: SplitMix64's mix of the two, its top 24
/// bits against `rate` (a counter-based draw: any thread, any order, the same answer).
@inline(__always)
func attentionDropoutKeeps(seed: UInt64, index: UInt64, rate: Float) -> Bool {
    var z = seed &+ (index &+ 1) &* 0x9E37_79B9_7F4A_7C15
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    z ^= z >> 31
    return Float(z >> 40) >= rate * 16_777_216
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
