// `swiftpeft serve`: the engine behind an OpenAI-compatible HTTP API on Hummingbird.
//   POST /v1/completions, POST /v1/chat/completions (the chat template, tools; "stream": true as server-sent events;
//        log-probabilities; a completion's prompt as text or token ids, one or several: TokenAPI.swift)
//   POST /tokenize, /detokenize, GET /tokenizer_info   vLLM's tokenizer routes (TokenAPI.swift)
//   GET  /v1/models                        the base and every loaded adapter
//   POST /v1/load_lora_adapter, /v1/unload_lora_adapter   {"lora_name", "lora_path"}, as vLLM names them
//   GET  /metrics (Prometheus text), GET /health, GET / (the prompt lab page)
// Every error is a 4xx/5xx JSON body in OpenAI's shape; the engine's queue bounds concurrency.

import Foundation
import Hummingbird
import NIOCore
import Containers
import Models
import Prometheus
import Synchronization
import Tokenizers
import Training

/// How `serve` runs.
public struct ServerOptions: Sendable {
    public var host = "127.0.0.1"
    public var port = 8000
    /// Every request needs `Authorization: Bearer <apiKey>` when set.
    public var apiKey: String?
    /// Request bodies larger than this are refused (413).
    public var maxBodyBytes = 1 << 20
    /// The folder `POST /v1/load_lora_adapter` loads from: a `lora_path` must lie inside it (symlinks
    /// resolved; a relative one is taken inside it), else 403. nil: any path this process can read.
    public var adapterDirectory: String?
    /// Where the server's warnings go (standard error by default): a request field it does not read,
    /// named the first time it is seen.
    public var warn: @Sendable (String) -> Void = { FileHandle.standardError.write(Data(($0 + "\n").utf8)) }
    public init() {}
}

/// The fields of a completion or chat request this server reads (or refuses unless neutral).
let readRequestFields: Set<String> = [
    "model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop",
    "stop_token_ids", "stream", "logprobs", "top_logprobs", "echo", "presence_penalty", "frequency_penalty", "repetition_penalty",
    "logit_bias", "n", "best_of", "suffix", "tools", "tool_choice", "response_format", "min_tokens", "ignore_eos", "chat_template_kwargs",
    // OpenAI's that change nothing in an answer here: usage is always streamed; no store, account or tier.
    "stream_options", "user", "store", "metadata", "service_tier", "parallel_tool_calls", "prompt_cache_key", "safety_identifier",
]

/// `path` resolved (symlinks, `..`) for loading an adapter when requests may only load from inside
/// `directory`; `path` itself when `directory` is nil.
/// - Throws: `APIError` 403 when the resolved path lies outside `directory`.
func adapterPath(_ path: String, inside directory: String?) throws -> String {
    guard !path.utf8.contains(0) else { throw APIError(status: .badRequest, message: "lora_path holds a NUL character", param: "lora_path") }
    guard let directory else { return path }
    let root = URL(fileURLWithPath: directory).standardizedFileURL.resolvingSymlinksInPath().path
    let rootBytes = Array((root.hasSuffix("/") ? root : root + "/").utf8)
    // Compared as bytes: String's hasPrefix takes canonically equivalent spellings (NFC é, NFD é)
    // for equal, and a file system does not.
    func inside(_ url: URL) -> Bool { Array(url.standardizedFileURL.resolvingSymlinksInPath().path.utf8).starts(with: rootBytes) }
    let given = path.hasPrefix("/") ? URL(fileURLWithPath: path) : URL(fileURLWithPath: root).appendingPathComponent(path)
    // A PEFT folder's files are read too: links in it must stay inside as well.
    let files = [given] + ["adapter_config.json", "adapter_model.safetensors"].map { given.appendingPathComponent($0) }
        .filter { FileManager.default.fileExists(atPath: $0.path) }
    guard files.allSatisfy(inside) else {
        throw APIError(status: .forbidden, message: "lora_path \"\(path)\" is outside the adapter folder this server loads from (--adapter-dir)",
                       param: "lora_path")
    }
    return given.standardizedFileURL.resolvingSymlinksInPath().path
}

/// The Prometheus series the server keeps, per model (base or adapter).
final class ServerMetrics: @unchecked Sendable {
    let registry = PrometheusCollectorRegistry()
    private let lock = NSLock()

    /// The series, each named and explained (its `# HELP` line): swiftpeft_<name>_<unit>.
    private static func series(_ name: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "swiftpeft", metricName: name, unitName: unit, helpText: help)
    }
    static let requests = series("http_requests", "total", "HTTP requests by route and status")
    static let completions = series("completions", "total", "Completions answered, per model (base or adapter)")
    static let promptTokens = series("prompt_tokens", "total", "Prompt tokens read, per model")
    static let completionTokens = series("completion_tokens", "total", "Tokens generated, per model")
    static let latency = series("request_latency", "seconds", "Time from a request's arrival to its last token, per model")
    static let queue = series("queue", "seconds", "Time a request waited before its first decoding step, per model")
    static let batchSize = series("batch", "size", "Requests decoded together in the batch a request joined, per model")
    static let queueLength = series("queue_length", "", "Requests waiting for a batch now")
    static let cpuSeconds = series("cpu_seconds", "total", "CPU time of the completions, per model")
    static let energy = series("energy_joules", "total", "Energy of the completions (source: RAPL, or an estimate), per model")

    func request(_ route: String, status: Int) {
        registry.makeCounter(descriptor: Self.requests, labels: [("route", route), ("status", "\(status)")]).increment()
    }

    func finished(model: String, _ s: GenerationSummary) {
        lock.lock(); defer { lock.unlock() }
        let l = [("model", model)]
        registry.makeCounter(descriptor: Self.completions, labels: l).increment()
        registry.makeCounter(descriptor: Self.promptTokens, labels: l).increment(by: Int64(s.promptTokens))
        registry.makeCounter(descriptor: Self.completionTokens, labels: l).increment(by: Int64(s.completionTokens))
        registry.makeValueHistogram(descriptor: Self.latency, labels: l,
                                    buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]).record(s.latencySeconds)
        registry.makeValueHistogram(descriptor: Self.queue, labels: l,
                                    buckets: [0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 30]).record(s.queueSeconds)
        registry.makeValueHistogram(descriptor: Self.batchSize, labels: l, buckets: [1, 2, 3, 4, 6, 8, 12, 16, 32]).record(Double(s.batchSize))
        registry.makeCounter(descriptor: Self.cpuSeconds, labels: l).increment(by: s.cost.cpuSeconds)
        registry.makeCounter(descriptor: Self.energy, labels: l + [("source", s.cost.energySource)]).increment(by: s.cost.energyJoules)
    }

    func text(queued: Int) -> String {
        registry.makeGauge(descriptor: Self.queueLength, labels: []).set(Double(queued))
        return registry.emitToString()
    }
}

