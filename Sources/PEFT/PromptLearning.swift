// What prompt tuning, P-Tuning and prefix tuning share: the PEFT fields every prompt-learning config
// has (filled from the model at attach, as PEFT's `_prepare_prompt_learning_config` does), the
// `prompt_embeddings` export, a torch.nn.Linear look-alike, and the bookkeeping of the model slot.

import Foundation
import TensorCore
import NN
import Models

/// The fields of PEFT's `PromptLearningConfig` that the three prompt-learning configs share.
public protocol PromptLearningConfig: PEFTConfig {
    var peftType: String { get }
    var inferenceMode: Bool { get }
    /// P, the number of virtual tokens (PEFT: required).
    var numVirtualTokens: Int { get }
    /// The width of the virtual tokens; nil until attach fills it with the model's hidden size C.
    var tokenDim: Int? { get set }
    /// 1 for decoder-only models (2 for encoder-decoder, not supported).
    var numTransformerSubmodules: Int { get }
    var numAttentionHeads: Int? { get set }
    var numLayers: Int? { get set }
}

extension PromptLearningConfig {
    /// Fills the fields left nil from the model: L, C and H, as PEFT does.
    mutating func fill(from m: ModelConfig) {
        numLayers = numLayers ?? m.numLayers
        tokenDim = tokenDim ?? m.hiddenSize
        numAttentionHeads = numAttentionHeads ?? m.numHeads
    }

    /// The checks common to every prompt-learning config; `method` names it in the message.
    func validateCommon(_ method: String, peftType expected: String) throws {
        guard peftType == expected else {
            throw PEFTError(message: "\(method): peft_type is \"\(peftType)\", expected \"\(expected)\"")
        }
        guard numVirtualTokens > 0 && numVirtualTokens <= 1 << 16 else {
            throw PEFTError(message: "\(method): num_virtual_tokens must be in 1…65536, got \(numVirtualTokens)")
        }
        for (field, value) in [("token_dim", tokenDim), ("num_layers", numLayers), ("num_attention_heads", numAttentionHeads)] {
            if let v = value, v <= 0 || v > 1 << 20 { throw PEFTError(message: "\(method): \(field) must be in 1…1048576, got \(v)") }
        }
        guard numTransformerSubmodules == 1 else {
            throw PEFTError(message: "\(method): num_transformer_submodules must be 1 for a decoder-only model, got \(numTransformerSubmodules)")
        }
    }

    /// Throws unless the filled config describes `m`: token_dim = `width`, num_layers = L,
    /// num_attention_heads = `heads`.
    func checkFits(_ m: ModelConfig, width: Int, heads: Int, method: String) throws {
        for (field, value, expected) in [("token_dim", tokenDim, width), ("num_layers", numLayers, m.numLayers),
                                         ("num_attention_heads", numAttentionHeads, heads)] where value != expected {
            throw PEFTError(message: """
                \(method): \(field) is \(value.map(String.init) ?? "null"), the model needs \(expected)
                HINT: a saved adapter with \(field) \(value.map(String.init) ?? "null") was trained on another base: load it onto that one. \
                In a new adapter's config, leave \(field) out (null) and it is taken from the model at attach.
                """)
        }
    }
}

/// What the three prompt-learning methods share in their registrations.
enum PromptLearningRegistration {
    /// The command-line options.
    static let options = [MethodOption("num-virtual-tokens", field: "num_virtual_tokens", .int, help: "virtual tokens P")]
    /// PEFT requires num_virtual_tokens; a new adapter made from the command line takes this many.
    static let newAdapter: [String: Any] = ["num_virtual_tokens": 16]
    /// PEFT folders hold only the (P, …) `prompt_embeddings` tensor, loaded in inference mode.
    static let peftFolder = PEFTFolderMapping { config, _ in config["inference_mode"] = true }
}

/// A method that prepends virtual tokens or key/value prefixes; none of them merges into the base.
public protocol PromptLearningMethod: PEFTMethod {
    /// What PEFT saves as `prompt_embeddings`: prompt tuning and P-Tuning (P, C), prefix tuning
    /// (P, L·2·kv_dim). For P-Tuning and projected prefixes it is the encoder OUTPUT.
    func promptEmbeddings() -> Tensor
    /// PEFT's token_dim and num_attention_heads for a base of shape `m` (C and H; prefix tuning
    /// under grouped-query attention: kv_dim and KVH).
    func peftDimensions(_ m: ModelConfig) -> (tokenDim: Int, heads: Int)
}

extension PromptLearningMethod {
    /// P: the positions the virtual tokens (or prefix keys) take before the real tokens.
    public var virtualTokenCount: Int { withNoGrad { promptEmbeddings() }.shape[0] }

    /// The tensors of a PEFT `adapter_model.safetensors`: `prompt_embeddings` (a copy, no graph).
    public func peftTensors() -> [(String, Tensor)] {
        [("prompt_embeddings", withNoGrad { promptEmbeddings() }.copy())]
    }

    public func peftDimensions(_ m: ModelConfig) -> (tokenDim: Int, heads: Int) { (m.hiddenSize, m.numHeads) }

