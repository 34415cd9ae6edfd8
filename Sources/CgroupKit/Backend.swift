#if canImport(Glibc)
import Glibc
#endif

public enum CgroupVersion: String, Sendable, Codable {
    case v1, v2
}

/// Limits in semantic units; each backend translates them into its own files.
public struct CgroupLimits: Sendable, Equatable {
    public var memoryBytes: UInt64?
    public var pidsMax: UInt64?
    /// CPU bandwidth: `quotaUsec` of CPU time per `periodUsec` of wall time.
    public var cpuQuotaUsec: UInt64?
    public var cpuPeriodUsec: UInt64 = 100_000
    /// Forbid swap where the files exist (memory.swap.max / memory.memsw.limit_in_bytes).
    public var disableSwap = true

    public init(memoryBytes: UInt64? = nil, pidsMax: UInt64? = nil, cpuQuotaUsec: UInt64? = nil) {
        self.memoryBytes = memoryBytes
        self.pidsMax = pidsMax
        self.cpuQuotaUsec = cpuQuotaUsec
    }
}

/// One run's cgroup(s): a single directory on v2, one per hierarchy on v1.
public struct RunCgroup: Sendable {
    public let name: String
    public let version: CgroupVersion
    /// Every directory created for the run (v1: one per hierarchy).
    public let directories: [String]
    /// v2: an O_DIRECTORY fd for clone3(CLONE_INTO_CGROUP); -1 on v1.
    public let directoryFD: Int32
    /// v1: files the child writes "0" into to move itself (see CSandpit).
    public let taskFiles: [String]
    /// Where to read each controller's files (v1) or the one directory (v2).
    public let controllerDirectories: [String: String]

    public func directory(for controller: String) -> String? {
        controllerDirectories[controller]
    }
}

/// One interface over cgroup v2 and v1. The cgroup root and the caller's own
/// group come from `CgroupHost`, so every path is a parameter (tests use real
/// subtrees of the running host; parsers are tested on fixtures).
public protocol CgroupBackend: Sendable {
    var version: CgroupVersion { get }
    var host: CgroupHost { get }
    /// Directories of sandpit's parent group (one per v1 hierarchy).
    var parentDirectories: [String] { get }
    /// Controllers that run cgroups get.
    var controllers: [String] { get }

    /// Creates the parent group if needed (enabling controllers, moving the caller
    /// to a leaf on v2 when its own group holds processes).
    func prepare() throws(CgroupError)
    func createRun(name: String, limits: CgroupLimits) throws(CgroupError) -> RunCgroup
    /// Whether `adopt` works here (v1: yes; v2 refuses to rename cgroups).
    var canAdopt: Bool { get }
    /// Turns `spare`, a run cgroup made ahead with no limits and never used, into the
    /// run `name` with `limits` (rename + limit writes: cheaper than mkdir on the
    /// critical path). On failure `spare` is left as it was.
    func adopt(_ spare: RunCgroup, name: String, limits: CgroupLimits) throws(CgroupError) -> RunCgroup
    func stats(_ run: RunCgroup, _ selection: StatsSelection) -> CgroupStats
    /// The run's live counters (CPU, memory, limit hits, tasks) from kept-open files,
    /// for supervision and sampling while it runs.
    func monitor(_ run: RunCgroup) -> RunMonitor
    func processes(_ run: RunCgroup) -> [Int32]
    /// Kills every process of the run cgroup and waits until it is empty.
    func kill(_ run: RunCgroup) throws(CgroupError)
    /// Removes the run cgroup (retrying while the kernel still holds dying tasks).
    func remove(_ run: RunCgroup) throws(CgroupError)
    /// Kills and removes run cgroups whose owning sandpit process is gone.
    func sweepStale() -> [String]
    /// Removes the parent group when no run uses it (best effort).
    func removeParentIfEmpty()
}

extension CgroupBackend {
    /// Every stats file of the run.
    public func stats(_ run: RunCgroup) -> CgroupStats { stats(run, .all) }
}

