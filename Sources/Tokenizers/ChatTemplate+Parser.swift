// The lexer and parser of chat templates: the Jinja2 syntax Hugging Face chat templates use, read
// as transformers configures Jinja for them (trim_blocks and lstrip_blocks on, a single trailing
// newline dropped, `break`/`continue` and `{% generation %}` tags). The evaluator is ChatTemplate.swift.

import Foundation

/// A chat template that cannot be read or rendered; the message names the line of the template.
public struct ChatTemplateError: Error, CustomStringConvertible, Equatable {
    public var message: String
    /// The template's own error (`raise_exception`), not a problem with the template's syntax or values.
    public var raisedByTemplate = false
    public init(_ message: String, raisedByTemplate: Bool = false) {
        self.message = message
        self.raisedByTemplate = raisedByTemplate
    }
    public var description: String { "chat template: " + message }
}

// MARK: tokens

enum JinjaToken: Equatable {
    case text(String)
    case variableBegin, variableEnd, blockBegin, blockEnd
    case name(String)
    case string(String)
    case int(Int)
    case double(Double)
    case op(String)
    case end
}

struct LexedToken {
    let token: JinjaToken
    let line: Int
}

/// Whitespace as Python's `str.strip` takes it (what `{%-` and `-%}` remove).
private func isSpace(_ c: Unicode.Scalar) -> Bool { c.properties.isWhitespace || (0x1C...0x1F).contains(c.value) }

