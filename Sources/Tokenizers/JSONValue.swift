// JSON values that keep the order of object keys. Chat data hands its messages' extra keys (tool
// calls, tool names) and its tool schemas to the chat template as the data gives them, and a
// template prints objects with `tojson` in that order, as Python's json does; Foundation's parser
// keeps no order.

import Foundation

/// A JSON value; objects keep their keys in the order of the text they were read from.
public indirect enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    /// A number written without a fraction or exponent that fits 64 bits (Python reads it as an int).
    case int(Int)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object(JSONObject)

    /// Reads one JSON value (and nothing after it but whitespace; a UTF-8 byte order mark before it
    /// is skipped, as Foundation's reader skips it). A key given twice in one object keeps its last
    /// value, as JSON readers do.
    /// - Throws: `JSONParseError` with the byte offset of the problem.
    public init(parsing text: String) throws {
        try self.init(parsing: text, refusingDuplicateKeys: false)
    }

    /// Reads one JSON value as `init(parsing:)` does; with `refusingDuplicateKeys`, a key given twice
    /// in one object is an error (a settings file, where it is a slip) instead of keeping its last value.
    public init(parsing text: String, refusingDuplicateKeys: Bool) throws {
        var parser = JSONTextParser(Array(text.utf8))
        parser.refuseDuplicateKeys = refusingDuplicateKeys
        if parser.bytes.starts(with: [0xEF, 0xBB, 0xBF]) { parser.i = 3 }
        self = try parser.document()
    }

    /// The JSON value that starts `text` (after whitespace) and the text after it, as Python's
    /// `JSONDecoder.raw_decode` reads one from a longer text; nil when none can be read there.
    public static func leading(in text: Substring) -> (value: JSONValue, rest: Substring)? {
        let utf8 = text.utf8
        var parser = JSONTextParser(Array(utf8))
        guard let v = try? parser.value() else { return nil }
        return (v, text[utf8.index(utf8.startIndex, offsetBy: parser.i)...])  // (i ends after an ASCII byte)
    }

    /// The value's member `key`, when it is an object that has one.
    public subscript(key: String) -> JSONValue? {
        if case .object(let o) = self { return o[key] }
        return nil
    }

    /// The string, when it is one.
    public var string: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    /// The value as a chat template sees it (an object becomes a dict with the same key order).
    public var jinja: JinjaValue {
        switch self {
        case .null: return .none
        case .bool(let b): return .bool(b)
        case .int(let i): return .int(i)
        case .double(let d): return .double(d)
        case .string(let s): return .string(s)
        case .array(let a): return .list(a.map(\.jinja))
        case .object(let o): return .dict(JinjaDict(o.members.map { ($0.key, $0.value.jinja) }))
        }
    }

    /// The value as JSON text, as Python's `json.dumps(value, ensure_ascii=False)` writes it
    /// (`", "` and `": "` between items, keys in order).
    public var text: String { (try? pythonJSON(jinja, indent: nil, sortKeys: false)) ?? "null" }

    /// "null", "a string", "an object", … for error messages.
    public var kind: String {
        switch self {
        case .null: return "null"
        case .bool: return "a boolean"
        case .int, .double: return "a number"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }
}

/// A JSON object: its members in order (a repeated key keeps its first place and its last value,
/// as Python's json does), found by key in constant time.
public struct JSONObject: Equatable, Sendable {
    public private(set) var members: [(key: String, value: JSONValue)] = []
    private var index: [String: Int] = [:]  // key → position in `members`

    public init(_ members: [(String, JSONValue)] = []) {
        for (k, v) in members { self[k] = v }
    }

    public subscript(key: String) -> JSONValue? {
        get { index[key].map { members[$0].value } }
        set {
            if let i = index[key] {
                if let newValue {
                    members[i].value = newValue
                } else {
                    members.remove(at: i)
                    index[key] = nil
                    for j in i..<members.count { index[members[j].key] = j }
                }
            } else if let newValue {
                index[key] = members.count
                members.append((key, newValue))
            }
        }
    }

    public var keys: [String] { members.map(\.key) }

    /// The members as a chat template's variables.
    public var jinjaVariables: [String: JinjaValue] {
        Dictionary(members.map { ($0.key, $0.value.jinja) }, uniquingKeysWith: { $1 })
    }

    public static func == (a: JSONObject, b: JSONObject) -> Bool {
        a.members.count == b.members.count && zip(a.members, b.members).allSatisfy { $0.key == $1.key && $0.value == $1.value }
    }
}

