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

    public init(settings: SandboxSettings = SandboxSettings(), logger: Logger = Logger(label: "sandpit")) {
        self.settings = settings
        self.logger = logger
    }

    /// Runs one request. Never throws: failures of the sandbox become a result with
    /// status `internal_error` and the reason in `error`. The blocking work runs on
    /// a dedicated thread, never on Swift's cooperative pool.
    public func run(_ request: ExecutionRequest, id: String = Sandbox.newID()) async -> ExecutionResult {
        await withCheckedContinuation { (cont: CheckedContinuation<ExecutionResult, Never>) in
            let thread = Thread { cont.resume(returning: self.runBlocking(request, id: id)) }
            thread.stackSize = 1 << 20
            thread.start()
        }
    }

    /// A 32-hex-digit random id (the run's container_id).
    public static func newID() -> String {
        var g = SystemRandomNumberGenerator()
        return (0..<2).map { _ in String(format: "%016llx", g.next() as UInt64) }.joined()
    }

    /// The same as `run`, on the calling thread (which must not be a cooperative-pool thread).
    public func runBlocking(_ request: ExecutionRequest, id: String) -> ExecutionResult {
        let started = Date()
        var result = ExecutionResult(containerID: id, containerName: request.name, startedAt: started)
        do {
            let execution = try Execution(sandbox: self, request: request, id: id)
            execution.start()
            result = execution.supervise(into: result)
        } catch {
            result.status = .internalError
            result.success = false
            result.error = "sandbox failed: \(error)"
            logger.error("run \(id) failed before the program started: \(error)")
        }
        return result
    }
}
