import Dispatch
import Foundation
import Synchronization

/// A run's resolver: a UDP socket bound to 127.0.0.1:53 inside the run's network
/// namespace (its /etc/resolv.conf points there), answered from this process. It
/// knows only the names of the run's allow-list: an A question for one gets the
/// addresses resolved when the run started, any other question about one an empty
/// answer, and every other name NXDOMAIN. Nothing is forwarded anywhere.
final class DNSResponder: @unchecked Sendable {
    private let fd: Int32
    private let names: [String: [UInt32]]
    private let source: any DispatchSourceRead
    private let count = Atomic<Int64>(0)
    static let queue = DispatchQueue(label: "sandpit.dns")

    var queries: Int64 { count.load(ordering: .relaxed) }

    init?(fd: Int32, names: [String: [UInt32]]) {
        guard fd >= 0 else { return nil }
        self.fd = fd
        self.names = names
        source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: Self.queue)
        source.setEventHandler { [weak self] in self?.drain() }
        source.setCancelHandler { close(fd) }
        source.resume()
    }

    func stop() { source.cancel() }

    private func drain() {
        var buf = [UInt8](repeating: 0, count: 1500)
        for _ in 0..<64 {
            var from = sockaddr_in()
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            let n = buf.withUnsafeMutableBytes { b in
                withUnsafeMutablePointer(to: &from) { p in
                    p.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, b.baseAddress, b.count, 0, $0, &len) }
                }
            }
            guard n > 0 else { return }
            count.add(1, ordering: .relaxed)
            guard let reply = Self.answer(Array(buf[0..<n]), names: names) else { continue }
            _ = reply.withUnsafeBytes { b in
                withUnsafePointer(to: &from) { p in
                    p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, b.baseAddress, b.count, 0, $0, len) }
                }
            }
        }
    }

    /// The reply to one query; nil for what is not a query at all.
    static func answer(_ q: [UInt8], names: [String: [UInt32]]) -> [UInt8]? {
        guard q.count >= 12, q[2] & 0x80 == 0 else { return nil }  // a response: ignore
        let opcode = (q[2] >> 3) & 0xF
        let qdcount = Int(q[4]) << 8 | Int(q[5])
        func header(rcode: UInt8, answers: Int) -> [UInt8] {
            [q[0], q[1], 0x80 | (opcode << 3) | 0x04 | (q[2] & 0x01), 0x80 | rcode,
             0, qdcount == 1 ? 1 : 0, UInt8(answers >> 8), UInt8(answers & 0xFF), 0, 0, 0, 0]
        }
        guard opcode == 0, qdcount == 1 else { return header(rcode: 4, answers: 0) }  // NOTIMP
        // The question: labels, then type and class.
        var i = 12
        var labels: [String] = []
        while true {
            guard i < q.count else { return header(rcode: 1, answers: 0) }  // FORMERR
            let l = Int(q[i])
            if l == 0 { i += 1; break }
            guard l < 64, i + 1 + l <= q.count, labels.count < 128 else { return header(rcode: 1, answers: 0) }
            labels.append(String(decoding: q[(i + 1)..<(i + 1 + l)], as: UTF8.self))
            i += 1 + l
        }
        guard i + 4 <= q.count else { return header(rcode: 1, answers: 0) }
        let qtype = Int(q[i]) << 8 | Int(q[i + 1]), qclass = Int(q[i + 2]) << 8 | Int(q[i + 3])
        let question = Array(q[12..<(i + 4)])
        let name = labels.joined(separator: ".").lowercased()
        guard let addrs = names[name] else { return header(rcode: 3, answers: 0) + question }  // NXDOMAIN
        guard qtype == 1 || qtype == 255, qclass == 1 else { return header(rcode: 0, answers: 0) + question }
        var out = header(rcode: 0, answers: addrs.count) + question
        for a in addrs {
            // name: a pointer to the question's; A, IN, TTL 60, 4 bytes.
            out += [0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4,
                    UInt8(a >> 24), UInt8(a >> 16 & 0xFF), UInt8(a >> 8 & 0xFF), UInt8(a & 0xFF)]
        }
        return out
    }
}
