// A data set named by its Hub id ("tatsu-lab/alpaca", "openai/gsm8k:main:test") in the local Hugging
// Face cache: the files of one split, chosen as Hugging Face `datasets` chooses them for a repository
// without a loading script: the README's `configs` (data_files, data_dir), else its data_files.py
// defaults (the `data/<split>-00000-of-00001` shards, else split names in folder names, else in file
// names, else every file is "train").

import Foundation
import Formats

/// What a data set's Hub id names in the local Hugging Face cache.
enum HubData: Equatable {
    /// The files of one split, in `datasets`' order: files of records, or `.txt` files.
    case files([String])
    /// A path in the snapshot (a file, a folder or a pattern), to be read as a local path is.
    case path(String)
}

/// What `id` names in the local Hugging Face cache: "org/name", "org/name:split",
/// "org/name:config:split" (each with "@revision" after the name if wanted) the files of records of
/// that split (of the README's default config, or the one named; the "train" split when none is
/// given); "org/name/data/*.parquet" (a repository path after the name) that path in the snapshot.
/// nil when `id` is no Hub id of that form or is local (`HubCache.isLocal`).
/// - Throws: `DatasetError` naming the id: not in the cache (`HubCacheError`'s message); no such
///   config or split, or several configs and none named (the ones there are named); a `configs`
///   block that cannot be read; no file of records or `.txt` file in the split.
func hubData(_ id: String, cache: HubCache = .standard) throws -> HubData? {
    guard !HubCache.isLocal(id) else { return nil }
    func fail(_ message: String) -> DatasetError { DatasetError(file: id, line: nil, message: message) }
    var parts = id.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
    let name = parts.removeFirst()
    guard let (repo, revision, file) = HubCache.parse(name), parts.count <= 2 else { return nil }
    let snapshot: String
    do {
        if let file {
            guard parts.isEmpty else { throw fail("a split (\":\(parts.joined(separator: ":"))\") goes after a data set's name, not after a file of it") }
            return .path(try cache.snapshot(of: repo, revision: revision, kind: .dataset, id: id) + "/" + file)
        }
        snapshot = try cache.snapshot(of: repo, revision: revision, kind: .dataset, id: id)
    } catch let e as HubCacheError {
        throw fail(e.message)
    }
    guard !parts.contains("") else { throw fail("an empty name after \":\" (e.g. \(name):test, or \(name):CONFIG:test)") }
    let wanted = parts.last ?? "train"
    var base = snapshot, patterns: [(split: String, patterns: [String])]?, configName = ""
    let configs: [DataConfig]
    do { configs = try readmeConfigs(snapshot) } catch let e as DatasetError { throw fail(e.description) }
    if !configs.isEmpty {
        let names = configs.map(\.name)
        let defaults = configs.filter { configs.count == 1 || $0.name == "default" || $0.isDefault }
        let config: DataConfig
        if parts.count == 2 {
            guard let c = configs.first(where: { $0.name == parts[0] }) else {
                throw fail("its README has no config \"\(parts[0])\"; its configs: \(names.joined(separator: ", "))")
            }
            config = c
        } else {
            guard defaults.count == 1 else {
                throw fail("its README lists \(configs.count) configs (\(names.prefix(8).joined(separator: ", "))\(names.count > 8 ? ", …" : "")) and "
                    + (defaults.isEmpty ? "marks none default" : "several defaults") + "; name one: \(name):\(names[0]):\(wanted)")
            }
            config = defaults[0]
        }
        (configName, patterns) = (config.name, config.dataFiles)
        if let d = config.dataDir { base += "/" + d }
    } else if parts.count == 2 {
        throw fail("its README lists no configs, so there is no config \"\(parts[0])\"; give \(name):\(wanted)")
    }
    let files = FolderFiles(base)
    let splits = try patterns.map { try $0.map { split, globs in
        var matched: [String] = []
        for g in globs {
            let m = files.matching(g)
            guard !m.isEmpty || g.contains(where: { "*?[".contains($0) }) else {
                throw fail("the README's config \"\(configName)\" names \(g) for its \(split) split, which the snapshot (\(base)) lacks")
            }
            matched += m
        }
        return (split: split, files: matched)
    } } ?? files.defaultSplits()
    guard let chosen = splits.first(where: { $0.split == wanted })?.files else {
        throw fail(splits.isEmpty ? "the data set's snapshot (\(base)) holds no data files"
            : "the data set\(configName.isEmpty ? "" : "'s config \"\(configName)\"") has no split \"\(wanted)\"; its splits: "
                + splits.map { configName.isEmpty ? "\(name):\($0.split)" : "\(name):\(configName):\($0.split)" }.joined(separator: ", "))
    }
    // As `datasets` does, the files of the most common kind; JSON and JSON Lines are one kind, and
    // `.txt` files are its "text" kind (each read as SwiftPEFT reads a text file: one document).
    func kind(_ f: String) -> String? {
        if f.lowercased().hasSuffix(".txt") { return "text" }
        return DataRecordFormat(path: f).map { $0 == .json || $0 == .jsonLines ? "json" : "\($0)" }
    }
    var counts: [String: Int] = [:]
    for f in chosen { if let k = kind(f) { counts[k, default: 0] += 1 } }
    guard let common = counts.max(by: { ($0.value, $1.key) < ($1.value, $0.key) })?.key else {
        let names = chosen.prefix(3).map { ($0 as NSString).lastPathComponent }.joined(separator: ", ")
        throw fail("the \(wanted) split\(configName.isEmpty ? "" : " of config \"\(configName)\"") holds no file of records or text (\(names)\(chosen.count > 3 ? ", …" : "")); SwiftPEFT reads "
            + DataRecordFormat.extensions.joined(separator: ", ") + " (the text kinds also as .gz or .zst) and .txt")
    }
    return .files(chosen.filter { kind($0) == common }.map { base + "/" + $0 })
}

