// The serving engine: one base model with several adapters resident at once, and a worker thread
// that decodes waiting requests together in one batch. LoRA, DoRA and IA3 adapters stay attached and
// act on their own rows of the batch (RowScopedPEFTMethod), so requests for different adapters share
// every base GEMM, as vLLM and S-LoRA do; prompt, P-Tuning, prefix and bottleneck adapters change
// the whole model (their prefix slots or block hooks) and are batched with requests for the same
// adapter only, attached for their batch. Rows are left-padded and masked; RoPE attention depends
// only on relative positions, so padding leaves the result as it was. Where it would not, a request
// waits for a batch of its own prompt length: learned absolute positions (GPT-2), and adapters that
// put virtual tokens before the prompt (padding would sit between them). No request joins a batch
// whose longest prompt would leave it less room for new tokens than it asked for.

import Foundation
import TensorCore
import Models
import Tokenizers
import PEFT
import Formats
import Training

/// One completion as the engine decodes it.
public struct GenerationRequest: Sendable {
    /// The base's name or an adapter's.
    public var model: String
    public var prompt: [Int32]
    public var maxTokens: Int
    /// 0: greedy.
    public var temperature: Float = 0
    public var topP: Float = 1
    public var seed: UInt64 = 0
    /// The text is cut before the first of these (EOS, `<|im_end|>` and the chat template's turn end
    /// always end it: `textEndTokens`).
    public var stop: [String] = []
    /// More tokens that end the completion as EOS does, left out of the text.
    public var stopTokens: [Int32] = []
    /// Keep only the k most likely tokens (0: off; vLLM's `top_k`).
    public var topK = 0
    /// Drop tokens less likely than this times the most likely one (0: off; vLLM's `min_p`).
    public var minP: Float = 0
    /// Added to a token's logit before anything else (OpenAI's `logit_bias`: -100 bans, 100 forces).
    public var logitBias: [Int32: Float] = [:]
    /// Subtracted from the logit of a token the completion has used at least once (OpenAI's).
    public var presencePenalty: Float = 0
    /// Subtracted from a token's logit once per time the completion has used it (OpenAI's).
    public var frequencyPenalty: Float = 0
    /// A token of the prompt or the completion has its logit divided by this when positive and
    /// multiplied when negative (transformers' and vLLM's `repetition_penalty`; 1: off).
    public var repetitionPenalty: Float = 1
    /// nil: no log-probabilities. k: each new token's log-probability under the model's raw logits,
    /// with the k most likely tokens at its position (`TokenLogprob`).
    public var logprobs: Int?
    /// Also the prompt's tokens' log-probabilities (each but the first, given the ones before it;
    /// OpenAI's `echo` with `logprobs`), with `logprobs ?? 0` alternatives. (`maxTokens` 0 asks
    /// for no new token: the prompt's log-probabilities alone.)
    public var promptLogprobs = false

    public init(model: String, prompt: [Int32], maxTokens: Int) {
        (self.model, self.prompt, self.maxTokens) = (model, prompt, maxTokens)
    }
}

/// What a request receives: text as it is decoded, then a summary (or a failure). With
/// `promptLogprobs`, the prompt's log-probabilities come first; with `logprobs`, each piece of text
/// carries those of the tokens generated since the last piece (tokens whose text cannot be sent
/// yet wait for the next piece; the last piece, which may be empty, carries the rest).
public enum GenerationEvent: Sendable {
    case prompt(logprobs: [TokenLogprob?])
    case text(String, logprobs: [TokenLogprob])
    case done(GenerationSummary)
    case failed(String)
}

/// How a request ended and what it cost.
public struct GenerationSummary: Sendable {
    public var text: String
    public var promptTokens: Int
    /// The tokens the model chose: those of `text`, any a stop text cut off, and the token that
    /// ended the reply (EOS, a stop token), which has no text (vLLM counts it too).
    public var completionTokens: Int
    /// "stop" (EOS, a stop token or a stop text), "length", or "cancelled" (the client went away).
    public var finishReason: String
    public var queueSeconds: Double
    public var latencySeconds: Double
    /// Rows decoded together with this one (itself included).
    public var batchSize: Int
    /// The new tokens with their log-probabilities, when the request asked for them: the ones whose
    /// text is in `text`, any a stop text cut off, and the token that ended the reply (EOS, a stop
    /// token), as vLLM gives them: one per token `completionTokens` counts.
    public var logprobs: [TokenLogprob]?
    /// The prompt's tokens with theirs (nil for the first), when the request asked for them.
    public var promptLogprobs: [TokenLogprob?]?
    /// This request's share of its batch's CPU time and energy (by tokens), its own wall time.
    public var cost: Cost
}

