// Fused causal attention with grouped-query heads over (B, T, H, D) tensors, the layout the
// projections produce, so no head permute is ever copied: each head is a strided matrix that
// cblas_sgemm reads with its leading dimension. Queries go in blocks of `queryBlock` rows, and a
// block's scores stop at the last key its last row may see, so causal attention skips the blocks
// above the diagonal. Training saves one log-sum-exp per query row (B, H, T), not the (T, S)
// probabilities: the backward recomputes each block's scores (FlashAttention-2's trade). The query
// heads of a GQA group share their keys and values, so a block's rows of every head in the group go
// through one GEMM as one (group · rows, D) matrix (gathered when the group has several heads):
// fewer, larger products than one per head. Groups and blocks run in parallel, one single-threaded
// GEMM each; the backward splits by group, whose blocks add into the same dK, dV rows. A sliding
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
    /// Key/value row j of (b, kv) in k and v.
    func kRow(_ b: Int, _ kv: Int, _ j: Int) -> UnsafePointer<Float> {
        UnsafePointer(k.basePointer) + b * k.layout.strides[0] + j * k.layout.strides[1] + kv * k.layout.strides[2]
    }
    func vRow(_ b: Int, _ kv: Int, _ j: Int) -> UnsafePointer<Float> {
        UnsafePointer(v.basePointer) + b * v.layout.strides[0] + j * v.layout.strides[1] + kv * v.layout.strides[2]
    }
    /// Keys kStart..<kEnd that some row of the block i0..<i0+rows may see.
    func keyRange(_ i0: Int, _ rows: Int) -> (kStart: Int, kEnd: Int) { (firstVisible(i0), visible(i0 + rows - 1)) }

    /// One thread's buffers: scores/P and dP of a block, (G·rows, n) each, and two (G·rows, D)
    /// matrices (the gathered queries; dO gathered, or a product on its way out).
    struct Scratch { let p, dp, a, c: UnsafeMutablePointer<Float> }

    /// Runs `tasks` in parallel over the cores, OpenBLAS single-threaded inside (one thread
    /// policy: the cores are split between tasks, never between BLAS threads and tasks).
    func parallel(_ tasks: Int, _ body: (Int, Scratch) -> Void) {
        let chunks = B * H * T * S * D >= (1 << 18) ? min(hardwareThreads, tasks) : 1
        if chunks > 1 { openblas_set_num_threads(1); insideParallelRegion = true }
        defer { if chunks > 1 { insideParallelRegion = false; openblas_set_num_threads(Int32(blasThreads)) } }
        let (scores, rowsD) = (group * blockRows * S, group * blockRows * D)
        func run(_ c: Int) {
            let buf = UnsafeMutablePointer<Float>.allocate(capacity: 2 * scores + 2 * rowsD)
            defer { buf.deallocate() }
            let s = Scratch(p: buf, dp: buf + scores, a: buf + 2 * scores, c: buf + 2 * scores + rowsD)
            for t in (tasks * c / chunks)..<(tasks * (c + 1) / chunks) { body(t, s) }
        }
        if chunks == 1 { run(0) } else { WorkerPool.shared.run(chunks) { run($0) } }
    }

    /// Rows i0..<i0+rows of the G query heads of group (b, kv) in a (B, T, H, D) tensor with strides
    /// `s`, as one (G·rows, D) matrix whose row g·rows + r is query i0 + r of head kv·G + g: the
    /// tensor itself when G is 1 (leading dimension its row stride), else gathered into `buf`. One
    /// GEMM then serves the whole group against its shared keys and values.
    func gather(_ base: UnsafePointer<Float>, strides s: [Int], b: Int, kv: Int, i0: Int, rows: Int,
                into buf: UnsafeMutablePointer<Float>) -> (UnsafePointer<Float>, Int) {
        let first = base + b * s[0] + i0 * s[1] + kv * group * s[2]
        if group == 1 { return (first, s[1]) }
        for g in 0..<group {
            for r in 0..<rows { (buf + (g * rows + r) * D).update(from: first + r * s[1] + g * s[2], count: D) }
        }
        return (UnsafePointer(buf), D)
    }

    /// Where the group's (G·rows, D) product goes in a contiguous (B, T, H, D) tensor: straight in
    /// when G is 1 (leading dimension H·D), else into `buf`, which `scatter` then copies out.
    func destination(_ base: UnsafeMutablePointer<Float>, b: Int, kv: Int, i0: Int,
                     buf: UnsafeMutablePointer<Float>) -> (UnsafeMutablePointer<Float>, Int) {
        group == 1 ? (base + (b * T + i0) * H * D + kv * D, H * D) : (buf, D)
    }

    /// Copies the group's (G·rows, D) product from `buf` into its rows of the (B, T, H, D) tensor
    /// (nothing when G is 1: `destination` sent it there already).
    func scatter(_ buf: UnsafePointer<Float>, to base: UnsafeMutablePointer<Float>, b: Int, kv: Int, i0: Int, rows: Int) {
        guard group > 1 else { return }
        for g in 0..<group {
            for r in 0..<rows { (base + ((b * T + i0 + r) * H + kv * group + g) * D).update(from: buf + (g * rows + r) * D, count: D) }
        }
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

    /// Dropout on every row of a group's (G·rows, n) block.
    func dropBlock(_ p: UnsafeMutablePointer<Float>, b: Int, kv: Int, i0: Int, rows: Int, kStart: Int, n: Int) {
        guard dropout != nil else { return }
        for g in 0..<group {
            for r in 0..<rows { dropRow(p + (g * rows + r) * n, b: b, h: kv * group + g, i: i0 + r, kStart: kStart, n: n) }
        }
    }

    /// Scores of the group's query rows (qm, (G·rows, D) as `gather` gives it) against keys
    /// kStart..<kEnd into p (G·rows, n = kEnd − kStart), turned into probabilities in place (0 where
    /// a row may not look). With `lse` given (backward) the saved log-sum-exp is used; otherwise it
    /// is computed and, when `saveLSE` is non-nil, stored there. Both are the (B, H, T) statistics.
    func probabilities(_ p: UnsafeMutablePointer<Float>, qm: UnsafePointer<Float>, ldq: Int, b: Int, kv: Int, i0: Int,
                       rows: Int, kStart: Int, kEnd: Int, lse: UnsafePointer<Float>?, saveLSE: UnsafeMutablePointer<Float>?) {
        let n = kEnd - kStart
        sgemm(transA: false, transB: true, m: group * rows, n: n, k: D, alpha: scale, a: qm, lda: ldq,
              b: kRow(b, kv, kStart), ldb: k.layout.strides[1], beta: 0, c: p, ldc: n)
        mask.withOptionalPointer { m in
            for g in 0..<group {
                let stat = (b * H + kv * group + g) * T  // this head's row of the (B, H, T) statistics
                for r in 0..<rows {
                    let i = i0 + r, block = p + (g * rows + r) * n
                    let (lo, hi) = (firstVisible(i) - kStart, visible(i) - kStart)  // this row's keys within the block's
                    let row = block + lo, count = hi - lo
                    if let m {  // padding: hidden keys take -inf, so their exp is 0
                        let rowMask = m + b * S + kStart + lo
                        for j in 0..<count where rowMask[j] == 0 { row[j] = -.infinity }
                    }
                    if let lse {  // backward: P = exp(s − lse) from the saved statistic
                        let l = lse[stat + i]
                        if l == -.infinity { for j in 0..<count { row[j] = 0 } } else {
                            for j in 0..<count { row[j] = fastExp(row[j] - l) }
                        }
                    } else {
                        let mx = rowMax(row, count)
                        if mx == -.infinity {  // nothing visible: the row outputs zeros
                            for j in 0..<count { row[j] = 0 }
                            saveLSE?[stat + i] = -.infinity
                        } else {
                            let sum = expShiftedSum(row, row, count, shift: mx)
                            let inv = 1 / sum
                            for j in 0..<count { row[j] *= inv }
                            saveLSE?[stat + i] = mx + Foundation.log(sum)
                        }
                    }
                    for j in 0..<lo { block[j] = 0 }
                    for j in hi..<n { block[j] = 0 }
                }
            }
        }
    }

    /// Tasks are (b, kv, query block), so one batch row and group still spreads over the cores.
    func forward(out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>?) {
        parallel(B * KVH * blocks) { task, s in
            let (b, kv, blk) = (task / (KVH * blocks), task / blocks % KVH, task % blocks)
            let i0 = blk * blockRows, rows = min(blockRows, T - i0)
            let (kStart, kEnd) = keyRange(i0, rows)
            let (qm, ldq) = gather(q.basePointer, strides: q.layout.strides, b: b, kv: kv, i0: i0, rows: rows, into: s.a)
            probabilities(s.p, qm: qm, ldq: ldq, b: b, kv: kv, i0: i0, rows: rows, kStart: kStart, kEnd: kEnd, lse: nil, saveLSE: lse)
            dropBlock(s.p, b: b, kv: kv, i0: i0, rows: rows, kStart: kStart, n: kEnd - kStart)
            // (G·rows, D) = P V, into the output's rows
            let (o, ldo) = destination(out, b: b, kv: kv, i0: i0, buf: s.c)
            sgemm(transA: false, transB: false, m: group * rows, n: D, k: kEnd - kStart, a: s.p, lda: kEnd - kStart,
                  b: vRow(b, kv, kStart), ldb: v.layout.strides[1], beta: 0, c: o, ldc: ldo)
            scatter(s.c, to: out, b: b, kv: kv, i0: i0, rows: rows)
        }
    }

    /// Tasks are (b, kv): every block of a group adds into the same dK, dV rows, on one thread.
    func backward(dO: UnsafePointer<Float>, lse: UnsafePointer<Float>, dq: UnsafeMutablePointer<Float>?,
                  dk: UnsafeMutablePointer<Float>?, dv: UnsafeMutablePointer<Float>?) {
        let (ks, vs) = (k.layout.strides, v.layout.strides)
        let dOStrides = [T * H * D, H * D, D, 1]  // dO is a contiguous (B, T, H, D)
        parallel(B * KVH) { task, s in
            let (b, kv) = (task / KVH, task % KVH)
            for blk in 0..<blocks {
                let i0 = blk * blockRows, rows = min(blockRows, T - i0), m = group * rows
                let (kStart, kEnd) = keyRange(i0, rows)
                let n = kEnd - kStart
                let kvOff = (b * S + kStart) * KVH * D + kv * D  // (n, D) rows of this head in dK, dV, stride KVH·D
                let (qm, ldq) = gather(q.basePointer, strides: q.layout.strides, b: b, kv: kv, i0: i0, rows: rows, into: s.a)
                let (gm, ldg) = gather(dO, strides: dOStrides, b: b, kv: kv, i0: i0, rows: rows, into: s.c)  // dO (m, D)
                probabilities(s.p, qm: qm, ldq: ldq, b: b, kv: kv, i0: i0, rows: rows, kStart: kStart, kEnd: kEnd,
                              lse: lse, saveLSE: nil)
                if let dv {  // dV (n, D) += P'ᵀ dO, P' the dropped probabilities (built in dp, free until dP)
                    var used = UnsafePointer(s.p)
                    if dropout != nil {
                        s.dp.update(from: s.p, count: m * n)
                        dropBlock(s.dp, b: b, kv: kv, i0: i0, rows: rows, kStart: kStart, n: n)
                        used = UnsafePointer(s.dp)
                    }
                    sgemm(transA: true, transB: false, m: n, n: D, k: m, a: used, lda: n, b: gm, ldb: ldg,
                          beta: 1, c: dv + kvOff, ldc: KVH * D)
                }
                guard dq != nil || dk != nil else { continue }
                // dP (m, n) = dO Vᵀ (through the dropout mask), then dS = P ⊙ (dP − rowsum(dP ⊙ P)) in place.
                sgemm(transA: false, transB: true, m: m, n: n, k: D, a: gm, lda: ldg, b: vRow(b, kv, kStart), ldb: vs[1],
                      beta: 0, c: s.dp, ldc: n)
                dropBlock(s.dp, b: b, kv: kv, i0: i0, rows: rows, kStart: kStart, n: n)
                for row in 0..<m {
                    let pr = s.p + row * n, dr = s.dp + row * n
                    let dot = rowDot(pr, dr, n)
                    for j in 0..<n { dr[j] = pr[j] * (dr[j] - dot) }
                }
                if let dq {  // dQ (m, D) = scale · dS K (dO's gathered copy in s.c is no longer read)
                    let (o, ldo) = destination(dq, b: b, kv: kv, i0: i0, buf: s.c)
                    sgemm(transA: false, transB: false, m: m, n: D, k: n, alpha: scale, a: s.dp, lda: n,
                          b: kRow(b, kv, kStart), ldb: ks[1], beta: 0, c: o, ldc: ldo)
                    scatter(s.c, to: dq, b: b, kv: kv, i0: i0, rows: rows)
                }
                if let dk {  // dK (n, D) += scale · dSᵀ Q
                    sgemm(transA: true, transB: false, m: n, n: D, k: m, alpha: scale, a: s.dp, lda: n,
                          b: qm, ldb: ldq, beta: 1, c: dk + kvOff, ldc: KVH * D)
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
