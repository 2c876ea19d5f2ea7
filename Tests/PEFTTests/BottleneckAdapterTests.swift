// Bottleneck adapters (Houlsby, Pfeiffer) on both families: hook slots and keys, unchanged at init,
// the adapter formula on one block by hand, detach restores the base exactly, counts, frozen base,
// config JSON, and a finite-difference gradient check through the whole tiny model.

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

final class BottleneckAdapterTests: XCTestCase {
    func config(_ arch: String, reduction: Float = 4, act: String = "relu") -> BottleneckConfig {
        BottleneckConfig(architecture: arch, reductionFactor: reduction, nonLinearity: act)
    }

    func testSlotsKeysAndShapes() throws {
        let llama = makeModel(llamaTiny)
        let houlsby = try BottleneckAdapter(config: config("houlsby"))
        XCTAssertEqual(try houlsby.attach(to: llama), ["model.layers.0.attention_adapter", "model.layers.0.mlp_adapter",
                                                       "model.layers.1.attention_adapter", "model.layers.1.mlp_adapter"])
        XCTAssertTrue(llama.blocks.allSatisfy { $0.afterAttention.count == 1 && $0.afterMLP.count == 1 })
        let shapes = Dictionary(uniqueKeysWithValues: houlsby.adapterParameters().map { ($0.0, $0.1.shape) })
        XCTAssertEqual(shapes.count, 4 * 4)
        XCTAssertEqual(shapes["base_model.model.model.layers.0.attention_adapter.down.weight"], [4, 16])
        XCTAssertEqual(shapes["base_model.model.model.layers.0.attention_adapter.down.bias"], [4])
        XCTAssertEqual(shapes["base_model.model.model.layers.1.mlp_adapter.up.weight"], [16, 4])
        XCTAssertEqual(shapes["base_model.model.model.layers.1.mlp_adapter.up.bias"], [16])

        let gpt2 = makeModel(gpt2Tiny)
        var c = config("pfeiffer")
        c.bottleneckSize = 3
        c.layersToTransform = [1]
        let pfeiffer = try BottleneckAdapter(config: c)
        XCTAssertEqual(try pfeiffer.attach(to: gpt2), ["transformer.h.1.mlp_adapter"])
        XCTAssertTrue(gpt2.blocks.allSatisfy { $0.afterAttention.isEmpty })
        XCTAssertEqual(gpt2.blocks.map(\.afterMLP.count), [0, 1])
        XCTAssertEqual(pfeiffer.adapterParameters().map(\.0).sorted(), [
            "base_model.model.transformer.h.1.mlp_adapter.down.bias", "base_model.model.transformer.h.1.mlp_adapter.down.weight",
            "base_model.model.transformer.h.1.mlp_adapter.up.bias", "base_model.model.transformer.h.1.mlp_adapter.up.weight"])
        XCTAssertEqual(pfeiffer.adapters[0].layer.down.weight.shape, [3, 16], "bottleneck_size overrides reduction_factor")

        var bad = config("pfeiffer")
        bad.layersToTransform = [5]
        XCTAssertThrowsError(try BottleneckAdapter(config: bad).attach(to: gpt2)) { e in
            XCTAssertTrue("\(e)".contains("transformer.h.0, transformer.h.1") && "\(e)".contains("[5]"), "\(e)")
        }
        XCTAssertThrowsError(try BottleneckAdapter(config: config("pfeiffer", reduction: 32)).attach(to: gpt2), "16 / 32 < 1")
        XCTAssertThrowsError(try BottleneckAdapter(config: config("parallel")))
        XCTAssertThrowsError(try BottleneckAdapter(config: config("houlsby", act: "softplus")))
    }

    func testUnchangedAtInitFrozenBaseAndCount() throws {
        for family in [gpt2Tiny, llamaTiny] {
            for arch in ["houlsby", "pfeiffer"] {
                let model = makeModel(family, seed: 2)
                let before = logits(model)
                let adapter = try BottleneckAdapter(config: config(arch))
                try adapter.attach(to: model)
                XCTAssertEqual(logits(model), before, "\(family.family) \(arch): zero up-projection leaves the model unchanged")
                XCTAssertTrue(model.trainableParameters().isEmpty, "base frozen")
                XCTAssertTrue(adapter.adapterParameters().allSatisfy { $0.1.requiresGrad })
                // Per adapter 2·C·r + r + C with C = 16, r = 16 / 4; Houlsby 2 adapters per block, Pfeiffer 1.
                let (c, r) = (family.hiddenSize, family.hiddenSize / 4)
                let formula = family.numLayers * (arch == "houlsby" ? 2 : 1) * (2 * c * r + r + c)
                XCTAssertEqual(adapter.trainableCount, formula)
                XCTAssertEqual(adapter.expectedTrainableCount, formula)
                XCTAssertEqual(TrainableReport(model: model, methods: [adapter]).trainable, formula)
            }
        }
    }

