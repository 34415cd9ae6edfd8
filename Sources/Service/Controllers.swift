import CgroupKit
import Foundation
import GRDB
import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import Sandbox
import Synchronization

/// POST /execute: admission, a logged run, the result.
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
        let req = try ExecuteBody.decode(body).request(ranges: svc.config.ranges)
        return try await run(req)
    }

/// Admission, a logged run, the response. The row is committed before the response.
    func run(_ req: ExecutionRequest) async throws -> Response {
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
            rowID = try await svc.log.begin(code: req.code, name: req.name, containerID: id, queuedAt: queuedAt, startedAt: Date())
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
            try await svc.log.finish(id: rowID, result: result, finishedAt: Date())
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
}

/// GET /executions, /executions/stats, /executions/{id}: the log, through `ExecutionLog`.
struct ExecutionsController: Sendable {
    let svc: ServiceContext

    func addRoutes(to router: Router<BasicRequestContext>) {
        router.get("executions", use: list)
        router.get("executions/stats", use: stats)
        router.get("executions/:id", use: get)
    }

    @Sendable func list(_ request: Request, context: BasicRequestContext) async throws -> Response {
        var q = LogQuery()
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

    @Sendable func get(_ request: Request, context: BasicRequestContext) async throws -> Response {
        guard let id = context.parameters.get("id", as: Int64.self) else {
            throw APIError(.badRequest, "invalid_request", "the execution id must be an integer")
        }
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
    }
}

func date(_ s: Substring?, _ name: String) throws -> Date? {
    guard let s else { return nil }
    if let d = ExecutionResult.parseTimestamp(String(s)) { return d }
    let f = ISO8601DateFormatter()
    if let d = f.date(from: String(s)) { return d }
    throw APIError(.badRequest, "invalid_query", "'\(name)' must be an RFC 3339 timestamp")
}

