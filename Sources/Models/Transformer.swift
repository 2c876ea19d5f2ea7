// What both decoder families share: the causal-LM skeleton (embed → blocks → norm → logits), the
// forward context, the attention core (RoPE, KV cache, key/value prefix, fused attention), hook
// points for PEFT methods, the KV cache and the loss. GPT2.swift and Llama.swift hold the rest.

import NN
import TensorCore

/// A block's hidden-state hook (bottleneck adapters): (B, T, C) → (B, T, C).
public protocol HiddenHook: AnyObject {
    func callAsFunction(_ h: Tensor) -> Tensor
}

/// Per-layer keys and values prepended to every attention (prefix tuning).
public protocol AttentionPrefix: AnyObject {
    /// Number of prefix positions P.
    var length: Int { get }
    /// Each layer's (B, P, KVH, D) keys and values, made once per forward pass (a block reads its
    /// own and keeps no state, so it can be recomputed).
    func keysValues(batch: Int) -> [(keys: Tensor, values: Tensor)]
}

/// Virtual-token embeddings prepended to the input embeddings (prompt tuning, P-Tuning).
public protocol InputPrefix: AnyObject {
    /// Number of virtual tokens P.
    var length: Int { get }
    /// (P, C) embeddings.
    func embeddings() -> Tensor
}

/// What one forward pass tells the blocks.
public struct ForwardContext {
    /// Position of the first new token (keys already present: prefix + cache).
    public var positionOffset: Int
    /// (B, S) key visibility for padding, or nil when every key is visible.
    public var keyMask: [Float]?
    public var cache: KVCache?
    /// Each layer's prefix keys and values to concatenate (only without a cache; a cache holds
    /// them already).
    public var prefixKeysValues: [(keys: Tensor, values: Tensor)]?
    public var training: Bool
    public var dropout: Float
    /// The model's generator (dropout masks).
    public var random: RandomSource
}

/// A transformer block of either family.
public protocol DecoderBlock: Module {
    /// Hook points: after the attention branch and after the MLP branch (before the residual add).
    var afterAttention: [HiddenHook] { get set }
    var afterMLP: [HiddenHook] { get set }
    func forward(_ x: Tensor, layer: Int, context: inout ForwardContext) -> Tensor
}

/// Children registered as "0", "1", … (Hugging Face `ModuleList`).
public final class ModuleList<M: Module>: Module {
    public private(set) var items: [M] = []
    public init(_ items: [M]) {
        super.init()
        for (i, m) in items.enumerated() { register(String(i), m) }
        self.items = items
    }
}

/// Keys and values of earlier positions for incremental decoding: (B, capacity, KVH, D) per layer.
public final class KVCache {
    public let batch: Int, kvHeads: Int, headDim: Int
    /// Positions held before the cache grows (it doubles when a step needs more).
    public private(set) var capacity: Int
    var keys: [Tensor], values: [Tensor]
    /// Positions filled (prefix included).
    public private(set) var length = 0
    /// (B, capacity) key visibility.
    var mask: [Float]

    public init(config: ModelConfig, batch: Int, capacity: Int) {
        (self.batch, kvHeads, headDim, self.capacity) = (batch, config.numKVHeads, config.headDim, capacity)
        (keys, values, mask) = KVCache.buffers(layers: config.numLayers, batch: batch, kvHeads: kvHeads, headDim: headDim, capacity: capacity)
    }