extension JSONObject: Codable {
    public init(from decoder: Decoder) throws {
        guard case .object(let o) = try JSONValue(from: decoder) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "expected a JSON object"))
        }
        self = o
    }
    public func encode(to encoder: Encoder) throws { try JSONValue.object(self).encode(to: encoder) }
}

/// JSON text that cannot be read: what and where (a byte offset).
public struct JSONParseError: Error, CustomStringConvertible {
    public let message: String
    public let offset: Int
    public var description: String { "\(message) at byte \(offset)" }

    /// The line and column (both from 1, the column in characters) of `offset` in `text`, the text parsed;
    /// lines end at "\n" or "\r\n", and a byte order mark before the text takes no column.
    public func position(in text: String) -> (line: Int, column: Int) {
        var before = Substring(String(decoding: text.utf8.prefix(offset), as: UTF8.self))
        if before.first == "\u{FEFF}" { before = before.dropFirst() }
        let line = before.reduce(1) { $1.isNewline ? $0 + 1 : $0 }
        let column = before.reversed().prefix { !$0.isNewline }.count + 1
        return (line, column)
    }
}

extension JSONValue: Codable {
    struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    public func encode(to encoder: Encoder) throws {
        switch self {
        case .object(let o):
            var c = encoder.container(keyedBy: Key.self)
            for (k, v) in o.members { try c.encode(v, forKey: Key(stringValue: k)) }
        case .array(let a):
            var c = encoder.unkeyedContainer()
            for v in a { try c.encode(v) }
        default:
            var c = encoder.singleValueContainer()
            switch self {
            case .null: try c.encodeNil()
            case .bool(let b): try c.encode(b)
            case .int(let i): try c.encode(i)
            case .double(let d): try c.encode(d)
            case .string(let s): try c.encode(s)
            default: break
            }
        }
    }

    /// Decodes any JSON value, losing what a decoder does not keep: an object's keys come in sorted
    /// order, and a float with an integral value may come back as an int.
    public init(from decoder: Decoder) throws {
        if let c = try? decoder.container(keyedBy: Key.self) {
            self = .object(JSONObject(try c.allKeys.sorted { $0.stringValue < $1.stringValue }.map { ($0.stringValue, try c.decode(JSONValue.self, forKey: $0)) }))
        } else if var c = try? decoder.unkeyedContainer() {
            var a: [JSONValue] = []
            while !c.isAtEnd { a.append(try c.decode(JSONValue.self)) }
            self = .array(a)
        } else {
            let c = try decoder.singleValueContainer()
            if c.decodeNil() { self = .null } else if let b = try? c.decode(Bool.self) { self = .bool(b) } else if let i = try? c.decode(Int.self) {
                self = .int(i)
            } else if let d = try? c.decode(Double.self) { self = .double(d) } else { self = .string(try c.decode(String.self)) }
        }
    }
}

/// A recursive-descent reader of JSON text (RFC 8259), nesting bounded at 512 levels.
struct JSONTextParser {
    let bytes: [UInt8]
    var i = 0
    var depth = 0
    /// Throw on a key given twice in one object instead of keeping its last value.
    var refuseDuplicateKeys = false

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    func fail(_ message: String) -> JSONParseError { JSONParseError(message: message, offset: i) }

    mutating func document() throws -> JSONValue {
        let v = try value()
        skipSpace()
        guard i == bytes.count else { throw fail("unexpected text after the JSON value") }
        return v
    }

