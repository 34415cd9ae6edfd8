import Foundation

/// An alert rule of the service: `NAME: FIELD OP NUMBER`, where FIELD is a numeric
/// field of the result or `custom.NAME` (the last value the run reported of its own
/// metric), OP one of `>`, `>=`, `<`, `<=`, `==`, `!=`. A run whose value is null (a
/// metric the kernel did not give, a custom metric it did not report) matches nothing.
public struct AlertRule: Sendable, Equatable, CustomStringConvertible {
    public enum Op: String, Sendable, CaseIterable {
        case ge = ">=", le = "<=", eq = "==", ne = "!=", gt = ">", lt = "<"
        func holds(_ a: Double, _ b: Double) -> Bool {
            switch self {
            case .gt: a > b
            case .ge: a >= b
            case .lt: a < b
            case .le: a <= b
            case .eq: a == b
            case .ne: a != b
            }
        }
    }

    public let name: String
    public let field: String
    public let op: Op
    public let threshold: Double

    public var description: String { "\(name): \(field) \(op.rawValue) \(threshold)" }

    /// Numeric fields of the result a rule may test.
    public static let fields: [ResultField] = ExecutionResult.schema.filter { $0.type == .integer || $0.type == .number }

    /// Parses `NAME: FIELD OP NUMBER`; the error says what is wrong.
    public init(parsing text: String) throws(AlertRuleError) {
        guard let colon = text.firstIndex(of: ":") else {
            throw AlertRuleError("alert rule '\(text.prefix(200))': expected 'NAME: FIELD OP NUMBER'")
        }
        let name = text[..<colon].trimmingCharacters(in: .whitespaces)
        let expr = text[text.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        guard Self.isValidName(name) else {
            throw AlertRuleError("alert rule '\(text.prefix(200))': its name must match [A-Za-z_][A-Za-z0-9_.-]{0,63}")
        }
        // The longest operator first (">=" before ">").
        guard let (op, range) = Op.allCases.lazy.compactMap({ op in expr.range(of: op.rawValue).map { (op, $0) } }).first else {
            throw AlertRuleError("alert rule '\(name)': no comparison (>, >=, <, <=, ==, !=) in '\(expr.prefix(200))'")
        }
        let field = expr[..<range.lowerBound].trimmingCharacters(in: .whitespaces)
        let number = expr[range.upperBound...].trimmingCharacters(in: .whitespaces)
        guard Self.fields.contains(where: { $0.name == field })
                || (field.hasPrefix("custom.") && CustomMetrics.isValidName(field.dropFirst(7))) else {
            let known = Self.fields.map(\.name).joined(separator: ", ")
            throw AlertRuleError("alert rule '\(name)': unknown field '\(field.prefix(80))' (known: \(known), or custom.NAME)")
        }
        guard let v = Double(number), v.isFinite else {
            throw AlertRuleError("alert rule '\(name)': '\(number.prefix(80))' is not a finite number")
        }
        self.name = name
        self.field = field
        self.op = op
        threshold = v
    }

    /// `[A-Za-z_][A-Za-z0-9_.-]{0,63}` (a Prometheus label value, a JSON string).
    static func isValidName(_ s: String) -> Bool { CustomMetrics.isIdentifier(s, alsoAllowed: [UInt8(ascii: "-")]) }

    /// The run's value of the rule's field, if it has one.
    public func value(in r: ExecutionResult) -> Double? {
        if field.hasPrefix("custom.") { return r.customMetrics[String(field.dropFirst(7))]?.last }
        switch ExecutionResult.fieldsByName[field]?.value(of: r) {
        case .double(let d)?: return d
        case .int(let i)?: return i.map(Double.init)
        default: return nil
        }
    }

    public func matches(_ r: ExecutionResult) -> Bool {
        guard let v = value(in: r) else { return false }
        return op.holds(v, threshold)
    }

    /// Rules given one by one (`--alert`), names unique.
    public static func parseAll(_ texts: [String]) throws(AlertRuleError) -> [AlertRule] {
        var rules: [AlertRule] = []
        for text in texts { try rules.appendUnique(AlertRule(parsing: text)) }
        return rules
    }

    /// Rules from a file: one per line, blank lines and `#` comments skipped. Names
    /// must be unique across `existing` and the file.
    public static func parseFile(_ text: String, existing: [AlertRule] = []) throws(AlertRuleError) -> [AlertRule] {
        var rules = existing
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            do throws(AlertRuleError) {
                try rules.appendUnique(AlertRule(parsing: line))
            } catch {
                throw AlertRuleError("line \(n + 1): \(error.message)")
            }
        }
        return rules
    }
}

public struct AlertRuleError: Error, Sendable, CustomStringConvertible {
    public let message: String
    public init(_ m: String) { message = m }
    public var description: String { message }
}

extension Array where Element == AlertRule {
    /// Adds `rule`, refusing a second rule of the same name.
    public mutating func appendUnique(_ rule: AlertRule) throws(AlertRuleError) {
        guard !contains(where: { $0.name == rule.name }) else {
            throw AlertRuleError("alert rule '\(rule.name)' is defined twice")
        }
        append(rule)
    }

    /// Names of the rules `r` matches, in the rules' order.
    public func matches(_ r: ExecutionResult) -> [String] { filter { $0.matches(r) }.map(\.name) }
}