    /// A cache of `sources.count` rows, row b a copy of this cache's row `sources[b]` (its keys,
    /// values and visibility; same length and capacity): one prefill of equal prompts serves each
    /// row that decodes from them.
    public func gatheringRows(_ sources: [Int]) -> KVCache {
        precondition(sources.allSatisfy { (0..<batch).contains($0) }, "[KVCache] rows \(sources) outside 0..<\(batch)")
        let out = KVCache(layers: keys.count, batch: sources.count, kvHeads: kvHeads, headDim: headDim, capacity: capacity)
        let rowSize = capacity * kvHeads * headDim  // floats per row of a (B, capacity, KVH, D) buffer
        let filled = length * kvHeads * headDim     // its first `length` positions
        for (from, to) in [(keys, out.keys), (values, out.values)] {
            for (src, dst) in zip(from, to) {
                let (ps, pd) = (src.storage.pointer, dst.storage.pointer)  // both made by Tensor.zeros: contiguous from 0
                for (b, s) in sources.enumerated() { (pd + b * rowSize).update(from: ps + s * rowSize, count: filled) }
            }
        }
        for (b, s) in sources.enumerated() {
            for j in 0..<length { out.mask[b * capacity + j] = mask[s * capacity + j] }
        }
        out.length = length
        return out
    }

    private init(layers: Int, batch: Int, kvHeads: Int, headDim: Int, capacity: Int) {
        (self.batch, self.kvHeads, self.headDim, self.capacity) = (batch, kvHeads, headDim, capacity)
        (keys, values, mask) = KVCache.buffers(layers: layers, batch: batch, kvHeads: kvHeads, headDim: headDim, capacity: capacity)
    }

    /// Zeroed (B, capacity, KVH, D) keys and values per layer, and every position visible.
    private static func buffers(layers: Int, batch: Int, kvHeads: Int, headDim: Int, capacity: Int) -> ([Tensor], [Tensor], [Float]) {
        ((0..<layers).map { _ in Tensor.zeros([batch, capacity, kvHeads, headDim]) },
         (0..<layers).map { _ in Tensor.zeros([batch, capacity, kvHeads, headDim]) },
         [Float](repeating: 1, count: batch * capacity))
    }

    /// Writes (B, T, KVH, D) keys and values at the current length; returns views of all filled
    /// positions, (B, length + T, KVH, D). Call `commit` once every layer has appended.
    func append(layer: Int, k: Tensor, v: Tensor) -> (Tensor, Tensor) {
        let t = k.shape[1]
        if length + t > capacity { grow(to: max(length + t, 2 * capacity)) }
        for (src, dst) in [(k, keys[layer]), (v, values[layer])] {
            Tensor(storage: dst.storage, layout: dst.layout.sliced(axis: 1, start: length, end: length + t)).assign(src)
        }
        let l = keys[layer].layout.sliced(axis: 1, start: 0, end: length + t)
        return (Tensor(storage: keys[layer].storage, layout: l), Tensor(storage: values[layer].storage, layout: l))
    }

    /// Moves the filled positions into buffers of `newCapacity` (every layer at once, so the layers
    /// stay alike; called by the first layer's append that needs the room).
    private func grow(to newCapacity: Int) {
        func moved(_ old: Tensor) -> Tensor {
            let t = Tensor.zeros([batch, newCapacity, kvHeads, headDim])  // (B, capacity, KVH, D)
            if length > 0 {
                Tensor(storage: t.storage, layout: t.layout.sliced(axis: 1, start: 0, end: length))
                    .assign(Tensor(storage: old.storage, layout: old.layout.sliced(axis: 1, start: 0, end: length)))
            }
            return t
        }
        keys = keys.map(moved)
        values = values.map(moved)
        var newMask = [Float](repeating: 1, count: batch * newCapacity)
        for b in 0..<batch { for j in 0..<length { newMask[b * newCapacity + j] = mask[b * capacity + j] } }
        (mask, capacity) = (newMask, newCapacity)
    }

    /// Marks `t` more positions filled, with their (B, t) visibility (nil: all visible).
    func commit(_ t: Int, mask newMask: [Float]?) {
        if let m = newMask {
            for b in 0..<batch { for j in 0..<t { mask[b * capacity + length + j] = m[b * t + j] } }
        }
        length += t
    }

    /// (B, length + t) visibility for a step adding `t` positions with mask `newMask`.
    func keyMask(adding t: Int, _ newMask: [Float]?) -> [Float] {
        var out = [Float](repeating: 1, count: batch * (length + t))
        for b in 0..<batch {
            for j in 0..<length { out[b * (length + t) + j] = mask[b * capacity + j] }
            if let m = newMask { for j in 0..<t { out[b * (length + t) + length + j] = m[b * t + j] } }
        }
        return out
    }
}

