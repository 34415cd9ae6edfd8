import CSandpit
import CgroupKit
import Foundation
import Logging
import Synchronization

/// Runs Python programs in a sandbox: a fresh run cgroup, new namespaces, a
/// read-only root, a block-backed scratch, no capabilities, seccomp — and reads
/// the kernel's counters when the program has ended.
public final class Sandbox: Sendable {
    public let settings: SandboxSettings
    let logger: Logger
    /// Runs (and the warm-up) whose work has not finished, and the `quiesce()` calls
    /// waiting for that count to reach 0.
    let pending = Mutex<(count: Int, waiters: [CheckedContinuation<Void, Never>])>((0, []))
    let pool: ReusePool<Scratch>
    let netnsPool: ReusePool<Int32>
    /// A run cgroup made ahead (no limits, never used), renamed for the next run.
    let spareCgroups: ReusePool<RunCgroup>
    let active = ActiveRuns()
    /// Sessions whose execution is running, by session id (what `cancel(id:)` names).
    let sessionCells = Mutex<[String: Session]>([:])
    /// Ids of runs being prepared, and cancellations that came before their launch.
    let pendingCancels = Mutex<(expected: Set<String>, cancelled: [String: String])>(([], [:]))
    let launcher: Launcher?
    /// Warm templates (`settings.warmTemplates`); nil when there are none, or no launcher.
    let warm: WarmPool?

    public init(settings: SandboxSettings = SandboxSettings(), logger: Logger = Logger(label: "sandpit")) {
        self.settings = settings
        self.logger = logger
        launcher = settings.useLauncher ? Launcher(logger: logger, stateDirectory: settings.stateDirectory) : nil
        warm = settings.warmTemplates.isEmpty ? nil
            : WarmPool(specs: settings.warmTemplates, logger: logger,
                       view: settings.stateDirectory + "/view", viewEmpty: settings.stateDirectory + "/view-empty",
                       extraPath: settings.warmExtraPath)
        pool = ReusePool(capacity: max(0, settings.scratchPoolSize), dispose: { $0.release() })
        netnsPool = ReusePool(capacity: max(0, settings.netnsPoolSize), dispose: { close($0) })
        spareCgroups = ReusePool(capacity: settings.prepareAhead && settings.spareCgroup ? 1 : 0, dispose: { spare in
            if let backend = try? Cgroups.shared() { try? backend.remove(spare) }
        })
    }

    /// Starts the launcher and prepares the first run's resources on a thread of its
    /// own (a service calls this once it has set up its cgroups). `quiesce()` waits
    /// for it.
    public func warmUp() {
        begin()
        warm?.start()
        Thread {
            self.launcher?.warmUp()
            self.prepareSpare()
            self.end()
        }.start()
    }

    /// Pid of the launcher process, when one is running.
    public var launcherPid: pid_t? { launcher?.zygotePid }

    /// The warm templates and their state (empty without `warmTemplates`).
    public var warmStatus: [WarmTemplateStatus] { warm?.status ?? [] }

    /// Waits until every warm template is ready, up to `timeout` seconds; false if one
    /// is not. Blocks its thread: for tests and benchmarks, off the cooperative pool.
    public func waitForWarmTemplates(timeout: Double) -> Bool { warm?.waitReady(timeout: timeout) ?? true }

    /// Runs one request. Never throws: failures of the sandbox become a result with
    /// status `internal_error` and the reason in `error`. The blocking work runs on
    /// a dedicated thread, never on Swift's cooperative pool. The result is returned
    /// as soon as the counters are read; the run's teardown (init exit, cgroup
    /// removal, scratch release) finishes on that thread right after — `quiesce()`
    /// waits for it.
    ///
    /// `events`, when given, receives the run's events as they happen (output, samples,
    /// limits), the result last; then its streams end.
    public func run(_ request: ExecutionRequest, id: String = Sandbox.newID(), events: RunEvents? = nil) async -> ExecutionResult {
        begin()
        return await withCheckedContinuation { (cont: CheckedContinuation<ExecutionResult, Never>) in
            let thread = Thread {
                var (result, execution) = self.execute(request, id: id, events: events)
                result.alerts = self.settings.alertRules.matches(result)
                events?.emit(.result(result))
                events?.finish()
                cont.resume(returning: result)
                execution?.teardown()
                if self.settings.prepareAhead { self.prepareSpare() }
                self.end()
            }
            thread.stackSize = 1 << 20
            thread.start()
        }
    }

