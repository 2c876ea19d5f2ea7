// bf16 copies of frozen weights for products of a few rows (KV-cached decoding), through oneDNN's
// matmul (Debian's libdnnl-dev; bf16 inputs, fp32 accumulation and output). Decoding reads every
// weight once per token and is bound by memory bandwidth, so half the bytes per weight is up to
// twice the speed there (docs/benchmarks.md, "Generation with bf16 copies of the frozen weights");
// a training-size product is bound by compute instead, where bf16 runs at half the fp32 rate on
// an Intel Xeon with AVX512-BF16 and no AMX, so a decoding copy serves only products of at most
// `BF16Copy.maxRows` rows, and only when no gradient is recorded; a matrix whose fp32 values were
// released (bf16-only weights) uses it for every product.
//
// Training in bf16 (`keepBF16Copy(forTraining: true)`, `--precision bf16`): a frozen matrix keeps a
// copy for each side it is read from, the forward product x·W and the input gradient dY·Wᵀ, and
// both serve every row count, gradients recorded or not. That pays where bf16 products outrun
// fp32 ones: measured 2.0× OpenBLAS's AVX-512 sgemm and 4.1× its AVX2 one on an AMD EPYC (Zen 5),
// but 0.66× sgemm on the Intel Xeon (docs/benchmarks.md, "bf16").
//
// A decoding copy is cut into one block of output columns per thread; a training copy is one block,
// and its products split their rows over the threads instead (oneDNN 2.6's AVX-512 bf16 kernels
// refused output rows strided wider than the block: only its reference kernel took them). Each of SwiftPEFT's threads runs its part with one OpenMP thread, so
// oneDNN adds no thread pool of its own.
//
// On a CPU without native bf16 products (AVX2 alone, AVX-512 without AVX512-BF16, where oneDNN 2.6
// has only its scalar reference kernel) a copy is emulated: its values are kept as bf16 in (N, K)
// rows and widened to fp32 a slab at a time for OpenBLAS's sgemm (`PackedWeights`), and the left
// operand is rounded to bf16 first. bf16 times bf16 is exact in fp32, so the products are those of
// the native kernels up to the order of fp32 accumulation, at the speed of fp32 products plus the
// widening (decoding gains: it reads half the bytes), in the same memory for the weights.

import CDNNL
import Foundation

/// A bf16 copy of a matrix operand (logical (K, N), the right side of `x · W`), packed by oneDNN,
/// or emulated where the CPU has no bf16 instructions (see the file's header).
public final class BF16Copy {
    /// Products with more rows than this use the fp32 weights (compute-bound: bf16 is slower
    /// there on the Intel Xeon measured, AVX512-BF16 without AMX), unless those were released
    /// (`keepBF16Copy(releasingFP32: true)`) or the copy serves training (`servesTraining`).
    public static let maxRows = 8

    /// Whether this CPU runs bf16 products natively (AVX512-BF16 or AMX, as oneDNN reports it).
    public static var isNative: Bool { BF16Runtime.shared.native }

    /// oneDNN's instruction set on this CPU, e.g. `avx512_core_bf16`.
    public static var isaName: String { BF16Runtime.shared.isaName }

    /// Makes copies made from now on emulated even on a CPU with native bf16 products, so that
    /// tests and measurements reach the path other CPUs take; copies made before keep their kind.
    nonisolated(unsafe) public static var forceEmulation = false

    /// Whether copies made now are emulated (no native bf16 products here, or `forceEmulation`).
    public static var emulates: Bool { forceEmulation || !isNative }

    /// How bf16 products run here, for reports: oneDNN's native kernels, or the emulation and why.
    public static var summary: String {
        let why = isNative ? "BF16Copy.forceEmulation" : "this CPU has no bf16 instructions (oneDNN ISA \(isaName)); AVX512-BF16 or AMX have them"
        return emulates ? "emulated (\(why)): bf16 values widened to fp32 for OpenBLAS, the same products; decoding reads half the bytes, training runs slower than fp32"
            : "native (oneDNN \(isaName))"
    }

    let k: Int, n: Int
    /// How the fp32 operand was read when the copy was made (see `matches`).
    let trans: Bool, ld: Int
    /// Serves products of every row count, with a gradient recorded or not (bf16 training).
    public let servesTraining: Bool
    /// Column blocks: [lo, lo + count) of N, each with its packed weights (none when emulated).
    let blocks: [(lo: Int, count: Int, weights: dnnl_memory_t, md: swiftpeft_dnnl_md)]
    /// An emulated copy (see the file's header): its bf16 values in (N, K) rows, read through
    /// `PackedWeights`' row slabs.
    let emulated: (values: UnsafeMutablePointer<UInt16>, packed: PackedWeights)?

