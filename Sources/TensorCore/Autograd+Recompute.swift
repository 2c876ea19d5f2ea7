// Recomputation (gradient checkpointing): a function's graph is dropped after its forward pass and
// built again from the same inputs when the backward pass reaches its output, so its activations
// live for one function at a time instead of until the backward pass ends. A training step then
// pays a second forward pass through the recomputed functions.

import Foundation

extension Tensor {
    /// Runs `body` and returns its output without keeping the graph `body` recorded: only the
    /// output's values and the tensors `body` read from outside (its input, parameters, tensors
    /// it captured) stay. When the backward pass reaches the output, `body` runs again with
    /// recording on and the output's gradient flows back through that fresh graph into the same
    /// outside tensors. Outside recording (`withNoGrad`) it simply returns `body()`.
    ///
    /// `body` must be repeatable: its second run must read the same outside tensors and give the
    /// same values bit for bit (replay any random state it draws). Both are checked when it runs
    /// again; a difference stops the program with a message naming `op`, since the gradient would
    /// otherwise be silently wrong.
    public static func recomputed(_ op: String, _ body: @escaping () -> Tensor) -> Tensor {
        guard Autograd.isRecording else { return body() }
        let mark = Node.made
        let out = body()
        guard let node = out.node, node.serial >= mark else { return out }  // nothing recorded inside
        let outside = outsideSlots(of: out.slot, madeSince: mark)
        let outsideIDs = Set(outside.map(ObjectIdentifier.init))
        // The values, without the graph: the graph recorded inside goes with `out`, and so does
        // the way to recompute them when `body` ended in a norm or an activation (the values stay).
        out.storage.endRecompute()
        let kept = Tensor(storage: out.storage, layout: out.layout)
        let result = Tensor(storage: out.storage, layout: out.layout)
        result.node = Node(op: op, inputs: outside) { g in
            // The rerun records even when the backward pass was started under `withNoGrad`;
            // the backward through it then runs in that scope again.
            let depth = Autograd.enabledDepth
            Autograd.enabledDepth = 0
            let again = Node.made
            let y = body()
            Autograd.enabledDepth = depth
            check(y.shape == kept.shape, "[\(op)] recomputing gave shape \(y.shape), the forward pass \(kept.shape)")
            check(sameValues(y, kept), """
                [\(op)] recomputing gave other values than the forward pass: the function reads state that \
                changed since (a cache, or random draws that are not replayed), so its gradient would be wrong
                """)
            let readAgain = Set(outsideSlots(of: y.slot, madeSince: again).map(ObjectIdentifier.init))
            check(readAgain == outsideIDs, """
                [\(op)] recomputing read other outside tensors than the forward pass (\(readAgain.count) against \
                \(outsideIDs.count)): the function keeps state between calls, so its gradient would be wrong
                """)
            guard y.requiresGrad else { return }
            y.backward(g, retainGraph: false, stoppingAt: outsideIDs)
        }
        return result
    }

    /// The slots that the graph behind `root` reaches outside the nodes made since `mark`, and
    /// that need a gradient: leaves (parameters) and outputs of earlier ops.
    private static func outsideSlots(of root: GradSlot, madeSince mark: Int) -> [GradSlot] {
        var seen = Set<ObjectIdentifier>(), outside: [GradSlot] = [], stack = [root]
        while let s = stack.popLast() {
            guard seen.insert(ObjectIdentifier(s)).inserted else { continue }
            if let n = s.node, n.serial >= mark {
                stack.append(contentsOf: n.inputs)
            } else if s.requiresGrad {
                outside.append(s)
            }
        }
        return outside
    }

    /// Whether two tensors of one shape hold the same bits.
    private static func sameValues(_ a: Tensor, _ b: Tensor) -> Bool {
        let (x, y) = (a.contiguousData(), b.contiguousData())
        return memcmp(x.basePointer, y.basePointer, x.count * MemoryLayout<Float>.stride) == 0
    }
}
