// The trainer: a resumed run produces the same losses as an uninterrupted one; non-finite losses
// stop the run naming the step and keep the last good checkpoint; schedules; options from JSON.

import XCTest
import CBLAS  // malloc.h (mallinfo2)
@testable import Training
import TensorCore
import NN
import Models
import Tokenizers
import PEFT
import Containers
import Formats
import Distributed
import TestSupport

final class TrainerTests: XCTestCase {
    /// Prompt tuning with TEXT init (a PEFT method config) starts from the embedding rows of its
    /// text as the base's tokenizer encodes a text, the BOS included as PEFT's `tokenizer(init_text)`
    /// gives it, repeated to P; without a tokenizer or a text it is refused with a sentence.
    func testPromptTuningTextInitUsesTheTokenizersIDs() throws {
        let tok = try BPETokenizer.train(corpus: ["hello there, general kenobi"], vocabSize: 280, specialTokens: ["<|endoftext|>"],
                                         roles: SpecialTokenRoles(bos: "<|endoftext|>", eos: "<|endoftext|>"))
        tok.addsBOS = true
        let C = 16
        let model = LlamaModel(.llama(vocabSize: tok.vocabSize, hiddenSize: C, numLayers: 1, numHeads: 2, numKVHeads: 1, intermediateSize: 24), seed: 2)
        let text: [String: Any] = ["prompt_tuning_init": "TEXT", "prompt_tuning_init_text": "hello there"]
        let P = 15
        let settings = MethodSettings(options: ["num-virtual-tokens": P], peftConfig: text)
        let m = try XCTUnwrap(try makeMethod("prompt", for: model, settings: settings, tokenizer: tok) as? PromptTuning)
        try m.attach(to: model)
        let ids = tok.encode("hello there", addBOS: true)
        XCTAssertEqual(ids.first, tok.bosTokenID)
        XCTAssertLessThan(ids.count, P, "repeated")
        let table = model.tokenEmbeddingTable.toArray()
        var expected: [Float] = []
        for k in 0..<P {
            let row = Int(ids[k % ids.count])
            expected += table[(row * C)..<(row * C + C)]
        }
        XCTAssertEqual(m.embeddings().toArray(), expected)
        for (config, tokenizer, needle) in [(text, nil as Tokenizer?, "needs the base's tokenizer"),
                                            (["prompt_tuning_init": "TEXT"], tok, "prompt_tuning_init_text is missing")] {
            XCTAssertThrowsError(try makeMethod("prompt", for: model, settings: MethodSettings(peftConfig: config), tokenizer: tokenizer)) {
                XCTAssertTrue("\($0)".contains(needle), "\($0)")
            }
        }
        XCTAssertNotNil(try makeMethod("prompt", for: model, tokenizer: nil), "RANDOM needs no tokenizer")
    }

    /// The same TEXT init as PEFT's `get_peft_model` on a Hugging Face folder whose tokenizer puts a
    /// BOS first (the Llama 3.1 fixture): the virtual tokens' starting embeddings are equal.
    func testPromptTuningTextInitEqualsPEFTs() throws {
        let python = try referencePython(importing: ["torch", "transformers", "peft"])
        let folder = packageRoot().appendingPathComponent("Tests/FormatsTests/Fixtures/gguf-export/llama3").path
        let (text, P) = ("Classify if the tweet is a complaint or not:", 24)
        let script = """
            import json, sys
            from transformers import AutoModelForCausalLM
            from peft import PromptTuningConfig, get_peft_model
            m = AutoModelForCausalLM.from_pretrained(sys.argv[1])
            c = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=int(sys.argv[3]), prompt_tuning_init="TEXT",
                                   prompt_tuning_init_text=sys.argv[2], tokenizer_name_or_path=sys.argv[1])
            print(json.dumps(get_peft_model(m, c).prompt_encoder["default"].embedding.weight.detach().flatten().tolist()))
            """
        let (status, stdout, stderr) = try runPython(python, ["-c", script, folder, text, String(P)])
        guard status == 0 else { return XCTFail("PEFT could not make the adapter: \(stderr)") }
        let expected = try XCTUnwrap(try JSONSerialization.jsonObject(with: stdout) as? [Double]).map(Float.init)
        let loaded = try loadModel(folder)
        let settings = MethodSettings(options: ["num-virtual-tokens": P], peftConfig: ["prompt_tuning_init": "TEXT", "prompt_tuning_init_text": text])
        let m = try XCTUnwrap(try makeMethod("prompt", for: loaded.model, settings: settings, tokenizer: loaded.tokenizer))
        try m.attach(to: loaded.model)
        XCTAssertTrue(try XCTUnwrap(loaded.tokenizer).addsBOS)
        XCTAssertEqual(try XCTUnwrap(m.adapterParameters().first).1.toArray(), expected)
    }

