// Back-testing: templates and the prompts file (errors name file and line), the scores (ROUGE-L,
// exact match, contains, word diff) on hand-computed cases, a run on a tiny model whose outputs equal
// `generate` and whose loss equals one computed from the logits, samples and their agreement, the
// report folder, and the cost meter (RAPL counters from a fixture folder, wrap-around included).

import XCTest
@testable import Training
import TensorCore
import NN
import Models
import Tokenizers
import PEFT
import Containers
import Formats
import TestSupport

final class BacktestTests: XCTestCase {
    var dir: URL!
    override func setUp() {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("swiftpeft-backtest-\(UUID().uuidString)")
        try! FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }
    override func tearDown() { try? FileManager.default.removeItem(at: dir) }

    func write(_ name: String, _ text: String) -> String {
        let p = dir.appendingPathComponent(name).path
        XCTAssertTrue(FileManager.default.createFile(atPath: p, contents: Data(text.utf8)), p)
        return p
    }

    // MARK: templates and prompts

    func testTemplates() throws {
        XCTAssertEqual(try renderTemplate("Q: {q}\nA: {{literal}} {'a': 1} {x_2}", ["q": "why?", "x_2": "7"], at: "t"),
                       "Q: why?\nA: {literal} {'a': 1} 7")
        XCTAssertThrowsError(try renderTemplate("{a} {b}", ["a": "1"], at: "p.jsonl:3")) {
            XCTAssertTrue("\($0)".contains("p.jsonl:3") && "\($0)".contains("{b}"), "\($0)")
        }
        XCTAssertThrowsError(try renderTemplate("{a}", ["a": "1", "extra": "2"], at: "p.jsonl:4")) {
            XCTAssertTrue("\($0)".contains("p.jsonl:4") && "\($0)".contains("\"extra\" is not used"), "\($0)")
        }
        XCTAssertThrowsError(try renderTemplate("{b}", [:], at: "p.jsonl:5")) {
            XCTAssertTrue("\($0)".contains("the line gives it no value (no variables given;"), "\($0)")
        }
        // A placeholder missing its "}" is named (it reached the model as typed, or read as an unused variable).
        for template in ["Q {q", "Question: {question\nAnswer:"] {
            let name = template.contains("question") ? "question" : "q"
            XCTAssertThrowsError(try renderTemplate(template, [name: "x"], at: "p.jsonl:6")) {
                XCTAssertTrue("\($0)".contains("p.jsonl:6: the template's \"{\(name)\" is never closed by \"}\""), "\($0)")
            }
        }
        // A brace that opens no name, or one closed later, is text as before.
        XCTAssertEqual(try renderTemplate("T {} and { x", [:], at: "t"), "T {} and { x")
        XCTAssertEqual(try renderTemplate("{'a': {b}", ["b": "1"], at: "t"), "{'a': 1")
    }

