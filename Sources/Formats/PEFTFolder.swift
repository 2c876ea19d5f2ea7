// Hugging Face PEFT adapter folders: `adapter_config.json` (sorted keys, PEFT field names) and
// `adapter_model.safetensors` (F32, PEFT key names without the adapter name). Export writes what
// `PeftModel.from_pretrained` loads; import reads what PEFT's `save_pretrained` writes (LoRA incl.
// DoRA, IA3, prompt tuning, prefix tuning, P-Tuning) onto a base loaded here. Prompt-learning methods
// travel as PEFT's single `prompt_embeddings` tensor (the encoder OUTPUT for P-Tuning and projected
// prefixes), so their configs say `inference_mode: true`, as PEFT writes them.

import Foundation
import TensorCore
import NN
import Models
import Tokenizers
import PEFT
import Containers

/// A PEFT adapter folder that cannot be written or read: names the folder or file (and tensor).
public typealias PEFTFolderError = CheckpointError

/// File names of a Hugging Face PEFT adapter folder.
public enum PEFTFolder {
    public static let configFile = "adapter_config.json"
    public static let weightsFile = "adapter_model.safetensors"
    /// The pickle format PEFT wrote before safetensors (not read here).
    public static let pickleFile = "adapter_model.bin"
    /// The chat template the adapter was trained with, as transformers saves a tokenizer's.
    public static let chatTemplateFile = "chat_template.jinja"
    /// The `peft_type`s that can be imported and exported: the registered methods with a PEFT mapping.
    public static var supportedTypes: [String] { PEFTRegistry.all.filter { $0.peftFolder != nil }.map(\.peftType) }

    /// Whether `path` is a folder holding an `adapter_config.json`.
    public static func isPEFTFolder(_ path: String) -> Bool {
        var isDir: ObjCBool = false
        return FileManager.default.fileExists(atPath: path, isDirectory: &isDir) && isDir.boolValue
            && FileManager.default.fileExists(atPath: URL(fileURLWithPath: path).appendingPathComponent(configFile).path)
    }

    /// A saved key in the form PEFT saves it: the adapter name removed (`lora_A.default.weight` →
    /// `lora_A.weight`, `ia3_l.default` → `ia3_l`, `lora_magnitude_vector.default.weight` →
    /// `lora_magnitude_vector`, `prompt_encoder.default.embedding.weight` → `prompt_encoder.embedding.weight`).
    public static func normalizedKey(_ key: String, adapterName: String = "default") -> String {
        var k = key.replacingOccurrences(of: ".\(adapterName).", with: ".")
        if k.hasSuffix(".\(adapterName)") { k.removeLast(adapterName.count + 1) }
        if k.hasSuffix(".lora_magnitude_vector.weight") { k.removeLast(".weight".count) }
        return k
    }
}