/// A request the engine cannot take: an unknown model, a full queue, a prompt too long.
public struct ServingError: Error, CustomStringConvertible {
    public enum Kind: Sendable { case invalidRequest, contextLengthExceeded, unknownModel, busy, shuttingDown }
    public let kind: Kind
    public let message: String
    public init(_ kind: Kind, _ message: String) { (self.kind, self.message) = (kind, message) }
    public var description: String { message }
}

/// One base model, its resident adapters and the batching worker.
public final class ServingEngine: @unchecked Sendable {
    public let model: CausalLM
    /// The base's tokenizer, with its chat template (or `--chat-template`'s); `tokenizer(for:)`
    /// gives an adapter's.
    public let tokenizer: BPETokenizer
    /// Whether `--chat-template` set the template of every model, adapters' recorded ones included.
    private let templateGiven: Bool
    /// The tokens the base's replies end at (`textEndTokens`).
    private let baseEnds: Set<Int32>
    /// The name requests use for the base alone.
    public let baseName: String
    /// Rows decoded together at most.
    public let maxBatch: Int
    /// Requests waiting at most; more are refused (`busy`).
    public let maxQueue: Int
    /// Prompt + completion tokens at most per request.
    public let contextLength: Int
    public let wattsPerCore: Double
    /// Called after every request (metrics), on the worker thread.
    public var onFinished: ((String, GenerationSummary) -> Void)?

    struct Adapter {
        let method: PEFTMethod
        let path: String
        /// The tensors as loaded, for an adapter attached per batch (empty for a row-scoped one):
        /// each batch attaches the method again and copies these in, without reading the file.
        let saved: [String: Tensor]
        /// Virtual tokens (prompt, P-Tuning, prefix) it puts before every prompt.
        let virtualTokens: Int
        /// The base's tokenizer with the chat template the adapter was trained with, when it records
        /// one other than the base's (and `--chat-template` was not given); nil: the base's.
        let tokenizer: BPETokenizer?
        /// The tokens its replies end at.
        let ends: Set<Int32>
        /// Kept attached and limited to its rows; otherwise attached for its own batches only.
        var rowScoped: Bool { method is RowScopedPEFTMethod }
    }

    final class Job: @unchecked Sendable {
        let id: Int
        let request: GenerationRequest
        let continuation: AsyncStream<GenerationEvent>.Continuation
        let enqueued = Date()
        private let flagLock = NSLock()
        private var _cancelled = false
        /// Set when the client stops listening (a closed connection): the row stops decoding.
        var isCancelled: Bool {
            get { flagLock.lock(); defer { flagLock.unlock() }; return _cancelled }
            set { flagLock.lock(); _cancelled = newValue; flagLock.unlock() }
        }
        init(id: Int, request: GenerationRequest, continuation: AsyncStream<GenerationEvent>.Continuation) {
            (self.id, self.request, self.continuation) = (id, request, continuation)
        }
    }

    private let queueLock = NSCondition()
    private var pending: [Job] = []
    private var nextID = 0
    private var stopping = false
    private var worker: Thread?
    /// Held while the model runs a batch or an adapter is loaded or unloaded.
    private let modelLock = NSLock()
    /// Held briefly around `adapters` and `adapterOrder` (changed only under modelLock too), so
    /// listings and submissions never wait for a running batch.
    private let registryLock = NSLock()
    private var adapters: [String: Adapter] = [:]
    private var adapterOrder: [String] = []

    /// Loads the base (SwiftPEFT .h5, GGUF or Hugging Face folder) and starts the worker;
    /// `chatTemplatePath`: a chat template file used instead of the base's own and of the ones
    /// adapters record (without it, an adapter's requests go through the template it was trained with).
    /// `keepQuantized` (a GGUF base, fp32 precision): every quantized matrix, the embedding included,
    /// keeps the file's blocks (`loadModel(keepQuantized:quantizedEmbedding:)`).
    public init(modelPath: String, baseName: String? = nil, maxBatch: Int = 8, maxQueue: Int = 64,
                contextLength: Int? = nil, wattsPerCore: Double = CostMeter.defaultWattsPerCore,
                precision: DecodePrecision = .fp32, keepQuantized: Bool = false, chatTemplatePath: String? = nil) throws {
        if baseName?.isEmpty == true { throw ServingError(.invalidRequest, "the base's name (--name) is empty: requests could not name it") }
        if keepQuantized && precision != .fp32 {
            throw ServingError(.invalidRequest, "--keep-quantized keeps the file's quantized blocks, decoded to fp32: it excludes --precision \(precision.rawValue)")
        }
        let loaded = try loadModel(modelPath, bf16Only: precision == .bf16Only,  // bf16-only: copies made as each matrix loads
                                   keepQuantized: keepQuantized, quantizedEmbedding: keepQuantized)
        guard let tok = loaded.tokenizer else { throw ServingError(.invalidRequest, "\(modelPath): holds no tokenizer; it cannot be served") }
        if let path = chatTemplatePath {
            do { tok.chatTemplate = try BPETokenizer.chatTemplate(fromFile: path) } catch { throw ServingError(.invalidRequest, "--chat-template: \(error)") }
        }
        guard maxBatch >= 1, maxQueue >= 1 else { throw ServingError(.invalidRequest, "--max-batch and --max-queue must be at least 1") }
        model = loaded.model
        model.eval()
        // The base's weights never change while serving (adapters are hooks): bf16 copies for decoding.
        if precision == .bf16 { model.keepBF16Weights() }
        tokenizer = tok
        templateGiven = chatTemplatePath != nil
        baseEnds = textEndTokens(tok)
        // A Hub id is the model's name, as other OpenAI-compatible servers give it ("HuggingFaceTB/SmolLM2-135M").
        let hubID = loaded.source.path != modelPath && HubCache.parse(modelPath) != nil
        self.baseName = baseName ?? (hubID ? modelPath : URL(fileURLWithPath: modelPath).deletingPathExtension().lastPathComponent)
        self.maxBatch = maxBatch
        self.maxQueue = maxQueue
        self.contextLength = min(contextLength ?? model.config.maxPositions, model.config.maxPositions)
        self.wattsPerCore = wattsPerCore
        let t = Thread { [unowned self] in self.work() }
        t.name = "swiftpeft-engine"
        t.stackSize = 16 << 20
        worker = t
        t.start()
    }

