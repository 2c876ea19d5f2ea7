// Dataset.swift: the training data layer: examples → rows of T + 1 tokens with loss masks (packed or padded),
// a seeded train/validation split, and summaries. Reading files and templates: Dataset+JSONL.swift; batches,
// resumable iteration and masked evaluation: Dataset+Batches.swift.

import Foundation
import TensorCore
import NN
import Models
import Tokenizers
import PEFT
import Containers
import Formats

/// A data file or option that cannot be used. Reads `path:line: message` (or `path: message` when no line).
public struct DatasetError: Error, CustomStringConvertible, Equatable {
    /// The file (or folder) at fault.
    public let file: String
    /// 1-based line number in a JSONL file (the line a record starts on; a Parquet file's row), or nil
    /// when the error concerns the whole file.
    public let line: Int?
    /// What is wrong, as a sentence.
    public let message: String

    public init(file: String, line: Int?, message: String) {
        self.file = file
        self.line = line
        self.message = message
    }

    /// "file:line: message"; for a Parquet file, whose records are rows, "file: row N: message".
    public var description: String {
        guard let line else { return "\(file): \(message)" }
        return file.lowercased().hasSuffix(".parquet") ? "\(file): row \(line): \(message)" : "\(file):\(line): \(message)"
    }
}

/// Where validation examples come from.
public enum ValidationSplit: Sendable, Equatable {
    /// No validation set.
    case none
    /// This fraction (0 ≤ f < 1) of the examples, chosen by a seeded shuffle (at least one example when f > 0
    /// and there are two or more, and never all of them).
    case fraction(Double)
    /// Every example of another path (file or folder) of the same format.
    case file(String)
    /// The validation split of a data folder whose files name splits (mlx-lm's valid.jsonl beside
    /// train.jsonl, `localSplitFiles`); for any other data, this fraction, as `.fraction`.
    case folderSplitElseFraction(Double)
}

/// How examples become training rows.
public struct DatasetOptions: Sendable {
    /// T: tokens per row fed to the model (each row holds T + 1 tokens: T inputs and T shifted targets).
    public var seqLen: Int
    /// Pack examples back to back into rows (an example may span rows), or one example per row, padded.
    /// Plain-text files are always packed.
    public var packing: Bool
    /// Where validation examples come from (default: a seeded 10%).
    public var validation: ValidationSplit
    /// Seed of the validation split (0 by default; `train` leaves it there whatever its `--seed`, so runs
    /// of different seeds are validated on the same examples).
    public var seed: UInt64
    /// Put the tokenizer's BOS id (if it has one) in front of every example but those a chat template
    /// writes (it writes its own); it is never learned. nil (the default): as the tokenizer does
    /// (`Tokenizer.addsBOS`, true for Llama 3's).
    public var addBOS: Bool?
    /// The data's own column names for the keys read (`--columns`; training and validation files alike).
    public var columns: ColumnMap

    public init(seqLen: Int = 256, packing: Bool = true, validation: ValidationSplit = .fraction(0.1),
                seed: UInt64 = 0, addBOS: Bool? = nil, columns: ColumnMap = ColumnMap()) {
        self.seqLen = seqLen
        self.packing = packing
        self.validation = validation
        self.seed = seed
        self.addBOS = addBOS
        self.columns = columns
    }

    /// The keys `columns` may name: those of every record format.
    public static let columnKeys = ["text", "prompt", "completion", "instruction", "input", "output", "messages", "conversations",
                                    "system", "tools", "chat_template_kwargs"]
}

/// Counts that describe a data set, for printing before training.
public struct DatasetSummary: Codable, Equatable, Sendable, CustomStringConvertible {
    public var format: DataFormat
    /// Examples that went into the rows (for plain text: chunks, see `loadDataset`).
    public var examples: Int
    public var rows: Int
    /// T.
    public var seqLen: Int
    public var packed: Bool
    /// Real (non-padding) input tokens over all rows.
    public var tokens: Int
    /// Target positions trained on.
    public var learnedTargets: Int
    /// Target positions whose next token is real but not learned (prompt, chat template, user turns).
    public var maskedTargets: Int
    /// Input positions that are padding.
    public var paddingPositions: Int
    /// Examples longer than T + 1 tokens (packing spreads them over several rows; padding truncates them).
    public var longExamples: Int
    /// Examples cut to T + 1 tokens (padding mode only).
    public var truncatedExamples: Int
    /// Tokens dropped by truncation.
    public var truncatedTokens: Int
    /// Rows left out because not one of their targets is learned (e.g. a prompt that fills the whole row).
    public var droppedRows: Int

