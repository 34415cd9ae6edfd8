import CgroupKit
import Foundation
import GRDB
import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import Sandbox
import Synchronization

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
    /// How long the log keeps rows (see `ExecutionStore.Retention`).
    public var retention = ExecutionStore.Retention()
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
    }
}

/// The service's parts, shared by the routes.
public final class ServiceContext: Sendable {
    public let config: ServiceConfig
    public let sandbox: Sandbox
    public let store: ExecutionStore
    public let admission: Admission
    public let metrics: ServiceMetrics
    public let logger: Logger
    public let connections: ConnectionLimiter
    let maintenance = Mutex<Task<Void, Never>?>(nil)

    public init(config: ServiceConfig, sandbox: Sandbox, store: ExecutionStore, logger: Logger) {
        self.config = config
        self.sandbox = sandbox
        self.store = store
        admission = Admission(maxConcurrency: config.maxConcurrency, queueSize: config.queueSize)
        metrics = ServiceMetrics()
        connections = ConnectionLimiter(max: config.maxConnections)
        self.logger = logger
    }

    /// Runs the log's upkeep now and then every `maintenanceInterval` until `close()`.
    func startMaintenance() {
        let task = Task { [self] in
            while !Task.isCancelled {
                do {
                    let r = try await store.maintain(config.retention)
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
        let task = maintenance.withLock { t -> Task<Void, Never>? in
            defer { t = nil }
            return t
        }
        task?.cancel()
        await task?.value
    }

    /// Opens the database, applies the migrations, marks runs of a crashed previous
    /// instance as interrupted and sweeps their cgroups.
    public static func open(config: ServiceConfig, logger: Logger) async throws -> ServiceContext {
        try config.validate()
        let store = try ExecutionStore(path: config.databasePath, outputLimit: config.logOutputLimit)
        try Schema.migrate(store.pool) { logger.info("migrate: \($0)") }
        var settings = SandboxSettings(stateDirectory: config.stateDirectory)
        settings.spareCgroup = true  // `serve` and the tests call sandbox.shutdown() at the end
        let sandbox = Sandbox(settings: settings, logger: logger)
        let interrupted = try await store.markInterrupted()
        if interrupted > 0 { logger.warning("marked \(interrupted) run(s) of a previous instance as interrupted") }
        sandbox.sweepStale()
        sandbox.warmUp()  // the launcher and the first run's resources, on a thread of its own
        let svc = ServiceContext(config: config, sandbox: sandbox, store: store, logger: logger)
        svc.startMaintenance()
        return svc
    }
}

/// Requires `Authorization: Bearer <token>` on every route but /health.
struct TokenMiddleware<Context: RequestContext>: RouterMiddleware {
    let token: String

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        if request.uri.path == "/health" { return try await next(request, context) }
        let given = request.headers[.authorization] ?? ""
        let expected = "Bearer " + token
        // constant-time comparison
        var diff = UInt8(given.utf8.count == expected.utf8.count ? 0 : 1)
        for (a, b) in zip(given.utf8, expected.utf8) { diff |= a ^ b }
        guard diff == 0 else {
            var e = APIError(.unauthorized, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required")
            e.headers[.wwwAuthenticate] = "Bearer"
            throw e
        }
        return try await next(request, context)
    }
}

/// A method the document does not list on a path it does: 405 with `Allow`, as
/// RFC 9110 has it (the router alone answers 404).
struct MethodMiddleware<Context: RequestContext>: RouterMiddleware {
    static func allowed(_ path: String) -> String? {
        switch path {
        case "/execute": "POST"
        case "/executions", "/executions/stats", "/health", "/metrics", "/openapi.json": "GET, HEAD"
        default: path.hasPrefix("/executions/") && !path.dropFirst(12).contains("/") ? "GET, HEAD" : nil
        }
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let e as HTTPError where e.status == .notFound {
            guard let allow = Self.allowed(request.uri.path) else { throw e }
            var err = APIError(.methodNotAllowed, "method_not_allowed", "\(request.method) is not allowed on \(request.uri.path); allowed: \(allow)")
            err.headers[.allow] = allow
            throw err
        }
    }
}

/// The one place the HTTP application is assembled; tests build the same one.
public func buildRouter(_ svc: ServiceContext) -> Router<BasicRequestContext> {
    let router = Router(context: BasicRequestContext.self)
    router.add(middleware: MethodMiddleware())
    if let t = svc.config.token, !t.isEmpty { router.add(middleware: TokenMiddleware(token: t)) }

    router.post("execute") { request, _ -> Response in
        let body: ByteBuffer
        do {
            body = try await request.body.collect(upTo: svc.config.maxBodyBytes)
        } catch {
            if let e = error as? any HTTPResponseError, e.status == .contentTooLarge {
                throw APIError(.contentTooLarge, "body_too_large", "the body exceeds \(svc.config.maxBodyBytes) bytes")
            }
            throw APIError(.badRequest, "invalid_request", "the body could not be read: \(error)")
        }
        let req = try ExecuteRequestParser.parse(body, ranges: svc.config.ranges)
        return try await execute(req, svc)
    }

    router.get("executions") { request, _ -> Response in
        var q = ExecutionStore.ListQuery()
        let p = request.uri.queryParameters
        if let l = p["limit"] {
            guard let v = Int(l), (1...500).contains(v) else { throw APIError(.badRequest, "invalid_query", "'limit' must be 1 to 500") }
            q.limit = v
        }
        if let c = p["cursor"] {
            guard let v = Int64(c), v >= 0 else { throw APIError(.badRequest, "invalid_query", "'cursor' must be an execution id") }
            q.before = v
        }
        if let s = p["status"] { q.status = String(s) }
        if let n = p["container_name"] { q.containerName = String(n) }
        q.since = try date(p["since"], "since")
        q.until = try date(p["until"], "until")
        let rows = try await svc.store.list(q)
        var page: [String: Any] = ["executions": rows]
        page["next_cursor"] = rows.count == q.limit ? rows.last?["id"] ?? NSNull() : NSNull()
        return JSONBody.response(JSONBody.encode(page))
    }

    router.get("executions/stats") { request, _ -> Response in
        let p = request.uri.queryParameters
        let stats = try await svc.store.stats(since: try date(p["since"], "since"), until: try date(p["until"], "until"))
        return JSONBody.response(JSONBody.encode(stats))
    }

    router.get("executions/:id") { _, context -> Response in
        guard let id = context.parameters.get("id", as: Int64.self) else {
            throw APIError(.badRequest, "invalid_request", "the execution id must be an integer")
        }
        guard let row = try await svc.store.get(id: id) else {
            throw APIError(.notFound, "not_found", "no execution with id \(id)")
        }
        return JSONBody.response(JSONBody.encode(row))
    }

    router.get("health") { _, _ -> Response in
        let backend = try? Cgroups.shared()
        let body: [String: Any] = [
            "status": "ok",
            "cgroups": backend != nil,
            "cgroup_version": backend?.version.rawValue ?? NSNull(),
            "in_flight": await svc.admission.inFlight,
            "queued": await svc.admission.queued,
        ]
        return JSONBody.response(JSONBody.encode(body))
    }

    router.get("metrics") { _, _ -> Response in
        svc.metrics.inFlight.set(Double(await svc.admission.inFlight))
        svc.metrics.queueDepth.set(Double(await svc.admission.queued))
        return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                        body: .init(byteBuffer: ByteBuffer(string: svc.metrics.text())))
    }

    router.get("openapi.json") { _, _ -> Response in
        JSONBody.response(OpenAPIDocument.json)
    }
    return router
}

func date(_ s: Substring?, _ name: String) throws -> Date? {
    guard let s else { return nil }
    if let d = ExecutionResult.parseTimestamp(String(s)) { return d }
    let f = ISO8601DateFormatter()
    if let d = f.date(from: String(s)) { return d }
    throw APIError(.badRequest, "invalid_query", "'\(name)' must be an RFC 3339 timestamp")
}

/// Admission, a logged run, the response. The row is committed before the response.
func execute(_ req: ExecutionRequest, _ svc: ServiceContext) async throws -> Response {
    let queuedAt = Date()
    do {
        try await svc.admission.acquire()
    } catch {
        svc.metrics.rejections.increment()
        var e = error == .draining
            ? APIError(.serviceUnavailable, "shutting_down", "the service is shutting down")
            : APIError(.tooManyRequests, "overloaded", "all \(svc.config.maxConcurrency) slots and \(svc.config.queueSize) queue places are taken")
        e.headers[.retryAfter] = "1"
        throw e
    }
    let id = Sandbox.newID()
    let t0 = ContinuousClock.now
    let rowID: Int64
    do {
        rowID = try await svc.store.begin(code: req.code, name: req.name, containerID: id, queuedAt: queuedAt, startedAt: Date())
    } catch {
        await svc.admission.release()
        svc.logger.error("cannot log a run: \(error)")
        let reason = (error as? DatabaseError).map { $0.resultCode == .SQLITE_FULL ? ": the database or its disk is full" : ": \($0.message ?? "\($0.resultCode)")" } ?? ""
        var e = APIError(.serviceUnavailable, "storage_unavailable", "the execution log cannot be written\(reason); no run was started")
        e.headers[.retryAfter] = "5"
        throw e
    }
    let t1 = ContinuousClock.now
    let result = await svc.sandbox.run(req, id: id)
    let t2 = ContinuousClock.now
    do {
        try await svc.store.finish(id: rowID, result: result, finishedAt: Date())
    } catch {
        // The program ran: its result is the client's. The row is completed by the
        // log's upkeep once the database can be written again.
        svc.logger.error("run \(id) (row \(rowID)): result not logged yet (retried by the upkeep): \(error)")
    }
    if svc.logger.logLevel <= .debug {
        let t3 = ContinuousClock.now
        func ms(_ d: Duration) -> String { String(format: "%.2f", Double(d.components.attoseconds) / 1e15 + Double(d.components.seconds) * 1e3) }
        svc.logger.debug("run \(id) request (ms): log begin \(ms(t1 - t0)) run \(ms(t2 - t1)) log finish \(ms(t3 - t2))")
    }
    await svc.admission.release()
    svc.metrics.finished(result)
    var headers: HTTPFields = [.contentType: "application/json"]
    headers[HTTPField.Name("X-Execution-Id")!] = String(rowID)
    return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: result.jsonString())))
}

/// The application with its server configuration.
public func buildApplication(_ svc: ServiceContext) -> some ApplicationProtocol {
    var limits = HTTPLimits()
    limits.readTimeout = svc.config.readTimeout
    limits.idleTimeout = svc.config.idleTimeout
    limits.maxBodyBytes = svc.config.maxBodyBytes
    let connections = svc.connections
    let httpLimits = limits
    return Application(
        router: buildRouter(svc),
        server: HTTPServerBuilder { responder in
            GuardedHTTP1Channel(responder: responder, limits: httpLimits, connections: connections)
        },
        configuration: .init(address: .hostname(svc.config.host, port: svc.config.port), serverName: "sandpit"),
        logger: svc.logger)
}
