import Foundation
import Synchronization
import Sandbox

/// Where runs are logged. The service talks to the log only through this protocol
/// (SQLite is `ExecutionStore`; another backend is another conformance, and the
/// storage tests in `ExecutionLogContract` run against any of them).
public protocol ExecutionLog: Sendable {
    /// Brings the log to the current schema; `progress` receives one line per step.
    @discardableResult
    func prepare(progress: @escaping (String) -> Void) async throws -> MigrationReport
    /// Records a run that is about to start (status `running`); returns its id.
    /// The row also gets the code's SHA-256 and the labels (indexed for `LogQuery.labels`).
    func begin(code: String, name: String, containerID: String, labels: [String: String],
               queuedAt: Date, startedAt: Date) async throws -> Int64
    /// Completes a run's record, with the samples taken while it was watched (in the
    /// same transaction). A result that cannot be written yet is kept and written by a
    /// later `maintain` (the error is still thrown, for the caller to log).
    func finish(id: Int64, result: ExecutionResult, finishedAt: Date, samples: [LiveSample]) async throws
    /// Records of this host still `running` belong to an instance that died: marks
    /// them `interrupted` and returns how many.
    @discardableResult
    func markInterrupted() async throws -> Int
    /// Pending completions, retention, and the backend's own upkeep.
    @discardableResult
    func maintain(_ retention: Retention, now: Date) async throws -> MaintenanceReport
    /// Summaries (no code, output or error), newest first.
    func list(_ query: LogQuery) async throws -> [ExecutionRecord]
    /// Per bucket of `created_at`, count, p50, p95 and max of a numeric stored field
    /// over the finished rows that pass the filters (`limit` and the cursor ignored).
    func trends(_ q: LogQuery, metric: TrendMetric, bucket: TrendBucket) async throws -> [TrendPoint]
    /// Per group (fingerprint, or value of label `labelKey`), the metric of its newest
    /// `count` finished runs that pass the filters, newest first.
    func latestValues(_ q: LogQuery, metric: TrendMetric, labelKey: String?, count: Int) async throws -> [RunSeries]
    /// One full record.
    func get(id: Int64) async throws -> ExecutionRecord?
    /// The stored samples of one run, in time order (empty when none were taken).
    func series(id: Int64) async throws -> [LiveSample]
    /// The points run `id` reported on its metrics pipe (only `name`'s when given).
    func customPoints(id: Int64, name: String?) async throws -> [CustomPoint]
    /// The numbers `ExecutionStats` aggregates, of finished runs created in the window.
    func samples(since: Date?, until: Date?) async throws -> [RunSample]
    /// Records a new session (its executions are rows of `execution_logs` with its id as
    /// `container_id`).
    func sessionOpened(_ row: SessionRow) async throws
    /// A session's row after an execution (its count) or its end (when and why).
    func sessionUpdated(id: String, executions: Int, endedAt: Date?, endReason: String?) async throws
    /// Sessions of this host left open by an instance that is gone: marks them ended
    /// with `reason`; returns how many.
    @discardableResult
    func endOpenSessions(reason: String) async throws -> Int
    /// A session's row, open or ended.
    func session(id: String) async throws -> SessionRow?
    /// Writes the rows whose completion failed (the storage was away), oldest first;
    /// returns how many. Run at every heartbeat, so they land within one of its return.
    @discardableResult
    func completePending() async throws -> Int
    /// This node's row: created or replaced at start, its heartbeat and numbers after.
    func heartbeat(_ node: NodeRow) async throws
    /// This node stopped (its row stays, with `stopped_at`).
    func nodeStopped(name: String, at: Date) async throws
    /// Every node that ever wrote to this log, the latest heartbeat first.
    func nodes() async throws -> [NodeRow]
}

