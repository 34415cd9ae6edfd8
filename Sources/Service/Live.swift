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
    public let events = RunEvents()
    /// Its samples are stored (a streamed run, or `"samples": true`).
    public let recordsSamples: Bool

    init(rowID: Int64, containerID: String, request: ExecutionRequest, startedAt: Date, recordsSamples: Bool) {
        self.rowID = rowID
        self.containerID = containerID
        self.request = request
        self.startedAt = startedAt
        self.recordsSamples = recordsSamples
    }
}

/// The runs in progress, by log row id (what `/executions/{id}` names).
public final class LiveRuns: Sendable {
    private let runs = Mutex<[Int64: LiveRun]>([:])
    public init() {}
    func add(_ r: LiveRun) { runs.withLock { $0[r.rowID] = r } }
    func remove(_ id: Int64) { _ = runs.withLock { $0.removeValue(forKey: id) } }
    public func get(_ id: Int64) -> LiveRun? { runs.withLock { $0[id] } }
    public var count: Int { runs.withLock { $0.count } }
    public func all() -> [LiveRun] { runs.withLock { Array($0.values) } }
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

    enum Item: Sendable { case event(RunEvent), keepAlive }

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
        let (items, sink) = AsyncStream.makeStream(of: Item.self)
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
        for await item in items {
            switch item {
            case .keepAlive:
                try await writer.write(ByteBuffer(string: ": keep-alive\n\n"))
            case .event(let e):
                let frames = frames(e)
                if !frames.isEmpty { try await writer.write(contentsOf: frames) }
                if case .result = e { return }
            }
        }
        // Subscribed just as the run ended: its result is kept.
        if let r = run.events.result { try await writer.write(contentsOf: frames(.result(r))) }
    }
}
