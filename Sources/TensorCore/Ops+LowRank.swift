// A low-rank update added to a layer's output in one op, as LoRA does: y + s · (x Aᵀ) Bᵀ. The
// second GEMM accumulates into the output (beta = 1) with the scale folded into alpha, so neither
// the (…, out) update nor a scaled copy of it is ever stored; the op saves only the (…, r) product.

extension Tensor {
    /// The buffer an update of y adds into: y's own (a new tensor over the same contiguous
    /// storage, so y stays the graph input) when the caller hands y over, else a copy.
    static func outputBuffer(_ y: Tensor, intoY: Bool) -> Tensor {
        guard intoY && y.isContiguous else { return y.copy() }
        y.storage.endRecompute()  // written in place next: recomputing would undo it
        return Tensor(storage: y.storage, layout: y.layout)
    }

    /// y + scale · (x Aᵀ) Bᵀ for x (…, in), y (…, out), a (r, in), b (out, r) contiguous.
    /// Backward: dY passes through; dU = scale · dY B; dB = scale · dYᵀ U; dA = dUᵀ x; dX = dU A,
    /// with U = x Aᵀ (…, r) saved from the forward. `intoY`: add into y's own buffer (Linear + LoRA
    /// in one buffer), for a y that is a fresh op output which nothing else holds or reads.
    public static func lowRankUpdate(_ y: Tensor, x: Tensor, a: Tensor, b: Tensor, scale s: Float, intoY: Bool = false) -> Tensor {
        let (inF, outF) = (x.shape.last ?? 0, y.shape.last ?? 0)
        check(a.rank == 2 && b.rank == 2 && a.shape[1] == inF && b.shape[0] == outF && b.shape[1] == a.shape[0]
              && a.isContiguous && b.isContiguous && x.count / Swift.max(inF, 1) == y.count / Swift.max(outF, 1),
              "[lowRankUpdate] needs x (…, in), y (…, out), contiguous a (r, in), b (out, r); got x \(x.shape), y \(y.shape), a \(a.shape), b \(b.shape)")
        let r = a.shape[0], n = y.count / Swift.max(outF, 1)
        let xc = x.contiguousData()
        let out = outputBuffer(y, intoY: intoY)  // (…, out)
        let u = Tensor.empty([n, r])  // (N, r) = x Aᵀ
        let px = UnsafePointer(xc.basePointer), pa = UnsafePointer(a.basePointer), pb = UnsafePointer(b.basePointer)
        let pu = u.basePointer
        sgemm(transA: false, transB: true, m: n, n: r, k: inF, a: px, lda: inF, b: pa, ldb: inF, beta: 0, c: pu, ldc: r)
        sgemm(transA: false, transB: true, m: n, n: outF, k: r, alpha: s, a: pu, lda: r, b: pb, ldb: r,
              beta: 1, c: out.basePointer, ldc: outF)
        let ySlot = y.slot  // y's values are not needed: its gradient is dY itself
        let keptX = a.requiresGrad ? xc : nil  // dA needs x
        let xSlot = x.slot
        return make(out, op: "lowRankUpdate", inputs: [y, x, a, b], readsInputsInPullback: true) { g in
            withExtendedLifetime(u) {}  // pu points into it
            let pg = UnsafePointer(g.basePointer)
            if ySlot.requiresGrad { ySlot.accumulateGrad(passing: g) }
            if b.requiresGrad {  // dB (out, r) = s · dYᵀ U
                let (db, beta) = b.gradBuffer()
                sgemm(transA: true, transB: false, m: outF, n: r, k: n, alpha: s, a: pg, lda: outF, b: pu, ldb: r,
                      beta: beta, c: db, ldc: r)
            }
            guard a.requiresGrad || xSlot.requiresGrad else { return }
            let du = Tensor.empty([n, r])  // (N, r) = s · dY B
            sgemm(transA: false, transB: false, m: n, n: r, k: outF, alpha: s, a: pg, lda: outF, b: UnsafePointer(b.basePointer), ldb: r,
                  beta: 0, c: du.basePointer, ldc: r)
            let pdu = UnsafePointer(du.basePointer)
            if let keptX, a.requiresGrad {  // dA (r, in) = dUᵀ x
                let (da, beta) = a.gradBuffer()
                sgemm(transA: true, transB: false, m: r, n: inF, k: n, a: pdu, lda: r, b: UnsafePointer(keptX.basePointer), ldb: inF,
                      beta: beta, c: da, ldc: inF)
            }
            if xSlot.requiresGrad {  // dX (N, in) += dU A
                let (dx, beta) = xSlot.gradBuffer()
                sgemm(transA: false, transB: false, m: n, n: inF, k: r, a: pdu, lda: r, b: UnsafePointer(a.basePointer), ldb: inF,
                      beta: beta, c: dx, ldc: inF)
            }
        }
    }
}

// Layers that read one input (a block's q, k and v projections) and carry LoRA branches share
// the first GEMM: U = x [A₁; A₂; …]ᵀ in one call (`lowRankProject`), then each layer adds
// s_i · U[:, cols_i] B_iᵀ to its output (`lowRankExpand`). The backward mirrors it: each expand
// writes its dU columns into U's gradient, and the project op runs one dA GEMM and one dX GEMM
// for all of them.

