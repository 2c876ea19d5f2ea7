// Back-testing adapter versions: the same prompts through the base and every adapter version, with
// the output, the loss of the expected answer, exact match / contains / ROUGE-L against it, token
// counts, latency and cost per answer. The prompts come from JSONL: a template with {variables}
// (inline or from a file), their values, and optionally an expected answer and tags.
// BacktestReport.swift writes the report folder.

import Foundation
import TensorCore
import Models
import Tokenizers
import PEFT
import Formats
import Containers

/// One prompt of a back-test, its template filled in.
public struct BacktestPrompt: Codable, Equatable, Sendable {
    /// "id" from the line, or "line N".
    public var id: String
    /// The template with every {variable} replaced; for a chat prompt, the conversation as the
    /// model's chat template writes it, filled in by `runBacktest` (empty until then).
    public var prompt: String
    public var expected: String?
    public var tags: [String]
    /// A chat prompt: the conversation the reply continues.
    public var messages: [ChatMessage]?
    /// The tools (JSON schemas) a chat prompt's template is given.
    public var tools: [JSONValue]?
    /// A chat prompt's expected reply when it calls tools: `expected` is then its text as the
    /// model's template writes it (e.g. `<tool_call>…</tool_call>`), filled in by `runBacktest`.
    public var reply: ChatMessage?
    /// A chat prompt's chat template variables (`chat_template_kwargs`, e.g. `enable_thinking`).
    public var templateKwargs: JSONObject?

    public init(id: String, prompt: String, expected: String?, tags: [String], messages: [ChatMessage]? = nil, tools: [JSONValue]? = nil) {
        (self.id, self.prompt, self.expected, self.tags, self.messages, self.tools) = (id, prompt, expected, tags, messages, tools)
    }
}

/// A prompts file that cannot be used: names the file and line.
public struct BacktestError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Fills `{name}` in `template` from `variables`; `{{` and `}}` stand for literal braces, and a brace
/// that does not enclose a name (`{'a': 1}`) is kept as it is. Every name must have a value and every
/// value must be used; a `{name` that no later `}` closes is an error (a placeholder missing its brace).
/// `at` names the place in errors ("prompts.jsonl:3").
public func renderTemplate(_ template: String, _ variables: [String: String], at: String) throws -> String {
    var out = "", used = Set<String>()
    var i = template.startIndex
    func isNameChar(_ c: Character, first: Bool) -> Bool { c == "_" || (c.isASCII && (c.isLetter || (!first && c.isNumber))) }
    while i < template.endIndex {
        let c = template[i]
        let next = template.index(after: i)
        if (c == "{" || c == "}") && next < template.endIndex && template[next] == c {  // {{ or }}
            out.append(c)
            i = template.index(after: next)
            continue
        }
        if c == "{", let close = template[next...].firstIndex(of: "}") {
            let name = String(template[next..<close])
            if let f = name.first, isNameChar(f, first: true), name.allSatisfy({ isNameChar($0, first: false) }) {
                guard let v = variables[name] else {
                    let given = variables.isEmpty ? "no variables given" : "variables: " + variables.keys.sorted().joined(separator: ", ")
                    throw BacktestError("\(at): the template uses {\(name)} but the line gives it no value (\(given); write {{ and }} for literal braces)")
                }
                out += v
                used.insert(name)
                i = template.index(after: close)
                continue
            }
        }
        // "{name" that nothing closes is a placeholder missing its "}", not text: it would reach the model as typed.
        if c == "{", next < template.endIndex, isNameChar(template[next], first: true), !template[next...].contains("}") {
            let name = template[next...].prefix { isNameChar($0, first: false) }
            throw BacktestError("\(at): the template's \"{\(name)\" is never closed by \"}\"; write {\(name)} for the variable, or {{ for a literal brace")
        }
        out.append(c)
        i = next
    }
    if let unused = variables.keys.sorted().first(where: { !used.contains($0) }) {
        throw BacktestError("\(at): the variable \"\(unused)\" is not used by the template")
    }
    return out
}

/// The fields of a back-test prompt that `--columns` may name.
public let backtestColumnKeys = ["id", "prompt", "vars", "expected", "completion", "tags", "messages", "conversations", "system", "tools",
                                 "chat_template_kwargs"]

