import CSandpit
import CgroupKit
import Foundation
import Synchronization

/// What a session's interpreter is started with besides the ordinary run's parts: its
/// cgroup and scratch (the session's, kept across interpreters) and the agent's
/// control socket (given as the interpreter's stdin).
struct SessionHold {
    let scratch: Scratch
    let cgroup: RunCgroup
    let control: Int32
}

/// How a session is made.
public struct SessionOptions: Sendable {
    public var name: String
    /// Memory, tasks, scratch, output and CPU cores hold for the session as a whole (its
    /// cgroup and scratch); wall and CPU seconds are each execution's defaults.
    public var limits = RunLimits()
    public var rootfs = "/"
    public var python = "/usr/bin/python3"
    /// Seconds a SIGINT'ed cell has to give control back before the interpreter is
    /// restarted.
    public var interruptGrace: Double = 2

    public init(name: String) { self.name = name }
}

/// Why a session refused an operation: it is busy or closed, it could not be made or
/// restarted, or (files) the path or the file is not acceptable.
public struct SessionError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable { case busy, closed, failed, invalidPath, notFound, notAFile, tooLarge, noSpace, io }
    public let code: Code
    public let what: String
    public init(_ code: Code, _ what: String) {
        self.code = code
        self.what = what
    }
    public var description: String { what }
}

/// A session's state as `GET /sessions/{id}` shows it.
public enum SessionState: String, Sendable {
    /// The interpreter waits for code.
    case ready
    /// A cell runs.
    case busy
    /// Idle and frozen by the cgroup freezer.
    case frozen
    /// No interpreter (it died or was interrupted): the next execution starts one.
    case stopped
    case closed
}

/// One start of a session's interpreter: the sandbox process tree and its channel.
final class Interpreter {
    let execution: Execution
    let ctl: FD
    /// The interpreter's host pid and pidfd (SIGINT goes through it).
    let pid: pid_t
    let pidfd: FD
    let python: String
    var alive = true

    init(execution: Execution, ctl: FD, pid: pid_t, pidfd: FD, python: String) {
        self.execution = execution
        self.ctl = ctl
        self.pid = pid
        self.pidfd = pidfd
        self.python = python
    }

    /// Kills the whole tree (the init's death ends its pid namespace) and frees what
    /// the start made; the session's cgroup and scratch stay.
    func end() {
        execution.stop(reason: "the session's interpreter ended")
        execution.teardown()
        ctl.close()
        pidfd.close()
        alive = false
    }
}

/// Counters of a session before and after one execution.
struct SessionSnapshot {
    var cgroup: CgroupStats
    var io: (read: UInt64, write: UInt64, cancelled: UInt64)?
    var net: StatParse.NetDevCounters?
}

/// A named sandbox that keeps a Python interpreter waiting for code: its own cgroup
/// (the limits of the whole session, and the counters each execution is measured
/// from), scratch (files persist), namespaces, uid and seccomp filter — the same
/// sandbox as a run's. Executions run one at a time in one `__main__` namespace.
///
/// Blocking methods (`*Blocking`) run on the caller's thread; the async ones move them
/// to a thread of their own, never Swift's cooperative pool.
public final class Session: @unchecked Sendable {
    public let id: String
    public let options: SessionOptions
    public let createdAt: Date
    let sandbox: Sandbox
    let backend: any CgroupBackend
    let cgroup: RunCgroup
    let scratch: Scratch

    private struct Status {
        var busy = false
        /// An execution holds `busy` (others wait for a freeze, thaw or restart to end).
        var executing = false
        var frozen = false
        var closed = false
        var executions = 0
        var restarts = 0
        var interpreterUp = false
        var python = ""
        /// Sums of the executions' deltas (block I/O and network are only counted
        /// during executions).
        var totals = Totals()
        /// The running cell's init, for close() to kill it.
        var runningInit: Execution?
    }

    struct Totals {
        var blockRead: Int64 = 0, blockWrite: Int64 = 0, netRx: Int64 = 0, netTx: Int64 = 0
        var peak: Int64 = 0
        var lastThawMs: Double?
    }

