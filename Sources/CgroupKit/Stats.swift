/// Usage read from a run cgroup. Every field is optional: a file the kernel does
/// not have gives nil ("unknown"), never a failure. Units are in the names.
public struct CgroupStats: Sendable, Equatable {
    public var cpu = CPUStats()
    public var memory = MemoryStats()
    public var io = IOStats()
    public var pids = PidsStats()
    public init() {}
}

public struct CPUStats: Sendable, Equatable {
    public var usageUsec: UInt64?
    public var userUsec: UInt64?
    public var systemUsec: UInt64?
    public var throttledUsec: UInt64?
    public init(usageUsec: UInt64? = nil, userUsec: UInt64? = nil, systemUsec: UInt64? = nil,
                throttledUsec: UInt64? = nil) {
        self.usageUsec = usageUsec
        self.userUsec = userUsec
        self.systemUsec = systemUsec
        self.throttledUsec = throttledUsec
    }
}

public struct MemoryStats: Sendable, Equatable {
    public var currentBytes: UInt64?
    public var peakBytes: UInt64?
    /// nil means no limit ("max").
    public var limitBytes: UInt64?
    /// OOM kills inside the group (v2 memory.events oom_kill, v1 memory.oom_control oom_kill).
    public var oomKills: UInt64?
    /// Times the group hit its limit (v2 memory.events max, v1 memory.failcnt).
    public var limitHits: UInt64?
    /// Selected memory.stat fields (anon, file, kernel, shmem...) in bytes.
    public var stat: [String: UInt64] = [:]
    public init() {}
}

public struct IOStats: Sendable, Equatable {
    public var readBytes: UInt64?
    public var writeBytes: UInt64?
    public var readOps: UInt64?
    public var writeOps: UInt64?
    public init(readBytes: UInt64? = nil, writeBytes: UInt64? = nil, readOps: UInt64? = nil, writeOps: UInt64? = nil) {
        self.readBytes = readBytes
        self.writeBytes = writeBytes
        self.readOps = readOps
        self.writeOps = writeOps
    }
}

public struct PidsStats: Sendable, Equatable {
    public var current: UInt64?
    public var peak: UInt64?
    /// nil means no limit ("max").
    public var max: UInt64?
    public init() {}
}

/// Which groups of files `stats` reads (memory.stat and the I/O files are the costly ones).
public struct StatsSelection: OptionSet, Sendable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    public static let cpu = StatsSelection(rawValue: 1)
    public static let memory = StatsSelection(rawValue: 2)
    public static let memoryStat = StatsSelection(rawValue: 4)
    public static let io = StatsSelection(rawValue: 8)
    public static let pids = StatsSelection(rawValue: 16)
    public static let all: StatsSelection = [.cpu, .memory, .memoryStat, .io, .pids]
}
