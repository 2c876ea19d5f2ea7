// The globals, filters, tests and Python methods chat templates call, as Jinja 3.1 and Python
// define them (transformers adds raise_exception, strftime_now and its own tojson).

import Foundation

/// Positional and keyword arguments of a call.
struct JinjaCall {
    let positional: [JinjaValue]
    let keywords: [(String, JinjaValue)]
    init(_ positional: [JinjaValue], _ keywords: [(String, JinjaValue)]) {
        self.positional = positional
        self.keywords = keywords
    }
    /// The argument at `index` (counting from the first after the value a filter or method applies
    /// to), or given by `name`.
    func get(_ index: Int, _ name: String) -> JinjaValue? {
        if index < positional.count { return positional[index] }
        return keywords.first { $0.0 == name }?.1
    }
    func bool(_ index: Int, _ name: String) -> Bool { get(index, name)?.truthy ?? false }
}

let jinjaGlobals: [String: JinjaFunction] = [
    "range": JinjaFunction("range") { args, _ in
        let n = try args.map { v -> Int in
            guard let i = v.integer else { throw ChatTemplateError("range() takes integers, got '\(v.typeName)'") }
            return i
        }
        guard (1...3).contains(n.count) else { throw ChatTemplateError("range() takes 1 to 3 integers") }
        let (start, stop, step) = n.count == 1 ? (0, n[0], 1) : (n[0], n[1], n.count > 2 ? n[2] : 1)
        guard step != 0 else { throw ChatTemplateError("range() arg 3 must not be zero") }
        let (span, overflow) = stop.subtractingReportingOverflow(start)
        let (items, overflow2) = span.dividedReportingOverflow(by: step)
        guard !overflow, !overflow2, items < 1_000_000 else { throw ChatTemplateError("range() of more than a million items") }
        return .list(stride(from: start, to: stop, by: step).map { .int($0) })
    },
    "raise_exception": JinjaFunction("raise_exception") { args, _ in
        throw ChatTemplateError(args.first?.printed ?? "", raisedByTemplate: true)
    },
    "namespace": JinjaFunction("namespace") { args, keywords in
        var d = JinjaDict()
        if case .dict(let given)? = args.first { d = given }
        for (k, v) in keywords { d[k] = v }
        return .namespace(JinjaNamespace(d))
    },
    "dict": JinjaFunction("dict") { args, keywords in
        var d = JinjaDict()
        if case .dict(let given)? = args.first { d = given }
        for pair in args.first?.sequenceItems ?? [] {  // dict([('a', 1), ('b', 2)])
            guard let kv = pair.sequenceItems, kv.count == 2, case .string(let k) = kv[0] else {
                throw ChatTemplateError("dict() takes pairs of a string and a value")
            }
            d[k] = kv[1]
        }
        for (k, v) in keywords { d[k] = v }
        return .dict(d)
    },
    "strftime_now": JinjaFunction("strftime_now") { args, _ in
        guard case .string(let format)? = args.first else { throw ChatTemplateError("strftime_now() takes a format string") }
        var now = time(nil)
        var parts = tm()
        localtime_r(&now, &parts)
        var buffer = [Int8](repeating: 0, count: 512)
        let n = strftime(&buffer, buffer.count, format, &parts)
        return .string(String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self))
    },
]

// MARK: strings as Python treats them

private func isPythonSpace(_ c: Unicode.Scalar) -> Bool {
    c.properties.isWhitespace || (0x1C...0x1F).contains(c.value)
}

/// Python's `str.strip(chars)` (whitespace when `chars` is nil), on the chosen sides.
func pythonStrip(_ s: String, _ chars: String?, left: Bool = true, right: Bool = true) -> String {
    let set = chars.map { Set($0.unicodeScalars) }
    func strip(_ c: Unicode.Scalar) -> Bool { set?.contains(c) ?? isPythonSpace(c) }
    var scalars = Array(s.unicodeScalars)[...]
    while left, let f = scalars.first, strip(f) { scalars.removeFirst() }
    while right, let l = scalars.last, strip(l) { scalars.removeLast() }
    return String(String.UnicodeScalarView(scalars))
}

