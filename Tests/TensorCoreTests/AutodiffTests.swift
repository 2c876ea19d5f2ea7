// Autodiff behaviour: frozen tensors get no gradient and skip their GEMM, transposed operands are
// passed by flag, no-grad scopes record nothing, gradients accumulate until zeroed, views share storage.

import XCTest
import TestSupport
import CBLAS  // malloc.h (mallinfo2)
@testable import TensorCore

final class AutodiffTests: XCTestCase {
    /// x (trainable) @ Wᵀ (frozen): backward runs the dX GEMM only, and W gets no gradient.
    func testFrozenWeightSkipsItsGradientGEMM() {
        var rng = RNG(seed: 1)
        let x = Tensor.normal([4, 3], rng: &rng), w = Tensor.normal([5, 3], rng: &rng)
        x.requiresGrad = true
        let y = x.matmul(w.transposed())
        let loss = y.sum()
        let before = BLASCounter.sgemmCalls
        loss.backward()
        XCTAssertEqual(BLASCounter.sgemmCalls - before, 1, "only dX = dY·W is computed")
        XCTAssertNil(w.grad)
        // dX = 1·W: each row of dX is the column sums of Wᵀ, i.e. Σ_n W[n, :].
        let wv = w.toArray()
        let colSums = (0..<3).map { j in (0..<5).map { wv[$0 * 3 + j] }.reduce(0, +) }
        assertClose(x.grad!.toArray(), Array((0..<4).map { _ in colSums }.joined()), rtol: 1e-5)

        // Trainable weight, frozen input: only the dW GEMM.
        let x2 = Tensor.normal([4, 3], rng: &rng), w2 = Tensor.normal([5, 3], rng: &rng)
        w2.requiresGrad = true
        let l2 = x2.matmul(w2.transposed()).sum()
        let b2 = BLASCounter.sgemmCalls
        l2.backward()
        XCTAssertEqual(BLASCounter.sgemmCalls - b2, 1)
        XCTAssertNil(x2.grad)
        XCTAssertEqual(w2.grad?.shape, [5, 3])
    }

    /// A transposed weight enters the matmul as its source with a BLAS flag: no copy, no view node.
    func testTransposedOperandIsNotCopied() {
        let x = Tensor.ones([2, 3]), w = Tensor.ones([4, 3])
        w.requiresGrad = true
        let wt = w.transposed()
        XCTAssertTrue(wt.storage === w.storage, "transpose is a view")
        let y = x.matmul(wt)
        XCTAssertEqual(y.shape, [2, 4])
        XCTAssertTrue(y.node!.inputs[1] === w.slot, "matmul records the untransposed source")
        y.sum().backward()
        XCTAssertEqual(w.grad!.toArray(), [Float](repeating: 2, count: 12))
    }

    func testNoGradScopeRecordsNothing() {
        let w = Tensor.ones([3, 3])
        w.requiresGrad = true
        let y = withNoGrad { (w * 2).matmul(w).sum() }
        XCTAssertFalse(y.requiresGrad)
        XCTAssertNil(y.node)
        let z = (w * 2).sum()
        XCTAssertTrue(z.requiresGrad, "recording resumes after the scope")
    }

    func testGradientsAccumulateUntilZeroed() {
        let w = Tensor(shape: [2], data: [1, 2])
        w.requiresGrad = true
        (w * w).sum().backward()
        (w * 3).sum().backward()
        XCTAssertEqual(w.grad!.toArray(), [2 + 3, 4 + 3])
        w.zeroGrad()
        XCTAssertNil(w.grad)
        (w * 3).sum().backward()
        XCTAssertEqual(w.grad!.toArray(), [3, 3])
    }

    /// A tensor used twice gets both contributions; intermediate gradients are freed.
    func testSharedInputAndIntermediateGradients() {
        let a = Tensor(shape: [3], data: [1, 2, 3])
        a.requiresGrad = true
        let h = a * 2
        let loss = (h + h * a).sum()  // d/da = 2 + 4a
        loss.backward()
        XCTAssertEqual(a.grad!.toArray(), [6, 10, 14])
        XCTAssertNil(h.grad, "intermediate gradients are not kept")
    }

    /// `a + a` hands the same gradient to both sides; each accumulation must own its buffer.
    func testSameGradientToTwoInputsIsNotAliased() {
        let a = Tensor(shape: [2], data: [1, 2]), b = Tensor(shape: [2], data: [3, 4])
        a.requiresGrad = true
        b.requiresGrad = true
        (a + b).sum().backward()
        (a * 5).sum().backward()
        XCTAssertEqual(a.grad!.toArray(), [6, 6])
        XCTAssertEqual(b.grad!.toArray(), [1, 1])
    }

