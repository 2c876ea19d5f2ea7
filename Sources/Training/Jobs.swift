// The jobs behind the command-line tool, as library functions: build a PEFT method from the
// registry with command-line style settings, merge an adapter into a full checkpoint, describe any
// file SwiftPEFT reads. The CLI only parses arguments and prints what these return.

import Foundation
import TensorCore
import NN
import Models
import Tokenizers
import PEFT
import Containers
import Formats

/// The method name that trains every weight (no adapter); beside the registry's names.
public let fullFineTuning = "full"

/// Every name `train --method` and `compare --methods` accept: the registry's, then "full".
public var trainableMethodNames: [String] { PEFTRegistry.names + [fullFineTuning] }

/// What a new adapter is built from besides its method's defaults: option values by flag name
/// ("r": 8, "alpha": 16, "use-dora": true) and PEFT config fields ("lora_alpha": 16, …, from a
/// `--method-config` file). Options win over PEFT fields.
public struct MethodSettings {
    public var options: [String: Any] = [:]
    public var peftConfig: [String: Any] = [:]
    public init(options: [String: Any] = [:], peftConfig: [String: Any] = [:]) {
        (self.options, self.peftConfig) = (options, peftConfig)
    }

    /// Throws when an option is declared by none of `methods` (a typo, or a flag of another method).
    /// With several methods (compare), a `--method-config` field that none of them reads too; each
    /// method is given the fields it reads (`settings(for:among:)`).
    public func check(for methods: [String]) throws {
        let described = methods.compactMap(PEFTRegistry.method(named:))
        let declared = described.flatMap { $0.options.map(\.flag) }
        for flag in options.keys.sorted() where !declared.contains(flag) {
            let owners = PEFTRegistry.options.first { $0.option.flag == flag }?.methods
            throw PEFTError(message: owners.map { "--\(flag) applies to \($0.joined(separator: ", ")), not to \(methods.joined(separator: ", "))" }
                ?? "unknown method option --\(flag)")
        }
        guard methods.count > 1 else { return }  // one method: its own check names its fields
        let read = Set(described.flatMap { $0.ownFields(of: peftConfig).keys })
        // Fields left off are accepted, as each method's own check does (a PEFT adapter_config.json).
        if let field = peftConfig.keys.sorted().first(where: { !read.contains($0) && !MethodDescription.isLeftOff(peftConfig[$0]!) }) {
            throw PEFTError(message: "the method config field \"\(field)\" is read by none of \(methods.joined(separator: ", "))")
        }
    }

    /// What `method` is built from when `methods` train side by side (compare): every option (each
    /// method reads those it declares) and the `--method-config` fields it reads.
    public func settings(for method: String, among methods: [String]) -> MethodSettings {
        guard methods.count > 1, let d = PEFTRegistry.method(named: method) else { return self }
        return MethodSettings(options: options, peftConfig: d.ownFields(of: peftConfig))
    }
}

/// Builds the method `name` for `model` (nil for "full"). Prompt tuning with `prompt_tuning_init`
/// TEXT starts from the embeddings of `prompt_tuning_init_text` as `tokenizer` encodes a text, its
/// BOS included, as PEFT's `tokenizer(init_text)` gives them (the PEFT layer has no tokenizer).
/// - Throws: `PEFTError` for a bad method or setting, or TEXT init without a tokenizer or text.
public func makeMethod(_ name: String, for model: CausalLM, settings: MethodSettings = MethodSettings(),
                       tokenizer: Tokenizer? = nil) throws -> PEFTMethod? {
    if name == fullFineTuning { return nil }
    if let d = PEFTRegistry.method(named: name), d.type == PromptTuning.self {
        let config = try PromptTuningConfig.decode(d.newConfig(name, for: model.config, peftConfig: settings.peftConfig,
                                                               settings: settings.options), method: d.peftType)
        if config.promptTuningInit == .text && !config.inferenceMode {
            guard let text = config.promptTuningInitText, !text.isEmpty else {
                throw PEFTError(message: "prompt tuning: prompt_tuning_init is TEXT but prompt_tuning_init_text is missing or empty")
            }
            guard let tokenizer else {
                throw PEFTError(message: "prompt tuning: prompt_tuning_init TEXT needs the base's tokenizer for its text, and the base has none")
            }
            let ids = tokenizer.encode(text, addBOS: tokenizer.addsBOS)
            guard !ids.isEmpty else { throw PEFTError(message: "prompt tuning: prompt_tuning_init_text \(text.debugDescription) encodes to no token") }
            return try PromptTuning(config: config, initTokenIDs: ids)
        }
    }
    return try PEFTRegistry.makeNew(name, for: model.config, peftConfig: settings.peftConfig, settings: settings.options)
}

