// Parity with PyTorch + transformers on fixed weights: logits, padded-batch logits, loss and (llama)
// greedy continuation of tiny GPT-2, LLaMA and Qwen2 models, from Fixtures/{gpt2,llama,qwen2}.h5
// made by scripts/make_model_fixtures.py; also the shape error when a checkpoint tensor doesn't fit.

import Foundation
import XCTest
import Formats
@testable import Models
import TensorCore
import NN
import Tokenizers
import Containers

private let fixtureDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")
private let regenerate = "regenerate with `.venv/bin/python scripts/make_model_fixtures.py` from the package root (needs torch, transformers, h5py, numpy)"

/// One fixture: our config, the model's weights (HF keys) and PyTorch's outputs.
private struct ParityFixture {
    let config: ModelConfig
    /// Parameters by HF key (datasets outside `fixture/`).
    let weights: [String: Tensor]
    /// Reference tensors under `fixture/` (prefix stripped).
    let reference: [String: Tensor]

    /// Keys a tied model doesn't store (the script skips the tied head; ignored if present).
    var ignoring: Set<String> { config.tieWordEmbeddings ? ["lm_head.weight"] : [] }

    func ids(_ key: String = "input_ids") -> [Int32] { reference[key]!.toArray().map { Int32($0) } }
}

private func loadFixture(_ name: String, file: StaticString = #filePath, line: UInt = #line) -> ParityFixture? {
    let path = fixtureDir.appendingPathComponent("\(name).h5").path
    guard FileManager.default.fileExists(atPath: path) else {
        XCTFail("model parity fixture \(path) is missing: \(regenerate)", file: file, line: line)
        return nil
    }
    do {
        let (tensors, _, attributes) = try HDF5Store.read(path)
        guard let json = attributes["config"] else {
            XCTFail("\(path) has no root string attribute 'config': \(regenerate)", file: file, line: line)
            return nil
        }
        let config = try JSONDecoder().decode(ModelConfig.self, from: Data(json.utf8))
        var weights: [String: Tensor] = [:], reference: [String: Tensor] = [:]
        for (key, t) in tensors {
            if key.hasPrefix("fixture/") { reference[String(key.dropFirst("fixture/".count))] = t } else { weights[key] = t }
        }
        for key in ["input_ids", "attention_mask", "logits", "logits_masked", "loss"] where reference[key] == nil {
            XCTFail("\(path) has no dataset 'fixture/\(key)': \(regenerate)", file: file, line: line)
            return nil
        }
        return ParityFixture(config: config, weights: weights, reference: reference)
    } catch {
        XCTFail("cannot read \(path): \(error); \(regenerate)", file: file, line: line)
        return nil
    }
}

/// Asserts |a − e| ≤ atol + rtol·|e| elementwise; reports the worst element and the max abs/rel error.
private func assertParity(_ actual: [Float], _ expected: [Float], rtol: Float = 1e-4, atol: Float = 1e-5,
                          _ what: String, file: StaticString = #filePath, line: UInt = #line) {
    guard actual.count == expected.count else {
        XCTFail("\(what): \(actual.count) values, expected \(expected.count)", file: file, line: line)
        return
    }
    var maxAbs: Float = 0, maxRel: Float = 0, worst = -1, worstExcess: Float = 0
    for i in actual.indices {
        let d = abs(actual[i] - expected[i])
        maxAbs = max(maxAbs, d)
        if abs(expected[i]) >= 0.1 { maxRel = max(maxRel, d / abs(expected[i])) }  // rel error of tiny values is noise
        let excess = d - (atol + rtol * abs(expected[i]))
        if !(excess <= 0) && (worst < 0 || excess > worstExcess) { (worst, worstExcess) = (i, excess) }  // NaN fails too
    }
    print("[parity] \(what): max abs error \(maxAbs), max rel error \(maxRel) (where |expected| ≥ 0.1) over \(actual.count) values")
    if worst >= 0 {
        XCTFail("\(what): element \(worst) is \(actual[worst]), expected \(expected[worst]) "
                + "(max abs error \(maxAbs), max rel error \(maxRel); rtol \(rtol), atol \(atol))", file: file, line: line)
    }
}

