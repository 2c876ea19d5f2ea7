// Dataset+JSONL.swift: reading examples: JSONL lines ({"text"}, {"prompt","completion"},
// {"instruction","input","output"}, {"messages"}) checked line by line with file:line errors, text files as
// documents, and the templates (Alpaca; the model's chat template, or ChatML without one) that turn an
// example into tokens with a loss mask.

import Foundation
import TensorCore
import NN
import Models
import Tokenizers
import PEFT
import Containers
import Formats

/// The kinds of training data `readExamples(_:)` understands.
public enum DataFormat: String, Codable, Sendable, CaseIterable {
    /// `.txt`, `.md` or `.rst` files; every token is learned.
    case plainText = "plain text"
    /// JSONL `{"text": …}`; every token is learned.
    case text
    /// JSONL `{"prompt": …, "completion": …}`; only the completion (and EOS) is learned.
    case promptCompletion = "prompt/completion"
    /// JSONL `{"instruction": …, "input": … (optional), "output": …}` in the Alpaca template; only the output
    /// (and EOS) is learned.
    case instruction
    /// JSONL `{"messages": [{"role": …, "content": …}, …]}`, written by the model's chat template (ChatML
    /// without one); only assistant turns are learned.
    case chat
}

/// One chat turn: its role ("system", "user", "assistant" or "tool"), its text, and the message's
/// other keys as the data gives them (an assistant's `tool_calls`, a tool result's `name` or
/// `tool_call_id`, `reasoning_content`, …), which the chat template gets as they are, as
/// transformers' `apply_chat_template` passes a message.
public struct ChatMessage: Codable, Equatable, Sendable {
    public var role: String
    public var content: String
    /// The other keys, in the data's order. `"content": null` (an assistant message that only calls
    /// tools) is kept here, so the template sees None where `content` is "".
    public var fields: JSONObject

    public init(role: String, content: String, fields: JSONObject = JSONObject()) {
        self.role = role
        self.content = content
        self.fields = fields
    }

    /// The names of the functions an assistant message calls, in order (`tool_calls[i].function.name`,
    /// or `tool_calls[i].name`).
    public var toolCallNames: [String] {
        guard case .array(let calls)? = fields["tool_calls"] else { return [] }
        return calls.compactMap { ($0["function"]?["name"] ?? $0["name"])?.string }
    }

    /// The message as a chat template gets it: `role`, `content`, then the other keys; `content` and
    /// the called functions' names replaced where given (chat training puts markers there).
    func templateValue(content: String? = nil, toolCallNames names: [String]? = nil) -> JinjaValue {
        var o = JSONObject([("role", .string(role)), ("content", .string(content ?? self.content))])
        for (k, v) in fields.members { o[k] = v }  // (a null content replaces the "" in its place)
        if let names, case .array(var calls)? = fields["tool_calls"] {
            var n = 0
            for (i, call) in calls.enumerated() {
                guard case .object(var c) = call, n < names.count else { continue }
                if case .object(var f)? = c["function"], f["name"]?.string != nil {
                    f["name"] = .string(names[n])
                    c["function"] = .object(f)
                } else if c["name"]?.string != nil {
                    c["name"] = .string(names[n])
                } else {
                    continue
                }
                n += 1
                calls[i] = .object(c)
            }
            o["tool_calls"] = .array(calls)
        }
        return JSONValue.object(o).jinja
    }

    enum CodingKeys: String, CodingKey { case role, content, fields }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        role = try c.decode(String.self, forKey: .role)
        content = try c.decode(String.self, forKey: .content)
        fields = try c.decodeIfPresent(JSONObject.self, forKey: .fields) ?? JSONObject()
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(role, forKey: .role)
        try c.encode(content, forKey: .content)
        if !fields.members.isEmpty { try c.encode(fields, forKey: .fields) }
    }
}

/// One example as read from a file, before tokenization.
public enum DataExample: Equatable, Sendable {
    case text(String)
    case promptCompletion(prompt: String, completion: String)
    case instruction(instruction: String, input: String?, output: String)
    /// A conversation, and what else its template is given when the data has it: tools (JSON
    /// schemas) and the template's own variables (`chat_template_kwargs`, e.g. `enable_thinking`).
    case chat([ChatMessage], tools: [JSONValue]? = nil, templateKwargs: JSONObject? = nil)

    /// The JSONL format this example has (`.text` for text documents as well).
    public var format: DataFormat {
        switch self {
        case .text: return .text
        case .promptCompletion: return .promptCompletion
        case .instruction: return .instruction
        case .chat: return .chat
        }
    }

    /// Token ids and which of them are learned (`learned[i]`: the loss trains the model to predict `ids[i]`).
    ///
    /// - text: `[BOS] text EOS`, all learned but BOS.
    /// - prompt/completion: `[BOS] prompt completion EOS` (no separator is inserted: put the space or newline you
    ///   want at the end of the prompt); only `completion EOS` is learned.
    /// - instruction: `[BOS] alpacaPrompt(…) output EOS`; only `output EOS` is learned.
    /// - chat, with the tokenizer's chat template: the conversation (and its tools) as the template
    ///   writes it (`renderChat`, no BOS added: the template writes it where the model wants one);
    ///   learned, each assistant turn from where the prompt for it ends (its text, its tool calls, the
    ///   reasoning the template writes there) through the token that ends the turn (e.g. `<|im_end|>` or
    ///   `<|eot_id|>`), not what follows it (a newline); see `TokenizedExample.appendChat`.
    /// - chat, without a template: `[BOS] renderChatML(messages)`, then EOS unless it is `<|im_end|>`
    ///   itself; only each assistant turn's content and its closing `<|im_end|>` are learned (not the `\n`
    ///   after it, not the final EOS: `<|im_end|>` is what ends a reply).
    ///
    /// Prompt and completion are encoded separately, as at generation time (the prompt is encoded, then the
    /// model continues), so the learned ids decode to exactly the completion text. Special-token texts written
    /// inside the data (e.g. a literal `<|im_end|>` in a message) become special tokens, as `encode` does.
    /// BOS is added with `addBOS` (nil: as the tokenizer does, `Tokenizer.addsBOS`) and only if the
    /// tokenizer has one, never before a chat template's text; EOS only if it has one.
    /// - Throws: `ChatTemplateError` from the chat template (which may refuse a conversation, e.g. a
    ///   system message, or roles that do not alternate).
    public func tokenized(_ tokenizer: Tokenizer, addBOS: Bool? = nil) throws -> TokenizedExample {
        var ex = TokenizedExample()
        if case .chat(let messages, let tools, let kwargs) = self, let template = try tokenizer.compiledChatTemplate {
            try ex.appendChat(messages, tools: tools, kwargs: kwargs, template, tokenizer)
            return ex
        }
        if addBOS ?? tokenizer.addsBOS, let bos = tokenizer.bosTokenID { ex.append([bos], learned: false) }
        let eos = tokenizer.eosTokenID.map { [$0] } ?? []
        // Each piece as it follows the one before (a SentencePiece tokenizer puts its space only at the
        // start); the first as a text's start, also after the BOS the tokenizer puts in front of a text.
        let bos = ex.ids.count
        func encode(_ text: String) -> [Int32] { tokenizer.encode(text, following: ex.ids.count > bos ? ex.ids.last : nil) }
        switch self {
        case .text(let text):
            ex.append(encode(text) + eos, learned: true)
        case .promptCompletion(let prompt, let completion):
            ex.append(encode(prompt), learned: false)
            ex.append(encode(completion) + eos, learned: true)
        case .instruction(let instruction, let input, let output):
            ex.append(encode(alpacaPrompt(instruction: instruction, input: input)), learned: false)
            ex.append(encode(output) + eos, learned: true)
        case .chat(let messages, let tools, let kwargs):
            try refuseToolsWithoutTemplate(messages, tools, kwargs)
            // The prompt side is encoded as one string up to "assistant\n", exactly as a generation prompt is.
            var pending = ""
            for m in messages {
                pending += chatMLStart + m.role + "\n"
                if m.role == "assistant" {
                    ex.append(encode(pending), learned: false)
                    ex.append(encode(m.content + chatMLEnd), learned: true)
                    pending = "\n"
                } else {
                    pending += m.content + chatMLEnd + "\n"
                }
            }
            let imEnd = tokenizer.encode(chatMLEnd)
            ex.append(encode(pending), learned: false)
            if eos != imEnd { ex.append(eos, learned: false) }
        }
        return ex
    }
}

