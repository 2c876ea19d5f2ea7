// Model behaviour for both families: Hugging Face key names, KV-cache decoding equal to full
// recomputation (also with prefixes), a gradient check through a whole one-layer model, padding.

import XCTest
import TestSupport
@testable import Models
import TensorCore
import NN
import Tokenizers
import Containers
import Formats

let tinyGPT2 = ModelConfig.gpt2(vocabSize: 23, hiddenSize: 16, numLayers: 1, numHeads: 2, maxPositions: 32)
let tinyLlama = ModelConfig.llama(vocabSize: 23, hiddenSize: 16, numLayers: 1, numHeads: 4, numKVHeads: 2,
                                  intermediateSize: 24, ropeTheta: 500, attentionBias: true)

/// A fixed random key/value prefix (what prefix tuning learns).
final class FixedPrefix: AttentionPrefix {
    let keys: [Tensor], values: [Tensor]
    let length: Int
    init(config: ModelConfig, length: Int, seed: UInt64) {
        var rng = RNG(seed: seed)
        self.length = length
        keys = (0..<config.numLayers).map { _ in Tensor.normal([1, length, config.numKVHeads, config.headDim], rng: &rng) }
        values = (0..<config.numLayers).map { _ in Tensor.normal([1, length, config.numKVHeads, config.headDim], rng: &rng) }
    }
    func keysValues(batch: Int) -> [(keys: Tensor, values: Tensor)] {
        zip(keys, values).map { k, v in
            let s = [batch, length] + Array(k.shape.dropFirst(2))
            return (k.expand(s), v.expand(s))
        }
    }
}

/// Fixed virtual-token embeddings (what prompt tuning learns).
final class FixedInputPrefix: InputPrefix {
    let e: Tensor
    var length: Int { e.shape[0] }
    init(config: ModelConfig, length: Int, seed: UInt64) {
        var rng = RNG(seed: seed)
        e = Tensor.normal([length, config.hiddenSize], rng: &rng)
    }
    func embeddings() -> Tensor { e }
}

final class ModelTests: XCTestCase {
    func testFieldsThatFollowFromTheFamilyAreChecked() throws {
        let llama = ModelConfig.llama(vocabSize: 11, hiddenSize: 8, numLayers: 1, numHeads: 2, numKVHeads: 1, intermediateSize: 12)
        let gpt2 = ModelConfig.gpt2(vocabSize: 11, hiddenSize: 8, numLayers: 1, numHeads: 2)
        XCTAssertNoThrow(try llama.validate())
        XCTAssertNoThrow(try gpt2.validate())
        func refused(_ c: ModelConfig, _ field: String, line: UInt = #line) {
            XCTAssertThrowsError(try c.validate(), line: line) { e in
                XCTAssertTrue("\(e)".contains("family \(c.family.rawValue) has \(field)"), "\(e)", line: line)
            }
        }
        var c = llama
        c.positions = .learned  // used to build a model with no position encoding at all
        refused(c, "positions")
        c = llama
        c.norm = .layerNorm
        refused(c, "norm")
        c = gpt2
        c.mlp = .swiglu
        refused(c, "mlp")
        c = gpt2
        c.numKVHeads = 1
        refused(c, "num_key_value_heads")
        c = gpt2
        c.mlp = .gelu  // GPT-2 variants with the erf GELU
        XCTAssertNoThrow(try c.validate())

        // A checkpoint that claims such a config is refused when loaded, naming the file and the field.
        var bad = try XCTUnwrap(try JSONSerialization.jsonObject(with: JSONEncoder().encode(llama)) as? [String: Any])
        bad["positions"] = "learned"
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("bad-family-\(UUID().uuidString).h5").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try HDF5Store.write(path, tensors: makeModel(llama).namedParameters(), attributes: [
            "format": ModelCheckpoint.format, "version": ModelCheckpoint.version,
            "config": String(decoding: try JSONSerialization.data(withJSONObject: bad), as: UTF8.self),
        ])
        XCTAssertThrowsError(try loadModel(path)) { e in
            XCTAssertTrue("\(e)".contains(path) && "\(e)".contains("family llama has positions rope, got learned"), "\(e)")
        }
    }