/// Attention after the projections: RoPE, cache or prefix, the fused kernel. q (B, T, H, D);
/// k, v (B, T, KVH, D) → (B, T, H·D).
func attentionCore(q: Tensor, k: Tensor, v: Tensor, layer: Int, config: ModelConfig, context: ForwardContext) -> Tensor {
    let (B, T) = (q.shape[0], q.shape[1])
    var (q, k) = (q, k)
    if config.positions == .rope {
        let ropeDivisors = config.ropeFrequencyDivisors  // (D/2), Llama 3.1's scaling; nil for plain RoPE
        q = q.rope(theta: config.ropeTheta, positionOffset: context.positionOffset, seqAxis: 1, divisors: ropeDivisors)
        k = k.rope(theta: config.ropeTheta, positionOffset: context.positionOffset, seqAxis: 1, divisors: ropeDivisors)
    }
    var (kAll, vAll) = (k, v)
    if let cache = context.cache {
        (kAll, vAll) = cache.append(layer: layer, k: k, v: v)  // (B, S, KVH, D)
    } else if let prefix = context.prefixKeysValues {
        let (pk, pv) = prefix[layer]  // (B, P, KVH, D)
        kAll = Tensor.concat([pk, k], axis: 1)
        vAll = Tensor.concat([pv, v], axis: 1)
    }
    let rate = context.training ? config.attentionDropout ?? 0 : 0
    let dropout = rate > 0 ? (rate: rate, seed: context.random.value.next()) : nil
    let o = Tensor.attention(q: q, k: kAll, v: vAll, keyMask: context.keyMask, window: config.slidingWindow,
                             dropout: dropout)  // (B, T, H, D)
    return o.reshaped([B, T, config.hiddenSize])  // (B, T, C)
}

/// Dropout on a residual branch while training (identity otherwise).
func residualDropout(_ x: Tensor, _ context: ForwardContext) -> Tensor {
    context.training && context.dropout > 0 ? x.dropout(context.dropout, rng: &context.random.value) : x
}

/// The model's random generator in a box, so that model dropout and adapter dropout (LoRA,
/// P-Tuning's encoder) draw from one stream in short, non-overlapping accesses, and the trainer
/// seeds one state per step and rank.
public final class RandomSource {
    public var value: RNG
    public init(_ value: RNG) { self.value = value }
}

/// A decoder-only causal language model; GPT2Model and LlamaModel fill in the family parts.
open class CausalLM: Module {
    public let config: ModelConfig
    /// Prompt tuning / P-Tuning slot.
    public var inputPrefix: InputPrefix?
    /// Prefix tuning slot.
    public var attentionPrefix: AttentionPrefix?
    /// Generator for dropout masks (model and adapters share it).
    public let random: RandomSource
    /// The hash of the weights' fp32 values taken before they were released (bf16-only weights,
    /// hashed as they load), or when first asked for matrices kept as packed blocks:
    /// `weightsHash()` gives it. nil otherwise.
    var weightsHashBeforeRelease: String?
    /// Gradient checkpointing: while training, each block's activations are recomputed when the
    /// backward pass reaches the block instead of being kept from the forward pass. The graph
    /// then holds one (B, T, C) input per block plus one block's activations, for a second
    /// forward pass through the blocks. Gradients are those without it, up to the order in which
    /// a few sums are added (prefix tuning's per-layer slices).
    public var gradientCheckpointing = false
    /// The generator's state (the trainer sets it at each step, from the seed, the step and the rank).
    public var rng: RNG {
        get { random.value }
        set { random.value = newValue }
    }

    public init(config: ModelConfig, seed: UInt64) {
        self.config = config
        random = RandomSource(RNG(seed: seed &+ 0x5EED))
        super.init()
    }

    // MARK: family parts (overridden by GPT2Model, LlamaModel)