/// Token ids with a loss mask, one flag per id (see `DataExample.tokenized`).
public struct TokenizedExample: Equatable, Sendable {
    /// Token ids, EOS (and BOS) included.
    public var ids: [Int32] = []
    /// `learned[i]`: the position before `i` is trained to predict `ids[i]`.
    public var learned: [Bool] = []

    public init() {}
    public init(ids: [Int32], learned: [Bool]) {
        check(ids.count == learned.count, "[TokenizedExample] \(ids.count) ids but \(learned.count) flags")
        self.ids = ids
        self.learned = learned
    }

    /// Appends `new` ids, all learned or all not.
    public mutating func append(_ new: [Int32], learned flag: Bool) {
        ids += new
        learned += [Bool](repeating: flag, count: new.count)
    }

    /// A conversation through its chat template (see `DataExample.tokenized`). Where the template
    /// writes each reply is found by rendering the conversation once more with a marker no text
    /// holds in place of each reply's text and of the name of each function it calls. The marker
    /// keeps what a template branches on: an empty text stays empty, and a reply's reasoning up to its
    /// last `</think>` stays (the template writes it as it chooses). The two renderings must agree
    /// around the markers, each text marker standing for its text as given or stripped, whichever
    /// lets the text after it agree.
    ///
    /// A reply is learned from where the prompt for it ends (the template's generation prompt, e.g.
    /// `<|im_start|>assistant\n`, where the conversation before it ends or found just before it; the
    /// end of that conversation for a template without one, as Mistral's; else from its text) through
    /// the token that ends its turn: the first added token after its text (e.g. `<|im_end|>`), or,
    /// after tool calls, the first token a reply ends with (`textEndTokens`; a call's own tags such as
    /// `</tool_call>` are added tokens too), looked for within the reply's own turn where that is known,
    /// else the last added token of that turn (gpt-oss's `<|call|>`, which ends no plain reply). So what a model writes after the prompt (the reasoning a
    /// template writes there, a call's JSON) is learned; the headers and what follows the end token
    /// are not. Templates that write a reply differently in the prompt for it (with `<think>`, say)
    /// need no agreement between the two.
    /// - Throws: when the renderings cannot be matched, when the template leaves out a reply or a
    ///   tool call, ignores the tools it is given, writes no added token after a reply (the model
    ///   would not learn to end one), or when the start of a reply that only calls tools cannot be found.
    mutating func appendChat(_ messages: [ChatMessage], tools: [JSONValue]? = nil, kwargs: JSONObject? = nil, _ template: ChatTemplate,
                             _ tokenizer: Tokenizer) throws {
        let toolValues = tools?.map(\.jinja), variables = kwargs?.jinjaVariables ?? [:]
        func render(_ values: [JinjaValue], tools: [JinjaValue]? = toolValues, prompt: Bool = false) throws -> [Unicode.Scalar] {
            Array(try template.render(conversation: values, tools: tools, addGenerationPrompt: prompt,
                                      specialTokens: tokenizer.specialTokenTexts, kwargs: variables).unicodeScalars)
        }
        func text(_ s: ArraySlice<Unicode.Scalar>) -> String { String(String.UnicodeScalarView(s)) }
        let (open, close): (Unicode.Scalar, Unicode.Scalar) = ("\u{10FFFD}", "\u{10FFFC}")  // private use: in no text
        // The marked strings: each reply's text (less the reasoning kept in front of it) and the
        // names of the functions it calls.
        var pieces: [(message: Int, text: String, isName: Bool)] = []
        var markedValues: [JinjaValue] = []
        for (k, m) in messages.enumerated() {
            guard m.role == "assistant" else {  // the others are written as given (a template may escape them)
                markedValues.append(m.templateValue())
                continue
            }
            var reasoning = "", body = m.content
            if let r = m.content.range(of: "</think>", options: .backwards) {
                (reasoning, body) = (String(m.content[..<r.upperBound]), String(m.content[r.upperBound...]))
            }
            var content = reasoning
            if !body.isEmpty {
                content += "\(open)\(pieces.count)\(close)"
                pieces.append((k, body, false))
            }
            let names = m.toolCallNames.map { name -> String in
                pieces.append((k, name, true))
                return "\(open)\(pieces.count - 1)\(close)"
            }
            markedValues.append(m.templateValue(content: content, toolCallNames: names))
        }
        let values = messages.map { $0.templateValue() }
        let full = try render(values)
        let marked = try render(markedValues)
        if let toolValues, !toolValues.isEmpty, (try? render(values, tools: nil)) == full {
            throw ChatTemplateError("the chat template does not write the tools it is given (it may not support tools), so the model would not see them")
        }
        func lost(_ k: Int?) -> ChatTemplateError {
            ChatTemplateError("the chat template changes \(k.map { "message \($0 + 1)'s text" } ?? "the conversation") in a way "
                + "that cannot be followed, so the replies cannot be told from the rest")
        }
        // (piece, start, end) in `full`, in order.
        var found: [(piece: Int, start: Int, end: Int)] = []
        var i = 0, j = 0
        while i < marked.count {
            guard marked[i] == open else {
                guard j < full.count, marked[i] == full[j] else { throw lost(nil) }
                i += 1
                j += 1
                continue
            }
            guard let c = marked[i...].firstIndex(of: close), let p = Int(text(marked[(i + 1)..<c])), pieces.indices.contains(p) else {
                throw lost(nil)
            }
            // The literal text up to the next marker must follow the form taken.
            let literal = marked[(c + 1)...].prefix { $0 != open }
            let given = pieces[p].text
            let forms = (pieces[p].isName ? [given] : [given, given.trimmingCharacters(in: .whitespacesAndNewlines), pythonLStrip(given), pythonRStrip(given)])
                .map { Array($0.unicodeScalars) }.sorted { $0.count > $1.count }
            guard let form = forms.first(where: { f in full[j...].starts(with: f) && full[(j + f.count)...].starts(with: literal) }) else {
                throw lost(pieces[p].message)
            }
            found.append((p, j, j + form.count))
            i = c + 1
            j += form.count
        }
        guard j == full.count else { throw lost(nil) }
        // A function's name written again after its call (a template that heads the tool's result
        // with the name of the call it answers, as gpt-oss's and Gemma 4's do) is not part of the
        // reply: the call is its first copy, when nothing of a later message comes before it.
        var firstCopy: [Int: Int] = [:]  // piece → index in `found`
        for (n, f) in found.enumerated() where pieces[f.piece].isName && firstCopy[f.piece] == nil { firstCopy[f.piece] = n }
        let callFirst = Set(firstCopy.filter { p, n in !found[..<n].contains { pieces[$0.piece].message > pieces[p].message } }.keys)
        found = found.enumerated().filter { n, f in !callFirst.contains(f.piece) || firstCopy[f.piece] == n }.map(\.element)
        // Each reply: its pieces written once each, next to each other.
        var spans: [(message: Int, first: Int, last: Int)] = []  // indices into `found`
        for (k, m) in messages.enumerated() where m.role == "assistant" {
            for (p, piece) in pieces.enumerated() where piece.message == k {
                let n = found.filter { $0.piece == p }.count
                guard n == 1 else {
                    let what = piece.isName ? "its call of \(piece.text)" : "its text"
                    throw ChatTemplateError("the chat template writes message \(k + 1) (assistant) \(what) \(n == 0 ? "nowhere" : "\(n) times"), "
                        + "so what to learn of it is not clear" + (piece.isName && n == 0 ? " (the template may not support tool calls)" : ""))
                }
            }
            let at = found.indices.filter { pieces[found[$0].piece].message == k }
            guard let first = at.first, let last = at.last else {
                throw ChatTemplateError("the chat template writes message \(k + 1) (assistant) nowhere, so what to learn of it is not clear")
            }
            guard at.count == last - first + 1 else {
                throw ChatTemplateError("the chat template writes message \(k + 1) (assistant) in parts apart, so what to learn of it is not clear")
            }
            spans.append((k, first, last))
        }
        // Where each reply's learning starts: where the prompt for it ends. When the conversation
        // before it is written as the start of the whole (most templates), that is past as much of the
        // generation prompt as the whole writes there (Qwen3 without thinking prompts with an empty
        // <think> block its past replies lack); else after the last copy of the generation prompt
        // before the reply; else, for a reply with text, its text. And where its turn ends at the
        // latest: the end of the conversation through it, when that is the start of the whole.
        var starts: [Int] = [], limits: [Int] = []
        // Where the whole writes the end of `plain` (a conversation's rendering) last, between `after`
        // and `before`: the position after the longest end of `plain` that the whole writes there,
        // when that end holds its last message's text. A template without a generation prompt that
        // writes something before the last user message only (Mistral's `[AVAILABLE_TOOLS]`) makes
        // an earlier conversation's rendering differ from the start of the whole, not its end.
        func endOfConversation(_ plain: [Unicode.Scalar], before: Int, after: Int, lastText: String) -> Int? {
            guard let tail = plain.last, after <= before else { return nil }
            var best = (length: 0, at: 0)
            for s in stride(from: before, through: max(after, 1), by: -1) where full[s - 1] == tail {
                var n = 0
                while n < plain.count, n < s, plain[plain.count - 1 - n] == full[s - 1 - n] { n += 1 }
                if n > best.length { best = (n, s) }
                if n == plain.count { break }  // the whole conversation: nothing longer can follow
            }
            let content = lastText.trimmingCharacters(in: .whitespacesAndNewlines)
            guard best.length >= min(plain.count, 16) || (!content.isEmpty && best.length > 0) else { return nil }
            return content.isEmpty || text(plain[(plain.count - best.length)...]).contains(content) ? best.at : nil
        }
        for span in spans {
            let textStart = found[span.first].start
            let gapStart = span.first > 0 ? found[span.first - 1].end : 0
            let before = Array(values[..<span.message])
            var start: Int?
            if let prompt = try? render(before, prompt: true), let plain = try? render(before) {
                var common = 0
                while common < min(prompt.count, plain.count), prompt[common] == plain[common] { common += 1 }
                let header = Array(prompt[common...])
                if header.isEmpty, plain.count <= textStart, full.starts(with: plain) {
                    start = plain.count  // no generation prompt (Mistral's kind): the reply follows the conversation before it
                } else if !header.isEmpty, plain.count < textStart, full.starts(with: plain) {
                    // As much of the prompt as the whole writes there, in whole tokens (`<think>` and a
                    // call's `<tool_call>` share their first character, not a token).
                    let previous = tokenizer.encode(text(plain[...])).last  // what the header follows
                    let wanted = tokenizer.encode(text(header[...]), following: previous)
                    let written = tokenizer.encode(text(full[plain.count..<textStart]), following: previous)
                    var n = 0
                    while n < min(wanted.count, written.count), wanted[n] == written[n] { n += 1 }
                    let matched = Array(tokenizer.decode(Array(written[..<n]), following: previous).unicodeScalars)
                    if n > 0, full[plain.count...].starts(with: matched) { start = plain.count + matched.count }
                }
                if start == nil, header.isEmpty, let at = endOfConversation(plain, before: textStart, after: gapStart, lastText: span.message > 0 ? messages[span.message - 1].content : "") {
                    start = at  // no generation prompt, and the conversation before is not the start of the whole (Mistral's tools)
                }
                if start == nil, !header.isEmpty, textStart - gapStart >= header.count {
                    start = stride(from: textStart - header.count, through: gapStart, by: -1)
                        .first { full[$0..<($0 + header.count)].elementsEqual(header) }.map { $0 + header.count }
                }
            }
            if start == nil && pieces[found[span.first].piece].isName {
                throw ChatTemplateError("where the chat template's prompt for message \(span.message + 1) (assistant, a tool call) ends cannot be "
                    + "found, so the call cannot be learned whole")
            }
            starts.append(start ?? textStart)
            let through = (try? render(Array(values[...span.message]))) ?? []
            limits.append(!through.isEmpty && full.starts(with: through) ? through.count : -1)  // -1: not known
        }
        var turnEnds: Set<Int32>?  // what a reply ends with, for replies that call tools
        var done = 0
        for (n, span) in spans.enumerated() {
            let start = starts[n], end = found[span.last].end
            let next = min(span.last + 1 < found.count ? found[span.last + 1].start : full.count, n + 1 < spans.count ? starts[n + 1] : full.count,
                           limits[n] < 0 ? full.count : max(end, limits[n]))
            guard done <= start, start <= end, end <= next else { throw lost(span.message) }  // replies out of order
            append(tokenizer.encode(text(full[done..<start]), following: self.ids.last), learned: false)
            // The reply and what follows it in one piece (as the model reads it), learned through the
            // first end token after its text: the first added token, or after tool calls the first
            // token a reply ends with (a call's own tags, like `</tool_call>`, are added tokens too).
            let ids = tokenizer.encode(text(full[start..<next]), following: self.ids.last)
            let inside = tokenizer.encode(text(full[start..<end]), following: self.ids.last)
            func nth(_ isEnd: (Int32) -> Bool) -> Int? {
                let skip = inside.filter(isEnd).count
                return ids.indices.filter { isEnd(ids[$0]) }.dropFirst(skip).first
            }
            var stop = nth { tokenizer.isAddedToken($0) }
            if !messages[span.message].toolCallNames.isEmpty {
                if turnEnds == nil { turnEnds = textEndTokens(tokenizer) }
                // A call ends with a token no plain reply ends with (gpt-oss's <|call|>): the last
                // added token of its own turn, where that turn is known.
                let lastInTurn = limits[n] >= 0 && next <= limits[n] ? ids.lastIndex { tokenizer.isAddedToken($0) } : nil
                stop = nth { turnEnds!.contains($0) } ?? lastInTurn ?? stop
            }
            guard let stop else {  // the turn's end
                throw ChatTemplateError("the chat template writes no added token (such as <|im_end|>) after message \(span.message + 1) "
                    + "(assistant), so the model would not learn to end a reply")
            }
            append(Array(ids[...stop]), learned: true)
            append(Array(ids[(stop + 1)...]), learned: false)
            done = next
        }
        append(tokenizer.encode(text(full[done...]), following: self.ids.last), learned: false)
    }
}

