// BPETokenizer.swift: byte-level BPE as GPT-2 and Hugging Face `tokenizers` apply it: special tokens split out
// first (longest match), pre-tokenization (BPEPreTokenizer.swift), then merges by rank inside each word, with a
// per-word cache; and SentencePiece-style BPE (Llama 2's), merged from characters over each whole stretch.
// Training (byte-level only) is in BPETrainer.swift, tokenizer.json in BPETokenizer+JSON.swift.
import Foundation

/// A token the tokenizer matches in raw text before anything else and never splits (Hugging Face's
/// `added_tokens`). Special ones (`special == true`) are control tokens such as `<|endoftext|>`.
public struct AddedToken: Sendable, Equatable {
    /// The token's id.
    public var id: Int32
    /// Its text, matched literally.
    public var content: String
    /// Whether it is a control token (skipped by `decode(_:skipSpecialTokens: true)`).
    public var special: Bool
    /// Whether it takes the whitespace before it (`lstrip`) or after it (`rstrip`) into itself.
    public var lstrip: Bool, rstrip: Bool
    /// Whether it matches only as a whole word (`single_word`: no word character on either side).
    public var singleWord: Bool
    /// Whether it is matched in a second pass, between the tokens with `normalized` false
    /// (`tokenizers` matches those on the normalized text; SwiftPEFT matches them on the text as
    /// given, which differs only for an NFC tokenizer's added token that NFC would change).
    public var normalized: Bool

    public init(id: Int32, content: String, special: Bool = true, lstrip: Bool = false, rstrip: Bool = false,
                singleWord: Bool = false, normalized: Bool? = nil) {
        self.id = id
        self.content = content
        self.special = special
        (self.lstrip, self.rstrip, self.singleWord) = (lstrip, rstrip, singleWord)
        self.normalized = normalized ?? !special  // Python AddedToken's default
    }
}

/// Byte-level BPE (GPT-2 / Hugging Face `"type": "BPE"` with a `ByteLevel` pre-tokenizer and decoder), or
/// with `sentencePiece` the byte-fallback BPE of SentencePiece vocabularies (Llama 2, Mistral), whose
/// encoding is described there.
///
/// Encoding: (1) added tokens are cut out of the text, leftmost then longest match; (2) each stretch between
/// them is split into words by `preTokenizer`; (3) each word's UTF-8 bytes start as one token per byte and the
/// adjacent pair with the lowest merge rank is merged until no pair has a merge (leftmost first among equal
/// ranks). Results of (3) are cached per distinct word, so running text costs about one hash lookup per word.
///
/// The class is immutable except for that cache, which is guarded by a lock; a thread that finds the lock
/// taken encodes with a private cache instead of waiting, so one tokenizer can serve many threads.
public final class BPETokenizer: Tokenizer, @unchecked Sendable {
    /// How text is cut into words before merging.
    public let preTokenizer: BPEPreTokenizer
    /// The merges in rank order (rank 0 first), as pairs of token ids.
    public let merges: [(Int32, Int32)]
    /// Tokens matched before pre-tokenization, in id order.
    public let addedTokens: [AddedToken]
    /// Hugging Face's `ignore_merges`: a word that is itself in the vocabulary becomes that one token.
    public let ignoreMerges: Bool
    /// SentencePiece-style BPE (Llama 2's, Mistral's, TinyLlama's; llama.cpp's "llama" tokenizer
    /// model) instead of byte-level: tokens are spelled with "▁" for a space, the text between added
    /// tokens is merged whole from its characters (no pre-tokenizer) after a space put in front
    /// (`spacePrefix`), a character the vocabulary lacks becomes its bytes' `<0xXX>` tokens, and
    /// decoding drops that first space again.
    public let sentencePiece: Bool
    /// SentencePiece: where a space goes in front of the text (llama.cpp's `add_space_prefix`).
    public let spacePrefix: SpacePrefix
    /// SentencePiece: the `<0xXX>` token of each byte, or -1.
    let byteTokenIDs: [Int32]
    /// SentencePiece: no piece has a space after other text (SentencePiece's `split_by_whitespace`),
    /// so a stretch is merged word by word (a word: its spaces, then the rest up to the next space),
    /// with the per-word cache, and gives the ids merging it whole would.
    let splitsAtSpaces: Bool
    /// SentencePiece: consecutive unknown characters become one unknown token (`fuse_unk`). Set it
    /// before the tokenizer is shared between threads.
    public var fusesUnknown = false
    /// SentencePiece: each id's piece score (GGUF's `tokenizer.ggml.scores`), kept for writing GGUF;
    /// nil when the tokenizer came from a tokenizer.json, which has none.
    public var pieceScores: [Float]?
    public let vocabSize: Int
    public let bosTokenID: Int32?
    public let eosTokenID: Int32?
    public let padTokenID: Int32?
    public let unkTokenID: Int32?
    /// The role names behind the four ids above.
    public let roles: SpecialTokenRoles
    /// The id a byte missing from the vocabulary becomes (the BPE model's `unk_token`, as in Hugging
    /// Face's `tokenizers`); nil: such bytes are dropped. A tokenizer built here starts with the UNK
    /// role's id where some byte is missing (nil with all 256); `load(json:)` takes the file's
    /// `model.unk_token`. Set it before the tokenizer is shared.
    public var unknownByteID: Int32?
    /// The model's chat template (Jinja, as `tokenizer_config.json` or GGUF's `tokenizer.chat_template`
    /// hold it); kept and written back, and run by `compiledChatTemplate`. Set it before the
    /// tokenizer is shared between threads.
    public var chatTemplate: String? {
        didSet { compiled = chatTemplate.map(Self.compile) }
    }
    /// The template read once, when it is set.
    private var compiled: Result<ChatTemplate, Error>?
    /// Text between added tokens is put in Unicode normalization form C before it is split
    /// (`tokenizer.json`'s `"normalizer": {"type": "NFC"}`, as Qwen2's). Set it before the tokenizer
    /// is shared between threads. Decoding then gives the NFC form of a text, not the text itself.
    public var normalizesToNFC = false
    /// The BOS id goes in front of every plain text (see `Tokenizer.addsBOS`): read from a
    /// `tokenizer.json` post-processor that puts the BOS token first (Llama 3's) or GGUF's
    /// `tokenizer.ggml.add_bos_token`, and written back to both. Set it before the tokenizer is shared
    /// between threads; it has no effect without a BOS role.
    public var addsBOS = false

