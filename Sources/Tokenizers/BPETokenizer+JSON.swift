// BPETokenizer+JSON.swift: reads and writes Hugging Face `tokenizer.json` (model BPE with vocab + merges, a
// ByteLevel pre-tokenizer optionally after Digits or a Split, a ByteLevel decoder, added_tokens, a
// post-processor that adds a BOS at most) and the role names in sibling `tokenizer_config.json` /
// `special_tokens_map.json` files. Every load error names the file and the field that was wrong.
import Foundation

extension BPETokenizer {
    // MARK: - Loading

    /// Loads a Hugging Face `tokenizer.json` (or the one inside a model folder).
    ///
    /// Role names (BOS/EOS/PAD/UNK) come from `roles` if given; otherwise from the `tokenizer_config.json`
    /// next to the file (`bos_token`, `eos_token`, `pad_token`, `unk_token`; null there means no such
    /// role), with `special_tokens_map.json` taking precedence only beside an older config without
    /// `added_tokens_decoder`, as in transformers; else from common names
    /// (`SpecialTokenRoles.guess(from:)`), as transformers falls back on its tokenizer class's defaults
    /// (GPT-2's config names no role: its EOS is still `<|endoftext|>`). A post-processor that puts a
    /// token in front of every text (Llama 3's) makes that token the BOS and `addsBOS` true; it must
    /// agree with a BOS the roles or config files name, not with a guessed one.
    ///
    /// - Throws: `TokenizerError.unreadable`, `.malformed` or `.unsupported`, each naming the file and the
    ///   field at fault.
    public static func load(from url: URL, roles: SpecialTokenRoles? = nil) throws -> BPETokenizer {
        var file = url
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: url.path, isDirectory: &isDir), isDir.boolValue {
            file = url.appendingPathComponent("tokenizer.json")
        }
        let data: Data
        do {
            data = try Data(contentsOf: file)
        } catch {
            throw TokenizerError.unreadable(file: file.path, reason: (error as NSError).localizedDescription)
        }
        var configs: [Data] = []
        if roles == nil {
            // As transformers reads them: a tokenizer_config.json with `added_tokens_decoder` (written by
            // transformers 4.34 on) is read alone; an older one is overridden by special_tokens_map.json.
            func read(_ name: String) -> Data? { try? Data(contentsOf: file.deletingLastPathComponent().appendingPathComponent(name)) }
            let config = read("tokenizer_config.json")
            let modern = config.flatMap { (try? JSONSerialization.jsonObject(with: $0)) as? [String: Any] }?["added_tokens_decoder"] != nil
            configs = modern ? [config!] : [read("special_tokens_map.json"), config].compactMap { $0 }
        }
        let tokenizer = try load(json: data, file: file.path, roles: roles, configs: configs)
        // The chat template, read whatever `roles` says: chat_template.jinja (newer transformers write
        // it there) over tokenizer_config.json's, as transformers takes them.
        let folder = file.deletingLastPathComponent()
        tokenizer.chatTemplate = (try? String(contentsOf: folder.appendingPathComponent("chat_template.jinja"), encoding: .utf8))
            ?? (try? Data(contentsOf: folder.appendingPathComponent("tokenizer_config.json"))).flatMap { chatTemplate(inConfigs: [$0]) }
        return tokenizer
    }

    /// A chat template from a file a user names (`--chat-template`): a Jinja file, or a JSON file
    /// whose "chat_template" holds one (tokenizer_config.json, chat_template.json), checked to be
    /// readable.
    /// - Throws: `ChatTemplateError` naming the file: it cannot be read, holds no template, or the
    ///   template's syntax is not supported.
    public static func chatTemplate(fromFile path: String) throws -> String {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw ChatTemplateError("\(path): cannot read the chat template file")
        }
        var template = text
        if (try? JSONSerialization.jsonObject(with: data)) is [String: Any] {  // a config, whatever its name
            guard let t = chatTemplate(inConfigs: [data]) else {
                throw ChatTemplateError("\(path): holds no \"chat_template\" (a string, or a list with one named \"default\")")
            }
            template = t
        }
        do { _ = try ChatTemplate(template) } catch let e as ChatTemplateError { throw ChatTemplateError("\(path): \(e.message)") }
        return template
    }

    /// The chat template of the first of `configs` (tokenizer_config.json contents) that has one:
    /// `chat_template` as a string, or the one named "default" of a list of `{name, template}`.
    static func chatTemplate(inConfigs configs: [Data]) -> String? {
        for c in configs {
            guard let o = (try? JSONSerialization.jsonObject(with: c)) as? [String: Any], let t = o["chat_template"] else { continue }
            if let s = t as? String { return s }
            if let list = t as? [[String: Any]] {
                return list.first { $0["name"] as? String == "default" }?["template"] as? String
            }
        }
        return nil
    }

    /// Parses `tokenizer.json` content; `file` is only used in error messages. Roles: `roles` if given,
    /// else from `configs` (the contents of `tokenizer_config.json`-like files, in order of precedence)
    /// and common names, as `load(from:)` describes.
    public static func load(json data: Data, file: String = "tokenizer.json",
                            roles: SpecialTokenRoles? = nil, configs: [Data] = []) throws -> BPETokenizer {
        func malformed(_ reason: String) -> TokenizerError { .malformed(file: file, reason: reason) }
        func unsupported(_ feature: String) -> TokenizerError { .unsupported(file: file, feature: feature) }

        let top: Any
        do {
            top = try JSONSerialization.jsonObject(with: data, options: [])
        } catch {
            // (Containers' jsonSyntaxDetail, inlined: this module depends on none.)
            throw malformed("it is not valid JSON (\((error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String ?? (error as NSError).localizedDescription))")
        }
        guard let root = top as? [String: Any] else { throw malformed("the top level is not a JSON object") }
        guard let model = root["model"] as? [String: Any] else {
            throw malformed("there is no \"model\" object")
        }
        if let type = model["type"], !(type is NSNull) {
            guard let t = type as? String else { throw malformed("model.type is not a string") }
            guard t == "BPE" else { throw unsupported("model.type is \"\(t)\"; only \"BPE\" is supported") }
        }
        if let d = model["dropout"], !(d is NSNull), let x = d as? Double, x != 0 {
            throw unsupported("model.dropout is \(x); BPE dropout is not supported")
        }
        for field in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let v = model[field], !(v is NSNull), let s = v as? String, !s.isEmpty {
                throw unsupported("model.\(field) is \(s.debugDescription); only byte-level BPE without affixes is supported")
            }
        }
        // byte_fallback: SentencePiece-style BPE (Llama 2's, Mistral's), its space prefix from the
        // normalizer or the Metaspace pre-tokenizer.
        let spm = (model["byte_fallback"] as? Bool) == true ? try parseSentencePieceSpace(root, file: file) : nil
        let ignoreMerges = (model["ignore_merges"] as? Bool) ?? false

        // added_tokens
        var added: [AddedToken] = []
        if let raw = root["added_tokens"], !(raw is NSNull) {
            guard let list = raw as? [Any] else { throw malformed("added_tokens is not a list") }
            for (k, item) in list.enumerated() {
                guard let obj = item as? [String: Any] else { throw malformed("added_tokens[\(k)] is not an object") }
                guard let id = intValue(obj["id"]), id >= 0, id <= Int(Int32.max) else {
                    throw malformed("added_tokens[\(k)].id is missing or not a non-negative integer")
                }
                guard let content = obj["content"] as? String, !content.isEmpty else {
                    throw malformed("added_tokens[\(k)].content is missing or not a non-empty string")
                }
                func flag(_ key: String) throws -> Bool? {
                    guard let v = obj[key], !(v is NSNull) else { return nil }
                    guard let b = v as? Bool else { throw malformed("added_tokens[\(k)].\(key) is \(v), expected true or false") }
                    return b
                }
                let special = try flag("special") ?? false
                added.append(AddedToken(id: Int32(id), content: content, special: special, lstrip: try flag("lstrip") ?? false,
                                        rstrip: try flag("rstrip") ?? false, singleWord: try flag("single_word") ?? false,
                                        normalized: try flag("normalized")))
            }
        }
        let addedByContent = Dictionary(added.map { ($0.content.utf8.map { $0 }, $0) }, uniquingKeysWith: { a, _ in a })
        // `tokenizers` matches a normalized added token on the text after the Prepend normalizer ran
        // (so "▁<t>" at a text's start); SwiftPEFT matches added tokens on the text as given.
        if spm == .everyStretch, let t = added.first(where: \.normalized) {
            throw unsupported("added token \(t.content.debugDescription) is normalized (\"normalized\": true) under the Prepend normalizer")
        }

        // model.vocab: each spelling's bytes and id (a SentencePiece vocabulary read byte for byte, see RawJSON)
        guard let vocabObj = model["vocab"] as? [String: Any] else {
            throw malformed("model.vocab is missing or not an object mapping token → id")
        }
        let raw = spm != nil ? RawJSON(b: [UInt8](data)) : nil
        var spelled: [(id: Int, token: [UInt8])] = []
        spelled.reserveCapacity(vocabObj.count)
        func entry(_ token: [UInt8], _ id: Int?) throws {
            guard let id, id >= 0, id < 1 << 30 else {
                throw malformed("model.vocab[\(String(decoding: token, as: UTF8.self).debugDescription)] is not a non-negative integer id")
            }
            spelled.append((id, token))
        }
        if let raw {
            guard let at = raw.find(["model", "vocab"]) else { throw malformed("model.vocab is missing") }
            for m in raw.members(at) { try entry(m.key, raw.int(m.value)) }
        } else {
            for (token, v) in vocabObj { try entry(Array(token.utf8), intValue(v)) }
        }
        var idOf: [[UInt8]: Int32] = [:]
        idOf.reserveCapacity(spelled.count)
        var maxID = -1
        for (id, token) in spelled {
            idOf[token] = Int32(id)
            maxID = max(maxID, id)
        }
        // The tables are sized by the largest id: it must be in proportion to the entries the file has
        // (`{"a": 1073741823}` alone used to allocate about 24 GB).
        let bound = 2 * (spelled.count + addedByContent.count) + 1024
        guard maxID < bound else {
            throw malformed("model.vocab has \(spelled.count) tokens but an id of \(maxID); ids must be dense (below \(bound))")
        }
        if let big = added.max(by: { $0.id < $1.id }), Int(big.id) >= bound {
            throw malformed("added_tokens gives \(big.content.debugDescription) the id \(big.id) with \(spelled.count) tokens in model.vocab; ids must be dense (below \(bound))")
        }
        var vocab = [[UInt8]?](repeating: nil, count: maxID + 1)
        var owner = [[UInt8]?](repeating: nil, count: maxID + 1)
        var byteTokens: [Int32: UInt8] = [:]
        for (id, token) in spelled.sorted(by: { $0.id < $1.id || ($0.id == $1.id && $0.token.lexicographicallyPrecedes($1.token)) }) {
            let text = String(decoding: token, as: UTF8.self)
            if let other = owner[id] {
                throw malformed("model.vocab gives id \(id) to both \(String(decoding: other, as: UTF8.self).debugDescription) and \(text.debugDescription)")
            }
            owner[id] = token
            if let t = addedByContent[token], Int(t.id) == id {
                vocab[id] = token  // an added token in the vocabulary: spelled as its text
            } else if spm != nil {
                if let b = BPETokenizer.byteTokenValue(text) { byteTokens[Int32(id)] = b } else { vocab[id] = token.replacingSpaceMarks() }
            } else if let bytes = ByteLevelAlphabet.decode(text) {
                vocab[id] = bytes
            } else {
                throw malformed("model.vocab token \(text.debugDescription) (id \(id)) has characters outside the "
                                + "byte-level alphabet and is not an added token")
            }
        }

        // model.merges
        guard let mergeList = model["merges"] as? [Any] else {
            throw malformed("model.merges is missing or not a list")
        }
        var merges: [(Int32, Int32)] = []
        merges.reserveCapacity(mergeList.count)
        let rawMerges = try raw.map { r -> [Int] in
            guard let at = r.find(["model", "merges"]), r.elements(at).count == mergeList.count else {
                throw malformed("model.merges could not be read byte for byte")
            }
            return r.elements(at)
        }
        for (k, item) in mergeList.enumerated() {
            var parts: [[UInt8]]
            if let raw, let rawMerges {  // byte for byte
                let at = rawMerges[k]
                if let (s, _) = raw.string(at) {
                    parts = s.split(separator: 0x20, omittingEmptySubsequences: false).map(Array.init)
                } else {
                    parts = raw.elements(at).compactMap { raw.string($0)?.bytes }
                }
            } else if let s = item as? String {
                parts = s.split(separator: " ", omittingEmptySubsequences: false).map { Array($0.utf8) }
            } else if let arr = item as? [Any], let strs = arr as? [String] {
                parts = strs.map { Array($0.utf8) }
            } else {
                throw malformed("model.merges[\(k)] is neither a \"left right\" string nor a [left, right] pair")
            }
            guard parts.count == 2 else {
                throw malformed("model.merges[\(k)] has \(parts.count) parts; a merge has exactly two tokens")
            }
            func spelling(_ t: [UInt8]) -> String { String(decoding: t, as: UTF8.self).debugDescription }
            guard let a = idOf[parts[0]] else {
                throw malformed("model.merges[\(k)] uses \(spelling(parts[0])), which is not in model.vocab")
            }
            guard let b = idOf[parts[1]] else {
                throw malformed("model.merges[\(k)] uses \(spelling(parts[1])), which is not in model.vocab")
            }
            guard idOf[parts[0] + parts[1]] != nil else {
                throw malformed("model.merges[\(k)] makes \(spelling(parts[0] + parts[1])), which is not in model.vocab")
            }
            merges.append((a, b))
        }

        // normalizer, pre_tokenizer, decoder (SentencePiece's: read above)
        var nfc = false
        if spm == nil, let n = root["normalizer"], !(n is NSNull) {
            let type = (n as? [String: Any])?["type"] as? String ?? "?"
            let empty = type == "Sequence" && (((n as? [String: Any])?["normalizers"] as? [Any])?.isEmpty ?? false)
            nfc = type == "NFC"
            if !empty && !nfc { throw unsupported("normalizer \(type) is not supported (only none and NFC)") }
        }
        let pre = root["pre_tokenizer"].flatMap { $0 is NSNull ? nil : $0 }
        guard spm != nil || pre != nil else {
            throw unsupported("pre_tokenizer is null; a ByteLevel pre-tokenizer is required")
        }
        let kind = spm != nil ? .gpt2 : try parsePreTokenizer(pre!, file: file)
        if spm == nil, let d = root["decoder"], !(d is NSNull) {
            guard let dec = d as? [String: Any], let type = dec["type"] as? String else {
                throw malformed("decoder is not an object with a \"type\"")
            }
            guard type == "ByteLevel" else { throw unsupported("decoder \(type) is not supported (only ByteLevel)") }
        }

        var chosen = roles ?? rolesFromConfigs(configs, guessed: SpecialTokenRoles.guess(from: added.map(\.content)))
        let addedSet = Set(added.map { Array($0.content.utf8) })
        // Drop role names that are not added tokens (config files sometimes name plain vocabulary tokens).
        func keep(_ s: String?) -> String? { s.flatMap { addedSet.contains(Array($0.utf8)) ? $0 : nil } }
        chosen = SpecialTokenRoles(bos: keep(chosen.bos), eos: keep(chosen.eos), pad: keep(chosen.pad), unk: keep(chosen.unk))
        // The token the post-processor puts in front of every text is the BOS (transformers adds it
        // whatever tokenizer_config.json's add_bos_token says), unless the roles given or the config
        // files name another one; a BOS guessed from common names gives way to it.
        var addsBOS = false
        if let pp = root["post_processor"], !(pp is NSNull), let first = try parsePostProcessor(pp, added: added, file: file, path: "post_processor") {
            let named = roles.map { ($0.bos, "the BOS role given") }
                ?? namedRole("bos_token", in: configs).map { ($0, "tokenizer_config.json's bos_token") }
            if case let (name?, source)? = named, keep(name) != nil, Array(name.utf8) != Array(first.utf8) {
                throw unsupported("post_processor puts \(first.debugDescription) in front of every text, but \(source) is "
                                  + "\(name.debugDescription); only the BOS token can be added there")
            }
            chosen.bos = first
            addsBOS = true
        }
        do {
            let tokenizer = try BPETokenizer(vocab: vocab, merges: merges, addedTokens: added, preTokenizer: kind,
                                             ignoreMerges: ignoreMerges, roles: chosen, sentencePiece: spm, byteTokens: byteTokens)
            tokenizer.chatTemplate = chatTemplate(inConfigs: configs)
            tokenizer.normalizesToNFC = nfc
            tokenizer.addsBOS = addsBOS
            tokenizer.fusesUnknown = spm != nil && (model["fuse_unk"] as? Bool) == true
            // A byte the vocabulary lacks becomes the model's unk_token, or is dropped without one (as
            // `tokenizers` does), whatever the UNK role of the config files says.
            tokenizer.unknownByteID = (model["unk_token"] as? String).flatMap { tokenizer.tokenID(for: $0) }
            return tokenizer
        } catch TokenizerError.invalidArgument(let reason) {
            throw malformed(reason)
        }
    }

    private static func intValue(_ v: Any?) -> Int? {
        if let i = v as? Int { return i }
        if let d = v as? Double, d == d.rounded(), abs(d) < 1e15 { return Int(d) }
        return nil
    }

    private static func parsePreTokenizer(_ pre: Any, file: String) throws -> BPEPreTokenizer {
        func malformed(_ reason: String) -> TokenizerError { .malformed(file: file, reason: reason) }
        func unsupported(_ feature: String) -> TokenizerError { .unsupported(file: file, feature: feature) }
        guard let obj = pre as? [String: Any], let type = obj["type"] as? String else {
            throw malformed("pre_tokenizer is not an object with a \"type\"")
        }
        func checkByteLevel(_ o: [String: Any], _ path: String, regex: Bool = true) throws {
            if let p = o["add_prefix_space"] as? Bool, p {
                throw unsupported("\(path).add_prefix_space is true (only false is supported)")
            }
            let uses = (o["use_regex"] as? Bool) ?? true
            if uses != regex {
                throw unsupported(regex ? "\(path).use_regex is false (only GPT-2's regex is supported)"
                                  : "\(path).use_regex is true after a Split (only a Split then ByteLevel without its regex is supported)")
            }
        }
        switch type {
        case "ByteLevel":
            try checkByteLevel(obj, "pre_tokenizer")
            return .gpt2
        case "Sequence":
            guard let list = obj["pretokenizers"] as? [[String: Any]] else {
                throw malformed("pre_tokenizer.pretokenizers is missing or not a list of objects")
            }
            let types = list.map { ($0["type"] as? String) ?? "?" }
            if types == ["ByteLevel"] {
                try checkByteLevel(list[0], "pre_tokenizer.pretokenizers[0]")
                return .gpt2
            }
            if types == ["Digits", "ByteLevel"] {
                guard (list[0]["individual_digits"] as? Bool) == true else {
                    throw unsupported("pre_tokenizer.pretokenizers[0] is Digits without individual_digits: true")
                }
                try checkByteLevel(list[1], "pre_tokenizer.pretokenizers[1]")
                return .digitsSplit
            }
            if types == ["Split", "ByteLevel"] {
                let split = list[0]
                let pattern = (split["pattern"] as? [String: Any])?["Regex"] as? String
                guard let kind = BPEPreTokenizer.allCases.first(where: { $0.splitPattern != nil && $0.splitPattern == pattern }) else {
                    throw unsupported("pre_tokenizer.pretokenizers[0] is a Split on \(pattern.map { $0.debugDescription } ?? "no Regex pattern"); "
                                      + "supported: Llama 3's and Qwen2's regexes")
                }
                guard (split["behavior"] as? String) == "Isolated", (split["invert"] as? Bool) != true else {
                    throw unsupported("pre_tokenizer.pretokenizers[0] is a Split with behavior \(split["behavior"] ?? "none") or invert true (only Isolated, not inverted)")
                }
                try checkByteLevel(list[1], "pre_tokenizer.pretokenizers[1]", regex: false)
                return kind
            }
            throw unsupported("pre_tokenizer Sequence \(types) (supported: [ByteLevel], [Digits, ByteLevel], [Split, ByteLevel] with Llama 3's or Qwen2's regex)")
        default:
            throw unsupported("pre_tokenizer \(type) (supported: ByteLevel, Sequence[Digits, ByteLevel], Sequence[Split, ByteLevel])")
        }
    }

    /// The added token a `tokenizer.json` post-processor puts in front of every single text, or nil
    /// when it adds none: a `TemplateProcessing` whose `single` is `[SpecialToken X?, Sequence A,
    /// SpecialToken Y?]`, alone or in a `Sequence` beside `ByteLevel` (which only trims offsets), as
    /// Llama 3's is. A token after the text (an EOS, as some OLMo and Llama 3 fine-tunes were saved)
    /// is not added: SwiftPEFT ends a learned text with the EOS itself, and a prompt with none.
    /// - Throws: `.unsupported` for more than one token on either side, other processors (BERT's,
    ///   RoBERTa's); `.malformed` for a token the template does not define as one added token.
    private static func parsePostProcessor(_ pp: Any, added: [AddedToken], file: String, path: String) throws -> String? {
        func malformed(_ reason: String) -> TokenizerError { .malformed(file: file, reason: reason) }
        func unsupported(_ feature: String) -> TokenizerError { .unsupported(file: file, feature: feature) }
        guard let obj = pp as? [String: Any], let type = obj["type"] as? String else {
            throw malformed("\(path) is not an object with a \"type\"")
        }
        switch type {
        case "ByteLevel":
            return nil
        case "Sequence":
            guard let list = obj["processors"] as? [Any] else { throw malformed("\(path).processors is missing or not a list") }
            let firsts = try list.enumerated().compactMap { k, p in try parsePostProcessor(p, added: added, file: file, path: "\(path).processors[\(k)]") }
            guard firsts.count <= 1 else { throw unsupported("\(path) puts \(firsts) in front of every text (one BOS at most)") }
            return firsts.first
        case "TemplateProcessing":
            guard let single = obj["single"] as? [[String: Any]] else {
                throw malformed("\(path).single is missing or not a list of {\"SpecialToken\"} / {\"Sequence\"} objects")
            }
            let specials = obj["special_tokens"] as? [String: Any] ?? [:]
            var before: [String] = [], after: [String] = [], sawText = false
            for (k, item) in single.enumerated() {
                if item["Sequence"] != nil {
                    guard !sawText else { throw unsupported("\(path).single has the text twice") }
                    sawText = true
                    continue
                }
                guard let name = (item["SpecialToken"] as? [String: Any])?["id"] as? String else {
                    throw malformed("\(path).single[\(k)] is neither {\"SpecialToken\": {\"id\": …}} nor {\"Sequence\": …}")
                }
                // The template's own definition gives the id; it must be an added token.
                let ids = ((specials[name] as? [String: Any])?["ids"] as? [Any])?.compactMap { intValue($0) }
                guard let ids, ids.count == 1 else {
                    throw malformed("\(path).special_tokens does not define \(name.debugDescription) with one id")
                }
                guard let token = added.first(where: { Int($0.id) == ids[0] }) else {
                    throw malformed("\(path) adds \(name.debugDescription) as id \(ids[0]), which is not an added token")
                }
                if sawText { after.append(token.content) } else { before.append(token.content) }
            }
            guard sawText else { throw malformed("\(path).single has no {\"Sequence\": {\"id\": \"A\"}} for the text") }
            guard before.count <= 1, after.count <= 1 else {
                throw unsupported("\(path) puts \(before) in front of every text and \(after) after it (one token at most on each side)")
            }
            return before.first
        default:
            throw unsupported("\(path) \(type) (supported: ByteLevel, TemplateProcessing with a BOS in front at most, a Sequence of them)")
        }
    }

    /// Whether the first of `configs` that has `key` names a token (`.some(name)`) or none
    /// (`.some(nil)`: null); nil when no config has the key.
    static func namedRole(_ key: String, in configs: [Data]) -> String?? {
        for c in configs {
            guard let o = (try? JSONSerialization.jsonObject(with: c)) as? [String: Any], let v = o[key] else { continue }
            if let s = v as? String { return .some(s) }
            return .some((v as? [String: Any])?["content"] as? String)
        }
        return nil
    }

    /// A SentencePiece-style tokenizer.json's space prefix: Hugging Face's Llama 2 form (normalizer
    /// `Prepend("▁")` then `Replace(" ", "▁")`, no pre-tokenizer) or transformers 5's (no normalizer,
    /// `Metaspace` with `split` false and a `prepend_scheme`), with a decoder that turns "▁" back into
    /// spaces (`Replace`, `ByteFallback`, `Fuse`, `Strip`, or `Metaspace`).
    /// - Throws: `.unsupported` naming the field for any other normalizer, pre-tokenizer or decoder.
    private static func parseSentencePieceSpace(_ root: [String: Any], file: String) throws -> SpacePrefix {
        func unsupported(_ feature: String) -> TokenizerError { .unsupported(file: file, feature: feature) }
        func type(_ o: Any?) -> String? { (o as? [String: Any])?["type"] as? String }
        let supported = " (supported with byte_fallback: normalizer Prepend(\"▁\") + Replace(\" \", \"▁\") and no pre-tokenizer, or no normalizer and a Metaspace pre-tokenizer with split false)"
        var prefix: SpacePrefix
        let n = root["normalizer"].flatMap { $0 is NSNull ? nil : $0 }, pre = root["pre_tokenizer"].flatMap { $0 is NSNull ? nil : $0 }
        if let n {
            let list = type(n) == "Sequence" ? ((n as? [String: Any])?["normalizers"] as? [[String: Any]] ?? []) : [n as? [String: Any] ?? [:]]
            let replace = list.last.map { $0["type"] as? String == "Replace" && ($0["pattern"] as? [String: Any])?["String"] as? String == " " && $0["content"] as? String == "\u{2581}" } ?? false
            let prepend = list.count == 2 && list[0]["type"] as? String == "Prepend" && list[0]["prepend"] as? String == "\u{2581}"
            guard replace && (list.count == 1 || prepend), pre == nil else { throw unsupported("normalizer \(type(n) ?? "?") with byte_fallback" + supported) }
            prefix = prepend ? .everyStretch : .none
        } else if let pre {
            let o = pre as? [String: Any] ?? [:]
            guard type(pre) == "Metaspace", o["replacement"] as? String == "\u{2581}", (o["split"] as? Bool) == false else {
                throw unsupported("pre_tokenizer \(type(pre) ?? "?") with byte_fallback (a Metaspace that splits, or another)" + supported)
            }
            switch o["prepend_scheme"] as? String ?? ((o["add_prefix_space"] as? Bool) == false ? "never" : "always") {
            case "first": prefix = .first
            case "always": prefix = .always
            case "never": prefix = .none
            case let other: throw unsupported("pre_tokenizer.prepend_scheme \(other)")
            }
        } else {
            throw unsupported("no normalizer and no pre-tokenizer with byte_fallback" + supported)
        }
        if let d = root["decoder"], !(d is NSNull) {
            let parts = type(d) == "Sequence" ? ((d as? [String: Any])?["decoders"] as? [Any] ?? []).map(type) : [type(d)]
            guard parts.allSatisfy({ ["Replace", "ByteFallback", "Fuse", "Strip", "Metaspace"].contains($0 ?? "") }) else {
                throw unsupported("decoder \(parts.map { $0 ?? "?" }) with byte_fallback (supported: Replace, ByteFallback, Fuse, Strip, Metaspace)")
            }
        }
        return prefix
    }

    /// Role names from a `tokenizer_config.json` (`"eos_token": "…"` or `{"content": "…"}`).
    /// Each role from the first of `configs` (JSON objects; others are ignored) that has its key: a
    /// string or `{"content": …}` names the token, null (or anything else) means none. A role no file
    /// mentions keeps its `guessed` token (a tokenizer class's defaults, GPT-2's `<|endoftext|>`),
    /// except under transformers' generic `PreTrainedTokenizerFast`, which has none.
    static func rolesFromConfigs(_ configs: [Data], guessed: SpecialTokenRoles) -> SpecialTokenRoles {
        let objects = configs.compactMap { (try? JSONSerialization.jsonObject(with: $0)) as? [String: Any] }
        let generic = objects.contains { ($0["tokenizer_class"] as? String) == "PreTrainedTokenizerFast" }
        func role(_ key: String, _ guess: String?) -> String? {
            for o in objects {
                guard let v = o[key] else { continue }
                if let s = v as? String { return s }
                if let d = v as? [String: Any], let s = d["content"] as? String { return s }
                return nil
            }
            return generic ? nil : guess
        }
        return SpecialTokenRoles(bos: role("bos_token", guessed.bos), eos: role("eos_token", guessed.eos),
                                 pad: role("pad_token", guessed.pad), unk: role("unk_token", guessed.unk))
    }

    // MARK: - Saving

    /// Writes a Hugging Face `tokenizer.json` to `url` (atomically). The `tokenizers` library loads it and
    /// encodes exactly as this tokenizer does. Role names are not part of the format: see `saveFolder(_:)`.
    public func save(to url: URL) throws {
        try Data(tokenizerJSON().utf8).write(to: url, options: .atomic)
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` (the role names) into folder `dir`, creating it.
    public func saveFolder(_ dir: URL) throws {
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try save(to: dir.appendingPathComponent("tokenizer.json"))
        try Data(tokenizerConfigJSON().utf8).write(to: dir.appendingPathComponent("tokenizer_config.json"), options: .atomic)
    }

    /// The `tokenizer_config.json` text that names the roles (every role, null where there is none, so
    /// that loading it back gives these roles and no guess) and holds the chat template when there is
    /// one; transformers reads it too. Given the
    /// `existing` file's object (a chat template, model_max_length …), only its role keys change.
    public func tokenizerConfigJSON(over existing: [String: Any]? = nil) -> String {
        var config = existing ?? [
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": false,
        ]
        if existing == nil && !sentencePiece { config["add_prefix_space"] = false }  // a SentencePiece one's is in its tokenizer.json
        for (key, role) in [("bos_token", roles.bos), ("eos_token", roles.eos), ("pad_token", roles.pad), ("unk_token", roles.unk)] {
            config[key] = role ?? NSNull()
        }
        // The template, unless the existing file holds the same one (a list of named ones, say).
        if let chatTemplate, (try? JSONSerialization.data(withJSONObject: config)).flatMap({ Self.chatTemplate(inConfigs: [$0]) }) != chatTemplate {
            config["chat_template"] = chatTemplate
        }
        let data = (try? JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    /// The `tokenizer.json` text: vocabulary in id order, merges as `[left, right]` pairs (the form
    /// `tokenizers` ≥ 0.20 writes; it reads `"left right"` strings too), deterministic byte for byte.
    public func tokenizerJSON() -> String {
        var s = "{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n  \"added_tokens\": ["
        for (k, t) in addedTokens.enumerated() {
            s += k == 0 ? "\n" : ",\n"
            s += "    {\n      \"id\": \(t.id),\n      \"content\": \(jsonString(t.content)),\n"
            s += "      \"single_word\": \(t.singleWord),\n      \"lstrip\": \(t.lstrip),\n      \"rstrip\": \(t.rstrip),\n"
            s += "      \"normalized\": \(t.normalized),\n      \"special\": \(t.special)\n    }"
        }
        s += addedTokens.isEmpty ? "],\n" : "\n  ],\n"
        let byteLevel = "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": true, \"use_regex\": true}"
        if sentencePiece {  // Hugging Face's forms (transformers 4's Llama 2 for a space before every stretch; 5's Metaspace otherwise)
            let replace = "{\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"\u{2581}\"}"
            if spacePrefix == .everyStretch {
                s += "  \"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Prepend\", \"prepend\": \"\u{2581}\"}, \(replace)]},\n"
                s += "  \"pre_tokenizer\": null,\n"
            } else {
                let scheme = spacePrefix == .none ? "never" : spacePrefix.rawValue
                s += "  \"normalizer\": null,\n  \"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"\u{2581}\", \"prepend_scheme\": \"\(scheme)\", \"split\": false},\n"
            }
        } else {
        s += normalizesToNFC ? "  \"normalizer\": {\"type\": \"NFC\"},\n" : "  \"normalizer\": null,\n"
        switch preTokenizer {
        case .gpt2:
            s += "  \"pre_tokenizer\": \(byteLevel),\n"
        case .digitsSplit:
            s += "  \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Digits\", "
                + "\"individual_digits\": true}, \(byteLevel)]},\n"
        case .llama3, .qwen2:
            s += "  \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": "
                + "{\"Regex\": \(jsonString(preTokenizer.splitPattern!))}, \"behavior\": \"Isolated\", \"invert\": false}, "
                + byteLevel.replacingOccurrences(of: "\"use_regex\": true", with: "\"use_regex\": false") + "]},\n"
        }
        }
        if addsBOS, let bos = bosTokenID, let name = tokenString(for: bos) {  // Llama 3's form
            let token = "{\"SpecialToken\": {\"id\": \(jsonString(name)), \"type_id\": 0}}", text = "{\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}"
            s += "  \"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [\(token), \(text)], \"pair\": [\(token), \(text), "
                + token.replacingOccurrences(of: "\"type_id\": 0", with: "\"type_id\": 1") + ", {\"Sequence\": {\"id\": \"B\", \"type_id\": 1}}], "
                + "\"special_tokens\": {\(jsonString(name)): {\"id\": \(jsonString(name)), \"ids\": [\(bos)], \"tokens\": [\(jsonString(name))]}}},\n"
        } else {
            s += "  \"post_processor\": null,\n"
        }
        if sentencePiece {
            s += "  \"decoder\": {\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Replace\", \"pattern\": {\"String\": \"\u{2581}\"}, \"content\": \" \"}, "
                + "{\"type\": \"ByteFallback\"}, {\"type\": \"Fuse\"}, {\"type\": \"Strip\", \"content\": \" \", \"start\": \(spacePrefix == .none ? 0 : 1), \"stop\": 0}]},\n"
        } else {
            s += "  \"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": true, "
                + "\"use_regex\": true},\n"
        }
        // The token a byte missing from the vocabulary becomes (none: dropped), so a reload encodes alike.
        let unk = unknownByteID.flatMap { tokenString(for: $0) }.map(jsonString) ?? "null"
        s += "  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": \(unk),\n"
        s += "    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n"
        s += "    \"fuse_unk\": \(fusesUnknown),\n    \"byte_fallback\": \(sentencePiece),\n    \"ignore_merges\": \(ignoreMerges),\n"
        s += "    \"vocab\": {"
        var first = true
        for id in 0 ..< vocabSize where inModelVocab[id] {
            s += first ? "\n" : ",\n"
            first = false
            s += "      \(jsonString(tokenString(forModelID: id))): \(id)"
        }
        s += first ? "},\n" : "\n    },\n"
        s += "    \"merges\": ["
        for (k, (a, b)) in merges.enumerated() {
            s += k == 0 ? "\n" : ",\n"
            s += "      [\(jsonString(tokenString(forModelID: Int(a)))), \(jsonString(tokenString(forModelID: Int(b))))]"
        }
        s += merges.isEmpty ? "]\n" : "\n    ]\n"
        s += "  }\n}\n"
        return s
    }

    /// The vocabulary spelling of a model-vocabulary id: an added token's text as is (as Hugging Face's trainer
    /// writes special tokens into the vocabulary), else the byte-level spelling.
    private func tokenString(forModelID id: Int) -> String {
        if let t = addedTokens.first(where: { $0.id == Int32(id) }) { return t.content }
        let bytes = idBytes[Int(idOffsets[id]) ..< Int(idOffsets[id + 1])]
        return sentencePiece ? pieceSpelling(Int32(id), Array(bytes)) : ByteLevelAlphabet.encode(bytes)
    }
}

/// A JSON string literal: quotes, backslash and control characters escaped, everything else raw UTF-8
/// (as Python's `json.dumps(ensure_ascii=False)` and Rust's serde_json write it).
public func jsonString(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case "\u{08}": out += "\\b"
        case "\u{0C}": out += "\\f"
        default:
            if u.value < 0x20 {
                out += String(format: "\\u%04x", u.value)
            } else {
                out.unicodeScalars.append(u)
            }
        }
    }
    return out + "\""
}
