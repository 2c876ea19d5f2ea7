// safetensors and Hugging Face model folders: write → read round trips, F16/BF16 decoding of known bit
// patterns, corrupt files failing with the file and tensor named, transformers-made folders (Fixtures/hf,
// from scripts/make_hf_fixtures.py) giving transformers' logits, and saveHFModel folders loading back.

import Foundation
import XCTest
import TestSupport
@testable import Formats
import TensorCore
import NN
import Models
import Tokenizers
import PEFT
@testable import Containers

private let hfFixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/hf")
private let regenerate = "regenerate with `.venv/bin/python scripts/make_hf_fixtures.py` from the package root"

/// A raw safetensors file: 8-byte length, the header as given, then `data`.
private func rawFile(_ header: String, _ data: [UInt8], lengthOverride: UInt64? = nil) -> Data {
    let h = Array(header.utf8)
    let n = lengthOverride ?? UInt64(h.count)
    return Data((0..<8).map { UInt8(truncatingIfNeeded: n >> (8 * UInt64($0))) } + h + data)
}

private func floatBytesLE(_ xs: [Float]) -> [UInt8] { xs.flatMap { withUnsafeBytes(of: $0.bitPattern.littleEndian, Array.init) } }

final class SafetensorsTests: XCTestCase {
    var dir: URL!
    override func setUp() {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("swiftpeft-st-\(UUID().uuidString)")
        try! FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }
    override func tearDown() { try? FileManager.default.removeItem(at: dir) }

    private func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

    // MARK: - Round trips and dtypes

    func testRoundTripF32() throws {
        let tensors: [(String, Tensor)] = [
            ("b.weight", Tensor(shape: [2, 3], data: [1, -2, 3.5, .pi, -0.0, 1e-30])),
            ("a", Tensor(shape: [4], data: [0, 1, 2, 3])),
            ("scalar", Tensor(shape: [], data: [42])),
            ("empty", Tensor(shape: [0, 5], data: [])),
            ("t", Tensor(shape: [3, 2], data: [1, 2, 3, 4, 5, 6]).transposed()),  // non-contiguous view
        ]
        let p = path("rt.safetensors")
        try Safetensors.write(p, tensors: tensors, metadata: ["format": "pt", "note": "quote \" and \\ ok"])
        let (back, meta) = try Safetensors.read(p)
        XCTAssertEqual(meta, ["format": "pt", "note": "quote \" and \\ ok"])
        XCTAssertEqual(Set(back.keys), Set(tensors.map(\.0)))
        for (name, t) in tensors {
            XCTAssertEqual(back[name]?.shape, t.shape, name)
            XCTAssertEqual(back[name]?.toArray().map(\.bitPattern), t.toArray().map(\.bitPattern), name)
        }
        // Layout as the reference writes it: header padded with spaces to a multiple of 8, sorted keys.
        let bytes = try Data(contentsOf: URL(fileURLWithPath: p))
        let n = (0..<8).reduce(0) { $0 | Int(bytes[$1]) << (8 * $1) }
        XCTAssertEqual(n % 8, 0)
        let header = String(decoding: bytes[8..<(8 + n)], as: UTF8.self)
        XCTAssertTrue(header.hasPrefix("{\"__metadata__\":{\"format\":\"pt\""), header)
        XCTAssertTrue(header.contains("\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}"), header)
        XCTAssertEqual(bytes.count, 8 + n + 4 * (6 + 4 + 1 + 0 + 6))
        XCTAssertFalse(try FileManager.default.contentsOfDirectory(atPath: dir.path).contains { $0.contains(".tmp-") },
                       "the temporary file is renamed away")
    }