/// Writes `method` (attached to `base`) as a Hugging Face PEFT adapter folder in `dir` (created if
/// needed): `adapter_config.json` (sorted keys; peft_type, task_type "CAUSAL_LM",
/// base_model_name_or_path = `baseName`, inference_mode true, and the method's PEFT fields, the
/// prompt-learning dimensions filled from the base) and `adapter_model.safetensors` (F32, PEFT keys).
/// rsLoRA is written as `use_rslora: true` (PEFT applies alpha/√r itself). `chatTemplate`: the
/// template the adapter was trained with, written as `chat_template.jinja` (an older one is removed).
/// - Throws: `PEFTFolderError` for a method PEFT has no type for (bottleneck adapters) or an I/O error.
public func exportPEFTFolder(_ method: PEFTMethod, base: CausalLM, baseName: String?, chatTemplate: String? = nil, to dir: URL) throws {
    let type = Swift.type(of: method).peftType
    guard PEFTRegistry.method(peftType: type)?.peftFolder != nil else {
        throw PEFTFolderError(path: dir.path, message: """
            a \(type) adapter has no Hugging Face PEFT format (PEFT has no bottleneck/Houlsby/Pfeiffer adapters); \
            only \(PEFTFolder.supportedTypes.joined(separator: ", ")) can be exported as a PEFT folder.
            HINT: keep it as a SwiftPEFT adapter checkpoint (.h5).
            """)
    }
    var (config, tensors) = try method.peftFolderContents(base: base.config)
    try checkFiniteWeights(tensors, writing: dir.path)
    config["peft_type"] = type
    config["task_type"] = "CAUSAL_LM"
    config["base_model_name_or_path"] = baseName ?? NSNull()
    config["inference_mode"] = true
    guard !tensors.isEmpty else {
        throw PEFTFolderError(path: dir.path, message: "the \(type) adapter holds no tensors (attach it to the base before exporting)")
    }
    // The pair is written into a temporary folder beside `dir`, then swapped in whole: a kill or a
    // full disk never leaves a config that does not match its tensors.
    let template = chatTemplate == nil ? [] : [PEFTFolder.chatTemplateFile]  // an older export's is dropped
    try writeFolderAtomically(dir, files: template + [PEFTFolder.weightsFile, PEFTFolder.configFile],
                              dropping: chatTemplate == nil ? [PEFTFolder.chatTemplateFile] : []) { tmp in
        try Safetensors.write(tmp.appendingPathComponent(PEFTFolder.weightsFile).path, tensors: tensors, metadata: ["format": "pt"])
        if let chatTemplate {
            do { try Data(chatTemplate.utf8).write(to: tmp.appendingPathComponent(PEFTFolder.chatTemplateFile)) } catch {
                throw PEFTFolderError(path: dir.appendingPathComponent(PEFTFolder.chatTemplateFile).path,
                                      message: "cannot write: \((error as NSError).localizedDescription)")
            }
        }
        let configURL = tmp.appendingPathComponent(PEFTFolder.configFile)
        do {
            try JSONSerialization.data(withJSONObject: config, options: [.sortedKeys, .prettyPrinted]).write(to: configURL, options: .atomic)
        } catch {
            throw PEFTFolderError(path: dir.appendingPathComponent(PEFTFolder.configFile).path,
                                  message: "cannot write: \((error as NSError).localizedDescription)")
        }
    }
}

/// Reads a Hugging Face PEFT adapter folder (`adapter_config.json` + `adapter_model.safetensors`),
/// builds the method (`peft_type` LORA — DoRA with `use_dora` —, IA3, PROMPT_TUNING, PREFIX_TUNING,
/// P_TUNING), attaches it to `model` and loads its tensors. Keys may carry the adapter name
/// (`lora_A.default.weight`); prompt-learning adapters load `prompt_embeddings` in inference mode.
/// - Throws: `PEFTFolderError` naming the folder or file and the tensor: no config, a pickle
///   `adapter_model.bin` only, an unsupported `peft_type` or option, a missing, misshapen or unused tensor.
@discardableResult
public func importPEFTFolder(_ dir: URL, onto model: CausalLM) throws -> PEFTMethod {
    let fm = FileManager.default
    let configURL = dir.appendingPathComponent(PEFTFolder.configFile)
    let weightsURL = dir.appendingPathComponent(PEFTFolder.weightsFile)
    guard fm.fileExists(atPath: configURL.path) else {
        throw PEFTFolderError(path: dir.path, message: "no \(PEFTFolder.configFile) in the folder (not a PEFT adapter folder)")
    }
    let obj: Any, configText: Data
    do {
        configText = try Data(contentsOf: configURL)
        obj = try JSONSerialization.jsonObject(with: configText)
    } catch {
        throw PEFTFolderError(path: configURL.path, message: "not valid JSON (\(jsonSyntaxDetail(error)))")
    }
    guard let config = obj as? [String: Any] else { throw PEFTFolderError(path: configURL.path, message: "the top level is not a JSON object") }
    return try importPEFTContents(config, keyOrder: jsonObjectKeyOrder(configText), tensors: {
        guard fm.fileExists(atPath: weightsURL.path) else {
            if fm.fileExists(atPath: dir.appendingPathComponent(PEFTFolder.pickleFile).path) {
                throw PEFTFolderError(path: dir.appendingPathComponent(PEFTFolder.pickleFile).path, message: """
                    adapter_model.bin (PyTorch pickle) is not supported; convert it to safetensors.
                    HINT: in Python, `PeftModel.from_pretrained(base, folder).save_pretrained(out)` writes adapter_model.safetensors.
                    """)
            }
            throw PEFTFolderError(path: dir.path, message: "no \(PEFTFolder.weightsFile) in the folder")
        }
        var tensors: [String: Tensor] = [:]
        for (key, t) in try Safetensors.read(weightsURL.path).tensors {
            let k = PEFTFolder.normalizedKey(key)
            guard tensors[k] == nil else {
                throw PEFTFolderError(path: weightsURL.path, message: "tensor '\(key)' appears twice (as '\(k)', with and without the adapter name)")
            }
            tensors[k] = t
        }
        return tensors
    }, onto: model, adapterPath: dir.path, configPath: configURL.path, weightsPath: weightsURL.path)
}

