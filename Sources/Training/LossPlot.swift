// A training run's loss curves as an SVG: `<out>/loss.svg`, rewritten by `train` (and by each of
// `compare`'s runs) at every evaluation, every 2% of the steps and at the end, and `swiftpeft plot`, which draws the
// `metrics.jsonl` of several runs on one chart (a learning-rate sweep, two adapter versions).

import Foundation
import Containers

/// One run's loss curves under the name its plot shows.
public struct LossRun {
    /// The legend's name of the run (its lines are "NAME training loss", "NAME validation loss").
    public var name: String
    /// The training loss at each step, and the validation loss at each evaluation.
    public var training: [CurvePoint], validation: [CurvePoint]
    /// The steps the whole run takes, when known: the training loss is smoothed over a 25th of
    /// them, so a run drawn while it trains keeps one window from its first plot to its last
    /// (without it, a 25th of the points there are).
    public var plannedSteps: Int?
    /// A run named `name` with these curves (points in step order).
    public init(name: String, training: [CurvePoint], validation: [CurvePoint], plannedSteps: Int? = nil) {
        (self.name, self.training, self.validation, self.plannedSteps) = (name, training, validation, plannedSteps)
    }
    /// A run's curves from its steps, as `readMetrics` gives them; the planned steps are the last
    /// step's `totalSteps`.
    public init(name: String, steps: [StepMetrics]) {
        self.init(name: name, training: steps.map { CurvePoint(step: $0.step, loss: $0.loss) },
                  validation: steps.compactMap { m in m.valLoss.map { CurvePoint(step: m.step, loss: $0) } },
                  plannedSteps: steps.last?.totalSteps)
    }
}

/// The file a run's metrics are in: `path` itself, or `path/metrics.jsonl` for a run's folder.
public func metricsFile(_ path: String) throws -> URL {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
        throw TrainingError(message: "\(path): no such file or folder (give a train --out folder or its metrics.jsonl)")
    }
    guard isDir.boolValue else { return URL(fileURLWithPath: path) }
    let file = URL(fileURLWithPath: path).appendingPathComponent("metrics.jsonl")
    guard FileManager.default.fileExists(atPath: file.path) else {
        throw TrainingError(message: "\(path): the folder holds no metrics.jsonl (a train --out folder has one once its first step is done)")
    }
    return file
}

/// The steps of a `metrics.jsonl` file, in file order. A line that is not a metrics object fails
/// naming `file:line`. A last line without its newline that does not parse is one still being
/// written (a run in progress) and is not read; every other line is.
public func readMetrics(_ url: URL) throws -> [StepMetrics] {
    let data: Data
    do { data = try Data(contentsOf: url) } catch {
        throw TrainingError(message: "\(url.path): cannot read the metrics (\((error as NSError).localizedDescription))")
    }
    let lines = data.split(separator: 0x0A, omittingEmptySubsequences: false)
    let decoder = JSONDecoder()
    var steps: [StepMetrics] = []
    for (i, line) in lines.enumerated() where !line.allSatisfy({ $0 == 0x20 || $0 == 0x0D || $0 == 0x09 }) {
        do { steps.append(try decoder.decode(StepMetrics.self, from: Data(line))) } catch {
            if i == lines.count - 1 { break }  // no newline after it: being written
            throw TrainingError(message: "\(url.path):\(i + 1): not a metrics line (\(metricsDecodingProblem(error))); expected one JSON object per step as train writes them, e.g. {\"step\": 1, \"loss\": 3.2, \"lr\": 0.0002, ...}")
        }
    }
    return steps
}

/// What a decoding error says in a sentence: the missing or mistyped key.
private func metricsDecodingProblem(_ error: Error) -> String {
    switch error as? DecodingError {
    case .keyNotFound(let key, _): return "no \"\(key.stringValue)\""
    case .typeMismatch(_, let c) where c.codingPath.isEmpty: return "not a JSON object"
    case .typeMismatch(_, let c), .valueNotFound(_, let c):
        return "\"\(c.codingPath.map(\.stringValue).joined(separator: "."))\" is not a number"
    case .dataCorrupted: return "not JSON"
    default: return "\(error)"
    }
}

/// How many steps the smoothed training loss averages over: about a 25th of the run, at least 1.
func lossSmoothingWindow(_ steps: Int) -> Int { max(1, steps / 25) }

/// At each point, the mean of the last `window` points (fewer at the start).
func trailingMean(_ points: [CurvePoint], window: Int) -> [CurvePoint] {
    var sum = 0.0
    return points.indices.map { i in
        sum += points[i].loss
        if i >= window { sum -= points[i - window].loss }
        return CurvePoint(step: points[i].step, loss: sum / Double(min(i + 1, window)))
    }
}

/// The SVG of `runs`' losses against the step. One run: its training loss, raw (faint) and as a
/// trailing mean over `lossSmoothingWindow` of its planned steps (or of its points), and its
/// validation loss with a marker per evaluation. Several runs: a colour each, the smoothed training loss solid and the validation
/// loss dashed with markers.
public func renderLossPlot(_ runs: [LossRun], title: String) -> String {
    var series: [PlotSeries] = []
    for (i, run) in runs.enumerated() {
        let train = run.training.filter { $0.loss.isFinite }, val = run.validation
        let window = lossSmoothingWindow(max(train.count, run.plannedSteps ?? 0))
        let prefix = runs.count == 1 ? "" : run.name + " "
        let trainName = prefix + "training loss" + (window > 1 ? " (mean of \(window) steps)" : "")
        if runs.count == 1 && window > 1 {
            series.append(PlotSeries(name: "training loss", points: train, style: 0, markers: false, faint: true))
        }
        if !train.isEmpty || val.isEmpty {  // a run with validation only (compare's older results) draws that
            series.append(PlotSeries(name: trainName, points: trailingMean(train, window: window), style: i, markers: false))
        }
        if !val.isEmpty {
            series.append(PlotSeries(name: prefix + "validation loss", points: val, style: runs.count == 1 ? 1 : i,
                                     dashed: runs.count > 1))
        }
    }
    return renderLinePlot(series, title: title, yLabel: "loss", emptyNote: "no finite loss to plot")
}

/// Writes `renderLossPlot(runs, title:)` over `url` atomically (temporary file, rename): a reader
/// never sees half a plot.
public func writeLossPlot(_ runs: [LossRun], title: String, to url: URL) throws {
    removeStaleTemporaries(of: url.path)
    let tmp = url.path + ".tmp-\(getpid())"
    do { try Data(renderLossPlot(runs, title: title).utf8).write(to: URL(fileURLWithPath: tmp)) } catch {
        unlink(tmp)
        throw CheckpointError(path: url.path, message: "cannot write the loss plot: \((error as NSError).localizedDescription)")
    }
    try commitTemporary(tmp, to: url.path) { CheckpointError(path: url.path, message: $0) }
}