    /// The base's name, then the adapters' in the order they were loaded.
    public var modelNames: [String] {
        registryLock.lock(); defer { registryLock.unlock() }
        return [baseName] + adapterOrder
    }

    /// The adapter's path and method type, for listings.
    public func adapterInfo(_ name: String) -> (path: String, peftType: String)? {
        registryLock.lock(); defer { registryLock.unlock() }
        return adapters[name].map { ($0.path, type(of: $0.method).peftType) }
    }

    /// The tokenizer requests for `model` are written with: an adapter's carries the chat template it
    /// was trained with (`adapterChatTemplate`); the base's for the base and an unknown name.
    public func tokenizer(for model: String) -> BPETokenizer { adapter(model)?.tokenizer ?? tokenizer }

    private func adapter(_ name: String) -> Adapter? {
        registryLock.lock(); defer { registryLock.unlock() }
        return adapters[name]
    }

    /// Loads an adapter (SwiftPEFT .h5 or PEFT folder) under `name`; it must fit the base. Waits for
    /// the running batch.
    public func loadAdapter(name: String, path: String) throws {
        guard !name.isEmpty else { throw ServingError(.invalidRequest, "the adapter name is empty") }
        guard name != baseName else { throw ServingError(.invalidRequest, "the adapter name \"\(name)\" is the base model's name; give the adapter another") }
        modelLock.lock(); defer { modelLock.unlock() }
        guard adapter(name) == nil else { throw ServingError(.invalidRequest, "an adapter named \"\(name)\" is already loaded; unload it first") }
        let recorded = templateGiven ? nil : try adapterChatTemplate(path).flatMap { $0 == tokenizer.chatTemplate ? nil : $0 }
        let own = recorded.map { tokenizer.withChatTemplate($0) }
        let method = try Formats.loadAdapter(path, onto: model)  // checks the base
        let virtualTokens = model.virtualTokenCount
        var saved: [String: Tensor] = [:]
        if let scoped = method as? RowScopedPEFTMethod {
            guard scoped.extraCount == 0 else {
                method.detach(from: model)  // its biases or modules_to_save would change the base for every row
                throw ServingError(.invalidRequest, """
                    \(path): the adapter also trains \(scoped.extraCount) values of the base (biases or modules_to_save), \
                    which would change every request's answer, not only its own; merge it into the base \
                    (swiftpeft merge) and serve the merged model
                    """)
            }
            scoped.isEnabled = false  // on for its own rows only, per batch
            scoped.batchRows = nil
        } else {
            saved = withNoGrad { Dictionary(method.adapterParameters().map { ($0.0, $0.1.copy()) }, uniquingKeysWith: { a, _ in a }) }
            method.detach(from: model)  // attached again for its own batches
        }
        registryLock.lock()
        adapters[name] = Adapter(method: method, path: path, saved: saved, virtualTokens: virtualTokens,
                                 tokenizer: own, ends: own.map(textEndTokens) ?? baseEnds)
        adapterOrder.append(name)
        registryLock.unlock()
    }

    /// Unloads the adapter `name`. Waits for the running batch.
    public func unloadAdapter(name: String) throws {
        modelLock.lock(); defer { modelLock.unlock() }
        registryLock.lock()
        let removed = adapters.removeValue(forKey: name)
        if removed != nil { adapterOrder.removeAll { $0 == name } }
        let loaded = adapterOrder
        registryLock.unlock()
        guard let a = removed else {
            throw ServingError(.unknownModel, "no adapter named \"\(name)\" is loaded; loaded: \(loaded.joined(separator: ", "))")
        }
        if a.rowScoped { a.method.detach(from: model) }
    }

