// Combining LoRA adapters into a new one, as Hugging Face PEFT's `add_weighted_adapter` does
// (peft/tuners/lora/model.py and peft/utils/merge_utils.py, checked against PEFT 0.21):
// linear, cat, svd, ties, dare_linear, dare_ties, magnitude_prune and the ΔW-level variants
// ties_svd, dare_linear_svd, dare_ties_svd, magnitude_prune_svd. The combined adapter has
// lora_alpha = r, so its scaling is 1 and its ΔW is B·A. The truncated SVD is LAPACK's `sgesdd_`.

import CLAPACK
import Foundation
import TensorCore
import NN
import Models

extension LoRA {
    /// How `combineLoRA` combines the sources (PEFT's `combination_type`). With wᵢ the weights,
    /// sᵢ the sources' scalings, ΔWᵢ = sᵢ·Bᵢ·Aᵢ:
    /// - `linear`: A = Σ sgn(wᵢsᵢ)·√|wᵢsᵢ|·Aᵢ, B = Σ √|wᵢsᵢ|·Bᵢ (equal ranks; ΔW ≠ Σ wᵢΔWᵢ in general).
    /// - `cat`: A = [w₁s₁A₁; w₂s₂A₂; …], B = [B₁ B₂ …], rank Σ rᵢ: ΔW = Σ wᵢΔWᵢ exactly.
    /// - `svd`: ΔW = Σ wᵢΔWᵢ, truncated to `svdRank` by SVD: B = U_r·S_r, A = V_rᵀ.
    /// - `ties`, `dareLinear`, `dareTies`, `magnitudePrune`: like `linear` (on A and on B separately,
    ///   with the same per-side weights) but merging with TIES / DARE / magnitude pruning.
    /// - `tiesSVD`, `dareLinearSVD`, `dareTiesSVD`, `magnitudePruneSVD`: those merges on the ΔWᵢ with
    ///   the weights wᵢ, then the truncated SVD.
    public enum CombinationType: String, CaseIterable, Sendable {
        case linear, cat, svd, ties
        case dareLinear = "dare_linear", dareTies = "dare_ties", magnitudePrune = "magnitude_prune"
        case tiesSVD = "ties_svd", dareLinearSVD = "dare_linear_svd", dareTiesSVD = "dare_ties_svd"
        case magnitudePruneSVD = "magnitude_prune_svd"

        /// The merge applied to the task tensors (A and B, or ΔW).
        var merge: TaskMerge {
            switch self {
            case .linear, .svd, .cat: return .taskArithmetic
            case .ties, .tiesSVD: return .ties
            case .dareLinear, .dareLinearSVD: return .dareLinear
            case .dareTies, .dareTiesSVD: return .dareTies
            case .magnitudePrune, .magnitudePruneSVD: return .magnitudePrune
            }
        }

        var isSVD: Bool { rawValue.hasSuffix("svd") }
        /// Types that combine A and B tensor by tensor and so need equal ranks.
        var needsEqualRanks: Bool { !isSVD && self != .cat }
    }

    /// How TIES elects the sign of each element (PEFT's `majority_sign_method`): the sign of the sum
    /// of the (pruned) task tensors (`total`) or of the sum of their signs (`frequency`).
    public enum MajoritySignMethod: String, Sendable { case total, frequency }
}

/// The merges of merge_utils.py on a list of task tensors tᵢ with weights wᵢ.
enum TaskMerge {
    /// Σ wᵢ tᵢ
    case taskArithmetic
    /// Keep the top-⌊density·n⌋ |tᵢ| of each tensor, elect a sign per element, average the
    /// weighted values of that sign: Σ wᵢ tᵢ [sgn tᵢ = σ] / max(Σ [sgn tᵢ = σ], 1).
    case ties
    /// Keep each element with probability density, rescale by 1/density, then Σ wᵢ tᵢ.
    case dareLinear
    /// DARE's random pruning, then TIES's sign election and disjoint mean.
    case dareTies
    /// Top-⌊density·n⌋ magnitude pruning, then Σ wᵢ tᵢ.
    case magnitudePrune

    var usesRandomPruning: Bool { self == .dareLinear || self == .dareTies }
}

/// One random (DARE) pruning mask to draw: `part` is "A", "B" or "delta" (ΔW for the *_svd types);
/// `adapter` is the index into the list given to `combineLoRA`.
struct PruneDraw {
    let module: String
    let part: String
    let adapter: Int
    let count: Int
}

