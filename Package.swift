// swift-tools-version:5.10
// SwiftPEFT: parameter-efficient fine-tuning of decoder-only language models on the CPU.
// Layers point one way: TensorCore → NN → Models → PEFT → Formats → Training → SwiftPEFT → swiftpeft (CLI);
// Distributed (MPI ranks and all-reduces) stands alone and feeds Training;
// Serving (Training + Hummingbird) feeds the CLI's `serve`;
// Tokenizers stand alone and Containers (tensor files) need only TensorCore; both feed Formats.
import Foundation
import PackageDescription

// The numeric kernels (TensorCore, NN) build with -Ounchecked in release: overflow checks on index
// arithmetic stop their loops from vectorizing (softmax, GELU, cross-entropy ran 2× slower with -O).
// Shape errors still print their message: they go through check(), which calls fatalError.
// They also build for the CPU at hand (-target-cpu native: AVX2/AVX-512 and FMA where present;
// Swift on Linux otherwise targets baseline x86-64, SSE2). SWIFTPEFT_PORTABLE=1 builds them for the
// baseline instead, for a binary that must run on other CPUs (scripts/test checks both).
let portable = ProcessInfo.processInfo.environment["SWIFTPEFT_PORTABLE"] == "1"
// LLVM's x86 tuning keeps its auto-vectorized loops to 256-bit registers even on AVX-512 CPUs
// ("prefer-256-bit"); the kernels turn that off, so exp, softmax and the other elementwise loops
// run 16 lanes wide where the CPU has AVX-512 (no change on AVX2-only CPUs).
#if arch(x86_64)
let wideVectors = ["-Xcc", "-Xclang", "-Xcc", "-target-feature", "-Xcc", "-Xclang", "-Xcc", "-prefer-256-bit"]
#else
let wideVectors: [String] = []
#endif
// Whether the CPU at hand has fused multiply-add (arm64 always does; x86-64 says so in
// /proc/cpuinfo's flags): the kernels' polynomials (exp) then use it (SWIFTPEFT_FMA). Without it,
// Float.addingProduct would be a call to fmaf per value.
#if arch(arm64)
let hostFMA = true
#else
let hostFMA = ((try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? "").contains(" fma ")
#endif
let kernels: [SwiftSetting] = [.unsafeFlags(["-Ounchecked"] + (portable ? [] : ["-target-cpu", "native"] + wideVectors),
                                            .when(configuration: .release))]
    + (portable ? [] : [.define("SWIFTPEFT_NATIVE", .when(configuration: .release))])
    + (portable || !hostFMA ? [] : [.define("SWIFTPEFT_FMA", .when(configuration: .release))])

// The file readers (Containers) build for the CPU at hand too, for GGUF's block decoders, but keep
// -O: their parsers' overflow checks stay.
let nativeISA: [SwiftSetting] = portable ? [] : [.unsafeFlags(["-target-cpu", "native"], .when(configuration: .release)),
                                                 .define("SWIFTPEFT_NATIVE", .when(configuration: .release))]

let package = Package(
    name: "SwiftPEFT",
    products: [
        // The library: `import SwiftPEFT` for everything, or one layer at a time.
        .library(name: "SwiftPEFT", targets: ["SwiftPEFT"]),
        .library(name: "TensorCore", targets: ["TensorCore"]),
        .library(name: "NN", targets: ["NN"]),
        .library(name: "Models", targets: ["Models"]),
        .library(name: "Tokenizers", targets: ["Tokenizers"]),
        .library(name: "PEFT", targets: ["PEFT"]),
        .library(name: "Containers", targets: ["Containers"]),
        .library(name: "Formats", targets: ["Formats"]),
        .library(name: "Distributed", targets: ["Distributed"]),
        .library(name: "Training", targets: ["Training"]),
        .library(name: "Serving", targets: ["Serving"]),
        .executable(name: "swiftpeft", targets: ["swiftpeft"]),
        .executable(name: "tensor-bench", targets: ["tensor-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        // The HTTP server of `swiftpeft serve` (OpenAI-compatible API, Prometheus metrics).
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        // NIOCore for the server's one channel handler (it sees a client hang up); Hummingbird's own NIO.
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.3"),
    ],
    targets: [
        // System libraries: OpenBLAS (cblas.h; LAPACK's routines, which OpenBLAS bundles) and HDF5
        // (serial), each behind a module map.
        .systemLibrary(name: "CBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CLAPACK", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CHDF5", pkgConfig: "hdf5-serial", providers: [.apt(["libhdf5-dev"])]),
        // Open MPI, for data-parallel training under mpirun.
        .systemLibrary(name: "CMPI", pkgConfig: "ompi", providers: [.apt(["libopenmpi-dev"])]),
        // zlib and Zstandard, for Parquet pages compressed with GZIP or ZSTD (polars' default).
        .systemLibrary(name: "CCompression", providers: [.apt(["zlib1g-dev", "libzstd-dev", "liblz4-dev"])]),
        // oneDNN, for bf16 copies of frozen weights in decoding (`Tensor.keepBF16Copy`).
        .systemLibrary(name: "CDNNL", providers: [.apt(["libdnnl-dev"])]),

        // The layers, each importing only the ones below it (docs/architecture.md).
        // FMA chains in vector registers for the FMA peak reports cite (C intrinsics, each function
        // built for its instruction set, so any x86-64 build links it).
        .target(name: "CFMAProbe"),
        .target(name: "TensorCore", dependencies: ["CBLAS", "CDNNL", "CFMAProbe"], swiftSettings: kernels),
        .target(name: "NN", dependencies: ["TensorCore"], swiftSettings: kernels),
        .target(name: "Models", dependencies: ["NN"]),
        .target(name: "Tokenizers"),
        .target(name: "PEFT", dependencies: ["Models", "CLAPACK"]),
        // Files of named tensors (HDF5, safetensors, GGUF): they need tensors, nothing of models.
        .target(name: "Containers", dependencies: ["TensorCore", "CHDF5", "CCompression"], swiftSettings: nativeISA),
        // Models, tokenizers and adapters in and out of those files and Hugging Face folders.
        .target(name: "Formats", dependencies: ["PEFT", "Tokenizers", "Containers"]),
        // Ranks of a data-parallel job and their all-reduces (MPI); a world of one without mpirun.
        .target(name: "Distributed", dependencies: ["CMPI"]),
        .target(name: "Training", dependencies: ["Formats", "Distributed"]),
        .target(name: "SwiftPEFT", dependencies: ["Training"]),
        // Serving: base + adapters behind an OpenAI-compatible HTTP API, batching requests across adapters.
        .target(name: "Serving", dependencies: ["Training", .product(name: "Hummingbird", package: "hummingbird"),
                                                .product(name: "Prometheus", package: "swift-prometheus"),
                                                .product(name: "NIOCore", package: "swift-nio")]),
        .executableTarget(
            name: "swiftpeft",
            dependencies: ["SwiftPEFT", "Serving", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .executableTarget(name: "tensor-bench", dependencies: ["TensorCore", "CBLAS"]),
        .executableTarget(name: "tokenizer-bench", dependencies: ["Tokenizers"]),
        .executableTarget(name: "template-check", dependencies: ["Tokenizers"]),
        // A seeded mutation fuzzer for every reader (scripts/reliability runs it).
        .executableTarget(name: "fuzz-parsers", dependencies: ["SwiftPEFT", "Serving"]),

        // Examples: short programs that use the library as a user would; built with the package and
        // run at tiny size by ExamplesTests.
        .executableTarget(name: "example-tensor-basics", dependencies: ["TensorCore"], path: "Examples/TensorBasics"),
        .executableTarget(name: "example-train-lora", dependencies: ["SwiftPEFT"], path: "Examples/TrainLoRA"),
        .executableTarget(name: "example-compare-methods", dependencies: ["SwiftPEFT"], path: "Examples/CompareMethods"),
        .executableTarget(name: "example-merge-export", dependencies: ["SwiftPEFT"], path: "Examples/MergeAndExport"),
        .executableTarget(name: "example-backtest", dependencies: ["SwiftPEFT"], path: "Examples/BacktestVersions"),
        .executableTarget(name: "example-serve-in-app", dependencies: ["SwiftPEFT", "Serving"], path: "Examples/ServeInApp"),

        // A process that runs one op with bad shapes: preconditions are checked from outside.
        .executableTarget(name: "shape-probe", dependencies: ["TensorCore"], path: "Tests/ShapeProbe"),
        // Float comparisons that fail on NaN and on length mismatch, shared by every test target.
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        .testTarget(name: "TensorCoreTests", dependencies: ["TensorCore", "CBLAS", "shape-probe", "TestSupport"], exclude: ["Fixtures"]),
        .testTarget(name: "ModelsTests", dependencies: ["Models", "Formats", "TestSupport"], exclude: ["Fixtures"]),
        .testTarget(name: "TokenizersTests", dependencies: ["Tokenizers"], exclude: ["Fixtures"]),
        .testTarget(name: "FormatsTests", dependencies: ["Formats", "Training", "CHDF5", "TestSupport"], exclude: ["Fixtures"]),
        .testTarget(name: "TrainingTests", dependencies: ["Training", "TestSupport"], exclude: ["Fixtures"]),
        .testTarget(name: "PEFTTests", dependencies: ["PEFT", "Formats", "Training", "TestSupport"], exclude: ["Fixtures"]),
        .testTarget(name: "CLITests", dependencies: ["SwiftPEFT", "swiftpeft", "TestSupport"]),
        .testTarget(name: "ServingTests", dependencies: ["SwiftPEFT", "Serving", "TestSupport"]),
        .testTarget(name: "ExamplesTests", dependencies: ["SwiftPEFT", "example-tensor-basics", "example-train-lora",
                                                          "example-compare-methods", "example-merge-export",
                                                          "example-backtest", "example-serve-in-app"]),
        // A method defined only in the test target goes through every generic path (the registry's proof).
        .testTarget(name: "MethodRegistryTests", dependencies: ["SwiftPEFT", "swiftpeft", "TestSupport"]),
    ]
)
