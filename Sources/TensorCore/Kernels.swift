// Low-level loops shared by the ops: a parallel range split over the worker pool, strided copy / scatter-add
// over collapsed layouts, and vector helpers. Raw pointers only; no allocation per element.

import Foundation

/// Work below this many elements runs on one thread (dispatch costs more than it saves).
let parallelThreshold = 1 << 15
/// Threads of the elementwise kernels (`Threads.set` changes it together with OpenBLAS's).
nonisolated(unsafe) var hardwareThreads = Threads.available

/// Calls `body(lo, hi)` over chunks of `0..<n`, in parallel over the cores when `n · cost` is large.
@inline(__always)
func parallelRanges(_ n: Int, cost: Int = 1, _ body: (Int, Int) -> Void) {
    let chunks = (n * cost >= parallelThreshold && n > 1) ? min(hardwareThreads, n) : 1
    if chunks == 1 { body(0, n); return }
    WorkerPool.shared.run(chunks) { c in
        body(n * c / chunks, n * (c + 1) / chunks)
    }
}

/// y += x
@inline(__always)
func vAdd(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
    parallelRanges(n) { lo, hi in
        for i in lo..<hi { y[i] += x[i] }
    }
}

/// Iterates the rows (runs along the last collapsed axis) of a shape for up to three operands.
/// `body(row offsets…, run length, inner strides…)` is called once per row, not per element.
@inline(__always)
func forEachRow(_ shape: [Int], _ strides: [[Int]], rows lo: Int, _ hi: Int,
                _ body: (_ o0: Int, _ o1: Int, _ o2: Int) -> Void) {
    guard lo < hi else { return }  // no row (an axis of size 0): nothing to unravel
    let r = shape.count
    var idx = [Int](repeating: 0, count: r)
    // Unravel the starting row index over the outer axes.
    var rem = lo
    for d in stride(from: r - 2, through: 0, by: -1) {
        idx[d] = rem % shape[d]
        rem /= shape[d]
    }
    let k = strides.count
    var o = [0, 0, 0]
    for j in 0..<k { for d in 0..<(r - 1) { o[j] += idx[d] * strides[j][d] } }
    for _ in lo..<hi {
        body(o[0], o[1], o[2])
        // Advance the outer index like an odometer.
        var d = r - 2
        while d >= 0 {
            idx[d] += 1
            for j in 0..<k { o[j] += strides[j][d] }
            if idx[d] < shape[d] { break }
            for j in 0..<k { o[j] -= strides[j][d] * shape[d] }
            idx[d] = 0
            d -= 1
        }
    }
}

/// Copies the view `layout` of storage starting at `storage` into contiguous memory.
func copyStrided(from storage: UnsafePointer<Float>, layout: Layout, to dst: UnsafeMutablePointer<Float>) {
    let src = storage + layout.offset
    let (shape, strides) = collapse(layout.shape, [layout.strides, Layout.contiguousStrides(layout.shape)])
    // After collapsing, strides[1] (contiguous) folds to the collapsed contiguous strides.
    let n = shape.last!
    let rows = shape.dropLast().reduce(1, *)
    let ss = strides[0].last!, ds = strides[1].last!
    parallelRanges(rows, cost: n) { lo, hi in
        forEachRow(shape, strides, rows: lo, hi) { so, d, _ in
            if ss == 1 && ds == 1 {
                (dst + d).update(from: src + so, count: n)
            } else {
                for i in 0..<n { dst[d + i * ds] = src[so + i * ss] }
            }
        }
    }
}

/// Adds contiguous `src` into the view `layout` of `storage` (which may repeat elements: stride 0).
/// This is the backward of every view op (permute, slice, expand) and runs on one thread, since
/// stride-0 layouts make different rows write the same element.
func addStrided(_ src: UnsafePointer<Float>, into storage: UnsafeMutablePointer<Float>, layout: Layout) {
    let dst = storage + layout.offset
    let (shape, strides) = collapse(layout.shape, [Layout.contiguousStrides(layout.shape), layout.strides])
    let n = shape.last!
    let rows = shape.dropLast().reduce(1, *)
    let ss = strides[0].last!, ds = strides[1].last!
    forEachRow(shape, strides, rows: 0, rows) { so, d, _ in
        if ds == 0 {
            var acc: Float = 0
            for i in 0..<n { acc += src[so + i * ss] }
            dst[d] += acc
        } else {
            for i in 0..<n { dst[d + i * ds] += src[so + i * ss] }
        }
    }
}