    /// One adapter by hand: h + W_up act(W_down h + b_down) + b_up, for each non-linearity.
    func testAdapterFormulaByHand() throws {
        for act in ["relu", "gelu", "silu", "tanh"] {
            let model = makeModel(llamaTiny)
            var c = config("pfeiffer", act: act)
            c.initScale = 0.5
            let adapter = try BottleneckAdapter(config: c)
            try adapter.attach(to: model)
            randomizeAdapter(adapter, mean: 0, std: 0.5, seed: 3)
            let layer = adapter.adapters[0].layer
            var rng = RNG(seed: 4)
            let h = Tensor.normal([2, 3, 16], rng: &rng)
            let got = withNoGrad { layer(h) }.toArray()
            let (wd, bd, wu, bu, hs) = (layer.down.weight.toArray(), layer.down.bias!.toArray(),
                                        layer.up.weight.toArray(), layer.up.bias!.toArray(), h.toArray())
            func f(_ z: Float) -> Float {
                switch act {
                case "relu": max(z, 0)
                case "gelu": 0.5 * z * (1 + erf(z / Float(2).squareRoot()))
                case "silu": z / (1 + exp(-z))
                default: tanh(z)
                }
            }
            var want = hs
            for row in 0..<6 {
                let a = (0..<4).map { j in f(bd[j] + (0..<16).reduce(0) { $0 + wd[j * 16 + $1] * hs[row * 16 + $1] }) }
                for o in 0..<16 { want[row * 16 + o] += bu[o] + (0..<4).reduce(0) { $0 + wu[o * 4 + $1] * a[$1] } }
            }
            XCTAssertLessThan(maxAbsDiff(got, want), 1e-5, act)
            XCTAssertGreaterThan(maxAbsDiff(got, hs), 1e-2, "\(act): non-trivial")
        }
    }

    /// With random adapter values the model changes; disabling and detaching give the base back
    /// exactly, and detach removes only this adapter's hooks.
    func testDetachRestoresBaseExactly() throws {
        for family in [gpt2Tiny, llamaTiny] {
            let model = makeModel(family, seed: 5)
            let weightsBefore = model.namedParameters().map { $0.1.toArray() }
            let base = logits(model)
            let other = try BottleneckAdapter(config: config("pfeiffer"), name: "other", seed: 1)
            try other.attach(to: model)
            let adapter = try BottleneckAdapter(config: config("houlsby"), seed: 2)
            try adapter.attach(to: model)
            randomizeAdapter(adapter, mean: 0, std: 0.3, seed: 6)
            XCTAssertGreaterThan(maxAbsDiff(logits(model), base), 1e-3, "random adapter changes the model")
            adapter.isEnabled = false
            XCTAssertEqual(logits(model), base, "disabled")
            adapter.isEnabled = true
            adapter.detach(from: model)
            XCTAssertTrue(adapter.adapterParameters().isEmpty)
            let otherHooks = other.adapters.map(\.layer)
            XCTAssertTrue(model.blocks.allSatisfy { b in
                b.afterAttention.isEmpty && b.afterMLP.count == 1 && otherHooks.contains { $0 === b.afterMLP[0] }
            }, "only this adapter's hooks removed")
            other.detach(from: model)
            XCTAssertTrue(model.blocks.allSatisfy { $0.afterAttention.isEmpty && $0.afterMLP.isEmpty })
            XCTAssertEqual(logits(model), base, "\(family.family): detached, the base again")
            XCTAssertEqual(model.namedParameters().map { $0.1.toArray() }, weightsBefore)
        }
    }

