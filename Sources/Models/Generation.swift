// Text generation: greedy or sampled (temperature, top-k, top-p) decoding with a KV cache, seeded,
// stopping at stop tokens; also with prefixes attached. `useCache: false` recomputes the whole
// sequence each step (the reference the cached path is tested against).

import Foundation
import TensorCore
import NN

/// How to pick each next token.
public struct SamplingOptions: Sendable {
    public var maxNewTokens: Int
    /// 0 = greedy (argmax).
    public var temperature: Float
    /// Keep only the k most likely tokens (0 = off).
    public var topK: Int
    /// Keep the smallest set whose probability reaches p (1 = off).
    public var topP: Float
    /// Drop tokens less likely than `minP` times the most likely one, after the temperature (0 = off).
    public var minP: Float = 0
    public var seed: UInt64
    /// Generation stops after emitting one of these.
    public var stopTokens: Set<Int32>

    public init(maxNewTokens: Int = 64, temperature: Float = 0, topK: Int = 0, topP: Float = 1, seed: UInt64 = 0,
                stopTokens: Set<Int32> = []) {
        self.maxNewTokens = maxNewTokens
        self.temperature = temperature
        self.topK = topK
        self.topP = topP
        self.seed = seed
        self.stopTokens = stopTokens
    }
}

/// Number format of the frozen weights in decoding products.
public enum DecodePrecision: String, Sendable, CaseIterable {
    /// fp32 weights throughout (the default).
    case fp32
    /// bf16 copies of the frozen matrix weights for products of at most `BF16Copy.maxRows` rows
    /// (fp32 accumulation): about half the bytes read per token. Needs AVX512-BF16 or AMX.
    case bf16
    /// Only the bf16 copies are kept: each frozen matrix's fp32 values are released as it loads,
    /// so the model takes about half the memory, and every product without a gradient reads the
    /// copies (prompts too, at about 0.6× the fp32 rate). Such a model generates text and serves
    /// adapters that leave the base's matrices alone (not DoRA, no `modules_to_save` on them); it
    /// cannot be trained, merged or saved.
    case bf16Only = "bf16-only"
}

extension CausalLM {
    /// The right operand of each frozen matrix product by parameter name, and whether its fp32
    /// values can go once it has a bf16 copy: every `Linear` weight, read as (in, out), yes; a tied
    /// output head's embedding, read as (C, V), no (token lookups read its rows).
    func bf16Operands() -> [String: (weight: Tensor, operand: Tensor, releasable: Bool)] {
        var linear: [ObjectIdentifier: Tensor] = [:]
        for (_, m) in namedModules() {
            guard let l = m as? Linear else { continue }
            linear[ObjectIdentifier(l.weight.storage)] = l.fanInFanOut ? l.weight : l.weight.transposed()  // the right operand of `Linear.base`, (in, out)
        }
        let head = plainHeadWeight
        var out: [String: (weight: Tensor, operand: Tensor, releasable: Bool)] = [:]
        var seen = Set<ObjectIdentifier>()
        for (name, p) in namedParameters() where seen.insert(ObjectIdentifier(p.storage)).inserted {
            if let operand = linear[ObjectIdentifier(p.storage)] {
                out[name] = (p, operand, true)
            } else if let w = head, w.storage === p.storage {
                out[name] = (p, w.transposed(), false)  // (C, V)
            }
        }
        return out
    }

    /// Keeps bf16 copies of the frozen matrix weights (every frozen `Linear` and a tied output
    /// head) for decoding: products of a few rows without a graph then read the copies
    /// (`Tensor.keepBF16Copy`), training and prompt-sized products the fp32 weights. Call it once
    /// the weights are final (loaded, adapters merged). `releasingFP32` frees each `Linear`'s fp32
    /// values after its copy is made (`DecodePrecision.bf16Only`; loading with `bf16OnlyLoader`
    /// never holds them all at once; the token embedding then keeps bf16 rows alone,
    /// `keepBF16RowsOnly`). Returns the bytes the copies take.
    @discardableResult
    public func keepBF16Weights(releasingFP32: Bool = false) -> Int {
        if releasingFP32 && !hasReleasedWeights { weightsHashBeforeRelease = weightsHash() }
        var bytes = 0
        for (_, (weight, operand, releasable)) in bf16Operands() where !weight.requiresGrad {
            operand.keepBF16Copy(releasingFP32: releasingFP32 && releasable)
            bytes += operand.bf16Copy?.byteCount ?? 0
        }
        if releasingFP32 {
            let table = tokenEmbeddingTable
            if !table.requiresGrad {
                table.keepBF16RowsOnly()
                bytes += 2 * table.count
            }
            releaseFreeMemory()
        }
        return bytes
    }

