// Matrix products through cblas_sgemm. A transposed operand (a view with swapped last axes) is
// passed with a transpose flag, never copied; gradients are written straight into the inputs'
// gradient buffers with beta = 1 when they already hold a value; a frozen operand's gradient GEMM
// is never run. Batched products loop one GEMM per matrix, and a 2-D right operand against a
// batched left one is folded into a single GEMM over all rows.

import CBLAS
import Synchronization

/// Counts BLAS GEMM calls, so tests can check that frozen weights skip their gradient GEMM.
public enum BLASCounter {
    static let calls = Atomic<Int>(0)  // attention calls sgemm from several threads
    public static var sgemmCalls: Int { calls.load(ordering: .relaxed) }
}

/// Row-major C = alpha · op(A) · op(B) + beta · C, for M×K op(A) and K×N op(B).
/// A large product is split over SwiftPEFT's threads (`Threads.GEMMSplit.tasks`, the default);
/// `splitGEMM` sends a few rows against a weight to OpenBLAS's small-matrix kernels where the core
/// has them. Otherwise up to `gemvRows` rows (token-by-token decoding) go to one sgemv per row:
/// sgemm would pack all of B for them (measured: the copy took 31% of generation time, more than
/// the product).
@inline(__always)
public func sgemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1,
                  a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                  beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
    BLASCounter.calls.add(1, ordering: .relaxed)
    Profiler.measure(.gemm) {
        _ = blasThreadsApplied
        if currentGEMMSplit == .tasks && hardwareThreads > 1 && !insideParallelRegion && m * n * k >= splitMinWork {
            splitGEMM(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
                      beta: beta, c: c, ldc: ldc)
            return
        }
        blasGEMM(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
                 beta: beta, c: c, ldc: ldc)
    }
}

/// One OpenBLAS call (sgemv for each row when there are at most `gemvRows`) with the threads
/// OpenBLAS has now.
@inline(__always)
func blasGEMM(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int,
              b: UnsafePointer<Float>, ldb: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
    if m <= gemvRows && k > 0 {
        rowwiseGEMV(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
                    beta: beta, c: c, ldc: ldc)
        return
    }
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
}

/// Rows up to which a product runs as one sgemv per row. sgemm packs all of B for those rows: one
/// row of the SmolLM2 shape streamed its weight at 11 GB/s against sgemv's 28.6 on the Haswell
/// kernels (AMD EPYC, one thread), and two rows of its output head took 12.7 ms against 7.7
/// (four rows: sgemm 11.6, sgemv 15.6). With the AVX-512 cores' small-matrix kernels a single row
/// still goes to sgemv here, and `splitGEMM` sends few rows to those kernels instead.
let gemvRows = BLASCore.hasSmallMatrixKernels ? 1 : 2

/// C = alpha · op(A) · op(B) + beta · C as one `cblas_sgemv` per row of C.
func rowwiseGEMV(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int,
                 b: UnsafePointer<Float>, ldb: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
    for i in 0..<m {
        // c row i (N) = alpha · op(B)ᵀ a_i + beta · c_i; row i of op(A) has stride lda when A is transposed.
        // op(B) = B (K×N stored): c_i = Bᵀ a_i; op(B) = Bᵀ (N×K stored): c_i = B a_i.
        let ci = c + i * ldc
        if beta == 0 { ci.update(repeating: 0, count: n) }  // C may be uninitialized memory (NaN × 0)
        cblas_sgemv(CblasRowMajor, transB ? CblasNoTrans : CblasTrans, Int32(transB ? n : k), Int32(transB ? k : n),
                    alpha, b, Int32(ldb), transA ? a + i : a + i * lda, Int32(transA ? lda : 1), beta, ci, 1)
    }
}

/// Whether `splitGEMM` cuts few-row products into chunks for OpenBLAS's small-matrix kernels:
/// when the running core has them (tests set both ways).
nonisolated(unsafe) var smallMatrixChunks = BLASCore.hasSmallMatrixKernels

/// Products smaller than this (M·N·K) run on one thread under `.tasks`.
let splitMinWork = 1 << 18