/// Combines LoRA adapters into a new adapter, as PEFT's
/// `add_weighted_adapter(adapters, weights, name, combination_type, svd_rank, svd_clamp, density,
/// majority_sign_method)`; see `LoRA.CombinationType` for the formulas.
///
/// The sources must be attached to one model (they are left attached, enabled or not as they
/// were). The new adapter, named `name`, is attached to `model` (default: the sources' model) and
/// is enabled, so on the sources' model it runs together with any source still enabled: disable
/// the sources (`isEnabled = false`) to run the combination alone (PEFT's `set_adapter(name)`).
/// Its config is the first source's with `r` = the new rank, `lora_alpha` = r (scaling 1; rsLoRA
/// off — PEFT keeps `use_rslora`, which would scale the result by √r), no rank/alpha patterns, and
/// `target_modules` = the full names of every module some source adapts (PEFT writes the union of
/// the sources' `target_modules` instead); a module that only some sources adapt combines those.
///
/// - Parameters:
///   - weights: one per adapter; negative weights subtract.
///   - method: a single adapter is always combined with `linear` (as PEFT does).
///   - density: the fraction of each task tensor kept, in [0, 1] (1: no pruning); used by the
///     TIES, DARE and magnitude-pruning types. DARE needs density > 0.
///   - svdRank: the rank of the *_svd results (default: the largest source rank).
///   - svdClamp: a quantile q in [0, 1]: U·S and Vᵀ are clamped to ±quantile_q(U·S ∪ Vᵀ). The
///     result then depends on the signs of the singular vectors, which differ between LAPACKs.
///   - majoritySign: how TIES elects each element's sign (ties, dare_ties and their *_svd).
///   - seed: seeds DARE's random masks (the same seed gives the same adapter; each element is
///     kept with probability density, survivors are divided by density).
///   - model: where to attach the new adapter (default: the sources' model); any model with the
///     same module names and shapes, e.g. a clean copy of the base.
/// - Throws: a `PEFTError` naming the problem: unequal ranks for the types that need equal
///   ranks, sources that are not attached or not to one model, DoRA sources, sources that train
///   biases or whole modules, a bad density or rank, or a source's name as `name`.
public func combineLoRA(_ adapters: [LoRA], weights: [Float], method: LoRA.CombinationType, density: Float = 1,
                        svdRank: Int? = nil, svdClamp: Float? = nil, majoritySign: LoRA.MajoritySignMethod = .total,
                        seed: UInt64 = 0, name: String, attachTo model: CausalLM? = nil) throws -> LoRA {
    var rng = RNG(seed: seed)
    return try combineLoRA(adapters, weights: weights, method: method, density: density, svdRank: svdRank, svdClamp: svdClamp,
                           majoritySign: majoritySign, name: name, attachTo: model) { draw in
        (0..<draw.count).map { _ in rng.nextFloat() < density }  // keep with probability density
    }
}