/// Reads a prompts file of records, as training data is read (`readExampleFile`): one JSON object per
/// line, or a `.json` array of objects, a `.csv`/`.tsv` table whose header names the fields (an
/// empty cell is a field not given) or a `.parquet` file (a null value is a field not given), each record with
/// - `"template"` (text with `{variables}`), `"template_file"` (a file, relative to the prompts
///   file's folder) or `"prompt"` (literal text); `defaultTemplate` serves lines that give none;
/// - `"vars"`: the variables' values (strings or numbers);
/// - optionally `"id"` (a string, or a number), `"expected"` (the answer the output is scored against) and `"tags"`
///   (a string or a list of strings).
/// A training file's `{"prompt", "completion"}` lines serve as they are: the completion is the
/// expected answer. So do its chat lines, `{"messages": [...]}` or ShareGPT's `{"conversations": [...]}`
/// (`conversation(_:in:fail:)`): the conversation is the prompt,
/// written by the model's chat template with the prompt for a reply (and `"tools"` and
/// `"chat_template_kwargs"` beside them); a
/// final assistant message is the expected answer, its text or, when it calls tools, its calls as
/// the template writes them.
/// Blank lines are skipped; anything else that is wrong is an error naming the file and line. A file of
/// another extension is read as JSON Lines. A pattern ("evals/*.jsonl") reads every matching file of
/// records in sorted order, and a Hub data set's id one split of it from the local Hugging Face cache
/// ("openai/gsm8k:main:test"; `dataFiles`); a prompt without an "id" is then named by its file and
/// line. `columns` names the data's own columns for these fields (`backtestColumnKeys`; a data set's "question" as "prompt", its "answer" as "expected"); with it,
/// the columns it does not name are left unread instead of refused as unknown fields.
public func loadBacktestPrompts(_ path: String, defaultTemplate: String? = nil, columns: ColumnMap = ColumnMap()) throws -> [BacktestPrompt] {
    let resolved: (path: String, files: [String]?)
    do { resolved = try dataFiles(path) } catch let e as DatasetError { throw BacktestError(e.description) }
    let files = resolved.files ?? [resolved.path]
    var templates: [String: String] = [:]
    var prompts: [BacktestPrompt] = []
    var ids = Set<String>()
    for file in files {
        try loadBacktestPrompts(file, named: files.count > 1, defaultTemplate: defaultTemplate, columns: columns, into: &prompts, ids: &ids, templates: &templates)
    }
    guard !prompts.isEmpty else { throw BacktestError("\(path): no prompts (one JSON object per line, a JSON array of objects, a CSV/TSV table or a Parquet file)") }
    return prompts
}

