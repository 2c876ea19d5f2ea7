// Model checkpoints: save → load gives identical logits for both families; bad files fail naming
// the file and the tensor with both shapes.

import XCTest
@testable import Formats

final class ModelCheckpointTests: XCTestCase {
    var dir: URL!
    override func setUp() {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("swiftpeft-ckpt-\(UUID().uuidString)")
        try! FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }
    override func tearDown() { try? FileManager.default.removeItem(at: dir) }

    let configs: [ModelConfig] = [
        .gpt2(vocabSize: 31, hiddenSize: 16, numLayers: 2, numHeads: 2, maxPositions: 16),
        .llama(vocabSize: 31, hiddenSize: 16, numLayers: 2, numHeads: 4, numKVHeads: 2, intermediateSize: 24, attentionBias: true),
    ]

    func testSaveLoadGivesIdenticalLogits() throws {
        for config in configs {
            let model = makeModel(config, seed: 4)
            let path = dir.appendingPathComponent("\(config.family).h5").path
            try ModelCheckpoint.save(model, tokenizerJSON: "{\"model\": {}}", to: path, metadata: ["note": "test"])
            let (loaded, tok, meta) = try ModelCheckpoint.load(path)
            XCTAssertEqual(loaded.config, config)
            XCTAssertEqual(tok, "{\"model\": {}}")
            XCTAssertEqual(meta, ["note": "test"])
            let ids: [Int32] = [1, 2, 3, 4, 5, 6]
            let a = withNoGrad { model.forward(ids, batch: 2) }.toArray()
            let b = withNoGrad { loaded.forward(ids, batch: 2) }.toArray()
            XCTAssertEqual(a, b, "\(config.family)")
            XCTAssertTrue(loaded.trainableParameters().isEmpty, "a loaded base is frozen")
        }
    }

    func testTensorThatDoesNotFitTheConfigIsNamed() throws {
        let model = makeModel(configs[1], seed: 1)
        var params = model.namedParameters()
        let i = params.firstIndex { $0.0 == "model.layers.1.self_attn.k_proj.weight" }!
        params[i].1 = Tensor.zeros([16, 16])  // should be (KVH·D, C) = (8, 16)
        let path = dir.appendingPathComponent("bad.h5").path
        let enc = JSONEncoder()
        try HDF5Store.write(path, tensors: params, attributes: [
            "format": ModelCheckpoint.format, "version": "1",
            "config": String(decoding: try enc.encode(configs[1]), as: UTF8.self)])
        XCTAssertThrowsError(try ModelCheckpoint.load(path)) { e in
            let m = "\(e)"
            XCTAssertTrue(m.contains(path) && m.contains("model.layers.1.self_attn.k_proj.weight")
                          && m.contains("[16, 16]") && m.contains("[8, 16]"), m)
        }
        try HDF5Store.write(path, tensors: [("x", Tensor.zeros([1]))], attributes: ["format": "other"])
        XCTAssertThrowsError(try ModelCheckpoint.load(path)) { XCTAssertTrue("\($0)".contains("not a SwiftPEFT model checkpoint"), "\($0)") }
    }
}