/// One row of `nodes`: a service instance and what it had in use at its last heartbeat.
public struct NodeRow: Sendable, Equatable {
    public var name: String
    public var startedAt: Date
    public var heartbeatAt: Date
    public var stoppedAt: Date?
    public var maxConcurrency: Int
    public var queueSize: Int
    public var inFlight: Int
    public var queued: Int
    public var sessions: Int
    /// Where the other nodes reach it (`--advertise-url`).
    public var url: String?

    public init(name: String, startedAt: Date, heartbeatAt: Date, stoppedAt: Date? = nil, maxConcurrency: Int, queueSize: Int,
                inFlight: Int = 0, queued: Int = 0, sessions: Int = 0, url: String? = nil) {
        self.name = name
        self.url = url
        self.startedAt = startedAt
        self.heartbeatAt = heartbeatAt
        self.stoppedAt = stoppedAt
        self.maxConcurrency = maxConcurrency
        self.queueSize = queueSize
        self.inFlight = inFlight
        self.queued = queued
        self.sessions = sessions
    }

    /// Live: not stopped, and heard from within `within` of `now`.
    public func isLive(now: Date, within: Double) -> Bool { stoppedAt == nil && now.timeIntervalSince(heartbeatAt) <= within }

    func json(now: Date, within: Double) -> String {
        var w = JSONWriter()
        w.field("name", name)
        w.field("live", isLive(now: now, within: within))
        w.field("started_at", ExecutionResult.timestamp(startedAt))
        w.field("heartbeat_at", ExecutionResult.timestamp(heartbeatAt))
        w.field("stopped_at", stoppedAt.map(ExecutionResult.timestamp))
        w.field("max_concurrency", Int64(maxConcurrency))
        w.field("queue_size", Int64(queueSize))
        w.field("in_flight", Int64(inFlight))
        w.field("queued", Int64(queued))
        w.field("sessions", Int64(sessions))
        w.field("url", url)
        return w.finish()
    }
}

/// One row of `sessions`.
public struct SessionRow: Sendable, Equatable {
    public var id: String
    public var name: String
    public var createdAt: Date
    public var endedAt: Date?
    public var endReason: String?
    public var executions = 0
    public var labels: [String: String] = [:]
    /// The session's settings (limits, timeouts) as JSON text.
    public var settings: String?
    /// The node that holds it (read from the log; a store writes its own).
    public var host: String?
    public init(id: String, name: String, createdAt: Date) {
        self.id = id
        self.name = name
        self.createdAt = createdAt
    }
}

extension ExecutionLog {
    public func begin(code: String, name: String, containerID: String, queuedAt: Date, startedAt: Date) async throws -> Int64 {
        try await begin(code: code, name: name, containerID: containerID, labels: [:], queuedAt: queuedAt, startedAt: startedAt)
    }
    public func finish(id: Int64, result: ExecutionResult, finishedAt: Date) async throws {
        try await finish(id: id, result: result, finishedAt: finishedAt, samples: [])
    }
    @discardableResult
    public func maintain(_ retention: Retention) async throws -> MaintenanceReport {
        try await maintain(retention, now: Date())
    }
}

public struct MigrationReport: Sendable {
    public var createdTable = false
    public var addedColumns: [String] = []
    public var rows = 0
    /// Other changes (new tables).
    public var otherSteps: [String] = []
    public var nothingToDo: Bool { !createdTable && addedColumns.isEmpty && otherSteps.isEmpty }
    public init() {}
}

public struct Retention: Sendable {
    /// Finished records older than this many days are deleted (nil: kept).
    public var days: Double?
    /// Only the newest this many records are kept (nil: no cap).
    public var rows: Int?
    public init(days: Double? = 30, rows: Int? = 1_000_000) {
        self.days = days
        self.rows = rows
    }
}

public struct MaintenanceReport: Sendable {
    public var deleted = 0
    public var completed = 0
    /// Bytes of the SQLite write-ahead log after the checkpoint (0 for other backends).
    public var walBytes: Int64 = 0
    public init() {}
}

