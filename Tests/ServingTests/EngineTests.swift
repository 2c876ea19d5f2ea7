// The serving engine on a small base trained here: which waiting requests share a batch (each
// keeps the answer it would get alone), streamed text that adds up to the whole text, a client that
// goes away, stop tokens, adapters that would change the base for every request, and adapters
// attached per batch from memory rather than from their file.

import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Synchronization
import XCTest
import TestSupport
import SwiftPEFT
@testable import Serving

final class EngineTests: XCTestCase {
    var dir: URL!
    var basePath: String!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("swiftpeft-engine-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let text = (0..<200).map { "The cat \(["eats", "sees", "likes"][$0 % 3]) the fish number \($0 % 9)." }
        let tokenizer = try trainBaseTokenizer(text, vocabSize: 300)
        let config = ModelConfig.llama(vocabSize: tokenizer.vocabSize, hiddenSize: 32, numLayers: 2, numHeads: 4, numKVHeads: 2,
                                       intermediateSize: 64, tieWordEmbeddings: true, maxPositions: 2048)
        basePath = dir.appendingPathComponent("base.h5").path
        try ModelCheckpoint.save(makeModel(config, seed: 3), tokenizerJSON: tokenizer.tokenizerJSON(), to: basePath)
    }
    override func tearDown() { try? FileManager.default.removeItem(at: dir) }

    func job(_ id: Int, _ model: String, prompt: Int, maxTokens: Int) -> ServingEngine.Job {
        let (_, continuation) = AsyncStream<GenerationEvent>.makeStream()
        return ServingEngine.Job(id: id, request: GenerationRequest(model: model, prompt: [Int32](repeating: 5, count: prompt), maxTokens: maxTokens),
                                 continuation: continuation)
    }

    /// Runs one request to its end; the streamed pieces and the summary.
    func complete(_ engine: ServingEngine, _ request: GenerationRequest) async throws -> (pieces: [String], summary: GenerationSummary) {
        var pieces: [String] = []
        for await e in try engine.submit(request) {
            switch e {
            case .text(let t, _): pieces.append(t)
            case .prompt: continue
            case .failed(let why): XCTFail(why)
            case .done(let s): return (pieces, s)
            }
        }
        throw XCTSkip("the stream ended without a summary")
    }

    func testABatchNeverCutsARequestsRoomOrMovesPositions() throws {
        let engine = try ServingEngine(modelPath: basePath, contextLength: 64)
        defer { engine.shutdown() }
        // A 4-token prompt wanting 50 tokens cannot sit beside a 40-token prompt: left-padded to 40,
        // it would have room for 24 only. The two long prompts batch together (40 + 20 ≤ 64), and a
        // 10-token prompt wanting 14 joins them.
        let a = job(1, engine.baseName, prompt: 4, maxTokens: 50), b = job(2, engine.baseName, prompt: 40, maxTokens: 10)
        let c = job(3, engine.baseName, prompt: 40, maxTokens: 20), d = job(4, engine.baseName, prompt: 10, maxTokens: 14)
        var (batch, rest) = engine.formBatch([a, b, c, d])
        XCTAssertEqual(batch.map(\.id), [1, 4])
        XCTAssertEqual(rest.map(\.id), [2, 3])
        (batch, rest) = engine.formBatch([b, c, d])
        XCTAssertEqual(batch.map(\.id), [2, 3, 4])
        XCTAssertTrue(rest.isEmpty)

        // Prompt tuning puts virtual tokens before the prompt: left padding would sit between them
        // and the prompt, so only prompts of one length share its batch.
        let loaded = try loadModel(basePath)
        let pt = try PromptTuning(config: PromptTuningConfig(numVirtualTokens: 3), seed: 1)
        try pt.attach(to: loaded.model)
        let ptPath = dir.appendingPathComponent("pt.h5").path
        try AdapterCheckpoint.save(pt, base: loaded.model, to: ptPath)
        try engine.loadAdapter(name: "pt", path: ptPath)
        (batch, rest) = engine.formBatch([job(5, "pt", prompt: 5, maxTokens: 4), job(6, "pt", prompt: 9, maxTokens: 4),
                                          job(7, "pt", prompt: 5, maxTokens: 4), job(8, engine.baseName, prompt: 9, maxTokens: 4)])
        XCTAssertEqual(batch.map(\.id), [5, 7])
        XCTAssertEqual(rest.map(\.id), [6, 8])
        // Its virtual tokens take positions too: refused at submit (a 400), not failed in the batch (a 500).
        XCTAssertThrowsError(try engine.submit(GenerationRequest(model: "pt", prompt: [Int32](repeating: 5, count: 60), maxTokens: 3))) {
            XCTAssertEqual(($0 as? ServingError)?.kind, .contextLengthExceeded)
            XCTAssertTrue("\($0)".contains("+3 virtual tokens of pt"), "\($0)")
        }
        // The base alone (RoPE): prompts of any length share a batch.
        (batch, _) = engine.formBatch([job(9, engine.baseName, prompt: 5, maxTokens: 4), job(10, engine.baseName, prompt: 9, maxTokens: 4)])
        XCTAssertEqual(batch.map(\.id), [9, 10])
    }

    func testStreamedPiecesAddUpToTheText() {
        // Each step sees the whole text so far; a token that joins the last character sent (a
        // combining accent, "\r" then "\n") sends only its own scalars.
        var s = TextStream()
        XCTAssertEqual(s.next("caf", finished: false, stops: []), "caf")
        XCTAssertEqual(s.next("cafe", finished: false, stops: []), "e")
        XCTAssertEqual(s.next("cafe\u{301}", finished: false, stops: []), "\u{301}")
        XCTAssertEqual(s.next("cafe\u{301}\r", finished: false, stops: []), "\r")
        XCTAssertEqual(s.next("cafe\u{301}\r\n", finished: false, stops: []), "\n")
        // A half-decoded character waits; so does the start of a stop text, until it cannot be one.
        XCTAssertNil(s.next("cafe\u{301}\r\n\u{FFFD}", finished: false, stops: []))
        XCTAssertEqual(s.next("cafe\u{301}\r\n\u{E9} EN", finished: false, stops: ["END"]), "\u{E9} ")
        XCTAssertEqual(s.next("cafe\u{301}\r\n\u{E9} ENT", finished: false, stops: ["END"]), "ENT")
        XCTAssertNil(s.next("cafe\u{301}\r\n\u{E9} ENT", finished: true, stops: []))
        XCTAssertEqual(s.sent, "cafe\u{301}\r\n\u{E9} ENT".unicodeScalars.count)
    }

    func testAClientThatGoesAwayStopsItsRow() throws {
        let engine = try ServingEngine(modelPath: basePath)
        defer { engine.shutdown() }
        let finished = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var summary: GenerationSummary?
        engine.onFinished = { _, s in summary = s; finished.signal() }
        let request = GenerationRequest(model: engine.baseName, prompt: engine.tokenizer.encode("The cat"), maxTokens: 2000)
        var stream: AsyncStream<GenerationEvent>? = try engine.submit(request)
        while engine.queued > 0 { usleep(100) }  // the worker took it
        XCTAssertNotNil(stream)
        stream = nil  // the client goes away: its stream is released
        XCTAssertEqual(finished.wait(timeout: .now() + 60), .success, "the row was not stopped")
        XCTAssertEqual(summary?.finishReason, "cancelled")
        XCTAssertLessThan(summary?.completionTokens ?? 2000, 2000)
    }

    /// `serve --keep-quantized` on a Q8_0 GGUF base: every matrix, the embedding included, keeps
    /// its blocks, and two requests sent together get the answers of the Float32 load.
    func testAQuantizedBaseKeptAsBlocksAnswersAsItsFloat32Load() async throws {
        let gguf = dir.appendingPathComponent("base-q8_0.gguf").path
        let base = try loadModel(basePath)
        try saveGGUFModel(base.model, tokenizer: base.tokenizer, to: gguf, type: .q8_0)
        let (plain, kept) = (try ServingEngine(modelPath: gguf), try ServingEngine(modelPath: gguf, keepQuantized: true))
        defer { plain.shutdown(); kept.shutdown() }
        let packed = kept.model.namedParameters().filter { $0.1.packedWeights != nil }.map(\.0)
        XCTAssertEqual(packed.count, 7 * kept.model.config.numLayers + 1, "\(packed)")
        XCTAssertNotNil(kept.model.tokenEmbeddingTable.packedWeights)
        XCTAssertFalse(plain.model.hasPackedWeights)
        var answers: [[String]] = []
        for engine in [plain, kept] {
            async let a = complete(engine, GenerationRequest(model: engine.baseName, prompt: engine.tokenizer.encode("The cat"), maxTokens: 12))
            async let b = complete(engine, GenerationRequest(model: engine.baseName, prompt: engine.tokenizer.encode("the fish number 4"), maxTokens: 12))
            answers.append([try await a.summary.text, try await b.summary.text])
        }
        XCTAssertEqual(answers[1], answers[0])
        XCTAssertThrowsError(try ServingEngine(modelPath: gguf, precision: .bf16Only, keepQuantized: true)) { e in
            XCTAssertTrue("\(e)".contains("--keep-quantized") && "\(e)".contains("excludes --precision bf16-only"), "\(e)")
        }
    }

    func testStopTokensEndTheCompletion() async throws {
        let engine = try ServingEngine(modelPath: basePath)
        defer { engine.shutdown() }
        var request = GenerationRequest(model: engine.baseName, prompt: engine.tokenizer.encode("The cat"), maxTokens: 8)
        let plain = try await complete(engine, request)
        XCTAssertEqual(plain.summary.completionTokens, 8, "the base runs to max_tokens: \(plain.summary)")
        XCTAssertEqual(plain.pieces.joined(), plain.summary.text)
        // The API's `stop_token_ids` (vLLM's name): here every token, so whatever comes first stops.
        let parameters = try CompletionParameters(["stop_token_ids": (0..<engine.model.config.vocabSize).map { $0 }], defaultModel: engine.baseName)
        request.stopTokens = parameters.stopTokenIDs
        XCTAssertEqual(request.stopTokens.count, engine.model.config.vocabSize)
        XCTAssertThrowsError(try CompletionParameters(["stop_token_ids": [-1]], defaultModel: "m"))
        XCTAssertThrowsError(try CompletionParameters(["stop_token_ids": "2"], defaultModel: "m"))
        let stopped = try await complete(engine, request)
        XCTAssertEqual(stopped.summary.finishReason, "stop")
        XCTAssertEqual(stopped.summary.completionTokens, 1, "the stop token the model chose is counted, as vLLM does")
        XCTAssertEqual(stopped.summary.text, "", "a stop token is not part of the text")
    }

