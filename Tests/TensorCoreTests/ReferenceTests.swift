// Forward values of the TensorCore ops against numpy references (float64 math rounded to float32),
// and the seeded RNG against a pure-Python re-implementation. The fixtures live in
// Fixtures/ops.json and are made by `python3 scripts/make_fixtures.py` (run from the package root).
//
// Input specs in the fixture: {"ref": name} points at stored data in "tensors" (shape + values);
// {"shape", "uniform_seed"} is drawn here by Tensor.uniform(low: -1, high: 1) with RNG(seed) (the
// script re-implements it bit-exactly), for inputs large enough to reach the parallel code paths.
// Either may carry "permute" (axes) and then "slice" ([axis, start, end]) views, applied in that
// order. Expected outputs carry a shape and values, or every `stride`-th value of a large output.

import Foundation
import XCTest
import TestSupport
@testable import TensorCore

private let fixtureURL = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("Fixtures/ops.json")
private let regenerateHint = "regenerate it from the package root with `python3 scripts/make_fixtures.py` (python3 + numpy)"

private enum FixtureError: Error, CustomStringConvertible {
    case missing(String), unreadable(String)
    var description: String {
        switch self {
        case .missing(let m), .unreadable(let m): m
        }
    }
}

/// The parsed fixture file, read once for all tests.
private let loadedFixture: Result<[String: Any], FixtureError> = {
    guard FileManager.default.fileExists(atPath: fixtureURL.path) else {
        return .failure(.missing("reference fixture \(fixtureURL.path) is MISSING: \(regenerateHint)"))
    }
    do {
        let data = try Data(contentsOf: fixtureURL)
        guard let root = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            return .failure(.unreadable("reference fixture \(fixtureURL.path) is not a JSON object: \(regenerateHint)"))
        }
        return .success(root)
    } catch {
        return .failure(.unreadable("reference fixture \(fixtureURL.path) cannot be read (\(error)): \(regenerateHint)"))
    }
}()

final class ReferenceTests: XCTestCase {
    // MARK: fixture access

    /// The whole fixture, or nil after a loud failure naming the command that regenerates it.
    private func root(file: StaticString = #filePath, line: UInt = #line) -> [String: Any]? {
        switch loadedFixture {
        case .success(let r): return r
        case .failure(let e):
            XCTFail("\(e)", file: file, line: line)
            return nil
        }
    }

    /// The cases of one op family (never silently empty).
    private func cases(_ family: String, file: StaticString = #filePath, line: UInt = #line) -> [[String: Any]] {
        guard let r = root(file: file, line: line) else { return [] }
        guard let list = r[family] as? [[String: Any]], !list.isEmpty else {
            XCTFail("fixture has no cases for \"\(family)\": \(regenerateHint)", file: file, line: line)
            return []
        }
        return list
    }

    private func number(_ v: Any?) -> Double? {
        if let n = v as? NSNumber { return n.doubleValue }
        if let s = v as? String {
            switch s {
            case "inf": return .infinity
            case "-inf": return -.infinity
            case "nan": return .nan
            default: return nil
            }
        }
        return nil
    }

    private func float(_ v: Any?, _ what: String) -> Float {
        guard let d = number(v) else { fatalError("[fixture] \(what) is not a number: \(String(describing: v))") }
        return Float(d)
    }

    private func floats(_ v: Any?, _ what: String) -> [Float] {
        guard let list = v as? [Any] else { fatalError("[fixture] \(what) is not a list") }
        return list.map { float($0, what) }
    }

    private func ints(_ v: Any?, _ what: String) -> [Int] {
        guard let list = v as? [Any] else { fatalError("[fixture] \(what) is not a list of integers") }
        return list.map { x in
            guard let n = x as? NSNumber else { fatalError("[fixture] \(what) holds a non-number") }
            return n.intValue
        }
    }

    /// Builds an input tensor from its spec (stored data or a seeded uniform draw, then views).
    private func tensor(_ spec: Any?, _ what: String) -> Tensor {
        guard let s = spec as? [String: Any] else { fatalError("[fixture] \(what) is not an input spec") }
        var t: Tensor
        if let ref = s["ref"] as? String {
            guard let stored = (root()?["tensors"] as? [String: Any])?[ref] as? [String: Any] else {
                fatalError("[fixture] \(what) refers to missing tensor \(ref)")
            }
            t = Tensor(shape: ints(stored["shape"], "\(ref).shape"), data: floats(stored["data"], "\(ref).data"))
        } else if let seed = s["uniform_seed"] as? NSNumber {
            var rng = RNG(seed: seed.uint64Value)
            t = Tensor.uniform(ints(s["shape"], "\(what).shape"), low: -1, high: 1, rng: &rng)
        } else {
            fatalError("[fixture] \(what) has neither data nor a seed")
        }
        if s["permute"] != nil { t = t.permuted(ints(s["permute"], "\(what).permute")) }
        if s["slice"] != nil {
            let a = ints(s["slice"], "\(what).slice")
            t = t.slice(axis: a[0], a[1], a[2])
        }
        return t
    }

