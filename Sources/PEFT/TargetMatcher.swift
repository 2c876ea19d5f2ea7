// Which modules a method adapts, with the rules Hugging Face PEFT users know: a list matches a
// module whose name equals an entry or ends with "." + entry; a string is a regex that must match
// the whole name; "all-linear" (any case) is every Linear but the output head; exclude_modules
// removes names the same way; layers_to_transform keeps only those layer indices (an empty list:
// all of them), except for a list entry that is a module's whole name.

import Foundation
import TensorCore
import NN
import Models

/// `target_modules` / `exclude_modules`: a list of names (suffix match) or one regex string.
public enum ModuleSelector: Codable, Equatable, Sendable, CustomStringConvertible {
    case names([String])
    case regex(String)

    /// As a config writes it: the list `["q_proj", "v_proj"]`, or the regex in quotes.
    public var description: String {
        switch self {
        case .names(let l): return "[" + l.map { "\"\($0)\"" }.joined(separator: ", ") + "]"
        case .regex(let r): return "regex \"\(r)\""
        }
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let list = try? c.decode([String].self) { self = .names(list) } else { self = .regex(try c.decode(String.self)) }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .names(let l): try c.encode(l)
        case .regex(let r): try c.encode(r)
        }
    }

    /// Whether `name` (a full dotted module name) is selected.
    public func matches(_ name: String) -> Bool {
        switch self {
        case .names(let list): return list.contains { name == $0 || name.hasSuffix("." + $0) }
        case .regex(let pattern):
            guard let re = try? NSRegularExpression(pattern: "^(?:" + pattern + ")$") else { return false }
            return re.firstMatch(in: name, range: NSRange(name.startIndex..., in: name)) != nil
        }
    }
}

/// The layer index in a module name (`model.layers.3.…`, `transformer.h.3.…`), if any.
public func layerIndex(of name: String) -> Int? {
    let parts = name.split(separator: ".")
    for (i, p) in parts.enumerated() where (p == "layers" || p == "h") && i + 1 < parts.count {
        if let n = Int(parts[i + 1]) { return n }
    }
    return nil
}

/// Selects modules of type `M` in `model` by the PEFT rules; throws listing the candidates when
/// nothing matches.
public func selectModules<M: Module>(_ model: CausalLM, of type: M.Type, targets: ModuleSelector,
                                     exclude: ModuleSelector? = nil, layers: [Int]? = nil,
                                     method: String) throws -> [(String, M)] {
    let candidates = model.namedModules().compactMap { n, m in (m as? M).map { (n, $0) } }
    let layers = layers?.isEmpty == true ? nil : layers  // PEFT: an empty list means every layer
    for (field, selector) in [("target_modules", targets), ("exclude_modules", exclude)] {
        guard case .regex(let pattern)? = selector, field == "exclude_modules" || pattern.lowercased() != "all-linear" else { continue }
        do { _ = try NSRegularExpression(pattern: "^(?:" + pattern + ")$") } catch {
            throw PEFTError(message: "[\(method)] \(field) \"\(pattern)\" is not a valid regular expression (it would match nothing)")
        }
    }
    let selected = candidates.filter { name, _ in
        let isTarget: Bool
        if case .regex(let p) = targets, p.lowercased() == "all-linear" {  // PEFT reads the shorthand in any case
            isTarget = name != "lm_head"
        } else if case .names(let l) = targets, l == ["all-linear"] {
            isTarget = name != "lm_head"
        } else {
            isTarget = targets.matches(name)
        }
        guard isTarget else { return false }
        if let ex = exclude, ex.matches(name) { return false }
        // As PEFT: a list entry that is the whole name selects that module whatever layers_to_transform says.
        if case .names(let l) = targets, l.contains(name) { return true }
        if let layers, let i = layerIndex(of: name), !layers.contains(i) { return false }
        if layers != nil && layerIndex(of: name) == nil { return false }
        return true
    }
    // An entry naming modules of another kind (an embedding, a whole block) is an error, as in PEFT,
    // not dropped while the other entries adapt their layers. An entry naming nothing is allowed (a
    // list written for several architectures).
    if case .names(let list) = targets, list != ["all-linear"] {
        let all = model.namedModules()
        for entry in list {
            let named = all.filter { n, _ in n == entry || n.hasSuffix("." + entry) }
            if entry == "lm_head" && named.isEmpty && model.config.tieWordEmbeddings {
                throw PEFTError(message: "[\(method)] target_modules entry \"lm_head\" names the output head, which this model ties to the token embedding (tie_word_embeddings); \(method) on it is not implemented")
            }
            if let (name, module) = named.first, !named.contains(where: { $0.1 is M }) {
                throw PEFTError(message: "[\(method)] target_modules entry \"\(entry)\" names \(Swift.type(of: module)) modules (\(name)), not \(M.self) ones; \(method) on them is not implemented")
            }
        }
    }
    guard !selected.isEmpty else {
        let names = candidates.map(\.0)
        let shortNames = Array(Set(names.map { $0.split(separator: ".").last.map(String.init) ?? $0 })).sorted()
        throw PEFTError(message: """
            [\(method)] target_modules \(targets) matched no \(M.self) module of the model.
            Module names it has (\(names.count)): \(names.prefix(12).joined(separator: ", "))\(names.count > 12 ? ", …" : "")
            HINT: use a suffix such as \(shortNames.prefix(8).map { "\"\($0)\"" }.joined(separator: ", ")), a full regex, or "all-linear".
            """)
    }
    return selected
}

/// The entries of `method`'s `target_modules` list (read from its config) that name no module of
/// `model`. PEFT allows them (a list written for several architectures) and so does attaching, as
/// long as another entry matches; most often they are typos, which a caller can tell the user.
/// Empty for a regex, "all-linear", or a method without the field.
public func unmatchedTargetEntries(of method: PEFTMethod, in model: CausalLM) -> [String] {
    guard let data = try? method.configJSON(), let config = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
          let list = config["target_modules"] as? [String], list != ["all-linear"] else { return [] }
    let names = model.namedModules().map(\.0)
    return list.filter { entry in !names.contains { $0 == entry || $0.hasSuffix("." + entry) } }
}

/// `target_modules` and `layers_to_transform` of an exported `adapter_config.json` (a JSON object)
/// as PEFT reads them: "all-linear" as its string (PEFT expands no list), and a string (a regex or
/// "all-linear") beside layers_to_transform, a pair PEFT refuses, as the `adapted` modules' whole
/// names. SwiftPEFT's own checkpoints keep the config as it was given.
func peftReadableTargets(_ config: inout [String: Any], adapted: [String]) {
    let targets = config["target_modules"]
    let isString = targets is String || (targets as? [String]) == ["all-linear"]
    let layers = config["layers_to_transform"] as? [Any]
    if isString, let layers, !layers.isEmpty {
        config["target_modules"] = adapted
        config["layers_to_transform"] = NSNull()
        return
    }
    if isString && layers != nil { config["layers_to_transform"] = NSNull() }  // [] means every layer
    if (targets as? [String]) == ["all-linear"] { config["target_modules"] = "all-linear" }
}