    /// Log-probabilities are the model's own: each new token's and each prompt token's equal the
    /// log-softmax of the logits a whole-sequence forward pass gives (no cache, no batch), with the
    /// most likely tokens in order; they come with the streamed pieces too; a row keeps them in a
    /// batch beside a longer, left-padded prompt; a request may ask for the prompt's alone.
    func testLogprobsAreTheModelsLogSoftmax() async throws {
        let engine = try ServingEngine(modelPath: basePath)
        defer { engine.shutdown() }
        let V = engine.model.config.vocabSize
        /// log p(ids[t] | ids[..<t]) and the log-softmax row at t - 1, for every t ≥ 1, in Double.
        func reference(_ ids: [Int32]) -> [(Double, [Double])] {
            let logits = withNoGrad { engine.model.forward(ids, batch: 1).toArray() }  // (1, T, V)
            return (1..<ids.count).map { t in
                let row = logits[(t - 1) * V ..< t * V].map(Double.init)
                let mx = row.max()!, logZ = mx + Foundation.log(row.reduce(0) { $0 + Foundation.exp($1 - mx) })
                let lps = row.map { $0 - logZ }
                return (lps[Int(ids[t])], lps)
            }
        }
        let prompt = engine.tokenizer.encode("The cat eats the fish")
        var request = GenerationRequest(model: engine.baseName, prompt: prompt, maxTokens: 6)
        (request.logprobs, request.promptLogprobs) = (3, true)
        var pieces: [[TokenLogprob]] = [], promptEvent: [TokenLogprob?]?, summary: GenerationSummary?
        for await e in try engine.submit(request) {
            switch e {
            case .prompt(let lps): promptEvent = lps
            case .text(_, let lps): pieces.append(lps)
            case .failed(let why): XCTFail(why)
            case .done(let s): summary = s
            }
        }
        let s = try XCTUnwrap(summary)
        let new = try XCTUnwrap(s.logprobs), promptLPs = try XCTUnwrap(s.promptLogprobs)
        XCTAssertEqual(new.count, s.completionTokens)
        XCTAssertEqual(engine.tokenizer.decode(new.map(\.token), following: prompt.last), s.text)
        XCTAssertEqual(pieces.flatMap { $0 }.map(\.token), new.map(\.token), "the streamed pieces carry every new token's")
        XCTAssertEqual(promptEvent?.count, prompt.count)
        XCTAssertEqual(promptLPs.count, prompt.count)
        XCTAssertNil(promptLPs[0], "the first prompt token has none")
        let all = prompt + new.map(\.token)
        let ref = reference(all)
        for (t, lp) in (promptLPs.dropFirst().map { $0! } + new).enumerated() {
            let (want, row) = ref[t]
            XCTAssertEqual(Double(lp.token), Double(all[t + 1]))
            XCTAssertEqual(Double(lp.logprob), want, accuracy: 1e-4, "position \(t + 1)")
            let order = row.indices.sorted { row[$0] > row[$1] || (row[$0] == row[$1] && $0 < $1) }
            XCTAssertEqual(lp.top.map { Int($0.token) }, Array(order.prefix(3)), "position \(t + 1): the three most likely, in order")
            for (tok, x) in lp.top { XCTAssertEqual(Double(x), row[Int(tok)], accuracy: 1e-4) }
            if t + 1 >= prompt.count { XCTAssertEqual(lp.token, lp.top[0].token, "greedy picks the most likely") }
        }

        // Beside a longer prompt (this row left-padded), with another row that asks for nothing.
        var longer = GenerationRequest(model: engine.baseName, prompt: engine.tokenizer.encode("The fish number 3. The cat sees the fish"), maxTokens: 6)
        longer.logprobs = nil
        let streams = try engine.submit([request, longer])
        var batched: GenerationSummary?, other: GenerationSummary?
        for await e in streams[0] { if case .done(let x) = e { batched = x } }
        for await e in streams[1] { if case .done(let x) = e { other = x } }
        XCTAssertEqual(batched?.batchSize, 2, "decoded together")
        XCTAssertNil(other?.logprobs)
        XCTAssertNil(other?.promptLogprobs)
        XCTAssertEqual(batched?.text, s.text)
        XCTAssertEqual(batched?.promptLogprobs?.count, promptLPs.count)
        XCTAssertEqual(batched?.logprobs?.count, new.count)
        for (a, b) in zip((batched?.promptLogprobs ?? []).dropFirst().map { $0! } + (batched?.logprobs ?? []), promptLPs.dropFirst().map { $0! } + new) {
            XCTAssertEqual(a.token, b.token)
            XCTAssertEqual(a.logprob, b.logprob, accuracy: 1e-4)
        }

        // The prompt's log-probabilities alone.
        request.maxTokens = 0
        let only = try await complete(engine, request).summary
        XCTAssertEqual(only.text, "")
        XCTAssertEqual(only.completionTokens, 0)
        XCTAssertEqual(only.logprobs?.count, 0)
        XCTAssertEqual(only.promptLogprobs?.compactMap { $0?.logprob }, promptLPs.compactMap { $0?.logprob })
        // A reply that ends at once (here every token stops it) still gives the ending token's
        // log-probability, as vLLM does: a scorer summing the tokens before the last one needs it.
        var ended = GenerationRequest(model: engine.baseName, prompt: prompt, maxTokens: 4)
        (ended.logprobs, ended.stopTokens) = (2, (0..<Int32(V)).map { $0 })
        let end = try await complete(engine, ended).summary
        XCTAssertEqual(end.completionTokens, 1, "the ending token is counted")
        XCTAssertEqual(end.logprobs?.count, 1)
        XCTAssertEqual(end.logprobs?.first?.token, new.first?.token, "greedy: the token the first reply began with")
        XCTAssertEqual(Double(end.logprobs?.first?.logprob ?? 0), ref[prompt.count - 1].0, accuracy: 1e-4)
        XCTAssertThrowsError(try engine.submit(GenerationRequest(model: engine.baseName, prompt: [Int32(V)], maxTokens: 1))) {
            XCTAssertTrue("\($0)".contains("outside the model's vocabulary"), "\($0)")
        }
    }

    /// Penalties and logit bias change the greedy choice exactly as their formulas say: the engine's
    /// tokens equal a greedy loop over whole-sequence forward passes that applies them by hand
    /// (bias, then repetition over prompt and completion, then frequency and presence over the
    /// completion). A +100 bias forces a token; min-p keeps only tokens near the most likely.
    func testPenaltiesAndLogitBiasFollowTheirFormulas() async throws {
        let engine = try ServingEngine(modelPath: basePath)
        defer { engine.shutdown() }
        let V = engine.model.config.vocabSize
        let prompt = engine.tokenizer.encode("The cat sees the fish number 3. The cat")
        func byHand(_ n: Int, bias: [Int32: Float], repetition: Float, frequency: Float, presence: Float) -> [Int32] {
            var ids = prompt, out: [Int32] = []
            for _ in 0..<n {
                let all = withNoGrad { engine.model.forward(ids, batch: 1).toArray() }
                var x = Array(all[(ids.count - 1) * V ..< ids.count * V])
                for (t, b) in bias { x[Int(t)] += b }
                for t in Set(ids) { x[Int(t)] = x[Int(t)] > 0 ? x[Int(t)] / repetition : x[Int(t)] * repetition }
                for t in Set(out) { x[Int(t)] -= frequency * Float(out.filter { $0 == t }.count) + presence }
                let next = Int32(x.indices.max { x[$0] < x[$1] || (x[$0] == x[$1] && $0 > $1) }!)
                out.append(next)
                ids.append(next)
            }
            return out
        }
        func served(_ n: Int, bias: [Int32: Float] = [:], repetition: Float = 1, frequency: Float = 0, presence: Float = 0) async throws -> [Int32] {
            var r = GenerationRequest(model: engine.baseName, prompt: prompt, maxTokens: n)
            (r.logitBias, r.repetitionPenalty, r.frequencyPenalty, r.presencePenalty, r.logprobs) = (bias, repetition, frequency, presence, 0)
            r.stopTokens = []
            return try await complete(engine, r).summary.logprobs?.map(\.token) ?? []
        }
        let plain = try await served(8)
        XCTAssertEqual(plain, byHand(8, bias: [:], repetition: 1, frequency: 0, presence: 0))
        XCTAssertEqual(plain.count, 8, "no end token in this random base's greedy reply")
        for (bias, rep, freq, pres) in [([plain[0]: Float(-100)], Float(1), Float(0), Float(0)), ([:], 1.8, 0, 0), ([:], 1, 1.5, 0), ([:], 1, 0, 1.5),
                                        (Dictionary([(plain[1], Float(-3)), (plain[2], Float(2))], uniquingKeysWith: +), 1.3, 0.7, -0.4)] {
            let want = byHand(8, bias: bias, repetition: rep, frequency: freq, presence: pres)
            let got = try await served(8, bias: bias, repetition: rep, frequency: freq, presence: pres)
            XCTAssertEqual(got, want, "bias \(bias) rep \(rep) freq \(freq) pres \(pres)")
        }
        let banned = try await served(8, bias: [plain[0]: -100]), penalized = try await served(8, frequency: 2)
        XCTAssertNotEqual(banned.first, plain[0], "a -100 bias bans the token")
        XCTAssertNotEqual(penalized, plain, "the penalties change this greedy reply")
        let fish = engine.tokenizer.encode(" fish").last!
        let forced = try await served(5, bias: [fish: 100])
        XCTAssertEqual(forced, [Int32](repeating: fish, count: 5), "a +100 bias forces the token")
        XCTAssertThrowsError(try engine.submit({ var r = GenerationRequest(model: engine.baseName, prompt: prompt, maxTokens: 1); r.logitBias = [Int32(V): 1]; return r }()))

        // top_k 1 at any temperature is greedy.
        var sampled = GenerationRequest(model: engine.baseName, prompt: prompt, maxTokens: 8)
        (sampled.temperature, sampled.topK, sampled.seed, sampled.logprobs) = (1.5, 1, 11, 0)
        let topOne = try await complete(engine, sampled).summary.logprobs?.map(\.token)
        XCTAssertEqual(topOne, plain)
        // More prompts than the queue holds: refused as a bad request, not "busy" (it could never fit).
        let small = try ServingEngine(modelPath: basePath, maxQueue: 2)
        defer { small.shutdown() }
        let three = [GenerationRequest](repeating: GenerationRequest(model: small.baseName, prompt: prompt, maxTokens: 1), count: 3)
        XCTAssertThrowsError(try small.submit(three)) { XCTAssertEqual(($0 as? ServingError)?.kind, .invalidRequest, "\($0)") }

        // min-p: of probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1, min_p 0.5 keeps the first two.
        let logits = [0.5, 0.3, 0.15, 0.05].map { Float(Foundation.log($0)) }
        var options = SamplingOptions(temperature: 1)
        options.minP = 0.5
        var rng = RNG(seed: 7), seen = Set<Int>()
        for _ in 0..<400 { seen.insert(sampleToken(logits, options, &rng)) }
        XCTAssertEqual(seen, [0, 1])
        options.minP = 0
        for _ in 0..<400 { seen.insert(sampleToken(logits, options, &rng)) }
        XCTAssertEqual(seen, [0, 1, 2, 3])
    }

    func testAnAdapterThatChangesBaseValuesIsRefused() async throws {
        let engine = try ServingEngine(modelPath: basePath)
        defer { engine.shutdown() }
        let request = GenerationRequest(model: engine.baseName, prompt: engine.tokenizer.encode("The cat sees"), maxTokens: 8)
        let before = try await complete(engine, request).summary.text

        // LoRA with modules_to_save: its copy of the final norm would replace the base's for every row.
        let loaded = try loadModel(basePath)
        let fingerprint = BaseFingerprint(loaded.model)  // as the trainer takes it, before training
        var config = LoRAConfig(r: 2, loraAlpha: 4, targetModules: .names(["q_proj", "v_proj"]))
        config.modulesToSave = ["norm"]
        let lora = try LoRA(config: config)
        try lora.attach(to: loaded.model)
        for (_, t) in lora.adapterParameters() { withNoGrad { t.assign(Tensor.full(t.shape, 0.5)) } }
        let path = dir.appendingPathComponent("lora-norm.h5").path
        try AdapterCheckpoint.save(lora, fingerprint: fingerprint, to: path)
        XCTAssertThrowsError(try engine.loadAdapter(name: "norm", path: path)) { e in
            XCTAssertTrue("\(e)".contains(path) && "\(e)".contains("modules_to_save") && "\(e)".contains("swiftpeft merge"), "\(e)")
        }
        XCTAssertEqual(engine.modelNames, [engine.baseName])
        let after = try await complete(engine, request).summary.text
        XCTAssertEqual(after, before, "the refused adapter left the base as it was")
    }