/// Splits a template into text and tag tokens, applying Jinja's whitespace control as transformers
/// sets it: `{%-`/`-%}` (and the same on `{{ }}` and `{# #}`) strip all whitespace on that side;
/// trim_blocks drops the newline right after a block or comment tag; lstrip_blocks drops the spaces
/// and tabs between a line's start and a block or comment tag (not with `{%+`).
func lexJinja(_ template: String) throws -> [LexedToken] {
    var s = Array(template.replacingOccurrences(of: "\r\n", with: "\n").replacingOccurrences(of: "\r", with: "\n").unicodeScalars)
    if s.last == "\n" { s.removeLast() }  // keep_trailing_newline is off
    var out: [LexedToken] = []
    var i = 0, line = 1, lineStarting = true
    var closerEnd = 0  // just after the last tag's closer, before what it stripped or trimmed

    func at(_ k: Int, _ text: String) -> Bool {
        var k = k
        for c in text.unicodeScalars {
            guard k < s.count, s[k] == c else { return false }
            k += 1
        }
        return true
    }
    func newlines(_ a: Int, _ b: Int) -> Int { s[a..<b].reduce(0) { $0 + ($1 == "\n" ? 1 : 0) } }
    /// After a tag's closer at `k`: strip following whitespace (`-`), or drop one newline (trim).
    func close(at k: Int, strip: Bool, trim: Bool) {
        var k = k
        let start = k
        closerEnd = k
        if strip {
            while k < s.count, isSpace(s[k]) { k += 1 }
        } else if trim, k < s.count, s[k] == "\n" {
            k += 1
        }
        lineStarting = k > start && s[k - 1] == "\n"
        line += newlines(start, k)
        i = k
    }

    /// After `{% raw %}`: its text, as it is, up to `{% endraw %}` becomes one text token.
    func raw() throws {
        guard out.count >= 3, out[out.count - 2].token == .name("raw"), out[out.count - 3].token == .blockBegin else { return }
        let startLine = out[out.count - 3].line
        out.removeLast(3)
        if s[closerEnd - 3] != "-" {  // `{% raw %}` keeps the newline after it (only `-%}` strips)
            line -= newlines(closerEnd, i)
            i = closerEnd
        }
        var k = i
        while k < s.count {
            if s[k] == "{", k + 1 < s.count, s[k + 1] == "%" {
                var m = k + 2
                let stripBefore = m < s.count && s[m] == "-"
                if m < s.count, s[m] == "-" || s[m] == "+" { m += 1 }
                while m < s.count, s[m] == " " || s[m] == "\t" || s[m] == "\n" { m += 1 }
                if at(m, "endraw") {
                    m += 6
                    while m < s.count, s[m] == " " || s[m] == "\t" || s[m] == "\n" { m += 1 }
                    let mark: Unicode.Scalar? = m < s.count && (s[m] == "-" || s[m] == "+") ? s[m] : nil
                    if mark != nil { m += 1 }
                    if at(m, "%}") {
                        var text = Array(s[i..<k])
                        if stripBefore { while let last = text.last, isSpace(last) { text.removeLast() } }
                        if !text.isEmpty { out.append(LexedToken(token: .text(String(String.UnicodeScalarView(text))), line: line)) }
                        line += newlines(i, m)
                        close(at: m + 2, strip: mark == "-", trim: mark == nil)
                        return
                    }
                }
            }
            k += 1
        }
        throw ChatTemplateError("line \(startLine): {% raw %} is never closed by {% endraw %}")
    }

    while i < s.count {
        var j = i
        while j + 1 < s.count, !(s[j] == "{" && (s[j + 1] == "{" || s[j + 1] == "%" || s[j + 1] == "#")) { j += 1 }
        if j + 1 >= s.count { j = s.count }
        var text = Array(s[i..<j])
        let textLines = newlines(i, j)
        guard j < s.count else {
            if !text.isEmpty { out.append(LexedToken(token: .text(String(String.UnicodeScalarView(text))), line: line)) }
            break
        }
        let kind = s[j + 1]  // "{", "%" or "#"
        let flag: Unicode.Scalar? = j + 2 < s.count && (s[j + 2] == "-" || s[j + 2] == "+") ? s[j + 2] : nil
        if flag == "-" {
            while let last = text.last, isSpace(last) { text.removeLast() }
        } else if kind != "{" && flag != "+" {
            let l = (text.lastIndex(of: "\n").map { $0 + 1 }) ?? 0
            if (l > 0 || lineStarting) && l < text.count && text[l...].allSatisfy({ $0 == " " || $0 == "\t" }) { text.removeSubrange(l...) }
        }
        if !text.isEmpty { out.append(LexedToken(token: .text(String(String.UnicodeScalarView(text))), line: line)) }
        line += textLines
        var k = j + 2 + (flag == "-" || (flag == "+" && kind != "{") ? 1 : 0)

        if kind == "#" {
            let startLine = line
            while k < s.count, !at(k, "#}"), !at(k, "-#}"), !at(k, "+#}") { k += 1 }
            guard k < s.count else { throw ChatTemplateError("line \(startLine): a comment {# is never closed") }
            line += newlines(j, k)
            let mark = s[k]
            close(at: k + (mark == "#" ? 2 : 3), strip: mark == "-", trim: mark == "#")
            continue
        }
        let isBlock = kind == "%"
        out.append(LexedToken(token: isBlock ? .blockBegin : .variableBegin, line: line))
        let tagLine = line
        var depth = 0
        while true {
            while k < s.count, isSpace(s[k]) {
                if s[k] == "\n" { line += 1 }
                k += 1
            }
            guard k < s.count else {
                throw ChatTemplateError("line \(tagLine): a tag \(isBlock ? "{%" : "{{") is never closed")
            }
            if depth == 0 {
                if isBlock {
                    if at(k, "-%}") { out.append(LexedToken(token: .blockEnd, line: line)); close(at: k + 3, strip: true, trim: false); try raw(); break }
                    if at(k, "+%}") { out.append(LexedToken(token: .blockEnd, line: line)); close(at: k + 3, strip: false, trim: false); try raw(); break }
                    if at(k, "%}") { out.append(LexedToken(token: .blockEnd, line: line)); close(at: k + 2, strip: false, trim: true); try raw(); break }
                } else {
                    if at(k, "-}}") { out.append(LexedToken(token: .variableEnd, line: line)); close(at: k + 3, strip: true, trim: false); break }
                    if at(k, "}}") { out.append(LexedToken(token: .variableEnd, line: line)); close(at: k + 2, strip: false, trim: false); break }
                }
            }
            let c = s[k]
            if c == "'" || c == "\"" {
                var value = String.UnicodeScalarView()
                var m = k + 1
                while m < s.count, s[m] != c {
                    if s[m] == "\\", m + 1 < s.count {
                        let (scalars, used) = pythonEscape(s, m + 1)
                        value.append(contentsOf: scalars)
                        m += 1 + used
                    } else {
                        if s[m] == "\n" { line += 1 }
                        value.append(s[m])
                        m += 1
                    }
                }
                guard m < s.count else { throw ChatTemplateError("line \(line): a string literal is never closed") }
                out.append(LexedToken(token: .string(String(value)), line: line))
                k = m + 1
            } else if c.properties.isAlphabetic || c == "_" {
                var m = k
                while m < s.count, s[m].properties.isAlphabetic || s[m] == "_" || ("0"..."9").contains(s[m]) { m += 1 }
                out.append(LexedToken(token: .name(String(String.UnicodeScalarView(s[k..<m]))), line: line))
                k = m
            } else if ("0"..."9").contains(c) {
                var m = k
                func digits() { while m < s.count, ("0"..."9").contains(s[m]) || s[m] == "_" { m += 1 } }
                digits()
                var isFloat = false
                let afterDot = out.last?.token == .op(".")  // x.0.1 is two subscripts, not x.(0.1)
                if !afterDot, m + 1 < s.count, s[m] == ".", ("0"..."9").contains(s[m + 1]) { isFloat = true; m += 1; digits() }
                if !afterDot, m < s.count, s[m] == "e" || s[m] == "E" {
                    var e = m + 1
                    if e < s.count, s[e] == "+" || s[e] == "-" { e += 1 }
                    if e < s.count, ("0"..."9").contains(s[e]) { isFloat = true; m = e; digits() }
                }
                let literal = String(String.UnicodeScalarView(s[k..<m])).replacingOccurrences(of: "_", with: "")
                if isFloat {
                    out.append(LexedToken(token: .double(Double(literal) ?? .nan), line: line))
                } else {
                    guard let v = Int(literal) else { throw ChatTemplateError("line \(line): the integer \(literal) is too large") }
                    out.append(LexedToken(token: .int(v), line: line))
                }
                k = m
            } else {
                let two = k + 1 < s.count ? String(String.UnicodeScalarView([c, s[k + 1]])) : ""
                let op: String
                if ["**", "//", "==", "!=", "<=", ">="].contains(two) { op = two } else {
                    guard "+-*/%~<>=()[]{},.:|".unicodeScalars.contains(c) else {
                        throw ChatTemplateError("line \(line): unexpected character '\(c)' in a tag")
                    }
                    op = String(c)
                }
                if ["(", "[", "{"].contains(op) { depth += 1 }
                if [")", "]", "}"].contains(op) { depth -= 1 }
                out.append(LexedToken(token: .op(op), line: line))
                k += op.unicodeScalars.count
            }
        }
    }
    out.append(LexedToken(token: .end, line: line))
    return out
}

/// A Python string escape starting at `k` (after the backslash): the scalars it stands for and how
/// many scalars it used. Unknown escapes keep their backslash, as Python's do.
private func pythonEscape(_ s: [Unicode.Scalar], _ k: Int) -> ([Unicode.Scalar], Int) {
    let simple: [Unicode.Scalar: Unicode.Scalar] = ["n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", "\"": "\"",
                                                    "a": "\u{07}", "b": "\u{08}", "f": "\u{0C}", "v": "\u{0B}"]
    if ("0"..."7").contains(s[k]) {  // \o, \oo, \ooo
        var n = 0, code: UInt32 = 0
        while n < 3, k + n < s.count, ("0"..."7").contains(s[k + n]) { code = code * 8 + s[k + n].value - 48; n += 1 }
        return ([Unicode.Scalar(code)!], n)
    }
    if let v = simple[s[k]] { return ([v], 1) }
    if s[k] == "\n" { return ([], 1) }
    let hexCount: [Unicode.Scalar: Int] = ["x": 2, "u": 4, "U": 8]
    if let n = hexCount[s[k]], k + n < s.count {
        let hex = String(String.UnicodeScalarView(s[(k + 1)...(k + n)]))
        if let code = UInt32(hex, radix: 16), let scalar = Unicode.Scalar(code) { return ([scalar], 1 + n) }
    }
    return (["\\", s[k]], 1)
}

// MARK: syntax tree

indirect enum JinjaExpr: @unchecked Sendable {
    case literal(JinjaValue)
    case name(String)
    case list([JinjaExpr])
    case tuple([JinjaExpr])
    case dict([(JinjaExpr, JinjaExpr)])
    case attribute(JinjaExpr, String)
    case item(JinjaExpr, JinjaExpr)
    case slice(JinjaExpr, JinjaExpr?, JinjaExpr?, JinjaExpr?)
    case call(JinjaExpr, JinjaArguments)
    case filter(JinjaExpr, String, JinjaArguments)
    case test(JinjaExpr, String, JinjaArguments, negated: Bool)
    case unary(String, JinjaExpr)
    case binary(String, JinjaExpr, JinjaExpr)
    case conditional(JinjaExpr, condition: JinjaExpr, otherwise: JinjaExpr?)
}

struct JinjaArguments {
    var positional: [JinjaExpr] = []
    var keywords: [(String, JinjaExpr)] = []
}

indirect enum JinjaNode: @unchecked Sendable {
    case text(String)
    case output(JinjaExpr, line: Int)
    case conditional([(JinjaExpr, [JinjaNode])], otherwise: [JinjaNode], line: Int)
    case loop(targets: [String], sequence: JinjaExpr, filter: JinjaExpr?, body: [JinjaNode], otherwise: [JinjaNode], line: Int)
    case set(targets: [String], attribute: String?, JinjaExpr, line: Int)
    case setBlock(String, filters: [(String, JinjaArguments)], [JinjaNode], line: Int)
    case macro(String, parameters: [(String, JinjaExpr?)], body: [JinjaNode])
    case breakLoop, continueLoop
    case with([(String, JinjaExpr)], [JinjaNode])
    /// `{% generation %}`: transformers marks the assistant's text with it; it renders its body.
    case generation([JinjaNode])
    case filterBlock(String, JinjaArguments, [JinjaNode], line: Int)
}

// MARK: parser

struct JinjaParser {
    let tokens: [LexedToken]
    var p = 0
    /// Blocks and expressions open around the current token: bounded, so a template nested
    /// thousands deep is an error rather than a stack overflow (here or when it renders).
    var depth = 0
    static let maxDepth = 64
    /// Inside an `if` or a conditional expression, where jinja2 3 lets an unknown filter fail only
    /// when it runs (DeepSeek V3.2's `from_json`); elsewhere it is an error when the template is read.
    var softDepth = 0
    /// Unknown filters met outside such a place: (name, line).
    var unknownFilters: [(String, Int)] = []

    /// Notes `name` when it is no filter and the place is not a conditional one.
    mutating func noteFilter(_ name: String) {
        if softDepth == 0 && !jinjaFilterNames.contains(name) { unknownFilters.append((name, line)) }
    }

    mutating func enter() throws {
        depth += 1
        guard depth <= Self.maxDepth else { throw fail("blocks or expressions nested more than \(Self.maxDepth) deep") }
    }

    init(_ template: String) throws { tokens = try lexJinja(template) }

    var current: JinjaToken { tokens[p].token }
    var line: Int { tokens[p].line }
    func peek(_ n: Int = 1) -> JinjaToken { tokens[min(p + n, tokens.count - 1)].token }

    func fail(_ what: String) -> ChatTemplateError { ChatTemplateError("line \(line): \(what)") }
    func describe(_ t: JinjaToken) -> String {
        switch t {
        case .text: return "text"
        case .variableBegin: return "'{{'"
        case .variableEnd: return "'}}'"
        case .blockBegin: return "'{%'"
        case .blockEnd: return "'%}'"
        case .name(let n): return "'\(n)'"
        case .string(let s): return "the string '\(s)'"
        case .int(let v): return "\(v)"
        case .double(let v): return "\(v)"
        case .op(let o): return "'\(o)'"
        case .end: return "the end of the template"
        }
    }

    mutating func expect(_ t: JinjaToken) throws {
        guard current == t else { throw fail("expected \(describe(t)), found \(describe(current))") }
        p += 1
    }
    mutating func skipIf(_ t: JinjaToken) -> Bool {
        guard current == t else { return false }
        p += 1
        return true
    }
    mutating func name() throws -> String {
        guard case .name(let n) = current else { throw fail("expected a name, found \(describe(current))") }
        p += 1
        return n
    }

    mutating func parseTemplate() throws -> [JinjaNode] {
        let (nodes, end) = try parseNodes(until: [])
        if let end { throw fail("unexpected '{% \(end) %}'") }
        if let (name, at) = unknownFilters.first { throw ChatTemplateError("line \(at): no filter named '\(name)'") }
        return nodes
    }

    /// Nodes up to a block tag named in `until` (its `{%` and name consumed, returned) or the end (nil).
    mutating func parseNodes(until: Set<String>) throws -> ([JinjaNode], String?) {
        var nodes: [JinjaNode] = []
        while true {
            switch current {
            case .end:
                if !until.isEmpty {
                    throw fail("the template ends inside a block; expected one of \(until.sorted().map { "'{% \($0) %}'" }.joined(separator: ", "))")
                }
                return (nodes, nil)
            case .text(let t):
                nodes.append(.text(t))
                p += 1
            case .variableBegin:
                p += 1
                let l = line
                let e = try parseTuple()
                try expect(.variableEnd)
                nodes.append(.output(e, line: l))
            case .blockBegin:
                p += 1
                let tag = try name()
                if until.contains(tag) { return (nodes, tag) }
                nodes.append(try parseStatement(tag))
            default:
                throw fail("unexpected \(describe(current))")
            }
        }
    }

    mutating func parseStatement(_ tag: String) throws -> JinjaNode {
        try enter()
        defer { depth -= 1 }
        let l = line
        switch tag {
        case "if":
            softDepth += 1
            defer { softDepth -= 1 }
            var branches: [(JinjaExpr, [JinjaNode])] = []
            var condition = try parseExpression()
            while true {
                try expect(.blockEnd)
                let (body, end) = try parseNodes(until: ["elif", "else", "endif"])
                branches.append((condition, body))
                if end == "elif" { condition = try parseExpression(); continue }
                var otherwise: [JinjaNode] = []
                if end == "else" {
                    try expect(.blockEnd)
                    (otherwise, _) = try parseNodes(until: ["endif"])
                }
                try expect(.blockEnd)
                return .conditional(branches, otherwise: otherwise, line: l)
            }
        case "for":
            var targets = [try name()]
            while skipIf(.op(",")) { targets.append(try name()) }
            guard try name() == "in" else { throw fail("expected 'in' in a for tag") }
            let sequence = try parseTupleWithoutCondition()
            var filter: JinjaExpr?
            if current == .name("if") { p += 1; filter = try parseExpression() }
            if current == .name("recursive") { throw fail("recursive loops are not supported") }
            try expect(.blockEnd)
            let (body, end) = try parseNodes(until: ["else", "endfor"])
            var otherwise: [JinjaNode] = []
            if end == "else" {
                try expect(.blockEnd)
                (otherwise, _) = try parseNodes(until: ["endfor"])
            }
            try expect(.blockEnd)
            return .loop(targets: targets, sequence: sequence, filter: filter, body: body, otherwise: otherwise, line: l)
        case "set":
            var targets = [try name()]
            var attribute: String?
            if skipIf(.op(".")) { attribute = try name() }
            while attribute == nil, skipIf(.op(",")) { targets.append(try name()) }
            if skipIf(.op("=")) {
                let value = try parseTuple()
                try expect(.blockEnd)
                return .set(targets: targets, attribute: attribute, value, line: l)
            }
            guard targets.count == 1, attribute == nil else { throw fail("a block set takes one name") }
            var filters: [(String, JinjaArguments)] = []
            while skipIf(.op("|")) {
                let filterName = try name()
                noteFilter(filterName)
                filters.append((filterName, current == .op("(") ? try parseArguments() : JinjaArguments()))
            }
            try expect(.blockEnd)
            let (body, _) = try parseNodes(until: ["endset"])
            try expect(.blockEnd)
            return .setBlock(targets[0], filters: filters, body, line: l)
        case "macro":
            let macroName = try name()
            try expect(.op("("))
            var parameters: [(String, JinjaExpr?)] = []
            while !skipIf(.op(")")) {
                let parameter = try name()
                parameters.append((parameter, skipIf(.op("=")) ? try parseExpression() : nil))
                if current != .op(")") { try expect(.op(",")) }
            }
            try expect(.blockEnd)
            let (body, _) = try parseNodes(until: ["endmacro"])
            if case .name = current { p += 1 }  // {% endmacro name %}
            try expect(.blockEnd)
            return .macro(macroName, parameters: parameters, body: body)
        case "break", "continue":
            try expect(.blockEnd)
            return tag == "break" ? .breakLoop : .continueLoop
        case "with":  // {% with a = 1, b = x %}…{% endwith %}: names of its own for its body
            var assignments: [(String, JinjaExpr)] = []
            while current != .blockEnd {
                if !assignments.isEmpty { try expect(.op(",")) }
                let target = try name()
                try expect(.op("="))
                assignments.append((target, try parseExpression()))
            }
            try expect(.blockEnd)
            let (body, _) = try parseNodes(until: ["endwith"])
            try expect(.blockEnd)
            return .with(assignments, body)
        case "generation":
            try expect(.blockEnd)
            let (body, _) = try parseNodes(until: ["endgeneration"])
            try expect(.blockEnd)
            return .generation(body)
        case "filter":
            let filterName = try name()
            noteFilter(filterName)
            let arguments = current == .op("(") ? try parseArguments() : JinjaArguments()
            try expect(.blockEnd)
            let (body, _) = try parseNodes(until: ["endfilter"])
            try expect(.blockEnd)
            return .filterBlock(filterName, arguments, body, line: l)
        default:
            throw ChatTemplateError("line \(l): the tag '\(tag)' is not supported")
        }
    }

    // MARK: expressions (Jinja's precedence, lowest first)

    /// An expression, or several separated by commas (a tuple).
    mutating func parseTuple() throws -> JinjaExpr {
        let first = try parseExpression()
        guard current == .op(",") else { return first }
        var items = [first]
        while skipIf(.op(",")) {
            if [.variableEnd, .blockEnd, .op(")")].contains(current) { break }
            items.append(try parseExpression())
        }
        return .tuple(items)
    }

    mutating func parseTupleWithoutCondition() throws -> JinjaExpr {
        let first = try parseOr()
        guard current == .op(",") else { return first }
        var items = [first]
        while skipIf(.op(",")) { items.append(try parseOr()) }
        return .tuple(items)
    }

    mutating func parseExpression() throws -> JinjaExpr {
        try enter()
        defer { depth -= 1 }
        let mark = unknownFilters.count
        var e = try parseOr()
        while current == .name("if") {
            p += 1
            unknownFilters.removeLast(unknownFilters.count - mark)  // the whole conditional expression is soft
            softDepth += 1
            defer { softDepth -= 1 }
            let condition = try parseOr()
            var otherwise: JinjaExpr?
            if current == .name("else") { p += 1; otherwise = try parseExpression() }
            e = .conditional(e, condition: condition, otherwise: otherwise)
        }
        return e
    }

    /// One left-associative level: operands from `operand`, joined by the operators in `ops`
    /// (`and`, `or` are names, the others operator tokens).
    mutating func parseLeft(_ ops: [JinjaToken], _ operand: (inout JinjaParser) throws -> JinjaExpr) throws -> JinjaExpr {
        var e = try operand(&self)
        while ops.contains(current) {
            let op: String
            switch current {
            case .name(let n): op = n
            case .op(let o): op = o
            default: return e
            }
            p += 1
            e = .binary(op, e, try operand(&self))
        }
        return e
    }

    mutating func parseOr() throws -> JinjaExpr { try parseLeft([.name("or")]) { try $0.parseAnd() } }
    mutating func parseAnd() throws -> JinjaExpr { try parseLeft([.name("and")]) { try $0.parseNot() } }

    mutating func parseNot() throws -> JinjaExpr {
        if current == .name("not") {
            p += 1
            try enter()
            defer { depth -= 1 }
            return .unary("not", try parseNot())
        }
        return try parseCompare()
    }

    /// `a < b < c` is `a < b and b < c`, as in Python.
    mutating func parseCompare() throws -> JinjaExpr {
        var left = try parseMath1()
        var chain: JinjaExpr?
        while true {
            let op: String
            if case .op(let o) = current, ["==", "!=", "<", ">", "<=", ">="].contains(o) {
                op = o
                p += 1
            } else if current == .name("in") {
                op = "in"
                p += 1
            } else if current == .name("not"), peek() == .name("in") {
                op = "not in"
                p += 2
            } else {
                return chain ?? left
            }
            let right = try parseMath1()
            let comparison = JinjaExpr.binary(op, left, right)
            chain = chain.map { .binary("and", $0, comparison) } ?? comparison
            left = right
        }
    }

    mutating func parseMath1() throws -> JinjaExpr { try parseLeft([.op("+"), .op("-")]) { try $0.parseConcat() } }
    mutating func parseConcat() throws -> JinjaExpr { try parseLeft([.op("~")]) { try $0.parseMath2() } }
    mutating func parseMath2() throws -> JinjaExpr {
        try parseLeft([.op("*"), .op("/"), .op("//"), .op("%")]) { try $0.parsePow() }
    }
    /// `**` binds looser than unary minus and to the left, as in Jinja: `-2 ** 2` is 4, `2 ** 3 ** 2` 64.
    mutating func parsePow() throws -> JinjaExpr { try parseLeft([.op("**")]) { try $0.parseUnary(withFilter: true) } }

    mutating func parseUnary(withFilter: Bool) throws -> JinjaExpr {
        var e: JinjaExpr
        if case .op(let o) = current, o == "-" || o == "+" {
            p += 1
            try enter()
            defer { depth -= 1 }
            e = .unary(o, try parseUnary(withFilter: false))
        } else {
            e = try parsePrimary()
        }
        e = try parsePostfix(e)
        return withFilter ? try parseFilters(e) : e
    }

    mutating func parsePrimary() throws -> JinjaExpr {
        let t = current
        p += 1
        switch t {
        case .name(let n):
            switch n {
            case "true", "True": return .literal(.bool(true))
            case "false", "False": return .literal(.bool(false))
            case "none", "None": return .literal(.none)
            default: return .name(n)
            }
        case .string(var s):
            while case .string(let more) = current { s += more; p += 1 }
            return .literal(.string(s))
        case .int(let v): return .literal(.int(v))
        case .double(let v): return .literal(.double(v))
        case .op("("):
            if skipIf(.op(")")) { return .tuple([]) }
            let e = try parseTuple()
            try expect(.op(")"))
            return e
        case .op("["):
            var items: [JinjaExpr] = []
            while !skipIf(.op("]")) {
                items.append(try parseExpression())
                if current != .op("]") { try expect(.op(",")) }
            }
            return .list(items)
        case .op("{"):
            var pairs: [(JinjaExpr, JinjaExpr)] = []
            while !skipIf(.op("}")) {
                let key = try parseExpression()
                try expect(.op(":"))
                pairs.append((key, try parseExpression()))
                if current != .op("}") { try expect(.op(",")) }
            }
            return .dict(pairs)
        default:
            p -= 1
            throw fail("unexpected \(describe(t)) in an expression")
        }
    }

    mutating func parsePostfix(_ base: JinjaExpr) throws -> JinjaExpr {
        var e = base
        while true {
            if skipIf(.op(".")) {
                switch current {
                case .name(let n): p += 1; e = .attribute(e, n)
                case .int(let i): p += 1; e = .item(e, .literal(.int(i)))
                default: throw fail("expected an attribute name after '.'")
                }
            } else if skipIf(.op("[")) {
                var parts: [JinjaExpr?] = [nil]
                var colons = 0
                while current != .op("]") {
                    if skipIf(.op(":")) { colons += 1; parts.append(nil); continue }
                    parts[parts.count - 1] = try parseExpression()
                }
                p += 1
                if colons == 0 {
                    guard let index = parts[0] else { throw fail("an empty subscript []") }
                    e = .item(e, index)
                } else {
                    guard colons <= 2 else { throw fail("a slice has at most two ':'") }
                    e = .slice(e, parts[0], parts[1], parts.count > 2 ? parts[2] : nil)
                }
            } else if current == .op("(") {
                e = .call(e, try parseArguments())
            } else {
                return e
            }
        }
    }

    mutating func parseFilters(_ base: JinjaExpr) throws -> JinjaExpr {
        var e = base
        while true {
            if skipIf(.op("|")) {
                let filterName = try name()
                noteFilter(filterName)
                e = .filter(e, filterName, current == .op("(") ? try parseArguments() : JinjaArguments())
            } else if current == .name("is") {
                p += 1
                let negated = current == .name("not")
                if negated { p += 1 }
                let testName = try name()
                guard jinjaTestNames.contains(testName) else { throw fail("no test named '\(testName)'") }
                var arguments = JinjaArguments()
                if current == .op("(") {
                    arguments = try parseArguments()
                } else if Self.startsBareTestArgument(current) {
                    arguments.positional = [try parsePostfix(try parsePrimary())]
                }
                e = .test(e, testName, arguments, negated: negated)
            } else if current == .op("(") {
                e = .call(e, try parseArguments())
            } else {
                return e
            }
        }
    }

    /// `x is divisibleby 3`, `x is sameas false`: a test may take one argument without parentheses.
    static func startsBareTestArgument(_ t: JinjaToken) -> Bool {
        switch t {
        case .name(let n): return !["else", "or", "and", "if", "not", "in", "is"].contains(n)
        case .string, .int, .double, .op("["), .op("{"): return true
        default: return false
        }
    }

    mutating func parseArguments() throws -> JinjaArguments {
        try expect(.op("("))
        var arguments = JinjaArguments()
        while !skipIf(.op(")")) {
            if case .name(let n) = current, peek() == .op("=") {
                p += 2
                arguments.keywords.append((n, try parseExpression()))
            } else {
                guard arguments.keywords.isEmpty else { throw fail("a positional argument after a keyword one") }
                arguments.positional.append(try parseExpression())
            }
            if current != .op(")") { try expect(.op(",")) }
        }
        return arguments
    }
}
