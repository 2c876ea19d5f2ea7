// `swiftpeft plot`: the loss curves of several training runs on one chart.
import ArgumentParser
import Foundation
import SwiftPEFT

struct Plot: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Draw the training and validation loss of one or more runs as an SVG.",
        discussion: helpText("""
        Each run is a train --out folder (or its metrics.jsonl), named by its folder or as NAME=PATH.
        One run: its training loss raw and smoothed, its validation loss at each evaluation and, where
        the folder's state.h5 keeps it, before training (as the loss.svg train writes). Several: a
        colour per run, training loss solid, validation dashed.

        Examples:
          swiftpeft plot runs/lora --out lora.svg
          swiftpeft plot lr1e-4=runs/a lr3e-4=runs/b --out lr.svg --title "LoRA r=16, two learning rates"
          swiftpeft plot runs/compare/lora runs/compare/ia3 runs/compare/prompt --out methods.svg
        """))

    @Argument(help: "Runs: train --out folders or metrics.jsonl files, each optionally NAME=PATH.") var runs: [String]
    @Option(help: "The SVG file to write.") var out: String
    @Option(help: "The chart's title.") var title = "Loss vs step"

    func run() throws {
        let ext = URL(fileURLWithPath: out).pathExtension.lowercased()
        guard ext == "svg" || ext.isEmpty else { throw CLIError("--out \(out) ends in .\(ext), but plot writes an SVG image; name it .svg") }
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: out, isDirectory: &isDir), isDir.boolValue {
            throw CLIError("--out \(out) is a folder, but plot writes an SVG file; name one, e.g. \((out as NSString).appendingPathComponent("loss-runs.svg"))")
        }
        var loaded: [LossRun] = []
        for arg in runs {
            var (name, path) = (nil as String?, arg)
            if let eq = arg.firstIndex(of: "="), !FileManager.default.fileExists(atPath: arg) {
                (name, path) = (String(arg[..<eq]), String(arg[arg.index(after: eq)...]))
                guard !name!.isEmpty else { throw CLIError("'\(arg)': empty name before '='; write NAME=PATH") }
            }
            let file: URL, steps: [StepMetrics]
            do {
                file = try metricsFile(path)
                steps = try readMetrics(file)
            } catch where name != nil {
                throw CLIError("'\(arg)' read as NAME=PATH: \(error)")
            }
            guard !steps.isEmpty else { throw CLIError("\(file.path): holds no steps yet") }
            let whole = file.standardizedFileURL
            let folder = whole.lastPathComponent == "metrics.jsonl" ? whole.deletingLastPathComponent() : whole.deletingPathExtension()
            let runName = name ?? folder.lastPathComponent
            if loaded.contains(where: { $0.name == runName }) {
                throw CLIError("two runs are named '\(runName)'; name them apart as NAME=PATH")
            }
            var run = LossRun(name: runName, steps: steps)
            // The validation loss before training, which train keeps in the run's state.
            let state = file.deletingLastPathComponent().appendingPathComponent("state.h5").path
            if FileManager.default.fileExists(atPath: state),
               let before = (try? HDF5Store.readAttributes(state))?["validation_before"].flatMap(Double.init) {
                run.validation.insert(CurvePoint(step: 0, loss: before), at: 0)
            }
            loaded.append(run)
            let last = steps.last!, val = steps.last { $0.valLoss != nil }
            print("\(runName): \(steps.count) steps (\(steps.first!.step)–\(last.step)), last training loss "
                  + String(format: "%.4f", last.loss)
                  + (val.map { String(format: ", validation loss %.4f at step %d", $0.valLoss!, $0.step) } ?? ", no validation"))
        }
        let url = URL(fileURLWithPath: out)
        do { try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true) } catch {
            throw CLIError("\(out): cannot create its folder (\((error as NSError).localizedDescription))")
        }
        try writeLossPlot(loaded, title: title, to: url)
        print("wrote \(out)")
    }
}