/// Builds the adapter a PEFT config describes (`config`, its objects' key order in `keyOrder`),
/// attaches it to `model` and loads the tensors `tensors` reads (PEFT keys without the adapter
/// name); errors name `adapterPath`, `configPath` or `weightsPath`. Shared by PEFT folders and GGUF LoRA files.
func importPEFTContents(_ config: [String: Any], keyOrder: [String: [String]], tensors readTensors: () throws -> [String: Tensor],
                        onto model: CausalLM, adapterPath: String, configPath: String, weightsPath: String) throws -> PEFTMethod {
    var config = config
    guard let type = config["peft_type"] as? String else {
        throw PEFTFolderError(path: configPath, message: "\"peft_type\" is missing or not a string")
    }
    guard let mapping = PEFTRegistry.method(peftType: type)?.peftFolder else {
        throw PEFTFolderError(path: configPath, message: "peft_type \"\(type)\" is not supported; supported: \(PEFTFolder.supportedTypes.joined(separator: ", "))")
    }
    if let task = config["task_type"] as? String, task != "CAUSAL_LM" {
        throw PEFTFolderError(path: configPath, message: "task_type \"\(task)\" is not supported (only CAUSAL_LM, decoder-only models)")
    }
    do {
        let linears = model.namedModules().filter { $0.1 is Linear }.map(\.0)
        try mapping.prepareImport(&config, PEFTImportContext(keyOrder: keyOrder, linearModules: linears))
    } catch {
        throw PEFTFolderError(path: configPath, message: "\(error)")
    }

    let tensors = try readTensors()
    let method: PEFTMethod
    do {
        let data = try JSONSerialization.data(withJSONObject: config, options: [.sortedKeys])
        method = try PEFTRegistry.make(type, config: data, name: "default", restoring: true)
    } catch {
        throw PEFTFolderError(path: configPath, message: "\(error)")
    }
    try checkAttachable(method, to: model, path: adapterPath)
    do {
        try method.attach(to: model)
    } catch {
        throw PEFTFolderError(path: configPath, message: "cannot attach the \(type) adapter to this base: \(error)")
    }
    do {
        var used = try method.loadAdapterParameters(tensors, source: weightsPath)
        // PEFT saves an adapted head or embedding whole beside its LoRA (save_embedding_layers "auto",
        // for a vocabulary that was resized): one equal to this base's weight (to bf16 rounding, as a
        // bf16 model saves it) is the base's own.
        let params = Dictionary(model.namedParameters(), uniquingKeysWith: { a, _ in a })
        for (key, t) in tensors where !used.contains(key) && key.hasPrefix("base_model.model.") && key.hasSuffix(".base_layer.weight") {
            let name = String(key.dropFirst("base_model.model.".count).dropLast(".base_layer.weight".count)) + ".weight"
            guard let p = params[name] else { continue }
            guard !p.storage.valuesReleased else {
                throw PEFTFolderError(path: weightsPath, message: """
                    tensor '\(key)' is a whole copy of the base's \(name), which cannot be compared with this base: it keeps only \
                    \(p.storage.packed != nil ? "the quantized blocks of its matrices (--keep-quantized)" : "bf16 copies of its matrices (bf16-only weights)"). \
                    HINT: load the base with fp32 weights\(p.storage.packed != nil ? " (leave --keep-quantized out)" : "") to use this adapter.
                    """)
            }
            guard p.shape == t.shape, sameWeights(p, t) else {
                throw PEFTFolderError(path: weightsPath, message: """
                    tensor '\(key)' replaces the base's \(name) \(p.shape) with other values \(t.shape) (PEFT saves an adapted head \
                    or embedding whole when its vocabulary was resized); an adapter that changes base weights is not supported
                    """)
            }
            used.insert(key)
        }
        if let extra = tensors.keys.sorted().first(where: { !used.contains($0) }) {
            let sample = used.sorted().prefix(3).joined(separator: ", ")
            throw PEFTFolderError(path: weightsPath, message: """
                tensor '\(extra)' is not used by the \(type) adapter built from \(URL(fileURLWithPath: configPath).lastPathComponent) \
                (it expects \(used.count) tensors, e.g. \(sample)); the adapter holds something this library does not implement \
                (e.g. embedding LoRA) or belongs to another base
                """)
        }
    } catch {
        method.detach(from: model)
        if let e = error as? PEFTFolderError { throw e }
        throw PEFTFolderError(path: weightsPath, message: "\(error)".replacingOccurrences(of: weightsPath + ": ", with: ""))
    }
    return method
}

