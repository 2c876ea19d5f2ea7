import XCTest
@testable import Formats

final class HDF5Tests: XCTestCase {
    func testPlaceholder() {}
}
