import CgroupKit
import Foundation
import GRDB
import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import Sandbox
import Synchronization

extension ServiceContext {
    /// A run slot (or a queue place until one frees): 429 when both are full, 503 while
    /// shutting down.
    func acquireSlot() async throws(APIError) {
        do {
            try await admission.acquire()
        } catch {
            metrics.rejections.increment()
            var e = error == .draining
                ? APIError(.serviceUnavailable, "shutting_down", "the service is shutting down")
                : APIError(.tooManyRequests, "overloaded", "all \(config.maxConcurrency) slots and \(config.queueSize) queue places are taken")
            e.headers[.retryAfter] = "1"
            throw e
        }
    }
}

/// POST /execute: admission, a logged run, the result (one JSON object, or a stream
/// of Server-Sent Events ending with it).
struct ExecuteController: Sendable {
    let svc: ServiceContext

    func addRoutes(to router: Router<BasicRequestContext>) {
        router.post("execute", use: execute)
    }

    @Sendable func execute(_ request: Request, context: BasicRequestContext) async throws -> Response {
        let body: ByteBuffer
        do {
            body = try await request.body.collect(upTo: svc.config.maxBodyBytes)
        } catch {
            if let e = error as? any HTTPResponseError, e.status == .contentTooLarge {
                throw APIError(.contentTooLarge, "body_too_large", "the body exceeds \(svc.config.maxBodyBytes) bytes")
            }
            throw APIError(.badRequest, "invalid_request", "the body could not be read: \(error)")
        }
        let parsed = try ExecuteBody.decode(body)
        var req = try parsed.request(ranges: svc.config.ranges)
        if let policy = req.network { req.network = try await Self.resolve(policy, svc.config.network) }
        let wantsStream = parsed.stream ?? (request.headers[.accept]?.contains("text/event-stream") ?? false)
        let run = try await admit(req, labels: parsed.labels, recordsSamples: wantsStream || parsed.samples == true)
        if wantsStream {
            return streamed(run, detach: parsed.detach ?? false)
        }
        return resultResponse(await finish(run), id: run.rowID)
    }

    /// Checks a policy against the operator's limits and resolves its names (the
    /// host's resolver blocks: on a thread of its own, not the cooperative pool).
    static func resolve(_ policy: NetworkPolicy, _ settings: NetworkSettings) async throws -> NetworkPolicy {
        let r: Result<NetworkPolicy, NetworkPolicyError> = await withCheckedContinuation { c in
            DispatchQueue.global().async { c.resume(returning: Result { () throws(NetworkPolicyError) in try policy.resolved(with: settings) }) }
        }
        switch r {
        case .success(let p): return p
        case .failure(let e): throw APIError(.badRequest, "invalid_network", e.message)
        }
    }

    /// Admission and the log's row: every refusal happens here, before any answer starts.
    func admit(_ req: ExecutionRequest, labels: [String: String], recordsSamples: Bool) async throws -> LiveRun {
        let queuedAt = Date()
        try await svc.acquireSlot()
        let id = Sandbox.newID()
        let startedAt = Date()
        do {
            let rowID = try await svc.log.begin(code: req.code, name: req.name, containerID: id, labels: labels,
                                                queuedAt: queuedAt, startedAt: startedAt)
            let run = LiveRun(rowID: rowID, containerID: id, request: req, startedAt: startedAt, recordsSamples: recordsSamples,
                              labels: labels)
            svc.live.add(run)
            return run
        } catch {
            await svc.admission.release()
            svc.logger.error("cannot log a run: \(error)")
            let reason = (error as? DatabaseError).map { $0.resultCode == .SQLITE_FULL ? ": the database or its disk is full" : ": \($0.message ?? "\($0.resultCode)")" } ?? ""
            var e = APIError(.serviceUnavailable, "storage_unavailable", "the execution log cannot be written\(reason); no run was started")
            e.headers[.retryAfter] = "5"
            throw e
        }
    }