/// `s` without its leading (`pythonLStrip`) or trailing (`pythonRStrip`) whitespace.
func pythonLStrip(_ s: String) -> String { String(s.drop { $0.isWhitespace }) }
func pythonRStrip(_ s: String) -> String { String(s.reversed().drop { $0.isWhitespace }.reversed()) }

let chatMLStart = "<|im_start|>"
/// The token that ends every ChatML message, a reply included.
let chatMLEnd = "<|im_end|>"

/// Whether chat can be written for `tokenizer`: it has a chat template, or ChatML's `<|im_end|>` as
/// one token for the ChatML used without a template. Spelled in pieces, `<|im_end|>` would be
/// learned as ordinary text, and generation, which stops at the token, would never stop.
public func canWriteChat(_ tokenizer: Tokenizer) throws -> Bool {
    try tokenizer.compiledChatTemplate != nil || tokenizer.tokenID(for: chatMLEnd) != nil
}

/// The tokens a generated text ends at: EOS; ChatML's `<|im_end|>` where the tokenizer has it
/// (chat training without a template teaches a reply to end with it, whatever the EOS is;
/// SmolLM2-Instruct's own generation config stops at it); and the special token the chat template
/// ends an assistant turn with (`<|eot_id|>`, `<end_of_turn>`). `generate`, `backtest` and `serve`
/// all stop at these.
public func textEndTokens(_ tokenizer: Tokenizer) -> Set<Int32> {
    var ends = Set([tokenizer.eosTokenID, tokenizer.tokenID(for: chatMLEnd)].compactMap { $0 })
    // The last special token of a reply, as chat training learns it.
    let probe = [ChatMessage(role: "user", content: "Hi"), ChatMessage(role: "assistant", content: "Hello")]
    if (try? tokenizer.compiledChatTemplate) != nil, let reply = try? DataExample.chat(probe).tokenized(tokenizer),
       let last = reply.learned.lastIndex(of: true), tokenizer.isAddedToken(reply.ids[last]) {
        ends.insert(reply.ids[last])
    }
    return ends
}

