// Frozen matrices kept in a compact encoding (a GGUF file's quantized blocks) instead of Float32, as
// QLoRA and mlx-lm keep a quantized base under trained adapters and llama.cpp serves one. The
// decoded values are the ones a Float32 load holds, so the products are those of the Float32 model
// at the price of decoding. Two ways to read a matrix:
// - A training-size product that records a gradient decodes all of the matrix into one scratch
//   buffer shared by every packed matrix and runs its one sgemm on it; the input gradient decodes
//   it again. The scratch holds the largest matrix decoded so far.
// - A product x · Wᵀ of at most `slabMaxRows` rows, or of any size when no gradient is recorded
//   (decoding, evaluation), decodes W a slab of rows at a time into a small per-thread buffer and
//   runs one sgemm per slab while it is in the core's cache: decoding a token reads each
//   encoded byte once and writes no full-size scratch. Products of more rows (a prompt) take
//   wider slabs: each sgemm packs all of x again.
// Nothing is allocated per product once the buffers have grown. Reading every value once (a loader's
// check, the weights hash) goes a slab at a time through one small buffer (`forEachSlab`).

import CBLAS
import Foundation

/// A frozen (rows, cols) matrix held in a compact encoding; products decode it when they read it
/// (`Tensor.keepPackedOnly`). The encoding is the caller's: `decodeRows` writes rows `lo..<hi` as
/// Float32 at `dst`, row r at `dst + (r − lo) · cols`, and must be safe to call for disjoint row
/// ranges at once.
public final class PackedWeights: @unchecked Sendable {
    public let rows: Int, cols: Int
    /// Bytes the encoded matrix holds.
    public let byteCount: Int
    /// The encoding's name, for reports (e.g. `Q4_1`).
    public let encoding: String
    let decodeRows: (_ lo: Int, _ hi: Int, _ dst: UnsafeMutablePointer<Float>) -> Void

    public init(rows: Int, cols: Int, byteCount: Int, encoding: String,
                decodeRows: @escaping (_ lo: Int, _ hi: Int, _ dst: UnsafeMutablePointer<Float>) -> Void) {
        (self.rows, self.cols, self.byteCount, self.encoding, self.decodeRows) = (rows, cols, byteCount, encoding, decodeRows)
    }

    /// Decodes the whole matrix, row-major (rows, cols), into `dst` (over the threads when it is large).
    public func decode(into dst: UnsafeMutablePointer<Float>) {
        let threads = rows * cols >= 1 << 16 && !insideParallelRegion ? min(hardwareThreads, rows) : 1
        if threads <= 1 { decodeRows(0, rows, dst); return }
        insideParallelRegion = true
        defer { insideParallelRegion = false }
        WorkerPool.shared.run(threads) { t in
            let lo = self.rows * t / threads
            self.decodeRows(lo, self.rows * (t + 1) / threads, dst + lo * self.cols)
        }
    }

    /// Calls `body` with the matrix's values in row-major order, a slab of whole rows (about
    /// `slabFloats` values) at a time, decoded into one buffer reused from slab to slab, and the
    /// index in the whole matrix of the slab's first value. For reading every value once (a check,
    /// a hash) without a Float32 copy of the matrix.
    public func forEachSlab(_ body: (_ values: UnsafeBufferPointer<Float>, _ firstIndex: Int) throws -> Void) rethrows {
        let slabRows = max(1, min(rows, PackedWeights.slabFloats / max(cols, 1)))
        let buffer = UnsafeMutablePointer<Float>.allocate(capacity: max(1, slabRows * cols))
        defer { buffer.deallocate() }
        for lo in stride(from: 0, to: rows, by: slabRows) {
            let hi = min(rows, lo + slabRows)
            decodeRows(lo, hi, buffer)  // rows lo..<hi at buffer[0...]
            try body(UnsafeBufferPointer(start: buffer, count: (hi - lo) * cols), lo * cols)
        }
    }

    /// One buffer for every packed matrix's decoded values, and the lock that serializes its use.
    nonisolated(unsafe) private static var scratch = UnsafeMutablePointer<Float>.allocate(capacity: 1)
    nonisolated(unsafe) private static var scratchCapacity = 1
    private static let lock = NSLock()

    /// Bytes the shared scratch buffer holds now (the largest packed matrix decoded so far).
    public static var scratchBytes: Int {
        lock.lock()
        defer { lock.unlock() }
        return scratchCapacity * 4
    }

    /// Runs `body` with the matrix decoded into the shared scratch buffer (row-major, row stride
    /// `cols`), valid during the call only. Calls from several threads run one after another.
    func withValues<R>(_ body: (UnsafePointer<Float>) -> R) -> R {
        PackedWeights.lock.lock()
        defer { PackedWeights.lock.unlock() }
        let count = rows * cols
        if count > PackedWeights.scratchCapacity {
            PackedWeights.scratch.deallocate()
            PackedWeights.scratch = .allocate(capacity: count)
            PackedWeights.scratchCapacity = count
        }
        let dst = PackedWeights.scratch
        Profiler.measure(.other) { decode(into: dst) }
        return body(UnsafePointer(dst))
    }