    /// A scratch of `size`: an emptied one from the pool when there is one, else a new one.
    func takeScratch(size: UInt64) throws(SandboxError) -> Scratch {
        if let s = pool.take(where: { $0.size == size }) { return s }
        return try Scratch.make(stateDirectory: settings.stateDirectory, size: size, uid: settings.uid, gid: settings.gid)
    }

    /// After a run: empties its scratch and keeps it for a later run, or releases it.
    func recycle(_ s: Scratch) {
        guard pool.capacity > 0 else { return s.release() }
        guard s.reset(uid: settings.uid, gid: settings.gid) else {
            logger.debug("scratch \(s.devicePath) not reused (inodes \(s.inodesInUse().map(String.init) ?? "?"), empty \(s.baselineInodes))")
            return s.release()
        }
        pool.put(s)
    }

    /// Scratches kept for later runs (tests).
    public var pooledScratches: Int { pool.count }

    /// The run cgroup `name` with `limits`: the spare one renamed, else a new one.
    func takeCgroup(_ backend: any CgroupBackend, name: String, limits: CgroupLimits) throws(CgroupError) -> RunCgroup {
        if let spare = spareCgroups.take() {
            if let run = try? backend.adopt(spare, name: name, limits: limits) { return run }
            try? backend.remove(spare)
        }
        return try backend.createRun(name: name, limits: limits)
    }

    /// A network namespace with `lo` up and nothing else in it: a kept one, else a new
    /// one; -1 if none can be made (the init then creates its own).
    func takeNetns() -> Int32 {
        if let fd = netnsPool.take() { return fd }
        let fd = sp_new_netns()
        return fd >= 0 ? fd : -1
    }

    /// After a run: a network namespace is kept for a later run only when nothing of
    /// the run can be read in it any more: no packet went through it (its `lo` counters
    /// are still 0, no IPv6 flow label lingers) and every protocol counter the next run
    /// could read is as in a brand-new namespace (a send that failed still counts, e.g.
    /// `OutNoRoutes`). Any other is closed.
    func recycleNetns(_ fd: Int32, quiet: Bool) {
        guard fd >= 0 else { return }
        if quiet && netnsPool.capacity > 0 && NetnsCounters.isPristine(fd) { netnsPool.put(fd) } else { close(fd) }
    }

    /// Prepares the next run's cgroup, scratch (the default size) and network
    /// namespace off the critical path, when none is kept.
    func prepareSpare() {
        guard !closed.withLock({ $0 }) else { return }
        launcher?.refresh()
        if netnsPool.capacity > 0 && netnsPool.count == 0 {
            let fd = sp_new_netns()
            if fd >= 0 { netnsPool.put(fd) }
        }
        if spareCgroups.capacity > 0 && spareCgroups.count == 0, let backend = try? Cgroups.shared(), backend.canAdopt,
           let cg = try? backend.createRun(name: RunName.make(id: Self.newID()), limits: CgroupLimits()) {
            spareCgroups.put(cg)
        }
        let size = RunLimits().scratchBytes
        guard pool.capacity > 0, !pool.contains(where: { $0.size == size }) else { return }
        if let s = try? Scratch.make(stateDirectory: settings.stateDirectory, size: size,
                                     uid: settings.uid, gid: settings.gid) {
            pool.put(s)
        }
    }

