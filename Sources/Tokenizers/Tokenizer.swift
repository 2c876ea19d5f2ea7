// Tokenizer.swift: the `Tokenizer` protocol every tokenizer conforms to, the typed errors that loading
// tokenizer files throws, the special-token roles, and the longest-match special-token splitter shared by
// `ByteTokenizer` and `BPETokenizer`.
import Foundation

/// Turns text into token ids and back.
///
/// Conformers are immutable values (or classes whose only mutable state is an internal, locked cache), so one
/// tokenizer can be shared between threads.
///
/// Round-trip guarantee: for every `String` `s`, `decode(encode(s)) == s` (byte for byte), as long as the
/// vocabulary covers all 256 byte values, which both `ByteTokenizer` and trained `BPETokenizer`s do, and
/// the tokenizer does not normalize (an NFC `BPETokenizer` gives back the NFC form of `s`). A SentencePiece
/// `BPETokenizer` gives back a "▁" of `s` as a space, and may add or drop a space where a stretch of `s`
/// after an added token starts (as its references do).
public protocol Tokenizer: Sendable {
    /// Number of ids: every id the tokenizer can produce is in `0 ..< vocabSize`.
    var vocabSize: Int { get }
    /// Id prepended to a sequence by `encode(_:addBOS:addEOS:)`, if the tokenizer has one.
    var bosTokenID: Int32? { get }
    /// Whether the model's own tokenizer puts `bosTokenID` in front of a plain text, as Llama 3's does
    /// (transformers' `tokenizer(text)`, llama.cpp's tokenization with special tokens). Plain texts,
    /// prompts and completions are then encoded with it (`encode(_:addBOS:addEOS:)`); a chat template's
    /// output is not, since the template writes the BOS where the model wants one. False by default.
    var addsBOS: Bool { get }
    /// Id that ends a sequence (generation stops on it), if the tokenizer has one.
    var eosTokenID: Int32? { get }
    /// Id used to pad batches to one length, if the tokenizer has one.
    var padTokenID: Int32? { get }
    /// Id produced for input the vocabulary cannot represent, if the tokenizer has one.
    var unkTokenID: Int32? { get }

    /// Splits `text` into token ids. Special tokens written literally in `text` (e.g. `<|endoftext|>`) become
    /// their single id; they are matched before any other splitting, longest match first, and never split.
    func encode(_ text: String) -> [Int32]

    /// The ids of `text` where it follows the id `previous` in a sequence (nil: it starts one), so
    /// that pieces of a text encoded one after another give the ids of the whole text. Only a
    /// SentencePiece `BPETokenizer` differs from `encode(_:)`: it puts its space in front of the
    /// piece only where the whole text would have it (at the start, or after an added token).
    func encode(_ text: String, following previous: Int32?) -> [Int32]

    /// The text of `ids` where they follow the id `previous` (nil: they start the sequence). Only a
    /// SentencePiece `BPETokenizer` differs from `decode(_:)`: it drops the space it put in front of
    /// a text only at the start, so a continuation keeps its first space.
    func decode(_ ids: [Int32], following previous: Int32?) -> String

    /// Joins the byte sequences of `ids` and reads them as UTF-8 (invalid sequences, possible for an arbitrary id
    /// list, become U+FFFD). Special tokens decode to their text. Ids outside `0 ..< vocabSize` are skipped.
    func decode(_ ids: [Int32]) -> String

    /// The id of one vocabulary entry, spelled as the vocabulary spells it (for byte-level BPE that is the
    /// byte-level form, e.g. `"Ġthe"` for " the"), or the id of a special token given by its text.
    func tokenID(for token: String) -> Int32?

    /// The vocabulary spelling of `id` (the inverse of `tokenID(for:)`), or nil for an unknown id.
    func tokenString(for id: Int32) -> String?

    /// The model's chat template, read (`ChatTemplate`); nil when the tokenizer has none.
    /// - Throws: `ChatTemplateError` when the template's syntax cannot be read.
    var compiledChatTemplate: ChatTemplate? { get throws }

    /// Whether `id` is an added token (special or not: GGUF's control and user-defined tokens),
    /// matched whole before any splitting: the markers a chat template writes, such as the
    /// `<|im_end|>` or `<|eot_id|>` that ends a turn.
    func isAddedToken(_ id: Int32) -> Bool
}