    /// An op that passes its gradient on unchanged (an add, a reshape) hands its input the buffer
    /// it received when nothing else holds it, instead of a copy; a second input of the same op, a
    /// caller's seed and a gradient that was already there each get their own buffer.
    func testPassedThroughGradientIsTakenOverOnlyWhenNoOneElseHoldsIt() {
        let a = Tensor(shape: [2, 2], data: [1, 2, 3, 4]), b = Tensor(shape: [4], data: [5, 6, 7, 8])
        a.requiresGrad = true
        b.requiresGrad = true
        var received: [Storage] = []
        func probe(_ x: Tensor) -> Tensor {  // (2, 2) → (4) as reshape does, noting the buffer its pullback gets
            let xSlot = x.slot
            return Tensor.make(x.contiguousData().storage, Layout(shape: [4], strides: [1], offset: 0), op: "probe", inputs: [x]) { g in
                received.append(g.storage)
                xSlot.accumulateGrad(passing: g)
            }
        }
        (probe(a) * 3).sum().backward()
        XCTAssertTrue(a.grad!.storage === received[0], "the product's fresh gradient is taken over")
        XCTAssertEqual(a.grad!.toArray(), [3, 3, 3, 3])
        (probe(a) * 2).sum().backward()
        XCTAssertFalse(a.grad!.storage === received[1], "a gradient already there is added into, not replaced")
        XCTAssertEqual(a.grad!.toArray(), [5, 5, 5, 5])
        a.zeroGrad()
        let seed = Tensor(shape: [4], data: [1, 10, 100, 1000])
        probe(a).backward(seed)
        XCTAssertFalse(a.grad!.storage === seed.storage, "a caller's seed is never taken")
        a.grad!.basePointer[0] = -1
        XCTAssertEqual(seed.toArray(), [1, 10, 100, 1000])
        a.zeroGrad()
        (a.reshaped([4]) + b).sum().backward()  // the add's two inputs: one takes the buffer, one copies
        XCTAssertFalse(a.grad!.storage === b.grad!.storage)
        (a * 5).sum().backward()
        XCTAssertEqual(a.grad!.toArray(), [6, 6, 6, 6])
        XCTAssertEqual(b.grad!.toArray(), [1, 1, 1, 1])
    }

    /// backward(seed) reads the seed without copying it for a non-leaf root, and never writes it.
    func testSeedIsNotModified() {
        let x = Tensor(shape: [2, 2], data: [1, 2, 3, 4])
        x.requiresGrad = true
        let seed = Tensor(shape: [2, 2], data: [1, 10, 100, 1000])
        (x * 2).backward(seed)
        (x + x).backward(seed)
        XCTAssertEqual(seed.toArray(), [1, 10, 100, 1000])
        XCTAssertEqual(x.grad!.toArray(), [4, 40, 400, 4000])
        x.zeroGrad()
        x.backward(seed)  // a leaf root keeps its own copy
        x.grad!.basePointer[0] = -1
        XCTAssertEqual(seed.toArray(), [1, 10, 100, 1000])
    }

    /// The graph keeps only the values a pullback reads. A projection that is reshaped, then
    /// rotated (the q of attention before RoPE), the output of SwiGLU fed to a frozen weight, and
    /// the inputs of a concat are not needed by any backward: once the forward lets go of them,
    /// their memory is freed while the graph lives on (these three kept 357 MB of SmolLM2's
    /// activations alive at batch 4 × 256 tokens).
    func testGraphKeepsNoUsedUpValues() {
        var rng = RNG(seed: 8)
        let x = Tensor.normal([2, 3, 8], rng: &rng)
        x.requiresGrad = true
        let frozen = Tensor.normal([8, 8], rng: &rng)
        weak var projection: Storage?, swigluOut: Storage?, concatIn: Storage?
        let out: Tensor = {
            let p = x.matmul(frozen)  // (2, 3, 8)
            projection = p.storage
            let q = p.reshaped([2, 3, 2, 4]).rope(theta: 10_000, seqAxis: 1)  // (2, 3, 2, 4)
            let s = Tensor.swiglu(gate: q.reshaped([2, 3, 8]), up: x)
            swigluOut = s.storage
            let m = s.matmul(frozen)
            let c = Tensor.concat([m, x], axis: 1)  // (2, 6, 8)
            concatIn = m.storage
            return c
        }()
        XCTAssertNil(projection, "a reshaped view's source, used up by RoPE")
        XCTAssertNil(swigluOut, "SwiGLU's output, read by a frozen weight's product only")
        XCTAssertNil(concatIn, "a concat's input")
        out.sum().backward()
        XCTAssertNotNil(x.grad, "the graph still back-propagates")
    }

