// One configuration for both decoder families (GPT-2 and LLaMA: Llama, Mistral, Qwen2, SmolLM).
// Letters used in shape comments across Models: B batch, T sequence, S keys (prefix + cache + T),
// C hidden, V vocabulary, L layers, H query heads, KVH key/value heads, D head dimension.

import Foundation
import TensorCore
import NN
/// Architecture of a decoder-only transformer. Codable (snake_case keys) for checkpoints.
///
/// `family` decides the architecture; `norm`, `mlp`, `positions` (and for GPT-2 `numKVHeads`)
/// follow from it. They stay stored, because checkpoints and adapter fingerprints
/// record them, and `validate()` checks them against the family: `family: llama, positions: learned`
/// is an error, not a model without position encoding. Build configs with `.gpt2(…)` / `.llama(…)`.
public struct ModelConfig: Codable, Equatable, Sendable {
    public enum Family: String, Codable, Sendable { case gpt2, llama }
    public enum Norm: String, Codable, Sendable { case layerNorm = "layer_norm", rmsNorm = "rms_norm" }
    public enum MLP: String, Codable, Sendable {
        /// GELU, tanh approximation (GPT-2's gelu_new), up → act → down.
        case geluTanh = "gelu_new"
        /// GELU, exact erf form.
        case gelu
        /// SwiGLU: down(silu(gate(x)) ⊙ up(x)).
        case swiglu
    }
    public enum Positions: String, Codable, Sendable { case learned, rope }

    public var family: Family
    public var vocabSize: Int
    public var hiddenSize: Int
    public var numLayers: Int
    public var numHeads: Int
    /// Key/value heads (grouped-query attention); equal to numHeads for multi-head attention.
    public var numKVHeads: Int
    public var intermediateSize: Int
    public var norm: Norm
    public var normEps: Float
    public var mlp: MLP
    public var positions: Positions
    public var ropeTheta: Float
    /// Bias on the q, k, v projections (GPT-2, Qwen2).
    public var attentionBias: Bool
    /// Bias on the attention output and MLP projections (GPT-2).
    public var projectionBias: Bool
    public var tieWordEmbeddings: Bool
    public var maxPositions: Int
    /// Dropout on residual branches while training (GPT-2's resid_pdrop), and on the embeddings
    /// unless `embeddingDropout` is set.
    public var dropout: Float
    /// Dropout on the embeddings while training when it differs from `dropout` (GPT-2's embd_pdrop).
    /// nil (the default): `dropout`, and left out of the stored config.
    public var embeddingDropout: Float?
    /// Dropout on the attention probabilities while training (GPT-2's attn_pdrop, LLaMA's
    /// attention_dropout). nil (the default) is none, and is left out of the stored config.
    public var attentionDropout: Float?
    /// Mistral's sliding window: each position attends to at most this many positions, itself
    /// included. nil (the default): to every earlier position.
    public var slidingWindow: Int?
    /// Llama 3.1's RoPE scaling (`rope_scaling` with `rope_type` "llama3"); nil (the default): plain
    /// RoPE, and left out of the stored config.
    public var ropeScaling: RopeScaling?

    public var headDim: Int { hiddenSize / numHeads }
    public var kvDim: Int { numKVHeads * headDim }

    enum CodingKeys: String, CodingKey {
        case family, vocabSize = "vocab_size", hiddenSize = "hidden_size", numLayers = "num_hidden_layers"
        case numHeads = "num_attention_heads", numKVHeads = "num_key_value_heads"
        case intermediateSize = "intermediate_size", norm, normEps = "norm_eps", mlp, positions
        case ropeTheta = "rope_theta", attentionBias = "attention_bias", projectionBias = "projection_bias"
        case tieWordEmbeddings = "tie_word_embeddings", maxPositions = "max_position_embeddings", dropout
        case slidingWindow = "sliding_window", attentionDropout = "attention_dropout", embeddingDropout = "embedding_dropout"
        case ropeScaling = "rope_scaling"
    }

    public init(family: Family, vocabSize: Int, hiddenSize: Int, numLayers: Int, numHeads: Int, numKVHeads: Int,
                intermediateSize: Int, norm: Norm, normEps: Float, mlp: MLP, positions: Positions, ropeTheta: Float,
                attentionBias: Bool, projectionBias: Bool, tieWordEmbeddings: Bool, maxPositions: Int, dropout: Float) {
        self.family = family
        self.vocabSize = vocabSize
        self.hiddenSize = hiddenSize
        self.numLayers = numLayers
        self.numHeads = numHeads
        self.numKVHeads = numKVHeads
        self.intermediateSize = intermediateSize
        self.norm = norm
        self.normEps = normEps
        self.mlp = mlp
        self.positions = positions
        self.ropeTheta = ropeTheta
        self.attentionBias = attentionBias
        self.projectionBias = projectionBias
        self.tieWordEmbeddings = tieWordEmbeddings
        self.maxPositions = maxPositions
        self.dropout = dropout
    }