    public var compiledChatTemplate: ChatTemplate? {
        get throws { try compiled?.get() }
    }

    private static func compile(_ source: String) -> Result<ChatTemplate, Error> { Result { try ChatTemplate(source) } }

    /// The ids of the added tokens marked special, and of every added token.
    let specialIDs: Set<Int32>, addedIDs: Set<Int32>
    /// Bytes of id k are `idBytes[idOffsets[k] ..< idOffsets[k + 1]]` (added tokens: their UTF-8 content).
    let idBytes: [UInt8]
    let idOffsets: [Int32]
    /// Whether id k is in the model vocabulary (false for holes and for added tokens only in `added_tokens`).
    let inModelVocab: [Bool]
    /// Whether id k is in the model vocabulary or an added token.
    let isKnown: [Bool]
    /// Model vocabulary: token bytes → id.
    let vocab: ByteStringTable
    let pairs: PairTable
    /// The id of the one-byte token for each byte, or -1.
    let byteToID: [Int32]
    let matcher: SpecialTokenMatcher

    private let cacheLock = NSLock()
    private var cache = WordCache()

    /// Builds a tokenizer from its parts.
    ///
    /// - Parameters:
    ///   - vocab: the model vocabulary by id: `vocab[k]` is the byte string of id k, or nil for an unused id.
    ///   - merges: merge pairs in rank order; both halves and their concatenation must be in `vocab`.
    ///   - addedTokens: tokens matched before pre-tokenization; their ids may be in `vocab` or beyond it.
    ///   - roles: which added tokens are BOS/EOS/PAD/UNK (by content).
    /// - Throws: `TokenizerError.invalidArgument` naming the first inconsistency.
    /// - SentencePiece (`sentencePiece` given): `vocab` holds each piece's text with "▁" as a space,
    ///   `byteTokens` the `<0xXX>` tokens (id → byte), and `mergeRanks` each merge's rank (merges of
    ///   equal rank go leftmost first, as llama.cpp merges pieces of equal score).
    public init(vocab: [[UInt8]?], merges: [(Int32, Int32)], addedTokens: [AddedToken] = [],
                preTokenizer: BPEPreTokenizer = .gpt2, ignoreMerges: Bool = false,
                roles: SpecialTokenRoles = SpecialTokenRoles(), sentencePiece: SpacePrefix? = nil,
                byteTokens: [Int32: UInt8] = [:], mergeRanks: [Int]? = nil) throws {
        var size = vocab.count
        for t in addedTokens {
            guard t.id >= 0 else {
                throw TokenizerError.invalidArgument("added token \(t.content.debugDescription) has negative id \(t.id)")
            }
            size = max(size, Int(t.id) + 1)
        }
        var table = ByteStringTable(capacity: vocab.count)
        var bytesByID = [[UInt8]?](repeating: nil, count: size)
        var inModel = [Bool](repeating: false, count: size)
        for (k, bytes) in vocab.enumerated() {
            guard let bytes else { continue }
            guard table.find(bytes) < 0 else {
                let other = table.values[table.find(bytes)]
                let spelling = ByteLevelAlphabet.encode(bytes).debugDescription
                throw TokenizerError.invalidArgument("ids \(other) and \(k) are the same token \(spelling)")
            }
            table.insert(bytes, value: Int32(k))
            bytesByID[k] = bytes
            inModel[k] = true
        }
        var byteIDs = [Int32](repeating: -1, count: 256)
        for (id, byte) in byteTokens.sorted(by: { $0.key < $1.key }) {
            guard id >= 0, Int(id) < size, bytesByID[Int(id)] == nil else {
                throw TokenizerError.invalidArgument("byte token <0x\(String(format: "%02X", byte))> has id \(id), which is outside the vocabulary or taken")
            }
            if byteIDs[Int(byte)] < 0 { byteIDs[Int(byte)] = id }
            bytesByID[Int(id)] = [byte]
            inModel[Int(id)] = true
        }
        for t in addedTokens { bytesByID[Int(t.id)] = Array(t.content.utf8) }
        var offsets: [Int32] = [0]
        var arena: [UInt8] = []
        offsets.reserveCapacity(size + 1)
        for b in bytesByID {
            if let b { arena += b }
            offsets.append(Int32(arena.count))
        }
        var pairTable = PairTable(capacity: merges.count)
        for (rank, (a, b)) in merges.enumerated() {
            guard a >= 0, Int(a) < vocab.count, let ba = vocab[Int(a)],
                  b >= 0, Int(b) < vocab.count, let bb = vocab[Int(b)] else {
                throw TokenizerError.invalidArgument("merge \(rank) (\(a), \(b)) names an id that is not in the vocabulary")
            }
            let merged = table.find(ba + bb)
            guard merged >= 0 else {
                let spelling = ByteLevelAlphabet.encode(ba + bb).debugDescription
                throw TokenizerError.invalidArgument("merge \(rank) makes \(spelling), which is not in the vocabulary")
            }
            pairTable.insert(a, b, packed: UInt64(mergeRanks?[rank] ?? rank) << 32 | UInt64(UInt32(table.values[merged])))
        }
        var b2id = [Int32](repeating: -1, count: 256)
        for b in 0 ..< 256 {
            let e = table.find([UInt8(b)])
            if e >= 0 { b2id[b] = table.values[e] }
        }
        if let ranks = mergeRanks, ranks.count != merges.count {
            throw TokenizerError.invalidArgument("\(ranks.count) merge ranks for \(merges.count) merges")
        }
        self.preTokenizer = preTokenizer
        self.merges = merges
        self.sentencePiece = sentencePiece != nil
        self.spacePrefix = sentencePiece ?? .none
        self.byteTokenIDs = byteIDs
        self.splitsAtSpaces = sentencePiece != nil && !vocab.contains { piece in
            guard let piece, let first = piece.firstIndex(where: { $0 != 0x20 }) else { return false }
            return piece[first...].contains(0x20)
        }
        self.addedTokens = addedTokens.sorted { $0.id < $1.id }
        specialIDs = Set(addedTokens.filter(\.special).map(\.id))
        addedIDs = Set(addedTokens.map(\.id))
        self.ignoreMerges = ignoreMerges
        self.vocabSize = size
        self.idBytes = arena
        self.idOffsets = offsets
        self.inModelVocab = inModel
        var known = inModel
        for t in addedTokens { known[Int(t.id)] = true }
        self.isKnown = known
        self.vocab = table
        self.pairs = pairTable
        self.byteToID = b2id
        self.matcher = SpecialTokenMatcher(addedTokens)
        (bosTokenID, eosTokenID, padTokenID, unkTokenID) = try Self.roleIDs(roles, addedTokens)
        self.roles = roles
        unknownByteID = (sentencePiece != nil ? byteIDs : byteToID).contains(-1) ? unkTokenID : nil  // with all 256 bytes, none is unknown
    }