    /// Packs `operand` (logical (K, N)): a contiguous matrix or a transposed view of one.
    /// `forTraining`: in the layout oneDNN picks for training-size products (`trainingChunkRows` rows).
    init(_ operand: Tensor, forTraining: Bool = false) {
        let op = MatOperand(operand)
        check(op.batchShape.isEmpty && op.input.layout.offset == 0 && op.input.storage === operand.storage,
              "[bf16] a copy needs a whole 2-D matrix or its transpose, got \(operand.shape)")
        k = op.rows
        n = op.cols
        trans = op.trans
        ld = op.ld
        servesTraining = forTraining
        if BF16Copy.emulates {
            blocks = []
            emulated = BF16Copy.emulatedValues(op, k: k, n: n)
            return
        }
        emulated = nil
        let rt = BF16Runtime.shared
        let threads = min(hardwareThreads, rt.streams.count)  // streams: one per thread at first use
        let parts = n >= 64 * threads && !forTraining ? threads : 1  // training products split rows instead
        var blocks: [(lo: Int, count: Int, weights: dnnl_memory_t, md: swiftpeft_dnnl_md)] = []
        rt.lock.lock()
        defer { rt.lock.unlock() }
        for p in 0..<parts {
            let lo = n * p / parts, count = n * (p + 1) / parts - lo
            let packed = rt.packedWeightsDesc(k: k, n: count, rows: forTraining ? BF16Copy.trainingChunkRows : 1)
            // The fp32 block as stored: (K, count) at column lo, row-major or transposed.
            var src: swiftpeft_dnnl_md?
            let strides: [Int64] = trans ? [1, Int64(ld)] : [Int64(ld), 1]
            rt.ok(swiftpeft_dnnl_md_create(&src, 2, [Int64(k), Int64(count)], dnnl_f32, strides), "fp32 weights desc")
            defer { swiftpeft_dnnl_md_destroy(src) }
            let base = UnsafeMutableRawPointer(op.input.basePointer + (trans ? lo * ld : lo))
            var from: dnnl_memory_t?, to: dnnl_memory_t?
            rt.ok(swiftpeft_dnnl_memory_create(&from, src, rt.engine, base), "fp32 weights memory")
            rt.ok(swiftpeft_dnnl_memory_create(&to, packed, rt.engine, swiftpeft_dnnl_allocate()), "bf16 weights memory")
            var pd: dnnl_primitive_desc_t?
            rt.ok(swiftpeft_dnnl_reorder_pd_create(&pd, src, rt.engine, packed, rt.engine, nil), "reorder to bf16")
            var reorder: dnnl_primitive_t?
            rt.ok(dnnl_primitive_create(&reorder, pd), "reorder primitive")
            var args = [dnnl_exec_arg_t(arg: Int32(swiftpeft_dnnl_arg_from), memory: from),
                        dnnl_exec_arg_t(arg: Int32(swiftpeft_dnnl_arg_to), memory: to)]
            rt.ok(dnnl_primitive_execute(reorder, rt.streams[0], 2, &args), "reorder to bf16")
            rt.ok(dnnl_stream_wait(rt.streams[0]), "reorder to bf16")
            dnnl_primitive_destroy(reorder)
            dnnl_primitive_desc_destroy(pd)
            dnnl_memory_destroy(from)
            blocks.append((lo, count, to!, packed))
        }
        self.blocks = blocks
    }

    deinit {
        for b in blocks { dnnl_memory_destroy(b.weights) }
        emulated?.values.deallocate()
    }