    /// Kills and removes run cgroups left by sandpit processes that are gone (a crash,
    /// a kill -9). Returns their names.
    @discardableResult
    public func sweepStale() -> [String] {
        guard let backend = try? Cgroups.shared() else { return [] }
        let swept = backend.sweepStale()
        if !swept.isEmpty { logger.warning("swept \(swept.count) stale run cgroup(s): \(swept.joined(separator: ", "))") }
        // Links, rules and tracked connections of runs with network whose process is gone.
        NetworkAttachment.sweep(logger: logger)
        // Half-made scratch templates of a process that died while making one (a live
        // one's is younger than a minute: mkfs takes milliseconds).
        let templates = settings.stateDirectory + "/templates"
        for name in (try? FileManager.default.contentsOfDirectory(atPath: templates)) ?? [] where name.hasSuffix(".tmp") {
            var st = stat()
            if stat(templates + "/" + name, &st) == 0, time(nil) - st.st_mtim.tv_sec > 60 { unlink(templates + "/" + name) }
        }
        // Scratch images on a filesystem without O_TMPFILE have a name for an instant
        // (`.img-XXXXXX`, unlinked right after it is made): one older than a minute is
        // a crashed process's.
        let scratch = settings.stateDirectory + "/scratch"
        for name in (try? FileManager.default.contentsOfDirectory(atPath: scratch)) ?? [] where name.hasPrefix(".img-") {
            var st = stat()
            if stat(scratch + "/" + name, &st) == 0, time(nil) - st.st_mtim.tv_sec > 60 { unlink(scratch + "/" + name) }
        }
        return swept
    }

    /// Drops the scratches kept for later runs and the prepared network namespace.
    public func releaseSpares() {
        pool.drain()
        netnsPool.drain()
        spareCgroups.drain()
    }

    /// Releases what is kept between runs (pooled scratches, the prepared network
    /// namespace) and stops the launcher. Call after `quiesce()`; later runs start
    /// them again.
    public func shutdown() {
        closed.withLock { $0 = true }
        releaseSpares()
        launcher?.stop()
        warm?.stop()
    }

    /// Set by `shutdown()`: runs still work, but nothing is prepared ahead any more.
    let closed = Mutex(false)

    deinit {
        shutdown()
    }

    /// Stops every run in progress (service shutdown after its grace period). Each
    /// ends with status `interrupted` and says why in `error`.
    public func stopAll(reason: String) {
        for e in active.all() { e.stop(reason: reason) }
    }

    /// Stops the run `id` at a client's request: it ends with status `cancelled`, its
    /// counters so far in the result. A run not started yet is stopped at its launch.
    /// False when no run of this id is in progress or about to start.
    @discardableResult
    public func cancel(id: String, reason: String = "cancelled by a client") -> Bool {
        // A session's execution: its cell is interrupted (SIGINT, then the grace).
        if let s = sessionCells.withLock({ $0[id] }) {
            s.cancelCell(reason: reason)
            return true
        }
        if let e = active.find(id) {
            e.stop(reason: reason, cancelled: true)
            return true
        }
        return pendingCancels.withLock { p in
            guard p.expected.contains(id) else { return false }
            p.cancelled[id] = reason
            return true
        }
    }

    /// Runs whose program is executing now.
    public var activeCount: Int { active.all().count }

