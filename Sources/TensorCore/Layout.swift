// Layout: how a tensor's logical shape maps onto its flat Float32 storage (shape, strides, offset).
// Views (permute, slice, expand, reshape of contiguous data) are new layouts over the same storage.

/// Shape, strides (in elements) and offset of a tensor over its storage. Row-major when contiguous.
public struct Layout: Equatable, CustomStringConvertible {
    public var shape: [Int]
    public var strides: [Int]
    public var offset: Int

    /// A contiguous row-major layout of `shape`.
    public init(contiguous shape: [Int]) {
        self.shape = shape
        self.strides = Layout.contiguousStrides(shape)
        self.offset = 0
    }

    public init(shape: [Int], strides: [Int], offset: Int) {
        self.shape = shape
        self.strides = strides
        self.offset = offset
    }

    public static func contiguousStrides(_ shape: [Int]) -> [Int] {
        var strides = [Int](repeating: 1, count: shape.count)
        var s = 1
        for i in stride(from: shape.count - 1, through: 0, by: -1) {
            strides[i] = s
            s *= shape[i]
        }
        return strides
    }

    public var rank: Int { shape.count }
    public var count: Int { shape.reduce(1, *) }

    /// True when the elements are laid out row-major with no gaps (size-1 dims may have any stride).
    public var isContiguous: Bool {
        var expected = 1
        for i in stride(from: shape.count - 1, through: 0, by: -1) where shape[i] != 1 {
            if strides[i] != expected { return false }
            expected *= shape[i]
        }
        return true
    }

    public var description: String { "Layout(shape: \(shape), strides: \(strides), offset: \(offset))" }

    /// The layout with its axes reordered: axis i of the result is axis `perm[i]` of this one.
    public func permuted(_ perm: [Int]) -> Layout {
        Layout(shape: perm.map { shape[$0] }, strides: perm.map { strides[$0] }, offset: offset)
    }

    /// The sub-range `start..<end` of `axis`.
    public func sliced(axis: Int, start: Int, end: Int) -> Layout {
        var l = self
        l.shape[axis] = end - start
        l.offset += start * strides[axis]
        return l
    }

    /// Broadcast to `target` (numpy rules: new leading axes, size-1 axes stretched) with stride 0.
    public func expanded(to target: [Int]) -> Layout {
        let lead = target.count - shape.count
        var newStrides = [Int](repeating: 0, count: target.count)
        for i in 0..<shape.count where shape[i] != 1 || target[lead + i] == 1 {
            newStrides[lead + i] = strides[i]
        }
        return Layout(shape: target, strides: newStrides, offset: offset)
    }
}

/// Merges adjacent axes that are contiguous with each other in every one of `strides`, so that the
/// strided kernels run long inner loops. Returns the collapsed shape and strides (at least rank 1).
func collapse(_ shape: [Int], _ strides: [[Int]]) -> ([Int], [[Int]]) {
    var outShape: [Int] = []
    var outStrides: [[Int]] = Array(repeating: [], count: strides.count)
    for i in 0..<shape.count where shape[i] != 1 {
        if let last = outShape.last,
           (0..<strides.count).allSatisfy({ outStrides[$0].last! == strides[$0][i] * shape[i] }) {
            outShape[outShape.count - 1] = last * shape[i]
            for k in 0..<strides.count { outStrides[k][outStrides[k].count - 1] = strides[k][i] }
        } else {
            outShape.append(shape[i])
            for k in 0..<strides.count { outStrides[k].append(strides[k][i]) }
        }
    }
    if outShape.isEmpty {
        return ([1], Array(repeating: [0], count: strides.count))
    }
    return (outShape, outStrides)
}
