import Crypto
import Foundation
import Sandbox

/// A run's labels: a flat map of string to string that the log stores and filters by
/// (`label.KEY=VALUE` on `GET /executions`). At most 16 pairs; keys are 1 to 64 of
/// `[a-z0-9_.-]`; values at most 256 bytes of UTF-8.
public enum Labels {
    public static let maxPairs = 16
    public static let maxValueBytes = 256

    public static func isValidKey(_ key: String) -> Bool {
        (1...64).contains(key.utf8.count) && key.utf8.allSatisfy { b in
            (b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39) || b == 0x5F || b == 0x2E || b == 0x2D
        }
    }

    /// Checks a whole set; the error names the first offending key.
    public static func validate(_ labels: [String: String]) throws(APIError) {
        guard labels.count <= maxPairs else {
            throw APIError(.badRequest, "invalid_request", "'labels' may have at most \(maxPairs) pairs, not \(labels.count)")
        }
        for (k, v) in labels.sorted(by: { $0.key < $1.key }) {
            try validate(key: k, value: v, in: "'labels'")
        }
    }

    public static func validate(key: String, value: String, in place: String) throws(APIError) {
        guard isValidKey(key) else {
            throw APIError(.badRequest, "invalid_request", "\(place): key '\(key.prefix(80))' must be 1 to 64 of a-z 0-9 _ . -")
        }
        guard value.utf8.count <= maxValueBytes else {
            throw APIError(.badRequest, "invalid_request", "\(place): the value of '\(key)' is over \(maxValueBytes) bytes")
        }
    }

    /// The `label.KEY=VALUE` filters of a query string, checked like labels.
    static func filters(_ parameters: [(key: String, value: String)]) throws(APIError) -> [(String, String)] {
        var out: [(String, String)] = []
        for (k, v) in parameters where k.hasPrefix("label.") {
            let key = String(k.dropFirst(6))
            do { try validate(key: key, value: v, in: "'\(k.prefix(80))'") } catch {
                throw APIError(.badRequest, "invalid_query", error.detail)
            }
            out.append((key, v))
        }
        return out
    }

    /// Labels as stored and answered: a JSON object with sorted keys.
    static func json(_ labels: [String: String]) -> String {
        var w = JSONWriter()
        for (k, v) in labels.sorted(by: { $0.key < $1.key }) { w.field(k, v) }
        return w.finish()
    }

    static func parse(_ json: String?) -> [String: String] {
        guard let json, let data = json.data(using: .utf8),
              let d = try? JSONDecoder().decode([String: String].self, from: data) else { return [:] }
        return d
    }
}

/// The fingerprint of a program: SHA-256 of its code's UTF-8 bytes, lowercase hex.
public func codeSHA256(_ code: String) -> String {
    SHA256.hash(data: Array(code.utf8)).map { String(format: "%02x", $0) }.joined()
}

func isSHA256Hex(_ s: Substring) -> Bool {
    s.utf8.count == 64 && s.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
}