    /// The virtual tokens (prompt or prefix adapters') that requests for `model` put before their prompt.
    public func virtualTokens(of model: String) -> Int { adapter(model)?.virtualTokens ?? 0 }

    /// Queues a request; its events arrive on the returned stream.
    public func submit(_ request: GenerationRequest) throws -> AsyncStream<GenerationEvent> {
        try submit([request])[0]
    }

    /// Queues several requests at once (all or none: each is checked, and the queue must have room
    /// for all); the events of each arrive on its stream.
    public func submit(_ requests: [GenerationRequest]) throws -> [AsyncStream<GenerationEvent>] {
        for request in requests { try check(request) }
        guard requests.count <= maxQueue else {
            throw ServingError(.invalidRequest, "\(requests.count) prompts in one request (each of n choices counts), more than the queue holds (--max-queue \(maxQueue))")
        }
        queueLock.lock(); defer { queueLock.unlock() }
        guard !stopping else { throw ServingError(.shuttingDown, "the server is shutting down") }
        guard pending.count + requests.count <= maxQueue else {
            throw ServingError(.busy, "\(counted(pending.count, "request")) \(pending.count == 1 ? "is" : "are") waiting (--max-queue \(maxQueue))\(requests.count > 1 ? ", no room for \(requests.count) more" : ""); try again later")
        }
        let streams = requests.map { request in
            var continuation: AsyncStream<GenerationEvent>.Continuation!
            let stream = AsyncStream<GenerationEvent> { continuation = $0 }
            nextID += 1
            let job = Job(id: nextID, request: request, continuation: continuation)
            continuation.onTermination = { [weak self, weak job] termination in
                guard case .cancelled = termination, let self, let job else { return }
                self.cancel(job)
            }
            pending.append(job)
            return stream
        }
        queueLock.signal()
        return streams
    }

    /// Throws when the engine cannot take `request`: an unknown model, an empty prompt or one with
    /// ids outside the vocabulary, no room in the context.
    private func check(_ request: GenerationRequest) throws {
        guard request.model == baseName || adapterInfo(request.model) != nil else {
            throw ServingError(.unknownModel, "the model \"\(request.model)\" does not exist; models: \(modelNames.joined(separator: ", "))")
        }
        guard !request.prompt.isEmpty else { throw ServingError(.invalidRequest, "the prompt is empty") }
        guard request.maxTokens >= 0 else { throw ServingError(.invalidRequest, "max_tokens must not be negative, got \(request.maxTokens)") }
        if let k = request.logprobs, !(0...20).contains(k) { throw ServingError(.invalidRequest, "logprobs must be in 0...20, got \(k)") }
        let V = model.config.vocabSize
        if let bad = request.logitBias.keys.first(where: { $0 < 0 || Int($0) >= V }) {
            throw ServingError(.invalidRequest, "logit_bias names token \(bad), outside the model's vocabulary of \(V)")
        }
        guard request.repetitionPenalty > 0, request.minP >= 0, request.minP <= 1 else {
            throw ServingError(.invalidRequest, "repetition_penalty must be positive and min_p in [0, 1]")
        }
        if let bad = request.prompt.first(where: { $0 < 0 || Int($0) >= V }) {
            throw ServingError(.invalidRequest, "the prompt holds token \(bad), outside the model's vocabulary of \(V)")
        }
        let virtual = virtualTokens(of: request.model)  // a prompt or prefix adapter's, which take positions too
        guard virtual + request.prompt.count + request.maxTokens <= contextLength else {
            throw ServingError(.contextLengthExceeded, "the prompt has \(request.prompt.count) tokens\(virtual > 0 ? " (+\(virtual) virtual tokens of \(request.model))" : "") and max_tokens is \(request.maxTokens): more than the context length \(contextLength)")
        }
    }

    /// A request whose client stopped listening: dropped if it still waits, stopped if it runs.
    private func cancel(_ job: Job) {
        job.isCancelled = true
        queueLock.lock()
        pending.removeAll { $0 === job }
        queueLock.unlock()
    }

    /// Requests waiting for a batch.
    public var queued: Int { queueLock.lock(); defer { queueLock.unlock() }; return pending.count }

    /// Finishes the running batch and the queued requests, then stops the worker. Call it when done
    /// with the engine: until then its worker thread runs, and keeps the engine (and the model) alive.
    public func shutdown() {
        queueLock.lock()
        stopping = true
        queueLock.broadcast()
        queueLock.unlock()
        while worker?.isFinished == false { usleep(5_000) }
    }

    // MARK: the worker