    /// A recomputed function gives the gradients of the plain one, into its input, a parameter it
    /// reads and a tensor it captured from the graph outside (whose own graph must still run
    /// afterwards, once), while the function's inner values are freed after the forward pass.
    func testRecomputedFunctionGivesTheSameGradientsAndFreesItsInside() {
        func run(_ recompute: Bool) -> (loss: Float, grads: [[Float]], insideFreed: Bool) {
            var rng = RNG(seed: 3)
            let x0 = Tensor.normal([2, 4, 8], rng: &rng), w = Tensor.normal([8, 8], rng: &rng), c0 = Tensor.normal([8], rng: &rng)
            for t in [x0, w, c0] { t.requiresGrad = true }
            let x = x0 * 2, c = c0.rmsNorm(weight: Tensor.ones([8]))  // outside ops with a graph
            weak var inside: Storage?
            let f = {
                let h = x.matmul(w) + c  // (2, 4, 8)
                inside = h.storage
                return Tensor.swiglu(gate: h, up: x).matmul(w)
            }
            let y = recompute ? Tensor.recomputed("f", f) : f()
            let insideFreed = inside == nil
            let loss = (y.sum() + (x * c).sum())  // x and c are used outside as well
            loss.backward()
            return (loss.item(), [x0, w, c0].map { $0.grad!.toArray() }, insideFreed)
        }
        let plain = run(false), recomputed = run(true)
        XCTAssertFalse(plain.insideFreed, "the plain graph keeps what its pullbacks read")
        XCTAssertTrue(recomputed.insideFreed, "the recomputed function keeps nothing inside")
        XCTAssertEqual(recomputed.loss, plain.loss)
        for (a, b) in zip(recomputed.grads, plain.grads) { XCTAssertEqual(a, b) }
        // Outside recording it is the function itself.
        let t = Tensor.ones([2])
        XCTAssertEqual(withNoGrad { Tensor.recomputed("g") { t * 3 } }.toArray(), [3, 3])
    }

    /// A norm's or an activation's output dropped after its forward use (`dropValuesUntilRead`)
    /// leaves the heap, is recomputed when the weight gradient of the matmul that read it needs
    /// it, and changes no bit of the values or gradients.
    func testDroppedActivationsAreRecomputedBitForBit() {
        let ops: [(String, (Tensor, Tensor, Tensor) -> Tensor)] = [
            ("rmsNorm", { x, w, _ in x.rmsNorm(weight: w) }),
            ("layerNorm", { x, w, b in x.layerNorm(weight: w, bias: b) }),
            ("swiglu", { x, w, _ in Tensor.swiglu(gate: x, up: x * w) }),
            ("gelu", { x, _, _ in x.gelu() }),
            ("geluTanh", { x, _, _ in x.geluTanh() }),
            ("silu", { x, _, _ in x.silu() }),
        ]
        for (name, op) in ops {
            func run(drop: Bool) -> (y: [Float], grads: [[Float]], freed: Int) {
                var rng = RNG(seed: 11)
                let x = Tensor.normal([64, 256], rng: &rng), w = Tensor.normal([256], rng: &rng)
                let b = Tensor.normal([256], rng: &rng), m = Tensor.normal([256, 32], rng: &rng)
                for t in [x, w, b, m] { t.requiresGrad = true }
                let y = op(x, w, b)  // (64, 256)
                let z = y.matmul(m)  // m trains: its pullback keeps y for m's gradient
                let before = Int(mallinfo2().uordblks)
                if drop { y.dropValuesUntilRead() }
                let freed = before - Int(mallinfo2().uordblks)
                (z * z).sum().backward()
                return (y.toArray(), [x, w, b, m].map { $0.grad?.toArray() ?? [] }, freed)
            }
            let kept = run(drop: false), dropped = run(drop: true)
            XCTAssertGreaterThanOrEqual(dropped.freed, 64 * 256 * 4, "\(name): the output's values leave the heap")
            XCTAssertEqual(dropped.y, kept.y, "\(name): recomputed values")
            for (a, b) in zip(dropped.grads, kept.grads) { XCTAssertEqual(a, b, "\(name): gradients") }
        }
        // The same through LoRA's shared product and an IA3-like scale (⊙ a vector), whose
        // pullbacks also read x afresh; an op that may keep a pointer into its input from the
        // forward pass (here RoPE) pins it: not dropped.
        for consumer in ["lowRankProject", "scale", "rope"] {
            let pinning = consumer == "rope"
            func run(drop: Bool) -> (grads: [[Float]], freed: Int) {
                var rng = RNG(seed: 12)
                let x = Tensor.normal([64, 256], rng: &rng), w = Tensor.normal([256], rng: &rng)
                let a = Tensor.normal([8, 256], rng: &rng)
                for t in [x, w, a] { t.requiresGrad = true }
                let y = x.rmsNorm(weight: w)  // (64, 256)
                let l = Tensor.normal([256], rng: &rng)
                l.requiresGrad = true
                let u = consumer == "rope" ? (y.rope(theta: 10_000) * x).matmul(a.transposed())
                    : consumer == "scale" ? (y * l).matmul(a.transposed()) : Tensor.lowRankProject(y, a: [a])
                let before = Int(mallinfo2().uordblks)
                if drop { y.dropValuesUntilRead() }
                let freed = before - Int(mallinfo2().uordblks)
                (u * u).sum().backward()
                return ([x, w, a, l].map { $0.grad?.toArray() ?? [] }, freed)
            }
            let kept = run(drop: false), dropped = run(drop: true)
            if pinning {
                XCTAssertEqual(dropped.freed, 0, "an input of \(consumer) stays")
            } else {
                XCTAssertGreaterThanOrEqual(dropped.freed, 64 * 256 * 4, "\(consumer)'s input is dropped")
            }
            for (a, b) in zip(dropped.grads, kept.grads) { XCTAssertEqual(a, b, "\(consumer): gradients") }
        }
        // A second backward pass over the same graph reads values that the first left dropped
        // (it reached the norm through a frozen product only).
        func secondPass(drop: Bool) -> [Float] {
            var rng = RNG(seed: 13)
            let x = Tensor.normal([64, 256], rng: &rng), frozen = Tensor.normal([256, 8], rng: &rng)
            let m = Tensor.normal([256, 8], rng: &rng)
            x.requiresGrad = true
            m.requiresGrad = true
            let y = x.rmsNorm(weight: nil)
            let first = y.matmul(frozen).sum(), second = (y.matmul(m) * 2).sum()
            if drop { y.dropValuesUntilRead() }
            first.backward()
            second.backward()
            return m.grad!.toArray()
        }
        XCTAssertEqual(secondPass(drop: true), secondPass(drop: false))
        // A checkpointed function that ends in a norm keeps neither the inside nor the norm's input.
        weak var inside: Storage?
        let v = Tensor.ones([4, 8])
        v.requiresGrad = true
        let checkpointed = Tensor.recomputed("f") { () -> Tensor in
            let h = v * 3
            inside = h.storage
            return h.rmsNorm(weight: nil)
        }
        XCTAssertNil(inside, "the recomputed function's inside is freed")
        checkpointed.sum().backward()
        XCTAssertNotNil(v.grad)
        // Nothing is dropped where it could not be recomputed: without a graph, or for an op whose
        // derivative reads its own output (exp keeps it for its pullback).
        let x = Tensor.ones([4, 8])
        let free = withNoGrad { x.rmsNorm(weight: nil) }
        free.dropValuesUntilRead()
        assertClose(free.toArray(), [Float](repeating: 1, count: 32), rtol: 1e-5)
        x.requiresGrad = true
        let e = x.exp()
        let before = Int(mallinfo2().uordblks)
        e.dropValuesUntilRead()
        XCTAssertEqual(Int(mallinfo2().uordblks), before, "exp's output is its pullback's input: kept")
        e.sum().backward()
        assertClose(x.grad!.toArray(), [Float](repeating: Float(M_E), count: 32), rtol: 1e-5)
    }

