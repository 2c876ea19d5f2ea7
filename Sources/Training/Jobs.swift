// The jobs behind the command-line tool, as library functions: load a base model, build a PEFT
// method from command-line style options, merge an adapter into a full checkpoint, describe any
// SwiftPEFT file. The CLI only parses arguments and prints what these return.

import Foundation

/// A base model and its tokenizer, from a SwiftPEFT HDF5 checkpoint, a llama GGUF file (by extension or magic)
/// or a Hugging Face model folder (config.json + model.safetensors).
public func loadBaseModel(_ path: String) throws -> (model: CausalLM, tokenizer: BPETokenizer?) {
    guard FileManager.default.fileExists(atPath: path) else {
        throw CheckpointError(path: path, message: "no such file")
    }
    if isHFModelFolder(path) {  // a Hugging Face folder: config.json + safetensors (+ tokenizer.json)
        return try loadHFModel(path)
    }
    if path.lowercased().hasSuffix(".gguf") || GGUFFile.hasMagic(path) {
        let (model, tok) = try loadGGUFModel(path)
        return (model, tok)
    }
    let (model, tokJSON, _) = try ModelCheckpoint.load(path)
    let tok = try tokJSON.map { try BPETokenizer.load(json: Data($0.utf8), file: path + "#tokenizer.json") }
    return (model, tok)
}

/// Options for building a method by name, with the usual hyper-parameters; anything else comes
/// from a PEFT-style JSON config (`methodConfig`), whose fields win.
public struct MethodOptions: Sendable {
    public var r = 8
    public var alpha: Float = 16
    public var dropout: Float = 0
    public var targetModules: [String]?
    public var numVirtualTokens = 16
    public var reductionFactor: Float = 16
    public var methodConfig: Data?
    public var seed: UInt64 = 0
    public init() {}
}

/// The methods `swiftpeft train --method` accepts; "full" trains every weight (no adapter).
public let methodNames = ["lora", "dora", "adapter", "prefix", "prompt", "ptuning", "ia3", "full"]

/// Builds the method `name` for `model`'s family (nil for "full").
public func makeMethod(_ name: String, for model: CausalLM, options o: MethodOptions) throws -> PEFTMethod? {
    let family = model.config.family
    func json(_ fields: [String: Any]) throws -> Data {
        var merged = fields
        if let extra = o.methodConfig {
            guard let obj = try JSONSerialization.jsonObject(with: extra) as? [String: Any] else {
                throw PEFTError(message: "the method config must be a JSON object")
            }
            merged.merge(obj) { _, new in new }
        }
        return try JSONSerialization.data(withJSONObject: merged, options: [.sortedKeys])
    }
    let attention = family == .gpt2 ? ["c_attn"] : ["q_proj", "v_proj"]
    switch name {
    case "full": return nil
    case "lora", "dora":
        return try PEFTRegistry.make("lora", config: json([
            "r": o.r, "lora_alpha": o.alpha, "lora_dropout": o.dropout, "target_modules": o.targetModules ?? attention,
            "use_dora": name == "dora"]))
    case "ia3":
        var f: [String: Any] = [:]
        if let t = o.targetModules { f["target_modules"] = t }
        return try PEFTRegistry.make("ia3", config: json(f))
    case "adapter":
        return try PEFTRegistry.make("adapter", config: json(["architecture": "houlsby", "reduction_factor": o.reductionFactor]))
    case "prefix", "prompt", "ptuning":
        let type = ["prefix": "PREFIX_TUNING", "prompt": "PROMPT_TUNING", "ptuning": "P_TUNING"][name]!
        var f: [String: Any] = ["num_virtual_tokens": o.numVirtualTokens, "peft_type": type]
        if name == "ptuning" { f["encoder_hidden_size"] = model.config.hiddenSize }
        return try PEFTRegistry.make(type, config: json(f))
    default:
        throw PEFTError(message: "unknown method '\(name)'; choose one of \(methodNames.joined(separator: ", "))")
    }
}

/// Result of merging an adapter into its base.
public struct MergeResult {
    /// Largest |merged − unmerged| logit on the check input.
    public let maxLogitDifference: Float
    public let adaptedModules: Int
}

/// Attaches the adapter at `path` to `model` with its tensors loaded: a Hugging Face PEFT folder
/// (any folder: `adapter_config.json` + `adapter_model.safetensors`) or a SwiftPEFT adapter checkpoint (.h5).
@discardableResult
public func loadAdapter(_ path: String, onto model: CausalLM) throws -> PEFTMethod {
    var isDir: ObjCBool = false
    if FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue {
        return try importPEFTFolder(URL(fileURLWithPath: path), onto: model)
    }
    return try AdapterCheckpoint.load(path, onto: model)
}

/// Where a merged model is written: a SwiftPEFT checkpoint (.h5) or a Hugging Face model folder.
public enum MergedModelFormat: String, CaseIterable, Sendable { case swiftpeft, hf }