/// `combineLoRA` with DARE's masks drawn by `mask` (true = keep), in this order: modules in model
/// order; A then B (or ΔW); adapters in the order given (those adapting the module). Tests feed
/// PEFT's own torch.bernoulli masks through it.
func combineLoRA(_ adapters: [LoRA], weights: [Float], method requested: LoRA.CombinationType, density: Float,
                 svdRank: Int?, svdClamp: Float?, majoritySign: LoRA.MajoritySignMethod, name: String,
                 attachTo target: CausalLM?, mask: (PruneDraw) -> [Bool]) throws -> LoRA {
    // --- checks
    guard !adapters.isEmpty else { throw PEFTError(message: "combineLoRA: no adapters given") }
    guard weights.count == adapters.count else {
        throw PEFTError(message: "combineLoRA: \(weights.count) weight(s) for \(adapters.count) adapter(s)")
    }
    let method = adapters.count == 1 ? .linear : requested
    for a in adapters {
        guard !a.layers.isEmpty, let m = a.state.model else {
            throw PEFTError(message: "combineLoRA: adapter '\(a.name)' is not attached to a model (or its model was released)")
        }
        guard m === adapters[0].state.model else {
            throw PEFTError(message: "combineLoRA: adapters '\(adapters[0].name)' and '\(a.name)' are attached to different models")
        }
        guard !a.config.useDora else { throw PEFTError(message: "combineLoRA: adapter '\(a.name)' is a DoRA adapter; only LoRA adapters can be combined") }
        guard a.extraTrainable.isEmpty else {
            throw PEFTError(message: "combineLoRA: adapter '\(a.name)' also trains biases or modules_to_save, which cannot be combined")
        }
        guard a.name != name else { throw PEFTError(message: "combineLoRA: the new adapter's name '\(name)' is a source's name") }
    }
    guard density >= 0 && density <= 1 else { throw PEFTError(message: "combineLoRA: density must be in [0, 1], got \(density)") }
    if method.merge.usesRandomPruning && density == 0 {
        throw PEFTError(message: "combineLoRA: \(method.rawValue) rescales by 1/density and needs density > 0")
    }
    if let c = svdClamp, !(c >= 0 && c <= 1) { throw PEFTError(message: "combineLoRA: svdClamp must be in [0, 1], got \(c)") }
    guard let model = target ?? adapters[0].state.model else { throw PEFTError(message: "combineLoRA: no model") }

    // --- the new rank (PEFT: a source's rank is max(r, rank_pattern values))
    let ranks = adapters.map { a in ([a.config.r] + a.config.rankPattern.values).max()! }
    let newRank: Int
    if method.needsEqualRanks {
        guard Set(ranks).count == 1 else {
            let list = zip(adapters, ranks).map { "'\($0.name)' r=\($1)" }.joined(separator: ", ")
            throw PEFTError(message: "combineLoRA: \(method.rawValue) needs adapters of equal rank, got \(list); use cat or svd for unequal ranks")
        }
        newRank = ranks[0]
    } else if method == .cat {
        newRank = ranks.reduce(0, +)
    } else {
        newRank = svdRank ?? ranks.max()!
        guard newRank > 0 else { throw PEFTError(message: "combineLoRA: svdRank must be positive, got \(newRank)") }
    }

    // --- the new adapter, on every module some source adapts
    var modules: [String] = []
    for a in adapters { for (m, _, _) in a.layers where !modules.contains(m) { modules.append(m) } }
    var config = adapters[0].config
    config.r = newRank
    config.loraAlpha = Float(newRank)
    config.useRslora = false
    config.rankPattern = [:]
    config.alphaPattern = [:]
    config.targetModules = .names(modules)
    config.excludeModules = nil
    config.layersToTransform = nil
    config.bias = "none"
    config.modulesToSave = nil
    let combined = try LoRA(config: config, name: name)
    combined.checksRank = false  // cat may sum ranks past min(in, out), as PEFT allows
    let attached = try combined.attach(to: model)
    guard Set(attached) == Set(modules) else {
        combined.detach(from: model)
        throw PEFTError(message: "combineLoRA: the model adapts \(attached) for the sources' modules \(modules)")
    }

    // --- per module: the sources adapting it (in the order given), combined; on an error the new
    // adapter comes off the model again (the caller never gets it to detach)
    let magK = TaskMergeContext.pythonFloat(density)
    do {
    for (module, linear, layer) in combined.layers {
        let sources: [(a: LoRALayer, w: Float, index: Int)] = adapters.enumerated().compactMap { i, a in
            a.layers.first { $0.module == module }.map { ($0.lora, weights[i], i) }
        }
        let (outF, inF) = (linear.outFeatures, linear.inFeatures)
        for s in sources where s.a.a.shape[1] != inF || s.a.b.shape[0] != outF {
            throw PEFTError(message: "combineLoRA: '\(module)' is (\(outF), \(inF)) in the model but (\(s.a.b.shape[0]), \(s.a.a.shape[1])) in adapter '\(adapters[s.index].name)'")
        }
        let ctx = TaskMergeContext(merge: method.merge, density: density, densityAsDouble: magK, majority: majoritySign)
        var newA = [Float](repeating: 0, count: newRank * inF)  // (r, in)
        var newB = [Float](repeating: 0, count: outF * newRank)  // (out, r)
        switch method {
        case .cat:
            // A rows: wᵢsᵢAᵢ stacked; B columns: Bᵢ side by side; zero rows/columns pad up to r.
            var row = 0
            for s in sources {
                let r = s.a.rank, a = s.a.a.toArray(), b = s.a.b.toArray(), f = s.w * s.a.scale
                for i in 0..<(r * inF) { newA[row * inF + i] = a[i] * f }
                for o in 0..<outF { for j in 0..<r { newB[o * newRank + row + j] = b[o * r + j] } }
                row += r
            }
        case _ where method.isSVD:
            // ΔW = merge(ΔWᵢ = sᵢBᵢAᵢ; wᵢ), then B = U_r S_r, A = V_rᵀ.
            let deltas = sources.map { s in withNoGrad { LoRALayer.delta(s.a.a.detached(), s.a.b.detached(), s.a.scale) }.toArray() }
            let delta = ctx.apply(deltas, weights: sources.map(\.w)) { i in
                mask(PruneDraw(module: module, part: "delta", adapter: sources[i].index, count: outF * inF))
            }
            (newA, newB) = try truncatedSVD(delta, rows: outF, cols: inF, rank: newRank, clamp: svdClamp, module: module)
        default:
            // A and B separately with weights sgn(wᵢsᵢ)·√|wᵢsᵢ| (A) and √|wᵢsᵢ| (B).
            for s in sources where s.a.rank != newRank {
                throw PEFTError(message: "combineLoRA: \(method.rawValue) needs equal ranks, but '\(module)' has rank \(s.a.rank) in adapter '\(adapters[s.index].name)' (not \(newRank))")
            }
            let ws = sources.map { Double($0.w) * Double($0.a.scale) }
            let wA = ws.map { Float($0 < 0 ? -abs($0).squareRoot() : $0.squareRoot()) }
            let wB = ws.map { Float(abs($0).squareRoot()) }
            newA = ctx.apply(sources.map { $0.a.a.toArray() }, weights: wA) { i in
                mask(PruneDraw(module: module, part: "A", adapter: sources[i].index, count: newRank * inF))
            }
            newB = ctx.apply(sources.map { $0.a.b.toArray() }, weights: wB) { i in
                mask(PruneDraw(module: module, part: "B", adapter: sources[i].index, count: outF * newRank))
            }
        }
        layer.a.assign(Tensor(shape: [newRank, inF], data: newA))
        layer.b.assign(Tensor(shape: [outF, newRank], data: newB))
    }
    } catch {
        combined.detach(from: model)
        throw error
    }
    return combined
}

