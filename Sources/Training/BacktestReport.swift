// The back-test report folder: report.md (a summary table per version and per tag), results.jsonl
// (one object per prompt × version), results.csv (the same, flat), report.html (one self-contained
// page: the outputs side by side per prompt, with a word-level diff of each version against the
// base), backtest.json (what was run and what is left of it, to resume: BacktestResume.swift). The
// folder is swapped in whole.

import Foundation
import Containers

/// The files of a back-test report, in the order `writeBacktestReport` returns them.
public let backtestReportFiles = ["report.md", "results.jsonl", "results.csv", "report.html", backtestProgressFile]

/// For a stopped run's report: how much of it there is, in a sentence.
func unfinishedNote(_ r: BacktestResult) -> String? {
    guard r.unanswered > 0 else { return nil }
    return "Unfinished: \(r.rows.count) of \(r.rows.count + r.unanswered) answers; the scores cover those alone. "
        + "The same command with --resume gives the rest"
}

private func num(_ v: Double?, _ decimals: Int = 3) -> String {
    guard let v else { return "–" }
    return v.isFinite ? String(format: "%.\(decimals)f", v) : "\(v)"
}

private func percent(_ v: Double?) -> String { v.map { String(format: "%.1f%%", 100 * $0) } ?? "–" }

/// The per-version table (also used per tag).
public func renderBacktestTable(_ summaries: [VersionSummary]) -> String {
    var lines = ["| version | prompts | exact | contains | ROUGE-L | loss | perplexity | agreement | latency (mean) | output tokens | CPU-s | energy (J) |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summaries {
        lines.append("| \(markdownEscape(s.version)) | \(s.prompts) | \(percent(s.exactMatch)) | \(percent(s.contains)) | \(num(s.rougeL)) | "
                     + "\(num(s.loss)) | \(num(s.perplexity, 2)) | \(percent(s.agreement)) | \(num(s.meanLatencyMs, 0)) ms | \(s.outputTokens) | "
                     + "\(num(s.cost.cpuSeconds, 2)) | \(s.cost.isEstimate ? "≈" : "")\(num(s.cost.energyJoules, 1)) |")
    }
    return lines.joined(separator: "\n") + "\n"
}

/// report.md: what ran, the summary per version, per tag, and the cost.
public func renderBacktestMarkdown(_ r: BacktestResult) -> String {
    var md = "# Back-test of \(markdownEscape(r.model))\n\n"
    if let u = unfinishedNote(r) { md += "**\(u).**\n\n" }
    md += "\(r.promptCount) prompts × \(r.versions.count) versions (\(r.versions.map(markdownEscape).joined(separator: ", "))); "
    md += "decoding: \(r.decoding). Scores against the expected answers: exact match and contains on lowercased text with "
    md += "whitespace collapsed, ROUGE-L F1 on words; loss and perplexity of the expected answer given the prompt.\n\n"
    for t in [r.promptTemplate, r.positionsNote].compactMap({ $0 }) { md += "Note: \(markdownEscape(t)).\n\n" }
    md += "## Versions\n\n" + renderBacktestTable(r.summaries)
    if !r.tags.isEmpty {
        md += "\n## By tag\n"
        for t in r.tags { md += "\n### \(markdownEscape(t))\n\n" + renderBacktestTable(r.tagSummaries[t] ?? []) }
    }
    md += "\n## Cost\n\nThe whole run: \(r.cost.summary).\n"
    md += "\nOutputs side by side with a diff against the base: [report.html](report.html); every answer: "
    md += "[results.jsonl](results.jsonl), [results.csv](results.csv).\n"
    return md
}

/// results.csv: one row per prompt × version.
public func renderBacktestCSV(_ r: BacktestResult) -> String {
    let q = csvField
    func n(_ v: Double?) -> String { v.map { "\($0)" } ?? "" }
    var lines = ["prompt_id,version,tags,exact_match,contains,rouge_l,loss,perplexity,agreement,prompt_tokens,output_tokens,latency_ms,cpu_s,energy_j,energy_source,output,expected"]
    for row in r.rows {
        lines.append([q(row.promptID), q(row.version), q(row.tags.joined(separator: ";")), n(row.exactMatch), n(row.contains), n(row.rougeL),
                      n(row.loss), n(row.perplexity), n(row.agreement), "\(row.promptTokens)", "\(row.outputTokens)", n(row.latencyMs),
                      n(row.cost.cpuSeconds), n(row.cost.energyJoules), row.cost.energySource, q(row.output), q(row.expected ?? "")]
            .joined(separator: ","))
    }
    return lines.joined(separator: "\n") + "\n"
}

