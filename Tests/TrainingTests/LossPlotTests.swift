// A run's loss plot (`loss.svg`, `swiftpeft plot`): metrics.jsonl read strictly with file:line errors,
// the trailing mean that smooths the training loss, and the series the SVG draws for one run and for
// several. Writing the plot during `train` and across a resume is checked in CLITests.

import Foundation
import XCTest
@testable import Training

final class LossPlotTests: XCTestCase {
    func steps(_ n: Int, evalEvery: Int) -> [StepMetrics] {
        (1...n).map { s in
            StepMetrics(step: s, loss: 4 - Double(s) / Double(n) + (s % 2 == 0 ? 0.3 : -0.3),
                        valLoss: s % evalEvery == 0 || s == n ? 4 - Double(s) / Double(n) : nil,
                        lr: 1e-3, gradNorm: 1, tokensPerSecond: 100, elapsed: Double(s), totalSteps: n)
        }
    }

    func write(_ text: String) throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("loss-plot-\(UUID().uuidString).jsonl")
        try Data(text.utf8).write(to: url)
        addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url
    }

    func testReadMetricsNamesTheLineAndLeavesOutALineBeingWritten() throws {
        let e = JSONEncoder()
        e.outputFormatting = .sortedKeys
        let lines = try steps(3, evalEvery: 2).map { String(decoding: try e.encode($0), as: UTF8.self) }
        let good = try write(lines.joined(separator: "\n") + "\n")
        XCTAssertEqual(try readMetrics(good), steps(3, evalEvery: 2))
        // A run in progress: half of its next line, no newline yet.
        let writing = try write(lines.joined(separator: "\n") + "\n{\"elapsed\":4.0,\"gra")
        XCTAssertEqual(try readMetrics(writing).count, 3)
        let cases: [(String, String)] = [
            (lines[0] + "\n{\"step\": 2}\n" + lines[2] + "\n", ":2: not a metrics line (no \"loss\")"),
            (lines[0] + "\nnot json\n", ":2: not a metrics line (not JSON)"),
            (lines[0] + "\n" + lines[1].replacingOccurrences(of: "\"loss\":", with: "\"loss\":\"x\",\"_\":") + "\n", ":2: not a metrics line (\"loss\" is not a number)"),
        ]
        for (text, expected) in cases {
            let url = try write(text)
            XCTAssertThrowsError(try readMetrics(url)) { error in
                XCTAssertTrue("\(error)".contains(url.path + expected), "\(error)")
            }
        }
        XCTAssertThrowsError(try metricsFile("/nonexistent/run")) { XCTAssertTrue("\($0)".contains("/nonexistent/run: no such file or folder"), "\($0)") }
        let emptyDir = FileManager.default.temporaryDirectory.appendingPathComponent("loss-plot-empty-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: emptyDir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: emptyDir) }
        XCTAssertThrowsError(try metricsFile(emptyDir.path)) { XCTAssertTrue("\($0)".contains("holds no metrics.jsonl"), "\($0)") }
    }

    func testTrailingMean() {
        let pts = [4.0, 2, 6, 0, 10].enumerated().map { CurvePoint(step: $0 + 1, loss: $1) }
        XCTAssertEqual(trailingMean(pts, window: 2).map(\.loss), [4, 3, 4, 3, 5])
        XCTAssertEqual(trailingMean(pts, window: 3).map(\.loss), [4, 3, 4, 8.0 / 3, 16.0 / 3])
        XCTAssertEqual(trailingMean(pts, window: 1), pts)
        XCTAssertEqual(trailingMean(pts, window: 2).map(\.step), [1, 2, 3, 4, 5])
        XCTAssertEqual(lossSmoothingWindow(24), 1)
        XCTAssertEqual(lossSmoothingWindow(100), 4)
    }

    /// The `d` attribute of every path of class `cls`, as lists of points.
    func paths(_ svg: String, class cls: String) -> [[(Double, Double)]] {
        svg.components(separatedBy: "<path class=\"\(cls)\" d=\"").dropFirst().map { rest in
            let d = rest.prefix { $0 != "\"" }
            return d.split(whereSeparator: { $0 == "M" || $0 == "L" }).map { p in
                let xy = p.split(separator: " ").compactMap { Double($0) }
                return (xy[0], xy[1])
            }
        }
    }

    func testOneRunDrawsRawSmoothedAndValidation() {
        let run = LossRun(name: "run", steps: steps(100, evalEvery: 25))
        let svg = renderLossPlot([run], title: "lora <r=8>: loss")
        let s = CompareReportTests.SVGSummary.parse(svg)
        XCTAssertEqual(s.seriesPaths, 2, "smoothed training loss and validation loss")
        XCTAssertEqual(paths(svg, class: "raw").map(\.count), [100], "the raw training loss, faint, one point per step")
        XCTAssertEqual(paths(svg, class: "series").map(\.count), [100, 4], "smoothed: every step; validation: 25, 50, 75, 100")
        XCTAssertTrue(svg.contains("stroke-opacity=\"0.3\""))
        for t in ["training loss (mean of 4 steps)", "validation loss", "lora <r=8>: loss", "step", "loss"] {
            XCTAssertTrue(s.text.contains(t), t)
        }
        // The raw loss alternates ±0.3 about its trend; the mean of 4 steps does not: its path is smoother.
        func wiggle(_ p: [(Double, Double)]) -> Double { zip(p, p.dropFirst()).map { abs($1.1 - $0.1) }.reduce(0, +) }
        let raw = paths(svg, class: "raw")[0], smooth = paths(svg, class: "series")[0]
        XCTAssertLessThan(wiggle(smooth), wiggle(raw) / 5)
        // Markers: 4 validation squares + the legend's; the training lines have none.
        XCTAssertEqual(svg.components(separatedBy: "width=\"6.8\"").count - 1, 4 + 1)
        XCTAssertEqual(svg.components(separatedBy: "<circle").count - 1, 0)

        // Drawn while it trains (40 of 100 steps), the run is smoothed as it will be at its end: the
        // window comes from the planned steps (4), not from the 40 points so far (which give 1).
        let partial = renderLossPlot([LossRun(name: "run", steps: Array(steps(100, evalEvery: 25).prefix(40)))], title: "t")
        XCTAssertTrue(partial.contains("training loss (mean of 4 steps)"), "the window of the whole run")
        XCTAssertEqual(paths(partial, class: "series")[0].count, 40)
        // Without planned steps (compare's stored curves), the window is a 25th of the points.
        let unplanned = LossRun(name: "run", training: Array(run.training.prefix(40)), validation: [])
        XCTAssertNil(unplanned.plannedSteps)
        XCTAssertEqual(LossRun(name: "run", steps: steps(100, evalEvery: 25)).plannedSteps, 100)
        XCTAssertTrue(renderLossPlot([unplanned], title: "t").contains(">training loss</text>"), "40 points: not smoothed")

        // A short run is not smoothed: one training line, named plainly.
        let short = renderLossPlot([LossRun(name: "run", steps: steps(10, evalEvery: 5))], title: "t")
        XCTAssertEqual(paths(short, class: "raw").count, 0)
        XCTAssertEqual(paths(short, class: "series").map(\.count), [10, 2])
        XCTAssertTrue(short.contains(">training loss</text>"))
    }

    func testSeveralRunsGetAColourEachWithDashedValidation() {
        let runs = [LossRun(name: "lr1e-4", steps: steps(50, evalEvery: 10)),
                    LossRun(name: "lr3e-4 & more", steps: steps(50, evalEvery: 1000)),  // validation at the end only
                    LossRun(name: "none", steps: steps(50, evalEvery: 10).map { var m = $0; m.valLoss = nil; return m })]
        let svg = renderLossPlot(runs, title: "sweep")
        let s = CompareReportTests.SVGSummary.parse(svg)
        XCTAssertEqual(s.seriesPaths, 3 + 2, "three training lines, two validation lines (the third run has none)")
        XCTAssertEqual(paths(svg, class: "raw").count, 0, "no raw lines under several runs")
        XCTAssertEqual(paths(svg, class: "series").map(\.count), [50, 5, 50, 1, 50])
        for t in ["lr1e-4 training loss (mean of 2 steps)", "lr1e-4 validation loss", "lr3e-4 & more validation loss", "none training loss"] {
            XCTAssertTrue(s.text.contains(t), t)
        }
        XCTAssertFalse(s.text.contains("none validation"))
        for c in plotPalette.prefix(3) { XCTAssertTrue(svg.contains("stroke=\"\(c)\""), c) }
        XCTAssertEqual(svg.components(separatedBy: "stroke-dasharray").count - 1, 2 * 2, "two validation lines and their legend lines")
        XCTAssertTrue(renderLossPlot([], title: "t").contains("no finite loss to plot"))
    }

    func testWriteLossPlotReplacesTheFileWhole() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("loss-plot-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("loss.svg")
        try Data("old".utf8).write(to: url)
        try writeLossPlot([LossRun(name: "run", steps: steps(5, evalEvery: 5))], title: "t", to: url)
        let text = try String(contentsOf: url, encoding: .utf8)
        XCTAssertTrue(text.hasPrefix("<?xml") && text.hasSuffix("</svg>\n"))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["loss.svg"], "no temporary left")
        XCTAssertThrowsError(try writeLossPlot([], title: "t", to: dir.appendingPathComponent("missing/loss.svg"))) {
            XCTAssertTrue("\($0)".contains("missing/loss.svg: cannot write the loss plot"), "\($0)")
        }
    }

    /// The plotter `train` uses: redraws as steps come (every 2% and at evaluations), starts from a
    /// resumed run's steps, and says a plot it cannot write once, without stopping anything.
    func testLossPlotterDrawsAsTheRunGoesAndSaysAFailureOnce() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("loss-plotter-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("loss.svg")
        var said: [String] = []
        let all = steps(100, evalEvery: 40)
        let plotter = LossPlotter(url: url, title: "t", warn: { said.append($0) })
        plotter.start(with: Array(all.prefix(10)))
        plotter.add(all[10])  // step 11: no evaluation, not a 2% step: nothing drawn yet
        plotter.waitForDraws()
        XCTAssertFalse(FileManager.default.fileExists(atPath: url.path))
        plotter.add(all[11])  // step 12: 2% of 100 steps is every 2nd
        plotter.waitForDraws()
        XCTAssertEqual(paths(try String(contentsOf: url, encoding: .utf8), class: "series").map(\.count), [12])
        for m in all[12...] { plotter.add(m) }
        plotter.setBaseline(4.5)  // the validation loss before training, at step 0
        XCTAssertTrue(plotter.finish())
        XCTAssertEqual(paths(try String(contentsOf: url, encoding: .utf8), class: "series").map(\.count), [100, 1 + 3])
        XCTAssertEqual(said, [])

        let nowhere = LossPlotter(url: dir.appendingPathComponent("missing/loss.svg"), title: "t", warn: { said.append($0) })
        for m in all.prefix(20) { nowhere.add(m) }
        XCTAssertFalse(nowhere.finish())
        XCTAssertEqual(said.count, 1, "\(said)")
        XCTAssertTrue(said.first?.contains("missing/loss.svg: cannot write the loss plot") == true && said.first?.hasSuffix("(training goes on without it)") == true, "\(said)")
    }
}
