// LLaMA family (Llama, Mistral, Qwen2, SmolLM): RoPE, RMSNorm, SwiGLU MLP, grouped-query attention,
// optional q/k/v bias (Qwen2), optionally tied embeddings. Parameter names equal the Hugging Face
// keys: model.embed_tokens.weight, model.layers.0.self_attn.q_proj.weight, …, lm_head.weight.

import TensorCore
import NN

/// q_proj, k_proj, v_proj (KVH·D outputs each for k and v), o_proj.
public final class LlamaAttention: Module {
    public let qProj: Linear, kProj: Linear, vProj: Linear, oProj: Linear
    let config: ModelConfig

    init(_ config: ModelConfig, rng: inout RNG) {
        self.config = config
        let c = config.hiddenSize
        qProj = Linear(c, c, bias: config.attentionBias, rng: &rng)
        kProj = Linear(c, config.kvDim, bias: config.attentionBias, rng: &rng)
        vProj = Linear(c, config.kvDim, bias: config.attentionBias, rng: &rng)
        oProj = Linear(c, c, bias: config.projectionBias, std: 0.02 / Float(2 * config.numLayers).squareRoot(), rng: &rng)
        super.init()
        register("q_proj", qProj)
        register("k_proj", kProj)
        register("v_proj", vProj)
        register("o_proj", oProj)
    }

    func callAsFunction(_ x: Tensor, layer: Int, context: ForwardContext) -> Tensor {
        let (B, T) = (x.shape[0], x.shape[1])
        let (H, KVH, D) = (config.numHeads, config.numKVHeads, config.headDim)
        let qkv = Linear.apply([qProj, kProj, vProj], to: x)  // LoRA branches share one x Aᵀ GEMM
        let q = qkv[0].reshaped([B, T, H, D])  // (B, T, H, D)
        let k = qkv[1].reshaped([B, T, KVH, D])  // (B, T, KVH, D)
        let v = qkv[2].reshaped([B, T, KVH, D])
        return oProj(attentionCore(q: q, k: k, v: v, layer: layer, config: config, context: context))
    }
}

/// down_proj(silu(gate_proj(x)) ⊙ up_proj(x)).
public final class LlamaMLP: Module {
    public let gateProj: Linear, upProj: Linear, downProj: Linear

    init(_ config: ModelConfig, rng: inout RNG) {
        let (c, f) = (config.hiddenSize, config.intermediateSize)
        gateProj = Linear(c, f, bias: config.projectionBias, rng: &rng)
        upProj = Linear(c, f, bias: config.projectionBias, rng: &rng)
        downProj = Linear(f, c, bias: config.projectionBias, std: 0.02 / Float(2 * config.numLayers).squareRoot(), rng: &rng)
        super.init()
        register("gate_proj", gateProj)
        register("up_proj", upProj)
        register("down_proj", downProj)
    }

    func callAsFunction(_ x: Tensor) -> Tensor {
        let gateUp = Linear.apply([gateProj, upProj], to: x)  // (…, F) each
        let act = Tensor.swiglu(gate: gateUp[0], up: gateUp[1])
        defer { act.dropValuesUntilRead() }  // (…, F): recomputed from gate and up where the backward reads it
        return downProj(act)
    }
}

/// input_layernorm → self_attn → residual; post_attention_layernorm → mlp → residual.
public final class LlamaBlock: Module, DecoderBlock {
    public let inputLayernorm: RMSNorm, selfAttn: LlamaAttention, postAttentionLayernorm: RMSNorm, mlp: LlamaMLP
    public var afterAttention: [HiddenHook] = []
    public var afterMLP: [HiddenHook] = []

    init(_ config: ModelConfig, rng: inout RNG) {
        inputLayernorm = RMSNorm(config.hiddenSize, eps: config.normEps)
        selfAttn = LlamaAttention(config, rng: &rng)
        postAttentionLayernorm = RMSNorm(config.hiddenSize, eps: config.normEps)
        mlp = LlamaMLP(config, rng: &rng)
        super.init()
        register("input_layernorm", inputLayernorm)
        register("self_attn", selfAttn)
        register("post_attention_layernorm", postAttentionLayernorm)
        register("mlp", mlp)
    }

    public func forward(_ x: Tensor, layer: Int, context: inout ForwardContext) -> Tensor {
        // Each norm's output is dropped after its projections read it and recomputed from the
        // residual (kept for the norm's own backward) where a weight gradient needs it.
        let n1 = inputLayernorm(x)  // (B, T, C)
        var a = selfAttn(n1, layer: layer, context: context)
        n1.dropValuesUntilRead()
        for hook in afterAttention { a = hook(a) }
        let h = x + residualDropout(a, context)
        let n2 = postAttentionLayernorm(h)  // (B, T, C)
        var m = mlp(n2)
        n2.dropValuesUntilRead()
        for hook in afterMLP { m = hook(m) }
        return h + residualDropout(m, context)
    }
}

/// The LLaMA body under the key prefix `model.`.
public final class LlamaBody: Module {
    public let embedTokens: Embedding, layers: ModuleList<LlamaBlock>, norm: RMSNorm

    init(_ config: ModelConfig, rng: inout RNG) {
        embedTokens = Embedding(config.vocabSize, config.hiddenSize, rng: &rng)
        layers = ModuleList((0..<config.numLayers).map { _ in LlamaBlock(config, rng: &rng) })
        norm = RMSNorm(config.hiddenSize, eps: config.normEps)
        super.init()
        register("embed_tokens", embedTokens)
        register("layers", layers)
        register("norm", norm)
    }
}

/// LLaMA-family causal language model (Hugging Face `LlamaForCausalLM` keys).
public final class LlamaModel: CausalLM {
    public let model: LlamaBody
    /// lm_head when embeddings are not tied.
    public let lmHeadLayer: Linear?

    public init(_ config: ModelConfig, seed: UInt64 = 0) {
        check(config.family == .llama, "[LlamaModel] config family is \(config.family)")
        must { try config.validate() }
        var rng = RNG(seed: seed)
        model = LlamaBody(config, rng: &rng)
        lmHeadLayer = config.tieWordEmbeddings ? nil : Linear(config.hiddenSize, config.vocabSize, bias: false, rng: &rng)
        super.init(config: config, seed: seed)
        register("model", model)
        if let l = lmHeadLayer { register("lm_head", l) }
    }

    public override var blocks: [DecoderBlock] { model.layers.items }
    public override var tokenEmbeddingTable: Tensor { model.embedTokens.weight }
    public override func embedTokens(_ ids: [Int32], shape: [Int]) -> Tensor { model.embedTokens(ids, shape: shape) }
    public override func finalNorm(_ h: Tensor) -> Tensor { model.norm(h) }
    public override func lmHead(_ h: Tensor) -> Tensor {
        lmHeadLayer.map { $0(h) } ?? h.matmul(model.embedTokens.weight.transposed())  // (…, V)
    }
    public override var plainHeadWeight: Tensor? {
        guard let l = lmHeadLayer else { return model.embedTokens.weight }
        return l.hooks.isEmpty && l.bias == nil && !l.fanInFanOut ? l.weight : nil
    }
}

/// Builds the model of `config`'s family.
public func makeModel(_ config: ModelConfig, seed: UInt64 = 0) -> CausalLM {
    switch config.family {
    case .gpt2: GPT2Model(config, seed: seed)
    case .llama: LlamaModel(config, seed: seed)
    }
}
