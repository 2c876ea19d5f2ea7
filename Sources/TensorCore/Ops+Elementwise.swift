// Elementwise ops: binary arithmetic with numpy broadcasting, unary math and activations, where.
// Broadcast gradients are reduced back to each input's shape by one helper, `sumToShape`.

import Foundation

enum BinaryOp { case add, sub, mul, div }

extension Tensor {
    /// a ∘ b with numpy broadcasting into a new contiguous tensor (no graph).
    static func binaryKernel(_ op: BinaryOp, _ a: Tensor, _ b: Tensor, outShape: [Int]) -> Tensor {
        let out = Tensor.empty(outShape)
        let la = a.layout.expanded(to: outShape), lb = b.layout.expanded(to: outShape)
        let (shape, strides) = collapse(outShape, [la.strides, lb.strides, Layout.contiguousStrides(outShape)])
        let n = shape.last!
        let rows = shape.dropLast().reduce(1, *)
        let (sa, sb) = (strides[0].last!, strides[1].last!)
        let pa = UnsafePointer(a.basePointer), pb = UnsafePointer(b.basePointer), po = out.basePointer
        parallelRanges(rows, cost: n) { lo, hi in
            forEachRow(shape, strides, rows: lo, hi) { oa, ob, oo in
                let x = pa + oa, y = pb + ob, z = po + oo
                switch (op, sa, sb) {
                case (.add, 1, 1): for i in 0..<n { z[i] = x[i] + y[i] }
                case (.add, 1, 0): let c = y[0]; for i in 0..<n { z[i] = x[i] + c }
                case (.add, _, _): for i in 0..<n { z[i] = x[i * sa] + y[i * sb] }
                case (.sub, 1, 1): for i in 0..<n { z[i] = x[i] - y[i] }
                case (.sub, _, _): for i in 0..<n { z[i] = x[i * sa] - y[i * sb] }
                case (.mul, 1, 1): for i in 0..<n { z[i] = x[i] * y[i] }
                case (.mul, 1, 0): let c = y[0]; for i in 0..<n { z[i] = x[i] * c }
                case (.mul, _, _): for i in 0..<n { z[i] = x[i * sa] * y[i * sb] }
                case (.div, 1, 1): for i in 0..<n { z[i] = x[i] / y[i] }
                case (.div, _, _): for i in 0..<n { z[i] = x[i * sa] / y[i * sb] }
                }
            }
        }
        return out
    }

    static func binary(_ op: BinaryOp, _ a: Tensor, _ b: Tensor, name: String) -> Tensor {
        let outShape = must { try ShapeCheck.broadcast(a.shape, b.shape, op: name) }
        let out = binaryKernel(op, a, b, outShape: outShape)
        // Keep only the values a gradient needs: none for + and −; the other operand for × and ÷,
        // read in the pullback (so an IA3 scale lets a dropped activation go).
        let (aSlot, bSlot) = (a.slot, b.slot)
        let needsValues = op == .mul || op == .div
        let keptA = needsValues && b.requiresGrad ? a : nil
        let keptB = needsValues && (a.requiresGrad || (op == .div && b.requiresGrad)) ? b : nil
        return make(out, op: name, inputs: [a, b], readsInputsInPullback: true) { g in
            withNoGrad {
                let (ad, bd) = (keptA?.detached(), keptB?.detached())
                if aSlot.requiresGrad {
                    switch op {
                    case .add, .sub: aSlot.accumulateGrad(passing: g.sumToShape(aSlot.shape))
                    case .mul: aSlot.accumulateGrad(owned: Tensor.columnSums(g, times: bd!, to: aSlot.shape) ?? (g * bd!).sumToShape(aSlot.shape))
                    case .div: aSlot.accumulateGrad(owned: (g / bd!).sumToShape(aSlot.shape))
                    }
                }
                if bSlot.requiresGrad {
                    switch op {
                    case .add: bSlot.accumulateGrad(passing: g.sumToShape(bSlot.shape))
                    case .sub: bSlot.accumulateGrad(owned: (-g).sumToShape(bSlot.shape))
                    case .mul: bSlot.accumulateGrad(owned: Tensor.columnSums(g, times: ad!, to: bSlot.shape) ?? (g * ad!).sumToShape(bSlot.shape))
                    case .div: bSlot.accumulateGrad(owned: (-(g * ad!) / (bd! * bd!)).sumToShape(bSlot.shape))
                    }
                }
            }
        }
    }

