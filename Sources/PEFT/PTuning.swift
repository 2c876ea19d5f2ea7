// P-Tuning (Liu et al., "GPT Understands, Too"): a trainable Embedding(P, C) reparameterized by an
// encoder (an MLP, or a bidirectional LSTM + MLP, PEFT's `PromptEncoder`) whose (P, C) output is
// prepended to the input embeddings. PEFT saves only that output, as `prompt_embeddings`.

import Foundation
import TensorCore
import NN
import Models

/// `encoder_reparameterization_type`: MLP = Linear(C, h) → ReLU → Linear(h, h) → ReLU → Linear(h, C);
/// LSTM = bidirectional LSTM (hidden h per direction) → Linear(2h, 2h) → ReLU → Linear(2h, C).
public enum PromptEncoderReparameterizationType: String, Codable, Sendable { case mlp = "MLP", lstm = "LSTM" }

/// P-Tuning configuration with Hugging Face PEFT's field names (`PromptEncoderConfig`).
public struct PTuningConfig: PromptLearningConfig, Equatable {
    public var peftType = "P_TUNING"
    public var taskType = "CAUSAL_LM"
    public var baseModelNameOrPath: String?
    /// As in PEFT: no encoder; the Embedding(P, C) holds the encoder output (`prompt_embeddings`)
    /// and is used directly. PEFT writes `true` into the configs it saves, so loading works.
    public var inferenceMode = false
    public var numVirtualTokens = 0
    public var tokenDim: Int?
    public var numTransformerSubmodules = 1
    public var numAttentionHeads: Int?
    public var numLayers: Int?
    public var encoderReparameterizationType: PromptEncoderReparameterizationType = .mlp
    /// h; nil takes token_dim at attach (PEFT).
    public var encoderHiddenSize: Int?
    /// LSTM layers (the MLP always has 3 Linear layers, as in PEFT).
    public var encoderNumLayers = 2
    /// Dropout between LSTM layers while training.
    public var encoderDropout: Float = 0

    public init() {}

    public init(numVirtualTokens: Int, type: PromptEncoderReparameterizationType = .mlp, encoderHiddenSize: Int? = nil) {
        self.numVirtualTokens = numVirtualTokens
        encoderReparameterizationType = type
        self.encoderHiddenSize = encoderHiddenSize
    }

    enum CodingKeys: String, CodingKey {
        case peftType = "peft_type", taskType = "task_type", baseModelNameOrPath = "base_model_name_or_path"
        case inferenceMode = "inference_mode", numVirtualTokens = "num_virtual_tokens", tokenDim = "token_dim"
        case numTransformerSubmodules = "num_transformer_submodules", numAttentionHeads = "num_attention_heads"
        case numLayers = "num_layers", encoderReparameterizationType = "encoder_reparameterization_type"
        case encoderHiddenSize = "encoder_hidden_size", encoderNumLayers = "encoder_num_layers", encoderDropout = "encoder_dropout"
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
        try c.encode(encoderReparameterizationType, forKey: .encoderReparameterizationType)
        try c.encode(encoderHiddenSize, forKey: .encoderHiddenSize)
        try c.encode(encoderNumLayers, forKey: .encoderNumLayers)
        try c.encode(encoderDropout, forKey: .encoderDropout)
    }

    public func validate() throws {
        try validateCommon("PTuning", peftType: "P_TUNING")
        if let h = encoderHiddenSize, h <= 0 || h > 1 << 20 { throw PEFTError(message: "PTuning: encoder_hidden_size must be in 1…1048576, got \(h)") }
        guard encoderNumLayers > 0 else { throw PEFTError(message: "PTuning: encoder_num_layers must be positive, got \(encoderNumLayers)") }
        guard encoderDropout >= 0 && encoderDropout < 1 else { throw PEFTError(message: "PTuning: encoder_dropout \(encoderDropout) must be in [0, 1)") }
    }
}

/// One direction of one layer of torch.nn.LSTM, gates in PyTorch's order (i, f, g, o):
/// weight_ih (4h, in), weight_hh (4h, h), bias_ih, bias_hh (4h); all uniform in ±1/√h as in PyTorch.
struct LSTMDirection {
    let weightIH: Tensor, weightHH: Tensor, biasIH: Tensor, biasHH: Tensor

    init(input: Int, hidden h: Int, rng: inout RNG) {
        let k = 1 / Float(h).squareRoot()
        weightIH = trainableLeaf(Tensor.uniform([4 * h, input], low: -k, high: k, rng: &rng))
        weightHH = trainableLeaf(Tensor.uniform([4 * h, h], low: -k, high: k, rng: &rng))
        biasIH = trainableLeaf(Tensor.uniform([4 * h], low: -k, high: k, rng: &rng))
        biasHH = trainableLeaf(Tensor.uniform([4 * h], low: -k, high: k, rng: &rng))
    }