/// results.jsonl: one JSON object per prompt × version (`BacktestRow`'s fields).
public func renderBacktestJSONL(_ r: BacktestResult) throws -> Data {
    let enc = JSONEncoder()
    enc.outputFormatting = [.sortedKeys]
    enc.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
    var out = Data()
    for row in r.rows {
        out += try enc.encode(row)
        out.append(0x0A)
    }
    return out
}

/// Text for HTML content: `& < > "` as entities (newlines kept).
func htmlEscape(_ s: String) -> String {
    s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
        .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
}

/// report.html: one page, no outside resources: the summary, then per prompt the prompt, the
/// expected answer and each version's output side by side, each version's words diffed against the
/// base's output (added words marked, removed ones struck through), with its scores and cost, and
/// the expected answer once more per version, each token tinted by that version's loss on it.
public func renderBacktestHTML(_ r: BacktestResult) -> String {
    let reference = r.versions.contains("base") ? "base" : r.versions.first ?? ""
    var h = """
        <!DOCTYPE html>
        <html lang="en"><head><meta charset="utf-8"><title>Back-test of \(htmlEscape(r.model))</title>
        <style>
        body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d2330;background:#fafbfc}
        h1{font-size:20px}h2{font-size:16px;margin-top:28px}
        table.sum{border-collapse:collapse;margin:8px 0}table.sum td,table.sum th{border:1px solid #d5d9e0;padding:4px 8px;text-align:right}
        table.sum td:first-child,table.sum th:first-child{text-align:left}
        section.prompt{background:#fff;border:1px solid #d5d9e0;border-radius:6px;padding:12px;margin:16px 0}
        pre{white-space:pre-wrap;margin:4px 0;font:13px/1.4 ui-monospace,monospace}
        .grid{display:grid;grid-template-columns:repeat(\(max(1, r.versions.count)),minmax(0,1fr));gap:10px;margin-top:8px}
        .answer{border:1px solid #e3e6eb;border-radius:4px;padding:8px;background:#fcfcfd}
        .answer h3{font-size:13px;margin:0 0 4px}
        ins{background:#d7f5dd;text-decoration:none}del{background:#fbdada;color:#8a1f1f}
        .meta{color:#5b6475;font-size:12px;margin-top:6px}.tag{background:#eef1f6;border-radius:3px;padding:0 5px;margin-right:4px;font-size:12px}
        .tok{border-radius:2px;cursor:help}.scored{margin-top:6px;border-top:1px dashed #e3e6eb;padding-top:4px}
        </style></head><body>
        <h1>Back-test of \(htmlEscape(r.model))</h1>
        \(unfinishedNote(r).map { "<p><b>" + htmlEscape($0) + ".</b></p>" } ?? "")
        <p>\(r.promptCount) prompts × \(r.versions.count) versions; decoding: \(htmlEscape(r.decoding)).
        Diffs are against <b>\(htmlEscape(reference))</b>. Under each output, the expected answer is tinted token by token
        by that version's loss on it (red: the version found the token unlikely; hover for the figures). Cost of the whole run: \(htmlEscape(r.cost.summary)).\([r.promptTemplate, r.positionsNote].compactMap { $0 }.map { " Note: " + htmlEscape($0) + "." }.joined())</p>
        <table class="sum"><tr><th>version</th><th>exact</th><th>contains</th><th>ROUGE-L</th><th>loss</th><th>agreement</th><th>mean latency</th><th>energy (J)</th></tr>

        """
    for s in r.summaries {
        h += "<tr><td>\(htmlEscape(s.version))</td><td>\(percent(s.exactMatch))</td><td>\(percent(s.contains))</td><td>\(num(s.rougeL))</td>"
            + "<td>\(num(s.loss))</td><td>\(percent(s.agreement))</td><td>\(num(s.meanLatencyMs, 0)) ms</td>"
            + "<td>\(s.cost.isEstimate ? "≈" : "")\(num(s.cost.energyJoules, 1))</td></tr>\n"
    }
    h += "</table>\n"
    var order: [String] = []
    for row in r.rows where !order.contains(row.promptID) { order.append(row.promptID) }
    for id in order {
        let rows = r.rows.filter { $0.promptID == id }
        guard let first = rows.first else { continue }
        let base = rows.first { $0.version == reference }?.output ?? ""
        h += "<section class=\"prompt\" id=\"\(htmlEscape(id))\"><h2>\(htmlEscape(id)) "
            + first.tags.map { "<span class=\"tag\">\(htmlEscape($0))</span>" }.joined() + "</h2>\n"
        h += "<div>Prompt</div><pre class=\"prompt-text\">\(htmlEscape(first.prompt))</pre>\n"
        if let e = first.expected { h += "<div>Expected</div><pre class=\"expected\">\(htmlEscape(e))</pre>\n" }
        h += "<div class=\"grid\">\n"
        for row in rows {
            let body: String
            if row.version == reference {
                body = htmlEscape(row.output)
            } else {
                body = wordDiff(base, row.output).map { piece -> String in
                    switch piece {
                    case .same(let w): return htmlEscape(w)
                    case .added(let w): return "<ins>\(htmlEscape(w))</ins>"
                    case .removed(let w): return "<del>\(htmlEscape(w))</del>"
                    }
                }.joined(separator: " ")
            }
            var meta = ["\(row.promptTokens) + \(row.outputTokens) tokens", "\(num(row.latencyMs, 0)) ms",
                        "\(row.cost.isEstimate ? "≈" : "")\(num(row.cost.energyJoules, 2)) J"]
            if let s = row.rougeL { meta.insert("ROUGE-L \(num(s))", at: 0) }
            if let l = row.loss { meta.insert("loss \(num(l))", at: 0) }
            if row.samples != nil { meta.append("agreement \(percent(row.agreement))") }
            h += "<div class=\"answer\" data-version=\"\(htmlEscape(row.version))\"><h3>\(htmlEscape(row.version))</h3>"
                + "<pre class=\"output\">\(body)</pre><div class=\"meta\">\(meta.joined(separator: " · "))</div>"
                + (row.tokenLosses.map { scoredAnswerHTML($0, reference: row.version == reference ? nil : rows.first { $0.version == reference }.flatMap(\.tokenLosses), name: reference) } ?? "")
                + "</div>\n"
        }
        h += "</div></section>\n"
    }
    h += "<p class=\"meta\">\(htmlEscape(r.cost.energyNote)).</p>\n</body></html>\n"
    return h
}

