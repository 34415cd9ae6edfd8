import CgroupKit
import Foundation
import Synchronization
import Testing
@testable import Sandbox

enum Env {
    static let isRoot = geteuid() == 0
    static let inCI = ProcessInfo.processInfo.environment["CI"] == "true"
    static let inVM = ProcessInfo.processInfo.environment["SANDPIT_IN_VM"] == "1"
    static var shouldRun: Bool { isRoot || inCI }
    /// Runs in a row for the leftovers test (SANDPIT_SOAK_RUNS overrides for quick local runs).
    /// The VM gets 50 (its cgroup v2 cleanup, not the volume: the host has the 200).
    static var soakRuns: Int { Int(ProcessInfo.processInfo.environment["SANDPIT_SOAK_RUNS"] ?? "") ?? (inVM ? 50 : 200) }
    /// Emulation in the VM makes every python start take seconds.
    static var slow: Double { inVM ? 20 : 1 }
}

@Suite("Result object (unit)")
struct ResultObjectTests {
    @Test func jsonHasExactlyTheFields() throws {
        var r = ExecutionResult(containerID: "abc", containerName: "Unnamed", startedAt: Date(timeIntervalSince1970: 0))
        r.output = "a\u{0}b\u{FFFD}"
        let json = r.jsonString()
        let obj = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        let spec = ["success", "output", "error", "container_id", "container_name", "execution_time", "exit_code",
                    "cpu_user_time", "cpu_system_time", "cpu_percent", "memory_usage", "memory_peak", "memory_percent",
                    "memory_limit", "block_io_read", "block_io_write", "network_io_rx", "network_io_tx", "pids_count"]
        let ours = ["network_io_loopback", "status", "signal", "oom_killed", "timed_out", "stdout_truncated", "stderr_truncated", "started_at",
                    "custom_metrics", "custom_metrics_rejected", "alerts", "start", "warm_template", "memory_shared",
                    "execution_index", "memory_peak_method", "results", "exception", "session", "network", "files", "files_truncated"]
        #expect(Set(obj.keys) == Set(spec + ours))
        #expect(obj["memory_peak"] is NSNull)  // unknown metrics are null, not absent
        #expect(obj["started_at"] as? String == "1970-01-01T00:00:00.000Z")
        let back = try JSONDecoder().decode(ExecutionResult.self, from: Data(json.utf8))
        #expect(back == r)
    }

    /// Before 1970 the fraction still counts forward from the second (a fuzzer found
    /// "0718-07-28T18:10:50.-919Z").
    @Test func timestampsBefore1970() {
        #expect(ExecutionResult.timestamp(Date(timeIntervalSince1970: -0.4)) == "1969-12-31T23:59:59.600Z")
        #expect(ExecutionResult.timestamp(Date(timeIntervalSince1970: -1)) == "1969-12-31T23:59:59.000Z")
        #expect(ExecutionResult.timestamp(Date(timeIntervalSince1970: 1.25)) == "1970-01-01T00:00:01.250Z")
        let old = ExecutionResult.timestamp(Date(timeIntervalSince1970: -39_000_000_000.919))
        #expect(ExecutionResult.parseTimestamp(old) != nil, "\(old)")
    }

    @Test func compactJSONMatchesTheEncoder() throws {
        var r = ExecutionResult(containerID: "id/1", containerName: "n\"a\\m/e\u{1}\t", startedAt: Date(timeIntervalSince1970: 1_764_387_743.146))
        r.output = "line\nquote\" back\\ ctl\u{0}\u{1f}\r é 🙂 \u{2028} </script>"
        r.error = nil
        r.success = true
        r.status = .outputLimit
        r.executionTime = 0.021684341
        r.exitCode = 137
        r.cpuUserTime = 1e-05
        r.cpuSystemTime = 0
        r.cpuPercent = 106.10421594089487
        r.memoryUsage = 2_924_544
        r.memoryPeak = 5_713_920
        r.memoryPercent = 1.064300537109375
        r.memoryLimit = 536_870_912
        r.blockIORead = 0
        r.blockIOWrite = 8192
        r.networkIORx = 400_000
        r.networkIOTx = nil
        r.pidsCount = 3
        r.signal = 9
        r.oomKilled = true
        r.stdoutTruncated = true
        let compact = r.jsonString(), pretty = r.jsonString(pretty: true)
        var a = try JSONDecoder().decode(ExecutionResult.self, from: Data(compact.utf8))
        var b = try JSONDecoder().decode(ExecutionResult.self, from: Data(pretty.utf8))
        #expect(abs(a.startedAt.timeIntervalSince(r.startedAt)) < 0.001)
        #expect(abs(b.startedAt.timeIntervalSince(r.startedAt)) < 0.001)
        a.startedAt = r.startedAt
        b.startedAt = r.startedAt
        #expect(a == r)
        #expect(b == r)
        #expect(compact.contains("\"started_at\":\"2025-11-29T03:42:23.146Z\""))
        #expect(compact.hasPrefix("{\"success\":true,\"output\":\"line\\nquote\\\" back\\\\ ctl\\u0000\\u001f\\r é"))
        #expect(ExecutionResult.timestamp(Date(timeIntervalSince1970: 0)) == "1970-01-01T00:00:00.000Z")
    }

