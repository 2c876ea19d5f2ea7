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

    /// Syntax errors name the line of the template.
    func testErrorsNameTheLine() {
        XCTAssertThrowsError(try ChatTemplate("a\n{% if x %}\nb")) { XCTAssertTrue("\($0)".contains("line 3"), "\($0)") }
        XCTAssertThrowsError(try ChatTemplate("a\n\n{{ x | nosuchfilter }}")) { XCTAssertTrue("\($0)".contains("line 3") && "\($0)".contains("nosuchfilter"), "\($0)") }
        XCTAssertThrowsError(try ChatTemplate("{% for x in y %}{% call z %}{% endfor %}")) { XCTAssertTrue("\($0)".contains("'call'"), "\($0)") }
        XCTAssertThrowsError(try ChatTemplate("a\n{{ x.y.z }}").render([:])) { XCTAssertTrue("\($0)".contains("line 2") && "\($0)".contains("'x' is undefined"), "\($0)") }
    }
}
