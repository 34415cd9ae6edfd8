import CgroupKit
import Foundation
import Testing
@testable import Sandbox

/// Status classification and the counters → result mapping, as pure functions on
/// recorded observations and counter sets (cgroup file texts captured on the v2 VM
/// and on the hybrid v1 host, as in CgroupKit's fixtures). No root needed.
@Suite("Run outcome and metrics mapping (unit)")
struct OutcomeTests {
    func result() -> ExecutionResult {
        ExecutionResult(containerID: "c", containerName: "n", startedAt: Date(timeIntervalSince1970: 0))
    }

    func classify(_ o: RunObservation) -> ExecutionResult {
        var r = result()
        RunOutcome.classify(o, limits: RunLimits(), into: &r)
        return r
    }

    @Test func exitsAndSignals() {
        let ok = classify(RunObservation(waitStatus: 0))
        #expect(ok.status == .ok && ok.success && ok.exitCode == 0 && ok.signal == nil && ok.error == nil)
        let three = classify(RunObservation(waitStatus: 3 << 8, stderr: "Traceback\n"))
        #expect(three.status == .runtimeError && !three.success && three.exitCode == 3 && three.error == "Traceback\n")
        let segv = classify(RunObservation(waitStatus: 11))
        #expect(segv.status == .signaled && segv.signal == 11 && segv.exitCode == 139)
    }

    @Test func limits() {
        let wall = classify(RunObservation(killed: .wallTime))
        #expect(wall.status == .timeout && wall.timedOut && wall.signal == 9 && wall.exitCode == 137)
        #expect(wall.error == "wall time limit of 10.0 s exceeded")
        let cpu = classify(RunObservation(killed: .cpuTime, stderr: ""))
        #expect(cpu.status == .timeout && cpu.error == "CPU time limit of 10.0 s exceeded")
        let out = classify(RunObservation(killed: .output))
        #expect(out.status == .outputLimit && out.error == "output limit of 1048576 bytes exceeded")
        let oom = classify(RunObservation(waitStatus: 9, oomKills: 1))
        #expect(oom.status == .memoryLimit && oom.oomKilled && oom.error == "memory limit of 536870912 bytes exceeded")
        let oomNoReport = classify(RunObservation(oomKills: 1))
        #expect(oomNoReport.status == .memoryLimit && oomNoReport.exitCode == 137)
        // An OOM kill of a child the program survived: its own exit counts.
        let survived = classify(RunObservation(waitStatus: 0, oomKills: 1))
        #expect(survived.status == .ok && survived.oomKilled)
        let thrash = classify(RunObservation(killed: .memoryThrash))
        #expect(thrash.status == .memoryLimit && thrash.error?.contains("kept thrashing") == true)
        // The program's own stderr explains the end better than a generic line.
        let said = classify(RunObservation(killed: .wallTime, stderr: "still working\n"))
        #expect(said.error == "still working\n")
    }

    @Test func sandboxFailures() {
        let setup = classify(RunObservation(setupFailure: "sandbox setup failed at pivot_root: Invalid argument", killed: .wallTime))
        #expect(setup.status == .internalError && setup.exitCode == nil && setup.error == "sandbox setup failed at pivot_root: Invalid argument")
        let stopped = classify(RunObservation(killed: .stopped("the service shut down")))
        // Stopped by the service (shutdown after its grace): interrupted, not a sandbox failure.
        #expect(stopped.status == .interrupted && !stopped.success && stopped.error == "stopped: the service shut down")
        let silent = classify(RunObservation())
        #expect(silent.status == .internalError && silent.error == "the sandbox init ended without a report")
        #expect(Execution.stageName(8, detail: 0) == "pivot_root")
        #expect(Execution.stageName(7, detail: 12) == "mount plan step 12")
        #expect(Execution.stageName(99, detail: 0) == "stage 99")
    }