    @Test func runtimesBuildTheirCommandLine() {
        #expect(Runtime.python3.argv(["a", "b"]) == ["/usr/bin/python3", "-s", "/work/main.py", "a", "b"])
        var req = ExecutionRequest(code: "")
        req.python = "/opt/py/bin/python3"
        #expect(req.runtime.interpreter == "/opt/py/bin/python3" && req.runtime.fileName == "main.py")
        #expect(Runtime.builtIn["python3"] == .python3)
    }

    @Test func threadPoolsFollowLimits() {
        var l = RunLimits()
        l.pids = 8
        #expect(Execution.threadCount(limits: l) == 1)
        l.pids = 128
        l.cpuCores = 0.5
        #expect(Execution.threadCount(limits: l) == 1)
    }

    @Test func seccompPolicyBuilds() {
        #expect(SeccompPolicy.program.instructions > SeccompPolicy.denied.count)
        #expect(SeccompPolicy.denied.contains("io_uring_setup"))
    }
}

/// Every privileged suite of this target, run one after another: the leftovers test
/// compares the host before and after, so no other run may be in flight meanwhile.
@Suite("Privileged sandbox suites", .enabled(if: Env.shouldRun), .serialized)
struct PrivilegedSandboxSuites {}

extension PrivilegedSandboxSuites {
@Suite("sandpit run (root, real sandbox)")
struct SandboxRunTests {
    let sandbox = Sandbox()

    func run(_ code: String, _ edit: (inout ExecutionRequest) -> Void = { _ in }) async throws -> ExecutionResult {
        try #require(Env.isRoot, "privileged test run without root")
        var req = ExecutionRequest(code: code)
        req.limits.wallSeconds *= Env.slow
        edit(&req)
        return await sandbox.run(req)
    }

    // The specification's four examples, with value assertions.
    @Test func specCPU() async throws {
        // The kernel splits CPU time into user and system by sampling at the scheduler
        // tick (4 ms here), so one 15 ms run can come out either way; five runs cannot.
        var userSum = 0.0, sysSum = 0.0
        for _ in 0..<5 {
            let r = try await run("import math\nresult = sum(math.sqrt(i) for i in range(100000))\nprint(f\"Result: {result}\")")
            #expect(r.status == .ok && r.success)
            #expect(r.output.hasPrefix("Result: 21081692.74"))
            let user = try #require(r.cpuUserTime), sys = try #require(r.cpuSystemTime)
            #expect(user + sys >= 0.005)  // the total is exact
            #expect(user + sys < 2 * Env.slow)
            #expect(r.executionTime > 0 && r.executionTime < 5 * Env.slow)
            #expect((r.cpuPercent ?? 0) > 10)
            #expect(r.exitCode == 0)
            #expect(r.containerName == "Unnamed")
            #expect(r.containerID.count == 32)
            userSum += user
            sysSum += sys
        }
        #expect(userSum >= 5 * 0.005, "user \(userSum) s over 5 runs")
        #expect(userSum > sysSum, "user \(userSum) s, system \(sysSum) s over 5 runs")
    }

    @Test func specMemory() async throws {
        let r = try await run("big_list = list(range(1000000))\nprint(f\"Created list of {len(big_list)} items\")")
        #expect(r.status == .ok)
        #expect(r.output == "Created list of 1000000 items\n")
        let peak = try #require(r.memoryPeak)
        #expect(peak >= 30_000_000)
        #expect(peak < 300_000_000)
        #expect(r.memoryLimit == 512 << 20)
        let pct = try #require(r.memoryPercent)
        #expect(abs(pct - Double(peak) / Double(512 << 20) * 100) < 0.01)
        #expect((r.memoryUsage ?? -1) >= 0)
    }