    func testPromptsFile() throws {
        _ = write("faq.tmpl", "Question: {question}\nAnswer:")
        let path = write("p.jsonl", """
            {"id": "a", "template_file": "faq.tmpl", "vars": {"question": "What is 2+2?"}, "expected": "4", "tags": "math"}

            {"prompt": "Hello", "tags": ["greet", "short"]}
            {"vars": {"question": 7}}
            {"prompt": "Question: Why?\\nAnswer:", "completion": " Because."}
            """)
        let ps = try loadBacktestPrompts(path, defaultTemplate: "Q{question}")
        XCTAssertEqual(ps, [BacktestPrompt(id: "a", prompt: "Question: What is 2+2?\nAnswer:", expected: "4", tags: ["math"]),
                            BacktestPrompt(id: "line 3", prompt: "Hello", expected: nil, tags: ["greet", "short"]),
                            BacktestPrompt(id: "line 4", prompt: "Q7", expected: nil, tags: []),
                            BacktestPrompt(id: "line 5", prompt: "Question: Why?\nAnswer:", expected: " Because.", tags: [])])
        // The same file with Windows line ends ("\r\n" is one Character in Swift) gives the same prompts.
        let crlf = write("crlf.jsonl", try String(contentsOfFile: path, encoding: .utf8).replacingOccurrences(of: "\n", with: "\r\n"))
        XCTAssertEqual(try loadBacktestPrompts(crlf, defaultTemplate: "Q{question}"), ps)
        // A table names the fields in its header; an empty cell is a field not given. A JSON array's
        // items are named by the line each starts on.
        let table = write("p.csv", "id,template_file,prompt,expected,tags\r\na,faq.tmpl,,,math\r\n,,Hello,,greet\r\n,,\"Question: Why?\nAnswer:\", Because.,\r\n")
        XCTAssertThrowsError(try loadBacktestPrompts(table)) { XCTAssertTrue("\($0)".contains("p.csv:2: the template uses {question}"), "\($0)") }
        let csv = write("q.csv", "prompt,expected,tags\nHello,,\"greet\"\n\"Question: Why?\nAnswer:\", Because.,\n")
        XCTAssertEqual(try loadBacktestPrompts(csv), [BacktestPrompt(id: "line 2", prompt: "Hello", expected: nil, tags: ["greet"]),
                                                      BacktestPrompt(id: "line 3", prompt: "Question: Why?\nAnswer:", expected: " Because.", tags: [])])
        let array = write("q.json", "[\n  {\"prompt\": \"Hello\", \"tags\": \"greet\"},\n  {\"prompt\": \"Question: Why?\\nAnswer:\",\n   \"completion\": \" Because.\"}\n]\n")
        XCTAssertEqual(try loadBacktestPrompts(array), try loadBacktestPrompts(csv))
        // A chat data set in Parquet, with an int64 "id" column, serves as its JSONL does, named by its ids.
        let tables = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/tables")
        let fromParquet = try loadBacktestPrompts(tables.appendingPathComponent("chat.parquet").path)
        var fromJSONL = try loadBacktestPrompts(tables.appendingPathComponent("chat.jsonl").path)
        XCTAssertEqual(fromJSONL.map(\.id), ["line 1", "line 2"])
        for k in fromJSONL.indices { fromJSONL[k].id = "\(k + 1)" }
        XCTAssertEqual(fromParquet, fromJSONL)
        XCTAssertEqual(try loadBacktestPrompts(write("n.jsonl", #"{"id": 7, "prompt": "a"}"#)).map(\.id), ["7"])
        // A data set's own columns by --columns; the columns it does not name are not read (not refused).
        let qa = write("qa.jsonl", #"{"question": "2+2?", "answer": " 4", "source": "gsm", "prompt": "stale"}"#)
        let columns = try ColumnMap(parsing: "prompt=question,expected=answer", keys: backtestColumnKeys)
        XCTAssertEqual(try loadBacktestPrompts(qa, columns: columns), [BacktestPrompt(id: "line 1", prompt: "2+2?", expected: " 4", tags: [])])
        XCTAssertThrowsError(try loadBacktestPrompts(qa)) { XCTAssertTrue("\($0)".contains(#"unknown field "answer""#), "\($0)") }
        // A Parquet row is named by its number; without an "id" column, so is the prompt.
        let examples = tables.appendingPathComponent("examples.parquet").path
        XCTAssertThrowsError(try loadBacktestPrompts(examples)) { XCTAssertEqual("\($0)", examples + #": row 1: unknown field "input"; fields: "#
            + "chat_template_kwargs, completion, conversation, conversations, expected, id, messages, prompt, system, tags, template, template_file, tools, vars") }
        XCTAssertThrowsError(try loadBacktestPrompts(write("r.csv", "prompt,expected\na\n"))) {
            XCTAssertTrue("\($0)".contains("r.csv:2: 1 cells, but the header (line 1) has 2 columns"), "\($0)")
        }
        for (text, needle) in [(#"{"prompt": "x"}"# + "\n" + #"{"promt": "y"}"#, ":2: unknown field \"promt\""),
                               (#"{"prompt": "x"}"# + "\n" + "{oops", ":2: not a JSON object"),
                               (#"{"id": "x", "prompt": "a"}"# + "\n" + #"{"id": "x", "prompt": "b"}"#, ":2: the id \"x\" is used twice"),
                               (#"{"template": "{a}"}"#, ":1: the template uses {a}"),
                               (#"{"vars": {"a": 1}}"#, ":1: no template"),
                               (#"{"prompt": "a", "template": "b"}"#, ":1: give one of"),
                               (#"{"template_file": "missing.tmpl"}"#, ":1: cannot read the template file"),
                               (#"{"prompt": "a", "tags": [1]}"#, ":1: \"tags\" must be strings"),
                               (#"{"template": "{a}", "vars": {"a": true}}"#, ":1: the variable \"a\" must be a string or a number"),
                               (#"{"prompt": "a", "expected": ""}"#, ":1: the expected answer is empty or only whitespace"),
                               (#"{"prompt": "a", "completion": " \n"}"#, ":1: the expected answer is empty or only whitespace"),
                               (#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]}"#, ":1: message 2: \"content\" is empty"),
                               ("\n\n", "no prompts")] {
            let p = write("bad.jsonl", text)
            XCTAssertThrowsError(try loadBacktestPrompts(p)) { XCTAssertTrue("\($0)".contains(p) && "\($0)".contains(needle), "\($0) vs \(needle)") }
        }
        // A line that is not UTF-8 is named by its line (a Latin-1 "é" on line 2).
        let latin1 = dir.appendingPathComponent("latin1.jsonl").path
        XCTAssertTrue(FileManager.default.createFile(atPath: latin1, contents: Data(#"{"prompt": "a"}"#.utf8) + Data([0x0A]) + Data(#"{"prompt": "caf"#.utf8) + Data([0xE9, 0x22, 0x7D, 0x0A])))
        XCTAssertThrowsError(try loadBacktestPrompts(latin1)) { XCTAssertEqual("\($0)", latin1 + ":2: not UTF-8 text") }
        // A pattern reads every matching file in sorted order; prompts without an id are named by file and line.
        let sets = dir.appendingPathComponent("sets")
        try FileManager.default.createDirectory(at: sets, withIntermediateDirectories: true)
        _ = write("sets/b.csv", "prompt,expected\nHello,hi\n")
        _ = write("sets/a.jsonl", #"{"id": "q", "prompt": "2+2?", "expected": "4"}"# + "\n" + #"{"prompt": "3+3?"}"#)
        XCTAssertEqual(try loadBacktestPrompts(sets.path + "/*"),
                       [BacktestPrompt(id: "q", prompt: "2+2?", expected: "4", tags: []), BacktestPrompt(id: "a.jsonl line 2", prompt: "3+3?", expected: nil, tags: []),
                        BacktestPrompt(id: "b.csv line 2", prompt: "Hello", expected: "hi", tags: [])])
        XCTAssertEqual(try loadBacktestPrompts(sets.path + "/*.csv").map(\.id), ["line 2"])
        _ = write("sets/c.jsonl", #"{"id": "q", "prompt": "again"}"#)
        _ = write("sets/notes.txt", "not prompts")
        for (pattern, message) in [("sets/*.jsonl", "c.jsonl:1: the id \"q\" is used twice"), ("sets/*.parquet", "sets/*.parquet: no file matches this pattern"),
                                   ("sets/*", "sets/*: the pattern matches \(sets.path)/notes.txt, which is not a file of records")] {
            XCTAssertThrowsError(try loadBacktestPrompts(dir.appendingPathComponent(pattern).path)) { XCTAssertTrue("\($0)".contains(message), "\($0) vs \(message)") }
        }
    }

    /// Chat lines: the conversation is the prompt, written by the model's chat template with the
    /// prompt for a reply; a final assistant message is the expected answer, scored with the token
    /// the template ends a reply with (not the newline after it). Bad chat lines name the line.
    func testChatPromptsAreWrittenByTheChatTemplate() throws {
        let path = write("chat.jsonl", """
            {"id": "c1", "messages": [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": " how are you"}]}
            {"id": "c2", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The quick"}], "tags": "open"}
            """)
        let prompts = try loadBacktestPrompts(path)
        XCTAssertEqual(prompts, [
            BacktestPrompt(id: "c1", prompt: "", expected: " how are you", tags: [], messages: [ChatMessage(role: "user", content: "Hello there")]),
            BacktestPrompt(id: "c2", prompt: "", expected: nil, tags: ["open"],
                           messages: [ChatMessage(role: "system", content: "Be brief."), ChatMessage(role: "user", content: "The quick")]),
        ])
        let template = "{% for m in messages %}{{ m['role'] + ':' + m['content'] }}{% if m['role'] == 'assistant' %}{{ '<|im_end|>' }}{% endif %}{{ '\n' }}"
            + "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
        let (base, adapter, tok) = try tinyBaseAndAdapter(chatTemplate: template)
        var o = BacktestOptions(modelPath: base, adapters: [("v1", adapter)], prompts: prompts)
        o.maxNewTokens = 4
        let r = try runBacktest(o)
        XCTAssertEqual(r.rows.first { $0.promptID == "c1" }?.prompt, "user:Hello there\nassistant:")
        XCTAssertEqual(r.rows.first { $0.promptID == "c2" }?.prompt, "system:Be brief.\nuser:The quick\nassistant:")
        let model = try loadModel(base).model
        _ = try loadAdapter(adapter, onto: model)
        let ids = tok.encode("user:Hello there\nassistant:"), answer = tok.encode(" how are you") + [tok.tokenID(for: "<|im_end|>")!]
        XCTAssertNotEqual(tok.tokenID(for: "<|im_end|>"), tok.eosTokenID, "the reply's end is the template's, not EOS")
        let scored = try XCTUnwrap(r.rows.first { $0.version == "v1" && $0.promptID == "c1" })
        XCTAssertEqual(scored.loss!, answerLoss(model, ids, answer), accuracy: 1e-4, "the reply and the <|im_end|> the template ends it with")
        XCTAssertEqual(scored.lossTokens, answer.count)
        // ShareGPT's "conversations" (and its "system" key) serve as their "messages" would.
        let shareGPT = write("sharegpt.jsonl", """
            {"id": "c1", "conversations": [{"from": "human", "value": "Hello there"}, {"from": "gpt", "value": " how are you"}]}
            {"id": "c2", "system": "Be brief.", "conversations": [{"from": "human", "value": "The quick"}], "tags": "open"}
            """)
        XCTAssertEqual(try loadBacktestPrompts(shareGPT), prompts)

        for (text, needle) in [(#"{"messages": [{"role": "user", "content": "a"}], "prompt": "b"}"#, ":1: give one of"),
                               (#"{"conversations": [{"from": "human", "value": "a"}], "prompt": "b"}"#, ":1: give one of"),
                               (#"{"conversations": [{"from": "bot", "value": "a"}]}"#, ":1: conversations turn 1: unknown speaker \"bot\""),
                               (#"{"messages": [{"role": "user", "content": "a"}], "system": "b"}"#, ":1: \"system\" goes with ShareGPT's \"conversations\""),
                               (#"{"prompt": "a", "system": "b"}"#, ":1: \"system\" goes with \"messages\" or \"conversations\""),
                               (#"{"messages": [{"role": "user", "content": "a"}], "vars": {"x": 1}}"#, ":1: \"messages\" are literal text"),
                               (#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "expected": "c"}"#,
                                ":1: give \"expected\" or a final assistant message"),
                               (#"{"messages": [{"role": "assistant", "content": "b"}]}"#, ":1: the conversation has no message before the reply"),
                               (#"{"messages": [{"role": "function", "content": "b"}]}"#, ":1: message 1: unknown role \"function\""),
                               (#"{"prompt": "a", "tools": []}"#, ":1: \"tools\" go with \"messages\" or \"conversations\""),
                               (#"{"prompt": "a", "chat_template_kwargs": {}}"#, ":1: \"chat_template_kwargs\" go with \"messages\" or \"conversations\""),
                               (#"{"messages": [{"role": "user", "content": "a"}], "chat_template_kwargs": true}"#, ":1: \"chat_template_kwargs\" must be an object"),
                               (#"{"messages": [{"role": "user", "content": "a"}], "tools": [1]}"#, ":1: \"tools\" must be an array of objects")] {
            let p = write("bad.jsonl", text)
            XCTAssertThrowsError(try loadBacktestPrompts(p)) { XCTAssertTrue("\($0)".contains(p) && "\($0)".contains(needle), "\($0) vs \(needle)") }
        }
    }

    /// A base whose tokenizer puts the BOS in front of every text: plain prompts are scored and
    /// continued after it, as transformers' `tokenizer(prompt)` gives them; chat prompts as the
    /// template writes them, without it.
    func testPlainPromptsGetTheTokenizersBOSAndChatPromptsDoNot() throws {
        let template = "{% for m in messages %}{{ m['role'] + ':' + m['content'] + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
        let (base, _, tok) = try tinyBaseAndAdapter(chatTemplate: template, addsBOS: true)
        let prompts = [BacktestPrompt(id: "plain", prompt: "Hello there, how", expected: " are you", tags: []),
                       BacktestPrompt(id: "chat", prompt: "", expected: nil, tags: [], messages: [ChatMessage(role: "user", content: "Hello")])]
        var o = BacktestOptions(modelPath: base, adapters: [], prompts: prompts)
        o.maxNewTokens = 2
        let r = try runBacktest(o)
        let model = try loadModel(base).model
        let bos = try XCTUnwrap(tok.bosTokenID), answer = tok.encode(" are you") + [tok.eosTokenID!]
        let plain = try XCTUnwrap(r.rows.first { $0.promptID == "plain" }), chat = try XCTUnwrap(r.rows.first { $0.promptID == "chat" })
        XCTAssertEqual(plain.promptTokens, tok.encode("Hello there, how").count + 1)
        XCTAssertEqual(plain.loss!, answerLoss(model, [bos] + tok.encode("Hello there, how"), answer), accuracy: 1e-4)
        XCTAssertNotEqual(plain.loss!, answerLoss(model, tok.encode("Hello there, how"), answer), accuracy: 1e-6, "the BOS changes the score")
        XCTAssertEqual(chat.promptTokens, tok.encode("user:Hello<|im_end|>\nassistant:").count)
    }

    /// A chat prompt with tools whose expected reply calls one: the template gets the tools and the
    /// call (key order kept), the expected answer is the call as the template writes it, and its loss
    /// covers those tokens and the turn's end token.
    func testAnExpectedReplyThatCallsATool() throws {
        let path = write("tools.jsonl", #"{"id": "t1", "messages": [{"role": "user", "content": "Hello there"}, "#
            + #"{"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": {"name": "the", "arguments": {"z": 1, "a": "fish"}}}]}], "#
            + #""tools": [{"type": "function", "function": {"name": "the", "parameters": {"type": "object"}}}]}"#)
        let prompts = try loadBacktestPrompts(path)
        XCTAssertEqual(prompts.first?.expected, nil, "filled in by the run, as the model's template writes it")
        XCTAssertEqual(prompts.first?.reply?.toolCallNames, ["the"])
        let template = "{% if tools %}{{ 'tools:' + (tools | tojson) + '\\n' }}{% endif %}{% for m in messages %}{% if m.tool_calls %}"
            + "{{ 'assistant:<call>' + m.tool_calls[0].function.name + ' ' + (m.tool_calls[0].function.arguments | tojson) + '<|im_end|>\\n' }}"
            + "{% else %}{{ m['role'] + ':' + m['content'] }}{% if m['role'] == 'assistant' %}{{ '<|im_end|>' }}{% endif %}{{ '\\n' }}{% endif %}"
            + "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
        let (base, adapter, tok) = try tinyBaseAndAdapter(chatTemplate: template)
        var o = BacktestOptions(modelPath: base, adapters: [("v1", adapter)], prompts: prompts)
        o.maxNewTokens = 4
        let r = try runBacktest(o)
        let row = try XCTUnwrap(r.rows.first { $0.version == "v1" })
        let prompt = #"tools:[{"type": "function", "function": {"name": "the", "parameters": {"type": "object"}}}]"# + "\nuser:Hello there\nassistant:"
        XCTAssertEqual(row.prompt, prompt)
        XCTAssertEqual(row.expected, #"<call>the {"z": 1, "a": "fish"}"#)
        let model = try loadModel(base).model
        _ = try loadAdapter(adapter, onto: model)
        let answer = tok.encode("<call>the") + tok.encode(#" {"z": 1, "a": "fish"}"#) + [tok.tokenID(for: "<|im_end|>")!]
        XCTAssertEqual(row.loss!, answerLoss(model, tok.encode(prompt), answer), accuracy: 1e-4)
        XCTAssertEqual(row.lossTokens, answer.count)
    }

    // MARK: scores

    func testScores() {
        // LCS "the cat on the mat" = 5 of 6 words each way: P = R = 5/6.
        XCTAssertEqual(rougeL("The cat sat on the mat.", "the cat is on the mat"), 5.0 / 6.0, accuracy: 1e-12)
        // P = 2/2, R = 2/4: F = 2·1·0.5 / 1.5.
        XCTAssertEqual(rougeL("a list", "a list is mutable"), 2.0 / 3.0, accuracy: 1e-12)
        XCTAssertEqual(rougeL("x y z", "X, Y; Z!"), 1)
        XCTAssertEqual(rougeL("alpha", "beta"), 0)
        XCTAssertEqual(rougeL("", "beta"), 0)
        XCTAssertEqual(normalizedAnswer("  An  Ordered\nList "), "an ordered list")

        for (old, new) in [("the cat sat on the mat", "the dog sat on a mat today"), ("", "new words"), ("old words", ""), ("a b a b", "b a b a")] {
            let d = wordDiff(old, new)
            let oldBack = d.compactMap { if case .same(let w) = $0 { return w }; if case .removed(let w) = $0 { return w }; return nil }
            let newBack = d.compactMap { if case .same(let w) = $0 { return w }; if case .added(let w) = $0 { return w }; return nil }
            XCTAssertEqual(oldBack, old.split(separator: " ").map(String.init))
            XCTAssertEqual(newBack, new.split(separator: " ").map(String.init))
            let kept = d.filter { if case .same = $0 { return true }; return false }.count
            XCTAssertEqual(kept, lcsLength(old.split(separator: " ").map(String.init), new.split(separator: " ").map(String.init)),
                           "the diff keeps a longest common subsequence")
        }
        XCTAssertEqual(wordDiff("the cat sat", "the dog sat"), [.same("the"), .added("dog"), .removed("cat"), .same("sat")])
    }

    // MARK: a run on a tiny model

    /// The loss of `answer` after `prompt`, from the logits: mean −log p(answer token | everything before it).
    func answerLoss(_ model: CausalLM, _ prompt: [Int32], _ answer: [Int32]) -> Double {
        let each = answerTokenLossesFromLogits(model, prompt, answer)
        return each.reduce(0, +) / Double(answer.count)
    }

    /// −log p(answer token | everything before it) for each answer token, from the whole (T, V) logits.
    func answerTokenLossesFromLogits(_ model: CausalLM, _ prompt: [Int32], _ answer: [Int32]) -> [Double] {
        let logits = withNoGrad { model.forward(prompt + answer, batch: 1) }.toArray()  // (1, T, V)
        let V = model.config.vocabSize
        return answer.enumerated().map { k, target in
            let row = logits[(prompt.count - 1 + k) * V..<(prompt.count + k) * V].map(Double.init)
            let m = row.max()!
            return m + log(row.map { exp($0 - m) }.reduce(0, +)) - row[Int(target)]
        }
    }

    /// A tiny LLaMA base with the GPT-2 fixture tokenizer (or, with `chatTemplate`, a small one with
    /// ChatML's markers and that template), saved, and a LoRA adapter for it (B made non-zero).
    /// With `addsBOS`, its tokenizer puts the BOS in front of every text (Llama 3's kind).
    func tinyBaseAndAdapter(chatTemplate: String? = nil, addsBOS: Bool = false) throws -> (base: String, adapter: String, tokenizer: BPETokenizer) {
        let tok = chatTemplate == nil
            ? try BPETokenizer.load(json: Data(contentsOf: packageRoot().appendingPathComponent("Tests/TokenizersTests/Fixtures/tokenizer_gpt2.json")))
            : try trainBaseTokenizer(["Hello there, how are you? The quick brown fox. user: assistant: system:"], vocabSize: 300)
        tok.chatTemplate = chatTemplate
        tok.addsBOS = addsBOS
        let config = ModelConfig.llama(vocabSize: tok.vocabSize, hiddenSize: 16, numLayers: 2, numHeads: 4, numKVHeads: 2, intermediateSize: 24)
        let model = makeModel(config, seed: 5)
        let base = dir.appendingPathComponent("base.h5").path
        try ModelCheckpoint.save(model, tokenizer: tok, to: base)
        let lora = try LoRA(config: LoRAConfig(r: 2, loraAlpha: 4, targetModules: .names(["q_proj", "v_proj"])))
        try lora.attach(to: model)
        var rng = RNG(seed: 9)
        for (key, t) in lora.adapterParameters() where key.contains("lora_B") {
            t.assign(Tensor.uniform(t.shape, low: -0.5, high: 0.5, rng: &rng))
        }
        let adapter = dir.appendingPathComponent("adapter.h5").path
        try AdapterCheckpoint.save(lora, base: model, to: adapter)
        return (base, adapter, tok)
    }

    func testRunMatchesGenerateAndTheLossFromLogits() throws {
        let (base, adapter, tok) = try tinyBaseAndAdapter()
        let prompts = [BacktestPrompt(id: "p1", prompt: "Hello there, how", expected: " are you today", tags: ["greet"]),
                       BacktestPrompt(id: "p2", prompt: "The quick brown", expected: nil, tags: [])]
        var o = BacktestOptions(modelPath: base, adapters: [("v1", adapter)], prompts: prompts)
        o.maxNewTokens = 6
        var seen: [(Int, Int)] = []
        let r = try runBacktest(o) { seen.append(($0, $1)) }
        XCTAssertEqual(seen.map(\.0), [1, 2, 3, 4])
        XCTAssertEqual(r.versions, ["base", "v1"])
        XCTAssertEqual(r.rows.map { "\($0.version)/\($0.promptID)" }, ["base/p1", "base/p2", "v1/p1", "v1/p2"])
        XCTAssertNotEqual(r.rows[0].loss, r.rows[2].loss, "the adapter changes the model")

        for version in ["base", "v1"] {
            let model = try loadModel(base).model
            if version == "v1" { _ = try loadAdapter(adapter, onto: model) }
            for p in prompts {
                let row = try XCTUnwrap(r.rows.first { $0.version == version && $0.promptID == p.id })
                let ids = tok.encode(p.prompt)
                let out = model.generate(ids, SamplingOptions(maxNewTokens: 6, stopTokens: tok.eosTokenID.map { [$0] } ?? []))
                XCTAssertEqual(row.output, tok.decode(out.filter { $0 != tok.eosTokenID }), "\(version)/\(p.id)")
                XCTAssertEqual(row.promptTokens, ids.count)
                XCTAssertEqual(row.outputTokens, out.count)
                guard let expected = p.expected else { XCTAssertNil(row.loss); XCTAssertNil(row.rougeL); continue }
                // The loss from the logits: mean −log p(answer token | everything before it), EOS included.
                let answer = tok.encode(expected) + [tok.eosTokenID!]
                let seq = ids + answer
                XCTAssertEqual(row.loss!, answerLoss(model, ids, answer), accuracy: 1e-4, "\(version)/\(p.id)")
                XCTAssertEqual(row.perplexity!, exp(row.loss!), accuracy: 1e-9)
                // Each answer token's loss, its text as the answer reads (the EOS as its content).
                let each = try XCTUnwrap(row.tokenLosses)
                XCTAssertEqual(each.map(\.token).joined(), expected + tok.decode([tok.eosTokenID!]))
                XCTAssertEqual(each.count, answer.count)
                for (got, want) in zip(each.map(\.loss), answerTokenLossesFromLogits(model, ids, answer)) {
                    XCTAssertEqual(got, want, accuracy: 1e-4, "\(version)/\(p.id): \(each)")
                }
                XCTAssertEqual(row.loss!, each.map(\.loss).reduce(0, +) / Double(each.count), accuracy: 1e-12)
                XCTAssertEqual(row.rougeL, rougeL(row.output, expected))
                XCTAssertEqual(row.cost.tokens, seq.count + ids.count + out.count, "scored tokens + prompt + output")
                XCTAssertGreaterThan(row.cost.wallSeconds, 0)
            }
        }
        XCTAssertEqual(r.summaries.map(\.prompts), [2, 2])
        XCTAssertEqual(r.summaries.map(\.scored), [1, 1])
        XCTAssertEqual(r.summaries[1].loss, r.rows[2].loss, "means over the scored prompts only")
        XCTAssertEqual(r.tags, ["greet"])
        XCTAssertEqual(r.tagSummaries["greet"]?.map(\.prompts), [1, 1])

        // Samples: K outputs, the most common one as the output, its share as the agreement; the same seed repeats them.
        o.samples = 4
        o.temperature = 1.5
        let s1 = try runBacktest(o), s2 = try runBacktest(o)
        XCTAssertEqual(s1.rows.map(\.samples), s2.rows.map(\.samples), "seeded")
        for row in s1.rows {
            let samples = try XCTUnwrap(row.samples)
            XCTAssertEqual(samples.count, 4)
            let mode = samples.filter { $0 == row.output }.count
            XCTAssertEqual(row.agreement, Double(mode) / 4)
            XCTAssertTrue(samples.allSatisfy { x in samples.filter { $0 == x }.count <= mode })
        }

        // A stop text ends decoding where it appears (as serve's does): the output is cut before it, and
        // the tokens counted are those up to the one that completed it, not all 6.
        let model = try loadModel(base).model
        let ids = tok.encode(prompts[1].prompt)
        let out = model.generate(ids, SamplingOptions(maxNewTokens: 6, stopTokens: tok.eosTokenID.map { [$0] } ?? []))
        let full = tok.decode(out.filter { $0 != tok.eosTokenID }, following: ids.last)
        XCTAssertGreaterThanOrEqual(out.count, 3, "the tiny model writes 6 tokens for this prompt")
        guard out.count >= 3 else { return }
        let stopText = try XCTUnwrap(tok.decode([out[2]], following: out[1]).first.map(String.init), "the third token has text")
        let upTo = try XCTUnwrap((1...out.count).first { tok.decode(Array(out[..<$0]), following: ids.last).contains(stopText) })
        XCTAssertLessThan(upTo, out.count, "the stop comes before the end")
        var so = BacktestOptions(modelPath: base, adapters: [], prompts: [prompts[1]])
        (so.maxNewTokens, so.stop) = (6, [stopText])
        let stopped = try runBacktest(so).rows[0]
        XCTAssertEqual(stopped.output, textBeforeStop(full, [stopText]))
        XCTAssertEqual(stopped.outputTokens, upTo, "\(out) \(stopText.debugDescription)")

        // Gates and mistakes.
        XCTAssertEqual(r.isWorse("v1", than: "base", on: .loss), r.rows[2].loss! > r.rows[0].loss!)
        XCTAssertNil(r.isWorse("v1", than: "nope", on: .loss))
        o.samples = 2
        o.temperature = 0
        XCTAssertThrowsError(try runBacktest(o)) { XCTAssertTrue("\($0)".contains("--temperature"), "\($0)") }
        o.samples = 1
        o.adapters = [("base", adapter)]
        XCTAssertThrowsError(try runBacktest(o)) { XCTAssertTrue("\($0)".contains("\"base\" is the base model's"), "\($0)") }
        o.adapters = [("v1", adapter), ("v1", adapter)]
        XCTAssertThrowsError(try runBacktest(o)) { XCTAssertTrue("\($0)".contains("\"v1\" is used twice"), "\($0)") }
    }

    /// With learned positions, every version scores the same answer tokens: the answer is cut where
    /// the version with the most virtual tokens must cut it (here a prompt-tuning adapter's 4).
    func testEveryVersionScoresTheSameAnswerTokens() throws {
        let tok = try BPETokenizer.load(json: Data(contentsOf: packageRoot().appendingPathComponent("Tests/TokenizersTests/Fixtures/tokenizer_gpt2.json")))
        let model = makeModel(.gpt2(vocabSize: tok.vocabSize, hiddenSize: 16, numLayers: 1, numHeads: 2, maxPositions: 48), seed: 5)
        let base = dir.appendingPathComponent("gpt2.h5").path
        try ModelCheckpoint.save(model, tokenizerJSON: tok.tokenizerJSON(), to: base)
        let prompt = try PromptTuning(config: PromptTuningConfig(numVirtualTokens: 4), seed: 1)
        _ = try prompt.attach(to: model)
        let adapter = dir.appendingPathComponent("prompt.h5").path
        try AdapterCheckpoint.save(prompt, base: model, to: adapter)
        let text = "The quick brown fox"
        let answer = String(repeating: " jumps over the lazy dog and runs far away into the woods", count: 3)
        let (p, a) = (tok.encode(text).count, tok.encode(answer).count + 1)
        XCTAssertGreaterThan(p + a, 48 - 4, "the answer must be cut")
        var o = BacktestOptions(modelPath: base, adapters: [("pt", adapter)], prompts: [BacktestPrompt(id: "p", prompt: text, expected: answer, tags: [])])
        o.maxNewTokens = 2
        let r = try runBacktest(o)
        XCTAssertEqual(r.rows.map(\.lossTokens), [48 - 4 - p, 48 - 4 - p], "base and adapter score the same tokens")
        // Token by token as the logits give them, with the adapter's virtual tokens before the prompt
        // (a GPT-2 head: not the fused loss's tied product), the texts those of the cut answer.
        let ids = tok.encode(text), scored = Array((tok.encode(answer) + [tok.eosTokenID!]).prefix(48 - 4 - p))
        for (row, withPrompt) in zip(r.rows, [false, true]) {
            let m = try loadModel(base).model
            if withPrompt { _ = try loadAdapter(adapter, onto: m) }
            let want = answerTokenLossesFromLogits(m, ids, scored)
            let got = try XCTUnwrap(row.tokenLosses)
            XCTAssertEqual(got.count, want.count)
            for (g, w) in zip(got, want) { XCTAssertEqual(g.loss, w, accuracy: 1e-4, row.version) }
            XCTAssertEqual(got.map(\.token).joined(), tok.decode(scored, following: ids.last))
        }
        // A prompt with room for the base but not for the adapter's virtual tokens stops the run before any work.
        var long = ""
        while tok.encode(long).count < 45 { long += " word" }
        XCTAssertLessThan(tok.encode(long).count, 48)
        o.prompts = [BacktestPrompt(id: "long", prompt: long, expected: nil, tags: [])]
        var answered = 0
        XCTAssertThrowsError(try runBacktest(o) { _, _ in answered += 1 }) {
            XCTAssertTrue("\($0)".contains("prompt long") && "\($0)".contains("+4 virtual, the most of any version"), "\($0)")
        }
        XCTAssertEqual(answered, 0, "not even the base ran")
    }

    /// A version's loss is the mean over its answer tokens, as eval's: a long answer counts for its tokens.
    /// A stopped run returns what it has and saves as it goes; its report folder reads back; a run
    /// resumed from it gives the rest, every answer as an uninterrupted run's, and runs again an answer
    /// whose prompt changed; settings that differ are refused, each named.
    func testAStoppedRunResumesToTheSameAnswers() throws {
        let (base, adapter, _) = try tinyBaseAndAdapter()
        let prompts = (0..<4).map { BacktestPrompt(id: "p\($0)", prompt: "Hello there \($0), how", expected: $0 == 3 ? nil : " are you today",
                                                   tags: ["t\($0 % 2)"]) }
        var o = BacktestOptions(modelPath: base, adapters: [("v1", adapter)], prompts: prompts)
        o.maxNewTokens = 5
        let whole = try runBacktest(o)
        XCTAssertEqual(whole.unanswered, 0)

        var asked = 0, saved: [BacktestResult] = []
        var stopping = o
        (stopping.shouldStop, stopping.saveEvery, stopping.save) = ({ asked += 1; return asked > 3 }, 0, { saved.append($0) })
        let part = try runBacktest(stopping)
        XCTAssertEqual(part.rows.count, 3)
        XCTAssertEqual(part.unanswered, 5)
        XCTAssertEqual(part.promptCount, 4)
        XCTAssertEqual(saved.map(\.rows.count), [1, 2], "saved before each answer once there is one (saveEvery 0)")
        XCTAssertEqual(saved.map(\.unanswered), [7, 6])
        XCTAssertEqual(part.newAnswers, 3)
        let folder = dir.appendingPathComponent("bt")
        try writeBacktestReport(part, to: folder)
        let md = try String(contentsOf: folder.appendingPathComponent("report.md"), encoding: .utf8)
        XCTAssertTrue(md.contains("**Unfinished: 3 of 8 answers; the scores cover those alone. The same command with --resume gives the rest.**")
                      && md.contains("4 prompts × 2 versions"), md)
        let progress = try readBacktestProgress(folder)
        XCTAssertEqual(progress.rows, part.rows)
        XCTAssertEqual(progress.unanswered, 5)
        XCTAssertEqual(progress.cost, part.cost)
        XCTAssertEqual(progress.settings, part.settings)

        var resumed = o
        resumed.resume = progress
        var done: [Int] = []
        let rest = try runBacktest(resumed) { d, _ in done.append(d) }
        XCTAssertEqual(done, Array(1...8))
        XCTAssertEqual(rest.unanswered, 0)
        XCTAssertEqual(Array(rest.rows.prefix(3)), part.rows, "the answers there are kept as they were")
        XCTAssertEqual(rest.rows.count, whole.rows.count)
        for (a, b) in zip(rest.rows, whole.rows) {
            XCTAssertEqual([a.version, a.promptID, a.output], [b.version, b.promptID, b.output])
            XCTAssertEqual(a.tokenLosses, b.tokenLosses, "\(a.version)/\(a.promptID)")
            XCTAssertEqual([a.promptTokens, a.outputTokens], [b.promptTokens, b.outputTokens])
        }
        XCTAssertEqual(rest.summaries.map(\.loss), whole.summaries.map(\.loss))
        XCTAssertEqual(rest.cost.tokens, whole.cost.tokens, "the sessions' cost together")
        XCTAssertGreaterThan(rest.cost.wallSeconds, part.cost.wallSeconds, "the stopped session's time counts too")

        // A prompt changed since the stop runs again; the other answers there are kept.
        var changed = resumed
        changed.prompts[1].prompt = "Something else, how"
        let redone = try runBacktest(changed)
        XCTAssertEqual(redone.rows[0], part.rows[0])
        XCTAssertEqual(redone.rows[1].prompt, "Something else, how")
        XCTAssertEqual(redone.rows[2], part.rows[2])
        XCTAssertEqual(redone.newAnswers, 6)
        // Stopped at that prompt, before any answer: the kept answers past it are in the result too.
        var stoppedAtOnce = changed
        stoppedAtOnce.shouldStop = { true }
        let early = try runBacktest(stoppedAtOnce)
        XCTAssertEqual(early.newAnswers, 0)
        XCTAssertEqual(early.rows, [part.rows[0], part.rows[2]])
        XCTAssertEqual(early.unanswered, 6)

        func refused(_ edit: (inout BacktestOptions) throws -> Void, _ said: String, line: UInt = #line) throws {
            var other = resumed
            try edit(&other)
            XCTAssertThrowsError(try runBacktest(other), line: line) { e in
                XCTAssertTrue("\(e)".contains("the unfinished back-test was run otherwise: ") && "\(e)".contains(said), "\(e)", line: line)
            }
        }
        try refused({ $0.maxNewTokens = 6 }, "--max-tokens 5 there, 6 here")
        try refused({ $0.includeBase = false }, "the versions base, v1 there, v1 here")
        try refused({ ($0.samples, $0.seed) = (2, 7) }, "--samples 1 there, 2 here; --temperature (greedy) there, 0.8 here; --seed (greedy) there, 7 here")
        try refused({ $0.stop = ["\n"] }, "--stop (none) there, \"\\n\" here")
        try refused({ _ in
            try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSinceNow: -3600)], ofItemAtPath: adapter)
        }, "the adapter of v1 was \(adapter) (")
        XCTAssertThrowsError(try readBacktestProgress(dir)) { XCTAssertTrue("\($0)".contains("backtest.json: not found"), "\($0)") }

        // Links are followed (a Hugging Face cache's snapshot folder links to its blobs): a file, or a folder of links.
        let linked = dir.appendingPathComponent("linked")
        try FileManager.default.createDirectory(at: linked, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: linked.path + "/adapter.h5", withDestinationPath: adapter)
        let (direct, viaLink, linkFolder) = (try FileStamp(adapter), try FileStamp(linked.path + "/adapter.h5"), try FileStamp(linked.path))
        XCTAssertGreaterThan(direct.bytes, 0)
        XCTAssertTrue(viaLink.isSameFile(as: direct) && linkFolder.isSameFile(as: direct), "\(direct) \(viaLink) \(linkFolder)")
    }

    func testSummaryLossIsTheMeanOverAnswerTokens() {
        let cost = Cost(tokens: 1, wallSeconds: 0, cpuSeconds: 0, peakRSSBytes: 0, energyJoules: 0, energySource: "estimate", wattsPerCore: 10)
        func row(_ loss: Double, _ tokens: Int) -> BacktestRow {
            BacktestRow(promptID: "q", version: "v", tags: [], prompt: "Q", expected: "a", output: "a", samples: nil, agreement: 1,
                        loss: loss, perplexity: exp(loss), lossTokens: tokens, exactMatch: 1, contains: 1, rougeL: 1,
                        promptTokens: 1, outputTokens: 1, latencyMs: 1, cost: cost)
        }
        let s = VersionSummary.of([row(5, 2), row(1, 98)], version: "v")
        XCTAssertEqual(s.loss!, 1.08, accuracy: 1e-12)
        XCTAssertEqual(s.perplexity!, exp(1.08), accuracy: 1e-9)
    }

    func testReportFolder() throws {
        let cost = Cost(tokens: 10, wallSeconds: 0.5, cpuSeconds: 1, peakRSSBytes: 1 << 20, energyJoules: 10, energySource: "estimate", wattsPerCore: 10)
        func row(_ v: String, _ out: String) -> BacktestRow {
            BacktestRow(promptID: "q<1>", version: v, tags: ["t"], prompt: "Q: a & b?", expected: "the cat sat", output: out, samples: nil,
                        agreement: 1, loss: 1.5, perplexity: exp(1.5), exactMatch: 0, contains: 0, rougeL: rougeL(out, "the cat sat"),
                        promptTokens: 4, outputTokens: 3, latencyMs: 12, cost: cost)
        }
        var rows = [row("base", "the cat sat"), row("v1", "the dog sat, \"quoted\"\r\nnext")]
        rows[1].tokenLosses = [ScoredToken(token: "the", loss: 0.01), ScoredToken(token: " c\u{E9}", loss: 3),
                               ScoredToken(token: "", loss: 0.5), ScoredToken(token: " <sat>", loss: 0.7)]
        let r = BacktestResult(model: "m.h5", versions: ["base", "v1"], rows: rows,
                               summaries: [VersionSummary.of([rows[0]], version: "base"), VersionSummary.of([rows[1]], version: "v1")],
                               tagSummaries: ["t": [VersionSummary.of([rows[0]], version: "base"), VersionSummary.of([rows[1]], version: "v1")]],
                               tags: ["t"], decoding: "greedy", cost: cost)
        let out = dir.appendingPathComponent("report")
        let files = try writeBacktestReport(r, to: out)
        XCTAssertEqual(files.map(\.lastPathComponent), backtestReportFiles)
        let html = try String(contentsOf: out.appendingPathComponent("report.html"), encoding: .utf8)
        XCTAssertTrue(html.contains("<ins>dog</ins>") && html.contains("<del>cat</del>"), "the word diff against the base")
        XCTAssertTrue(html.contains("q&lt;1&gt;") && html.contains("Q: a &amp; b?") && !html.contains("<1>"), "escaped")
        XCTAssertFalse(html.contains("http://") || html.contains("https://") || html.contains("<script src"), "self-contained")
        // v1's expected answer, token by token: a likely token nearly clear, an unlikely one red, the
        // empty (byte) token told in the tooltip before it, the text escaped.
        XCTAssertEqual(html.components(separatedBy: "class=\"scored-answer\"").count - 1, 1, "only v1 has token losses")
        XCTAssertTrue(html.contains("<span class=\"tok\" title=\"loss 0.010, p 0.990\" style=\"background:rgba(214,39,40,0.005)\">the</span>"), html)
        XCTAssertTrue(html.contains("title=\"loss 3.000, p 0.050; the same character's next byte token: loss 0.500, p 0.607\" style=\"background:rgba(214,39,40,0.533)\"> c\u{E9}</span>"), html)
        XCTAssertTrue(html.contains("> &lt;sat&gt;</span>"), html)
        XCTAssertTrue(html.contains("<details class=\"scored\" open>"), "a short answer is shown unfolded")
        // Beside the base's losses on the same tokens, and folded when long.
        let base = [ScoredToken(token: "the", loss: 2), ScoredToken(token: " cat", loss: 1)]
        let beside = scoredAnswerHTML([ScoredToken(token: "the", loss: 0.5), ScoredToken(token: " cat", loss: 0.25)], reference: base, name: "base")
        XCTAssertTrue(beside.contains("title=\"loss 0.500, p 0.607 (base: loss 2.000)\""), beside)
        XCTAssertFalse(scoredAnswerHTML([ScoredToken(token: "x", loss: 1)], reference: base, name: "base").contains("base:"), "other tokens: no comparison")
        XCTAssertTrue(scoredAnswerHTML([ScoredToken(token: String(repeating: "word ", count: 200), loss: 1)]).hasPrefix("<details class=\"scored\"><summary"))
        let jsonl = try String(contentsOf: out.appendingPathComponent("results.jsonl"), encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(try jsonl.map { try JSONDecoder().decode(BacktestRow.self, from: Data($0.utf8)) }, rows)
        let csv = try String(contentsOf: out.appendingPathComponent("results.csv"), encoding: .utf8)
        XCTAssertEqual(csv.split(separator: "\n").count, 3)
        XCTAssertTrue(csv.contains("\"the dog sat, \"\"quoted\"\"\r\nnext\""), csv)
        let md = try String(contentsOf: out.appendingPathComponent("report.md"), encoding: .utf8)
        XCTAssertTrue(md.contains("## Versions") && md.contains("### t") && md.contains("| v1 | 1 |") && md.contains("estimate"), md)
    }

    // MARK: cost

    func testCostMeterReadsRAPLAndEstimatesWithout() throws {
        let root = dir.appendingPathComponent("powercap")
        func zone(_ name: String, _ label: String, _ energy: UInt64, max: UInt64 = 1_000_000_000) throws {
            let z = root.appendingPathComponent(name)
            try FileManager.default.createDirectory(at: z, withIntermediateDirectories: true)
            try label.write(to: z.appendingPathComponent("name"), atomically: true, encoding: .utf8)
            try "\(energy)\n".write(to: z.appendingPathComponent("energy_uj"), atomically: true, encoding: .utf8)
            try "\(max)\n".write(to: z.appendingPathComponent("max_energy_range_uj"), atomically: true, encoding: .utf8)
        }
        try zone("intel-rapl:0", "package-0", 999_000_000)        // wraps at 1e9 µJ
        try zone("intel-rapl:0:0", "core", 5)                      // a sub-zone: counted in its package
        try zone("intel-rapl:1", "psys", 7)                        // the platform: overlaps the packages
        try zone("intel-rapl:2", "package-1", 100)
        let meter = CostMeter(wattsPerCore: 10, powercapRoot: root.path)
        XCTAssertTrue(meter.measuresEnergy)
        XCTAssertEqual(meter.zones.map { URL(fileURLWithPath: $0.energyPath).deletingLastPathComponent().lastPathComponent }, ["intel-rapl:0", "intel-rapl:2"])
        try zone("intel-rapl:0", "package-0", 2_000_000)           // +3 J across the wrap
        try zone("intel-rapl:2", "package-1", 1_500_100)           // +1.5 J
        try zone("intel-rapl:0:0", "core", 900_000_000)
        let c = meter.reading(tokens: 30)
        XCTAssertEqual(c.energySource, "rapl")
        XCTAssertEqual(c.energyJoules, 4.5, accuracy: 1e-9)
        XCTAssertNil(c.wattsPerCore)
        XCTAssertEqual(c.joulesPerToken, 0.15, accuracy: 1e-9)

        // A long run wraps the counter more than once: reads in between (every 10 s) count every wrap.
        meter.restart()
        for value: UInt64 in [900_000_000, 50_000_000, 950_000_000, 10_000_000] {  // from 2e6: +898, +150, +900, +60 J (wraps at 1e9 µJ)
            try zone("intel-rapl:0", "package-0", value)
            meter.sampleEnergy()
        }
        let long = meter.reading(tokens: 1)
        XCTAssertEqual(long.energyJoules, 2008, accuracy: 1e-6, "two wraps counted (one delta from start to end would say 8 J)")

        let none = CostMeter(wattsPerCore: 12.5, powercapRoot: dir.appendingPathComponent("nothing").path)
        XCTAssertFalse(none.measuresEnergy)
        var x = 0.0
        for i in 0..<3_000_000 { x += sin(Double(i)) }  // some CPU time
        let e = none.reading(tokens: 0)
        XCTAssertEqual(e.energySource, "estimate")
        XCTAssertEqual(e.energyJoules, e.cpuSeconds * 12.5, accuracy: 1e-12)
        XCTAssertGreaterThan(e.cpuSeconds, 0, "\(x)")
        XCTAssertTrue(e.summary.contains("estimate") && e.summary.contains("12.5 W"), e.summary)
        XCTAssertGreaterThan(e.peakRSSBytes, 1 << 20)
        let both = try XCTUnwrap(Cost.total([c, e]))
        XCTAssertEqual(both.tokens, 30)
        XCTAssertEqual(both.energySource, "estimate", "a total with an estimated part is an estimate")
    }
}
