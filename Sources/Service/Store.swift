import Foundation
import GRDB
import Sandbox
import Synchronization

/// The execution log: SQLite through GRDB, WAL mode (DatabasePool), busy database
/// retried. Table and column names are the specification's.
public final class ExecutionStore: Sendable {
    public let pool: DatabasePool
    public let host: String

    /// Bytes of a run's stdout, and of its stderr, kept in its row (the response has
    /// them all); a cut row says so in `log_truncated`.
    public let outputLimit: Int
    /// Results whose row could not be completed (disk full, I/O error), retried by
    /// `maintain()` so that the log catches up by itself once it can be written.
    let unfinished = Mutex<[(id: Int64, result: ExecutionResult, finishedAt: Date)]>([])

    public init(path: String, host: String = ExecutionStore.hostName(), outputLimit: Int = 256 << 10) throws {
        try Self.secureFiles(path)
        var config = Configuration()
        config.busyMode = .timeout(10)  // wait for a lock instead of failing
        config.prepareDatabase { db in
            // A checkpointed WAL is cut back to this size instead of keeping its largest.
            try db.execute(sql: "PRAGMA journal_size_limit = \(8 << 20)")
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
    public func begin(code: String, name: String, containerID: String, queuedAt: Date, startedAt: Date) async throws -> Int64 {
        let host = self.host
        return try await write { db in
            try db.execute(sql: """
                INSERT INTO execution_logs (container_id, code, container_name, status, queued_at, started_at, created_at, host)
                VALUES (?, ?, ?, 'running', ?, ?, ?, ?)
                """, arguments: [containerID, code, name, queuedAt, startedAt, startedAt, host])
            return db.lastInsertedRowID
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
    public func finish(id: Int64, result r: ExecutionResult, finishedAt: Date) async throws {
        do {
            try await finishRow(id: id, result: r, finishedAt: finishedAt)
        } catch {
            unfinished.withLock { list in
                if list.count < 10_000 { list.append((id, r, finishedAt)) }
            }
            throw error
        }
    }

    func finishRow(id: Int64, result r: ExecutionResult, finishedAt: Date) async throws {
        let (output, outCut) = Self.capped(r.output, outputLimit)
        let (errorText, errCut) = Self.capped(r.error, outputLimit)
        try await write { db in
            try db.execute(sql: """
                UPDATE execution_logs SET
                  container_id = ?, output = ?, error = ?, success = ?, execution_time = ?,
                  cpu_user_time = ?, cpu_system_time = ?, cpu_percent = ?,
                  memory_usage = ?, memory_peak = ?, memory_percent = ?, memory_limit = ?,
                  block_io_read = ?, block_io_write = ?, network_io_rx = ?, network_io_tx = ?,
                  pids_count = ?, exit_code = ?,
                  status = ?, signal = ?, oom_killed = ?, timed_out = ?, started_at = ?, finished_at = ?,
                  log_truncated = ?
                WHERE id = ?
                """, arguments: [
                    r.containerID, output, errorText, r.success, r.executionTime,
                    r.cpuUserTime, r.cpuSystemTime, r.cpuPercent,
                    r.memoryUsage, r.memoryPeak, r.memoryPercent, r.memoryLimit,
                    r.blockIORead, r.blockIOWrite, r.networkIORx, r.networkIOTx,
                    r.pidsCount, r.exitCode,
                    r.status.rawValue, r.signal, r.oomKilled, r.timedOut, r.startedAt, finishedAt,
                    outCut || errCut, id,
                ])
        }
    }

    public struct Retention: Sendable {
        /// Finished rows older than this many days are deleted (nil: kept).
        public var days: Double?
        /// Only the newest this many rows are kept (nil: no cap).
        public var rows: Int?
        public init(days: Double? = 30, rows: Int? = 1_000_000) {
            self.days = days
            self.rows = rows
        }
    }

    public struct MaintenanceReport: Sendable {
        public var deleted = 0
        public var completed = 0
        public var walBytes: Int64 = 0
    }

    /// The periodic upkeep of the log: rows whose completion failed are written,
    /// finished rows beyond the retention are deleted (`running` rows never are), and
    /// the WAL is checkpointed and truncated.
    @discardableResult
    public func maintain(_ retention: Retention, now: Date = Date()) async throws -> MaintenanceReport {
        var report = MaintenanceReport()
        let pending = unfinished.withLock { list in
            let all = list
            list.removeAll()
            return all
        }
        for (i, p) in pending.enumerated() {
            do {
                try await finishRow(id: p.id, result: p.result, finishedAt: p.finishedAt)
                report.completed += 1
            } catch {
                unfinished.withLock { $0.append(contentsOf: pending[i...]) }
                throw error
            }
        }
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
            return n
        }
        try await pool.writeWithoutTransaction { db in
            _ = try Row.fetchOne(db, sql: "PRAGMA wal_checkpoint(TRUNCATE)")
        }
        var st = stat()
        if stat(pool.path + "-wal", &st) == 0 { report.walBytes = Int64(st.st_size) }
        return report
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

    public struct ListQuery: Sendable {
        public var limit = 50
        public var before: Int64?
        public var status: String?
        public var containerName: String?
        public var since: Date?
        public var until: Date?
        public init() {}
    }

    static let listColumns = """
        id, container_id, container_name, success, status, exit_code, signal, execution_time,
        cpu_user_time, cpu_system_time, cpu_percent, memory_usage, memory_peak, memory_percent, memory_limit,
        block_io_read, block_io_write, network_io_rx, network_io_tx, pids_count, oom_killed, timed_out,
        log_truncated, created_at, queued_at, started_at, finished_at, host
        """

    /// Newest first; `before` is the cursor (an id).
    public func list(_ q: ListQuery) async throws -> [[String: Any]] {
        var clauses: [String] = []
        var args: [any DatabaseValueConvertible] = []
        if let b = q.before { clauses.append("id < ?"); args.append(b) }
        if let s = q.status { clauses.append("status = ?"); args.append(s) }
        if let n = q.containerName { clauses.append("container_name = ?"); args.append(n) }
        if let s = q.since { clauses.append("created_at >= ?"); args.append(s) }
        if let u = q.until { clauses.append("created_at < ?"); args.append(u) }
        let whereSQL = clauses.isEmpty ? "" : "WHERE " + clauses.joined(separator: " AND ")
        let sql = "SELECT \(Self.listColumns) FROM execution_logs \(whereSQL) ORDER BY id DESC LIMIT \(q.limit)"
        let arguments = StatementArguments(args.map { Optional($0) as (any DatabaseValueConvertible)? })
        return try await pool.read { db in
            Unchecked(try Row.fetchAll(db, sql: sql, arguments: arguments).map(Self.json))
        }.value
    }

    public func get(id: Int64) async throws -> [String: Any]? {
        try await pool.read { db in
            Unchecked(try Row.fetchOne(db, sql: "SELECT * FROM execution_logs WHERE id = ?", arguments: [id]).map(Self.json))
        }.value
    }

    /// Aggregates over a time window: count, success rate, p50/p95/max of execution
    /// time, CPU time (user + system) and memory peak.
    public func stats(since: Date?, until: Date?) async throws -> [String: Any] {
        var clauses: [String] = ["status NOT IN ('running')"]
        var args: [any DatabaseValueConvertible] = []
        if let s = since { clauses.append("created_at >= ?"); args.append(s) }
        if let u = until { clauses.append("created_at < ?"); args.append(u) }
        let sql = "SELECT success, execution_time, cpu_user_time, cpu_system_time, memory_peak FROM execution_logs WHERE "
            + clauses.joined(separator: " AND ")
        let arguments = StatementArguments(args.map { Optional($0) as (any DatabaseValueConvertible)? })
        let rows = try await pool.read { db in Unchecked(try Row.fetchAll(db, sql: sql, arguments: arguments)) }.value
        let count = rows.count
        let successes = rows.filter { ($0["success"] as Bool?) == true }.count
        func summary(_ values: [Double]) -> [String: Any] {
            let v = values.sorted()
            guard !v.isEmpty else { return ["p50": NSNull(), "p95": NSNull(), "max": NSNull()] }
            func pct(_ p: Double) -> Double { v[min(v.count - 1, Int((p * Double(v.count)).rounded(.up)) - 1)] }
            return ["p50": pct(0.5), "p95": pct(0.95), "max": v.last!]
        }
        let exec = rows.compactMap { $0["execution_time"] as Double? }
        let cpu = rows.compactMap { r -> Double? in
            guard let u = r["cpu_user_time"] as Double?, let s = r["cpu_system_time"] as Double? else { return nil }
            return u + s
        }
        let mem = rows.compactMap { ($0["memory_peak"] as Int64?).map(Double.init) }
        return [
            "count": count,
            "success_rate": count > 0 ? Double(successes) / Double(count) : NSNull(),
            "execution_time": summary(exec),
            "cpu_time": summary(cpu),
            "memory_peak": summary(mem),
            "since": since.map(ExecutionResult.timestamp) ?? NSNull(),
            "until": until.map(ExecutionResult.timestamp) ?? NSNull(),
        ]
    }

    /// A row as a JSON object (booleans as booleans, dates as RFC 3339 strings).
    static func json(_ row: Row) -> [String: Any] {
        var out: [String: Any] = [:]
        let booleans: Set<String> = ["success", "oom_killed", "timed_out", "log_truncated"]
        for (name, value) in row {
            switch value.storage {
            case .null: out[name] = NSNull()
            case .int64(let i): out[name] = booleans.contains(name) ? (i != 0) as Any : i as Any
            case .double(let d): out[name] = d
            case .string(let s):
                if ["created_at", "queued_at", "started_at", "finished_at"].contains(name), let d = Date.fromDatabaseValue(value) {
                    out[name] = ExecutionResult.timestamp(d)
                } else {
                    out[name] = s
                }
            case .blob(let b): out[name] = String(decoding: b, as: UTF8.self)
            }
        }
        return out
    }
}

/// Carries a value out of a database closure; the value is built and used by one task at a time.
struct Unchecked<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