    /// The blocks in order.
    open var blocks: [DecoderBlock] { fatalError("[CausalLM] \(type(of: self)) must provide blocks") }
    /// Token embeddings (B, T, C) for ids.
    open func embedTokens(_ ids: [Int32], shape: [Int]) -> Tensor { fatalError("[CausalLM] embedTokens") }
    /// The input embedding table (V, C).
    open var tokenEmbeddingTable: Tensor { fatalError("[CausalLM] tokenEmbeddingTable") }
    /// Adds learned positions where the family has them; (B, T, C) → (B, T, C).
    open func addPositions(_ h: Tensor, offset: Int) -> Tensor { h }
    /// The final norm.
    open func finalNorm(_ h: Tensor) -> Tensor { fatalError("[CausalLM] finalNorm") }
    /// Logits (…, V) from final hidden states (…, C).
    open func lmHead(_ h: Tensor) -> Tensor { fatalError("[CausalLM] lmHead") }
    /// The output head's weight (V, C) when the head is that plain product (tied embeddings, or an
    /// lm_head without bias or hooks), so the loss can fuse it; nil otherwise.
    open var plainHeadWeight: Tensor? { nil }

    // MARK: forward

    /// Logits (B, T, V) for `ids` (B·T, row-major), with an optional (B, T) padding mask
    /// (1 = real token, 0 = padding) and an optional cache for incremental decoding. Virtual
    /// tokens of an input prefix are not part of the returned logits.
    public func forward(_ ids: [Int32], batch B: Int, attentionMask: [Float]? = nil, cache: KVCache? = nil) -> Tensor {
        lmHead(hiddenStates(ids, batch: B, attentionMask: attentionMask, cache: cache))  // (B, T, V)
    }

    /// Logits (B, 1, V) of each row's last position only: `forward` for decoding, where the head's
    /// (B, T, V) product over a whole prompt would be computed and thrown away (transformers'
    /// `logits_to_keep=1`).
    public func lastLogits(_ ids: [Int32], batch B: Int, attentionMask: [Float]? = nil, cache: KVCache? = nil) -> Tensor {
        let h = hiddenStates(ids, batch: B, attentionMask: attentionMask, cache: cache)  // (B, T, C)
        let T = h.shape[1]
        return lmHead(h.slice(axis: 1, T - 1, T).contiguous())  // (B, 1, C) → (B, 1, V)
    }

    /// The final hidden states (B, T, C) after the last norm: `forward` without the output head.
    public func hiddenStates(_ ids: [Int32], batch B: Int, attentionMask: [Float]? = nil, cache: KVCache? = nil) -> Tensor {
        check(B > 0 && ids.count % B == 0, "[forward] \(ids.count) ids do not split into \(B) rows")
        let T = ids.count / B
        check(attentionMask == nil || attentionMask!.count == ids.count,
                     "[forward] attention mask has \(attentionMask!.count) values for \(ids.count) ids")
        var h = embedTokens(ids, shape: [B, T])  // (B, T, C)
        var mask = attentionMask
        var virtual = 0
        if let ip = inputPrefix, (cache?.length ?? 0) == 0 {
            virtual = ip.length
            let p = ip.embeddings().reshaped([1, virtual, config.hiddenSize]).expand([B, virtual, config.hiddenSize])
            h = Tensor.concat([p, h], axis: 1)  // (B, P + T, C)
            if let m = attentionMask {
                mask = (0..<B).flatMap { b in [Float](repeating: 1, count: virtual) + m[(b * T)..<((b + 1) * T)] }
            }
        }
        let steps = T + virtual
        var context = ForwardContext(positionOffset: 0, keyMask: nil, cache: cache, prefixKeysValues: nil,
                                     training: isTraining, dropout: config.dropout, random: random)
        if let cache {
            if cache.length == 0, let ap = attentionPrefix {
                // The prefix goes into the cache once, as already-computed keys and values.
                for (l, kv) in prefixKeysValues(ap, batch: B).enumerated() {
                    _ = cache.append(layer: l, k: kv.keys, v: kv.values)
                }
                cache.commit(ap.length, mask: nil)
            }
            context.positionOffset = cache.length
            context.keyMask = (mask == nil && !cache.mask.contains(0)) ? nil : cache.keyMask(adding: steps, mask)
        } else if let ap = attentionPrefix {
            context.prefixKeysValues = prefixKeysValues(ap, batch: B)
            context.positionOffset = ap.length
            if let m = mask {
                context.keyMask = (0..<B).flatMap { b in [Float](repeating: 1, count: ap.length) + m[(b * steps)..<((b + 1) * steps)] }
            }
        } else {
            context.keyMask = mask
        }
        h = addPositions(h, offset: context.positionOffset)
        let embeddingRate = config.embeddingDropout ?? config.dropout
        if context.training && embeddingRate > 0 { h = h.dropout(embeddingRate, rng: &random.value) }
        for (l, block) in blocks.enumerated() {
            if gradientCheckpointing && cache == nil && Autograd.isRecording {
                h = recomputedBlock(block, layer: l, input: h, context: context)
            } else {
                h = block.forward(h, layer: l, context: &context)
            }
        }
        cache?.commit(steps, mask: mask)
        if virtual > 0 { h = h.slice(axis: 1, virtual, steps) }  // (B, T, C)
        return finalNorm(h)
    }

