// The forms in which models write tool calls, read back from a reply's text as vLLM's tool parsers
// read them. vLLM is told the form (`--tool-call-parser`); here it is recognised, so the reading is
// stricter: a call that cannot be read leaves the whole reply as text, and the forms without a
// marker of their own (a bare JSON object or list, a Python list of calls) must name the request's
// tools.
//
// Marked forms (the text before the marker is the message's content):
//   <tool_call>{"name", "arguments"}</tool_call> …     Hermes, Qwen2.5/3, SmolLM3 (a JSON list inside: Granite 3.1, xLAM)
//   <tool_call><function=NAME><parameter=KEY>VALUE</parameter></function></tool_call>   Qwen3-Coder
//   [TOOL_CALLS] [{"name", "arguments"}, …]             Mistral (tokenizers before v11)
//   [TOOL_CALLS]NAME[ARGS]{…}[TOOL_CALLS]NAME[ARGS]{…}  Mistral (v11 on; [CALL_ID]ID before [ARGS] too)
//   <|tool_call|>[{"name", "arguments"}, …]             Granite 3.x
//   functools[{"name", "arguments"}, …]                 Phi-4-mini
//   <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>…<｜tool▁call▁end｜>…<｜tool▁calls▁end｜>   DeepSeek V3 and V3.1
// Bare forms (the whole reply):
//   {"name", "arguments" | "parameters"}; {…}          Llama 3.x (after <|python_tag|> or not)
//   [{"name", "arguments"}, …]                          xLAM (in a ```json fence or not)
//   [get_weather(city="Paris"), get_time(tz="CET")]     pythonic: Llama 3.2 and 4 (<|python_start|>…<|python_end|>)

import Foundation
import Tokenizers

/// A call read from a reply: the function's name and its arguments as JSON text.
public struct ToolCall: Equatable, Sendable {
    public var name: String
    public var arguments: String
    public init(name: String, arguments: String) { (self.name, self.arguments) = (name, arguments) }
}

/// The request's functions whose calls are read back: name → the JSON schema of its parameters
/// (`function.parameters`; null when it gives none).
public typealias ToolSchemas = [String: JSONValue]

/// The tool calls in `text` and the text before them (nil when there is none), or nil when it
/// calls none or a call cannot be read (the reply is then text). The forms are listed at the top
/// of this file; markers are tried from the first in the text on, the first that reads wins, then
/// the forms without a marker (a marker's text inside a call's arguments does not hide the call).
public func parseToolCalls(_ text: String, tools: ToolSchemas) -> (content: String?, calls: [ToolCall])? {
    let markers: [(String, (Substring) -> [ToolCall]?)] = [
        ("<tool_call>", { hermesBlocks($0, tools) }),
        ("<function=", { qwenCoderFunctions($0, tools, bare: true) }),
        ("[TOOL_CALLS]", mistralCalls),
        ("<|tool_call|>", { jsonCallList($0, tools: nil) }),
        ("functools[", { jsonCallList("[" + $0, tools: nil) }),
        (deepSeekCallsBegin, deepSeekCalls),
    ]
    let found = markers.compactMap { m in text.range(of: m.0).map { (range: $0, read: m.1) } }.sorted { $0.range.lowerBound < $1.range.lowerBound }
    for m in found {
        guard let calls = m.read(text[m.range.upperBound...]), !calls.isEmpty else { continue }
        let content = text[..<m.range.lowerBound].trimmingCharacters(in: .whitespacesAndNewlines)
        return (content.isEmpty ? nil : content, calls)
    }
    var body = Substring(text.trimmingCharacters(in: .whitespacesAndNewlines))
    for tag in ["<|python_tag|>", "<|python_start|>"] where body.hasPrefix(tag) { body = body.dropFirst(tag.count) }
    if body.hasSuffix("<|python_end|>") { body = body.dropLast("<|python_end|>".count) }
    if body.hasPrefix("```") {  // a fenced block: ```json … ```
        guard let open = body.firstIndex(of: "\n"), body.hasSuffix("```") else { return nil }
        body = body[body.index(after: open)..<body.index(body.endIndex, offsetBy: -3)]
    }
    body = body.trimmingWhitespace
    let calls: [ToolCall]?
    switch body.first {
    case "{": calls = jsonCallObjects(body, tools: tools)
    case "[": calls = jsonCallList(body, tools: tools) ?? pythonicCalls(body, tools: tools)
    default: calls = nil
    }
    guard let calls, !calls.isEmpty else { return nil }
    return (nil, calls)
}

