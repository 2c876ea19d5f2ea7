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
/// vocabulary covers all 256 byte values, which both `ByteTokenizer` and trained `BPETokenizer`s do.
public protocol Tokenizer: Sendable {
    /// Number of ids: every id the tokenizer can produce is in `0 ..< vocabSize`.
    var vocabSize: Int { get }
    /// Id prepended to a sequence by `encode(_:addBOS:addEOS:)`, if the tokenizer has one.
    var bosTokenID: Int32? { get }
    /// Id that ends a sequence (generation stops on it), if the tokenizer has one.
    var eosTokenID: Int32? { get }
    /// Id used to pad batches to one length, if the tokenizer has one.
    var padTokenID: Int32? { get }
    /// Id produced for input the vocabulary cannot represent, if the tokenizer has one.
    var unkTokenID: Int32? { get }

    /// Splits `text` into token ids. Special tokens written literally in `text` (e.g. `<|endoftext|>`) become
    /// their single id; they are matched before any other splitting, longest match first, and never split.
    func encode(_ text: String) -> [Int32]

    /// Joins the byte sequences of `ids` and reads them as UTF-8 (invalid sequences, possible for an arbitrary id
    /// list, become U+FFFD). Special tokens decode to their text. Ids outside `0 ..< vocabSize` are skipped.
    func decode(_ ids: [Int32]) -> String

    /// The id of one vocabulary entry, spelled as the vocabulary spells it (for byte-level BPE that is the
    /// byte-level form, e.g. `"Ġthe"` for " the"), or the id of a special token given by its text.
    func tokenID(for token: String) -> Int32?

    /// The vocabulary spelling of `id` (the inverse of `tokenID(for:)`), or nil for an unknown id.
    func tokenString(for id: Int32) -> String?
}

extension Tokenizer {
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
            return "unsupported tokenizer file \(file): \(feature)\nHINT: byte-level BPE with a ByteLevel "
                + "pre-tokenizer (optionally after Digits(individual_digits: true)) and no normalizer is supported."
        case .invalidArgument(let message):
            return "invalid tokenizer argument: \(message)"
        }
    }
}

/// Finds special tokens in UTF-8 text: leftmost match first, and of the tokens that match there the longest
/// (Hugging Face's added-vocabulary rule). A 256-entry first-byte table keeps the scan at one load per byte.
struct SpecialTokenMatcher: Sendable {
    /// (UTF-8 bytes, id), longest first.
    private(set) var tokens: [(bytes: [UInt8], id: Int32)]
    private var firstByte: [Bool]

    init(_ tokens: [(content: String, id: Int32)]) {
        self.tokens = tokens.filter { !$0.content.isEmpty }.map { (Array($0.content.utf8), $0.id) }
            .sorted { $0.bytes.count != $1.bytes.count ? $0.bytes.count > $1.bytes.count : $0.id < $1.id }
        firstByte = [Bool](repeating: false, count: 256)
        for t in self.tokens { firstByte[Int(t.bytes[0])] = true }
    }

    var isEmpty: Bool { tokens.isEmpty }

    /// The special token starting at `p[i]`, if any, as (id, byte length).
    @inline(__always)
    func match(_ p: UnsafePointer<UInt8>, at i: Int, end: Int) -> (id: Int32, length: Int)? {
        guard firstByte[Int(p[i])] else { return nil }
        for t in tokens where t.bytes.count <= end - i {
            let n = t.bytes.count
            let same = t.bytes.withUnsafeBufferPointer { memcmp($0.baseAddress!, p + i, n) == 0 }
            if same { return (t.id, n) }
        }
        return nil
    }

    /// Calls `plain(start, end)` for each stretch of text between special tokens and `special(id)` for each
    /// special token, in order. Empty stretches are skipped.
    @inline(__always)
    func split(_ p: UnsafePointer<UInt8>, count n: Int,
               plain: (Int, Int) -> Void, special: (Int32) -> Void) {
        if tokens.isEmpty {
            if n > 0 { plain(0, n) }
            return
        }
        var start = 0
        var i = 0
        while i < n {
            if firstByte[Int(p[i])], let m = match(p, at: i, end: n) {
                if i > start { plain(start, i) }
                special(m.id)
                i += m.length
                start = i
            } else {
                i += 1
            }
        }
        if n > start { plain(start, n) }
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