/// Result of merging an adapter into its base.
public struct MergeResult {
    /// The largest |merged − unmerged| logit a merge may show and still be saved as correct, per
    /// unit of the largest |logit| (at least 1): float32 rounding grows with the logits.
    public static let tolerance: Float = 1e-4
    /// Largest |merged − unmerged| logit on the check input.
    public let maxLogitDifference: Float
    public let adaptedModules: Int
}

/// Where a merged model is written: a SwiftPEFT checkpoint (.h5) or a Hugging Face model folder.
public enum MergedModelFormat: String, CaseIterable, Sendable { case swiftpeft, hf, gguf }

/// Loads `adapter` (a SwiftPEFT checkpoint, a PEFT folder or a GGUF LoRA) onto the base at `modelPath` (read
/// once), merges it into the weights, measures merged vs unmerged logits on `checkText` (tokenized
/// with the base's tokenizer; fixed ids without one; cut to learned positions), and, when they agree
/// within `MergeResult.tolerance` × the largest |logit| (at least 1), saves the merged model (with the base's tokenizer) to `out` as a
/// SwiftPEFT checkpoint, (`format` .hf) a Hugging Face folder or (.gguf) a llama.cpp GGUF file of
/// `ggufType` matrices (from a GGUF base, its metadata kept); otherwise throws, writing nothing.
/// The merged model keeps the chat template the adapter records, or `chatTemplatePath`'s (a file
/// used instead), or the base's own (`useChatTemplate`). An `out` that is the base or the adapter
/// itself is refused before anything is read.
public func mergeAdapter(modelPath: String, adapterPath: String, out: String,
                         checkText: String = "The quick brown fox jumps over the lazy dog.",
                         format: MergedModelFormat = .swiftpeft, ggufType: GGUFWeightType = .f16,
                         chatTemplatePath: String? = nil) throws -> MergeResult {
    try checkOutputIsNoInput(out, inputs: [(modelPath, "the base model"), (adapterPath, "the adapter")])
    let base = try loadModel(modelPath)
    if let tokenizer = base.tokenizer {
        try useChatTemplate(file: chatTemplatePath, adapters: [adapterPath], on: tokenizer)
    } else if chatTemplatePath != nil {
        throw CheckpointError(path: modelPath, message: "holds no tokenizer for --chat-template")
    }
    let model = base.model
    let checkIDs = base.tokenizer?.encode(checkText) ?? []
    let method = try loadAdapter(adapterPath, onto: model)
    guard let mergeable = method as? MergeablePEFTMethod else {
        let merging = PEFTRegistry.all.filter(\.merges).flatMap { $0.names.map(\.name) }
        throw PEFTError(message: "\(adapterPath): a \(type(of: method).peftType) adapter cannot be merged into the weights (only \(merging.joined(separator: ", ")) can)")
    }
    let ids = Array((checkIDs.isEmpty ? [1, 2, 3, 4, 5, 6, 7, 8].map { Int32($0 % model.config.vocabSize) } : checkIDs)
        .prefix(model.config.positions == .learned ? model.config.maxPositions : Int.max))
    let unmerged = withNoGrad { model.forward(ids, batch: 1) }.toArray()
    mergeable.merge()
    let merged = withNoGrad { model.forward(ids, batch: 1) }.toArray()
    var diff: Float = 0
    for (a, b) in zip(merged, unmerged) { diff = max(diff, abs(a - b).isNaN ? .infinity : abs(a - b)) }
    guard unmerged.allSatisfy(\.isFinite) else {  // no tolerance can be measured against infinite logits
        throw PEFTError(message: "\(out): not written: the adapted model's logits on the check text are not finite")
    }
    let allowed = MergeResult.tolerance * max(1, unmerged.map(abs).max() ?? 1)
    guard diff <= allowed else {  // nothing is written that would not be trusted
        throw PEFTError(message: "\(out): not written: the merged model's logits differ from the adapted model's by \(diff) (more than \(allowed))")
    }
    // The merged model's own record: the base's metadata (its pretraining's val_loss, …) describes another model.
    var m: [String: String] = [:]
    m["merged_adapter"] = adapterPath
    m["merged_from"] = modelPath
    try saveModel(model, tokenizer: base.tokenizer, loadedFrom: base.source, to: out, format: format, ggufType: ggufType, metadata: m)
    return MergeResult(maxLogitDifference: diff, adaptedModules: mergeable.mergedModuleCount)
}