    private let status = Mutex(Status())
    /// Set by `cancelCell(reason:)`: the running cell is interrupted as by a limit.
    private let cancelRequest = Mutex<String?>(nil)
    /// Touched only by the thread that holds `busy`.
    private var interpreter: Interpreter?
    private var peakMeter: PeakMeter?
    private var peakChecked = false

    init(sandbox: Sandbox, id: String, options: SessionOptions) throws(SessionError) {
        self.sandbox = sandbox
        self.id = id
        self.options = options
        createdAt = Date()
        do {
            backend = try Cgroups.shared()
        } catch {
            throw SessionError(.failed, "cgroups: \(error)")
        }
        do {
            cgroup = try backend.createRun(name: RunName.make(id: id), limits: Execution.cgroupLimits(options.limits))
        } catch {
            throw SessionError(.failed, "session cgroup: \(error)")
        }
        do {
            scratch = try Scratch.make(stateDirectory: sandbox.settings.stateDirectory, size: options.limits.scratchBytes,
                                       uid: sandbox.settings.uid, gid: sandbox.settings.gid)
        } catch {
            try? backend.remove(cgroup)
            throw SessionError(.failed, "session scratch: \(error)")
        }
        do {
            try startInterpreter()
        } catch {
            try? backend.remove(cgroup)
            scratch.release()
            throw error
        }
    }

    // MARK: state

    public var state: SessionState { status.withLock { Self.state(of: $0, countBusy: true) } }

    private static func state(of s: Status, countBusy: Bool) -> SessionState {
        if s.closed { return .closed }
        if s.busy && countBusy { return .busy }
        if s.frozen { return .frozen }
        return s.interpreterUp ? .ready : .stopped
    }

    public var executions: Int { status.withLock { $0.executions } }
    public var restarts: Int { status.withLock { $0.restarts } }
    public var pythonVersion: String { status.withLock { $0.python } }
    /// Milliseconds the last thaw took, when the session was ever thawed.
    public var lastThawMs: Double? { status.withLock { $0.totals.lastThawMs } }

    /// The session's cgroup directories (tests: they must be gone after close).
    public var cgroupDirectories: [String] { cgroup.directories }

    /// Host pids of the session's tasks (tests).
    public var processes: [Int32] { backend.processes(cgroup) }

    /// The session's totals as a JSON object: the counters of its cgroup now (CPU,
    /// memory, tasks) and the sums of its executions' I/O.
    public func totalsJSON(afterExecution: Bool = false) -> String {
        let stats = backend.stats(cgroup, [.cpu, .memory, .pids])
        let (s, st) = status.withLock { ($0, Self.state(of: $0, countBusy: !afterExecution)) }
        var o: [String: JSONValue] = [
            "id": .string(id), "name": .string(options.name), "state": .string(st.rawValue),
            "executions": .number(Double(s.executions)), "restarts": .number(Double(s.restarts)),
            "block_io_read": .number(Double(s.totals.blockRead)), "block_io_write": .number(Double(s.totals.blockWrite)),
            "network_io_rx": .number(Double(s.totals.netRx)), "network_io_tx": .number(Double(s.totals.netTx)),
            "memory_peak": .number(Double(s.totals.peak)),
        ]
        if let u = stats.cpu.userUsec { o["cpu_user_time"] = .number(Double(u) / 1e6) }
        if let u = stats.cpu.systemUsec { o["cpu_system_time"] = .number(Double(u) / 1e6) }
        if let m = stats.memory.currentBytes { o["memory_usage"] = .number(Double(m)) }
        if let p = stats.pids.current { o["pids_current"] = .number(Double(max(1, p) - 1)) }
        return JSONValue.object(o).text
    }

    /// Takes the session for one operation: `.busy` when an execution holds it; a
    /// freeze, thaw or restart in progress is waited for (they are short).
    private func acquire(execution: Bool = false) throws(SessionError) {
        while true {
            let taken = try status.withLock { (s: inout Status) throws(SessionError) -> Bool in
                if s.closed { throw SessionError(.closed, "the session is closed") }
                if s.executing { throw SessionError(.busy, "an execution of this session is in progress") }
                if s.busy { return false }
                s.busy = true
                s.executing = execution
                return true
            }
            if taken { return }
            usleep(1000)
        }
    }

