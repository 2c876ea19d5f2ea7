// LoRA (Hu et al.) and DoRA (Liu et al., `use_dora`): y = W x + b + s · B A dropout(x), with
// A (r, in), B (out, r), s = lora_alpha / r (rsLoRA: / √r). DoRA rescales each output row:
// y = m / ‖W + s B A‖_row · (W x + s B A x) + b, the norm treated as a constant (as in PEFT).
// Merge folds the update into W (keeping the original for an exact unmerge).

import Foundation
import TensorCore
import NN
import Models

/// `init_lora_weights`: true (A Kaiming-uniform, B zero), "gaussian" (A ~ N(0, 1/r²)·…, B zero),
/// or false (both random: the model does not start unchanged; for tests).
public enum LoRAInit: Codable, Equatable, Sendable {
    case standard, gaussian, random

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let b = try? c.decode(Bool.self) { self = b ? .standard : .random; return }
        let s = try c.decode(String.self)
        guard s == "gaussian" else {
            throw DecodingError.dataCorruptedError(in: c, debugDescription: "init_lora_weights must be true, false or \"gaussian\", got \"\(s)\"")
        }
        self = .gaussian
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .standard: try c.encode(true)
        case .random: try c.encode(false)
        case .gaussian: try c.encode("gaussian")
        }
    }
}

/// LoRA configuration with Hugging Face PEFT's field names (`adapter_config.json`).
public struct LoRAConfig: PEFTConfig, Equatable {
    public var peftType = "LORA"
    public var taskType = "CAUSAL_LM"
    public var baseModelNameOrPath: String?
    public var inferenceMode = false
    public var r = 8
    public var loraAlpha: Float = 8
    public var loraDropout: Float = 0
    public var targetModules: ModuleSelector = .names(["q_proj", "v_proj"])
    public var excludeModules: ModuleSelector?
    public var layersToTransform: [Int]?
    /// "none", "all" (every bias in the model trains) or "lora_only" (biases of adapted layers).
    public var bias = "none"
    public var useRslora = false
    public var useDora = false
    /// Set automatically for GPT-2's Conv1D layers; recorded for PEFT.
    public var fanInFanOut = false
    /// Whole modules trained and saved with the adapter (e.g. "lm_head").
    public var modulesToSave: [String]?
    public var initLoraWeights: LoRAInit = .standard
    /// Per-module rank / alpha overrides: key is a regex matched against the end of the name.
    public var rankPattern: [String: Int] = [:]
    public var alphaPattern: [String: Float] = [:]

    public init() {}

    public init(r: Int = 8, loraAlpha: Float = 8, targetModules: ModuleSelector = .names(["q_proj", "v_proj"])) {
        self.r = r
        self.loraAlpha = loraAlpha
        self.targetModules = targetModules
    }

    enum CodingKeys: String, CodingKey {
        case peftType = "peft_type", taskType = "task_type", baseModelNameOrPath = "base_model_name_or_path"
        case inferenceMode = "inference_mode", r, loraAlpha = "lora_alpha", loraDropout = "lora_dropout"
        case targetModules = "target_modules", excludeModules = "exclude_modules", layersToTransform = "layers_to_transform"
        case bias, useRslora = "use_rslora", useDora = "use_dora", fanInFanOut = "fan_in_fan_out"
        case modulesToSave = "modules_to_save", initLoraWeights = "init_lora_weights"
        case rankPattern = "rank_pattern", alphaPattern = "alpha_pattern"
    }

    /// `layers_to_transform` may be one index (PEFT accepts an int or a list).
    public static func normalize(_ fields: inout [String: Any]) {
        if let one = fields["layers_to_transform"] as? Int { fields["layers_to_transform"] = [one] }
    }

    /// The largest rank accepted from a config: checked before any A (r, in) is allocated (a config
    /// with r = 10^12 used to try).
    public static let maxRank = 1 << 16

    /// Checks the values; the message names the field.
    public func validate() throws {
        guard r > 0 && r <= Self.maxRank else { throw PEFTError(message: "LoRA: r must be in 1…\(Self.maxRank), got \(r)") }
        guard loraDropout >= 0 && loraDropout < 1 else { throw PEFTError(message: "LoRA: lora_dropout \(loraDropout) must be in [0, 1)") }
        guard ["none", "all", "lora_only"].contains(bias) else {
            throw PEFTError(message: "LoRA: bias must be \"none\", \"all\" or \"lora_only\", got \"\(bias)\"")
        }
        for (k, v) in rankPattern where v <= 0 || v > Self.maxRank {
            throw PEFTError(message: "LoRA: rank_pattern[\"\(k)\"] must be in 1…\(Self.maxRank), got \(v)")
        }
        guard loraAlpha.isFinite else { throw PEFTError(message: "LoRA: lora_alpha must be a finite number, got \(loraAlpha)") }
        for (k, v) in alphaPattern where !v.isFinite {
            throw PEFTError(message: "LoRA: alpha_pattern[\"\(k)\"] must be a finite number, got \(v)")
        }
    }