    /// `firstNonFinite` (every loader's check of the weights it read) finds the first NaN or
    /// infinity at any position, block edges included, through a transposed view too, and passes
    /// the largest finite values, subnormals and −0.
    func testFirstNonFiniteFindsTheFirstNaNOrInfinity() {
        let n = 10_000
        var values = (0..<n).map { Float($0 % 7) - 3 }
        values[1] = .greatestFiniteMagnitude
        values[2] = -.greatestFiniteMagnitude
        values[3] = .leastNonzeroMagnitude
        values[5] = -0.0
        XCTAssertNil(Tensor(shape: [n], data: values).firstNonFinite())
        for position in [0, 4095, 4096, 8191, 8192, n - 1] {
            for bad in [Float.nan, .infinity, -.infinity] {
                var v = values
                v[position] = bad
                if position + 3 < n { v[position + 3] = .nan }  // a later one is not the first
                let found = Tensor(shape: [n], data: v).firstNonFinite()
                XCTAssertEqual(found?.index, position, "\(bad) at \(position)")
                XCTAssertEqual(found?.value.isNaN, bad.isNaN, "\(bad) at \(position)")
                if !bad.isNaN { XCTAssertEqual(found?.value, bad) }
            }
        }
        var v = values
        v[4097] = .infinity  // row 4097 / 100 = 40, column 97: element 97·100 + 40 of the transpose
        let t = Tensor(shape: [100, 100], data: v).transposed()
        XCTAssertEqual(t.firstNonFinite()?.index, 97 * 100 + 40)
    }

    func testViewsShareStorage() {
        let x = Tensor.arange(0, 24).reshaped([2, 3, 4])
        XCTAssertTrue(x.permuted([2, 0, 1]).storage === x.storage)
        XCTAssertTrue(x.slice(axis: 1, 1, 3).storage === x.storage)
        XCTAssertTrue(x.slice(axis: 0, 0, 1).expand([5, 3, 4]).storage === x.storage)
        XCTAssertTrue(x.reshaped([6, 4]).storage === x.storage)
        XCTAssertEqual(x.slice(axis: 2, 1, 3).toArray(), [1, 2, 5, 6, 9, 10, 13, 14, 17, 18, 21, 22])
        XCTAssertEqual(x.transposed(0, 2).shape, [4, 3, 2])
        XCTAssertEqual(x.transposed(0, 2).toArray().prefix(4), [0, 12, 4, 16])
    }

    /// Regression: a size-1 axis created by a view-reshape used to get stride 0, which broke BLAS
    /// leading dimensions in single-token (T = 1) decoding of a fused qkv projection.
    func testReshapeViewGivesSizeOneAxesUsableStrides() {
        let qkv = Tensor.arange(0, 12).reshaped([1, 1, 3, 2, 2])  // (B, T, 3, H, D)
        let k = qkv.slice(axis: 2, 1, 2).reshaped([1, 1, 2, 2])      // (B, T, H, D), a view
        XCTAssertTrue(k.storage === qkv.storage)
        XCTAssertEqual(k.layout.strides, [4, 4, 2, 1])
        XCTAssertEqual(k.toArray(), [4, 5, 6, 7])
        let scores = Tensor.attention(q: k, k: k, v: k)  // T = 1 reads ld from the T stride
        XCTAssertEqual(scores.toArray(), [4, 5, 6, 7])
    }

