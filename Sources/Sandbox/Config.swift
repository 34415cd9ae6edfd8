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

/// How a program is run: the interpreter, its arguments, the file the program is
/// written to in /work, the environment it needs, and the /etc entries it reads.
/// Python 3 is the one built in; another interpreter (or, later, a warm template) is
/// another value, not an edit of the sandbox.
public struct Runtime: Sendable, Equatable {
    public var name: String
    /// The interpreter, as a path inside the run's root.
    public var interpreter: String
    /// The interpreter's arguments before the program's own; `{file}` stands for the
    /// program's path (/work/<fileName>).
    public var arguments: [String]
    public var fileName: String
    /// Environment entries besides PATH, HOME, LANG, TMPDIR and the thread counts.
    public var environment: [String]
    /// /etc entries the runtime reads, bound from the source root when they exist.
    public var etcEntries: [String]

    public init(name: String, interpreter: String, arguments: [String], fileName: String,
                environment: [String] = [], etcEntries: [String] = []) {
        self.name = name
        self.interpreter = interpreter
        self.arguments = arguments
        self.fileName = fileName
        self.environment = environment
        self.etcEntries = etcEntries
    }

    /// `python3 -s /work/main.py ARGS...`: no user site directory, unbuffered output,
    /// no .pyc files written next to the program.
    public static let python3 = Runtime(
        name: "python3", interpreter: "/usr/bin/python3", arguments: ["-s", "{file}"], fileName: "main.py",
        environment: ["PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1"],
        etcEntries: ["python3", "python3.11", "python3.12", "python3.13", "matplotlibrc"])

    /// The runtimes a request may name (`"runtime": "python3"`).
    public static let builtIn: [String: Runtime] = [python3.name: python3]

    /// The program's path inside the run.
    public var programPath: String { "/work/" + fileName }

    /// The whole argv: the interpreter, its arguments, then the program's.
    public func argv(_ args: [String]) -> [String] {
        [interpreter] + arguments.map { $0 == "{file}" ? programPath : $0 } + args
    }
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
    public var runtime = Runtime.python3
    /// Seconds between live samples while someone watches the run's events.
    public var sampleInterval: Double = 0.25
    /// Whether to fork the run from a warm template (`"warm"` in a request).
    public var warm: WarmChoice = .cold
    /// Files placed under /work before the run (path relative to /work, bytes).
    public var files: [(path: String, bytes: [UInt8])] = []
    /// Globs (fnmatch, `*` crossing `/`) of files under /work returned in the result.
    public var returnFiles: [String] = []
    /// Run the program as a notebook cell and return its rich results (a final
    /// expression's value, figures, the exception); always a cold start.
    public var richResults = false
    /// The run's network, resolved (`NetworkPolicy.resolved(with:)`); nil: loopback only.
    public var network: NetworkPolicy?
    /// The runtime's interpreter (`--python`).
    public var python: String {
        get { runtime.interpreter }
        set { runtime.interpreter = newValue }
    }

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
    /// Rules every result is checked against; the names of those it matches are in its
    /// `alerts` (and in the result event).
    public var alertRules: [AlertRule] = []
    /// Warm templates to keep (`serve --warm MODULES`): each an interpreter that has
    /// imported its modules and waits to be forked for a run.
    public var warmTemplates: [WarmSpec] = []
    /// Directories put before the system's site directories when templates import
    /// (PYTHONPATH of the template only; runs do not see these directories). For the
    /// tests, which need a module they can change on a read-only host.
    public var warmExtraPath: [String] = []
    /// What runs' network policies may allow, and where their addresses come from.
    public var network = NetworkSettings()

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