    /// y + bias over the last axis (a Linear's bias): y (…, C), bias (C). `intoY`: added into y's
    /// own buffer, for a y that is a fresh op output which nothing else holds or reads (a product),
    /// so no (…, C) sum is allocated and written beside it. Backward: dY passes through; dBias is
    /// the sum of dY's rows.
    public static func addingBias(_ y: Tensor, _ bias: Tensor, intoY: Bool = false) -> Tensor {
        let c = y.shape.last ?? 0
        check(bias.shape == [c], "[addingBias] needs y (…, C) and bias (C); got y \(y.shape), bias \(bias.shape)")
        guard intoY, y.isContiguous, bias.isContiguous, y.rank >= 2 else { return y + bias }
        let out = outputBuffer(y, intoY: true)  // (…, C)
        let po = out.basePointer, pb = UnsafePointer(bias.basePointer)
        parallelRanges(y.count / Swift.max(c, 1), cost: c) { lo, hi in
            for r in lo..<hi {
                let row = po + r * c
                for i in 0..<c { row[i] += pb[i] }
            }
        }
        let ySlot = y.slot
        return make(out, op: "addingBias", inputs: [y, bias]) { g in
            if ySlot.requiresGrad { ySlot.accumulateGrad(passing: g) }  // before the bias reads g: it only reads
            if bias.requiresGrad { bias.accumulateGrad(owned: Tensor.columnSums(g, to: [c])!) }
        }
    }

    /// Σ over rows of g (⊙ x) when `target` keeps only the last axis (a bias, or a per-column scale
    /// such as IA3's: (…, C) → (C) or (1, …, C)) and g (and x) are contiguous of one shape; nil
    /// otherwise. One pass, no (…, C) product stored; rows split over the threads, each into its
    /// own partial row (a plain `sum` runs such rows on one thread: they share the output cells).
    static func columnSums(_ g: Tensor, times x: Tensor? = nil, to target: [Int]) -> Tensor? {
        guard let c = g.shape.last, c > 0, g.rank >= 2, g.isContiguous, target.last == c,
              target.dropLast().allSatisfy({ $0 == 1 }), target.count <= g.rank,
              x.map({ $0.shape == g.shape && $0.isContiguous }) ?? true else { return nil }
        let rows = g.count / c
        let chunks = rows * c >= parallelThreshold ? Swift.min(hardwareThreads, rows) : 1
        let partial = Tensor.zeros([chunks, c])  // (chunks, C)
        let pg = UnsafePointer(g.basePointer), px = x.map { UnsafePointer($0.basePointer) }, pp = partial.basePointer
        func run(_ k: Int) {
            let acc = pp + k * c
            for r in (rows * k / chunks)..<(rows * (k + 1) / chunks) {
                let gr = pg + r * c
                if let px { let xr = px + r * c; for i in 0..<c { acc[i] += gr[i] * xr[i] } } else { for i in 0..<c { acc[i] += gr[i] } }
            }
        }
        if chunks == 1 { run(0) } else { WorkerPool.shared.run(chunks) { run($0) } }
        for k in 1..<Swift.max(chunks, 1) { for i in 0..<c { pp[i] += pp[k * c + i] } }
        let out = Tensor.empty(target)
        out.basePointer.update(from: pp, count: c)
        return out
    }

    /// Sums a broadcast gradient back to `target` (the input's shape); a contiguous result.
    func sumToShape(_ target: [Int]) -> Tensor {
        if shape == target { return contiguousData() }
        if let sums = Tensor.columnSums(self, to: target) { return sums }
        let lead = rank - target.count
        var axes = Array(0..<lead)
        for i in 0..<target.count where target[i] == 1 && shape[lead + i] != 1 { axes.append(lead + i) }
        return withNoGrad { sum(axes: axes, keepDims: true).reshaped(target).contiguousData() }
    }

    public static func + (a: Tensor, b: Tensor) -> Tensor { binary(.add, a, b, name: "add") }
    public static func - (a: Tensor, b: Tensor) -> Tensor { binary(.sub, a, b, name: "sub") }
    public static func * (a: Tensor, b: Tensor) -> Tensor { binary(.mul, a, b, name: "mul") }
    public static func / (a: Tensor, b: Tensor) -> Tensor { binary(.div, a, b, name: "div") }
    public static func + (a: Tensor, s: Float) -> Tensor { a.unary(.addScalar(s)) }
    public static func - (a: Tensor, s: Float) -> Tensor { a.unary(.addScalar(-s)) }
    public static func * (a: Tensor, s: Float) -> Tensor { a.unary(.scale(s)) }
    public static func / (a: Tensor, s: Float) -> Tensor { a.unary(.scale(1 / s)) }
    public static func + (s: Float, a: Tensor) -> Tensor { a.unary(.addScalar(s)) }
    public static func * (s: Float, a: Tensor) -> Tensor { a.unary(.scale(s)) }
    public static prefix func - (a: Tensor) -> Tensor { a.unary(.scale(-1)) }
}