/// C = alpha · op(A) · op(B) + beta · C split over the threads, OpenBLAS single-threaded in each
/// part. The output columns (B's rows or columns) are cut into chunks; with few rows (M ≤ 24)
/// against a stored-(N, K) weight, on a core that has OpenBLAS's unpacked small-matrix kernels,
/// the chunks are small enough for them (M·chunk ≤ 1200 and M·chunk·K ≤ 10⁶, its SkylakeX limits),
/// where one call would pack the whole weight for a few rows: a decoding step of 8 rows on SmolLM2
/// took 47 ms instead of 73 (`docs/benchmarks.md`, Serving). A product with fewer columns than
/// rows is split by rows, and so is one where each thread gets 256 rows or more and the output is
/// at most 4× wider than tall: cut by columns, each thread packs all of op(A) for its half. On the
/// SmolLM2 block shapes at 512 rows (Zen 4, 2 threads) rows ran dX of q/o at 175–192 GFLOP/s
/// against 157–165 by columns, k/v at 167–181 against 137–142; the demo's LoRA step took 0.95× the
/// time (median of 8 pairs). The (512, 49152) head stays cut by columns (185 against 179–184).
func splitGEMM(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int,
               b: UnsafePointer<Float>, ldb: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
    let threads = hardwareThreads
    let byRows = m >= 2 * threads && (n < m || (m >= 256 * threads && n <= 4 * m))
    let total = byRows ? m : n
    let maxChunk = byRows ? total : smallKernelChunk(transA: transA, transB: transB, m: m, k: k) ?? total
    let chunks = max(threads, (total + maxChunk - 1) / maxChunk)
    insideParallelRegion = true
    defer { insideParallelRegion = false }
    WorkerPool.shared.run(threads) { t in
        for ch in (chunks * t / threads)..<(chunks * (t + 1) / threads) {
            let lo = total * ch / chunks, count = total * (ch + 1) / chunks - lo
            guard count > 0 else { continue }
            if byRows {  // C[lo..] (count, N) = op(A)[lo..] · op(B)
                blasGEMM(transA: transA, transB: transB, m: count, n: n, k: k, alpha: alpha, a: a + (transA ? lo : lo * lda),
                         lda: lda, b: b, ldb: ldb, beta: beta, c: c + lo * ldc, ldc: ldc)
            } else if maxChunk < total {  // small-kernel chunks, sgemm even for one row: they need no buffer (sgemv takes one per call)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(count), Int32(k), alpha, a, Int32(lda),
                            b + lo * ldb, Int32(ldb), beta, c + lo, Int32(ldc))
            } else {  // C[:, lo..] (M, count) = op(A) · op(B)[:, lo..]
                blasGEMM(transA: transA, transB: transB, m: m, n: count, k: k, alpha: alpha, a: a, lda: lda,
                         b: b + (transB ? lo * ldb : lo), ldb: ldb, beta: beta, c: c + lo, ldc: ldc)
            }
        }
    }
}

/// Output columns per call for OpenBLAS's small-matrix kernels in a product of `m` rows against a
/// stored-(N, K) weight (M·chunk ≤ 1200 and M·chunk·K ≤ 10⁶, their SkylakeX limits), or nil when
/// such a product does not go to them (`splitGEMM`, and `PackedWeights`' row slabs alike).
func smallKernelChunk(transA: Bool, transB: Bool, m: Int, k: Int) -> Int? {
    guard smallMatrixChunks && !transA && transB && m >= 1 && m <= 24 && k >= 32 else { return nil }
    return max(1, min(1200 / m, 1_000_000 / (m * k)))
}

/// One side of a product: how its data is read and where its gradient goes.
struct MatOperand {
    /// The graph input: the tensor itself, or the source of a transposed view.
    let input: Tensor
    /// Logical matrix = stored matrix transposed.
    let trans: Bool
    /// Row stride of the stored matrix.
    let ld: Int
    /// The gradient buffer (contiguous, input's shape) is the transpose of the logical gradient.
    let gradTrans: Bool
    /// Logical rows and columns.
    let rows: Int, cols: Int
    let batchShape: [Int]
    let batchStrides: [Int]

    init(_ t0: Tensor) {
        var t = t0
        var viaSource = false
        if let src = t0.transposeSource, MatOperand.standard(src) != nil {
            t = src
            viaSource = true
        } else if MatOperand.standard(t0) == nil && MatOperand.transposed(t0) == nil {
            t = t0.contiguous()  // e.g. a permuted 4-D view: one copy, gradient flows through it
        }
        input = t
        if viaSource {
            trans = true
            ld = MatOperand.standard(t)!
        } else if let ld = MatOperand.standard(t) {
            trans = false
            self.ld = ld
        } else {
            trans = true
            ld = MatOperand.transposed(t)!
        }
        gradTrans = viaSource
        let r = t.rank
        batchShape = Array(t.shape.prefix(r - 2))
        batchStrides = Array(t.layout.strides.prefix(r - 2))
        (rows, cols) = (t0.shape[t0.rank - 2], t0.shape[t0.rank - 1])
    }

    /// Row stride when the last two axes are row-major (unit column stride).
    static func standard(_ t: Tensor) -> Int? {
        let r = t.rank
        let (R, C) = (t.shape[r - 2], t.shape[r - 1])
        let (sr, sc) = (t.layout.strides[r - 2], t.layout.strides[r - 1])
        if sc == 1 || C == 1 {
            if R == 1 { return max(C, 1) }
            if sr >= max(C, 1) && (sc == 1 || C == 1) { return sr }
        }
        return nil
    }