/// Saves `model` (with `tokenizer`) to `out` as a SwiftPEFT checkpoint (with `metadata`), a Hugging
/// Face folder (a Hugging Face `source`'s tokenizer config and generation config kept) or a GGUF
/// file of `ggufType` matrices (a GGUF `source`'s metadata kept).
public func saveModel(_ model: CausalLM, tokenizer: BPETokenizer?, loadedFrom source: ModelSource, to out: String,
                      format: MergedModelFormat, ggufType: GGUFWeightType = .f16, metadata: [String: String] = [:]) throws {
    switch format {
    case .swiftpeft: try ModelCheckpoint.save(model, tokenizer: tokenizer, to: out, metadata: metadata)
    case .hf: try saveHFModel(model, tokenizer: tokenizer, to: out, from: source.kind == .hfFolder ? source.path : nil)
    case .gguf: try saveGGUFModel(model, tokenizer: tokenizer, to: out, type: ggufType, base: source.kind == .gguf ? try GGUFFile(source.path) : nil)
    }
}

/// Reads the model at `modelPath` (a SwiftPEFT checkpoint, GGUF file or Hugging Face folder; GGUF
/// quantizations dequantized) and writes it in `format`, its tokenizer and chat template along.
/// - Throws: naming the file that cannot be read or written, or an `out` that is `modelPath` itself.
public func convertModel(modelPath: String, out: String, format: MergedModelFormat, ggufType: GGUFWeightType = .f16) throws {
    try checkOutputIsNoInput(out, inputs: [(modelPath, "the model")])
    let loaded = try loadModel(modelPath)
    try saveModel(loaded.model, tokenizer: loaded.tokenizer, loadedFrom: loaded.source, to: out, format: format, ggufType: ggufType,
                  metadata: ["converted_from": modelPath])
}

/// `json` on one line, keys sorted ("{"alpha_pattern":{},"r":8}"); the text itself, lines joined, when it is not JSON.
func compactJSON(_ json: String) -> String {
    guard let object = try? JSONSerialization.jsonObject(with: Data(json.utf8), options: [.fragmentsAllowed]),
          let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .fragmentsAllowed, .withoutEscapingSlashes]) else {
        return json.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.joined(separator: " ")
    }
    return String(decoding: data, as: UTF8.self)
}

/// Tensor names in reading order: the numbers in them compared as numbers (layers.2 before layers.10).
func numericOrder(_ a: String, _ b: String) -> Bool { a.compare(b, options: .numeric) == .orderedAscending }