    func testFrozenLeafNeverReceivesGradient() {
        let frozen = Tensor.ones([2, 2]), trainable = Tensor.ones([2, 2])
        trainable.requiresGrad = true
        ((frozen * trainable).layerNorm(weight: frozen.slice(axis: 0, 0, 1).reshaped([2]), bias: nil)).sum().backward()
        XCTAssertNil(frozen.grad)
        XCTAssertNotNil(trainable.grad)
    }

    func testCreationIsSeeded() {
        var r1 = RNG(seed: 9), r2 = RNG(seed: 9)
        XCTAssertEqual(Tensor.normal([10], rng: &r1).toArray(), Tensor.normal([10], rng: &r2).toArray())
        XCTAssertEqual(Tensor.uniform([10], low: -1, high: 1, rng: &r1).toArray(),
                       Tensor.uniform([10], low: -1, high: 1, rng: &r2).toArray())
        XCTAssertEqual(Tensor.arange(1, 2, step: 0.25).toArray(), [1, 1.25, 1.5, 1.75])
        XCTAssertEqual(Tensor.full([2], 7).toArray(), [7, 7])
        var r3 = RNG(seed: 5)
        _ = r3.nextNormal()
        let snap = r3.snapshot
        var r4 = RNG(snapshot: snap)
        XCTAssertEqual(r3.nextNormal(), r4.nextNormal(), "a snapshot restores the pending normal too")
        XCTAssertEqual(r3.next(), r4.next())
    }

    /// Dropout keeps the expectation: E[dropout(x)] = x; the kept fraction is near 1 − p.
    func testDropoutStatistics() {
        var rng = RNG(seed: 3)
        let y = Tensor.ones([100_000]).dropout(0.25, rng: &rng).toArray()
        let kept = y.filter { $0 != 0 }.count
        XCTAssertEqual(Double(kept) / 100_000, 0.75, accuracy: 0.01)
        XCTAssertEqual(Double(y.reduce(0, +)) / 100_000, 1, accuracy: 0.02)
    }
}

final class ShapeErrorTests: XCTestCase {
    /// The ops themselves stop the process with the op name and both shapes (run in a child
    /// process, since a failed precondition cannot be caught in-process).
    func testOpsStopWithTheMessage() throws {
        let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        var probe = dir.appendingPathComponent("shape-probe")
        if !FileManager.default.fileExists(atPath: probe.path) {  // xctest bundle layout: one level deeper
            probe = dir.deletingLastPathComponent().appendingPathComponent("shape-probe")
        }
        guard FileManager.default.fileExists(atPath: probe.path) else {
            XCTFail("shape-probe was not built next to the tests (looked in \(dir.path)); run scripts/test")
            return
        }
        let expected: [String: [String]] = [
            "matmul": ["[matmul]", "[2, 3]", "[4, 5]"],
            "add": ["[add]", "[2, 3]", "[4]"],
            "reshape": ["[reshape]", "[2, 3]", "[4, 2]"],
            "concat": ["[concat]", "[2, 3]", "[4, 5]"],
            "layerNorm": ["[layerNorm]", "[4]", "[2, 3]"],
            "crossEntropy": ["[crossEntropy]", "[2, 3]", "3"],
            "attention": ["[attention]", "[1, 2, 2, 4]", "[1, 2, 3, 4]"],
            "recomputed-values": ["[probe]", "other values"],
            "recomputed-state": ["[probe]", "other outside tensors"],
            "linearCrossEntropy-twice": ["[linearCrossEntropy]", "second backward", "lmHead + crossEntropy"],
        ]
        for (op, needles) in expected.sorted(by: { $0.key < $1.key }) {
            let p = Process()
            p.executableURL = probe
            p.arguments = [op]
            let err = Pipe(), out = Pipe()
            p.standardError = err
            p.standardOutput = out
            try p.run()
            p.waitUntilExit()
            let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                + String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            XCTAssertNotEqual(p.terminationStatus, 0, "\(op) should stop the process")
            XCTAssertFalse(text.contains("no error"), op)
            for n in needles { XCTAssertTrue(text.contains(n), "\(op): '\(text.prefix(300))' should mention \(n)") }
        }
    }

