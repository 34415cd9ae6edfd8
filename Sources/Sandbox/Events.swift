import CgroupKit
import Foundation
import Synchronization

/// What happens in a run, as it happens. The result is always the last event.
public enum RunEvent: Sendable {
    /// The program was exec'd (its wall time counts from here); `at` is the result's `started_at`.
    case started(id: String, at: Date)
    /// Bytes the program wrote, in the order they were read from its pipes.
    case output(OutputChannel, [UInt8])
    /// The run's counters while the program runs, every `sampleInterval` of the request
    /// while the run has a subscriber, and once more after the program ended.
    case sample(LiveSample)
    /// The supervisor is ending the run: "wall_time", "cpu_time", "output", "memory", "stopped".
    case limitHit(String)
    /// A point the program reported on its metrics pipe.
    case metric(CustomPoint)
    case result(ExecutionResult)
}

public enum OutputChannel: String, Sendable { case stdout, stderr }

/// Hands a run's events to any number of consumers: each `subscribe()` gets every
/// event emitted after it. The supervisor emits from its own thread; consumers read
/// at their pace (each stream buffers what its consumer has not read yet).
public final class RunEvents: Sendable {
    private let subscribers = Mutex<[AsyncStream<RunEvent>.Continuation]>([])
    private let finished = Mutex(false)
    private let startedState = Mutex<(id: String, at: Date)?>(nil)
    private let resultState = Mutex<ExecutionResult?>(nil)

    /// The result, once the run has one (for a subscriber that came after the end).
    public var result: ExecutionResult? { resultState.withLock { $0 } }

    /// The `started` event's content once the program was exec'd (for late subscribers).
    public var started: (id: String, at: Date)? { startedState.withLock { $0 } }

    public init() {}

    public func subscribe() -> AsyncStream<RunEvent> {
        let (stream, continuation) = AsyncStream.makeStream(of: RunEvent.self)
        if finished.withLock({ $0 }) {
            continuation.finish()
        } else {
            subscribers.withLock { $0.append(continuation) }
        }
        return stream
    }

    /// Whether anyone listens now (the supervisor samples only then).
    public var hasSubscribers: Bool { subscribers.withLock { !$0.isEmpty } }

    func emit(_ event: RunEvent) {
        if case .started(let id, let at) = event { startedState.withLock { $0 = (id, at) } }
        if case .result(let r) = event { resultState.withLock { $0 = r } }
        for c in subscribers.withLock({ $0 }) { c.yield(event) }
    }

    /// After the result: every stream ends.
    func finish() {
        finished.withLock { $0 = true }
        for c in subscribers.withLock({ list in defer { list = [] }; return list }) { c.finish() }
    }
}

/// One live sample of a run: what `docker stats` would show at that moment, from the
/// same kernel files as the final result.
public struct LiveSample: Sendable, Equatable {
    /// Seconds since `execve`.
    public var elapsed: Double
    /// CPU seconds so far (user, system), the sandbox init's set-up excluded.
    public var cpuUserTime: Double?
    public var cpuSystemTime: Double?
    /// CPU use over the interval since the previous sample, in % of one core.
    public var cpuPercent: Double?
    /// Memory charged now minus inactive file pages (Docker's "usage").
    public var memoryUsage: Int64?
    /// The most memory charged so far.
    public var memoryPeak: Int64?
    /// Block I/O of the run's tasks so far (live ones and reaped ones).
    public var blockIORead: Int64?
    public var blockIOWrite: Int64?
    /// Bytes through the run's network namespace so far.
    public var networkIORx: Int64?
    public var networkIOTx: Int64?
    /// Bytes through the namespace's loopback interface so far.
    public var networkIOLoopback: Int64?
    /// Tasks (processes and threads) alive now, the init excluded.
    public var pidsCount: Int64?

    public init(elapsed: Double) { self.elapsed = elapsed }

    public func json() -> String {
        var w = JSONWriter()
        w.field("elapsed", (elapsed * 1e6).rounded() / 1e6)
        w.field("cpu_user_time", cpuUserTime)
        w.field("cpu_system_time", cpuSystemTime)
        w.field("cpu_percent", cpuPercent)
        w.field("memory_usage", memoryUsage)
        w.field("memory_peak", memoryPeak)
        w.field("block_io_read", blockIORead)
        w.field("block_io_write", blockIOWrite)
        w.field("network_io_rx", networkIORx)
        w.field("network_io_tx", networkIOTx)
        w.field("network_io_loopback", networkIOLoopback)
        w.field("pids_count", pidsCount)
        return w.finish()
    }
}

/// Takes a run's live samples: CgroupKit's kept-open counters, the tasks' /proc/<pid>/io
/// and the namespace's /proc/<init>/net/dev, minus what the init used before `execve`.
struct LiveSampler {
    let monitor: RunMonitor
    let initPid: pid_t
    var baseUser: UInt64 = 0
    var baseSystem: UInt64 = 0
    var baseRead: UInt64 = 0
    var baseWrite: UInt64 = 0
    var last: (ns: Int64, usec: UInt64)?

    init(monitor: RunMonitor, initPid: pid_t) {
        self.monitor = monitor
        self.initPid = initPid
    }

