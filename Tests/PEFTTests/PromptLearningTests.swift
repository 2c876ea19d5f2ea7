// Prompt tuning, P-Tuning (MLP and LSTM) and prefix tuning on both model families: counts by
// formula, the model slots (taken, disabled, detached), KV-cache generation, the PEFT prefix layout,
// config JSON, gradients through the whole model, the LSTM against a scalar reference, init modes.

import XCTest
import TestSupport
@testable import PEFT
import TensorCore
import NN
import Models
import Tokenizers
import Containers
import Formats
import Training

/// One prompt-learning variant and its trainable count written out by hand for a model config.
struct PromptVariant {
    let name: String
    let make: () throws -> PromptLearningMethod
    let formula: (ModelConfig) -> Int
}

let nVirtual = 4

let promptVariants: [PromptVariant] = [
    PromptVariant(name: "prompt", make: { try PromptTuning(config: PromptTuningConfig(numVirtualTokens: nVirtual), seed: 1) },
                  formula: { nVirtual * $0.hiddenSize }),
    PromptVariant(name: "ptuning-mlp", make: { try PTuning(config: PTuningConfig(numVirtualTokens: nVirtual, type: .mlp, encoderHiddenSize: 6), seed: 2) },
                  formula: { m in
                      let (C, h) = (m.hiddenSize, 6)
                      return nVirtual * C + (C * h + h) + (h * h + h) + (h * C + C)
                  }),
    PromptVariant(name: "ptuning-lstm", make: { try PTuning(config: PTuningConfig(numVirtualTokens: nVirtual, type: .lstm, encoderHiddenSize: 3), seed: 3) },
                  formula: { m in
                      let (C, h) = (m.hiddenSize, 3)
                      let layer0 = 2 * (4 * h * C + 4 * h * h + 4 * h + 4 * h)  // both directions
                      let layer1 = 2 * (4 * h * 2 * h + 4 * h * h + 4 * h + 4 * h)
                      return nVirtual * C + layer0 + layer1 + (2 * h * 2 * h + 2 * h) + (2 * h * C + C)
                  }),
    PromptVariant(name: "prefix", make: { try PrefixTuning(config: PrefixTuningConfig(numVirtualTokens: nVirtual), seed: 4) },
                  formula: { nVirtual * $0.numLayers * 2 * $0.kvDim }),
    // PEFT's grouped-query rewrite makes token_dim = kv_dim, so the embedding is (P, kv_dim).
    PromptVariant(name: "prefix-projection", make: { try PrefixTuning(config: PrefixTuningConfig(numVirtualTokens: nVirtual, prefixProjection: true, encoderHiddenSize: 5), seed: 5) },
                  formula: { m in
                      let (d, h, out) = (m.kvDim, 5, m.numLayers * 2 * m.kvDim)
                      return nVirtual * d + d * h + h + h * out + out
                  }),
]

final class PromptLearningTests: XCTestCase {
    func testAttachFreezesBaseAndCountsMatchTheFormula() throws {
        for config in [gpt2Tiny, llamaTiny] {
            for v in promptVariants {
                let model = makeModel(config)
                model.unfreeze()
                let method = try v.make()
                try method.attach(to: model)
                let label = "\(config.family) \(v.name)"
                XCTAssertTrue(model.trainableParameters().isEmpty, "\(label): base frozen")
                XCTAssertEqual(method.trainableCount, v.formula(config), label)
                XCTAssertEqual(method.expectedTrainableCount, v.formula(config), label)
                XCTAssertTrue(method.adapterParameters().allSatisfy { $0.1.requiresGrad }, label)
                XCTAssertEqual(TrainableReport(model: model, methods: [method]).trainable, v.formula(config), label)
            }
        }
    }

