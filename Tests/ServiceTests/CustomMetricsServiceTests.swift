import Foundation
import Hummingbird
import HummingbirdTesting
import Sandbox
import Testing
@testable import Service

/// Custom metrics and alert rules through the service: real runs, the real HTTP
/// server, a real SQLite file.
@Suite("Service: custom metrics and alert rules (root, real server and runs)", .enabled(if: Env.shouldRun), .serialized)
struct CustomMetricsServiceTests {
    static let program = """
        import json, os
        with open(os.environ["SANDPIT_METRICS"], "w", buffering=1) as m:
            for i in range(100):
                m.write(json.dumps({"name": "loss", "value": 1 / (i + 1), "unit": "nats"}) + "\\n")
            m.write("not json\\n")
        print("trained")
        """

    @Test func pointsAlertsTrendsAndTheStreamAgree() async throws {
        try #require(Env.isRoot, "privileged test run without root")
        try await withService({ config in
            config.alertRules = [try! AlertRule(parsing: "lossy: custom.loss < 0.05"),
                                 try! AlertRule(parsing: "never: memory_peak > 1e15")]
        }) { client, svc in
            let body = #"{"code": \#(jsonString(Self.program)), "labels": {"job": "train"}, "time_limit": \#(min(300, 30 * Env.slow))}"#
            let r = try await client.post("/execute", body)
            #expect(r.status == .ok)
            let result = try #require(json(r.body) as? [String: Any])
            #expect(openAPI.validate(result, path: "/execute", method: "post", status: 200).isEmpty)
            #expect(result["output"] as? String == "trained\n")
            let loss = try #require((result["custom_metrics"] as? [String: Any])?["loss"] as? [String: Any])
            #expect(loss["count"] as? Int == 100 && loss["last"] as? Double == 0.01 && loss["max"] as? Double == 1
                    && loss["unit"] as? String == "nats")
            #expect(result["custom_metrics_rejected"] as? Int == 1)
            #expect(result["alerts"] as? [String] == ["lossy"])

            // The row: summary and detail.
            let rowID = try #require(r.headers[.init("X-Execution-Id")!].flatMap { Int($0) })
            let page = try #require(json(try await client.get("/executions?label.job=train").body) as? [String: Any])
            let row = try #require((page["executions"] as? [[String: Any]])?.first)
            #expect(row["alerts"] as? [String] == ["lossy"])
            let detail = try #require(json(try await client.get("/executions/\(rowID)").body) as? [String: Any])
            #expect(openAPI.validate(detail, path: "/executions/{id}", method: "get", status: 200).isEmpty)
            #expect(((detail["custom_metrics"] as? [String: Any])?["loss"] as? [String: Any])?["count"] as? Int == 100)

            // Every point, in order.
            let pr = try await client.get("/executions/\(rowID)/custom-metrics")
            #expect(pr.status == .ok)
            let points = try #require(json(pr.body) as? [String: Any])
            #expect(openAPI.validate(points, path: "/executions/{id}/custom-metrics", method: "get", status: 200).isEmpty)
            let list = try #require(points["points"] as? [[String: Any]])
            #expect(list.count == 100)
            // (JSONSerialization, which reads these, may be off in the last bit on Linux)
            let values = list.compactMap { $0["value"] as? Double }
            #expect(values.count == 100 && zip(values, (0..<100).map { 1 / Double($0 + 1) }).allSatisfy { abs($0 - $1) <= 1e-15 * $1 })
            let ts = list.compactMap { $0["t"] as? Double }
            #expect(ts.count == 100 && ts == ts.sorted())
            let other = json(try await client.get("/executions/\(rowID)/custom-metrics?name=other").body) as? [String: Any]
            #expect((other?["points"] as? [Any])?.isEmpty == true)
            let bad = try await client.get("/executions/\(rowID)/custom-metrics?name=1bad")
            #expect(bad.status == .badRequest && openAPI.validate(json(bad.body), path: "/executions/{id}/custom-metrics", method: "get", status: 400).isEmpty)
            #expect(try await client.get("/executions/987654/custom-metrics").status == .notFound)

            // custom.loss in trends and regressions.
            let tr = try await client.get("/executions/trends?metric=custom.loss&bucket=1d")
            #expect(tr.status == .ok)
            let trend = try #require(json(tr.body) as? [String: Any])
            #expect(openAPI.validate(trend, path: "/executions/trends", method: "get", status: 200).isEmpty)
            let bucket = try #require((trend["buckets"] as? [[String: Any]])?.first)
            #expect(bucket["count"] as? Int == 1 && bucket["p50"] as? Double == 0.01)
            let rg = try await client.get("/executions/regressions?metric=custom.loss&by=label.job")
            #expect(rg.status == .ok && openAPI.validate(json(rg.body), path: "/executions/regressions", method: "get", status: 200).isEmpty)
            for badMetric in ["custom.", "custom.1x", "custom.a b", "customloss"] {
                let b = try await client.get("/executions/trends?metric=\(badMetric.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!)")
                #expect(b.status == .badRequest, "\(badMetric)")
            }

            // The counters per rule.
            let metrics = svc.metrics.text()
            #expect(metrics.contains(#"sandpit_alerts_total{rule="lossy"} 1"#), "\(metrics)")
            #expect(metrics.contains(#"sandpit_alerts_total{rule="never"} 0"#))

            // The replayed stream has the points as metric events, in time order with the rest.
            let port = try #require(client.port)
            let replay = await sseExchange(port: port, "GET", "/executions/\(rowID)/events")
            let metricEvents = replay.named("metric")
            #expect(metricEvents.count == 100)
            #expect(metricEvents.allSatisfy {
                openAPI.validate($0.object, against: ["$ref": "#/components/schemas/CustomPoint"], at: "$").isEmpty
            })
            #expect(replay.events.last?.name == "result")
        }
    }

    @Test func aStreamedRunSendsItsPointsAsTheyCome() async throws {
        try #require(Env.isRoot, "privileged test run without root")
        try await withService { client, _ in
            let port = try #require(client.port)
            let code = "import os, time\nm = open(os.environ['SANDPIT_METRICS'], 'w', buffering=1)\n"
                + "for i in range(5):\n    m.write('{\"name\": \"step\", \"value\": %d}\\n' % i)\n    time.sleep(0.2)\n"
            let body = #"{"code": \#(jsonString(code)), "stream": true, "time_limit": \#(min(300, 30 * Env.slow))}"#
            let s = await sseExchange(port: port, "POST", "/execute", body: body)
            #expect(s.status == 200)
            let points = s.named("metric")
            #expect(points.compactMap { $0.object["value"] as? Double } == [0, 1, 2, 3, 4])
            // Live: they arrived as the program wrote them, 0.2 s apart (a slower host
            // only spreads them more), not together with the result.
            let first = try #require(points.first?.at), last = try #require(points.last?.at)
            #expect(last - first >= 0.6, "points arrived within \(last - first) s")
            #expect(s.events.last?.name == "result")
        }
    }
}
