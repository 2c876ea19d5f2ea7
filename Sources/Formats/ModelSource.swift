// One place decides what a path is (by content: magic numbers, the HDF5 `format` attribute, the files
// in a folder), one loader turns a base-model path into a `LoadedModel`, and one turns an adapter path
// into a method attached to a model. Every command goes through these.

import Foundation
import TensorCore
import NN
import Models
import Tokenizers
import PEFT
import Containers

/// What a path holds.
public struct ModelSource: Equatable, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        case checkpoint = "SwiftPEFT model checkpoint"
        case gguf = "GGUF file"
        case hfFolder = "Hugging Face model folder"
        case peftFolder = "Hugging Face PEFT adapter folder"
        /// A folder with `adapters.safetensors` beside `adapter_config.json` (`mlx_lm.lora`'s output).
        case mlxAdapter = "mlx-lm adapter folder"
        /// A GGUF file whose `general.type` is "adapter" (llama.cpp's LoRA).
        case ggufAdapter = "llama.cpp GGUF LoRA adapter"
        case adapter = "SwiftPEFT adapter checkpoint"
        case trainingState = "SwiftPEFT training state"
        /// An HDF5 file that is none of SwiftPEFT's formats.
        case otherHDF5 = "HDF5 file (not a SwiftPEFT format)"
    }
    public let path: String
    public let kind: Kind
    /// The root attributes of a SwiftPEFT HDF5 file (format, config, …); empty for other kinds.
    public let attributes: [String: String]

    /// The HDF5 `format` attribute of a training state (Trainer's `state.h5`).
    public static let trainingStateFormat = "swiftpeft-training-state"

    public var description: String { "\(path) (\(kind.rawValue))" }

    /// Decides what `path` is from its content, not its name: a folder with `adapter_config.json`
    /// (PEFT adapter) or `config.json` (model); a file starting with "GGUF"; an HDF5 file, told apart
    /// by its `format` attribute. A Hub id is read from the local Hugging Face cache (`localModelPath`).
    /// - Throws: `CheckpointError` naming the path when it is missing or none of these.
    public static func detect(_ path: String) throws -> ModelSource {
        let original = path, path = try localModelPath(path)
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw CheckpointError(path: path, message: "no such file or folder")
        }
        if isDir.boolValue {
            if MLXAdapter.isMLXAdapterFolder(path) { return ModelSource(path: path, kind: .mlxAdapter, attributes: [:]) }
            if PEFTFolder.isPEFTFolder(path) { return ModelSource(path: path, kind: .peftFolder, attributes: [:]) }
            if isHFModelFolder(path) { return ModelSource(path: path, kind: .hfFolder, attributes: [:]) }
            // A train --out folder: name the checkpoint in it that was meant.
            let saved = ["adapter.h5", "model.h5"].filter { FileManager.default.fileExists(atPath: path + "/" + $0) }
            // A GGUF repository (a Hub id's snapshot, or its download): name the files in it.
            let ggufs = ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).filter { $0.lowercased().hasSuffix(".gguf") }.sorted()
            var hint = saved.isEmpty ? "" : "; it holds a training run's \(saved.joined(separator: " and ")): give "
                + saved.map { (path as NSString).appendingPathComponent($0) }.joined(separator: " or ")
            if saved.isEmpty && !ggufs.isEmpty {
                hint = "; it holds GGUF files: give one, " + ggufs.prefix(4).map { ((original.contains("@") ? path : original) as NSString).appendingPathComponent($0) }.joined(separator: ", ")
                    + (ggufs.count > 4 ? ", … (\(ggufs.count) in all)" : "")
            }
            throw CheckpointError(path: path, message: """
                a folder with neither config.json (a Hugging Face model) nor \(PEFTFolder.configFile) (a PEFT adapter)\(hint)
                """)
        }
        if GGUFFile.hasMagic(path) { return ModelSource(path: path, kind: isGGUFAdapter(path) ? .ggufAdapter : .gguf, attributes: [:]) }
        let attrs: [String: String]
        do { attrs = try HDF5Store.readAttributes(path) } catch let e as HDF5Error where !e.isNotHDF5 {
            throw CheckpointError(path: path, message: e.message)  // a damaged checkpoint says so, rather than "not a file SwiftPEFT reads"
        } catch {
            throw CheckpointError(path: path, message: """
                not a file SwiftPEFT reads: expected an HDF5 checkpoint (.h5), a GGUF file, or a Hugging Face model or PEFT adapter folder
                """)
        }
        let kinds: [String: Kind] = [ModelCheckpoint.format: .checkpoint, AdapterCheckpoint.format: .adapter,
                                     trainingStateFormat: .trainingState]
        return ModelSource(path: path, kind: attrs["format"].flatMap { kinds[$0] } ?? .otherHDF5, attributes: attrs)
    }
}

