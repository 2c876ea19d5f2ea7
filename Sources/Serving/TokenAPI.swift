// The token-level parts of the HTTP API, in OpenAI's and vLLM's forms: a completion's prompt as text or
// token ids (one or several), log-probabilities as completions and chat completions return them, and
// vLLM's /tokenize, /detokenize and /tokenizer_info (what lm-evaluation-harness's `local-completions`
// reads to tokenize on the server).

import Foundation
import Hummingbird
import Models
import Tokenizers
import Training

/// A completion's prompt: text (encoded with the tokenizer's BOS, as transformers' `tokenizer(prompt)`
/// does) or token ids, taken as they are.
enum PromptInput: Equatable {
    case text(String)
    case tokens([Int32])
}

/// Most prompts one completion request may carry (each is a choice of its own).
let maxPromptsPerRequest = 64

/// OpenAI's forms of `prompt`: a string, a list of strings, a list of token ids, or a list of such lists.
func completionPrompts(_ value: Any?) throws -> [PromptInput] {
    let form = "prompt must be a string, a list of strings, a list of token ids or a list of such lists"
    func fail(_ message: String) -> APIError { APIError(status: .badRequest, message: message, param: "prompt") }
    let prompts: [PromptInput]
    switch value {
    case let s as String: prompts = [.text(s)]
    case let l as [Any] where !l.isEmpty:
        if let texts = l as? [String] {
            prompts = texts.map { .text($0) }
        } else if let ids = tokenIDs(l) {
            prompts = [.tokens(ids)]
        } else if let lists = l as? [[Any]], let all = Optional(lists.compactMap(tokenIDs)), all.count == lists.count {
            prompts = all.map { .tokens($0) }
        } else {
            throw fail(form)
        }
    default: throw fail(form)
    }
    guard prompts.count <= maxPromptsPerRequest else { throw fail("a request may hold at most \(maxPromptsPerRequest) prompts, got \(prompts.count)") }
    if let k = prompts.firstIndex(of: .tokens([])) { throw fail("prompt \(k + 1) is an empty list of token ids") }
    return prompts
}

/// A JSON list of integers as token ids, or nil when an element is anything else.
func tokenIDs(_ list: [Any]) -> [Int32]? {
    var ids: [Int32] = []
    ids.reserveCapacity(list.count)
    for x in list {
        // JSON's true and false arrive as NSNumbers too (objCType "c"): not token ids.
        guard let n = x as? NSNumber, String(cString: n.objCType) != "c", let i = Int32(exactly: n.doubleValue) else { return nil }
        ids.append(i)
    }
    return ids
}

/// A token's text as the log-probabilities show it: its bytes when they are UTF-8 on their own, else
/// OpenAI's `bytes:\xNN…` form (a token that holds part of a character).
func tokenText(_ id: Int32, _ tokenizer: BPETokenizer) -> String {
    let b = tokenizer.bytes(for: id) ?? []
    if let s = String(validating: b, as: UTF8.self) { return s }
    return "bytes:" + b.map { String(format: "\\x%02x", $0) }.joined()
}

/// A log-probability as JSON can hold it: -inf (and NaN, from a broken logit) as -9999, as OpenAI and
/// vLLM write -inf.
private func jsonLogprob(_ x: Float) -> Double { x.isFinite ? max(Double(x), -9999) : -9999 }

/// A completion's `logprobs` object (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`) for
/// `tokens` with their log-probabilities (nil: none, the prompt's first token) and their offsets in
/// the choice's text. `top_logprobs` maps each token's text to its log-probability: the most likely
/// ones and the chosen one (OpenAI: up to logprobs + 1; two tokens with one text keep the larger).
func completionLogprobs(_ tokens: [(token: Int32, logprob: TokenLogprob?)], offsets: [Int], tokenizer: BPETokenizer) -> [String: Any] {
    var texts: [String] = [], values: [Any] = [], tops: [Any] = []
    for (token, lp) in tokens {
        let text = tokenText(token, tokenizer)
        texts.append(text)
        guard let lp else { values.append(NSNull()); tops.append(NSNull()); continue }
        values.append(jsonLogprob(lp.logprob))
        var top: [String: Double] = [:]
        for (t, x) in lp.top + [(lp.token, lp.logprob)] { top[tokenText(t, tokenizer)] = max(top[tokenText(t, tokenizer)] ?? -.infinity, jsonLogprob(x)) }
        tops.append(top)
    }
    return ["tokens": texts, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets]
}

/// Where each of a prompt's tokens starts in its echoed text, in Unicode scalars: the first `hidden`
/// (a BOS the tokenizer put before a text prompt, which the echo does not show) at 0.
func promptOffsets(_ ids: [Int32], hidden: Int, tokenizer: BPETokenizer) -> [Int] {
    let shown = Array(ids[min(hidden, ids.count)...])
    let ends = tokenizer.scalarEnds(shown, following: nil)  // one pass; nil: decode each prefix
    return ids.indices.map { i in
        i <= hidden ? 0 : ends?[i - hidden - 1] ?? tokenizer.decode(Array(ids[hidden..<i])).unicodeScalars.count
    }
}

/// Where each new token from `start` on begins in the choice's text: `base` (the echoed prompt's
/// length) plus the length of the completion's text before it.
func completionOffsets(_ new: [Int32], from start: Int, following previous: Int32?, base: Int, tokenizer: BPETokenizer) -> [Int] {
    let ends = tokenizer.scalarEnds(new, following: previous)  // one pass; nil: decode each prefix
    return (start..<new.count).map { j in
        base + (j == 0 ? 0 : ends?[j - 1] ?? tokenizer.decode(Array(new[..<j]), following: previous).unicodeScalars.count)
    }
}