    @Test func scratchTemplatesMadeAtOnceAreWhole() throws {
        // Four threads of one process make the same template at once (a warm-up and a
        // first run do): the image must pass fsck.
        let dir = NSTemporaryDirectory() + "sandpit-template-race-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let paths = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: 4) { _ in
            if let p = try? Scratch.templatePath(stateDirectory: dir, size: 32 << 20) { paths.withLock { $0.append(p) } }
        }
        let path = try #require(paths.withLock { $0 }.first)
        #expect(paths.withLock { Set($0) }.count == 1)
        #expect(Spawn.run(["e2fsck", "-fn", path]) == 0, "the template is a clean ext4 image")
        let left = (try? FileManager.default.contentsOfDirectory(atPath: dir + "/templates")) ?? []
        #expect(left == ["ext4-\(32 << 20).img"], "no temporary file is left: \(left)")
    }

    @Test func specFileIO() async throws {
        let r = try await run("""
        import tempfile
        with tempfile.NamedTemporaryFile(mode='w', delete=False) as f:
            f.write("x" * 10000)
            print(f"Wrote to {f.name}")
        """)
        #expect(r.status == .ok)
        #expect(r.output.hasPrefix("Wrote to /tmp/"))
        let w = try #require(r.blockIOWrite)
        #expect(w >= 8192)
        #expect(w < 10_000_000)
        #expect((r.blockIORead ?? -1) >= 0)
    }

    @Test func deletedBeforeWritebackIsNotBlockIO() async throws {
        // 50 MiB written and removed before writeback: the kernel cancels those writes.
        let r = try await run("""
        import os
        with open('/tmp/big', 'wb') as f:
            f.write(b'x' * (50 << 20))
        os.remove('/tmp/big')
        with open('/tmp/kept', 'wb') as f:
            f.write(b'y' * (1 << 20))
        """) { $0.limits.scratchBytes = 128 << 20 }
        #expect(r.status == .ok, "\(r.error ?? "")")
        let w = try #require(r.blockIOWrite)
        #expect(w >= 1 << 20 && w < 8 << 20, "only the kept MiB counts: \(w)")
    }

    @Test func specNumPy() async throws {
        let r = try await run("import numpy as np\na = np.arange(12).reshape(3, 4)\nprint(a.sum(), int(round(np.linalg.det(np.eye(3) * 2))))")
        #expect(r.status == .ok, "\(r.error ?? "")")
        #expect(r.output == "66 8\n")
    }

    @Test func network() async throws {
        let r = try await run("""
        import socket, threading
        srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
        def serve():
            c, _ = srv.accept(); n = 0
            while n < 200000:
                d = c.recv(65536)
                if not d: break
                n += len(d)
            c.sendall(b"y" * 200000); c.close()
        t = threading.Thread(target=serve); t.start()
        s = socket.create_connection(srv.getsockname()); s.sendall(b"x" * 200000)
        got = 0
        while got < 200000:
            d = s.recv(65536)
            if not d: break
            got += len(d)
        t.join(); print(got)
        """)
        #expect(r.output == "200000\n")
        // 200 kB each way, all of it through lo: loopback traffic, not network I/O (as Docker counts).
        #expect(r.networkIORx == 0 && r.networkIOTx == 0)
        #expect((r.networkIOLoopback ?? 0) >= 400_000)
        #expect((r.networkIOLoopback ?? 0) < 2_000_000)
        #expect((r.pidsCount ?? 0) >= 2)
    }

    @Test func isolationBasics() async throws {
        let r = try await run("""
        import os, socket
        print(os.getuid(), os.getgid(), socket.gethostname(), os.getcwd(), os.getpid())
        print(sorted(os.listdir("/proc/self/fd")))
        print(open("/proc/self/status").read().split("CapEff:")[1].split()[0])
        print(os.path.exists("/etc/shadow"), sorted(k for k in os.environ if not k.startswith("LC_")))
        """)
        let lines = r.output.split(separator: "\n")
        #expect(lines.first == "65534 65534 sandpit /work 2")
        #expect(lines.dropFirst().first == "['0', '1', '2', '3', '4']")  // 3: the metrics pipe; 4: listdir's own fd
        #expect(lines.dropFirst(2).first == "0000000000000000")
        #expect(lines.dropFirst(3).first?.hasPrefix("False ['HOME', 'LANG', 'MKL_NUM_THREADS'") == true)
    }

    @Test func stdinAndArgs() async throws {
        let r = try await run("import sys\nprint(sys.argv[1:], sys.stdin.read())") {
            $0.args = ["a", "b c"]
            $0.stdin = Array("hello".utf8)
        }
        #expect(r.output == "['a', 'b c'] hello\n")
    }