    /// `op` (logical (K, N)) rounded to bf16 in (N, K) rows: column j of op is row j, so a slab of
    /// rows widened to fp32 is the right side of `x · slabᵀ`.
    private static func emulatedValues(_ op: MatOperand, k: Int, n: Int) -> (values: UnsafeMutablePointer<UInt16>, packed: PackedWeights) {
        let values = UnsafeMutablePointer<UInt16>.allocate(capacity: max(1, n * k))
        let (base, ld) = (UnsafePointer(op.input.basePointer), op.ld)
        if op.trans {  // stored (N, K): row j is column j of op
            for j in 0..<n { BF16Runtime.convert(base + j * ld, rows: 1, k: k, lda: ld, into: values + j * k) }
        } else {  // stored (K, N): transposed in tiles of 64 × 64
            for i0 in stride(from: 0, to: k, by: 64) {
                for j0 in stride(from: 0, to: n, by: 64) {
                    for i in i0..<min(k, i0 + 64) {
                        for j in j0..<min(n, j0 + 64) { values[j * k + i] = bf16Bits(base[i * ld + j]) }
                    }
                }
            }
        }
        let packed = PackedWeights(rows: n, cols: k, byteCount: 2 * n * k, encoding: "bf16") { lo, hi, dst in
            let src = values + lo * k
            for i in 0..<((hi - lo) * k) { dst[i] = bf16ToFloat(src[i]) }
        }
        return (values, packed)
    }

    /// c (M, N) = (or += when `accumulate`) a rounded to bf16 · this emulated copy, in chunks of
    /// at most `trainingChunkRows` rows (the rounded rows' buffer stays that small).
    private func emulatedProduct(_ e: (values: UnsafeMutablePointer<UInt16>, packed: PackedWeights), m: Int, a: UnsafePointer<Float>,
                                 lda: Int, c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool) {
        let rt = BF16Runtime.shared
        rt.lock.lock()
        defer { rt.lock.unlock() }
        for start in stride(from: 0, to: m, by: BF16Copy.trainingChunkRows) {
            let rows = min(BF16Copy.trainingChunkRows, m - start)
            let x = rt.roundedRows(a + start * lda, m: rows, k: k, lda: lda)  // (rows, K), bf16 values as fp32
            e.packed.productWithTranspose(m: rows, transA: false, a: x, lda: k, c: c + start * ldc, ldc: ldc, beta: accumulate ? 1 : 0)
        }
    }

    /// Bytes the copy holds (2 per value).
    public var byteCount: Int { 2 * k * n }

    /// Whether this copy is emulated (widened to fp32 for OpenBLAS) rather than run by oneDNN.
    public var isEmulated: Bool { emulated != nil }

    /// Whether `op` reads the fp32 matrix this copy was made from, the same way.
    func matches(_ op: MatOperand) -> Bool {
        op.batchShape.isEmpty && op.input.layout.offset == 0 && op.trans == trans && op.ld == ld
            && op.rows == k && op.cols == n
    }

    /// Rows per kernel call in a training-size product (`trainingProduct`): a thread's rows run in
    /// chunks of this many, the rest in chunks of 128, 64, …, 1 rows (a kernel per size, made once).
    static let trainingChunkRows = 256

    /// Rows per kernel call past `maxRows`: a longer product (a prompt, once the fp32 values were
    /// released) runs in chunks of this many rows, the last one padded to a multiple of 8, so a
    /// handful of kernels serve every length.
    static let chunkRows = 64

    /// The kernel's row count for a chunk of `rows` rows.
    private static func kernelRows(_ rows: Int) -> Int { rows <= maxRows ? rows : (rows + 7) / 8 * 8 }

    /// c (M, N; row stride ldc) = a (M, K; row stride lda) · W in bf16 with fp32 accumulation.
    /// Returns false (nothing written) when oneDNN has no kernel for these row counts.
    func product(m: Int, a: UnsafePointer<Float>, lda: Int, c: UnsafeMutablePointer<Float>, ldc: Int) -> Bool {
        if let e = emulated {
            emulatedProduct(e, m: m, a: a, lda: lda, c: c, ldc: ldc, accumulate: false)
            return true
        }
        let rt = BF16Runtime.shared
        rt.lock.lock()
        defer { rt.lock.unlock() }
        let fullChunks = m / BF16Copy.chunkRows, lastRows = m % BF16Copy.chunkRows
        let rowCounts = (fullChunks > 0 ? [BF16Copy.chunkRows] : []) + (lastRows > 0 ? [BF16Copy.kernelRows(lastRows)] : [])
        for rows in rowCounts {  // every kernel first, so that nothing is written when one is missing
            for b in blocks where rt.matmul(m: rows, k: k, n: b.count, weights: b.md) == nil { return false }
        }
        var start = 0
        while start < m {
            let rows = min(BF16Copy.chunkRows, m - start), km = BF16Copy.kernelRows(rows)
            let src = rt.bf16Rows(a + start * lda, m: rows, paddedTo: km, k: k, lda: lda)
            let cc = c + start * ldc
            let run = { (t: Int) in
                let b = self.blocks[t], kernel = rt.matmul(m: km, k: self.k, n: b.count, weights: b.md)!
                rt.oneOpenMPThread()  // this thread's OpenMP setting: the block runs on it alone
                // The kernel writes dense (km, count) rows: one row goes straight into c, more through a buffer.
                let out = km == 1 ? cc + b.lo : rt.outputs[t]
                rt.execute(kernel, thread: t, src: src, weights: b.weights, dst: out)
                if km > 1 {  // the padding rows are dropped
                    for r in 0..<rows { (cc + r * ldc + b.lo).update(from: out + r * b.count, count: b.count) }
                }
            }
            Profiler.measure(.gemm) {
                if blocks.count == 1 { run(0) } else { WorkerPool.shared.run(blocks.count, run) }
            }
            start += rows
        }
        return true
    }

