// Basic layers: Linear (Hugging Face (out, in) weights, or GPT-2 Conv1D (in, out) weights),
// Embedding, LayerNorm, RMSNorm. Linear carries hook lists so PEFT methods attach without surgery.

import TensorCore
/// Something attached to a Linear layer by a PEFT method.
public protocol LinearHook: AnyObject {
    /// Transforms the layer's input before the base product (IA3 on a feed-forward input).
    func input(_ x: Tensor, layer: Linear) -> Tensor
    /// Transforms the output given the (hooked) input and the base output: LoRA adds B·A·x,
    /// IA3 scales.
    func output(_ y: Tensor, input x: Tensor, layer: Linear) -> Tensor
    /// The rows of the batch (the input's first axis) the hook applies to; nil: every row. Lets
    /// several adapters serve one batch, each on its own rows (inference only).
    var rows: Range<Int>? { get }
}

extension LinearHook {
    public func input(_ x: Tensor, layer: Linear) -> Tensor { x }
    public func output(_ y: Tensor, input x: Tensor, layer: Linear) -> Tensor { y }
    public var rows: Range<Int>? { nil }
}

/// A hook whose whole effect is adding scale · (x Aᵀ) Bᵀ to the layer's output (LoRA). Layers that
/// read one input (`Linear.apply(_:to:)`) then compute their x Aᵀ together in one GEMM.
public protocol LowRankHook: LinearHook {
    /// A (r, in), B (out, r) and the scale, or nil when the hook must run on its own (dropout,
    /// DoRA, merged, disabled).
    var lowRankFactors: (a: Tensor, b: Tensor, scale: Float)? { get }
}

/// y = x Wᵀ + b, weight (out, in); or, with `fanInFanOut` (GPT-2's Conv1D), y = x W + b, weight (in, out).
public final class Linear: Module {
    public private(set) var weight: Tensor
    public private(set) var bias: Tensor?
    public let inFeatures: Int, outFeatures: Int
    /// Weight stored (in, out) as GPT-2's Conv1D does.
    public let fanInFanOut: Bool
    /// Hooks applied in order (PEFT adapters).
    public var hooks: [LinearHook] = []
    /// Hooks folded into the weights, in the order they were (PEFT methods keep it, so that one can
    /// be unfolded while those folded after it stay folded).
    public var mergedHooks: [LinearHook] = []

    public init(_ inFeatures: Int, _ outFeatures: Int, bias: Bool = true, fanInFanOut: Bool = false,
                std: Float = 0.02, rng: inout RNG) {
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        self.fanInFanOut = fanInFanOut
        weight = WeightInit.normal(fanInFanOut ? [inFeatures, outFeatures] : [outFeatures, inFeatures], std: std, rng: &rng)
        self.bias = bias ? Tensor.zeros([outFeatures]) : nil
        super.init()
        register("weight", weight)
        if let b = self.bias { register("bias", b) }
    }

    /// The weight as (out, in) for the product, a transpose view when stored (in, out).
    public var weightOutIn: Tensor { fanInFanOut ? weight.transposed() : weight }

    /// The product without hooks: x Wᵀ + b over the last axis.
    public func base(_ x: Tensor) -> Tensor {
        let y = x.matmul(fanInFanOut ? weight : weight.transposed())  // (…, out)
        return bias.map { Tensor.addingBias(y, $0, intoY: true) } ?? y  // the product is fresh: the bias goes into it
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        if hooks.isEmpty { return base(x) }
        // One LoRA branch alone: it adds into the base output's own buffer (a fresh product that
        // no pullback reads), not into a copy.
        if hooks.count == 1, hooks[0].rows == nil, let f = (hooks[0] as? LowRankHook)?.lowRankFactors {
            return Tensor.lowRankUpdate(base(x), x: x, a: f.a, b: f.b, scale: f.scale, intoY: true)
        }
        if hooks.contains(where: { $0.rows != nil }) { return rowScoped(x) }
        var h = x
        for hook in hooks { h = hook.input(h, layer: self) }
        var y = base(h)
        for hook in hooks { y = hook.output(y, input: h, layer: self) }
        return y
    }