    private func releaseBusy() {
        status.withLock {
            $0.busy = false
            $0.executing = false
        }
    }

    // MARK: interpreter

    private func startInterpreter() throws(SessionError) {
        var sv: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &sv) == 0 else {
            throw SessionError(.failed, "socketpair: \(String(cString: strerror(errno)))")
        }
        let ours = FD(sv[0])
        defer { Glibc.close(sv[1]) }
        var req = ExecutionRequest(code: "")
        req.name = options.name
        req.limits = options.limits
        req.rootfs = options.rootfs
        req.runtime = Runtime(name: "python3-session", interpreter: options.python, arguments: ["-s", "-c", SessionAgent.source],
                              fileName: "", environment: Runtime.python3.environment + ["MPLBACKEND=Agg"],
                              etcEntries: Runtime.python3.etcEntries)
        let e: Execution
        do {
            e = try Execution(sandbox: sandbox, request: req, id: id, events: nil,
                              hold: SessionHold(scratch: scratch, cgroup: cgroup, control: sv[1]))
        } catch {
            throw SessionError(.failed, "session sandbox: \(error)")
        }
        e.start()
        if let err = e.launchError {
            e.teardown()
            throw SessionError(.failed, "session launch failed: \(err)")
        }
        _ = fcntl(ours.raw, F_SETFL, O_NONBLOCK)
        // The agent's first frame says it is ready; a failed set-up reports or dies first.
        var frame = FrameReader()
        let deadline = monotonicNanos() + 60_000_000_000
        var ready: JSONValue?
        var stderr = Capture(cap: 64 << 10)
        while ready == nil && monotonicNanos() < deadline {
            var fds = [pollfd(fd: ours.raw, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: e.pidfd, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: e.reportR.raw, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: e.stderrR.raw, events: Int16(POLLIN), revents: 0)]
            _ = poll(&fds, 4, 100)
            if fds[3].revents != 0 { _ = stderr.drain(e.stderrR.raw) }
            if fds[0].revents != 0 {
                switch frame.read(ours.raw) {
                case .frame(let v): ready = v
                case .eof, .invalid: break
                case .none: continue
                }
                if ready == nil { break }
            }
            if fds[1].revents != 0 || fds[2].revents != 0 { break }
        }
        guard let r = ready, r["ready"] != nil else {
            _ = stderr.drain(e.stderrR.raw)
            e.stop(reason: "the session's interpreter did not start")
            e.teardown()
            let text = String(decoding: stderr.bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            throw SessionError(.failed, "the session's interpreter did not start" + (text.isEmpty ? "" : ": " + String(text.suffix(2000))))
        }
        let children = SysFile.read("/proc/\(e.pid)/task/\(e.pid)/children") ?? ""
        guard let pid = children.split(separator: " ").first.flatMap({ Int32($0) }) else {
            e.stop(reason: "no interpreter")
            e.teardown()
            throw SessionError(.failed, "the session's interpreter is not the init's child")
        }
        let pfd = sp_pidfd_open(pid)
        interpreter = Interpreter(execution: e, ctl: ours, pid: pid, pidfd: FD(pfd), python: r["python"]?.stringValue ?? "")
        status.withLock {
            $0.interpreterUp = true
            $0.python = r["python"]?.stringValue ?? ""
        }
        if !peakChecked {
            peakChecked = true
            peakMeter = backend.peakMeter(cgroup)
        }
    }

    private func endInterpreter() {
        interpreter?.end()
        interpreter = nil
        status.withLock { $0.interpreterUp = false }
    }

    // MARK: freezer

