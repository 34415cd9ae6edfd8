import Foundation
import GRDB
import Hummingbird
import Sandbox
import Testing
@testable import Service

/// What every `ExecutionLog` backend must do. A new backend runs `check` with a
/// factory of empty logs of its kind.
enum ExecutionLogContract {
    static func result(_ name: String, status: RunStatus = .ok, output: String = "out", seconds: Double = 0.1,
                       cpu: Double? = 0.05, peak: Int64? = 5 << 20) -> ExecutionResult {
        var r = ExecutionResult(containerID: "cid-" + name, containerName: name, startedAt: Date(timeIntervalSince1970: 1_764_000_000.5))
        r.status = status
        r.success = status == .ok
        r.output = output
        r.error = status == .ok ? nil : "Traceback"
        r.exitCode = status == .ok ? 0 : 1
        r.executionTime = seconds
        r.cpuUserTime = cpu.map { $0 * 0.8 }
        r.cpuSystemTime = cpu.map { $0 * 0.2 }
        r.cpuPercent = cpu.map { $0 / seconds * 100 }
        r.memoryPeak = peak
        r.memoryLimit = 512 << 20
        r.pidsCount = 1
        r.timedOut = status == .timeout
        return r
    }

    static func check(_ make: () throws -> any ExecutionLog) async throws {
        let log = try make()
        var lines: [String] = []
        let first = try await log.prepare { lines.append($0) }
        #expect(first.createdTable || !first.addedColumns.isEmpty || first.nothingToDo)
        #expect(try await log.prepare { _ in }.nothingToDo)

        // begin → running; finish → every stored field as written
        let t0 = Date(timeIntervalSince1970: 1_764_000_000)
        let id1 = try await log.begin(code: "print(1)", name: "a", containerID: "cid-a", queuedAt: t0, startedAt: t0)
        #expect(try await log.get(id: id1)?.status == "running")
        var r1 = result("a")
        r1.stdoutTruncated = true
        let series = (0..<5).map { i -> LiveSample in
            var s = LiveSample(elapsed: 0.25 * Double(i + 1))
            s.cpuUserTime = 0.01 * Double(i)
            s.memoryUsage = Int64(i) << 20
            s.pidsCount = i == 4 ? nil : 1
            return s
        }
        try await log.finish(id: id1, result: r1, finishedAt: t0.addingTimeInterval(1), samples: series)
        let full = try #require(try await log.get(id: id1))
        #expect(full.isDetail && full.code == "print(1)" && full.output == "out")
        for f in ExecutionResult.schema where f.storage != .none {
            #expect(full[f.name] == f.value(of: r1), "\(f.name): \(String(describing: full[f.name])) != \(f.value(of: r1))")
        }
        #expect(full.finishedAt.map { abs($0.timeIntervalSince(t0) - 1) < 0.01 } == true)
        #expect(full.logTruncated == false)
        #expect(full.result() == r1, "a record reads back as the result")
        #expect(try await log.series(id: id1) == series)

        // a list of summaries, newest first, filters and the cursor
        let id2 = try await log.begin(code: "x", name: "b", containerID: "cid-b", queuedAt: t0, startedAt: t0.addingTimeInterval(10))
        try await log.finish(id: id2, result: result("b", status: .timeout, seconds: 2, cpu: 1.5, peak: 40 << 20), finishedAt: t0.addingTimeInterval(12))
        let id3 = try await log.begin(code: "y", name: "a", containerID: "cid-c", queuedAt: t0, startedAt: t0.addingTimeInterval(20))
        let all = try await log.list(LogQuery())
        #expect(all.map(\.id) == [id3, id2, id1])
        #expect(all.allSatisfy { !$0.isDetail && $0.code == nil && $0["output"] == nil })
        var q = LogQuery()
        q.containerName = "a"
        #expect(try await log.list(q).map(\.id) == [id3, id1])
        q = LogQuery()
        q.status = "timeout"
        #expect(try await log.list(q).map(\.id) == [id2])
        q = LogQuery()
        q.limit = 1
        q.before = id3
        #expect(try await log.list(q).map(\.id) == [id2])

        // stats come from finished runs only
        let samples = try await log.samples(since: nil, until: nil)
        #expect(samples.count == 2)
        let stats = ExecutionStats.summarize(samples, since: nil, until: nil)
        #expect(stats.count == 2 && stats.successRate == 0.5)
        #expect(stats.executionTime.max == 2 && stats.memoryPeak.max == Double(40 << 20))

        // a crashed instance's running rows, then retention (never a running row)
        #expect(try await log.markInterrupted() == 1)
        #expect(try await log.get(id: id3)?.status == "interrupted")
        let id4 = try await log.begin(code: "z", name: "d", containerID: "cid-d", queuedAt: t0, startedAt: t0)
        let report = try await log.maintain(Retention(days: nil, rows: 2), now: Date())
        #expect(report.deleted == 2)
        #expect(try await log.list(LogQuery()).map(\.id) == [id4, id3])
        #expect(try await log.get(id: id1) == nil)
        #expect(try await log.series(id: id1).isEmpty, "a deleted run's samples go with it")

        // nodes: a heartbeat creates and then updates the row; a stop keeps it, marked
        #expect(try await log.nodes().isEmpty)
        let n0 = NodeRow(name: "n1", startedAt: t0, heartbeatAt: t0, maxConcurrency: 4, queueSize: 8)
        try await log.heartbeat(n0)
        var n1 = n0
        n1.heartbeatAt = t0.addingTimeInterval(5)
        n1.inFlight = 3
        n1.queued = 2
        n1.sessions = 1
        n1.url = "http://10.0.0.11:8787"
        try await log.heartbeat(n1)
        try await log.heartbeat(NodeRow(name: "n2", startedAt: t0, heartbeatAt: t0.addingTimeInterval(1), maxConcurrency: 2, queueSize: 0))
        let nodes = try await log.nodes()
        #expect(nodes.map(\.name) == ["n1", "n2"], "latest heartbeat first")
        #expect(nodes.first.map { abs($0.heartbeatAt.timeIntervalSince(n1.heartbeatAt)) < 0.01 && $0.inFlight == 3 && $0.queued == 2 && $0.sessions == 1 } == true)
        #expect(nodes.first?.url == "http://10.0.0.11:8787" && nodes.last?.url == nil)
        #expect(nodes.first?.isLive(now: t0.addingTimeInterval(10), within: 15) == true)
        #expect(nodes.first?.isLive(now: t0.addingTimeInterval(30), within: 15) == false)
        try await log.nodeStopped(name: "n2", at: t0.addingTimeInterval(2))
        let n2 = try #require(try await log.nodes().last)
        #expect(n2.stoppedAt != nil && n2.inFlight == 0 && !n2.isLive(now: t0.addingTimeInterval(2), within: 15))
        try await log.heartbeat(NodeRow(name: "n2", startedAt: t0.addingTimeInterval(60), heartbeatAt: t0.addingTimeInterval(60), maxConcurrency: 2, queueSize: 0))
        #expect(try await log.nodes().first.map { $0.name == "n2" && $0.stoppedAt == nil } == true, "a restart clears the stop")
    }
}

