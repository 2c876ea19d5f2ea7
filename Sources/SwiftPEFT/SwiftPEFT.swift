// The umbrella module: `import SwiftPEFT` gives a library user every layer at once, in the order
// they build on each other (see docs/architecture.md). The targets themselves import only what they use.

@_exported import TensorCore
@_exported import NN
@_exported import Models
@_exported import Tokenizers
@_exported import PEFT
@_exported import Containers
@_exported import Formats
@_exported import Distributed
@_exported import Training