    /// Freezes the idle session's tasks (no CPU until the next request). False when it
    /// is busy, closed, already frozen, or the freezer failed.
    @discardableResult
    public func freeze() -> Bool {
        do { try acquire() } catch { return false }
        defer { releaseBusy() }
        guard !status.withLock({ $0.frozen }) else { return false }
        do {
            try backend.setFrozen(cgroup, true)
        } catch {
            sandbox.logger.warning("session \(id): freeze failed: \(error)")
            try? backend.setFrozen(cgroup, false)
            return false
        }
        status.withLock { $0.frozen = true }
        return true
    }

    /// Thaws a frozen session (the caller holds `busy`); the latency is kept.
    private func thawIfFrozen() {
        guard status.withLock({ $0.frozen }) else { return }
        let t0 = monotonicNanos()
        do {
            try backend.setFrozen(cgroup, false)
        } catch {
            sandbox.logger.error("session \(id): thaw failed: \(error); restarting its interpreter")
            endInterpreter()
        }
        let ms = Double(monotonicNanos() - t0) / 1e6
        status.withLock {
            $0.frozen = false
            $0.totals.lastThawMs = ms
        }
    }

    /// Thaws a frozen session without running anything (a file request, say).
    public func thaw() {
        do { try acquire() } catch { return }
        thawIfFrozen()
        releaseBusy()
    }

    // MARK: restart and close

    /// A fresh interpreter; the files stay.
    public func restartBlocking() throws(SessionError) {
        try acquire()
        defer { releaseBusy() }
        thawIfFrozen()
        endInterpreter()
        status.withLock { $0.restarts += 1 }
        try startInterpreter()
    }

    /// Ends the session: kills its tasks (a running cell ends as `interrupted`), removes
    /// its cgroup, releases its scratch. Idempotent.
    public func closeBlocking(reason: String = "the session was closed") {
        let (first, running) = status.withLock { s -> (Bool, Execution?) in
            if s.closed { return (false, nil) }
            s.closed = true
            return (true, s.busy ? s.runningInit : nil)
        }
        guard first else { return }
        running?.stop(reason: reason)
        // Wait for the operation in progress to give the session up (none can start now).
        while status.withLock({ $0.busy }) { usleep(2000) }
        if status.withLock({ $0.frozen }) { try? backend.setFrozen(cgroup, false) }
        endInterpreter()
        if !backend.processes(cgroup).isEmpty { try? backend.kill(cgroup) }
        do { try backend.remove(cgroup) } catch { sandbox.logger.error("session \(id): \(error)") }
        scratch.release()
        status.withLock { $0.frozen = false }
    }

    /// Interrupts the running execution at a client's request (it ends `cancelled`; the
    /// session stays). Nothing when none runs.
    public func cancelCell(reason: String) {
        cancelRequest.withLock { $0 = reason }
    }

    // MARK: async faces

    /// Runs `body` on a thread of its own and returns its value.
    static func offPool<T: Sendable>(_ sandbox: Sandbox, _ body: @escaping @Sendable () -> T) async -> T {
        sandbox.begin()
        defer { sandbox.end() }
        return await withCheckedContinuation { (c: CheckedContinuation<T, Never>) in
            let t = Thread { c.resume(returning: body()) }
            t.stackSize = 1 << 20
            t.start()
        }
    }

    /// One execution. `events`, when given, receives `started`, the output as it comes,
    /// `limit`, then the result; then its streams end.
    public func execute(code: String, stdin: String = "", wallSeconds: Double? = nil, cpuSeconds: Double? = nil,
                        events: RunEvents? = nil) async throws(SessionError) -> ExecutionResult {
        let r: Result<ExecutionResult, SessionError> = await Self.offPool(sandbox) { [self] in
            do throws(SessionError) {
                return .success(try executeBlocking(code: code, stdin: stdin, wallSeconds: wallSeconds, cpuSeconds: cpuSeconds, events: events))
            } catch {
                return .failure(error)
            }
        }
        if case .success(let result) = r { events?.emit(.result(result)) }
        events?.finish()
        return try r.get()
    }

    public func restart() async throws(SessionError) {
        let r: Result<Void, SessionError> = await Self.offPool(sandbox) { [self] in
            do throws(SessionError) { try restartBlocking(); return .success(()) } catch { return .failure(error) }
        }
        try r.get()
    }

