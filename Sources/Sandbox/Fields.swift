import Foundation

/// One value of a result field, typed as the JSON and SQL sides see it.
public enum FieldValue: Sendable, Equatable {
    case string(String?), bool(Bool?), int(Int64?), double(Double?)
    /// JSON text of an object or an array (stored as such in a TEXT column).
    case json(String?)

    public var isNull: Bool {
        switch self {
        case .json(let v): v == nil
        case .string(let v): v == nil
        case .bool(let v): v == nil
        case .int(let v): v == nil
        case .double(let v): v == nil
        }
    }
}

/// The JSON type of a field (the OpenAPI document's `type`).
public enum FieldType: String, Sendable {
    case string, integer, number, boolean, object, array
}

/// Where a field lives in the execution log: not at all, in the full row only
/// (`GET /executions/{id}`), or also in the list's summaries.
public enum FieldStorage: Sendable {
    case none, detail, summary
}

/// One field of the result object: its name, type and unit, its log column, where
/// its value comes from on each cgroup version, and how to read and set it. The list
/// `ExecutionResult.schema` drives the result's JSON (both writers and the decoder),
/// the log's columns (the row update, the list's columns, the migration check), and
/// is checked against `openapi.json` and the README's metric table by the tests.
public struct ResultField: Sendable {
    /// Sets this field of `r` from a stored value (a record read back as a result).
    public func assign(_ v: FieldValue, to r: inout ExecutionResult) { set(&r, v) }

    public let name: String
    public let type: FieldType
    public let nullable: Bool
    /// "s", "bytes", "%", "tasks", or "" for fields that are not quantities.
    public let unit: String
    public let storage: FieldStorage
    /// The SQL type of its column in `execution_logs`.
    public let sqlType: String
    /// Kernel source on cgroup v2 and on v1 (metrics only; "" for the others).
    public let v2: String
    public let v1: String
    public let doc: String
    let get: @Sendable (ExecutionResult) -> FieldValue
    let set: @Sendable (inout ExecutionResult, FieldValue) -> Void

    public var isMetric: Bool { !v2.isEmpty }

    public func value(of r: ExecutionResult) -> FieldValue { get(r) }
}

extension ResultField {
    typealias Path<T> = WritableKeyPath<ExecutionResult, T> & Sendable

    static func double(_ name: String, _ kp: Path<Double?>, unit: String, v2: String = "", v1: String = "",
                       storage: FieldStorage = .summary, _ doc: String) -> ResultField {
        ResultField(name: name, type: .number, nullable: true, unit: unit, storage: storage, sqlType: "REAL",
                    v2: v2, v1: v1, doc: doc, get: { .double($0[keyPath: kp]) },
                    set: { r, v in if case .double(let d) = v { r[keyPath: kp] = d } })
    }

    static func int(_ name: String, _ kp: Path<Int64?>, unit: String, v2: String = "", v1: String = "",
                    storage: FieldStorage = .summary, _ doc: String) -> ResultField {
        ResultField(name: name, type: .integer, nullable: true, unit: unit, storage: storage, sqlType: "INTEGER",
                    v2: v2, v1: v1, doc: doc, get: { .int($0[keyPath: kp]) },
                    set: { r, v in if case .int(let i) = v { r[keyPath: kp] = i } })
    }

    static func smallInt(_ name: String, _ kp: Path<Int?>, storage: FieldStorage = .summary, _ doc: String) -> ResultField {
        ResultField(name: name, type: .integer, nullable: true, unit: "", storage: storage, sqlType: "INTEGER",
                    v2: "", v1: "", doc: doc, get: { .int($0[keyPath: kp].map(Int64.init)) },
                    set: { r, v in if case .int(let i) = v { r[keyPath: kp] = i.map { Int(clamping: $0) } } })
    }