public struct LogQuery: Sendable {
    public var limit = 50
    /// The cursor: only ids below it.
    public var before: Int64?
    public var status: String?
    public var containerName: String?
    /// Rows with every one of these labels.
    public var labels: [(key: String, value: String)] = []
    public var codeSHA256: String?
    public var since: Date?
    public var until: Date?
    public init() {}
}

/// A logged run: the result's stored fields (by name, typed by `ExecutionResult.schema`)
/// and the log's own columns. A legacy row has nulls where it predates a field.
public struct ExecutionRecord: Sendable, Equatable {
    public var id: Int64
    /// The result's fields that have a column; summaries leave out the `.detail` ones.
    public var values: [String: FieldValue] = [:]
    /// The program (full records only).
    public var code: String?
    public var createdAt: Date?
    public var queuedAt: Date?
    public var finishedAt: Date?
    public var host: String?
    public var logTruncated: Bool?
    public var codeSHA256: String?
    public var labels: [String: String] = [:]
    /// Whether this is a full record (code, output, error) or a summary.
    public var isDetail = false

    public init(id: Int64) { self.id = id }

    public subscript(_ field: String) -> FieldValue? { values[field] }

    public var status: String? { if case .string(let s)? = values["status"] { s } else { nil } }
    public var containerName: String? { if case .string(let s)? = values["container_name"] { s } else { nil } }
    public var output: String? { if case .string(let s)? = values["output"] { s } else { nil } }
    public var success: Bool? { if case .bool(let b)? = values["success"] { b } else { nil } }

    /// The record read back as the result the run returned (a legacy row's missing
    /// fields keep their defaults; the output is what the log kept, see `logTruncated`).
    public func result() -> ExecutionResult {
        var r = ExecutionResult(containerID: "", containerName: containerName ?? "", startedAt: createdAt ?? Date(timeIntervalSince1970: 0))
        for f in ExecutionResult.schema {
            if let v = values[f.name], !v.isNull { f.assign(v, to: &r) }
        }
        return r
    }

    /// The record as the API answers it: `id`, the result's fields in their order, then
    /// the log's columns; a full record has `code` too.
    public func json() -> String {
        var w = JSONWriter()
        w.field("id", id)
        if isDetail { w.field("code", code) }
        for f in ExecutionResult.schema where f.storage == .summary || (isDetail && f.storage == .detail) {
            w.field(f.name, values[f.name] ?? .string(nil))
        }
        w.field("log_truncated", logTruncated.map { FieldValue.bool($0) } ?? .bool(nil))
        w.field("created_at", createdAt.map(ExecutionResult.timestamp))
        w.field("queued_at", queuedAt.map(ExecutionResult.timestamp))
        w.field("finished_at", finishedAt.map(ExecutionResult.timestamp))
        w.field("host", host)
        w.field("code_sha256", codeSHA256)
        w.field("labels", json: Labels.json(labels))
        return w.finish()
    }
}

/// What the stats of a window are computed from, per finished run.
public struct RunSample: Sendable, Equatable {
    public var success: Bool?
    public var executionTime: Double?
    /// User + system CPU seconds (nil when either is unknown).
    public var cpuTime: Double?
    public var memoryPeak: Int64?
    public init(success: Bool?, executionTime: Double?, cpuTime: Double?, memoryPeak: Int64?) {
        self.success = success
        self.executionTime = executionTime
        self.cpuTime = cpuTime
        self.memoryPeak = memoryPeak
    }
}

/// Aggregates over a window: count, success rate, p50/p95/max of execution time, CPU
/// time and memory peak. Pure: any backend hands its samples to `summarize`.
public struct ExecutionStats: Sendable, Equatable {
    public struct Summary: Sendable, Equatable {
        public var p50: Double?
        public var p95: Double?
        public var max: Double?
    }

    public var count: Int
    public var successRate: Double?
    public var executionTime: Summary
    public var cpuTime: Summary
    public var memoryPeak: Summary
    public var since: Date?
    public var until: Date?