/// An error as OpenAI's API returns it: `{"error": {"message", "type", "param", "code"}}`.
struct APIError: Error {
    let status: HTTPResponse.Status
    let message: String
    var type = "invalid_request_error"
    var code: String?
    var param: String?

    var response: Response {
        let body: [String: Any] = ["error": ["message": message, "type": type, "param": param ?? NSNull(), "code": code ?? NSNull()] as [String: Any]]
        return jsonResponse(body, status: status)
    }
}

func jsonResponse(_ object: Any, status: HTTPResponse.Status = .ok) -> Response {
    guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else {
        let error = #"{"error": {"code": null, "message": "the server could not write its answer as JSON", "param": null, "type": "server_error"}}"#
        return Response(status: .internalServerError, headers: [.contentType: "application/json"], body: ResponseBody(byteBuffer: ByteBuffer(string: error)))
    }
    return Response(status: status, headers: [.contentType: "application/json"], body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
}

/// The request fields `completions` and `chat/completions` share, read from a JSON object.
struct CompletionParameters {
    var model: String
    /// nil when the request names none: 64 for a completion; for a chat, the rest of the context up
    /// to 512 (a reply ends at `<|im_end|>`; the cap keeps rows batching and their caches small).
    var maxTokens: Int?
    var temperature: Float
    var topP: Float
    var seed: UInt64
    /// Whether the request named its seed (then every prompt of it samples with that seed, as in vLLM).
    var seedGiven = false
    var stop: [String]
    /// vLLM's `stop_token_ids`: tokens that end the completion as EOS does.
    var stopTokenIDs: [Int32]
    var stream: Bool
    /// `n`: choices per prompt (samples of the same prompt, each a row of the batch).
    var n = 1
    /// nil: no log-probabilities; k: each new token's, with the k most likely tokens at its position
    /// (a completion's `logprobs: k`; a chat's `logprobs: true` with `top_logprobs: k`).
    var logprobs: Int?
    /// A completion's `echo`: the prompt goes before the text, with its tokens' log-probabilities
    /// when `logprobs` is set.
    var echo = false
    /// vLLM's `top_k` (0 or -1: off).
    var topK = 0
    /// `min_p`, `presence_penalty`, `frequency_penalty`, `repetition_penalty` (neutral when absent).
    var minP: Float = 0, presencePenalty: Float = 0, frequencyPenalty: Float = 0, repetitionPenalty: Float = 1
    /// `logit_bias`: token id → bias in [-100, 100].
    var logitBias: [Int32: Float] = [:]
    /// The request's fields this server does not read (e.g. a misspelled "max_token"), sorted.
    var unreadFields: [String] = []

    /// The most choices a request may ask for per prompt (`n`).
    static let maxChoices = 64

    /// `chat`: a chat request, whose `tools` the route reads (a completion refuses them).
    init(_ o: [String: Any], defaultModel: String, chat: Bool = false) throws {
        func number(_ key: String) throws -> Double? {
            guard let v = o[key], !(v is NSNull) else { return nil }
            // JSON's true and false arrive as NSNumbers too (objCType "c"): not a number a client meant.
            guard let n = v as? NSNumber, String(cString: n.objCType) != "c" else {
                throw APIError(status: .badRequest, message: "\(key) must be a number", param: key)
            }
            return n.doubleValue
        }
        // OpenAI and vLLM parameters this server does not implement: refused when they ask for
        // something, rather than silently ignored (their neutral values pass).
        var neutral: [String: (Any) -> Bool] = [
            "best_of": { ($0 as? NSNumber)?.doubleValue == 1 }, "suffix": { ($0 as? String)?.isEmpty == true },
            "tools": { ($0 as? [Any])?.isEmpty == true }, "response_format": { (($0 as? [String: Any])?["type"] as? String) == "text" },
            "min_tokens": { ($0 as? NSNumber)?.doubleValue == 0 }, "ignore_eos": { ($0 as? NSNumber)?.boolValue == false },
        ]
        if chat {
            neutral["echo"] = { ($0 as? NSNumber)?.boolValue == false }  // a completion's parameter
        } else {
            neutral["top_logprobs"] = { ($0 as? NSNumber)?.doubleValue == 0 }  // a chat's; a completion's logprobs is the count
        }
        for (key, isNeutral) in neutral.sorted(by: { $0.key < $1.key }) where !(chat && key == "tools") {
            // best_of equal to n asks for nothing more (vLLM's default is n).
            if key == "best_of", let b = o[key] as? NSNumber, let n = o["n"] as? NSNumber, b.doubleValue == n.doubleValue { continue }
            if let v = o[key], !(v is NSNull), !isNeutral(v) {
                throw APIError(status: .badRequest, message: "\(key) is not supported by this server", param: key)
            }
        }
        guard let m = (o["model"] as? String) ?? (o["model"] == nil ? defaultModel : nil) else {
            throw APIError(status: .badRequest, message: "model must be a string", param: "model")
        }
        model = m
        func count(_ key: String, in range: ClosedRange<Double>) throws -> Int? {
            guard let x = try number(key) else { return nil }
            guard range.contains(x), x == x.rounded() else {
                // As the client wrote it: -3, not -3.0 (a whole number within Int's range prints as one).
                let given = x == x.rounded() && abs(x) < 1e18 ? String(Int(x)) : String(x)
                throw APIError(status: .badRequest, message: "\(key) must be an integer in \(Int(range.lowerBound))...\(Int(range.upperBound)), got \(given)", param: key)
            }
            return Int(x)
        }
        // Log-probabilities: a completion's `logprobs` counts the alternatives per token; a chat's is
        // true or false, with `top_logprobs` alternatives.
        if chat {
            logprobs = try flag(o, "logprobs", default: false) ? 0 : nil
            if let k = try count("top_logprobs", in: 0...20) {
                guard logprobs != nil || k == 0 else { throw APIError(status: .badRequest, message: "top_logprobs needs logprobs: true", param: "top_logprobs") }
                logprobs = logprobs.map { _ in k }
            }
        } else {
            if let n = o["logprobs"] as? NSNumber, String(cString: n.objCType) == "c", !n.boolValue {
                logprobs = nil  // false: none, as null
            } else {
                logprobs = try count("logprobs", in: 0...20)
            }
            echo = try flag(o, "echo", default: false)
        }
        // A completion may ask for no new token (its prompt's log-probabilities with echo, as OpenAI allows).
        let maxKey = o["max_tokens"] == nil || o["max_tokens"] is NSNull ? "max_completion_tokens" : "max_tokens"
        if let mt = try count(maxKey, in: (chat ? 1 : 0)...1_000_000) {
            guard mt > 0 || echo else {
                throw APIError(status: .badRequest, message: "\(maxKey) 0 asks for no new token, which only echo (the prompt's log-probabilities) makes useful; give 1 or more, or echo: true", param: maxKey)
            }
            maxTokens = mt
        }
        let t = try number("temperature") ?? 0
        guard t >= 0, t <= 10 else { throw APIError(status: .badRequest, message: "temperature must be in [0, 10], got \(t)", param: "temperature") }
        temperature = Float(t)
        func value(_ key: String, in range: ClosedRange<Double>, default d: Double, open lower: Bool = false) throws -> Float {
            let x = try number(key) ?? d
            guard range.contains(x), !(lower && x == range.lowerBound) else {
                throw APIError(status: .badRequest, message: "\(key) must be in \(lower ? "(" : "[")\(range.lowerBound), \(range.upperBound)], got \(x)", param: key)
            }
            return Float(x)
        }
        minP = try value("min_p", in: 0...1, default: 0)
        topK = max(0, try count("top_k", in: -1...1_000_000) ?? 0)
        presencePenalty = try value("presence_penalty", in: -2...2, default: 0)
        frequencyPenalty = try value("frequency_penalty", in: -2...2, default: 0)
        repetitionPenalty = try value("repetition_penalty", in: 0...10, default: 1, open: true)
        switch o["logit_bias"] {
        case nil, is NSNull: break
        case let biases as [String: Any]:
            for (key, v) in biases {
                guard let id = Int32(key), id >= 0 else {
                    throw APIError(status: .badRequest, message: "logit_bias keys must be token ids, got \"\(key)\"", param: "logit_bias")
                }
                guard let n = v as? NSNumber, String(cString: n.objCType) != "c", (-100...100).contains(n.doubleValue) else {
                    throw APIError(status: .badRequest, message: "logit_bias values must be numbers in [-100, 100]", param: "logit_bias")
                }
                logitBias[id] = n.floatValue
            }
        default: throw APIError(status: .badRequest, message: "logit_bias must be an object of token ids to biases", param: "logit_bias")
        }
        let p = try number("top_p") ?? 1
        guard p > 0, p <= 1 else { throw APIError(status: .badRequest, message: "top_p must be in (0, 1], got \(p)", param: "top_p") }
        topP = Float(p)
        // Without a seed, each request samples anew (as OpenAI and vLLM do); a seed is any 64-bit
        // integer, read exactly (a Double would merge seeds above 2^53), negative ones as their bits.
        switch o["seed"] {
        case nil, is NSNull: seed = UInt64.random(in: 0...UInt64.max)
        case let n as NSNumber where ["q", "Q", "i", "l", "s"].contains(String(cString: n.objCType)):
            seed = String(cString: n.objCType) == "Q" ? n.uint64Value : UInt64(bitPattern: n.int64Value)
            seedGiven = true
        default: throw APIError(status: .badRequest, message: "seed must be an integer", param: "seed")
        }
        switch o["stop"] {
        case nil, is NSNull: stop = []
        case let x as String: stop = [x]
        case let l as [Any]:
            stop = try l.map { guard let x = $0 as? String else { throw APIError(status: .badRequest, message: "stop must be strings", param: "stop") }; return x }
        default: throw APIError(status: .badRequest, message: "stop must be a string or a list of strings", param: "stop")
        }
        // Each stop text is looked for after every token of the batch's rows: a bounded list.
        guard stop.count <= 16, stop.allSatisfy({ $0.utf8.count <= 1000 }) else {
            throw APIError(status: .badRequest, message: "stop may hold at most 16 texts of at most 1000 bytes", param: "stop")
        }
        switch o["stop_token_ids"] {
        case nil, is NSNull: stopTokenIDs = []
        case let l as [Any]:
            stopTokenIDs = try l.map {
                guard let n = $0 as? NSNumber, let i = Int32(exactly: n.doubleValue), i >= 0 else {
                    throw APIError(status: .badRequest, message: "stop_token_ids must be non-negative integers", param: "stop_token_ids")
                }
                return i
            }
        default: throw APIError(status: .badRequest, message: "stop_token_ids must be a list of integers", param: "stop_token_ids")
        }
        n = try count("n", in: 1...Double(CompletionParameters.maxChoices)) ?? 1
        stream = try flag(o, "stream", default: false)
        unreadFields = o.keys.filter { !readRequestFields.contains($0) }.sorted()
    }
}

/// Warns through `options.warn` of each request field the server does not read, once per field
/// name for the server's life (as vLLM logs the fields it ignores; a client that sends one with
/// every request is not repeated). Names are written as JSON strings cut to 64 characters (a name
/// cannot start a line of its own), and only the first `limit` names are kept and told.
final class UnreadFieldWarnings: Sendable {
    private let seen = Mutex<Set<String>>([])
    private let warn: @Sendable (String) -> Void
    let limit: Int
    init(_ warn: @escaping @Sendable (String) -> Void, limit: Int = 100) { (self.warn, self.limit) = (warn, limit) }

    func note(_ fields: [String], route: String) {
        let (new, full) = seen.withLock { seen -> ([String], Bool) in
            guard seen.count < limit else { return ([], false) }
            let new = fields.filter { seen.count < limit && seen.insert($0).inserted }
            return (new, seen.count == limit)
        }
        guard !new.isEmpty else { return }
        let names = new.map { name -> String in
            let cut = name.count > 64 ? String(name.prefix(64)) + "…" : name
            return (try? JSONSerialization.data(withJSONObject: cut, options: [.fragmentsAllowed])).map { String(decoding: $0, as: UTF8.self) } ?? "?"
        }
        warn("warning: \(route): this server does not read the request field\(new.count == 1 ? "" : "s") " + names.joined(separator: ", ")
             + " (ignored; each such field is named once" + (full ? "; \(limit) names told, later ones are not)" : ")"))
    }
}

/// Builds the Hummingbird application around `engine`; `onRunning(port)` runs once it listens.
public func makeServer(_ engine: ServingEngine, options: ServerOptions,
                       onRunning: @escaping @Sendable (Int) -> Void = { _ in }) -> some ApplicationProtocol {
    let metrics = ServerMetrics()
    engine.onFinished = { metrics.finished(model: $0, $1) }
    let router = Router(context: ConnectionContext.self, options: .autoGenerateHeadEndpoints)  // HEAD wherever GET (RFC 9110)
    let unread = UnreadFieldWarnings(options.warn)
    router.add(middleware: ErrorShapeMiddleware(metrics: metrics))  // outermost: refusals are counted too
    if let key = options.apiKey {
        router.add(middleware: BearerKeyMiddleware(key: key))
    }

    router.get("/health") { _, _ -> Response in jsonResponse(["status": "ok", "queued": engine.queued]) }
    router.get("/metrics") { _, _ -> Response in
        Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                 body: ResponseBody(byteBuffer: ByteBuffer(string: metrics.text(queued: engine.queued))))
    }
    router.get("/") { _, _ -> Response in
        Response(status: .ok, headers: [.contentType: "text/html; charset=utf-8"], body: ResponseBody(byteBuffer: ByteBuffer(string: promptLabPage)))
    }
    router.get("/v1/models") { _, _ -> Response in
        let created = Int(Date().timeIntervalSince1970)
        let data: [[String: Any]] = engine.modelNames.map { name in
            var m: [String: Any] = ["id": name, "object": "model", "created": created, "owned_by": "swiftpeft"]
            if let a = engine.adapterInfo(name) { m["parent"] = engine.baseName; m["root"] = a.path; m["peft_type"] = a.peftType }
            else { m["parent"] = NSNull(); m["root"] = name }
            return m
        }
        return jsonResponse(["object": "list", "data": data])
    }
    addTokenizerRoutes(router, engine: engine, maxBodyBytes: options.maxBodyBytes)
    router.post("/v1/load_lora_adapter") { request, _ -> Response in
        let o = try await jsonBody(request, limit: options.maxBodyBytes)
        guard let name = o["lora_name"] as? String, let path = o["lora_path"] as? String else {
            throw APIError(status: .badRequest, message: "lora_name and lora_path (strings) are required")
        }
        let file = try adapterPath(path, inside: options.adapterDirectory)
        do { try await waitingOffThePool { try engine.loadAdapter(name: name, path: file) } } catch let e as ServingError {
            throw APIError(status: .badRequest, message: e.message)
        } catch {
            throw APIError(status: .badRequest, message: "\(error)", param: "lora_path")
        }
        return jsonResponse(["status": "loaded", "lora_name": name])
    }
    router.post("/v1/unload_lora_adapter") { request, _ -> Response in
        let o = try await jsonBody(request, limit: options.maxBodyBytes)
        guard let name = o["lora_name"] as? String else { throw APIError(status: .badRequest, message: "lora_name (a string) is required") }
        do { try await waitingOffThePool { try engine.unloadAdapter(name: name) } } catch let e as ServingError {
            throw APIError(status: .notFound, message: e.message, code: "model_not_found")
        }
        return jsonResponse(["status": "unloaded", "lora_name": name])
    }
    router.post("/v1/completions") { request, context -> Response in
        let o = try await jsonBody(request, limit: options.maxBodyBytes)
        let p = try CompletionParameters(o, defaultModel: engine.baseName)
        unread.note(p.unreadFields, route: "/v1/completions")
        let prompts = try completionPrompts(o["prompt"])
        let tokenizer = engine.tokenizer
        let ids = prompts.map { prompt -> [Int32] in
            switch prompt {
            case .text(let s): return tokenizer.encode(s, addBOS: tokenizer.addsBOS)  // as transformers' tokenizer(prompt)
            case .tokens(let t): return t
            }
        }
        let echo = !p.echo ? nil : prompts.enumerated().map { k, prompt -> (text: String, hidden: Int) in
            switch prompt {
            case .text(let s): return (s, tokenizer.addsBOS && tokenizer.bosTokenID != nil ? 1 : 0)  // the BOS in front is not in the text
            case .tokens: return (tokenizer.decode(ids[k]), 0)
            }
        }
        return try await complete(engine, p, prompts: ids, echo: echo, chat: false, onHangUp: context.onHangUp)
    }
    router.post("/v1/chat/completions") { request, context -> Response in
        let (o, body) = try await jsonBodyInOrder(request, limit: options.maxBodyBytes)
        let p = try CompletionParameters(o, defaultModel: engine.baseName, chat: true)
        unread.note(p.unreadFields, route: "/v1/chat/completions")
        // Without a template, chat is ChatML: spelled in pieces, its markers are text to the model, and a
        // reply would end only at EOS or max_tokens.
        let writable: Bool
        do {
            writable = try canWriteChat(engine.tokenizer(for: p.model))
        } catch {
            throw APIError(status: .badRequest, message: "this model's chat template cannot be read (\(error)). Use /v1/completions", param: "messages")
        }
        guard writable else {
            throw APIError(status: .badRequest, message: "this model's tokenizer has no chat template, and no <|im_end|> token "
                + "for ChatML, whose replies end with it. Use /v1/completions", param: "messages")
        }
        let messages = try chatRequestMessages(body["messages"])
        let (tools, readCalls) = try requestTools(body)
        var kwargs: JSONObject?
        switch body["chat_template_kwargs"] {  // vLLM's: the template's own variables (e.g. enable_thinking)
        case nil, .null?: break
        case .object(let o)?: kwargs = o
        default: throw APIError(status: .badRequest, message: "chat_template_kwargs must be an object", param: "chat_template_kwargs")
        }
        let prompt: String
        do {
            prompt = try renderChat(messages, tools: tools, templateKwargs: kwargs, tokenizer: engine.tokenizer(for: p.model), addGenerationPrompt: true)
        } catch {
            throw APIError(status: .badRequest, message: "\(error)", param: "messages")  // e.g. the template refuses a system message
        }
        let ids = encodeChat(prompt, tokenizer: engine.tokenizer(for: p.model))
        return try await complete(engine, p, prompts: [ids], chat: true, readToolCalls: readCalls, onHangUp: context.onHangUp)
    }

    let configuration = ApplicationConfiguration(address: .hostname(options.host, port: options.port), serverName: "swiftpeft")
    return Application(router: router, server: .http1(configuration: .init(additionalChannelHandlers: [HangUpWatcher()])), configuration: configuration,
                       onServerRunning: { channel in
        onRunning(channel.localAddress?.port ?? options.port)
    })
}

/// Runs `body`, which waits for the running batch (loading or unloading an adapter), on a thread of
/// its own: blocking one of the few threads that run every request's handler would stall the
/// other requests, streaming ones included, for the whole batch.
func waitingOffThePool(_ body: @escaping @Sendable () throws -> Void) async throws {
    try await withCheckedThrowingContinuation { (done: CheckedContinuation<Void, Error>) in
        Thread {
            do { try body(); done.resume() } catch { done.resume(throwing: error) }
        }.start()
    }
}

/// The request's JSON object; a body over `limit` bytes is a 413, anything but an object a 400.
func jsonBody(_ request: Request, limit: Int) async throws -> [String: Any] {
    try await jsonBodyInOrder(request, limit: limit).object
}

/// `jsonBody`, and the same body read keeping its keys' order (what a chat template sees of tools and arguments).
func jsonBodyInOrder(_ request: Request, limit: Int) async throws -> (object: [String: Any], value: JSONValue) {
    // A JSON content type: a browser page from another origin cannot send one without a CORS
    // preflight, which this server never grants (so a page cannot drive a local server).
    let type = request.headers[.contentType]?.split(separator: ";").first?.trimmingCharacters(in: .whitespaces).lowercased()
    guard type == "application/json" else {
        throw APIError(status: .unsupportedMediaType, message: "the request body must be JSON, sent with Content-Type: application/json (got \(type.map { "\"\($0)\"" } ?? "none"))")
    }
    var request = request
    let buffer: ByteBuffer
    do { buffer = try await request.collectBody(upTo: limit) } catch {
        throw APIError(status: .contentTooLarge, message: "the request body is larger than \(limit) bytes")
    }
    let data = Data(buffer.readableBytesView)
    let parsed: Any
    do { parsed = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]) } catch {
        let detail = " (\(jsonSyntaxDetail(error)))"
        throw APIError(status: .badRequest, message: "the request body is not valid JSON\(detail)")
    }
    guard let o = parsed as? [String: Any] else {
        throw APIError(status: .badRequest, message: "the request body is not a JSON object (found \(parsed is [Any] ? "an array" : "a single value"))")
    }
    guard let value = try? JSONValue(parsing: String(decoding: data, as: UTF8.self)) else {
        throw APIError(status: .badRequest, message: "the request body is not UTF-8 JSON")
    }
    return (o, value)
}

