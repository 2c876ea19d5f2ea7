// The report of `swiftpeft compare`: one `MethodResult` per PEFT method trained on the same base, data and
// step budget, rendered as a terminal table, Markdown, CSV, JSON and two SVG plots (validation loss vs step;
// training and validation loss together), plus the process memory probes (VmHWM / VmRSS) the comparison records.

import Foundation
import TensorCore
import NN
import Models
import Tokenizers
import PEFT
import Containers
import Formats

// MARK: - Results

/// One point of a loss curve: the loss measured after `step` optimizer steps. Used for both the
/// validation curve and the (optional) training curve, so the field is `loss`, not `valLoss`.
public struct CurvePoint: Codable, Equatable, Sendable {
    public var step: Int
    public var loss: Double
    public init(step: Int, loss: Double) {
        self.step = step
        self.loss = loss
    }
}

/// What training one PEFT method produced, as `swiftpeft compare` reports it. Sizes are bytes,
/// times seconds; `percentOfBase` is `100 · trainableParams / baseParams`.
public struct MethodResult: Codable, Equatable, Sendable {
    public var method: String
    public var trainableParams: Int
    public var percentOfBase: Double
    public var adapterBytes: Int
    public var trainSeconds: Double
    public var tokensPerSecond: Double
    public var peakMemoryBytes: Int
    /// The method's run: CPU-seconds and energy (measured or estimated) among others.
    public var cost: Cost?
    public var finalTrainLoss: Double
    public var finalValLoss: Double
    public var perplexity: Double
    /// Validation loss vs step, the series `renderSVGPlot` draws.
    public var curve: [CurvePoint]
    /// Training loss vs step, when the trainer recorded it.
    public var trainCurve: [CurvePoint]?
    /// Why the method's run stopped, when it failed (its numbers are then NaN or 0, its curves
    /// the steps it logged); nil for a run that finished.
    public var failure: String?

    public init(method: String, trainableParams: Int, percentOfBase: Double, adapterBytes: Int,
                trainSeconds: Double, tokensPerSecond: Double, peakMemoryBytes: Int, cost: Cost? = nil,
                finalTrainLoss: Double, finalValLoss: Double, perplexity: Double,
                curve: [CurvePoint], trainCurve: [CurvePoint]? = nil, failure: String? = nil) {
        self.method = method
        self.trainableParams = trainableParams
        self.percentOfBase = percentOfBase
        self.adapterBytes = adapterBytes
        self.trainSeconds = trainSeconds
        self.tokensPerSecond = tokensPerSecond
        self.peakMemoryBytes = peakMemoryBytes
        self.cost = cost
        self.finalTrainLoss = finalTrainLoss
        self.finalValLoss = finalValLoss
        self.perplexity = perplexity
        self.curve = curve
        self.trainCurve = trainCurve
        self.failure = failure
    }

    /// A method whose run failed with `failure`, after logging `steps` (its metrics.jsonl).
    public init(failed method: String, failure: String, steps: [StepMetrics]) {
        self.init(method: method, trainableParams: 0, percentOfBase: .nan, adapterBytes: 0, trainSeconds: .nan,
                  tokensPerSecond: .nan, peakMemoryBytes: 0, finalTrainLoss: steps.last?.loss ?? .nan, finalValLoss: .nan,
                  perplexity: .nan, curve: steps.compactMap { m in m.valLoss.map { CurvePoint(step: m.step, loss: $0) } },
                  trainCurve: steps.map { CurvePoint(step: $0.step, loss: $0.loss) }, failure: failure)
    }

    /// The first line of `failure` (its hints left out), for a table.
    public var failureLine: String? { failure.map { String($0.split(separator: "\n", omittingEmptySubsequences: false)[0]) } }
}

/// A report file that could not be written: names the file, says why, and hints at a fix.
public struct CompareReportError: Error, CustomStringConvertible {
    public let path: String
    public let message: String
    public let hint: String
    public var description: String { "\(path): \(message)\nHINT: \(hint)" }
}

// MARK: - Number formatting (locale-independent)

/// `1234567` → `"1,234,567"`.
private func groupedInt(_ n: Int) -> String {
    let digits = String(n.magnitude)
    var out = ""
    for (i, c) in digits.enumerated() {
        if i > 0 && (digits.count - i) % 3 == 0 { out.append(",") }
        out.append(c)
    }
    return n < 0 ? "-" + out : out
}

