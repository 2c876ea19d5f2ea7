// The local Hugging Face cache: a Hub id ("HuggingFaceTB/SmolLM2-135M") names the snapshot that
// `hf download`, transformers or datasets left on this machine, found offline as they find it.
// Nothing is downloaded.

import Foundation

/// The Hugging Face Hub cache on this machine, laid out as `huggingface_hub` writes it:
/// `<folder>/models--<org>--<name>/refs/<branch or tag>` holds a commit hash, and
/// `snapshots/<commit>/` the repository's files at that commit (links into `blobs/`).
public struct HubCache: Sendable, Equatable {
    /// What a repository holds; the first part of its folder's name.
    public enum Kind: String, Sendable { case model = "models", dataset = "datasets" }

    public let folder: String

    public init(folder: String) { self.folder = folder }

    /// The cache huggingface_hub uses: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
    /// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
    public static var standard: HubCache {
        let env = ProcessInfo.processInfo.environment
        func set(_ k: String) -> String? { env[k].flatMap { $0.isEmpty ? nil : $0 } }
        if let hub = set("HF_HUB_CACHE") { return HubCache(folder: hub) }
        let home = set("HF_HOME") ?? ((set("XDG_CACHE_HOME") ?? NSHomeDirectory() + "/.cache") + "/huggingface")
        return HubCache(folder: home + "/hub")
    }

