// What training makes of a data file, example by example: the text as the tokenizer and chat
// template write it, and which of its tokens the loss learns. Wrong masks (a prompt learned, a
// reply not, a turn's end token missing) cost a whole run before they show in its losses; here
// they show before it starts.

import Foundation
import Tokenizers

/// One example as training writes it.
public struct ExamplePreview: Sendable, Encodable {
    /// Consecutive tokens that are all learned or all not, decoded.
    public struct Run: Sendable, Encodable, Equatable {
        public let text: String
        public let learned: Bool
        public let tokens: Int
    }
    public let file: String
    /// The example's line (nil for a text file's document).
    public let line: Int?
    public let tokens: Int
    public let learnedTokens: Int
    public let runs: [Run]
}

/// The examples `skip ..< skip + count` of the data at `path` (a file or folder, read as `loadDataset`
/// reads it), tokenized as training tokenizes them (`DataExample.tokenized`, through the tokenizer's
/// chat template for chat data), with the total number of examples and the JSONL keys their format
/// does not read (`DatasetSplits.unreadKeys`: a "text" beside "prompt" and "completion"); `columns` as `DatasetOptions.columns`.
/// - Throws: `DatasetError` naming the file and line: what `loadDataset` refuses (a bad line, chat
///   data without a template or ChatML's tokens, a conversation the template refuses).
public func previewExamples(_ path: String, tokenizer: Tokenizer, count: Int, skip: Int = 0, columns: ColumnMap = ColumnMap()) throws
    -> (format: DataFormat, total: Int, examples: [ExamplePreview], unreadKeys: [String: Int]) {
    let (format, located, unread) = try readLocatedExamples(path, columns: columns)
    if format == .chat { try checkChatWritable(tokenizer, data: path) }
    let shown = located.dropFirst(max(0, skip)).prefix(max(0, count))
    let previews = try shown.map { e -> ExamplePreview in
        let ex: TokenizedExample
        do { ex = try e.example.tokenized(tokenizer) } catch {
            throw DatasetError(file: e.file, line: e.line, message: "\(error)")
        }
        var runs: [ExamplePreview.Run] = []
        var start = 0
        for i in stride(from: 1, through: ex.ids.count, by: 1) where i == ex.ids.count || ex.learned[i] != ex.learned[start] {
            runs.append(.init(text: tokenizer.decode(Array(ex.ids[start..<i]), following: start > 0 ? ex.ids[start - 1] : nil),
                              learned: ex.learned[start], tokens: i - start))
            start = i
        }
        return ExamplePreview(file: e.file, line: e.line, tokens: ex.ids.count, learnedTokens: ex.learned.filter { $0 }.count, runs: runs)
    }
    return (format, located.count, previews, unread)
}
