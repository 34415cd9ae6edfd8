#if canImport(Glibc)
import Glibc
#endif

/// cgroup v2: one directory per run below `<own>/<parent>`.
public final class V2Backend: CgroupBackend {
    public let version = CgroupVersion.v2
    public let host: CgroupHost
    public let ownDirectory: String
    public let parentDirectory: String
    public let controllers: [String]
    public var parentDirectories: [String] { [parentDirectory] }

    static let wanted = ["cpu", "memory", "io", "pids"]
    static let leafName = "supervisor"

    public init(host: CgroupHost, parentName: String) {
        self.host = host
        var own = host.v2OwnDirectory ?? "/sys/fs/cgroup"
        // A process already moved into the leaf by an earlier prepare() (or started
        // there) manages the group above the leaf, never a nested copy.
        if own.hasSuffix("/" + Self.leafName) { own = String(own.dropLast(Self.leafName.count + 1)) }
        ownDirectory = own
        parentDirectory = ownDirectory + "/" + parentName
        controllers = Self.wanted.filter { host.v2Controllers.contains($0) }
    }

    private func words(_ path: String) -> Set<String> {
        Set((SysFile.read(path) ?? "").split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init))
    }

    public func prepare() throws(CgroupError) {
        if words(parentDirectory + "/cgroup.subtree_control").isSuperset(of: controllers) { return }
        let enabled = words(ownDirectory + "/cgroup.subtree_control")
        let missing = controllers.filter { !enabled.contains($0) }
        if !missing.isEmpty {
            // No-internal-processes rule: a non-root group that enables controllers for
            // its children may hold no process itself (a systemd service with
            // Delegate=yes starts inside its own group). Move them to a leaf first.
            if ownDirectory != host.v2MountPoint {
                let procs = Cgroups.pids(SysFile.read(ownDirectory + "/cgroup.procs"))
                if !procs.isEmpty {
                    let leaf = ownDirectory + "/" + Self.leafName
                    try SysFile.mkdir(leaf)
                    for pid in procs {
                        do { try SysFile.write(leaf + "/cgroup.procs", String(pid)) } catch let e where e.errno == ESRCH { _ = e }
                    }
                }
            }
            for c in missing {
                try SysFile.write(ownDirectory + "/cgroup.subtree_control", "+" + c)
            }
        }
        try SysFile.mkdir(parentDirectory)
        let have = words(parentDirectory + "/cgroup.subtree_control")
        for c in controllers where !have.contains(c) {
            try SysFile.write(parentDirectory + "/cgroup.subtree_control", "+" + c)
        }
    }

    public func createRun(name: String, limits: CgroupLimits) throws(CgroupError) -> RunCgroup {
        let dir = parentDirectory + "/" + name
        if Glibc.mkdir(dir, 0o755) != 0 {
            guard errno == ENOENT else { throw CgroupError(.io, "mkdir", path: dir, errno: errno) }
            try prepare()  // the parent was removed by a concurrent sandpit: make it again
            try SysFile.mkdir(dir, allowExisting: false)
        }
        do throws(CgroupError) {
            try Self.apply(limits, in: dir, cpu: controllers.contains("cpu"))
        } catch {
            _ = rmdir(dir)
            throw error
        }
        let fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd < 0 {
            let e = errno
            _ = rmdir(dir)
            throw CgroupError(.io, "open", path: dir, errno: e)
        }
        var map: [String: String] = [:]
        for c in controllers { map[c] = dir }
        return RunCgroup(name: name, version: .v2, directories: [dir], directoryFD: fd, taskFiles: [],
                         controllerDirectories: map)
    }

    static func apply(_ limits: CgroupLimits, in dir: String, cpu: Bool) throws(CgroupError) {
        if let m = limits.memoryBytes {
            try SysFile.write(dir + "/memory.max", String(m))
            if limits.disableSwap, SysFile.exists(dir + "/memory.swap.max") {
                try SysFile.write(dir + "/memory.swap.max", "0")
            }
            // One OOM kill ends the whole run, as a container would.
            try SysFile.write(dir + "/memory.oom.group", "1")
        }
        if let p = limits.pidsMax { try SysFile.write(dir + "/pids.max", String(p)) }
        if let q = limits.cpuQuotaUsec, cpu {
            try SysFile.write(dir + "/cpu.max", "\(q) \(limits.cpuPeriodUsec)")
        }
    }

    /// cgroup v2 refuses to rename a cgroup (EPERM), and making one is a single mkdir
    /// here anyway: nothing to adopt.
    public var canAdopt: Bool { false }

    public func adopt(_ spare: RunCgroup, name: String, limits: CgroupLimits) throws(CgroupError) -> RunCgroup {
        throw CgroupError(.io, "rename (cgroup v2 does not rename cgroups)", path: spare.directories[0], errno: EPERM)
    }

    public func stats(_ run: RunCgroup, _ selection: StatsSelection) -> CgroupStats {
        Self.readStats(directory: run.directories[0], selection)
    }

    /// Reads every v2 stats file of one group; missing files give nil fields.
    public static func readStats(directory dir: String, _ selection: StatsSelection = .all) -> CgroupStats {
        var s = CgroupStats()
        if selection.contains(.cpu), let t = SysFile.read(dir + "/cpu.stat") { s.cpu = StatParse.cpuStatV2(t) }
        if selection.contains(.memory) { readMemory(dir, into: &s) }
        if selection.contains(.memoryStat), let t = SysFile.read(dir + "/memory.stat") {
            let kv = StatParse.flatKeyed(t)
            for k in ["anon", "file", "kernel", "shmem", "sock"] { s.memory.stat[k] = kv[k] }
        }
        if selection.contains(.io), let t = SysFile.read(dir + "/io.stat") { s.io = StatParse.ioStatV2(t) }
        if selection.contains(.pids) {
            s.pids.current = SysFile.read(dir + "/pids.current").flatMap(StatParse.single)
            s.pids.peak = SysFile.read(dir + "/pids.peak").flatMap(StatParse.single)
            s.pids.max = SysFile.read(dir + "/pids.max").flatMap { StatParse.limit($0) }?.value
        }
        return s
    }

    static func readMemory(_ dir: String, into s: inout CgroupStats) {
        s.memory.currentBytes = SysFile.read(dir + "/memory.current").flatMap(StatParse.single)
        s.memory.peakBytes = SysFile.read(dir + "/memory.peak").flatMap(StatParse.single)
        s.memory.limitBytes = SysFile.read(dir + "/memory.max").flatMap { StatParse.limit($0) }?.value
        if let t = SysFile.read(dir + "/memory.events") {
            let kv = StatParse.flatKeyed(t)
            s.memory.oomKills = kv["oom_kill"]
            s.memory.limitHits = kv["max"]
        }
    }

    public func processes(_ run: RunCgroup) -> [Int32] {
        Cgroups.pids(SysFile.read(run.directories[0] + "/cgroup.procs"))
    }

    public func kill(_ run: RunCgroup) throws(CgroupError) {
        let dir = run.directories[0]
        if SysFile.exists(dir + "/cgroup.kill") {
            try SysFile.write(dir + "/cgroup.kill", "1")  // Linux >= 5.14
        } else {
            try? SysFile.write(dir + "/cgroup.freeze", "1")
            for _ in 0..<1000 {
                let pids = processes(run)
                if pids.isEmpty { break }
                for p in pids { _ = Glibc.kill(p, SIGKILL) }
                usleep(1000)
            }
            try? SysFile.write(dir + "/cgroup.freeze", "0")
        }
        for _ in 0..<5000 where !processes(run).isEmpty { usleep(200) }
    }

    public func remove(_ run: RunCgroup) throws(CgroupError) {
        if run.directoryFD >= 0 { close(run.directoryFD) }
        try Cgroups.removeDirectory(run.directories[0])
    }

    public func sweepStale() -> [String] {
        var swept: [String] = []
        for name in SysFile.list(parentDirectory) where RunName.isStale(name) {
            let dir = parentDirectory + "/" + name
            let run = RunCgroup(name: name, version: .v2, directories: [dir], directoryFD: -1, taskFiles: [],
                                controllerDirectories: [:])
            try? kill(run)
            if (try? remove(run)) != nil { swept.append(name) }
        }
        return swept
    }

    public func removeParentIfEmpty() {
        _ = rmdir(parentDirectory)
    }
}
