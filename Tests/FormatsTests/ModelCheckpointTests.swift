// Model checkpoints: save → load gives identical logits for both families; bad files fail naming
// the file and the tensor with both shapes.

import XCTest
import TestSupport
@testable import Formats
import TensorCore
import NN
import Models
import Tokenizers
import PEFT
@testable import Containers

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

    /// The documented layout as h5py sees it. Needs the reference Python (scripts/make-venv, which
    /// .ci/run runs); without it the test is skipped, loudly, and not counted as passing.
    func testReadableByH5py() throws {
        let python = try referencePython(importing: ["h5py"])
        let model = makeModel(configs[1], seed: 9)
        let path = dir.appendingPathComponent("h5py.h5").path
        try ModelCheckpoint.save(model, tokenizerJSON: "{\"model\": {\"type\": \"BPE\"}}", to: path)
        let script = """
        import h5py, json, sys
        f = h5py.File(sys.argv[1], "r")
        cfg = json.loads(f.attrs["config"])
        w = f["model.layers.1.self_attn.k_proj.weight"][:]
        tok = json.loads(bytes(f["tokenizer.json"][:]))
        print(json.dumps({"format": f.attrs["format"].decode(), "family": cfg["family"], "kv": cfg["num_key_value_heads"],
                          "shape": list(w.shape), "w00": float(w[0, 0]), "tok": tok["model"]["type"],
                          "count": len([k for k in f.keys() if k != "tokenizer.json"])}))
        """
        let p = Process()
        p.executableURL = URL(fileURLWithPath: python)
        p.arguments = ["-c", script, path]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        let r = try JSONSerialization.jsonObject(with: out.fileHandleForReading.readDataToEndOfFile()) as! [String: Any]
        let w = model.namedParameters().first { $0.0 == "model.layers.1.self_attn.k_proj.weight" }!.1
        XCTAssertEqual(r["format"] as? String, "swiftpeft-model")
        XCTAssertEqual(r["family"] as? String, "llama")
        XCTAssertEqual(r["kv"] as? Int, 2)
        XCTAssertEqual(r["shape"] as? [Int], [8, 16])
        XCTAssertEqual(Float(r["w00"] as! Double), w.toArray()[0])
        XCTAssertEqual(r["tok"] as? String, "BPE")
        XCTAssertEqual(r["count"] as? Int, model.namedParameters().count)
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