    /// Logits keep the shape (B, T, V); the method changes them; disabling empties the slot (the
    /// base exactly), enabling restores the adapted logits, detach gives the base exactly.
    func testLogitsDisableAndDetach() throws {
        for config in [gpt2Tiny, llamaTiny] {
            for v in promptVariants {
                let label = "\(config.family) \(v.name)"
                let model = makeModel(config, seed: 2)
                let base = logits(model)
                let method = try v.make()
                try method.attach(to: model)
                XCTAssertEqual(withNoGrad { model.forward(sampleIDs, batch: 2) }.shape, [2, 5, config.vocabSize], label)
                let adapted = logits(model)
                XCTAssertGreaterThan(maxAbsDiff(adapted, base), 1e-3, label)
                method.isEnabled = false
                XCTAssertTrue(model.inputPrefix == nil && model.attentionPrefix == nil, label)
                XCTAssertEqual(logits(model), base, "\(label): disabled")
                method.isEnabled = true
                XCTAssertEqual(logits(model), adapted, "\(label): enabled again")
                method.detach(from: model)
                XCTAssertTrue(model.inputPrefix == nil && model.attentionPrefix == nil, label)
                XCTAssertEqual(logits(model), base, "\(label): detached")
                try method.attach(to: model)  // the tensors were kept
                XCTAssertEqual(logits(model), adapted, "\(label): re-attached")
            }
        }
    }

    func testSlotTakenOrAttachedTwiceThrows() throws {
        let model = makeModel(llamaTiny)
        let prompt = try PromptTuning(config: PromptTuningConfig(numVirtualTokens: 2))
        let ptuning = try PTuning(config: PTuningConfig(numVirtualTokens: 2))
        let prefix = try PrefixTuning(config: PrefixTuningConfig(numVirtualTokens: 2))
        try prompt.attach(to: model)
        XCTAssertThrowsError(try ptuning.attach(to: model)) { e in
            XCTAssertTrue(e is PEFTError && "\(e)".contains("inputPrefix") && "\(e)".contains("PromptTuning"), "\(e)")
        }
        XCTAssertThrowsError(try prompt.attach(to: makeModel(llamaTiny)), "already attached")
        try prefix.attach(to: model)  // the other slot: both together
        XCTAssertThrowsError(try PrefixTuning(config: PrefixTuningConfig(numVirtualTokens: 2)).attach(to: model))
        XCTAssertEqual(model.generate([1, 2, 3], SamplingOptions(maxNewTokens: 6), useCache: true),
                       model.generate([1, 2, 3], SamplingOptions(maxNewTokens: 6), useCache: false), "prompt + prefix")
        prompt.detach(from: model)
        try ptuning.attach(to: model)
        XCTAssertTrue(model.inputPrefix === ptuning)
    }

    /// A prompt-learning adapter never attached has no tensors to export: an error, not a trap.
    func testExportingAnUnattachedAdapterIsAnError() throws {
        let methods: [PromptLearningMethod] = [try PromptTuning(config: PromptTuningConfig(numVirtualTokens: 2)),
                                               try PTuning(config: PTuningConfig(numVirtualTokens: 2)),
                                               try PrefixTuning(config: PrefixTuningConfig(numVirtualTokens: 2))]
        for m in methods {
            XCTAssertThrowsError(try m.peftFolderContents(base: llamaTiny)) { XCTAssertTrue("\($0)".contains("attach it to the base"), "\($0)") }
        }
    }

    /// Two adapters for the input slot, one disabled while the other was attached: switching to the
    /// first lets the second go first, whatever the order of the list.
    func testSwitchingBetweenAdaptersThatShareASlot() throws {
        let model = makeModel(llamaTiny)
        let a = try PromptTuning(config: PromptTuningConfig(numVirtualTokens: 2), name: "a")
        let b = try PTuning(config: PTuningConfig(numVirtualTokens: 2), name: "b")
        try a.attach(to: model)
        a.isEnabled = false
        try b.attach(to: model)
        for order in [[a, b], [b, a]] as [[PEFTMethod]] {
            try setActiveAdapter("a", in: order)
            XCTAssertTrue(model.inputPrefix === a && !b.isEnabled)
            try setActiveAdapter("b", in: order)
            XCTAssertTrue(model.inputPrefix === b && !a.isEnabled)
        }
        try setActiveAdapter(nil, in: [a, b])
        XCTAssertNil(model.inputPrefix)
    }

