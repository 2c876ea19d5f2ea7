// ChatTemplateTests.swift: chat templates render as transformers renders them. Each case of
// Fixtures/chat-templates.json (scripts/make_chat_template_fixtures.py: transformers' own Jinja
// environment on small templates, one construct each, and on templates in the styles of SmolLM2,
// Qwen2.5 with tools, Llama 3 and 3.1, Mistral, Gemma, Phi-3, DeepSeek and Alpaca) must give the
// same text, or fail where Jinja fails, with the template's own message for raise_exception.
import Foundation
import XCTest
@testable import Tokenizers

private let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/chat-templates.json")

final class ChatTemplateTests: XCTestCase {
    func testTemplatesRenderAsTransformersRendersThem() throws {
        let root = try JSONSerialization.jsonObject(with: Data(contentsOf: fixture)) as! [String: Any]
        let cases = root["cases"] as! [[String: Any]]
        XCTAssertGreaterThan(cases.count, 100)
        var failures: [String] = []
        for c in cases {
            let name = c["name"] as! String, source = c["template"] as! String
            guard case .dict(let context) = JinjaValue(json: c["context"]!) else { return XCTFail("\(name): context is not an object") }
            let variables = Dictionary(uniqueKeysWithValues: context.pairs)
            let result = Result { try ChatTemplate(source).render(variables) }
            switch (result, c["output"] as? String) {
            case (.success(let text), let expected?):
                if text != expected { failures.append("\(name): rendered\n\(text.debugDescription)\nexpected\n\(expected.debugDescription)") }
            case (.failure(let error), let expected?):
                failures.append("\(name): failed (\(error)), expected\n\(expected.debugDescription)")
            case (.success(let text), nil):
                failures.append("\(name): rendered \(text.debugDescription), expected a \(c["error_type"] ?? "") error: \(c["error"] ?? "")")
            case (.failure(let error), nil):
                // The template's own message comes through as it was raised.
                if c["error_type"] as? String == "TemplateError" {
                    let e = error as? ChatTemplateError
                    if e?.raisedByTemplate != true || e?.message != c["error"] as? String {
                        failures.append("\(name): \(error), expected the template's message \(c["error"] ?? "")")
                    }
                }
            }
        }
        XCTAssertTrue(failures.isEmpty, "\(failures.count) of \(cases.count) cases differ:\n" + failures.joined(separator: "\n\n"))
    }