    func testParameterNamesAreHuggingFaceKeys() {
        let g = Set(GPT2Model(tinyGPT2).namedParameters().map(\.0))
        XCTAssertEqual(g, ["transformer.wte.weight", "transformer.wpe.weight",
                           "transformer.h.0.ln_1.weight", "transformer.h.0.ln_1.bias",
                           "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias",
                           "transformer.h.0.attn.c_proj.weight", "transformer.h.0.attn.c_proj.bias",
                           "transformer.h.0.ln_2.weight", "transformer.h.0.ln_2.bias",
                           "transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_fc.bias",
                           "transformer.h.0.mlp.c_proj.weight", "transformer.h.0.mlp.c_proj.bias",
                           "transformer.ln_f.weight", "transformer.ln_f.bias"])
        let gm = GPT2Model(tinyGPT2).namedParameters()
        XCTAssertEqual(gm.first { $0.0 == "transformer.h.0.attn.c_attn.weight" }?.1.shape, [16, 48], "Conv1D is (in, out)")
        let l = Dictionary(uniqueKeysWithValues: LlamaModel(tinyLlama).namedParameters().map { ($0.0, $0.1.shape) })
        XCTAssertEqual(l["model.layers.0.self_attn.k_proj.weight"], [8, 16], "grouped-query: KVH·D outputs")
        XCTAssertEqual(l["model.layers.0.self_attn.q_proj.bias"], [16])
        XCTAssertEqual(l["model.layers.0.mlp.gate_proj.weight"], [24, 16])
        XCTAssertEqual(l["lm_head.weight"], [23, 16])
        XCTAssertEqual(l.count, 3 + 6 + 1 + 2 + 3)  // embed, norm, head; q/k/v w+b; o; 2 norms; mlp
        XCTAssertTrue(LlamaModel(tinyLlama).namedModules().map(\.0).contains("model.layers.0.self_attn.q_proj"))
    }

    /// Each dropout rate acts on its own part while training, and none acts in eval mode: the
    /// embeddings' own rate, the residual branches' and the attention probabilities'.
    func testDropoutRatesActWhereTheyBelong() {
        let ids: [Int32] = [1, 5, 7, 2, 9, 4]
        for (name, change) in [("embedding", { (c: inout ModelConfig) in c.embeddingDropout = 0.5 }),
                               ("residual", { (c: inout ModelConfig) in (c.dropout, c.embeddingDropout) = (0.5, 0) }),
                               ("attention", { (c: inout ModelConfig) in c.attentionDropout = 0.5 })] {
            var config = tinyGPT2
            change(&config)
            let model = makeModel(config, seed: 3)
            let plain = makeModel(tinyGPT2, seed: 3)
            withNoGrad {
                XCTAssertEqual(model.forward(ids, batch: 1).toArray(), plain.forward(ids, batch: 1).toArray(), "\(name): eval mode drops nothing")
                model.train(true)
                plain.train(true)
                XCTAssertNotEqual(model.forward(ids, batch: 1).toArray(), plain.forward(ids, batch: 1).toArray(), "\(name): training drops")
                XCTAssertEqual(plain.forward(ids, batch: 1).toArray(), plain.forward(ids, batch: 1).toArray(), "no rate, no dropout")
            }
        }
    }

    /// A cache of gathered rows decodes as if each row's prompt had been prefilled in it: two
    /// prompts (one left-padded) prefilled once, gathered as rows [1, 0, 1], then two steps, equal
    /// the same three rows prefilled together; with a key/value prefix or an input prefix too, and
    /// growing past the gathered capacity.
    func testKVCacheGatheredRowsDecodeAsTheirSources() {
        for variant in ["plain", "prefix", "prompt"] {
            let config = tinyLlama
            let model = makeModel(config, seed: 3)
            if variant == "prefix" { model.attentionPrefix = FixedPrefix(config: config, length: 3, seed: 4) }
            if variant == "prompt" { model.inputPrefix = FixedInputPrefix(config: config, length: 2, seed: 5) }
            let (p0, p1): ([Int32], [Int32]) = ([1, 5, 7, 2], [0, 4, 9, 6])  // p1's first token is padding
            let mask01: [Float] = [1, 1, 1, 1, 0, 1, 1, 1]
            let rows = [1, 0, 1]
            withNoGrad {
                let two = KVCache(config: config, batch: 2, capacity: 5)
                let first2 = model.lastLogits(p0 + p1, batch: 2, attentionMask: mask01, cache: two).toArray()
                let gathered = two.gatheringRows(rows), capacity = gathered.capacity
                XCTAssertEqual(gathered.batch, 3)
                XCTAssertEqual(gathered.length, two.length)
                let three = KVCache(config: config, batch: 3, capacity: 5)
                let first3 = model.lastLogits(p1 + p0 + p1, batch: 3, attentionMask: [0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1], cache: three).toArray()
                let V = config.vocabSize
                assertClose(rows.flatMap { first2[$0 * V ..< ($0 + 1) * V] }, first3, rtol: 1e-5, atol: 1e-6, "\(variant) prefill")
                for step: [Int32] in [[3, 8, 3], [2, 2, 5], [1, 1, 1], [4, 4, 4], [6, 2, 9], [7, 7, 7]] {
                    let a = model.forward(step, batch: 3, cache: gathered).toArray()
                    let b = model.forward(step, batch: 3, cache: three).toArray()
                    assertClose(a, b, rtol: 1e-5, atol: 1e-6, "\(variant) step \(step)")
                }
                XCTAssertGreaterThan(gathered.capacity, capacity, "grown past the gathered capacity")
            }
        }
    }