    var dir: URL!
    override func setUp() {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("swiftpeft-trainer-\(UUID().uuidString)")
        try! FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }
    override func tearDown() { try? FileManager.default.removeItem(at: dir) }

    let tokens: [Int32] = (0..<3000).map { Int32(($0 * 7 + $0 / 13) % 50) }
    var config: ModelConfig {
        .llama(vocabSize: 50, hiddenSize: 16, numLayers: 2, numHeads: 4, numKVHeads: 2, intermediateSize: 24,
               tieWordEmbeddings: true, maxPositions: 64, dropout: 0.1)
    }

    /// A model with a LoRA adapter (dropout on) and a trainer over it.
    func setup(_ o: TrainerOptions) throws -> (CausalLM, LoRA, Trainer, WindowSampler) {
        let model = makeModel(config, seed: 1)
        var lc = LoRAConfig(r: 2, loraAlpha: 4, targetModules: .names(["q_proj", "v_proj", "down_proj"]))
        lc.loraDropout = 0.1
        lc.initLoraWeights = .random
        let lora = try LoRA(config: lc, seed: 2)
        try lora.attach(to: model)
        let trainer = try Trainer(model: model, parameters: lora.adapterParameters(), options: o)
        return (model, lora, trainer, WindowSampler(tokens: tokens, seqLen: 16, batch: 4, seed: 3))
    }

    func testResumeGivesTheSameLossesAsAnUninterruptedRun() throws {
        var o = TrainerOptions()
        o.steps = 12
        o.lr = 5e-3
        o.warmupSteps = 3
        o.gradAccumulation = 2
        o.evalEvery = 4
        for optimizer in ["adamw", "sgd"] {
            o.optimizer = optimizer
            var (_, _, full, data) = try setup(o)
            try full.run(&data)
            // Interrupted after 5 steps: a checkpoint, then a fresh process-like setup resumes.
            var (_, _, first, data1) = try setup(o)
            let ckpt = dir.appendingPathComponent("state-\(optimizer).h5")
            first.checkpointURL = ckpt
            try first.run(&data1, until: 5)
            var (_, lora2, second, data2) = try setup(o)
            try second.resume(from: ckpt, data: &data2)
            XCTAssertEqual(second.step, 5)
            try second.run(&data2)
            XCTAssertEqual(second.history.map(\.loss), full.history.map(\.loss), "\(optimizer): identical losses")
            XCTAssertEqual(second.parameters.map { $0.1.toArray() }, full.parameters.map { $0.1.toArray() })
            XCTAssertEqual(lora2.adapterParameters().count, full.parameters.count)
        }
    }

    /// `profiling` times every step of a run but its first (here steps 2–4, then 6 after a second
    /// `run`), evaluations left out: GEMMs are among the sections, the tokens are the steps' own,
    /// and the run is the one it would be unprofiled.
    func testProfilingSplitsTheStepsAndChangesNothing() throws {
        var o = TrainerOptions()
        (o.steps, o.evalEvery) = (6, 3)
        var (_, _, plain, data) = try setup(o)
        try plain.run(&data, validation: { 1 })
        XCTAssertEqual(plain.profile.steps, 0, "off by default")
        var (_, _, timed, data2) = try setup(o)
        timed.profiling = true
        let slowEvaluation = { () -> Double in Thread.sleep(forTimeInterval: 0.5); return 1 }
        try timed.run(&data2, until: 4, validation: slowEvaluation)
        XCTAssertEqual(timed.profile.steps, 3)
        try timed.run(&data2, validation: slowEvaluation)
        XCTAssertEqual(timed.profile.steps, 4, "the first step of each run is left out")
        XCTAssertEqual(timed.profile.tokens, 4 * 4 * 16, "4 steps of 4 rows × 16 tokens")
        XCTAssertEqual(timed.history.map(\.loss), plain.history.map(\.loss))
        XCTAssertEqual(timed.parameters.map { $0.1.toArray() }, plain.parameters.map { $0.1.toArray() })
        let total = timed.profile.seconds.values.reduce(0, +)
        XCTAssertGreaterThan(timed.profile.seconds[.gemm] ?? 0, 0)
        XCTAssertLessThan(total, 0.5, "the evaluations (0.5 s each, after steps 3 and 6) are not in it")
        let summary = timed.profile.summary
        XCTAssertTrue(summary.hasPrefix("4 steps of ") && summary.contains(" tokens/s): ") && summary.contains("gemm "), summary)
        XCTAssertFalse(Profiler.isEnabled, "stopped when the run ends")
        XCTAssertEqual(StepProfile().summary, "no step was profiled (the first step of a run is not)")
    }

