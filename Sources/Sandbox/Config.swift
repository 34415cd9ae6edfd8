/// Limits of one run, in the CLI's and API's units (seconds and bytes).
public struct RunLimits: Sendable, Equatable, Codable {
    public var wallSeconds: Double = 10
    public var cpuSeconds: Double = 10
    public var memoryBytes: UInt64 = 512 << 20
    public var pids: UInt64 = 128
    /// Cap of each of stdout and stderr.
    public var outputBytes: Int = 1 << 20
    public var scratchBytes: UInt64 = 128 << 20
    /// Optional CPU bandwidth in cores (e.g. 0.5); nil = no quota.
    public var cpuCores: Double?

    public init() {}
}

/// One execution request.
public struct ExecutionRequest: Sendable {
    public var code: String
    public var stdin: [UInt8] = []
    public var args: [String] = []
    public var name: String = "Unnamed"
    public var limits = RunLimits()
    /// Root directory whose system directories are bound read-only into the sandbox ("/" = the host's).
    public var rootfs: String = "/"
    public var python: String = "/usr/bin/python3"

    public init(code: String) {
        self.code = code
    }
}

/// Process-wide settings of the sandbox.
public struct SandboxSettings: Sendable {
    /// State directory: the mount point of run roots and scratch templates.
    public var stateDirectory: String
    public var uid: UInt32 = 65534
    public var gid: UInt32 = 65534
    public var hostname = "sandpit"
    /// Clone runs from a small launcher process (the zygote) instead of from this
    /// process. Pays off in a long-lived, large process (the service); a one-shot
    /// CLI launches directly.
    public var useLauncher = true
    /// Scratch filesystems kept (emptied) for later runs.
    public var scratchPoolSize = 8
    /// Network namespaces no packet went through, kept for later runs.
    public var netnsPoolSize = 8
    /// After a run, prepare the next run's scratch and network namespace.
    public var prepareAhead = true
    /// Also make the next run's cgroup ahead (renamed when a run starts; cgroup v1 only,
    /// where a run's cgroup is six directories and v2 refuses renames). A cgroup is a
    /// directory that outlives the process: only for owners that call
    /// `Sandbox.shutdown()` before they exit (the service does; a crashed one's spare
    /// is swept like any stale run cgroup).
    public var spareCgroup = false

    /// Settings for a process that runs once and exits (the CLI): nothing is kept or
    /// prepared for later runs.
    public static func oneShot() -> SandboxSettings {
        var s = SandboxSettings()
        s.useLauncher = false
        s.scratchPoolSize = 0
        s.netnsPoolSize = 0
        s.prepareAhead = false
        return s
    }

    public init(stateDirectory: String? = nil) {
        if let s = stateDirectory {
            self.stateDirectory = s
        } else if let env = getenv("SANDPIT_STATE_DIR") {
            self.stateDirectory = String(cString: env)
        } else {
            self.stateDirectory = "/var/lib/sandpit"
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
