// `swiftpeft train`, `eval` and `compare`, with the shared options, a JSON config file, and a
// progress bar on a terminal (plain log lines otherwise).
import ArgumentParser
import Foundation
import Training

/// Options shared by train and compare. Any of them may come from `--config FILE.json` (keys are
/// the option names with dashes, e.g. "seq-len"; "trainer" and "method-config" hold objects);
/// flags given on the command line win.
struct CommonTrainOptions: ParsableArguments {
    @Option(help: "Base model checkpoint (.h5).") var model: String?
    @Option(help: "Training data: a text file or folder, or JSONL (text, prompt/completion, instruction, chat).") var data: String?
    @Option(help: "Output folder.") var out: String?
    @Option(help: "JSON file with any of these options.") var config: String?
    @Option(help: "Optimizer steps.") var steps: Int?
    @Option(help: "Passes over the training data (instead of --steps).") var epochs: Double?
    @Option(help: "Peak learning rate.") var lr: Float?
    @Option(help: "Schedule: constant, linear or cosine.") var schedule: String?
    @Option(help: "Warmup steps.") var warmup: Int?
    @Option(help: "Optimizer: adamw or sgd.") var optimizer: String?
    @Option(help: "Sequences per micro-batch.") var batchSize: Int?
    @Option(help: "Micro-batches per optimizer step.") var gradAccumulation: Int?
    @Option(help: "Tokens per sequence.") var seqLen: Int?
    @Option(help: "Pack examples into full rows (default) or pad one example per row.") var packing: Bool?
    @Option(help: "Validation fraction of the examples.") var valFraction: Double?
    @Option(help: "Validation file (instead of a fraction).") var valData: String?
    @Option(help: "Evaluate every N steps.") var evalEvery: Int?
    @Option(help: "Checkpoint every N steps.") var saveEvery: Int?
    @Option(help: "Log a line every N steps when output is not a terminal.") var logEvery: Int?
    @Option(help: "LoRA rank.") var r: Int?
    @Option(help: "LoRA alpha.") var alpha: Float?
    @Option(help: "LoRA dropout.") var loraDropout: Float?
    @Option(help: "Comma-separated target modules (suffixes), e.g. q_proj,v_proj.") var targetModules: String?
    @Option(help: "Virtual tokens (prompt, prefix, P-Tuning).") var numVirtualTokens: Int?
    @Option(help: "PEFT-style method config JSON (adapter_config.json fields).") var methodConfig: String?
    @Option(help: "Random seed.") var seed: UInt64?