    /// Row stride of the stored matrix when the last two axes are column-major (a transposed view).
    static func transposed(_ t: Tensor) -> Int? {
        let r = t.rank
        let (R, C) = (t.shape[r - 2], t.shape[r - 1])
        let (sr, sc) = (t.layout.strides[r - 2], t.layout.strides[r - 1])
        if sr == 1 || R == 1 {
            if C == 1 { return max(R, 1) }
            if sc >= max(R, 1) { return sc }
        }
        return nil
    }

    /// Offsets of each output batch's matrix in the data and in the gradient buffer.
    func offsets(outBatch: [Int]) -> (data: [Int], grad: [Int], broadcast: Bool) {
        let lead = outBatch.count - batchShape.count
        let gradStrides = Layout.contiguousStrides(input.shape).prefix(batchShape.count)
        var ds = [Int](repeating: 0, count: outBatch.count), gs = ds
        var broadcast = false
        for i in 0..<outBatch.count {
            if i < lead { broadcast = broadcast || outBatch[i] > 1; continue }
            let j = i - lead
            if batchShape[j] == 1 && outBatch[i] > 1 { broadcast = true; continue }
            ds[i] = batchStrides[j]
            gs[i] = gradStrides[gradStrides.startIndex + j]
        }
        let total = outBatch.reduce(1, *)
        var data = [Int](repeating: 0, count: total), grad = data
        for b in 0..<total {
            var rem = b, od = 0, og = 0
            for i in stride(from: outBatch.count - 1, through: 0, by: -1) {
                let idx = rem % outBatch[i]
                rem /= outBatch[i]
                od += idx * ds[i]
                og += idx * gs[i]
            }
            data[b] = od
            grad[b] = og
        }
        return (data, grad, broadcast)
    }

    /// True when the batch axes and the rows form one evenly strided run (fold into one GEMM).
    var foldsRows: Bool {
        if trans { return false }
        var expected = rows * ld
        for i in stride(from: batchShape.count - 1, through: 0, by: -1) where batchShape[i] != 1 {
            if batchStrides[i] != expected { return false }
            expected *= batchShape[i]
        }
        return true
    }
}