/// Loads `adapter` (a SwiftPEFT checkpoint or a PEFT folder) onto the base at `modelPath`, merges it
/// into the weights, checks merged ≡ unmerged on `checkIDs`, and saves the merged model (with the
/// base's tokenizer) to `out` as a SwiftPEFT checkpoint or (`format` .hf) a Hugging Face folder.
public func mergeAdapter(modelPath: String, adapterPath: String, out: String, checkIDs: [Int32],
                         format: MergedModelFormat = .swiftpeft) throws -> MergeResult {
    let model: CausalLM, tokJSON: String?, meta: [String: String]
    if isHFModelFolder(modelPath) || modelPath.lowercased().hasSuffix(".gguf") {
        let (m, tok) = try loadBaseModel(modelPath)
        (model, tokJSON, meta) = (m, tok?.tokenizerJSON(), [:])
    } else {
        (model, tokJSON, meta) = try ModelCheckpoint.load(modelPath)
    }
    let method = try loadAdapter(adapterPath, onto: model)
    let ids = checkIDs.isEmpty ? [1, 2, 3, 4, 5, 6, 7, 8].map { Int32($0 % model.config.vocabSize) } : checkIDs
    let unmerged = withNoGrad { model.forward(ids, batch: 1) }.toArray()
    switch method {
    case let l as LoRA: l.merge()
    case let i as IA3: i.merge()
    default:
        throw PEFTError(message: "\(adapterPath): a \(type(of: method).peftType) adapter cannot be merged into the weights (only LoRA, DoRA and IA3 can)")
    }
    let merged = withNoGrad { model.forward(ids, batch: 1) }.toArray()
    let diff = zip(merged, unmerged).map { abs($0 - $1) }.max() ?? 0
    var m = meta
    m["merged_adapter"] = adapterPath
    m["merged_from"] = modelPath
    switch format {
    case .swiftpeft: try ModelCheckpoint.save(model, tokenizerJSON: tokJSON, to: out, metadata: m)
    case .hf: try saveHFModel(model, tokenizerJSON: tokJSON, to: out)
    }
    return MergeResult(maxLogitDifference: diff, adaptedModules: (method as? LoRA)?.layers.count ?? (method as? IA3)?.layers.count ?? 0)
}

/// A human-readable description of a SwiftPEFT file: a model, an adapter or a training state.
public func describeFile(_ path: String) throws -> String {
    if let other = try describeForeign(path) { return other }
    let (tensors, blobs, attrs) = try HDF5Store.read(path)
    let bytes = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
    let count = tensors.values.reduce(0) { $0 + $1.count }
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
        add("config", attrs["config"].map { $0.replacingOccurrences(of: "\n", with: " ") })
        for (k, t) in tensors.sorted(by: { $0.key < $1.key }).prefix(12) { lines.append("    \(k) \(t.shape)") }
        if tensors.count > 12 { lines.append("    … \(tensors.count - 12) more") }
    case Trainer.checkpointFormat?:
        add("step", attrs["step"])
        add("options", attrs["options"])
        add("trained tensors", "\(tensors.keys.filter { $0.hasPrefix("trained/") }.count)")
        add("optimizer state tensors", "\(tensors.keys.filter { $0.hasPrefix("optimizer/") }.count)")
    default:
        for (k, t) in tensors.sorted(by: { $0.key < $1.key }).prefix(20) { lines.append("    \(k) \(t.shape)") }
    }
    return lines.joined(separator: "\n")
}

/// A GGUF file, a Hugging Face model folder or a PEFT adapter folder, described; nil for other paths.
func describeForeign(_ path: String) throws -> String? {
    func summary(_ c: ModelConfig) -> String {
        "\(c.family), \(c.numLayers) × \(c.hiddenSize), heads \(c.numHeads) (kv \(c.numKVHeads)), FFN \(c.intermediateSize), vocab \(c.vocabSize)"
    }
    if PEFTFolder.isPEFTFolder(path) {
        let cfg = (try? String(contentsOfFile: path + "/adapter_config.json", encoding: .utf8)) ?? "?"
        let st = try? SafetensorsFile(path: path + "/adapter_model.safetensors")
        return "\(path): Hugging Face PEFT adapter folder\n  config: \(cfg.replacingOccurrences(of: "\n", with: " "))\n  tensors: \(st?.names.count ?? 0)"
    }
    if isHFModelFolder(path) {
        let data = try Data(contentsOf: URL(fileURLWithPath: path + "/config.json"))
        let obj = (try JSONSerialization.jsonObject(with: data) as? [String: Any]) ?? [:]
        let c = try hfModelConfig(obj, file: path + "/config.json")
        let tok = FileManager.default.fileExists(atPath: path + "/tokenizer.json") ? "tokenizer.json" : "none"
        return "\(path): Hugging Face model folder (\(obj["model_type"] as? String ?? "?"))\n  \(summary(c))\n  tokenizer: \(tok)"
    }
    if path.lowercased().hasSuffix(".gguf") || GGUFFile.hasMagic(path) {
        let f = try GGUFFile(path)
        var types: [String: Int] = [:]
        for t in f.tensorInfos { types["\(t.type)", default: 0] += 1 }
        let config = (try? f.modelConfig()).map(summary) ?? "not a llama GGUF SwiftPEFT can load"
        let name = f.metadata["general.name"]?.string ?? "?"
        return """
            \(path): GGUF v\(f.version), \(formatBytes(f.fileSize)), "\(name)"
              \(config)
              tensors: \(f.tensorInfos.count) (\(types.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", ")))
            """
    }
    return nil
}

/// "12.3 KB", "4.5 MB".
public func formatBytes(_ n: Int) -> String {
    if n < 1024 { return "\(n) B" }
    if n < 1024 * 1024 { return String(format: "%.1f KB", Double(n) / 1024) }
    if n < 1024 * 1024 * 1024 { return String(format: "%.1f MB", Double(n) / 1048576) }
    return String(format: "%.2f GB", Double(n) / 1073741824)
}
