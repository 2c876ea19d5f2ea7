// llama.cpp's formats written (and its LoRA adapters read back):
// - a LoRA adapter as llama.cpp's `convert_lora_to_gguf.py` writes one (`general.type` "adapter",
//   `adapter.type` "lora", `adapter.lora.alpha`; `blk.N.attn_q.weight.lora_a` (r, in) and `.lora_b`
//   (out, r) in F32, B's rows in llama.cpp's Q/K order), which `llama-cli --lora` and Ollama's ADAPTER load;
// - a full (merged) LLaMA-family model as `convert_hf_to_gguf.py` writes one: `llama.*` hyperparameters,
//   the byte-level BPE tokenizer as `tokenizer.ggml.*`, the chat template, weights in F32, F16, BF16 or Q8_0.

import Foundation
import TensorCore
import NN
import Models
import Tokenizers
import PEFT
import Containers

/// The llama.cpp architecture a base model is written as, and whether its Q/K rows are permuted.
public struct GGUFArchitecture: Equatable, Sendable {
    /// `general.architecture`: "llama" (LLaMA, Mistral, SmolLM) or "qwen2".
    public let name: String
    /// llama.cpp's converter interleaves the rotary halves of Q and K rows for "llama", not for "qwen2".
    public var permutesQK: Bool { name == "llama" }

    /// The architecture llama.cpp gives `base`: a GGUF file's own, else its configuration's as
    /// `convert_hf_to_gguf.py` maps `model_type` (llama and mistral → "llama", qwen2 → "qwen2").
    /// - Throws: for GPT-2 bases (llama.cpp's converter cannot carry their Conv1D LoRA).
    public static func of(_ base: LoadedModel) throws -> GGUFArchitecture {
        if base.source.kind == .gguf, let arch = try GGUFFile(base.source.path).architecture { return GGUFArchitecture(name: arch) }
        return try of(base.model.config, path: base.source.path)
    }

    /// The architecture of a model of `config` (Qwen2's: attention biases, no others, no window).
    static func of(_ c: ModelConfig, path: String) throws -> GGUFArchitecture {
        guard c.family == .llama else {
            throw CheckpointError(path: path, message: "not written: a \(c.family) model has no GGUF export here (only the LLaMA family: llama, mistral, qwen2, SmolLM)")
        }
        return GGUFArchitecture(name: c.isQwen2 ? "qwen2" : "llama")
    }
}

extension GGUFFile {
    /// The GGUF name of a LLaMA-family Hugging Face key (`model.layers.3.self_attn.q_proj.weight` →
    /// `blk.3.attn_q.weight`), the inverse of `huggingFaceName(forGGUF:)`; nil for a key without one.
    public static func ggufName(forHuggingFace key: String) -> String? {
        if let f = llamaFixedNames.first(where: { $0.value == key })?.key { return f }
        let parts = key.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count >= 5, parts[0] == "model", parts[1] == "layers", let layer = Int(parts[2]), String(layer) == parts[2],
              let suffix = parts.last, suffix == "weight" || suffix == "bias" else { return nil }
        let module = parts[3..<(parts.count - 1)].joined(separator: ".")
        guard let m = llamaBlockNames.first(where: { $0.value == module })?.key else { return nil }
        return "blk.\(layer).\(m).\(suffix)"
    }

    /// A Hugging Face key's weight in llama.cpp's row order: Q and K rows (and biases) permuted for
    /// "llama" (`heads` query or key-value heads), everything else as it is.
    static func permutedForGGUF(_ t: Tensor, hfKey: String, config: ModelConfig, architecture: GGUFArchitecture) -> Tensor {
        let heads = rotaryHeads(ofKey: hfKey, config: config)
        let src = t.contiguous()
        guard architecture.permutesQK, heads > 0 else { return src }
        let out = Tensor.empty(src.shape)  // (heads·D, in), or (heads·D) for a bias
        permuteQK(src.basePointer, out.basePointer, heads: heads, headDim: config.headDim, inFeatures: src.rank == 2 ? src.shape[1] : 1)
        return out
    }
}

