// LoRA and DoRA: target matching, freezing, counts, merge ≡ unmerged, exact unmerge, several
// adapters at once, adapter checkpoints and the base fingerprint.

import XCTest
import TestSupport
@testable import PEFT
@testable import Formats
import TensorCore
import NN
import Models
import Tokenizers
import Containers
import Training

let gpt2Tiny = ModelConfig.gpt2(vocabSize: 37, hiddenSize: 16, numLayers: 2, numHeads: 2, maxPositions: 32)
let llamaTiny = ModelConfig.llama(vocabSize: 37, hiddenSize: 16, numLayers: 2, numHeads: 4, numKVHeads: 2,
                                  intermediateSize: 24, attentionBias: true)
let sampleIDs: [Int32] = [1, 4, 9, 16, 25, 36, 2, 3, 5, 7]

func logits(_ m: CausalLM, _ ids: [Int32] = sampleIDs) -> [Float] { withNoGrad { m.forward(ids, batch: 2) }.toArray() }

func loraConfig(_ targets: ModuleSelector, r: Int = 4, dora: Bool = false, random: Bool = true) -> LoRAConfig {
    var c = LoRAConfig(r: r, loraAlpha: 8, targetModules: targets)
    c.useDora = dora
    if random { c.initLoraWeights = .random }
    return c
}