/// Python's `str.split(sep, maxsplit)`.
func pythonSplit(_ s: String, _ sep: String?, _ maxSplit: Int) throws -> [String] {
    let scalars = Array(s.unicodeScalars)
    var parts: [String] = []
    func text(_ r: Range<Int>) -> String { String(String.UnicodeScalarView(scalars[r])) }
    guard let sep else {
        var i = 0
        while i < scalars.count {
            while i < scalars.count, isPythonSpace(scalars[i]) { i += 1 }
            guard i < scalars.count else { break }
            if maxSplit >= 0, parts.count == maxSplit {
                var end = scalars.count
                while end > i, isPythonSpace(scalars[end - 1]) { end -= 1 }
                parts.append(text(i..<end))
                break
            }
            let start = i
            while i < scalars.count, !isPythonSpace(scalars[i]) { i += 1 }
            parts.append(text(start..<i))
        }
        return parts
    }
    let needle = Array(sep.unicodeScalars)
    guard !needle.isEmpty else { throw ChatTemplateError("empty separator") }
    var start = 0, i = 0
    while i + needle.count <= scalars.count, maxSplit < 0 || parts.count < maxSplit {
        if Array(scalars[i..<(i + needle.count)]) == needle {
            parts.append(text(start..<i))
            i += needle.count
            start = i
        } else {
            i += 1
        }
    }
    parts.append(text(start..<scalars.count))
    return parts
}

/// Python's `str.splitlines()`: lines without their ends (\n, \r\n, \r and Unicode's other line breaks).
func pythonSplitLines(_ s: String) -> [String] {
    let breaks: Set<UInt32> = [0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029]
    var lines: [String] = [], line = String.UnicodeScalarView()
    var previousCR = false
    for c in s.unicodeScalars {
        defer { previousCR = c == "\r" }
        if c == "\n" && previousCR { continue }
        if breaks.contains(c.value) { lines.append(String(line)); line = String.UnicodeScalarView() } else { line.append(c) }
    }
    if !line.isEmpty { lines.append(String(line)) }
    return lines
}

/// Python's `str.replace(old, new, count)`.
func pythonReplace(_ s: String, _ old: String, _ new: String, _ count: Int) throws -> String {
    let occurrences = old.isEmpty ? s.unicodeScalars.count + 1 : ((try? pythonSplit(s, old, count)) ?? [s]).count - 1
    let (added, overflow) = occurrences.multipliedReportingOverflow(by: new.utf8.count)
    try JinjaLimits.check(overflow ? Int.max : added + s.utf8.count, "replace's result")
    if old.isEmpty {
        var out = ""
        var n = 0
        for c in s.unicodeScalars {
            if count < 0 || n < count { out += new; n += 1 }
            out.unicodeScalars.append(c)
        }
        if count < 0 || n < count { out += new }
        return out
    }
    let parts = (try? pythonSplit(s, old, count)) ?? [s]
    return parts.joined(separator: new)
}

private func capitalized(_ s: Substring.UnicodeScalarView) -> String {
    guard let first = s.first else { return "" }
    return String(first).uppercased() + String(String.UnicodeScalarView(s.dropFirst())).lowercased()
}

/// Python's `islower()` (`upper`: `isupper()`): some cased letter, none of the other case.
func pythonCase(_ s: String, upper: Bool) -> Bool {
    var cased = false
    for c in s.unicodeScalars where c.properties.isCased {
        if upper ? c.properties.isLowercase : c.properties.isUppercase { return false }
        cased = true
    }
    return cased
}

/// Python's `format % values` for the conversions templates use: `%s`, `%r`, `%d`/`%i`, `%f`
/// (with a precision, `%.2f`), `%x`, `%%`; `values` a tuple (one value each) or a dict (`%(name)s`).
func pythonPercent(_ format: String, _ values: JinjaValue) throws -> String {
    let args = values.sequenceItems.map { $0 } ?? [values]
    var out = "", next = 0
    var scalars = Array(format.unicodeScalars)[...]
    while let c = scalars.popFirst() {
        guard c == "%" else { out.unicodeScalars.append(c); continue }
        var value: JinjaValue?
        if scalars.first == "(", let close = scalars.firstIndex(of: ")") {
            let key = String(String.UnicodeScalarView(scalars[scalars.index(after: scalars.startIndex)..<close]))
            guard case .dict(let d) = values, let v = d[key] else { throw ChatTemplateError("format requires a mapping with the key '\(key)'") }
            value = v
            scalars = scalars[scalars.index(after: close)...]
        }
        var precision: Int?
        if scalars.first == "." {
            scalars.removeFirst()
            var digits = ""
            while let d = scalars.first, ("0"..."9").contains(d) { digits.unicodeScalars.append(d); scalars.removeFirst() }
            precision = Int(digits) ?? 0
        }
        guard let conversion = scalars.popFirst() else { throw ChatTemplateError("incomplete format") }
        if conversion == "%" { out += "%"; continue }
        if value == nil {
            guard next < args.count else { throw ChatTemplateError("not enough arguments for format string") }
            value = args[next]
            next += 1
        }
        let v = value!
        switch conversion {
        case "s": out += v.printed
        case "r": out += v.pythonRepr
        case "d", "i":
            guard let x = v.number else { throw ChatTemplateError("%\(conversion) format: a real number is required, not \(v.typeName)") }
            guard let i = Int(exactly: x.rounded(.towardZero)) else { throw ChatTemplateError("an integer beyond 64 bits") }
            out += String(i)
        case "f":
            guard let x = v.number else { throw ChatTemplateError("%f format: a real number is required, not \(v.typeName)") }
            guard (precision ?? 6) <= 100 else { throw ChatTemplateError("%f precision \(precision!) is over 100") }
            out += String(format: "%.\(precision ?? 6)f", x)
        case "x":
            guard let i = v.integer else { throw ChatTemplateError("%x format: an integer is required, not \(v.typeName)") }
            out += String(i, radix: 16)
        default: throw ChatTemplateError("unsupported format character '\(conversion)'")
        }
    }
    if case .dict = values { return out }
    guard next >= args.count else { throw ChatTemplateError("not all arguments converted during string formatting") }
    return out
}