    @Test func eventsArriveAsTheRunGoesAndTheResultIsLast() async throws {
        try #require(Env.isRoot, "privileged test run without root")
        let events = RunEvents()
        let first = events.subscribe(), second = events.subscribe()
        func collect(_ s: AsyncStream<RunEvent>) async -> [RunEvent] { var all: [RunEvent] = []; for await e in s { all.append(e) }; return all }
        async let a = collect(first)
        async let b = collect(second)
        var req = ExecutionRequest(code: "import sys, time\nprint('a')\ntime.sleep(0.4)\nprint('b', file=sys.stderr)\ntime.sleep(0.4)\nprint('c')")
        req.limits.wallSeconds *= Env.slow
        let result = await sandbox.run(req, events: events)
        let (x, y) = await (a, b)
        #expect(x.count == y.count, "every subscriber sees every event")
        guard case .started(let id, let at)? = x.first else { Issue.record("first event: \(String(describing: x.first))"); return }
        #expect(id == result.containerID && at == result.startedAt)
        guard case .result(let last)? = x.last else { Issue.record("last event: \(String(describing: x.last))"); return }
        #expect(last == result)
        var out: [UInt8] = [], err: [UInt8] = [], samples: [LiveSample] = []
        for e in x {
            switch e {
            case .output(.stdout, let bytes): out += bytes
            case .output(.stderr, let bytes): err += bytes
            case .sample(let s): samples.append(s)
            default: break
            }
        }
        #expect(String(decoding: out, as: UTF8.self) == "a\nc\n" && String(decoding: err, as: UTF8.self) == "b\n")
        // The program ran for ~0.8 s: sampled every 250 ms (the default), in time order,
        // with its task; the last sample (after the end) agrees with the result.
        #expect(samples.count >= 3, "\(samples.count) samples")
        #expect(zip(samples, samples.dropFirst()).allSatisfy { $0.elapsed <= $1.elapsed })
        #expect(samples.contains { $0.pidsCount ?? 0 >= 1 && $0.cpuUserTime != nil })
        let end = try #require(samples.last)
        #expect(abs(end.elapsed - result.executionTime) < 0.001)
        #expect(end.memoryPeak == result.memoryPeak)
        #expect(end.networkIORx == result.networkIORx)
        let cpu = (end.cpuUserTime ?? 0) + (end.cpuSystemTime ?? 0), resultCPU = (result.cpuUserTime ?? 0) + (result.cpuSystemTime ?? 0)
        #expect(abs(cpu - resultCPU) < 0.01, "last sample \(cpu) s, result \(resultCPU) s")
        // A stream opened after the end ends at once.
        var late = 0
        for await _ in events.subscribe() { late += 1 }
        #expect(late == 0)

        let limited = RunEvents()
        let stream = limited.subscribe()
        async let seen = collect(stream)
        var slow = ExecutionRequest(code: "import time\ntime.sleep(30)")
        slow.limits.wallSeconds = 0.3 * Env.slow
        let r2 = await sandbox.run(slow, events: limited)
        let all = await seen
        #expect(r2.status == .timeout)
        let hits = all.compactMap { if case .limitHit(let k) = $0 { return k } else { return nil } }
        #expect(hits == ["wall_time"])
    }

    @Test func anotherRuntimeIsAValue() async throws {
        // The same sandbox runs a shell program: interpreter, file name, arguments and
        // environment come from the runtime value, nothing else changes.
        let sh = Runtime(name: "sh", interpreter: "/bin/sh", arguments: ["{file}"], fileName: "main.sh",
                         environment: ["GREETING=hi"])
        let r = try await run("echo \"$GREETING $0 $1\"; ls /work; echo \"${PYTHONUNBUFFERED:-unset}\"") {
            $0.runtime = sh
            $0.args = ["arg"]
        }
        #expect(r.status == .ok, "\(r.error ?? "")")
        #expect(r.output == "hi /work/main.sh arg\nmain.sh\nunset\n")
    }

    @Test func runtimeErrorAndExitCode() async throws {
        let r = try await run("import sys\nprint('x', file=sys.stderr)\nsys.exit(3)")
        #expect(r.status == .runtimeError)
        #expect(r.exitCode == 3)
        #expect(r.error == "x\n")
        #expect(!r.success)
        let e = try await run("raise ValueError('boom')")
        #expect(e.status == .runtimeError && e.exitCode == 1)
        #expect(e.error?.contains("ValueError: boom") == true)
    }