/// Fixed decimals; `nan` / `inf` / `-inf` for non-finite values.
func fixed(_ v: Double, _ decimals: Int) -> String {
    if v.isNaN { return "nan" }
    if v.isInfinite { return v > 0 ? "inf" : "-inf" }
    return String(format: "%.\(decimals)f", v)
}

/// Binary units labelled KB / MB / GB (1 KB = 1024 B), as terminals and file browsers show them.
private func humanBytes(_ n: Int) -> String {
    let v = Double(n)
    if abs(v) < 1024 { return "\(n) B" }
    if abs(v) < 1024 * 1024 { return fixed(v / 1024, 1) + " KB" }
    if abs(v) < 1024 * 1024 * 1024 { return fixed(v / (1024 * 1024), 2) + " MB" }
    return fixed(v / (1024 * 1024 * 1024), 2) + " GB"
}

/// `"0.0625%"`, `"1.25%"`: three significant digits below 1 %, two decimals above.
private func percentText(_ p: Double) -> String {
    guard p.isFinite else { return fixed(p, 0) + "%" }
    if p == 0 { return "0%" }
    if abs(p) >= 1 { return fixed(p, 2) + "%" }
    return String(format: "%.3g", p) + "%"
}

/// `"12.3 s"`, `"4m 05s"`, `"1h 02m"`.
private func durationText(_ s: Double) -> String {
    guard s.isFinite else { return fixed(s, 0) }
    if s < 60 { return fixed(s, 1) + " s" }
    let t = Int(s.rounded())
    if t < 3600 { return "\(t / 60)m " + String(format: "%02ds", t % 60) }
    return "\(t / 3600)h " + String(format: "%02dm", (t % 3600) / 60)
}

private func rateText(_ v: Double) -> String {
    v.isFinite && abs(v) < 1e15 ? groupedInt(Int(v.rounded())) : fixed(v, 0)
}

// MARK: - Tables

/// One report column: its title, whether numbers align right, and how a result prints in it.
private struct ReportColumn {
    let title: String
    let right: Bool
    let text: (MethodResult) -> String
}

private let reportColumns: [ReportColumn] = [
    ReportColumn(title: "Method", right: false) { $0.failure == nil ? $0.method : $0.method + " (failed)" },
    ReportColumn(title: "Trainable params", right: true) { groupedInt($0.trainableParams) },
    ReportColumn(title: "% of base", right: true) { percentText($0.percentOfBase) },
    ReportColumn(title: "Adapter", right: true) { humanBytes($0.adapterBytes) },
    ReportColumn(title: "Train time", right: true) { durationText($0.trainSeconds) },
    ReportColumn(title: "Tokens/s", right: true) { rateText($0.tokensPerSecond) },
    ReportColumn(title: "Peak mem", right: true) { fixed(Double($0.peakMemoryBytes) / (1024 * 1024), 1) + " MiB" },  // as train's cost line
    ReportColumn(title: "Energy", right: true) { r in r.cost.map { ($0.isEstimate ? "≈" : "") + fixed($0.energyJoules, 1) + " J" } ?? "–" },
    ReportColumn(title: "Train loss", right: true) { fixed($0.finalTrainLoss, 4) },
    ReportColumn(title: "Val loss", right: true) { fixed($0.finalValLoss, 4) },
    ReportColumn(title: "Perplexity", right: true) { fixed($0.perplexity, 2) },
]

/// The text of `column` for `r`: a dash in a failed method's columns but its name and training loss
/// (the last it logged).
private func cell(_ column: ReportColumn, _ r: MethodResult) -> String {
    r.failure == nil || ["Method", "Train loss"].contains(column.title) ? column.text(r) : "–"
}

