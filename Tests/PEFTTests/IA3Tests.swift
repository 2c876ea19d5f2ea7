// IA3 on both families: PEFT's default targets and feed-forward split, output vs input scaling
// checked by hand on one Linear, merge ≡ unmerged, exact unmerge, detach, counts, PEFT keys and
// shapes, config JSON, and a finite-difference gradient check through the whole tiny model.

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

/// Sets every adapter tensor of `method` to N(mean, std) values (non-trivial, unlike the init).
func randomizeAdapter(_ method: PEFTMethod, mean: Float, std: Float, seed: UInt64) {
    var rng = RNG(seed: seed)
    for (_, t) in method.adapterParameters() { t.assign(Tensor.normal(t.shape, mean: mean, std: std, rng: &rng)) }
}

/// Central differences (ε = 1e-2) on a few elements of each adapter tensor against backward(),
/// relative to the tensor's largest gradient (the pattern of ModelTests' whole-model check).
func assertAdapterGradients(_ method: PEFTMethod, model: CausalLM, _ label: String,
                            file: StaticString = #filePath, line: UInt = #line) {
    let ids: [Int32] = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    let targets = CausalLM.shiftedTargets(ids, batch: 2)
    model.loss(ids, targets: targets, batch: 2).backward()
    XCTAssertTrue(model.namedParameters().allSatisfy { $0.1.grad == nil }, "\(label): the frozen base gets no gradient", file: file, line: line)
    func lossValue() -> Double { Double(withNoGrad { model.loss(ids, targets: targets, batch: 2) }.item()) }
    for (key, p) in method.adapterParameters() {
        guard let g = p.grad?.toArray() else { XCTFail("\(label) \(key): no gradient", file: file, line: line); continue }
        var picks = RNG(seed: UInt64(key.utf8.count))
        let scale = max(Double(g.map(abs).max() ?? 0), 1e-3)
        var worst = 0.0
        for _ in 0..<min(4, p.count) {
            let i = picks.nextInt(p.count)
            let saved = p.basePointer[i]
            let eps: Float = 1e-2
            p.basePointer[i] = saved + eps
            let lp = lossValue()
            p.basePointer[i] = saved - eps
            let lm = lossValue()
            p.basePointer[i] = saved
            worst = maxKeepingNaN(worst, abs((lp - lm) / (2 * Double(eps)) - Double(g[i])) / scale)
        }
        XCTAssertLessThan(worst, 3e-2, "\(label) \(key)", file: file, line: line)
    }
}

final class IA3Tests: XCTestCase {
    func linear(_ model: CausalLM, _ name: String) -> Linear { model.namedModules().first { $0.0 == name }!.1 as! Linear }

