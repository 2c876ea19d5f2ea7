// Tensor: a Layout over shared Float32 Storage, plus its GradSlot (the reverse-mode autodiff
// vertex: op node and gradient, kept apart from the values so that a graph holds only the values
// its pullbacks captured). A graph node exists only when some input needs a gradient (and grad
// mode is on); a frozen tensor (requiresGrad == false) never receives a gradient.

import CBLAS
import Foundation

/// Flat Float32 memory shared by a tensor and all its views.
public final class Storage {
    public let count: Int
    private var values: UnsafeMutablePointer<Float>
    /// True while the values are not in memory: released for good (`valuesReleased`) or dropped
    /// until read (`dropUntilRead`). The one test on the hot path of `pointer`.
    private var absent = false
    /// Writes the values again into a buffer of `count` floats: set by an op whose output is cheap
    /// to compute from what its own pullback keeps anyway (a norm, an activation), so the output
    /// can be dropped after its last forward use (`dropUntilRead`) and made again when the
    /// backward pass reads it.
    var recompute: ((UnsafeMutablePointer<Float>) -> Void)?
    /// Set once a recorded op lists these values as an input without promising to take their
    /// pointer afresh in its pullback (most ops: many keep a pointer from the forward pass; views
    /// and ops that read no values pin too): they then stay where they are.
    var pinned = false
    /// A bf16 copy of these values for few-row products, for every product once the values were
    /// released, or for every product of a frozen matrix in bf16 training (`Tensor.keepBF16Copy`).
    var bf16: BF16Copy?
    /// For bf16 training, a copy of the matrix read the other way: the input gradient's product
    /// (`Tensor.keepBF16Copy(forTraining: true)`).
    var bf16Gradient: BF16Copy?
    /// The matrix in a compact encoding (a GGUF file's quantized blocks) that the products reading
    /// it and token lookups decode (`Tensor.keepPackedOnly`, `PackedWeights`); its Float32 values are released.
    public private(set) var packed: PackedWeights?
    /// True once the Float32 values were freed and only a bf16 copy or packed blocks are left
    /// (`Tensor.keepBF16Copy(releasingFP32: true)`, `Tensor.keepBF16RowsOnly()`, `Tensor.keepPackedOnly`).
    public private(set) var valuesReleased = false
    /// The values rounded to bf16, in their own order, for a matrix also read by rows (a token
    /// embedding: `Tensor.embedding` converts the rows it gathers); nil unless kept.
    private(set) var bf16Values: UnsafeMutablePointer<UInt16>?

    /// Element 0 of the Float32 values. Values dropped until read (`dropUntilRead`) are recomputed
    /// first; values released for good (bf16 weights) stop the program, saying why.
    @inline(__always) public var pointer: UnsafeMutablePointer<Float> {
        if _slowPath(absent) { return valuesAfterAbsence() }
        return values
    }

    /// The values of a storage dropped until read, computed again (once: they then stay until the
    /// storage goes); stops the program for values released for good.
    @inline(never)
    private func valuesAfterAbsence() -> UnsafeMutablePointer<Float> {
        if valuesReleased { Storage.releasedValuesRead(count) }
        guard let recompute else { fatalError("[tensor] \(count) values were dropped with no way to recompute them") }
        // The ops whose inputs can be dropped (matmul, LoRA's products, elementwise arithmetic)
        // take their pointers on the calling thread before they spread over the pool; a read from
        // a task could race another task recomputing the same values.
        check(!WorkerPool.shared.isRunning, "[tensor] values dropped until read (\(count) floats) were read from inside a parallel kernel")
        values = .allocate(capacity: max(count, 1))
        absent = false
        self.recompute = nil
        recompute(values)
        return values
    }

    /// Frees the values until something reads them, when the op that made them can make them
    /// again (`recompute`) and every recorded op that read them takes their pointer afresh in its
    /// pullback (not `pinned`); does nothing otherwise. For an activation whose forward uses are
    /// over and that only such pullbacks still hold (a matmul's, for its weight gradient): the
    /// backward pass recomputes it when the first of them reads it, so the graph keeps the op's
    /// input instead of both.
    func dropUntilRead() {
        guard recompute != nil, !pinned, !absent else { return }
        values.deallocate()
        absent = true
    }

