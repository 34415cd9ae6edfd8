import Foundation
import GRDB
import Sandbox
import Synchronization

/// The schema of `execution_logs` and its migration, as the specification's guide
/// describes it: look at which columns exist, add the missing ones with their types,
/// keep every row (old rows get NULL metrics), report progress, and do nothing the
/// second time.
public enum Schema {
    /// The table as it was before the enhancement (what an existing deployment has).
    public static let legacyTable = """
        CREATE TABLE IF NOT EXISTS execution_logs (
          id INTEGER PRIMARY KEY AUTOINCREMENT,
          container_id TEXT,
          code TEXT,
          output TEXT,
          error TEXT,
          success BOOLEAN,
          execution_time REAL,
          created_at TIMESTAMP
        )
        """

    /// Columns added to the legacy table: the specification's 13, then sandpit's.
    public static let addedColumns: [(name: String, type: String)] = [
        ("container_name", "TEXT"),
        // the specification's new columns
        ("cpu_user_time", "REAL"), ("cpu_system_time", "REAL"), ("cpu_percent", "REAL"),
        ("memory_usage", "INTEGER"), ("memory_peak", "INTEGER"), ("memory_percent", "REAL"), ("memory_limit", "INTEGER"),
        ("block_io_read", "INTEGER"), ("block_io_write", "INTEGER"), ("network_io_rx", "INTEGER"), ("network_io_tx", "INTEGER"),
        ("pids_count", "INTEGER"), ("exit_code", "INTEGER"),
        // sandpit's
        ("status", "TEXT"), ("signal", "INTEGER"), ("oom_killed", "BOOLEAN"), ("timed_out", "BOOLEAN"),
        ("queued_at", "TIMESTAMP"), ("started_at", "TIMESTAMP"), ("finished_at", "TIMESTAMP"), ("host", "TEXT"),
        ("log_truncated", "BOOLEAN"),
    ]

    public static let indexes = [
        "CREATE INDEX IF NOT EXISTS execution_logs_created_at ON execution_logs (created_at)",
        "CREATE INDEX IF NOT EXISTS execution_logs_status ON execution_logs (status)",
        "CREATE INDEX IF NOT EXISTS execution_logs_container_name ON execution_logs (container_name)",
    ]

    public typealias Report = MigrationReport