    /// Calls `body(start, rows)` for the chunks of rows [start, start + count): chunks of
    /// `trainingChunkRows`, then the rest in powers of two, so a few kernel sizes serve every row
    /// count. Stops at, and returns, the first false.
    static func forEachChunk(from start: Int, count: Int, _ body: (Int, Int) -> Bool) -> Bool {
        var (start, left, size) = (start, count, trainingChunkRows)
        while left > 0 {
            while size > left { size /= 2 }
            guard body(start, size) else { return false }
            start += size
            left -= size
        }
        return true
    }

    /// Whether oneDNN has a kernel other than its reference one for a training product into dense
    /// rows, written or added (`accumulate`); made here, it then serves those products.
    func hasTrainingKernel(accumulate: Bool) -> Bool {
        if emulated != nil { return true }
        let rt = BF16Runtime.shared
        rt.lock.lock()
        defer { rt.lock.unlock() }
        return blocks.allSatisfy {
            rt.matmul(m: BF16Copy.trainingChunkRows, k: k, n: $0.count, weights: $0.md, ldc: $0.count, accumulate: accumulate) != nil
        }
    }

    /// c (M, N; row stride ldc) = a (M, K; row stride lda) · W, or += when `accumulate`, in bf16
    /// with fp32 accumulation, for a copy made `forTraining`: the rows are split over the threads,
    /// each converts its own rows to bf16 and runs every column block straight into c. Returns
    /// false (nothing written) when oneDNN has no kernel for these row counts.
    func trainingProduct(m: Int, a: UnsafePointer<Float>, lda: Int, c: UnsafeMutablePointer<Float>, ldc: Int,
                         accumulate: Bool) -> Bool {
        guard m > 0 else { return true }
        if let e = emulated {
            emulatedProduct(e, m: m, a: a, lda: lda, c: c, ldc: ldc, accumulate: accumulate)
            return true
        }
        let rt = BF16Runtime.shared
        rt.lock.lock()
        defer { rt.lock.unlock() }
        let threads = m >= 2 * 64 ? min(hardwareThreads, rt.streams.count) : 1
        // Every kernel first, so that nothing is written when one is missing (cached after the first step).
        for t in 0..<threads {
            let lo = m * t / threads
            let ok = BF16Copy.forEachChunk(from: lo, count: m * (t + 1) / threads - lo) { _, rows in
                blocks.allSatisfy { rt.matmul(m: rows, k: k, n: $0.count, weights: $0.md, ldc: ldc, accumulate: accumulate) != nil }
            }
            if !ok { return false }
        }
        rt.reserveRowBuffers(threads: threads, count: min(BF16Copy.trainingChunkRows, (m + threads - 1) / threads) * k)
        Profiler.measure(.gemm) {
            WorkerPool.shared.run(threads) { t in
                rt.oneOpenMPThread()  // this thread's OpenMP setting: its kernels run on it alone
                let src = rt.rowBuffers[t], lo = m * t / threads
                _ = BF16Copy.forEachChunk(from: lo, count: m * (t + 1) / threads - lo) { start, rows in
                    BF16Runtime.convert(a + start * lda, rows: rows, k: self.k, lda: lda, into: src)
                    for b in self.blocks {
                        let kernel = rt.matmul(m: rows, k: self.k, n: b.count, weights: b.md, ldc: ldc, accumulate: accumulate)!
                        rt.execute(kernel, thread: t, src: src, weights: b.weights, dst: c + start * ldc + b.lo)
                    }
                    return true
                }
            }
        }
        return true
    }
}

