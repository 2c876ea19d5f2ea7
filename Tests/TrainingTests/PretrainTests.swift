// Pretraining a tiny model from scratch on real text lowers validation loss well below the
// unigram entropy (what a model that ignores context can reach).

import XCTest
@testable import Training
import TensorCore
import NN
import Models
import Tokenizers
import PEFT
import Containers
import Formats

final class PretrainTests: XCTestCase {
    /// Text every Debian machine has (package base-files): the common licenses, as bytes.
    static func licenseBytes() throws -> [Int32] {
        let dir = "/usr/share/common-licenses"
        let names = try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
        var bytes: [Int32] = []
        for n in names where ["GPL-3", "LGPL-3", "Apache-2.0", "Artistic", "BSD", "MPL-2.0", "GPL-2", "LGPL-2.1", "MPL-1.1", "GFDL-1.3"].contains(n) {
            if let d = FileManager.default.contents(atPath: dir + "/" + n) { bytes += d.map { Int32($0) } }
        }
        return bytes
    }

    func testPretrainingBeatsUnigramEntropy() throws {
        let bytes = try Self.licenseBytes()
        guard bytes.count > 50_000 else {
            XCTFail("needs /usr/share/common-licenses (Debian base-files); found \(bytes.count) bytes")
            return
        }
        let cut = bytes.count * 9 / 10
        let (train, val) = (Array(bytes[..<cut]), Array(bytes[cut...]))
        let config = ModelConfig.llama(vocabSize: 256, hiddenSize: 64, numLayers: 2, numHeads: 4, numKVHeads: 2,
                                       intermediateSize: 128, tieWordEmbeddings: true, maxPositions: 128)
        let model = makeModel(config, seed: 1)
        var o = PretrainOptions()
        o.steps = 600
        o.batch = 16
        o.seqLen = 64
        o.lr = 3e-3
        o.warmup = 20
        o.evalEvery = 600
        o.evalTokens = 8192
        let before = evaluate(model, tokens: val, seqLen: 64, maxTokens: 8192).loss
        let points = try pretrain(model, train: train, val: val, options: o) { p in
            if p.step % 100 == 0 { print("step \(p.step) loss \(p.loss) lr \(p.lr) gnorm \(p.gradNorm)") }
        }
        let after = points.last!.valLoss!
        let unigram = unigramEntropy(val)
        print("pretrain: val loss \(before) → \(after) nats; unigram entropy \(unigram) nats")
        XCTAssertGreaterThan(before, 5, "an untrained model is near uniform (ln 256 = 5.55)")
        XCTAssertLessThan(after, unigram - 0.6, "well below the unigram entropy")
        XCTAssertEqual(points.count, 600)
        XCTAssertTrue(model.namedParameters().allSatisfy { $0.1.grad == nil }, "gradients are cleared after each step")
    }

    /// Pretraining with gradient checkpointing gives the same run.
    func testPretrainingWithGradientCheckpointingIsTheSameRun() throws {
        let tokens: [Int32] = (0..<4000).map { (i: Int) -> Int32 in Int32((i * 13 + i / 7) % 256) }
        func run(_ checkpointing: Bool, attentionDropout: Float? = 0.1) throws -> [Double] {
            var config = ModelConfig.gpt2(vocabSize: 256, hiddenSize: 32, numLayers: 2, numHeads: 2, maxPositions: 64, dropout: 0.1)
            config.attentionDropout = attentionDropout  // the recomputed blocks draw the same attention masks too
            let model = makeModel(config, seed: 1)
            var o = PretrainOptions()
            (o.steps, o.batch, o.seqLen, o.evalEvery, o.evalTokens, o.gradientCheckpointing) = (3, 4, 32, 3, 256, checkpointing)
            XCTAssertEqual(o.trainer.gradientCheckpointing, checkpointing)
            return try pretrain(model, train: tokens, val: Array(tokens.prefix(300)), options: o).map(\.loss)
        }
        XCTAssertEqual(try run(true), try run(false))
        XCTAssertNotEqual(try run(false), try run(false, attentionDropout: nil), "attention dropout takes part")
    }