    /// The run, its row completed, its slot released. The row is committed before the result is returned.
    func finish(_ run: LiveRun) async -> ExecutionResult {
        let t1 = ContinuousClock.now
        // The run's samples, kept (thinned past 2000) when they are to be stored.
        let recorder: Task<[LiveSample], Never>? = run.recordsSamples ? { [events = run.events.subscribe()] in
            Task {
                var rec = SampleRecorder()
                var last: LiveSample?
                for await e in events { if case .sample(let s) = e { rec.add(s); last = s } }
                return rec.finish(last: last)
            }
        }() : nil
        let result = await svc.sandbox.run(run.request, id: run.containerID, events: run.events)
        let samples = await recorder?.value ?? []
        let t2 = ContinuousClock.now
        do {
            try await svc.log.finish(id: run.rowID, result: result, finishedAt: Date(), samples: samples)
        } catch {
            // The program ran: its result is the client's. The row is completed by the
            // log's upkeep once the database can be written again.
            svc.logger.error("run \(run.containerID) (row \(run.rowID)): result not logged yet (retried by the upkeep): \(error)")
        }
        svc.live.remove(run.rowID, result: result)
        if svc.logger.logLevel <= .debug {
            let t3 = ContinuousClock.now
            func ms(_ d: Duration) -> String { String(format: "%.2f", Double(d.components.attoseconds) / 1e15 + Double(d.components.seconds) * 1e3) }
            svc.logger.debug("run \(run.containerID) request (ms): run \(ms(t2 - t1)) log finish \(ms(t3 - t2))")
        }
        await svc.admission.release()
        svc.metrics.finished(result)
        return result
    }

    /// The run as Server-Sent Events: started, stdout/stderr, sample, limit, result. The
    /// run goes on in a task of its own; a client that leaves cancels it unless `detach`.
    func streamed(_ run: LiveRun, detach: Bool) -> Response {
        let events = run.events.subscribe()  // before the run starts: nothing is missed
        let runner = Task { await finish(run) }
        let headers = eventStreamHeaders(id: run.rowID)
        let svc = self.svc
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in
            var sse = SSEWriter(run)
            do {
                try await sse.send(events, of: run, to: &writer, keepAlive: svc.config.keepAlive)
                try await writer.finish(nil)
            } catch {
                if !detach && svc.sandbox.cancel(id: run.containerID, reason: "the streaming client disconnected") {
                    svc.logger.info("run \(run.containerID) (row \(run.rowID)): client disconnected; cancelled")
                }
                _ = await runner.value
                throw error
            }
        })
    }
}

/// GET /executions/{id}/events and DELETE /executions/{id}: watching and cancelling.
struct LiveController: Sendable {
    let svc: ServiceContext

    func addRoutes(to router: Router<BasicRequestContext>) {
        router.get("executions/:id/events", use: watch)
        router.get("executions/:id/samples", use: samples)
        router.get("executions/:id/custom-metrics", use: customMetrics)
        router.delete("executions/:id", use: cancel)
    }

    /// 409 for a finished execution, 404 for an unknown one.
    func notLive(_ id: Int64) async throws -> APIError {
        if let record = try await svc.log.get(id: id) {
            if record.status == "running" {
                return APIError(.conflict, "not_here", "execution \(id) is running on node \(record.host ?? "?"), not on this one (\(svc.config.node))")
            }
            return APIError(.conflict, "finished", "execution \(id) has finished; its record is at GET /executions/\(id)")
        }
        return APIError(.notFound, "not_found", "no execution with id \(id)")
    }