/// One prompts file's prompts, appended to `prompts`; `named`: one file of several, whose prompts
/// without an "id" are named by the file's name and their line.
private func loadBacktestPrompts(_ path: String, named: Bool, defaultTemplate: String?, columns: ColumnMap, into prompts: inout [BacktestPrompt],
                                 ids: inout Set<String>, templates: inout [String: String]) throws {
    let format = DataRecordFormat(path: path) ?? .jsonLines
    let columnar = format == .parquet || format == .arrow  // files of binary pages, rows numbered from 1
    let folder = URL(fileURLWithPath: path).deletingLastPathComponent()
    let known = Set(backtestColumnKeys + ["template", "template_file", "conversation"])
    let records: [DataRecord]
    do { records = try readDataRecords(path, as: format) } catch let e as DatasetError { throw BacktestError(e.description) }
    for record in records {
        let at = columnar ? "\(path): row \(record.line)" : "\(path):\(record.line)"
        if case .text(let bytes) = record.content, String(data: bytes, encoding: .utf8) == nil { throw BacktestError("\(at): not UTF-8 text") }
        guard let read = (try? record.foundationValue()) as? [String: Any] else { throw BacktestError("\(at): not a JSON object") }
        var obj = columns.rename(read) { _ in }
        if !columns.isEmpty { obj = obj.filter { known.contains($0.key) } }
        // A table cannot leave a cell out: an empty one is a field not given (no "expected", no "id").
        if format == .csv || format == .tsv { obj = obj.filter { ($0.value as? String) != "" } }
        if let k = obj.keys.sorted().first(where: { !known.contains($0) }) {
            throw BacktestError("\(at): unknown field \"\(k)\"; fields: \(known.sorted().joined(separator: ", "))")
        }
        func string(_ key: String) throws -> String? {
            guard let v = obj[key], !(v is NSNull) else { return nil }
            guard let s = v as? String else { throw BacktestError("\(at): \"\(key)\" must be a string") }
            return s
        }
        var variables: [String: String] = [:]
        if let v = obj["vars"] {
            guard let d = v as? [String: Any] else { throw BacktestError("\(at): \"vars\" must be an object of names to values") }
            for (k, value) in d {
                switch value {
                case let s as String: variables[k] = s
                // JSON's true and false arrive as NSNumbers too (objCType "c"): "1" for true is not a value a user wrote.
                case let x as NSNumber where String(cString: x.objCType) != "c": variables[k] = "\(x)"
                default: throw BacktestError("\(at): the variable \"\(k)\" must be a string or a number")
                }
            }
        }
        let given = [try string("template"), try string("template_file"), try string("prompt")].compactMap { $0 }
        let chatKey = conversationKey(in: obj)
        guard given.count + (chatKey == nil ? 0 : 1) <= 1 else {
            throw BacktestError("\(at): give one of \"template\", \"template_file\", \"prompt\" and \"messages\" (or ShareGPT's \"conversations\")")
        }
        var prompt = "", chat: [ChatMessage]?, tools: [JSONValue]?, kwargs: JSONObject?, reply: ChatMessage?, answer = try string("expected") ?? string("completion")
        if let chatKey {
            guard variables.isEmpty else { throw BacktestError("\(at): \"\(chatKey)\" are literal text; \"vars\" fill a \"template\"") }
            guard chatKey != "messages" || obj["system"] == nil else {
                throw BacktestError("\(at): \"system\" goes with ShareGPT's \"conversations\"; with \"messages\", give a first message whose role is \"system\"")
            }
            // Read again keeping the order of keys, which the chat template sees (tool schemas, arguments).
            let ordered: JSONValue
            do { ordered = columns.rename(try record.ordered()) } catch { throw BacktestError("\(at): not JSON that can be read (\(error))") }
            var turns = try parseChatMessages(try conversation(chatKey, in: ordered) { BacktestError("\(at): \($0)") }) { BacktestError("\(at): \($0)") }
            tools = try parseTools(ordered["tools"]) { BacktestError("\(at): \($0)") }
            kwargs = try parseTemplateKwargs(ordered["chat_template_kwargs"]) { BacktestError("\(at): \($0)") }
            if turns.last?.role == "assistant" {
                guard answer == nil else { throw BacktestError("\(at): give \"expected\" or a final assistant message, not both") }
                if turns.last!.toolCallNames.isEmpty {
                    answer = turns.removeLast().content
                } else {
                    reply = turns.removeLast()
                }
            }
            guard !turns.isEmpty else { throw BacktestError("\(at): the conversation has no message before the reply") }
            chat = turns
        } else if let k = ["tools", "chat_template_kwargs", "system"].first(where: { obj[$0] != nil }) {
            throw BacktestError("\(at): \"\(k)\" go\(k == "system" ? "es" : "") with \"messages\" or \"conversations\" (the chat template takes \(k == "system" ? "it" : "them"))")
        } else if let literal = try string("prompt") {
            guard variables.isEmpty else { throw BacktestError("\(at): \"prompt\" is literal text; use \"template\" with \"vars\"") }
            prompt = literal
        } else {
            var template = try string("template")
            if let file = try string("template_file") {
                let p = file.hasPrefix("/") ? file : folder.appendingPathComponent(file).path
                if templates[p] == nil {
                    guard let t = FileManager.default.contents(atPath: p).flatMap({ String(data: $0, encoding: .utf8) }) else {
                        throw BacktestError("\(at): cannot read the template file \(p)")
                    }
                    templates[p] = t
                }
                template = templates[p]
            }
            guard let t = template ?? defaultTemplate else {
                throw BacktestError("\(at): no template: give \"template\", \"template_file\" or \"prompt\" (or --template for every line)")
            }
            prompt = try renderTemplate(t, variables, at: at)
        }
        guard chat != nil || !prompt.isEmpty else { throw BacktestError("\(at): the prompt is empty") }
        let tags: [String]
        switch obj["tags"] {
        case nil, is NSNull: tags = []
        case let s as String: tags = [s]
        case let l as [Any]:
            tags = try l.map { guard let s = $0 as? String else { throw BacktestError("\(at): \"tags\" must be strings") }; return s }
        default: throw BacktestError("\(at): \"tags\" must be a string or a list of strings")
        }
        // A data set's numeric ids (a Parquet int64 column, JSON numbers) name prompts as their digits.
        let number = (obj["id"] as? NSNumber).flatMap { String(cString: $0.objCType) == "c" ? nil : "\($0)" }
        let id = try number ?? string("id") ?? (named ? URL(fileURLWithPath: path).lastPathComponent + " " : "")
            + (columnar ? "row \(record.line)" : "line \(record.line)")
        guard ids.insert(id).inserted else { throw BacktestError("\(at): the id \"\(id)\" is used twice") }
        guard obj["expected"] == nil || obj["completion"] == nil else { throw BacktestError("\(at): give \"expected\" or \"completion\", not both") }
        if let a = answer, a.allSatisfy(\.isWhitespace) {
            throw BacktestError("\(at): the expected answer is empty or only whitespace: exact match, contains and ROUGE-L would have "
                                + "nothing to compare; leave it out to answer the prompt without scoring")
        }
        var p = BacktestPrompt(id: id, prompt: prompt, expected: answer, tags: tags, messages: chat, tools: tools)
        (p.reply, p.templateKwargs) = (reply, kwargs)
        prompts.append(p)
    }
}

// MARK: - Scores

/// Lowercased, whitespace collapsed, trimmed: what exact match and contains compare.
public func normalizedAnswer(_ s: String) -> String {
    s.lowercased().split(whereSeparator: \.isWhitespace).joined(separator: " ")
}

/// ROUGE-L F1 (β = 1) between `candidate` and `reference` on lowercased alphanumeric words, as the
/// `rouge-score` package tokenizes: F = 2·P·R / (P + R) with P = LCS / |candidate|, R = LCS / |reference|.
public func rougeL(_ candidate: String, _ reference: String) -> Double {
    func words(_ s: String) -> [Substring] {
        s.lowercased().split { !($0.isASCII && ($0.isLetter || $0.isNumber)) }
    }
    let c = words(candidate), r = words(reference)
    guard !c.isEmpty, !r.isEmpty else { return 0 }
    let lcs = Double(lcsLength(c, r))
    guard lcs > 0 else { return 0 }
    let p = lcs / Double(c.count), rec = lcs / Double(r.count)
    return 2 * p * rec / (p + rec)
}