/// What `exportGGUFLoRA` wrote.
public struct GGUFLoRAExport: Sendable {
    /// Adapted matrices (each a lora_a and lora_b tensor).
    public let modules: Int
    /// `adapter.lora.alpha`; 0 when the scales are folded into B (llama.cpp then scales by 1).
    public let alpha: Float
    public let architecture: String
}

/// Writes a LoRA adapter attached to `base` as a llama.cpp GGUF LoRA file at `path` (written to a
/// temporary, then renamed). llama.cpp scales each pair by alpha / rank: when every module's
/// scale × rank is one number (plain LoRA, or rsLoRA with one rank) that is `adapter.lora.alpha`;
/// otherwise (rank or alpha patterns with rsLoRA or differing ratios) alpha is 0, which llama.cpp
/// reads as scale 1, and each scale is folded into its B.
/// - Throws: naming the file for what llama.cpp's LoRA cannot carry: another method, DoRA, trained
///   biases or modules_to_save, GPT-2 bases.
@discardableResult
public func exportGGUFLoRA(_ method: PEFTMethod, base: LoadedModel, to path: String) throws -> GGUFLoRAExport {
    let mergeable = method is MergeablePEFTMethod
    let name = PEFTRegistry.all.first { $0.peftType == type(of: method).peftType }?.names.first?.name ?? type(of: method).peftType
    func refuse(_ why: String) -> CheckpointError {
        CheckpointError(path: path, message: "not written: \(why)\nHINT: export it as a PEFT folder (--format peft)"
                        + (mergeable ? ", or merge it into the base (swiftpeft merge --format gguf)" : ""))
    }
    guard let lora = method as? LoRA else {
        throw refuse("the \(name) method has no llama.cpp GGUF form (llama.cpp's adapters are LoRA)")
    }
    let c = lora.config
    guard !c.useDora else { throw refuse("llama.cpp's LoRA has no DoRA magnitudes") }
    guard c.bias == "none", (c.modulesToSave ?? []).isEmpty else {
        throw refuse("the adapter trains biases (bias \"\(c.bias)\") or whole modules (modules_to_save), which llama.cpp's LoRA cannot carry")
    }
    guard base.model.config.family == .llama else {
        throw refuse("a \(base.model.config.family) base has no llama.cpp LoRA here (only the LLaMA family: llama, mistral, qwen2, SmolLM)")
    }
    let arch = try GGUFArchitecture.of(base)
    let config = base.model.config
    let layers = lora.layers
    guard !layers.isEmpty else { throw refuse("the adapter adapts no module (attach it to the base first)") }
    var named: [(gguf: String, hf: String, lora: LoRALayer)] = []
    for (module, _, l) in layers {
        guard let name = GGUFFile.ggufName(forHuggingFace: module + ".weight") else {
            throw refuse("module '\(module)' has no llama.cpp tensor")
        }
        named.append((name, module + ".weight", l))
    }
    let products = Set(named.map { $0.lora.scale * Float($0.lora.rank) })
    let alpha = products.count == 1 ? products.first! : 0
    var tensors: [GGUFTensorToWrite] = []  // the writer refuses a NaN or infinite value, naming the tensor
    withNoGrad {
        for (name, hf, l) in named {
            // llama.cpp adds (alpha / rank) · B A; B carries the scale when alpha is 0.
            let b = alpha == 0 ? l.b.detached() * l.scale : l.b.detached()
            let bRows = GGUFFile.permutedForGGUF(b, hfKey: hf, config: config, architecture: arch)  // (out, r)
            tensors.append(GGUFTensorToWrite(name: name + ".lora_a", tensor: l.a.detached().contiguous(), type: .f32))
            tensors.append(GGUFTensorToWrite(name: name + ".lora_b", tensor: bRows, type: .f32))
        }
    }
    let metadata: [(String, GGUFValue)] = [
        ("general.architecture", .string(arch.name)),
        ("general.type", .string("adapter")),
        ("general.name", .string(URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent)),
        ("adapter.type", .string("lora")),
        ("adapter.lora.alpha", .float32(alpha)),
        ("general.quantization_version", .uint32(2)),
    ]
    try GGUFFile.write(path, metadata: metadata, tensors: tensors)
    return GGUFLoRAExport(modules: named.count, alpha: alpha, architecture: arch.name)
}

