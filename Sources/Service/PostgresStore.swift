import Foundation
import Logging
import NIOCore
import PostgresNIO
import Sandbox
import Synchronization

/// The execution log on PostgreSQL (`--db postgres://...`): the same tables, columns and
/// answers as `ExecutionStore` (SQLite), for several nodes sharing one log. Talks to
/// the server through postgres-nio's connection pool.
public final class PostgresStore: ExecutionLog, Sendable {
    public let host: String
    let configuration: PostgresClient.Configuration
    let outputLimit: Int
    let logger: Logger
    /// The connection pool, its task, and when it was made. A pool whose connection
    /// attempts failed while the server was away stays refusing for a long backoff: it
    /// is replaced by a new one (at most every 2 s), so the log is back with the server.
    private let pool: Mutex<(client: PostgresClient, runner: Task<Void, Never>, made: ContinuousClock.Instant)?>
    /// Results whose row could not be completed yet (the server was away): written by `maintain`.
    let unfinished = PendingCompletions()

    /// A `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=disable|prefer|require]`
    /// URL (the password may come from `PGPASSWORD` or `PGPASSFILE`'s first matching line
    /// instead); `host=/dir` in the query names a unix socket directory.
    public struct Location: Sendable, Equatable {
        public var host: String
        public var port: Int
        public var socketDirectory: String?
        public var user: String
        public var password: String?
        public var database: String
        public var sslMode: String

        public init(url: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws(APIError) {
            guard let u = URLComponents(string: url), u.scheme == "postgres" || u.scheme == "postgresql" else {
                throw APIError(.internalServerError, "config", "a database URL must look like postgres://USER@HOST:PORT/DB")
            }
            let query = Dictionary((u.queryItems ?? []).map { ($0.name, $0.value ?? "") }, uniquingKeysWith: { a, _ in a })
            host = u.host.flatMap { $0.isEmpty ? nil : $0 } ?? "127.0.0.1"
            port = u.port ?? 5432
            socketDirectory = query["host"].flatMap { $0.hasPrefix("/") ? $0 : nil }
            user = u.user ?? environment["PGUSER"] ?? "postgres"
            database = String(u.path.drop { $0 == "/" })
            guard !database.isEmpty else { throw APIError(.internalServerError, "config", "the database URL names no database") }
            sslMode = query["sslmode"] ?? "prefer"
            guard ["disable", "prefer", "require"].contains(sslMode) else {
                throw APIError(.internalServerError, "config", "sslmode must be disable, prefer or require")
            }
            password = u.password ?? environment["PGPASSWORD"] ?? Self.passfile(environment["PGPASSFILE"], host: host, port: port, database: database, user: user)
        }

        /// The password of a libpq password file (`host:port:db:user:password`, `*` matches any).
        static func passfile(_ path: String?, host: String, port: Int, database: String, user: String) -> String? {
            guard let path, let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
            for line in text.split(separator: "\n") where !line.hasPrefix("#") {
                let f = line.split(separator: ":", maxSplits: 4, omittingEmptySubsequences: false).map(String.init)
                guard f.count == 5 else { continue }
                let want = [host, String(port), database, user]
                if zip(f.prefix(4), want).allSatisfy({ $0 == "*" || $0 == $1 }) { return f[4] }
            }
            return nil
        }

        var configuration: PostgresClient.Configuration {
            var c: PostgresClient.Configuration
            if let dir = socketDirectory {
                c = .init(unixSocketPath: dir + "/.s.PGSQL.\(port)", username: user, password: password, database: database)
            } else {
                let tls: PostgresClient.Configuration.TLS = switch sslMode {
                case "disable": .disable
                case "require": .require(.makeClientConfiguration())
                default: .prefer(.makeClientConfiguration())
                }
                c = .init(host: host, port: port, username: user, password: password, database: database, tls: tls)
            }
            c.options.maximumConnections = 16
            return c
        }
    }

    public init(url: String, host: String = ExecutionStore.hostName(), outputLimit: Int = 256 << 10, logger: Logger) throws {
        let location = try Location(url: url)
        self.host = host
        self.outputLimit = outputLimit
        self.logger = logger
        configuration = location.configuration
        pool = Mutex(nil)
    }

    deinit { close() }

    /// Stops the connection pool.
    public func close() { pool.withLock { p in p?.runner.cancel(); p = nil } }