func lcsLength<T: Equatable>(_ a: [T], _ b: [T]) -> Int {
    guard !a.isEmpty, !b.isEmpty else { return 0 }
    var prev = [Int](repeating: 0, count: b.count + 1), cur = prev
    for i in 1...a.count {
        for j in 1...b.count {
            cur[j] = a[i - 1] == b[j - 1] ? prev[j - 1] + 1 : max(prev[j], cur[j - 1])
        }
        swap(&prev, &cur)
    }
    return prev[b.count]
}

/// One piece of a word-level diff.
public enum WordDiff: Equatable, Sendable {
    case same(String), added(String), removed(String)
}

/// The word-level diff that turns `old` into `new` (a longest common subsequence of the words,
/// whitespace-separated, compared as written).
public func wordDiff(_ old: String, _ new: String) -> [WordDiff] {
    let a = old.split(whereSeparator: \.isWhitespace).map(String.init), b = new.split(whereSeparator: \.isWhitespace).map(String.init)
    var table = [[Int]](repeating: [Int](repeating: 0, count: b.count + 1), count: a.count + 1)
    for i in stride(from: a.count - 1, through: 0, by: -1) {
        for j in stride(from: b.count - 1, through: 0, by: -1) {
            table[i][j] = a[i] == b[j] ? table[i + 1][j + 1] + 1 : max(table[i + 1][j], table[i][j + 1])
        }
    }
    var out: [WordDiff] = [], i = 0, j = 0
    while i < a.count || j < b.count {
        if i < a.count && j < b.count && a[i] == b[j] { out.append(.same(a[i])); i += 1; j += 1 }
        else if j < b.count && (i == a.count || table[i][j + 1] >= table[i + 1][j]) { out.append(.added(b[j])); j += 1 }
        else { out.append(.removed(a[i])); i += 1 }
    }
    return out
}

// MARK: - Running

/// What to back-test and how to decode.
public struct BacktestOptions {
    public var modelPath: String
    /// (version name, adapter path): SwiftPEFT .h5 or PEFT folders, any method.
    public var adapters: [(name: String, path: String)]
    /// Run the prompts through the base too, as the version "base".
    public var includeBase = true
    public var prompts: [BacktestPrompt]
    public var maxNewTokens = 64
    /// 1: greedy. More: that many samples at `temperature`, seeds `seed`, `seed + 1`, …
    public var samples = 1
    public var temperature: Float = BacktestOptions.defaultTemperature
    /// The default `temperature`.
    public static let defaultTemperature: Float = 0.8
    public var seed: UInt64 = 0
    /// Decoding ends where one of these texts appears, and the output is cut before it (EOS always ends it).
    public var stop: [String] = []
    public var wattsPerCore = CostMeter.defaultWattsPerCore
    /// A chat template file used for chat prompts instead of the model's own and the one the
    /// adapters record (without it, they must record the same one or none: `useChatTemplate`).
    public var chatTemplatePath: String?
    /// A GGUF base's quantized matrices, the embedding included, keep the file's blocks
    /// (`loadModel(keepQuantized:quantizedEmbedding:)`): about the file's size in memory.
    public var keepQuantized = false
    /// An unfinished run of the same back-test (`readBacktestProgress`): its answers to prompts that
    /// are unchanged are kept, the others run. Its settings must be this run's (`BacktestSettings`).
    public var resume: BacktestProgress?
    /// Asked before each answer: true stops the run, which returns what it has (`unanswered` > 0).
    public var shouldStop: () -> Bool = { false }
    /// Given the result so far every `saveEvery` seconds, once this run has given an answer, while
    /// answers are left (the command line writes the report folder with it, so that a killed run
    /// can be resumed).
    public var save: ((BacktestResult) throws -> Void)?
    public var saveEvery: TimeInterval = 30

    public init(modelPath: String, adapters: [(name: String, path: String)], prompts: [BacktestPrompt]) {
        (self.modelPath, self.adapters, self.prompts) = (modelPath, adapters, prompts)
    }
}

/// One prompt through one version.
public struct BacktestRow: Codable, Equatable, Sendable {
    public var promptID: String
    public var version: String
    public var tags: [String]
    public var prompt: String
    public var expected: String?
    /// The greedy output, or the most common of the samples.
    public var output: String
    /// Every sample (only with samples > 1).
    public var samples: [String]?
    /// Share of the samples equal to the most common one (1 when greedy).
    public var agreement: Double
    /// Mean loss (nats per token) of the expected answer (and EOS, as trained) given the prompt.
    public var loss: Double?
    public var perplexity: Double?
    /// The answer tokens `loss` is the mean over: the same for every version of a prompt (with
    /// learned positions, an answer is cut where the version with the most virtual tokens must cut it).
    public var lossTokens: Int? = nil
    /// Those tokens' texts (joining to the scored answer) and each one's loss, −log p(token | before).
    public var tokenLosses: [ScoredToken]? = nil
    /// Against the expected answer, averaged over the samples: exact match and contains (0…1,
    /// on normalized text), ROUGE-L F1.
    public var exactMatch: Double?
    public var contains: Double?
    public var rougeL: Double?
    public var promptTokens: Int
    public var outputTokens: Int
    public var latencyMs: Double
    /// This answer's cost (scoring and decoding).
    public var cost: Cost