/// A request's context with its connection, so that a completion can stop when the client hangs up.
struct ConnectionContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    /// Has `target` fired once the client hangs up (unless it is finished first).
    let onHangUp: @Sendable (HangUpTarget) -> Void
    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        let channel = source.channel
        onHangUp = { target in
            channel.pipeline.handler(type: HangUpWatcher.self).whenComplete {
                switch $0 {
                case .success(let watcher): watcher.watch(target)
                case .failure: target.fire()  // the connection closed already and took its handlers with it
                }
            }
        }
    }
}

/// What a request does if its client hangs up (cancel its answer), until it is finished.
final class HangUpTarget: @unchecked Sendable {
    private let lock = NSLock()
    private var action: (@Sendable () -> Void)?
    init(_ action: @escaping @Sendable () -> Void) { self.action = action }
    var isFinished: Bool { lock.lock(); defer { lock.unlock() }; return action == nil }
    func fire() {
        lock.lock()
        let a = action
        action = nil
        lock.unlock()
        a?()
    }
    func finish() { lock.lock(); action = nil; lock.unlock() }
}

/// One per connection, in its pipeline: fires the requests' targets when the client hangs up, that
/// is when its input ends (`ChannelEvent.inputClosed`: the server allows half-closed connections,
/// so a client's close shows as that) or the connection closes. State is touched on the event loop.
final class HangUpWatcher: ChannelInboundHandler, RemovableChannelHandler, @unchecked Sendable {
    typealias InboundIn = NIOAny
    private var hungUp = false
    private var targets: [HangUpTarget] = []
    private var loop: (any EventLoop)?

