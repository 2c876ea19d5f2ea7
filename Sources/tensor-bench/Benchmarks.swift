// The benchmark sections: GEMM throughput (raw cblas_sgemm against the Tensor matmul path,
// forward and backward), memory bandwidth of the elementwise / fused NN kernels against memcpy,
// and the fused attention at training shapes.

import CBLAS
import Dispatch
import Foundation
import TensorCore

// MARK: - matmul

/// One GEMM problem: X is (m, k), the weight maps k → n, the output is (m, n).
struct MatmulShape {
    let m: Int, k: Int, n: Int
    var label: String { "\(m)×\(k)×\(n)" }
    /// 2·M·K·N, the flops of one product of this shape (each gradient GEMM has the same count).
    var flops: Double { 2 * Double(m) * Double(k) * Double(n) }
}

/// Row-major cblas_sgemm, alpha 1, beta 0: C (m×n) = op(A) (m×k) · op(B) (k×n).
@inline(__always)
func rawSgemm(_ ta: Bool, _ tb: Bool, _ m: Int, _ n: Int, _ k: Int,
              _ a: UnsafePointer<Float>, _ lda: Int, _ b: UnsafePointer<Float>, _ ldb: Int,
              _ c: UnsafeMutablePointer<Float>, _ ldc: Int) {
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                Int32(m), Int32(n), Int32(k), 1, a, Int32(lda), b, Int32(ldb), 0, c, Int32(ldc))
}

/// A contiguous tensor filled with values in [-1, 1).
func randomTensor(_ shape: [Int], seed: UInt64) -> Tensor {
    let t = Tensor.empty(shape)
    fillRandom(t.basePointer, t.count, seed: seed)
    return t
}

