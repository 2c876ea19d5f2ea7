// The output head and the loss in one op: logits = h Wᵀ and their cross-entropy, computed in
// chunks of rows so that the (N, V) logits and their gradient never exist whole (Liger Kernel's
// fused linear cross-entropy; llm.c's fused classifier). Each chunk is one GEMM, one exp pass
// that yields both the loss and softmax − onehot, and at once the GEMMs of dH (and of dW when the
// head trains). Rows whose target is ignored are skipped entirely.

import Foundation

/// Logits per chunk, in floats (16 MiB), and at least `linearCrossEntropyMinRows` rows: each chunk's
/// GEMMs pack the whole (V, C) head, so chunks of few rows repeat that copy. Measured on the SmolLM2
/// shape, 1024 rows: 85-row chunks 236–282 tok/s, 256-row chunks 283–327; later, LoRA training
/// 382 and 390 tok/s with 256 rows, 406 and 403 with 512 (the head's section 520 → 463 ms per
/// step), 400 and 384 with 1024, for 50 MiB more peak memory at 512. Tests lower both.
nonisolated(unsafe) var linearCrossEntropyChunk = 1 << 22
nonisolated(unsafe) var linearCrossEntropyMinRows = 512

extension Tensor {
    /// Mean cross-entropy of `h` (…, C) · `weight`ᵀ, weight (V, C) contiguous, against one target
    /// per row (`ignoreIndex` rows skipped, the mean over the others; 0 when none remain). Equal
    /// to `h.matmul(weight.transposed()).crossEntropy(targets:)` without storing the logits.
    /// When a gradient is needed the input gradients are computed during the forward pass (one
    /// (N, C) buffer, plus (V, C) when `weight` trains) and scaled by the upstream gradient later.
    public static func linearCrossEntropy(_ h0: Tensor, weight w: Tensor, targets: [Int32], ignoreIndex: Int32 = -100) -> Tensor {
        let C = h0.shape.last ?? 0
        check(w.rank == 2 && w.shape[1] == C && w.isContiguous,
              "[linearCrossEntropy] needs a contiguous weight (V, \(C)) for hidden states \(h0.shape), got \(w.shape)")
        let N = h0.count / Swift.max(C, 1), V = w.shape[0]
        check(targets.count == N, "[linearCrossEntropy] \(targets.count) targets for \(N) rows of \(h0.shape)")
        for (r, t) in targets.enumerated() where t != ignoreIndex && (t < 0 || Int(t) >= V) {
            fatalError("[linearCrossEntropy] target \(t) at row \(r) is outside the vocabulary 0..<\(V) (hidden \(h0.shape), weight \(w.shape))")
        }
        let h = h0.contiguousData()
        let rows = targets.indices.filter { targets[$0] != ignoreIndex }  // learned rows only
        let n = rows.count
        let wantGrad = Autograd.isRecording && (h0.requiresGrad || w.requiresGrad)
        let dH = wantGrad && h0.requiresGrad ? Storage(zeros: n * C) : nil  // (n, C), learned rows
        let dW = wantGrad && w.requiresGrad ? Storage(zeros: V * C) : nil   // (V, C)
        var lossSum = 0.0
        // A frozen head with bf16 training copies (`keepBF16Copy(forTraining: true)` on wᵀ): the
        // logits read the copy of wᵀ (C, V), dH the copy of w (V, C).
        let copies: (logits: BF16Copy, dH: BF16Copy)? = {
            guard !w.requiresGrad, let f = w.storage.bf16, f.servesTraining, f.matches(MatOperand(w.transposed())),
                  let b = w.storage.bf16Gradient, b.k == V && b.n == C else { return nil }
            return (f, b)
        }()
        Profiler.measure(.crossEntropy) {
            let chunk = Swift.max(1, Swift.min(n, Swift.max(linearCrossEntropyMinRows, linearCrossEntropyChunk / Swift.max(V, 1))))
            let logits = UnsafeMutablePointer<Float>.allocate(capacity: chunk * V)  // (chunk, V)
            let hc = UnsafeMutablePointer<Float>.allocate(capacity: chunk * C)      // (chunk, C) gathered rows
            defer { logits.deallocate(); hc.deallocate() }
            var losses = [Double](repeating: 0, count: chunk)
            let inv = n == 0 ? 0 : 1 / Float(n)
            let ph = UnsafePointer(h.basePointer)
            var pw: UnsafePointer<Float> { UnsafePointer(w.basePointer) }  // read only without copies (they may be all there is)
            for c0 in stride(from: 0, to: n, by: chunk) {
                let m = min(chunk, n - c0)
                for i in 0..<m { (hc + i * C).update(from: ph + rows[c0 + i] * C, count: C) }
                if copies?.logits.trainingProduct(m: m, a: hc, lda: C, c: logits, ldc: V, accumulate: false) != true {
                    sgemm(transA: false, transB: true, m: m, n: V, k: C, a: hc, lda: C, b: pw, ldb: C, beta: 0, c: logits, ldc: V)
                }
                losses.withUnsafeMutableBufferPointer { ls in
                    parallelRanges(m, cost: V) { lo, hi in
                        for i in lo..<hi {
                            let row = logits + i * V, t = Int(targets[rows[c0 + i]])
                            let target = row[t]
                            let mx = rowMax(row, V)
                            let sum = expShiftedSum(row, row, V, shift: mx)  // row = e^(x − max)
                            ls[i] = Double(mx + Foundation.log(sum) - target)
                            guard wantGrad else { continue }
                            let scale = inv / sum  // d loss / d logit = (softmax − onehot) / n
                            for j in 0..<V { row[j] *= scale }
                            row[t] -= inv
                        }
                    }
                }
                for i in 0..<m { lossSum += losses[i] }
                if let dH,  // dH rows (m, C) = dlogits (m, V) · W (V, C)
                   copies?.dH.trainingProduct(m: m, a: logits, lda: V, c: dH.pointer + c0 * C, ldc: C, accumulate: false) != true {
                    sgemm(transA: false, transB: false, m: m, n: C, k: V, a: logits, lda: V, b: pw, ldb: C,
                          beta: 0, c: dH.pointer + c0 * C, ldc: C)
                }
                if let dW {  // dW (V, C) += dlogitsᵀ (V, m) · hc (m, C)
                    sgemm(transA: true, transB: false, m: V, n: C, k: m, a: logits, lda: V, b: hc, ldb: C,
                          beta: 1, c: dW.pointer, ldc: C)
                }
            }
        }
        let out = Tensor(n == 0 ? 0 : Float(lossSum / Double(n)))
        guard wantGrad else { return out }
        var handedOver = false  // dW, computed in the forward pass, becomes the weight's gradient once
        return make(out, op: "linearCrossEntropy", inputs: [h0, w]) { g in
            check(!handedOver, "[linearCrossEntropy] a second backward through the fused head (retainGraph): its weight gradient was handed to the weight at the first one; use lmHead + crossEntropy to backward twice")
            handedOver = dW != nil
            Profiler.measure(.crossEntropy) {
                let s = g.item()
                if let dH {
                    let dh = Tensor.zeros(h0.shape)  // ignored rows get no gradient
                    let pd = dh.basePointer, src = dH.pointer
                    for (i, r) in rows.enumerated() {
                        for j in 0..<C { pd[r * C + j] = src[i * C + j] * s }
                    }
                    h0.accumulateGrad(owned: dh)
                }
                if let dW {
                    let dw = Tensor(storage: dW, layout: Layout(contiguous: [V, C]))
                    if s != 1 { for j in 0..<(V * C) { dW.pointer[j] *= s } }
                    w.accumulateGrad(owned: dw)
                }
            }
        }
    }
}
