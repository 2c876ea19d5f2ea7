// Frozen matrices kept in a compact encoding (a GGUF file's quantized blocks) instead of Float32, as
// QLoRA and mlx-lm keep a quantized base under trained adapters. A product that reads such a matrix
// decodes all of it into one scratch buffer shared by every packed matrix, then runs its one sgemm on
// the decoded values: the same values a Float32 load holds, so the same products, at the price of a
// decode per product (the forward product and the input gradient's). The scratch holds the largest
// matrix decoded so far; nothing else is allocated per product.

import Foundation

/// A frozen (rows, cols) matrix held in a compact encoding; products decode it when they read it
/// (`Tensor.keepPackedOnly`). The encoding is the caller's: `decodeRows` writes rows `lo..<hi` as
/// Float32 at `dst + lo · cols`, and must be safe to call for disjoint row ranges at once.
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
            self.decodeRows(self.rows * t / threads, self.rows * (t + 1) / threads, dst)
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
}

extension Tensor {
    /// Keeps this frozen matrix as `packed` alone: its Float32 values are freed, and every product
    /// `x.matmul(w)` or `x.matmul(w.transposed())` decodes the blocks instead (forward and input
    /// gradient; the matrix never trains). Any other read of its values stops the program, saying why.
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
              "[matmul] \(shape) · \(other.shape): the right operand keeps only packed blocks (\(packed.encoding)), read whole and frozen; this product reads it another way\(B.input.requiresGrad ? " or trains it" : "")")
        let batchCount = batch.reduce(1, *)
        guard fold || batchCount == 1 else {
            return contiguous().matmul(other)  // batched matrices that do not fold into one product, made plain
        }
        let M = m * batchCount  // (B·M, K) rows folded into one product
        let out = Tensor.empty(batch + [m, n])  // (…, M, N)
        let offA = A.offsets(outBatch: batch)
        let pa = UnsafePointer(A.input.basePointer) + offA.data[0], pc = out.basePointer
        let (aTrans, bTrans, bLd) = (A.trans, B.trans, B.ld)
        packed.withValues { pb in
            sgemm(transA: aTrans, transB: bTrans, m: M, n: n, k: k, a: pa, lda: A.ld, b: pb, ldb: bLd, beta: 0, c: pc, ldc: n)
        }
        guard Autograd.isRecording && requiresGrad else { return out }
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