@Suite("Storage: the ExecutionLog contract, the field list and the stats (real SQLite)")
struct StorageTests {
    func tempDB() -> String { NSTemporaryDirectory() + "sandpit-contract-\(UUID().uuidString)/executions.db" }

    @Test func sqliteMeetsTheContract() async throws {
        let path = tempDB()
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        try await ExecutionLogContract.check { try ExecutionStore(path: path) }
    }

    @Test func everyStoredFieldHasItsColumn() throws {
        let path = tempDB()
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        let store = try ExecutionStore(path: path)
        try store.prepare()
        // A stored field without a column needs a migration in Schema.migrator.
        #expect(try store.pool.read { try Schema.missingColumns($0) } == [])
    }

    @Test func longRunsKeepAtMost2000SamplesCoveringTheWholeRun() {
        var rec = SampleRecorder(cap: 2000)
        var last: LiveSample?
        for i in 0..<100_000 {
            let s = LiveSample(elapsed: Double(i) * 0.01)
            rec.add(s)
            last = s
        }
        let kept = rec.finish(last: last)
        #expect(kept.count <= 2000 && kept.count >= 1000, "\(kept.count)")
        #expect(kept.first?.elapsed == 0 && kept.last == last)
        let gaps = zip(kept, kept.dropFirst()).map { $1.elapsed - $0.elapsed }
        #expect((gaps.max() ?? 0) <= 0.01 * 64 + 1e-9, "evenly thinned")
    }

    @Test func percentilesAreNearestRank() {
        let s = ExecutionStats.summary((1...100).map(Double.init).shuffled())
        #expect(s.p50 == 50 && s.p95 == 95 && s.max == 100)
        #expect(ExecutionStats.summary([7]) == .init(p50: 7, p95: 7, max: 7))
        #expect(ExecutionStats.summary([]) == .init())
        let none = ExecutionStats.summarize([], since: nil, until: nil)
        #expect(none.count == 0 && none.successRate == nil)
        let json = try? JSONSerialization.jsonObject(with: Data(none.json().utf8)) as? [String: Any]
        #expect(json?["success_rate"] is NSNull)
        #expect((json?["execution_time"] as? [String: Any])?["p95"] is NSNull)
    }

