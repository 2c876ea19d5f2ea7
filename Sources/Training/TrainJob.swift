// The train, eval and compare jobs: load a base, build a method, load data, train with the Trainer,
// save the adapter (or the full model), and report. `compare` runs the train job per method on the
// same base, data and step budget and writes the report folder.

import Foundation
import TensorCore
import NN
import Models
import Tokenizers
import PEFT
import Containers
import Formats
import Distributed

/// Everything one `swiftpeft train` run needs.
public struct TrainJob {
    public var modelPath: String
    public var dataPath: String
    public var method = "lora"
    /// Whether `method` was given (a flag or a config-file key) rather than left at its default:
    /// with `adapterPath`, a given method must be the adapter's own.
    public var methodGiven = false
    /// Continue training an existing adapter (SwiftPEFT or PEFT folder) instead of a new `method`.
    public var adapterPath: String?
    /// Options and PEFT config fields for a new adapter of `method`.
    public var methodSettings = MethodSettings()
    public var trainer = TrainerOptions()
    public var data = DatasetOptions()
    public var batchSize = 8
    /// Output folder: adapter.h5 (model.h5 for "full"), state.h5 (resumable), metrics.jsonl.
    public var outDir: String
    /// Continue from outDir/state.h5.
    public var resume = false
    /// Train for this many passes over the training rows instead of `trainer.steps` (the step
    /// count becomes ⌈epochs · batches per epoch / grad_accumulation⌉).
    public var epochs: Double?
    /// Validation rows scored at each evaluation (nil: all).
    public var evalRows: Int? = 64
    /// Power per busy core for the energy estimate when RAPL counters cannot be read.
    public var wattsPerCore = CostMeter.defaultWattsPerCore
    /// Number format of the frozen weights' products (`TrainingPrecision`; bf16 is emulated without AVX512-BF16 or AMX).
    public var precision = TrainingPrecision.fp32
    /// Keep a GGUF base's quantized block matrices (an mlx-lm folder's packed ones) as they are in the file, each product decoding
    /// them (`loadModel(keepQuantized:)`): the same values as a Float32 load, in a fraction of the
    /// memory, for adapters only (not full fine-tuning, DoRA, `modules_to_save` on a block matrix or
    /// bf16 products).
    public var keepQuantized = false
    /// A chat template file (Jinja, or JSON with "chat_template") used instead of the model's own for
    /// chat data (`BPETokenizer.chatTemplate(fromFile:)`); the adapter records it (a full fine-tune's
    /// model.h5 keeps it). A continued adapter (`adapterPath`) goes on with the one it records.
    public var chatTemplatePath: String?
    /// Time the steps' sections (`Trainer.profiling`); `TrainOutcome.profile` gives the split.
    public var profile = false
    public init(modelPath: String, dataPath: String, outDir: String) {
        self.modelPath = modelPath
        self.dataPath = dataPath
        self.outDir = outDir
    }
}

/// What a train run did.
public struct TrainOutcome {
    public var method: String
    /// Parameters of the base model (before any adapter).
    public var baseParameters: Int
    public var report: TrainableReport
    public var dataSummary: String
    /// The validation loss before the first step (a resumed run's from its state, where recorded).
    public var valLossBefore: Double?
    public var valLossAfter: Double?
    public var finalTrainLoss: Double
    /// adapter.h5 or model.h5.
    public var savedPath: String
    public var savedBytes: Int
    /// `<out>/loss.svg` when it was drawn (nil on other ranks, or when it could not be written).
    public var lossPlot: String?
    public var seconds: Double
    public var tokensPerSecond: Double
    public var history: [StepMetrics]
    /// Where the steps' time went, when the job asked (`TrainJob.profile`).
    public var profile: StepProfile?
    /// The run's cost in this session (loading included; tokens: those trained on since the start or
    /// the resume), over every rank under MPI.
    public var cost: Cost
    /// The whole run's cost: `cost` plus, for a resumed run, the earlier sessions' up to the
    /// checkpoint it resumed from (each checkpoint records the cost so far). <out>/cost.json holds it.
    public var runCost: Cost
    /// The sessions `runCost` adds up (1 for a run never resumed).
    public var sessions: Int
    /// Optimizer steps this session ran (0 for a run resumed at its last step).
    public var stepsRun: Int
}

/// Checks a training job without writing anything: loads the base and the data, builds and
/// attaches the method and checks the trainer options, throwing what `runTrainJob` would throw
/// before its first write. `compare` checks every method this way before it trains any, so a
/// mismatch in its last method leaves no output of the first ones.
public func checkTrainJob(_ job: TrainJob) throws {
    _ = try runTrainJob(job, checkOnly: true)
}

/// Runs a training job; `onStep` sees every step (for a progress display), `onStart` the setup.
/// Nothing is written before the job has been checked (base, method, data, options).
@discardableResult
public func runTrainJob(_ job: TrainJob, onStart: @escaping (String) -> Void = { _ in },
                        onStep: @escaping (StepMetrics) -> Void = { _ in }) throws -> TrainOutcome {
    try runTrainJob(job, checkOnly: false, onStart: onStart, onStep: onStep)!
}