    /// Compares an op's output with the expected spec: shape, then values within atol + rtol·|expected|.
    private func check(_ actual: Tensor, _ expected: Any?, rtol: Float, atol: Float, _ name: String,
                       file: StaticString = #filePath, line: UInt = #line) {
        guard let e = expected as? [String: Any] else { fatalError("[fixture] \(name): no expected output") }
        let shape = ints(e["shape"], "\(name).out.shape")
        XCTAssertEqual(actual.shape, shape, "[\(name)] output shape", file: file, line: line)
        let want = floats(e["data"], "\(name).out.data")
        XCTAssertFalse(want.isEmpty && shape.reduce(1, *) > 0, "[\(name)] fixture has no expected values", file: file, line: line)
        var got = actual.toArray()
        if let stride = (e["stride"] as? NSNumber)?.intValue {
            got = Swift.stride(from: 0, to: got.count, by: stride).map { got[$0] }
        }
        assertClose(got, want, rtol: rtol, atol: atol, "[\(name)]", file: file, line: line)
    }

    private func name(_ c: [String: Any]) -> String { c["name"] as? String ?? "?" }

    // MARK: RNG

    func testRNGMatchesPythonReimplementation() {
        guard let fixture = root() else { return }
        guard let r = fixture["rng"] as? [String: Any] else {
            XCTFail("fixture has no \"rng\" section: \(regenerateHint)")
            return
        }
        let seed = UInt64((r["seed"] as! NSNumber).intValue)
        XCTAssertEqual(seed, 42)

        let raw = (r["raw_u64"] as? [String] ?? []).map { UInt64($0)! }
        XCTAssertEqual(raw.count, 8)
        var g = RNG(seed: seed)
        XCTAssertEqual((0..<raw.count).map { _ in g.next() }, raw, "xoshiro256** raw outputs for seed 42")

        let wantFloats = floats(r["next_float"], "rng.next_float")
        XCTAssertEqual(wantFloats.count, 8)
        g = RNG(seed: seed)
        for (i, w) in wantFloats.enumerated() {
            let v = g.nextFloat()
            XCTAssertEqual(v.bitPattern, w.bitPattern, "nextFloat #\(i): \(v) vs expected \(w)")
        }

        let numerators = (r["next_double_numerators"] as? [String] ?? []).map { UInt64($0)! }
        XCTAssertEqual(numerators.count, 4)
        g = RNG(seed: seed)
        for (i, n) in numerators.enumerated() {
            let want = Double(n) * (1.0 / 9_007_199_254_740_992.0)
            XCTAssertEqual(g.nextDouble().bitPattern, want.bitPattern, "nextDouble #\(i)")
        }

        // Box–Muller goes through libm log/sin/cos in Double, then rounds to Float: allow one
        // float32 ulp in case the two libms differ in the last bit of the Double.
        let wantNormals = floats(r["next_normal"], "rng.next_normal")
        XCTAssertEqual(wantNormals.count, 9)
        g = RNG(seed: seed)
        for (i, w) in wantNormals.enumerated() {
            let v = g.nextNormal()
            let ulps = abs(Int64(Int32(bitPattern: v.bitPattern)) - Int64(Int32(bitPattern: w.bitPattern)))
            XCTAssert(v.sign == w.sign && ulps <= 1, "nextNormal #\(i): \(v) vs expected \(w) (\(ulps) ulp apart)")
        }

        // Tensor.uniform (the source of the large fixture inputs) is exact for low −1, high 1.
        let wantUniform = floats(r["uniform_seed7_low_-1_high_1"], "rng.uniform")
        XCTAssertEqual(wantUniform.count, 8)
        var g7 = RNG(seed: 7)
        let u = Tensor.uniform([wantUniform.count], low: -1, high: 1, rng: &g7).toArray()
        XCTAssertEqual(u.map(\.bitPattern), wantUniform.map(\.bitPattern), "Tensor.uniform(seed 7): \(u) vs \(wantUniform)")
    }

    // MARK: elementwise

    func testBinaryBroadcast() {
        for c in cases("binary") {
            let a = tensor(c["a"], "a"), b = tensor(c["b"], "b")
            let y: Tensor
            switch c["op"] as? String {
            case "add": y = a + b
            case "sub": y = a - b
            case "mul": y = a * b
            case "div": y = a / b
            case let op: fatalError("[fixture] unknown binary op \(String(describing: op))")
            }
            // One float32 rounding of an exact result: half an ulp (6e-8 relative).
            check(y, c["out"], rtol: 1e-6, atol: 1e-7, name(c))
        }
    }

