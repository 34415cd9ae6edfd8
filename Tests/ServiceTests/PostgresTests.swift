import Foundation
import Logging
import Sandbox
import Testing
@testable import Service

/// A fresh database on the PostgreSQL server scripts/with-postgres started for the test
/// run (its address in SANDPIT_TEST_POSTGRES), dropped after the test.
struct TestPostgres {
    let url: String
    static var server: String? { ProcessInfo.processInfo.environment["SANDPIT_TEST_POSTGRES"] }

    static func with(_ body: (TestPostgres) async throws -> Void) async throws {
        guard let server else {
            if Env.inCI { Issue.record("SANDPIT_TEST_POSTGRES is not set: scripts/test runs swift test under scripts/with-postgres") }
            return
        }
        let name = "sandpit_test_\(getpid())_\(UInt32.random(in: 0...UInt32.max))"
        let admin = try PostgresStore(url: server, logger: PostgresStorageTests.logger)
        defer { admin.close() }
        try await admin.run("CREATE DATABASE \(name)")
        do {
            try await body(TestPostgres(url: server.replacingOccurrences(of: "/postgres?", with: "/\(name)?")))
        } catch {
            _ = try? await admin.run("DROP DATABASE \(name) WITH (FORCE)")
            throw error
        }
        try await admin.run("DROP DATABASE \(name) WITH (FORCE)")
    }
}

@Suite("Storage on PostgreSQL: the contract, migrations under concurrency, the same answers as SQLite (a real server)",
       .enabled(if: TestPostgres.server != nil || Env.inCI, "no PostgreSQL server (run under scripts/with-postgres)"),
       .enabled(if: !Env.inVM, "on the host only: nothing here depends on the cgroup version"), .serialized)
struct PostgresStorageTests {
    static let logger: Logger = {
        var l = Logger(label: "sandpit-test-pg")
        l.logLevel = .critical
        return l
    }()

    @Test func postgresMeetsTheContract() async throws {
        try await TestPostgres.with { pg in
            let store = try PostgresStore(url: pg.url, logger: Self.logger)
            defer { store.close() }
            try await ExecutionLogContract.check { store }
        }
    }

    /// Three nodes start at once on an empty database: the schema is made once.
    @Test func concurrentStartsMigrateOnce() async throws {
        try await TestPostgres.with { pg in
            let stores = try (0..<3).map { try PostgresStore(url: pg.url, host: "n\($0)", logger: Self.logger) }
            defer { stores.forEach { $0.close() } }
            let reports = try await withThrowingTaskGroup(of: MigrationReport.self) { group in
                for s in stores { group.addTask { try await s.prepare { _ in } } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(reports.filter(\.createdTable).count == 1, "\(reports.map(\.otherSteps))")
            #expect(reports.filter(\.nothingToDo).count == 2)
            let applied = try await stores[0].run("SELECT count(*) FROM sandpit_migrations")[0].decode(Int64.self)
            #expect(applied == Int64(PostgresStore.migrations.count))
            // every node writes; each sweeps only its own running rows
            let t = Date()
            let ids = try await withThrowingTaskGroup(of: Int64.self) { group in
                for s in stores { group.addTask { try await s.begin(code: "pass", name: s.host, containerID: "c", queuedAt: t, startedAt: t) } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(Set(ids).count == 3)
            #expect(try await stores[1].markInterrupted() == 1)
            #expect(try await stores[0].list(LogQuery()).filter { $0.status == "running" }.count == 2)
        }
    }

    /// The same rows in both backends give the same list, trends and regression series.
    @Test func theSameRowsGiveTheSameAnswersAsSQLite() async throws {
        try await TestPostgres.with { pg in
            let pgStore = try PostgresStore(url: pg.url, logger: Self.logger)
            defer { pgStore.close() }
            let path = tempDB()
            defer { removeDB(path) }
            let lite = try ExecutionStore(path: path)
            let logs: [any ExecutionLog] = [lite, pgStore]
            for l in logs { try await l.prepare { _ in } }
            var rng = SystemRandomNumberGenerator()
            let t0 = Date(timeIntervalSince1970: 1_764_000_000)  // 2025-11-24 16:00:00 UTC
            for i in 0..<240 {
                let at = t0.addingTimeInterval(Double(i) * 61)  // ~4 hours of minutes
                let seconds = Double(Int.random(in: 1...2000, using: &rng)) / 1000
                let program = i % 3 == 0 ? "a" : i % 3 == 1 ? "b" : "c"
                var r = ExecutionLogContract.result(program, seconds: i > 200 && program == "a" ? seconds * 10 : seconds,
                                                    peak: Int64.random(in: 1...1000, using: &rng) << 20)
                r.customMetrics = ["loss": .init(last: Double(i) / 7, min: 0, max: 1, count: 1, unit: nil)]
                for l in logs {
                    let id = try await l.begin(code: "print('\(program)')", name: program, containerID: "c\(i)", labels: ["prog": program, "i": String(i % 2)],
                                               queuedAt: at, startedAt: at)
                    try await l.finish(id: id, result: r, finishedAt: at.addingTimeInterval(seconds))
                }
            }
            var q = LogQuery()
            q.limit = 500
            #expect(try await lite.list(q).map(\.id) == pgStore.list(q).map(\.id))
            q.labels = [("prog", "b"), ("i", "1")]
            let filtered = try await pgStore.list(q)
            #expect(try await lite.list(q).map(\.id) == filtered.map(\.id) && filtered.count == 40)
            for metric in ["execution_time", "memory_peak", "custom.loss"] {
                let m = try Trends.metric(Substring(metric))
                for bucket in TrendBucket.allCases {
                    var tq = LogQuery()
                    (tq.since, tq.until) = bucket.window(since: t0.addingTimeInterval(-86400 * 2), until: t0.addingTimeInterval(86400))
                    let a = try await lite.trends(tq, metric: m, bucket: bucket)
                    let b = try await pgStore.trends(tq, metric: m, bucket: bucket)
                    #expect(!a.isEmpty && a == b, "\(metric) \(bucket): sqlite \(a.prefix(3)) postgres \(b.prefix(3))")
                }
                for key in [nil, "prog"] as [String?] {
                    let a = try await lite.latestValues(LogQuery(), metric: m, labelKey: key, count: 20)
                    let b = try await pgStore.latestValues(LogQuery(), metric: m, labelKey: key, count: 20)
                    #expect(!a.isEmpty && a == b, "\(metric) by \(key ?? "code"): \(a.map(\.group)) / \(b.map(\.group))")
                }
            }
            let sa = ExecutionStats.summarize(try await lite.samples(since: nil, until: nil), since: nil, until: nil)
            let sb = ExecutionStats.summarize(try await pgStore.samples(since: nil, until: nil), since: nil, until: nil)
            #expect(sa.json() == sb.json())
        }
    }
}
