// IA3 ((IA)³, Liu et al. 2022) as Hugging Face PEFT does it: a learned vector l rescales a Linear's
// output, y = (W x + b) ⊙ l, or, on a feed-forward layer, its input, y = W (x ⊙ l) + b. Tensors are
// saved under PEFT's keys and shapes; merge folds l into W (and b), unmerge restores them exactly.

import Foundation
import TensorCore
import NN
import Models

/// IA3 configuration with Hugging Face PEFT's field names (`adapter_config.json`).
public struct IA3Config: PEFTConfig, Equatable {
    public var peftType = "IA3"
    public var taskType = "CAUSAL_LM"
    public var baseModelNameOrPath: String?
    public var inferenceMode = false
    /// nil: PEFT's defaults for the model family (LLaMA k_proj, v_proj, down_proj; GPT-2 c_attn, mlp.c_proj).
    public var targetModules: ModuleSelector?
    public var excludeModules: ModuleSelector?
    /// Targets whose input is scaled instead of their output; nil: the family's defaults
    /// (LLaMA down_proj; GPT-2 mlp.c_proj). A list must be a subset of a `target_modules` list.
    public var feedforwardModules: ModuleSelector?
    /// Set automatically for GPT-2's Conv1D layers; recorded for PEFT.
    public var fanInFanOut = false
    /// Whole modules trained and saved with the adapter (e.g. "lm_head").
    public var modulesToSave: [String]?
    /// true: l = 1 (the model starts unchanged); false: l ~ N(0, 1) (PEFT's torch.randn; for tests).
    public var initIa3Weights = true

    public init() {}

    public init(targetModules: ModuleSelector? = nil, feedforwardModules: ModuleSelector? = nil) {
        self.targetModules = targetModules
        self.feedforwardModules = feedforwardModules
    }

    enum CodingKeys: String, CodingKey {
        case peftType = "peft_type", taskType = "task_type", baseModelNameOrPath = "base_model_name_or_path"
        case inferenceMode = "inference_mode", targetModules = "target_modules", excludeModules = "exclude_modules"
        case feedforwardModules = "feedforward_modules", fanInFanOut = "fan_in_fan_out"
        case modulesToSave = "modules_to_save", initIa3Weights = "init_ia3_weights"
    }

    /// PEFT's `TRANSFORMERS_MODELS_TO_IA3_{TARGET,FEEDFORWARD}_MODULES_MAPPING` for our families.
    public static func defaults(for family: ModelConfig.Family) -> (targets: [String], feedforward: [String]) {
        switch family {
        case .llama: (["k_proj", "v_proj", "down_proj"], ["down_proj"])
        case .gpt2: (["c_attn", "mlp.c_proj"], ["mlp.c_proj"])
        }
    }

    /// The selectors used for `family`: absent fields take the family's defaults, independently
    /// (as PEFT fills them in). Only lists the user gave are checked for the subset rule (as PEFT).
    public func resolved(for family: ModelConfig.Family) -> (targets: ModuleSelector, feedforward: ModuleSelector) {
        let d = Self.defaults(for: family)
        return (targetModules ?? .names(d.targets), feedforwardModules ?? .names(d.feedforward))
    }

    /// Checks that a `feedforward_modules` list is a subset of the `target_modules` list.
    public func validate() throws {
        guard case .names(let ff)? = feedforwardModules, case .names(let targets)? = targetModules else { return }
        let missing = ff.filter { !targets.contains($0) }
        guard missing.isEmpty else {
            throw PEFTError(message: """
                IA3: feedforward_modules must be a subset of target_modules; \(missing) are not in target_modules \(targets).
                HINT: add them to target_modules, or remove them from feedforward_modules.
                """)
        }
    }
}

/// IA3's vector on one Linear, in PEFT's shape: (out, 1) scaling the output of a non-feed-forward
/// layer, or (1, in) scaling the input of a feed-forward layer.
public final class IA3Layer: FoldableLinearHook {
    public let module: String
    public let isFeedforward: Bool
    /// ia3_l: (out, 1) or (1, in).
    public let l: Tensor
    let owner: IA3State
    /// Weight and bias before merging, restored by unmerge.
    var premerge: (weight: Tensor, bias: Tensor?)?

