// Frozen matrices kept as packed blocks (`Tensor.keepPackedOnly`): every product and its input
// gradient read the decoded blocks, equal to the same product on a Float32 matrix of those values.

import XCTest
import TestSupport
import Foundation
@testable import TensorCore

final class PackedWeightsTests: XCTestCase {
    private func random(_ count: Int, seed: UInt64) -> [Float] {
        var rng = RNG(seed: seed)
        return Tensor.normal([count], rng: &rng).toArray()
    }

    /// Rows decoded, from any thread.
    private final class Counter: @unchecked Sendable {
        private let lock = NSLock()
        private var n = 0
        var value: Int {
            get { lock.lock(); defer { lock.unlock() }; return n }
            set { lock.lock(); n = newValue; lock.unlock() }
        }
        func add(_ k: Int) { lock.lock(); n += k; lock.unlock() }
    }

    /// A packed (rows, cols) matrix that decodes to `values` (row-major), counting decoded rows.
    private func packed(_ values: [Float], rows: Int, cols: Int, decoded: Counter) -> PackedWeights {
        PackedWeights(rows: rows, cols: cols, byteCount: values.count, encoding: "test") { lo, hi, dst in
            for r in lo..<hi { for c in 0..<cols { dst[(r - lo) * cols + c] = values[r * cols + c] } }
            decoded.add(hi - lo)
        }
    }

    /// The matrix as stored, (N, K) read transposed or (K, N), and a Float32 copy of the decoded
    /// values read the same way: forward products of 1 to 300 rows (2-D, 3-D folded, a transposed
    /// left side) and input gradients equal the copy's bit for bit (forward products read by row
    /// slabs within rounding); each product decodes the matrix once, its gradient once more. The stored values differ from the decoded ones,
    /// and are freed: nothing reads them.
    func testProductsAndInputGradientsReadTheDecodedBlocks() {
        let (k, n) = (256, 300)  // large enough for the decode to split over the threads
        for storedNK in [true, false] {
            let (rows, cols) = storedNK ? (n, k) : (k, n)
            let decodedValues = random(rows * cols, seed: 5).map { ($0 * 16).rounded() / 16 }
            let w = Tensor(shape: [rows, cols], data: random(rows * cols, seed: 6))
            let decoded = Counter()
            w.keepPackedOnly(packed(decodedValues, rows: rows, cols: cols, decoded: decoded))
            XCTAssertTrue(w.storage.valuesReleased)
            XCTAssertEqual(w.packedWeights?.encoding, "test")
            let reference = Tensor(shape: [rows, cols], data: decodedValues)
            let (op, refOp) = storedNK ? (w.transposed(), reference.transposed()) : (w, reference)  // (K, N) each
            for (label, shape) in [("1 row", [1, k]), ("5 rows", [5, k]), ("300 rows", [300, k]), ("(2, 7) rows", [2, 7, k]),
                                   ("transposed left side", [k, 9])] {
                let transposedX = label.hasPrefix("transposed")
                let count = shape.reduce(1, *)
                let xv = random(count, seed: UInt64(count))
                func run(_ b: Tensor) -> (y: [Float], dx: [Float]) {
                    let leaf = Tensor(shape: shape, data: xv)
                    leaf.requiresGrad = true
                    let x = transposedX ? leaf.transposed() : leaf  // (…, M, K)
                    let y = x.matmul(b)
                    (y * Tensor(shape: y.shape, data: random(y.count, seed: 9))).sum().backward()
                    return (y.toArray(), leaf.grad!.toArray())
                }
                decoded.value = 0
                let got = run(op)
                XCTAssertEqual(decoded.value, 2 * rows, "stored \(storedNK ? "(N, K)" : "(K, N)"), \(label): decoded rows")
                let want = run(refOp)
                // Few rows against stored (N, K) go by row slabs, other products than the Float32 weight's (a
                // 1-row product of this small matrix is sgemv there): the same values within rounding.
                let bySlabs = storedNK && count / k <= PackedWeights.slabMaxRows
                assertClose(got.y, want.y, rtol: bySlabs ? 1e-5 : 0, atol: bySlabs ? 2e-5 : 0,
                            "stored \(storedNK ? "(N, K)" : "(K, N)"), \(label), forward", label: "[packed]")
                assertClose(got.dx, want.dx, rtol: 0, atol: 0, "stored \(storedNK ? "(N, K)" : "(K, N)"), \(label), input gradient", label: "[packed]")
            }
            // No gradient recorded: the forward product decodes once.
            decoded.value = 0
            _ = withNoGrad { Tensor(shape: [3, k], data: random(3 * k, seed: 1)).matmul(op) }
            XCTAssertEqual(decoded.value, rows)
            XCTAssertGreaterThanOrEqual(PackedWeights.scratchBytes, 4 * rows * cols)
        }
    }