    /// A Hub id split into its repository ("org/name"), revision and the path of a file in it:
    /// "org/name", "org/name@revision" (a branch, a tag or a commit) or "org/name/path/in/repo"
    /// (a file of the repository, as `hf_hub_download` names one; "org/name/model-Q4_K_M.gguf").
    /// nil when `text` has not that form (an absolute or `./` path, one part, spaces).
    public static func parse(_ text: String) -> (repo: String, revision: String?, file: String?)? {
        let (name, revision): (Substring, String?)
        if let at = text.firstIndex(of: "@") {
            (name, revision) = (text[..<at], String(text[text.index(after: at)...]))
            guard let r = revision, !r.isEmpty, !r.contains(".."), !r.hasPrefix("/"),
                  r.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "._-/".contains($0)) }) else { return nil }
        } else {
            (name, revision) = (text[...], nil)
        }
        let parts = name.split(separator: "/", omittingEmptySubsequences: false)
        func isName(_ p: Substring) -> Bool {
            p.first.map { $0.isASCII && ($0.isLetter || $0.isNumber) } == true
                && p.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) } && !p.contains("..")
        }
        guard parts.count >= 2, isName(parts[0]), isName(parts[1]), revision == nil || parts.count == 2,
              parts.dropFirst(2).allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." }) else { return nil }
        return ("\(parts[0])/\(parts[1])", revision, parts.count > 2 ? parts.dropFirst(2).joined(separator: "/") : nil)
    }

    /// The repositories the cache holds, by kind, sorted: "org/name" (nil when there is no cache folder).
    public func repositories() -> [Kind: [String]]? {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: folder) else { return nil }
        var out: [Kind: [String]] = [:]
        for e in entries.sorted() {
            let parts = e.components(separatedBy: "--")
            guard parts.count >= 2, let kind = Kind(rawValue: parts[0]) else { continue }
            out[kind, default: []].append(parts.dropFirst().joined(separator: "/"))
        }
        return out
    }

    /// Whether `path` is read as a local path rather than a Hub id: a file or folder of that name
    /// exists, or one of its first part does ("data/train/*.jsonl" with a folder "data" here).
    public static func isLocal(_ path: String) -> Bool {
        FileManager.default.fileExists(atPath: path) || FileManager.default.fileExists(atPath: String(path.prefix { $0 != "/" }))
    }

    /// The local path of Hub id `id` (`parse`) of `kind`: its snapshot folder (`snapshot`), or the file
    /// in it. nil when `id` is no Hub id.
    /// - Throws: `HubCacheError` when the repository, the revision or the file is not in the cache,
    ///   saying how to fetch it.
    public func path(of id: String, kind: Kind) throws -> String? {
        guard let (repo, revision, file) = Self.parse(id) else { return nil }
        let snapshot = try self.snapshot(of: repo, revision: revision, kind: kind, id: id)
        guard let file else { return snapshot }
        guard FileManager.default.fileExists(atPath: snapshot + "/" + file) else {
            throw HubCacheError(id: id, message: """
                the Hugging Face cache holds \(repo) (\(snapshot)), but not its file \(file).
                HINT: `hf download \(repo) \(file)\(kind == .dataset ? " --repo-type dataset" : "")` fetches it.
                """)
        }
        return snapshot + "/" + file
    }

    /// The snapshot folder of repository `repo` ("org/name") of `kind` at `revision` (a branch or tag
    /// the cache has a ref for, or a commit), else at `main`; a repository fetched at one commit only,
    /// with no ref, serves that commit. `id` is what errors name.
    /// - Throws: `HubCacheError` when the repository or the revision is not in the cache.
    public func snapshot(of repo: String, revision: String?, kind: Kind, id: String) throws -> String {
        let fm = FileManager.default
        let root = folder + "/" + kind.rawValue + "--" + repo.replacingOccurrences(of: "/", with: "--")
        let fetch = "hf download \(repo)\(kind == .dataset ? " --repo-type dataset" : "")\(revision.map { " --revision \($0)" } ?? "")"
        guard fm.fileExists(atPath: root + "/snapshots") else {
            throw HubCacheError(id: id, message: """
                no such file or folder (nor, read as a Hub id, is the \(kind == .model ? "model" : "data set") \(repo) in the Hugging Face cache \(folder)).
                HINT: SwiftPEFT reads that cache but does not download: `\(fetch)` (pip install huggingface_hub) puts it there; or give a local path.
                """)
        }
        let snapshots = ((try? fm.contentsOfDirectory(atPath: root + "/snapshots")) ?? []).sorted()
        func ref(_ name: String) -> String? {
            (try? String(contentsOfFile: root + "/refs/" + name, encoding: .utf8)).map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
        }
        let commit: String
        if let revision {
            guard let c = ref(revision) ?? (snapshots.contains(revision) ? revision : nil) else {
                throw HubCacheError(id: id, message: """
                    the Hugging Face cache holds \(repo), but not its revision "\(revision)" (snapshots: \(snapshots.joined(separator: ", "))).
                    HINT: `\(fetch)` fetches it.
                    """)
            }
            commit = c
        } else if let c = ref("main") {
            commit = c
        } else if snapshots.count == 1 {
            commit = snapshots[0]
        } else {
            throw HubCacheError(id: id, message: """
                the Hugging Face cache holds \(snapshots.count) snapshots of \(repo) and no "main" ref to choose one; \
                give the revision: \(snapshots.map { "\(repo)@\($0)" }.joined(separator: ", "))
                """)
        }
        let snapshot = root + "/snapshots/" + commit
        guard fm.fileExists(atPath: snapshot) else {
            throw HubCacheError(id: id, message: "the Hugging Face cache's ref for \(repo) names commit \(commit), whose snapshot is not there (\(root)); fetch it again: `\(fetch)`")
        }
        return snapshot
    }
}

/// A Hub id that the local Hugging Face cache cannot serve.
public struct HubCacheError: Error, CustomStringConvertible {
    public let id: String, message: String
    public var description: String { "\(id): \(message)" }
}

/// `path` as it is when it is local (`HubCache.isLocal`) or no Hub id; else the local path of the
/// Hub model (or adapter) it names in the Hugging Face cache (`HubCache.path(of:kind:)`):
/// "HuggingFaceTB/SmolLM2-135M" is the snapshot transformers would load offline.
public func localModelPath(_ path: String, cache: HubCache = .standard) throws -> String {
    if HubCache.isLocal(path) { return path }
    return try cache.path(of: path, kind: .model) ?? path
}
