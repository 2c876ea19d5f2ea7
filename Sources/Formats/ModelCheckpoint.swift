// Full model checkpoints in HDF5: the config (JSON attribute), every weight as a float32 dataset
// named by its Hugging Face key, and optionally the tokenizer (tokenizer.json bytes). Readable by
// h5py: `h5py.File(p)["model.layers.0.self_attn.q_proj.weight"][:]`, `json.loads(f.attrs["config"])`.

import Foundation
import TensorCore
import NN
import Models
import Tokenizers
import PEFT
import Containers

/// Save and load whole models (base or merged) as HDF5.
public enum ModelCheckpoint {
    public static let format = "swiftpeft-model"
    public static let version = "1"

    /// Writes `model` (every parameter, frozen or not) and its tokenizer, with the tokenizer's roles
    /// and chat template (`tokenizer_config.json`: its EOS is the same when loaded back, not guessed),
    /// to `path` atomically.
    public static func save(_ model: CausalLM, tokenizer: BPETokenizer?, to path: String, metadata: [String: String] = [:]) throws {
        try save(model, tokenizerJSON: tokenizer?.tokenizerJSON(), tokenizerConfigJSON: tokenizer?.tokenizerConfigJSON(), to: path, metadata: metadata)
    }

    /// Writes `model` (every parameter, frozen or not) and the tokenizer's files to `path` atomically;
    /// without `tokenizerConfigJSON` the roles are guessed from the token names when loaded.
    public static func save(_ model: CausalLM, tokenizerJSON: String?, tokenizerConfigJSON: String? = nil, to path: String,
                            metadata: [String: String] = [:]) throws {
        try checkFiniteWeights(model.namedParameters(), writing: path)
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        let config = String(decoding: try enc.encode(model.config), as: UTF8.self)
        var attrs = metadata
        attrs["format"] = format
        attrs["version"] = version
        attrs["config"] = config
        try HDF5Store.write(path, tensors: model.namedParameters(),
                            blobs: [("tokenizer.json", tokenizerJSON), ("tokenizer_config.json", tokenizerConfigJSON)]
                                .compactMap { name, text in text.map { (name, Array($0.utf8)) } },
                            attributes: attrs)
    }

    /// Reads a checkpoint written by `save`; the model comes back frozen and in eval mode.
    /// - Throws: naming the file, and the tensor and both shapes when a weight does not fit the config.
    /// `bf16Only` keeps only bf16 copies of the frozen matrices (`DecodePrecision.bf16Only`).
    public static func load(_ path: String, seed: UInt64 = 0, bf16Only: Bool = false)
        throws -> (model: CausalLM, tokenizerJSON: String?, tokenizerConfigJSON: String?, metadata: [String: String]) {
        let file = try HDF5Store.open(path)  // tensors are read one at a time while loading
        let (blobs, attrs) = (file.blobs, file.attributes)
        guard attrs["format"] == format else {
            throw CheckpointError(path: path, message: "not a SwiftPEFT model checkpoint (format attribute is \(attrs["format"].map { "'\($0)'" } ?? "missing"), expected '\(format)')")
        }
        guard let cfg = attrs["config"] else { throw CheckpointError(path: path, message: "the 'config' attribute is missing") }
        let config: ModelConfig
        do {
            config = try JSONDecoder().decode(ModelConfig.self, from: Data(cfg.utf8))
            try config.validate()
        } catch {
            throw CheckpointError(path: path, message: "bad config: \(error)")
        }
        try checkConfigFitsWeights(config, elements: file.reader.elementCount, file: path)
        let model = WeightInit.skipped { makeModel(config, seed: seed) }  // every weight is loaded below (strict)
        model.freeze()
        let didLoad = bf16OnlyLoader(model, enabled: bf16Only)
        do {
            try model.loadParameters(file.reader, source: path, didLoad: didLoad)
        } catch let e as WeightLoadError {
            throw CheckpointError(path: path, message: e.message.replacingOccurrences(of: path + ": ", with: ""))
        }
        model.eval()
        let text = { (name: String) in blobs[name].map { String(decoding: $0, as: UTF8.self) } }
        return (model, text("tokenizer.json"), text("tokenizer_config.json"), attrs.filter { !["format", "version", "config"].contains($0.key) })
    }
}