    /// The job, from the config file (if any) overridden by flags.
    func job(method: String?) throws -> (TrainJob, String) {
        var file: [String: Any] = [:]
        if let config {
            guard let d = FileManager.default.contents(atPath: config),
                  let obj = try? JSONSerialization.jsonObject(with: d) as? [String: Any] else {
                throw CLIError("\(config): not a readable JSON object")
            }
            file = obj
        }
        func str(_ k: String) -> String? { file[k] as? String }
        func num(_ k: String) -> Double? { (file[k] as? NSNumber)?.doubleValue }
        guard let model = model ?? str("model") else { throw CLIError("--model is required (or \"model\" in --config)") }
        guard let data = data ?? str("data") else { throw CLIError("--data is required (or \"data\" in --config)") }
        guard let out = out ?? str("out") else { throw CLIError("--out is required (or \"out\" in --config)") }
        var job = TrainJob(modelPath: model, dataPath: data, outDir: out)
        if let t = file["trainer"] {
            job.trainer = try JSONDecoder().decode(TrainerOptions.self, from: JSONSerialization.data(withJSONObject: t))
        }
        job.method = method ?? str("method") ?? "lora"
        if let v = steps ?? num("steps").map(Int.init) { job.trainer.steps = v }
        if let v = epochs ?? num("epochs") {
            guard v > 0 else { throw CLIError("--epochs must be positive, got \(v)") }
            job.epochs = v
        }
        if let v = lr ?? num("lr").map(Float.init) { job.trainer.lr = v }
        if let v = schedule ?? str("schedule") {
            guard let s = Schedule(rawValue: v) else { throw CLIError("--schedule must be constant, linear or cosine, got \(v)") }
            job.trainer.schedule = s
        }
        if let v = warmup ?? num("warmup").map(Int.init) { job.trainer.warmupSteps = v }
        if let v = optimizer ?? str("optimizer") { job.trainer.optimizer = v }
        if let v = gradAccumulation ?? num("grad-accumulation").map(Int.init) { job.trainer.gradAccumulation = v }
        if let v = evalEvery ?? num("eval-every").map(Int.init) { job.trainer.evalEvery = v }
        if let v = saveEvery ?? num("save-every").map(Int.init) { job.trainer.saveEvery = v }
        if let v = logEvery ?? num("log-every").map(Int.init) { job.trainer.logEvery = max(1, v) }
        if let v = seed ?? num("seed").map(UInt64.init) { job.trainer.seed = v }
        if let v = batchSize ?? num("batch-size").map(Int.init) { job.batchSize = v }
        if let v = seqLen ?? num("seq-len").map(Int.init) { job.data.seqLen = v }
        if let v = packing ?? (file["packing"] as? Bool) { job.data.packing = v }
        if let v = valData ?? str("val-data") { job.data.validation = .file(v) }
        else if let v = valFraction ?? num("val-fraction") { job.data.validation = .fraction(v) }
        if let v = r ?? num("r").map(Int.init) { job.methodOptions.r = v }
        if let v = alpha ?? num("alpha").map(Float.init) { job.methodOptions.alpha = v }
        if let v = loraDropout ?? num("lora-dropout").map(Float.init) { job.methodOptions.dropout = v }
        if let v = targetModules ?? str("target-modules") { job.methodOptions.targetModules = v.split(separator: ",").map(String.init) }
        if let v = numVirtualTokens ?? num("num-virtual-tokens").map(Int.init) { job.methodOptions.numVirtualTokens = v }
        if let path = methodConfig ?? str("method-config") {
            guard let d = FileManager.default.contents(atPath: path) else { throw CLIError("\(path): cannot read the method config") }
            job.methodOptions.methodConfig = d
        } else if let obj = file["method-config"] as? [String: Any] {
            job.methodOptions.methodConfig = try JSONSerialization.data(withJSONObject: obj)
        }
        guard job.trainer.steps > 0, job.batchSize > 0, job.data.seqLen > 1 else {
            throw CLIError("steps, batch size and sequence length must be positive")
        }
        return (job, job.method)
    }
}

/// A one-line progress display: a bar on a terminal (redrawn in place), plain lines otherwise.
final class Progress {
    let total: Int
    let label: String
    let tty = isatty(STDOUT_FILENO) != 0
    let start = Date()
    var lastVal: Double?
    let every: Int
    init(total: Int, label: String = "", every: Int = 10) {
        (self.total, self.label, self.every) = (total, label, max(1, every))
    }

    func update(_ m: StepMetrics) {
        if let v = m.valLoss { lastVal = v }
        let elapsed = Date().timeIntervalSince(start)
        let eta = m.step > 0 ? elapsed / Double(m.step) * Double(total - m.step) : 0
        var text = String(format: "%@step %d/%d  loss %.4f", label, m.step, total, m.loss)
        if let v = lastVal { text += String(format: "  val %.4f", v) }
        text += String(format: "  %.0f tok/s  ETA %@", m.tokensPerSecond, Progress.clock(eta))
        if tty {
            let width = 24, filled = width * m.step / max(total, 1)
            let bar = String(repeating: "█", count: filled) + String(repeating: "░", count: width - filled)
            print("\r\(bar) \(text)\u{1B}[K", terminator: m.step == total ? "\n" : "")
            fflush(stdout)
        } else if m.step % every == 0 || m.step == total || m.valLoss != nil {
            print(text)
        }
    }