    /// Several layers on one input (a block's q, k and v projections): the same outputs as calling
    /// each, but when two or more of them carry a single low-rank hook (LoRA) and nothing else,
    /// their x Aᵀ products run as one GEMM, forward and backward (`Tensor.lowRankProject`).
    public static func apply(_ layers: [Linear], to x: Tensor) -> [Tensor] {
        let factors = layers.map { l -> (a: Tensor, b: Tensor, scale: Float)? in
            guard l.hooks.count == 1, l.hooks[0].rows == nil, let h = l.hooks[0] as? LowRankHook else { return nil }
            return h.lowRankFactors
        }
        let shared = factors.indices.filter { factors[$0] != nil }
        guard shared.count >= 2 else { return layers.map { $0(x) } }
        let u = Tensor.lowRankProject(x, a: shared.map { factors[$0]!.a })  // (N, Σr)
        var column = [Int: Int](), next = 0
        for i in shared { column[i] = next; next += factors[i]!.a.shape[0] }
        return layers.indices.map { i in
            guard let f = factors[i], let c = column[i] else { return layers[i](x) }
            return Tensor.lowRankExpand(layers[i].base(x), u: u, column: c, b: f.b, scale: f.scale, intoY: true)  // a fresh product
        }
    }

    /// Hooks limited to rows of the batch: each transforms its rows' slice, written back in place
    /// (into a copy of the input, and into the fresh output), so no graph is recorded.
    private func rowScoped(_ x: Tensor) -> Tensor {
        check(!Autograd.isRecording, "[Linear] adapters limited to batch rows (serving) run under withNoGrad only")
        var h = x, ownInput = false
        for hook in hooks {
            guard let r = hook.rows else { h = hook.input(h, layer: self); ownInput = false; continue }
            guard !r.isEmpty else { continue }
            let view = h.slice(axis: 0, r.lowerBound, r.upperBound)  // (rows, …)
            let part = hook.input(view, layer: self)
            if part !== view {
                if !ownInput { h = h.copy(); ownInput = true }
                h.slice(axis: 0, r.lowerBound, r.upperBound).assign(part)
            }
        }
        var y = base(h)
        for hook in hooks {
            guard let r = hook.rows else { y = hook.output(y, input: h, layer: self); continue }
            guard !r.isEmpty else { continue }
            let view = y.slice(axis: 0, r.lowerBound, r.upperBound)  // (rows, …, out)
            let part = hook.output(view, input: h.slice(axis: 0, r.lowerBound, r.upperBound), layer: self)
            if part !== view { view.assign(part) }
        }
        return y
    }

    /// Swaps in new weight values (same shape), e.g. after merging an adapter.
    public func setWeight(_ w: Tensor) {
        check(w.shape == weight.shape, "[Linear] new weight \(w.shape) differs from \(weight.shape)")
        w.requiresGrad = weight.requiresGrad
        w.name = weight.name
        weight = w
        replaceParameter("weight", with: w)
    }

    public override func replaceParameter(_ name: String, with t: Tensor) {
        super.replaceParameter(name, with: t)
        if name == "weight" { weight = t } else if name == "bias" { bias = t }
    }
}

/// Token (or position) embedding table (V, C).
public final class Embedding: Module {
    public private(set) var weight: Tensor

    public init(_ count: Int, _ dim: Int, std: Float = 0.02, rng: inout RNG) {
        weight = WeightInit.normal([count, dim], std: std, rng: &rng)
        super.init()
        register("weight", weight)
    }

    /// Rows for `ids` laid out as `shape` → (shape…, C).
    public func callAsFunction(_ ids: [Int32], shape: [Int]) -> Tensor {
        Tensor.embedding(weight, ids: ids, shape: shape)
    }

    public override func replaceParameter(_ name: String, with t: Tensor) {
        super.replaceParameter(name, with: t)
        weight = t
    }
}

/// Layer norm over the last axis with weight and optional bias.
public final class LayerNorm: Module {
    public private(set) var weight: Tensor
    public private(set) var bias: Tensor?
    public let eps: Float

    public init(_ dim: Int, eps: Float = 1e-5, bias: Bool = true) {
        self.eps = eps
        weight = Tensor.ones([dim])
        self.bias = bias ? Tensor.zeros([dim]) : nil
        super.init()
        register("weight", weight)
        if let b = self.bias { register("bias", b) }
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { x.layerNorm(weight: weight, bias: bias, eps: eps) }

    public override func replaceParameter(_ name: String, with t: Tensor) {
        super.replaceParameter(name, with: t)
        if name == "weight" { weight = t } else { bias = t }
    }
}

/// RMS norm over the last axis with a weight.
public final class RMSNorm: Module {
    public private(set) var weight: Tensor
    public let eps: Float

    public init(_ dim: Int, eps: Float = 1e-6) {
        self.eps = eps
        weight = Tensor.ones([dim])
        super.init()
        register("weight", weight)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { x.rmsNorm(weight: weight, eps: eps) }

    public override func replaceParameter(_ name: String, with t: Tensor) {
        super.replaceParameter(name, with: t)
        weight = t
    }
}
