import CgroupKit
import Foundation
import Synchronization

/// What happens in a run, as it happens. The result is always the last event.
public enum RunEvent: Sendable {
    /// The program was exec'd (its wall time counts from here).
    case started(id: String)
    /// Bytes the program wrote, in the order they were read from its pipes.
    case output(OutputStream, [UInt8])
    /// The run's counters, sampled by the supervisor while the program runs (at most
    /// every 100 ms, and whenever it checks the CPU limit): seconds since `execve`.
    case sample(RunMonitor.Sample, elapsed: Double)
    /// The supervisor is ending the run: "wall_time", "cpu_time", "output", "memory", "stopped".
    case limitHit(String)
    case result(ExecutionResult)
}

public enum OutputStream: String, Sendable { case stdout, stderr }

/// Hands a run's events to any number of consumers: each `subscribe()` gets every
/// event emitted after it. The supervisor emits from its own thread; consumers read
/// at their pace (each stream buffers what its consumer has not read yet).
public final class RunEvents: Sendable {
    private let subscribers = Mutex<[AsyncStream<RunEvent>.Continuation]>([])
    private let finished = Mutex(false)

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

    func emit(_ event: RunEvent) {
        for c in subscribers.withLock({ $0 }) { c.yield(event) }
    }

    /// After the result: every stream ends.
    func finish() {
        finished.withLock { $0 = true }
        for c in subscribers.withLock({ list in defer { list = [] }; return list }) { c.finish() }
    }
}
