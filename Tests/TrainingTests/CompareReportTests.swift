// The `swiftpeft compare` report: table, Markdown and CSV content for fake results, JSON round trip,
// a well-formed SVG plot for normal and degenerate curves, and that rsvg-convert renders it to a
// non-blank PNG (skipped loudly when rsvg-convert, Debian's librsvg2-bin, is not installed).

import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import XCTest
import TestSupport
@testable import Training
import TensorCore
import NN
import Models
import Tokenizers
import PEFT
import Containers
import Formats

final class CompareReportTests: XCTestCase {
    /// `inspect`'s helpers: tensor names with their numbers compared as numbers, a config on one line.
    func testInspectOrdersNumbersAsNumbersAndPrintsJSONOnOneLine() {
        XCTAssertEqual(["layers.10.q", "layers.2.q", "layers.1.q", "embed"].sorted(by: numericOrder), ["embed", "layers.1.q", "layers.2.q", "layers.10.q"])
        XCTAssertEqual(compactJSON("{\n  \"r\" : 8,\n  \"alpha_pattern\" : {\n\n  }\n}"), #"{"alpha_pattern":{},"r":8}"#)
        XCTAssertEqual(compactJSON("not json\n  here"), "not json here")
    }

    /// A loss curve decaying from `start` towards `floor`, every 50 steps up to 500.
    static func curve(_ start: Double, _ floor: Double, rate: Double) -> [CurvePoint] {
        stride(from: 0, through: 500, by: 50).map { s in
            CurvePoint(step: s, loss: floor + (start - floor) * exp(-rate * Double(s)))
        }
    }

    static let fake: [MethodResult] = [
        MethodResult(method: "lora", trainableParams: 1_234_567, percentOfBase: 0.0625, adapterBytes: 12_288,
                     trainSeconds: 42.25, tokensPerSecond: 12_345.6, peakMemoryBytes: 300 * 1_048_576,
                     finalTrainLoss: 2.123456, finalValLoss: 2.25, perplexity: 9.487736,
                     curve: curve(4.2, 2.25, rate: 0.008), trainCurve: curve(4.1, 2.12, rate: 0.009)),
        MethodResult(method: "ia3", trainableParams: 4_096, percentOfBase: 0.00321, adapterBytes: 1_572_864,
                     trainSeconds: 125, tokensPerSecond: 20_000, peakMemoryBytes: 250 * 1_048_576,
                     finalTrainLoss: 2.6, finalValLoss: 2.7, perplexity: 14.879732,
                     curve: curve(4.2, 2.7, rate: 0.005)),
        MethodResult(method: "prefix, r=8 \"long\"", trainableParams: 98_304, percentOfBase: 1.5, adapterBytes: 800,
                     trainSeconds: 3725, tokensPerSecond: 9_876.4, peakMemoryBytes: 512 * 1_048_576,
                     finalTrainLoss: 3.0, finalValLoss: 3.1, perplexity: 22.197951,
                     curve: curve(4.2, 3.1, rate: 0.004)),
    ]

    // MARK: tables

    func testTableIsAlignedAndFormatsNumbers() {
        let table = renderTable(Self.fake)
        let lines = table.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 2 + Self.fake.count)
        XCTAssertEqual(Set(lines.map(\.count)).count, 1, "rows differ in width:\n\(table)")
        for title in ["Method", "Trainable params", "% of base", "Adapter", "Train time", "Tokens/s",
                      "Peak mem", "Train loss", "Val loss", "Perplexity"] {
            XCTAssertTrue(lines[0].contains(title), "header lacks \(title)")
        }
        XCTAssertTrue(lines[1].allSatisfy { $0 == "-" || $0 == " " })
        // lora: grouped params, 3 significant digits of a small percent, KB, seconds, rounded rate.
        for cell in ["1,234,567", "0.0625%", "12.0 KB", "42.2 s", "12,346", "300.0 MiB", "2.1235", "2.2500", "9.49"] {
            XCTAssertTrue(lines[2].contains(cell), "lora row lacks \(cell): \(lines[2])")
        }
        for cell in ["4,096", "0.00321%", "1.50 MB", "2m 05s", "20,000"] { XCTAssertTrue(lines[3].contains(cell), cell) }
        for cell in ["800 B", "1.50%", "1h 02m"] { XCTAssertTrue(lines[4].contains(cell), cell) }
        // Numbers align right: every row's perplexity ends at the line's end.
        XCTAssertTrue(lines[2].hasSuffix(" 9.49"))
    }

