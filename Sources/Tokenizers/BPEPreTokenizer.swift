// BPEPreTokenizer.swift: splits text into the pieces ("words") that BPE merges never cross: GPT-2's regex
// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`, hand-written over UTF-8 (an
// NSRegularExpression is ~50x slower), and SmolLM2's variant that first isolates every digit.
import Foundation

/// How text is cut into words before BPE; the two kinds Hugging Face `tokenizer.json` files use for GPT-2-style
/// byte-level BPE.
public enum BPEPreTokenizer: String, Sendable, CaseIterable {
    /// `ByteLevel(add_prefix_space: false, use_regex: true)`: GPT-2's regex, as in GPT-2, RoBERTa, Qwen-free
    /// byte-level BPEs. `"year 2024"` → `"year"`, `" 2024"`.
    case gpt2
    /// `Sequence[Digits(individual_digits: true), ByteLevel(use_regex: true)]`, llama.cpp's `pre = smollm`
    /// (SmolLM2, StarCoder): every numeric character becomes its own word first, then GPT-2's regex splits each
    /// stretch between them. `"year 2024"` → `"year"`, `" "`, `"2"`, `"0"`, `"2"`, `"4"`.
    case digitsSplit
}

/// Character classes of the GPT-2 regex: `\p{L}`, `\p{N}`, `\s`, and everything else.
enum ScalarClass: UInt8 {
    case letter = 0, number = 1, space = 2, other = 3
}

enum PreTokenizerScan {
    /// Classes of the ASCII range.
    static let asciiClass: [ScalarClass] = (0 ..< 128).map { b -> ScalarClass in
        let s = Unicode.Scalar(UInt8(b))
        return classify(s)
    }

    /// `\s` is Unicode White_Space (Oniguruma's and Rust regex's definition); letters are Lu/Ll/Lt/Lm/Lo and
    /// numbers Nd/Nl/No, as `\p{L}` and `\p{N}` (and Rust's `char::is_numeric`, which HF's Digits uses).
    static func classify(_ s: Unicode.Scalar) -> ScalarClass {
        let props = s.properties
        if props.isWhitespace { return .space }
        switch props.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return .letter
        case .decimalNumber, .letterNumber, .otherNumber: return .number
        default: return .other
        }
    }

    /// Class and byte length of the scalar starting at `p[i]` (the input is valid UTF-8: it came from a String).
    @inline(__always)
    static func scalar(_ p: UnsafePointer<UInt8>, _ i: Int, _ table: UnsafePointer<ScalarClass>)
        -> (ScalarClass, Int) {
        let b0 = p[i]
        if b0 < 0x80 { return (table[Int(b0)], 1) }
        return nonASCII(p, i)
    }

    @inline(never)
    static func nonASCII(_ p: UnsafePointer<UInt8>, _ i: Int) -> (ScalarClass, Int) {
        let b0 = UInt32(p[i])
        var v: UInt32
        var n: Int
        if b0 & 0xE0 == 0xC0 {
            v = (b0 & 0x1F) << 6 | UInt32(p[i + 1] & 0x3F)
            n = 2
        } else if b0 & 0xF0 == 0xE0 {
            v = (b0 & 0x0F) << 12 | UInt32(p[i + 1] & 0x3F) << 6 | UInt32(p[i + 2] & 0x3F)
            n = 3
        } else {
            v = (b0 & 0x07) << 18 | UInt32(p[i + 1] & 0x3F) << 12 | UInt32(p[i + 2] & 0x3F) << 6
                | UInt32(p[i + 3] & 0x3F)
            n = 4
        }
        guard let s = Unicode.Scalar(v) else { return (.other, n) }
        return (classify(s), n)
    }

    /// Appends to `ends` the end offset of each GPT-2 regex match in `p[start..<end]` (matches tile the range:
    /// every character starts some alternative, so the piece starts are `start` and the previous ends).
    static func splitGPT2(_ p: UnsafePointer<UInt8>, from start: Int, to end: Int,
                          table: UnsafePointer<ScalarClass>, into ends: inout [Int]) {
        var i = start
        while i < end {
            let c0 = p[i]
            // 's 't 're 've 'm 'll 'd (ASCII apostrophe, case-sensitive, tried first).
            if c0 == 0x27 && i + 1 < end {
                let c1 = p[i + 1]
                if c1 == 0x73 || c1 == 0x74 || c1 == 0x6D || c1 == 0x64 {  // s t m d
                    i += 2
                    ends.append(i)
                    continue
                }
                if i + 2 < end {
                    let c2 = p[i + 2]
                    if (c1 == 0x72 && c2 == 0x65) || (c1 == 0x76 && c2 == 0x65) || (c1 == 0x6C && c2 == 0x6C) {
                        i += 3  // re ve ll
                        ends.append(i)
                        continue
                    }
                }
            }
            // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: an optional ASCII space, then a run of one class.
            let j = (c0 == 0x20 && i + 1 < end) ? i + 1 : i
            let (cls, len) = scalar(p, j, table)
            if cls != .space {
                var k = j + len
                while k < end {
                    let (c, l) = scalar(p, k, table)
                    if c != cls { break }
                    k += l
                }
                ends.append(k)
                i = k
                continue
            }
            // `\s+(?!\S)|\s+`: a whitespace run; if a non-space follows, leave the run's last character to
            // start the next match (so " word" keeps its space), unless the run is one character long.
            var k = i
            var last = i
            while k < end {
                let (c, l) = scalar(p, k, table)
                if c != .space { break }
                last = k
                k += l
            }
            if k < end && last > i { k = last }
            ends.append(k)
            i = k
        }
    }

    /// `Digits(individual_digits: true)` then GPT-2 on each stretch between digits.
    static func splitDigitsThenGPT2(_ p: UnsafePointer<UInt8>, from start: Int, to end: Int,
                                    table: UnsafePointer<ScalarClass>, into ends: inout [Int]) {
        var stretch = start
        var i = start
        while i < end {
            let (c, l) = scalar(p, i, table)
            if c == .number {
                if i > stretch { splitGPT2(p, from: stretch, to: i, table: table, into: &ends) }
                ends.append(i + l)
                stretch = i + l
            }
            i += l
        }
        if end > stretch { splitGPT2(p, from: stretch, to: end, table: table, into: &ends) }
    }

    /// Splits `p[start..<end]` with `kind`, appending piece end offsets to `ends`.
    @inline(__always)
    static func split(_ kind: BPEPreTokenizer, _ p: UnsafePointer<UInt8>, from start: Int, to end: Int,
                      into ends: inout [Int]) {
        asciiClass.withUnsafeBufferPointer { table in
            switch kind {
            case .gpt2: splitGPT2(p, from: start, to: end, table: table.baseAddress!, into: &ends)
            case .digitsSplit: splitDigitsThenGPT2(p, from: start, to: end, table: table.baseAddress!, into: &ends)
            }
        }
    }
}

