import Foundation
import Sandbox

/// `sandpit run --server`: one POST /execute to a running service, over its unix socket
/// (`unix:/var/lib/sandpit/sandpit.sock`) or TCP (`http://127.0.0.1:8787`), with
/// `Connection: close`. Blocking I/O on a thread of its own.
public enum Remote {
    /// A path segment for a URL (a session's id or name, a file path's parts).
    public static func segment(_ s: String) -> String {
        var allowed = CharacterSet.urlPathAllowed
        allowed.remove("/")
        return s.addingPercentEncoding(withAllowedCharacters: allowed) ?? s
    }

    /// `/sessions/{session}/files/{path}`, each part escaped.
    public static func fileURL(_ session: String, _ path: String) -> String {
        "/sessions/\(segment(session))/files/" + path.split(separator: "/").map { segment(String($0)) }.joined(separator: "/")
    }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// An answer with a status the caller did not expect: the status and the service's
    /// reason (its `detail`).
    public struct Refused: Error, CustomStringConvertible {
        public let description: String
    }

    /// The body of an answer whose status is in `expect`; any other throws `Refused`.
    public static func call(server: String, method: String, path: String, body: [UInt8] = [],
                            contentType: String = "application/json", expect: Set<Int> = [200], token: String?) async throws -> [UInt8] {
        let (status, answer) = try await request(server: server, method: method, path: path, body: body,
                                                 contentType: contentType, token: token)
        guard expect.contains(status) else {
            let obj = try? JSONSerialization.jsonObject(with: Data(answer)) as? [String: Any]
            let detail = (obj?["detail"] as? String) ?? String(decoding: answer.prefix(500), as: UTF8.self)
            throw Refused(description: "the service answered \(status): \(detail)")
        }
        return answer
    }

    /// Any request; `contentType` is the body's.
    public static func request(server: String, method: String, path: String, body: [UInt8] = [], contentType: String = "application/json",
                        token: String?) async throws -> (Int, [UInt8]) {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<(Int, [UInt8]), any Error>) in
            let t = Thread {
                do { c.resume(returning: try requestBlocking(server: server, method: method, path: path, body: body,
                                                             contentType: contentType, token: token)) } catch {
                    c.resume(throwing: error)
                }
            }
            t.start()
        }
    }

    static func connectTo(_ server: String) throws -> Int32 {
        if server.hasPrefix("unix:") {
            let path = String(server.dropFirst(5))
            let fd = UnixSocket.connect(path)
            guard fd >= 0 else { throw Failure(description: "cannot connect to \(path): \(String(cString: strerror(-fd)))") }
            return fd
        }
        guard let url = URL(string: server), url.scheme == "http", let host = url.host else {
            throw Failure(description: "--server must be unix:PATH or http://HOST:PORT, not \(server)")
        }
        let port = url.port ?? 80
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var res: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &res) == 0, let first = res else {
            throw Failure(description: "cannot resolve \(host)")
        }
        defer { freeaddrinfo(res) }
        var ai: UnsafeMutablePointer<addrinfo>? = first
        var lastErr: Int32 = 0
        while let a = ai {
            let fd = socket(a.pointee.ai_family, a.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), a.pointee.ai_protocol)
            if fd >= 0 {
                if connect(fd, a.pointee.ai_addr, a.pointee.ai_addrlen) == 0 { return fd }
                lastErr = errno
                close(fd)
            }
            ai = a.pointee.ai_next
        }
        throw Failure(description: "cannot connect to \(host):\(port): \(String(cString: strerror(lastErr)))")
    }

    static func requestBlocking(server: String, method: String, path: String, body: [UInt8], contentType: String,
                                token: String?) throws -> (Int, [UInt8]) {
        let fd = try connectTo(server)
        defer { close(fd) }
        var head = "\(method) \(path) HTTP/1.1\r\nHost: sandpit\r\nContent-Type: \(contentType)\r\n"
            + "Content-Length: \(body.count)\r\nConnection: close\r\n"
        if let token, !token.isEmpty { head += "Authorization: Bearer \(token)\r\n" }
        let request = Array((head + "\r\n").utf8) + body
        var sent = 0
        while sent < request.count {
            let n = request[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw Failure(description: "send: \(String(cString: strerror(errno)))") }
            sent += n
        }
        var data = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let n = read(fd, &buf, buf.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            data += buf[0..<n]
        }
        return try parse(data)
    }

    /// Status and body of an HTTP/1.1 response read to the end of the connection
    /// (Content-Length or chunked).
    static func parse(_ data: [UInt8]) throws -> (Int, [UInt8]) {
        let sep: [UInt8] = [13, 10, 13, 10]
        guard let end = data.indices.first(where: { data[$0...].starts(with: sep) }) else {
            throw Failure(description: "the service closed the connection without an answer")
        }
        let head = String(decoding: data[..<end], as: UTF8.self).components(separatedBy: "\r\n")
        let parts = head.first?.split(separator: " ") ?? []
        guard parts.count >= 2, let status = Int(parts[1]) else { throw Failure(description: "bad status line \(head.first ?? "")") }
        var body = Array(data[(end + 4)...])
        let chunked = head.dropFirst().contains { $0.lowercased().hasPrefix("transfer-encoding:") && $0.lowercased().contains("chunked") }
        if chunked {
            var out = [UInt8]()
            var i = 0
            while i < body.count {
                guard let lineEnd = body[i...].indices.first(where: { body[$0...].starts(with: [13, 10]) }),
                      let size = Int(String(decoding: body[i..<lineEnd], as: UTF8.self).split(separator: ";")[0], radix: 16)
                else { break }
                if size == 0 { break }
                let start = lineEnd + 2
                guard start + size <= body.count else { break }
                out += body[start..<(start + size)]
                i = start + size + 2
            }
            body = out
        }
        return (status, body)
    }
}

#if canImport(Glibc)
import Glibc
#endif