    @Test func signaled() async throws {
        let r = try await run("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
        #expect(r.status == .signaled)
        #expect(r.signal == 11)
        #expect(r.exitCode == 139)
    }

    @Test func wallTimeLimit() async throws {
        let r = try await run("import time\ntime.sleep(30)") { $0.limits.wallSeconds = 0.5 * Env.slow }
        #expect(r.status == .timeout && r.timedOut)
        #expect(r.executionTime >= 0.5 * Env.slow)
        #expect(r.executionTime < 0.5 * Env.slow + 0.25 * Env.slow)
        #expect(r.signal == 9)
    }

    @Test func cpuTimeLimit() async throws {
        let r = try await run("while True: pass") { $0.limits.cpuSeconds = 0.3 }
        #expect(r.status == .timeout && r.timedOut)
        let cpu = (r.cpuUserTime ?? 0) + (r.cpuSystemTime ?? 0)
        #expect(cpu >= 0.29)
        #expect(cpu < 0.45)
    }

    @Test func memoryLimit() async throws {
        let r = try await run("x = bytearray(300 * 1024 * 1024)\nprint('survived')") { $0.limits.memoryBytes = 64 << 20 }
        #expect(r.status == .memoryLimit)
        // The kernel's OOM killer acts, or (thrashing on re-read file pages, seen in the VM) the supervisor.
        #expect(r.oomKilled || r.error?.contains("thrashing") == true)
        #expect(r.output.isEmpty)
        #expect((r.memoryPeak ?? 0) <= (64 << 20) + (1 << 20))  // the kernel may overshoot by a page or a charge batch
        #expect((r.memoryPeak ?? 0) >= 48 << 20)
        #expect((r.memoryPercent ?? 0) >= 75)
    }

    @Test func taskLimit() async throws {
        let r = try await run("""
        import threading, time
        n = 0
        try:
            for _ in range(100):
                threading.Thread(target=time.sleep, args=(2,), daemon=True).start(); n += 1
        except RuntimeError:
            pass
        print(n)
        """) { $0.limits.pids = 10 }
        #expect(r.status == .ok)
        #expect(r.output == "9\n")  // 10 tasks: the main thread and 9 more
        #expect(r.pidsCount == 10)
    }

    @Test func outputLimitAndTruncation() async throws {
        let r = try await run("import sys\nsys.stdout.write('a' * 100000)\nsys.stdout.flush()\nimport time; time.sleep(10)") {
            $0.limits.outputBytes = 1000
        }
        #expect(r.status == .outputLimit)
        #expect(r.stdoutTruncated && !r.stderrTruncated)
        #expect(r.output == String(repeating: "a", count: 1000))
        #expect(r.executionTime < 5 * Env.slow)
    }

    @Test func invalidUTF8StaysValidJSON() async throws {
        let r = try await run("import sys\nsys.stdout.buffer.write(b'ok\\xff\\x00end')")
        #expect(r.output == "ok\u{FFFD}\u{0}end")
        let json = r.jsonString()
        #expect((try? JSONSerialization.jsonObject(with: Data(json.utf8))) != nil)
    }

    @Test func missingInterpreterIsAnInternalError() async throws {
        let r = try await run("print(1)") { $0.python = "/nonexistent/python3" }
        #expect(r.status == .internalError)
        #expect(r.error?.contains("/nonexistent/python3") == true)
    }

    @Test func noLeftoversAfterManyRuns() async throws {
        try #require(Env.isRoot)
        await sandbox.quiesce()
        sandbox.releaseSpares()
        let before = Leftovers.snapshot(runs: [])
        var statuses: [RunStatus: Int] = [:]
        var ids: [String] = []
        for i in 0..<Env.soakRuns {
            let code = i % 10 == 0 ? "import os, time\nos.fork()\ntime.sleep(60)" : "print(\(i))"
            let r = await sandbox.run({
                var q = ExecutionRequest(code: code)
                q.limits.wallSeconds = i % 10 == 0 ? (Env.inVM ? 3 : 0.2) : 10 * Env.slow
                return q
            }())
            statuses[r.status, default: 0] += 1
            ids.append(r.containerID)
        }
        #expect(statuses[.internalError] == nil, "\(statuses)")
        #expect(statuses[.ok] == Env.soakRuns - (Env.soakRuns + 9) / 10)
        #expect(statuses[.timeout] == (Env.soakRuns + 9) / 10)
        await sandbox.quiesce()
        sandbox.releaseSpares()
        let after = Leftovers.snapshot(runs: Set(ids))
        #expect(after == before, "leftovers: \(after) vs \(before)")
    }
}

}

extension PrivilegedSandboxSuites {
/// What a service keeps between runs: emptied scratch filesystems and the launcher.
@Suite("Reuse between runs (root)")
struct ReuseTests {
    static func sandbox(pool: Int) -> Sandbox {
        var s = SandboxSettings()
        s.scratchPoolSize = pool
        s.prepareAhead = false
        return Sandbox(settings: s)
    }

    func run(_ sandbox: Sandbox, _ code: String) async throws -> ExecutionResult {
        try #require(Env.isRoot, "privileged test run without root")
        var req = ExecutionRequest(code: code)
        req.limits.wallSeconds *= Env.slow
        let r = await sandbox.run(req)
        await sandbox.quiesce()
        return r
    }