    /// Keeps bf16 training copies of the frozen matrix weights (every frozen `Linear` and a tied
    /// output head; `Tensor.keepBF16Copy(forTraining: true)`): their products and input gradients
    /// then run in bf16 with fp32 accumulation, in training and evaluation alike, while what trains
    /// (adapters), attention, norms and the loss stay fp32. Call it after attaching adapters: only
    /// what is frozen then gets copies. `releasingFP32` frees each frozen `Linear`'s fp32 values
    /// once its copies are made, so the two copies take no more than fp32 did; the model then
    /// trains and evaluates but cannot be merged or saved (the token embedding keeps its values).
    /// Returns the bytes the copies take (twice a bf16 copy each: one per side it is read from).
    @discardableResult
    public func keepBF16TrainingCopies(releasingFP32: Bool = false) -> Int {
        if releasingFP32 && !hasReleasedWeights { weightsHashBeforeRelease = weightsHash() }
        var bytes = 0
        for (_, (weight, operand, releasable)) in bf16Operands() where !weight.requiresGrad {
            operand.keepBF16Copy(releasingFP32: releasingFP32 && releasable, forTraining: true)
            bytes += (operand.bf16Copy?.byteCount ?? 0) + (operand.bf16GradientCopy?.byteCount ?? 0)
        }
        if releasingFP32 { releaseFreeMemory() }
        return bytes
    }

    /// For `loadParameters(didLoad:)` on this model, frozen before loading: keeps each frozen
    /// matrix as a bf16 copy as soon as it is loaded, releasing its fp32 values, so the model's
    /// fp32 matrices are never all in memory at once. The token embedding keeps its values as bf16
    /// rows for lookups (`keepBF16RowsOnly`; tied to the head, beside the head's copy).
    /// Loaders go in name order, as `weightsHash()` does, so each parameter is hashed as it
    /// loads, before any value is released.
    public func bf16OnlyLoader() -> (String, Tensor) -> Void {
        let operands = bf16Operands()
        var hasher = WeightsHasher()
        let table = tokenEmbeddingTable.storage
        return { [unowned self] name, t in
            hasher.add(name, t)
            weightsHashBeforeRelease = hasher.value
            var released = false
            if let (_, operand, releasable) = operands[name] {
                operand.keepBF16Copy(releasingFP32: releasable)
                released = releasable
            }
            if t.storage === table && !t.requiresGrad {  // token lookups read bf16 rows
                t.keepBF16RowsOnly()
                released = true
            }
            if released { releaseFreeMemory() }  // the freed pages go back to the system now
        }
    }

    /// Whether some weight keeps only its bf16 copy (`DecodePrecision.bf16Only`).
    public var hasReleasedWeights: Bool { namedParameters().contains { $0.1.storage.valuesReleased } }

    /// A hash of every parameter's name and bits in name order (FNV-1a, 64-bit, hex), which
    /// adapters record to recognise their base; for bf16-only weights, the one taken before their
    /// fp32 values were released.
    public func weightsHash() -> String {
        if hasReleasedWeights, let h = weightsHashBeforeRelease { return h }
        var hasher = WeightsHasher()
        for (name, t) in namedParameters().sorted(by: { $0.0 < $1.0 }) { hasher.add(name, t) }
        return hasher.value
    }

    /// New tokens that fit after a prompt of `promptLength` tokens: learned absolute positions end
    /// at max_position_embeddings, virtual tokens included; nil under RoPE, which has no end.
    public func newTokenRoom(promptLength: Int) -> Int? {
        guard config.positions == .learned else { return nil }
        return config.maxPositions - (attentionPrefix?.length ?? 0) - (inputPrefix?.length ?? 0) - promptLength
    }

    /// Continues `prompt` (one sequence) and returns the new tokens (the stop token included).
    public func generate(_ prompt: [Int32], _ options: SamplingOptions, useCache: Bool = true) -> [Int32] {
        check(!prompt.isEmpty, "[generate] the prompt is empty")
        check(options.maxNewTokens >= 0, "[generate] maxNewTokens must be 0 or more, got \(options.maxNewTokens)")
        let wasTraining = isTraining
        eval()
        defer { train(wasTraining) }
        var rng = RNG(seed: options.seed)
        let extra = (attentionPrefix?.length ?? 0) + (inputPrefix?.length ?? 0)
        // Learned absolute positions end at max_position_embeddings: generation stops when the
        // sequence (virtual tokens, prompt and new tokens) fills them, as `serve` counts a context
        // (prompt + max_tokens ≤ its length, as vLLM does). The last new token would need no
        // position of its own, but one more would make the two disagree.
        let limit = newTokenRoom(promptLength: prompt.count) ?? options.maxNewTokens
        check(options.maxNewTokens == 0 || limit > 0, "[generate] the prompt (\(prompt.count) tokens\(extra > 0 ? " + \(extra) virtual" : "")) "
              + "fills the model's \(config.maxPositions) learned positions: no token can follow")
        let steps = min(options.maxNewTokens, max(0, limit))
        // Sized for the tokens that can come, at most 1,024 of them at first: the cache doubles when
        // a reply runs longer, so a large maxNewTokens that EOS cuts short takes no memory.
        let cache = useCache ? KVCache(config: config, batch: 1, capacity: extra + prompt.count + min(steps, 1024)) : nil
        var out: [Int32] = []
        var sequence = prompt
        return withNoGrad {
            var next = prompt
            for _ in 0..<steps {
                // Only the last position's logits: the head over a whole prompt would be thrown away.
                let logits = useCache ? lastLogits(next, batch: 1, cache: cache) : lastLogits(sequence, batch: 1)  // (1, 1, V)
                let last = logits.toArray()
                let token = Int32(sampleToken(last, options, &rng))
                out.append(token)
                sequence.append(token)
                next = [token]
                if options.stopTokens.contains(token) { break }
            }
            return out
        }
    }
}

