// `swiftpeft pretrain`: train a tokenizer and a small base model from scratch on a text corpus.
import ArgumentParser
import Foundation
import SwiftPEFT

struct Pretrain: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train a byte-level BPE tokenizer and a small LLaMA-family base model from scratch.",
        discussion: helpText("""
        Reads a text file or a folder of .txt/.md/.rst files, trains the tokenizer, holds out the
        last 5% of tokens for validation, trains every weight, and saves model + tokenizer to one
        HDF5 checkpoint, its loss curves beside it (<out> with .loss.svg for .h5), and prints
        what the run cost. The training state (<out> with .state.h5) is saved every --save-every
        steps, at the end, and when Ctrl-C or SIGTERM stops the run; the same command with
        --resume goes on from it (with more --steps, past the end too).

        Examples:
          python3 scripts/fetch_data.py shakespeare
          swiftpeft pretrain --data data/shakespeare.txt --out models/base.h5
          swiftpeft pretrain --data notes/ --out tiny.h5 --hidden 64 --layers 2 --steps 200
        """))

    @Option(help: "Text file or folder (a folder named by splits, as ptb.train.txt / ptb.valid.txt / ptb.test.txt: its train split, validated on its validation split).") var data: String
    @Option(help: "Checkpoint to write (.h5).") var out: String
    @Option(help: "Tokenizer vocabulary size.") var vocabSize = 4096
    @Option(help: "Hidden size.") var hidden = 256
    @Option(help: "Layers.") var layers = 4
    @Option(help: "Attention heads.") var heads = 4
    @Option(help: "Key/value heads.") var kvHeads = 2
    @Option(help: "Feed-forward size.") var intermediate = 688
    @Option(help: "Optimizer steps.") var steps = 1200
    @Option(name: [.customLong("batch-size"), .customLong("batch")], help: "Sequences per step (--batch-size as in train; --batch still read).") var batch = 16
    @Option(help: "Tokens per sequence.") var seqLen = 128
    @Option(help: "Peak learning rate.") var lr: Float = 3e-3
    @Option(help: "Learning-rate warmup steps (default: a tenth of --steps, at most 100; a resumed run keeps its state's).") var warmup: Int?
    @Option(help: "Evaluate every N steps.") var evalEvery = 100
    @Option(help: "Random seed.") var seed: UInt64 = 0
    @Flag(help: "Recompute each block's activations in the backward pass instead of keeping them: less memory, more time per step.")
    var gradientCheckpointing = false
    @Option(help: "Power per busy core (W) for the energy estimate when RAPL counters cannot be read.") var wattsPerCore = CostMeter.defaultWattsPerCore
    @Option(help: "Save the training state every N steps (0: only at the end and when stopped).") var saveEvery = 100
    @Flag(help: "Go on from the training state beside --out (<out> with .state.h5), as the stopped run would have: the same --data, sizes and training options.") var resume = false

    func run() throws {
        // Checked before the tokenizer trains (a while): the model builder stops the program on a bad size.
        for (flag, value) in [("hidden", hidden), ("layers", layers), ("heads", heads), ("kv-heads", kvHeads), ("intermediate", intermediate),
                              ("steps", steps), ("batch-size", batch), ("seq-len", seqLen), ("eval-every", evalEvery)] where value < 1 {
            throw CLIError("--\(flag) must be at least 1, got \(value)")
        }
        guard lr.isFinite && lr > 0 else { throw CLIError("--lr must be positive, got \(lr)") }
        guard wattsPerCore.isFinite && wattsPerCore >= 0 else { throw CLIError("--watts-per-core must be 0 or more, got \(wattsPerCore)") }
        if let warmup, warmup < 0 { throw CLIError("--warmup must be 0 or more, got \(warmup)") }
        guard saveEvery >= 0 else { throw CLIError("--save-every must be 0 (only at the end) or more, got \(saveEvery)") }
        let meter = CostMeter(wattsPerCore: wattsPerCore)
        // Checked before training too: the checkpoint is written at the end.
        let ext = URL(fileURLWithPath: out).pathExtension.lowercased()
        guard ext.isEmpty || ext == "h5" else {
            throw CLIError("--out \(out) ends in .\(ext), but pretrain writes a SwiftPEFT checkpoint (.h5); convert it afterwards (swiftpeft convert --format gguf or hf)")
        }
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: out, isDirectory: &isDir), isDir.boolValue {
            throw CLIError("--out \(out) is a folder; pretrain writes a checkpoint file (.h5)")
        }
        // models/base.h5 → models/base.state.h5 and models/base.loss.svg.
        let stem = ext == "h5" ? (out as NSString).deletingPathExtension : out
        let statePath = stem + ".state.h5"
        if resume && !FileManager.default.fileExists(atPath: statePath) {
            throw CLIError("--resume: \(statePath) does not exist: no state to go on from (it is written every --save-every steps); leave --resume out to start the run")
        }
        var size = BaseModelSize()
        (size.hidden, size.layers, size.heads, size.kvHeads, size.intermediate) = (hidden, layers, heads, kvHeads, intermediate)
        size.maxPositions = max(size.maxPositions, seqLen)
        do { try size.config(vocabSize: vocabSize).validate() } catch {
            throw CLIError("the model sizes do not fit together: \(error) (--hidden, --heads, --kv-heads)")
        }
        let corpus = try readPretrainCorpus(data)
        let (docs, heldOut) = (corpus.train, corpus.validation)
        let bytes = docs.reduce(0) { $0 + $1.utf8.count }
        print("corpus: \(docs.count) document(s), \(bytes) bytes\(corpus.fromSplits ? " (the folder's train split)" : "")"
              + (heldOut.map { "; validation: \($0.count) document(s) of its validation split" } ?? ""))
        var t0 = Date()
        let tokenizer = try trainBaseTokenizer(docs, vocabSize: vocabSize)
        let tokens = tokenStream(docs, tokenizer: tokenizer)
        let heldOutTokens = heldOut.map { tokenStream($0, tokenizer: tokenizer) }
        print(String(format: "tokenizer: vocab %d, %d tokens (%.2f bytes/token), %.1f s", tokenizer.vocabSize, tokens.count,
                     Double(bytes) / Double(tokens.count), Date().timeIntervalSince(t0)))
        if tokenizer.vocabSize < vocabSize {
            print("note: --vocab-size \(vocabSize) asked for more ids than this corpus gives: no pair of tokens is left that occurs twice, so the vocabulary stops at \(tokenizer.vocabSize) (the model is built for \(tokenizer.vocabSize))")
        }
        let cut = heldOutTokens == nil ? tokens.count * 95 / 100 : tokens.count
        let (train, val) = (Array(tokens[..<cut]), heldOutTokens ?? Array(tokens[cut...]))  // validation: the split's, else the last 5%
        try checkPretrainTokens(train: train, val: val, seqLen: seqLen)
        let config = size.config(vocabSize: tokenizer.vocabSize)
        let model = makeModel(config, seed: seed)
        print("model: \(config.family), \(model.parameterCount) parameters, OpenBLAS core \(BLASCore.current)")
        var o = PretrainOptions()
        (o.steps, o.batch, o.seqLen, o.lr, o.evalEvery, o.seed) = (steps, batch, seqLen, lr, evalEvery, seed)
        // A resumed run keeps its warmup, which --steps would otherwise move, and trains from the state's step on.
        let state = resume ? try HDF5Store.readAttributes(statePath) : [:]
        let savedWarmup = state["update_options"].flatMap { try? JSONDecoder().decode([String: String].self, from: Data($0.utf8)) }?["warmup"]
        o.warmup = warmup ?? savedWarmup.flatMap(Int.init) ?? min(100, steps / 10)
        let firstStep = state["step"].flatMap(Int.init) ?? 0
        o.gradientCheckpointing = gradientCheckpointing
        (o.checkpointURL, o.saveEvery, o.resume, o.costMeter) = (URL(fileURLWithPath: statePath), saveEvery, resume, meter)
        try FileManager.default.createDirectory(atPath: (out as NSString).deletingLastPathComponent.isEmpty ? "." :
                                                (out as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        if !resume && FileManager.default.fileExists(atPath: statePath) {
            print("note: \(statePath) holds an earlier run's state; this run replaces it (--resume would continue it)")
            try FileManager.default.removeItem(atPath: statePath)
        }
        let before = evaluate(model, tokens: val, seqLen: seqLen, maxTokens: o.evalTokens)
        print(String(format: "before: val loss %.4f (perplexity %.1f); unigram entropy %.4f", before.loss, before.perplexity,
                     unigramEntropy(val)))
        t0 = Date()
        stopCleanlyOnSignals(.training)
        var points: [StepMetrics] = []
        try exitingQuietlyOnInterrupt {
            points = try pretrain(model, train: train, val: val, options: o) { p in
                if p.step % 10 == 0 || p.valLoss != nil {
                    var line = String(format: "step %5d/%d  loss %.4f  lr %.2e  grad norm %.3f  %.0f tok/s", p.step, steps, p.loss,
                                      p.lr, p.gradNorm, p.tokensPerSecond)
                    if let v = p.valLoss { line += String(format: "  val loss %.4f", v) }
                    print(line)
                }
            }
        }
        let after = points.last?.valLoss ?? .nan
        print(String(format: "after: val loss %.4f (perplexity %.1f) in %.0f s", after, Foundation.exp(after), Date().timeIntervalSince(t0)))
        try ModelCheckpoint.save(model, tokenizer: tokenizer, to: out,
                                 metadata: ["trained_on": data, "steps": String(steps), "val_loss": String(after)])
        print("saved \(out)")
        // The loss curves beside the checkpoint: models/base.h5 → models/base.loss.svg.
        var curves = LossRun(name: URL(fileURLWithPath: out).deletingPathExtension().lastPathComponent, steps: points)
        if before.loss.isFinite { curves.validation.insert(CurvePoint(step: 0, loss: before.loss), at: 0) }
        let plot = stem + ".loss.svg"
        try writeLossPlot([curves], title: "pretrain on \(URL(fileURLWithPath: data).lastPathComponent): loss", to: URL(fileURLWithPath: plot))
        print("loss curves: \(plot)")
        print("state: \(statePath) (--resume with more --steps trains on)")
        let session = meter.reading(tokens: (steps - firstStep) * batch * seqLen)
        if let run = recordedCost((try? HDF5Store.readAttributes(statePath)) ?? [:]), run.sessions > 1 {
            print("cost of this session: \(session.summary)")
            print("cost of the run (\(run.sessions) sessions, each up to its last checkpoint): \(run.cost.summary)")
        } else {
            print("cost: \(session.summary)")
        }
        // A sample from the start of the first document that has text (an empty file gives no prompt).
        if let doc = docs.first(where: { !tokenizer.encode(String($0.prefix(40))).isEmpty }) {
            let prompt = tokenizer.encode(String(doc.prefix(40)))
            let sample = model.generate(prompt, SamplingOptions(maxNewTokens: 40, temperature: 0.8, topK: 40, seed: seed))
            print("sample: \(tokenizer.decode(prompt + sample))")
        }
    }
}
