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
    /// A client stopped the run (`DELETE /executions/{id}`, or a streaming client left).
    case cancelled
    /// The service ended it: stopped at the end of a shutdown's grace period, or, for a
    /// row a crashed instance left running, marked so at the next start.
    case interrupted
}

/// How a run's interpreter started.
public enum RunStart: String, Codable, Sendable, CaseIterable {
    case cold, warm
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
    public var networkIOLoopback: Int64?
    public var status: RunStatus
    public var signal: Int?
    public var oomKilled: Bool
    public var timedOut: Bool
    public var stdoutTruncated: Bool
    public var stderrTruncated: Bool
    public var startedAt: Date
    /// The program's own metrics (`custom_metrics`), and the lines of its pipe not kept.
    public var customMetrics: [String: CustomMetric] = [:]
    public var customMetricsRejected = 0
    /// The points behind `customMetrics`, in the order reported (logged by the service;
    /// not part of the result's JSON).
    public var customPoints: [CustomPoint] = []
    /// Alert rules the run matched (set by the service).
    public var alerts: [String] = []
    /// `cold` (python3 exec'd for the run) or `warm` (forked from a warm template).
    public var start: RunStart = .cold
    /// The warm template's modules (`numpy,pandas`); nil for a cold run.
    public var warmTemplate: String?
    /// A warm run's template's resident memory: pages the run used without being charged.
    public var memoryShared: Int64?
    /// A session execution's number within its session (1, 2, ...); nil for a stateless run.
    public var executionIndex: Int64?
    /// How `memoryPeak` was measured: `run` (the run cgroup's own peak), `reset` (the
    /// session's peak, reset as the execution began) or `sampled` (memory.current
    /// sampled during the execution, where the kernel cannot reset the peak).
    public var memoryPeakMethod: String?
    /// Rich results (an array of `{type, data}`), as JSON text; nil reads as `[]`.
    public var richResults: String?
    /// The exception that ended a session's cell: `{name, value, traceback}` as JSON text.
    public var exception: String?
    /// A session execution's session after it: its totals, as JSON text.
    public var sessionTotals: String?
    /// Files the request's `return_files` matched: `{path: base64}` as JSON text.
    public var returnedFiles: String?
    /// Some matched files were left out (over 100 files or 10 MiB).
    public var filesTruncated = false
    /// A run with network: its breakdown (`NetworkBreakdown.json`) as JSON text; nil
    /// for a run without (loopback only).
    public var network: String?

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
    /// Written and read field by field from `schema`.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: AnyKey.self)
        for f in Self.schema {
            let key = AnyKey(f.name)
            switch f.get(self) {
            case .string(let v): try c.encode(v, forKey: key)
            case .bool(let v): try c.encode(v, forKey: key)
            case .int(let v): try c.encode(v, forKey: key)
            case .double(let v): try c.encode(v, forKey: key)
            case .json(let text):
                switch f.name {
                case "alerts": try c.encode(alerts, forKey: key)
                case "custom_metrics": try c.encode(customMetrics, forKey: key)
                default: try c.encode(text.flatMap(JSONValue.init(text:)) ?? .null, forKey: key)
                }
            }
        }
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: AnyKey.self)
        self.init(containerID: "", containerName: "", startedAt: Date(timeIntervalSince1970: 0))
        for f in Self.schema {
            let key = AnyKey(f.name)
            let value: FieldValue
            switch f.type {
            case .string: value = .string(f.nullable ? try c.decodeIfPresent(String.self, forKey: key) : try c.decode(String.self, forKey: key))
            case .boolean: value = .bool(f.nullable ? try c.decodeIfPresent(Bool.self, forKey: key) : try c.decode(Bool.self, forKey: key))
            case .integer: value = .int(f.nullable ? try c.decodeIfPresent(Int64.self, forKey: key) : try c.decode(Int64.self, forKey: key))
            case .number: value = .double(f.nullable ? try c.decodeIfPresent(Double.self, forKey: key) : try c.decode(Double.self, forKey: key))
            case .object, .array:
                // (absent in results of older sandpits)
                switch f.name {
                case "alerts": alerts = try c.decodeIfPresent([String].self, forKey: key) ?? []
                case "custom_metrics": customMetrics = try c.decodeIfPresent([String: CustomMetric].self, forKey: key) ?? [:]
                default:
                    let v = try c.decodeIfPresent(JSONValue.self, forKey: key)
                    f.set(&self, .json(v == nil || v == .null ? nil : v!.text))
                }
                continue
            }
            f.set(&self, value)
        }
    }

    /// RFC 3339 UTC with milliseconds (rounded), e.g. `2026-11-29T03:42:23.146Z`.
    public static func timestamp(_ d: Date) -> String {
        let total = Int64((d.timeIntervalSince1970 * 1000).rounded())
        // Floor division: before 1970 the milliseconds are still 0...999 past the second.
        var secs = time_t(total >= 0 ? total / 1000 : -((-total + 999) / 1000))
        let ms = Int(total - Int64(secs) * 1000)
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
        for f in Self.schema { w.field(f.name, f.get(self)) }
        return w.finish()
    }
}

/// A JSON object written field by field (strings escaped per RFC 8259); a value
/// that is already JSON text can be put in with `raw`.
public struct JSONWriter: Sendable {
    private var out: [UInt8] = [UInt8(ascii: "{")]

    public init() {}

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

    /// `s` as a JSON string literal.
    public static func quoted(_ s: String) -> String {
        var w = JSONWriter()
        w.out = []
        w.string(s)
        return String(decoding: w.out, as: UTF8.self)
    }

    /// A field whose value is JSON text written elsewhere (an array, an object).
    public mutating func field(_ k: String, json: String) {
        key(k)
        raw(json)
    }

    public mutating func field(_ k: String, _ v: FieldValue) {
        switch v {
        case .string(let v): field(k, v)
        case .bool(let v): key(k); raw(v.map { $0 ? "true" : "false" } ?? "null")
        case .int(let v): field(k, v)
        case .double(let v): field(k, v)
        case .json(let v): field(k, json: v ?? "null")
        }
    }

    public mutating func field(_ k: String, _ v: String?) {
        key(k)
        if let v { string(v) } else { raw("null") }
    }

    public mutating func field(_ k: String, _ v: Bool) {
        key(k)
        raw(v ? "true" : "false")
    }

    public mutating func field(_ k: String, _ v: Int64?) {
        key(k)
        raw(v.map { String($0) } ?? "null")
    }

    public mutating func field(_ k: String, _ v: Double?) {
        key(k)
        if let v, v.isFinite { raw(v.description) } else { raw("null") }
    }

    public mutating func finish() -> String {
        out.append(UInt8(ascii: "}"))
        return String(decoding: out, as: UTF8.self)
    }
}
