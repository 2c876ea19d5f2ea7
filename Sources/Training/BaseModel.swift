// The default small base model and what building one takes: reading a text corpus, training a
// byte-level BPE tokenizer on it, pretraining from scratch, and saving model + tokenizer.

import Foundation
import TensorCore
import NN
import Models
import Tokenizers
import PEFT
import Containers
import Formats

/// A text corpus that could not be read: names the path.
public struct CorpusError: Error, CustomStringConvertible {
    public let path: String
    public let message: String
    public var description: String { "\(path): \(message)" }
}

/// Reads a text file, or every `.txt`, `.md` and `.rst` file under a folder (sorted by path). A
/// folder whose files name splits as `datasets` reads them (`ptb.train.txt`, `valid.txt`, `test/`;
/// `localSplitFiles`) gives its train split's text files, and "FOLDER:SPLIT" another split's.
/// - Throws: `CorpusError` naming a file that is missing, unreadable, not UTF-8, or holds no text
///   (empty or only whitespace), or a split with no text file.
public func readTextCorpus(_ path: String) throws -> [String] {
    var isDir: ObjCBool = false
    let split: [String]?
    do { split = try localSplitFiles(path) } catch let e as DatasetError { throw CorpusError(path: path, message: e.message) }
    guard split != nil || FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
        throw CorpusError(path: path, message: "no such file or folder")
    }
    var files: [String] = []
    if let split {
        files = split.filter(isTextFile).sorted()
        guard !files.isEmpty else {
            throw CorpusError(path: path, message: "the split's files (\(split.map { ($0 as NSString).lastPathComponent }.joined(separator: ", "))) hold no .txt, .md or .rst file")
        }
        isDir = true
    } else if isDir.boolValue {
        let e = FileManager.default.enumerator(atPath: path)
        while let f = e?.nextObject() as? String {
            if isTextFile(f) { files.append(path + "/" + f) }
        }
        files.sort()
        guard !files.isEmpty else { throw CorpusError(path: path, message: "the folder holds no .txt, .md or .rst files") }
    } else {
        files = [path]
    }
    return try files.map { f in
        guard let data = FileManager.default.contents(atPath: f) else { throw CorpusError(path: f, message: "cannot read the file") }
        guard let s = String(data: data, encoding: .utf8) else { throw CorpusError(path: f, message: "the file is not valid UTF-8") }
        // An empty document would train only BOS → EOS (JSONL refuses an empty "text" the same way).
        guard s.contains(where: { !$0.isWhitespace }) else {
            throw CorpusError(path: f, message: "holds no text (the file is empty or only whitespace)"
                + (isDir.boolValue ? "; add text or take it out of \(path)" : ""))
        }
        return s
    }
}

/// A pretraining corpus (`readTextCorpus`): a folder named by splits gives its train split to train
/// on and its validation split, if any, to validate on (its test split is not read); anything else
/// is all training text (`validation` nil, the caller holds some out). `fromSplits` says which.
public func readPretrainCorpus(_ path: String) throws -> (train: [String], validation: [String]?, fromSplits: Bool) {
    let train = try readTextCorpus(path)
    let folder = (try? localSplitFiles(path)) != nil && FileManager.default.fileExists(atPath: path)
    guard folder, (try? localSplitFiles(path + ":validation")) != nil else { return (train, nil, folder) }
    return (train, try readTextCorpus(path + ":validation"), true)
}

/// Whether `path` names a text file that `readTextCorpus` reads in a folder (`.txt`, `.md`, `.rst`).
func isTextFile(_ path: String) -> Bool {
    [".txt", ".md", ".rst"].contains { path.lowercased().hasSuffix($0) }
}

/// Sizes of the default base model (LLaMA family: RoPE, RMSNorm, SwiGLU, grouped-query attention).
public struct BaseModelSize: Sendable {
    public var hidden = 256, layers = 4, heads = 4, kvHeads = 2, intermediate = 688, maxPositions = 512
    public init() {}

    /// The config for a tokenizer of `vocabSize` (tied embeddings keep the model small).
    public func config(vocabSize: Int) -> ModelConfig {
        .llama(vocabSize: vocabSize, hiddenSize: hidden, numLayers: layers, numHeads: heads, numKVHeads: kvHeads,
               intermediateSize: intermediate, ropeTheta: 10000, tieWordEmbeddings: true, maxPositions: maxPositions)
    }
}

/// The end-of-text token the default tokenizer carries (document separator, BOS/EOS).
public let endOfText = "<|endoftext|>"

/// Trains a byte-level BPE tokenizer of `vocabSize` on `documents` (digits split one by one). Its
/// special tokens are SmolLM2's: `<|endoftext|>`, then ChatML's `<|im_start|>` and `<|im_end|>`, so
/// a base pretrained here can be tuned on chat data and served on `/v1/chat/completions`.
public func trainBaseTokenizer(_ documents: [String], vocabSize: Int) throws -> BPETokenizer {
    try BPETokenizer.train(corpus: documents, vocabSize: vocabSize, specialTokens: [endOfText, chatMLStart, chatMLEnd],
                           preTokenizer: .digitsSplit,
                           roles: SpecialTokenRoles(bos: endOfText, eos: endOfText, pad: endOfText, unk: nil))
}

/// Encodes documents into one token stream, each document followed by the end-of-text token.
public func tokenStream(_ documents: [String], tokenizer: Tokenizer) -> [Int32] {
    var out: [Int32] = []
    for d in documents {
        out += tokenizer.encode(d)
        if let eos = tokenizer.eosTokenID { out.append(eos) }
    }
    return out
}
