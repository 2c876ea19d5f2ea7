// swift-tools-version:5.10
// SwiftPEFT: parameter-efficient fine-tuning of decoder-only language models on the CPU.
// Layers point one way: TensorCore → NN → Models → PEFT → Formats → Training → swiftpeft (CLI).
import PackageDescription

// Release builds use plain -O, not -Ounchecked: that would compile out the preconditions that turn
// a bad shape into a message naming the op (the hot loops already run over unchecked pointers).

let package = Package(
    name: "SwiftPEFT",
    products: [
        .library(name: "TensorCore", targets: ["TensorCore"]),
        .library(name: "NN", targets: ["NN"]),
        .library(name: "Formats", targets: ["Formats"]),
        .executable(name: "swiftpeft", targets: ["swiftpeft"]),
        .executable(name: "tensor-bench", targets: ["tensor-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        // System libraries: OpenBLAS (cblas.h) and HDF5 (serial), each behind a module map.
        .systemLibrary(name: "CBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CHDF5", pkgConfig: "hdf5-serial", providers: [.apt(["libhdf5-dev"])]),

        .target(name: "TensorCore", dependencies: ["CBLAS"]),
        .target(name: "NN", dependencies: ["TensorCore"]),
        .target(name: "Models", dependencies: ["NN"]),
        .target(name: "PEFT", dependencies: ["Models"]),
        .target(name: "Formats", dependencies: ["PEFT", "CHDF5"]),
        .target(name: "Training", dependencies: ["Formats"]),
        .executableTarget(
            name: "swiftpeft",
            dependencies: ["Training", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .executableTarget(name: "tensor-bench", dependencies: ["TensorCore", "CBLAS"]),
        .executableTarget(name: "tokenizer-bench", dependencies: ["Models"]),

        // Examples: short programs that use the library as a user would; built with the package.
        .executableTarget(name: "example-tensor-basics", dependencies: ["TensorCore"], path: "Examples/TensorBasics"),

        // A process that runs one op with bad shapes: preconditions are checked from outside.
        .executableTarget(name: "shape-probe", dependencies: ["TensorCore"], path: "Tests/ShapeProbe"),
        .testTarget(name: "TensorCoreTests", dependencies: ["TensorCore", "CBLAS", "shape-probe"], exclude: ["Fixtures"]),
        .testTarget(name: "ModelsTests", dependencies: ["Models", "Formats"], exclude: ["Fixtures"]),
        .testTarget(name: "FormatsTests", dependencies: ["Formats"], exclude: ["Fixtures"]),
        .testTarget(name: "TrainingTests", dependencies: ["Training"]),
        .testTarget(name: "PEFTTests", dependencies: ["PEFT", "Formats", "Training"], exclude: ["Fixtures"]),
        .testTarget(name: "CLITests", dependencies: ["Training", "swiftpeft"]),
    ]
)