    /// A pretraining run stopped after a step resumes from its state exactly as if it had never
    /// stopped: the same losses, validations and weights; the state's cost adds up both sessions; a
    /// resume on other text, or with another window, is refused, naming what differs.
    func testAStoppedPretrainingResumesExactly() throws {
        let tokens: [Int32] = (0..<4000).map { (i: Int) -> Int32 in Int32((i * 13 + i / 7) % 256) }
        let val = Array(tokens.prefix(300))
        let state = FileManager.default.temporaryDirectory.appendingPathComponent("swiftpeft-pretrain-\(UUID().uuidString).state.h5")
        defer { try? FileManager.default.removeItem(at: state) }
        let config = ModelConfig.llama(vocabSize: 256, hiddenSize: 32, numLayers: 2, numHeads: 2, numKVHeads: 1,
                                       intermediateSize: 64, tieWordEmbeddings: true, maxPositions: 64)
        func options(resume: Bool = false) -> PretrainOptions {
            var o = PretrainOptions()
            (o.steps, o.batch, o.seqLen, o.evalEvery, o.evalTokens, o.warmup) = (8, 4, 32, 3, 256, 2)
            (o.checkpointURL, o.resume, o.costMeter) = (state, resume, CostMeter())
            return o
        }
        let whole = makeModel(config, seed: 1)
        var plain = options()
        plain.checkpointURL = nil
        let wholePoints = try pretrain(whole, train: tokens, val: val, options: plain)
        XCTAssertFalse(FileManager.default.fileExists(atPath: state.path), "no checkpoint asked for, none written")

        XCTAssertThrowsError(try pretrain(makeModel(config, seed: 1), train: tokens, val: val, options: options()) { p in
            if p.step == 5 { Trainer.requestStop() }
        }) { e in XCTAssertEqual((e as? TrainingInterrupted)?.step, 5, "\(e)") }
        XCTAssertEqual(try HDF5Store.readAttributes(state.path)["step"], "5")
        let resumed = makeModel(config, seed: 1)
        let points = try pretrain(resumed, train: tokens, val: val, options: options(resume: true))
        XCTAssertEqual(points.map(\.step), Array(1...8), "the history of both sessions")
        XCTAssertEqual(points.map(\.loss), wholePoints.map(\.loss))
        XCTAssertEqual(points.map(\.valLoss), wholePoints.map(\.valLoss))
        for ((name, a), (_, b)) in zip(resumed.namedParameters(), whole.namedParameters()) {
            XCTAssertEqual(a.toArray(), b.toArray(), name)
        }
        let cost = try XCTUnwrap(recordedCost(try HDF5Store.readAttributes(state.path)))
        XCTAssertEqual(cost.sessions, 2)
        XCTAssertEqual(cost.cost.tokens, 8 * 4 * 32, "the tokens of both sessions")

        XCTAssertThrowsError(try pretrain(makeModel(config, seed: 1), train: Array(tokens.dropLast()), val: val, options: options(resume: true))) {
            XCTAssertTrue("\($0)".contains("the state was saved for a text of 4000 tokens") && "\($0)".contains("this text has 3999"), "\($0)")
        }
        var shorter = options(resume: true)
        shorter.seqLen = 16
        XCTAssertThrowsError(try pretrain(makeModel(config, seed: 1), train: tokens, val: val, options: shorter)) {
            XCTAssertTrue("\($0)".contains("--seq-len 32 in the state, 16 in this run") && "\($0)".contains("start again without --resume"), "\($0)")
        }
    }

    /// Every window start is drawn, the last one included, so every token but the first is a
    /// target; a stream of exactly one window is enough.
    func testWindowSamplerReachesTheLastToken() {
        let tokens: [Int32] = Array(0..<10)
        var sampler = WindowSampler(tokens: tokens, seqLen: 4, batch: 8, seed: 5)
        var targets = Set<Int32>(), starts = Set<Int32>()
        for _ in 0..<50 {
            let (ids, t) = sampler.next()
            XCTAssertEqual(ids.count, 32)
            for w in 0..<8 {
                XCTAssertEqual(Array(t[(w * 4)..<(w * 4 + 4)]), ids[(w * 4)..<(w * 4 + 4)].map { $0 + 1 }, "targets are the next tokens")
                starts.insert(ids[w * 4])
            }
            targets.formUnion(t)
        }
        XCTAssertEqual(starts, Set(0...5), "windows of 5 tokens start anywhere from 0 to 5")
        XCTAssertEqual(targets, Set(1...9), "the last token is a target")
        var one = WindowSampler(tokens: Array(tokens.prefix(5)), seqLen: 4, batch: 2, seed: 5)
        XCTAssertEqual(one.next().targets, [1, 2, 3, 4, 1, 2, 3, 4])
    }

    func testScheduleAndEvaluation() {
        // Pretraining's schedule is the Trainer's cosine (one implementation).
        XCTAssertEqual(PretrainOptions().trainer.schedule, .cosine)
        XCTAssertEqual(Schedule.cosine.lr(step: 0, total: 100, warmup: 10, peak: 1), 0.1, accuracy: 1e-6)
        XCTAssertEqual(Schedule.cosine.lr(step: 9, total: 100, warmup: 10, peak: 1), 1, accuracy: 1e-6)
        XCTAssertEqual(Schedule.cosine.lr(step: 100, total: 100, warmup: 10, peak: 1, minRatio: 0.1), 0.1, accuracy: 1e-6)
        XCTAssertEqual(unigramEntropy([1, 1, 2, 2]), log(2), accuracy: 1e-12)
        let model = makeModel(.gpt2(vocabSize: 11, hiddenSize: 8, numLayers: 1, numHeads: 2, maxPositions: 16), seed: 2)
        let e = evaluate(model, tokens: Array(0..<40).map { Int32($0 % 11) }, seqLen: 8)
        XCTAssertEqual(e.tokens, 39, "every token but the first is a target once: 4 rows of 8 and one of 7")
        XCTAssertEqual(e.loss, log(11), accuracy: 0.3, "a fresh model is near uniform")
        XCTAssertEqual(evaluate(model, tokens: Array(0..<40).map { Int32($0 % 11) }, seqLen: 8, maxTokens: 16).tokens, 16)
        XCTAssertThrowsError(try pretrain(model, train: [1, 2, 3], val: [1, 2, 3], options: PretrainOptions())) {
            XCTAssertTrue("\($0)".contains("too few for windows"), "\($0)")
        }
        // A validation stream of one token has no target: refused, not a NaN loss at every evaluation.
        var short = PretrainOptions()
        (short.seqLen, short.steps) = (4, 1)
        XCTAssertThrowsError(try pretrain(model, train: Array(0..<20).map { Int32($0 % 11) }, val: [3], options: short)) {
            XCTAssertEqual("\($0)", "the validation text has 1 token, too few to score (2 or more); use more text")
        }
        XCTAssertNoThrow(try checkPretrainTokens(train: Array(0..<5).map { Int32($0) }, val: [3, 4], seqLen: 4))
    }
}
