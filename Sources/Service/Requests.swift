import Foundation
import Hummingbird
import Sandbox

/// The JSON type of a value, for error messages (`'code' must be a string, not number`).
enum JSONKind: String, Decodable {
    case null, boolean, number, string, array, object

    init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if (try? c.decode(Bool.self)) != nil { self = .boolean }
        else if (try? c.decode(Double.self)) != nil { self = .number }
        else if (try? c.decode(String.self)) != nil { self = .string }
        else if (try? c.decode([JSONKind].self)) != nil { self = .array }
        else { _ = try c.decode([String: JSONKind].self); self = .object }
    }
}

/// A POST /execute body, decoded strictly: unknown fields, wrong types and (in
/// `request(ranges:)`) values out of range are 400s that name the field.
struct ExecuteBody: Decodable {
    static let known: Set<String> = ["code", "stdin", "args", "container_name", "time_limit", "cpu_limit",
                                     "memory_limit", "pids_limit", "output_limit", "runtime",
                                     "stream", "detach", "sample_interval", "samples", "labels", "warm",
                                     "files", "return_files", "rich_results", "network", "network_rate"]

    var code: String
    var stdin: String?
    var args: [String]?
    var containerName: String?
    var timeLimit: Double?
    var cpuLimit: Double?
    var memoryLimit: Double?
    var pidsLimit: Double?
    var outputLimit: Double?
    var runtime: String?
    var stream: Bool?
    var detach: Bool?
    var sampleInterval: Double?
    var samples: Bool?
    var labels: [String: String] = [:]
    /// `true` (the template that fits the code's imports), `false`, or a template's
    /// modules (`"numpy"`, `"numpy,pandas"`).
    var warm: WarmChoice = .cold
    /// `files`: {path: base64} placed under /work before the run.
    var files: [(path: String, bytes: [UInt8])] = []
    /// `return_files`: globs of files under /work returned in the result.
    var returnFiles: [String] = []
    /// `rich_results`: run as a notebook cell, return `results` and `exception`.
    var richResults: Bool?
    /// `network`: "none", or {"allow": [entries]}; nil when absent (none).
    var networkAllow: [String]?
    /// `network_rate`: egress bytes/s (with an allow-list).
    var networkRate: Double?

    static func invalid(_ detail: String) -> APIError { APIError(.badRequest, "invalid_request", detail) }