    /// The cached path (prefix keys/values written into the cache once, virtual tokens run once)
    /// gives the logits and tokens of full recomputation.
    func testKVCacheGenerationEqualsRecompute() throws {
        for config in [gpt2Tiny, llamaTiny] {
            for v in promptVariants {
                let label = "\(config.family) \(v.name)"
                let model = makeModel(config, seed: 6)
                let method = try v.make()
                try method.attach(to: model)
                let prompt: [Int32] = [1, 4, 9, 16]
                for options in [SamplingOptions(maxNewTokens: 8), SamplingOptions(maxNewTokens: 8, temperature: 1, seed: 3)] {
                    XCTAssertEqual(model.generate(prompt, options, useCache: true), model.generate(prompt, options, useCache: false), label)
                }
                // Logits step by step against the whole sequence.
                let steps: [Int32] = [7, 3, 11]
                let full = withNoGrad { model.forward(prompt + steps, batch: 1) }.toArray()
                let cache = KVCache(config: config, batch: 1, capacity: nVirtual + prompt.count + steps.count)
                var cached = withNoGrad { model.forward(prompt, batch: 1, cache: cache) }.toArray()
                for s in steps { cached += withNoGrad { model.forward([s], batch: 1, cache: cache) }.toArray() }
                XCTAssertLessThan(maxAbsDiff(cached, full), 1e-4, label)
            }
        }
    }

    /// prompt_embeddings (P, L·2·kv_dim) viewed as (P, 2L, KVH, D): layer l's keys are slice 2l,
    /// its values 2l+1; expanded over the batch without a copy.
    func testPrefixLayoutMatchesPEFT() throws {
        for config in [gpt2Tiny, llamaTiny] {
            let model = makeModel(config)
            let prefix = try PrefixTuning(config: PrefixTuningConfig(numVirtualTokens: 3))
            try prefix.attach(to: model)
            let (L, KVH, D) = (config.numLayers, config.numKVHeads, config.headDim)
            let e = prefix.embedding!
            XCTAssertEqual(e.shape, [3, L * 2 * KVH * D])
            e.assign(Tensor(shape: e.shape, data: (0..<e.count).map(Float.init)))
            let perLayer = prefix.keysValues(batch: 2)
            XCTAssertEqual(perLayer.count, L)
            for (l, (k, v)) in perLayer.enumerated() {
                XCTAssertEqual(k.shape, [2, 3, KVH, D])
                XCTAssertTrue(k.storage === e.storage && v.storage === e.storage, "views, no copy")
                let (ka, va) = (k.toArray(), v.toArray())
                for b in 0..<2 { for p in 0..<3 { for hh in 0..<KVH { for d in 0..<D {
                    let out = ((b * 3 + p) * KVH + hh) * D + d
                    let col = { (slot: Int) in Float(p * (L * 2 * KVH * D) + (slot * KVH + hh) * D + d) }
                    XCTAssertEqual(ka[out], col(2 * l), "\(config.family) keys l\(l)")
                    XCTAssertEqual(va[out], col(2 * l + 1), "\(config.family) values l\(l)")
                } } } }
            }
            XCTAssertEqual(prefix.peftTensors().map(\.0), ["prompt_embeddings"])
            XCTAssertEqual(prefix.peftTensors()[0].1.toArray(), e.toArray())
        }
    }