/// The expected answer as one span per token, tinted by the loss on it (transparent at p = 1, red as
/// p falls), its loss and probability as the tooltip, with the `reference` version's loss on the same
/// token (`name`) when given. A token with no character of its own (the rest of a character split
/// into byte tokens) is told in the tooltip of the one before it, and the span is tinted by their
/// summed loss. Folded under a summary line when the answer is long.
func scoredAnswerHTML(_ tokens: [ScoredToken], reference: [ScoredToken]? = nil, name: String = "") -> String {
    let other = reference?.count == tokens.count ? reference : nil
    var spans: [(text: String, title: String, loss: Double)] = []
    for (i, t) in tokens.enumerated() {
        let figures = String(format: "loss %.3f, p %.3f", t.loss, exp(-t.loss)) + (other.map { String(format: " (%@: loss %.3f)", name, $0[i].loss) } ?? "")
        if t.token.isEmpty, !spans.isEmpty {
            spans[spans.count - 1].title += "; the same character's next byte token: " + figures
            spans[spans.count - 1].loss += t.loss
        } else {
            spans.append((t.token, figures, t.loss))
        }
    }
    let body = spans.map { s in
        "<span class=\"tok\" title=\"\(htmlEscape(s.title))\" style=\"background:rgba(214,39,40,\(String(format: "%.3f", 0.55 * (1 - exp(-s.loss)))))\">\(htmlEscape(s.text))</span>"
    }.joined()
    let long = tokens.reduce(0) { $0 + $1.token.count } > 600
    return "<details class=\"scored\"\(long ? "" : " open")><summary class=\"meta\">expected answer, by this version's loss per token</summary>"
        + "<pre class=\"scored-answer\">\(body)</pre></details>"
}

/// Writes the report folder `dir` (replaced whole) and returns its files (`backtestReportFiles`).
@discardableResult
public func writeBacktestReport(_ r: BacktestResult, to dir: URL) throws -> [URL] {
    let record = JSONEncoder()
    record.outputFormatting = [.prettyPrinted, .sortedKeys]
    let progress = BacktestProgressFile(settings: r.settings, answers: r.rows.count + r.unanswered, unanswered: r.unanswered, cost: r.cost)
    let contents = [Data(renderBacktestMarkdown(r).utf8), try renderBacktestJSONL(r), Data(renderBacktestCSV(r).utf8),
                    Data(renderBacktestHTML(r).utf8), try record.encode(progress)]
    try writeFolderAtomically(dir, files: backtestReportFiles) { tmp in
        for (name, data) in zip(backtestReportFiles, contents) { try data.write(to: tmp.appendingPathComponent(name)) }
    }
    return backtestReportFiles.map { dir.appendingPathComponent($0) }
}