    /// A request file's path as the schema allows it: `[A-Za-z0-9_][A-Za-z0-9_.-]*`
    /// components joined by `/`, at most 255 characters (so no `.` or `..`).
    static func isPlainPath(_ p: String) -> Bool {
        guard !p.isEmpty, p.utf8.count <= 255 else { return false }
        return p.split(separator: "/", omittingEmptySubsequences: false).allSatisfy { c in
            guard let first = c.utf8.first else { return false }
            func ok(_ b: UInt8) -> Bool { (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x5F }
            return ok(first) && c.utf8.allSatisfy { ok($0) || $0 == 0x2E || $0 == 0x2D }
        }
    }

    init(from decoder: any Decoder) throws {
        guard let c = try? decoder.container(keyedBy: AnyKey.self) else {
            let kind = try decoder.singleValueContainer().decode(JSONKind.self)
            throw Self.invalid("the body must be a JSON object, not \(kind.rawValue)")
        }
        if let unknown = c.allKeys.first(where: { !Self.known.contains($0.stringValue) }) {
            throw Self.invalid("unknown field '\(unknown.stringValue)'")
        }
        /// The value at `name` as `T`, nil when absent or null (unless `required`).
        func field<T: Decodable>(_ name: String, _ type: T.Type, _ what: String, required: Bool = false) throws -> T? {
            let key = AnyKey(name)
            guard c.contains(key) else {
                if required { throw Self.invalid("'\(name)' is required") }
                return nil
            }
            if !required, try c.decodeNil(forKey: key) { return nil }
            if let v = try? c.decode(T.self, forKey: key) { return v }
            let kind = try c.decode(JSONKind.self, forKey: key)
            throw Self.invalid("'\(name)' must be \(what), not \(kind.rawValue)")
        }
        code = try field("code", String.self, "a string", required: true)!
        stdin = try field("stdin", String.self, "a string")
        containerName = try field("container_name", String.self, "a string")
        runtime = try field("runtime", String.self, "a string")
        if c.contains(AnyKey("args")), try !c.decodeNil(forKey: AnyKey("args")) {
            guard let items = try? c.decode([JSONKind].self, forKey: AnyKey("args")) else {
                let kind = try c.decode(JSONKind.self, forKey: AnyKey("args"))
                throw Self.invalid("'args' must be an array of strings, not \(kind.rawValue)")
            }
            guard let strings = try? c.decode([String].self, forKey: AnyKey("args")), strings.count == items.count else {
                throw Self.invalid("'args' must be an array of strings")
            }
            args = strings
        }
        timeLimit = try field("time_limit", Double.self, "a number")
        cpuLimit = try field("cpu_limit", Double.self, "a number")
        memoryLimit = try field("memory_limit", Double.self, "a number")
        pidsLimit = try field("pids_limit", Double.self, "a number")
        outputLimit = try field("output_limit", Double.self, "a number")
        stream = try field("stream", Bool.self, "a boolean")
        detach = try field("detach", Bool.self, "a boolean")
        sampleInterval = try field("sample_interval", Double.self, "a number")
        samples = try field("samples", Bool.self, "a boolean")
        richResults = try field("rich_results", Bool.self, "a boolean")
        networkRate = try field("network_rate", Double.self, "a number")
        if c.contains(AnyKey("network")), try !c.decodeNil(forKey: AnyKey("network")) {
            if let s = try? c.decode(String.self, forKey: AnyKey("network")) {
                guard s == "none" else { throw Self.invalid("'network' must be \"none\" or an object {\"allow\": [...]}") }
            } else if let o = try? c.decode([String: JSONKind].self, forKey: AnyKey("network")) {
                if let k = o.keys.sorted().first(where: { $0 != "allow" }) {
                    throw Self.invalid("'network': unknown field '\(k.prefix(64))' (known: allow)")
                }
                let n = try c.nestedContainer(keyedBy: AnyKey.self, forKey: AnyKey("network"))
                guard let entries = try? n.decode([String].self, forKey: AnyKey("allow")) else {
                    throw Self.invalid("'network.allow' must be an array of strings")
                }
                networkAllow = entries
            } else {
                let kind = try c.decode(JSONKind.self, forKey: AnyKey("network"))
                throw Self.invalid("'network' must be \"none\" or an object {\"allow\": [...]}, not \(kind.rawValue)")
            }
        }
        if c.contains(AnyKey("warm")), try !c.decodeNil(forKey: AnyKey("warm")) {
            if let b = try? c.decode(Bool.self, forKey: AnyKey("warm")) {
                warm = b ? .auto : .cold
            } else if let s = try? c.decode(String.self, forKey: AnyKey("warm")) {
                do {
                    warm = .named(try WarmSpec(parsing: s))
                } catch {
                    throw Self.invalid("'warm': \(error.what)")
                }
            } else {
                let kind = try c.decode(JSONKind.self, forKey: AnyKey("warm"))
                throw Self.invalid("'warm' must be a boolean or a string of module names, not \(kind.rawValue)")
            }
        }
        if c.contains(AnyKey("files")), try !c.decodeNil(forKey: AnyKey("files")) {
            guard let kinds = try? c.decode([String: JSONKind].self, forKey: AnyKey("files")) else {
                let kind = try c.decode(JSONKind.self, forKey: AnyKey("files"))
                throw Self.invalid("'files' must be an object of base64 strings, not \(kind.rawValue)")
            }
            guard kinds.count <= 100 else { throw Self.invalid("'files' may name at most 100 files") }
            let raw = try c.decode([String: JSONKind].self, forKey: AnyKey("files"))
            if let (k, kind) = raw.sorted(by: { $0.key < $1.key }).first(where: { $0.value != .string }) {
                throw Self.invalid("'files': the value of '\(k.prefix(80))' must be a base64 string, not \(kind.rawValue)")
            }
            for (path, b64) in try c.decode([String: String].self, forKey: AnyKey("files")).sorted(by: { $0.key < $1.key }) {
                guard Self.isPlainPath(path) else {
                    throw Self.invalid("'files': '\(path.prefix(80))': paths are components of letters, digits, _ . - (not starting with a dot) joined by /, at most 255 characters")
                }
                let clean: String
                do { clean = try ExecutionRequest.checkFilePath(path) } catch {
                    throw Self.invalid("'files': '\(path.prefix(80))': \(error.what)")
                }
                guard let data = Data(base64Encoded: b64) else { throw Self.invalid("'files': '\(path.prefix(80))' is not valid base64") }
                files.append((clean, Array(data)))
            }
        }
        if c.contains(AnyKey("return_files")), try !c.decodeNil(forKey: AnyKey("return_files")) {
            guard let globs = try? c.decode([String].self, forKey: AnyKey("return_files")) else {
                throw Self.invalid("'return_files' must be an array of glob strings")
            }
            guard globs.count <= 32, globs.allSatisfy({ !$0.isEmpty && $0.utf8.count <= 1024 && !$0.utf8.contains(0) }) else {
                throw Self.invalid("'return_files' must be 1 to 32 non-empty globs of at most 1024 bytes")
            }
            returnFiles = globs.map { $0.hasPrefix("/work/") ? String($0.dropFirst(6)) : $0 }
        }
        if c.contains(AnyKey("labels")), try !c.decodeNil(forKey: AnyKey("labels")) {
            guard let kinds = try? c.decode([String: JSONKind].self, forKey: AnyKey("labels")) else {
                let kind = try c.decode(JSONKind.self, forKey: AnyKey("labels"))
                throw Self.invalid("'labels' must be an object of strings, not \(kind.rawValue)")
            }
            if let (k, kind) = kinds.sorted(by: { $0.key < $1.key }).first(where: { $0.value != .string }) {
                throw Self.invalid("'labels': the value of '\(k.prefix(80))' must be a string, not \(kind.rawValue)")
            }
            labels = try c.decode([String: String].self, forKey: AnyKey("labels"))
            try Labels.validate(labels)
        }
    }

    /// Decodes a body: invalid JSON is `invalid_json`, the rest as above.
    static func decode(_ body: ByteBuffer) throws -> ExecuteBody {
        do {
            return try JSONDecoder().decode(ExecuteBody.self, from: Data(buffer: body))
        } catch let e as APIError {
            throw e
        } catch {
            throw APIError(.badRequest, "invalid_json", "the body is not valid JSON")
        }
    }

    /// The request, with every value checked against the service's ranges.
    func request(ranges: LimitRanges) throws -> ExecutionRequest {
        var req = ExecutionRequest(code: code)
        req.warm = warm
        if let f = files.first(where: { $0.path == req.runtime.fileName }) {
            throw Self.invalid("'files': '\(f.path)' is the program's own file")
        }
        req.files = files
        req.returnFiles = returnFiles
        req.richResults = richResults ?? false
        func ranged(_ key: String, _ v: Double?, _ range: ClosedRange<Double>) throws -> Double? {
            guard let v else { return nil }
            guard range.contains(v) else {
                throw APIError(.badRequest, "limit_out_of_range", "'\(key)' must be between \(range.lowerBound) and \(range.upperBound)")
            }
            return v
        }
        func integer(_ key: String, _ v: Double?, _ range: ClosedRange<Double>) throws -> UInt64? {
            guard let d = try ranged(key, v, range) else { return nil }
            guard d == d.rounded() else { throw Self.invalid("'\(key)' must be an integer") }
            return UInt64(d)
        }
        if let name = runtime {
            guard let rt = Runtime.builtIn[name] else {
                let names = Runtime.builtIn.keys.sorted().joined(separator: ", ")
                throw Self.invalid("unknown runtime '\(name)' (known: \(names))")
            }
            req.runtime = rt
        }
        if let s = stdin { req.stdin = Array(s.utf8) }
        if let n = containerName {
            // Counted as JSON Schema's maxLength counts: in Unicode code points.
            guard !n.isEmpty, n.unicodeScalars.count <= 256 else {
                throw Self.invalid("'container_name' must have 1 to 256 characters")
            }
            req.name = n
        }
        if let a = args { req.args = a }
        if let v = try ranged("time_limit", timeLimit, ranges.wallSeconds) { req.limits.wallSeconds = v }
        if let v = try ranged("cpu_limit", cpuLimit, ranges.cpuSeconds) { req.limits.cpuSeconds = v }
        if let v = try ranged("sample_interval", sampleInterval, ranges.sampleSeconds) {
            req.sampleInterval = (v * 1000).rounded() / 1000  // millisecond precision
        }
        let mem = ranges.memoryBytes, pids = ranges.pids, out = ranges.outputBytes
        if let v = try integer("memory_limit", memoryLimit, Double(mem.lowerBound)...Double(mem.upperBound)) { req.limits.memoryBytes = v }
        if let v = try integer("pids_limit", pidsLimit, Double(pids.lowerBound)...Double(pids.upperBound)) { req.limits.pids = v }
        if let v = try integer("output_limit", outputLimit, Double(out.lowerBound)...Double(out.upperBound)) { req.limits.outputBytes = Int(v) }
        let rate = try integer("network_rate", networkRate, 1024...Double(10 << 30))
        if let allow = networkAllow {
            do {
                req.network = try NetworkPolicy.parse(allow, rate: rate)
            } catch {
                throw APIError(.badRequest, "invalid_network", error.message)
            }
        } else if rate != nil {
            throw Self.invalid("'network_rate' needs a network with an allow-list")
        }
        return req
    }
}
