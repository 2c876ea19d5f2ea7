// The report of `swiftpeft compare`: one `MethodResult` per PEFT method trained on the same base, data and
// step budget, rendered as a terminal table, Markdown, CSV, JSON and an SVG plot of validation loss vs step,
// plus the process memory probes (VmHWM / VmRSS) the comparison records.

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

    public init(method: String, trainableParams: Int, percentOfBase: Double, adapterBytes: Int,
                trainSeconds: Double, tokensPerSecond: Double, peakMemoryBytes: Int, cost: Cost? = nil,
                finalTrainLoss: Double, finalValLoss: Double, perplexity: Double,
                curve: [CurvePoint], trainCurve: [CurvePoint]? = nil) {
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
    }
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
private func fixed(_ v: Double, _ decimals: Int) -> String {
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
    ReportColumn(title: "Method", right: false) { $0.method },
    ReportColumn(title: "Trainable params", right: true) { groupedInt($0.trainableParams) },
    ReportColumn(title: "% of base", right: true) { percentText($0.percentOfBase) },
    ReportColumn(title: "Adapter", right: true) { humanBytes($0.adapterBytes) },
    ReportColumn(title: "Train time", right: true) { durationText($0.trainSeconds) },
    ReportColumn(title: "Tokens/s", right: true) { rateText($0.tokensPerSecond) },
    ReportColumn(title: "Peak mem", right: true) { fixed(Double($0.peakMemoryBytes) / (1024 * 1024), 1) + " MB" },
    ReportColumn(title: "Energy", right: true) { r in r.cost.map { ($0.isEstimate ? "≈" : "") + fixed($0.energyJoules, 1) + " J" } ?? "–" },
    ReportColumn(title: "Train loss", right: true) { fixed($0.finalTrainLoss, 4) },
    ReportColumn(title: "Val loss", right: true) { fixed($0.finalValLoss, 4) },
    ReportColumn(title: "Perplexity", right: true) { fixed($0.perplexity, 2) },
]

/// An aligned plain-text table for the terminal: a header, a rule, one row per method (losses are the
/// final ones; adapter size and peak memory in binary KB / MB). Text columns
/// align left, numbers right; columns are separated by two spaces. Widths count characters, so a
/// name with double-width characters can shift its own row.
public func renderTable(_ results: [MethodResult]) -> String {
    let cells = [reportColumns.map(\.title)] + results.map { r in
        reportColumns.map { $0.text(r).replacingOccurrences(of: "\n", with: " ") }
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
    lines += results.map { r in row(reportColumns.map { escape($0.text(r)) }) }
    return lines.joined(separator: "\n") + "\n"
}

/// The CSV header: snake_case names of the raw fields, in table order.
public let compareCSVHeader = ["method", "trainable_params", "percent_of_base", "adapter_bytes", "train_seconds",
                               "tokens_per_second", "peak_memory_bytes", "final_train_loss", "final_val_loss",
                               "perplexity", "cpu_seconds", "energy_joules", "energy_source"]

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
                                r.cost.map { "\($0.cpuSeconds)" } ?? "", r.cost.map { "\($0.energyJoules)" } ?? "", r.cost?.energySource ?? ""]
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

/// Okabe–Ito colours (distinguishable under the common colour-vision deficiencies), ordered so the first
/// few contrast most on white; yellow, the weakest on white, comes last. Series past eight reuse the
/// colours with a dashed line and a shifted marker shape, so no two of the first 32 series look alike.
let plotPalette = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]

/// An axis: its range and the round tick values that span it.
struct AxisScale: Equatable {
    var lo: Double, hi: Double, step: Double
    var ticks: [Double]
    /// Decimals that show every tick exactly (0 for a step of 1, 5, 100; 1 for 0.5; 2 for 0.25...).
    var decimals: Int {
        var d = 0
        while d < 10 && abs((step * pow(10, Double(d))).rounded() - step * pow(10, Double(d))) > 1e-9 { d += 1 }
        return d
    }
}

/// 1, 2 or 5 × 10^k near `x` (Heckbert, "Nice numbers for graph labels", Graphics Gems 1990):
/// rounded to the nearest when `round`, else the smallest not below `x`.
private func niceNumber(_ x: Double, round: Bool) -> Double {
    let e = floor(log10(x)), f = x / pow(10, e)
    let nf: Double = round ? (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10)
                           : (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10)
    return nf * pow(10, e)
}