    /// Templates that would exhaust the stack or memory, or overflow an integer, fail with an error,
    /// also on a thread with a small stack (512 KiB, as a server's worker may have).
    func testHostileTemplatesFailInsteadOfCrashing() throws {
        let deep = 10_000
        let cases: [(String, String)] = [
            ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "macro"),
            ("{{ " + String(repeating: "(", count: deep) + "1" + String(repeating: ")", count: deep) + " }}", "nested"),
            (String(repeating: "{% if true %}", count: deep) + String(repeating: "{% endif %}", count: deep), "nested"),
            ("{{ " + String(repeating: "not ", count: deep) + "x }}", "nested"),
            ("{{ " + String(repeating: "- ", count: deep) + "1 }}", "nested"),
            ("{{ 'a' * 10 ** 12 }}", "repetition"), ("{{ [1] * 10 ** 10 }}", "repetition"),
            ("{{ 'x' * 9223372036854775807 }}", "repetition"), ("{{ 'x' | indent(10 ** 12) }}", "indent"),
            ("{{ 'x'.zfill(10 ** 12) }}", "zfill"), ("{{ 'x'.center(10 ** 12) }}", "center"),
            ("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", "rendered text"),
            ("{{ range(-9223372036854775807, 9223372036854775807) | length }}", "range"),
            ("{{ (-9223372036854775807 - 1) // -1 }}", "64 bits"), ("{{ (-9223372036854775807 - 1) | abs }}", "64 bits"),
            ("{{ -(-9223372036854775807 - 1) }}", "64 bits"), ("{{ 1e20 | int }}", "64 bits"), ("{{ 2 ** 64 }}", "64 bits"), ("{{ 9223372036854775807 + 1 }}", "64 bits"), ("{{ '10' | int(0, 99) }}", "base"),
            ("{% set ns = namespace(a=1) %}{% set ns.me = ns %}{{ ns | tojson }}", "JSON"),
            ("{{ range(0, -9223372036854775807 - 1, -1) | length }}", "range"),
            ("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "a string"),
            ("{{ 'x'.center(9, '**') }}", "fill character"), ("{{ '%.999999999f' % 1 }}", "precision"),
            ("{{ ('a\n' * 1000000) | indent(100) }}", "indent"), ("{{ ('a' * 1000000).replace('a', 'b' * 100) }}", "replace"),
            ("{{ (['x' * 1000000] * 100) | join }}", "join"),
        ]
        final class Box: @unchecked Sendable { var failures: [String] = [] }
        let box = Box()
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            for (source, needle) in cases {
                do {
                    let text = try ChatTemplate(source).render([:])
                    box.failures.append("\(source.prefix(60)): rendered \(text.prefix(40))")
                } catch {
                    if !"\(error)".contains(needle) { box.failures.append("\(source.prefix(60)): \(error), expected a mention of \(needle)") }
                }
            }
            let edges = "{{ 9223372036854775806 is divisibleby 9223372036854775807 }}{{ (-9223372036854775807 - 1) % -1 }}"
            if (try? ChatTemplate(edges).render([:])) != "False0" { box.failures.append("\(edges): not False0") }
            done.signal()
        }
        thread.stackSize = 512 << 10
        thread.start()
        done.wait()
        let failures = box.failures
        XCTAssertTrue(failures.isEmpty, failures.joined(separator: "\n"))
    }

    /// A conversation is rendered with what transformers' apply_chat_template passes: the messages,
    /// add_generation_prompt, tools and documents (None without any) and the special tokens' texts.
    func testConversationsGetWhatApplyChatTemplatePasses() throws {
        let t = try ChatTemplate("{{ tools is none }} {{ documents is none }} {{ messages | map(attribute='role') | join(',') }} "
            + "{{ add_generation_prompt }} {{ bos_token }}")
        XCTAssertEqual(try t.render(messages: [("user", "a"), ("assistant", "b")], addGenerationPrompt: true, specialTokens: ["bos_token": "<s>"]),
                       "True True user,assistant True <s>")
        // Tools as given; the template's own variables (chat_template_kwargs), which take a special token's
        // place as in transformers ({**special_tokens_map, **kwargs}), but not the conversation's.
        let k = try ChatTemplate("{{ tools | map(attribute='name') | join(',') }} {{ enable_thinking }} {{ bos_token }}")
        XCTAssertEqual(try k.render(conversation: [], tools: [.dict(JinjaDict([("name", .string("f"))]))], addGenerationPrompt: false,
                                    specialTokens: ["bos_token": "<s>"], kwargs: ["enable_thinking": .bool(false), "bos_token": .string("[B]")]),
                       "f False [B]")
        for name in ["messages", "tools", "documents", "add_generation_prompt"] {
            XCTAssertThrowsError(try k.render(conversation: [], addGenerationPrompt: false, kwargs: [name: .none])) {
                XCTAssertTrue("\($0)".contains("may not set '\(name)'"), "\($0)")
            }
        }
    }

    /// Syntax errors name the line of the template.
    func testErrorsNameTheLine() {
        XCTAssertThrowsError(try ChatTemplate("a\n{% if x %}\nb")) { XCTAssertTrue("\($0)".contains("line 3"), "\($0)") }
        // An unknown filter is an error when the template is read, except inside an `if` or a conditional
        // expression, where it fails only when it runs, as in jinja2 3 (DeepSeek V3.2's `from_json` sits in a
        // branch transformers never takes).
        XCTAssertThrowsError(try ChatTemplate("a\n\n{{ x | nosuchfilter }}")) { XCTAssertTrue("\($0)".contains("line 3") && "\($0)".contains("nosuchfilter"), "\($0)") }
        XCTAssertThrowsError(try ChatTemplate("{% for m in x %}\n{% set y | nosuch %}{% endset %}{% endfor %}")) { XCTAssertTrue("\($0)".contains("line 2"), "\($0)") }
        XCTAssertEqual(try ChatTemplate("{% if false %}{{ x | from_json }}{% endif %}ok").render([:]), "ok")
        XCTAssertEqual(try ChatTemplate("{{ (x | from_json) if false else 'ok' }}").render([:]), "ok")
        XCTAssertThrowsError(try ChatTemplate("{% if true %}\n{{ 'a' | from_json }}{% endif %}").render([:])) { XCTAssertTrue("\($0)".contains("line 2") && "\($0)".contains("from_json"), "\($0)") }
        XCTAssertThrowsError(try ChatTemplate("{% for x in y %}{% call z %}{% endfor %}")) { XCTAssertTrue("\($0)".contains("'call'"), "\($0)") }
        XCTAssertThrowsError(try ChatTemplate("a\n{{ x.y.z }}").render([:])) { XCTAssertTrue("\($0)".contains("line 2") && "\($0)".contains("'x' is undefined"), "\($0)") }
    }
}