    /// The same tokenizer with other BOS/EOS/PAD/UNK roles (by added-token content), `addsBOS` kept (it
    /// then adds the new BOS). Cheap: the tables are shared.
    public func withRoles(_ roles: SpecialTokenRoles) throws -> BPETokenizer {
        try BPETokenizer(copying: self, roles: roles)
    }

    /// The same tokenizer with another chat template (nil: none). Cheap: the tables are shared.
    public func withChatTemplate(_ template: String?) -> BPETokenizer {
        let t = try! BPETokenizer(copying: self, roles: nil)  // nil roles: cannot throw
        t.chatTemplate = template
        return t
    }

    /// A copy sharing `o`'s tables, with other `roles`, or with `o`'s ids when they are nil.
    private init(copying o: BPETokenizer, roles: SpecialTokenRoles?) throws {
        preTokenizer = o.preTokenizer
        merges = o.merges
        addedTokens = o.addedTokens
        specialIDs = o.specialIDs
        addedIDs = o.addedIDs
        ignoreMerges = o.ignoreMerges
        sentencePiece = o.sentencePiece
        spacePrefix = o.spacePrefix
        byteTokenIDs = o.byteTokenIDs
        splitsAtSpaces = o.splitsAtSpaces
        pieceScores = o.pieceScores
        fusesUnknown = o.fusesUnknown
        vocabSize = o.vocabSize
        idBytes = o.idBytes
        idOffsets = o.idOffsets
        inModelVocab = o.inModelVocab
        isKnown = o.isKnown
        vocab = o.vocab
        pairs = o.pairs
        byteToID = o.byteToID
        matcher = o.matcher
        (bosTokenID, eosTokenID, padTokenID, unkTokenID) = try roles.map { try Self.roleIDs($0, o.addedTokens) }
            ?? (o.bosTokenID, o.eosTokenID, o.padTokenID, o.unkTokenID)
        self.roles = roles ?? o.roles
        unknownByteID = o.unknownByteID  // the model's, not a role
        chatTemplate = o.chatTemplate  // (no didSet in an initializer)
        compiled = o.compiled
        normalizesToNFC = o.normalizesToNFC
        addsBOS = o.addsBOS
    }