    /// Cached decoding gives the same logits as recomputing the whole sequence, for both
    /// families and a sliding window (3 positions, so the 12-token sequence runs past it), plain,
    /// with a key/value prefix and with an input prefix.
    func testKVCacheMatchesFullRecomputation() {
        var windowed = tinyLlama
        windowed.slidingWindow = 3
        for config in [tinyGPT2, tinyLlama, windowed] {
            for variant in ["plain", "prefix", "prompt"] {
                let model = makeModel(config, seed: 3)
                if variant == "prefix" { model.attentionPrefix = FixedPrefix(config: config, length: 3, seed: 4) }
                if variant == "prompt" { model.inputPrefix = FixedInputPrefix(config: config, length: 2, seed: 5) }
                let prompt: [Int32] = [1, 5, 7, 2]
                let opts = SamplingOptions(maxNewTokens: 8, temperature: 0.9, topK: 10, seed: 11)
                let cached = model.generate(prompt, opts, useCache: true)
                let full = model.generate(prompt, opts, useCache: false)
                XCTAssertEqual(cached, full, "\(config.family) \(variant) window \(config.slidingWindow ?? 0)")
                XCTAssertEqual(cached.count, 8)
                // Step logits agree too, in a cache that starts too small and grows (2 → 4 → 8 → 16).
                withNoGrad {
                    let seq: [Int32] = prompt + cached
                    let ref = model.forward(seq, batch: 1).toArray()
                    let cache = KVCache(config: config, batch: 1, capacity: 2)
                    var got = model.forward(Array(seq.prefix(4)), batch: 1, cache: cache).toArray()
                    for t in 4..<seq.count { got += model.forward([seq[t]], batch: 1, cache: cache).toArray() }
                    assertClose(got, ref, rtol: 1e-4, atol: 1e-5, "\(config.family) \(variant) logits")
                    XCTAssertGreaterThanOrEqual(cache.capacity, cache.length)
                    // The last position alone, as decoding takes it.
                    assertClose(model.lastLogits(seq, batch: 1).toArray(), Array(ref.suffix(config.vocabSize)), rtol: 1e-6, atol: 1e-6,
                                "\(config.family) \(variant) last logits")
                }
            }
        }
    }

    /// bf16 copies of the frozen weights (`keepBF16Weights`): cached decoding stays close to fp32
    /// (bf16 rounding of weights and inputs, fp32 accumulation) but is not the fp32 result, for
    /// both families (GPT-2's (in, out) Conv1D weights and tied head, LLaMA's (out, in) weights).
    func testBF16WeightsDecodeCloseToFP32() throws {
        for config in [tinyGPT2, tinyLlama] {
            let fp32 = makeModel(config, seed: 3), bf16 = makeModel(config, seed: 3)
            let bytes = bf16.keepBF16Weights()
            var matrices = bf16.namedModules().compactMap { ($0.1 as? Linear)?.weight.count }.reduce(0, +)
            if config.tieWordEmbeddings { matrices += config.vocabSize * config.hiddenSize }
            XCTAssertEqual(bytes, 2 * matrices, "\(config.family): one bf16 copy per matrix weight")
            let seq: [Int32] = [1, 5, 7, 2, 9, 4, 3]
            withNoGrad {
                func stepLogits(_ m: CausalLM) -> [Float] {
                    let cache = KVCache(config: config, batch: 1, capacity: 10)
                    var out = m.forward(Array(seq.prefix(3)), batch: 1, cache: cache).toArray()
                    for t in 3..<seq.count { out += m.forward([seq[t]], batch: 1, cache: cache).toArray() }
                    return out
                }
                let (a, b) = (stepLogits(fp32), stepLogits(bf16))
                let scale = maxAbs(a)
                XCTAssertLessThan(maxAbsDiff(a, b), 0.02 * scale, "\(config.family): bf16 logits far from fp32")
                XCTAssertGreaterThan(maxAbsDiff(a, b), 0, "\(config.family): the bf16 copies were not used")
            }
        }
    }