extension Tensor {
    /// U = x [A₁; …; A_n]ᵀ: (…, in) → (N, Σ rᵢ), N the rows of x, for contiguous aᵢ (rᵢ, in).
    /// Backward: dAᵢ = dU[:, colsᵢ]ᵀ x (one GEMM for all), dX += dU [A₁; …; A_n] (one GEMM).
    public static func lowRankProject(_ x: Tensor, a: [Tensor]) -> Tensor {
        let inF = x.shape.last ?? 0
        check(!a.isEmpty && a.allSatisfy { $0.rank == 2 && $0.shape[1] == inF && $0.isContiguous },
              "[lowRankProject] needs x (…, in) and contiguous a (r, in) each; got x \(x.shape), a \(a.map(\.shape))")
        let n = x.count / Swift.max(inF, 1), total = a.reduce(0) { $0 + $1.shape[0] }
        let xc = x.contiguousData()
        let stacked = Tensor.empty([total, inF])  // (Σr, in) = [A₁; …; A_n]
        var row = 0
        for ai in a {
            stacked.basePointer.advanced(by: row * inF).update(from: ai.basePointer, count: ai.count)
            row += ai.shape[0]
        }
        let u = Tensor.empty([n, total])  // (N, Σr)
        let px = UnsafePointer(xc.basePointer), ps = UnsafePointer(stacked.basePointer)
        sgemm(transA: false, transB: true, m: n, n: total, k: inF, a: px, lda: inF, b: ps, ldb: inF, beta: 0, c: u.basePointer, ldc: total)
        let keptX = a.contains(where: \.requiresGrad) ? xc : nil  // dA needs x
        let xSlot = x.slot
        return make(u, op: "lowRankProject", inputs: [x] + a, readsInputsInPullback: true) { g in
            withExtendedLifetime(stacked) {}  // ps points into it
            let pg = UnsafePointer(g.basePointer)
            if let keptX {  // [dA₁; …] (Σr, in) = dUᵀ x, then each into its gradient
                let da = Tensor.empty([total, inF])
                sgemm(transA: true, transB: false, m: total, n: inF, k: n, a: pg, lda: total, b: UnsafePointer(keptX.basePointer),
                      ldb: inF, beta: 0, c: da.basePointer, ldc: inF)
                var row = 0
                for ai in a {
                    if ai.requiresGrad { ai.accumulateGrad(UnsafePointer(da.basePointer + row * inF)) }
                    row += ai.shape[0]
                }
            }
            if xSlot.requiresGrad {  // dX (N, in) += dU [A₁; …]
                let (dx, beta) = xSlot.gradBuffer()
                sgemm(transA: false, transB: false, m: n, n: inF, k: total, a: pg, lda: total, b: ps, ldb: inF, beta: beta, c: dx, ldc: inF)
            }
        }
    }

    /// y + scale · U[:, column..<column + r] bᵀ for y (…, out), u (N, Σr) from `lowRankProject`,
    /// b (out, r) contiguous. Backward: dY passes through; dB = scale · dYᵀ U[:, cols];
    /// dU[:, cols] = scale · dY b (U's other columns belong to the other layers). `intoY` as in
    /// `lowRankUpdate`.
    public static func lowRankExpand(_ y: Tensor, u: Tensor, column: Int, b: Tensor, scale s: Float, intoY: Bool = false) -> Tensor {
        let outF = y.shape.last ?? 0
        check(u.rank == 2 && u.isContiguous && b.rank == 2 && b.isContiguous && b.shape[0] == outF
              && column >= 0 && column + b.shape[1] <= u.shape[1] && y.count / Swift.max(outF, 1) == u.shape[0],
              "[lowRankExpand] needs y (…, out), contiguous u (N, Σr) and b (out, r) with column + r ≤ Σr; got y \(y.shape), u \(u.shape), b \(b.shape), column \(column)")
        let (n, r, total) = (u.shape[0], b.shape[1], u.shape[1])
        let out = outputBuffer(y, intoY: intoY)  // (…, out)
        let pu = UnsafePointer(u.basePointer) + column, pb = UnsafePointer(b.basePointer)
        sgemm(transA: false, transB: true, m: n, n: outF, k: r, alpha: s, a: pu, lda: total, b: pb, ldb: r,
              beta: 1, c: out.basePointer, ldc: outF)
        let (ySlot, uSlot) = (y.slot, u.slot)
        return make(out, op: "lowRankExpand", inputs: [y, u, b]) { g in
            withExtendedLifetime(u) {}  // pu points into it
            let pg = UnsafePointer(g.basePointer)
            if ySlot.requiresGrad { ySlot.accumulateGrad(passing: g) }
            if b.requiresGrad {  // dB (out, r) = s · dYᵀ U[:, cols]
                let (db, beta) = b.gradBuffer()
                sgemm(transA: true, transB: false, m: outF, n: r, k: n, alpha: s, a: pg, lda: outF, b: pu, ldb: total,
                      beta: beta, c: db, ldc: r)
            }
            if uSlot.requiresGrad {  // dU[:, cols] (N, r) += s · dY b, into a gradient the other layers share
                let du = uSlot.zeroedGradBuffer()
                sgemm(transA: false, transB: false, m: n, n: r, k: outF, alpha: s, a: pg, lda: outF, b: pb, ldb: r,
                      beta: 1, c: du + column, ldc: total)
            }
        }
    }
}