/// A human-readable description of a SwiftPEFT file: a model, an adapter, a training state, or a
/// back-test's report folder.
public func describeFile(_ path: String) throws -> String {
    let path = try localModelPath(path)
    if FileManager.default.fileExists(atPath: URL(fileURLWithPath: path).appendingPathComponent(backtestProgressFile).path) {
        return try describeBacktestReport(path)
    }
    let source = try ModelSource.detect(path)
    if let other = try describeForeign(source) { return other }
    let file = try HDF5Store.open(path)  // shapes only: no tensor is read
    let (tensors, blobs, attrs) = (file.shapes, file.blobs, file.attributes)
    let bytes = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
    let count = tensors.values.reduce(0) { $0 + $1.reduce(1, *) }
    var lines = ["\(path): \(attrs["format"] ?? "HDF5 file (not a SwiftPEFT format)"), \(formatBytes(bytes))"]
    func add(_ k: String, _ v: String?) { if let v { lines.append("  \(k): \(v)") } }
    switch attrs["format"] {
    case ModelCheckpoint.format?:
        if let c = attrs["config"], let cfg = try? JSONDecoder().decode(ModelConfig.self, from: Data(c.utf8)) {
            add("family", cfg.family.rawValue)
            add("layers × hidden", "\(cfg.numLayers) × \(cfg.hiddenSize), heads \(cfg.numHeads) (kv \(cfg.numKVHeads)), FFN \(cfg.intermediateSize), vocab \(cfg.vocabSize)")
        }
        add("parameters", "\(count) in \(tensors.count) tensors")
        add("tokenizer", blobs["tokenizer.json"].map { "tokenizer.json, \(formatBytes($0.count))" } ?? "none")
        for (k, v) in attrs.sorted(by: { $0.key < $1.key }) where !["format", "version", "config"].contains(k) { add(k, v) }
    case AdapterCheckpoint.format?:
        add("method", attrs["peft_type"])
        add("adapter name", attrs["adapter_name"])
        add("trainable parameters", "\(count) in \(tensors.count) tensors")
        add("base weights hash", attrs["base_weights_hash"])
        add("config", attrs["config"].map(compactJSON))
        add("chat template", blobs[AdapterCheckpoint.chatTemplateKey].map { "recorded, \(formatBytes($0.count)) (trained with it; used where it differs from the base's)" } ?? "none recorded (the base's)")
        for (k, t) in tensors.sorted(by: { numericOrder($0.key, $1.key) }).prefix(12) { lines.append("    \(k) \(t)") }
        if tensors.count > 12 { lines.append("    … \(tensors.count - 12) more") }
    case Trainer.checkpointFormat?:
        add("step", attrs["step"])
        add("options", attrs["options"])
        add("trained tensors", "\(tensors.keys.filter { $0.hasPrefix("trained/") }.count)")
        add("optimizer state tensors", "\(tensors.keys.filter { $0.hasPrefix("optimizer/") }.count)")
        if let c = attrs["cost"].flatMap({ try? JSONDecoder().decode(Cost.self, from: Data($0.utf8)) }) {
            add("cost so far", "\(c.summary) (\(counted(attrs["cost_sessions"].flatMap(Int.init) ?? 1, "session")))")
        }
    default:
        for (k, t) in tensors.sorted(by: { numericOrder($0.key, $1.key) }).prefix(20) { lines.append("    \(k) \(t)") }
    }
    return lines.joined(separator: "\n")
}