    enum CodingKeys: String, CodingKey {
        case promptID = "prompt_id", version, tags, prompt, expected, output, samples, agreement, loss, perplexity
        case lossTokens = "loss_tokens", tokenLosses = "token_losses"
        case exactMatch = "exact_match", contains, rougeL = "rouge_l", promptTokens = "prompt_tokens"
        case outputTokens = "output_tokens", latencyMs = "latency_ms", cost
    }
}

/// One token of an expected answer and how surprised a version was by it.
public struct ScoredToken: Codable, Equatable, Sendable {
    /// Its text in the answer (a special token, such as the end of a turn, as its content).
    public var token: String
    /// −log p(token | the prompt and the answer before it), in nats.
    public var loss: Double
    /// A token's text and its loss in nats.
    public init(token: String, loss: Double) { (self.token, self.loss) = (token, loss) }
}

/// The scores a version can be compared on (`--metric`).
public enum BacktestMetric: String, CaseIterable, Sendable {
    case rougeL = "rouge-l", exactMatch = "exact", contains, loss
    /// Loss is better lower; the rest higher.
    public var higherIsBetter: Bool { self != .loss }
    public func value(_ s: VersionSummary) -> Double? {
        switch self {
        case .rougeL: return s.rougeL
        case .exactMatch: return s.exactMatch
        case .contains: return s.contains
        case .loss: return s.loss
        }
    }
}

/// A version's means over its prompts (scores only over prompts with an expected answer; the loss
/// over their answer tokens, so a long answer counts for its tokens).
public struct VersionSummary: Codable, Equatable, Sendable {
    public var version: String
    public var prompts: Int
    public var scored: Int
    public var exactMatch: Double?
    public var contains: Double?
    public var rougeL: Double?
    public var loss: Double?
    public var perplexity: Double?
    public var agreement: Double
    public var meanLatencyMs: Double
    public var outputTokens: Int
    public var cost: Cost

    enum CodingKeys: String, CodingKey {
        case version, prompts, scored, exactMatch = "exact_match", contains, rougeL = "rouge_l", loss, perplexity, agreement
        case meanLatencyMs = "mean_latency_ms", outputTokens = "output_tokens", cost
    }

    /// The summary of `rows` (one version's, or one tag's) under the name `version`.
    public static func of(_ rows: [BacktestRow], version: String) -> VersionSummary {
        func mean(_ xs: [Double]) -> Double? { xs.isEmpty ? nil : xs.reduce(0, +) / Double(xs.count) }
        // The loss is the mean over every scored answer token, as `eval` takes it (a row without its
        // token count, from an older file, weighs one).
        let scored = rows.compactMap { r in r.loss.map { (loss: $0, tokens: Double(r.lossTokens ?? 1)) } }
        let weight = scored.reduce(0) { $0 + $1.tokens }
        let loss = weight > 0 ? scored.reduce(0) { $0 + $1.loss * $1.tokens } / weight : nil
        return VersionSummary(version: version, prompts: rows.count, scored: rows.filter { $0.expected != nil }.count,
                              exactMatch: mean(rows.compactMap(\.exactMatch)), contains: mean(rows.compactMap(\.contains)),
                              rougeL: mean(rows.compactMap(\.rougeL)), loss: loss, perplexity: loss.map { Foundation.exp($0) },
                              agreement: mean(rows.map(\.agreement)) ?? 1, meanLatencyMs: mean(rows.map(\.latencyMs)) ?? 0,
                              outputTokens: rows.reduce(0) { $0 + $1.outputTokens },
                              cost: Cost.total(rows.map(\.cost)) ?? CostMeter().reading(tokens: 0))
    }
}

/// Everything a back-test found.
public struct BacktestResult: Codable, Sendable {
    public var model: String
    public var versions: [String]
    public var rows: [BacktestRow]
    public var summaries: [VersionSummary]
    /// Per tag, each version's summary (tags in order of first use).
    public var tagSummaries: [String: [VersionSummary]]
    public var tags: [String]
    public var decoding: String
    public var cost: Cost
    /// With `keepQuantized`: the matrices the base kept as quantized blocks (`quantizedBaseSummary`).
    public var baseWeights: String?
    /// For chat prompts written with another chat template than the base's own (the one the
    /// adapters record, or `chatTemplatePath`'s): which, for every version, the base included.
    public var promptTemplate: String?
    /// With rotary positions (no hard end): the prompts whose answers (generated, or scored) pass the
    /// positions the model was trained on, where text is often degraded; nil when none do.
    public var positionsNote: String?
    /// The answers not given (0 when the run finished): a stopped run's, to go on with by `resume`.
    public var unanswered = 0
    /// What was run, recorded for a resumed run to check against.
    public var settings: BacktestSettings?
    /// The answers this run gave; the others were kept from `BacktestOptions.resume`.
    public var newAnswers = 0

    enum CodingKeys: String, CodingKey {
        case model, versions, rows, summaries, tagSummaries = "tag_summaries", tags, decoding, cost, baseWeights = "base_weights"
        case promptTemplate = "prompt_template", positionsNote = "positions_note", unanswered, settings
    }

    /// The prompts of the run (of which `rows` may hold only some, when it was stopped).
    public var promptCount: Int { (rows.count + unanswered) / max(1, versions.count) }

