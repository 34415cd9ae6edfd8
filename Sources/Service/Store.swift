import Foundation
import CTrend
import GRDB
import Sandbox
import Synchronization

/// The execution log on SQLite through GRDB: WAL mode (DatabasePool), busy database
/// retried. Table and column names are the specification's.
public final class ExecutionStore: ExecutionLog {
    public typealias Retention = Service.Retention
    public typealias ListQuery = LogQuery

    public let pool: DatabasePool
    public let host: String

    /// Bytes of a run's stdout, and of its stderr, kept in its row (the response has
    /// them all); a cut row says so in `log_truncated`.
    public let outputLimit: Int
    /// Results whose row could not be completed (disk full, I/O error), retried by
    /// `maintain()` so that the log catches up by itself once it can be written.
    let unfinished = PendingCompletions()

    public func prepare(progress: @escaping (String) -> Void = { _ in }) throws -> MigrationReport {
        try Schema.migrate(pool, progress: progress)
    }

    public init(path: String, host: String = ExecutionStore.hostName(), outputLimit: Int = 256 << 10) throws {
        try Self.secureFiles(path)
        var config = Configuration()
        config.busyMode = .timeout(10)  // wait for a lock instead of failing
        config.prepareDatabase { db in
            // A checkpointed WAL is cut back to this size instead of keeping its largest.
            try db.execute(sql: "PRAGMA journal_size_limit = \(8 << 20)")
            let rc = sp_register_trend(db.sqliteConnection)
            guard rc == SQLITE_OK else { throw DatabaseError(resultCode: ResultCode(rawValue: rc), message: "sp_trend") }
        }
        pool = try DatabasePool(path: path, configuration: config)
        self.host = host
        self.outputLimit = max(0, outputLimit)
    }

    /// The log holds every run's code and output: its directory is made 0700 when it
    /// does not exist, and the database and its side files are 0600 (SQLite gives the
    /// -wal and -shm files the database's mode; existing ones are tightened too).
    static func secureFiles(_ path: String) throws {
        let dir = (path as NSString).deletingLastPathComponent
        if !dir.isEmpty && access(dir, F_OK) != 0 {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        }
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        close(fd)
        for suffix in ["", "-wal", "-shm"] { _ = chmod(path + suffix, 0o600) }
    }

    public static func hostName() -> String {
        var buf = [CChar](repeating: 0, count: 256)
        gethostname(&buf, buf.count)
        return String(cString: buf)
    }