/// A base model as every command uses it.
public struct LoadedModel {
    public let model: CausalLM
    /// nil for a checkpoint saved without one.
    public let tokenizer: BPETokenizer?
    /// A SwiftPEFT checkpoint's attributes other than format, version and config (empty otherwise).
    public let metadata: [String: String]
    public let source: ModelSource
}

/// Loads the base model at `path`: a SwiftPEFT checkpoint, a GGUF file (LLaMA family) or a Hugging
/// Face model folder, read once; a Hub id ("HuggingFaceTB/SmolLM2-135M") is its snapshot in the local
/// Hugging Face cache (`localModelPath`). The model comes back frozen and in eval mode.
/// - Throws: naming the path; an adapter or a training state given as a model says so, with a hint.
/// `bf16Only` keeps only bf16 copies of the frozen matrices, their fp32 values released as each
/// loads (`DecodePrecision.bf16Only`: about half the memory; for generating and serving).
/// `keepQuantized` keeps a GGUF file's quantized block matrices as they are, each product decoding
/// them (`loadGGUFModel(keepQuantized:)`: training adapters on a 4-bit base takes a fraction of the
/// memory of its Float32 weights), and an mlx-lm quantized folder's packed matrices likewise
/// (`loadHFModel(keepQuantized:)`); a base of another kind is refused, with a hint. With
/// `quantizedEmbedding` the token embedding and output head keep their blocks too (generating and
/// serving: SmolLM2's 211 quantized matrices then take 92 MiB against 513 in Float32).
public func loadModel(_ path: String, seed: UInt64 = 0, bf16Only: Bool = false, keepQuantized: Bool = false,
                      quantizedEmbedding: Bool = false) throws -> LoadedModel {
    check(keepQuantized || !quantizedEmbedding, "[loadModel] quantizedEmbedding needs keepQuantized")
    let path = try localModelPath(path)
    let loaded: LoadedModel
    let source = keepQuantized ? try ModelSource.detect(path) : nil
    if let source, source.kind == .checkpoint || source.kind == .hfFolder && !isQuantizedMLXFolder(path) {
        throw CheckpointError(path: path, message: """
            is a \(source.kind.rawValue)\(source.kind == .hfFolder ? " without mlx-lm quantized layers" : ""); --keep-quantized keeps the quantized blocks of a GGUF file's matrices \
            or an mlx-lm quantized folder's packed matrices.
            HINT: write one first (`swiftpeft convert --model \(path) --out base.gguf --gguf-type q8_0`), or leave --keep-quantized out.
            """)
    }
    if let source, source.kind == .gguf {
        let (model, tok) = try loadGGUFModel(path, seed: seed, keepQuantized: true, quantizedEmbedding: quantizedEmbedding)
        loaded = LoadedModel(model: model, tokenizer: tok, metadata: [:], source: source)
    } else if let source, source.kind == .hfFolder {
        let (model, tok) = try loadHFModel(path, seed: seed, keepQuantized: true, quantizedEmbedding: quantizedEmbedding)
        loaded = LoadedModel(model: model, tokenizer: tok, metadata: [:], source: source)
    } else {
        loaded = try loadModelUnchecked(path, seed: seed, bf16Only: bf16Only)
    }
    // An id the embedding has no row for would stop the program deep inside a kernel.
    if let tok = loaded.tokenizer, tok.vocabSize > loaded.model.config.vocabSize {
        throw CheckpointError(path: path, message: """
            its tokenizer has \(tok.vocabSize) tokens but the model's vocab_size is \(loaded.model.config.vocabSize); \
            ids past \(loaded.model.config.vocabSize - 1) have no embedding. The tokenizer belongs to another model.
            """)
    }
    return loaded
}