    /// A state written before data-parallel training (no data_parallel_ranks) was one process's: it
    /// resumes under one process, and is refused under two.
    func testAStateWithoutRanksIsOneProcesss() throws {
        var o = TrainerOptions()
        (o.steps, o.lr) = (4, 5e-3)
        var (_, _, first, data1) = try setup(o)
        let ckpt = dir.appendingPathComponent("state-old.h5")
        first.checkpointURL = ckpt
        first.checkpointAttributes = ["method": "lora"]  // as such states were written
        try first.run(&data1, until: 2)
        for (ranks, resumes) in [("1", true), ("2", false)] {
            var (_, _, second, data2) = try setup(o)
            second.checkpointAttributes = ["method": "lora", "data_parallel_ranks": ranks]
            if resumes {
                XCTAssertNoThrow(try second.resume(from: ckpt, data: &data2))
                XCTAssertEqual(second.step, 2)
            } else {
                XCTAssertThrowsError(try second.resume(from: ckpt, data: &data2)) { XCTAssertTrue("\($0)".contains("data_parallel_ranks"), "\($0)") }
            }
        }
    }

    /// Gradient accumulation learns what one large batch of the same rows does: micro-batches weigh
    /// by their learned tokens (the first is mostly masked here), not equally.
    func testAccumulatedMicroBatchesEqualOneLargeBatch() throws {
        struct Fixed: BatchStream {
            let batches: [Batch]
            var next = 0
            mutating func nextBatch() -> Batch { defer { next += 1 }; return batches[next % batches.count] }
            var position: [UInt64] { [UInt64(next)] }
            mutating func seek(to position: [UInt64]) throws { next = Int(position[0]) }
        }
        let T = 8
        let ids = (0..<(4 * T)).map { Int32(($0 * 7 + 3) % 50) }
        var targets = ids.map { ($0 * 3 + 1) % 50 }
        for k in 1..<T { targets[k] = -100 }  // row 0 learns 1 token, rows 1–3 all 8: 9 and 16 per half
        func step(_ batches: [Batch]) throws -> (loss: Double, parameters: [[Float]], initial: [[Float]]) {
            var c = config
            c.dropout = 0
            let model = makeModel(c, seed: 1)
            var lc = LoRAConfig(r: 2, loraAlpha: 4, targetModules: .names(["q_proj", "v_proj", "down_proj"]))
            lc.initLoraWeights = .random
            let lora = try LoRA(config: lc, seed: 2)
            try lora.attach(to: model)
            var o = TrainerOptions()
            (o.steps, o.lr, o.warmupSteps, o.optimizer, o.clip, o.gradAccumulation) = (1, 0.5, 0, "sgd", 0, batches.count)
            let trainer = try Trainer(model: model, parameters: lora.adapterParameters(), options: o)
            let initial = trainer.parameters.map { $0.1.toArray() }
            var data = Fixed(batches: batches)
            try trainer.run(&data)
            return (trainer.history[0].loss, trainer.parameters.map { $0.1.toArray() }, initial)
        }
        let whole = try step([Batch(ids: ids, targets: targets, rows: 4)])
        let halves = try step([Batch(ids: Array(ids[..<(2 * T)]), targets: Array(targets[..<(2 * T)]), rows: 2),
                               Batch(ids: Array(ids[(2 * T)...]), targets: Array(targets[(2 * T)...]), rows: 2)])
        XCTAssertEqual(halves.loss, whole.loss, accuracy: 1e-5 * whole.loss)
        XCTAssertGreaterThan(maxAbsDiff(whole.parameters.flatMap { $0 }, whole.initial.flatMap { $0 }), 1e-3, "the step moved them")
        for (a, b) in zip(whole.parameters, halves.parameters) { assertClose(b, a, rtol: 1e-4, atol: 1e-6, "accumulated vs one batch") }
    }

    /// A long run's checkpoint keeps its whole history: past about 370 steps the metrics outgrew an
    /// HDF5 attribute (64 KiB) and the run stopped at its next checkpoint.
    func testALongRunCheckpointsAndResumesItsWholeHistory() throws {
        var o = TrainerOptions()
        (o.steps, o.lr, o.saveEvery, o.evalEvery) = (600, 1e-3, 300, 1000)
        var (_, _, trainer, data) = try setup(o)
        let ckpt = dir.appendingPathComponent("long.h5")
        trainer.checkpointURL = ckpt
        try trainer.run(&data)
        XCTAssertGreaterThan(try JSONEncoder().encode(trainer.history).count, 65_536, "a history larger than an attribute holds")
        var (_, _, resumed, data2) = try setup(o)
        try resumed.resume(from: ckpt, data: &data2)
        XCTAssertEqual(resumed.step, 600)
        XCTAssertEqual(resumed.history.map(\.loss), trainer.history.map(\.loss))
    }

