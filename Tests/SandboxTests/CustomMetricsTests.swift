import Foundation
import Testing
@testable import Sandbox

/// A pipe written by `write` and read by a MetricsReader, as the supervisor does.
private func readLines(_ chunks: [String], eof: Bool = true) -> MetricsReader {
    var fds: [Int32] = [-1, -1]
    pipe(&fds)
    _ = fcntl(fds[0], F_SETFL, O_NONBLOCK)
    var reader = MetricsReader()
    var t = 0.0
    for c in chunks {
        // In pieces the pipe holds (64 KiB), each read before the next is written.
        let bytes = Array(c.utf8)
        var at = 0
        repeat {
            let n = min(32768, bytes.count - at)
            _ = bytes[at..<(at + n)].withUnsafeBytes { write(fds[1], $0.baseAddress, n) }
            at += n
            reader.drain(fds[0], now: { t += 1; return t })
        } while at < bytes.count
    }
    if eof {
        close(fds[1])
        reader.drain(fds[0], now: { t += 1; return t })
    } else {
        close(fds[1])
    }
    close(fds[0])
    return reader
}

@Suite("Custom metrics and alert rules (unit)")
struct CustomMetricsUnitTests {
    @Test func linesBecomePointsAndSummaries() {
        let r = readLines([#"{"name": "loss", "value": 0.5, "unit": "nats"}"# + "\n",
                           #"{"name":"loss","value":0.25}"# + "\n" + #"{"name":"acc","value":3}"# + "\n",
                           "  \n", // blank lines are nothing
                           #"{"name":"loss","va"#, #"lue":1.5}"# + "\n"])  // a line split across two writes
        #expect(r.rejected == 0)
        #expect(r.points.map(\.name) == ["loss", "loss", "acc", "loss"])
        #expect(r.summaries["loss"] == CustomMetric(last: 1.5, min: 0.25, max: 1.5, count: 3, unit: "nats"))
        #expect(r.summaries["acc"] == CustomMetric(last: 3, min: 3, max: 3, count: 1, unit: nil))
        #expect(r.points.map(\.t) == r.points.map(\.t).sorted())
    }

    @Test func malformedLinesAreCountedNotFatal() {
        let bad = ["garbage", "{}", #"{"name": "x"}"#, #"{"name": "1x", "value": 1}"#, #"{"name": "x y", "value": 1}"#,
                   #"{"name": "x", "value": true}"#, #"{"name": "x", "value": "1"}"#, #"{"name": "x", "value": 1e999}"#,
                   #"{"name": "x", "value": 1, "unit": "\#(String(repeating: "u", count: 33))"}"#, "[1,2]", "\u{1}\u{2}",
                   #"{"name": "\#(String(repeating: "n", count: 65))", "value": 1}"#]
        let r = readLines(bad.map { $0 + "\n" } + [#"{"name": "ok", "value": -2}"# + "\n"])
        #expect(r.rejected == bad.count)
        #expect(r.summaries.keys.sorted() == ["ok"])
    }

    @Test func aLastLineWithoutNewlineCountsAtTheEnd() {
        #expect(readLines([#"{"name": "a", "value": 1}"#]).summaries["a"]?.count == 1)
        #expect(readLines([#"{"name": "a", "value": 1}"#], eof: false).summaries.isEmpty)
    }

    @Test func limitsHold() {
        // 65 names: the 65th is rejected.
        let names = (0..<65).map { #"{"name": "m\#($0)", "value": 1}"# + "\n" }.joined()
        let r1 = readLines([names])
        #expect(r1.summaries.count == CustomMetrics.maxNames && r1.rejected == 1)
        // 10 001 points: the last is rejected.
        let many = String(repeating: #"{"name": "p", "value": 1}"# + "\n", count: CustomMetrics.maxPoints + 1)
        let r2 = readLines(Array(repeating: "", count: 0) + [many])
        #expect(r2.points.count == CustomMetrics.maxPoints && r2.rejected == 1)
        // An overlong line (no newline for 3 KiB, then one) is one rejected line; what follows counts.
        let r3 = readLines([String(repeating: "x", count: 2000), String(repeating: "y", count: 1000) + "\n",
                            #"{"name": "after", "value": 1}"# + "\n"])
        #expect(r3.rejected == 1 && r3.summaries["after"]?.count == 1)
        // Past the parse budget every line is rejected unparsed.
        let junk = String(repeating: "{}\n", count: CustomMetrics.maxParsedLines + 10) + #"{"name": "late", "value": 1}"# + "\n"
        let r4 = readLines([junk])
        #expect(r4.rejected == CustomMetrics.maxParsedLines + 11 && r4.summaries.isEmpty)
    }

    @Test func resultFieldsRoundTrip() throws {
        var r = ExecutionResult(containerID: "c", containerName: "n", startedAt: Date(timeIntervalSince1970: 0))
        r.customMetrics = ["loss": CustomMetric(last: 0.1, min: 0.1, max: 2, count: 7, unit: "nats"),
                           "q\"uote": CustomMetric(last: 1, min: 1, max: 1, count: 1, unit: nil)]
        r.customMetricsRejected = 3
        r.alerts = ["big", "slow\"er"]
        for text in [r.jsonString(), r.jsonString(pretty: true)] {
            let back = try JSONDecoder().decode(ExecutionResult.self, from: Data(text.utf8))
            #expect(back.customMetrics == r.customMetrics && back.alerts == r.alerts && back.customMetricsRejected == 3)
            let obj = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
            #expect((obj["custom_metrics"] as? [String: Any])?["loss"] != nil)
            #expect(((obj["custom_metrics"] as? [String: Any])?["q\"uote"] as? [String: Any])?["unit"] is NSNull)
        }
        let empty = ExecutionResult(containerID: "c", containerName: "n", startedAt: Date())
        let obj = try #require(try JSONSerialization.jsonObject(with: Data(empty.jsonString().utf8)) as? [String: Any])
        #expect((obj["custom_metrics"] as? [String: Any])?.isEmpty == true && (obj["alerts"] as? [Any])?.isEmpty == true)
    }

    @Test func alertRulesParseAndMatch() throws {
        let rule = try AlertRule(parsing: "big-mem: memory_percent >= 90")
        #expect(rule.name == "big-mem" && rule.field == "memory_percent" && rule.op == .ge && rule.threshold == 90)
        #expect(try AlertRule(parsing: "x:execution_time>5").op == .gt)
        #expect(try AlertRule(parsing: "neg: custom.loss != -1.5").threshold == -1.5)
        for bad in ["no colon", ": memory_peak > 1", "1x: memory_peak > 1", "x: memory_peak", "x: nope > 1",
                    "x: memory_peak > lots", "x: memory_peak > inf", "x: custom.1bad > 1", "x: output > 1"] {
            #expect(throws: AlertRuleError.self, "\(bad)") { try AlertRule(parsing: bad) }
        }
        var r = ExecutionResult(containerID: "c", containerName: "n", startedAt: Date())
        r.memoryPercent = 95
        r.executionTime = 2
        r.customMetrics = ["loss": CustomMetric(last: 3, min: 0, max: 3, count: 2, unit: nil)]
        let rules = try AlertRule.parseFile("""
            # a comment

            big-mem: memory_percent >= 90
            slow: execution_time > 5
            loss: custom.loss > 1
            absent: custom.other > 0
            cpu: cpu_percent < 1000
            """)
        #expect(rules.count == 5)
        #expect(rules.matches(r) == ["big-mem", "loss"])  // cpu_percent is null: no match
        #expect(throws: AlertRuleError.self) { try AlertRule.parseFile("a: memory_peak > 1\na: memory_peak > 2") }
        do {
            _ = try AlertRule.parseFile("ok: memory_peak > 1\n\nbroken")
            Issue.record("no error")
        } catch {
            #expect(error.message.hasPrefix("line 3:"))
        }
    }
}

extension PrivilegedSandboxSuites {
@Suite("Custom metrics from real runs (root, real sandbox)")
struct CustomMetricsRunTests {
    let sandbox = Sandbox()

    func run(_ code: String, events: RunEvents? = nil, _ edit: (inout ExecutionRequest) -> Void = { _ in }) async throws -> ExecutionResult {
        try #require(Env.isRoot, "privileged test run without root")
        var req = ExecutionRequest(code: code)
        req.limits.wallSeconds = 60 * Env.slow
        req.limits.cpuSeconds = 60 * Env.slow
        edit(&req)
        return await sandbox.run(req, events: events)
    }

    @Test func aProgramReportsAHundredPoints() async throws {
        let events = RunEvents()
        let stream = events.subscribe()
        let collected = Task { var n = 0; for await e in stream { if case .metric = e { n += 1 } }; return n }
        let r = try await run("""
            import json, os, time
            with open(os.environ["SANDPIT_METRICS"], "w", buffering=1) as m:
                for i in range(100):
                    m.write(json.dumps({"name": "loss", "value": 1 / (i + 1), "unit": "nats"}) + "\\n")
                    if i == 50: time.sleep(0.2)
                m.write('{"name": "rows", "value": 12345}\\n')
            print("done")
            """, events: events)
        #expect(r.status == .ok && r.output == "done\n", "\(r.status) \(r.error ?? "")")
        #expect(r.customMetricsRejected == 0)
        #expect(r.customMetrics["loss"] == CustomMetric(last: 0.01, min: 0.01, max: 1, count: 100, unit: "nats"))
        #expect(r.customMetrics["rows"]?.last == 12345)
        #expect(r.customPoints.count == 101)
        let ts = r.customPoints.map(\.t)
        #expect(ts == ts.sorted() && ts.first! >= 0 && ts.last! <= r.executionTime + 0.05)
        // The sleep between point 51 and 52 shows in their times.
        #expect(r.customPoints[51].t - r.customPoints[50].t >= 0.15)
        #expect(await collected.value == 101)
    }

    @Test func aGibibyteOfGarbageBlocksNothing() async throws {
        // 64 KiB lines without a JSON object (each rejected unparsed), then a valid point.
        let lines = Env.inVM ? 256 : 16384  // 16 MiB in the emulated VM, 1 GiB here
        let rssBefore = residentBytes()
        let r = try await run("""
            import os
            fd = os.open(os.environ["SANDPIT_METRICS"], os.O_WRONLY)
            line = b"x" * 65535 + b"\\n"
            for _ in range(\(lines)):
                os.write(fd, line)
            os.write(fd, b'{"name": "survived", "value": 1}\\n')
            print("wrote")
            """)
        #expect(r.status == .ok && r.output == "wrote\n", "\(r.status) \(r.error ?? "")")
        #expect(r.customMetricsRejected == lines)
        #expect(r.customMetrics["survived"]?.count == 1)
        // Nothing of the flood was kept: the test process grew by far less than what went through.
        #expect(residentBytes() - rssBefore < 64 << 20, "RSS grew by \(residentBytes() - rssBefore)")
    }

    @Test func floodsOfShortLinesAreCountedAfterTheParseBudget() async throws {
        let r = try await run("""
            import os
            fd = os.open(os.environ["SANDPIT_METRICS"], os.O_WRONLY)
            os.write(fd, b"{}\\n" * 30000 + b'{"name": "late", "value": 1}\\n')
            """)
        #expect(r.status == .ok)
        #expect(r.customMetricsRejected == 30001 && r.customMetrics.isEmpty)
    }

    @Test func outputAndMetricsAtOnceDoNotDeadlock() async throws {
        // Three threads write stdout, stderr and metrics at the same time, none of
        // them waiting for anything: the supervisor drains all three pipes.
        let r = try await run("""
            import json, os, sys, threading
            m = open(os.environ["SANDPIT_METRICS"], "w")
            def out():
                for i in range(2048): sys.stdout.write("o" * 1023 + "\\n")
                sys.stdout.flush()
            def err():
                for i in range(2048): sys.stderr.write("e" * 1023 + "\\n")
                sys.stderr.flush()
            def met():
                for i in range(5000): m.write(json.dumps({"name": "step", "value": i}) + "\\n")
                m.flush()
            ts = [threading.Thread(target=f) for f in (out, err, met)]
            for t in ts: t.start()
            for t in ts: t.join()
            """) { $0.limits.outputBytes = 4 << 20 }
        #expect(r.status == .ok, "\(r.status) \(r.error?.prefix(200) ?? "")")
        #expect(r.output.utf8.count == 2 << 20 && (r.error?.utf8.count ?? 0) == 2 << 20)
        #expect(r.customMetrics["step"] == CustomMetric(last: 4999, min: 0, max: 4999, count: 5000, unit: nil))
    }

    @Test func theMetricsPipeIsTheProgramsAndItsChildrens() async throws {
        // A child process gets fd 3 when it is passed on (subprocess closes it by
        // default); a program that never uses it reports nothing.
        let r = try await run("""
            import subprocess, sys
            subprocess.run([sys.executable, "-c", "import os; os.write(3, b'{\\"name\\": \\"child\\", \\"value\\": 7}\\\\n')"], check=True, pass_fds=(3,))
            print(open("/dev/stdout", "w") is not None)
            """)
        #expect(r.status == .ok, "\(r.error ?? "")")
        #expect(r.customMetrics["child"]?.last == 7)
        let quiet = try await run("print(1)")
        #expect(quiet.customMetrics.isEmpty && quiet.customMetricsRejected == 0 && quiet.customPoints.isEmpty)
    }
}
}

/// The test process's resident set (VmRSS), in bytes.
func residentBytes() -> Int {
    let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
    let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
    return (Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0) * 1024
}