    /// Masked share of the real target positions: how much of the data is prompt.
    public var maskedFraction: Double {
        let real = learnedTargets + maskedTargets
        return real == 0 ? 0 : Double(maskedTargets) / Double(real)
    }

    public var description: String {
        func pct(_ x: Double) -> String { String(format: "%.1f%%", 100 * x) }
        var s = "\(counted(examples, format.rawValue + " example")) → \(counted(rows, "row")) of \(seqLen) tokens "
            + "(\(packed ? "packed" : "padded")); \(counted(tokens, "token")), \(counted(learnedTargets, "learned target")), "
            + "\(pct(maskedFraction)) of targets masked"
        if paddingPositions > 0 { s += ", \(pct(Double(paddingPositions) / Double(max(1, rows * seqLen)))) padding" }
        if truncatedExamples > 0 {
            s += "; \(counted(truncatedExamples, "example")) longer than \(seqLen + 1) tokens truncated (\(counted(truncatedTokens, "token")) dropped)"
        } else if longExamples > 0 {
            s += "; \(counted(longExamples, "example")) longer than \(seqLen + 1) tokens \(longExamples == 1 ? "spans" : "span") several rows"
        }
        if droppedRows > 0 { s += "; \(counted(droppedRows, "row")) without a learned token left out" }
        return s
    }
}

/// Rows of T + 1 tokens with loss masks, ready to batch (`batch(rows:)`, `BatchIterator`).
///
/// Packing: the examples' tokens are concatenated (each example already ends with EOS, see
/// `DataExample.tokenized`) and cut into rows at stride T, each T + 1 long, so consecutive rows share one token
/// and every token but the first is a target exactly once; an example may span rows, and attention crosses
/// example boundaries within a row (as in Hugging Face packing without position resets). Only the last row can
/// be short: it is padded on the right, which causal attention never sees, so packed batches carry no mask.
///
/// Padding: one example per row, cut to T + 1 tokens when longer (counted in `summary.truncatedExamples`; the
/// end is dropped, which for a long prompt may leave nothing to learn), then padded on the right with the pad
/// id (else EOS, else 0); batches carry an attention mask (1 real, 0 padding).
///
/// Either way the target at position t is `row[t + 1]` when that token is learned, else -100; rows with no
/// learned target are left out and counted in `summary.droppedRows`.
public struct Dataset: Sendable {
    /// T.
    public let seqLen: Int
    /// True for padded rows: batches carry an attention mask.
    public let usesAttentionMask: Bool
    var tokens: [Int32]  // (N, T + 1)
    var learned: [Bool]  // (N, T + 1)
    var lengths: [Int]  // (N): real tokens per row
    /// Counts for printing (examples, rows, tokens, masked fraction, truncation).
    public private(set) var summary: DatasetSummary
    /// FNV-1a hash of the rows, stored in `BatchPosition` so a resume notices changed data.
    public let fingerprint: UInt64

    /// Number of rows.
    public var count: Int { lengths.count }