extension Tensor {
    /// Keeps a bf16 copy of this frozen matrix, read as the right operand of `x.matmul(self)`
    /// (logical (K, N): a contiguous matrix, or `weight.transposed()` of a stored (N, K) one).
    /// From then on, a product `x.matmul(self)` of at most `BF16Copy.maxRows` rows that records no
    /// gradient runs in bf16 (fp32 accumulation); every other use reads the fp32 values. The copy
    /// is made from the values now: make it after the weights are final (a new tensor from
    /// `Linear.setWeight` or a merge carries no copy). Fails on a tensor that takes gradients.
    ///
    /// `releasingFP32` then frees the Float32 values, halving the matrix's memory: every product
    /// `x.matmul(self)` without a gradient reads the copy, whatever its row count (prompts run at
    /// about 0.6× the fp32 rate on the Intel Xeon measured), and any other read of the values stops
    /// the program with a message saying they were released.
    ///
    /// `forTraining` makes the copies bf16 training reads: one for `x.matmul(self)` and one for its
    /// input gradient (dY · selfᵀ), both serving products of every row count, gradients recorded
    /// or not; the two copies take as many bytes as the fp32 values, which `releasingFP32` frees
    /// (kept where oneDNN has no kernel for the products, which then read them).
    public func keepBF16Copy(releasingFP32: Bool = false, forTraining: Bool = false) {
        let source = transposeSource ?? self
        check(!source.requiresGrad, "[bf16] \(source.name ?? "tensor") \(source.shape) takes gradients: only frozen weights get a bf16 copy")
        guard !storage.valuesReleased else { return }  // already only a copy
        if !(forTraining && storage.bf16?.servesTraining == true) {  // else made already
            storage.bf16 = BF16Copy(self, forTraining: forTraining)
            storage.bf16Gradient = forTraining ? BF16Copy(transposed(), forTraining: true) : nil
        }
        if releasingFP32 {
            // Training falls back to the fp32 values where oneDNN has no kernel: keep them then.
            if forTraining, let f = storage.bf16, let g = storage.bf16Gradient,
               !(f.hasTrainingKernel(accumulate: false) && g.hasTrainingKernel(accumulate: false) && g.hasTrainingKernel(accumulate: true)) {
                return
            }
            check(storage.count == count, "[bf16] \(source.name ?? "tensor") \(shape) is a view of \(storage.count) values: only a whole matrix can let its fp32 values go")
            storage.releaseValues()
        }
    }

    /// The bf16 copy kept for this matrix's storage, if any.
    public var bf16Copy: BF16Copy? { storage.bf16 }

    /// The copy for input gradients kept by `keepBF16Copy(forTraining: true)`, if any.
    public var bf16GradientCopy: BF16Copy? { storage.bf16Gradient }

    /// Keeps this frozen matrix's values rounded to bf16 in row order and frees its Float32 ones,
    /// halving what a token embedding takes: `Tensor.embedding` converts each row it gathers, a
    /// product `x.matmul(self)` reads a bf16 copy made before (`keepBF16Copy`, a tied output
    /// head), and any other read stops the program saying the values were released.
    public func keepBF16RowsOnly() {
        check(!requiresGrad, "[bf16] \(name ?? "tensor") \(shape) takes gradients: only frozen weights keep bf16 values alone")
        check(layout.offset == 0 && isContiguous && storage.count == count,
              "[bf16] \(name ?? "tensor") \(shape) is a view of \(storage.count) values: only a whole matrix can let its fp32 values go")
        storage.releaseValuesKeepingBF16()
    }

    /// Whether only bf16 row values are left of this matrix (`keepBF16RowsOnly`).
    public var keepsBF16RowsOnly: Bool { storage.valuesReleased && storage.bf16Values != nil }
}

/// oneDNN's engine, per-thread streams and the matmul kernels made so far, under one lock: products
/// on different threads take turns (a model decodes on one thread at a time).
final class BF16Runtime: @unchecked Sendable {
    static let shared = BF16Runtime()

    let lock = NSLock()
    let engine: dnnl_engine_t
    let streams: [dnnl_stream_t]
    let native: Bool
    let isaName: String