/// Round ticks covering [lo, hi], about `maxTicks` of them. An empty range (one point, identical values)
/// widens by 10 % of the value (1 when 0); `integer` keeps the step ≥ 1; `nonNegative` keeps lo ≥ 0.
func niceScale(_ lo: Double, _ hi: Double, maxTicks: Int = 6, integer: Bool = false,
               nonNegative: Bool = false) -> AxisScale {
    var (lo, hi) = lo.isFinite && hi.isFinite ? (min(lo, hi), max(lo, hi)) : (0, 1)
    if hi == lo {
        let pad = max(lo == 0 ? 1 : abs(lo) * 0.1, integer ? 1 : 0)
        (lo, hi) = (lo - pad, hi + pad)
        if nonNegative && lo < 0 { (lo, hi) = (0, hi - lo) }
    }
    let range = niceNumber(hi - lo, round: false)
    var step = niceNumber(range / Double(max(maxTicks - 1, 1)), round: true)
    if integer { step = max(step, 1) }
    let first = floor(lo / step + 1e-9), last = ceil(hi / step - 1e-9)
    // Ticks as integer multiples of the step, so 0.1 · 3 prints as 0.3 and not 0.30000000000000004.
    let ticks = stride(from: first, through: last, by: 1).map { ($0 * step * 1e9).rounded() / 1e9 }
    return AxisScale(lo: first * step, hi: last * step, step: step, ticks: ticks)
}

/// Text for SVG content and attributes: `& < > " '` as entities; characters XML 1.0 forbids dropped.
func xmlEscape(_ s: String) -> String {
    var out = ""
    for u in s.unicodeScalars {
        switch u {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&quot;"
        case "'": out += "&apos;"
        case "\t", "\n", "\r": out += " "
        default:
            let v = u.value
            if v < 0x20 || (0xFFFE...0xFFFF).contains(v) { continue }
            out.unicodeScalars.append(u)
        }
    }
    return out
}

/// About how wide `s` renders at `fontSize` px in DejaVu Sans / Helvetica, from per-class advance widths
/// (in em). SVG cannot measure text before drawing it; erring wide keeps long names inside the image.
func estimatedTextWidth(_ s: String, fontSize: Double) -> Double {
    var em = 0.0
    for u in s.unicodeScalars {
        switch u {
        case "i", "j", "l", ".", ",", ":", ";", "'", "|", "!", "I": em += 0.30
        case " ", "f", "t", "r", "(", ")", "[", "]", "-", "/": em += 0.40
        case "m", "w", "M", "W", "@", "%": em += 0.95
        case "0"..."9", "a"..."z", "_", "=", "+", "<", ">", "\"", "&", "#", "$", "?", "*": em += 0.63
        case "A"..."Z": em += 0.74
        default: em += u.value < 0x80 ? 0.63 : (u.properties.isEmojiPresentation || (0x1100...0xFFDC).contains(u.value) ? 1.0 : 0.70)
        }
    }
    return em * fontSize
}

/// `s`, cut with an ellipsis to fit in `maxWidth` px at `fontSize`.
func clipText(_ s: String, toWidth maxWidth: Double, fontSize: Double) -> String {
    guard estimatedTextWidth(s, fontSize: fontSize) > maxWidth else { return s }
    var t = s
    while !t.isEmpty && estimatedTextWidth(t + "…", fontSize: fontSize) > maxWidth { t.removeLast() }
    return t + "…"
}

private func num(_ v: Double) -> String { String(format: "%.2f", v) }

/// Series `i`'s colour, dash attribute and marker shape.
private func seriesStyle(_ i: Int) -> (color: String, dash: String, marker: Int) {
    (plotPalette[i % plotPalette.count], i >= plotPalette.count ? " stroke-dasharray=\"6 3\"" : "",
     (i + i / plotPalette.count) % 4)
}

/// A marker of shape `kind` (circle, square, triangle, diamond) centred on (x, y).
private func marker(_ kind: Int, _ x: Double, _ y: Double, _ color: String) -> String {
    let style = "fill=\"\(color)\" stroke=\"#ffffff\" stroke-width=\"1\""
    switch kind % 4 {
    case 0: return "<circle cx=\"\(num(x))\" cy=\"\(num(y))\" r=\"3.8\" \(style)/>"
    case 1: return "<rect x=\"\(num(x - 3.4))\" y=\"\(num(y - 3.4))\" width=\"6.8\" height=\"6.8\" \(style)/>"
    case 2: return "<path d=\"M\(num(x)) \(num(y - 4.6))L\(num(x + 4.2)) \(num(y + 3))L\(num(x - 4.2)) \(num(y + 3))Z\" \(style)/>"
    default: return "<path d=\"M\(num(x)) \(num(y - 4.8))L\(num(x + 4.2)) \(num(y))L\(num(x)) \(num(y + 4.8))L\(num(x - 4.2)) \(num(y))Z\" \(style)/>"
    }
}