    /// GPT-2 family: learned positions, LayerNorm, GELU (tanh), biases everywhere, tied embeddings.
    public static func gpt2(vocabSize: Int, hiddenSize: Int, numLayers: Int, numHeads: Int,
                            intermediateSize: Int? = nil, maxPositions: Int = 1024, dropout: Float = 0) -> ModelConfig {
        ModelConfig(family: .gpt2, vocabSize: vocabSize, hiddenSize: hiddenSize, numLayers: numLayers, numHeads: numHeads,
                    numKVHeads: numHeads, intermediateSize: intermediateSize ?? 4 * hiddenSize, norm: .layerNorm, normEps: 1e-5,
                    mlp: .geluTanh, positions: .learned, ropeTheta: 0, attentionBias: true, projectionBias: true,
                    tieWordEmbeddings: true, maxPositions: maxPositions, dropout: dropout)
    }

    /// LLaMA family: RoPE, RMSNorm, SwiGLU, grouped-query attention, no biases (Qwen2: attentionBias).
    public static func llama(vocabSize: Int, hiddenSize: Int, numLayers: Int, numHeads: Int, numKVHeads: Int,
                             intermediateSize: Int, ropeTheta: Float = 10000, normEps: Float = 1e-5,
                             attentionBias: Bool = false, tieWordEmbeddings: Bool = false, maxPositions: Int = 2048,
                             dropout: Float = 0) -> ModelConfig {
        ModelConfig(family: .llama, vocabSize: vocabSize, hiddenSize: hiddenSize, numLayers: numLayers, numHeads: numHeads,
                    numKVHeads: numKVHeads, intermediateSize: intermediateSize, norm: .rmsNorm, normEps: normEps, mlp: .swiglu,
                    positions: .rope, ropeTheta: ropeTheta, attentionBias: attentionBias, projectionBias: false,
                    tieWordEmbeddings: tieWordEmbeddings, maxPositions: maxPositions, dropout: dropout)
    }

    /// Checks the numbers fit together; the message names the fields.
    public func validate() throws {
        func fail(_ m: String) -> ModelConfigError { ModelConfigError(message: m) }
        guard vocabSize > 0, hiddenSize > 0, numLayers > 0, numHeads > 0, numKVHeads > 0, intermediateSize > 0 else {
            throw fail("vocab_size, hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads and intermediate_size must be positive")
        }
        guard hiddenSize % numHeads == 0 else {
            throw fail("hidden_size \(hiddenSize) is not a multiple of num_attention_heads \(numHeads)")
        }
        guard numHeads % numKVHeads == 0 else {
            throw fail("num_attention_heads \(numHeads) is not a multiple of num_key_value_heads \(numKVHeads)")
        }
        try checkFamily()
        guard positions == .learned || headDim % 2 == 0 else { throw fail("RoPE needs an even head dimension, got \(headDim)") }
        // θ ≤ 0 gives infinite or NaN frequencies, a negative eps NaN norms: every logit NaN, silently.
        guard positions == .learned || (ropeTheta > 0 && ropeTheta.isFinite) else { throw fail("rope_theta must be positive, got \(ropeTheta)") }
        guard normEps >= 0 && normEps.isFinite else { throw fail("the norm epsilon (rms_norm_eps, layer_norm_epsilon) must be 0 or more, got \(normEps)") }
        guard dropout >= 0 && dropout < 1 else { throw fail("dropout \(dropout) must be in [0, 1)") }
        guard maxPositions > 0 else { throw fail("max_position_embeddings (GPT-2: n_positions) must be positive, got \(maxPositions)") }
        if let w = slidingWindow, w <= 0 { throw fail("sliding_window must be positive, got \(w)") }
        if let a = attentionDropout, !(a >= 0 && a < 1) { throw fail("attention_dropout \(a) must be in [0, 1)") }
        if let e = embeddingDropout, !(e >= 0 && e < 1) { throw fail("embedding_dropout \(e) must be in [0, 1)") }
        if let r = ropeScaling {
            guard positions == .rope else { throw fail("rope_scaling needs RoPE positions") }
            try r.validate()
        }
    }

    /// Qwen2's shape of the LLaMA family: biases on q, k and v only, no sliding window (what
    /// transformers' Qwen2 and llama.cpp's "qwen2" architecture are).
    public var isQwen2: Bool { family == .llama && attentionBias && !projectionBias && slidingWindow == nil }

    /// The divisor of each rotary frequency pair (headDim / 2 values), nil for plain RoPE.
    public var ropeFrequencyDivisors: [Float]? { ropeScaling?.divisors(theta: ropeTheta, headDim: headDim) }
}

/// Llama 3.1's RoPE scaling, as transformers' `_compute_llama3_parameters` and llama.cpp's
/// `rope_freqs` apply it: frequencies whose wavelength is shorter than `originalMaxPositions /
/// highFreqFactor` are kept, those longer than `originalMaxPositions / lowFreqFactor` divided by
/// `factor`, and those between interpolated.
public struct RopeScaling: Codable, Equatable, Sendable {
    public var factor: Float
    public var lowFreqFactor: Float
    public var highFreqFactor: Float
    public var originalMaxPositions: Int

