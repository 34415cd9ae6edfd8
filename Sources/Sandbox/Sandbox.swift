import CSandpit
import CSandpit
import CgroupKit
import Foundation
import Logging

/// Runs Python programs in a sandbox: a fresh run cgroup, new namespaces, a
/// read-only root, a block-backed scratch, no capabilities, seccomp — and reads
/// the kernel's counters when the program has ended.
public final class Sandbox: Sendable {
    public let settings: SandboxSettings
    let logger: Logger
    let pending = PendingCounter()
    let spare = Spare<Scratch>(dispose: { $0.release() })
    let spareNetns = Spare<Int32>(dispose: { close($0) })
    let active = ActiveRuns()

    public init(settings: SandboxSettings = SandboxSettings(), logger: Logger = Logger(label: "sandpit")) {
        self.settings = settings
        self.logger = logger
    }

    /// Runs one request. Never throws: failures of the sandbox become a result with
    /// status `internal_error` and the reason in `error`. The blocking work runs on
    /// a dedicated thread, never on Swift's cooperative pool. The result is returned
    /// as soon as the counters are read; the run's teardown (init exit, cgroup
    /// removal, scratch release) finishes on that thread right after — `quiesce()`
    /// waits for it.
    public func run(_ request: ExecutionRequest, id: String = Sandbox.newID()) async -> ExecutionResult {
        pending.add()
        return await withCheckedContinuation { (cont: CheckedContinuation<ExecutionResult, Never>) in
            let thread = Thread {
                let (result, execution) = self.execute(request, id: id)
                cont.resume(returning: result)
                execution?.teardown()
                self.prepareSpare()
                self.pending.remove()
            }
            thread.stackSize = 1 << 20
            thread.start()
        }
    }

    /// A scratch of `size`: the one prepared in advance when it fits, else a new one.
    func takeScratch(size: UInt64) throws(SandboxError) -> Scratch {
        if let s = spare.take(where: { $0.size == size }) { return s }
        return try Scratch.make(stateDirectory: settings.stateDirectory, size: size, uid: settings.uid, gid: settings.gid)
    }

    /// A fresh network namespace (lo up): the prepared one, else a new one; -1 if none
    /// can be made (the init then creates its own).
    func takeNetns() -> Int32 {
        if let fd = spareNetns.take() { return fd }
        let fd = sp_new_netns()
        return fd >= 0 ? fd : -1
    }

    /// Prepares the next run's scratch (the default size) and network namespace off
    /// the critical path.
    func prepareSpare() {
        if !spareNetns.isFull { let fd = sp_new_netns(); if fd >= 0 { spareNetns.put(fd) } }
        guard !spare.isFull else { return }
        if let s = try? Scratch.make(stateDirectory: settings.stateDirectory, size: RunLimits().scratchBytes,
                                     uid: settings.uid, gid: settings.gid) {
            spare.put(s)
        }
    }

    /// Kills and removes run cgroups left by sandpit processes that are gone (a crash,
    /// a kill -9). Returns their names.
    @discardableResult
    public func sweepStale() -> [String] {
        guard let backend = try? Cgroups.shared() else { return [] }
        let swept = backend.sweepStale()
        if !swept.isEmpty { logger.warning("swept \(swept.count) stale run cgroup(s): \(swept.joined(separator: ", "))") }
        return swept
    }

    /// Drops the scratch and network namespace prepared for the next run.
    public func releaseSpares() {
        spare.take()?.release()
        if let fd = spareNetns.take() { close(fd) }
    }

    deinit {
        releaseSpares()
    }

    /// Stops every run in progress (service shutdown after its grace period). Each
    /// ends with status `internal_error` and says why in `error`.
    public func stopAll(reason: String) {
        for e in active.all() { e.stop(reason: reason) }
    }

    /// Runs whose program is executing now.
    public var activeCount: Int { active.all().count }

    /// Waits until every run's teardown has finished.
    public func quiesce() async {
        while pending.count > 0 { try? await Task.sleep(for: .milliseconds(1)) }
    }

    /// A 32-hex-digit random id (the run's container_id).
    public static func newID() -> String {
        var g = SystemRandomNumberGenerator()
        return (0..<2).map { _ in String(format: "%016llx", g.next() as UInt64) }.joined()
    }

    /// Runs one request and its teardown on the calling thread (which must not be a
    /// cooperative-pool thread).
    public func runBlocking(_ request: ExecutionRequest, id: String) -> ExecutionResult {
        let (result, execution) = execute(request, id: id)
        execution?.teardown()
        return result
    }

    func execute(_ request: ExecutionRequest, id: String) -> (ExecutionResult, Execution?) {
        let started = Date()
        var result = ExecutionResult(containerID: id, containerName: request.name, startedAt: started)
        let execution: Execution
        do {
            execution = try Execution(sandbox: self, request: request, id: id)
        } catch {
            result.status = .internalError
            result.success = false
            result.error = "sandbox failed: \(error)"
            logger.error("run \(id) failed before the program started: \(error)")
            return (result, nil)
        }
        active.add(execution)
        execution.start()
        let out = execution.supervise(into: result)
        active.remove(execution)
        return (out, execution)
    }
}

/// Count of runs whose teardown has not finished.
final class PendingCounter: @unchecked Sendable {
    private var value = 0
    private let lock = NSLock()
    func add() { lock.lock(); value += 1; lock.unlock() }
    func remove() { lock.lock(); value -= 1; lock.unlock() }
    var count: Int { lock.lock(); defer { lock.unlock() }; return value }
}

/// One resource prepared ahead of the next run (a service's runs then skip making it
/// on their critical path). What it holds is released with `dispose` when replaced;
/// descriptors close with the process anyway, so a crash leaves nothing behind.
final class Spare<T>: @unchecked Sendable {
    private var value: T?
    private let lock = NSLock()
    private let dispose: (T) -> Void

    init(dispose: @escaping (T) -> Void) {
        self.dispose = dispose
    }

    var isFull: Bool { lock.lock(); defer { lock.unlock() }; return value != nil }

    /// Takes the prepared value if `fits` accepts it.
    func take(where fits: (T) -> Bool = { _ in true }) -> T? {
        lock.lock(); defer { lock.unlock() }
        guard let v = value, fits(v) else { return nil }
        value = nil
        return v
    }

    func put(_ v: T) {
        lock.lock()
        let old = value
        value = v
        lock.unlock()
        if let old { dispose(old) }
    }
}

/// The executions in progress.
final class ActiveRuns: @unchecked Sendable {
    private var runs: [ObjectIdentifier: Execution] = [:]
    private let lock = NSLock()
    func add(_ e: Execution) { lock.lock(); runs[ObjectIdentifier(e)] = e; lock.unlock() }
    func remove(_ e: Execution) { lock.lock(); runs[ObjectIdentifier(e)] = nil; lock.unlock() }
    func all() -> [Execution] { lock.lock(); defer { lock.unlock() }; return Array(runs.values) }
}