/// The conversation as the model writes it: through the tokenizer's chat template when it has one
/// (as transformers' `apply_chat_template` renders it: the messages, `tools`, `add_generation_prompt`,
/// and the special tokens' texts), else in ChatML (`renderChatML`).
/// - Throws: `ChatTemplateError`: the template cannot be read, or refuses the conversation; tools or
///   tool messages without a template.
public func renderChat(_ messages: [ChatMessage], tools: [JSONValue]? = nil, templateKwargs: JSONObject? = nil, tokenizer: Tokenizer,
                       addGenerationPrompt: Bool) throws -> String {
    guard let template = try tokenizer.compiledChatTemplate else {
        try refuseToolsWithoutTemplate(messages, tools, templateKwargs)
        return renderChatML(messages, addGenerationPrompt: addGenerationPrompt)
    }
    return try template.render(conversation: messages.map { $0.templateValue() }, tools: tools?.map(\.jinja),
                               addGenerationPrompt: addGenerationPrompt, specialTokens: tokenizer.specialTokenTexts,
                               kwargs: templateKwargs?.jinjaVariables ?? [:])
}

/// The ids of a conversation `renderChat` wrote, as training data gets them: a template's text as
/// it is (the template writes a BOS where the model wants one); ChatML without a template after the
/// tokenizer's BOS when it puts one in front of every text (`Tokenizer.addsBOS`).
public func encodeChat(_ text: String, tokenizer: Tokenizer) -> [Int32] {
    let template = (try? tokenizer.compiledChatTemplate) ?? nil
    return tokenizer.encode(text, addBOS: template == nil && tokenizer.addsBOS)
}

/// ChatML without a template has no form for tools or a template's variables: they are refused
/// rather than left out.
func refuseToolsWithoutTemplate(_ messages: [ChatMessage], _ tools: [JSONValue]?, _ kwargs: JSONObject? = nil) throws {
    guard tools == nil, messages.allSatisfy({ $0.role != "tool" && $0.toolCallNames.isEmpty }) else {
        throw ChatTemplateError("tools, tool calls and tool results are written by the model's chat template, and this tokenizer has none")
    }
    guard kwargs?.members.isEmpty ?? true else {
        throw ChatTemplateError("chat_template_kwargs are variables of the model's chat template, and this tokenizer has none")
    }
}

