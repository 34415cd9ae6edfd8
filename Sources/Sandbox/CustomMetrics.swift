import Foundation

/// What a run reported of one of its own metrics: the last value, the extremes, how
/// many points, and the unit it named (the last one given).
public struct CustomMetric: Sendable, Equatable, Codable {
    public var last: Double
    public var min: Double
    public var max: Double
    public var count: Int
    public var unit: String?

    public init(last: Double, min: Double, max: Double, count: Int, unit: String?) {
        self.last = last
        self.min = min
        self.max = max
        self.count = count
        self.unit = unit
    }

    enum CodingKeys: String, CodingKey { case last, min, max, count, unit }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(last, forKey: .last)
        try c.encode(min, forKey: .min)
        try c.encode(max, forKey: .max)
        try c.encode(count, forKey: .count)
        try c.encode(unit, forKey: .unit)  // null when the program named none
    }
}

/// One point a program reported: seconds since its execve, the metric's name, the value.
public struct CustomPoint: Sendable, Equatable {
    public var t: Double
    public var name: String
    public var value: Double
    public var unit: String?

    public init(t: Double, name: String, value: Double, unit: String? = nil) {
        self.t = t
        self.name = name
        self.value = value
        self.unit = unit
    }

    /// `{"t", "name", "value", "unit"}` (the live stream's `metric` event, the points endpoint).
    public func json() -> String {
        var w = JSONWriter()
        w.field("t", t)
        w.field("name", name)
        w.field("value", value)
        w.field("unit", unit)
        return w.finish()
    }
}

/// The rules for a program's own metrics: what a line on its `SANDPIT_METRICS` pipe
/// must look like, and how much of it a run may report.
public enum CustomMetrics {
    /// The descriptor the program finds the pipe on, and the path it is told.
    public static let path = "/dev/fd/3"
    public static let maxNames = 64
    public static let maxPoints = 10_000
    /// A longer line is rejected without being parsed.
    public static let maxLineBytes = 1024
    public static let maxUnitBytes = 32
    /// Lines parsed per run at most (points and rejected lines): past it every line is
    /// counted as rejected, so that a flood costs a newline search, not a JSON parse.
    public static let maxParsedLines = 2 * maxPoints

    /// `[A-Za-z_][A-Za-z0-9_.]{0,63}`.
    public static func isValidName<S: StringProtocol>(_ s: S) -> Bool { isIdentifier(s, alsoAllowed: []) }

    /// A letter or `_`, then up to 63 letters, digits, `_`, `.` and the bytes of `alsoAllowed`.
    static func isIdentifier<S: StringProtocol>(_ s: S, alsoAllowed: Set<UInt8>) -> Bool {
        let u = Array(s.utf8)
        guard let first = u.first, u.count <= 64 else { return false }
        func alpha(_ b: UInt8) -> Bool { (b >= 65 && b <= 90) || (b >= 97 && b <= 122) || b == 95 }
        return alpha(first) && u.dropFirst().allSatisfy { alpha($0) || ($0 >= 48 && $0 <= 57) || $0 == 46 || alsoAllowed.contains($0) }
    }

    /// `{name: {last, min, max, count, unit}}`, names sorted.
    public static func json(_ m: [String: CustomMetric]) -> String {
        var w = JSONWriter()
        for (name, v) in m.sorted(by: { $0.key < $1.key }) {
            var o = JSONWriter()
            o.field("last", v.last)
            o.field("min", v.min)
            o.field("max", v.max)
            o.field("count", Int64(v.count))
            o.field("unit", v.unit)
            w.field(name, json: o.finish())
        }
        return w.finish()
    }

    /// A JSON array of strings.
    public static func json(_ list: [String]) -> String {
        "[" + list.map(JSONWriter.quoted).joined(separator: ",") + "]"
    }

    public static func decode(_ text: String) -> [String: CustomMetric] {
        (try? JSONDecoder().decode([String: CustomMetric].self, from: Data(text.utf8))) ?? [:]
    }

    public static func decodeStrings(_ text: String) -> [String] {
        (try? JSONDecoder().decode([String].self, from: Data(text.utf8))) ?? []
    }

    struct Line: Decodable {
        var name: String
        var value: Double
        var unit: String?
    }

    /// A point from one line of JSON, or nil (counted as rejected).
    static func parse(_ line: ArraySlice<UInt8>, with decoder: JSONDecoder) -> (name: String, value: Double, unit: String?)? {
        guard let l = try? decoder.decode(Line.self, from: Data(line)),
              isValidName(l.name), l.value.isFinite, (l.unit?.utf8.count ?? 0) <= maxUnitBytes else { return nil }
        return (l.name, l.value, l.unit)
    }
}

