// Fused neural-network kernels, each a forward/backward pair that saves what the backward needs:
// softmax / log-softmax (last axis), layer norm (mean, rstd), RMS norm (rstd), cross-entropy
// (row log-sum-exp), embedding gather / scatter-add, dropout (mask), rotary position embedding.

import Foundation

extension Tensor {
    /// Rows of the last axis: (count / C, C).
    private var rowsAndCols: (Int, Int) {
        let c = shape.last ?? 1
        return (c == 0 ? 0 : count / c, c)
    }

    /// Softmax over the last axis, numerically stable (max subtracted).
    /// Backward: dx = y ⊙ (dy − Σ dy ⊙ y).
    public func softmax() -> Tensor {
        check(rank >= 1, "[softmax] needs rank ≥ 1, got shape \(shape)")
        let x = contiguousData()
        let (rows, c) = rowsAndCols
        let out = Tensor.empty(shape)
        let px = UnsafePointer(x.basePointer), py = out.basePointer
        parallelRanges(rows, cost: c) { lo, hi in
            for r in lo..<hi {
                let xr = px + r * c, yr = py + r * c
                let mx = rowMax(xr, c)
                let inv = 1 / expShiftedSum(xr, yr, c, shift: mx)
                for i in 0..<c { yr[i] *= inv }
            }
        }
        let ys = out.storage
        return Tensor.make(out, op: "softmax", inputs: [self]) { [self] g in
            let d = Tensor.empty(shape)
            let pg = UnsafePointer(g.basePointer), pd = d.basePointer, y = UnsafePointer(ys.pointer)
            parallelRanges(rows, cost: c) { lo, hi in
                for r in lo..<hi {
                    let o = r * c
                    let dot = rowDot(pg + o, y + o, c)
                    for i in 0..<c { pd[o + i] = y[o + i] * (pg[o + i] - dot) }
                }
            }
            accumulateGrad(owned: d)
        }
    }

    /// Log-softmax over the last axis. Backward: dx = dy − softmax(x) · Σ dy.
    public func logSoftmax() -> Tensor {
        check(rank >= 1, "[logSoftmax] needs rank ≥ 1, got shape \(shape)")
        let x = contiguousData()
        let (rows, c) = rowsAndCols
        let out = Tensor.empty(shape)
        let px = UnsafePointer(x.basePointer), py = out.basePointer
        parallelRanges(rows, cost: c) { lo, hi in
            for r in lo..<hi {
                let xr = px + r * c, yr = py + r * c
                let lse = logSumExp(xr, c, scratch: yr)
                for i in 0..<c { yr[i] = xr[i] - lse }
            }
        }
        let ys = out.storage
        return Tensor.make(out, op: "logSoftmax", inputs: [self]) { [self] g in
            let d = Tensor.empty(shape)
            let pg = UnsafePointer(g.basePointer), pd = d.basePointer, y = UnsafePointer(ys.pointer)
            parallelRanges(rows, cost: c) { lo, hi in
                for r in lo..<hi {
                    let o = r * c
                    var s: Float = 0
                    for i in 0..<c { s += pg[o + i] }
                    for i in 0..<c { pd[o + i] = pg[o + i] - fastExp(y[o + i]) * s }
                }
            }
            accumulateGrad(owned: d)
        }
    }