    /// bf16-only weights, filled one matrix at a time as a loader fills them (`bf16OnlyLoader`):
    /// every `Linear` keeps only its copy, a tied embedding keeps its fp32 rows for lookups, and a
    /// prompt of 70 tokens (LLaMA: two row chunks, all in bf16 here; GPT-2: as many as its 32
    /// positions allow) and cached decoding give logits
    /// within 2% of the largest of those of fp32 weights and of bf16 copies beside them.
    func testBF16OnlyWeightsLoadOneMatrixAtATimeAndDecode() throws {
        for config in [tinyGPT2, tinyLlama] {
            let fp32 = makeModel(config, seed: 3), copies = makeModel(config, seed: 3)
            copies.keepBF16Weights()
            let only = WeightInit.skipped { makeModel(config, seed: 0) }
            only.freeze()
            let weights = Dictionary(uniqueKeysWithValues: fp32.namedParameters().map { ($0.0, $0.1) })
            var releasedBeforeRead = 0, loaded = 0
            let linearNames = Set(only.namedModules().compactMap { name, m in m is Linear ? name + ".weight" : nil })
            let convert = only.bf16OnlyLoader()
            try only.loadParameters(TensorReader(weights), didLoad: { name, t in
                convert(name, t)
                loaded += 1
                if linearNames.contains(name) && t.storage.valuesReleased { releasedBeforeRead += 1 }
            })
            XCTAssertEqual(releasedBeforeRead, linearNames.count, "\(config.family): each Linear let go of its fp32 values as it loaded")
            XCTAssertEqual(loaded, weights.count)
            XCTAssertTrue(only.hasReleasedWeights)
            if let head = only.plainHeadWeight, config.tieWordEmbeddings {
                XCTAssertNotNil(head.bf16Copy, "\(config.family): the tied head has a copy")
            }
            // The token embedding keeps bf16 rows alone; a lookup gives each value rounded to bf16
            // (to nearest, ties to even).
            let table = only.tokenEmbeddingTable
            XCTAssertTrue(table.keepsBF16RowsOnly, "\(config.family): the token embedding keeps bf16 rows alone")
            let ids: [Int32] = [0, 5, Int32(config.vocabSize - 1), 5]
            let looked = withNoGrad { Tensor.embedding(table, ids: ids, shape: [2, 2]) }
            XCTAssertEqual(looked.shape, [2, 2, config.hiddenSize])
            let rows = fp32.tokenEmbeddingTable.toArray(), c = config.hiddenSize
            let rounded = ids.flatMap { id in (0..<c).map { j -> Float in
                let u = rows[Int(id) * c + j].bitPattern
                return Float(bitPattern: ((u &+ 0x7FFF &+ ((u >> 16) & 1)) >> 16) << 16)
            } }
            XCTAssertEqual(looked.toArray(), rounded, "\(config.family): embedding rows from the bf16 values")
            let prompt = (0..<min(70, config.maxPositions - 4)).map { Int32(($0 * 7 + 3) % config.vocabSize) }
            withNoGrad {
                func logits(_ m: CausalLM) -> [Float] {
                    let cache = KVCache(config: config, batch: 1, capacity: prompt.count + 3)
                    var out = m.forward(prompt, batch: 1, cache: cache).toArray()
                    for t: Int32 in [4, 9, 1] { out += m.forward([t], batch: 1, cache: cache).toArray() }
                    return out
                }
                let (a, b, c) = (logits(fp32), logits(copies), logits(only))
                let scale = maxAbs(a)
                // Decoding steps read the same copies; the prompt's products differ only in accumulation order.
                XCTAssertLessThan(maxAbsDiff(b, c), 0.02 * scale, "\(config.family): bf16-only far from bf16 copies")
                XCTAssertLessThan(maxAbsDiff(a, c), 0.02 * scale, "\(config.family): bf16-only far from fp32")
                XCTAssertGreaterThan(maxAbsDiff(a, c), 0, "\(config.family): the copies were not used")
            }
            XCTAssertEqual(only.generate(Array(prompt.prefix(5)), SamplingOptions(maxNewTokens: 4)).count, 4)
            // The weights' hash (what adapters check their base by) is the fp32 model's, whether the
            // values were released while loading or afterwards.
            XCTAssertEqual(only.weightsHash(), fp32.weightsHash(), "\(config.family)")
            let later = makeModel(config, seed: 3)
            later.keepBF16Weights(releasingFP32: true)
            XCTAssertTrue(later.hasReleasedWeights)
            XCTAssertEqual(later.weightsHash(), fp32.weightsHash(), "\(config.family)")
        }
    }