final class LoRATests: XCTestCase {
    func testTargetMatchingRules() throws {
        let m = makeModel(llamaTiny)
        func targets(_ c: LoRAConfig) throws -> [String] { try LoRA(config: c).attach(to: makeModel(llamaTiny)) }
        XCTAssertEqual(try targets(LoRAConfig(targetModules: .names(["q_proj", "v_proj"]))),
                       ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                        "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"])
        XCTAssertEqual(try targets(LoRAConfig(targetModules: .names(["self_attn.o_proj"]))).count, 2, "dotted suffix")
        XCTAssertEqual(try targets(LoRAConfig(targetModules: .regex(".*layers\\.1\\..*_proj"))).count, 7, "full-match regex")
        XCTAssertThrowsError(try targets(LoRAConfig(targetModules: .regex("q_proj"))), "a regex must match the whole name")
        XCTAssertEqual(try targets(LoRAConfig(targetModules: .names(["all-linear"]))).count, 14, "all linears but lm_head")
        var c = LoRAConfig(targetModules: .names(["all-linear"]))
        c.excludeModules = .names(["mlp.down_proj"])
        c.layersToTransform = [1]
        XCTAssertEqual(try targets(c), ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj",
                                        "model.layers.1.self_attn.v_proj", "model.layers.1.self_attn.o_proj",
                                        "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"])
        // As PEFT: "all-linear" in any case; layers_to_transform [] is every layer; a list entry that
        // is a whole module name is not filtered by layer.
        XCTAssertEqual(try targets(LoRAConfig(targetModules: .regex("ALL-Linear"))).count, 14)
        var everyLayer = LoRAConfig(targetModules: .names(["q_proj"]))
        everyLayer.layersToTransform = []
        XCTAssertEqual(try targets(everyLayer).count, 2)
        var exact = LoRAConfig(targetModules: .names(["model.layers.0.self_attn.q_proj", "v_proj"]))
        exact.layersToTransform = [1]
        XCTAssertEqual(try targets(exact), ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"])
        // A PEFT folder gets target_modules as PEFT reads them; SwiftPEFT's own config keeps what was given.
        let allLinear = try LoRA(config: LoRAConfig(targetModules: .names(["all-linear"])))
        try allLinear.attach(to: makeModel(llamaTiny))
        XCTAssertEqual(try allLinear.peftFolderContents(base: llamaTiny).config["target_modules"] as? String, "all-linear")
        XCTAssertEqual((try JSONSerialization.jsonObject(with: allLinear.configJSON()) as? [String: Any])?["target_modules"] as? [String], ["all-linear"])
        func readable(_ targets: Any, _ layers: Any?) -> [String: Any] {
            var c: [String: Any] = ["target_modules": targets]
            if let layers { c["layers_to_transform"] = layers }
            peftReadableTargets(&c, adapted: ["model.layers.1.self_attn.q_proj"])
            return c
        }
        XCTAssertEqual(readable(["all-linear"], [1])["target_modules"] as? [String], ["model.layers.1.self_attn.q_proj"])
        XCTAssertTrue(readable(["all-linear"], [1])["layers_to_transform"] is NSNull)
        XCTAssertEqual(readable(".*q_proj", [1])["target_modules"] as? [String], ["model.layers.1.self_attn.q_proj"])
        XCTAssertEqual(readable(".*q_proj", [Int]())["target_modules"] as? String, ".*q_proj", "[]: every layer, the regex kept")
        XCTAssertTrue(readable(".*q_proj", [Int]())["layers_to_transform"] is NSNull)
        XCTAssertEqual(readable(["q_proj"], [1])["target_modules"] as? [String], ["q_proj"], "a list with layers is PEFT's own")
        XCTAssertEqual(readable(["q_proj"], [1])["layers_to_transform"] as? [Int], [1])
        XCTAssertThrowsError(try LoRA(config: LoRAConfig(targetModules: .names(["query"]))).attach(to: m)) { e in
            let s = "\(e)"
            XCTAssertTrue(s.contains("matched no") && s.contains("model.layers.0.self_attn.q_proj") && s.contains("\"q_proj\""), s)
        }
        // An entry naming an embedding or a whole block is an error, not skipped beside q_proj; one
        // naming nothing (GPT-2's c_attn on a LLaMA) is allowed.
        for entry in ["embed_tokens", "mlp"] {
            XCTAssertThrowsError(try LoRA(config: LoRAConfig(targetModules: .names(["q_proj", entry]))).attach(to: m)) { e in
                XCTAssertTrue("\(e)".contains("\"\(entry)\"") && "\(e)".contains("not implemented"), "\(e)")
            }
        }
        XCTAssertTrue(m.namedModules().compactMap { $0.1 as? Linear }.allSatisfy { $0.hooks.isEmpty }, "nothing attached")
        XCTAssertEqual(try targets(LoRAConfig(targetModules: .names(["q_proj", "c_attn"]))).count, 2)
        // lm_head tied to the embedding is no Linear of its own: named, it is an error, not skipped.
        let tied = makeModel(.llama(vocabSize: 37, hiddenSize: 16, numLayers: 1, numHeads: 4, numKVHeads: 2, intermediateSize: 24,
                                    tieWordEmbeddings: true))
        XCTAssertThrowsError(try LoRA(config: LoRAConfig(targetModules: .names(["q_proj", "lm_head"]))).attach(to: tied)) { e in
            XCTAssertTrue("\(e)".contains("tie_word_embeddings"), "\(e)")
        }
        XCTAssertEqual(try targets(LoRAConfig(targetModules: .names(["q_proj", "lm_head"]))).count, 3, "untied: lm_head adapts")
        // modules_to_save on the tied embedding would train the head too (PEFT trains a copy): refused, nothing attached.
        var saveEmbedding = LoRAConfig(targetModules: .names(["q_proj"]))
        saveEmbedding.modulesToSave = ["embed_tokens"]
        XCTAssertThrowsError(try LoRA(config: saveEmbedding).attach(to: tied)) { e in
            XCTAssertTrue("\(e)".contains("ties to its output head") && "\(e)".contains("model.embed_tokens.weight"), "\(e)")
        }
        XCTAssertTrue(tied.namedModules().compactMap { $0.1 as? Linear }.allSatisfy { $0.hooks.isEmpty }, "nothing attached")
    }

    func testAttachFreezesBaseAndCountsMatchTheFormula() throws {
        for (config, targets) in [(gpt2Tiny, ModuleSelector.names(["c_attn"])), (llamaTiny, .names(["q_proj", "v_proj"]))] {
            for dora in [false, true] {
                let model = makeModel(config)
                let lora = try LoRA(config: loraConfig(targets, dora: dora, random: false))
                let names = try lora.attach(to: model)
                XCTAssertTrue(model.trainableParameters().isEmpty, "base frozen")
                XCTAssertEqual(lora.trainableCount, lora.expectedTrainableCount)
                let linears = names.map { n in model.namedModules().first { $0.0 == n }!.1 as! Linear }
                let formula = linears.reduce(0) { $0 + 4 * ($1.inFeatures + $1.outFeatures) + (dora ? $1.outFeatures : 0) }
                XCTAssertEqual(lora.trainableCount, formula, "\(config.family) dora \(dora)")
                let report = TrainableReport(model: model, methods: [lora])
                XCTAssertEqual(report.trainable, formula)
                XCTAssertEqual(report.total, model.parameterCount + formula)
                XCTAssertTrue(report.description.contains("trainable%"))
            }
        }
    }

    /// B = 0 (LoRA) and m = ‖W‖ (DoRA) leave the model unchanged at init.
    func testUnchangedAtInit() throws {
        for config in [gpt2Tiny, llamaTiny] {
            for dora in [false, true] {
                let model = makeModel(config, seed: 2)
                let before = logits(model)
                try LoRA(config: loraConfig(.names(["all-linear"]), dora: dora, random: false)).attach(to: model)
                XCTAssertLessThan(maxAbsDiff(logits(model), before), 1e-5, "\(config.family) dora \(dora)")
            }
        }
    }

    /// Merged and unmerged logits agree to 1e-5; unmerge restores the weights bit for bit.
    /// Layers on one input (q, k, v; gate, up) run their LoRA x Aᵀ as one GEMM: outputs and every
    /// gradient (x, A, B) equal calling each layer, in fewer GEMMs; a hook that cannot share
    /// (DoRA) falls back to its own call.
    func testLayersSharingAnInputShareTheAGEMM() throws {
        for dora in [false, true] {
            let model = makeModel(llamaTiny)
            _ = try LoRA(config: loraConfig(.names(["q_proj", "k_proj", "v_proj"]), dora: dora)).attach(to: model)
            let attn = (model as! LlamaModel).model.layers.items[0].selfAttn
            let layers = [attn.qProj, attn.kProj, attn.vProj]
            var rng = RNG(seed: 5)
            let x0 = Tensor.normal([2, 3, 16], rng: &rng)
            let weights = layers.map { Tensor.normal([2, 3, $0.outFeatures], rng: &rng) }
            func run(_ f: (Tensor) -> [Tensor]) -> (out: [[Float]], grads: [[Float]], gemms: Int) {
                let x = x0.copy()
                x.requiresGrad = true
                for l in layers { for h in l.hooks { (h as! LoRALayer).a.zeroGrad(); (h as! LoRALayer).b.zeroGrad() } }
                let before = BLASCounter.sgemmCalls
                let ys = f(x)
                let gemms = BLASCounter.sgemmCalls - before
                zip(ys, weights).map { ($0 * $1).sum() }.reduce(Tensor.zeros([]), +).backward()
                let hooks = layers.map { $0.hooks[0] as! LoRALayer }
                return (ys.map { $0.toArray() }, [x.grad!.toArray()] + hooks.flatMap { [$0.a.grad!.toArray(), $0.b.grad!.toArray()] }, gemms)
            }
            let shared = run { Linear.apply(layers, to: $0) }
            let separate = run { x in layers.map { $0(x) } }
            for (s, r) in zip(shared.out + shared.grads, separate.out + separate.grads) {
                assertClose(s, r, rtol: 1e-5, atol: 1e-6, "dora \(dora)")
            }
            if dora {
                XCTAssertEqual(shared.gemms, separate.gemms, "DoRA keeps one call per layer")
            } else {
                XCTAssertEqual(separate.gemms - shared.gemms, 2, "one x Aᵀ GEMM for three layers instead of three")
            }
        }
    }

    func testMergeUnmerge() throws {
        for config in [gpt2Tiny, llamaTiny] {
            for dora in [false, true] {
                let model = makeModel(config, seed: 3)
                let weightsBefore = model.namedParameters().map { $0.1.toArray() }
                let base = logits(model)
                let lora = try LoRA(config: loraConfig(.names(["all-linear"]), dora: dora))
                try lora.attach(to: model)
                let adapted = logits(model)
                XCTAssertGreaterThan(maxAbsDiff(adapted, base), 1e-3, "random B changes the model")
                lora.merge()
                XCTAssertTrue(lora.isMerged)
                XCTAssertLessThan(maxAbsDiff(logits(model), adapted), 1e-5, "\(config.family) dora \(dora): merged ≡ unmerged")
                lora.unmerge()
                XCTAssertEqual(model.namedParameters().map { $0.1.toArray() }, weightsBefore, "exact unmerge")
                XCTAssertLessThan(maxAbsDiff(logits(model), adapted), 1e-6)
                // Disabled while merged: unmerged first, so the model is the base (as PEFT's disable_adapters).
                lora.merge()
                lora.isEnabled = false
                XCTAssertFalse(lora.isMerged)
                XCTAssertEqual(model.namedParameters().map { $0.1.toArray() }, weightsBefore, "disabled: the base weights")
                XCTAssertEqual(logits(model), base, "disabled: the base")
                lora.isEnabled = true
                XCTAssertLessThan(maxAbsDiff(logits(model), adapted), 1e-6, "on again, unmerged")
                lora.detach(from: model)
                XCTAssertEqual(logits(model), base, "detached: the base again")
            }
        }
    }

    /// Two adapters merged into the same layers (LoRA, then IA3), the first one detached: the second
    /// stays merged and the model is the base with it alone; unmerging that one gives the base bit
    /// for bit.
    func testUnmergingAnAdapterMergedBeforeAnotherKeepsTheOther() throws {
        let weightsBefore = makeModel(llamaTiny, seed: 6).namedParameters().map { $0.1.toArray() }
        let base = logits(makeModel(llamaTiny, seed: 6))
        var ia3Config = IA3Config(targetModules: .names(["q_proj", "v_proj"]), feedforwardModules: .names([]))
        ia3Config.initIa3Weights = false
        let onlyB = makeModel(llamaTiny, seed: 6)
        try IA3(config: ia3Config, seed: 2).attach(to: onlyB)
        let expected = logits(onlyB)
        let model = makeModel(llamaTiny, seed: 6)
        let a = try LoRA(config: loraConfig(.names(["q_proj", "v_proj"])), name: "a", seed: 1)
        let b = try IA3(config: ia3Config, name: "b", seed: 2)
        try a.attach(to: model)
        try b.attach(to: model)
        a.merge()
        b.merge()
        a.detach(from: model)
        XCTAssertTrue(b.isMerged)
        XCTAssertGreaterThan(maxAbsDiff(expected, base), 1e-3, "IA3 changes the model")
        XCTAssertLessThan(maxAbsDiff(logits(model), expected), 1e-5, "the base with IA3 alone, still merged")
        b.detach(from: model)
        XCTAssertTrue(model.namedParameters().map { $0.1.toArray() } == weightsBefore, "the base's weights, bit for bit")
    }

    /// Several adapters on one model: each can be turned off; all off is the base.
    func testSeveralAdaptersSwitching() throws {
        let model = makeModel(llamaTiny, seed: 5)
        let base = logits(model)
        let a = try LoRA(config: loraConfig(.names(["q_proj", "v_proj"])), name: "a", seed: 1)
        let b = try LoRA(config: loraConfig(.names(["q_proj", "v_proj"])), name: "b", seed: 2)
        try a.attach(to: model)
        try b.attach(to: model)
        b.isEnabled = false
        let onlyA = logits(model)
        (a.isEnabled, b.isEnabled) = (false, true)
        let onlyB = logits(model)
        b.isEnabled = false
        XCTAssertEqual(logits(model), base, "all disabled")
        XCTAssertGreaterThan(maxAbsDiff(onlyA, onlyB), 1e-3)
        b.detach(from: model)
        a.isEnabled = true
        // Alone on q and v, a's branches share one x Aᵀ GEMM (another summation order than the
        // two calls made while b was attached): equal to rounding.
        assertClose(logits(model), onlyA, rtol: 1e-5, atol: 1e-6, "only a, after b's detach")
    }

    /// Several adapters in one batch, each on its own rows (serving): row b of the batched logits
    /// equals row b computed with only its own adapter on (LoRA, DoRA and IA3, a feed-forward input
    /// scaling included); rows given to no adapter are the base's. Training refuses row scopes.
    func testAdaptersLimitedToBatchRows() throws {
        let model = makeModel(llamaTiny, seed: 6)
        let lora = try LoRA(config: loraConfig(.names(["q_proj", "v_proj", "down_proj"])), name: "lora", seed: 1)
        let dora = try LoRA(config: loraConfig(.names(["q_proj", "o_proj"]), dora: true), name: "dora", seed: 2)
        var ic = IA3Config(targetModules: .names(["k_proj", "down_proj"]), feedforwardModules: .names(["down_proj"]))
        ic.initIa3Weights = false
        let ia3 = try IA3(config: ic)
        let methods: [RowScopedPEFTMethod] = [lora, dora, ia3]
        for m in methods { try m.attach(to: model) }
        let B = 4, T = 5
        let ids = (0..<(B * T)).map { Int32(($0 * 7 + 3) % 37) }
        func rowLogits(_ on: RowScopedPEFTMethod?) -> [Float] {
            for m in methods { m.isEnabled = m === on; m.batchRows = nil }
            return withNoGrad { model.forward(ids, batch: B) }.toArray()
        }
        let alone = [rowLogits(nil), rowLogits(lora), rowLogits(dora), rowLogits(ia3)]  // row b uses alone[b]
        for (b, m) in methods.enumerated() { m.isEnabled = true; m.batchRows = (b + 1)..<(b + 2) }
        let mixed = withNoGrad { model.forward(ids, batch: B) }.toArray()
        let per = mixed.count / B
        for b in 0..<B {
            assertClose(Array(mixed[b * per..<(b + 1) * per]), Array(alone[b][b * per..<(b + 1) * per]), rtol: 1e-5, atol: 1e-5, "row \(b)")
        }
        XCTAssertGreaterThan(maxAbsDiff(Array(alone[1][per..<2 * per]), Array(alone[0][per..<2 * per])), 1e-3, "the adapters change their rows")
        for m in methods { m.batchRows = nil }
    }

    /// DoRA with LoRA dropout while training: the base term is W·dropout(x), as PEFT computes it,
    /// not the layer's output on x (checked with the same dropout mask, drawn from the same state).
    func testDoRAWithDropoutTakesTheBaseTermFromTheDroppedInput() throws {
        let model = makeModel(llamaTiny, seed: 3)
        var c = loraConfig(.names(["q_proj"]), dora: true)
        c.loraDropout = 0.5
        let lora = try LoRA(config: c, seed: 4)
        try lora.attach(to: model)
        let (_, linear, layer) = lora.layers[0]
        let m = try XCTUnwrap(layer.magnitude)
        withNoGrad { m.assign(m * 1.5) }  // off its init, so (m / ‖W + ΔW‖ − 1) weighs the base term
        model.train()
        let n = 3 * linear.inFeatures
        let x = Tensor(shape: [3, linear.inFeatures], data: (0..<n).map { sin(Float($0)) })
        let w = linear.weightOutIn.detached()
        let y = withNoGrad { x.matmul(w.transposed()) }  // no bias in LLaMA's q_proj
        var rng = model.random.value
        let xd = x.dropout(0.5, rng: &rng)
        let out = withNoGrad { layer.output(y, input: x, layer: linear) }.toArray()
        let expected: [Float] = withNoGrad {
            let s = layer.scale
            let magScale = m / LoRALayer.rowNorm(w, delta: LoRALayer.delta(layer.a, layer.b, s))
            let update = (xd.matmul(layer.a.transposed()) * s).matmul(layer.b.transposed())
            return (y + (magScale - 1) * xd.matmul(w.transposed()) + magScale * update).toArray()
        }
        assertClose(out, expected, rtol: 1e-5, atol: 1e-6, "DoRA with dropout")
        model.eval()
    }

    /// DoRA with trained biases (GPT-2's c_attn, bias "lora_only"): central differences on the bias
    /// against backward(). The bias moves the output one for one, whatever DoRA's row scale.
    func testDoRABiasGradientMatchesFiniteDifferences() throws {
        let model = makeModel(gpt2Tiny, seed: 5)
        var c = loraConfig(.names(["c_attn"]), dora: true)
        c.bias = "lora_only"
        let dora = try LoRA(config: c, seed: 2)
        try dora.attach(to: model)
        dora.state.doraDetachNorm = false  // the exact derivative of the forward
        randomizeAdapter(dora, mean: 0.5, std: 0.3, seed: 9)  // m far from ‖W + ΔW‖: a row scale ≠ 1
        let biases = dora.extraTrainable
        XCTAssertEqual(biases.count, gpt2Tiny.numLayers)
        let ids: [Int32] = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
        let targets = CausalLM.shiftedTargets(ids, batch: 2)
        model.loss(ids, targets: targets, batch: 2).backward()
        func lossValue() -> Double { Double(withNoGrad { model.loss(ids, targets: targets, batch: 2) }.item()) }
        for (name, b, _) in biases {
            let g = try XCTUnwrap(b.grad?.toArray(), "\(name): no gradient")
            let scale = max(Double(g.map(abs).max() ?? 0), 1e-3)
            var picks = RNG(seed: 4)
            for _ in 0..<6 {
                let i = picks.nextInt(b.count)
                let saved = b.basePointer[i]
                b.basePointer[i] = saved + 1e-2
                let lp = lossValue()
                b.basePointer[i] = saved - 1e-2
                let lm = lossValue()
                b.basePointer[i] = saved
                XCTAssertLessThan(abs((lp - lm) / 2e-2 - Double(g[i])), 3e-2 * scale + 2e-4, "\(name)[\(i)]")
            }
        }
    }

    func testRsLoRAPatternsAndBias() throws {
        let model = makeModel(llamaTiny)
        var c = loraConfig(.names(["q_proj", "v_proj"]), r: 4)
        c.useRslora = true
        c.rankPattern = ["v_proj": 2]
        c.alphaPattern = ["layers\\.1\\.self_attn\\.q_proj": 16]
        c.bias = "lora_only"
        let lora = try LoRA(config: c)
        try lora.attach(to: model)
        let byName = Dictionary(uniqueKeysWithValues: lora.layers.map { ($0.module, $0.lora) })
        XCTAssertEqual(byName["model.layers.0.self_attn.v_proj"]?.rank, 2)
        XCTAssertEqual(byName["model.layers.0.self_attn.q_proj"]!.scale, 8 / 2, accuracy: 1e-6, "alpha / √r")
        XCTAssertEqual(byName["model.layers.1.self_attn.q_proj"]!.scale, 16 / 2, accuracy: 1e-6)
        XCTAssertEqual(lora.extraTrainable.count, 4, "q/v biases of the adapted layers")
        XCTAssertEqual(lora.trainableCount, lora.expectedTrainableCount)
        XCTAssertThrowsError(try LoRA(config: { var b = c; b.bias = "some"; return b }()))
        // Two keys that match one module: the same value is fine; different values are refused (PEFT
        // would take the first in its file, an order the JSON object does not keep).
        var same = c
        same.alphaPattern = ["q_proj": 16, "layers.1.self_attn.q_proj": 16]
        let agreeing = try LoRA(config: same)
        try agreeing.attach(to: makeModel(llamaTiny))
        XCTAssertEqual(agreeing.layers.first { $0.module == "model.layers.1.self_attn.q_proj" }!.lora.scale, 8, accuracy: 1e-6)
        var clash = c
        clash.alphaPattern = ["q_proj": 32, "layers.0.self_attn.q_proj": 8]
        let fresh = makeModel(llamaTiny)
        XCTAssertThrowsError(try LoRA(config: clash).attach(to: fresh)) { e in
            XCTAssertTrue("\(e)".contains("alpha_pattern") && "\(e)".contains("model.layers.0.self_attn.q_proj"), "\(e)")
        }
        XCTAssertTrue(fresh.namedModules().compactMap { $0.1 as? Linear }.allSatisfy { $0.hooks.isEmpty }, "nothing attached")
        // An adapter saved earlier with such keys loads as it was trained: the longest key wins.
        let restored = try PEFTRegistry.make("lora", config: JSONEncoder().encode(clash), restoring: true)
        try restored.attach(to: fresh)
        let scale = try XCTUnwrap((restored as? LoRA)?.layers.first { $0.module == "model.layers.0.self_attn.q_proj" }).lora.scale
        XCTAssertEqual(scale, 8 / 2, accuracy: 1e-6, "alpha 8 of layers.0.self_attn.q_proj over q_proj's 32")
    }

    func testConfigJSONUsesPEFTFieldNames() throws {
        let json = """
        {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "k_proj"], "use_dora": true,
         "init_lora_weights": "gaussian", "layers_to_transform": 0, "rank_pattern": {"k_proj": 4}, "task_type": "CAUSAL_LM"}
        """
        let c = try LoRAConfig.decode(Data(json.utf8))
        XCTAssertEqual(c.r, 16)
        XCTAssertEqual(c.loraAlpha, 32)
        XCTAssertEqual(c.targetModules, .names(["q_proj", "k_proj"]))
        XCTAssertTrue(c.useDora)
        XCTAssertEqual(c.initLoraWeights, .gaussian)
        XCTAssertEqual(c.layersToTransform, [0])
        XCTAssertEqual(c.rankPattern, ["k_proj": 4])
        let back = String(decoding: try JSONEncoder().encode(c), as: UTF8.self)
        for key in ["\"lora_alpha\"", "\"target_modules\"", "\"use_rslora\"", "\"init_lora_weights\":\"gaussian\"", "\"peft_type\":\"LORA\""] {
            XCTAssertTrue(back.contains(key), "\(key) in \(back)")
        }
    }

    func testAdapterCheckpointRoundTripAndBaseCheck() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("swiftpeft-lora-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let base = makeModel(llamaTiny, seed: 7)
        let lora = try LoRA(config: loraConfig(.names(["q_proj", "v_proj"]), dora: true))
        try lora.attach(to: base)
        let adapted = logits(base)
        let path = dir.appendingPathComponent("a.h5").path
        try AdapterCheckpoint.save(lora, base: base, to: path)
        let size = try FileManager.default.attributesOfItem(atPath: path)[.size] as! Int
        XCTAssertLessThan(size, 64 * 1024)
        let fresh = makeModel(llamaTiny, seed: 7)
        let loaded = try AdapterCheckpoint.load(path, onto: fresh)
        XCTAssertEqual(logits(fresh), adapted, "save → load gives identical logits")
        XCTAssertEqual(loaded.trainableCount, lora.trainableCount)
        let other = makeModel(llamaTiny, seed: 8)
        XCTAssertThrowsError(try AdapterCheckpoint.load(path, onto: other)) { e in
            XCTAssertTrue("\(e)".contains("another base model (the same architecture with other weights): weights hash ")
                          && "\(e)".components(separatedBy: "other weights").count == 2, "said once: \(e)")
        }
        // Another architecture: the fields that differ, each with both values, and no others.
        var wider = llamaTiny
        wider.hiddenSize *= 2
        let difference = BaseFingerprint(makeModel(wider, seed: 7)).difference(from: BaseFingerprint(fresh))
        XCTAssertEqual(difference, "hidden_size \(llamaTiny.hiddenSize) there, \(wider.hiddenSize) here")
        // Dropout rates are training settings, not architecture: the adapter fits the base read with
        // them, and a file that recorded them (as files saved before did) fits the base without.
        var dropping = llamaTiny
        (dropping.dropout, dropping.attentionDropout, dropping.embeddingDropout) = (0.1, 0.2, 0.3)
        XCTAssertNoThrow(try AdapterCheckpoint.load(path, onto: makeModel(dropping, seed: 7)))
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        let recorded = String(decoding: try enc.encode(dropping), as: UTF8.self)
        XCTAssertTrue(recorded.contains("\"attention_dropout\":0.2"), recorded)
        XCTAssertEqual(BaseFingerprint.normalized(architecture: recorded), BaseFingerprint(makeModel(llamaTiny, seed: 7)).architecture)
        XCTAssertEqual(BaseFingerprint.normalized(architecture: "?"), "?")
        var windowed = llamaTiny
        windowed.slidingWindow = 4
        XCTAssertThrowsError(try AdapterCheckpoint.load(path, onto: makeModel(windowed, seed: 7)), "a window is architecture") { e in
            XCTAssertTrue("\(e)".contains("a different architecture"), "\(e)")
        }
        // Before windows were enforced, a Mistral base was recorded with its context cut to the window.
        var oldRecord = llamaTiny
        oldRecord.maxPositions = 4
        XCTAssertEqual(BaseFingerprint.normalized(architecture: String(decoding: try enc.encode(oldRecord), as: UTF8.self), current: windowed),
                       BaseFingerprint.architecture(windowed))
        oldRecord.maxPositions = 8
        XCTAssertNotEqual(BaseFingerprint.normalized(architecture: String(decoding: try enc.encode(oldRecord), as: UTF8.self), current: windowed),
                          BaseFingerprint.architecture(windowed), "other numbers stay another architecture")
    }
}
