import CgroupKit
import Foundation
import Testing
@testable import Sandbox

enum SessionSupport {
    static func options(_ name: String = "test-session") -> SessionOptions {
        var o = SessionOptions(name: name)
        o.limits.wallSeconds = 10 * Env.slow
        o.limits.cpuSeconds = 10 * Env.slow
        o.interruptGrace = 2 * Env.slow
        return o
    }

    static func open(_ sandbox: Sandbox, _ name: String = "test-session") async throws -> Session {
        try #require(Env.isRoot, "privileged test run without root")
        return try await Session.open(sandbox: sandbox, options: options(name))
    }

    static func totals(_ r: ExecutionResult) -> JSONValue { r.sessionTotals.flatMap(JSONValue.init(text:)) ?? .null }
}

extension PrivilegedSandboxSuites {
@Suite("Sessions (root, real sandbox)")
struct SessionTests {
    @Test func stateIsKeptAcrossExecutions() async throws {
        let sandbox = Sandbox()
        let s = try await SessionSupport.open(sandbox)
        let r1 = try await s.execute(code: "x = 41\nimport os\nopen('/work/f.txt', 'w').write('kept')")
        #expect(r1.status == .ok, "\(r1.error ?? "")")
        let r2 = try await s.execute(code: "x += 1\nprint(x)")
        #expect(r2.output == "42\n")
        let r3 = try await s.execute(code: "x * 2")
        #expect(r3.status == .ok && r3.output == "")
        #expect(r3.richResults == #"[{"data":"84","type":"text/plain"}]"#, "\(r3.richResults ?? "nil")")
        #expect([r1, r2, r3].map(\.executionIndex) == [1, 2, 3])
        #expect(r3.containerID == s.id && r3.containerName == "test-session")
        let r4 = try await s.execute(code: "1/0")
        #expect(r4.status == .runtimeError && r4.exitCode == 1)
        let exc = try #require(r4.exception.flatMap(JSONValue.init(text:)))
        #expect(exc["name"]?.stringValue == "ZeroDivisionError")
        #expect(exc["traceback"]?.stringValue?.contains("<cell 4>") == true)
        #expect(r4.error?.contains("ZeroDivisionError") == true)
        let dirs = s.cgroupDirectories
        await s.close()
        #expect(dirs.allSatisfy { !SysFile.isDirectory($0) }, "cgroup left: \(dirs)")
        await sandbox.quiesce()
        sandbox.shutdown()
    }