// MARK: local folders named by split

/// The splits of a local folder whose files or subfolders name them as `datasets` reads a folder
/// (`train.jsonl`, `valid.jsonl`, `test.jsonl`, as mlx-lm's `--data` folder; `train/`, `validation/`;
/// `data/train-00000-of-00002.parquet`): each split's files of records or text, sorted, as paths under
/// `folder`. nil when no file names a split (every file is then training data).
func localFolderSplits(_ folder: String) -> [(split: String, files: [String])]? {
    let files = FolderFiles(folder)
    let splits = files.defaultSplits()
    if splits.isEmpty || (splits.count == 1 && splits[0].split == "train" && splits[0].files == files.matching("**")) { return nil }
    let kept = splits.map { split, names in
        (split, names.filter { DataRecordFormat(path: $0) != nil || isTextFile($0) }.map { folder + "/" + $0 })
    }.filter { !$0.1.isEmpty }
    return kept.isEmpty ? nil : kept
}

/// The files `path` names as a split of a local folder (`localFolderSplits`): a folder's train split, or
/// "FOLDER:SPLIT" (validation also as valid, val or dev; test also as eval); nil when `path` is neither.
/// - Throws: `DatasetError` naming the path: no such split (the folder's are named), or "FOLDER:SPLIT"
///   for a folder whose files name no splits.
func localSplitFiles(_ path: String) throws -> [String]? {
    func isFolder(_ p: String) -> Bool {
        var isDir: ObjCBool = false
        return FileManager.default.fileExists(atPath: p, isDirectory: &isDir) && isDir.boolValue
    }
    var folder = path, wanted = "train"
    if !FileManager.default.fileExists(atPath: path), let colon = path.lastIndex(of: ":"), isFolder(String(path[..<colon])) {
        folder = String(path[..<colon])
        let name = String(path[path.index(after: colon)...]).lowercased()
        wanted = ["valid": "validation", "val": "validation", "dev": "validation", "eval": "test"][name] ?? name
        guard localFolderSplits(folder) != nil else {
            throw DatasetError(file: path, line: nil, message: "the folder \(folder) has no splits: no file or folder in it is named by one (train, validation, test)")
        }
    }
    guard isFolder(folder), let splits = localFolderSplits(folder) else { return nil }
    guard let files = splits.first(where: { $0.split == wanted })?.files else {
        throw DatasetError(file: path, line: nil, message: "the folder's files name the splits "
            + splits.map { "\($0.split) (\($0.files.map { ($0 as NSString).lastPathComponent }.joined(separator: ", ")))" }.joined(separator: ", ")
            + "; there is no \(wanted) split" + (wanted == "train" ? " to train on; give the training file itself" : ""))
    }
    return files
}