    init(module: String, layer: Linear, feedforward: Bool, owner: IA3State, rng: inout RNG) {
        self.module = module
        isFeedforward = feedforward
        self.owner = owner
        let shape = feedforward ? [1, layer.inFeatures] : [layer.outFeatures, 1]
        l = owner.config.initIa3Weights ? Tensor.ones(shape) : Tensor.normal(shape, rng: &rng)
        l.requiresGrad = true
    }

    var active: Bool { owner.isEnabled && premerge == nil }
    public var rows: Range<Int>? { owner.rows }

    /// Feed-forward: x ⊙ l, (…, in) ⊙ (in).
    public func input(_ x: Tensor, layer: Linear) -> Tensor {
        guard isFeedforward && active else { return x }
        return x * l.reshaped([-1])  // (1, in) → (in)
    }

    /// Otherwise: (W x + b) ⊙ l, (…, out) ⊙ (out).
    public func output(_ y: Tensor, input x: Tensor, layer: Linear) -> Tensor {
        guard !isFeedforward && active else { return y }
        return y * l.reshaped([-1])  // (out, 1) → (out)
    }

    /// Scales the stored weight: rows of W (out, in) by l (non-ff) or its columns (ff); with
    /// `fanInFanOut` the storage is (in, out), so the roles of the two axes swap. A non-ff bias is
    /// scaled too.
    public var isMerged: Bool { premerge != nil }

    public func merge(into linear: Linear) {
        guard premerge == nil else { return }
        withNoGrad {
            let v = l.detached().reshaped([-1])  // (out) or (in)
            let n = v.count
            // Broadcast shape against the stored weight: l runs along out (non-ff) or in (ff).
            let alongRows = isFeedforward == linear.fanInFanOut  // ff: in is the row axis of (in, out)
            let w = linear.weight.detached() * v.reshaped(alongRows ? [n, 1] : [1, n])
            let b = isFeedforward ? nil : linear.bias.map { $0.detached() * v }  // (out)
            premerge = (linear.weight.copy(), linear.bias?.copy())
            linear.weight.assign(w)
            if let b { linear.bias?.assign(b) }
        }
    }

    /// Restores the weight and bias saved by `merge`, bit for bit.
    public func unmerge(from linear: Linear) {
        guard let saved = premerge else { return }
        linear.weight.assign(saved.weight)
        if let b = saved.bias { linear.bias?.assign(b) }
        premerge = nil
    }
}

/// What an adapter's layers share with it (held by both, so hooks never hold the method).
final class IA3State {
    let config: IA3Config
    var isEnabled = true
    var rows: Range<Int>?
    init(config: IA3Config) { self.config = config }
}

/// An IA3 adapter. Trainable: Σ out_features (non-ff layers) + Σ in_features (ff layers).
public final class IA3: LinearHookMethod<IA3Layer>, MergeablePEFTMethod, RowScopedPEFTMethod {
    public static let peftType = "IA3"

    /// IA3 as the registry, the CLI and the PEFT folder code see it.
    public static let registration = MethodDescription(
        IA3.self, config: IA3Config.self, names: [("ia3", [:])],
        summary: "IA3: learned vectors rescale the outputs (inputs of feed-forward layers) of the target Linear layers",
        options: [
            MethodOption("target-modules", field: "target_modules", .list,
                         help: "comma-separated module names (suffixes); default per family: LLaMA k_proj,v_proj,down_proj, GPT-2 c_attn,mlp.c_proj"),
        ],
        peftFolder: PEFTFolderMapping(),
        build: { c, name, _ in try IA3(config: c, name: name) })