/// Python's `str.format`: `{}` (the next argument), `{0}`, `{name}`, `{{` and `}}`; no format specs.
func pythonFormat(_ format: String, _ positional: [JinjaValue], _ keywords: [(String, JinjaValue)]) throws -> String {
    var out = "", next = 0
    var scalars = Array(format.unicodeScalars)[...]
    while let c = scalars.popFirst() {
        if (c == "{" || c == "}") && scalars.first == c { scalars.removeFirst(); out.unicodeScalars.append(c); continue }
        guard c == "{" else {
            guard c != "}" else { throw ChatTemplateError("Single '}' encountered in format string") }
            out.unicodeScalars.append(c)
            continue
        }
        guard let close = scalars.firstIndex(of: "}") else { throw ChatTemplateError("Single '{' encountered in format string") }
        let field = String(String.UnicodeScalarView(scalars[..<close]))
        scalars = scalars[scalars.index(after: close)...]
        guard !field.contains(":"), !field.contains("!") else { throw ChatTemplateError("format specs ('\(field)') are not supported") }
        let value: JinjaValue?
        if field.isEmpty {
            value = next < positional.count ? positional[next] : nil
            next += 1
        } else if let i = Int(field) {
            value = i < positional.count ? positional[i] : nil
        } else {
            value = keywords.first { $0.0 == field }?.1
        }
        guard let value else { throw ChatTemplateError("format has no argument '\(field)'") }
        out += value.printed
    }
    return out
}

/// Python's `str.title()`: a letter after a non-letter is upper case, other letters lower case.
func pythonTitle(_ s: String) -> String {
    var out = "", previousCased = false
    for c in s.unicodeScalars {
        out += previousCased ? String(c).lowercased() : String(c).uppercased()
        previousCased = c.properties.isCased
    }
    return out
}

/// Jinja's `title` filter: each word (split at spaces, hyphens and opening brackets) capitalized.
func jinjaTitle(_ s: String) -> String {
    let separators = Set("-({[<".unicodeScalars)
    var out = "", word = String.UnicodeScalarView()
    func flush() {
        out += capitalized(Substring(String(word)).unicodeScalars)
        word = String.UnicodeScalarView()
    }
    for c in s.unicodeScalars {
        if isPythonSpace(c) || separators.contains(c) { flush(); out.unicodeScalars.append(c) } else { word.append(c) }
    }
    flush()
    return out
}

// MARK: methods

/// A Python method of `value` called `name` (`message.content.strip`, `dict.items`), nil if none.
func jinjaMethod(_ value: JinjaValue, _ name: String) -> JinjaFunction? {
    switch value {
    case .string(let s): return stringMethod(s, name)
    case .list(let l), .tuple(let l):
        switch name {
        case "count": return JinjaFunction(name) { args, _ in .int(l.filter { jinjaEqual($0, args.first ?? .none) }.count) }
        case "index":
            return JinjaFunction(name) { args, _ in
                guard let k = l.firstIndex(where: { jinjaEqual($0, args.first ?? .none) }) else { throw ChatTemplateError("the value is not in the list") }
                return .int(k)
            }
        default: return nil
        }
    case .dict(let d):
        switch name {
        case "items": return JinjaFunction(name) { _, _ in .list(d.items.map { .tuple([$0.0, $0.1]) }) }
        case "keys": return JinjaFunction(name) { _, _ in .list(d.items.map(\.0)) }
        case "values": return JinjaFunction(name) { _, _ in .list(d.pairs.map(\.1)) }
        case "get":
            return JinjaFunction(name) { args, keywords in
                let a = JinjaCall(args, keywords)
                return a.get(0, "key").flatMap { d.value(at: $0) } ?? a.get(1, "default") ?? .none
            }
        default: return nil
        }
    default: return nil
    }
}