private func runTrainJob(_ job: TrainJob, checkOnly: Bool, onStart: @escaping (String) -> Void = { _ in },
                         onStep: @escaping (StepMetrics) -> Void = { _ in }) throws -> TrainOutcome? {
    let meter = CostMeter(wattsPerCore: job.wattsPerCore)
    // Under mpirun, one rank of a data-parallel job: its share of the machine's cores beside the other
    // local ranks, and no more than the cores it is bound to.
    let comm = Communicator.world
    if comm.isDistributed && !checkOnly {
        Threads.set(min(Threads.available, max(1, ProcessInfo.processInfo.activeProcessorCount / comm.localSize)))
    }
    let onStart = comm.isLeader ? onStart : { _ in }
    // Before the base and data load: an --out that is empty, or cannot be a folder (it, or a folder above it, is a file).
    guard !job.outDir.trimmingCharacters(in: .whitespaces).isEmpty else {
        throw TrainingError(message: "the output folder is empty (--out, or \"out\" in a config file); it takes a folder path")
    }
    let outURL = URL(fileURLWithPath: job.outDir).standardizedFileURL
    var existing = outURL, isFolder: ObjCBool = false
    while !FileManager.default.fileExists(atPath: existing.path, isDirectory: &isFolder) && existing.path != "/" {
        existing = existing.deletingLastPathComponent()
    }
    guard isFolder.boolValue else {
        let file = existing == outURL ? job.outDir : "\(existing.path) (above --out \(job.outDir))"
        throw TrainingError(message: "\(file): is a file; --out names the folder a run writes (adapter.h5, state.h5, metrics.jsonl, loss.svg)")
    }
    // A data folder is read whole: a run's own files inside it would be trained on next time.
    let dataURL = URL(fileURLWithPath: job.dataPath).standardizedFileURL.resolvingSymlinksInPath()
    var dataIsFolder: ObjCBool = false
    if FileManager.default.fileExists(atPath: dataURL.path, isDirectory: &dataIsFolder), dataIsFolder.boolValue,
       (outURL.resolvingSymlinksInPath().path + "/").hasPrefix(dataURL.path.hasSuffix("/") ? dataURL.path : dataURL.path + "/") {
        throw TrainingError(message: "--out \(job.outDir) is inside the training data folder \(job.dataPath), which is read whole: the run's metrics.jsonl would be trained on by the next run; choose an --out outside it")
    }
    // Nothing the run writes may be one of its inputs: `--adapter runs/x/adapter.h5 --out runs/x` would
    // replace the adapter it continues, a full fine-tune of runs/f/model.h5 into runs/f its base.
    var inputs: [(path: String, role: String)] = [(job.modelPath, "the base model"), (job.dataPath, "the training data")]
    if let path = job.adapterPath { inputs.append((path, "the adapter")) }
    if case .file(let path) = job.data.validation { inputs.append((path, "the validation data")) }
    for (pattern, role) in inputs where role.hasSuffix(" data") {  // a pattern's files, each
        inputs += (dataPatternFiles(pattern) ?? []).map { ($0, role) }
    }
    if let path = job.chatTemplatePath { inputs.append((path, "the chat template")) }
    for name in ["adapter.h5", "model.h5", "state.h5", "metrics.jsonl", "loss.svg"] {
        if let (path, role) = inputReplaced(by: outURL.appendingPathComponent(name).path, inputs: inputs) {
            throw TrainingError(message: "--out \(job.outDir): the run writes \(name) there, which is \(role) it reads (\(path)); choose another --out folder")
        }
    }
    if job.resume && !checkOnly && !FileManager.default.fileExists(atPath: (job.outDir as NSString).appendingPathComponent("state.h5")) {
        throw TrainingError(message: "\((job.outDir as NSString).appendingPathComponent("state.h5")): no such file; --resume continues the run whose --out holds it")
    }
    if job.keepQuantized && job.precision == .bf16 {
        throw TrainingError(message: "--keep-quantized and --precision bf16 both set how the frozen weights are held; give one of them")
    }
    let base = try loadModel(job.modelPath, keepQuantized: job.keepQuantized)
    let model = base.model
    guard let tokenizer = base.tokenizer else { throw CheckpointError(path: job.modelPath, message: "holds no tokenizer; training data cannot be tokenized") }
    let ownTemplate = tokenizer.chatTemplate
    // A continued adapter goes on with the template it was trained with, unless one is given.
    try useChatTemplate(file: job.chatTemplatePath, adapters: job.adapterPath.map { [$0] } ?? [], on: tokenizer)
    let recordedTemplate = tokenizer.chatTemplate == ownTemplate ? nil : tokenizer.chatTemplate  // the adapter keeps it
    let fingerprint = BaseFingerprint(model)  // of the untouched base
    let baseParameters = model.parameterCount
    let method: PEFTMethod?
    let names: [String]
    if let path = job.adapterPath {
        // The adapter goes on as it was saved: options that would shape a new one do not apply.
        let given = job.methodSettings.options.keys.sorted() + (job.methodSettings.peftConfig.isEmpty ? [] : ["method-config"])
        guard given.isEmpty else {
            throw TrainingError(message: "--adapter \(path) continues that adapter as it was saved; the method settings \(given.map { "--\($0)" }.joined(separator: ", ")) (flags or config-file keys) would shape a new one and do not apply: leave them out")
        }
        method = try loadAdapter(path, onto: model)  // attached, its tensors trainable
        for (_, t) in method!.adapterParameters() { t.requiresGrad = true }
        names = []
    } else if let m = try makeMethod(job.method, for: model, settings: job.methodSettings, tokenizer: tokenizer) {
        if job.keepQuantized, let why = m.releasedWeightsConflict(in: model) {
            throw TrainingError(message: "--keep-quantized: \(why), and this base keeps only the quantized blocks of its matrices; leave --keep-quantized out (or, in compare, this method out of --methods)")
        }
        method = m
        names = try m.attach(to: model)
    } else {
        guard !job.keepQuantized else {
            throw TrainingError(message: "--keep-quantized keeps the base frozen in its quantized blocks, and --method \(job.method) trains every weight; leave --keep-quantized out")
        }
        method = nil
        model.unfreeze()
        names = ["every weight"]
    }
    // A continued adapter is trained as the method it was saved as, whatever --method says.
    let methodName = job.adapterPath != nil ? method.map(PEFTRegistry.name(of:)) ?? job.method : job.method
    if let path = job.adapterPath, job.methodGiven, job.method != methodName {
        throw TrainingError(message: "--adapter \(path) is a \(methodName) adapter, and it trains as one: --method \(job.method) does not apply; leave it out")
    }
    try job.precision.apply(to: model, method: methodName, adapter: method, checkOnly: checkOnly)
    let parameters = method?.adapterParameters() ?? model.namedParameters()
    let report = TrainableReport(model: model, methods: method.map { [$0] } ?? [])
    let lengthNote = try checkSequenceLength(model, job.data.seqLen, virtual: (method as? PromptLearningMethod)?.virtualTokenCount ?? 0, what: "--seq-len")
    // The split keeps its own seed (job.data.seed), not --seed: runs that differ only in their seed
    // are compared on the same validation examples.
    let splits = try loadDataset(job.dataPath, tokenizer: tokenizer, options: job.data)
    let val = splits.validation
    var trainerOptions = job.trainer
    if let e = job.epochs {
        let perEpoch = BatchIterator(splits.train, batchSize: job.batchSize * comm.size, seed: 0).batchesPerEpoch
        trainerOptions.steps = max(1, Int((e * Double(perEpoch) / Double(job.trainer.gradAccumulation)).rounded(.up)))
    }
    let trainer = try Trainer(model: model, parameters: parameters, options: trainerOptions)
    if checkOnly { return nil }
    let c = model.config  // what the base's config applies while training, besides the method
    let applied = [c.dropout > 0 ? "dropout \(c.dropout)" : nil, c.embeddingDropout.map { "embedding dropout \($0)" },
                   c.attentionDropout.map { "attention dropout \($0)" }, c.slidingWindow.map { "sliding window \($0)" }].compactMap { $0 }
    onStart("""
        base: \(job.modelPath) (\(c.family), \(model.parameterCount) parameters\(applied.map { "; " + $0 }.joined()))
        method: \(job.adapterPath.map { "\(methodName), continuing the adapter in \($0)" } ?? "\(methodName) on \(names.count) module(s)\(names.count <= 4 ? ": " + names.joined(separator: ", ") : "")")
        \(report)
        data: \(splits)
        """)
    if let lengthNote { onStart(lengthNote) }
    if job.adapterPath == nil, let method, case let unmatched = unmatchedTargetEntries(of: method, in: model), !unmatched.isEmpty {
        let list = unmatched.map { "\"\($0)\"" }.joined(separator: ", ")
        onStart("note: target_modules \(unmatched.count == 1 ? "entry" : "entries") \(list) name\(unmatched.count == 1 ? "s" : "") no module of this model and adapt nothing (allowed, as in PEFT; check the spelling)")
    }
    if let template = job.chatTemplatePath, splits.train.summary.format != .chat {
        let keeper = method == nil ? "the trained model keeps" : "the adapter records"
        onStart("note: --chat-template \(template) applies to chat data only, and \(job.dataPath) is \(splits.train.summary.format.rawValue): its rows do not use it (\(keeper) it for generate, serve and backtest)")
    }
    if job.precision == .bf16 { onStart("precision: the frozen weights' products in bf16, fp32 accumulation; bf16 products \(BF16Copy.summary)") }
    if job.keepQuantized { onStart(quantizedBaseSummary(model)) }
    if trainerOptions.warmupSteps > trainerOptions.steps {
        onStart("note: --warmup \(trainerOptions.warmupSteps) is longer than the run's \(trainerOptions.steps) steps: the learning rate stays below --lr \(trainerOptions.lr)")
    }
    if comm.isDistributed {
        let floats = parameters.reduce(0) { $0 + $1.1.count }
        onStart("data-parallel: \(comm.size) ranks × batch \(job.batchSize) (global batch \(comm.size * job.batchSize)), \(Threads.count) thread(s) per rank; \(floats) gradient values (\(formatBytes(floats * 4))) all-reduced per step")
    }
    let fm = FileManager.default
    do { try fm.createDirectory(atPath: job.outDir, withIntermediateDirectories: true) } catch {
        throw TrainingError(message: "\(job.outDir): cannot create the output folder (\((error as NSError).localizedDescription))")
    }
    let out = URL(fileURLWithPath: job.outDir)
    let stateURL = out.appendingPathComponent("state.h5"), metricsURL = out.appendingPathComponent("metrics.jsonl")
    // Rank 0 alone writes; every rank reads the state on --resume.
    trainer.checkpointURL = comm.isLeader ? stateURL : nil
    trainer.metricsURL = comm.isLeader ? metricsURL : nil
    trainer.communicator = comm
    // What a resume must find unchanged (the data is checked by its fingerprint in the data position).
    trainer.checkpointAttributes = ["base_weights_hash": fingerprint.weightsHash, "base_architecture": fingerprint.architecture,
                                    "data_parallel_ranks": String(comm.size)]
    trainer.jobUpdateFlags = [("batch-size", "\(job.batchSize)"), ("precision", job.precision.rawValue)]
    if let method {
        trainer.checkpointAttributes["method"] = methodName
        trainer.checkpointAttributes["method_config"] = String(decoding: try method.configJSON(), as: UTF8.self)
    }
    if comm.isDistributed {
        // Each rank loads its own base, data and options: a rank with another copy of the data, or
        // another budget, would train something else, or wait in another all-reduce than the others.
        let e = JSONEncoder()
        e.outputFormatting = .sortedKeys
        let job = [fingerprint.weightsHash, fingerprint.architecture, String(splits.train.fingerprint),
                   splits.validation.map { String($0.fingerprint) } ?? "no validation", String(job.batchSize), String(job.resume),
                   String(job.evalRows ?? -1), job.precision.rawValue, String(decoding: try e.encode(trainerOptions), as: UTF8.self),
                   trainer.checkpointAttributes["method_config"] ?? "full"]
        let differing = try comm.ranksDiffering(from: job.joined(separator: "\u{1F}"), what: "the check that every rank has rank 0's job")
        guard differing == 0 else {
            throw TrainingError(message: "\(differing) rank(s) loaded another base, other training data or other options than rank 0 "
                + "(this rank \(comm.rank): \(splits.train.count) training rows, \(trainerOptions.steps) steps); every rank needs the same files and flags")
        }
    }
    // Rank 0 redraws <out>/loss.svg as the run goes (off the training thread) and at its end.
    let plotURL = out.appendingPathComponent("loss.svg")
    let plotTitle = "\(methodName) on \(URL(fileURLWithPath: job.modelPath).lastPathComponent): loss"
    let plotter = comm.isLeader ? LossPlotter(url: plotURL, title: plotTitle, warn: onStart) : nil
    if let plotter {
        trainer.onStep = { m in
            onStep(m)
            plotter.add(m)
        }
    }
    trainer.profiling = job.profile
    trainer.onSkip = { step, fault in onStart("step \(step) skipped: \(fault) (its update is dropped; --skip-nonfinite)") }
    // Every rank draws the job's global batches from the same seed and trains on its rows of each.
    var stream = RankShard(BatchIterator(splits.train, batchSize: job.batchSize * comm.size, seed: job.trainer.seed),
                           rank: comm.rank, size: comm.size)
    // The run's cost over its sessions: each checkpoint records the cost so far (the sessions before
    // this one, each up to its last checkpoint, and this one's), which a resume adds to. A
    // data-parallel job's checkpoints record none: rank 0 writes them, and the cost is every rank's.
    var earlier: (cost: Cost, sessions: Int)?
    if job.resume {
        // The global batch is batch × ranks: another rank count would not continue the same run.
        if let saved = (try? HDF5Store.readAttributes(stateURL.path))?["data_parallel_ranks"].flatMap(Int.init), saved != comm.size {
            throw TrainingError(message: "\(stateURL.path) was written by a job of \(saved) rank(s) (global batch \(saved) × \(job.batchSize)); resume it with the same number (\(saved == 1 ? "without mpirun" : "mpirun -np \(saved)"))")
        }
        try trainer.resume(from: stateURL, data: &stream)
        let attributes = (try? HDF5Store.readAttributes(stateURL.path)) ?? [:]
        earlier = recordedCost(attributes)
        if comm.isDistributed {
            // Each rank read the state from its own disk: on machines that do not share --out, one may
            // have read another run's. Every rank compares its step and trained values with rank 0's.
            let sum = trainer.parameters.reduce(0.0) { $0 + $1.1.toArray().reduce(0.0) { $0 + Double($1) } }
            let differing = try comm.ranksDiffering(from: "\(trainer.step) \(sum)", what: "resume: the check of the state")
            guard differing == 0 else {
                throw TrainingError(message: "\(differing) rank(s) read another \(stateURL.path) than rank 0 (this rank \(comm.rank): step \(trainer.step)); --resume needs --out on a file system every rank shares, or the same state copied to each machine")
            }
        }
        // At exactly the budget, a run killed after its last checkpoint but before writing its
        // adapter: the resume only writes the outputs.
        guard trainer.step <= trainerOptions.steps else {
            throw TrainingError(message: "\(stateURL.path) is already at step \(trainer.step); to train further, resume with more than \(trainer.step) steps")
        }
        if comm.isLeader { try trimMetrics(metricsURL, toStep: trainer.step) }
        try comm.barrier(what: "resume: rank 0 trims metrics.jsonl", patient: !comm.isLeader)
        plotter?.start(with: trainer.history)  // the steps before the resume, as the state holds them
    } else if comm.isLeader {
        // A state or metrics left by an earlier run in this folder must not be taken for this run's.
        let earlier = [stateURL, metricsURL].filter { fm.fileExists(atPath: $0.path) }.map(\.lastPathComponent)
        if !earlier.isEmpty {
            onStart("note: \(job.outDir) holds an earlier run (\(earlier.joined(separator: ", "))); this run replaces it (--resume would continue it)")
        }
        try? fm.removeItem(at: metricsURL)
        try? fm.removeItem(at: stateURL)
        try? fm.removeItem(at: plotURL)
    }
    // Every rank scores its share of the validation batches; the sums are all-reduced.
    let scorer: (() throws -> Double)? = val.map { v in {
        let e = evaluate(model, on: v, batch: job.batchSize, maxRows: job.evalRows, share: (comm.rank, comm.size))
        var sums = [e.tokens > 0 ? e.loss * Double(e.tokens) : 0, Double(e.tokens)]
        try comm.allReduceSum(&sums, what: "validation: the all-reduce of the loss sums")
        return sums[1] > 0 ? sums[0] / sums[1] : .nan
    } }
    let before = job.resume ? nil : try scorer?()
    // The validation loss before training starts the plot's validation line (at step 0); the state
    // keeps it for a resumed run's plot. Set after `resume`, which compares every attribute it is
    // given: states written without it resume as before.
    let baseline = before ?? (job.resume ? (try? HDF5Store.readAttributes(stateURL.path))?["validation_before"].flatMap(Double.init) : nil)
    if let b = baseline {
        trainer.checkpointAttributes["validation_before"] = String(b)
        plotter?.setBaseline(b)
    }
    if let b = before { onStart(String(format: "validation loss before: %.4f (perplexity %.2f)", b, Foundation.exp(b))) }
    let sessions = (earlier?.sessions ?? 0) + 1
    if !comm.isDistributed {
        trainer.checkpointProgress = { [unowned trainer] in
            costAttributes(meter.reading(tokens: trainer.tokensTrained - trainer.tokensAtResume), earlier: earlier)
        }
    }
    let firstStep = trainer.step
    let start = Date()
    do { try trainer.run(&stream, validation: scorer) } catch {
        _ = plotter?.finish()  // a run that stops on a fault is the one whose curves are looked at
        throw error
    }
    let plotted = plotter?.finish() == true ? (job.outDir as NSString).appendingPathComponent("loss.svg") : nil  // as the user named the folder
    let seconds = Date().timeIntervalSince(start)
    let saved: String
    if comm.isLeader && Trainer.slowWrites > 0 { Thread.sleep(forTimeInterval: Trainer.slowWrites) }
    if !comm.isLeader {  // the leader writes the outputs
        saved = out.appendingPathComponent(method == nil ? "model.h5" : "adapter.h5").path
    } else if let method {
        saved = out.appendingPathComponent("adapter.h5").path
        model.eval()
        try AdapterCheckpoint.save(method, fingerprint: fingerprint, chatTemplate: recordedTemplate, to: saved)
    } else {
        saved = out.appendingPathComponent("model.h5").path
        model.freeze()
        try ModelCheckpoint.save(model, tokenizer: tokenizer, to: saved, metadata: ["fine_tuned_from": job.modelPath])
    }
    let bytes = (try? fm.attributesOfItem(atPath: saved)[.size] as? Int) ?? 0
    let ran = trainer.history.filter { $0.step > firstStep }  // this session's steps
    let tps = ran.isEmpty ? 0 : ran.map(\.tokensPerSecond).reduce(0, +) / Double(ran.count)
    // This process's session (a resumed run's earlier sessions were metered then), every rank's.
    var cost = meter.reading(tokens: trainer.tokensTrained - trainer.tokensAtResume)
    try comm.barrier(what: "the end of training (rank 0 writes \(saved))", patient: !comm.isLeader)
    if comm.isDistributed { cost = try cost.summed(over: comm) }
    let runCost = Cost.total([earlier?.cost, cost].compactMap { $0 })!
    if comm.isLeader {
        var extra: [String: Any] = ["sessions": sessions]
        if sessions > 1 { extra["this_session"] = try JSONSerialization.jsonObject(with: JSONEncoder().encode(cost)) }
        if job.resume && earlier == nil {
            extra["note"] = "the sessions before this resume recorded no cost (a data-parallel job's, or a state written by an older version): this is the last session's alone"
        }
        try writeCostFile(runCost, command: "train", to: out.appendingPathComponent("cost.json"), extra: extra)
    }
    try comm.barrier(what: "the end of training (rank 0 writes cost.json)", patient: !comm.isLeader)
    return TrainOutcome(method: methodName, baseParameters: baseParameters, report: report, dataSummary: splits.description, valLossBefore: baseline,
                        valLossAfter: trainer.lastValidation.flatMap { $0.step == trainer.step ? $0.loss : nil }, finalTrainLoss: trainer.history.last?.loss ?? .nan,
                        savedPath: saved, savedBytes: bytes, lossPlot: plotted, seconds: seconds, tokensPerSecond: tps, history: trainer.history,
                        profile: job.profile ? trainer.profile : nil, cost: cost, runCost: runCost, sessions: sessions,
                        stepsRun: trainer.step - firstStep)
}