    func testScalarArithmetic() {
        for c in cases("scalar") {
            let x = tensor(c["x"], "x"), s = float(c["s"], "s")
            let y: Tensor
            switch c["op"] as? String {
            case "add": y = x + s
            case "sub": y = x - s
            case "mul": y = x * s
            // x / s is computed as x · (1/s): two roundings, still well inside 1e-6.
            case "div": y = x / s
            case "radd": y = s + x
            case "rmul": y = s * x
            case "neg": y = -x
            case let op: fatalError("[fixture] unknown scalar op \(String(describing: op))")
            }
            check(y, c["out"], rtol: 1e-6, atol: 1e-7, name(c))
        }
    }

    func testUnaryMathAndActivations() {
        for c in cases("unary") {
            var x = tensor(c["x"], "x")
            if c["prescale"] != nil { x = x * float(c["prescale"], "prescale") }
            let y: Tensor
            switch c["op"] as? String {
            case "exp": y = x.exp()
            case "log": y = x.log()
            case "sqrt": y = x.sqrt()
            case "rsqrt": y = x.rsqrt()
            case "pow": y = x.pow(float(c["p"], "p"))
            case "tanh": y = x.tanh()
            case "sigmoid": y = x.sigmoid()
            case "relu": y = x.relu()
            case "gelu_tanh": y = x.geluTanh()
            case "gelu_erf": y = x.gelu()
            case "silu": y = x.silu()
            case "clamp": y = x.clamp(min: float(c["min"], "min"), max: float(c["max"], "max"))
            case let op: fatalError("[fixture] unknown unary op \(String(describing: op))")
            }
            // libm float32 functions are within ~1–2 ulp; the GELU forms and sigmoid/SiLU add
            // cancellation in 1 + tanh/erf/exp for negative inputs, where the value itself is tiny,
            // hence the small absolute floor.
            check(y, c["out"], rtol: 1e-5, atol: 1e-6, name(c))
        }
    }

    func testWhereAndMaskedFill() {
        for c in cases("where") {
            let y = Tensor.where(tensor(c["cond"], "cond"), tensor(c["a"], "a"), tensor(c["b"], "b"))
            check(y, c["out"], rtol: 0, atol: 0, name(c))  // a selection: exact
        }
        for c in cases("masked_fill") {
            let y = tensor(c["x"], "x").maskedFill(tensor(c["mask"], "mask"), float(c["value"], "value"))
            check(y, c["out"], rtol: 0, atol: 0, name(c))
        }
    }

    // MARK: reductions

    func testReductions() {
        for c in cases("reduce") {
            let x = tensor(c["x"], "x")
            let keep = c["keep_dims"] as? Bool ?? false
            let axes: [Int]? = c["axes"] is NSNull || c["axes"] == nil ? nil : ints(c["axes"], "axes")
            let y: Tensor
            switch c["op"] as? String {
            case "sum": y = x.sum(axes: axes, keepDims: keep)
            case "mean": y = x.mean(axes: axes, keepDims: keep)
            case "max": y = x.max(axis: (c["axis"] as! NSNumber).intValue, keepDims: keep)
            case let op: fatalError("[fixture] unknown reduction \(String(describing: op))")
            }
            if c["long_accumulation"] as? Bool == true {
                // Sequential float32 accumulation of 48 to 43 200 terms in [-1, 1]: the rounding
                // error is a random walk of about √n·ε·|partial sum| (≈ 3e-5 for the 900-term rows).
                // A wrong row, chunk or axis is off by ~0.1 or more.
                check(y, c["out"], rtol: 1e-5, atol: 1e-4, name(c))
            } else {
                // At most 24 float32 terms of magnitude ~2: a few ulps of the partial sums (≤ 1e-6).
                check(y, c["out"], rtol: 1e-5, atol: 2e-6, name(c))
            }
        }
    }

    // MARK: neural-network kernels

    func testSoftmaxAndLogSoftmax() {
        for c in cases("softmax") {
            var x = tensor(c["x"], "x")
            if c["prescale"] != nil { x = x * float(c["prescale"], "prescale") }
            let y: Tensor
            switch c["op"] as? String {
            case "softmax": y = x.softmax()
            case "log_softmax": y = x.logSoftmax()
            case let op: fatalError("[fixture] unknown softmax op \(String(describing: op))")
            }
            if c["op"] as? String == "softmax" {
                // Probabilities come out relative-accurate to a few ulps even when tiny, so the
                // absolute floor stays at 1e-7 to keep small probabilities meaningfully checked.
                check(y, c["out"], rtol: 1e-5, atol: 1e-7, name(c))
            } else if c["large_magnitude"] as? Bool == true {
                // x − logsumexp(x) with |x| up to 1000: float32 holds each term only to half an ulp
                // of 1000 (3e-5), so the difference is good to ~6e-5 absolute, whatever the algorithm.
                check(y, c["out"], rtol: 1e-5, atol: 1e-4, name(c))
            } else {
                // x − logsumexp(x) is resolved to about an ulp of max(|x|, |lse|) (< 1e-6 below 16),
                // which matters for entries near 0 (the dominant class).
                check(y, c["out"], rtol: 1e-5, atol: 2e-6, name(c))
            }
        }
    }

