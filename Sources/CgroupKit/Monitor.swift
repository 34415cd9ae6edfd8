#if canImport(Glibc)
import Glibc
#endif

/// A run's counters while it runs, in the run's terms: CPU used, memory charged,
/// times the memory limit was hit, tasks alive. Each is read with `pread` from a
/// descriptor kept open since `CgroupBackend.monitor(_:)` (~1 µs a read, no path
/// walk); which file holds it on which cgroup version stays in CgroupKit. A counter
/// the host does not have reads as nil.
public final class RunMonitor: @unchecked Sendable {
    /// One reading of every counter.
    public struct Sample: Sendable, Equatable {
        public var cpuUsageUsec: UInt64?
        public var memoryCurrentBytes: UInt64?
        public var memoryLimitHits: UInt64?
        public var pidsCurrent: UInt64?
        public init(cpuUsageUsec: UInt64? = nil, memoryCurrentBytes: UInt64? = nil, memoryLimitHits: UInt64? = nil,
                    pidsCurrent: UInt64? = nil) {
            self.cpuUsageUsec = cpuUsageUsec
            self.memoryCurrentBytes = memoryCurrentBytes
            self.memoryLimitHits = memoryLimitHits
            self.pidsCurrent = pidsCurrent
        }
    }

    /// How to turn a file's text into a counter.
    public struct Source: Sendable {
        let path: String
        let parse: @Sendable (String) -> UInt64?
        public init(path: String, parse: @escaping @Sendable (String) -> UInt64?) {
            self.path = path
            self.parse = parse
        }
    }

    /// What a live sample shows (`live()`): the counters Docker's stats show, from the
    /// same files as the final result.
    public struct Live: Sendable, Equatable {
        public var cpuUserUsec: UInt64?
        public var cpuSystemUsec: UInt64?
        public var memoryCurrentBytes: UInt64?
        /// Inactive file pages charged to the run (Docker subtracts them from usage).
        public var memoryInactiveFileBytes: UInt64?
        public var memoryPeakBytes: UInt64?
        public var pidsCurrent: UInt64?
        /// Host pids of the run's processes.
        public var processes: [Int32] = []
        public init() {}
    }

    private let cpu: (Int32, Source)?
    private let current: (Int32, Source)?
    private let hits: (Int32, Source)?
    private let pids: (Int32, Source)?
    private let user: (Int32, Source)?
    private let system: (Int32, Source)?
    private let peak: (Int32, Source)?
    private let inactiveFile: (Int32, Source)?
    private let procs: Int32

    init(cpu: Source?, current: Source?, hits: Source?, pids: Source?,
         user: Source? = nil, system: Source? = nil, peak: Source? = nil, inactiveFile: Source? = nil, procs: String? = nil) {
        func open(_ s: Source?) -> (Int32, Source)? {
            guard let s else { return nil }
            let fd = Glibc.open(s.path, O_RDONLY | O_CLOEXEC)
            return fd >= 0 ? (fd, s) : nil
        }
        self.cpu = open(cpu)
        self.current = open(current)
        self.hits = open(hits)
        self.pids = open(pids)
        self.user = open(user)
        self.system = open(system)
        self.peak = open(peak)
        self.inactiveFile = open(inactiveFile)
        self.procs = procs.map { Glibc.open($0, O_RDONLY | O_CLOEXEC) } ?? -1
    }

    /// Every counter a live sample shows, read now (about ten preads).
    public func live() -> Live {
        var l = Live()
        l.cpuUserUsec = read(user)
        l.cpuSystemUsec = read(system)
        l.memoryCurrentBytes = read(current)
        l.memoryInactiveFileBytes = read(inactiveFile)
        l.memoryPeakBytes = read(peak)
        l.pidsCurrent = read(pids)
        if procs >= 0, let text = SysFile.pread(procs) {
            l.processes = text.split(separator: "\n").compactMap { Int32($0) }
        }
        return l
    }

    private func read(_ f: (Int32, Source)?) -> UInt64? {
        guard let (fd, source) = f, let text = SysFile.pread(fd) else { return nil }
        return source.parse(text)
    }

    /// CPU time of every task of the run so far (user + system), in microseconds.
    public func cpuUsageUsec() -> UInt64? { read(cpu) }
    /// Memory charged to the run now, in bytes.
    public func memoryCurrentBytes() -> UInt64? { read(current) }
    /// Times the run's memory usage hit its limit so far.
    public func memoryLimitHits() -> UInt64? { read(hits) }
    /// Tasks (processes and threads) alive in the run now.
    public func pidsCurrent() -> UInt64? { read(pids) }

    public func sample() -> Sample {
        Sample(cpuUsageUsec: cpuUsageUsec(), memoryCurrentBytes: memoryCurrentBytes(),
               memoryLimitHits: memoryLimitHits(), pidsCurrent: pidsCurrent())
    }

    deinit {
        for f in [cpu, current, hits, pids, user, system, peak, inactiveFile] { if let (fd, _) = f { close(fd) } }
        if procs >= 0 { close(procs) }
    }
}

extension V2Backend {
    /// cpu.stat `usage_usec`, memory.current, memory.events `max`, pids.current.
    public func monitor(_ run: RunCgroup) -> RunMonitor {
        let d = run.directories[0]
        return RunMonitor(
            cpu: .init(path: d + "/cpu.stat", parse: { StatParse.cpuStatV2($0).usageUsec }),
            current: .init(path: d + "/memory.current", parse: StatParse.single),
            hits: .init(path: d + "/memory.events", parse: { StatParse.flatKeyed($0)["max"] }),
            pids: .init(path: d + "/pids.current", parse: StatParse.single),
            user: .init(path: d + "/cpu.stat", parse: { StatParse.cpuStatV2($0).userUsec }),
            system: .init(path: d + "/cpu.stat", parse: { StatParse.cpuStatV2($0).systemUsec }),
            peak: .init(path: d + "/memory.peak", parse: StatParse.single),
            inactiveFile: .init(path: d + "/memory.stat", parse: { StatParse.flatKeyed($0)["inactive_file"] }),
            procs: d + "/cgroup.procs")
    }
}

extension V1Backend {
    /// cpuacct.usage (ns), memory.usage_in_bytes, memory.failcnt, pids.current.
    public func monitor(_ run: RunCgroup) -> RunMonitor {
        let m = run.controllerDirectories["memory"], c = run.controllerDirectories["cpuacct"]
        let p = run.controllerDirectories["pids"]
        return RunMonitor(
            cpu: c.map { .init(path: $0 + "/cpuacct.usage", parse: { StatParse.single($0).map { $0 / 1000 } }) },
            current: m.map { .init(path: $0 + "/memory.usage_in_bytes", parse: StatParse.single) },
            hits: m.map { .init(path: $0 + "/memory.failcnt", parse: StatParse.single) },
            pids: p.map { .init(path: $0 + "/pids.current", parse: StatParse.single) },
            user: c.map { .init(path: $0 + "/cpuacct.usage_user", parse: { StatParse.single($0).map { $0 / 1000 } }) },
            system: c.map { .init(path: $0 + "/cpuacct.usage_sys", parse: { StatParse.single($0).map { $0 / 1000 } }) },
            peak: m.map { .init(path: $0 + "/memory.max_usage_in_bytes", parse: StatParse.single) },
            inactiveFile: m.map { .init(path: $0 + "/memory.stat", parse: { StatParse.flatKeyed($0)["total_inactive_file"] }) },
            procs: (p ?? m).map { $0 + "/cgroup.procs" })
    }
}
