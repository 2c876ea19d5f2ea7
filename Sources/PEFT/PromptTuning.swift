// Prompt tuning (Lester et al.): P trainable virtual-token embeddings (P, C) prepended to the input
// embeddings through the model's `inputPrefix` slot. Initialized at random, from sampled vocabulary
// rows, or from the embedding rows of an init text's token ids. PEFT saves them as `prompt_embeddings`.

import Foundation
import TensorCore
import NN
import Models

/// `prompt_tuning_init`.
public enum PromptTuningInit: String, Codable, Sendable {
    /// N(0, 1), as torch.nn.Embedding.
    case random = "RANDOM"
    /// Rows of the model's token embedding table for the init text's token ids.
    case text = "TEXT"
    /// Rows of the model's token embedding table at ids drawn uniformly by the seeded generator.
    case sampleVocab = "SAMPLE_VOCAB"
}

/// Prompt tuning configuration with Hugging Face PEFT's field names (`adapter_config.json`).
public struct PromptTuningConfig: PromptLearningConfig, Equatable {
    public var peftType = "PROMPT_TUNING"
    public var taskType = "CAUSAL_LM"
    public var baseModelNameOrPath: String?
    /// PEFT skips the TEXT / SAMPLE_VOCAB initialization in inference mode (the tensor is loaded).
    public var inferenceMode = false
    public var numVirtualTokens = 0
    public var tokenDim: Int?
    public var numTransformerSubmodules = 1
    public var numAttentionHeads: Int?
    public var numLayers: Int?
    public var promptTuningInit: PromptTuningInit = .random
    /// Recorded for PEFT; the token ids themselves are given to `PromptTuning.init(initTokenIDs:)`.
    public var promptTuningInitText: String?
    public var tokenizerNameOrPath: String?

    public init() {}

    public init(numVirtualTokens: Int, promptTuningInit: PromptTuningInit = .random, promptTuningInitText: String? = nil) {
        self.numVirtualTokens = numVirtualTokens
        self.promptTuningInit = promptTuningInit
        self.promptTuningInitText = promptTuningInitText
    }

    enum CodingKeys: String, CodingKey {
        case peftType = "peft_type", taskType = "task_type", baseModelNameOrPath = "base_model_name_or_path"
        case inferenceMode = "inference_mode", numVirtualTokens = "num_virtual_tokens", tokenDim = "token_dim"
        case numTransformerSubmodules = "num_transformer_submodules", numAttentionHeads = "num_attention_heads"
        case numLayers = "num_layers", promptTuningInit = "prompt_tuning_init"
        case promptTuningInitText = "prompt_tuning_init_text", tokenizerNameOrPath = "tokenizer_name_or_path"
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
        try c.encode(promptTuningInit, forKey: .promptTuningInit)
        try c.encode(promptTuningInitText, forKey: .promptTuningInitText)
        try c.encode(tokenizerNameOrPath, forKey: .tokenizerNameOrPath)
    }

    public func validate() throws { try validateCommon("PromptTuning", peftType: "PROMPT_TUNING") }
}

/// A prompt-tuning adapter: it is its own `InputPrefix`, so attach puts it in `model.inputPrefix`.
/// Disabling empties that slot (the model is its base again); detach empties it for good but keeps
/// the tensor, so a detached adapter can still be saved or re-attached to a model of the same shape.
/// There is nothing to merge: virtual tokens are inputs, not weights.
public final class PromptTuning: PromptLearningMethod, InputPrefix {
    public static let peftType = "PROMPT_TUNING"

    /// PromptTuning as the registry, the CLI and the PEFT folder code see it.
    public static let registration = MethodDescription(
        PromptTuning.self, config: PromptTuningConfig.self, names: [("prompt", PromptLearningRegistration.newAdapter)],
        summary: "prompt tuning: P trainable virtual-token embeddings before the input",
        options: PromptLearningRegistration.options, peftFolder: PromptLearningRegistration.peftFolder,
        build: { c, name, restoring in try PromptTuning(config: c, name: name, restoring: restoring) })
    /// The configuration; token_dim / num_layers / num_attention_heads are filled at attach.
    public private(set) var config: PromptTuningConfig
    public let name: String
    let initTokenIDs: [Int32]?
    let restoring: Bool
    var rng: RNG
    let binding = SlotBinding(.inputPrefix, method: "PromptTuning")
    /// The virtual-token embeddings (P, C); nil before the first attach.
    public private(set) var embedding: Tensor?

