import Foundation
import GRDB
import HTTPTypes
import Hummingbird
import Sandbox

/// A JSON object body checked strictly: unknown fields and wrong types are 400s that
/// name the field.
struct StrictObject {
    let fields: [String: JSONValue]

    init(_ body: ByteBuffer, known: Set<String>) throws(APIError) {
        guard let v = try? JSONDecoder().decode(JSONValue.self, from: Data(buffer: body)) else {
            throw APIError(.badRequest, "invalid_json", "the body is not valid JSON")
        }
        guard case .object(let o) = v else { throw ExecuteBody.invalid("the body must be a JSON object") }
        if let unknown = o.keys.sorted().first(where: { !known.contains($0) }) {
            throw ExecuteBody.invalid("unknown field '\(unknown.prefix(80))'")
        }
        fields = o
    }

    private func kind(_ v: JSONValue) -> String {
        switch v {
        case .null: "null"
        case .bool: "boolean"
        case .number: "number"
        case .string: "string"
        case .array: "array"
        case .object: "object"
        }
    }

    func string(_ k: String) throws(APIError) -> String? {
        switch fields[k] {
        case nil, .null?: return nil
        case .string(let s)?: return s
        case let v?: throw ExecuteBody.invalid("'\(k)' must be a string, not \(kind(v))")
        }
    }

    func bool(_ k: String) throws(APIError) -> Bool? {
        switch fields[k] {
        case nil, .null?: return nil
        case .bool(let b)?: return b
        case let v?: throw ExecuteBody.invalid("'\(k)' must be a boolean, not \(kind(v))")
        }
    }

    func number(_ k: String, in range: ClosedRange<Double>) throws(APIError) -> Double? {
        switch fields[k] {
        case nil, .null?: return nil
        case .number(let d)?:
            guard range.contains(d) else {
                throw APIError(.badRequest, "limit_out_of_range", "'\(k)' must be between \(range.lowerBound) and \(range.upperBound)")
            }
            return d
        case let v?: throw ExecuteBody.invalid("'\(k)' must be a number, not \(kind(v))")
        }
    }

    func integer(_ k: String, in range: ClosedRange<Double>) throws(APIError) -> UInt64? {
        guard let d = try number(k, in: range) else { return nil }
        guard d == d.rounded() else { throw ExecuteBody.invalid("'\(k)' must be an integer") }
        return UInt64(d)
    }

    func labels() throws(APIError) -> [String: String] {
        switch fields["labels"] {
        case nil, .null?: return [:]
        case .object(let o)?:
            var out: [String: String] = [:]
            for (k, v) in o.sorted(by: { $0.key < $1.key }) {
                guard case .string(let s) = v else {
                    throw ExecuteBody.invalid("'labels': the value of '\(k.prefix(80))' must be a string, not \(kind(v))")
                }
                out[k] = s
            }
            try Labels.validate(out)
            return out
        case let v?: throw ExecuteBody.invalid("'labels' must be an object of strings, not \(kind(v))")
        }
    }
}

extension APIError {
    /// A session's refusal as an HTTP error.
    init(_ e: SessionError) {
        switch e.code {
        case .busy: self.init(.conflict, "session_busy", e.what)
        case .closed: self.init(.notFound, "session_closed", e.what)
        case .failed: self.init(.internalServerError, "session_failed", e.what)
        case .invalidPath: self.init(.badRequest, "invalid_path", e.what)
        case .notFound: self.init(.notFound, "file_not_found", e.what)
        case .notAFile: self.init(.badRequest, "not_a_file", e.what)
        case .tooLarge: self.init(.contentTooLarge, "file_too_large", e.what)
        case .noSpace: self.init(.init(code: 507, reasonPhrase: "Insufficient Storage"), "scratch_full", e.what)
        case .io: self.init(.internalServerError, "file_error", e.what)
        }
    }
}

/// /sessions: named sandboxes whose interpreter keeps its state between executions.
struct SessionController: Sendable {
    let svc: ServiceContext

    static let createFields: Set<String> = ["name", "time_limit", "cpu_limit", "memory_limit", "pids_limit", "output_limit",
                                            "scratch_limit", "freeze_after", "idle_timeout", "ttl", "labels"]
    static let executeFields: Set<String> = ["code", "stdin", "time_limit", "cpu_limit", "stream"]
    /// Largest file a request may upload or download.
    static let maxFileBytes = 256 << 20

