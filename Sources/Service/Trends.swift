import Foundation
import GRDB
import Sandbox

/// The width of a trend bucket.
public enum TrendBucket: String, Sendable, CaseIterable {
    case minute = "1m", hour = "1h", day = "1d"

    public var seconds: Double {
        switch self {
        case .minute: 60
        case .hour: 3600
        case .day: 86400
        }
    }

    /// The window a trend covers. Default: a day of minutes, 30 days of hours, a year
    /// of days, before `until` (default now). A window of more than `maxBuckets`
    /// buckets is cut to the latest ones (the answer's `since` says where it starts).
    public func window(since: Date?, until: Date?, now: Date = Date()) -> (since: Date, until: Date) {
        let until = until ?? now
        let defaultSpan: Double = switch self { case .minute: 86400; case .hour: 30 * 86400; case .day: 365 * 86400 }
        let since = max(since ?? until.addingTimeInterval(-defaultSpan), until.addingTimeInterval(-Double(Trends.maxBuckets) * seconds))
        return (since, until)
    }

    /// How much of `created_at` (stored as `YYYY-MM-DD HH:MM:SS.SSS`, UTC) names the bucket.
    var keyLength: Int {
        switch self { case .minute: 16; case .hour: 13; case .day: 10 }
    }

    /// The start of the bucket whose key is `key` (`YYYY-MM-DD[ HH[:MM]]`, UTC).
    func start(ofKey key: String) -> Date? {
        let digits = key.split(whereSeparator: { $0 == "-" || $0 == " " || $0 == ":" }).map { Int($0) }
        let parts = switch self { case .day: 3; case .hour: 4; case .minute: 5 }
        guard digits.count == parts, !digits.contains(nil) else { return nil }
        var t = tm()
        t.tm_year = Int32(digits[0]!) - 1900
        t.tm_mon = Int32(digits[1]!) - 1
        t.tm_mday = Int32(digits[2]!)
        if digits.count > 3 { t.tm_hour = Int32(digits[3]!) }
        if digits.count > 4 { t.tm_min = Int32(digits[4]!) }
        return Date(timeIntervalSince1970: Double(timegm(&t)))
    }
}

/// One bucket of a trend: how many runs had the metric, and its nearest-rank p50,
/// p95 and maximum among them.
public struct TrendPoint: Sendable, Equatable {
    public var start: Date
    public var count: Int
    public var p50: Double
    public var p95: Double
    public var max: Double
    public init(start: Date, count: Int, p50: Double, p95: Double, max: Double) {
        self.start = start
        self.count = count
        self.p50 = p50
        self.p95 = p95
        self.max = max
    }

    func json(integer: Bool) -> String {
        var w = JSONWriter()
        w.field("start", ExecutionResult.timestamp(start))
        w.field("count", Int64(count))
        for (k, v) in [("p50", p50), ("p95", p95), ("max", max)] {
            if integer { w.field(k, Int64(v)) } else { w.field(k, v) }
        }
        return w.finish()
    }
}

/// What a trend or a regression follows: a numeric stored field of the result, or
/// `custom.NAME`, the last value a run reported of its own metric NAME.
public struct TrendMetric: Sendable, Equatable {
    public let name: String
    public let unit: String
    public let isInteger: Bool
    /// Its value in a row of `execution_logs` (a column, or a JSON path into `custom_metrics`).
    public let sql: String

    public init(field f: ResultField) {
        name = f.name
        unit = f.unit
        isInteger = f.type == .integer
        sql = f.name
    }

    /// `custom.NAME` (NAME as the metrics pipe accepts it, so it is safe in the SQL text).
    public init?(custom name: Substring) {
        guard name.hasPrefix("custom."), CustomMetrics.isValidName(name.dropFirst(7)) else { return nil }
        self.name = String(name)
        unit = ""
        isInteger = false
        sql = "json_extract(custom_metrics, '$.\"\(name.dropFirst(7))\".last')"
    }
}

public enum Trends {
    /// The metrics a trend can follow: every numeric field of the result that is stored.
    public static let metrics: [ResultField] = ExecutionResult.schema.filter {
        $0.storage != .none && ($0.type == .integer || $0.type == .number) && $0.name != "execution_index"
    }
    /// The metric `name` names, or a 400 that lists the known ones.
    public static func metric(_ name: Substring) throws(APIError) -> TrendMetric {
        if let field = metrics.first(where: { $0.name == name }) { return TrendMetric(field: field) }
        if let custom = TrendMetric(custom: name) { return custom }
        let known = metrics.map(\.name).joined(separator: ", ")
        throw APIError(.badRequest, "invalid_query", "unknown metric '\(name.prefix(80))' (known: \(known), or custom.NAME)")
    }

    /// At most this many buckets in one answer.
    public static let maxBuckets = 10_000

    /// The answer of `GET /executions/trends` (and `sandpit trends --json`).
    public static func json(_ points: [TrendPoint], metric: TrendMetric, bucket: TrendBucket, since: Date, until: Date) -> String {
        var w = JSONWriter()
        w.field("metric", metric.name)
        w.field("unit", metric.unit)
        w.field("bucket", bucket.rawValue)
        w.field("since", ExecutionResult.timestamp(since))
        w.field("until", ExecutionResult.timestamp(until))
        w.field("buckets", json: "[" + points.map { $0.json(integer: metric.isInteger) }.joined(separator: ",") + "]")
        return w.finish()
    }
}

/// Reads what the SQLite aggregate `sp_trend` (Sources/CTrend) answers: one line per
/// bucket, `key count p50 p95 max`.
enum TrendAggregate {
    static func parse(_ text: String, bucket: TrendBucket) -> [TrendPoint] {
        text.split(separator: "\n").compactMap { line -> TrendPoint? in
            let parts = line.split(separator: " ")
            // The key has a space in it from the hour on ("2026-11-01 13").
            guard parts.count >= 5 else { return nil }
            let key = parts[0..<(parts.count - 4)].joined(separator: " ")
            let tail = parts.suffix(4)
            guard let start = bucket.start(ofKey: key), let n = Int(tail[tail.startIndex]),
                  let p50 = Double(tail[tail.startIndex + 1]), let p95 = Double(tail[tail.startIndex + 2]),
                  let max = Double(tail[tail.startIndex + 3]) else { return nil }
            return TrendPoint(start: start, count: n, p50: p50, p95: p95, max: max)
        }
    }
}