extension Tensor {
    /// Matrix product of (…, M, K) and (…, K, N) with broadcast batch axes → (…, M, N).
    public func matmul(_ other: Tensor) -> Tensor {
        let (batch, m, k, n) = must { try ShapeCheck.matmul(shape, other.shape) }
        let A = MatOperand(self), B = MatOperand(other)
        let out = Tensor.empty(batch + [m, n])
        let batchCount = batch.reduce(1, *)
        let pa = UnsafePointer(A.input.basePointer)
        let pc = out.basePointer
        // A 2-D right operand against a row-foldable left operand: one GEMM over all rows.
        let fold = B.batchShape.isEmpty && A.foldsRows && batchCount > 1
        let offA = A.offsets(outBatch: batch), offB = B.offsets(outBatch: batch)
        let released = B.input.storage.valuesReleased
        let recordsA = Autograd.isRecording && requiresGrad
        // A frozen matrix with bf16 training copies: the product, and A's gradient through the
        // copy read the other way (decoding-size products without a gradient go on below).
        if let copy = B.input.storage.bf16, copy.servesTraining, let gradCopy = B.input.storage.bf16Gradient,
           recordsA || m * batchCount > BF16Copy.maxRows, !B.input.requiresGrad, copy.matches(B), !A.trans,
           fold || batchCount == 1, gradCopy.k == n && gradCopy.n == k,
           copy.trainingProduct(m: m * batchCount, a: pa + offA.data[0], lda: A.ld, c: pc, ldc: n, accumulate: false) {
            guard recordsA else { return out }
            let (aSlot, M, gradOffset, fp32B) = (A.input.slot, m * batchCount, offA.grad[0], B)
            return Tensor.make(out, op: "matmul", inputs: [A.input, B.input], readsInputsInPullback: true) { g in
                guard aSlot.requiresGrad else { return }
                let (da, beta) = aSlot.gradBuffer()
                let pg = UnsafePointer(g.basePointer)
                // dA (M, K) (+)= dC (M, N) · op(B)ᵀ; in fp32 only if oneDNN had no kernel for the rows.
                if !gradCopy.trainingProduct(m: M, a: pg, lda: n, c: da + gradOffset, ldc: k, accumulate: beta != 0) {
                    sgemm(transA: false, transB: !fp32B.trans, m: M, n: k, k: n, a: pg, lda: n, b: UnsafePointer(fp32B.input.basePointer),
                          ldb: fp32B.ld, beta: beta, c: da + gradOffset, ldc: k)
                }
            }
        }
        // A few rows against a still-frozen matrix with a bf16 copy, with no gradient to record
        // (decoding); any number of rows once its fp32 values were released (bf16-only weights).
        if let copy = B.input.storage.bf16, !B.input.requiresGrad, copy.matches(B), !A.trans, fold || batchCount == 1,
           m * batchCount <= BF16Copy.maxRows || released, !(Autograd.isRecording && requiresGrad),
           copy.product(m: m * batchCount, a: pa + offA.data[0], lda: A.ld, c: pc, ldc: n) {
            return out
        }
        if let packed = B.input.storage.packed {
            return matmulPacked(other, packed, A: A, B: B, batch: batch, m: m, k: k, n: n, fold: fold)
        }
        if released && !isContiguous && (!recordsA || B.input.storage.bf16Gradient != nil) {
            return contiguous().matmul(other)  // a strided, transposed or unfoldable left side, made plain for the copy
        }
        check(!released, """
            [matmul] \(shape) · \(other.shape): the right operand keeps only a bf16 copy (its fp32 values were released), \
            which serves products without a gradient only; this one \(Autograd.isRecording && requiresGrad ? "records a gradient" : "reads it another way")
            """)
        let pb = UnsafePointer(B.input.basePointer)
        if fold || batchCount == 1 {
            sgemm(transA: A.trans, transB: B.trans, m: m * batchCount, n: n, k: k,
                  a: pa + offA.data[0], lda: A.ld, b: pb + offB.data[0], ldb: B.ld, beta: 0, c: pc, ldc: n)
        } else {
            for i in 0..<batchCount {
                sgemm(transA: A.trans, transB: B.trans, m: m, n: n, k: k, a: pa + offA.data[i], lda: A.ld,
                      b: pb + offB.data[i], ldb: B.ld, beta: 0, c: pc + i * m * n, ldc: n)
            }
        }
        // The pullback keeps an operand's values only when the other operand's gradient needs
        // them: a frozen weight's input (x in x·Wᵀ) is not kept alive by this product.
        let (aSlot, bSlot) = (A.input.slot, B.input.slot)
        let keptA = B.input.requiresGrad ? A.input : nil, keptB = A.input.requiresGrad ? B.input : nil
        let (aTrans, aLd, aGradTrans, aCount) = (A.trans, A.ld, A.gradTrans, A.input.count)
        let (bTrans, bLd, bGradTrans, bCount) = (B.trans, B.ld, B.gradTrans, B.input.count)
        return Tensor.make(out, op: "matmul", inputs: [A.input, B.input], readsInputsInPullback: true) { g in
            let pg = UnsafePointer(g.basePointer)
            let rowsFold = fold ? batchCount : 1
            let count = fold ? 1 : batchCount
            if let keptB, aSlot.requiresGrad {
                let pb = UnsafePointer(keptB.basePointer)
                let (da, beta0) = aSlot.gradBuffer()
                var beta = beta0
                if offA.broadcast && count > 1 && beta == 0 { da.initialize(repeating: 0, count: aCount); beta = 1 }
                let M = m * rowsFold
                for i in 0..<count {
                    let gi = pg + i * m * n, bi = pb + offB.data[i], di = da + offA.grad[i]
                    if aGradTrans {  // stored (K, M) = op(B) · dCᵀ
                        sgemm(transA: bTrans, transB: true, m: k, n: M, k: n, a: bi, lda: bLd, b: gi, ldb: n,
                              beta: beta, c: di, ldc: M)
                    } else {  // (M, K) = dC · op(B)ᵀ
                        sgemm(transA: false, transB: !bTrans, m: M, n: k, k: n, a: gi, lda: n, b: bi, ldb: bLd,
                              beta: beta, c: di, ldc: k)
                    }
                }
            }
            if let keptA, bSlot.requiresGrad {
                let pa = UnsafePointer(keptA.basePointer)
                let (db, beta0) = bSlot.gradBuffer()
                var beta = beta0
                if offB.broadcast && count > 1 && beta == 0 { db.initialize(repeating: 0, count: bCount); beta = 1 }
                let M = m * rowsFold
                for i in 0..<count {
                    let gi = pg + i * m * n, ai = pa + offA.data[i], di = db + offB.grad[i]
                    if bGradTrans {  // stored (N, K) = dCᵀ · op(A)
                        sgemm(transA: true, transB: aTrans, m: n, n: k, k: M, a: gi, lda: n, b: ai, ldb: aLd,
                              beta: beta, c: di, ldc: k)
                    } else {  // (K, N) = op(A)ᵀ · dC
                        sgemm(transA: !aTrans, transB: false, m: k, n: n, k: M, a: ai, lda: aLd, b: gi, ldb: n,
                              beta: beta, c: di, ldc: n)
                    }
                }
            }
        }
    }
}