final class ModelParityTests: XCTestCase {
    private func checkParity(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        guard let fx = loadFixture(name, file: file, line: line) else { return }
        let config = fx.config
        let model = makeModel(config)
        try model.loadParameters(fx.weights, ignoring: fx.ignoring, source: "\(name).h5")
        model.eval()
        let ids = fx.ids()
        let (B, V) = (2, config.vocabSize)
        let T = ids.count / B
        XCTAssertEqual(fx.reference["logits"]!.shape, [B, T, V], "\(name): fixture logits shape", file: file, line: line)

        withNoGrad {
            // Unpadded batch: every position.
            let logits = model.forward(ids, batch: B)  // (B, T, V)
            XCTAssertEqual(logits.shape, [B, T, V], file: file, line: line)
            assertParity(logits.toArray(), fx.reference["logits"]!.toArray(), "\(name) logits", file: file, line: line)

            // Right-padded second row: compare the real positions only (padded queries see
            // different keys in HF's mask and are never used).
            let mask = fx.reference["attention_mask"]!.toArray()  // (B, T)
            let masked = model.forward(ids, batch: B, attentionMask: mask).toArray()  // (B, T, V)
            let expected = fx.reference["logits_masked"]!.toArray()
            var a: [Float] = [], e: [Float] = []
            for p in 0..<(B * T) where mask[p] != 0 {
                a += masked[(p * V)..<((p + 1) * V)]
                e += expected[(p * V)..<((p + 1) * V)]
            }
            XCTAssertLessThan(a.count, B * T * V, "\(name): the fixture mask pads nothing", file: file, line: line)
            assertParity(a, e, "\(name) masked logits (real positions)", file: file, line: line)

            // HF's causal-LM loss with labels = input_ids: mean over B·(T−1) next-token predictions.
            let loss = model.loss(ids, targets: CausalLM.shiftedTargets(ids, batch: B), batch: B)
            assertParity([loss.item()], fx.reference["loss"]!.toArray(), "\(name) loss", file: file, line: line)
        }

        if let prompt = fx.reference["generate_prompt"], let greedy = fx.reference["generate_greedy"] {
            let expected = greedy.toArray().map { Int32($0) }
            let options = SamplingOptions(maxNewTokens: expected.count, temperature: 0)
            let got = model.generate(prompt.toArray().map { Int32($0) }, options)
            XCTAssertEqual(got, expected, "\(name): greedy continuation (KV cache) differs from transformers' generate",
                           file: file, line: line)
            let recomputed = model.generate(prompt.toArray().map { Int32($0) }, options, useCache: false)
            XCTAssertEqual(recomputed, expected, "\(name): greedy continuation (no cache) differs from transformers' generate",
                           file: file, line: line)
        }
    }

    func testGPT2MatchesTransformers() throws { try checkParity("gpt2") }

    func testLlamaMatchesTransformers() throws { try checkParity("llama") }

    /// Qwen2 = LLaMA family with q/k/v bias and tied embeddings.
    func testQwen2MatchesTransformers() throws { try checkParity("qwen2") }

    /// The llama fixture must carry the greedy continuation, or the generation check above is skipped silently.
    func testLlamaFixtureHasGreedyContinuation() {
        guard let fx = loadFixture("llama") else { return }
        XCTAssertEqual(fx.reference["generate_prompt"]?.shape, [5], regenerate)
        XCTAssertEqual(fx.reference["generate_greedy"]?.shape, [8], regenerate)
    }

    /// Fixture configs decode to exactly the configs the families' constructors give.
    func testFixtureConfigsMatchFamilyConstructors() {
        guard let g = loadFixture("gpt2"), let l = loadFixture("llama"), let q = loadFixture("qwen2") else { return }
        XCTAssertEqual(g.config, .gpt2(vocabSize: 97, hiddenSize: 32, numLayers: 2, numHeads: 4, maxPositions: 32))
        XCTAssertEqual(l.config, .llama(vocabSize: 97, hiddenSize: 32, numLayers: 2, numHeads: 4, numKVHeads: 2,
                                        intermediateSize: 64, normEps: 1e-6, maxPositions: 64))
        XCTAssertEqual(q.config, .llama(vocabSize: 97, hiddenSize: 32, numLayers: 2, numHeads: 4, numKVHeads: 2,
                                        intermediateSize: 64, normEps: 1e-6, attentionBias: true,
                                        tieWordEmbeddings: true, maxPositions: 64))
    }

    /// A checkpoint tensor of the wrong shape is refused with an error naming it and both shapes.
    func testWrongShapeTensorFailsNamingTensorAndShapes() {
        guard let fx = loadFixture("llama") else { return }
        let key = "model.layers.1.self_attn.k_proj.weight"
        XCTAssertEqual(fx.weights[key]?.shape, [16, 32])
        var weights = fx.weights
        weights[key] = Tensor.zeros([32, 16])  // transposed: same count, wrong shape
        let model = makeModel(fx.config)
        XCTAssertThrowsError(try model.loadParameters(weights, ignoring: fx.ignoring, source: "llama.h5")) { error in
            let message = "\(error)"
            XCTAssertTrue(error is WeightLoadError, "\(type(of: error)): \(message)")
            XCTAssertTrue(message.contains(key), message)
            XCTAssertTrue(message.contains("[32, 16]"), message)  // the file's shape
            XCTAssertTrue(message.contains("[16, 32]"), message)  // the model's shape
            XCTAssertTrue(message.contains("llama.h5"), message)
        }
    }
}