    /// The field list and openapi.json's ExecutionResult agree: names, order-free, types, nullability.
    @Test func openAPIResultSchemaFollowsTheFieldList() throws {
        let doc = try #require(try JSONSerialization.jsonObject(with: Data(OpenAPIDocument.json.utf8)) as? [String: Any])
        let schemas = try #require((doc["components"] as? [String: Any])?["schemas"] as? [String: Any])
        let result = try #require(schemas["ExecutionResult"] as? [String: Any])
        let props = try #require(result["properties"] as? [String: [String: Any]])
        #expect(Set(props.keys) == Set(ExecutionResult.schema.map(\.name)))
        #expect(Set(result["required"] as? [String] ?? []) == Set(ExecutionResult.schema.map(\.name)))
        for f in ExecutionResult.schema {
            let t = props[f.name]?["type"]
            let types = (t as? [String]) ?? (t as? String).map { [$0] } ?? []
            #expect(Set(types) == Set([f.type.rawValue] + (f.nullable ? ["null"] : [])), "\(f.name): \(types)")
        }
        // The summary lists every summary field (nullable: legacy rows lack them).
        let summary = try #require((schemas["ExecutionSummary"] as? [String: Any])?["properties"] as? [String: Any])
        for f in ExecutionResult.schema where f.storage == .summary {
            #expect(summary[f.name] != nil, "ExecutionSummary lacks \(f.name)")
        }
    }

    /// The README's metric table has one row per metric, with its unit and v2/v1 sources.
    @Test func readmeMetricTableFollowsTheFieldList() throws {
        let readme = try String(contentsOfFile: #filePath.replacingOccurrences(of: "Tests/ServiceTests/StorageTests.swift", with: "README.md"), encoding: .utf8)
        let section = try #require(readme.range(of: "### Metric semantics")).upperBound
        let rows = readme[section...].split(separator: "\n").prefix { !$0.hasPrefix("## ") }.filter { $0.hasPrefix("| `") }
        for f in ExecutionResult.schema where f.isMetric {
            let row = try #require(rows.first { $0.hasPrefix("| `\(f.name)` |") }, "README has no metric row for \(f.name)")
            let cells = row.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            #expect(cells.count >= 4)
            #expect(cells[1] == f.unit, "\(f.name): unit \(cells[1]) vs \(f.unit)")
            if f.v2 != "derived" && f.v2 != "CLOCK_MONOTONIC" {
                for token in f.v2.split(separator: " ") {
                    #expect(cells[2].contains(token), "\(f.name): v2 column lacks \(token)")
                }
                for token in f.v1.split(separator: " ") {
                    #expect(cells[3].contains(token) || cells[3] == "same", "\(f.name): v1 column lacks \(token)")
                }
            }
        }
    }
}

@Suite("Requests: Codable decoding with the API's messages (unit)")
struct RequestDecodingTests {
    func message(_ body: String) -> String? {
        do {
            _ = try ExecuteBody.decode(ByteBuffer(string: body)).request(ranges: LimitRanges())
            return nil
        } catch let e as APIError {
            return "\(e.error): \(e.detail)"
        } catch {
            return "\(error)"
        }
    }