    /// How long the worker waits for the clients of the last batch to send their next requests,
    /// so that they decode together again (a running batch is not joined).
    public var gatherWindow = 0.02
    /// The last batch's rows plus the requests that waited through it: the clients likely to send
    /// the next requests at about the same time.
    private var expected = 0

    private func work() {
        while true {
            queueLock.lock()
            while pending.isEmpty && !stopping { queueLock.wait() }
            if pending.isEmpty { queueLock.unlock(); return }
            let deadline = Date().addingTimeInterval(gatherWindow)
            while pending.count < min(maxBatch, expected) && !stopping && queueLock.wait(until: deadline) {}
            if pending.isEmpty { queueLock.unlock(); continue }  // cancelled while the batch gathered
            let batch = takeBatch()
            queueLock.unlock()
            modelLock.lock()
            run(batch)
            modelLock.unlock()
            queueLock.lock()
            expected = batch.count + pending.count
            queueLock.unlock()
        }
    }

    /// The oldest request and the waiting ones that can share its batch (under queueLock). A
    /// request joins only if its answer stays what it would be alone: the same prompt length where
    /// padding would move positions (learned positions; virtual tokens before the prompt), and no
    /// row's room for new tokens cut by a longer prompt beside it.
    private func takeBatch() -> [Job] {
        let (taken, rest) = formBatch(pending)
        pending = rest
        return taken
    }

    /// `takeBatch`'s choice among `waiting` (oldest first): the batch and the requests left waiting.
    func formBatch(_ waiting: [Job]) -> (batch: [Job], rest: [Job]) {
        let first = waiting[0]
        let scoped = { (name: String) in name == self.baseName || self.adapter(name)?.rowScoped == true }
        let virtual = scoped(first.request.model) ? 0 : adapter(first.request.model)?.virtualTokens ?? 0
        let samePromptLength = model.config.positions == .learned || virtual > 0
        var taken: [Job] = [], rest: [Job] = []
        for j in waiting {
            let longest = max(j.request.prompt.count, taken.map(\.request.prompt.count).max() ?? 0)
            let room = contextLength - virtual - longest  // new tokens each row can have in this batch
            let fits = taken.count < maxBatch
                && (scoped(first.request.model) ? scoped(j.request.model) : j.request.model == first.request.model)
                && (!samePromptLength || j.request.prompt.count == first.request.prompt.count)
                && (taken + [j]).allSatisfy { $0.request.prompt.count == longest || $0.request.maxTokens <= room }
            if fits { taken.append(j) } else { rest.append(j) }
        }
        return (taken, rest)
    }