    /// Layer norm over the last axis: (x − mean) · rstd · weight + bias, rstd = 1/√(var + eps).
    /// Saves mean and rstd per row for the backward.
    public func layerNorm(weight: Tensor?, bias: Tensor?, eps: Float = 1e-5) -> Tensor {
        if let w = weight { must { try ShapeCheck.feature("layerNorm", input: shape, param: w.shape, name: "weight") } }
        if let b = bias { must { try ShapeCheck.feature("layerNorm", input: shape, param: b.shape, name: "bias") } }
        let x = contiguousData()
        let (rows, c) = rowsAndCols
        let out = Tensor.empty(shape)
        let mean = Storage(count: rows), rstd = Storage(count: rows)
        let wd = weight?.contiguousData(), bd = bias?.contiguousData()
        let px = UnsafePointer(x.basePointer), py = out.basePointer
        let pw = wd.map { UnsafePointer($0.basePointer) }, pb = bd.map { UnsafePointer($0.basePointer) }
        let pm = mean.pointer, pr = rstd.pointer
        /// Writes the output rows; the first time also finds each row's mean and rstd, a rerun
        /// (`Storage.recompute`) reads them, so it gives the same bits.
        func normalize(into py: UnsafeMutablePointer<Float>, findingStatistics: Bool) {
            parallelRanges(rows, cost: c) { lo, hi in
                for r in lo..<hi {
                    let xr = px + r * c, yr = py + r * c
                    if findingStatistics {
                        let m = rowSum(xr, c) / Float(c)
                        let m8 = SIMD8<Float>(repeating: m)
                        let v = simdSum(c, { let d = load8(xr, $0) - m8; return d * d }, { let d = xr[$0] - m; return d * d })
                        pm[r] = m
                        pr[r] = 1 / (v / Float(c) + eps).squareRoot()
                    }
                    let m = pm[r], rs = pr[r]
                    for i in 0..<c {
                        var y = (xr[i] - m) * rs
                        if let pw { y *= pw[i] }
                        if let pb { y += pb[i] }
                        yr[i] = y
                    }
                }
            }
        }
        normalize(into: py, findingStatistics: true)
        let inputs = [self] + [weight, bias].compactMap { $0 }
        // The recompute keeps storages, not tensors: a tensor would hold its graph.
        let held = (x.storage, mean, rstd, wd?.storage, bd?.storage)
        return Tensor.make(out, op: "layerNorm", inputs: inputs, recompute: { py in
            normalize(into: py, findingStatistics: false)
            withExtendedLifetime(held) {}
        }) { [self] g in
            let pg = UnsafePointer(g.basePointer)
            if requiresGrad {
                // dx = rstd · (dn − mean(dn) − n · mean(dn ⊙ n)), with n the normalized x and dn = dy ⊙ w.
                let dx = Tensor.empty(shape)
                let pd = dx.basePointer
                parallelRanges(rows, cost: c) { lo, hi in
                    for r in lo..<hi {
                        let o = r * c, m = pm[r], rs = pr[r]
                        let gr = pg + o, xr = px + o, m8 = SIMD8<Float>(repeating: m)
                        // s1 = mean(dn), s2 = mean(dn ⊙ n)
                        var s1: Float, s2: Float
                        if let pw {
                            s1 = rowDot(gr, pw, c)
                            s2 = simdSum(c, { load8(gr, $0) * load8(pw, $0) * (load8(xr, $0) - m8) }, { gr[$0] * pw[$0] * (xr[$0] - m) })
                        } else {
                            s1 = rowSum(gr, c)
                            s2 = simdSum(c, { load8(gr, $0) * (load8(xr, $0) - m8) }, { gr[$0] * (xr[$0] - m) })
                        }
                        s1 /= Float(c)
                        s2 *= rs / Float(c)
                        for i in 0..<c {
                            let dn = pg[o + i] * (pw?[i] ?? 1)
                            pd[o + i] = rs * (dn - s1 - (px[o + i] - m) * rs * s2)
                        }
                    }
                }
                accumulateGrad(owned: dx)
            }
            if let w = weight, w.requiresGrad {
                let dw = Tensor.zeros([c])
                for r in 0..<rows {
                    let o = r * c, m = pm[r], rs = pr[r]
                    for i in 0..<c { dw.basePointer[i] += pg[o + i] * (px[o + i] - m) * rs }
                }
                w.accumulateGrad(owned: dw)
            }
            if let b = bias, b.requiresGrad { b.accumulateGrad(g.sumToShape([c])) }
            withExtendedLifetime((x, mean, rstd, wd, bd)) {}
        }
    }