    /// Each execution's CPU is its own work, not the session's total: the cell's own
    /// process_time (what the interpreter spent on it) matches the cgroup's delta.
    @Test func perExecutionCPUIsTheDelta() async throws {
        let sandbox = Sandbox()
        let s = try await SessionSupport.open(sandbox)
        let burn = { (secs: Double) in """
            import time
            t0 = time.process_time()
            while time.process_time() - t0 < \(secs): pass
            print(round(time.process_time() - t0, 4))
            """ }
        let r1 = try await s.execute(code: burn(0.5))
        let r2 = try await s.execute(code: burn(0.15))
        for (r, secs) in [(r1, 0.5), (r2, 0.15)] {
            #expect(r.status == .ok, "\(r.error ?? "")")
            let own = Double(r.output.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
            let cpu = (r.cpuUserTime ?? 0) + (r.cpuSystemTime ?? 0)
            // The cgroup also charges the agent's own few milliseconds around the cell.
            #expect(own >= secs && cpu >= own - 0.011 && cpu <= own + 0.05 * Env.slow, "cell \(own) s, cgroup delta \(cpu) s")
        }
        let total = SessionSupport.totals(r2)
        let sessionCPU = (total["cpu_user_time"]?.numberValue ?? 0) + (total["cpu_system_time"]?.numberValue ?? 0)
        #expect(sessionCPU >= 0.65, "session total \(sessionCPU)")
        #expect(total["executions"]?.numberValue == 2)
        await s.close()
        await sandbox.quiesce()
        sandbox.shutdown()
    }

    /// A small execution after a big one reports its own peak: reset by the kernel where
    /// it can (v1, v2 from Linux 6.12), sampled otherwise.
    @Test func memoryPeakIsPerExecution() async throws {
        let sandbox = Sandbox()
        let s = try await SessionSupport.open(sandbox)
        let big = try await s.execute(code: "b = bytearray(200 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\nimport time; time.sleep(0.05 * \(Env.slow))\ndel b")
        let small = try await s.execute(code: "x = 1")
        #expect((big.memoryPeak ?? 0) > 200 << 20 && (big.memoryPeak ?? 0) < 400 << 20, "big \(big.memoryPeak ?? -1)")
        #expect((small.memoryPeak ?? .max) < 120 << 20, "small \(small.memoryPeak ?? -1) (\(small.memoryPeakMethod ?? "-"))")
        let backend = try Cgroups.shared()
        var uts = utsname()
        uname(&uts)
        let release = withUnsafeBytes(of: uts.release) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        let v = release.split(separator: ".").prefix(2).compactMap { Int($0) }
        let resettable = backend.version == .v1 || (v.count == 2 && (v[0], v[1]) >= (6, 12))
        #expect(small.memoryPeakMethod == (resettable ? "reset" : "sampled"), "kernel \(release) \(backend.version)")
        #expect((small.memoryUsage ?? 0) > 1 << 20, "the interpreter's memory is still there")
        await s.close()
        await sandbox.quiesce()
        sandbox.shutdown()
    }

    /// A time limit raises KeyboardInterrupt in the cell and the session goes on; a cell
    /// that ignores it loses the interpreter (not the files) after the grace.
    @Test(.enabled(if: !Env.inVM, "not cgroup-version specific: on the host only (the emulated VM runs python ~200× slower)")) func timeLimitInterruptsAndTheSessionSurvives() async throws {
        let sandbox = Sandbox()
        let s = try await SessionSupport.open(sandbox)
        _ = try await s.execute(code: "kept = 'yes'\nopen('/work/kept.txt', 'w').write('file')")
        let slow = try await s.execute(code: "import time\ntime.sleep(60)", wallSeconds: 1 * Env.slow)
        #expect(slow.status == .timeout && slow.timedOut)
        #expect(slow.exception.flatMap(JSONValue.init(text:))?["name"]?.stringValue == "KeyboardInterrupt")
        #expect(slow.executionTime >= 1 * Env.slow && slow.executionTime < 1 * Env.slow + 1.5, "\(slow.executionTime)")
        let after = try await s.execute(code: "print(kept)")
        #expect(after.output == "yes\n" && after.status == .ok)
        #expect(s.restarts == 0)

        let stubborn = try await s.execute(code: "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)",
                                           wallSeconds: 1 * Env.slow)
        #expect(stubborn.status == .timeout && stubborn.signal == 9, "\(stubborn.status) \(stubborn.signal ?? -1)")
        #expect(s.state == .stopped)
        let fresh = try await s.execute(code: "print('kept' in globals(), open('/work/kept.txt').read())")
        #expect(fresh.output == "False file\n", "\(fresh.output) \(fresh.error ?? "")")
        #expect(s.restarts == 1)

        let cpu = try await s.execute(code: "while True: pass", cpuSeconds: 0.5)
        #expect(cpu.status == .timeout && (cpu.cpuUserTime ?? 0) >= 0.45, "\(cpu.status) \(cpu.cpuUserTime ?? -1)")
        await s.close()
        await sandbox.quiesce()
        sandbox.shutdown()
    }

    /// An idle session is frozen: its CPU stays flat (a thread it left spinning stops),
    /// and the next execution thaws it with its state intact.
    @Test func freezeAndThaw() async throws {
        let sandbox = Sandbox()
        let s = try await SessionSupport.open(sandbox)
        _ = try await s.execute(code: "import threading\nn = 41\nthreading.Thread(target=lambda: [0 for _ in iter(int, 1)], daemon=True).start()")
        let backend = try Cgroups.shared()
        #expect(s.freeze())
        #expect(s.state == .frozen)
        let c0 = backend.stats(s.cgroup, [.cpu]).cpu.usageUsec ?? 0
        try await Task.sleep(for: .milliseconds(500))
        let c1 = backend.stats(s.cgroup, [.cpu]).cpu.usageUsec ?? 0
        #expect(c1 - c0 < 2000, "a frozen session used \(c1 - c0) µs of CPU")
        let r = try await s.execute(code: "n + 1")
        #expect(r.richResults == #"[{"data":"42","type":"text/plain"}]"#)
        #expect(s.state == .ready)
        let thaw = try #require(s.lastThawMs)
        #expect(thaw >= 0 && thaw < 1000 * Env.slow)
        await s.close()
        await sandbox.quiesce()
        sandbox.shutdown()
    }

    /// Two sessions see neither each other's files nor processes.
    @Test func sessionsAreIsolated() async throws {
        let sandbox = Sandbox()
        let a = try await SessionSupport.open(sandbox, "a")
        let b = try await SessionSupport.open(sandbox, "b")
        _ = try await a.execute(code: "open('/work/a.txt', 'w').write('a'); open('/tmp/a.tmp', 'w').write('a')")
        let probe = "import os\nprint(sorted(os.listdir('/work')), sorted(os.listdir('/tmp')), sorted(p for p in os.listdir('/proc') if p.isdigit()))"
        let rb = try await b.execute(code: probe)
        #expect(rb.output == "[] [] ['1', '2']\n", "\(rb.output) \(rb.error ?? "")")
        #expect(Set(a.processes).isDisjoint(with: Set(b.processes)))
        #expect(throws: SessionError.self) { try b.readFile("a.txt", maxBytes: 100) }
        await a.close()
        await b.close()
        await sandbox.quiesce()
        sandbox.shutdown()
    }

    /// Files go in and out byte for byte; escapes are refused.
    @Test(.enabled(if: !Env.inVM, "not cgroup-version specific: on the host only (the emulated VM runs python ~200× slower)")) func filesRoundTripAndEscapesAreRefused() async throws {
        let sandbox = Sandbox()
        let s = try await SessionSupport.open(sandbox)
        let bytes: [UInt8] = (0..<70_000).map { UInt8(truncatingIfNeeded: $0 &* 7919) }
        try s.writeFile("data/in.bin", bytes)
        let r = try await s.execute(code: """
            import hashlib, os
            d = open('/work/data/in.bin', 'rb').read()
            print(len(d), os.stat('/work/data/in.bin').st_uid == os.getuid())
            open('/work/out.bin', 'wb').write(d[::-1])
            os.symlink('/etc/passwd', '/work/link')
            os.symlink('/', '/work/rootlink')
            """)
        #expect(r.output == "70000 True\n", "\(r.output) \(r.error ?? "")")
        #expect(try s.readFile("/work/out.bin", maxBytes: 1 << 20) == Array(bytes.reversed()))
        #expect(throws: SessionError.self) { try s.readFile("out.bin", maxBytes: 1000) }  // too large
        for bad in ["../etc/passwd", "link", "rootlink/etc/passwd", "data/../../x", "", "/work"] {
            #expect(throws: SessionError.self, "\(bad)") { try s.readFile(bad, maxBytes: 1 << 20) }
        }
        #expect(throws: SessionError.self) { try s.writeFile("rootlink/tmp/evil", [1]) }
        #expect(throws: SessionError.self) { try s.writeFile("link", [1]) }
        let list = try s.listFiles("")
        #expect(list.map(\.name) == ["data", "link", "out.bin", "rootlink"])
        #expect(list.first { $0.name == "link" }?.kind == .symlink)
        #expect(list.first { $0.name == "out.bin" }?.size == 70_000)
        #expect(try s.listFiles("data").map(\.path) == ["data/in.bin"])
        await s.close()
        await sandbox.quiesce()
        sandbox.shutdown()
    }

    /// A matplotlib figure comes back as a PNG; an object's _repr_html_ as text/html.
    @Test(.enabled(if: !Env.inVM, "not cgroup-version specific: on the host only (the emulated VM runs python ~200× slower)")) func plotsAndRichResults() async throws {
        let sandbox = Sandbox()
        let s = try await SessionSupport.open(sandbox)
        let r = try await s.execute(code: """
            import matplotlib.pyplot as plt
            plt.plot([1, 2, 3], [4, 1, 9])
            plt.title('sandpit')
            class T:
                def _repr_html_(self): return '<b>hi</b>'
            T()
            """, wallSeconds: 30 * Env.slow)
        #expect(r.status == .ok, "\(r.error ?? "")")
        let items = try #require(r.richResults.flatMap(JSONValue.init(text:))?.arrayValue)
        try #require(items.compactMap { $0["type"]?.stringValue } == ["text/html", "text/plain", "image/png"], "\(r.error ?? "")")
        #expect(items[0]["data"]?.stringValue == "<b>hi</b>")
        let png = try #require(items[2]["data"]?.stringValue.flatMap { Data(base64Encoded: $0) })
        #expect(png.starts(with: [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]))
        #expect(png.count > 5_000 && png.count < 500_000, "\(png.count) bytes")
        // The figure was closed: the next cell shows nothing.
        let next = try await s.execute(code: "len(plt.get_fignums())")
        #expect(next.richResults == #"[{"data":"0","type":"text/plain"}]"#)
        await s.close()
        await sandbox.quiesce()
        sandbox.shutdown()
    }

    /// The session's memory limit holds for the whole session: an OOM ends the
    /// interpreter, the session starts another at the next execution.
    @Test func memoryLimitEndsTheInterpreterNotTheSession() async throws {
        let sandbox = Sandbox()
        var o = SessionSupport.options()
        o.limits.memoryBytes = 128 << 20
        try #require(Env.isRoot, "privileged test run without root")
        let s = try await Session.open(sandbox: sandbox, options: o)
        let r = try await s.execute(code: "b = bytearray(400 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1")
        #expect(r.status == .memoryLimit, "\(r.status) \(r.error ?? "")")
        let next = try await s.execute(code: "print('alive')")
        #expect(next.output == "alive\n" && s.restarts == 1)
        await s.close()
        await sandbox.quiesce()
        sandbox.shutdown()
    }

    /// The hostile suite's escape cases, as cells of one session: a session gives code
    /// nothing a run does not.
    @Test(.enabled(if: !Env.inVM, "not cgroup-version specific: on the host only (the emulated VM runs python ~200× slower)")) func hostileEscapeCasesInASession() async throws {
        let sandbox = Sandbox()
        let s = try await SessionSupport.open(sandbox)
        for c in Hostile.all where Hostile.sessionKinds.contains(c.kind) && !Hostile.notPerCell.contains(c.name) {
            var req = ExecutionRequest(code: prelude + c.code)
            req.limits.wallSeconds = 10 * Env.slow
            c.edit(&req)
            var r = try await s.execute(code: req.code, wallSeconds: req.limits.wallSeconds)
            if r.status == .runtimeError, r.exception.flatMap(JSONValue.init(text:))?["name"]?.stringValue == "SystemExit" { r.status = .ok }
            c.check(r)
            #expect(HostFixture.sentinelAlive, "\(c.testDescription)")
            #expect(SysFile.read(HostFixture.secretPath) == HostFixture.secretContent, "\(c.testDescription)")
        }
        // The two whose checks compare a run's exact argv and environment: the escape part.
        let proc = try #require(Hostile.all.first { $0.name.hasPrefix("the host through /proc") })
        let p = try await s.execute(code: prelude + proc.code)
        let lines = p.output.split(separator: "\n").map(String.init)
        #expect(lines.first == "{}" && lines.count == 3, "readable host information: \(p.output)")
        #expect(lines.last?.hasSuffix("True True True") == true)
        let env = try await s.execute(code: "import os, socket\nprint(socket.gethostname(), sorted(os.environ))")
        #expect(env.output == "sandpit ['HOME', 'LANG', 'MKL_NUM_THREADS', 'MPLBACKEND', 'OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'PATH', 'PYTHONDONTWRITEBYTECODE', 'PYTHONUNBUFFERED', 'SANDPIT_METRICS', 'TMPDIR']\n")
        await s.close()
        await sandbox.quiesce()
        sandbox.shutdown()
    }
}
}

extension Hostile {
    /// The kinds whose cases are escapes (files, network, kernel, leaks); the others test
    /// a run's own end (bombs, floods, limits), which sessions test on their own.
    static let sessionKinds: Set<String> = ["files", "network", "kernel", "leaks"]
    /// Escape cases whose check is about a run's lifetime, not the escape.
    static let notPerCell: Set<String> = [
        "fill the scratch area",  // edits the run's scratch size; a session's is fixed when it is made
        "the host through /proc: kernel symbols, config, memory map, keys, boot, disks",  // exact argv of a run: checked below
        "hostname and environment",  // exact environment of a run: checked below
    ]
}