/// Whether the GGUF file at `path` is an adapter (`general.type` "adapter"), reading the metadata
/// only as far as that key; false for a file that cannot be read that far (the loader then says why).
public func isGGUFAdapter(_ path: String) -> Bool {
    (try? GGUFFile.metadataValue("general.type", inFileAt: path))??.string == "adapter"
}

/// Reads a llama.cpp GGUF LoRA adapter (as `convert_lora_to_gguf.py` or `exportGGUFLoRA` writes
/// it) onto `model`: every `.lora_a`/`.lora_b` pair becomes a LoRA module of its rank with llama.cpp's
/// scale alpha / rank (1 when alpha is 0 or absent), B's rows put back in Hugging Face's order for an
/// adapter of the "llama" architecture (a "qwen2" one keeps them).
/// - Throws: naming the file and the tensor: not a LoRA adapter, an architecture other than llama
///   and qwen2, a pair missing one half, a norm (which llama.cpp skips; refused rather than dropped), a
///   tensor with no LLaMA counterpart or of the wrong shape.
@discardableResult
public func importGGUFLoRA(_ path: String, onto model: CausalLM) throws -> PEFTMethod {
    let file = try GGUFFile(path)
    func fail(_ tensor: String?, _ why: String) -> GGUFError { GGUFError(.unsupportedModel, path: path, tensor: tensor, why) }
    guard file.metadata["general.type"]?.string == "adapter" else { throw fail("general.type", "not an adapter (general.type is not \"adapter\")") }
    guard let kind = file.metadata["adapter.type"]?.string, kind == "lora" else {
        throw fail("adapter.type", "adapter type \(file.metadata["adapter.type"].map { "\($0)" } ?? "(missing)") is not supported (only \"lora\")")
    }
    guard model.config.family == .llama else { throw fail(nil, "a GGUF LoRA applies to a LLaMA-family base; this base is \(model.config.family)") }
    let arch = GGUFArchitecture(name: file.architecture ?? "")
    guard ["llama", "qwen2"].contains(arch.name) else {
        throw fail("general.architecture", "architecture \(file.architecture.map { "'\($0)'" } ?? "(missing)") is not supported (llama, qwen2)")
    }
    let alphaValue: Double  // llama.cpp reads a missing alpha as 0: scale 1
    if let v = file.metadata["adapter.lora.alpha"] {
        guard let d = v.double, d.isFinite, abs(d) < 1e30 else { throw fail("adapter.lora.alpha", "expected a finite number, found \(v)") }
        alphaValue = d
    } else {
        alphaValue = 0
    }
    var halves: [String: (a: GGUFTensorInfo?, b: GGUFTensorInfo?)] = [:]
    for info in file.tensorInfos {
        if info.name.hasSuffix(".lora_a") { halves[String(info.name.dropLast(7)), default: (nil, nil)].a = info }
        else if info.name.hasSuffix(".lora_b") { halves[String(info.name.dropLast(7)), default: (nil, nil)].b = info }
        else if info.name.hasSuffix("_norm.weight") {
            throw fail(info.name, "a norm weight (mergekit writes them) is not supported: llama.cpp skips it, which would run another model than the one trained")
        } else { throw fail(info.name, "not a LoRA tensor (expected names ending in .lora_a or .lora_b)") }
    }
    guard !halves.isEmpty else { throw fail(nil, "holds no LoRA tensors") }
    var modules: [String] = [], ranks: [String: Int] = [:], alphas: [String: Float] = [:]
    var tensors: [String: Tensor] = [:]
    let c = model.config
    for (name, pair) in halves.sorted(by: { $0.key < $1.key }) {
        guard let a = pair.a, let b = pair.b else {
            throw fail(name + (pair.a == nil ? ".lora_b" : ".lora_a"), "its pair \(name + (pair.a == nil ? ".lora_a" : ".lora_b")) is missing")
        }
        guard let hf = GGUFFile.huggingFaceName(forGGUF: name), hf.hasSuffix(".weight"),
              let linear = model.namedModules().first(where: { $0.0 + ".weight" == hf })?.1 as? Linear else {
            throw fail(name, "no Linear layer of this base corresponds to it")
        }
        let module = String(hf.dropLast(7))
        guard a.shape.count == 2, b.shape.count == 2, a.shape[1] == linear.inFeatures, b.shape[0] == linear.outFeatures, a.shape[0] == b.shape[1] else {
            throw GGUFError(.shapeMismatch, path: path, tensor: name, """
                lora_a \(a.shape) and lora_b \(b.shape) do not fit \(module) (\(linear.outFeatures), \(linear.inFeatures)): \
                expected (r, \(linear.inFeatures)) and (\(linear.outFeatures), r); the adapter belongs to another base
                """)
        }
        let r = a.shape[0]
        let bHF = try file.tensor(named: b.name)  // (out, r), llama.cpp's row order
        let heads = GGUFFile.rotaryHeads(ofKey: module, config: c)
        if arch.permutesQK && heads > 0 {
            let raw = bHF.contiguous()
            let out = Tensor.empty(raw.shape)
            GGUFFile.unpermuteQK(raw.basePointer, out.basePointer, heads: heads, headDim: c.headDim, inFeatures: r)
            tensors["base_model.model.\(module).lora_B.weight"] = out
        } else {
            tensors["base_model.model.\(module).lora_B.weight"] = bHF
        }
        tensors["base_model.model.\(module).lora_A.weight"] = try file.tensor(named: a.name)
        modules.append(module)
        ranks[module] = r
        alphas[module] = alphaValue == 0 ? Float(r) : Float(alphaValue)  // llama.cpp: scale alpha / r, or 1 without alpha
    }
    // One rank and alpha for all, with per-module patterns (keys that match one whole module name) where they differ.
    let r0 = ranks[modules[0]]!, alpha0 = alphas[modules[0]]!
    var config: [String: Any] = ["peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r0, "lora_alpha": alpha0,
                                 "target_modules": modules, "inference_mode": true]
    let escaped = { (m: String) in NSRegularExpression.escapedPattern(for: m) }
    config["rank_pattern"] = Dictionary(uniqueKeysWithValues: modules.filter { ranks[$0] != r0 }.map { (escaped($0), ranks[$0]!) })
    config["alpha_pattern"] = Dictionary(uniqueKeysWithValues: modules.filter { alphas[$0] != alpha0 }.map { (escaped($0), alphas[$0]!) })
    return try importPEFTContents(config, keyOrder: [:], tensors: { tensors }, onto: model, adapterPath: path, configPath: path, weightsPath: path)
}