/// ChatML, as SmolLM2 and Qwen use it: `<|im_start|>role\ncontent<|im_end|>\n` per message. With
/// `addGenerationPrompt`, `<|im_start|>assistant\n` follows (the prompt for a reply).
public func renderChatML(_ messages: [ChatMessage], addGenerationPrompt: Bool = false) -> String {
    var s = messages.map { chatMLStart + $0.role + "\n" + $0.content + chatMLEnd + "\n" }.joined()
    if addGenerationPrompt { s += chatMLStart + "assistant\n" }
    return s
}

/// The Alpaca prompt (Taori et al., 2023) that instruction data is rendered with; the output follows it directly.
///
/// With a non-empty input:
/// `"Below is an instruction that describes a task, paired with an input that provides further context. Write a
/// response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"`;
/// without one, the first sentence ends after "a task." and the Input section is left out.
public func alpacaPrompt(instruction: String, input: String?) -> String {
    if let input, !input.isEmpty {
        return "Below is an instruction that describes a task, paired with an input that provides further context. "
            + "Write a response that appropriately completes the request.\n\n### Instruction:\n\(instruction)\n\n"
            + "### Input:\n\(input)\n\n### Response:\n"
    }
    return "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        + "\n\n### Instruction:\n\(instruction)\n\n### Response:\n"
}

// MARK: reading

/// Reads examples from `path`: a file of records (JSON Lines `.jsonl`/`.ndjson`, a `.json` array of objects
/// or JSON Lines, a `.csv` or `.tsv` table with a header row, a `.parquet`, `.arrow` or `.feather` file; see
/// `readExampleFile`), a text file, a folder (every file of records in it, sorted by path, or else every
/// `.txt`/`.md`/`.rst` file; a folder holding both kinds is an error; a folder that `datasets`' `save_to_disk`
/// wrote, `savedDatasetFiles`; a folder whose files name splits, as mlx-lm's train.jsonl and valid.jsonl: its
/// train split, or "FOLDER:SPLIT"'s, `localSplitFiles`), a pattern of files of records (`dataPatternFiles`),
/// or a Hub data set in the local Hugging Face cache ("tatsu-lab/alpaca", "openai/gsm8k:main:test", `hubData`).
///
/// A text file is one `.text` document (format `.plainText`). Every record (a JSONL line, an array item, a
/// table row) is one example, with the keys of a JSONL line (a table's header names them); empty lines are
/// skipped, and they are the only thing skipped: any record that is not a valid example stops reading with a
/// `DatasetError` naming the file and line. All records (and all files of a folder) must have one format.
/// `columns` names the data's own columns for the keys read (`ColumnMap`).
public func readExamples(_ path: String, columns: ColumnMap = ColumnMap()) throws -> (format: DataFormat, examples: [DataExample]) {
    let (format, located, _) = try readLocatedExamples(path, columns: columns)
    return (format, located.map(\.example))
}

/// The files a data path names when it is a pattern (`*`, `?` or `[…]` in it, as the shell and Hugging
/// Face's `data_files` read one: "data/train-*.parquet" for a data set's shards), sorted; nil when no
/// pattern, or when a file of that very name exists.
public func dataPatternFiles(_ path: String) -> [String]? {
    guard path.contains(where: { "*?[".contains($0) }), !FileManager.default.fileExists(atPath: path) else { return nil }
    var matches = glob_t()
    defer { globfree(&matches) }
    guard glob(path, 0, nil, &matches) == 0 else { return [] }
    return (0..<Int(matches.gl_pathc)).compactMap { matches.gl_pathv[$0].map { String(cString: $0) } }.sorted()
}

/// What a data path names: the path to read (a Hub id's path in its snapshot, else the path itself)
/// and, for a pattern (`dataPatternFiles`), a Hub data set's split (`hubData`), a folder that Hugging
/// Face's `save_to_disk` wrote (`savedDatasetFiles`) or a local folder whose files name splits
/// (`localSplitFiles`: its train split, or "FOLDER:SPLIT"'s), its files.
/// - Throws: `DatasetError` naming the path: a pattern that matches nothing or matches a file that is
///   not records; a Hub id that the local Hugging Face cache cannot serve.
func dataFiles(_ path: String) throws -> (path: String, files: [String]?) {
    switch try hubData(path) {
    case .path(let local)?: return try dataFiles(local)
    case .files(let split)?: return (path, split)
    case nil: break
    }
    if let saved = try savedDatasetFiles(path) { return (path, saved) }
    if let split = try localSplitFiles(path) { return (path, split) }
    guard let matched = dataPatternFiles(path) else { return (path, nil) }
    guard !matched.isEmpty else { throw DatasetError(file: path, line: nil, message: "no file matches this pattern") }
    if let other = matched.first(where: { DataRecordFormat(path: $0) == nil }) {
        throw DatasetError(file: path, line: nil, message: "the pattern matches \(other), which is not a file of records ("
            + DataRecordFormat.extensions.joined(separator: ", ") + "); a pattern reads files of records, a folder reads text files")
    }
    return (path, matched)
}

/// The Arrow files of a folder that Hugging Face `datasets`' `save_to_disk` wrote, in its order: a
/// `Dataset` (its `state.json` lists them) or a `DatasetDict` (`dataset_dict.json` lists its splits, each
/// in a folder of its own: the `train` split's files; `folder/test` names another). Nil for any other path.
/// - Throws: `DatasetError` naming the file: a `state.json` or `dataset_dict.json` that does not read, a
///   listed file missing, a `DatasetDict` without a train split.
func savedDatasetFiles(_ path: String) throws -> [String]? {
    let folder = URL(fileURLWithPath: path)
    func json(_ name: String) throws -> [String: Any]? {
        let file = folder.appendingPathComponent(name).path
        guard FileManager.default.fileExists(atPath: file) else { return nil }
        guard let data = FileManager.default.contents(atPath: file),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw DatasetError(file: file, line: nil, message: "not a JSON object, as `datasets`' save_to_disk writes it")
        }
        return object
    }
    if let state = try json("state.json") {
        let file = folder.appendingPathComponent("state.json").path
        guard let listed = state["_data_files"] as? [[String: Any]], !listed.isEmpty else {
            throw DatasetError(file: file, line: nil, message: "no \"_data_files\" list of Arrow files, as `datasets`' save_to_disk writes it")
        }
        return try listed.map { entry in
            guard let name = entry["filename"] as? String, !name.contains("/"), DataRecordFormat(path: name) == .arrow else {
                throw DatasetError(file: file, line: nil, message: "\"_data_files\" names \(entry["filename"] ?? "no filename"), not an .arrow file in its folder")
            }
            let arrow = folder.appendingPathComponent(name).path
            guard FileManager.default.fileExists(atPath: arrow) else {
                throw DatasetError(file: arrow, line: nil, message: "no such file, though \(file) lists it")
            }
            return arrow
        }
    }
    if let dict = try json("dataset_dict.json") {
        let file = folder.appendingPathComponent("dataset_dict.json").path
        guard let splits = dict["splits"] as? [String] else {
            throw DatasetError(file: file, line: nil, message: "no \"splits\" list, as `datasets`' save_to_disk writes it")
        }
        guard splits.contains("train") else {
            throw DatasetError(file: path, line: nil, message: "a saved DatasetDict without a train split; name one of its splits' folders: "
                + splits.map { folder.appendingPathComponent($0).path }.joined(separator: ", "))
        }
        return try savedDatasetFiles(folder.appendingPathComponent("train").path)
            ?? { throw DatasetError(file: folder.appendingPathComponent("train").path, line: nil, message: "no state.json, as `datasets`' save_to_disk writes a split") }()
    }
    return nil
}