    /// A kernel: rows, K, N, the output's row stride (0: dense (m, n) rows) and whether it adds
    /// into the output.
    struct Key: Hashable { var m, k, n: Int; var ldc = 0; var accumulate = false }
    /// A matmul and, per thread, its source, output and scratchpad memory objects (made once; the
    /// data pointers are set at each call, so a decoding step allocates nothing here).
    struct Kernel {
        let primitive: dnnl_primitive_t
        let memories: [(src: dnnl_memory_t, dst: dnnl_memory_t, scratch: dnnl_memory_t)]
    }
    private var kernels: [Key: Kernel?] = [:]
    private var packedDescs: [Key: swiftpeft_dnnl_md] = [:]  // kept for the process's life
    private var rows: UnsafeMutablePointer<UInt16>
    private var rowsCapacity = 0
    /// One scratchpad per thread, as large as the largest kernel's (`scratchpadBytes`).
    private(set) var scratchpads: [UnsafeMutableRawPointer] = []
    private var scratchpadBytes = 0
    /// One dense output block per thread for products of more than one row.
    private(set) var outputs: [UnsafeMutablePointer<Float>] = []
    private var outputCount = 0

    /// libgomp's `omp_set_num_threads` (libdnnl loads libgomp).
    private let setOpenMPThreads: @convention(c) (Int32) -> Void

    /// Sets the calling thread's OpenMP thread count to 1.
    func oneOpenMPThread() { setOpenMPThreads(1) }