    /// (P, in) → (P, h), from h₀ = c₀ = 0; `reverse` runs t = P−1 … 0 (output t stays at row t).
    /// i, f, o = σ(·), g = tanh(·) of x_t W_ihᵀ + b_ih + h_{t−1} W_hhᵀ + b_hh; c_t = f c_{t−1} + i g;
    /// h_t = o tanh(c_t). Built from differentiable ops, so autodiff gives the backward.
    func callAsFunction(_ x: Tensor, reverse: Bool) -> Tensor {
        let (P, h) = (x.shape[0], weightHH.shape[1])
        let xw = x.matmul(weightIH.transposed()) + (biasIH + biasHH)  // (P, 4h)
        var hPrev: Tensor?, cPrev: Tensor?
        var out = [Tensor?](repeating: nil, count: P)
        for t in reverse ? Array((0..<P).reversed()) : Array(0..<P) {
            var gates = xw.slice(axis: 0, t, t + 1)  // (1, 4h)
            if let hp = hPrev { gates = gates + hp.matmul(weightHH.transposed()) }
            let i = gates.slice(axis: 1, 0, h).sigmoid()
            let f = gates.slice(axis: 1, h, 2 * h).sigmoid()
            let g = gates.slice(axis: 1, 2 * h, 3 * h).tanh()
            let o = gates.slice(axis: 1, 3 * h, 4 * h).sigmoid()
            let c = cPrev.map { f * $0 + i * g } ?? i * g  // (1, h)
            let ht = o * c.tanh()
            (hPrev, cPrev, out[t]) = (ht, c, ht)
        }
        return Tensor.concat(out.map { $0! }, axis: 0)  // (P, h)
    }

    /// PyTorch's names: weight_ih_l{k}[_reverse], …
    func named(_ prefix: String, layer: Int, reverse: Bool) -> [(String, Tensor)] {
        let s = "_l\(layer)" + (reverse ? "_reverse" : "")
        return [("\(prefix).weight_ih\(s)", weightIH), ("\(prefix).weight_hh\(s)", weightHH),
                ("\(prefix).bias_ih\(s)", biasIH), ("\(prefix).bias_hh\(s)", biasHH)]
    }
}

/// A P-Tuning adapter; it is its own `InputPrefix` (attach fills `model.inputPrefix`; disabling
/// empties that slot, detach frees it and keeps the tensors). Nothing to merge: the virtual tokens
/// are inputs. Checkpoint keys (PEFT's module names without the adapter name):
/// `prompt_encoder.embedding.weight` (P, C); MLP `prompt_encoder.mlp_head.{0,2,4}.{weight,bias}`;
/// LSTM `prompt_encoder.lstm_head.{weight_ih,weight_hh,bias_ih,bias_hh}_l{k}[_reverse]` and
/// `prompt_encoder.mlp_head.{0,2}.{weight,bias}`. In inference mode: `prompt_embeddings` (P, C) only.
public final class PTuning: PromptLearningMethod, InputPrefix {
    public static let peftType = "P_TUNING"

    /// PTuning as the registry, the CLI and the PEFT folder code see it.
    public static let registration = MethodDescription(
        PTuning.self, config: PTuningConfig.self, names: [("ptuning", PromptLearningRegistration.newAdapter)],
        summary: "P-Tuning: virtual tokens produced by a small prompt encoder (MLP or LSTM)",
        options: PromptLearningRegistration.options, peftFolder: PromptLearningRegistration.peftFolder,
        build: { c, name, _ in try PTuning(config: c, name: name) })
    public private(set) var config: PTuningConfig
    public let name: String
    var rng: RNG
    let binding = SlotBinding(.inputPrefix, method: "PTuning")
    /// Embedding(P, C): the encoder's input (the encoder's output in inference mode).
    public private(set) var embedding: Tensor?
    /// LSTM layers, each (forward, reverse); empty for MLP or inference mode.
    private(set) var lstm: [(LSTMDirection, LSTMDirection)] = []
    /// The MLP head: 3 layers (MLP) or 2 (after the LSTM); empty in inference mode.
    private(set) var head: [DenseLayer] = []

    public init(config: PTuningConfig, name: String = "default", seed: UInt64 = 0) throws {
        try config.validate()
        self.config = config
        self.name = name
        rng = RNG(seed: seed &+ 0x7E7)
    }