/// Keeps the lines of `metrics.jsonl` up to `step` (a killed run may have logged steps after its last
/// checkpoint, or half a line); rewritten atomically.
func trimMetrics(_ url: URL, toStep step: Int) throws {
    guard let data = FileManager.default.contents(atPath: url.path) else { return }
    if Trainer.slowWrites > 0 { Thread.sleep(forTimeInterval: Trainer.slowWrites) }
    let kept = String(decoding: data, as: UTF8.self).split(separator: "\n").filter { line in
        guard let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
              let s = obj["step"] as? Int else { return false }
        return s <= step
    }
    do { try Data(kept.map { $0 + "\n" }.joined().utf8).write(to: url, options: .atomic) } catch {
        throw TrainingError(message: "\(url.path): cannot rewrite the metrics (\((error as NSError).localizedDescription)); the state is left as it was")
    }
}

/// Learned absolute positions stop at max_position_embeddings: say so before training or scoring.
/// Rotary ones go on, but past them the model was not trained: returns a note to print then.
func checkSequenceLength(_ model: CausalLM, _ seqLen: Int, virtual: Int, what: String) throws -> String? {
    let c = model.config, length = seqLen + virtual
    let counted = virtual > 0 ? "\(what) \(seqLen) and the adapter's \(virtual) virtual tokens (\(length) positions)" : "\(what) \(seqLen)"
    if c.positions == .learned && length > c.maxPositions {
        let fix = virtual >= c.maxPositions ? "the adapter's virtual tokens alone fill them" : "use at most \(c.maxPositions - virtual)"
        throw TrainingError(message: "\(counted) exceeds the model's max_position_embeddings \(c.maxPositions) (learned positions cannot go further); \(fix)")
    }
    return length > c.maxPositions ? positionsNote(counted, maxPositions: c.maxPositions) : nil
}