/// An example with the file and line it was read from (no line for a text file's document).
typealias LocatedExample = (example: DataExample, file: String, line: Int?)

/// `readExamples`, with where each example was read, and the keys of records that its format
/// does not read (a misspelled "promt", a dataset's "id" or "source") with the records holding each.
func readLocatedExamples(_ path: String, columns: ColumnMap = ColumnMap()) throws -> (format: DataFormat, examples: [LocatedExample], unreadKeys: [String: Int]) {
    var isDir: ObjCBool = false
    var files: [String] = []
    let (path, matched) = try dataFiles(path)
    if let matched {
        files = matched
    } else if !FileManager.default.fileExists(atPath: path, isDirectory: &isDir) {
        throw DatasetError(file: path, line: nil, message: "no such file or folder")
    } else if isDir.boolValue {
        let e = FileManager.default.enumerator(atPath: path)
        var texts = 0
        while let f = e?.nextObject() as? String {
            if DataRecordFormat(path: f) != nil { files.append(path + "/" + f) }
            if isTextFile(f) { texts += 1 }
        }
        files.sort()
        if files.isEmpty && texts == 0 {
            throw DatasetError(file: path, line: nil, message: "the folder holds no "
                + (DataRecordFormat.extensions + [".txt", ".md"]).joined(separator: ", ") + " or .rst files")
        }
        if !files.isEmpty && texts > 0 {
            throw DatasetError(file: path, line: nil, message: "the folder holds both files of records (\(files.count): "
                + "JSONL, JSON, CSV, TSV, Parquet, Arrow) and \(texts) text files; put the examples of one format in a folder of their own")
        }
    } else if DataRecordFormat(path: path) != nil {
        files = [path]
    } else if let table = ["xlsx", "xls", "ods"].first(where: { path.lowercased().hasSuffix("." + $0) }) {
        throw DatasetError(file: path, line: nil, message: "a .\(table) file is not read (it would be learned as plain text); "
            + "save it as Parquet, as CSV with a header row, or as JSONL, one object per line: {\"text\": …}, "
            + "{\"prompt\": …, \"completion\": …} or {\"messages\": […]}")
    }
    // A Hub data set's `.txt` split: each file one document, as a folder of text files is read.
    let documents = files.isEmpty ? [path] : files.allSatisfy(isTextFile) ? files : []
    if !documents.isEmpty {
        do {
            return (.plainText, try documents.flatMap { file in try readTextCorpus(file).map { (.text($0), file, nil) } }, [:])
        } catch let e as CorpusError {
            throw DatasetError(file: e.path, line: nil, message: e.message)
        }
    }
    var format: (DataFormat, String)?
    var all: [LocatedExample] = []
    var unread: [String: Int] = [:]
    for file in files {
        let examples = try readExampleFile(file, unreadKeys: &unread, columns: columns)
        guard let first = examples.first else { continue }
        if let (f, other) = format, f != first.example.format {
            throw DatasetError(file: file, line: first.line, message: "this file holds \(first.example.format.rawValue) "
                + "data but \(other) holds \(f.rawValue) data; the files of one data set must have one format")
        }
        format = format ?? (first.example.format, file)
        all += examples.map { ($0.example, file, $0.line) }
    }
    guard let (f, _) = format else {
        throw DatasetError(file: path, line: nil, message: "holds no examples (only empty lines, an empty array or a header)")
    }
    return (f, all, unread)
}

/// The examples of one file of records, with the 1-based line each starts on: JSON Lines (`.jsonl`,
/// `.ndjson`), a `.json` array of objects (or JSON Lines, as Hugging Face's `to_json` writes them), a `.csv`
/// or `.tsv` table whose header row names the keys (every cell a string; quoting as Python's `csv` module
/// and spreadsheets write it), a `.parquet` file (its columns the keys, its rows numbered from 1; a null
/// value is a key not given). Empty lines are skipped. Throws at the first bad record: invalid UTF-8 or
/// JSON, not an object, no known keys, a missing key, a value of the wrong type, an empty
/// text/prompt/completion/output/instruction, an unknown chat role, a chat without an assistant turn, or a
/// record whose format differs from the first one's; and at a table's ragged row or unclosed quote.
public func readExampleFile(_ file: String) throws -> [(line: Int, example: DataExample)] {
    var unread: [String: Int] = [:]
    return try readExampleFile(file, unreadKeys: &unread)
}

/// `readExampleFile`, counting in `unreadKeys` the records holding each key their format does not read,
/// with each record's columns renamed by `columns` first (an error then says so).
func readExampleFile(_ file: String, unreadKeys: inout [String: Int], columns: ColumnMap = ColumnMap()) throws -> [(line: Int, example: DataExample)] {
    var out: [(line: Int, example: DataExample)] = []
    let kind = DataRecordFormat(path: file)
    let what = kind == .jsonLines ? "line" : kind == .parquet || kind == .arrow ? "row" : "record"
    var counts: [String: Int] = [:]
    for record in try readDataRecords(file, unread: { counts[$0, default: 0] += 1 }) {
        let example: DataExample
        do {
            example = try parseRecord(record, file: file, columns: columns) { counts[$0, default: 0] += 1 }
        } catch let e as DatasetError where !columns.isEmpty {
            throw DatasetError(file: e.file, line: e.line, message: e.message + " (read with --columns \(columns))")
        }
        if let first = out.first, first.example.format != example.format {
            throw DatasetError(file: file, line: record.line, message: "this \(what) is \(example.format.rawValue) data but "
                + (what == "record" ? "the record at line \(first.line)" : "\(what) \(first.line)") + " is \(first.example.format.rawValue) data; a file holds one format")
        }
        out.append((record.line, example))
    }
    for (k, n) in counts { unreadKeys[k, default: 0] += n }
    return out
}