// MARK: the README's configs

/// A config of a data set's README (`configs:` in its YAML header), as `datasets` reads one.
private struct DataConfig {
    var name = "", isDefault = false, dataDir: String?
    /// Each split's file patterns, in order; nil: the default patterns in `dataDir`.
    var dataFiles: [(split: String, patterns: [String])]?
}

/// The configs of the README.md in `snapshot` (none without a README, a YAML header or `configs`).
/// Reads the YAML forms the Hub writes: a block list of configs, each a block mapping of
/// `config_name`, `default`, `data_dir` and `data_files` (a pattern, a list of patterns, or a list of
/// `{split, path}` with a pattern or a list of patterns), with plain or quoted scalars and `[a, b]` lists.
/// - Throws: `DatasetError` naming the README's line where the block has another form.
private func readmeConfigs(_ snapshot: String) throws -> [DataConfig] {
    let file = snapshot + "/README.md"
    guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { return [] }
    var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map { String($0).replacingOccurrences(of: "\r", with: "") }
    guard lines.first?.trimmingCharacters(in: .whitespaces) == "---", let end = lines.dropFirst().firstIndex(where: { $0.hasPrefix("---") }) else { return [] }
    lines = Array(lines[1..<end])
    guard let start = lines.firstIndex(where: { $0.hasPrefix("configs:") }) else { return [] }
    // The block: the lines after "configs:" up to the next key at the margin.
    var block: [(line: Int, indent: Int, text: String)] = []
    for k in (start + 1)..<lines.count {
        let l = lines[k], t = l.trimmingCharacters(in: .whitespaces)
        if t.isEmpty || t.hasPrefix("#") { continue }
        if !l.hasPrefix(" ") && !l.hasPrefix("-") { break }
        block.append((k + 2, l.prefix { $0 == " " }.count, t))
    }
    var i = 0
    func bad(_ what: String, at k: Int? = nil) -> DatasetError {
        let k = k ?? i
        return DatasetError(file: file, line: k >= 0 && k < block.count ? block[k].line : nil, message: "the README's configs: \(what) (SwiftPEFT reads the forms the Hub writes; give the files as org/name/<pattern> instead)")
    }
    func scalar(_ s: String) -> String {
        let t = s.trimmingCharacters(in: .whitespaces)
        if t.count >= 2, let q = t.first, q == "\"" || q == "'", t.last == q { return String(t.dropFirst().dropLast()) }
        return t
    }
    /// A value given on its key's line: a scalar or a `[a, b]` list.
    func inline(_ s: String) -> [String] {
        let t = s.trimmingCharacters(in: .whitespaces)
        guard t.hasPrefix("["), t.hasSuffix("]") else { return [scalar(t)] }
        return t.dropFirst().dropLast().split(separator: ",").map { scalar(String($0)) }
    }
    /// Reads the "key: value" pairs of a mapping at `indent` (its first pair `first`, after a "- "),
    /// `handle` reading each one's value and any block under it.
    func pairs(first: String, indent: Int, _ handle: (String, String) throws -> Void) throws {
        var next: String? = first
        while let t = next {
            guard let colon = t.range(of: ":") else { throw bad("expected \"key: value\", found \"\(t)\"", at: i - 1) }
            try handle(String(t[..<colon.lowerBound]).trimmingCharacters(in: .whitespaces), String(t[colon.upperBound...]).trimmingCharacters(in: .whitespaces))
            next = nil
            if i < block.count && block[i].indent == indent && !block[i].text.hasPrefix("-") {
                next = block[i].text
                i += 1
            }
        }
    }
    /// Whether line `i` is in the block under a key at `indent` (deeper, or a list at the key's indent).
    func under(_ indent: Int) -> Bool {
        i < block.count && (block[i].indent > indent || (block[i].indent == indent && block[i].text.hasPrefix("-")))
    }
    /// The patterns of a value: on the key's line, or a block list under it.
    func patterns(_ value: String, key indent: Int) throws -> [String] {
        if !value.isEmpty { return inline(value) }
        guard under(indent), block[i].text.hasPrefix("- ") else { throw bad("a key with no value") }
        let at = block[i].indent
        var out: [String] = []
        while i < block.count && block[i].indent == at && block[i].text.hasPrefix("- ") {
            out.append(scalar(String(block[i].text.dropFirst(2))))
            i += 1
        }
        return out
    }
    guard let margin = block.first?.indent, block[0].text.hasPrefix("- ") else { throw bad("expected a list of configs") }
    var configs: [DataConfig] = []
    while i < block.count {
        guard block[i].indent == margin, block[i].text.hasPrefix("- ") else { throw bad("expected \"- config_name: …\"") }
        let first = String(block[i].text.dropFirst(2)), keyIndent = margin + 2
        i += 1
        var config = DataConfig()
        try pairs(first: first, indent: keyIndent) { key, value in
            switch key {
            case "config_name": config.name = scalar(value)
            case "default": config.isDefault = scalar(value).lowercased() == "true"
            case "data_dir": config.dataDir = scalar(value)
            case "data_files":
                guard value.isEmpty, under(keyIndent), block[i].text.dropFirst(2).contains(":") else {
                    config.dataFiles = [("train", try patterns(value, key: keyIndent))]
                    return
                }
                let at = block[i].indent
                var splits: [(String, [String])] = []
                while i < block.count && block[i].indent == at && block[i].text.hasPrefix("- ") {
                    let item = String(block[i].text.dropFirst(2))
                    i += 1
                    var split: String?, paths: [String]?
                    try pairs(first: item, indent: at + 2) { k, v in
                        switch k {
                        case "split": split = scalar(v)
                        case "path": paths = try patterns(v, key: at + 2)
                        default: throw bad("a data_files entry with \"\(k)\"")
                        }
                    }
                    guard let split, let paths else { throw bad("a data_files entry without \"split\" and \"path\"") }
                    splits.append((split, paths))
                }
                config.dataFiles = splits
            default:
                // Other keys (sep, features, …) tell `datasets` how to read the files, not which.
                while value.isEmpty && under(keyIndent) { i += 1 }
            }
        }
        guard !config.name.isEmpty else { throw bad("a config without config_name") }
        configs.append(config)
    }
    return configs
}