    func handlerAdded(context: ChannelHandlerContext) { loop = context.eventLoop }

    /// Fires `target` at the hang-up, or now if it came already; finished targets are dropped.
    func watch(_ target: HangUpTarget) {
        loop?.execute {
            if self.hungUp { return target.fire() }
            self.targets.removeAll(where: \.isFinished)
            self.targets.append(target)
        }
    }

    private func hangUp() {
        hungUp = true
        let fired = targets
        targets = []
        for t in fired { t.fire() }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event { hangUp() }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        hangUp()
        context.fireChannelInactive()
    }
}

/// Runs `p.n` completions of each prompt (choice k is prompt k / n's sample k % n; all decoded
/// together): a JSON response, or
/// server-sent events when `stream` is set. When the client hangs up before a JSON answer is ready
/// (`onHangUp`), the requests are cancelled (a stream stops when a write to the gone client fails).
/// With `readToolCalls` (the request's tools), a chat reply's calls of them are read back
/// (`chatReply`); a stream then sends the reply whole, when it ends, since a call cannot be told
/// from text before then. `echo`: each prompt's text, put before its choice's text (a completion's
/// `echo`), with its tokens' log-probabilities when `p.logprobs` is set; `hidden`: how many of its
/// first tokens the text does not show (the BOS the tokenizer put before a text prompt). Several
/// prompts sample with the request's seed when it names one (as vLLM: equal prompts, equal
/// samples), the seed plus j for a prompt's sample j, else each choice with a random seed of its own.
/// Usage counts each prompt's tokens once, whatever `n`.
func complete(_ engine: ServingEngine, _ p: CompletionParameters, prompts given: [[Int32]], echo givenEcho: [(text: String, hidden: Int)]? = nil,
              chat: Bool, readToolCalls: ToolSchemas? = nil, onHangUp: (@Sendable (HangUpTarget) -> Void)? = nil) async throws -> Response {
    let n = p.n
    let prompts = given.flatMap { Array(repeating: $0, count: n) }  // one per choice
    let echo = givenEcho.map { e in e.flatMap { Array(repeating: $0, count: n) } }
    let requests = prompts.enumerated().map { k, ids in
        let maxTokens = p.maxTokens ?? (chat ? max(1, min(512, engine.contextLength - engine.virtualTokens(of: p.model) - ids.count)) : 64)
        var r = GenerationRequest(model: p.model, prompt: ids, maxTokens: maxTokens)
        (r.temperature, r.topP, r.seed, r.stop, r.stopTokens) =
            (p.temperature, p.topP, p.seedGiven ? p.seed &+ UInt64(k % n) : p.seed &+ UInt64(k), p.stop, p.stopTokenIDs)
        (r.logprobs, r.promptLogprobs) = (p.logprobs, echo != nil && p.logprobs != nil)
        (r.minP, r.topK, r.logitBias, r.presencePenalty, r.frequencyPenalty, r.repetitionPenalty) =
            (p.minP, p.topK, p.logitBias, p.presencePenalty, p.frequencyPenalty, p.repetitionPenalty)
        return r
    }
    let streams: [AsyncStream<GenerationEvent>]
    do { streams = try engine.submit(requests) } catch let e as ServingError {
        switch e.kind {
        case .unknownModel: throw APIError(status: .notFound, message: e.message, code: "model_not_found", param: "model")
        case .busy: throw APIError(status: .tooManyRequests, message: e.message, type: "rate_limit_error")
        case .shuttingDown: throw APIError(status: .serviceUnavailable, message: e.message, type: "server_error")
        case .invalidRequest: throw APIError(status: .badRequest, message: e.message)
        case .contextLengthExceeded: throw APIError(status: .badRequest, message: e.message, code: "context_length_exceeded")
        }
    }
    let tokenizer = engine.tokenizer(for: p.model)
    let id = (chat ? "chatcmpl-" : "cmpl-") + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "").prefix(24)
    let created = Int(Date().timeIntervalSince1970)
    let object = chat ? "chat.completion" : "text_completion"
    /// The usage of choices (k, summary): a prompt's tokens counted once for its n choices (those of them given).
    @Sendable func usage(_ s: [(k: Int, summary: GenerationSummary)]) -> [String: Any] {
        let perPrompt = Dictionary(s.map { ($0.k / n, $0.summary.promptTokens) }) { a, _ in a }
        let prompt = perPrompt.values.reduce(0, +), completion = s.reduce(0) { $0 + $1.summary.completionTokens }
        return ["prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion]
    }
    /// What the request cost: its choices' CPU time and energy together, the longest wall and queue time.
    @Sendable func cost(_ s: [GenerationSummary]) -> [String: Any] {
        ["wall_s": s.map(\.cost.wallSeconds).max() ?? 0, "queue_s": s.map(\.queueSeconds).max() ?? 0,
         "cpu_s": s.reduce(0) { $0 + $1.cost.cpuSeconds }, "energy_j": s.reduce(0) { $0 + $1.cost.energyJoules },
         "energy_source": s.first?.cost.energySource ?? "", "batch_size": s.map(\.batchSize).max() ?? 0]
    }
    /// Choice `k`'s echoed prompt tokens with their log-probabilities and offsets.
    @Sendable func promptLogprobs(_ k: Int, _ lps: [TokenLogprob?]) -> [String: Any] {
        completionLogprobs(zip(prompts[k], lps).map { ($0, $1) }, offsets: promptOffsets(prompts[k], hidden: echo?[k].hidden ?? 0, tokenizer: tokenizer),
                           tokenizer: tokenizer)
    }
    /// Choice `k`'s new tokens `all[start...]` (all: every new token so far) with theirs.
    @Sendable func newLogprobs(_ k: Int, _ all: [TokenLogprob], from start: Int) -> [String: Any] {
        let base = echo?[k].text.unicodeScalars.count ?? 0
        return completionLogprobs(all[start...].map { ($0.token, $0) },
                                  offsets: completionOffsets(all.map(\.token), from: start, following: prompts[k].last, base: base, tokenizer: tokenizer),
                                  tokenizer: tokenizer)
    }
    if !p.stream {
        // The events are read in a task of their own that the connection's close cancels, which ends
        // the streams and so the engine's rows (`onTermination`).
        let answer = Task { () throws -> [GenerationSummary] in
            try await withThrowingTaskGroup(of: (Int, GenerationSummary).self) { group in
                for (k, events) in streams.enumerated() {
                    group.addTask {
                        for await e in events {
                            switch e {
                            case .prompt, .text: continue  // the summary carries the whole text and the log-probabilities
                            case .failed(let why): throw APIError(status: .internalServerError, message: why, type: "server_error")
                            case .done(let s): return (k, s)
                            }
                        }
                        if Task.isCancelled {  // the client hung up: nobody reads this (nginx's 499 in the metrics)
                            throw APIError(status: .init(code: 499, reasonPhrase: "Client Closed Request"), message: "the client closed the connection",
                                           type: "client_closed_request")
                        }
                        throw APIError(status: .internalServerError, message: "the engine ended the request without an answer", type: "server_error")
                    }
                }
                var out = [GenerationSummary?](repeating: nil, count: streams.count)
                for try await (k, s) in group { out[k] = s }
                return out.map { $0! }
            }
        }
        let hangUp = HangUpTarget { answer.cancel() }
        onHangUp?(hangUp)
        defer { hangUp.finish() }
        let summaries = try await withTaskCancellationHandler { try await answer.value } onCancel: { answer.cancel() }
        let choices: [[String: Any]] = summaries.enumerated().map { k, s in
            if chat {
                let reply = chatReply(s.text, finishReason: s.finishReason, tools: readToolCalls)
                return ["index": k, "message": reply.message, "finish_reason": reply.finishReason,
                        "logprobs": s.logprobs.map { chatLogprobs($0, tokenizer: tokenizer) } ?? NSNull()]
            }
            var logprobs: Any = NSNull()
            if let new = s.logprobs {
                let echoed = s.promptLogprobs.map { promptLogprobs(k, $0) }
                let generated = newLogprobs(k, new, from: 0)
                logprobs = echoed.map { e in e.merging(generated) { a, b in ((a as? [Any]) ?? []) + ((b as? [Any]) ?? []) } } ?? generated
            }
            return ["index": k, "text": (echo?[k].text ?? "") + s.text, "finish_reason": s.finishReason, "logprobs": logprobs]
        }
        return jsonResponse(["id": id, "object": object, "created": created, "model": p.model, "choices": choices,
                             "usage": usage(Array(summaries.enumerated().map { ($0, $1) })), "swiftpeft_cost": cost(summaries)])
    }
    let chunkObject = chat ? "chat.completion.chunk" : "text_completion"
    // Every choice's events in one sequence, in the order they come.
    let merged = AsyncStream<(Int, GenerationEvent)> { out in
        let readers = Task {
            await withTaskGroup(of: Void.self) { group in
                for (k, events) in streams.enumerated() {
                    group.addTask { for await e in events { out.yield((k, e)) } }
                }
            }
            out.finish()
        }
        out.onTermination = { _ in readers.cancel() }
    }
    return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"], body: ResponseBody { writer in
        func send(_ o: [String: Any]) async throws {
            let data = (try? JSONSerialization.data(withJSONObject: o, options: [.sortedKeys]))
                ?? Data(#"{"error": {"code": null, "message": "the server could not write this chunk as JSON", "param": null, "type": "server_error"}}"#.utf8)
            try await writer.write(ByteBuffer(string: "data: " + String(decoding: data, as: UTF8.self) + "\n\n"))
        }
        func chunk(_ k: Int, _ delta: String?, finish: String?, logprobs: Any = NSNull(), extra: [String: Any] = [:],
                   chatDelta: [String: Any]? = nil) -> [String: Any] {
            let choice: [String: Any] = chat
                ? ["index": k, "delta": chatDelta ?? delta.map { ["content": $0] } ?? [:], "finish_reason": finish ?? NSNull(), "logprobs": logprobs]
                : ["index": k, "text": delta ?? "", "finish_reason": finish ?? NSNull(), "logprobs": logprobs]
            return ["id": id, "object": chunkObject, "created": created, "model": p.model, "choices": [choice]].merging(extra) { $1 }
        }
        let single = streams.count == 1
        var newSoFar = [[TokenLogprob]](repeating: [], count: streams.count), done: [(k: Int, summary: GenerationSummary)] = []
        for k in streams.indices {
            if chat {
                try await send(["id": id, "object": chunkObject, "created": created, "model": p.model,
                                "choices": [["index": k, "delta": ["role": "assistant", "content": ""], "finish_reason": NSNull()]]])
            } else if let echo, p.logprobs == nil {  // echoed text without log-probabilities goes out at once
                try await send(chunk(k, echo[k].text, finish: nil))
            }
        }
        for await (k, e) in merged {
            switch e {
            case .prompt(let lps):  // echo with log-probabilities: the prompt's text and its tokens'
                try await send(chunk(k, echo?[k].text ?? "", finish: nil, logprobs: promptLogprobs(k, lps)))
            case .text(let t, let lps):
                guard readToolCalls == nil else { continue }
                let start = newSoFar[k].count
                newSoFar[k] += lps
                let logprobs: Any = p.logprobs == nil ? NSNull()
                    : chat ? chatLogprobs(lps, tokenizer: tokenizer) : newLogprobs(k, newSoFar[k], from: start)
                try await send(chunk(k, t, finish: nil, logprobs: logprobs))
            case .failed(let why): try await send(["error": ["message": why, "type": "server_error"]])
            case .done(let s):
                done.append((k, s))
                var finish = s.finishReason
                var last: Any = NSNull()  // the log-probabilities the finishing chunk carries
                if let tools = readToolCalls {  // the reply whole: its text, or its calls
                    let reply = chatReplyDelta(s.text, finishReason: s.finishReason, tools: tools)
                    let logprobs: Any = s.logprobs.map { chatLogprobs($0, tokenizer: tokenizer) } ?? NSNull()
                    if !reply.delta.isEmpty { try await send(chunk(k, nil, finish: nil, logprobs: logprobs, chatDelta: reply.delta)) } else { last = logprobs }
                    finish = reply.finishReason
                }
                // One choice: its last chunk carries the usage; several: a last chunk without choices does
                // (as OpenAI's `include_usage`).
                try await send(chunk(k, nil, finish: finish, logprobs: last, extra: single ? ["usage": usage([(k, s)]), "swiftpeft_cost": cost([s])] : [:]))
            }
        }
        if !single {
            try await send(["id": id, "object": chunkObject, "created": created, "model": p.model, "choices": [] as [Any],
                            "usage": usage(done), "swiftpeft_cost": cost(done.map(\.summary))])
        }
        try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
        try await writer.finish(nil)
    })
}