    mutating func skipSpace() {
        while i < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[i]) { i += 1 }
    }

    mutating func value() throws -> JSONValue {
        skipSpace()
        guard i < bytes.count else { throw fail("unexpected end of the JSON text") }
        switch bytes[i] {
        case UInt8(ascii: "{"):
            depth += 1
            defer { depth -= 1 }
            guard depth <= 512 else { throw fail("JSON nested deeper than 512 levels") }
            i += 1
            var o = JSONObject()
            skipSpace()
            if i < bytes.count, bytes[i] == UInt8(ascii: "}") { i += 1; return .object(o) }
            while true {
                skipSpace()
                guard i < bytes.count else { throw fail("unexpected end of the JSON text") }
                guard bytes[i] == UInt8(ascii: "\"") else { throw fail("expected a string key") }
                let keyStart = i
                let key = try string()
                if refuseDuplicateKeys && o[key] != nil {
                    throw JSONParseError(message: "the key \"\(key)\" is given twice in one object", offset: keyStart)
                }
                skipSpace()
                guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { throw fail("expected ':' after a key") }
                i += 1
                o[key] = try value()
                skipSpace()
                guard i < bytes.count else { throw fail("unexpected end of the JSON text") }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                guard bytes[i] == UInt8(ascii: "}") else { throw fail("expected ',' or '}' in an object") }
                i += 1
                return .object(o)
            }
        case UInt8(ascii: "["):
            depth += 1
            defer { depth -= 1 }
            guard depth <= 512 else { throw fail("JSON nested deeper than 512 levels") }
            i += 1
            var a: [JSONValue] = []
            skipSpace()
            if i < bytes.count, bytes[i] == UInt8(ascii: "]") { i += 1; return .array(a) }
            while true {
                a.append(try value())
                skipSpace()
                guard i < bytes.count else { throw fail("unexpected end of the JSON text") }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                guard bytes[i] == UInt8(ascii: "]") else { throw fail("expected ',' or ']' in an array") }
                i += 1
                return .array(a)
            }
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): return try literal("true", .bool(true))
        case UInt8(ascii: "f"): return try literal("false", .bool(false))
        case UInt8(ascii: "n"): return try literal("null", .null)
        default: return try number()
        }
    }

    mutating func literal(_ word: String, _ v: JSONValue) throws -> JSONValue {
        let w = Array(word.utf8)
        guard bytes.count - i >= w.count, Array(bytes[i..<(i + w.count)]) == w else { throw fail("unexpected character") }
        i += w.count
        return v
    }

    mutating func number() throws -> JSONValue {
        let start = i
        var integral = true
        if i < bytes.count, bytes[i] == UInt8(ascii: "-") { i += 1 }
        func digits() -> Int {
            let s = i
            while i < bytes.count, bytes[i] >= 0x30, bytes[i] <= 0x39 { i += 1 }
            return i - s
        }
        let first = i < bytes.count ? bytes[i] : 0
        guard digits() > 0 else { i = start; throw fail("unexpected character") }
        guard !(first == UInt8(ascii: "0") && i - start > (bytes[start] == UInt8(ascii: "-") ? 2 : 1)) else {
            throw JSONParseError(message: "a number with a leading zero", offset: start)
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: ".") {
            integral = false
            i += 1
            guard digits() > 0 else { throw fail("expected digits after '.'") }
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E") {
            integral = false
            i += 1
            if i < bytes.count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") { i += 1 }
            guard digits() > 0 else { throw fail("expected digits in an exponent") }
        }
        let text = String(decoding: bytes[start..<i], as: UTF8.self)
        if integral, let n = Int(text) { return .int(n) }
        guard let d = Double(text) else { throw JSONParseError(message: "a number that cannot be read", offset: start) }
        return .double(d)  // (an integer past 64 bits too, as Foundation reads it)
    }

    mutating func string() throws -> String {
        i += 1  // the opening quote
        var out: [UInt8] = []
        while true {
            guard i < bytes.count else { throw fail("a string without its closing quote") }
            let b = bytes[i]
            i += 1
            if b == UInt8(ascii: "\"") { break }
            guard b >= 0x20 else { throw fail("a control character inside a string") }
            guard b == UInt8(ascii: "\\") else { out.append(b); continue }
            guard i < bytes.count else { throw fail("a string without its closing quote") }
            let e = bytes[i]
            i += 1
            switch e {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try hex4()
                if (0xD800..<0xDC00).contains(scalar), bytes.count - i >= 6, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") {
                    let save = i
                    i += 2
                    let low = try hex4()
                    if (0xDC00..<0xE000).contains(low) { scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00) } else { i = save }
                }
                // A lone surrogate cannot be held in a Swift string (Python would keep it): U+FFFD.
                out += Array(String(Unicode.Scalar(scalar).map(Character.init) ?? "\u{FFFD}").utf8)
            default: throw fail("an unknown escape '\\\(Character(Unicode.Scalar(e)))'")
            }
        }
        guard let s = String(validating: out, as: UTF8.self) else { throw fail("a string that is not valid UTF-8") }
        return s
    }

    mutating func hex4() throws -> UInt32 {
        guard bytes.count - i >= 4, bytes[i..<(i + 4)].allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x66) }),
              let v = UInt32(String(decoding: bytes[i..<(i + 4)], as: UTF8.self), radix: 16) else {
            throw fail("expected 4 hex digits after \\u")
        }
        i += 4
        return v
    }
}