    /// One buffer per thread for `productWithTranspose`'s row slabs, and its capacity in floats.
    nonisolated(unsafe) private static var slabs: [UnsafeMutablePointer<Float>] = []
    nonisolated(unsafe) private static var slabCapacity = 0

    /// Floats a row slab holds: 256 KiB, a quarter of a Zen 4 core's 1 MiB L2 (an eighth of an
    /// Intel Xeon's 2 MiB), so the sgemm reads the slab from the cache it was just decoded into.
    nonisolated(unsafe) static var slabFloats = 1 << 16  // tests make it small: many slabs per thread

    /// Floats a row slab holds in a product of more than `slabMaxRows` rows (a prompt, an
    /// evaluation batch), on each of up to two threads: 4 MiB, since each slab's sgemm packs all
    /// of op(A) again and wider slabs spread that copy over more of W. More threads share twice
    /// this (`wideSlabFloatsPerThread`), so the buffers stay 8 MiB in all. Prefilling a
    /// 1,485-token prompt on SmolLM2's Q4_1 blocks took 3.00 s with `slabFloats` and 2.70–2.77 s
    /// with these, as long as with the Float32 load (`docs/benchmarks.md`).
    nonisolated(unsafe) static var wideSlabFloats = 1 << 20  // tests make it small too

    /// Floats per thread of a wide slab (`wideSlabFloats`) when `threads` threads decode.
    static func wideSlabFloatsPerThread(_ threads: Int) -> Int { max(slabFloats, 2 * wideSlabFloats / max(threads, 2)) }

    /// Products of at most this many rows read the matrix by row slabs (`productWithTranspose`)
    /// even when a gradient is recorded; larger ones do only when none is.
    public static let slabMaxRows = 64

    /// C (M, rows) = op(A) (M, cols) · Wᵀ for this matrix W (rows, cols), one slab of rows at a
    /// time (`slabFloats`, or `wideSlabFloats` past `slabMaxRows` rows): each thread decodes a slab
    /// of its share of W's rows into its own buffer and runs one sgemm of op(A) against it while
    /// the slab is still in cache (a small slab in the core's own). The matrix is never
    /// decoded whole, so a few-row product (KV-cached decoding) reads the encoded bytes once and
    /// writes no full-size scratch. Calls from several threads run one after another. The
    /// profiler counts the decoding in `gemm` here (it runs inside the product's threads).
    /// Where `splitGEMM` would send a Float32 weight's product to OpenBLAS's small-matrix kernels,
    /// the slabs go there too, within their limits: the same kernels, so the same values.
    /// `beta` 1 adds the product into C instead (an emulated bf16 input gradient, `BF16Copy`).
    func productWithTranspose(m: Int, transA: Bool, a: UnsafePointer<Float>, lda: Int, c: UnsafeMutablePointer<Float>, ldc: Int,
                              beta: Float = 0) {
        guard m > 0 && rows > 0 else { return }
        PackedWeights.lock.lock()
        defer { PackedWeights.lock.unlock() }
        // Under `.blas` OpenBLAS's own threads split each slab's product instead.
        let split = currentGEMMSplit == .tasks && rows * cols >= 1 << 16 && !insideParallelRegion
        let threads = split ? min(hardwareThreads, rows) : 1
        // Where `splitGEMM` would use OpenBLAS's small-matrix kernels, slabs within their limits.
        let smallChunk = threads > 1 && m * rows * cols >= splitMinWork ? smallKernelChunk(transA: transA, transB: true, m: m, k: cols) : nil
        let smallKernels = smallChunk != nil
        let slabFloats = m > PackedWeights.slabMaxRows ? PackedWeights.wideSlabFloatsPerThread(threads) : PackedWeights.slabFloats
        let slabRows = max(1, min(rows, smallChunk ?? rows, slabFloats / max(cols, 1)))
        if PackedWeights.slabs.count < threads || PackedWeights.slabCapacity < slabRows * cols {
            for s in PackedWeights.slabs { s.deallocate() }
            PackedWeights.slabCapacity = max(PackedWeights.slabCapacity, slabRows * cols)
            PackedWeights.slabs = (0..<max(threads, PackedWeights.slabs.count)).map { _ in .allocate(capacity: PackedWeights.slabCapacity) }
        }
        let slabs = PackedWeights.slabs, (rows, cols) = (rows, cols)
        func part(_ t: Int, of parts: Int) {
            let buffer = slabs[t]
            let (first, end) = (rows * t / parts, rows * (t + 1) / parts)
            for lo in stride(from: first, to: end, by: slabRows) {
                let hi = min(end, lo + slabRows)
                decodeRows(lo, hi, buffer)  // rows lo..<hi at buffer[0...]
                BLASCounter.calls.add(1, ordering: .relaxed)
                // C[:, lo..<hi] (M, hi − lo) = op(A) (M, K) · slabᵀ (K, hi − lo)
                if smallKernels {  // as `splitGEMM` runs a Float32 weight's few rows: the same values
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(hi - lo), Int32(cols), 1, a, Int32(lda),
                                buffer, Int32(cols), beta, c + lo, Int32(ldc))
                } else {
                    blasGEMM(transA: transA, transB: true, m: m, n: hi - lo, k: cols, alpha: 1, a: a, lda: lda,
                             b: buffer, ldb: cols, beta: beta, c: c + lo, ldc: ldc)
                }
            }
        }
        Profiler.measure(.gemm) {
            _ = blasThreadsApplied
            if threads <= 1 { part(0, of: 1); return }
            insideParallelRegion = true
            defer { insideParallelRegion = false }
            WorkerPool.shared.run(threads) { t in part(t, of: threads) }
        }
    }
}