    static func bool(_ name: String, _ kp: Path<Bool>, storage: FieldStorage = .summary, _ doc: String) -> ResultField {
        ResultField(name: name, type: .boolean, nullable: false, unit: "", storage: storage, sqlType: "BOOLEAN",
                    v2: "", v1: "", doc: doc, get: { .bool($0[keyPath: kp]) },
                    set: { r, v in if case .bool(let b?) = v { r[keyPath: kp] = b } })
    }

    static func string(_ name: String, _ kp: Path<String>, storage: FieldStorage = .summary, _ doc: String) -> ResultField {
        ResultField(name: name, type: .string, nullable: false, unit: "", storage: storage, sqlType: "TEXT",
                    v2: "", v1: "", doc: doc, get: { .string($0[keyPath: kp]) },
                    set: { r, v in if case .string(let s?) = v { r[keyPath: kp] = s } })
    }
}

extension ExecutionResult {
    /// Every field of the result, in the specification's order, then sandpit's.
    /// Adding a metric: its property on `ExecutionResult`, one entry here, the counter
    /// in CgroupKit and `ResultMapper`, a migration line if it is stored (a test says
    /// so), the README row and `openapi.json` property (tests check both).
    public static let schema: [ResultField] = [
        .bool("success", \.success, "the program exited with status 0 and hit no limit"),
        .string("output", \.output, storage: .detail, "standard output (UTF-8, invalid bytes replaced)"),
        ResultField(name: "error", type: .string, nullable: true, unit: "", storage: .detail, sqlType: "TEXT",
                    v2: "", v1: "", doc: "standard error, or the sandbox's reason; null when empty",
                    get: { .string($0.error) }, set: { r, v in if case .string(let s) = v { r.error = s } }),
        .string("container_id", \.containerID, "the run's id"),
        .string("container_name", \.containerName, "the request's name"),
        ResultField(name: "execution_time", type: .number, nullable: false, unit: "s", storage: .summary, sqlType: "REAL",
                    v2: "CLOCK_MONOTONIC", v1: "CLOCK_MONOTONIC", doc: "wall-clock time from execve to the program's end",
                    get: { .double($0.executionTime) }, set: { r, v in if case .double(let d?) = v { r.executionTime = d } }),
        .smallInt("exit_code", \.exitCode, "the program's exit status; null when it was killed by a signal or never ran"),
        .double("cpu_user_time", \.cpuUserTime, unit: "s", v2: "cpu.stat user_usec", v1: "cpuacct.usage_user",
                "CPU time in user mode, all tasks of the run"),
        .double("cpu_system_time", \.cpuSystemTime, unit: "s", v2: "cpu.stat system_usec", v1: "cpuacct.usage_sys",
                "CPU time in kernel mode, all tasks of the run"),
        .double("cpu_percent", \.cpuPercent, unit: "%", v2: "derived", v1: "derived",
                "(user + system) / execution_time × 100"),
        .int("memory_usage", \.memoryUsage, unit: "bytes", v2: "memory.current", v1: "memory.usage_in_bytes",
             "memory still charged to the run after its last task ended"),
        .int("memory_peak", \.memoryPeak, unit: "bytes", v2: "memory.peak", v1: "memory.max_usage_in_bytes",
             "the most memory the run had charged at once"),
        .double("memory_percent", \.memoryPercent, unit: "%", v2: "derived", v1: "derived",
                "memory_peak / memory_limit × 100"),
        .int("memory_limit", \.memoryLimit, unit: "bytes", v2: "memory.max", v1: "memory.limit_in_bytes",
             "the effective memory limit"),
        .int("block_io_read", \.blockIORead, unit: "bytes", v2: "/proc/<init>/io read_bytes", v1: "/proc/<init>/io read_bytes",
             "block-layer reads of the run's tasks"),
        .int("block_io_write", \.blockIOWrite, unit: "bytes", v2: "/proc/<init>/io write_bytes", v1: "/proc/<init>/io write_bytes",
             "bytes the run's tasks dirtied for storage"),
        .int("network_io_rx", \.networkIORx, unit: "bytes", v2: "/proc/net/dev", v1: "/proc/net/dev",
             "bytes received on the run's network namespace"),
        .int("network_io_tx", \.networkIOTx, unit: "bytes", v2: "/proc/net/dev", v1: "/proc/net/dev",
             "bytes sent from the run's network namespace"),
        .int("pids_count", \.pidsCount, unit: "tasks", v2: "pids.peak", v1: "pids.peak",
             "the most tasks (processes and threads) alive at once"),
        // sandpit's
        .int("network_io_loopback", \.networkIOLoopback, unit: "bytes", v2: "/proc/net/dev lo", v1: "/proc/net/dev lo",
             "bytes the run sent to itself over its loopback interface"),
        ResultField(name: "status", type: .string, nullable: false, unit: "", storage: .summary, sqlType: "TEXT",
                    v2: "", v1: "", doc: "how the run ended: " + RunStatus.allCases.map(\.rawValue).joined(separator: ", "),
                    get: { .string($0.status.rawValue) },
                    set: { r, v in if case .string(let s?) = v, let st = RunStatus(rawValue: s) { r.status = st } }),
        .smallInt("signal", \.signal, "the signal that ended the program, if one did"),
        .bool("oom_killed", \.oomKilled, "the kernel's OOM killer ended a task of the run"),
        .bool("timed_out", \.timedOut, "the wall-clock or CPU limit ended the run"),
        .bool("stdout_truncated", \.stdoutTruncated, "stdout was cut at output_limit"),
        .bool("stderr_truncated", \.stderrTruncated, "stderr was cut at output_limit"),
        ResultField(name: "custom_metrics", type: .object, nullable: false, unit: "", storage: .detail, sqlType: "TEXT",
                    v2: "the program's SANDPIT_METRICS pipe", v1: "the program's SANDPIT_METRICS pipe",
                    doc: "the program's own metrics: {name: {last, min, max, count, unit}}",
                    get: { .json(CustomMetrics.json($0.customMetrics)) },
                    set: { r, v in if case .json(let t?) = v { r.customMetrics = CustomMetrics.decode(t) } }),
        ResultField(name: "custom_metrics_rejected", type: .integer, nullable: false, unit: "lines", storage: .detail,
                    sqlType: "INTEGER", v2: "the program's SANDPIT_METRICS pipe", v1: "the program's SANDPIT_METRICS pipe",
                    doc: "lines of the metrics pipe that were not kept (malformed, over a limit)",
                    get: { .int(Int64($0.customMetricsRejected)) },
                    set: { r, v in if case .int(let i?) = v { r.customMetricsRejected = Int(clamping: i) } }),
        ResultField(name: "alerts", type: .array, nullable: false, unit: "", storage: .summary, sqlType: "TEXT",
                    v2: "", v1: "", doc: "names of the service's alert rules this run matched",
                    get: { .json(CustomMetrics.json($0.alerts)) },
                    set: { r, v in if case .json(let t?) = v { r.alerts = CustomMetrics.decodeStrings(t) } }),
        ResultField(name: "start", type: .string, nullable: false, unit: "", storage: .summary, sqlType: "TEXT",
                    v2: "", v1: "", doc: "cold (python3 started for the run) or warm (forked from a warm template)",
                    get: { .string($0.start.rawValue) },
                    set: { r, v in if case .string(let s?) = v, let st = RunStart(rawValue: s) { r.start = st } }),
        ResultField(name: "warm_template", type: .string, nullable: true, unit: "", storage: .detail, sqlType: "TEXT",
                    v2: "", v1: "", doc: "the modules of the warm template the run was forked from; null when cold",
                    get: { .string($0.warmTemplate) }, set: { r, v in if case .string(let s) = v { r.warmTemplate = s } }),
        .int("memory_shared", \.memoryShared, unit: "bytes", v2: "/proc/<template>/status VmRSS",
             v1: "/proc/<template>/status VmRSS", storage: .detail,
             "a warm run's template's resident memory, shared with the run and charged to the service; null when cold"),
        .int("execution_index", \.executionIndex, unit: "", storage: .summary,
             "a session execution's number in its session (1, 2, ...); null for a stateless run"),
        ResultField(name: "memory_peak_method", type: .string, nullable: true, unit: "", storage: .detail, sqlType: "TEXT",
                    v2: "", v1: "", doc: "how memory_peak was measured: run (the run's own cgroup), reset (a session's peak reset as the execution began) or sampled (memory.current sampled during the execution)",
                    get: { .string($0.memoryPeakMethod) }, set: { r, v in if case .string(let s) = v { r.memoryPeakMethod = s } }),
        ResultField(name: "results", type: .array, nullable: false, unit: "", storage: .detail, sqlType: "TEXT",
                    v2: "", v1: "", doc: "rich results of a session's cell: [{type, data}] (image/png base64, text/html, text/plain)",
                    get: { .json($0.richResults ?? "[]") }, set: { r, v in if case .json(let t) = v { r.richResults = t == "[]" ? nil : t } }),
        ResultField(name: "exception", type: .object, nullable: true, unit: "", storage: .detail, sqlType: "TEXT",
                    v2: "", v1: "", doc: "the exception a session's cell raised: {name, value, traceback}; null when none",
                    get: { .json($0.exception) }, set: { r, v in if case .json(let t) = v { r.exception = t } }),
        ResultField(name: "session", type: .object, nullable: true, unit: "", storage: .detail, sqlType: "TEXT",
                    v2: "", v1: "", doc: "a session execution's session after it (id, name, totals); null for a stateless run",
                    get: { .json($0.sessionTotals) }, set: { r, v in if case .json(let t) = v { r.sessionTotals = t } }),
        ResultField(name: "network", type: .object, nullable: true, unit: "", storage: .detail, sqlType: "TEXT",
                    v2: "nftables counters of the run's chains; its resolver", v1: "nftables counters of the run's chains; its resolver",
                    doc: "a run with network: its address, bytes and packets per protocol, TCP connections, what the policy refused, DNS queries, per allowed destination; null for a run without network",
                    get: { .json($0.network) }, set: { r, v in if case .json(let t) = v { r.network = t } }),
        ResultField(name: "files", type: .object, nullable: false, unit: "", storage: .none, sqlType: "TEXT",
                    v2: "", v1: "", doc: "files under /work the request's return_files matched, {path: base64}; not logged",
                    get: { .json($0.returnedFiles ?? "{}") }, set: { r, v in if case .json(let t) = v { r.returnedFiles = t == "{}" ? nil : t } }),
        .bool("files_truncated", \.filesTruncated, storage: .none, "return_files matched more than 100 files or 10 MiB; the rest were left out"),
        ResultField(name: "started_at", type: .string, nullable: false, unit: "", storage: .summary, sqlType: "TIMESTAMP",
                    v2: "", v1: "", doc: "RFC 3339 time the run started",
                    get: { .string(ExecutionResult.timestamp($0.startedAt)) },
                    set: { r, v in if case .string(let s?) = v, let d = ExecutionResult.parseTimestamp(s) { r.startedAt = d } }),
    ]

    /// The schema by name.
    public static let fieldsByName: [String: ResultField] = Dictionary(uniqueKeysWithValues: schema.map { ($0.name, $0) })
}

/// A coding key for any name (the result's fields come from `schema`).
public struct AnyKey: CodingKey, Hashable, Sendable {
    public var stringValue: String
    public var intValue: Int? { nil }
    public init(_ s: String) { stringValue = s }
    public init?(stringValue: String) { self.stringValue = stringValue }
    public init?(intValue: Int) { nil }
}
