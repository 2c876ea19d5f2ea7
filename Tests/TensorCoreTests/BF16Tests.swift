// bf16 copies of frozen weights (`Tensor.keepBF16Copy`): the product against a reference computed
// here from bf16-rounded inputs, and when matmul uses the copy or the fp32 values; training copies
// (`forTraining`): the product and the input gradient, and the fused output head and loss. Every
// test runs with oneDNN's native kernels where the CPU has them and again with emulated copies
// (`BF16Copy.forceEmulation`), the path of CPUs without AVX512-BF16 or AMX.

@testable import TensorCore
import TestSupport
import XCTest

final class BF16Tests: XCTestCase {
    /// Runs `body` with native copies (where the CPU has them), then with emulated ones; the log
    /// says which way each run took.
    func bothWays(_ body: () throws -> Void) rethrows {
        for emulate in BF16Copy.isNative ? [false, true] : [true] {
            BF16Copy.forceEmulation = emulate
            defer { BF16Copy.forceEmulation = false }
            print("bf16 copies: \(emulate ? "emulated" : "native")")
            try body()
        }
    }

    /// Copies made under `bothWays` are of the kind asked for.
    func testCopiesAreEmulatedWhereAsked() {
        bothWays {
            let w = Tensor(shape: [5, 4], data: random(20, seed: 1))
            w.transposed().keepBF16Copy()
            XCTAssertEqual(w.bf16Copy?.isEmulated, BF16Copy.emulates)
        }
    }

    /// Values rounded to bf16 (to nearest, ties to even), as fp32.
    func roundedToBF16(_ v: [Float]) -> [Float] {
        v.map { x in
            let u = x.bitPattern
            return Float(bitPattern: ((u &+ 0x7FFF &+ ((u >> 16) & 1)) >> 16) << 16)
        }
    }

    /// (M, K) · (K, N) in Double, row-major.
    func product(_ a: [Float], _ b: [Float], m: Int, k: Int, n: Int) -> [Float] {
        (0..<(m * n)).map { idx in
            let (i, j) = (idx / n, idx % n)
            return Float((0..<k).reduce(0.0) { $0 + Double(a[i * k + $1]) * Double(b[$1 * n + j]) })
        }
    }

    func random(_ count: Int, seed: UInt64) -> [Float] {
        var rng = RNG(seed: seed)
        return (0..<count).map { _ in Float(rng.nextDouble() * 2 - 1) }
    }

    /// Both orientations of the stored weight, row counts 1…maxRows, and an N split over threads:
    /// the product equals the bf16-rounded inputs multiplied exactly, up to fp32 accumulation.
    func testProductEqualsTheBF16RoundedReference() {
        bothWays {
            let (k, n) = (70, 300)  // n ≥ 64 per thread: a native copy is cut into column blocks
            for stored in ["(N, K), read transposed", "(K, N)"] {
                let wOutIn = random(n * k, seed: 1)  // (N, K)
                let weight: Tensor, operand: Tensor
                if stored.hasPrefix("(N, K)") {
                    weight = Tensor(shape: [n, k], data: wOutIn)
                    operand = weight.transposed()  // (K, N)
                } else {
                    let wKN = (0..<(k * n)).map { i in wOutIn[(i % n) * k + i / n] }  // (K, N)
                    weight = Tensor(shape: [k, n], data: wKN)
                    operand = weight
                }
                operand.keepBF16Copy()
                XCTAssertNotNil(operand.bf16Copy, stored)
                let wKN = (0..<(k * n)).map { i in wOutIn[(i % n) * k + i / n] }
                for m in [1, 3, BF16Copy.maxRows] {
                    let x = random(m * k, seed: UInt64(m + 10))
                    let y = withNoGrad { Tensor(shape: [m, k], data: x).matmul(operand) }  // (M, N)
                    let expected = product(roundedToBF16(x), roundedToBF16(wKN), m: m, k: k, n: n)
                    assertClose(y.toArray(), expected, rtol: 1e-5, atol: 2e-5, "\(stored), M \(m)")
                    // …and it is not the fp32 product: the copy was used.
                    let fp32 = product(x, wKN, m: m, k: k, n: n)
                    XCTAssertGreaterThan(maxAbsDiff(y.toArray(), fp32), 1e-4, "\(stored), M \(m): the fp32 values were read")
                }
            }
        }
    }

