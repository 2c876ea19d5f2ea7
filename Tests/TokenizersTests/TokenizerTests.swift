// TokenizerTests.swift: ByteTokenizer and BPETokenizer: round trips of arbitrary UTF-8, GPT-2 pre-tokenization,
// deterministic training checked against a naive recount-everything trainer, save → load, special tokens, load
// errors, and exact agreement with Hugging Face `tokenizers` (fixtures from scripts/make_tokenizer_fixtures.py).
import Foundation
import XCTest
@testable import Tokenizers

/// SplitMix64: a small seeded generator, so the random strings are the same on every run.
private struct SeededRNG: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

private let fixturesDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")

private func fixtureCorpus() throws -> String {
    try String(contentsOf: fixturesDir.appendingPathComponent("tokenizer_corpus.txt"), encoding: .utf8)
}

/// Hand-picked hard cases: emoji (incl. ZWJ sequences, flags, skin tones), CJK, combining marks, control
/// characters, Unicode whitespace, contractions, digits, long runs.
private let tricky: [String] = [
    "", " ", "  ", "\n", "a", "Hello, world!", "Hello world! The year 2024 was great.",
    "😀👍🏽🇺🇸❤️👩‍👩‍👧‍👦 emoji", "日本語のテキスト、中文：你好，世界！", "한국어 텍스트",
    "e\u{301}\u{302}\u{303} combining, n\u{303}, \u{301} alone", "\u{0}\u{1}\u{7}\u{1B}[0m\u{7F}\u{85}\u{9F}",
    "\u{A0}\u{3000}\u{2028}\u{2029}\u{200B}\u{FEFF}", "it's don't we're they've I'm we'll he'd ''s 's",
    "3.14159 2024 1,000,000 ٣٤ Ⅻ ½", "  leading", "trailing  ", "\t\t\ttabs\r\n\r\n",
    String(repeating: " ", count: 300) + "x" + String(repeating: "!?", count: 200),
    String(repeating: "ab", count: 500), "\u{10FFFF}\u{E000}\u{FFFD}\u{1F600}",
]

/// Random strings of valid scalars (no surrogates) from a mix of ranges, seeded.
private func randomStrings(count: Int, seed: UInt64) -> [String] {
    var rng = SeededRNG(seed: seed)
    let ranges: [ClosedRange<UInt32>] = [
        0x00 ... 0x7F, 0x20 ... 0x7E, 0x80 ... 0x7FF, 0x300 ... 0x36F, 0x4E00 ... 0x9FFF, 0xAC00 ... 0xD7A3,
        0x1F300 ... 0x1FAFF, 0x0 ... 0xD7FF, 0xE000 ... 0x10FFFF, 0x2000 ... 0x206F, 0x30 ... 0x39,
    ]
    var out: [String] = []
    for _ in 0 ..< count {
        var s = String.UnicodeScalarView()
        let n = Int.random(in: 0 ... 60, using: &rng)
        for _ in 0 ..< n {
            let r = ranges[Int.random(in: 0 ..< ranges.count, using: &rng)]
            s.append(Unicode.Scalar(UInt32.random(in: r, using: &rng))!)
        }
        out.append(String(s))
    }
    return out
}

/// Reference BPE for one word: repeatedly merge the lowest-rank adjacent pair, leftmost first (GPT-2's bpe()).
private func naiveBPE(_ bytes: [UInt8], _ tok: BPETokenizer) -> [Int32] {
    var rank: [UInt64: Int] = [:]
    for (r, (a, b)) in tok.merges.enumerated() where rank[PairTable.key(a, b)] == nil { rank[PairTable.key(a, b)] = r }
    var sym = bytes.map { tok.byteToID[Int($0)] }
    while sym.count > 1 {
        var best = Int.max
        var at = -1
        for i in 0 ..< sym.count - 1 {
            if let r = rank[PairTable.key(sym[i], sym[i + 1])], r < best {
                best = r
                at = i
            }
        }
        if at < 0 { break }
        let merged = tok.bytes(for: sym[at])! + tok.bytes(for: sym[at + 1])!
        sym[at] = tok.tokenID(for: ByteLevelAlphabet.encode(merged))!
        sym.remove(at: at + 1)
    }
    return sym
}

/// Reference trainer: recounts every pair from scratch before each merge (slow, obviously right).
private func naiveTrain(_ corpus: String, vocabSize: Int, pre: BPEPreTokenizer) -> [([UInt8], [UInt8])] {
    var counts: [[UInt8]: Int] = [:]
    for w in pre.split(corpus) { counts[Array(w.utf8), default: 0] += 1 }
    var words = counts.keys.sorted { $0.lexicographicallyPrecedes($1) }.map { w in (w.map { [$0] }, counts[w]!) }
    var ids: [[UInt8]: Int] = [:]
    for b in 0 ..< 256 { ids[[UInt8(b)]] = b }
    var merges: [([UInt8], [UInt8])] = []
    var next = 256
    while next < vocabSize {
        var pc: [[Int]: Int] = [:]
        for (w, c) in words where w.count > 1 {
            for i in 0 ..< w.count - 1 { pc[[ids[w[i]]!, ids[w[i + 1]]!], default: 0] += c }
        }
        guard let best = pc.max(by: { $0.value != $1.value ? $0.value < $1.value : $0.key.lexicographicallyPrecedes($1.key) == false }),
              best.value >= 2 else { break }
        let a = ids.first { $0.value == best.key[0] }!.key
        let b = ids.first { $0.value == best.key[1] }!.key
        merges.append((a, b))
        if ids[a + b] == nil {
            ids[a + b] = next
            next += 1
        }
        for k in words.indices {
            var w = words[k].0
            var i = 0
            while i < w.count - 1 {
                if w[i] == a && w[i + 1] == b {
                    w[i] = a + b
                    w.remove(at: i + 1)
                }
                i += 1
            }
            words[k].0 = w
        }
    }
    return merges
}

final class TokenizerTests: XCTestCase {
    private static var trained: [BPEPreTokenizer: BPETokenizer] = [:]

    /// A 512-token tokenizer trained on the fixture corpus (cached per pre-tokenizer).
    private func trainedTokenizer(_ pre: BPEPreTokenizer = .gpt2) throws -> BPETokenizer {
        if let t = Self.trained[pre] { return t }
        let t = try BPETokenizer.train(corpus: fixtureCorpus(), vocabSize: 512, specialTokens: ["<|endoftext|>", "<|pad|>"],
                                       preTokenizer: pre)
        Self.trained[pre] = t
        return t
    }