    static func clock(_ s: Double) -> String {
        let t = Int(s.rounded())
        return t >= 3600 ? String(format: "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60) : String(format: "%d:%02d", t / 60, t % 60)
    }
}

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Fine-tune a base model with a PEFT method (or every weight with --method full).",
        discussion: """
        Writes <out>/adapter.h5 (or model.h5 for full), <out>/metrics.jsonl (one JSON object per
        step) and <out>/state.h5 (resumable with --resume).

        Examples:
          swiftpeft train --model models/base.h5 --data data/python-faq.jsonl --method lora --out runs/lora
          swiftpeft train --model models/base.h5 --data notes/ --method prompt --num-virtual-tokens 20 --out runs/prompt
          swiftpeft train --config train.json --resume
          swiftpeft train --model base/ --adapter peft-lora/ --data more.jsonl --out runs/more   # continue an adapter
        """)

    @Option(help: "Method: \(methodNames.joined(separator: ", ")).") var method: String?
    @Option(help: "Continue training this adapter (SwiftPEFT .h5 or PEFT folder) instead of a new one.") var adapter: String?
    @OptionGroup var common: CommonTrainOptions
    @Flag(help: "Continue from <out>/state.h5.") var resume = false

    func run() throws {
        var (job, method) = try common.job(method: self.method)
        guard methodNames.contains(method) else {
            throw CLIError("unknown method '\(method)'; --method must be one of \(methodNames.joined(separator: ", "))")
        }
        job.resume = resume
        job.adapterPath = adapter
        var progress: Progress?
        let o = try runTrainJob(job, onStart: { print($0) }, onStep: { m in
            progress = progress ?? Progress(total: m.totalSteps, every: job.trainer.logEvery)
            progress!.update(m)
        })
        if let a = o.valLossAfter { print(String(format: "validation loss after:  %.4f (perplexity %.2f)", a, exp(a))) }
        print(String(format: "trained in %.1f s (%.0f tokens/s); saved %@ (%@)", o.seconds, o.tokensPerSecond, o.savedPath,
                     formatBytes(o.savedBytes)))
    }
}

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Loss and perplexity of a model (optionally with an adapter) on a data file.",
        discussion: """
        Examples:
          swiftpeft eval --model models/base.h5 --data data/python-faq.jsonl
          swiftpeft eval --model models/base.h5 --adapter runs/lora/adapter.h5 --data data/python-faq.jsonl --json
        """)

    @Option(help: "Base model checkpoint (.h5).") var model: String
    @Option(help: "Adapter checkpoint.") var adapter: String?
    @Option(help: "Data file or folder.") var data: String
    @Option(help: "Tokens per sequence.") var seqLen = 256
    @Option(help: "Sequences per batch.") var batchSize = 8
    @Flag(help: "Print one JSON object {loss, perplexity, tokens}.") var json = false

    func run() throws {
        let e = try runEval(modelPath: model, adapterPath: adapter, dataPath: data, seqLen: seqLen, batch: batchSize)
        if json {
            let obj: [String: Any] = ["loss": e.loss, "perplexity": e.perplexity, "tokens": e.tokens]
            print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self))
        } else {
            print(String(format: "loss %.4f  perplexity %.3f  tokens %d", e.loss, e.perplexity, e.tokens))
        }
    }
}

struct Compare: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train several methods on the same base, data and step budget; print and save a comparison.",
        discussion: """
        Writes <out>/report.md, results.csv, results.json and val_loss.svg (validation loss vs step),
        and each method's run under <out>/<method>/.

        Example:
          swiftpeft compare --model models/base.h5 --data data/python-faq.jsonl --methods lora,ia3,prompt --steps 100 --out runs/compare
        """)

    @Option(help: "Comma-separated methods.") var methods = "lora,dora,ia3,adapter,prefix,prompt"
    @OptionGroup var common: CommonTrainOptions

    func run() throws {
        let (job, _) = try common.job(method: nil)
        let list = methods.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard !list.isEmpty else { throw CLIError("--methods names no method; e.g. --methods lora,ia3,prompt") }
        for m in list where !methodNames.contains(m) { throw CLIError("unknown method '\(m)'; choose from \(methodNames.joined(separator: ", "))") }
        var progress: [String: Progress] = [:]
        let results = try runCompare(job, methods: list, onStart: { print($0) }, onStep: { m, s in
            if progress[m] == nil { progress[m] = Progress(total: s.totalSteps, label: "[\(m)] ", every: job.trainer.logEvery) }
            progress[m]!.update(s)
        })
        print(renderTable(results))
        print("report: \(job.outDir)/report.md, results.csv, results.json, val_loss.svg")
    }
}