/// An aligned plain-text table for the terminal: a header, a rule, one row per method (losses are the
/// final ones; adapter size and peak memory in binary KB / MB; a failed method's row is marked and
/// dashed, and its reason follows the table). Text columns
/// align left, numbers right; columns are separated by two spaces. Widths count characters, so a
/// name with double-width characters can shift its own row.
public func renderTable(_ results: [MethodResult]) -> String {
    let cells = [reportColumns.map(\.title)] + results.map { r in
        reportColumns.map { cell($0, r).replacingOccurrences(of: "\n", with: " ") }
    }
    let widths = reportColumns.indices.map { c in cells.map { $0[c].count }.max() ?? 0 }
    func line(_ row: [String]) -> String {
        reportColumns.indices.map { c in
            let pad = String(repeating: " ", count: widths[c] - row[c].count)
            return reportColumns[c].right ? pad + row[c] : row[c] + pad
        }.joined(separator: "  ")
    }
    var lines = [line(cells[0]), widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ")]
    lines += cells.dropFirst().map(line)
    lines += results.compactMap { r in r.failureLine.map { "\(r.method) failed: \($0)" } }
    return lines.joined(separator: "\n") + "\n"
}

/// `s` as Markdown text: `|` (a cell border) and `<` (an HTML tag) backslash-escaped, newlines as spaces.
func markdownEscape(_ s: String) -> String {
    s.replacingOccurrences(of: "|", with: "\\|").replacingOccurrences(of: "<", with: "\\<")
        .replacingOccurrences(of: "\r", with: " ").replacingOccurrences(of: "\n", with: " ")
}

/// A GitHub-flavoured Markdown table with the same columns and formatting as `renderTable`.
/// `|` and `<` in a method name are escaped (`\|`, `\<`).
public func renderMarkdown(_ results: [MethodResult]) -> String {
    func row(_ cells: [String]) -> String { "| " + cells.joined(separator: " | ") + " |" }
    let escape = markdownEscape
    var lines = [row(reportColumns.map(\.title)), row(reportColumns.map { $0.right ? "---:" : ":---" })]
    lines += results.map { r in row(reportColumns.map { escape(cell($0, r)) }) }
    let failures = results.compactMap { r in r.failureLine.map { "- **\(escape(r.method))** failed: \(escape($0))" } }
    if !failures.isEmpty { lines += [""] + failures }
    return lines.joined(separator: "\n") + "\n"
}

/// The CSV header: snake_case names of the raw fields, in table order.
public let compareCSVHeader = ["method", "trainable_params", "percent_of_base", "adapter_bytes", "train_seconds",
                               "tokens_per_second", "peak_memory_bytes", "final_train_loss", "final_val_loss",
                               "perplexity", "cpu_seconds", "energy_joules", "energy_source", "failure"]

/// A CSV field (RFC 4180): quoted, with `"` doubled, when it holds `,`, `"`, CR or LF (looked for
/// in Unicode scalars: "\r\n" is one Character, equal to neither).
func csvField(_ s: String) -> String {
    s.unicodeScalars.contains(where: { $0 == "," || $0 == "\"" || $0 == "\r" || $0 == "\n" })
        ? "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : s
}

/// CSV (RFC 4180): a header, one row per method, CRLF line ends. Numbers are raw (bytes, seconds,
/// the shortest decimal that round-trips; `nan` / `inf` for non-finite); a field holding `,`, `"`,
/// CR or LF is quoted, with `"` doubled.
public func renderCSV(_ results: [MethodResult]) -> String {
    let quote = csvField
    var lines = [compareCSVHeader.joined(separator: ",")]
    for r in results {
        let fields: [String] = [r.method, "\(r.trainableParams)", "\(r.percentOfBase)", "\(r.adapterBytes)",
                                "\(r.trainSeconds)", "\(r.tokensPerSecond)", "\(r.peakMemoryBytes)",
                                "\(r.finalTrainLoss)", "\(r.finalValLoss)", "\(r.perplexity)",
                                r.cost.map { "\($0.cpuSeconds)" } ?? "", r.cost.map { "\($0.energyJoules)" } ?? "", r.cost?.energySource ?? "",
                                r.failure ?? ""]
        lines.append(fields.map(quote).joined(separator: ","))
    }
    return lines.joined(separator: "\r\n") + "\r\n"
}

/// JSON for `results.json`: pretty-printed, sorted keys. Non-finite numbers, which JSON lacks, are
/// the strings `"NaN"`, `"Infinity"`, `"-Infinity"` (what `decodeCompareResults` reads back).
public func encodeCompareResults(_ results: [MethodResult]) throws -> Data {
    let e = JSONEncoder()
    e.outputFormatting = [.prettyPrinted, .sortedKeys]
    e.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "Infinity",
                                                            negativeInfinity: "-Infinity", nan: "NaN")
    return try e.encode(results)
}

/// Reads what `encodeCompareResults` wrote.
public func decodeCompareResults(_ data: Data) throws -> [MethodResult] {
    let d = JSONDecoder()
    d.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "Infinity",
                                                              negativeInfinity: "-Infinity", nan: "NaN")
    return try d.decode([MethodResult].self, from: data)
}

