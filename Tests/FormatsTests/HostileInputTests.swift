// Sizes a file states are checked against what it holds before anything is allocated: a config
// whose dimensions the weights cannot fill, a tokenizer whose ids are not dense or that is larger
// than the model's vocabulary, an adapter config with an absurd rank. Each used to allocate
// gigabytes or stop inside a kernel; each is now an error naming the file.

import Foundation
import XCTest
@testable import Formats
import TensorCore
import NN
import Models
import Tokenizers
import PEFT
import Containers

final class HostileInputTests: XCTestCase {
    var dir: URL!
    let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("swiftpeft-hostile-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }
    override func tearDown() { try? FileManager.default.removeItem(at: dir) }

    func assertThrows(_ body: () throws -> Void, mentioning needles: [String], line: UInt = #line) {
        XCTAssertThrowsError(try body(), line: line) { e in
            for n in needles { XCTAssertTrue("\(e)".contains(n), "'\(n)' in: \(e)", line: line) }
        }
    }

    func testConfigLargerThanItsWeightsIsRefusedBeforeBuilding() throws {
        let folder = dir.appendingPathComponent("llama")
        try FileManager.default.copyItem(at: fixtures.appendingPathComponent("hf/llama"), to: folder)
        let configURL = folder.appendingPathComponent("config.json")
        var config = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: configURL)) as? [String: Any])
        config["hidden_size"] = 1 << 20  // with the fixture's 4 heads: 2^40 per q_proj
        config["intermediate_size"] = 1 << 20
        config["head_dim"] = nil
        try JSONSerialization.data(withJSONObject: config).write(to: configURL)
        assertThrows({ _ = try loadModel(folder.path) }, mentioning: [configURL.path, "hidden_size 1048576", "implies at least"])
    }

    func testGPT2PositionCountIsCheckedBeforeBuilding() throws {
        let folder = dir.appendingPathComponent("gpt2")
        try FileManager.default.copyItem(at: fixtures.appendingPathComponent("hf/gpt2"), to: folder)
        let configURL = folder.appendingPathComponent("config.json")
        var config = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: configURL)) as? [String: Any])
        // n_positions sizes the position table, built before any weight is read: 2^30 × n_embd 16.
        for (positions, needle) in [(1 << 30, "implies at least"), (-1, "n_positions) must be positive"), (0, "must be positive, got 0")] {
            config["n_positions"] = positions
            try JSONSerialization.data(withJSONObject: config).write(to: configURL)
            assertThrows({ _ = try loadModel(folder.path) }, mentioning: [configURL.path, needle])
        }
    }

    func testAFailedAdapterLoadLeavesTheModelAsItWas() throws {
        let base = makeModel(.llama(vocabSize: 13, hiddenSize: 8, numLayers: 2, numHeads: 2, numKVHeads: 1, intermediateSize: 12))
        let lora = try LoRA(config: LoRAConfig(r: 2, loraAlpha: 4, targetModules: .names(["q_proj", "v_proj"])))
        try lora.attach(to: base)
        let path = dir.appendingPathComponent("adapter.h5").path
        try AdapterCheckpoint.save(lora, base: base, to: path)
        lora.detach(from: base)
        let (tensors, _, attrs) = try HDF5Store.read(path)
        let hooks = { base.namedModules().compactMap { $0.1 as? Linear }.reduce(0) { $0 + $1.hooks.count } }
        // The last tensor the adapter loads has another shape: the ones before it were assigned already.
        let last = try XCTUnwrap(tensors.keys.sorted().last(where: { $0.contains("layers.1.self_attn.v_proj") }))
        var bad = tensors
        bad[last] = Tensor.zeros([3, 3])
        try HDF5Store.write(path, tensors: bad.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }, attributes: attrs)
        assertThrows({ try loadAdapter(path, onto: base) }, mentioning: [path, last, "[3, 3]"])
        XCTAssertEqual(hooks(), 0, "nothing stays attached")
        // A tensor the adapter has no place for is an error, not ignored.
        var extra = tensors
        extra["base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"] = Tensor.zeros([2, 8])
        try HDF5Store.write(path, tensors: extra.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }, attributes: attrs)
        assertThrows({ try loadAdapter(path, onto: base) }, mentioning: [path, "up_proj.lora_A.weight", "is not used"])
        XCTAssertEqual(hooks(), 0, "nothing stays attached")
        // The file as written loads.
        try HDF5Store.write(path, tensors: tensors.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }, attributes: attrs)
        let loaded = try loadAdapter(path, onto: base)
        XCTAssertEqual(hooks(), 4)
        loaded.detach(from: base)
    }

    func testTokenizerIDsMustBeDenseAndFitTheModel() throws {
        let tokURL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("TokenizersTests/Fixtures/tokenizer_gpt2.json")
        var json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: tokURL)) as? [String: Any])
        var model = try XCTUnwrap(json["model"] as? [String: Any])
        var vocab = try XCTUnwrap(model["vocab"] as? [String: Any])
        let good = try BPETokenizer.load(json: JSONSerialization.data(withJSONObject: json), file: "good.json")
        vocab["Ġzzz"] = 1_073_741_823  // one far id used to size every table: about 24 GB
        model["vocab"] = vocab
        json["model"] = model
        assertThrows({ _ = try BPETokenizer.load(json: JSONSerialization.data(withJSONObject: json), file: "far.json") },
                     mentioning: ["far.json", "1073741823", "dense"])

        // A checkpoint whose tokenizer is larger than its vocab_size: the first high id used to be a fatalError.
        let small = makeModel(.llama(vocabSize: good.vocabSize - 10, hiddenSize: 8, numLayers: 1, numHeads: 2, numKVHeads: 1,
                                     intermediateSize: 12))
        let path = dir.appendingPathComponent("small-vocab.h5").path
        try ModelCheckpoint.save(small, tokenizerJSON: good.tokenizerJSON(), to: path)
        assertThrows({ _ = try loadModel(path) }, mentioning: [path, "tokenizer has \(good.vocabSize) tokens", "vocab_size is \(good.vocabSize - 10)"])
    }

    func testAdapterConfigsWithAbsurdSizesAreRefusedBeforeAllocating() throws {
        let base = makeModel(.llama(vocabSize: 13, hiddenSize: 8, numLayers: 1, numHeads: 2, numKVHeads: 1, intermediateSize: 12))
        let lora = try LoRA(config: LoRAConfig(r: 2, loraAlpha: 4, targetModules: .names(["q_proj"])))
        try lora.attach(to: base)
        let path = dir.appendingPathComponent("adapter.h5").path
        try AdapterCheckpoint.save(lora, base: base, to: path)
        var (tensors, _, attrs) = try HDF5Store.read(path)
        var config = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(attrs["config"]!.utf8)) as? [String: Any])
        config["r"] = 1_000_000_000_000
        attrs["config"] = String(decoding: try JSONSerialization.data(withJSONObject: config), as: UTF8.self)
        try HDF5Store.write(path, tensors: tensors.map { ($0.key, $0.value) }, attributes: attrs)
        lora.detach(from: base)
        assertThrows({ try loadAdapter(path, onto: base) }, mentioning: ["r must be in 1…65536", "1000000000000"])
        XCTAssertTrue(base.namedModules().compactMap { $0.1 as? Linear }.allSatisfy { $0.hooks.isEmpty }, "nothing attached")

        // The same through a PEFT folder, and prompt tuning's num_virtual_tokens.
        let folder = dir.appendingPathComponent("peft")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        try JSONSerialization.data(withJSONObject: ["peft_type": "PROMPT_TUNING", "num_virtual_tokens": 1_000_000_000])
            .write(to: folder.appendingPathComponent(PEFTFolder.configFile))
        try Safetensors.write(folder.appendingPathComponent(PEFTFolder.weightsFile).path, tensors: [("prompt_embeddings", Tensor.zeros([2, 8]))])
        tensors = [:]
        assertThrows({ try loadAdapter(folder.path, onto: base) }, mentioning: [PEFTFolder.configFile, "num_virtual_tokens must be in 1…65536"])
        // A config cut short: the parser's own words on what and where, not a generic sentence.
        try Data(#"{"peft_type": "LORA", "r": "#.utf8).write(to: folder.appendingPathComponent(PEFTFolder.configFile))
        assertThrows({ try loadAdapter(folder.path, onto: base) }, mentioning: [PEFTFolder.configFile, "not valid JSON (Unexpected end of file"])
    }

    /// Every input the fuzzer (scripts/reliability) ever crashed a reader with is kept in
    /// Fixtures/fuzz/<reader>-<seed>.bin; each must now be refused with an error, not a crash.
    func testInputsThatOnceCrashedAreRefused() throws {
        let folder = fixtures.appendingPathComponent("fuzz")
        let names = try FileManager.default.contentsOfDirectory(atPath: folder.path).sorted()
        XCTAssertFalse(names.isEmpty)
        for name in names {
            let url = folder.appendingPathComponent(name)
            let data = try Data(contentsOf: url)
            switch name.split(separator: "-").first {
            case "hfconfig":
                let obj = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any], name)
                XCTAssertThrowsError(try hfModelConfig(obj, file: name), name)
            case "arrow":  // a schema without columns, then a batch of 2^32 empty rows: it was out of memory
                let path = NSTemporaryDirectory() + "fuzz-\(UUID().uuidString).arrow"
                try data.write(to: URL(fileURLWithPath: path))
                defer { try? FileManager.default.removeItem(atPath: path) }
                XCTAssertThrowsError(try readArrowRows(path), name)
            case "hdf5":
                continue  // libhdf5 itself crashes on it: HDF5Tests checks the checksum refuses such damage first
            default:
                XCTFail("\(name): no reader for this fuzz case; name it <reader>-<seed>.bin")
            }
        }
    }

    /// Deep nesting and invalid UTF-8 in each JSON file a reader takes: an error naming the file.
    func testDeepNestingAndInvalidUTF8AreRefused() throws {
        let deep = Data(("{\"model\": " + String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000) + "}").utf8)
        let badUTF8 = Data([0x7B, 0x22, 0x6D, 0x6F, 0x64, 0x65, 0x6C, 0x22, 0x3A, 0x22, 0xFF, 0xFE, 0x22, 0x7D])  // {"model":"\xFF\xFE"}
        let base = makeModel(.llama(vocabSize: 13, hiddenSize: 8, numLayers: 1, numHeads: 2, numKVHeads: 1, intermediateSize: 12))
        for (name, bytes) in [("deep", deep), ("utf8", badUTF8)] {
            assertThrows({ _ = try BPETokenizer.load(json: bytes, file: "\(name)-tokenizer.json") }, mentioning: ["\(name)-tokenizer.json"])
            let hf = dir.appendingPathComponent("hf-\(name)")
            try FileManager.default.createDirectory(at: hf, withIntermediateDirectories: true)
            try bytes.write(to: hf.appendingPathComponent("config.json"))
            assertThrows({ _ = try loadModel(hf.path) }, mentioning: [hf.appendingPathComponent("config.json").path])
            let peft = dir.appendingPathComponent("peft-\(name)")
            try FileManager.default.createDirectory(at: peft, withIntermediateDirectories: true)
            try bytes.write(to: peft.appendingPathComponent(PEFTFolder.configFile))
            assertThrows({ try loadAdapter(peft.path, onto: base) }, mentioning: [PEFTFolder.configFile])
        }
    }
}
