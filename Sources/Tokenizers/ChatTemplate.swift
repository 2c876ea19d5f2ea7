// Chat templates run as transformers runs them: the Jinja2 subset that Hugging Face chat templates
// use (statements if/for/set/macro/break/continue/generation/filter, Python-like values and
// operators, Jinja's filters and tests, Python's string and dict methods), rendered with the
// conversation, `add_generation_prompt` and the tokenizer's special-token texts. Checked against
// transformers' own Jinja environment (Tests/TokenizersTests/Fixtures/chat-templates.json, made by
// scripts/make_chat_template_fixtures.py). The syntax is read in ChatTemplate+Parser.swift.

import Foundation

/// A compiled chat template.
public struct ChatTemplate: Sendable {
    /// The template's text.
    public let source: String
    let nodes: [JinjaNode]

    /// Reads `source`.
    /// - Throws: `ChatTemplateError` naming the line, for syntax this library does not read.
    public init(_ source: String) throws {
        self.source = source
        var parser = try JinjaParser(source)
        nodes = try parser.parseTemplate()
    }

    /// The template rendered with `variables` (e.g. `messages`, `add_generation_prompt`, `bos_token`).
    /// - Throws: `ChatTemplateError`: a value the template cannot use (an undefined one's attribute,
    ///   `1 + 'a'`), or the template's own `raise_exception`.
    public func render(_ variables: [String: JinjaValue]) throws -> String {
        var renderer = JinjaRenderer(root: JinjaScope(parent: nil, variables: variables))
        _ = try renderer.render(nodes, in: renderer.root)
        return renderer.output
    }

    /// The conversation rendered as transformers' `apply_chat_template` renders it: the messages
    /// as `{"role", "content"}` objects, `add_generation_prompt`, and the special tokens' texts
    /// (`bos_token`, `eos_token`, `unk_token`, `pad_token`, those the tokenizer has).
    public func render(messages: [(role: String, content: String)], addGenerationPrompt: Bool,
                       specialTokens: [String: String] = [:]) throws -> String {
        try render(conversation: messages.map { .dict(JinjaDict([("role", .string($0.role)), ("content", .string($0.content))])) },
                   addGenerationPrompt: addGenerationPrompt, specialTokens: specialTokens)
    }

    /// The conversation rendered as `apply_chat_template` renders it, each message a dict as the data
    /// gives it (tool calls and tool names included), with `tools` (JSON schemas; None when there
    /// are none, as `documents` always is here) and `kwargs`, the template's own variables
    /// (`chat_template_kwargs` such as Qwen3's `enable_thinking`), which take the place of a special
    /// token's text of the same name, as in transformers.
    /// - Throws: `ChatTemplateError` also for a kwarg named `messages`, `tools`, `documents` or
    ///   `add_generation_prompt`: the conversation gives those (in transformers they are
    ///   `apply_chat_template`'s own arguments, and `messages` in kwargs is an error).
    public func render(conversation messages: [JinjaValue], tools: [JinjaValue]? = nil, addGenerationPrompt: Bool,
                       specialTokens: [String: String] = [:], kwargs: [String: JinjaValue] = [:]) throws -> String {
        var variables: [String: JinjaValue] = [:]
        for (k, v) in specialTokens { variables[k] = .string(v) }
        for (k, v) in kwargs { variables[k] = v }
        for k in ["messages", "tools", "documents", "add_generation_prompt"] where kwargs[k] != nil {
            throw ChatTemplateError("chat template kwargs may not set '\(k)', which the conversation gives")
        }
        variables["messages"] = .list(messages)
        variables["add_generation_prompt"] = .bool(addGenerationPrompt)
        variables["tools"] = tools.map { .list($0) } ?? JinjaValue.none
        variables["documents"] = JinjaValue.none
        return try render(variables)
    }
}

// MARK: values

/// A value inside a template: JSON's values, plus Jinja's undefined, namespaces and callables.
public enum JinjaValue: @unchecked Sendable {
    /// A name or attribute that does not exist; `name` says which, for errors.
    case undefined(String)
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case list([JinjaValue])
    case tuple([JinjaValue])
    case dict(JinjaDict)
    case namespace(JinjaNamespace)
    case function(JinjaFunction)

    /// A value from what `JSONSerialization` reads (dictionaries, arrays, strings, numbers, booleans, NSNull).
    public init(json: Any) {
        switch json {
        case let s as String: self = .string(s)
        case let n as NSNumber:
            let type = String(cString: n.objCType)
            if type == "c" || type == "B" {
                self = .bool(n.boolValue)
            } else if ["f", "d"].contains(type) || n.int64Value.description != n.stringValue {
                self = .double(n.doubleValue)  // (an integer beyond 64 bits, which Python would keep exact)
            } else {
                self = .int(n.intValue)
            }
        case let b as Bool: self = .bool(b)
        case let i as Int: self = .int(i)
        case let d as Double: self = .double(d)
        case let l as [Any]: self = .list(l.map(JinjaValue.init(json:)))
        case let d as [String: Any]: self = .dict(JinjaDict(d.keys.sorted().map { ($0, JinjaValue(json: d[$0]!)) }))
        default: self = .none
        }
    }
}