/// merge_utils.py's pruning and merges on flat task tensors.
struct TaskMergeContext {
    let merge: TaskMerge
    let density: Float
    /// `density` as the Python float with the same decimal digits (for ⌊density·n⌋).
    let densityAsDouble: Double
    let majority: LoRA.MajoritySignMethod

    /// The Double whose shortest decimal is that of `x`: PEFT computes k = int(density * n) with the
    /// Python float the user typed (0.7 · 10 = 7.000000000000001 → 7, where Double(Float(0.7)) · 10 → 6).
    static func pythonFloat(_ x: Float) -> Double { Double("\(x)") ?? Double(x) }

    /// Merges tensors tᵢ (same size) with weights wᵢ; `drawMask(i)` gives DARE's keep-mask for tᵢ.
    func apply(_ tensors: [[Float]], weights: [Float], drawMask: (Int) -> [Bool]) -> [Float] {
        let n = tensors[0].count
        // Pruning (density ≥ 1: none, and no masks drawn, as in PEFT's `prune`).
        var pruned = tensors
        if density < 1 {
            switch merge {
            case .ties, .magnitudePrune:
                pruned = tensors.map { TaskMergeContext.magnitudePrune($0, keep: Int(densityAsDouble * Double(n))) }
            case .dareLinear, .dareTies:
                pruned = tensors.indices.map { i in
                    let m = drawMask(i)
                    check(m.count == n, "[combineLoRA] a mask of \(m.count) values for \(n)")
                    return (0..<n).map { m[$0] ? tensors[i][$0] / density : 0 }
                }
            case .taskArithmetic: break
            }
        }
        var out = [Float](repeating: 0, count: n)
        switch merge {
        case .taskArithmetic, .dareLinear, .magnitudePrune:
            for (t, w) in zip(pruned, weights) { for e in 0..<n { out[e] += t[e] * w } }
        case .ties, .dareTies:
            // Sign election on the pruned, unweighted tensors; disjoint mean of the weighted ones.
            for e in 0..<n {
                var magnitude: Float = 0
                for t in pruned { magnitude += majority == .total ? t[e] : TaskMergeContext.sign(t[e]) }
                let elected: Float = magnitude >= 0 ? 1 : -1
                var sum: Float = 0, kept: Float = 0
                for (t, w) in zip(pruned, weights) where TaskMergeContext.sign(t[e]) == elected {
                    sum += t[e] * w
                    kept += 1
                }
                out[e] = sum / max(kept, 1)
            }
        }
        return out
    }

    static func sign(_ x: Float) -> Float { x > 0 ? 1 : (x < 0 ? -1 : 0) }

