// `swiftpeft preview`: the first examples of a data file as training writes them, the learned
// tokens marked, before a run spends hours on a wrong mask.
import ArgumentParser
import Foundation
import SwiftPEFT

struct Preview: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show examples of a data file as training writes them, with the tokens it learns marked.",
        discussion: helpText("""
        Each example is printed as the tokenizer (and, for chat data, the chat template) writes it:
        the learned text in green on a terminal, else between ⟦ and ⟧, with its token counts.
        The template is --chat-template's, else the one --adapter records, else the model's own.

        Examples:
          swiftpeft preview --model data/SmolLM2-135M-Instruct.Q4_1.gguf --data data/python-faq-train.jsonl
          swiftpeft preview --model base.gguf --data chats.jsonl --chat-template tools.jinja --examples 1 --skip 10
          swiftpeft preview --model base.gguf --data chats.jsonl --json
        """))

    @Option(help: "Base model whose tokenizer (and chat template) training uses: .h5, .gguf, a Hugging Face folder or a Hub id in the local cache.") var model: String
    @Option(help: "Data file, folder or pattern, or a Hub data set in the local Hugging Face cache (org/name:split).") var data: String
    @Option(help: "The data's own column names for the keys read, KEY=COLUMN,… (e.g. prompt=question,completion=answer; instruction=instruction,input=context,output=response for Dolly): each record's COLUMN is read as KEY.") var columns: String?
    @Option(help: "An adapter whose recorded chat template to use (the one it was trained with).") var adapter: String?
    @Option(help: "A chat template file (Jinja, or JSON with \"chat_template\") to use instead of the model's own and the adapter's.") var chatTemplate: String?
    @Option(help: "Examples to show.") var examples = 3
    @Option(help: "Examples to skip first.") var skip = 0
    @Option(help: "Tokens per sequence in training: examples longer than this + 1 are flagged.") var seqLen = 256
    @Option(help: "Colour the learned text: auto (on a terminal), always or never.") var color = "auto"
    @Flag(help: "Print one JSON object per example: file, line, tokens, learned_tokens, runs [{text, learned, tokens}].") var json = false

    func run() throws {
        let columnMap = try parseColumns(columns, keys: DatasetOptions.columnKeys)
        guard examples >= 1 else { throw CLIError("--examples must be at least 1, got \(examples)") }
        guard skip >= 0 else { throw CLIError("--skip must be 0 or more, got \(skip)") }
        guard seqLen >= 1 else { throw CLIError("--seq-len must be at least 1, got \(seqLen)") }
        guard ["auto", "always", "never"].contains(color) else { throw CLIError("--color must be auto, always or never, got '\(color)'") }
        let loaded = try loadModel(model)
        guard let tokenizer = loaded.tokenizer else { throw CLIError("\(model) holds no tokenizer; the data cannot be tokenized") }
        let own = tokenizer.chatTemplate
        try useChatTemplate(file: chatTemplate, adapters: adapter.map { [$0] } ?? [], on: tokenizer)
        let (format, total, shown, unread) = try previewExamples(data, tokenizer: tokenizer, count: examples, skip: skip, columns: columnMap)
        guard skip < total else {
            throw CLIError("--skip \(skip) passes every example: \(data) holds \(total) \(total == 1 ? "example" : "examples"); give --skip below \(total)")
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            encoder.keyEncodingStrategy = .convertToSnakeCase
            for e in shown { print(String(decoding: try encoder.encode(e), as: UTF8.self)) }
            return
        }
        let colored = color == "always" || (color == "auto" && isatty(STDOUT_FILENO) != 0)
        let recorded = chatTemplate == nil && tokenizer.chatTemplate != own  // the adapter's, used
        let template = chatTemplate.map { "--chat-template \($0)" }
            ?? (tokenizer.chatTemplate == nil ? nil : recorded ? "the chat template \(adapter!) records" : "\(model)'s chat template")
        print("\(data): \(format.rawValue), \(total) example\(total == 1 ? "" : "s"); showing \(shown.isEmpty ? "none" : "\(skip + 1)–\(skip + shown.count)")"
              + (format == .chat ? " through \(template ?? "ChatML (the tokenizer has no chat template)")" : ""))
        if !unread.isEmpty { print(describeUnreadKeys(unread)) }
        print(colored ? "learned text in \u{1B}[1;32mgreen\u{1B}[0m" : "learned text between ⟦ and ⟧")
        for (k, e) in shown.enumerated() {
            print("\n── example \(skip + k + 1)\(e.line.map { [".parquet", ".arrow", ".feather"].contains(where: e.file.lowercased().hasSuffix) ? " (row \($0))" : " (line \($0))" } ?? ""): \(e.tokens) tokens, \(e.learnedTokens) learned"
                  + (e.tokens > seqLen + 1 ? "; longer than --seq-len \(seqLen) + 1 (padding cuts it there; packing spreads it over rows)" : "") + " ──")
            print(e.runs.map { r in r.learned ? (colored ? "\u{1B}[1;32m\(r.text)\u{1B}[0m" : "⟦\(r.text)⟧") : r.text }.joined())
            if e.learnedTokens == 0 { print("(nothing is learned from this example: training leaves its row out)") }
        }
    }
}
