// Tools in chat requests, as OpenAI's API and vLLM take them: the request's `tools` reach the model's
// chat template, a conversation may hold the assistant's earlier `tool_calls` and `role: "tool"`
// results, and the calls a reply makes are read back from its text into `tool_calls`
// (`parseToolCalls`, in ToolCallFormats.swift).

import Foundation
import Tokenizers
import Training

/// A chat request's messages → the conversation for the template, as vLLM hands it over. Roles as
/// OpenAI's: `developer` is system; a content may be a string, text parts, or null (the template
/// gets ""); an assistant's `tool_calls` keep their shape, their `arguments` strings read as JSON
/// (templates write `arguments | tojson`; missing, empty or null arguments are `{}`); a tool
/// result keeps its `tool_call_id` and `name`.
func chatRequestMessages(_ value: JSONValue?) throws -> [ChatMessage] {
    func fail(_ message: String) -> APIError { APIError(status: .badRequest, message: message, param: "messages") }
    guard case .array(let list)? = value, !list.isEmpty else { throw fail("messages must be a non-empty list") }
    return try list.enumerated().map { k, item in
        let what = "message \(k + 1): "
        guard case .object(let m) = item, var role = m["role"]?.string else { throw fail("\(what)each message needs a role and a content") }
        if role == "developer" { role = "system" }  // OpenAI's newer name for it
        guard ["system", "user", "assistant", "tool"].contains(role) else {
            throw fail("\(what)a message's role must be system, user, assistant or tool, got \"\(role)\"")
        }
        var fields = JSONObject(m.members.filter { $0.key != "role" && $0.key != "content" }.map { ($0.key, $0.value) })
        if fields["tool_calls"] == .null { fields["tool_calls"] = nil }  // as vLLM: no key (Llama's templates test for it)
        if let calls = fields["tool_calls"], calls != .array([]) {  // [] is no calls
            guard role == "assistant", case .array(var list) = calls else { throw fail("\(what)tool_calls belong to an assistant message, as a list") }
            for (j, call) in list.enumerated() {
                guard case .object(var c) = call, case .object(var f)? = c["function"], f["name"]?.string != nil else {
                    throw fail("\(what)tool call \(j + 1) must be {\"type\": \"function\", \"function\": {\"name\", \"arguments\"}}")
                }
                switch f["arguments"] {
                case nil, .null?, .string("")?: f["arguments"] = .object(JSONObject())
                case .string(let a)?: if let parsed = try? JSONValue(parsing: a) { f["arguments"] = parsed }
                default: break
                }
                c["function"] = .object(f)
                list[j] = .object(c)
            }
            fields["tool_calls"] = .array(list)
        }
        switch m["content"] {
        case .string(let text)?: return ChatMessage(role: role, content: text, fields: fields)
        case .array(let parts)?:  // OpenAI's content parts: text parts only
            let texts = try parts.map { part -> String in
                guard part["type"]?.string == "text", let t = part["text"]?.string else {
                    throw fail("\(what)a content part must be {\"type\": \"text\", \"text\": …}; other parts are not supported")
                }
                return t
            }
            return ChatMessage(role: role, content: texts.joined(), fields: fields)
        case .null?, nil: return ChatMessage(role: role, content: "", fields: fields)  // vLLM's "" for a template
        default: throw fail("\(what)a message's content must be a string, a list of text parts or null")
        }
    }
}

/// The request's tools for the template, and those whose calls are read back from the reply, with
/// their parameters' schemas (nil: none are read): `tools` a list of `{"type": "function", "function": {"name", …}}`; `tool_choice` "auto" (the default) or
/// "none" (the template still sees the tools; the reply is text). A forced choice ("required", a
/// named function) needs constrained decoding, which this server does not do: refused.
func requestTools(_ body: JSONValue) throws -> (tools: [JSONValue]?, readCalls: ToolSchemas?) {
    guard let t = body["tools"], t != .null else {
        if let c = body["tool_choice"], c != .null, c != .string("none"), c != .string("auto") {
            throw APIError(status: .badRequest, message: "tool_choice needs tools", param: "tool_choice")
        }
        return (nil, nil)
    }
    guard case .array(let tools) = t else { throw APIError(status: .badRequest, message: "tools must be a list", param: "tools") }
    for (k, tool) in tools.enumerated() where tool["type"] != .string("function") || tool["function"]?["name"]?.string == nil {
        throw APIError(status: .badRequest, message: "tool \(k + 1) must be {\"type\": \"function\", \"function\": {\"name\", \"description\", \"parameters\"}}", param: "tools")
    }
    let names = ToolSchemas(tools.map { ($0["function"]!["name"]!.string!, $0["function"]?["parameters"] ?? .null) }, uniquingKeysWith: { a, _ in a })
    switch body["tool_choice"] {
    case nil, .null?, .string("auto")?: return (tools.isEmpty ? nil : tools, tools.isEmpty ? nil : names)
    case .string("none")?: return (tools.isEmpty ? nil : tools, nil)
    default:
        throw APIError(status: .badRequest, message: "tool_choice may be \"auto\" or \"none\": a forced call needs constrained decoding, which this server does not do",
                       param: "tool_choice")
    }
}

/// The `message` of a chat choice: the reply's text, or its calls of `tools` (by name; `tool_calls`,
/// ids `call_…`, finish reason "tool_calls") when it makes some; nil `tools`: none are read.
func chatReply(_ text: String, finishReason: String, tools: ToolSchemas?) -> (message: [String: Any], finishReason: String) {
    guard let tools, let parsed = parseToolCalls(text, tools: tools) else { return (["role": "assistant", "content": text], finishReason) }
    let calls: [[String: Any]] = parsed.calls.map {
        ["id": "call_" + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "").prefix(24), "type": "function",
         "function": ["name": $0.name, "arguments": $0.arguments]]
    }
    return (["role": "assistant", "content": parsed.content ?? NSNull(), "tool_calls": calls], "tool_calls")
}

/// The one `delta` a stream sends for a whole reply whose calls are read (`chatReply`): its text,
/// or its calls, each with its `index`, as OpenAI's stream chunks carry them.
func chatReplyDelta(_ text: String, finishReason: String, tools: ToolSchemas) -> (delta: [String: Any], finishReason: String) {
    let reply = chatReply(text, finishReason: finishReason, tools: tools)
    var delta = reply.message.filter { $0.key != "role" && !($0.value is NSNull) }
    if let calls = delta["tool_calls"] as? [[String: Any]] {
        delta["tool_calls"] = calls.enumerated().map { $1.merging(["index": $0]) { $1 } }
    }
    return (delta, reply.finishReason)
}
