// NN: modules, parameters, layers and optimizers built on TensorCore (filled in by the
// transformer issue). Re-exports TensorCore so that users of a higher layer see the tensor API.
@_exported import TensorCore
