// Hugging Face model folders: config.json (llama / mistral / qwen2 / gpt2) ↔ ModelConfig, weights in
// model.safetensors (or shards listed by model.safetensors.index.json), and tokenizer.json. Saved
// folders load in transformers with `AutoModelForCausalLM.from_pretrained(folder)`.

import Foundation
import TensorCore
import NN
import Models
import Tokenizers
import PEFT
import Containers

/// A Hugging Face model folder that cannot be loaded or saved: names the file and what was wrong.
public typealias HFModelError = CheckpointError

/// The `model_type`s `loadHFModel` accepts (SmolLM checkpoints use "llama").
public let supportedHFModelTypes = ["gpt2", "llama", "mistral", "qwen2"]

/// Whether `path` is a folder holding a `config.json` (a Hugging Face model folder).
public func isHFModelFolder(_ path: String) -> Bool {
    var isDir: ObjCBool = false
    return FileManager.default.fileExists(atPath: path, isDirectory: &isDir) && isDir.boolValue
        && FileManager.default.fileExists(atPath: URL(fileURLWithPath: path).appendingPathComponent("config.json").path)
}

/// Our configuration for a Hugging Face `config.json` (parsed JSON object); `file` names it in errors.
/// - Throws: `HFModelError` for an unsupported `model_type` or option (e.g. `rope_scaling`), or a
///   missing / mistyped field, naming the field.
public func hfModelConfig(_ json: [String: Any], file: String) throws -> ModelConfig {
    func fail(_ m: String) -> HFModelError { HFModelError(path: file, message: m) }
    func present(_ k: String) -> Any? { json[k].flatMap { $0 is NSNull ? nil : $0 } }
    func int(_ k: String, _ def: Int? = nil) throws -> Int {
        guard let v = present(k) else {
            guard let d = def else { throw fail("\"\(k)\" is missing (expected an integer)") }
            return d
        }
        // Sizes beyond 2^31 are not a model's: refuse them before any arithmetic (n_embd 1e308 trapped).
        guard let n = v as? NSNumber, let i = Int(exactly: n.doubleValue), abs(i) <= 1 << 31 else {
            throw fail("\"\(k)\" is \(v), expected an integer of at most 2^31")
        }
        return i
    }
    func float(_ k: String, _ def: Float) throws -> Float {
        guard let v = present(k) else { return def }
        guard let n = v as? NSNumber else { throw fail("\"\(k)\" is \(v), expected a number") }
        return n.floatValue
    }
    /// A dropout probability in [0, 1).
    func rate(_ k: String, _ def: Float) throws -> Float {
        let r = try float(k, def)
        guard r >= 0 && r < 1 else { throw fail("\"\(k)\" is \(r), expected a dropout probability in [0, 1)") }
        return r
    }
    func bool(_ k: String, _ def: Bool) throws -> Bool {
        guard let v = present(k) else { return def }
        guard let b = v as? Bool else { throw fail("\"\(k)\" is \(v), expected true or false") }
        return b
    }
    func string(_ k: String, _ def: String) throws -> String {
        guard let v = present(k) else { return def }
        guard let s = v as? String else { throw fail("\"\(k)\" is \(v), expected a string") }
        return s
    }
    guard let type = present("model_type") as? String else { throw fail("\"model_type\" is missing or not a string") }
    guard supportedHFModelTypes.contains(type) else {
        throw fail("model_type \"\(type)\" is not supported; supported: \(supportedHFModelTypes.joined(separator: ", "))")
    }
    // RoPE: transformers ≥ 5 writes `rope_parameters` {rope_type, rope_theta, …}; older saves `rope_theta`
    // and `rope_scaling`. Plain RoPE and Llama 3.1's scaling ("llama3") are supported.
    var ropeTheta = try float("rope_theta", 10000)
    var ropeScaling: RopeScaling?
    for key in ["rope_scaling", "rope_parameters"] {
        guard let rs = present(key) else { continue }
        let text = String(describing: rs).replacingOccurrences(of: "\n", with: " ")
        guard let obj = rs as? [String: Any] else { throw fail("\(key) \(text) is not a JSON object") }
        let kind = (obj["rope_type"] ?? obj["type"]) as? String ?? "default"
        guard kind == "default" || kind == "llama3" else {
            throw fail("\(key) with rope_type \"\(kind)\" is not supported (only plain RoPE, rope_type \"default\", and \"llama3\")")
        }
        if let t = obj["rope_theta"] as? NSNumber { ropeTheta = t.floatValue }
        if kind == "llama3" {
            func number(_ k: String) throws -> Double {
                guard let n = obj[k] as? NSNumber else {
                    throw fail("\(key) (llama3) needs a number \"\(k)\", found \(obj[k].map { "\($0)" } ?? "none")")
                }
                return n.doubleValue
            }
            let original = try number("original_max_position_embeddings")
            guard original == original.rounded(), original > 0, original < 1e9 else {
                throw fail("\(key): original_max_position_embeddings \(original) is not a positive integer")
            }
            ropeScaling = RopeScaling(factor: Float(try number("factor")), lowFreqFactor: Float(try number("low_freq_factor")),
                                      highFreqFactor: Float(try number("high_freq_factor")), originalMaxPositions: Int(original))
        }
    }
    if let lt = present("layer_types") {
        guard let types = lt as? [String], types.allSatisfy({ $0 == "full_attention" }) else {
            throw fail("layer_types \(lt) is not supported (only full_attention layers)")
        }
    }
    let config: ModelConfig
    if type == "gpt2" {
        let act = try string("activation_function", "gelu_new")
        let mlp: ModelConfig.MLP
        switch act {
        case "gelu_new", "gelu_pytorch_tanh", "gelu_fast": mlp = .geluTanh
        case "gelu": mlp = .gelu
        default: throw fail("activation_function \"\(act)\" is not supported (expected gelu_new or gelu)")
        }
        if try bool("scale_attn_by_inverse_layer_idx", false) { throw fail("scale_attn_by_inverse_layer_idx true is not supported") }
        if try bool("reorder_and_upcast_attn", false) { throw fail("reorder_and_upcast_attn true is not supported") }
        if try !bool("scale_attn_weights", true) { throw fail("scale_attn_weights false is not supported") }
        let c = try int("n_embd")
        var cfg = ModelConfig.gpt2(vocabSize: try int("vocab_size"), hiddenSize: c, numLayers: try int("n_layer"),
                                   numHeads: try int("n_head"), intermediateSize: try int("n_inner", 4 * c),
                                   maxPositions: try int("n_positions", 1024))
        cfg.normEps = try float("layer_norm_epsilon", 1e-5)
        cfg.mlp = mlp
        cfg.tieWordEmbeddings = try bool("tie_word_embeddings", true)
        // GPT2Config's defaults are 0.1, so a folder without these keys trains with 0.1, as in transformers.
        let (resid, embd) = (try rate("resid_pdrop", 0.1), try rate("embd_pdrop", 0.1))
        cfg.dropout = resid
        cfg.embeddingDropout = embd == resid ? nil : embd
        let attn = try rate("attn_pdrop", 0.1)
        cfg.attentionDropout = attn > 0 ? attn : nil
        config = cfg
    } else {
        let act = try string("hidden_act", "silu")
        guard act == "silu" || act == "swish" else { throw fail("hidden_act \"\(act)\" is not supported (expected silu)") }
        let (c, heads) = (try int("hidden_size"), try int("num_attention_heads"))
        if let hd = present("head_dim"), heads > 0, (hd as? NSNumber)?.intValue != c / heads {
            throw fail("head_dim \(hd) differs from hidden_size / num_attention_heads = \(c / max(heads, 1)); not supported")
        }
        var attentionBias = type == "qwen2"
        var projectionBias = false
        if type != "qwen2" {
            let ab = try bool("attention_bias", false), mb = try bool("mlp_bias", false)
            guard ab == mb else {
                throw fail("attention_bias \(ab) with mlp_bias \(mb) is not supported (both or neither)")
            }
            (attentionBias, projectionBias) = (ab, mb)
        }
        if type == "qwen2", try bool("use_sliding_window", false) {
            throw fail("use_sliding_window true is not supported")
        }
        var window: Int?
        if type == "mistral" {  // MistralConfig's default window is 4096; an explicit null means none
            if json["sliding_window"] == nil { window = 4096 }
            if let w = present("sliding_window") {
                guard let n = (w as? NSNumber)?.intValue, n > 0 else { throw fail("sliding_window \(w) is not a positive integer") }
                window = n
            }
        }
        // What transformers' config classes assume for keys a config.json leaves out.
        let (kvDefault, positionsDefault) = type == "mistral" ? (8, 131_072) : type == "qwen2" ? (32, 32_768) : (heads, 2048)
        var cfg = ModelConfig.llama(vocabSize: try int("vocab_size"), hiddenSize: c, numLayers: try int("num_hidden_layers"),
                                    numHeads: heads, numKVHeads: present("num_key_value_heads") == nil && json["num_key_value_heads"] != nil
                                        ? heads : try int("num_key_value_heads", kvDefault),  // null: one per head
                                    intermediateSize: try int("intermediate_size"), ropeTheta: ropeTheta,
                                    normEps: try float("rms_norm_eps", 1e-6), attentionBias: attentionBias,
                                    tieWordEmbeddings: try bool("tie_word_embeddings", false),
                                    maxPositions: try int("max_position_embeddings", positionsDefault))
        cfg.projectionBias = projectionBias
        cfg.slidingWindow = window
        cfg.ropeScaling = ropeScaling
        let attn = try rate("attention_dropout", 0)
        cfg.attentionDropout = attn > 0 ? attn : nil
        config = cfg
    }
    do {
        try config.validate()
    } catch {
        throw fail("\(error)")
    }
    return config
}