extension Tensor {
    /// Keeps this frozen matrix as `packed` alone: its Float32 values are freed, and every product
    /// `x.matmul(w)` or `x.matmul(w.transposed())` decodes the blocks instead (forward and input
    /// gradient; the matrix never trains), and so do token lookups (`Tensor.embedding`). Any other
    /// read of its values stops the program, saying why.
    public func keepPackedOnly(_ packed: PackedWeights) {
        check(rank == 2 && isContiguous && layout.offset == 0 && storage.count == count && shape == [packed.rows, packed.cols]
              && !requiresGrad,
              "[packed] needs a whole frozen (\(packed.rows), \(packed.cols)) matrix, got \(shape)\(requiresGrad ? " that trains" : "")")
        storage.releaseValues(keeping: packed)
    }

    /// The packed blocks this matrix keeps instead of its Float32 values, if any (`keepPackedOnly`).
    public var packedWeights: PackedWeights? { storage.packed }
}

extension Tensor {
    /// `matmul` against a packed right operand (`B.input`, frozen): one product on its decoded
    /// values, and when `self` records a gradient, a pullback that decodes them again for dA.
    func matmulPacked(_ other: Tensor, _ packed: PackedWeights, A: MatOperand, B: MatOperand,
                      batch: [Int], m: Int, k: Int, n: Int, fold: Bool) -> Tensor {
        check(B.batchShape.isEmpty && B.input.layout.offset == 0 && B.ld == packed.cols && !B.input.requiresGrad,
              "[matmul] \(shape) · \(other.shape): the right operand keeps only packed blocks (\(packed.encoding)), read whole and frozen; this product reads it another way\(B.input.requiresGrad ? " or trains it" : ""); load the base without --keep-quantized for it")
        let batchCount = batch.reduce(1, *)
        guard fold || batchCount == 1 else {
            return contiguous().matmul(other)  // batched matrices that do not fold into one product, made plain
        }
        let M = m * batchCount  // (B·M, K) rows folded into one product
        let out = Tensor.empty(batch + [m, n])  // (…, M, N)
        let offA = A.offsets(outBatch: batch)
        let pa = UnsafePointer(A.input.basePointer) + offA.data[0], pc = out.basePointer
        let (aTrans, bTrans, bLd) = (A.trans, B.trans, B.ld)
        let recordsA = Autograd.isRecording && requiresGrad
        if bTrans && (M <= PackedWeights.slabMaxRows || !recordsA) {  // x · Wᵀ against stored (N, K): by row slabs
            packed.productWithTranspose(m: M, transA: aTrans, a: pa, lda: A.ld, c: pc, ldc: n)
        } else {
            packed.withValues { pb in
                sgemm(transA: aTrans, transB: bTrans, m: M, n: n, k: k, a: pa, lda: A.ld, b: pb, ldb: bLd, beta: 0, c: pc, ldc: n)
            }
        }
        guard recordsA else { return out }
        let (aSlot, gradOffset, aGradTrans) = (A.input.slot, offA.grad[0], A.gradTrans)
        return Tensor.make(out, op: "matmul", inputs: [A.input, B.input], readsInputsInPullback: true) { g in
            guard aSlot.requiresGrad else { return }
            let (da, beta) = aSlot.gradBuffer()
            let pg = UnsafePointer(g.basePointer)
            packed.withValues { pb in
                if aGradTrans {  // stored (K, M) (+)= op(B) · dCᵀ
                    sgemm(transA: bTrans, transB: true, m: k, n: M, k: n, a: pb, lda: bLd, b: pg, ldb: n, beta: beta,
                          c: da + gradOffset, ldc: M)
                } else {  // dA (M, K) (+)= dC (M, N) · op(B)ᵀ
                    sgemm(transA: false, transB: !bTrans, m: M, n: k, k: n, a: pg, lda: n, b: pb, ldb: bLd, beta: beta,
                          c: da + gradOffset, ldc: k)
                }
            }
        }
    }
}