    /// Nearest-rank percentiles (the value at rank ⌈p·n⌉ of the sorted list).
    public static func summary(_ values: [Double]) -> Summary {
        let v = values.sorted()
        guard let last = v.last else { return Summary() }
        func pct(_ p: Double) -> Double { v[Swift.min(v.count - 1, Swift.max(0, Int((p * Double(v.count)).rounded(.up)) - 1))] }
        return Summary(p50: pct(0.5), p95: pct(0.95), max: last)
    }

    public static func summarize(_ samples: [RunSample], since: Date?, until: Date?) -> ExecutionStats {
        let successes = samples.filter { $0.success == true }.count
        return ExecutionStats(
            count: samples.count,
            successRate: samples.isEmpty ? nil : Double(successes) / Double(samples.count),
            executionTime: summary(samples.compactMap(\.executionTime)),
            cpuTime: summary(samples.compactMap(\.cpuTime)),
            memoryPeak: summary(samples.compactMap { $0.memoryPeak.map(Double.init) }),
            since: since, until: until)
    }

    public func json() -> String {
        func obj(_ s: Summary) -> String {
            var w = JSONWriter()
            w.field("p50", s.p50)
            w.field("p95", s.p95)
            w.field("max", s.max)
            return w.finish()
        }
        var w = JSONWriter()
        w.field("count", Int64(count))
        w.field("success_rate", successRate)
        w.field("execution_time", json: obj(executionTime))
        w.field("cpu_time", json: obj(cpuTime))
        w.field("memory_peak", json: obj(memoryPeak))
        w.field("since", since.map(ExecutionResult.timestamp))
        w.field("until", until.map(ExecutionResult.timestamp))
        return w.finish()
    }
}

/// Keeps at most `cap` samples of a run of any length: when full, every other one is
/// dropped and from then on only every `stride`-th is kept, so the whole run stays covered.
public struct SampleRecorder: Sendable {
    public private(set) var samples: [LiveSample] = []
    public let cap: Int
    private var stride = 1
    private var seen = 0

    public init(cap: Int = 2000) { self.cap = max(2, cap) }

    public mutating func add(_ s: LiveSample) {
        defer { seen += 1 }
        guard seen % stride == 0 else { return }
        samples.append(s)
        if samples.count >= cap {
            samples = samples.enumerated().filter { $0.offset % 2 == 0 }.map(\.element)
            stride *= 2
        }
    }

    /// The last sample (taken after the program's end) is always kept.
    public mutating func finish(last: LiveSample?) -> [LiveSample] {
        if let last, samples.last != last {
            if samples.count >= cap { samples.removeLast() }
            samples.append(last)
        }
        return samples
    }
}

/// Results whose row could not be completed when the run ended (the database was full,
/// locked or away): kept in memory (10 000 at most) and written by the next upkeep.
final class PendingCompletions: Sendable {
    typealias Item = (id: Int64, result: ExecutionResult, finishedAt: Date, samples: [LiveSample])
    private let items = Mutex<[Item]>([])

    /// Writes `item` with `write`; when that fails, keeps it for the upkeep and throws.
    func write(_ item: Item, with write: (Item) async throws -> Void) async throws {
        do {
            try await write(item)
        } catch {
            add(item)
            throw error
        }
    }

    var isEmpty: Bool { items.withLock { $0.isEmpty } }

    func add(_ item: Item) {
        items.withLock { list in
            if list.count < 10_000 { list.append(item) }
        }
    }

    /// Writes each with `write`, in order; at the first failure keeps it and the rest
    /// for next time and throws. Returns how many were written.
    func flush(_ write: (Item) async throws -> Void) async throws -> Int {
        let pending = items.withLock { list in
            defer { list.removeAll() }
            return list
        }
        for (i, p) in pending.enumerated() {
            do {
                try await write(p)
            } catch {
                items.withLock { $0.append(contentsOf: pending[i...]) }
                throw error
            }
        }
        return pending.count
    }
}
