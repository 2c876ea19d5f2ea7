// swift-tools-version:5.10
// SwiftPEFT: parameter-efficient fine-tuning of decoder-only language models on the CPU.
// Layers point one way: TensorCore → NN → Models → PEFT → Formats → Training → swiftpeft (CLI).
import Foundation
import PackageDescription

// The numeric kernels (TensorCore, NN) build with -Ounchecked in release: overflow checks on index
// arithmetic stop their loops from vectorizing (softmax, GELU, cross-entropy ran 2× slower with -O).
// Shape errors still print their message: they go through check(), which calls fatalError.
// They also build for the CPU at hand (-target-cpu native: AVX2/AVX-512 and FMA where present;
// Swift on Linux otherwise targets baseline x86-64, SSE2). SWIFTPEFT_PORTABLE=1 builds them for the
// baseline instead, for a binary that must run on other CPUs (scripts/test checks both).
let portable = ProcessInfo.processInfo.environment["SWIFTPEFT_PORTABLE"] == "1"
let kernels: [SwiftSetting] = [.unsafeFlags(["-Ounchecked"] + (portable ? [] : ["-target-cpu", "native"]),
                                            .when(configuration: .release))]
    + (portable ? [] : [.define("SWIFTPEFT_NATIVE", .when(configuration: .release))])

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

        .target(name: "TensorCore", dependencies: ["CBLAS"], swiftSettings: kernels),
        .target(name: "NN", dependencies: ["TensorCore"], swiftSettings: kernels),
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
        // Float comparisons that fail on NaN and on length mismatch, shared by every test target.
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        .testTarget(name: "TensorCoreTests", dependencies: ["TensorCore", "CBLAS", "shape-probe", "TestSupport"], exclude: ["Fixtures"]),
        .testTarget(name: "ModelsTests", dependencies: ["Models", "Formats", "TestSupport"], exclude: ["Fixtures"]),
        .testTarget(name: "FormatsTests", dependencies: ["Formats", "TestSupport"], exclude: ["Fixtures"]),
        .testTarget(name: "TrainingTests", dependencies: ["Training", "TestSupport"]),
        .testTarget(name: "PEFTTests", dependencies: ["PEFT", "Formats", "Training", "TestSupport"], exclude: ["Fixtures"]),
        .testTarget(name: "CLITests", dependencies: ["Training", "swiftpeft", "TestSupport"]),
        // A method defined only in the test target goes through every generic path (the registry's proof).
        .testTarget(name: "MethodRegistryTests", dependencies: ["Training", "swiftpeft", "TestSupport"]),
    ]
)