    /// As PEFT saves prompt learning: `prompt_embeddings` only, inference mode, and the dimensions
    /// PEFT fills at attach.
    public func peftFolderContents(base m: ModelConfig) throws -> (config: [String: Any], tensors: [(String, Tensor)]) {
        guard !adapterParameters().isEmpty else {
            throw PEFTError(message: "the \(Self.peftType) adapter holds no tensors (attach it to the base before exporting)")
        }
        guard var config = try JSONSerialization.jsonObject(with: configJSON()) as? [String: Any] else {
            throw PEFTError(message: "the \(Self.peftType) adapter's config is not a JSON object")
        }
        let (tokenDim, heads) = peftDimensions(m)
        func fill(_ key: String, _ value: Int) { if config[key] == nil || config[key] is NSNull { config[key] = value } }
        fill("num_layers", m.numLayers)
        fill("token_dim", tokenDim)
        fill("num_attention_heads", heads)
        config["num_transformer_submodules"] = 1
        config["inference_mode"] = true
        // PEFT refuses prompt tuning's TEXT init without its tokenizer and text, even where the
        // saved embeddings are loaded and the init never runs: such a config is written as RANDOM,
        // which loads the same tensor.
        let missing = { (k: String) in (config[k] as? String ?? "").isEmpty }
        if config["prompt_tuning_init"] as? String == "TEXT" && (missing("tokenizer_name_or_path") || config["prompt_tuning_init_text"] as? String == nil) {
            config["prompt_tuning_init"] = "RANDOM"
            config["tokenizer_kwargs"] = nil  // PEFT takes them with TEXT only
        }
        return (config, peftTensors())
    }
}

/// `value` as pretty JSON with sorted keys (how `adapter_config.json` is written).
func sortedJSON<T: Encodable>(_ value: T) throws -> Data {
    let e = JSONEncoder()
    e.outputFormatting = [.sortedKeys, .prettyPrinted]
    return try e.encode(value)
}

/// A trainable leaf.
func trainableLeaf(_ t: Tensor) -> Tensor {
    t.requiresGrad = true
    return t
}

/// torch.nn.Linear: y = x Wᵀ + b, W (out, in), b (out), both uniform in ±1/√in as PyTorch initializes.
struct DenseLayer {
    let weight: Tensor, bias: Tensor

    init(_ inFeatures: Int, _ outFeatures: Int, rng: inout RNG) {
        let bound = 1 / Float(inFeatures).squareRoot()
        weight = trainableLeaf(Tensor.uniform([outFeatures, inFeatures], low: -bound, high: bound, rng: &rng))
        bias = trainableLeaf(Tensor.uniform([outFeatures], low: -bound, high: bound, rng: &rng))
    }

    /// (…, in) → (…, out)
    func callAsFunction(_ x: Tensor) -> Tensor { x.matmul(weight.transposed()) + bias }

    /// `prefix.weight`, `prefix.bias`.
    func named(_ prefix: String) -> [(String, Tensor)] { [(prefix + ".weight", weight), (prefix + ".bias", bias)] }

    /// in·out + out.
    static func count(_ inFeatures: Int, _ outFeatures: Int) -> Int { inFeatures * outFeatures + outFeatures }
}

/// Which model slot a prompt-learning method fills.
enum PromptSlot: String {
    case inputPrefix, attentionPrefix

    func occupant(_ m: CausalLM) -> AnyObject? {
        switch self {
        case .inputPrefix: return m.inputPrefix
        case .attentionPrefix: return m.attentionPrefix
        }
    }

    func set(_ m: CausalLM, _ o: AnyObject?) {
        switch self {
        case .inputPrefix: m.inputPrefix = o as? InputPrefix
        case .attentionPrefix: m.attentionPrefix = o as? AttentionPrefix
        }
    }
}

/// The attachment of a method to one model slot. Disabling EMPTIES the slot (the model then runs
/// exactly as its base, with and without a KV cache); enabling fills it again.
final class SlotBinding {
    let slot: PromptSlot
    let method: String
    private(set) weak var model: CausalLM?
    private(set) var isEnabled = true

    init(_ slot: PromptSlot, method: String) {
        self.slot = slot
        self.method = method
    }

    /// Throws when this method is attached already or the slot holds another method.
    func checkFree(_ m: CausalLM, for o: AnyObject) throws {
        if model != nil { throw PEFTError(message: "[\(method)] this adapter is already attached; detach it first") }
        if let other = slot.occupant(m), other !== o {
            throw PEFTError(message: "[\(method)] the model's \(slot.rawValue) slot is already taken by \(type(of: other)); detach that method first")
        }
    }

    func occupy(_ m: CausalLM, with o: AnyObject) {
        model = m
        if isEnabled { slot.set(m, o) }
    }

    func free(_ m: CausalLM, _ o: AnyObject) {
        if slot.occupant(m) === o { slot.set(m, nil) }
        if model === m { model = nil }
    }

    func setEnabled(_ on: Bool, _ o: AnyObject) {
        isEnabled = on
        guard let m = model else { return }
        if on {
            if let other = slot.occupant(m), other !== o {
                fatalError("[\(method)] cannot re-enable: \(type(of: other)) took the \(slot.rawValue) slot while this adapter was disabled")
            }
            slot.set(m, o)
        } else if slot.occupant(m) === o {
            slot.set(m, nil)
        }
    }
}