/// A chat completion's `logprobs` object: `{"content": [{"token", "logprob", "bytes", "top_logprobs"}], "refusal": null}`.
func chatLogprobs(_ tokens: [TokenLogprob], tokenizer: BPETokenizer) -> [String: Any] {
    func entry(_ t: Int32, _ x: Float) -> [String: Any] {
        ["token": tokenText(t, tokenizer), "logprob": jsonLogprob(x), "bytes": (tokenizer.bytes(for: t) ?? []).map(Int.init)]
    }
    let content: [[String: Any]] = tokens.map { lp in
        entry(lp.token, lp.logprob).merging(["top_logprobs": lp.top.map { entry($0.token, $0.logprob) }]) { $1 }
    }
    return ["content": content, "refusal": NSNull()]
}

/// vLLM's tokenizer routes: `POST /tokenize` (a prompt, or chat messages through the template),
/// `POST /detokenize` and `GET /tokenizer_info`.
func addTokenizerRoutes(_ router: Router<ConnectionContext>, engine: ServingEngine, maxBodyBytes: Int) {
    router.post("/tokenize") { request, _ -> Response in
        let (o, body) = try await jsonBodyInOrder(request, limit: maxBodyBytes)
        let model = try requestModel(o, engine)
        let tokenizer = engine.tokenizer(for: model)
        let ids: [Int32]
        if body["messages"] != nil {
            // The ids a chat request feeds the model (`encodeChat`: the template's text as it is); as
            // vLLM, the tokenizer's own BOS is put in front only when asked.
            let add = try flag(o, "add_special_tokens", default: false)
            let prompt: String
            do {
                prompt = try renderChat(try chatRequestMessages(body["messages"]), tools: try requestTools(body).tools, templateKwargs: nil,
                                        tokenizer: tokenizer, addGenerationPrompt: try flag(o, "add_generation_prompt", default: true))
            } catch let e as APIError { throw e } catch {
                throw APIError(status: .badRequest, message: "\(error)", param: "messages")
            }
            var chatIDs = encodeChat(prompt, tokenizer: tokenizer)
            if add && tokenizer.addsBOS, let bos = tokenizer.bosTokenID, chatIDs.first != bos { chatIDs.insert(bos, at: 0) }
            ids = chatIDs
        } else {
            guard let prompt = o["prompt"] as? String else {
                throw APIError(status: .badRequest, message: "prompt (a string) or messages is required", param: "prompt")
            }
            ids = tokenizer.encode(prompt, addBOS: try flag(o, "add_special_tokens", default: true) && tokenizer.addsBOS)
        }
        var out: [String: Any] = ["count": ids.count, "max_model_len": engine.contextLength, "tokens": ids.map(Int.init)]
        out["token_strs"] = try flag(o, "return_token_strs", default: false)
            ? ids.map { tokenizer.tokenString(for: $0) ?? "" } as Any : NSNull()
        return jsonResponse(out)
    }
    router.post("/detokenize") { request, _ -> Response in
        let o = try await jsonBody(request, limit: maxBodyBytes)
        let tokenizer = engine.tokenizer(for: try requestModel(o, engine))
        guard let list = o["tokens"] as? [Any], let ids = tokenIDs(list) else {
            throw APIError(status: .badRequest, message: "tokens must be a list of token ids", param: "tokens")
        }
        let V = tokenizer.vocabSize
        if let bad = ids.first(where: { $0 < 0 || Int($0) >= V }) {
            throw APIError(status: .badRequest, message: "token \(bad) is outside the tokenizer's vocabulary of \(V)", param: "tokens")
        }
        return jsonResponse(["prompt": tokenizer.decode(ids)])
    }
    router.get("/tokenizer_info") { request, _ -> Response in
        // `?model=`: an adapter's (its chat template); the base's without one.
        let query: [String: Any] = request.uri.queryParameters.get("model").map { ["model": $0] } ?? [:]
        let t = engine.tokenizer(for: try requestModel(query, engine))
        func content(_ id: Int32?) -> Any { id.flatMap { t.tokenString(for: $0) } ?? NSNull() }
        return jsonResponse([
            "tokenizer_class": t.sentencePiece ? "SentencePiece-style BPE" : "byte-level BPE",
            "bos_token": content(t.bosTokenID), "eos_token": content(t.eosTokenID), "pad_token": content(t.padTokenID),
            "unk_token": content(t.unkTokenID), "add_bos_token": t.addsBOS, "chat_template": t.chatTemplate.map { $0 as Any } ?? NSNull(),
            "model_max_length": engine.contextLength, "vocab_size": t.vocabSize,
        ])
    }
}

/// The request's `model` (the base's name when it names none); an unknown one is a 404.
private func requestModel(_ o: [String: Any], _ engine: ServingEngine) throws -> String {
    guard let m = (o["model"] as? String) ?? (o["model"] == nil || o["model"] is NSNull ? engine.baseName : nil) else {
        throw APIError(status: .badRequest, message: "model must be a string", param: "model")
    }
    guard engine.modelNames.contains(m) else {
        throw APIError(status: .notFound, message: "the model \"\(m)\" does not exist; models: \(engine.modelNames.joined(separator: ", "))",
                       code: "model_not_found", param: "model")
    }
    return m
}

/// A true/false field (`default` when absent or null); anything else is a 400.
func flag(_ o: [String: Any], _ key: String, default value: Bool) throws -> Bool {
    switch o[key] {
    case nil, is NSNull: return value
    case let n as NSNumber where String(cString: n.objCType) == "c": return n.boolValue
    default: throw APIError(status: .badRequest, message: "\(key) must be true or false", param: key)
    }
}