    /// Products x · Wᵀ of at most `slabMaxRows` rows, and of any number without a gradient, read W
    /// by row slabs (`productWithTranspose`): one sgemm per slab (7 rows here: many per thread;
    /// 40 past `slabMaxRows` rows on 2 threads, fewer on more), each row decoded once, the Float32
    /// product's values. With a gradient, 300 rows decode the whole matrix and run one sgemm.
    func testFewRowProductsReadTheMatrixBySlabs() {
        let saved = (PackedWeights.slabFloats, PackedWeights.wideSlabFloats)
        defer { (PackedWeights.slabFloats, PackedWeights.wideSlabFloats) = saved }
        let (n, k) = (300, 256)
        PackedWeights.slabFloats = 7 * k
        PackedWeights.wideSlabFloats = 40 * k
        let values = random(n * k, seed: 21)
        let w = Tensor(shape: [n, k], data: random(n * k, seed: 22))
        let decoded = Counter()
        w.keepPackedOnly(packed(values, rows: n, cols: k, decoded: decoded))
        let reference = Tensor(shape: [n, k], data: values)
        let threads = min(Threads.count, n)
        func slabs(of rows: Int) -> Int { (0..<threads).reduce(0) { acc, t in acc + (n * (t + 1) / threads - n * t / threads + rows - 1) / rows } }
        for (label, m, recorded) in [("1 row", 1, false), ("8 rows, gradient recorded", 8, true), ("64 rows, gradient recorded", 64, true),
                                     ("300 rows, no gradient", 300, false), ("300 rows, gradient recorded", 300, true)] {
            let x = Tensor(shape: [m, k], data: random(m * k, seed: UInt64(m)))
            x.requiresGrad = recorded
            decoded.value = 0
            let calls = BLASCounter.sgemmCalls
            let got = recorded ? x.matmul(w.transposed()) : withNoGrad { x.matmul(w.transposed()) }
            let bySlabs = m <= PackedWeights.slabMaxRows || !recorded
            let slabRows = m > PackedWeights.slabMaxRows ? PackedWeights.wideSlabFloatsPerThread(threads) / k : 7  // 40 on 2 threads
            XCTAssertEqual(BLASCounter.sgemmCalls - calls, bySlabs ? slabs(of: slabRows) : 1, "\(label): sgemm calls")
            XCTAssertEqual(decoded.value, n, "\(label): decoded rows")
            let want = withNoGrad { x.matmul(reference.transposed()) }
            assertClose(got.toArray(), want.toArray(), rtol: 1e-5, atol: 2e-5, label, label: "[packed]")
        }
    }

    /// `forEachSlab` hands over every value once, in order, in slabs of whole rows with the index of
    /// their first value: a last slab shorter than the others, a slab wider than `slabFloats` when one
    /// row is, and a matrix of one slab.
    func testEachSlabHoldsWholeRowsInOrder() {
        let saved = PackedWeights.slabFloats
        defer { PackedWeights.slabFloats = saved }
        for (rows, cols, slabFloats, wantSlabs) in [(10, 6, 24, 3), (4, 50, 24, 4), (3, 5, 1 << 16, 1)] {
            PackedWeights.slabFloats = slabFloats
            let values = random(rows * cols, seed: UInt64(rows))
            let decoded = Counter()
            let w = packed(values, rows: rows, cols: cols, decoded: decoded)
            var seen: [Float] = [], firsts: [Int] = []
            w.forEachSlab { slab, first in
                XCTAssertEqual(slab.count % cols, 0, "whole rows")
                firsts.append(first)
                seen += slab
            }
            XCTAssertEqual(seen, values, "\(rows)×\(cols)")
            XCTAssertEqual(firsts.count, wantSlabs, "\(rows)×\(cols): slabs")
            XCTAssertEqual(firsts.first, 0)
            XCTAssertEqual(decoded.value, rows, "each row decoded once")
        }
    }

    /// A token embedding kept as packed blocks: the rows gathered are decoded, one each.
    func testEmbeddingRowsAreDecodedFromPackedBlocks() {
        let (v, c) = (50, 16)
        let values = random(v * c, seed: 3)
        let table = Tensor(shape: [v, c], data: random(v * c, seed: 4))
        let decoded = Counter()
        table.keepPackedOnly(packed(values, rows: v, cols: c, decoded: decoded))
        let ids: [Int32] = [3, 49, 0, 3]
        let got = Tensor.embedding(table, ids: ids, shape: [2, 2])  // (2, 2, C)
        XCTAssertEqual(got.shape, [2, 2, c])
        XCTAssertEqual(decoded.value, ids.count)
        XCTAssertEqual(got.toArray(), ids.flatMap { values[Int($0) * c ..< (Int($0) + 1) * c] })
    }

    /// Finite differences through a packed weight (x·Wᵀ, a Linear's product).
    func testGradientThroughAPackedWeight() {
        let (n, k) = (6, 5)
        let values = random(n * k, seed: 12)
        let w = Tensor(shape: [n, k], data: values)
        w.keepPackedOnly(packed(values, rows: n, cols: k, decoded: Counter()))
        checkGradient(GradCase(name: "matmul packed", shapes: [[2, 3, k]]) { x in x[0].matmul(w.transposed()) })
    }
}
