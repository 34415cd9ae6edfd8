import Foundation

/// How a run ended.
public enum RunStatus: String, Codable, Sendable, CaseIterable {
    case ok
    case runtimeError = "runtime_error"
    case signaled
    case timeout
    case memoryLimit = "memory_limit"
    case outputLimit = "output_limit"
    case internalError = "internal_error"
}

/// The result object: exactly the specification's response fields (names and
/// units), plus sandpit's own. Optional metrics encode as JSON null.
public struct ExecutionResult: Sendable, Equatable {
    public var success: Bool
    public var output: String
    public var error: String?
    public var containerID: String
    public var containerName: String
    public var executionTime: Double
    public var exitCode: Int?
    public var cpuUserTime: Double?
    public var cpuSystemTime: Double?
    public var cpuPercent: Double?
    public var memoryUsage: Int64?
    public var memoryPeak: Int64?
    public var memoryPercent: Double?
    public var memoryLimit: Int64?
    public var blockIORead: Int64?
    public var blockIOWrite: Int64?
    public var networkIORx: Int64?
    public var networkIOTx: Int64?
    public var pidsCount: Int64?
    // sandpit's fields
    public var status: RunStatus
    public var signal: Int?
    public var oomKilled: Bool
    public var timedOut: Bool
    public var stdoutTruncated: Bool
    public var stderrTruncated: Bool
    public var startedAt: Date

    public init(containerID: String, containerName: String, startedAt: Date) {
        success = false
        output = ""
        error = nil
        self.containerID = containerID
        self.containerName = containerName
        executionTime = 0
        status = .internalError
        oomKilled = false
        timedOut = false
        stdoutTruncated = false
        stderrTruncated = false
        self.startedAt = startedAt
    }
}

extension ExecutionResult: Codable {
    enum CodingKeys: String, CodingKey, CaseIterable {
        case success, output, error
        case containerID = "container_id"
        case containerName = "container_name"
        case executionTime = "execution_time"
        case exitCode = "exit_code"
        case cpuUserTime = "cpu_user_time"
        case cpuSystemTime = "cpu_system_time"
        case cpuPercent = "cpu_percent"
        case memoryUsage = "memory_usage"
        case memoryPeak = "memory_peak"
        case memoryPercent = "memory_percent"
        case memoryLimit = "memory_limit"
        case blockIORead = "block_io_read"
        case blockIOWrite = "block_io_write"
        case networkIORx = "network_io_rx"
        case networkIOTx = "network_io_tx"
        case pidsCount = "pids_count"
        case status, signal
        case oomKilled = "oom_killed"
        case timedOut = "timed_out"
        case stdoutTruncated = "stdout_truncated"
        case stderrTruncated = "stderr_truncated"
        case startedAt = "started_at"
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(success, forKey: .success)
        try c.encode(output, forKey: .output)
        try c.encode(error, forKey: .error)
        try c.encode(containerID, forKey: .containerID)
        try c.encode(containerName, forKey: .containerName)
        try c.encode(executionTime, forKey: .executionTime)
        try c.encode(exitCode, forKey: .exitCode)
        try c.encode(cpuUserTime, forKey: .cpuUserTime)
        try c.encode(cpuSystemTime, forKey: .cpuSystemTime)
        try c.encode(cpuPercent, forKey: .cpuPercent)
        try c.encode(memoryUsage, forKey: .memoryUsage)
        try c.encode(memoryPeak, forKey: .memoryPeak)
        try c.encode(memoryPercent, forKey: .memoryPercent)
        try c.encode(memoryLimit, forKey: .memoryLimit)
        try c.encode(blockIORead, forKey: .blockIORead)
        try c.encode(blockIOWrite, forKey: .blockIOWrite)
        try c.encode(networkIORx, forKey: .networkIORx)
        try c.encode(networkIOTx, forKey: .networkIOTx)
        try c.encode(pidsCount, forKey: .pidsCount)
        try c.encode(status, forKey: .status)
        try c.encode(signal, forKey: .signal)
        try c.encode(oomKilled, forKey: .oomKilled)
        try c.encode(timedOut, forKey: .timedOut)
        try c.encode(stdoutTruncated, forKey: .stdoutTruncated)
        try c.encode(stderrTruncated, forKey: .stderrTruncated)
        try c.encode(Self.timestamp(startedAt), forKey: .startedAt)
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(containerID: try c.decode(String.self, forKey: .containerID),
                  containerName: try c.decode(String.self, forKey: .containerName),
                  startedAt: Self.parseTimestamp(try c.decode(String.self, forKey: .startedAt)) ?? Date(timeIntervalSince1970: 0))
        success = try c.decode(Bool.self, forKey: .success)
        output = try c.decode(String.self, forKey: .output)
        error = try c.decodeIfPresent(String.self, forKey: .error)
        executionTime = try c.decode(Double.self, forKey: .executionTime)
        exitCode = try c.decodeIfPresent(Int.self, forKey: .exitCode)
        cpuUserTime = try c.decodeIfPresent(Double.self, forKey: .cpuUserTime)
        cpuSystemTime = try c.decodeIfPresent(Double.self, forKey: .cpuSystemTime)
        cpuPercent = try c.decodeIfPresent(Double.self, forKey: .cpuPercent)
        memoryUsage = try c.decodeIfPresent(Int64.self, forKey: .memoryUsage)
        memoryPeak = try c.decodeIfPresent(Int64.self, forKey: .memoryPeak)
        memoryPercent = try c.decodeIfPresent(Double.self, forKey: .memoryPercent)
        memoryLimit = try c.decodeIfPresent(Int64.self, forKey: .memoryLimit)
        blockIORead = try c.decodeIfPresent(Int64.self, forKey: .blockIORead)
        blockIOWrite = try c.decodeIfPresent(Int64.self, forKey: .blockIOWrite)
        networkIORx = try c.decodeIfPresent(Int64.self, forKey: .networkIORx)
        networkIOTx = try c.decodeIfPresent(Int64.self, forKey: .networkIOTx)
        pidsCount = try c.decodeIfPresent(Int64.self, forKey: .pidsCount)
        status = try c.decode(RunStatus.self, forKey: .status)
        signal = try c.decodeIfPresent(Int.self, forKey: .signal)
        oomKilled = try c.decode(Bool.self, forKey: .oomKilled)
        timedOut = try c.decode(Bool.self, forKey: .timedOut)
        stdoutTruncated = try c.decode(Bool.self, forKey: .stdoutTruncated)
        stderrTruncated = try c.decode(Bool.self, forKey: .stderrTruncated)
    }

    /// RFC 3339 UTC with milliseconds.
    public static func timestamp(_ d: Date) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f.string(from: d)
    }

    public static func parseTimestamp(_ s: String) -> Date? {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f.date(from: s)
    }

    /// The JSON text of the result (sorted keys are not used: the field order follows the specification).
    public func jsonString(pretty: Bool = false) -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = pretty ? [.prettyPrinted, .withoutEscapingSlashes] : [.withoutEscapingSlashes]
        let data = (try? enc.encode(self)) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}
