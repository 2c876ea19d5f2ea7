// mlx-lm adapter folders: adapters made as `mlx_lm.lora` makes them (Fixtures/mlx, from
// scripts/make_mlx_fixtures.py: LoRA on some modules of the last block, DoRA on every linear layer,
// LoRA on GPT-2) imported onto the PEFT fixtures' bases give mlx-lm's logits; ours exported and
// re-imported give identical logits; mlx-lm's own `load_adapters` loads our exported folders and gives
// our logits (needs the venv that scripts/make-venv makes); what either side cannot carry is refused by name.

import Foundation
import XCTest
import TestSupport
@testable import Formats
import TensorCore
import NN
import Models
import PEFT
@testable import Containers

private let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")
private let regenerate = "regenerate with `.venv/bin/python scripts/make_mlx_fixtures.py` from the package root"

final class MLXAdapterTests: XCTestCase {
    var dir: URL!

    override func setUp() {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("mlxadapter-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(at: dir) }

    private func base(_ family: String) throws -> CausalLM {
        try loadHFModel(fixtures.appendingPathComponent("peft/" + family).path).model
    }

    private func fixture(_ name: String) throws -> URL {
        let folder = fixtures.appendingPathComponent("mlx/" + name)
        guard FileManager.default.fileExists(atPath: folder.path) else { try skipUnlessRequired("fixture \(folder.path) is missing: \(regenerate)") }
        return folder
    }

    private func expected(_ name: String) throws -> (ids: [Int32], batch: Int, logits: [Float]) {
        let f = try SafetensorsFile(path: try fixture(name).appendingPathComponent("expected.safetensors").path)
        let ids = try f.tensor("input_ids")
        return (ids.toArray().map { Int32($0) }, ids.shape[0], try f.tensor("logits").toArray())
    }

    func testMLXAdaptersGiveMLXLogits() throws {
        for name in ["llama-lora", "llama-dora", "gpt2-lora"] {
            let folder = try fixture(name)
            XCTAssertEqual(try ModelSource.detect(folder.path).kind, .mlxAdapter, name)
            let model = try base(String(name.prefix { $0 != "-" }))
            let e = try expected(name)
            let before = withNoGrad { model.forward(e.ids, batch: e.batch) }.toArray()
            let lora = try XCTUnwrap(try loadAdapter(folder.path, onto: model) as? LoRA, name)
            let logits = withNoGrad { model.forward(e.ids, batch: e.batch) }.toArray()
            assertClose(logits, e.logits, rtol: 1e-4, atol: 1e-5, "\(name) imported vs mlx-lm", label: "[mlx]")
            XCTAssertGreaterThan(maxAbsDiff(before, logits), 1e-3, "\(name): the adapter changes the logits")
            XCTAssertEqual(lora.config.useDora, name == "llama-dora", name)
            XCTAssertNil(try adapterChatTemplate(folder.path), "an mlx-lm folder records no chat template")
            switch name {
            case "llama-lora":  // keys q, v, down of the last block only (num_layers 1)
                XCTAssertEqual(lora.layers.map(\.module).sorted(), ["model.layers.1.mlp.down_proj", "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"])
                XCTAssertEqual(Set(lora.layers.map(\.lora.scale)), [2.5])
            case "llama-dora": XCTAssertEqual(lora.layers.count, 14, "every linear layer of both blocks")
            default: XCTAssertEqual(Set(lora.layers.map(\.lora.scale)), [20])
            }
        }
    }

    /// An imported mlx-lm adapter exports as the same folder's tensors and config fields, and re-imports to identical logits.
    func testImportedAdaptersExportAsMLXWroteThem() throws {
        for name in ["llama-lora", "llama-dora", "gpt2-lora"] {
            let folder = try fixture(name)
            let family = String(name.prefix { $0 != "-" })
            let e = try expected(name)
            let model = try base(family)
            let method = try loadAdapter(folder.path, onto: model)
            let ours = withNoGrad { model.forward(e.ids, batch: e.batch) }.toArray()
            let out = dir.appendingPathComponent(name)
            let r = try exportMLXAdapter(method, base: model, baseName: "tiny-" + family, to: out)
            XCTAssertEqual(try ModelSource.detect(out.path).kind, .mlxAdapter)
            let (theirs, written) = (try SafetensorsFile(path: folder.appendingPathComponent(MLXAdapter.weightsFile).path),
                                     try SafetensorsFile(path: out.appendingPathComponent(MLXAdapter.weightsFile).path))
            XCTAssertEqual(written.names, theirs.names, name)
            for key in theirs.names {
                XCTAssertEqual(try written.tensor(key).shape, try theirs.tensor(key).shape, key)
                XCTAssertEqual(try written.tensor(key).toArray(), try theirs.tensor(key).toArray(), key)
            }
            func config(_ f: URL) throws -> [String: Any] {
                try JSONSerialization.jsonObject(with: Data(contentsOf: f.appendingPathComponent(MLXAdapter.configFile))) as! [String: Any]
            }
            let (a, b) = (try config(folder), try config(out))
            XCTAssertEqual(b["fine_tune_type"] as? String, a["fine_tune_type"] as? String, name)
            XCTAssertEqual(b["model"] as? String, "tiny-" + family)
            let (pa, pb) = (a["lora_parameters"] as! [String: Any], b["lora_parameters"] as! [String: Any])
            XCTAssertEqual(pb["rank"] as? Int, pa["rank"] as? Int, name)
            XCTAssertEqual(pb["scale"] as? Double, pa["scale"] as? Double, name)
            XCTAssertEqual(pb["dropout"] as? Double, pa["dropout"] as? Double, name)
            if let keys = pa["keys"] as? [String] { XCTAssertEqual(pb["keys"] as? [String], keys.sorted(), name) }
            // num_layers: the blocks adapted, counted (-1, "all", is the same on this 2-block base).
            XCTAssertEqual(b["num_layers"] as? Int, name == "llama-lora" ? 1 : 2, name)
            XCTAssertEqual(r.layers, name == "llama-lora" ? 1 : 2)
            let fresh = try base(family)
            try loadAdapter(out.path, onto: fresh)
            assertClose(withNoGrad { fresh.forward(e.ids, batch: e.batch) }.toArray(), ours, rtol: 0, atol: 0, "\(name) exported and imported", label: "[mlx]")
        }
    }

    /// Our adapters (random B, DoRA magnitudes moved off the base's norms), each with its logits.
    private func ours(_ family: String) throws -> [(name: String, make: () throws -> LoRA)] {
        let attention: [String] = family == "gpt2" ? ["c_attn"] : ["q_proj", "v_proj"]
        func lora(dora: Bool = false, rslora: Bool = false, alpha: Float = 8, dropout: Float = 0, targets: [String]? = nil, layers: [Int]? = nil) throws -> LoRA {
            var c = LoRAConfig(r: 4, loraAlpha: alpha, targetModules: .names(targets ?? attention))
            c.layersToTransform = layers
            c.initLoraWeights = .random
            c.useDora = dora
            c.useRslora = rslora
            c.loraDropout = dropout
            return try LoRA(config: c, seed: 7)
        }
        return [("lora", { try lora() }), ("dora", { try lora(dora: true) }), ("rslora", { try lora(rslora: true, alpha: 5) }),
                ("last-block", { try lora(dropout: 0.05, targets: ["all-linear"], layers: [1]) })]
    }

    private func attachOurs(_ family: String, _ make: () throws -> LoRA) throws -> (CausalLM, LoRA) {
        let model = try base(family)
        let lora = try make()
        try lora.attach(to: model)
        for (_, _, layer) in lora.layers {
            guard let m = layer.magnitude else { continue }
            m.assign(Tensor(shape: m.shape, data: m.toArray().enumerated().map { $1 * (1 + 0.1 * Float($0 % 5) - 0.2) }))
        }
        return (model, lora)
    }

    /// mlx-lm's `load_adapters` loads our exported folders onto its own build of the base and gives our
    /// logits. Needs .venv/bin/python (made by scripts/make-venv) or $SWIFTPEFT_PYTHON with mlx and mlx-lm.
    func testMLXLoadsOurExportedFolders() throws {
        let python = try referencePython(importing: ["mlx.core", "mlx_lm"])
        for family in ["llama", "gpt2"] {
            let e = try expected(family + "-lora")
            var folders: [URL] = [], logits: [[Float]] = []
            for (name, make) in try ours(family) {
                let (model, lora) = try attachOurs(family, make)
                logits.append(withNoGrad { model.forward(e.ids, batch: e.batch) }.toArray())
                folders.append(dir.appendingPathComponent("\(family)-\(name)"))
                try exportMLXAdapter(lora, base: model, to: folders.last!)
                let again = try base(family)
                try loadAdapter(folders.last!.path, onto: again)
                assertClose(withNoGrad { again.forward(e.ids, batch: e.batch) }.toArray(), logits.last!, rtol: 0, atol: 0, "\(family)-\(name) exported and imported", label: "[mlx]")
            }
            let rows = (0..<e.batch).map { b in e.ids[(b * e.ids.count / e.batch)..<((b + 1) * e.ids.count / e.batch)].map(Int.init) }
            let (status, stdout, stderr) = try runPython(python, [packageRoot().appendingPathComponent("scripts/mlx_adapter_logits.py").path,
                                                                  fixtures.appendingPathComponent("peft/" + family).path, "\(rows)"] + folders.map(\.path))
            guard status == 0 else { return XCTFail("\(family): mlx-lm could not load the folders: \(stderr)") }
            let results = try JSONSerialization.jsonObject(with: stdout) as! [[String: Any]]
            XCTAssertEqual(results.count, folders.count)
            for (folder, (mine, r)) in zip(folders, zip(logits, results)) {
                assertClose(mine, (r["logits"] as! [NSNumber]).map(\.floatValue), rtol: 1e-4, atol: 1e-5, "\(folder.lastPathComponent): mlx-lm on the folder", label: "[mlx]")
            }
        }
    }

    func testWhatMLXAdaptersCannotCarryIsRefused() throws {
        let out = dir.appendingPathComponent("out")
        func refused(_ family: String, _ make: () throws -> PEFTMethod, _ needle: String, file: StaticString = #filePath, line: UInt = #line) throws {
            let model = try base(family)
            let method = try make()
            try method.attach(to: model)
            XCTAssertThrowsError(try exportMLXAdapter(method, base: model, to: out), file: file, line: line) {
                XCTAssertTrue("\($0)".hasPrefix(out.path + ": not written: ") && "\($0)".contains(needle), "\($0)\nvs \(needle)", file: file, line: line)
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: out.path), "nothing written", file: file, line: line)
        }
        var ia3 = IA3Config()
        ia3.initIa3Weights = false
        try refused("llama", { try IA3(config: ia3, seed: 3) }, "the ia3 method has no mlx-lm form")
        try refused("llama", { try LoRA(config: LoRAConfig(r: 2, loraAlpha: 4, targetModules: .names(["lm_head"]))) }, "it adapts lm_head, outside the transformer blocks")
        try refused("llama", {
            var c = LoRAConfig(r: 2, loraAlpha: 4, targetModules: .names(["q_proj"]))
            c.layersToTransform = [0]
            return try LoRA(config: c)
        }, "it adapts blocks 0 of 0…1; mlx-lm adapts the last num_layers blocks")
        try refused("llama", {
            var c = LoRAConfig(r: 2, loraAlpha: 4, targetModules: .names(["q_proj", "v_proj"]))
            c.rankPattern = ["v_proj": 4]
            return try LoRA(config: c)
        }, "an mlx-lm adapter has one rank and one scale")
        try refused("llama", { try LoRA(config: LoRAConfig(r: 2, loraAlpha: 4, targetModules: .names(["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]))) },
                    "mlx-lm adapts the same modules in every block")
        try refused("gpt2", {
            var c = LoRAConfig(r: 2, loraAlpha: 4, targetModules: .names(["c_attn"]))
            c.bias = "all"
            return try LoRA(config: c)
        }, "the adapter trains biases (bias \"all\")")

        // Import: a config or tensors mlx-lm's `load_adapters` would not load either.
        let source = try fixture("llama-dora")
        func edited(_ name: String, config: ([String: Any]) -> [String: Any] = { $0 }, tensors: (inout [(String, Tensor)]) -> Void = { _ in }) throws -> URL {
            let folder = dir.appendingPathComponent(name)
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            let c = try JSONSerialization.jsonObject(with: Data(contentsOf: source.appendingPathComponent(MLXAdapter.configFile))) as! [String: Any]
            try JSONSerialization.data(withJSONObject: config(c)).write(to: folder.appendingPathComponent(MLXAdapter.configFile))
            let f = try SafetensorsFile(path: source.appendingPathComponent(MLXAdapter.weightsFile).path)
            var list = try f.names.map { ($0, try f.tensor($0)) }
            tensors(&list)
            try Safetensors.write(folder.appendingPathComponent(MLXAdapter.weightsFile).path, tensors: list)
            return folder
        }
        let cases: [(URL, String)] = [
            (try edited("full", config: { var c = $0; c["fine_tune_type"] = "full"; return c }), "adapter_config.json: fine_tune_type \"full\": the folder holds fully fine-tuned weights"),
            (try edited("alpha", config: { var c = $0; c["lora_parameters"] = ["rank": 2, "alpha": 16]; return c }), "lora_parameters.scale is missing or not a finite number (mlx-lm's config gives scale, not alpha)"),
            (try edited("one-layer", config: { var c = $0; c["num_layers"] = 1; return c }),
             "tensor 'model.layers.0.mlp.down_proj.lora_a' adapts model.layers.0.mlp.down_proj, which the config's num_layers 1 do not adapt on this base (2 blocks)"),
            (try edited("keys", config: { var c = $0; c["lora_parameters"] = ["rank": 2, "scale": 3, "keys": ["self_attn.q_proj"]]; return c }),
             "which the config's num_layers 2 and keys self_attn.q_proj do not adapt"),
            (try edited("no-m", tensors: { $0.removeAll { $0.0 == "model.layers.1.self_attn.o_proj.m" } }), "tensor 'model.layers.1.self_attn.o_proj.m' is missing"),
            (try edited("other", tensors: { $0.append(("model.layers.1.self_attn.o_proj.bias", Tensor(shape: [16], data: Array(repeating: 0, count: 16)))) }),
             "tensor 'model.layers.1.self_attn.o_proj.bias' is not an adapter tensor of a dora adapter"),
            (try edited("rank", config: { var c = $0; c["lora_parameters"] = ["rank": 3, "scale": 3]; return c }), "expected (in, 3) and (3, out), rank 3 from the config"),
        ]
        for (folder, needle) in cases {
            XCTAssertThrowsError(try loadAdapter(folder.path, onto: try base("llama"))) { XCTAssertTrue("\($0)".contains(needle), "\($0)\nvs \(needle)") }
        }
        // A GPT-2 adapter on a LLaMA base names the tensor it cannot place.
        XCTAssertThrowsError(try loadAdapter(try fixture("gpt2-lora").path, onto: try base("llama"))) {
            XCTAssertTrue("\($0)".contains("tensor 'model.h.0.attn.c_attn.lora_a' adapts model.h.0.attn.c_attn"), "\($0)")
        }
    }
}
