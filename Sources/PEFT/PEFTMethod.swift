// The PEFT method protocol and the trainable-parameter report. A method attaches to a frozen base
// through the model's hook points (Linear hooks, block hooks, the attention and input prefix slots)
// and owns only its adapter tensors. Adding a method is one file (with its `MethodDescription`)
// plus one line in `PEFTRegistry` (MethodRegistry.swift).

import Foundation
import TensorCore
import NN
import Models

/// A parameter-efficient fine-tuning method attached to a frozen base model.
public protocol PEFTMethod: AnyObject {
    /// Hugging Face PEFT's `peft_type` ("LORA", "IA3", "PREFIX_TUNING", …); "BOTTLENECK" for
    /// adapters that have no PEFT type.
    static var peftType: String { get }
    /// Adapter name (PEFT's "default" unless set).
    var name: String { get }
    /// The configuration as JSON with Hugging Face PEFT's field names.
    func configJSON() throws -> Data
    /// Freezes the base and attaches; returns the names of the modules adapted. Throws when the
    /// config matches nothing, listing the names the model has.
    @discardableResult
    func attach(to model: CausalLM) throws -> [String]
    /// Removes every hook this method added (the base is left as it was before attaching).
    func detach(from model: CausalLM)
    /// The trainable tensors under their checkpoint keys (PEFT key names where PEFT has them).
    func adapterParameters() -> [(String, Tensor)]
    /// Turns the method off (the model behaves as its base) or on again, without detaching.
    var isEnabled: Bool { get set }
    /// The number of trainable scalars by the method's formula (e.g. Σ r·(in + out) for LoRA),
    /// computed from the adapted modules' sizes, independently of the tensors held.
    var expectedTrainableCount: Int { get }
    /// What a Hugging Face PEFT adapter folder holds for this adapter attached to a base of
    /// `base`'s shape: the config fields (PEFT names) and the tensors (PEFT keys, no graph).
    func peftFolderContents(base: ModelConfig) throws -> (config: [String: Any], tensors: [(String, Tensor)])
    /// Why this adapter cannot attach to `model` whose matrices keep only bf16 copies (their fp32
    /// values released: bf16-only weights): it reads those values (DoRA's row norms) or trains a
    /// copy of one (`modules_to_save`). nil when it can; the default.
    func releasedWeightsConflict(in model: CausalLM) -> String?
}

extension PEFTMethod {
    public func releasedWeightsConflict(in model: CausalLM) -> String? { nil }

    /// The config as written by `configJSON`, with `target_modules` as PEFT reads it
    /// (`peftReadableTargets`, for methods on Linear layers), and the adapter tensors, detached and
    /// contiguous.
    public func peftFolderContents(base: ModelConfig) throws -> (config: [String: Any], tensors: [(String, Tensor)]) {
        guard var config = try JSONSerialization.jsonObject(with: configJSON()) as? [String: Any] else {
            throw PEFTError(message: "the \(Self.peftType) adapter's config is not a JSON object")
        }
        if let hooked = self as? AdaptsModules { peftReadableTargets(&config, adapted: hooked.adaptedModules) }
        return (config, withNoGrad { adapterParameters().map { key, t in (key, t.detached().contiguous()) } })
    }

    /// Number of trainable scalars.
    public var trainableCount: Int { adapterParameters().reduce(0) { $0 + $1.1.count } }

    /// Copies tensors saved by `adapterParameters()` back into this method's tensors; returns the
    /// keys of `tensors` it used.
    @discardableResult
    public func loadAdapterParameters(_ tensors: [String: Tensor], source: String) throws -> Set<String> {
        var used = Set<String>()
        for (key, t) in adapterParameters() {
            // SwiftPEFT once saved a hooked layer's bias without PEFT's `base_layer`: still read.
            let older = key.replacingOccurrences(of: ".base_layer.bias", with: ".bias")
            guard let (name, v) = tensors[key].map({ (key, $0) }) ?? tensors[older].map({ (older, $0) }) else {
                throw PEFTError(message: "\(source): adapter tensor '\(key)' is missing")
            }
            used.insert(name)
            guard v.shape == t.shape else {
                throw PEFTError(message: "\(source): adapter tensor '\(key)' has shape \(v.shape), the adapter expects \(t.shape)")
            }
            if let bad = v.firstNonFinite() {
                throw PEFTError(message: "\(source): adapter tensor '\(key)' holds \(bad.value) at element \(bad.index); the adapter is corrupt or comes from a diverged run")
            }
            t.assign(v)
        }
        return used
    }
}

/// A method whose hooks can act on some rows of a batch only, so that several adapters serve one
/// batch of requests, each on its own rows (inference, under `withNoGrad`).
public protocol RowScopedPEFTMethod: PEFTMethod {
    /// The batch rows (the first axis of every adapted layer's input) the adapter applies to; nil:
    /// every row.
    var batchRows: Range<Int>? { get set }
    /// Values of the base the adapter trains with it (biases, `modules_to_save`): written into the
    /// base's own tensors, so they act on every row, whatever `batchRows` says.
    var extraCount: Int { get }
}

/// Makes the adapter called `name` the only active one among `adapters` (PEFT's `set_adapter`);
/// nil disables them all, so the model computes its base function.
public func setActiveAdapter(_ name: String?, in adapters: [PEFTMethod]) throws {
    if let name, !adapters.contains(where: { $0.name == name }) {
        throw PEFTError(message: "no adapter named '\(name)'; loaded: \(adapters.map(\.name).joined(separator: ", "))")
    }
    // Off first, then on: an adapter that shares a slot (prompt tuning and P-Tuning both take the
    // input prefix) is enabled only once the one holding it has let go.
    for a in adapters where a.name != name { a.isEnabled = false }
    for a in adapters where a.name == name { a.isEnabled = true }
}

/// A PEFT configuration or attachment problem, as a sentence.
public struct PEFTError: Error, CustomStringConvertible {
    public let message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}

/// Trainable versus total parameters of a model with methods attached.
public struct TrainableReport: CustomStringConvertible, Equatable {
    public let trainable: Int
    public let total: Int
    public var percent: Double { total == 0 ? 0 : 100 * Double(trainable) / Double(total) }

    /// Counts the base's parameters plus the methods' adapter tensors.
    public init(model: CausalLM, methods: [PEFTMethod]) {
        let base = model.namedParameters()
        let adapter = methods.reduce(0) { $0 + $1.trainableCount }
        trainable = base.filter { $0.1.requiresGrad }.reduce(0) { $0 + $1.1.count } + adapter
        total = base.reduce(0) { $0 + $1.1.count } + adapter
    }

    public var description: String {
        String(format: "trainable params: %d || all params: %d || trainable%%: %.4f", trainable, total, percent)
    }
}
