import Foundation
import Hummingbird
import HummingbirdCore
import Sandbox
import Synchronization

/// A run the service is executing: its log row, its sandbox id and its events.
public final class LiveRun: Sendable {
    public let rowID: Int64
    public let containerID: String
    public let request: ExecutionRequest
    public let startedAt: Date
    public let labels: [String: String]
    /// The session it runs in, for a session's execution.
    public let sessionID: String?
    public let events = RunEvents()
    /// Its samples are stored (a streamed run, or `"samples": true`).
    public let recordsSamples: Bool

    init(rowID: Int64, containerID: String, request: ExecutionRequest, startedAt: Date, recordsSamples: Bool,
         labels: [String: String] = [:], sessionID: String? = nil) {
        self.rowID = rowID
        self.containerID = containerID
        self.request = request
        self.startedAt = startedAt
        self.recordsSamples = recordsSamples
        self.labels = labels
        self.sessionID = sessionID
    }
}

/// A change of the set of runs in progress (`GET /events`).
public enum LiveChange: Sendable {
    case started(LiveRun)
    case finished(id: Int64, status: String, executionTime: Double)
}

/// The runs in progress, by log row id (what `/executions/{id}` names), and the
/// service-wide stream of their starts and ends.
public final class LiveRuns: Sendable {
    private struct State {
        var runs: [Int64: LiveRun] = [:]
        var watchers: [UInt64: AsyncStream<LiveChange>.Continuation] = [:]
        var nextWatcher: UInt64 = 0
        var closed = false
    }
    private let state = Mutex(State())
    public init() {}

    func add(_ r: LiveRun) {
        let watchers = state.withLock { s in
            s.runs[r.rowID] = r
            return Array(s.watchers.values)
        }
        for w in watchers { w.yield(.started(r)) }
    }

    /// The run ended (`result` nil: it ended without a result of its own).
    func remove(_ id: Int64, result: ExecutionResult?) {
        let watchers = state.withLock { s in
            s.runs.removeValue(forKey: id)
            return Array(s.watchers.values)
        }
        let change = LiveChange.finished(id: id, status: result?.status.rawValue ?? "cancelled", executionTime: result?.executionTime ?? 0)
        for w in watchers { w.yield(change) }
    }

    public func get(_ id: Int64) -> LiveRun? { state.withLock { $0.runs[id] } }
    public var count: Int { state.withLock { $0.runs.count } }
    public func all() -> [LiveRun] { state.withLock { Array($0.runs.values) } }

    /// The runs in progress now and every change after that moment (nothing missed,
    /// nothing twice); the stream ends when its consumer stops reading it.
    public func watch() -> (now: [LiveRun], changes: AsyncStream<LiveChange>) {
        let (stream, continuation) = AsyncStream.makeStream(of: LiveChange.self, bufferingPolicy: .bufferingNewest(10_000))
        let (now, key) = state.withLock { s in
            let key = s.nextWatcher
            s.nextWatcher += 1
            if !s.closed { s.watchers[key] = continuation }
            return (s.runs.values.sorted { $0.rowID < $1.rowID }, key)
        }
        if state.withLock({ $0.closed }) { continuation.finish() }
        continuation.onTermination = { [weak self] _ in _ = self?.state.withLock { $0.watchers.removeValue(forKey: key) } }
        return (now, stream)
    }

    /// Ends every `GET /events` stream, and those opened later at once (shutdown: a
    /// stream that never ends would hold the graceful shutdown).
    public func closeWatchers() {
        let watchers = state.withLock { s in
            s.closed = true
            defer { s.watchers = [:] }
            return Array(s.watchers.values)
        }
        for w in watchers { w.finish() }
    }

    /// Watchers of `GET /events` now (tests).
    public var watcherCount: Int { state.withLock { $0.watchers.count } }
}

/// Writes a run's events as Server-Sent Events, each with an increasing `id:`.
struct SSEWriter {
    private var encoder: EventEncoder
    private var seq = 0

    init(_ run: LiveRun) {
        encoder = EventEncoder(rowID: run.rowID, name: run.request.name)
    }

    init(rowID: Int64, name: String) {
        encoder = EventEncoder(rowID: rowID, name: name)
    }

    static func output(_ bytes: [UInt8]) -> String { EventEncoder.output(bytes) }

    /// For a watcher that attaches after the program started: the `started` event first.
    mutating func started(_ run: LiveRun, to writer: inout any ResponseBodyWriter) async throws {
        guard let (id, at) = run.events.started else { return }  // it is still to come
        let f = frames(.started(id: id, at: at))
        if !f.isEmpty { try await writer.write(contentsOf: f) }
    }

    /// The frames of one event (none for an empty output chunk or a repeated `started`).
    mutating func frames(_ event: RunEvent) -> [ByteBuffer] {
        encoder.encode(event).map { name, json in
            seq += 1
            return ByteBuffer(string: "id: \(seq)\nevent: \(name)\ndata: \(json)\n\n")
        }
    }

    /// Sends every event of `events` until its end (after `result`), with a comment
    /// line after `keepAlive` without an event.
    mutating func send(_ events: AsyncStream<RunEvent>, of run: LiveRun, to writer: inout any ResponseBodyWriter, keepAlive: Duration) async throws {
        let done = try await withKeepAlive(events, every: keepAlive) { items in
            for await item in items {
                switch item {
                case .keepAlive:
                    try await writer.write(ByteBuffer(string: ": keep-alive\n\n"))
                case .event(let e):
                    let frames = frames(e)
                    if !frames.isEmpty { try await writer.write(contentsOf: frames) }
                    if case .result = e { return true }
                }
            }
            return false
        }
        if done { return }
        // Subscribed just as the run ended: its result is kept.
        if let r = run.events.result { try await writer.write(contentsOf: frames(.result(r))) }
    }
}

/// An item of an event stream with keep-alives: an event, or a tick after `keepAlive`.
enum KeepAliveItem<T: Sendable>: Sendable { case event(T), keepAlive }

/// Runs `body` over `events` merged with a `.keepAlive` tick every `keepAlive` (so that a
/// stream writes a comment line now and then, which keeps proxies from closing it and
/// notices a client that left); both feeding tasks end with `body`.
func withKeepAlive<T: Sendable, R>(_ events: AsyncStream<T>, every keepAlive: Duration,
                                   _ body: (AsyncStream<KeepAliveItem<T>>) async throws -> R) async rethrows -> R {
    let (items, sink) = AsyncStream.makeStream(of: KeepAliveItem<T>.self)
    let forward = Task {
        for await e in events { sink.yield(.event(e)) }
        sink.finish()
    }
    let ticker = Task {
        while !Task.isCancelled {
            try? await Task.sleep(for: keepAlive)
            if Task.isCancelled { break }
            sink.yield(.keepAlive)
        }
    }
    defer {
        forward.cancel()
        ticker.cancel()
    }
    return try await body(items)
}