/// The Float as the Double its shortest decimal form reads as (1e-06, not 9.99999997e-07).
private func shortest(_ x: Float) -> Double { Double(String(x)) ?? Double(x) }

/// The Hugging Face `config.json` object for `config` (model_type, architectures, torch_dtype float32).
/// Dropout rates go into GPT-2's `*_pdrop` and LLaMA's `attention_dropout`; a LLaMA-family residual
/// or embedding dropout (a SwiftPEFT training setting) has no transformers field and is not written.
/// - Throws: `HFModelError` when transformers has no equivalent (e.g. GPT-2 without biases).
public func hfConfigJSON(_ config: ModelConfig, file: String = "config.json") throws -> [String: Any] {
    var j: [String: Any] = ["torch_dtype": "float32", "vocab_size": config.vocabSize,
                            "tie_word_embeddings": config.tieWordEmbeddings]
    switch config.family {
    case .gpt2:
        guard config.attentionBias, config.projectionBias, config.numKVHeads == config.numHeads,
              config.norm == .layerNorm, config.positions == .learned, config.mlp != .swiglu, config.slidingWindow == nil else {
            throw HFModelError(path: file, message: "this GPT-2 configuration (biases, heads, norm, MLP or window) has no transformers equivalent")
        }
        j["model_type"] = "gpt2"
        j["architectures"] = ["GPT2LMHeadModel"]
        j["n_embd"] = config.hiddenSize
        j["n_layer"] = config.numLayers
        j["n_head"] = config.numHeads
        j["n_inner"] = config.intermediateSize
        j["n_positions"] = config.maxPositions
        j["n_ctx"] = config.maxPositions
        j["layer_norm_epsilon"] = shortest(config.normEps)
        j["activation_function"] = config.mlp == .gelu ? "gelu" : "gelu_new"
        j["resid_pdrop"] = shortest(config.dropout)
        j["embd_pdrop"] = shortest(config.embeddingDropout ?? config.dropout)
        j["attn_pdrop"] = shortest(config.attentionDropout ?? 0)
    case .llama:
        guard config.norm == .rmsNorm, config.positions == .rope, config.mlp == .swiglu else {
            throw HFModelError(path: file, message: "this LLaMA configuration (norm, positions or MLP) has no transformers equivalent")
        }
        let qwen = config.attentionBias && !config.projectionBias
        guard qwen || config.attentionBias == config.projectionBias else {
            throw HFModelError(path: file, message: "projection biases without attention biases have no transformers equivalent")
        }
        if let window = config.slidingWindow {  // Mistral: no biases, a window
            guard !config.attentionBias && !config.projectionBias else {
                throw HFModelError(path: file, message: "a sliding window with biases has no transformers equivalent (Mistral has no biases)")
            }
            j["model_type"] = "mistral"
            j["architectures"] = ["MistralForCausalLM"]
            j["sliding_window"] = window
        } else if qwen {
            j["model_type"] = "qwen2"
            j["architectures"] = ["Qwen2ForCausalLM"]
            j["use_sliding_window"] = false
        } else {
            j["model_type"] = "llama"
            j["architectures"] = ["LlamaForCausalLM"]
            j["attention_bias"] = config.attentionBias
            j["mlp_bias"] = config.projectionBias
        }
        j["hidden_size"] = config.hiddenSize
        j["num_hidden_layers"] = config.numLayers
        j["num_attention_heads"] = config.numHeads
        j["num_key_value_heads"] = config.numKVHeads
        j["intermediate_size"] = config.intermediateSize
        j["rms_norm_eps"] = shortest(config.normEps)
        j["rope_theta"] = shortest(config.ropeTheta)
        if let r = config.ropeScaling {
            j["rope_scaling"] = ["rope_type": "llama3", "factor": shortest(r.factor), "low_freq_factor": shortest(r.lowFreqFactor),
                                 "high_freq_factor": shortest(r.highFreqFactor), "original_max_position_embeddings": r.originalMaxPositions]
        }
        j["max_position_embeddings"] = config.maxPositions
        j["hidden_act"] = "silu"
        j["attention_dropout"] = shortest(config.attentionDropout ?? 0)  // LLaMA has no residual dropout field
    }
    return j
}