    /// Forgets how to recompute the values, unless they are dropped now: once they were written in
    /// place (the recompute would undo the write) or the op that made them ran its pullback (so
    /// the closure lets go of that op's inputs).
    func endRecompute() {
        if !absent { recompute = nil }
    }

    @inline(never)
    private static func releasedValuesRead(_ count: Int) -> Never {
        fatalError("""
            [tensor] the Float32 values of a \(count)-element weight were released: the model keeps only bf16 \
            copies or quantized blocks of its frozen matrices (generation with --precision bf16-only or \
            --keep-quantized, training adapters with --precision bf16 or --keep-quantized), enough for generating text and training adapters \
            but not for reading, merging, saving or training those weights. Load it with fp32 weights for that (without --keep-quantized).
            """)
    }

    /// Frees the Float32 values of a storage that has a bf16 copy; any later read of them stops the
    /// program with a message (products read the copy).
    func releaseValues() {
        check(bf16 != nil, "[bf16] only a storage with a bf16 copy can let its fp32 values go")
        guard !valuesReleased else { return }
        if !absent { values.deallocate() }
        valuesReleased = true
        absent = true
        recompute = nil
    }

    /// Frees the Float32 values and keeps `packed`, which products decode instead (`PackedWeights`).
    func releaseValues(keeping packed: PackedWeights) {
        check(packed.rows * packed.cols == count && bf16 == nil && !valuesReleased,
              "[packed] \(packed.rows)×\(packed.cols) blocks for a storage of \(count) values\(bf16 != nil || valuesReleased ? " that already has a bf16 copy or released values" : "")")
        if !absent { values.deallocate() }
        self.packed = packed
        valuesReleased = true
        absent = true
        recompute = nil
    }

    /// Keeps the values rounded to bf16 (`bf16Values`) and frees the Float32 ones. The rounding
    /// is done in place and the block then shrunk to half, so no second buffer is ever allocated
    /// (GPT-2's 147 MiB embedding, loaded last, would otherwise add 74 MiB to the load's peak).
    func releaseValuesKeepingBF16() {
        guard !valuesReleased else { return }
        let raw = UnsafeMutableRawPointer(pointer)
        // Value i's bits go to bytes 2i..<2i+2, which held only values before i, already read.
        for i in 0..<count {
            raw.storeBytes(of: bf16Bits(raw.load(fromByteOffset: 4 * i, as: Float.self)), toByteOffset: 2 * i, as: UInt16.self)
        }
        // `allocate` is malloc on Linux (alignment 4), so the block shrinks in place.
        guard let half = realloc(raw, max(2 * count, 1)) else { fatalError("[bf16] realloc to a smaller size failed") }
        bf16Values = half.bindMemory(to: UInt16.self, capacity: max(count, 1))
        valuesReleased = true
        absent = true
        recompute = nil
    }

    /// glibc hands blocks of 32 MiB and more straight back to the kernel, so every large
    /// activation or gradient buffer of a training step would be page-faulted in anew (measured:
    /// 9–28 k faults and up to 25% of a big GEMM's time). Serve blocks up to 1 GiB from the heap
    /// and keep up to 1 GiB free there instead: the price is memory not returned to the system.
    static let tuneAllocator: Void = {
        #if canImport(Glibc)
        _ = mallopt(-3, 1 << 30)  // M_MMAP_THRESHOLD (a negative macro Swift does not import)
        _ = mallopt(-1, 1 << 30)  // M_TRIM_THRESHOLD
        #endif
    }()

    /// Uninitialized storage of `count` floats.
    public init(count: Int) {
        _ = Storage.tuneAllocator
        self.count = count
        values = .allocate(capacity: max(count, 1))
    }

    /// Storage holding zeros.
    public convenience init(zeros count: Int) {
        self.init(count: count)
        pointer.initialize(repeating: 0, count: count)
    }

    deinit {
        if !absent { values.deallocate() }
        bf16Values?.deallocate()
    }
}

/// Returns the heap's free memory to the system (`malloc_trim`): tensor buffers are kept on the heap
/// between steps (see `Storage.tuneAllocator`), so call this before measuring resident memory.
public func releaseFreeMemory() {
    _ = malloc_trim(0)
}