    private static func roleIDs(_ roles: SpecialTokenRoles, _ added: [AddedToken]) throws
        -> (Int32?, Int32?, Int32?, Int32?) {
        func id(_ name: String?) throws -> Int32? {
            guard let name else { return nil }
            let bytes = Array(name.utf8)
            if let t = added.first(where: { Array($0.content.utf8) == bytes }) { return t.id }
            throw TokenizerError.invalidArgument(
                "special token role \(name.debugDescription) is not an added token; added tokens: \(added.map(\.content))")
        }
        return (try id(roles.bos), try id(roles.eos), try id(roles.pad), try id(roles.unk))
    }

    /// Number of merges.
    public var mergeCount: Int { merges.count }

    // MARK: - Encoding

    public func encode(_ text: String) -> [Int32] {
        withUTF8Bytes(text) { p, n in
            var out = [Int32]()
            out.reserveCapacity(n / 3 + 16)
            if sentencePiece {
                withCache { encodeSentencePiece(p, n, into: &out, first: .atStart, cache: &$0) }
                return out
            }
            if cacheLock.try() {
                defer { cacheLock.unlock() }
                encodeBytes(p, n, into: &out, cache: &cache)
            } else {
                var local = WordCache()
                encodeBytes(p, n, into: &out, cache: &local)
            }
            return out
        }
    }

    /// Encodes the UTF-8 bytes `p[0..<n]`, appending ids to `out`. `p` must be valid UTF-8.
    func encodeBytes(_ p: UnsafePointer<UInt8>, _ n: Int, into out: inout [Int32], cache: inout WordCache) {
        var ends: [Int] = []
        ends.reserveCapacity(256)
        var scratch = BPEScratch()
        matcher.split(p, count: n, plain: { start, end in
            // ASCII text is its own NFC: only a stretch with other bytes is normalized.
            if normalizesToNFC, (start..<end).contains(where: { p[$0] >= 0x80 }) {
                let text = String(decoding: UnsafeBufferPointer(start: p + start, count: end - start), as: UTF8.self)
                withUTF8Bytes(text.precomposedStringWithCanonicalMapping) { q, m in
                    PreTokenizerScan.forEachWord(preTokenizer, q, from: 0, to: m, ends: &ends) { ws, we in
                        encodeWord(q + ws, we - ws, into: &out, cache: &cache, scratch: &scratch)
                    }
                }
                return
            }
            PreTokenizerScan.forEachWord(preTokenizer, p, from: start, to: end, ends: &ends) { ws, we in
                encodeWord(p + ws, we - ws, into: &out, cache: &cache, scratch: &scratch)
            }
        }, special: { out.append($0) })
    }

    /// Runs `body` with the shared word cache, or with a private one when another thread holds it.
    func withCache(_ body: (inout WordCache) -> Void) {
        if cacheLock.try() {
            defer { cacheLock.unlock() }
            body(&cache)
        } else {
            var local = WordCache()
            body(&local)
        }
    }