    /// Keeps the `keep` largest |x| (ties by position), zeroes the rest.
    static func magnitudePrune(_ x: [Float], keep: Int) -> [Float] {
        guard keep < x.count else { return x }
        var out = [Float](repeating: 0, count: x.count)
        guard keep > 0 else { return out }
        let order = x.indices.sorted { abs(x[$0]) > abs(x[$1]) || (abs(x[$0]) == abs(x[$1]) && $0 < $1) }
        for i in order.prefix(keep) { out[i] = x[i] }
        return out
    }
}

/// The rank-`rank` truncated SVD of the row-major (rows, cols) matrix `m` = U S Vᵀ as LoRA factors:
/// A = V_rᵀ (rank, cols) and B = U_r S_r (rows, rank), zero-padded where rank > min(rows, cols);
/// with `clamp` q, both are clamped to ±(the q-quantile of B's and A's values, linear interpolation
/// as torch.quantile).
///
/// LAPACK is column-major: the buffer of m is the (cols, rows) matrix mᵀ = V S Uᵀ, so `sgesdd_`'s
/// U is our V (its columns are A's rows, contiguous) and its Vᵀ is our Uᵀ (B[o][j] = Vᵀ[j + o·k] s_j).
func truncatedSVD(_ m: [Float], rows: Int, cols: Int, rank: Int, clamp: Float? = nil,
                  module: String = "") throws -> (a: [Float], b: [Float]) {
    var work1 = m
    var (lm, ln) = (Int32(cols), Int32(rows))  // LAPACK's m × n: mᵀ
    let k = min(cols, rows)
    var lda = lm, ldu = lm, ldvt = Int32(k)
    var s = [Float](repeating: 0, count: k)
    var u = [Float](repeating: 0, count: cols * k)  // (cols, k) column-major
    var vt = [Float](repeating: 0, count: k * rows)  // (k, rows) column-major
    var iwork = [Int32](repeating: 0, count: 8 * k)
    var info: Int32 = 0
    var lwork: Int32 = -1
    var query: Float = 0
    var jobz = CChar(UInt8(ascii: "S"))
    sgesdd_(&jobz, &lm, &ln, &work1, &lda, &s, &u, &ldu, &vt, &ldvt, &query, &lwork, &iwork, &info, 1)
    guard info == 0 else { throw PEFTError(message: "combineLoRA: LAPACK sgesdd workspace query failed (info \(info)) for '\(module)'") }
    lwork = Int32(query.rounded(.up)) + 1
    var work = [Float](repeating: 0, count: Int(lwork))
    sgesdd_(&jobz, &lm, &ln, &work1, &lda, &s, &u, &ldu, &vt, &ldvt, &work, &lwork, &iwork, &info, 1)
    guard info == 0 else { throw PEFTError(message: "combineLoRA: LAPACK sgesdd failed (info \(info)) on ΔW of '\(module)'") }

    let r = min(rank, k)
    var a = [Float](repeating: 0, count: rank * cols)
    var b = [Float](repeating: 0, count: rows * rank)
    for j in 0..<r {
        for i in 0..<cols { a[j * cols + i] = u[j * cols + i] }
        for o in 0..<rows { b[o * rank + j] = vt[j + o * k] * s[j] }
    }
    if let q = clamp { clampSVDFactors(a: &a, b: &b, rows: rows, cols: cols, rank: rank, used: r, quantile: q) }
    return (a, b)
}

/// PEFT's `svd_clamp`: with B = U_r·S_r (rows, rank) and A = V_rᵀ (rank, cols) of which the first
/// `used` pairs are filled, t = torch.quantile(cat(B.flatten(), A.flatten()), q) (linear
/// interpolation between order statistics, over the unpadded values), then both are clamped to
/// [−t, t] (torch.clamp: where −t > t, everything becomes t).
func clampSVDFactors(a: inout [Float], b: inout [Float], rows: Int, cols: Int, rank: Int, used r: Int, quantile q: Float) {
    var dist: [Float] = []
    for o in 0..<rows { dist += b[(o * rank)..<(o * rank + r)] }
    dist += a[0..<(r * cols)]
    dist.sort()
    let pos = Double(q) * Double(dist.count - 1)
    let lo = Int(pos.rounded(.down)), hi = min(lo + 1, dist.count - 1)
    let top = dist[lo] + (dist[hi] - dist[lo]) * Float(pos - Double(lo))
    func clamped(_ x: Float) -> Float { min(max(x, -top), top) }
    a = a.map(clamped)
    b = b.map(clamped)
}