/// Names of run cgroups carry their owner (pid and start time) so that a sweep can
/// tell a crashed sandpit's leftovers from a live one's runs.
public enum RunName {
    public static let prefix = "run-"

    public static func make(id: String, ownerPID: Int32 = getpid(), ownerStart: UInt64? = nil) -> String {
        let start = ownerStart ?? processStartTime(ownerPID) ?? 0
        return "\(prefix)\(ownerPID)-\(start)-\(id)"
    }

    /// (pid, start time) parsed from a run cgroup name.
    public static func owner(of name: String) -> (pid: Int32, start: UInt64)? {
        guard name.hasPrefix(prefix) else { return nil }
        let parts = name.dropFirst(prefix.count).split(separator: "-", maxSplits: 2)
        guard parts.count == 3, let pid = Int32(parts[0]), let start = UInt64(parts[1]) else { return nil }
        return (pid, start)
    }

    /// Field 22 of /proc/<pid>/stat (start time in clock ticks since boot).
    public static func processStartTime(_ pid: Int32) -> UInt64? {
        guard let text = SysFile.read("/proc/\(pid)/stat"), let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 19 else { return nil }
        return UInt64(fields[19])
    }

    public static func isStale(_ name: String) -> Bool {
        guard let o = owner(of: name) else { return false }
        guard let start = processStartTime(o.pid) else { return true }
        return start != o.start
    }
}

public enum Cgroups {
    /// Picks the backend for this host: v2 when its hierarchy carries the memory and
    /// pids controllers, v1 otherwise. `SANDPIT_CGROUP=v1|v2` forces one.
    public static func backend(host: CgroupHost = .current(), parentName: String = "sandpit",
                               force: CgroupVersion? = nil) throws(CgroupError) -> any CgroupBackend {
        var choice = force
        if choice == nil, let env = getenv("SANDPIT_CGROUP") {
            choice = CgroupVersion(rawValue: String(cString: env))
        }
        let v2Usable = host.v2OwnDirectory != nil && host.v2Controllers.contains("memory")
            && host.v2Controllers.contains("pids")
        switch choice ?? (v2Usable ? .v2 : .v1) {
        case .v2:
            guard v2Usable else {
                throw CgroupError(.controllerMissing, "cgroup v2 lacks memory/pids at", path: host.v2OwnDirectory ?? "-")
            }
            return V2Backend(host: host, parentName: parentName)
        case .v1:
            guard host.v1("memory") != nil, host.v1("pids") != nil else {
                throw CgroupError(.noCgroupFilesystem, "no usable cgroup hierarchy (memory and pids) in", path: "/proc/self/mountinfo")
            }
            return V1Backend(host: host, parentName: parentName)
        }
    }

    /// The process-wide backend, detected and prepared once.
    public static func shared() throws(CgroupError) -> any CgroupBackend {
        try SharedBackend.get()
    }

    /// rmdir(2) retried while the kernel still reports EBUSY (tasks being reaped).
    static func removeDirectory(_ path: String) throws(CgroupError) {
        for attempt in 0..<2000 {
            if rmdir(path) == 0 || errno == ENOENT { return }
            if errno != EBUSY || attempt == 1999 { throw CgroupError(.busy, "rmdir", path: path, errno: errno) }
            usleep(attempt < 100 ? 100 : 1000)
        }
    }

    static func pids(_ text: String?) -> [Int32] {
        (text ?? "").split(separator: "\n").compactMap { Int32($0) }
    }
}

/// Holds the one backend of this process (detection and prepare() run once).
enum SharedBackend {
    nonisolated(unsafe) private static var value: (any CgroupBackend)?
    nonisolated(unsafe) private static let lock: UnsafeMutablePointer<pthread_mutex_t> = {
        let m = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(m, nil)
        return m
    }()

    static func get() throws(CgroupError) -> any CgroupBackend {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        if let v = value { return v }
        let b = try Cgroups.backend()
        try b.prepare()
        value = b
        return b
    }
}
