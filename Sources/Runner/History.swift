import ArgumentParser
import Foundation
import Sandbox
import Service

/// The filters `sandpit history`, `trends` and `regressions` share with `GET /executions`.
struct LogFilters: ParsableArguments {
    @Option(help: "The execution log (the database `serve` writes).") var db = SandboxSettings().stateDirectory + "/executions.db"
    @Option(help: "Only runs with this status.") var status: String?
    @Option(name: .customLong("name"), help: "Only runs with this container_name.") var containerName: String?
    @Option(name: .customLong("label"), help: "Only runs with this label, KEY=VALUE (repeatable: all of them).") var labels: [String] = []
    @Option(name: .customLong("code-sha256"), help: "Only runs of this code (its SHA-256).") var codeSHA256: String?
    @Option(help: "From this time (RFC 3339).") var since: String?
    @Option(help: "Before this time (RFC 3339).") var until: String?

    func time(_ s: String?, _ name: String) throws -> Date? {
        guard let s else { return nil }
        if let d = ExecutionResult.parseTimestamp(s) ?? ISO8601DateFormatter().date(from: s) { return d }
        throw ValidationError("--\(name) must be an RFC 3339 time, e.g. 2026-12-01T00:00:00Z")
    }

    /// `KEY=VALUE` of a `--label` option, split at the first `=`.
    static func labelPair(_ kv: String) throws -> (String, String) {
        guard let eq = kv.firstIndex(of: "=") else { throw ValidationError("--label takes KEY=VALUE, not '\(kv)'") }
        return (String(kv[..<eq]), String(kv[kv.index(after: eq)...]))
    }

    func query() throws -> LogQuery {
        var q = LogQuery()
        q.status = status
        q.containerName = containerName
        q.codeSHA256 = codeSHA256
        for kv in labels {
            let (k, v) = try Self.labelPair(kv)
            do { try Labels.validate(key: k, value: v, in: "--label") } catch { throw ValidationError(error.detail) }
            q.labels.append((k, v))
        }
        q.since = try time(since, "since")
        q.until = try time(until, "until")
        return q
    }

    /// The log, brought to the current schema (what `serve` does at start).
    func store() throws -> ExecutionStore {
        try sqliteOnly(db)
        guard FileManager.default.fileExists(atPath: db) else { throw ValidationError("no execution log at \(db) (--db)") }
        let store = try ExecutionStore(path: db)
        try store.prepare()
        return store
    }

    static func metric(_ name: String) throws -> TrendMetric {
        do { return try Trends.metric(Substring(name)) } catch { throw ValidationError(error.detail) }
    }
}

/// A number for a table: bytes in MiB, the rest with up to 3 decimals.
func human(_ v: Double?, unit: String) -> String {
    guard let v else { return "-" }
    if unit == "bytes" { return String(format: "%.1fM", v / 1_048_576) }
    return v == v.rounded() && abs(v) < 1e15 ? String(Int64(v)) : String(format: "%.3f", v)
}

