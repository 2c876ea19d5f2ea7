// RawJSON.swift: reads a tokenizer.json's `model.vocab` and `model.merges` byte for byte. Foundation's
// JSON reader gives object keys as Swift Strings, and Swift's String equality is Unicode canonical
// equivalence: "ί" (U+1F77) and "ί" (U+03AF), two pieces of Llama 2's vocabulary, become one key, and
// a key that is only U+FEFF comes back empty. SentencePiece vocabularies hold such pieces; byte-level
// ones (spelled in the 256-character byte alphabet) cannot.
import Foundation

/// A scanner over the bytes of a JSON document that the caller has already parsed once (so the
/// syntax is known to be valid: on invalid JSON it may loop or misread): it finds members by key
/// bytes and decodes strings to UTF-8 bytes. A UTF-8 byte order mark in front is skipped.
struct RawJSON {
    let b: [UInt8]

    init(b: [UInt8]) {
        self.b = b.starts(with: [0xEF, 0xBB, 0xBF]) ? Array(b.dropFirst(3)) : b
    }

    /// The index of the first byte that is not JSON whitespace, from `i`.
    func skipSpace(_ i: Int) -> Int {
        var i = i
        while i < b.count, [0x20, 0x09, 0x0A, 0x0D].contains(b[i]) { i += 1 }
        return i
    }

    /// The index just past the value starting at `i` (after whitespace).
    func skipValue(_ i: Int) -> Int {
        var i = skipSpace(i)
        guard i < b.count else { return i }
        switch b[i] {
        case 0x22: return string(i)?.end ?? b.count
        case 0x7B, 0x5B:  // { [ : skip to the matching close, minding strings
            var depth = 0
            while i < b.count {
                switch b[i] {
                case 0x22: i = (string(i)?.end ?? b.count) - 1
                case 0x7B, 0x5B: depth += 1
                case 0x7D, 0x5D:
                    depth -= 1
                    if depth == 0 { return i + 1 }
                default: break
                }
                i += 1
            }
            return i
        default:  // number, true, false, null
            while i < b.count, ![0x2C, 0x7D, 0x5D, 0x20, 0x09, 0x0A, 0x0D].contains(b[i]) { i += 1 }
            return i
        }
    }

    /// The string starting at `i` (a quote) as UTF-8 bytes, escapes decoded, and the index past it.
    func string(_ i: Int) -> (bytes: [UInt8], end: Int)? {
        guard i < b.count, b[i] == 0x22 else { return nil }
        var out: [UInt8] = []
        var i = i + 1
        func hex4(_ at: Int) -> UInt32? {
            guard at + 4 <= b.count else { return nil }
            return UInt32(String(decoding: b[at..<(at + 4)], as: UTF8.self), radix: 16)
        }
        while i < b.count {
            let c = b[i]
            if c == 0x22 { return (out, i + 1) }
            if c != 0x5C { out.append(c); i += 1; continue }
            guard i + 1 < b.count else { return nil }
            switch b[i + 1] {
            case 0x6E: out.append(0x0A)
            case 0x74: out.append(0x09)
            case 0x72: out.append(0x0D)
            case 0x62: out.append(0x08)
            case 0x66: out.append(0x0C)
            case 0x75:
                guard var u = hex4(i + 2) else { return nil }
                i += 6
                if (0xD800..<0xDC00).contains(u), i + 1 < b.count, b[i] == 0x5C, b[i + 1] == 0x75, let low = hex4(i + 2), (0xDC00..<0xE000).contains(low) {
                    u = 0x10000 + ((u - 0xD800) << 10) + (low - 0xDC00)
                    i += 6
                }
                out += Array(String(Unicode.Scalar(u).map(Character.init) ?? "\u{FFFD}").utf8)
                continue
            default: out.append(b[i + 1])  // \" \\ \/
            }
            i += 2
        }
        return nil
    }

    /// The members of the object starting at `i`: each key's bytes and where its value starts.
    func members(_ i: Int) -> [(key: [UInt8], value: Int)] {
        var i = skipSpace(i)
        guard i < b.count, b[i] == 0x7B else { return [] }
        var out: [(key: [UInt8], value: Int)] = []
        i = skipSpace(i + 1)
        while i < b.count, b[i] != 0x7D {
            guard let (key, end) = string(i) else { return out }
            let colon = skipSpace(end)
            let v = skipSpace(colon + 1)
            out.append((key, v))
            i = skipSpace(skipValue(v))
            if i < b.count, b[i] == 0x2C { i = skipSpace(i + 1) }
        }
        return out
    }

    /// The elements of the array starting at `i`: where each starts.
    func elements(_ i: Int) -> [Int] {
        var i = skipSpace(i)
        guard i < b.count, b[i] == 0x5B else { return [] }
        var out: [Int] = []
        i = skipSpace(i + 1)
        while i < b.count, b[i] != 0x5D {
            out.append(i)
            i = skipSpace(skipValue(i))
            if i < b.count, b[i] == 0x2C { i = skipSpace(i + 1) }
        }
        return out
    }

    /// The integer starting at `i`, or nil.
    func int(_ i: Int) -> Int? {
        let end = skipValue(i)
        return Int(String(decoding: b[skipSpace(i)..<end], as: UTF8.self))
    }

    /// Where the value of `path` (object keys from the root) starts, or nil.
    func find(_ path: [String]) -> Int? {
        var at = 0
        for key in path {
            guard let m = members(at).last(where: { $0.key == Array(key.utf8) }) else { return nil }
            at = m.value
        }
        return at
    }
}

extension Array where Element == UInt8 {
    /// UTF-8 with every "▁" (E2 96 81, SentencePiece's mark for a space) made a space.
    public func replacingSpaceMarks() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(count)
        var i = 0
        while i < count {
            if i + 2 < count && self[i] == 0xE2 && self[i + 1] == 0x96 && self[i + 2] == 0x81 {
                out.append(0x20)
                i += 3
            } else {
                out.append(self[i])
                i += 1
            }
        }
        return out
    }
}