/// One call object `{"name", "arguments" | "parameters"}`: its arguments written out as JSON (a
/// string given stays that string, OpenAI's form); missing ones are `{}` unless `tools` is given,
/// which the name must be one of, with arguments.
private func jsonCall(_ v: JSONValue, tools: ToolSchemas?) -> ToolCall? {
    guard let name = v["name"]?.string, !name.isEmpty else { return nil }
    let given = v["arguments"] ?? v["parameters"]
    guard tools == nil || (given != nil && tools![name] != nil) else { return nil }
    let arguments = given ?? .object(JSONObject())
    return ToolCall(name: name, arguments: arguments.string ?? arguments.text)
}

/// A JSON list of call objects and nothing after it (but whitespace).
private func jsonCallList(_ text: Substring, tools: ToolSchemas?) -> [ToolCall]? {
    guard let (v, rest) = JSONValue.leading(in: text), rest.trimmingWhitespace.isEmpty, case .array(let list) = v else { return nil }
    let calls = list.compactMap { jsonCall($0, tools: tools) }
    return calls.count == list.count ? calls : nil
}

/// Call objects one after another, with `;` (Llama 3's parallel calls) or whitespace between.
private func jsonCallObjects(_ text: Substring, tools: ToolSchemas?) -> [ToolCall]? {
    var calls: [ToolCall] = [], rest = text
    while !rest.isEmpty {
        guard let (v, after) = JSONValue.leading(in: rest), case .object = v, let c = jsonCall(v, tools: tools) else { return nil }
        calls.append(c)
        rest = after.trimmingWhitespace
        if rest.first == ";" { rest = rest.dropFirst().trimmingWhitespace }
    }
    return calls
}

/// `<tool_call>` blocks (the first one's tag already read): each holds a call object, a list of
/// them, or Qwen3-Coder's `<function=…>`; text between blocks is left out, as vLLM leaves it.
private func hermesBlocks(_ afterFirst: Substring, _ tools: ToolSchemas) -> [ToolCall]? {
    var calls: [ToolCall] = [], remaining = afterFirst
    while true {
        let close = remaining.range(of: "</tool_call>")
        let block = remaining[..<(close?.lowerBound ?? remaining.endIndex)].trimmingWhitespace
        if block.hasPrefix("<function=") {
            guard let c = qwenCoderFunctions(block.dropFirst("<function=".count), tools, bare: false) else { return nil }
            calls += c
        } else if block.first == "[" {
            guard let c = jsonCallList(block, tools: nil) else { return nil }
            calls += c
        } else {
            guard let v = try? JSONValue(parsing: String(block)), let c = jsonCall(v, tools: nil) else { return nil }
            calls.append(c)
        }
        guard let close, let next = remaining[close.upperBound...].range(of: "<tool_call>") else { return calls }
        remaining = remaining[next.upperBound...]
    }
}