    /// SentencePiece: each stretch between added tokens, after the space put in front of it, is merged
    /// whole from its characters (a character the vocabulary lacks: its bytes' tokens), as llama.cpp's
    /// "llama" tokenizer and Hugging Face's byte-fallback BPE do; word by word with the cache where
    /// that gives the same ids (`splitsAtSpaces`).
    func encodeSentencePiece(_ p: UnsafePointer<UInt8>, _ n: Int, into out: inout [Int32], first: StretchStart, cache: inout WordCache) {
        var text: [UInt8] = [], symbols: [Int32] = []
        matcher.split(p, count: n, plain: { start, end in
            guard end > start else { return }
            // A "▁" in the text is a space, as both references read it (they write spaces as "▁").
            text = Array(UnsafeBufferPointer(start: p + start, count: end - start)).replacingSpaceMarks()
            let spaceFirst = text[0] == 0x20
            let place = start == 0 ? first : .afterAddedToken  // a later stretch follows an added token
            switch spacePrefix {
            case .none: break
            case .first: if place == .atStart && !spaceFirst { text.insert(0x20, at: 0) }
            case .always: if place != .continuing && !spaceFirst { text.insert(0x20, at: 0) }
            case .everyStretch: if place != .continuing { text.insert(0x20, at: 0) }
            }
            text.withUnsafeBufferPointer { whole in
              // Word by word where no piece crosses a word's start (see `splitsAtSpaces`), else whole.
              var from = 0
              while from < whole.count {
                var to = whole.count
                if splitsAtSpaces {
                    to = from + 1
                    while to < whole.count && !(whole[to] == 0x20 && whole[to - 1] != 0x20) { to += 1 }
                }
                let t = UnsafeBufferPointer(rebasing: whole[from..<to])
                let cacheable = t.count <= WordCache.maxWordBytes
                let h = hashBytes(t.baseAddress!, t.count)
                if cacheable && cache.lookup(t.baseAddress!, t.count, hash: h, into: &out) { from = to; continue }
                symbols.removeAll(keepingCapacity: true)
                var i = 0
                while i < t.count {
                    let lead = t[i]
                    let len = lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4
                    let e = vocab.find(t.baseAddress! + i, min(len, t.count - i))
                    let end = min(i + len, t.count)
                    if e >= 0 {
                        symbols.append(vocab.values[e])
                    } else if (i..<end).allSatisfy({ byteTokenIDs[Int(t[$0])] >= 0 }) {
                        for k in i..<end { symbols.append(byteTokenIDs[Int(t[k])]) }
                    } else if let unk = unknownByteID, !(fusesUnknown && symbols.last == unk) {
                        symbols.append(unk)  // one per character, as Hugging Face's byte fallback (fused with the one before)
                    }
                    i += len
                }
                if symbols.count > 1 { mergeLong(&symbols) }
                if cacheable { cache.store(t.baseAddress!, t.count, hash: h, ids: symbols, from: 0) }
                out += symbols
                from = to
              }
            }
        }, special: { out.append($0) })
    }

    /// Where a SentencePiece stretch of text stands: at the start of a sequence, right after an added
    /// token, or continuing other text.
    enum StretchStart { case atStart, afterAddedToken, continuing }

    public func encode(_ text: String, following previous: Int32?) -> [Int32] {
        guard sentencePiece else { return encode(text) }
        return withUTF8Bytes(text) { p, n in
            var out = [Int32]()
            out.reserveCapacity(n / 3 + 16)
            let first: StretchStart = previous.map { isAddedToken($0) ? .afterAddedToken : .continuing } ?? .atStart
            withCache { encodeSentencePiece(p, n, into: &out, first: first, cache: &$0) }
            return out
        }
    }

    public func decode(_ ids: [Int32], following previous: Int32?) -> String {
        decode(ids, skipSpecialTokens: false, stripFirstSpace: previous == nil)
    }

    /// Appends the ids of one word, from the cache or by running the merges.
    @inline(__always)
    func encodeWord(_ p: UnsafePointer<UInt8>, _ n: Int, into out: inout [Int32], cache: inout WordCache,
                    scratch: inout BPEScratch) {
        if n == 1 {
            let id = byteToID[Int(p[0])]
            if id >= 0 { out.append(id) } else if let unk = unknownByteID { out.append(unk) }
            return
        }
        let cacheable = n <= WordCache.maxWordBytes
        let h = hashBytes(p, n)
        if cacheable, cache.lookup(p, n, hash: h, into: &out) { return }
        let first = out.count
        mergeWord(p, n, into: &out, scratch: &scratch)
        if cacheable { cache.store(p, n, hash: h, ids: out, from: first) }
    }

