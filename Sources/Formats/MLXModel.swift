// mlx-lm model folders, as `mlx_lm.convert` writes them and the mlx-community models on the Hub
// are: a Hugging Face folder (config.json, model.safetensors or shards, tokenizer.json) whose
// config.json has a "quantization" entry {group_size, bits, mode} (mlx-lm also copies it to
// "quantization_config"), with per-layer entries keyed by module path where a layer differs
// (`--quant-predicate mixed_3_6`). A quantized layer stores `weight` as packed U32 words (rows,
// columns · bits / 32) beside `scales` and `biases` (rows, columns / group_size) in the model's
// float type; mlx's "affine" mode packs each row's values as one little-endian bit stream, lowest
// bits first, and a value q of group g decodes to q · scales[g] + biases[g]. mlx-lm quantizes a
// layer only where `scales` stands beside its weight (as its loader decides), so unquantized layers
// (a last dimension the group size does not divide, a predicate's choice) are plain floats.
// mlx-lm's GPT-2 keeps its own layout: keys start with "model." for "transformer." and the Conv1D
// matrices are stored transposed, (out, in), as mlx's Linear takes them.
// The weights are dequantized to Float32 on load: a model read here trains, merges and saves as any.

import Foundation
import TensorCore
import Models
import Containers

/// How a layer of an mlx-lm model folder is quantized (mlx's "affine" mode, the only one read).
public struct MLXQuantization: Hashable, Sendable, CustomStringConvertible {
    /// Values that share one scale and bias, along a row.
    public let groupSize: Int
    /// Bits per value: 1, 2, 3, 4, 5, 6 or 8.
    public let bits: Int
    public static let bitWidths = [1, 2, 3, 4, 5, 6, 8]
    /// mlx's defaults for the affine mode (`nn.quantize` with None), used where config.json leaves them out.
    public static let defaultGroupSize = 64, defaultBits = 4
    public var description: String { "\(bits)-bit, group size \(groupSize)" }
}

/// Decodes rows of mlx affine-quantized values (`mx.dequantize` with mode "affine"): row r's values
/// are the bit stream at `packed + r · rowBytes`, `bits` per value, lowest bits first; value j
/// decodes to q · scales[r, j / groupSize] + biases[r, j / groupSize], written at `out` (rows, columns).
/// `scales` and `biases` are (rows, columns / groupSize); `rowBytes` holds `columns · bits / 8`.
public func mlxDequantize(_ packed: UnsafeRawPointer, rowBytes: Int, scales: UnsafePointer<Float>, biases: UnsafePointer<Float>,
                          rows: Int, columns: Int, groupSize: Int, bits: Int, into out: UnsafeMutablePointer<Float>) {
    precondition(groupSize > 0 && columns % groupSize == 0 && (1...8).contains(bits) && rowBytes * 8 >= columns * bits,
                 "[mlxDequantize] \(rows)×\(columns) at \(bits) bits, group size \(groupSize), \(rowBytes) bytes per row")
    let groups = columns / groupSize
    if [2, 4, 8].contains(bits) && groupSize * bits % 8 == 0 {  // whole bytes per group: each byte's values at once
        let perByte = 8 / bits, groupBytes = groupSize * bits / 8
        for r in 0..<rows {
            let src = (packed + r * rowBytes).assumingMemoryBound(to: UInt8.self)
            for g in 0..<groups {
                let s = scales[r * groups + g], b = biases[r * groups + g]
                let q = src + g * groupBytes, dst = out + r * columns + g * groupSize
                switch bits {
                case 8:
                    for j in 0..<groupSize { dst[j] = Float(q[j]) * s + b }
                case 4:
                    for k in 0..<groupBytes {
                        let x = q[k]
                        dst[2 &* k] = Float(x & 0xF) * s + b
                        dst[2 &* k &+ 1] = Float(x >> 4) * s + b
                    }
                default:
                    for k in 0..<groupBytes {
                        let x = q[k]
                        for i in 0..<perByte { dst[perByte &* k &+ i] = Float((x >> UInt8(2 &* i)) & 3) * s + b }
                    }
                }
            }
        }
        return
    }
    let mask = (UInt64(1) << UInt64(bits)) - 1
    for r in 0..<rows {
        let src = packed + r * rowBytes
        let row = out + r * columns
        var acc: UInt64 = 0, have = 0, byte = 0
        for g in 0..<groups {
            let s = scales[r * groups + g], b = biases[r * groups + g]
            let dst = row + g * groupSize
            for j in 0..<groupSize {
                while have < bits {  // at most one byte: bits ≤ 8
                    acc |= UInt64(src.load(fromByteOffset: byte, as: UInt8.self)) << UInt64(have)
                    byte += 1
                    have += 8
                }
                dst[j] = Float(acc & mask) * s + b
                acc >>= UInt64(bits)
                have -= bits
            }
        }
    }
}

