// Renders chat templates on conversations for comparison with transformers' jinja2 rendering
// (scripts/check-chat-templates runs both on real models' templates and counts the differences).
//   template-check --templates DIR --cases FILE --out FILE
// Cases: {"name": {"messages": [...], "tools": [...]?, "add_generation_prompt": bool, "kwargs": {...}?}}.
// Out: {"template": {"case": {"ok": true, "text": …} | {"ok": false, "error": …}}}. The special tokens
// are <s>, </s>, <unk>, <pad>; strftime_now gives 26 Jul 2026 12:00:00 (a Sunday), as the reference does.
import Foundation
import Tokenizers

var args = Array(CommandLine.arguments.dropFirst())
func option(_ name: String) -> String? {
    guard let i = args.firstIndex(of: name), i + 1 < args.count else { return nil }
    return args[i + 1]
}
guard let dir = option("--templates"), let casesPath = option("--cases"), let outPath = option("--out") else {
    FileHandle.standardError.write(Data("usage: template-check --templates DIR --cases FILE --out FILE\n".utf8))
    exit(2)
}
guard case .object(let cases) = try JSONValue(parsing: String(contentsOfFile: casesPath, encoding: .utf8)) else {
    FileHandle.standardError.write(Data("\(casesPath): expected an object of cases\n".utf8))
    exit(2)
}
let fixedNow = JinjaFunction("strftime_now") { positional, _ in
    guard case .string(let format)? = positional.first else { throw ChatTemplateError("strftime_now() takes a format string") }
    var parts = tm()
    (parts.tm_year, parts.tm_mon, parts.tm_mday, parts.tm_hour, parts.tm_wday, parts.tm_yday) = (126, 6, 26, 12, 0, 206)
    var buffer = [Int8](repeating: 0, count: 512)
    let n = strftime(&buffer, buffer.count, format, &parts)
    return .string(String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self))
}
var out = JSONObject()
for file in try FileManager.default.contentsOfDirectory(atPath: dir).filter({ $0.hasSuffix(".jinja") }).sorted() {
    let source = try String(contentsOfFile: dir + "/" + file, encoding: .utf8)
    var results = JSONObject()
    func record(_ name: String, _ result: Result<String, Error>) {
        switch result {
        case .success(let text): results[name] = .object(JSONObject([("ok", .bool(true)), ("text", .string(text))]))
        case .failure(let error): results[name] = .object(JSONObject([("ok", .bool(false)), ("error", .string("\(error)"))]))
        }
    }
    let template: ChatTemplate
    do { template = try ChatTemplate(source) } catch {
        for (name, _) in cases.members { record(name, .failure(error)) }
        out[String(file.dropLast(".jinja".count))] = .object(results)
        continue
    }
    for (name, c) in cases.members {
        guard case .array(let messages)? = c["messages"] else { continue }
        var tools: [JinjaValue]?
        if case .array(let t)? = c["tools"] { tools = t.map(\.jinja) }
        var kwargs: [String: JinjaValue] = ["strftime_now": .function(fixedNow)]
        if case .object(let k)? = c["kwargs"] { for (key, v) in k.members { kwargs[key] = v.jinja } }
        record(name, Result {
            try template.render(conversation: messages.map(\.jinja), tools: tools, addGenerationPrompt: c["add_generation_prompt"] == .bool(true),
                                specialTokens: ["bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"], kwargs: kwargs)
        })
    }
    out[String(file.dropLast(".jinja".count))] = .object(results)
}
try JSONValue.object(out).text.write(toFile: outPath, atomically: true, encoding: .utf8)
