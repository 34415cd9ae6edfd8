import Foundation
import Sandbox

/// `sandpit-bench sessions [N]`: what a session costs and saves. Per-execution latency
/// of a trivial cell against a stateless run of the same code and bare python spawned,
/// alternating; the thaw latency of a frozen session; the memory an idle (frozen)
/// session keeps, fresh and after `import numpy, pandas`; and how long opening one takes.
func sessionBench(runs: Int, sandbox: Sandbox) async {
    func pct(_ xs: [Double], _ p: Double) -> Double {
        let s = xs.sorted()
        return s.isEmpty ? .nan : s[min(s.count - 1, Int(Double(s.count) * p))]
    }
    var opts = SessionOptions(name: "bench")
    opts.limits.memoryBytes = 1 << 30
    var opens: [Double] = []
    for _ in 0..<10 {
        let t0 = now()
        guard let s = try? await Session.open(sandbox: sandbox, options: opts) else { fatalError("session open failed") }
        opens.append(now() - t0)
        await s.close()
    }
    guard let s = try? await Session.open(sandbox: sandbox, options: opts) else { fatalError("session open failed") }
    var cell: [Double] = [], cellExec: [Double] = [], run: [Double] = [], bareT: [Double] = []
    for i in 0..<(runs + 10) {
        let tb = bare("/usr/bin/python3")
        var t0 = now()
        let r = try? await s.execute(code: "pass")
        let tc = now() - t0
        t0 = now()
        let rr = await sandbox.run(ExecutionRequest(code: "pass"))
        let tr = now() - t0
        await sandbox.quiesce()
        if r?.status != .ok || rr.status != .ok { FileHandle.standardError.write(Data("iteration \(i): \(r?.status.rawValue ?? "-") \(rr.status)\n".utf8)) }
        if i >= 10 { bareT.append(tb); cell.append(tc); run.append(tr); cellExec.append((r?.executionTime ?? 0) * 1000) }
        usleep(20_000)
    }
    var thaws: [Double] = [], thawed: [Double] = []
    for _ in 0..<50 {
        _ = await s.freezeIdle()
        let t0 = now()
        _ = try? await s.execute(code: "pass")
        thawed.append(now() - t0)
        thaws.append(s.lastThawMs ?? .nan)
    }
    func mib(_ r: ExecutionResult?) -> Double { Double(r?.memoryUsage ?? 0) / 1048576 }
    let fresh = try? await Session.open(sandbox: sandbox, options: opts)
    let idleFresh = try? await fresh?.execute(code: "pass")
    _ = await fresh?.freezeIdle()
    let data = try? await s.execute(code: "import numpy, pandas", wallSeconds: 60)
    _ = await s.freezeIdle()
    print("| sessions, \(runs) alternating iterations, 20 ms gaps | median ms | p95 ms |")
    print("|---|---|---|")
    print(String(format: "| bare python spawned (`python3 -c pass`) | %.2f | %.2f |", median(bareT), pct(bareT, 0.95)))
    print(String(format: "| stateless run of `pass` (Sandbox.run, to the result) | %.2f | %.2f |", median(run), pct(run, 0.95)))
    print(String(format: "| **session execution of `pass`** (to the result) | **%.2f** | %.2f |", median(cell), pct(cell, 0.95)))
    print(String(format: "| … of which the cell itself (execution_time) | %.2f | %.2f |", median(cellExec), pct(cellExec, 0.95)))
    print(String(format: "| thaw of a frozen session (cgroup freezer, until thawed) | %.3f | %.3f |", median(thaws), pct(thaws, 0.95)))
    print(String(format: "| execution of `pass` in a frozen session, thaw included | %.2f | %.2f |", median(thawed), pct(thawed, 0.95)))
    print(String(format: "| opening a session (cgroup, scratch, sandbox, interpreter ready) | %.2f | %.2f |", median(opens), pct(opens, 0.95)))
    print("")
    print("| memory a frozen idle session keeps (memory.current of its cgroup) | MiB |")
    print("|---|---|")
    print(String(format: "| fresh interpreter | %.1f |", mib(idleFresh)))
    print(String(format: "| after `import numpy, pandas` | %.1f |", mib(data)))
    await fresh?.close()
    await s.close()
}