private func stringMethod(_ s: String, _ name: String) -> JinjaFunction? {
    func string(_ v: JinjaValue?) -> String? { if case .string(let t)? = v { return t } else { return nil } }
    /// startswith / endswith, on `s[start:end]`.
    func affix(_ a: JinjaCall, _ test: @escaping (String, String) -> Bool) throws -> JinjaValue {
        let part = try JinjaRenderer.slice(.string(s), a.get(1, "start"), a.get(2, "end"), nil).printed
        switch a.get(0, "prefix") {
        case .string(let p)?: return .bool(test(part, p))
        case .tuple(let options)?: return .bool(options.contains { string($0).map { test(part, $0) } ?? false })
        default: throw ChatTemplateError("\(name)() takes a string or a tuple of strings")
        }
    }
    let body: (JinjaCall) throws -> JinjaValue
    switch name {
    case "strip", "lstrip", "rstrip":
        body = { a in .string(pythonStrip(s, string(a.get(0, "chars")), left: name != "rstrip", right: name != "lstrip")) }
    case "split":
        body = { a in .list(try pythonSplit(s, string(a.get(0, "sep")), a.get(1, "maxsplit")?.integer ?? -1).map { .string($0) }) }
    case "rsplit":  // split from the right: the same parts on the reversed text, reversed back
        body = { a in
            func reversed(_ t: String) -> String { String(String.UnicodeScalarView(t.unicodeScalars.reversed())) }
            let parts = try pythonSplit(reversed(s), string(a.get(0, "sep")).map(reversed), a.get(1, "maxsplit")?.integer ?? -1)
            return .list(parts.reversed().map { .string(reversed($0)) })
        }
    case "swapcase":
        body = { _ in .string(String(s.unicodeScalars.map { c -> String in
            c.properties.isUppercase ? String(c).lowercased() : c.properties.isLowercase ? String(c).uppercased() : String(c)
        }.joined())) }
    case "zfill":
        body = { a in
            let width = a.get(0, "width")?.integer ?? 0
            try JinjaLimits.check(width, "zfill's width")
            var scalars = Array(s.unicodeScalars)
            let sign = scalars.first == "+" || scalars.first == "-" ? [scalars.removeFirst()] : []
            let pad = [Unicode.Scalar](repeating: "0", count: max(0, width - s.unicodeScalars.count))
            return .string(String(String.UnicodeScalarView(sign + pad + scalars)))
        }
    case "startswith":
        body = { a in try affix(a) { $0.unicodeScalars.starts(with: $1.unicodeScalars) } }
    case "endswith":
        body = { a in try affix(a) { $0.unicodeScalars.reversed().starts(with: $1.unicodeScalars.reversed()) } }
    case "upper": body = { _ in .string(s.uppercased()) }
    case "lower": body = { _ in .string(s.lowercased()) }
    case "title": body = { _ in .string(pythonTitle(s)) }
    case "capitalize": body = { _ in .string(capitalized(Substring(s).unicodeScalars)) }
    case "replace":
        body = { a in
            guard let old = string(a.get(0, "old")), let new = string(a.get(1, "new")) else { throw ChatTemplateError("replace() takes two strings") }
            return .string(try pythonReplace(s, old, new, a.get(2, "count")?.integer ?? -1))
        }
    case "find", "rfind", "count", "index":
        body = { a in
            guard let sub = string(a.get(0, "sub")) else { throw ChatTemplateError("\(name)() takes a string") }
            let hay = Array(s.unicodeScalars), needle = Array(sub.unicodeScalars)
            var found: [Int] = []
            var i = 0
            while i + needle.count <= hay.count {
                if Array(hay[i..<(i + needle.count)]) == needle {
                    found.append(i)
                    i += name == "count" ? max(needle.count, 1) : 1  // count: without overlaps, as Python
                } else { i += 1 }
                if (name == "find" || name == "index") && !found.isEmpty { break }
            }
            if name == "count" { return .int(needle.isEmpty ? hay.count + 1 : found.count) }
            if found.isEmpty && name == "index" { throw ChatTemplateError("substring not found") }
            return .int((name == "rfind" ? found.last : found.first) ?? -1)
        }
    case "splitlines": body = { _ in .list(pythonSplitLines(s).map { .string($0) }) }
    case "join": body = { a in try JinjaValue.list(try (a.get(0, "iterable") ?? .list([])).iterated()).joinedText(s) }
    case "isdigit": body = { _ in .bool(!s.isEmpty && s.unicodeScalars.allSatisfy { $0.properties.numericType != nil }) }
    case "isalpha": body = { _ in .bool(!s.isEmpty && s.unicodeScalars.allSatisfy(\.properties.isAlphabetic)) }
    case "isalnum":
        body = { _ in .bool(!s.isEmpty && s.unicodeScalars.allSatisfy { $0.properties.isAlphabetic || $0.properties.numericType != nil }) }
    case "islower", "isupper": body = { _ in .bool(pythonCase(s, upper: name == "isupper")) }
    case "casefold": body = { _ in .string(s.lowercased().replacingOccurrences(of: "ß", with: "ss")) }  // (ß → ss: casefold's one change from lower() in the common scripts)
    case "center", "ljust", "rjust":
        body = { a in
            let width = a.get(0, "width")?.integer ?? 0
            try JinjaLimits.check(width, "\(name)'s width")
            let fill = string(a.get(1, "fillchar")) ?? " "
            guard fill.unicodeScalars.count == 1 else { throw ChatTemplateError("The fill character must be exactly one character long") }
            let missing = max(0, width - s.unicodeScalars.count)
            // Python's center puts the odd space on the right, unless the width and the text are both odd.
            let left = name == "rjust" ? missing : name == "ljust" ? 0 : missing / 2 + (missing & width & 1)
            return .string(String(repeating: fill, count: left) + s + String(repeating: fill, count: missing - left))
        }
    case "format":
        body = { a in .string(try pythonFormat(s, a.positional, a.keywords)) }
    case "isspace": body = { _ in .bool(!s.isEmpty && s.unicodeScalars.allSatisfy(isPythonSpace)) }
    case "removeprefix", "removesuffix":
        body = { a in
            guard let affix = string(a.get(0, "prefix")), !affix.isEmpty else { return .string(s) }
            if name == "removeprefix", s.hasPrefix(affix) { return .string(String(s.dropFirst(affix.count))) }
            if name == "removesuffix", s.hasSuffix(affix) { return .string(String(s.dropLast(affix.count))) }
            return .string(s)
        }
    default: return nil
    }
    return JinjaFunction(name) { args, keywords in try body(JinjaCall(args, keywords)) }
}