/// Reads a run's custom-metrics pipe for the supervisor: never blocks (the pipe is
/// non-blocking), keeps at most `maxPoints` points of `maxNames` names and one
/// partial line of `maxLineBytes`, whatever the program writes; reads at most
/// `maxReadPerCall` bytes a call, so that a flood cannot starve the supervisor's
/// other work (limits, output), while reading always keeps the writer from blocking
/// for long.
struct MetricsReader {
    static let maxReadPerCall = 1 << 20

    private(set) var summaries: [String: CustomMetric] = [:]
    private(set) var points: [CustomPoint] = []
    private(set) var rejected = 0
    private(set) var eof = false
    private var partial: [UInt8] = []
    /// In a line longer than the limit: its rest is skipped up to the next newline.
    private var skipping = false
    private var parsed = 0
    private let decoder = JSONDecoder()

    /// Reads what is available (up to the per-call cap); `now` gives the points' time,
    /// `fresh` receives each point kept.
    mutating func drain(_ fd: Int32, now: () -> Double, fresh: ((CustomPoint) -> Void)? = nil) {
        var buf = [UInt8](repeating: 0, count: 65536)
        var total = 0
        while total < Self.maxReadPerCall {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n > 0 {
                total += n
                consume(buf[0..<n], now: now, fresh: fresh)
                continue
            }
            if n == 0 {
                eof = true
                finishPartial(now: now, fresh: fresh)
            }
            if n < 0 && errno == EINTR { continue }
            return
        }
    }

    /// Splits bytes into lines (newline search by memchr: a flood costs little).
    mutating func consume(_ bytes: ArraySlice<UInt8>, now: () -> Double, fresh: ((CustomPoint) -> Void)?) {
        bytes.withUnsafeBytes { raw in
            guard let base = raw.baseAddress else { return }
            var start = 0
            while start < raw.count {
                let rest = raw.count - start
                guard let hit = memchr(base + start, 0x0A, rest) else {
                    // No newline: keep the piece, unless the line is already too long.
                    if !skipping {
                        if partial.count + rest > CustomMetrics.maxLineBytes {
                            skipping = true
                            partial.removeAll(keepingCapacity: true)
                        } else {
                            partial.append(contentsOf: UnsafeRawBufferPointer(start: base + start, count: rest))
                        }
                    }
                    return
                }
                let end = base.distance(to: UnsafeRawPointer(hit))
                if skipping {
                    rejected += 1
                    skipping = false
                } else if partial.count + (end - start) > CustomMetrics.maxLineBytes {
                    rejected += 1
                    partial.removeAll(keepingCapacity: true)
                } else {
                    partial.append(contentsOf: UnsafeRawBufferPointer(start: base + start, count: end - start))
                    line(now: now, fresh: fresh)
                }
                start = end + 1
            }
        }
    }

    /// A last line without its newline counts as a line at the end of the stream.
    private mutating func finishPartial(now: () -> Double, fresh: ((CustomPoint) -> Void)?) {
        if skipping {
            rejected += 1
            skipping = false
        } else if !partial.isEmpty {
            line(now: now, fresh: fresh)
        }
    }

    private mutating func line(now: () -> Double, fresh: ((CustomPoint) -> Void)?) {
        defer { partial.removeAll(keepingCapacity: true) }
        let blank: (UInt8) -> Bool = { $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }
        guard partial.contains(where: { !blank($0) }) else { return }  // empty lines are no points
        guard parsed < CustomMetrics.maxParsedLines, points.count < CustomMetrics.maxPoints else {
            rejected += 1
            return
        }
        parsed += 1
        guard let p = CustomMetrics.parse(partial[...], with: decoder) else {
            rejected += 1
            return
        }
        if var s = summaries[p.name] {
            s.last = p.value
            s.min = Swift.min(s.min, p.value)
            s.max = Swift.max(s.max, p.value)
            s.count += 1
            if let u = p.unit { s.unit = u }
            summaries[p.name] = s
        } else {
            guard summaries.count < CustomMetrics.maxNames else {
                rejected += 1
                return
            }
            summaries[p.name] = CustomMetric(last: p.value, min: p.value, max: p.value, count: 1, unit: p.unit)
        }
        let point = CustomPoint(t: now(), name: p.name, value: p.value, unit: p.unit)
        points.append(point)
        fresh?(point)
    }
}