    /// RMS norm over the last axis: x · rstd · weight, rstd = 1/√(mean(x²) + eps). Saves rstd.
    public func rmsNorm(weight: Tensor?, eps: Float = 1e-6) -> Tensor {
        if let w = weight { must { try ShapeCheck.feature("rmsNorm", input: shape, param: w.shape, name: "weight") } }
        let x = contiguousData()
        let (rows, c) = rowsAndCols
        let out = Tensor.empty(shape)
        let rstd = Storage(count: rows)
        let wd = weight?.contiguousData()
        let px = UnsafePointer(x.basePointer), py = out.basePointer
        let pw = wd.map { UnsafePointer($0.basePointer) }, pr = rstd.pointer
        /// Writes the output rows; the first time also finds each row's rstd, a rerun
        /// (`Storage.recompute`) reads it, so it gives the same bits.
        func normalize(into py: UnsafeMutablePointer<Float>, findingRstd: Bool) {
            parallelRanges(rows, cost: c) { lo, hi in
                for r in lo..<hi {
                    let xr = px + r * c, yr = py + r * c
                    if findingRstd { pr[r] = 1 / (rowDot(xr, xr, c) / Float(c) + eps).squareRoot() }
                    let rs = pr[r]
                    if let pw { for i in 0..<c { yr[i] = xr[i] * rs * pw[i] } } else { for i in 0..<c { yr[i] = xr[i] * rs } }
                }
            }
        }
        normalize(into: py, findingRstd: true)
        let inputs = [self] + [weight].compactMap { $0 }
        // The recompute keeps storages, not tensors: a tensor would hold its graph.
        let held = (x.storage, rstd, wd?.storage)
        return Tensor.make(out, op: "rmsNorm", inputs: inputs, recompute: { py in
            normalize(into: py, findingRstd: false)
            withExtendedLifetime(held) {}
        }) { [self] g in
            let pg = UnsafePointer(g.basePointer)
            if requiresGrad {
                // dx = rstd · dn − x · rstd³ · mean(dn ⊙ x), dn = dy ⊙ w.
                let dx = Tensor.empty(shape)
                let pd = dx.basePointer
                parallelRanges(rows, cost: c) { lo, hi in
                    for r in lo..<hi {
                        let o = r * c, rs = pr[r]
                        let gr = pg + o, xr = px + o
                        let s = (pw.map { w in simdSum(c, { load8(gr, $0) * load8(w, $0) * load8(xr, $0) }, { gr[$0] * w[$0] * xr[$0] }) }
                                 ?? rowDot(gr, xr, c)) / Float(c)
                        let k = rs * rs * rs * s
                        for i in 0..<c { pd[o + i] = rs * pg[o + i] * (pw?[i] ?? 1) - px[o + i] * k }
                    }
                }
                accumulateGrad(owned: dx)
            }
            if let w = weight, w.requiresGrad {
                let dw = Tensor.zeros([c])
                for r in 0..<rows {
                    let o = r * c, rs = pr[r]
                    for i in 0..<c { dw.basePointer[i] += pg[o + i] * px[o + i] * rs }
                }
                w.accumulateGrad(owned: dw)
            }
            withExtendedLifetime((x, rstd, wd)) {}
        }
    }

    /// Mean cross-entropy of logits (…, V) against one target id per row; rows whose target is
    /// `ignoreIndex` are skipped and the mean is over the others (0 when none remain).
    /// Fused log-softmax + NLL: saves each row's log-sum-exp; backward (softmax − onehot) / n.
    public func crossEntropy(targets: [Int32], ignoreIndex: Int32 = -100) -> Tensor {
        must { try ShapeCheck.crossEntropy(logits: shape, targets: targets.count) }
        let x = contiguousData()
        let (rows, v) = rowsAndCols
        for (r, t) in targets.enumerated() where t != ignoreIndex && (t < 0 || Int(t) >= v) {
            fatalError("[crossEntropy] target \(t) at row \(r) is outside the vocabulary 0..<\(v) (logits \(shape))")
        }
        let valid = targets.reduce(0) { $0 + ($1 == ignoreIndex ? 0 : 1) }
        let lse = Storage(count: rows)
        let px = UnsafePointer(x.basePointer), pl = lse.pointer
        var losses = [Double](repeating: 0, count: rows)
        Profiler.measure(.crossEntropy) { targets.withUnsafeBufferPointer { tg in
            losses.withUnsafeMutableBufferPointer { ls in
                parallelRanges(rows, cost: v) { lo, hi in
                    let scratch = UnsafeMutablePointer<Float>.allocate(capacity: v)  // one per chunk
                    defer { scratch.deallocate() }
                    for r in lo..<hi where tg[r] != ignoreIndex {
                        let l = logSumExp(px + r * v, v, scratch: scratch)
                        pl[r] = l
                        ls[r] = Double(l - px[r * v + Int(tg[r])])
                    }
                }
            }
        } }
        let loss = valid == 0 ? 0 : Float(losses.reduce(0, +) / Double(valid))
        let out = Tensor(loss)
        return Tensor.make(out, op: "crossEntropy", inputs: [self]) { [self] g in Profiler.measure(.crossEntropy) {
            let scale = valid == 0 ? 0 : g.item() / Float(valid)
            let d = Tensor.empty(shape)
            let pd = d.basePointer
            targets.withUnsafeBufferPointer { tg in
                parallelRanges(rows, cost: v) { lo, hi in
                    for r in lo..<hi {
                        let o = r * v
                        if tg[r] == ignoreIndex {
                            for i in 0..<v { pd[o + i] = 0 }
                            continue
                        }
                        let l = pl[r]
                        for i in 0..<v { pd[o + i] = fastExp(px[o + i] - l) * scale }
                        pd[o + Int(tg[r])] -= scale
                    }
                }
            }
            withExtendedLifetime((x, lse)) { accumulateGrad(owned: d) }
        } }
    }

