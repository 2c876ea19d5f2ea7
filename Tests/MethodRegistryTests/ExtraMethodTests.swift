// A PEFT method defined only here, registered at run time, goes through every generic path: the
// CLI's option parsing and help, training, saving, reloading, merging and the PEFT folder export
// and import. If any of them switched on method names or types, this method would not get through.
import Foundation
import XCTest
import SwiftPEFT
import TestSupport
@testable import swiftpeft

/// `scale_init` and the targets, with PEFT-style field names; defaults stated once.
struct ScaleConfig: PEFTConfig, Equatable {
    var peftType = OutputScale.peftType
    var targetModules: ModuleSelector = .names(["o_proj"])
    var scaleInit: Float = 0
    init() {}
    enum CodingKeys: String, CodingKey { case peftType = "peft_type", targetModules = "target_modules", scaleInit = "scale_init" }
}

/// y ← (1 + s) · y with one trainable scalar s per target layer; merges as W ← (1 + s) W, b ← (1 + s) b.
final class ScaleHook: FoldableLinearHook {
    let s: Tensor
    var saved: (Tensor, Tensor?)?
    /// A deliberately wrong merge (W ← (1 + 2s) W), for the test that merge refuses to write it.
    var wrongMerge = false
    init(_ value: Float) {
        s = Tensor.full([1], value)
        s.requiresGrad = true
    }
    var isMerged: Bool { saved != nil }
    func input(_ x: Tensor, layer: Linear) -> Tensor { x }
    func output(_ y: Tensor, input x: Tensor, layer: Linear) -> Tensor { isMerged ? y : y + y * s }  // (…, out) · (1)
    func merge(into linear: Linear) {
        withNoGrad {
            let f = s.detached() * (wrongMerge ? 2 : 1) + 1
            saved = (linear.weight.copy(), linear.bias?.copy())
            linear.weight.assign(linear.weight.detached() * f)
            if let b = linear.bias { b.assign(b.detached() * f) }
        }
    }
    func unmerge(from linear: Linear) {
        guard let (w, b) = saved else { return }
        linear.weight.assign(w)
        if let b { linear.bias?.assign(b) }
        saved = nil
    }
}

class OutputScale: LinearHookMethod<ScaleHook>, MergeablePEFTMethod {
    class var peftType: String { "TEST_SCALE" }
    static let registration = MethodDescription(
        OutputScale.self, config: ScaleConfig.self, names: [("scale", [:])], summary: "test method: scales Linear outputs",
        options: [MethodOption("scale-init", field: "scale_init", .float, help: "initial s")],
        modelDefaults: { ["target_modules": $0.family == .gpt2 ? ["c_proj"] : ["o_proj"]] },
        peftFolder: PEFTFolderMapping(), build: { c, name, _ in OutputScale(config: c, name: name) })

    let config: ScaleConfig
    var isEnabled = true
    var wrongMerge = false
    init(config: ScaleConfig, name: String) {
        self.config = config
        super.init(name: name)
    }
    func configJSON() throws -> Data { try JSONEncoder().encode(config) }
    func attach(to model: CausalLM) throws -> [String] {
        try checkDetached("Scale")
        let targets = try selectModules(model, of: Linear.self, targets: config.targetModules, method: "Scale")
        return install(on: model, targets: targets, extra: []) { _, _ in
            let h = ScaleHook(config.scaleInit)
            h.wrongMerge = wrongMerge
            return h
        }
    }
    func adapterParameters() -> [(String, Tensor)] { hooked.map { ("base_model.model.\($0.module).scale", $0.hook.s) } }
    var expectedTrainableCount: Int { hooked.count }
}

/// OutputScale with a merge that does not match its forward.
final class BadScale: OutputScale {
    override class var peftType: String { "TEST_BADSCALE" }
    override init(config: ScaleConfig, name: String) {
        super.init(config: config, name: name)
        wrongMerge = true
    }
}

