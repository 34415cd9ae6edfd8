import Foundation

/// An IPv4 network (address and prefix length), host byte order.
public struct IPv4Net: Hashable, Sendable, CustomStringConvertible {
    public var address: UInt32
    public var prefix: Int

    public init(address: UInt32, prefix: Int) {
        self.prefix = prefix
        self.address = address & Self.mask(prefix)
    }

    static func mask(_ prefix: Int) -> UInt32 { prefix == 0 ? 0 : ~UInt32(0) << UInt32(32 - prefix) }

    /// "a.b.c.d" (a /32) or "a.b.c.d/n"; nil for anything else.
    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let a = Self.parseAddress(String(parts[0])) else { return nil }
        var p = 32
        if parts.count == 2 {
            guard let n = Int(parts[1]), (0...32).contains(n), parts[1].allSatisfy(\.isNumber) else { return nil }
            p = n
        }
        self.init(address: a, prefix: p)
    }

    /// A dotted quad, strictly (four decimal numbers 0...255, no leading zeros).
    public static func parseAddress(_ s: String) -> UInt32? {
        let octets = s.split(separator: ".", omittingEmptySubsequences: false)
        guard octets.count == 4 else { return nil }
        var v: UInt32 = 0
        for o in octets {
            guard !o.isEmpty, o.count <= 3, o.allSatisfy({ $0.isASCII && $0.isNumber }), let n = UInt32(o), n <= 255,
                  o == "0" || !o.hasPrefix("0") else { return nil }
            v = v << 8 | n
        }
        return v
    }

    public static func format(_ a: UInt32) -> String { "\(a >> 24).\(a >> 16 & 255).\(a >> 8 & 255).\(a & 255)" }

    public var description: String { prefix == 32 ? Self.format(address) : "\(Self.format(address))/\(prefix)" }
    public var size: UInt64 { UInt64(1) << UInt64(32 - prefix) }

    public func contains(_ a: UInt32) -> Bool { a & Self.mask(prefix) == address }
    public func contains(_ n: IPv4Net) -> Bool { n.prefix >= prefix && contains(n.address) }
    public func overlaps(_ n: IPv4Net) -> Bool { contains(n.address) || n.contains(address) }
}

/// A rule's protocol: both TCP and UDP (no protocol given), or one.
public enum NetworkProtocol: String, Sendable, Codable {
    case any, tcp, udp
}

/// One entry of an allow-list: `[tcp://|udp://]HOST[/PREFIX][:PORT[-PORT]]`, where HOST
/// is an IPv4 address or a name resolved when the run starts.
public struct NetworkRule: Sendable, Equatable {
    /// The entry as written.
    public var text: String
    /// The address or network, for an entry that names one.
    public var net: IPv4Net?
    /// The name, for an entry that names a host.
    public var name: String?
    public var ports: ClosedRange<UInt16>?
    public var proto: NetworkProtocol
    /// The name's addresses once resolved (`net` entries: empty).
    public var addresses: [UInt32] = []

    /// Every network this entry allows (its own, or one /32 per resolved address).
    public var nets: [IPv4Net] {
        if let net { return [net] }
        return addresses.map { IPv4Net(address: $0, prefix: 32) }
    }

