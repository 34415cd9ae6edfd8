import CSandpit
import CgroupKit
import Foundation

/// Bytes captured from one stream, up to its cap.
struct Capture {
    var bytes: [UInt8] = []
    var truncated = false
    var eof = false
    let cap: Int

    /// Reads what is available; returns false when the cap was exceeded.
    mutating func drain(_ fd: Int32) -> Bool {
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n > 0 {
                let room = cap - bytes.count
                if n > room {
                    bytes.append(contentsOf: buf[0..<max(0, room)])
                    truncated = true
                    return false
                }
                bytes.append(contentsOf: buf[0..<n])
                continue
            }
            if n == 0 { eof = true }
            if n < 0 && errno == EINTR { continue }
            return true
        }
    }
}

extension Execution {
    /// Supervises the run until its init has exited, then reads the counters, tears
    /// everything down and fills the result. Limits are checked with millisecond
    /// precision: wall time by epoll timeouts, CPU time by reading the group's usage
    /// at the earliest moment the limit could be reached (remaining / CPUs).
    func supervise(into initial: ExecutionResult) -> ExecutionResult {
        var result = initial
        if let e = launchError {
            result.status = .internalError
            result.error = "sandbox launch failed: \(e)"
            return result
        }
        let lim = request.limits
        var out = Capture(cap: lim.outputBytes), err = Capture(cap: lim.outputBytes)
        var execNs: Int64?
        var execFailure: sp_exec_record?
        var report: sp_report?
        var killed: KillReason?
        var killNs: Int64?
        var initExited = false
        var maxTasks: UInt64 = 0

        let ep = epoll_create1(Int32(EPOLL_CLOEXEC))
        defer { close(ep) }
        for fd in [stdoutR, stderrR, execR, reportR, pidfd] {
            var ev = epoll_event()
            ev.events = EPOLLIN.rawValue | EPOLLHUP.rawValue
            ev.data.fd = fd
            _ = epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev)
        }
        let cpuFile = run.version == .v2 ? run.directory(for: "cpu").map { $0 + "/cpu.stat" }
            ?? run.directories[0] + "/cpu.stat" : run.directory(for: "cpuacct").map { $0 + "/cpuacct.usage" }
        let cpuFD = cpuFile.map { open($0, O_RDONLY | O_CLOEXEC) } ?? -1
        defer { if cpuFD >= 0 { close(cpuFD) } }
        let pidsFD = run.directory(for: "pids").map { open($0 + "/pids.current", O_RDONLY | O_CLOEXEC) } ?? -1
        defer { if pidsFD >= 0 { close(pidsFD) } }
        func cpuUsedUsec() -> UInt64? {
            guard cpuFD >= 0, let t = SysFile.pread(cpuFD) else { return nil }
            return run.version == .v2 ? StatParse.cpuStatV2(t).usageUsec : StatParse.single(t).map { $0 / 1000 }
        }
        // A group pinned at its memory limit whose pages the kernel keeps reclaiming
        // (clean file pages re-read over and over) may thrash for a long time before
        // the OOM killer acts. At the limit and still hitting it for a whole second →
        // the run is stopped with status memory_limit.
        let memDir = run.directory(for: "memory")
        let hitsFD = memDir.map { open($0 + (run.version == .v2 ? "/memory.events" : "/memory.failcnt"), O_RDONLY | O_CLOEXEC) } ?? -1
        let curFD = memDir.map { open($0 + (run.version == .v2 ? "/memory.current" : "/memory.usage_in_bytes"), O_RDONLY | O_CLOEXEC) } ?? -1
        defer { for fd in [hitsFD, curFD] where fd >= 0 { close(fd) } }
        var lastHits: UInt64 = 0
        var thrashSince: Int64?
        func limitHits() -> UInt64? {
            guard hitsFD >= 0, let t = SysFile.pread(hitsFD) else { return nil }
            return run.version == .v2 ? StatParse.flatKeyed(t)["max"] : StatParse.single(t)
        }
        let ncpu = Int64(onlineCPUs)
        let wallNs = Int64(lim.wallSeconds * 1e9)
        let cpuLimitUsec = UInt64(lim.cpuSeconds * 1e6)
        var nextCPUCheck = launchNs

        func kill(_ reason: KillReason) {
            guard killed == nil else { return }
            killed = reason
            killNs = monotonicNanos()
            _ = sp_pidfd_send_signal(pidfd, SIGKILL)  // init's death ends the whole pid namespace
            try? backend.kill(run)
        }

        /// Reads the exec records available; true at EOF (the program exec'd or died).
        func readExecRecords() -> Bool {
            while true {
                guard let rec: sp_exec_record = readRecord(execR) else { return lastReadWasEOF }
                if rec.stage == 0 { execNs = rec.t_ns } else { execFailure = rec }
            }
        }