/// A JSON `"messages"` value → chat turns: a non-empty list of objects with a "role" (system, user,
/// assistant or tool) and a string "content" (an assistant's not empty unless it calls tools; then
/// it may also be null or absent, which the template gets as None). An assistant's "tool_calls" is a
/// list of calls, each naming its function (`function.name`, or `name`); null or [] is no calls, as
/// Hugging Face's datasets write it. Other keys are kept, in order, for the template. `fail` makes
/// the error for a message (its text names the message).
func parseChatMessages(_ messages: JSONValue, fail: (String) -> Error) throws -> [ChatMessage] {
    guard case .array(let list) = messages else { throw fail("\"messages\" must be an array, found \(messages.kind)") }
    guard !list.isEmpty else { throw fail("\"messages\" is empty") }
    return try list.enumerated().map { k, item in
        let what = "message \(k + 1): "
        guard case .object(let m) = item else { throw fail("\(what)expected an object, found \(item.kind)") }
        guard let r = m["role"] else { throw fail("\(what)missing the key \"role\"") }
        guard let role = r.string else { throw fail("\(what)\"role\" must be a string, found \(r.kind)") }
        guard ["system", "user", "assistant", "tool"].contains(role) else {
            throw fail("\(what)unknown role \"\(role)\"; expected \"system\", \"user\", \"assistant\" or \"tool\"")
        }
        var fields = JSONObject(m.members.filter { $0.key != "role" && $0.key != "content" }.map { ($0.key, $0.value) })
        var calls = 0
        // null and [] are no calls (Hugging Face's datasets write null where a message has none).
        if let t = fields["tool_calls"], t != .null, t != .array([]) {
            guard role == "assistant" else { throw fail("\(what)only an assistant message calls tools (\"tool_calls\")") }
            guard case .array(let list) = t else { throw fail("\(what)\"tool_calls\" must be an array, found \(t.kind)") }
            for (j, call) in list.enumerated() where (call["function"]?["name"] ?? call["name"])?.string?.isEmpty != false {
                throw fail("\(what)tool call \(j + 1) names no function; expected {\"type\": \"function\", \"function\": {\"name\": …, \"arguments\": …}}")
            }
            calls = list.count
        }
        var content = ""
        if case .string(let s)? = m["content"] {
            content = s
        } else if calls > 0 && (m["content"] == nil || m["content"] == .null) {
            fields["content"] = .null
        } else if let c = m["content"] {
            throw fail("\(what)\"content\" must be a string, found \(c.kind)")
        } else {
            throw fail("\(what)missing the key \"content\"")
        }
        if role == "assistant" && content.isEmpty && calls == 0 { throw fail("\(what)\"content\" is empty") }
        return ChatMessage(role: role, content: content, fields: fields)
    }
}

/// The keys a record's conversation may be under, first found first: `"messages"`, or ShareGPT's
/// `"conversations"` (as axolotl, LLaMA-Factory and unsloth read it; lmsys-chat-1m's `"conversation"`),
/// which count only when they hold a list (a text record's "conversation" may be its title).
let conversationKeys = ["messages", "conversations", "conversation"]

/// The first of `conversationKeys` that `record` holds.
func conversationKey(in record: [String: Any]) -> String? {
    conversationKeys.first { record[$0] != nil && ($0 == "messages" || record[$0] is [Any]) }
}

/// ShareGPT's speakers ("from") → chat roles.
private let shareGPTRoles = ["human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
                             "system": "system", "tool": "tool", "observation": "tool", "function_response": "tool"]

/// A record's conversation under `key` (see `conversationKey(in:)`) as a `"messages"` value.
/// ShareGPT's turns `{"from": "human" | "gpt" | "system" | "observation" | …, "value": …}` become
/// `{"role", "content"}` (a turn's other keys kept after them); LLaMA-Factory's `"function_call"` turn,
/// whose value is the JSON text of a call `{"name", "arguments"}` or of a list of calls, becomes an
/// assistant's `"tool_calls"`; its `"system"` key becomes a first system message. Turns written
/// `{"role", "content"}` already are kept as they are.
func conversation(_ key: String, in record: JSONValue, fail: (String) -> Error) throws -> JSONValue {
    guard let value = record[key] else { throw fail("missing the key \"\(key)\"") }
    if key == "messages" { return value }
    guard case .array(let turns) = value else { throw fail("\"\(key)\" must be an array of turns, found \(value.kind)") }
    var messages: [JSONValue] = []
    if let system = record["system"], system != .null {
        guard let text = system.string else { throw fail("\"system\" must be a string (the system message), found \(system.kind)") }
        if !text.isEmpty { messages.append(.object(JSONObject([("role", .string("system")), ("content", .string(text))]))) }
    }
    for (k, turn) in turns.enumerated() {
        let what = "\(key) turn \(k + 1): "
        guard case .object(let t) = turn else { throw fail("\(what)expected an object, found \(turn.kind)") }
        if t["from"] == nil && t["role"] != nil { messages.append(turn); continue }
        guard let from = t["from"] else { throw fail("\(what)missing the key \"from\" (a ShareGPT turn is {\"from\": \"human\", \"value\": …})") }
        guard let speaker = from.string else { throw fail("\(what)\"from\" must be a string, found \(from.kind)") }
        guard let said = t["value"] else { throw fail("\(what)missing the key \"value\" (a ShareGPT turn is {\"from\": \"human\", \"value\": …})") }
        var message = JSONObject()
        if speaker == "function_call" {
            guard let text = said.string, let calls = try? JSONValue(parsing: text) else {
                throw fail("\(what)a \"function_call\" turn's \"value\" must be the JSON text of {\"name\": …, \"arguments\": …} or a list of them")
            }
            let list: [JSONValue]
            if case .array(let l) = calls { list = l } else { list = [calls] }
            message["role"] = .string("assistant")
            message["content"] = .null
            message["tool_calls"] = .array(try list.enumerated().map { j, call in
                guard let name = call["name"]?.string, !name.isEmpty else { throw fail("\(what)call \(j + 1) names no function (\"name\")") }
                return .object(JSONObject([("type", .string("function")), ("function", .object(JSONObject([
                    ("name", .string(name)), ("arguments", call["arguments"] ?? .object(JSONObject()))])))]))
            })
        } else {
            guard let role = shareGPTRoles[speaker] else {
                throw fail("\(what)unknown speaker \"\(speaker)\" in \"from\"; expected \"human\", \"gpt\", \"system\", "
                    + "\"observation\" or \"function_call\" (or \"user\", \"assistant\", \"tool\")")
            }
            message["role"] = .string(role)
            message["content"] = said
        }
        for (k2, v2) in t.members where k2 != "from" && k2 != "value" { message[k2] = v2 }
        messages.append(.object(message))
    }
    return .array(messages)
}

/// A JSON `"tools"` value → the tools' schemas: null, or a list of objects (given to the chat template as they
/// are), or that list's JSON text (as LLaMA-Factory and many Hub data sets store it, one string per record).
func parseTools(_ tools: JSONValue?, fail: (String) -> Error) throws -> [JSONValue]? {
    guard var tools, tools != .null else { return nil }
    if case .string(let text) = tools {
        do { tools = try JSONValue(parsing: text) } catch {
            throw fail("\"tools\" is text that is not JSON (\(error)); expected a list of JSON schemas of functions, or its JSON text")
        }
    }
    guard case .array(let list) = tools, list.allSatisfy({ if case .object = $0 { true } else { false } }) else {
        throw fail("\"tools\" must be an array of objects (JSON schemas of functions), found \(tools.kind)")
    }
    return list
}

