// What the methods that hook Linear layers (LoRA/DoRA, IA3) share: the list of hooked layers,
// tensors trained with the adapter (biases, modules_to_save) with their originals, an attach that
// is all or nothing, detach, and merge/unmerge bookkeeping. The method files hold only their math.

import Foundation
import TensorCore
import NN
import Models

/// A Linear hook that can fold itself into its layer's weights and restore them exactly.
public protocol FoldableLinearHook: LinearHook {
    /// Whether `merge(into:)` has folded it (the hook is then quiet).
    var isMerged: Bool { get }
    func merge(into linear: Linear)
    func unmerge(from linear: Linear)
}

/// A method whose adapter can be folded into the base's weights (and unfolded exactly).
public protocol MergeablePEFTMethod: PEFTMethod {
    var isMerged: Bool { get }
    /// Folds the adapter into the weights; its hooks go quiet.
    func merge()
    /// Restores the weights saved by `merge`, bit for bit.
    func unmerge()
    /// The number of modules merge changes.
    var mergedModuleCount: Int { get }
}

/// A method that adapts named modules (its `target_modules`).
protocol AdaptsModules {
    /// The adapted modules' whole names, in model order.
    var adaptedModules: [String] { get }
}

extension LinearHookMethod: AdaptsModules {
    var adaptedModules: [String] { hooked.map(\.module) }
}

/// Base of the methods that hook Linear layers. Subclasses choose the targets and build one `Hook`
/// per layer; this class installs, removes, merges and unmerges them.
open class LinearHookMethod<Hook: FoldableLinearHook> {
    /// Adapter name (PEFT's "default" unless set).
    public let name: String
    /// The hooked layers, in model order.
    public private(set) var hooked: [(module: String, linear: Linear, hook: Hook)] = []
    /// Tensors trained with the adapter (biases, modules_to_save), with their values before attach.
    public private(set) var extraTrainable: [(key: String, tensor: Tensor, original: Tensor)] = []

    public init(name: String) { self.name = name }

    /// The parameters of `modules_to_save` entries (a prefix or a dotted part of the name).
    /// - Throws: naming the entry that matches nothing.
    public static func modulesToSave(_ entries: [String]?, in model: CausalLM, method: String) throws -> [(String, Tensor)] {
        var out: [(String, Tensor)] = []
        for m in entries ?? [] {
            let matched = model.namedParameters().filter { n, _ in n.hasPrefix(m + ".") || n.contains("." + m + ".") }
            guard !matched.isEmpty else { throw PEFTError(message: "[\(method)] modules_to_save entry '\(m)' matches no parameter of the model") }
            // A tied embedding is also the output head: training it in place would change the head,
            // where PEFT trains a copy of the embedding and leaves the head as it was.
            if model.config.tieWordEmbeddings, let (name, _) = matched.first(where: { $0.1 === model.tokenEmbeddingTable }) {
                throw PEFTError(message: "[\(method)] modules_to_save entry '\(m)' matches the token embedding \(name), which this model ties to its output head: training it would change the head too (PEFT trains a copy of the embedding); not supported")
            }
            out += matched
        }
        return out
    }

    /// Why `modules_to_save` cannot be trained on `model`: the entries that match weights whose
    /// fp32 values were released (bf16-only weights); nil when none do.
    public static func releasedModulesToSave(_ entries: [String]?, in model: CausalLM) -> String? {
        let released = ((try? modulesToSave(entries, in: model, method: "")) ?? []).filter { $0.1.storage.valuesReleased }
        return released.isEmpty ? nil : "its modules_to_save trains copies of \(released.map(\.0).joined(separator: ", "))"
    }

    /// Attaches after everything that can fail has been checked by the caller: freezes the base,
    /// installs one hook per target and makes `extra` trainable. Nothing here throws, so an attach
    /// either completes or leaves the model as it was. Returns the adapted module names.
    public func install(on model: CausalLM, targets: [(String, Linear)], extra: [(String, Tensor)],
                 makeHook: (String, Linear) -> Hook) -> [String] {
        model.freeze()
        for (module, linear) in targets {
            let hook = makeHook(module, linear)
            linear.hooks.append(hook)
            hooked.append((module, linear, hook))
        }
        for (key, t) in extra where !extraTrainable.contains(where: { $0.key == key }) {
            extraTrainable.append((key, t, t.copy()))
            t.requiresGrad = true
        }
        return targets.map(\.0)
    }

    /// Throws when this adapter is attached already (attach twice would hook every layer twice).
    public func checkDetached(_ method: String) throws {
        guard hooked.isEmpty else { throw PEFTError(message: "[\(method)] adapter '\(name)' is already attached; detach it first") }
    }

    /// Unmerges, removes exactly this adapter's hooks and restores the extra tensors.
    open func detach(from model: CausalLM) {
        unmerge()
        for (_, linear, hook) in hooked { linear.hooks.removeAll { $0 === hook } }
        for (_, t, original) in extraTrainable {
            t.assign(original)
            t.requiresGrad = false
        }
        hooked = []
        extraTrainable = []
    }

    /// The extra tensors under PEFT's keys: `base_model.model.<name>`, except the bias of a hooked
    /// layer, `base_model.model.<module>.base_layer.bias` (PEFT wraps the layer and keeps the
    /// original, bias included, as `base_layer`).
    public func extraParameters() -> [(String, Tensor)] {
        let modules = Set(hooked.map(\.module))
        return extraTrainable.map { e in
            let module = e.key.hasSuffix(".bias") ? String(e.key.dropLast(".bias".count)) : nil
            if let module, modules.contains(module) { return ("base_model.model.\(module).base_layer.bias", e.tensor) }
            return ("base_model.model.\(e.key)", e.tensor)
        }
    }

    /// Σ sizes of the extra tensors.
    public var extraCount: Int { extraTrainable.reduce(0) { $0 + $1.tensor.count } }

    public var isMerged: Bool { hooked.first?.hook.isMerged ?? false }

    /// Folds every hook into its layer (several adapters on one layer merge one after another).
    public func merge() {
        for (_, linear, hook) in hooked where !hook.isMerged {
            hook.merge(into: linear)
            linear.mergedHooks.append(hook)
        }
    }

    /// Restores the weights saved by `merge` exactly, last merged first. Where another adapter was
    /// merged into the layer after this one, it is unmerged first and merged again afterwards, so it
    /// stays merged and this one's change leaves the weights entirely.
    public func unmerge() {
        for (_, linear, hook) in hooked.reversed() where hook.isMerged {
            guard let i = linear.mergedHooks.firstIndex(where: { $0 === hook }) else { hook.unmerge(from: linear); continue }
            let later = linear.mergedHooks[(i + 1)...].compactMap { $0 as? FoldableLinearHook }
            for h in later.reversed() { h.unmerge(from: linear) }
            hook.unmerge(from: linear)
            linear.mergedHooks.removeSubrange(i...)
            for h in later {
                h.merge(into: linear)
                linear.mergedHooks.append(h)
            }
        }
    }

    public var mergedModuleCount: Int { hooked.count }
}
