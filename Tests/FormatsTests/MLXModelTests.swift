// mlx-lm model folders (Fixtures/mlx-model, from scripts/make_mlx_model_fixtures.py, saved by mlx-lm's
// own quantize_model/save_model/save_config): every bit width of mlx's affine mode decodes as
// `mx.dequantize` decodes it; 4-bit LLaMA with bf16 scales, mixed 3/6-bit with an unquantized layer,
// 8-bit GPT-2 and float16 GPT-2 (mlx-lm's layout) load to mlx-lm's logits; kept packed
// (`--keep-quantized`) the LLaMA ones give the Float32 load's logits and LoRA gradients; what cannot be
// read is refused by name.

import Foundation
import XCTest
import TestSupport
@testable import Formats
import TensorCore
import NN
import Models
import PEFT
@testable import Containers

private let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/mlx-model")
private let regenerate = "regenerate with `.venv/bin/python scripts/make_mlx_model_fixtures.py` from the package root"

final class MLXModelTests: XCTestCase {
    var dir: URL!

    override func setUp() {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("mlxmodel-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(at: dir) }

    private func fixture(_ name: String) throws -> URL {
        let path = fixtures.appendingPathComponent(name)
        guard FileManager.default.fileExists(atPath: path.path) else { try skipUnlessRequired("fixture \(path.path) is missing: \(regenerate)") }
        return path
    }

    func testEveryBitWidthDecodesAsMLXDoes() throws {
        let f = try SafetensorsFile(path: try fixture("dequantize.safetensors").path)
        for bits in MLXQuantization.bitWidths {
            let w = try XCTUnwrap(f.entries["b\(bits).weight"], "b\(bits)")
            XCTAssertEqual(w.dtype, .U32)
            let scales = try f.tensor("b\(bits).scales"), biases = try f.tensor("b\(bits).biases")
            let expected = try f.tensor("b\(bits).expected")
            XCTAssertEqual(expected.shape, [3, 128])
            XCTAssertEqual(f.entries["b\(bits).scales"]!.dtype, bits == 4 ? .BF16 : .F32)
            var out = [Float](repeating: .nan, count: 3 * 128)
            try f.withBytes("b\(bits).weight") { raw in
                XCTAssertEqual(raw.count, 3 * 128 * bits / 8)
                mlxDequantize(raw.baseAddress!, rowBytes: w.shape[1] * 4, scales: scales.basePointer, biases: biases.basePointer,
                              rows: 3, columns: 128, groupSize: 32, bits: bits, into: &out)
            }
            assertClose(out, expected.toArray(), rtol: 1e-6, atol: 1e-6, "\(bits)-bit", label: "[mlx dequantize]")
            XCTAssertGreaterThan(Set(out).count, min(1 << bits, 8), "\(bits)-bit: the values are not all one")
        }
    }

    func testMLXFoldersGiveMLXLogits() throws {
        for name in ["llama-q4", "llama-mixed", "gpt2-q8", "gpt2-f16"] {
            let folder = try fixture(name)
            XCTAssertEqual(try ModelSource.detect(folder.path).kind, .hfFolder, name)
            let model = try loadModel(folder.path).model
            let e = try SafetensorsFile(path: folder.appendingPathComponent("expected.safetensors").path)
            let ids = try e.tensor("input_ids")
            let logits = withNoGrad { model.forward(ids.toArray().map { Int32($0) }, batch: ids.shape[0]) }
            XCTAssertEqual(logits.shape, try e.tensor("logits").shape, name)
            assertClose(logits.toArray(), try e.tensor("logits").toArray(), rtol: 1e-4, atol: 2e-5, name, label: "[mlx model]")
        }
        // The mixed folder: 6 bits where its config says, and o_proj of block 1 left in float32; its
        // per-layer group sizes are null, as `mlx_lm.convert --quant-predicate` writes them (mlx's default, 64).
        let mixedConfig = try JSONSerialization.jsonObject(with: Data(contentsOf: try fixture("llama-mixed").appendingPathComponent("config.json"))) as? [String: Any]
        let q0 = (mixedConfig?["quantization"] as? [String: Any])?["model.layers.0.self_attn.q_proj"] as? [String: Any]
        XCTAssertTrue(q0?["group_size"] is NSNull, "\(q0 ?? [:])")
        // What inspect says: the default, and the bits the layers' own entries give.
        XCTAssertEqual(MLXModel.describe(try XCTUnwrap(mixedConfig)), "mlx-lm affine quantization, 4-bit, group size 64 by default; "
                       + "15 layers set one by one (3/6-bit); dequantized to Float32 on load")
        let q4Config = try JSONSerialization.jsonObject(with: Data(contentsOf: try fixture("llama-q4").appendingPathComponent("config.json"))) as? [String: Any]
        XCTAssertEqual(MLXModel.describe(try XCTUnwrap(q4Config)), "mlx-lm affine quantization, 4-bit, group size 32; dequantized to Float32 on load")
        let mixed = try SafetensorsFile(path: try fixture("llama-mixed").appendingPathComponent("model.safetensors").path)
        XCTAssertEqual(mixed.entries["model.layers.1.self_attn.o_proj.weight"]?.dtype, .F32)
        XCTAssertNil(mixed.entries["model.layers.1.self_attn.o_proj.scales"])
        XCTAssertEqual(mixed.entries["model.layers.1.mlp.down_proj.weight"]?.shape, [64, 128 * 6 / 32])
        XCTAssertEqual(mixed.entries["model.layers.0.mlp.down_proj.weight"]?.shape, [64, 128 * 3 / 32])
    }

    /// `--keep-quantized`: the quantized block matrices (and with quantizedEmbedding the embedding and
    /// the untied head) keep their packed words alone; the logits, the weights hash and a LoRA's
    /// gradients are the Float32 load's. The unquantized o_proj stays Float32; GPT-2 and a folder
    /// without quantized layers are refused.
    func testKeptPackedMatricesGiveTheFloat32LoadsLogitsAndGradients() throws {
        let ids: [Int32] = [3, 40, 7, 59, 12, 0, 33, 21, 8, 60, 44, 45]
        for name in ["llama-q4", "llama-mixed"] {
            let path = try fixture(name).path
            let plain = try loadModel(path), kept = try loadModel(path, keepQuantized: true)
            let packed = kept.model.namedParameters().filter { $0.1.packedWeights != nil }
            XCTAssertEqual(packed.count, name == "llama-q4" ? 14 : 13, "\(name): \(packed.map(\.0))")
            XCTAssertEqual(Set(packed.map { $0.1.packedWeights!.encoding }), name == "llama-q4" ? ["mlx 4-bit g32"] : ["mlx 3-bit g64", "mlx 6-bit g64"])
            XCTAssertTrue(packed.allSatisfy { $0.1.storage.valuesReleased })
            XCTAssertNil(kept.model.tokenEmbeddingTable.packedWeights)
            XCTAssertEqual(kept.model.weightsHash(), plain.model.weightsHash(), name)
            assertClose(withNoGrad { kept.model.forward(ids, batch: 2) }.toArray(), withNoGrad { plain.model.forward(ids, batch: 2) }.toArray(),
                        rtol: 0, atol: 0, "\(name) logits", label: "[mlx keep-quantized]")
            var grads: [[String: [Float]]] = []
            for m in [plain.model, kept.model] {
                var config = LoRAConfig(r: 4, loraAlpha: 8, targetModules: .names(["all-linear"]))
                config.initLoraWeights = .random  // B ≠ 0: A's gradients flow through the base's input gradients
                let lora = try LoRA(config: config, seed: 3)
                _ = try lora.attach(to: m)
                m.train()
                m.loss(ids, targets: ids.map { ($0 + 1) % 61 }, batch: 2).backward()
                grads.append(Dictionary(uniqueKeysWithValues: lora.adapterParameters().map { ($0.0, $0.1.grad?.toArray() ?? []) }))
            }
            XCTAssertEqual(grads[0].count, 28, name)
            for (param, g) in grads[0] {
                XCTAssertGreaterThan(maxAbs(g), 0, param)
                assertClose(grads[1][param] ?? [], g, rtol: 0, atol: 0, "\(name) \(param)", label: "[mlx keep-quantized]")
            }
            let all = try loadModel(path, keepQuantized: true, quantizedEmbedding: true), fp32 = try loadModel(path)
            XCTAssertNotNil(all.model.tokenEmbeddingTable.packedWeights, name)
            XCTAssertEqual(all.model.weightsHash(), fp32.model.weightsHash(), name)
            assertClose(withNoGrad { all.model.forward(ids, batch: 2) }.toArray(), withNoGrad { fp32.model.forward(ids, batch: 2) }.toArray(),
                        rtol: 1e-5, atol: 1e-5, "\(name) logits, embedding kept packed", label: "[mlx keep-quantized]")
        }
        let mixed = try loadModel(try fixture("llama-mixed").path, keepQuantized: true, quantizedEmbedding: true).model
        let params = Dictionary(uniqueKeysWithValues: mixed.namedParameters())
        XCTAssertNil(params["model.layers.1.self_attn.o_proj.weight"]?.packedWeights, "left unquantized by the predicate")
        XCTAssertEqual(params["lm_head.weight"]?.packedWeights?.encoding, "mlx 6-bit g64")
        XCTAssertThrowsError(try loadModel(try fixture("gpt2-q8").path, keepQuantized: true)) { e in
            XCTAssertTrue("\(e)".contains("GPT-2") && "\(e)".contains("leave --keep-quantized out"), "\(e)")
        }
        XCTAssertThrowsError(try loadModel(try fixture("gpt2-f16").path, keepQuantized: true)) { e in
            XCTAssertTrue("\(e)".contains("without mlx-lm quantized layers") && "\(e)".contains("--gguf-type q8_0"), "\(e)")
        }
    }

    /// A copy of the 4-bit LLaMA folder whose config.json has `edit` applied to its "quantization".
    private func editedQuantization(_ edit: (inout [String: Any]?) -> Void) throws -> String {
        let out = dir.appendingPathComponent(UUID().uuidString)
        try FileManager.default.copyItem(at: try fixture("llama-q4"), to: out)
        let configURL = out.appendingPathComponent("config.json")
        var config = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: configURL)) as? [String: Any])
        var q = config["quantization"] as? [String: Any]
        edit(&q)
        config["quantization"] = q
        try JSONSerialization.data(withJSONObject: config).write(to: configURL)
        return out.path
    }

    /// A folder with the 4-bit LLaMA's config and a model.safetensors of `tensors` (name, dtype, shape), zero-filled.
    private func folder(with tensors: [(String, String, [Int])]) throws -> String {
        let out = dir.appendingPathComponent(UUID().uuidString)
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: try fixture("llama-q4").appendingPathComponent("config.json"), to: out.appendingPathComponent("config.json"))
        var header: [String: Any] = [:], offset = 0
        for (name, dtype, shape) in tensors {
            let bytes = shape.reduce(1, *) * (dtype == "BF16" ? 2 : 4)
            header[name] = ["dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes]]
            offset += bytes
        }
        let json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        var data = Data(withUnsafeBytes(of: UInt64(json.count).littleEndian) { Array($0) })
        data += json + Data(count: offset)
        try data.write(to: out.appendingPathComponent("model.safetensors"))
        return out.path
    }

    func testWhatCannotBeReadIsRefusedByName() throws {
        let cases: [(String, String, [String])] = [
            (try editedQuantization { $0?["mode"] = "mxfp4" }, "mode mxfp4", ["mode \"mxfp4\"", "only mlx's \"affine\""]),
            (try editedQuantization { $0 = nil }, "no quantization entry", ["model.embed_tokens.weight", "no \"quantization\" entry"]),
            (try editedQuantization { $0?["bits"] = 7 }, "7 bits", ["\"bits\":7", "1, 2, 3, 4, 5, 6, 8"]),
            (try editedQuantization { $0?["bits"] = 8 }, "8 bits for 4", ["model.embed_tokens.scales", "8-bit, group size 32", "[61, 1]"]),
            (try editedQuantization { $0?["group_size"] = 64 }, "group 64 for 32", ["model.embed_tokens.scales", "group size 64", "[61, 1]"]),
            (try editedQuantization { $0?["model.layers.0.mlp.down_proj"] = ["group_size": 32, "bits": 2] }, "a per-layer entry",
             ["model.layers.0.mlp.down_proj.scales", "2-bit, group size 32", "[64, 8]"]),
            (try folder(with: [("model.embed_tokens.weight", "U32", [61, 8])]), "packed words without scales",
             ["model.embed_tokens.weight", "no model.embed_tokens.scales"]),
            (try folder(with: [("model.embed_tokens.weight", "U32", [61, 8]), ("model.embed_tokens.scales", "BF16", [61, 2])]),
             "scales without biases", ["model.embed_tokens.weight", "no model.embed_tokens.biases"]),
            (try folder(with: [("model.embed_tokens.weight", "F32", [61, 64]), ("model.embed_tokens.scales", "BF16", [61, 2]),
                               ("model.embed_tokens.biases", "BF16", [61, 2])]), "float weight with scales", ["F32 [61, 64]", "packed U32 words"]),
            (try folder(with: [("model.embed_tokens.weight", "U32", [0, 8]), ("model.embed_tokens.scales", "BF16", [0, 2]),
                               ("model.embed_tokens.biases", "BF16", [0, 2])]), "no rows", ["model.embed_tokens.weight", "a matrix with no values"]),
        ]
        for (path, what, expected) in cases {
            XCTAssertThrowsError(try loadModel(path), what) { error in
                let m = "\(error)"
                for part in expected { XCTAssertTrue(m.contains(part), "\(what): \(m) lacks \(part)") }
            }
        }
    }
}
