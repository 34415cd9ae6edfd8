import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import Sandbox
import Testing
@testable import Service

@Suite("Service: a run on another node watched and cancelled through this one (root, real SQLite, two real HTTP servers)", .enabled(if: Env.shouldRun),
       .enabled(if: !Env.inVM, "on the host only: nothing here depends on the cgroup version"))
struct RelayTests {
    func open(_ db: String, _ name: String, beat: Duration = .milliseconds(200)) async throws -> ServiceContext {
        try await openNode(db, name, beat: beat)
    }

    func stop(_ svc: ServiceContext) async { await stopNode(svc) }

    func object(_ bytes: [UInt8]) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(bytes))) as? [String: Any] ?? [:]
    }

    /// Two nodes on one SQLite log, each behind a live HTTP server; alpha's heartbeat is
    /// written here with the address its test server got (the test framework picks the
    /// port; `serve` writes --advertise-url every beat).
    func twoNodes(_ body: @Sendable (ServiceContext, ServiceContext, String, String) async throws -> Void) async throws {
        let db = tempDB()
        defer { removeDB(db) }
        let alpha = try await open(db, "alpha", beat: .seconds(3600))
        // (beta judges alpha live within three of its own heartbeats: 15 s, so a loaded
        // machine's pauses do not make alpha look gone)
        let beta = try await open(db, "beta", beat: .seconds(5))
        try await buildApplication(alpha).test(.live) { ac in
            let alphaURL = "http://127.0.0.1:\(try #require(ac.port))"
            try await alpha.log.heartbeat({ var r = await alpha.nodeRow(); r.url = alphaURL; return r }())
            try await buildApplication(beta).test(.live) { bc in
                try await body(alpha, beta, alphaURL, "http://127.0.0.1:\(try #require(bc.port))")
            }
        }
        await stop(alpha)
        await stop(beta)
    }

    @Test func liveEventsAndCancelAreRelayedToTheOwningNode() async throws {
        try await twoNodes { alpha, beta, alphaURL, betaURL in
            let nodes = object(try await Remote.call(server: betaURL, method: "GET", path: "/nodes", token: nil))
            let a = try #require((nodes["nodes"] as? [[String: Any]])?.first { $0["name"] as? String == "alpha" })
            #expect(a["url"] as? String == alphaURL)
            #expect(openAPI.validate(nodes, path: "/nodes", method: "get", status: 200).isEmpty)

            // A run on alpha that prints for 20 s unless stopped.
            let code = "import time\nfor i in range(400):\n    print(i, flush=True); time.sleep(0.05)"
            // (a time limit beyond the default 10 s: on a loaded machine the cancel may come late)
            let body = Array(try JSONSerialization.data(withJSONObject: ["code": code, "time_limit": 120] as [String: Any]))
            let running = Task { try await Remote.request(server: alphaURL, method: "POST", path: "/execute", body: body, token: nil) }
            var id: Int64?
            for _ in 0..<200 where id == nil {
                if let live = alpha.live.all().first { id = live.rowID }
                try await Task.sleep(for: .milliseconds(25))
            }
            let run = try #require(id)
            #expect(try await beta.log.get(id: run)?.host == "alpha")

            // Its events through beta: relayed as they come.
            let stream = try await Remote.stream(server: betaURL, path: "/executions/\(run)/events")
            #expect(stream.status == 200)
            #expect(stream.headers["content-type"] == "text/event-stream")
            #expect(stream.headers["x-sandpit-node"] == "alpha")
            #expect(stream.headers["x-sandpit-relayed-by"] == "beta")
            var text = ""
            for try await chunk in stream.body {
                text += String(decoding: chunk, as: UTF8.self)
                if text.components(separatedBy: "event: stdout").count > 4 { break }
            }
            #expect(text.contains("event: started"), "\(text.prefix(300))")
            #expect(text.components(separatedBy: "event: stdout").count > 4)

            // A relayed request is not relayed again.
            let (loopStatus, loopBody) = try await Remote.request(server: betaURL, method: "GET", path: "/executions/\(run)/events",
                                                                  token: nil, headers: [("X-Sandpit-Forwarded-By", "gamma")])
            #expect(loopStatus == 409 && object(loopBody)["error"] as? String == "not_here")

            // Cancelled through beta: alpha stops it and answers the result.
            let (status, answer) = try await Remote.request(server: betaURL, method: "DELETE", path: "/executions/\(run)", token: nil)
            let result = object(answer)
            #expect(status == 200 && result["status"] as? String == "cancelled", "\(status) \(String(decoding: answer.prefix(400), as: UTF8.self))")
            #expect(openAPI.validate(result, path: "/executions/{id}", method: "delete", status: 200).isEmpty)
            // The rest of the relayed stream ends with that result.
            for try await chunk in stream.body { text += String(decoding: chunk, as: UTF8.self) }
            stream.close()
            #expect(text.contains("event: result") && text.contains("\"status\":\"cancelled\""), "\(text.suffix(600))")
            let (runStatus, runBody) = try await running.value
            #expect(runStatus == 200 && object(runBody)["status"] as? String == "cancelled")
            #expect(try await beta.log.get(id: run)?.status == "cancelled")

            // A node whose address answers nothing: 502, and the row is untouched.
            let orphan = try await alpha.log.begin(code: "pass", name: "orphan", containerID: "c-relay-orphan", labels: [:], queuedAt: Date(), startedAt: Date())
            try await alpha.log.heartbeat({ var r = await alpha.nodeRow(); r.url = "http://127.0.0.1:1"; return r }())
            let (gone, goneBody) = try await Remote.request(server: betaURL, method: "GET", path: "/executions/\(orphan)/events", token: nil)
            #expect(gone == 502 && object(goneBody)["error"] as? String == "node_unreachable")
            #expect(openAPI.validate(object(goneBody), path: "/executions/{id}/events", method: "get", status: 502).isEmpty)
            let (gone2, _) = try await Remote.request(server: betaURL, method: "DELETE", path: "/executions/\(orphan)", token: nil)
            #expect(gone2 == 502)
            #expect(try await beta.log.get(id: orphan)?.status == "running")
            // alpha stopped: not live, so its running row is not relayed (409 as before).
            try await alpha.log.nodeStopped(name: "alpha", at: Date())
            let (stopped, stoppedBody) = try await Remote.request(server: betaURL, method: "DELETE", path: "/executions/\(orphan)", token: nil)
            #expect(stopped == 409 && object(stoppedBody)["error"] as? String == "not_here")
        }
    }

    @Test func aSessionOnAnotherNodeIsUsedThroughThisOne() async throws {
        try await twoNodes { alpha, beta, alphaURL, betaURL in
            let created = object(try await Remote.call(server: alphaURL, method: "POST", path: "/sessions", body: Array(#"{"name": "nb"}"#.utf8),
                                                       expect: [201], token: nil))
            let sid = try #require(created["id"] as? String)
            // State kept across executions made through beta, on alpha's interpreter.
            let (s1, _) = try await Remote.request(server: betaURL, method: "POST", path: "/sessions/\(sid)/execute", body: Array(#"{"code": "x = 41"}"#.utf8), token: nil)
            #expect(s1 == 200)
            let (s2, b2) = try await Remote.request(server: betaURL, method: "POST", path: "/sessions/\(sid)/execute", body: Array(#"{"code": "print(x + 1)"}"#.utf8), token: nil)
            let r2 = object(b2)
            #expect(s2 == 200 && r2["output"] as? String == "42\n", "\(s2) \(String(decoding: b2.prefix(300), as: UTF8.self))")
            #expect(openAPI.validate(r2, path: "/sessions/{id}/execute", method: "post", status: 200).isEmpty)
            // A file put through beta is read on alpha, and back through beta.
            let (s3, _) = try await Remote.request(server: betaURL, method: "PUT", path: "/sessions/\(sid)/files/data/in.txt", body: Array("hello".utf8),
                                                   contentType: "application/octet-stream", token: nil)
            #expect(s3 == 200 || s3 == 201)
            let (s4, b4) = try await Remote.request(server: alphaURL, method: "POST", path: "/sessions/\(sid)/execute",
                                                    body: Array(#"{"code": "print(open('/work/data/in.txt').read()[::-1])"}"#.utf8), token: nil)
            #expect(s4 == 200 && object(b4)["output"] as? String == "olleh\n")
            let (s5, b5) = try await Remote.request(server: betaURL, method: "GET", path: "/sessions/\(sid)/files/data/in.txt", token: nil)
            #expect(s5 == 200 && b5 == Array("hello".utf8))
            // A name is this node's own: beta does not know alpha's "nb".
            let (s6, b6) = try await Remote.request(server: betaURL, method: "GET", path: "/sessions/nb", token: nil)
            #expect(s6 == 404 && object(b6)["error"] as? String == "session_not_found")
            // Deleted through beta: ended on alpha, its row says so.
            let (s7, b7) = try await Remote.request(server: betaURL, method: "DELETE", path: "/sessions/\(sid)", token: nil)
            #expect(s7 == 200 && object(b7)["state"] as? String == "closed", "\(s7) \(String(decoding: b7.prefix(300), as: UTF8.self))")
            #expect(alpha.sessionCount == 0)
            let (s8, _) = try await Remote.request(server: betaURL, method: "POST", path: "/sessions/\(sid)/execute", body: Array(#"{"code": "1"}"#.utf8), token: nil)
            #expect(s8 == 404)
        }
    }

    @Test func bodyDecoderTakesChunksApartAcrossAnySplit() {
        let payload = Array("event: stdout\ndata: {\"data\":\"0\\n\"}\n\n".utf8)
        var wire = [UInt8]()
        for part in [payload, Array("x".utf8), payload] {
            wire += Array((String(part.count, radix: 16) + ";ext=1\r\n").utf8) + part + [13, 10]
        }
        wire += Array("0\r\n\r\n".utf8)
        let want = payload + Array("x".utf8) + payload
        for split in 0...wire.count {
            var d = Remote.BodyDecoder(chunked: true, length: nil)
            let (a, doneA) = d.feed(Array(wire[..<split]))
            let (b, doneB) = doneA ? ([], true) : d.feed(Array(wire[split...]))
            #expect(a + b == want, "split at \(split)")
            #expect(doneB, "split at \(split)")
        }
        // Byte by byte.
        var d = Remote.BodyDecoder(chunked: true, length: nil)
        var out = [UInt8]()
        var done = false
        for byte in wire where !done {
            let (p, end) = d.feed([byte])
            out += p
            done = end
        }
        #expect(out == want && done)
        // Content-Length: stops at the length; without one, to the end of the connection.
        var fixed = Remote.BodyDecoder(chunked: false, length: 5)
        #expect(fixed.feed(Array("abc".utf8)) == (Array("abc".utf8), false))
        #expect(fixed.feed(Array("defg".utf8)) == (Array("de".utf8), true))
        var open = Remote.BodyDecoder(chunked: false, length: nil)
        #expect(open.feed(Array("abc".utf8)) == (Array("abc".utf8), false))
        #expect(!open.framed && fixed.framed)
    }
}