/// One recorded op: the graph slots of its inputs and the pullback that accumulates into them.
/// The pullback captures only the input values it needs, so a graph keeps no other activations.
final class Node {
    let op: String
    let inputs: [GradSlot]
    /// Receives the output's gradient (contiguous, the output's shape).
    let pullback: (Tensor) -> Void
    /// Creation order: nodes made after a mark (`Node.made`) belong to the code run since it
    /// (`Tensor.recomputed` tells a function's own graph from what it read outside).
    let serial: Int
    /// Nodes made so far. A plain global, like `Autograd.enabledDepth`: graphs are recorded on one
    /// thread at a time (the worker pool runs kernels, never ops).
    nonisolated(unsafe) static var made = 0
    init(op: String, inputs: [GradSlot], pullback: @escaping (Tensor) -> Void) {
        self.op = op
        self.inputs = inputs
        self.pullback = pullback
        serial = Node.made
        Node.made += 1
    }
}

/// A tensor's place in the autodiff graph: the op that made it and the gradient flowing into it,
/// apart from its values. Pullbacks write gradients here; holding a slot keeps no data alive.
final class GradSlot {
    let shape: [Int]
    let count: Int
    var node: Node?
    var grad: Tensor?
    /// Whether `grad` is this slot's alone (made by the accumulate methods, or handed over), so
    /// that its pullback may pass it on to an input instead of a copy; false for a caller's seed.
    var gradIsOwned = false
    var leafRequiresGrad = false
    init(shape: [Int], count: Int) {
        self.shape = shape
        self.count = count
    }

    var requiresGrad: Bool { node != nil || leafRequiresGrad }

    /// Adds `count` contiguous values at `src` into the gradient.
    func accumulateGrad(_ src: UnsafePointer<Float>) {
        if let g = grad {
            vAdd(src, g.basePointer, count)
        } else {
            let g = Tensor.empty(shape)
            g.basePointer.update(from: src, count: count)
            (grad, gradIsOwned) = (g, true)
        }
    }

    /// Adds a gradient that an op passes on unchanged (an add's, a reshape's): when it is the
    /// gradient the running pullback received and no one else holds it
    /// (`Autograd.passableGradient`), and this slot has none yet, the slot takes its buffer over
    /// instead of copying it. Once per pullback: the op's other inputs get copies.
    func accumulateGrad(passing g: Tensor) {
        check(g.count == count && g.isContiguous, "[backward] gradient \(g.shape) for tensor \(shape)")
        if grad == nil, let p = Autograd.passableGradient, p.storage === g.storage, g.layout.offset == 0, g.storage.count == count {
            Autograd.passableGradient = nil
            (grad, gradIsOwned) = (Tensor(storage: g.storage, layout: Layout(shape: shape, strides: Layout.contiguousStrides(shape), offset: 0)), true)
        } else {
            accumulateGrad(UnsafePointer(g.basePointer))
        }
    }

    /// Adds a contiguous gradient tensor of this shape (always copied on first use: the same
    /// gradient tensor may be handed to several inputs).
    func accumulateGrad(_ g: Tensor) {
        check(g.shape == shape && g.isContiguous, "[backward] gradient \(g.shape) for tensor \(shape)")
        accumulateGrad(UnsafePointer(g.basePointer))
    }

    /// Adds a gradient tensor that the caller created and hands over (no other reference to it):
    /// becomes the gradient itself when there is none yet, saving a copy.
    func accumulateGrad(owned g: Tensor) {
        check(g.shape == shape && g.isContiguous, "[backward] gradient \(g.shape) for tensor \(shape)")
        if grad == nil && g.layout.offset == 0 && g.storage.count == count && g.node == nil {
            (grad, gradIsOwned) = (g, true)
        } else {
            accumulateGrad(UnsafePointer(g.basePointer))
        }
    }

    /// The gradient buffer for a kernel that writes `out = v + beta·out`: beta is 0 for a new buffer.
    func gradBuffer() -> (UnsafeMutablePointer<Float>, beta: Float) {
        if let g = grad { return (g.basePointer, 1) }
        let g = Tensor.empty(shape)
        (grad, gradIsOwned) = (g, true)
        return (g.basePointer, 0)
    }