/// A dictionary that keeps its keys in insertion order, as Python's does.
public struct JinjaDict: @unchecked Sendable {
    public private(set) var keys: [String] = []
    var values: [String: JinjaValue] = [:]
    /// The keys a template's dict literal gave as numbers, booleans or None (`{4096: 512}`), by their
    /// text (as tojson writes them): iterating, `items()` and `dictsort` give them back as they were.
    private var nonStringKeys: [String: JinjaValue] = [:]

    public init(_ pairs: [(String, JinjaValue)] = []) {
        for (k, v) in pairs { self[k] = v }
    }

    public subscript(key: String) -> JinjaValue? {
        get { values[key] }
        set {
            if values[key] == nil, newValue != nil { keys.append(key) }
            if newValue == nil { keys.removeAll { $0 == key } }
            values[key] = newValue
            nonStringKeys[key] = nil
        }
    }

    /// `d[key] = value` for a key of any kind.
    mutating func set(_ key: JinjaValue, _ value: JinjaValue) throws {
        let text = try Self.text(of: key)
        self[text] = value
        if case .string = key {} else { nonStringKeys[text] = key }
    }

    /// The value under `key` of any kind: a string, or a number, boolean or None a literal gave.
    func value(at key: JinjaValue) -> JinjaValue? {
        if case .string(let k) = key { return nonStringKeys[k] == nil ? values[k] : nil }
        guard let text = try? Self.text(of: key), let given = nonStringKeys[text], jinjaEqual(given, key) else { return nil }
        return values[text]
    }

    /// A key as the template gave it.
    func keyValue(_ key: String) -> JinjaValue { nonStringKeys[key] ?? .string(key) }

    var pairs: [(String, JinjaValue)] { keys.map { ($0, values[$0]!) } }
    /// The pairs with their keys as the template gave them.
    var items: [(JinjaValue, JinjaValue)] { keys.map { (keyValue($0), values[$0]!) } }

    private static func text(of key: JinjaValue) throws -> String {
        if case .string(let s) = key { return s }
        switch key {
        case .int, .double, .bool, .none: return try pythonJSON(key, indent: nil, sortKeys: false)
        default: throw ChatTemplateError("unhashable type: '\(key.typeName)'")
        }
    }
}

/// `namespace(...)`: the one object a template can change from inside a loop.
public final class JinjaNamespace {
    var attributes: JinjaDict
    init(_ attributes: JinjaDict) { self.attributes = attributes }
}

/// A function a template can call: a global, a macro, or a bound method.
public final class JinjaFunction {
    let name: String
    let call: (_ positional: [JinjaValue], _ keywords: [(String, JinjaValue)]) throws -> JinjaValue
    /// A function named `name` (for error messages) that a template calls with positional and keyword
    /// arguments; given as a variable, it takes the place of a global of that name (`strftime_now`).
    public init(_ name: String, _ call: @escaping ([JinjaValue], [(String, JinjaValue)]) throws -> JinjaValue) {
        self.name = name
        self.call = call
    }
}

extension JinjaValue {
    var isUndefined: Bool { if case .undefined = self { return true } else { return false } }

    /// The items of a list or tuple.
    var sequenceItems: [JinjaValue]? {
        switch self {
        case .list(let l), .tuple(let l): return l
        default: return nil
        }
    }

    /// Python truthiness (undefined is false).
    var truthy: Bool {
        switch self {
        case .undefined, .none: return false
        case .bool(let b): return b
        case .int(let i): return i != 0
        case .double(let d): return d != 0
        case .string(let s): return !s.isEmpty
        case .list(let l), .tuple(let l): return !l.isEmpty
        case .dict(let d): return !d.keys.isEmpty
        case .namespace, .function: return true
        }
    }

    /// The number, for arithmetic: bools count as 0 and 1, as in Python.
    var number: Double? {
        switch self {
        case .int(let i): return Double(i)
        case .double(let d): return d
        case .bool(let b): return b ? 1 : 0
        default: return nil
        }
    }
    var integer: Int? {
        switch self {
        case .int(let i): return i
        case .bool(let b): return b ? 1 : 0
        default: return nil
        }
    }

    /// Python's type name, for errors.
    var typeName: String {
        switch self {
        case .undefined: return "Undefined"
        case .none: return "NoneType"
        case .bool: return "bool"
        case .int: return "int"
        case .double: return "float"
        case .string: return "str"
        case .list: return "list"
        case .tuple: return "tuple"
        case .dict: return "dict"
        case .namespace: return "Namespace"
        case .function: return "function"
        }
    }