extension Tokenizer {
    /// The text of each of `ids` as it reads in `decode(ids, following: previous)`: the pieces join
    /// to that text. A character spelled by several tokens (byte fallback, byte-level pieces of one
    /// character) goes to the first of them and the others get "". One pass for a `BPETokenizer` whose
    /// bytes are valid UTF-8 (`scalarEnds`); otherwise every prefix is decoded, for short texts.
    public func pieces(_ ids: [Int32], following previous: Int32?) -> [String] {
        let whole = Array(decode(ids, following: previous).unicodeScalars)
        let ends = (self as? BPETokenizer)?.scalarEnds(ids, following: previous)  // in one pass, where it can
        var out: [String] = [], pos = 0
        out.reserveCapacity(ids.count)
        for i in ids.indices {
            // A prefix that ends inside a character decodes it as one U+FFFD: the character's place.
            let end = i == ids.count - 1 ? whole.count
                : min(whole.count, max(pos, ends?[i] ?? decode(Array(ids[...i]), following: previous).unicodeScalars.count))
            var piece = String.UnicodeScalarView()
            piece.append(contentsOf: whole[pos..<end])
            out.append(String(piece))
            pos = end
        }
        return out
    }

    public var compiledChatTemplate: ChatTemplate? { nil }
    public var addsBOS: Bool { false }
    public func encode(_ text: String, following previous: Int32?) -> [Int32] { encode(text) }
    public func decode(_ ids: [Int32], following previous: Int32?) -> String { decode(ids) }

    /// The special tokens' texts by the names chat templates read them: `bos_token`, `eos_token`,
    /// `unk_token` and `pad_token`, those the tokenizer has (transformers passes its whole special
    /// tokens map; these four roles are the ones this library keeps).
    public var specialTokenTexts: [String: String] {
        var texts: [String: String] = [:]
        for (name, id) in [("bos_token", bosTokenID), ("eos_token", eosTokenID), ("unk_token", unkTokenID), ("pad_token", padTokenID)] {
            if let id { texts[name] = decode([id]) }
        }
        return texts
    }

    /// `encode(text)` with the BOS id in front and/or the EOS id at the end (each only if the tokenizer has one).
    public func encode(_ text: String, addBOS: Bool, addEOS: Bool = false) -> [Int32] {
        var ids: [Int32] = []
        if addBOS, let bos = bosTokenID { ids.append(bos) }
        ids += encode(text)
        if addEOS, let eos = eosTokenID { ids.append(eos) }
        return ids
    }
}

/// Which special tokens play which role. Each field is a token's text (e.g. `"<|endoftext|>"`), or nil.
public struct SpecialTokenRoles: Sendable, Equatable {
    /// Beginning-of-sequence token.
    public var bos: String?
    /// End-of-sequence token.
    public var eos: String?
    /// Padding token.
    public var pad: String?
    /// Unknown token.
    public var unk: String?

    /// Roles given by token text; any may be nil.
    public init(bos: String? = nil, eos: String? = nil, pad: String? = nil, unk: String? = nil) {
        self.bos = bos
        self.eos = eos
        self.pad = pad
        self.unk = unk
    }

    /// A guess from common names, used when a tokenizer file says nothing about roles (a `tokenizer.json`
    /// never does; `tokenizer_config.json` does): GPT-2's `<|endoftext|>` is BOS, EOS and UNK; ChatML's
    /// `<|im_start|>` / `<|im_end|>`; SentencePiece's `<s>`, `</s>`, `<pad>`, `<unk>`; Llama 3's
    /// `<|begin_of_text|>` / `<|end_of_text|>`. Only names present in `specialTokens` are chosen.
    public static func guess(from specialTokens: [String]) -> SpecialTokenRoles {
        let present = Set(specialTokens.map { Array($0.utf8) })
        func first(_ names: [String]) -> String? { names.first { present.contains(Array($0.utf8)) } }
        return SpecialTokenRoles(
            bos: first(["<|im_start|>", "<s>", "<|begin_of_text|>", "<bos>", "<|endoftext|>"]),
            eos: first(["<|im_end|>", "</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>"]),
            pad: first(["<pad>", "<|pad|>", "[PAD]"]),
            unk: first(["<unk>", "<|unk|>", "[UNK]", "<|endoftext|>"]))
    }
}

/// Errors from reading or validating tokenizer files. Each reads as a sentence naming the file.
public enum TokenizerError: Error, CustomStringConvertible, Equatable {
    /// The file could not be read at all.
    case unreadable(file: String, reason: String)
    /// The file was read but its content is wrong: `reason` says which field and what was expected.
    case malformed(file: String, reason: String)
    /// The file is well formed but uses a feature this implementation does not support.
    case unsupported(file: String, feature: String)
    /// A tokenizer could not be built from the given arguments (training, construction).
    case invalidArgument(String)