    func testNonFiniteLossStopsAndKeepsTheLastGoodCheckpoint() throws {
        var o = TrainerOptions()
        o.steps = 6
        o.saveEvery = 1
        var (_, lora, trainer, data) = try setup(o)
        let ckpt = dir.appendingPathComponent("state.h5")
        let metrics = dir.appendingPathComponent("metrics.jsonl")
        trainer.checkpointURL = ckpt
        trainer.metricsURL = metrics
        var poisoned = false
        trainer.onStep = { m in
            if m.step == 3 && !poisoned {  // poison an adapter weight after step 3's update
                lora.layers[0].lora.a.basePointer[0] = .nan
                poisoned = true
            }
        }
        // Step 3's weights are not good: its checkpoint is refused (it used to be written, NaN and all,
        // and then kept as "the last good" one), naming the step and the tensor.
        XCTAssertThrowsError(try trainer.run(&data)) { e in
            XCTAssertTrue("\(e)".contains("step 3") && "\(e)".contains("lora_A") && "\(e)".contains(ckpt.path), "\(e)")
        }
        let (_, _, attrs) = try HDF5Store.read(ckpt.path)
        XCTAssertEqual(attrs["step"], "2", "the checkpoint from the last good step")
        XCTAssertEqual(Trainer.checkpointNote(ckpt), "The last good checkpoint is kept (\(ckpt.path)).")
        // A stop before the first save names no file as kept.
        XCTAssertTrue(Trainer.checkpointNote(dir.appendingPathComponent("none.h5")).hasPrefix("No checkpoint had been saved yet"))
        XCTAssertEqual(Trainer.checkpointNote(nil), "This run writes no checkpoint.")
        XCTAssertEqual(Trainer.jsonDifference(saved: #"{"r": 8, "a": [1], "x": true}"#, mine: #"{"r": 4, "a": [1], "y": null}"#),
                       "r 8 there, 4 here; x true there, missing here; y missing there, null here")
        XCTAssertNil(Trainer.jsonDifference(saved: "lora", mine: "ia3"))
        lora.layers[0].lora.a.basePointer[0] = 0
        var again = data
        XCTAssertNoThrow(try trainer.resume(from: ckpt, data: &again), "the kept state is good")
        let lines = try String(contentsOf: metrics).split(separator: "\n")
        XCTAssertEqual(lines.count, 3)
        let m = try JSONDecoder().decode(StepMetrics.self, from: Data(lines[0].utf8))
        XCTAssertEqual(m.step, 1)
        XCTAssertTrue(lines[0].contains("\"tokens_per_s\"") && lines[0].contains("\"grad_norm\""))
    }

    /// Metrics lines are written off the training thread, in step order, all of them on disk when
    /// `run` returns; one that cannot be written stops the run at the next checkpoint with an error
    /// naming the file and the step, before that checkpoint is written.
    func testMetricsLinesAreWrittenInOrderAndAFailureStopsTheRun() throws {
        var o = TrainerOptions()
        o.steps = 5
        o.saveEvery = 3
        var (_, _, trainer, data) = try setup(o)
        let metrics = dir.appendingPathComponent("metrics.jsonl")
        trainer.metricsURL = metrics
        try trainer.run(&data)
        let steps = try String(contentsOf: metrics).split(separator: "\n").map { try JSONDecoder().decode(StepMetrics.self, from: Data($0.utf8)).step }
        XCTAssertEqual(steps, [1, 2, 3, 4, 5])

        var (_, _, failing, more) = try setup(o)
        let blocker = dir.appendingPathComponent("not-a-folder")
        try Data("x".utf8).write(to: blocker)
        let ckpt = dir.appendingPathComponent("failing-state.h5")
        failing.metricsURL = blocker.appendingPathComponent("metrics.jsonl")  // under a file: cannot be created
        failing.checkpointURL = ckpt
        XCTAssertThrowsError(try failing.run(&more)) { e in
            XCTAssertTrue("\(e)".contains("not-a-folder/metrics.jsonl") && "\(e)".contains("cannot append step 1's metrics"), "\(e)")
        }
        XCTAssertLessThanOrEqual(failing.step, 3, "stopped at the first checkpoint")
        XCTAssertFalse(FileManager.default.fileExists(atPath: ckpt.path), "no checkpoint after a lost metrics line")
    }

    /// Dropout masks come from the seed, the step and the rank: each differs.
    func testDropoutSeedsDifferByStepRankAndSeed() {
        let seeds = [Trainer.dropoutSeed(7, step: 0, rank: 0), Trainer.dropoutSeed(7, step: 1, rank: 0),
                     Trainer.dropoutSeed(7, step: 0, rank: 1), Trainer.dropoutSeed(8, step: 0, rank: 0)]
        XCTAssertEqual(Set(seeds).count, 4, "\(seeds)")
        XCTAssertEqual(Trainer.dropoutSeed(7, step: 3, rank: 1), Trainer.dropoutSeed(7, step: 3, rank: 1))
    }

    /// The gradient exchange of data-parallel training (here over a world of one, whose sum is the
    /// identity) keeps a tensor that has no gradient without one, so AdamW gives it no momentum or
    /// decay step; the others come back with their values, and the buffer is reused.
    func testGradientExchangeLeavesTensorsWithoutAGradientWithout() throws {
        let a = Tensor(shape: [3], data: [1, 2, 3])
        let b = Tensor(shape: [2, 2], data: [4, 5, 6, 7])
        (a.requiresGrad, b.requiresGrad) = (true, true)
        let parameters = [("a", a), ("b", b)]
        let exchange = GradientExchange(Communicator.world, parameters: parameters)
        b.grad = Tensor(shape: [2, 2], data: [0.5, -1, 2, 0])
        try exchange.allReduce(parameters, step: 1)
        XCTAssertNil(a.grad, "a tensor no rank has a gradient for got one")
        XCTAssertEqual(b.grad?.toArray(), [0.5, -1, 2, 0])
        let optimizer = AdamW(parameters, weightDecay: 0.1)
        optimizer.step(lr: 0.1)
        XCTAssertEqual(a.toArray(), [1, 2, 3], "AdamW moved a tensor without a gradient")
        optimizer.zeroGrad()
        a.grad = Tensor(shape: [3], data: [1, 1, 1])
        try exchange.allReduce(parameters, step: 2)
        XCTAssertEqual(a.grad?.toArray(), [1, 1, 1])
        XCTAssertNil(b.grad)
    }

    /// Skip mode: a step whose loss is NaN drops its update and the run goes on, within the budget;
    /// past it, the run stops as without the mode.
    func testSkipModeDropsNonFiniteStepsWithinItsBudget() throws {
        var o = TrainerOptions()
        o.steps = 6
        o.skipNonFinite = 1
        var (_, lora, trainer, data) = try setup(o)
        let a = lora.layers[0].lora.a
        var saved: Float = 0
        var skips: [(Int, String)] = []
        trainer.onStep = { m in
            if m.step == 2 { saved = a.basePointer[0]; a.basePointer[0] = .nan }  // step 3's loss will be NaN
        }
        trainer.onSkip = { step, fault in
            skips.append((step, fault))
            a.basePointer[0] = saved  // the fault passes
        }
        try trainer.run(&data, validation: { 2.5 })
        XCTAssertEqual(trainer.step, 6)
        XCTAssertEqual(trainer.skippedSteps, 1)
        XCTAssertEqual(skips.map(\.0), [3])
        XCTAssertEqual(trainer.lastValidation?.step, 6)
        XCTAssertTrue(skips.first?.1.contains("the loss is nan") == true, "\(skips)")
        XCTAssertEqual(trainer.history.map(\.step), [1, 2, 4, 5, 6], "the skipped step has no metrics line")
        XCTAssertTrue(lora.adapterParameters().allSatisfy { $0.1.firstNonFinite() == nil }, "no NaN reached the weights")

        // A skipped last step is still evaluated: the run's final validation loss is not lost.
        var (_, lora5, last, data5) = try setup(o)
        var saved5: Float = 0
        last.onStep = { m in if m.step == 5 { saved5 = lora5.layers[0].lora.a.basePointer[0]; lora5.layers[0].lora.a.basePointer[0] = .nan } }
        last.onSkip = { _, _ in lora5.layers[0].lora.a.basePointer[0] = saved5 }
        try last.run(&data5, validation: { 1.25 })
        XCTAssertEqual(last.history.map(\.step), [1, 2, 3, 4, 5])
        XCTAssertEqual(last.lastValidation?.step, 6)
        XCTAssertEqual(last.lastValidation?.loss, 1.25)

        // Two faults with a budget of one: the second stops the run, naming the step.
        var o2 = TrainerOptions()
        o2.steps = 6
        o2.skipNonFinite = 1
        var (_, lora2, trainer2, data2) = try setup(o2)
        trainer2.onStep = { m in if m.step == 2 { lora2.layers[0].lora.a.basePointer[0] = .nan } }
        XCTAssertThrowsError(try trainer2.run(&data2)) { XCTAssertTrue("\($0)".contains("step 4") && "\($0)".contains("--skip-nonfinite"), "\($0)") }
        XCTAssertEqual(trainer2.skippedSteps, 1)

        // A resumed run has what is left of the budget, and keeps its token count.
        var (_, lora3, trainer3, data3) = try setup(o)
        let ckpt = dir.appendingPathComponent("skipped.h5")
        trainer3.checkpointURL = ckpt
        var saved3: Float = 0
        trainer3.onStep = { m in if m.step == 2 { saved3 = lora3.layers[0].lora.a.basePointer[0]; lora3.layers[0].lora.a.basePointer[0] = .nan } }
        trainer3.onSkip = { _, _ in lora3.layers[0].lora.a.basePointer[0] = saved3 }
        try trainer3.run(&data3, until: 4)
        XCTAssertEqual(trainer3.skippedSteps, 1)
        var (_, lora4, resumed, data4) = try setup(o)
        try resumed.resume(from: ckpt, data: &data4)
        XCTAssertEqual(resumed.skippedSteps, 1, "the budget already used")
        XCTAssertEqual(resumed.tokensTrained, trainer3.tokensTrained)
        resumed.onStep = { m in if m.step == 5 { lora4.layers[0].lora.a.basePointer[0] = .nan } }
        XCTAssertThrowsError(try resumed.run(&data4)) { XCTAssertTrue("\($0)".contains("step 6"), "\($0)") }
    }

    /// Issue 9, point 6: once warm, training steps take no new memory from the system. Every op
    /// still allocates its output, but from blocks the heap already holds (`Storage.tuneAllocator`
    /// keeps freed blocks up to 1 GiB there): the process's data size (VmData) does not grow, and
    /// the steps fault in fewer than 64 pages each.
    func testSteadyStepsTakeNoNewMemoryFromTheSystem() throws {
        let model = makeModel(.llama(vocabSize: 2048, hiddenSize: 128, numLayers: 2, numHeads: 4, numKVHeads: 2,
                                     intermediateSize: 384, maxPositions: 128), seed: 1)
        let lora = try LoRA(config: LoRAConfig(r: 4, loraAlpha: 8), seed: 2)
        try lora.attach(to: model)
        var o = TrainerOptions()
        o.steps = 20
        let trainer = try Trainer(model: model, parameters: lora.adapterParameters(), options: o)
        var data = WindowSampler(tokens: (0..<20_000).map { Int32(($0 * 31 + $0 / 7) % 2048) }, seqLen: 128, batch: 8, seed: 3)
        func systemBytes() throws -> Int {  // VmData: the heap and every private mapping, in kB
            let status = try String(contentsOfFile: "/proc/self/status", encoding: .utf8)
            let line = status.split(separator: "\n").first { $0.hasPrefix("VmData:") } ?? ""
            return try XCTUnwrap(Int(line.split(separator: " ").dropFirst().first ?? ""), "no VmData in /proc/self/status")
        }
        /// The minor faults of the threads that train: this one and the worker pool's. The whole
        /// process's count took in other tests' threads (a server still shutting down): in the full
        /// suite it counted 3,776 and 4,612 where these threads count 0.
        var workers = 0
        func trainingFaults() throws -> Int {
            workers = 0
            let me = URL(fileURLWithPath: try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/thread-self")).lastPathComponent  // "<pid>/task/<tid>"
            var total = 0
            for tid in try FileManager.default.contentsOfDirectory(atPath: "/proc/self/task") {
                let comm = (try? String(contentsOfFile: "/proc/self/task/\(tid)/comm", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
                guard tid == me || comm == "swiftpeft-work" else { continue }
                if comm == "swiftpeft-work" { workers += 1 }
                guard let stat = try? String(contentsOfFile: "/proc/self/task/\(tid)/stat", encoding: .utf8),
                      let close = stat.range(of: ")", options: .backwards) else { continue }  // a thread that just ended
                let fields = stat[close.upperBound...].split(separator: " ")  // state, ppid, pgrp, session, tty, tpgid, flags, minflt, …
                total += try XCTUnwrap(Int(fields[7]), "no minflt in \(stat)")
            }
            return total
        }
        try trainer.run(&data, until: 4)  // warm: every buffer size has been asked for once
        let before = try systemBytes()
        // Two windows of 8 steps, the fewer counted; steps that fault do so in both.
        var fewest = Int.max
        for end in [12, 20] {
            let faults = try trainingFaults()
            try trainer.run(&data, until: end)
            fewest = min(fewest, try trainingFaults() - faults)
        }
        XCTAssertEqual(trainer.step, 20)
        if ProcessInfo.processInfo.activeProcessorCount > 1 { XCTAssertGreaterThan(workers, 0, "no worker thread named swiftpeft-work counted") }
        XCTAssertLessThanOrEqual(try systemBytes(), before, "16 steady steps took memory from the system (kB)")
        // Measured: 0 faults here; 46,272 and 46,815 with glibc's default thresholds (every large
        // buffer mapped afresh and faulted in page by page).
        XCTAssertLessThan(fewest, 8 * 64, "page faults in 8 steady steps")
    }

    /// With gradient checkpointing (the trainer option), a run gives the same losses and the same
    /// adapter as without it: the recomputed blocks replay the model's and LoRA's dropout masks.
    func testGradientCheckpointingGivesTheSameRun() throws {
        func run(_ checkpointing: Bool) throws -> ([Double], [[Float]]) {
            var o = TrainerOptions()
            (o.steps, o.lr, o.gradientCheckpointing) = (4, 1e-2, checkpointing)
            var (model, lora, trainer, data) = try setup(o)
            var seen: [Bool] = []
            trainer.onStep = { _ in seen.append(model.gradientCheckpointing) }
            try trainer.run(&data)
            XCTAssertEqual(seen, [Bool](repeating: checkpointing, count: 4), "the model recomputes while the trainer runs")
            XCTAssertFalse(model.gradientCheckpointing, "the trainer puts the model's setting back")
            return (trainer.history.map(\.loss), lora.adapterParameters().map { $0.1.toArray() })
        }
        let (plainLosses, plainWeights) = try run(false)
        let (losses, weights) = try run(true)
        XCTAssertEqual(losses, plainLosses)
        XCTAssertEqual(weights, plainWeights)
        XCTAssertEqual(try TrainerOptions.decode(Data(#"{"gradient_checkpointing": true}"#.utf8)).gradientCheckpointing, true)
    }

    /// `--precision bf16`: every frozen matrix (q, k, v, o, the MLP's and the tied head) gets its
    /// two training copies and lets its fp32 values go (not the embedding, read by token), what
    /// trains gets none, and a LoRA run stays close to the fp32 one: losses within 1%, adapter
    /// weights within 2% of their size. DoRA, which reads the base's rows, keeps every fp32 value;
    /// full fine-tuning is refused.
    func testBF16PrecisionTrainsCloseToFP32() throws {
        func run(_ precision: TrainingPrecision) throws -> ([Double], [[Float]]) {
            var o = TrainerOptions()
            (o.steps, o.lr) = (4, 1e-2)
            var (model, lora, _, data) = try setup(o)
            try precision.apply(to: model, method: "lora", adapter: lora)
            if precision == .bf16 {
                var copied = 0
                for (name, p) in model.namedParameters() where p.rank == 2 {
                    let frozen = !p.requiresGrad
                    XCTAssertEqual(p.bf16GradientCopy != nil, frozen, name)
                    XCTAssertEqual(p.bf16Copy?.servesTraining ?? false, frozen, name)
                    XCTAssertEqual(p.storage.valuesReleased, frozen && name != "model.embed_tokens.weight", name)
                    if frozen { copied += 1 }
                }
                XCTAssertEqual(copied, 2 * 7 + 1, "7 matrices per block and the tied head")
            }
            let trainer = try Trainer(model: model, parameters: lora.adapterParameters(), options: o)
            try trainer.run(&data)
            return (trainer.history.map(\.loss), lora.adapterParameters().map { $0.1.toArray() })
        }
        let (fp32Losses, fp32Weights) = try run(.fp32)
        let (losses, weights) = try run(.bf16)
        for (a, b) in zip(losses, fp32Losses) { XCTAssertEqual(a, b, accuracy: 0.01 * b) }
        XCTAssertNotEqual(losses, fp32Losses, "the fp32 products were used")
        for (w, f) in zip(weights, fp32Weights) {
            let size = f.map { abs($0) }.max()!
            XCTAssertLessThan(maxAbsDiff(w, f), 0.02 * size)
        }
        let doraModel = makeModel(config, seed: 1)
        var doraConfig = LoRAConfig(r: 2, loraAlpha: 4, targetModules: .names(["q_proj"]))
        doraConfig.useDora = true
        let dora = try LoRA(config: doraConfig, seed: 2)
        try dora.attach(to: doraModel)
        try TrainingPrecision.bf16.apply(to: doraModel, method: "dora", adapter: dora)
        XCTAssertFalse(doraModel.hasReleasedWeights, "DoRA reads the base's rows")
        XCTAssertNotNil(doraModel.namedParameters().first { $0.0.hasSuffix("q_proj.weight") }?.1.bf16GradientCopy)
        let full = makeModel(config, seed: 1)
        full.unfreeze()
        XCTAssertThrowsError(try TrainingPrecision.bf16.apply(to: full, method: "full", adapter: nil)) { e in
            XCTAssertTrue("\(e)".contains("no weight matrix frozen"), "\(e)")
        }
    }

    /// bf16 training copies under the other ways a job reads the model: gradient checkpointing
    /// recomputes the same products (the same run, bit for bit), and an evaluation of one short row
    /// without a gradient (a decoding-size product against a training copy) stays within 1% of
    /// the fp32-trained model's.
    func testBF16PrecisionWithCheckpointingAndShortEvaluation() throws {
        func run(_ precision: TrainingPrecision, checkpointing: Bool) throws -> ([Double], CausalLM) {
            var o = TrainerOptions()
            (o.steps, o.lr, o.gradientCheckpointing) = (3, 1e-2, checkpointing)
            var (model, lora, _, data) = try setup(o)
            try precision.apply(to: model, method: "lora", adapter: lora)
            let trainer = try Trainer(model: model, parameters: lora.adapterParameters(), options: o)
            try trainer.run(&data)
            model.eval()
            return (trainer.history.map(\.loss), model)
        }
        let (plain, model) = try run(.bf16, checkpointing: false)
        XCTAssertEqual(try run(.bf16, checkpointing: true).0, plain)
        let fp32Model = try run(.fp32, checkpointing: false).1
        let ids: [Int32] = [3, 1, 4, 1, 5]  // one row of 5: at most BF16Copy.maxRows rows per product
        let targets = CausalLM.shiftedTargets(ids, batch: 1)
        let bf16 = withNoGrad { model.loss(ids, targets: targets, batch: 1) }.item()
        let fp32 = withNoGrad { fp32Model.loss(ids, targets: targets, batch: 1) }.item()
        XCTAssertEqual(bf16, fp32, accuracy: 0.01 * fp32)
        XCTAssertNotEqual(bf16, fp32, "the fp32 weights were read")
    }

    /// What a forward pass leaves on the heap for the backward: with checkpointing, each block's
    /// (B, T, C) input and the head's part instead of every block's activations.
    func testGradientCheckpointingKeepsOneInputPerBlock() throws {
        let config = ModelConfig.llama(vocabSize: 64, hiddenSize: 64, numLayers: 8, numHeads: 4, numKVHeads: 2,
                                       intermediateSize: 256, maxPositions: 128)
        let model = makeModel(config, seed: 1)
        model.unfreeze()
        let ids: [Int32] = (0..<512).map { (i: Int) -> Int32 in Int32((i * 7 + i / 5) % 64) }
        let targets = CausalLM.shiftedTargets(ids, batch: 4)
        func keptBytes(_ checkpointing: Bool) -> Int {
            model.gradientCheckpointing = checkpointing
            let before = Int(mallinfo2().uordblks)
            let loss = model.loss(ids, targets: targets, batch: 4)
            let kept = Int(mallinfo2().uordblks) - before  // bytes in use on the heap (every tensor is there: Storage.tuneAllocator)
            loss.backward()
            for (_, p) in model.namedParameters() { p.zeroGrad() }
            return kept
        }
        _ = keptBytes(false)  // warm
        let plain = keptBytes(false), checkpointed = keptBytes(true)
        let perBlockInput = 4 * 128 * 64 * 4  // (B, T, C) floats
        print("graph after the forward pass: \(plain) bytes kept, \(checkpointed) with checkpointing")
        // Without: 13 (B, T, C)-sized tensors per block here: the norms' inputs, q and k after RoPE,
        // v (k and v at C/2), attention's output, gate and up (4C each). The norms' outputs and
        // gate ⊙ up (6 more) are dropped and recomputed where a weight gradient reads them.
        // With: one per block, plus the few of the final norm and the head, which both keep.
        XCTAssertGreaterThan(plain, 8 * 12 * perBlockInput)
        XCTAssertLessThan(plain, 8 * 14 * perBlockInput)
        XCTAssertLessThan(checkpointed, 8 * perBlockInput + 6 * perBlockInput)
    }

    func testSchedulesAndOptionsJSON() throws {
        XCTAssertEqual(Schedule.constant.lr(step: 50, total: 100, warmup: 10, peak: 1), 1)
        XCTAssertEqual(Schedule.linear.lr(step: 100, total: 100, warmup: 0, peak: 1, minRatio: 0), 0, accuracy: 1e-6)
        XCTAssertEqual(Schedule.linear.lr(step: 50, total: 100, warmup: 0, peak: 1, minRatio: 0), 0.5, accuracy: 1e-6)
        XCTAssertEqual(Schedule.cosine.lr(step: 4, total: 100, warmup: 10, peak: 1), 0.5, accuracy: 1e-6)
        XCTAssertEqual(Schedule.cosine.lr(step: 55, total: 100, warmup: 10, peak: 1, minRatio: 0), 0.5, accuracy: 1e-6)
        let o = try TrainerOptions.decode(Data(#"{"steps": 7, "lr": 0.01, "schedule": "linear", "grad_accumulation": 3}"#.utf8))
        XCTAssertEqual(o.steps, 7)
        XCTAssertEqual(o.schedule, .linear)
        XCTAssertEqual(o.gradAccumulation, 3)
        XCTAssertEqual(o.warmupSteps, TrainerOptions().warmupSteps, "missing keys take defaults")
        XCTAssertThrowsError(try { var b = TrainerOptions(); b.optimizer = "lion"; _ = try Trainer(model: makeModel(config), parameters: [("x", Tensor.zeros([1]))], options: b) }())
    }
}