    @Sendable func watch(_ request: Request, context: BasicRequestContext) async throws -> Response {
        let id = try rowID(context)
        guard let run = svc.live.get(id) else {
            if let owner = try await remoteOwner(id, request) { return try await Relay(svc: svc).forward(request, body: nil, to: owner, what: "execution \(id)") }
            return try await replay(id)
        }
        let events = run.events.subscribe()
        let headers = eventStreamHeaders(id: id)
        let keepAlive = svc.config.keepAlive
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in
            var sse = SSEWriter(run)
            try await sse.started(run, to: &writer)
            try await sse.send(events, of: run, to: &writer, keepAlive: keepAlive)
            try await writer.finish(nil)
        })
    }

    /// The node a run logged as running elsewhere runs on, when this request should be
    /// relayed there (see `Relay.owner`).
    func remoteOwner(_ id: Int64, _ request: Request) async throws -> NodeRow? {
        guard request.headers[forwardedBy] == nil, let record = try await svc.log.get(id: id), record.status == "running" else { return nil }
        return try await Relay(svc: svc).owner(record.host, request)
    }

    /// A finished run's events from the log: started, its stored samples, its result.
    func replay(_ id: Int64) async throws -> Response {
        guard let record = try await svc.log.get(id: id) else {
            throw APIError(.notFound, "not_found", "no execution with id \(id)")
        }
        guard record.status != "running" else {
            // Logged as running but not run here: another instance's, or one that is ending now.
            throw APIError(.conflict, "not_here", "execution \(id) is running on node \(record.host ?? "?"), not on this one (\(svc.config.node)); ask that node")
        }
        let samples = try await svc.log.series(id: id)
        let points = try await svc.log.customPoints(id: id, name: nil)
        let result = record.result()
        var sse = SSEWriter(rowID: id, name: result.containerName)
        var frames = sse.frames(.started(id: result.containerID, at: result.startedAt))
        // Samples and metric points in time order (each list is already in order).
        var (i, j) = (0, 0)
        while i < samples.count || j < points.count {
            if j >= points.count || (i < samples.count && samples[i].elapsed <= points[j].t) {
                frames += sse.frames(.sample(samples[i]))
                i += 1
            } else {
                frames += sse.frames(.metric(points[j]))
                j += 1
            }
        }
        frames += sse.frames(.result(result))
        let headers = eventStreamHeaders(id: id)
        var body = ByteBuffer()
        for var f in frames { body.writeBuffer(&f) }
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: body))
    }

    /// GET /executions/{id}/samples: the stored series.
    @Sendable func samples(_ request: Request, context: BasicRequestContext) async throws -> Response {
        let id = try rowID(context)
        guard try await svc.log.get(id: id) != nil else {
            throw APIError(.notFound, "not_found", "no execution with id \(id)")
        }
        let samples = try await svc.log.series(id: id)
        var w = JSONWriter()
        w.field("execution_id", id)
        w.field("samples", json: "[" + samples.map { $0.json() }.joined(separator: ",") + "]")
        return JSONBody.response(w.finish())
    }

    /// GET /executions/{id}/custom-metrics: the points the run reported on its metrics
    /// pipe, in order (`?name=` for one metric's).
    @Sendable func customMetrics(_ request: Request, context: BasicRequestContext) async throws -> Response {
        let id = try rowID(context)
        let name = request.uri.queryParameters["name"].map(String.init)
        if let name, !CustomMetrics.isValidName(name) {
            throw APIError(.badRequest, "invalid_query", "'name' must match [A-Za-z_][A-Za-z0-9_.]{0,63}")
        }
        guard try await svc.log.get(id: id) != nil else {
            throw APIError(.notFound, "not_found", "no execution with id \(id)")
        }
        let points = try await svc.log.customPoints(id: id, name: name)
        var w = JSONWriter()
        w.field("execution_id", id)
        w.field("points", json: "[" + points.map { $0.json() }.joined(separator: ",") + "]")
        return JSONBody.response(w.finish())
    }

    @Sendable func cancel(_ request: Request, context: BasicRequestContext) async throws -> Response {
        let id = try rowID(context)
        guard let run = svc.live.get(id) else {
            if let owner = try await remoteOwner(id, request) { return try await Relay(svc: svc).forward(request, body: nil, to: owner, what: "execution \(id)") }
            throw try await notLive(id)
        }
        let events = run.events.subscribe()
        guard svc.sandbox.cancel(id: run.containerID, reason: "cancelled by DELETE /executions/\(id)") else {
            throw try await notLive(id)
        }
        for await event in events {
            if case .result(let result) = event {
                return resultResponse(result, id: id)
            }
        }
        // The run ended between the lookup and the subscription: its record has the result.
        throw try await notLive(id)
    }
}

/// GET /executions, /executions/stats, /executions/{id}: the log, through `ExecutionLog`.
struct ExecutionsController: Sendable {
    let svc: ServiceContext

    func addRoutes(to router: Router<BasicRequestContext>) {
        router.get("executions", use: list)
        router.get("executions/stats", use: stats)
        router.get("executions/trends", use: trends)
        router.get("executions/regressions", use: regressions)
        router.get("executions/:id", use: get)
    }

