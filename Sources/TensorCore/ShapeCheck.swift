// Shape validation for every op. Each check throws a ShapeError that leads with the op name and
// names both shapes; the ops call them through `must`, which stops the program with that message.

/// A shape mismatch: `[op] message`, naming the shapes involved.
public struct ShapeError: Error, CustomStringConvertible, Equatable {
    public let op: String
    public let message: String
    public var description: String { "[\(op)] \(message)" }
}

/// Stops the program with `message` when `condition` is false. Unlike `precondition`, the message is
/// printed in optimized builds too, so a bad shape in a release binary still names the op and shapes.
@inline(__always)
public func check(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
                  file: StaticString = #fileID, line: UInt = #line) {
    if !condition() { fatalError(message(), file: file, line: line) }
}

/// Runs a shape check; a failure is a programming error and stops with the check's message.
@inline(__always)
func must<T>(_ body: () throws -> T) -> T {
    do { return try body() } catch { fatalError("\(error)") }
}

/// The shape checks used by the ops, public so that callers (and tests) can validate first.
public enum ShapeCheck {
    /// Normalizes a possibly negative `axis` for a tensor of `rank`.
    public static func axis(_ axis: Int, rank: Int, op: String) throws -> Int {
        let a = axis < 0 ? axis + rank : axis
        guard a >= 0 && a < rank else {
            throw ShapeError(op: op, message: "axis \(axis) is out of range for a tensor of rank \(rank)")
        }
        return a
    }

    /// numpy broadcasting of two shapes.
    public static func broadcast(_ a: [Int], _ b: [Int], op: String) throws -> [Int] {
        let n = max(a.count, b.count)
        var out = [Int](repeating: 1, count: n)
        for i in 0..<n {
            let da = i < n - a.count ? 1 : a[i - (n - a.count)]
            let db = i < n - b.count ? 1 : b[i - (n - b.count)]
            guard da == db || da == 1 || db == 1 else {
                throw ShapeError(op: op, message: "shapes \(a) and \(b) cannot be broadcast together (axis \(i): \(da) vs \(db))")
            }
            out[i] = da == 1 ? db : da
        }
        return out
    }

    /// `a` can be broadcast (expanded) to `target`.
    public static func expand(_ a: [Int], to target: [Int], op: String = "expand") throws {
        let b = try broadcast(a, target, op: op)
        guard b == target else {
            throw ShapeError(op: op, message: "shape \(a) cannot be expanded to \(target)")
        }
    }

    /// Matrix product shapes: `a` (…, M, K) and `b` (…, K, N); returns (batch, M, K, N).
    public static func matmul(_ a: [Int], _ b: [Int]) throws -> (batch: [Int], m: Int, k: Int, n: Int) {
        guard a.count >= 2, b.count >= 2 else {
            throw ShapeError(op: "matmul", message: "operands need rank ≥ 2, got \(a) and \(b)")
        }
        let (m, k) = (a[a.count - 2], a[a.count - 1])
        let (k2, n) = (b[b.count - 2], b[b.count - 1])
        guard k == k2 else {
            throw ShapeError(op: "matmul", message: "inner dimensions differ: \(a) @ \(b) (\(k) vs \(k2))")
        }
        let batch = try broadcast(Array(a.dropLast(2)), Array(b.dropLast(2)), op: "matmul")
        return (batch, m, k, n)
    }

    /// Resolves one `-1` in `to` and checks the element counts agree.
    public static func reshape(_ from: [Int], _ to: [Int]) throws -> [Int] {
        let count = from.reduce(1, *)
        var out = to
        let unknown = to.indices.filter { to[$0] == -1 }
        guard unknown.count <= 1, to.allSatisfy({ $0 >= 0 || $0 == -1 }) else {
            throw ShapeError(op: "reshape", message: "cannot reshape \(from) to \(to): at most one -1 and no other negative sizes")
        }
        if let u = unknown.first {
            let known = to.enumerated().filter { $0.offset != u }.map(\.element).reduce(1, *)
            guard known > 0, count % known == 0 else {
                throw ShapeError(op: "reshape", message: "cannot reshape \(from) (\(count) elements) to \(to)")
            }
            out[u] = count / known
        }
        guard out.reduce(1, *) == count else {
            throw ShapeError(op: "reshape", message: "cannot reshape \(from) (\(count) elements) to \(to) (\(out.reduce(1, *)) elements)")
        }
        return out
    }

    /// `perm` is a permutation of the axes of `shape`.
    public static func permute(_ shape: [Int], _ perm: [Int]) throws {
        guard perm.count == shape.count, Set(perm) == Set(0..<shape.count) else {
            throw ShapeError(op: "permute", message: "\(perm) is not a permutation of the axes of \(shape)")
        }
    }

    /// `start..<end` lies inside `axis` of `shape`.
    public static func slice(_ shape: [Int], axis: Int, start: Int, end: Int) throws -> Int {
        let a = try self.axis(axis, rank: shape.count, op: "slice")
        guard 0 <= start, start <= end, end <= shape[a] else {
            throw ShapeError(op: "slice", message: "range \(start)..<\(end) is outside axis \(a) of \(shape)")
        }
        return a
    }

    /// Shapes agree on every axis but `axis`; returns the concatenated shape.
    public static func concat(_ shapes: [[Int]], axis: Int) throws -> [Int] {
        guard let first = shapes.first else {
            throw ShapeError(op: "concat", message: "needs at least one tensor")
        }
        let a = try self.axis(axis, rank: first.count, op: "concat")
        var out = first
        for s in shapes.dropFirst() {
            guard s.count == first.count,
                  (0..<s.count).allSatisfy({ $0 == a || s[$0] == first[$0] }) else {
                throw ShapeError(op: "concat", message: "shapes \(first) and \(s) differ outside axis \(a)")
            }
            out[a] += s[a]
        }
        return out
    }

    /// A per-feature parameter (norm weight/bias) of shape [C] for an input (…, C).
    public static func feature(_ op: String, input: [Int], param: [Int], name: String) throws {
        guard let c = input.last, param == [c] else {
            throw ShapeError(op: op, message: "\(name) has shape \(param), expected [\(input.last ?? 0)] for input \(input)")
        }
    }

    /// Logits (…, V) and one target per row.
    public static func crossEntropy(logits: [Int], targets: Int) throws {
        guard logits.count >= 1, logits.dropLast().reduce(1, *) == targets else {
            throw ShapeError(op: "crossEntropy", message: "logits \(logits) need \(logits.dropLast().reduce(1, *)) targets, got \(targets)")
        }
    }
}