    /// The versioned migrations (GRDB's `DatabaseMigrator`, which records applied ones in
    /// `grdb_migrations`). A migration is history: it never changes once released. A new
    /// stored field gets a new migration that adds its column; `missingColumns` (checked by
    /// a test) says when one is needed.
    static func migrator(_ log: MigrationLog) -> DatabaseMigrator {
        var m = DatabaseMigrator()
        // The specification's migration guide: whatever the table has (another program's
        // pre-enhancement table, or an earlier sandpit's), add what is missing, keep every row.
        m.registerMigration("v1 execution_logs with metrics") { db in
            var report = MigrationReport()
            if try !db.tableExists("execution_logs") {
                try db.execute(sql: legacyTable)
                report.createdTable = true
                log.say("created table execution_logs")
            }
            let existing = Set(try db.columns(in: "execution_logs").map { $0.name.lowercased() })
            report.rows = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM execution_logs") ?? 0
            log.say("execution_logs has \(existing.count) columns and \(report.rows) rows")
            for (name, type) in addedColumns where !existing.contains(name) {
                try db.execute(sql: "ALTER TABLE execution_logs ADD COLUMN \(name) \(type)")
                report.addedColumns.append(name)
                log.say("added column \(name) \(type)")
            }
            for sql in indexes { try db.execute(sql: sql) }
            log.report.withLock { r in
                r.createdTable = report.createdTable
                r.rows = report.rows
                r.addedColumns += report.addedColumns
            }
        }
        // Live runs: the truncation flags (a record read back is the result), and the
        // samples of watched runs.
        m.registerMigration("v2 truncation flags and execution_samples") { db in
            let existing = Set(try db.columns(in: "execution_logs").map { $0.name.lowercased() })
            for (name, type) in [("stdout_truncated", "BOOLEAN"), ("stderr_truncated", "BOOLEAN")] where !existing.contains(name) {
                try db.execute(sql: "ALTER TABLE execution_logs ADD COLUMN \(name) \(type)")
                log.say("added column \(name) \(type)")
                log.report.withLock { $0.addedColumns.append(name) }
            }
            if try !db.tableExists("execution_samples") {
                try db.execute(sql: samplesTable)
                log.say("created table execution_samples")
                log.report.withLock { $0.otherSteps.append("created table execution_samples") }
            }
            try db.execute(sql: "CREATE INDEX IF NOT EXISTS execution_samples_execution_id ON execution_samples (execution_id, t)")
        }
        m.registerMigration("v3 network_io_loopback") { db in
            try addColumn(db, "network_io_loopback", "INTEGER", log)
            if try !db.columns(in: "execution_samples").contains(where: { $0.name == "network_io_loopback" }) {
                try db.execute(sql: "ALTER TABLE execution_samples ADD COLUMN network_io_loopback INTEGER")
            }
        }
        // Labels and fingerprints: the code's SHA-256 and the labels on the row (as
        // answered), and one row per label in `execution_labels`, keyed for filtering.
        m.registerMigration("v4 code_sha256 and labels") { db in
            try addColumn(db, "code_sha256", "TEXT", log)
            try addColumn(db, "labels", "TEXT", log)
            try db.execute(sql: "CREATE INDEX IF NOT EXISTS execution_logs_code_sha256 ON execution_logs (code_sha256)")
            if try !db.tableExists("execution_labels") {
                try db.execute(sql: labelsTable)
                log.say("created table execution_labels")
                log.report.withLock { $0.otherSteps.append("created table execution_labels") }
            }
            try db.execute(sql: "CREATE INDEX IF NOT EXISTS execution_labels_execution_id ON execution_labels (execution_id)")
        }
        // A program's own metrics (their summary on the row, every point in
        // `execution_custom_metrics`) and the alert rules a run matched.
        m.registerMigration("v5 custom metrics and alerts") { db in
            try addColumn(db, "custom_metrics", "TEXT", log)
            try addColumn(db, "custom_metrics_rejected", "INTEGER", log)
            try addColumn(db, "alerts", "TEXT", log)
            if try !db.tableExists("execution_custom_metrics") {
                try db.execute(sql: customMetricsTable)
                log.say("created table execution_custom_metrics")
                log.report.withLock { $0.otherSteps.append("created table execution_custom_metrics") }
            }
        }
        // Warm runs: how the interpreter started, the template, its shared memory.
        m.registerMigration("v6 warm starts") { db in
            try addColumn(db, "start", "TEXT", log)
            try addColumn(db, "warm_template", "TEXT", log)
            try addColumn(db, "memory_shared", "INTEGER", log)
        }
        // Sessions: their executions' fields, and one row per session.
        m.registerMigration("v7 sessions") { db in
            try addColumn(db, "execution_index", "INTEGER", log)
            try addColumn(db, "memory_peak_method", "TEXT", log)
            try addColumn(db, "results", "TEXT", log)
            try addColumn(db, "exception", "TEXT", log)
            try addColumn(db, "session", "TEXT", log)
            try db.execute(sql: """
                CREATE TABLE IF NOT EXISTS sessions (
                  id TEXT PRIMARY KEY,
                  name TEXT NOT NULL,
                  created_at TIMESTAMP NOT NULL,
                  ended_at TIMESTAMP,
                  end_reason TEXT,
                  executions INTEGER NOT NULL DEFAULT 0,
                  labels TEXT,
                  settings TEXT,
                  host TEXT
                )
                """)
            try db.execute(sql: "CREATE INDEX IF NOT EXISTS sessions_created_at ON sessions (created_at)")
            log.say("created table sessions")
        }
        // Nodes: one row per service instance writing to this log, its heartbeat.
        m.registerMigration("v8 nodes") { db in
            try db.execute(sql: """
                CREATE TABLE IF NOT EXISTS nodes (
                  name TEXT PRIMARY KEY,
                  started_at TIMESTAMP NOT NULL,
                  heartbeat_at TIMESTAMP NOT NULL,
                  stopped_at TIMESTAMP,
                  max_concurrency INTEGER NOT NULL,
                  queue_size INTEGER NOT NULL,
                  in_flight INTEGER NOT NULL,
                  queued INTEGER NOT NULL,
                  sessions INTEGER NOT NULL
                )
                """)
            log.say("created table nodes")
        }
        // Where a node is reached by the others (they proxy its runs' live events).
        m.registerMigration("v9 node url") { db in
            let columns = try db.columns(in: "nodes").map(\.name)
            if !columns.contains("url") { try db.execute(sql: "ALTER TABLE nodes ADD COLUMN url TEXT") }
            log.say("added nodes.url")
        }
        // A run's network breakdown (JSON).
        m.registerMigration("v10 network") { db in
            try addColumn(db, "network", "TEXT", log)
        }
        return m
    }

