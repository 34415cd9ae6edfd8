import Foundation
import Hummingbird
import HummingbirdTesting
import Sandbox
import Testing
@testable import Service

/// Warm templates through the service: the real HTTP server, real runs, the real
/// binary for `serve --socket` and `run --server`.
@Suite("Service: warm templates (root, real server and runs)", .enabled(if: Env.shouldRun), .serialized)
struct WarmServiceTests {
    /// Blocks on a thread of its own until the templates are ready.
    static func ready(_ svc: ServiceContext) async -> Bool {
        await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
            Thread { c.resume(returning: svc.sandbox.waitForWarmTemplates(timeout: 60 * Env.slow)) }.start()
        }
    }

    @Test func warmRequestsAreAnsweredAndLogged() async throws {
        try #require(Env.isRoot, "privileged test run without root")
        try await withService({ $0.warmTemplates = [try! WarmSpec(parsing: "numpy")] }) { client, svc in
            let ok = await Self.ready(svc)
            try #require(ok, "\(svc.sandbox.warmStatus)")
            let h = try await client.get("/health")
            let health = try #require(json(h.body) as? [String: Any])
            #expect(openAPI.validate(health, path: "/health", method: "get", status: 200).isEmpty)
            let t = try #require((health["warm"] as? [[String: Any]])?.first)
            #expect(t["modules"] as? String == "numpy" && t["ready"] as? Bool == true && (t["memory_shared"] as? Int ?? 0) > 20 << 20)

            let code = "import numpy as np\nprint(np.arange(10).sum())"
            let r = try await client.post("/execute", #"{"code": \#(jsonString(code)), "warm": "numpy", "time_limit": \#(min(300, 30 * Env.slow))}"#)
            #expect(r.status == .ok)
            let result = try #require(json(r.body) as? [String: Any])
            #expect(openAPI.validate(result, path: "/execute", method: "post", status: 200).isEmpty)
            #expect(result["output"] as? String == "45\n" && result["start"] as? String == "warm"
                    && result["warm_template"] as? String == "numpy")
            let shared = result["memory_shared"] as? Int ?? 0
            let peak = result["memory_peak"] as? Int ?? 0
            #expect(shared > 20 << 20 && peak > 0 && peak < shared, "peak \(peak), shared \(shared)")

            // `true` finds the numpy template by the code's imports; a cold request stays cold.
            let auto = try #require(json(try await client.post("/execute", #"{"code": \#(jsonString(code)), "warm": true}"#).body) as? [String: Any])
            #expect(auto["start"] as? String == "warm")
            let cold = try #require(json(try await client.post("/execute", #"{"code": \#(jsonString(code))}"#).body) as? [String: Any])
            #expect(cold["start"] as? String == "cold" && cold["memory_shared"] is NSNull && cold["output"] as? String == "45\n")

            // The log keeps how each started.
            let rowID = try #require(r.headers[.init("X-Execution-Id")!].flatMap { Int($0) })
            let row = try #require(json(try await client.get("/executions/\(rowID)").body) as? [String: Any])
            #expect(openAPI.validate(row, path: "/executions/{id}", method: "get", status: 200).isEmpty)
            #expect(row["start"] as? String == "warm" && row["warm_template"] as? String == "numpy" && row["memory_shared"] as? Int == shared)
            let page = try #require(json(try await client.get("/executions?limit=3").body) as? [String: Any])
            let starts = (page["executions"] as? [[String: Any]])?.compactMap { $0["start"] as? String }
            #expect(starts == ["cold", "warm", "warm"])

            // A template the service does not keep: a cold run that says so.
            let other = try #require(json(try await client.post("/execute", #"{"code": "print(1)", "warm": "pandas"}"#).body) as? [String: Any])
            #expect(other["start"] as? String == "cold" && other["warm_template"] is NSNull && other["output"] as? String == "1\n")
            // Bad values: 400 with a JSON reason.
            for (body, code) in [(#"{"code": "print(1)", "warm": 3}"#, "invalid_request"),
                                 (#"{"code": "print(1)", "warm": "numpy;rm"}"#, "invalid_request")] {
                let b = try await client.post("/execute", body)
                #expect(b.status == .badRequest, "\(body)")
                let e = json(b.body) as? [String: Any]
                #expect(e?["error"] as? String == code, "\(body): \(String(describing: e))")
                #expect(openAPI.validate(e as Any, path: "/execute", method: "post", status: 400).isEmpty)
            }
        }
    }

    /// `serve --socket` and `sandpit run --server unix:...`: the same output, table and
    /// exit status as a local run, warm by default.
    @Test func runHandsItsProgramToTheServiceOverItsSocket() async throws {
        try #require(Env.isRoot, "privileged test run without root")
        let db = tempDB()
        defer { removeDB(db) }
        let sock = serviceTestState + "/test-\(getpid()).sock"
        let server = try ServerProcess(db: db, extra: ["--warm", "numpy", "--socket", sock])
        defer { server.process.terminate(); server.process.waitUntilExit() }
        try await server.waitReady()
        for _ in 0..<Int(600 * Env.slow) {
            let (_, body) = try await server.request("GET", "/health")
            if body.contains(#""ready":true"#) { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        var st = stat()
        #expect(lstat(sock, &st) == 0 && (st.st_mode & S_IFMT) == S_IFSOCK && (st.st_mode & 0o777) == 0o660)

        func sandpit(_ args: [String]) throws -> (Int32, String, String) {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: ServerProcess.binary)
            p.arguments = args
            let out = Pipe(), err = Pipe()
            p.standardOutput = out
            p.standardError = err
            try p.run()
            let o = out.fileHandleForReading.readDataToEndOfFile()
            let e = err.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
        }
        let (s1, out1, err1) = try sandpit(["run", "--server", "unix:" + sock, "-c", "import numpy, sys\nprint(numpy.arange(4).sum(), sys.argv[1:])\nsys.exit(3)", "--", "a", "b"])
        #expect(s1 == 3 && out1 == "6 ['a', 'b']\n", "\(out1) \(err1)")
        #expect(err1.contains("status runtime_error") && err1.contains("warm (numpy"), "\(err1)")
        let (s2, out2, _) = try sandpit(["run", "--server", "unix:" + sock, "--cold", "--json", "--label", "via=cli", "-c", "print(2)"])
        let r2 = try #require(try JSONSerialization.jsonObject(with: Data(out2.utf8)) as? [String: Any])
        #expect(s2 == 0 && r2["output"] as? String == "2\n" && r2["start"] as? String == "cold")
        let (s3, out3, err3) = try sandpit(["run", "--server", "http://127.0.0.1:\(server.port)", "--warm", "pandas", "-c", "print(1)"])
        #expect(s3 == 0 && out3 == "1\n" && !err3.contains("warm ("), "\(err3)")
        let (s5, _, err5) = try sandpit(["run", "--server", "http://127.0.0.1:\(server.port)", "-c", "print(1)", "--time-limit", "100000"])
        #expect(s5 == 125 && err5.contains("400") && err5.contains("time_limit"), "\(err5)")
        let (s4, _, err4) = try sandpit(["run", "--server", "unix:" + sock, "--log", db, "-c", "print(1)"])
        #expect(s4 != 0 && err4.contains("--log"), "\(err4)")
        // The labelled run is in the service's log.
        let (_, rows) = try await server.request("GET", "/executions?label.via=cli")
        #expect(rows.contains(#""start":"cold""#), "\(rows)")
        server.process.terminate()
        server.process.waitUntilExit()
        #expect(access(sock, F_OK) != 0, "the socket outlived the service")
    }
}