/// Loads a Hugging Face model folder: `config.json`, `model.safetensors` (or its shards) and,
/// if present, `tokenizer.json`. The model comes back frozen and in eval mode. An mlx-lm folder
/// (`mlx_lm.convert`, the mlx-community models) loads too: its quantized layers (mlx's affine mode,
/// 1–8 bits, per-layer settings included) are dequantized to Float32, and its GPT-2 layout
/// ("model."-prefixed keys, (out, in) matrices) is read as transformers' (`MLXModel`).
///
/// Keys are matched one for one with the model's parameters; a tied `lm_head.weight`, attention-mask
/// buffers (`attn.bias`, `attn.masked_bias`) and `rotary_emb.inv_freq` are ignored, and GPT-2 keys
/// saved without the `transformer.` prefix (`h.0.attn.c_attn.weight`, `wte.weight`) are accepted.
/// - Throws: `HFModelError`, `SafetensorsError` or `TokenizerError`, naming the file (and tensor).
/// `bf16Only` keeps only bf16 copies of the frozen matrices (`DecodePrecision.bf16Only`).
/// `keepQuantized` (an mlx-lm quantized LLaMA-family folder): each block's quantized matrices keep
/// their packed words, scales and biases, each product decoding them (`Tensor.keepPackedOnly`), as
/// `loadGGUFModel(keepQuantized:)` keeps a GGUF file's blocks; with `quantizedEmbedding` the token
/// embedding and output head too. A folder without quantized layers is refused with it.
public func loadHFModel(_ folder: String, seed: UInt64 = 0, bf16Only: Bool = false, keepQuantized: Bool = false,
                        quantizedEmbedding: Bool = false) throws -> (model: CausalLM, tokenizer: BPETokenizer?) {
    check(keepQuantized || !quantizedEmbedding, "[loadHFModel] quantizedEmbedding needs keepQuantized")
    check(!(keepQuantized && bf16Only), "[loadHFModel] keepQuantized and bf16Only exclude each other")
    let dir = URL(fileURLWithPath: folder)
    let configPath = dir.appendingPathComponent("config.json").path
    guard FileManager.default.fileExists(atPath: configPath) else {
        throw HFModelError(path: folder, message: "no config.json in the folder (not a Hugging Face model folder)")
    }
    let obj: Any
    do {
        obj = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: configPath)))
    } catch {
        throw HFModelError(path: configPath, message: "not valid JSON (\(jsonSyntaxDetail(error)))")
    }
    guard let json = obj as? [String: Any] else { throw HFModelError(path: configPath, message: "the top level is not a JSON object") }
    let config = try hfModelConfig(json, file: configPath)

    // Keys as the model names them; the values are read one tensor at a time while loading. An
    // mlx-lm folder's quantized layers are dequantized and its GPT-2 layout undone first (MLXModel).
    let mlx = try MLXModel.reader(Safetensors.folderFiles(folder), config: json, family: config.family, configPath: configPath)
    let file = mlx.reader
    if keepQuantized && (mlx.packed.isEmpty || config.family == .gpt2) {
        throw HFModelError(path: folder, message: mlx.packed.isEmpty && mlx.quantized.isEmpty
            ? "has no quantized layers to keep (--keep-quantized keeps an mlx-lm quantized folder's packed matrices, or a GGUF file's blocks)"
            : "is an mlx-lm quantized GPT-2; its matrices cannot be kept packed (GPT-2's Conv1D layout), only dequantized: leave --keep-quantized out")
    }
    var keyToName: [String: String] = [:]
    for name in file.shapes.keys.sorted() {
        var k = name
        if config.family == .gpt2, !k.hasPrefix("transformer."), !k.hasPrefix("lm_head.") { k = "transformer." + k }
        if k.hasSuffix(".attn.bias") || k.hasSuffix(".attn.masked_bias") || k.hasSuffix("rotary_emb.inv_freq") { continue }
        if config.tieWordEmbeddings, k == "lm_head.weight" { continue }
        guard keyToName[k] == nil else {
            throw HFModelError(path: folder, message: "tensor '\(k)' appears twice (with and without the 'transformer.' prefix)")
        }
        keyToName[k] = name
    }
    let weights = TensorReader(renaming: file, keyToName)
    let single = dir.appendingPathComponent("model.safetensors").path  // read before an index, as `folderReader` does
    let source = FileManager.default.fileExists(atPath: single) ? single : dir.appendingPathComponent("model.safetensors.index.json").path
    try checkConfigFitsWeights(config, elements: weights.elementCount, file: configPath)
    let model = WeightInit.skipped { makeModel(config, seed: seed) }  // every weight is loaded below
    model.freeze()
    let didLoad = bf16OnlyLoader(model, enabled: bf16Only)
    // Kept packed: each block's quantized matrices (and the embedding and head with
    // quantizedEmbedding), their Float32 values never written; the check reads them a slab at a time.
    var kept: Set<String> = []
    if keepQuantized {
        for (name, p) in model.namedParameters().sorted(by: { $0.0 < $1.0 }) {
            guard let make = mlx.packed[keyToName[name] ?? ""], name.hasPrefix("model.layers.")
                    || quantizedEmbedding && (name == "model.embed_tokens.weight" || name == "lm_head.weight") else { continue }
            guard weights.shapes[name] == p.shape else { continue }  // loadParameters names the mismatch
            let packed = try make()
            p.keepPackedOnly(packed)
            try packed.forEachSlab { values, first in
                if let i = firstNonFiniteIndex(values) {
                    throw HFModelError(path: source, message: "tensor '\(keyToName[name]!)' holds \(values[i]) at element \(first + i) after dequantization; the weights are corrupt")
                }
            }
            kept.insert(name)
        }
    }
    do {
        try model.loadParameters(weights, source: source, filledElsewhere: kept, didLoad: didLoad)
    } catch let e as WeightLoadError {
        throw HFModelError(path: source, message: e.message.replacingOccurrences(of: source + ": ", with: ""))
    }
    model.eval()
    let tokPath = dir.appendingPathComponent("tokenizer.json")
    let tokenizer = FileManager.default.fileExists(atPath: tokPath.path) ? try BPETokenizer.load(from: tokPath) : nil
    if let tok = tokenizer, tok.vocabSize > config.vocabSize {
        throw HFModelError(path: tokPath.path, message: "the tokenizer has \(tok.vocabSize) tokens, more than the model's vocab_size \(config.vocabSize)")
    }
    return (model, tokenizer)
}