    func testMatmul() {
        for c in cases("matmul") {
            let a = tensor(c["a"], "a"), b = tensor(c["b"], "b")
            // K ≤ 4 float32 products of N(0,1) values through BLAS (which may use FMA).
            check(a.matmul(b), c["out"], rtol: 1e-5, atol: 1e-5, name(c))
        }
    }

    func testLayerNorm() {
        for c in cases("layer_norm") {
            let x = tensor(c["x"], "x")
            let w = c["weight"] == nil ? nil : tensor(c["weight"], "weight")
            let b = c["bias"] == nil ? nil : tensor(c["bias"], "bias")
            let y = x.layerNorm(weight: w, bias: b, eps: float(c["eps"], "eps"))
            check(y, c["out"], rtol: 1e-5, atol: 1e-5, name(c))
        }
    }

    func testRMSNorm() {
        for c in cases("rms_norm") {
            let x = tensor(c["x"], "x")
            let w = c["weight"] == nil ? nil : tensor(c["weight"], "weight")
            let y = x.rmsNorm(weight: w, eps: float(c["eps"], "eps"))
            check(y, c["out"], rtol: 1e-5, atol: 1e-5, name(c))
        }
    }

    func testCrossEntropy() {
        for c in cases("cross_entropy") {
            let logits = tensor(c["logits"], "logits")
            let targets = ints(c["targets"], "targets").map { Int32($0) }
            let loss = logits.crossEntropy(targets: targets, ignoreIndex: -100)
            check(loss, c["out"], rtol: 1e-5, atol: 1e-5, name(c))
        }
    }

    func testEmbedding() {
        for c in cases("embedding") {
            let w = tensor(c["weight"], "weight")
            let ids = ints(c["ids"], "ids").map { Int32($0) }
            let y = Tensor.embedding(w, ids: ids, shape: ints(c["id_shape"], "id_shape"))
            check(y, c["out"], rtol: 0, atol: 0, name(c))  // a gather: exact
        }
    }

    func testRotaryEmbedding() {
        for c in cases("rope") {
            let x = tensor(c["x"], "x")
            let y = x.rope(theta: float(c["theta"], "theta"), positionOffset: (c["offset"] as! NSNumber).intValue)
            // cos/sin tables rounded to float32, then two products and a sum in float32.
            check(y, c["out"], rtol: 1e-5, atol: 1e-6, name(c))
        }
    }

    // MARK: shape ops

    func testShapeOps() {
        for c in cases("shape") {
            let n = name(c)
            switch c["op"] as? String {
            case "permute":
                check(tensor(c["x"], "x").permuted(ints(c["perm"], "perm")), c["out"], rtol: 0, atol: 0, n)
            case "transpose":
                let a = ints(c["axes"], "axes")
                check(tensor(c["x"], "x").transposed(a[0], a[1]), c["out"], rtol: 0, atol: 0, n)
            case "slice":
                let t = tensor(c["x"], "x").slice(axis: (c["axis"] as! NSNumber).intValue,
                                                  (c["start"] as! NSNumber).intValue, (c["end"] as! NSNumber).intValue)
                check(t, c["out"], rtol: 0, atol: 0, n)
            case "reshape":
                check(tensor(c["x"], "x").reshaped(ints(c["new_shape"], "new_shape")), c["out"], rtol: 0, atol: 0, n)
            case "expand":
                check(tensor(c["x"], "x").expand(ints(c["new_shape"], "new_shape")), c["out"], rtol: 0, atol: 0, n)
            case "split":
                let parts = tensor(c["x"], "x").split(ints(c["sizes"], "sizes"), axis: (c["axis"] as! NSNumber).intValue)
                let outs = c["outs"] as? [Any] ?? []
                XCTAssertEqual(parts.count, outs.count, "[\(n)] number of pieces")
                for (i, (p, o)) in zip(parts, outs).enumerated() { check(p, o, rtol: 0, atol: 0, "\(n) piece \(i)") }
            case "concat":
                let xs = (c["xs"] as? [Any] ?? []).enumerated().map { tensor($0.element, "xs[\($0.offset)]") }
                check(Tensor.concat(xs, axis: (c["axis"] as! NSNumber).intValue), c["out"], rtol: 0, atol: 0, n)
            case let op:
                fatalError("[fixture] unknown shape op \(String(describing: op))")
            }
        }
    }
}
