#if canImport(Glibc)
import Glibc
#endif

/// A file descriptor this code owns: closed exactly once, by `close()` or when its owner
/// is gone (also when an initializer throws half-way), unless given away with `take()`.
/// Used by one thread at a time (an Execution's own).
final class FD {
    private(set) var raw: Int32

    init(_ raw: Int32 = -1) { self.raw = raw }

    var isValid: Bool { raw >= 0 }

    func close() {
        if raw >= 0 { _ = Glibc.close(raw) }
        raw = -1
    }

    /// Owns `fd` instead (closing the one held before).
    func reset(_ fd: Int32) {
        close()
        raw = fd
    }

    /// Gives the descriptor away (to a pool): no longer closed here.
    func take() -> Int32 {
        defer { raw = -1 }
        return raw
    }

    deinit { close() }
}