/// Splits `0..<n` into chunks run on every thread when the work (`n · cost`) is large enough;
/// `body(lo, hi)` is called once per chunk. For elementwise loops outside the tensor ops
/// (optimizer updates).
public func parallelFor(_ n: Int, cost: Int = 1, _ body: (Int, Int) -> Void) {
    parallelRanges(n, cost: cost, body)
}

/// a·b + c: one fused multiply-add when the kernels are built for a CPU that has FMA
/// (SWIFTPEFT_FMA), a product and a sum otherwise (the portable build, where `addingProduct`
/// would call fmaf for every value).
@inline(__always)
func multiplyAdd(_ a: Float, _ b: Float, _ c: Float) -> Float {
    #if SWIFTPEFT_FMA
    c.addingProduct(a, b)
    #else
    a * b + c
    #endif
}

/// e^x in Float32 by range reduction (x = n·ln2 + r, |r| ≤ ln2/2) and a degree-6 polynomial
/// (Cephes expf), relative error below 4e-7. Plain arithmetic, selects and bit casts, so loops
/// over it vectorize, unlike libm's expf (softmax and cross-entropy several times faster).
/// exp(x) = 0 below −87.33, +∞ above 88.72, NaN for NaN.
@inline(__always)
public func fastExp(_ x0: Float) -> Float {
    let x = x0 > -87.5 ? (x0 < 88.72 ? x0 : 88.72) : -87.5  // NaN compares false: clamped, fixed below
    let n = multiplyAdd(x, 1.442695041, 0.5).rounded(.down)
    let r = multiplyAdd(n, 2.12194440e-4, multiplyAdd(n, -0.693359375, x))
    var p: Float = 1.9875691500e-4
    p = multiplyAdd(p, r, 1.3981999507e-3)
    p = multiplyAdd(p, r, 8.3334519073e-3)
    p = multiplyAdd(p, r, 4.1665795894e-2)
    p = multiplyAdd(p, r, 1.6666665459e-1)
    p = multiplyAdd(p, r, 5.0000001201e-1)
    let er = multiplyAdd(p * r, r, r) + 1
    // 2^n as two factors, each a normal float, so n = 128 and n = −126 both work.
    let ni = Int32(n)
    let n1 = ni >> 1, n2 = ni - (ni >> 1)
    let s1 = Float(bitPattern: UInt32(truncatingIfNeeded: (n1 &+ 127) << 23))
    let s2 = Float(bitPattern: UInt32(truncatingIfNeeded: (n2 &+ 127) << 23))
    let y = er * s1 * s2
    return x0 != x0 ? x0 : (x0 < -87.33 ? 0 : (x0 > 88.72 ? .infinity : y))
}

/// erf(x) in Float32, absolute and relative error below 3e-7: x·P(x²) (Cephes erff) for |x| < 1,
/// ±(1 − Q(t)·e^(−x²)) with t = 1 / (1 + 0.3275911·|x|) (Abramowitz–Stegun 7.1.26) from 1 up.
/// Both are computed and one is selected, so loops over it vectorize, unlike libm's erff (exact
/// GELU several times faster). ±1 at ±∞, NaN for NaN.
@inline(__always)
public func fastErf(_ x: Float) -> Float {
    let z = x * x
    var p: Float = 7.853861353153693e-5
    p = multiplyAdd(p, z, -8.010193625184903e-4)
    p = multiplyAdd(p, z, 5.188327685732524e-3)
    p = multiplyAdd(p, z, -2.685381193529856e-2)
    p = multiplyAdd(p, z, 1.128358514861418e-1)
    p = multiplyAdd(p, z, -3.761262582423300e-1)
    p = multiplyAdd(p, z, 1.128379165726710)
    let ax = x.magnitude
    let t = 1 / multiplyAdd(0.3275911, ax, 1)
    var q: Float = 1.061405429
    q = multiplyAdd(q, t, -1.453152027)
    q = multiplyAdd(q, t, 1.421413741)
    q = multiplyAdd(q, t, -0.284496736)
    q = multiplyAdd(q, t, 0.254829592)
    let tail = 1 - q * t * fastExp(-z)
    return ax < 1 ? x * p : (x < 0 ? -tail : tail)  // NaN: ax < 1 is false, and tail is NaN
}