    func testDefaultTargetsAndFeedforwardPerFamily() throws {
        let llama = makeModel(llamaTiny)
        let a = try IA3(config: IA3Config())
        XCTAssertEqual(try a.attach(to: llama), ["model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj", "model.layers.0.mlp.down_proj",
                                                 "model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.v_proj", "model.layers.1.mlp.down_proj"])
        XCTAssertEqual(a.layers.filter(\.ia3.isFeedforward).map(\.module), ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"])
        let gpt2 = makeModel(gpt2Tiny)
        let b = try IA3(config: IA3Config())
        XCTAssertEqual(try b.attach(to: gpt2), ["transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_proj",
                                                "transformer.h.1.attn.c_attn", "transformer.h.1.mlp.c_proj"], "not attn.c_proj")
        XCTAssertEqual(b.layers.filter(\.ia3.isFeedforward).map(\.module), ["transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_proj"])
        // PEFT's keys and shapes: (out, 1) non-ff, (1, in) ff.
        let shapes = Dictionary(uniqueKeysWithValues: b.adapterParameters().map { ($0.0, $0.1.shape) })
        XCTAssertEqual(shapes["base_model.model.transformer.h.0.attn.c_attn.ia3_l"], [48, 1])
        XCTAssertEqual(shapes["base_model.model.transformer.h.1.mlp.c_proj.ia3_l"], [1, 64])
        let json = String(decoding: try b.configJSON(), as: UTF8.self)
        XCTAssertTrue(json.contains("\"fan_in_fan_out\" : true") && json.contains("\"mlp.c_proj\""), json)
    }

    /// A feedforward_modules entry is a plain suffix, as in PEFT: "e_proj" makes gate_proj a
    /// feed-forward layer (its input scaled), though as a target it names nothing.
    func testFeedforwardEntriesArePlainSuffixes() throws {
        let ia3 = try IA3(config: IA3Config(targetModules: .names(["gate_proj", "e_proj"]), feedforwardModules: .names(["e_proj"])))
        try ia3.attach(to: makeModel(llamaTiny))
        XCTAssertEqual(ia3.layers.map(\.module), ["model.layers.0.mlp.gate_proj", "model.layers.1.mlp.gate_proj"])
        XCTAssertTrue(ia3.layers.allSatisfy(\.ia3.isFeedforward))
        XCTAssertEqual(ia3.layers[0].ia3.l.shape, [1, llamaTiny.hiddenSize])
    }

    func testFeedforwardMustBeSubsetAndNoMatchListsNames() throws {
        XCTAssertThrowsError(try IA3(config: IA3Config(targetModules: .names(["q_proj"]), feedforwardModules: .names(["down_proj"])))) { e in
            XCTAssertTrue("\(e)".contains("subset of target_modules") && "\(e)".contains("down_proj"), "\(e)")
        }
        XCTAssertThrowsError(try IA3(config: IA3Config(targetModules: .names(["query"]))).attach(to: makeModel(llamaTiny))) { e in
            XCTAssertTrue("\(e)".contains("matched no") && "\(e)".contains("model.layers.0.self_attn.q_proj"), "\(e)")
        }
    }

    /// Given targets and defaulted feed-forward modules (PEFT: suffix "down_proj" / "mlp.c_proj"),
    /// the saved config reloads (subset rule) with the same feed-forward split.
    func testDefaultedFeedforwardReloadsWithTheSameSplit() throws {
        for (config, targets, ffWritten) in [(llamaTiny, ["q_proj", "mlp.down_proj"], ModuleSelector.names(["mlp.down_proj"])),
                                             (gpt2Tiny, ["c_proj"], .regex("transformer\\.h\\.0\\.mlp\\.c_proj|transformer\\.h\\.1\\.mlp\\.c_proj"))] {
            let ia3 = try IA3(config: IA3Config(targetModules: .names(targets)))
            try ia3.attach(to: makeModel(config))
            let split = ia3.layers.map { "\($0.module) \($0.ia3.isFeedforward)" }
            XCTAssertEqual(ia3.layers.filter(\.ia3.isFeedforward).count, 2, "\(config.family)")
            let saved = try IA3Config.decode(ia3.configJSON())
            XCTAssertEqual(saved.feedforwardModules, ffWritten)
            let again = try IA3(config: saved)
            try again.attach(to: makeModel(config))
            XCTAssertEqual(again.layers.map { "\($0.module) \($0.ia3.isFeedforward)" }, split)
        }
    }

    /// Non-ff: y = (W x + b) ⊙ l; ff: y = W (x ⊙ l) + b, computed here with loops over the stored
    /// weight (both storage layouts: LLaMA (out, in), GPT-2 Conv1D (in, out)).
    func testScalesOutputOrInputByHand() throws {
        for config in [llamaTiny, gpt2Tiny] {
            let model = makeModel(config, seed: 4)
            var rng = RNG(seed: 11)
            for (name, p) in model.namedParameters() where name.hasSuffix(".bias") { p.assign(Tensor.normal(p.shape, std: 0.5, rng: &rng)) }
            let ia3 = try IA3(config: IA3Config())
            try ia3.attach(to: model)
            randomizeAdapter(ia3, mean: 1, std: 0.5, seed: 12)
            for ff in [false, true] {
                let (module, lin, layer) = ia3.layers.first { $0.ia3.isFeedforward == ff }!
                let (n, inF, outF) = (3, lin.inFeatures, lin.outFeatures)
                let x = Tensor.normal([n, inF], rng: &rng)
                let got = withNoGrad { lin(x) }.toArray()
                let (w, xs, l) = (lin.weight.toArray(), x.toArray(), layer.l.toArray())
                let b = lin.bias?.toArray() ?? [Float](repeating: 0, count: outF)
                var want = [Float](repeating: 0, count: n * outF)
                for r in 0..<n {
                    for o in 0..<outF {
                        var acc: Float = 0
                        for i in 0..<inF {
                            let wi = lin.fanInFanOut ? w[i * outF + o] : w[o * inF + i]
                            acc += wi * xs[r * inF + i] * (ff ? l[i] : 1)
                        }
                        want[r * outF + o] = ff ? acc + b[o] : (acc + b[o]) * l[o]
                    }
                }
                XCTAssertLessThan(maxAbsDiff(got, want), 1e-5, "\(config.family) \(module) ff \(ff)")
            }
        }
    }

    func testUnchangedAtInitFrozenBaseAndCount() throws {
        for config in [gpt2Tiny, llamaTiny] {
            let model = makeModel(config, seed: 2)
            let before = logits(model)
            let ia3 = try IA3(config: IA3Config())
            let names = try ia3.attach(to: model)
            XCTAssertEqual(logits(model), before, "\(config.family): l = 1 leaves the model unchanged")
            XCTAssertTrue(model.trainableParameters().isEmpty, "base frozen")
            let formula = ia3.layers.reduce(0) { $0 + ($1.ia3.isFeedforward ? $1.linear.inFeatures : $1.linear.outFeatures) }
            XCTAssertEqual(ia3.trainableCount, formula)
            XCTAssertEqual(ia3.expectedTrainableCount, formula)
            // By hand from the config: GPT-2 2 × (3C + 4C); LLaMA 2 × (kvDim + kvDim + intermediate).
            let c = config.hiddenSize
            XCTAssertEqual(formula, config.family == .gpt2 ? 2 * (3 * c + 4 * c) : 2 * (2 * config.kvDim + config.intermediateSize))
            XCTAssertEqual(names.count, ia3.layers.count)
            XCTAssertTrue(ia3.adapterParameters().allSatisfy { $0.1.requiresGrad })
        }
    }

    /// With random l: merged ≡ unmerged within 1e-5; unmerge restores W and b bit for bit; detach
    /// gives the base back exactly; disabling turns the adapter off.
    func testMergeUnmergeDetach() throws {
        for config in [gpt2Tiny, llamaTiny] {
            let model = makeModel(config, seed: 3)
            var rng = RNG(seed: 5)
            for (name, p) in model.namedParameters() where name.hasSuffix(".bias") { p.assign(Tensor.normal(p.shape, std: 0.3, rng: &rng)) }
            let weightsBefore = model.namedParameters().map { $0.1.toArray() }
            let base = logits(model)
            var c = IA3Config(targetModules: .names(["all-linear"]), feedforwardModules: .regex(".*(down_proj|mlp\\.c_proj)"))
            c.initIa3Weights = false
            let ia3 = try IA3(config: c)
            try ia3.attach(to: model)
            randomizeAdapter(ia3, mean: 1, std: 0.5, seed: 6)
            let adapted = logits(model)
            XCTAssertGreaterThan(maxAbsDiff(adapted, base), 1e-3, "random l changes the model")
            ia3.isEnabled = false
            XCTAssertEqual(logits(model), base, "disabled")
            ia3.isEnabled = true
            ia3.merge()
            XCTAssertTrue(ia3.isMerged)
            XCTAssertLessThan(maxAbsDiff(logits(model), adapted), 1e-5, "\(config.family): merged ≡ unmerged")
            ia3.unmerge()
            XCTAssertFalse(ia3.isMerged)
            XCTAssertEqual(model.namedParameters().map { $0.1.toArray() }, weightsBefore, "exact unmerge")
            XCTAssertLessThan(maxAbsDiff(logits(model), adapted), 1e-6)
            ia3.merge()
            ia3.detach(from: model)
            XCTAssertEqual(model.namedParameters().map { $0.1.toArray() }, weightsBefore, "detach unmerges")
            XCTAssertEqual(logits(model), base, "detached: the base again")
            XCTAssertTrue(model.namedModules().compactMap { $0.1 as? Linear }.allSatisfy { $0.hooks.isEmpty })
        }
    }

    func testGradientThroughWholeModel() throws {
        for config in [gpt2Tiny, llamaTiny] {
            let model = makeModel(config, seed: 7)
            let ia3 = try IA3(config: IA3Config(targetModules: .names(["all-linear"]), feedforwardModules: .regex(".*(down_proj|c_fc|mlp\\.c_proj)")))
            try ia3.attach(to: model)
            randomizeAdapter(ia3, mean: 1, std: 0.3, seed: 8)
            assertAdapterGradients(ia3, model: model, "IA3 \(config.family)")
        }
    }

    func testConfigJSONRoundTripAndSavedTensors() throws {
        let json = """
        {"peft_type": "IA3", "task_type": "CAUSAL_LM", "target_modules": ["k_proj", "down_proj"],
         "feedforward_modules": ["down_proj"], "init_ia3_weights": false, "exclude_modules": ["layers.1.mlp.down_proj"]}
        """
        let c = try IA3Config.decode(Data(json.utf8))
        XCTAssertEqual(c.targetModules, .names(["k_proj", "down_proj"]))
        XCTAssertEqual(c.feedforwardModules, .names(["down_proj"]))
        XCTAssertFalse(c.initIa3Weights)
        XCTAssertNil(try IA3Config.decode(Data("{\"peft_type\": \"IA3\"}".utf8)).targetModules)
        XCTAssertTrue(try IA3Config.decode(Data("{}".utf8)).initIa3Weights, "PEFT default: ones")
        let model = makeModel(llamaTiny, seed: 9)
        let ia3 = try IA3(config: c)
        XCTAssertEqual(try ia3.attach(to: model).count, 3, "exclude_modules")
        let adapted = logits(model)
        let back = try ia3.configJSON()
        let text = String(decoding: back, as: UTF8.self)
        for key in ["\"peft_type\" : \"IA3\"", "\"feedforward_modules\"", "\"target_modules\"", "\"init_ia3_weights\" : false",
                    "\"exclude_modules\"", "\"fan_in_fan_out\" : false", "\"task_type\" : \"CAUSAL_LM\""] {
            XCTAssertTrue(text.contains(key), "\(key) in \(text)")
        }
        XCTAssertLessThan(text.range(of: "exclude_modules")!.lowerBound, text.range(of: "feedforward_modules")!.lowerBound, "sorted keys")
        XCTAssertEqual(try IA3Config.decode(back), c)
        // Save → fresh base → load gives the same logits.
        let saved = Dictionary(uniqueKeysWithValues: ia3.adapterParameters().map { ($0.0, $0.1.copy()) })
        XCTAssertEqual(saved["base_model.model.model.layers.0.mlp.down_proj.ia3_l"]?.shape, [1, 24])
        XCTAssertEqual(saved["base_model.model.model.layers.1.self_attn.k_proj.ia3_l"]?.shape, [8, 1])
        let fresh = makeModel(llamaTiny, seed: 9)
        let loaded = try IA3(config: IA3Config.decode(back))
        try loaded.attach(to: fresh)
        try loaded.loadAdapterParameters(saved, source: "memory")
        XCTAssertEqual(logits(fresh), adapted)
    }
}