    /// Whether a pattern key applies to `module` (PEFT: the name matches "(.*\.)?(key)" whole).
    static func patternKey(_ key: String, matches module: String) -> Bool {
        ModuleSelector.regex("(.*\\.)?(" + key + ")").matches(module)
    }

    /// The value of a pattern dictionary for `module`, else nil.
    /// When several keys match with different values, the longest key wins for an adapter being
    /// restored (as SwiftPEFT always chose, so its saved adapters load as trained; PEFT folders
    /// are resolved in their file's order on import, `firstKeyResolved`).
    /// - Throws: for a new adapter (`refusingConflicts`), when keys that match `module` give
    ///   different values: PEFT takes the first such key in its file, an order a JSON object does
    ///   not keep, so any choice would be a guess.
    static func pattern<V: Equatable>(_ patterns: [String: V], for module: String, field: String, refusingConflicts: Bool) throws -> V? {
        let keys = patterns.keys.sorted { ($0.count, $0) > ($1.count, $1) }.filter { patternKey($0, matches: module) }
        guard let first = keys.first, let value = patterns[first] else { return nil }
        if refusingConflicts, let other = keys.first(where: { patterns[$0] != value }) {
            throw PEFTError(message: """
                LoRA: \(field) keys "\(first)" and "\(other)" both match \(module) with different values (\(value) and \(patterns[other]!)); \
                PEFT takes whichever its file lists first, an order a JSON object does not keep.
                HINT: use keys that match each module once.
                """)
        }
        return value
    }

    /// A PEFT `rank_pattern` or `alpha_pattern` read as PEFT reads it, the first key in `order` (the
    /// file's) that matches a module giving its value, rewritten as one exact key per module of
    /// `modules` that a key matches. nil when no module is matched by keys with different values:
    /// then any order gives the same values and the object is kept as written.
    static func firstKeyResolved(_ patterns: [String: Any], order: [String], modules: [String]) -> [String: Any]? {
        let order = order.filter { patterns[$0] != nil }
        func same(_ a: Any, _ b: Any) -> Bool { (a as? NSNumber).map { $0.isEqual(b) } ?? false }
        var exact: [String: Any] = [:], conflict = false
        for module in modules {
            let keys = order.filter { patternKey($0, matches: module) }
            guard let first = keys.first, let value = patterns[first] else { continue }
            if keys.contains(where: { !same(patterns[$0]!, value) }) { conflict = true }
            exact[NSRegularExpression.escapedPattern(for: module)] = value
        }
        return conflict ? exact : nil
    }
}

/// The LoRA (or DoRA) branch on one Linear layer.
public final class LoRALayer: FoldableLinearHook, LowRankHook {
    public let module: String
    /// (r, in)
    public let a: Tensor
    /// (out, r)
    public let b: Tensor
    /// DoRA magnitude m (out).
    public let magnitude: Tensor?
    public let scale: Float
    public let rank: Int
    let owner: LoRAState
    /// The weight before merging, restored by unmerge.
    var premerge: Tensor?

    init(module: String, layer: Linear, rank: Int, alpha: Float, owner: LoRAState, rng: inout RNG) {
        self.module = module
        self.rank = rank
        self.owner = owner
        let c = owner.config
        scale = c.useRslora ? alpha / Float(rank).squareRoot() : alpha / Float(rank)
        let (inF, outF) = (layer.inFeatures, layer.outFeatures)
        switch c.initLoraWeights {
        case .standard, .random:
            // Kaiming-uniform with a = √5: bound = 1/√fan_in.
            let bound = 1 / Float(inF).squareRoot()
            a = Tensor.uniform([rank, inF], low: -bound, high: bound, rng: &rng)
        case .gaussian:
            a = Tensor.normal([rank, inF], std: 1 / Float(rank), rng: &rng)
        }
        if c.initLoraWeights == .random {
            let bound = 1 / Float(rank).squareRoot()
            b = Tensor.uniform([outF, rank], low: -bound, high: bound, rng: &rng)
        } else {
            b = Tensor.zeros([outF, rank])
        }
        if c.useDora {
            // m = ‖W + s B A‖ per output row, i.e. the model starts unchanged.
            let (a0, b0, s0) = (a, b, scale)
            let m = withNoGrad { LoRALayer.rowNorm(layer.weightOutIn, delta: LoRALayer.delta(a0, b0, s0)) }
            m.requiresGrad = true
            magnitude = m
        } else {
            magnitude = nil
        }
        a.requiresGrad = true
        b.requiresGrad = true
    }