    // MARK: Round trips

    func testByteTokenizerRoundTripsArbitraryUTF8() {
        let tok = ByteTokenizer(specialTokens: ["<|endoftext|>"], roles: SpecialTokenRoles(eos: "<|endoftext|>"))
        XCTAssertEqual(tok.vocabSize, 257)
        XCTAssertEqual(tok.eosTokenID, 256)
        for s in tricky + randomStrings(count: 300, seed: 1) {
            let ids = tok.encode(s)
            XCTAssertEqual(ids.count, s.utf8.count, "one id per byte for \(s.debugDescription)")
            XCTAssertTrue(ids.allSatisfy { $0 >= 0 && $0 < 256 })
            XCTAssertEqual(tok.decode(ids), s)
        }
        XCTAssertEqual(tok.encode("a<|endoftext|>b"), [97, 256, 98])
        XCTAssertEqual(tok.decode([97, 256, 98]), "a<|endoftext|>b")
        XCTAssertEqual(tok.tokenID(for: "a"), 97)
        XCTAssertEqual(tok.tokenID(for: "<0xE6>"), 0xE6)
        XCTAssertEqual(tok.tokenString(for: 0xE6), "<0xE6>")
    }

    func testBPERoundTripsArbitraryUTF8() throws {
        for pre in BPEPreTokenizer.allCases {
            let tok = try trainedTokenizer(pre)
            for s in tricky + randomStrings(count: 300, seed: 2) {
                let ids = tok.encode(s)
                XCTAssertTrue(ids.allSatisfy { $0 >= 0 && Int($0) < tok.vocabSize })
                XCTAssertEqual(tok.decode(ids), s, "round trip (\(pre)) of \(s.debugDescription)")
                XCTAssertLessThanOrEqual(ids.count, s.utf8.count)
            }
        }
    }

    func testDecodeOfArbitraryIdsNeverCrashes() throws {
        let tok = try trainedTokenizer()
        var rng = SeededRNG(seed: 3)
        for _ in 0 ..< 200 {
            let ids = (0 ..< 20).map { _ in Int32.random(in: -5 ... Int32(tok.vocabSize + 5), using: &rng) }
            _ = tok.decode(ids)
            _ = tok.decode(ids, skipSpecialTokens: true)
        }
        XCTAssertEqual(tok.decode([Int32(tok.tokenID(for: "<|endoftext|>")!)], skipSpecialTokens: true), "")
    }

    // MARK: Pre-tokenization

    func testGPT2PreTokenizerSplitsLikeTheRegex() {
        let cases: [(String, [String])] = [
            ("Hello world", ["Hello", " world"]),
            ("Hello  world", ["Hello", " ", " world"]),
            ("a\n\nb", ["a", "\n", "\n", "b"]),  // `\s+(?!\S)` takes "\n", then `\s+` the last "\n"
            ("a   ", ["a", "   "]),
            ("I'm here, they'll go", ["I", "'m", " here", ",", " they", "'ll", " go"]),
            ("'sx ''s", ["'s", "x", " ''", "s"]),
            ("year 2024!", ["year", " 2024", "!"]),
            ("3.14", ["3", ".", "14"]),
            ("e\u{301}t\u{E9}", ["e", "\u{301}", "t\u{E9}"]),  // a combining mark is neither \p{L} nor \p{N}
            ("x\u{3000}y", ["x", "\u{3000}", "y"]),  // U+3000 is \s, but only U+0020 joins the next word
            ("\t\tx", ["\t", "\t", "x"]),
            ("  ", ["  "]),
        ]
        for (text, pieces) in cases {
            XCTAssertEqual(BPEPreTokenizer.gpt2.split(text), pieces, "gpt2 split of \(text.debugDescription)")
        }
    }

    /// Llama 3's and Qwen2's pre-tokenizers split as their regexes do (expected pieces from Python's
    /// `regex` module): contractions in any case, one non-letter before letters, digits by three or
    /// one, punctuation with its newlines, whitespace runs through their last newline.
    func testLlama3AndQwen2PreTokenizersSplitLikeTheirRegexes() {
        let cases: [(String, [String], [String])] = [
            ("year 2024", ["year", " ", "202", "4"], ["year", " ", "2", "0", "2", "4"]),
            ("\n\n  x", ["\n\n", " ", " x"], ["\n\n", " ", " x"]),
            (" \n x", [" \n", " x"], [" \n", " x"]),
            ("a\n \n\tb", ["a", "\n \n", "\tb"], ["a", "\n \n", "\tb"]),
            ("\u{A0}x", ["\u{A0}x"], ["\u{A0}x"]),
            ("  x", [" ", " x"], [" ", " x"]),
            ("\u{A0}!", ["\u{A0}", "!"], ["\u{A0}", "!"]),
            ("'S'x", ["'S", "'x"], ["'S", "'x"]),
            (" !?\n\nok", [" !?\n\n", "ok"], [" !?\n\n", "ok"]),
            ("e\u{301}x", ["e", "\u{301}x"], ["e", "\u{301}x"]),
            ("1\u{663}\u{BD}4", ["1\u{663}\u{BD}", "4"], ["1", "\u{663}", "\u{BD}", "4"]),
            ("x '", ["x", " '"], ["x", " '"]),
            ("I'm here, THEY'LL go", ["I", "'m", " here", ",", " THEY", "'LL", " go"], ["I", "'m", " here", ",", " THEY", "'LL", " go"]),
            ("12345678", ["123", "456", "78"], ["1", "2", "3", "4", "5", "6", "7", "8"]),
            ("a  \n\n  b  ", ["a", "  \n\n", " ", " b", "  "], ["a", "  \n\n", " ", " b", "  "]),
            ("hello\r\nworld", ["hello", "\r\n", "world"], ["hello", "\r\n", "world"]),
            ("  ", ["  "], ["  "]),
        ]
        for (text, llama3, qwen2) in cases {
            XCTAssertEqual(BPEPreTokenizer.llama3.split(text), llama3, "llama3 split of \(text.debugDescription)")
            XCTAssertEqual(BPEPreTokenizer.qwen2.split(text), qwen2, "qwen2 split of \(text.debugDescription)")
        }
    }

