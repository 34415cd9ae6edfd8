import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Sandbox
import Testing
@testable import Service

/// The dashboard's files and GET /events. Its behaviour in a browser is scripts/ui-check's
/// (chromium under selenium, part of scripts/test).
@Suite("Service: dashboard files, /health for the dashboard (real HTTP)")
struct DashboardFileTests {
    @Test func pagesFilesAndRedirectsNeedNoTokenButTheAPIStillDoes() async throws {
        try await withService({ $0.token = "s3cret"; $0.maxConcurrency = 3; $0.queueSize = 7 }) { client, _ in
            for path in ["/", "/ui"] {
                let r = try await client.get(path)
                #expect(r.status == .found && r.headers[.location] == "/ui/", "\(path): \(r.status)")
            }
            for path in ["/ui/", "/ui/new", "/ui/trends", "/ui/runs/42"] {
                let r = try await client.get(path)
                #expect(r.status == .ok, "\(path)")
                #expect(r.headers[.contentType] == "text/html; charset=utf-8")
                let csp = r.headers[HTTPField.Name("Content-Security-Policy")!] ?? ""
                #expect(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe"), "\(csp)")
                let html = String(buffer: r.body)
                #expect(html.contains(#"<script src="/ui/app.js" defer></script>"#) && html.contains(#"href="/ui/app.css""#))
            }
            for (file, type) in [("app.js", "text/javascript"), ("app.css", "text/css"), ("favicon.svg", "image/svg+xml")] {
                let r = try await client.get("/ui/" + file)
                #expect(r.status == .ok && (r.headers[.contentType] ?? "").hasPrefix(type), "\(file)")
                #expect(String(buffer: r.body) == UIAssets.files[file].map { $0 }, "\(file) is served byte for byte")
                let etag = try #require(r.headers[.eTag])
                let again = try await client.execute(uri: "/ui/" + file, method: .get, headers: [.ifNoneMatch: etag])
                #expect(again.status == .notModified && again.body.readableBytes == 0)
            }
            // Not pages: JSON 404s (the shell is not a catch-all).
            for path in ["/ui/runs/abc", "/ui/runs/-1", "/ui/nope", "/ui/index.html", "/ui/runs/1/x"] {
                let r = try await client.get(path)
                #expect(r.status == .notFound, "\(path): \(r.status)")
                if path != "/ui/runs/1/x" {  // (no route at all: the router's bare 404)
                    #expect((json(r.body) as? [String: Any])?["error"] as? String == "not_found", "\(path)")
                }
            }
            // The files hold no data; everything with data still needs the token.
            #expect(try await client.get("/executions").status == .unauthorized)
            #expect(try await client.get("/events").status == .unauthorized)
            #expect(try await client.get("/ui/../executions").status != .ok)
            let h = try await client.get("/health")
            let obj = try #require(json(h.body) as? [String: Any])
            #expect(openAPI.validate(obj, path: "/health", method: "get", status: 200).isEmpty)
            #expect(obj["token_required"] as? Bool == true && obj["max_concurrency"] as? Int == 3 && obj["queue_size"] as? Int == 7)
        }
        try await withService { client, _ in
            let obj = try #require(json(try await client.get("/health").body) as? [String: Any])
            #expect(obj["token_required"] as? Bool == false)
        }
    }

    /// The trends page offers the metrics GET /executions/trends takes: its list is the document's.
    @Test func theTrendsPageOffersTheDocumentsMetrics() throws {
        let js = try #require(UIAssets.files["app.js"])
        let start = try #require(js.range(of: "const TREND_METRICS = ["))
        let end = try #require(js[start.upperBound...].range(of: "];"))
        let listed = js[start.upperBound..<end.lowerBound].split(separator: ",").map {
            $0.trimmingCharacters(in: .whitespacesAndNewlines).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
        }.filter { !$0.isEmpty }
        let params = ((openAPI.document["paths"] as? [String: Any])?["/executions/trends"] as? [String: Any])
            .flatMap { ($0["get"] as? [String: Any])?["parameters"] as? [[String: Any]] } ?? []
        let metric = try #require(params.first { $0["name"] as? String == "metric" })
        let anyOf = (metric["schema"] as? [String: Any])?["anyOf"] as? [[String: Any]] ?? []
        let documented = anyOf.compactMap { $0["enum"] as? [String] }.flatMap { $0 }
        #expect(!documented.isEmpty && listed == documented, "app.js: \(listed)\nopenapi.json: \(documented)")
    }
}

