// ColumnValue.swift: the values of a table's rows as the columnar formats store them (Parquet, Arrow),
// and what their stored values stand for (dates, times, timestamps, decimals, UUIDs, half floats) read
// as pyarrow's `to_pylist` reads them, the same whichever file holds them.

import Foundation

/// One value of a table's row (Parquet, Arrow): a column's value, a list, or a struct's fields in the schema's order.
public indirect enum ColumnValue: Equatable, Sendable {
    case null
    case bool(Bool)
    case int(Int64)
    /// A float; also a decimal, a half float, or an unsigned INT64 past Int64.max.
    case double(Double)
    /// Bytes that are valid UTF-8 (the STRING columns of every writer); also a date, time or timestamp in
    /// ISO 8601 ("2024-01-02T03:04:05.123456", "+00:00" after a UTC one), or a UUID.
    case string(String)
    /// Bytes that are not UTF-8.
    case bytes([UInt8])
    case list([ColumnValue])
    /// A struct's fields in the schema's order, or a map's entries (keys as text) in the file's order.
    case record([(name: String, value: ColumnValue)])

    public static func == (a: ColumnValue, b: ColumnValue) -> Bool {
        switch (a, b) {
        case (.null, .null): return true
        case (.bool(let x), .bool(let y)): return x == y
        case (.int(let x), .int(let y)): return x == y
        case (.double(let x), .double(let y)): return x == y
        case (.string(let x), .string(let y)): return x == y
        case (.bytes(let x), .bytes(let y)): return x == y
        case (.list(let x), .list(let y)): return x == y
        case (.record(let x), .record(let y)): return x.map(\.name) == y.map(\.name) && x.map(\.value) == y.map(\.value)
        default: return false
        }
    }
}

// MARK: dates, times, numbers

/// The Double nearest `unscaled` (decimal digits, "-" in front when negative) × 10^−`scale`, as Python's `float(Decimal)`.
func decimalNumber(_ unscaled: String, scale: Int) -> Double { Double(unscaled + "e" + String(-scale)) ?? .nan }

/// A big-endian two's complement integer's decimal digits ("-" in front when negative).
func decimalDigits(_ bytes: [UInt8]) -> String {
    let negative = bytes[0] >= 0x80
    var magnitude = bytes
    if negative {  // invert and add one
        var carry = 1
        for k in magnitude.indices.reversed() {
            let sum = Int(~magnitude[k]) + carry
            magnitude[k] = UInt8(truncatingIfNeeded: sum)
            carry = sum >> 8
        }
    }
    var digits: [Character] = []
    while magnitude.contains(where: { $0 != 0 }) {  // long division by 10, a digit a pass
        var remainder = 0
        for k in magnitude.indices {
            let current = remainder * 256 + Int(magnitude[k])
            magnitude[k] = UInt8(current / 10)
            remainder = current % 10
        }
        digits.append(Character(String(remainder)))
    }
    return (negative ? "-" : "") + (digits.isEmpty ? "0" : String(digits.reversed()))
}

/// (⌊a / b⌋, a − b·⌊a / b⌋) for b > 0: the remainder never negative, as time before 1970 needs.
func floorDivide(_ a: Int64, _ b: Int64) -> (Int64, Int64) {
    let q = a / b, r = a % b
    return r < 0 ? (q - 1, r + b) : (q, r)
}

/// "1969-12-31" for day −1 (days since 1970-01-01, the proleptic Gregorian calendar; Hinnant's civil_from_days).
func isoDate(days: Int64) -> String {
    let z = days.addingReportingOverflow(719_468).partialValue
    let era = floorDivide(z, 146_097).0
    let dayOfEra = z - era * 146_097
    let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
    let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
    let m5 = (5 * dayOfYear + 2) / 153
    let day = dayOfYear - (153 * m5 + 2) / 5 + 1, month = m5 < 10 ? m5 + 3 : m5 - 9
    let year = yearOfEra &+ era &* 400 &+ (month <= 2 ? 1 : 0)
    return padded(year, 4) + "-" + padded(month, 2) + "-" + padded(day, 2)
}

/// "03:04:05", "03:04:05.123456" or "03:04:05.123456789", as Python's `isoformat` writes a time (pandas' for nanoseconds).
func isoTime(nanosOfDay: Int64) -> String {
    let (seconds, nanos) = floorDivide(nanosOfDay, 1_000_000_000)
    var text = padded(seconds / 3600, 2) + ":" + padded(seconds / 60 % 60, 2) + ":" + padded(seconds % 60, 2)
    if nanos % 1000 != 0 { text += "." + padded(nanos, 9) } else if nanos != 0 { text += "." + padded(nanos / 1000, 6) }
    return text
}