/// Every request but the page at `/` and `/health` must carry `Authorization: Bearer <key>`.
/// Whether `header` is `Bearer <key>` (the scheme in any case), compared in time that does not depend
/// on where the key differs.
func bearerMatches(_ header: String?, _ key: String) -> Bool {
    guard let header, header.count > 7, header.prefix(7).lowercased() == "bearer " else { return false }
    let given = Array(header.utf8.dropFirst(7)), wanted = Array(key.utf8)
    var diff = given.count ^ wanted.count
    for i in 0..<max(given.count, wanted.count) {
        diff |= Int((i < given.count ? given[i] : 0) ^ (i < wanted.count ? wanted[i] : 0))
    }
    return diff == 0
}

struct BearerKeyMiddleware<Context: RequestContext>: RouterMiddleware {
    let key: String
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        // The prompt lab page itself and the health check are public; the page sends the key it is given.
        guard request.uri.path == "/" || request.uri.path == "/health" || bearerMatches(request.headers[.authorization], key) else {
            return APIError(status: .unauthorized, message: "a valid API key is required (Authorization: Bearer …)", code: "invalid_api_key").response
        }
        return try await next(request, context)
    }
}

/// Every route the server answers, with its methods: the metrics' route labels, and the `Allow`
/// header of a 405 for a known route asked with another method.
let serverRoutes: [String: [HTTPRequest.Method]] = [
    "/": [.get, .head], "/health": [.get, .head], "/metrics": [.get, .head], "/v1/models": [.get, .head], "/tokenizer_info": [.get, .head],
    "/v1/completions": [.post], "/v1/chat/completions": [.post], "/v1/load_lora_adapter": [.post],
    "/v1/unload_lora_adapter": [.post], "/tokenize": [.post], "/detokenize": [.post],
]