extension PreTokenizerScan {
    /// Calls `body(start, end)` for each word of `p[from..<to]`, pre-tokenizing in chunks of about 64 KiB so
    /// the offsets buffer `ends` stays small for huge inputs. Chunks are cut inside "x\ny" (x, y ASCII
    /// non-spaces) after the newline: the lone "\n" is its own match whether or not "y" follows (a longer
    /// whitespace run would not be: `\s+(?!\S)` leaves its last character to the next match only when a
    /// non-space follows), and only a U+0020 space joins the match after it.
    @inline(__always)
    static func forEachWord(_ kind: BPEPreTokenizer, _ p: UnsafePointer<UInt8>, from start: Int, to end: Int,
                            ends: inout [Int], _ body: (Int, Int) -> Void) {
        var s = start
        while s < end {
            var e = min(end, s + 65536)
            if e < end {
                while e < end && !(p[e - 1] == 0x0A && p[e] < 0x80 && asciiClass[Int(p[e])] != .space
                                     && p[e - 2] < 0x80 && asciiClass[Int(p[e - 2])] != .space) { e += 1 }
            }
            ends.removeAll(keepingCapacity: true)
            split(kind, p, from: s, to: e, into: &ends)
            var ws = s
            for we in ends {
                body(ws, we)
                ws = we
            }
            s = e
        }
    }
}

extension BPEPreTokenizer {
    /// The words `text` is cut into (special tokens are not treated specially here). For tests and inspection;
    /// the encoder works on offsets and never builds these strings.
    public func split(_ text: String) -> [String] {
        withUTF8Bytes(text) { p, n in
            var ends: [Int] = []
            PreTokenizerScan.split(self, p, from: 0, to: n, into: &ends)
            var out: [String] = []
            var s = 0
            for e in ends {
                out.append(String(decoding: UnsafeBufferPointer(start: p + s, count: e - s), as: UTF8.self))
                s = e
            }
            return out
        }
    }
}