/// Whether two tensors of one shape hold the same values, each pair equal or equal once rounded to
/// bf16 (a bf16 model's save of an fp32 base's weight).
private func sameWeights(_ a: Tensor, _ b: Tensor) -> Bool {
    let (x, y) = (a.contiguous(), b.contiguous())
    let (p, q) = (x.basePointer, y.basePointer)
    // Round to nearest even at 16 bits (finite weights: the writers refuse others).
    func bf16(_ v: Float) -> UInt32 { (v.bitPattern &+ 0x7FFF &+ ((v.bitPattern >> 16) & 1)) >> 16 }
    for i in 0..<x.count where p[i] != q[i] && bf16(p[i]) != bf16(q[i]) { return false }
    return true
}

/// For each top-level field of a JSON object text whose value is an object, that object's keys in
/// the order the text lists them (a field given twice: its last value, as the parsers take it).
/// Empty for text that is not a JSON object; only called on text that parsed.
func jsonObjectKeyOrder(_ data: Data) -> [String: [String]] {
    let b = [UInt8](data)
    var i = 0
    func space() { while i < b.count, [0x20, 0x09, 0x0A, 0x0D].contains(b[i]) { i += 1 } }
    func string() -> String? {  // at a quote: the decoded string, i after its closing quote
        let start = i
        i += 1
        while i < b.count, b[i] != UInt8(ascii: "\"") { i += b[i] == UInt8(ascii: "\\") ? 2 : 1 }
        i += 1
        guard i <= b.count else { return nil }
        return (try? JSONSerialization.jsonObject(with: Data(b[start..<i]), options: .fragmentsAllowed)) as? String
    }
    /// Skips one value; with `keys`, an object's keys in order.
    func value(keys: inout [String]?) -> Bool {
        space()
        guard i < b.count else { return false }
        switch b[i] {
        case UInt8(ascii: "\""): return string() != nil
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            let isObject = b[i] == UInt8(ascii: "{"), close = isObject ? UInt8(ascii: "}") : UInt8(ascii: "]")
            i += 1
            space()
            if i < b.count, b[i] == close { i += 1; return true }
            while true {
                if isObject {
                    space()
                    guard i < b.count, b[i] == UInt8(ascii: "\""), let key = string() else { return false }
                    keys?.append(key)
                    space()
                    guard i < b.count, b[i] == UInt8(ascii: ":") else { return false }
                    i += 1
                }
                var none: [String]? = nil
                guard value(keys: &none) else { return false }
                space()
                guard i < b.count else { return false }
                if b[i] == close { i += 1; return true }
                guard b[i] == UInt8(ascii: ",") else { return false }
                i += 1
            }
        default:  // number, true, false, null
            while i < b.count, ![UInt8(ascii: ","), UInt8(ascii: "}"), UInt8(ascii: "]"), 0x20, 0x09, 0x0A, 0x0D].contains(b[i]) { i += 1 }
            return true
        }
    }
    var order: [String: [String]] = [:]
    space()
    guard i < b.count, b[i] == UInt8(ascii: "{") else { return [:] }
    i += 1
    while true {
        space()
        guard i < b.count, b[i] == UInt8(ascii: "\""), let field = string() else { return order }
        space()
        guard i < b.count, b[i] == UInt8(ascii: ":") else { return order }
        i += 1
        space()
        var keys: [String]? = i < b.count && b[i] == UInt8(ascii: "{") ? [] : nil
        guard value(keys: &keys) else { return order }
        order[field] = keys
        space()
        guard i < b.count, b[i] == UInt8(ascii: ",") else { return order }
        i += 1
    }
}