    /// What `{{ value }}` prints: Python's `str()`; undefined prints nothing.
    var printed: String {
        switch self {
        case .undefined: return ""
        case .string(let s): return s
        default: return pythonRepr
        }
    }

    /// Python's `repr()` (how a list prints its items).
    var pythonRepr: String { repr(printing: []) }

    /// `repr`, with the namespaces being printed (a namespace inside itself prints as Python's `{...}`).
    private func repr(printing: Set<ObjectIdentifier>) -> String {
        switch self {
        case .undefined: return "Undefined"
        case .none: return "None"
        case .bool(let b): return b ? "True" : "False"
        case .int(let i): return String(i)
        case .double(let d): return pythonFloat(d)
        case .string(let s): return pythonStringRepr(s)
        case .list(let l): return "[" + l.map { $0.repr(printing: printing) }.joined(separator: ", ") + "]"
        case .tuple(let l): return "(" + l.map { $0.repr(printing: printing) }.joined(separator: ", ") + (l.count == 1 ? ",)" : ")")
        case .dict(let d): return "{" + d.items.map { $0.0.repr(printing: printing) + ": " + $0.1.repr(printing: printing) }.joined(separator: ", ") + "}"
        case .namespace(let n):
            let id = ObjectIdentifier(n)
            if printing.contains(id) { return "<Namespace {...}>" }
            return "<Namespace \(JinjaValue.dict(n.attributes).repr(printing: printing.union([id])))>"
        case .function(let f): return "<function \(f.name)>"
        }
    }

    /// The items iterated by `for` (characters of a string, keys of a dict).
    func iterated() throws -> [JinjaValue] {
        switch self {
        case .undefined: return []
        case .list(let l), .tuple(let l): return l
        case .dict(let d): return d.items.map(\.0)
        case .string(let s): return s.unicodeScalars.map { .string(String($0)) }
        default: throw ChatTemplateError("'\(typeName)' object is not iterable")
        }
    }

    /// Python's `len()`.
    var length: Int? {
        switch self {
        case .undefined: return 0
        case .string(let s): return s.unicodeScalars.count
        case .list(let l), .tuple(let l): return l.count
        case .dict(let d): return d.keys.count
        default: return nil
        }
    }
}

/// Python's float repr: the shortest text that reads back, with ".0" on whole numbers.
func pythonFloat(_ d: Double) -> String {
    if d.isNaN { return "nan" }
    if d.isInfinite { return d < 0 ? "-inf" : "inf" }
    return "\(d)"
}