private func loadModelUnchecked(_ path: String, seed: UInt64, bf16Only: Bool) throws -> LoadedModel {
    let source = try ModelSource.detect(path)
    switch source.kind {
    case .checkpoint:
        let (model, tokJSON, tokConfig, meta) = try ModelCheckpoint.load(path, seed: seed, bf16Only: bf16Only)
        let tok = try tokJSON.map {
            try BPETokenizer.load(json: Data($0.utf8), file: path + "#tokenizer.json", configs: tokConfig.map { [Data($0.utf8)] } ?? [])
        }
        return LoadedModel(model: model, tokenizer: tok, metadata: meta, source: source)
    case .gguf:
        let (model, tok) = try loadGGUFModel(path, seed: seed, bf16Only: bf16Only)
        return LoadedModel(model: model, tokenizer: tok, metadata: [:], source: source)
    case .hfFolder:
        let (model, tok) = try loadHFModel(path, seed: seed, bf16Only: bf16Only)
        return LoadedModel(model: model, tokenizer: tok, metadata: [:], source: source)
    case .peftFolder, .mlxAdapter, .adapter, .ggufAdapter:
        throw CheckpointError(path: path, message: """
            is a \(source.kind.rawValue), not a base model.
            HINT: give the base model it was trained on as the model, and this path as the adapter (--adapter).
            """)
    case .trainingState:
        throw CheckpointError(path: path, message: """
            is a \(source.kind.rawValue), not a base model.
            HINT: continue it with `swiftpeft train --resume --out <its folder>`; the model is the base that run was given.
            """)
    case .otherHDF5:
        throw CheckpointError(path: path, message: """
            not a SwiftPEFT model checkpoint (format attribute \(source.attributes["format"].map { "'\($0)'" } ?? "missing"), expected '\(ModelCheckpoint.format)')
            """)
    }
}

/// Attaches the adapter at `path` to `model` with its tensors loaded: a Hugging Face PEFT folder, an
/// mlx-lm adapter folder, a SwiftPEFT adapter checkpoint or a llama.cpp GGUF LoRA, told apart by content (a Hub id: its
/// snapshot in the local Hugging Face cache, `localModelPath`).
@discardableResult
public func loadAdapter(_ path: String, onto model: CausalLM) throws -> PEFTMethod {
    let path = try localModelPath(path)
    let source = try ModelSource.detect(path)
    switch source.kind {
    case .peftFolder: return try importPEFTFolder(URL(fileURLWithPath: path), onto: model)
    case .mlxAdapter: return try importMLXAdapter(URL(fileURLWithPath: path), onto: model)
    case .adapter: return try AdapterCheckpoint.load(path, onto: model)
    case .ggufAdapter: return try importGGUFLoRA(path, onto: model)
    case .gguf:
        _ = try GGUFFile(path)  // a damaged file says what is wrong with it
        throw CheckpointError(path: path, message: """
            is a GGUF model (general.type is not "adapter"), not an adapter; expected a SwiftPEFT adapter checkpoint (adapter.h5), a PEFT adapter folder, an mlx-lm adapter folder or a llama.cpp GGUF LoRA
            """)
    default:
        throw CheckpointError(path: path, message: """
            is a \(source.kind.rawValue), not an adapter; expected a SwiftPEFT adapter checkpoint (adapter.h5), a PEFT adapter folder, an mlx-lm adapter folder or a llama.cpp GGUF LoRA
            """)
    }
}

/// The chat template the adapter at `path` was trained with, when it records one: a SwiftPEFT
/// adapter's `chat_template` (training writes it when the data went through another template than
/// the base's own, as `--chat-template` gives), a PEFT folder's `chat_template.jinja` or the
/// `chat_template` of its `tokenizer_config.json` (TRL saves the tokenizer beside the adapter).
/// nil: none recorded, so the base's own. `readable`: the template must be one this library can
/// run (a copy, as `export` makes, takes it as it is).
public func adapterChatTemplate(_ path: String, readable: Bool = true) throws -> String? {
    /// A recorded template this interpreter cannot read is an error (the base's would not be the one
    /// trained with), with the way around it.
    func checked(_ text: String, _ file: String) throws -> String {
        guard readable else { return text }
        do { _ = try ChatTemplate(text) } catch {
            throw CheckpointError(path: file, message: """
                the chat template the adapter records cannot be read: \(error)
                HINT: give the template to use with --chat-template.
                """)
        }
        return text
    }
    let path = try localModelPath(path)
    let source = try ModelSource.detect(path)
    switch source.kind {
    case .adapter:
        guard let bytes = try HDF5Store.open(path).blobs[AdapterCheckpoint.chatTemplateKey] else { return nil }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw CheckpointError(path: path, message: "the '\(AdapterCheckpoint.chatTemplateKey)' dataset is not UTF-8 text")
        }
        return try checked(text, path)
    case .peftFolder:
        let dir = URL(fileURLWithPath: path)
        let jinja = dir.appendingPathComponent(PEFTFolder.chatTemplateFile)
        if let data = FileManager.default.contents(atPath: jinja.path) {
            guard let text = String(data: data, encoding: .utf8) else {
                throw CheckpointError(path: jinja.path, message: "is not UTF-8 text")
            }
            return try checked(text, jinja.path)
        }
        // TRL saves the tokenizer beside the adapter: its config's "chat_template", a string or the
        // one named "default" of a list; null, absent or another form is none recorded.
        let config = dir.appendingPathComponent("tokenizer_config.json")
        guard let data = FileManager.default.contents(atPath: config.path),
              let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else { return nil }
        var text = object["chat_template"] as? String
        if let list = object["chat_template"] as? [[String: Any]] {
            text = list.first { $0["name"] as? String == "default" }?["template"] as? String
        }
        return try text.map { try checked($0, config.path) }
    case .ggufAdapter, .mlxAdapter:
        return nil  // llama.cpp's LoRA files and mlx-lm's adapter folders carry no chat template
    default:
        throw CheckpointError(path: path, message: """
            is a \(source.kind.rawValue), not an adapter; expected a SwiftPEFT adapter checkpoint (adapter.h5), a PEFT adapter folder, an mlx-lm adapter folder or a llama.cpp GGUF LoRA
            """)
    }
}