    /// The gradient buffer, zero-filled when new: for kernels that each add into a part of it.
    func zeroedGradBuffer() -> UnsafeMutablePointer<Float> {
        if let g = grad { return g.basePointer }
        let g = Tensor.zeros(shape)
        (grad, gradIsOwned) = (g, true)
        return g.basePointer
    }
}

/// Global autodiff switch: inside `withNoGrad` no graph is recorded.
public enum Autograd {
    nonisolated(unsafe) static var enabledDepth = 0
    /// False inside `withNoGrad`.
    public static var isRecording: Bool { enabledDepth == 0 }
    /// The gradient the running pullback received, while no one else holds it: an input it passes
    /// through to unchanged may take it over (`accumulateGrad(passing:)`) instead of a copy.
    nonisolated(unsafe) static var passableGradient: Tensor?
}

/// Runs `body` without recording a graph (inference, evaluation, optimizer updates).
public func withNoGrad<T>(_ body: () throws -> T) rethrows -> T {
    Autograd.enabledDepth += 1
    defer { Autograd.enabledDepth -= 1 }
    return try body()
}

/// An n-dimensional Float32 array with reverse-mode autodiff.
public final class Tensor {
    public let storage: Storage
    public let layout: Layout
    /// This tensor's vertex in the autodiff graph (op, gradient).
    let slot: GradSlot
    /// The accumulated gradient (contiguous, same shape), or nil.
    public var grad: Tensor? {
        get { slot.grad }
        set { (slot.grad, slot.gradIsOwned) = (newValue, false) }
    }
    /// Optional name (parameter key) used in messages.
    public var name: String?
    var node: Node? {
        get { slot.node }
        set { slot.node = newValue }
    }
    /// Set on a view made by swapping the last two axes of `transposeSource`; lets matmul use the
    /// source with a BLAS transpose flag, so neither the data nor its gradient is ever copied.
    var transposeSource: Tensor?

    public init(storage: Storage, layout: Layout) {
        check(layout.count == 0 || layout.offset + zip(layout.shape, layout.strides).map { ($0 - 1) * $1 }.reduce(0, +) < storage.count,
                     "[Tensor] layout \(layout) overruns storage of \(storage.count) floats")
        self.storage = storage
        self.layout = layout
        slot = GradSlot(shape: layout.shape, count: layout.count)
    }

    /// A contiguous tensor of `shape` holding `data` (row-major).
    public convenience init(shape: [Int], data: [Float]) {
        check(shape.reduce(1, *) == data.count,
                     "[Tensor] shape \(shape) needs \(shape.reduce(1, *)) values, got \(data.count)")
        let s = Storage(count: data.count)
        data.withUnsafeBufferPointer { s.pointer.initialize(from: $0.baseAddress!, count: data.count) }
        self.init(storage: s, layout: Layout(contiguous: shape))
    }

    /// A scalar (rank 0) tensor.
    public convenience init(_ value: Float) { self.init(shape: [], data: [value]) }

    public var shape: [Int] { layout.shape }
    public var rank: Int { layout.rank }
    public var count: Int { layout.count }
    public var isContiguous: Bool { layout.isContiguous }

    /// Whether this tensor receives a gradient: a leaf marked trainable, or an op output with a graph.
    public var requiresGrad: Bool {
        get { slot.requiresGrad }
        set {
            check(node == nil, "[requiresGrad] can only be set on a leaf tensor, not on the output of \(node!.op)")
            slot.leafRequiresGrad = newValue
        }
    }

    /// True for tensors that are not the output of a recorded op.
    public var isLeaf: Bool { node == nil }

    /// Pointer to element 0 of this view (storage + offset).
    @inline(__always) public var basePointer: UnsafeMutablePointer<Float> { storage.pointer + layout.offset }

    /// A tensor sharing this one's data with no graph (no gradient flows through it).
    public func detached() -> Tensor { Tensor(storage: storage, layout: layout) }

    /// A contiguous copy of the values with no graph (a snapshot that later writes do not touch).
    public func copy() -> Tensor {
        let out = Tensor.empty(shape)
        if isContiguous { out.basePointer.update(from: basePointer, count: count) } else {
            copyStrided(from: storage.pointer, layout: layout, to: out.basePointer)
        }
        return out
    }

