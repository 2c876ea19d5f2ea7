// Line charts as self-contained SVG (no scripts, fonts or links): the validation curves of
// `swiftpeft compare`, a training run's `loss.svg` and `swiftpeft plot`. Round ticks, a legend at the
// right, colours that stay apart under colour-vision deficiencies, non-finite points left out and
// counted.

import Foundation

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

/// One line of a `renderLinePlot` chart.
struct PlotSeries {
    /// Legend text (cut with "…" when long; the full text is the tooltip).
    var name: String
    var points: [CurvePoint]
    /// Colour index into `plotPalette` (past its end: dashed, another marker shape).
    var style: Int
    /// A marker on every point.
    var markers = true
    var dashed = false
    /// Thin, translucent and out of the legend: raw values drawn behind their smoothed line.
    var faint = false
}

/// A self-contained SVG of `series` against the step: round-valued ticks and grid, axis titles, a
/// legend at the right (faint series are left out of it), a distinct colour and marker per style.
/// Points whose value is NaN or ±inf are omitted (the line joins their neighbours) and counted in a
/// footnote; a single point shows as a marker; identical values get a widened axis. Legend names
/// wider than about 260 px are cut with "…" (the full name is the tooltip). `emptyNote` is written
/// across the plot when no series has a finite point.
func renderLinePlot(_ input: [PlotSeries], title: String, yLabel: String, emptyNote: String) -> String {
    let series = input.map { r in r.points.filter { $0.loss.isFinite }.sorted { $0.step < $1.step } }
    let omitted = input.reduce(0) { $0 + $1.points.count } - series.reduce(0) { $0 + $1.count }
    let all = series.flatMap { $0 }
    let legend = input.indices.filter { !input[$0].faint }

    // Layout (px). The legend's width follows its longest name; the plot area takes the rest.
    let rowH = 20.0, legendFont = 12.0, maxLabelW = 260.0
    let labels = input.indices.map { i in
        clipText(input[i].name.isEmpty ? "(unnamed)" : input[i].name, toWidth: maxLabelW, fontSize: legendFont)
            + (series[i].isEmpty ? " (no data)" : "")
    }
    let legendW = legend.isEmpty ? 0 : 44 + (legend.map { estimatedTextWidth(labels[$0], fontSize: legendFont) }.max() ?? 0)
    let width = max(720, 560 + legendW)
    let (left, top, bottom) = (78.0, 48.0, 58.0)
    let plotW = width - left - legendW - 24
    let height = max(440, top + bottom + Double(legend.count) * rowH + 16)
    let plotH = height - top - bottom

    let xs = niceScale(Double(all.map(\.step).min() ?? 0), Double(all.map(\.step).max() ?? 1),
                       maxTicks: 7, integer: true, nonNegative: (all.map(\.step).min() ?? 0) >= 0)
    let ys = niceScale(all.map(\.loss).min() ?? 0, all.map(\.loss).max() ?? 1, maxTicks: 6)
    func px(_ step: Int) -> Double { left + (Double(step) - xs.lo) / (xs.hi - xs.lo) * plotW }
    func py(_ loss: Double) -> Double { top + plotH - (loss - ys.lo) / (ys.hi - ys.lo) * plotH }
    func style(_ i: Int) -> (color: String, dash: String, marker: Int) {
        let s = seriesStyle(input[i].style)
        return (s.color, input[i].dashed && s.dash.isEmpty ? " stroke-dasharray=\"6 3\"" : s.dash, s.marker)
    }

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
             + "transform=\"rotate(-90 20 \(num(top + plotH / 2)))\">\(xmlEscape(yLabel))</text>")
    if all.isEmpty {
        s.append("<text x=\"\(num(left + plotW / 2))\" y=\"\(num(top + plotH / 2))\" text-anchor=\"middle\" font-size=\"13\" fill=\"#888888\">\(xmlEscape(emptyNote))</text>")
    }

    // One line per series (faint ones first, beneath), markers where asked; then the legend.
    for i in input.indices.sorted(by: { (input[$0].faint ? 0 : 1, $0) < (input[$1].faint ? 0 : 1, $1) }) {
        let pts = series[i], (color, dash, shape) = style(i)
        s.append("<g class=\"\(input[i].faint ? "raw" : "line")\" data-series=\"\(xmlEscape(input[i].name))\">")
        if !pts.isEmpty {
            let d = pts.enumerated().map { j, p in (j == 0 ? "M" : "L") + num(px(p.step)) + " " + num(py(p.loss)) }.joined()
            let stroke = input[i].faint ? "stroke-width=\"1\" stroke-opacity=\"0.3\"" : "stroke-width=\"2\""
            s.append("<path class=\"\(input[i].faint ? "raw" : "series")\" d=\"\(d)\" fill=\"none\" stroke=\"\(color)\" \(stroke) "
                     + "stroke-linejoin=\"round\" stroke-linecap=\"round\"\(dash)/>")
            if input[i].markers || pts.count == 1 { for p in pts { s.append(marker(shape, px(p.step), py(p.loss), color)) } }
        }
        s.append("</g>")
    }
    if !legend.isEmpty {
        let lx = left + plotW + 18
        s.append("<g class=\"legend\" font-size=\"12\" fill=\"#222222\">")
        for (row, i) in legend.enumerated() {
            let (color, dash, shape) = style(i)
            let y = top + 10 + Double(row) * rowH
            s.append("<g><title>\(xmlEscape(input[i].name))</title>")
            s.append("<line x1=\"\(num(lx))\" y1=\"\(num(y))\" x2=\"\(num(lx + 28))\" y2=\"\(num(y))\" stroke=\"\(color)\" stroke-width=\"2\"\(dash)/>")
            if input[i].markers { s.append(marker(shape, lx + 14, y, color)) }
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