    /// With its fp32 values released, a matrix serves products of any row count from the copy:
    /// past `maxRows` in chunks of `BF16Copy.chunkRows` rows, the last one padded; rows read with a
    /// stride (a slice of a wider tensor), a transposed left side, and a batch of matrices.
    func testReleasedMatrixServesEveryRowCountFromTheCopy() {
        bothWays {
            let (k, n) = (70, 300)
            let wOutIn = random(n * k, seed: 5)  // (N, K)
            let wKN = (0..<(k * n)).map { i in wOutIn[(i % n) * k + i / n] }
            let weight = Tensor(shape: [n, k], data: wOutIn)
            let operand = weight.transposed()  // (K, N)
            operand.keepBF16Copy(releasingFP32: true)
            XCTAssertTrue(weight.storage.valuesReleased)
            XCTAssertNotNil(weight.bf16Copy)
            for m in [1, BF16Copy.maxRows, BF16Copy.maxRows + 1, 63, 64, 65, 130] {
                let x = random(m * (k + 3), seed: UInt64(m))
                let wide = Tensor(shape: [m, k + 3], data: x)
                let rows = wide.slice(axis: 1, 0, k)  // (M, K), row stride K + 3
                let y = withNoGrad { rows.matmul(operand) }  // (M, N)
                let xs = (0..<(m * k)).map { x[($0 / k) * (k + 3) + $0 % k] }
                let expected = product(roundedToBF16(xs), roundedToBF16(wKN), m: m, k: k, n: n)
                assertClose(y.toArray(), expected, rtol: 1e-5, atol: 2e-5, "M \(m)")
            }
            // A transposed left side (stored (K, M)) is made plain first, then read against the copy.
            let xt = random(k * 12, seed: 8)  // (K, M) stored
            let yt = withNoGrad { Tensor(shape: [k, 12], data: xt).transposed().matmul(operand) }
            let xs = (0..<(12 * k)).map { xt[($0 % k) * 12 + $0 / k] }  // (M, K)
            assertClose(yt.toArray(), product(roundedToBF16(xs), roundedToBF16(wKN), m: 12, k: k, n: n), rtol: 1e-5, atol: 2e-5, "transposed rows")
            // Batched rows fold into one product: (2, 33, K) · (K, N).
            let x = random(2 * 33 * k, seed: 9)
            let y = withNoGrad { Tensor(shape: [2, 33, k], data: x).matmul(operand) }
            XCTAssertEqual(y.shape, [2, 33, n])
            assertClose(y.toArray(), product(roundedToBF16(x), roundedToBF16(wKN), m: 66, k: k, n: n), rtol: 1e-5, atol: 2e-5, "batched")
        }
    }

