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
            let (loaded, tok, _, meta) = try ModelCheckpoint.load(path)
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

    /// Loading reads one file tensor at a time: each tensor read is gone before the next is read,
    /// and a shape that does not fit is refused before any value is read.
    func testLoadingHoldsOneFileTensorAtATime() throws {
        let model = makeModel(configs[1], seed: 4)
        let weights = Dictionary(uniqueKeysWithValues: model.namedParameters().map { ($0.0, $0.1.copy()) })
        weak var previous: Tensor?
        var reads = 0
        var stillAlive: [String] = []
        let reader = TensorReader(shapes: weights.mapValues(\.shape)) { name in
            if previous != nil { stillAlive.append(name) }
            reads += 1
            let t = weights[name]!.copy()
            previous = t
            return t
        }
        let loaded = WeightInit.skipped { makeModel(configs[1], seed: 0) }
        try loaded.loadParameters(reader)
        XCTAssertEqual(reads, weights.count)
        XCTAssertEqual(stillAlive, [], "tensors read while the one before was still held")
        for (name, p) in loaded.namedParameters() { XCTAssertEqual(p.toArray(), weights[name]!.toArray(), name) }

        var wrong = weights.mapValues(\.shape)
        wrong["model.layers.1.mlp.up_proj.weight"] = [16, 24]
        reads = 0
        XCTAssertThrowsError(try loaded.loadParameters(TensorReader(shapes: wrong) { reads += 1; return weights[$0]! })) {
            XCTAssertTrue("\($0)".contains("model.layers.1.mlp.up_proj.weight"), "\($0)")
        }
        XCTAssertEqual(reads, 0, "values were read before every shape was checked")
    }

    /// A source that writes in place fills each parameter's own storage: nothing is read into a
    /// tensor of its own, the values arrive, and a non-finite value is refused naming the tensor.
    func testAnInPlaceReaderFillsTheParametersThemselves() throws {
        let model = makeModel(configs[1], seed: 4)
        let weights = Dictionary(uniqueKeysWithValues: model.namedParameters().map { ($0.0, $0.1.copy()) })
        var written: [String: UnsafeMutablePointer<Float>] = [:]
        var poisoned: String?
        let reader = TensorReader(shapes: weights.mapValues(\.shape)) { name, out in
            let w = weights[name]!
            out.update(from: w.basePointer, count: w.count)
            if name == poisoned { out[w.count - 1] = .nan }
            written[name] = out
        }
        let loaded = WeightInit.skipped { makeModel(configs[1], seed: 0) }
        try loaded.loadParameters(reader)
        XCTAssertEqual(written.count, weights.count)
        for (name, p) in loaded.namedParameters() {
            XCTAssertEqual(written[name], p.basePointer, "\(name) was written somewhere else")
            XCTAssertEqual(p.toArray(), weights[name]!.toArray(), name)
        }
        XCTAssertEqual(try reader.read("model.norm.weight").toArray(), weights["model.norm.weight"]!.toArray(), "read fills a new tensor")
        poisoned = "model.layers.0.self_attn.k_proj.weight"
        XCTAssertThrowsError(try loaded.loadParameters(reader)) {
            XCTAssertTrue("\($0)".contains("'model.layers.0.self_attn.k_proj.weight' holds nan"), "\($0)")
        }
    }

    /// An 80 MiB LLaMA (V 8192, d 512, 4 layers, untied head) saved as a SwiftPEFT checkpoint and
    /// as a Hugging Face folder: large enough for load peaks to stand out of the test process's noise.
    func savedLargeModel() throws -> (model: CausalLM, h5: String, hf: String) {
        let config = ModelConfig.llama(vocabSize: 8192, hiddenSize: 512, numLayers: 4, numHeads: 8, numKVHeads: 8,
                                       intermediateSize: 1376)
        let model = makeModel(config, seed: 1)
        let h5 = dir.appendingPathComponent("big.h5").path, hf = dir.appendingPathComponent("hf").path
        try ModelCheckpoint.save(model, tokenizerJSON: nil, to: h5)
        try saveHFModel(model, tokenizerJSON: nil, to: hf)
        return (model, h5, hf)
    }

    /// Peak resident memory while loading a model from a SwiftPEFT checkpoint and from a Hugging
    /// Face folder (safetensors): below 1.12× the weights' bytes above what was resident before,
    /// as both write each tensor into its parameter (measured 80–81 MiB for 80). A file tensor
    /// read and then copied in would add the largest one, the 16 MiB embedding (1.2×); read whole
    /// into a dictionary and then copied, a model took twice its size (the 540 MB SmolLM2 peaked at
    /// 1,073 MiB in `swiftpeft generate`).
    func testLoadingPeaksWithinATenthAboveTheWeights() throws {
        let (model, h5, hf) = try savedLargeModel()
        let bytes = model.parameterCount * 4
        let probe = [1, 2, 3].map(Int32.init)
        let expected = withNoGrad { model.forward(probe, batch: 1) }.toArray()
        for (kind, load) in [("h5", { try ModelCheckpoint.load(h5).model }), ("hf", { try loadHFModel(hf).model })] {
            let (loaded, grew) = try measuringPeakGrowth(load)
            XCTAssertLessThan(Double(grew), 1.12 * Double(bytes), "\(kind): peak grew by \(grew >> 20) MiB for \(bytes >> 20) MiB of weights")
            XCTAssertEqual(withNoGrad { loaded.forward(probe, batch: 1) }.toArray(), expected, kind)
        }
    }

    /// Loading with bf16-only weights from each format (SwiftPEFT checkpoint, HF folder): every
    /// `Linear` keeps only its copy, the base fingerprint is the fp32 model's (taken while loading),
    /// so a LoRA adapter trained on that base loads, and a DoRA adapter and one that trains the
    /// (released) output head as `modules_to_save` are refused, naming why; the
    /// logits stay within 2% of fp32's; the load peaks below 0.62× the fp32 weights' bytes (here:
    /// the 16 MiB embedding kept as 8 MiB of bf16 rows, 32 MiB of copies, one parameter of 16 MiB at
    /// a time, read in place; measured 42–44 MiB for 80: 50–52 with the embedding kept in fp32, and
    /// 64 when each file tensor was also read and then copied in). Copies made after an fp32 load
    /// would peak above 1.4×.
    func testBF16OnlyLoadingKeepsTheFingerprintAndRefusesDoRA() throws {
        let (model, h5, hf) = try savedLargeModel()
        let bytes = model.parameterCount * 4
        let lora = try LoRA(config: LoRAConfig(r: 4, loraAlpha: 8))
        try lora.attach(to: model)
        let loraPath = dir.appendingPathComponent("lora.h5").path
        try AdapterCheckpoint.save(lora, base: model, to: loraPath)
        lora.detach(from: model)
        var doraConfig = LoRAConfig(r: 4, loraAlpha: 8)
        doraConfig.useDora = true
        let dora = try LoRA(config: doraConfig)
        try dora.attach(to: model)
        let doraPath = dir.appendingPathComponent("dora.h5").path
        try AdapterCheckpoint.save(dora, base: model, to: doraPath)
        dora.detach(from: model)
        var headConfig = LoRAConfig(r: 4, loraAlpha: 8)
        headConfig.modulesToSave = ["lm_head"]
        let head = try LoRA(config: headConfig)
        try head.attach(to: model)
        let headPath = dir.appendingPathComponent("lora-head.h5").path
        try AdapterCheckpoint.save(head, base: model, to: headPath)
        head.detach(from: model)
        let fingerprint = BaseFingerprint(model)
        let probe = (0..<20).map { Int32($0 * 11 % 8192) }
        let expected = withNoGrad { model.forward(probe, batch: 1) }.toArray()
        for (kind, load) in [("h5", { try ModelCheckpoint.load(h5, bf16Only: true).model }),
                             ("hf", { try loadHFModel(hf, bf16Only: true).model })] {
            let (loaded, grew) = try measuringPeakGrowth(load)
            XCTAssertLessThan(Double(grew), 0.62 * Double(bytes), "\(kind): peak grew by \(grew >> 20) MiB for \(bytes >> 20) MiB of fp32 weights")
            XCTAssertTrue(loaded.namedModules().allSatisfy { ($0.1 as? Linear)?.weight.storage.valuesReleased ?? true }, kind)
            XCTAssertEqual(BaseFingerprint(loaded), fingerprint, kind)
            let logits = withNoGrad { loaded.forward(probe, batch: 1) }.toArray()
            XCTAssertLessThan(maxAbsDiff(logits, expected), 0.02 * maxAbs(expected), kind)
            XCTAssertNoThrow(try loadAdapter(loraPath, onto: loaded), kind)
            XCTAssertThrowsError(try loadAdapter(doraPath, onto: loaded), kind) { error in
                XCTAssertTrue("\(error)".contains("DoRA") && "\(error)".contains("bf16"), "\(error)")
            }
            XCTAssertThrowsError(try loadAdapter(headPath, onto: loaded), kind) { error in
                XCTAssertTrue("\(error)".contains("modules_to_save") && "\(error)".contains("lm_head.weight"), "\(error)")
            }
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

    /// A checkpoint h5py wrote (its attributes variable-length strings, as h5py writes a Python str;
    /// an integer attribute beside them) loads as the original.
    func testACheckpointH5pyWroteLoads() throws {
        let python = try referencePython(importing: ["h5py"])
        let model = makeModel(configs[1], seed: 9)
        let path = dir.appendingPathComponent("ours.h5").path, copy = dir.appendingPathComponent("h5py-written.h5").path
        try ModelCheckpoint.save(model, tokenizerJSON: nil, to: path)
        let script = """
        import h5py, sys
        src, dst = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "w")
        for k in src.keys(): src.copy(k, dst)
        for k, v in src.attrs.items(): dst.attrs[k] = v.decode()
        dst.attrs["epoch"] = 3
        assert h5py.check_string_dtype(dst.attrs.get_id("format").dtype).length is None, "a variable-length string"
        dst.close()
        """
        let p = Process()
        p.executableURL = URL(fileURLWithPath: python)
        p.arguments = ["-c", script, path, copy]
        try p.run()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        let loaded = try ModelCheckpoint.load(copy)
        XCTAssertEqual(loaded.model.config, model.config)
        for ((n, a), (_, b)) in zip(model.namedParameters(), loaded.model.namedParameters()) { XCTAssertEqual(a.toArray(), b.toArray(), n) }
    }

    /// A saved model keeps its tokenizer's roles (SmolLM2 base: EOS `<|endoftext|>` beside ChatML's
    /// tokens, where the common-name guess would say `<|im_end|>`), in a checkpoint and in a Hugging
    /// Face folder, whose config.json also carries the ids transformers' `generate` stops at.
    func testTokenizerRolesSurviveSavingTheModel() throws {
        let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        let tok = try BPETokenizer.train(corpus: String(repeating: "the cat sat on the mat. ", count: 30), vocabSize: 280,
                                         specialTokens: specials, roles: SpecialTokenRoles(bos: "<|endoftext|>", eos: "<|endoftext|>"))
        XCTAssertEqual(SpecialTokenRoles.guess(from: specials).eos, "<|im_end|>", "without the roles saved, the EOS would change")
        let model = makeModel(.llama(vocabSize: tok.vocabSize, hiddenSize: 8, numLayers: 1, numHeads: 2, numKVHeads: 1, intermediateSize: 12))
        let h5 = dir.appendingPathComponent("roles.h5").path, hf = dir.appendingPathComponent("roles-hf").path
        try ModelCheckpoint.save(model, tokenizer: tok, to: h5)
        XCTAssertEqual(try loadModel(h5).tokenizer?.roles, tok.roles)
        try saveHFModel(model, tokenizer: tok, to: hf)
        XCTAssertEqual(try loadModel(hf).tokenizer?.roles, tok.roles)
        let config = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: hf + "/config.json"))) as? [String: Any])
        XCTAssertEqual(config["eos_token_id"] as? Int, tok.eosTokenID.map(Int.init))
        XCTAssertEqual(config["bos_token_id"] as? Int, tok.bosTokenID.map(Int.init))
        XCTAssertNil(config["pad_token_id"], "no pad role: none written")
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

/// Runs `body` and returns its result with how far the peak resident memory rose above the
/// resident memory before it (bytes): the heap's free memory is handed back first, then the
/// kernel's peak-RSS mark (VmHWM) is reset through `/proc/self/clear_refs`.
/// - Throws: where that file cannot be written (the measurement would be meaningless).
func measuringPeakGrowth<T>(_ body: () throws -> T) throws -> (T, Int) {
    releaseFreeMemory()
    guard let h = FileHandle(forWritingAtPath: "/proc/self/clear_refs") else {
        throw CheckpointError(path: "/proc/self/clear_refs", message: "cannot be opened: the peak resident memory cannot be reset, so it cannot be measured here")
    }
    try h.write(contentsOf: Data("5".utf8))
    try h.close()
    let before = try procStatus("VmRSS")
    let result = try body()
    return (result, try procStatus("VmHWM") - before)
}

private func procStatus(_ key: String) throws -> Int {
    let status = try String(contentsOfFile: "/proc/self/status", encoding: .utf8)
    guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix(key + ":") }),
          let kb = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") else {
        throw CheckpointError(path: "/proc/self/status", message: "no \(key) line")
    }
    return kb * 1024
}
