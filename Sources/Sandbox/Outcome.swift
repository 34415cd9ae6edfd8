import CgroupKit
#if canImport(Glibc)
import Glibc
#endif

/// What the supervisor saw of a run, as plain values: the input of the status
/// classification. Recorded observations make the classification a pure function,
/// unit-tested without root.
struct RunObservation: Equatable, Sendable {
    enum Kill: Equatable, Sendable { case wallTime, cpuTime, output, memoryThrash, stopped(String), cancelled(String) }
    /// "sandbox setup failed at <stage>: <reason>" when the init or the program's set-up failed.
    var setupFailure: String?
    /// The program's raw wait status, when the init reported its exit.
    var waitStatus: Int32?
    /// Why the supervisor ended the run, if it did.
    var killed: Kill?
    /// OOM kills counted in the run's cgroup.
    var oomKills: UInt64 = 0
    /// The program's stderr (the `error` field when nothing else explains the end).
    var stderr = ""
}

/// Counters read when a run has ended: the input of the metrics mapping.
struct RunCounters: Equatable, Sendable {
    var cgroup = CgroupStats()
    /// The init's own CPU time before the program existed (subtracted: set-up work).
    var initCPUUsec: (user: UInt64, system: UInt64)?
    /// The init's own block I/O before the program started (it wrote the program file).
    var initIO: (read: Int64, write: Int64)?
    /// Block I/O of the init, which reaped every task of the run (`/proc/<init>/io`):
    /// reads, bytes dirtied, and of those the ones whose writeback was cancelled.
    var io: (read: UInt64, write: UInt64, cancelled: UInt64)?
    /// Bytes over the run's network namespace's interfaces but `lo`, and through `lo`.
    var net: (rx: UInt64, tx: UInt64)?
    var loopback: UInt64?
    /// Highest `pids.current` sampled, where `pids.peak` is missing.
    var sampledMaxTasks: UInt64 = 0

    static func == (a: RunCounters, b: RunCounters) -> Bool {
        a.cgroup == b.cgroup && a.initCPUUsec?.user == b.initCPUUsec?.user && a.initCPUUsec?.system == b.initCPUUsec?.system
            && a.initIO?.read == b.initIO?.read && a.initIO?.write == b.initIO?.write
            && a.io?.read == b.io?.read && a.io?.write == b.io?.write && a.io?.cancelled == b.io?.cancelled
            && a.net?.rx == b.net?.rx && a.net?.tx == b.net?.tx && a.loopback == b.loopback
            && a.sampledMaxTasks == b.sampledMaxTasks
    }
}

enum RunOutcome {
    /// Status, exit code, signal, OOM and timeout flags, `success` and `error`, from
    /// what was observed. Exit codes of signalled programs are 128 + signal.
    static func classify(_ o: RunObservation, limits lim: RunLimits, into r: inout ExecutionResult) {
        if let ws = o.waitStatus {
            let sig = ws & 0x7f
            if sig == 0 {
                r.exitCode = Int((ws >> 8) & 0xff)
            } else {
                r.signal = Int(sig)
                r.exitCode = 128 + Int(sig)
            }
        } else if o.killed != nil || o.oomKills > 0 {
            r.signal = Int(SIGKILL)
            r.exitCode = 128 + Int(SIGKILL)
        }
        r.oomKilled = o.oomKills > 0

        if let failure = o.setupFailure {
            r.status = .internalError
            r.error = failure
            r.exitCode = nil
        } else if let k = o.killed {
            switch k {
            case .wallTime, .cpuTime:
                r.status = .timeout
                r.timedOut = true
            case .output:
                r.status = .outputLimit
            case .memoryThrash:
                r.status = .memoryLimit
            case .stopped(let reason):
                r.status = .interrupted
                r.error = "stopped: \(reason)"
            case .cancelled(let reason):
                r.status = .cancelled
                if o.stderr.isEmpty { r.error = "cancelled: \(reason)" }
            }
        } else if r.oomKilled && (o.waitStatus == nil || r.signal == Int(SIGKILL) || r.exitCode != 0) {
            r.status = .memoryLimit
        } else if r.signal != nil {
            r.status = .signaled
        } else if r.exitCode == 0 {
            r.status = .ok
        } else if o.waitStatus == nil {
            r.status = .internalError
            r.error = "the sandbox init ended without a report"
        } else {
            r.status = .runtimeError
        }
        r.success = r.status == .ok
        if r.error == nil {
            var e = o.stderr
            if e.isEmpty {
                switch r.status {
                case .timeout: e = o.killed == .cpuTime ? "CPU time limit of \(lim.cpuSeconds) s exceeded" : "wall time limit of \(lim.wallSeconds) s exceeded"
                case .memoryLimit: e = o.killed == .memoryThrash
                    ? "memory limit of \(lim.memoryBytes) bytes reached; the run kept thrashing at its limit and was stopped"
                    : "memory limit of \(lim.memoryBytes) bytes exceeded"
                case .outputLimit: e = "output limit of \(lim.outputBytes) bytes exceeded"
                default: break
                }
            }
            r.error = e.isEmpty ? nil : e
        }
    }
}

enum ResultMapper {
    /// The result's metrics from the counters, in the API's units (seconds, bytes,
    /// percent); `r.executionTime` must be set. Returns a warning per metric the host
    /// could not provide (it stays null).
    static func apply(_ c: RunCounters, limits lim: RunLimits, into r: inout ExecutionResult) -> [String] {
        var warnings: [String] = []
        if var u = c.cgroup.cpu.userUsec, var s = c.cgroup.cpu.systemUsec {
            // The group's counters include the init's set-up work before the program existed.
            if let base = c.initCPUUsec {
                u -= min(u, base.user)
                s -= min(s, base.system)
            }
            r.cpuUserTime = Double(u) / 1e6
            r.cpuSystemTime = Double(s) / 1e6
            if r.executionTime > 0 { r.cpuPercent = (Double(u + s) / 1e6) / r.executionTime * 100 }
        } else {
            warnings.append("CPU counters unavailable")
        }
        r.memoryPeak = c.cgroup.memory.peakBytes.map { Int64($0) }
        r.memoryUsage = c.cgroup.memory.currentBytes.map { Int64($0) }
        r.memoryLimit = Int64(c.cgroup.memory.limitBytes ?? lim.memoryBytes)
        if let p = r.memoryPeak, let l = r.memoryLimit, l > 0 { r.memoryPercent = Double(p) / Double(l) * 100 }
        if r.memoryPeak == nil { warnings.append("memory peak unavailable (memory.peak needs Linux >= 5.19)") }
        if let io = c.io {
            let base = c.initIO ?? (0, 0)
            r.blockIORead = max(0, Int64(io.read) - max(0, base.read))
            // What reached, or will reach, storage: a file deleted before its writeback costs nothing.
            r.blockIOWrite = max(0, Int64(io.write) - Int64(io.cancelled) - max(0, base.write))
        } else {
            warnings.append("task I/O accounting unavailable (CONFIG_TASK_IO_ACCOUNTING)")
        }
        if let net = c.net {
            r.networkIORx = Int64(net.rx)
            r.networkIOTx = Int64(net.tx)
            r.networkIOLoopback = c.loopback.map { Int64($0) }
        } else {
            warnings.append("network counters unavailable")
        }
        if let peak = c.cgroup.pids.peak {
            r.pidsCount = Int64(max(1, peak) - 1)  // the sandbox init is not the program's
        } else if c.sampledMaxTasks > 0 {
            r.pidsCount = Int64(c.sampledMaxTasks - 1)
        }
        return warnings
    }
}
