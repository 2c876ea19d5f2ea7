// Finite-difference gradient checker: loss = Σ out ⊙ R for a fixed random R, accumulated in Double;
// central differences per input element compared with the reverse-mode gradient.

import XCTest
import TestSupport
@testable import TensorCore

struct GradCase {
    let name: String
    /// Shapes of the leaf inputs (filled from a seeded normal distribution).
    let shapes: [[Int]]
    /// Maps raw normal samples to the op's domain (e.g. positive for log).
    var domain: (Float) -> Float = { $0 }
    /// Builds the output from the leaves (may take views of them first).
    let f: ([Tensor]) -> Tensor
}

/// Runs the central-difference check for one case. Returns the largest normalized error.
@discardableResult
func checkGradient(_ c: GradCase, eps: Float = 1e-2, tolerance: Double = 2e-2, report: Bool = true,
                   file: StaticString = #filePath, line: UInt = #line) -> Double {
    var rng = RNG(seed: 1234)
    let inputs = c.shapes.map { shape -> Tensor in
        let t = Tensor.normal(shape, rng: &rng)
        for i in 0..<t.count { t.basePointer[i] = c.domain(t.basePointer[i]) }
        t.requiresGrad = true
        return t
    }
    let out = c.f(inputs)
    let r = Tensor.normal(out.shape, rng: &rng)
    let rv = r.toArray()
    func lossValue() -> Double {
        let o = withNoGrad { c.f(inputs) }.toArray()
        var s = 0.0
        for i in 0..<o.count { s += Double(o[i]) * Double(rv[i]) }
        return s
    }
    (out * r).sum().backward()
    var worst = 0.0
    for (k, x) in inputs.enumerated() {
        guard let g = x.grad else {
            XCTFail("[\(c.name)] input \(k) \(x.shape) received no gradient", file: file, line: line)
            continue
        }
        XCTAssertEqual(g.shape, x.shape, "[\(c.name)] gradient shape", file: file, line: line)
        let analytic = g.toArray()
        var numeric = [Double](repeating: 0, count: x.count)
        for i in 0..<x.count {
            let saved = x.basePointer[i]
            x.basePointer[i] = saved + eps
            let lp = lossValue()
            x.basePointer[i] = saved - eps
            let lm = lossValue()
            x.basePointer[i] = saved
            numeric[i] = (lp - lm) / (2 * Double(eps))
        }
        let scale = max(numeric.map(abs).max() ?? 0, 1e-3)
        for i in 0..<x.count {
            let err = abs(Double(analytic[i]) - numeric[i]) / scale
            worst = maxKeepingNaN(worst, err)
            if !(err <= tolerance) && report {
                XCTFail("[\(c.name)] input \(k) \(x.shape) element \(i): analytic \(analytic[i]) vs numeric \(numeric[i])",
                        file: file, line: line)
                break
            }
        }
    }
    return worst
}

