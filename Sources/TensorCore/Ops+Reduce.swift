// Reductions: sum and mean over any axes, max over one axis (gradient to the first arg-max),
// with keepDims. The backward of sum/mean is an expand of the gradient.

extension Tensor {
    /// Sum over `axes` (all when nil); keepDims leaves size-1 axes in place.
    public func sum(axes: [Int]? = nil, keepDims: Bool = false) -> Tensor {
        let ax = Set((axes ?? Array(0..<rank)).map { a in must { try ShapeCheck.axis(a, rank: rank, op: "sum") } })
        var keptShape = shape
        for a in ax { keptShape[a] = 1 }
        let outShape = keepDims ? keptShape : shape.enumerated().filter { !ax.contains($0.offset) }.map(\.element)
        let out = Tensor.zeros(keptShape)
        // Read the input through its own strides; write through the output's strides with 0 on
        // reduced axes, so each row either sums into one cell or adds into a row.
        let outStrides = Layout(contiguous: keptShape).expanded(to: shape).strides
        let (cshape, strides) = collapse(shape, [layout.strides, outStrides])
        let n = cshape.last!
        let rows = cshape.dropLast().reduce(1, *)
        let (si, so) = (strides[0].last!, strides[1].last!)
        let px = UnsafePointer(basePointer), po = out.basePointer
        // Parallel only when rows never share an output cell (reduction along the run alone).
        let rowsShareOutput = strides[1].dropLast().contains(0) && rows > 1
        let body: (Int, Int) -> Void = { lo, hi in
            forEachRow(cshape, strides, rows: lo, hi) { oi, oo, _ in
                if so == 0 {
                    var acc: Float = 0
                    if si == 1 { for i in 0..<n { acc += px[oi + i] } } else { for i in 0..<n { acc += px[oi + i * si] } }
                    po[oo] += acc
                } else {
                    for i in 0..<n { po[oo + i * so] += px[oi + i * si] }
                }
            }
        }
        if rowsShareOutput { body(0, rows) } else { parallelRanges(rows, cost: n, body) }
        let result = Tensor(storage: out.storage, layout: Layout(contiguous: outShape))
        let (inShape, inSlot) = (shape, slot)
        return Tensor.make(result.storage, result.layout, op: "sum", inputs: [self]) { g in
            // (outShape) → (keptShape) → broadcast to (inShape)
            let gk = g.contiguous().reshaped(keptShape)  // a view of g keeps its offset
            inSlot.accumulateGrad(Tensor(storage: gk.storage, layout: gk.layout.expanded(to: inShape)).contiguousData())
        }
    }

    /// Mean over `axes` (all when nil).
    public func mean(axes: [Int]? = nil, keepDims: Bool = false) -> Tensor {
        let ax = (axes ?? Array(0..<rank)).map { a in must { try ShapeCheck.axis(a, rank: rank, op: "mean") } }
        let n = Set(ax).map { shape[$0] }.reduce(1, *)
        return sum(axes: ax, keepDims: keepDims) * (1 / Float(Swift.max(n, 1)))
    }

    /// Maximum over `axis`; the gradient goes to the first position holding the maximum.
    public func max(axis: Int, keepDims: Bool = false) -> Tensor {
        let a = must { try ShapeCheck.axis(axis, rank: rank, op: "max") }
        let x = contiguousData()
        let outer = shape[..<a].reduce(1, *), n = shape[a], inner = shape[(a + 1)...].reduce(1, *)
        var keptShape = shape
        keptShape[a] = 1
        var outShape = shape
        if keepDims { outShape[a] = 1 } else { outShape.remove(at: a) }
        let out = Tensor.empty(outShape)
        var argmax = [Int32](repeating: 0, count: outer * inner)
        let px = UnsafePointer(x.basePointer), po = out.basePointer
        argmax.withUnsafeMutableBufferPointer { am in
            for o in 0..<outer {
                for j in 0..<inner {
                    var best = -Float.infinity, bi = 0
                    for i in 0..<n where px[(o * n + i) * inner + j] > best || i == 0 || px[(o * n + i) * inner + j].isNaN && !best.isNaN {
                        best = px[(o * n + i) * inner + j]
                        bi = i
                    }
                    po[o * inner + j] = best
                    am[o * inner + j] = Int32(bi)
                }
            }
        }
        let inShape = shape
        return Tensor.make(out, op: "max", inputs: [self]) { [self] g in
            let d = Tensor.zeros(inShape)
            for o in 0..<outer {
                for j in 0..<inner { d.basePointer[(o * n + Int(argmax[o * inner + j])) * inner + j] = g.basePointer[o * inner + j] }
            }
            accumulateGrad(owned: d)
        }
    }
}