    func testDigitsPreTokenizerIsolatesEveryDigit() {
        let cases: [(String, [String])] = [
            ("year 2024 was", ["year", " ", "2", "0", "2", "4", " was"]),
            ("a  1", ["a", "  ", "1"]),  // "a  " is split alone: its trailing spaces reach the end of the stretch
            ("3.14", ["3", ".", "1", "4"]),
            ("x٣y", ["x", "٣", "y"]),
        ]
        for (text, pieces) in cases {
            XCTAssertEqual(BPEPreTokenizer.digitsSplit.split(text), pieces, "digits split of \(text.debugDescription)")
        }
    }

    // MARK: Merging

    func testMergesMatchNaiveBPEIncludingLongWords() throws {
        let tok = try trainedTokenizer()
        var words = ["the", " the", " tokenizer", "aaaaaaa", " reads", "ababababab"]
        words.append(String(repeating: " ", count: 250))  // takes the long-word (heap) path
        words.append(" " + String(repeating: "the", count: 60))
        words.append(String(repeating: "=", count: 97) + String(repeating: "-", count: 101))
        var rng = SeededRNG(seed: 4)
        let letters = Array("etaoinshrdlu ")
        for _ in 0 ..< 200 {
            let n = Int.random(in: 2 ... 200, using: &rng)
            words.append(String((0 ..< n).map { _ in letters[Int.random(in: 0 ..< letters.count, using: &rng)] }))
        }
        for w in words {
            var out: [Int32] = []
            var scratch = BPEScratch()
            let bytes = Array(w.utf8)
            bytes.withUnsafeBufferPointer { tok.mergeWord($0.baseAddress!, $0.count, into: &out, scratch: &scratch) }
            XCTAssertEqual(out, naiveBPE(bytes, tok), "merges of \(w.debugDescription)")
        }
    }

    /// Long texts are pre-tokenized in ~64 KiB chunks; the cut points must not change any word.
    /// (Regression: a cut after "\n\n" once turned "\n", "\n" into one "\n\n" word.)
    func testChunkedEncodingEqualsWholeTextSplit() throws {
        for pre in BPEPreTokenizer.allCases {
            let tok = try trainedTokenizer(pre)
            var parts = [try fixtureCorpus()]
            parts += randomStrings(count: 400, seed: 7)
            parts += (0 ..< 3000).map { "x\n" + String(repeating: "\n", count: $0 % 3) + " y\n\t" + String($0) + "\n" }
            var text = ""
            for k in 0 ..< 1200 { text += parts[k % 7 == 0 ? 0 : (k * 37) % parts.count] + "\n\n\"\"\"pass\n" }
            XCTAssertGreaterThan(text.utf8.count, 4 * 65536)
            // Here every "\n" followed by a non-space follows another "\n": no safe cut point at all.
            let noCut = String(repeating: "pass\n\n\"\"\"x ", count: 12000)
            // A tokenizer whose only merge is "\n" + "\n", so a wrongly joined "\n\n" word changes the ids.
            let newlines = try BPETokenizer(vocab: (0 ..< 256).map { [UInt8($0)] } + [[10, 10]], merges: [(10, 10)],
                                            preTokenizer: pre)
            for (tok, t) in [(tok, text), (tok, noCut), (newlines, noCut), (newlines, text)] {
                var expected: [Int32] = []
                var scratch = BPEScratch()
                for word in pre.split(t) {
                    let bytes = Array(word.utf8)
                    bytes.withUnsafeBufferPointer { tok.mergeWord($0.baseAddress!, $0.count, into: &expected, scratch: &scratch) }
                }
                let got = tok.encode(t)
                if got != expected {
                    let k = zip(got, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(got.count, expected.count)
                    XCTFail("chunked encoding (\(pre)) differs at id \(k): \(got[k...].prefix(8)) vs \(expected[k...].prefix(8))")
                }
            }
        }
    }

    // MARK: Training

    func testTrainingIsDeterministicAndMatchesNaiveTrainer() throws {
        let corpus = try fixtureCorpus()
        for pre in BPEPreTokenizer.allCases {
            let a = try BPETokenizer.train(corpus: corpus, vocabSize: 400, preTokenizer: pre)
            let b = try BPETokenizer.train(corpus: corpus, vocabSize: 400, preTokenizer: pre)
            XCTAssertEqual(a.tokenizerJSON(), b.tokenizerJSON(), "two trainings give the same file (\(pre))")
            let expected = naiveTrain(corpus, vocabSize: 400, pre: pre)
            let got = a.merges.map { (a.bytes(for: $0.0)!, a.bytes(for: $0.1)!) }
            XCTAssertEqual(got.count, expected.count, "merge count (\(pre))")
            for (k, (g, e)) in zip(got, expected).enumerated() where g != e {
                XCTFail("merge \(k) (\(pre)): got \(ByteLevelAlphabet.encode(g.0)) \(ByteLevelAlphabet.encode(g.1)), "
                        + "naive trainer \(ByteLevelAlphabet.encode(e.0)) \(ByteLevelAlphabet.encode(e.1))")
                break
            }
        }
    }

    func testTrainingLayoutAndCompression() throws {
        let tok = try trainedTokenizer()
        XCTAssertEqual(tok.vocabSize, 512)
        for b in 0 ..< 256 { XCTAssertEqual(tok.bytes(for: Int32(b)), [UInt8(b)]) }
        XCTAssertEqual(tok.tokenID(for: "<|endoftext|>"), 256)
        XCTAssertEqual(tok.tokenID(for: "<|pad|>"), 257)
        XCTAssertEqual(tok.eosTokenID, 256)
        XCTAssertEqual(tok.padTokenID, 257)
        XCTAssertEqual(tok.tokenString(for: tok.tokenID(for: "Ġthe")!), "Ġthe")
        let corpus = try fixtureCorpus()
        XCTAssertGreaterThan(Double(corpus.utf8.count) / Double(tok.encode(corpus).count), 1.8)  // 1.99 today
        XCTAssertThrowsError(try BPETokenizer.train(corpus: "abc", vocabSize: 100))
        let other = try tok.withRoles(SpecialTokenRoles(bos: "<|pad|>"))
        XCTAssertEqual(other.bosTokenID, 257)
        XCTAssertNil(other.eosTokenID)
        XCTAssertEqual(other.encode(corpus), tok.encode(corpus))
        XCTAssertThrowsError(try tok.withRoles(SpecialTokenRoles(eos: "</s>")))
    }

    /// One tokenizer shared by many threads (the cache is locked; a busy cache means a private one).
    func testConcurrentEncodingMatchesSerial() throws {
        let tok = try trainedTokenizer(.digitsSplit)
        let corpus = try fixtureCorpus()
        let texts = randomStrings(count: 48, seed: 8).map { $0 + corpus + $0 }
        let serial = texts.map { tok.encode($0) }
        tok.clearCache()
        var results = [[Int32]](repeating: [], count: texts.count)
        let lock = NSLock()
        DispatchQueue.concurrentPerform(iterations: texts.count) { i in
            let ids = tok.encode(texts[i])
            lock.lock()
            results[i] = ids
            lock.unlock()
        }
        XCTAssertEqual(results, serial)
    }

    func testSpecialTokensAreNeverLearnedAsMerges() throws {
        // "ab" is a special token and the most frequent pair: the trainer must not create a second "ab".
        let tok = try BPETokenizer.train(corpus: String(repeating: "ab ab abc ", count: 50), vocabSize: 270,
                                         specialTokens: ["ab"])
        XCTAssertFalse(tok.merges.contains { tok.bytes(for: $0.0)! + tok.bytes(for: $0.1)! == Array("ab".utf8) })
        XCTAssertEqual(tok.encode("ab"), [256])
        XCTAssertEqual(tok.decode(tok.encode("xab abc")), "xab abc")
    }

    // MARK: Special tokens

    func testSpecialTokensAreNeverSplit() throws {
        let base = try trainedTokenizer()
        // Longest match wins: "<|end|>" and "<|endoftext|>" share a prefix.
        let tok = try BPETokenizer(vocab: (0 ..< 256).map { [UInt8($0)] }, merges: [],
                                   addedTokens: [AddedToken(id: 256, content: "<|endoftext|>"),
                                                 AddedToken(id: 257, content: "<|end|>"),
                                                 AddedToken(id: 258, content: " <sep> ", special: false)])
        XCTAssertEqual(tok.encode("<|endoftext|>"), [256])
        XCTAssertEqual(tok.encode("<|end|><|endoftext|>"), [257, 256])
        XCTAssertEqual(tok.encode("x<|end|>y"), [120, 257, 121])
        XCTAssertEqual(tok.encode("a <sep> b"), [97, 258, 98])
        XCTAssertEqual(tok.encode("<|endoftext"), Array("<|endoftext".utf8).map { Int32($0) })
        let eot = base.tokenID(for: "<|endoftext|>")!
        for s in tricky + randomStrings(count: 100, seed: 5) {
            let text = "<|endoftext|>" + s + "<|endoftext|>" + s + "<|endoftext|><|endoftext|>"
            let ids = base.encode(text)
            XCTAssertEqual(ids.filter { $0 == eot }.count, 4)
            XCTAssertEqual(ids.first, eot)
            XCTAssertEqual(ids.last, eot)
            XCTAssertEqual(base.decode(ids), text)
        }
        XCTAssertEqual(base.encode("<|endoftext|>", addBOS: true, addEOS: true), [eot, eot, eot])
    }

    // MARK: Files

    func testSaveLoadGivesIdenticalEncodings() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tok-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        for pre in BPEPreTokenizer.allCases {
            let tok = try trainedTokenizer(pre)
            try tok.saveFolder(dir)
            let back = try BPETokenizer.load(from: dir)
            XCTAssertEqual(back.preTokenizer, pre)
            XCTAssertEqual(back.vocabSize, tok.vocabSize)
            XCTAssertEqual(back.roles, tok.roles)
            XCTAssertEqual(back.eosTokenID, tok.eosTokenID)
            XCTAssertEqual(back.tokenizerJSON(), tok.tokenizerJSON())
            for s in tricky + randomStrings(count: 100, seed: 6) + [try fixtureCorpus()] {
                XCTAssertEqual(back.encode(s), tok.encode(s))
            }
        }
    }