    /// `freeze()` off the cooperative pool.
    public func freezeIdle() async -> Bool {
        await Self.offPool(sandbox) { [self] in freeze() }
    }

    /// `thaw()` off the cooperative pool.
    public func thawIdle() async {
        await Self.offPool(sandbox) { [self] in thaw() }
    }

    public func close(reason: String = "the session was closed") async {
        await Self.offPool(sandbox) { [self] in closeBlocking(reason: reason) }
    }

    public static func open(sandbox: Sandbox, id: String = Sandbox.newID(), options: SessionOptions) async throws(SessionError) -> Session {
        let r: Result<Session, SessionError> = await offPool(sandbox) {
            do throws(SessionError) { return .success(try Session(sandbox: sandbox, id: id, options: options)) } catch { return .failure(error) }
        }
        return try r.get()
    }

    // MARK: one execution

    private func snapshot(_ ip: Interpreter?) -> SessionSnapshot {
        var snap = SessionSnapshot(cgroup: backend.stats(cgroup, [.cpu, .memory, .pids]))
        guard let ip else { return snap }
        let initPid = ip.execution.pid
        var io = SysFile.read("/proc/\(initPid)/io").flatMap(StatParse.procIO)
        if ip.alive, let p = SysFile.read("/proc/\(ip.pid)/io").flatMap(StatParse.procIO), let i = io {
            io = (i.readBytes + p.readBytes, i.writeBytes + p.writeBytes, i.cancelledWriteBytes + p.cancelledWriteBytes)
        }
        snap.io = io.map { ($0.readBytes, $0.writeBytes, $0.cancelledWriteBytes) }
        snap.net = SysFile.read("/proc/\(initPid)/net/dev").flatMap(StatParse.netDev)
        if snap.net == nil { snap.net = ip.execution.netDevInNamespace() }
        return snap
    }