/// The note for rotary positions past max_position_embeddings: they go on, but the model was not trained there.
func positionsNote(_ subject: String, maxPositions: Int) -> String {
    "note: \(subject) passes the \(maxPositions) positions the model was trained on (max_position_embeddings); positions past them are often degraded"
}

/// Loss, perplexity and token count of a model (optionally with an adapter) on a data file.
/// `chatTemplatePath`: a chat template file used for chat data instead of the model's own, and of
/// the one the adapter records (`useChatTemplate`). `onProgress` sees (rows scored, rows) after each batch.
public func runEval(modelPath: String, adapterPath: String?, dataPath: String, seqLen: Int = 256, batch: Int = 8,
                    packing: Bool = true, wattsPerCore: Double = CostMeter.defaultWattsPerCore,
                    chatTemplatePath: String? = nil, keepQuantized: Bool = false, columns: ColumnMap = ColumnMap(),
                    onNote: (String) -> Void = { _ in }, onProgress: ((Int, Int) -> Void)? = nil) throws -> (evaluation: Evaluation, cost: Cost) {
    let meter = CostMeter(wattsPerCore: wattsPerCore)
    guard batch >= 1 else { throw TrainingError(message: "--batch-size must be at least 1, got \(batch)") }
    guard seqLen >= 2 else { throw TrainingError(message: "--seq-len must be at least 2, got \(seqLen)") }
    let base = try loadModel(modelPath, keepQuantized: keepQuantized)
    let model = base.model
    guard let tokenizer = base.tokenizer else { throw CheckpointError(path: modelPath, message: "holds no tokenizer; the data cannot be tokenized") }
    try useChatTemplate(file: chatTemplatePath, adapters: adapterPath.map { [$0] } ?? [], on: tokenizer)
    let adapter = try adapterPath.map { try loadAdapter($0, onto: model) }
    let virtual = (adapter as? PromptLearningMethod)?.virtualTokenCount ?? 0
    _ = try checkSequenceLength(model, seqLen, virtual: virtual, what: "--seq-len")
    let splits = try loadDataset(dataPath, tokenizer: tokenizer, options: DatasetOptions(seqLen: seqLen, packing: packing, validation: .none, columns: columns))
    // Evaluation cuts each batch after its longest row's last token: the note is for the rows' own length.
    let longest = min(seqLen, (splits.train.lengths.max() ?? 1) - 1)
    if longest + virtual > model.config.maxPositions {  // (rotary positions: learned ones were refused above)
        let virtualNote = virtual > 0 ? ", the adapter's \(virtual) virtual tokens included" : ""
        onNote(positionsNote("the longest row of \(dataPath) (\(longest + virtual) positions\(virtualNote))", maxPositions: model.config.maxPositions))
    }
    let e = evaluate(model, on: splits.train, batch: batch, progress: onProgress)
    return (e, meter.reading(tokens: e.tokens))
}