    public var isEnabled: Bool {
        get { binding.isEnabled }
        set { binding.setEnabled(newValue, self) }
    }

    public var length: Int { config.numVirtualTokens }

    /// The encoder output (P, C).
    public func embeddings() -> Tensor { promptEmbeddings() }

    /// The encoder output (P, C): what PEFT saves as `prompt_embeddings` for P-Tuning.
    public func promptEmbeddings() -> Tensor {
        var x = embedding!  // (P, C)
        if head.isEmpty { return x }
        for (k, (fwd, bwd)) in lstm.enumerated() {
            x = Tensor.concat([fwd(x, reverse: false), bwd(x, reverse: true)], axis: 1)  // (P, 2h)
            if k < lstm.count - 1 && config.encoderDropout > 0, let model = binding.model, model.isTraining {
                x = x.dropout(config.encoderDropout, rng: &model.random.value)  // the model's generator, seeded per step and rank
            }
        }
        for (k, layer) in head.enumerated() {
            x = layer(x)
            if k < head.count - 1 { x = x.relu() }
        }
        return x  // (P, C)
    }

    public func configJSON() throws -> Data { try sortedJSON(config) }

    /// Freezes the base and fills `model.inputPrefix`; returns ["inputPrefix"].
    @discardableResult
    public func attach(to model: CausalLM) throws -> [String] {
        try binding.checkFree(model, for: self)
        var c = config
        c.fill(from: model.config)
        try c.checkFits(model.config, width: model.config.hiddenSize, heads: model.config.numHeads, method: "PTuning")
        c.encoderHiddenSize = c.encoderHiddenSize ?? c.tokenDim
        if embedding == nil { build(c) }
        config = c
        model.freeze()
        binding.occupy(model, with: self)
        return [PromptSlot.inputPrefix.rawValue]
    }

    func build(_ c: PTuningConfig) {
        let (P, C, h) = (c.numVirtualTokens, c.tokenDim!, c.encoderHiddenSize!)
        embedding = trainableLeaf(Tensor.normal([P, C], rng: &rng))  // torch.nn.Embedding: N(0, 1)
        guard !c.inferenceMode else { return }
        switch c.encoderReparameterizationType {
        case .mlp:
            head = [DenseLayer(C, h, rng: &rng), DenseLayer(h, h, rng: &rng), DenseLayer(h, C, rng: &rng)]
        case .lstm:
            lstm = (0..<c.encoderNumLayers).map { k in
                (LSTMDirection(input: k == 0 ? C : 2 * h, hidden: h, rng: &rng),
                 LSTMDirection(input: k == 0 ? C : 2 * h, hidden: h, rng: &rng))
            }
            head = [DenseLayer(2 * h, 2 * h, rng: &rng), DenseLayer(2 * h, C, rng: &rng)]
        }
    }

    public func detach(from model: CausalLM) { binding.free(model, self) }

    public func adapterParameters() -> [(String, Tensor)] {
        guard let e = embedding else { return [] }
        if head.isEmpty { return [("prompt_embeddings", e)] }
        var out = [("prompt_encoder.embedding.weight", e)]
        for (k, (fwd, bwd)) in lstm.enumerated() {
            out += fwd.named("prompt_encoder.lstm_head", layer: k, reverse: false)
            out += bwd.named("prompt_encoder.lstm_head", layer: k, reverse: true)
        }
        for (k, layer) in head.enumerated() { out += layer.named("prompt_encoder.mlp_head.\(2 * k)") }
        return out
    }

    /// P·C, plus — MLP: (C·h + h) + (h·h + h) + (h·C + C); LSTM: Σ_k 2·(4h·in_k + 4h·h + 8h) with
    /// in_0 = C, in_k = 2h, + (2h·2h + 2h) + (2h·C + C). Inference mode: P·C only.
    public var expectedTrainableCount: Int {
        guard let C = config.tokenDim, let h = config.encoderHiddenSize else { return 0 }
        let base = config.numVirtualTokens * C
        if config.inferenceMode { return base }
        switch config.encoderReparameterizationType {
        case .mlp:
            return base + DenseLayer.count(C, h) + DenseLayer.count(h, h) + DenseLayer.count(h, C)
        case .lstm:
            let lstm = (0..<config.encoderNumLayers).reduce(0) { $0 + 2 * (4 * h * ($1 == 0 ? C : 2 * h) + 4 * h * h + 8 * h) }
            return base + lstm + DenseLayer.count(2 * h, 2 * h) + DenseLayer.count(2 * h, C)
        }
    }
}
