import Foundation
import CgroupKit
import GRDB
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import Testing
@testable import Sandbox
@testable import Service

enum Env {
    static let isRoot = geteuid() == 0
    static let inCI = ProcessInfo.processInfo.environment["CI"] == "true"
    static let inVM = ProcessInfo.processInfo.environment["SANDPIT_IN_VM"] == "1"
    static var shouldRun: Bool { isRoot || inCI }
    static var slow: Double { inVM ? 20 : 1 }
}

/// The service tests' own state directory, so that their runs' scratch devices never
/// mix with those the sandbox tests count.
let serviceTestState = SandboxSettings().stateDirectory + "-service-tests"

func tempDB() -> String {
    "/tmp/sandpit-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).db"
}

func removeDB(_ path: String) {
    for suffix in ["", "-wal", "-shm"] { unlink(path + suffix) }
}

func json(_ buffer: ByteBuffer) -> Any {
    (try? JSONSerialization.jsonObject(with: Data(buffer: buffer), options: [.fragmentsAllowed])) ?? NSNull()
}

let openAPI = try! OpenAPICheck(json: OpenAPIDocument.json)

/// A live server on a loopback port (port 0), a real HTTP client, a real SQLite file.
func withService(_ edit: (inout ServiceConfig) -> Void = { _ in },
                 _ body: @Sendable (any TestClientProtocol, ServiceContext) async throws -> Void) async throws {
    let db = tempDB()
    defer { removeDB(db) }
    var config = ServiceConfig(databasePath: db)
    config.port = 0
    config.stateDirectory = serviceTestState
    edit(&config)
    var logger = Logger(label: "sandpit-test")
    logger.logLevel = .warning
    let svc = try await ServiceContext.open(config: config, logger: logger)
    let app = buildApplication(svc)
    try await app.test(.live) { client in try await body(client, svc) }
    await svc.close()
    await svc.sandbox.quiesce()
    svc.sandbox.shutdown()
}

extension TestClientProtocol {
    func post(_ uri: String, _ body: String, token: String? = nil) async throws -> TestResponse {
        var h: HTTPFields = [.contentType: "application/json"]
        if let token { h[.authorization] = "Bearer " + token }
        return try await execute(uri: uri, method: .post, headers: h, body: ByteBuffer(string: body))
    }

    func get(_ uri: String, token: String? = nil) async throws -> TestResponse {
        var h: HTTPFields = [:]
        if let token { h[.authorization] = "Bearer " + token }
        return try await execute(uri: uri, method: .get, headers: h)
    }
}