    /// Runs one cell and measures it as the session cgroup's counters after minus
    /// before. Throws `.busy` / `.closed`; every other failure is a result.
    public func executeBlocking(code: String, stdin: String = "", wallSeconds: Double? = nil, cpuSeconds: Double? = nil,
                                events: RunEvents? = nil) throws(SessionError) -> ExecutionResult {
        try acquire(execution: true)
        cancelRequest.withLock { $0 = nil }
        sandbox.sessionCells.withLock { $0[id] = self }
        defer {
            sandbox.sessionCells.withLock { _ = $0.removeValue(forKey: id) }
            releaseBusy()
        }
        let index = status.withLock { s -> Int in
            s.executions += 1
            return s.executions
        }
        var result = ExecutionResult(containerID: id, containerName: options.name, startedAt: Date())
        result.executionIndex = Int64(index)
        var lim = options.limits
        if let w = wallSeconds { lim.wallSeconds = w }
        if let c = cpuSeconds { lim.cpuSeconds = c }
        thawIfFrozen()
        if interpreter == nil {
            do throws(SessionError) {
                status.withLock { $0.restarts += 1 }
                try startInterpreter()
            } catch {
                result.status = .internalError
                result.error = error.what
                result.sessionTotals = totalsJSON()
                return result
            }
        }
        let ip = interpreter!
        status.withLock { $0.runningInit = ip.execution }
        defer { status.withLock { $0.runningInit = nil } }
        let e = ip.execution
        let monitor = backend.monitor(cgroup)
        let before = snapshot(ip)
        let resetPeak = peakMeter?.reset() ?? false
        var sampledPeak = monitor.memoryCurrentBytes() ?? 0
        var maxTasks = monitor.pidsCurrent() ?? 0
        var out = Capture(cap: lim.outputBytes), err = Capture(cap: lim.outputBytes)
        var metrics = MetricsReader()
        var frame = FrameReader()
        // The request frame (a blocking write on a non-blocking socket: retried on EAGAIN).
        let body = Array(JSONValue.object(["code": .string(code), "stdin": .string(stdin)]).text.utf8)
        var msg = withUnsafeBytes(of: UInt32(body.count).bigEndian) { Array($0) } + body
        let t0 = monotonicNanos()
        var reply: JSONValue?
        var died = false
        var protocolError: String?
        var killed: Execution.KillReason?
        var sigintAt: Int64?
        var killedHard = false
        let wallNs = Int64(lim.wallSeconds * 1e9)
        let cpuLimitUsec = UInt64(lim.cpuSeconds * 1e6)
        let cpuBase = before.cgroup.cpu.usageUsec ?? 0
        let graceNs = Int64(options.interruptGrace * 1e9)
        let ep = epoll_create1(Int32(EPOLL_CLOEXEC))
        defer { Glibc.close(ep) }
        for fd in [e.stdoutR.raw, e.stderrR.raw, e.metricsR.raw, ip.ctl.raw, e.reportR.raw, e.pidfd, ip.pidfd.raw] where fd >= 0 {
            var ev = epoll_event()
            ev.events = EPOLLIN.rawValue | EPOLLHUP.rawValue
            ev.data.fd = fd
            _ = epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev)
        }
        var wantOut = false
        func interrupt(_ why: Execution.KillReason) {
            guard killed == nil else { return }
            killed = why
            events?.emit(.limitHit(why.eventName))
            sigintAt = monotonicNanos()
            _ = sp_pidfd_send_signal(ip.pidfd.raw, SIGINT)
        }
        func sendSome() {
            while !msg.isEmpty {
                let n = msg.withUnsafeBytes { write(ip.ctl.raw, $0.baseAddress, $0.count) }
                if n > 0 { msg.removeFirst(n); continue }
                if n < 0 && errno == EINTR { continue }
                if n < 0 && errno == EAGAIN {
                    if !wantOut {
                        wantOut = true
                        var ev = epoll_event()
                        ev.events = EPOLLIN.rawValue | EPOLLOUT.rawValue | EPOLLHUP.rawValue
                        ev.data.fd = ip.ctl.raw
                        _ = epoll_ctl(ep, EPOLL_CTL_MOD, ip.ctl.raw, &ev)
                    }
                    return
                }
                died = true  // EPIPE: the interpreter is gone
                return
            }
            if wantOut {
                wantOut = false
                var ev = epoll_event()
                ev.events = EPOLLIN.rawValue | EPOLLHUP.rawValue
                ev.data.fd = ip.ctl.raw
                _ = epoll_ctl(ep, EPOLL_CTL_MOD, ip.ctl.raw, &ev)
            }
        }
        sendSome()
        events?.emit(.started(id: id, at: result.startedAt))
        let emitOut: ((ArraySlice<UInt8>) -> Void)? = events.map { ev in { if ev.hasSubscribers { ev.emit(.output(.stdout, Array($0))) } } }
        let emitErr: ((ArraySlice<UInt8>) -> Void)? = events.map { ev in { if ev.hasSubscribers { ev.emit(.output(.stderr, Array($0))) } } }
        var cancelReason: String?
        var ready = [epoll_event](repeating: epoll_event(), count: 8)
        var nextSample = t0
        var thrash = Execution.ThrashWatch(lastHits: monitor.memoryLimitHits() ?? 0)
        while reply == nil && !died {
            let now = monotonicNanos()
            if killed == nil, e.stopReason != nil {
                killed = .stopped
                killedHard = true
                died = true
                break
            }
            if killed == nil, let why = cancelRequest.withLock({ $0 }) {
                cancelReason = why
                interrupt(.cancelled)
            }
            if killed == nil && now >= t0 + wallNs { interrupt(.wallTime) }
            if now >= nextSample {
                nextSample = now + 10_000_000
                let current = monitor.memoryCurrentBytes()
                if let c = current { sampledPeak = max(sampledPeak, c) }
                if let p = monitor.pidsCurrent() { maxTasks = max(maxTasks, p) }
                if killed == nil, let u = monitor.cpuUsageUsec(), u >= cpuBase, u - cpuBase >= cpuLimitUsec { interrupt(.cpuTime) }
                // Pinned at the memory limit and still hitting it for a second (the kernel
                // reclaiming the same pages over and over instead of an OOM kill): as for a
                // run, the execution ends with memory_limit — here with its interpreter.
                if let hits = monitor.memoryLimitHits(),
                   thrash.thrashing(hits: hits, current: current ?? 0, limit: lim.memoryBytes, now: now) {
                    killed = .memoryThrash
                    killedHard = true
                    died = true
                    break
                }
            }
            if let s = sigintAt, now >= s + graceNs {
                // The cell did not give control back: the interpreter goes, the session stays.
                killedHard = true
                died = true
                break
            }
            var deadline = nextSample
            if killed == nil { deadline = min(deadline, t0 + wallNs) }
            if let s = sigintAt { deadline = min(deadline, s + graceNs) }
            let timeoutMs = Int32(max(0, min(1000, (deadline - now + 999_999) / 1_000_000)))
            let n = ready.withUnsafeMutableBufferPointer { epoll_wait(ep, $0.baseAddress, 8, timeoutMs) }
            if n < 0 && errno != EINTR { break }
            for i in 0..<max(0, Int(n)) {
                let fd = ready[i].data.fd
                if fd == e.stdoutR.raw {
                    if !out.drain(fd, fresh: emitOut) { interrupt(.output) }
                } else if fd == e.stderrR.raw {
                    if !err.drain(fd, fresh: emitErr) { interrupt(.output) }
                } else if fd == e.metricsR.raw {
                    metrics.drain(fd, now: { Double(monotonicNanos() - t0) / 1e9 })
                    if metrics.eof { _ = epoll_ctl(ep, EPOLL_CTL_DEL, fd, nil) }
                } else if fd == ip.ctl.raw {
                    if ready[i].events & EPOLLOUT.rawValue != 0 { sendSome() }
                    switch frame.read(fd) {
                    case .frame(let v): reply = v
                    case .eof: died = true
                    case .invalid(let why): protocolError = why; died = true; killedHard = true
                    case .none: break
                    }
                } else {
                    // The interpreter (or the init) is gone.
                    died = true
                }
            }
        }
        let endNs = monotonicNanos()
        var waitStatus: Int32?
        if died {
            ip.alive = false
            if !killedHard {
                // The interpreter ended by itself: the init reports its wait status once the
                // rest of the tree is gone too.
                var p = pollfd(fd: e.reportR.raw, events: Int16(POLLIN), revents: 0)
                if poll(&p, 1, 1000) > 0, let rep: sp_report = e.readRecord(e.reportR.raw), rep.kind == SP_REPORT_EXITED.rawValue {
                    waitStatus = rep.wait_status
                }
            }
            if waitStatus == nil { e.stop(reason: "the session's interpreter was ended") }
        }
        _ = out.drain(e.stdoutR.raw, fresh: emitOut)
        _ = err.drain(e.stderrR.raw, fresh: emitErr)
        if !metrics.eof { metrics.drain(e.metricsR.raw, now: { Double(monotonicNanos() - t0) / 1e9 }) }
        if let c = monitor.memoryCurrentBytes() { sampledPeak = max(sampledPeak, c) }
        if killed == nil && e.stopReason != nil { killed = .stopped }
        var afterSnap = snapshot(ip.alive ? ip : nil)
        let after = afterSnap.cgroup
        if died {
            // (the init still holds the interpreter's I/O once it has reaped it)
            let initPid = e.pid
            afterSnap.io = SysFile.read("/proc/\(initPid)/io").flatMap(StatParse.procIO).map { ($0.readBytes, $0.writeBytes, $0.cancelledWriteBytes) }
            afterSnap.net = SysFile.read("/proc/\(initPid)/net/dev").flatMap(StatParse.netDev) ?? snapshot(ip).net
        }