    /// More rows than `maxRows`, a product that records a gradient, and a matrix that takes
    /// gradients all read the fp32 values, bit for bit the plain product.
    func testOtherProductsReadTheFP32Values() {
        bothWays {
            let (k, n) = (24, 40)
            let w = Tensor(shape: [n, k], data: random(n * k, seed: 2))
            let plain = Tensor(shape: [n, k], data: w.toArray())
            w.transposed().keepBF16Copy()
            let many = Tensor(shape: [BF16Copy.maxRows + 1, k], data: random((BF16Copy.maxRows + 1) * k, seed: 3))
            XCTAssertEqual(withNoGrad { many.matmul(w.transposed()) }.toArray(), many.matmul(plain.transposed()).toArray())
            let x = Tensor(shape: [2, k], data: random(2 * k, seed: 4))
            x.requiresGrad = true
            let recorded = x.matmul(w.transposed())
            XCTAssertEqual(recorded.toArray(), withNoGrad { x.matmul(plain.transposed()) }.toArray(), "a recorded product is fp32")
            recorded.sum().backward()
            XCTAssertNotNil(x.grad)
            // A batched left operand folds its rows: (2, 3, K) is 6 rows, within maxRows.
            let batched = Tensor(shape: [2, 3, k], data: random(6 * k, seed: 5))
            let folded = withNoGrad { batched.matmul(w.transposed()) }
            let rows = withNoGrad { batched.reshaped([6, k]).matmul(w.transposed()) }
            XCTAssertEqual(folded.shape, [2, 3, n])
            XCTAssertEqual(folded.toArray(), rows.toArray())
            XCTAssertNotEqual(folded.toArray(), withNoGrad { batched.matmul(plain.transposed()) }.toArray())
            // A matrix made trainable after its copy was made (its values may then change in place).
            let few = Tensor(shape: [2, k], data: random(2 * k, seed: 6))
            XCTAssertNotEqual(withNoGrad { few.matmul(w.transposed()) }.toArray(), few.matmul(plain.transposed()).toArray())
            w.requiresGrad = true
            XCTAssertEqual(withNoGrad { few.matmul(w.transposed()) }.toArray(), few.matmul(plain.transposed()).toArray())
        }
    }

    /// Training copies serve the forward product and the input gradient for every row count (one
    /// thread below 128 rows, split rows above, the rest in power-of-two chunks), in both
    /// orientations of the stored weight; a second product of the same input adds into its
    /// gradient (oneDNN's sum post-op). Each equals the bf16-rounded operands multiplied exactly.
    func testTrainingCopiesServeTheProductAndTheInputGradient() {
        bothWays { checkTrainingCopies(k: 70, n: 300, rows: [1, 5, 300, 517]) }
    }

    /// Emulated copies past one slab and one thread: a (300, 260) matrix (more than the 65,536
    /// values from which its products split over the threads) read by slabs of 7 rows (11 past 64
    /// rows), 300 rows in chunks of `trainingChunkRows`, and a second product adding into the input
    /// gradient slab by slab.
    func testEmulatedCopiesAcrossSlabsThreadsAndChunks() {
        let saved = (PackedWeights.slabFloats, PackedWeights.wideSlabFloats)
        defer {
            (PackedWeights.slabFloats, PackedWeights.wideSlabFloats) = saved
            BF16Copy.forceEmulation = false
        }
        let (k, n) = (260, 300)
        (PackedWeights.slabFloats, PackedWeights.wideSlabFloats) = (7 * k, 11 * k)
        BF16Copy.forceEmulation = true
        checkTrainingCopies(k: k, n: n, rows: [3, 70, 300])
    }

    /// Training copies of two (K, N) operands, both orientations: `rows` row counts of x · W and
    /// x · V against the bf16-rounded operands multiplied exactly, and x's gradient g1 · Wᵀ + g2 · Vᵀ.
    func checkTrainingCopies(k: Int, n: Int, rows: [Int]) {
        for stored in ["(N, K), read transposed", "(K, N)"] {
            let wOutIn = random(n * k, seed: 21), vOutIn = random(n * k, seed: 22)  // (N, K) each
            let kn = { (w: [Float]) in (0..<(k * n)).map { i in w[(i % n) * k + i / n] } }  // (K, N)
            func operand(_ w: [Float]) -> Tensor {
                stored.hasPrefix("(N, K)") ? Tensor(shape: [n, k], data: w).transposed() : Tensor(shape: [k, n], data: kn(w))
            }
            let (w, v) = (operand(wOutIn), operand(vOutIn))
            w.keepBF16Copy(forTraining: true)
            v.keepBF16Copy(forTraining: true)
            XCTAssertEqual(w.bf16Copy?.servesTraining, true, stored)
            XCTAssertEqual(w.bf16Copy?.isEmulated, BF16Copy.emulates, stored)
            XCTAssertNotNil(w.bf16GradientCopy, stored)
            for m in rows {
                let xv = random(m * k, seed: UInt64(m + 30)), g1 = random(m * n, seed: UInt64(m + 31)), g2 = random(m * n, seed: UInt64(m + 32))
                let x = Tensor(shape: [m, k], data: xv)
                x.requiresGrad = true
                let (y1, y2) = (x.matmul(w), x.matmul(v))  // (M, N) each
                ((y1 * Tensor(shape: [m, n], data: g1)).sum() + (y2 * Tensor(shape: [m, n], data: g2)).sum()).backward()
                let rx = roundedToBF16(xv)
                assertClose(y1.toArray(), product(rx, roundedToBF16(kn(wOutIn)), m: m, k: k, n: n), rtol: 1e-5, atol: 2e-5, "\(stored), M \(m), forward")
                XCTAssertGreaterThan(maxAbsDiff(y1.toArray(), product(xv, kn(wOutIn), m: m, k: k, n: n)), 1e-4, "\(stored), M \(m): the fp32 values were read")
                // dX (M, K) = g1 · Wᵀ + g2 · Vᵀ, W as stored (N, K).
                let expected = zip(product(roundedToBF16(g1), roundedToBF16(wOutIn), m: m, k: n, n: k),
                                   product(roundedToBF16(g2), roundedToBF16(vOutIn), m: m, k: n, n: k)).map { $0 + $1 }
                assertClose(x.grad!.toArray(), expected, rtol: 1e-5, atol: 5e-5, "\(stored), M \(m), input gradient")
            }
        }
    }