extension JinjaValue {
    /// The items of a list, printed and joined with `separator`.
    func joinedText(_ separator: String) throws -> JinjaValue {
        guard let l = sequenceItems else { return .string(printed) }
        let texts = l.map(\.printed)
        try JinjaLimits.check(texts.reduce(separator.utf8.count * texts.count) { $0 + $1.utf8.count }, "join's result")
        return .string(texts.joined(separator: separator))
    }
}

// MARK: filters

let jinjaFilterNames: Set<String> = [
    "trim", "upper", "lower", "title", "capitalize", "length", "count", "first", "last", "join", "default", "d",
    "string", "int", "float", "list", "items", "replace", "reverse", "round", "abs", "tojson", "selectattr",
    "rejectattr", "select", "reject", "map", "unique", "sort", "min", "max", "sum", "dictsort", "indent", "safe",
    "e", "escape", "attr", "wordcount", "format",
]

let jinjaTestNames: Set<String> = [
    "defined", "undefined", "none", "string", "number", "integer", "float", "boolean", "true", "false", "mapping",
    "iterable", "sequence", "callable", "even", "odd", "divisibleby", "eq", "equalto", "==", "ne", "!=", "lt",
    "lessthan", "<", "le", "<=", "gt", "greaterthan", ">", "ge", ">=", "in", "sameas", "lower", "upper", "escaped",
]