/// Sets the chat template of `tokenizer` (a base's) for the adapters at `adapterPaths`: the one in
/// `file` when given (`--chat-template`, which overrides every other); else the one the adapters
/// were trained with (`adapterChatTemplate`); else the base's own stays. A recorded template equal
/// to the base's own counts as none.
/// - Throws: a file that is not a template; adapters that record different templates (one prompt
///   cannot be written for both), naming them.
public func useChatTemplate(file: String?, adapters adapterPaths: [String], on tokenizer: BPETokenizer) throws {
    if let file {
        tokenizer.chatTemplate = try BPETokenizer.chatTemplate(fromFile: file)
        return
    }
    let own = tokenizer.chatTemplate
    let recorded = try adapterPaths.map { p in (p, try adapterChatTemplate(p).flatMap { $0 == own ? nil : $0 }) }
    guard let first = recorded.first else { return }
    if let other = recorded.first(where: { $0.1 != first.1 }) {
        func says(_ r: (String, String?)) -> String { r.1 == nil ? "\(r.0) uses the base's own" : "\(r.0) records its own (\(r.1!.utf8.count) bytes)" }
        throw CheckpointError(path: other.0, message: """
            the adapters were trained with different chat templates: \(says(first)); \(says(other)).
            HINT: give one with --chat-template, or run them separately.
            """)
    }
    if let t = first.1 { tokenizer.chatTemplate = t }
}

/// The `didLoad` of a loader with bf16-only weights (`CausalLM.bf16OnlyLoader`), or nil without.
func bf16OnlyLoader(_ model: CausalLM, enabled: Bool) -> ((String, Tensor) -> Void)? {
    enabled ? model.bf16OnlyLoader() : nil
}

/// Refuses, before anything is attached, an adapter that reads or trains base weights whose fp32
/// values were released (bf16-only weights): DoRA, `modules_to_save` on a released matrix.
func checkAttachable(_ method: PEFTMethod, to model: CausalLM, path: String) throws {
    guard model.hasReleasedWeights, let why = method.releasedWeightsConflict(in: model) else { return }
    throw CheckpointError(path: path, message: """
        \(why), and this base keeps only \(model.hasPackedWeights ? "the quantized blocks of its matrices (--keep-quantized)" : "bf16 copies of its matrices (bf16-only weights)").
        HINT: load the base with fp32 weights (\(model.hasPackedWeights ? "leave --keep-quantized out" : "--precision fp32 or bf16")) to use this adapter.
        """)
}

/// Refuses to write weights holding a NaN or infinite value (a diverged run, a bad merge), naming
/// the tensor; every model and adapter writer calls it before touching `path`.
public func checkFiniteWeights(_ tensors: [(String, Tensor)], writing path: String) throws {
    for (name, t) in tensors {
        if let bad = t.firstNonFinite() {
            throw CheckpointError(path: path, message: "not written: tensor '\(name)' holds \(bad.value) at element \(bad.index) (the weights diverged); the previous file, if any, is left as it was")
        }
    }
}

/// Throws when `config` implies far more parameters than the `elements` a weights file holds (over
/// twice as many, plus a million): the sizes in a config are checked against the weights before the
/// model is built and allocated. A smaller shortfall (a missing tensor) is left to the loader, whose
/// message names the tensor.
public func checkConfigFitsWeights(_ config: ModelConfig, elements: Int, file: String) throws {
    let needed = config.minimumParameterCount
    guard needed / 2 <= elements + (1 << 20) else {
        throw CheckpointError(path: file, message: """
            the config (vocab_size \(config.vocabSize), hidden_size \(config.hiddenSize), \(config.numLayers) layers, \
            intermediate_size \(config.intermediateSize)) implies at least \(needed) parameters, but the weights hold \(elements) values; \
            the config does not belong to these weights
            """)
    }
}