// MARK: files and patterns

/// The files of a folder (relative paths, sorted) and the glob patterns of `datasets` over them:
/// `*` within a name, `**` across folders, `?`, `[…]`; hidden files and folders, and folders starting
/// with "__", only where the pattern names them; the repository's README.md, config.json and
/// dataset_info files never.
private struct FolderFiles {
    let all: [String]

    init(_ folder: String) {
        var all: [String] = []
        let walker = FileManager.default.enumerator(atPath: folder)
        while let f = walker?.nextObject() as? String {
            var isFolder: ObjCBool = false
            if FileManager.default.fileExists(atPath: folder + "/" + f, isDirectory: &isFolder), !isFolder.boolValue { all.append(f) }
        }
        self.all = all.sorted()
    }

    /// The files `pattern` matches, sorted.
    func matching(_ pattern: String) -> [String] {
        guard let re = try? NSRegularExpression(pattern: "^" + Self.regex(pattern) + "$") else { return [] }
        let ignored: Set<String> = ["README.md", "config.json", "dataset_info.json", "dataset_infos.json", "dummy_data.zip", "dataset_dict.json"]
        func count(_ parts: [Substring], _ prefix: String) -> Int { parts.filter { $0.hasPrefix(prefix) && $0.contains(where: { $0 != "." }) }.count }
        let patternParts = pattern.split(separator: "/")
        return all.filter { f in
            let parts = f.split(separator: "/")
            guard !ignored.contains(String(parts.last!)) || String(parts.last!) == patternParts.last.map(String.init),
                  count(parts, ".") == count(patternParts, "."), count(Array(parts.dropLast()), "__") == count(Array(patternParts.dropLast()), "__") else { return false }
            return re.firstMatch(in: f, range: NSRange(f.startIndex..., in: f)) != nil
        }
    }

