// shape-probe: runs one op with mismatched shapes (or a misused one), so a test can check that the
// process stops with a message naming the op and both shapes (a precondition cannot be caught in-process).
import TensorCore

let a = Tensor.zeros([2, 3]), b = Tensor.zeros([4, 5])
switch CommandLine.arguments.dropFirst().first ?? "" {
case "matmul": _ = a.matmul(b)
case "add": _ = a + Tensor.zeros([4])
case "reshape": _ = a.reshaped([4, 2])
case "concat": _ = Tensor.concat([a, b], axis: 0)
case "layerNorm": _ = a.layerNorm(weight: Tensor.ones([4]), bias: nil)
case "crossEntropy": _ = a.crossEntropy(targets: [1, 2, 0])
case "attention": _ = Tensor.attention(q: Tensor.zeros([1, 2, 2, 4]), k: Tensor.zeros([1, 2, 3, 4]), v: Tensor.zeros([1, 2, 3, 4]))
case "recomputed-values", "recomputed-state":
    // A function that is not repeatable: its second run gives other values, or reads another
    // outside tensor (the same values, but without the graph: a stale cache).
    let w = Tensor.ones([2, 3]), stale = Tensor.ones([2, 3])
    w.requiresGrad = true
    var runs = 0
    let values = CommandLine.arguments[1] == "recomputed-values"
    let y = Tensor.recomputed("probe") {
        runs += 1
        return values ? w * Float(runs) : (runs == 1 ? w : stale) * 2
    }
    y.sum().backward()
case "linearCrossEntropy-twice":
    // The fused head hands its forward-computed weight gradient over at the first backward.
    let w = Tensor.ones([5, 3])
    w.requiresGrad = true
    let loss = Tensor.linearCrossEntropy(Tensor.ones([2, 3]), weight: w, targets: [1, 4]) * 0.5
    loss.backward(retainGraph: true)
    loss.backward()
default: print("usage: shape-probe matmul|add|reshape|concat|layerNorm|crossEntropy|attention|recomputed-values|recomputed-state|linearCrossEntropy-twice")
}
print("no error")