    func testF16AndBF16KnownValues() throws {
        // F16: 1, -2, 65504 (max), 2^-24 (smallest subnormal), 0x3555 (0.333251953125), -inf.
        let f16: [UInt16] = [0x3C00, 0xC000, 0x7BFF, 0x0001, 0x3555, 0xFC00]
        let f16Expected: [Float] = [1, -2, 65504, Float(sign: .plus, exponent: -24, significand: 1), 0.333251953125, -.infinity]
        // BF16: 1, -3, 3.140625, 2^-133 (subnormal).
        let bf16: [UInt16] = [0x3F80, 0xC040, 0x4049, 0x0001]
        let bf16Expected: [Float] = [1, -3, 3.140625, Float(sign: .plus, exponent: -133, significand: 1)]
        let data = (f16 + bf16).flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] }
        let header = "{\"h\":{\"dtype\":\"F16\",\"shape\":[2,3],\"data_offsets\":[0,12]},\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[12,20]}}"
        let p = path("half.safetensors")
        try rawFile(header, data).write(to: URL(fileURLWithPath: p))
        let f = try SafetensorsFile(path: p)
        XCTAssertEqual(f.entries["h"]?.dtype, .F16)
        XCTAssertEqual(try f.tensor("h").shape, [2, 3])
        XCTAssertEqual(try f.tensor("h").toArray(), f16Expected)
        XCTAssertEqual(try f.tensor("b").toArray(), bf16Expected)

        // Writing F16/BF16 rounds to nearest even; reading gives the rounded values back.
        let values: [Float] = [1, -2, 0.1, 3.14159, 65504, 1e-7, 70000]
        for (dtype, expected) in [(SafetensorsDType.F16, [1, -2, 0.0999755859375, 3.140625, 65504, 1.1920928955078125e-07, .infinity]),
                                  (.BF16, [1, -2, 0.10009765625, 3.140625, 65536, 1.0011717677116394e-07, 70144])] as [(SafetensorsDType, [Float])] {
            let q = path("w-\(dtype).safetensors")
            try Safetensors.write(q, tensors: [("x", Tensor(shape: [7], data: values))], dtype: dtype)
            let g = try SafetensorsFile(path: q)
            XCTAssertEqual(g.entries["x"]?.dtype, dtype)
            XCTAssertEqual(try g.tensor("x").toArray(), expected, "\(dtype)")
        }
        XCTAssertEqual(halfToFloat(floatToHalf(Float.nan)).isNaN, true)
    }

    func testIntegerAndDoubleDtypesReadAsFloat() throws {
        var data: [UInt8] = []
        for v in [Int64(-5), 7] { withUnsafeBytes(of: v.littleEndian) { data += $0 } }
        for v in [Double(0.5), -1.25] { withUnsafeBytes(of: v.bitPattern.littleEndian) { data += $0 } }
        let header = "{\"i\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]},\"d\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[16,32]}}"
        let p = path("ints.safetensors")
        try rawFile(header, data).write(to: URL(fileURLWithPath: p))
        let (t, _) = try Safetensors.read(p)
        XCTAssertEqual(t["i"]?.toArray(), [-5, 7])
        XCTAssertEqual(t["d"]?.toArray(), [0.5, -1.25])
    }

    // MARK: - Corrupt files

    /// Writes `data`, expects SafetensorsFile to fail with a message containing the path, the tensor
    /// (if given) and every fragment.
    private func expectFailure(_ name: String, _ data: Data, tensor: String?, _ fragments: [String],
                               file: StaticString = #filePath, line: UInt = #line) {
        let p = path(name)
        try! data.write(to: URL(fileURLWithPath: p))
        XCTAssertThrowsError(try SafetensorsFile(path: p), name, file: file, line: line) { error in
            let m = "\(error)"
            XCTAssertTrue(error is SafetensorsError, "\(name): \(type(of: error))", file: file, line: line)
            XCTAssertTrue(m.contains(p), "\(name): the message names the file: \(m)", file: file, line: line)
            if let t = tensor { XCTAssertTrue(m.contains("'\(t)'"), "\(name): the message names the tensor: \(m)", file: file, line: line) }
            for f in fragments { XCTAssertTrue(m.contains(f), "\(name): expected '\(f)' in: \(m)", file: file, line: line) }
            print("[safetensors] \(name): \(m)")
        }
    }

    func testCorruptFilesNameFileTensorAndExpectation() throws {
        let good = path("good.safetensors")
        try Safetensors.write(good, tensors: [("w", Tensor(shape: [2, 3], data: [1, 2, 3, 4, 5, 6])),
                                              ("z", Tensor(shape: [4], data: [1, 2, 3, 4]))])
        let bytes = try Data(contentsOf: URL(fileURLWithPath: good))

        expectFailure("truncated.safetensors", bytes.prefix(bytes.count - 3), tensor: "z", ["run past the end", "truncated"])
        expectFailure("tiny.safetensors", Data([1, 2, 3]), tensor: nil, ["3 bytes", "at least 8"])
        expectFailure("length.safetensors", rawFile("{}", [], lengthOverride: 1_000), tensor: nil,
                      ["header length 1000 runs past the end of the file"])
        expectFailure("huge.safetensors", rawFile("{}", [], lengthOverride: 1 << 40), tensor: nil, ["exceeds the limit"])
        expectFailure("offset.safetensors", rawFile("{\"w\":{\"dtype\":\"F32\",\"shape\":[100],\"data_offsets\":[0,400]}}", [UInt8](repeating: 0, count: 16)),
                      tensor: "w", ["[0, 400]", "16 bytes"])
        expectFailure("json.safetensors", rawFile("{\"w\": {\"dtype\": ", [0, 0, 0, 0]), tensor: nil, ["not valid JSON"])
        expectFailure("notobject.safetensors", rawFile("[1, 2]", []), tensor: nil, ["does not start with '{'"])
        expectFailure("mismatch.safetensors", rawFile("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", [UInt8](repeating: 0, count: 24)),
                      tensor: "w", ["F32 × shape [2, 3] needs 6 × 4 = 24 bytes", "hold 20"])
        expectFailure("dtype.safetensors", rawFile("{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", [0, 0]),
                      tensor: "w", ["dtype F8_E4M3 is not supported"])
        expectFailure("overlap.safetensors", rawFile("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                                                     [UInt8](repeating: 0, count: 12)), tensor: "b", ["overlap tensor 'a'"])
        expectFailure("shape.safetensors", rawFile("{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", [0, 0, 0, 0]),
                      tensor: "w", ["shape"])
        expectFailure("offsets.safetensors", rawFile("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", [UInt8](repeating: 0, count: 8)),
                      tensor: "w", ["begin is after end"])
        // What JSON parsers and offset checks let through, and the reference implementation refuses.
        expectFailure("duplicate.safetensors", rawFile("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                                                       [UInt8](repeating: 0, count: 8)), tensor: "w", ["names a tensor twice"])
        expectFailure("gap.safetensors", rawFile("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
                                                 [UInt8](repeating: 0, count: 12)), tensor: "b", ["gap after byte 4"])
        expectFailure("trailing.safetensors", rawFile("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                                                      [UInt8](repeating: 0, count: 12)), tensor: nil, ["end at byte 4 of a 12-byte data section"])
        expectFailure("empty-inside.safetensors", rawFile("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}",
                                                          [UInt8](repeating: 0, count: 8)), tensor: "e", ["[4, 4]"])
        expectFailure("bool-shape.safetensors", rawFile("{\"w\":{\"dtype\":\"F32\",\"shape\":[true],\"data_offsets\":[0,4]}}", [0, 0, 0, 0]),
                      tensor: "w", ["shape"])
        expectFailure("float-shape.safetensors", rawFile("{\"w\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", [0, 0, 0, 0]),
                      tensor: "w", ["shape"])
        // What the reference implementation reads, and so does this reader: JSON after whitespace,
        // a null __metadata__, an empty tensor where the one before it ends.
        let lenient = path("lenient.safetensors")
        try rawFile("\t {\"__metadata__\": null, \"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                    + "\"e\":{\"dtype\":\"F32\",\"shape\":[0, 3],\"data_offsets\":[4,4]}}", floatBytesLE([2.5])).write(to: URL(fileURLWithPath: lenient))
        let file = try SafetensorsFile(path: lenient)
        XCTAssertEqual(file.names, ["a", "e"])
        XCTAssertEqual(file.metadata, [:])
        XCTAssertEqual(try file.tensor("a").toArray(), [2.5])
        XCTAssertEqual(try file.tensor("e").shape, [0, 3])
        XCTAssertEqual(SafetensorsFile.topLevelKeys(Data(#"{"a": {"b": 1, "c": [{"d": 2}]}, "e\"f": 3, "a": 4}"#.utf8)).map { String(decoding: $0, as: UTF8.self) },
                       ["a", "e\\\"f", "a"], "nested keys and escapes are not top-level keys")
        XCTAssertThrowsError(try SafetensorsFile(path: path("missing.safetensors"))) { XCTAssertTrue("\($0)".contains("no such file")) }
        XCTAssertThrowsError(try SafetensorsFile(path: good).tensor("nope")) { XCTAssertTrue("\($0)".contains("'nope'")) }
    }

    func testWriterRejectsDuplicateNames() {
        let t = Tensor(shape: [1], data: [1])
        XCTAssertThrowsError(try Safetensors.write(path("d.safetensors"), tensors: [("x", t), ("x", t)])) {
            XCTAssertTrue("\($0)".contains("'x'"), "\($0)")
        }
    }

    // MARK: - Hugging Face folders

    private struct Expected { let ids: [Int32]; let batch: Int; let logits: [Float] }

    private func expected(_ name: String) throws -> Expected {
        let url = hfFixtures.appendingPathComponent(name).appendingPathComponent("expected.safetensors")
        guard FileManager.default.fileExists(atPath: url.path) else { try skipUnlessRequired("fixture \(url.path) is missing: \(regenerate)") }
        let f = try SafetensorsFile(path: url.path)  // written by the Python safetensors package
        let ids = try f.tensor("input_ids")  // I64 (B, T)
        XCTAssertEqual(f.entries["input_ids"]?.dtype, .I64)
        return Expected(ids: ids.toArray().map { Int32($0) }, batch: ids.shape[0], logits: try f.tensor("logits").toArray())
    }

    private let fixtureNames = ["llama", "qwen2", "gpt2"]

    func testTransformersFoldersGiveTransformersLogits() throws {
        for name in fixtureNames {
            let folder = hfFixtures.appendingPathComponent(name).path
            let e = try expected(name)
            let (model, tok) = try loadHFModel(folder)
            let logits = withNoGrad { model.forward(e.ids, batch: e.batch) }.toArray()
            assertClose(logits, e.logits, rtol: 1e-4, atol: 1e-5, "\(name) logits vs transformers", label: "[hf]")
            XCTAssertEqual(tok != nil, name == "gpt2", "\(name): tokenizer.json loaded when present")
            if let tok { XCTAssertEqual(withNoGrad { model.forward(tok.encode("hello world"), batch: 1) }.shape[0], 1) }
            XCTAssertTrue(model.trainableParameters().isEmpty)
        }
        let (llama, _) = try loadHFModel(hfFixtures.appendingPathComponent("llama").path)
        XCTAssertEqual(llama.config.numKVHeads, 2, "GQA read from num_key_value_heads")
        let (qwen, _) = try loadHFModel(hfFixtures.appendingPathComponent("qwen2").path)
        XCTAssertTrue(qwen.config.attentionBias && qwen.config.tieWordEmbeddings)
        XCTAssertEqual(qwen.config.ropeTheta, 1_000_000, "rope_theta from rope_parameters")
    }

    func testGPT2KeysWithoutTransformerPrefixAndMaskBuffers() throws {
        let src = hfFixtures.appendingPathComponent("gpt2")
        let e = try expected("gpt2")
        var tensors = try Safetensors.read(src.appendingPathComponent("model.safetensors").path).tensors
            .map { (String($0.key.dropFirst($0.key.hasPrefix("transformer.") ? 12 : 0)), $0.value) }
        for l in 0..<2 { tensors.append(("h.\(l).attn.bias", Tensor(shape: [1, 1, 32, 32], data: [Float](repeating: 1, count: 1024)))) }
        let folder = dir.appendingPathComponent("gpt2-bare")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: src.appendingPathComponent("config.json"), to: folder.appendingPathComponent("config.json"))
        try Safetensors.write(folder.appendingPathComponent("model.safetensors").path, tensors: tensors, metadata: ["format": "pt"])
        let (model, _) = try loadHFModel(folder.path)
        assertClose(withNoGrad { model.forward(e.ids, batch: e.batch) }.toArray(), e.logits, rtol: 1e-4, atol: 1e-5, "gpt2 (bare keys) logits", label: "[hf]")
    }

    func testSaveHFModelLoadsBackIdentically() throws {
        for name in fixtureNames {
            let e = try expected(name)
            let (model, tok) = try loadHFModel(hfFixtures.appendingPathComponent(name).path)
            let out = dir.appendingPathComponent("saved-\(name)").path
            try saveHFModel(model, tokenizerJSON: tok?.tokenizerJSON(), to: out)
            let (back, tok2) = try loadHFModel(out)
            XCTAssertEqual(back.config, model.config, name)
            XCTAssertEqual(tok2 != nil, tok != nil, name)
            let a = withNoGrad { model.forward(e.ids, batch: e.batch) }.toArray()
            let b = withNoGrad { back.forward(e.ids, batch: e.batch) }.toArray()
            XCTAssertEqual(a, b, "\(name): saved folder gives identical logits")
            let keys = Set(try SafetensorsFile(path: out + "/model.safetensors").names)
            XCTAssertEqual(keys.contains("lm_head.weight"), !model.config.tieWordEmbeddings, "\(name): tied head not stored")
            let config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/config.json"))) as! [String: Any]
            XCTAssertEqual(config["model_type"] as? String, name)
            XCTAssertEqual(config["torch_dtype"] as? String, "float32")
            XCTAssertEqual(try SafetensorsFile(path: out + "/model.safetensors").metadata["format"], "pt")
        }
        // Saved over a sharded download (index, shard, a README): the saved model is what loads
        // back, the user's files stay, and no temporary folder is left beside it.
        let (llama, _) = try loadHFModel(hfFixtures.appendingPathComponent("llama").path)
        let (gpt2, gpt2Tok) = try loadHFModel(hfFixtures.appendingPathComponent("gpt2").path)
        let over = dir.appendingPathComponent("over")
        try FileManager.default.createDirectory(at: over, withIntermediateDirectories: true)
        try Safetensors.write(over.appendingPathComponent("model-00001-of-00001.safetensors").path,
                              tensors: llama.namedParameters().map { ($0.0, $0.1) })
        var weightMap = Dictionary(uniqueKeysWithValues: llama.namedParameters().map { ($0.0, "model-00001-of-00001.safetensors") })
        (weightMap["odd.a"], weightMap["odd.b"], weightMap["odd.c"]) = ("..", "config.json", "README.md")  // never dropped
        try JSONSerialization.data(withJSONObject: ["weight_map": weightMap]).write(to: over.appendingPathComponent("model.safetensors.index.json"))
        try "notes".write(to: over.appendingPathComponent("README.md"), atomically: true, encoding: .utf8)
        try #"{"chat_template": "{{ messages }}", "eos_token": "</s>", "model_max_length": 2048}"#
            .write(to: over.appendingPathComponent("tokenizer_config.json"), atomically: true, encoding: .utf8)
        try saveHFModel(gpt2, tokenizer: gpt2Tok, to: over.path)
        XCTAssertEqual(try loadHFModel(over.path).model.config, gpt2.config)
        XCTAssertEqual(try String(contentsOf: over.appendingPathComponent("README.md"), encoding: .utf8), "notes")
        let tokConfig = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: over.appendingPathComponent("tokenizer_config.json"))) as? [String: Any])
        XCTAssertEqual(tokConfig["chat_template"] as? String, "{{ messages }}", "the folder's own keys stay")
        XCTAssertEqual(tokConfig["model_max_length"] as? Int, 2048)
        XCTAssertEqual(tokConfig["eos_token"] as? String, gpt2Tok?.roles.eos, "the roles are the saved tokenizer's")
        XCTAssertFalse(try FileManager.default.contentsOfDirectory(atPath: dir.path).contains { $0.hasPrefix(".over.") }, "no temporary left")
        XCTAssertEqual(Set(try FileManager.default.contentsOfDirectory(atPath: over.path)),
                       ["README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"],
                       "the sharded model's index and shards are gone (vLLM would read them)")
        // Saved into a new folder from a base folder (a merge): the base's tokenizer settings and
        // generation config come along.
        try #"{"max_new_tokens": 7}"#.write(to: over.appendingPathComponent("generation_config.json"), atomically: true, encoding: .utf8)
        let fresh = dir.appendingPathComponent("from-base")
        try saveHFModel(gpt2, tokenizer: gpt2Tok, to: fresh.path, from: over.path)
        let carried = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: fresh.appendingPathComponent("tokenizer_config.json"))) as? [String: Any])
        XCTAssertEqual(carried["chat_template"] as? String, "{{ messages }}")
        XCTAssertEqual(try String(contentsOf: fresh.appendingPathComponent("generation_config.json"), encoding: .utf8), #"{"max_new_tokens": 7}"#)
        XCTAssertFalse(FileManager.default.fileExists(atPath: fresh.appendingPathComponent("README.md").path), "only the model's files")
    }

    /// transformers loads our saved folders and gives our logits. Needs .venv/bin/python (made by
    /// scripts/make-venv) or $SWIFTPEFT_PYTHON with torch and transformers; otherwise skipped, loudly.
    func testTransformersLoadsSavedFolder() throws {
        let python = try referencePython(importing: ["torch", "transformers"])
        let configs: [(String, ModelConfig)] = [
            ("llama-bias", .llama(vocabSize: 29, hiddenSize: 16, numLayers: 2, numHeads: 4, numKVHeads: 2, intermediateSize: 24,
                                  ropeTheta: 500000, normEps: 1e-5, attentionBias: true, tieWordEmbeddings: false, maxPositions: 32)),
            ("qwen2", .llama(vocabSize: 29, hiddenSize: 16, numLayers: 2, numHeads: 2, numKVHeads: 1, intermediateSize: 24,
                             attentionBias: true, tieWordEmbeddings: true, maxPositions: 32)),
            // Window 3 on 5 positions: the last two queries see fewer keys than plain causal attention.
            ("mistral-window", {
                var c = ModelConfig.llama(vocabSize: 29, hiddenSize: 16, numLayers: 2, numHeads: 4, numKVHeads: 2,
                                          intermediateSize: 24, maxPositions: 32)
                c.slidingWindow = 3
                return c
            }()),
            ("gpt2-untied", {
                var c = ModelConfig.gpt2(vocabSize: 29, hiddenSize: 16, numLayers: 2, numHeads: 2, maxPositions: 16)
                c.tieWordEmbeddings = false
                c.mlp = .gelu
                return c
            }()),
        ]
        for (name, var config) in configs {
            if name == "llama-bias" { config.projectionBias = true }
            let model = makeModel(config, seed: 7)
            // Non-trivial norms and biases, so a dropped tensor would show.
            for (k, p) in model.namedParameters() where p.rank == 1 {
                p.assign(Tensor(shape: p.shape, data: (0..<p.count).map { Float(($0 * 7 + k.count) % 11) * 0.05 + (k.hasSuffix("bias") ? 0 : 0.8) }))
            }
            let folder = dir.appendingPathComponent("py-\(name)").path
            try saveHFModel(model, tokenizerJSON: nil, to: folder)
            let ids: [[Int]] = [[1, 5, 9, 13, 20], [28, 3, 0, 7, 2]]
            let ours = withNoGrad { model.forward(ids.flatMap { $0.map(Int32.init) }, batch: 2) }.toArray()
            if config.slidingWindow != nil {  // the window must change the answer, or this case proves nothing
                var plain = config
                plain.slidingWindow = nil
                let full = makeModel(plain, seed: 7)
                let weights = Dictionary(uniqueKeysWithValues: model.namedParameters())
                for (k, p) in full.namedParameters() { p.assign(weights[k]!) }
                let unwindowed = withNoGrad { full.forward(ids.flatMap { $0.map(Int32.init) }, batch: 2) }.toArray()
                XCTAssertEqual(Array(ours.prefix(3 * 29)), Array(unwindowed.prefix(3 * 29)), "the first 3 positions see every key either way")
                XCTAssertGreaterThan(zip(ours, unwindowed).map { abs($0 - $1) }.max()!, 1e-3, "the window hides keys from the last positions")
            }

            let (status, stdout, stderr) = try runPython(python, [packageRoot().appendingPathComponent("scripts/hf_folder_logits.py").path, folder, "\(ids)"])
            guard status == 0 else {
                XCTFail("\(name): transformers could not load \(folder): \(stderr)")
                continue
            }
            let obj = try JSONSerialization.jsonObject(with: stdout) as! [String: Any]
            XCTAssertEqual(obj["shape"] as? [Int], [2, 5, 29], name)
            assertClose(ours, (obj["logits"] as! [NSNumber]).map(\.floatValue), rtol: 1e-4, atol: 1e-5, "\(name): transformers on our saved folder", label: "[hf]")
        }
    }

    func testUnsupportedConfigsAreNamed() throws {
        let base: [String: Any] = ["model_type": "llama", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
                                   "num_attention_heads": 2, "intermediate_size": 16]
        XCTAssertEqual(try hfModelConfig(base, file: "c.json").numKVHeads, 2, "num_key_value_heads defaults to the heads")
        XCTAssertNil(try hfModelConfig(base, file: "c.json").attentionDropout, "LLaMA's attention_dropout defaults to 0")
        let dropping = try hfModelConfig(base.merging(["attention_dropout": 0.25]) { $1 }, file: "c.json")
        XCTAssertEqual(dropping.attentionDropout, 0.25)
        XCTAssertEqual(dropping.dropout, 0, "LLaMA has no residual dropout")
        XCTAssertEqual(try hfConfigJSON(dropping)["attention_dropout"] as? Double, 0.25)
        func expectError(_ change: [String: Any], _ fragments: [String], line: UInt = #line) {
            XCTAssertThrowsError(try hfModelConfig(base.merging(change) { $1 }, file: "c.json"), line: line) { e in
                for f in fragments + ["c.json"] { XCTAssertTrue("\(e)".contains(f), "expected '\(f)' in: \(e)", line: line) }
            }
        }
        expectError(["model_type": "bert"], ["model_type \"bert\" is not supported", "gpt2, llama, mistral, qwen2"])
        expectError(["rope_scaling": ["rope_type": "linear", "factor": 2.0]], ["rope_scaling", "\"linear\" is not supported"])
        expectError(["rope_parameters": ["rope_type": "yarn", "rope_theta": 1e4]], ["rope_parameters", "\"yarn\""])
        expectError(["hidden_act": "gelu"], ["hidden_act \"gelu\" is not supported"])
        expectError(["hidden_size": NSNull()], ["\"hidden_size\" is missing"])
        expectError(["num_key_value_heads": 3], ["num_key_value_heads"])
        expectError(["head_dim": 8], ["head_dim"])
        expectError(["rope_theta": 0], ["rope_theta must be positive"])
        expectError(["rms_norm_eps": -1e-6], ["must be 0 or more"])
        expectError(["layer_types": ["sliding_attention"]], ["layer_types"])
        let gpt2: [String: Any] = ["model_type": "gpt2", "vocab_size": 10, "n_embd": 8, "n_layer": 1, "n_head": 2]
        let g = try hfModelConfig(gpt2, file: "g.json")
        XCTAssertEqual(g.intermediateSize, 32, "n_inner defaults to 4·n_embd")
        XCTAssertEqual(g.dropout, 0.1, "GPT2Config's resid_pdrop and embd_pdrop default to 0.1")
        XCTAssertEqual(g.attentionDropout, 0.1, "attn_pdrop too")
        let g0 = try hfModelConfig(gpt2.merging(["resid_pdrop": 0, "embd_pdrop": 0, "attn_pdrop": 0.0]) { $1 }, file: "g.json")
        XCTAssertEqual(g0.dropout, 0)
        XCTAssertNil(g0.attentionDropout)
        XCTAssertNil(g.embeddingDropout, "the same rate as the residual branches")
        let gE = try hfModelConfig(gpt2.merging(["resid_pdrop": 0.1, "embd_pdrop": 0.2]) { $1 }, file: "g.json")
        XCTAssertEqual(gE.dropout, 0.1)
        XCTAssertEqual(gE.embeddingDropout, 0.2)
        XCTAssertEqual(try hfConfigJSON(gE)["embd_pdrop"] as? Double, 0.2)
        XCTAssertThrowsError(try hfModelConfig(gpt2.merging(["attn_pdrop": 1.0]) { $1 }, file: "g.json")) {
            XCTAssertTrue("\($0)".contains("\"attn_pdrop\" is 1.0, expected a dropout probability in [0, 1)"), "\($0)")
        }
        XCTAssertEqual(try hfConfigJSON(g)["attn_pdrop"] as? Double, 0.1)
        XCTAssertEqual(try hfConfigJSON(g)["resid_pdrop"] as? Double, 0.1)
        XCTAssertEqual(g.maxPositions, 1024)
        XCTAssertThrowsError(try hfModelConfig(gpt2.merging(["activation_function": "relu"]) { $1 }, file: "g.json")) {
            XCTAssertTrue("\($0)".contains("activation_function \"relu\""), "\($0)")
        }
        let rs: [String: Any] = ["rope_scaling": NSNull(), "model_type": "mistral", "sliding_window": 16, "max_position_embeddings": 64,
                                 "num_key_value_heads": 2]
        let mistral = try hfModelConfig(base.merging(rs) { $1 }, file: "m.json")
        XCTAssertEqual(mistral.slidingWindow, 16)
        XCTAssertEqual(mistral.maxPositions, 64, "the window is enforced in attention, not by shortening the context")
        XCTAssertNil(try hfModelConfig(base.merging(["model_type": "mistral", "sliding_window": NSNull(), "num_key_value_heads": 2]) { $1 },
                                       file: "m.json").slidingWindow)
        // Keys left out take transformers' defaults (MistralConfig, Qwen2Config), not LLaMA's.
        let mistralDefaults = try hfModelConfig(base.merging(["model_type": "mistral", "num_attention_heads": 8, "hidden_size": 16]) { $1 }, file: "m.json")
        XCTAssertEqual([mistralDefaults.slidingWindow, mistralDefaults.numKVHeads, mistralDefaults.maxPositions], [4096, 8, 131_072])
        let qwenDefaults = try hfModelConfig(base.merging(["model_type": "qwen2", "num_attention_heads": 32, "hidden_size": 64]) { $1 }, file: "q.json")
        XCTAssertEqual([qwenDefaults.numKVHeads, qwenDefaults.maxPositions], [32, 32_768])
        XCTAssertEqual(try hfModelConfig(base.merging(["model_type": "qwen2", "num_key_value_heads": NSNull()]) { $1 }, file: "q.json").numKVHeads, 2,
                       "null: one key/value head per head")
        expectError(["model_type": "mistral"], ["num_key_value_heads"])  // MistralConfig's 8 KV heads do not divide 2 heads
        expectError(["model_type": "mistral", "sliding_window": 0], ["sliding_window 0 is not a positive integer"])
    }

    func testFolderErrors() throws {
        let folder = dir.appendingPathComponent("broken")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        XCTAssertThrowsError(try loadHFModel(folder.path)) { XCTAssertTrue("\($0)".contains("no config.json"), "\($0)") }
        try FileManager.default.copyItem(at: hfFixtures.appendingPathComponent("llama/config.json"), to: folder.appendingPathComponent("config.json"))
        XCTAssertThrowsError(try loadHFModel(folder.path)) { XCTAssertTrue("\($0)".contains("no model.safetensors"), "\($0)") }
        // An index naming a tensor its shard lacks.
        let shard = folder.appendingPathComponent("model-00001-of-00001.safetensors")
        try Safetensors.write(shard.path, tensors: [("a", Tensor(shape: [1], data: [1]))])
        let index = ["weight_map": ["a": shard.lastPathComponent, "model.norm.weight": shard.lastPathComponent]]
        try JSONSerialization.data(withJSONObject: index).write(to: folder.appendingPathComponent("model.safetensors.index.json"))
        XCTAssertThrowsError(try loadHFModel(folder.path)) {
            XCTAssertTrue("\($0)".contains(shard.path) && "\($0)".contains("'model.norm.weight'"), "\($0)")
        }
        // A tokenizer larger than the model's vocabulary.
        let small = dir.appendingPathComponent("small-vocab")
        try FileManager.default.copyItem(at: hfFixtures.appendingPathComponent("gpt2"), to: small)
        let cfgURL = small.appendingPathComponent("config.json")
        var cfg = try JSONSerialization.jsonObject(with: Data(contentsOf: cfgURL)) as! [String: Any]
        cfg["vocab_size"] = 100
        try JSONSerialization.data(withJSONObject: cfg).write(to: cfgURL)
        var w = try Safetensors.readFolder(small.path)
        w["transformer.wte.weight"] = Tensor(shape: [100, 16], data: [Float](repeating: 0, count: 1600))
        try Safetensors.write(small.appendingPathComponent("model.safetensors").path, tensors: w.map { ($0.key, $0.value) })
        XCTAssertThrowsError(try loadHFModel(small.path)) {
            XCTAssertTrue("\($0)".contains("tokenizer.json") && "\($0)".contains("vocab_size 100"), "\($0)")
        }
        // A weight of the wrong shape names the tensor and both shapes.
        try FileManager.default.removeItem(at: folder.appendingPathComponent("model.safetensors.index.json"))
        var weights = try Safetensors.readFolder(hfFixtures.appendingPathComponent("llama").path)
        weights["model.norm.weight"] = Tensor(shape: [31], data: [Float](repeating: 1, count: 31))
        try Safetensors.write(folder.appendingPathComponent("model.safetensors").path, tensors: weights.map { ($0.key, $0.value) })
        XCTAssertThrowsError(try loadHFModel(folder.path)) {
            XCTAssertTrue("\($0)".contains("'model.norm.weight'") && "\($0)".contains("[31]") && "\($0)".contains("model.safetensors"), "\($0)")
        }
    }

    func testTheSingleFileIsReadBeforeAStaleIndex() throws {
        // A model saved over a sharded one: its index and shard stay beside the new model.safetensors,
        // which is what transformers reads, and so must we.
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("swiftpeft-stale-index-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let shard = folder.appendingPathComponent("model-00001-of-00001.safetensors")
        try Safetensors.write(shard.path, tensors: [("old", Tensor(shape: [1], data: [1]))])
        try JSONSerialization.data(withJSONObject: ["weight_map": ["old": shard.lastPathComponent]])
            .write(to: folder.appendingPathComponent("model.safetensors.index.json"))
        XCTAssertEqual(Array(try Safetensors.readFolder(folder.path).keys), ["old"], "the index alone")
        try Safetensors.write(folder.appendingPathComponent("model.safetensors").path, tensors: [("new", Tensor(shape: [1], data: [2]))])
        XCTAssertEqual(Array(try Safetensors.readFolder(folder.path).keys), ["new"])
    }
}
