// Hugging Face PEFT adapter folders: PEFT-made adapters (Fixtures/peft, from scripts/make_peft_fixtures.py:
// LoRA, DoRA, IA3, prompt tuning, projected prefix tuning, P-Tuning on a GQA llama and on gpt2) imported
// onto the transformers base give PEFT's logits; our adapters exported and re-imported give identical
// logits; PEFT itself loads our exported folders and gives our logits (needs the venv that scripts/make-venv makes);
// and the errors name the folder, file and tensor.

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

private let peftFixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/peft")
private let regenerate = "regenerate with `.venv/bin/python scripts/make_peft_fixtures.py` from the package root"

final class PEFTFolderTests: XCTestCase {
    var dir: URL!

    override func setUp() {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("peftfolder-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(at: dir) }

    private func base(_ family: String) throws -> CausalLM {
        let folder = peftFixtures.appendingPathComponent(family)
        guard FileManager.default.fileExists(atPath: folder.path) else { try skipUnlessRequired("fixture \(folder.path) is missing: \(regenerate)") }
        return try loadHFModel(folder.path).model
    }

    private func expected(_ name: String) throws -> (ids: [Int32], batch: Int, logits: [Float]) {
        let f = try SafetensorsFile(path: peftFixtures.appendingPathComponent(name).appendingPathComponent("expected.safetensors").path)
        let ids = try f.tensor("input_ids")
        return (ids.toArray().map { Int32($0) }, ids.shape[0], try f.tensor("logits").toArray())
    }

    private let fixtures: [(name: String, type: String)] = [
        ("llama-lora", "LORA"), ("llama-dora", "LORA"), ("llama-ia3", "IA3"), ("llama-prompt", "PROMPT_TUNING"),
        ("llama-prefix", "PREFIX_TUNING"), ("llama-ptuning", "P_TUNING"), ("gpt2-lora", "LORA"), ("gpt2-ia3", "IA3"),
        ("gpt2-prefix", "PREFIX_TUNING"),
    ]

    func testPEFTAdaptersGivePEFTLogits() throws {
        for (name, type) in fixtures {
            let model = try base(String(name.prefix { $0 != "-" }))
            let e = try expected(name)
            let before = withNoGrad { model.forward(e.ids, batch: e.batch) }.toArray()
            let method = try importPEFTFolder(peftFixtures.appendingPathComponent(name), onto: model)
            XCTAssertEqual(Swift.type(of: method).peftType, type, name)
            let logits = withNoGrad { model.forward(e.ids, batch: e.batch) }.toArray()
            assertClose(logits, e.logits, rtol: 1e-4, atol: 1e-5, "\(name) imported vs PEFT", label: "[peft]")
            XCTAssertGreaterThan(maxAbsDiff(before, logits), 1e-3, "\(name): the adapter changes the logits")
            if name == "llama-dora" { XCTAssertTrue((method as? LoRA)?.config.useDora == true) }
            if name == "gpt2-lora" { XCTAssertTrue((method as? LoRA)?.layers.first?.linear.fanInFanOut == true) }
        }
    }

    /// Our adapters with random non-zero tensors, for a base of `family`.
    private func ourMethods(_ family: String) throws -> [(String, () throws -> PEFTMethod)] {
        let attention: [String] = family == "gpt2" ? ["c_attn"] : ["q_proj", "v_proj"]
        func lora(dora: Bool = false, rslora: Bool = false, bias: String = "none", targets: ModuleSelector? = nil,
                  layers: [Int]? = nil) throws -> PEFTMethod {
            var c = LoRAConfig(r: 4, loraAlpha: 8, targetModules: targets ?? .names(attention + (family == "gpt2" ? ["mlp.c_proj"] : ["down_proj"])))
            c.layersToTransform = layers
            c.initLoraWeights = .random
            c.useDora = dora
            c.useRslora = rslora
            c.bias = bias
            return try LoRA(config: c, seed: 11)
        }
        var ia3 = IA3Config()
        ia3.initIa3Weights = false
        return [
            ("lora", { try lora() }), ("dora", { try lora(dora: true) }), ("rslora", { try lora(rslora: true) }),
            // Trained biases (GPT-2's layers have them): an adapted layer's under PEFT's `base_layer.bias`.
            ("lora-bias-all", { try lora(bias: "all") }), ("lora-bias-lora-only", { try lora(bias: "lora_only") }),
            // PEFT expands only the string "all-linear", and refuses layers_to_transform beside a
            // regex: written as the string, and as the adapted modules' names.
            ("lora-all-linear", { try lora(targets: .names(["all-linear"])) }),
            ("lora-all-linear-layers", { try lora(targets: .names(["all-linear"]), layers: [1]) }),
            ("lora-regex-layers", { try lora(targets: .regex(".*\\.(" + attention.joined(separator: "|") + ")"), layers: [1]) }),
            ("ia3", { try IA3(config: ia3, seed: 3) }),
            ("prompt", { try PromptTuning(config: PromptTuningConfig(numVirtualTokens: 3), seed: 4) }),
            // A TEXT init without the tokenizer PEFT requires for it: written as RANDOM, which loads the same.
            ("prompt-text", { try PromptTuning(config: PromptTuningConfig(numVirtualTokens: 3, promptTuningInit: .text, promptTuningInitText: "ab"),
                                               seed: 4, initTokenIDs: [1, 2]) }),
            ("ptuning", { try PTuning(config: PTuningConfig(numVirtualTokens: 3, type: .mlp, encoderHiddenSize: 8), seed: 5) }),
            ("ptuning-lstm", { try PTuning(config: PTuningConfig(numVirtualTokens: 2, type: .lstm, encoderHiddenSize: 4), seed: 6) }),
            ("prefix", { try PrefixTuning(config: PrefixTuningConfig(numVirtualTokens: 3), seed: 7) }),
            ("prefix-proj", { try PrefixTuning(config: PrefixTuningConfig(numVirtualTokens: 2, prefixProjection: true, encoderHiddenSize: 8), seed: 8) }),
        ]
    }

    /// Attaches `make()` to a fresh `family` base, moves DoRA magnitudes off their init, exports it
    /// to `folder`; returns our logits for `ids`.
    private func exportOurs(_ family: String, _ make: () throws -> PEFTMethod, ids: [Int32], batch: Int, to folder: URL) throws -> [Float] {
        let model = try base(family)
        let method = try make()
        try method.attach(to: model)
        if let l = method as? LoRA {
            for (_, _, layer) in l.layers {
                guard let m = layer.magnitude else { continue }
                m.assign(Tensor(shape: m.shape, data: m.toArray().enumerated().map { $1 * (1 + 0.1 * Float($0 % 5) - 0.2) }))
            }
            for (_, t, _) in l.extraTrainable {  // trained biases: off the base's values, so a dropped one shows
                t.assign(Tensor(shape: t.shape, data: t.toArray().enumerated().map { $1 + 0.05 * Float($0 % 7 - 3) }))
            }
        }
        let logits = withNoGrad { model.forward(ids, batch: batch) }.toArray()
        try exportPEFTFolder(method, base: model, baseName: "tiny-\(family)", to: folder)
        return logits
    }

    func testExportThenImportGivesIdenticalLogits() throws {
        for family in ["llama", "gpt2"] {
            let e = try expected("\(family)-lora")
            for (name, make) in try ourMethods(family) {
                let folder = dir.appendingPathComponent("\(family)-\(name)")
                let ours = try exportOurs(family, make, ids: e.ids, batch: e.batch, to: folder)
                let config = try JSONSerialization.jsonObject(with: Data(contentsOf: folder.appendingPathComponent("adapter_config.json"))) as! [String: Any]
                XCTAssertEqual(config["task_type"] as? String, "CAUSAL_LM")
                XCTAssertEqual(config["base_model_name_or_path"] as? String, "tiny-\(family)")
                XCTAssertEqual(config["inference_mode"] as? Bool, true)
                if name == "prompt-text" { XCTAssertEqual(config["prompt_tuning_init"] as? String, "RANDOM") }
                if name == "lora-all-linear" { XCTAssertEqual(config["target_modules"] as? String, "all-linear") }
                if name == "lora-all-linear-layers" {
                    let names = config["target_modules"] as? [String] ?? []
                    XCTAssertEqual(names.count, family == "gpt2" ? 4 : 7, "every Linear of layer 1: \(names)")
                    XCTAssertTrue(names.allSatisfy { $0.contains(".1.") }, "\(names)")
                }
                if name == "lora-regex-layers" {
                    XCTAssertEqual(config["target_modules"] as? [String], family == "gpt2" ? ["transformer.h.1.attn.c_attn"]
                                   : ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"])
                    XCTAssertTrue(config["layers_to_transform"] == nil || config["layers_to_transform"] is NSNull, "\(config["layers_to_transform"] ?? "")")
                }
                if ["lora", "dora", "rslora"].contains(name) {
                    XCTAssertEqual(config["fan_in_fan_out"] as? Bool, family == "gpt2", "\(family)-\(name): fan_in_fan_out")
                    XCTAssertEqual(config["use_dora"] as? Bool, name == "dora")
                    XCTAssertEqual(config["use_rslora"] as? Bool, name == "rslora")
                    XCTAssertEqual(config["r"] as? Int, 4)
                }
                let file = try SafetensorsFile(path: folder.appendingPathComponent("adapter_model.safetensors").path)
                XCTAssertTrue(file.entries.values.allSatisfy { $0.dtype == .F32 })
                if name.hasPrefix("prompt") || name.hasPrefix("ptuning") || name.hasPrefix("prefix") {
                    XCTAssertEqual(file.names, ["prompt_embeddings"], "\(family)-\(name)")
                    XCTAssertEqual(config["num_transformer_submodules"] as? Int, 1)
                    XCTAssertNotNil(config["token_dim"] as? Int)
                } else {
                    XCTAssertTrue(file.names.allSatisfy { $0.hasPrefix("base_model.model.") }, "\(family)-\(name): \(file.names)")
                }
                if name == "dora" { XCTAssertTrue(file.names.contains { $0.hasSuffix(".lora_magnitude_vector") }) }
                if name == "lora" {
                    let a = file.entries.first { $0.key.hasSuffix("lora_A.weight") }!.value.shape
                    XCTAssertEqual(a[0], 4, "lora_A is [r, in]")
                }
                let fresh = try base(family)
                try importPEFTFolder(folder, onto: fresh)
                let back = withNoGrad { fresh.forward(e.ids, batch: e.batch) }.toArray()
                assertClose(back, ours, rtol: 0, atol: 1e-6, "\(family)-\(name) exported and re-imported", label: "[peft]")
            }
        }
    }

    /// PEFT (`PeftModel.from_pretrained`) loads our exported folders and gives our logits. Needs
    /// .venv/bin/python (made by scripts/make-venv) or $SWIFTPEFT_PYTHON with torch, transformers and peft.
    func testPEFTLoadsOurExportedFolders() throws {
        let python = try referencePython(importing: ["torch", "transformers", "peft"])
        for family in ["llama", "gpt2"] {
            let e = try expected("\(family)-lora")
            var folders: [URL] = [], logits: [[Float]] = []
            for (name, make) in try ourMethods(family) {
                folders.append(dir.appendingPathComponent("py-\(family)-\(name)"))
                logits.append(try exportOurs(family, make, ids: e.ids, batch: e.batch, to: folders.last!))
            }
            try assertPEFTGives(logits, family: family, folders: folders, ids: e.ids, batch: e.batch, python: python)
        }
    }

    /// Runs scripts/peft_folder_logits.py: PEFT loads each folder onto the `family` base, and its
    /// logits for `ids` must be `logits`.
    private func assertPEFTGives(_ logits: [[Float]], family: String, folders: [URL], ids: [Int32], batch: Int, python: String) throws {
        let rows = (0..<batch).map { b in ids[(b * ids.count / batch)..<((b + 1) * ids.count / batch)].map(Int.init) }
        let (status, stdout, stderr) = try runPython(python, [packageRoot().appendingPathComponent("scripts/peft_folder_logits.py").path,
                                                              peftFixtures.appendingPathComponent(family).path, "\(rows)"] + folders.map(\.path))
        guard status == 0 else { return XCTFail("\(family): PEFT could not load the folders: \(stderr)") }
        let results = try JSONSerialization.jsonObject(with: stdout) as! [[String: Any]]
        XCTAssertEqual(results.count, folders.count)
        for (folder, (ours, r)) in zip(folders, zip(logits, results)) {
            assertClose(ours, (r["logits"] as! [NSNumber]).map(\.floatValue), rtol: 1e-4, atol: 1e-5, "\(folder.lastPathComponent): PEFT on the folder", label: "[peft]")
        }
    }

    func testJSONObjectKeyOrderFollowsTheText() {
        let text = #"""
            { "b": {"z\"q": [1, {"in": 2}], "a": {"x": 1}, "\u00e9": null, "m": -1.5e3},
              "a": [ {"no": 1} ], "c": "{\"not\": 1}", "d": {}, "b2": true, "e": {"y": 1}, "e": {"k2": 1, "k1": 2} }
            """#
        let order = jsonObjectKeyOrder(Data(text.utf8))
        XCTAssertEqual(order["b"], ["z\"q", "a", "é", "m"])
        XCTAssertEqual(order["d"], [])
        XCTAssertEqual(order["e"], ["k2", "k1"], "a field given twice: its last value")
        XCTAssertEqual(Set(order.keys), ["b", "d", "e"], "only object-valued fields")
        XCTAssertEqual(jsonObjectKeyOrder(Data("[1]".utf8)).count, 0)
    }

    /// PEFT reads `alpha_pattern` (and `rank_pattern`) keys in its file's order: the first key that
    /// matches a module gives its value. A folder whose keys overlap imports with PEFT's values in
    /// either order, gives PEFT's logits, and exports as one exact key per module, which PEFT and
    /// this library read the same.
    func testOverlappingPatternKeysTakeTheFirstInTheFile() throws {
        let e = try expected("llama-lora")
        let source = dir.appendingPathComponent("source")
        _ = try exportOurs("llama", {
            var c = LoRAConfig(r: 4, loraAlpha: 8, targetModules: .names(["q_proj", "v_proj"]))
            c.initLoraWeights = .random
            return try LoRA(config: c, seed: 11)
        }, ids: e.ids, batch: e.batch, to: source)
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: source.appendingPathComponent("adapter_config.json"))) as! [String: Any]
        config["alpha_pattern"] = nil
        let rest = String(decoding: try JSONSerialization.data(withJSONObject: config, options: [.sortedKeys]), as: UTF8.self)
        var folders: [URL] = [], logits: [[Float]] = []
        // (written pattern, alpha of layer 0's q_proj, of layer 1's)
        for (name, pattern, alpha0, alpha1) in [("general-first", #"{"q_proj": 32, "layers.0.self_attn.q_proj": 4}"#, 32, 32),
                                                ("specific-first", #"{"layers\\.0\\.self_attn\\.q_proj": 4, "q_proj": 32}"#, 4, 32)] {
            let folder = dir.appendingPathComponent(name)
            try FileManager.default.copyItem(at: source, to: folder)
            try Data(("{\"alpha_pattern\": " + pattern + ", " + rest.dropFirst()).utf8).write(to: folder.appendingPathComponent("adapter_config.json"))
            let model = try base("llama")
            let lora = try XCTUnwrap(try importPEFTFolder(folder, onto: model) as? LoRA)
            let scale = Dictionary(uniqueKeysWithValues: lora.layers.map { ($0.module, $0.lora.scale) })
            XCTAssertEqual(scale["model.layers.0.self_attn.q_proj"], Float(alpha0) / 4, name)
            XCTAssertEqual(scale["model.layers.1.self_attn.q_proj"], Float(alpha1) / 4, name)
            XCTAssertEqual(scale["model.layers.0.self_attn.v_proj"], 8 / 4, name)
            let ours = withNoGrad { model.forward(e.ids, batch: e.batch) }.toArray()
            let again = dir.appendingPathComponent(name + "-exported")
            try exportPEFTFolder(lora, base: model, baseName: "tiny-llama", to: again)
            let written = try JSONSerialization.jsonObject(with: Data(contentsOf: again.appendingPathComponent("adapter_config.json"))) as! [String: Any]
            XCTAssertEqual((written["alpha_pattern"] as? [String: Any])?.keys.sorted(),
                           ["model\\.layers\\.0\\.self_attn\\.q_proj", "model\\.layers\\.1\\.self_attn\\.q_proj"], name)
            let fresh = try base("llama")
            try importPEFTFolder(again, onto: fresh)
            assertClose(withNoGrad { fresh.forward(e.ids, batch: e.batch) }.toArray(), ours, rtol: 0, atol: 0, "\(name) exported and imported", label: "[peft]")
            folders += [folder, again]
            logits += [ours, ours]
        }
        XCTAssertTrue(logits[0] != logits[2], "the two orders give different adapters")
        try assertPEFTGives(logits, family: "llama", folders: folders, ids: e.ids, batch: e.batch,
                            python: try referencePython(importing: ["torch", "transformers", "peft"]))
    }

    /// GPT-2 biases of adapted layers are saved as PEFT keys them (`c_attn.base_layer.bias`); a
    /// folder from before, with `c_attn.bias`, still loads the same.
    func testTrainedBiasesUsePEFTKeysAndOlderKeysStillLoad() throws {
        let e = try expected("gpt2-lora")
        let (_, make) = try XCTUnwrap(try ourMethods("gpt2").first { $0.0 == "lora-bias-all" })
        let folder = dir.appendingPathComponent("gpt2-bias")
        let ours = try exportOurs("gpt2", make, ids: e.ids, batch: e.batch, to: folder)
        let weights = folder.appendingPathComponent(PEFTFolder.weightsFile).path
        let names = try SafetensorsFile(path: weights).names
        XCTAssertTrue(names.contains("base_model.model.transformer.h.0.attn.c_attn.base_layer.bias"), "\(names)")
        XCTAssertTrue(names.contains("base_model.model.transformer.h.0.attn.c_proj.bias"), "not adapted: its own key; \(names)")
        XCTAssertFalse(names.contains("base_model.model.transformer.h.0.attn.c_attn.bias"), "\(names)")
        let older = try Safetensors.read(weights).tensors.map { ($0.key.replacingOccurrences(of: ".base_layer.bias", with: ".bias"), $0.value) }
        try Safetensors.write(weights, tensors: older)
        let fresh = try base("gpt2")
        try importPEFTFolder(folder, onto: fresh)
        assertClose(withNoGrad { fresh.forward(e.ids, batch: e.batch) }.toArray(), ours, rtol: 0, atol: 1e-6, "older bias keys", label: "[peft]")
    }

    /// A tiny LLaMA base with a random LoRA on q_proj attached.
    private func tinyLoRA() throws -> (CausalLM, LoRA) {
        let model = makeModel(.llama(vocabSize: 17, hiddenSize: 8, numLayers: 1, numHeads: 2, numKVHeads: 1, intermediateSize: 12), seed: 1)
        var c = LoRAConfig(r: 2, loraAlpha: 4, targetModules: .names(["q_proj"]))
        c.initLoraWeights = .random
        let lora = try LoRA(config: c)
        try lora.attach(to: model)
        return (model, lora)
    }

    /// The folder appears whole or not at all: a second export replaces it without leftovers, a
    /// user's own file in it is kept, and a failing write leaves the previous pair as it was.
    func testExportReplacesTheFolderWhole() throws {
        let (model, lora) = try tinyLoRA()
        let out = dir.appendingPathComponent("nested/peft")
        try exportPEFTFolder(lora, base: model, baseName: nil, to: out)  // parent folders are created
        let first = try Data(contentsOf: out.appendingPathComponent(PEFTFolder.weightsFile))
        try exportPEFTFolder(lora, base: model, baseName: nil, to: out)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out.path).sorted(), [PEFTFolder.configFile, PEFTFolder.weightsFile])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out.deletingLastPathComponent().path), ["peft"], "no temporary left")
        try "mine".write(to: out.appendingPathComponent("README.md"), atomically: true, encoding: .utf8)
        let inode = { (url: URL) in try FileManager.default.attributesOfItem(atPath: url.path)[.systemFileNumber] as? Int }
        let (folderBefore, readmeBefore) = (try inode(out), try inode(out.appendingPathComponent("README.md")))
        try exportPEFTFolder(lora, base: model, baseName: nil, to: out)
        XCTAssertEqual(try String(contentsOf: out.appendingPathComponent("README.md"), encoding: .utf8), "mine", "the user's file stays")
        XCTAssertEqual(try inode(out.appendingPathComponent("README.md")), readmeBefore, "the same file, linked into the new folder")
        let probe = (dir.appendingPathComponent("probe-a"), dir.appendingPathComponent("probe-b"))
        try FileManager.default.createDirectory(at: probe.0, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: probe.1, withIntermediateDirectories: true)
        if exchangePaths(probe.0.path, probe.1.path) {  // where the file system can swap folders
            XCTAssertNotEqual(try inode(out), folderBefore, "the folder was swapped whole, not filled file by file")
        } else {
            print("NOTE: this file system cannot swap folders (RENAME_EXCHANGE); the file-by-file fallback was used")
        }
        try FileManager.default.removeItem(at: probe.0)
        try FileManager.default.removeItem(at: probe.1)
        XCTAssertEqual(try Data(contentsOf: out.appendingPathComponent(PEFTFolder.weightsFile)), first)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out.deletingLastPathComponent().path), ["peft"], "the old folder is gone")
        // A folder of the user's inside cannot be linked: the files are replaced one by one, and it stays.
        try FileManager.default.createDirectory(at: out.appendingPathComponent("runs"), withIntermediateDirectories: false)
        try exportPEFTFolder(lora, base: model, baseName: nil, to: out)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out.path).sorted(),
                       ["README.md", PEFTFolder.configFile, PEFTFolder.weightsFile, "runs"].sorted())
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out.deletingLastPathComponent().path), ["peft"], "no temporary left")
        // A write that fails midway (here: the folder's parent is a file) leaves nothing half-written.
        let blocked = dir.appendingPathComponent("file")
        try Data().write(to: blocked)
        XCTAssertThrowsError(try exportPEFTFolder(lora, base: model, baseName: nil, to: blocked.appendingPathComponent("peft")))
        XCTAssertEqual(try Data(contentsOf: out.appendingPathComponent(PEFTFolder.weightsFile)), first, "the previous export is intact")
        // An output path that links to the folder stays a link; the folder it names is written.
        let link = dir.appendingPathComponent("link")
        try FileManager.default.createSymbolicLink(at: link, withDestinationURL: out)
        try exportPEFTFolder(lora, base: model, baseName: nil, to: link)
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: link.path), out.path, "the link stays a link")
        XCTAssertEqual(try Data(contentsOf: out.appendingPathComponent(PEFTFolder.weightsFile)), first)
    }

    /// An adapter keeps the chat template it was trained with: a SwiftPEFT file holds it beside its
    /// tensors (and still loads), a PEFT folder as chat_template.jinja (removed when a later export
    /// has none) or in a tokenizer_config.json saved beside it (TRL's way). `useChatTemplate` takes a
    /// given file over it, and it over the base's own; a recorded copy of the base's own counts as
    /// none; adapters that record different templates are refused, naming them.
    func testAnAdapterRecordsItsChatTemplate() throws {
        let (model, lora) = try tinyLoRA()
        let own = "{% for m in messages %}{{ m.content }}{% endfor %}"
        let trained = "{% for m in messages %}{{ m.role + ': ' + m.content + '\\n' }}{% endfor %}"
        let withIt = dir.appendingPathComponent("with.h5").path, without = dir.appendingPathComponent("without.h5").path
        try AdapterCheckpoint.save(lora, base: model, chatTemplate: trained, to: withIt)
        try AdapterCheckpoint.save(lora, base: model, to: without)
        XCTAssertEqual(try adapterChatTemplate(withIt), trained)
        XCTAssertNil(try adapterChatTemplate(without))
        let other = makeModel(.llama(vocabSize: 17, hiddenSize: 8, numLayers: 1, numHeads: 2, numKVHeads: 1, intermediateSize: 12), seed: 1)
        XCTAssertEqual(try AdapterCheckpoint.load(withIt, onto: other).trainableCount, lora.trainableCount, "the template is not a tensor of the adapter")
        // PEFT folders.
        let folder = dir.appendingPathComponent("peft")
        try exportPEFTFolder(lora, base: model, baseName: nil, chatTemplate: trained, to: folder)
        XCTAssertEqual(try String(contentsOf: folder.appendingPathComponent(PEFTFolder.chatTemplateFile), encoding: .utf8), trained)
        XCTAssertEqual(try adapterChatTemplate(folder.path), trained)
        try exportPEFTFolder(lora, base: model, baseName: nil, to: folder)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder.path).sorted(), [PEFTFolder.configFile, PEFTFolder.weightsFile],
                       "an export without a template leaves no older one behind")
        XCTAssertNil(try adapterChatTemplate(folder.path))
        try FileManager.default.createDirectory(at: folder.appendingPathComponent(".git"), withIntermediateDirectories: false)
        try exportPEFTFolder(lora, base: model, baseName: nil, chatTemplate: trained, to: folder)  // file by file: a folder of the user's inside
        XCTAssertEqual(try adapterChatTemplate(folder.path), trained)
        try exportPEFTFolder(lora, base: model, baseName: nil, to: folder)
        XCTAssertNil(try adapterChatTemplate(folder.path), "file by file too")
        let config = folder.appendingPathComponent("tokenizer_config.json")
        try Data(#"{"model_max_length": 64}"#.utf8).write(to: config)
        XCTAssertNil(try adapterChatTemplate(folder.path), "a tokenizer saved without a template")
        try JSONSerialization.data(withJSONObject: ["chat_template": NSNull()]).write(to: config)
        XCTAssertNil(try adapterChatTemplate(folder.path), "a null template is none")
        try JSONSerialization.data(withJSONObject: ["chat_template": [["name": "tool_use", "template": trained]]]).write(to: config)
        XCTAssertNil(try adapterChatTemplate(folder.path), "a list without a default is none")
        try JSONSerialization.data(withJSONObject: ["chat_template": "{% for m in messages %}"]).write(to: config)
        XCTAssertThrowsError(try adapterChatTemplate(folder.path)) { e in
            XCTAssertTrue("\(e)".contains(config.path) && "\(e)".contains("--chat-template"), "\(e)")
        }
        XCTAssertEqual(try adapterChatTemplate(folder.path, readable: false), "{% for m in messages %}", "a copy takes it as it is")
        try JSONSerialization.data(withJSONObject: ["chat_template": trained]).write(to: config)
        XCTAssertEqual(try adapterChatTemplate(folder.path), trained, "TRL saves the tokenizer beside the adapter")
        // Which template is used.
        let tok = try BPETokenizer.train(corpus: String(repeating: "the cat sat on the mat. ", count: 30), vocabSize: 280, specialTokens: ["<|endoftext|>"])
        func used(file: String? = nil, _ adapters: [String]) throws -> String? {
            let t = tok.withChatTemplate(own)
            try useChatTemplate(file: file, adapters: adapters, on: t)
            return t.chatTemplate
        }
        XCTAssertEqual(try used([withIt]), trained)
        XCTAssertEqual(try used([without]), own)
        XCTAssertEqual(try used([withIt, folder.path]), trained, "the same template recorded twice")
        let given = dir.appendingPathComponent("given.jinja").path
        try "{{ messages[0].content }}".write(toFile: given, atomically: true, encoding: .utf8)
        XCTAssertEqual(try used(file: given, [withIt, without]), "{{ messages[0].content }}", "a given file overrides what adapters record")
        let ownRecorded = dir.appendingPathComponent("own.h5").path
        try AdapterCheckpoint.save(lora, base: model, chatTemplate: own, to: ownRecorded)
        XCTAssertEqual(try used([ownRecorded, without]), own, "a recorded copy of the base's own is the base's own")
        XCTAssertThrowsError(try used([withIt, without])) { e in
            let m = "\(e)"
            XCTAssertTrue(m.contains(withIt) && m.contains(without) && m.contains("different chat templates") && m.contains("--chat-template"), m)
        }
        XCTAssertEqual(tok.withChatTemplate(trained).encode("the cat"), tok.encode("the cat"), "a copy with another template tokenizes as the original")
        XCTAssertNil(tok.chatTemplate, "the original keeps its own")
        // A damaged record is named.
        let broken = dir.appendingPathComponent("broken.h5").path
        try AdapterCheckpoint.save(lora, base: model, chatTemplate: "{% for m in messages %}", to: broken)
        XCTAssertThrowsError(try adapterChatTemplate(broken)) { e in
            XCTAssertTrue("\(e)".contains(broken) && "\(e)".contains("chat template"), "\(e)")
        }
    }

    func testAdapterNameInKeysIsAccepted() throws {
        let src = peftFixtures.appendingPathComponent("llama-dora")
        let folder = dir.appendingPathComponent("with-default")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: src.appendingPathComponent("adapter_config.json"), to: folder.appendingPathComponent("adapter_config.json"))
        let tensors = try Safetensors.read(src.appendingPathComponent("adapter_model.safetensors").path).tensors.map { k, t in
            (k.replacingOccurrences(of: ".lora_A.", with: ".lora_A.default.").replacingOccurrences(of: ".lora_B.", with: ".lora_B.default.")
                .replacingOccurrences(of: "lora_magnitude_vector", with: "lora_magnitude_vector.default.weight"), t)
        }
        XCTAssertTrue(tensors.contains { $0.0.hasSuffix("lora_A.default.weight") })
        try Safetensors.write(folder.appendingPathComponent("adapter_model.safetensors").path, tensors: tensors)
        let e = try expected("llama-dora")
        let model = try base("llama")
        try importPEFTFolder(folder, onto: model)
        assertClose(withNoGrad { model.forward(e.ids, batch: e.batch) }.toArray(), e.logits, rtol: 1e-4, atol: 1e-5, "llama-dora with .default keys", label: "[peft]")
        XCTAssertEqual(PEFTFolder.normalizedKey("base_model.model.x.ia3_l.default"), "base_model.model.x.ia3_l")
    }

    private func expectError(_ body: () throws -> Void, _ fragments: [String], line: UInt = #line) {
        do {
            try body()
            XCTFail("expected an error containing \(fragments)", line: line)
        } catch {
            let text = "\(error)"
            for f in fragments where !text.contains(f) { XCTFail("error \"\(text)\" lacks \"\(f)\"", line: line) }
        }
    }

    func testErrorsNameFolderFileAndTensor() throws {
        let model = try base("llama")
        // Bottleneck adapters have no PEFT type.
        let bottleneck = try PEFTRegistry.make("adapter", config: Data(#"{"architecture":"houlsby","reduction_factor":4}"#.utf8))
        try bottleneck.attach(to: model)
        let out = dir.appendingPathComponent("bottleneck")
        expectError({ try exportPEFTFolder(bottleneck, base: model, baseName: nil, to: out) }, [out.path, "no Hugging Face PEFT format"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: out.path))
        bottleneck.detach(from: model)

        let fresh = try base("llama")
        let noConfig = dir.appendingPathComponent("empty")
        try FileManager.default.createDirectory(at: noConfig, withIntermediateDirectories: true)
        expectError({ try importPEFTFolder(noConfig, onto: fresh) }, [noConfig.path, "adapter_config.json"])

        // A pickle-only folder.
        let pickle = dir.appendingPathComponent("pickle")
        try FileManager.default.createDirectory(at: pickle, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: peftFixtures.appendingPathComponent("llama-lora/adapter_config.json"),
                                         to: pickle.appendingPathComponent("adapter_config.json"))
        try Data([0x80, 0x02]).write(to: pickle.appendingPathComponent("adapter_model.bin"))
        expectError({ try importPEFTFolder(pickle, onto: fresh) }, ["adapter_model.bin", "not supported", "convert it to safetensors"])

        // An unsupported peft_type.
        let loha = dir.appendingPathComponent("loha")
        try FileManager.default.createDirectory(at: loha, withIntermediateDirectories: true)
        try Data(#"{"peft_type": "LOHA", "task_type": "CAUSAL_LM"}"#.utf8).write(to: loha.appendingPathComponent("adapter_config.json"))
        expectError({ try importPEFTFolder(loha, onto: fresh) }, [loha.path + "/adapter_config.json", "LOHA", "not supported"])

        // Adapters for a base that PiSSA / OLoRA / CorDA / LoftQ / LoRA-GA rewrote, and aLoRA: refused, not loaded wrong.
        let lora = peftFixtures.appendingPathComponent("llama-lora")
        var loraConfig = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: lora.appendingPathComponent("adapter_config.json"))) as? [String: Any])
        for (key, value, needle) in [("init_lora_weights", "pissa_niter_4" as Any, "path_initial_model_for_weight_conversion"),
                                     ("init_lora_weights", "olora", "rewrites"), ("init_lora_weights", "lora_ga", "lora_ga"),
                                     ("alora_invocation_tokens", [3, 4], "aLoRA")] {
            let folder = dir.appendingPathComponent("refused-\(needle)")
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            var c = loraConfig
            c[key] = value
            try JSONSerialization.data(withJSONObject: c).write(to: folder.appendingPathComponent("adapter_config.json"))
            try FileManager.default.copyItem(at: lora.appendingPathComponent("adapter_model.safetensors"), to: folder.appendingPathComponent("adapter_model.safetensors"))
            expectError({ try importPEFTFolder(folder, onto: fresh) }, [folder.path, key, needle])
        }
        loraConfig["init_lora_weights"] = "gaussian"  // only the first values differ: loads
        let gaussian = dir.appendingPathComponent("gaussian")
        try FileManager.default.createDirectory(at: gaussian, withIntermediateDirectories: true)
        try JSONSerialization.data(withJSONObject: loraConfig).write(to: gaussian.appendingPathComponent("adapter_config.json"))
        try FileManager.default.copyItem(at: lora.appendingPathComponent("adapter_model.safetensors"), to: gaussian.appendingPathComponent("adapter_model.safetensors"))
        try importPEFTFolder(gaussian, onto: fresh).detach(from: fresh)

        // A missing tensor and a misshapen one: the file and tensor are named; nothing stays attached.
        let src = peftFixtures.appendingPathComponent("llama-lora")
        var tensors = try Safetensors.read(src.appendingPathComponent("adapter_model.safetensors").path).tensors
        let key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
        let removed = tensors.removeValue(forKey: key)!
        let broken = dir.appendingPathComponent("broken")
        try FileManager.default.createDirectory(at: broken, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: src.appendingPathComponent("adapter_config.json"), to: broken.appendingPathComponent("adapter_config.json"))
        let weights = broken.appendingPathComponent("adapter_model.safetensors")
        try Safetensors.write(weights.path, tensors: tensors.map { ($0.key, $0.value) })
        expectError({ try importPEFTFolder(broken, onto: fresh) }, [weights.path, key, "missing"])
        tensors[key] = Tensor.zeros([removed.shape[0] + 1, removed.shape[1]])
        try Safetensors.write(weights.path, tensors: tensors.map { ($0.key, $0.value) })
        expectError({ try importPEFTFolder(broken, onto: fresh) }, [weights.path, key, "shape"])
        // An extra tensor the config does not explain.
        tensors[key] = removed
        tensors["base_model.model.model.embed_tokens.lora_embedding_A"] = Tensor.zeros([4, 61])
        try Safetensors.write(weights.path, tensors: tensors.map { ($0.key, $0.value) })
        expectError({ try importPEFTFolder(broken, onto: fresh) }, [weights.path, "lora_embedding_A", "not used"])
        XCTAssertTrue(fresh.namedModules().compactMap { ($0.1 as? Linear)?.hooks.isEmpty }.allSatisfy { $0 }, "failed imports detach")
    }
}