    func addRoutes(to router: Router<BasicRequestContext>) {
        router.post("sessions", use: create)
        router.get("sessions", use: list)
        router.get("sessions/:id", use: show)
        router.delete("sessions/:id", use: delete)
        router.post("sessions/:id/restart", use: restart)
        router.post("sessions/:id/execute", use: execute)
        router.get("sessions/:id/files", use: listFiles)
        router.get("sessions/:id/files/**", use: download)
        router.put("sessions/:id/files/**", use: upload)
    }

    func body(_ request: Request, limit: Int) async throws -> ByteBuffer {
        do {
            return try await request.body.collect(upTo: limit)
        } catch {
            if let e = error as? any HTTPResponseError, e.status == .contentTooLarge {
                throw APIError(.contentTooLarge, "body_too_large", "the body exceeds \(limit) bytes")
            }
            throw APIError(.badRequest, "invalid_request", "the body could not be read: \(error)")
        }
    }

    /// A request about a live session that another node holds (by its id: names are
    /// kept per node), relayed to that node; nil when it is not one.
    func relayed(_ request: Request, _ context: BasicRequestContext, bodyLimit: Int) async throws -> Response? {
        let key = context.parameters.get("id") ?? ""
        guard request.headers[forwardedBy] == nil, svc.sessions.find(key) == nil,
              let row = try await svc.log.session(id: key), row.endedAt == nil,
              let owner = try await Relay(svc: svc).owner(row.host, request) else { return nil }
        let hasBody = request.method == .post || request.method == .put
        return try await Relay(svc: svc).forward(request, body: hasBody ? try await body(request, limit: bodyLimit) : nil,
                                                 to: owner, what: "session \(row.id)")
    }

    /// The live session named by the path's `id` (its id or its name).
    func entry(_ context: BasicRequestContext) throws -> SessionEntry {
        let key = context.parameters.get("id") ?? ""
        guard let e = svc.sessions.find(key) else {
            throw APIError(.notFound, "session_not_found", "no live session has the id or name '\(key.prefix(80))'")
        }
        return e
    }

    @Sendable func create(_ request: Request, context: BasicRequestContext) async throws -> Response {
        let o = try StrictObject(try await body(request, limit: svc.config.maxBodyBytes), known: Self.createFields)
        let r = svc.config.ranges
        var opts = SessionOptions(name: "")
        if let v = try o.number("time_limit", in: r.wallSeconds) { opts.limits.wallSeconds = v }
        if let v = try o.number("cpu_limit", in: r.cpuSeconds) { opts.limits.cpuSeconds = v }
        if let v = try o.integer("memory_limit", in: Double(r.memoryBytes.lowerBound)...Double(r.memoryBytes.upperBound)) { opts.limits.memoryBytes = v }
        if let v = try o.integer("pids_limit", in: Double(r.pids.lowerBound)...Double(r.pids.upperBound)) { opts.limits.pids = v }
        if let v = try o.integer("output_limit", in: Double(r.outputBytes.lowerBound)...Double(r.outputBytes.upperBound)) { opts.limits.outputBytes = Int(v) }
        if let v = try o.integer("scratch_limit", in: Double(16 << 20)...Double(16 << 30)) { opts.limits.scratchBytes = v }
        let freezeAfter = try o.number("freeze_after", in: 0.1...86_400) ?? svc.config.sessionFreezeAfter
        let idle = try o.number("idle_timeout", in: 1...604_800) ?? svc.config.sessionIdleTimeout
        let ttl = try o.number("ttl", in: 1...604_800)
        let labels = try o.labels()
        let id = Sandbox.newID()
        if let n = try o.string("name") {
            guard !n.isEmpty, n.unicodeScalars.count <= 256 else { throw ExecuteBody.invalid("'name' must have 1 to 256 characters") }
            guard n.count != 32 || !n.allSatisfy(\.isHexDigit) else {
                throw ExecuteBody.invalid("'name' must not look like a session id (32 hex digits)")
            }
            opts.name = n
        } else {
            opts.name = "session-" + id.prefix(8)
        }
        try svc.sessions.reserve(name: opts.name)
        let session: Session
        do {
            session = try await Session.open(sandbox: svc.sandbox, id: id, options: opts)
        } catch {
            svc.sessions.unreserve()
            svc.logger.error("session \(id) could not start: \(error)")
            throw APIError(error)
        }
        let e = SessionEntry(session: session, labels: labels, freezeAfter: freezeAfter, idleTimeout: idle, ttl: ttl)
        guard svc.sessions.add(e) else {
            await session.close()
            throw APIError(.conflict, "session_name_taken", "a session named '\(opts.name.prefix(80))' exists")
        }
        var row = SessionRow(id: id, name: opts.name, createdAt: session.createdAt)
        row.labels = labels
        var w = JSONWriter()
        w.field("limits", json: SessionSettings.limitsJSON(opts.limits))
        w.field("freeze_after", freezeAfter)
        w.field("idle_timeout", idle)
        w.field("ttl", ttl)
        row.settings = w.finish()
        do {
            try await svc.log.sessionOpened(row)
        } catch {
            await svc.endSession(e, reason: "storage_unavailable")
            throw APIError(.serviceUnavailable, "storage_unavailable", "the session could not be logged: \(error)")
        }
        return JSONBody.response(e.json(), status: .created)
    }