        // ---- the result ----
        if let r = reply, case .number(let c)? = r["exit_code"] { waitStatus = Int32(c) << 8 }
        result.output = String(decoding: out.bytes, as: UTF8.self)
        result.stdoutTruncated = out.truncated
        result.stderrTruncated = err.truncated
        result.customMetrics = metrics.summaries
        result.customMetricsRejected = metrics.rejected
        result.executionTime = max(0, Double(endNs - t0) / 1e9)
        var seen = RunObservation(stderr: String(decoding: err.bytes, as: UTF8.self))
        seen.waitStatus = waitStatus
        seen.oomKills = (after.memory.oomKills ?? 0) - min(after.memory.oomKills ?? 0, before.cgroup.memory.oomKills ?? 0)
        if let p = protocolError { seen.setupFailure = "the session's agent broke its protocol: \(p)" }
        seen.killed = killed?.observed(reason: killed == .cancelled ? cancelReason : (e.stopReason ?? "the session was closed"))
        RunOutcome.classify(seen, limits: lim, into: &result)
        if let r = reply {
            if let x = r["exception"], x != .null { result.exception = x.text }
            if let rs = r["results"], case .array(let items) = rs, !items.isEmpty { result.richResults = rs.text }
        }
        if died && reply == nil && result.error == nil {
            result.error = "the session's interpreter ended; the next execution starts a new one (variables are lost, files are kept)"
        }