    /// Stop tokens end generation; greedy decoding is deterministic; sampling follows the seed.
    func testSamplingOptions() {
        let model = makeModel(tinyLlama, seed: 1)
        let greedy = model.generate([1, 2, 3], SamplingOptions(maxNewTokens: 6))
        XCTAssertEqual(greedy, model.generate([1, 2, 3], SamplingOptions(maxNewTokens: 6)))
        let stop = greedy[2]
        let stopped = model.generate([1, 2, 3], SamplingOptions(maxNewTokens: 6, stopTokens: [stop]))
        XCTAssertEqual(stopped.last, stop)
        XCTAssertLessThanOrEqual(stopped.count, 3)
        let a = model.generate([1, 2, 3], SamplingOptions(maxNewTokens: 10, temperature: 1.5, topP: 0.9, seed: 1))
        let b = model.generate([1, 2, 3], SamplingOptions(maxNewTokens: 10, temperature: 1.5, topP: 0.9, seed: 1))
        XCTAssertEqual(a, b)
        // top-k keeps every token tied with the k-th, as transformers does: both 2s here, never the 1.
        var rng = RNG(seed: 4)
        let picks = Set((0..<400).map { _ in sampleToken([3, 2, 2, 1], SamplingOptions(maxNewTokens: 1, temperature: 1, topK: 2), &rng) })
        XCTAssertEqual(picks, [0, 1, 2])
        // top-k 1 is greedy whatever the temperature.
        XCTAssertEqual(model.generate([1, 2, 3], SamplingOptions(maxNewTokens: 6, temperature: 2, topK: 1, seed: 9)), greedy)
    }