    /// s · B A as (out, in).
    static func delta(_ a: Tensor, _ b: Tensor, _ s: Float) -> Tensor { b.matmul(a) * s }

    /// ‖W + Δ‖ over the input axis: (out).
    static func rowNorm(_ w: Tensor, delta: Tensor) -> Tensor { (w + delta).pow(2).sum(axes: [1]).sqrt() }

    public var rows: Range<Int>? { owner.rows }

    /// A, B and the scale while the branch is plain LoRA now (no DoRA, no active dropout), so that
    /// layers sharing an input run their x Aᵀ together; nil when disabled or merged too (`output`
    /// then passes y through).
    public var lowRankFactors: (a: Tensor, b: Tensor, scale: Float)? {
        guard owner.isEnabled && premerge == nil && magnitude == nil,
              owner.config.loraDropout == 0 || !owner.training else { return nil }
        return (a, b, scale)
    }

    public func output(_ y: Tensor, input x: Tensor, layer: Linear) -> Tensor {
        guard owner.isEnabled && premerge == nil else { return y }
        var xd = x
        if owner.config.loraDropout > 0, owner.training, let model = owner.model {
            xd = x.dropout(owner.config.loraDropout, rng: &model.random.value)  // the model's generator, seeded per step and rank
        }
        // LoRA: one fused op adds s · B A x into a copy of y (no (…, out) update tensor is stored).
        guard let m = magnitude else { return Tensor.lowRankUpdate(y, x: xd, a: a, b: b, scale: scale) }
        // Scale the (…, r) intermediate, not the (…, out) result: r ≪ out.
        let update = (xd.matmul(a.transposed()) * scale).matmul(b.transposed())  // (…, r) → (…, out)
        // DoRA: the row norm is a constant (no gradient), m is trained.
        let norm = owner.doraDetachNorm
            ? withNoGrad { LoRALayer.rowNorm(layer.weightOutIn.detached(), delta: LoRALayer.delta(a.detached(), b.detached(), scale)) }
            : LoRALayer.rowNorm(layer.weightOutIn.detached(), delta: LoRALayer.delta(a, b, scale))
        let magScale = m / norm  // (out)
        // W x without the bias; as PEFT, W·dropout(x) while dropout is active (one more product). The
        // bias is subtracted with its gradient, so a trained bias (bias "all" or "lora_only") gets
        // ∂out/∂b = 1, as in PEFT, not m / ‖W + ΔW‖.
        let base = xd !== x ? xd.matmul(layer.weightOutIn.transposed()) : layer.bias.map { y - $0 } ?? y  // (…, out)
        return y + (magScale - 1) * base + magScale * update
    }

    /// The merged weight in the layer's storage layout.
    func mergedWeight(_ layer: Linear) -> Tensor {
        withNoGrad {
            let w = layer.weightOutIn.detached()  // (out, in)
            let d = LoRALayer.delta(a.detached(), b.detached(), scale)
            var merged = w + d
            if let m = magnitude {
                merged = merged * (m.detached() / LoRALayer.rowNorm(w, delta: d)).reshaped([-1, 1])
            }
            return layer.fanInFanOut ? merged.transposed().contiguous() : merged  // storage is (in, out) for Conv1D
        }
    }

    public var isMerged: Bool { premerge != nil }

    /// W ← W + s B A (DoRA: rescaled rows), keeping W for an exact unmerge.
    public func merge(into linear: Linear) {
        let merged = mergedWeight(linear)
        premerge = linear.weight.copy()
        linear.weight.assign(merged)
    }

    public func unmerge(from linear: Linear) {
        guard let w = premerge else { return }
        linear.weight.assign(w)
        premerge = nil
    }
}

/// What an adapter's layers share with it (held by both, so hooks never outlive it).
final class LoRAState {
    let config: LoRAConfig
    var isEnabled = true
    var rows: Range<Int>?
    /// DoRA's row norm carries no gradient (PEFT and the DoRA paper, §4.3). Off only in the
    /// gradient check, which needs the exact derivative of the forward function.
    var doraDetachNorm = true
    var rng: RNG
    weak var model: CausalLM?
    var training: Bool { model?.isTraining ?? false }
    init(config: LoRAConfig, seed: UInt64) {
        self.config = config
        rng = RNG(seed: seed)
    }
}

