import Foundation
import Hummingbird
import Sandbox
import Synchronization

/// A session as the service keeps it: the sandbox session, its idle and lifetime
/// settings, when it was last used, and the requests using it now (a session in use is
/// never frozen nor ended by the reaper).
final class SessionEntry: Sendable {
    let session: Session
    let labels: [String: String]
    let freezeAfter: Double
    let idleTimeout: Double
    let ttl: Double?
    /// When the session became available (monotonic seconds): its `ttl` counts from here.
    let since = SessionEntry.now()
    /// (last use in monotonic seconds, requests in progress)
    let use = Mutex<(last: Double, inFlight: Int)>((0, 0))
    /// An execution request holds the session (a second one is answered 409).
    let executing = Mutex(false)

    init(session: Session, labels: [String: String], freezeAfter: Double, idleTimeout: Double, ttl: Double?) {
        self.session = session
        self.labels = labels
        self.freezeAfter = freezeAfter
        self.idleTimeout = idleTimeout
        self.ttl = ttl
        use.withLock { $0.last = SessionEntry.now() }
    }

    static func now() -> Double { ProcessInfo.processInfo.systemUptime }

    var name: String { session.options.name }

    /// Marks a request using the session (until `done()`).
    func begin() { use.withLock { $0.inFlight += 1; $0.last = Self.now() } }
    func done() { use.withLock { $0.inFlight -= 1; $0.last = Self.now() } }

    var lastUsed: Date { Date(timeIntervalSinceNow: use.withLock { $0.last } - Self.now()) }

    /// Seconds since the session became available.
    var age: Double { Self.now() - since }

    /// The session as the API shows it.
    func json() -> String {
        var w = JSONWriter()
        w.field("id", session.id)
        w.field("name", name)
        w.field("state", session.state.rawValue)
        w.field("created_at", ExecutionResult.timestamp(session.createdAt))
        w.field("last_used_at", ExecutionResult.timestamp(lastUsed))
        w.field("executions", Int64(session.executions))
        w.field("restarts", Int64(session.restarts))
        w.field("python", session.pythonVersion)
        w.field("labels", json: Labels.json(labels))
        w.field("limits", json: SessionSettings.limitsJSON(session.options.limits))
        w.field("freeze_after", freezeAfter)
        w.field("idle_timeout", idleTimeout)
        w.field("ttl", ttl)
        w.field("last_thaw_ms", session.lastThawMs)
        w.field("totals", json: session.totalsJSON())
        w.field("ended_at", nil as String?)
        w.field("end_reason", nil as String?)
        return w.finish()
    }
}

enum SessionSettings {
    static func limitsJSON(_ l: RunLimits) -> String {
        var w = JSONWriter()
        w.field("time_limit", l.wallSeconds)
        w.field("cpu_limit", l.cpuSeconds)
        w.field("memory_limit", Int64(l.memoryBytes))
        w.field("pids_limit", Int64(l.pids))
        w.field("output_limit", Int64(l.outputBytes))
        w.field("scratch_limit", Int64(l.scratchBytes))
        return w.finish()
    }

    /// An ended session, from its row.
    static func json(_ row: SessionRow) -> String {
        var w = JSONWriter()
        w.field("id", row.id)
        w.field("name", row.name)
        w.field("state", SessionState.closed.rawValue)
        w.field("created_at", ExecutionResult.timestamp(row.createdAt))
        w.field("executions", Int64(row.executions))
        w.field("labels", json: Labels.json(row.labels))
        if let s = row.settings, JSONValue(text: s) != nil { w.field("settings", json: s) }
        w.field("ended_at", row.endedAt.map(ExecutionResult.timestamp))
        w.field("end_reason", row.endReason)
        return w.finish()
    }
}

/// The live sessions: at most `max`, names unique among them.
final class SessionRegistry: Sendable {
    private struct State {
        var byID: [String: SessionEntry] = [:]
        /// Slots taken by sessions being made.
        var reserved = 0
        var closed = false
    }

    private let state = Mutex(State())
    let max: Int

    init(max: Int) { self.max = max }

    /// Takes a slot for a new session (429 when all are taken, 409 when the name is live).
    func reserve(name: String) throws(APIError) {
        try state.withLock { (s: inout State) throws(APIError) in
            if s.closed { throw APIError(.serviceUnavailable, "shutting_down", "the service is shutting down") }
            if s.byID.values.contains(where: { $0.name == name }) {
                throw APIError(.conflict, "session_name_taken", "a session named '\(name.prefix(80))' exists")
            }
            guard s.byID.count + s.reserved < max else {
                var e = APIError(.tooManyRequests, "too_many_sessions", "all \(max) sessions are in use (--max-sessions)")
                e.headers[.retryAfter] = "5"
                throw e
            }
            s.reserved += 1
        }
    }

    /// Adds the session made for a reservation; false (the caller closes it) when a
    /// session of the same name came first or the service is closing.
    func add(_ e: SessionEntry) -> Bool {
        state.withLock { s in
            s.reserved -= 1
            if s.closed || s.byID.values.contains(where: { $0.name == e.name }) { return false }
            s.byID[e.session.id] = e
            return true
        }
    }

    func unreserve() { state.withLock { $0.reserved -= 1 } }

    /// By id, else by name.
    func find(_ key: String) -> SessionEntry? {
        state.withLock { s in s.byID[key] ?? s.byID.values.first { $0.name == key } }
    }

    @discardableResult
    func remove(_ id: String) -> SessionEntry? { state.withLock { $0.byID.removeValue(forKey: id) } }

    var all: [SessionEntry] { state.withLock { Array($0.byID.values) }.sorted { $0.session.createdAt < $1.session.createdAt } }

    var count: Int { state.withLock { $0.byID.count } }

    /// Refuses new sessions and hands over the live ones (service shutdown).
    func closeAll() -> [SessionEntry] {
        state.withLock { s in
            s.closed = true
            defer { s.byID = [:] }
            return Array(s.byID.values)
        }
    }
}

extension ServiceContext {
    /// Ends a live session: its tasks, cgroup and scratch go; its row records why.
    func endSession(_ e: SessionEntry, reason: String) async {
        sessions.remove(e.session.id)
        await e.session.close(reason: "the session ended: \(reason)")
        do {
            try await log.sessionUpdated(id: e.session.id, executions: e.session.executions, endedAt: Date(), endReason: reason)
        } catch {
            logger.error("session \(e.session.id): its end was not logged: \(error)")
        }
    }

    /// One pass of the reaper: ends sessions past their idle timeout or lifetime, freezes
    /// those idle for `freeze_after`.
    func reapSessions() async {
        let now = SessionEntry.now()
        for e in sessions.all {
            let (last, inFlight) = e.use.withLock { ($0.last, $0.inFlight) }
            guard inFlight == 0 else { continue }
            if let ttl = e.ttl, e.age >= ttl {
                await endSession(e, reason: "ttl")
            } else if now - last >= e.idleTimeout {
                await endSession(e, reason: "idle_timeout")
            } else if now - last >= e.freezeAfter, e.session.state == .ready {
                if await e.session.freezeIdle() { logger.debug("session \(e.session.id) frozen after \(Int(now - last)) s idle") }
            }
        }
    }
}
