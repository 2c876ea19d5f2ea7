// What a PEFT method says about itself, and the registry Training, Formats and the CLI read it from.
// A method's file declares one `MethodDescription`: its command-line names, its config type (PEFT
// field names, defaults stated once in the type), the options a user may set with flags, the
// defaults that depend on the model (targets per family), and its Hugging Face PEFT mapping.
// Nothing outside a method's file switches on method names or types.

import Foundation
import TensorCore
import NN
import Models

/// A Codable settings type whose every default is stated once, as the property's initial value;
/// `decode` fills the fields a JSON object leaves out from `init()`.
public protocol DefaultedCodable: Codable {
    /// Every field at its default.
    init()
    /// Fields a JSON config must give (PEFT has no default for them).
    static var requiredFields: [String] { get }
    /// Rewrites accepted spellings before decoding (e.g. an int where PEFT also takes a list).
    static func normalize(_ fields: inout [String: Any])
}

/// A PEFT configuration with Hugging Face PEFT's field names.
public protocol PEFTConfig: DefaultedCodable, Sendable {}

extension DefaultedCodable {
    public static var requiredFields: [String] { [] }
    public static func normalize(_ fields: inout [String: Any]) {}

    /// The defaults as a JSON object (fields that default to nil are null or absent).
    public static func defaultFields() -> [String: Any] {
        let data = (try? JSONEncoder().encode(Self())) ?? Data("{}".utf8)
        return ((try? JSONSerialization.jsonObject(with: data)) as? [String: Any]) ?? [:]
    }

    /// Decodes a PEFT JSON object: fields left out (or null where the default is not) take the
    /// type's defaults; unknown fields are ignored, as PEFT ignores them. `method` names the method in errors.
    public static func decode(_ data: Data, method: String = String(describing: Self.self)) throws -> Self {
        guard let given = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw PEFTError(message: "\(method): the config is not a JSON object")
        }
        return try decode(fields: given, method: method)
    }

    /// Same, from a parsed JSON object.
    public static func decode(fields given: [String: Any], method: String = String(describing: Self.self)) throws -> Self {
        for f in requiredFields where given[f] == nil || given[f] is NSNull {
            throw PEFTError(message: "\(method): \(f) is required in the config (PEFT has no default)")
        }
        var merged = defaultFields()
        for (k, v) in given where !(v is NSNull && merged[k] != nil && !(merged[k] is NSNull)) { merged[k] = v }
        normalize(&merged)
        do {
            return try JSONDecoder().decode(Self.self, from: JSONSerialization.data(withJSONObject: merged))
        } catch let e as DecodingError {
            throw PEFTError(message: "\(method): \(describe(e))")
        }
    }
}

/// A decoding error as a sentence naming the field.
func describe(_ e: DecodingError) -> String {
    func path(_ c: [CodingKey]) -> String { c.map(\.stringValue).joined(separator: ".") }
    switch e {
    case .typeMismatch(let t, let c): return "\(path(c.codingPath)) must be \(t): \(c.debugDescription)"
    case .valueNotFound(let t, let c): return "\(path(c.codingPath)) must be \(t), got null"
    case .keyNotFound(let k, _): return "\(k.stringValue) is missing"
    case .dataCorrupted(let c): return "\(path(c.codingPath)): \(c.debugDescription)"
    @unknown default: return "\(e)"
    }
}

/// One setting a user may give a method as a command-line flag (`--r 8`) or a config-file key
/// (`"r": 8`); it sets one PEFT config field.
public struct MethodOption: Sendable {
    public enum Kind: String, Sendable {
        case int, float, bool, string
        /// Comma-separated on the command line, a list in JSON.
        case list
    }
    /// The long flag without dashes, also the config-file key.
    public let flag: String
    /// The PEFT config field it sets.
    public let field: String
    public let kind: Kind
    public let help: String

    public init(_ flag: String, field: String, _ kind: Kind, help: String) {
        (self.flag, self.field, self.kind, self.help) = (flag, field, kind, help)
    }