    /// Roles from the files beside tokenizer.json, as transformers reads them: a key names the role
    /// (null: none), `special_tokens_map.json` over an older `tokenizer_config.json`, and a role neither names
    /// falls back on the common names (GPT-2's config names none, yet its EOS is `<|endoftext|>`).
    func testRolesComeFromTheConfigFilesThenCommonNames() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tok-roles-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try FileManager.default.copyItem(at: fixturesDir.appendingPathComponent("tokenizer_gpt2.json"), to: dir.appendingPathComponent("tokenizer.json"))
        func roles(config: String?, map: String?) throws -> SpecialTokenRoles {
            for (name, text) in [("tokenizer_config.json", config), ("special_tokens_map.json", map)] {
                let url = dir.appendingPathComponent(name)
                try? FileManager.default.removeItem(at: url)
                if let text { try text.write(to: url, atomically: true, encoding: .utf8) }
            }
            return try BPETokenizer.load(from: dir).roles
        }
        let gpt2 = SpecialTokenRoles(bos: "<|endoftext|>", eos: "<|endoftext|>", pad: "<|pad|>", unk: "<|endoftext|>")
        XCTAssertEqual(try roles(config: nil, map: nil), gpt2, "no files: common names")
        XCTAssertEqual(try roles(config: #"{"model_max_length": 1024}"#, map: nil), gpt2, "GPT-2's own config names no role")
        XCTAssertEqual(try roles(config: #"{"eos_token": null, "pad_token": {"content": "<|endoftext|>"}}"#, map: nil),
                       SpecialTokenRoles(bos: "<|endoftext|>", eos: nil, pad: "<|endoftext|>", unk: "<|endoftext|>"))
        // transformers 5.24 (checked with AutoTokenizer on these files): special_tokens_map.json overrides
        // an older config, and is not read beside one with added_tokens_decoder.
        let map = #"{"bos_token": "<|endoftext|>", "eos_token": "<|pad|>"}"#
        XCTAssertEqual(try roles(config: #"{"bos_token": "<|pad|>"}"#, map: map),
                       SpecialTokenRoles(bos: "<|endoftext|>", eos: "<|pad|>", pad: "<|pad|>", unk: "<|endoftext|>"))
        XCTAssertEqual(try roles(config: #"{"bos_token": "<|pad|>", "added_tokens_decoder": {}}"#, map: map),
                       SpecialTokenRoles(bos: "<|pad|>", eos: "<|endoftext|>", pad: "<|pad|>", unk: "<|endoftext|>"))
        // The generic class has no defaults (SwiftPEFT's own files once left out the roles it had not).
        XCTAssertEqual(try roles(config: #"{"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>"}"#, map: nil),
                       SpecialTokenRoles(eos: "<|endoftext|>"))
    }

    /// A tokenizer's chat template is read when it is set, survives tokenizer_config.json, and one
    /// that cannot be read says so, with its line, when it is used.
    func testChatTemplateIsKeptAndRead() throws {
        let smol = "{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are SmolLM<|im_end|>\n' }}{% endif %}"
        let template = "{% for message in messages %}" + smol + "{{ message['content'] }}{% endfor %}"
        let shared = try trainedTokenizer()
        let tok = try shared.withRoles(shared.roles)  // a copy: the trained one is shared by the tests
        XCTAssertNil(try tok.compiledChatTemplate)
        tok.chatTemplate = template
        let back = try BPETokenizer.load(json: Data(tok.tokenizerJSON().utf8), configs: [Data(tok.tokenizerConfigJSON().utf8)])
        XCTAssertEqual(back.chatTemplate, template)
        XCTAssertEqual(try back.compiledChatTemplate?.render(messages: [("user", "Hi")], addGenerationPrompt: true),
                       "<|im_start|>system\nYou are SmolLM<|im_end|>\nHi")
        XCTAssertEqual(try tok.withRoles(tok.roles).compiledChatTemplate?.source, template, "copies keep it")
        tok.chatTemplate = "{% if true %}\n{{ x }"
        XCTAssertThrowsError(try tok.compiledChatTemplate) { XCTAssertTrue("\($0)".contains("line 2"), "\($0)") }
    }

    /// A merge listed twice takes its last rank, as in `tokenizers` 0.23.3 (checked on this file:
    /// "abc" → ["a", "bc"] = [0, 4]; with the first rank it would be ["ab", "c"]).
    func testAMergeListedTwiceTakesItsLastRank() throws {
        let json = #"""
        {"version": "1.0", "added_tokens": [], "normalizer": null,
         "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
         "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
         "model": {"type": "BPE", "unk_token": null, "byte_fallback": false, "ignore_merges": false,
                   "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4}, "merges": [["a", "b"], ["b", "c"], ["a", "b"]]}}
        """#
        XCTAssertEqual(try BPETokenizer.load(json: Data(json.utf8), file: "dup.json").encode("abc"), [0, 4])
    }

    /// Bytes the vocabulary lacks: dropped without a model unk_token, that token with one, as
    /// `tokenizers` 0.23.3 gives them on this file ("abc ab" → [2, 2], and [2, 3, 3, 2] with
    /// unk_token <|endoftext|>), whatever the UNK role (GPT-2's guess: <|endoftext|>).
    func testBytesMissingFromTheVocabularyFollowTheModelsUnkToken() throws {
        func json(_ unk: String) -> Data {
            Data(#"""
            {"version": "1.0", "normalizer": null,
             "added_tokens": [{"id": 3, "content": "<|endoftext|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
             "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
             "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
             "model": {"type": "BPE", "unk_token": \#(unk), "byte_fallback": false, "ignore_merges": false,
                       "vocab": {"a": 0, "b": 1, "ab": 2, "<|endoftext|>": 3}, "merges": [["a", "b"]]}}
            """#.utf8)
        }
        let dropping = try BPETokenizer.load(json: json("null"), file: "unk.json")
        XCTAssertEqual(dropping.unkTokenID, 3, "the UNK role is guessed")
        XCTAssertEqual(dropping.encode("abc ab"), [2, 2])
        let unk = try BPETokenizer.load(json: json(#""<|endoftext|>""#), file: "unk.json")
        XCTAssertEqual(unk.encode("abc ab"), [2, 3, 3, 2])
        // Saved and loaded back, each encodes as before.
        for t in [dropping, unk] {
            XCTAssertEqual(try BPETokenizer.load(json: Data(t.tokenizerJSON().utf8), file: "again.json").encode("abc ab"), t.encode("abc ab"))
        }
    }

    func testLoadAcceptsStringMergesAndExtraFields() throws {
        let tok = try trainedTokenizer()
        let json = try JSONSerialization.jsonObject(with: Data(tok.tokenizerJSON().utf8)) as! [String: Any]
        var model = json["model"] as! [String: Any]
        model["merges"] = (model["merges"] as! [[String]]).map { $0.joined(separator: " ") }
        var root = json
        root["model"] = model
        root["post_processor"] = ["type": "ByteLevel", "trim_offsets": false]
        let data = try JSONSerialization.data(withJSONObject: root)
        let back = try BPETokenizer.load(json: data, file: "strings.json")
        let text = try fixtureCorpus()
        XCTAssertEqual(back.encode(text), tok.encode(text))
    }

    /// A post-processor that puts the BOS token in front of every text (Llama 3's: a `Sequence` of
    /// `ByteLevel` and `TemplateProcessing`) makes `addsBOS` true, is written back, and names the BOS
    /// where no config does and over a guessed one; a token after the text is not added; other
    /// post-processors add nothing or are refused, naming the file and the field.
    func testThePostProcessorsBOSIsReadAndWritten() throws {
        let good = try JSONSerialization.jsonObject(with: Data(trainedTokenizer().tokenizerJSON().utf8)) as! [String: Any]
        let eot = try XCTUnwrap(trainedTokenizer().tokenID(for: "<|endoftext|>")), pad = try XCTUnwrap(trainedTokenizer().tokenID(for: "<|pad|>"))
        func template(_ single: [[String: Any]], _ specials: [String: Int32]) -> [String: Any] {
            ["type": "TemplateProcessing", "single": single, "pair": [],
             "special_tokens": Dictionary(uniqueKeysWithValues: specials.map { ($0.key, ["id": $0.key, "ids": [$0.value], "tokens": [$0.key]] as [String: Any]) })]
        }
        func special(_ name: String) -> [String: Any] { ["SpecialToken": ["id": name, "type_id": 0]] }
        let text: [String: Any] = ["Sequence": ["id": "A", "type_id": 0]]
        let byteLevel: [String: Any] = ["type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true]
        let llama3 = ["type": "Sequence", "processors": [byteLevel, template([special("<|endoftext|>"), text], ["<|endoftext|>": eot])]] as [String: Any]
        func load(_ post: Any, config: String? = nil) throws -> BPETokenizer {
            var root = good
            root["post_processor"] = post
            return try BPETokenizer.load(json: try JSONSerialization.data(withJSONObject: root), file: "post.json",
                                         configs: config.map { [Data($0.utf8)] } ?? [])
        }
        let adding = try load(llama3)
        XCTAssertTrue(adding.addsBOS)
        XCTAssertEqual(adding.bosTokenID, eot)
        XCTAssertEqual(adding.encode("hi there", addBOS: adding.addsBOS), [eot] + adding.encode("hi there"))
        let back = try BPETokenizer.load(json: Data(adding.tokenizerJSON().utf8), file: "again.json")
        XCTAssertTrue(back.addsBOS, "written back")
        XCTAssertEqual(back.tokenizerJSON(), adding.tokenizerJSON())
        XCTAssertFalse(try trainedTokenizer().addsBOS)
        XCTAssertFalse(try load(NSNull()).addsBOS)
        XCTAssertFalse(try load(byteLevel).addsBOS)
        XCTAssertFalse(try load(template([text], [:])).addsBOS, "transformers 5's template without special tokens")
        // A config that names no BOS: the template's token is the BOS; over a guessed one too.
        let named = try load(llama3, config: #"{"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>"}"#)
        XCTAssertEqual(named.roles.bos, "<|endoftext|>")
        XCTAssertTrue(named.addsBOS)
        let padFirst = template([special("<|pad|>"), text], ["<|pad|>": pad])
        XCTAssertEqual(try load(padFirst).roles.bos, "<|pad|>", "the guess (<|endoftext|>) gives way")
        XCTAssertEqual(try load(padFirst).encode("a", addBOS: true).first, pad)
        // A token after the text (an EOS on every text) is not added; one in front still is.
        XCTAssertFalse(try load(template([text, special("<|endoftext|>")], ["<|endoftext|>": eot])).addsBOS)
        let both = try load(template([special("<|endoftext|>"), text, special("<|pad|>")], ["<|endoftext|>": eot, "<|pad|>": pad]))
        XCTAssertTrue(both.addsBOS)
        XCTAssertEqual(both.encode("hi", addBOS: both.addsBOS), [eot] + both.encode("hi"))
        let plainID = try XCTUnwrap(trainedTokenizer().tokenID(for: "a"))
        let refused: [(Any, String?, String)] = [
            (padFirst, #"{"bos_token": "<|endoftext|>"}"#, "but tokenizer_config.json's bos_token is \"<|endoftext|>\""),
            (template([special("<|endoftext|>"), special("<|pad|>"), text], ["<|endoftext|>": eot, "<|pad|>": pad]), nil, "one token at most"),
            (template([special("<s>"), text], [:]), nil, "does not define \"<s>\" with one id"),
            (template([special("a"), text], ["a": plainID]), nil, "adds \"a\" as id \(plainID), which is not an added token"),
            (template([special("<|endoftext|>")], ["<|endoftext|>": eot]), nil, "no {\"Sequence\""),
            (["type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0]], nil, "post_processor RobertaProcessing"),
            ([1, 2], nil, "post_processor is not an object"),
            (["type": "Sequence", "processors": [byteLevel, 7]], nil, "post_processor.processors[1] is not an object"),
        ]
        for (post, config, needle) in refused {
            XCTAssertThrowsError(try load(post, config: config), needle) {
                XCTAssertTrue("\($0)".contains("post.json") && "\($0)".contains(needle), "\($0)")
                XCTAssertTrue("\($0)".contains("HINT"), "\($0)")
            }
        }
    }

    /// `pieces`: one text per token, joining to the decoded text, a character of several byte tokens
    /// given to the first of them; the same with `following:` (a continuation's decoding).
    func testPiecesJoinToTheDecodedText() throws {
        let tok = try BPETokenizer.load(json: Data(contentsOf: fixturesDir.appendingPathComponent("tokenizer_gpt2.json")))
        let text = "h\u{E9}llo \u{1F642} w\u{F6}rld"
        let ids = tok.encode(text)
        for previous in [nil, tok.encode("Say:").last] {
            let pieces = tok.pieces(ids, following: previous)
            XCTAssertEqual(pieces.count, ids.count)
            XCTAssertEqual(pieces.joined(), tok.decode(ids, following: previous))
            XCTAssertFalse(pieces.joined().contains("\u{FFFD}"))
        }
        // The emoji's four bytes are more than one token here: the first carries it, the rest are empty.
        let emoji = tok.encode(" \u{1F642}")
        XCTAssertGreaterThan(emoji.count, 2, "the fixture spells the emoji in byte tokens: \(emoji)")
        XCTAssertTrue(tok.pieces(emoji, following: nil).contains { $0.hasSuffix("\u{1F642}") }, "one piece holds the whole emoji")
        XCTAssertEqual(tok.pieces(emoji, following: nil).joined(), " \u{1F642}")
        XCTAssertTrue(tok.pieces(emoji, following: nil).contains(""), "\(tok.pieces(emoji, following: nil))")
        XCTAssertEqual(tok.pieces([], following: nil), [])
        assertScalarEndsMatchDecoding(tok)
        // Whole-character tokens read as themselves.
        let plain = tok.encode("the cat sat")
        XCTAssertEqual(tok.pieces(plain, following: nil), plain.map { tok.decode([$0]) })
    }

    /// A SentencePiece-style tokenizer.json (byte fallback) written by hand, needing no fetched data:
    /// where each form puts its space (Prepend normalizer: every stretch; Metaspace "first", "always",
    /// "never"), with a BOS in front the text still starts a text; byte tokens for a character the
    /// vocabulary lacks, else one fused unknown token; pieces read byte for byte (U+1F77 and U+03AF,
    /// a surrogate pair, a byte order mark before the file); decoding drops the first space only at
    /// the start (an unused id first does not count); written back, each reads the same.
    func testSentencePieceTokenizerJSONForms() throws {
        let normalizers = [
            "every": (#"{"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}"#, "null"),
            "first": ("null", #"{"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": false}"#),
            "always": ("null", #"{"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": false}"#),
            "never": ("null", #"{"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "never", "split": false}"#),
        ]
        func json(_ form: String, extraAdded: String = "") -> Data {
            let (n, p) = normalizers[form]!
            return Data(("\u{FEFF}" + #"""
            {"version": "1.0", "added_tokens": [{"id": 0, "content": "<unk>", "special": true}, {"id": 1, "content": "<s>", "special": true},
              {"id": 2, "content": "</s>", "special": true}\#(extraAdded)],
             "normalizer": \#(n), "pre_tokenizer": \#(p),
             "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                                "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
             "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
             "model": {"type": "BPE", "byte_fallback": true, "fuse_unk": true, "unk_token": "<unk>",
                       "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "\u2581": 3, "a": 4, "b": 5, "\u2581a": 6, "ab": 7, "\u2581ab": 8,
                                 "\u1f77": 9, "\u03af": 10, "\ud83d\ude00": 11, "<0xC3>": 12, "<0xA9>": 13, "<0xc3>": 15},
                       "merges": ["\u2581 a", "a b", "\u2581a b"]}}
            """#).utf8)
        }
        let every = try BPETokenizer.load(json: json("every"), file: "spm.json")
        let first = try BPETokenizer.load(json: json("first"), file: "spm.json")
        let always = try BPETokenizer.load(json: json("always"), file: "spm.json")
        let never = try BPETokenizer.load(json: json("never"), file: "spm.json")
        XCTAssertEqual([every, first, always, never].map(\.spacePrefix), [.everyStretch, .first, .always, .none])
        for (tok, texts) in [(every, [[8], [1, 8], [3, 8]]), (first, [[8], [1, 7], [8]]), (always, [[8], [1, 8], [8]]), (never, [[7], [1, 7], [8]])] {
            XCTAssertEqual(["ab", "<s>ab", " ab"].map { tok.encode($0) }, texts.map { $0.map(Int32.init) }, "\(tok.spacePrefix)")
            XCTAssertTrue(tok.addsBOS && tok.fusesUnknown)
            let back = try BPETokenizer.load(json: Data(tok.tokenizerJSON().utf8), file: "again.json")
            XCTAssertEqual(back.spacePrefix, tok.spacePrefix)
            for text in ["ab", "<s>ab", " ab", "a\u{1F77}\u{3AF}😀é ü"] { XCTAssertEqual(back.encode(text), tok.encode(text), "\(tok.spacePrefix) read back: \(text)") }
        }
        // With the BOS the tokenizer puts first, a text still starts a text (Metaspace "first" too).
        XCTAssertEqual(first.encode("ab", addBOS: true), [1, 8])
        XCTAssertEqual(first.encode("ab", following: nil), [8])
        XCTAssertEqual(first.encode("ab", following: 1), [7], "after an added token written in the text: no space with \"first\"")
        XCTAssertEqual(every.encode("ab", following: 8), [7], "a continuation gets no space put in front")
        XCTAssertEqual(every.encode(" ab", following: 8), [8])
        // Pieces byte for byte; a character the vocabulary lacks: its bytes' tokens, or one unknown token (fused).
        XCTAssertEqual(never.encode("\u{1F77}\u{3AF}😀"), [9, 10, 11])
        XCTAssertEqual(never.encode("é"), [12, 13])
        XCTAssertEqual(never.encode("üüa"), [0, 4], "ü (C3 BC) lacks a byte token: one <unk> for both, fused")
        XCTAssertEqual(never.tokenString(for: 15), "<0xc3>", "a lower-case spelling is a piece, not a byte token")
        XCTAssertEqual(never.tokenID(for: "<0xC3>"), 12)
        // Decoding: the first space goes only at the start; an unused id (14) before it does not count.
        XCTAssertEqual(every.decode([14, 8]), "ab")
        XCTAssertEqual(every.decode([8], following: 4), " ab")
        XCTAssertEqual(every.decode([1, 8]), "<s> ab")
        XCTAssertEqual(every.decode(every.encode("a\u{1F77}\u{3AF}😀é")), "a\u{1F77}\u{3AF}😀é")
        // An added token normalized under the Prepend normalizer is matched elsewhere by `tokenizers`: refused.
        XCTAssertThrowsError(try BPETokenizer.load(json: json("every", extraAdded: #", {"id": 14, "content": "<t>", "special": false, "normalized": true}"#), file: "spm.json")) {
            XCTAssertTrue("\($0)".contains("spm.json") && "\($0)".contains("normalized"), "\($0)")
        }
        XCTAssertNoThrow(try BPETokenizer.load(json: json("first", extraAdded: #", {"id": 14, "content": "<t>", "special": false, "normalized": true}"#), file: "spm.json"))
        // Token ends in one pass equal decoding each prefix, through every form's first-space strip.
        for tok in [every, first, always, never] { assertScalarEndsMatchDecoding(tok) }
    }

    /// `scalarEnds` against decoding each prefix, on random id sequences (byte tokens, added tokens,
    /// unused ids, ids outside the vocabulary, split characters), with and without a token before them; where it answers nil,
    /// the text holds bytes that are not UTF-8 and must decode with a replacement character.
    func assertScalarEndsMatchDecoding(_ tok: BPETokenizer, file: StaticString = #filePath, line: UInt = #line) {
        var state: UInt64 = 0x5EED
        func next(_ n: Int) -> Int {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Int((state >> 33) % UInt64(n))
        }
        var answered = 0, refused = 0
        for _ in 0..<400 {
            let ids = (0..<next(12)).map { _ in Int32(next(tok.vocabSize + 2)) - 1 }  // -1 and vocabSize: no text
            for previous in [nil, Int32(next(tok.vocabSize))] {
                let slow = ids.indices.map { tok.decode(Array(ids[...$0]), following: previous).unicodeScalars.count }
                if let fast = tok.scalarEnds(ids, following: previous) {
                    XCTAssertEqual(fast, slow, "\(ids) after \(String(describing: previous))", file: file, line: line)
                    answered += 1
                } else {
                    XCTAssertTrue(tok.decode(ids, following: previous).contains("\u{FFFD}"), "nil for \(ids)", file: file, line: line)
                    refused += 1
                }
            }
        }
        XCTAssertGreaterThan(answered, 100, "\(answered) answered, \(refused) left to decoding", file: file, line: line)
    }

    func testMalformedFilesThrowErrorsNamingTheFile() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("badtok-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let good = try JSONSerialization.jsonObject(with: Data(trainedTokenizer().tokenizerJSON().utf8)) as! [String: Any]
        func with(_ edit: (inout [String: Any], inout [String: Any]) -> Void) -> Data {
            var root = good
            var model = root["model"] as! [String: Any]
            edit(&root, &model)
            if root["model"] != nil { root["model"] = model }
            return try! JSONSerialization.data(withJSONObject: root)
        }
        let cases: [(String, Data, String)] = [
            ("not-json.json", Data("{\"model\": ".utf8), "not valid JSON"),
            ("array.json", Data("[1, 2]".utf8), "top level"),
            ("no-model.json", with { root, _ in root["model"] = nil }, "\"model\""),
            ("wordpiece.json", with { _, m in m["type"] = "WordPiece" }, "WordPiece"),
            ("no-vocab.json", with { _, m in m["vocab"] = nil }, "model.vocab"),
            ("bad-id.json", with { _, m in var v = m["vocab"] as! [String: Any]; v["Ġthe"] = "x"; m["vocab"] = v }, "Ġthe"),
            ("dup-id.json", with { _, m in var v = m["vocab"] as! [String: Any]; v["a"] = 98; m["vocab"] = v }, "id 98"),
            ("bad-merge.json", with { _, m in m["merges"] = [["Ġ", "zzzq"]] }, "model.merges[0]"),
            ("three-part.json", with { _, m in m["merges"] = ["a b c"] }, "model.merges[0]"),
            ("merge-type.json", with { _, m in m["merges"] = [42] }, "model.merges[0]"),
            ("unmade.json", with { _, m in m["merges"] = [["q", "q"]] }, "qq"),
            ("added.json", with { root, _ in root["added_tokens"] = [["content": "<x>"]] }, "added_tokens[0].id"),
            ("pre.json", with { root, _ in root["pre_tokenizer"] = ["type": "Whitespace"] }, "Whitespace"),
            ("prefix.json", with { root, _ in root["pre_tokenizer"] = ["type": "ByteLevel", "add_prefix_space": true] },
             "add_prefix_space"),
            ("norm.json", with { root, _ in root["normalizer"] = ["type": "NFKC"] }, "NFKC"),
        ]
        for (name, data, needle) in cases {
            let url = dir.appendingPathComponent(name)
            try data.write(to: url)
            XCTAssertThrowsError(try BPETokenizer.load(from: url), name) { error in
                let message = String(describing: error)
                XCTAssertTrue(message.contains(url.path), "\(name): error should name the file: \(message)")
                XCTAssertTrue(message.contains(needle), "\(name): error should mention \(needle): \(message)")
            }
        }
        let missing = dir.appendingPathComponent("missing.json")
        XCTAssertThrowsError(try BPETokenizer.load(from: missing)) { error in
            XCTAssertTrue(String(describing: error).contains(missing.path))
        }
    }

    // MARK: Reference (Hugging Face tokenizers) and fixtures

    /// The committed fixture tokenizers are what the trainer makes from tokenizer_corpus.txt today; with
    /// RECORD_TOKENIZER_FIXTURES=1 this test rewrites them instead (then re-run the Python script).
    func testFixtureTokenizersAreReproducible() throws {
        let record = ProcessInfo.processInfo.environment["RECORD_TOKENIZER_FIXTURES"] == "1"
        for (pre, file) in [(BPEPreTokenizer.gpt2, "tokenizer_gpt2.json"), (.digitsSplit, "tokenizer_digits.json")] {
            let json = try trainedTokenizer(pre).tokenizerJSON()
            let url = fixturesDir.appendingPathComponent(file)
            if record {
                try json.write(to: url, atomically: true, encoding: .utf8)
                continue
            }
            let committed = try String(contentsOf: url, encoding: .utf8)
            XCTAssertEqual(json, committed, "\(file) differs from a fresh training: re-record (see scripts/make_tokenizer_fixtures.py)")
        }
    }

    /// Ids, and pre-tokenized pieces, from Hugging Face `tokenizers` for the two fixture tokenizers this trainer
    /// wrote and for one that `tokenizers` trained itself (SmolLM2's layout: specials at 0-2, Digits + ByteLevel).
    func testMatchesHuggingFaceTokenizersOnSampleText() throws {
        let data = try Data(contentsOf: fixturesDir.appendingPathComponent("tokenizer_expected.json"))
        let root = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        let samples = root["samples"] as! [String]
        XCTAssertGreaterThan(samples.count, 30)
        for (name, pre) in [("gpt2", BPEPreTokenizer.gpt2), ("digits", .digitsSplit), ("hf", .digitsSplit)] {
            let ref = root[name] as! [String: Any]
            let tok = try BPETokenizer.load(from: fixturesDir.appendingPathComponent(ref["file"] as! String))
            XCTAssertEqual(tok.preTokenizer, pre)
            let ids = (ref["ids"] as! [[Int]]).map { $0.map(Int32.init) }
            let pieces = ref["pieces"] as! [[String]]
            for (k, s) in samples.enumerated() {
                let myPieces = tok.preTokenizer.split(s).map { ByteLevelAlphabet.encode($0.utf8) }
                XCTAssertEqual(myPieces, pieces[k], "\(name) pre-tokenization of sample \(k) \(s.debugDescription)")
                XCTAssertEqual(tok.encode(s), ids[k], "\(name) ids of sample \(k) \(s.debugDescription)")
                XCTAssertEqual(tok.decode(ids[k]), s, "\(name) decode of sample \(k)")
            }
            if name == "hf" {
                XCTAssertEqual(tok.vocabSize, 400)
                XCTAssertEqual([tok.unkTokenID, tok.bosTokenID, tok.eosTokenID], [0, 1, 2])
                XCTAssertEqual(tok.encode("<|im_start|>user\n2024<|im_end|>").first, 1)
            }
        }
    }

    /// Added tokens with `lstrip`, `rstrip`, `single_word` and `normalized` (matched in a second pass)
    /// give the ids `tokenizers` gives; the flags survive a save and load.
    func testAddedTokenFlagsMatchHuggingFaceTokenizers() throws {
        let data = try Data(contentsOf: fixturesDir.appendingPathComponent("tokenizer_expected.json"))
        let ref = (try JSONSerialization.jsonObject(with: data) as! [String: Any])["flags"] as! [String: Any]
        let tok = try BPETokenizer.load(from: fixturesDir.appendingPathComponent(ref["file"] as! String))
        let mask = try XCTUnwrap(tok.addedTokens.first { $0.content == "<mask>" })
        XCTAssertTrue(mask.lstrip && !mask.rstrip && mask.special && !mask.normalized)
        XCTAssertTrue(try XCTUnwrap(tok.addedTokens.first { $0.content == "word" }).singleWord)
        XCTAssertTrue(try XCTUnwrap(tok.addedTokens.first { $0.content == "xy" }).normalized)
        let samples = ref["samples"] as! [String], ids = (ref["ids"] as! [[Int]]).map { $0.map(Int32.init) }
        XCTAssertGreaterThan(samples.count, 30)
        let resaved = try BPETokenizer.load(json: Data(tok.tokenizerJSON().utf8), file: "resaved")
        XCTAssertEqual(resaved.addedTokens, tok.addedTokens, "the flags are written back")
        for (k, s) in samples.enumerated() {
            XCTAssertEqual(tok.encode(s), ids[k], "sample \(k) \(s.debugDescription)")
            XCTAssertEqual(resaved.encode(s), ids[k], "resaved: sample \(k)")
        }
    }
}