    @Sendable func list(_ request: Request, context: BasicRequestContext) async throws -> Response {
        JSONBody.response("{\"sessions\":[" + svc.sessions.all.map { $0.json() }.joined(separator: ",") + "]}")
    }

    @Sendable func show(_ request: Request, context: BasicRequestContext) async throws -> Response {
        if let r = try await relayed(request, context, bodyLimit: svc.config.maxBodyBytes) { return r }
        if let e = svc.sessions.find(context.parameters.get("id") ?? "") { return JSONBody.response(e.json()) }
        // An ended session: its row.
        let key = context.parameters.get("id") ?? ""
        if let row = try await svc.log.session(id: key) { return JSONBody.response(SessionSettings.json(row)) }
        throw APIError(.notFound, "session_not_found", "no session has the id or name '\(key.prefix(80))'")
    }

    @Sendable func delete(_ request: Request, context: BasicRequestContext) async throws -> Response {
        if let r = try await relayed(request, context, bodyLimit: svc.config.maxBodyBytes) { return r }
        let e = try entry(context)
        await svc.endSession(e, reason: "deleted")
        if let row = try await svc.log.session(id: e.session.id) { return JSONBody.response(SessionSettings.json(row)) }
        return JSONBody.response(e.json())
    }

    @Sendable func restart(_ request: Request, context: BasicRequestContext) async throws -> Response {
        if let r = try await relayed(request, context, bodyLimit: svc.config.maxBodyBytes) { return r }
        let e = try entry(context)
        e.begin()
        defer { e.done() }
        do {
            try await e.session.restart()
        } catch {
            throw APIError(error)
        }
        return JSONBody.response(e.json())
    }

