import CgroupKit
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Testing
@testable import Sandbox
@testable import Service

/// Sessions through the real HTTP server: real sandboxes, the real log.
@Suite("Service: sessions (root, real server and sandboxes)", .enabled(if: Env.shouldRun), .serialized)
struct SessionServiceTests {
    static func obj(_ r: TestResponse) -> [String: Any] { json(r.body) as? [String: Any] ?? [:] }

    static func check(_ r: TestResponse, _ path: String, _ method: String, status: Int = 200) -> [String: Any] {
        let o = obj(r)
        #expect(Int(r.status.code) == status, "\(method) \(path): \(r.status) \(o)")
        let problems = openAPI.validate(o, path: path, method: method, status: status)
        #expect(problems.isEmpty, "\(method) \(path) \(status): \(problems)")
        return o
    }

    @Test(.enabled(if: !Env.inVM, "pandas and matplotlib: on the host only (the emulated VM runs python ~200× slower)")) func sessionsOverHTTP() async throws {
        try #require(Env.isRoot, "privileged test run without root")
        try await withService { client, svc in
            let t = min(300, 30 * Env.slow)
            let made = Self.check(try await client.post("/sessions", #"{"name": "nb", "labels": {"team": "a"}, "time_limit": \#(t)}"#),
                                  "/sessions", "post", status: 201)
            let id = try #require(made["id"] as? String)
            #expect(made["name"] as? String == "nb" && made["state"] as? String == "ready" && made["executions"] as? Int == 0)
            let dup = Self.check(try await client.post("/sessions", #"{"name": "nb"}"#), "/sessions", "post", status: 409)
            #expect(dup["error"] as? String == "session_name_taken")

            // State across executions, by name and by id; rich results; a plot.
            let r1 = Self.check(try await client.post("/sessions/nb/execute", #"{"code": "import pandas as pd\ndf = pd.DataFrame({'a': [1, 2, 3]})\nprint(len(df))"}"#),
                                "/sessions/{id}/execute", "post")
            #expect(r1["output"] as? String == "3\n" && r1["container_id"] as? String == id && r1["container_name"] as? String == "nb")
            #expect(r1["execution_index"] as? Int == 1 && r1["status"] as? String == "ok")
            let r2 = Self.check(try await client.post("/sessions/\(id)/execute", #"{"code": "int(df['a'].sum())"}"#), "/sessions/{id}/execute", "post")
            let results = r2["results"] as? [[String: Any]]
            #expect(results?.first?["type"] as? String == "text/plain" && results?.first?["data"] as? String == "6")
            let plot = Self.check(try await client.post("/sessions/nb/execute", #"{"code": "import matplotlib.pyplot as plt\nplt.plot(df['a'])\nNone"}"#),
                                  "/sessions/{id}/execute", "post")
            let png = (plot["results"] as? [[String: Any]])?.first { $0["type"] as? String == "image/png" }?["data"] as? String
            let bytes = try #require(png.flatMap { Data(base64Encoded: $0) })
            #expect(bytes.starts(with: [0x89, 0x50, 0x4E, 0x47]) && bytes.count > 5000)
            let err = Self.check(try await client.post("/sessions/nb/execute", #"{"code": "undefined_name"}"#), "/sessions/{id}/execute", "post")
            #expect(err["status"] as? String == "runtime_error" && (err["exception"] as? [String: Any])?["name"] as? String == "NameError")
            let totals = try #require(err["session"] as? [String: Any])
            #expect(totals["executions"] as? Int == 4 && (totals["memory_usage"] as? Int ?? 0) > 10 << 20)

            // Files in and out, escapes refused.
            let payload = (0..<5000).map { UInt8(truncatingIfNeeded: $0 * 31) }
            let up = try await client.execute(uri: "/sessions/nb/files/data/in.bin", method: .put, headers: [:], body: ByteBuffer(bytes: payload))
            _ = Self.check(up, "/sessions/{id}/files/{path}", "put", status: 201)
            let read = try await client.post("/sessions/nb/execute", #"{"code": "d = open('/work/data/in.bin', 'rb').read()\nopen('/work/out.bin', 'wb').write(d[::-1])\nimport os; os.symlink('/etc', '/work/etc')\nlen(d)"}"#)
            #expect(((Self.obj(read)["results"] as? [[String: Any]])?.first?["data"] as? String) == "5000")
            let down = try await client.get("/sessions/nb/files/out.bin")
            #expect(down.status == .ok && Array(buffer: down.body) == Array(payload.reversed()))
            let ls = Self.check(try await client.get("/sessions/nb/files?dir=data"), "/sessions/{id}/files", "get")
            #expect((ls["entries"] as? [[String: Any]])?.map { $0["path"] as? String } == ["data/in.bin"])
            for bad in ["/sessions/nb/files/..%2F..%2Fetc%2Fpasswd", "/sessions/nb/files/etc/passwd", "/sessions/nb/files/missing"] {
                let r = try await client.get(bad)
                #expect([400, 404].contains(Int(r.status.code)), "\(bad): \(r.status)")
                #expect(openAPI.validate(Self.obj(r), path: "/sessions/{id}/files/{path}", method: "get", status: Int(r.status.code)).isEmpty)
            }

            // One execution at a time: a second one is refused while the first runs.
            // (over a connection of its own: the test client sends one request at a time)
            let port = try #require(client.port)
            let slow = Task { try await httpRequest(port: port, "POST", "/sessions/nb/execute", body: #"{"code": "import time\ntime.sleep(\#(1.5 * Env.slow))"}"#) }
            try await Task.sleep(for: .milliseconds(Int(500 * Env.slow)))
            let second = Self.check(try await client.post("/sessions/nb/execute", #"{"code": "1"}"#), "/sessions/{id}/execute", "post", status: 409)
            #expect(second["error"] as? String == "session_busy")
            #expect(try await slow.value.0 == 200)

            // Each execution is a row of the log with the session's id and name.
            let page = try #require(json(try await client.get("/executions?container_name=nb&limit=50").body) as? [String: Any])
            let rows = page["executions"] as? [[String: Any]] ?? []
            #expect(rows.count == 6 && rows.allSatisfy { $0["container_id"] as? String == id }, "\(rows.count) rows")
            let rowID = try #require(rows.first?["id"] as? Int)
            let row = Self.check(try await client.get("/executions/\(rowID)"), "/executions/{id}", "get")
            #expect(row["execution_index"] as? Int == 6 && row["memory_peak_method"] as? String != nil)

            // Restart: variables go, files stay.
            let rs = Self.check(try await client.post("/sessions/nb/restart", "{}"), "/sessions/{id}/restart", "post")
            #expect(rs["restarts"] as? Int == 1 && rs["state"] as? String == "ready")
            let after = Self.obj(try await client.post("/sessions/nb/execute", #"{"code": "print('df' in globals(), open('/work/out.bin','rb').read()[:1] != b'')"}"#))
            #expect(after["output"] as? String == "False True\n")

            // Bad requests: JSON errors, nothing made.
            for (path, body, code) in [("/sessions", #"{"nope": 1}"#, "invalid_request"), ("/sessions", #"{"time_limit": 0}"#, "limit_out_of_range"),
                                       ("/sessions", #"{"name": ""}"#, "invalid_request"), ("/sessions/nb/execute", #"{"code": 3}"#, "invalid_request"),
                                       ("/sessions/nb/execute", "[", "invalid_json"), ("/sessions/nope/execute", #"{"code": "1"}"#, "session_not_found")] {
                let r = try await client.post(path, body)
                let o = Self.obj(r)
                #expect(o["error"] as? String == code, "\(path) \(body): \(o)")
                #expect((400..<500).contains(Int(r.status.code)))
            }
            let patch = try await client.execute(uri: "/sessions/nb", method: .patch, headers: [:])
            #expect(patch.status == .methodNotAllowed)

            let list = Self.check(try await client.get("/sessions"), "/sessions", "get")
            #expect((list["sessions"] as? [[String: Any]])?.map { $0["name"] as? String } == ["nb"])

            // Delete: tasks, cgroup and scratch go; the row says why.
            let backend = try Cgroups.shared()
            let dirs = backend.parentDirectories.map { $0 + "/" + (SysFile.list($0).first { $0.hasSuffix(id) } ?? "-") }
            #expect(dirs.allSatisfy { SysFile.isDirectory($0) })
            let del = Self.check(try await client.execute(uri: "/sessions/nb", method: .delete, headers: [:]), "/sessions/{id}", "delete")
            #expect(del["state"] as? String == "closed" && del["end_reason"] as? String == "deleted" && del["executions"] as? Int == 7)
            #expect(dirs.allSatisfy { !SysFile.isDirectory($0) }, "left: \(dirs)")
            #expect(try await client.get("/sessions/nb").status == .notFound)
            let gone = Self.check(try await client.get("/sessions/\(id)"), "/sessions/{id}", "get")
            #expect(gone["end_reason"] as? String == "deleted")
            #expect(svc.sessionCount == 0)
        }
    }

    /// Idle sessions are frozen, then ended; a lifetime ends one however busy it was;
    /// beyond --max-sessions, 429; the service's stop ends the rest.
    @Test func idleLifetimeAndLimits() async throws {
        try #require(Env.isRoot, "privileged test run without root")
        try await withService({
            $0.sessionSweepInterval = .milliseconds(100)
            $0.maxSessions = 2
        }) { client, svc in
            let idle = 3.0
            let a = Self.check(try await client.post("/sessions", #"{"name": "idle", "freeze_after": 0.3, "idle_timeout": \#(idle)}"#), "/sessions", "post", status: 201)
            let id = try #require(a["id"] as? String)
            _ = try await client.post("/sessions/idle/execute", #"{"code": "x = 7"}"#)
            try await Task.sleep(for: .milliseconds(900))
            #expect(Self.obj(try await client.get("/sessions/idle"))["state"] as? String == "frozen")
            let thawed = Self.obj(try await client.post("/sessions/idle/execute", #"{"code": "x * 6"}"#))
            #expect((thawed["results"] as? [[String: Any]])?.first?["data"] as? String == "42")
            let shown = Self.obj(try await client.get("/sessions/idle"))
            #expect((shown["last_thaw_ms"] as? Double ?? -1) >= 0)

            let b = Self.check(try await client.post("/sessions", #"{"name": "short", "ttl": 1}"#), "/sessions", "post", status: 201)
            let full = Self.check(try await client.post("/sessions", #"{"name": "third"}"#), "/sessions", "post", status: 429)
            #expect(full["error"] as? String == "too_many_sessions")

            // ttl, then idle_timeout: each ends its session and says so.
            try await Task.sleep(for: .milliseconds(Int((idle + 1.5) * 1000)))
            let bid = try #require(b["id"] as? String)
            #expect(Self.obj(try await client.get("/sessions/\(bid)"))["end_reason"] as? String == "ttl")
            #expect(Self.obj(try await client.get("/sessions/\(id)"))["end_reason"] as? String == "idle_timeout")
            let backend = try Cgroups.shared()
            #expect(backend.parentDirectories.flatMap { SysFile.list($0) }.filter { $0.hasSuffix(id) || $0.hasSuffix(bid) }.isEmpty)

            // The service's stop ends the live ones; their rows say so.
            let c = Self.obj(try await client.post("/sessions", #"{"name": "last"}"#))
            let cid = try #require(c["id"] as? String)
            await svc.close()
            let row = try await svc.log.session(id: cid)
            #expect(row?.endReason == "service_stopped" && row?.endedAt != nil)
        }
    }

    /// `sandpit session new|exec|cp|ls|rm` against `serve --socket`.
    @Test(.enabled(if: !Env.inVM, "the CLI's plumbing: on the host only")) func sessionCLI() async throws {
        try #require(Env.isRoot, "privileged test run without root")
        let db = tempDB()
        defer { removeDB(db) }
        let sock = serviceTestState + "/test-session-\(getpid()).sock"
        let server = try ServerProcess(db: db, extra: ["--socket", sock, "--max-sessions", "3"])
        defer { server.process.terminate(); server.process.waitUntilExit() }
        try await server.waitReady()
        func sandpit(_ args: [String], stdin: String? = nil) throws -> (Int32, String, String) {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: ServerProcess.binary)
            p.arguments = args
            let out = Pipe(), err = Pipe(), inp = Pipe()
            p.standardOutput = out
            p.standardError = err
            p.standardInput = inp
            try p.run()
            if let stdin { inp.fileHandleForWriting.write(Data(stdin.utf8)) }
            try inp.fileHandleForWriting.close()
            let o = out.fileHandleForReading.readDataToEndOfFile()
            let e = err.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
        }
        let srv = ["--server", "unix:" + sock]
        let (s0, id, e0) = try sandpit(["session", "new", "--name", "cli"] + srv)
        #expect(s0 == 0 && id.trimmingCharacters(in: .whitespacesAndNewlines).count == 32, "\(id) \(e0)")
        let (s1, o1, _) = try sandpit(["session", "exec", "cli", "x = 5\nprint('set')"] + srv)
        #expect(s1 == 0 && o1 == "set\n")
        let (s2, o2, _) = try sandpit(["session", "exec", "cli"] + srv, stdin: "x * 2")
        #expect(s2 == 0 && o2 == "10\n", "\(o2)")
        let (s3, _, e3) = try sandpit(["session", "exec", "cli", "import sys; sys.exit(4)"] + srv)
        #expect(s3 == 4, "\(e3)")
        let local = "/tmp/sandpit-cli-\(getpid()).txt"
        defer { unlink(local); unlink(local + ".back") }
        FileManager.default.createFile(atPath: local, contents: Data("héllo\n".utf8))
        #expect(try sandpit(["session", "cp", local, "cli:in/h.txt"] + srv).0 == 0)
        let (s4, o4, _) = try sandpit(["session", "exec", "cli", "open('/work/in/h.txt').read().upper()"] + srv)
        #expect(s4 == 0 && o4 == "'HÉLLO\\n'\n", "\(o4)")
        #expect(try sandpit(["session", "cp", "cli:in/h.txt", local + ".back"] + srv).0 == 0)
        #expect(FileManager.default.contents(atPath: local + ".back") == Data("héllo\n".utf8))
        let (s5, o5, _) = try sandpit(["session", "ls"] + srv)
        #expect(s5 == 0 && o5.contains("\tcli\tready\t4\t"), "\(o5)")
        let (s6, _, e6) = try sandpit(["session", "exec", "nope", "1"] + srv)
        #expect(s6 == 125 && e6.contains("404"), "\(e6)")
        #expect(try sandpit(["session", "rm", "cli"] + srv).0 == 0)
        #expect(try sandpit(["session", "ls"] + srv).1 == "ID\tNAME\tSTATE\tEXECUTIONS\tCREATED\n")
    }

    /// A session's execution as Server-Sent Events, watched and cancelled like a run;
    /// a cancelled cell is interrupted, and the session keeps its state.
    @Test(.enabled(if: !Env.inVM, "not cgroup-version specific: on the host only")) func streamWatchAndCancel() async throws {
        try #require(Env.isRoot, "privileged test run without root")
        try await withService { client, svc in
            let port = try #require(client.port)
            _ = Self.check(try await client.post("/sessions", #"{"name": "live"}"#), "/sessions", "post", status: 201)
            _ = try await client.post("/sessions/live/execute", #"{"code": "kept = 1"}"#)
            let (status, head, body) = try await httpExchange(port: port, "POST", "/sessions/live/execute",
                                                               body: #"{"code": "import time\nfor i in range(3):\n    print(i, flush=True); time.sleep(0.1)\nkept + 1", "stream": true}"#)
            #expect(status == 200 && head.lowercased().contains("text/event-stream"), "\(head)")
            let kinds = body.split(separator: "\n").filter { $0.hasPrefix("event: ") }.map { String($0.dropFirst(7)) }
            #expect(kinds.first == "started" && kinds.last == "result" && kinds.filter { $0 == "stdout" }.count >= 1, "\(kinds)")
            let last = try #require(body.components(separatedBy: "event: result\ndata: ").last?.split(separator: "\n").first)
            let result = try #require(try JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String: Any])
            #expect(result["output"] as? String == "0\n1\n2\n" && (result["results"] as? [[String: Any]])?.first?["data"] as? String == "2")

            // Cancel through DELETE /executions/{id}, as for a run.
            let slow = Task { try await httpRequest(port: port, "POST", "/sessions/live/execute", body: #"{"code": "import time\ntime.sleep(60)"}"#) }
            // (up to 20 s: once, under CI's load, the row took longer than 5 s to appear)
            var rowID: Int?
            for _ in 0..<Int(400 * Env.slow) {
                let page = Self.obj(try await client.get("/executions?container_name=live&status=running"))
                rowID = (page["executions"] as? [[String: Any]])?.first?["id"] as? Int
                if rowID != nil { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            let recent = Self.obj(try await client.get("/executions?limit=5"))["executions"] as? [[String: Any]] ?? []
            let id = try #require(rowID, "no running row of session live; the latest rows: \(recent.map { "\($0["id"] ?? "") \($0["container_name"] ?? "") \($0["status"] ?? "")" })")
            try await Task.sleep(for: .milliseconds(Int(300 * Env.slow)))
            let cancelled = Self.check(try await client.execute(uri: "/executions/\(id)", method: .delete, headers: [:]), "/executions/{id}", "delete")
            #expect(cancelled["status"] as? String == "cancelled" && (cancelled["exception"] as? [String: Any])?["name"] as? String == "KeyboardInterrupt",
                    "\(cancelled["status"] ?? "") \(cancelled["error"] ?? "")")
            #expect((cancelled["execution_time"] as? Double ?? 99) < 5 * Env.slow)
            #expect(try await slow.value.0 == 200)
            let after = Self.obj(try await client.post("/sessions/live/execute", #"{"code": "print(kept)"}"#))
            #expect(after["output"] as? String == "1\n")
            #expect(svc.sandbox.sessionCells.withLock { $0.isEmpty })
        }
    }

    /// Stateless runs take files in (`files`) and give matches back (`return_files`).
    @Test(.enabled(if: !Env.inVM, "not cgroup-version specific: on the host only")) func statelessFilesInAndOut() async throws {
        try #require(Env.isRoot, "privileged test run without root")
        try await withService { client, _ in
            let input = Data((0..<3000).map { UInt8(truncatingIfNeeded: $0 * 13) }).base64EncodedString()
            let code = "d = open('/work/data/in.bin', 'rb').read()\nimport os\nos.makedirs('/work/out/deep')\nopen('/work/out/deep/r.csv', 'w').write('n\\n%d\\n' % len(d))\nopen('/work/rev.bin', 'wb').write(d[::-1])\nopen('/work/skip.txt', 'w').write('x')\nos.symlink('/etc/passwd', '/work/link.csv')"
            let r = Self.check(try await client.post("/execute", #"{"code": \#(jsonString(code)), "files": {"data/in.bin": "\#(input)"}, "return_files": ["*.csv", "rev.bin"]}"#),
                               "/execute", "post")
            #expect(r["status"] as? String == "ok", "\(r["error"] ?? "")")
            let files = try #require(r["files"] as? [String: String])
            #expect(Set(files.keys) == ["out/deep/r.csv", "rev.bin"], "\(files.keys)")
            #expect(files["out/deep/r.csv"].flatMap { Data(base64Encoded: $0) } == Data("n\n3000\n".utf8))
            #expect(files["rev.bin"].flatMap { Data(base64Encoded: $0) } == Data(Data(base64Encoded: input)!.reversed()))
            #expect(r["files_truncated"] as? Bool == false)
            let plain = Self.check(try await client.post("/execute", #"{"code": "print(1)"}"#), "/execute", "post")
            #expect((plain["files"] as? [String: Any])?.isEmpty == true)
            for (body, why) in [(#"{"code": "1", "files": {"../x": "YQ=="}}"#, "components"), (#"{"code": "1", "files": {"main.py": "YQ=="}}"#, "program"),
                                (#"{"code": "1", "files": {"a": "%%%"}}"#, "base64"), (#"{"code": "1", "files": {"a": 1}}"#, "base64 string"),
                                (#"{"code": "1", "return_files": "*"}"#, "array")] {
                let e = try await client.post("/execute", body)
                let o = Self.obj(e)
                #expect(e.status == .badRequest && (o["detail"] as? String ?? "").contains(why), "\(body): \(o)")
            }
        }
    }

    /// `rich_results` on a stateless run: the final value, a figure, the exception, the
    /// exit code; and nothing of it without the flag.
    @Test(.enabled(if: !Env.inVM, "matplotlib: on the host only (the emulated VM runs python ~200× slower)")) func statelessRichResults() async throws {
        try #require(Env.isRoot, "privileged test run without root")
        try await withService { client, _ in
            let code = "import sys, matplotlib.pyplot as plt\nplt.plot([1, 2])\nprint(sys.argv, __file__)\n6 * 7"
            let r = Self.check(try await client.post("/execute", #"{"code": \#(jsonString(code)), "rich_results": true, "args": ["x"], "return_files": ["*.py", "*.json"], "time_limit": 60}"#),
                               "/execute", "post")
            #expect(r["status"] as? String == "ok" && r["output"] as? String == "['/work/main.py', 'x'] /work/main.py\n", "\(r["output"] ?? "") \(r["error"] ?? "")")
            let items = r["results"] as? [[String: Any]] ?? []
            #expect(items.map { $0["type"] as? String } == ["text/plain", "image/png"] && items.first?["data"] as? String == "42")
            let png = (items.last?["data"] as? String).flatMap { Data(base64Encoded: $0) } ?? Data()
            #expect(png.starts(with: [0x89, 0x50, 0x4E, 0x47]) && png.count > 3000)
            let keys = Set((r["files"] as? [String: Any])?.keys.map { $0 } ?? [])
            #expect(keys.contains("main.py") && !keys.contains(".sandpit-results.json"), "the results file is not one of the run's files: \(keys)")
            #expect((r["cpu_user_time"] as? Double ?? 0) > 0.05, "the run's metrics cover the whole program")
            let e = Self.obj(try await client.post("/execute", #"{"code": "x = 1\n1 / 0", "rich_results": true}"#))
            #expect(e["status"] as? String == "runtime_error" && e["exit_code"] as? Int == 1)
            let exc = e["exception"] as? [String: Any]
            #expect(exc?["name"] as? String == "ZeroDivisionError" && (exc?["traceback"] as? String ?? "").contains("/work/main.py\", line 2"), "\(exc ?? [:])")
            #expect((e["error"] as? String ?? "").contains("ZeroDivisionError"))
            let x = Self.obj(try await client.post("/execute", #"{"code": "import sys\nsys.exit(3)", "rich_results": true}"#))
            #expect(x["exit_code"] as? Int == 3 && x["exception"] is NSNull)
            let plain = Self.obj(try await client.post("/execute", #"{"code": "6 * 7"}"#))
            #expect((plain["results"] as? [Any])?.isEmpty == true && plain["exception"] is NSNull)
        }
    }

    /// Sessions a crashed instance left open are ended when the next one starts.
    @Test func openSessionsOfAGoneInstanceAreEnded() async throws {
        let db = tempDB()
        defer { removeDB(db) }
        let store = try ExecutionStore(path: db)
        try store.prepare()
        try await store.sessionOpened(SessionRow(id: "a1", name: "left", createdAt: Date()))
        #expect(try await store.endOpenSessions(reason: "service_restarted") == 1)
        let row = try await store.session(id: "a1")
        #expect(row?.endReason == "service_restarted" && row?.endedAt != nil)
        #expect(try await store.endOpenSessions(reason: "service_restarted") == 0)
    }
}
