// The training data layer: loss masks of every JSONL format (learned targets decode to exactly the completion
// or assistant text + EOS), ChatML, file:line errors for each kind of bad line, packing and padding, the seeded
// validation split, shuffling, and resuming a batch iterator from a saved position.

import XCTest
@testable import Training
import TensorCore
import NN
import Models
import Tokenizers
import PEFT
import Containers
import Formats

final class DatasetTests: XCTestCase {
    static let eot = "<|endoftext|>"

    /// A small byte-level BPE with GPT-2's end-of-text token (BOS/EOS/PAD) and the ChatML markers as specials.
    static let tokenizer: BPETokenizer = {
        let corpus = (0..<40).map { i in
            "The cat sat on the mat \(i). Translate: chat, chien. Write a response that completes the request. "
                + "### Instruction: say hello. ### Response: hello there, general \(i % 7)!"
        }
        return try! BPETokenizer.train(corpus: corpus, vocabSize: 340,
                                       specialTokens: [eot, "<|im_start|>", "<|im_end|>"],
                                       roles: SpecialTokenRoles(bos: eot, eos: eot, pad: eot))
    }()

    var dir = ""

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "dataset-tests-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// Writes `lines` (joined by newlines) to `dir/name` and returns the path.
    @discardableResult
    func write(_ name: String, _ lines: [String]) throws -> String {
        let path = dir + "/" + name
        try lines.joined(separator: "\n").write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func json(_ object: [String: Any]) -> String {
        String(decoding: try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self)
    }

    /// The learned target tokens of one batch, decoded.
    func learnedText(_ b: Batch, _ tok: Tokenizer = tokenizer) -> String {
        tok.decode(b.targets.filter { $0 != -100 })
    }

    func load(_ path: String, packing: Bool = false, seqLen: Int = 256, tok: Tokenizer = tokenizer,
              validation: ValidationSplit = .none, seed: UInt64 = 0) throws -> DatasetSplits {
        try loadDataset(path, tokenizer: tok,
                        options: DatasetOptions(seqLen: seqLen, packing: packing, validation: validation, seed: seed))
    }

    // MARK: formats and masks

    func testPromptCompletionLearnsOnlyCompletionAndEOS() throws {
        let pairs = [("Translate: cat\n", "chat"), ("Translate: dog\n", "chien, le chien"), ("Say: ", "hello there")]
        let path = try write("pc.jsonl", pairs.map { json(["prompt": $0.0, "completion": $0.1]) })
        let data = try load(path)
        XCTAssertEqual(data.format, .promptCompletion)
        XCTAssertEqual(data.train.count, 3)
        for (r, (prompt, completion)) in pairs.enumerated() {
            let b = data.train.batch(rows: [r])
            XCTAssertEqual(learnedText(b), completion + Self.eot, "row \(r)")
            let real = b.attentionMask!.filter { $0 == 1 }.count
            XCTAssertEqual(Self.tokenizer.decode(Array(b.ids[..<real])), prompt + completion + Self.eot)
            // Position t is learned exactly when t + 1 is past the prompt.
            let promptLength = Self.tokenizer.encode(prompt).count
            for t in 0..<real {
                XCTAssertEqual(b.targets[t] != -100, t + 1 >= promptLength && t + 1 < real, "row \(r) position \(t)")
            }
        }
        // Packed, the learned targets of all rows together are the completions, each followed by EOS.
        let packed = try load(path, packing: true, seqLen: 8)
        let all = (0..<packed.train.count).map { learnedText(packed.train.batch(rows: [$0])) }.joined()
        XCTAssertEqual(all, pairs.map { $0.1 + Self.eot }.joined())
        XCTAssertNil(packed.train.batch(rows: [0]).attentionMask)
    }

    func testInstructionUsesAlpacaTemplateAndLearnsOutput() throws {
        let path = try write("inst.jsonl", [
            json(["instruction": "Say hello.", "output": "hello there"]),
            json(["instruction": "Translate.", "input": "cat", "output": "chat"]),
            json(["instruction": "Translate.", "input": "", "output": "chien", "text": "ignored rendered text"]),
            // A null input is none, as `datasets`' to_json and polars write it (and as Parquet's null reads).
            #"{"instruction": "Say bye.", "input": null, "output": "bye"}"#,
        ])
        let data = try load(path)
        XCTAssertEqual(data.format, .instruction)
        let inputs: [String?] = [nil, "cat", nil, nil]
        for (r, (instruction, output)) in [("Say hello.", "hello there"), ("Translate.", "chat"), ("Translate.", "chien"), ("Say bye.", "bye")].enumerated() {
            let b = data.train.batch(rows: [r])
            XCTAssertEqual(learnedText(b), output + Self.eot)
            let real = b.attentionMask!.filter { $0 == 1 }.count
            XCTAssertEqual(Self.tokenizer.decode(Array(b.ids[..<real])),
                           alpacaPrompt(instruction: instruction, input: inputs[r]) + output + Self.eot)
        }
        XCTAssertEqual(alpacaPrompt(instruction: "I", input: "X"),
                       "Below is an instruction that describes a task, paired with an input that provides further "
                       + "context. Write a response that appropriately completes the request.\n\n### Instruction:\nI\n\n"
                       + "### Input:\nX\n\n### Response:\n")
        XCTAssertEqual(alpacaPrompt(instruction: "I", input: ""),
                       "Below is an instruction that describes a task. Write a response that appropriately completes "
                       + "the request.\n\n### Instruction:\nI\n\n### Response:\n")
    }

    func testTextLearnsEverythingAndEOS() throws {
        let path = try write("text.jsonl", [json(["text": "The cat sat."]), json(["text": "On the mat."])])
        let data = try load(path)
        XCTAssertEqual(data.format, .text)
        let ids = Self.tokenizer.encode("The cat sat.")
        XCTAssertEqual(learnedText(data.train.batch(rows: [0])), Self.tokenizer.decode(Array(ids.dropFirst())) + Self.eot,
                       "all but the first token, which no position predicts")
        XCTAssertEqual(data.train.summary.maskedTargets, 0)
        // With BOS in front, the first text token is learned too; BOS itself never is.
        let withBOS = try loadDataset(path, tokenizer: Self.tokenizer,
                                      options: DatasetOptions(packing: false, validation: .none, addBOS: true))
        let b = withBOS.train.batch(rows: [0])
        XCTAssertEqual(b.ids[0], Self.tokenizer.bosTokenID!)
        XCTAssertEqual(learnedText(b), "The cat sat." + Self.eot)
    }

    /// A tokenizer that puts the BOS in front of every text (Llama 3's, `addsBOS`) gets it in front of
    /// text and prompt/completion examples by default, never learned, and `preview` shows them so;
    /// ChatML without a template gets it too, as a chat prompt does (`encodeChat`); not what a chat
    /// template writes (the template writes its own); `addBOS: false` leaves it out.
    func testTheTokenizersOwnBOSIsAddedByDefault() throws {
        let tok = try Self.tokenizer.withRoles(Self.tokenizer.roles)
        tok.addsBOS = true
        let bos = tok.bosTokenID!
        let text = try write("bos-text.jsonl", [json(["text": "The cat sat."])])
        let prompt = try write("bos-pc.jsonl", [json(["prompt": "Say hello. ", "completion": "hello"])])
        for path in [text, prompt] {
            let b = try load(path, tok: tok).train.batch(rows: [0])
            XCTAssertEqual(Array(b.ids.prefix(2)), [bos] + tok.encode(path == text ? "The" : "Say").prefix(1), path)
            XCTAssertNotEqual(try load(path).train.batch(rows: [0]).ids[0], bos, "a tokenizer that adds none")
            let without = try loadDataset(path, tokenizer: tok, options: DatasetOptions(packing: false, validation: .none, addBOS: false))
            XCTAssertNotEqual(without.train.batch(rows: [0]).ids[0], bos, "addBOS: false")
        }
        XCTAssertEqual(learnedText(try load(text, tok: tok).train.batch(rows: [0]), tok), "The cat sat." + Self.eot)
        let shown = try previewExamples(text, tokenizer: tok, count: 1).examples[0]
        XCTAssertEqual(shown.runs.first?.text, Self.eot, "preview shows the BOS as training writes it: \(shown.runs)")
        let hi = [ChatMessage(role: "user", content: "Hi")]
        let chat = try write("bos-chat.jsonl", [json(["messages": [["role": "user", "content": "Hi"], ["role": "assistant", "content": "hello"]]])])
        let chatML = try load(chat, tok: tok).train.batch(rows: [0])
        let chatPrompt = encodeChat(try renderChat(hi, tokenizer: tok, addGenerationPrompt: true), tokenizer: tok)
        XCTAssertEqual(chatPrompt.first, bos, "ChatML without a template")
        XCTAssertEqual(Array(chatML.ids.prefix(chatPrompt.count)), chatPrompt, "training and a chat prompt agree")
        tok.chatTemplate = smolLM2ChatTemplate
        let b = try load(chat, tok: tok).train.batch(rows: [0])
        XCTAssertEqual(b.ids[0], tok.tokenID(for: "<|im_start|>")!, "the template's text, no BOS before it")
        XCTAssertEqual(learnedText(b, tok), "hello<|im_end|>")
        let templated = try renderChat(hi, tokenizer: tok, addGenerationPrompt: true)
        XCTAssertEqual(encodeChat(templated, tokenizer: tok), tok.encode(templated))
        XCTAssertEqual(Array(b.ids.prefix(tok.encode(templated).count)), tok.encode(templated))
    }

    /// With a SentencePiece tokenizer (a space put in front of a text), a prompt and its completion,
    /// encoded one after the other, are the ids of the whole text (the completion gets no second
    /// space), and the learned ids decode to the completion, its first space included.
    func testASentencePieceCompletionContinuesItsPrompt() throws {
        var pieces = ["<unk>", "<s>", "</s>"] + (0..<256).map { String(format: "<0x%02X>", $0) }
        let words = [" ", "a", "n", "s", "w", "e", "r", ":", "h", "l", "o", " a", " an", " ans", " answ", " answe", " answer", " answer:",
                     " h", " he", " hel", " hell", " hello"]
        for w in words where !pieces.contains(w) { pieces.append(w) }
        var vocab: [[UInt8]?] = pieces.map { Array($0.utf8) }
        var bytes: [Int32: UInt8] = [:]
        for b in 0..<256 { vocab[3 + b] = nil; bytes[Int32(3 + b)] = UInt8(b) }
        vocab[0] = nil; vocab[1] = nil; vocab[2] = nil
        func id(_ w: String) -> Int32 { Int32(pieces.firstIndex(of: w)!) }
        var merges: [(Int32, Int32)] = []
        for w in words.sorted(by: { $0.count < $1.count }) where w.count > 1 {  // every split into two pieces, shorter words first
            for k in 1..<w.count {
                let (l, r) = (String(w.prefix(k)), String(w.dropFirst(k)))
                if pieces.contains(l) && pieces.contains(r) { merges.append((id(l), id(r))) }
            }
        }
        func make(_ prefix: SpacePrefix) throws -> BPETokenizer {
            try BPETokenizer(vocab: vocab, merges: merges,
                             addedTokens: ["<unk>", "<s>", "</s>"].enumerated().map { AddedToken(id: Int32($0.offset), content: $0.element) },
                             roles: SpecialTokenRoles(bos: "<s>", eos: "</s>", unk: "<unk>"), sentencePiece: prefix, byteTokens: bytes)
        }
        let tok = try make(.everyStretch)
        // The BOS a tokenizer puts in front does not make the text a continuation (Metaspace "first" as transformers 5 writes Llama 2's).
        let first = try make(.first)
        first.addsBOS = true
        XCTAssertEqual(try DataExample.text("answer:").tokenized(first).ids, [id("<s>"), id(" answer:"), id("</s>")])
        XCTAssertEqual(tok.encode("answer: hello"), [id(" answer:"), id(" hello")])
        let path = try write("spm.jsonl", [json(["prompt": "answer:", "completion": " hello"])])
        let b = try load(path, tok: tok).train.batch(rows: [0])
        XCTAssertEqual(Array(b.ids.prefix(3)), [id(" answer:"), id(" hello"), id("</s>")])
        let learned = b.targets.filter { $0 != -100 }
        XCTAssertEqual(tok.decode(learned, following: id(" answer:")), " hello</s>")
    }

    func testChatMLTwoTurnsWithSystem() throws {
        let messages = [ChatMessage(role: "system", content: "You are terse."),
                        ChatMessage(role: "user", content: "Say hello."),
                        ChatMessage(role: "assistant", content: "hello"),
                        ChatMessage(role: "user", content: "Translate cat."),
                        ChatMessage(role: "assistant", content: "chat")]
        let rendered = "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nSay hello.<|im_end|>\n"
            + "<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\nTranslate cat.<|im_end|>\n"
            + "<|im_start|>assistant\nchat<|im_end|>\n"
        XCTAssertEqual(renderChatML(messages), rendered)
        XCTAssertEqual(renderChatML(Array(messages[..<2]), addGenerationPrompt: true),
                       "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nSay hello.<|im_end|>\n"
                       + "<|im_start|>assistant\n")
        let line = json(["messages": messages.map { ["role": $0.role, "content": $0.content] }])
        let path = try write("chat.jsonl", [line])
        let data = try load(path)
        XCTAssertEqual(data.format, .chat)
        let b = data.train.batch(rows: [0])
        XCTAssertEqual(learnedText(b), "hello<|im_end|>chat<|im_end|>", "only assistant content and its <|im_end|>")
        let real = b.attentionMask!.filter { $0 == 1 }.count
        XCTAssertEqual(Self.tokenizer.decode(Array(b.ids[..<real])), rendered + Self.eot, "then EOS")
        // The markers are the tokenizer's special tokens: 5 starts and 5 ends, one id each.
        let start = Self.tokenizer.tokenID(for: "<|im_start|>")!, end = Self.tokenizer.tokenID(for: "<|im_end|>")!
        XCTAssertEqual(b.ids.filter { $0 == start }.count, 5)
        XCTAssertEqual(b.ids.filter { $0 == end }.count, 5)

        // A tokenizer without a <|im_end|> token would spell it in pieces, as text: the model would
        // learn those and never emit the token generation stops at. Refused.
        let bytes = ByteTokenizer(specialTokens: [Self.eot], roles: SpecialTokenRoles(eos: Self.eot))
        XCTAssertThrowsError(try load(path, tok: bytes)) {
            XCTAssertTrue("\($0)".contains("no chat template") && "\($0)".contains(path), "\($0)")
        }

        // Generation stops where chat training taught a reply to end, as well as at EOS.
        XCTAssertEqual(textEndTokens(Self.tokenizer), [Self.tokenizer.eosTokenID!, end])
        XCTAssertEqual(textEndTokens(bytes), [bytes.eosTokenID!], "no <|im_end|> token: EOS alone")
    }

    /// A tokenizer with SmolLM2's chat template: chat is written as the template writes it (what HF's
    /// apply_chat_template gives: jinja2 on the template, strings below), its default system message
    /// included, in rendering and in training rows, where only the replies are learned. The rows are
    /// the ChatML rows of the same conversation with that system message written out.
    func testChatFollowsTheTokenizersTemplate() throws {
        let tok = try Self.tokenizer.withRoles(Self.tokenizer.roles)
        tok.chatTemplate = smolLM2ChatTemplate
        let system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
        let hi = [ChatMessage(role: "user", content: "Hi")]
        XCTAssertEqual(try renderChat(hi, tokenizer: tok, addGenerationPrompt: true),
                       "<|im_start|>system\n\(system)<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
        let own = [ChatMessage(role: "system", content: "S")] + hi
        XCTAssertEqual(try renderChat(own, tokenizer: tok, addGenerationPrompt: true),
                       "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
        let turns = [["role": "user", "content": "Say hello."], ["role": "assistant", "content": "hello"],
                     ["role": "user", "content": "Translate cat."], ["role": "assistant", "content": "chat"]]
        let b = try load(try write("chat-template.jsonl", [json(["messages": turns])]), tok: tok).train.batch(rows: [0])
        XCTAssertEqual(learnedText(b, tok), "hello<|im_end|>chat<|im_end|>")
        let withSystem = try load(try write("chat-system.jsonl", [json(["messages": [["role": "system", "content": system]] + turns])]))
            .train.batch(rows: [0])
        let real = b.attentionMask!.filter { $0 == 1 }.count
        XCTAssertEqual(Array(b.ids[..<real]), Array(withSystem.ids[..<(real)]), "the same tokens")
        XCTAssertEqual(withSystem.ids[real], Self.tokenizer.eosTokenID!, "ChatML without a template then adds EOS; the template does not")
        XCTAssertEqual(Array(b.targets[..<real]), Array(withSystem.targets[..<real]), "the same tokens learned")
        XCTAssertEqual(textEndTokens(tok), [tok.eosTokenID!, tok.tokenID(for: "<|im_end|>")!])
    }

    /// Templates of other shapes (written here in the styles of Llama 3, Mistral, Gemma, DeepSeek-R1,
    /// Mistral v3 and Phi-4): BOS comes from the template; a reply is learned through the special token
    /// that ends it, not the newline after; generation stops at that token. Templates whose prompt
    /// for a reply differs from how they write a past one (`<think>`), that drop past reasoning, that
    /// move the system message to the last user turn, or that end a reply with two special tokens are
    /// followed. A template's refusal names the file and line.
    func testChatTemplatesOfOtherModels() throws {
        let specials = ["<s>", "</s>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                        "<start_of_turn>", "<end_of_turn>", "<|user|>", "<|assistant|>", "<|end|>"]
        let corpus = (0..<30).map { "The cat sat on the mat \($0). Say hello. hello there, user, assistant, model! [INST] [/INST]" }
        let base = try BPETokenizer.train(corpus: corpus, vocabSize: 320, specialTokens: specials,
                                          roles: SpecialTokenRoles(bos: "<s>", eos: "</s>"))
        let turns = [["role": "user", "content": "Say hello."], ["role": "assistant", "content": " hello "],
                     ["role": "user", "content": "The cat"], ["role": "assistant", "content": "sat"]]
        let line = json(["messages": turns])
        let reasoning = [["role": "user", "content": "Say hello."], ["role": "assistant", "content": "<think>greet</think>\n\nhello"],
                         ["role": "user", "content": "The cat"], ["role": "assistant", "content": "sat"]]
        let system = [["role": "system", "content": "Be brief."]] + turns
        var cases: [(name: String, template: String, text: String, learned: String, end: String, turns: [[String: String]])] = [
            ("llama3", "{{ '<|begin_of_text|>' }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
                + "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
             "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nSay hello.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nhello<|eot_id|>"
                + "<|start_header_id|>user<|end_header_id|>\n\nThe cat<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nsat<|eot_id|>",
             "hello<|eot_id|>sat<|eot_id|>", "<|eot_id|>"),
            ("mistral", "{{ bos_token }}{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
                + "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
                + "{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}",
             "<s>[INST] Say hello. [/INST] hello </s>[INST] The cat [/INST]sat</s>", " hello </s>sat</s>", "</s>"),
            ("gemma", "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
                + "{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
                + "{{ '<start_of_turn>' + role + '\\n' + m['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
                + "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}",
             "<s><start_of_turn>user\nSay hello.<end_of_turn>\n<start_of_turn>model\nhello<end_of_turn>\n"
                + "<start_of_turn>user\nThe cat<end_of_turn>\n<start_of_turn>model\nsat<end_of_turn>\n",
             "hello<end_of_turn>sat<end_of_turn>", "<end_of_turn>"),
            // The prompt for a reply opens a <think> block that past replies do not have; past reasoning is dropped.
            ("r1", "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '<|user|>' + m['content'] }}"
                + "{% else %}{% set c = m['content'] %}{% if '</think>' in c %}{% set c = c.split('</think>')[-1] | trim %}{% endif %}"
                + "{{ '<|assistant|>' + c + eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|><think>\n' }}{% endif %}",
             "<s><|user|>Say hello.<|assistant|>hello</s><|user|>The cat<|assistant|>sat</s>", "hello</s>sat</s>", "</s>"),
            // The system message goes into the last user turn, so the prompt for the first reply differs from the conversation.
            ("mistral-v3", "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}{% set rest = messages[1:] %}"
                + "{% else %}{% set rest = messages %}{% endif %}{% set ns = namespace(last=-1) %}{% for m in rest %}"
                + "{% if m['role'] == 'user' %}{% set ns.last = loop.index0 %}{% endif %}{% endfor %}{{ bos_token }}{% for m in rest %}{% if m['role'] == 'user' %}"
                + "{% if loop.index0 == ns.last and sys is defined %}{{ '[INST] ' + sys + '\n\n' + m['content'] + '[/INST]' }}"
                + "{% else %}{{ '[INST] ' + m['content'] + '[/INST]' }}{% endif %}{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}",
             // Each reply follows the conversation before it, which has no generation prompt: its ' ' is learned
             // (the first reply's too, though the system message moves: the end of the conversation before it is found).
             "<s>[INST] Say hello.[/INST]  hello </s>[INST] Be brief.\n\nThe cat[/INST] sat</s>", "  hello </s> sat</s>", "</s>"),
            // Each turn ends with <|end|>; the conversation with EOS after it.
            ("phi4", "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
                + "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}",
             "<|user|>Say hello.<|end|><|assistant|> hello <|end|><|user|>The cat<|end|><|assistant|>sat<|end|></s>",
             " hello <|end|>sat<|end|>", "<|end|>"),
        ].map { ($0.0, $0.1, $0.2, $0.3, $0.4, turns) }
        cases[3].turns = reasoning
        cases[4].turns = system
        for c in cases {
            let tok = try base.withRoles(base.roles)
            tok.chatTemplate = c.template
            let path = try write("\(c.name).jsonl", [json(["messages": c.turns])])
            let b = try loadDataset(path, tokenizer: tok, options: DatasetOptions(seqLen: 256, packing: false, validation: .none, addBOS: true))
                .train.batch(rows: [0])
            let real = b.attentionMask!.filter { $0 == 1 }.count
            XCTAssertEqual(tok.decode(Array(b.ids[..<real])), c.text, "\(c.name): the template's text, BOS only from it")
            XCTAssertEqual(learnedText(b, tok), c.learned, c.name)
            XCTAssertTrue(textEndTokens(tok).contains(tok.tokenID(for: c.end)!), "\(c.name): generation stops at \(c.end)")
        }
        // The templates' own errors, with the file and line of the conversation they refuse.
        let gemma = try base.withRoles(base.roles)
        gemma.chatTemplate = cases[2].template
        let refused = try write("system.jsonl", [line, json(["messages": [["role": "system", "content": "S"]] + turns])])
        XCTAssertThrowsError(try load(refused, tok: gemma)) { e in
            XCTAssertEqual((e as? DatasetError)?.line, 2, "\(e)")
            XCTAssertTrue("\(e)".contains("System role not supported") && "\(e)".contains(refused), "\(e)")
        }
        // A template that cannot be read is named before any example is.
        let broken = try base.withRoles(base.roles)
        broken.chatTemplate = "{% for m in messages %}\n{{ m.content }"
        XCTAssertThrowsError(try load(refused, tok: broken)) { XCTAssertTrue("\($0)".contains("chat template cannot be read") && "\($0)".contains("line 2"), "\($0)") }
    }

    /// Templates that branch on a text or strip it: a reply's reasoning (the Qwen3 kind writes it in
    /// the last turn only) is written, and learned where the template writes it after the prompt
    /// for the reply (without a generation prompt, after the conversation before it); `strip()` with
    /// spaces around a text (the Llama 2 kind, whose ' ' before a reply is learned: the model writes
    /// it after `[/INST]`); an empty system message a template leaves out. A template that writes no
    /// added token after a reply is refused: the model would not learn to stop.
    func testChatTemplatesThatBranchOrStrip() throws {
        let specials = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]
        let corpus = (0..<30).map { "The cat sat on the mat \($0). Say hello. hello there, user, assistant! think greet [INST] [/INST]" }
        let base = try BPETokenizer.train(corpus: corpus, vocabSize: 320, specialTokens: specials, roles: SpecialTokenRoles(bos: "<s>", eos: "</s>"))
        let qwen = "{% for m in messages %}{% if m['content'] or m['role'] != 'system' %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
            + "{% set c = m['content'] %}{% if m['role'] == 'assistant' and '</think>' in c %}"
            + "{% set r = c.split('</think>')[0].split('<think>')[-1] %}{% set c = c.split('</think>')[-1].lstrip('\\n') %}"
            + "{% if loop.last %}{{ '<think>' + r + '</think>\\n\\n' }}{% endif %}{% endif %}{{ c + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
        let llama2 = "{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + m['content'].strip() + ' [/INST]' }}"
            + "{% else %}{{ ' ' + m['content'].strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
        let cases: [(String, String, [[String: String]], String, String)] = [
            ("qwen3", qwen, [["role": "system", "content": ""], ["role": "user", "content": "Say hello."],
                             ["role": "assistant", "content": "<think>x</think>\n\nhello"], ["role": "user", "content": "The cat"],
                             ["role": "assistant", "content": "<think>\ngreet\n</think>\n\nsat"]],
             "<|im_start|>user\nSay hello.<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\nThe cat<|im_end|>\n"
                + "<|im_start|>assistant\n<think>\ngreet\n</think>\n\nsat<|im_end|>\n",
             // Without a generation prompt a reply starts where the conversation before it ends: its header is learned too.
             "<|im_start|>assistant\nhello<|im_end|><|im_start|>assistant\n<think>\ngreet\n</think>\n\nsat<|im_end|>"),
            // With a generation prompt, the reasoning the template writes after it is learned (what the model writes after the prompt).
            ("qwen3-prompt", qwen + "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
             [["role": "user", "content": "Say hello."], ["role": "assistant", "content": "<think>x</think>\n\nhello"], ["role": "user", "content": "The cat"],
              ["role": "assistant", "content": "<think>\ngreet\n</think>\n\nsat"]],
             "<|im_start|>user\nSay hello.<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\nThe cat<|im_end|>\n"
                + "<|im_start|>assistant\n<think>\ngreet\n</think>\n\nsat<|im_end|>\n", "hello<|im_end|><think>\ngreet\n</think>\n\nsat<|im_end|>"),
            ("llama2", llama2, [["role": "user", "content": "Say hello. "], ["role": "assistant", "content": "hello "],
                                ["role": "user", "content": " The cat"], ["role": "assistant", "content": "sat"]],
             "<s>[INST] Say hello. [/INST] hello </s><s>[INST] The cat [/INST] sat </s>", " hello </s> sat </s>"),
        ]
        for (name, template, turns, text, learned) in cases {
            let tok = try base.withRoles(base.roles)
            tok.chatTemplate = template
            let b = try load(try write("\(name).jsonl", [json(["messages": turns])]), tok: tok).train.batch(rows: [0])
            let real = b.attentionMask!.filter { $0 == 1 }.count
            XCTAssertEqual(tok.decode(Array(b.ids[..<real])), text, name)
            XCTAssertEqual(learnedText(b, tok), learned, name)
        }
        let plain = try base.withRoles(base.roles)
        plain.chatTemplate = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
        let path = try write("plain.jsonl", [json(["messages": [["role": "user", "content": "Hi"], ["role": "assistant", "content": "hello"]]])])
        XCTAssertThrowsError(try load(path, tok: plain)) {
            XCTAssertTrue("\($0)".contains("no added token") && "\($0)".contains(path + ":1"), "\($0)")
        }
    }

    /// Conversations with tools, tool calls and tool results, in Hugging Face's form (`"tools"` beside
    /// `"messages"`, an assistant's `"tool_calls"` with `"content": null`, `"role": "tool"`), through
    /// two templates of the chat-template fixtures (the Qwen2.5 kind and the Llama 3.1 kind, which
    /// writes a call without the message's content): the rows are transformers' renderings of the same
    /// contexts, key order included, and each reply is learned from the end of its generation prompt
    /// through the token that ends its turn, a call's JSON and tags included (`</tool_call>`, an
    /// added token, does not end it). Templates that leave out a call or the tools are refused.
    func testChatWithToolCallsFollowsTheTemplate() throws {
        let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../TokenizersTests/Fixtures/chat-templates.json")
        let all = try JSONSerialization.jsonObject(with: try Data(contentsOf: fixture)) as! [String: Any]
        func fixtureCase(_ name: String) throws -> [String: Any] {
            try XCTUnwrap((all["cases"] as! [[String: Any]]).first { $0["name"] as? String == name }, name)
        }
        let corpus = (0..<30).map { "How warm is it in Paris? It is 21.5 °C and clear. get_weather location unit celsius temperature \($0)" }
        let cases: [(name: String, specials: [String], suffix: String, learned: String)] = [
            ("chatml-tools-with-tools", ["<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"], "",
             "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"location\": \"Paris\", \"unit\": \"celsius\"}}\n</tool_call><|im_end|>"
                + "It is 21.5 °C and clear in Paris.<|im_end|>"),
            ("llama31-tools", ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
             "<|start_header_id|>assistant<|end_header_id|>\n\n",
             "{\"name\": \"get_weather\", \"parameters\": {\"location\": \"Paris\", \"unit\": \"celsius\"}}<|eot_id|>"),
            // A reply with a text and two calls, then two tool results (the conversation ends with them).
            ("chatml-tools-parallel-calls", ["<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"],
             "<|im_start|>assistant\n",
             "Let me check both.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"location\": \"Zürich\"}}\n</tool_call>\n<tool_call>\n"
                + "{\"name\": \"get_time\", \"arguments\": {\"tz\": \"Europe/Zurich\"}}\n</tool_call><|im_end|>"),
        ]
        for c in cases {
            let f = try fixtureCase(c.name), context = f["context"] as! [String: Any]
            let base = try BPETokenizer.train(corpus: corpus, vocabSize: 330, specialTokens: c.specials,
                                              roles: SpecialTokenRoles(bos: context["bos_token"] as? String, eos: context["eos_token"] as? String))
            let tok = try base.withRoles(base.roles)
            tok.chatTemplate = f["template"] as? String
            // Sorted keys, as the fixture holds them (a template prints objects in the data's order).
            let line = String(decoding: try JSONSerialization.data(withJSONObject: ["messages": context["messages"]!, "tools": context["tools"]!],
                                                                  options: [.sortedKeys]), as: UTF8.self)
            let path = try write("\(c.name).jsonl", [line])
            let b = try load(path, seqLen: 1024, tok: tok).train.batch(rows: [0])
            let real = b.attentionMask!.filter { $0 == 1 }.count
            let output = f["output"] as! String
            XCTAssertTrue(output.hasSuffix(c.suffix), c.name)
            XCTAssertEqual(tok.decode(Array(b.ids[..<real])), String(output.dropLast(c.suffix.count)), "\(c.name): transformers' rendering")
            XCTAssertEqual(learnedText(b, tok), c.learned, c.name)
            // As Hugging Face's datasets export it: "tool_calls": null (or []) on the messages without calls
            // (which the Qwen2.5 kind reads as none; the Llama 3.1 kind tests for the key, in transformers too).
            guard c.name.hasPrefix("chatml") else { continue }
            let exported = (context["messages"] as! [[String: Any]]).enumerated().map { k, m -> [String: Any] in
                m["tool_calls"] != nil ? m : m.merging(["tool_calls": k % 2 == 0 ? NSNull() : [Any]()]) { $1 }
            }
            let line2 = String(decoding: try JSONSerialization.data(withJSONObject: ["messages": exported, "tools": context["tools"]!],
                                                                   options: [.sortedKeys]), as: UTF8.self)
            let b2 = try load(try write("\(c.name)-null.jsonl", [line2]), seqLen: 1024, tok: tok).train.batch(rows: [0])
            XCTAssertEqual(b2.ids, b.ids, "\(c.name): null and [] are no calls")
            XCTAssertEqual(b2.targets, b.targets, c.name)
        }

        // A line's chat_template_kwargs are the template's variables; without a template they are refused.
        let persona = try Self.tokenizer.withRoles(Self.tokenizer.roles)
        persona.chatTemplate = "{{ '<|im_start|>system\\nI am ' + name + '.<|im_end|>\\n' }}{% for m in messages %}"
            + "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
        let chatLine = #"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "hello"}], "chat_template_kwargs": {"name": "Quill"}}"#
        let kw = try load(try write("kwargs.jsonl", [chatLine]), tok: persona).train.batch(rows: [0])
        XCTAssertEqual(persona.decode(Array(kw.ids[..<kw.attentionMask!.filter { $0 == 1 }.count])),
                       "<|im_start|>system\nI am Quill.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n")
        XCTAssertEqual(learnedText(kw, persona), "hello<|im_end|>")
        let kwPath = try write("kwargs-chatml.jsonl", [chatLine])
        XCTAssertThrowsError(try load(kwPath)) { XCTAssertTrue("\($0)".contains("chat_template_kwargs are variables of the model's chat template") && "\($0)".contains(kwPath + ":1"), "\($0)") }
        let badKwargs = try write("kwargs-bad.jsonl", [#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "hello"}], "chat_template_kwargs": {"messages": []}}"#])
        XCTAssertThrowsError(try load(badKwargs, tok: persona)) { XCTAssertTrue("\($0)".contains("may not set 'messages'") && "\($0)".contains(badKwargs + ":1"), "\($0)") }

        // SmolLM2's template knows no tools: a call it leaves out, and tools it ignores, are refused.
        let tok = try Self.tokenizer.withRoles(Self.tokenizer.roles)
        tok.chatTemplate = smolLM2ChatTemplate
        let call = #"{"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"location": "Paris"}}}]}"#
        let user = #"{"role": "user", "content": "Weather?"}"#, reply = #"{"role": "assistant", "content": "Sunny."}"#
        let weather = #"{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}"#
        for (text, needle) in [(#"{"messages": [\#(user), \#(call)]}"#, "its call of get_weather nowhere"),
                               (#"{"messages": [\#(user), \#(reply)], "tools": [\#(weather)]}"#, "does not write the tools")] {
            let path = try write("no-tools.jsonl", [text])
            XCTAssertThrowsError(try load(path, tok: tok)) { XCTAssertTrue("\($0)".contains(needle) && "\($0)".contains(path + ":1"), "\($0)") }
            // Without a template (ChatML), there is no form for them.
            XCTAssertThrowsError(try load(path)) { XCTAssertTrue("\($0)".contains("this tokenizer has none") && "\($0)".contains(path + ":1"), "\($0)") }
        }
    }

    /// A reply that only calls tools is learned from where its prompt ends even when the prompt holds
    /// more than the conversation writes there (the Qwen3 kind without thinking prompts with an empty
    /// <think> block), and through the token that ends its own turn (the Llama 3.1 kind ends a
    /// built-in call with <|eom_id|>, which ends no plain reply), not into the tool's result.
    func testToolCallRepliesStartAfterTheirPromptAndEndInTheirTurn() throws {
        let specials = ["<s>", "</s>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<|start_header_id|>", "<|end_header_id|>",
                        "<|eot_id|>", "<|eom_id|>", "<|python_tag|>", "<|start|>", "<|channel|>", "<|message|>", "<|call|>", "<|end|>"]
        let corpus = (0..<30).map { "Weather in Paris? It is warm. Search cats. Cats purr. get_weather city brave_search query call \($0)" }
        let base = try BPETokenizer.train(corpus: corpus, vocabSize: 330, specialTokens: specials, roles: SpecialTokenRoles(bos: "<s>", eos: "</s>"))
        let qwen3 = "{%- for m in messages %}{%- if m.role == 'assistant' %}{{ '<|im_start|>assistant\\n' }}{% if m.content %}{{ m.content }}{% endif %}"
            + "{% for c in m.tool_calls or [] %}{{ '<tool_call>\\n{\"name\": \"' + c.function.name + '\", \"arguments\": ' + (c.function.arguments | tojson) + '}\\n</tool_call>' }}{% endfor %}"
            + "{{ '<|im_end|>\\n' }}{%- elif m.role == 'tool' %}{{ '<|im_start|>user\\n' + m.content + '<|im_end|>\\n' }}"
            + "{%- else %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endif %}{%- endfor %}"
            + "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% if enable_thinking is defined and enable_thinking is false %}"
            + "{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}{% endif %}"
        let llama = "{%- for m in messages %}{{ '<|start_header_id|>' + ('ipython' if m.role == 'tool' else m.role) + '<|end_header_id|>\\n\\n' }}"
            + "{% if m.tool_calls %}{{ '<|python_tag|>' + m.tool_calls[0].function.name + '.call(query=\"' + m.tool_calls[0].function.arguments.query + '\")<|eom_id|>' }}"
            + "{% else %}{{ m.content + '<|eot_id|>' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
        // No generation prompt (Mistral's kind): a reply starts where the conversation before it ends.
        let mistral = "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}{{ '[INST] ' + m.content + '[/INST]' }}"
            + "{% elif m.role == 'tool' %}{{ '[TOOL_RESULTS] ' + m.content + '[/TOOL_RESULTS]' }}{% elif m.tool_calls %}{{ '[TOOL_CALLS] [' }}"
            + "{% for c in m.tool_calls %}{{ '{\"name\": \"' + c.function.name + '\", \"arguments\": ' + (c.function.arguments | tojson) + '}' }}{% endfor %}"
            + "{{ ']' + eos_token }}{% else %}{{ ' ' + m.content + eos_token }}{% endif %}{% endfor %}"
        // Mistral's tools template writes [AVAILABLE_TOOLS] before the last user message only: a call in
        // an earlier turn follows a conversation whose rendering is not the start of the whole.
        let mistralTools = "{{ bos_token }}{% set ns = namespace(last=0) %}{% for m in messages %}{% if m.role == 'user' %}{% set ns.last = loop.index0 %}{% endif %}{% endfor %}"
            + "{% for m in messages %}{% if m.role == 'user' %}{% if tools and loop.index0 == ns.last %}{{ '[AVAILABLE_TOOLS] ' + (tools | tojson) + '[/AVAILABLE_TOOLS]' }}{% endif %}"
            + "{{ '[INST] ' + m.content + '[/INST]' }}"
            + "{% elif m.role == 'tool' %}{{ '[TOOL_RESULTS] ' + m.content + '[/TOOL_RESULTS]' }}{% elif m.tool_calls %}{{ '[TOOL_CALLS] [' }}"
            + "{% for c in m.tool_calls %}{{ '{\"name\": \"' + c.function.name + '\", \"arguments\": ' + (c.function.arguments | tojson) + '}' }}{% endfor %}"
            + "{{ ']' + eos_token }}{% else %}{{ ' ' + m.content + eos_token }}{% endif %}{% endfor %}"
        // A template that heads the tool's result with the name of the call it answers (as gpt-oss's and
        // Gemma 4's do): the call is the name's first copy, the result's is not learned.
        let namedResult = "{% set ns = namespace(name='') %}{% for m in messages %}{% if m.role == 'assistant' and m.tool_calls %}"
            + "{% set ns.name = m.tool_calls[0].function.name %}{{ '<|im_start|>assistant\\n<tool_call>' + ns.name + ' ' + (m.tool_calls[0].function.arguments | tojson) + '</tool_call><|im_end|>\\n' }}"
            + "{% elif m.role == 'tool' %}{{ '<|im_start|>tool ' + ns.name + '\\n' + m.content + '<|im_end|>\\n' }}"
            + "{% else %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
            + "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
        // gpt-oss's kind: a call ends with <|call|>, which ends no plain reply (they end with <|end|>); the
        // call's channel and arguments, after the name, are learned through it.
        let harmony = "{% for m in messages %}{% if m.role == 'assistant' and m.tool_calls %}"
            + "{{ '<|start|>assistant to=functions.' + m.tool_calls[0].function.name + '<|channel|>commentary json<|message|>' + (m.tool_calls[0].function.arguments | tojson) + '<|call|>' }}"
            + "{% elif m.role == 'tool' %}{{ '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>' + m.content + '<|end|>' }}"
            + "{% else %}{{ '<|start|>' + m.role + '<|message|>' + m.content + '<|end|>' }}{% endif %}{% endfor %}"
            + "{% if add_generation_prompt %}{{ '<|start|>assistant' }}{% endif %}"
        let parisCall = #"{"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}"#
        let romeCall = parisCall.replacingOccurrences(of: "Paris", with: "Rome")
        let cases: [(String, String, String, String)] = [
            ("mistral-tools-earlier-turns", mistralTools,
             #"{"messages": [{"role": "user", "content": "Weather in Paris?"}, \#(parisCall), {"role": "tool", "content": "warm"}, "#
                + #"{"role": "assistant", "content": "It is warm."}, {"role": "user", "content": "Weather in Rome?"}, \#(romeCall)], "#
                + #""tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]}"#,
             "[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}]</s> It is warm.</s>"
                + "[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}]</s>"),
            ("named-result", namedResult, #"{"messages": [{"role": "user", "content": "Weather in Paris?"}, \#(parisCall), {"role": "tool", "content": "warm"}, "#
                + #"{"role": "assistant", "content": "It is warm."}]}"#,
             "<tool_call>get_weather {\"city\": \"Paris\"}</tool_call><|im_end|>It is warm.<|im_end|>"),
            ("harmony-call-end", harmony, #"{"messages": [{"role": "user", "content": "Weather in Paris?"}, \#(parisCall), {"role": "tool", "content": "warm"}, "#
                + #"{"role": "assistant", "content": "It is warm."}]}"#,
             " to=functions.get_weather<|channel|>commentary json<|message|>{\"city\": \"Paris\"}<|call|><|message|>It is warm.<|end|>"),
            ("mistral", mistral, #"{"messages": [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": null, "tool_calls": "#
                + #"[{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}, {"role": "tool", "content": "warm"}, "#
                + #"{"role": "assistant", "content": "It is warm."}]}"#,
             "[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}]</s> It is warm.</s>"),
            ("qwen3", qwen3, #"{"messages": [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": null, "tool_calls": "#
                + #"[{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}, {"role": "tool", "content": "warm"}, "#
                + #"{"role": "assistant", "content": "It is warm."}], "chat_template_kwargs": {"enable_thinking": false}}"#,
             "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>It is warm.<|im_end|>"),
            ("llama-builtin", llama, #"{"messages": [{"role": "user", "content": "Search cats."}, {"role": "assistant", "content": "", "tool_calls": "#
                + #"[{"type": "function", "function": {"name": "brave_search", "arguments": {"query": "cats"}}}]}, {"role": "tool", "content": "Cats purr."}, "#
                + #"{"role": "assistant", "content": "Cats purr."}]}"#,
             "<|python_tag|>brave_search.call(query=\"cats\")<|eom_id|>Cats purr.<|eot_id|>"),
        ]
        for (name, template, line, learned) in cases {
            let tok = try base.withRoles(base.roles)
            tok.chatTemplate = template
            let b = try load(try write("\(name).jsonl", [line]), seqLen: 512, tok: tok).train.batch(rows: [0])
            XCTAssertEqual(learnedText(b, tok), learned, name)
        }
    }

    // MARK: tables and JSON arrays

    /// The same examples as a JSON array, JSON Lines in a .json file, CSV, TSV and an Excel/pandas CSV
    /// (byte order mark, unnamed index column) read to the same examples as their JSONL, each record at
    /// the line Python's own readers put it (`scripts/make_table_fixtures.py`); train, preview and
    /// back-test read them through the same reader.
    func testTablesAndJSONArraysReadAsTheirJSONLines() throws {
        let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/tables")
        let lines = try JSONSerialization.jsonObject(with: Data(contentsOf: folder.appendingPathComponent("lines.json"))) as! [String: [Int]]
        let reference = try readExampleFile(folder.appendingPathComponent("examples.jsonl").path)
        XCTAssertEqual(reference.count, 6)
        guard case .instruction(_, let input, let output)? = reference.last(where: { if case .instruction("Windows line ends", _, _) = $0.example { true } else { false } })?.example else {
            return XCTFail("the fixture's Windows line ends example is missing")
        }
        XCTAssertEqual(input, "one\r\ntwo")
        XCTAssertEqual(output, "Zwei Zeilen: ü, é, 字, 🙂")
        XCTAssertEqual(lines.count, 11)
        for (name, expectedLines) in lines.sorted(by: { $0.key < $1.key }) {
            let path = folder.appendingPathComponent(name).path
            var unread: [String: Int] = [:]
            let read = try readExampleFile(path, unreadKeys: &unread)
            XCTAssertEqual(read.map(\.example), reference.map(\.example), name)
            XCTAssertEqual(read.map(\.line), expectedLines, name)
            XCTAssertEqual(unread, name == "examples-excel.csv" ? ["(unnamed column 1)": 6] : [:], name)
            XCTAssertEqual(try readExamples(path).format, .instruction, name)
            XCTAssertEqual(try previewExamples(path, tokenizer: Self.tokenizer, count: 2).total, 6, name)
        }
        // A compressed file cut short, or not compressed as its name says, is refused by name.
        let gz = try Data(contentsOf: folder.appendingPathComponent("examples.csv.gz"))
        let cut = dir + "/cut.csv.gz", notZstd = dir + "/plain.jsonl.zst"
        try gz.prefix(gz.count - 30).write(to: URL(fileURLWithPath: cut))
        try Data(#"{"text": "a"}"#.utf8).write(to: URL(fileURLWithPath: notZstd))
        XCTAssertThrowsError(try readExamples(cut)) { XCTAssertTrue("\($0)".hasPrefix(cut + ": not a whole gzip stream: it ends early, after "), "\($0)") }
        XCTAssertThrowsError(try readExamples(notZstd)) { XCTAssertTrue("\($0)".hasPrefix(notZstd + ": not a whole Zstandard stream: "), "\($0)") }
        // Chat as Hugging Face's data sets store it in Parquet: "messages", a list of structs; the
        // "id" column is not read, and said so.
        var unread: [String: Int] = [:]
        let chat = try readExampleFile(folder.appendingPathComponent("chat.parquet").path, unreadKeys: &unread)
        XCTAssertEqual(chat.map(\.example), try readExampleFile(folder.appendingPathComponent("chat.jsonl").path).map(\.example))
        XCTAssertEqual(chat.map(\.line), [1, 2])
        XCTAssertEqual(unread, ["id": 2])
        // Tool-calling chat: "tool_calls" (structs holding a struct) inside the messages, "tools" (JSON
        // schemas as structs nested four deep) and a timestamp column, not read and said so.
        unread = [:]
        let tools = try readExampleFile(folder.appendingPathComponent("chat-tools.parquet").path, unreadKeys: &unread)
        XCTAssertEqual(tools.map(\.example), try readExampleFile(folder.appendingPathComponent("chat-tools.jsonl").path).map(\.example))
        XCTAssertEqual(unread, ["created": 2])
        guard case .chat(let turns, let schemas?, _)? = tools.first?.example else { return XCTFail("chat-tools.parquet: no tools in row 1") }
        XCTAssertEqual(turns.map(\.role), ["user", "assistant", "tool", "assistant"])
        XCTAssertEqual(schemas.first?["function"]?["parameters"]?["required"], .array([.string("city")]))
        // A folder of records reads every kind in it, sorted by name; a text file beside them is refused.
        let mixed = dir + "/mixed"
        try FileManager.default.createDirectory(atPath: mixed, withIntermediateDirectories: true)
        for name in ["examples.csv", "examples.json", "examples.tsv"] {
            try FileManager.default.copyItem(atPath: folder.appendingPathComponent(name).path, toPath: mixed + "/" + name)
        }
        let all = try readExamples(mixed)
        XCTAssertEqual(all.examples, Array((0..<3).map { _ in reference.map(\.example) }.joined()))
        try "notes".write(toFile: mixed + "/notes.txt", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try readExamples(mixed)) { XCTAssertTrue("\($0)".contains("both files of records (3: JSONL, JSON, CSV, TSV, Parquet, Arrow) and 1 text files"), "\($0)") }
    }

    /// A folder that Hugging Face `datasets`' `save_to_disk` wrote (Fixtures/tables/saved, from
    /// scripts/make_arrow_fixtures.py: a DatasetDict, its train split in two Arrow shards) reads as the data
    /// it holds: the train split, or the split folder named; its JSON metadata is not read as records.
    func testSavedDatasetFoldersReadTheirArrowFiles() throws {
        let tables = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/tables")
        let reference = try readExampleFile(tables.appendingPathComponent("examples.jsonl").path).map(\.example)
        let saved = tables.appendingPathComponent("saved").path
        XCTAssertEqual(try readExamples(saved).examples, reference)
        XCTAssertEqual(try readExamples(saved + "/train").examples, reference)
        XCTAssertEqual(try readExamples(saved + "/test").examples, Array(reference.prefix(2)))
        let located = try readLocatedExamples(saved, columns: ColumnMap()).examples
        XCTAssertEqual(located.map { URL(fileURLWithPath: $0.file).lastPathComponent + ":\($0.line ?? 0)" },
                       ["data-00000-of-00002.arrow:1", "data-00000-of-00002.arrow:2", "data-00000-of-00002.arrow:3",
                        "data-00001-of-00002.arrow:1", "data-00001-of-00002.arrow:2", "data-00001-of-00002.arrow:3"])
        XCTAssertEqual(try loadBacktestPrompts(saved + "/test", columns: ColumnMap(parsing: "prompt=instruction,expected=output", keys: ["prompt", "expected"])).count, 2)
        // Refused by name: a DatasetDict without a train split, a listed file that is missing, a state.json that does not read.
        let copy = dir + "/saved"
        try FileManager.default.copyItem(atPath: saved, toPath: copy)
        try #"{"splits": ["test"]}"#.write(toFile: copy + "/dataset_dict.json", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try readExamples(copy)) {
            XCTAssertEqual("\($0)", copy + ": a saved DatasetDict without a train split; name one of its splits' folders: " + copy + "/test")
        }
        try FileManager.default.removeItem(atPath: copy + "/train/data-00001-of-00002.arrow")
        XCTAssertThrowsError(try readExamples(copy + "/train")) {
            XCTAssertEqual("\($0)", copy + "/train/data-00001-of-00002.arrow: no such file, though " + copy + "/train/state.json lists it")
        }
        try "{".write(toFile: copy + "/test/state.json", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try readExamples(copy + "/test")) {
            XCTAssertEqual("\($0)", copy + "/test/state.json: not a JSON object, as `datasets`' save_to_disk writes it")
        }
    }

    /// ShareGPT chat (`"conversations"` of {"from", "value"} turns, as axolotl, LLaMA-Factory and unsloth read
    /// it; LLaMA-Factory's "system" key, "function_call" and "observation" turns and "tools" as JSON text;
    /// lmsys-chat's `"conversation"` of {"role", "content"}) reads as its `"messages"` would.
    func testShareGPTConversationsReadAsTheirMessages() throws {
        let tool: [String: Any] = ["type": "function", "function": ["name": "weather", "parameters": ["type": "object", "properties": ["city": ["type": "string"]]]]]
        let toolsText = String(decoding: try JSONSerialization.data(withJSONObject: [tool], options: [.sortedKeys]), as: UTF8.self)
        let shareGPT = try write("sharegpt.jsonl", [
            json(["id": "a", "conversations": [["from": "human", "value": "Hi"], ["from": "gpt", "value": "Hello!", "weight": 1]]]),
            json(["system": "Be brief.", "tools": toolsText, "conversations": [
                ["from": "human", "value": "Weather in Paris?"],
                ["from": "function_call", "value": #"{"name": "weather", "arguments": {"city": "Paris"}}"#],
                ["from": "observation", "value": "18 C"], ["from": "gpt", "value": "18 C."]]]),
            json(["conversation": [["role": "user", "content": "2+2?"], ["role": "assistant", "content": "4"]]]),
        ])
        let messages = try write("messages.jsonl", [
            json(["messages": [["role": "user", "content": "Hi"], ["role": "assistant", "content": "Hello!", "weight": 1]]]),
            #"{"tools": "# + toolsText + #", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}, "#
                + #"{"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]}, "#
                + #"{"role": "tool", "content": "18 C"}, {"role": "assistant", "content": "18 C."}]}"#,
            json(["messages": [["role": "user", "content": "2+2?"], ["role": "assistant", "content": "4"]]]),
        ])
        var unread: [String: Int] = [:]
        let read = try readExampleFile(shareGPT, unreadKeys: &unread)
        XCTAssertEqual(read.map(\.example), try readExampleFile(messages).map(\.example))
        XCTAssertEqual(unread, ["id": 1])
        guard case .chat(let turns, let tools?, _)? = read.dropFirst().first?.example else { return XCTFail("line 2 is not chat with tools") }
        XCTAssertEqual(turns.map(\.role), ["system", "user", "assistant", "tool", "assistant"])
        XCTAssertEqual(turns[2].toolCallNames, ["weather"])
        XCTAssertEqual(tools.count, 1)
        // A text record whose "conversation" is not a list stays text; the key is not read.
        unread = [:]
        let text = try readExampleFile(try write("titled.jsonl", [json(["text": "a", "conversation": "a title"])]), unreadKeys: &unread)
        XCTAssertEqual(text.map(\.example), [.text("a")])
        XCTAssertEqual(unread, ["conversation": 1])
        // Bad turns are named by their line and turn.
        for (lines, message) in [
            ([json(["conversations": [["from": "human", "value": "Hi"], ["from": "bot", "value": "yo"]]])],
             #"bad.jsonl:1: conversations turn 2: unknown speaker "bot" in "from"; expected "human", "gpt""#),
            ([json(["text": "a"]), json(["conversations": [["from": "human"]]])], #"bad.jsonl:2: conversations turn 1: missing the key "value""#),
            ([json(["conversations": [["value": "Hi"]]])], #"bad.jsonl:1: conversations turn 1: missing the key "from""#),
            ([json(["conversations": [["from": "human", "value": "Hi"], ["from": "function_call", "value": "weather(Paris)"]]])],
             #"bad.jsonl:1: conversations turn 2: a "function_call" turn's "value" must be the JSON text of {"name": …, "arguments": …}"#),
            ([json(["conversations": [["from": "human", "value": "Hi"], ["from": "gpt", "value": "yo"]], "tools": "[{"])],
             #"bad.jsonl:1: "tools" is text that is not JSON"#),
            ([json(["system": 3, "conversations": [["from": "gpt", "value": "yo"]]])], #"bad.jsonl:1: "system" must be a string"#),
        ] {
            let path = try write("bad.jsonl", lines)
            XCTAssertThrowsError(try readExampleFile(path)) { XCTAssertTrue("\($0)".hasPrefix(dir + "/" + message), "\($0)") }
        }
    }

    /// `--columns`: a data set's own column names read as the keys (Dolly's context and response as
    /// input and output; a question/answer set as prompt and completion), in training and validation
    /// files; a record's own key it replaces is reported as not read; errors say the map was used.
    func testColumnsNameTheDataSetsOwnColumns() throws {
        let dolly = try write("dolly.jsonl", [
            json(["instruction": "Name a fruit.", "context": "", "response": "An apple.", "category": "open_qa"]),
            json(["instruction": "Summarize.", "context": "Cats sleep a lot.", "response": "Cats sleep.", "category": "summarization", "output": "stale"]),
        ])
        let columns = try ColumnMap(parsing: "input=context, output=response", keys: DatasetOptions.columnKeys)
        XCTAssertEqual(columns.description, "input=context,output=response")
        var unread: [String: Int] = [:]
        let read = try readExampleFile(dolly, unreadKeys: &unread, columns: columns)
        XCTAssertEqual(read.map(\.example), [.instruction(instruction: "Name a fruit.", input: "", output: "An apple."),
                                             .instruction(instruction: "Summarize.", input: "Cats sleep a lot.", output: "Cats sleep.")])
        XCTAssertEqual(unread, ["category": 2, "output": 1])
        // Without the map, Dolly's records have no "output".
        XCTAssertThrowsError(try readExamples(dolly)) { XCTAssertTrue("\($0)".contains(#"dolly.jsonl:1: missing the key "output""#), "\($0)") }
        let wrong = try ColumnMap(parsing: "output=answer", keys: DatasetOptions.columnKeys)
        XCTAssertThrowsError(try readExamples(dolly, columns: wrong)) {
            XCTAssertTrue("\($0)".hasSuffix(#"missing the key "output" (found "category", "context", "instruction", "response") (read with --columns output=answer)"#), "\($0)")
        }
        // Training and validation files alike.
        let qa = try write("qa.jsonl", (0..<8).map { json(["question": "What is \($0) + 1?", "answer": " \($0 + 1)"]) })
        let qaValidation = try write("qa-val.jsonl", [json(["question": "What is 9 + 1?", "answer": " 10"])])
        var options = DatasetOptions(seqLen: 32, validation: .file(qaValidation))
        options.columns = try ColumnMap(parsing: "prompt=question,completion=answer", keys: DatasetOptions.columnKeys)
        let splits = try loadDataset(qa, tokenizer: Self.tokenizer, options: options)
        XCTAssertEqual(splits.format, .promptCompletion)
        XCTAssertEqual(splits.train.summary.examples, 8)
        XCTAssertEqual(splits.validation?.summary.examples, 1)
        XCTAssertEqual(splits.unreadKeys, [:])
        // Chat under other names: the conversation and its tools, their keys' order kept (the template sees it).
        let turns = [["role": "user", "content": "Weather?"], ["role": "assistant", "content": "Sunny."]]
        let tool: [String: Any] = ["type": "function", "function": ["name": "weather", "parameters": ["type": "object", "properties": ["z": ["type": "string"], "a": ["type": "string"]]]]]
        let chat = try write("chat.jsonl", [json(["messages": turns, "tools": [tool]])])
        let renamed = try write("dialog.jsonl", [json(["dialog": turns, "functions": [tool], "messages": "stale"])])
        var chatUnread: [String: Int] = [:]
        XCTAssertEqual(try readExampleFile(renamed, unreadKeys: &chatUnread, columns: try ColumnMap(parsing: "messages=dialog,tools=functions", keys: DatasetOptions.columnKeys)).map(\.example),
                       try readExamples(chat).examples)
        XCTAssertEqual(chatUnread, ["messages": 1])
        for (text, message) in [("prompt", #"--columns: "prompt" is not KEY=COLUMN"#), ("prompt=q,", #"--columns: "" is not KEY=COLUMN"#),
                                ("question=prompt", #"--columns: "question" is not a key SwiftPEFT reads here; keys: text, prompt"#),
                                ("prompt=q,prompt=r", #"--columns: the key "prompt" is given twice"#),
                                ("prompt=q,completion=q", #"--columns: the column "q" is given twice"#)] {
            XCTAssertThrowsError(try ColumnMap(parsing: text, keys: DatasetOptions.columnKeys)) { XCTAssertTrue("\($0)".hasPrefix(message), "\($0)") }
        }
    }

    /// A pattern names a data set's shards ("train-*.jsonl", as Hugging Face's `data_files`): its files in
    /// sorted order, for training and validation; no match, or a match that is not records, is an error;
    /// a file whose name holds "[" is read as itself.
    func testPatternsReadEveryMatchingFile() throws {
        try write("train-00001-of-00002.jsonl", [json(["text": "second"])])
        try write("train-00000-of-00002.jsonl", [json(["text": "first"]), json(["text": "also first"])])
        try write("test-00000-of-00001.jsonl", [json(["text": "held out"])])
        let read = try readExamples(dir + "/train-*.jsonl")
        XCTAssertEqual(read.examples, [.text("first"), .text("also first"), .text("second")])
        let options = DatasetOptions(seqLen: 8, validation: .file(dir + "/test-?????-of-*.jsonl"))
        let splits = try loadDataset(dir + "/train-0000[0-1]-of-00002.jsonl", tokenizer: Self.tokenizer, options: options)
        XCTAssertEqual(splits.train.summary.examples, 3)
        XCTAssertNotNil(splits.validation)
        XCTAssertThrowsError(try readExamples(dir + "/valid-*.jsonl")) { XCTAssertEqual("\($0)", dir + "/valid-*.jsonl: no file matches this pattern") }
        try "notes".write(toFile: dir + "/train-notes.txt", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try readExamples(dir + "/train-*")) {
            XCTAssertTrue("\($0)".contains("the pattern matches \(dir)/train-notes.txt, which is not a file of records"), "\($0)")
        }
        let bracketed = try write("odd[1].jsonl", [json(["text": "literal"])])
        XCTAssertEqual(try readExamples(bracketed).examples, [.text("literal")])
    }

    /// Each bad table or JSON array, with the line and message it must give.
    func testBadTablesAndJSONArraysNameTheLine() throws {
        let cases: [(name: String, text: String, message: String)] = [
            ("unclosed.csv", "text,id\n\"a, b\",1\n\"never closed,2\nmore\n", #"unclosed.csv:3: a quoted cell (cell 1 of the row at line 3) is not closed by a quote"#),
            ("after-quote.csv", "text\n\"a\"b\n", "after-quote.csv:2: text after the closing quote of cell 1"),
            ("ragged.csv", "text,id\na,1\nb,2,3\n", #"ragged.csv:3: 3 cells, but the header (line 1) has 2 columns: "text", "id""#),
            ("short.tsv", "prompt\tcompletion\nq\n", #"short.tsv:2: 1 cells, but the header (line 1) has 2 columns: "prompt", "completion""#),
            ("twice.csv", "text,text\na,b\n", #"twice.csv:1: the header names the column "text" twice"#),
            ("chat.csv", "messages\n\"[]\"\n", #"chat.csv:1: a "messages" column: a conversation does not fit a CSV cell; write chat data as JSON Lines"#),
            ("sharegpt.tsv", "id\tconversations\n1\t[]\n", #"sharegpt.tsv:1: a "conversations" column: a conversation does not fit a TSV cell; write chat data as JSON Lines, one {"conversations": [...]} per line"#),
            ("empty-cell.csv", "prompt,completion\nq,a\n\"two\nlines\",\n", #"empty-cell.csv:3: "completion" is empty"#),
            ("latin1.csv", "text\ncaf\u{E9}\n", ""),  // replaced below by Latin-1 bytes
            ("header.csv", "text,id\n\n", "header.csv: holds no examples"),
            ("empty.json", " [ ]\n", "empty.json: holds no examples"),
            ("item.json", "[\n  {\"text\": \"a\"},\n  {\n    \"text\": \"b\",\n    \"id\" 2\n  }\n]\n", "item.json:5: invalid JSON at column 10 (expected ':' after a key)"),
            ("unclosed.json", "[{\"text\": \"a\"},\n {\"text\": \"b\"}\n", "unclosed.json:3: invalid JSON at column 1 (unexpected end of the JSON text)"),
            ("after.json", "[{\"text\": \"a\"}]\n{\"text\": \"b\"}\n", "after.json:2: invalid JSON at column 1 (unexpected text after the JSON value)"),
            ("comma.json", "[{\"text\": \"a\"},\n]\n", "comma.json:2: invalid JSON at column 1"),
            ("number.json", "[{\"text\": \"a\"},\n 3]\n", "number.json:2: expected a JSON object, found a number"),
            ("formats.json", "[{\"text\": \"a\"},\n {\"prompt\": \"q\", \"completion\": \"a\"}]\n",
             "formats.json:2: this record is prompt/completion data but the record at line 1 is text data"),
            ("object.json", "{\n  \"name\": \"a dataset\",\n  \"rows\": 3\n}\n", "object.json: holds one JSON object over 4 lines, not records"),
        ]
        for c in cases {
            let path = dir + "/" + c.name
            if c.name == "latin1.csv" {
                try Data("text\ncaf".utf8 + [0xE9] + Data("\n".utf8)).write(to: URL(fileURLWithPath: path))
                XCTAssertThrowsError(try readExamples(path)) {
                    XCTAssertEqual("\($0)", "\(path):2: cell 1 is not valid UTF-8 (save the file as UTF-8)")
                }
                continue
            }
            try c.text.write(toFile: path, atomically: true, encoding: .utf8)
            XCTAssertThrowsError(try readExamples(path), c.name) {
                XCTAssertTrue("\($0)".hasPrefix(path + (c.message.hasPrefix(c.name) ? String(c.message.dropFirst(c.name.count)) : ": " + c.message)),
                              "\(c.name): \($0)")
            }
        }
        // A Parquet row is named by its number; a column not read by the reader, by its name.
        let types = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("FormatsTests/Fixtures/parquet")
        XCTAssertThrowsError(try readExamples(types.appendingPathComponent("types.parquet").path)) {
            XCTAssertTrue("\($0)".hasSuffix("types.parquet: row 2: no known keys (found none); expected \"text\", \"prompt\" + \"completion\", "
                + "\"instruction\" + \"output\" (+ \"input\"), \"messages\", or ShareGPT's \"conversations\""), "\($0)")
        }
        XCTAssertThrowsError(try readExamples(types.appendingPathComponent("brotli.parquet").path)) {
            XCTAssertTrue("\($0)".hasSuffix("brotli.parquet: column text (row group 1): compressed with BROTLI; SwiftPEFT reads uncompressed, Snappy, "
                + "GZIP, ZSTD and LZ4_RAW pages (pyarrow: pq.write_table(table, path, compression=\"snappy\"), its default)"), "\($0)")
        }
        // Spreadsheet files other than CSV and TSV are refused by name, not learned as text.
        let sheet = try write("data.xlsx", ["PK"])
        XCTAssertThrowsError(try readExamples(sheet)) { XCTAssertTrue("\($0)".contains("a .xlsx file is not read"), "\($0)") }
    }

    // MARK: errors

    /// Each bad line, written as line 3 after a good line and an empty one, with the message it must give.
    /// Keys a line's format does not read are counted (training and validation files) and shown
    /// with the splits: a misspelling is seen, not dropped without a word.
    func testKeysNotReadAreCountedAndShown() throws {
        let train = try write("unread.jsonl", [#"{"prompt": "a", "completion": "b", "id": 1}"#,
                                               #"{"prompt": "c", "completion": "d", "id": 2, "promt": "x"}"#,
                                               #"{"prompt": "e", "completion": "f"}"#])
        let val = try write("unread-val.jsonl", [#"{"prompt": "g", "completion": "h", "id": 3}"#])
        let splits = try load(train, validation: .file(val))
        XCTAssertEqual(splits.unreadKeys, ["id": 3, "promt": 1])
        XCTAssertTrue(splits.description.hasSuffix(#"keys not read: "id" (3 examples), "promt" (1 example)"#), splits.description)
        let clean = try load(try write("read.jsonl", [#"{"instruction": "a", "input": "", "output": "b"}"#]))
        XCTAssertEqual(clean.unreadKeys, [:])
        XCTAssertFalse(clean.description.contains("not read"))
        // Chat reads "messages", "tools" and "chat_template_kwargs"; text reads "text" alone.
        var unread: [String: Int] = [:]
        _ = try readExampleFile(try write("chat-extra.jsonl", [#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "tools": [], "source": "x"}"#,
                                                       ]), unreadKeys: &unread)
        XCTAssertEqual(unread, ["source": 1])
    }

    func testBadLinesNameFileLineAndProblem() throws {
        let pc = json(["prompt": "a", "completion": "b"])
        let chat = #"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#
        let inst = json(["instruction": "a", "output": "b"])
        let cases: [(first: String, bad: String, message: String)] = [
            (pc, #"{"prompt": "a", "completion": "#, "invalid JSON at column 31 (unexpected end of the JSON text): "),
            (pc, #"{"prompt": "a", "completion": "b"} x"#, "invalid JSON at column 36 (unexpected text after the JSON value): "),
            (pc, #"{"prompt" "a", "completion": "b"}"#, #"invalid JSON at column 11 (expected ':' after a key): {"prompt" "a", "completion": "…"#),
            (pc, #"{"prompt": "ééé", "completion" "b"}"#, "invalid JSON at column 32 (expected ':' after a key)"),  // columns count characters
            (pc, #"{"prompt": "a", "completion": "b"}"# + String(repeating: " ", count: 70) + "x",
             "invalid JSON at column 105 (unexpected text after the JSON value): …" + String(repeating: " ", count: 40) + "x"),
            (pc, "[1, 2]", "expected a JSON object, found an array"),
            (pc, "42", "expected a JSON object, found a number"),
            (pc, #"{"foo": 1, "bar": 2}"#, #"no known keys (found "bar", "foo")"#),
            (pc, #"{"prompt": "a"}"#, #"missing the key "completion""#),
            (pc, #"{"completion": "a"}"#, #"missing the key "prompt""#),
            (pc, #"{"promt": "q", "completion": "a"}"#, #"missing the key "prompt" (found "completion", "promt")"#),
            (pc, #"{"prompt": "a", "completion": 5}"#, #""completion" must be a string, found a number"#),
            (pc, #"{"prompt": "a", "completion": true}"#, #""completion" must be a string, found a boolean"#),
            (pc, #"{"prompt": null, "completion": "b"}"#, #""prompt" must be a string, found null"#),
            (pc, #"{"prompt": "a", "completion": ""}"#, #""completion" is empty"#),
            (pc, #"{"prompt": "", "completion": "b"}"#, #""prompt" is empty; write examples without a prompt as {"text": …}"#),
            (pc, #"{"text": "hello"}"#, "this line is text data but line 1 is prompt/completion data"),
            (pc, chat, "this line is chat data but line 1 is prompt/completion data"),
            (inst, #"{"instruction": "a", "output": ""}"#, #""output" is empty"#),
            (inst, #"{"output": "b"}"#, #"missing the key "instruction""#),
            (inst, #"{"instruction": "a", "input": 3, "output": "b"}"#, #""input" must be a string, found a number"#),
            (json(["text": "a"]), #"{"text": ""}"#, #""text" is empty"#),
            (chat, #"{"messages": "hi"}"#, #""messages" must be an array, found a string"#),
            (chat, #"{"messages": []}"#, #""messages" is empty"#),
            (chat, #"{"messages": ["hi"]}"#, "message 1: expected an object, found a string"),
            (chat, #"{"messages": [{"role": "function", "content": "x"}]}"#, #"message 1: unknown role "function"; expected "system", "user", "assistant" or "tool""#),
            (chat, #"{"messages": [{"role": "user", "content": "x", "tool_calls": [{"name": "f"}]}]}"#, "message 1: only an assistant message calls tools"),
            (chat, #"{"messages": [{"role": "assistant", "content": null, "tool_calls": {}}]}"#, #"message 1: "tool_calls" must be an array, found an object"#),
            (chat, #"{"messages": [{"role": "assistant", "content": null, "tool_calls": []}]}"#, #"message 1: "content" must be a string, found null"#),
            (chat, #"{"messages": [{"role": "assistant", "tool_calls": [{"type": "function", "function": {"arguments": {}}}]}]}"#,
             "message 1: tool call 1 names no function"),
            (chat, #"{"messages": [{"role": "assistant", "content": null}]}"#, #"message 1: "content" must be a string, found null"#),
            (chat, #"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "b"}], "tools": {"a": 1}}"#,
             #""tools" must be an array of objects (JSON schemas of functions), found an object"#),
            (chat, #"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "b"}], "chat_template_kwargs": [1]}"#,
             #""chat_template_kwargs" must be an object of the chat template's variables"#),
            (chat, #"{"messages": [{"content": "x"}]}"#, #"message 1: missing the key "role""#),
            (chat, #"{"messages": [{"role": "user", "content": null}]}"#, #"message 1: "content" must be a string, found null"#),
            (chat, #"{"messages": [{"role": "user", "content": "hi"}]}"#, #"no "assistant" message"#),
            (chat, #"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}"#,
             #"message 2: "content" is empty"#),
        ]
        for (k, c) in cases.enumerated() {
            let path = try write("bad\(k).jsonl", [c.first, "   ", c.bad, c.first])
            XCTAssertThrowsError(try load(path), "case \(k): \(c.bad)") { error in
                guard let e = error as? DatasetError else { return XCTFail("case \(k): \(error)") }
                XCTAssertEqual(e.file, path)
                XCTAssertEqual(e.line, 3, "case \(k): \(e)")
                XCTAssertTrue(e.message.contains(c.message), "case \(k): \(e.message)")
                XCTAssertTrue(e.description.hasPrefix("\(path):3: "), e.description)
            }
        }
        // Invalid UTF-8 on line 2.
        let path = dir + "/utf8.jsonl"
        try Data(Array(pc.utf8) + [0x0A] + [0x7B, 0xFF, 0x7D]).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try load(path)) { XCTAssertEqual(($0 as? DatasetError)?.description, "\(path):2: the line is not valid UTF-8") }
        // A line nested 100,000 deep on line 2: an error naming the line, not a stack overflow.
        let deep = dir + "/deep.jsonl"
        try (pc + "\n" + String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)).write(toFile: deep, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try load(deep)) { XCTAssertTrue(($0 as? DatasetError)?.description.hasPrefix("\(deep):2: ") == true, "\($0)") }
    }

    /// A pretraining corpus folder named by splits (Penn Treebank's ptb.train.txt, ptb.valid.txt,
    /// ptb.test.txt) trains on its train split and validates on its validation split; its test split
    /// is read only when named; a plain folder is all training text.
    func testPretrainCorpusFoldersNamedBySplit() throws {
        let ptb = dir + "/ptb"
        try FileManager.default.createDirectory(atPath: ptb, withIntermediateDirectories: true)
        for (name, text) in [("ptb.train.txt", "the train text"), ("ptb.valid.txt", "the valid text"), ("ptb.test.txt", "the test text")] {
            try text.write(toFile: "\(ptb)/\(name)", atomically: true, encoding: .utf8)
        }
        let corpus = try readPretrainCorpus(ptb)
        XCTAssertEqual(corpus.train, ["the train text"])
        XCTAssertEqual(corpus.validation, ["the valid text"])
        XCTAssertTrue(corpus.fromSplits)
        XCTAssertEqual(try readTextCorpus(ptb + ":test"), ["the test text"])
        // No validation split: the caller holds some of the train split out.
        try FileManager.default.removeItem(atPath: ptb + "/ptb.valid.txt")
        let trainOnly = try readPretrainCorpus(ptb)
        XCTAssertEqual(trainOnly.train, ["the train text"])
        XCTAssertNil(trainOnly.validation)
        XCTAssertTrue(trainOnly.fromSplits)
        // A split of records only has no text to pretrain on.
        try FileManager.default.removeItem(atPath: ptb + "/ptb.train.txt")
        try #"{"text": "x"}"#.write(toFile: ptb + "/train.jsonl", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try readPretrainCorpus(ptb)) {
            XCTAssertEqual("\($0)", "\(ptb): the split's files (train.jsonl) hold no .txt, .md or .rst file")
        }
        // A folder whose files name no split: every text file, as before.
        let notes = dir + "/notes"
        try FileManager.default.createDirectory(atPath: notes + "/sub", withIntermediateDirectories: true)
        try "one".write(toFile: notes + "/a.txt", atomically: true, encoding: .utf8)
        try "two".write(toFile: notes + "/sub/b.md", atomically: true, encoding: .utf8)
        let plain = try readPretrainCorpus(notes)
        XCTAssertEqual(plain.train, ["one", "two"])
        XCTAssertNil(plain.validation)
        XCTAssertFalse(plain.fromSplits)
        XCTAssertThrowsError(try readTextCorpus(notes + ":test")) { XCTAssertTrue("\($0)".contains("has no splits"), "\($0)") }
    }

    /// A folder whose files name splits (mlx-lm's train.jsonl, valid.jsonl, test.jsonl) reads as
    /// `datasets` reads it: its train split is the training data, FOLDER:SPLIT another split, and a
    /// training job validates on its validation split unless told otherwise; a folder whose files name
    /// no split is read whole, as before.
    func testFoldersNamedBySplitReadTheirTrainSplit() throws {
        let data = dir + "/mlx-data"
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        for (name, completions) in [("train", ["a", "b", "c"]), ("valid", ["v"]), ("test", ["t1", "t2"])] {
            try completions.map { json(["prompt": "Q", "completion": $0]) }.joined(separator: "\n").write(toFile: "\(data)/\(name).jsonl", atomically: true, encoding: .utf8)
        }
        func completions(_ path: String) throws -> [String] {
            try readExamples(path).examples.map { if case .promptCompletion(_, let c) = $0 { return c }; return "?" }
        }
        XCTAssertEqual(try completions(data), ["a", "b", "c"])
        XCTAssertEqual(try completions(data + ":valid"), ["v"])
        XCTAssertEqual(try completions(data + ":validation"), ["v"])
        XCTAssertEqual(try completions(data + ":test"), ["t1", "t2"])
        XCTAssertThrowsError(try readExamples(data + ":extra")) {
            XCTAssertEqual("\($0)", data + ":extra: the folder's files name the splits train (train.jsonl), validation (valid.jsonl), test (test.jsonl); there is no extra split")
        }
        // A training job validates on the validation split; --val-fraction or --val-data say otherwise.
        let settings: [String: Any] = ["model": "m.h5", "data": data, "out": dir + "/out"]
        XCTAssertEqual(try TrainJob(settings: settings).data.validation, .folderSplitElseFraction(0.1))
        XCTAssertEqual(try TrainJob(settings: settings.merging(["val-fraction": 0.2]) { $1 }).data.validation, .fraction(0.2))
        let splits = try load(data, validation: .folderSplitElseFraction(0.5))
        XCTAssertEqual(splits.trainSource, "the train split of \(data): train.jsonl")
        XCTAssertEqual(splits.validationSource, "the validation split of \(data): valid.jsonl")
        XCTAssertEqual(splits.validation?.count, 1)
        // A file of the folder that is not in its train split may validate; one that is, may not.
        XCTAssertEqual(try load(data, validation: .file(data + "/test.jsonl")).validation?.count, 2)
        XCTAssertThrowsError(try load(data, validation: .file(data + "/train.jsonl"))) {
            XCTAssertTrue("\($0)".contains("inside the training data (\(data) reads \(data)/train.jsonl too)"), "\($0)")
        }
        // Only other splits: no training data, said so.
        try FileManager.default.removeItem(atPath: data + "/train.jsonl")
        XCTAssertThrowsError(try readExamples(data)) {
            XCTAssertTrue("\($0)".hasSuffix("there is no train split to train on; give the training file itself"), "\($0)")
        }
        // No file names a split: every file is read, FOLDER:SPLIT is refused.
        let plain = dir + "/plain"
        try FileManager.default.createDirectory(atPath: plain, withIntermediateDirectories: true)
        try json(["text": "one"]).write(toFile: plain + "/a.jsonl", atomically: true, encoding: .utf8)
        try json(["text": "two"]).write(toFile: plain + "/b.jsonl", atomically: true, encoding: .utf8)
        XCTAssertEqual(try readExamples(plain).examples, [.text("one"), .text("two")])
        XCTAssertThrowsError(try readExamples(plain + ":test")) { XCTAssertTrue("\($0)".contains("has no splits: no file or folder in it is named by one"), "\($0)") }
        let whole = try load(plain, validation: .folderSplitElseFraction(0.5))
        XCTAssertNil(whole.trainSource)
        XCTAssertEqual([whole.train.count, whole.validation?.count], [1, 1], "a fraction of a folder without splits")
    }

    func testMixedFormatsAcrossFilesAndOtherFileErrors() throws {
        let sub = dir + "/mixed"
        try FileManager.default.createDirectory(atPath: sub, withIntermediateDirectories: true)
        try json(["prompt": "a", "completion": "b"]).write(toFile: sub + "/a.jsonl", atomically: true, encoding: .utf8)
        try "\n\n" .appending(json(["text": "c"])).write(toFile: sub + "/b.jsonl", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try load(sub)) { error in
            let e = error as! DatasetError
            XCTAssertEqual(e.file, sub + "/b.jsonl")
            XCTAssertEqual(e.line, 3)
            XCTAssertTrue(e.message.contains("holds text data but \(sub)/a.jsonl holds prompt/completion data"), e.message)
        }
        XCTAssertThrowsError(try load(dir + "/missing.jsonl")) { XCTAssertTrue("\($0)".hasSuffix("missing.jsonl: no such file or folder")) }
        let empty = try write("empty.jsonl", ["", "  "])
        XCTAssertThrowsError(try load(empty)) { XCTAssertTrue("\($0)".contains("holds no examples")) }
        // Validation data inside the training folder would be trained on too.
        try json(["prompt": "x", "completion": "y"]).write(toFile: sub + "/b.jsonl", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try load(sub, validation: .file(sub + "/b.jsonl"))) {
            XCTAssertTrue("\($0)".contains("inside the training data"), "\($0)")
        }
        // The training file itself as validation data: said as it is.
        XCTAssertThrowsError(try load(sub + "/b.jsonl", validation: .file(sub + "/b.jsonl"))) {
            XCTAssertTrue("\($0)".contains("the validation data is the training data"), "\($0)")
        }
        // Records by any case of their extension (.jsonl, .ndjson, .json, .csv) are read as records,
        // never as plain text.
        for name in ["upper.JSONL", "other.ndjson", "x.JSON"] {
            let path = try write(name, [json(["prompt": "a", "completion": "b"]), json(["prompt": "c", "completion": "d"])])
            XCTAssertEqual(try load(path, validation: .none).format, .promptCompletion, name)
        }
        let csv = try write("table.CSV", ["prompt,completion", "a,b"])
        XCTAssertEqual(try load(csv, validation: .none).format, .promptCompletion)
        // A folder without data files says which files it reads.
        let bare = dir + "/bare"
        try FileManager.default.createDirectory(atPath: bare, withIntermediateDirectories: true)
        try "x".write(toFile: bare + "/notes.xlsx", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try load(bare)) {
            XCTAssertTrue("\($0)".contains("bare: the folder holds no .jsonl, .ndjson, .json, .csv, .tsv, .parquet, .arrow, .feather, .txt, .md or .rst files"), "\($0)")
        }
        // A text file without text is refused, alone or in a folder (it would train BOS → EOS).
        let blank = dir + "/blank"
        try FileManager.default.createDirectory(atPath: blank, withIntermediateDirectories: true)
        try "Some notes.".write(toFile: blank + "/a.txt", atomically: true, encoding: .utf8)
        try " \n\t\n".write(toFile: blank + "/b.md", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try load(blank)) {
            XCTAssertEqual("\($0)", "\(blank)/b.md: holds no text (the file is empty or only whitespace); add text or take it out of \(blank)")
        }
        XCTAssertThrowsError(try load(blank + "/b.md")) {
            XCTAssertEqual("\($0)", "\(blank)/b.md: holds no text (the file is empty or only whitespace)")
        }
        XCTAssertThrowsError(try readTextCorpus(blank)) { XCTAssertTrue("\($0)".hasSuffix("take it out of \(blank)"), "\($0)") }
        // Prompt/completion data needs an EOS to learn to stop with.
        let pc = try write("pc.jsonl", [json(["prompt": "a", "completion": "b"])])
        XCTAssertThrowsError(try load(pc, tok: ByteTokenizer())) { XCTAssertTrue("\($0)".contains("end-of-sequence")) }
    }

    // MARK: rows

    func testPackingRowsShareOneTokenAndCoverTheStream() throws {
        let texts = (0..<12).map { "The cat sat on the mat \($0)." }
        let path = try write("t.jsonl", texts.map { json(["text": $0]) })
        let T = 16
        let data = try load(path, packing: true, seqLen: T).train
        let stream = texts.flatMap { Self.tokenizer.encode($0) + [Self.tokenizer.eosTokenID!] }
        XCTAssertEqual(data.count, (stream.count - 1 + T - 1) / T, "⌈(N − 1) / T⌉ rows; \(stream.count) \(data.summary)")
        let b = data.batch(rows: Array(0..<data.count))
        XCTAssertEqual(b.ids.count, data.count * T)
        XCTAssertNil(b.attentionMask)
        // Inputs are the stream (then padding), targets the stream shifted by one (then -100).
        XCTAssertEqual(Array(b.ids[..<(stream.count - 1)]), Array(stream.dropLast()))
        XCTAssertEqual(Array(b.targets[..<(stream.count - 1)]), Array(stream.dropFirst()))
        XCTAssertTrue(b.targets[(stream.count - 1)...].allSatisfy { $0 == -100 })
        XCTAssertEqual(data.summary.learnedTargets, stream.count - 1)
        XCTAssertEqual(data.summary.rows, data.count)
        XCTAssertEqual(data.summary.paddingPositions, data.count * T - stream.count, "the final EOS is an input, with no target")
        XCTAssertEqual(data.summary.tokens, stream.count)
        XCTAssertTrue(data.summary.description.contains("packed"), data.summary.description)
    }

    func testPaddingRowsMasksTruncationAndDroppedRows() throws {
        let long = String(repeating: "the cat sat on the mat ", count: 20)
        let path = try write("p.jsonl", [
            json(["prompt": "Translate: cat\n", "completion": "chat"]),
            json(["prompt": "Say: ", "completion": long]),
            json(["prompt": long, "completion": "x"]),  // the prompt fills the row: nothing left to learn
        ])
        let T = 12
        let data = try load(path, seqLen: T).train
        XCTAssertEqual(data.count, 2, "the row with no learned target is left out")
        XCTAssertEqual(data.summary.droppedRows, 1)
        XCTAssertEqual(data.summary.truncatedExamples, 2)
        XCTAssertEqual(data.summary.longExamples, 2)
        let n1 = Self.tokenizer.encode("Say: ").count + Self.tokenizer.encode(long).count + 1
        let n2 = Self.tokenizer.encode(long).count + Self.tokenizer.encode("x").count + 1
        XCTAssertEqual(data.summary.truncatedTokens, n1 - (T + 1) + n2 - (T + 1))
        XCTAssertTrue(data.summary.description.contains("2 examples longer than 13 tokens truncated"), data.summary.description)
        XCTAssertTrue(data.summary.description.contains("; 1 row without a learned token left out"), "one row, said so: \(data.summary.description)")
        XCTAssertEqual([counted(0, "token"), counted(1, "token"), counted(2, "request")], ["0 tokens", "1 token", "2 requests"])
        let b = data.batch(rows: [0, 1])
        XCTAssertEqual(b.ids.count, 2 * T)
        let first = Self.tokenizer.encode("Translate: cat\n") + Self.tokenizer.encode("chat") + [Self.tokenizer.eosTokenID!]
        let mask = b.attentionMask!
        XCTAssertEqual(mask[..<T].filter { $0 == 1 }.count, first.count)
        XCTAssertEqual(Array(mask[T...]), [Float](repeating: 1, count: T), "the truncated row is full")
        for t in first.count..<T {
            XCTAssertEqual(b.ids[t], Self.tokenizer.padTokenID!, "padding id")
            XCTAssertEqual(b.targets[t], -100, "no target on padding")
        }
        XCTAssertEqual(b.targets[first.count - 2], Self.tokenizer.eosTokenID!, "EOS is the last learned target")
        XCTAssertEqual(b.targets[first.count - 1], -100, "nothing follows EOS")
    }

    func testPlainTextFolderIsPackedAndSplitByChunk() throws {
        let sub = dir + "/docs"
        try FileManager.default.createDirectory(atPath: sub, withIntermediateDirectories: true)
        let docs = (0..<6).map { String(repeating: "The cat \($0) sat on the mat. ", count: 5) }
        for (k, d) in docs.enumerated() {
            try d.write(toFile: sub + "/\(k).\(["txt", "md", "rst"][k % 3])", atomically: true, encoding: .utf8)
        }
        try "ignored".write(toFile: sub + "/notes.bin", atomically: true, encoding: .utf8)
        let T = 8
        let data = try load(sub, packing: false, seqLen: T, validation: .fraction(0.2))
        XCTAssertEqual(data.format, .plainText)
        XCTAssertTrue(data.train.summary.packed, "plain text is always packed")
        let stream = docs.flatMap { Self.tokenizer.encode($0) + [Self.tokenizer.eosTokenID!] }
        let rows = (stream.count - 1 + T - 1) / T
        XCTAssertEqual(data.train.count + data.validation!.count, rows)
        XCTAssertEqual(data.validation!.count, Int((0.2 * Double(rows)).rounded()))
        XCTAssertEqual(data.train.summary.examples, data.train.count, "for plain text a chunk is an example")
        XCTAssertEqual(data.train.summary.maskedTargets, 0)
    }

    // MARK: split

    func testValidationSplitIsSeededDeterministicAndDisjoint() throws {
        let texts = (0..<50).map { "example \($0)" }
        let path = try write("s.jsonl", texts.map { json(["text": $0]) })
        func split(seed: UInt64) throws -> (train: [String], val: [String]) {
            let d = try load(path, seqLen: 32, validation: .fraction(0.1), seed: seed)
            func strings(_ s: Dataset) -> [String] {
                (0..<s.count).map { r in
                    let b = s.batch(rows: [r])
                    let real = b.attentionMask!.filter { $0 == 1 }.count
                    return Self.tokenizer.decode(Array(b.ids[..<(real - 1)]))  // drop EOS
                }
            }
            return (strings(d.train), strings(d.validation!))
        }
        let a = try split(seed: 7), again = try split(seed: 7), other = try split(seed: 8)
        XCTAssertEqual(a.val.count, 5)
        XCTAssertEqual(a.train.count, 45)
        XCTAssertEqual(a.val, again.val)
        XCTAssertEqual(a.train, again.train)
        XCTAssertNotEqual(a.val, other.val)
        XCTAssertTrue(Set(a.train).isDisjoint(with: a.val))
        XCTAssertEqual(Set(a.train + a.val), Set(texts))
        // The split does not depend on T or packing.
        let packed = try load(path, packing: true, seqLen: 5, validation: .fraction(0.1), seed: 7)
        XCTAssertEqual(packed.validation!.summary.examples, 5)
        XCTAssertEqual(splitIndices(count: 50, fraction: 0.1, seed: 7).validation.count, 5)
        XCTAssertEqual(splitIndices(count: 3, fraction: 0.01, seed: 1).validation.count, 1, "at least one")
        XCTAssertEqual(splitIndices(count: 1, fraction: 0.5, seed: 1).validation.count, 0, "never all")

        // An explicit validation file of the same format.
        let valPath = try write("v.jsonl", [json(["text": "held out"])])
        let withFile = try load(path, validation: .file(valPath))
        XCTAssertEqual(withFile.train.count, 50)
        XCTAssertEqual(withFile.validation!.count, 1)
        let wrong = try write("w.jsonl", [json(["prompt": "a", "completion": "b"])])
        XCTAssertThrowsError(try load(path, validation: .file(wrong))) { XCTAssertTrue("\($0)".contains("validation data is prompt/completion")) }
    }

    // MARK: batches

    func rows(_ n: Int) throws -> Dataset {
        let path = try write("rows\(n).jsonl", (0..<n).map { json(["text": "row \($0)"]) })
        return try load(path, seqLen: 8).train
    }

    func testShufflingIsSeededAndEachEpochSeesEveryRowOnce() throws {
        let data = try rows(10)
        func epochs(_ seed: UInt64, _ n: Int = 2) -> [[Int]] {
            var it = BatchIterator(data, batchSize: 3, seed: seed, epochs: n)
            var batches: [[Int]] = []
            while let rows = it.nextRows() { batches.append(rows) }
            XCTAssertEqual(batches.map(\.count), Array([[Int]](repeating: [3, 3, 3, 1], count: n).joined()),
                           "the partial last batch of an epoch is kept")
            return stride(from: 0, to: batches.count, by: 4).map { batches[$0..<$0 + 4].flatMap { $0 } }
        }
        let a = epochs(1)
        XCTAssertEqual(a, epochs(1))
        XCTAssertNotEqual(a, epochs(2))
        XCTAssertNotEqual(a[0], a[1], "a new order each epoch")
        for e in a { XCTAssertEqual(e.sorted(), Array(0..<10)) }
        XCTAssertEqual(BatchIterator(data, batchSize: 3, seed: 1).batchesPerEpoch, 4)
        XCTAssertEqual(Array(BatchIterator(data, batchSize: 4, seed: 1, epochs: 3)).map(\.rows), [4, 4, 2, 4, 4, 2, 4, 4, 2])
    }

    /// A batch as comparable values.
    func key(_ b: Batch) -> [[Float]] {
        [b.ids.map(Float.init), b.targets.map(Float.init), b.attentionMask ?? [], [Float(b.rows)]]
    }

    func testResumeFromSavedPositionGivesTheSameBatches() throws {
        let data = try rows(10)
        var reference = BatchIterator(data, batchSize: 3, seed: 5)
        let expected = (0..<14).map { _ in key(reference.nextBatch()) }  // 3.5 epochs
        for stop in [0, 2, 3, 4, 5, 8] {  // inside an epoch, before its partial batch, just after it
            var it = BatchIterator(data, batchSize: 3, seed: 5)
            for _ in 0..<stop { _ = it.next() }
            let saved = try JSONEncoder().encode(it.batchPosition)
            let position = try JSONDecoder().decode(BatchPosition.self, from: saved)
            XCTAssertEqual(position, it.batchPosition)
            XCTAssertEqual(position.epoch, stop / 4, "after an epoch's last batch the position is the next epoch's start")
            XCTAssertEqual(position.index, stop % 4 == 0 ? 0 : 3 * (stop % 4))
            var resumed = try BatchIterator(data, batchSize: 3, resumeFrom: position)
            XCTAssertEqual((stop..<14).map { _ in key(resumed.nextBatch()) }, Array(expected[stop...]),
                           "resumed after \(stop) batches")
            XCTAssertEqual(resumed.epoch, reference.epoch)
            // The trainer's form: 10 words through `BatchStream`.
            var viaWords = BatchIterator(data, batchSize: 3, seed: 99)
            try viaWords.seek(to: it.position)
            XCTAssertEqual((stop..<14).map { _ in key(viaWords.nextBatch()) }, Array(expected[stop...]))
        }
        // A position from other data is refused, and so are malformed words.
        var it = BatchIterator(data, batchSize: 3, seed: 5)
        _ = it.next()
        let other = try rows(11)
        XCTAssertThrowsError(try BatchIterator(other, batchSize: 3, resumeFrom: it.batchPosition)) {
            XCTAssertTrue("\($0)".contains("resume with the same data"), "\($0)")
        }
        XCTAssertThrowsError(try it.seek(to: [1, 2, 3])) { XCTAssertTrue("\($0)".contains("expected 10 words"), "\($0)") }
    }

    func testSummaryAndMaskedEvaluation() throws {
        let path = try write("e.jsonl", (0..<6).map { json(["prompt": "Translate: cat \($0)\n", "completion": "chat"]) })
        let data = try load(path, seqLen: 32, validation: .fraction(0.34), seed: 3)
        XCTAssertEqual(data.validation!.count, 2)
        let s = data.train.summary
        XCTAssertEqual(s.examples, 4)
        XCTAssertEqual(s.learnedTargets, 4 * (Self.tokenizer.encode("chat").count + 1))
        XCTAssertGreaterThan(s.maskedFraction, 0.5)
        XCTAssertTrue("\(data)".contains("train: 4 prompt/completion examples → 4 rows of 32 tokens (padded)"), "\(data)")
        let model = makeModel(.gpt2(vocabSize: Self.tokenizer.vocabSize, hiddenSize: 8, numLayers: 1, numHeads: 2,
                                    maxPositions: 32), seed: 1)
        print(data)
        let e = evaluate(model, on: data.validation!, batch: 1)
        XCTAssertEqual(e.tokens, data.validation!.summary.learnedTargets)
        XCTAssertEqual(e.loss, log(Double(Self.tokenizer.vocabSize)), accuracy: 0.5, "a fresh model is near uniform")
        // Evaluation cuts a batch after its longest row's last token: the same targets, the same loss
        // as over the whole padded rows, at a fraction of the length.
        let rows = Array(0..<data.train.count)
        let full = data.train.batch(rows: rows), cut = data.train.batch(rows: rows, trimmed: true)
        XCTAssertEqual(cut.ids.count, rows.count * (data.train.lengths.max()! - 1), "the longest row's inputs")
        XCTAssertLessThan(cut.ids.count, full.ids.count / 2, "rows of 32 cut to their longest example")
        XCTAssertEqual(cut.learnedTokens, full.learnedTokens)
        XCTAssertEqual(cut.targets.filter { $0 != -100 }, full.targets.filter { $0 != -100 })
        let wholeRows = withNoGrad { model.loss(full.ids, targets: full.targets, batch: full.rows, attentionMask: full.attentionMask).item() }
        XCTAssertEqual(evaluate(model, on: data.train, batch: rows.count).loss, Double(wholeRows), accuracy: 1e-5)
    }
}

/// SmolLM2-135M-Instruct's chat template (its GGUF's tokenizer.chat_template).
let smolLM2ChatTemplate = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
