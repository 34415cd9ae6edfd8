import CSandpit
import CgroupKit
import Foundation
import Synchronization

/// CLOCK_MONOTONIC in nanoseconds (the clock the C side stamps with).
@inline(__always) func monotonicNanos() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}

/// Milliseconds between two monotonicNanos() readings, for the debug log.
func millis(_ a: Int64, _ b: Int64) -> String { String(format: "%.2f", Double(b - a) / 1e6) }

/// CPUs online, read once (sysconf reads /sys on every call).
let onlineCPUs = max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))

/// A run's scratch with its program written and a mount for the run: taken from the
/// pool on the calling thread, or made on a helper thread while the caller goes on.
final class ScratchPrep: @unchecked Sendable {
    private var result: Result<(Scratch, Int32), SandboxError>?
    private let done = DispatchSemaphore(value: 0)
    private let async: Bool
    /// When the scratch was ready.
    private(set) var readyNs: Int64 = 0

    init(sandbox: Sandbox, size: UInt64, code: [UInt8], fileName: String, files: [(path: String, bytes: [UInt8])] = []) {
        let work: @Sendable () -> Result<(Scratch, Int32), SandboxError> = {
            let scratch: Scratch
            do throws(SandboxError) {
                scratch = try sandbox.takeScratch(size: size)
            } catch {
                return .failure(error)
            }
            do throws(SandboxError) {
                try scratch.writeProgram(code, as: fileName, uid: sandbox.settings.uid, gid: sandbox.settings.gid)
                for f in files {
                    do throws(SessionError) {
                        try scratch.writeFile(f.path, f.bytes, uid: sandbox.settings.uid, gid: sandbox.settings.gid)
                    } catch {
                        throw SandboxError(.invalid, "request file \(f.path): \(error.what)", errno: 0)
                    }
                }
                return .success((scratch, try scratch.mountForRun()))
            } catch {
                sandbox.recycle(scratch)
                return .failure(error)
            }
        }
        async = !sandbox.pool.contains(where: { $0.size == size })
        if async {
            let t = Thread { [self] in
                result = work()
                readyNs = monotonicNanos()
                done.signal()
            }
            t.stackSize = 256 << 10
            t.start()
        } else {
            result = work()
            readyNs = monotonicNanos()
        }
    }

    func wait() -> Result<(Scratch, Int32), SandboxError> {
        if async { done.wait() }
        return result!
    }
}

/// One run from cgroup creation to teardown. Lives on one dedicated thread; the only
/// thing other threads do with it is `stop(reason:)`, which goes through `stopState`.
final class Execution: @unchecked Sendable {
    enum KillReason: Hashable {
        case wallTime, cpuTime, output, memoryThrash, stopped, cancelled

        /// The name a `limit` event gives it.
        var eventName: String {
            switch self {
            case .wallTime: "wall_time"
            case .cpuTime: "cpu_time"
            case .output: "output"
            case .memoryThrash: "memory"
            case .stopped: "stopped"
            case .cancelled: "cancelled"
            }
        }

        /// What the status classification sees; `reason` is why it was stopped or cancelled.
        func observed(reason: String?) -> RunObservation.Kill {
            switch self {
            case .wallTime: .wallTime
            case .cpuTime: .cpuTime
            case .output: .output
            case .memoryThrash: .memoryThrash
            case .stopped: .stopped(reason ?? "the sandbox was stopped")
            case .cancelled: .cancelled(reason ?? "cancelled by a client")
            }
        }
    }

    /// A group pinned at its memory limit whose pages the kernel keeps reclaiming (clean
    /// file pages re-read over and over) may thrash for a long time before the OOM killer
    /// acts: at the limit and still hitting it for a whole second, it is ended with
    /// status memory_limit.
    struct ThrashWatch {
        var lastHits: UInt64 = 0
        var since: Int64?

        /// Takes a reading of the limit-hit counter and the charge; true once thrashing
        /// has lasted a second.
        mutating func thrashing(hits: UInt64, current: UInt64, limit: UInt64, now: Int64) -> Bool {
            defer { lastHits = hits }
            guard hits > lastHits && current + (2 << 20) >= limit else {
                since = nil
                return false
            }
            if let s = since { return now - s >= 1_000_000_000 }
            since = now
            return false
        }
    }