    /// Decodes `jobs` together until each has finished (under modelLock).
    private func run(_ jobs: [Job]) {
        // A request whose adapter was unloaded while it waited gets an error, not the base's answer.
        let gone = jobs.filter { $0.request.model != baseName && adapter($0.request.model) == nil }
        for j in gone {
            j.continuation.yield(.failed("the adapter \(j.request.model) was unloaded before the request ran"))
            j.continuation.finish()
        }
        // A request cancelled since it was taken still gets its row: the first step reports it "cancelled".
        let jobs = jobs.filter { j in !gone.contains { $0 === j } }
        guard !jobs.isEmpty else { return }
        // Rows grouped by model, so each row-scoped adapter owns one range of rows.
        let rows = jobs.sorted { ($0.request.model == baseName ? "" : $0.request.model, $0.id) < ($1.request.model == baseName ? "" : $1.request.model, $1.id) }
        let B = rows.count
        var attached: PEFTMethod?
        defer {
            for a in adapters.values { if let s = a.method as? RowScopedPEFTMethod { s.isEnabled = false; s.batchRows = nil } }
            attached?.detach(from: model)
        }
        /// Gives each row-scoped adapter its range of a batch whose position i is `rows[batchRows[i]]`.
        func scopeAdapters(to batchRows: [Int]) {
            for (name, a) in adapters {
                guard let s = a.method as? RowScopedPEFTMethod else { continue }
                let mine = batchRows.indices.filter { rows[batchRows[$0]].request.model == name }
                s.batchRows = mine.isEmpty ? 0..<0 : mine.first!..<(mine.last! + 1)
                s.isEnabled = !mine.isEmpty
            }
        }
        scopeAdapters(to: Array(0..<B))
        if let name = rows.first?.request.model, let a = adapters[name], !a.rowScoped {
            do {
                try a.method.attach(to: model)
                attached = a.method
                try a.method.loadAdapterParameters(a.saved, source: a.path)
            } catch {
                for j in rows { j.continuation.yield(.failed("cannot attach the adapter \(name): \(error)")); j.continuation.finish() }
                return
            }
        }
        let meter = CostMeter(wattsPerCore: wattsPerCore)
        let started = Date()
        let extra = model.virtualTokenCount
        let P = rows.map(\.request.prompt.count).max()!
        guard extra + P <= contextLength else {  // a prefix adapter's virtual tokens leave no room
            for j in rows {
                j.continuation.yield(.failed("the prompt (\(P) tokens) and the adapter's \(extra) virtual tokens exceed the context length \(contextLength)"))
                j.continuation.finish()
            }
            return
        }
        let room = contextLength - extra - P
        let steps = min(room, rows.map(\.request.maxTokens).max()!)
        // Equal prompts for one model (a request's n choices) are prefilled once: `unique` holds the
        // first row of each, and row b decodes from prefilled row `source[b]`'s cache and logits.
        var unique: [Int] = [], source = [Int](repeating: 0, count: B), firstOf: [String: [[Int32]: Int]] = [:]
        for (b, j) in rows.enumerated() {
            if let u = firstOf[j.request.model]?[j.request.prompt] { source[b] = u; continue }
            firstOf[j.request.model, default: [:]][j.request.prompt] = unique.count
            source[b] = unique.count
            unique.append(b)
        }
        let U = unique.count
        let pad = tokenizer.padTokenID ?? tokenizer.eosTokenID ?? 0
        var ids = [Int32](repeating: pad, count: U * P), mask = [Float](repeating: 0, count: U * P)  // (U, P), left-padded
        for (u, b) in unique.enumerated() {
            let p = rows[b].request.prompt
            for (t, id) in p.enumerated() { ids[u * P + P - p.count + t] = id; mask[u * P + P - p.count + t] = 1 }
        }
        let ends = rows.map { adapter($0.request.model)?.ends ?? baseEnds }  // per row: adapters may have their own templates
        var generated = [[Int32]](repeating: [], count: B)
        var endedByToken = [Bool](repeating: false, count: B)  // a row's last token was EOS or a stop token
        var texts = [String](repeating: "", count: B), streams = [TextStream](repeating: TextStream(), count: B)
        var finish = [String?](repeating: nil, count: B)
        var released = [Bool](repeating: false, count: B)
        // Log-probabilities, for rows that ask: all of the new tokens', those not yet sent with a
        // piece of text, and the prompt's.
        var tokenLogprobs = [[TokenLogprob]](repeating: [], count: B), unsent = tokenLogprobs
        var promptLogprobs = [[TokenLogprob?]](repeating: [], count: B)
        // How often each row's completion has used each token (penalties).
        var used = [[Int32: Int]](repeating: [:], count: B)
        let promptTokens = rows.map { $0.request.repetitionPenalty == 1 ? [] : Set($0.request.prompt) }  // the repetition penalty's
        var rngs = rows.map { RNG(seed: $0.request.seed) }
        let V = model.config.vocabSize
        let debug = ProcessInfo.processInfo.environment["SWIFTPEFT_DEBUG_BATCH"] != nil
        if debug { Profiler.start() }
        var stepTimes: [Double] = []
        defer {
            if debug {
                let split = Profiler.stop().map { "\($0.key.name) \(Int($0.value * 1000)) ms" }.sorted().joined(separator: ", ")
                let pre = stepTimes.first.map { Int($0 * 1000) } ?? 0
                let per = stepTimes.count > 1 ? Int(stepTimes.dropFirst().reduce(0, +) / Double(stepTimes.count - 1) * 1000) : 0
                FileHandle.standardError.write(Data("batch \(B) prompt \(P): prefill \(pre) ms, \(stepTimes.count - 1) steps of \(per) ms; \(split)\n".utf8))
            }
        }
        withNoGrad {
            var t0 = Date()
            // Room for 256 new tokens at first; the cache doubles when replies run longer, so a
            // large max_tokens that a stop cuts short takes no memory (SmolLM2: 46 KB per position and row).
            let prefilled = KVCache(config: model.config, batch: U, capacity: extra + P + min(steps, 256))
            let paddingMask = mask.allSatisfy { $0 == 1 } ? nil : mask
            var logitsTensor: Tensor
            if U < B { scopeAdapters(to: unique) }
            if rows.contains(where: \.request.promptLogprobs) {
                let h = model.hiddenStates(ids, batch: U, attentionMask: paddingMask, cache: prefilled)  // (U, P, C)
                logitsTensor = model.lmHead(h.slice(axis: 1, P - 1, P).contiguous())  // (U, 1, V)
                var computed: [Int: (top: Int, logprobs: [TokenLogprob?])] = [:]  // per prefilled row: equal rows share it
                for (b, j) in rows.enumerated() where j.request.promptLogprobs {
                    let top = j.request.logprobs ?? 0
                    if let c = computed[source[b]], c.top == top {
                        promptLogprobs[b] = c.logprobs
                    } else {
                        promptLogprobs[b] = promptTokenLogprobs(h, row: source[b], prompt: j.request.prompt, top: top)
                        computed[source[b]] = (top, promptLogprobs[b])
                    }
                    j.continuation.yield(.prompt(logprobs: promptLogprobs[b]))
                }
            } else {
                // Each row's last position only (U, 1, V): the head over the whole prompt would be thrown away.
                logitsTensor = model.lastLogits(ids, batch: U, attentionMask: paddingMask, cache: prefilled)
            }
            let cache = U < B ? prefilled.gatheringRows(source) : prefilled
            if U < B {
                scopeAdapters(to: Array(0..<B))
                let all = logitsTensor.toArray()  // (U, 1, V)
                logitsTensor = Tensor(shape: [B, 1, V], data: source.flatMap { all[$0 * V ..< ($0 + 1) * V] })  // (B, 1, V)
            }
            for b in 0..<B where rows[b].request.maxTokens == 0 { finish[b] = "length"; release(b) }  // the prompt's log-probabilities only
            for _ in 0..<steps {
                let logits = logitsTensor.toArray()
                // The rows' log-probabilities (B, 1, V), when a row still decoding asks for them.
                let logprobs = (0..<B).contains { finish[$0] == nil && rows[$0].request.logprobs != nil } ? logitsTensor.logSoftmax().toArray() : []
                var next = [Int32](repeating: pad, count: B)
                for b in 0..<B where finish[b] == nil && rows[b].isCancelled { finish[b] = "cancelled"; release(b) }
                for b in 0..<B where finish[b] == nil {
                    let r = rows[b].request
                    let row = Array(logits[b * V..<(b + 1) * V])
                    var options = SamplingOptions(maxNewTokens: r.maxTokens, temperature: r.temperature, topP: r.topP)
                    (options.minP, options.topK) = (r.minP, r.topK)
                    let token = Int32(sampleToken(adjustedLogits(row, r, promptTokens: promptTokens[b], used: used[b]), options, &rngs[b]))
                    next[b] = token
                    if let k = r.logprobs {  // the token that ends the reply has one too (as vLLM gives it)
                        let lp = logprobs.withUnsafeBufferPointer { tokenLogprob(logprobs: UnsafeBufferPointer(rebasing: $0[b * V ..< (b + 1) * V]), token: token, top: k) }
                        tokenLogprobs[b].append(lp)
                        unsent[b].append(lp)
                    }
                    if ends[b].contains(token) || r.stopTokens.contains(token) {
                        (finish[b], endedByToken[b]) = ("stop", true)
                        release(b)
                        continue
                    }
                    generated[b].append(token)
                    used[b][token, default: 0] += 1
                    var text = tokenizer.decode(generated[b], following: r.prompt.last)  // the prompt's continuation
                    if let cut = textBeforeStop(text, r.stop) {
                        text = cut
                        finish[b] = "stop"
                    } else if generated[b].count >= r.maxTokens || generated[b].count >= room {
                        finish[b] = "length"
                    }
                    texts[b] = text
                    if let piece = streams[b].next(text, finished: finish[b] != nil, stops: r.stop) {
                        rows[b].continuation.yield(.text(piece, logprobs: unsent[b]))
                        unsent[b] = []
                    }
                    if finish[b] != nil { release(b) }
                }
                if finish.allSatisfy({ $0 != nil }) { break }
                stepTimes.append(Date().timeIntervalSince(t0)); t0 = Date()
                logitsTensor = model.forward(next, batch: B, cache: cache)  // (B, 1, V)
            }
        }
        for b in 0..<B { release(b) }

        /// Answers row `b` once it has finished (the batch goes on for the others): its text, and
        /// its share of the batch's CPU time and energy so far, by the tokens it processed.
        func release(_ b: Int) {
            guard !released[b] else { return }
            released[b] = true
            let j = rows[b]
            if finish[b] != "cancelled" {
                let rest = streams[b].next(texts[b], finished: true, stops: [])
                if rest != nil || !unsent[b].isEmpty { j.continuation.yield(.text(rest ?? "", logprobs: unsent[b])) }
            }
            let chosen = generated[b].count + (endedByToken[b] ? 1 : 0), tokens = j.request.prompt.count + chosen
            let allChosen = generated.reduce(0) { $0 + $1.count } + endedByToken.filter { $0 }.count
            let sofar = meter.reading(tokens: rows.reduce(0) { $0 + $1.request.prompt.count } + allChosen)
            let share = Double(tokens) / Double(max(1, sofar.tokens))
            let now = Date()
            let summary = GenerationSummary(
                text: texts[b], promptTokens: j.request.prompt.count, completionTokens: chosen,
                finishReason: finish[b] ?? "length", queueSeconds: started.timeIntervalSince(j.enqueued),
                latencySeconds: now.timeIntervalSince(j.enqueued), batchSize: B,
                logprobs: j.request.logprobs == nil ? nil : tokenLogprobs[b],
                promptLogprobs: j.request.promptLogprobs ? promptLogprobs[b] : nil,
                cost: Cost(tokens: tokens, wallSeconds: now.timeIntervalSince(j.enqueued), cpuSeconds: sofar.cpuSeconds * share,
                           peakRSSBytes: sofar.peakRSSBytes, energyJoules: sofar.energyJoules * share, energySource: sofar.energySource,
                           wattsPerCore: sofar.wattsPerCore))
            onFinished?(j.request.model, summary)
            j.continuation.yield(.done(summary))
            j.continuation.finish()
        }
    }
}