final class ExtraMethodTests: XCTestCase {
    func testAMethodFromOutsideTheLibraryTrainsSavesReloadsMergesAndExports() throws {
        if PEFTRegistry.method(named: "scale") == nil { try PEFTRegistry.register(OutputScale.registration) }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("swiftpeft-registry-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let text = (0..<200).map { "The cat \(["eats", "sees", "likes"][$0 % 3]) the fish number \($0 % 9)." }.joined(separator: "\n")
        let data = dir.appendingPathComponent("data.txt").path
        try text.write(toFile: data, atomically: true, encoding: .utf8)
        let tokenizer = try trainBaseTokenizer([text], vocabSize: 300)
        let config = ModelConfig.llama(vocabSize: tokenizer.vocabSize, hiddenSize: 32, numLayers: 2, numHeads: 4, numKVHeads: 2,
                                       intermediateSize: 64, tieWordEmbeddings: true, maxPositions: 64)
        let base = dir.appendingPathComponent("base.h5").path
        try ModelCheckpoint.save(makeModel(config, seed: 3), tokenizerJSON: tokenizer.tokenizerJSON(), to: base)

        // The CLI's code: help lists the method and its option; its flag parses; train runs it.
        XCTAssertTrue(methodOptionsHelp.contains("--scale-init <float>: initial s (scale; default 0)"), methodOptionsHelp)
        XCTAssertTrue(methodOptionsHelp.contains("scale: test method"), methodOptionsHelp)
        XCTAssertEqual(try parseMethodArguments(["--scale-init", "0.25"])["scale-init"] as? Double, 0.25)
        XCTAssertTrue(trainableMethodNames.contains("scale"))
        let out = dir.appendingPathComponent("run").path
        let train = try Train.parse(["--model", base, "--data", data, "--method", "scale", "--scale-init", "0.25", "--steps", "3",
                                     "--seq-len", "16", "--batch-size", "2", "--lr", "0.05", "--out", out])
        try train.run()

        // Saved and reloaded through the generic adapter paths.
        let adapterPath = out + "/adapter.h5"
        let loaded = try loadModel(base)
        let method = try XCTUnwrap(try loadAdapter(adapterPath, onto: loaded.model) as? OutputScale)
        XCTAssertEqual(method.hooked.count, 2, "o_proj in each of the 2 layers")
        XCTAssertEqual(method.config.scaleInit, 0.25, "the option reached the config")
        let s = method.hooked[0].hook.s.toArray()[0]
        XCTAssertNotEqual(s, 0.25, "three steps changed s")
        let ids: [Int32] = [1, 2, 3, 4, 5]
        let adapted = withNoGrad { loaded.model.forward(ids, batch: 1) }.toArray()
        let plain = withNoGrad { try! loadModel(base).model.forward(ids, batch: 1) }.toArray()
        XCTAssertGreaterThan(maxAbsDiff(adapted, plain), 1e-4, "the adapter changes the logits")

        // Merged through the generic merge path.
        let merged = dir.appendingPathComponent("merged.h5").path
        let r = try mergeAdapter(modelPath: base, adapterPath: adapterPath, out: merged)
        XCTAssertEqual(r.adaptedModules, 2)
        XCTAssertLessThan(r.maxLogitDifference, MergeResult.tolerance)
        let mergedLogits = withNoGrad { try! loadModel(merged).model.forward(ids, batch: 1) }.toArray()
        for (a, b) in zip(mergedLogits, adapted) { XCTAssertEqual(a, b, accuracy: 1e-4) }

        // Exported and imported as a PEFT folder through the registry's mapping.
        let folder = dir.appendingPathComponent("peft")
        try exportPEFTFolder(method, base: loaded.model, baseName: nil, to: folder)
        let again = try loadModel(base)
        let imported = try XCTUnwrap(try loadAdapter(folder.path, onto: again.model) as? OutputScale)
        XCTAssertEqual(imported.hooked.map { $0.hook.s.toArray() }, method.hooked.map { $0.hook.s.toArray() })
        XCTAssertEqual(withNoGrad { again.model.forward(ids, batch: 1) }.toArray(), adapted)
        XCTAssertTrue(PEFTFolder.supportedTypes.contains("TEST_SCALE"))
    }

    /// A merge whose result differs from the adapted model writes nothing (it used to write the file
    /// and then say it should not be trusted).
    func testMergeThatChangesTheLogitsWritesNothing() throws {
        let bad = MethodDescription(
            BadScale.self, config: ScaleConfig.self, names: [("badscale", [:])], summary: "test method with a wrong merge",
            peftFolder: nil, build: { c, name, _ in BadScale(config: c, name: name) })
        if PEFTRegistry.method(named: "badscale") == nil { try PEFTRegistry.register(bad) }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("swiftpeft-badmerge-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let config = ModelConfig.llama(vocabSize: 20, hiddenSize: 16, numLayers: 1, numHeads: 2, numKVHeads: 1, intermediateSize: 24)
        let model = makeModel(config, seed: 4)
        let base = dir.appendingPathComponent("base.h5").path
        try ModelCheckpoint.save(model, tokenizerJSON: nil, to: base)
        var c = ScaleConfig()
        c.scaleInit = 0.5
        let method = try PEFTRegistry.make("badscale", config: JSONEncoder().encode(c))
        try method.attach(to: model)
        let adapter = dir.appendingPathComponent("adapter.h5").path
        try AdapterCheckpoint.save(method, base: makeModel(config, seed: 4), to: adapter)
        let out = dir.appendingPathComponent("merged.h5").path
        XCTAssertThrowsError(try mergeAdapter(modelPath: base, adapterPath: adapter, out: out)) {
            XCTAssertTrue("\($0)".contains("not written") && "\($0)".contains(out), "\($0)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: out))
    }

    /// One CLI contract: every flag of train/compare is a settings (config-file) key and every key a flag.
    func testEveryTrainFlagIsAConfigKey() throws {
        let values: [String: String] = [
            "model": "m.h5", "data": "d.jsonl", "out": "o", "steps": "3", "epochs": "1.5", "lr": "0.01", "schedule": "linear",
            "warmup": "2", "optimizer": "sgd", "weight-decay": "0.1", "momentum": "0.8", "adam-beta2": "0.95", "clip": "2", "skip-nonfinite": "3",
            "batch-size": "4", "grad-accumulation": "2", "seq-len": "16", "packing": "false", "val-fraction": "0.2",
            "val-data": "v.jsonl", "eval-every": "5", "save-every": "6", "log-every": "7", "method-config": "{}", "seed": "9",
            "watts-per-core": "6.5", "precision": "bf16", "chat-template": "t.jinja", "columns": "prompt=question",
        ]
        let flags = ["gradient-checkpointing", "keep-quantized"]  // flags without a value
        let options = try CommonTrainOptions.parse(values.flatMap { ["--" + $0.key, $0.value] } + flags.map { "--" + $0 })
        let all = Set(values.keys).union(flags)
        XCTAssertEqual(Set(options.given.keys), all, "every flag is reported under its long name")
        let perCommand: Set = ["method", "methods", "adapter"]  // train's --method/--adapter, compare's --methods
        XCTAssertEqual(Set(TrainJob.settingKeys).subtracting(perCommand), all, "every setting key is a flag")
        var settings = options.given
        settings["method-config"] = nil
        XCTAssertThrowsError(try TrainJob(settings: settings), "--steps and --epochs stand instead of each other") {
            XCTAssertTrue("\($0)".contains("--steps and --epochs are both given"), "\($0)")
        }
        (settings["steps"], settings["val-data"]) = (nil, nil)  // --epochs and --val-fraction stand instead of them
        let job = try TrainJob(settings: settings)
        XCTAssertEqual(job.trainer.optimizer, "sgd")
        XCTAssertEqual(job.trainer.adamBeta2, 0.95)
        XCTAssertEqual(job.trainer.logEvery, 7)
        XCTAssertEqual(job.data.seqLen, 16)
        XCTAssertEqual(job.precision, .bf16)
        XCTAssertEqual(job.data.packing, false)
        XCTAssertEqual(job.epochs, 1.5)
        XCTAssertEqual(job.wattsPerCore, 6.5)
        XCTAssertEqual(job.chatTemplatePath, "t.jinja")
        XCTAssertTrue(job.trainer.gradientCheckpointing)
        XCTAssertTrue(job.keepQuantized)
    }

    /// A new adapter's PEFT config may not carry a field the method lacks (a typo would be silently
    /// ignored); PEFT's bookkeeping fields and fields left off are accepted, and every registered
    /// method knows its own fields, nil-defaulted ones included.
    func testUnknownMethodConfigFieldsAreRefused() throws {
        let model = ModelConfig.llama(vocabSize: 64, hiddenSize: 16, numLayers: 1, numHeads: 2, numKVHeads: 1, intermediateSize: 32)
        let lora = try XCTUnwrap(PEFTRegistry.all.first { $0.peftType == "LORA" })
        XCTAssertTrue(lora.knownFields().isSuperset(of: ["r", "target_modules", "modules_to_save", "layers_to_transform",
                                                         "exclude_modules", "base_model_name_or_path", "rank_pattern"]))
        XCTAssertThrowsError(try lora.newConfig("lora", for: model, peftConfig: ["target_modulez": ["q_proj"]])) { e in
            XCTAssertTrue("\(e)".contains("unknown field \"target_modulez\"") && "\(e)".contains("target_modules"), "\(e)")
        }
        XCTAssertThrowsError(try lora.newConfig("lora", for: model, peftConfig: ["layer_replication": [[0, 1]]]))
        // A PEFT adapter_config.json: bookkeeping, and features it leaves off.
        let peftSaved: [String: Any] = ["peft_type": "LORA", "task_type": "CAUSAL_LM", "revision": NSNull(), "auto_mapping": NSNull(),
                                        "megatron_core": "megatron.core", "use_qalora": false, "layer_replication": NSNull(),
                                        "trainable_token_indices": NSNull(), "loftq_config": [String: Any](), "r": 4]
        let config = try JSONSerialization.jsonObject(with: lora.newConfig("lora", for: model, peftConfig: peftSaved)) as? [String: Any]
        XCTAssertEqual(config?["r"] as? Int, 4)
        for d in PEFTRegistry.all {
            let known = d.knownFields()
            XCTAssertTrue(known.isSuperset(of: d.defaults().keys), d.peftType)
            for o in d.options { XCTAssertTrue(known.contains(o.field), "\(d.peftType): option --\(o.flag) sets \(o.field)") }
            // The whole known set is accepted (values from the defaults where there is one).
            XCTAssertNoThrow(try d.newConfig(d.names[0].name, for: model, peftConfig: d.defaults()), d.peftType)
        }
    }
}
