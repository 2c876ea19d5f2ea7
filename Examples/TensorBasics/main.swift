// Example: the tensor core as a library user sees it. A frozen weight plus a small trainable
// low-rank correction, a loss, one backward pass, and inference without a graph.
// Run: swift run -c release example-tensor-basics
import TensorCore

BLASCore.selectBest()                                   // the fastest OpenBLAS kernels this CPU has

var rng = RNG(seed: 0)                                  // the same numbers on every machine
let x = Tensor.normal([8, 64], rng: &rng)               // (B, C) inputs
let w = Tensor.normal([32, 64], std: 0.02, rng: &rng)   // (out, in) frozen: no gradient, no dW GEMM
let a = Tensor.normal([4, 64], std: 0.02, rng: &rng)    // (r, in) trainable
let b = Tensor.zeros([32, 4])                            // (out, r) trainable, zero: starts unchanged
a.requiresGrad = true
b.requiresGrad = true

// y = x Wᵀ + x Aᵀ Bᵀ: transposes are BLAS flags, not copies.
let y = x.matmul(w.transposed()) + x.matmul(a.transposed()).matmul(b.transposed())  // (B, out)
let targets: [Int32] = (0..<8).map { Int32($0 * 3 % 32) }
let loss = y.crossEntropy(targets: targets)
loss.backward()
print("loss \(loss.item())")
print("dL/dB has shape \(b.grad!.shape); frozen W has gradient: \(w.grad != nil)")

// Inference records no graph.
let logits = withNoGrad { x.matmul(w.transposed()) }
print("logits \(logits.shape), requiresGrad \(logits.requiresGrad), OpenBLAS core \(BLASCore.current)")