    /// Rows from tokenized examples (see the type's documentation for packing and padding).
    public init(examples: [TokenizedExample], format: DataFormat, seqLen T: Int, packing: Bool, padID: Int32) {
        check(T >= 1, "[Dataset] seqLen must be at least 1, got \(T)")
        var tokens: [Int32] = [], learned: [Bool] = [], lengths: [Int] = []
        var truncated = 0, truncatedTokens = 0, dropped = 0
        let long = examples.reduce(0) { $0 + ($1.ids.count > T + 1 ? 1 : 0) }
        func addRow(_ ids: ArraySlice<Int32>, _ flags: ArraySlice<Bool>) {
            guard flags.dropFirst().contains(true) else { dropped += 1; return }
            tokens += ids
            learned += flags
            let pad = T + 1 - ids.count
            tokens += [Int32](repeating: padID, count: pad)
            learned += [Bool](repeating: false, count: pad)
            lengths.append(ids.count)
        }
        if packing {
            let ids = examples.flatMap(\.ids), flags = examples.flatMap(\.learned)
            var start = 0
            while start + 1 < ids.count {
                let end = min(start + T + 1, ids.count)
                addRow(ids[start..<end], flags[start..<end])
                start += T
            }
        } else {
            for ex in examples {
                let n = min(ex.ids.count, T + 1)
                if ex.ids.count > n {
                    truncated += 1
                    truncatedTokens += ex.ids.count - n
                }
                addRow(ex.ids[..<n], ex.learned[..<n])
            }
        }
        self.init(seqLen: T, usesAttentionMask: !packing, tokens: tokens, learned: learned, lengths: lengths,
                  format: format, examples: examples.count)
        summary.longExamples = long
        summary.truncatedExamples = truncated
        summary.truncatedTokens = truncatedTokens
        summary.droppedRows = dropped
    }

    init(seqLen T: Int, usesAttentionMask: Bool, tokens: [Int32], learned: [Bool], lengths: [Int],
         format: DataFormat, examples: Int) {
        seqLen = T
        self.usesAttentionMask = usesAttentionMask
        self.tokens = tokens
        self.learned = learned
        self.lengths = lengths
        var s = DatasetSummary(format: format, examples: examples, rows: lengths.count, seqLen: T,
                               packed: !usesAttentionMask, tokens: 0, learnedTargets: 0, maskedTargets: 0,
                               paddingPositions: 0, longExamples: 0, truncatedExamples: 0, truncatedTokens: 0, droppedRows: 0)
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        func mix(_ x: UInt64) { h = (h ^ x) &* 0x0000_0100_0000_01B3 }
        mix(UInt64(T))
        for (r, len) in lengths.enumerated() {
            s.tokens += min(len, T)
            s.paddingPositions += T - min(len, T)
            mix(UInt64(len))
            for t in 0..<(T + 1) {
                let i = r * (T + 1) + t
                mix(UInt64(UInt32(bitPattern: tokens[i])) << 1 | (learned[i] ? 1 : 0))
                if t >= 1 && t < len {
                    if learned[i] { s.learnedTargets += 1 } else { s.maskedTargets += 1 }
                }
            }
        }
        summary = s
        fingerprint = h
    }

    /// The rows at `indices` as a new data set (its summary counts each row as one example).
    func subset(_ indices: [Int]) -> Dataset {
        let W = seqLen + 1
        return Dataset(seqLen: seqLen, usesAttentionMask: usesAttentionMask,
                       tokens: indices.flatMap { tokens[($0 * W)..<(($0 + 1) * W)] },
                       learned: indices.flatMap { learned[($0 * W)..<(($0 + 1) * W)] },
                       lengths: indices.map { lengths[$0] }, format: summary.format, examples: indices.count)
    }
}

/// A training set and an optional validation set, built by `loadDataset`.
public struct DatasetSplits: Sendable, CustomStringConvertible {
    public var format: DataFormat
    public var train: Dataset
    /// Nil with `.none`, or when the split left no validation rows.
    public var validation: Dataset?
    /// Keys of the records (training and validation files) that their format does not read,
    /// with the number of records holding each: a misspelled "promt", or a dataset's "id".
    public var unreadKeys: [String: Int] = [:]
    /// Where each side was read from when that was a split of a folder ("the train split of data/: train.jsonl").
    public var trainSource: String?, validationSource: String?

    public var description: String {
        "train\(trainSource.map { " (\($0))" } ?? ""): \(train.summary)"
            + (validation.map { "\nvalidation\(validationSource.map { " (\($0))" } ?? ""): \($0.summary)" } ?? "\nvalidation: none")
            + (unreadKeys.isEmpty ? "" : "\n" + describeUnreadKeys(unreadKeys))
    }
}