    /// The list's filters: status, container_name, code_sha256, label.KEY, since, until.
    func filters(_ p: Parameters) throws -> LogQuery {
        var q = LogQuery()
        if let s = p["status"] { q.status = String(s) }
        if let n = p["container_name"] { q.containerName = String(n) }
        if let h = p["code_sha256"] {
            guard isSHA256Hex(h) else { throw APIError(.badRequest, "invalid_query", "'code_sha256' must be 64 lowercase hex digits") }
            q.codeSHA256 = String(h)
        }
        q.labels = try Labels.filters(p.map { (String($0.key), String($0.value)) })
        q.since = try date(p["since"], "since")
        q.until = try date(p["until"], "until")
        return q
    }

    @Sendable func list(_ request: Request, context: BasicRequestContext) async throws -> Response {
        let p = request.uri.queryParameters
        var q = try filters(p)
        if let l = p["limit"] {
            guard let v = Int(l), (1...500).contains(v) else { throw APIError(.badRequest, "invalid_query", "'limit' must be 1 to 500") }
            q.limit = v
        }
        if let c = p["cursor"] {
            guard let v = Int64(c), v >= 0 else { throw APIError(.badRequest, "invalid_query", "'cursor' must be an execution id") }
            q.before = v
        }
        let records = try await svc.log.list(q)
        var w = JSONWriter()
        w.field("executions", json: "[" + records.map { $0.json() }.joined(separator: ",") + "]")
        w.field("next_cursor", records.count == q.limit ? records.last?.id : nil)
        return JSONBody.response(w.finish())
    }

    @Sendable func stats(_ request: Request, context: BasicRequestContext) async throws -> Response {
        let p = request.uri.queryParameters
        let since = try date(p["since"], "since"), until = try date(p["until"], "until")
        let samples = try await svc.log.samples(since: since, until: until)
        return JSONBody.response(ExecutionStats.summarize(samples, since: since, until: until).json())
    }

    /// A numeric query parameter within `range`, or `fallback` when absent.
    func number(_ p: Parameters, _ name: String, _ range: ClosedRange<Double>, _ fallback: Double, integer: Bool = false) throws -> Double {
        guard let s = p[Substring(name)] else { return fallback }
        guard let v = Double(s), range.contains(v), !integer || v == v.rounded() else {
            throw APIError(.badRequest, "invalid_query",
                           "'\(name)' must be \(integer ? "an integer" : "a number") from \(range.lowerBound) to \(range.upperBound)")
        }
        return v
    }

    /// The metric a query names: a numeric stored field of the result.
    func metric(_ p: Parameters) throws -> TrendMetric {
        guard let m = p["metric"] else { throw APIError(.badRequest, "invalid_query", "'metric' is required") }
        return try Trends.metric(m)
    }

    /// GET /executions/regressions: the fingerprints (or label values) whose latest
    /// `window` runs are worse than the `baseline` runs before them (see `Regression`).
    @Sendable func regressions(_ request: Request, context: BasicRequestContext) async throws -> Response {
        let p = request.uri.queryParameters
        let field = try metric(p)
        let window = Int(try number(p, "window", 5...1000, 20, integer: true))
        let baseline = Int(try number(p, "baseline", 5...10000, 80, integer: true))
        let minRatio = try number(p, "min_ratio", 1...1000, 1.2)
        let alpha = try number(p, "alpha", 0.000001...0.5, 0.001)
        let by = p["by"].map(String.init) ?? "code_sha256"
        let labelKey = try Regression.labelKey(by: by)
        let report = try await Regression.report(svc.log, try filters(p), metric: field, by: by, labelKey: labelKey,
                                                 window: window, baseline: baseline, alpha: alpha, minRatio: minRatio)
        return JSONBody.response(report.json())
    }

    /// GET /executions/trends: per time bucket, count and p50 / p95 / max of a metric.
    @Sendable func trends(_ request: Request, context: BasicRequestContext) async throws -> Response {
        let p = request.uri.queryParameters
        let field = try metric(p)
        let b = p["bucket"].map(String.init) ?? "1h"
        guard let bucket = TrendBucket(rawValue: b) else {
            throw APIError(.badRequest, "invalid_query", "'bucket' must be 1m, 1h or 1d")
        }
        var q = try filters(p)
        let (since, until) = bucket.window(since: q.since, until: q.until)
        q.since = since
        q.until = until
        let points = try await svc.log.trends(q, metric: field, bucket: bucket)
        return JSONBody.response(Trends.json(points, metric: field, bucket: bucket, since: since, until: until))
    }