    /// The values in row-major order.
    public func toArray() -> [Float] {
        let c = contiguousData()
        return Array(UnsafeBufferPointer(start: c.basePointer, count: count))
    }

    /// The single value of a one-element tensor.
    public func item() -> Float {
        check(count == 1, "[item] needs a one-element tensor, got shape \(shape)")
        return basePointer[0]
    }

    /// This tensor if contiguous, else a contiguous copy of its values (no graph).
    func contiguousData() -> Tensor {
        if isContiguous { return self }
        let out = Tensor.empty(shape)
        copyStrided(from: storage.pointer, layout: layout, to: out.basePointer)
        return out
    }

    /// Sets the gradient to nil (call between optimizer steps).
    public func zeroGrad() { grad = nil }

    // MARK: creation

    /// Uninitialized contiguous tensor.
    public static func empty(_ shape: [Int]) -> Tensor {
        Tensor(storage: Storage(count: shape.reduce(1, *)), layout: Layout(contiguous: shape))
    }
    public static func zeros(_ shape: [Int]) -> Tensor { full(shape, 0) }
    public static func ones(_ shape: [Int]) -> Tensor { full(shape, 1) }
    public static func full(_ shape: [Int], _ value: Float) -> Tensor {
        let t = empty(shape)
        t.basePointer.initialize(repeating: value, count: t.count)
        return t
    }
    /// `[start, start + step, …)` below `end`.
    public static func arange(_ start: Float, _ end: Float, step: Float = 1) -> Tensor {
        let n = Swift.max(0, Int(((end - start) / step).rounded(.up)))
        return Tensor(shape: [n], data: (0..<n).map { start + Float($0) * step })
    }
    /// Normal(mean, std) values from the seeded generator.
    public static func normal(_ shape: [Int], mean: Float = 0, std: Float = 1, rng: inout RNG) -> Tensor {
        let t = empty(shape)
        for i in 0..<t.count { t.basePointer[i] = mean + std * rng.nextNormal() }
        return t
    }
    /// Uniform values in [low, high) from the seeded generator.
    public static func uniform(_ shape: [Int], low: Float = 0, high: Float = 1, rng: inout RNG) -> Tensor {
        let t = empty(shape)
        for i in 0..<t.count { t.basePointer[i] = low + (high - low) * rng.nextFloat() }
        return t
    }

    // MARK: autodiff

    /// Makes the output of an op, recording a node when grad mode is on and an input needs a gradient.
    /// A recorded op pins its inputs' values (`Storage.pinned`: they are never dropped until read,
    /// since its pullback may hold pointers into them) unless `readsInputsInPullback` says its
    /// pullback takes every input pointer afresh from the tensors it keeps.
    static func make(_ storage: Storage, _ layout: Layout, op: String, inputs: [Tensor], readsInputsInPullback: Bool = false,
                     pullback: @escaping (Tensor) -> Void) -> Tensor {
        let t = Tensor(storage: storage, layout: layout)
        if Autograd.isRecording && inputs.contains(where: { $0.requiresGrad }) {
            t.node = Node(op: op, inputs: inputs.map(\.slot), pullback: pullback)
            if !readsInputsInPullback { for x in inputs { x.storage.pinned = true } }
        }
        return t
    }

    /// Output of an op into a fresh contiguous tensor `out`.
    static func make(_ out: Tensor, op: String, inputs: [Tensor], readsInputsInPullback: Bool = false,
                     pullback: @escaping (Tensor) -> Void) -> Tensor {
        make(out.storage, out.layout, op: op, inputs: inputs, readsInputsInPullback: readsInputsInPullback, pullback: pullback)
    }