    func testConfigJSONUsesPEFTFieldNames() throws {
        func decode<C: DefaultedCodable>(_ t: C.Type, _ json: String) throws -> C { try C.decode(Data(json.utf8)) }
        let pt = try decode(PromptTuningConfig.self, """
            {"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 8, "prompt_tuning_init": "TEXT",
             "prompt_tuning_init_text": "Classify:", "tokenizer_name_or_path": "gpt2", "token_dim": 16, "revision": null}
            """)
        XCTAssertEqual(pt.numVirtualTokens, 8)
        XCTAssertEqual(pt.promptTuningInit, .text)
        XCTAssertEqual(pt.promptTuningInitText, "Classify:")
        XCTAssertEqual(pt.tokenDim, 16)
        XCTAssertEqual(pt.numTransformerSubmodules, 1)
        let p = try decode(PTuningConfig.self, """
            {"peft_type": "P_TUNING", "num_virtual_tokens": 5, "encoder_reparameterization_type": "LSTM",
             "encoder_hidden_size": 7, "encoder_num_layers": 1, "encoder_dropout": 0.1}
            """)
        XCTAssertEqual(p.encoderReparameterizationType, .lstm)
        XCTAssertEqual(p.encoderHiddenSize, 7)
        XCTAssertEqual(p.encoderNumLayers, 1)
        XCTAssertEqual(p.encoderDropout, 0.1)
        let prefixDefaults = try decode(PrefixTuningConfig.self, #"{"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 3}"#)
        XCTAssertFalse(prefixDefaults.prefixProjection)
        XCTAssertNil(prefixDefaults.encoderHiddenSize)
        XCTAssertThrowsError(try decode(PrefixTuningConfig.self, #"{"peft_type": "PREFIX_TUNING"}"#)) { e in
            XCTAssertTrue("\(e)".contains("num_virtual_tokens"), "\(e)")
        }
        XCTAssertThrowsError(try PTuning(config: decode(PTuningConfig.self, #"{"peft_type": "LORA", "num_virtual_tokens": 3}"#)))
        XCTAssertThrowsError(try decode(PTuningConfig.self, #"{"num_virtual_tokens": 3, "encoder_reparameterization_type": "GRU"}"#))

        // After attach the model's sizes are filled in (prefix: PEFT's grouped-query rewrite) and
        // the JSON decodes back to the same config.
        let model = makeModel(llamaTiny)
        let prefix = try PrefixTuning(config: PrefixTuningConfig(numVirtualTokens: 3, prefixProjection: true))
        try prefix.attach(to: model)
        let json = try prefix.configJSON()
        let dict = try JSONSerialization.jsonObject(with: json) as! [String: Any]
        XCTAssertEqual(dict["peft_type"] as? String, "PREFIX_TUNING")
        XCTAssertEqual(dict["token_dim"] as? Int, llamaTiny.kvDim)
        XCTAssertEqual(dict["num_attention_heads"] as? Int, llamaTiny.numKVHeads)
        XCTAssertEqual(dict["num_layers"] as? Int, llamaTiny.numLayers)
        XCTAssertEqual(dict["encoder_hidden_size"] as? Int, llamaTiny.kvDim)
        XCTAssertEqual(dict["prefix_projection"] as? Bool, true)
        XCTAssertTrue(dict["base_model_name_or_path"] is NSNull, "unset fields are null, as PEFT writes them")
        let text = String(decoding: json, as: UTF8.self)
        let keys = dict.keys.sorted()
        let positions = keys.map { text.range(of: "\"\($0)\"")!.lowerBound }
        XCTAssertEqual(positions, positions.sorted(), "sorted keys")
        XCTAssertEqual(try PrefixTuningConfig.decode(json), prefix.config)
        // The saved config (token_dim = kv_dim already) attaches again: the rewrite is idempotent.
        try PrefixTuning(config: prefix.config).attach(to: makeModel(llamaTiny))
        var wrong = PrefixTuningConfig(numVirtualTokens: 3)
        wrong.tokenDim = 12
        XCTAssertThrowsError(try PrefixTuning(config: wrong).attach(to: makeModel(llamaTiny))) { e in
            XCTAssertTrue("\(e)".contains("token_dim") && "\(e)".contains("HINT"), "\(e)")
        }
        for m in [try PromptTuning(config: pt, initTokenIDs: [1]) as PromptLearningMethod, try PTuning(config: p)] {
            let again = try m.configJSON()
            XCTAssertTrue(String(decoding: again, as: UTF8.self).contains("\"num_virtual_tokens\""))
        }
        XCTAssertEqual(try PromptTuningConfig.decode(JSONEncoder().encode(pt)), pt)
        XCTAssertEqual(try PTuningConfig.decode(JSONEncoder().encode(p)), p)
    }

    /// Central differences on a few elements of every trainable tensor through the whole model
    /// (the LSTM encoder included).
    func testGradientThroughWholeModel() throws {
        for config in [gpt2Tiny, llamaTiny] {
            for v in promptVariants {
                let model = makeModel(config, seed: 7)
                let method = try v.make()
                try method.attach(to: model)
                let ids: [Int32] = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
                let targets = CausalLM.shiftedTargets(ids, batch: 2)
                model.loss(ids, targets: targets, batch: 2).backward()
                func lossValue() -> Double { Double(withNoGrad { model.loss(ids, targets: targets, batch: 2) }.item()) }
                for (key, t) in method.adapterParameters() {
                    guard let g = t.grad?.toArray() else { XCTFail("\(config.family) \(v.name) \(key): no gradient"); continue }
                    let scale = max(Double(g.map(abs).max() ?? 0), 1e-3)
                    var picks = RNG(seed: UInt64(key.utf8.count))
                    var worst = 0.0
                    for _ in 0..<min(4, t.count) {
                        let i = picks.nextInt(t.count)
                        let saved = t.basePointer[i]
                        t.basePointer[i] = saved + 1e-2
                        let lp = lossValue()
                        t.basePointer[i] = saved - 1e-2
                        let lm = lossValue()
                        t.basePointer[i] = saved
                        worst = maxKeepingNaN(worst, abs((lp - lm) / 2e-2 - Double(g[i])) / scale)
                    }
                    XCTAssertLessThan(worst, 3e-2, "\(config.family) \(v.name) \(key)")
                }
            }
        }
    }

    /// One LSTM direction against the PyTorch equations written with scalars: gates (i, f, g, o)
    /// are row blocks 0, 1, 2, 3 of weight_ih / weight_hh; h₀ = c₀ = 0.
    func testLSTMMatchesScalarReference() {
        var rng = RNG(seed: 9)
        let (n, inF, h) = (5, 3, 2)
        let lstm = LSTMDirection(input: inF, hidden: h, rng: &rng)
        let x = Tensor.normal([n, inF], rng: &rng)
        let (wi, wh, bi, bh, xs) = (lstm.weightIH.toArray(), lstm.weightHH.toArray(), lstm.biasIH.toArray(), lstm.biasHH.toArray(), x.toArray())
        func sigmoid(_ z: Float) -> Float { 1 / (1 + exp(-z)) }
        for reverse in [false, true] {
            var (hs, cs) = ([Float](repeating: 0, count: h), [Float](repeating: 0, count: h))
            var expected = [Float](repeating: 0, count: n * h)
            for t in reverse ? Array((0..<n).reversed()) : Array(0..<n) {
                func pre(_ gate: Int, _ j: Int) -> Float {
                    let r = gate * h + j
                    var s = bi[r] + bh[r]
                    for k in 0..<inF { s += wi[r * inF + k] * xs[t * inF + k] }
                    for k in 0..<h { s += wh[r * h + k] * hs[k] }
                    return s
                }
                let gates = (0..<h).map { j in (sigmoid(pre(0, j)), sigmoid(pre(1, j)), tanh(pre(2, j)), sigmoid(pre(3, j))) }
                for j in 0..<h {
                    let (i, f, g, o) = gates[j]
                    cs[j] = f * cs[j] + i * g
                    hs[j] = o * tanh(cs[j])
                    expected[t * h + j] = hs[j]
                }
            }
            XCTAssertLessThan(maxAbsDiff(lstm(x, reverse: reverse).toArray(), expected), 1e-5, "reverse \(reverse)")
        }
        // The bidirectional encoder uses PyTorch's parameter names and shapes.
        let model = makeModel(gpt2Tiny)
        let pt = try! PTuning(config: PTuningConfig(numVirtualTokens: 3, type: .lstm, encoderHiddenSize: 4))
        try! pt.attach(to: model)
        let shapes = Dictionary(uniqueKeysWithValues: pt.adapterParameters().map { ($0.0, $0.1.shape) })
        XCTAssertEqual(shapes["prompt_encoder.lstm_head.weight_ih_l0"], [16, 16])
        XCTAssertEqual(shapes["prompt_encoder.lstm_head.weight_hh_l0_reverse"], [16, 4])
        XCTAssertEqual(shapes["prompt_encoder.lstm_head.weight_ih_l1"], [16, 8])
        XCTAssertEqual(shapes["prompt_encoder.lstm_head.bias_hh_l1_reverse"], [16])
        XCTAssertEqual(shapes["prompt_encoder.mlp_head.0.weight"], [8, 8])
        XCTAssertEqual(shapes["prompt_encoder.mlp_head.2.weight"], [16, 8])
        XCTAssertEqual(pt.promptEmbeddings().shape, [3, 16])
    }

    func testInitModes() throws {
        let model = makeModel(llamaTiny, seed: 3)
        let table = model.tokenEmbeddingTable.toArray()
        let C = llamaTiny.hiddenSize
        func row(_ id: Int) -> [Float] { Array(table[(id * C)..<((id + 1) * C)]) }
        // TEXT: the ids repeated to P, or truncated.
        for (p, expected) in [(5, [3, 7, 3, 7, 3]), (1, [3])] {
            let m = makeModel(llamaTiny, seed: 3)
            let pt = try PromptTuning(config: PromptTuningConfig(numVirtualTokens: p, promptTuningInit: .text), initTokenIDs: [3, 7])
            try pt.attach(to: m)
            XCTAssertEqual(pt.embedding!.toArray(), expected.flatMap(row), "TEXT P=\(p)")
        }
        XCTAssertThrowsError(try PromptTuning(config: PromptTuningConfig(numVirtualTokens: 4, promptTuningInit: .text))) { e in
            XCTAssertTrue("\(e)".contains("TEXT") && "\(e)".contains("initTokenIDs"), "\(e)")
        }
        XCTAssertNoThrow(try PromptTuning(config: PromptTuningConfig(numVirtualTokens: 4, promptTuningInit: .text), restoring: true))
        XCTAssertThrowsError(try PromptTuning(config: PromptTuningConfig(numVirtualTokens: 2, promptTuningInit: .text),
                                              initTokenIDs: [99]).attach(to: makeModel(llamaTiny)))
        // SAMPLE_VOCAB: every row is a row of the table; the same seed draws the same rows.
        func sampled(seed: UInt64) throws -> [Float] {
            let pt = try PromptTuning(config: PromptTuningConfig(numVirtualTokens: 6, promptTuningInit: .sampleVocab), seed: seed)
            try pt.attach(to: makeModel(llamaTiny, seed: 3))
            return pt.embedding!.toArray()
        }
        let s = try sampled(seed: 1)
        for r in 0..<6 {
            let values = Array(s[(r * C)..<((r + 1) * C)])
            XCTAssertTrue((0..<llamaTiny.vocabSize).contains { row($0) == values }, "row \(r) comes from the table")
        }
        XCTAssertEqual(try sampled(seed: 1), s)
        XCTAssertNotEqual(try sampled(seed: 2), s)
    }

    /// Our checkpoints: config JSON + the raw trainable tensors rebuild an identical adapter (the
    /// path AdapterCheckpoint takes: make from the config, attach, load the tensors).
    func testConfigAndAdapterTensorsRebuildTheAdapter() throws {
        for config in [gpt2Tiny, llamaTiny] {
            for v in promptVariants {
                let model = makeModel(config, seed: 9)
                let method = try v.make()
                try method.attach(to: model)
                let tensors = Dictionary(uniqueKeysWithValues: method.adapterParameters().map { ($0.0, $0.1.copy()) })
                let json = try method.configJSON()
                let rebuilt: PromptLearningMethod
                if method is PromptTuning {
                    rebuilt = try PromptTuning(config: PromptTuningConfig.decode(json), seed: 99)
                } else if method is PTuning {
                    rebuilt = try PTuning(config: PTuningConfig.decode(json), seed: 99)
                } else {
                    rebuilt = try PrefixTuning(config: PrefixTuningConfig.decode(json), seed: 99)
                }
                let fresh = makeModel(config, seed: 9)
                try rebuilt.attach(to: fresh)
                XCTAssertEqual(rebuilt.adapterParameters().map(\.0), method.adapterParameters().map(\.0), v.name)
                try rebuilt.loadAdapterParameters(tensors, source: "checkpoint")
                XCTAssertEqual(logits(fresh), logits(model), "\(config.family) \(v.name)")
            }
        }
    }

    /// PEFT saves P-Tuning and projected prefixes as the encoder output with inference_mode true;
    /// such a config builds the plain embedding, loads `prompt_embeddings` and gives the same logits.
    func testInferenceModeLoadsPEFTPromptEmbeddings() throws {
        for config in [gpt2Tiny, llamaTiny] {
            for v in promptVariants {
                let trained = makeModel(config, seed: 8)
                let method = try v.make()
                try method.attach(to: trained)
                let saved = Dictionary(uniqueKeysWithValues: method.peftTensors())
                var json = try JSONSerialization.jsonObject(with: method.configJSON()) as! [String: Any]
                json["inference_mode"] = true
                let data = try JSONSerialization.data(withJSONObject: json)
                let loaded: PromptLearningMethod
                if method is PromptTuning {
                    loaded = try PromptTuning(config: PromptTuningConfig.decode(data))
                } else if method is PTuning {
                    loaded = try PTuning(config: PTuningConfig.decode(data))
                } else {
                    loaded = try PrefixTuning(config: PrefixTuningConfig.decode(data))
                }
                let fresh = makeModel(config, seed: 8)
                try loaded.attach(to: fresh)
                XCTAssertEqual(loaded.adapterParameters().map(\.0), ["prompt_embeddings"], v.name)
                try loaded.loadAdapterParameters(saved, source: "peft")
                XCTAssertLessThan(maxAbsDiff(logits(fresh), logits(trained)), 1e-5, "\(config.family) \(v.name)")
            }
        }
    }
}