extension ServingEngine {
    /// `logits` (one row's V) as `request`'s bias and penalties leave them for sampling (the same
    /// values when it asks for none), in vLLM's order: the bias, then the repetition penalty over
    /// the prompt's (`promptTokens`, its set) and the completion's tokens, then the frequency and
    /// presence penalties over the completion's (`used`: how often it used each token).
    func adjustedLogits(_ logits: [Float], _ request: GenerationRequest, promptTokens: Set<Int32>, used: [Int32: Int]) -> [Float] {
        let r = request
        guard !r.logitBias.isEmpty || r.repetitionPenalty != 1 || r.frequencyPenalty != 0 || r.presencePenalty != 0 else { return logits }
        var x = logits
        for (t, bias) in r.logitBias where Int(t) < x.count { x[Int(t)] += bias }
        if r.repetitionPenalty != 1 {
            let p = r.repetitionPenalty
            for t in promptTokens.union(used.keys) where Int(t) < x.count {
                x[Int(t)] = x[Int(t)] > 0 ? x[Int(t)] / p : x[Int(t)] * p
            }
        }
        if r.frequencyPenalty != 0 || r.presencePenalty != 0 {
            for (t, n) in used where Int(t) < x.count { x[Int(t)] -= r.frequencyPenalty * Float(n) + r.presencePenalty }
        }
        return x
    }

