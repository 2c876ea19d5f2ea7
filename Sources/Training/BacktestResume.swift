// An unfinished back-test and how to go on with it. A run writes its report folder every
// `BacktestOptions.saveEvery` seconds and when it is stopped (`BacktestOptions.shouldStop`), with
// backtest.json beside the answers: what was run (the model, each version and the decoding, each
// file by size and modification time) and how many answers are left. `readBacktestProgress` reads
// the folder back; a run given it as `BacktestOptions.resume` keeps every answer whose prompt is
// unchanged, runs the rest, and refuses settings that differ.

import Foundation
import Formats

/// A file as a back-test records it, so that a resumed run can tell it is the same one: its size and
/// its last change (for a folder, such as a Hugging Face model's, its files' total size and the
/// latest change among them). Links are followed: a Hugging Face cache's snapshot folder holds
/// links to its blobs.
public struct FileStamp: Codable, Equatable, Sendable {
    public var path: String
    public var bytes: Int
    /// Seconds since 1970.
    public var modified: Double

    /// Stamps the file or folder at `path`.
    public init(_ path: String) throws {
        let fm = FileManager.default
        var isFolder: ObjCBool = false
        guard fm.fileExists(atPath: path, isDirectory: &isFolder) else { throw BacktestError("\(path): no such file or folder") }
        var files = [path]
        if isFolder.boolValue {
            files = (fm.enumerator(atPath: path)?.allObjects as? [String] ?? []).map { path + "/" + $0 }
        }
        (self.path, bytes, modified) = (path, 0, 0)
        for f in files {
            let a = try fm.attributesOfItem(atPath: (f as NSString).resolvingSymlinksInPath)
            guard (a[.type] as? FileAttributeType) == .typeRegular || !isFolder.boolValue else { continue }
            bytes += (a[.size] as? NSNumber)?.intValue ?? 0
            modified = max(modified, (a[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0)
        }
    }

    /// The same size and last change (the path may be written another way).
    func isSameFile(as other: FileStamp) -> Bool { bytes == other.bytes && modified == other.modified }

    var description: String {
        "\(path) (\(bytes) bytes, changed \(ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: modified))))"
    }
}

/// What makes two back-test runs the same one, as far as their answers go.
public struct BacktestSettings: Codable, Equatable, Sendable {
    public var model: FileStamp
    /// The versions in order ("base" first unless it is left out).
    public var versions: [String]
    /// The adapters of the versions other than "base", in order.
    public var adapters: [FileStamp]
    public var maxNewTokens: Int
    public var samples: Int
    /// nil when greedy (one sample), where neither applies.
    public var temperature: Float?
    public var seed: UInt64?
    public var stop: [String]
    public var chatTemplate: FileStamp?
    public var keepQuantized: Bool

    enum CodingKeys: String, CodingKey {
        case model, versions, adapters, maxNewTokens = "max_new_tokens", samples, temperature, seed, stop
        case chatTemplate = "chat_template", keepQuantized = "keep_quantized"
    }

    /// The settings of a run of `o`.
    public init(_ o: BacktestOptions) throws {
        model = try FileStamp(localModelPath(o.modelPath))
        versions = (o.includeBase ? ["base"] : []) + o.adapters.map(\.name)
        adapters = try o.adapters.map { try FileStamp(localModelPath($0.path)) }
        (maxNewTokens, samples, stop, keepQuantized) = (o.maxNewTokens, o.samples, o.stop, o.keepQuantized)
        (temperature, seed) = o.samples == 1 ? (nil, nil) : (o.temperature, o.seed)
        chatTemplate = try o.chatTemplatePath.map(FileStamp.init)
    }

    /// What differs between the `saved` run's settings and these, in a line ("--max-tokens 32 there,
    /// 64 here; …"); nil when nothing does.
    public func differences(from saved: BacktestSettings) -> String? {
        var d: [String] = []
        func differ<T: Equatable>(_ name: String, _ a: T, _ b: T, _ text: (T) -> String = { "\($0)" }) {
            if a != b { d.append("\(name) \(text(a)) there, \(text(b)) here") }
        }
        if !saved.model.isSameFile(as: model) { d.append("the model was \(saved.model.description), is \(model.description)") }
        differ("the versions", saved.versions, versions) { $0.joined(separator: ", ") }
        if saved.versions == versions {
            for (name, (a, b)) in zip(versions.suffix(adapters.count), zip(saved.adapters, adapters))
            where !a.isSameFile(as: b) {
                d.append("the adapter of \(name) was \(a.description), is \(b.description)")
            }
        }
        differ("--max-tokens", saved.maxNewTokens, maxNewTokens)
        differ("--samples", saved.samples, samples)
        differ("--temperature", saved.temperature, temperature) { $0.map { "\($0)" } ?? "(greedy)" }
        differ("--seed", saved.seed, seed) { $0.map { "\($0)" } ?? "(greedy)" }
        differ("--stop", saved.stop, stop) { $0.isEmpty ? "(none)" : $0.map(\.debugDescription).joined(separator: " ") }
        differ("--keep-quantized", saved.keepQuantized, keepQuantized) { $0 ? "on" : "off" }
        switch (saved.chatTemplate, chatTemplate) {
        case (nil, nil): break
        case let (a?, b?) where a.isSameFile(as: b): break
        case let (a, b): d.append("--chat-template \(a?.description ?? "(none)") there, \(b?.description ?? "(none)") here")
        }
        return d.isEmpty ? nil : d.joined(separator: "; ")
    }
}

/// A back-test's report folder read back: the answers so far, to go on with (`BacktestOptions.resume`).
public struct BacktestProgress: Sendable {
    public var settings: BacktestSettings
    public var rows: [BacktestRow]
    /// What the sessions so far cost together.
    public var cost: Cost
    /// The answers the run had still to give.
    public var unanswered: Int
}

/// The file of a report folder that records the run (`BacktestSettings`) and what is left of it.
public let backtestProgressFile = "backtest.json"

/// backtest.json.
struct BacktestProgressFile: Codable {
    static let currentFormat = "swiftpeft-backtest/1"
    var format = currentFormat
    var settings: BacktestSettings?
    var answers: Int
    var unanswered: Int
    var cost: Cost
}

/// Reads the report folder `dir` that a back-test wrote (backtest.json and results.jsonl), to go on
/// with it. Errors name the file and what is wrong.
public func readBacktestProgress(_ dir: URL) throws -> BacktestProgress {
    let file = dir.appendingPathComponent(backtestProgressFile), results = dir.appendingPathComponent("results.jsonl")
    guard let data = FileManager.default.contents(atPath: file.path) else {
        throw BacktestError("\(file.path): not found: \(dir.path) is not the report folder of a back-test this version can resume")
    }
    let saved: BacktestProgressFile
    do { saved = try JSONDecoder().decode(BacktestProgressFile.self, from: data) } catch {
        throw BacktestError("\(file.path): not a back-test's record (\(error))")
    }
    guard saved.format == BacktestProgressFile.currentFormat, let settings = saved.settings else {
        throw BacktestError("\(file.path): format \(saved.format) without the run's settings, expected \(BacktestProgressFile.currentFormat) with them")
    }
    guard let text = FileManager.default.contents(atPath: results.path).flatMap({ String(data: $0, encoding: .utf8) }) else {
        throw BacktestError("\(results.path): cannot read the answers of the back-test")
    }
    let decoder = JSONDecoder()
    decoder.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
    var rows: [BacktestRow] = []
    for (n, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() where !line.isEmpty {
        do { rows.append(try decoder.decode(BacktestRow.self, from: Data(line.utf8))) } catch {
            throw BacktestError("\(results.path):\(n + 1): not an answer of a back-test (\(error))")
        }
    }
    guard rows.count == saved.answers - saved.unanswered else {
        throw BacktestError("\(results.path): \(rows.count) answers, but \(file.path) records \(saved.answers - saved.unanswered)")
    }
    return BacktestProgress(settings: settings, rows: rows, cost: saved.cost, unanswered: saved.unanswered)
}

/// The settings of a run of `o`, checked against those of the run it resumes (`o.resume`), if any.
@discardableResult
public func checkResumable(_ o: BacktestOptions) throws -> BacktestSettings {
    let settings = try BacktestSettings(o)
    if let r = o.resume, let d = settings.differences(from: r.settings) {
        throw BacktestError("the unfinished back-test was run otherwise: \(d); give the same model, adapters and options to go on with it, or start again without resuming")
    }
    return settings
}

/// A back-test's report folder described (`inspect`): what was run, how much of it, and its cost.
public func describeBacktestReport(_ path: String) throws -> String {
    let p = try readBacktestProgress(URL(fileURLWithPath: path))
    let s = p.settings, answers = p.rows.count + p.unanswered
    var lines = ["\(path): back-test report, " + (p.unanswered == 0 ? "finished: \(answers) answers"
                 : "unfinished: \(p.rows.count) of \(answers) answers (the same command with --resume gives the rest)")]
    lines.append("  model: \(s.model.description)")
    let adapters = Dictionary(zip(s.versions.suffix(s.adapters.count), s.adapters), uniquingKeysWith: { a, _ in a })
    for v in s.versions {
        let given = p.rows.filter { $0.version == v }.count
        lines.append("  version \(v): \(adapters[v].map { "adapter \($0.description)" } ?? "the base"); \(given) of \(answers / max(1, s.versions.count)) answers")
    }
    lines.append("  decoding: " + (s.samples == 1 ? "greedy" : "\(s.samples) samples at temperature \(s.temperature ?? 0), seed \(s.seed ?? 0)")
                 + ", at most \(s.maxNewTokens) new tokens" + (s.stop.isEmpty ? "" : ", stop at " + s.stop.map(\.debugDescription).joined(separator: " "))
                 + (s.keepQuantized ? ", quantized base kept" : ""))
    if let t = s.chatTemplate { lines.append("  chat template: \(t.description)") }
    lines.append("  \(p.unanswered == 0 ? "cost" : "cost so far"): \(p.cost.summary)")
    return lines.joined(separator: "\n")
}
