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
    /// (fp32 accumulation): about half the bytes read per token. Native on AVX512-BF16 or AMX,
    /// emulated elsewhere (the same products; `BF16Copy`).
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
        if releasingFP32 && weightsHashBeforeRelease == nil { weightsHashBeforeRelease = weightsHash() }
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
        if releasingFP32 && weightsHashBeforeRelease == nil { weightsHashBeforeRelease = weightsHash() }
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
        let hash = hashingLoader()
        let table = tokenEmbeddingTable.storage
        return { name, t in
            hash(name, t)
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

    /// For a loader that lets Float32 values go as it loads (bf16-only weights), called with each
    /// parameter as soon as it is loaded, in name order: hashes it, so that `weightsHash()` stays
    /// the hash of the whole Float32 model. Kept quantized blocks need none: they decode to the
    /// same values whenever the hash is asked for.
    public func hashingLoader() -> (String, Tensor) -> Void {
        var hasher = WeightsHasher()
        return { [unowned self] name, t in
            hasher.add(name, t)
            weightsHashBeforeRelease = hasher.value
        }
    }

    /// Whether some weight keeps only its bf16 copy or packed blocks (`DecodePrecision.bf16Only`,
    /// `Tensor.keepPackedOnly`).
    public var hasReleasedWeights: Bool { namedParameters().contains { $0.1.storage.valuesReleased } }

    /// Whether some matrix keeps only packed blocks (`loadModel(keepQuantized: true)`).
    public var hasPackedWeights: Bool { namedParameters().contains { $0.1.storage.packed != nil } }

    /// A hash of every parameter's name and bits in name order (FNV-1a, 64-bit, hex), which
    /// adapters record to recognise their base; for bf16-only weights, the one taken before their
    /// fp32 values were released. Matrices kept as packed blocks are hashed as the Float32 values
    /// they decode to (a slab at a time), so a `--keep-quantized` load hashes only when first
    /// asked; the hash is then kept, as for bf16-only weights (no second pass per adapter).
    public func weightsHash() -> String {
        if hasReleasedWeights, let h = weightsHashBeforeRelease { return h }
        var hasher = WeightsHasher()
        for (name, t) in namedParameters().sorted(by: { $0.0 < $1.0 }) { hasher.add(name, t) }
        if hasPackedWeights { weightsHashBeforeRelease = hasher.value }
        return hasher.value
    }

    /// Positions a prompt-learning adapter's virtual tokens take before the prompt (prefix and
    /// prompt tuning, P-Tuning); 0 without one.
    public var virtualTokenCount: Int { (attentionPrefix?.length ?? 0) + (inputPrefix?.length ?? 0) }

    /// New tokens that fit after a prompt of `promptLength` tokens: learned absolute positions end
    /// at max_position_embeddings, virtual tokens included; nil under RoPE, which has no end.
    public func newTokenRoom(promptLength: Int) -> Int? {
        guard config.positions == .learned else { return nil }
        return config.maxPositions - virtualTokenCount - promptLength
    }

    /// Continues `prompt` (one sequence) and returns the new tokens (the stop token included).
    public func generate(_ prompt: [Int32], _ options: SamplingOptions, useCache: Bool = true) -> [Int32] {
        generate(prompt, options, useCache: useCache, until: { _ in false })
    }

    /// Continues `prompt` (one sequence) and returns the new tokens (the stop token included),
    /// asking `done` after each new token whether the tokens so far end the reply (a stop text
    /// found in their decoded text): decoding stops there, that token included.
    public func generate(_ prompt: [Int32], _ options: SamplingOptions, useCache: Bool = true, until done: ([Int32]) -> Bool) -> [Int32] {
        check(!prompt.isEmpty, "[generate] the prompt is empty")
        check(options.maxNewTokens >= 0, "[generate] maxNewTokens must be 0 or more, got \(options.maxNewTokens)")
        let wasTraining = isTraining
        eval()
        defer { train(wasTraining) }
        var rng = RNG(seed: options.seed)
        let extra = virtualTokenCount
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
                if options.stopTokens.contains(token) || done(out) { break }
            }
            return out
        }
    }
}