    public var description: String {
        switch self {
        case .unreadable(let file, let reason):
            return "cannot read tokenizer file \(file): \(reason)"
        case .malformed(let file, let reason):
            return "malformed tokenizer file \(file): \(reason)\nHINT: the file should be a Hugging Face tokenizer.json "
                + "with a BPE model (vocab + merges), e.g. one written by BPETokenizer.save(to:)."
        case .unsupported(let file, let feature):
            return "unsupported tokenizer file \(file): \(feature)\nHINT: byte-level BPE is supported: a ByteLevel "
                + "pre-tokenizer, alone, after Digits(individual_digits: true) or after Llama 3's or Qwen2's Split; no "
                + "normalizer or NFC; a post-processor that puts at most the BOS in front."
        case .invalidArgument(let message):
            return "invalid tokenizer argument: \(message)"
        }
    }
}

/// Finds added tokens in UTF-8 text as Hugging Face `tokenizers` does: leftmost match first, and of the
/// tokens that match there the longest; tokens with `normalized: false` are cut out of the whole text
/// first, then those with `normalized: true` out of the stretches between (its two passes). A
/// `singleWord` token matches only between non-word characters (`\w`), or the match is left as text;
/// `lstrip` / `rstrip` take the whitespace (`\s`) before / after the token into it, back to the
/// previous token at most. A 256-entry first-byte table keeps the scan at one load per byte.
struct SpecialTokenMatcher: Sendable {
    struct Entry: Sendable {
        let bytes: [UInt8], id: Int32
        let lstrip: Bool, rstrip: Bool, singleWord: Bool
    }
    /// One pass's tokens, longest first, and the bytes they start with.
    struct Group: Sendable {
        let tokens: [Entry]
        let firstByte: [Bool]
        init(_ tokens: [Entry]) {
            self.tokens = tokens.sorted { $0.bytes.count != $1.bytes.count ? $0.bytes.count > $1.bytes.count : $0.id < $1.id }
            var first = [Bool](repeating: false, count: 256)
            for t in self.tokens { first[Int(t.bytes[0])] = true }
            firstByte = first
        }
    }
    /// The passes in order (no empty one).
    private let passes: [Group]

    init(_ tokens: [AddedToken]) {
        let entries = tokens.filter { !$0.content.isEmpty }.map {
            (Entry(bytes: Array($0.content.utf8), id: $0.id, lstrip: $0.lstrip, rstrip: $0.rstrip, singleWord: $0.singleWord), $0.normalized)
        }
        passes = [entries.filter { !$0.1 }.map(\.0), entries.filter { $0.1 }.map(\.0)].filter { !$0.isEmpty }.map(Group.init)
    }

    var isEmpty: Bool { passes.isEmpty }

    /// The token of `group` starting at `p[i]`, if any (the longest).
    @inline(__always)
    private func match(_ group: Group, _ p: UnsafePointer<UInt8>, at i: Int, end: Int) -> Entry? {
        guard group.firstByte[Int(p[i])] else { return nil }
        for t in group.tokens where t.bytes.count <= end - i {
            let n = t.bytes.count
            if t.bytes.withUnsafeBufferPointer({ memcmp($0.baseAddress!, p + i, n) == 0 }) { return t }
        }
        return nil
    }

    /// Calls `plain(start, end)` for each stretch of text between added tokens and `special(id)` for each
    /// added token, in order. Empty stretches are skipped.
    @inline(__always)
    func split(_ p: UnsafePointer<UInt8>, count n: Int,
               plain: (Int, Int) -> Void, special: (Int32) -> Void) {
        switch passes.count {
        case 0: if n > 0 { plain(0, n) }
        case 1: split(passes[0], p, 0, n, plain: plain, special: special)
        default:
            split(passes[0], p, 0, n, plain: { s, e in split(passes[1], p, s, e, plain: plain, special: special) }, special: special)
        }
    }

