import Foundation

/// Checks a JSON value against a schema of the OpenAPI document (the subset the
/// document uses: $ref, allOf, type (or a list of types), required, properties, items,
/// enum, additionalProperties: false). Returns the violations, empty when it conforms.
struct OpenAPICheck: @unchecked Sendable {  // immutable after init
    let document: [String: Any]

    init(json: String) throws {
        document = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any] ?? [:]
    }

    func schema(named name: String) -> [String: Any] {
        ((document["components"] as? [String: Any])?["schemas"] as? [String: Any])?[name] as? [String: Any] ?? [:]
    }

    /// The response schema of `path`/`method` for `status` (falls back to nothing).
    func responseSchema(path: String, method: String, status: Int) -> [String: Any]? {
        let op = ((document["paths"] as? [String: Any])?[path] as? [String: Any])?[method] as? [String: Any]
        let resp = (op?["responses"] as? [String: Any])?[String(status)] as? [String: Any]
        return ((resp?["content"] as? [String: Any])?["application/json"] as? [String: Any])?["schema"] as? [String: Any]
    }

    func validate(_ value: Any, path: String, method: String, status: Int) -> [String] {
        guard let s = responseSchema(path: path, method: method, status: status) else {
            return ["\(method.uppercased()) \(path) has no documented \(status) JSON response"]
        }
        return validate(value, against: s, at: "$")
    }

    /// `raw` with its $ref followed and its allOf parts merged (their properties and
    /// required fields together, as one object schema).
    func resolved(_ raw: [String: Any]) -> [String: Any] {
        var s = raw
        if let ref = s["$ref"] as? String, let name = ref.split(separator: "/").last {
            s = schema(named: String(name))
        }
        guard let parts = s["allOf"] as? [[String: Any]] else { return s }
        var merged: [String: Any] = [:]
        var props: [String: Any] = [:]
        var required: [String] = []
        for part in parts.map(resolved) {
            if let t = part["type"] { merged["type"] = t }
            props.merge(part["properties"] as? [String: Any] ?? [:]) { a, _ in a }
            required += part["required"] as? [String] ?? []
        }
        merged["properties"] = props
        merged["required"] = required
        return merged
    }

    func validate(_ value: Any, against raw: [String: Any], at loc: String) -> [String] {
        let s = resolved(raw)
        var errors: [String] = []
        if let t = s["type"] {
            let types = (t as? [String]) ?? [t as? String ?? ""]
            if !types.contains(where: { Self.matches(value, $0) }) {
                return ["\(loc): \(Self.describe(value)) is not \(types.joined(separator: "|"))"]
            }
        }
        if let allowed = s["enum"] as? [String], let v = value as? String, !allowed.contains(v) {
            errors.append("\(loc): '\(v)' not in \(allowed)")
        }
        if let obj = value as? [String: Any] {
            for r in s["required"] as? [String] ?? [] where obj[r] == nil { errors.append("\(loc): missing '\(r)'") }
            let props = s["properties"] as? [String: Any] ?? [:]
            for (k, v) in obj {
                if let p = props[k] as? [String: Any] {
                    errors += validate(v, against: p, at: "\(loc).\(k)")
                } else if let extra = s["additionalProperties"] as? [String: Any] {
                    errors += validate(v, against: extra, at: "\(loc).\(k)")
                } else if (s["additionalProperties"] as? Bool) == false || !props.isEmpty {
                    errors.append("\(loc): undocumented field '\(k)'")
                }
            }
        }
        if let arr = value as? [Any], let items = s["items"] as? [String: Any] {
            for (i, v) in arr.enumerated() { errors += validate(v, against: items, at: "\(loc)[\(i)]") }
        }
        return errors
    }

    static func matches(_ v: Any, _ type: String) -> Bool {
        switch type {
        case "null": return v is NSNull
        case "object": return v is [String: Any]
        case "array": return v is [Any]
        case "string": return v is String
        case "boolean": return isBool(v)
        case "integer":
            guard !isBool(v), let n = v as? NSNumber else { return false }
            return n.doubleValue == n.doubleValue.rounded()
        case "number": return !isBool(v) && v is NSNumber
        default: return true
        }
    }

    /// JSONSerialization gives NSNumber for booleans too; tell them apart by their type.
    static func isBool(_ v: Any) -> Bool {
        if v is Bool && !(v is Int) { return true }
        guard let n = v as? NSNumber else { return false }
        return String(cString: n.objCType) == "c" || type(of: n) == type(of: NSNumber(value: true))
    }

    static func describe(_ v: Any) -> String {
        if v is NSNull { return "null" }
        return "\(type(of: v))(\(v))"
    }
}