/// "keys not read: "text" (1 example), "id" (3 examples)": keys of the records (JSONL lines, array items,
/// table or Parquet rows) that their format does not read, with the number of examples holding each.
public func describeUnreadKeys(_ keys: [String: Int]) -> String {
    "keys not read: " + keys.sorted { $0.key < $1.key }.map { "\"\($0.key)\" (\($0.value) example\($0.value == 1 ? "" : "s"))" }.joined(separator: ", ")
}

/// Reads `path` (see `readExamples`), tokenizes, splits and builds rows.
///
/// JSONL examples are split first (by example, seeded, deterministic: the same seed and data give the same
/// split, whatever T and packing are), then each side is packed or padded. Plain text has no examples to split
/// by: all documents are tokenized, joined (each followed by EOS) and cut into rows of T + 1 tokens, and each row
/// is an example for the split. Prompt/completion and instruction data need a tokenizer with an EOS id: the
/// model learns to stop with it.
public func loadDataset(_ path: String, tokenizer: Tokenizer, options o: DatasetOptions = DatasetOptions()) throws
    -> DatasetSplits {
    var o = o
    if case .folderSplitElseFraction(let f) = o.validation {
        o.validation = (try? localSplitFiles(path + ":validation")) != nil ? .file(path + ":validation") : .fraction(f)
    }
    guard o.seqLen >= 1 else { throw DatasetError(file: path, line: nil, message: "the sequence length must be at least 1, got \(o.seqLen)") }
    if case .fraction(let f) = o.validation, !(f >= 0 && f < 1) {
        throw DatasetError(file: path, line: nil, message: "the validation fraction (--val-fraction) must be in [0, 1), got \(f)")
    }
    let (format, examples, trainUnread) = try readLocatedExamples(path, columns: o.columns)
    var unreadKeys = trainUnread
    if [.promptCompletion, .instruction].contains(format) && tokenizer.eosTokenID == nil {
        throw DatasetError(file: path, line: nil, message: "\(format.rawValue) data needs a tokenizer with an "
            + "end-of-sequence token, which the model learns to stop with; this tokenizer has none")
    }
    if format == .chat { try checkChatWritable(tokenizer, data: path) }
    var validationExamples: [LocatedExample]?
    if case .file(let vpath) = o.validation {
        let folder = URL(fileURLWithPath: path).standardizedFileURL.resolvingSymlinksInPath().path
        let file = URL(fileURLWithPath: vpath).standardizedFileURL.resolvingSymlinksInPath().path
        if file == folder {
            throw DatasetError(file: vpath, line: nil, message: "the validation data is the training data (\(path)): "
                + "its scores would measure what the model was trained on; give --val-data another file, or --val-fraction instead")
        }
        let (vformat, v, vUnread) = try readLocatedExamples(vpath, columns: o.columns)
        // A file read as both would be trained on and scored (a folder reads every file, unless its files name splits).
        func resolved(_ f: String) -> String { URL(fileURLWithPath: f).standardizedFileURL.resolvingSymlinksInPath().path }
        let trained = Set(examples.map { resolved($0.file) })
        if let shared = v.first(where: { trained.contains(resolved($0.file)) })?.file {
            throw DatasetError(file: vpath, line: nil, message: "the validation data is inside the training data (\(path) reads \(shared) too): "
                + "it would be trained on as well. Move it out of \(path), or name the files by split (train.jsonl, valid.jsonl), "
                + "which a folder is then read by")
        }
        unreadKeys.merge(vUnread, uniquingKeysWith: +)
        guard vformat == format else {
            throw DatasetError(file: vpath, line: nil, message: "the validation data is \(vformat.rawValue) but the "
                + "training data (\(path)) is \(format.rawValue)")
        }
        validationExamples = v
    }
    let padID = tokenizer.padTokenID ?? tokenizer.eosTokenID ?? 0
    let packing = o.packing || format == .plainText
    func build(_ ex: [LocatedExample]) throws -> Dataset {
        let tokenized = try ex.map { e in
            do {
                return try e.example.tokenized(tokenizer, addBOS: o.addBOS)
            } catch {
                throw DatasetError(file: e.file, line: e.line, message: "\(error)")
            }
        }
        return Dataset(examples: tokenized, format: format, seqLen: o.seqLen, packing: packing, padID: padID)
    }
    var splits: DatasetSplits
    if format == .plainText {
        let all = try build(examples)
        var train = all, validation: Dataset?
        if case .fraction(let f) = o.validation {
            let (t, v) = splitIndices(count: all.count, fraction: f, seed: o.seed)
            (train, validation) = (all.subset(t), all.subset(v))
        } else {
            train = all.subset(Array(0..<all.count))
            validation = try validationExamples.map { let v = try build($0); return v.subset(Array(0..<v.count)) }
        }
        splits = DatasetSplits(format: format, train: train, validation: validation)
    } else if let v = validationExamples {
        splits = DatasetSplits(format: format, train: try build(examples), validation: try build(v))
    } else {
        var f = 0.0
        if case .fraction(let x) = o.validation { f = x }
        let (t, v) = splitIndices(count: examples.count, fraction: f, seed: o.seed)
        splits = DatasetSplits(format: format, train: try build(t.map { examples[$0] }),
                               validation: v.isEmpty ? nil : try build(v.map { examples[$0] }))
    }
    if splits.validation?.count == 0 { splits.validation = nil }
    splits.unreadKeys = unreadKeys
    // A folder's split: say which, and its files.
    func source(_ p: String) -> String? {
        guard let files = try? localSplitFiles(p) else { return nil }
        let colon = FileManager.default.fileExists(atPath: p) ? nil : p.lastIndex(of: ":")
        let (folder, split) = colon.map { (String(p[..<$0]), String(p[p.index(after: $0)...])) } ?? (p, "train")
        return "the \(split) split of \(folder): " + files.map { ($0 as NSString).lastPathComponent }.joined(separator: ", ")
    }
    splits.trainSource = source(path)
    if case .file(let v) = o.validation { splits.validationSource = source(v) }
    guard splits.train.count > 0 else {
        throw DatasetError(file: path, line: nil, message: "no training rows: \(splits.train.summary)")
    }
    return splits
}