    /// The fused output head and loss reads a frozen head's training copies: the loss equals the
    /// one of bf16-rounded hidden states and head computed exactly, and dH the rounded
    /// (softmax − onehot)/n times the rounded head; an ignored row gets no gradient.
    func testLinearCrossEntropyReadsTheTrainingCopies() {
        bothWays {
            let (rows, c, vocab) = (9, 40, 130)
            let hv = random(rows * c, seed: 41).map { $0 * 3 }, wv = random(vocab * c, seed: 42)
            let targets: [Int32] = [3, 129, -100, 0, 7, 64, 64, 2, 100]
            let w = Tensor(shape: [vocab, c], data: wv)  // (V, C), frozen
            w.transposed().keepBF16Copy(forTraining: true)
            let h = Tensor(shape: [rows, c], data: hv)
            h.requiresGrad = true
            let loss = Tensor.linearCrossEntropy(h, weight: w, targets: targets)
            loss.backward()
            let (rh, rw) = (roundedToBF16(hv), roundedToBF16(wv))
            let wT = (0..<(c * vocab)).map { i in rw[(i % vocab) * c + i / vocab] }  // (C, V)
            let logits = product(rh, wT, m: rows, k: c, n: vocab)
            let learned = targets.indices.filter { targets[$0] != -100 }
            var sum = 0.0
            var dlogits = [Float](repeating: 0, count: rows * vocab)
            for r in learned {
                let row = logits[(r * vocab)..<((r + 1) * vocab)].map(Double.init)
                let mx = row.max()!, z = row.reduce(0) { $0 + Foundation.exp($1 - mx) }
                sum += mx + Foundation.log(z) - row[Int(targets[r])]
                for j in 0..<vocab {
                    dlogits[r * vocab + j] = Float((Foundation.exp(row[j] - mx) / z - (j == Int(targets[r]) ? 1 : 0)) / Double(learned.count))
                }
            }
            XCTAssertEqual(Double(loss.item()), sum / Double(learned.count), accuracy: 1e-4)
            let dH = product(roundedToBF16(dlogits), rw, m: rows, k: vocab, n: c)
            assertClose(h.grad!.toArray(), dH, rtol: 1e-4, atol: 1e-6, "dH")
            XCTAssertEqual(Array(h.grad!.toArray()[(2 * c)..<(3 * c)]), [Float](repeating: 0, count: c), "the ignored row")
            let fp32 = Tensor.linearCrossEntropy(Tensor(shape: [rows, c], data: hv), weight: Tensor(shape: [vocab, c], data: wv), targets: targets)
            XCTAssertGreaterThan(abs(fp32.item() - loss.item()), 1e-6, "the fp32 head was read")
        }
    }
}