    /// The sampler's walk (buckets, one sorted) picks what a walk over the whole sorted vocabulary
    /// picks, drawn by drawn: top-k with ties, temperature, min-p and top-p, on spread and peaked
    /// logits of several sizes, and on logits with many ties (where top-p is off: there, sums of
    /// equal probabilities meet topP exactly, and the cut then depends on the order of addition).
    func testSamplingEqualsAWalkOverTheSortedVocabulary() {
        /// The sampler as a plain sort of every token (most likely first, ties by lower id).
        func sorted(_ logits: [Float], _ o: SamplingOptions, _ rng: inout RNG) -> Int {
            var order = logits.indices.sorted { logits[$0] > logits[$1] || (logits[$0] == logits[$1] && $0 < $1) }
            if o.topK > 0 && o.topK < order.count {
                let kth = logits[order[o.topK - 1]]
                order = order.filter { logits[$0] >= kth }
            }
            let mx = logits[order[0]]
            var probs = order.map { Foundation.exp(Double((logits[$0] - mx) / o.temperature)) }
            let total = probs.reduce(0, +)
            probs = probs.map { $0 / total }
            if o.minP > 0 {
                let keep = probs.prefix { $0 >= Double(o.minP) * probs[0] }.count
                (order, probs) = (Array(order.prefix(keep)), Array(probs.prefix(keep)))
                let s = probs.reduce(0, +)
                probs = probs.map { $0 / s }
            }
            if o.topP < 1 {
                var acc = 0.0, keep = 0
                while keep < probs.count { acc += probs[keep]; keep += 1; if acc >= Double(o.topP) { break } }
                (order, probs) = (Array(order.prefix(keep)), Array(probs.prefix(keep)))
                let s = probs.reduce(0, +)
                probs = probs.map { $0 / s }
            }
            let u = rng.nextDouble()
            var acc = 0.0
            for (i, p) in probs.enumerated() { acc += p; if u < acc { return order[i] } }
            return order[order.count - 1]
        }
        var g = RNG(seed: 1), draws = 0
        for trial in 0..<600 {
            let V = [3, 50, 1000, 49_152][trial % 4], spread = [0.5, 4, 30][trial / 4 % 3]
            let ties = trial % 5 == 0
            let logits = (0..<V).map { _ in ties ? Float(Int(g.nextDouble() * 6)) : Float((g.nextDouble() * 2 - 1) * spread) }
            var o = SamplingOptions(temperature: [0.2, 0.7, 1, 2.5][trial % 7 % 4], topK: [0, 0, 1, 2, 40][trial % 11 % 5],
                                    topP: ties ? 1 : [1, 1, 0.9, 0.5][trial % 13 % 4])
            o.minP = ties ? 0 : [0, 0, 0.05, 0.5][trial % 17 % 4]
            for k in 0..<4 {
                var a = RNG(seed: UInt64(trial * 4 + k)), b = a
                XCTAssertEqual(sampleToken(logits, o, &a), sorted(logits, o, &b), "trial \(trial): V \(V), \(o)")
                draws += 1
            }
        }
        XCTAssertEqual(draws, 2400)

        // Non-finite logits, greedy or sampled: a NaN is never picked, a +inf always is, all −inf
        // gives the first; one token is that token.
        let nan = Float.nan, inf = Float.infinity
        for (logits, allowed) in [([nan, 1, 2], Set([1, 2])), ([1, nan, 2, nan], [0, 2]), ([inf, 0, inf], [0]), ([0, 5, inf], [2]),
                                  ([-inf, -inf], [0]), ([nan, nan], [0]), ([nan, -inf, 3], [2]), ([7], [0])] as [([Float], Set<Int>)] {
            for o in [SamplingOptions(), SamplingOptions(temperature: 1), SamplingOptions(temperature: 1, topK: 1), SamplingOptions(temperature: 1, topK: 2),
                      SamplingOptions(temperature: 1, topP: 0.5), SamplingOptions(temperature: 2, topK: 3, topP: 0.9)] {
                for seed in 0..<20 {
                    var rng = RNG(seed: UInt64(seed))
                    let t = sampleToken(logits, o, &rng)
                    XCTAssertTrue(allowed.contains(t), "\(logits) \(o): picked \(t)")
                }
            }
        }
    }

    /// Padding keys are invisible: a row padded on the left (masked) gives its real positions the
    /// same logits as... the keys it may not see do not change its outputs.
    func testPaddingMaskHidesKeys() {
        for config in [tinyGPT2, tinyLlama] {
            let model = makeModel(config, seed: 5)
            withNoGrad {
                // Row 0: [a b c d], row 1: [a X c d] with X masked. Masking key 1 for row 1 means
                // position 2, 3 of row 1 see {a, c, d}; compare with row 1 where X changes: no effect.
                let m: [Float] = [1, 1, 1, 1, 1, 0, 1, 1]
                let y1 = model.forward([1, 2, 3, 4, 1, 9, 3, 4], batch: 2, attentionMask: m).toArray()
                let y2 = model.forward([1, 2, 3, 4, 1, 17, 3, 4], batch: 2, attentionMask: m).toArray()
                let v = config.vocabSize
                // Row 1, positions 2 and 3: the masked token must not matter.
                assertClose(Array(y1[(6 * v)..<(8 * v)]), Array(y2[(6 * v)..<(8 * v)]), rtol: 1e-5, atol: 1e-6, "\(config.family)")
                // The same masked rows through a cache that grows: its mask moves with the keys.
                let cache = KVCache(config: config, batch: 2, capacity: 1)
                var stepped: [[Float]] = [[], []]
                for t in 0..<4 {
                    let step = model.forward([[1, 2, 3, 4][t], [1, 9, 3, 4][t]], batch: 2, attentionMask: [1, m[4 + t]], cache: cache).toArray()
                    stepped[0] += step[0..<v]
                    stepped[1] += step[v..<(2 * v)]
                }
                assertClose(stepped[0], Array(y1[0..<(4 * v)]), rtol: 1e-4, atol: 1e-5, "\(config.family) row 0 through a growing cache")
                assertClose(Array(stepped[1][(2 * v)...]), Array(y1[(6 * v)..<(8 * v)]), rtol: 1e-4, atol: 1e-5,
                            "\(config.family) row 1 (key 1 masked) through a growing cache")
                // Unmasked, it does.
                let z1 = model.forward([1, 9, 3, 4], batch: 1).toArray(), z2 = model.forward([1, 17, 3, 4], batch: 1).toArray()
                XCTAssertNotEqual(Array(z1[(2 * v)..<(4 * v)]), Array(z2[(2 * v)..<(4 * v)]))
            }
        }
    }