/// Turns any error into OpenAI's error shape (no handler error reaches the client as plain text),
/// answers 405 with `Allow` for a known route asked with another method, and counts requests by
/// route and status.
struct ErrorShapeMiddleware<Context: RequestContext>: RouterMiddleware {
    let metrics: ServerMetrics
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        // As the router reads a path: empty parts skipped ("/health/" is "/health").
        let route = "/" + request.uri.path.split(separator: "/").joined(separator: "/")
        var response: Response
        do {
            if let allowed = serverRoutes[route], !allowed.contains(request.method) {
                let names = allowed.map(\.rawValue).joined(separator: ", ")
                response = APIError(status: .methodNotAllowed, message: "\(request.method.rawValue) is not allowed on \(route) (use \(names))").response
                response.headers[.allow] = names
            } else {
                response = try await next(request, context)
            }
        } catch let e as APIError {
            response = e.response
        } catch let e as HTTPError {
            response = APIError(status: e.status, message: e.body ?? "\(e.status)", type: e.status.code >= 500 ? "server_error" : "invalid_request_error").response
        } catch {
            response = APIError(status: .internalServerError, message: "\(error)", type: "server_error").response
        }
        metrics.request(serverRoutes[route] != nil ? route : "other", status: response.status.code)
        return response
    }
}