func table(_ header: [String], _ rows: [[String]]) -> String {
    let widths = header.indices.map { i in ([header[i]] + rows.map { $0[i] }).map(\.count).max() ?? 0 }
    return ([header] + rows).map { r in
        r.indices.map { $0 == r.count - 1 ? r[$0] : r[$0].padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ")
    }.joined(separator: "\n") + "\n"
}

struct History: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Recent runs from the execution log, newest first.")
    @OptionGroup var filters: LogFilters
    @Option(help: "How many runs (1-500).") var limit = 20
    @Flag(help: "The rows as GET /executions answers them.") var json = false

    func run() async throws {
        guard (1...500).contains(limit) else { throw ValidationError("--limit must be 1 to 500") }
        var q = try filters.query()
        q.limit = limit
        let records = try await filters.store().list(q)
        if json {
            print("[" + records.map { $0.json() }.joined(separator: ",") + "]")
            return
        }
        func v(_ r: ExecutionRecord, _ k: String) -> Double? {
            switch r.values[k] { case .double(let d)?: d; case .int(let i)?: i.map(Double.init); default: nil }
        }
        let rows = records.map { r -> [String] in
            let status: String = if case .string(let s)? = r.values["status"] { s ?? "-" } else { "-" }
            let name: String = if case .string(let s)? = r.values["container_name"] { s ?? "" } else { "" }
            let cpu = v(r, "cpu_user_time").flatMap { u in v(r, "cpu_system_time").map { u + $0 } }
            return [String(r.id), r.createdAt.map(ExecutionResult.timestamp) ?? "-", status, name,
                    human(v(r, "execution_time"), unit: "s"), human(cpu, unit: "s"), human(v(r, "memory_peak"), unit: "bytes"),
                    r.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")]
        }
        print(table(["ID", "CREATED", "STATUS", "NAME", "WALL S", "CPU S", "PEAK", "LABELS"], rows), terminator: "")
    }
}

struct TrendsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "trends",
        abstract: "A metric per time bucket: count, p50, p95 and max (as GET /executions/trends).")
    @OptionGroup var filters: LogFilters
    @Option(help: "A numeric result field, e.g. memory_peak.") var metric: String
    @Option(help: "1m, 1h or 1d.") var bucket = "1h"
    @Flag(help: "The answer of GET /executions/trends.") var json = false

    func run() async throws {
        let field = try LogFilters.metric(metric)
        guard let b = TrendBucket(rawValue: bucket) else { throw ValidationError("--bucket must be 1m, 1h or 1d") }
        var q = try filters.query()
        (q.since, q.until) = b.window(since: q.since, until: q.until)
        let points = try await filters.store().trends(q, metric: field, bucket: b)
        if json {
            print(Trends.json(points, metric: field, bucket: b, since: q.since!, until: q.until!))
            return
        }
        let rows = points.map { [ExecutionResult.timestamp($0.start), String($0.count), human($0.p50, unit: field.unit),
                                 human($0.p95, unit: field.unit), human($0.max, unit: field.unit)] }
        print(table(["START", "COUNT", "P50", "P95", "MAX"], rows), terminator: "")
    }
}

struct Regressions: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Programs whose latest runs got worse (as GET /executions/regressions).")
    @OptionGroup var filters: LogFilters
    @Option(help: "A numeric result field, e.g. memory_peak.") var metric: String
    @Option(help: "Recent runs compared (5-1000).") var window = 20
    @Option(help: "Runs before them to compare with (5-10000).") var baseline = 80
    @Option(help: "code_sha256, or label.KEY.") var by = "code_sha256"
    @Option(help: "The recent median must be at least this times the baseline's.") var minRatio = 1.2
    @Option(help: "Significance level, shared among the groups checked.") var alpha = 0.001
    @Flag(help: "The answer of GET /executions/regressions.") var json = false

    func run() async throws {
        let field = try LogFilters.metric(metric)
        guard (5...1000).contains(window), (5...10000).contains(baseline) else { throw ValidationError("--window 5-1000, --baseline 5-10000") }
        guard minRatio >= 1, alpha > 0, alpha <= 0.5 else { throw ValidationError("--min-ratio ≥ 1, 0 < --alpha ≤ 0.5") }
        let labelKey: String?
        do { labelKey = try Regression.labelKey(by: by) } catch { throw ValidationError(error.detail) }
        let report = try await Regression.report(filters.store(), try filters.query(), metric: field, by: by, labelKey: labelKey,
                                                 window: window, baseline: baseline, alpha: alpha, minRatio: minRatio)
        if json {
            print(report.json())
            return
        }
        print("\(report.checked) group(s) with \(window + baseline) runs checked, \(report.found.count) got worse in \(field.name)")
        guard !report.found.isEmpty else { return }
        let rows = report.found.map { s, f in
            [s.group, human(f.baselineMedian, unit: field.unit), human(f.recentMedian, unit: field.unit),
             f.ratio.map { String(format: "%.2f", $0) } ?? "-", String(format: "%.1e", f.pValue), String(s.latestID)]
        }
        print(table([by == "code_sha256" ? "FINGERPRINT" : by.uppercased(), "BASELINE", "RECENT", "RATIO", "P", "LATEST ID"], rows), terminator: "")
    }
}

/// The CLI's own log commands read SQLite files; a PostgreSQL log is the service's.
func sqliteOnly(_ db: String) throws {
    if db.hasPrefix("postgres://") || db.hasPrefix("postgresql://") {
        throw ValidationError("\(db.prefix(13))...: this command reads SQLite logs; a PostgreSQL log is read through `sandpit serve --db` (GET /executions), which also migrates it at start")
    }
}
