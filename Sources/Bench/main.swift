// sandpit-bench: the in-process cost of one sandboxed run (launch + supervision +
// metrics + teardown) against spawning bare python from the same process, measured
// alternately in one run so that both see the same machine state.
import Foundation
import Logging
import Sandbox

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) * 1e3 + Double(ts.tv_nsec) / 1e6
}

func bare(_ python: String) -> Double {
    let t0 = now()
    var pid: pid_t = 0
    let args: [UnsafeMutablePointer<CChar>?] = [strdup(python), strdup("-c"), strdup("pass"), nil]
    defer { args.forEach { free($0) } }
    guard posix_spawn(&pid, python, nil, nil, args, environ) == 0 else { return .nan }
    var st: Int32 = 0
    while waitpid(pid, &st, 0) < 0 && errno == EINTR {}
    return now() - t0
}

func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s.isEmpty ? .nan : s[s.count / 2]
}

let runs = CommandLine.arguments.count > 1 ? Int(CommandLine.arguments[1]) ?? 200 : 200  // (`sessions [N]`: see SessionBench.swift)
// SANDPIT_BENCH_DIRECT=1: clone each run from this process instead of the launcher.
var settings = SandboxSettings()
settings.useLauncher = ProcessInfo.processInfo.environment["SANDPIT_BENCH_DIRECT"] != "1"
settings.spareCgroup = true  // as the service runs; shut down below
var logger = Logger(label: "sandpit-bench")
logger.logLevel = ProcessInfo.processInfo.environment["SANDPIT_LOG"].flatMap { Logger.Level(rawValue: $0) } ?? .warning
let sandbox = Sandbox(settings: settings, logger: logger)
if CommandLine.arguments.count > 2 && CommandLine.arguments[1] == "sessions" || CommandLine.arguments.dropFirst().first == "sessions" {
    await sessionBench(runs: CommandLine.arguments.count > 2 ? Int(CommandLine.arguments[2]) ?? 200 : 200, sandbox: sandbox)
    await sandbox.quiesce()
    sandbox.shutdown()
    exit(0)
}
var b: [Double] = [], s: [Double] = [], full: [Double] = [], exec: [Double] = []
for i in 0..<(runs + 10) {
    let tb = bare("/usr/bin/python3")
    let t0 = now()
    let r = await sandbox.run(ExecutionRequest(code: "pass"))
    let ts = now() - t0
    await sandbox.quiesce()
    let tf = now() - t0
    if r.status != .ok { FileHandle.standardError.write(Data("run \(i): \(r.status) \(r.error ?? "")\n".utf8)) }
    if i >= 10 { b.append(tb); s.append(ts); full.append(tf); exec.append(r.executionTime * 1000) }
    usleep(20_000)  // an idle gap between runs, as a service sees (see host-facts on RCU grace periods)
}
let mb = median(b), ms = median(s)
print("| in-process, \(runs) runs alternating, 20 ms gaps | median ms |")
print("|---|---|")
print(String(format: "| bare python spawned from this process | %.2f |", mb))
print(String(format: "| Sandbox.run until the result (launch + supervise + metrics) | %.2f |", ms))
print(String(format: "| … until its teardown has finished too | %.2f |", median(full)))
print(String(format: "| of which python itself (execution_time) | %.2f |", median(exec)))
print(String(format: "| **overhead over bare python, to the result** | **%+.2f** |", ms - mb))
print(String(format: "| overhead over bare python, including teardown | %+.2f |", median(full) - mb))
await sandbox.quiesce()
sandbox.shutdown()
