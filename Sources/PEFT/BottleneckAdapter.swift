// Bottleneck adapters (Houlsby et al. 2019: after attention and after the MLP; Pfeiffer et al. 2021:
// after the MLP only) in the blocks' hook slots, applied to the branch output before the residual add:
// h ← h + up(act(down(h))), down C → r with bias, up r → C with bias, r = C / reduction_factor.
// Keys (PEFT has no format; AdapterHub-like, prefixed as PEFT's): base_model.model.<block>.attention_adapter
// and .mlp_adapter, each .down.weight (r, C), .down.bias (r), .up.weight (C, r), .up.bias (C),
// e.g. base_model.model.model.layers.0.mlp_adapter.up.weight, base_model.model.transformer.h.1.attention_adapter.down.bias.

import Foundation
import TensorCore
import NN
import Models

/// Bottleneck-adapter configuration, AdapterHub style, with snake_case field names.
public struct BottleneckConfig: PEFTConfig, Equatable {
    public var peftType = "BOTTLENECK"
    public var taskType = "CAUSAL_LM"
    public var baseModelNameOrPath: String?
    public var inferenceMode = false
    /// "houlsby" (after attention and after the MLP) or "pfeiffer" (after the MLP only).
    public var architecture = "pfeiffer"
    /// r = hidden_size / reduction_factor (rounded down), unless `bottleneck_size` is set.
    public var reductionFactor: Float = 16
    /// r itself; overrides `reduction_factor`.
    public var bottleneckSize: Int?
    /// "relu", "gelu" (erf), "gelu_new" (tanh), "silu" / "swish", "tanh".
    public var nonLinearity = "relu"
    /// Std of the up-projection's initial weights; 0 (default): zeros, so the model starts unchanged.
    public var initScale: Float = 0
    /// Block indices that get adapters (nil: all).
    public var layersToTransform: [Int]?

    public init() {}

    public init(architecture: String = "pfeiffer", reductionFactor: Float = 16, nonLinearity: String = "relu") {
        self.architecture = architecture
        self.reductionFactor = reductionFactor
        self.nonLinearity = nonLinearity
    }

    enum CodingKeys: String, CodingKey {
        case peftType = "peft_type", taskType = "task_type", baseModelNameOrPath = "base_model_name_or_path"
        case inferenceMode = "inference_mode", architecture, reductionFactor = "reduction_factor"
        case bottleneckSize = "bottleneck_size", nonLinearity = "non_linearity", initScale = "init_scale"
        case layersToTransform = "layers_to_transform"
    }

    /// `layers_to_transform` may be one index; names are case-insensitive.
    public static func normalize(_ fields: inout [String: Any]) {
        if let one = fields["layers_to_transform"] as? Int { fields["layers_to_transform"] = [one] }
        for k in ["architecture", "non_linearity"] { if let v = fields[k] as? String { fields[k] = v.lowercased() } }
    }

    static let activations = ["relu", "gelu", "gelu_new", "silu", "swish", "tanh"]

    /// Checks the values; the message names the field.
    public func validate() throws {
        guard ["houlsby", "pfeiffer"].contains(architecture) else {
            throw PEFTError(message: "Bottleneck: architecture must be \"houlsby\" or \"pfeiffer\", got \"\(architecture)\"")
        }
        guard Self.activations.contains(nonLinearity) else {
            throw PEFTError(message: "Bottleneck: non_linearity must be one of \(Self.activations), got \"\(nonLinearity)\"")
        }
        // Below 1/64 the bottleneck is wider than 64 hidden sizes: a typo, not a design (and far
        // enough below, C / factor no longer fits an Int).
        guard reductionFactor >= 1.0 / 64 && reductionFactor.isFinite else {
            throw PEFTError(message: "Bottleneck: reduction_factor must be a number from 1/64 (a bottleneck 64 times the hidden size) up, got \(reductionFactor)")
        }
        if let r = bottleneckSize, r <= 0 || r > 1 << 20 { throw PEFTError(message: "Bottleneck: bottleneck_size must be in 1…1048576, got \(r)") }
        guard initScale >= 0 else { throw PEFTError(message: "Bottleneck: init_scale must be ≥ 0, got \(initScale)") }
    }

    /// r for a hidden size C; throws when C / reduction_factor is below 1.
    public func bottleneck(hiddenSize c: Int) throws -> Int {
        if let r = bottleneckSize { return r }
        let r = Int(Float(c) / reductionFactor)
        guard r >= 1 else {
            throw PEFTError(message: "Bottleneck: hidden size \(c) / reduction_factor \(reductionFactor) leaves no bottleneck; HINT: lower reduction_factor or set bottleneck_size")
        }
        return r
    }
}

/// One adapter: h + up(act(down(h))), (B, T, C) → (B, T, r) → (B, T, C).
public final class BottleneckLayer: Module, HiddenHook {
    /// C → r: weight (r, C), bias (r).
    public let down: Linear
    /// r → C: weight (C, r), bias (C).
    public let up: Linear
    let nonLinearity: String
    let owner: BottleneckState

    init(hiddenSize c: Int, bottleneck r: Int, owner: BottleneckState, rng: inout RNG) {
        let config = owner.config
        // down: BERT-style N(0, 0.02) (AdapterHub's "bert" init); up: N(0, init_scale) or zeros.
        down = Linear(c, r, bias: true, std: 0.02, rng: &rng)
        up = Linear(r, c, bias: true, std: config.initScale, rng: &rng)
        if config.initScale == 0 { up.weight.assign(Tensor.zeros(up.weight.shape)) }
        nonLinearity = config.nonLinearity
        self.owner = owner
        super.init()
        register("down", down)
        register("up", up)
        for (_, p) in namedParameters() { p.requiresGrad = true }
    }