/// Trains each method of `methods` with the same job settings (out: <outDir>/<method>) and writes
/// the comparison report (table, Markdown, CSV, JSON, SVG plot) to `outDir`. A method whose run
/// fails (a non-finite loss, say) is reported as failed, with the steps it logged, and the others
/// go on; a data-parallel job stops at the failure instead (its ranks must fail alike to go on).
/// `resume`: continue an interrupted comparison: each method whose folder holds a state.h5 resumes
/// from it (one that had finished only writes its outputs again), the others train; a resumed
/// method's row is its whole run's (time, tokens/s, cost and peak memory over its sessions).
public func runCompare(_ base: TrainJob, methods: [String], resume: Bool = false, onStart: @escaping (String) -> Void = { _ in },
                       onStep: @escaping (String, StepMetrics) -> Void = { _, _ in }) throws -> [MethodResult] {
    if let path = base.adapterPath {
        throw TrainingError(message: "compare trains a new adapter per method; the adapter \(path) (an \"adapter\" config-file key) would be continued under every method's name instead: leave it out")
    }
    if let twice = methods.first(where: { m in methods.filter { $0 == m }.count > 1 }) {
        throw TrainingError(message: "--methods names \(twice) twice; each method trains once, into <out>/\(twice)")
    }
    var results: [MethodResult] = []
    var trainedSteps: Int?
    func job(for m: String) -> TrainJob {
        var job = base
        job.method = m
        job.methodSettings = base.methodSettings.settings(for: m, among: methods)
        job.outDir = URL(fileURLWithPath: base.outDir).appendingPathComponent(m).path
        job.resume = resume && FileManager.default.fileExists(atPath: job.outDir + "/state.h5")
        return job
    }
    if resume && !methods.contains(where: { job(for: $0).resume }) {
        throw TrainingError(message: "--resume: no method's folder under \(base.outDir) holds a state.h5 (\(methods.map { "\($0)/state.h5" }.joined(separator: ", "))); nothing to continue")
    }
    // A mismatch in any method (a target that matches nothing, a rank too large) ends the run
    // before the first method writes anything.
    for m in methods {
        do { try checkTrainJob(job(for: m)) } catch {
            throw "\(error)".hasPrefix("[\(m)]") ? error : TrainingError(message: "[\(m)] \(error)")
        }
    }
    // Each method trains on a base read anew: one kept in memory for all would add a base's size to
    // every method's measured peak memory, a column of the report.
    for m in methods {
        resetPeakResidentBytes()
        let say = { (message: String) in  // each line "[method] …", as its step lines
            onStart(message.split(separator: "\n", omittingEmptySubsequences: false).map { "[\(m)] \($0)" }.joined(separator: "\n"))
        }
        let o: TrainOutcome
        do {
            o = try runTrainJob(job(for: m), onStart: say, onStep: { onStep(m, $0) })
        } catch where !Communicator.world.isDistributed && !(error is TrainingInterrupted) {  // a stop asked for ends the comparison
            let metrics = URL(fileURLWithPath: job(for: m).outDir).appendingPathComponent("metrics.jsonl")
            say("failed: \(error)\nthe comparison goes on with the other methods")
            results.append(MethodResult(failed: m, failure: "\(error)", steps: (try? readMetrics(metrics)) ?? []))
            continue
        }
        trainedSteps = o.history.last?.step ?? trainedSteps
        let curve = o.history.compactMap { h in h.valLoss.map { CurvePoint(step: h.step, loss: $0) } }
        let first = o.valLossBefore.map { [CurvePoint(step: 0, loss: $0)] } ?? []
        // A resumed run's row covers its sessions: the time its steps logged, their mean rate, its cost.
        let resumed = o.sessions > 1
        let rate = o.history.isEmpty ? 0 : o.history.map(\.tokensPerSecond).reduce(0, +) / Double(o.history.count)
        results.append(MethodResult(
            method: m, trainableParams: o.report.trainable, percentOfBase: 100 * Double(o.report.trainable) / Double(o.baseParameters),
            adapterBytes: o.savedBytes, trainSeconds: resumed ? o.history.last?.elapsed ?? o.seconds : o.seconds,
            tokensPerSecond: resumed ? rate : o.tokensPerSecond,
            peakMemoryBytes: resumed ? max(peakResidentBytes(), o.runCost.peakRSSBytes) : peakResidentBytes(), cost: o.runCost,
            finalTrainLoss: o.finalTrainLoss, finalValLoss: o.valLossAfter ?? .nan,
            perplexity: Foundation.exp(o.valLossAfter ?? .nan), curve: first + curve,
            trainCurve: o.history.map { CurvePoint(step: $0.step, loss: $0.loss) }))
    }
    // With --epochs the step budget comes from the data (the same for every method).
    let budget = base.epochs.map { "\($0) epoch(s) (\(trainedSteps.map(String.init) ?? "?") steps)" } ?? "\(base.trainer.steps) steps"
    let setup = """
        base `\(base.modelPath)`, data `\(base.dataPath)`, \(budget), batch \(base.batchSize), \
        sequence length \(base.data.seqLen), lr \(base.trainer.lr) (\(base.trainer.schedule.rawValue)), seed \(base.trainer.seed), \
        OpenBLAS core \(BLASCore.current), \(ProcessInfo.processInfo.activeProcessorCount) cores\(Communicator.world.isDistributed ? ", data-parallel over \(Communicator.world.size) ranks (batch per rank)" : "").
        """
    guard Communicator.world.isLeader else { return results }  // under mpirun, rank 0 writes the report
    try writeCompareReport(results, to: URL(fileURLWithPath: base.outDir).appendingPathComponent("report"), title: "PEFT methods compared", setup: setup)
    return results
}