    /// Runs the merges over one word's bytes.
    func mergeWord(_ p: UnsafePointer<UInt8>, _ n: Int, into out: inout [Int32], scratch: inout BPEScratch) {
        if ignoreMerges {
            let e = vocab.find(p, n)
            if e >= 0 {
                out.append(vocab.values[e])
                return
            }
        }
        scratch.symbols.removeAll(keepingCapacity: true)
        for i in 0 ..< n {
            let id = byteToID[Int(p[i])]
            if id >= 0 { scratch.symbols.append(id) } else if let unk = unknownByteID { scratch.symbols.append(unk) }
        }
        if scratch.symbols.count > 96 {
            mergeLong(&scratch.symbols)
            out += scratch.symbols
            return
        }
        // Short words: keep the packed (rank, merged id) of every adjacent pair; merge the smallest, leftmost
        // first, and refresh only the two pairs next to it. O(n²) compares, but n is small and it allocates nothing.
        let count = scratch.symbols.count
        if scratch.ranks.count < count { scratch.ranks = [UInt64](repeating: 0, count: max(count, 128)) }
        scratch.symbols.withUnsafeMutableBufferPointer { symBuf in
            scratch.ranks.withUnsafeMutableBufferPointer { rankBuf in
                let sym = symBuf.baseAddress!
                let rank = rankBuf.baseAddress!
                var m = count
                for i in 0 ..< max(m - 1, 0) { rank[i] = pairs.lookup(sym[i], sym[i + 1]) }
                while m >= 2 {
                    var best = UInt64.max
                    var at = -1
                    for i in 0 ..< m - 1 where rank[i] < best {
                        best = rank[i]
                        at = i
                    }
                    if at < 0 { break }
                    sym[at] = Int32(truncatingIfNeeded: best & 0xFFFF_FFFF)
                    // Remove symbol at+1 and pair entry at (the pair just merged).
                    var i = at + 1
                    while i < m - 1 {
                        sym[i] = sym[i + 1]
                        i += 1
                    }
                    i = at
                    while i < m - 2 {
                        rank[i] = rank[i + 1]
                        i += 1
                    }
                    m -= 1
                    if at > 0 { rank[at - 1] = pairs.lookup(sym[at - 1], sym[at]) }
                    if at < m - 1 { rank[at] = pairs.lookup(sym[at], sym[at + 1]) }
                }
                out.append(contentsOf: UnsafeBufferPointer(start: sym, count: m))
            }
        }
    }

    /// Long words (long runs of spaces or punctuation): a linked list of symbols and a min-heap of
    /// `rank << 32 | position`, so the cost is O(n log n) instead of O(n²). Same result as the short path:
    /// the heap pops the lowest rank, and among equal ranks the leftmost position.
    func mergeLong(_ symbols: inout [Int32]) {
        let n = symbols.count
        var next = [Int32](repeating: -1, count: n)
        var prev = [Int32](repeating: -1, count: n)
        var alive = [Bool](repeating: true, count: n)
        for i in 0 ..< n {
            next[i] = i + 1 < n ? Int32(i + 1) : -1
            prev[i] = Int32(i - 1)
        }
        var heap = MinHeap<UInt64>()
        for i in 0 ..< n - 1 {
            let r = pairs.lookup(symbols[i], symbols[i + 1])
            if r != UInt64.max { heap.push((r >> 32) << 32 | UInt64(i)) }
        }
        while let top = heap.pop() {
            let pos = Int(top & 0xFFFF_FFFF)
            let rank = top >> 32
            guard alive[pos], next[pos] >= 0 else { continue }
            let right = Int(next[pos])
            let r = pairs.lookup(symbols[pos], symbols[right])
            guard r != UInt64.max, r >> 32 == rank else { continue }  // stale entry
            symbols[pos] = Int32(truncatingIfNeeded: r & 0xFFFF_FFFF)
            alive[right] = false
            next[pos] = next[right]
            if next[right] >= 0 { prev[Int(next[right])] = Int32(pos) }
            if prev[pos] >= 0 {
                let l = Int(prev[pos])
                let lr = pairs.lookup(symbols[l], symbols[pos])
                if lr != UInt64.max { heap.push((lr >> 32) << 32 | UInt64(l)) }
            }
            if next[pos] >= 0 {
                let rr = pairs.lookup(symbols[pos], symbols[Int(next[pos])])
                if rr != UInt64.max { heap.push((rr >> 32) << 32 | UInt64(pos)) }
            }
        }
        var out: [Int32] = []
        out.reserveCapacity(n)
        var i = 0
        while i >= 0 {
            out.append(symbols[i])
            i = Int(next[i])
        }
        symbols = out
    }

    // MARK: - Decoding and lookup

    public func decode(_ ids: [Int32]) -> String { decode(ids, skipSpecialTokens: false) }

    /// Decodes `ids`; with `skipSpecialTokens`, added tokens marked special produce no text (Hugging Face's
    /// `decode(ids, skip_special_tokens=True)`).
    public func decode(_ ids: [Int32], skipSpecialTokens: Bool) -> String {
        decode(ids, skipSpecialTokens: skipSpecialTokens, stripFirstSpace: true)
    }