    func testMarkdownHasSameColumnsAndEscapesPipes() {
        var results = Self.fake
        results[0].method = "lo|ra"
        let md = renderMarkdown(results)
        let lines = md.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 2 + results.count)
        XCTAssertEqual(lines[1], "| :--- |" + String(repeating: " ---: |", count: 10))
        for line in lines {
            XCTAssertTrue(line.hasPrefix("| ") && line.hasSuffix(" |"), line)
            // 12 unescaped pipes = 11 columns.
            XCTAssertEqual(line.replacingOccurrences(of: "\\|", with: "").filter { $0 == "|" }.count, 12, line)
        }
        XCTAssertTrue(lines[2].hasPrefix("| lo\\|ra | 1,234,567 | 0.0625% | 12.0 KB |"), lines[2])
    }

    /// RFC 4180: fields separated by commas, records by CRLF; a quoted field may hold commas, CRLF
    /// and doubled quotes.
    static func parseCSV(_ text: String) -> [[String]] {
        var rows: [[String]] = [], row: [String] = [], field = "", quoted = false
        var it = Array(text).makeIterator()
        var pending: Character? = nil
        while let c = pending ?? it.next() {
            pending = nil
            if quoted {
                if c == "\"" {
                    let n = it.next()
                    if n == "\"" { field.append("\"") } else { quoted = false; pending = n }
                } else { field.append(c) }
            } else if c == "\"" { quoted = true }
            else if c == "," { row.append(field); field = "" }
            else if c == "\r\n" || c == "\n" { row.append(field); rows.append(row); row = []; field = "" }
            else { field.append(c) }
        }
        if !field.isEmpty || !row.isEmpty { row.append(field); rows.append(row) }
        return rows
    }

    func testCSVParsesBackWithQuotingAndRawNumbers() {
        var results = Self.fake
        results[1].finalValLoss = .nan
        let csv = renderCSV(results)
        XCTAssertTrue(csv.contains("\r\n"))
        XCTAssertTrue(csv.contains("\"prefix, r=8 \"\"long\"\"\""), "name with a comma and quotes is not quoted:\n\(csv)")
        // CRLF is one Character, equal to neither "\r" nor "\n": the scalars are looked at.
        XCTAssertEqual(csvField("line\r\nnext"), "\"line\r\nnext\"")
        XCTAssertEqual(csvField("plain"), "plain")
        let rows = Self.parseCSV(csv)
        XCTAssertEqual(rows.count, 1 + results.count)
        XCTAssertEqual(rows[0], compareCSVHeader)
        for (row, r) in zip(rows.dropFirst(), results) {
            XCTAssertEqual(row.count, 14)
            XCTAssertEqual(row[0], r.method)
            XCTAssertEqual(Int(row[1]), r.trainableParams)
            XCTAssertEqual(Double(row[2]), r.percentOfBase)
            XCTAssertEqual(Int(row[3]), r.adapterBytes)
            XCTAssertEqual(Double(row[4]), r.trainSeconds)
            XCTAssertEqual(Double(row[5]), r.tokensPerSecond)
            XCTAssertEqual(Int(row[6]), r.peakMemoryBytes)
            XCTAssertEqual(Double(row[7]), r.finalTrainLoss)
            XCTAssertEqual(Double(row[9]), r.perplexity)
        }
        XCTAssertEqual(Double(rows[1][8]), 2.25)
        XCTAssertEqual(rows[2][8], "nan")
        // Cost columns: empty without a cost, raw numbers and the source with one.
        XCTAssertEqual(Array(rows[1].suffix(4)), ["", "", "", ""])
        results[0].cost = Cost(tokens: 5, wallSeconds: 1, cpuSeconds: 1.5, peakRSSBytes: 1, energyJoules: 15, energySource: "estimate", wattsPerCore: 10)
        XCTAssertEqual(Array(Self.parseCSV(renderCSV(results))[1].suffix(4)), ["1.5", "15.0", "estimate", ""])
    }

    /// A method whose run failed: its row marked and dashed but for the last training loss it logged,
    /// the reason's first line after the table (Markdown too), the whole reason in CSV and JSON, and
    /// the curves of the steps it logged.
    func testAFailedMethodIsReportedWithItsReason() throws {
        let steps = (1...4).map { StepMetrics(step: $0, loss: 5 - Double($0) / 10, valLoss: $0 == 2 ? 4.5 : nil, lr: 0.1, gradNorm: 1,
                                              tokensPerSecond: 100, elapsed: 0, totalSteps: 10) }
        let failed = MethodResult(failed: "full", failure: "step 5: the loss is nan; stopping.\nHINT: lower the learning rate", steps: steps)
        XCTAssertEqual(failed.curve, [CurvePoint(step: 2, loss: 4.5)])
        XCTAssertEqual(failed.trainCurve?.map(\.step), [1, 2, 3, 4])
        let results = [Self.fake[0], failed]
        let table = renderTable(results)
        let lines = table.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 2 + 2 + 1, table)
        XCTAssertTrue(lines[3].hasPrefix("full (failed)") && lines[3].contains("–") && lines[3].contains("4.6000"), table)
        XCTAssertFalse(lines[3].contains("nan"), table)
        XCTAssertEqual(lines[4], "full failed: step 5: the loss is nan; stopping.")
        let md = renderMarkdown(results)
        XCTAssertTrue(md.contains("| full (failed) | – |") && md.contains("\n- **full** failed: step 5: the loss is nan; stopping.\n"), md)
        XCTAssertFalse(md.contains("HINT"), md)
        let rows = Self.parseCSV(renderCSV(results))
        XCTAssertEqual(rows[1].last, "")
        XCTAssertEqual(rows[2].last, "step 5: the loss is nan; stopping.\nHINT: lower the learning rate")
        let back = try decodeCompareResults(try encodeCompareResults(results))
        XCTAssertNil(back[0].failure)
        XCTAssertEqual(back[1].failure, failed.failure)
        XCTAssertEqual(back[1].trainCurve, failed.trainCurve)
    }

    func testJSONRoundTripsIncludingNonFiniteValues() throws {
        var results = Self.fake
        results[2].perplexity = .infinity
        results[2].curve[3].loss = .nan
        let back = try decodeCompareResults(try encodeCompareResults(results))
        XCTAssertEqual(back[0], results[0])
        XCTAssertEqual(back[1], results[1])
        XCTAssertNil(back[1].trainCurve)
        XCTAssertEqual(back[2].perplexity, .infinity)
        XCTAssertTrue(back[2].curve[3].loss.isNaN)
        XCTAssertEqual(back[2].method, results[2].method)
    }

    // MARK: SVG

    /// What an SVG holds: whether it parsed, its series paths, and all of its text.
    final class SVGSummary: NSObject, XMLParserDelegate {
        var seriesPaths = 0, markers = 0, text = "", error: Error?
        var numbers: [String] = []
        func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?,
                    qualifiedName: String?, attributes: [String: String] = [:]) {
            text += "\n"
            if name == "path" && attributes["class"] == "series" { seriesPaths += 1 }
            if name == "circle" || name == "rect" { markers += 1 }
            for key in ["x", "y", "x1", "y1", "x2", "y2", "cx", "cy", "d", "width", "height"] {
                if let v = attributes[key] { numbers.append(v) }
            }
        }
        func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
            text += "\n"
        }
        // The parser may hand over one element's text in pieces (at entities, for one).
        func parser(_ parser: XMLParser, foundCharacters string: String) { text += string }
        func parser(_ parser: XMLParser, parseErrorOccurred parseError: Error) { error = parseError }

        static func parse(_ svg: String, file: StaticString = #filePath, line: UInt = #line) -> SVGSummary {
            let summary = SVGSummary()
            let parser = XMLParser(data: Data(svg.utf8))
            parser.delegate = summary
            let ok = parser.parse()
            XCTAssertTrue(ok, "SVG is not well-formed XML: \(String(describing: parser.parserError ?? summary.error))",
                          file: file, line: line)
            XCTAssertFalse(summary.numbers.contains { $0.lowercased().contains("nan") || $0.lowercased().contains("inf") },
                           "a coordinate is not finite", file: file, line: line)
            return summary
        }
    }

    func testSVGIsWellFormedWithOnePathPerMethodAndALegend() {
        var results = Self.fake
        results[0].method = "lora <r=8> & \"alpha\""
        let svg = renderSVGPlot(results, title: "Compare: tiny-llama <test> & friends")
        let s = SVGSummary.parse(svg)
        XCTAssertEqual(s.seriesPaths, results.count)
        for r in results { XCTAssertTrue(s.text.contains(r.method), "legend lacks \(r.method)") }
        XCTAssertTrue(s.text.contains("Compare: tiny-llama <test> & friends"))
        XCTAssertTrue(s.text.contains("step") && s.text.contains("validation loss"))
        XCTAssertTrue(svg.contains("&lt;r=8&gt; &amp; &quot;alpha&quot;"))
        // Distinct colours, from the palette.
        for c in plotPalette.prefix(results.count) { XCTAssertTrue(svg.contains("stroke=\"\(c)\""), c) }
        // Round y ticks over [2.25, 4.2]: 2.0 ... 4.5 by 0.5.
        for t in ["2.0", "2.5", "3.0", "3.5", "4.0", "4.5"] { XCTAssertTrue(s.text.contains(t + "\n"), "no y tick \(t)") }
        for t in ["0", "100", "200", "300", "400", "500"] { XCTAssertTrue(s.text.contains("\n" + t + "\n"), "no x tick \(t)") }
    }

    func testSVGHandlesDegenerateCurves() {
        let long = String(repeating: "a-very-long-method-name-", count: 6)
        func result(_ name: String, _ pts: [(Int, Double)]) -> MethodResult {
            MethodResult(method: name, trainableParams: 1, percentOfBase: 0.1, adapterBytes: 1, trainSeconds: 1,
                         tokensPerSecond: 1, peakMemoryBytes: 1, finalTrainLoss: 1, finalValLoss: 1, perplexity: 1,
                         curve: pts.map { CurvePoint(step: $0.0, loss: $0.1) })
        }
        let cases: [(String, [MethodResult], Int)] = [
            ("single point", [result("one", [(100, 2.5)])], 1),
            ("identical values", [result("flat", [(0, 3), (10, 3), (20, 3)]), result("flat2", [(0, 3)])], 2),
            ("non-finite", [result("nan", [(0, 4), (10, .nan), (20, .infinity), (30, -.infinity), (40, 2)])], 1),
            ("all non-finite", [result("bad", [(0, .nan)]), result("good", [(0, 1), (5, 0.5)])], 1),
            ("long name", [result(long, [(0, 1), (1, 0.9)])], 1),
            ("empty", [], 0),
            ("no points", [result("none", [])], 0),
            ("unsorted steps", [result("u", [(20, 1), (0, 3), (10, 2)])], 1),
            ("many methods", (0..<12).map { result("m\($0)", [(0, Double($0)), (10, Double($0) / 2)]) }, 12),
        ]
        for (name, results, paths) in cases {
            let svg = renderSVGPlot(results, title: name)
            let s = SVGSummary.parse(svg)
            XCTAssertEqual(s.seriesPaths, paths, name)
            for r in results where r.method != long { XCTAssertTrue(s.text.contains(r.method), "\(name): legend lacks \(r.method)") }
        }
        let nan = renderSVGPlot(cases[2].1, title: "t")
        XCTAssertTrue(nan.contains("3 non-finite points omitted"))
        XCTAssertEqual(nan.components(separatedBy: "<circle").count - 1, 2 + 1, "2 finite points + 1 legend marker")
        let longSVG = renderSVGPlot(cases[4].1, title: "t")
        XCTAssertTrue(longSVG.contains("<title>\(long)</title>"), "full name kept as the tooltip")
        XCTAssertTrue(longSVG.contains(">a-very-long-method-name-a-very-long"), "legend starts the name")
        XCTAssertTrue(longSVG.contains("…</text>"), "legend cuts the name with an ellipsis")
        XCTAssertLessThanOrEqual(estimatedTextWidth(clipText(long, toWidth: 260, fontSize: 12), fontSize: 12), 260)
        XCTAssertGreaterThan(estimatedTextWidth("WWWW", fontSize: 12), estimatedTextWidth("iiii", fontSize: 12) * 2)
        XCTAssertTrue(renderSVGPlot([], title: "t").contains("no finite validation loss"))
    }

    func testNiceTicks() {
        XCTAssertEqual(niceScale(0, 1).ticks, [0, 0.2, 0.4, 0.6, 0.8, 1.0])
        XCTAssertEqual(niceScale(2.25, 4.2).ticks, [2, 2.5, 3, 3.5, 4, 4.5])
        XCTAssertEqual(niceScale(0, 500, maxTicks: 7, integer: true).ticks, [0, 100, 200, 300, 400, 500])
        XCTAssertEqual(niceScale(0, 3, maxTicks: 7, integer: true).ticks, [0, 1, 2, 3])
        let flat = niceScale(3, 3)  // identical values widen to [2.7, 3.3]
        XCTAssertLessThan(flat.lo, 3)
        XCTAssertGreaterThan(flat.hi, 3)
        XCTAssertEqual(niceScale(0, 0, integer: true, nonNegative: true).lo, 0)
        XCTAssertEqual(niceScale(0.1, 0.35).ticks, [0.1, 0.2, 0.3, 0.4])
        XCTAssertEqual(niceScale(0.1, 0.2).ticks, [0.1, 0.12, 0.14, 0.16, 0.18, 0.2])
        XCTAssertEqual(niceScale(0.1, 0.2).decimals, 2)
        XCTAssertEqual(niceScale(2.25, 4.2).decimals, 1)
    }

    /// rsvg-convert (Debian: librsvg2-bin), or nil.
    static let rsvgConvert = ["/usr/bin/rsvg-convert", "/usr/local/bin/rsvg-convert"]
        .first { FileManager.default.isExecutableFile(atPath: $0) }

    /// Writes `svg` beside `png` and converts it with rsvg-convert; returns the PNG's bytes.
    func renderPNG(_ svg: String, to png: URL, tool: String) throws -> Data {
        let svgURL = png.deletingPathExtension().appendingPathExtension("svg")
        try Data(svg.utf8).write(to: svgURL)
        try? FileManager.default.removeItem(at: png)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = ["--format", "png", "--output", png.path, svgURL.path]
        let err = Pipe()
        p.standardError = err
        try p.run()
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, "rsvg-convert failed on \(svgURL.path): \(stderr)")
        return try Data(contentsOf: png)
    }

    /// Renders the plot with rsvg-convert and checks the PNG: signature, IHDR size, not blank.
    /// The PNG stays in $TMPDIR/swiftpeft-compare-plot/ to look at.
    func testSVGRendersToPNG() throws {
        guard let tool = Self.rsvgConvert else {
            try skipUnlessRequired("rsvg-convert not installed (scripts/setup installs librsvg2-bin): the SVG render check did NOT run")
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("swiftpeft-compare-plot")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        var results = Self.fake
        results.append(MethodResult(method: "bottleneck adapter (Pfeiffer), reduction factor 16, after MLP",
                                    trainableParams: 10, percentOfBase: 0.01, adapterBytes: 10, trainSeconds: 1,
                                    tokensPerSecond: 1, peakMemoryBytes: 1, finalTrainLoss: 3, finalValLoss: 3.3,
                                    perplexity: 27, curve: Self.curve(4.2, 3.3, rate: 0.01) + [CurvePoint(step: 550, loss: .nan)]))
        let pngURL = dir.appendingPathComponent("val_loss.png")
        let png = try renderPNG(renderSVGPlot(results, title: "Validation loss: tiny-llama, 500 steps"), to: pngURL, tool: tool)
        XCTAssertEqual(Array(png.prefix(8)), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A], "not a PNG")
        XCTAssertEqual(String(decoding: png[12..<16], as: UTF8.self), "IHDR")
        let be = { (o: Int) in png[o..<(o + 4)].reduce(0) { $0 << 8 | Int($1) } }
        let (w, h) = (be(16), be(20))
        XCTAssertGreaterThanOrEqual(w, 720)
        XCTAssertGreaterThanOrEqual(h, 440)
        XCTAssertLessThan(w, 2000)
        // A blank white image this size compresses to about 2 KB and the axes-only plot of no results to
        // about 14 KB; four curves with markers and a legend add tens of KB more.
        let axesOnly = try renderPNG(renderSVGPlot([], title: "Validation loss: tiny-llama, 500 steps"),
                                     to: dir.appendingPathComponent("empty.png"), tool: tool)
        XCTAssertGreaterThan(axesOnly.count, 5_000, "the axes-only PNG looks blank (\(axesOnly.count) bytes)")
        XCTAssertGreaterThan(png.count, axesOnly.count + 15_000,
                             "the curves did not draw: \(png.count) bytes vs \(axesOnly.count) for axes only")
        print("rendered plot: \(pngURL.path) (\(w)×\(h), \(png.count) bytes)")
    }

    // MARK: report folder and memory

    func testWriteCompareReportWritesFiveFilesAtomically() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("compare-report-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let urls = try writeCompareReport(Self.fake, to: dir, title: "Compare on tiny-llama",
                                          setup: "base: tiny-llama (1.2 M params); 500 steps; batch 8 × 128 tokens")
        XCTAssertEqual(urls.map(\.lastPathComponent), ["report.md", "results.csv", "results.json", "val_loss.svg", "loss.svg"])
        for u in urls { XCTAssertTrue(FileManager.default.fileExists(atPath: u.path), u.path) }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted(), compareReportFiles.sorted())
        let parent = dir.deletingLastPathComponent().path
        let left = try FileManager.default.contentsOfDirectory(atPath: parent).filter { $0.hasPrefix(".\(dir.lastPathComponent)") }
        XCTAssertEqual(left, [], "temporary folders left behind")
        let md = try String(contentsOf: urls[0], encoding: .utf8)
        XCTAssertTrue(md.hasPrefix("# Compare on tiny-llama\n"))
        XCTAssertTrue(md.contains(renderMarkdown(Self.fake)))
        XCTAssertTrue(md.contains("![validation loss](val_loss.svg)"))
        XCTAssertTrue(md.contains("500 steps; batch 8 × 128 tokens"))
        XCTAssertEqual(try decodeCompareResults(Data(contentsOf: urls[2])), Self.fake)
        XCTAssertEqual(try String(contentsOf: urls[1], encoding: .utf8), renderCSV(Self.fake))
        _ = SVGSummary.parse(try String(contentsOf: urls[3], encoding: .utf8))
        // loss.svg: each method's training line (when it has one) and its dashed validation line.
        let both = SVGSummary.parse(try String(contentsOf: urls[4], encoding: .utf8))
        XCTAssertEqual(both.seriesPaths, 3 + 1, "three validation lines and lora's training line")
        XCTAssertTrue(both.text.contains("lora training loss") && both.text.contains("ia3 validation loss"), both.text)
        XCTAssertTrue(md.contains("[loss.svg](loss.svg)"))
        // Writing again replaces the five files together (the folder is swapped, not file by file).
        let before = try FileManager.default.attributesOfItem(atPath: dir.path)[.systemFileNumber] as? Int
        _ = try writeCompareReport(Array(Self.fake.prefix(1)), to: dir, title: "again")
        XCTAssertEqual(try decodeCompareResults(Data(contentsOf: urls[2])).count, 1)
        XCTAssertTrue(try String(contentsOf: urls[0], encoding: .utf8).hasPrefix("# again\n"))
        XCTAssertNotEqual(try FileManager.default.attributesOfItem(atPath: dir.path)[.systemFileNumber] as? Int, before,
                          "a new folder was renamed into place")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: parent).filter { $0.hasPrefix(".\(dir.lastPathComponent)") }, [])
    }

    func testWriteCompareReportNamesTheFileOnFailure() {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("not-a-folder-\(UUID().uuidString)")
        XCTAssertTrue(FileManager.default.createFile(atPath: file.path, contents: Data()))
        defer { try? FileManager.default.removeItem(at: file) }
        XCTAssertThrowsError(try writeCompareReport(Self.fake, to: file, title: "t")) { error in
            XCTAssertTrue("\(error)".contains(file.path), "\(error)")
            XCTAssertTrue("\(error)".contains("HINT"), "\(error)")
        }
    }

    func testResidentMemoryProbes() throws {
        #if os(Linux)
        let now = currentResidentBytes(), peak = peakResidentBytes()  // in this order: RSS may grow between
        XCTAssertGreaterThan(now, 1_000_000)
        XCTAssertGreaterThanOrEqual(peak, now)
        // Touch 64 MB of fresh pages: the peak grows by about that much. mmap, not malloc: the heap may
        // hand back pages that are resident already (the test failed that way once in a full run).
        let size = 64 << 20
        let block = try XCTUnwrap(mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))
        XCTAssertNotEqual(block, MAP_FAILED)
        memset(block, 1, size)
        XCTAssertGreaterThan(peakResidentBytes(), now + 48 << 20)
        munmap(block, size)
        if resetPeakResidentBytes() {
            XCTAssertLessThan(peakResidentBytes(), peak + 48 << 20, "VmHWM was not reset")
        }
        #else
        try skipUnlessRequired("VmHWM / VmRSS come from Linux's /proc")
        #endif
    }
}