    public static func parse(_ raw: String) throws(NetworkPolicyError) -> NetworkRule {
        let text = raw.trimmingCharacters(in: .whitespaces)
        func bad(_ why: String) -> NetworkPolicyError {
            NetworkPolicyError("network allow entry '\(text.prefix(100))': \(why)")
        }
        guard !text.isEmpty, text.count <= 300 else { throw bad("must be 1 to 300 characters") }
        var rest = Substring(text)
        var proto = NetworkProtocol.any
        if let r = rest.range(of: "://") {
            guard let p = NetworkProtocol(rawValue: rest[..<r.lowerBound].lowercased()), p != .any else {
                throw bad("the protocol must be tcp:// or udp://")
            }
            proto = p
            rest = rest[r.upperBound...]
        }
        if rest.hasPrefix("[") || rest.filter({ $0 == ":" }).count > 1 {
            throw bad("IPv6 destinations are not supported (a run's network is IPv4 only)")
        }
        var ports: ClosedRange<UInt16>?
        if let colon = rest.lastIndex(of: ":") {
            let spec = rest[rest.index(after: colon)...]
            rest = rest[..<colon]
            let ends = spec.split(separator: "-", omittingEmptySubsequences: false)
            guard (1...2).contains(ends.count), ends.allSatisfy({ !$0.isEmpty && $0.count <= 5 && $0.allSatisfy(\.isNumber) }),
                  let lo = UInt16(ends[0]), let hi = UInt16(ends.last!), lo >= 1, lo <= hi else {
                throw bad("the port must be a number 1-65535 or a range LOW-HIGH")
            }
            ports = lo...hi
        }
        let host = String(rest)
        guard !host.isEmpty else { throw bad("no address or host name") }
        if host.first!.isNumber && host.allSatisfy({ $0.isNumber || $0 == "." || $0 == "/" }) {
            guard let net = IPv4Net(host) else { throw bad("not an IPv4 address or network (a.b.c.d or a.b.c.d/n)") }
            return NetworkRule(text: text, net: net, name: nil, ports: ports, proto: proto)
        }
        guard host.count <= 253, !host.hasPrefix("."), !host.hasPrefix("-"), !host.contains(".."),
              host.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == ".") }) else {
            throw bad("not an IPv4 address, network or host name")
        }
        var name = host.lowercased()
        if name.hasSuffix(".") { name.removeLast() }
        return NetworkRule(text: text, net: nil, name: name, ports: ports, proto: proto)
    }
}

public struct NetworkPolicyError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public init(_ m: String) { message = m }
    public var description: String { message }
}

/// A run's network: what it may reach and how fast it may send. `nil` on a request
/// (the default, `none`): loopback only, as before.
public struct NetworkPolicy: Sendable, Equatable {
    public var allow: [NetworkRule]
    /// Egress limit in bytes per second (`network_rate`); nil: none.
    public var rate: UInt64?

    public init(allow: [NetworkRule], rate: UInt64? = nil) {
        self.allow = allow
        self.rate = rate
    }

    /// The most entries one policy may have.
    public static let maxEntries = 64

    /// Parses the entries; `rate` in bytes/s.
    public static func parse(_ entries: [String], rate: UInt64?) throws(NetworkPolicyError) -> NetworkPolicy {
        guard entries.count <= maxEntries else {
            throw NetworkPolicyError("network: at most \(maxEntries) allow entries")
        }
        if let rate, rate < 1024 || rate > 10 << 30 {
            throw NetworkPolicyError("network_rate must be between 1024 and \(10 << 30) bytes/s")
        }
        var rules: [NetworkRule] = []
        for e in entries { rules.append(try NetworkRule.parse(e)) }
        return NetworkPolicy(allow: rules, rate: rate)
    }

    /// The policy as JSON (logged with the run).
    public var json: JSONValue {
        var o: [String: JSONValue] = ["allow": .array(allow.map { .string($0.text) })]
        o["rate"] = rate.map { .number(Double($0)) } ?? .null
        return .object(o)
    }

