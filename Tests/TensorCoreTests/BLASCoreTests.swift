// The choice of OpenBLAS core from the CPU's flags and the environment (the re-exec itself is
// checked end to end in CLITests.testInfoNamesTheBLASCoreAndWhy).

import TensorCore
import XCTest

final class BLASCoreTests: XCTestCase {
    let avx512: Set<String> = ["sse2", "avx", "avx2", "fma", "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx512_bf16"]
    let avx2: Set<String> = ["sse2", "avx", "avx2", "fma"]

    func testAnSSEFallbackOnAnAVX512CPUBecomesSkylakeX() {
        guard case .switchTo(let core, let reason) = BLASCore.decide(current: "Prescott", flags: avx512, environment: [:]) else {
            return XCTFail("Prescott on an AVX-512 CPU should be replaced")
        }
        XCTAssertEqual(core, "SkylakeX")
        XCTAssertTrue(reason.contains("Prescott") && reason.contains("AVX-512"), reason)
    }

    func testAnSSEFallbackOnAnAVX2CPUBecomesHaswell() {
        XCTAssertEqual(BLASCore.decide(current: "Nehalem", flags: avx2, environment: [:]),
                       .switchTo(core: "Haswell", reason: "chosen by SwiftPEFT: OpenBLAS picked Nehalem, a generic SSE kernel, on a CPU with AVX2"))
    }

    func testAValueTheEnvironmentSetIsNeverOverridden() {
        guard case .keep(let reason) = BLASCore.decide(current: "Prescott", flags: avx512, environment: ["OPENBLAS_CORETYPE": "Prescott"]) else {
            return XCTFail("OPENBLAS_CORETYPE set by the user must be kept")
        }
        XCTAssertTrue(reason.contains("OPENBLAS_CORETYPE=Prescott"), reason)
    }

    func testOpenBLASsOwnVectorChoicesAreKept() {
        for core in ["Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids", "SomeFutureCore"] {
            XCTAssertEqual(BLASCore.decide(current: core, flags: avx512, environment: [:]), .keep(reason: "OpenBLAS's own choice"), core)
        }
    }

    func testNoSwitchWithoutVectorUnitsOrWhenDisabled() {
        XCTAssertEqual(BLASCore.decide(current: "Prescott", flags: ["sse2", "sse3"], environment: [:]), .keep(reason: "OpenBLAS's own choice"))
        guard case .keep = BLASCore.decide(current: "Prescott", flags: avx512, environment: ["SWIFTPEFT_BLAS_AUTO": "0"]) else {
            return XCTFail("SWIFTPEFT_BLAS_AUTO=0 keeps OpenBLAS's choice")
        }
    }

    func testFlagsAreReadFromCpuinfo() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2 fma avx512f\nbugs\t\t: spectre\n"
        XCTAssertEqual(BLASCore.cpuFlags(cpuinfo: text), ["fpu", "sse2", "avx2", "fma", "avx512f"])
        XCTAssertEqual(BLASCore.cpuFlags(cpuinfo: "no flags here"), [])
        XCTAssertFalse(BLASCore.current.isEmpty)
    }
}