    /// Waits until every run's teardown has finished.
    public func quiesce() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = pending.withLock { p -> Bool in
                if p.count == 0 { return true }
                p.waiters.append(c)
                return false
            }
            if now { c.resume() }
        }
    }

    func begin() { pending.withLock { $0.count += 1 } }

    /// One piece of work finished: at 0, everyone in `quiesce()` goes on.
    func end() {
        let ready = pending.withLock { p -> [CheckedContinuation<Void, Never>] in
            p.count -= 1
            guard p.count == 0 else { return [] }
            defer { p.waiters = [] }
            return p.waiters
        }
        for c in ready { c.resume() }
    }

    /// A 32-hex-digit random id (the run's container_id).
    public static func newID() -> String {
        var g = SystemRandomNumberGenerator()
        return (0..<2).map { _ in String(format: "%016llx", g.next() as UInt64) }.joined()
    }

    func execute(_ request: ExecutionRequest, id: String, events: RunEvents?) -> (ExecutionResult, Execution?) {
        pendingCancels.withLock { _ = $0.expected.insert(id) }
        defer { pendingCancels.withLock { p in p.expected.remove(id); p.cancelled[id] = nil } }
        let started = Date()
        var result = ExecutionResult(containerID: id, containerName: request.name, startedAt: started)
        let execution: Execution
        do {
            execution = try Execution(sandbox: self, request: request, id: id, events: events)
        } catch {
            result.status = .internalError
            result.success = false
            result.error = "sandbox failed: \(error)"
            logger.error("run \(id) failed before the program started: \(error)")
            return (result, nil)
        }
        active.add(execution)
        if let reason = pendingCancels.withLock({ $0.cancelled[id] }) { execution.stop(reason: reason, cancelled: true) }
        execution.start()
        var out = execution.supervise(into: result)
        if request.richResults, let bytes = try? execution.scratch.readFile(SessionAgent.resultsFile, maxBytes: 9 << 20),
           let v = JSONValue(text: String(decoding: bytes, as: UTF8.self)) {
            // (written by the program's own process: bounded, and only its own results)
            if case .array(let items)? = v["results"], !items.isEmpty { out.richResults = JSONValue.array(items).text }
            if let x = v["exception"], case .object = x { out.exception = x.text }
        }
        if !request.returnFiles.isEmpty {
            // Every task of the run is gone: its files are what it left.
            let (files, truncated) = execution.scratch.collect(request.returnFiles, maxFiles: 100, maxBytes: 10 << 20)
            out.returnedFiles = JSONValue.object(Dictionary(uniqueKeysWithValues: files.map { ($0.0, .string(Data($0.1).base64EncodedString())) })).text
            out.filesTruncated = truncated
        }
        // The breakdown, then the run's link and rules go before its result is out.
        if let n = execution.network {
            out.network = n.breakdown(netns: execution.nsfd.raw).json.text
            n.detach(logger: logger)
        }
        if let w = execution.warmUsed {
            out.start = .warm
            out.warmTemplate = w.template
            out.memoryShared = w.shared
        }
        active.remove(execution)
        return (out, execution)
    }
}

/// The executions in progress.
final class ActiveRuns: Sendable {
    private let runs = Mutex<[ObjectIdentifier: Execution]>([:])
    func add(_ e: Execution) { runs.withLock { $0[ObjectIdentifier(e)] = e } }
    func remove(_ e: Execution) { _ = runs.withLock { $0.removeValue(forKey: ObjectIdentifier(e)) } }
    func all() -> [Execution] { runs.withLock { Array($0.values) } }
    func find(_ id: String) -> Execution? { runs.withLock { $0.values.first { $0.id == id } } }
}

/// The counters of a network namespace that a program inside it can read: the
/// protocol statistics of /proc/net (snmp, snmp6, netstat), the interface counters
/// (dev, dev_snmp6/lo) and the IPv6 flow labels. Global counters (sockstat's memory,
/// /proc/net/stat/*) are the kernel's, not the namespace's, and are left out.
enum NetnsCounters {
    static let files = ["snmp", "snmp6", "netstat", "dev", "dev_snmp6/lo", "ip6_flowlabel"]

    /// The files' text, read from inside the namespace `fd`.
    static func read(_ fd: Int32) -> [UInt8]? {
        let names = files.map { strdup($0) }
        defer { names.forEach { free($0) } }
        var buf = [CChar](repeating: 0, count: 64 << 10)
        let n = names.map { UnsafePointer($0) }.withUnsafeBufferPointer { p in
            sp_read_net_files_in_ns(fd, p.baseAddress, p.count, &buf, buf.count)
        }
        guard n > 0, n < buf.count else { return nil }
        return buf[0..<n].map { UInt8(bitPattern: $0) }
    }

    /// What a namespace made as sandpit makes them (`lo` up, nothing else) shows; read
    /// from one made for the purpose, again whenever the host's IPv4 forwarding
    /// changed (a new namespace inherits it, and /proc/net/snmp shows it: `Forwarding`;
    /// the first run with network turns it on).
    static let freshCache = Mutex<(forwarding: String, counters: [UInt8]?)?>(nil)

    static var fresh: [UInt8]? {
        let forwarding = SysFile.read("/proc/sys/net/ipv4/ip_forward") ?? ""
        if let c = freshCache.withLock({ $0 }), c.forwarding == forwarding { return c.counters }
        let fd = sp_new_netns()
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        let counters = read(fd)
        freshCache.withLock { $0 = (forwarding, counters) }
        return counters
    }

    /// True when the namespace `fd` reads exactly as a brand-new one.
    static func isPristine(_ fd: Int32) -> Bool {
        guard let f = fresh, let now = read(fd) else { return false }
        return f == now
    }
}