    /// Checks every entry against the operator's limits and resolves its names, in
    /// this order: the operator's own names (`hosts`), then the host's resolver
    /// (getaddrinfo; blocks, call it off the cooperative pool). Throws the first
    /// entry that asks for more than `settings` allow.
    public func resolved(with settings: NetworkSettings) throws(NetworkPolicyError) -> NetworkPolicy {
        guard let max = settings.allowMax else {
            throw NetworkPolicyError("this server gives runs no network (start it with --network-allow-max CIDR...)")
        }
        var out = self
        for i in out.allow.indices {
            var r = out.allow[i]
            if let name = r.name {
                r.addresses = settings.hosts[name] ?? (settings.hostResolver ? Self.lookup(name) : [])
                guard !r.addresses.isEmpty else {
                    let how = settings.hostResolver ? "does not resolve to an IPv4 address" : "is not one of this server's names (--network-host)"
                    throw NetworkPolicyError("network allow entry '\(r.text)': the name \(name) \(how)")
                }
            }
            for n in r.nets {
                if n.overlaps(settings.range) {
                    throw NetworkPolicyError("network allow entry '\(r.text)': \(n) is inside the runs' own range \(settings.range)")
                }
                guard max.contains(where: { $0.contains(n) }) else {
                    let limit = max.isEmpty ? "nothing" : max.map(\.description).joined(separator: ", ")
                    throw NetworkPolicyError("network allow entry '\(r.text)': \(n) is outside what this server allows (\(limit))")
                }
            }
            out.allow[i] = r
        }
        return out
    }

    /// IPv4 addresses of `name` from the host's resolver, sorted, at most 16.
    static func lookup(_ name: String) -> [UInt32] {
        var hints = addrinfo()
        hints.ai_family = AF_INET
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var res: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(name, nil, &hints, &res) == 0 else { return [] }
        defer { freeaddrinfo(res) }
        var out = Set<UInt32>()
        var p = res
        while let a = p {
            if a.pointee.ai_family == AF_INET, let sa = a.pointee.ai_addr {
                sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { out.insert(UInt32(bigEndian: $0.pointee.sin_addr.s_addr)) }
            }
            p = a.pointee.ai_next
        }
        return Array(out.sorted().prefix(16))
    }

    /// The names the run's resolver answers, with their addresses.
    public var names: [String: [UInt32]] {
        var m: [String: [UInt32]] = [:]
        for r in allow { if let n = r.name { m[n, default: []] += r.addresses } }
        return m
    }
}

/// What the operator lets runs have (`serve --network-*`; the CLI's flags).
public struct NetworkSettings: Sendable {
    /// Where runs' addresses come from: one /30 per run (the host's end, the run's).
    public var range = IPv4Net("10.213.0.0/16")!
    /// The networks a policy may allow at all; nil: no network for anyone.
    public var allowMax: [IPv4Net]?
    /// Names the operator defines (`--network-host NAME=ADDRESS`), looked up before the
    /// host's resolver.
    public var hosts: [String: [UInt32]] = [:]
    /// Whether names not in `hosts` are asked of the host's resolver (`--network-names-only`
    /// turns it off: then only the operator's names can be allowed, and checking a
    /// request never sends a DNS query).
    public var hostResolver = true

    public init() {}

    /// `NAME=ADDRESS[,ADDRESS...]`.
    public mutating func addHost(_ spec: String) throws(NetworkPolicyError) {
        let parts = spec.split(separator: "=", maxSplits: 1)
        guard parts.count == 2 else { throw NetworkPolicyError("--network-host wants NAME=ADDRESS, got '\(spec)'") }
        var addrs: [UInt32] = []
        for a in parts[1].split(separator: ",") {
            guard let v = IPv4Net.parseAddress(String(a)) else { throw NetworkPolicyError("--network-host: '\(a)' is not an IPv4 address") }
            addrs.append(v)
        }
        let rule = try NetworkRule.parse(String(parts[0]))
        guard let name = rule.name, rule.ports == nil, rule.proto == .any else {
            throw NetworkPolicyError("--network-host: '\(parts[0])' is not a host name")
        }
        hosts[name, default: []] += addrs
    }

    /// Checks the range: private, between /8 and /24 (a /30 per run).
    public static func checkRange(_ n: IPv4Net) throws(NetworkPolicyError) {
        let privateNets = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"].map { IPv4Net($0)! }
        guard privateNets.contains(where: { $0.contains(n) }), (8...24).contains(n.prefix) else {
            throw NetworkPolicyError("--network-range must be a private IPv4 network between /8 and /24, got \(n)")
        }
    }
}