    /// Each check names the op and both shapes, as the op's precondition message would.
    func testMessagesNameTheOpAndShapes() {
        func message(_ body: () throws -> Void) -> String {
            do { try body(); return "" } catch { return "\(error)" }
        }
        let cases: [(String, () throws -> Void, [String])] = [
            ("add", { _ = try ShapeCheck.broadcast([2, 3], [4], op: "add") }, ["[add]", "[2, 3]", "[4]"]),
            ("matmul", { _ = try ShapeCheck.matmul([2, 3], [4, 5]) }, ["[matmul]", "[2, 3]", "[4, 5]"]),
            ("matmul batch", { _ = try ShapeCheck.matmul([2, 3, 4], [3, 4, 5]) }, ["[matmul]", "[2]", "[3]"]),
            ("matmul rank", { _ = try ShapeCheck.matmul([3], [3, 5]) }, ["[matmul]", "[3]", "[3, 5]"]),
            ("reshape", { _ = try ShapeCheck.reshape([2, 3], [4, 2]) }, ["[reshape]", "[2, 3]", "[4, 2]"]),
            ("permute", { try ShapeCheck.permute([2, 3], [0, 0]) }, ["[permute]", "[0, 0]", "[2, 3]"]),
            ("slice", { _ = try ShapeCheck.slice([2, 3], axis: 1, start: 2, end: 5) }, ["[slice]", "2..<5", "[2, 3]"]),
            ("concat", { _ = try ShapeCheck.concat([[2, 3], [3, 3]], axis: 1) }, ["[concat]", "[2, 3]", "[3, 3]"]),
            ("expand", { try ShapeCheck.expand([3, 2], to: [3, 4]) }, ["[expand]", "[3, 2]", "[3, 4]"]),
            ("layerNorm", { try ShapeCheck.feature("layerNorm", input: [4, 8], param: [6], name: "weight") },
             ["[layerNorm]", "[6]", "[4, 8]"]),
            ("crossEntropy", { try ShapeCheck.crossEntropy(logits: [4, 10], targets: 3) }, ["[crossEntropy]", "[4, 10]", "3"]),
            ("axis", { _ = try ShapeCheck.axis(3, rank: 2, op: "sum") }, ["[sum]", "3", "rank 2"]),
        ]
        for (name, body, needles) in cases {
            let m = message(body)
            XCTAssertFalse(m.isEmpty, "\(name): expected a shape error")
            for n in needles { XCTAssertTrue(m.contains(n), "\(name): '\(m)' should mention \(n)") }
        }
        // Valid shapes pass.
        XCTAssertEqual(try ShapeCheck.broadcast([2, 1, 4], [3, 1], op: "add"), [2, 3, 4])
        XCTAssertEqual(try ShapeCheck.reshape([2, 6], [-1, 4]), [3, 4])
        XCTAssertEqual(try ShapeCheck.matmul([5, 1, 2, 3], [4, 3, 6]).batch, [5, 4])
    }
}

final class FastMathTests: XCTestCase {
    /// Regression: a NaN score used to be taken for "no visible key" and zeroed, so a NaN in the
    /// weights vanished from the loss. NaN must propagate through every max-based kernel.
    func testNaNPropagates() {
        let row = Tensor(shape: [1, 9], data: [1, 2, 3, 4, 5, 6, 7, .nan, 8])
        XCTAssertTrue(row.softmax().toArray().allSatisfy(\.isNaN))
        XCTAssertTrue(row.logSoftmax().toArray().allSatisfy(\.isNaN))
        XCTAssertTrue(row.crossEntropy(targets: [0]).item().isNaN)
        XCTAssertTrue(row.max(axis: 1).item().isNaN)
        XCTAssertTrue(Tensor(shape: [1, 3], data: [.nan, 1, 2]).max(axis: 1).item().isNaN)
        let q = Tensor(shape: [1, 1, 1, 2], data: [.nan, 1])
        XCTAssertTrue(Tensor.attention(q: q, k: q, v: q).toArray().allSatisfy(\.isNaN))
        // A fully masked row (all -inf) is still "nothing visible": zeros, not NaN.
        let k = Tensor(shape: [1, 2, 1, 2], data: [1, 2, 3, 4])
        let out = Tensor.attention(q: Tensor(shape: [1, 1, 1, 2], data: [1, 1]), k: k, v: k, keyMask: [0, 0])
        XCTAssertEqual(out.toArray(), [0, 0])
    }

    /// fastExp against Double exp over the whole useful range, and at the edges.
    func testFastExpAccuracyAndEdges() {
        var worst = 0.0
        var x: Float = -87
        while x < 88.5 {
            let ref = Foundation.exp(Double(x))
            worst = maxKeepingNaN(worst, abs(Double(fastExp(x)) - ref) / ref)
            x += 0.0137
        }
        XCTAssertLessThan(worst, 4e-7, "relative error")
        XCTAssertEqual(fastExp(0), 1)
        XCTAssertEqual(fastExp(-.infinity), 0)
        XCTAssertEqual(fastExp(-100), 0)
        XCTAssertEqual(fastExp(.infinity), .infinity)
        XCTAssertEqual(fastExp(100), .infinity)
        XCTAssertTrue(fastExp(88.7).isFinite)
        XCTAssertTrue(fastExp(.nan).isNaN)
    }