        var events = [epoll_event](repeating: epoll_event(), count: 8)
        // Until the init's report (the program and every task of the run are gone) or
        // the init's death (a kill).
        while !initExited && report == nil {
            let now = monotonicNanos()
            let wallDeadline = (execNs ?? launchNs) + wallNs
            if killed == nil {
                if now >= wallDeadline { kill(.wallTime) }
                if now >= nextCPUCheck, let used = cpuUsedUsec() {
                    if used >= cpuLimitUsec {
                        kill(.cpuTime)
                    } else {
                        // The group cannot use the remainder faster than on every CPU at once.
                        nextCPUCheck = now + min(100_000_000, max(1_000_000, Int64(cpuLimitUsec - used) * 1000 / ncpu))
                    }
                    if let hits = limitHits() {
                        let current = curFD >= 0 ? SysFile.pread(curFD).flatMap(StatParse.single) ?? 0 : 0
                        if hits > lastHits && current + (2 << 20) >= lim.memoryBytes {
                            if let since = thrashSince {
                                if now - since >= 1_000_000_000 { kill(.memoryThrash) }
                            } else {
                                thrashSince = now
                            }
                        } else {
                            thrashSince = nil
                        }
                        lastHits = hits
                    }
                    if pidsFD >= 0, let t = SysFile.pread(pidsFD), let v = StatParse.single(t) { maxTasks = max(maxTasks, v) }
                }
            }
            let deadline = killed == nil ? min(wallDeadline, nextCPUCheck) : now + 100_000_000
            let timeoutMs = Int32(max(0, min(1000, (deadline - now + 999_999) / 1_000_000)))
            let n = events.withUnsafeMutableBufferPointer { epoll_wait(ep, $0.baseAddress, 8, timeoutMs) }
            if n < 0 && errno != EINTR { break }
            for i in 0..<max(0, Int(n)) {
                let fd = events[i].data.fd
                if fd == stdoutR {
                    if !out.drain(stdoutR) { kill(.output) }
                    if out.eof { _ = epoll_ctl(ep, EPOLL_CTL_DEL, stdoutR, nil) }
                } else if fd == stderrR {
                    if !err.drain(stderrR) { kill(.output) }
                    if err.eof { _ = epoll_ctl(ep, EPOLL_CTL_DEL, stderrR, nil) }
                } else if fd == execR {
                    if readExecRecords() { _ = epoll_ctl(ep, EPOLL_CTL_DEL, execR, nil) }  // EOF: exec done
                } else if fd == reportR {
                    if report == nil { report = readRecord(reportR) }
                    _ = epoll_ctl(ep, EPOLL_CTL_DEL, reportR, nil)
                } else if fd == pidfd {
                    initExited = true
                    if killed == nil, stopReason != nil { kill(.stopped) }
                }
            }
        }
        let endNs = monotonicNanos()
        // Whatever is still in the pipes (every writer is dead once init has exited).
        _ = out.drain(stdoutR)
        _ = err.drain(stderrR)
        if report == nil { report = readRecord(reportR) }
        _ = readExecRecords()