/// Saves `model` as a Hugging Face folder: `config.json` (sorted keys), `model.safetensors` (F32,
/// HF keys, a tied `lm_head.weight` left out as transformers does) and `tokenizer.json` if given.
/// Creates the folder if needed; the files appear together or not at all (`writeFolderAtomically`:
/// other files already in the folder are kept).
/// - from: the Hugging Face folder the model came from (a merge's base), if any: its
///   `tokenizer_config.json` keys (a chat template) and its `generation_config.json` come along.
/// - Throws: `HFModelError` when the configuration has no transformers equivalent, or on I/O errors.
public func saveHFModel(_ model: CausalLM, tokenizer: BPETokenizer?, to folder: String, from base: String? = nil) throws {
    let ids = [("bos_token_id", tokenizer?.bosTokenID), ("eos_token_id", tokenizer?.eosTokenID), ("pad_token_id", tokenizer?.padTokenID)]
    func file(_ dir: String, _ name: String) -> Data? { FileManager.default.contents(atPath: URL(fileURLWithPath: dir).appendingPathComponent(name).path) }
    func tokenizerConfig(_ dir: String) -> [String: Any]? {
        file(dir, "tokenizer_config.json").flatMap { (try? JSONSerialization.jsonObject(with: $0)) as? [String: Any] }
    }
    // Saved over a model folder (or from one), its tokenizer_config.json keeps everything but the roles.
    let existing = tokenizerConfig(folder) ?? base.flatMap(tokenizerConfig)
    try saveHFModel(model, tokenizerJSON: tokenizer?.tokenizerJSON(), tokenizerConfigJSON: tokenizer?.tokenizerConfigJSON(over: existing),
                    specialTokenIDs: Dictionary(uniqueKeysWithValues: ids.compactMap { k, v in v.map { (k, Int($0)) } }),
                    extraFiles: base.flatMap { b in file(b, "generation_config.json").map { [("generation_config.json", $0)] } } ?? [],
                    to: folder)
}