    /// fastErf against Double erf over ±6 (erf is ±1 in Float32 beyond) and on a log scale near 0,
    /// where a relative error shows; and at the edges.
    func testFastErfAccuracyAndEdges() {
        var (worstAbs, worstRel) = (0.0, 0.0)
        var xs = stride(from: Float(-6), through: 6, by: 0.000731).map { $0 }
        xs += stride(from: -8.0, through: 0, by: 0.01).flatMap { e in [Float(pow(10, e)), -Float(pow(10, e))] }
        for x in xs {
            let ref = Foundation.erf(Double(x)), err = abs(Double(fastErf(x)) - ref)
            worstAbs = maxKeepingNaN(worstAbs, err)
            if ref != 0 { worstRel = maxKeepingNaN(worstRel, err / abs(ref)) }
        }
        XCTAssertLessThan(worstAbs, 3e-7, "absolute error")
        XCTAssertLessThan(worstRel, 3e-7, "relative error")
        XCTAssertEqual(fastErf(0), 0)
        XCTAssertEqual(fastErf(.infinity), 1)
        XCTAssertEqual(fastErf(-.infinity), -1)
        XCTAssertEqual(fastErf(-20), -1)
        XCTAssertTrue(fastErf(.nan).isNaN)
    }

    /// Tensors with an axis of size 0 go through elementwise ops, broadcasts and reductions (an
    /// empty sequence): they used to divide by zero unravelling a row that does not exist.
    func testEmptyAxesAreFine() {
        XCTAssertEqual((Tensor.zeros([0, 4]) + Tensor.zeros([4])).shape, [0, 4])
        XCTAssertEqual(Tensor.zeros([0, 4]).sum(axes: [0]).toArray(), [0, 0, 0, 0])
        XCTAssertEqual((Tensor.zeros([2, 0, 3]) * Tensor.zeros([1, 0, 1])).shape, [2, 0, 3])
    }

    /// The sum's backward reads its incoming gradient where that view starts (a slice has an offset).
    func testSumBackwardReadsAnOffsetGradient() {
        let x = Tensor(shape: [2, 3], data: [1, 2, 3, 4, 5, 6])
        x.requiresGrad = true
        let seed = Tensor(shape: [2, 3], data: [9, 9, 9, 1, 2, 3]).slice(axis: 0, 1, 2).reshaped([3])
        x.sum(axes: [0]).backward(seed)
        XCTAssertEqual(x.grad?.toArray(), [1, 2, 3, 1, 2, 3])
    }

    /// backward() lets go of each op's saved tensors once its pullback ran; retainGraph keeps them.
    func testBackwardReleasesTheGraphUnlessRetained() {
        for retain in [false, true] {
            let x = Tensor(shape: [3], data: [1, 2, 3])
            x.requiresGrad = true
            weak var mid: Tensor?
            let loss: Tensor = {
                let m = x * x
                mid = m
                return (m * m).sum()
            }()
            XCTAssertNotNil(mid, "the graph keeps the intermediate until backward")
            loss.backward(retainGraph: retain)
            XCTAssertEqual(x.grad?.toArray(), [4, 32, 108])  // d/dx x⁴ = 4x³
            if retain {
                XCTAssertNotNil(mid)
                loss.backward()
                XCTAssertEqual(x.grad?.toArray(), [8, 64, 216], "a retained graph runs again")
            } else {
                XCTAssertNil(mid, "released as the backward passed it")
                XCTAssertFalse(loss.requiresGrad)
            }
        }
    }