/// The type a GGUF model's matrices are stored as (vectors stay F32, as llama.cpp's converter keeps them).
public enum GGUFWeightType: String, CaseIterable, Sendable {
    case f32, f16, bf16, q8_0

    public var ggmlType: GGMLType {
        switch self {
        case .f32: .f32
        case .f16: .f16
        case .bf16: .bf16
        case .q8_0: .q8_0
        }
    }

    /// `general.file_type` (llama.cpp's LLAMA_FTYPE_ALL_F32, MOSTLY_F16, MOSTLY_BF16, MOSTLY_Q8_0).
    var fileType: UInt32 {
        switch self {
        case .f32: 0
        case .f16: 1
        case .bf16: 32
        case .q8_0: 7
        }
    }
}

/// Writes a LLaMA-family model as a GGUF file llama.cpp runs, as its `convert_hf_to_gguf.py` writes
/// one: architecture "llama" (Q/K rows in its order; biases kept, which its llama graph reads) or
/// "qwen2" for Qwen2's configuration, matrices as `type` (Q8_0 rows that are not a multiple of 32 as
/// F16), the hyperparameters, the tokenizer as `tokenizer.ggml.*` ("gpt2" byte-level BPE with its
/// pre-tokenizer's llama.cpp name, `add_bos_token` as the tokenizer adds one) and its chat template. From a
/// GGUF `base` every metadata key is kept instead (its architecture, name, license, tokenizer), but
/// the file type, the chat template and the keys of its quantization (`quantize.*`) and of split files.
/// - Throws: naming `path`: a GPT-2 model, no tokenizer, one with more tokens than the model has
///   rows, one whose merges llama.cpp would apply otherwise, a weight that is not finite, an I/O failure.
public func saveGGUFModel(_ model: CausalLM, tokenizer: BPETokenizer?, to path: String, type: GGUFWeightType = .f16,
                          base: GGUFFile? = nil) throws {
    let c = model.config
    let arch = try base?.architecture.map { GGUFArchitecture(name: $0) } ?? GGUFArchitecture.of(c, path: path)
    guard let tokenizer else {
        throw CheckpointError(path: path, message: "not written: the model has no tokenizer, and llama.cpp needs one in the file")
    }
    try checkFiniteWeights(model.namedParameters(), writing: path)
    var metadata: [(String, GGUFValue)]
    if let base {
        let dropped = ["general.file_type", "general.alignment", "general.quantization_version", "tokenizer.chat_template"]
        metadata = base.metadataKeys.compactMap { k in
            dropped.contains(k) || k.hasPrefix("quantize.") || k.hasPrefix("split.") ? nil : (k, base.metadata[k]!)
        }
    } else {
        metadata = [("general.architecture", .string(arch.name)), ("general.type", .string("model")),
                    ("general.name", .string(URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent))]
        let p = arch.name + "."
        metadata += [(p + "context_length", .uint32(UInt32(c.maxPositions))), (p + "embedding_length", .uint32(UInt32(c.hiddenSize))),
                     (p + "block_count", .uint32(UInt32(c.numLayers))), (p + "feed_forward_length", .uint32(UInt32(c.intermediateSize))),
                     (p + "attention.head_count", .uint32(UInt32(c.numHeads))), (p + "attention.head_count_kv", .uint32(UInt32(c.numKVHeads))),
                     (p + "rope.freq_base", .float32(c.ropeTheta)), (p + "attention.layer_norm_rms_epsilon", .float32(c.normEps))]
        if arch.name == "llama" {
            metadata += [(p + "rope.dimension_count", .uint32(UInt32(c.headDim))), (p + "vocab_size", .uint32(UInt32(c.vocabSize))),
                         (p + "attention.key_length", .uint32(UInt32(c.headDim))), (p + "attention.value_length", .uint32(UInt32(c.headDim)))]
        }
        metadata += try ggufTokenizerMetadata(tokenizer, vocabSize: c.vocabSize, path: path)
    }
    metadata.append(("general.file_type", .uint32(type.fileType)))
    metadata.append(("general.quantization_version", .uint32(2)))
    if let template = tokenizer.chatTemplate { metadata.append(("tokenizer.chat_template", .string(template))) }

    var tensors: [(order: Int, GGUFTensorToWrite)] = []
    for (key, t) in model.namedParameters() where !(c.tieWordEmbeddings && key == "lm_head.weight") {
        guard let name = GGUFFile.ggufName(forHuggingFace: key) else {
            throw CheckpointError(path: path, message: "not written: weight '\(key)' has no llama.cpp tensor name")
        }
        let values = withNoGrad { GGUFFile.permutedForGGUF(t, hfKey: key, config: c, architecture: arch) }
        let stored: GGMLType = values.rank < 2 ? .f32
            : (type == .q8_0 && values.shape.last! % 32 != 0) ? .f16 : type.ggmlType
        let order = name.hasPrefix("token_embd") ? -1 : name.hasPrefix("blk.") ? Int(name.split(separator: ".")[1])! : Int.max
        tensors.append((order, GGUFTensorToWrite(name: name, tensor: values, type: stored)))
    }
    // Llama 3.1's RoPE scaling travels as llama.cpp's divisors (a GGUF base's own values, else computed).
    if let divisors = c.ropeFrequencyDivisors {
        let values = try base?.info(named: GGUFFile.ropeFreqsName).map { try base!.tensor(named: $0.name) }
            ?? Tensor(shape: [divisors.count], data: divisors)
        tensors.append((-2, GGUFTensorToWrite(name: GGUFFile.ropeFreqsName, tensor: values, type: .f32)))
    }
    tensors.sort { ($0.order, $0.1.name) < ($1.order, $1.1.name) }
    try GGUFFile.write(path, metadata: metadata, tensors: tensors.map(\.1))
}