/// `saveHFModel(_:tokenizer:to:)` from the tokenizer's files: `tokenizer_config.json` (its roles)
/// beside `tokenizer.json`, and `specialTokenIDs` (`eos_token_id` …) in `config.json`, where
/// transformers' `generate` looks for the token that ends a text.
public func saveHFModel(_ model: CausalLM, tokenizerJSON: String?, tokenizerConfigJSON: String? = nil,
                        specialTokenIDs: [String: Int] = [:], extraFiles: [(name: String, data: Data)] = [], to folder: String) throws {
    try checkFiniteWeights(model.namedParameters(), writing: folder)
    let dir = URL(fileURLWithPath: folder)
    var config = try hfConfigJSON(model.config, file: dir.appendingPathComponent("config.json").path)
    config.merge(specialTokenIDs) { $1 }
    let tensors = model.namedParameters().filter { !(model.config.tieWordEmbeddings && $0.0 == "lm_head.weight") }
    let tokenizerFiles = [("tokenizer.json", tokenizerJSON), ("tokenizer_config.json", tokenizerConfigJSON)].compactMap { n, t in t.map { (n, $0) } }
    let files = tokenizerFiles.map(\.0) + extraFiles.map(\.name) + ["model.safetensors", "config.json"]  // config last: it makes the folder a model
    // Saved over a sharded model: its index and shards would stand beside the new single file.
    let index = dir.appendingPathComponent("model.safetensors.index.json")
    let shards = (FileManager.default.contents(atPath: index.path).flatMap { (try? JSONSerialization.jsonObject(with: $0)) as? [String: Any] }?["weight_map"]
        as? [String: String]).map { Set($0.values).sorted() } ?? []
    // Only plain shard file names of this folder: an index naming "..", "." or a file written here drops nothing more.
    let droppable = shards.filter { $0 == URL(fileURLWithPath: $0).lastPathComponent && !["", ".", ".."].contains($0)
        && $0.hasSuffix(".safetensors") && !files.contains($0) }
    let dropping = FileManager.default.fileExists(atPath: index.path) ? ["model.safetensors.index.json"] + droppable : []
    try writeFolderAtomically(dir, files: files, dropping: dropping) { tmp in
        try Safetensors.write(tmp.appendingPathComponent("model.safetensors").path, tensors: tensors, metadata: ["format": "pt"])
        do {
            try JSONSerialization.data(withJSONObject: config, options: [.sortedKeys, .prettyPrinted]).write(to: tmp.appendingPathComponent("config.json"))
            for (name, text) in tokenizerFiles { try Data(text.utf8).write(to: tmp.appendingPathComponent(name)) }
            for (name, data) in extraFiles { try data.write(to: tmp.appendingPathComponent(name)) }
        } catch {
            throw HFModelError(path: folder, message: "cannot write: \((error as NSError).localizedDescription)")
        }
    }
}