    /// Central differences through a whole one-layer model of each family (with dropout off):
    /// a sample of elements of every parameter tensor.
    /// The loss fuses the output head with the cross-entropy; training with it follows the curve
    /// of the unfused head + cross-entropy (same batches, AdamW), tied and untied heads.
    func testFusedLossTrainsLikeTheUnfusedHead() {
        let untied = ModelConfig.llama(vocabSize: 23, hiddenSize: 16, numLayers: 1, numHeads: 4, numKVHeads: 2,
                                       intermediateSize: 24, tieWordEmbeddings: false)
        for config in [tinyGPT2, tinyLlama, untied] {
            var curves: [[Float]] = []
            for fused in [true, false] {
                let model = makeModel(config, seed: 3)
                XCTAssertNotNil(model.plainHeadWeight, "\(config.family)")
                let parameters = model.namedParameters().map { p in p.1.requiresGrad = true; return p }
                let opt = AdamW(parameters, weightDecay: 0)
                var rng = RNG(seed: 4)
                var losses: [Float] = []
                for _ in 0..<30 {
                    let ids = (0..<24).map { _ in Int32(rng.nextInt(config.vocabSize)) }
                    let targets = CausalLM.shiftedTargets(ids, batch: 2)
                    let loss = fused ? model.loss(ids, targets: targets, batch: 2)
                                     : model.forward(ids, batch: 2).crossEntropy(targets: targets)
                    loss.backward()
                    opt.step(lr: 1e-2)
                    opt.zeroGrad()
                    losses.append(loss.item())
                }
                curves.append(losses)
            }
            assertClose(curves[0], curves[1], rtol: 1e-3, atol: 1e-4, "\(config.family) tied \(config.tieWordEmbeddings): fused vs unfused losses")
        }
    }

    func testGradientThroughWholeModel() {
        for config in [tinyGPT2, tinyLlama] {
            let model = makeModel(config, seed: 7)
            model.unfreeze()
            let ids: [Int32] = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
            let targets = CausalLM.shiftedTargets(ids, batch: 2)
            // Make norm weights non-trivial.
            var rng = RNG(seed: 8)
            for (name, p) in model.namedParameters() where name.contains("norm") || name.contains("ln_") {
                p.assign(Tensor.normal(p.shape, mean: 1, std: 0.3, rng: &rng))
            }
            model.loss(ids, targets: targets, batch: 2).backward()
            func lossValue() -> Double { Double(withNoGrad { model.loss(ids, targets: targets, batch: 2) }.item()) }
            for (name, p) in model.namedParameters() {
                guard let g = p.grad?.toArray() else { XCTFail("\(name): no gradient"); continue }
                var picks = RNG(seed: UInt64(name.utf8.count))
                var worst = 0.0
                let scale = max(Double(g.map(abs).max() ?? 0), 1e-3)
                for _ in 0..<min(6, p.count) {
                    let i = picks.nextInt(p.count)
                    let saved = p.basePointer[i]
                    let eps: Float = 1e-2
                    p.basePointer[i] = saved + eps
                    let lp = lossValue()
                    p.basePointer[i] = saved - eps
                    let lm = lossValue()
                    p.basePointer[i] = saved
                    let numeric = (lp - lm) / (2 * Double(eps))
                    worst = maxKeepingNaN(worst, abs(numeric - Double(g[i])) / scale)
                }
                XCTAssertLessThan(worst, 3e-2, "\(config.family) \(name)")
            }
        }
    }
}

