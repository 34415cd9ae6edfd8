import Foundation
import Logging
import Sandbox
import Synchronization

/// The service's parts, shared by the routes.
public final class ServiceContext: Sendable {
    public let config: ServiceConfig
    public let sandbox: Sandbox
    /// The execution log; routes use only the protocol.
    public let log: any ExecutionLog
    public let admission: Admission
    public let metrics: ServiceMetrics
    public let logger: Logger
    public let connections: ConnectionLimiter
    /// Runs in progress, for watching and cancelling.
    public let live = LiveRuns()
    /// Live sessions.
    let sessions: SessionRegistry
    let maintenance = Mutex<Task<Void, Never>?>(nil)
    let reaper = Mutex<Task<Void, Never>?>(nil)
    let heart = Mutex<Task<Void, Never>?>(nil)
    /// When this node started (its row of `nodes`).
    let startedAt = Date()

    public init(config: ServiceConfig, sandbox: Sandbox, log: any ExecutionLog, logger: Logger) {
        self.config = config
        self.sandbox = sandbox
        self.log = log
        admission = Admission(maxConcurrency: config.maxConcurrency, queueSize: config.queueSize)
        metrics = ServiceMetrics(alertRules: config.alertRules.map(\.name))
        connections = ConnectionLimiter(max: config.maxConnections)
        sessions = SessionRegistry(max: config.maxSessions)
        self.logger = logger
    }

    /// Freezes idle sessions and ends expired ones every `sessionSweepInterval`.
    func startSessionReaper() {
        let task = Task { [self] in
            while !Task.isCancelled {
                await reapSessions()
                try? await Task.sleep(for: config.sessionSweepInterval)
            }
        }
        reaper.withLock { $0 = task }
    }

    /// This node's row as of now.
    func nodeRow() async -> NodeRow {
        NodeRow(name: config.node, startedAt: startedAt, heartbeatAt: Date(), maxConcurrency: config.maxConcurrency,
                queueSize: config.queueSize, inFlight: await admission.inFlight, queued: await admission.queued,
                sessions: sessions.count, url: config.peerURL)
    }

    /// Writes this node's heartbeat row now and every `heartbeatInterval` (a failed
    /// write is logged and retried at the next beat).
    func startHeartbeat() {
        let task = Task { [self] in
            while !Task.isCancelled {
                do {
                    try await log.heartbeat(await nodeRow())
                    let n = try await log.completePending()
                    if n > 0 { logger.info("completed \(n) row(s) whose result could not be written while the log was away") }
                } catch { logger.error("node heartbeat not written: \(error)") }
                try? await Task.sleep(for: config.heartbeatInterval)
            }
        }
        heart.withLock { $0 = task }
    }

    /// Live sessions (`GET /health`, tests).
    public var sessionCount: Int { sessions.count }

    /// Runs the log's upkeep now and then every `maintenanceInterval` until `close()`.
    func startMaintenance() {
        let task = Task { [self] in
            while !Task.isCancelled {
                do {
                    let r = try await log.maintain(config.retention)
                    if r.deleted > 0 || r.completed > 0 {
                        logger.info("log upkeep: \(r.deleted) row(s) past retention deleted, \(r.completed) pending row(s) completed")
                    }
                } catch {
                    logger.error("log upkeep failed (retried in \(config.maintenanceInterval)): \(error)")
                }
                try? await Task.sleep(for: config.maintenanceInterval)
            }
        }
        maintenance.withLock { $0 = task }
    }

    /// Stops the upkeep task (the service is shutting down).
    public func close() async {
        live.closeWatchers()
        let tasks: [Task<Void, Never>?] = [maintenance.withLock { t in defer { t = nil }; return t },
                     reaper.withLock { t in defer { t = nil }; return t },
                     heart.withLock { t in defer { t = nil }; return t }]
        for task in tasks {
            task?.cancel()
            await task?.value
        }
        // Sessions end with the service: their rows say so.
        for e in sessions.closeAll() { await endSession(e, reason: "service_stopped") }
        do { try await log.nodeStopped(name: config.node, at: Date()) } catch { logger.error("node row not marked stopped: \(error)") }
        (log as? PostgresStore)?.close()
    }

    /// Opens the database, applies the migrations, marks runs of a crashed previous
    /// instance as interrupted and sweeps their cgroups.
    public static func open(config: ServiceConfig, logger: Logger) async throws -> ServiceContext {
        try config.validate()
        let log: any ExecutionLog = config.databasePath.hasPrefix("postgres://") || config.databasePath.hasPrefix("postgresql://")
            ? try PostgresStore(url: config.databasePath, host: config.node, outputLimit: config.logOutputLimit, logger: logger)
            : try ExecutionStore(path: config.databasePath, host: config.node, outputLimit: config.logOutputLimit)
        try await log.prepare { logger.info("migrate: \($0)") }
        var settings = SandboxSettings(stateDirectory: config.stateDirectory)
        settings.spareCgroup = true  // `serve` and the tests call sandbox.shutdown() at the end
        settings.alertRules = config.alertRules
        settings.warmTemplates = config.warmTemplates
        settings.network = config.network
        let sandbox = Sandbox(settings: settings, logger: logger)
        let interrupted = try await log.markInterrupted()
        if interrupted > 0 { logger.warning("marked \(interrupted) run(s) of a previous instance as interrupted") }
        let ended = try await log.endOpenSessions(reason: "service_restarted")
        if ended > 0 { logger.warning("marked \(ended) session(s) of a previous instance as ended") }
        sandbox.sweepStale()
        sandbox.warmUp()  // the launcher and the first run's resources, on a thread of its own
        let svc = ServiceContext(config: config, sandbox: sandbox, log: log, logger: logger)
        svc.startMaintenance()
        svc.startSessionReaper()
        svc.startHeartbeat()
        return svc
    }
}