    /// The JSON value of `value` (a command-line string or a config-file JSON value); throws a
    /// sentence naming the flag.
    public func jsonValue(_ value: Any) throws -> Any {
        let text = (value as? String)?.trimmingCharacters(in: .whitespaces)
        func bad() -> PEFTError {
            PEFTError(message: "--\(flag) expects \(kind == .list ? "a comma-separated list" : "a\(kind == .int ? "n" : "") \(kind.rawValue)"), got \(value)")
        }
        switch kind {
        case .int:
            if let t = text { guard let v = Int(t) else { throw bad() }; return v }
            guard let n = value as? NSNumber, let v = Int(exactly: n.doubleValue) else { throw bad() }
            return v
        case .float:
            if let t = text { guard let v = Double(t) else { throw bad() }; return v }
            guard let n = value as? NSNumber else { throw bad() }
            return n.doubleValue
        case .bool:
            if let t = text { guard let v = ["true": true, "false": false][t] else { throw bad() }; return v }
            guard let v = value as? Bool else { throw bad() }
            return v
        case .string:
            guard let t = text else { throw bad() }
            return t
        case .list:
            if let t = text { return t.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } }
            guard let l = value as? [String] else { throw bad() }
            return l
        }
    }
}

/// How a method travels as a Hugging Face PEFT adapter folder.
public struct PEFTFolderMapping {
    /// Adjusts an `adapter_config.json` PEFT wrote before it is decoded; throws (a sentence without
    /// the file name, which the caller adds) for options this library does not implement.
    public var prepareImport: (_ config: inout [String: Any], _ context: PEFTImportContext) throws -> Void

    public init(prepareImport: @escaping (inout [String: Any], PEFTImportContext) throws -> Void = { _, _ in }) {
        self.prepareImport = prepareImport
    }
}

/// What an import knows besides the config's fields.
public struct PEFTImportContext {
    /// For each top-level field of `adapter_config.json` whose value is an object, its keys in the
    /// order the file lists them. A parsed JSON object keeps no order, but PEFT reads some objects
    /// in it (LoRA's `rank_pattern` and `alpha_pattern`: the first matching key wins).
    public var keyOrder: [String: [String]]
    /// The names of the base model's Linear modules, the adapter's possible targets.
    public var linearModules: [String]

    public init(keyOrder: [String: [String]] = [:], linearModules: [String] = []) {
        self.keyOrder = keyOrder
        self.linearModules = linearModules
    }
}

/// Everything the library and the CLI know about one PEFT method, declared in the method's file.
public struct MethodDescription {
    /// The class.
    public let type: PEFTMethod.Type
    /// Command-line names, each with the config fields it presets (e.g. "dora": use_dora true).
    public let names: [(name: String, preset: [String: Any])]
    /// One line for help texts.
    public let summary: String
    /// What a user may set with flags or config-file keys.
    public let options: [MethodOption]
    /// The config's defaults as JSON (from the config type).
    public let defaults: () -> [String: Any]
    /// Fields of a new adapter that depend on the model (e.g. target modules per family).
    public let modelDefaults: (ModelConfig) -> [String: Any]
    /// Builds the method from PEFT JSON; `restoring`: its tensors are loaded right after attach.
    public let make: (_ config: Data, _ adapterName: String, _ restoring: Bool) throws -> PEFTMethod
    /// nil: the method has no Hugging Face PEFT format.
    public let peftFolder: PEFTFolderMapping?
    /// The config type's stored property names (Swift spelling).
    let propertyNames: () -> [String]

    /// - build: the method from its decoded config, adapter name and `restoring`.
    public init<C: PEFTConfig>(_ type: PEFTMethod.Type, config: C.Type, names: [(String, [String: Any])], summary: String,
                               options: [MethodOption] = [], modelDefaults: @escaping (ModelConfig) -> [String: Any] = { _ in [:] },
                               peftFolder: PEFTFolderMapping?, build: @escaping (C, String, Bool) throws -> PEFTMethod) {
        self.type = type
        self.names = names.map { (name: $0.0, preset: $0.1) }
        self.summary = summary
        self.options = options
        defaults = { C.defaultFields() }
        propertyNames = { Mirror(reflecting: C()).children.compactMap(\.label) }
        self.modelDefaults = modelDefaults
        make = { data, name, restoring in try build(C.decode(data, method: type.peftType), name, restoring) }
        self.peftFolder = peftFolder
    }

