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

/// Cuts a byte stream at UTF-8 character boundaries: a character split across two
/// reads is sent whole with the second.
struct UTF8Chunker {
    private var pending: [UInt8] = []

    /// The bytes that end on a boundary; an incomplete last character waits for the next call.
    mutating func take(_ bytes: [UInt8]) -> [UInt8] {
        var all = pending + bytes
        pending = []
        // Look back at most 3 bytes for the lead byte of a last, incomplete character.
        var i = all.count - 1
        while i >= 0 && i >= all.count - 4 {
            let b = all[i]
            if b & 0xC0 == 0x80 { i -= 1; continue }  // continuation byte
            let need = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1
            if b >= 0xC0 && b < 0xF8 && all.count - i < need {
                pending = Array(all[i...])
                all.removeLast(all.count - i)
            }
            break
        }
        return all
    }

    /// What is still held back (at the end of the stream).
    mutating func flush() -> [UInt8] {
        defer { pending = [] }
        return pending
    }
}

/// Writes a run's events as Server-Sent Events, each with an increasing `id:`.
struct SSEWriter {
    let rowID: Int64
    let name: String
    private var seq = 0
    private var chunkers: [OutputChannel: UTF8Chunker] = [.stdout: UTF8Chunker(), .stderr: UTF8Chunker()]

    init(_ run: LiveRun) {
        rowID = run.rowID
        name = run.request.name
    }

    init(rowID: Int64, name: String) {
        self.rowID = rowID
        self.name = name
    }

    enum Item: Sendable { case event(RunEvent), keepAlive }

    private mutating func frame(_ name: String, _ json: String) -> ByteBuffer {
        seq += 1
        return ByteBuffer(string: "id: \(seq)\nevent: \(name)\ndata: \(json)\n\n")
    }

    /// `{"data": text}`, or `{"data_base64": ...}` when the bytes are not valid UTF-8.
    static func output(_ bytes: [UInt8]) -> String {
        var w = JSONWriter()
        if let text = String(validating: bytes, as: UTF8.self) {
            w.field("data", text)
        } else {
            w.field("data_base64", Data(bytes).base64EncodedString())
        }
        return w.finish()
    }

    private var sentStarted = false

    /// For a watcher that attaches after the program started: the `started` event first.
    mutating func started(_ run: LiveRun, to writer: inout any ResponseBodyWriter) async throws {
        guard let (id, at) = run.events.started else { return }  // it is still to come
        let f = frames(.started(id: id, at: at))
        if !f.isEmpty { try await writer.write(contentsOf: f) }
    }

    /// The frames of one event (none for an empty output chunk).
    mutating func frames(_ event: RunEvent) -> [ByteBuffer] {
        switch event {
        case .started(let id, let at):
            guard !sentStarted else { return [] }
            sentStarted = true
            var w = JSONWriter()
            w.field("id", rowID)
            w.field("container_id", id)
            w.field("container_name", name)
            w.field("started_at", ExecutionResult.timestamp(at))
            return [frame("started", w.finish())]
        case .output(let stream, let bytes):
            let whole = chunkers[stream]!.take(bytes)
            return whole.isEmpty ? [] : [frame(stream.rawValue, Self.output(whole))]
        case .sample(let s):
            return [frame("sample", s.json())]
        case .limitHit(let kind):
            var w = JSONWriter()
            w.field("limit", kind)
            return [frame("limit", w.finish())]
        case .result(let r):
            var out: [ByteBuffer] = []
            for stream in [OutputChannel.stdout, .stderr] {
                let rest = chunkers[stream]!.flush()
                if !rest.isEmpty { out.append(frame(stream.rawValue, Self.output(rest))) }
            }
            out.append(frame("result", r.jsonString()))
            return out
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