    /// The current pool (made on first use).
    var client: PostgresClient {
        pool.withLock { p in
            if let p { return p.client }
            let c = PostgresClient(configuration: configuration, backgroundLogger: logger)
            p = (c, Task { await c.run() }, .now)
            return c
        }
    }

    /// After a failure: a pool that gave up connecting is replaced (see `pool`).
    func failed(_ error: any Error) {
        guard String(describing: error).contains("CircuitBreakerTripped") else { return }
        pool.withLock { p in
            guard let old = p, ContinuousClock.now - old.made > .seconds(2) else { return }
            old.runner.cancel()
            let c = PostgresClient(configuration: configuration, backgroundLogger: logger)
            p = (c, Task { await c.run() }, .now)
            logger.warning("PostgreSQL: the connection pool gave up while the server was away; a new one replaces it")
        }
    }

    /// How long a statement waits for a connection of the pool before it is given up
    /// (503): while the server is away the pool keeps retrying for up to a minute, and a
    /// request should not hang that long.
    static let leaseTimeout: Duration = .seconds(3)

    /// Who came first: the lease or the timer (`phase`: 0 waiting, 1 leased, 2 given
    /// up), and whether the caller was answered (exactly once).
    final class LeaseRace: Sendable {
        let phase = Atomic<Int>(0)
        let done = Atomic<Bool>(false)
        func lease() -> Bool { phase.compareExchange(expected: 0, desired: 1, ordering: .sequentiallyConsistent).exchanged }
        func abandon() -> Bool { phase.compareExchange(expected: 0, desired: 2, ordering: .sequentiallyConsistent).exchanged }
        func answer() -> Bool { done.compareExchange(expected: false, desired: true, ordering: .sequentiallyConsistent).exchanged }
        var answered: Bool { done.load(ordering: .sequentiallyConsistent) }
        /// The deadline's task, stopped once the work has answered.
        let timer = Mutex<Task<Void, Never>?>(nil)
    }

    /// How long a statement (or a transaction) may take once it has its connection.
    static let statementTimeout: Duration = .seconds(15)

    /// A statement did not finish within `statementTimeout`.
    public struct StatementTimeout: Error, CustomStringConvertible {
        public var description: String { "PostgreSQL did not answer within \(PostgresStore.statementTimeout)" }
    }

    /// No connection of the pool came within `leaseTimeout`.
    public struct LeaseTimeout: Error, CustomStringConvertible {
        public var description: String { "no connection to PostgreSQL within \(PostgresStore.leaseTimeout)" }
    }