    public func callAsFunction(_ h: Tensor) -> Tensor {
        guard owner.isEnabled else { return h }
        let z = down(h)  // (B, T, r)
        let a: Tensor
        switch nonLinearity {
        case "gelu": a = z.gelu()
        case "gelu_new": a = z.geluTanh()
        case "silu", "swish": a = z.silu()
        case "tanh": a = z.tanh()
        default: a = z.relu()
        }
        return h + up(a)  // (B, T, C)
    }
}

/// What an adapter's layers share with it (held by both, so hooks never hold the method).
final class BottleneckState {
    let config: BottleneckConfig
    var isEnabled = true
    init(config: BottleneckConfig) { self.config = config }
}

/// Houlsby or Pfeiffer bottleneck adapters on every (selected) block.
///
/// There is no merge: the adapter's non-linearity sits between the two projections, so it cannot be
/// folded into the base's weights; it always runs as an extra branch.
public final class BottleneckAdapter: PEFTMethod {
    public static let peftType = "BOTTLENECK"

    /// Bottleneck adapters as the registry and the CLI see them; "adapter" on the command line is
    /// the Houlsby layout. PEFT has no format for them (no PEFT folder export).
    public static let registration = MethodDescription(
        BottleneckAdapter.self, config: BottleneckConfig.self, names: [("adapter", ["architecture": "houlsby"])],
        summary: "bottleneck adapters (Houlsby: after attention and after the MLP of every block)",
        options: [
            MethodOption("reduction-factor", field: "reduction_factor", .float, help: "bottleneck width r = hidden size / reduction factor"),
            MethodOption("architecture", field: "architecture", .string, help: "houlsby or pfeiffer (after the MLP only)"),
        ],
        peftFolder: nil,
        build: { c, name, _ in try BottleneckAdapter(config: c, name: name) })
    public let config: BottleneckConfig
    public let name: String
    let state: BottleneckState
    var rng: RNG
    public var isEnabled: Bool {
        get { state.isEnabled }
        set { state.isEnabled = newValue }
    }
    /// (adapter path `<block>.attention_adapter` / `<block>.mlp_adapter`, its block, whether it sits
    /// after attention, the adapter).
    public private(set) var adapters: [(path: String, block: DecoderBlock, afterAttention: Bool, layer: BottleneckLayer)] = []

    public init(config: BottleneckConfig, name: String = "default", seed: UInt64 = 0) throws {
        try config.validate()
        self.config = config
        self.name = name
        state = BottleneckState(config: config)
        rng = RNG(seed: seed &+ 0xB0771E)
    }

    public func configJSON() throws -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .prettyPrinted]
        return try e.encode(config)
    }

    /// Adds the adapters to the blocks' hook slots; returns the adapter paths
    /// (`model.layers.0.attention_adapter`, `model.layers.0.mlp_adapter`, …).
    @discardableResult
    public func attach(to model: CausalLM) throws -> [String] {
        guard adapters.isEmpty else { throw PEFTError(message: "[Bottleneck] adapter '\(name)' is already attached; detach it first") }
        let r = try config.bottleneck(hiddenSize: model.config.hiddenSize)
        let modules = model.namedModules()
        let blocks = model.blocks.map { b in (modules.first { $0.1 === b }?.0 ?? "?", b) }
        let wanted = Array(Set(config.layersToTransform ?? Array(blocks.indices)))  // a block named twice gets one adapter
        let unknown = wanted.filter { !blocks.indices.contains($0) }
        guard unknown.isEmpty, !wanted.isEmpty else {
            throw PEFTError(message: """
                [Bottleneck] layers_to_transform \(wanted) does not name blocks of the model (unknown: \(unknown)).
                Blocks it has (\(blocks.count)): \(blocks.map(\.0).joined(separator: ", "))
                HINT: use indices 0..<\(blocks.count), or leave layers_to_transform out for all blocks.
                """)
        }
        model.freeze()
        for i in wanted.sorted() {
            let (path, block) = blocks[i]
            if config.architecture == "houlsby" {
                let a = BottleneckLayer(hiddenSize: model.config.hiddenSize, bottleneck: r, owner: state, rng: &rng)
                block.afterAttention.append(a)
                adapters.append((path + ".attention_adapter", block, true, a))
            }
            let m = BottleneckLayer(hiddenSize: model.config.hiddenSize, bottleneck: r, owner: state, rng: &rng)
            block.afterMLP.append(m)
            adapters.append((path + ".mlp_adapter", block, false, m))
        }
        return adapters.map(\.path)
    }

    /// Removes exactly the hooks this adapter added (other hooks in the slots stay).
    public func detach(from model: CausalLM) {
        for (_, block, afterAttention, layer) in adapters {
            if afterAttention { block.afterAttention.removeAll { $0 === layer } } else { block.afterMLP.removeAll { $0 === layer } }
        }
        adapters = []
    }

    /// `base_model.model.<adapter path>.{down,up}.{weight,bias}`.
    public func adapterParameters() -> [(String, Tensor)] {
        adapters.flatMap { a in a.layer.namedParameters(prefix: "base_model.model.\(a.path).") }
    }

    /// Per adapter 2·C·r + r + C (two weights, two biases); Houlsby has two adapters per block.
    public var expectedTrainableCount: Int {
        adapters.reduce(0) { acc, a in
            let (c, r) = (a.layer.up.outFeatures, a.layer.down.outFeatures)
            return acc + 2 * c * r + r + c
        }
    }
}
