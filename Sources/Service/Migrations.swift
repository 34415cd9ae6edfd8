import Foundation
import GRDB

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

    public struct Report: Sendable {
        public var createdTable = false
        public var addedColumns: [String] = []
        public var rows = 0
        public var nothingToDo: Bool { !createdTable && addedColumns.isEmpty }
    }

    /// Brings the database to the current schema. `progress` receives one line per step.
    @discardableResult
    public static func migrate(_ writer: any DatabaseWriter, progress: (String) -> Void = { _ in }) throws -> Report {
        try writer.write { db in
            var report = Report()
            if try !db.tableExists("execution_logs") {
                try db.execute(sql: legacyTable)
                report.createdTable = true
                progress("created table execution_logs")
            }
            let existing = Set(try db.columns(in: "execution_logs").map { $0.name.lowercased() })
            report.rows = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM execution_logs") ?? 0
            progress("execution_logs has \(existing.count) columns and \(report.rows) rows")
            for (name, type) in addedColumns where !existing.contains(name) {
                try db.execute(sql: "ALTER TABLE execution_logs ADD COLUMN \(name) \(type)")
                report.addedColumns.append(name)
                progress("added column \(name) \(type)")
            }
            for sql in indexes { try db.execute(sql: sql) }
            if report.nothingToDo { progress("nothing to do: the schema is current") }
            return report
        }
    }
}
