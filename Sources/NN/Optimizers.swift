// Optimizers over a list of named parameters: AdamW (decoupled weight decay) and SGD with
// momentum, fused loops over raw buffers; global-norm gradient clipping. Only parameters that
// require gradients are given to an optimizer, so frozen weights never get optimizer state. Two
// parameter groups: weight decay applies to matrices, never to vectors (norm weights, biases,
// DoRA magnitudes), as in GPT-2/LLaMA training and Hugging Face's Trainer.

import Foundation
import TensorCore

/// A first-order optimizer whose state can be saved and restored.
public protocol Optimizer: AnyObject {
    /// The parameters it updates, by name.
    var parameters: [(String, Tensor)] { get }
    /// Steps taken so far.
    var stepCount: Int { get }
    /// Applies one update with learning rate `lr` from the parameters' current gradients
    /// (parameters without a gradient are left alone).
    func step(lr: Float)
    /// Named state tensors (moments) for checkpoints.
    func stateTensors() -> [(String, Tensor)]
    /// Restores state saved by `stateTensors` (read one tensor at a time) and the step count.
    func loadState(_ tensors: TensorReader, stepCount: Int) throws
}

extension Optimizer {
    /// Clears every parameter's gradient.
    public func zeroGrad() { for (_, p) in parameters { p.zeroGrad() } }
}

/// Whether weight decay applies to `p`: matrices (rank ≥ 2) yes; vectors (norms, biases) no.
public func decays(_ p: Tensor) -> Bool { p.rank >= 2 }

/// Adam with decoupled weight decay (Loshchilov & Hutter), the decay on matrices only (`decays`):
/// m ← β1 m + (1−β1) g; v ← β2 v + (1−β2) g²; p ← p − lr · (m̂ / (√v̂ + ε) + λ p).
/// The betas are Doubles, as in PyTorch: 1 − β and the bias corrections 1 − βᵗ lose digits to
/// cancellation when computed from a float β (1 − Float(0.999) is 1.3e-5 off 0.001).
public final class AdamW: Optimizer {
    public let parameters: [(String, Tensor)]
    public var beta1: Double, beta2: Double
    public var eps: Float, weightDecay: Float
    public private(set) var stepCount = 0
    var m: [Tensor], v: [Tensor]

    public init(_ parameters: [(String, Tensor)], beta1: Double = 0.9, beta2: Double = 0.999, eps: Float = 1e-8,
                weightDecay: Float = 0.01) {
        self.parameters = parameters
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weightDecay = weightDecay
        m = parameters.map { Tensor.zeros($0.1.shape) }
        v = parameters.map { Tensor.zeros($0.1.shape) }
    }

    public func step(lr: Float) {
        // A step in which no parameter has a gradient (every target ignored) changes nothing and does
        // not count, as in PyTorch. (PyTorch also counts steps per parameter; here one count serves
        // all, so a parameter without a gradient in a step others update still advances it.)
        guard parameters.contains(where: { $0.1.grad != nil }) else { return }
        stepCount += 1
        let c1 = Float(1 / (1 - Foundation.pow(beta1, Double(stepCount))))
        let c2 = Float(1 / (1 - Foundation.pow(beta2, Double(stepCount))))
        let (b1, b2, e) = (Float(beta1), Float(beta2), eps)
        let (ob1, ob2) = (Float(1 - beta1), Float(1 - beta2))
        for (i, (name, p)) in parameters.enumerated() {
            guard let g = p.grad else { continue }
            let decay = decays(p) ? lr * weightDecay : 0
            check(p.isContiguous, "[AdamW] parameter \(name) is not contiguous")
            let pp = p.basePointer, pg = UnsafePointer(g.basePointer), pm = m[i].basePointer, pv = v[i].basePointer
            parallelFor(p.count) { lo, hi in
                // 8 lanes at a time, the same arithmetic as the scalar tail (the compiler keeps that
                // loop scalar: the pointers may alias, and sqrt keeps a libm call for errno).
                var j = lo
                while j + 8 <= hi {
                    let gj = load8(pg + j)
                    let mj = b1 * load8(pm + j) + ob1 * gj
                    let vj = b2 * load8(pv + j) + ob2 * gj * gj
                    let pj = load8(pp + j)
                    store8(mj, pm + j)
                    store8(vj, pv + j)
                    store8(pj - (lr * (mj * c1) / ((vj * c2).squareRoot() + e) + decay * pj), pp + j)
                    j += 8
                }
                for j in j..<hi {
                    let gj = pg[j]
                    pm[j] = b1 * pm[j] + ob1 * gj
                    pv[j] = b2 * pv[j] + ob2 * gj * gj
                    pp[j] -= lr * (pm[j] * c1) / ((pv[j] * c2).squareRoot() + e) + decay * pp[j]
                }
            }
        }
    }