/// Reads an mlx-lm model folder's weights as Hugging Face tensors.
public enum MLXModel {
    /// mlx-lm's GPT-2 keeps these matrices as (out, in); transformers' Conv1D as (in, out).
    static let gpt2TransposedSuffixes = [".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight"]

    /// The folder's tensors under Hugging Face names and shapes, each quantized layer's `weight`
    /// dequantized to Float32 (its `scales` and `biases` consumed), mlx-lm's GPT-2 layout undone.
    /// A folder that is not mlx-lm's comes back as it is. `quantized` counts the dequantized matrices;
    /// `packed` makes each quantized matrix (not a transposed GPT-2 one) as packed words that products
    /// decode (`Tensor.keepPackedOnly`), for `loadHFModel(keepQuantized:)`.
    /// - Throws: `HFModelError` naming the tensor (or config.json) when a quantized layer's config,
    ///   dtypes or shapes disagree, or when packed words stand without their scales.
    static func reader(_ files: [String: SafetensorsFile], config json: [String: Any], family: ModelConfig.Family,
                       configPath: String) throws -> (reader: TensorReader, quantized: [MLXQuantization: Int],
                                                     packed: [String: () throws -> PackedWeights]) {
        let quantization = json["quantization"].flatMap { $0 is NSNull ? nil : $0 }
        let gpt2Layout = family == .gpt2 && files.keys.contains { $0.hasPrefix("model.") }
        func fail(_ file: String, _ tensor: String?, _ m: String) -> HFModelError {
            HFModelError(path: file, message: (tensor.map { "tensor '\($0)': " } ?? "") + m)
        }
        func layerSettings(_ layer: String, tensor: String, file: String) throws -> MLXQuantization {
            guard let top = quantization as? [String: Any] else {
                throw fail(file, tensor, "has \(layer).scales beside it (an mlx-lm quantized layer) but \(configPath) has \(quantization == nil ? "no \"quantization\" entry" : "a \"quantization\" that is not a JSON object")")
            }
            let own = top[layer] as? [String: Any]
            let entry = own ?? top
            let place = own == nil ? "\"quantization\"" : "\"quantization\".\"\(layer)\""
            let mode = entry["mode"] as? String ?? "affine"
            guard mode == "affine" else {
                throw fail(configPath, nil, "\(place) has mode \"\(mode)\"; only mlx's \"affine\" quantization is read (convert the model with `mlx_lm.convert -q --q-mode affine`, or dequantize it with `mlx_lm.convert --dequantize`)")
            }
            // null (or absent) is mlx's default for the mode, as `nn.quantize` takes None: `mlx_lm.convert
            // --quant-predicate` without --q-group-size writes "group_size": null in every layer's entry.
            func number(_ k: String, _ def: Int) -> Int? {
                guard let v = entry[k], !(v is NSNull) else { return def }
                return (v as? NSNumber).flatMap { Int(exactly: $0.doubleValue) }
            }
            guard let g = number("group_size", MLXQuantization.defaultGroupSize), g > 0, g <= 1 << 20,
                  let b = number("bits", MLXQuantization.defaultBits), MLXQuantization.bitWidths.contains(b) else {
                throw fail(configPath, nil, "\(place) is \(compactDescription(entry)); expected a positive integer \"group_size\" and \"bits\" of \(MLXQuantization.bitWidths.map(String.init).joined(separator: ", "))")
            }
            return MLXQuantization(groupSize: g, bits: b)
        }

        var shapes: [String: [Int]] = [:]
        var fills: [String: (UnsafeMutablePointer<Float>) throws -> Void] = [:]
        var quantized: [MLXQuantization: Int] = [:]
        var origin: [String: String] = [:]  // Hugging Face name → the file's
        var packed: [String: () throws -> PackedWeights] = [:]
        for (name, file) in files.sorted(by: { $0.key < $1.key }) {
            let entry = file.entries[name]!
            let layer = name.hasSuffix(".weight") ? String(name.dropLast(".weight".count)) : nil
            if name.hasSuffix(".scales") || name.hasSuffix(".biases") {
                let owner = String(name.dropLast(".scales".count)) + ".weight"
                if files[owner] != nil && files[String(name.dropLast(".scales".count)) + ".scales"] != nil { continue }  // read with its weight
            }
            let hfName = gpt2Layout && name.hasPrefix("model.") ? "transformer." + name.dropFirst("model.".count) : name
            if let other = origin.updateValue(name, forKey: hfName) {
                throw fail(file.path, name, "is '\(other)' again, in the other layout (transformers' or mlx-lm's); expected one layout in a folder")
            }
            let transposed = gpt2Layout && entry.shape.count == 2 && Self.gpt2TransposedSuffixes.contains { name.hasSuffix($0) }
            var shape = entry.shape
            let fill: (UnsafeMutablePointer<Float>) throws -> Void
            if let layer, let scalesFile = files[layer + ".scales"] {
                let q = try layerSettings(layer, tensor: name, file: file.path)
                guard let biasesFile = files[layer + ".biases"] else {
                    throw fail(file.path, name, "has \(layer).scales but no \(layer).biases beside it (mlx's affine quantization stores both)")
                }
                let scales = scalesFile.entries[layer + ".scales"]!, biases = biasesFile.entries[layer + ".biases"]!
                guard entry.dtype == .U32, shape.count == 2 else {
                    throw fail(file.path, name, "is \(entry.dtype.rawValue) \(shape) beside \(layer).scales; an mlx-lm quantized weight is a matrix of packed U32 words")
                }
                let (rows, words) = (shape[0], shape[1])
                guard rows > 0, words > 0 else { throw fail(file.path, name, "is \(shape): a matrix with no values") }
                guard words * 32 % q.bits == 0 else {
                    throw fail(file.path, name, "\(words) words per row do not hold whole \(q.bits)-bit values (\(q), from \(configPath))")
                }
                let columns = words * 32 / q.bits
                let groups = [rows, columns / q.groupSize]
                for t in [scales, biases] {
                    guard [.F32, .F16, .BF16].contains(t.dtype), t.shape == groups, columns % q.groupSize == 0 else {
                        throw fail(t.name == scales.name ? scalesFile.path : biasesFile.path, t.name, """
                            is \(t.dtype.rawValue) \(t.shape); \(name) (\(rows) × \(words) words) at \(q) (from \(configPath)) holds \(columns) values per row, \
                            so expected float \(groups)\(columns % q.groupSize == 0 ? "" : " (and \(columns) a multiple of the group size)")
                            """)
                    }
                }
                quantized[q, default: 0] += 1
                shape = [rows, columns]
                if !transposed {
                    packed[hfName] = {
                        let groupCount = groups[0] * groups[1]
                        let bytes = PackedBytes(count: rows * words * 4)
                        let floats = PackedBytes(count: 2 * groupCount * 4)  // scales, then biases
                        let s = floats.pointer.bindMemory(to: Float.self, capacity: 2 * groupCount)
                        try scalesFile.read(scales.name, into: s)
                        try biasesFile.read(biases.name, into: s + groupCount)
                        try file.withBytes(name) { bytes.pointer.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                        return PackedWeights(rows: rows, cols: columns, byteCount: rows * words * 4 + 2 * groupCount * 4,
                                             encoding: "mlx \(q.bits)-bit g\(q.groupSize)") { lo, hi, dst in
                            withExtendedLifetime(floats) {
                                mlxDequantize(bytes.pointer + lo * words * 4, rowBytes: words * 4, scales: s + lo * groups[1],
                                              biases: s + groupCount + lo * groups[1], rows: hi - lo, columns: columns,
                                              groupSize: q.groupSize, bits: q.bits, into: dst)
                            }
                        }
                    }
                }
                fill = { out in
                    let count = groups[0] * groups[1]
                    let s = UnsafeMutablePointer<Float>.allocate(capacity: max(2 * count, 1))
                    defer { s.deallocate() }
                    try scalesFile.read(scales.name, into: s)
                    try biasesFile.read(biases.name, into: s + count)
                    try file.withBytes(name) { raw in
                        mlxDequantize(raw.baseAddress!, rowBytes: words * 4, scales: s, biases: s + count,
                                      rows: rows, columns: columns, groupSize: q.groupSize, bits: q.bits, into: out)
                    }
                }
            } else {
                guard ![.U32, .U64, .U16].contains(entry.dtype) else {
                    throw fail(file.path, name, "is \(entry.dtype.rawValue) \(shape) (packed words) with no \(layer ?? name).scales beside it; expected float weights")
                }
                fill = { try file.read(name, into: $0) }
            }
            if transposed {
                let (r, c) = (shape[0], shape[1])
                shape = [c, r]  // (out, in) → (in, out)
                let read = fill
                fills[hfName] = { out in
                    let tmp = UnsafeMutablePointer<Float>.allocate(capacity: max(r * c, 1))
                    defer { tmp.deallocate() }
                    try read(tmp)
                    for i in 0..<r { for j in 0..<c { out[j * r + i] = tmp[i * c + j] } }
                }
            } else {
                fills[hfName] = fill
            }
            shapes[hfName] = shape
        }
        let reader = TensorReader(shapes: shapes) { name, out in
            guard let fill = fills[name] else { throw HFModelError(path: configPath, message: "no tensor '\(name)'") }
            try fill(out)
        }
        return (reader, quantized, packed)
    }

    /// One line for `inspect`: the quantization a config.json (parsed) records, nil for none.
    public static func describe(_ json: [String: Any]) -> String? {
        guard let q = json["quantization"] as? [String: Any] else { return nil }
        func number(_ v: Any?, _ def: Int) -> String { (v as? NSNumber).map { "\($0)" } ?? (v == nil || v is NSNull ? "\(def)" : "?") }
        let layers = q.values.compactMap { $0 as? [String: Any] }
        // The top level is the default of layers without an entry of their own.
        let own = Set(layers.map { number($0["bits"], MLXQuantization.defaultBits) }).sorted().joined(separator: "/")
        return "mlx-lm \(q["mode"] as? String ?? "affine") quantization, \(number(q["bits"], MLXQuantization.defaultBits))-bit, group size \(number(q["group_size"], MLXQuantization.defaultGroupSize))"
            + (layers.isEmpty ? "" : " by default; \(layers.count) layers set one by one (\(own)-bit)") + "; dequantized to Float32 on load"
    }
}

/// Whether `path` is a model folder whose config.json records mlx-lm quantization (a "quantization" object).
public func isQuantizedMLXFolder(_ path: String) -> Bool {
    guard let data = FileManager.default.contents(atPath: URL(fileURLWithPath: path).appendingPathComponent("config.json").path),
          let json = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else { return false }
    return json["quantization"] is [String: Any]
}

private func compactDescription(_ obj: [String: Any]) -> String {
    (try? JSONSerialization.data(withJSONObject: obj.filter { !($0.value is [String: Any]) }, options: [.sortedKeys]))
        .map { String(decoding: $0, as: UTF8.self) } ?? "\(obj)"
}
