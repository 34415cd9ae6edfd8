import ArgumentParser
import Dispatch
import Foundation
import Hummingbird
import Logging
import Sandbox
import Service
import ServiceLifecycle

/// `sandpit serve`: the HTTP execution API.
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Serve the HTTP execution API (POST /execute, GET /executions, ...).")

    @Option(help: "Address to listen on (a non-loopback address needs a token).") var host = "127.0.0.1"
    @Option(help: "Port to listen on.") var port = 8787
    @Option(help: "The execution log: a SQLite file, or postgres://USER@HOST:PORT/DB (password from PGPASSWORD or PGPASSFILE; ?sslmode=disable|prefer|require).") var db = SandboxSettings().stateDirectory + "/executions.db"
    @Option(help: "Runs at once (default: the number of CPUs).") var maxConcurrency: Int?
    @Option(help: "Requests that may wait for a slot; beyond that 429.") var queueSize = 16
    @Option(help: "Largest request body in bytes; beyond that 413.") var maxBody = 1 << 20
    @Option(help: "File holding the bearer token (SANDPIT_TOKEN takes precedence).") var tokenFile: String?
    @Option(help: "Seconds in-flight runs may continue after SIGTERM before they are stopped.") var grace: Double = 10
    @Option(help: "Seconds a request's head and body may take from its first byte; then 408 and close.") var readTimeout: Double = 10
    @Option(help: "Seconds a kept-alive connection may stay idle before it is closed.") var idleTimeout: Double = 60
    @Option(help: "Open connections at most; more are closed at once.") var maxConnections = 4096
    @Option(help: "Days finished runs are kept in the log (0: forever).") var retainDays: Double = 30
    @Option(help: "Rows the log keeps at most, newest first (0: no cap).") var retainRows = 1_000_000
    @Option(help: "Bytes of stdout and of stderr stored per row (responses are not cut).") var logOutputLimit = 256 << 10
    @Option(name: .customLong("alert"), help: "An alert rule 'NAME: FIELD OP NUMBER', e.g. 'big: memory_percent > 90' (repeatable).")
    var alerts: [String] = []
    @Option(help: "A file of alert rules, one 'NAME: FIELD OP NUMBER' per line (# comments).") var alertFile: String?
    @Option(help: "Also listen on this unix socket (mode 0660; 'none': not at all); default: sandpit.sock in the state directory.")
    var socket: String?
    @Option(name: .customLong("warm"), help: "Keep a warm template that has imported these modules, e.g. 'numpy' or 'numpy,pandas' (repeatable); requests choose one with \"warm\".")
    var warm: [String] = []
    @Option(name: .customLong("max-sessions"), help: "Sessions kept at once; POST /sessions beyond it answers 429.")
    var maxSessions = 16
    @Option(name: .customLong("session-freeze-after"), help: "Seconds a session may idle before the cgroup freezer stops it (a request's freeze_after wins).")
    var sessionFreezeAfter: Double = 30
    @Option(name: .customLong("session-idle-timeout"), help: "Seconds a session may idle before it is ended (a request's idle_timeout wins).")
    var sessionIdleTimeout: Double = 1800
    @Option(name: .customLong("node-name"), help: "This instance's name in the log (its rows' host, its row in GET /nodes); default: the host name.")
    var nodeName: String?
    @Option(name: .customLong("advertise-url"), help: "Where the other nodes reach this one (http://HOST:PORT); they relay its runs' live events and cancels through it. Default: from --host and --port.")
    var advertiseURL: String?
    @Option(name: .customLong("network-allow-max"), parsing: .upToNextOption,
            help: "IPv4 networks runs' network policies may allow at all (CIDR...); a request asking for more is a 400. Default: none (no run gets network).")
    var networkAllowMax: [String] = []
    @Option(help: "Addresses of runs with network: a private IPv4 range, one /30 per run.") var networkRange: String = "10.213.0.0/16"
    @Option(name: .customLong("network-host"), help: "A name runs may allow and their resolver answers, NAME=ADDRESS[,ADDRESS] (repeatable), looked up before the host's resolver.")
    var networkHosts: [String] = []
    @Flag(name: .customLong("network-names-only"), help: "Allow only --network-host names in policies; never ask the host's resolver.")
    var networkNamesOnly = false

    func networkSettings() throws -> NetworkSettings {
        var n = NetworkSettings()
        do throws(NetworkPolicyError) {
            guard let range = IPv4Net(networkRange) else { throw NetworkPolicyError("--network-range: '\(networkRange)' is not an IPv4 network") }
            try NetworkSettings.checkRange(range)
            n.range = range
            if !networkAllowMax.isEmpty {
                n.allowMax = try networkAllowMax.map { s throws(NetworkPolicyError) in
                    guard let net = IPv4Net(s) else { throw NetworkPolicyError("--network-allow-max: '\(s)' is not an IPv4 network (a.b.c.d/n)") }
                    return net
                }
            }
            for h in networkHosts { try n.addHost(h) }
            n.hostResolver = !networkNamesOnly
        } catch {
            throw ValidationError(error.message)
        }
        return n
    }

    func warmSpecs() throws -> [WarmSpec] {
        do {
            return try warm.map { try WarmSpec(parsing: $0) }
        } catch let e as SandboxError {
            throw ValidationError("--warm: \(e.what)")
        }
    }

    func alertRules() throws -> [AlertRule] {
        var rules: [AlertRule] = []
        do {
            rules = try AlertRule.parseAll(alerts)
            if let f = alertFile {
                guard let text = try? String(contentsOfFile: f, encoding: .utf8) else { throw ValidationError("cannot read \(f)") }
                do { rules = try AlertRule.parseFile(text, existing: rules) } catch { throw AlertRuleError("\(f): \(error.message)") }
            }
        } catch let e as AlertRuleError {
            throw ValidationError(e.message)
        }
        return rules
    }

    func validate() throws {
        if readTimeout <= 0 || idleTimeout <= 0 { throw ValidationError("timeouts must be positive") }
        if maxConnections < 1 { throw ValidationError("--max-connections must be at least 1") }
        if retainDays < 0 || retainRows < 0 || logOutputLimit < 0 { throw ValidationError("retention values must not be negative") }
        _ = try alertRules()
        _ = try warmSpecs()
        _ = try networkSettings()
    }

    func run() async throws {
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var logger = Logger(label: "sandpit")
        logger.logLevel = ProcessInfo.processInfo.environment["SANDPIT_LOG"].flatMap { Logger.Level(rawValue: $0) } ?? .info
        var config = ServiceConfig(databasePath: db)
        config.host = host
        config.port = port
        if let m = maxConcurrency { config.maxConcurrency = m }
        config.queueSize = queueSize
        config.maxBodyBytes = maxBody
        config.graceSeconds = grace
        config.readTimeout = .milliseconds(Int64(readTimeout * 1000))
        config.idleTimeout = .milliseconds(Int64(idleTimeout * 1000))
        config.maxConnections = maxConnections
        config.retention = .init(days: retainDays > 0 ? retainDays : nil, rows: retainRows > 0 ? retainRows : nil)
        config.logOutputLimit = logOutputLimit
        config.alertRules = try alertRules()
        for r in config.alertRules { logger.info("alert rule \(r)") }
        config.warmTemplates = try warmSpecs()
        config.network = try networkSettings()
        if let max = config.network.allowMax {
            logger.info("network: runs may allow \(max.map(\.description).joined(separator: ", ")); their addresses from \(config.network.range)")
        }
        guard maxSessions >= 0 else { throw ValidationError("--max-sessions must be 0 or more") }
        guard sessionFreezeAfter > 0, sessionIdleTimeout > 0 else { throw ValidationError("session timeouts must be positive") }
        config.maxSessions = maxSessions
        config.sessionFreezeAfter = sessionFreezeAfter
        config.sessionIdleTimeout = sessionIdleTimeout
        if let n = nodeName, !ServiceConfig.isValidNodeName(n) { throw ValidationError("--node-name must be 1 to 64 of A-Z a-z 0-9 _ . -") }
        config.nodeName = nodeName
        if let u = advertiseURL, !ServiceConfig.isValidPeerURL(u) { throw ValidationError("--advertise-url must be http://HOST:PORT with no path") }
        config.advertiseURL = advertiseURL
        // Each connection is a descriptor: make room for the cap (up to the hard limit).
        var nofile = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &nofile) == 0 {
            let want = rlim_t(maxConnections + 1024)
            if nofile.rlim_cur < want {
                nofile.rlim_cur = min(want, nofile.rlim_max)
                _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &nofile)
            }
            if nofile.rlim_cur < rlim_t(maxConnections + 64) {
                logger.warning("the descriptor limit (\(nofile.rlim_cur)) is below --max-connections \(maxConnections)")
            }
        }
        if let t = ProcessInfo.processInfo.environment["SANDPIT_TOKEN"], !t.isEmpty {
            config.token = t
        } else if let f = tokenFile {
            guard let text = try? String(contentsOfFile: f, encoding: .utf8) else { throw ValidationError("cannot read \(f)") }
            config.token = text.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        do { try config.validate() } catch let e as APIError { throw ValidationError(e.detail) }

        if (config.token ?? "").isEmpty {
            logger.warning("no token: any local user can run code and read every logged run (set SANDPIT_TOKEN or --token-file)")
        }
        let svc = try await ServiceContext.open(config: config, logger: logger)
        let app = buildApplication(svc)
        let socketPath = socket == "none" ? nil : (socket ?? config.stateDirectory + "/sandpit.sock")
        var services: [any ServiceLifecycle.Service] = [app]
        if let path = socketPath {
            _ = mkdir(config.stateDirectory, 0o755)
            services.append(buildApplication(svc, unixSocket: path))
        }
        let group = ServiceGroup(configuration: .init(services: services, logger: logger))

        // SIGTERM / SIGINT: refuse new runs, stop accepting, let in-flight runs finish
        // within the grace period, then stop them (each is logged).
        let sources = [SIGTERM, SIGINT].map { sig -> DispatchSourceSignal in
            signal(sig, SIG_IGN)
            let src = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            let grace = config.graceSeconds
            src.setEventHandler { [group, svc, logger] in
                logger.info("signal \(sig): shutting down (grace \(grace) s)")
                SystemdNotify.send("STOPPING=1")
                Task { [group, svc, logger] in
                    await svc.admission.drain()
                    svc.live.closeWatchers()
                    await group.triggerGracefulShutdown()
                    let deadline = ContinuousClock.now + .seconds(grace)
                    while svc.sandbox.activeCount > 0 && ContinuousClock.now < deadline {
                        try? await Task.sleep(for: .milliseconds(50))
                    }
                    if svc.sandbox.activeCount > 0 {
                        logger.warning("stopping \(svc.sandbox.activeCount) run(s) at the end of the grace period")
                        svc.sandbox.stopAll(reason: "the service shut down")
                    }
                }
            }
            src.resume()
            return src
        }
        logger.info("sandpit serve on \(config.host):\(config.port)\(socketPath.map { " and unix:\($0)" } ?? ""), log \(config.databasePath), \(config.maxConcurrency) slots, queue \(config.queueSize)")
        let shownHost = config.host.contains(":") ? "[\(config.host)]" : config.host
        logger.info("dashboard: http://\(shownHost):\(config.port)/ui/\((config.token ?? "").isEmpty ? "" : " (sign in with the API token)")")
        try await group.run()
        await svc.close()
        await svc.sandbox.quiesce()
        svc.sandbox.shutdown()
        if let path = socketPath { unlink(path) }
        withExtendedLifetime(sources) {}
    }
}

/// `sandpit migrate`: brings an execution log to the current schema.
struct Migrate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Add the metric columns to an execution_logs table (idempotent; keeps every row).")

    @Option(help: "SQLite database to migrate.") var db = SandboxSettings().stateDirectory + "/executions.db"

    func run() throws {
        try sqliteOnly(db)
        let store = try ExecutionStore(path: db)
        print("migrating \(db)")
        let report = try Schema.migrate(store.pool) { print("  " + $0) }
        if report.nothingToDo {
            print("done: nothing to do (\(report.rows) rows)")
        } else {
            print("done: \(report.addedColumns.count) column(s) added\(report.createdTable ? ", table created" : ""), \(report.rows) row(s) kept")
        }
    }
}
