import Foundation
import Sandbox
import Synchronization

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
                        token: String?, headers: [(String, String)] = []) async throws -> (Int, [UInt8]) {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<(Int, [UInt8]), any Error>) in
            let t = Thread {
                do { c.resume(returning: try requestBlocking(server: server, method: method, path: path, body: body,
                                                             contentType: contentType, token: token, headers: headers)) } catch {
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
                                token: String?, headers: [(String, String)] = []) throws -> (Int, [UInt8]) {
        let fd = try connectTo(server)
        defer { close(fd) }
        try sendRequest(fd, method: method, path: path, body: body, contentType: contentType, token: token, headers: headers)
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

    static func sendRequest(_ fd: Int32, method: String, path: String, body: [UInt8], contentType: String,
                            token: String?, headers: [(String, String)]) throws {
        var head = "\(method) \(path) HTTP/1.1\r\nHost: sandpit\r\nContent-Type: \(contentType)\r\n"
            + "Content-Length: \(body.count)\r\nConnection: close\r\n"
        if let token, !token.isEmpty { head += "Authorization: Bearer \(token)\r\n" }
        for (k, v) in headers where !v.contains("\r") && !v.contains("\n") { head += "\(k): \(v)\r\n" }
        let request = Array((head + "\r\n").utf8) + body
        var sent = 0
        while sent < request.count {
            let n = request[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw Failure(description: "send: \(String(cString: strerror(errno)))") }
            sent += n
        }
    }

    /// An answer whose body arrives as it is sent (an event stream relayed from another
    /// node). `close()` ends it early; the reading thread then stops.
    public final class Stream: Sendable {
        public let status: Int
        /// The head's fields, names in lower case.
        public let headers: [String: String]
        public let body: AsyncThrowingStream<[UInt8], any Error>
        let fd: Mutex<Int32>

        init(status: Int, headers: [String: String], body: AsyncThrowingStream<[UInt8], any Error>, fd: Int32) {
            self.status = status
            self.headers = headers
            self.body = body
            self.fd = Mutex(fd)
        }

        /// Stops the reader: shuts the socket down (the reading thread closes it).
        public func close() {
            fd.withLock { if $0 >= 0 { _ = shutdown($0, Int32(SHUT_RDWR)) } }
        }

        /// Called by the reader when it is done with the socket.
        func release() {
            fd.withLock { if $0 >= 0 { Glibc.close($0); $0 = -1 } }
        }
    }

    /// Sends a request and returns once the answer's head is in; its body (chunked,
    /// Content-Length or to the end of the connection) follows in `body`, read on a
    /// thread of its own. A silent peer is given up on after `idleTimeout` seconds.
    public static func stream(server: String, method: String = "GET", path: String, headers: [(String, String)] = [],
                              body: [UInt8] = [], contentType: String = "application/json", idleTimeout: Int = 60) async throws -> Stream {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Stream, any Error>) in
            let t = Thread {
                let fd: Int32
                do {
                    fd = try connectTo(server)
                    var tv = timeval(tv_sec: idleTimeout, tv_usec: 0)
                    _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                    do {
                        try sendRequest(fd, method: method, path: path, body: body, contentType: contentType, token: nil, headers: headers)
                    } catch { close(fd); throw error }
                } catch { c.resume(throwing: error); return }
                var buf = [UInt8](repeating: 0, count: 64 << 10)
                var data = [UInt8]()
                var end: Int?
                while end == nil {
                    let n = read(fd, &buf, buf.count)
                    if n < 0 && errno == EINTR { continue }
                    if n <= 0 { close(fd); c.resume(throwing: Failure(description: "\(server) closed the connection without an answer")); return }
                    let from = max(0, data.count - 3)
                    data += buf[0..<n]
                    end = headEnd(data, from: from)
                }
                let headEnd = end!
                guard let (status, fields) = head(data[..<headEnd]) else {
                    close(fd); c.resume(throwing: Failure(description: "bad status line from \(server)")); return
                }
                let (body, out) = AsyncThrowingStream<[UInt8], any Error>.makeStream()
                let stream = Stream(status: status, headers: fields, body: body, fd: fd)
                out.onTermination = { _ in stream.close() }
                c.resume(returning: stream)
                var decoder = BodyDecoder(chunked: fields["transfer-encoding"]?.lowercased().contains("chunked") ?? false,
                                          length: fields["content-length"].flatMap { Int($0) })
                var pending = Array(data[(headEnd + 4)...])
                while true {
                    let (payload, done) = decoder.feed(pending)
                    if !payload.isEmpty { out.yield(payload) }
                    if done { break }
                    let n = read(fd, &buf, buf.count)
                    if n < 0 && errno == EINTR { continue }
                    if n <= 0 {
                        if decoder.framed { out.finish(throwing: Failure(description: "\(server) stopped in the middle of the answer")) }
                        break
                    }
                    pending = Array(buf[0..<n])
                }
                out.finish()
                stream.release()
            }
            t.start()
        }
    }

    /// An HTTP/1.1 body taken apart as it arrives: chunked, Content-Length or to the end
    /// of the connection.
    struct BodyDecoder {
        let chunked: Bool
        var length: Int?
        var buffer: [UInt8] = []
        /// Bytes still to come of the current chunk (and its CRLF) when chunked.
        var inChunk = 0
        var seen = 0

        init(chunked: Bool, length: Int?) {
            self.chunked = chunked
            self.length = chunked ? nil : length
        }

        /// Whether the body has a known end (an early close is then an error).
        var framed: Bool { chunked || length != nil }

        /// The payload in `bytes`, and whether the body is complete.
        mutating func feed(_ bytes: [UInt8]) -> ([UInt8], Bool) {
            guard chunked else {
                guard let length else { return (bytes, false) }
                let take = Array(bytes.prefix(length - seen))
                seen += take.count
                return (take, seen >= length)
            }
            buffer += bytes
            var out = [UInt8]()
            var i = 0
            while true {
                if inChunk > 0 {
                    // Payload, then the CRLF after it (inChunk counts both).
                    let avail = min(inChunk, buffer.count - i)
                    if avail == 0 { break }
                    let payloadLeft = max(0, inChunk - 2)
                    out += buffer[i..<(i + min(avail, payloadLeft))]
                    i += avail
                    inChunk -= avail
                    continue
                }
                guard let lineEnd = buffer[i...].indices.first(where: { buffer[$0...].starts(with: [13, 10]) }) else { break }
                let sizeText = String(decoding: buffer[i..<lineEnd], as: UTF8.self).split(separator: ";").first.map(String.init) ?? ""
                guard let size = Int(sizeText.trimmingCharacters(in: .whitespaces), radix: 16) else {
                    buffer = []
                    return (out, true)
                }
                i = lineEnd + 2
                if size == 0 {
                    buffer = []
                    return (out, true)
                }
                inChunk = size + 2
            }
            buffer = Array(buffer[i...])
            return (out, false)
        }
    }

    /// Status and body of an HTTP/1.1 response read to the end of the connection
    /// (Content-Length or chunked).
    static func parse(_ data: [UInt8]) throws -> (Int, [UInt8]) {
        guard let end = headEnd(data) else { throw Failure(description: "the service closed the connection without an answer") }
        guard let (status, fields) = head(data[..<end]) else {
            throw Failure(description: "bad status line \(String(decoding: data.prefix(while: { $0 != 13 }).prefix(200), as: UTF8.self))")
        }
        var decoder = BodyDecoder(chunked: fields["transfer-encoding"]?.lowercased().contains("chunked") ?? false, length: nil)
        return (status, decoder.feed(Array(data[(end + 4)...])).0)
    }

    /// Where the head of an answer ends (its blank line), looking from `from` on.
    static func headEnd(_ data: [UInt8], from: Int = 0) -> Int? {
        data.indices.dropFirst(from).first { data[$0...].starts(with: [13, 10, 13, 10]) }
    }

    /// The status and the fields (names in lower case) of an answer's head.
    static func head(_ bytes: ArraySlice<UInt8>) -> (Int, [String: String])? {
        let lines = String(decoding: bytes, as: UTF8.self).components(separatedBy: "\r\n")
        let parts = lines.first?.split(separator: " ") ?? []
        guard parts.count >= 2, let status = Int(parts[1]) else { return nil }
        var fields = [String: String]()
        for l in lines.dropFirst() {
            guard let colon = l.firstIndex(of: ":") else { continue }
            fields[l[..<colon].lowercased()] = l[l.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return (status, fields)
    }
}

#if canImport(Glibc)
import Glibc
#endif