        // Counters. The init has reaped every task, so its /proc/<pid>/io holds the whole
        // run's block I/O. Normally it is still alive, waiting for its release, and its
        // network namespace is readable through /proc; after a kill it is a zombie (kept
        // unreaped) and the namespace is reached through the fd kept since the launch.
        var code: Int32 = 0, st: Int32 = 0
        if initExited { _ = sp_pidfd_wait(pidfd, WNOWAIT, &code, &st) }
        let io = SysFile.read("/proc/\(pid)/io").flatMap(StatParse.procIO)
        var net = initExited ? nil : SysFile.read("/proc/\(pid)/net/dev").flatMap(StatParse.netDev)
        if net == nil && nsfd >= 0 {
            var buf = [CChar](repeating: 0, count: 16384)
            let n = sp_read_netdev_in_ns(nsfd, &buf, buf.count - 1)
            if n > 0 { net = StatParse.netDev(String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)) }
        }
        if !initExited, let n = net, n.rxBytes == 0, n.txBytes == 0 {
            // (a lingering IPv6 flow label is the one thing a run can leave without traffic)
            let labels = SysFile.read("/proc/\(pid)/net/ip6_flowlabel") ?? ""
            netQuiet = labels.split(separator: "\n").count <= 1
        }
        let stats = backend.stats(run, [.cpu, .memory, .pids])  // what the result uses
        release()  // the init may exit now; teardown() waits for it
        if let rep = report, let e = execNs, sandbox.logger.logLevel <= .debug {
            let p = rep.phase_ns
            sandbox.logger.debug("run \(id) phases (ms): prepare \(millis(prepNs.start, launchNs)) (cgroup \(millis(prepNs.start, prepNs.cgroup)), scratch \(millis(prepNs.start, prepNs.scratch))) clone \(millis(launchNs, p.0)) namespaces \(millis(p.0, p.1)) root \(millis(p.1, p.2)) fork \(millis(p.2, p.3)) exec \(millis(p.3, e)) program \(millis(e, rep.exit_ns)) reap-rest \(millis(rep.exit_ns, p.4)) collect \(millis(p.4, monotonicNanos()))")
        }

        // ---- map to the result ----
        result.output = String(decoding: out.bytes, as: UTF8.self)
        let stderrText = String(decoding: err.bytes, as: UTF8.self)
        result.stdoutTruncated = out.truncated
        result.stderrTruncated = err.truncated
        let exitNs = report.map { $0.kind == SP_REPORT_EXITED.rawValue ? $0.exit_ns : endNs } ?? (killNs ?? endNs)
        if let e = execNs { result.executionTime = max(0, Double(exitNs - e) / 1e9) }

        var waitStatus: Int32?
        if let rep = report, rep.kind == SP_REPORT_EXITED.rawValue { waitStatus = rep.wait_status }
        if let ws = waitStatus {
            let sig = ws & 0x7f
            if sig == 0 {
                result.exitCode = Int((ws >> 8) & 0xff)
            } else {
                result.signal = Int(sig)
                result.exitCode = 128 + Int(sig)
            }
        } else if killed != nil || (stats.memory.oomKills ?? 0) > 0 {
            result.signal = Int(SIGKILL)
            result.exitCode = 128 + Int(SIGKILL)
        }
        let oomKills = stats.memory.oomKills ?? 0
        result.oomKilled = oomKills > 0

        if let rep = report, rep.kind == SP_REPORT_SETUP_FAILED.rawValue {
            result.status = .internalError
            result.error = "sandbox setup failed at \(Self.stageName(rep.stage, detail: rep.detail)): \(String(cString: strerror(rep.err)))"
            result.exitCode = nil
        } else if let f = execFailure {
            result.status = .internalError
            result.error = "sandbox setup failed at \(Self.stageName(f.stage, detail: 0)): \(String(cString: strerror(f.err)))"
            result.exitCode = nil
        } else if let k = killed {
            switch k {
            case .wallTime, .cpuTime:
                result.status = .timeout
                result.timedOut = true
            case .output:
                result.status = .outputLimit
            case .memoryThrash:
                result.status = .memoryLimit
            case .stopped:
                result.status = .internalError
                result.error = "stopped: \(stopReason ?? "the sandbox was stopped")"
            }
        } else if result.oomKilled && (waitStatus == nil || result.signal == Int(SIGKILL) || result.exitCode != 0) {
            result.status = .memoryLimit
        } else if result.signal != nil {
            result.status = .signaled
        } else if result.exitCode == 0 {
            result.status = .ok
        } else if waitStatus == nil {
            result.status = .internalError
            result.error = "the sandbox init ended without a report"
        } else {
            result.status = .runtimeError
        }
        result.success = result.status == .ok
        if result.error == nil {
            var e = stderrText
            if e.isEmpty {
                switch result.status {
                case .timeout: e = killed == .cpuTime ? "CPU time limit of \(lim.cpuSeconds) s exceeded" : "wall time limit of \(lim.wallSeconds) s exceeded"
                case .memoryLimit: e = killed == .memoryThrash
                    ? "memory limit of \(lim.memoryBytes) bytes reached; the run kept thrashing at its limit and was stopped"
                    : "memory limit of \(lim.memoryBytes) bytes exceeded"
                case .outputLimit: e = "output limit of \(lim.outputBytes) bytes exceeded"
                default: break
                }
            }
            result.error = e.isEmpty ? nil : e
        }

        // Metrics: CPU and memory from the run cgroup, I/O from the run's task accounting.
        if var u = stats.cpu.userUsec, var s = stats.cpu.systemUsec {
            // The group's counters include the init's set-up work before the program existed.
            if let rep = report, rep.kind == SP_REPORT_EXITED.rawValue {
                u -= min(u, UInt64(max(0, rep.base_user_usec)))
                s -= min(s, UInt64(max(0, rep.base_sys_usec)))
            }
            result.cpuUserTime = Double(u) / 1e6
            result.cpuSystemTime = Double(s) / 1e6
            if result.executionTime > 0 {
                result.cpuPercent = (Double(u + s) / 1e6) / result.executionTime * 100
            }
        } else {
            sandbox.logger.warning("run \(id): CPU counters unavailable")
        }
        result.memoryPeak = stats.memory.peakBytes.map { Int64($0) }
        result.memoryUsage = stats.memory.currentBytes.map { Int64($0) }
        result.memoryLimit = Int64(stats.memory.limitBytes ?? lim.memoryBytes)
        if let p = result.memoryPeak, let l = result.memoryLimit, l > 0 {
            result.memoryPercent = Double(p) / Double(l) * 100
        }
        if result.memoryPeak == nil { sandbox.logger.warning("run \(id): memory peak unavailable (memory.peak needs Linux >= 5.19)") }
        if let io, let rep = report {
            result.blockIORead = Int64(io.readBytes) - max(0, rep.base_read_bytes)
            result.blockIOWrite = Int64(io.writeBytes) - max(0, rep.base_write_bytes)
            result.blockIORead = max(0, result.blockIORead ?? 0)
            result.blockIOWrite = max(0, result.blockIOWrite ?? 0)
        } else if let io {
            result.blockIORead = Int64(io.readBytes)
            result.blockIOWrite = Int64(io.writeBytes)
        } else {
            sandbox.logger.warning("run \(id): /proc/\(pid)/io unavailable (CONFIG_TASK_IO_ACCOUNTING)")
        }
        if let net {
            result.networkIORx = Int64(net.rxBytes)
            result.networkIOTx = Int64(net.txBytes)
        } else {
            sandbox.logger.warning("run \(id): network counters unavailable")
        }
        if let peak = stats.pids.peak {
            result.pidsCount = Int64(max(1, peak) - 1)  // the sandbox init is not the program's
        } else if maxTasks > 0 {
            result.pidsCount = Int64(maxTasks - 1)
        }
        return result
    }

    /// One fixed-size record from a non-blocking pipe (records are written whole, < PIPE_BUF).
    func readRecord<T>(_ fd: Int32) -> T? {
        let p = UnsafeMutablePointer<T>.allocate(capacity: 1)
        defer { p.deallocate() }
        let n = read(fd, p, MemoryLayout<T>.size)
        lastReadWasEOF = n == 0
        return n == MemoryLayout<T>.size ? p.pointee : nil
    }

    /// Ends whatever is left and frees every resource of the run.
    /// Lets the init exit (it waits on the release pipe after its report).
    func release() {
        if releaseW >= 0 {
            close(releaseW)
            releaseW = -1
        }
    }

    /// Ends whatever is left and frees every resource of the run: waits for the init,
    /// removes the cgroup, releases the scratch device. Called after the result is out.
    func teardown() {
        let t0 = monotonicNanos()
        release()
        if pidfd >= 0 {
            // The init exits on its release (or its parent's death); its exit ends the
            // pid namespace, so the group is empty once it is reaped.
            var code: Int32 = 0, st: Int32 = 0
            _ = sp_pidfd_wait(pidfd, 0, &code, &st)
            stopLock.lock()  // stop(reason:) may be using the fd
            close(pidfd)
            pidfd = -1
            stopLock.unlock()
        }
        let t1 = monotonicNanos()
        if !backend.processes(run).isEmpty { try? backend.kill(run) }
        for fd in [stdoutR, stderrR, execR, reportR] where fd >= 0 { close(fd) }
        sandbox.recycleNetns(nsfd, quiet: netQuiet)
        nsfd = -1
        do { try backend.remove(run) } catch { sandbox.logger.error("run \(id): \(error)") }
        let t2 = monotonicNanos()
        sandbox.recycle(scratch)
        if sandbox.logger.logLevel <= .debug {
            sandbox.logger.debug("run \(id) teardown (ms): init exit \(millis(t0, t1)) cgroup \(millis(t1, t2)) scratch \(millis(t2, monotonicNanos()))")
        }
    }

    static func stageName(_ stage: Int32, detail: Int32) -> String {
        let names: [Int32: String] = [
            1: "cgroup placement", 2: "cgroup namespace", 3: "sethostname", 4: "loopback up",
            5: "mount --make-rprivate /", 6: "root tmpfs", 7: "mount plan step \(detail)", 8: "pivot_root",
            9: "read-only root", 10: "init capabilities", 11: "fork", 12: "stdio", 13: "chdir", 14: "setrlimit",
            15: "setgroups", 16: "setgid", 17: "setuid", 18: "capabilities", 19: "no_new_privs", 20: "seccomp",
            21: "execve", 22: "oom_score_adj", 23: "signals", 24: "setns(network)",
        ]
        return names[stage] ?? "stage \(stage)"
    }
}