/// "2024-01-02T03:04:05.123456", and "+00:00" after it for a UTC timestamp.
func isoTimestamp(days: Int64, nanosOfDay: Int64, utc: Bool) -> String {
    let (extraDays, nanos) = floorDivide(nanosOfDay, 86_400_000_000_000)
    return isoDate(days: days &+ extraDays) + "T" + isoTime(nanosOfDay: nanos) + (utc ? "+00:00" : "")
}

/// `n` in decimal with zeros in front up to `width` digits ("-" before them when negative).
func padded(_ n: Int64, _ width: Int) -> String {
    let digits = String(n.magnitude)
    return (n < 0 ? "-" : "") + String(repeating: "0", count: max(0, width - digits.count)) + digits
}

/// An IEEE 754 half-precision float's bits as a Double.
func halfFloat(_ h: UInt16) -> Double {
    let sign: Double = h & 0x8000 != 0 ? -1 : 1
    let exponent = Int(h >> 10 & 0x1F), fraction = Double(h & 0x3FF)
    switch exponent {
    case 0: return sign * fraction * pow(2, -24)
    case 31: return fraction == 0 ? sign * .infinity : .nan
    default: return sign * (1 + fraction / 1024) * pow(2, Double(exponent - 15))
    }
}

/// What a column's stored values stand for, where that changes how they read (as pyarrow reads them):
/// unsigned integers, decimals as numbers, dates, times and timestamps as ISO 8601 text, UUIDs as
/// text, half floats as numbers. Other byte values are text when they are UTF-8, bytes otherwise.
enum ValueMeaning {
    case stored, decimal(scale: Int), date, uuid, float16
    /// Unsigned INT32 (`wide` false) or INT64 values.
    case unsigned(wide: Bool)
    /// A time of day or a timestamp, `perSecond` stored units a second; `utc` adds "+00:00".
    case time(perSecond: Int64), timestamp(perSecond: Int64, utc: Bool)

    /// `v` as it reads: integers (INT32, INT64) and bytes (BYTE_ARRAY, FIXED_LEN_BYTE_ARRAY) made what they stand for.
    func read(_ v: ColumnValue) -> ColumnValue {
        switch (self, v) {
        case (_, .null): return .null
        case (.unsigned(let wide), .int(let i)) where i < 0:  // past the signed range: INT64's as a float (JSON's integers are 64-bit)
            return wide ? .double(Double(UInt64(bitPattern: i))) : .int(Int64(UInt32(truncatingIfNeeded: i)))
        case (.decimal(let scale), .int(let i)): return .double(decimalNumber(String(i), scale: scale))
        case (.decimal(let scale), .bytes(let b)) where (1...32).contains(b.count):  // big-endian two's complement (decimal256 at most)
            return .double(decimalNumber(decimalDigits(b), scale: scale))
        case (.date, .int(let days)): return .string(isoDate(days: days))
        case (.time(let perSecond), .int(let t)):
            return .string(isoTime(nanosOfDay: t.multipliedReportingOverflow(by: 1_000_000_000 / perSecond).partialValue))
        case (.timestamp(let perSecond, let utc), .int(let t)):
            let (seconds, fraction) = floorDivide(t, perSecond)
            let (days, secondOfDay) = floorDivide(seconds, 86_400)
            return .string(isoTimestamp(days: days, nanosOfDay: secondOfDay * 1_000_000_000 + fraction * (1_000_000_000 / perSecond), utc: utc))
        case (.uuid, .bytes(let b)) where b.count == 16:
            let hex = b.map { String(format: "%02x", $0) }
            return .string([0..<4, 4..<6, 6..<8, 8..<10, 10..<16].map { hex[$0].joined() }.joined(separator: "-"))
        case (.float16, .bytes(let b)) where b.count == 2: return .double(halfFloat(UInt16(b[0]) | UInt16(b[1]) << 8))
        case (_, .bytes(let b)): return String(validating: b, as: UTF8.self).map { .string($0) } ?? v
        default: return v
        }
    }
}

/// A map key that is not a string, as the text of an object's key (as Python's `json` writes one).
func mapKeyText(_ key: ColumnValue) -> String {
    switch key {
    case .null: return "null"
    case .bool(let b): return b ? "true" : "false"
    case .int(let i): return String(i)
    case .double(let d): return String(d)
    case .string(let s): return s
    case .bytes(let b): return b.map { String(format: "%02x", $0) }.joined()
    case .list, .record: return "\(key)"
    }
}

