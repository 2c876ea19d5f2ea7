// The shared float checks (Tests/TestSupport) fail where `zip(…).max()` passed silently.
import XCTest
import TestSupport
import TensorCore
import NN
import Models
import Tokenizers
import PEFT
import Containers
import Formats
import Training

final class FloatChecksTests: XCTestCase {
    func testNaNAndLengthMismatchFail() {
        XCTAssertTrue(maxAbsDiff([1, 2], [1, 2, 3]).isNaN, "zip would compare 2 of 3 values")
        XCTAssertTrue(maxAbsDiff([1, .nan, 3], [1, 2, 3]).isNaN, "max would skip the NaN")
        XCTAssertEqual(maxAbsDiff([1, 2.5], [1, 2]), 0.5)
        XCTAssertTrue(maxAbs([0, .nan]).isNaN)
        XCTAssertTrue(maxKeepingNaN(1.0, .nan).isNaN, "Swift's max(1, nan) is 1")
        XCTAssertNotNil(closeness([1, .nan], [1, 2], rtol: 0, atol: 1).failure)
        XCTAssertNotNil(closeness([1, 2], [1, .nan], rtol: 0, atol: 1).failure)
        XCTAssertNotNil(closeness([1, 2], [1, 2, 3], rtol: 0, atol: 1).failure)
        XCTAssertNotNil(closeness([.infinity], [1e30], rtol: 1, atol: 1).failure)
        XCTAssertNil(closeness([1, .nan, -.infinity], [1.0000001, .nan, -.infinity], rtol: 1e-5, atol: 0).failure)
        XCTAssertNotNil(closeness([1.1], [1], rtol: 0.05, atol: 0).failure)
    }
}