    /// Products of one to three rows through `sgemm` (sgemv up to `gemvRows` rows) and through
    /// `rowwiseGEMV` itself: every transpose combination, padded row strides for A, B and C (the
    /// padding must stay untouched), beta 0 over NaN-filled memory and beta 1 accumulation, against
    /// a naive loop.
    func testFewRowProductsMatchNaive() {
        let (k, n) = (5, 7)
        var rng = RNG(seed: 31)
        let aData = (0..<(k * 5)).map { _ in rng.nextNormal() }  // A (3, K) with lda K + 2, or (K, 3) with lda 5
        let bData = (0..<(k * (n + 1) + 8)).map { _ in rng.nextNormal() }  // B (K, N) with ldb N + 1, or (N, K) with ldb K + 1
        let sentinel: Float = 12345
        for m in 1...3 {
            for transA in [false, true] {
                for transB in [false, true] {
                    for beta: Float in [0, 1] {
                        for rowwise in [false, true] {
                            let lda = transA ? 5 : k + 2, ldb = transB ? k + 1 : n + 1, ldc = n + 3
                            func aAt(_ i: Int, _ kk: Int) -> Float { transA ? aData[kk * lda + i] : aData[i * lda + kk] }
                            func bAt(_ kk: Int, _ j: Int) -> Float { transB ? bData[j * ldb + kk] : bData[kk * ldb + j] }
                            var c = [Float](repeating: sentinel, count: m * ldc)
                            for i in 0..<m { for j in 0..<n { c[i * ldc + j] = beta == 0 ? .nan : 0.5 } }
                            aData.withUnsafeBufferPointer { pa in
                                bData.withUnsafeBufferPointer { pb in
                                    c.withUnsafeMutableBufferPointer { pc in
                                        if rowwise {
                                            rowwiseGEMV(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 2, a: pa.baseAddress!,
                                                        lda: lda, b: pb.baseAddress!, ldb: ldb, beta: beta, c: pc.baseAddress!, ldc: ldc)
                                        } else {
                                            sgemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 2, a: pa.baseAddress!, lda: lda,
                                                  b: pb.baseAddress!, ldb: ldb, beta: beta, c: pc.baseAddress!, ldc: ldc)
                                        }
                                    }
                                }
                            }
                            let label = "m \(m) transA \(transA) transB \(transB) beta \(beta) rowwise \(rowwise)"
                            for i in 0..<m {
                                let want = (0..<n).map { j in 2 * (0..<k).reduce(Float(0)) { $0 + aAt(i, $1) * bAt($1, j) } + beta * 0.5 }
                                assertClose(Array(c[(i * ldc)..<(i * ldc + n)]), want, rtol: 1e-5, atol: 1e-5, "\(label) row \(i)")
                                XCTAssertEqual(Array(c[(i * ldc + n)..<((i + 1) * ldc)]), [Float](repeating: sentinel, count: ldc - n),
                                               "\(label): row \(i)'s padding untouched")
                            }
                        }
                    }
                }
            }
        }
    }

    /// Under `.tasks` (the default split) a product is cut over the threads: by output columns
    /// (small-kernel chunks for few rows against a stored-(N, K) weight on cores that have those
    /// kernels, one part per thread otherwise) or by rows. `splitGEMM` runs both column splits
    /// here, whatever the core and the thread count. Every case equals the same product in one
    /// OpenBLAS call, beta 0 over NaN-filled memory and beta 1 accumulation, for 1 to 700 rows
    /// (and a product wider than tall with 256 rows or more per thread, cut by rows) and every
    /// transpose combination.
    func testSplitGEMMMatchesOneCall() {
        var rng = RNG(seed: 47)
        let wide = 256 * hardwareThreads + 88  // rows enough for each thread's 256: cut by rows though wider than tall
        let shapes = [(1, 576, 1536), (2, 576, 1536), (8, 576, 1536), (3, 1536, 200), (24, 64, 5000), (64, 96, 96), (700, 40, 30), (wide, 32, wide + 300)]
        let chunksOnThisCore = smallMatrixChunks
        defer { smallMatrixChunks = chunksOnThisCore }
        for (m, k, n) in shapes {
            let aData = (0..<(m * k)).map { _ in rng.nextNormal() }
            let bData = (0..<(k * n)).map { _ in rng.nextNormal() }
            for transA in [false, true] {
                for transB in [false, true] {
                    for beta: Float in [0, 1] {
                        let lda = transA ? m : k, ldb = transB ? k : n
                        func product(_ split: Threads.GEMMSplit) -> [Float] {
                            var c = [Float](repeating: beta == 0 ? .nan : 0.5, count: m * n)
                            Threads.withGEMMSplit(split) {
                                aData.withUnsafeBufferPointer { pa in
                                    bData.withUnsafeBufferPointer { pb in
                                        c.withUnsafeMutableBufferPointer { pc in
                                            sgemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 2, a: pa.baseAddress!,
                                                  lda: lda, b: pb.baseAddress!, ldb: ldb, beta: beta, c: pc.baseAddress!, ldc: n)
                                        }
                                    }
                                }
                            }
                            return c
                        }
                        XCTAssertEqual(Threads.gemmSplit, .tasks, "the default, restored after withGEMMSplit")
                        let whole = product(.blas)
                        assertClose(product(.tasks), whole, rtol: 1e-4, atol: 1e-4, "(\(m), \(k)) x (\(k), \(n)) through sgemm")
                        for chunks in [false, true] {  // splitGEMM itself, whatever the thread count
                            smallMatrixChunks = chunks
                            var c = [Float](repeating: beta == 0 ? .nan : 0.5, count: m * n)
                            aData.withUnsafeBufferPointer { pa in
                                bData.withUnsafeBufferPointer { pb in
                                    c.withUnsafeMutableBufferPointer { pc in
                                        splitGEMM(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 2, a: pa.baseAddress!,
                                                  lda: lda, b: pb.baseAddress!, ldb: ldb, beta: beta, c: pc.baseAddress!, ldc: n)
                                    }
                                }
                            }
                            assertClose(c, whole, rtol: 1e-4, atol: 1e-4,
                                        "(\(m), \(k)) x (\(k), \(n)) transA \(transA) transB \(transB) beta \(beta) chunks \(chunks)")
                        }
                    }
                }
            }
        }
    }

    /// The worker pool runs every task once, back to back thousands of times; a call made from
    /// inside a task runs its own tasks on that thread.
    func testWorkerPoolRunsEveryTaskOnce() {
        let counts = UnsafeMutablePointer<Int>.allocate(capacity: 64)
        defer { counts.deallocate() }
        for round in 0..<5000 {
            let n = 2 + round % 7
            counts.initialize(repeating: 0, count: n)
            WorkerPool.shared.run(n) { i in counts[i] += 1 }
            XCTAssertEqual(Array(UnsafeBufferPointer(start: counts, count: n)), [Int](repeating: 1, count: n), "round \(round)")
        }
        let nested = UnsafeMutablePointer<Int>.allocate(capacity: 12)
        defer { nested.deallocate() }
        nested.initialize(repeating: 0, count: 12)
        WorkerPool.shared.run(3) { i in
            WorkerPool.shared.run(4) { j in nested[i * 4 + j] += 1 }
        }
        XCTAssertEqual(Array(UnsafeBufferPointer(start: nested, count: 12)), [Int](repeating: 1, count: 12))
    }
}
