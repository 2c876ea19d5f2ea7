// Prefix tuning (Li & Liang): P trainable key/value positions prepended to every attention through
// the model's `attentionPrefix` slot. PEFT's `PrefixEncoder` gives (P, L·2·kv_dim), viewed as
// (P, 2L, KVH, D): layer l's keys are index 2l, its values 2l+1. Saved as `prompt_embeddings`.

import Foundation
import TensorCore
import NN
import Models

/// Prefix tuning configuration with Hugging Face PEFT's field names (`adapter_config.json`).
/// Under grouped-query attention PEFT rewrites token_dim to kv_dim = D·KVH and
/// num_attention_heads to KVH at attach (PEFT #1901); this does the same, so the configs match.
public struct PrefixTuningConfig: PromptLearningConfig, Equatable {
    public var peftType = "PREFIX_TUNING"
    public var taskType = "CAUSAL_LM"
    public var baseModelNameOrPath: String?
    /// As in PEFT: no projection; the embedding holds the encoder output (`prompt_embeddings`).
    /// PEFT writes `true` into the configs it saves, so loading works.
    public var inferenceMode = false
    public var numVirtualTokens = 0
    /// kv_dim after attach (= C without grouped-query attention).
    public var tokenDim: Int?
    public var numTransformerSubmodules = 1
    /// KVH after attach.
    public var numAttentionHeads: Int?
    public var numLayers: Int?
    /// Embedding(P, token_dim) → Linear → tanh → Linear instead of a direct Embedding.
    public var prefixProjection = false
    /// h of the projection; nil takes token_dim at attach (PEFT).
    public var encoderHiddenSize: Int?

    public init() {}

    public init(numVirtualTokens: Int, prefixProjection: Bool = false, encoderHiddenSize: Int? = nil) {
        self.numVirtualTokens = numVirtualTokens
        self.prefixProjection = prefixProjection
        self.encoderHiddenSize = encoderHiddenSize
    }

    enum CodingKeys: String, CodingKey {
        case peftType = "peft_type", taskType = "task_type", baseModelNameOrPath = "base_model_name_or_path"
        case inferenceMode = "inference_mode", numVirtualTokens = "num_virtual_tokens", tokenDim = "token_dim"
        case numTransformerSubmodules = "num_transformer_submodules", numAttentionHeads = "num_attention_heads"
        case numLayers = "num_layers", prefixProjection = "prefix_projection", encoderHiddenSize = "encoder_hidden_size"
    }

    public static let requiredFields = ["num_virtual_tokens"]

    /// Every field, unset ones as null (as PEFT writes them).
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(peftType, forKey: .peftType)
        try c.encode(taskType, forKey: .taskType)
        try c.encode(baseModelNameOrPath, forKey: .baseModelNameOrPath)
        try c.encode(inferenceMode, forKey: .inferenceMode)
        try c.encode(numVirtualTokens, forKey: .numVirtualTokens)
        try c.encode(tokenDim, forKey: .tokenDim)
        try c.encode(numTransformerSubmodules, forKey: .numTransformerSubmodules)
        try c.encode(numAttentionHeads, forKey: .numAttentionHeads)
        try c.encode(numLayers, forKey: .numLayers)
        try c.encode(prefixProjection, forKey: .prefixProjection)
        try c.encode(encoderHiddenSize, forKey: .encoderHiddenSize)
    }

    public func validate() throws {
        try validateCommon("PrefixTuning", peftType: "PREFIX_TUNING")
        if let h = encoderHiddenSize, h <= 0 || h > 1 << 20 { throw PEFTError(message: "PrefixTuning: encoder_hidden_size must be in 1…1048576, got \(h)") }
    }
}

/// A prefix-tuning adapter; it is its own `AttentionPrefix` (attach fills `model.attentionPrefix`;
/// disabling empties that slot, detach frees it and keeps the tensors). Nothing to merge: the
/// prefix is extra attention positions, not a weight update. Checkpoint keys: `prompt_embeddings`
/// (P, L·2·kv_dim) when it is the trainable tensor (no projection, or inference mode); with the
/// projection PEFT's module names without the adapter name: `prompt_encoder.embedding.weight`
/// (P, token_dim), `prompt_encoder.transform.{0,2}.{weight,bias}`.
public final class PrefixTuning: PromptLearningMethod, AttentionPrefix {
    public static let peftType = "PREFIX_TUNING"

