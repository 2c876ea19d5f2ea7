// Tokenizer+ByteTokenizer.swift: `ByteTokenizer`, the simplest tokenizer: one id per UTF-8 byte (ids 0…255),
// optional special tokens appended after 255. Needs no training and round-trips any text.
import Foundation

/// One token per UTF-8 byte: id `b` is byte `b` (0…255); special tokens get ids 256, 257, … in the order given.
///
/// Useful for tiny character-level models and as a baseline: compression is exactly 1 byte per token.
public struct ByteTokenizer: Tokenizer {
    /// The special tokens' texts; token `specialTokens[k]` has id `256 + k`.
    public let specialTokens: [String]
    public let bosTokenID: Int32?
    public let eosTokenID: Int32?
    public let padTokenID: Int32?
    public let unkTokenID: Int32?
    private let matcher: SpecialTokenMatcher

    /// - Parameters:
    ///   - specialTokens: texts that encode to one id each (ids 256…); duplicates are ignored after the first.
    ///   - roles: which of them are BOS/EOS/PAD/UNK; a role naming a text not in `specialTokens` is a
    ///     programming error.
    public init(specialTokens: [String] = [], roles: SpecialTokenRoles = SpecialTokenRoles()) {
        var seen = Set<[UInt8]>()
        let unique = specialTokens.filter { !$0.isEmpty && seen.insert(Array($0.utf8)).inserted }
        self.specialTokens = unique
        matcher = SpecialTokenMatcher(unique.enumerated().map { AddedToken(id: Int32(256 + $0.offset), content: $0.element) })
        func id(_ name: String?) -> Int32? {
            guard let name else { return nil }
            guard let k = unique.firstIndex(where: { Array($0.utf8) == Array(name.utf8) }) else {
                fatalError(
                    "ByteTokenizer: role token \(name.debugDescription) is not among the special tokens \(unique)")
            }
            return Int32(256 + k)
        }
        bosTokenID = id(roles.bos)
        eosTokenID = id(roles.eos)
        padTokenID = id(roles.pad)
        unkTokenID = id(roles.unk)
    }

    /// 256 plus the number of special tokens.
    public var vocabSize: Int { 256 + specialTokens.count }

    public func encode(_ text: String) -> [Int32] {
        withUTF8Bytes(text) { p, n in
            var out = [Int32]()
            out.reserveCapacity(n)
            matcher.split(p, count: n, plain: { start, end in
                for i in start ..< end { out.append(Int32(p[i])) }
            }, special: { out.append($0) })
            return out
        }
    }

    public func decode(_ ids: [Int32]) -> String {
        var bytes = [UInt8]()
        bytes.reserveCapacity(ids.count)
        for id in ids {
            if id >= 0 && id < 256 {
                bytes.append(UInt8(id))
            } else if id >= 256 && Int(id) < vocabSize {
                bytes += specialTokens[Int(id) - 256].utf8
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// A special token's id, the id of a one-byte string (an ASCII character), or of `<0xNN>` (any byte).
    public func tokenID(for token: String) -> Int32? {
        let bytes = Array(token.utf8)
        if let k = specialTokens.firstIndex(where: { Array($0.utf8) == bytes }) { return Int32(256 + k) }
        if bytes.count == 1 { return Int32(bytes[0]) }
        // The `<0xNN>` spelling `tokenString(for:)` gives non-ASCII bytes.
        if bytes.count == 6, token.hasPrefix("<0x"), token.hasSuffix(">"),
           let b = UInt8(token.dropFirst(3).dropLast(), radix: 16) { return Int32(b) }
        return nil
    }

    /// The special token's text, the byte as a one-character string when it is ASCII, or `<0xNN>` otherwise.
    public func tokenString(for id: Int32) -> String? {
        if id >= 256 && Int(id) < vocabSize { return specialTokens[Int(id) - 256] }
        guard id >= 0 && id < 256 else { return nil }
        if id < 128 { return String(UnicodeScalar(UInt8(id))) }
        return String(format: "<0x%02X>", Int(id))
    }

    /// Ids past the 256 bytes are the special tokens.
    public func isAddedToken(_ id: Int32) -> Bool { id >= 256 && Int(id) < vocabSize }
}