/// Unary elementwise functions with their derivative side by side.
public enum UnaryOp {
    case scale(Float), addScalar(Float), exp, log, sqrt, rsqrt, pow(Float), tanh, sigmoid, relu
    case geluTanh, geluErf, silu, clamp(Float, Float)

    var name: String {
        switch self {
        case .scale: "scale"; case .addScalar: "addScalar"; case .exp: "exp"; case .log: "log"
        case .sqrt: "sqrt"; case .rsqrt: "rsqrt"; case .pow: "pow"; case .tanh: "tanh"
        case .sigmoid: "sigmoid"; case .relu: "relu"; case .geluTanh: "gelu(tanh)"
        case .geluErf: "gelu(erf)"; case .silu: "silu"; case .clamp: "clamp"
        }
    }

    /// Whether the derivative is taken from the output y (else from the input x, or neither).
    var derivativeReadsOutput: Bool {
        switch self {
        case .exp, .sqrt, .rsqrt, .tanh, .sigmoid: true
        default: false
        }
    }
}

/// tanh(u) = 1 − 2 / (e^{2u} + 1), through fastExp (vectorizable; exact limits ±1).
@inline(__always) func fastTanh(_ u: Float) -> Float { 1 - 2 / (fastExp(2 * u) + 1) }

private let sqrt2OverPi: Float = 0.7978845608028654
private let invSqrt2: Float = 0.7071067811865476
private let invSqrt2Pi: Float = 0.3989422804014327

extension Tensor {
    /// Applies `op` elementwise; the pullback multiplies by the derivative (from x or y as cheaper).
    public func unary(_ op: UnaryOp) -> Tensor {
        let x = contiguousData()
        let out = Tensor.empty(shape)
        let px = UnsafePointer(x.basePointer), n = count
        func apply(into py: UnsafeMutablePointer<Float>) {
            parallelRanges(n, cost: 4) { lo, hi in
                switch op {
                case .scale(let s): for i in lo..<hi { py[i] = px[i] * s }
                case .addScalar(let s): for i in lo..<hi { py[i] = px[i] + s }
                case .exp: for i in lo..<hi { py[i] = fastExp(px[i]) }
                case .log: for i in lo..<hi { py[i] = Foundation.log(px[i]) }
                case .sqrt: for i in lo..<hi { py[i] = px[i].squareRoot() }
                case .rsqrt: for i in lo..<hi { py[i] = 1 / px[i].squareRoot() }
                case .pow(let p): for i in lo..<hi { py[i] = Foundation.pow(px[i], p) }
                case .tanh: for i in lo..<hi { py[i] = Foundation.tanh(px[i]) }
                case .sigmoid: for i in lo..<hi { py[i] = 1 / (1 + fastExp(-px[i])) }
                case .relu: for i in lo..<hi { py[i] = Swift.max(px[i], 0) }
                case .geluTanh:
                    for i in lo..<hi {
                        let v = px[i]
                        py[i] = 0.5 * v * (1 + fastTanh(sqrt2OverPi * (v + 0.044715 * v * v * v)))
                    }
                case .geluErf: for i in lo..<hi { py[i] = 0.5 * px[i] * (1 + fastErf(px[i] * invSqrt2)) }
                case .silu: for i in lo..<hi { py[i] = px[i] / (1 + fastExp(-px[i])) }
                case .clamp(let a, let b): for i in lo..<hi { py[i] = Swift.min(Swift.max(px[i], a), b) }
                }
            }
        }
        apply(into: out.basePointer)
        let pullback = { [self, ys = op.derivativeReadsOutput ? out.storage : nil] (g: Tensor) in
            let dx = Tensor.empty(shape)
            // y: the output where the derivative reads it (a placeholder otherwise, never read)
            let pg = UnsafePointer(g.basePointer), pd = dx.basePointer, y = UnsafePointer(ys?.pointer ?? dx.basePointer)
            parallelRanges(count, cost: 4) { lo, hi in
                switch op {
                case .scale(let s): for i in lo..<hi { pd[i] = pg[i] * s }
                case .addScalar: for i in lo..<hi { pd[i] = pg[i] }
                case .exp: for i in lo..<hi { pd[i] = pg[i] * y[i] }
                case .log: for i in lo..<hi { pd[i] = pg[i] / px[i] }
                case .sqrt: for i in lo..<hi { pd[i] = pg[i] * 0.5 / y[i] }
                case .rsqrt: for i in lo..<hi { pd[i] = pg[i] * -0.5 * y[i] * y[i] * y[i] }
                case .pow(let p): for i in lo..<hi { pd[i] = pg[i] * p * Foundation.pow(px[i], p - 1) }
                case .tanh: for i in lo..<hi { pd[i] = pg[i] * (1 - y[i] * y[i]) }
                case .sigmoid: for i in lo..<hi { pd[i] = pg[i] * y[i] * (1 - y[i]) }
                case .relu: for i in lo..<hi { pd[i] = px[i] > 0 ? pg[i] : 0 }
                case .geluTanh:
                    for i in lo..<hi {
                        let v = px[i]
                        let u = sqrt2OverPi * (v + 0.044715 * v * v * v)
                        let t = fastTanh(u)
                        let du = sqrt2OverPi * (1 + 3 * 0.044715 * v * v)
                        pd[i] = pg[i] * (0.5 * (1 + t) + 0.5 * v * (1 - t * t) * du)
                    }
                case .geluErf:
                    for i in lo..<hi {
                        let v = px[i]
                        pd[i] = pg[i] * (0.5 * (1 + fastErf(v * invSqrt2)) + v * invSqrt2Pi * fastExp(-0.5 * v * v))
                    }
                case .silu:
                    for i in lo..<hi {
                        let s = 1 / (1 + fastExp(-px[i]))
                        pd[i] = pg[i] * s * (1 + px[i] * (1 - s))
                    }
                case .clamp(let a, let b): for i in lo..<hi { pd[i] = (px[i] >= a && px[i] <= b) ? pg[i] : 0 }
                }
            }
            withExtendedLifetime(x) { accumulateGrad(owned: dx) }
        }
        // An output the derivative does not read can be dropped and recomputed from x
        // (`dropValuesUntilRead`): GPT-2's GELU output, kept for c_proj's weight gradient.
        guard !op.derivativeReadsOutput else { return Tensor.make(out, op: op.name, inputs: [self], pullback: pullback) }
        let held = x.storage  // not the tensor: it would hold its graph
        return Tensor.make(out, op: op.name, inputs: [self], recompute: { py in
            apply(into: py)
            withExtendedLifetime(held) {}
        }, pullback: pullback)
    }