/// Runs the matmul section and returns the forward and backward tables.
func matmulTables(_ shapes: [MatmulShape], timing: Timing, progress: (String) -> Void) -> (Table, Table) {
    var fwd = Table(
        title: "matmul forward, GFLOP/s (2·M·K·N / median time)",
        headers: ["M×K×N", "raw NN", "x.matmul(w)", "tensor/raw", "raw NT", "x.matmul(wᵀ)", "tensor/raw", "faults/call"])
    fwd.notes = [
        "x is (M, K); w is (K, N) for x.matmul(w); for the linear form w is (N, K) and x.matmul(w.transposed()) "
            + "passes it to sgemm with a transpose flag (no copy). raw NN / raw NT: cblas_sgemm on the same "
            + "operands into a reused output buffer.",
        "Tensor path: inputs do not require a gradient (no graph); each call allocates its (M, N) output. "
            + "faults/call: median minor page faults during one x.matmul(w) call (fresh pages from the kernel "
            + "for that output; 0 when malloc reuses freed memory).",
        "GFLOP/s columns use each case's median time. tensor/raw is the median over repetitions of the "
            + "per-repetition time ratio raw/tensor: the cases alternate within every repetition, so a slow "
            + "phase of a shared machine affects both sides of the ratio alike.",
    ]
    var bwd = Table(
        title: "matmul backward, GFLOP/s (dX and dW GEMMs: 4·M·K·N / median time)",
        headers: ["M×K×N", "form", "raw dX", "raw dW", "raw dX+dW", "tensor backward", "tensor/raw",
                  "excl. seed", "faults/call"],
        leftAligned: [0, 1])
    bwd.notes = [
        "x·w (w is (K, N)): dX = dY·Wᵀ (M×K), dW = Xᵀ·dY (K×N). x·wᵀ (w is (N, K), transposed view): "
            + "dX = dY·W, dW (stored N×K) = dYᵀ·X. raw: cblas_sgemm of those two products into reused "
            + "buffers, each timed on its own; raw dX+dW is 4·M·K·N over the median of their summed times.",
        "tensor backward: x and w require a gradient; before each run (untimed) the grads are cleared and "
            + "the forward is rebuilt; the timed region is y.backward(dY) alone. That includes backward()'s "
            + "own handling of the (M, N) seed dY (copies into fresh buffers) and fresh gradient buffers for "
            + "x and w. tensor/raw: paired per-repetition ratio, as above.",
        "excl. seed: the same ratio with the seed handling subtracted run by run; it is timed as "
            + "leaf.backward(dY) on an (M, N) leaf, interleaved with the others. In a training step the "
            + "matmul's upstream gradient comes from another op's pullback and only the scalar loss is "
            + "seeded, so this column is the one that carries over. faults/call: median minor page faults "
            + "during one tensor backward.",
    ]

    for (si, s) in shapes.enumerated() {
        progress("matmul \(si + 1)/\(shapes.count): \(s.label)")
        let (m, k, n) = (s.m, s.k, s.n)
        let x = randomTensor([m, k], seed: 1)
        let w = randomTensor([k, n], seed: 2)    // (K, N): x.matmul(w)
        let wl = randomTensor([n, k], seed: 3)   // (N, K): x.matmul(wl.transposed())
        let dY = randomTensor([m, n], seed: 4)
        // Raw output / gradient buffers, allocated once and touched before timing.
        let y = Tensor.zeros([m, n]), dX = Tensor.zeros([m, k]), dW = Tensor.zeros([k, n]), dWl = Tensor.zeros([n, k])
        let px = UnsafePointer(x.basePointer), pw = UnsafePointer(w.basePointer), pwl = UnsafePointer(wl.basePointer)
        let pdy = UnsafePointer(dY.basePointer)
        let py = y.basePointer, pdx = dX.basePointer, pdw = dW.basePointer, pdwl = dWl.basePointer

        // Forward: the four cases alternate within each repetition.
        let f = timing.interleaved([
            .init { rawSgemm(false, false, m, n, k, px, k, pw, n, py, n) },
            .init { consume(x.matmul(w)) },
            .init { rawSgemm(false, true, m, n, k, px, k, pwl, k, py, n) },
            .init { consume(x.matmul(wl.transposed())) },
        ])
        let gf = { (t: Double) in s.flops / t / 1e9 }
        fwd.add([s.label, fmt(gf(f.t(0))), fmt(gf(f.t(1))), pct(pairedRatio(f.times[0], f.times[1])),
                 fmt(gf(f.t(2))), fmt(gf(f.t(3))), pct(pairedRatio(f.times[2], f.times[3])), String(f.f(1))])

        // Backward: graph-tracking views of the same data, and an (M, N) leaf to time the seed handling.
        let xg = x.detached(), wg = w.detached(), wlg = wl.detached(), seedLeaf = dY.detached()
        for t in [xg, wg, wlg, seedLeaf] { t.requiresGrad = true }
        var out: Tensor?
        let seedCase = Timing.Case(setup: { seedLeaf.zeroGrad() }) { seedLeaf.backward(dY) }
        // Matmul form y = x·w: dX = dY·Wᵀ, dW = Xᵀ·dY.
        let b = timing.interleaved([
            .init { rawSgemm(false, true, m, k, n, pdy, n, pw, n, pdx, k) },
            .init { rawSgemm(true, false, k, n, m, px, k, pdy, n, pdw, n) },
            .init(setup: { out = nil; xg.zeroGrad(); wg.zeroGrad(); out = xg.matmul(wg) }) { out!.backward(dY) },
            seedCase,
        ])
        // Linear form y = x·wlᵀ: dX = dY·W, dW (N×K) = dYᵀ·X.
        let l = timing.interleaved([
            .init { rawSgemm(false, false, m, k, n, pdy, n, pwl, k, pdx, k) },
            .init { rawSgemm(true, false, n, k, m, pdy, n, px, k, pdwl, k) },
            .init(setup: { out = nil; xg.zeroGrad(); wlg.zeroGrad(); out = xg.matmul(wlg.transposed()) }) {
                out!.backward(dY)
            },
            seedCase,
        ])
        out = nil
        for t in [xg, wg, wlg, seedLeaf] { t.zeroGrad() }

        for (form, r) in [("x·w", b), ("x·wᵀ", l)] {
            let raw = addTimes(r.times[0], r.times[1])
            let exclSeed = zip(r.times[2], r.times[3]).map { $0 - $1 }
            bwd.add([s.label, form, fmt(gf(r.t(0))), fmt(gf(r.t(1))), fmt(2 * s.flops / median(raw) / 1e9),
                     fmt(2 * s.flops / r.t(2) / 1e9), pct(pairedRatio(raw, r.times[2])),
                     pct(pairedRatio(raw, exclSeed)), String(r.f(2))])
        }
        withExtendedLifetime((y, dX, dW, dWl)) {}
    }
    return (fwd, bwd)
}