    @Sendable func execute(_ request: Request, context: BasicRequestContext) async throws -> Response {
        if let r = try await relayed(request, context, bodyLimit: svc.config.maxBodyBytes) { return r }
        let e = try entry(context)
        let o = try StrictObject(try await body(request, limit: svc.config.maxBodyBytes), known: Self.executeFields)
        guard let code = try o.string("code") else { throw ExecuteBody.invalid("'code' is required") }
        let stdin = try o.string("stdin") ?? ""
        let wall = try o.number("time_limit", in: svc.config.ranges.wallSeconds)
        let cpu = try o.number("cpu_limit", in: svc.config.ranges.cpuSeconds)
        let stream = try o.bool("stream") ?? (request.headers[.accept]?.contains("text/event-stream") ?? false)
        // One execution at a time: a second one is refused at once, before it is logged.
        guard e.executing.withLock({ x in defer { x = true }; return !x }) else {
            throw APIError(.conflict, "session_busy", "an execution of this session is in progress; one runs at a time")
        }
        e.begin()
        let svc = self.svc
        @Sendable func release() async {
            e.done()
            e.executing.withLock { $0 = false }
        }
        let queuedAt = Date()
        let rowID: Int64
        do {
            try await svc.acquireSlot()
            do {
                rowID = try await svc.log.begin(code: code, name: e.name, containerID: e.session.id, labels: e.labels,
                                                queuedAt: queuedAt, startedAt: Date())
            } catch {
                await svc.admission.release()
                throw APIError(.serviceUnavailable, "storage_unavailable", "the execution log cannot be written; nothing was run")
            }
        } catch {
            await release()
            throw error
        }
        var req = ExecutionRequest(code: code)
        req.name = e.name
        let run = LiveRun(rowID: rowID, containerID: e.session.id, request: req, startedAt: queuedAt, recordsSamples: false,
                          labels: e.labels, sessionID: e.session.id)
        svc.live.add(run)
        /// The execution, its row completed, everything released.
        @Sendable func work() async -> Result<ExecutionResult, SessionError> {
            let outcome: Result<ExecutionResult, SessionError>
            do {
                outcome = .success(try await e.session.execute(code: code, stdin: stdin, wallSeconds: wall, cpuSeconds: cpu, events: run.events))
            } catch {
                outcome = .failure(error)
            }
            var logged: ExecutionResult
            switch outcome {
            case .success(let r): logged = r
            case .failure(let error):
                // Refused before it started (the session ended meanwhile).
                logged = ExecutionResult(containerID: e.session.id, containerName: e.name, startedAt: queuedAt)
                logged.status = .cancelled
                logged.error = "not run: \(error.what)"
            }
            do {
                try await svc.log.finish(id: rowID, result: logged, finishedAt: Date())
                try await svc.log.sessionUpdated(id: e.session.id, executions: e.session.executions, endedAt: nil, endReason: nil)
            } catch {
                svc.logger.error("session \(e.session.id) execution (row \(rowID)): not logged yet: \(error)")
            }
            svc.live.remove(rowID, result: logged)
            await svc.admission.release()
            if case .success(let r) = outcome { svc.metrics.finished(r) }
            await release()
            return outcome
        }
        if stream {
            let events = run.events.subscribe()  // before the execution starts: nothing is missed
            let runner = Task { await work() }
            let keepAlive = svc.config.keepAlive
            return Response(status: .ok, headers: eventStreamHeaders(id: rowID), body: ResponseBody { writer in
                var sse = SSEWriter(run)
                do {
                    try await sse.send(events, of: run, to: &writer, keepAlive: keepAlive)
                    try await writer.finish(nil)
                } catch {
                    svc.sandbox.cancel(id: e.session.id, reason: "the streaming client disconnected")
                    _ = await runner.value
                    throw error
                }
            })
        }
        switch await work() {
        case .success(let r): return resultResponse(r, id: rowID)
        case .failure(let error): throw APIError(error)
        }
    }

    /// The path after `files/`, percent-decoded.
    func filePath(_ context: BasicRequestContext) -> String {
        context.parameters.getCatchAll().map { String($0).removingPercentEncoding ?? String($0) }.joined(separator: "/")
    }

    @Sendable func upload(_ request: Request, context: BasicRequestContext) async throws -> Response {
        if let r = try await relayed(request, context, bodyLimit: Self.maxFileBytes) { return r }
        let e = try entry(context)
        e.begin()
        defer { e.done() }
        let limit = Int(min(UInt64(Self.maxFileBytes), e.session.options.limits.scratchBytes))
        let buf = try await body(request, limit: limit)
        let bytes = Array(buffer: buf)
        let path: String
        do {
            path = try e.session.writeFile(filePath(context), bytes)
        } catch {
            throw APIError(error)
        }
        var w = JSONWriter()
        w.field("path", path)
        w.field("size", Int64(bytes.count))
        return JSONBody.response(w.finish(), status: .created)
    }

    @Sendable func download(_ request: Request, context: BasicRequestContext) async throws -> Response {
        if let r = try await relayed(request, context, bodyLimit: svc.config.maxBodyBytes) { return r }
        let e = try entry(context)
        e.begin()
        defer { e.done() }
        let bytes: [UInt8]
        do {
            bytes = try e.session.readFile(filePath(context), maxBytes: Self.maxFileBytes)
        } catch {
            throw APIError(error)
        }
        return Response(status: .ok, headers: [.contentType: "application/octet-stream"],
                        body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
    }

    @Sendable func listFiles(_ request: Request, context: BasicRequestContext) async throws -> Response {
        if let r = try await relayed(request, context, bodyLimit: svc.config.maxBodyBytes) { return r }
        let e = try entry(context)
        e.begin()
        defer { e.done() }
        let dir = request.uri.queryParameters.get("dir") ?? ""
        let entries: [SessionFileEntry]
        do {
            entries = try e.session.listFiles(dir)
        } catch {
            throw APIError(error)
        }
        let items = entries.map { f -> String in
            var w = JSONWriter()
            w.field("name", f.name)
            w.field("path", f.path)
            w.field("type", f.kind.rawValue)
            w.field("size", f.size)
            w.field("modified_at", ExecutionResult.timestamp(f.modified))
            return w.finish()
        }
        return JSONBody.response("{\"entries\":[" + items.joined(separator: ",") + "]}")
    }
}