@Suite("Service: GET /events — runs start and end, service-wide (root, real server and runs)", .enabled(if: Env.shouldRun),
       .enabled(if: !Env.inVM, "on the host only: nothing here depends on the cgroup version"), .serialized)
struct ServiceEventsTests {
    func conforms(_ e: SSEEvent) -> [String] {
        let schema = ["run_started": "ServiceRunStarted", "run_finished": "ServiceRunFinished"][e.name]
        guard let schema else { return ["undocumented event \(e.name)"] }
        return openAPI.validate(e.object, against: ["$ref": "#/components/schemas/\(schema)"], at: "$")
    }

    @Test func aWatcherSeesRunsInProgressThenEachStartAndEnd() async throws {
        try #require(Env.isRoot, "privileged test run without root")
        try await withService({ $0.token = "t0k" }) { client, svc in
            let port = try #require(client.port)
            let auth = "Authorization: Bearer t0k\r\n"
            // A run in progress before the watcher comes: the snapshot has it.
            let long = Task {
                try await httpRequest(port: port, "POST", "/execute", body: #"{"code": "import time; time.sleep(\#(1.5 * Env.slow))", "labels": {"suite": "events"}, "container_name": "long"}"#, headers: auth)
            }
            var longID: Int64?
            for _ in 0..<400 where longID == nil {
                longID = svc.live.all().first?.rowID
                try await Task.sleep(for: .milliseconds(10))
            }
            let longRow = try #require(longID)
            let watching = Task {
                await sseExchange(port: port, "GET", "/events", headers: auth, timeout: 60 * Env.slow) { events in
                    events.filter { $0.name == "run_finished" }.count >= 2
                }
            }
            for _ in 0..<400 where svc.live.watcherCount == 0 { try await Task.sleep(for: .milliseconds(10)) }
            #expect(svc.live.watcherCount == 1)
            let short = try await client.post("/execute", #"{"code": "print(6 * 7)", "labels": {"k": "v"}}"#, token: "t0k")
            #expect(short.status == .ok)
            let shortRow = try #require(Int64(short.headers[HTTPField.Name("X-Execution-Id")!] ?? ""))
            _ = try await long.value
            let s = await watching.value
            #expect(s.status == 200 && s.head.lowercased().contains("content-type: text/event-stream"))
            for e in s.events { #expect(conforms(e).isEmpty, "\(e.name) \(e.data): \(conforms(e))") }
            let seen = s.events.map { "\($0.name) \($0.object["execution_id"] as? Int ?? -1)" }
            #expect(seen == ["run_started \(longRow)", "run_started \(shortRow)", "run_finished \(shortRow)", "run_finished \(longRow)"], "\(seen)")
            #expect(s.events.map(\.id) == [1, 2, 3, 4])
            let first = s.events[0].object
            #expect(first["container_name"] as? String == "long" && (first["labels"] as? [String: String]) == ["suite": "events"])
            #expect(s.events[1].object["labels"] as? [String: String] == ["k": "v"])
            let finished = s.events[2].object
            #expect(finished["status"] as? String == "ok")
            let wall = finished["execution_time"] as? Double ?? -1
            #expect(wall > 0 && wall < 5 * Env.slow, "\(wall)")
            #expect(s.events[3].object["status"] as? String == "ok" && (s.events[3].object["execution_time"] as? Double ?? 0) >= 1.4)
            // The client left: its watcher goes with it (the next write notices).
            for _ in 0..<300 where svc.live.watcherCount > 0 {
                _ = try await client.post("/execute", #"{"code": "pass"}"#, token: "t0k")
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(svc.live.watcherCount == 0)
        }
    }

    @Test func theStreamEndsWhenTheServiceShutsDown() async throws {
        try #require(Env.isRoot, "privileged test run without root")
        try await withService { client, svc in
            let port = try #require(client.port)
            let watching = Task { await sseExchange(port: port, "GET", "/events", timeout: 30) }
            for _ in 0..<400 where svc.live.watcherCount == 0 { try await Task.sleep(for: .milliseconds(10)) }
            #expect(svc.live.watcherCount == 1)
            svc.live.closeWatchers()  // what SIGTERM does first: the graceful shutdown then waits for nothing
            let s = await watching.value
            #expect(s.status == 200 && s.events.isEmpty && s.comments >= 1)
            #expect(svc.live.watcherCount == 0)
            // A watcher that comes after that gets an ended stream at once.
            let late = await sseExchange(port: port, "GET", "/events", timeout: 10)
            #expect(late.status == 200 && late.events.isEmpty)
        }
    }
}