    /// Whether `version` scores below `than` on `metric` (beyond `tolerance`); nil when either has no
    /// score on it (no expected answers).
    public func isWorse(_ version: String, than: String, on metric: BacktestMetric, tolerance: Double = 0) -> Bool? {
        guard let a = summaries.first(where: { $0.version == version }).flatMap(metric.value),
              let b = summaries.first(where: { $0.version == than }).flatMap(metric.value) else { return nil }
        return metric.higherIsBetter ? a < b - tolerance : a > b + tolerance
    }
}

/// Runs every prompt through the base (as "base", unless `includeBase` is false) and through each
/// adapter, one version at a time on one copy of the base. Every adapter is loaded (and checked
/// against the base) before the first prompt runs. `onAnswer(done, total)` follows progress.
/// Stopped by `o.shouldStop`, it returns the answers so far with `unanswered` set; given
/// `o.resume`, it gives only the answers that run lacks.
public func runBacktest(_ o: BacktestOptions, onAnswer: (Int, Int) -> Void = { _, _ in }) throws -> BacktestResult {
    guard o.includeBase || !o.adapters.isEmpty else { throw BacktestError("nothing to back-test: no adapter and the base left out") }
    guard o.samples >= 1 else { throw BacktestError("--samples must be at least 1, got \(o.samples)") }
    guard o.maxNewTokens >= 1 else { throw BacktestError("--max-tokens must be at least 1, got \(o.maxNewTokens)") }
    guard o.samples == 1 || (o.temperature.isFinite && o.temperature > 0) else {
        throw BacktestError("--samples \(o.samples) needs a --temperature above 0 (samples at temperature 0 are all the greedy output)")
    }
    var names = Set<String>()
    for n in (o.includeBase ? ["base"] : []) + o.adapters.map(\.name) where !names.insert(n).inserted {
        throw BacktestError(n == "base" && o.includeBase ? "the version name \"base\" is the base model's; give the adapter another NAME in NAME=PATH (or leave the base out with --no-base)"
                            : "the version name \"\(n)\" is used twice; name adapters with NAME=PATH")
    }
    let settings = try checkResumable(o)
    let total = CostMeter(wattsPerCore: o.wattsPerCore)
    let loaded = try loadModel(o.modelPath, keepQuantized: o.keepQuantized, quantizedEmbedding: o.keepQuantized)
    let model = loaded.model
    guard let tokenizer = loaded.tokenizer else { throw BacktestError("\(o.modelPath): holds no tokenizer; prompts cannot be tokenized") }
    // One template writes every version's prompts: the file's, or the one the adapters were trained with.
    let chat = o.prompts.contains { $0.messages != nil }
    let ownTemplate = tokenizer.chatTemplate
    try useChatTemplate(file: o.chatTemplatePath, adapters: chat ? o.adapters.map(\.path) : [], on: tokenizer)
    let promptTemplate = !chat ? nil : o.chatTemplatePath.map { "chat prompts written with the chat template of \($0), for every version" }
        ?? (tokenizer.chatTemplate == ownTemplate ? nil
            : "chat prompts written with the chat template the adapters were trained with (not the base's own), for every version, the base included")
    // Chat prompts as the model writes them, and the reply tokens an expected answer is scored on:
    // its text and the tokens the template ends a turn with, as chat training learns them.
    var prompts = o.prompts, answerIDs: [String: [Int32]] = [:]
    for (k, p) in prompts.enumerated() {
        if let messages = p.messages {
            do {
                guard try canWriteChat(tokenizer) else {
                    throw BacktestError("this model's tokenizer has no chat template, and no <|im_end|> token for ChatML")
                }
                prompts[k].prompt = try renderChat(messages, tools: p.tools, templateKwargs: p.templateKwargs, tokenizer: tokenizer, addGenerationPrompt: true)
                if let reply = p.reply ?? p.expected.map({ ChatMessage(role: "assistant", content: $0) }) {
                    let ex = try DataExample.chat(messages + [reply], tools: p.tools, templateKwargs: p.templateKwargs).tokenized(tokenizer)
                    guard let last = ex.learned.lastIndex(of: true) else { throw BacktestError("the expected answer has no token to score") }
                    let first = (ex.learned[..<last].lastIndex(of: false) ?? -1) + 1
                    answerIDs[p.id] = Array(ex.ids[first...last])
                    if p.reply != nil {  // the calls as the template writes them, less the token that ends the turn (as outputs are)
                        let text = answerIDs[p.id]!
                        prompts[k].expected = tokenizer.decode(textEndTokens(tokenizer).contains(text.last!) ? Array(text.dropLast()) : text,
                                                               following: first > 0 ? ex.ids[first - 1] : nil)
                    }
                }
            } catch {
                throw BacktestError("prompt \(p.id): \(error)")
            }
        }
    }
    var mostVirtual = 0  // with learned positions, every version scores an answer where this one must cut it
    for a in o.adapters {  // every adapter fits the base before anything runs
        let m = try loadAdapter(a.path, onto: model)
        mostVirtual = max(mostVirtual, model.virtualTokenCount)
        m.detach(from: model)
    }
    // A plain prompt as the tokenizer encodes a text (with Llama 3's BOS); a chat as training encodes it.
    func promptIDs(_ p: BacktestPrompt) -> [Int32] {
        p.messages == nil ? tokenizer.encode(p.prompt, addBOS: tokenizer.addsBOS) : encodeChat(p.prompt, tokenizer: tokenizer)
    }
    if model.config.positions == .learned {  // a prompt too long for any version stops the run before any work
        for p in prompts {
            let n = promptIDs(p).count
            guard n + mostVirtual < model.config.maxPositions else {
                throw BacktestError("prompt \(p.id): \(n) tokens (+\(mostVirtual) virtual, the most of any version) leave no room under the model's max_position_embeddings \(model.config.maxPositions)")
            }
        }
    }
    // Rotary positions have no end, but past max_position_embeddings the model has not been trained:
    // said as generate says it (serve refuses such a request).
    var pastPositions: [String] = []
    if model.config.positions != .learned {
        for p in prompts {
            let answer = answerIDs[p.id]?.count ?? p.expected.map { tokenizer.encode($0).count + 1 } ?? 0
            if mostVirtual + promptIDs(p).count + max(o.maxNewTokens, answer) > model.config.maxPositions { pastPositions.append(p.id) }
        }
    }
    let positionsNote = pastPositions.isEmpty ? nil
        : "\(pastPositions.count) prompt(s) (\(pastPositions.prefix(5).joined(separator: ", "))\(pastPositions.count > 5 ? ", …" : "")) with their "
          + "answers (--max-tokens \(o.maxNewTokens), or the expected one\(mostVirtual > 0 ? ", after up to \(mostVirtual) virtual tokens" : "")) may pass the "
          + "\(model.config.maxPositions) positions the model was trained on (max_position_embeddings); text and scores past them are often degraded"
    let versions: [(name: String, path: String?)] = (o.includeBase ? [("base", nil)] : []) + o.adapters.map { ($0.name, $0.path) }
    let eos = tokenizer.eosTokenID, ends = textEndTokens(tokenizer)
    var rows: [BacktestRow] = []
    var answerPieces: [String: [String]] = [:]  // each prompt's scored tokens' texts: the same for every version
    let answers = versions.count * prompts.count
    var kept: [String: BacktestRow] = [:]  // "version\0prompt id" → the unfinished run's answer
    for row in o.resume?.rows ?? [] { kept[row.version + "\u{0}" + row.promptID] = row }
    func keptAnswer(_ version: String, _ p: BacktestPrompt) -> BacktestRow? {
        guard var row = kept[version + "\u{0}" + p.id], row.prompt == p.prompt, row.expected == p.expected else { return nil }
        row.tags = p.tags  // tags do not change an answer
        return row
    }
    var lastSave = Date(), tokensRun = 0, newAnswers = 0
    // A stopped run's result: the answers so far, and the kept ones it had not reached (a later
    // resume keeps them too).
    func result() -> BacktestResult {
        let have = Set(rows.map { $0.version + "\u{0}" + $0.promptID })
        var rows = rows
        for v in versions { for p in prompts where !have.contains(v.name + "\u{0}" + p.id) { keptAnswer(v.name, p).map { rows.append($0) } } }
        var tags: [String] = []
        for p in o.prompts { for t in p.tags where !tags.contains(t) { tags.append(t) } }
        let names = versions.map(\.name)
        let summaries = names.map { n in VersionSummary.of(rows.filter { $0.version == n }, version: n) }
        var tagSummaries: [String: [VersionSummary]] = [:]
        for t in tags {
            tagSummaries[t] = names.map { n in VersionSummary.of(rows.filter { $0.version == n && $0.tags.contains(t) }, version: n) }
        }
        let decoding = o.samples == 1 ? "greedy, at most \(o.maxNewTokens) new tokens"
            : "\(o.samples) samples at temperature \(o.temperature) (seeds \(o.seed)…\(o.seed &+ UInt64(o.samples - 1))), at most \(o.maxNewTokens) new tokens"
        let session = total.reading(tokens: tokensRun)
        return BacktestResult(model: o.modelPath, versions: names, rows: rows, summaries: summaries, tagSummaries: tagSummaries,
                              tags: tags, decoding: decoding, cost: o.resume.flatMap { Cost.total([$0.cost, session]) } ?? session,
                              baseWeights: o.keepQuantized ? quantizedBaseSummary(model) : nil, promptTemplate: promptTemplate,
                              positionsNote: positionsNote, unanswered: answers - rows.count, settings: settings, newAnswers: newAnswers)
    }
    for v in versions {
        if prompts.allSatisfy({ keptAnswer(v.name, $0) != nil }) {  // nothing left to run on this version
            for p in prompts { rows.append(keptAnswer(v.name, p)!); onAnswer(rows.count, answers) }
            continue
        }
        let method = try v.path.map { try loadAdapter($0, onto: model) }
        defer { method?.detach(from: model) }
        model.eval()
        let extra = model.virtualTokenCount
        for p in prompts {
            if let row = keptAnswer(v.name, p) {
                rows.append(row)
                onAnswer(rows.count, answers)
                continue
            }
            if o.shouldStop() { return result() }
            if let save = o.save, newAnswers > 0, Date().timeIntervalSince(lastSave) >= o.saveEvery {
                try save(result())
                lastSave = Date()
            }
            let meter = CostMeter(wattsPerCore: o.wattsPerCore)
            let ids = promptIDs(p)
            guard !ids.isEmpty else { throw BacktestError("prompt \(p.id): encodes to no token") }
            if model.config.positions == .learned && extra + ids.count >= model.config.maxPositions {
                throw BacktestError("prompt \(p.id): \(ids.count) tokens (+\(extra) virtual) leave no room under the model's max_position_embeddings \(model.config.maxPositions)")
            }
            var loss: Double?, tokenLosses: [ScoredToken]?
            var scoredTokens = 0, lossTokens: Int?
            if let expected = p.expected {
                let answer = answerIDs[p.id] ?? tokenizer.encode(expected, following: ids.last) + (eos.map { [$0] } ?? [])
                let seq = Array((ids + answer).prefix(model.config.positions == .learned ? model.config.maxPositions - mostVirtual : Int.max))
                if seq.count > ids.count {
                    let scored = Array(seq[ids.count...])
                    let losses = answerTokenLosses(model, seq, from: ids.count)
                    loss = losses.reduce(0, +) / Double(losses.count)
                    if answerPieces[p.id] == nil { answerPieces[p.id] = tokenizer.pieces(scored, following: ids.last) }
                    tokenLosses = zip(answerPieces[p.id]!, losses).map { ScoredToken(token: $0, loss: $1) }
                    (scoredTokens, lossTokens) = (seq.count, scored.count)
                }
            }
            let start = Date()
            var outputs: [String] = [], outputTokens = 0
            for k in 0..<o.samples {
                let options = SamplingOptions(maxNewTokens: o.maxNewTokens, temperature: o.samples == 1 ? 0 : o.temperature,
                                              seed: o.seed &+ UInt64(k), stopTokens: ends)
                func text(_ out: [Int32]) -> String { tokenizer.decode(out.filter { !ends.contains($0) }, following: ids.last) }
                // Decoding ends at a stop text, as serve's does: the tokens and time past it are not spent.
                let out = o.stop.isEmpty ? model.generate(ids, options) : model.generate(ids, options, until: { textBeforeStop(text($0), o.stop) != nil })
                outputTokens += out.count
                let full = text(out)
                outputs.append(textBeforeStop(full, o.stop) ?? full)
            }
            let latency = Date().timeIntervalSince(start) * 1000 / Double(o.samples)
            var counts: [String: Int] = [:]
            for s in outputs { counts[s, default: 0] += 1 }
            let mode = outputs.first { counts[$0] == counts.values.max() }!
            func mean(_ f: (String) -> Double) -> Double { outputs.map(f).reduce(0, +) / Double(outputs.count) }
            let exp = p.expected
            rows.append(BacktestRow(
                promptID: p.id, version: v.name, tags: p.tags, prompt: p.prompt, expected: exp, output: mode,
                samples: o.samples > 1 ? outputs : nil, agreement: Double(counts[mode]!) / Double(outputs.count),
                loss: loss, perplexity: loss.map { Foundation.exp($0) }, lossTokens: lossTokens, tokenLosses: tokenLosses,
                exactMatch: exp.map { e in mean { normalizedAnswer($0) == normalizedAnswer(e) ? 1 : 0 } },
                contains: exp.map { e in mean { normalizedAnswer($0).contains(normalizedAnswer(e)) ? 1 : 0 } },
                rougeL: exp.map { e in mean { rougeL($0, e) } },
                promptTokens: ids.count, outputTokens: outputTokens, latencyMs: latency,
                cost: meter.reading(tokens: scoredTokens + ids.count * o.samples + outputTokens)))
            tokensRun += rows.last!.cost.tokens
            newAnswers += 1
            onAnswer(rows.count, answers)
        }
    }
    return result()
}

