// tokenizer-bench: trains a byte-level BPE tokenizer on a local text (or loads a tokenizer.json), then times
// encoding (≥ 2 MB) and decoding and prints MB/s, tokens/s, training time and compression (bytes per token).
// Run in release:
//   swift run -c release tokenizer-bench [PATH …] [--vocab N] [--digits | --pre KIND | --tokenizer FILE] [--repeat R] [--save DIR]
import Foundation
import Tokenizers

/// Reads PATH arguments (files, or folders whose regular files are read, sorted) into one text.
func readCorpus(_ paths: [String]) -> (text: String, files: Int) {
    var parts: [String] = []
    let fm = FileManager.default
    for path in paths {
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: path, isDirectory: &isDir) else {
            FileHandle.standardError.write(Data("tokenizer-bench: \(path) does not exist; skipped\n".utf8))
            continue
        }
        let files = isDir.boolValue
            ? ((try? fm.contentsOfDirectory(atPath: path)) ?? []).sorted().map { path + "/" + $0 }
            : [path]
        for f in files {
            guard let data = fm.contents(atPath: f) else { continue }
            parts.append(String(decoding: data, as: UTF8.self))
        }
    }
    return (parts.joined(separator: "\n"), parts.count)
}

/// All `*.py` files of the Python 3.11 standard library (4.7 MB on Debian), else the license texts.
func defaultPaths() -> [String] {
    let fm = FileManager.default
    for dir in ["/usr/lib/python3.11", "/usr/lib/python3"] {
        if let names = try? fm.contentsOfDirectory(atPath: dir) {
            let py = names.filter { $0.hasSuffix(".py") }.sorted().map { dir + "/" + $0 }
            if !py.isEmpty { return py }
        }
    }
    return ["/usr/share/common-licenses"]
}

var args = Array(CommandLine.arguments.dropFirst())
var vocabSize = 8192
var kind = BPEPreTokenizer.gpt2
var repeats = 3
var paths: [String] = []
var saveDir: String?
var tokenizerFile: String?
while !args.isEmpty {
    let a = args.removeFirst()
    switch a {
    case "--vocab": vocabSize = Int(args.isEmpty ? "" : args.removeFirst()) ?? vocabSize
    case "--digits": kind = .digitsSplit
    case "--pre":
        let name = args.isEmpty ? "" : args.removeFirst()
        guard let k = BPEPreTokenizer(rawValue: name) else {
            print("--pre \(name): expected one of \(BPEPreTokenizer.allCases.map(\.rawValue).joined(separator: ", "))")
            exit(2)
        }
        kind = k
    case "--repeat": repeats = max(1, Int(args.isEmpty ? "" : args.removeFirst()) ?? repeats)
    case "--save": saveDir = args.isEmpty ? nil : args.removeFirst()
    case "--tokenizer": tokenizerFile = args.isEmpty ? nil : args.removeFirst()
    case "-h", "--help":
        print("usage: tokenizer-bench [PATH …] [--vocab N (8192)] [--digits | --pre gpt2|digitsSplit|llama3|qwen2 | --tokenizer FILE] [--repeat R (3)] [--save DIR]")
        print("--tokenizer FILE: time a Hugging Face tokenizer.json (or a folder with one) instead of training one")
        print("PATH: files or folders (default: /usr/lib/python3.11/*.py, else /usr/share/common-licenses)")
        print("--save DIR: write DIR/tokenizer.json, DIR/corpus.txt and DIR/ids.bin (int32 LE ids of corpus.txt),")
        print("            to compare against another implementation")
        exit(0)
    default: paths.append(a)
    }
}
if paths.isEmpty { paths = defaultPaths() }

let (corpus, fileCount) = readCorpus(paths)
let corpusBytes = corpus.utf8.count
guard corpusBytes > 0 else {
    print("tokenizer-bench: no text read from \(paths.prefix(3))")
    exit(1)
}
let mb = 1_000_000.0
print(String(format: "corpus: %d files, %.2f MB (%@)", fileCount, Double(corpusBytes) / mb,
             paths.count == 1 ? paths[0] : "\(paths.count) paths, e.g. \(paths[0])"))

func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

// Train, or load.
var t0 = now()
let tokenizer = try tokenizerFile.map { try BPETokenizer.load(from: URL(fileURLWithPath: $0)) }
    ?? BPETokenizer.train(corpus: corpus, vocabSize: vocabSize, specialTokens: ["<|endoftext|>"], preTokenizer: kind)
let trainSeconds = now() - t0
print(String(format: "%@: vocab %d (%d merges, %@) in %.2f s", tokenizerFile == nil ? "train" : "load",
             tokenizer.vocabSize, tokenizer.mergeCount,
             tokenizer.sentencePiece ? "SentencePiece, space prefix \(tokenizer.spacePrefix.rawValue)" : "pre-tokenizer \(tokenizer.preTokenizer.rawValue)",
             trainSeconds))

// Encode at least 2 MB: the corpus, repeated if it is shorter.
var text = corpus
while text.utf8.count < 2_000_000 { text += "\n" + corpus }
let textBytes = Double(text.utf8.count)
var ids: [Int32] = []
tokenizer.clearCache()
t0 = now()
ids = tokenizer.encode(text)
let coldSeconds = now() - t0
var best = Double.infinity
for _ in 0 ..< repeats {
    t0 = now()
    ids = tokenizer.encode(text)
    best = min(best, now() - t0)
}
print(String(format: "encode: %.2f MB → %d tokens; cold cache %.3f s (%.2f MB/s); warm best of %d %.3f s "
             + "(%.2f MB/s, %.2f M tokens/s)",
             textBytes / mb, ids.count, coldSeconds, textBytes / mb / coldSeconds, repeats, best,
             textBytes / mb / best, Double(ids.count) / 1e6 / best))
print(String(format: "compression: %.3f bytes/token", textBytes / Double(ids.count)))

// Decode and check the round trip.
t0 = now()
let back = tokenizer.decode(ids)
let decodeSeconds = now() - t0
let roundTrip = back == text
print(String(format: "decode: %.3f s (%.2f MB/s); round trip %@", decodeSeconds, textBytes / mb / decodeSeconds,
             roundTrip ? "exact" : "MISMATCH"))

if let saveDir {
    let dir = URL(fileURLWithPath: saveDir)
    try tokenizer.saveFolder(dir)
    try Data(corpus.utf8).write(to: dir.appendingPathComponent("corpus.txt"))
    let corpusIDs = tokenizer.encode(corpus)
    try corpusIDs.withUnsafeBytes { Data($0) }.write(to: dir.appendingPathComponent("ids.bin"))
    print("saved: \(dir.path)/{tokenizer.json, tokenizer_config.json, corpus.txt, ids.bin (\(corpusIDs.count) ids)}")
}

let ok = min(textBytes / mb / coldSeconds, textBytes / mb / best) >= 1.0 && roundTrip
print(ok ? "PASS: encoding ≥ 1 MB/s and exact round trip" : "FAIL: encoding < 1 MB/s or round trip broken")
exit(ok ? 0 : 1)