@Suite("Service: validation, auth, storage (unit-level, real HTTP)")
struct ServiceBasicsTests {
    @Test func openAPIFileMatchesTheServedDocument() throws {
        let file = #filePath.split(separator: "/").dropLast(3).joined(separator: "/")
        let text = try String(contentsOfFile: "/" + file + "/openapi.json", encoding: .utf8)
        #expect(text.trimmingCharacters(in: .whitespacesAndNewlines) == OpenAPIDocument.json.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    @Test(arguments: [
        ("nope", "invalid_json"),
        ("[1, 2]", "invalid_request"),
        ("{}", "invalid_request"),
        (#"{"code": 5}"#, "invalid_request"),
        (#"{"code": null}"#, "invalid_request"),
        (#"{"code": "print(1)", "time_limit": "10"}"#, "invalid_request"),
        (#"{"code": "print(1)", "time_limit": true}"#, "invalid_request"),
        (#"{"code": "print(1)", "time_limit": 100000}"#, "limit_out_of_range"),
        (#"{"code": "print(1)", "memory_limit": 1024}"#, "limit_out_of_range"),
        (#"{"code": "print(1)", "pids_limit": 2.5}"#, "invalid_request"),
        (#"{"code": "print(1)", "args": [1]}"#, "invalid_request"),
        (#"{"code": "print(1)", "container_name": ""}"#, "invalid_request"),
        (#"{"code": "print(1)", "unexpected": 1}"#, "invalid_request"),
        (#"{"code": "print(1)", "runtime": "ruby"}"#, "invalid_request"),
        (#"{"code": "print(1)", "runtime": 3}"#, "invalid_request"),
    ])
    func invalidRequestsGet400(_ body: String, _ code: String) async throws {
        try await withService { client, svc in
            let r = try await client.post("/execute", body)
            #expect(r.status == .badRequest)
            let obj = json(r.body) as? [String: Any]
            #expect(obj?["error"] as? String == code, "\(body) → \(obj ?? [:])")
            #expect((obj?["detail"] as? String)?.isEmpty == false)
            #expect(openAPI.validate(obj ?? [:], path: "/execute", method: "post", status: 400).isEmpty)
            // nothing was run or logged
            #expect(dicts(try await svc.store.list(.init())).isEmpty)
        }
    }

    @Test func bodyTooLargeGets413() async throws {
        try await withService({ $0.maxBodyBytes = 1000 }) { client, _ in
            let r = try await client.post("/execute", #"{"code": "\#(String(repeating: "#", count: 5000))"}"#)
            #expect(r.status == .contentTooLarge)
            let obj = json(r.body) as? [String: Any]
            #expect(obj?["error"] as? String == "body_too_large")
        }
    }

    @Test func queryValidationAndNotFound() async throws {
        try await withService { client, _ in
            #expect(try await client.get("/executions?limit=0").status == .badRequest)
            #expect(try await client.get("/executions?cursor=abc").status == .badRequest)
            #expect(try await client.get("/executions?since=yesterday").status == .badRequest)
            let r = try await client.get("/executions/424242")
            #expect(r.status == .notFound)
            #expect(openAPI.validate(json(r.body), path: "/executions/{id}", method: "get", status: 404).isEmpty)
            let wrong = try await client.execute(uri: "/executions", method: .delete)
            #expect(wrong.status == .methodNotAllowed && wrong.headers[.allow] == "GET, HEAD")
            #expect((json(wrong.body) as? [String: Any])?["error"] as? String == "method_not_allowed")
            #expect(try await client.execute(uri: "/execute", method: .get).status == .methodNotAllowed)
            #expect(try await client.execute(uri: "/nowhere", method: .get).status == .notFound)
            #expect(try await client.get("/executions?cursor=-1").status == .badRequest)
            let h = try await client.get("/health")
            #expect(h.status == .ok)
            #expect(openAPI.validate(json(h.body), path: "/health", method: "get", status: 200).isEmpty)
        }
    }

    @Test func authentication() async throws {
        try await withService({ $0.token = "s3cret" }) { client, _ in
            #expect(try await client.get("/health").status == .ok)  // liveness needs no token
            let none = try await client.get("/executions")
            #expect(none.status == .unauthorized)
            #expect((json(none.body) as? [String: Any])?["error"] as? String == "unauthorized")
            #expect(try await client.get("/executions", token: "wrong").status == .unauthorized)
            #expect(try await client.get("/metrics", token: "s3cret!").status == .unauthorized)
            #expect(try await client.post("/execute", #"{"code": "print(1)"}"#).status == .unauthorized)
            #expect(try await client.get("/executions", token: "s3cret").status == .ok)
            #expect(try await client.get("/openapi.json", token: "s3cret").status == .ok)
        }
        var open = ServiceConfig(databasePath: "/tmp/x.db")
        open.host = "0.0.0.0"
        #expect(throws: APIError.self) { try open.validate() }
        open.token = "t"
        #expect(throws: Never.self) { try open.validate() }
    }

    @Test func migrationOfALegacyDatabase() throws {
        let path = tempDB()
        defer { removeDB(path) }
        // Another program's database, with the pre-enhancement table and rows.
        do {
            let q = try DatabaseQueue(path: path)
            try q.write { db in
                try db.execute(sql: Schema.legacyTable)
                for i in 1...3 {
                    try db.execute(sql: """
                        INSERT INTO execution_logs (container_id, code, output, error, success, execution_time, created_at)
                        VALUES (?, ?, ?, NULL, 1, ?, CURRENT_TIMESTAMP)
                        """, arguments: ["c\(i)", "print(\(i))", "\(i)\n", Double(i) / 10])
                }
            }
        }
        let store = try ExecutionStore(path: path)
        var lines: [String] = []
        let first = try Schema.migrate(store.pool) { lines.append($0) }
        #expect(first.addedColumns == Schema.addedColumns.map(\.name) + ["stdout_truncated", "stderr_truncated", "network_io_loopback",
                                                                      "code_sha256", "labels", "custom_metrics",
                                                                      "custom_metrics_rejected", "alerts", "start", "warm_template",
                                                                      "memory_shared", "execution_index", "memory_peak_method", "results",
                                                                      "exception", "session", "network"])
        #expect(lines.contains("created table execution_samples"))
        #expect(lines.contains("created table sessions"))
        #expect(lines.contains("created table execution_labels"))
        #expect(first.rows == 3)
        #expect(lines.contains("added column cpu_user_time REAL"))
        let columns = try store.pool.read { db in try db.columns(in: "execution_logs").map { ($0.name, $0.type) } }
        let spec: [(String, String)] = [
            ("id", "INTEGER"), ("container_id", "TEXT"), ("code", "TEXT"), ("output", "TEXT"), ("error", "TEXT"),
            ("success", "BOOLEAN"), ("execution_time", "REAL"), ("created_at", "TIMESTAMP"),
            ("cpu_user_time", "REAL"), ("cpu_system_time", "REAL"), ("cpu_percent", "REAL"),
            ("memory_usage", "INTEGER"), ("memory_peak", "INTEGER"), ("memory_percent", "REAL"), ("memory_limit", "INTEGER"),
            ("block_io_read", "INTEGER"), ("block_io_write", "INTEGER"), ("network_io_rx", "INTEGER"), ("network_io_tx", "INTEGER"),
            ("pids_count", "INTEGER"), ("exit_code", "INTEGER"),
        ]
        for (name, type) in spec {
            #expect(columns.contains { $0.0 == name && $0.1 == type }, "\(name) \(type) missing: \(columns)")
        }
        let rows = try store.pool.read { db in try Row.fetchAll(db, sql: "SELECT * FROM execution_logs ORDER BY id") }
        #expect(rows.count == 3)
        #expect(rows.map { $0["output"] as String? } == ["1\n", "2\n", "3\n"])
        #expect(rows.allSatisfy { ($0["cpu_user_time"] as Double?) == nil && ($0["memory_peak"] as Int64?) == nil })
        let second = try Schema.migrate(store.pool)
        #expect(second.nothingToDo)
        #expect(second.rows == 3)
    }

    @Test func admissionQueue() async throws {
        let a = Admission(maxConcurrency: 1, queueSize: 1)
        try await a.acquire()
        async let waiting: Void = a.acquire()
        try await Task.sleep(for: .milliseconds(50))
        #expect(await a.queued == 1)
        await #expect(throws: Admission.Refusal.full) { try await a.acquire() }
        await a.release()  // hands the slot to the waiter
        try await waiting
        #expect(await a.inFlight == 1)
        await a.release()
        #expect(await a.inFlight == 0)
    }
}

@Suite("Service: real runs over HTTP (root)", .enabled(if: Env.shouldRun), .serialized)
struct ServiceRunTests {
    @Test func specificationExamplesOverHTTP() async throws {
        try #require(Env.isRoot, "privileged test run without root")
        try await withService { client, svc in
            let examples: [(String, (([String: Any]) -> Void))] = [
                ("import math\nresult = sum(math.sqrt(i) for i in range(100000))\nprint(f\"Result: {result}\")", { r in
                    #expect((r["output"] as? String)?.hasPrefix("Result: 21081692.74") == true)
                    #expect(((r["cpu_user_time"] as? Double) ?? 0) + ((r["cpu_system_time"] as? Double) ?? 0) >= 0.005)
                }),
                ("big_list = list(range(1000000))\nprint(f\"Created list of {len(big_list)} items\")", { r in
                    #expect(((r["memory_peak"] as? NSNumber)?.int64Value ?? 0) >= 30_000_000)
                }),
                ("import tempfile\nwith tempfile.NamedTemporaryFile(mode='w', delete=False) as f:\n    f.write('x' * 10000)\n    print(f'Wrote to {f.name}')", { r in
                    #expect(((r["block_io_write"] as? NSNumber)?.int64Value ?? 0) >= 8192)
                }),
                ("import numpy as np\nprint(np.arange(12).reshape(3, 4).sum())", { r in
                    #expect(r["output"] as? String == "66\n")
                }),
            ]
            for (code, check) in examples {
                let body = String(decoding: try JSONSerialization.data(withJSONObject: ["code": code, "container_name": "spec"]), as: UTF8.self)
                let res = try await client.post("/execute", body)
                #expect(res.status == .ok)
                let r = json(res.body) as? [String: Any] ?? [:]
                #expect(openAPI.validate(r, path: "/execute", method: "post", status: 200).isEmpty,
                        "\(openAPI.validate(r, path: "/execute", method: "post", status: 200))")
                #expect(r["status"] as? String == "ok" && r["container_name"] as? String == "spec")
                check(r)
                // The row was committed before the response: read it straight from SQLite.
                let rowID = Int64(res.headers[HTTPField.Name("X-Execution-Id")!] ?? "") ?? -1
                let row = try await svc.store.pool.read { db in
                    try Row.fetchOne(db, sql: "SELECT container_id, status, success, code, exit_code, memory_peak FROM execution_logs WHERE id = ?", arguments: [rowID])
                }
                #expect(row?["container_id"] as String? == r["container_id"] as? String)
                #expect(row?["status"] as String? == "ok")
                #expect(row?["code"] as String? == code)
                #expect(row?["exit_code"] as Int64? == 0)
                let one = try await client.get("/executions/\(rowID)")
                #expect(openAPI.validate(json(one.body), path: "/executions/{id}", method: "get", status: 200).isEmpty)
            }
            let list = try await client.get("/executions?limit=2&container_name=spec")
            let page = json(list.body) as? [String: Any] ?? [:]
            #expect(openAPI.validate(page, path: "/executions", method: "get", status: 200).isEmpty,
                    "\(openAPI.validate(page, path: "/executions", method: "get", status: 200))")
            let rows = page["executions"] as? [[String: Any]] ?? []
            #expect(rows.count == 2)
            let ids = rows.compactMap { ($0["id"] as? NSNumber)?.int64Value }
            #expect(ids == ids.sorted(by: >))  // newest first
            let next = (page["next_cursor"] as? NSNumber)?.int64Value ?? -1
            let rest = json(try await client.get("/executions?cursor=\(next)").body) as? [String: Any] ?? [:]
            #expect((rest["executions"] as? [Any])?.count == 2)
            let stats = json(try await client.get("/executions/stats").body) as? [String: Any] ?? [:]
            #expect(openAPI.validate(stats, path: "/executions/stats", method: "get", status: 200).isEmpty)
            #expect((stats["count"] as? NSNumber)?.intValue == 4)
            #expect((stats["success_rate"] as? NSNumber)?.doubleValue == 1)
            let metrics = String(buffer: try await client.get("/metrics").body)
            #expect(metrics.contains("sandpit_executions_total{status=\"ok\"} 4"))
            #expect(metrics.contains("sandpit_execution_duration_seconds_count 4"))
            #expect(metrics.contains("sandpit_execution_cpu_seconds_count 4"))
            #expect(metrics.contains("sandpit_execution_memory_peak_bytes_count 4"))
            // Every example peaked below 512 MiB.
            #expect(metrics.contains("sandpit_execution_memory_peak_bytes_bucket{le=\"536870912.0\"} 4"), "\(metrics)")
            // The I/O example wrote at least 8 KiB: not every run is in the zero bucket.
            #expect(!metrics.contains("sandpit_execution_block_io_bytes_bucket{le=\"0.0\"} 4"))
            // The example alerting rules only use series this service exports.
            let rules = try String(contentsOfFile: #filePath.replacingOccurrences(of: "Tests/ServiceTests/ServiceTests.swift", with: "systemd/sandpit-alerts.yml"), encoding: .utf8)
            let used = Set(rules.matches(of: /sandpit_[a-z_]+/).map { String($0.output) })
            #expect(used.count >= 5)
            for name in used {
                let base = name.replacingOccurrences(of: #"_(bucket|count|sum)$"#, with: "", options: .regularExpression)
                #expect(metrics.contains("# TYPE \(base) ") || metrics.contains("\n\(name)"), "\(name) is not exported")
            }
        }
    }

    @Test func aFullDiskGives503AndTheServiceRecoversByItself() async throws {
        try #require(Env.isRoot, "privileged test run without root")
        // The log on a 2 MiB filesystem of its own, filled up between two requests.
        let dir = "/tmp/sandpit-full-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try #require(mount("tmpfs", dir, "tmpfs", 0, "size=2m,mode=0700") == 0, "mount tmpfs: \(errno)")
        defer {
            umount2(dir, Int32(MNT_DETACH))
            rmdir(dir)
        }
        let filler = dir + "/filler"
        try await withService({ $0.databasePath = dir + "/log/executions.db" }) { client, svc in
            let first = try await client.post("/execute", #"{"code": "print(1)", "container_name": "before"}"#)
            #expect(first.status == .ok)
            // Fill the filesystem.
            let fd = open(filler, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
            let block = [UInt8](repeating: 7, count: 65536)
            while block.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) > 0 {}
            #expect(errno == ENOSPC)
            close(fd)
            let code = String(repeating: "#", count: 64 << 10)
            let full = try await client.post("/execute", #"{"code": "\#(code)\nprint(2)", "container_name": "during"}"#)
            #expect(full.status == .serviceUnavailable)
            let obj = json(full.body) as? [String: Any]
            #expect(obj?["error"] as? String == "storage_unavailable")
            #expect((obj?["detail"] as? String)?.contains("full") == true, "\(obj ?? [:])")
            #expect(full.headers[.retryAfter] != nil)
            #expect(openAPI.validate(obj ?? [:], path: "/execute", method: "post", status: 503).isEmpty)
            // Space is back: the next request runs and is logged, with nothing lost before.
            unlink(filler)
            let after = try await client.post("/execute", #"{"code": "print(3)", "container_name": "after"}"#)
            #expect(after.status == .ok)
            let rows = dicts(try await svc.store.list(.init()))
            #expect(rows.compactMap { $0["container_name"] as? String } == ["after", "before"])
            #expect(rows.allSatisfy { $0["status"] as? String == "ok" })
            let check = try await svc.store.pool.read { db in try String.fetchOne(db, sql: "PRAGMA integrity_check") }
            #expect(check == "ok")
            let beforeID = try #require(rows.last?["id"] as? Int64)
            let before = try #require(dict(try await svc.store.get(id: beforeID)))
            #expect(before["output"] as? String == "1\n")
        }
    }

    @Test func aRunsLabelsAndFingerprintAreLogged() async throws {
        try #require(Env.isRoot, "privileged test run without root")
        try await withService { client, svc in
            let code = "print('labelled')"
            let res = try await client.post("/execute", #"{"code": "print('labelled')", "labels": {"grader": "hw-1", "attempt": "3"}}"#)
            #expect(res.status == .ok)
            let page = try await client.get("/executions?label.grader=hw-1&label.attempt=3&code_sha256=\(codeSHA256(code))")
            let rows = (json(page.body) as? [String: Any])?["executions"] as? [[String: Any]] ?? []
            #expect(rows.count == 1)
            #expect(rows.first?["status"] as? String == "ok")
            #expect(rows.first?["labels"] as? [String: String] == ["grader": "hw-1", "attempt": "3"])
            #expect(rows.first?["code_sha256"] as? String == codeSHA256(code))
            #expect(openAPI.validate(json(page.body), path: "/executions", method: "get", status: 200).isEmpty)
        }
    }

    @Test func failedRunsAreLoggedWithTheirStatus() async throws {
        try #require(Env.isRoot, "privileged test run without root")
        try await withService { client, svc in
            let r = json(try await client.post("/execute", #"{"code": "import time\ntime.sleep(5)", "time_limit": 0.3}"#).body) as? [String: Any]
            #expect(r?["status"] as? String == "timeout")
            let rows = dicts(try await svc.store.list(.init()))
            #expect(rows.first?["status"] as? String == "timeout")
            #expect(rows.first?["timed_out"] as? Bool == true)
        }
    }

    @Test func overloadGets429() async throws {
        try #require(Env.isRoot, "privileged test run without root")
        try await withService({ $0.maxConcurrency = 1; $0.queueSize = 1 }) { client, svc in
            // Five clients, each on its own connection.
            let port = try #require(client.port)
            let statuses = try await withThrowingTaskGroup(of: (HTTPResponse.Status, String?).self) { group in
                for _ in 0..<5 {
                    group.addTask {
                        let (status, head, _) = try await httpExchange(port: port, "POST", "/execute", body: #"{"code": "import time\ntime.sleep(1.5)"}"#)
                        let retry = head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("retry-after:") }
                            .map { $0.split(separator: ":").last.map { $0.trimmingCharacters(in: .whitespaces) } ?? "" }
                        return (HTTPResponse.Status(code: status), retry)
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            let ok = statuses.filter { $0.0 == .ok }.count
            let refused = statuses.filter { $0.0 == .tooManyRequests }
            #expect(ok == 2, "\(statuses)")  // one running, one queued
            #expect(refused.count == 3)
            #expect(refused.allSatisfy { $0.1 == "1" })
            #expect(ok + refused.count == 5)
            let rows = dicts(try await svc.store.list(.init()))
            #expect(rows.count == ok)  // every run that started is logged; refused ones never started
            let metrics = svc.metrics.text()
            #expect(metrics.contains("sandpit_rejections_total 3"))
        }
    }
}

/// A `sandpit serve` process, for what only a separate process can show (kill -9, SIGTERM).
final class ServerProcess: @unchecked Sendable {
    let process = Process()
    let port: Int
    let db: String

    static var binary: String {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("sandpit").path
    }

    init(db: String, extra: [String] = []) throws {
        self.db = db
        port = Int.random(in: 20000...40000)
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = ["serve", "--port", String(port), "--db", db] + extra
        var env = ProcessInfo.processInfo.environment
        env["SANDPIT_STATE_DIR"] = serviceTestState
        process.environment = env
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
    }

    func waitReady() async throws {
        for _ in 0..<200 {
            if (try? await request("GET", "/health"))?.0 == 200 { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw CancellationError()
    }

    func request(_ method: String, _ path: String, body: String = "") async throws -> (Int, String) {
        try await httpRequest(port: port, method, path, body: body)
    }
}

@Suite("Service: process-level behaviour (root)", .enabled(if: Env.shouldRun), .serialized)
struct ServiceProcessTests {
    @Test func killDashNineDuringARunLeavesNothingAndIsRecorded() async throws {
        try #require(Env.isRoot, "privileged test run without root")
        let db = tempDB()
        defer { removeDB(db) }
        let first = try ServerProcess(db: db)
        try await first.waitReady()
        let marker = "sandpit-kill9-\(getpid())"
        let pending = Task { try? await first.request("POST", "/execute", body: #"{"code": "import time\ntime.sleep(60)", "args": ["\#(marker)"], "container_name": "\#(marker)"}"#) }
        // Wait until the run is logged as running and its program exists.
        let store = try ExecutionStore(path: db)
        var containerID = ""
        for _ in 0..<400 {
            if let row = dicts(try await store.list(.init())).first, row["status"] as? String == "running",
               let cid = row["container_id"] as? String {
                containerID = cid
                if !processes(matching: marker).isEmpty { break }
            }
            try await Task.sleep(for: .milliseconds(25))
        }
        #expect(!containerID.isEmpty)
        #expect(!processes(matching: marker).isEmpty)
        kill(first.process.processIdentifier, SIGKILL)
        first.process.waitUntilExit()
        _ = await pending.value

        // The run's init saw its parent die and ended the run: no process of it remains.
        for _ in 0..<200 where !processes(matching: marker).isEmpty { try await Task.sleep(for: .milliseconds(25)) }
        #expect(processes(matching: marker).isEmpty)

        // Restart: the cgroup of the dead instance's run is swept, the row says interrupted.
        let second = try ServerProcess(db: db)
        try await second.waitReady()
        defer { second.process.terminate(); second.process.waitUntilExit() }
        let cgroups = try Cgroups.shared().parentDirectories.flatMap { SysFile.list($0) }.filter { $0.hasSuffix(containerID) }
        #expect(cgroups.isEmpty, "left: \(cgroups)")
        let (status, body) = try await second.request("GET", "/executions?container_name=\(marker)")
        #expect(status == 200)
        let page = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any]
        let row = (page?["executions"] as? [[String: Any]])?.first
        #expect(row?["status"] as? String == "interrupted")
        #expect(row?["success"] as? Bool == false)
    }

    @Test func sigtermLetsRunsFinishThenStopsTheRest() async throws {
        try #require(Env.isRoot, "privileged test run without root")
        let db = tempDB()
        defer { removeDB(db) }
        let server = try ServerProcess(db: db, extra: ["--grace", Env.inVM ? "6" : "1"])
        try await server.waitReady()
        let short = Task { try await server.request("POST", "/execute", body: #"{"code": "import time\ntime.sleep(0.3)\nprint('done')"}"#) }
        let long = Task { try await server.request("POST", "/execute", body: #"{"code": "import time\ntime.sleep(60)", "time_limit": 120}"#) }
        try await Task.sleep(for: .milliseconds(Int(150 * Env.slow)))
        kill(server.process.processIdentifier, SIGTERM)
        let (s1, b1) = try await short.value
        let (s2, b2) = try await long.value
        #expect(s1 == 200 && b1.contains(#""output":"done\n""#))
        #expect(s2 == 200 && b2.contains("stopped: the service shut down"))
        server.process.waitUntilExit()
        #expect(server.process.terminationStatus == 0)
        let rows = dicts(try await ExecutionStore(path: db).list(.init()))
        #expect(Set(rows.compactMap { $0["status"] as? String }) == ["ok", "interrupted"])
    }
}

func processes(matching marker: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).filter { Int($0) != nil }.filter {
        let cmd = (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\($0)/cmdline"))) ?? Data()
        return String(decoding: cmd, as: UTF8.self).contains(marker)
    }
}

/// A blocking TCP socket connected to 127.0.0.1:port, and whether the connect worked.
func connectLoopback(_ port: Int) -> (Int32, Bool) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = in_port_t(UInt16(port).bigEndian)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    let r = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    return (fd, r == 0)
}

/// A plain HTTP/1.1 request over its own TCP connection to 127.0.0.1 (a real client, no framework).
func httpRequest(port: Int, _ method: String, _ path: String, body: String = "", headers: String = "") async throws -> (Int, String) {
    let (status, _, text) = try await httpExchange(port: port, method, path, body: body, headers: headers)
    return (status, text)
}

/// The same, returning the status, the head (status line and headers) and the body.
func httpExchange(port: Int, _ method: String, _ path: String, body: String = "", headers: String = "") async throws -> (Int, String, String) {
    return try await withCheckedThrowingContinuation { cont in
        Thread.detachNewThread {
            let (fd, ok) = connectLoopback(port)
            defer { close(fd) }
            guard ok else { cont.resume(throwing: POSIXError(.ECONNREFUSED)); return }
            let req = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\(headers)Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
            _ = req.withCString { send(fd, $0, strlen($0), 0) }
            var data = [UInt8]()
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = recv(fd, &buf, buf.count, 0)
                if n <= 0 { break }
                data += buf[0..<n]
            }
            let text = String(decoding: data, as: UTF8.self)
            let status = Int(text.split(separator: " ").dropFirst().first ?? "") ?? 0
            let parts = text.components(separatedBy: "\r\n\r\n")
            cont.resume(returning: (status, parts.first ?? "", parts.dropFirst().joined(separator: "\r\n\r\n")))
        }
    }
}

/// What one raw TCP exchange with the server gave: the bytes received, whether the
/// server closed the connection, and after how many seconds.
struct RawExchange {
    var text: String
    var closed: Bool
    var seconds: Double
    /// The final status (after any `100 Continue`).
    var status: Int {
        let lines = text.components(separatedBy: "\r\n").filter { $0.hasPrefix("HTTP/1.1 ") && !$0.hasPrefix("HTTP/1.1 100 ") }
        return Int(lines.first?.split(separator: " ").dropFirst().first ?? "") ?? 0
    }
}

/// Sends `head`, then `body` (blocking, as a client that does not read until it has
/// sent everything would), then reads until the server closes or `timeout` passes.
func rawExchange(port: Int, _ head: String, body: [UInt8] = [], timeout: Double = 8) async -> RawExchange {
    await withCheckedContinuation { cont in
        Thread.detachNewThread {
            let t0 = Date()
            let (fd, _) = connectLoopback(port)
            defer { close(fd) }
            var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - Double(Int(timeout))) * 1e6))
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            let bytes = Array(head.utf8) + body
            var off = 0
            while off < bytes.count {
                let n = bytes[off...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if n <= 0 { break }
                off += n
            }
            var data = [UInt8]()
            var buf = [UInt8](repeating: 0, count: 65536)
            var closed = false
            while true {
                let n = recv(fd, &buf, buf.count, 0)
                if n == 0 { closed = true; break }
                if n < 0 { closed = errno == ECONNRESET; break }
                data += buf[0..<n]
            }
            cont.resume(returning: RawExchange(text: String(decoding: data, as: UTF8.self), closed: closed,
                                               seconds: Date().timeIntervalSince(t0)))
        }
    }
}

@Suite("Service: HTTP connection limits (real server, raw sockets)", .serialized, .enabled(if: !Env.inVM, "timing on the host only: nothing here depends on the cgroup version"))
struct HTTPLimitsTests {
    static func configure(_ c: inout ServiceConfig) {
        c.readTimeout = .milliseconds(500)
        c.idleTimeout = .seconds(1)
        c.maxBodyBytes = 1000
    }

    @Test func stalledAndIdleConnectionsAreClosed() async throws {
        try await withService(Self.configure) { client, _ in
            let port = try #require(client.port)
            // Headers that never finish: 408 and closed, before any token or route is involved.
            let stalled = await rawExchange(port: port, "POST /execute HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n")
            #expect(stalled.status == 408 && stalled.closed, "\(stalled)")
            #expect(stalled.text.contains(#""error":"request_timeout""#))
            // A body that never finishes: the same.
            let slowBody = await rawExchange(port: port, "POST /execute HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"co")
            #expect(slowBody.status == 408 && slowBody.closed, "\(slowBody)")
            // Nothing at all after connecting: closed too.
            let silent = await rawExchange(port: port, "")
            #expect(silent.closed && silent.seconds < 6, "\(silent)")
            // A kept-alive connection after its answer: closed once idle.
            let idle = await rawExchange(port: port, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            #expect(idle.status == 200 && idle.closed && idle.seconds >= 0.9 && idle.seconds < 6, "\(idle)")
        }
    }

    @Test(arguments: ["Connection: close\r\n", "", "Expect: 100-continue\r\n"])
    func oversizedBodiesGet413AndTheConnectionCloses(_ header: String) async throws {
        try await withService(Self.configure) { client, svc in
            let port = try #require(client.port)
            let body = [UInt8](repeating: UInt8(ascii: "x"), count: 2_000_000)
            let r = await rawExchange(port: port, "POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\(header)Content-Length: \(body.count)\r\n\r\n",
                                      body: header.hasPrefix("Expect") ? [] : body)
            #expect(r.status == 413 && r.closed, "\(header): \(r)")
            #expect(r.text.contains(#""error":"body_too_large""#) && r.text.lowercased().contains("connection: close"))
            // A chunked body over the limit: 413 too, once the limit is passed.
            let chunk = "3e8\r\n" + String(repeating: "y", count: 1000) + "\r\n"
            let c = await rawExchange(port: port, "POST /execute HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\(header)\r\n" + chunk + chunk + "0\r\n\r\n")
            #expect(c.status == 413 && c.closed, "\(c)")
            #expect(dicts(try await svc.store.list(.init())).isEmpty)
        }
    }

    @Test func malformedRequestsGet400() async throws {
        try await withService(Self.configure) { client, _ in
            let port = try #require(client.port)
            let conflict = await rawExchange(port: port, "POST /execute HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef")
            #expect(conflict.status == 400 && conflict.closed, "\(conflict)")
            let both = await rawExchange(port: port, "POST /execute HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnope\r\n0\r\n\r\n")
            #expect(both.status == 400 && both.closed, "\(both)")
            let huge = await rawExchange(port: port, "GET /" + String(repeating: "a", count: 100_000) + " HTTP/1.1\r\nHost: x\r\n\r\n")
            #expect(huge.status == 400 && huge.closed, "\(huge.status)")
            // A valid chunked body is read as any other (here: not JSON).
            let chunked = await rawExchange(port: port, "POST /execute HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4\r\nnope\r\n0\r\n\r\n")
            #expect(chunked.status == 400 && chunked.text.contains(#""error":"invalid_json""#), "\(chunked)")
        }
    }

    @Test func connectionsBeyondTheCapAreClosedAtOnce() async throws {
        try await withService({ Self.configure(&$0); $0.maxConnections = 4; $0.readTimeout = .seconds(5) }) { client, svc in
            let port = try #require(client.port)
            // Five silent connections: the server keeps four (until their read timeout) and closes one at once.
            async let a = rawExchange(port: port, "", timeout: 2)
            async let b = rawExchange(port: port, "", timeout: 2)
            async let c = rawExchange(port: port, "", timeout: 2)
            async let d = rawExchange(port: port, "", timeout: 2)
            async let e = rawExchange(port: port, "", timeout: 2)
            let all = await [a, b, c, d, e]
            let closedAtOnce = all.filter { $0.closed && $0.seconds < 1.5 }
            // (the test client may hold a connection of its own)
            #expect(!closedAtOnce.isEmpty && all.count - closedAtOnce.count <= 4, "\(all)")
            // (plus, at most, the test client's own connection if it opened one meanwhile)
            #expect((closedAtOnce.count...closedAtOnce.count + 1).contains(svc.connections.refused))
            // They are gone now: a request is served again.
            try await Task.sleep(for: .milliseconds(200))
            let ok = await rawExchange(port: port, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            #expect(ok.status == 200, "\(ok)")
        }
    }
}

@Suite("Service: the execution log's files, caps and retention (real SQLite)")
struct LogRetentionTests {
    func result(_ output: String, error: String? = nil) -> ExecutionResult {
        var r = ExecutionResult(containerID: Sandbox.newID(), containerName: "t", startedAt: Date())
        r.output = output
        r.error = error
        r.status = .ok
        r.success = true
        return r
    }

    @Test func theDatabaseIsPrivate() throws {
        let dir = "/tmp/sandpit-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))/state"
        defer { try? FileManager.default.removeItem(atPath: (dir as NSString).deletingLastPathComponent) }
        let old = umask(0o022)
        defer { umask(old) }
        let store = try ExecutionStore(path: dir + "/executions.db")
        try Schema.migrate(store.pool)
        func mode(_ p: String) -> Int { ((try? FileManager.default.attributesOfItem(atPath: p)[.posixPermissions]) as? Int) ?? -1 }
        #expect(mode(dir) == 0o700)
        for f in ["executions.db", "executions.db-wal", "executions.db-shm"] {
            #expect(mode(dir + "/" + f) == 0o600, "\(f): \(String(mode(dir + "/" + f), radix: 8))")
        }
        // An existing, world-readable log is tightened when opened.
        chmod(dir + "/executions.db", 0o644)
        _ = try ExecutionStore(path: dir + "/executions.db")
        #expect(mode(dir + "/executions.db") == 0o600)
    }

    @Test func storedOutputIsCappedAndTheRowSaysSo() async throws {
        let path = tempDB()
        defer { removeDB(path) }
        let store = try ExecutionStore(path: path, outputLimit: 10)
        try Schema.migrate(store.pool)
        let long = "é" + String(repeating: "x", count: 100)  // a 2-byte character at the start
        let id = try await store.begin(code: "c", name: "t", containerID: "a", queuedAt: Date(), startedAt: Date())
        try await store.finish(id: id, result: result(long, error: "short"), finishedAt: Date())
        let row = try #require(dict(try await store.get(id: id)))
        #expect(row["output"] as? String == "é" + String(repeating: "x", count: 8))
        #expect(row["error"] as? String == "short")
        #expect(row["log_truncated"] as? Bool == true)
        let id2 = try await store.begin(code: "c", name: "t", containerID: "b", queuedAt: Date(), startedAt: Date())
        try await store.finish(id: id2, result: result("fits"), finishedAt: Date())
        #expect(dict(try await store.get(id: id2))?["log_truncated"] as? Bool == false)
        // A cut never splits a character: it backs off to the start of a UTF-8 sequence.
        #expect(ExecutionStore.capped("aé", 2) == ("a", true))
        #expect(ExecutionStore.capped("🙂🙂", 7) == ("🙂", true))
        #expect(ExecutionStore.capped("abc", 3) == ("abc", false))
        #expect(ExecutionStore.capped(nil, 0) == (nil, false))
    }

    @Test func aRowThatCouldNotBeCompletedIsCompletedByTheUpkeep() async throws {
        let path = tempDB()
        defer { removeDB(path) }
        let store = try ExecutionStore(path: path)
        try Schema.migrate(store.pool)
        let id = try await store.begin(code: "c", name: "late", containerID: "x", queuedAt: Date(), startedAt: Date())
        // As finish() leaves it when the database cannot be written.
        store.unfinished.add((id, result("done"), Date(), []))
        #expect(dict(try await store.get(id: id))?["status"] as? String == "running")
        let r = try await store.maintain(.init(days: nil, rows: nil))
        #expect(r.completed == 1)
        #expect(dict(try await store.get(id: id))?["status"] as? String == "ok")
        #expect(dict(try await store.get(id: id))?["output"] as? String == "done")
    }

    @Test func retentionDeletesOldAndExcessRowsButNeverRunningOnes() async throws {
        let path = tempDB()
        defer { removeDB(path) }
        let store = try ExecutionStore(path: path)
        try Schema.migrate(store.pool)
        let now = Date()
        // 10 rows: 4 from 40 days ago (one still running), 6 from today.
        for i in 0..<10 {
            let at = i < 4 ? now.addingTimeInterval(-40 * 86400) : now.addingTimeInterval(Double(i))
            let id = try await store.begin(code: "\(i)", name: "r\(i)", containerID: "c\(i)", queuedAt: at, startedAt: at)
            if i != 1 { try await store.finish(id: id, result: result("\(i)"), finishedAt: at) }
        }
        let r = try await store.maintain(.init(days: 30, rows: 4), now: now)
        let left = dicts(try await store.list(.init())).compactMap { $0["container_name"] as? String }
        // 3 old finished rows are past 30 days; of the rest, only the newest 4 (plus the running one) stay.
        #expect(left == ["r9", "r8", "r7", "r6", "r1"], "\(left)")
        #expect(r.deleted == 5)
        #expect(r.walBytes == 0, "the WAL is truncated by the checkpoint")
        let again = try await store.maintain(.init(days: 30, rows: 4), now: now)
        #expect(again.deleted == 0)
    }
}

extension ServiceContext {
    /// The SQLite log the service opened (for checks below the protocol).
    var store: ExecutionStore { log as! ExecutionStore }
}

/// A record as a dictionary of JSON-like values (Int64, Double, Bool, String, NSNull).
func dict(_ r: ExecutionRecord?) -> [String: Any]? {
    guard let r else { return nil }
    var out: [String: Any] = ["id": r.id]
    func any(_ v: FieldValue) -> Any {
        switch v {
        case .string(let s): s.map { $0 as Any } ?? NSNull()
        case .bool(let b): b.map { $0 as Any } ?? NSNull()
        case .int(let i): i.map { $0 as Any } ?? NSNull()
        case .double(let d): d.map { $0 as Any } ?? NSNull()
        case .json(let t): t.flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8), options: .fragmentsAllowed) } ?? NSNull()
        }
    }
    for (k, v) in r.values { out[k] = any(v) }
    if r.isDetail { out["code"] = r.code ?? NSNull() }
    out["log_truncated"] = r.logTruncated ?? NSNull()
    out["host"] = r.host ?? NSNull()
    for (k, d) in [("created_at", r.createdAt), ("queued_at", r.queuedAt), ("finished_at", r.finishedAt)] {
        out[k] = d.map(ExecutionResult.timestamp) ?? NSNull()
    }
    return out
}

func dicts(_ rs: [ExecutionRecord]) -> [[String: Any]] { rs.compactMap(dict) }