    /// A glob pattern as a regular expression over relative paths.
    static func regex(_ pattern: String) -> String {
        var out = "", i = pattern.startIndex
        while i < pattern.endIndex {
            let c = pattern[i], next = pattern.index(after: i)
            if c == "*" && next < pattern.endIndex && pattern[next] == "*" {
                let after = pattern.index(after: next)
                if after < pattern.endIndex && pattern[after] == "/" {
                    out += "(?:.*/)?"  // "**/": any folders, or none
                    i = pattern.index(after: after)
                } else {
                    out += ".*"
                    i = after
                }
                continue
            }
            if c == "[", let close = pattern[next...].firstIndex(of: "]") {
                var body = String(pattern[next..<close])
                if body.hasPrefix("!") { body = "^" + body.dropFirst() }
                out += "[" + body.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "[", with: "\\[") + "]"
                i = pattern.index(after: close)
                continue
            }
            out += c == "*" ? "[^/]*" : c == "?" ? "[^/]" : NSRegularExpression.escapedPattern(for: String(c))
            i = next
        }
        return out
    }

    /// Each split's files by `datasets`' default patterns (data_files.py), the first kind that matches
    /// any file: the sharded layout `data/<split>-00000-of-00003…` (its splits train, validation, test
    /// first, then the others by name); split words in folder names; in file names; else every file
    /// is "train". A split's files are its patterns' matches, pattern by pattern.
    func defaultSplits() -> [(split: String, files: [String])] {
        let shard = "data/{split}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9]*.*"
        let sharded = matching(shard.replacingOccurrences(of: "{split}", with: "*"))
        let known = ["train", "validation", "test"]
        if !sharded.isEmpty {
            var bySplit: [String: [String]] = [:]
            for f in sharded {
                let base = (f as NSString).lastPathComponent
                let split = base.range(of: "-[0-9]{5}-of-[0-9]{5}", options: [.regularExpression, .backwards]).map { String(base[..<$0.lowerBound]) } ?? base
                bySplit[split, default: []].append(f)
            }
            return (known.filter { bySplit[$0] != nil } + bySplit.keys.filter { !known.contains($0) }.sorted()).map { ($0, bySplit[$0]!) }
        }
        let words = [("train", ["train", "training"]), ("validation", ["validation", "valid", "dev", "val"]), ("test", ["test", "testing", "eval", "evaluation"])]
        let sep = "[-._ 0-9]"
        let inFolders = ["**/{w}/**", "**/{w}\(sep)*/**", "**/*\(sep){w}/**", "**/*\(sep){w}\(sep)*/**"]
        let inNames = ["**/{w}\(sep)*", "**/*\(sep){w}\(sep)*"]
        for patterns in [inFolders, inNames] {
            let found: [(String, [String])] = words.compactMap { split, ws in
                var files: [String] = []
                for w in ws { for p in patterns { for f in matching(p.replacingOccurrences(of: "{w}", with: w)) where !files.contains(f) { files.append(f) } } }
                return files.isEmpty ? nil : (split, files)
            }
            if !found.isEmpty { return found }
        }
        let every = matching("**")
        return every.isEmpty ? [] : [("train", every)]
    }
}