    @Test(arguments: [
        ("nope", "invalid_json: the body is not valid JSON"),
        ("[1]", "invalid_request: the body must be a JSON object, not array"),
        ("{}", "invalid_request: 'code' is required"),
        (#"{"code": null}"#, "invalid_request: 'code' must be a string, not null"),
        (#"{"code": 5}"#, "invalid_request: 'code' must be a string, not number"),
        (#"{"code": "", "x": 1}"#, "invalid_request: unknown field 'x'"),
        (#"{"code": "", "time_limit": "10"}"#, "invalid_request: 'time_limit' must be a number, not string"),
        (#"{"code": "", "time_limit": true}"#, "invalid_request: 'time_limit' must be a number, not boolean"),
        (#"{"code": "", "time_limit": 1000}"#, "limit_out_of_range: 'time_limit' must be between 0.001 and 300.0"),
        (#"{"code": "", "pids_limit": 2.5}"#, "invalid_request: 'pids_limit' must be an integer"),
        (#"{"code": "", "args": [1]}"#, "invalid_request: 'args' must be an array of strings"),
        (#"{"code": "", "args": "a"}"#, "invalid_request: 'args' must be an array of strings, not string"),
        (#"{"code": "", "container_name": ""}"#, "invalid_request: 'container_name' must have 1 to 256 characters"),
        (#"{"code": "", "runtime": "ruby"}"#, "invalid_request: unknown runtime 'ruby' (known: python3)"),
        (#"{"code": "", "stdin": {}}"#, "invalid_request: 'stdin' must be a string, not object"),
    ])
    func refusals(_ body: String, _ expected: String) {
        #expect(message(body) == expected)
    }

    @Test func aFullRequest() throws {
        let body = #"{"code": "print(1)", "stdin": "x", "args": ["a"], "container_name": "n", "time_limit": 2.5, "cpu_limit": null,"#
            + #" "memory_limit": 67108864, "pids_limit": 8, "output_limit": 0, "runtime": "python3"}"#
        let r = try ExecuteBody.decode(ByteBuffer(string: body)).request(ranges: LimitRanges())
        #expect(r.code == "print(1)" && r.stdin == Array("x".utf8) && r.args == ["a"] && r.name == "n")
        #expect(r.limits.wallSeconds == 2.5 && r.limits.cpuSeconds == RunLimits().cpuSeconds)
        #expect(r.limits.memoryBytes == 64 << 20 && r.limits.pids == 8 && r.limits.outputBytes == 0)
        #expect(r.runtime == .python3)
    }
}

@Suite("Labels and fingerprints: validation, storage and filters (real SQLite, real HTTP)")
struct LabelTests {
    @Test func fingerprintIsSHA256OfTheCodeBytes() {
        #expect(codeSHA256("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(codeSHA256("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

    @Test func invalidLabelsAre400sThatSayWhy() async throws {
        try await withService { client, _ in
            let many = (0..<17).map { "\"k\($0)\": \"v\"" }.joined(separator: ", ")
            let cases: [(String, String)] = [
                (#"{"code": "1", "labels": ["a"]}"#, "must be an object of strings, not array"),
                (#"{"code": "1", "labels": {"a": 1}}"#, "the value of 'a' must be a string, not number"),
                (#"{"code": "1", "labels": {"Upper": "x"}}"#, "key 'Upper' must be 1 to 64"),
                (#"{"code": "1", "labels": {"": "x"}}"#, "key '' must be 1 to 64"),
                ("{\"code\": \"1\", \"labels\": {\"\(String(repeating: "k", count: 65))\": \"x\"}}", "must be 1 to 64"),
                ("{\"code\": \"1\", \"labels\": {\"k\": \"\(String(repeating: "é", count: 129))\"}}", "over 256 bytes"),
                ("{\"code\": \"1\", \"labels\": {\(many)}}", "at most 16 pairs, not 17"),
            ]
            for (body, detail) in cases {
                let r = try await client.post("/execute", body)
                let d = json(r.body) as? [String: Any]
                #expect(r.status == .badRequest, "\(body)")
                #expect((d?["detail"] as? String)?.contains(detail) == true, "\(d ?? [:])")
            }
            #expect(try await client.get("/executions?label.Bad=x").status == .badRequest)
            #expect(try await client.get("/executions?code_sha256=xyz").status == .badRequest)
            #expect(try await client.get("/executions?code_sha256=" + String(repeating: "A", count: 64)).status == .badRequest)
        }
    }

    @Test func rowsAreFoundByEveryLabelAndByFingerprint() async throws {
        try await withService { client, svc in
            let t0 = Date()
            let a = try await svc.log.begin(code: "print(1)", name: "a", containerID: "ca", labels: ["grader": "hw1", "user": "ann"],
                                            queuedAt: t0, startedAt: t0)
            let b = try await svc.log.begin(code: "print(2)", name: "b", containerID: "cb", labels: ["grader": "hw1", "user": "bob"],
                                            queuedAt: t0, startedAt: t0)
            let c = try await svc.log.begin(code: "print(1)", name: "c", containerID: "cc", labels: [:], queuedAt: t0, startedAt: t0)
            func ids(_ query: String) async throws -> [Int64] {
                let r = try await client.get("/executions" + query)
                #expect(r.status == .ok, "\(query)")
                #expect(openAPI.validate(json(r.body), path: "/executions", method: "get", status: 200).isEmpty)
                let rows = (json(r.body) as? [String: Any])?["executions"] as? [[String: Any]] ?? []
                return rows.compactMap { ($0["id"] as? NSNumber)?.int64Value }
            }
            #expect(try await ids("?label.grader=hw1") == [b, a])
            #expect(try await ids("?label.grader=hw1&label.user=ann") == [a])
            #expect(try await ids("?label.grader=hw2") == [])
            #expect(try await ids("?code_sha256=\(codeSHA256("print(1)"))") == [c, a])
            #expect(try await ids("?code_sha256=\(codeSHA256("print(1)"))&label.user=ann") == [a])
            let one = try await client.get("/executions/\(a)")
            let d = json(one.body) as? [String: Any]
            #expect(d?["labels"] as? [String: String] == ["grader": "hw1", "user": "ann"])
            #expect(d?["code_sha256"] as? String == codeSHA256("print(1)"))
            #expect(openAPI.validate(json(one.body), path: "/executions/{id}", method: "get", status: 200).isEmpty)
            // The filter is answered from the labels table's key, not by scanning the log.
            let detail = try await svc.store.pool.read { db in
                try Row.fetchAll(db, sql: "EXPLAIN QUERY PLAN SELECT execution_id FROM execution_labels WHERE key = 'grader' AND value = 'hw1'")
                    .map { $0["detail"] as String? ?? "" }
            }
            #expect(detail.contains { $0.contains("USING PRIMARY KEY") || $0.contains("USING COVERING INDEX") }, "\(detail)")
        }
    }
}

@Suite("Trends: per-bucket count and percentiles over a generated history (real SQLite, real HTTP)")
struct TrendTests {
    /// Three days of 100 finished runs each; on day k (0, 1, 2) the i-th run (1...100)
    /// peaks at (k + 1) · i MiB and runs every 10 minutes from midnight; every tenth run
    /// failed; plus one running row per day, which trends leave out.
    static func seed(_ store: ExecutionStore, from day0: Date) async throws {
        try await store.pool.write { db in
            for k in 0..<3 {
                for i in 1...100 {
                    let at = day0.addingTimeInterval(Double(k) * 86400 + Double(i - 1) * 600)
                    try db.execute(sql: """
                        INSERT INTO execution_logs (container_id, container_name, created_at, started_at, status, success,
                                                    memory_peak, execution_time, code_sha256)
                        VALUES (?, 'gen', ?, ?, ?, ?, ?, ?, ?)
                        """, arguments: ["c\(k)-\(i)", at, at, i % 10 == 0 ? "runtime_error" : "ok", i % 10 != 0,
                                         Int64(k + 1) * Int64(i) << 20, Double(i) / 100, codeSHA256("day \(k)")])
                }
                try db.execute(sql: "INSERT INTO execution_logs (container_id, created_at, status, memory_peak) VALUES (?, ?, 'running', 1)",
                               arguments: ["r\(k)", day0.addingTimeInterval(Double(k) * 86400 + 30)])
            }
        }
    }

    @Test func bucketsHaveTheKnownCountsAndPercentiles() async throws {
        try await withService { client, svc in
            let day0 = Date(timeIntervalSince1970: 1_764_547_200)  // 2025-12-01 00:00 UTC
            try await Self.seed(svc.store, from: day0)
            let window = "since=2025-12-01T00:00:00Z&until=2025-12-04T00:00:00Z"
            func get(_ query: String) async throws -> [String: Any] {
                let r = try await client.get("/executions/trends?" + query)
                #expect(r.status == .ok, "\(query): \(String(buffer: r.body))")
                #expect(openAPI.validate(json(r.body), path: "/executions/trends", method: "get", status: 200).isEmpty)
                return json(r.body) as? [String: Any] ?? [:]
            }
            let days = try await get("metric=memory_peak&bucket=1d&" + window)
            #expect(days["unit"] as? String == "bytes")
            let buckets = days["buckets"] as? [[String: Any]] ?? []
            #expect(buckets.count == 3)
            for (k, b) in buckets.enumerated() {
                let mib = Int64(k + 1) << 20
                #expect(b["start"] as? String == ExecutionResult.timestamp(day0.addingTimeInterval(Double(k) * 86400)))
                #expect((b["count"] as? NSNumber)?.intValue == 100)
                #expect((b["p50"] as? NSNumber)?.int64Value == 50 * mib)
                #expect((b["p95"] as? NSNumber)?.int64Value == 95 * mib)
                #expect((b["max"] as? NSNumber)?.int64Value == 100 * mib)
            }
            // Filters: status, fingerprint; an hour bucket holds six runs.
            let ok = try await get("metric=memory_peak&bucket=1d&status=ok&code_sha256=\(codeSHA256("day 1"))&" + window)
            let only = ok["buckets"] as? [[String: Any]] ?? []
            #expect(only.count == 1 && (only.first?["count"] as? NSNumber)?.intValue == 90)
            #expect((only.first?["max"] as? NSNumber)?.doubleValue == Double(99 * 2 * 1_048_576))
            let hours = try await get("metric=execution_time&bucket=1h&" + window)
            let hb = hours["buckets"] as? [[String: Any]] ?? []
            #expect(hb.count == 3 * 17)  // 100 runs 10 minutes apart span 17 hours a day
            #expect(hb.reduce(0) { $0 + (($1["count"] as? NSNumber)?.intValue ?? 0) } == 300)
            #expect((hb.first?["p50"] as? NSNumber)?.doubleValue == 0.03)  // the first hour: 0.01 ... 0.06
            let minutes = try await get("metric=memory_peak&bucket=1m&since=2025-12-01T00:00:00Z&until=2025-12-01T01:00:00Z")
            #expect((minutes["buckets"] as? [[String: Any]])?.count == 6)
            // A window of more than 10 000 buckets is cut to the latest 10 000; an empty one has none.
            let wide = try await get("metric=memory_peak&bucket=1m&since=2025-01-01T00:00:00Z&until=2025-12-03T00:00:00Z")
            #expect(wide["since"] as? String == ExecutionResult.timestamp(day0.addingTimeInterval(2 * 86400 - 10_000 * 60)))
            #expect((wide["buckets"] as? [[String: Any]])?.count == 100 + 100)  // days 0 and 1 (day 2 starts at until)
            let empty = try await get("metric=memory_peak&since=2025-12-03T00:00:00Z&until=2025-12-01T00:00:00Z")
            #expect((empty["buckets"] as? [[String: Any]])?.isEmpty == true)
        }
    }

    @Test func badTrendQueriesAre400s() async throws {
        try await withService { client, _ in
            for (query, detail) in [("bucket=1h", "'metric' is required"), ("metric=code", "unknown metric 'code'"),
                                    ("metric=status", "unknown metric"), ("metric=memory_peak&bucket=5m", "'bucket' must be"),
                                    ("metric=memory_peak&label.X=1", "must be 1 to 64")] {
                let r = try await client.get("/executions/trends?" + query)
                #expect(r.status == .badRequest, "\(query)")
                #expect(((json(r.body) as? [String: Any])?["detail"] as? String)?.contains(detail) == true, "\(query): \(String(buffer: r.body))")
                #expect(openAPI.validate(json(r.body), path: "/executions/trends", method: "get", status: 400).isEmpty)
            }
        }
    }
}

extension TrendTests {
    @Test func theDocumentedMetricsAreTheTrendableFields() throws {
        let doc = try JSONSerialization.jsonObject(with: Data(OpenAPIDocument.json.utf8)) as? [String: Any]
        let params = ((((doc?["paths"] as? [String: Any])?["/executions/trends"] as? [String: Any])?["get"] as? [String: Any])?["parameters"]
            as? [[String: Any]]) ?? []
        let metric = params.first { $0["name"] as? String == "metric" }
        let choices = (metric?["schema"] as? [String: Any])?["anyOf"] as? [[String: Any]] ?? []
        let documented = choices.first?["enum"] as? [String] ?? []
        #expect(choices.last?["pattern"] as? String == #"^custom\.[A-Za-z_][A-Za-z0-9_.]{0,63}$"#)
        #expect(Set(documented) == Set(Trends.metrics.map(\.name)))
    }
}

extension TrendTests {
    /// Rows written by the original service (ISO 8601 with a `T`) and rows out of
    /// time order fall into the right buckets.
    @Test func legacyTimestampsAndUnorderedRowsAreBucketedByTime() async throws {
        try await withService { client, svc in
            try await svc.store.pool.write { db in
                for (at, v) in [("2025-12-02 10:00:00.000", 30), ("2025-12-01T09:30:00", 10), ("2025-12-02T11:00:00.5", 20),
                                ("2025-12-01 23:59:59.999", 40)] {
                    try db.execute(sql: "INSERT INTO execution_logs (created_at, status, pids_count) VALUES (?, 'ok', ?)", arguments: [at, v])
                }
            }
            let r = try await client.get("/executions/trends?metric=pids_count&bucket=1d&since=2025-12-01T00:00:00Z&until=2025-12-03T00:00:00Z")
            let b = (json(r.body) as? [String: Any])?["buckets"] as? [[String: Any]] ?? []
            #expect(b.map { $0["start"] as? String } == ["2025-12-01T00:00:00.000Z", "2025-12-02T00:00:00.000Z"])
            #expect(b.map { ($0["count"] as? NSNumber)?.intValue } == [2, 2])
            #expect(b.map { ($0["p50"] as? NSNumber)?.intValue } == [10, 20])
            #expect(b.map { ($0["max"] as? NSNumber)?.intValue } == [40, 30])
        }
    }
}

/// A deterministic generator (SplitMix64), so that a statistical test cannot flake.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Log-normal noise around 1 (σ of the log = `sigma`), with 5 % outliers at 2-3 ×.
    mutating func noise(sigma: Double) -> Double {
        let u1 = Double.random(in: Double.ulpOfOne..<1, using: &self), u2 = Double.random(in: 0..<1, using: &self)
        let z = (-2 * Foundation.log(u1)).squareRoot() * cos(2 * .pi * u2)
        let outlier = Double.random(in: 0..<1, using: &self) < 0.05 ? Double.random(in: 2...3, using: &self) : 1
        return exp(sigma * z) * outlier
    }
}

@Suite("Regressions: Mann-Whitney with a minimum effect, on generated histories (real SQLite, real HTTP)")
struct RegressionTests {
    @Test func mannWhitneyMatchesKnownValues() {
        // Complete separation, 5 vs 5: exact one-sided p = 1/252 ≈ 0.004; the normal
        // approximation with continuity correction gives ≈ 0.0061.
        let p = Regression.mannWhitneyP(baseline: [1, 2, 3, 4, 5], recent: [6, 7, 8, 9, 10])
        #expect(p > 0.004 && p < 0.008)
        #expect(Regression.mannWhitneyP(baseline: [6, 7, 8, 9, 10], recent: [1, 2, 3, 4, 5]) > 0.99)
        #expect(Regression.mannWhitneyP(baseline: [3, 3, 3], recent: [3, 3, 3]) == 1)
        #expect(Regression.median([5, 1, 3]) == 3 && Regression.median([4, 1, 3, 2]) == 2.5)
    }

    /// The false-alarm rate on stable series with ordinary noise (σ 15 % and 5 %
    /// outliers at 2-3 ×), 20 recent against 80 baseline runs with the defaults
    /// (level 0.001, median +20 %), and the power against a +50 % shift.
    @Test func noFalseAlarmsOnStableSeriesAndShiftsAreFound() {
        var rng = SplitMix(state: 20261203)
        // Statistics, not cgroups: the emulated VM checks fewer series.
        let series = Int(ProcessInfo.processInfo.environment["SANDPIT_REGRESSION_SERIES"] ?? "") ?? (Env.inVM ? 500 : 5000)
        var falseAlarms = 0, found = 0
        for _ in 0..<series {
            let baseline = (0..<80).map { _ in 10.0 * rng.noise(sigma: 0.15) }
            let recent = (0..<20).map { _ in 10.0 * rng.noise(sigma: 0.15) }
            if Regression.check(baseline: baseline, recent: recent, alpha: 0.001, minRatio: 1.2) != nil { falseAlarms += 1 }
            let shifted = recent.map { $0 * 1.5 }
            if Regression.check(baseline: baseline, recent: shifted, alpha: 0.001, minRatio: 1.2) != nil { found += 1 }
        }
        print("regressions: \(falseAlarms) false alarms in \(series) stable series; +50 % found in \(found)")
        #expect(falseAlarms == 0)
        #expect(found >= series * 99 / 100)
    }

    /// Three programs with 200 runs each: two stable, one that allocates 50 MiB more in
    /// its last 20 runs. Only that one is listed, by fingerprint and by label.
    @Test func theProgramThatGrewIsFlaggedAndNothingElse() async throws {
        try await withService { client, svc in
            var rng = SplitMix(state: 7)
            let t0 = Date(timeIntervalSince1970: 1_764_547_200)
            var rows: [(String, String, Int64, Double)] = []  // program, grader, memory_peak, execution_time
            for i in 0..<200 {
                for (program, grader) in [("stable-a", "hw1"), ("stable-b", "hw2"), ("grows", "hw3")] {
                    var peak = 12.0 * 1_048_576 * rng.noise(sigma: 0.1)
                    if program == "grows" && i >= 180 { peak += 50 * 1_048_576 }
                    rows.append((program, grader, Int64(peak / 4096) * 4096, 0.05 * rng.noise(sigma: 0.2)))
                }
            }
            let generated = rows
            try await svc.store.pool.write { db in
                for (i, r) in generated.enumerated() {
                    try db.execute(sql: """
                        INSERT INTO execution_logs (created_at, status, memory_peak, execution_time, code_sha256) VALUES (?, 'ok', ?, ?, ?)
                        """, arguments: [t0.addingTimeInterval(Double(i)), r.2, r.3, codeSHA256(r.0)])
                    try db.execute(sql: "INSERT INTO execution_labels (key, value, execution_id) VALUES ('grader', ?, ?)",
                                   arguments: [r.1, db.lastInsertedRowID])
                }
            }
            func get(_ query: String) async throws -> [String: Any] {
                let r = try await client.get("/executions/regressions?" + query)
                #expect(r.status == .ok, "\(query): \(String(buffer: r.body))")
                #expect(openAPI.validate(json(r.body), path: "/executions/regressions", method: "get", status: 200).isEmpty)
                return json(r.body) as? [String: Any] ?? [:]
            }
            let byCode = try await get("metric=memory_peak&window=20&baseline=80")
            #expect((byCode["checked"] as? NSNumber)?.intValue == 3)
            let flagged = byCode["regressions"] as? [[String: Any]] ?? []
            #expect(flagged.map { $0["fingerprint"] as? String } == [codeSHA256("grows")])
            let ratio = (flagged.first?["ratio"] as? NSNumber)?.doubleValue ?? 0
            #expect(ratio > 4 && ratio < 6, "62 MiB against 12 MiB: \(ratio)")
            #expect(((flagged.first?["p_value"] as? NSNumber)?.doubleValue ?? 1) < 1e-6)
            let byLabel = try await get("metric=memory_peak&by=label.grader")
            #expect((byLabel["regressions"] as? [[String: Any]])?.map { $0["fingerprint"] as? String } == ["hw3"])
            // Time did not change: nothing to report.
            let time = try await get("metric=execution_time")
            #expect((time["regressions"] as? [[String: Any]])?.isEmpty == true)
            #expect((time["checked"] as? NSNumber)?.intValue == 3)
            // Not enough runs: nothing is checked.
            #expect((try await get("metric=memory_peak&window=200&baseline=80"))["checked"] as? NSNumber == 0)
            for bad in ["metric=nope", "metric=memory_peak&window=1", "metric=memory_peak&by=host", "metric=memory_peak&alpha=0"] {
                let r = try await client.get("/executions/regressions?" + bad)
                #expect(r.status == .badRequest, "\(bad)")
                #expect(openAPI.validate(json(r.body), path: "/executions/regressions", method: "get", status: 400).isEmpty)
            }
        }
    }
}

/// `sandpit history`, `trends` and `regressions`: the real binary on a generated log.
@Suite("CLI: history, trends and regressions read the log serve writes (real binary, real SQLite)")
struct HistoryCLITests {
    func sandpit(_ args: [String]) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: ServerProcess.binary)
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    @Test func theThreeCommandsAnswerAsTheAPIDoes() async throws {
        let db = tempDB()
        defer { removeDB(db) }
        let store = try ExecutionStore(path: db)
        try store.prepare()
        let day0 = Date(timeIntervalSince1970: 1_764_547_200)
        try await TrendTests.seed(store, from: day0)

        let window = ["--since", "2025-12-01T00:00:00Z", "--until", "2025-12-04T00:00:00Z"]
        let (s1, trends) = try sandpit(["trends", "--db", db, "--metric", "memory_peak", "--bucket", "1d", "--json"] + window)
        #expect(s1 == 0, "\(trends)")
        let t = try JSONSerialization.jsonObject(with: Data(trends.utf8)) as? [String: Any]
        #expect(openAPI.validate(t as Any, path: "/executions/trends", method: "get", status: 200).isEmpty)
        let buckets = t?["buckets"] as? [[String: Any]] ?? []
        #expect(buckets.map { ($0["p50"] as? NSNumber)?.int64Value } == [50 << 20, 100 << 20, 150 << 20])

        let (s2, rows) = try sandpit(["history", "--db", db, "--limit", "5", "--status", "runtime_error", "--json"])
        #expect(s2 == 0, "\(rows)")
        let list = try JSONSerialization.jsonObject(with: Data(rows.utf8)) as? [[String: Any]] ?? []
        #expect(list.count == 5 && list.allSatisfy { $0["status"] as? String == "runtime_error" })
        let ids = list.compactMap { ($0["id"] as? NSNumber)?.int64Value }
        #expect(ids == ids.sorted(by: >))
        let (_, tableText) = try sandpit(["history", "--db", db, "--limit", "2", "--code-sha256", codeSHA256("day 2")])
        #expect(tableText.hasPrefix("ID") && tableText.split(separator: "\n").count == 3, "\(tableText)")

        // Within each seeded day the peak grows with i: the last 20 runs are worse than the 80 before.
        let (s3, reg) = try sandpit(["regressions", "--db", db, "--metric", "memory_peak", "--json"])
        #expect(s3 == 0, "\(reg)")
        let r = try JSONSerialization.jsonObject(with: Data(reg.utf8)) as? [String: Any]
        #expect(openAPI.validate(r as Any, path: "/executions/regressions", method: "get", status: 200).isEmpty)
        #expect((r?["checked"] as? NSNumber)?.intValue == 3)
        #expect((r?["regressions"] as? [[String: Any]])?.count == 3)

        let (s4, err) = try sandpit(["trends", "--db", db, "--metric", "nope"])
        #expect(s4 != 0 && err.contains("unknown metric 'nope'"))
        let (s5, err5) = try sandpit(["history", "--db", db + ".missing"])
        #expect(s5 != 0 && err5.contains("no execution log"))
    }
}