/// Whether an added token's text looks like a control token to llama.cpp's converter
/// (`does_token_look_special`): `<|…|>`, `<｜…｜>`, `<unused…>`, `<pad>`, `<mask>`, `<2mass>`, `[@BOS@]`.
func looksSpecial(_ t: String) -> Bool {
    ["<pad>", "<mask>", "<2mass>", "[@BOS@]"].contains(t) || (t.hasPrefix("<|") && t.hasSuffix("|>"))
        || (t.hasPrefix("<｜") && t.hasSuffix("｜>")) || (t.hasPrefix("<unused") && t.hasSuffix(">"))
}

/// llama.cpp's name of a pre-tokenizer (`tokenizer.ggml.pre`).
func ggufPreName(_ kind: BPEPreTokenizer) -> String {
    switch kind {
    case .gpt2: "gpt-2"
    case .digitsSplit: "smollm"
    case .llama3: "llama-bpe"
    case .qwen2: "qwen2"
    }
}

/// `tokenizer.ggml.*` for a byte-level BPE tokenizer, as llama.cpp's converter writes a Hugging Face
/// one: every id below `vocabSize` (ids the tokenizer lacks as `[PADn]`, unused), token types
/// (1 normal, 3 control = special added token, 4 user-defined = other added token, 5 unused),
/// merges as "left right", the role ids.
func ggufTokenizerMetadata(_ tokenizer: BPETokenizer, vocabSize: Int, path: String) throws -> [(String, GGUFValue)] {
    if tokenizer.sentencePiece { return try ggufSentencePieceMetadata(tokenizer, vocabSize: vocabSize, path: path) }
    // llama.cpp ignores merges for Llama 3's pre-tokenizer ("llama-bpe") and for no other named here.
    guard tokenizer.ignoreMerges == (tokenizer.preTokenizer == .llama3) else {
        throw CheckpointError(path: path, message: tokenizer.ignoreMerges ? """
            not written: the tokenizer takes a word that is a whole vocabulary token as it is (ignore_merges), which llama.cpp \
            does only with Llama 3's pre-tokenizer, not with \(tokenizer.preTokenizer)'s
            """ : """
            not written: llama.cpp takes a word that is a whole vocabulary token as it is with Llama 3's pre-tokenizer \
            (ignore_merges), and this tokenizer does not. HINT: if it is Llama 3's, set "ignore_merges": true in the model \
            section of its tokenizer.json
            """)
    }
    guard tokenizer.vocabSize <= vocabSize else {
        throw CheckpointError(path: path, message: "not written: the tokenizer has \(tokenizer.vocabSize) tokens but the model only \(vocabSize) embedding rows")
    }
    var tokens: [String] = [], types: [Int32] = []
    tokens.reserveCapacity(vocabSize)
    let added = Dictionary(tokenizer.addedTokens.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
    for id in 0..<Int32(vocabSize) {
        if let a = added[id] {
            // The converter makes a token that looks special a control token too, and writes "▁" in the others as " ".
            let control = a.special || looksSpecial(a.content)
            tokens.append(control ? a.content : a.content.replacingOccurrences(of: "\u{2581}", with: " "))
            types.append(control ? 3 : 4)
        } else if let s = tokenizer.tokenString(for: id) {
            tokens.append(s)
            types.append(1)
        } else {
            tokens.append("[PAD\(id)]")
            types.append(5)
        }
    }
    let merges = tokenizer.merges.map { tokens[Int($0.0)] + " " + tokens[Int($0.1)] }
    var out: [(String, GGUFValue)] = [
        ("tokenizer.ggml.model", .string("gpt2")),
        ("tokenizer.ggml.pre", .string(ggufPreName(tokenizer.preTokenizer))),
        ("tokenizer.ggml.tokens", .array(.string(tokens))),
        ("tokenizer.ggml.token_type", .array(.int32(types))),
        ("tokenizer.ggml.merges", .array(.string(merges))),
    ]
    for (key, id) in [("bos", tokenizer.bosTokenID), ("eos", tokenizer.eosTokenID), ("unknown", tokenizer.unkTokenID), ("padding", tokenizer.padTokenID)] {
        if let id { out.append(("tokenizer.ggml.\(key)_token_id", .uint32(UInt32(id)))) }
    }
    // Always written: llama.cpp's default for a missing key depends on the pre-tokenizer. No EOS is added to a text.
    out.append(("tokenizer.ggml.add_bos_token", .bool(tokenizer.addsBOS && tokenizer.bosTokenID != nil)))
    out.append(("tokenizer.ggml.add_eos_token", .bool(false)))
    return out
}

/// `tokenizer.ggml.*` for a SentencePiece tokenizer read from a GGUF file (llama.cpp's "llama"
/// model): pieces spelled with "▁" and `<0xXX>`, their scores, types (1 normal, 2 unknown, 3 control,
/// 4 user-defined, 6 byte, 5 unused), the role ids and `add_space_prefix`.
/// - Throws: naming `path`: a tokenizer without piece scores (read from a tokenizer.json, which
///   holds none), or one with more tokens than the model has rows.
func ggufSentencePieceMetadata(_ tokenizer: BPETokenizer, vocabSize: Int, path: String) throws -> [(String, GGUFValue)] {
    guard let scores = tokenizer.pieceScores, scores.count == tokenizer.vocabSize else {
        throw CheckpointError(path: path, message: "not written: llama.cpp's SentencePiece tokenizer needs each piece's score, which this tokenizer "
            + "(from a tokenizer.json) does not have. HINT: write the model from its GGUF file, which keeps them")
    }
    guard tokenizer.vocabSize <= vocabSize else {
        throw CheckpointError(path: path, message: "not written: the tokenizer has \(tokenizer.vocabSize) tokens but the model only \(vocabSize) embedding rows")
    }
    var tokens: [String] = [], types: [Int32] = [], written: [Float] = []
    let added = Dictionary(tokenizer.addedTokens.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
    for id in 0..<Int32(vocabSize) {
        let score = Int(id) < scores.count ? scores[Int(id)] : 0
        if let a = added[id] {
            tokens.append(a.content)
            types.append(!a.special ? 4 : id == tokenizer.unkTokenID ? 2 : 3)
        } else if let s = tokenizer.tokenString(for: id) {
            tokens.append(s)
            types.append(BPETokenizer.byteTokenValue(s) != nil && tokenizer.bytes(for: id)?.count == 1 ? 6 : 1)
        } else {
            tokens.append("[PAD\(id)]")
            types.append(5)
        }
        written.append(score)
    }
    var out: [(String, GGUFValue)] = [
        ("tokenizer.ggml.model", .string("llama")), ("tokenizer.ggml.pre", .string("default")),
        ("tokenizer.ggml.tokens", .array(.string(tokens))), ("tokenizer.ggml.scores", .array(.float32(written))),
        ("tokenizer.ggml.token_type", .array(.int32(types))),
    ]
    for (key, id) in [("bos", tokenizer.bosTokenID), ("eos", tokenizer.eosTokenID), ("unknown", tokenizer.unkTokenID), ("padding", tokenizer.padTokenID)] {
        if let id { out.append(("tokenizer.ggml.\(key)_token_id", .uint32(UInt32(id)))) }
    }
    out.append(("tokenizer.ggml.add_bos_token", .bool(tokenizer.addsBOS && tokenizer.bosTokenID != nil)))
    out.append(("tokenizer.ggml.add_eos_token", .bool(false)))
    out.append(("tokenizer.ggml.add_space_prefix", .bool(tokenizer.spacePrefix != .none)))
    return out
}
