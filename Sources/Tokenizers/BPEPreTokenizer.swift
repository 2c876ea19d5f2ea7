// BPEPreTokenizer.swift: splits text into the pieces ("words") that BPE merges never cross: GPT-2's regex
// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`, hand-written over UTF-8 (an
// NSRegularExpression is ~50x slower), SmolLM2's variant that first isolates every digit, and the regex
// of Llama 3 and Qwen2.
import Foundation

/// How text is cut into words before BPE: the kinds Hugging Face `tokenizer.json` files use for byte-level BPE.
public enum BPEPreTokenizer: String, Sendable, CaseIterable {
    /// `ByteLevel(add_prefix_space: false, use_regex: true)`: GPT-2's regex, as in GPT-2, RoBERTa, Qwen-free
    /// byte-level BPEs. `"year 2024"` → `"year"`, `" 2024"`.
    case gpt2
    /// `Sequence[Digits(individual_digits: true), ByteLevel(use_regex: true)]`, llama.cpp's `pre = smollm`
    /// (SmolLM2, StarCoder): every numeric character becomes its own word first, then GPT-2's regex splits each
    /// stretch between them. `"year 2024"` → `"year"`, `" "`, `"2"`, `"0"`, `"2"`, `"4"`.
    case digitsSplit
    /// `Sequence[Split(Regex(…), "Isolated"), ByteLevel(use_regex: false)]` with Llama 3's regex,
    /// llama.cpp's `pre = llama-bpe`: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
    /// ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+` (contractions in any ASCII case, as llama.cpp
    /// reads them; `tokenizers`' Unicode case folding also takes `'ſ` (U+017F) as `'s`, a difference
    /// this one character makes). `"year 2024"` → `"year"`, `" "`, `"202"`, `"4"`.
    case llama3
    /// The same with `\p{N}` one numeric character at a time: Qwen2 and Qwen2.5 (`pre = qwen2`).
    case qwen2

    /// The regex of the `Split` pre-tokenizer in a `tokenizer.json` of this kind (nil: ByteLevel's own).
    public var splitPattern: String? {
        switch self {
        case .gpt2, .digitsSplit: nil
        case .llama3: #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
        case .qwen2: #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
        }
    }
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

    /// Appends to `ends` the end offset of each match of Llama 3's regex (Qwen2's with `maxDigits` 1)
    /// in `p[start..<end]`; the alternatives are tried in order at each position, as the regex does.
    static func splitLlama3(_ p: UnsafePointer<UInt8>, from start: Int, to end: Int, maxDigits: Int,
                            table: UnsafePointer<ScalarClass>, into ends: inout [Int]) {
        @inline(__always) func isNewline(_ k: Int) -> Bool { p[k] == 0x0A || p[k] == 0x0D }
        @inline(__always) func lower(_ k: Int) -> UInt8 { p[k] >= 0x41 && p[k] <= 0x5A ? p[k] | 0x20 : p[k] }
        var i = start
        while i < end {
            // (?i:'s|'t|'re|'ve|'m|'ll|'d), ASCII letters in either case.
            if p[i] == 0x27 && i + 1 < end {
                let c1 = lower(i + 1)
                if c1 == 0x73 || c1 == 0x74 || c1 == 0x6D || c1 == 0x64 {  // s t m d
                    i += 2
                    ends.append(i)
                    continue
                }
                if i + 2 < end {
                    let c2 = lower(i + 2)
                    if (c1 == 0x72 && c2 == 0x65) || (c1 == 0x76 && c2 == 0x65) || (c1 == 0x6C && c2 == 0x6C) {  // re ve ll
                        i += 3
                        ends.append(i)
                        continue
                    }
                }
            }
            let (cls, len) = scalar(p, i, table)
            // [^\r\n\p{L}\p{N}]?\p{L}+: letters, after one character that is no letter, number or newline.
            var letters = cls == .letter ? i : -1
            if letters < 0 && (cls == .other || (cls == .space && !isNewline(i))) && i + len < end && scalar(p, i + len, table).0 == .letter {
                letters = i + len
            }
            if letters >= 0 {
                var k = letters
                while k < end {
                    let (c, l) = scalar(p, k, table)
                    if c != .letter { break }
                    k += l
                }
                ends.append(k)
                i = k
                continue
            }
            // \p{N}{1,maxDigits}
            if cls == .number {
                var k = i + len, n = 1
                while n < maxDigits && k < end {
                    let (c, l) = scalar(p, k, table)
                    if c != .number { break }
                    k += l
                    n += 1
                }
                ends.append(k)
                i = k
                continue
            }
            // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
            let j = (p[i] == 0x20 && i + 1 < end) ? i + 1 : i
            if scalar(p, j, table).0 == .other {
                var k = j
                while k < end {
                    let (c, l) = scalar(p, k, table)
                    if c != .other { break }
                    k += l
                }
                while k < end && isNewline(k) { k += 1 }
                ends.append(k)
                i = k
                continue
            }
            // A whitespace run: `\s*[\r\n]+` takes it through its last newline; else `\s+(?!\S)|\s+`
            // leaves its last character to the next match when a non-space follows (not a run of one).
            var k = i, last = i, lastNewline = -1
            while k < end {
                let (c, l) = scalar(p, k, table)
                if c != .space { break }
                if isNewline(k) { lastNewline = k }
                last = k
                k += l
            }
            if lastNewline >= 0 {
                k = lastNewline + 1
            } else if k < end && last > i {
                k = last
            }
            ends.append(k)
            i = k
        }
    }

    /// Splits `p[start..<end]` with `kind`, appending piece end offsets to `ends`.
    @inline(__always)
    static func split(_ kind: BPEPreTokenizer, _ p: UnsafePointer<UInt8>, from start: Int, to end: Int,
                      into ends: inout [Int]) {
        asciiClass.withUnsafeBufferPointer { table in
            switch kind {
            case .gpt2: splitGPT2(p, from: start, to: end, table: table.baseAddress!, into: &ends)
            case .digitsSplit: splitDigitsThenGPT2(p, from: start, to: end, table: table.baseAddress!, into: &ends)
            case .llama3: splitLlama3(p, from: start, to: end, maxDigits: 3, table: table.baseAddress!, into: &ends)
            case .qwen2: splitLlama3(p, from: start, to: end, maxDigits: 1, table: table.baseAddress!, into: &ends)
            }
        }
    }
}

extension PreTokenizerScan {
    /// Calls `body(start, end)` for each word of `p[from..<to]`, pre-tokenizing in chunks of about 64 KiB so
    /// the offsets buffer `ends` stays small for huge inputs. Chunks are cut inside "x\ny" (x, y ASCII
    /// non-spaces) after the newline: the lone "\n" is its own match whether or not "y" follows (a longer
    /// whitespace run would not be: `\s+(?!\S)` leaves its last character to the next match only when a
    /// non-space follows), and only a U+0020 space joins the match after it. The same cut holds for
    /// Llama 3's and Qwen2's regexes: a match ends after "\n" (`\s*[\r\n]+`, or punctuation's
    /// `[\r\n]*`), and a newline is never the optional character before letters.
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