/// Qwen3-Coder's calls (the first `<function=` already read): `NAME>` then `<parameter=KEY>`VALUE
/// `</parameter>` pieces up to `</function>`. Values are text, typed by the tool's schema. Outside
/// `<tool_call>` (`bare`), each must name one of `tools` and be closed, so prose that mentions
/// `<function=…>` stays text.
private func qwenCoderFunctions(_ afterFirst: Substring, _ tools: ToolSchemas, bare: Bool) -> [ToolCall]? {
    var calls: [ToolCall] = []
    for piece in afterFirst.components(separatedBy: "<function=") {
        guard let gt = piece.firstIndex(of: ">") else { return nil }
        let name = String(piece[..<gt])
        guard !name.isEmpty, !name.contains("<") else { return nil }
        let body = piece[piece.index(after: gt)...]
        guard !bare || (tools[name] != nil && body.contains("</function>")) else { return nil }
        let end = body.range(of: "</function>")?.lowerBound ?? body.endIndex
        let properties = tools[name]?["properties"]
        var arguments = JSONObject()
        for p in body[..<end].components(separatedBy: "<parameter=").dropFirst() {
            guard let gt = p.firstIndex(of: ">") else { return nil }
            let key = String(p[..<gt])
            var value = p[p.index(after: gt)...]
            if let close = value.range(of: "</parameter>") { value = value[..<close.lowerBound] }
            if value.hasPrefix("\n") { value = value.dropFirst() }
            if value.hasSuffix("\n") { value = value.dropLast() }
            arguments[key] = qwenCoderValue(String(value), schema: properties?[key])
        }
        calls.append(ToolCall(name: name, arguments: JSONValue.object(arguments).text))
    }
    return calls
}

/// A Qwen3-Coder parameter's text as the JSON its schema's `type` asks for (vLLM's rules): `null`
/// is null; a parameter the schema does not list, or a string type, stays text; integers, numbers
/// (whole ones written as integers), booleans (true for `true` in any case, false for anything else,
/// as vLLM reads them); objects and arrays as JSON; any
/// other type as JSON when it reads as JSON. Text that does not read as its type stays text.
private func qwenCoderValue(_ text: String, schema: JSONValue?) -> JSONValue {
    if text.lowercased() == "null" { return .null }
    guard let schema else { return .string(text) }
    let type = (schema["type"] == nil ? "string" : schema["type"]!.string ?? schema["type"]!.text).trimmingCharacters(in: .whitespaces).lowercased()
    let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
    if ["string", "str", "text", "varchar", "char", "enum"].contains(type) { return .string(text) }
    if ["int", "uint", "long", "short", "unsigned"].contains(where: type.hasPrefix) { return Int(trimmed).map(JSONValue.int) ?? .string(text) }
    if type.hasPrefix("num") || type.hasPrefix("float") {
        guard let d = Double(trimmed), d.isFinite else { return .string(text) }
        return d == d.rounded() && abs(d) < 9e15 ? .int(Int(d)) : .double(d)
    }
    if ["boolean", "bool", "binary"].contains(type) { return .bool(trimmed.lowercased() == "true") }
    return (try? JSONValue(parsing: text)) ?? .string(text)
}

/// Mistral's calls after `[TOOL_CALLS]`: a JSON list of call objects (tokenizers before v11), or
/// `NAME[ARGS]{…}` (v11 on; `NAME[CALL_ID]ID[ARGS]{…}` too), repeated after further markers.
private func mistralCalls(_ afterFirst: Substring) -> [ToolCall]? {
    if afterFirst.trimmingWhitespace.first == "[" { return jsonCallList(afterFirst, tools: nil) }
    var calls: [ToolCall] = []
    for piece in afterFirst.components(separatedBy: "[TOOL_CALLS]") {
        guard let args = piece.range(of: "[ARGS]") else { return nil }
        var name = piece[..<args.lowerBound]
        if let id = name.range(of: "[CALL_ID]") { name = name[..<id.lowerBound] }
        name = Substring(name.trimmingCharacters(in: .whitespacesAndNewlines))
        let json = piece[args.upperBound...]
        guard !name.isEmpty, case .object? = try? JSONValue(parsing: String(json)) else { return nil }
        calls.append(ToolCall(name: String(name), arguments: String(json).trimmingCharacters(in: .whitespacesAndNewlines)))
    }
    return calls
}

private let deepSeekCallsBegin = "<｜tool▁calls▁begin｜>"

