import Foundation
import Sandbox

/// Regression detection: did a program's metric get worse in its latest runs?
///
/// The test is one-sided Mann–Whitney U (recent > baseline) with a minimum effect.
/// Rank-based, so it assumes no distribution: run times and memory peaks are skewed,
/// have outliers (a cold cache, a GC pause) and many ties (memory comes in pages), which
/// break a t-test's assumptions. Significance alone is not enough — with enough runs a
/// 1 % shift is "significant" and nobody wants that alarm — so the recent median must
/// also exceed the baseline median by `minRatio` (default 1.2, +20 %). With many
/// fingerprints checked at once, the significance level is divided among them
/// (Bonferroni), so one query over 1000 stable programs still raises no alarm.
/// One group's newest values of a metric, newest first.
public struct RunSeries: Sendable, Equatable {
    public var group: String
    public var latestID: Int64
    public var values: [Double]
}

public enum Regression {
    public struct Finding: Sendable, Equatable {
        public var baselineMedian: Double
        public var recentMedian: Double
        /// recent / baseline median; nil when the baseline median is 0.
        public var ratio: Double?
        /// One-sided p-value of "recent is stochastically larger than baseline".
        public var pValue: Double
    }

    public static func median(_ values: [Double]) -> Double {
        let v = values.sorted()
        guard !v.isEmpty else { return 0 }
        return v.count % 2 == 1 ? v[v.count / 2] : (v[v.count / 2 - 1] + v[v.count / 2]) / 2
    }

    /// One-sided Mann–Whitney U p-value that `recent` tends to be larger than
    /// `baseline`: normal approximation with average ranks for ties, the tie correction
    /// of the variance and a continuity correction. 1 when every value is tied.
    public static func mannWhitneyP(baseline: [Double], recent: [Double]) -> Double {
        let n1 = Double(recent.count), n2 = Double(baseline.count)
        guard n1 > 0, n2 > 0 else { return 1 }
        let all = (recent.map { ($0, true) } + baseline.map { ($0, false) }).sorted { $0.0 < $1.0 }
        var rankSum = 0.0, tieTerm = 0.0
        var i = 0
        while i < all.count {
            var j = i
            while j + 1 < all.count && all[j + 1].0 == all[i].0 { j += 1 }
            let rank = Double(i + j + 2) / 2  // average of ranks i+1 ... j+1
            let t = Double(j - i + 1)
            if t > 1 { tieTerm += t * t * t - t }
            for k in i...j where all[k].1 { rankSum += rank }
            i = j + 1
        }
        let n = n1 + n2
        let u = rankSum - n1 * (n1 + 1) / 2
        let mean = n1 * n2 / 2
        let variance = n1 * n2 / 12 * ((n + 1) - tieTerm / (n * (n - 1)))
        guard variance > 0 else { return 1 }
        let z = (u - mean - 0.5) / variance.squareRoot()
        return 0.5 * erfc(z / 2.0.squareRoot())
    }

    /// A finding when `recent` is worse (larger) than `baseline` at level `alpha` and by
    /// at least `minRatio` in the median; nil otherwise.
    public static func check(baseline: [Double], recent: [Double], alpha: Double, minRatio: Double) -> Finding? {
        let b = median(baseline), r = median(recent)
        let ratio: Double? = b > 0 ? r / b : nil
        if let ratio { guard ratio >= minRatio else { return nil } } else { guard r > 0 else { return nil } }
        let p = mannWhitneyP(baseline: baseline, recent: recent)
        guard p < alpha else { return nil }
        return Finding(baselineMedian: b, recentMedian: r, ratio: ratio, pValue: p)
    }
}

extension Regression {
    /// What `by` groups runs by: nil for `code_sha256`, the key of `label.KEY`.
    public static func labelKey(by: String) throws(APIError) -> String? {
        if by == "code_sha256" { return nil }
        guard by.hasPrefix("label."), Labels.isValidKey(String(by.dropFirst(6))) else {
            throw APIError(.badRequest, "invalid_query", "'by' must be code_sha256 or label.KEY")
        }
        return String(by.dropFirst(6))
    }

    /// What `GET /executions/regressions` (and `sandpit regressions`) answers.
    public struct Report: Sendable {
        public var metric: TrendMetric
        public var by: String
        public var window: Int, baseline: Int
        public var alpha: Double, minRatio: Double
        /// Groups with enough runs.
        public var checked: Int
        /// Worst (smallest p) first.
        public var found: [(series: RunSeries, finding: Finding)]

        public func json() -> String {
            var w = JSONWriter()
            w.field("metric", metric.name)
            w.field("unit", metric.unit)
            w.field("by", by)
            w.field("window", Int64(window))
            w.field("baseline", Int64(baseline))
            w.field("min_ratio", minRatio)
            w.field("alpha", alpha)
            w.field("checked", Int64(checked))
            w.field("regressions", json: "[" + found.map { s, f in
                var o = JSONWriter()
                o.field("fingerprint", s.group)
                o.field("latest_id", s.latestID)
                o.field("baseline_median", f.baselineMedian)
                o.field("recent_median", f.recentMedian)
                o.field("ratio", f.ratio)
                o.field("p_value", f.pValue)
                return o.finish()
            }.joined(separator: ",") + "]")
            return w.finish()
        }
    }

    /// Checks every group of the log with `window + baseline` runs; the level `alpha`
    /// is shared among them (Bonferroni).
    public static func report(_ log: any ExecutionLog, _ q: LogQuery, metric: TrendMetric, by: String, labelKey: String?,
                              window: Int, baseline: Int, alpha: Double, minRatio: Double) async throws -> Report {
        let series = try await log.latestValues(q, metric: metric, labelKey: labelKey, count: window + baseline)
        let full = series.filter { $0.values.count == window + baseline }
        let level = alpha / Double(max(1, full.count))
        var found: [(series: RunSeries, finding: Finding)] = []
        for s in full {
            if let f = check(baseline: Array(s.values[window...]), recent: Array(s.values[..<window]), alpha: level, minRatio: minRatio) {
                found.append((s, f))
            }
        }
        found.sort { $0.finding.pValue < $1.finding.pValue }
        return Report(metric: metric, by: by, window: window, baseline: baseline, alpha: alpha, minRatio: minRatio,
                      checked: full.count, found: found)
    }
}