/// A LoRA (or DoRA) adapter.
public final class LoRA: LinearHookMethod<LoRALayer>, MergeablePEFTMethod, RowScopedPEFTMethod {
    public static let peftType = "LORA"

    /// LoRA as the registry, the CLI and the PEFT folder code see it.
    public static let registration = MethodDescription(
        LoRA.self, config: LoRAConfig.self, names: [("lora", [:]), ("dora", ["use_dora": true])],
        summary: "LoRA: y = W x + (alpha / r) B A x on the target Linear layers; dora: DoRA (magnitude and direction)",
        options: [
            MethodOption("r", field: "r", .int, help: "LoRA rank"),
            MethodOption("alpha", field: "lora_alpha", .float, help: "LoRA alpha (the update is scaled by alpha / r)"),
            MethodOption("lora-dropout", field: "lora_dropout", .float, help: "dropout on the LoRA branch's input"),
            MethodOption("target-modules", field: "target_modules", .list,
                         help: "comma-separated module names (suffixes), e.g. q_proj,v_proj; default per family: LLaMA q_proj,v_proj, GPT-2 c_attn"),
            MethodOption("use-rslora", field: "use_rslora", .bool, help: "rsLoRA: scale by alpha / √r"),
            MethodOption("use-dora", field: "use_dora", .bool, help: "DoRA: train a magnitude per output row too"),
        ],
        modelDefaults: { ["target_modules": defaultTargets[$0.family]!] },
        peftFolder: PEFTFolderMapping(prepareImport: { config, context in
            // Options this library does not implement: refuse rather than load something else.
            func refuse(_ key: String, if bad: (Any) -> Bool, _ why: String) throws {
                if let v = config[key], !(v is NSNull), bad(v) { throw PEFTError(message: "\(key) \(v) is not supported: \(why)") }
            }
            try refuse("lora_bias", if: { ($0 as? Bool) == true }, "LoRA-B biases are not implemented")
            try refuse("use_qalora", if: { ($0 as? Bool) == true }, "QA-LoRA is not implemented")
            try refuse("layer_replication", if: { _ in true }, "layer replication is not implemented")
            try refuse("target_parameters", if: { (($0 as? [Any]) ?? [0]).isEmpty == false }, "LoRA on parameters is not implemented")
            try refuse("alora_invocation_tokens", if: { _ in true }, "activated LoRA (aLoRA) is not implemented")
            try refuse("arrow_config", if: { _ in true }, "Arrow routing is not implemented")
            // PiSSA, OLoRA, CorDA, LoftQ and LoRA-GA rewrite the base weights when PEFT builds the
            // adapter (into a residual only their own initialization computes): the tensors fit that
            // residual, not the base. Gaussian, EVA and orthogonal only choose the first values; the
            // saved ones follow.
            if let s = config["init_lora_weights"] as? String {
                if ["pissa", "olora", "corda", "loftq", "lora_ga"].contains(where: { s.lowercased().hasPrefix($0) }) {
                    throw PEFTError(message: """
                        init_lora_weights "\(s)" is not supported: this adapter was saved for the base that \(s) rewrites, not for the original one. \
                        HINT: save it converted for the original base (PEFT's save_pretrained with path_initial_model_for_weight_conversion), then import that folder
                        """)
                }
                config["init_lora_weights"] = true
            }
            for field in ["rank_pattern", "alpha_pattern"] {
                guard let patterns = config[field] as? [String: Any], let order = context.keyOrder[field] else { continue }
                if let exact = LoRAConfig.firstKeyResolved(patterns, order: order, modules: context.linearModules) { config[field] = exact }
            }
        }),
        build: { c, name, restoring in
            let lora = try LoRA(config: c, name: name)
            lora.checksRank = !restoring  // an adapter saved elsewhere (PEFT allows any r) loads as it is
            return lora
        })

    /// Default `target_modules` of a new adapter per model family (the attention query and value).
    public static let defaultTargets: [ModelConfig.Family: [String]] = [.llama: ["q_proj", "v_proj"], .gpt2: ["c_attn"]]