// MARK: - SVG plot

/// A self-contained SVG of validation loss vs step, one line per method, a marker on every point
/// (`renderLinePlot`; non-finite points omitted and counted, long names cut in the legend).
public func renderSVGPlot(_ results: [MethodResult], title: String) -> String {
    renderLinePlot(results.enumerated().map { PlotSeries(name: $1.method, points: $1.curve, style: $0) },
                   title: title, yLabel: "validation loss", emptyNote: "no finite validation loss to plot")
}

// MARK: - Writing the report

/// The files of a comparison report, in the order `writeCompareReport` returns them.
public let compareReportFiles = ["report.md", "results.csv", "results.json", "val_loss.svg", "loss.svg"]

/// Writes the comparison as the folder `dir` and returns its files, in this order: `report.md`
/// (title, Markdown table, the plot, the setup note), `results.csv`, `results.json`, `val_loss.svg`,
/// `loss.svg` (each method's training loss beside its validation loss, `renderLossPlot`).
/// The five appear together or not at all: they are written into a temporary folder beside `dir`,
/// which then replaces it (`writeFolderAtomically`), so a kill never mixes an old and a new report.
@discardableResult
public func writeCompareReport(_ results: [MethodResult], to dir: URL, title: String,
                               setup: String = "") throws -> [URL] {
    var md = "# \(markdownEscape(title))\n\n" + renderMarkdown(results) + "\n![validation loss](val_loss.svg)\n\n"
    md += "Training and validation loss together: [loss.svg](loss.svg).\n"
    md += "Raw numbers: [results.csv](results.csv), [results.json](results.json) (with the loss curves).\n"
    md += "Adapter size counts the saved adapter tensors; peak memory is the process's peak resident set.\n"
    if let c = results.compactMap(\.cost).first { md += "Energy: \(c.energyNote) (≈ marks an estimate).\n" }
    let note = setup.trimmingCharacters(in: .whitespacesAndNewlines)
    if !note.isEmpty { md += "\n## Setup\n\n\(note)\n" }
    let contents = [Data(md.utf8), Data(renderCSV(results).utf8), try encodeCompareResults(results),
                    Data(renderSVGPlot(results, title: title).utf8),
                    Data(renderLossPlot(results.map { LossRun(name: $0.method, training: $0.trainCurve ?? [], validation: $0.curve) },
                                        title: title).utf8)]
    do {
        try writeFolderAtomically(dir, files: compareReportFiles) { tmp in
            for (name, data) in zip(compareReportFiles, contents) {
                try data.write(to: tmp.appendingPathComponent(name))
            }
        }
    } catch {
        throw CompareReportError(path: dir.path, message: "could not write the report: \((error as? CheckpointError)?.message ?? (error as NSError).localizedDescription)",
                                 hint: "pass a writable --out folder with room left on its disk")
    }
    return compareReportFiles.map { dir.appendingPathComponent($0) }
}

// MARK: - Memory probes

/// A `/proc/self/status` field in bytes (the file gives kB), or 0 where it is missing (not Linux).
private func procStatusBytes(_ field: String) -> Int {
    guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in text.split(separator: "\n") where line.hasPrefix(field + ":") {
        let digits = line.dropFirst(field.count + 1).filter(\.isNumber)
        return (Int(digits) ?? 0) * 1024
    }
    return 0
}

/// The process's peak resident set size in bytes (`VmHWM`), 0 where `/proc` is missing. The peak
/// covers the whole process: to measure methods trained one after another, call
/// `resetPeakResidentBytes()` before each.
public func peakResidentBytes() -> Int { procStatusBytes("VmHWM") }

/// The process's current resident set size in bytes (`VmRSS`), 0 where `/proc` is missing.
public func currentResidentBytes() -> Int { procStatusBytes("VmRSS") }

/// Resets the peak (`VmHWM`) to the current resident size by writing 5 to `/proc/self/clear_refs`
/// (Linux ≥ 4.0). Returns false where that is not possible; the peak then keeps growing.
@discardableResult
public func resetPeakResidentBytes() -> Bool {
    releaseFreeMemory()  // tensor buffers freed to the heap go back to the system first
    guard let h = FileHandle(forWritingAtPath: "/proc/self/clear_refs") else { return false }
    defer { try? h.close() }
    do { try h.write(contentsOf: Data("5".utf8)) } catch { return false }
    return true
}
