// Adapter checkpoints in HDF5: only the adapter tensors (PEFT key names), the method's config
// (PEFT field names) and a fingerprint of the base (architecture + a hash of its weights), so an
// adapter is never silently loaded onto a different base.

import Foundation
import TensorCore
import NN
import Models
import Tokenizers
import PEFT
import Containers

/// Identifies a base model: its config and a hash over every parameter's name and bits.
public struct BaseFingerprint: Equatable, CustomStringConvertible {
    public let architecture: String
    public let weightsHash: String

    /// The config and `CausalLM.weightsHash()` (FNV-1a over the parameters' names and bits, in
    /// name order; for bf16-only weights, the hash taken before their fp32 values were released).
    public init(_ model: CausalLM) {
        architecture = BaseFingerprint.architecture(model.config)
        weightsHash = model.weightsHash()
    }

    /// The config as JSON with sorted keys and without its dropout rates: those are training
    /// settings, so an adapter fits a base whatever dropout the base trains with.
    public static func architecture(_ config: ModelConfig) -> String {
        var c = config
        (c.dropout, c.attentionDropout, c.embeddingDropout) = (0, nil, nil)
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        return String(decoding: (try? enc.encode(c)) ?? Data(), as: UTF8.self)
    }

    /// A recorded architecture as `architecture(_:)` gives it now; the text unchanged when it is not
    /// a config. Files saved before kept their dropout rates; and before sliding windows were
    /// enforced, a Mistral base was recorded without its window and with max_position_embeddings
    /// cut to it: such a record is read as `current`'s window when the numbers agree.
    public static func normalized(architecture text: String, current: ModelConfig? = nil) -> String {
        guard var c = try? JSONDecoder().decode(ModelConfig.self, from: Data(text.utf8)) else { return text }
        if let current, let w = current.slidingWindow, c.slidingWindow == nil, c.family == .llama,
           c.maxPositions == min(current.maxPositions, w) {
            (c.maxPositions, c.slidingWindow) = (current.maxPositions, w)
        }
        return architecture(c)
    }

    public init(architecture: String, weightsHash: String) {
        self.architecture = architecture
        self.weightsHash = weightsHash
    }

    public var description: String { "weights \(weightsHash), architecture \(architecture)" }

    /// How `other` (the base an adapter was trained on) differs from this base, in a line: the
    /// config fields whose values differ ("hidden_size 576 there, 32 here"), or the weights' hashes
    /// when the configs agree ("weights hash 1a2b… there, 3c4d… here").
    public func difference(from other: BaseFingerprint) -> String {
        guard architecture == other.architecture else {
            func fields(_ s: String) -> [String: String]? {
                (try? JSONSerialization.jsonObject(with: Data(s.utf8)) as? [String: Any])?.mapValues { v in
                    (try? JSONSerialization.data(withJSONObject: v, options: [.sortedKeys, .fragmentsAllowed])).map { String(decoding: $0, as: UTF8.self) } ?? "\(v)"
                }
            }
            guard let here = fields(architecture), let there = fields(other.architecture) else {
                return "architecture \(other.architecture) there, \(architecture) here"
            }
            let fieldsDiffering = Set(here.keys).union(there.keys).sorted().compactMap { k in
                here[k] == there[k] ? nil : "\(k) \(there[k] ?? "absent") there, \(here[k] ?? "absent") here"
            }
            return fieldsDiffering.isEmpty ? "architecture \(other.architecture) there, \(architecture) here" : fieldsDiffering.joined(separator: "; ")
        }
        return "weights hash \(other.weightsHash) there, \(weightsHash) here"
    }
}

/// Save and load adapters (any registered PEFT method) as HDF5.
public enum AdapterCheckpoint {
    public static let format = "swiftpeft-adapter"
    /// The dataset holding the chat template the adapter was trained with (UTF-8), when it was not
    /// the base's own (`adapterChatTemplate` reads it).
    public static let chatTemplateKey = "chat_template"

    /// Writes the method's adapter tensors, config and the base's fingerprint to `path` atomically;
    /// `chatTemplate`: the template the training data went through, when it was not the base's own.
    public static func save(_ method: PEFTMethod, base: CausalLM, chatTemplate: String? = nil, to path: String) throws {
        try save(method, fingerprint: BaseFingerprint(base), chatTemplate: chatTemplate, to: path)
    }

    /// Same, with the base's fingerprint taken earlier (before training changed anything).
    public static func save(_ method: PEFTMethod, fingerprint fp: BaseFingerprint, chatTemplate: String? = nil, to path: String) throws {
        try checkFiniteWeights(method.adapterParameters(), writing: path)
        try HDF5Store.write(path, tensors: method.adapterParameters(),
                            blobs: chatTemplate.map { [(chatTemplateKey, Array($0.utf8))] } ?? [], attributes: [
            "format": format, "version": "1",
            "peft_type": type(of: method).peftType, "adapter_name": method.name,
            "config": String(decoding: try method.configJSON(), as: UTF8.self),
            "base_weights_hash": fp.weightsHash, "base_architecture": fp.architecture,
        ])
    }

    /// Rebuilds the method from `path`, attaches it to `model` and loads its tensors.
    /// - Throws: when the file is not an adapter, or was trained on a different base (naming how
    ///   they differ; `checkBase: false` loads it anyway), or a tensor is missing or has another shape.
    @discardableResult
    public static func load(_ path: String, onto model: CausalLM, checkBase: Bool = true) throws -> PEFTMethod {
        let (tensors, _, attrs) = try HDF5Store.read(path)  // the blobs: its chat template (adapterChatTemplate)
        guard attrs["format"] == format, let type = attrs["peft_type"], let config = attrs["config"] else {
            throw CheckpointError(path: path, message: "not a SwiftPEFT adapter (format attribute \(attrs["format"].map { "'\($0)'" } ?? "missing"), expected '\(format)')")
        }
        if checkBase {
            let mine = BaseFingerprint(model)
            let theirs = BaseFingerprint(architecture: BaseFingerprint.normalized(architecture: attrs["base_architecture"] ?? "?",
                                                                                  current: model.config),
                                         weightsHash: attrs["base_weights_hash"] ?? "?")
            guard mine == theirs else {
                let what = mine.architecture == theirs.architecture ? "the same architecture with other weights" : "a different architecture"
                throw CheckpointError(path: path, message: """
                    this adapter was trained on another base model (\(what)): \(mine.difference(from: theirs)) \
                    ("there": the adapter's base, "here": the base given).
                    HINT: load the base it was trained on.
                    """)
            }
        }
        let method: PEFTMethod
        do {
            method = try PEFTRegistry.make(type, config: Data(config.utf8), name: attrs["adapter_name"] ?? "default", restoring: true)
        } catch {
            throw CheckpointError(path: path, message: "the \(type) adapter's config attribute: \(error)")
        }
        try checkAttachable(method, to: model, path: path)
        do { try method.attach(to: model) } catch {
            throw CheckpointError(path: path, message: "cannot attach the \(type) adapter to this base: \(error)")
        }
        // All or nothing: a bad tensor leaves the model as it was, not half adapted.
        do {
            let used = try method.loadAdapterParameters(tensors, source: path)
            if let extra = tensors.keys.sorted().first(where: { !used.contains($0) }) {
                throw CheckpointError(path: path, message: """
                    tensor '\(extra)' is not used by the \(type) adapter its config describes (it expects \(used.count) tensors); \
                    the file is damaged or was not written by SwiftPEFT
                    """)
            }
        } catch {
            method.detach(from: model)
            throw error
        }
        return method
    }
}