    /// `body` on a connection of the pool, leased within `leaseTimeout` (or `LeaseTimeout`;
    /// a body never starts after its caller was told it timed out) and done within
    /// `statementTimeout` of the lease (or `StatementTimeout`: a connection that the
    /// server dropped in the middle of a statement may never answer). A failure may
    /// replace the pool for the next call. The work runs in a task of its own, so the
    /// caller is answered at the deadline whatever the pool does with it.
    func using<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        let client = self.client
        let race = LeaseRace()
        let (leaseTimeout, statementTimeout) = (Self.leaseTimeout, Self.statementTimeout)
        do {
            return try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, any Error>) in
                let work = Task {
                    do {
                        let value = try await client.withConnection { conn in
                            guard race.lease() else { throw LeaseTimeout() }
                            return try await body(conn)
                        }
                        if race.answer() { c.resume(returning: value) }
                    } catch {
                        if race.answer() { c.resume(throwing: error) }
                    }
                    race.timer.withLock { $0?.cancel() }
                }
                let timer = Task {
                    try? await Task.sleep(for: leaseTimeout)
                    if race.abandon() {
                        if race.answer() { c.resume(throwing: LeaseTimeout()) }
                        work.cancel()
                        return
                    }
                    guard !race.answered else { return }
                    try? await Task.sleep(for: statementTimeout)
                    if race.answer() {
                        c.resume(throwing: StatementTimeout())
                        work.cancel()
                    }
                }
                race.timer.withLock { $0 = timer }
            }
        } catch {
            failed(error)
            throw error
        }
    }

    // MARK: SQL with `?` placeholders

    /// A bound value.
    enum Value: Sendable {
        case text(String?), int(Int64?), double(Double?), bool(Bool?), date(Date?)
    }

    /// `sql` with each `?` turned into `$n`, and its values bound.
    static func query(_ sql: String, _ values: [Value] = []) -> PostgresQuery {
        var out = ""
        var n = 0
        for ch in sql {
            if ch == "?" {
                n += 1
                out += "$\(n)"
            } else {
                out.append(ch)
            }
        }
        var binds = PostgresBindings(capacity: values.count)
        for v in values {
            switch v {
            case .text(let s): if let s { binds.append(s) } else { binds.appendNull() }
            case .int(let i): if let i { binds.append(i) } else { binds.appendNull() }
            case .double(let d): if let d { binds.append(d) } else { binds.appendNull() }
            case .bool(let b): if let b { binds.append(b) } else { binds.appendNull() }
            case .date(let d): if let d { binds.append(d) } else { binds.appendNull() }
            }
        }
        return PostgresQuery(unsafeSQL: out, binds: binds)
    }

    @discardableResult
    func run(_ sql: String, _ values: [Value] = []) async throws -> [PostgresRow] {
        let logger = self.logger
        return try await using { try await $0.query(Self.query(sql, values), logger: logger).collect() }
    }

    static func run(_ conn: PostgresConnection, _ sql: String, _ values: [Value] = [], logger: Logger) async throws -> [PostgresRow] {
        try await conn.query(query(sql, values), logger: logger).collect()
    }

    // MARK: schema

    /// Each column's PostgreSQL type, from the SQLite type the field list gives.
    static func pgType(_ sqlType: String) -> String {
        switch sqlType {
        case "INTEGER": "BIGINT"
        case "REAL": "DOUBLE PRECISION"
        case "BOOLEAN": "BOOLEAN"
        case "TIMESTAMP": "TIMESTAMPTZ"
        default: "TEXT"
        }
    }

    static let ownColumns: [(String, String)] = [("code", "TEXT"), ("created_at", "TIMESTAMPTZ"), ("queued_at", "TIMESTAMPTZ"),
                                                  ("finished_at", "TIMESTAMPTZ"), ("host", "TEXT"), ("log_truncated", "BOOLEAN"),
                                                  ("code_sha256", "TEXT"), ("labels", "TEXT")]

    /// The migrations, in order; each runs once, recorded in `sandpit_migrations`.
    static var migrations: [(name: String, sql: [String])] {
        let own = Set(ownColumns.map(\.0))
        let fieldColumns = ExecutionStore.storedFields.filter { !own.contains($0.name) }.map { "\($0.name) \(pgType($0.sqlType))" }
        let logs = "CREATE TABLE execution_logs (id BIGSERIAL PRIMARY KEY, "
            + (ownColumns.map { "\($0.0) \($0.1)" } + fieldColumns).joined(separator: ", ") + ")"
        let sampleColumns = ExecutionStore.sampleColumns.dropFirst(2).map { name -> String in
            "\(name) \(["cpu_user_time", "cpu_system_time", "cpu_percent"].contains(name) ? "DOUBLE PRECISION" : "BIGINT")"
        }
        return [("v1 schema", [
            logs,
            "CREATE INDEX execution_logs_created_at ON execution_logs (created_at)",
            "CREATE INDEX execution_logs_code_sha256 ON execution_logs (code_sha256, id)",
            "CREATE INDEX execution_logs_running ON execution_logs (host) WHERE status = 'running'",
            "CREATE TABLE execution_labels (key TEXT NOT NULL, value TEXT NOT NULL, execution_id BIGINT NOT NULL REFERENCES execution_logs (id) ON DELETE CASCADE, PRIMARY KEY (key, value, execution_id))",
            "CREATE TABLE execution_samples (execution_id BIGINT NOT NULL REFERENCES execution_logs (id) ON DELETE CASCADE, seq INTEGER NOT NULL, t DOUBLE PRECISION NOT NULL, "
                + sampleColumns.joined(separator: ", ") + ", PRIMARY KEY (execution_id, seq))",
            "CREATE TABLE execution_custom_metrics (execution_id BIGINT NOT NULL REFERENCES execution_logs (id) ON DELETE CASCADE, seq INTEGER NOT NULL, t DOUBLE PRECISION NOT NULL, name TEXT NOT NULL, value DOUBLE PRECISION NOT NULL, PRIMARY KEY (execution_id, seq))",
            "CREATE TABLE sessions (id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL, ended_at TIMESTAMPTZ, end_reason TEXT, executions BIGINT NOT NULL DEFAULT 0, labels TEXT, settings TEXT, host TEXT)",
            "CREATE INDEX sessions_created_at ON sessions (created_at)",
            "CREATE TABLE nodes (name TEXT PRIMARY KEY, started_at TIMESTAMPTZ NOT NULL, heartbeat_at TIMESTAMPTZ NOT NULL, stopped_at TIMESTAMPTZ, max_concurrency BIGINT NOT NULL, queue_size BIGINT NOT NULL, in_flight BIGINT NOT NULL, queued BIGINT NOT NULL, sessions BIGINT NOT NULL)",
        ]), ("v2 node url", [
            "ALTER TABLE nodes ADD COLUMN url TEXT",
        ]), ("v3 network", [
            "ALTER TABLE execution_logs ADD COLUMN IF NOT EXISTS network TEXT",
        ])]
    }

    /// Applies the migrations not yet applied, under an advisory lock, so that nodes
    /// that start together apply each exactly once.
    @discardableResult
    public func prepare(progress: @escaping (String) -> Void) async throws -> MigrationReport {
        let logger = self.logger
        let done: [String] = try await using { conn in
            try await Self.run(conn, "SELECT pg_advisory_lock(?)", [.int(Self.migrationLock)], logger: logger)
            do {
                try await Self.run(conn, "CREATE TABLE IF NOT EXISTS sandpit_migrations (name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)", logger: logger)
                let applied = Set(try await Self.run(conn, "SELECT name FROM sandpit_migrations", logger: logger).map { try $0.decode(String.self) })
                var done: [String] = []
                for m in Self.migrations where !applied.contains(m.name) {
                    try await conn.withTransaction(logger: logger) { tx in
                        for statement in m.sql { try await Self.run(tx, statement, logger: logger) }
                        try await Self.run(tx, "INSERT INTO sandpit_migrations (name, applied_at) VALUES (?, ?)", [.text(m.name), .date(Date())], logger: logger)
                    }
                    done.append(m.name)
                }
                try await Self.run(conn, "SELECT pg_advisory_unlock(?)", [.int(Self.migrationLock)], logger: logger)
                return done
            } catch {
                _ = try? await Self.run(conn, "SELECT pg_advisory_unlock(?)", [.int(Self.migrationLock)], logger: logger)
                throw error
            }
        }
        var report = MigrationReport()
        for name in done {
            progress("applied \(name)")
            report.otherSteps.append(name)
        }
        report.createdTable = done.contains("v1 schema")
        return report
    }

    /// The advisory lock key of the migrations ("sandpit" in ASCII).
    static let migrationLock: Int64 = 0x73_61_6e_64_70_69_74

    // MARK: rows

    public func begin(code: String, name: String, containerID: String, labels: [String: String],
                      queuedAt: Date, startedAt: Date) async throws -> Int64 {
        let sha = codeSHA256(code)
        let labelsJSON = labels.isEmpty ? nil : Labels.json(labels)
        let host = self.host, logger = self.logger
        return try await using { conn in try await conn.withTransaction(logger: logger) { tx in
            let rows = try await Self.run(tx, """
                INSERT INTO execution_logs (container_id, code, container_name, status, queued_at, started_at, created_at, host, code_sha256, labels)
                VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?) RETURNING id
                """, [.text(containerID), .text(code), .text(name), .date(queuedAt), .date(startedAt), .date(startedAt), .text(host),
                      .text(sha), .text(labelsJSON)], logger: logger)
            let id = try rows[0].decode(Int64.self)
            for (k, v) in labels {
                try await Self.run(tx, "INSERT INTO execution_labels (key, value, execution_id) VALUES (?, ?, ?)", [.text(k), .text(v), .int(id)], logger: logger)
            }
            return id
        } }
    }

    public func finish(id: Int64, result r: ExecutionResult, finishedAt: Date, samples: [LiveSample]) async throws {
        try await unfinished.write((id, r, finishedAt, samples)) { p in
            try await finishRow(id: p.id, result: p.result, finishedAt: p.finishedAt, samples: p.samples)
        }
    }

    static func value(_ f: ResultField, _ v: FieldValue) -> Value {
        switch v {
        case .string(let s): f.sqlType == "TIMESTAMP" ? .date(s.flatMap(ExecutionResult.parseTimestamp)) : .text(s)
        case .bool(let b): .bool(b)
        case .int(let i): .int(i)
        case .double(let d): .double(d)
        case .json(let t): .text(t)
        }
    }

    static let updateSQL = "UPDATE execution_logs SET "
        + ExecutionStore.finishedFields.map { "\($0.name) = ?" }.joined(separator: ", ")
        + ", finished_at = ?, log_truncated = ? WHERE id = ?"

    func finishRow(id: Int64, result r: ExecutionResult, finishedAt: Date, samples: [LiveSample]) async throws {
        let (output, outCut) = ExecutionStore.capped(r.output, outputLimit)
        let (errorText, errCut) = ExecutionStore.capped(r.error, outputLimit)
        var values: [Value] = ExecutionStore.finishedFields.map { f in
            switch f.name {
            case "output": .text(output)
            case "error": .text(errorText)
            default: Self.value(f, f.value(of: r))
            }
        }
        values += [.date(finishedAt), .bool(outCut || errCut), .int(id)]
        let logger = self.logger, bound = values
        try await using { conn in try await conn.withTransaction(logger: logger) { tx in
            try await Self.run(tx, Self.updateSQL, bound, logger: logger)
            try await Self.run(tx, "DELETE FROM execution_custom_metrics WHERE execution_id = ?", [.int(id)], logger: logger)  // a retried write
            for (i, p) in r.customPoints.enumerated() {
                try await Self.run(tx, "INSERT INTO execution_custom_metrics (execution_id, seq, t, name, value) VALUES (?, ?, ?, ?, ?)",
                                   [.int(id), .int(Int64(i)), .double(p.t), .text(p.name), .double(p.value)], logger: logger)
            }
            try await Self.run(tx, "DELETE FROM execution_samples WHERE execution_id = ?", [.int(id)], logger: logger)
            let columns = ExecutionStore.sampleColumns.dropFirst(2)
            let insert = "INSERT INTO execution_samples (execution_id, seq, t, \(columns.joined(separator: ", "))) VALUES (?, ?, ?, "
                + columns.map { _ in "?" }.joined(separator: ", ") + ")"
            for (i, s) in samples.enumerated() {
                try await Self.run(tx, insert, [.int(id), .int(Int64(i)), .double(s.elapsed), .double(s.cpuUserTime), .double(s.cpuSystemTime),
                                                .double(s.cpuPercent), .int(s.memoryUsage), .int(s.memoryPeak), .int(s.blockIORead),
                                                .int(s.blockIOWrite), .int(s.networkIORx), .int(s.networkIOTx), .int(s.pidsCount),
                                                .int(s.networkIOLoopback)], logger: logger)
            }
        } }
    }

    public func markInterrupted() async throws -> Int {
        try await run("""
            UPDATE execution_logs SET status = 'interrupted', success = FALSE, finished_at = ?,
              error = COALESCE(error, 'the service stopped during this run')
            WHERE status = 'running' AND (host = ? OR host IS NULL) RETURNING id
            """, [.date(Date()), .text(host)]).count
    }

    public func maintain(_ retention: Retention, now: Date) async throws -> MaintenanceReport {
        var report = MaintenanceReport()
        report.completed = try await completePending()
        if let days = retention.days {
            report.deleted += try await run("DELETE FROM execution_logs WHERE created_at < ? AND status != 'running' RETURNING id",
                                            [.date(now.addingTimeInterval(-days * 86400))]).count
        }
        if let rows = retention.rows {
            report.deleted += try await run("""
                DELETE FROM execution_logs WHERE status != 'running' AND id <=
                  (SELECT id FROM execution_logs ORDER BY id DESC LIMIT 1 OFFSET ?) RETURNING id
                """, [.int(Int64(max(0, rows)))]).count
        }
        return report
    }

    // MARK: reading

    /// The WHERE clause of a query's filters, as `ExecutionStore.filter` builds it.
    static func filter(_ q: LogQuery, extra: [String] = []) -> (sql: String, values: [Value]) {
        var clauses = extra
        var values: [Value] = []
        if let b = q.before { clauses.append("id < ?"); values.append(.int(b)) }
        if let s = q.status { clauses.append("status = ?"); values.append(.text(s)) }
        if let n = q.containerName { clauses.append("container_name = ?"); values.append(.text(n)) }
        if let h = q.codeSHA256 { clauses.append("code_sha256 = ?"); values.append(.text(h)) }
        for (k, v) in q.labels {
            clauses.append("id IN (SELECT execution_id FROM execution_labels WHERE key = ? AND value = ?)")
            values += [.text(k), .text(v)]
        }
        if let s = q.since { clauses.append("created_at >= ?"); values.append(.date(s)) }
        if let u = q.until { clauses.append("created_at < ?"); values.append(.date(u)) }
        return (clauses.isEmpty ? "" : "WHERE " + clauses.joined(separator: " AND "), values)
    }

    public func list(_ q: LogQuery) async throws -> [ExecutionRecord] {
        let (whereSQL, values) = Self.filter(q)
        return try await run("SELECT \(ExecutionStore.listColumns) FROM execution_logs \(whereSQL) ORDER BY id DESC LIMIT \(max(0, q.limit))", values)
            .map { Self.record($0, detail: false) }
    }

    public func get(id: Int64) async throws -> ExecutionRecord? {
        try await run("SELECT \(ExecutionStore.detailColumns) FROM execution_logs WHERE id = ?", [.int(id)])
            .first.map { Self.record($0, detail: true) }
    }

    /// The metric's value in a row (a column, or a custom metric's last value).
    static func expression(_ m: TrendMetric) -> String {
        guard m.name.hasPrefix("custom.") else { return m.name }
        // (the name was checked against [A-Za-z_][A-Za-z0-9_.]*: safe in the SQL text)
        return "((custom_metrics::jsonb -> '\(m.name.dropFirst(7))' ->> 'last')::double precision)"
    }

    public func trends(_ q: LogQuery, metric m: TrendMetric, bucket: TrendBucket) async throws -> [TrendPoint] {
        let metric = Self.expression(m)
        let (whereSQL, values) = Self.filter(q, extra: ["status != 'running'", "\(metric) IS NOT NULL"])
        let unit = switch bucket { case .minute: "minute"; case .hour: "hour"; case .day: "day" }
        // percentile_disc is the nearest rank (the smallest value whose cumulative share reaches p).
        let sql = """
            SELECT date_trunc('\(unit)', created_at AT TIME ZONE 'UTC') AS b, count(*) AS n,
              percentile_disc(0.5) WITHIN GROUP (ORDER BY \(metric)) AS p50,
              percentile_disc(0.95) WITHIN GROUP (ORDER BY \(metric)) AS p95, max(\(metric)) AS mx
            FROM execution_logs \(whereSQL) GROUP BY 1 ORDER BY 1
            """
        return try await run(sql, values).map { row in
            let r = row.makeRandomAccess()
            let start = (try? r["b"].decode(Date.self)) ?? Date(timeIntervalSince1970: 0)
            return TrendPoint(start: start, count: Int((try? r["n"].decode(Int64.self)) ?? 0),
                              p50: Self.double(r["p50"]) ?? 0, p95: Self.double(r["p95"]) ?? 0, max: Self.double(r["mx"]) ?? 0)
        }
    }

    public func latestValues(_ q: LogQuery, metric m: TrendMetric, labelKey: String?, count: Int) async throws -> [RunSeries] {
        let metric = Self.expression(m)
        let (whereSQL, filterValues) = Self.filter(q, extra: ["status != 'running'", "\(metric) IS NOT NULL"])
        let groups: [String] = labelKey == nil
            ? try await run("SELECT DISTINCT code_sha256 FROM execution_logs WHERE code_sha256 IS NOT NULL ORDER BY code_sha256").map { try $0.decode(String.self) }
            : try await run("SELECT DISTINCT value FROM execution_labels WHERE key = ? ORDER BY value", [.text(labelKey!)]).map { try $0.decode(String.self) }
        let seriesSQL = "SELECT (\(metric))::double precision AS v, id FROM execution_logs \(whereSQL) AND "
            + (labelKey == nil ? "code_sha256 = ?" : "id IN (SELECT execution_id FROM execution_labels WHERE key = ? AND value = ?)")
            + " ORDER BY id DESC LIMIT ?"
        var out: [RunSeries] = []
        for g in groups {
            var values = filterValues
            values += labelKey.map { [Value.text($0), .text(g)] } ?? [.text(g)]
            values.append(.int(Int64(count)))
            var series = RunSeries(group: g, latestID: 0, values: [])
            for row in try await run(seriesSQL, values) {
                let (v, id) = try row.decode((Double?, Int64).self)
                guard let v else { continue }
                if series.values.isEmpty { series.latestID = id }
                series.values.append(v)
            }
            if !series.values.isEmpty { out.append(series) }
        }
        return out
    }

    public func series(id: Int64) async throws -> [LiveSample] {
        try await run("SELECT * FROM execution_samples WHERE execution_id = ? ORDER BY seq", [.int(id)]).map { row in
            let r = row.makeRandomAccess()
            var s = LiveSample(elapsed: Self.double(r["t"]) ?? 0)
            s.cpuUserTime = Self.double(r["cpu_user_time"])
            s.cpuSystemTime = Self.double(r["cpu_system_time"])
            s.cpuPercent = Self.double(r["cpu_percent"])
            s.memoryUsage = Self.int(r["memory_usage"])
            s.memoryPeak = Self.int(r["memory_peak"])
            s.blockIORead = Self.int(r["block_io_read"])
            s.blockIOWrite = Self.int(r["block_io_write"])
            s.networkIORx = Self.int(r["network_io_rx"])
            s.networkIOTx = Self.int(r["network_io_tx"])
            s.pidsCount = Self.int(r["pids_count"])
            s.networkIOLoopback = Self.int(r["network_io_loopback"])
            return s
        }
    }

    public func customPoints(id: Int64, name: String?) async throws -> [CustomPoint] {
        let rows = try await run("SELECT t, name, value FROM execution_custom_metrics WHERE execution_id = ?"
                                 + (name == nil ? "" : " AND name = ?") + " ORDER BY seq",
                                 [.int(id)] + (name.map { [Value.text($0)] } ?? []))
        return try rows.map { row in
            let (t, n, v) = try row.decode((Double, String, Double).self)
            return CustomPoint(t: t, name: n, value: v)
        }
    }

    public func samples(since: Date?, until: Date?) async throws -> [RunSample] {
        var clauses = ["status != 'running'"]
        var values: [Value] = []
        if let s = since { clauses.append("created_at >= ?"); values.append(.date(s)) }
        if let u = until { clauses.append("created_at < ?"); values.append(.date(u)) }
        return try await run("SELECT success, execution_time, cpu_user_time, cpu_system_time, memory_peak FROM execution_logs WHERE "
                             + clauses.joined(separator: " AND "), values).map { row in
            let (ok, t, u, s, p) = try row.decode((Bool?, Double?, Double?, Double?, Int64?).self)
            return RunSample(success: ok, executionTime: t, cpuTime: u.flatMap { u in s.map { u + $0 } }, memoryPeak: p)
        }
    }

    // MARK: sessions and nodes

    public func sessionOpened(_ row: SessionRow) async throws {
        try await run("INSERT INTO sessions (id, name, created_at, executions, labels, settings, host) VALUES (?, ?, ?, ?, ?, ?, ?)",
                      [.text(row.id), .text(row.name), .date(row.createdAt), .int(Int64(row.executions)),
                       .text(row.labels.isEmpty ? nil : Labels.json(row.labels)), .text(row.settings), .text(host)])
    }

    public func sessionUpdated(id: String, executions: Int, endedAt: Date?, endReason: String?) async throws {
        try await run("UPDATE sessions SET executions = ?, ended_at = COALESCE(ended_at, ?), end_reason = COALESCE(end_reason, ?) WHERE id = ?",
                      [.int(Int64(executions)), .date(endedAt), .text(endReason), .text(id)])
    }

    public func endOpenSessions(reason: String) async throws -> Int {
        try await run("UPDATE sessions SET ended_at = ?, end_reason = ? WHERE ended_at IS NULL AND (host = ? OR host IS NULL) RETURNING id",
                      [.date(Date()), .text(reason), .text(host)]).count
    }

    public func session(id: String) async throws -> SessionRow? {
        guard let row = try await run("SELECT id, name, created_at, ended_at, end_reason, executions, labels, settings, host FROM sessions WHERE id = ?", [.text(id)]).first else { return nil }
        let (sid, name, created, ended, reason, n, labels, settings, host) = try row.decode((String, String, Date, Date?, String?, Int64, String?, String?, String?).self)
        var s = SessionRow(id: sid, name: name, createdAt: created)
        s.endedAt = ended
        s.endReason = reason
        s.executions = Int(n)
        s.labels = Labels.parse(labels)
        s.settings = settings
        s.host = host
        return s
    }

    @discardableResult
    public func completePending() async throws -> Int {
        guard !unfinished.isEmpty else { return 0 }
        return try await unfinished.flush { p in
            try await finishRow(id: p.id, result: p.result, finishedAt: p.finishedAt, samples: p.samples)
        }
    }

    public func heartbeat(_ n: NodeRow) async throws {
        try await run("""
            INSERT INTO nodes (name, started_at, heartbeat_at, stopped_at, max_concurrency, queue_size, in_flight, queued, sessions, url)
            VALUES (?, ?, ?, NULL, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (name) DO UPDATE SET started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,
              stopped_at = NULL, max_concurrency = excluded.max_concurrency, queue_size = excluded.queue_size,
              in_flight = excluded.in_flight, queued = excluded.queued, sessions = excluded.sessions, url = excluded.url
            """, [.text(n.name), .date(n.startedAt), .date(n.heartbeatAt), .int(Int64(n.maxConcurrency)), .int(Int64(n.queueSize)),
                  .int(Int64(n.inFlight)), .int(Int64(n.queued)), .int(Int64(n.sessions)), .text(n.url)])
    }

    public func nodeStopped(name: String, at: Date) async throws {
        try await run("UPDATE nodes SET stopped_at = ?, in_flight = 0, queued = 0, sessions = 0 WHERE name = ?", [.date(at), .text(name)])
    }

    public func nodes() async throws -> [NodeRow] {
        try await run("SELECT name, started_at, heartbeat_at, stopped_at, max_concurrency, queue_size, in_flight, queued, sessions, url FROM nodes ORDER BY heartbeat_at DESC, name")
            .map { row in
                let (name, started, beat, stopped, mc, qs, inf, q, s, url) = try row.decode((String, Date, Date, Date?, Int64, Int64, Int64, Int64, Int64, String?).self)
                return NodeRow(name: name, startedAt: started, heartbeatAt: beat, stoppedAt: stopped, maxConcurrency: Int(mc),
                               queueSize: Int(qs), inFlight: Int(inf), queued: Int(q), sessions: Int(s), url: url)
            }
    }

    // MARK: cells

    static func double(_ c: PostgresCell) -> Double? {
        if let d = try? c.decode(Double?.self) { return d }
        return int(c).map(Double.init)
    }

    static func int(_ c: PostgresCell) -> Int64? { try? c.decode(Int64?.self) }

    static func fieldValue(_ f: ResultField, _ c: PostgresCell) -> FieldValue {
        switch f.type {
        case .string: f.sqlType == "TIMESTAMP" ? .string((try? c.decode(Date?.self))?.map(ExecutionResult.timestamp)) : .string(try? c.decode(String?.self))
        case .boolean: .bool(try? c.decode(Bool?.self))
        case .integer: .int(int(c))
        case .number: .double(double(c))
        case .object: .json((try? c.decode(String?.self)) ?? (f.nullable ? nil : "{}"))
        case .array: .json((try? c.decode(String?.self)) ?? "[]")
        }
    }

    static func record(_ row: PostgresRow, detail: Bool) -> ExecutionRecord {
        let r = row.makeRandomAccess()
        var rec = ExecutionRecord(id: int(r["id"]) ?? 0)
        rec.isDetail = detail
        if detail { rec.code = try? r["code"].decode(String?.self) }
        rec.createdAt = try? r["created_at"].decode(Date?.self)
        rec.queuedAt = try? r["queued_at"].decode(Date?.self)
        rec.finishedAt = try? r["finished_at"].decode(Date?.self)
        rec.host = try? r["host"].decode(String?.self)
        rec.logTruncated = try? r["log_truncated"].decode(Bool?.self)
        rec.codeSHA256 = try? r["code_sha256"].decode(String?.self)
        rec.labels = Labels.parse(try? r["labels"].decode(String?.self))
        for f in ExecutionStore.storedFields where detail || f.storage == .summary {
            rec.values[f.name] = fieldValue(f, r[f.name])
        }
        return rec
    }
}