    public func stateTensors() -> [(String, Tensor)] {
        parameters.indices.flatMap { i in [("exp_avg/" + parameters[i].0, m[i]), ("exp_avg_sq/" + parameters[i].0, v[i])] }
    }

    public func loadState(_ tensors: TensorReader, stepCount: Int) throws {
        for (i, (name, p)) in parameters.enumerated() {
            for (key, dst) in [("exp_avg/" + name, m[i]), ("exp_avg_sq/" + name, v[i])] {
                guard tensors.shapes[key] == p.shape else {
                    throw WeightLoadError(message: "optimizer state '\(key)' is missing or has shape \(tensors.shapes[key] ?? []), expected \(p.shape)")
                }
                dst.assign(try tensors.read(key))
            }
        }
        self.stepCount = stepCount
    }
}

/// SGD with momentum: b ← μ b + g (+ λ p, matrices only); p ← p − lr · b.
public final class SGD: Optimizer {
    public let parameters: [(String, Tensor)]
    public var momentum: Float, weightDecay: Float
    public private(set) var stepCount = 0
    var buffers: [Tensor]

    public init(_ parameters: [(String, Tensor)], momentum: Float = 0.9, weightDecay: Float = 0) {
        self.parameters = parameters
        self.momentum = momentum
        self.weightDecay = weightDecay
        buffers = parameters.map { Tensor.zeros($0.1.shape) }
    }

    public func step(lr: Float) {
        stepCount += 1
        let mu = momentum
        for (i, (_, p)) in parameters.enumerated() {
            guard let g = p.grad else { continue }
            let wd = decays(p) ? weightDecay : 0
            let pp = p.basePointer, pg = UnsafePointer(g.basePointer), pb = buffers[i].basePointer
            parallelFor(p.count) { lo, hi in
                for j in lo..<hi {
                    pb[j] = mu * pb[j] + pg[j] + wd * pp[j]
                    pp[j] -= lr * pb[j]
                }
            }
        }
    }

    public func stateTensors() -> [(String, Tensor)] {
        parameters.indices.map { ("momentum_buffer/" + parameters[$0].0, buffers[$0]) }
    }

    public func loadState(_ tensors: TensorReader, stepCount: Int) throws {
        for (i, (name, p)) in parameters.enumerated() {
            guard tensors.shapes["momentum_buffer/" + name] == p.shape else {
                throw WeightLoadError(message: "optimizer state 'momentum_buffer/\(name)' is missing or has the wrong shape, expected \(p.shape)")
            }
            buffers[i].assign(try tensors.read("momentum_buffer/" + name))
        }
        self.stepCount = stepCount
    }
}

/// Eight floats from p (unaligned).
@inline(__always)
private func load8(_ p: UnsafePointer<Float>) -> SIMD8<Float> { UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self) }

/// Eight floats to p (unaligned).
@inline(__always)
private func store8(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>) { UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self) }

/// The global L2 norm of the gradients of `parameters` (on every thread; the same value on any
/// number of threads).
public func gradientNorm(_ parameters: [(String, Tensor)]) -> Float {
    var total = 0.0
    for (_, p) in parameters {
        guard let g = p.grad else { continue }
        total += sumOfSquares(g.basePointer, g.count)
    }
    return Float(total.squareRoot())
}

/// Scales all gradients so their global norm is at most `maxNorm`; returns the norm before.
@discardableResult
public func clipGradientNorm(_ parameters: [(String, Tensor)], maxNorm: Float, norm known: Float? = nil) -> Float {
    let norm = known ?? gradientNorm(parameters)  // pass a norm already computed to save a pass
    if norm > maxNorm && norm.isFinite {
        let s = maxNorm / (norm + 1e-6)
        for (_, p) in parameters {
            guard let g = p.grad else { continue }
            let pg = g.basePointer
            parallelFor(g.count) { lo, hi in
                for j in lo..<hi { pg[j] *= s }
            }
        }
    }
    return norm
}