    /// Output of an op into a fresh contiguous tensor `out` whose values `recompute` can write
    /// again, bit for bit, from what the pullback keeps anyway: when a node is recorded, the
    /// output may be dropped after its last forward use (`dropValuesUntilRead`).
    static func make(_ out: Tensor, op: String, inputs: [Tensor], recompute: @escaping (UnsafeMutablePointer<Float>) -> Void,
                     pullback: @escaping (Tensor) -> Void) -> Tensor {
        // Once the op's own pullback ran, the readers this backward pass reaches had run theirs
        // (reverse topological order): values read (so present) need the closure no more, and an
        // output kept after the backward pass then keeps no input. Values still dropped keep it,
        // for a reader that a later backward pass over the same graph reaches.
        let t = make(out.storage, out.layout, op: op, inputs: inputs) { [weak storage = out.storage] g in
            pullback(g)
            storage?.endRecompute()
        }
        if t.node != nil { out.storage.recompute = recompute }
        return t
    }

    /// Frees this activation's values until something reads them again, when the op that made it
    /// can recompute them (a norm's or an activation function's output; see `Storage.recompute`),
    /// a graph was recorded and the ops that read it so far take its pointer afresh in their
    /// pullbacks (matmul, LoRA's products, elementwise arithmetic; `Storage.pinned`); does nothing
    /// otherwise. Call it after the tensor's last forward use: the backward pass then recomputes
    /// the values where a pullback reads them (a matmul's weight gradient), so the graph holds the
    /// op's input alone instead of input and output. Values, gradients and results do not change.
    public func dropValuesUntilRead() { storage.dropUntilRead() }

    /// Adds `count` contiguous values at `src` into this tensor's gradient.
    func accumulateGrad(_ src: UnsafePointer<Float>) { slot.accumulateGrad(src) }
    /// Adds a contiguous gradient of this tensor's shape (copied on first use).
    func accumulateGrad(_ g: Tensor) { slot.accumulateGrad(g) }
    /// Adds a gradient the caller created and hands over (becomes the gradient when there is none).
    func accumulateGrad(owned g: Tensor) { slot.accumulateGrad(owned: g) }
    /// The gradient buffer for a kernel that writes `out = v + beta·out`: beta is 0 for a new buffer.
    func gradBuffer() -> (UnsafeMutablePointer<Float>, beta: Float) { slot.gradBuffer() }

    /// Back-propagates from this tensor. `seed` defaults to ones (for a scalar loss, d loss / d loss = 1).
    /// Gradients accumulate into the leaves' `grad` until zeroed; intermediate gradients are freed.
    /// The graph is released as the backward passes it (each op's saved tensors go as soon as its
    /// pullback has run), so activations do not outlive their use; `retainGraph` keeps it for a
    /// second backward.
    public func backward(_ seed: Tensor? = nil, retainGraph: Bool = false) {
        backward(seed, retainGraph: retainGraph, stoppingAt: [])
    }

    /// `backward`, treating the tensors whose slots are in `boundary` as leaves: their gradient
    /// accumulates and stays, and the graph behind them is left for an enclosing backward pass.
    func backward(_ seed: Tensor?, retainGraph: Bool, stoppingAt boundary: Set<ObjectIdentifier>) {
        check(requiresGrad, "[backward] this tensor does not require a gradient (no trainable input, made under withNoGrad, or its graph was released by an earlier backward(): pass retainGraph: true to keep it)")
        // Topological order by iterative depth-first search over recorded nodes.
        var order: [GradSlot] = []
        Profiler.measure(.graph) {
            var visited = Set<ObjectIdentifier>()
            var stack: [(GradSlot, Bool)] = [(slot, false)]
            while let (t, expanded) = stack.popLast() {
                if expanded { order.append(t); continue }
                if !visited.insert(ObjectIdentifier(t)).inserted { continue }
                stack.append((t, true))
                for input in t.node?.inputs ?? [] where input.node != nil && !visited.contains(ObjectIdentifier(input))
                    && !boundary.contains(ObjectIdentifier(input)) {
                    stack.append((input, false))
                }
            }
        }
        if let s = seed {
            check(s.shape == shape, "[backward] seed shape \(s.shape) differs from tensor shape \(shape)")
            if node != nil && grad == nil {
                // Read-only use: pullbacks never write into the gradient they receive, and a
                // non-leaf's gradient is dropped after its pullback, so no copy is needed.
                grad = s.contiguousData()
            } else {
                accumulateGrad(UnsafePointer(s.contiguousData().basePointer))  // a leaf keeps a copy
            }
        } else {
            accumulateGrad(owned: Tensor.ones(shape))
        }
        while let t = order.popLast() {  // reverse topological order; each tensor let go once done
            guard let node = t.node, let g = t.grad else { continue }
            let outer = Autograd.passableGradient  // a backward inside a pullback (recomputation) restores it
            Autograd.passableGradient = t.gradIsOwned ? g : nil
            node.pullback(g)
            Autograd.passableGradient = outer
            t.grad = nil  // intermediate gradients are not kept
            if !retainGraph { t.node = nil }
        }
    }
}