    /// Log-probabilities of row `b`'s prompt tokens, left-padded in `h` (B, P, C), the final hidden
    /// states: each token after the first from the logits at the position before it, the head run
    /// on 64 positions at a time (a prompt's whole (P, V) logits are never held).
    func promptTokenLogprobs(_ h: Tensor, row b: Int, prompt: [Int32], top k: Int) -> [TokenLogprob?] {
        let P = h.shape[1], start = P - prompt.count
        var out: [TokenLogprob?] = [nil]
        out.reserveCapacity(prompt.count)
        let row = h.slice(axis: 0, b, b + 1)  // (1, P, C)
        var s = start
        while s < P - 1 {
            let e = min(P - 1, s + 64)
            let logprobs = model.lmHead(row.slice(axis: 1, s, e).contiguous()).logSoftmax().contiguous()  // (1, e - s, V)
            let V = logprobs.shape[2]
            var chunk = [TokenLogprob?](repeating: nil, count: e - s)
            withExtendedLifetime(logprobs) {
                let p = UnsafePointer(logprobs.basePointer)
                chunk.withUnsafeMutableBufferPointer { c in  // the top-k scans, positions split over the threads
                    parallelFor(e - s, cost: V) { lo, hi in
                        for i in lo..<hi {
                            c[i] = tokenLogprob(logprobs: UnsafeBufferPointer(start: p + i * V, count: V), token: prompt[s + i + 1 - start], top: k)
                        }
                    }
                }
            }
            out += chunk
            s = e
        }
        return out
    }
}

/// What of a completion's text has been streamed, counted in Unicode scalars, not Characters: a
/// new token may join the last character sent (a combining accent; "\r" then "\n"), and only the
/// new scalars go out, so the pieces add up to the whole text.
struct TextStream {
    private(set) var sent = 0

    /// The piece of `text` (the whole completion so far) to send now, or nil. Until `finished`,
    /// what may still change is held back: a half-decoded character (U+FFFD at the end) and the
    /// start of any of `stops` (the text is cut before a stop text).
    mutating func next(_ text: String, finished: Bool, stops: [String]) -> String? {
        let scalars = Array(text.unicodeScalars)
        let ready = finished ? scalars.count : TextStream.finalCount(scalars, stops: stops)
        guard ready > sent else { return nil }
        var view = String.UnicodeScalarView()
        view.append(contentsOf: scalars[sent..<ready])
        sent = ready
        return String(view)
    }

    static func finalCount(_ scalars: [Unicode.Scalar], stops: [String]) -> Int {
        if scalars.last == "\u{FFFD}" { return 0 }
        var ready = scalars.count
        for s in stops where !s.isEmpty {
            let stop = Array(s.unicodeScalars)
            for k in stride(from: min(stop.count - 1, scalars.count), to: 0, by: -1) where scalars.suffix(k).elementsEqual(stop.prefix(k)) {
                ready = min(ready, scalars.count - k)
                break
            }
        }
        return ready
    }
}