    /// Every layer's prefix keys and values, checked to be one pair per layer.
    private func prefixKeysValues(_ prefix: AttentionPrefix, batch B: Int) -> [(keys: Tensor, values: Tensor)] {
        let kv = prefix.keysValues(batch: B)
        check(kv.count == config.numLayers,
              "[AttentionPrefix] \(type(of: prefix)) gave keys and values for \(kv.count) layers; the model has \(config.numLayers)")
        return kv
    }

    /// A block whose activations are dropped after its forward pass and recomputed when the
    /// backward pass reaches it (`Tensor.recomputed`). The rerun draws the same dropout masks:
    /// the generator is set back to where the first run started, then put back where it was.
    private func recomputedBlock(_ block: DecoderBlock, layer l: Int, input x: Tensor, context: ForwardContext) -> Tensor {
        let random = self.random, start = random.value
        var rerun = false
        return Tensor.recomputed("block \(l)") {
            let resume = random.value
            if rerun { random.value = start }
            defer {
                if rerun { random.value = resume }
                rerun = true
            }
            var c = context
            return block.forward(x, layer: l, context: &c)
        }
    }

    /// Mean cross-entropy of next-token prediction. `targets` (B·T) holds the id expected at each
    /// position (already shifted) or -100 to ignore it. A plain output head is fused with the
    /// loss (`Tensor.linearCrossEntropy`): the (B, T, V) logits are never stored. A head kept as
    /// packed blocks (`Tensor.keepPackedOnly`) goes through its product, logits stored.
    public func loss(_ ids: [Int32], targets: [Int32], batch: Int, attentionMask: [Float]? = nil) -> Tensor {
        let h = hiddenStates(ids, batch: batch, attentionMask: attentionMask)  // (B, T, C)
        if let w = plainHeadWeight, w.isContiguous, w.packedWeights == nil {
            return Tensor.linearCrossEntropy(h, weight: w, targets: targets)
        }
        return lmHead(h).crossEntropy(targets: targets)
    }

    /// Next-token targets for rows of `ids` (B·T): position t predicts ids[t + 1]; the last
    /// position of each row, and positions whose next token is padding, are ignored (-100).
    public static func shiftedTargets(_ ids: [Int32], batch B: Int, attentionMask: [Float]? = nil) -> [Int32] {
        let T = ids.count / B
        var out = [Int32](repeating: -100, count: ids.count)
        for b in 0..<B {
            for t in 0..<(T - 1) where attentionMask?[b * T + t + 1] ?? 1 != 0 {
                out[b * T + t] = ids[b * T + t + 1]
            }
        }
        return out
    }
}
