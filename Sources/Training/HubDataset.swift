// A data set named by its Hub id ("tatsu-lab/alpaca", "openai/gsm8k:test") in the local Hugging Face
// cache: the files of one split, chosen as Hugging Face `datasets` chooses them for a repository
// without a loading script (its data_files.py: the `data/<split>-00000-of-00001` shards, else split
// names in folder names, else in file names, else every file is "train").

import Foundation
import Formats

/// The split names `datasets` knows by keyword, in its order, with the words that name each.
private let splitKeywords: [(split: String, words: [String])] = [
    ("train", ["train", "training"]), ("validation", ["validation", "valid", "dev", "val"]), ("test", ["test", "testing", "eval", "evaluation"]),
]
/// What may stand between a split's word and the rest of a name ("train-00000", "my_test.csv").
private let separators = "[-._ 0-9]"

/// What a data set's Hub id names in the local Hugging Face cache.
enum HubData: Equatable {
    /// The files of records of one split, in `datasets`' order.
    case files([String])
    /// A path in the snapshot (a file, a folder or a pattern), to be read as a local path is.
    case path(String)
}

/// What `id` names in the local Hugging Face cache: "org/name", "org/name:split" or
/// "org/name@revision:split" the files of records of that split (the "train" split when none is
/// given); "org/name/data/*.parquet" (a repository path after the name) that path in the snapshot.
/// nil when `id` is no Hub id of that form or a local path of that name exists.
/// - Throws: `DatasetError` naming the id: not in the cache (`HubCacheError`'s message); no such
///   split (the ones there are named); a README that lists several configs (give their files); no
///   file of records in the split.
func hubData(_ id: String, cache: HubCache = .standard) throws -> HubData? {
    guard !FileManager.default.fileExists(atPath: id) else { return nil }
    var name = id, split: String?
    if let colon = id.lastIndex(of: ":"), !id[colon...].contains("/") {
        (name, split) = (String(id[..<colon]), String(id[id.index(after: colon)...]))
    }
    guard let (repo, revision, file) = HubCache.parse(name) else { return nil }
    let snapshot: String
    do {
        if let file {
            guard split == nil else { throw DatasetError(file: id, line: nil, message: "a split (\":\(split!)\") goes after a data set's name, not after a file of it") }
            return .path(try cache.snapshot(of: repo, revision: revision, kind: .dataset, id: id) + "/" + file)
        }
        snapshot = try cache.snapshot(of: repo, revision: revision, kind: .dataset, id: id)
    } catch let e as HubCacheError {
        throw DatasetError(file: id, line: nil, message: e.message)
    }
    let wanted = split ?? "train"
    guard !wanted.isEmpty else { throw DatasetError(file: id, line: nil, message: "no split after \":\" (e.g. \(name):test)") }
    if let configs = readmeConfigs(snapshot), configs.count > 1 {
        throw DatasetError(file: id, line: nil, message: """
            its README lists \(configs.count) configs (\(configs.prefix(6).joined(separator: ", "))\(configs.count > 6 ? ", …" : "")), \
            whose files SwiftPEFT does not choose; give the files of one: \(repo)/<folder or pattern> (the snapshot is \(snapshot))
            """)
    }
    let splits = splitFiles(snapshot)
    guard let files = splits.first(where: { $0.split == wanted })?.files else {
        throw DatasetError(file: id, line: nil, message: splits.isEmpty
            ? "the data set's snapshot (\(snapshot)) holds no data files"
            : "the data set has no split \"\(wanted)\"; its splits: \(splits.map { "\(name):\($0.split)" }.joined(separator: ", "))")
    }
    // As `datasets` does, the files of the most common kind; JSON and JSON Lines are one kind.
    func kind(_ f: String) -> String? {
        DataRecordFormat(path: f).map { $0 == .json || $0 == .jsonLines ? "json" : "\($0)" }
    }
    var counts: [String: Int] = [:]
    for f in files { if let k = kind(f) { counts[k, default: 0] += 1 } }
    guard let common = counts.max(by: { ($0.value, $1.key) < ($1.value, $0.key) })?.key else {
        let names = files.prefix(3).map { ($0 as NSString).lastPathComponent }.joined(separator: ", ")
        throw DatasetError(file: id, line: nil, message: "its \(wanted) split holds no file of records (\(names)\(files.count > 3 ? ", …" : "")); SwiftPEFT reads "
            + DataRecordFormat.extensions.joined(separator: ", ") + " (decompress .gz or .zst files first)")
    }
    return .files(files.filter { kind($0) == common }.map { snapshot + "/" + $0 })
}

