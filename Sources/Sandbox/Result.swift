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

    /// One field's value, for the two writers (JSONEncoder and the compact one).
    enum Field {
        case string(String?), bool(Bool), int(Int64?), double(Double?)
    }

    /// Every field in the specification's order, then sandpit's.
    var fields: [(CodingKeys, Field)] {
        [(.success, .bool(success)), (.output, .string(output)), (.error, .string(error)),
         (.containerID, .string(containerID)), (.containerName, .string(containerName)),
         (.executionTime, .double(executionTime)), (.exitCode, .int(exitCode.map(Int64.init))),
         (.cpuUserTime, .double(cpuUserTime)), (.cpuSystemTime, .double(cpuSystemTime)),
         (.cpuPercent, .double(cpuPercent)), (.memoryUsage, .int(memoryUsage)), (.memoryPeak, .int(memoryPeak)),
         (.memoryPercent, .double(memoryPercent)), (.memoryLimit, .int(memoryLimit)),
         (.blockIORead, .int(blockIORead)), (.blockIOWrite, .int(blockIOWrite)),
         (.networkIORx, .int(networkIORx)), (.networkIOTx, .int(networkIOTx)), (.pidsCount, .int(pidsCount)),
         (.status, .string(status.rawValue)), (.signal, .int(signal.map(Int64.init))),
         (.oomKilled, .bool(oomKilled)), (.timedOut, .bool(timedOut)),
         (.stdoutTruncated, .bool(stdoutTruncated)), (.stderrTruncated, .bool(stderrTruncated)),
         (.startedAt, .string(Self.timestamp(startedAt)))]
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        for (key, value) in fields {
            switch value {
            case .string(let v): try c.encode(v, forKey: key)
            case .bool(let v): try c.encode(v, forKey: key)
            case .int(let v): try c.encode(v, forKey: key)
            case .double(let v): try c.encode(v, forKey: key)
            }
        }
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

    /// RFC 3339 UTC with milliseconds (rounded), e.g. `2026-11-29T03:42:23.146Z`.
    public static func timestamp(_ d: Date) -> String {
        let total = Int64((d.timeIntervalSince1970 * 1000).rounded())
        var secs = time_t(total / 1000)
        let ms = Int(total % 1000)
        var tm = tm()
        gmtime_r(&secs, &tm)
        func pad(_ v: Int, _ width: Int) -> String {
            let s = String(v)
            return s.count >= width ? s : String(repeating: "0", count: width - s.count) + s
        }
        return "\(pad(Int(tm.tm_year) + 1900, 4))-\(pad(Int(tm.tm_mon) + 1, 2))-\(pad(Int(tm.tm_mday), 2))T"
            + "\(pad(Int(tm.tm_hour), 2)):\(pad(Int(tm.tm_min), 2)):\(pad(Int(tm.tm_sec), 2)).\(pad(ms, 3))Z"
    }

    public static func parseTimestamp(_ s: String) -> Date? {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f.date(from: s)
    }

    /// The JSON text of the result, fields in the specification's order. The compact
    /// form (the API's response, on every request) is written directly; the pretty one
    /// (the CLI's --json) goes through JSONEncoder.
    public func jsonString(pretty: Bool = false) -> String {
        if pretty {
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .withoutEscapingSlashes]
            let data = (try? enc.encode(self)) ?? Data("{}".utf8)
            return String(decoding: data, as: UTF8.self)
        }
        var w = JSONWriter()
        for (key, value) in fields {
            switch value {
            case .string(let v): w.field(key.rawValue, v)
            case .bool(let v): w.field(key.rawValue, v)
            case .int(let v): w.field(key.rawValue, v)
            case .double(let v): w.field(key.rawValue, v)
            }
        }
        return w.finish()
    }
}

/// A flat JSON object written field by field (strings escaped per RFC 8259).
struct JSONWriter {
    private var out: [UInt8] = [UInt8(ascii: "{")]

    private mutating func key(_ k: String) {
        if out.count > 1 { out.append(UInt8(ascii: ",")) }
        string(k)
        out.append(UInt8(ascii: ":"))
    }

    private mutating func string(_ s: String) {
        out.append(UInt8(ascii: "\""))
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "\""): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\"")])
            case UInt8(ascii: "\\"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
            case 0x0A: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
            case 0x0D: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
            case 0x09: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                out.append(contentsOf: Array("\\u00".utf8))
                out.append(hex[Int(b >> 4)])
                out.append(hex[Int(b & 0xf)])
            default: out.append(b)
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    private mutating func raw(_ s: String) { out.append(contentsOf: s.utf8) }

    mutating func field(_ k: String, _ v: String?) {
        key(k)
        if let v { string(v) } else { raw("null") }
    }

    mutating func field(_ k: String, _ v: Bool) {
        key(k)
        raw(v ? "true" : "false")
    }

    mutating func field(_ k: String, _ v: Int64?) {
        key(k)
        raw(v.map { String($0) } ?? "null")
    }

    mutating func field(_ k: String, _ v: Double?) {
        key(k)
        if let v, v.isFinite { raw(v.description) } else { raw("null") }
    }

    mutating func finish() -> String {
        out.append(UInt8(ascii: "}"))
        return String(decoding: out, as: UTF8.self)
    }
}