/// Refuses chat data at `path` for a tokenizer that can write no chat: no template (or one that
/// cannot be read), and no ChatML end token.
func checkChatWritable(_ tokenizer: Tokenizer, data path: String) throws {
    let writable: Bool
    do {
        writable = try canWriteChat(tokenizer)
    } catch {
        throw DatasetError(file: path, line: nil, message: "the tokenizer's chat template cannot be read: \(error)")
    }
    guard writable else {
        throw DatasetError(file: path, line: nil, message: "this tokenizer has no chat template, and no "
            + "\(chatMLEnd) token for ChatML, whose replies end with it (it would be spelled in pieces and the model would never "
            + "stop). Use a chat model's tokenizer (SmolLM2, Qwen2, Llama 3) or prompt/completion data")
    }
}

/// A seeded split of `0..<n` into (train, validation), both sorted: `round(fraction·n)` validation indices,
/// at least 1 when fraction > 0 and n ≥ 2, at most n − 1.
public func splitIndices(count n: Int, fraction: Double, seed: UInt64) -> (train: [Int], validation: [Int]) {
    var rng = RNG(seed: seed ^ 0x5EED_5B17)  // a stream of its own, apart from batch shuffling's
    let perm = shuffledIndices(n, &rng)
    let k = fraction > 0 && n >= 2 ? min(n - 1, max(1, Int((fraction * Double(n)).rounded()))) : 0
    return (perm[k...].sorted(), perm[..<k].sorted())
}

/// Fisher–Yates shuffle of `0..<n` drawing from `rng`.
func shuffledIndices(_ n: Int, _ rng: inout RNG) -> [Int] {
    var p = Array(0..<n)
    var i = n - 1
    while i > 0 {
        p.swapAt(i, rng.nextInt(i + 1))
        i -= 1
    }
    return p
}