    func testGradientThroughWholeModel() throws {
        for (family, act) in [(gpt2Tiny, "gelu"), (llamaTiny, "silu")] {
            let model = makeModel(family, seed: 7)
            let adapter = try BottleneckAdapter(config: config("houlsby", act: act))
            try adapter.attach(to: model)
            randomizeAdapter(adapter, mean: 0, std: 0.3, seed: 8)
            assertAdapterGradients(adapter, model: model, "Bottleneck \(family.family)")
        }
    }

    /// A reduction factor so small the bottleneck cannot be built, a second attach and a block named
    /// twice: errors or one adapter per block, not a trap.
    func testBadConfigsAreErrors() throws {
        for factor: Float in [1e-30, 0.001, .infinity, .nan, 0] {
            XCTAssertThrowsError(try BottleneckAdapter(config: BottleneckConfig(reductionFactor: factor))) {
                XCTAssertTrue("\($0)".contains("reduction_factor"), "\($0)")
            }
        }
        XCTAssertNoThrow(try BottleneckAdapter(config: BottleneckConfig(reductionFactor: 1.0 / 64)))
        let model = makeModel(gpt2Tiny)
        var c = BottleneckConfig(reductionFactor: 4)
        c.layersToTransform = [1, 1]
        let adapter = try BottleneckAdapter(config: c)
        XCTAssertEqual(try adapter.attach(to: model), ["transformer.h.1.mlp_adapter"])
        XCTAssertThrowsError(try adapter.attach(to: model)) { XCTAssertTrue("\($0)".contains("already attached"), "\($0)") }
    }

    func testConfigJSONRoundTrip() throws {
        let json = """
        {"peft_type": "BOTTLENECK", "architecture": "Houlsby", "reduction_factor": 8, "non_linearity": "gelu",
         "init_scale": 0.001, "layers_to_transform": 1}
        """
        let c = try BottleneckConfig.decode(Data(json.utf8))
        XCTAssertEqual(c.architecture, "houlsby")
        XCTAssertEqual(c.reductionFactor, 8)
        XCTAssertEqual(c.nonLinearity, "gelu")
        XCTAssertEqual(c.initScale, 0.001)
        XCTAssertEqual(c.layersToTransform, [1])
        XCTAssertNil(c.bottleneckSize)
        let d = try BottleneckConfig.decode(Data("{}".utf8))
        XCTAssertEqual([d.architecture, d.nonLinearity, d.peftType], ["pfeiffer", "relu", "BOTTLENECK"])
        XCTAssertEqual(d.reductionFactor, 16)
        XCTAssertEqual(d.initScale, 0)
        let adapter = try BottleneckAdapter(config: c)
        let back = try adapter.configJSON()
        let text = String(decoding: back, as: UTF8.self)
        for key in ["\"peft_type\" : \"BOTTLENECK\"", "\"architecture\" : \"houlsby\"", "\"reduction_factor\" : 8",
                    "\"non_linearity\" : \"gelu\"", "\"init_scale\"", "\"layers_to_transform\"", "\"task_type\" : \"CAUSAL_LM\""] {
            XCTAssertTrue(text.contains(key), "\(key) in \(text)")
        }
        XCTAssertLessThan(text.range(of: "architecture")!.lowerBound, text.range(of: "non_linearity")!.lowerBound, "sorted keys")
        XCTAssertEqual(try BottleneckConfig.decode(back), c)
        // A small init_scale: up ≠ 0, the model moves a little.
        let model = makeModel(gpt2Tiny, seed: 9)
        let base = logits(model)
        try adapter.attach(to: model)
        XCTAssertTrue(adapter.adapters.allSatisfy { $0.layer.up.weight.toArray().contains { $0 != 0 } })
        XCTAssertGreaterThan(maxAbsDiff(logits(model), base), 0)
        // Save → fresh base → load gives the same logits.
        randomizeAdapter(adapter, mean: 0, std: 0.2, seed: 10)
        let adapted = logits(model)
        let saved = Dictionary(uniqueKeysWithValues: adapter.adapterParameters().map { ($0.0, $0.1.copy()) })
        let fresh = makeModel(gpt2Tiny, seed: 9)
        let loaded = try BottleneckAdapter(config: BottleneckConfig.decode(back))
        try loaded.attach(to: fresh)
        try loaded.loadAdapterParameters(saved, source: "memory")
        XCTAssertEqual(logits(fresh), adapted)
    }
}