/// max of n values (8 lanes at a time); NaN if any value is NaN (so a NaN is never mistaken for
/// "no visible key" downstream).
@inline(__always)
func rowMax(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
    var i = 0
    var acc = SIMD8<Float>(repeating: -.infinity)
    var nan = SIMDMask<SIMD8<Int32>>(repeating: false)
    while i + 8 <= n {
        let v = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)
        nan .|= v .!= v
        acc.replace(with: v, where: v .> acc)  // pointwiseMax is a generic call per 8 values here
        i += 8
    }
    if any(nan) { return .nan }
    var m = acc.max()
    while i < n {
        if x[i].isNaN { return .nan }
        m = Swift.max(m, x[i])
        i += 1
    }
    return m
}


/// Σ over n values of a term given 8 lanes at a time (`lanes(i)`: terms i..<i+8) and one at a time
/// for the tail (`one(i)`), in 8 partial sums: a scalar loop cannot vectorize a float reduction.
@inline(__always)
func simdSum(_ n: Int, _ lanes: (Int) -> SIMD8<Float>, _ one: (Int) -> Float) -> Float {
    var i = 0
    var acc = SIMD8<Float>()
    while i + 8 <= n {
        acc += lanes(i)
        i += 8
    }
    var s = acc.sum()
    while i < n { s += one(i); i += 1 }
    return s
}

/// Eight values from p + i (unaligned).
@inline(__always)
func load8(_ p: UnsafePointer<Float>, _ i: Int) -> SIMD8<Float> {
    UnsafeRawPointer(p + i).loadUnaligned(as: SIMD8<Float>.self)
}

/// Σ of n values (8 partial sums).
@inline(__always)
func rowSum(_ x: UnsafePointer<Float>, _ n: Int) -> Float { simdSum(n, { load8(x, $0) }, { x[$0] }) }

/// Σ x[i]·y[i] over n values (8 partial sums).
@inline(__always)
func rowDot(_ x: UnsafePointer<Float>, _ y: UnsafePointer<Float>, _ n: Int) -> Float {
    simdSum(n, { load8(x, $0) * load8(y, $0) }, { x[$0] * y[$0] })
}

/// Σ x[i]² over n values on every thread. Each block of 4,096 values is summed in 8 float lanes
/// and the block sums are added in Double in block order, so the result does not depend on the
/// thread count and keeps its precision over 10⁸ values (a full model's gradient). A block whose
/// float sum overflows (values beyond about 10¹⁹) is summed again in Double, so finite values
/// never give an infinite sum.
public func sumOfSquares(_ x: UnsafePointer<Float>, _ n: Int) -> Double {
    let block = 4096, blocks = (n + block - 1) / block
    var sums = [Double](repeating: 0, count: blocks)
    sums.withUnsafeMutableBufferPointer { ps in
        parallelRanges(blocks, cost: block) { lo, hi in
            for b in lo..<hi {
                let start = b * block, count = min(block, n - start)
                let s = rowDot(x + start, x + start, count)
                if s.isFinite {
                    ps[b] = Double(s)
                } else {
                    ps[b] = (start..<(start + count)).reduce(0.0) { $0 + Double(x[$1]) * Double(x[$1]) }
                }
            }
        }
    }
    return sums.reduce(0, +)
}

/// dst[i] = e^(src[i] − shift) for n values; returns their sum. dst may equal src.
@inline(__always)
func expShiftedSum(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, _ n: Int, shift: Float) -> Float {
    for i in 0..<n { dst[i] = fastExp(src[i] - shift) }  // no reduction here: this loop vectorizes
    return rowSum(dst, n)
}