    private init() {
        guard let f = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "omp_set_num_threads") else {  // RTLD_DEFAULT
            fatalError("[bf16] libgomp's omp_set_num_threads is not loaded (Debian's libdnnl links it)")
        }
        setOpenMPThreads = unsafeBitCast(f, to: (@convention(c) (Int32) -> Void).self)
        setOpenMPThreads(1)  // kernels are made for one OpenMP thread (see the file's header)
        var e: dnnl_engine_t?
        let status = dnnl_engine_create(&e, dnnl_cpu, 0)
        check(status == dnnl_success, "[bf16] oneDNN: no CPU engine (status \(status.rawValue))")
        engine = e!
        streams = (0..<max(1, hardwareThreads)).map { _ in
            var s: dnnl_stream_t?
            _ = dnnl_stream_create(&s, e, dnnl_stream_default_flags.rawValue)
            return s!
        }
        let isa = dnnl_get_effective_cpu_isa()
        // A bit set: oneDNN 3 also reports avx10_1_512 and avx512_core_amx_fp16, which include AVX512-BF16.
        native = swiftpeft_dnnl_isa_has_avx512_bf16(isa) != 0
        isaName = BF16Runtime.name(isa)
        rows = .allocate(capacity: 1)
    }

    static func name(_ isa: dnnl_cpu_isa_t) -> String {
        switch isa {
        case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16"
        case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx"
        case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni"
        case dnnl_cpu_isa_avx512_core: return "avx512_core"
        case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni"
        case dnnl_cpu_isa_avx2: return "avx2"
        default: return "isa \(isa.rawValue)"
        }
    }

    func ok(_ s: dnnl_status_t, _ what: String) {
        check(s == dnnl_success, "[bf16] oneDNN failed: \(what) (status \(s.rawValue))")
    }

    /// The packed bf16 layout oneDNN picks for (K, N) weights in a product of `rows` rows (1 for
    /// decoding copies); every row count uses it (a kernel that cannot is not made, and that
    /// product stays fp32).
    func packedWeightsDesc(k: Int, n: Int, rows: Int) -> swiftpeft_dnnl_md {
        let key = Key(m: rows, k: k, n: n)
        if let d = packedDescs[key] { return d }
        let src = desc([rows, k], dnnl_bf16, [Int64(k), 1])
        let dst = desc([rows, n], dnnl_f32, [Int64(n), 1])
        var any: swiftpeft_dnnl_md?
        ok(swiftpeft_dnnl_md_create_any(&any, 2, [Int64(k), Int64(n)], dnnl_bf16), "weights desc")
        defer { swiftpeft_dnnl_md_destroy(src); swiftpeft_dnnl_md_destroy(dst); swiftpeft_dnnl_md_destroy(any) }
        var pd: dnnl_primitive_desc_t?
        ok(swiftpeft_dnnl_matmul_pd_create(&pd, engine, src, any, dst, nil), "bf16 matmul for \(k)×\(n)")
        var d: swiftpeft_dnnl_md?
        ok(swiftpeft_dnnl_query_md(&d, pd, dnnl_query_weights_md), "packed weights desc")
        dnnl_primitive_desc_destroy(pd)
        packedDescs[key] = d!
        return d!
    }

    /// The matmul (M, K) bf16 × packed (K, N) bf16 → (M, N) fp32, made once: dense output rows,
    /// or rows `ldc` apart in a larger matrix, written or (`accumulate`) added to; nil when oneDNN
    /// has only its reference (scalar) kernel for it.
    func matmul(m: Int, k: Int, n: Int, weights: swiftpeft_dnnl_md, ldc: Int? = nil, accumulate: Bool = false) -> Kernel? {
        let key = Key(m: m, k: k, n: n, ldc: ldc ?? 0, accumulate: accumulate)
        if let cached = kernels[key] { return cached }
        let src = desc([m, k], dnnl_bf16, [Int64(k), 1])
        let dst = desc([m, n], dnnl_f32, [Int64(ldc ?? n), 1])
        defer { swiftpeft_dnnl_md_destroy(src); swiftpeft_dnnl_md_destroy(dst) }  // the memory objects keep copies
        var made: Kernel?
        var pd: dnnl_primitive_desc_t?
        var attr: dnnl_primitive_attr_t?
        ok(dnnl_primitive_attr_create(&attr), "matmul attributes")
        defer { dnnl_primitive_attr_destroy(attr) }
        ok(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user), "scratchpad mode")
        if accumulate {  // dst += product: oneDNN's sum post-op
            var ops: dnnl_post_ops_t?
            ok(dnnl_post_ops_create(&ops), "post-ops")
            defer { dnnl_post_ops_destroy(ops) }
            ok(swiftpeft_dnnl_post_ops_append_sum(ops, 1), "sum post-op")
            ok(dnnl_primitive_attr_set_post_ops(attr, ops), "post-ops attribute")
        }
        if swiftpeft_dnnl_matmul_pd_create(&pd, engine, src, weights, dst, attr) == dnnl_success {
            var p: dnnl_primitive_t?
            var scratch: swiftpeft_dnnl_md?
            ok(swiftpeft_dnnl_query_md(&scratch, pd, dnnl_query_scratchpad_md), "scratchpad desc")
            defer { swiftpeft_dnnl_md_destroy(scratch) }
            var impl: UnsafePointer<CChar>?
            _ = dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl)
            let name = impl.map { String(cString: $0) } ?? "ref"
            if !name.hasPrefix("ref"), dnnl_primitive_create(&p, pd) == dnnl_success, let p {
                growBuffers(scratchpad: swiftpeft_dnnl_md_get_size(scratch), output: ldc == nil ? m * n : 0)
                made = Kernel(primitive: p, memories: streams.map { _ in
                    (memory(src), memory(dst), memory(scratch!))
                })
            }
            dnnl_primitive_desc_destroy(pd)
        }
        kernels[key] = made
        return made
    }

    /// Runs `kernel` on thread `t`'s stream and memory objects (blocks of one size share a kernel):
    /// bf16 rows `src`, packed `weights`, output `dst`, the thread's scratchpad.
    func execute(_ kernel: Kernel, thread t: Int, src: UnsafePointer<UInt16>, weights: dnnl_memory_t, dst: UnsafeMutablePointer<Float>) {
        let mem = kernel.memories[t]
        ok(dnnl_memory_set_data_handle(mem.src, UnsafeMutableRawPointer(mutating: src)), "bf16 rows")
        ok(dnnl_memory_set_data_handle(mem.dst, UnsafeMutableRawPointer(dst)), "output rows")
        // Each thread its own scratchpad: oneDNN's shared one is not safe for concurrent calls.
        ok(dnnl_memory_set_data_handle(mem.scratch, scratchpads[t]), "scratchpad")
        var args = [dnnl_exec_arg_t(arg: Int32(swiftpeft_dnnl_arg_src), memory: mem.src),
                    dnnl_exec_arg_t(arg: Int32(swiftpeft_dnnl_arg_weights), memory: weights),
                    dnnl_exec_arg_t(arg: Int32(swiftpeft_dnnl_arg_dst), memory: mem.dst),
                    dnnl_exec_arg_t(arg: Int32(swiftpeft_dnnl_arg_scratchpad), memory: mem.scratch)]
        ok(dnnl_primitive_execute(kernel.primitive, streams[t], 4, &args), "bf16 matmul")
        ok(dnnl_stream_wait(streams[t]), "bf16 matmul")
    }

    /// A memory object of `md` without data (the pointer is set before each use).
    private func memory(_ md: swiftpeft_dnnl_md) -> dnnl_memory_t {
        var m: dnnl_memory_t?
        ok(swiftpeft_dnnl_memory_create(&m, md, engine, nil), "memory object")
        return m!
    }

    private func growBuffers(scratchpad bytes: Int, output count: Int) {
        if bytes > scratchpadBytes || scratchpads.isEmpty {
            for p in scratchpads { p.deallocate() }
            scratchpadBytes = max(bytes, 64)
            scratchpads = streams.map { _ in UnsafeMutableRawPointer.allocate(byteCount: scratchpadBytes, alignment: 64) }
        }
        if count > outputCount || outputs.isEmpty {
            for p in outputs { p.deallocate() }
            outputCount = max(count, 1)
            outputs = streams.map { _ in UnsafeMutablePointer<Float>.allocate(capacity: outputCount) }
        }
    }

    /// A descriptor the caller destroys (`swiftpeft_dnnl_md_destroy`).
    private func desc(_ dims: [Int], _ type: dnnl_data_type_t, _ strides: [Int64]) -> swiftpeft_dnnl_md {
        var d: swiftpeft_dnnl_md?
        ok(swiftpeft_dnnl_md_create(&d, Int32(dims.count), dims.map { Int64($0) }, type, strides), "desc \(dims)")
        return d!
    }

    /// One bf16 row buffer per thread for training-size products (`BF16Copy.trainingProduct`).
    private(set) var rowBuffers: [UnsafeMutablePointer<UInt16>] = []
    private var rowBufferCount = 0

    /// Makes `threads` row buffers of at least `count` values each.
    func reserveRowBuffers(threads: Int, count: Int) {
        guard count > rowBufferCount || rowBuffers.count < threads else { return }
        for p in rowBuffers { p.deallocate() }
        rowBufferCount = max(count, rowBufferCount, 1)
        rowBuffers = (0..<max(threads, rowBuffers.count)).map { _ in .allocate(capacity: rowBufferCount) }
    }

    /// `a` (rows, K; row stride lda) rounded to bf16 (to nearest, ties to even) into dense rows.
    static func convert(_ a: UnsafePointer<Float>, rows: Int, k: Int, lda: Int, into dst: UnsafeMutablePointer<UInt16>) {
        for r in 0..<rows {
            let s = a + r * lda, d = dst + r * k
            for i in 0..<k { d[i] = bf16Bits(s[i]) }
        }
    }

    private var rounded = UnsafeMutablePointer<Float>.allocate(capacity: 1)
    private var roundedCapacity = 1

    /// `a` (M, K; row stride lda) rounded to bf16 (to nearest, ties to even), as fp32 in dense rows
    /// of a reused buffer (emulated products).
    func roundedRows(_ a: UnsafePointer<Float>, m: Int, k: Int, lda: Int) -> UnsafePointer<Float> {
        if roundedCapacity < m * k {
            rounded.deallocate()
            roundedCapacity = m * k
            rounded = .allocate(capacity: roundedCapacity)
        }
        for r in 0..<m {
            let s = a + r * lda, d = rounded + r * k
            for i in 0..<k { d[i] = bf16ToFloat(bf16Bits(s[i])) }
        }
        return UnsafePointer(rounded)
    }

    /// `a` (M, K; row stride lda) rounded to bf16 (to nearest, ties to even) in a reused buffer,
    /// then zero rows up to `padded` rows.
    func bf16Rows(_ a: UnsafePointer<Float>, m: Int, paddedTo padded: Int, k: Int, lda: Int) -> UnsafeMutablePointer<UInt16> {
        if rowsCapacity < padded * k {
            rows.deallocate()
            rows = .allocate(capacity: padded * k)
            rowsCapacity = padded * k
        }
        BF16Runtime.convert(a, rows: m, k: k, lda: lda, into: rows)
        (rows + m * k).update(repeating: 0, count: (padded - m) * k)
        return rows
    }
}

/// bf16 bits → fp32 (exact: bf16 is fp32's upper half).
@inlinable
public func bf16ToFloat(_ bits: UInt16) -> Float { Float(bitPattern: UInt32(bits) << 16) }

/// fp32 → bf16 bits, rounded to nearest with ties to even (NaN stays NaN).
@inline(__always)
func bf16Bits(_ x: Float) -> UInt16 {
    let u = x.bitPattern
    if x.isNaN { return UInt16(u >> 16) | 0x40 }
    return UInt16((u &+ 0x7FFF &+ ((u >> 16) & 1)) >> 16)
}
