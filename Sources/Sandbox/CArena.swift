import CSandpit
import Foundation

/// Owns C memory handed to the launch spec; freed after clone3 returns (the child
/// has its own copy of the address space by then).
final class CArena {
    private var blocks: [UnsafeMutableRawPointer] = []

    func string(_ s: String) -> UnsafePointer<CChar> {
        let p = strdup(s)!
        blocks.append(UnsafeMutableRawPointer(p))
        return UnsafePointer(p)
    }

    func bytes(_ b: [UInt8]) -> UnsafePointer<CChar> {
        let p = malloc(b.count + 1)!
        b.withUnsafeBytes { if let base = $0.baseAddress { memcpy(p, base, b.count) } }
        p.storeBytes(of: 0, toByteOffset: b.count, as: UInt8.self)
        blocks.append(p)
        return UnsafePointer(p.assumingMemoryBound(to: CChar.self))
    }

    func array<T>(_ items: [T]) -> UnsafeMutablePointer<T> {
        let p = UnsafeMutablePointer<T>.allocate(capacity: max(items.count, 1))
        p.initialize(from: items, count: items.count)
        blocks.append(UnsafeMutableRawPointer(p))
        return p
    }

    /// NULL-terminated array of C strings.
    func stringArray(_ items: [String]) -> UnsafeMutablePointer<UnsafeMutablePointer<CChar>?> {
        let ptrs: [UnsafeMutablePointer<CChar>?] = items.map { UnsafeMutablePointer(mutating: string($0)) } + [nil]
        return array(ptrs)
    }

    deinit {
        for b in blocks { free(b) }
    }
}