    public func exp() -> Tensor { unary(.exp) }
    public func log() -> Tensor { unary(.log) }
    public func sqrt() -> Tensor { unary(.sqrt) }
    public func rsqrt() -> Tensor { unary(.rsqrt) }
    public func pow(_ p: Float) -> Tensor { unary(.pow(p)) }
    public func tanh() -> Tensor { unary(.tanh) }
    public func sigmoid() -> Tensor { unary(.sigmoid) }
    public func relu() -> Tensor { unary(.relu) }
    /// GELU, tanh approximation (GPT-2's "gelu_new").
    public func geluTanh() -> Tensor { unary(.geluTanh) }
    /// GELU, exact erf form.
    public func gelu() -> Tensor { unary(.geluErf) }
    /// SiLU (swish): x · σ(x).
    public func silu() -> Tensor { unary(.silu) }
    public func clamp(min lo: Float, max hi: Float) -> Tensor { unary(.clamp(lo, hi)) }

    /// `cond != 0 ? a : b`, all three broadcast together. Gradients flow to `a` where the condition
    /// holds and to `b` where it does not; `cond` gets none.
    public static func `where`(_ cond: Tensor, _ a: Tensor, _ b: Tensor) -> Tensor {
        let s1 = must { try ShapeCheck.broadcast(cond.shape, a.shape, op: "where") }
        let outShape = must { try ShapeCheck.broadcast(s1, b.shape, op: "where") }
        let c = Tensor(storage: cond.storage, layout: cond.layout.expanded(to: outShape)).contiguousData()
        let av = Tensor(storage: a.storage, layout: a.layout.expanded(to: outShape)).contiguousData()
        let bv = Tensor(storage: b.storage, layout: b.layout.expanded(to: outShape)).contiguousData()
        let out = Tensor.empty(outShape)
        let pc = UnsafePointer(c.basePointer), pa = UnsafePointer(av.basePointer), pb = UnsafePointer(bv.basePointer)
        let po = out.basePointer
        parallelRanges(out.count) { lo, hi in
            for i in lo..<hi { po[i] = pc[i] != 0 ? pa[i] : pb[i] }
        }
        let result = make(out, op: "where", inputs: [a, b]) { g in
            let pg = UnsafePointer(g.basePointer)
            for (t, keep) in [(a, true), (b, false)] where t.requiresGrad {
                let d = Tensor.empty(outShape)
                let pd = d.basePointer
                for i in 0..<d.count { pd[i] = ((pc[i] != 0) == keep) ? pg[i] : 0 }
                t.accumulateGrad(owned: d.sumToShape(t.shape))
            }
            withExtendedLifetime(c) {}
        }
        if result.node != nil { c.storage.pinned = true }  // the pullback reads pc, and cond is no input
        return result
    }

    /// Replaces elements where `mask != 0` (broadcast) by `value`, e.g. -inf for attention masks.
    public func maskedFill(_ mask: Tensor, _ value: Float) -> Tensor {
        Tensor.where(mask, Tensor(value), self)
    }
}