/// The config names a data set's README.md lists in its YAML header (`configs: - config_name: …`), or
/// nil when it lists none.
private func readmeConfigs(_ snapshot: String) -> [String]? {
    guard let text = try? String(contentsOfFile: snapshot + "/README.md", encoding: .utf8), text.hasPrefix("---") else { return nil }
    let header = text.dropFirst(3).components(separatedBy: "\n---")[0]
    guard header.split(separator: "\n").contains(where: { $0.hasPrefix("configs:") }) else { return nil }
    return header.split(separator: "\n").compactMap { line in
        let t = line.trimmingCharacters(in: .whitespaces)
        guard let r = t.range(of: "config_name:") else { return nil }
        return t[r.upperBound...].trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "\"'"))
    }
}

/// Each split's files (relative to `folder`, sorted), in `datasets`' order: the sharded layout
/// `data/<split>-00000-of-00003…`, else split words in folder names, else in file names, else every
/// file is "train". Hidden files and folders, folders starting with "__", and the repository's
/// README.md, config.json and dataset_info files are no data.
private func splitFiles(_ folder: String) -> [(split: String, files: [String])] {
    let ignored: Set<String> = ["README.md", "config.json", "dataset_info.json", "dataset_infos.json", "dummy_data.zip", "dataset_dict.json"]
    var all: [String] = []
    let walker = FileManager.default.enumerator(atPath: folder)
    while let f = walker?.nextObject() as? String {
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folder + "/" + f, isDirectory: &isFolder), !isFolder.boolValue else { continue }
        let parts = f.split(separator: "/")
        guard !ignored.contains(String(parts.last!)), !parts.contains(where: { $0.hasPrefix(".") }),
              !parts.dropLast().contains(where: { $0.hasPrefix("__") }) else { continue }
        all.append(f)
    }
    all.sort()
    func matching(_ pattern: String) -> [String] {
        guard let re = try? NSRegularExpression(pattern: "^" + pattern + "$") else { return [] }
        return all.filter { re.firstMatch(in: $0, range: NSRange($0.startIndex..., in: $0)) != nil }
    }
    // data/{split}-00000-of-00001*.*: the split is the name before the shard numbers.
    let sharded = matching("data/[^/]*-[0-9]{5}-of-[0-9]{5}[^/]*\\.[^/]*")
    if !sharded.isEmpty {
        var bySplit: [String: [String]] = [:]
        for f in sharded {
            let base = (f as NSString).lastPathComponent
            let split = base.range(of: "-[0-9]{5}-of-[0-9]{5}", options: [.regularExpression, .backwards]).map { String(base[..<$0.lowerBound]) } ?? base
            bySplit[split, default: []].append(f)
        }
        let known = splitKeywords.map(\.split)
        return (known.filter { bySplit[$0] != nil } + bySplit.keys.filter { !known.contains($0) }.sorted()).map { ($0, bySplit[$0]!) }
    }
    let word = "[^/]*"
    let inFolders = { (w: String) in ["(?:.*/)?\(w)/.*", "(?:.*/)?\(w)\(separators)\(word)/.*", "(?:.*/)?\(word)\(separators)\(w)/.*",
                                      "(?:.*/)?\(word)\(separators)\(w)\(separators)\(word)/.*"] }
    let inNames = { (w: String) in ["(?:.*/)?\(w)\(separators)\(word)", "(?:.*/)?\(word)\(separators)\(w)\(separators)\(word)"] }
    for patterns in [inFolders, inNames] {
        // A split takes the files of all its words' patterns, pattern by pattern, each file once.
        let found: [(String, [String])] = splitKeywords.compactMap { split, words in
            var files: [String] = []
            for w in words { for p in patterns(w) { for f in matching(p) where !files.contains(f) { files.append(f) } } }
            return files.isEmpty ? nil : (split, files)
        }
        if !found.isEmpty { return found }
    }
    return all.isEmpty ? [] : [("train", all)]
}