/// A GGUF file, a Hugging Face model folder, a PEFT or mlx-lm adapter folder, described; nil for HDF5 files.
func describeForeign(_ source: ModelSource) throws -> String? {
    let path = source.path
    func summary(_ c: ModelConfig) -> String {
        "\(c.family), \(c.numLayers) × \(c.hiddenSize), heads \(c.numHeads) (kv \(c.numKVHeads)), FFN \(c.intermediateSize), vocab \(c.vocabSize)"
    }
    switch source.kind {
    case .peftFolder:
        let cfg = (try? String(contentsOfFile: path + "/adapter_config.json", encoding: .utf8)) ?? "?"
        let st = try SafetensorsFile(path: path + "/adapter_model.safetensors")  // a missing or broken file is an error, not "0 tensors"
        let template: String
        do {
            template = try adapterChatTemplate(path).map { "recorded, \(formatBytes($0.utf8.count)) (used where it differs from the base's)" } ?? "none recorded (the base's)"
        } catch {
            template = "recorded but unreadable (\(error))"
        }
        return "\(path): Hugging Face PEFT adapter folder\n  config: \(compactJSON(cfg))\n  tensors: \(st.names.count)\n  chat template: \(template)"
    case .hfFolder:
        let data = try Data(contentsOf: URL(fileURLWithPath: path + "/config.json"))
        let obj = (try JSONSerialization.jsonObject(with: data) as? [String: Any]) ?? [:]
        let c = try hfModelConfig(obj, file: path + "/config.json")
        let tok = FileManager.default.fileExists(atPath: path + "/tokenizer.json") ? "tokenizer.json" : "none"
        let quantized = MLXModel.describe(obj).map { "\n  quantized: " + $0 } ?? ""
        return "\(path): Hugging Face model folder (\(obj["model_type"] as? String ?? "?"))\n  \(summary(c))\n  tokenizer: \(tok)\(quantized)"
    case .gguf:
        let f = try GGUFFile(path)
        var types: [String: Int] = [:]
        for t in f.tensorInfos { types["\(t.type)", default: 0] += 1 }
        let config: String
        do { config = summary(try f.modelConfig()) } catch let e as GGUFError {
            config = "not a model SwiftPEFT can load: " + (e.tensor.map { "'\($0)': " } ?? "") + e.message
        }
        let name = f.metadata["general.name"]?.string ?? "?"
        return """
            \(path): GGUF v\(f.version), \(formatBytes(f.fileSize)), "\(name)"
              \(config)
              tensors: \(f.tensorInfos.count) (\(types.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", ")))
            """
    case .ggufAdapter:
        let f = try GGUFFile(path)
        let a = f.tensorInfos.filter { $0.name.hasSuffix(".lora_a") }
        let ranks = Set(a.compactMap { $0.shape.first }).sorted().map(String.init).joined(separator: ", ")
        let alpha = f.metadata["adapter.lora.alpha"]?.double.map { String(format: "%g", $0) } ?? "missing"
        return """
            \(path): llama.cpp GGUF LoRA adapter (\(f.metadata["general.architecture"]?.string ?? "?")), \(formatBytes(f.fileSize))
              modules: \(a.count), rank \(ranks), alpha \(alpha)\(alpha == "0" ? " (scales folded into B)" : "")
              tensors: \(a.prefix(4).map(\.name).joined(separator: ", "))\(a.count > 4 ? ", …" : "")
            """
    case .mlxAdapter:
        let data = try Data(contentsOf: URL(fileURLWithPath: path + "/" + MLXAdapter.configFile))
        let obj = (try? JSONSerialization.jsonObject(with: data) as? [String: Any]) ?? [:]
        let params = obj["lora_parameters"] as? [String: Any] ?? [:]
        func value(_ v: Any?) -> String { v.map { "\($0)" } ?? "missing" }
        let st = try SafetensorsFile(path: path + "/" + MLXAdapter.weightsFile)
        let modules = st.names.filter { $0.hasSuffix(".lora_a") }
        return """
            \(path): mlx-lm adapter folder (\(obj["fine_tune_type"] as? String ?? "lora")), \(formatBytes(st.entries.values.reduce(0) { $0 + $1.end - $1.begin }))
              modules: \(modules.count), rank \(value(params["rank"])), scale \(value(params["scale"])), num_layers \(value(obj["num_layers"]))\(obj["model"].map { ", model \($0)" } ?? "")
              tensors: \(modules.prefix(4).joined(separator: ", "))\(modules.count > 4 ? ", …" : "")
            """
    case .checkpoint, .adapter, .trainingState, .otherHDF5:
        return nil
    }
}

/// "12.3 KB", "4.5 MB".
public func formatBytes(_ n: Int) -> String {
    if n < 1024 { return "\(n) B" }
    if n < 1024 * 1024 { return String(format: "%.1f KB", Double(n) / 1024) }
    if n < 1024 * 1024 * 1024 { return String(format: "%.1f MB", Double(n) / 1048576) }
    return String(format: "%.2f GB", Double(n) / 1073741824)
}
