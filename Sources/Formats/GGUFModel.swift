// A llama- or qwen2-architecture GGUF file as a LlamaModel and its BPETokenizer: tensor names mapped to
// Hugging Face keys, llama.cpp's Q/K row permutation undone ("llama"), the ModelConfig from the `llama.*`
// or `qwen2.*` metadata and the byte-level BPE tokenizer from `tokenizer.ggml.*` (SmolLM2, Llama 3, Qwen2).

import Foundation
import TensorCore
import NN
import Models
import Tokenizers
import PEFT
import Containers

extension GGUFFile {
    /// The Hugging Face key of a llama-architecture GGUF tensor name (`blk.3.attn_q.weight` →
    /// `model.layers.3.self_attn.q_proj.weight`), or nil for a name with no HF counterpart.
    public static func huggingFaceName(forGGUF name: String) -> String? {
        if let f = llamaFixedNames[name] { return f }
        let parts = name.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count >= 3, parts[0] == "blk", let layer = Int(parts[1]), layer >= 0, String(layer) == parts[1] else { return nil }
        guard parts.count == 4, let m = llamaBlockNames[String(parts[2])], parts[3] == "weight" || parts[3] == "bias" else { return nil }
        return "model.layers.\(layer).\(m).\(parts[3])"
    }

    /// llama.cpp's names of the model-level LLaMA tensors → Hugging Face keys.
    static let llamaFixedNames = ["token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                                  "output.weight": "lm_head.weight"]
    /// llama.cpp's names of a block's modules → Hugging Face module paths within `model.layers.N`.
    static let llamaBlockNames = ["attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                                  "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                                  "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"]

    /// The heads whose rows a Hugging Face key's Q or K weight or bias holds (`numHeads` for q_proj,
    /// `numKVHeads` for k_proj), 0 for any other key: the rows llama.cpp's "llama" order permutes.
    static func rotaryHeads(ofKey key: String, config c: ModelConfig) -> Int {
        key.contains("self_attn.q_proj.") || key.hasSuffix("self_attn.q_proj") ? c.numHeads
            : key.contains("self_attn.k_proj.") || key.hasSuffix("self_attn.k_proj") ? c.numKVHeads : 0
    }

    /// Reorders the rows of a (heads·D, in) Q or K weight (or a (heads·D) bias, `inFeatures` 1) from
    /// llama.cpp's layout back to Hugging Face's (rotate_half) layout: view as (heads, D/2, 2, in), swap
    /// axes 1 and 2. `src` and `dst` must not overlap.
    public static func unpermuteQK(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>,
                                   heads: Int, headDim: Int, inFeatures: Int) {
        reorderQK(src, dst, heads: heads, headDim: headDim, inFeatures: inFeatures, toGGUF: false)
    }

    /// The inverse of `unpermuteQK`: Hugging Face's rotate_half rows in llama.cpp's interleaved order.
    public static func permuteQK(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>,
                                 heads: Int, headDim: Int, inFeatures: Int) {
        reorderQK(src, dst, heads: heads, headDim: headDim, inFeatures: inFeatures, toGGUF: true)
    }

    /// Copies each row between HF row (h, j, i) and GGUF row (h, i, j), i < D/2, j < 2.
    private static func reorderQK(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>,
                                  heads: Int, headDim: Int, inFeatures: Int, toGGUF: Bool) {
        let half = headDim / 2
        for h in 0..<heads {
            for i in 0..<half {
                for j in 0..<2 {
                    let gguf = (h * headDim + i * 2 + j) * inFeatures, hf = (h * headDim + j * half + i) * inFeatures
                    (dst + (toGGUF ? gguf : hf)).update(from: src + (toGGUF ? hf : gguf), count: inFeatures)
                }
            }
        }
    }

    private func fail(_ kind: GGUFError.Kind, _ key: String? = nil, _ message: String) -> GGUFError {
        GGUFError(kind, path: path, tensor: key, message)
    }

    private func required(_ key: String) throws -> GGUFValue {
        guard let v = metadata[key] else { throw fail(.missing, key, "the metadata key is missing") }
        return v
    }

    private func requiredInt(_ key: String) throws -> Int {
        guard let n = try required(key).int, n > 0 else {
            throw fail(.malformed, key, "expected a positive integer, found \(metadata[key]!.typeName) \(metadata[key]!)")
        }
        return n
    }

    private func optionalDouble(_ key: String) throws -> Double? {
        guard let v = metadata[key] else { return nil }
        guard let d = v.double else { throw fail(.malformed, key, "expected a number, found \(v.typeName)") }
        return d
    }

    /// The model architecture (`general.architecture`), e.g. "llama".
    public var architecture: String? { metadata["general.architecture"]?.string }

    /// The ModelConfig from the `llama.*` (or `qwen2.*`) metadata. The vocabulary size is the number of rows of
    /// `token_embd.weight`; embeddings are tied when there is no `output.weight`.
    /// - Throws: `GGUFError` naming the key or tensor at fault.
    public func modelConfig() throws -> ModelConfig {
        guard let arch = architecture else { throw fail(.missing, "general.architecture", "the metadata key is missing") }
        guard arch == "llama" || arch == "qwen2" else {
            throw fail(.unsupportedModel, "general.architecture", "architecture '\(arch)' is not supported (only 'llama' and 'qwen2')")
        }
        let p = arch + "."
        let heads = try requiredInt(p + "attention.head_count")
        let kvHeads = metadata[p + "attention.head_count_kv"] == nil ? heads : try requiredInt(p + "attention.head_count_kv")
        let hidden = try requiredInt(p + "embedding_length")
        // llama.cpp reads a missing scaling type as linear, with the factor of rope.scaling.factor or
        // the older rope.scale_linear (0 or 1: none).
        let scaling = metadata[p + "rope.scaling.type"]?.string ?? "linear"
        let factorKey = metadata[p + "rope.scaling.factor"] != nil ? p + "rope.scaling.factor" : p + "rope.scale_linear"
        let factor = try optionalDouble(factorKey) ?? 0
        if scaling != "none" && !(scaling == "linear" && (factor == 0 || factor == 1)) {
            throw fail(.unsupportedModel, metadata[p + "rope.scaling.type"] != nil ? p + "rope.scaling.type" : factorKey,
                       "RoPE scaling '\(scaling)' (factor \(factor)) is not supported")
        }
        if let dims = metadata[p + "rope.dimension_count"]?.int, dims != hidden / heads {
            throw fail(.unsupportedModel, p + "rope.dimension_count",
                       "partial RoPE (\(dims) of \(hidden / heads) head dimensions) is not supported")
        }
        guard let embed = info(named: "token_embd.weight") else {
            throw fail(.missing, "token_embd.weight", "no such tensor in the file (\(tensorInfos.count) tensors)")
        }
        guard embed.dims.count == 2, embed.dims[0] == hidden else {
            throw fail(.shapeMismatch, "token_embd.weight", "has ne \(embed.dims), expected [\(hidden), vocab] (\(p)embedding_length = \(hidden))")
        }
        let vocab = embed.dims[1]
        if let v = metadata[p + "vocab_size"]?.int, v != vocab {
            throw fail(.shapeMismatch, "token_embd.weight", "has \(vocab) rows but \(p)vocab_size is \(v)")
        }
        var config = ModelConfig.llama(
            vocabSize: vocab, hiddenSize: hidden, numLayers: try requiredInt(p + "block_count"), numHeads: heads,
            numKVHeads: kvHeads, intermediateSize: try requiredInt(p + "feed_forward_length"),
            ropeTheta: Float(try optionalDouble(p + "rope.freq_base") ?? 10000),
            normEps: Float(try optionalDouble(p + "attention.layer_norm_rms_epsilon") ?? 1e-5),
            attentionBias: info(named: "blk.0.attn_q.bias") != nil,
            tieWordEmbeddings: info(named: "output.weight") == nil,
            maxPositions: try requiredInt(p + "context_length"))  // required by llama.cpp too
        config.ropeScaling = try ropeScaling(theta: config.ropeTheta, headDim: hidden / heads)
        do { try config.validate() } catch { throw fail(.unsupportedModel, nil, "\(error)") }
        return config
    }

    /// Llama 3.1's RoPE scaling from llama.cpp's `rope_freqs.weight` (each frequency pair's divisor):
    /// the parameters Llama 3.x releases use (factor = the largest divisor; original context 8192,
    /// or another power of two; low and high frequency factors 1 and 4, or others) that give those
    /// divisors; nil without the tensor.
    /// - Throws: when the tensor has another length, or no such parameters give its values.
    func ropeScaling(theta: Float, headDim: Int) throws -> RopeScaling? {
        guard let info = info(named: GGUFFile.ropeFreqsName) else { return nil }
        guard info.elementCount == headDim / 2 else {
            throw fail(.shapeMismatch, info.name, "has \(info.elementCount) values, expected one per frequency pair (\(headDim / 2))")
        }
        let divisors = try tensor(named: info.name).toArray()
        guard let factor = divisors.max(), factor > 1 else { return nil }  // all 1: plain RoPE
        for original in [8192, 4096, 16384, 32768, 2048, 65536, 131072, 1024] {
            for (low, high) in [(1, 4), (1, 2), (1, 8), (2, 4), (0.5, 4)] as [(Float, Float)] {
                let r = RopeScaling(factor: factor, lowFreqFactor: low, highFreqFactor: high, originalMaxPositions: original)
                if zip(r.divisors(theta: theta, headDim: headDim), divisors).allSatisfy({ abs($0 - $1) <= 1e-5 * max(1, abs($1)) }) { return r }
            }
        }
        throw fail(.unsupportedModel, info.name, """
            its frequency divisors \(divisors.prefix(4))… are not Llama 3.1's scaling with factor \(factor) and the usual \
            original context (1024…131072) and frequency factors
            """)
    }

    /// llama.cpp's tensor of RoPE frequency divisors (Llama 3.1's scaling).
    public static let ropeFreqsName = "rope_freqs.weight"

    /// The tokenizer in the metadata: llama.cpp's "llama" model (SentencePiece, `makeSentencePieceTokenizer`),
    /// or "gpt2", byte-level BPE: `tokenizer.ggml.tokens` (byte-level spellings),
    /// `.merges` ("left right"), `.token_type` (3 = control → special added token, 4 = user-defined →
    /// added token), `.pre` ("smollm", "starcoder", "refact" → digits split one by one; "gpt-2" → GPT-2's
    /// regex; "llama-bpe" → Llama 3's, merges ignored for whole-vocabulary words; "qwen2" → Qwen2's),
    /// the bos/eos/unknown/padding ids, and whether a BOS goes in front of every text (`addsBOS`).
    /// - Throws: `GGUFError` naming the metadata key at fault.
    public func makeTokenizer() throws -> BPETokenizer {
        let modelKey = "tokenizer.ggml.model"
        guard let model = try required(modelKey).string else { throw fail(.malformed, modelKey, "expected a string") }
        if model == "llama" { return try makeSentencePieceTokenizer() }
        guard model == "gpt2" else {
            throw fail(.unsupportedModel, modelKey, "tokenizer model '\(model)' is not supported (only 'gpt2', byte-level BPE, and 'llama', SentencePiece BPE)")
        }
        let pre: BPEPreTokenizer
        switch metadata["tokenizer.ggml.pre"]?.string {
        case "smollm"?, "starcoder"?, "refact"?: pre = .digitsSplit
        case "gpt-2"?: pre = .gpt2
        case "llama-bpe"?, "llama3"?, "llama-v3"?: pre = .llama3
        case "qwen2"?: pre = .qwen2
        case let other:
            throw fail(.unsupportedModel, "tokenizer.ggml.pre", "pre-tokenizer \(other.map { "'\($0)'" } ?? "(missing)") is not "
                       + "supported; supported: 'gpt-2', 'smollm', 'starcoder', 'refact', 'llama-bpe', 'qwen2'")
        }
        guard let tokens = try required("tokenizer.ggml.tokens").strings else {
            throw fail(.malformed, "tokenizer.ggml.tokens", "expected an array of string, found \(metadata["tokenizer.ggml.tokens"]!.typeName)")
        }
        var types = [Int](repeating: 1, count: tokens.count)
        if let tv = metadata["tokenizer.ggml.token_type"] {
            guard let t = tv.ints, t.count == tokens.count else {
                throw fail(.malformed, "tokenizer.ggml.token_type", "expected \(tokens.count) integers (one per token), found \(tv.typeName) of \(tv.array?.count ?? 0)")
            }
            types = t
        }
        var vocab = [[UInt8]?](repeating: nil, count: tokens.count)
        var added: [AddedToken] = []
        var idOf: [String: Int32] = [:]
        idOf.reserveCapacity(tokens.count)
        for (k, tok) in tokens.enumerated() {
            switch types[k] {
            case 3, 4:  // control, user-defined: matched literally, spelled as their text
                added.append(AddedToken(id: Int32(k), content: tok, special: types[k] == 3, normalized: false))  // one pass, as llama.cpp
                vocab[k] = Array(tok.utf8)
            case 5: continue  // unused
            default:
                guard let bytes = ByteLevelAlphabet.decode(tok) else {
                    throw fail(.malformed, "tokenizer.ggml.tokens", "token \(k) \(tok.debugDescription) has characters outside the byte-level alphabet")
                }
                vocab[k] = bytes
            }
            if idOf[tok] == nil { idOf[tok] = Int32(k) }
        }
        var merges: [(Int32, Int32)] = []
        if let mv = metadata["tokenizer.ggml.merges"] {
            guard let list = mv.strings else { throw fail(.malformed, "tokenizer.ggml.merges", "expected an array of string, found \(mv.typeName)") }
            merges.reserveCapacity(list.count)
            for (k, m) in list.enumerated() {
                let parts = m.split(separator: " ", omittingEmptySubsequences: false)
                guard parts.count == 2, let a = idOf[String(parts[0])], let b = idOf[String(parts[1])] else {
                    throw fail(.malformed, "tokenizer.ggml.merges", "merge \(k) \(m.debugDescription) is not two tokens of the vocabulary separated by one space")
                }
                merges.append((a, b))
            }
        }
        let roles = try tokenizerRoles(added: added, tokens: tokens)
        let bos = try addsBOS(pre)
        do {
            // llama.cpp's Llama 3 tokenizer takes a word that is a whole vocabulary token as it is (ignore_merges).
            let tokenizer = try BPETokenizer(vocab: vocab, merges: merges, addedTokens: added, preTokenizer: pre,
                                             ignoreMerges: pre == .llama3, roles: roles)
            tokenizer.chatTemplate = metadata["tokenizer.chat_template"]?.string
            tokenizer.addsBOS = bos && roles.bos != nil
            return tokenizer
        } catch {
            throw fail(.malformed, "tokenizer.ggml.tokens", "\(error)")
        }
    }

    /// llama.cpp's "llama" tokenizer model (SentencePiece BPE: Llama 2, Mistral, TinyLlama): pieces
    /// spelled with "▁", their scores, and types (1 normal, 2 unknown and 3 control → special added
    /// tokens, 4 user-defined → added tokens, 5 unused, 6 `<0xXX>` byte). Two pieces merge when
    /// their text together is a normal piece, the highest score first (equal scores leftmost first),
    /// as llama.cpp merges them; a space goes in front of each stretch between added tokens unless
    /// `tokenizer.ggml.add_space_prefix` is false.
    func makeSentencePieceTokenizer() throws -> BPETokenizer {
        guard let tokens = try required("tokenizer.ggml.tokens").strings else {
            throw fail(.malformed, "tokenizer.ggml.tokens", "expected an array of string, found \(metadata["tokenizer.ggml.tokens"]!.typeName)")
        }
        let scoresKey = "tokenizer.ggml.scores"
        guard case .array(.float32(let scores))? = metadata[scoresKey], scores.count == tokens.count else {
            throw fail(.malformed, scoresKey, "expected \(tokens.count) float32 scores (one per token), found \(metadata[scoresKey].map { "\($0.typeName) of \($0.array?.count ?? 0)" } ?? "none")")
        }
        let typeKey = "tokenizer.ggml.token_type"
        guard let types = metadata[typeKey]?.ints, types.count == tokens.count else {
            throw fail(.malformed, typeKey, "expected \(tokens.count) integers (one per token), found \(metadata[typeKey].map { "\($0.typeName) of \($0.array?.count ?? 0)" } ?? "none")")
        }
        var vocab = [[UInt8]?](repeating: nil, count: tokens.count)
        var added: [AddedToken] = [], byteTokens: [Int32: UInt8] = [:]
        var idOf: [[UInt8]: Int32] = [:]  // by bytes: Swift's String equality would make "ί" (U+1F77) and "ί" (U+03AF) one piece
        for (k, tok) in tokens.enumerated() {
            switch types[k] {
            case 1:
                let text = Array(tok.utf8).replacingSpaceMarks()
                guard idOf[text] == nil else { continue }  // a spelling twice (llama.cpp refuses the file): the first
                vocab[k] = text
                idOf[text] = Int32(k)
            case 2, 3, 4:  // in the vocabulary too, spelled as their text, so that a tokenizer.json keeps their ids
                added.append(AddedToken(id: Int32(k), content: tok, special: types[k] != 4, normalized: false))
                vocab[k] = Array(tok.utf8)
            case 6:
                guard let b = BPETokenizer.byteTokenValue(tok) else {
                    throw fail(.malformed, "tokenizer.ggml.tokens", "token \(k) \(tok.debugDescription) is a byte token (type 6) but not spelled <0xXX>")
                }
                byteTokens[Int32(k)] = b
            default: continue  // unused
            }
        }
        // Every split of a normal piece into two normal pieces is a merge; its rank is the piece's
        // place among the distinct scores, highest first.
        var merges: [(Int32, Int32, Float)] = []
        for (k, bytes) in vocab.enumerated() {
            guard let bytes, bytes.count > 1 else { continue }
            var cut = 1
            while cut < bytes.count {
                if bytes[cut] & 0xC0 != 0x80,  // a character boundary
                   let l = idOf[Array(bytes[..<cut])], let r = idOf[Array(bytes[cut...])] {
                    merges.append((l, r, scores[k]))
                }
                cut += 1
            }
        }
        merges.sort { $0.2 > $1.2 }
        var ranks: [Int] = [], rank = -1, last = Float.nan
        for m in merges {
            if m.2 != last { (rank, last) = (rank + 1, m.2) }
            ranks.append(rank)
        }
        let roles = try tokenizerRoles(added: added, tokens: tokens)
        let spaceKey = "tokenizer.ggml.add_space_prefix"
        if let v = metadata[spaceKey], v.bool == nil { throw fail(.malformed, spaceKey, "expected a bool, found \(v.typeName)") }
        let bos = try addsBOS(nil)
        do {
            let tokenizer = try BPETokenizer(vocab: vocab, merges: merges.map { ($0.0, $0.1) }, addedTokens: added, roles: roles,
                                             sentencePiece: metadata[spaceKey]?.bool == false ? SpacePrefix.none : .everyStretch,
                                             byteTokens: byteTokens, mergeRanks: ranks)
            tokenizer.chatTemplate = metadata["tokenizer.chat_template"]?.string
            tokenizer.addsBOS = bos && roles.bos != nil
            tokenizer.pieceScores = scores
            return tokenizer
        } catch {
            throw fail(.malformed, "tokenizer.ggml.tokens", "\(error)")
        }
    }

    /// The bos/eos/padding/unknown roles by id; a role naming a token that is not an added token is dropped.
    private func tokenizerRoles(added: [AddedToken], tokens: [String]) throws -> SpecialTokenRoles {
        let addedIDs = Set(added.map(\.id))
        func role(_ key: String) throws -> String? {
            guard let v = metadata[key] else { return nil }
            guard let id = v.int, id >= 0, id < tokens.count else {
                throw fail(.malformed, key, "expected a token id below \(tokens.count), found \(v)")
            }
            return addedIDs.contains(Int32(id)) ? tokens[id] : nil
        }
        return SpecialTokenRoles(bos: try role("tokenizer.ggml.bos_token_id"), eos: try role("tokenizer.ggml.eos_token_id"),
                                 pad: try role("tokenizer.ggml.padding_token_id"), unk: try role("tokenizer.ggml.unknown_token_id"))
    }

    /// Whether llama.cpp puts the BOS in front of a text: `tokenizer.ggml.add_bos_token`, else its
    /// default for the pre-tokenizer (true for Llama 3's, false for the others read here; nil: the
    /// SentencePiece model, true).
    /// (`add_eos_token` is not applied: SwiftPEFT ends a learned text with the EOS itself, and a
    /// prompt with none.)
    /// - Throws: `GGUFError` for a value that is not a bool.
    private func addsBOS(_ pre: BPEPreTokenizer?) throws -> Bool {
        let key = "tokenizer.ggml.add_bos_token"
        guard let v = metadata[key] else { return pre == nil || pre == .llama3 }
        guard let b = v.bool else { throw fail(.malformed, key, "expected a bool, found \(v.typeName)") }
        return b
    }

    /// Dequantizes every tensor into `model`'s parameters (same names after `huggingFaceName`), undoing
    /// the Q/K permutation. Strict: every parameter must be present with its shape, and every tensor used.
    /// - Throws: `GGUFError` naming the tensor and both shapes, or the missing/unexpected tensors.
    /// `keepQuantized`: each block's matrices (attention and MLP projections) stored in a quantized
    /// or 16-bit type keep those blocks alone (`Tensor.keepPackedOnly`): their Float32 values are
    /// never written, and the check for non-finite values reads the blocks decoded a slab at a
    /// time; the embedding, the head and the norms stay Float32. With `quantizedEmbedding` too, the
    /// token embedding (the tied head) and an untied output head keep their blocks as well: for
    /// generating and serving, whose products have few rows; a training step's loss would decode
    /// the whole head twice, so training leaves it out.
    /// `didLoad` gets each parameter once it is loaded, in name order; a matrix kept as blocks
    /// comes packed already (`Tensor.packedWeights`), its values readable through
    /// `PackedWeights.forEachSlab`.
    public func loadWeights(into model: LlamaModel, keepQuantized: Bool = false, quantizedEmbedding: Bool = false,
                            didLoad: ((String, Tensor) -> Void)? = nil) throws {
        check(keepQuantized || !quantizedEmbedding, "[GGUF] quantizedEmbedding needs keepQuantized")
        var byHF: [String: GGUFTensorInfo] = [:]
        var unknown: [String] = []
        for info in tensorInfos where info.name != GGUFFile.ropeFreqsName {  // read into the config (modelConfig)
            if let hf = GGUFFile.huggingFaceName(forGGUF: info.name) { byHF[hf] = info } else { unknown.append(info.name) }
        }
        if !unknown.isEmpty {
            throw fail(.unsupportedModel, unknown[0], "\(unknown.count) tensor(s) have no Hugging Face llama counterpart: "
                       + unknown.prefix(8).joined(separator: ", ") + (unknown.count > 8 ? ", …" : ""))
        }
        let c = model.config
        let params = model.namedParameters().sorted { $0.0 < $1.0 }  // name order, as every loader goes
        var missing: [String] = []
        for (name, p) in params {
            guard let info = byHF[name] else { missing.append(name); continue }
            guard info.shape == p.shape else {
                throw fail(.shapeMismatch, info.name, "has shape \(info.shape) (ne \(info.dims)); the model's '\(name)' expects \(p.shape)")
            }
        }
        if !missing.isEmpty {
            throw fail(.missing, missing[0], "\(missing.count) weight(s) of the model are not in the file: "
                       + missing.prefix(8).joined(separator: ", ") + (missing.count > 8 ? ", …" : ""))
        }
        let used = Set(params.map(\.0))
        let extra = byHF.keys.filter { !used.contains($0) }.sorted()
        if !extra.isEmpty {
            throw fail(.unsupportedModel, byHF[extra[0]]!.name, "\(extra.count) tensor(s) do not fit the model: "
                       + extra.prefix(8).map { byHF[$0]!.name }.joined(separator: ", "))
        }
        for (name, p) in params {
            let info = byHF[name]!
            // llama.cpp permutes the rows of q/k weights and biases alike ("llama"; not "qwen2").
            let heads = architecture == "llama" ? GGUFFile.rotaryHeads(ofKey: name, config: c) : 0
            let kept = name.hasPrefix("model.layers.") || quantizedEmbedding && (name == "model.embed_tokens.weight" || name == "lm_head.weight")
            // A matrix kept as blocks: its bytes are copied once (the mapped pages then unmapped),
            // and the products decode the copy.
            let packed = keepQuantized && p.rank == 2 && info.type != .f32 && kept
                ? try packedWeights(info, shape: p.shape, rotaryHeads: heads, headDim: c.headDim) : nil
            if let packed {
                // Its Float32 values are never written: the check reads the blocks a slab of
                // decoded rows at a time.
                p.keepPackedOnly(packed)
                try packed.forEachSlab { values, first in
                    if let i = firstNonFiniteIndex(values) {
                        throw fail(.malformed, info.name, "holds \(values[i]) at element \(first + i) after dequantization; the weights are corrupt")
                    }
                }
                didLoad?(name, p)
                continue
            }
            let target = p.isContiguous ? p : Tensor.empty(p.shape)
            if heads > 0 {
                let raw = Tensor.empty(p.shape)  // (heads·D, in) or (heads·D), llama.cpp row order
                try dequantize(info, into: raw.basePointer)
                GGUFFile.unpermuteQK(raw.basePointer, target.basePointer, heads: heads, headDim: c.headDim,
                                     inFeatures: p.rank == 2 ? p.shape[1] : 1)
            } else {
                try dequantize(info, into: target.basePointer)
            }
            if let bad = target.firstNonFinite() {
                throw fail(.malformed, info.name, "holds \(bad.value) at element \(bad.index) after dequantization; the weights are corrupt")
            }
            if target !== p { p.assign(target) }
            didLoad?(name, p)
        }
    }

    /// Tensor `info`'s blocks copied out of the file, decoded a row at a time: row r of the
    /// (rows, cols) matrix, in Hugging Face's order (for a Q or K weight, `rotaryHeads` > 0, the
    /// file's row of `unpermuteQK`).
    func packedWeights(_ info: GGUFTensorInfo, shape: [Int], rotaryHeads heads: Int, headDim: Int) throws -> PackedWeights {
        let (rows, cols) = (shape[0], shape[1])
        guard let kernel = GGUFFile.blockDecoder(for: info.type), cols % info.type.blockSize == 0 else {
            throw fail(.unsupportedType, info.name, "type \(info.type) with rows of \(cols) values cannot be kept as blocks")
        }
        let rowBytes = cols / info.type.blockSize * info.type.typeSize, blocksPerRow = cols / info.type.blockSize
        guard info.byteCount == rows * rowBytes else {
            throw fail(.malformed, info.name, "holds \(info.byteCount) bytes; \(rows) rows of \(cols) \(info.type) values take \(rows * rowBytes)")
        }
        let bytes = PackedBytes(count: info.byteCount)
        try copyRawBytes(of: info, to: bytes.pointer)
        let half = headDim / 2
        return PackedWeights(rows: rows, cols: cols, byteCount: rows * rowBytes, encoding: info.type.name) { lo, hi, dst in
            for r in lo..<hi {
                // HF row (h, j, i) ← llama.cpp row (h, i, j), i < D/2, j < 2
                let h = r / max(headDim, 1), j = (r % max(headDim, 1)) / max(half, 1), i = r % max(half, 1)
                let source = heads > 0 ? h * headDim + i * 2 + j : r
                kernel(UnsafeRawPointer(bytes.pointer + source * rowBytes), dst + (r - lo) * cols, blocksPerRow)
            }
        }
    }
}

/// Bytes owned by the closure of a `PackedWeights`, freed with it.
final class PackedBytes: @unchecked Sendable {
    let pointer: UnsafeMutableRawPointer
    init(count: Int) { pointer = .allocate(byteCount: max(count, 1), alignment: 64) }
    deinit { pointer.deallocate() }
}

/// Loads a llama-architecture GGUF file (e.g. SmolLM2-135M-Instruct) as a frozen LlamaModel in eval mode,
/// with its tokenizer. Quantized weights are dequantized to Float32.
/// - Throws: `GGUFError` naming the file, and the tensor or metadata key at fault.
/// `bf16Only` keeps only bf16 copies of the frozen matrices (`DecodePrecision.bf16Only`).
/// `keepQuantized` keeps the blocks' quantized matrices as they are in the file, decoded by each
/// product, and `quantizedEmbedding` the embedding and output head too, for generating and serving
/// (`GGUFFile.loadWeights(into:keepQuantized:quantizedEmbedding:)`).
public func loadGGUFModel(_ path: String, seed: UInt64 = 0, bf16Only: Bool = false, keepQuantized: Bool = false,
                          quantizedEmbedding: Bool = false) throws -> (model: LlamaModel, tokenizer: BPETokenizer) {
    check(!(bf16Only && keepQuantized), "[GGUF] bf16-only weights and kept quantized blocks exclude each other")
    let file = try GGUFFile(path)
    let tokenizer = try file.makeTokenizer()
    let config = try file.modelConfig()
    guard tokenizer.vocabSize <= config.vocabSize else {
        throw GGUFError(.shapeMismatch, path: path, tensor: "token_embd.weight",
                        "has \(config.vocabSize) rows but the tokenizer has \(tokenizer.vocabSize) tokens")
    }
    // Every tensor's type is checked before the model is built: a file of another quantization fails at once, all named.
    let unreadable = file.tensorInfos.filter { !GGMLType.dequantizable.contains($0.type) }
    if let first = unreadable.first {
        throw GGUFError(.unsupportedType, path: path, tensor: first.name, "\(unreadable.count) tensor(s) have types that cannot be dequantized: "
                        + unreadable.prefix(8).map { "\($0.name) (\($0.type))" }.joined(separator: ", ") + (unreadable.count > 8 ? ", …" : "")
                        + "; supported: " + GGMLType.dequantizable.sorted { $0.code < $1.code }.map(\.name).joined(separator: ", "))
    }
    let elements = file.tensorInfos.reduce(0) { acc, t in acc > Int.max / 2 ? acc : acc + t.dims.reduce(1, *) }
    try checkConfigFitsWeights(config, elements: elements, file: path)
    let model = WeightInit.skipped { LlamaModel(config, seed: seed) }  // every weight is loaded below
    model.freeze()
    try file.loadWeights(into: model, keepQuantized: keepQuantized, quantizedEmbedding: quantizedEmbedding,
                         didLoad: bf16OnlyLoader(model, enabled: bf16Only))
    model.eval()
    return (model, tokenizer)
}

