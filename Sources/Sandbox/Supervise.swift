import CSandpit
import CgroupKit
import Foundation

/// Bytes captured from one stream, up to its cap.
struct Capture {
    var bytes: [UInt8] = []
    var truncated = false
    var eof = false
    let cap: Int

    /// Reads what is available; returns false when the cap was exceeded. `fresh`
    /// receives each chunk kept (for the run's events).
    mutating func drain(_ fd: Int32, fresh: ((ArraySlice<UInt8>) -> Void)? = nil) -> Bool {
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n > 0 {
                let room = cap - bytes.count
                if n > room {
                    bytes.append(contentsOf: buf[0..<max(0, room)])
                    if room > 0 { fresh?(buf[0..<room]) }
                    truncated = true
                    return false
                }
                bytes.append(contentsOf: buf[0..<n])
                fresh?(buf[0..<n])
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
        var metrics = MetricsReader()
        var execNs: Int64?
        var execFailure: sp_exec_record?
        var report: sp_report?
        var killed: KillReason?
        var killNs: Int64?
        var initExited = false
        var maxTasks: UInt64 = 0

        let ep = epoll_create1(Int32(EPOLL_CLOEXEC))
        defer { close(ep) }
        for fd in [stdoutR.raw, stderrR.raw, execR.raw, reportR.raw, metricsR.raw, pidfd] {
            var ev = epoll_event()
            ev.events = EPOLLIN.rawValue | EPOLLHUP.rawValue
            ev.data.fd = fd
            _ = epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev)
        }
        // CPU, memory and tasks while the run goes on, from CgroupKit's kept-open files.
        let monitor = backend.monitor(run)
        var thrash = ThrashWatch()
        let ncpu = Int64(onlineCPUs)
        let wallNs = Int64(lim.wallSeconds * 1e9)
        let cpuLimitUsec = UInt64(lim.cpuSeconds * 1e6)
        var initCPUUsec: UInt64 = 0
        var nextCPUCheck = launchNs

        let watchers = self.events
        let emitOut: ((ArraySlice<UInt8>) -> Void)? = watchers.map { ev in { if ev.hasSubscribers { ev.emit(.output(.stdout, Array($0))) } } }
        let emitErr: ((ArraySlice<UInt8>) -> Void)? = watchers.map { ev in { if ev.hasSubscribers { ev.emit(.output(.stderr, Array($0))) } } }
        let emitMetric: ((CustomPoint) -> Void)? = watchers.map { ev in { if ev.hasSubscribers { ev.emit(.metric($0)) } } }
        /// A point's time: seconds since execve (the program writes only after it).
        let pointTime = { [launchNs] () -> Double in Double(monotonicNanos() - (execNs ?? launchNs)) / 1e9 }
        // Live samples, while someone watches: every sampleInterval from execve.
        var sampler = watchers == nil ? nil : LiveSampler(monitor: monitor, initPid: pid)
        let sampleNs = Int64(max(0.001, request.sampleInterval) * 1e9)
        var nextSample = Int64.max

        func kill(_ reason: KillReason) {
            guard killed == nil else { return }
            killed = reason
            watchers?.emit(.limitHit(reason.eventName))
            killNs = monotonicNanos()
            _ = sp_pidfd_send_signal(pidfd, SIGKILL)  // init's death ends the whole pid namespace
            try? backend.kill(run)
        }

        /// Reads the exec records available; true at EOF (the program exec'd or died).
        func readExecRecords() -> Bool {
            while true {
                guard let rec: sp_exec_record = readRecord(execR.raw) else { return lastReadWasEOF }
                if rec.stage == 0 {
                    execNs = rec.t_ns
                    initCPUUsec = UInt64(max(0, rec.init_cpu_usec))
                    if watchers != nil {
                        sampler?.start(at: rec.t_ns)
                        nextSample = rec.t_ns + sampleNs
                    }
                    watchers?.emit(.started(id: id, at: result.startedAt))
                } else {
                    execFailure = rec
                }
            }
        }

        var events = [epoll_event](repeating: epoll_event(), count: 8)
        // Until the init's report (the program and every task of the run are gone) or
        // the init's death (a kill).
        while !initExited && report == nil {
            let now = monotonicNanos()
            let wallDeadline = (execNs ?? launchNs) + wallNs
            if killed == nil, let stop = stopState.withLock({ $0.reason == nil ? nil : $0.cancelled }) {
                kill(stop ? .cancelled : .stopped)
            }
            if killed == nil {
                if now >= wallDeadline { kill(.wallTime) }
                // The limit is the program's: the init's set-up time (charged to the same
                // cgroup before the program started) does not count against it.
                if now >= nextCPUCheck, let total = monitor.cpuUsageUsec() {
                    let used = total > initCPUUsec ? total - initCPUUsec : 0
                    if used >= cpuLimitUsec {
                        kill(.cpuTime)
                    } else {
                        // The group cannot use the remainder faster than on every CPU at once.
                        nextCPUCheck = now + min(100_000_000, max(1_000_000, Int64(cpuLimitUsec - used) * 1000 / ncpu))
                    }
                    if let hits = monitor.memoryLimitHits(),
                       thrash.thrashing(hits: hits, current: monitor.memoryCurrentBytes() ?? 0, limit: lim.memoryBytes, now: now) {
                        kill(.memoryThrash)
                    }
                    if let v = monitor.pidsCurrent() { maxTasks = max(maxTasks, v) }
                }
                if now >= nextSample, let e = execNs, let w = watchers {
                    nextSample = now + sampleNs
                    if w.hasSubscribers, let s = sampler?.sample(now: now, execNs: e) {
                        if let p = s.pidsCount { maxTasks = max(maxTasks, UInt64(p) + 1) }
                        w.emit(.sample(s))
                    }
                }
            }
            let deadline = killed == nil ? min(wallDeadline, nextCPUCheck, nextSample) : now + 100_000_000
            let timeoutMs = Int32(max(0, min(1000, (deadline - now + 999_999) / 1_000_000)))
            let n = events.withUnsafeMutableBufferPointer { epoll_wait(ep, $0.baseAddress, 8, timeoutMs) }
            if n < 0 && errno != EINTR { break }
            for i in 0..<max(0, Int(n)) {
                let fd = events[i].data.fd
                if fd == stdoutR.raw {
                    if !out.drain(stdoutR.raw, fresh: emitOut) { kill(.output) }
                    if out.eof { _ = epoll_ctl(ep, EPOLL_CTL_DEL, stdoutR.raw, nil) }
                } else if fd == stderrR.raw {
                    if !err.drain(stderrR.raw, fresh: emitErr) { kill(.output) }
                    if err.eof { _ = epoll_ctl(ep, EPOLL_CTL_DEL, stderrR.raw, nil) }
                } else if fd == metricsR.raw {
                    metrics.drain(metricsR.raw, now: pointTime, fresh: emitMetric)
                    if metrics.eof { _ = epoll_ctl(ep, EPOLL_CTL_DEL, metricsR.raw, nil) }
                } else if fd == execR.raw {
                    if readExecRecords() { _ = epoll_ctl(ep, EPOLL_CTL_DEL, execR.raw, nil) }  // EOF: exec done
                } else if fd == reportR.raw {
                    if report == nil { report = readRecord(reportR.raw) }
                    _ = epoll_ctl(ep, EPOLL_CTL_DEL, reportR.raw, nil)
                } else if fd == pidfd {
                    initExited = true
                    if killed == nil, let stop = stopState.withLock({ $0.reason == nil ? nil : $0.cancelled }) {
                        kill(stop ? .cancelled : .stopped)
                    }
                }
            }
        }
        let endNs = monotonicNanos()
        // Whatever is still in the pipes (every writer is dead once init has exited).
        _ = out.drain(stdoutR.raw, fresh: emitOut)
        _ = err.drain(stderrR.raw, fresh: emitErr)
        // (what is left of a flood is not waited for: at most one more read's worth)
        if !metrics.eof { metrics.drain(metricsR.raw, now: pointTime, fresh: emitMetric) }
        if report == nil { report = readRecord(reportR.raw) }
        _ = readExecRecords()

        // Counters. The init has reaped every task, so its /proc/<pid>/io holds the whole
        // run's block I/O. Normally it is still alive, waiting for its release, and its
        // network namespace is readable through /proc; after a kill it is a zombie (kept
        // unreaped) and the namespace is reached through the fd kept since the launch.
        var code: Int32 = 0, st: Int32 = 0
        if initExited { _ = sp_pidfd_wait(pidfd, WNOWAIT, &code, &st) }
        let io = SysFile.read("/proc/\(pid)/io").flatMap(StatParse.procIO)
        var net = initExited ? nil : SysFile.read("/proc/\(pid)/net/dev").flatMap(StatParse.netDev)
        if net == nil { net = netDevInNamespace() }
        if !initExited, let n = net, n.isQuiet {
            // (a lingering IPv6 flow label is the one thing a run can leave without traffic)
            let labels = SysFile.read("/proc/\(pid)/net/ip6_flowlabel") ?? ""
            netQuiet = labels.split(separator: "\n").count <= 1
        }
        // The last sample, after the program's end (sent once the result's counters are known).
        var lastSample: LiveSample?
        if let w = watchers, w.hasSubscribers, let e = execNs, var sm = sampler {
            lastSample = sm.sample(now: endNs, execNs: e)
        }
        let stats = backend.stats(run, [.cpu, .memory, .pids])  // what the result uses
        release()  // the init may exit now; teardown() waits for it
        if let rep = report, let e = execNs, sandbox.logger.logLevel <= .debug {
            let p = rep.phase_ns
            sandbox.logger.debug("run \(id) phases (ms): prepare \(millis(prepNs.start, launchNs)) (cgroup \(millis(prepNs.start, prepNs.cgroup)), scratch \(millis(prepNs.start, prepNs.scratch))) clone \(millis(launchNs, p.0)) namespaces \(millis(p.0, p.1)) root \(millis(p.1, p.2)) fork \(millis(p.2, p.3)) exec \(millis(p.3, e)) program \(millis(e, rep.exit_ns)) reap-rest \(millis(rep.exit_ns, p.4)) collect \(millis(p.4, monotonicNanos()))")
        }

        // ---- map to the result ----
        result.output = String(decoding: out.bytes, as: UTF8.self)
        result.stdoutTruncated = out.truncated
        result.stderrTruncated = err.truncated
        result.customMetrics = metrics.summaries
        result.customMetricsRejected = metrics.rejected
        result.customPoints = metrics.points
        let exitNs = report.map { $0.kind == SP_REPORT_EXITED.rawValue ? $0.exit_ns : endNs } ?? (killNs ?? endNs)
        if let e = execNs { result.executionTime = max(0, Double(exitNs - e) / 1e9) }

        var seen = RunObservation(stderr: String(decoding: err.bytes, as: UTF8.self))
        let exited = report.map { $0.kind == SP_REPORT_EXITED.rawValue } ?? false
        if exited, let rep = report { seen.waitStatus = rep.wait_status }
        seen.oomKills = stats.memory.oomKills ?? 0
        if let rep = report, rep.kind == SP_REPORT_SETUP_FAILED.rawValue {
            seen.setupFailure = "sandbox setup failed at \(Self.stageName(rep.stage, detail: rep.detail)): \(String(cString: strerror(rep.err)))"
        } else if let f = execFailure {
            seen.setupFailure = "sandbox setup failed at \(Self.stageName(f.stage, detail: 0)): \(String(cString: strerror(f.err)))"
        }
        seen.killed = killed?.observed(reason: stopReason)
        RunOutcome.classify(seen, limits: lim, into: &result)

        // Metrics: CPU and memory from the run cgroup, I/O from the run's task accounting.
        var counters = RunCounters(cgroup: stats, sampledMaxTasks: maxTasks)
        if let rep = report {
            counters.initIO = (rep.base_read_bytes, rep.base_write_bytes)
            if exited { counters.initCPUUsec = (UInt64(max(0, rep.base_user_usec)), UInt64(max(0, rep.base_sys_usec))) }
        }
        counters.io = io.map { ($0.readBytes, $0.writeBytes, $0.cancelledWriteBytes) }
        counters.net = net.map { ($0.rxBytes, $0.txBytes) }
        counters.loopback = net?.loopbackBytes
        for w in ResultMapper.apply(counters, limits: lim, into: &result) { sandbox.logger.warning("run \(id): \(w)") }
        if result.memoryPeak != nil { result.memoryPeakMethod = "run" }
        if var s = lastSample, let w = watchers {
            // Cumulative counters as the result has them (the same files, with the init's
            // own set-up subtracted as precisely as the result does): they agree exactly.
            s.elapsed = result.executionTime
            s.cpuUserTime = result.cpuUserTime ?? s.cpuUserTime
            s.cpuSystemTime = result.cpuSystemTime ?? s.cpuSystemTime
            s.memoryPeak = result.memoryPeak ?? s.memoryPeak
            s.blockIORead = result.blockIORead ?? s.blockIORead
            s.blockIOWrite = result.blockIOWrite ?? s.blockIOWrite
            s.networkIORx = result.networkIORx ?? s.networkIORx
            s.networkIOTx = result.networkIOTx ?? s.networkIOTx
            s.networkIOLoopback = result.networkIOLoopback ?? s.networkIOLoopback
            w.emit(.sample(s))
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
        releaseW.close()
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
            stopState.withLock { s in  // stop(reason:) may be using the fd
                close(pidfd)
                s.pidfd = -1
            }
            pidfd = -1
        }
        let t1 = monotonicNanos()
        if !backend.processes(run).isEmpty { try? backend.kill(run) }
        for fd in [stdoutR, stderrR, execR, reportR, metricsR] { fd.close() }
        network?.detach(logger: sandbox.logger)
        sandbox.recycleNetns(nsfd.take(), quiet: netQuiet && network == nil)
        scratchMount.close()
        // A session's cgroup and scratch are its own, kept for its next interpreter.
        if hold == nil {
            do { try backend.remove(run) } catch { sandbox.logger.error("run \(id): \(error)") }
        }
        let t2 = monotonicNanos()
        if hold == nil { sandbox.recycle(scratch) }
        if sandbox.logger.logLevel <= .debug {
            sandbox.logger.debug("run \(id) teardown (ms): init exit \(millis(t0, t1)) cgroup \(millis(t1, t2)) scratch \(millis(t2, monotonicNanos()))")
        }
    }

    /// The failed stage's name, from the one table in CSandpit.
    static func stageName(_ stage: Int32, detail: Int32) -> String {
        guard let name = sp_stage_name(stage) else { return "stage \(stage)" }
        return stage == SP_STAGE_MOUNT_OP.rawValue ? "\(String(cString: name)) \(detail)" : String(cString: name)
    }
}
