import Foundation
import Sandbox

/// Everything `sandpit serve` is configured with.
public struct ServiceConfig: Sendable {
    public var host = "127.0.0.1"
    public var port = 8787
    public var databasePath: String
    public var maxConcurrency = max(1, ProcessInfo.processInfo.activeProcessorCount)
    public var queueSize = 16
    public var maxBodyBytes = 1 << 20
    public var token: String?
    public var ranges = LimitRanges()
    /// After SIGTERM: how long in-flight runs may go on before they are killed.
    public var graceSeconds: Double = 10
    /// The sandbox's state directory (scratch templates, run roots).
    public var stateDirectory = SandboxSettings().stateDirectory
    /// How long the log keeps rows (see `Retention`).
    public var retention = Retention()
    /// Bytes of stdout and of stderr stored per row (responses are not cut).
    public var logOutputLimit = 256 << 10
    /// How often retention, pending row completions and the WAL checkpoint run.
    public var maintenanceInterval: Duration = .seconds(60)
    /// A request's head and body must arrive within this time of its first byte.
    public var readTimeout: Duration = .seconds(10)
    /// A kept-alive connection with no request in progress is closed after this.
    public var idleTimeout: Duration = .seconds(60)
    /// Open connections at most; one more is closed as soon as it is accepted.
    public var maxConnections = 4096
    /// A comment line on an event stream after this long without an event.
    public var keepAlive: Duration = .seconds(15)
    /// Rules each run is checked against (`alerts` in its result and row,
    /// `sandpit_alerts_total{rule}` on /metrics).
    public var alertRules: [AlertRule] = []
    /// Warm templates kept (`serve --warm MODULES`).
    public var warmTemplates: [WarmSpec] = []
    /// Sessions kept at once (`--max-sessions`); beyond it POST /sessions answers 429.
    public var maxSessions = 16
    /// A session's defaults, in seconds: frozen after this long idle, ended after
    /// `sessionIdleTimeout` idle (a request may set both, and a `ttl`).
    public var sessionFreezeAfter: Double = 30
    public var sessionIdleTimeout: Double = 1800
    /// How often idle sessions are looked at.
    public var sessionSweepInterval: Duration = .seconds(1)
    /// This instance's name in the log (`host` of its rows, its row of `nodes`):
    /// `--node-name`, by default the host name.
    public var nodeName: String?
    /// How often this node writes its heartbeat row; a node not heard from for three
    /// of them is not live in GET /nodes.
    public var heartbeatInterval: Duration = .seconds(5)
    /// Where the other nodes reach this one (`--advertise-url`, in its row of `nodes`):
    /// they proxy the live events and the cancel of a run that runs here. Default:
    /// `http://HOST:PORT` of the TCP listener (the host name for a wildcard address).
    public var advertiseURL: String?
    /// What runs' network policies may allow (`--network-allow-max`; none by default),
    /// their addresses (`--network-range`) and the operator's names (`--network-host`).
    public var network = NetworkSettings()

    public init(databasePath: String) {
        self.databasePath = databasePath
    }

    /// Refuses to listen beyond loopback without a token.
    public func validate() throws {
        let loopback = host == "127.0.0.1" || host == "::1" || host == "localhost" || host.hasPrefix("127.")
        if !loopback && (token ?? "").isEmpty {
            throw APIError(.internalServerError, "config",
                           "refusing to listen on \(host) without a token (set SANDPIT_TOKEN or --token-file)")
        }
        if let u = advertiseURL, !Self.isValidPeerURL(u) {
            throw APIError(.internalServerError, "config", "--advertise-url must be http://HOST:PORT (or http://HOST) with no path, not \(u)")
        }
        if let n = nodeName, !Self.isValidNodeName(n) {
            throw APIError(.internalServerError, "config", "--node-name must be 1 to 64 of A-Z a-z 0-9 _ . -")
        }
    }

    public static func isValidNodeName(_ n: String) -> Bool {
        !n.isEmpty && n.utf8.count <= 64 && n.utf8.allSatisfy { $0 < 128 && (Character(UnicodeScalar($0)).isLetter || Character(UnicodeScalar($0)).isNumber || "_.-".utf8.contains($0)) }
    }

    public static func isValidPeerURL(_ u: String) -> Bool {
        guard let url = URL(string: u), url.scheme == "http", let h = url.host, !h.isEmpty else { return false }
        return url.path.isEmpty || url.path == "/"
    }

    /// The address this node gives its peers (`advertiseURL` or one made from the
    /// listener), without a trailing slash.
    public var peerURL: String {
        if let u = advertiseURL { return u.hasSuffix("/") ? String(u.dropLast()) : u }
        let h: String
        switch host {
        case "0.0.0.0", "::", "": h = ExecutionStore.hostName()
        case let v6 where v6.contains(":"): h = "[\(v6)]"
        default: h = host
        }
        return "http://\(h):\(port)"
    }

    /// The name this node's rows carry.
    public var node: String { nodeName ?? ExecutionStore.hostName() }
}