/// DeepSeek's calls (after `<｜tool▁calls▁begin｜>`), each `<｜tool▁call▁begin｜>`…`<｜tool▁call▁end｜>`:
/// V3's `function<｜tool▁sep｜>NAME` and its arguments in a ```json fence, or V3.1's
/// `NAME<｜tool▁sep｜>{…}`.
private func deepSeekCalls(_ afterBegin: Substring) -> [ToolCall]? {
    let (begin, sep, end) = ("<｜tool▁call▁begin｜>", "<｜tool▁sep｜>", "<｜tool▁call▁end｜>")
    var calls: [ToolCall] = [], rest = afterBegin
    while let b = rest.range(of: begin) {
        guard let e = rest[b.upperBound...].range(of: end), let s = rest[b.upperBound..<e.lowerBound].range(of: sep) else { return nil }
        let head = rest[b.upperBound..<s.lowerBound], tail = rest[s.upperBound..<e.lowerBound].trimmingWhitespace
        var name = String(head), json = tail
        if tail.first != "{" {  // V3: NAME, then the arguments in a ```json fence
            guard let nl = tail.firstIndex(of: "\n") else { return nil }
            name = String(tail[..<nl])
            var fenced = tail[tail.index(after: nl)...].trimmingWhitespace
            guard fenced.hasPrefix("```json"), fenced.hasSuffix("```") else { return nil }
            fenced = fenced.dropFirst("```json".count).dropLast(3)
            json = fenced.trimmingWhitespace
        }
        guard !name.isEmpty, case .object? = try? JSONValue(parsing: String(json)) else { return nil }
        calls.append(ToolCall(name: name, arguments: String(json)))
        rest = rest[e.upperBound...]
    }
    return calls
}

/// A Python list of calls with keyword arguments of literals, `[f(a=1, b="x"), g()]`, every name
/// one of `tools` (vLLM's pythonic parser): strings, numbers, True/False/None, lists and dicts.
private func pythonicCalls(_ text: Substring, tools: ToolSchemas) -> [ToolCall]? {
    var p = PythonLiteralReader(Array(text.utf8))
    guard let calls = p.callList(), p.atEnd, calls.allSatisfy({ tools[$0.name] != nil }) else { return nil }
    return calls
}

/// Reads the Python call list and literals of the pythonic form (UTF-8 bytes).
private struct PythonLiteralReader {
    let b: [UInt8]
    var i = 0
    var depth = 0
    init(_ bytes: [UInt8]) { b = bytes }

    var atEnd: Bool { mutating get { space(); return i == b.count } }

    mutating func space() { while i < b.count, [0x20, 0x09, 0x0A, 0x0D].contains(b[i]) { i += 1 } }

    mutating func take(_ c: Character) -> Bool {
        space()
        guard i < b.count, b[i] == c.asciiValue! else { return false }
        i += 1
        return true
    }

    mutating func name() -> String? {
        space()
        let start = i
        func ok(_ c: UInt8, first: Bool) -> Bool { (c >= 0x61 && c <= 0x7A) || (c >= 0x41 && c <= 0x5A) || c == 0x5F || (!first && ((c >= 0x30 && c <= 0x39) || c == 0x2E || c == 0x2D)) }
        guard i < b.count, ok(b[i], first: true) else { return nil }
        while i < b.count, ok(b[i], first: false) { i += 1 }
        return String(decoding: b[start..<i], as: UTF8.self)
    }

    mutating func callList() -> [ToolCall]? {
        guard take("[") else { return nil }
        var calls: [ToolCall] = []
        if take("]") { return calls }
        repeat {
            guard let f = name(), take("(") else { return nil }
            var arguments = JSONObject()
            if !take(")") {
                repeat {
                    guard let k = name(), !k.contains("."), !k.contains("-"), take("="), let v = literal(), arguments[k] == nil else { return nil }
                    arguments[k] = v
                } while take(",") && !peek(")")
                guard take(")") else { return nil }
            }
            calls.append(ToolCall(name: f, arguments: JSONValue.object(arguments).text))
        } while take(",") && !peek("]")
        return take("]") ? calls : nil
    }