/// −log p(seq[t] | seq[..<t]) for each t from `start` on, in nats: one pass over `seq`, the output
/// head run on the scored positions only, 128 of them at a time (one (128, V) block of logits, never
/// a (T, V) one for a long answer), each row's log-sum-exp taken from it in place.
func answerTokenLosses(_ model: CausalLM, _ seq: [Int32], from start: Int) -> [Double] {
    withNoGrad {
        let h = model.hiddenStates(seq, batch: 1)  // (1, T, C)
        var out: [Double] = []
        out.reserveCapacity(seq.count - start)
        for a in stride(from: start - 1, to: seq.count - 1, by: 128) {
            let b = min(a + 128, seq.count - 1)
            let logits = model.lmHead(h.slice(axis: 1, a, b).contiguous()).contiguous()  // (1, b − a, V)
            let V = logits.shape[2], x = logits.basePointer
            for i in 0..<(b - a) {
                let row = x + i * V
                var m = -Float.infinity
                for j in 0..<V { m = max(m, row[j]) }
                var sum = 0.0
                for j in 0..<V { sum += Foundation.exp(Double(row[j] - m)) }
                out.append(Double(m) + Foundation.log(sum) - Double(row[Int(seq[a + i + 1])]))
            }
        }
        return out
    }
}
