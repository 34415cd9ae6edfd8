import Foundation
import Hummingbird
import Sandbox

/// Errors users cause, and the service's own refusals: always a JSON body
/// `{"error": code, "detail": text}`.
public struct APIError: HTTPResponseError {
    public let status: HTTPResponse.Status
    public let error: String
    public let detail: String
    public var headers: HTTPFields = [:]

    public init(_ status: HTTPResponse.Status, _ error: String, _ detail: String) {
        self.status = status
        self.error = error
        self.detail = detail
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var h = headers
        h[.contentType] = "application/json"
        let body = JSONBody.encode(["error": error, "detail": detail])
        return Response(status: status, headers: h, body: .init(byteBuffer: ByteBuffer(string: body)))
    }
}

enum JSONBody {
    static func encode(_ object: Any) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.withoutEscapingSlashes])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    static func response(_ text: String, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: text)))
    }
}

/// Any JSON value, decoded with its type kept (so `true` is not a number and `1` is not a string).
enum JSONValue: Decodable {
    case null, bool(Bool), number(Double), string(String), array([JSONValue]), object([String: JSONValue])

    init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let d = try? c.decode(Double.self) { self = .number(d) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
        else { self = .object(try c.decode([String: JSONValue].self)) }
    }

    var typeName: String {
        switch self {
        case .null: "null"
        case .bool: "boolean"
        case .number: "number"
        case .string: "string"
        case .array: "array"
        case .object: "object"
        }
    }
}

/// Ranges the service accepts for each limit (the defaults are `RunLimits()`'s).
public struct LimitRanges: Sendable {
    public var wallSeconds: ClosedRange<Double> = 0.001...300
    public var cpuSeconds: ClosedRange<Double> = 0.001...300
    public var memoryBytes: ClosedRange<UInt64> = (16 << 20)...(16 << 30)
    public var pids: ClosedRange<UInt64> = 1...4096
    public var outputBytes: ClosedRange<Int> = 0...(64 << 20)
    public init() {}
}

/// Parses and validates a POST /execute body.
enum ExecuteRequestParser {
    static let known: Set<String> = ["code", "stdin", "args", "container_name", "time_limit", "cpu_limit",
                                     "memory_limit", "pids_limit", "output_limit", "runtime"]

    static func parse(_ body: ByteBuffer, ranges: LimitRanges) throws -> ExecutionRequest {
        let value: JSONValue
        do {
            value = try JSONDecoder().decode(JSONValue.self, from: Data(buffer: body))
        } catch {
            throw APIError(.badRequest, "invalid_json", "the body is not valid JSON")
        }
        guard case .object(let o) = value else {
            throw APIError(.badRequest, "invalid_request", "the body must be a JSON object, not \(value.typeName)")
        }
        if let unknown = o.keys.first(where: { !known.contains($0) }) {
            throw APIError(.badRequest, "invalid_request", "unknown field '\(unknown)'")
        }
        guard let c = o["code"] else { throw APIError(.badRequest, "invalid_request", "'code' is required") }
        guard case .string(let code) = c else {
            throw APIError(.badRequest, "invalid_request", "'code' must be a string, not \(c.typeName)")
        }
        var req = ExecutionRequest(code: code)

        func string(_ key: String) throws -> String? {
            switch o[key] {
            case nil, .null?: return nil
            case .string(let s)?: return s
            case let v?: throw APIError(.badRequest, "invalid_request", "'\(key)' must be a string, not \(v.typeName)")
            }
        }
        func number(_ key: String, _ range: ClosedRange<Double>) throws -> Double? {
            guard let v = o[key] else { return nil }
            if case .null = v { return nil }
            guard case .number(let d) = v else {
                throw APIError(.badRequest, "invalid_request", "'\(key)' must be a number, not \(v.typeName)")
            }
            guard range.contains(d) else {
                throw APIError(.badRequest, "limit_out_of_range", "'\(key)' must be between \(range.lowerBound) and \(range.upperBound)")
            }
            return d
        }
        func integer(_ key: String, _ range: ClosedRange<Double>) throws -> UInt64? {
            guard let d = try number(key, range) else { return nil }
            guard d == d.rounded() else { throw APIError(.badRequest, "invalid_request", "'\(key)' must be an integer") }
            return UInt64(d)
        }

        if let name = try string("runtime") {
            guard let rt = Runtime.builtIn[name] else {
                let names = Runtime.builtIn.keys.sorted().joined(separator: ", ")
                throw APIError(.badRequest, "invalid_request", "unknown runtime '\(name)' (known: \(names))")
            }
            req.runtime = rt
        }
        if let s = try string("stdin") { req.stdin = Array(s.utf8) }
        if let n = try string("container_name") {
            // Counted as JSON Schema's maxLength counts: in Unicode code points.
            guard !n.isEmpty, n.unicodeScalars.count <= 256 else {
                throw APIError(.badRequest, "invalid_request", "'container_name' must have 1 to 256 characters")
            }
            req.name = n
        }
        if let a = o["args"] {
            switch a {
            case .null: break
            case .array(let items):
                req.args = try items.map {
                    guard case .string(let s) = $0 else {
                        throw APIError(.badRequest, "invalid_request", "'args' must be an array of strings")
                    }
                    return s
                }
            default: throw APIError(.badRequest, "invalid_request", "'args' must be an array of strings, not \(a.typeName)")
            }
        }
        if let v = try number("time_limit", ranges.wallSeconds) { req.limits.wallSeconds = v }
        if let v = try number("cpu_limit", ranges.cpuSeconds) { req.limits.cpuSeconds = v }
        let mem = ranges.memoryBytes, pids = ranges.pids, out = ranges.outputBytes
        if let v = try integer("memory_limit", Double(mem.lowerBound)...Double(mem.upperBound)) { req.limits.memoryBytes = v }
        if let v = try integer("pids_limit", Double(pids.lowerBound)...Double(pids.upperBound)) { req.limits.pids = v }
        if let v = try integer("output_limit", Double(out.lowerBound)...Double(out.upperBound)) { req.limits.outputBytes = Int(v) }
        return req
    }
}