    /// Hugging Face PEFT's `peft_type`.
    public var peftType: String { type.peftType }
    /// Whether the adapter can be folded into the base's weights.
    public var merges: Bool { type is MergeablePEFTMethod.Type }

    /// The config of a new adapter called `name` for `model`: the type's defaults ← the model's
    /// defaults ← the name's preset ← `peftConfig` (PEFT JSON fields) ← `settings` (flag → value,
    /// for the options this method declares). Later sources win.
    public func newConfig(_ name: String, for model: ModelConfig, peftConfig: [String: Any] = [:],
                          settings: [String: Any] = [:]) throws -> Data {
        guard let preset = names.first(where: { $0.name == name })?.preset else {
            throw PEFTError(message: "\(peftType) has no command-line name '\(name)'; its names: \(names.map(\.name).joined(separator: ", "))")
        }
        try checkFields(peftConfig)
        var fields = modelDefaults(model)
        fields.merge(preset) { $1 }
        fields.merge(peftConfig) { $1 }
        for o in options { if let v = settings[o.flag] { fields[o.field] = try o.jsonValue(v) } }
        fields["peft_type"] = peftType
        return try JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys])
    }

    /// Refuses a field of a new adapter's PEFT config that this method does not have (a typo such
    /// as `target_modulez`, or a PEFT feature it does not implement), naming it and the fields it
    /// has. PEFT's bookkeeping fields, and fields left off (null, false, empty), are accepted, so a
    /// PEFT `adapter_config.json` can serve as `--method-config`. (Loading a saved adapter ignores
    /// unknown fields, as PEFT does, so folders from newer PEFT versions still load.)
    func checkFields(_ peftConfig: [String: Any]) throws {
        let known = knownFields()
        for (k, v) in peftConfig.sorted(by: { $0.key < $1.key }) where !known.contains(k) && !Self.peftBookkeeping.contains(k) {
            guard Self.isLeftOff(v) else {
                throw PEFTError(message: "[\(peftType)] the method config has an unknown field \"\(k)\"; \(peftType) has: \(known.sorted().joined(separator: ", "))")
            }
        }
    }

    /// Whether a PEFT config value leaves its feature off (null, false, empty): such a field is
    /// accepted where it is not known.
    public static func isLeftOff(_ v: Any) -> Bool {
        v is NSNull || (v as? Bool) == false || (v as? [Any])?.isEmpty == true || (v as? [String: Any])?.isEmpty == true
    }

    /// The fields of `peftConfig` this method reads (its own and PEFT's bookkeeping): what `compare`
    /// gives each method of one `--method-config`, as each method option goes to the methods that
    /// declare it.
    public func ownFields(of peftConfig: [String: Any]) -> [String: Any] {
        let known = knownFields()
        return peftConfig.filter { known.contains($0.key) || Self.peftBookkeeping.contains($0.key) }
    }

    /// PEFT fields that record where an adapter came from and do not change what it computes.
    static let peftBookkeeping: Set<String> = ["auto_mapping", "revision", "peft_version", "megatron_core", "task_type",
                                               "base_model_name_or_path", "inference_mode", "peft_type"]

    /// The config type's PEFT field names: those its defaults encode, and those that default to nil
    /// (absent from the encoding), from the stored properties' names in snake case.
    public func knownFields() -> Set<String> {
        Set(defaults().keys).union(propertyNames().map { label in
            label.reduce(into: "") { s, ch in if ch.isUppercase { s += "_" + ch.lowercased() } else { s.append(ch) } }
        })
    }

    /// The default shown for `option` in help ("8", "[q_proj, v_proj]", "none").
    public func defaultText(_ option: MethodOption) -> String {
        guard let v = names.first?.preset[option.field] ?? defaults()[option.field], !(v is NSNull) else { return "none" }
        if let l = v as? [Any] { return l.map { "\($0)" }.joined(separator: ",") }
        if option.kind == .bool { return (v as? Bool) == true ? "true" : "false" }
        return "\(v)"
    }
}