    @Test func v2CounterSet() {
        var stats = CgroupStats()
        stats.cpu = StatParse.cpuStatV2("usage_usec 2070782\nuser_usec 784632\nsystem_usec 1286150\nnr_periods 0\n")
        stats.memory.peakBytes = StatParse.single("65241088\n")
        stats.memory.currentBytes = StatParse.single("9306112\n")
        stats.memory.limitBytes = StatParse.limit("199999488\n")?.value
        stats.pids.peak = StatParse.single("1\n")
        let io = StatParse.procIO("rchar: 6976\nwchar: 0\nread_bytes: 4096\nwrite_bytes: 12288\ncancelled_write_bytes: 0\n")
        var c = RunCounters(cgroup: stats)
        c.initCPUUsec = (2632, 6150)
        c.initIO = (0, 8192)
        c.io = io.map { ($0.readBytes, $0.writeBytes, $0.cancelledWriteBytes) }
        c.net = (1500, 700)
        c.loopback = 3193
        var r = result()
        r.executionTime = 1.0
        let warnings = ResultMapper.apply(c, limits: RunLimits(), into: &r)
        #expect(warnings.isEmpty)
        #expect(r.cpuUserTime == 0.782 && r.cpuSystemTime == 1.28)
        #expect(abs((r.cpuPercent ?? 0) - 206.2) < 1e-9)
        #expect(r.memoryPeak == 65_241_088 && r.memoryUsage == 9_306_112 && r.memoryLimit == 199_999_488)
        #expect(abs((r.memoryPercent ?? 0) - 65_241_088.0 / 199_999_488.0 * 100) < 1e-9)
        #expect(r.blockIORead == 4096 && r.blockIOWrite == 4096)
        #expect(r.networkIORx == 1500 && r.networkIOTx == 700 && r.networkIOLoopback == 3193)
        #expect(r.pidsCount == 0)  // pids.peak 1 is the init alone
    }

    @Test func v1CounterSet() {
        var stats = CgroupStats()
        stats.cpu = StatParse.cpuacctV1(usage: "253406528\n", user: "51981792\n", sys: "203966260\n")
        stats.memory.peakBytes = StatParse.single("63664128\n")
        stats.memory.currentBytes = StatParse.single("7688192\n")
        stats.memory.limitBytes = StatParse.limit("9223372036854771712\n")?.value  // "no limit" on v1
        var c = RunCounters(cgroup: stats, sampledMaxTasks: 3)  // no pids.peak: sampled pids.current
        // 50 MiB dirtied, 49 MiB of it cancelled (the file was deleted before writeback).
        c.io = StatParse.procIO("read_bytes: 0\nwrite_bytes: 52428800\ncancelled_write_bytes: 51380224\n")
            .map { ($0.readBytes, $0.writeBytes, $0.cancelledWriteBytes) }
        let dev = StatParse.netDev("Inter-| Receive\n face |bytes\n    lo:    3193      29    0    0    0     0          0         0     3193      29    0    0    0     0       0          0\n"
            + "  eth0:    1000      10    0    0    0     0          0         0      400       5    0    0    0     0       0          0\n")
        c.net = dev.map { ($0.rxBytes, $0.txBytes) }
        c.loopback = dev?.loopbackBytes
        var r = result()
        r.executionTime = 0.5
        #expect(ResultMapper.apply(c, limits: RunLimits(), into: &r).isEmpty)
        #expect(r.cpuUserTime == 0.051981 && r.cpuSystemTime == 0.203966)
        #expect(r.memoryLimit == 536_870_912, "an unlimited group reports the run's own limit")
        #expect(abs((r.memoryPercent ?? 0) - 63_664_128.0 / 536_870_912.0 * 100) < 1e-9)
        #expect(r.pidsCount == 2)
        #expect(r.networkIORx == 1000 && r.networkIOTx == 400 && r.networkIOLoopback == 3193)
        #expect(r.blockIOWrite == 1 << 20)
    }

    @Test func missingCountersAreNullWithAWarning() {
        var r = result()
        let warnings = ResultMapper.apply(RunCounters(), limits: RunLimits(), into: &r)
        #expect(warnings.count == 4)
        #expect(r.cpuUserTime == nil && r.cpuPercent == nil && r.memoryPeak == nil && r.memoryPercent == nil)
        #expect(r.blockIORead == nil && r.networkIORx == nil && r.pidsCount == nil)
        #expect(r.memoryLimit == 536_870_912)
    }
}