extension JinjaRenderer {
    func applyFilter(_ name: String, to value: JinjaValue, _ arguments: ([JinjaValue], [(String, JinjaValue)])) throws -> JinjaValue {
        let a = JinjaCall(arguments.0, arguments.1)
        func text(_ v: JinjaValue) -> String { v.printed }
        /// The value an item is compared by: an attribute of it, lower-cased unless case-sensitive.
        func key(_ v: JinjaValue, attribute: JinjaValue?, caseSensitive: Bool) throws -> JinjaValue {
            var k = v
            if case .int(let index)? = attribute { k = try item(k, .int(index)) }
            if case .string(let path)? = attribute {
                for part in path.split(separator: ".") { k = try item(k, Int(part).map { .int($0) } ?? .string(String(part))) }
            }
            if !caseSensitive, case .string(let s) = k { return .string(s.lowercased()) }
            return k
        }
        switch name {
        case "trim": return .string(pythonStrip(text(value), a.get(0, "chars").map(text)))
        case "upper": return .string(text(value).uppercased())
        case "lower": return .string(text(value).lowercased())
        case "title": return .string(jinjaTitle(text(value)))
        case "capitalize": return .string(capitalized(Substring(text(value)).unicodeScalars))
        case "length", "count":
            guard let n = value.length else { throw ChatTemplateError("object of type '\(value.typeName)' has no len()") }
            return .int(n)
        case "wordcount":  // runs of word characters, as Jinja's \w+
            var words = 0, inWord = false
            for c in text(value).unicodeScalars {
                let word = c.properties.isAlphabetic || c.properties.numericType != nil || c == "_"
                if word && !inWord { words += 1 }
                inWord = word
            }
            return .int(words)
        case "first": return try value.iterated().first ?? .undefined("the first item of an empty sequence")
        case "last":
            if case .string(let s) = value { return s.unicodeScalars.last.map { .string(String($0)) } ?? .undefined("last") }
            return try value.iterated().last ?? .undefined("the last item of an empty sequence")
        case "join":
            var items = try value.iterated()
            if let attribute = a.get(1, "attribute") { items = try items.map { try key($0, attribute: attribute, caseSensitive: true) } }
            return try JinjaValue.list(items).joinedText(a.get(0, "d").map(text) ?? "")
        case "default", "d":
            let fallback = a.get(0, "default_value") ?? .string("")
            return value.isUndefined || (a.bool(1, "boolean") && !value.truthy) ? fallback : value
        case "string": return .string(text(value))
        case "int":
            let fallback = a.get(0, "default") ?? .int(0)
            func whole(_ d: Double) throws -> JinjaValue {
                guard d.isFinite else { return fallback }
                guard let i = Int(exactly: d.rounded(.towardZero)) else { throw ChatTemplateError("an integer beyond 64 bits") }
                return .int(i)
            }
            switch value {
            case .int, .bool: return .int(value.integer!)
            case .double(let d): return try whole(d)
            case .string(let s):
                var t = pythonStrip(s, nil).replacingOccurrences(of: "_", with: "").lowercased()
                var base = a.get(1, "base")?.integer ?? 10
                let negative = t.hasPrefix("-")
                if negative || t.hasPrefix("+") { t.removeFirst() }
                for (prefix, b) in [("0x", 16), ("0o", 8), ("0b", 2)] where (base == 0 || base == b) && t.hasPrefix(prefix) {
                    t.removeFirst(2)
                    base = b
                }
                if base == 0 { base = 10 }
                guard (2...36).contains(base) else { throw ChatTemplateError("int() base must be 0 or 2 to 36, got \(base)") }
                if let i = Int(t, radix: base) { return .int(negative ? -i : i) }
                if base == 10, let d = Double(t) { return try whole(negative ? -d : d) }
                return fallback
            default: return fallback
            }
        case "float":
            let fallback = a.get(0, "default") ?? .double(0)
            switch value {
            case .int, .bool, .double: return .double(value.number!)
            case .string(let s): return Double(pythonStrip(s, nil)).map { .double($0) } ?? fallback
            default: return fallback
            }
        case "list": return .list(try value.iterated())
        case "items":
            if value.isUndefined { return .list([]) }
            guard case .dict(let d) = value else { throw ChatTemplateError("can only get item pairs from a mapping") }
            return .list(d.items.map { .tuple([$0.0, $0.1]) })
        case "replace":
            guard let old = a.get(0, "old").map(text), let new = a.get(1, "new").map(text) else {
                throw ChatTemplateError("replace takes two strings")
            }
            return .string(try pythonReplace(text(value), old, new, a.get(2, "count")?.integer ?? -1))
        case "reverse":
            if case .string(let s) = value { return .string(String(String.UnicodeScalarView(s.unicodeScalars.reversed()))) }
            return .list(try value.iterated().reversed())
        case "round":
            guard let x = value.number else { throw ChatTemplateError("round takes a number, got '\(value.typeName)'") }
            let precision = a.get(0, "precision")?.integer ?? 0
            let scale = Foundation.pow(10, Double(precision))
            switch a.get(1, "method").map(text) ?? "common" {
            case "ceil": return .double((x * scale).rounded(.up) / scale)
            case "floor": return .double((x * scale).rounded(.down) / scale)
            default:
                if case .int = value { return value }
                return .double((x * scale).rounded(.toNearestOrEven) / scale)
            }
        case "abs":
            switch value {
            case .int(let i):
                guard i != .min else { throw ChatTemplateError("an integer beyond 64 bits") }
                return .int(abs(i))
            case .double(let d): return .double(abs(d))
            case .bool(let b): return .int(b ? 1 : 0)
            default: throw ChatTemplateError("bad operand type for abs(): '\(value.typeName)'")
            }
        case "tojson":
            var indent: String?
            switch a.get(0, "indent") {
            case .int(let n)?: indent = String(repeating: " ", count: max(0, n))
            case .string(let s)?: indent = s
            default: break
            }
            var separators: (String, String)?
            if let pair = a.get(2, "separators")?.sequenceItems, pair.count == 2, case .string(let item) = pair[0], case .string(let key) = pair[1] {
                separators = (item, key)
            }
            return .string(try pythonJSON(value, indent: indent, sortKeys: a.bool(3, "sort_keys"), separators: separators,
                                          asciiOnly: a.bool(1, "ensure_ascii")))
        case "selectattr", "rejectattr", "select", "reject":
            if !value.truthy { return .list([]) }  // jinja2 yields nothing for a false value (None, undefined, empty)
            let byAttribute = name.hasSuffix("attr")
            let rest = Array(a.positional.dropFirst(byAttribute ? 1 : 0))
            return .list(try value.iterated().filter { item in
                let subject = byAttribute ? try key(item, attribute: a.positional.first, caseSensitive: true) : item
                var passes = subject.truthy
                if case .string(let test)? = rest.first { passes = try applyTest(test, to: subject, Array(rest.dropFirst())) }
                return passes == name.hasPrefix("select")
            })
        case "map":
            if !value.truthy { return .list([]) }
            if let attribute = a.keywords.first(where: { $0.0 == "attribute" })?.1 {
                let fallback = a.keywords.first { $0.0 == "default" }?.1
                return .list(try value.iterated().map { item in
                    let v = try key(item, attribute: attribute, caseSensitive: true)
                    return v.isUndefined ? fallback ?? v : v
                })
            }
            guard case .string(let filter)? = a.positional.first else { throw ChatTemplateError("map takes a filter name or attribute=") }
            guard jinjaFilterNames.contains(filter) else { throw ChatTemplateError("no filter named '\(filter)'") }
            return .list(try value.iterated().map { try applyFilter(filter, to: $0, (Array(a.positional.dropFirst()), a.keywords)) })
        case "unique":
            var seen: [JinjaValue] = []
            var out: [JinjaValue] = []
            for v in try value.iterated() {
                let k = try key(v, attribute: a.get(1, "attribute"), caseSensitive: a.bool(0, "case_sensitive"))
                if !seen.contains(where: { jinjaEqual($0, k) }) { seen.append(k); out.append(v) }
            }
            return .list(out)
        case "sort":
            let items = try value.iterated()
            let keys = try items.map { try key($0, attribute: a.get(2, "attribute"), caseSensitive: a.bool(1, "case_sensitive")) }
            let reverse = a.bool(0, "reverse")
            var failure: Error?
            // Stable both ways, as Python's sorted: equal keys keep their order.
            let order = items.indices.sorted { i, j in
                do {
                    let (x, y) = reverse ? (keys[j], keys[i]) : (keys[i], keys[j])
                    if try jinjaLess(x, y) { return true }
                    return try !jinjaLess(y, x) && i < j
                } catch {
                    failure = error
                    return i < j
                }
            }
            if let failure { throw failure }
            return .list(order.map { items[$0] })
        case "min", "max":
            let items = try value.iterated()
            guard !items.isEmpty else { return .undefined("\(name) of an empty sequence") }
            let keys = try items.map { try key($0, attribute: a.get(1, "attribute"), caseSensitive: a.bool(0, "case_sensitive")) }
            var best = 0
            for k in keys.indices.dropFirst() where name == "min" ? try jinjaLess(keys[k], keys[best]) : try jinjaLess(keys[best], keys[k]) { best = k }
            return items[best]
        case "sum":
            var total = a.get(1, "start") ?? .int(0)
            for v in try value.iterated() { total = try binary("+", total, try key(v, attribute: a.get(0, "attribute"), caseSensitive: true)) }
            return total
        case "dictsort":
            guard case .dict(let d) = value else { throw ChatTemplateError("dictsort takes a mapping") }
            let byValue = a.get(1, "by").map(text) == "value"
            let caseSensitive = a.bool(0, "case_sensitive")
            let pairs = d.items.map { JinjaValue.tuple([$0.0, $0.1]) }
            let sorted = try applyFilter("sort", to: .list(pairs), ([], [("reverse", .bool(a.bool(2, "reverse"))),
                                                                         ("case_sensitive", .bool(caseSensitive)), ("attribute", .string(byValue ? "1" : "0"))]))
            return sorted
        case "indent":
            var width = String(repeating: " ", count: 4)
            switch a.get(0, "width") {
            case .int(let n)?:
                try JinjaLimits.check(n, "indent's width")
                width = String(repeating: " ", count: max(0, n))
            case .string(let s)?: width = s
            default: break
            }
            let lines = pythonSplitLines(text(value) + "\n")
            let (added, overflow) = lines.count.multipliedReportingOverflow(by: width.utf8.count)
            try JinjaLimits.check(overflow ? Int.max : added, "indent's result")
            var out: String
            if a.bool(2, "blank") {
                out = lines.map { width + $0 }.joined(separator: "\n")
                out = String(out.dropFirst(width.count))
            } else {
                out = lines.first ?? ""
                for line in lines.dropFirst() { out += "\n" + (line.isEmpty ? "" : width + line) }
            }
            return .string(a.bool(1, "first") ? width + out : out)
        case "format": return .string(try pythonPercent(text(value), a.keywords.isEmpty ? .tuple(a.positional) : .dict(JinjaDict(a.keywords))))
        case "safe": return value
        case "e", "escape":
            var out = ""
            for c in text(value) {
                switch c {
                case "&": out += "&amp;"
                case "<": out += "&lt;"
                case ">": out += "&gt;"
                case "\"": out += "&#34;"
                case "'": out += "&#39;"
                default: out.append(c)
                }
            }
            return .string(out)
        case "attr":
            guard case .string(let n)? = a.get(0, "name") else { throw ChatTemplateError("attr takes a name") }
            return try attribute(value, n)
        default:
            throw ChatTemplateError("no filter named '\(name)'")
        }
    }

