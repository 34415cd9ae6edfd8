import Foundation
import Testing
@testable import Service
#if canImport(Glibc)
import Glibc
#endif

/// sd_notify through a real unix datagram socket, named by a path and by an abstract name.
@Suite struct SystemdNotifyTests {
    /// Binds a datagram socket at `name` (`@...` = abstract) and returns it.
    func listen(_ name: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        try #require(fd >= 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(name.utf8)
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
        let len = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
        let r = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        try #require(r == 0, "bind \(name): errno \(errno)")
        return fd
    }

    func receive(_ fd: Int32) -> String {
        var buf = [UInt8](repeating: 0, count: 256)
        let n = recv(fd, &buf, buf.count, Int32(MSG_DONTWAIT))
        return n > 0 ? String(decoding: buf[0..<n], as: UTF8.self) : ""
    }

    @Test func sendsToAPathAndToAnAbstractName() throws {
        let path = NSTemporaryDirectory() + "sandpit-notify-\(getpid())"
        unlink(path)
        let a = try listen(path)
        defer { close(a); unlink(path) }
        #expect(SystemdNotify.send("READY=1", environment: ["NOTIFY_SOCKET": path]))
        #expect(receive(a) == "READY=1")

        let abstract = "@sandpit-notify-\(getpid())"
        let b = try listen(abstract)
        defer { close(b) }
        #expect(SystemdNotify.send("STOPPING=1", environment: ["NOTIFY_SOCKET": abstract]))
        #expect(receive(b) == "STOPPING=1")
    }

    @Test func outsideSystemdItDoesNothing() {
        #expect(!SystemdNotify.send("READY=1", environment: [:]))
        #expect(!SystemdNotify.send("READY=1", environment: ["NOTIFY_SOCKET": "/nonexistent/socket"]))
    }
}
