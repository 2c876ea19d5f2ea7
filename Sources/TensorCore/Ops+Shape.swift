// Shape ops. permute/transpose, slice and expand are views (no copy); their backward scatters the
// gradient through the same view taken of a contiguous layout of the input. reshape is a view of
// contiguous data (else one copy); concat copies.

extension Tensor {
    /// A view through `viewLayout` of this tensor's storage; `relative` is the same view taken of a
    /// contiguous layout of this tensor's shape, used to scatter the gradient back.
    /// The pullback holds the input's gradient slot, not the input: a view that the forward has
    /// used up (a reshaped projection before RoPE, say) does not keep its source's values alive.
    func view(_ viewLayout: Layout, relative: Layout, op: String) -> Tensor {
        let inSlot = slot
        return Tensor.make(storage, viewLayout, op: op, inputs: [self]) { g in
            let (pg, beta) = inSlot.gradBuffer()
            if beta == 0 { pg.initialize(repeating: 0, count: inSlot.count) }
            addStrided(g.basePointer, into: pg, layout: relative)
        }
    }

    /// The same data with another shape (one `-1` is inferred). A view when contiguous, else a copy.
    public func reshaped(_ newShape: [Int]) -> Tensor {
        let target = must { try ShapeCheck.reshape(shape, newShape) }
        // Only size-1 axes added or removed: a view of any layout (e.g. one slot of a fused qkv).
        if shape.filter({ $0 != 1 }) == target.filter({ $0 != 1 }) {
            var kept = Array(zip(shape, layout.strides).filter { $0.0 != 1 }.map(\.1))
            // Size-1 axes get the stride they would have if contiguous over the next axis, so a
            // leading dimension read from them (BLAS ld) stays valid.
            var strides = [Int](repeating: 1, count: target.count)
            for i in stride(from: target.count - 1, through: 0, by: -1) {
                if target[i] == 1 {
                    strides[i] = i + 1 < target.count ? strides[i + 1] * target[i + 1] : 1
                } else {
                    strides[i] = kept.removeLast()
                }
            }
            let l = Layout(shape: target, strides: strides, offset: layout.offset)
            return view(l, relative: Layout(shape: target, strides: Layout.contiguousStrides(target), offset: 0), op: "reshape")
        }
        let src = isContiguous ? self : contiguous()
        let srcSlot = src.slot
        return Tensor.make(src.storage, Layout(shape: target, strides: Layout.contiguousStrides(target), offset: src.layout.offset),
                           op: "reshape", inputs: [src]) { g in
            srcSlot.accumulateGrad(passing: Tensor(storage: g.storage, layout: Layout(shape: srcSlot.shape, strides: Layout.contiguousStrides(srcSlot.shape), offset: g.layout.offset)))
        }
    }

    /// A contiguous tensor with the same values (self when already contiguous).
    public func contiguous() -> Tensor {
        if isContiguous { return self }
        let out = contiguousData()
        let inSlot = slot
        return Tensor.make(out, op: "contiguous", inputs: [self]) { g in inSlot.accumulateGrad(passing: g) }
    }

    /// Reorders axes: axis i of the result is axis `perm[i]` of this tensor. A view.
    public func permuted(_ perm: [Int]) -> Tensor {
        let p = perm.map { a in must { try ShapeCheck.axis(a, rank: rank, op: "permute") } }
        must { try ShapeCheck.permute(shape, p) }
        let t = view(layout.permuted(p), relative: Layout(contiguous: shape).permuted(p), op: "permute")
        if rank >= 2 && p == Array(0..<(rank - 2)) + [rank - 1, rank - 2] { t.transposeSource = self }
        return t
    }

    /// Swaps two axes (default: the last two). A view.
    public func transposed(_ a0: Int = -2, _ a1: Int = -1) -> Tensor {
        let x = must { try ShapeCheck.axis(a0, rank: rank, op: "transpose") }
        let y = must { try ShapeCheck.axis(a1, rank: rank, op: "transpose") }
        var p = Array(0..<rank)
        p.swapAt(x, y)
        return permuted(p)
    }

    /// The range `start..<end` of `axis`. A view.
    public func slice(axis: Int, _ start: Int, _ end: Int) -> Tensor {
        let a = must { try ShapeCheck.slice(shape, axis: axis, start: start, end: end) }
        return view(layout.sliced(axis: a, start: start, end: end),
                    relative: Layout(contiguous: shape).sliced(axis: a, start: start, end: end), op: "slice")
    }

    /// Broadcasts to `target` without copying (stride 0); the gradient sums over the broadcast axes.
    public func expand(_ target: [Int]) -> Tensor {
        must { try ShapeCheck.expand(shape, to: target) }
        return view(layout.expanded(to: target), relative: Layout(contiguous: shape).expanded(to: target), op: "expand")
    }

    /// Splits `axis` into consecutive pieces of the given sizes. Views.
    public func split(_ sizes: [Int], axis: Int) -> [Tensor] {
        let a = must { try ShapeCheck.axis(axis, rank: rank, op: "split") }
        check(sizes.reduce(0, +) == shape[a], "[split] sizes \(sizes) do not add up to axis \(a) of \(shape)")
        var start = 0
        return sizes.map { n in
            defer { start += n }
            return slice(axis: a, start, start + n)
        }
    }

    /// Joins tensors along `axis` into a new contiguous tensor.
    public static func concat(_ tensors: [Tensor], axis: Int) -> Tensor {
        let outShape = must { try ShapeCheck.concat(tensors.map(\.shape), axis: axis) }
        let a = must { try ShapeCheck.axis(axis, rank: outShape.count, op: "concat") }
        let out = Tensor.empty(outShape)
        let full = Layout(contiguous: outShape)
        var start = 0
        var pieces: [Layout] = []
        for t in tensors {
            let dst = full.sliced(axis: a, start: start, end: start + t.shape[a])
            pieces.append(dst)
            let c = t.contiguousData()
            copyInto(c.basePointer, out.basePointer, dst)
            start += t.shape[a]
        }
        let slots = tensors.map(\.slot)  // not the tensors: their values are not needed
        return make(out, op: "concat", inputs: tensors) { g in
            for (s, dst) in zip(slots, pieces) where s.requiresGrad {
                let piece = Tensor.empty(dst.shape)
                copyStrided(from: g.basePointer, layout: dst, to: piece.basePointer)
                s.accumulateGrad(owned: piece)
            }
        }
    }
}

extension Tensor {
    /// Copies the values of `src` (same shape, any layout) into this tensor's memory, through this
    /// tensor's layout. Not recorded: for buffers such as a KV cache, or loading weights.
    public func assign(_ src: Tensor) {
        check(src.shape == shape, "[assign] source \(src.shape) differs from destination \(shape)")
        let c = src.contiguousData()
        copyInto(c.basePointer, storage.pointer, layout)
        storage.endRecompute()  // written in place: recomputing would undo it
    }
}

/// Writes contiguous `src` into the view `layout` of `storage` (no overlap).
func copyInto(_ src: UnsafePointer<Float>, _ storage: UnsafeMutablePointer<Float>, _ layout: Layout) {
    let dst = storage + layout.offset
    let (shape, strides) = collapse(layout.shape, [Layout.contiguousStrides(layout.shape), layout.strides])
    let n = shape.last!
    let rows = shape.dropLast().reduce(1, *)
    let (ss, ds) = (strides[0].last!, strides[1].last!)
    forEachRow(shape, strides, rows: 0, rows) { so, d, _ in
        for i in 0..<n { dst[d + i * ds] = src[so + i * ss] }
    }
}