/// `text` cut before the earliest of `stops` to occur in it (an empty stop text never matches), or
/// nil when none occurs: how `generate --stop`, `backtest --stop` and serve's `stop` end a reply.
public func textBeforeStop(_ text: String, _ stops: [String]) -> String? {
    stops.filter { !$0.isEmpty }.compactMap { text.range(of: $0)?.lowerBound }.min().map { String(text[..<$0]) }
}

/// Picks a token index from `logits` (V) under the sampling options. Greedy (temperature 0) takes
/// the first largest. Sampling walks the tokens from the most likely (ties: the lower id first):
/// top-k keeps every token at least as likely as the k-th (ties with it kept, as transformers
/// does), the softmax at the temperature is taken over those, min-p drops tokens under `minP`
/// times the most likely (renormalizing), top-p keeps the shortest leading run whose probability
/// reaches `topP` (renormalizing), and one uniform draw picks along the walk (vLLM's order).
/// `SamplingWalk` finds where the walk stops without sorting the vocabulary.
public func sampleToken(_ logits: [Float], _ o: SamplingOptions, _ rng: inout RNG) -> Int {
    let V = logits.count
    precondition(V > 0, "[sampleToken] no logits")
    // The first largest logit (a NaN is never picked; every logit NaN: token 0). Greedy takes it;
    // so does sampling when it is +inf (certain) or −inf (every logit −inf: nothing to weigh).
    var mx = -Float.infinity, first = -1
    for i in 0..<V where !logits[i].isNaN && (first < 0 || logits[i] > mx) { (mx, first) = (logits[i], i) }
    if first < 0 { return 0 }
    if o.temperature <= 0 { return first }
    let u = rng.nextDouble()
    if !mx.isFinite { return first }
    return logits.withUnsafeBufferPointer { SamplingWalk($0, o, max: (mx, first)).pick(u) }
}

/// The walk of `sampleToken` in a few passes over the vocabulary instead of a sort of it (5 ms a
/// token for SmolLM2's 49,152; the passes take a tenth of that). The tokens fall into buckets by
/// (max − x) / T in steps of 1/8, which follow the walk's order; the running sum crosses its
/// target in one bucket, and only that bucket's tokens are sorted. Sums are taken in another order
/// than a sorted walk would take them, so a draw within rounding (1e-16) of a boundary may pick
/// the neighbouring token.
private struct SamplingWalk {
    let l: UnsafeBufferPointer<Float>
    /// Each member's weight e^((x − max)/T) over `norm` is its probability (members: the top-k
    /// candidates that min-p keeps).
    var w: [Double]
    var norm = 0.0
    var key: [Int32]  // each member's bucket, -1 for the others
    var mass: [Double], count: [Int]  // per bucket: the members' probability and number
    let topP: Float
    static let buckets = 257  // 256 of 1/8 (down to e^-32 of the largest), then the rest

    /// The most likely token: the walk's first, and what a walk that keeps nothing falls back to.
    let first: Int

    /// The walk over `l` under `o`, `max` the largest logit (finite) and its token.
    init(_ l: UnsafeBufferPointer<Float>, _ o: SamplingOptions, max: (logit: Float, token: Int)) {
        (self.l, topP, first) = (l, o.topP, max.token)
        let V = l.count, B = SamplingWalk.buckets, mx = max.logit
        // Top-k: every token whose logit is at least the k-th's in the walk.
        let kth = o.topK > 0 && o.topK < V ? l[leadingTokens(l, count: o.topK).last!] : -Float.infinity
        let floor = kth.isNaN ? -Float.infinity : kth
        w = [Double](repeating: 0, count: V)
        var total = 0.0
        for i in 0..<V where l[i] >= floor {
            w[i] = Foundation.exp(Double((l[i] - mx) / o.temperature))
            total += w[i]
        }
        key = [Int32](repeating: -1, count: V)
        let minimum = Double(o.minP) / total  // min-p's floor on w / total (the largest has w = 1)
        var kept = 0.0
        for i in 0..<V where l[i] >= floor && w[i] / total >= minimum {
            let d = Double(mx - l[i]) / Double(o.temperature) * 8
            key[i] = Int32(!(d < Double(B - 1)) ? B - 1 : Int(d))  // NaN to the last
            kept += w[i] / total
        }
        norm = o.minP > 0 ? total * kept : total
        (mass, count) = ([Double](repeating: 0, count: B), [Int](repeating: 0, count: B))
        for i in 0..<V where key[i] >= 0 {
            mass[Int(key[i])] += w[i] / norm
            count[Int(key[i])] += 1
        }
    }