    /// Runs `body` in a write transaction, retrying while SQLite reports the database
    /// busy or locked, so that a contended database delays a row instead of losing it.
    func write<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        var attempt = 0
        while true {
            do {
                return try await pool.write(body)
            } catch let e as DatabaseError where (e.resultCode == .SQLITE_BUSY || e.resultCode == .SQLITE_LOCKED) && attempt < 50 {
                attempt += 1
                try await Task.sleep(for: .milliseconds(20 * min(attempt, 10)))
            }
        }
    }

    // MARK: rows

    /// Records a run that is about to start (status `running`); returns its row id.
    public func begin(code: String, name: String, containerID: String, labels: [String: String],
                      queuedAt: Date, startedAt: Date) async throws -> Int64 {
        let host = self.host
        let sha = codeSHA256(code)
        let labelsJSON = labels.isEmpty ? nil : Labels.json(labels)
        return try await write { db in
            try db.execute(sql: """
                INSERT INTO execution_logs (container_id, code, container_name, status, queued_at, started_at, created_at, host,
                                            code_sha256, labels)
                VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?)
                """, arguments: [containerID, code, name, queuedAt, startedAt, startedAt, host, sha, labelsJSON])
            let id = db.lastInsertedRowID
            for (k, v) in labels {
                try db.execute(sql: "INSERT INTO execution_labels (key, value, execution_id) VALUES (?, ?, ?)", arguments: [k, v, id])
            }
            return id
        }
    }

    /// Cuts `text` to at most `limit` bytes of UTF-8 (on a character boundary).
    static func capped(_ text: String?, _ limit: Int) -> (String?, Bool) {
        guard let text, text.utf8.count > limit else { return (text, false) }
        let utf8 = text.utf8
        var end = utf8.index(utf8.startIndex, offsetBy: limit)
        // Back off UTF-8 continuation bytes (10xxxxxx) to the start of a scalar: O(1) a step.
        while end > utf8.startIndex && utf8[end] & 0xC0 == 0x80 { end = utf8.index(before: end) }
        return (String(decoding: utf8[..<end], as: UTF8.self), true)
    }

    /// Completes a row with the run's result. When the database cannot be written
    /// (full disk, I/O error), the result is kept and written by a later `maintain()`.
    public func finish(id: Int64, result r: ExecutionResult, finishedAt: Date, samples: [LiveSample]) async throws {
        try await unfinished.write((id, r, finishedAt, samples)) { p in
            try await finishRow(id: p.id, result: p.result, finishedAt: p.finishedAt, samples: p.samples)
        }
    }

    /// The result's columns in `schema` order, and the row update they make.
    static let storedFields = ExecutionResult.schema.filter { $0.storage != .none }
    /// Columns `finish` writes (the name is the request's, written by `begin`).
    static let finishedFields = storedFields.filter { $0.name != "container_name" }
    static let updateSQL = "UPDATE execution_logs SET "
        + finishedFields.map { "\($0.name) = ?" }.joined(separator: ", ")
        + ", finished_at = ?, log_truncated = ? WHERE id = ?"

    /// A field's value as its column stores it (timestamps as dates).
    static func databaseValue(_ f: ResultField, _ v: FieldValue) -> DatabaseValue {
        switch v {
        case .string(let s):
            if f.sqlType == "TIMESTAMP", let s { return ExecutionResult.parseTimestamp(s)?.databaseValue ?? .null }
            return s.databaseValue
        case .bool(let b): return b.databaseValue
        case .int(let i): return i.databaseValue
        case .double(let d): return d.databaseValue
        case .json(let t): return t.databaseValue
        }
    }

    /// A column's value as the field's type (legacy rows may hold other storage classes).
    static func fieldValue(_ f: ResultField, _ dbv: DatabaseValue?) -> FieldValue {
        switch f.type {
        case .string: f.sqlType == "TIMESTAMP" ? .string(date(dbv).map(ExecutionResult.timestamp)) : .string(string(dbv))
        case .boolean: .bool(bool(dbv))
        case .integer: .int(int(dbv))
        case .number: .double(double(dbv))
        // (rows of older sandpits have none: an empty object or list)
        case .object: .json(string(dbv) ?? (f.nullable ? nil : "{}"))
        case .array: .json(string(dbv) ?? "[]")
        }
    }

    static let sampleColumns = ["execution_id", "t", "cpu_user_time", "cpu_system_time", "cpu_percent", "memory_usage", "memory_peak",
                                "block_io_read", "block_io_write", "network_io_rx", "network_io_tx", "pids_count", "network_io_loopback"]
    static let insertSampleSQL = "INSERT INTO execution_samples (\(sampleColumns.joined(separator: ", "))) VALUES ("
        + sampleColumns.map { _ in "?" }.joined(separator: ", ") + ")"

    func finishRow(id: Int64, result r: ExecutionResult, finishedAt: Date, samples: [LiveSample]) async throws {
        let (output, outCut) = Self.capped(r.output, outputLimit)
        let (errorText, errCut) = Self.capped(r.error, outputLimit)
        var values: [DatabaseValue] = Self.finishedFields.map { f in
            switch f.name {
            case "output": output.databaseValue
            case "error": errorText.databaseValue
            default: Self.databaseValue(f, f.value(of: r))
            }
        }
        values += [finishedAt.databaseValue, (outCut || errCut).databaseValue, id.databaseValue]
        let arguments = StatementArguments(values)
        let rows = samples.map { s -> StatementArguments in
            StatementArguments([id.databaseValue, s.elapsed.databaseValue, s.cpuUserTime.databaseValue, s.cpuSystemTime.databaseValue,
                                s.cpuPercent.databaseValue, s.memoryUsage.databaseValue, s.memoryPeak.databaseValue,
                                s.blockIORead.databaseValue, s.blockIOWrite.databaseValue, s.networkIORx.databaseValue,
                                s.networkIOTx.databaseValue, s.pidsCount.databaseValue, s.networkIOLoopback.databaseValue])
        }
        let points = r.customPoints.enumerated().map { i, p in
            StatementArguments([id.databaseValue, i.databaseValue, p.t.databaseValue, p.name.databaseValue, p.value.databaseValue])
        }
        try await write { db in
            try db.execute(sql: Self.updateSQL, arguments: arguments)
            if !points.isEmpty {
                try db.execute(sql: "DELETE FROM execution_custom_metrics WHERE execution_id = ?", arguments: [id])  // a retried write
                let statement = try db.cachedStatement(sql: "INSERT INTO execution_custom_metrics (execution_id, seq, t, name, value) VALUES (?, ?, ?, ?, ?)")
                for args in points { try statement.execute(arguments: args) }
            }
            if !rows.isEmpty {
                try db.execute(sql: "DELETE FROM execution_samples WHERE execution_id = ?", arguments: [id])  // a retried write
                let statement = try db.cachedStatement(sql: Self.insertSampleSQL)
                for args in rows { try statement.execute(arguments: args) }
            }
        }
    }

    /// The points run `id` reported on its metrics pipe, in order (only `name`'s when given).
    public func customPoints(id: Int64, name: String?) async throws -> [CustomPoint] {
        try await pool.read { db in
            let rows = try Row.fetchAll(db, sql: "SELECT t, name, value FROM execution_custom_metrics WHERE execution_id = ?"
                                        + (name == nil ? "" : " AND name = ?") + " ORDER BY seq",
                                        arguments: StatementArguments([id.databaseValue] + (name.map { [$0.databaseValue] } ?? [])))
            return rows.map { CustomPoint(t: $0["t"], name: $0["name"], value: $0["value"]) }
        }
    }

    public func series(id: Int64) async throws -> [LiveSample] {
        try await pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM execution_samples WHERE execution_id = ? ORDER BY t, rowid", arguments: [id])
                .map(Self.liveSample)
        }
    }

    /// The periodic upkeep of the log: rows whose completion failed are written,
    /// finished rows beyond the retention are deleted (`running` rows never are), and
    /// the WAL is checkpointed and truncated.
    @discardableResult
    public func maintain(_ retention: Retention, now: Date) async throws -> MaintenanceReport {
        var report = MaintenanceReport()
        report.completed = try await completePending()
        let cutoff = retention.days.map { now.addingTimeInterval(-$0 * 86400) }
        let rows = retention.rows
        report.deleted = try await write { db in
            var n = 0
            if let cutoff {
                try db.execute(sql: "DELETE FROM execution_logs WHERE created_at < ? AND status != 'running'", arguments: [cutoff])
                n += db.changesCount
            }
            if let rows {
                try db.execute(sql: """
                    DELETE FROM execution_logs WHERE status != 'running' AND id <=
                      (SELECT id FROM execution_logs ORDER BY id DESC LIMIT 1 OFFSET ?)
                    """, arguments: [max(0, rows)])
                n += db.changesCount
            }
            if n > 0 {
                try db.execute(sql: "DELETE FROM execution_samples WHERE execution_id NOT IN (SELECT id FROM execution_logs)")
                try db.execute(sql: "DELETE FROM execution_labels WHERE execution_id NOT IN (SELECT id FROM execution_logs)")
                try db.execute(sql: "DELETE FROM execution_custom_metrics WHERE execution_id NOT IN (SELECT id FROM execution_logs)")
            }
            return n
        }
        try await pool.writeWithoutTransaction { db in
            _ = try Row.fetchOne(db, sql: "PRAGMA wal_checkpoint(TRUNCATE)")
        }
        var st = stat()
        if stat(pool.path + "-wal", &st) == 0 { report.walBytes = Int64(st.st_size) }
        return report
    }

    public func sessionOpened(_ row: SessionRow) async throws {
        let host = self.host
        let labels = row.labels.isEmpty ? nil : Labels.json(row.labels)
        try await write { db in
            try db.execute(sql: """
                INSERT INTO sessions (id, name, created_at, executions, labels, settings, host) VALUES (?, ?, ?, ?, ?, ?, ?)
                """, arguments: [row.id, row.name, row.createdAt, row.executions, labels, row.settings, host])
        }
    }

    public func sessionUpdated(id: String, executions: Int, endedAt: Date?, endReason: String?) async throws {
        try await write { db in
            try db.execute(sql: """
                UPDATE sessions SET executions = ?, ended_at = COALESCE(ended_at, ?), end_reason = COALESCE(end_reason, ?) WHERE id = ?
                """, arguments: [executions, endedAt, endReason, id])
        }
    }

    public func endOpenSessions(reason: String) async throws -> Int {
        let host = self.host
        return try await write { db in
            try db.execute(sql: "UPDATE sessions SET ended_at = ?, end_reason = ? WHERE ended_at IS NULL AND (host = ? OR host IS NULL)",
                           arguments: [Date(), reason, host])
            return db.changesCount
        }
    }

    @discardableResult
    public func completePending() async throws -> Int {
        guard !unfinished.isEmpty else { return 0 }
        return try await unfinished.flush { p in
            try await finishRow(id: p.id, result: p.result, finishedAt: p.finishedAt, samples: p.samples)
        }
    }

    public func heartbeat(_ n: NodeRow) async throws {
        try await write { db in
            try db.execute(sql: """
                INSERT INTO nodes (name, started_at, heartbeat_at, stopped_at, max_concurrency, queue_size, in_flight, queued, sessions, url)
                VALUES (?, ?, ?, NULL, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (name) DO UPDATE SET started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,
                  stopped_at = NULL, max_concurrency = excluded.max_concurrency, queue_size = excluded.queue_size,
                  in_flight = excluded.in_flight, queued = excluded.queued, sessions = excluded.sessions, url = excluded.url
                """, arguments: [n.name, n.startedAt, n.heartbeatAt, n.maxConcurrency, n.queueSize, n.inFlight, n.queued, n.sessions, n.url])
        }
    }

    public func nodeStopped(name: String, at: Date) async throws {
        try await write { db in
            try db.execute(sql: "UPDATE nodes SET stopped_at = ?, in_flight = 0, queued = 0, sessions = 0 WHERE name = ?", arguments: [at, name])
        }
    }

    public func nodes() async throws -> [NodeRow] {
        try await pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM nodes ORDER BY heartbeat_at DESC, name").map { r in
                NodeRow(name: r["name"], startedAt: r["started_at"], heartbeatAt: r["heartbeat_at"], stoppedAt: r["stopped_at"],
                        maxConcurrency: r["max_concurrency"], queueSize: r["queue_size"], inFlight: r["in_flight"],
                        queued: r["queued"], sessions: r["sessions"], url: r["url"])
            }
        }
    }

    public func session(id: String) async throws -> SessionRow? {
        try await pool.read { db in
            guard let r = try Row.fetchOne(db, sql: "SELECT * FROM sessions WHERE id = ?", arguments: [id]) else { return nil }
            var s = SessionRow(id: r["id"], name: r["name"], createdAt: r["created_at"])
            s.endedAt = r["ended_at"]
            s.endReason = r["end_reason"]
            s.executions = r["executions"]
            s.labels = Labels.parse(r["labels"])
            s.settings = r["settings"]
            s.host = r["host"]
            return s
        }
    }

    /// Rows of this host still `running` belong to a sandpit that died: mark them.
    @discardableResult
    public func markInterrupted() async throws -> Int {
        let host = self.host
        return try await write { db in
            try db.execute(sql: """
                UPDATE execution_logs SET status = 'interrupted', success = 0, finished_at = ?,
                  error = COALESCE(error, 'the service stopped during this run')
                WHERE status = 'running' AND (host = ? OR host IS NULL)
                """, arguments: [Date(), host])
            return db.changesCount
        }
    }

    static let logColumns = ["id", "code", "created_at", "queued_at", "finished_at", "host", "log_truncated", "code_sha256", "labels"]

    /// The list's columns: the log's own but `code`, and the result's summary fields.
    static let listColumns = (logColumns.filter { $0 != "code" }
        + ExecutionResult.schema.filter { $0.storage == .summary }.map(\.name)).joined(separator: ", ")
    static let detailColumns = (logColumns + storedFields.map(\.name)).joined(separator: ", ")

    /// Newest first; `before` is the cursor (an id).
    /// The WHERE clause of a query's filters (all but the page size), and its arguments.
    static func filter(_ q: LogQuery, extra: [String] = []) -> (sql: String, arguments: StatementArguments) {
        var clauses: [String] = extra
        var args: [any DatabaseValueConvertible] = []
        if let b = q.before { clauses.append("id < ?"); args.append(b) }
        if let s = q.status { clauses.append("status = ?"); args.append(s) }
        if let n = q.containerName { clauses.append("container_name = ?"); args.append(n) }
        if let h = q.codeSHA256 { clauses.append("code_sha256 = ?"); args.append(h) }
        for (k, v) in q.labels {
            clauses.append("id IN (SELECT execution_id FROM execution_labels WHERE key = ? AND value = ?)")
            args.append(k); args.append(v)
        }
        if let s = q.since { clauses.append("created_at >= ?"); args.append(s) }
        if let u = q.until { clauses.append("created_at < ?"); args.append(u) }
        let sql = clauses.isEmpty ? "" : "WHERE " + clauses.joined(separator: " AND ")
        return (sql, StatementArguments(args.map { Optional($0) as (any DatabaseValueConvertible)? }))
    }

    public func list(_ q: LogQuery) async throws -> [ExecutionRecord] {
        let (whereSQL, arguments) = Self.filter(q)
        let sql = "SELECT \(Self.listColumns) FROM execution_logs \(whereSQL) ORDER BY id DESC LIMIT \(max(0, q.limit))"
        return try await pool.read { db in
            try Row.fetchAll(db, sql: sql, arguments: arguments).map { Self.record($0, detail: false) }
        }
    }

    public func get(id: Int64) async throws -> ExecutionRecord? {
        try await pool.read { db in
            try Row.fetchOne(db, sql: "SELECT \(Self.detailColumns) FROM execution_logs WHERE id = ?", arguments: [id])
                .map { Self.record($0, detail: true) }
        }
    }

    /// Per bucket of `created_at`, the count, p50, p95 and max of `metric` (a stored
    /// numeric field) over the finished rows that pass the query's filters. Buckets
    /// without a value are left out.
    public func trends(_ q: LogQuery, metric m: TrendMetric, bucket: TrendBucket) async throws -> [TrendPoint] {
        let metric = m.sql
        let (whereSQL, arguments) = Self.filter(q, extra: ["status != 'running'", "\(metric) IS NOT NULL"])
        // One aggregate over the scan, no GROUP BY: see Sources/CTrend.
        let sql = "SELECT sp_trend(created_at, \(metric), \(bucket.keyLength)) AS t FROM execution_logs \(whereSQL)"
        return try await pool.read { db in
            let text = try Row.fetchOne(db, sql: sql, arguments: arguments).flatMap { Self.string(Self.cells($0)["t"]) }
            return TrendAggregate.parse(text ?? "", bucket: bucket)
        }
    }

    /// For each group (a fingerprint, or the value of label `labelKey`), the metric of
    /// its newest `count` finished runs, newest first, and the newest run's id.
    public func latestValues(_ q: LogQuery, metric m: TrendMetric, labelKey: String?, count: Int) async throws -> [RunSeries] {
        let metric = m.sql
        let (whereSQL, filterArgs) = Self.filter(q, extra: ["status != 'running'", "\(metric) IS NOT NULL"])
        // The groups from an index alone (code_sha256's, or execution_labels' key), then
        // each group's newest rows by walking that index backwards, `count` at most:
        // the rows read are those answered, not the whole log (ranking every row with a
        // window function took 2.3-3 s over 1 million).
        let groupsSQL = labelKey == nil
            ? "SELECT DISTINCT code_sha256 FROM execution_logs WHERE code_sha256 IS NOT NULL ORDER BY code_sha256"
            : "SELECT DISTINCT value FROM execution_labels WHERE key = ? ORDER BY value"
        let groupArgs: StatementArguments = labelKey.map { [$0] } ?? []
        let seriesSQL = "SELECT \(metric) AS v, id FROM execution_logs \(whereSQL) AND "
            + (labelKey == nil ? "code_sha256 = ?" : "id IN (SELECT execution_id FROM execution_labels WHERE key = ? AND value = ?)")
            + " ORDER BY id DESC LIMIT ?"
        return try await pool.read { db in
            var out: [RunSeries] = []
            let series = try db.makeStatement(sql: seriesSQL)
            for g in try String.fetchAll(db, sql: groupsSQL, arguments: groupArgs) {
                var args = filterArgs
                args += labelKey.map { [$0, g] } ?? [g]
                args += [count]
                var run = RunSeries(group: g, latestID: 0, values: [])
                for row in try Row.fetchAll(series, arguments: args) {
                    let c = Self.cells(row)
                    guard let v = Self.double(c["v"]) else { continue }
                    if run.values.isEmpty { run.latestID = Self.int(c["id"]) ?? 0 }
                    run.values.append(v)
                }
                if !run.values.isEmpty { out.append(run) }
            }
            return out
        }
    }

    public func samples(since: Date?, until: Date?) async throws -> [RunSample] {
        var clauses: [String] = ["status NOT IN ('running')"]
        var args: [any DatabaseValueConvertible] = []
        if let s = since { clauses.append("created_at >= ?"); args.append(s) }
        if let u = until { clauses.append("created_at < ?"); args.append(u) }
        let sql = "SELECT success, execution_time, cpu_user_time, cpu_system_time, memory_peak FROM execution_logs WHERE "
            + clauses.joined(separator: " AND ")
        let arguments = StatementArguments(args.map { Optional($0) as (any DatabaseValueConvertible)? })
        return try await pool.read { db in
            try Row.fetchAll(db, sql: sql, arguments: arguments).map(Self.runSample)
        }
    }

    /// A row's columns by name. Values are converted by the functions below, which
    /// never trap on what a legacy row may hold (GRDB's typed subscripts do); written as
    /// plain switches because Swift 6.3's optimizer crashes on `fromDatabaseValue` here.
    static func cells(_ row: Row) -> [String: DatabaseValue] {
        var out: [String: DatabaseValue] = [:]
        for (name, value) in row { out[name] = value }
        return out
    }

    static func double(_ v: DatabaseValue?) -> Double? {
        switch v?.storage {
        case .double(let d)?: d
        case .int64(let i)?: Double(i)
        case .string(let s)?: Double(s)
        default: nil
        }
    }

    static func int(_ v: DatabaseValue?) -> Int64? {
        switch v?.storage {
        case .int64(let i)?: i
        case .double(let d)?: d.isFinite && abs(d) < 9e18 ? Int64(d) : nil
        case .string(let s)?: Int64(s)
        default: nil
        }
    }

    static func bool(_ v: DatabaseValue?) -> Bool? {
        switch v?.storage {
        case .int64(let i)?: i != 0
        case .double(let d)?: d != 0
        case .string(let s)?: ["1", "true", "TRUE"].contains(s) ? true : ["0", "false", "FALSE"].contains(s) ? false : nil
        default: nil
        }
    }

    static func string(_ v: DatabaseValue?) -> String? {
        switch v?.storage {
        case .string(let s)?: s
        case .blob(let b)?: String(decoding: b, as: UTF8.self)
        case .int64(let i)?: String(i)
        case .double(let d)?: String(d)
        default: nil
        }
    }

    static func date(_ v: DatabaseValue?) -> Date? {
        guard let v, !v.isNull else { return nil }
        return Date.fromDatabaseValue(v)
    }

    static func runSample(_ r: Row) -> RunSample {
        let c = cells(r)
        let user = double(c["cpu_user_time"]), system = double(c["cpu_system_time"])
        var cpu: Double?
        if let user, let system { cpu = user + system }
        return RunSample(success: bool(c["success"]), executionTime: double(c["execution_time"]),
                         cpuTime: cpu, memoryPeak: int(c["memory_peak"]))
    }

    static func liveSample(_ row: Row) -> LiveSample {
        let c = cells(row)
        var s = LiveSample(elapsed: double(c["t"]) ?? 0)
        s.cpuUserTime = double(c["cpu_user_time"])
        s.cpuSystemTime = double(c["cpu_system_time"])
        s.cpuPercent = double(c["cpu_percent"])
        s.memoryUsage = int(c["memory_usage"])
        s.memoryPeak = int(c["memory_peak"])
        s.blockIORead = int(c["block_io_read"])
        s.blockIOWrite = int(c["block_io_write"])
        s.networkIORx = int(c["network_io_rx"])
        s.networkIOTx = int(c["network_io_tx"])
        s.pidsCount = int(c["pids_count"])
        s.networkIOLoopback = int(c["network_io_loopback"])
        return s
    }

    /// A row as a typed record.
    static func record(_ row: Row, detail: Bool) -> ExecutionRecord {
        let c = cells(row)
        var rec = ExecutionRecord(id: int(c["id"]) ?? 0)
        rec.isDetail = detail
        rec.code = string(c["code"])
        rec.createdAt = date(c["created_at"])
        rec.queuedAt = date(c["queued_at"])
        rec.finishedAt = date(c["finished_at"])
        rec.host = string(c["host"])
        rec.logTruncated = bool(c["log_truncated"])
        rec.codeSHA256 = string(c["code_sha256"])
        rec.labels = Labels.parse(string(c["labels"]))
        for f in storedFields where detail || f.storage == .summary {
            rec.values[f.name] = fieldValue(f, c[f.name])
        }
        return rec
    }
}