    /// The API's parameters are read exactly or refused: an unsupported one that asks for something,
    /// a boolean where a number goes, seeds over 2^53 (kept apart), a stream flag that is not a boolean.
    func testParametersAreReadExactlyOrRefused() throws {
        func params(_ json: String) throws -> CompletionParameters {
            try CompletionParameters(JSONSerialization.jsonObject(with: Data(json.utf8)) as! [String: Any], defaultModel: "m")
        }
        func refused(_ json: String, _ param: String, line: UInt = #line) {
            XCTAssertThrowsError(try params(json), line: line) { XCTAssertEqual(($0 as? APIError)?.param, param, "\($0)", line: line) }
        }
        for (json, param) in [(#"{"logprobs": 21}"#, "logprobs"), (#"{"logprobs": true}"#, "logprobs"), (#"{"logprobs": 1.5}"#, "logprobs"),
                              (#"{"top_logprobs": 2}"#, "top_logprobs"), (#"{"echo": 1}"#, "echo"), (#"{"max_tokens": -1}"#, "max_tokens"),
                              (#"{"best_of": 1.9}"#, "best_of"), (#"{"presence_penalty": 2.5}"#, "presence_penalty"),
                              (#"{"frequency_penalty": true}"#, "frequency_penalty"), (#"{"repetition_penalty": 0}"#, "repetition_penalty"),
                              (#"{"min_p": 1.5}"#, "min_p"), (#"{"logit_bias": {"x": 5}}"#, "logit_bias"), (#"{"logit_bias": {"7": 200}}"#, "logit_bias"),
                              (#"{"logit_bias": [5]}"#, "logit_bias"), (#"{"top_k": -2}"#, "top_k"), (#"{"min_tokens": 3}"#, "min_tokens"),
                              (#"{"ignore_eos": true}"#, "ignore_eos"), (#"{"best_of": 3}"#, "best_of"), (#"{"max_tokens": true}"#, "max_tokens"),
                              (#"{"stream": "true"}"#, "stream"), (#"{"seed": 1.5}"#, "seed"), (#"{"seed": "7"}"#, "seed")] {
            refused(json, param)
        }
        let seventeen = (0..<17).map { "\"s\($0)\"" }.joined(separator: ",")
        refused("{\"stop\": [" + seventeen + "]}", "stop")
        XCTAssertNoThrow(try params(#"{"logprobs": null, "echo": false, "presence_penalty": 0, "best_of": 1, "response_format": {"type": "text"}}"#))
        XCTAssertNoThrow(try params(#"{"logprobs": false, "frequency_penalty": 0.0, "n": 1, "top_p": 1, "logit_bias": {}, "tools": [], "stream_options": {"include_usage": true}}"#),
                         "what clients send by default")
        XCTAssertEqual(try params(#"{"seed": 18446744073709551615}"#).seed, UInt64.max)
        XCTAssertEqual(try params(#"{"seed": 9007199254740993}"#).seed, 9_007_199_254_740_993, "above 2^53, exactly")
        XCTAssertEqual(try params(#"{"seed": -1}"#).seed, UInt64.max, "a negative seed is its bits")
        XCTAssertNotEqual(try params("{}").seed, try params("{}").seed, "no seed: each request samples anew")
        XCTAssertEqual(try params(#"{"stream": true}"#).stream, true)
        XCTAssertNil(try params("{}").maxTokens, "none given: the route picks 64, or the rest of the context for a chat")
        XCTAssertEqual(try params(#"{"max_completion_tokens": 9}"#).maxTokens, 9)
        let sampling = try params(#"{"min_p": 0.1, "presence_penalty": -0.5, "frequency_penalty": 1, "repetition_penalty": 1.3, "logit_bias": {"7": -100, "9": 2.5}}"#)
        XCTAssertEqual(sampling.minP, 0.1)
        XCTAssertEqual(sampling.presencePenalty, -0.5)
        XCTAssertEqual(sampling.frequencyPenalty, 1)
        XCTAssertEqual(sampling.repetitionPenalty, 1.3)
        XCTAssertEqual(sampling.logitBias, [7: -100, 9: 2.5])
        XCTAssertEqual(try params(#"{"top_k": 40}"#).topK, 40)
        XCTAssertEqual(try params(#"{"top_k": -1}"#).topK, 0, "vLLM's -1 is off")
        XCTAssertTrue(try params(#"{"seed": 3}"#).seedGiven)
        XCTAssertFalse(try params("{}").seedGiven)
        // Log-probabilities: a completion's count (false is none) and echo; a chat's flag with top_logprobs.
        XCTAssertEqual(try params(#"{"logprobs": 5, "echo": true, "max_tokens": 0}"#).logprobs, 5)
        XCTAssertEqual(try params(#"{"logprobs": 0}"#).logprobs, 0)
        XCTAssertNil(try params(#"{"logprobs": false}"#).logprobs)
        XCTAssertTrue(try params(#"{"echo": true}"#).echo)
        // No new token is useful only with echo (the prompt's log-probabilities).
        XCTAssertThrowsError(try params(#"{"max_tokens": 0}"#)) { e in
            XCTAssertEqual((e as? APIError)?.param, "max_tokens")
            XCTAssertTrue((e as? APIError)?.message.contains("only echo") == true, "\(e)")
        }
        XCTAssertThrowsError(try params(#"{"max_completion_tokens": 0}"#), "the error names the key the client gave") { e in
            XCTAssertEqual((e as? APIError)?.param, "max_completion_tokens")
            XCTAssertTrue((e as? APIError)?.message.hasPrefix("max_completion_tokens 0 asks") == true, "\(e)")
        }
        func chat(_ json: String) throws -> CompletionParameters {
            try CompletionParameters(JSONSerialization.jsonObject(with: Data(json.utf8)) as! [String: Any], defaultModel: "m", chat: true)
        }
        XCTAssertEqual(try chat(#"{"logprobs": true, "top_logprobs": 3}"#).logprobs, 3)
        XCTAssertEqual(try chat(#"{"logprobs": true}"#).logprobs, 0)
        XCTAssertNil(try chat(#"{"logprobs": false, "top_logprobs": 0}"#).logprobs)
        for (json, param) in [(#"{"top_logprobs": 3}"#, "top_logprobs"), (#"{"logprobs": true, "top_logprobs": 21}"#, "top_logprobs"),
                              (#"{"logprobs": 2}"#, "logprobs"), (#"{"echo": true}"#, "echo"), (#"{"max_tokens": 0}"#, "max_tokens")] {
            XCTAssertThrowsError(try chat(json)) { XCTAssertEqual(($0 as? APIError)?.param, param, "\(json): \($0)") }
        }
        XCTAssertTrue(bearerMatches("Bearer key-1", "key-1") && bearerMatches("bearer key-1", "key-1"))
        XCTAssertFalse(bearerMatches("Bearer key-12", "key-1") || bearerMatches("Bearer key-", "key-1") || bearerMatches("Bearer ", "")
                       || bearerMatches(nil, "key-1") || bearerMatches("Basic key-1", "key-1"))
    }

    func testAPerBatchAdapterIsAttachedFromMemory() async throws {
        let engine = try ServingEngine(modelPath: basePath)
        defer { engine.shutdown() }
        let loaded = try loadModel(basePath)
        let adapter = try BottleneckAdapter(config: BottleneckConfig(reductionFactor: 4), seed: 7)
        try adapter.attach(to: loaded.model)
        for (_, t) in adapter.adapterParameters() {  // weights far from the init (up = 0), so they change the answer
            withNoGrad { t.assign(Tensor(shape: t.shape, data: (0..<t.count).map { 2 * sin(Float($0)) })) }
        }
        let path = dir.appendingPathComponent("bottleneck.h5").path
        try AdapterCheckpoint.save(adapter, base: loaded.model, to: path)
        try engine.loadAdapter(name: "bn", path: path)
        let request = GenerationRequest(model: "bn", prompt: engine.tokenizer.encode("The cat"), maxTokens: 8)
        let first = try await complete(engine, request).summary
        let base = try await complete(engine, GenerationRequest(model: engine.baseName, prompt: request.prompt, maxTokens: 8)).summary
        XCTAssertNotEqual(first.text, base.text, "the adapter changes the answer")
        // The file is gone (retrained elsewhere, deleted): the adapter loaded at load time still answers.
        try FileManager.default.removeItem(atPath: path)
        let second = try await complete(engine, request).summary
        XCTAssertEqual(second.text, first.text)
    }
}

/// The HTTP server in this process, for what only a real connection shows.
final class ServerConnectionTests: XCTestCase {
    /// A client that closes its connection while a non-streaming completion decodes stops the row:
    /// its summary says "cancelled" long before max_tokens.
    func testANonStreamingClientThatHangsUpStopsItsRow() async throws {
        // Large enough that 8,000 tokens take several seconds: the hang-up comes while it decodes.
        let (dir, basePath, _) = try savedBase("hangup", hidden: 512, layers: 8, heads: 8, kvHeads: 2, intermediate: 1024, maxPositions: 8192)
        defer { try? FileManager.default.removeItem(at: dir) }
        let (engine, port, server) = try serve(basePath)
        defer { server.cancel(); engine.shutdown() }
        let finished = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var summary: GenerationSummary?
        engine.onFinished = { _, s in summary = s; finished.signal() }  // after makeServer, which sets its own

        // A body without a JSON content type is refused (a page from another origin could send one).
        let plain = try await URLSession.shared.data(for: {
            var r = URLRequest(url: URL(string: "http://127.0.0.1:\(port)/v1/completions")!)
            (r.httpMethod, r.httpBody) = ("POST", Data(#"{"prompt": "x"}"#.utf8))
            r.setValue("text/plain", forHTTPHeaderField: "Content-Type")
            return r
        }())
        XCTAssertEqual((plain.1 as? HTTPURLResponse)?.statusCode, 415, String(decoding: plain.0, as: UTF8.self))
        // Chat roles are those training knows (developer is system); content may be OpenAI's text parts.
        func chat(_ messages: String) async throws -> (status: Int, body: String) { try await self.chat(port, messages) }
        let other = try await chat(#"[{"role": "function", "content": "x"}]"#)
        XCTAssertEqual(other.status, 400, other.body)
        XCTAssertTrue(other.body.contains("system, user, assistant or tool"), other.body)
        let tool = try await chat(#"[{"role": "user", "content": "x"}, {"role": "tool", "content": "x"}]"#)  // ChatML has no form for it
        XCTAssertEqual(tool.status, 400, tool.body)
        XCTAssertTrue(tool.body.contains("written by the model's chat template, and this tokenizer has none"), tool.body)
        let parts = try await chat(#"[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "The cat"}]}]"#)
        XCTAssertEqual(parts.status, 200, parts.body)
        let image = try await chat(#"[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]"#)
        XCTAssertEqual(image.status, 400, image.body)
        while finished.wait(timeout: .now()) == .success {}  // the chat above finished: start the hang-up afresh
        summary = nil

        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        XCTAssertGreaterThanOrEqual(fd, 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        XCTAssertEqual(connected, 0, "connect to port \(port)")
        let body = #"{"prompt": "The cat", "max_tokens": 8000, "temperature": 0}"#
        let request = "POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            + "Content-Length: \(body.utf8.count)\r\n\r\n" + body
        XCTAssertEqual(request.withCString { send(fd, $0, strlen($0), 0) }, request.utf8.count)
        try await Task.sleep(nanoseconds: 1_000_000_000)  // the worker takes it and decodes
        XCTAssertNil(summary, "still decoding when the client hangs up")
        close(fd)  // the client hangs up
        XCTAssertEqual(finished.wait(timeout: .now() + 120), .success, "the request never finished")
        XCTAssertEqual(summary?.finishReason, "cancelled", "\(summary.map { "\($0.completionTokens) tokens" } ?? "")")
        XCTAssertLessThan(summary?.completionTokens ?? 8000, 8000)
    }

    /// A base whose tokenizer has no `<|im_end|>` cannot end a chat reply: chat requests get a 400
    /// that says so, rather than replies that run to max_tokens.
    func testChatNeedsATokenizerWithImEnd() async throws {
        let noChatML = try BPETokenizer.train(corpus: Self.corpus, vocabSize: 280, specialTokens: [endOfText],
                                              roles: SpecialTokenRoles(bos: endOfText, eos: endOfText))
        let (dir, basePath, _) = try savedBase("nochat", tokenizer: noChatML)
        defer { try? FileManager.default.removeItem(at: dir) }
        let (engine, port, server) = try serve(basePath)
        defer { server.cancel(); engine.shutdown() }
        let refused = try await chat(port, #"[{"role": "user", "content": "The cat"}]"#)
        XCTAssertEqual(refused.status, 400, refused.body)
        XCTAssertTrue(refused.body.contains("<|im_end|>") && refused.body.contains("completions"), refused.body)
    }

    /// A base whose chat template has a default system message (SmolLM2's kind), saved and served:
    /// a chat is prompted as the template writes it, that message included, as HF's apply_chat_template does;
    /// a conversation the template refuses is a 400 with the template's message. Its tokenizer puts the
    /// BOS in front of a text (Llama 3's kind): a completion's prompt gets it, a chat's does not (the
    /// template writes what the model wants).
    func testChatIsPromptedThroughTheBasesTemplate() async throws {
        let tok = try trainBaseTokenizer(Self.corpus, vocabSize: 300)
        tok.addsBOS = true
        tok.chatTemplate = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
            + "{{ '<|im_start|>system\nBe brief.<|im_end|>\n' }}{% endif %}{% if message['role'] == 'system' and not loop.first %}"
            + "{{ raise_exception('the system message must come first') }}{% endif %}"
            + "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}"
            + "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
        let (dir, basePath, _) = try savedBase("template", tokenizer: tok, maxPositions: 128)
        defer { try? FileManager.default.removeItem(at: dir) }
        let (engine, port, server) = try serve(basePath)
        defer { server.cancel(); engine.shutdown() }
        XCTAssertEqual(try engine.tokenizer.compiledChatTemplate?.source, tok.chatTemplate, "the template came through the checkpoint")
        let r = try await chat(port, #"[{"role": "user", "content": "The cat"}]"#)
        XCTAssertEqual(r.status, 200, r.body)
        let usage = (try JSONSerialization.jsonObject(with: Data(r.body.utf8)) as? [String: Any])?["usage"] as? [String: Any]
        let prompt = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nThe cat<|im_end|>\n<|im_start|>assistant\n"
        XCTAssertEqual(usage?["prompt_tokens"] as? Int, tok.encode(prompt).count, r.body)
        XCTAssertTrue(engine.tokenizer.addsBOS, "addsBOS came through the checkpoint's tokenizer.json")
        var c = URLRequest(url: URL(string: "http://127.0.0.1:\(port)/v1/completions")!)
        (c.httpMethod, c.httpBody) = ("POST", Data(#"{"prompt": "The cat", "max_tokens": 1}"#.utf8))
        c.setValue("application/json", forHTTPHeaderField: "Content-Type")
        let completion = try await URLSession.shared.data(for: c)
        let completionUsage = (try JSONSerialization.jsonObject(with: completion.0) as? [String: Any])?["usage"] as? [String: Any]
        XCTAssertEqual(completionUsage?["prompt_tokens"] as? Int, tok.encode("The cat").count + 1, String(decoding: completion.0, as: UTF8.self))
        let refused = try await chat(port, #"[{"role": "user", "content": "The cat"}, {"role": "system", "content": "S"}]"#)
        XCTAssertEqual(refused.status, 400, refused.body)
        XCTAssertTrue(refused.body.contains("the system message must come first"), refused.body)
    }

    /// A chat with tools, earlier calls (OpenAI's form: `arguments` a JSON string) and tool results is
    /// prompted as transformers renders it with the arguments as objects (as vLLM hands them to a
    /// template): the prompt of the Qwen2.5-kind fixture conversation has the fixture's tokens. A
    /// forced tool choice is refused.
    func testChatWithToolsIsPromptedAsTransformersRendersIt() async throws {
        let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../TokenizersTests/Fixtures/chat-templates.json")
        let cases = (try JSONSerialization.jsonObject(with: Data(contentsOf: fixture)) as! [String: Any])["cases"] as! [[String: Any]]
        let f = try XCTUnwrap(cases.first { $0["name"] as? String == "chatml-tools-parallel-calls" })
        let context = f["context"] as! [String: Any]
        XCTAssertEqual(context["add_generation_prompt"] as? Bool, true)
        let tok = try trainBaseTokenizer(Self.corpus, vocabSize: 300)
        tok.chatTemplate = f["template"] as? String
        let (dir, basePath, _) = try savedBase("tools", tokenizer: tok, maxPositions: 2048)
        defer { try? FileManager.default.removeItem(at: dir) }
        let (engine, port, server) = try serve(basePath)
        defer { server.cancel(); engine.shutdown() }
        // The messages as an OpenAI client sends them: each call's arguments a JSON string (keys in the fixture's order).
        let messages = try (context["messages"] as! [[String: Any]]).map { m -> [String: Any] in
            guard let calls = m["tool_calls"] as? [[String: Any]] else { return m }
            var m = m
            m["tool_calls"] = try calls.enumerated().map { k, call -> [String: Any] in
                var function = call["function"] as! [String: Any]
                function["arguments"] = String(decoding: try JSONSerialization.data(withJSONObject: function["arguments"]!, options: [.sortedKeys]), as: UTF8.self)
                return ["id": "call_\(k)", "type": "function", "function": function]
            }
            return m
        }
        func post(_ body: [String: Any]) async throws -> (status: Int, body: String) {
            var r = URLRequest(url: URL(string: "http://127.0.0.1:\(port)/v1/chat/completions")!)
            r.httpMethod = "POST"
            r.httpBody = try JSONSerialization.data(withJSONObject: body, options: [.sortedKeys])
            r.setValue("application/json", forHTTPHeaderField: "Content-Type")
            let (data, response) = try await URLSession.shared.data(for: r)
            return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
        }
        let r = try await post(["messages": messages, "tools": context["tools"]!, "max_tokens": 1])
        XCTAssertEqual(r.status, 200, r.body)
        let usage = (try JSONSerialization.jsonObject(with: Data(r.body.utf8)) as? [String: Any])?["usage"] as? [String: Any]
        XCTAssertEqual(usage?["prompt_tokens"] as? Int, tok.encode(f["output"] as! String).count, r.body)
        for (choice, status) in [("required", 400), ("none", 200), ("auto", 200)] as [(String, Int)] {
            let c = try await post(["messages": messages, "tools": context["tools"]!, "tool_choice": choice, "max_tokens": 1])
            XCTAssertEqual(c.status, status, "\(choice): \(c.body)")
        }
        for (kwargs, status, needle) in [(["enable_thinking": false] as Any, 200, ""), (["messages": 1], 400, "may not set 'messages'"), (5, 400, "must be an object")] {
            let k = try await post(["messages": messages, "tools": context["tools"]!, "chat_template_kwargs": kwargs, "max_tokens": 1])
            XCTAssertTrue(k.status == status && (needle.isEmpty || k.body.contains(needle)), "\(kwargs): \(k.body)")
        }
        let badTool = try await post(["messages": messages, "tools": [["type": "function"]], "max_tokens": 1])
        XCTAssertEqual(badTool.status, 400, badTool.body)
        XCTAssertTrue(badTool.body.contains("tool 1 must be"), badTool.body)
    }

    /// The calls a reply makes, read back as vLLM's parsers read them (Hermes/Qwen blocks, with the
    /// text before them; Llama's bare object with "arguments" or "parameters" naming one of the
    /// request's tools, after `<|python_tag|>` or not), into OpenAI's `tool_calls` (arguments as JSON
    /// text, finish reason "tool_calls"), whole or as one stream delta; a reply that calls nothing,
    /// a plain JSON answer, or a call that cannot be read, stays text.
    func testToolCallsAreReadFromReplies() throws {
        let tools: ToolSchemas = ["get_weather": .null, "get_time": .null, "f": .null]
        let hermes = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"location\": \"Zürich\", \"unit\": \"celsius\"}}\n</tool_call>\n"
            + "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"tz\": \"Europe/Zurich\"}}\n</tool_call>\nDone."
        let h = try XCTUnwrap(parseToolCalls(hermes, tools: tools))
        XCTAssertEqual(h.content, "Let me check.", "the text before the first call, as vLLM's Hermes parser returns it")
        XCTAssertEqual(h.calls, [ToolCall(name: "get_weather", arguments: #"{"location": "Zürich", "unit": "celsius"}"#),
                                 ToolCall(name: "get_time", arguments: #"{"tz": "Europe/Zurich"}"#)])
        for text in [#"{"name": "get_weather", "parameters": {"location": "Paris"}}"#, #" <|python_tag|>{"name": "get_weather", "arguments": {"location": "Paris"}} "#] {
            let l = try XCTUnwrap(parseToolCalls(text, tools: tools), text)
            XCTAssertEqual(l.calls, [ToolCall(name: "get_weather", arguments: #"{"location": "Paris"}"#)])
            XCTAssertNil(l.content)
        }
        XCTAssertEqual(parseToolCalls(#"<tool_call>{"name": "f", "arguments": "{\"a\": 1}"}</tool_call>"#, tools: tools)?.calls,
                       [ToolCall(name: "f", arguments: #"{"a": 1}"#)], "arguments given as a string stay that string")
        XCTAssertEqual(parseToolCalls(#"<tool_call>{"name": "f"}</tool_call>"#, tools: tools)?.calls, [ToolCall(name: "f", arguments: "{}")])
        let mistral = try XCTUnwrap(parseToolCalls(#"Checking. [TOOL_CALLS] [{"name": "get_weather", "arguments": {"location": "Paris"}}, {"name": "get_time", "arguments": {"tz": "CET"}}]"#,
                                                   tools: tools))
        XCTAssertEqual(mistral.content, "Checking.")
        XCTAssertEqual(mistral.calls, [ToolCall(name: "get_weather", arguments: #"{"location": "Paris"}"#), ToolCall(name: "get_time", arguments: #"{"tz": "CET"}"#)])
        for text in ["It is sunny.", #"{"answer": 42}"#, #"{"name": "Alice", "age": 3}"#, #"{"name": "Alice", "parameters": {}}"#,
                     #"[TOOL_CALLS] [{"name": "get_weather", "argu"#, "[TOOL_CALLS] []",
                     #"{"name": "f"}"#, "<tool_call>\n{\"name\": \"get_weather\", \"argu", "", "{not json}"] {
            XCTAssertNil(parseToolCalls(text, tools: tools), text)
        }

        let r = chatReply(hermes, finishReason: "stop", tools: tools)
        XCTAssertEqual(r.finishReason, "tool_calls")
        XCTAssertEqual(r.message["content"] as? String, "Let me check.")
        let calls = try XCTUnwrap(r.message["tool_calls"] as? [[String: Any]])
        XCTAssertEqual(calls.count, 2)
        XCTAssertTrue((calls[0]["id"] as? String)?.hasPrefix("call_") == true && calls[0]["type"] as? String == "function", "\(calls[0])")
        XCTAssertNotEqual(calls[0]["id"] as? String, calls[1]["id"] as? String)
        XCTAssertEqual((calls[1]["function"] as? [String: Any])?["name"] as? String, "get_time")
        XCTAssertEqual((calls[1]["function"] as? [String: Any])?["arguments"] as? String, #"{"tz": "Europe/Zurich"}"#)
        let off = chatReply(hermes, finishReason: "stop", tools: nil)
        XCTAssertEqual(off.message["content"] as? String, hermes)
        XCTAssertEqual(off.finishReason, "stop")
        XCTAssertNil(off.message["tool_calls"])
        let onlyCall = chatReply(#"{"name": "f", "parameters": {}}"#, finishReason: "stop", tools: tools)
        XCTAssertTrue(onlyCall.message["content"] is NSNull, "no text: content null, as OpenAI sends it")

        let d = chatReplyDelta(hermes, finishReason: "stop", tools: tools)
        XCTAssertEqual(d.finishReason, "tool_calls")
        XCTAssertEqual((d.delta["tool_calls"] as? [[String: Any]])?.map { $0["index"] as? Int }, [0, 1])
        XCTAssertEqual(d.delta["content"] as? String, "Let me check.")
        XCTAssertNil(d.delta["role"])
        let text = chatReplyDelta("It is sunny.", finishReason: "length", tools: tools)
        XCTAssertEqual(text.finishReason, "length")
        XCTAssertEqual(text.delta.keys.sorted(), ["content"])
    }

    /// The other forms models write calls in, read as vLLM's parsers read them: Mistral's v11
    /// `[TOOL_CALLS]NAME[ARGS]{…}` (with [CALL_ID] too), Granite's `<|tool_call|>[…]`, Phi-4-mini's
    /// `functools[…]`, DeepSeek V3's and V3.1's markers, Qwen3-Coder's `<function=…>` with values
    /// typed by the tool's schema, a JSON list inside `<tool_call>` (Granite 3.1), Llama's `;`
    /// between objects, xLAM's bare or fenced list, and the pythonic list (Llama 3.2 and 4). Forms
    /// without a marker must name the request's tools; anything unreadable stays text.
    func testOtherToolCallFormatsAreRead() throws {
        let schema = try JSONValue(parsing: #"{"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "metric": {"type": "boolean"}, "scale": {"type": "number"}, "hours": {"type": "array"}, "zip": {"type": "string"}, "note": {}}}"#)
        let tools: ToolSchemas = ["get_weather": schema, "get_time": .null]
        let weather = ToolCall(name: "get_weather", arguments: #"{"city": "Paris"}"#), time = ToolCall(name: "get_time", arguments: #"{"tz": "CET"}"#)
        let cases: [(String, String?, [ToolCall])] = [
            (#"Sure.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{"tz": "CET"}"#, "Sure.", [weather, time]),
            (#"[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"city": "Paris"}"#, nil, [weather]),
            (#"<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {"tz": "CET"}}]"#, nil, [weather, time]),
            (#"<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]"#, nil, [weather]),
            (#"Let me see. functools[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "parameters": {"tz": "CET"}}]"#, "Let me see.", [weather, time]),
            ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜>\n"
             + "<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{\"tz\": \"CET\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>", nil, [weather, time]),
            (#"On it.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>"#, "On it.", [weather]),
            (#"<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "get_time", "arguments": {"tz": "CET"}}"#, nil, [weather, time]),
            (#"[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {"tz": "CET"}}]"#, nil, [weather, time]),
            ("```json\n[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}]\n```", nil, [weather]),
            (#"[get_weather(city="Paris"), get_time(tz='CET')]"#, nil, [weather, time]),
            (#"<|python_start|>[get_weather(city="Paris",)]<|python_end|>"#, nil, [weather]),
            (#"[get_time(tz="CET", days=-3, hours=[1, 2.5], on=True, off=None, map={"a": 'b\n', 1: False})]"#, nil,
             [ToolCall(name: "get_time", arguments: #"{"tz": "CET", "days": -3, "hours": [1, 2.5], "on": true, "off": null, "map": {"a": "b\n", "1": false}}"#)]),
            ("I will check.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n"
             + "<parameter=metric>\nTrue\n</parameter>\n<parameter=scale>\n2.0\n</parameter>\n<parameter=hours>\n[8, 20]\n</parameter>\n"
             + "<parameter=zip>\n01000\n</parameter>\n<parameter=note>\nsee you\n</parameter>\n<parameter=extra>\n7\n</parameter>\n</function>\n</tool_call>\n"
             + "<tool_call>\n<function=get_time>\n<parameter=tz>\nnull\n</parameter>\n</function>\n</tool_call>", "I will check.",
             [ToolCall(name: "get_weather", arguments: #"{"city": "Paris", "days": 3, "metric": true, "scale": 2, "hours": [8, 20], "zip": "01000", "note": "see you", "extra": "7"}"#),
              ToolCall(name: "get_time", arguments: #"{"tz": null}"#)]),
            ("<function=get_time>\n<parameter=tz>\nCET\n</parameter>\n</function>", nil, [time]),
            ("Use functools.partial for that. <tool_call>{\"name\": \"get_time\", \"arguments\": {\"tz\": \"CET\"}}</tool_call>", "Use functools.partial for that.", [time]),
            // A marker's text inside the arguments does not hide a bare call.
            (#"{"name": "get_time", "arguments": {"tz": "import functools[0]; <tool_call> [TOOL_CALLS]"}}"#, nil,
             [ToolCall(name: "get_time", arguments: #"{"tz": "import functools[0]; <tool_call> [TOOL_CALLS]"}"#)]),
        ]
        for (text, content, calls) in cases {
            let r = try XCTUnwrap(parseToolCalls(text, tools: tools), text)
            XCTAssertEqual(r.content, content, text)
            XCTAssertEqual(r.calls, calls, text)
        }
        for text in ["[1, 2, 3]", "[get_weather]", #"[get_weather("Paris")]"#, #"[open(path="x")]"#, #"[{"name": "Alice", "arguments": {}}]"#,
                     "Use functools.partial here.", #"[TOOL_CALLS]get_weather[ARGS]{"city": "#, #"[TOOL_CALLS]get_weather{"city": "Paris"}"#,
                     "<|tool_call|>[]", #"<|tool_call|>[{"name": "get_weather"}] trailing"#, "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{bad}<｜tool▁call▁end｜>",
                     #"{"name": "get_weather", "arguments": {}}; {"answer": 1}"#, "<function=>", #"[get_weather(city="Paris") get_time()]"#,
                     #"[get_weather(city="Paris", city="Rome")]"#,
                     "Write <function=open_file> to open it.", "<function=get_weather>\n<parameter=city>\nParis\n</parameter>"] {
            XCTAssertNil(parseToolCalls(text, tools: tools), text)
        }
        // A request's tools carry their schemas.
        let body = try JSONValue(parsing: #"{"tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}, {"type": "function", "function": {"name": "get_time"}}]}"#)
        XCTAssertEqual(try requestTools(body).readCalls, ["get_weather": try JSONValue(parsing: #"{"type": "object"}"#), "get_time": .null])
    }

    /// A chat request's messages for the template, as vLLM hands them over: a call's arguments
    /// string is read as JSON (templates write `arguments | tojson`; missing, empty or null is {}),
    /// a null content is "", tool results keep their keys, "tool_calls": null or [] is no calls;
    /// bad calls and contents are refused.
    func testChatRequestMessagesKeepToolCallsAndResults() throws {
        let value = try JSONValue(parsing: #"[{"role": "developer", "content": "S", "tool_calls": null}, {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "tool_calls": []}, "#
            + #"{"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"z\": 1, \"a\": [2]}"}}, "#
            + #"{"type": "function", "function": {"name": "g", "arguments": ""}}, {"type": "function", "function": {"name": "h"}}]}, "#
            + #"{"role": "tool", "tool_call_id": "call_1", "content": "3"}, {"role": "user", "content": null}]"#)
        let m = try chatRequestMessages(value)
        XCTAssertEqual(m.map(\.role), ["system", "user", "assistant", "tool", "user"])
        XCTAssertEqual(m[1].content, "ab")
        XCTAssertEqual(m[2].content, "")
        XCTAssertNil(m[2].fields["content"], "the template gets \"\", as vLLM gives it")
        XCTAssertEqual(m[2].fields["tool_calls"]?.text, #"[{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": {"z": 1, "a": [2]}}}, "#
                       + #"{"type": "function", "function": {"name": "g", "arguments": {}}}, {"type": "function", "function": {"name": "h", "arguments": {}}}]"#)
        XCTAssertEqual(m[2].toolCallNames, ["f", "g", "h"])
        XCTAssertEqual(m[3].fields["tool_call_id"], .string("call_1"))
        XCTAssertEqual(m[0].toolCallNames + m[1].toolCallNames, [])
        XCTAssertNil(m[0].fields["tool_calls"], "null: no key, as vLLM hands it (Llama's templates test for the key)")
        for bad in [#"[{"role": "user", "content": 5}]"#, #"[{"role": "user", "content": "a", "tool_calls": [{"type": "function", "function": {"name": "f"}}]}]"#,
                    #"[{"role": "assistant", "content": null, "tool_calls": [{"type": "function"}]}]"#, "[]", "{}"] {
            XCTAssertThrowsError(try chatRequestMessages(try JSONValue(parsing: bad)), bad) { XCTAssertEqual(($0 as? APIError)?.param, "messages", "\($0)") }
        }
    }

    /// Each adapter's chat requests are written with the template it was trained with (recorded in its
    /// file), the base's with the base's; an adapter that records none, or the base's own, uses the
    /// base's; `--chat-template` (chatTemplatePath) writes every model's.
    func testAnAdaptersChatUsesTheTemplateItWasTrainedWith() async throws {
        let tok = try trainBaseTokenizer(Self.corpus, vocabSize: 300)
        tok.chatTemplate = "{% for m in messages %}{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{% endfor %}"
            + "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
        let trained = "{% for m in messages %}{{ m.role + ': ' + m.content + '<|im_end|>' }}{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
        let (dir, basePath, _) = try savedBase("recorded", tokenizer: tok, maxPositions: 128)
        defer { try? FileManager.default.removeItem(at: dir) }
        let loaded = try loadModel(basePath)
        let lora = try LoRA(config: LoRAConfig(r: 2, targetModules: .names(["q_proj"])), seed: 1)
        _ = try lora.attach(to: loaded.model)
        let paths = ["own", "none", "same"].map { dir.appendingPathComponent("\($0).h5").path }
        try AdapterCheckpoint.save(lora, base: loaded.model, chatTemplate: trained, to: paths[0])
        try AdapterCheckpoint.save(lora, base: loaded.model, to: paths[1])
        try AdapterCheckpoint.save(lora, base: loaded.model, chatTemplate: tok.chatTemplate, to: paths[2])
        let (engine, port, server) = try serve(basePath)
        defer { server.cancel(); engine.shutdown() }
        for (name, path) in zip(["own", "none", "same"], paths) { try engine.loadAdapter(name: name, path: path) }
        XCTAssertEqual(engine.tokenizer(for: "own").chatTemplate, trained)
        for name in [engine.baseName, "none", "same"] { XCTAssertTrue(engine.tokenizer(for: name) === engine.tokenizer, name) }
        func promptTokens(_ model: String) async throws -> Int? {
            var r = URLRequest(url: URL(string: "http://127.0.0.1:\(port)/v1/chat/completions")!)
            r.httpMethod = "POST"
            r.httpBody = try JSONSerialization.data(withJSONObject: ["model": model, "max_tokens": 1, "messages": [["role": "user", "content": "The cat"]]])
            r.setValue("application/json", forHTTPHeaderField: "Content-Type")
            let (data, _) = try await URLSession.shared.data(for: r)
            return ((try JSONSerialization.jsonObject(with: data) as? [String: Any])?["usage"] as? [String: Any])?["prompt_tokens"] as? Int
        }
        let chatML = tok.encode("<|im_start|>user\nThe cat<|im_end|>\n<|im_start|>assistant\n").count
        let own = tok.encode("user: The cat<|im_end|>assistant: ").count
        XCTAssertNotEqual(chatML, own)
        let counted = (try await promptTokens(engine.baseName), try await promptTokens("own"), try await promptTokens("none"))
        XCTAssertEqual(counted.0, chatML)
        XCTAssertEqual(counted.1, own, "the adapter's requests through the template it was trained with")
        XCTAssertEqual(counted.2, chatML)
        // A given template writes every model's chat.
        let given = dir.appendingPathComponent("given.jinja").path
        try "{{ messages[0].content }}".write(toFile: given, atomically: true, encoding: .utf8)
        let overridden = try ServingEngine(modelPath: basePath, chatTemplatePath: given)
        defer { overridden.shutdown() }
        try overridden.loadAdapter(name: "own", path: paths[0])
        XCTAssertEqual(overridden.tokenizer(for: "own").chatTemplate, "{{ messages[0].content }}")
    }

    /// With an adapter folder, `load_lora_adapter` loads from inside it only: a path outside, a `..`
    /// out of it, and a symlink inside that points outside get 403; a relative path is taken inside.
    func testAdaptersLoadOnlyFromTheAdapterFolder() async throws {
        let (dir, basePath, _) = try savedBase("adapterdir")
        defer { try? FileManager.default.removeItem(at: dir) }
        let folder = dir.appendingPathComponent("adapters")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let loaded = try loadModel(basePath)
        let lora = try LoRA(config: LoRAConfig(r: 2, targetModules: .names(["q_proj"])), seed: 1)
        _ = try lora.attach(to: loaded.model)
        for name in ["inside.h5", "../outside.h5"] {
            try AdapterCheckpoint.save(lora, base: loaded.model, to: folder.appendingPathComponent(name).standardizedFileURL.path)
        }
        try FileManager.default.createSymbolicLink(atPath: folder.appendingPathComponent("link.h5").path,
                                                   withDestinationPath: dir.appendingPathComponent("outside.h5").path)
        // A sibling whose name starts with the folder's, and a PEFT folder inside whose weights link outside.
        let evil = dir.appendingPathComponent("adapters-evil")
        try FileManager.default.createDirectory(at: evil, withIntermediateDirectories: true)
        try AdapterCheckpoint.save(lora, base: loaded.model, to: evil.appendingPathComponent("x.h5").path)
        let peft = folder.appendingPathComponent("peft")
        try exportPEFTFolder(lora, base: loaded.model, baseName: nil, to: peft)
        let weights = peft.appendingPathComponent("adapter_model.safetensors")
        try FileManager.default.moveItem(at: weights, to: dir.appendingPathComponent("outside.safetensors"))
        try FileManager.default.createSymbolicLink(atPath: weights.path, withDestinationPath: dir.appendingPathComponent("outside.safetensors").path)
        var options = ServerOptions()
        options.adapterDirectory = folder.path
        let (engine, port, server) = try serve(basePath, options: options)
        defer { server.cancel(); engine.shutdown() }
        func load(_ name: String, _ path: String) async throws -> (status: Int, body: String) {
            var r = URLRequest(url: URL(string: "http://127.0.0.1:\(port)/v1/load_lora_adapter")!)
            r.httpMethod = "POST"
            r.httpBody = try JSONSerialization.data(withJSONObject: ["lora_name": name, "lora_path": path])
            r.setValue("application/json", forHTTPHeaderField: "Content-Type")
            let (data, response) = try await URLSession.shared.data(for: r)
            return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
        }
        for path in [dir.appendingPathComponent("outside.h5").path, "../outside.h5", folder.path + "/../outside.h5", "link.h5", basePath,
                     evil.appendingPathComponent("x.h5").path, "../adapters-evil/x.h5", "peft"] {
            let r = try await load("x", path)
            XCTAssertEqual(r.status, 403, "\(path): \(r.body)")
            XCTAssertTrue(r.body.contains("outside the adapter folder"), r.body)
        }
        let nul = try await load("x", "inside.h5\u{0}x")
        XCTAssertEqual(nul.status, 400, nul.body)
        XCTAssertEqual(engine.modelNames, [engine.baseName], "nothing was loaded")
        let relative = try await load("a", "inside.h5")
        XCTAssertEqual(relative.status, 200, relative.body)
        let absolute = try await load("b", folder.appendingPathComponent("inside.h5").path)
        XCTAssertEqual(absolute.status, 200, absolute.body)
        XCTAssertEqual(Set(engine.modelNames), [engine.baseName, "a", "b"])
    }

    /// `n` choices per prompt: choice k is prompt k / n's sample k % n; with a seed, sample j is the
    /// one that seed + j gives alone; greedy samples are equal; usage counts each prompt once; a
    /// stream carries every choice's chunks by index; n outside 1...64 is refused.
    func testSeveralChoicesPerPrompt() async throws {
        let (dir, basePath, _) = try savedBase("n-choices", maxPositions: 64)
        defer { try? FileManager.default.removeItem(at: dir) }
        let (engine, port, server) = try serve(basePath)
        defer { server.cancel(); engine.shutdown() }
        func post(_ body: [String: Any]) async throws -> (status: Int, json: [String: Any], text: String) {
            try await postJSON(port, "/v1/completions", body)
        }
        func texts(_ r: (status: Int, json: [String: Any], text: String)) -> [String] {
            (r.json["choices"] as? [[String: Any]] ?? []).map { $0["text"] as? String ?? "?" }
        }
        func usage(_ r: (status: Int, json: [String: Any], text: String)) -> [Int] {
            let u = r.json["usage"] as? [String: Any] ?? [:]
            return ["prompt_tokens", "completion_tokens", "total_tokens"].map { u[$0] as? Int ?? -1 }
        }
        // Greedy, two prompts, n 2: four choices in prompt order, each prompt's two equal to its one alone.
        let prompts = ["The cat", "The fish number"]
        let greedy = try await post(["prompt": prompts, "n": 2, "max_tokens": 3, "temperature": 0])
        XCTAssertEqual(greedy.status, 200, greedy.text)
        XCTAssertEqual((greedy.json["choices"] as? [[String: Any]])?.map { $0["index"] as? Int ?? -1 }, [0, 1, 2, 3], greedy.text)
        var alonePromptTokens = 0
        for (i, prompt) in prompts.enumerated() {
            let alone = try await post(["prompt": prompt, "max_tokens": 3, "temperature": 0])
            XCTAssertEqual(texts(greedy)[2 * i], texts(alone).first, greedy.text)
            XCTAssertEqual(texts(greedy)[2 * i + 1], texts(alone).first, greedy.text)
            alonePromptTokens += usage(alone)[0]
        }
        let completionTokens = (greedy.json["choices"] as? [[String: Any]] ?? []).count * 3
        XCTAssertEqual(usage(greedy), [alonePromptTokens, completionTokens, alonePromptTokens + completionTokens],
                       "each prompt's tokens once, every choice's new tokens: \(greedy.text)")
        // Sampled with a seed: sample j is what seed + j gives alone, so the samples differ.
        let sampled = try await post(["prompt": "The cat", "n": 3, "best_of": 3, "max_tokens": 6, "temperature": 1.5, "seed": 7])
        XCTAssertEqual(sampled.status, 200, sampled.text)
        for j in 0..<3 {
            let alone = try await post(["prompt": "The cat", "max_tokens": 6, "temperature": 1.5, "seed": 7 + j])
            XCTAssertEqual(texts(sampled)[j], texts(alone).first, "sample \(j): \(sampled.text)")
        }
        XCTAssertGreaterThan(Set(texts(sampled)).count, 1, sampled.text)
        // Streamed: every choice's chunks by index add up to the JSON answer's; the usage chunk counts the prompt once.
        var streamed = URLRequest(url: URL(string: "http://127.0.0.1:\(port)/v1/completions")!)
        streamed.httpMethod = "POST"
        streamed.httpBody = try JSONSerialization.data(withJSONObject: ["prompt": "The cat", "n": 3, "max_tokens": 6, "temperature": 1.5, "seed": 7, "stream": true])
        streamed.setValue("application/json", forHTTPHeaderField: "Content-Type")
        var byIndex: [Int: String] = [:], lastUsage: [String: Any]?
        for line in String(decoding: try await URLSession.shared.data(for: streamed).0, as: UTF8.self).split(separator: "\n") where line.hasPrefix("data: {") {
            let o = try JSONSerialization.jsonObject(with: Data(line.dropFirst(6).utf8)) as? [String: Any]
            let cs = o?["choices"] as? [[String: Any]] ?? []
            if cs.isEmpty { lastUsage = o?["usage"] as? [String: Any] }
            for c in cs { byIndex[c["index"] as? Int ?? -1, default: ""] += c["text"] as? String ?? "" }
        }
        XCTAssertEqual((0..<3).map { byIndex[$0] ?? "?" }, texts(sampled))
        XCTAssertEqual(lastUsage?["prompt_tokens"] as? Int, usage(sampled)[0])
        XCTAssertEqual(lastUsage?["completion_tokens"] as? Int, usage(sampled)[1])
        // Echo with log-probabilities: the prompt's are computed once and given to each choice.
        let echoOne = try await post(["prompt": "The cat", "max_tokens": 2, "temperature": 0, "echo": true, "logprobs": 2])
        let echoTwo = try await post(["prompt": "The cat", "n": 2, "max_tokens": 2, "temperature": 0, "echo": true, "logprobs": 2])
        let one = (echoOne.json["choices"] as? [[String: Any]])?.first?["logprobs"] as? [String: Any]
        XCTAssertNotNil(one?["tokens"], echoOne.text)
        for c in echoTwo.json["choices"] as? [[String: Any]] ?? [] {
            let lp = c["logprobs"] as? [String: Any]
            XCTAssertEqual(lp?["tokens"] as? [String], one?["tokens"] as? [String], echoTwo.text)
            let values = (lp?["token_logprobs"] as? [Any])?.map { "\($0)" }  // the prompt's first is null
            XCTAssertEqual(values, (one?["token_logprobs"] as? [Any])?.map { "\($0)" }, echoTwo.text)
            XCTAssertGreaterThan(values?.count ?? 0, 2, echoTwo.text)
        }
        XCTAssertEqual((echoTwo.json["choices"] as? [[String: Any]])?.count, 2, echoTwo.text)
        for bad in [0, 65] {
            let r = try await post(["prompt": "The cat", "n": bad, "max_tokens": 1])
            XCTAssertEqual(r.status, 400, r.text)
            XCTAssertTrue(r.text.contains("n must be an integer in 1...64, got \(bad)\""), "as the client wrote it: \(r.text)")
        }
        let half = try await post(["prompt": "The cat", "n": 1.5, "max_tokens": 1])
        XCTAssertTrue(half.text.contains("n must be an integer in 1...64, got 1.5"), half.text)
    }

    /// A request field the server does not read (a misspelled "max_token") is named in a warning,
    /// once per field; OpenAI's fields that change nothing here ("user", "store") are not.
    func testUnreadRequestFieldsAreNamedOnce() async throws {
        let (dir, basePath, _) = try savedBase("unread-fields")
        defer { try? FileManager.default.removeItem(at: dir) }
        let warnings = Mutex<[String]>([])
        var options = ServerOptions()
        options.warn = { message in warnings.withLock { $0.append(message) } }
        let (engine, port, server) = try serve(basePath, options: options)
        defer { server.cancel(); engine.shutdown() }
        func post(_ route: String, _ body: [String: Any]) async throws -> Int {
            try await postJSON(port, route, body).status
        }
        // Every field the server reads, at a value that asks for nothing it refuses: no warning.
        let everyField: [String: Any] = [
            "model": engine.baseName, "prompt": "The cat", "max_tokens": 1, "max_completion_tokens": 1, "temperature": 0, "top_p": 1, "top_k": 0,
            "min_p": 0, "seed": 1, "stop": ["\n\n"], "stop_token_ids": [], "stream": false, "logprobs": NSNull(), "top_logprobs": 0, "echo": false,
            "presence_penalty": 0, "frequency_penalty": 0, "repetition_penalty": 1, "logit_bias": [String: Any](), "n": 1, "best_of": 1,
            "suffix": "", "tools": [Any](), "tool_choice": "none", "response_format": ["type": "text"], "min_tokens": 0, "ignore_eos": false,
            "chat_template_kwargs": [String: Any](), "stream_options": ["include_usage": true], "user": "u", "store": false,
            "metadata": [String: Any](), "service_tier": "auto", "parallel_tool_calls": true, "prompt_cache_key": "k", "safety_identifier": "s",
        ]
        XCTAssertEqual(Set(everyField.keys).union(["messages"]), readRequestFields, "the body above sends every field the server reads")
        let ok = try await post("/v1/completions", everyField)
        XCTAssertEqual(ok, 200)
        XCTAssertEqual(warnings.withLock { $0 }, [], "fields this server reads, and OpenAI's it needs not act on")
        for _ in 0..<2 {
            let status = try await post("/v1/completions", ["prompt": "The cat", "max_tokens": 1, "max_token": 1, "temprature": 0.5])
            XCTAssertEqual(status, 200, "an unread field is not an error (vLLM answers too)")
        }
        let chat = try await post("/v1/chat/completions", ["messages": [["role": "user", "content": "hi"]], "max_tokens": 1, "max_token": 1, "topp": 0.9])
        XCTAssertTrue([200, 400].contains(chat), "\(chat)")  // this base may have no chat template; the fields are read first
        XCTAssertEqual(warnings.withLock { $0 }, [
            "warning: /v1/completions: this server does not read the request fields \"max_token\", \"temprature\" (ignored; each such field is named once)",
            "warning: /v1/chat/completions: this server does not read the request field \"topp\" (ignored; each such field is named once)",
        ])
        // Names are JSON strings cut to 64 characters (a client cannot write lines of its own into the
        // log), and only the first `limit` are kept and told.
        let told = Mutex<[String]>([])
        let capped = UnreadFieldWarnings({ m in told.withLock { $0.append(m) } }, limit: 3)
        capped.note(["a\nwarning: forged", String(repeating: "x", count: 100)], route: "/r")
        capped.note(["b", "c", "d"], route: "/r")
        capped.note(["e"], route: "/r")
        XCTAssertEqual(told.withLock { $0 }, [
            "warning: /r: this server does not read the request fields \"a\\nwarning: forged\", \"" + String(repeating: "x", count: 64)
                + "…\" (ignored; each such field is named once)",
            "warning: /r: this server does not read the request field \"b\" (ignored; each such field is named once; 3 names told, later ones are not)",
        ])
    }

    /// The token-level API in OpenAI's and vLLM's forms: token-id prompts and several prompts (one
    /// choice each), `echo` with `logprobs` (the prompt's first token null, each token's text and
    /// offset, the chosen token among the alternatives), `max_tokens` 0, streamed log-probabilities
    /// that add up to the whole, a chat's `logprobs` with `top_logprobs` and bytes, and /tokenize,
    /// /detokenize and /tokenizer_info.
    func testLogprobsEchoTokenPromptsAndTheTokenizerRoutes() async throws {
        let tok = try trainBaseTokenizer(Self.corpus, vocabSize: 300)
        tok.addsBOS = true
        let (dir, basePath, _) = try savedBase("logprobs", tokenizer: tok, maxPositions: 128)
        defer { try? FileManager.default.removeItem(at: dir) }
        let (engine, port, server) = try serve(basePath)
        defer { server.cancel(); engine.shutdown() }
        func post(_ route: String, _ body: [String: Any]) async throws -> (status: Int, json: [String: Any], text: String) {
            try await postJSON(port, route, body)
        }

        // /tokenize as transformers' tokenizer(text) (the BOS in front) and without special tokens; /detokenize back.
        let tokenized = try await post("/tokenize", ["prompt": "The cat sees"])
        XCTAssertEqual(tokenized.json["tokens"] as? [Int], tok.encode("The cat sees", addBOS: true).map(Int.init), tokenized.text)
        XCTAssertEqual(tokenized.json["count"] as? Int, tok.encode("The cat sees").count + 1)
        XCTAssertEqual(tokenized.json["max_model_len"] as? Int, 128)
        let plain = try await post("/tokenize", ["prompt": "The cat sees", "add_special_tokens": false, "return_token_strs": true])
        let ids = try XCTUnwrap(plain.json["tokens"] as? [Int])
        XCTAssertEqual(ids, tok.encode("The cat sees").map(Int.init))
        XCTAssertEqual(plain.json["token_strs"] as? [String], ids.map { tok.tokenString(for: Int32($0))! })
        let back = try await post("/detokenize", ["tokens": ids])
        XCTAssertEqual(back.json["prompt"] as? String, "The cat sees", back.text)
        let chatIDs = try await post("/tokenize", ["messages": [["role": "user", "content": "The cat"]]])
        XCTAssertEqual(chatIDs.json["tokens"] as? [Int], encodeChat(try renderChat([ChatMessage(role: "user", content: "The cat")], tokenizer: tok,
                                                                                      addGenerationPrompt: true), tokenizer: tok).map(Int.init), chatIDs.text)
        let badIDs = try await post("/detokenize", ["tokens": [tok.vocabSize]])
        XCTAssertEqual(badIDs.status, 400, badIDs.text)
        var info = URLRequest(url: URL(string: "http://127.0.0.1:\(port)/tokenizer_info")!)
        info.httpMethod = "GET"
        let infoJSON = try JSONSerialization.jsonObject(with: try await URLSession.shared.data(for: info).0) as? [String: Any]
        XCTAssertEqual(infoJSON?["eos_token"] as? String, tok.eosTokenID.flatMap { tok.tokenString(for: $0) })
        XCTAssertEqual(infoJSON?["add_bos_token"] as? Bool, true)
        let unknown = try await URLSession.shared.data(for: URLRequest(url: URL(string: "http://127.0.0.1:\(port)/tokenizer_info?model=nope")!))
        XCTAssertEqual((unknown.1 as? HTTPURLResponse)?.statusCode, 404, String(decoding: unknown.0, as: UTF8.self))

        // Two token-id prompts, echoed with their log-probabilities and one new token each.
        let prompts = [tok.encode("The cat sees the fish", addBOS: true), tok.encode("The fish", addBOS: true)]
        let echo = try await post("/v1/completions", ["prompt": prompts.map { $0.map(Int.init) }, "max_tokens": 1, "logprobs": 1, "echo": true, "temperature": 0])
        XCTAssertEqual(echo.status, 200, echo.text)
        let choices = try XCTUnwrap(echo.json["choices"] as? [[String: Any]])
        XCTAssertEqual(choices.map { $0["index"] as? Int }, [0, 1])
        XCTAssertEqual((echo.json["usage"] as? [String: Any])?["prompt_tokens"] as? Int, prompts[0].count + prompts[1].count)
        for (k, choice) in choices.enumerated() {
            let lp = try XCTUnwrap(choice["logprobs"] as? [String: Any], echo.text)
            let tokens = try XCTUnwrap(lp["tokens"] as? [String]), values = try XCTUnwrap(lp["token_logprobs"] as? [Any])
            let tops = try XCTUnwrap(lp["top_logprobs"] as? [Any]), offsets = try XCTUnwrap(lp["text_offset"] as? [Int])
            XCTAssertEqual(tokens.count, prompts[k].count + 1)
            XCTAssertEqual(tokens.dropLast(), prompts[k].map { tokenText($0, tok) }[...])
            XCTAssertTrue(values[0] is NSNull && tops[0] is NSNull, "the first prompt token has no log-probability")
            XCTAssertEqual(choice["text"] as? String, tok.decode(prompts[k]) + tokens.last!, "echo: the prompt's text, then the new token's")
            XCTAssertEqual(offsets, tokens.indices.map { i in tokens[..<i].reduce(0) { $0 + $1.unicodeScalars.count } })
            // Each logprob is the engine's own (checked against the model in testLogprobsAreTheModelsLogSoftmax).
            var r = GenerationRequest(model: engine.baseName, prompt: prompts[k], maxTokens: 1)
            (r.logprobs, r.promptLogprobs) = (1, true)
            var s: GenerationSummary?
            for await e in try engine.submit(r) { if case .done(let x) = e { s = x } }
            let want = (s?.promptLogprobs ?? []).map { $0?.logprob } + (s?.logprobs ?? []).map { Optional($0.logprob) }
            XCTAssertEqual(values.count, want.count)
            for (v, w) in zip(values, want) {
                XCTAssertEqual(v is NSNull, w == nil)
                if let v = v as? Double, let w { XCTAssertEqual(v, Double(w), accuracy: 1e-4, "batched beside another prompt, as alone") }
            }
            for (t, top) in zip(tokens, tops).dropFirst() {
                let d = try XCTUnwrap(top as? [String: Double])
                XCTAssertNotNil(d[t], "the chosen token is among the alternatives")
                XCTAssertLessThanOrEqual(d.count, 2)
            }
        }
        let scoreOnly = try await post("/v1/completions", ["prompt": "The cat sees", "max_tokens": 0, "logprobs": 0, "echo": true])
        XCTAssertEqual(scoreOnly.status, 200, scoreOnly.text)
        let scored = (scoreOnly.json["choices"] as? [[String: Any]])?.first
        XCTAssertEqual(scored?["text"] as? String, "The cat sees")
        XCTAssertEqual(((scored?["logprobs"] as? [String: Any])?["tokens"] as? [String])?.count, tok.encode("The cat sees").count + 1)
        // A text prompt echoed with new tokens: each token's offset points at its text in the choice's
        // text (the BOS the tokenizer put in front shows no text: offset 0).
        let echoed = try await post("/v1/completions", ["prompt": "The cat sees", "max_tokens": 5, "logprobs": 1, "echo": true])
        let echoedChoice = try XCTUnwrap((echoed.json["choices"] as? [[String: Any]])?.first, echoed.text)
        let echoedText = Array((echoedChoice["text"] as? String ?? "").unicodeScalars)
        let echoedLP = try XCTUnwrap(echoedChoice["logprobs"] as? [String: Any])
        let echoedTokens = try XCTUnwrap(echoedLP["tokens"] as? [String]), echoedOffsets = try XCTUnwrap(echoedLP["text_offset"] as? [Int])
        XCTAssertEqual(echoedOffsets.first, 0)
        for (i, (t, o)) in zip(echoedTokens, echoedOffsets).enumerated().dropFirst() where !t.hasPrefix("bytes:") && o + t.unicodeScalars.count <= echoedText.count {
            XCTAssertEqual(String(String.UnicodeScalarView(echoedText[o ..< o + t.unicodeScalars.count])), t, "token \(i) at offset \(o)")
        }

        // Streamed: the chunks' tokens and log-probabilities add up to the JSON answer's.
        let body: [String: Any] = ["prompt": "The cat", "max_tokens": 8, "logprobs": 2, "temperature": 0]
        let whole = try await post("/v1/completions", body)
        let wholeLP = ((whole.json["choices"] as? [[String: Any]])?.first?["logprobs"] as? [String: Any])
        var streamed = URLRequest(url: URL(string: "http://127.0.0.1:\(port)/v1/completions")!)
        streamed.httpMethod = "POST"
        streamed.httpBody = try JSONSerialization.data(withJSONObject: body.merging(["stream": true]) { $1 })
        streamed.setValue("application/json", forHTTPHeaderField: "Content-Type")
        let events = String(decoding: try await URLSession.shared.data(for: streamed).0, as: UTF8.self)
        var tokens: [String] = [], values: [Double] = [], offsets: [Int] = [], text = ""
        for line in events.split(separator: "\n") where line.hasPrefix("data: {") {
            let o = try JSONSerialization.jsonObject(with: Data(line.dropFirst(6).utf8)) as? [String: Any]
            guard let c = (o?["choices"] as? [[String: Any]])?.first else { continue }
            text += c["text"] as? String ?? ""
            if let lp = c["logprobs"] as? [String: Any] {
                tokens += lp["tokens"] as? [String] ?? []
                values += lp["token_logprobs"] as? [Double] ?? []
                offsets += lp["text_offset"] as? [Int] ?? []
            }
        }
        XCTAssertEqual(text, (whole.json["choices"] as? [[String: Any]])?.first?["text"] as? String)
        XCTAssertEqual(tokens, wholeLP?["tokens"] as? [String])
        XCTAssertEqual(values, wholeLP?["token_logprobs"] as? [Double])
        XCTAssertEqual(offsets, wholeLP?["text_offset"] as? [Int])

        // Several prompts streamed with echo: each choice's chunks (by index) add up to its JSON answer,
        // and a last chunk without choices carries the usage.
        let two: [String: Any] = ["prompt": ["The cat", "The fish number"], "max_tokens": 4, "logprobs": 1, "echo": true, "temperature": 0]
        let twoWhole = try await post("/v1/completions", two)
        var twoStreamed = URLRequest(url: URL(string: "http://127.0.0.1:\(port)/v1/completions")!)
        twoStreamed.httpMethod = "POST"
        twoStreamed.httpBody = try JSONSerialization.data(withJSONObject: two.merging(["stream": true]) { $1 })
        twoStreamed.setValue("application/json", forHTTPHeaderField: "Content-Type")
        var byIndex: [Int: (text: String, tokens: [String], offsets: [Int])] = [:], lastUsage: [String: Any]?
        for line in String(decoding: try await URLSession.shared.data(for: twoStreamed).0, as: UTF8.self).split(separator: "\n") where line.hasPrefix("data: {") {
            let o = try JSONSerialization.jsonObject(with: Data(line.dropFirst(6).utf8)) as? [String: Any]
            let cs = o?["choices"] as? [[String: Any]] ?? []
            if cs.isEmpty { lastUsage = o?["usage"] as? [String: Any] }
            for c in cs {
                let k = c["index"] as? Int ?? -1
                var entry = byIndex[k] ?? ("", [], [])
                entry.text += c["text"] as? String ?? ""
                entry.tokens += (c["logprobs"] as? [String: Any])?["tokens"] as? [String] ?? []
                entry.offsets += (c["logprobs"] as? [String: Any])?["text_offset"] as? [Int] ?? []
                byIndex[k] = entry
            }
        }
        for (k, c) in (twoWhole.json["choices"] as? [[String: Any]] ?? []).enumerated() {
            XCTAssertEqual(byIndex[k]?.text, c["text"] as? String, "choice \(k)")
            XCTAssertEqual(byIndex[k]?.tokens, (c["logprobs"] as? [String: Any])?["tokens"] as? [String], "choice \(k)")
            XCTAssertEqual(byIndex[k]?.offsets, (c["logprobs"] as? [String: Any])?["text_offset"] as? [Int], "choice \(k)")
        }
        XCTAssertEqual(byIndex.count, 2)
        XCTAssertEqual(lastUsage?["prompt_tokens"] as? Int, (twoWhole.json["usage"] as? [String: Any])?["prompt_tokens"] as? Int)

        // A chat: logprobs true with top_logprobs, each token with its bytes.
        let chat = try await post("/v1/chat/completions", ["messages": [["role": "user", "content": "The cat"]], "max_tokens": 4,
                                                          "logprobs": true, "top_logprobs": 2])
        XCTAssertEqual(chat.status, 200, chat.text)
        let content = try XCTUnwrap(((chat.json["choices"] as? [[String: Any]])?.first?["logprobs"] as? [String: Any])?["content"] as? [[String: Any]], chat.text)
        let completionTokens = (chat.json["usage"] as? [String: Any])?["completion_tokens"] as? Int ?? -1
        XCTAssertEqual(content.count, completionTokens, "one per token counted: the new tokens, and any that ended the reply")
        for entry in content {
            let token = try XCTUnwrap(entry["token"] as? String)
            XCTAssertEqual((entry["bytes"] as? [Int]).map { String(decoding: $0.map(UInt8.init), as: UTF8.self) }, token)
            XCTAssertEqual((entry["top_logprobs"] as? [[String: Any]])?.count, 2)
            XCTAssertLessThanOrEqual(entry["logprob"] as? Double ?? 1, 0)
        }
        // A request's seed is every prompt's (as vLLM): equal prompts sample equal texts.
        let seeded = try await post("/v1/completions", ["prompt": ["The cat", "The cat"], "max_tokens": 8, "temperature": 1.5, "seed": 5])
        let seededTexts = (seeded.json["choices"] as? [[String: Any]])?.map { $0["text"] as? String }
        XCTAssertEqual(seededTexts?.count, 2)
        XCTAssertEqual(seededTexts?.first, seededTexts?.last, seeded.text)
        let outside = try await post("/v1/completions", ["prompt": [tok.vocabSize + 5], "max_tokens": 1])
        XCTAssertEqual(outside.status, 400, outside.text)
        XCTAssertTrue(outside.text.contains("outside the model's vocabulary"), outside.text)
        let mixed = try await post("/v1/completions", ["prompt": ["The cat", 5], "max_tokens": 1])
        XCTAssertEqual(mixed.status, 400, mixed.text)
    }

    static let corpus = (0..<50).map { "The cat sees the fish number \($0 % 9)." }

    /// A new temporary folder (the caller removes it) with a LLaMA base saved in it as base.h5: its
    /// tokenizer `tokenizer`, or `pretrain`'s trained on a short corpus.
    func savedBase(_ name: String, tokenizer given: BPETokenizer? = nil, hidden: Int = 16, layers: Int = 1, heads: Int = 2, kvHeads: Int = 1,
                   intermediate: Int = 32, maxPositions: Int = 64) throws -> (dir: URL, base: String, tokenizer: BPETokenizer) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("swiftpeft-\(name)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let tokenizer = try given ?? trainBaseTokenizer(Self.corpus, vocabSize: 300)
        let config = ModelConfig.llama(vocabSize: tokenizer.vocabSize, hiddenSize: hidden, numLayers: layers, numHeads: heads, numKVHeads: kvHeads,
                                       intermediateSize: intermediate, tieWordEmbeddings: true, maxPositions: maxPositions)
        let base = dir.appendingPathComponent("base.h5").path
        try ModelCheckpoint.save(makeModel(config, seed: 3), tokenizer: tokenizer, to: base)
        return (dir, base, tokenizer)
    }

    /// `swiftpeft serve` of `basePath` on a free port, in this process.
    func serve(_ basePath: String, options given: ServerOptions = ServerOptions()) throws -> (ServingEngine, port: Int, Task<Void, Error>) {
        let engine = try ServingEngine(modelPath: basePath)
        nonisolated(unsafe) var port = 0
        var options = given
        options.port = 0
        let running = DispatchSemaphore(value: 0)
        let app = makeServer(engine, options: options) { port = $0; running.signal() }
        let server = Task { try await app.runService() }
        XCTAssertEqual(running.wait(timeout: .now() + 30), .success, "the server did not start")
        return (engine, port, server)
    }

    /// POSTs `body` as JSON to the server on `port`: the status, the answer as a JSON object (empty
    /// when it is not one) and as text.
    func postJSON(_ port: Int, _ route: String, _ body: [String: Any]) async throws -> (status: Int, json: [String: Any], text: String) {
        var r = URLRequest(url: URL(string: "http://127.0.0.1:\(port)\(route)")!)
        r.httpMethod = "POST"
        r.httpBody = try JSONSerialization.data(withJSONObject: body)
        r.setValue("application/json", forHTTPHeaderField: "Content-Type")
        let (data, response) = try await URLSession.shared.data(for: r)
        return ((response as? HTTPURLResponse)?.statusCode ?? 0, (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] ?? [:],
                String(decoding: data, as: UTF8.self))
    }

    /// A chat request of `messages` (JSON) for one token: its status and body.
    func chat(_ port: Int, _ messages: String) async throws -> (status: Int, body: String) {
        var r = URLRequest(url: URL(string: "http://127.0.0.1:\(port)/v1/chat/completions")!)
        r.httpMethod = "POST"
        r.httpBody = Data(("{\"max_tokens\": 1, \"messages\": " + messages + "}").utf8)
        r.setValue("application/json", forHTTPHeaderField: "Content-Type")
        let (data, response) = try await URLSession.shared.data(for: r)
        return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
    }
}