    @Test func aReusedScratchIsEmptyAndFresh() async throws {
        let sandbox = Self.sandbox(pool: 1)
        defer { sandbox.shutdown() }
        let a = try await run(sandbox, #"""
        import os
        os.makedirs("/work/a/b/c")
        open("/work/a/b/c/f", "w").write("secret-A")
        open("/tmp/t", "w").write("secret-A")
        os.symlink("/", "/tmp/rootlink")
        os.symlink("/work/a", "/work/alink")
        os.mkfifo("/tmp/fifo")
        os.makedirs("/tmp/locked/inner")
        open("/tmp/locked/inner/x", "w").write("x")
        os.chmod("/tmp/locked/inner", 0)
        os.chmod("/tmp/locked", 0)
        os.chmod("/work", 0o700)
        fd = os.open("/tmp/unlinked", os.O_CREAT | os.O_WRONLY)
        os.write(fd, b"still open at exit")
        os.unlink("/tmp/unlinked")
        try:
            os.setxattr("/work/a", "user.note", b"A")
        except OSError:
            pass
        print("messed up")
        """#)
        #expect(a.status == .ok, "\(a.error ?? "")")
        #expect(a.output == "messed up\n")
        let kept = sandbox.pool.items.map(\.devicePath)
        #expect(kept.count == 1, "the emptied scratch is kept for the next run")

        let b = try await run(sandbox, #"""
        import os
        for top in ("/tmp", "/work"):
            for root, dirs, files in os.walk(top):
                print(root, sorted(dirs), sorted(files))
        for d in ("/work", "/tmp"):
            st = os.stat(d)
            print(d, oct(st.st_mode & 0o7777), st.st_uid)
        """#)
        #expect(b.status == .ok, "\(b.error ?? "")")
        #expect(b.output == "/tmp [] []\n/work [] ['main.py']\n/work 0o755 65534\n/tmp 0o1777 0\n")
        #expect(sandbox.pool.items.map(\.devicePath) == kept, "the second run used the same scratch device")
    }

    @Test func aScratchLeftTooFullIsNotReused() async throws {
        let sandbox = Self.sandbox(pool: 1)
        defer { sandbox.shutdown() }
        let a = try await run(sandbox, "for i in range(1000):\n    open(f'/tmp/f{i}', 'w').close()\nprint('ok')")
        #expect(a.status == .ok && a.output == "ok\n")
        #expect(sandbox.pooledScratches == 0, "a scratch with 1000 files left is released, not emptied")
        let deep = try await run(sandbox, "import os\nos.makedirs('/tmp/' + '/'.join(['d'] * 40))\nprint('ok')")
        #expect(deep.status == .ok && deep.output == "ok\n")
        #expect(sandbox.pooledScratches == 0, "a tree deeper than the reset walks is released")
        let b = try await run(sandbox, "import os\nprint(os.listdir('/tmp'))")
        #expect(b.output == "[]\n")
        #expect(sandbox.pooledScratches == 1)
    }

    /// A sandbox that keeps one network namespace and prepares nothing ahead.
    static func netnsSandbox() -> Sandbox {
        var settings = SandboxSettings()
        settings.prepareAhead = false
        settings.netnsPoolSize = 1
        return Sandbox(settings: settings)
    }

    @Test func onlyAQuietNetworkNamespaceIsReused() async throws {
        let sandbox = Self.netnsSandbox()
        defer { sandbox.shutdown() }
        let ino = "import os\nprint(os.stat('/proc/self/ns/net').st_ino)\n"
        let a = try await run(sandbox, ino)
        let b = try await run(sandbox, ino)
        #expect(a.status == .ok && b.status == .ok)
        #expect(a.output == b.output, "a namespace no packet went through is kept")
        #expect(b.networkIORx == 0 && b.networkIOTx == 0)
        // Traffic (a TCP connection to itself, leaving TIME_WAIT behind) → not kept.
        let c = try await run(sandbox, ino + """
        import socket
        srv = socket.socket(); srv.bind(("127.0.0.1", 8080)); srv.listen()
        cli = socket.create_connection(("127.0.0.1", 8080)); conn, _ = srv.accept()
        conn.sendall(b"x" * 1000); cli.recv(10); conn.close(); cli.close(); srv.close()
        """)
        #expect(c.status == .ok, "\(c.error ?? "")")
        #expect(c.output == b.output, "the traffic ran in the kept namespace")
        #expect((c.networkIOLoopback ?? 0) >= 1000)
        let d = try await run(sandbox, ino + """
        import socket
        srv = socket.socket(); srv.bind(("127.0.0.1", 8080)); srv.listen(); print("bound")
        print(open("/proc/net/tcp").read().count("\\n") - 1)
        """)
        #expect(d.status == .ok, "\(d.error ?? "")")
        let lines = d.output.split(separator: "\n")
        #expect(lines.count == 3 && lines[0] != c.output.split(separator: "\n").first, "a new namespace after traffic: \(d.output)")
        #expect(lines.dropFirst().first == "bound")
        #expect(lines.last == "1", "only this run's listener is in its namespace: \(d.output)")
        #expect(d.networkIORx == 0 && d.networkIOTx == 0)
    }

    @Test func failedSendsLeaveNoCounterForTheNextRun() async throws {
        let sandbox = Self.netnsSandbox()
        defer { sandbox.shutdown() }
        let ino = "import os\nprint(os.stat('/proc/self/ns/net').st_ino)\n"
        let snmp = """
        rows = [l.split() for l in open("/proc/net/snmp") if l.startswith("Ip:")]
        print(dict(zip(rows[0], rows[1]))["OutNoRoutes"])
        """
        // Every send fails (no route): not one packet on `lo`, but the namespace's
        // counters moved. Another run must not read them.
        let a = try await run(sandbox, ino + """
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        n = 0
        for i in range(1234):
            try:
                s.sendto(b"x", ("10.9.9.9", 9))
            except OSError:
                n += 1
        print(n)

        """ + snmp)
        #expect(a.status == .ok, "\(a.error ?? "")")
        #expect(a.output.split(separator: "\n").dropFirst().map(String.init) == ["1234", "1234"], "\(a.output)")
        #expect(a.networkIORx == 0 && a.networkIOTx == 0)
        let b = try await run(sandbox, ino + snmp)
        #expect(b.status == .ok, "\(b.error ?? "")")
        let lines = b.output.split(separator: "\n")
        #expect(lines.last == "0", "the next run reads the previous run's counters: \(b.output)")
        #expect(lines.first != a.output.split(separator: "\n").first, "a fresh namespace, not the one with moved counters")
        // A run that did nothing to its network leaves a namespace that is kept.
        let c = try await run(sandbox, ino)
        #expect(c.output == String(lines[0]) + "\n", "a namespace whose counters are as new is still reused")
    }

    @Test func anEmptiedScratchGivesItsBlocksBackToTheHost() async throws {
        let sandbox = Self.sandbox(pool: 1)
        defer { sandbox.shutdown() }
        let a = try await run(sandbox, """
        import os
        with open("/tmp/big", "wb") as f:
            for i in range(60):
                f.write(os.urandom(1 << 20))
            f.flush()
            os.fsync(f.fileno())
        print(os.path.getsize("/tmp/big") >> 20)
        """)
        #expect(a.status == .ok && a.output == "60\n", "\(a.error ?? "")")
        #expect((a.blockIOWrite ?? 0) >= 60 << 20, "the data reached the scratch's device")
        let kept = try #require(sandbox.pool.items.first, "the emptied scratch is kept")
        #expect(kept.hostBytes < 16 << 20, "an emptied scratch still holds \(kept.hostBytes) bytes of host disk")
    }

    @Test func runsBindFromTheLaunchersViewOfTheHostRoot() async throws {
        let sandbox = Sandbox()
        defer { sandbox.shutdown() }
        let state = sandbox.settings.stateDirectory
        let usr = "print([l.split(' - ')[1].strip() for l in open('/proc/self/mountinfo') if ' /usr /usr ' in l])"
        let a = try await run(sandbox, usr)
        // One overlay, mounted by the launcher in a mount namespace of its own...
        #expect(a.output.contains("overlay sandpit ro,lowerdir=/:\(state)/view-empty"), "\(a.output)")
        // ...which the host never sees.
        #expect(!(SysFile.read("/proc/self/mountinfo") ?? "").contains(state + "/view"))
        // Without the launcher a run mounts an overlay of its own, the same to the program.
        let zygote = try #require(sandbox.launcherPid)
        #expect(kill(zygote, SIGKILL) == 0)  // our own child
        usleep(50_000)
        let b = try await run(sandbox, usr)
        #expect(b.output.contains("overlay sandpit ro,lowerdir=/:\(state)/root/.sandpit-empty"), "\(b.output)")
    }

    @Test func runsContinueWhenTheLauncherDies() async throws {
        let sandbox = Sandbox()
        defer { sandbox.shutdown() }
        let first = try await run(sandbox, "print('one')")
        #expect(first.status == .ok && first.output == "one\n")
        let zygote = try #require(sandbox.launcherPid, "the sandbox runs through its launcher")
        #expect(SysFile.read("/proc/\(zygote)/comm") == "sandpit-zygote\n")
        #expect(kill(zygote, SIGKILL) == 0)  // our own child
        usleep(50_000)
        let second = try await run(sandbox, "print('two')")
        #expect(second.status == .ok && second.output == "two\n", "\(second.error ?? "")")
        let third = try await run(sandbox, "print('three')")
        #expect(third.status == .ok && third.output == "three\n")
        let next = try #require(sandbox.launcherPid, "a new launcher was started")
        #expect(next != zygote)
    }
}
}

/// What a run could leave on the host: run cgroups, mounts, attached loop devices.
struct Leftovers: Equatable, CustomStringConvertible {
    var cgroups: [String]
    var mounts: Int
    var loops: [String]

    /// `runs`: the ids whose cgroups count (other suites may have runs in flight).
    static func snapshot(runs: Set<String>) -> Leftovers {
        // Loop devices clear themselves asynchronously once the run's mount is gone.
        var loops: [String] = []
        for _ in 0..<100 {
            loops = (SysFile.list("/sys/block").filter { $0.hasPrefix("loop") }).filter {
                let bf = SysFile.read("/sys/block/\($0)/loop/backing_file") ?? ""
                return bf.hasPrefix(SandboxSettings().stateDirectory + "/scratch")
            }
            if loops.isEmpty { break }  // (other tests' runs may still be detaching)
            usleep(20_000)
        }
        let backend = try? Cgroups.shared()
        let cgroups = (backend?.parentDirectories ?? []).flatMap { p in
            SysFile.list(p).filter { $0.hasPrefix("run-") && runs.contains(String($0.split(separator: "-").last ?? "")) }
        }
        let state = SandboxSettings().stateDirectory
        let mounts = (SysFile.read("/proc/self/mountinfo") ?? "").split(separator: "\n").filter { $0.contains(state) }.count
        return Leftovers(cgroups: cgroups.sorted(), mounts: mounts, loops: loops)
    }

    var description: String { "cgroups \(cgroups), mounts \(mounts), loops \(loops)" }
}

extension PrivilegedSandboxSuites {
@Suite("sandpit CLI (root)")
struct CLITests {
    /// The `sandpit` binary built next to this test bundle.
    static var binary: String {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("sandpit").path
    }

    func cli(_ args: [String]) async throws -> (status: Int32, stdout: String) {
        try #require(Env.isRoot, "privileged test run without root")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.binary)
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        return try await withCheckedThrowingContinuation { cont in
            p.terminationHandler = { proc in
                let data = out.fileHandleForReading.readDataToEndOfFile()
                cont.resume(returning: (proc.terminationStatus, String(decoding: data, as: UTF8.self)))
            }
            do { try p.run() } catch { cont.resume(throwing: error) }
        }
    }

    @Test func jsonRunExitStatusAndNoLeftovers() async throws {
        let (status, out) = try await cli(["run", "--json", "--name", "cli-test", "-c", "import sys\nprint('hi')\nsys.exit(4)"])
        #expect(status == 4)  // the program's exit status
        let r = try JSONDecoder().decode(ExecutionResult.self, from: Data(out.utf8))
        #expect(r.output == "hi\n")
        #expect(r.containerName == "cli-test")
        #expect(r.status == .runtimeError)
        // The CLI process is gone, and so is every cgroup of its run.
        let backend = try Cgroups.shared()
        let left = backend.parentDirectories.flatMap { SysFile.list($0) }.filter { $0.contains(r.containerID) }
        #expect(left.isEmpty, "left behind: \(left)")
    }

    @Test func eventsAsJSONLines() async throws {
        let code = "import sys, time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.2)\nprint('e', file=sys.stderr)"
        let (status, out) = try await cli(["run", "--events", "--sample-interval", "0.1", "--time-limit", "\(30 * Env.slow)", "-c", code])
        #expect(status == 0)
        let events = out.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        #expect(events.count == out.split(separator: "\n").count, "every line is a JSON object")
        let names = events.compactMap { $0["event"] as? String }
        #expect(names.first == "started" && names.last == "result")
        #expect(events.filter { $0["event"] as? String == "stdout" }.compactMap { $0["data"] as? String }.joined() == "0\n1\n2\n")
        #expect(events.filter { $0["event"] as? String == "stderr" }.compactMap { $0["data"] as? String }.joined() == "e\n")
        #expect(names.filter { $0 == "sample" }.count >= 4, "\(names)")
        let result = try #require(events.last)
        #expect(result["output"] as? String == "0\n1\n2\n" && result["status"] as? String == "ok")
    }

    @Test func invalidArgumentsAreRejected() async throws {
        let (status, out) = try await cli(["run", "--memory-limit", "1", "-c", "pass"])
        #expect(status == 64)  // ArgumentParser's validation failure (EX_USAGE)
        #expect(out.isEmpty)
    }
}
}