    func applyTest(_ name: String, to value: JinjaValue, _ arguments: [JinjaValue]) throws -> Bool {
        let other = arguments.first ?? .undefined("the test's argument")
        switch name {
        case "defined": return !value.isUndefined
        case "undefined": return value.isUndefined
        case "none": if case .none = value { return true } else { return false }
        case "string": if case .string = value { return true } else { return false }
        case "number": return value.number != nil
        case "integer": if case .int = value { return true } else { return false }
        case "float": if case .double = value { return true } else { return false }
        case "boolean": if case .bool = value { return true } else { return false }
        case "true": if case .bool(true) = value { return true } else { return false }
        case "false": if case .bool(false) = value { return true } else { return false }
        case "mapping": if case .dict = value { return true } else { return false }
        case "iterable", "sequence":
            switch value {
            case .string, .list, .tuple, .dict, .undefined: return true
            default: return false
            }
        case "callable": if case .function = value { return true } else { return false }
        case "even", "odd", "divisibleby":
            guard let x = value.integer else { throw ChatTemplateError("the '\(name)' test takes an integer") }
            let m = name == "divisibleby" ? (other.integer ?? 0) : 2
            guard m != 0 else { throw ChatTemplateError("integer division or modulo by zero") }
            let divisible = m == -1 || x % m == 0  // (Int.min % -1 would trap)
            return name == "odd" ? !divisible : divisible
        case "eq", "equalto", "==": return jinjaEqual(value, other)
        case "ne", "!=": return !jinjaEqual(value, other)
        case "lt", "lessthan", "<": return try jinjaLess(value, other)
        case "le", "<=": return try !jinjaLess(other, value)
        case "gt", "greaterthan", ">": return try jinjaLess(other, value)
        case "ge", ">=": return try !jinjaLess(value, other)
        case "in": return try contains(other, value)
        case "sameas":
            switch (value, other) {
            case (.none, .none): return true
            case (.bool(let x), .bool(let y)): return x == y
            case (.int(let x), .int(let y)): return x == y
            case (.namespace(let x), .namespace(let y)): return x === y
            default: return false
            }
        case "lower", "upper":  // Python's islower / isupper: some cased letter, and none of the other case
            guard case .string(let s) = value else { return false }
            return pythonCase(s, upper: name == "upper")
        case "escaped": return false
        default: throw ChatTemplateError("no test named '\(name)'")
        }
    }
}