    public let config: IA3Config
    let state: IA3State
    var rng: RNG
    /// `modules_to_save` trains copies of base weights.
    public func releasedWeightsConflict(in model: CausalLM) -> String? {
        Self.releasedModulesToSave(config.modulesToSave, in: model)
    }
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
    public var layers: [(module: String, linear: Linear, ia3: IA3Layer)] { hooked.map { ($0.module, $0.linear, $0.hook) } }
    /// The selectors used at attach (defaults filled in), written by `configJSON`.
    private var resolved: (targets: ModuleSelector, feedforward: ModuleSelector)?

    public init(config: IA3Config, name: String = "default", seed: UInt64 = 0) throws {
        try config.validate()
        self.config = config
        state = IA3State(config: config)
        rng = RNG(seed: seed &+ 0x1A3)
        super.init(name: name)
    }

    /// Sorted-key JSON; once attached, the targets and feed-forward modules actually used.
    public func configJSON() throws -> Data {
        var c = config
        if let r = resolved { (c.targetModules, c.feedforwardModules) = (r.targets, config.feedforwardModules ?? writtenFeedforward(r)) }
        c.fanInFanOut = layers.first?.linear.fanInFanOut ?? config.fanInFanOut
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .prettyPrinted]
        return try e.encode(c)
    }

    /// Defaulted feedforward_modules in a form that reloads with the same split: the target entries
    /// whose layers are all feed-forward (a subset, as PEFT requires), else a regex of the ff names.
    private func writtenFeedforward(_ r: (targets: ModuleSelector, feedforward: ModuleSelector)) -> ModuleSelector {
        guard case .names(let list) = r.targets else { return r.feedforward }
        let entries = list.filter { t in
            let hit = layers.filter { ModuleSelector.names([t]).matches($0.module) }
            return !hit.isEmpty && hit.allSatisfy(\.ia3.isFeedforward)
        }
        let subset = ModuleSelector.names(entries)
        if layers.allSatisfy({ Self.isFeedforward($0.module, subset) == $0.ia3.isFeedforward }) { return subset }
        return .regex(layers.filter(\.ia3.isFeedforward).map { NSRegularExpression.escapedPattern(for: $0.module) }.joined(separator: "|"))
    }

    /// Whether `module` is a feed-forward layer (its input scaled) under `feedforward_modules`, as PEFT
    /// decides it: a regex matches the whole name; a list entry is a plain suffix of the name (no
    /// dot needed, unlike target_modules).
    static func isFeedforward(_ module: String, _ feedforward: ModuleSelector) -> Bool {
        if case .names(let list) = feedforward { return list.contains { module.hasSuffix($0) } }
        return feedforward.matches(module)
    }

    /// All or nothing: targets and modules_to_save are resolved (and may throw) before the model is touched.
    @discardableResult
    public func attach(to model: CausalLM) throws -> [String] {
        try checkDetached("IA3")
        let (targets, feedforward) = config.resolved(for: model.config.family)
        let selected = try selectModules(model, of: Linear.self, targets: targets, exclude: config.excludeModules, method: "IA3")
        let extra = try Self.modulesToSave(config.modulesToSave, in: model, method: "IA3")
        resolved = (targets, feedforward)
        return install(on: model, targets: selected, extra: extra) { module, linear in
            IA3Layer(module: module, layer: linear, feedforward: Self.isFeedforward(module, feedforward), owner: state, rng: &rng)
        }
    }

    public override func detach(from model: CausalLM) {
        super.detach(from: model)
        resolved = nil
    }

    /// `base_model.model.<module>.ia3_l`: (out, 1) or (1, in); then modules_to_save tensors.
    public func adapterParameters() -> [(String, Tensor)] {
        layers.map { ("base_model.model.\($0.module).ia3_l", $0.ia3.l) } + extraParameters()
    }

    /// Σ out_features (non-ff) + Σ in_features (ff) + modules_to_save parameters.
    public var expectedTrainableCount: Int {
        layers.reduce(0) { $0 + ($1.ia3.isFeedforward ? $1.linear.inFeatures : $1.linear.outFeatures) } + extraCount
    }
}