    /// One pass over p[lo..<hi], the stretch being the whole text as far as the flags are concerned.
    private func split(_ group: Group, _ p: UnsafePointer<UInt8>, _ lo: Int, _ hi: Int,
                       plain: (Int, Int) -> Void, special: (Int32) -> Void) {
        var start = lo  // end of the last token taken
        var i = lo
        while i < hi {
            guard group.firstByte[Int(p[i])], let m = match(group, p, at: i, end: hi) else {
                i += 1
                continue
            }
            var (s, e) = (i, i + m.bytes.count)
            i = e
            if m.singleWord, (s > lo && UTF8Scalars.isWord(UTF8Scalars.before(p, s, lo)))
                || (e < hi && UTF8Scalars.isWord(UTF8Scalars.at(p, e, hi))) {
                continue  // inside a word: left as text
            }
            if m.lstrip { s = max(UTF8Scalars.whitespaceStart(p, before: s, lo), start) }
            if m.rstrip { e = UTF8Scalars.whitespaceEnd(p, from: e, hi) }
            if s > start { plain(start, s) }
            special(m.id)
            // The scan goes on from the match's own end, as `tokenizers` does: a token that starts in
            // whitespace an rstrip took is matched again (that text then counts twice, as there).
            start = e
        }
        if hi > start { plain(start, hi) }
    }
}

/// Unicode scalars read from valid UTF-8 bytes, forwards and backwards, for the added-token flags.
enum UTF8Scalars {
    /// The scalar starting at p[i] (i < hi).
    static func at(_ p: UnsafePointer<UInt8>, _ i: Int, _ hi: Int) -> (scalar: Unicode.Scalar, length: Int) {
        let b0 = UInt32(p[i])
        let n = b0 < 0x80 ? 1 : b0 < 0xE0 ? 2 : b0 < 0xF0 ? 3 : 4
        guard i + n <= hi else { return (Unicode.Scalar(0xFFFD)!, 1) }
        guard n > 1 else { return (Unicode.Scalar(UInt8(b0)), 1) }
        var v = b0 & (0xFF >> (n + 1))
        for k in 1..<n { v = v << 6 | UInt32(p[i + k] & 0x3F) }
        return (Unicode.Scalar(v) ?? Unicode.Scalar(0xFFFD)!, n)
    }

    /// The scalar ending just before p[i] (i > lo).
    static func before(_ p: UnsafePointer<UInt8>, _ i: Int, _ lo: Int) -> (scalar: Unicode.Scalar, length: Int) {
        var s = i - 1
        while s > lo && p[s] & 0xC0 == 0x80 { s -= 1 }
        return at(p, s, i)
    }

    /// Regex `\w`: alphabetic, marks, decimal digits, connector punctuation, join controls.
    static func isWord(_ c: (scalar: Unicode.Scalar, length: Int)) -> Bool {
        let props = c.scalar.properties
        switch props.generalCategory {
        case .nonspacingMark, .spacingMark, .enclosingMark, .decimalNumber, .connectorPunctuation: return true
        default: return props.isAlphabetic || props.isJoinControl
        }
    }

    /// Start of the run of whitespace (`\s`, Unicode White_Space) that ends at i, not before lo.
    static func whitespaceStart(_ p: UnsafePointer<UInt8>, before i: Int, _ lo: Int) -> Int {
        var s = i
        while s > lo {
            let c = before(p, s, lo)
            guard c.scalar.properties.isWhitespace else { break }
            s -= c.length
        }
        return s
    }

    /// End of the run of whitespace that starts at i, not after hi.
    static func whitespaceEnd(_ p: UnsafePointer<UInt8>, from i: Int, _ hi: Int) -> Int {
        var e = i
        while e < hi {
            let c = at(p, e, hi)
            guard c.scalar.properties.isWhitespace else { break }
            e += c.length
        }
        return e
    }
}

/// Runs `body` over the UTF-8 bytes of `text` without copying when the string is stored contiguously.
@inline(__always)
func withUTF8Bytes<R>(_ text: String, _ body: (UnsafePointer<UInt8>, Int) -> R) -> R {
    if let r = text.utf8.withContiguousStorageIfAvailable({ buf -> R in
        // A zero-length buffer may have a nil base address; give `body` a valid pointer either way.
        guard let base = buf.baseAddress else {
            var dummy: UInt8 = 0
            return withUnsafePointer(to: &dummy) { body($0, 0) }
        }
        return body(base, buf.count)
    }) {
        return r
    }
    let bytes = Array(text.utf8)
    return bytes.withUnsafeBufferPointer { buf in
        guard let base = buf.baseAddress else {
            var dummy: UInt8 = 0
            return withUnsafePointer(to: &dummy) { body($0, 0) }
        }
        return body(base, buf.count)
    }
}