    /// Whether token a comes before token b in the walk.
    @inline(__always) func before(_ a: Int, _ b: Int) -> Bool { walkPrecedes(l, a, b) }

    /// The first member along the walk at which the running probability reaches `target`
    /// (`strictly`: passes it), and the sum there; nil when the sum never does.
    func crossing(_ target: Double, strictly: Bool) -> (token: Int, sum: Double)? {
        func reached(_ s: Double) -> Bool { strictly ? target < s : s >= target }
        var sum = 0.0
        for b in 0..<SamplingWalk.buckets where count[b] > 0 {
            guard reached(sum + mass[b]) else {
                sum += mass[b]
                continue
            }
            for t in (0..<l.count).filter({ key[$0] == b }).sorted(by: before) {
                sum += w[t] / norm
                if reached(sum) { return (t, sum) }
            }
        }
        return nil
    }

    /// The token the draw `u` (in [0, 1)) picks, top-p applied.
    func pick(_ u: Double) -> Int {
        // Top-p: the walk stops at the token where the sum reaches topP; the draw is scaled to that sum.
        var kept = 1.0, lastKept: Int?
        if topP < 1 {
            if let c = crossing(Double(topP), strictly: false) { (kept, lastKept) = (c.sum, c.token) } else { kept = mass.reduce(0, +) }
        }
        if let c = crossing(u * kept, strictly: true), lastKept.map({ !before($0, c.token) }) ?? true { return c.token }
        // Rounding left the draw past the sum: the last token the walk keeps.
        if let lastKept { return lastKept }
        var last = -1
        for i in 0..<l.count where key[i] >= 0 && (last < 0 || before(last, i)) { last = i }
        return last >= 0 ? last : first
    }
}

/// Whether token a comes before token b in the sampler's walk: the larger logit first (a NaN as
/// −inf), ties by the lower id.
@inline(__always)
private func walkPrecedes(_ l: UnsafeBufferPointer<Float>, _ a: Int, _ b: Int) -> Bool {
    let x = l[a].isNaN ? -Float.infinity : l[a], y = l[b].isNaN ? -Float.infinity : l[b]
    return x > y || (x == y && a < b)
}

/// The first `count` token ids of `logits` (count < V) in the walk's order (the largest first, ties:
/// the lower id first): a bounded heap over one pass, then a sort of what it kept.
private func leadingTokens(_ l: UnsafeBufferPointer<Float>, count: Int) -> [Int] {
    @inline(__always) func before(_ a: Int, _ b: Int) -> Bool { walkPrecedes(l, a, b) }
    // A heap whose root is the last kept token in the order: a token before it replaces it.
    var heap = [Int]()
    heap.reserveCapacity(count)
    for i in 0..<l.count {
        if heap.count < count {
            heap.append(i)
            var c = heap.count - 1
            while c > 0 && before(heap[(c - 1) / 2], heap[c]) { heap.swapAt(c, (c - 1) / 2); c = (c - 1) / 2 }
        } else if before(i, heap[0]) {
            heap[0] = i
            var p = 0
            while true {
                let a = 2 * p + 1, b = a + 1
                var worst = p
                if a < heap.count && before(heap[worst], heap[a]) { worst = a }
                if b < heap.count && before(heap[worst], heap[b]) { worst = b }
                if worst == p { break }
                heap.swapAt(p, worst)
                p = worst
            }
        }
    }
    return heap.sorted(by: before)
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
        func add(_ values: UnsafeBufferPointer<Float>) {
            for v in values { h = (h ^ UInt64(v.bitPattern)) &* prime }
        }
        if let packed = t.packedWeights {  // the values a Float32 load holds, decoded a slab at a time
            packed.forEachSlab { values, _ in add(values) }
            return
        }
        let c = t.isContiguous ? t : t.copy()
        add(UnsafeBufferPointer(start: c.basePointer, count: c.count))
    }

    var value: String { String(h, radix: 16) }
}