// MARK: - bandwidth

/// memcpy of `bytes` bytes, split over the cores the same way the library's kernels split rows.
func parallelMemcpy(_ dst: UnsafeMutableRawPointer, _ src: UnsafeRawPointer, _ bytes: Int, chunks: Int) {
    if chunks <= 1 { memcpy(dst, src, bytes); return }
    parallelFor(bytes) { lo, hi in memcpy(dst + lo, src + lo, hi - lo) }  // the kernels' worker pool
}

/// Runs the bandwidth section on each (rows, cols) shape.
func bandwidthTable(_ shapes: [(Int, Int)], timing: Timing, progress: (String) -> Void) -> Table {
    let cores = ProcessInfo.processInfo.activeProcessorCount
    var table = Table(
        title: "elementwise / fused kernels, GB/s (bytes moved / median time) vs memcpy",
        headers: ["R×C", "op", "MB moved", "time", "G elem/s", "GB/s", "memcpy GB/s", "op/memcpy", "faults/call"],
        leftAligned: [0, 1])
    table.notes = [
        "Bytes moved = float32 inputs read + outputs written, once each (the minimum any implementation "
            + "must move), with N = R·C: add, mul 12N (a, b read, out written); gelu, softmax, layerNorm, "
            + "rmsNorm forward 8N (+ per-column params and per-row saved statistics); crossEntropy forward 4N "
            + "+ 4R (targets) + 4R (row log-sum-exp saved); swiglu 12N (gate, up read, out written). "
            + "swiglu backward 20N (gate, up, dY read, dGate, dUp written). G elem/s: R·C / median time. Backward: add 12N (dY read, dA and dB written); "
            + "gelu, layerNorm, rmsNorm 12N (x, dY read, dX written; + params, statistics, dW, dB); softmax "
            + "12N (y, dY read, dX written); crossEntropy 8N + 8R (logits and row stats read, dlogits "
            + "written; its seed is the scalar loss); seed handling 8N (dY read, x.grad written).",
        "memcpy GB/s: memcpy of bytes-moved/2 bytes (read + write = the op's bytes moved), split into "
            + "\(cores) chunks over \(cores) threads like the library's kernels (its worker pool); "
            + "its GB/s counts read + write. It runs alternately with the op; op/memcpy is the median of "
            + "the per-repetition time ratios (above 100% when the op's data stays in cache across runs).",
        "Forward rows time the op call (it allocates its output). Backward rows: before each run "
            + "(untimed) the forward is rebuilt with x requiring a gradient; the timed region is "
            + "y.backward(dY). That includes backward()'s handling of the (R, C) seed dY, which the "
            + "\"backward() seed handling\" row times alone (leaf.backward(dY)); subtract it to get the "
            + "pullback. layerNorm / rmsNorm weight and bias are frozen (PEFT) except in the (dX, dW, dB) "
            + "row. gelu = tanh approximation unless marked erf.",
        "faults/call: median minor page faults during one timed call: fresh pages from the kernel, "
            + "where malloc gave freed buffers back to the system instead of reusing them.",
    ]

    // memcpy buffers large enough for the largest op (swiglu bwd: bytes-moved/2 = 10·N bytes).
    let maxN = shapes.map { $0.0 * $0.1 }.max() ?? 0
    let bufBytes = 10 * maxN + 64
    let srcBuf = UnsafeMutableRawPointer.allocate(byteCount: bufBytes, alignment: 64)
    let dstBuf = UnsafeMutableRawPointer.allocate(byteCount: bufBytes, alignment: 64)
    memset(srcBuf, 1, bufBytes)
    memset(dstBuf, 2, bufBytes)
    defer { srcBuf.deallocate(); dstBuf.deallocate() }
    /// Times `op` interleaved with a memcpy that moves the same bytes and adds the row.
    func measure(_ label: String, _ name: String, _ moved: Int, elements: Int, _ op: Timing.Case) {
        let bytes = moved / 2
        precondition(bytes + 64 <= bufBytes, "[tensor-bench] \(name) moves more than the memcpy buffers hold")
        let r = timing.interleaved([.init { parallelMemcpy(dstBuf, srcBuf, bytes, chunks: cores) }, op])
        let gbs = Double(moved) / r.t(1) / 1e9, ref = Double(2 * bytes) / r.t(0) / 1e9
        table.add([label, name, fmt(Double(moved) / 1e6), fmtTime(r.t(1)), fmt(Double(elements) / r.t(1) / 1e9), fmt(gbs), fmt(ref),
                   pct(pairedRatio(r.times[0], r.times[1])), String(r.f(1))])
    }

    for (si, (r, c)) in shapes.enumerated() {
        progress("bandwidth \(si + 1)/\(shapes.count): \(r)×\(c)")
        let nEl = r * c
        let label = "\(r)×\(c)"
        let a = randomTensor([r, c], seed: 11), b = randomTensor([r, c], seed: 12)
        let dy = randomTensor([r, c], seed: 13)
        let lw = randomTensor([c], seed: 14), lb = randomTensor([c], seed: 15)
        let targets = (0..<r).map { Int32(($0 &* 7919) % c) }
        let xg = a.detached(), bg = b.detached(), lwg = lw.detached(), lbg = lb.detached()
        xg.requiresGrad = true

        func fwd(_ name: String, _ moved: Int, _ body: @escaping () -> Tensor) {
            measure(label, name, moved, elements: nEl, .init { consume(body()) })
        }
        /// Times y.backward(seed) for y = build(); `clear` resets the gradients of every leaf involved.
        func bwd(_ name: String, _ moved: Int, seed: Tensor?, clear: @escaping () -> Void, _ build: @escaping () -> Tensor) {
            var y: Tensor?
            measure(label, name, moved, elements: nEl, .init(setup: { y = nil; clear(); y = build() }) { y!.backward(seed) })
            y = nil
            clear()
        }
        let f = 4 * nEl  // bytes of one (R, C) float32 tensor

        fwd("add a+b", 3 * f) { a + b }
        fwd("mul a*b", 3 * f) { a * b }
        fwd("gelu fwd", 2 * f) { a.geluTanh() }
        fwd("gelu (erf) fwd", 2 * f) { a.gelu() }
        fwd("softmax fwd", 2 * f) { a.softmax() }
        fwd("layerNorm fwd", 2 * f + 8 * c + 8 * r) { a.layerNorm(weight: lw, bias: lb) }
        fwd("rmsNorm fwd", 2 * f + 4 * c + 4 * r) { a.rmsNorm(weight: lw) }
        fwd("crossEntropy fwd", f + 8 * r) { a.crossEntropy(targets: targets) }
        fwd("swiglu fwd", 3 * f) { Tensor.swiglu(gate: a, up: b) }

        let clearX = { xg.zeroGrad() }
        bwd("backward() seed handling", 2 * f, seed: dy, clear: clearX) { xg }
        bwd("add bwd", 3 * f, seed: dy, clear: { xg.zeroGrad(); bg.zeroGrad() }) {
            bg.requiresGrad = true
            return xg + bg
        }
        bg.requiresGrad = false
        bwd("gelu bwd", 3 * f, seed: dy, clear: clearX) { xg.geluTanh() }
        bwd("softmax bwd", 3 * f, seed: dy, clear: clearX) { xg.softmax() }
        bwd("layerNorm bwd (dX)", 3 * f + 8 * c + 8 * r, seed: dy, clear: clearX) { xg.layerNorm(weight: lw, bias: lb) }
        bwd("layerNorm bwd (dX, dW, dB)", 3 * f + 16 * c + 8 * r, seed: dy,
            clear: { xg.zeroGrad(); lwg.zeroGrad(); lbg.zeroGrad() }) {
            lwg.requiresGrad = true
            lbg.requiresGrad = true
            return xg.layerNorm(weight: lwg, bias: lbg)
        }
        bwd("rmsNorm bwd (dX)", 3 * f + 4 * c + 4 * r, seed: dy, clear: clearX) { xg.rmsNorm(weight: lw) }
        bwd("crossEntropy bwd", 2 * f + 8 * r, seed: nil, clear: clearX) { xg.crossEntropy(targets: targets) }
        bwd("swiglu bwd", 5 * f, seed: dy, clear: { xg.zeroGrad(); bg.zeroGrad() }) {
            bg.requiresGrad = true
            return Tensor.swiglu(gate: xg, up: bg)
        }
        bg.requiresGrad = false
    }
    return table
}