/// A JSON `"chat_template_kwargs"` value → the chat template's own variables: null, or an object.
func parseTemplateKwargs(_ kwargs: JSONValue?, fail: (String) -> Error) throws -> JSONObject? {
    guard let kwargs, kwargs != .null else { return nil }
    guard case .object(let o) = kwargs else {
        throw fail("\"chat_template_kwargs\" must be an object of the chat template's variables (e.g. {\"enable_thinking\": false}), found \(kwargs.kind)")
    }
    return o
}

/// One record (a JSONL line, a `.json` array's item, a table's row) → an example. The format is chosen by the first of these keys present: "messages" (chat),
/// "conversations" or "conversation" holding a list (ShareGPT chat, see `conversation(_:in:fail:)`), "instruction" or
/// "output" (instruction), "prompt" or "completion" (prompt/completion), "text"; other keys
/// are not read (Alpaca files, for instance, carry a rendered "text" next to "instruction"), and each is
/// passed to `unread`. `columns` names the record's own columns for these keys (`ColumnMap.rename`).
func parseRecord(_ record: DataRecord, file: String, columns: ColumnMap = ColumnMap(), unread: (String) -> Void = { _ in }) throws -> DataExample {
    let line = record.line
    func fail(_ message: String) -> DatasetError { DatasetError(file: file, line: line, message: message) }
    func invalid(_ error: Error) -> DatasetError {
        guard case .text(let bytes) = record.content else { return fail("\(error)") }  // a table's row is read already
        let problem = jsonLineProblem(bytes, foundationError: error)
        return DatasetError(file: file, line: line + problem.linesIn, message: "invalid JSON " + problem.text)
    }
    if case .text(let bytes) = record.content, String(data: bytes, encoding: .utf8) == nil { throw fail("the line is not valid UTF-8") }
    let value: Any
    do { value = try record.foundationValue() } catch { throw invalid(error) }
    guard let read = value as? [String: Any] else {
        throw fail("expected a JSON object, found \(jsonKind(value))")
    }
    let object = columns.rename(read, unread: unread)
    func string(_ key: String, required: Bool = true, nonEmpty: Bool = true, in o: [String: Any] = object,
                what: String = "") throws -> String? {
        guard let v = o[key] else {
            if required { throw fail("\(what)missing the key \"\(key)\" (found \(o.keys.sorted().map { "\"\($0)\"" }.joined(separator: ", ")))") }
            return nil
        }
        // An optional key's null is the key not given, as a Parquet or Arrow column's null is (`datasets`'
        // to_json and polars write Alpaca's empty "input" as null).
        if v is NSNull && !required { return nil }
        guard let s = v as? String else { throw fail("\(what)\"\(key)\" must be a string, found \(jsonKind(v))") }
        if nonEmpty && s.isEmpty { throw fail("\(what)\"\(key)\" is empty") }
        return s
    }
    func reading(_ keys: Set<String>) { for k in object.keys where !keys.contains(k) { unread(k) } }
    if let key = conversationKey(in: object) {
        reading(Set([key, "tools", "chat_template_kwargs"] + (key == "messages" ? [] : ["system"])))
        // Read again keeping the order of keys, which the chat template sees (tool schemas, arguments).
        let ordered: JSONValue
        do { ordered = columns.rename(try record.ordered()) } catch { throw invalid(error) }
        let turns = try parseChatMessages(try conversation(key, in: ordered, fail: fail), fail: fail)
        guard turns.contains(where: { $0.role == "assistant" }) else {
            throw fail("no \"assistant\" message: chat data learns only the assistant's turns")
        }
        return .chat(turns, tools: try parseTools(ordered["tools"], fail: fail),
                     templateKwargs: try parseTemplateKwargs(ordered["chat_template_kwargs"], fail: fail))
    }
    if object["instruction"] != nil || object["output"] != nil {
        reading(["instruction", "input", "output"])
        return .instruction(instruction: try string("instruction")!,
                            input: try string("input", required: false, nonEmpty: false), output: try string("output")!)
    }
    if object["prompt"] != nil || object["completion"] != nil {
        reading(["prompt", "completion"])
        // An empty prompt would leave the completion's first token with no position to predict it from.
        let prompt = try string("prompt", nonEmpty: false)!
        if prompt.isEmpty { throw fail("\"prompt\" is empty; write examples without a prompt as {\"text\": …}") }
        return .promptCompletion(prompt: prompt, completion: try string("completion")!)
    }
    if object["text"] != nil {
        reading(["text"])
        return .text(try string("text")!)
    }
    let keys = object.keys.sorted().map { "\"\($0)\"" }.joined(separator: ", ")
    throw fail("no known keys (found \(keys.isEmpty ? "none" : keys)); expected \"text\", \"prompt\" + \"completion\", "
        + "\"instruction\" + \"output\" (+ \"input\"), \"messages\", or ShareGPT's \"conversations\"")
}

/// "a string", "a number", … for error messages.
func jsonKind(_ v: Any) -> String {
    switch v {
    case is NSNull: return "null"
    case is String: return "a string"
    case is [Any]: return "an array"
    case is [String: Any]: return "an object"
    case is NSNumber: return "\(type(of: v))".contains("Boolean") ? "a boolean" : "a number"
    default: return "\(type(of: v))"
    }
}

/// Where and why a record (a JSONL line, or an item of a JSON array, which may span lines) is not JSON,
/// as the strict parser (`JSONValue`) finds it: the lines into the record (0 for its first) and "at
/// column 9 (expected ':' after a key): {"text" "two"}", the text around that column shown; Foundation's
/// own words (`foundationError`) when only Foundation refuses the record.
func jsonLineProblem(_ bytes: Data, foundationError: Error) -> (linesIn: Int, text: String) {
    let text = String(decoding: bytes, as: UTF8.self)
    do {
        _ = try JSONValue(parsing: text)
    } catch let e as JSONParseError {
        let at = e.position(in: text)
        let lines = text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline)
        let chars = Array(lines[min(at.line, lines.count) - 1]), column = at.column
        let from = max(0, min(column - 41, chars.count)), to = min(chars.count, column + 19)
        let excerpt = (from > 0 ? "…" : "") + String(chars[from..<to]) + (to < chars.count ? "…" : "")
        return (at.line - 1, "at column \(column) (\(e.message)): \(excerpt)")
    } catch {}
    return (0, "(\(jsonSyntaxDetail(foundationError))): \(preview(bytes))")
}

/// The start of a bad line, for an error message.
func preview(_ bytes: Data) -> String {
    let s = String(decoding: bytes.prefix(60), as: UTF8.self)
    return bytes.count > 60 ? s + "…" : s
}