    mutating func peek(_ c: Character) -> Bool { space(); return i < b.count && b[i] == c.asciiValue! }

    mutating func literal() -> JSONValue? {
        space()
        guard i < b.count, depth < 64 else { return nil }
        switch b[i] {
        case UInt8(ascii: "\""), UInt8(ascii: "'"): return string().map(JSONValue.string)
        case UInt8(ascii: "["):
            i += 1; depth += 1; defer { depth -= 1 }
            var items: [JSONValue] = []
            if take("]") { return .array(items) }
            repeat {
                guard let v = literal() else { return nil }
                items.append(v)
            } while take(",") && !peek("]")
            return take("]") ? .array(items) : nil
        case UInt8(ascii: "{"):
            i += 1; depth += 1; defer { depth -= 1 }
            var o = JSONObject()
            if take("}") { return .object(o) }
            repeat {
                guard let k = literal(), take(":"), let v = literal() else { return nil }
                switch k {  // Python's json writes int and float keys as their text, bools as true/false
                case .string(let s): o[s] = v
                case .int, .double, .bool, .null: o[k.text] = v
                default: return nil
                }
            } while take(",") && !peek("}")
            return take("}") ? .object(o) : nil
        default:
            guard let word = name() ?? number() else { return nil }
            switch word {
            case "True": return .bool(true)
            case "False": return .bool(false)
            case "None": return .null
            default:
                if let n = Int(word) { return .int(n) }
                if let d = Double(word), d.isFinite, word.contains(where: { $0.isNumber }) { return .double(d) }
                return nil
            }
        }
    }

    mutating func number() -> String? {
        let start = i
        while i < b.count, (b[i] >= 0x30 && b[i] <= 0x39) || [UInt8(ascii: "-"), UInt8(ascii: "+"), UInt8(ascii: "."), UInt8(ascii: "e"), UInt8(ascii: "E"), UInt8(ascii: "_")].contains(b[i]) {
            i += 1
        }
        let s = String(decoding: b[start..<i], as: UTF8.self).replacingOccurrences(of: "_", with: "")
        return s.isEmpty ? nil : s
    }

    /// A quoted string with Python's escapes (\n \t \r \\ \' \" \uXXXX \xXX); no prefixes, no triple quotes.
    mutating func string() -> String? {
        let quote = b[i]
        i += 1
        var out: [UInt8] = []
        while i < b.count, b[i] != quote {
            if b[i] == 0x0A { return nil }
            if b[i] == UInt8(ascii: "\\") {
                i += 1
                guard i < b.count else { return nil }
                let e = b[i]
                i += 1
                switch e {
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "0"): out.append(0x00)
                case UInt8(ascii: "\\"), UInt8(ascii: "'"), UInt8(ascii: "\""): out.append(e)
                case UInt8(ascii: "u"), UInt8(ascii: "x"):
                    let n = e == UInt8(ascii: "u") ? 4 : 2
                    guard i + n <= b.count, let v = UInt32(String(decoding: b[i..<i + n], as: UTF8.self), radix: 16),
                          let scalar = Unicode.Scalar(v) else { return nil }
                    out += Array(String(Character(scalar)).utf8)
                    i += n
                default: out += [UInt8(ascii: "\\"), e]  // Python keeps an unknown escape as written
                }
            } else {
                out.append(b[i])
                i += 1
            }
        }
        guard i < b.count else { return nil }
        i += 1
        return String(validating: out, as: UTF8.self)
    }
}

extension Substring {
    /// Without the whitespace and newlines at either end.
    var trimmingWhitespace: Substring {
        var s = self
        while let c = s.first, c.isWhitespace { s.removeFirst() }
        while let c = s.last, c.isWhitespace { s.removeLast() }
        return s
    }
}