/// The methods a `PEFTMethod` can be built from: one line per built-in method, and `register` for
/// methods defined elsewhere (an application's own method, a test's).
public enum PEFTRegistry {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var methods: [MethodDescription] = [
        LoRA.registration,
        IA3.registration,
        BottleneckAdapter.registration,
        PromptTuning.registration,
        PTuning.registration,
        PrefixTuning.registration,
    ]

    /// Every registered method, built-in ones first.
    public static var all: [MethodDescription] { lock.withLock { methods } }

    /// Adds a method (replacing one with the same `peft_type`). Its names must not be taken.
    public static func register(_ d: MethodDescription) throws {
        try lock.withLock {
            methods.removeAll { $0.peftType == d.peftType }
            for n in d.names.map(\.name) where methods.contains(where: { $0.names.contains { $0.name == n } }) {
                throw PEFTError(message: "cannot register \(d.peftType): the command-line name '\(n)' belongs to another method")
            }
            methods.append(d)
        }
    }

    /// Every command-line name, in registry order.
    public static var names: [String] { all.flatMap { $0.names.map(\.name) } }

    /// The method called `name` on the command line.
    public static func method(named name: String) -> MethodDescription? {
        all.first { $0.names.contains { $0.name == name } }
    }

    /// The command-line name of `method` (an adapter loaded from a file): of its registration's
    /// names, the one whose preset its config holds (LoRA with `use_dora` is "dora"), else the first.
    public static func name(of method: PEFTMethod) -> String {
        let type = Swift.type(of: method).peftType
        guard let d = Self.method(peftType: type) else { return type.lowercased() }
        let config = ((try? method.configJSON()).flatMap { try? JSONSerialization.jsonObject(with: $0) } as? [String: Any]) ?? [:]
        let holding = d.names.filter { n in n.preset.allSatisfy { k, v in (config[k] as? NSObject)?.isEqual(v) == true } }
        return (holding.max { $0.preset.count < $1.preset.count } ?? d.names[0]).name
    }

    /// The method whose `peft_type` is `type`.
    public static func method(peftType type: String) -> MethodDescription? { all.first { $0.peftType == type } }

    /// The method for `nameOrType` ("lora" or "LORA", …) with `config` JSON. `restoring`: its
    /// tensors will be loaded right after attaching, so data-dependent initialization is skipped.
    public static func make(_ nameOrType: String, config: Data, name: String = "default", restoring: Bool = false) throws -> PEFTMethod {
        guard let d = method(named: nameOrType.lowercased()) ?? method(peftType: nameOrType.uppercased()) else {
            throw PEFTError(message: "unknown PEFT method '\(nameOrType)'; known: \(names.joined(separator: ", "))")
        }
        return try d.make(config, name, restoring)
    }

    /// A new method `name` (a command-line name) for `model`; see `MethodDescription.newConfig`.
    public static func makeNew(_ name: String, for model: ModelConfig, peftConfig: [String: Any] = [:],
                               settings: [String: Any] = [:], adapterName: String = "default") throws -> PEFTMethod {
        guard let d = method(named: name) else {
            throw PEFTError(message: "unknown method '\(name)'; choose one of \(names.joined(separator: ", "))")
        }
        return try d.make(d.newConfig(name, for: model, peftConfig: peftConfig, settings: settings), adapterName, false)
    }

    /// Every option of every method, once per flag, with the methods that take it.
    public static var options: [(option: MethodOption, methods: [String])] {
        var out: [(option: MethodOption, methods: [String])] = []
        for d in all {
            for o in d.options {
                if let i = out.firstIndex(where: { $0.option.flag == o.flag }) { out[i].methods += d.names.map(\.name) }
                else { out.append((o, d.names.map(\.name))) }
            }
        }
        return out
    }

    /// Help text for the method options, one line each: `--r <int>  LoRA rank (lora, dora; default 8)`.
    public static var optionsHelp: String {
        options.map { o, methods in
            let d = all.first { $0.options.contains { $0.flag == o.flag } }!
            let arg = o.kind == .bool ? "" : " <\(o.kind.rawValue)>"
            let def = o.kind == .list ? "" : "; default \(d.defaultText(o))"
            return "  --\(o.flag)\(arg): \(o.help) (\(methods.joined(separator: ", "))\(def))"
        }.joined(separator: "\n")
    }
}
