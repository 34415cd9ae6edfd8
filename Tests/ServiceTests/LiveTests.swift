import CgroupKit
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Sandbox
import Testing
@testable import Service

/// One Server-Sent Event as a client received it, with when it arrived.
struct SSEEvent {
    var id: Int
    var name: String
    var data: String
    var at: Double
    var object: [String: Any] { (try? JSONSerialization.jsonObject(with: Data(data.utf8)) as? [String: Any]) ?? [:] }
}

/// What an SSE exchange gave: the status and head, and the events in arrival order.
struct SSEStream {
    var status: Int
    var head: String
    var events: [SSEEvent]
    var comments = 0
    func named(_ n: String) -> [SSEEvent] { events.filter { $0.name == n } }
}

/// A real SSE client on a raw socket: sends the request, de-chunks the body, parses
/// events as they arrive; `stopAfter` may end the exchange early (a client leaving).
func sseExchange(port: Int, _ method: String, _ path: String, body: String = "", headers: String = "",
                 timeout: Double = 60, stopAfter: (@Sendable ([SSEEvent]) -> Bool)? = nil) async -> SSEStream {
    await withCheckedContinuation { cont in
        Thread.detachNewThread {
            let t0 = Date()
            let (fd, _) = connectLoopback(port)
            defer { close(fd) }
            var tv = timeval(tv_sec: Int(timeout), tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            let req = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\(headers)Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
            _ = req.withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
            var raw = [UInt8](), buf = [UInt8](repeating: 0, count: 65536)
            var head: String?
            var chunked = false
            var body = [UInt8]()  // de-chunked
            var out = SSEStream(status: 0, head: "", events: [])
            var pending = ""  // body text not yet parsed into events
            func parse() {
                pending += String(decoding: body, as: UTF8.self)
                body = []
                while let r = pending.range(of: "\n\n") {
                    let block = pending[..<r.lowerBound]
                    pending = String(pending[r.upperBound...])
                    var e = SSEEvent(id: 0, name: "message", data: "", at: Date().timeIntervalSince(t0))
                    var comment = false
                    for line in block.split(separator: "\n", omittingEmptySubsequences: false) {
                        if line.hasPrefix(":") { comment = true }
                        else if line.hasPrefix("id: ") { e.id = Int(line.dropFirst(4)) ?? -1 }
                        else if line.hasPrefix("event: ") { e.name = String(line.dropFirst(7)) }
                        else if line.hasPrefix("data: ") { e.data = String(line.dropFirst(6)) }
                    }
                    if comment && e.data.isEmpty { out.comments += 1 } else { out.events.append(e) }
                }
            }
            loop: while true {
                let n = recv(fd, &buf, buf.count, 0)
                if n <= 0 { break }
                raw += buf[0..<n]
                if head == nil, let r = raw.firstRange(of: Array("\r\n\r\n".utf8)) {
                    let h = String(decoding: raw[..<r.lowerBound], as: UTF8.self)
                    head = h
                    out.head = h
                    out.status = Int(h.split(separator: " ").dropFirst().first ?? "") ?? 0
                    chunked = h.lowercased().contains("transfer-encoding: chunked")
                    raw.removeSubrange(..<r.upperBound)
                }
                guard head != nil else { continue }
                if chunked {
                    while let r = raw.firstRange(of: Array("\r\n".utf8)) {
                        guard let size = Int(String(decoding: raw[..<r.lowerBound], as: UTF8.self), radix: 16) else { break loop }
                        guard raw.count >= r.upperBound + size + 2 else { break }
                        body += raw[r.upperBound..<(r.upperBound + size)]
                        raw.removeSubrange(..<(r.upperBound + size + 2))
                        if size == 0 { parse(); break loop }
                    }
                } else {
                    body += raw
                    raw = []
                }
                parse()
                if let stop = stopAfter, stop(out.events) { break }
            }
            if !chunked { out.head += "\r\n\r\n" + String(decoding: body, as: UTF8.self) + pending }
            cont.resume(returning: out)
        }
    }
}

func liveCgroups(_ containerID: String) throws -> [String] {
    try Cgroups.shared().parentDirectories.flatMap { SysFile.list($0) }.filter { $0.hasSuffix(containerID) }
}

@Suite("Service: live runs — streaming, samples, watch, cancel (root, real server and cgroups)", .enabled(if: Env.shouldRun), .serialized)
struct LiveRunTests {
    /// Each event's data conforms to its schema in openapi.json.
    func conforms(_ s: SSEStream) {
        let schemas = ["started": "StartedEvent", "stdout": "OutputEvent", "stderr": "OutputEvent", "sample": "LiveSample",
                       "limit": "LimitEvent", "result": "ExecutionResult", "metric": "CustomPoint"]
        for e in s.events {
            guard let name = schemas[e.name] else { Issue.record("undocumented event \(e.name)"); continue }
            let problems = openAPI.validate(e.object, against: ["$ref": "#/components/schemas/\(name)"], at: "$")
            #expect(problems.isEmpty, "\(e.name): \(problems)")
        }
    }

    @Test func outputStreamsAsItIsWrittenAndTheResultIsLast() async throws {
        try #require(Env.isRoot, "privileged test run without root")
        try await withService { client, _ in
            let port = try #require(client.port)
            let code = "import sys, time\nfor i in range(20):\n    print('line', i, flush=True)\n    time.sleep(0.1)\n"
                + "sys.stdout.buffer.write(b'bad \\xff\\xfe bytes\\n'); sys.stdout.flush()\nprint('caf\\u00e9', file=sys.stderr)"
            let body = #"{"code": \#(jsonString(code)), "stream": true, "sample_interval": 0.1, "time_limit": \#(min(300, 30 * Env.slow))}"#
            let s = await sseExchange(port: port, "POST", "/execute", body: body)
            #expect(s.status == 200 && s.head.lowercased().contains("content-type: text/event-stream"), "\(s.head)")
            conforms(s)
            #expect(s.events.first?.name == "started" && s.events.last?.name == "result")
            #expect(s.events.map(\.id) == Array(0..<s.events.count).map { $0 + 1 }, "ids count up from 1")
            let rowID = try #require(s.events.first?.object["id"] as? Int)
            #expect(s.head.contains("X-Execution-Id: \(rowID)"))
            let lines = s.named("stdout").filter { $0.object["data"] != nil }
            #expect(lines.count >= 15, "\(lines.count) stdout events")
            let spread = (lines.last?.at ?? 0) - (lines.first?.at ?? 0)
            #expect(spread >= 1.5, "stdout events arrived over \(spread) s")
            print("streaming: \(lines.count) stdout events over \(String(format: "%.2f", spread)) s, \(s.named("sample").count) samples")
            // Invalid UTF-8 comes as base64; all chunks together are the output, byte for byte.
            let b64 = s.named("stdout").compactMap { $0.object["data_base64"] as? String }
            #expect(b64.count == 1)
            var bytes = [UInt8]()
            for e in s.named("stdout") {
                if let t = e.object["data"] as? String { bytes += Array(t.utf8) }
                if let b = e.object["data_base64"] as? String, let d = Data(base64Encoded: b) { bytes += Array(d) }
            }
            let result = try #require(s.events.last?.object)
            #expect(String(decoding: bytes, as: UTF8.self) == result["output"] as? String)
            #expect(bytes.suffix(12) == Array("bad ".utf8) + [0xff, 0xfe] + Array(" bytes\n".utf8) || bytes.count > 0)
            #expect(Array(bytes).firstRange(of: [0xff, 0xfe]) != nil, "raw bytes arrive unreplaced")
            #expect(s.named("stderr").compactMap { $0.object["data"] as? String }.joined() == "café\n")
            #expect(result["status"] as? String == "ok")
            // The log has the run like any other.
            let row = try await httpRequest(port: port, "GET", "/executions/\(rowID)")
            #expect((try? JSONSerialization.jsonObject(with: Data(row.1.utf8)) as? [String: Any])?["status"] as? String == "ok")
            // Samples: time order, the last one after the end agreeing with the result.
            let samples = s.named("sample").map(\.object)
            #expect(samples.count >= 10, "\(samples.count) samples at 0.1 s over 2 s")
            let last = try #require(samples.last)
            #expect((last["memory_peak"] as? Int) == (result["memory_peak"] as? Int))
            #expect((last["elapsed"] as? Double).map { abs($0 - (result["execution_time"] as? Double ?? -1)) < 1e-5 } == true)
        }
    }

    @Test func samplesFollowMemoryAndCPU() async throws {
        try #require(Env.isRoot, "privileged test run without root")
        try await withService { client, _ in
            let port = try #require(client.port)
            // Memory in four 24 MiB steps, each announced on stdout; then a 1.5 s busy loop
            // between two markers. Windows come from the events' order, not from timing
            // (the VM runs python much slower).
            let code = "import time\nblocks = []\nfor i in range(4):\n    blocks.append(bytearray(24 << 20))\n"
                + "    print('step', i + 1, flush=True)\n    time.sleep(0.4)\n"
                + "print('busy', flush=True)\nt = time.time()\nwhile time.time() - t < 1.5: pass\nprint('done', flush=True)\ntime.sleep(0.2)"
            let body = #"{"code": \#(jsonString(code)), "sample_interval": 0.1, "time_limit": \#(min(300, 60 * Env.slow))}"#
            let s = await sseExchange(port: port, "POST", "/execute", body: body, headers: "Accept: text/event-stream\r\n")
            conforms(s)
            let result = try #require(s.events.last?.object)
            #expect(result["status"] as? String == "ok")
            // The samples between "step k" and the next line hold at least k blocks.
            // (Unbuffered python writes a print's parts separately: lines are put together.)
            var phase = "", text = "", minimum: [String: Int] = [:], busy: [Double] = []
            for e in s.events {
                if e.name == "stdout", let chunk = e.object["data"] as? String {
                    text += chunk
                    if let last = text.split(separator: "\n").last, text.hasSuffix("\n") { phase = String(last) }
                }
                guard e.name == "sample" else { continue }
                let o = e.object
                if phase.hasPrefix("step"), let u = o["memory_usage"] as? Int { minimum[phase] = min(minimum[phase] ?? .max, u) }
                if phase == "busy", let p = o["cpu_percent"] as? Double { busy.append(p) }
            }
            for k in 1...4 {
                let low = try #require(minimum["step \(k)"], "samples during step \(k)")
                #expect(low >= k * (24 << 20), "step \(k): memory_usage \(low) < \(k) × 24 MiB")
                #expect(low < k * (24 << 20) + (40 << 20), "step \(k): memory_usage \(low) far above \(k) × 24 MiB")
            }
            let usage = s.named("sample").compactMap { $0.object["memory_usage"] as? Int }
            #expect((usage.first ?? .max) < 30 << 20, "usage starts low: \(usage.prefix(3))")
            #expect(s.named("sample").last?.object["memory_peak"] as? Int == result["memory_peak"] as? Int)
            #expect((result["memory_peak"] as? Int ?? 0) >= 96 << 20)
            // Busy loop: ~100 % of one core in the samples taken during it (the first one
            // may straddle its start).
            #expect(busy.count >= 5, "\(busy.count) samples in the busy loop")
            let median = busy.dropFirst().sorted()[busy.dropFirst().count / 2]
            print("samples: memory_usage \(usage.min() ?? 0)...\(usage.max() ?? 0), busy-loop cpu_percent median \(median)")
            #expect(median > 70 && median < 130, "busy-loop cpu_percent median \(median): \(busy)")
        }
    }

    @Test func watchersSeeTheSameRunAndDeleteCancelsIt() async throws {
        try #require(Env.isRoot, "privileged test run without root")
        try await withService { client, svc in
            let port = try #require(client.port)
            let body = #"{"code": "print('go', flush=True)\nwhile True: pass", "stream": true, "sample_interval": 0.1, "time_limit": 120, "cpu_limit": 120}"#
            let streamer = Task { await sseExchange(port: port, "POST", "/execute", body: body) }
            var rowID: Int64 = 0
            for _ in 0..<Int(400 * Env.slow) {
                if let r = svc.live.all().first, r.events.started != nil { rowID = r.rowID; break }
                try await Task.sleep(for: .milliseconds(20))
            }
            try #require(rowID > 0, "the run started")
            let containerID = try #require(svc.live.get(rowID)?.containerID)
            let enoughSamples: @Sendable ([SSEEvent]) -> Bool = { $0.last?.name == "result" }
            let w1 = Task { await sseExchange(port: port, "GET", "/executions/\(rowID)/events", stopAfter: enoughSamples) }
            let w2 = Task { await sseExchange(port: port, "GET", "/executions/\(rowID)/events", stopAfter: enoughSamples) }
            try await Task.sleep(for: .milliseconds(Int(600 * Env.slow)))
            let t0 = Date()
            let (status, text) = try await httpRequest(port: port, "DELETE", "/executions/\(rowID)")
            let took = Date().timeIntervalSince(t0)
            print("DELETE of a busy run answered in \(Int(took * 1000)) ms")
            #expect(status == 200, "\(text)")
            let cancelled = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
            #expect(cancelled["status"] as? String == "cancelled")
            #expect(cancelled["success"] as? Bool == false)
            #expect((cancelled["cpu_user_time"] as? Double ?? 0) > 0.3, "its metrics so far")
            #expect(openAPI.validate(cancelled, path: "/executions/{id}", method: "delete", status: 200).isEmpty)
            let (a, b, main) = await (w1.value, w2.value, streamer.value)
            for s in [a, b, main] {
                conforms(s)
                #expect(s.events.last?.name == "result")
                #expect(s.events.last?.object["container_id"] as? String == containerID)
                #expect(s.events.last?.object["status"] as? String == "cancelled")
                #expect(s.named("limit").last?.object["limit"] as? String == "cancelled")
            }
            #expect(a.events.first?.name == "started" && b.events.first?.name == "started")
            // The two watchers attached at about the same time: their samples from the first
            // one they share on are the same events.
            let sa = a.named("sample").map(\.data), sb = b.named("sample").map(\.data)
            let common = sa.filter { sb.contains($0) }
            #expect(common.count >= 3)
            if let first = common.first, let i = sa.firstIndex(of: first), let j = sb.firstIndex(of: first) {
                #expect(Array(sa[i...]) == Array(sb[j...]))
            }
            // Finished now: 409; unknown: 404; nothing of the run is left.
            let again = try await httpRequest(port: port, "DELETE", "/executions/\(rowID)")
            #expect(again.0 == 409)
            #expect(try await httpRequest(port: port, "DELETE", "/executions/987654").0 == 404)
            #expect(try await httpRequest(port: port, "GET", "/executions/987654/events").0 == 404)
            // A finished run replays: started, its stored samples, its result, as streamed.
            let replay = await sseExchange(port: port, "GET", "/executions/\(rowID)/events")
            conforms(replay)
            #expect(replay.events.map(\.name).first == "started" && replay.events.last?.name == "result")
            #expect(replay.events.last?.data == main.events.last?.data, "the replayed result is the streamed one")
            let streamedSamples = main.named("sample").map(\.data), replayed = replay.named("sample").map(\.data)
            #expect(replayed == streamedSamples, "\(replayed.count) replayed vs \(streamedSamples.count) streamed samples")
            let (ss, series) = try await httpRequest(port: port, "GET", "/executions/\(rowID)/samples")
            let seriesObj = try JSONSerialization.jsonObject(with: Data(series.utf8))
            #expect(ss == 200 && openAPI.validate(seriesObj, path: "/executions/{id}/samples", method: "get", status: 200).isEmpty)
            #expect(((seriesObj as? [String: Any])?["samples"] as? [Any])?.count == streamedSamples.count)
            await svc.sandbox.quiesce()
            #expect(try liveCgroups(containerID).isEmpty)
            #expect(processes(matching: containerID).isEmpty)
            let row = try #require(dict(try await svc.log.get(id: rowID)))
            #expect(row["status"] as? String == "cancelled")
            // (A connection of its own: the test client's first request would come later
            // than the server's read timeout allows in the slow VM.)
            let metrics = try await httpRequest(port: port, "GET", "/metrics").1
            #expect(metrics.contains(#"sandpit_executions_total{status="cancelled"} 1"#), "\(metrics)")
        }
    }

    @Test func aClientThatLeavesCancelsItsRunUnlessDetached() async throws {
        try #require(Env.isRoot, "privileged test run without root")
        try await withService { client, svc in
            let port = try #require(client.port)
            let leave: @Sendable ([SSEEvent]) -> Bool = { $0.filter { $0.name == "sample" }.count >= 2 }
            let busy = #"{"code": "while True: pass", "stream": true, "sample_interval": 0.05, "time_limit": 60}"#
            let s = await sseExchange(port: port, "POST", "/execute", body: busy, stopAfter: leave)
            let rowID = Int64(try #require(s.events.first?.object["id"] as? Int))
            var status: String?
            for _ in 0..<Int(500 * Env.slow) {
                status = try await svc.log.get(id: rowID)?.status
                if status != "running" { break }
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(status == "cancelled")
            #expect(dict(try await svc.log.get(id: rowID))?["error"] as? String == "cancelled: the streaming client disconnected")

            let detached = #"{"code": "import time\ntime.sleep(0.5)\nprint('still here')", "stream": true, "detach": true, "sample_interval": 0.05, "time_limit": \#(min(300, 30 * Env.slow))}"#
            let d = await sseExchange(port: port, "POST", "/execute", body: detached, stopAfter: { $0.count >= 2 })
            let id2 = Int64(try #require(d.events.first?.object["id"] as? Int))
            for _ in 0..<(Int(500 * Env.slow)) {
                status = try await svc.log.get(id: id2)?.status
                if status != "running" { break }
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(status == "ok")
            #expect(try await svc.log.get(id: id2)?.output == "still here\n")
            // A plain run stores samples only when asked.
            let asked = try await httpExchange(port: port, "POST", "/execute", body: #"{"code": "import time\ntime.sleep(0.4)", "samples": true, "sample_interval": 0.05}"#)
            let plain = try await httpExchange(port: port, "POST", "/execute", body: #"{"code": "import time\ntime.sleep(0.2)", "sample_interval": 0.05}"#)
            for (r, least) in [(asked, 6), (plain, 0)] {
                let idLine = r.1.split(separator: "\r\n").first { $0.lowercased().hasPrefix("x-execution-id:") }
                let rid = try #require(idLine.flatMap { Int64($0.split(separator: " ").last ?? "") })
                let series = try await svc.log.series(id: rid)
                #expect(least == 0 ? series.isEmpty : series.count >= least, "\(series.count) samples stored")
            }
        }
    }

    @Test func aQuietStreamGetsKeepAliveComments() async throws {
        try #require(Env.isRoot, "privileged test run without root")
        try await withService({ $0.keepAlive = .milliseconds(200) }) { client, _ in
            let port = try #require(client.port)
            let body = #"{"code": "import time\ntime.sleep(1.2)", "stream": true, "sample_interval": 60, "time_limit": \#(min(300, 30 * Env.slow))}"#
            let s = await sseExchange(port: port, "POST", "/execute", body: body)
            #expect(s.events.last?.name == "result")
            #expect(s.comments >= 3, "\(s.comments) keep-alive comments in a 1.2 s quiet run at 200 ms")
        }
    }

    @Test func requestErrorsAreJSONNotStreams() async throws {
        try await withService { client, _ in
            let port = try #require(client.port)
            for (body, code) in [(#"{"code": 1, "stream": true}"#, "invalid_request"),
                                 (#"{"code": "", "stream": "yes"}"#, "invalid_request"),
                                 (#"{"code": "", "stream": true, "sample_interval": 0.001}"#, "limit_out_of_range")] {
                let (status, text) = try await httpRequest(port: port, "POST", "/execute", body: body, headers: "Accept: text/event-stream\r\n")
                #expect(status == 400 && text.contains(#""error":"\#(code)""#), "\(body): \(status) \(text)")
            }
        }
    }
}

@Suite("Live runs (unit)")
struct LiveUnitTests {
    @Test func utf8ChunksAreCutOnCharacterBoundaries() {
        var c = UTF8Chunker()
        let text = Array("aé🙂z".utf8)  // 1 + 2 + 4 + 1 bytes
        var out: [UInt8] = []
        for b in text { out += c.take([b]) }
        #expect(out == text)
        var d = UTF8Chunker()
        #expect(d.take([0x61, 0xF0, 0x9F]) == [0x61])
        #expect(d.take([0x99, 0x82]) == [0xF0, 0x9F, 0x99, 0x82])
        #expect(d.take([0xFF]) == [0xFF])  // not a lead byte of anything: sent (as base64)
        var e = UTF8Chunker()
        #expect(e.take([0xE2, 0x82]).isEmpty)
        #expect(e.flush() == [0xE2, 0x82])
        #expect(SSEWriter.output([0x68, 0x69]) == #"{"data":"hi"}"#)
        #expect(SSEWriter.output([0xFF]) == #"{"data_base64":"/w=="}"#)
    }
}

func jsonString(_ s: String) -> String {
    String(decoding: try! JSONSerialization.data(withJSONObject: [s], options: [.withoutEscapingSlashes]), as: UTF8.self).dropFirst().dropLast().description
}