    /// One row per label of a run; the key (key, value, execution_id) answers a
    /// `label.KEY=VALUE` filter from the index alone.
    public static let labelsTable = """
        CREATE TABLE IF NOT EXISTS execution_labels (
          key TEXT NOT NULL,
          value TEXT NOT NULL,
          execution_id INTEGER NOT NULL,
          PRIMARY KEY (key, value, execution_id)
        ) WITHOUT ROWID
        """

    /// Every point a run reported on its metrics pipe, in order (`seq`); `t` is
    /// seconds since execve.
    public static let customMetricsTable = """
        CREATE TABLE IF NOT EXISTS execution_custom_metrics (
          execution_id INTEGER NOT NULL,
          seq INTEGER NOT NULL,
          t REAL NOT NULL,
          name TEXT NOT NULL,
          value REAL NOT NULL,
          PRIMARY KEY (execution_id, seq)
        ) WITHOUT ROWID
        """

    static func addColumn(_ db: Database, _ name: String, _ type: String, _ log: MigrationLog) throws {
        guard try !db.columns(in: "execution_logs").contains(where: { $0.name.lowercased() == name }) else { return }
        try db.execute(sql: "ALTER TABLE execution_logs ADD COLUMN \(name) \(type)")
        log.say("added column \(name) \(type)")
        log.report.withLock { $0.addedColumns.append(name) }
    }

    /// A watched run's samples: `t` is seconds since execve, the rest as in a sample event.
    public static let samplesTable = """
        CREATE TABLE IF NOT EXISTS execution_samples (
          execution_id INTEGER NOT NULL,
          t REAL NOT NULL,
          cpu_user_time REAL, cpu_system_time REAL, cpu_percent REAL,
          memory_usage INTEGER, memory_peak INTEGER,
          block_io_read INTEGER, block_io_write INTEGER,
          network_io_rx INTEGER, network_io_tx INTEGER,
          pids_count INTEGER
        )
        """

    /// Lines and the report of one `migrate` (migrations run in `@Sendable` closures).
    final class MigrationLog: Sendable {
        let lines = Mutex<[String]>([])
        let report = Mutex(MigrationReport())
        func say(_ line: String) { lines.withLock { $0.append(line) } }
    }

    /// Brings the database to the current schema. `progress` receives one line per step.
    @discardableResult
    public static func migrate(_ writer: any DatabaseWriter, progress: (String) -> Void = { _ in }) throws -> Report {
        let log = MigrationLog()
        let migrator = migrator(log)
        // The first migration reports what the table has; once it is applied, this does.
        if try writer.read({ try migrator.appliedIdentifiers($0).contains("v1 execution_logs with metrics") }) {
            let (columns, rows) = try writer.read { db in
                (try db.columns(in: "execution_logs").count, try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM execution_logs") ?? 0)
            }
            log.say("execution_logs has \(columns) columns and \(rows) rows")
            log.report.withLock { $0.rows = rows }
        }
        try migrator.migrate(writer)
        let report = log.report.withLock { $0 }
        if report.nothingToDo { log.say("nothing to do: the schema is current") }
        for line in log.lines.withLock({ $0 }) { progress(line) }
        return report
    }

    /// Columns the result's stored fields and the log need that `execution_logs` lacks
    /// (or has with another type): a new field needs a migration.
    public static func missingColumns(_ db: Database) throws -> [String] {
        let have = Dictionary(try db.columns(in: "execution_logs").map { ($0.name.lowercased(), $0.type.uppercased()) },
                              uniquingKeysWith: { a, _ in a })
        let need = ExecutionResult.schema.filter { $0.storage != .none }.map { ($0.name, $0.sqlType) }
            + [("id", "INTEGER"), ("code", "TEXT"), ("created_at", "TIMESTAMP"), ("queued_at", "TIMESTAMP"),
               ("finished_at", "TIMESTAMP"), ("host", "TEXT"), ("log_truncated", "BOOLEAN")]
        return need.filter { have[$0.0] != $0.1 }.map { "\($0.0) \($0.1)" }
    }
}