    /// - initTokenIDs: the token ids of `prompt_tuning_init_text` (what the tokenizer gives, special
    ///   tokens included, as PEFT tokenizes it); required for TEXT init outside inference mode.
    /// - restoring: the tensor is loaded from a checkpoint right after attach, so the TEXT /
    ///   SAMPLE_VOCAB initialization is skipped (as PEFT skips it in inference mode).
    public init(config: PromptTuningConfig, name: String = "default", seed: UInt64 = 0, initTokenIDs: [Int32]? = nil,
                restoring: Bool = false) throws {
        try config.validate()
        if config.promptTuningInit == .text && !config.inferenceMode && !restoring && (initTokenIDs ?? []).isEmpty {
            throw PEFTError(message: """
                PromptTuning: prompt_tuning_init is TEXT but no token ids were given for the init text
                HINT: tokenize prompt_tuning_init_text and pass the ids as PromptTuning(config:initTokenIDs:) (Training's makeMethod(_:for:settings:tokenizer:) does), or use RANDOM / SAMPLE_VOCAB.
                """)
        }
        self.config = config
        self.name = name
        self.initTokenIDs = initTokenIDs
        self.restoring = restoring
        rng = RNG(seed: seed &+ 0x9807)
    }

    public var isEnabled: Bool {
        get { binding.isEnabled }
        set { binding.setEnabled(newValue, self) }
    }

    public var length: Int { config.numVirtualTokens }

    /// (P, C)
    public func embeddings() -> Tensor { embedding! }

    public func promptEmbeddings() -> Tensor { embedding! }

    public func configJSON() throws -> Data { try sortedJSON(config) }

    /// Freezes the base and fills `model.inputPrefix`; returns ["inputPrefix"]. Throws when the slot
    /// is taken or the config's dimensions are not the model's.
    @discardableResult
    public func attach(to model: CausalLM) throws -> [String] {
        try binding.checkFree(model, for: self)
        var c = config
        c.fill(from: model.config)
        try c.checkFits(model.config, width: model.config.hiddenSize, heads: model.config.numHeads, method: "PromptTuning")
        if embedding == nil { embedding = try initialEmbedding(model, width: c.tokenDim!) }
        config = c
        model.freeze()
        binding.occupy(model, with: self)
        return [PromptSlot.inputPrefix.rawValue]
    }

    public func detach(from model: CausalLM) { binding.free(model, self) }

    /// `prompt_embeddings` (P, C): the trainable tensor is exactly what PEFT saves.
    public func adapterParameters() -> [(String, Tensor)] { embedding.map { [("prompt_embeddings", $0)] } ?? [] }

    /// P·C.
    public var expectedTrainableCount: Int { config.numVirtualTokens * (config.tokenDim ?? 0) }

    /// The initial (P, C) tensor under `prompt_tuning_init`.
    func initialEmbedding(_ model: CausalLM, width: Int) throws -> Tensor {
        let P = config.numVirtualTokens
        let V = model.config.vocabSize
        var ids: [Int32]
        switch config.inferenceMode || restoring ? .random : config.promptTuningInit {
        case .random: return trainableLeaf(Tensor.normal([P, width], rng: &rng))
        case .sampleVocab: ids = (0..<P).map { _ in Int32(rng.nextInt(V)) }
        case .text:
            // PEFT: truncate to P, or repeat ⌈P / n⌉ times and truncate.
            let text = initTokenIDs ?? []
            ids = Array((0..<P).map { text[$0 % text.count] })
            if let bad = ids.first(where: { $0 < 0 || Int($0) >= V }) {
                throw PEFTError(message: "PromptTuning: init token id \(bad) is outside the vocabulary 0..<\(V)")
            }
        }
        let table = model.tokenEmbeddingTable.detached()
        return trainableLeaf(withNoGrad { Tensor.embedding(table, ids: ids, shape: [P]) }.copy())  // (P, C)
    }
}