    /// Rows of `weight` (V, C) gathered by `ids` (shape `idShape`) → (idShape…, C).
    /// Backward scatter-adds into the rows used.
    public static func embedding(_ weight: Tensor, ids: [Int32], shape idShape: [Int]) -> Tensor {
        check(weight.rank == 2, "[embedding] weight must be (V, C), got \(weight.shape)")
        check(idShape.reduce(1, *) == ids.count, "[embedding] \(ids.count) ids for shape \(idShape)")
        let (v, c) = (weight.shape[0], weight.shape[1])
        if let bad = ids.first(where: { $0 < 0 || Int($0) >= v }) {
            fatalError("[embedding] id \(bad) is outside 0..<\(v) for weight \(weight.shape)")
        }
        if let rows = weight.storage.bf16Values, weight.storage.valuesReleased {  // bf16 rows alone (`keepBF16RowsOnly`)
            let out = Tensor.empty(idShape + [c])  // (ids…, C)
            let po = out.basePointer
            for (i, id) in ids.enumerated() {
                let row = rows + Int(id) * c, o = po + i * c
                for j in 0..<c { o[j] = bf16ToFloat(row[j]) }
            }
            return out  // frozen: no gradient
        }
        if let packed = weight.storage.packed {  // encoded rows alone (`keepPackedOnly`): each gathered row decoded
            check(!weight.requiresGrad && weight.layout.offset == 0 && weight.shape == [packed.rows, packed.cols],
                  "[embedding] \(weight.shape) keeps only packed blocks (\(packed.encoding)): a whole frozen table, read whole")
            let out = Tensor.empty(idShape + [c])  // (ids…, C)
            let po = out.basePointer
            for (i, id) in ids.enumerated() { packed.decodeRows(Int(id), Int(id) + 1, po + i * c) }
            return out  // frozen: no gradient
        }
        let w = weight.contiguousData()
        let out = Tensor.empty(idShape + [c])
        let pw = UnsafePointer(w.basePointer), po = out.basePointer
        for (i, id) in ids.enumerated() { (po + i * c).update(from: pw + Int(id) * c, count: c) }
        return make(out, op: "embedding", inputs: [weight]) { g in
            let (dw, beta) = weight.gradBuffer()
            if beta == 0 { dw.initialize(repeating: 0, count: weight.count) }
            let pg = UnsafePointer(g.basePointer)
            for (i, id) in ids.enumerated() {
                let row = dw + Int(id) * c, gr = pg + i * c
                for j in 0..<c { row[j] += gr[j] }
            }
        }
    }

    /// Inverted dropout: zeroes each element with probability `p` and scales the rest by 1/(1−p).
    /// The mask comes from `rng`, so a seeded run repeats exactly.
    public func dropout(_ p: Float, rng: inout RNG) -> Tensor {
        check(p >= 0 && p < 1, "[dropout] p must be in [0, 1), got \(p)")
        if p == 0 { return self }
        let mask = Tensor.empty(shape)
        let scale = 1 / (1 - p)
        for i in 0..<count { mask.basePointer[i] = rng.nextFloat() < p ? 0 : scale }
        return self * mask.detached()
    }

    /// SwiGLU's gate: silu(gate) ⊙ up in one pass, for two tensors of one shape (LLaMA's MLP).
    /// Saves only its two inputs (no silu(gate) buffer); backward with σ = sigmoid(gate):
    /// d_up = dY ⊙ gate·σ, d_gate = dY ⊙ up ⊙ σ (1 + gate (1 − σ)).
    public static func swiglu(gate g0: Tensor, up u0: Tensor) -> Tensor {
        check(g0.shape == u0.shape, "[swiglu] gate \(g0.shape) and up \(u0.shape) must have one shape")
        let g = g0.contiguousData(), u = u0.contiguousData()
        let out = Tensor.empty(g0.shape)
        let pg = UnsafePointer(g.basePointer), pu = UnsafePointer(u.basePointer)
        let n = out.count  // the pullback must not capture `out`: that would keep (…, F) alive per layer
        func product(into po: UnsafeMutablePointer<Float>) {
            parallelRanges(n, cost: 4) { lo, hi in
                for i in lo..<hi { po[i] = pg[i] / (1 + fastExp(-pg[i])) * pu[i] }
            }
        }
        product(into: out.basePointer)
        let held = (g.storage, u.storage)  // storages, not tensors: a tensor would hold its graph
        return make(out, op: "swiglu", inputs: [g0, u0], recompute: { po in
            product(into: po)
            withExtendedLifetime(held) {}
        }) { dy in
            let pd = UnsafePointer(dy.basePointer)
            let dg = g0.requiresGrad ? Tensor.empty(g0.shape) : nil
            let du = u0.requiresGrad ? Tensor.empty(u0.shape) : nil
            let pdg = dg?.basePointer, pdu = du?.basePointer
            parallelRanges(n, cost: 4) { lo, hi in
                for i in lo..<hi {
                    let x = pg[i], sig = 1 / (1 + fastExp(-x))
                    if let pdu { pdu[i] = pd[i] * x * sig }
                    if let pdg { pdg[i] = pd[i] * pu[i] * sig * (1 + x * (1 - sig)) }
                }
            }
            withExtendedLifetime((g, u)) {
                if let dg { g0.accumulateGrad(owned: dg) }
                if let du { u0.accumulateGrad(owned: du) }
            }
        }
    }

