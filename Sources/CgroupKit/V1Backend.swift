#if canImport(Glibc)
import Glibc
#endif

/// cgroup v1: one directory per hierarchy (memory, cpu, cpuacct, pids, freezer,
/// blkio — those mounted) below the caller's own group in each.
public final class V1Backend: CgroupBackend {
    public let version = CgroupVersion.v1
    public let host: CgroupHost
    /// Hierarchies used, with their parent directory for sandpit.
    public let hierarchies: [(hierarchy: V1Hierarchy, parent: String)]
    public let controllers: [String]
    public var parentDirectories: [String] { hierarchies.map(\.parent) }

    static let wanted = ["memory", "cpu", "cpuacct", "pids", "freezer", "blkio"]

    public init(host: CgroupHost, parentName: String) {
        self.host = host
        var list: [(V1Hierarchy, String)] = []
        var ctrls: [String] = []
        for c in Self.wanted {
            guard let h = host.v1(c) else { continue }
            ctrls.append(c)
            if !list.contains(where: { $0.0.mountPoint == h.mountPoint }) {
                list.append((h, h.ownDirectory + "/" + parentName))
            }
        }
        hierarchies = list
        controllers = ctrls
    }

    public func prepare() throws(CgroupError) {
        for (_, parent) in hierarchies { try SysFile.mkdir(parent) }
    }

    public func createRun(name: String, limits: CgroupLimits) throws(CgroupError) -> RunCgroup {
        var created: [String] = []
        var map: [String: String] = [:]
        do throws(CgroupError) {
            for (h, parent) in hierarchies {
                let dir = parent + "/" + name
                if Glibc.mkdir(dir, 0o755) != 0 {
                    guard errno == ENOENT else { throw CgroupError(.io, "mkdir", path: dir, errno: errno) }
                    try SysFile.mkdir(parent)
                    try SysFile.mkdir(dir, allowExisting: false)
                }
                created.append(dir)
                for c in h.controllers where Self.wanted.contains(c) { map[c] = dir }
            }
            try Self.apply(limits, map)
        } catch {
            for d in created.reversed() { _ = rmdir(d) }
            throw error
        }
        return RunCgroup(name: name, version: .v1, directories: created, directoryFD: -1,
                         taskFiles: created.map { $0 + "/tasks" }, controllerDirectories: map)
    }

    static func apply(_ limits: CgroupLimits, _ map: [String: String]) throws(CgroupError) {
        if let m = limits.memoryBytes, let dir = map["memory"] {
            try SysFile.write(dir + "/memory.limit_in_bytes", String(m))
            if limits.disableSwap {
                // memsw exists only with swap accounting; it must be >= limit_in_bytes.
                if SysFile.exists(dir + "/memory.memsw.limit_in_bytes") {
                    try SysFile.write(dir + "/memory.memsw.limit_in_bytes", String(m))
                }
                try? SysFile.write(dir + "/memory.swappiness", "0")
            }
        }
        if let p = limits.pidsMax, let dir = map["pids"] { try SysFile.write(dir + "/pids.max", String(p)) }
        if let q = limits.cpuQuotaUsec, let dir = map["cpu"] {
            try SysFile.write(dir + "/cpu.cfs_period_us", String(limits.cpuPeriodUsec))
            try SysFile.write(dir + "/cpu.cfs_quota_us", String(q))
        }
    }

    /// v1 renames a run's directory in every hierarchy (cheaper than six mkdirs).
    public var canAdopt: Bool { true }

    public func adopt(_ spare: RunCgroup, name: String, limits: CgroupLimits) throws(CgroupError) -> RunCgroup {
        func renamed(_ d: String, _ to: String) -> String {
            String(d[..<(d.lastIndex(of: "/") ?? d.endIndex)]) + "/" + to
        }
        var done: [String] = []
        do throws(CgroupError) {
            for d in spare.directories {
                guard rename(d, renamed(d, name)) == 0 else { throw CgroupError(.io, "rename", path: d, errno: errno) }
                done.append(d)
            }
            let map = spare.controllerDirectories.mapValues { renamed($0, name) }
            try Self.apply(limits, map)
            let dirs = spare.directories.map { renamed($0, name) }
            return RunCgroup(name: name, version: .v1, directories: dirs, directoryFD: -1,
                             taskFiles: dirs.map { $0 + "/tasks" }, controllerDirectories: map)
        } catch {
            for d in done { _ = rename(renamed(d, name), d) }
            throw error
        }
    }

    public func stats(_ run: RunCgroup, _ selection: StatsSelection) -> CgroupStats {
        Self.readStats(run.controllerDirectories, selection)
    }