    @Sendable func get(_ request: Request, context: BasicRequestContext) async throws -> Response {
        let id = try rowID(context)
        guard let record = try await svc.log.get(id: id) else {
            throw APIError(.notFound, "not_found", "no execution with id \(id)")
        }
        return JSONBody.response(record.json())
    }
}

/// GET /health, /metrics, /openapi.json.
struct SystemController: Sendable {
    let svc: ServiceContext

    func addRoutes(to router: Router<BasicRequestContext>) {
        router.get("health") { _, _ -> Response in
            let backend = try? Cgroups.shared()
            let body: [String: Any] = [
                "status": "ok",
                "cgroups": backend != nil,
                "cgroup_version": backend?.version.rawValue ?? NSNull(),
                "in_flight": await svc.admission.inFlight,
                "queued": await svc.admission.queued,
                "max_concurrency": svc.config.maxConcurrency,
                "queue_size": svc.config.queueSize,
                "token_required": !(svc.config.token ?? "").isEmpty,
                "warm": svc.sandbox.warmStatus.map { t -> [String: Any] in
                    ["modules": t.modules, "ready": t.ready, "pid": t.pid.map { Int($0) as Any } ?? NSNull(),
                     "memory_shared": t.memoryShared.map { Int($0) as Any } ?? NSNull(),
                     "launches": t.launches, "restarts": t.restarts, "last_error": t.lastError ?? NSNull()]
                },
                "sessions": ["live": svc.sessions.count, "max": svc.sessions.max],
                "node": svc.config.node,
            ]
            return JSONBody.response(JSONBody.encode(body))
        }
        router.get("metrics") { _, _ -> Response in
            svc.metrics.inFlight.set(Double(await svc.admission.inFlight))
            svc.metrics.queueDepth.set(Double(await svc.admission.queued))
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                            body: .init(byteBuffer: ByteBuffer(string: svc.metrics.text())))
        }
        // Every node writing to this log, from its heartbeat rows (`all=true`: also
        // stopped ones and those not heard from for three heartbeats).
        router.get("nodes") { request, _ -> Response in
            let all: Bool
            switch request.uri.queryParameters["all"] {
            case nil, "false": all = false
            case "true": all = true
            default: throw APIError(.badRequest, "invalid_query", "'all' must be true or false")
            }
            let now = Date()
            let within = 3 * (svc.config.heartbeatInterval / .seconds(1))
            let rows = try await svc.log.nodes().filter { all || $0.isLive(now: now, within: within) }
            var w = JSONWriter()
            w.field("node", svc.config.node)
            w.field("nodes", json: "[" + rows.map { $0.json(now: now, within: within) }.joined(separator: ",") + "]")
            return JSONBody.response(w.finish())
        }
        router.get("openapi.json") { _, _ -> Response in
            JSONBody.response(OpenAPIDocument.json)
        }
    }
}

/// The `{id}` of an /executions/{id}... path.
func rowID(_ context: BasicRequestContext) throws -> Int64 {
    guard let id = context.parameters.get("id", as: Int64.self) else {
        throw APIError(.badRequest, "invalid_request", "the execution id must be an integer")
    }
    return id
}

/// A run's result as the API answers it, with its log id.
func resultResponse(_ result: ExecutionResult, id: Int64) -> Response {
    var headers: HTTPFields = [.contentType: "application/json"]
    headers[HTTPField.Name("X-Execution-Id")!] = String(id)
    return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: result.jsonString())))
}

/// The head of an event stream of the execution `id`.
func eventStreamHeaders(id: Int64) -> HTTPFields {
    var headers: HTTPFields = [.contentType: "text/event-stream", .cacheControl: "no-store"]
    headers[HTTPField.Name("X-Execution-Id")!] = String(id)
    // A proxy in front (nginx) passes the events on as they come instead of buffering.
    headers[HTTPField.Name("X-Accel-Buffering")!] = "no"
    return headers
}

func date(_ s: Substring?, _ name: String) throws -> Date? {
    guard let s else { return nil }
    if let d = ExecutionResult.parseTimestamp(String(s)) { return d }
    let f = ISO8601DateFormatter()
    if let d = f.date(from: String(s)) { return d }
    throw APIError(.badRequest, "invalid_query", "'\(name)' must be an RFC 3339 timestamp")
}