/// Picks a token index from `logits` (V) under the sampling options.
public func sampleToken(_ logits: [Float], _ o: SamplingOptions, _ rng: inout RNG) -> Int {
    if o.temperature <= 0 {
        var best = 0
        for i in 1..<logits.count where logits[i] > logits[best] { best = i }
        return best
    }
    // Candidates sorted by logit, cut by top-k (ties with the k-th kept, as transformers does), then
    // softmax at the temperature, then min-p (as vLLM orders them), then top-p.
    var order = Array(logits.indices).sorted { logits[$0] > logits[$1] }
    if o.topK > 0 && o.topK < order.count {
        let kth = logits[order[o.topK - 1]]
        order = Array(order.prefix { logits[$0] >= kth })
    }
    let mx = logits[order[0]]
    var probs = order.map { Foundation.exp(Double((logits[$0] - mx) / o.temperature)) }
    let total = probs.reduce(0, +)
    probs = probs.map { $0 / total }
    if o.minP > 0 {
        let floor = Double(o.minP) * probs[0]  // probs[0] is the most likely
        let keep = probs.prefix { $0 >= floor }.count
        order = Array(order.prefix(keep))
        probs = Array(probs.prefix(keep))
        let s = probs.reduce(0, +)
        probs = probs.map { $0 / s }
    }
    if o.topP < 1 {
        var acc = 0.0, keep = 0
        while keep < probs.count { acc += probs[keep]; keep += 1; if acc >= Double(o.topP) { break } }
        order = Array(order.prefix(keep))
        probs = Array(probs.prefix(keep))
        let s = probs.reduce(0, +)
        probs = probs.map { $0 / s }
    }
    let u = rng.nextDouble()
    var acc = 0.0
    for (i, p) in probs.enumerated() {
        acc += p
        if u < acc { return order[i] }
    }
    return order[order.count - 1]
}

/// A token's log-probability at one position, from the model's raw logits (log-softmax, before
/// temperature, top-p or penalties), with the most likely tokens there (`tokenLogprob`).
public struct TokenLogprob: Sendable {
    public var token: Int32
    public var logprob: Float
    /// The most likely tokens at this position with their log-probabilities, most likely first
    /// (ties: lower id first); as many as were asked for.
    public var top: [(token: Int32, logprob: Float)]

    public init(token: Int32, logprob: Float, top: [(token: Int32, logprob: Float)] = []) {
        (self.token, self.logprob, self.top) = (token, logprob, top)
    }
}

/// `token`'s entry in one position's log-probabilities (a log-softmax row of V, e.g.
/// `Tensor.logSoftmax`), with the `top` most likely tokens and theirs.
public func tokenLogprob(logprobs: UnsafeBufferPointer<Float>, token: Int32, top k: Int) -> TokenLogprob {
    let V = logprobs.count
    precondition(V > 0 && token >= 0 && Int(token) < V, "[tokenLogprob] token \(token) is outside the \(V) log-probabilities")
    // The k best by insertion into a sorted list of at most k (k is small: at most 20 in the API).
    var best: [(token: Int32, logprob: Float)] = []
    if k > 0 {
        best.reserveCapacity(k + 1)
        for i in 0..<V {
            let x = logprobs[i]
            if best.count == k, let last = best.last, !(x > last.logprob) { continue }
            var j = best.count
            while j > 0 && x > best[j - 1].logprob { j -= 1 }
            best.insert((Int32(i), x), at: j)
            if best.count > k { best.removeLast() }
        }
    }
    return TokenLogprob(token: token, logprob: logprobs[Int(token)], top: best)
}

/// FNV-1a (64-bit) over parameter names and float bit patterns, fed one parameter at a time.
struct WeightsHasher {
    private var h: UInt64 = 0xcbf2_9ce4_8422_2325

    mutating func add(_ name: String, _ t: Tensor) {
        let prime: UInt64 = 0x100_0000_01b3
        for byte in name.utf8 { h = (h ^ UInt64(byte)) &* prime }
        let c = t.isContiguous ? t : t.copy()
        let p = UnsafeRawPointer(c.basePointer).assumingMemoryBound(to: UInt32.self)
        for i in 0..<c.count { h = (h ^ UInt64(p[i])) &* prime }
    }

    var value: String { String(h, radix: 16) }
}