    /// /proc/net/dev of the run's network namespace, read through the descriptor kept
    /// since the launch (when the init is gone and /proc/<init>/net with it).
    func netDevInNamespace() -> StatParse.NetDevCounters? {
        guard nsfd.isValid else { return nil }
        var buf = [CChar](repeating: 0, count: 16384)
        let n = sp_read_netdev_in_ns(nsfd.raw, &buf, buf.count - 1)
        return n > 0 ? StatParse.netDev(String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)) : nil
    }

    let sandbox: Sandbox
    let request: ExecutionRequest
    let id: String
    /// Where the run's events go, when someone watches it.
    let events: RunEvents?
    let backend: any CgroupBackend
    let run: RunCgroup
    let scratch: Scratch
    // Descriptors it owns (`FD`: closed once, also when init throws half-way).
    /// This run's mount of the scratch (moved into the run by the init).
    let scratchMount: FD
    // parent ends
    let stdoutR: FD, stderrR: FD, execR: FD, reportR: FD
    /// The program's custom-metrics pipe (read end).
    let metricsR: FD
    let releaseW: FD
    // child ends (closed after launch)
    let stdinFD: FD, stdoutW: FD, stderrW: FD, execW: FD, reportW: FD, releaseR: FD, metricsW: FD
    /// The run's network namespace (given back to the sandbox's pool at teardown).
    let nsfd: FD
    /// The run's link out and its filter, when its request has a network policy.
    let network: NetworkAttachment?
    var pid: pid_t = 0
    /// The init's pidfd: closed in `teardown()` under `stopState`'s lock, which
    /// `stop(reason:)` signals through (so not an `FD`).
    var pidfd: Int32 = -1
    /// No packet went through the run's network namespace (it may be reused).
    var netQuiet = false
    var launchNs: Int64 = 0
    /// When preparing began, the cgroup existed, and the scratch was ready (debug log).
    var prepNs: (start: Int64, cgroup: Int64, scratch: Int64) = (0, 0, 0)
    var launchError: String?
    /// Set when the run was forked from a warm template: its modules and resident size.
    var warmUsed: (template: String, shared: Int64)?
    var lastReadWasEOF = false
    /// The stop reason, set by `stop(reason:)` from another thread, and the init's
    /// pidfd while it may be signalled (closed under the same lock in `teardown()`).
    let stopState = Mutex<(reason: String?, cancelled: Bool, pidfd: Int32)>((nil, false, -1))
    /// Set by `stop(reason:)`; the supervisor ends the run at once.
    var stopReason: String? { stopState.withLock { $0.reason } }

    /// Asks the supervisor to end the run: a service shutdown (status `interrupted`),
    /// or a client's cancellation (`cancelled`). The init is killed through its pidfd,
    /// which wakes the supervisor's epoll; before the launch, the launch does it.
    func stop(reason: String, cancelled: Bool = false) {
        stopState.withLock { s in
            guard s.reason == nil else { return }
            s.reason = reason
            s.cancelled = cancelled
            if s.pidfd >= 0 { _ = sp_pidfd_send_signal(s.pidfd, SIGKILL) }
        }
    }

    /// A session's interpreter: its cgroup and scratch outlive this process tree (kept
    /// at teardown), and its stdin is the agent's control socket.
    let hold: SessionHold?

    init(sandbox: Sandbox, request: ExecutionRequest, id: String, events: RunEvents?, hold: SessionHold? = nil) throws {
        self.sandbox = sandbox
        self.request = request
        self.id = id
        self.events = events
        self.hold = hold
        let root = request.rootfs == "/" ? "" : request.rootfs
        guard access(root + request.python, X_OK) == 0 else {
            throw SandboxError(.invalid, "interpreter \(request.python) is not executable in root \(request.rootfs)", errno: errno)
        }
        // Fail closed: no run without its seccomp filter.
        guard SeccompPolicy.program.pointer != nil else {
            throw SandboxError(.setup, "the seccomp filter could not be built (libseccomp)", errno: 0)
        }
        let t0 = monotonicNanos()
        backend = try Cgroups.shared()
        let limits = request.limits
        // Without a kept scratch (the CLI, a cold service), making one (copy, loop
        // device, mount) is the longest step: it runs on a helper thread meanwhile.
        let code = Array(request.code.utf8)
        let prep = hold == nil ? ScratchPrep(sandbox: sandbox, size: limits.scratchBytes, code: code, fileName: request.runtime.fileName,
                                             files: request.files) : nil
        if let hold {
            run = hold.cgroup
            prepNs = (t0, t0, 0)
        } else {
            do {
                run = try sandbox.takeCgroup(backend, name: RunName.make(id: id), limits: Self.cgroupLimits(limits))
                prepNs = (t0, monotonicNanos(), 0)
            } catch {
                if case .success(let (s, m))? = prep?.wait() {
                    close(m)
                    sandbox.recycle(s)
                }
                throw error
            }
        }
        func pipe() -> (FD, FD) {
            var fds: [Int32] = [-1, -1]
            _ = sp_pipe_cloexec(&fds)
            return (FD(fds[0]), FD(fds[1]))
        }
        (stdoutR, stdoutW) = pipe()
        (stderrR, stderrW) = pipe()
        (execR, execW) = pipe()
        (reportR, reportW) = pipe()
        (releaseR, releaseW) = pipe()
        (metricsR, metricsW) = pipe()
        for fd in [stdoutR, stderrR, execR, reportR, metricsR] { _ = fcntl(fd.raw, F_SETFL, O_NONBLOCK) }
        // The program may open its pipes again by path (/dev/stdout, SANDPIT_METRICS=/dev/fd/3),
        // which checks the pipe's owner: the run's user.
        for fd in [stdoutW, stderrW, metricsW] { _ = fchown(fd.raw, sandbox.settings.uid, sandbox.settings.gid) }
        // A run with network gets a namespace of its own (never one kept for reuse);
        // a session's interpreter has none (loopback only).
        let policy = hold == nil ? request.network : nil
        nsfd = FD(policy != nil ? sp_new_netns() : sandbox.takeNetns())
        if let policy {
            do {
                guard nsfd.isValid else { throw SandboxError(.setup, "network: no network namespace", errno: 0) }
                network = try NetworkAttachment.attach(netns: nsfd.raw, policy: policy, settings: sandbox.settings.network,
                                                       logger: sandbox.logger)
            } catch {
                if case .success(let (s, m))? = prep?.wait() {
                    close(m)
                    sandbox.recycle(s)
                }
                try? backend.remove(run)
                throw error
            }
        } else {
            network = nil
        }
        if let hold {
            stdinFD = FD(fcntl(hold.control, F_DUPFD_CLOEXEC, 3))
            scratch = hold.scratch
            scratchMount = FD(try scratch.mountForRun())
            prepNs.scratch = monotonicNanos()
            return
        }
        let memfd = sp_memfd("sandpit-stdin")
        if memfd >= 0 && !request.stdin.isEmpty {
            _ = request.stdin.withUnsafeBytes { write(memfd, $0.baseAddress, $0.count) }
            lseek(memfd, 0, SEEK_SET)
        }
        stdinFD = FD(memfd)
        switch prep!.wait() {
        case .success(let (s, m)):
            scratch = s
            scratchMount = FD(m)
            prepNs.scratch = prep!.readyNs
        case .failure(let error):
            // (the descriptors made so far close as they are released)
            try? backend.remove(run)
            throw error
        }
    }

    /// The run cgroup's limits for `limits` (its tasks limit counts the init too).
    static func cgroupLimits(_ limits: RunLimits) -> CgroupLimits {
        var cg = CgroupLimits(memoryBytes: limits.memoryBytes, pidsMax: limits.pids + 1)
        if let cores = limits.cpuCores { cg.cpuQuotaUsec = UInt64(max(1000, cores * 100_000)) }
        return cg
    }

    /// BLAS/OpenMP pools sized from the run's CPU and task limits, so that
    /// `import numpy` neither oversubscribes the CPU quota nor hits pids.max.
    static func threadCount(limits: RunLimits) -> Int {
        var n = onlineCPUs
        if let c = limits.cpuCores { n = min(n, max(1, Int(c.rounded(.up)))) }
        n = min(n, max(1, Int(limits.pids / 8)))
        return n
    }

    func environment() -> [String] {
        let t = Self.threadCount(limits: request.limits)
        return ["PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/work", "LANG=C.UTF-8", "TMPDIR=/tmp"]
            + request.runtime.environment
            + ["OPENBLAS_NUM_THREADS=\(t)", "OMP_NUM_THREADS=\(t)", "MKL_NUM_THREADS=\(t)",
               "SANDPIT_METRICS=\(CustomMetrics.path)"]
            + (request.richResults ? ["MPLBACKEND=Agg"] : [])
    }

    func start() {
        let s = sandbox.settings
        let arena = CArena()
        let plan = RootPlan(newRoot: s.stateDirectory + "/root", sourceRoot: request.rootfs,
                            extraEtc: request.runtime.etcEntries, view: sandbox.launcher?.view,
                            scratchMountFD: scratchMount.raw,
                            uid: s.uid, gid: s.gid, hostname: s.hostname,
                            shmBytes: min(64 << 20, request.limits.memoryBytes / 2), network: network != nil)
        let ops: [sp_mount_op] = plan.ops.map { op in
            var c = sp_mount_op()
            c.kind = op.kind.rawValue
            c.flags = op.flags
            c.src = op.src.map { arena.string($0) }
            c.dst = arena.string(op.dst)
            c.data = op.data.isEmpty ? nil : arena.bytes(op.data)
            c.datalen = op.data.count
            c.mode = op.mode
            c.dev = UInt(op.dev)
            c.uid = op.uid
            c.gid = op.gid
            c.fd = op.fd
            return c
        }
        let lim = request.limits
        // (a session's interpreter lives across executions: its CPU limit is per execution,
        // enforced by the supervisor alone)
        let cpuRlimit = hold == nil ? UInt64(lim.cpuSeconds.rounded(.up)) + 1 : UInt64.max - 1
        let rlimits: [sp_rlimit] = [
            sp_rlimit(resource: Int32(RLIMIT_CORE.rawValue), soft: 0, hard: 0),
            sp_rlimit(resource: Int32(RLIMIT_NOFILE.rawValue), soft: 1024, hard: 1024),
            sp_rlimit(resource: Int32(RLIMIT_FSIZE.rawValue), soft: lim.scratchBytes, hard: lim.scratchBytes),
            sp_rlimit(resource: Int32(RLIMIT_STACK.rawValue), soft: 8 << 20, hard: 8 << 20),
            // Backstop only: the supervisor enforces the CPU limit on the whole group.
            sp_rlimit(resource: Int32(RLIMIT_CPU.rawValue), soft: cpuRlimit, hard: cpuRlimit + 1),
        ]
        // (rich results: the same file and arguments, run by the one-shot agent)
        let argv = request.richResults
            ? [request.runtime.interpreter, "-s", "-c", SessionAgent.oneShot, request.runtime.programPath] + request.args
            : request.runtime.argv(request.args)
        var spec = sp_launch_spec()
        spec.cgroup_fd = run.directoryFD
        spec.cgroup_task_files = run.taskFiles.isEmpty ? nil
            : UnsafePointer(UnsafeMutableRawPointer(arena.stringArray(run.taskFiles)).assumingMemoryBound(to: UnsafePointer<CChar>?.self))
        // A prepared network namespace (lo already up) is joined instead of created.
        spec.net_fd = nsfd.raw
        spec.ns_flags = nsfd.isValid ? sp_sandbox_ns_flags() & ~UInt64(0x4000_0000) : sp_sandbox_ns_flags()  // CLONE_NEWNET
        spec.new_cgroup_ns = 1
        spec.hostname = arena.string(s.hostname)
        spec.loopback_up = nsfd.isValid ? 0 : 1
        spec.new_root = arena.string(plan.newRoot)
        spec.root_tmpfs_options = arena.string("mode=755,size=1m,nr_inodes=512")
        spec.ops = UnsafePointer(arena.array(ops))
        spec.nops = ops.count
        spec.exe = arena.string(request.runtime.interpreter)
        spec.argv = UnsafePointer(arena.stringArray(argv))
        spec.envp = UnsafePointer(arena.stringArray(environment()))
        spec.cwd = arena.string("/work")
        spec.uid = s.uid
        spec.gid = s.gid
        spec.rlimits = UnsafePointer(arena.array(rlimits))
        spec.nrlimits = rlimits.count
        let prog = SeccompPolicy.program
        spec.filter = prog.pointer
        spec.filter_len = UInt16(prog.instructions)
        spec.last_cap = sp_last_cap()
        spec.stdin_fd = stdinFD.raw
        spec.stdout_fd = stdoutW.raw
        spec.stderr_fd = stderrW.raw
        spec.exec_fd = execW.raw
        spec.report_fd = reportW.raw
        spec.release_fd = releaseR.raw
        spec.metrics_fd = metricsW.raw

        launchNs = monotonicNanos()
        var fd: Int32 = -1
        let r = withExtendedLifetime(arena) { () -> pid_t in
            if let pool = sandbox.warm, !request.richResults, let t = pool.pick(request) {
                var shared: Int64 = 0
                let r = pool.launch(t, spec: &spec, pidfd: &fd, shared: &shared)
                if r > 0 { warmUsed = (t.spec.description, shared) }
                // Not ready, or gone before it received the spec: this run starts cold.
                if r != -EAGAIN && r != -EPIPE { return r }
                sandbox.logger.debug("run \(id): warm template \(t.spec) unavailable (\(String(cString: strerror(-r)))); cold start")
            }
            if let l = sandbox.launcher { return l.launch(&spec, pidfd: &fd) }
            return sp_launch(&spec, &fd)
        }
        for f in [stdinFD, stdoutW, stderrW, execW, reportW, releaseR, metricsW, scratchMount] { f.close() }
        if r < 0 {
            launchError = "clone3: \(String(cString: strerror(-r)))"
            return
        }
        pid = r
        pidfd = fd
        stopState.withLock { s in
            s.pidfd = fd
            if s.reason != nil { _ = sp_pidfd_send_signal(fd, SIGKILL) }  // stopped before the launch
        }
        if !nsfd.isValid { nsfd.reset(open("/proc/\(r)/ns/net", O_RDONLY | O_CLOEXEC)) }
    }
}
