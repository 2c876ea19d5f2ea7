// Float comparisons every test target shares. They fail on what a plain `zip(…).max()` lets through:
// arrays of different lengths (zip stops at the shorter) and NaN (`max` skips it, `d > tol` is false).

import XCTest

/// The largest |a[i] − b[i]|; NaN when the lengths differ or any difference is NaN, so that
/// `XCTAssertLessThan(maxAbsDiff(a, b), tol)` and `XCTAssertGreaterThan(…)` both fail then.
public func maxAbsDiff(_ a: [Float], _ b: [Float]) -> Float {
    guard a.count == b.count else { return .nan }
    var m: Float = 0
    for i in a.indices {
        let d = abs(a[i] - b[i])
        if d.isNaN { return .nan }
        m = max(m, d)
    }
    return m
}

/// The largest |x| of `a`; NaN when any element is NaN.
public func maxAbs(_ a: [Float]) -> Float {
    var m: Float = 0
    for x in a {
        if x.isNaN { return .nan }
        m = max(m, abs(x))
    }
    return m
}

/// Why `actual` is not within atol + rtol·|expected| of `expected` elementwise (nil when it is), and
/// the largest absolute error. Lengths must be equal; a NaN fails unless `expected` has NaN at the
/// same place; infinities must match exactly.
public func closeness(_ actual: [Float], _ expected: [Float], rtol: Float, atol: Float) -> (failure: String?, worst: Float) {
    guard actual.count == expected.count else { return ("\(actual.count) values, expected \(expected.count)", .infinity) }
    var worst: Float = 0
    for i in actual.indices {
        let (a, e) = (actual[i], expected[i])
        if a.isNaN || e.isNaN || a.isInfinite || e.isInfinite {
            if (a.isNaN && e.isNaN) || a == e { continue }
            return ("element \(i) is \(a), expected \(e)", a.isNaN ? .nan : .infinity)
        }
        let d = abs(a - e)
        worst = max(worst, d)
        if !(d <= atol + rtol * abs(e)) { return ("element \(i) is \(a), expected \(e)", d) }
    }
    return (nil, worst)
}

/// Asserts `closeness` finds nothing wrong; `label` (e.g. "[hf]") prints the largest error when it
/// passes. Returns the largest absolute error (NaN or ∞ on failure).
@discardableResult
public func assertClose(_ actual: [Float], _ expected: [Float], rtol: Float = 1e-5, atol: Float = 1e-6, _ message: String = "",
                        label: String? = nil, file: StaticString = #filePath, line: UInt = #line) -> Float {
    let (failure, worst) = closeness(actual, expected, rtol: rtol, atol: atol)
    if let failure { XCTFail("\(message): \(failure)", file: file, line: line) }
    else if let label { print("\(label) \(message): max abs error \(worst) over \(actual.count) values") }
    return worst
}

/// max(a, b), but NaN when either is NaN (Swift's `max` drops a NaN that comes second), for
/// running "worst error" figures that must not hide a NaN.
public func maxKeepingNaN<T: FloatingPoint>(_ a: T, _ b: T) -> T { a.isNaN || b.isNaN ? .nan : max(a, b) }