    /// PrefixTuning as the registry, the CLI and the PEFT folder code see it.
    public static let registration = MethodDescription(
        PrefixTuning.self, config: PrefixTuningConfig.self, names: [("prefix", PromptLearningRegistration.newAdapter)],
        summary: "prefix tuning: P trainable key/value positions before every attention",
        options: PromptLearningRegistration.options, peftFolder: PromptLearningRegistration.peftFolder,
        build: { c, name, _ in try PrefixTuning(config: c, name: name) })
    public private(set) var config: PrefixTuningConfig
    public let name: String
    var rng: RNG
    let binding = SlotBinding(.attentionPrefix, method: "PrefixTuning")
    /// (P, L·2·kv_dim) without projection; (P, token_dim) with it.
    public private(set) var embedding: Tensor?
    /// Linear(token_dim, h), Linear(h, L·2·kv_dim) when projecting.
    private(set) var transform: (DenseLayer, DenseLayer)?
    /// (L, KVH, D) of the model attached to.
    private(set) var shape: (layers: Int, kvHeads: Int, headDim: Int)?
    public init(config: PrefixTuningConfig, name: String = "default", seed: UInt64 = 0) throws {
        try config.validate()
        self.config = config
        self.name = name
        rng = RNG(seed: seed &+ 0x9F1)
    }

    public var isEnabled: Bool {
        get { binding.isEnabled }
        set { binding.setEnabled(newValue, self) }
    }

    public var length: Int { config.numVirtualTokens }

    /// Under grouped-query attention PEFT records kv_dim and KVH.
    public func peftDimensions(_ m: ModelConfig) -> (tokenDim: Int, heads: Int) { (m.kvDim, m.numKVHeads) }

    /// The encoder output (P, L·2·kv_dim): what PEFT saves as `prompt_embeddings`.
    public func promptEmbeddings() -> Tensor {
        guard case let (first, second)? = transform else { return embedding! }
        return second(first(embedding!).tanh())  // (P, token_dim) → (P, h) → (P, L·2·kv_dim)
    }

    /// Each layer's keys and values, (B, P, KVH, D) each: slices 2l and 2l+1 of the encoder output
    /// viewed as (P, 2L, KVH, D), broadcast over the batch without a copy. The encoder runs once.
    public func keysValues(batch B: Int) -> [(keys: Tensor, values: Tensor)] {
        let (L, KVH, D) = shape!
        let P = config.numVirtualTokens
        let kv = promptEmbeddings().reshaped([P, 2 * L, KVH, D])  // (P, 2L, KVH, D)
        func pick(_ i: Int) -> Tensor {
            kv.slice(axis: 1, i, i + 1).reshaped([1, P, KVH, D]).expand([B, P, KVH, D])  // (B, P, KVH, D)
        }
        return (0..<L).map { l in (pick(2 * l), pick(2 * l + 1)) }
    }

    public func configJSON() throws -> Data { try sortedJSON(config) }

    /// Freezes the base and fills `model.attentionPrefix`; returns ["attentionPrefix"].
    @discardableResult
    public func attach(to model: CausalLM) throws -> [String] {
        try binding.checkFree(model, for: self)
        let m = model.config
        var c = config
        c.fill(from: m)
        // PEFT's grouped-query rewrite (a no-op when KVH = H, e.g. GPT-2).
        if let td = c.tokenDim, let heads = c.numAttentionHeads, heads > 0 {
            c.tokenDim = td / heads * m.numKVHeads
            c.numAttentionHeads = m.numKVHeads
        }
        try c.checkFits(m, width: m.kvDim, heads: m.numKVHeads, method: "PrefixTuning")
        c.encoderHiddenSize = c.encoderHiddenSize ?? c.tokenDim
        if embedding == nil { build(c) }
        config = c
        shape = (m.numLayers, m.numKVHeads, m.headDim)
        model.freeze()
        binding.occupy(model, with: self)
        return [PromptSlot.attentionPrefix.rawValue]
    }

    func build(_ c: PrefixTuningConfig) {
        let (P, d, h) = (c.numVirtualTokens, c.tokenDim!, c.encoderHiddenSize!)
        let width = c.numLayers! * 2 * d  // L·2·kv_dim
        // torch.nn.Embedding: N(0, 1).
        if c.prefixProjection && !c.inferenceMode {
            embedding = trainableLeaf(Tensor.normal([P, d], rng: &rng))
            transform = (DenseLayer(d, h, rng: &rng), DenseLayer(h, width, rng: &rng))
        } else {
            embedding = trainableLeaf(Tensor.normal([P, width], rng: &rng))
        }
    }

    public func detach(from model: CausalLM) {
        binding.free(model, self)
    }

    public func adapterParameters() -> [(String, Tensor)] {
        guard let e = embedding else { return [] }
        guard case let (first, second)? = transform else { return [("prompt_embeddings", e)] }
        return [("prompt_encoder.embedding.weight", e)] + first.named("prompt_encoder.transform.0")
            + second.named("prompt_encoder.transform.2")
    }

    /// Without projection (or in inference mode): P·L·2·kv_dim. With it:
    /// P·d + d·h + h + h·L·2·kv_dim + L·2·kv_dim, d = token_dim (kv_dim, PEFT's GQA rewrite).
    public var expectedTrainableCount: Int {
        guard let d = config.tokenDim, let L = config.numLayers, let h = config.encoderHiddenSize else { return 0 }
        let (P, width) = (config.numVirtualTokens, L * 2 * d)
        guard config.prefixProjection && !config.inferenceMode else { return P * width }
        return P * d + DenseLayer.count(d, h) + DenseLayer.count(h, width)
    }
}