        var cg = after
        if resetPeak, let p = peakMeter?.read() {
            cg.memory.peakBytes = p
            result.memoryPeakMethod = "reset"
        } else {
            cg.memory.peakBytes = sampledPeak
            result.memoryPeakMethod = "sampled"
        }
        cg.pids.peak = nil
        var counters = RunCounters(cgroup: cg, sampledMaxTasks: maxTasks)
        counters.initCPUUsec = (before.cgroup.cpu.userUsec ?? 0, before.cgroup.cpu.systemUsec ?? 0)
        if let a = afterSnap.io, let b = before.io {
            counters.io = a
            counters.initIO = (Int64(b.read), Int64(b.write) - Int64(b.cancelled))
        }
        if let a = afterSnap.net, let b = before.net {
            counters.net = (a.rxBytes &- b.rxBytes, a.txBytes &- b.txBytes)
            counters.loopback = a.loopbackBytes &- b.loopbackBytes
        }
        for w in ResultMapper.apply(counters, limits: lim, into: &result) { sandbox.logger.warning("session \(id) execution \(index): \(w)") }
        if died { endInterpreter() }
        status.withLock { s in
            s.totals.blockRead += result.blockIORead ?? 0
            s.totals.blockWrite += result.blockIOWrite ?? 0
            s.totals.netRx += result.networkIORx ?? 0
            s.totals.netTx += result.networkIOTx ?? 0
            s.totals.peak = max(s.totals.peak, result.memoryPeak ?? 0)
        }
        result.sessionTotals = totalsJSON(afterExecution: true)
        result.alerts = sandbox.settings.alertRules.matches(result)
        return result
    }
}

/// Reads the agent's frames (4-byte big-endian length, then JSON) from a non-blocking socket.
struct FrameReader {
    enum Outcome { case none, frame(JSONValue), eof, invalid(String) }
    static let maxFrame = 64 << 20
    private var buf: [UInt8] = []

    mutating func read(_ fd: Int32) -> Outcome {
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n > 0 {
                buf.append(contentsOf: chunk[0..<n])
                if let f = take() { return f }
                continue
            }
            if n == 0 { return take() ?? .eof }
            if errno == EINTR { continue }
            return take() ?? .none
        }
    }

    private mutating func take() -> Outcome? {
        guard buf.count >= 4 else { return nil }
        let len = Int(buf[0]) << 24 | Int(buf[1]) << 16 | Int(buf[2]) << 8 | Int(buf[3])
        if len > Self.maxFrame { return .invalid("a frame of \(len) bytes") }
        guard buf.count >= 4 + len else { return nil }
        let body = String(decoding: buf[4..<(4 + len)], as: UTF8.self)
        buf.removeFirst(4 + len)
        guard let v = JSONValue(text: body) else { return .invalid("a frame that is not JSON") }
        return .frame(v)
    }
}