/// Keeps a run's steps and redraws its `loss.svg` (`writeLossPlot`) after each evaluation and every
/// 2% of the steps, on a queue of its own so that no step waits for it (a draw still queued is not
/// queued twice), and once more at the end. A plot that cannot be written is said once, from the
/// training thread, and training goes on.
final class LossPlotter: @unchecked Sendable {
    let url: URL, title: String, warn: (String) -> Void
    private let queue = DispatchQueue(label: "swiftpeft.train.loss-plot")
    private let lock = NSLock()
    private var steps: [StepMetrics] = [], baseline: Double?, pending = false, failure: String?, said = false  // under `lock`

    init(url: URL, title: String, warn: @escaping (String) -> Void) {
        (self.url, self.title, self.warn) = (url, title, warn)
    }

    /// A resumed run's steps so far.
    func start(with earlier: [StepMetrics]) {
        lock.withLock { steps = earlier }
    }

    /// The validation loss before the first step, drawn at step 0.
    func setBaseline(_ loss: Double) {
        lock.withLock { baseline = loss }
    }

    /// Step `m` is done (called on the training thread).
    func add(_ m: StepMetrics) {
        lock.withLock { steps.append(m) }
        if m.valLoss != nil || m.step % max(1, m.totalSteps / 50) == 0 {
            let go = lock.withLock { () -> Bool in
                defer { pending = true }
                return !pending
            }
            if go {
                queue.async { [self] in
                    let now = lock.withLock { () -> ([StepMetrics], Double?) in
                        pending = false
                        return (steps, baseline)
                    }
                    draw(now.0, baseline: now.1)
                }
            }
        }
        sayFailure()
    }