// MARK: - attention

/// One fused causal attention call: q (B, T, H, D), k and v (B, T, KVH, D).
struct AttentionShape {
    let name: String, b: Int, t: Int, h: Int, kvh: Int, d: Int
    var label: String { "\(name) B\(b) T\(t) H\(h)/\(kvh) D\(d)" }
    /// Flops of one causal product (q kᵀ, P v, and each gradient product): the visible half of
    /// the (T, T) square, 2·B·H·D·T(T+1)/2. The forward runs two, the backward five (four
    /// gradient products and the recomputed scores).
    var productFlops: Double { Double(b * h * d) * Double(t * (t + 1)) }
}

/// The fused attention at the bench configs' shapes, forward alone (no graph) and forward +
/// backward (a gradient for q, k and v), in GFLOP/s of the causal products. The threads split the
/// heads and query blocks; OpenBLAS runs single-threaded inside.
func attentionTable(_ shapes: [AttentionShape], timing: Timing, progress: (String) -> Void) -> Table {
    var table = Table(title: "Fused causal attention (GQA groups share one GEMM per block)",
                      headers: ["shape", "forward", "GFLOP/s", "forward + backward", "GFLOP/s", "faults/run"])
    table.notes = ["GFLOP/s over the causal products only: forward 2, backward 5 (dV, dP, dQ, dK and the recomputed scores), "
                   + "each 2·B·H·D·T(T+1)/2; softmax, gathers and copies add time but no flops"]
    for (i, s) in shapes.enumerated() {
        progress("attention \(i + 1)/\(shapes.count): \(s.label)")
        let q = randomTensor([s.b, s.t, s.h, s.d], seed: 21), k = randomTensor([s.b, s.t, s.kvh, s.d], seed: 22)
        let v = randomTensor([s.b, s.t, s.kvh, s.d], seed: 23), dO = randomTensor([s.b, s.t, s.h, s.d], seed: 24)
        for x in [q, k, v] { x.requiresGrad = true }
        var out: Tensor?
        let r = timing.interleaved([
            .init { consume(withNoGrad { Tensor.attention(q: q, k: k, v: v) }) },
            .init(setup: { for x in [q, k, v] { x.zeroGrad() } }) {
                out = Tensor.attention(q: q, k: k, v: v)
                out!.backward(dO)
                out = nil
            },
        ])
        table.add([s.label, fmtTime(r.t(0)), fmt(2 * s.productFlops / r.t(0) / 1e9), fmtTime(r.t(1)),
                   fmt(7 * s.productFlops / r.t(1) / 1e9), String(r.f(1))])
    }
    return table
}
