// GPT-2 family: learned absolute positions, pre-LayerNorm blocks, fused qkv projection (c_attn),
// GELU MLP, Conv1D weights stored (in, out), tied input/output embeddings. Parameter names equal
// the Hugging Face keys: transformer.wte.weight, transformer.h.0.attn.c_attn.weight, …

import TensorCore
import NN
/// GPT-2 attention: c_attn (C → 3C) then c_proj (C → C), both Conv1D.
public final class GPT2Attention: Module {
    public let cAttn: Linear, cProj: Linear
    let config: ModelConfig

    init(_ config: ModelConfig, rng: inout RNG) {
        self.config = config
        let c = config.hiddenSize
        cAttn = Linear(c, 3 * c, bias: config.attentionBias, fanInFanOut: true, rng: &rng)
        // GPT-2 scales residual projections by 1/√(2L) at initialization.
        cProj = Linear(c, c, bias: config.projectionBias, fanInFanOut: true,
                       std: 0.02 / Float(2 * config.numLayers).squareRoot(), rng: &rng)
        super.init()
        register("c_attn", cAttn)
        register("c_proj", cProj)
    }

    func callAsFunction(_ x: Tensor, layer: Int, context: ForwardContext) -> Tensor {
        let (B, T) = (x.shape[0], x.shape[1])
        let (H, D) = (config.numHeads, config.headDim)
        let qkv = cAttn(x).reshaped([B, T, 3, H, D])  // (B, T, 3, H, D)
        // Each slot is a strided (B, T, H, D) view with row stride 3C: no copy.
        let q = qkv.slice(axis: 2, 0, 1).reshaped([B, T, H, D])
        let k = qkv.slice(axis: 2, 1, 2).reshaped([B, T, H, D])
        let v = qkv.slice(axis: 2, 2, 3).reshaped([B, T, H, D])
        return cProj(attentionCore(q: q, k: k, v: v, layer: layer, config: config, context: context))
    }
}

/// GPT-2 MLP: c_fc (C → 4C), GELU, c_proj (4C → C).
public final class GPT2MLP: Module {
    public let cFc: Linear, cProj: Linear
    let act: ModelConfig.MLP

    init(_ config: ModelConfig, rng: inout RNG) {
        let c = config.hiddenSize
        act = config.mlp
        cFc = Linear(c, config.intermediateSize, bias: config.projectionBias, fanInFanOut: true, rng: &rng)
        cProj = Linear(config.intermediateSize, c, bias: config.projectionBias, fanInFanOut: true,
                       std: 0.02 / Float(2 * config.numLayers).squareRoot(), rng: &rng)
        super.init()
        register("c_fc", cFc)
        register("c_proj", cProj)
    }

    func callAsFunction(_ x: Tensor) -> Tensor {
        let h = cFc(x)
        let a = act == .gelu ? h.gelu() : h.geluTanh()
        defer { a.dropValuesUntilRead() }  // (…, 4C): recomputed from c_fc's output where the backward reads it
        return cProj(a)
    }
}

/// ln_1 → attn → residual; ln_2 → mlp → residual.
public final class GPT2Block: Module, DecoderBlock {
    public let ln1: LayerNorm, attn: GPT2Attention, ln2: LayerNorm, mlp: GPT2MLP
    public var afterAttention: [HiddenHook] = []
    public var afterMLP: [HiddenHook] = []

    init(_ config: ModelConfig, rng: inout RNG) {
        ln1 = LayerNorm(config.hiddenSize, eps: config.normEps)
        attn = GPT2Attention(config, rng: &rng)
        ln2 = LayerNorm(config.hiddenSize, eps: config.normEps)
        mlp = GPT2MLP(config, rng: &rng)
        super.init()
        register("ln_1", ln1)
        register("attn", attn)
        register("ln_2", ln2)
        register("mlp", mlp)
    }

    public func forward(_ x: Tensor, layer: Int, context: inout ForwardContext) -> Tensor {
        // Each norm's output is dropped after its projection reads it and recomputed from the
        // residual (kept for the norm's own backward) where a weight gradient needs it.
        let n1 = ln1(x)  // (B, T, C)
        var a = attn(n1, layer: layer, context: context)
        n1.dropValuesUntilRead()
        for hook in afterAttention { a = hook(a) }
        let h = x + residualDropout(a, context)
        let n2 = ln2(h)  // (B, T, C)
        var m = mlp(n2)
        n2.dropValuesUntilRead()
        for hook in afterMLP { m = hook(m) }
        return h + residualDropout(m, context)
    }
}

/// The GPT-2 body under the key prefix `transformer.`.
public final class GPT2Body: Module {
    public let wte: Embedding, wpe: Embedding, h: ModuleList<GPT2Block>, lnF: LayerNorm

    init(_ config: ModelConfig, rng: inout RNG) {
        wte = Embedding(config.vocabSize, config.hiddenSize, rng: &rng)
        wpe = Embedding(config.maxPositions, config.hiddenSize, std: 0.01, rng: &rng)
        h = ModuleList((0..<config.numLayers).map { _ in GPT2Block(config, rng: &rng) })
        lnF = LayerNorm(config.hiddenSize, eps: config.normEps)
        super.init()
        register("wte", wte)
        register("wpe", wpe)
        register("h", h)
        register("ln_f", lnF)
    }
}

/// GPT-2 causal language model (Hugging Face `GPT2LMHeadModel` keys; the head is tied to wte).
public final class GPT2Model: CausalLM {
    public let transformer: GPT2Body
    /// Separate output projection when embeddings are not tied.
    public let lmHeadLayer: Linear?

    public init(_ config: ModelConfig, seed: UInt64 = 0) {
        check(config.family == .gpt2, "[GPT2Model] config family is \(config.family)")
        must { try config.validate() }
        var rng = RNG(seed: seed)
        transformer = GPT2Body(config, rng: &rng)
        lmHeadLayer = config.tieWordEmbeddings ? nil : Linear(config.hiddenSize, config.vocabSize, bias: false, rng: &rng)
        super.init(config: config, seed: seed)
        register("transformer", transformer)
        if let l = lmHeadLayer { register("lm_head", l) }
    }

    public override var blocks: [DecoderBlock] { transformer.h.items }
    public override var tokenEmbeddingTable: Tensor { transformer.wte.weight }
    public override func embedTokens(_ ids: [Int32], shape: [Int]) -> Tensor { transformer.wte(ids, shape: shape) }

    public override func addPositions(_ h: Tensor, offset: Int) -> Tensor {
        let T = h.shape[1]
        check(offset + T <= config.maxPositions,
                     "[GPT2Model] positions \(offset)..<\(offset + T) exceed max_position_embeddings \(config.maxPositions)")
        return h + transformer.wpe.weight.slice(axis: 0, offset, offset + T)  // (B, T, C) + (T, C)
    }

    public override func finalNorm(_ h: Tensor) -> Tensor { transformer.lnF(h) }

    public override func lmHead(_ h: Tensor) -> Tensor {
        lmHeadLayer.map { $0(h) } ?? h.matmul(transformer.wte.weight.transposed())  // (…, V)
    }
    public override var plainHeadWeight: Tensor? {
        guard let l = lmHeadLayer else { return transformer.wte.weight }
        return l.hooks.isEmpty && l.bias == nil && !l.fanInFanOut ? l.weight : nil
    }
}

/// Exits with the message of a failed check (programming errors in model construction).
func must(_ body: () throws -> Void) {
    do { try body() } catch { fatalError("\(error)") }
}