    /// Returns once the draws queued so far are done.
    func waitForDraws() { queue.sync {} }

    /// Draws the whole run once the queued draws are done; whether the file is written.
    func finish() -> Bool {
        waitForDraws()
        let now = lock.withLock { (steps, baseline) }
        let ok = draw(now.0, baseline: now.1)
        sayFailure()
        return ok
    }

    @discardableResult
    private func draw(_ steps: [StepMetrics], baseline: Double?) -> Bool {
        var run = LossRun(name: "run", steps: steps)
        if let b = baseline { run.validation.insert(CurvePoint(step: 0, loss: b), at: 0) }
        do {
            try writeLossPlot([run], title: title, to: url)
            return true
        } catch {
            lock.withLock { if failure == nil { failure = "\(error)" } }
            return false
        }
    }

    private func sayFailure() {
        let message = lock.withLock { () -> String? in
            guard !said, let f = failure else { return nil }
            said = true
            return f
        }
        if let message { warn(message + " (training goes on without it)") }
    }
}

/// One line on the matrices a base keeps as quantized blocks (`loadModel(keepQuantized:)`): how
/// many, their encodings, and their bytes against Float32's.
public func quantizedBaseSummary(_ model: CausalLM) -> String {
    let packed = model.namedParameters().compactMap(\.1.packedWeights)
    guard !packed.isEmpty else { return "base weights: no matrix has quantized blocks to keep (all Float32 in the file); every weight is Float32" }
    let encodings = Dictionary(grouping: packed, by: \.encoding).map { "\($0.value.count) \($0.key)" }.sorted().joined(separator: ", ")
    let bytes = packed.reduce(0) { $0 + $1.byteCount }, fp32 = packed.reduce(0) { $0 + 4 * $1.rows * $1.cols }
    return "base weights: \(packed.count) matrices kept as quantized blocks (\(encodings)): \(formatBytes(bytes)) against \(formatBytes(fp32)) in Float32; each product decodes its matrix"
}
