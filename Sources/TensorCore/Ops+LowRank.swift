// A low-rank update added to a layer's output in one op, as LoRA does: y + s · (x Aᵀ) Bᵀ. The
// second GEMM accumulates into the output (beta = 1) with the scale folded into alpha, so neither
// the (…, out) update nor a scaled copy of it is ever stored; the op saves only the (…, r) product.

extension Tensor {
    /// y + scale · (x Aᵀ) Bᵀ for x (…, in), y (…, out), a (r, in), b (out, r) contiguous.
    /// Backward: dY passes through; dU = scale · dY B; dB = scale · dYᵀ U; dA = dUᵀ x; dX = dU A,
    /// with U = x Aᵀ (…, r) saved from the forward.
    public static func lowRankUpdate(_ y: Tensor, x: Tensor, a: Tensor, b: Tensor, scale s: Float) -> Tensor {
        let (inF, outF) = (x.shape.last ?? 0, y.shape.last ?? 0)
        check(a.rank == 2 && b.rank == 2 && a.shape[1] == inF && b.shape[0] == outF && b.shape[1] == a.shape[0]
              && a.isContiguous && b.isContiguous && x.count / Swift.max(inF, 1) == y.count / Swift.max(outF, 1),
              "[lowRankUpdate] needs x (…, in), y (…, out), contiguous a (r, in), b (out, r); got x \(x.shape), y \(y.shape), a \(a.shape), b \(b.shape)")
        let r = a.shape[0], n = y.count / Swift.max(outF, 1)
        let xc = x.contiguousData()
        let out = y.copy()  // (…, out)
        let u = Tensor.empty([n, r])  // (N, r) = x Aᵀ
        let px = UnsafePointer(xc.basePointer), pa = UnsafePointer(a.basePointer), pb = UnsafePointer(b.basePointer)
        let pu = u.basePointer
        sgemm(transA: false, transB: true, m: n, n: r, k: inF, a: px, lda: inF, b: pa, ldb: inF, beta: 0, c: pu, ldc: r)
        sgemm(transA: false, transB: true, m: n, n: outF, k: r, alpha: s, a: pu, lda: r, b: pb, ldb: r,
              beta: 1, c: out.basePointer, ldc: outF)
        let ySlot = y.slot  // y's values are not needed: its gradient is dY itself
        let keptX = a.requiresGrad ? xc : nil  // dA needs x
        let xSlot = x.slot
        return make(out, op: "lowRankUpdate", inputs: [y, x, a, b]) { g in
            withExtendedLifetime((keptX, u)) {}  // px (when dA is wanted) and pu point into them
            let pg = UnsafePointer(g.basePointer)
            if ySlot.requiresGrad { ySlot.accumulateGrad(g) }
            if b.requiresGrad {  // dB (out, r) = s · dYᵀ U
                let (db, beta) = b.gradBuffer()
                sgemm(transA: true, transB: false, m: outF, n: r, k: n, alpha: s, a: pg, lda: outF, b: pu, ldb: r,
                      beta: beta, c: db, ldc: r)
            }
            guard a.requiresGrad || xSlot.requiresGrad else { return }
            let du = Tensor.empty([n, r])  // (N, r) = s · dY B
            sgemm(transA: false, transB: false, m: n, n: r, k: outF, alpha: s, a: pg, lda: outF, b: pb, ldb: r,
                  beta: 0, c: du.basePointer, ldc: r)
            let pdu = UnsafePointer(du.basePointer)
            if a.requiresGrad {  // dA (r, in) = dUᵀ x
                let (da, beta) = a.gradBuffer()
                sgemm(transA: true, transB: false, m: r, n: inF, k: n, a: pdu, lda: r, b: px, ldb: inF, beta: beta, c: da, ldc: inF)
            }
            if xSlot.requiresGrad {  // dX (N, in) += dU A
                let (dx, beta) = xSlot.gradBuffer()
                sgemm(transA: false, transB: false, m: n, n: inF, k: r, a: pdu, lda: r, b: pa, ldb: inF, beta: beta, c: dx, ldc: inF)
            }
        }
    }
}