    public let config: LoRAConfig
    let state: LoRAState
    /// DoRA reads the base weights' row norms; `modules_to_save` trains copies of base weights.
    public func releasedWeightsConflict(in model: CausalLM) -> String? {
        config.useDora ? "this DoRA adapter reads the base's fp32 weights (their row norms)"
            : Self.releasedModulesToSave(config.modulesToSave, in: model)
    }
    /// Refuse r > min(in, out) and conflicting pattern keys at attach (a new adapter); off for
    /// loaded ones and for combinations.
    var checksRank = true
    /// Off, the model computes its base function: a merged adapter is unmerged first (as PEFT's
    /// `disable_adapters` does), and stays unmerged when it is turned on again.
    public var isEnabled: Bool {
        get { state.isEnabled }
        set {
            if !newValue && isMerged { unmerge() }
            state.isEnabled = newValue
        }
    }
    public var batchRows: Range<Int>? {
        get { state.rows }
        set { state.rows = newValue }
    }
    /// The adapted layers.
    public var layers: [(module: String, linear: Linear, lora: LoRALayer)] { hooked.map { ($0.module, $0.linear, $0.hook) } }

    public init(config: LoRAConfig, name: String = "default", seed: UInt64 = 0) throws {
        try config.validate()
        self.config = config
        state = LoRAState(config: config, seed: seed &+ 0x10AA)
        super.init(name: name)
    }

    public func configJSON() throws -> Data {
        var c = config
        c.fanInFanOut = layers.first?.linear.fanInFanOut ?? config.fanInFanOut
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .prettyPrinted]
        return try e.encode(c)
    }

    /// All or nothing: targets, biases and modules_to_save are resolved (and may throw) before the
    /// model is touched.
    @discardableResult
    public func attach(to model: CausalLM) throws -> [String] {
        try checkDetached("LoRA")
        let targets = try selectModules(model, of: Linear.self, targets: config.targetModules, exclude: config.excludeModules,
                                        layers: config.layersToTransform, method: "LoRA")
        var extra: [(String, Tensor)] = []
        switch config.bias {
        case "all": extra = model.namedParameters().filter { $0.0.hasSuffix(".bias") }
        case "lora_only": extra = targets.compactMap { m, l in l.bias.map { (m + ".bias", $0) } }
        default: break
        }
        extra += try Self.modulesToSave(config.modulesToSave, in: model, method: "LoRA")
        var shapes: [String: (r: Int, alpha: Float)] = [:]
        for (module, linear) in targets {
            let r = try LoRAConfig.pattern(config.rankPattern, for: module, field: "rank_pattern", refusingConflicts: checksRank) ?? config.r
            let alpha = try LoRAConfig.pattern(config.alphaPattern, for: module, field: "alpha_pattern", refusingConflicts: checksRank)
            shapes[module] = (r, alpha ?? config.loraAlpha)
            // The update is scaled by alpha / r: a new adapter at 0 neither changes the model nor
            // learns, and a negative one is a sign error. (Saved adapters load as they are.)
            guard !checksRank || shapes[module]!.alpha > 0 else {
                let field = alpha == nil ? "lora_alpha (--alpha)" : "alpha_pattern for \(module)"
                throw PEFTError(message: "[LoRA] \(field) must be positive for a new adapter, got \(String(format: "%g", Double(shapes[module]!.alpha)))")
            }
            guard !checksRank || r <= min(linear.inFeatures, linear.outFeatures) else {
                throw PEFTError(message: """
                    [LoRA] r \(r) is larger than \(module) allows (in \(linear.inFeatures), out \(linear.outFeatures)): \
                    a rank above min(in, out) adds parameters and nothing else.
                    HINT: use r ≤ \(min(linear.inFeatures, linear.outFeatures)), or rank_pattern for this module.
                    """)
            }
        }
        state.model = model
        return install(on: model, targets: targets, extra: extra) { module, linear in
            LoRALayer(module: module, layer: linear, rank: shapes[module]!.r, alpha: shapes[module]!.alpha, owner: state, rng: &state.rng)
        }
    }

    public func adapterParameters() -> [(String, Tensor)] {
        var out: [(String, Tensor)] = []
        for (module, _, l) in layers {
            out.append(("base_model.model.\(module).lora_A.weight", l.a))
            out.append(("base_model.model.\(module).lora_B.weight", l.b))
            if let m = l.magnitude { out.append(("base_model.model.\(module).lora_magnitude_vector", m)) }
        }
        return out + extraParameters()
    }

    /// Σ r·(in + out) over adapted layers (+ out per layer for DoRA) + trained biases and modules.
    public var expectedTrainableCount: Int {
        layers.reduce(0) { acc, e in
            acc + e.lora.rank * (e.linear.inFeatures + e.linear.outFeatures) + (e.lora.magnitude == nil ? 0 : e.linear.outFeatures)
        } + extraCount
    }
}