/// Python's `repr()` of a string: single quotes unless the text has one and no double quote.
func pythonStringRepr(_ s: String) -> String {
    let quote: Character = s.contains("'") && !s.contains("\"") ? "\"" : "'"
    var out = String(quote)
    for c in s.unicodeScalars {
        switch c {
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            // Python escapes what it does not print: controls, format characters, separators but the space, unassigned.
            let hidden: Set<Unicode.GeneralCategory> = [.control, .format, .surrogate, .privateUse, .unassigned,
                                                        .lineSeparator, .paragraphSeparator, .spaceSeparator]
            if Character(c) == quote {
                out += "\\" + String(quote)
            } else if c != " " && hidden.contains(c.properties.generalCategory) {
                out += c.value < 0x100 ? String(format: "\\x%02x", c.value) : c.value < 0x10000 ? String(format: "\\u%04x", c.value)
                    : String(format: "\\U%08x", c.value)
            } else {
                out.unicodeScalars.append(c)
            }
        }
    }
    return out + String(quote)
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=sortKeys)`, as
/// transformers' `tojson` filter writes it.
func pythonJSON(_ v: JinjaValue, indent: String?, sortKeys: Bool, separators: (String, String)? = nil, asciiOnly: Bool = false,
                level: Int = 0) throws -> String {
    let (itemSeparator, keySeparator) = separators ?? (indent == nil ? (", ", ": ") : (",", ": "))
    func newline(_ l: Int) -> String { indent.map { "\n" + String(repeating: $0, count: l) } ?? "" }
    switch v {
    case .none: return "null"
    case .bool(let b): return b ? "true" : "false"
    case .int(let i): return String(i)
    case .double(let d): return d.isNaN ? "NaN" : d.isInfinite ? (d < 0 ? "-Infinity" : "Infinity") : pythonFloat(d)
    case .string(let s): return asciiOnly ? asciiJSONString(s) : jsonString(s)
    case .list(let l), .tuple(let l):
        if l.isEmpty { return "[]" }
        let items = try l.map { try pythonJSON($0, indent: indent, sortKeys: sortKeys, separators: separators, asciiOnly: asciiOnly, level: level + 1) }
        return "[" + newline(level + 1) + items.joined(separator: itemSeparator + newline(level + 1)) + newline(level) + "]"
    case .dict(let d):
        if d.keys.isEmpty { return "{}" }
        let keys = sortKeys ? d.keys.sorted { Array($0.unicodeScalars.map(\.value)).lexicographicallyPrecedes($1.unicodeScalars.map(\.value)) } : d.keys
        let items = try keys.map { (asciiOnly ? asciiJSONString($0) : jsonString($0)) + keySeparator + (try pythonJSON(d[$0]!, indent: indent, sortKeys: sortKeys, separators: separators, asciiOnly: asciiOnly, level: level + 1)) }
        return "{" + newline(level + 1) + items.joined(separator: itemSeparator + newline(level + 1)) + newline(level) + "}"
    case .undefined, .function, .namespace: throw ChatTemplateError("Object of type \(v.typeName) is not JSON serializable")
    }
}

/// A JSON string with everything outside ASCII written as `\\uXXXX` (UTF-16, as `ensure_ascii=True`).
private func asciiJSONString(_ s: String) -> String {
    var out = ""
    for unit in jsonString(s).utf16 {
        if unit < 0x80 { out.unicodeScalars.append(Unicode.Scalar(unit)!) } else { out += String(format: "\\u%04x", unit) }
    }
    return out
}

// MARK: equality and order

func jinjaEqual(_ a: JinjaValue, _ b: JinjaValue) -> Bool {
    switch (a, b) {
    case (.undefined, .undefined), (.none, .none): return true
    case (.string(let x), .string(let y)): return x.unicodeScalars.elementsEqual(y.unicodeScalars)
    case (.list(let x), .list(let y)), (.tuple(let x), .tuple(let y)): return x.count == y.count && zip(x, y).allSatisfy { jinjaEqual($0, $1) }
    case (.dict(let x), .dict(let y)):
        return Set(x.keys) == Set(y.keys) && x.keys.allSatisfy { jinjaEqual(x[$0]!, y[$0]!) }
    case (.namespace(let x), .namespace(let y)): return x === y
    case (.function(let x), .function(let y)): return x === y
    default:
        if let x = a.number, let y = b.number { return x == y }
        return false
    }
}

/// Python's `<`; throws for values Python cannot order.
func jinjaLess(_ a: JinjaValue, _ b: JinjaValue) throws -> Bool {
    switch (a, b) {
    case (.string(let x), .string(let y)): return x.unicodeScalars.map(\.value).lexicographicallyPrecedes(y.unicodeScalars.map(\.value))
    case (.list(let x), .list(let y)), (.tuple(let x), .tuple(let y)):
        for (p, q) in zip(x, y) where !jinjaEqual(p, q) { return try jinjaLess(p, q) }
        return x.count < y.count
    default:
        if let x = a.number, let y = b.number { return x < y }
        throw ChatTemplateError("'<' not supported between instances of '\(a.typeName)' and '\(b.typeName)'")
    }
}

// MARK: rendering

final class JinjaScope {
    let parent: JinjaScope?
    var variables: [String: JinjaValue]
    init(parent: JinjaScope?, variables: [String: JinjaValue] = [:]) {
        self.parent = parent
        self.variables = variables
    }
    func lookup(_ name: String) -> JinjaValue? { variables[name] ?? parent?.lookup(name) }
}

enum JinjaFlow { case normal, breakLoop, continueLoop }

/// Bounds on what a template may build, so a hostile or broken one fails instead of exhausting memory or the stack.
enum JinjaLimits {
    /// Unicode scalars in the rendered text or in one string or list a template makes.
    static let size = 50_000_000
    /// Macro calls inside macro calls.
    static let macroDepth = 64

    static func check(_ n: Int, _ what: String) throws {
        guard n <= size else { throw ChatTemplateError("\(what) would be over \(size) long") }
    }
}

/// The macro calls running, shared by one rendering and the macros it calls.
final class JinjaCallDepth { var macros = 0 }

struct JinjaRenderer {
    let root: JinjaScope
    var output = ""
    let calls: JinjaCallDepth

    init(root: JinjaScope, calls: JinjaCallDepth = JinjaCallDepth()) {
        self.root = root
        self.calls = calls
        for (name, f) in jinjaGlobals where root.variables[name] == nil { root.variables[name] = .function(f) }
    }

    mutating func render(_ nodes: [JinjaNode], in scope: JinjaScope) throws -> JinjaFlow {
        for node in nodes {
            switch node {
            case .text(let t): try write(t)
            case .output(let e, let line): try write(try at(line) { try eval(e, scope).printed })
            case .conditional(let branches, let otherwise, let line):
                var chosen = otherwise
                for (condition, body) in branches where try at(line, { try eval(condition, scope).truthy }) {
                    chosen = body
                    break
                }
                let flow = try render(chosen, in: scope)
                if flow != .normal { return flow }
            case .loop(let targets, let sequence, let filter, let body, let otherwise, let line):
                try renderLoop(targets, sequence, filter, body, otherwise, line, scope)
            case .set(let targets, let attribute, let e, let line):
                let value = try at(line) { try eval(e, scope) }
                if let attribute {
                    guard case .namespace(let ns) = scope.lookup(targets[0]) ?? .undefined(targets[0]) else {
                        throw ChatTemplateError("line \(line): can only set attributes of a namespace, and '\(targets[0])' is not one")
                    }
                    ns.attributes[attribute] = value
                } else if targets.count == 1 {
                    scope.variables[targets[0]] = value
                } else {
                    let items = try at(line) { try value.iterated() }
                    guard items.count == targets.count else {
                        throw ChatTemplateError("line \(line): \(targets.count) names to set but \(items.count) values")
                    }
                    for (t, v) in zip(targets, items) { scope.variables[t] = v }
                }
            case .setBlock(let target, let filters, let body, let line):
                var value = JinjaValue.string(try capture(body, in: scope))
                for (name, arguments) in filters { value = try at(line) { try applyFilter(name, to: value, try evalArguments(arguments, scope)) } }
                scope.variables[target] = value
            case .macro(let name, let parameters, let body):
                scope.variables[name] = .function(makeMacro(name, parameters, body, defined: scope))
            case .breakLoop: return .breakLoop
            case .continueLoop: return .continueLoop
            case .with(let assignments, let body):
                let inner = JinjaScope(parent: scope)
                for (target, e) in assignments { inner.variables[target] = try eval(e, scope) }
                let flow = try render(body, in: inner)
                if flow != .normal { return flow }
            case .generation(let body):  // a block of its own, as Jinja makes it: what it sets stays inside
                _ = try render(body, in: JinjaScope(parent: scope))
            case .filterBlock(let name, let arguments, let body, let line):
                let text = try capture(body, in: scope)
                try write(try at(line) { try applyFilter(name, to: .string(text), try evalArguments(arguments, scope)).printed })
            }
        }
        return .normal
    }

    mutating func write(_ text: String) throws {
        output += text
        try JinjaLimits.check(output.utf8.count, "the rendered text")
    }

    /// Runs `body`, adding the template line to an error that has none.
    func at<T>(_ line: Int, _ body: () throws -> T) throws -> T {
        do { return try body() } catch var e as ChatTemplateError where !e.message.hasPrefix("line ") && !e.raisedByTemplate {
            e.message = "line \(line): " + e.message
            throw e
        }
    }

    mutating func capture(_ body: [JinjaNode], in scope: JinjaScope) throws -> String {
        let saved = output
        output = ""
        defer { output = saved }
        _ = try render(body, in: scope)
        return output
    }

    // Each iteration has a scope of its own: what `set` writes in one is gone in the next and after the loop.
    mutating func renderLoop(_ targets: [String], _ sequence: JinjaExpr, _ filter: JinjaExpr?, _ body: [JinjaNode],
                             _ otherwise: [JinjaNode], _ line: Int, _ scope: JinjaScope) throws {
        let all = try at(line) { try eval(sequence, scope).iterated() }
        var loopScope = JinjaScope(parent: scope)
        func bind(_ item: JinjaValue) throws {
            if targets.count == 1 { loopScope.variables[targets[0]] = item; return }
            let parts = try at(line) { try item.iterated() }
            guard parts.count == targets.count else {
                throw ChatTemplateError("line \(line): cannot unpack \(parts.count) values into \(targets.count) names")
            }
            for (t, v) in zip(targets, parts) { loopScope.variables[t] = v }
        }
        var items = all
        if let filter {
            items = try all.filter { item in
                try bind(item)
                return try at(line) { try eval(filter, loopScope).truthy }
            }
        }
        if items.isEmpty {
            _ = try render(otherwise, in: scope)
            return
        }
        let n = items.count
        final class Seen { var values: [JinjaValue]? }
        let lastSeen = Seen()
        for (k, item) in items.enumerated() {
            loopScope = JinjaScope(parent: scope)
            try bind(item)
            let cycle = JinjaFunction("cycle") { args, _ in args.isEmpty ? .none : args[k % args.count] }
            let changed = JinjaFunction("changed") { args, _ in  // whether the values differ from the last call's
                defer { lastSeen.values = args }
                return .bool(lastSeen.values.map { !jinjaEqual(.list($0), .list(args)) } ?? true)
            }
            loopScope.variables["loop"] = .dict(JinjaDict([
                ("index", .int(k + 1)), ("index0", .int(k)), ("revindex", .int(n - k)), ("revindex0", .int(n - k - 1)),
                ("first", .bool(k == 0)), ("last", .bool(k == n - 1)), ("length", .int(n)),
                ("previtem", k > 0 ? items[k - 1] : .undefined("loop.previtem")),
                ("nextitem", k + 1 < n ? items[k + 1] : .undefined("loop.nextitem")), ("cycle", .function(cycle)),
                ("changed", .function(changed)), ("depth", .int(1)), ("depth0", .int(0)),
            ]))
            if try render(body, in: loopScope) == .breakLoop { break }
        }
    }

    func makeMacro(_ name: String, _ parameters: [(String, JinjaExpr?)], _ body: [JinjaNode], defined: JinjaScope) -> JinjaFunction {
        JinjaFunction(name) { positional, keywords in
            guard positional.count <= parameters.count else {
                throw ChatTemplateError("macro '\(name)' takes \(parameters.count) arguments, given \(positional.count)")
            }
            let calls = self.calls
            guard calls.macros < JinjaLimits.macroDepth else {
                throw ChatTemplateError("macro '\(name)' called inside \(JinjaLimits.macroDepth) macro calls: endless recursion?")
            }
            calls.macros += 1
            defer { calls.macros -= 1 }
            let scope = JinjaScope(parent: defined)
            var inner = JinjaRenderer(root: self.root, calls: calls)
            for (k, (parameter, defaultValue)) in parameters.enumerated() {
                if k < positional.count {
                    scope.variables[parameter] = positional[k]
                } else if let v = keywords.first(where: { $0.0 == parameter })?.1 {
                    scope.variables[parameter] = v
                } else {
                    scope.variables[parameter] = try defaultValue.map { try inner.eval($0, scope) } ?? .undefined(parameter)
                }
            }
            if let unknown = keywords.first(where: { k in !parameters.contains { $0.0 == k.0 } }) {
                throw ChatTemplateError("macro '\(name)' takes no keyword argument '\(unknown.0)'")
            }
            _ = try inner.render(body, in: scope)
            return .string(inner.output)
        }
    }

    // MARK: expressions

    func evalArguments(_ a: JinjaArguments, _ scope: JinjaScope) throws -> ([JinjaValue], [(String, JinjaValue)]) {
        (try a.positional.map { try eval($0, scope) }, try a.keywords.map { ($0.0, try eval($0.1, scope)) })
    }

    func eval(_ e: JinjaExpr, _ scope: JinjaScope) throws -> JinjaValue {
        switch e {
        case .literal(let v): return v
        case .name(let n): return scope.lookup(n) ?? .undefined(n)
        case .list(let items): return .list(try items.map { try eval($0, scope) })
        case .tuple(let items): return .tuple(try items.map { try eval($0, scope) })
        case .dict(let pairs):
            var d = JinjaDict()
            for (k, v) in pairs { try d.set(try eval(k, scope), try eval(v, scope)) }
            return .dict(d)
        case .attribute(let base, let name): return try attribute(try eval(base, scope), name)
        case .item(let base, let index): return try item(try eval(base, scope), try eval(index, scope))
        case .slice(let base, let start, let stop, let step):
            return try Self.slice(try eval(base, scope), try start.map { try eval($0, scope) }, try stop.map { try eval($0, scope) },
                             try step.map { try eval($0, scope) })
        case .call(let callee, let arguments):
            let f = try eval(callee, scope)
            guard case .function(let function) = f else {
                if case .undefined(let name) = f { throw ChatTemplateError("'\(name)' is undefined") }
                throw ChatTemplateError("'\(f.typeName)' object is not callable")
            }
            let (positional, keywords) = try evalArguments(arguments, scope)
            return try sized(try function.call(positional, keywords))
        case .filter(let base, let name, let arguments):
            return try sized(try applyFilter(name, to: try eval(base, scope), try evalArguments(arguments, scope)))
        case .test(let base, let name, let arguments, let negated):
            let result = try applyTest(name, to: try eval(base, scope), try evalArguments(arguments, scope).0)
            return .bool(result != negated)
        case .unary(let op, let operand):
            let v = try eval(operand, scope)
            switch op {
            case "not": return .bool(!v.truthy)
            case "-":
                switch v {
                case .int(let i):
                    let (v, overflow) = 0.subtractingReportingOverflow(i)
                    guard !overflow else { throw ChatTemplateError("an integer beyond 64 bits") }
                    return .int(v)
                case .double(let d): return .double(-d)
                case .bool(let b): return .int(b ? -1 : 0)
                default: throw ChatTemplateError("bad operand type for unary -: '\(v.typeName)'")
                }
            default:
                guard v.number != nil else { throw ChatTemplateError("bad operand type for unary +: '\(v.typeName)'") }
                return v.integer.map { .int($0) } ?? v
            }
        case .binary("and", let l, let r):
            let left = try eval(l, scope)
            return left.truthy ? try eval(r, scope) : left
        case .binary("or", let l, let r):
            let left = try eval(l, scope)
            return left.truthy ? left : try eval(r, scope)
        case .binary(let op, let l, let r):
            return try sized(try binary(op, try eval(l, scope), try eval(r, scope)))
        case .conditional(let value, let condition, let otherwise):
            if try eval(condition, scope).truthy { return try eval(value, scope) }
            return try otherwise.map { try eval($0, scope) } ?? .undefined("the else of a conditional")
        }
    }

    /// `v`, if it is within `JinjaLimits.size` (a string doubled in a loop fails at the first step past it).
    func sized(_ v: JinjaValue) throws -> JinjaValue {
        switch v {
        case .string(let s): try JinjaLimits.check(s.utf8.count, "a string")
        case .list(let l), .tuple(let l): try JinjaLimits.check(l.count, "a list")
        default: break
        }
        return v
    }

    func binary(_ op: String, _ a: JinjaValue, _ b: JinjaValue) throws -> JinjaValue {
        func unsupported() -> ChatTemplateError {
            if case .undefined(let n) = a { return ChatTemplateError("'\(n)' is undefined") }
            if case .undefined(let n) = b { return ChatTemplateError("'\(n)' is undefined") }
            return ChatTemplateError("unsupported operand type(s) for \(op): '\(a.typeName)' and '\(b.typeName)'")
        }
        switch op {
        case "~": return .string(a.printed + b.printed)
        case "==": return .bool(jinjaEqual(a, b))
        case "!=": return .bool(!jinjaEqual(a, b))
        case "<": return .bool(try jinjaLess(a, b))
        case ">": return .bool(try jinjaLess(b, a))
        case "<=": return .bool(try !jinjaLess(b, a))
        case ">=": return .bool(try !jinjaLess(a, b))
        case "in": return .bool(try contains(b, a))
        case "not in": return .bool(!(try contains(b, a)))
        default: break
        }
        if op == "%", case .string(let format) = a { return .string(try pythonPercent(format, b)) }  // '%s!' % name
        if op == "*", let (item, n) = repetition(a, b) {  // 'ab' * 3, [1] * 2
            let times = max(0, n)
            let (total, overflow) = (item.length ?? 0).multipliedReportingOverflow(by: times)
            try JinjaLimits.check(overflow ? Int.max : total, "a repetition")
            if case .string(let s) = item { return .string(String(repeating: s, count: times)) }
            return .list(Array(repeating: item.sequenceItems ?? [], count: times).flatMap { $0 })
        }
        switch (op, a, b) {
        case ("+", .string(let x), .string(let y)): return .string(x + y)
        case ("+", .list(let x), .list(let y)): return .list(x + y)
        case ("+", .tuple(let x), .tuple(let y)): return .tuple(x + y)
        default: break
        }
        if let x = a.integer, let y = b.integer {
            switch op {
            case "+", "-", "*":  // Python's integers have no bound; these stay within 64 bits or fail
                let (v, overflow) = op == "+" ? x.addingReportingOverflow(y) : op == "-" ? x.subtractingReportingOverflow(y)
                    : x.multipliedReportingOverflow(by: y)
                guard !overflow else { throw ChatTemplateError("an integer beyond 64 bits (\(x) \(op) \(y))") }
                return .int(v)
            case "//", "%":
                guard y != 0 else { throw ChatTemplateError("integer division or modulo by zero") }
                if y == -1 { return op == "%" ? .int(0) : try binary("-", .int(0), a) }  // (Int.min / -1 would trap)
                var q = x / y
                if (x % y != 0) && ((x < 0) != (y < 0)) { q -= 1 }
                return .int(op == "//" ? q : x - q * y)
            case "**" where y >= 0:  // (a negative power is a float)
                if x == 0 || x == 1 { return .int(y == 0 ? 1 : x) }
                if x == -1 { return .int(y % 2 == 0 ? 1 : -1) }
                var result = 1
                for _ in 0..<y {  // |x| ≥ 2 leaves 64 bits within 64 steps
                    let (v, overflow) = result.multipliedReportingOverflow(by: x)
                    guard !overflow else { throw ChatTemplateError("an integer beyond 64 bits (\(x) ** \(y))") }
                    result = v
                }
                return .int(result)
            default: break
            }
        }
        guard let x = a.number, let y = b.number else { throw unsupported() }
        switch op {
        case "+": return .double(x + y)
        case "-": return .double(x - y)
        case "*": return .double(x * y)
        case "/":
            guard y != 0 else { throw ChatTemplateError("division by zero") }
            return .double(x / y)
        case "//", "%":
            guard y != 0 else { throw ChatTemplateError("float division by zero") }
            let q = (x / y).rounded(.down)
            return .double(op == "//" ? q : x - q * y)
        case "**": return .double(Foundation.pow(x, y))
        default: throw unsupported()
        }
    }

    /// A string or list and the integer it is repeated by, either way round.
    func repetition(_ a: JinjaValue, _ b: JinjaValue) -> (JinjaValue, Int)? {
        switch (a, b) {
        case (.string, _), (.list, _): return b.integer.map { (a, $0) }
        case (_, .string), (_, .list): return a.integer.map { (b, $0) }
        default: return nil
        }
    }

    /// Python's `needle in container`.
    func contains(_ container: JinjaValue, _ needle: JinjaValue) throws -> Bool {
        switch container {
        case .string(let s):
            guard case .string(let n) = needle else { throw ChatTemplateError("'in <string>' requires string as left operand, not \(needle.typeName)") }
            return n.isEmpty || s.contains(n)
        case .list(let l), .tuple(let l): return l.contains { jinjaEqual($0, needle) }
        case .dict(let d): return d.value(at: needle) != nil
        case .undefined: return false
        default: throw ChatTemplateError("argument of type '\(container.typeName)' is not iterable")
        }
    }

    /// `value.name`: a method or attribute first, then an item (Jinja's `getattr`).
    func attribute(_ value: JinjaValue, _ name: String) throws -> JinjaValue {
        if case .undefined(let n) = value { throw ChatTemplateError("'\(n)' is undefined (reading its attribute '\(name)')") }
        if let method = jinjaMethod(value, name) { return .function(method) }
        switch value {
        case .dict(let d): return d[name] ?? .undefined("\(value.typeName) object has no attribute '\(name)'")
        case .namespace(let ns): return ns.attributes[name] ?? .undefined(name)
        default: return .undefined("'\(value.typeName)' object has no attribute '\(name)'")
        }
    }

    /// `value[index]`: an item first, then an attribute (Jinja's `getitem`).
    func item(_ value: JinjaValue, _ index: JinjaValue) throws -> JinjaValue {
        switch (value, index) {
        case (.undefined(let n), _): throw ChatTemplateError("'\(n)' is undefined (reading an item of it)")
        case (.dict(let d), _): if let v = d.value(at: index) { return v }
        case (.namespace(let ns), .string(let k)): if let v = ns.attributes[k] { return v }
        case (.list(let l), _) where index.integer != nil, (.tuple(let l), _) where index.integer != nil:
            let i = index.integer!
            let k = i < 0 ? l.count + i : i
            if l.indices.contains(k) { return l[k] }
        case (.string(let s), _) where index.integer != nil:
            let scalars = Array(s.unicodeScalars)
            let i = index.integer!
            let k = i < 0 ? scalars.count + i : i
            if scalars.indices.contains(k) { return .string(String(scalars[k])) }
        default: break
        }
        if case .string(let name) = index, !value.isUndefined { return try attribute(value, name) }
        return .undefined("\(value.typeName) object has no element \(index.pythonRepr)")
    }

    /// Python's `value[start:stop:step]` on a list or string.
    static func slice(_ value: JinjaValue, _ start: JinjaValue?, _ stop: JinjaValue?, _ step: JinjaValue?) throws -> JinjaValue {
        func bound(_ v: JinjaValue?) throws -> Int? {
            guard let v, !v.isUndefined else { return nil }
            if case .none = v { return nil }
            guard let i = v.integer else { throw ChatTemplateError("slice indices must be integers or None") }
            return i
        }
        let step = try bound(step) ?? 1
        guard step != 0 else { throw ChatTemplateError("slice step cannot be zero") }
        func indices(_ n: Int) throws -> [Int] {
            func clamp(_ i: Int?, _ whenNil: Int, low: Int, high: Int) -> Int {
                guard var i else { return whenNil }
                if i < 0 { i += n }
                return Swift.min(Swift.max(i, low), high)
            }
            if step > 0 {
                let a = clamp(try bound(start), 0, low: 0, high: n), b = clamp(try bound(stop), n, low: 0, high: n)
                return a < b ? Array(stride(from: a, to: b, by: step)) : []
            }
            let a = clamp(try bound(start), n - 1, low: -1, high: n - 1), b = clamp(try bound(stop), -1, low: -1, high: n - 1)
            return a > b ? Array(stride(from: a, to: b, by: step)) : []
        }
        switch value {
        case .list(let l): return .list(try indices(l.count).map { l[$0] })
        case .tuple(let l): return .tuple(try indices(l.count).map { l[$0] })
        case .string(let s):
            let scalars = Array(s.unicodeScalars)
            return .string(String(String.UnicodeScalarView(try indices(scalars.count).map { scalars[$0] })))
        case .undefined(let n): throw ChatTemplateError("'\(n)' is undefined (slicing it)")
        default: throw ChatTemplateError("'\(value.typeName)' object is not subscriptable")
        }
    }
}