    /// At `execve`: what the init has used so far is not the program's.
    mutating func start(at ns: Int64) {
        let l = monitor.live()
        baseUser = l.cpuUserUsec ?? 0
        baseSystem = l.cpuSystemUsec ?? 0
        if let io = SysFile.read("/proc/\(initPid)/io").flatMap(StatParse.procIO) {
            baseRead = io.readBytes
            baseWrite = io.writeBytes
        }
        last = (ns, baseUser + baseSystem)
    }

    mutating func sample(now: Int64, execNs: Int64) -> LiveSample {
        let l = monitor.live()
        var s = LiveSample(elapsed: Double(now - execNs) / 1e9)
        let user = l.cpuUserUsec.map { $0 >= baseUser ? $0 - baseUser : 0 }
        let system = l.cpuSystemUsec.map { $0 >= baseSystem ? $0 - baseSystem : 0 }
        s.cpuUserTime = user.map { Double($0) / 1e6 }
        s.cpuSystemTime = system.map { Double($0) / 1e6 }
        if let u = l.cpuUserUsec, let y = l.cpuSystemUsec {
            if let (ns, usec) = last, now > ns {
                let used = u + y >= usec ? u + y - usec : 0
                s.cpuPercent = Double(used) * 1000 / Double(now - ns) * 100
            }
            last = (now, u + y)
        }
        if let current = l.memoryCurrentBytes {
            let inactive = l.memoryInactiveFileBytes ?? 0
            s.memoryUsage = Int64(current > inactive ? current - inactive : 0)
        }
        s.memoryPeak = l.memoryPeakBytes.map { Int64($0) }
        s.pidsCount = l.pidsCurrent.map { Int64($0 > 0 ? $0 - 1 : 0) }
        // Every live task's I/O, and through the init (and each live parent) that of the reaped ones.
        var read: UInt64 = 0, write: UInt64 = 0, readable = false
        for p in Set(l.processes + [initPid]) {
            guard let io = SysFile.read("/proc/\(p)/io").flatMap(StatParse.procIO) else { continue }
            read += io.readBytes
            write += io.writeBytes >= io.cancelledWriteBytes ? io.writeBytes - io.cancelledWriteBytes : 0
            readable = true
        }
        if readable {
            s.blockIORead = Int64(read >= baseRead ? read - baseRead : 0)
            s.blockIOWrite = Int64(write >= baseWrite ? write - baseWrite : 0)
        }
        if let net = SysFile.read("/proc/\(initPid)/net/dev").flatMap(StatParse.netDev) {
            s.networkIORx = Int64(net.rxBytes)
            s.networkIOTx = Int64(net.txBytes)
            s.networkIOLoopback = Int64(net.loopbackBytes)
        }
        return s
    }
}

/// Cuts a byte stream at UTF-8 character boundaries: a character split across two
/// reads is sent whole with the second.
public struct UTF8Chunker: Sendable {
    private var pending: [UInt8] = []

    public init() {}

    /// The bytes that end on a boundary; an incomplete last character waits for the next call.
    public mutating func take(_ bytes: [UInt8]) -> [UInt8] {
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
    public mutating func flush() -> [UInt8] {
        defer { pending = [] }
        return pending
    }
}

/// Turns a run's events into named JSON objects, the form both the HTTP stream (SSE)
/// and `sandpit run --events` (JSON lines) send: `started`, `stdout`/`stderr`
/// (`{"data"}` or `{"data_base64"}`, cut on character boundaries), `sample`, `limit`,
/// `result`.
public struct EventEncoder: Sendable {
    let rowID: Int64?
    let name: String
    private var chunkers: [OutputChannel: UTF8Chunker] = [.stdout: UTF8Chunker(), .stderr: UTF8Chunker()]
    private var sentStarted = false

    public init(rowID: Int64?, name: String) {
        self.rowID = rowID
        self.name = name
    }

    /// `{"data": text}`, or `{"data_base64": ...}` when the bytes are not valid UTF-8.
    public static func output(_ bytes: [UInt8]) -> String {
        var w = JSONWriter()
        if let text = String(validating: bytes, as: UTF8.self) {
            w.field("data", text)
        } else {
            w.field("data_base64", Data(bytes).base64EncodedString())
        }
        return w.finish()
    }

    public mutating func encode(_ event: RunEvent) -> [(name: String, json: String)] {
        switch event {
        case .started(let id, let at):
            guard !sentStarted else { return [] }
            sentStarted = true
            var w = JSONWriter()
            if let rowID { w.field("id", rowID) }
            w.field("container_id", id)
            w.field("container_name", name)
            w.field("started_at", ExecutionResult.timestamp(at))
            return [("started", w.finish())]
        case .output(let stream, let bytes):
            let whole = chunkers[stream]!.take(bytes)
            return whole.isEmpty ? [] : [(stream.rawValue, Self.output(whole))]
        case .sample(let s):
            return [("sample", s.json())]
        case .limitHit(let kind):
            var w = JSONWriter()
            w.field("limit", kind)
            return [("limit", w.finish())]
        case .metric(let p):
            return [("metric", p.json())]
        case .result(let r):
            var out: [(name: String, json: String)] = []
            for stream in [OutputChannel.stdout, .stderr] {
                let rest = chunkers[stream]!.flush()
                if !rest.isEmpty { out.append((stream.rawValue, Self.output(rest))) }
            }
            out.append(("result", r.jsonString()))
            return out
        }
    }
}
