// Module: a named tree of parameters and sub-modules. Names are built from the construction path
// and equal the Hugging Face checkpoint keys (`model.layers.0.self_attn.q_proj.weight`), so loading
// is a key-for-key copy and PEFT target patterns match the names users know.

import TensorCore

/// Weight initialization can be skipped when every weight is about to be loaded (checkpoints, GGUF):
/// drawing 135M normals costs seconds that the copy then throws away.
public enum WeightInit {
    nonisolated(unsafe) static var skipDepth = 0

    /// Builds modules inside `body` with uninitialized weights; the caller must load every one
    /// (a strict `loadParameters` fails on any missing tensor).
    public static func skipped<T>(_ body: () throws -> T) rethrows -> T {
        skipDepth += 1
        defer { skipDepth -= 1 }
        return try body()
    }

    /// Normal(0, std) weights, or uninitialized memory inside `skipped`.
    public static func normal(_ shape: [Int], std: Float, rng: inout RNG) -> Tensor {
        skipDepth > 0 ? Tensor.empty(shape) : Tensor.normal(shape, std: std, rng: &rng)
    }
}

/// A node in the model tree: its own parameters and its children, each under a name.
open class Module {
    /// Own parameters in registration order (name relative to this module).
    public private(set) var ownParameters: [(name: String, tensor: Tensor)] = []
    /// Direct children in registration order.
    public private(set) var children: [(name: String, module: Module)] = []
    /// Training mode (dropout on); switched with `train()` / `eval()` for the whole tree.
    public private(set) var isTraining = false

    public init() {}

    /// Adds a parameter under `name`; returns it for assignment to a stored property.
    @discardableResult
    public func register(_ name: String, _ t: Tensor) -> Tensor {
        t.name = name
        ownParameters.append((name, t))
        return t
    }

    /// Replaces the tensor registered as `name` (same shape), e.g. when loading weights.
    public func replaceParameter(_ name: String, with t: Tensor) {
        guard let i = ownParameters.firstIndex(where: { $0.name == name }) else {
            fatalError("[Module] no parameter '\(name)' in \(type(of: self))")
        }
        ownParameters[i].tensor = t
    }

    /// Adds a child module under `name`.
    @discardableResult
    public func register<M: Module>(_ name: String, _ m: M) -> M {
        children.append((name, m))
        return m
    }

    /// Every parameter in the tree with its full dotted name, depth first in registration order.
    public func namedParameters(prefix: String = "") -> [(String, Tensor)] {
        var out = ownParameters.map { (prefix + $0.name, $0.tensor) }
        for (name, child) in children { out += child.namedParameters(prefix: prefix + name + ".") }
        return out
    }

    /// Every module in the tree with its full dotted name ("" for this one).
    public func namedModules(prefix: String = "") -> [(String, Module)] {
        var out: [(String, Module)] = [(prefix.isEmpty ? "" : String(prefix.dropLast()), self)]
        for (name, child) in children { out += child.namedModules(prefix: prefix + name + ".") }
        return out
    }

    /// The parameters that receive gradients.
    public func trainableParameters() -> [(String, Tensor)] { namedParameters().filter { $0.1.requiresGrad } }

    /// Marks every parameter in the tree frozen (no gradient, no optimizer state).
    public func freeze() { for (_, p) in namedParameters() { p.requiresGrad = false } }

    /// Marks every parameter in the tree trainable.
    public func unfreeze() { for (_, p) in namedParameters() { p.requiresGrad = true } }

    /// Sets training mode for the whole tree.
    public func train(_ on: Bool = true) {
        isTraining = on
        for (_, c) in children { c.train(on) }
    }

    /// Sets evaluation mode (no dropout) for the whole tree.
    public func eval() { train(false) }

    /// Number of scalars in all parameters.
    public var parameterCount: Int { namedParameters().reduce(0) { $0 + $1.1.count } }
}

/// Loading weights that don't fit the module: names the tensor and both shapes.
public struct WeightLoadError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

extension Module {
    /// Copies `weights` into the parameters with the same names (a key-for-key copy).
    /// - strict: every parameter must be present and no extra keys may remain (keys listed in
    ///   `ignoring` are skipped, e.g. a tied `lm_head.weight`).
    /// - Throws: naming the tensor and both shapes on a mismatch, a NaN or infinite value, or the
    ///   missing/unexpected keys.
    public func loadParameters(_ weights: [String: Tensor], strict: Bool = true, ignoring: Set<String> = [],
                               source: String = "weights") throws {
        try loadParameters(TensorReader(weights), strict: strict, ignoring: ignoring, source: source)
    }

    /// Reads each parameter from `reader` (in place when it has `readInto`, otherwise a copy of
    /// the tensor it reads), one tensor at a time, in name order:
    /// every shape and the strict key check come first, so a mismatch is found before any value is
    /// read. `didLoad` sees each parameter as soon as it holds its values (to hash it, or to keep
    /// only a bf16 copy of it before the next one is read). Names in `filledElsewhere` are checked
    /// as the others are but not read: the caller gave those parameters their values (packed blocks).
    public func loadParameters(_ reader: TensorReader, strict: Bool = true, ignoring: Set<String> = [],
                               source: String = "weights", filledElsewhere: Set<String> = [],
                               didLoad: ((String, Tensor) -> Void)? = nil) throws {
        let params = namedParameters()
        var missing: [String] = []
        for (name, p) in params {
            guard let shape = reader.shapes[name] else { missing.append(name); continue }
            guard shape == p.shape else {
                throw WeightLoadError(message: "\(source): tensor '\(name)' has shape \(shape), the model expects \(p.shape)")
            }
        }
        if strict {
            if !missing.isEmpty {
                throw WeightLoadError(message: "\(source): missing \(missing.count) tensor(s): \(missing.prefix(8).joined(separator: ", "))\(missing.count > 8 ? ", …" : "")")
            }
            let names = Set(params.map(\.0))
            let extra = reader.shapes.keys.filter { !names.contains($0) && !ignoring.contains($0) }.sorted()
            if !extra.isEmpty {
                throw WeightLoadError(message: "\(source): unexpected tensor(s) not in the model: \(extra.prefix(8).joined(separator: ", "))\(extra.count > 8 ? ", …" : "")")
            }
        }
        for (name, p) in params.sorted(by: { $0.0 < $1.0 }) where reader.shapes[name] != nil && !filledElsewhere.contains(name) {
            let bad: (index: Int, value: Float)?
            if let readInto = reader.readInto, p.isContiguous {
                try readInto(name, p.basePointer)  // in place: no second copy of the tensor
                bad = p.firstNonFinite()
            } else {
                let w = try reader.read(name)
                guard w.shape == p.shape else {  // the reader broke its own promise: still never copy out of bounds
                    throw WeightLoadError(message: "\(source): tensor '\(name)' was read with shape \(w.shape), the model expects \(p.shape)")
                }
                bad = w.firstNonFinite()
                if bad == nil { p.assign(w) }
            }
            if let bad {
                throw WeightLoadError(message: "\(source): tensor '\(name)' holds \(bad.value) at element \(bad.index); the weights are corrupt or come from a diverged run")
            }
            didLoad?(name, p)
        }
    }
}