    enum CodingKeys: String, CodingKey {
        case factor, lowFreqFactor = "low_freq_factor", highFreqFactor = "high_freq_factor"
        case originalMaxPositions = "original_max_position_embeddings"
    }

    public init(factor: Float, lowFreqFactor: Float, highFreqFactor: Float, originalMaxPositions: Int) {
        self.factor = factor
        self.lowFreqFactor = lowFreqFactor
        self.highFreqFactor = highFreqFactor
        self.originalMaxPositions = originalMaxPositions
    }

    func validate() throws {
        guard factor >= 1, factor.isFinite, lowFreqFactor > 0, highFreqFactor > lowFreqFactor, highFreqFactor.isFinite,
              originalMaxPositions > 0 else {
            throw ModelConfigError(message: """
                rope_scaling (llama3) needs factor ≥ 1, 0 < low_freq_factor < high_freq_factor and a positive \
                original_max_position_embeddings, got \(factor), \(lowFreqFactor), \(highFreqFactor), \(originalMaxPositions)
                """)
        }
    }

    /// The divisor of each frequency θ^(−2i/D), i < D/2: 1, `factor`, or 1 / ((1 − s) / factor + s)
    /// with s = (originalMaxPositions / wavelength − lowFreqFactor) / (highFreqFactor − lowFreqFactor).
    /// Computed in Float, as both references compute them.
    public func divisors(theta: Float, headDim d: Int) -> [Float] {
        let (old, low, high) = (Float(originalMaxPositions), lowFreqFactor, highFreqFactor)
        return (0..<(d / 2)).map { i in
            let freq = 1 / Foundation.pow(theta, Float(2 * i) / Float(d))
            let wavelength = 2 * Float.pi / freq
            if wavelength < old / high { return 1 }
            if wavelength > old / low { return factor }
            let s = (old / wavelength - low) / (high - low)
            return 1 / ((1 - s) / factor + s)
        }
    }
}

extension ModelConfig {
    /// A lower bound on the parameters this config implies: the embeddings (learned positions
    /// included) and each layer's weight matrices (norms, biases and an untied head not counted);
    /// saturates instead of overflowing.
    /// Loaders compare it with the elements a file holds before building the model, so a config
    /// claiming hidden_size 2^20 is an error, not an attempt to allocate terabytes.
    public var minimumParameterCount: Int {
        func mul(_ xs: Int...) -> Int {
            xs.reduce(1) { acc, x in
                let (p, o) = acc.multipliedReportingOverflow(by: max(0, x))
                return o ? Int.max : p
            }
        }
        func add(_ xs: Int...) -> Int { xs.reduce(0) { acc, x in acc > Int.max - x ? Int.max : acc + x } }
        let perLayer: Int
        switch family {
        case .llama: perLayer = add(mul(2, hiddenSize, hiddenSize), mul(2, hiddenSize, numKVHeads, headDim), mul(3, hiddenSize, intermediateSize))
        case .gpt2: perLayer = add(mul(4, hiddenSize, hiddenSize), mul(2, hiddenSize, intermediateSize))
        }
        let positionTable = positions == .learned ? mul(maxPositions, hiddenSize) : 0
        return add(mul(vocabSize, hiddenSize), positionTable, mul(numLayers, perLayer))
    }

    /// What `family` fixes: LLaMA has RMSNorm, SwiGLU and RoPE (biases vary: Qwen2, mlp_bias); GPT-2 has
    /// LayerNorm, a GELU MLP (tanh or erf), learned positions and one key/value head per head.
    func checkFamily() throws {
        let expected: [(field: String, value: String, required: [String])]
        switch family {
        case .llama:
            expected = [("norm", norm.rawValue, [Norm.rmsNorm.rawValue]), ("mlp", mlp.rawValue, [MLP.swiglu.rawValue]),
                        ("positions", positions.rawValue, [Positions.rope.rawValue])]
        case .gpt2:
            expected = [("norm", norm.rawValue, [Norm.layerNorm.rawValue]),
                        ("mlp", mlp.rawValue, [MLP.geluTanh.rawValue, MLP.gelu.rawValue]),
                        ("positions", positions.rawValue, [Positions.learned.rawValue]),
                        ("num_key_value_heads", "\(numKVHeads)", ["\(numHeads)"])]
        }
        for e in expected where !e.required.contains(e.value) {
            throw ModelConfigError(message: """
                family \(family.rawValue) has \(e.field) \(e.required.joined(separator: " or ")), got \(e.value).
                HINT: the family decides the architecture; build the config with ModelConfig.\(family.rawValue)(…).
                """)
        }
    }
}

/// A configuration whose numbers do not fit together.
public struct ModelConfigError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { "model config: \(message)" }
}