/// A self-contained SVG (no scripts, fonts or links) of validation loss vs step, one line per method:
/// round-valued ticks and grid, axis titles, a legend at the right, a distinct colour and marker per
/// method, markers on every point. Points whose loss is NaN or ±inf are omitted (the line joins their
/// neighbours) and counted in a footnote; a single point shows as a marker; identical values get a
/// widened axis. Legend names wider than about 260 px are cut with "…" (the full name is the tooltip).
public func renderSVGPlot(_ results: [MethodResult], title: String) -> String {
    let series = results.map { r in r.curve.filter { $0.loss.isFinite }.sorted { $0.step < $1.step } }
    let omitted = results.reduce(0) { $0 + $1.curve.count } - series.reduce(0) { $0 + $1.count }
    let all = series.flatMap { $0 }

    // Layout (px). The legend's width follows its longest name; the plot area takes the rest.
    let rowH = 20.0, legendFont = 12.0, maxLabelW = 260.0
    let labels = results.indices.map { i in
        clipText(results[i].method.isEmpty ? "(unnamed)" : results[i].method, toWidth: maxLabelW, fontSize: legendFont)
            + (series[i].isEmpty ? " (no data)" : "")
    }
    let legendW = results.isEmpty ? 0 : 44 + (labels.map { estimatedTextWidth($0, fontSize: legendFont) }.max() ?? 0)
    let width = max(720, 560 + legendW)
    let (left, top, bottom) = (78.0, 48.0, 58.0)
    let plotW = width - left - legendW - 24
    let height = max(440, top + bottom + Double(results.count) * rowH + 16)
    let plotH = height - top - bottom

    let xs = niceScale(Double(all.map(\.step).min() ?? 0), Double(all.map(\.step).max() ?? 1),
                       maxTicks: 7, integer: true, nonNegative: (all.map(\.step).min() ?? 0) >= 0)
    let ys = niceScale(all.map(\.loss).min() ?? 0, all.map(\.loss).max() ?? 1, maxTicks: 6)
    func px(_ step: Int) -> Double { left + (Double(step) - xs.lo) / (xs.hi - xs.lo) * plotW }
    func py(_ loss: Double) -> Double { top + plotH - (loss - ys.lo) / (ys.hi - ys.lo) * plotH }

    var s: [String] = []
    s.append("<?xml version=\"1.0\" encoding=\"UTF-8\"?>")
    s.append("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" "
             + "viewBox=\"0 0 \(Int(width)) \(Int(height))\" role=\"img\" aria-label=\"\(xmlEscape(title))\" "
             + "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">")
    s.append("<title>\(xmlEscape(title))</title>")
    s.append("<rect x=\"0\" y=\"0\" width=\"\(Int(width))\" height=\"\(Int(height))\" fill=\"#ffffff\"/>")
    s.append("<text x=\"\(num(width / 2))\" y=\"28\" text-anchor=\"middle\" font-size=\"16\" font-weight=\"bold\" "
             + "fill=\"#222222\">\(xmlEscape(clipText(title, toWidth: width - 40, fontSize: 16 * 1.08)))</text>")

    // Grid, ticks and tick labels.
    s.append("<g class=\"grid\" stroke=\"#e3e3e3\" stroke-width=\"1\">")
    for t in xs.ticks { s.append("<line x1=\"\(num(px(Int(t))))\" y1=\"\(num(top))\" x2=\"\(num(px(Int(t))))\" y2=\"\(num(top + plotH))\"/>") }
    for t in ys.ticks { s.append("<line x1=\"\(num(left))\" y1=\"\(num(py(t)))\" x2=\"\(num(left + plotW))\" y2=\"\(num(py(t)))\"/>") }
    s.append("</g>")
    s.append("<g class=\"axes\" stroke=\"#444444\" stroke-width=\"1\" fill=\"none\">")
    s.append("<rect x=\"\(num(left))\" y=\"\(num(top))\" width=\"\(num(plotW))\" height=\"\(num(plotH))\"/>")
    for t in xs.ticks { s.append("<line x1=\"\(num(px(Int(t))))\" y1=\"\(num(top + plotH))\" x2=\"\(num(px(Int(t))))\" y2=\"\(num(top + plotH + 5))\"/>") }
    for t in ys.ticks { s.append("<line x1=\"\(num(left - 5))\" y1=\"\(num(py(t)))\" x2=\"\(num(left))\" y2=\"\(num(py(t)))\"/>") }
    s.append("</g>")
    s.append("<g class=\"tick-labels\" font-size=\"11\" fill=\"#333333\">")
    for t in xs.ticks {
        s.append("<text x=\"\(num(px(Int(t))))\" y=\"\(num(top + plotH + 18))\" text-anchor=\"middle\">\(Int(t))</text>")
    }
    for t in ys.ticks {
        s.append("<text x=\"\(num(left - 8))\" y=\"\(num(py(t) + 4))\" text-anchor=\"end\">\(fixed(t, ys.decimals))</text>")
    }
    s.append("</g>")
    s.append("<text x=\"\(num(left + plotW / 2))\" y=\"\(num(height - 16))\" text-anchor=\"middle\" font-size=\"13\" fill=\"#222222\">step</text>")
    s.append("<text x=\"20\" y=\"\(num(top + plotH / 2))\" text-anchor=\"middle\" font-size=\"13\" fill=\"#222222\" "
             + "transform=\"rotate(-90 20 \(num(top + plotH / 2)))\">validation loss</text>")
    if all.isEmpty {
        s.append("<text x=\"\(num(left + plotW / 2))\" y=\"\(num(top + plotH / 2))\" text-anchor=\"middle\" font-size=\"13\" fill=\"#888888\">no finite validation loss to plot</text>")
    }

    // One line + markers per method; then the legend.
    for (i, pts) in series.enumerated() {
        let (color, dash, shape) = seriesStyle(i)
        s.append("<g class=\"method\" data-method=\"\(xmlEscape(results[i].method))\">")
        if !pts.isEmpty {
            let d = pts.enumerated().map { j, p in (j == 0 ? "M" : "L") + num(px(p.step)) + " " + num(py(p.loss)) }.joined()
            s.append("<path class=\"series\" d=\"\(d)\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\" "
                     + "stroke-linejoin=\"round\" stroke-linecap=\"round\"\(dash)/>")
            for p in pts { s.append(marker(shape, px(p.step), py(p.loss), color)) }
        }
        s.append("</g>")
    }
    if !results.isEmpty {
        let lx = left + plotW + 18
        s.append("<g class=\"legend\" font-size=\"12\" fill=\"#222222\">")
        for (i, r) in results.enumerated() {
            let (color, dash, shape) = seriesStyle(i)
            let y = top + 10 + Double(i) * rowH
            s.append("<g><title>\(xmlEscape(r.method))</title>")
            s.append("<line x1=\"\(num(lx))\" y1=\"\(num(y))\" x2=\"\(num(lx + 28))\" y2=\"\(num(y))\" stroke=\"\(color)\" stroke-width=\"2\"\(dash)/>")
            s.append(marker(shape, lx + 14, y, color))
            s.append("<text x=\"\(num(lx + 36))\" y=\"\(num(y + 4))\">\(xmlEscape(labels[i]))</text></g>")
        }
        s.append("</g>")
    }
    if omitted > 0 {
        s.append("<text x=\"\(num(width - 10))\" y=\"\(num(height - 8))\" text-anchor=\"end\" font-size=\"10\" fill=\"#777777\">"
                 + "\(omitted) non-finite point\(omitted == 1 ? "" : "s") omitted</text>")
    }
    s.append("</svg>")
    return s.joined(separator: "\n") + "\n"
}

// MARK: - Writing the report

/// The files of a comparison report, in the order `writeCompareReport` returns them.
public let compareReportFiles = ["report.md", "results.csv", "results.json", "val_loss.svg"]

/// Writes the comparison as the folder `dir` and returns its files, in this order: `report.md`
/// (title, Markdown table, the plot, the setup note), `results.csv`, `results.json`, `val_loss.svg`.
/// The four appear together or not at all: they are written into a temporary folder beside `dir`,
/// which then replaces it (`writeFolderAtomically`), so a kill never mixes an old and a new report.
@discardableResult
public func writeCompareReport(_ results: [MethodResult], to dir: URL, title: String,
                               setup: String = "") throws -> [URL] {
    var md = "# \(markdownEscape(title))\n\n" + renderMarkdown(results) + "\n![validation loss](val_loss.svg)\n\n"
    md += "Raw numbers: [results.csv](results.csv), [results.json](results.json) (with the loss curves).\n"
    md += "Adapter size counts the saved adapter tensors; peak memory is the process's peak resident set.\n"
    if let c = results.compactMap(\.cost).first { md += "Energy: \(c.energyNote) (≈ marks an estimate).\n" }
    let note = setup.trimmingCharacters(in: .whitespacesAndNewlines)
    if !note.isEmpty { md += "\n## Setup\n\n\(note)\n" }
    let contents = [Data(md.utf8), Data(renderCSV(results).utf8), try encodeCompareResults(results),
                    Data(renderSVGPlot(results, title: title).utf8)]
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
