// The order-keeping JSON reader that chat data goes through: it reads what Foundation reads, to the
// same values, keeps object keys in the text's order, tells ints from floats as Python does, and
// refuses what is not JSON with the byte offset.

import XCTest
import Foundation
@testable import Tokenizers

final class JSONValueTests: XCTestCase {
    /// Foundation's reading of `text`, as a JSONValue with sorted keys, to compare values with.
    func foundation(_ text: String) throws -> JSONValue {
        func convert(_ v: Any) -> JSONValue {
            switch v {
            case is NSNull: return .null
            case let s as String: return .string(s)
            case let a as [Any]: return .array(a.map(convert))
            case let d as [String: Any]: return .object(JSONObject(d.keys.sorted().map { ($0, convert(d[$0]!)) }))
            case let n as NSNumber:
                let t = String(cString: n.objCType)
                if t == "c" || t == "B" { return .bool(n.boolValue) }
                return ["f", "d"].contains(t) ? .double(n.doubleValue) : .int(n.intValue)
            default: return .null
            }
        }
        return convert(try JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed]))
    }

    func sorted(_ v: JSONValue) -> JSONValue {
        switch v {
        case .array(let a): return .array(a.map(sorted))
        case .object(let o): return .object(JSONObject(o.members.sorted { $0.key < $1.key }.map { ($0.key, sorted($0.value)) }))
        default: return v
        }
    }

    func testReadsWhatFoundationReadsKeepingKeyOrder() throws {
        let texts = [
            #"{"z": 1, "a": [true, false, null], "m": {"y": "x", "b": -0.5}}"#,
            #"  [1, -2, 3.25, 1e3, -1E-2, 0, 12345678901234, "é\u00e9\ud83d\ude00\n\t\"\\\/"] "#,
            #"{"nested": {"deeper": {"deepest": [[], {}, [[]]]}}, "empty": ""}"#,
            #""just a string""#, "42", "-0.0", "true", "null",
        ]
        for t in texts {
            let mine = try JSONValue(parsing: t)
            XCTAssertEqual(sorted(mine), try foundation(t), t)
        }
        let o = try JSONValue(parsing: #"{"z": 1, "a": 2, "m": {"y": 3, "b": 4}, "z": 5}"#)
        guard case .object(let top) = o, case .object(let inner)? = top["m"] else { return XCTFail("\(o)") }
        XCTAssertEqual(top.keys, ["z", "a", "m"], "the text's order; a repeated key keeps its place")
        XCTAssertEqual(top["z"], .int(5), "and its last value, as Python's json")
        XCTAssertEqual(inner.keys, ["y", "b"])
        XCTAssertEqual(try JSONValue(parsing: "1.0"), .double(1), "1.0 is a float to Python, 1 an int")
        XCTAssertEqual(try JSONValue(parsing: "1"), .int(1))
        XCTAssertEqual(try JSONValue(parsing: #""\ud800x""#), .string("\u{FFFD}x"), "a lone surrogate")
        XCTAssertEqual(try JSONValue(parsing: "\u{FEFF}{\"a\": 1}"), .object(JSONObject([("a", .int(1))])), "a byte order mark, as Foundation skips it")
        // Members removed and set again keep the order and the lookups right.
        var m = JSONObject([("a", .int(1)), ("b", .int(2)), ("c", .int(3))])
        m["a"] = nil
        m["d"] = .int(4)
        m["b"] = .int(5)
        XCTAssertEqual(m.keys, ["b", "c", "d"])
        XCTAssertEqual([m["a"], m["b"], m["c"], m["d"]], [nil, .int(5), .int(3), .int(4)])
        // What a template sees: a dict in the same order.
        guard case .dict(let d) = o.jinja else { return XCTFail() }
        XCTAssertEqual(d.keys, ["z", "a", "m"])
    }

    func testRefusesWhatIsNotJSONWithItsOffset() {
        let bad: [(String, String, Int)] = [
            (#"{"a": 1,}"#, "expected a string key", 8), (#"[1, 2"#, "unexpected end", 5), (#"{"a" 1}"#, "expected ':'", 5),
            ("01", "leading zero", 0), ("1.", "digits after '.'", 2), ("1e", "digits in an exponent", 2), (#""\x""#, "unknown escape", 3),
            (#""\u12G4""#, "4 hex digits", 3), (#""\u+123""#, "4 hex digits", 3), ("\"a\u{01}\"", "control character", 3), ("tru", "unexpected character", 0),
            ("[1] 2", "after the JSON value", 4), ("", "unexpected end", 0), (String(repeating: "[", count: 600), "deeper than 512", 512),
        ]
        for (text, message, offset) in bad {
            XCTAssertThrowsError(try JSONValue(parsing: text), text) { e in
                let p = e as? JSONParseError
                XCTAssertTrue(p?.message.contains(message) == true, "\(text): \(e)")
                XCTAssertEqual(p?.offset, offset, "\(text): \(e)")
            }
        }
    }

    /// A key given twice keeps its last value, as JSON readers do, unless refused (settings files);
    /// an error's offset reads as a line and a column in characters.
    func testDuplicateKeysAndErrorPositions() throws {
        let twice = "{\"a\": 1,\n \"é\": {\"a\": 2},\n  \"a\": 3}"
        XCTAssertEqual(try JSONValue(parsing: twice)["a"], .int(3))
        XCTAssertNoThrow(try JSONValue(parsing: #"{"a": {"a": 1}, "b": [{"a": 1}, {"a": 2}]}"#, refusingDuplicateKeys: true))  // other objects
        XCTAssertThrowsError(try JSONValue(parsing: twice, refusingDuplicateKeys: true)) { e in
            guard let p = e as? JSONParseError else { return XCTFail("\(e)") }
            XCTAssertEqual(p.message, #"the key "a" is given twice in one object"#)
            XCTAssertEqual(p.position(in: twice).line, 3)
            XCTAssertEqual(p.position(in: twice).column, 3)
        }
        let crlf = "\u{FEFF}{\"a\": 1,\r\n  \"a\": 2}"  // Windows line ends and a byte order mark
        XCTAssertThrowsError(try JSONValue(parsing: crlf, refusingDuplicateKeys: true)) { e in
            XCTAssertEqual((e as? JSONParseError).map { [$0.position(in: crlf).line, $0.position(in: crlf).column] }, [2, 3])
        }
        XCTAssertThrowsError(try JSONValue(parsing: "\u{FEFF}{1}")) { e in
            XCTAssertEqual((e as? JSONParseError).map { [$0.position(in: "\u{FEFF}{1}").line, $0.position(in: "\u{FEFF}{1}").column] }, [1, 2])
        }
        XCTAssertThrowsError(try JSONValue(parsing: "{\"é\" 1}")) { e in
            XCTAssertEqual((e as? JSONParseError).map { [$0.position(in: "{\"é\" 1}").line, $0.position(in: "{\"é\" 1}").column] }, [1, 6])
        }
    }

    /// Codable keeps a value (an object's keys come back sorted).
    func testCodableRoundTrip() throws {
        let v = try JSONValue(parsing: #"{"b": [1, 2.5, "x", null, true], "a": {"c": {}}}"#)
        let back = try JSONDecoder().decode(JSONValue.self, from: try JSONEncoder().encode(v))
        XCTAssertEqual(back, sorted(v))
    }
}