    private func decode(_ ids: [Int32], skipSpecialTokens: Bool, stripFirstSpace strip: Bool) -> String {
        var bytes = [UInt8]()
        bytes.reserveCapacity(ids.count * 4)
        let skip: Set<Int32> = skipSpecialTokens ? specialIDs : []
        // SentencePiece: the space encoding put in front is dropped from a first piece that starts with one.
        var stripFirstSpace = strip && sentencePiece && spacePrefix != .none
        idBytes.withUnsafeBufferPointer { arena in
            idOffsets.withUnsafeBufferPointer { off in
                for id in ids where id >= 0 && Int(id) < vocabSize {
                    if skipSpecialTokens && skip.contains(id) { continue }
                    var s = Int(off[Int(id)])
                    let e = Int(off[Int(id) + 1])
                    if stripFirstSpace && s < e {  // the first piece with text (an unused id has none)
                        if !addedIDs.contains(id) && arena[s] == 0x20 { s += 1 }
                        stripFirstSpace = false
                    }
                    bytes.append(contentsOf: UnsafeBufferPointer(rebasing: arena[s ..< e]))
                }
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Where each of `ids` ends in `decode(ids, following: previous)`, in Unicode scalars, in one pass
    /// instead of decoding every prefix: the characters begun in the bytes so far (a prefix that ends
    /// inside a character decodes it as one U+FFFD, which counts the same). Nil when the bytes as a
    /// whole are not valid UTF-8 (a stray byte token), where decoding's replacement characters and
    /// those counts part ways; decode the prefixes then.
    public func scalarEnds(_ ids: [Int32], following previous: Int32?) -> [Int]? {
        var ends: [Int] = [], all: [UInt8] = [], begun = 0
        ends.reserveCapacity(ids.count)
        var stripFirstSpace = previous == nil && sentencePiece && spacePrefix != .none  // as `decode` strips it
        idBytes.withUnsafeBufferPointer { arena in
            idOffsets.withUnsafeBufferPointer { off in
                for id in ids {
                    if id >= 0 && Int(id) < vocabSize {
                        var s = Int(off[Int(id)])
                        let e = Int(off[Int(id) + 1])
                        if stripFirstSpace && s < e {
                            if !addedIDs.contains(id) && arena[s] == 0x20 { s += 1 }
                            stripFirstSpace = false
                        }
                        for b in arena[s ..< e] where b & 0xC0 != 0x80 { begun += 1 }  // a character's first byte
                        all.append(contentsOf: UnsafeBufferPointer(rebasing: arena[s ..< e]))
                    }
                    ends.append(begun)
                }
            }
        }
        return String(validating: all, as: UTF8.self) == nil ? nil : ends
    }

    /// The bytes id `id` stands for (an added token's UTF-8 content), or nil for an unknown id.
    public func bytes(for id: Int32) -> [UInt8]? {
        guard id >= 0 && Int(id) < vocabSize && isKnown[Int(id)] else { return nil }
        return Array(idBytes[Int(idOffsets[Int(id)]) ..< Int(idOffsets[Int(id) + 1])])
    }

    /// Added tokens by content first, then the model vocabulary by byte-level spelling (`"Ġthe"`).
    public func tokenID(for token: String) -> Int32? {
        let bytes = Array(token.utf8)
        if let t = addedTokens.first(where: { Array($0.content.utf8) == bytes }) { return t.id }
        if sentencePiece {
            if let b = Self.byteTokenValue(token) { return byteTokenIDs[Int(b)] >= 0 ? byteTokenIDs[Int(b)] : nil }
            let e = vocab.find(Array(token.replacingOccurrences(of: "\u{2581}", with: " ").utf8))
            return e >= 0 ? vocab.values[e] : nil
        }
        guard let raw = ByteLevelAlphabet.decode(token) else { return nil }
        let e = vocab.find(raw)
        return e >= 0 ? vocab.values[e] : nil
    }

    public func isAddedToken(_ id: Int32) -> Bool { addedIDs.contains(id) }

    /// An added token's content, or the byte-level spelling of a vocabulary token.
    public func tokenString(for id: Int32) -> String? {
        if let t = addedTokens.first(where: { $0.id == id }) { return t.content }
        guard id >= 0 && Int(id) < vocabSize && inModelVocab[Int(id)], let b = bytes(for: id) else { return nil }
        return sentencePiece ? pieceSpelling(id, b) : ByteLevelAlphabet.encode(b)
    }

    /// A SentencePiece model token's spelling: `<0xXX>` for a byte token, else its text with "▁" for a space.
    func pieceSpelling(_ id: Int32, _ b: [UInt8]) -> String {
        if b.count == 1 && byteTokenIDs[Int(b[0])] == id { return String(format: "<0x%02X>", b[0]) }
        return String(decoding: b, as: UTF8.self).replacingOccurrences(of: " ", with: "\u{2581}")
    }

    /// The byte of a `<0xXX>` spelling (a SentencePiece byte token), or nil.
    public static func byteTokenValue(_ s: String) -> UInt8? {
        let u = Array(s.utf8)
        func hex(_ c: UInt8) -> Bool { (0x30...0x39).contains(c) || (0x41...0x46).contains(c) }  // 0-9, A-F
        guard u.count == 6, u[0] == 0x3C, u[1] == 0x30, u[2] == 0x78, hex(u[3]), hex(u[4]), u[5] == 0x3E else { return nil }
        return UInt8(String(decoding: u[3...4], as: UTF8.self), radix: 16)
    }

    /// Empties the per-word cache (it holds at most ~`WordCache.maxEntries` words and resets itself when full).
    public func clearCache() {
        cacheLock.lock()
        cache = WordCache()
        cacheLock.unlock()
    }
}

/// Reusable buffers for merging one word.
struct BPEScratch {
    var symbols: [Int32] = []
    var ranks: [UInt64] = []
}

/// Word bytes → ids, for words up to `maxWordBytes` long. Cleared when it reaches `maxEntries` words so memory
/// stays bounded on endless streams (natural text has a Zipf tail: a bounded cache still hits > 95%).
struct WordCache {
    static let maxWordBytes = 128
    static let maxEntries = 1 << 19
    private var table = ByteStringTable(capacity: 4096)
    /// Entry k's ids are `ids[spans[k] >> 32 ..< (spans[k] >> 32) + spans[k] & 0xFFFFFFFF]`.
    private var spans: [UInt64] = []
    private var ids: [Int32] = []

    @inline(__always)
    func lookup(_ p: UnsafePointer<UInt8>, _ n: Int, hash: UInt64, into out: inout [Int32]) -> Bool {
        let e = table.find(p, n, hash: hash)
        if e < 0 { return false }
        let span = spans[e]
        let s = Int(span >> 32)
        let c = Int(span & 0xFFFF_FFFF)
        if c == 1 {
            out.append(ids[s])
        } else {
            ids.withUnsafeBufferPointer { out.append(contentsOf: UnsafeBufferPointer(rebasing: $0[s ..< s + c])) }
        }
        return true
    }

    mutating func store(_ p: UnsafePointer<UInt8>, _ n: Int, hash: UInt64, ids new: [Int32], from first: Int) {
        if table.count >= WordCache.maxEntries {
            table.removeAll()
            spans.removeAll(keepingCapacity: true)
            ids.removeAll(keepingCapacity: true)
        }
        spans.append(UInt64(ids.count) << 32 | UInt64(new.count - first))
        ids.append(contentsOf: new[first...])
        table.insert(p, n, hash: hash, value: Int32(spans.count - 1))
    }
}

/// A binary min-heap (smallest first by `<`), for the merge queue of long words and the trainer's
/// pair queue.
struct MinHeap<Element: Comparable> {
    private var a: [Element] = []

    mutating func reserveCapacity(_ n: Int) { a.reserveCapacity(n) }

    mutating func push(_ x: Element) {
        a.append(x)
        var i = a.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            if !(x < a[parent]) { break }
            a[i] = a[parent]
            i = parent
        }
        a[i] = x
    }

    mutating func pop() -> Element? {
        guard let last = a.popLast() else { return nil }
        guard !a.isEmpty else { return last }
        let top = a[0]
        let n = a.count
        var i = 0
        while true {
            var c = 2 * i + 1
            if c >= n { break }
            if c + 1 < n && a[c + 1] < a[c] { c += 1 }
            if !(a[c] < last) { break }
            a[i] = a[c]
            i = c
        }
        a[i] = last
        return top
    }
}

/// Where a SentencePiece tokenizer puts a space in front of the text (llama.cpp's `add_space_prefix`;
/// Hugging Face's `Prepend("▁")` normalizer, or a `Metaspace` pre-tokenizer's `prepend_scheme`).
public enum SpacePrefix: String, Sendable {
    /// Nowhere (`prepend_scheme` "never").
    case none
    /// Before the text when it starts with a stretch that does not start with a space (a `Metaspace`
    /// pre-tokenizer's `prepend_scheme` "first", transformers 5's Llama 2).
    case first
    /// Before every stretch between added tokens that does not start with a space (`prepend_scheme` "always").
    case always
    /// Before every stretch between added tokens (llama.cpp's rule; Hugging Face's `Prepend("▁")`
    /// normalizer, the Llama 2 tokenizer.json of transformers 4).
    case everyStretch
}