    /// Reads the v1 files of each controller's directory; missing files give nil fields.
    public static func readStats(_ dirs: [String: String], _ selection: StatsSelection = .all) -> CgroupStats {
        var s = CgroupStats()
        if selection.contains(.cpu), let d = dirs["cpuacct"] {
            s.cpu = StatParse.cpuacctV1(usage: SysFile.read(d + "/cpuacct.usage"),
                                        user: SysFile.read(d + "/cpuacct.usage_user"),
                                        sys: SysFile.read(d + "/cpuacct.usage_sys"))
        }
        if selection.contains(.cpu), let d = dirs["cpu"], let t = SysFile.read(d + "/cpu.stat") {
            s.cpu.throttledUsec = StatParse.flatKeyed(t)["throttled_time"].map { $0 / 1000 }
        }
        if selection.contains(.memory), let d = dirs["memory"] {
            s.memory.currentBytes = SysFile.read(d + "/memory.usage_in_bytes").flatMap(StatParse.single)
            s.memory.peakBytes = SysFile.read(d + "/memory.max_usage_in_bytes").flatMap(StatParse.single)
            s.memory.limitBytes = SysFile.read(d + "/memory.limit_in_bytes").flatMap { StatParse.limit($0) }?.value
            s.memory.oomKills = SysFile.read(d + "/memory.oom_control").flatMap { StatParse.flatKeyed($0)["oom_kill"] }
            s.memory.limitHits = SysFile.read(d + "/memory.failcnt").flatMap(StatParse.single)
            if selection.contains(.memoryStat), let t = SysFile.read(d + "/memory.stat") {
                let kv = StatParse.flatKeyed(t)
                s.memory.stat["anon"] = kv["rss"]
                s.memory.stat["file"] = kv["cache"]
                s.memory.stat["shmem"] = kv["shmem"]
            }
        }
        if selection.contains(.io), let d = dirs["blkio"] {
            s.io = StatParse.blkioV1(serviceBytes: SysFile.read(d + "/blkio.throttle.io_service_bytes"),
                                     serviced: SysFile.read(d + "/blkio.throttle.io_serviced"))
        }
        if selection.contains(.pids), let d = dirs["pids"] {
            s.pids.current = SysFile.read(d + "/pids.current").flatMap(StatParse.single)
            s.pids.peak = SysFile.read(d + "/pids.peak").flatMap(StatParse.single)
            s.pids.max = SysFile.read(d + "/pids.max").flatMap { StatParse.limit($0) }?.value
        }
        return s
    }

    public func processes(_ run: RunCgroup) -> [Int32] {
        var all = Set<Int32>()
        for d in run.directories { all.formUnion(Cgroups.pids(SysFile.read(d + "/cgroup.procs"))) }
        return Array(all)
    }

    /// Freeze, SIGKILL every member, thaw, until the group is empty (v1 has no cgroup.kill).
    public func kill(_ run: RunCgroup) throws(CgroupError) {
        let freezer = run.controllerDirectories["freezer"]
        if let f = freezer {
            try? SysFile.write(f + "/freezer.state", "FROZEN")
            for _ in 0..<200 {
                if SysFile.read(f + "/freezer.state")?.hasPrefix("FROZEN") ?? true { break }
                usleep(500)
            }
        }
        for _ in 0..<2000 {
            let pids = processes(run)
            if pids.isEmpty { break }
            for p in pids { _ = Glibc.kill(p, SIGKILL) }
            if let f = freezer { try? SysFile.write(f + "/freezer.state", "THAWED") }
            usleep(500)
        }
        if let f = freezer { try? SysFile.write(f + "/freezer.state", "THAWED") }
        if !processes(run).isEmpty {
            throw CgroupError(.busy, "processes remain in", path: run.directories.first ?? "")
        }
    }

    public func remove(_ run: RunCgroup) throws(CgroupError) {
        var firstError: CgroupError?
        for d in run.directories.reversed() {
            do { try Cgroups.removeDirectory(d) } catch { firstError = firstError ?? error }
        }
        if let e = firstError { throw e }
    }

    public func sweepStale() -> [String] {
        var names = Set<String>()
        for (_, parent) in hierarchies {
            for n in SysFile.list(parent) where RunName.isStale(n) { names.insert(n) }
        }
        var swept: [String] = []
        for name in names.sorted() {
            var dirs: [String] = []
            var map: [String: String] = [:]
            for (h, parent) in hierarchies where SysFile.isDirectory(parent + "/" + name) {
                dirs.append(parent + "/" + name)
                for c in h.controllers { map[c] = parent + "/" + name }
            }
            let run = RunCgroup(name: name, version: .v1, directories: dirs, directoryFD: -1, taskFiles: [],
                                controllerDirectories: map)
            try? kill(run)
            if (try? remove(run)) != nil { swept.append(name) }
        }
        return swept
    }

    public func removeParentIfEmpty() {
        for (_, parent) in hierarchies { _ = rmdir(parent) }
    }
}