/// Named tensors read one at a time (a checkpoint file opened for reading): loading a model from
/// one holds a single file tensor beside the model's own weights, not a second copy of them all,
/// and none at all when the source can write into the weights (`readInto`).
public struct TensorReader {
    /// Every tensor's name and shape, known before any value is read.
    public let shapes: [String: [Int]]
    /// Reads one tensor (a name in `shapes`) as a new Float32 tensor.
    public let read: (String) throws -> Tensor
    /// Writes one tensor's Float32 values, row-major in the shape `shapes[name]`, at a pointer to
    /// that many values; nil when the source has no such path. Loading fills each parameter in
    /// place with it: a model's largest matrix (GPT-2's 147 MiB embedding, loaded last) then never
    /// sits in memory twice.
    public let readInto: ((String, UnsafeMutablePointer<Float>) throws -> Void)?

    public init(shapes: [String: [Int]], read: @escaping (String) throws -> Tensor) {
        self.shapes = shapes
        self.read = read
        self.readInto = nil
    }

    /// A source that writes values in place; `read` fills a new tensor with it.
    public init(shapes: [String: [Int]], readInto: @escaping (String, UnsafeMutablePointer<Float>) throws -> Void) {
        self.shapes = shapes
        self.readInto = readInto
        self.read = { name in
            let t = Tensor.empty(shapes[name] ?? [0])  // an unknown name: the source's own error, from readInto
            try readInto(name, t.basePointer)
            return t
        }
    }

    /// The same tensors under other names: `rename` maps each name of this reader to one of `source`.
    public init(renaming source: TensorReader, _ rename: [String: String]) {
        shapes = rename.mapValues { source.shapes[$0]! }
        read = { try source.read(rename[$0] ?? $0) }
        readInto = source.readInto.map { into in { name, p in try into(rename[name] ?? name, p) } }
    }

    /// Tensors already in memory.
    public init(_ tensors: [String: Tensor]) {
        self.init(shapes: tensors.mapValues(\.shape)) { tensors[$0]! }
    }

    /// Elements in all the tensors.
    public var elementCount: Int { shapes.values.reduce(0) { $0 + $1.reduce(1, *) } }
}

extension Tensor: CustomStringConvertible {
    public var description: String {
        let values = toArray()
        let shown = values.prefix(8).map { String(format: "%.4g", $0) }.joined(separator: ", ")
        return "Tensor(\(shape), [\(shown)\(values.count > 8 ? ", …" : "")])"
    }
}

extension Tensor {
    /// The index and value of the first NaN or infinite element, or nil when every element is finite.
    public func firstNonFinite() -> (index: Int, value: Float)? {
        let c = contiguous()
        let p = c.basePointer
        return firstNonFiniteIndex(UnsafeBufferPointer(start: p, count: c.count)).map { ($0, p[$0]) }
    }
}

/// The index of the first NaN or infinite value, or nil when every value is finite. Blocks of
/// 4,096 values are scanned without an early exit, so the loop vectorizes: the largest exponent
/// field in a block is all ones only when the block holds a NaN or an infinity.
public func firstNonFiniteIndex(_ values: UnsafeBufferPointer<Float>) -> Int? {
    guard let p = values.baseAddress else { return nil }
    let bits = UnsafeRawPointer(p).assumingMemoryBound(to: UInt32.self)
    for start in stride(from: 0, to: values.count, by: 4096) {
        let end = Swift.min(values.count, start + 4096)
        var top: UInt32 = 0
        for i in start..<end { top = Swift.max(top, bits[i] & 0x7F80_0000) }
        guard top == 0x7F80_0000 else { continue }
        for i in start..<end where !p[i].isFinite { return i }
    }
    return nil
}