    /// Rotary position embedding, Hugging Face "rotate_half" layout, on a tensor whose last axis is
    /// the head dimension D and whose axis `seqAxis` is the sequence T: (…, T, D) by default, or
    /// (B, T, H, D) with seqAxis 1. For i < D/2, angle = (positionOffset + t) · θ^(−2i/D), and the
    /// pair (x_i, x_{i+D/2}) is rotated by that angle. The backward rotates by −angle.
    /// `divisors`: each frequency pair's divisor (D/2 values; Llama 3.1's scaling), or nil for plain RoPE.
    public func rope(theta: Float, positionOffset: Int = 0, seqAxis: Int = -2, divisors: [Float]? = nil) -> Tensor {
        check(rank >= 2 && shape.last! % 2 == 0, "[rope] needs an even last axis, got \(shape)")
        let sa = must { try ShapeCheck.axis(seqAxis, rank: rank, op: "rope") }
        check(sa < rank - 1, "[rope] the sequence axis must come before the last axis, got \(seqAxis) for \(shape)")
        let x = contiguousData()
        let (t, d) = (shape[sa], shape[rank - 1])
        let inner = shape[(sa + 1)..<(rank - 1)].reduce(1, *)  // rows per position (e.g. heads)
        let h = d / 2
        check(divisors == nil || divisors!.count == h, "[rope] \(divisors?.count ?? 0) frequency divisors for \(h) frequency pairs of \(shape)")
        // (T, D/2) cos and sin tables, computed in Double then rounded.
        let cosT = Storage(count: t * h), sinT = Storage(count: t * h)
        for p in 0..<t {
            for i in 0..<h {
                let freq = Foundation.pow(Double(theta), -2.0 * Double(i) / Double(d)) / Double(divisors?[i] ?? 1)
                let a = Double(positionOffset + p) * freq
                cosT.pointer[p * h + i] = Float(Foundation.cos(a))
                sinT.pointer[p * h + i] = Float(Foundation.sin(a))
            }
        }
        let rows = count / d
        func rotate(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, sign: Float) {
            let pc = UnsafePointer(cosT.pointer), ps = UnsafePointer(sinT.pointer)
            parallelRanges(rows, cost: d) { lo, hi in
                for r in lo..<hi {
                    let o = r * d, tab = ((r / inner) % t) * h
                    for i in 0..<h {
                        let (a, b) = (src[o + i], src[o + i + h])
                        let (c, s) = (pc[tab + i], sign * ps[tab + i])
                        dst[o + i] = a * c - b * s
                        dst[o + i + h] = b * c + a * s
                    }
                }
            }
        }
        let out = Tensor.empty(shape)
        rotate(x.basePointer, out.basePointer, sign: 1)
        let inSlot = slot  // a rotation's gradient needs no input values
        return Tensor.make(out, op: "rope", inputs: [self]) { g in
            let dx = Tensor.empty(inSlot.shape)
            rotate(g.basePointer, dx.basePointer, sign: -1)  // the inverse rotation
            inSlot.accumulateGrad(owned: dx)
        }
    }
}

/// log Σ exp(x_i) over `n` contiguous values, stable; `scratch` (n floats) receives the exps.
@inline(__always)
func logSumExp(_ x: UnsafePointer<Float>, _ n: Int, scratch: UnsafeMutablePointer<Float>) -> Float {
    let mx = rowMax(x, n)
    if mx == -.infinity { return mx }
    return mx + Foundation.log(expShiftedSum(x, scratch, n, shift: mx))
}
