import Foundation
import Hummingbird
import HummingbirdTesting
import Sandbox
import Testing
@testable import Service

/// Network policies through the service: the request fields, the operator's limit,
/// the breakdown in the result and in the log. (What a policy lets through is proven
/// against test hosts in SandboxTests' NetworkTests; these runs send no packet out.)
@Suite("Service: network policies (root, real server and runs)", .enabled(if: Env.shouldRun), .serialized)
struct NetworkServiceTests {
    @Test func policiesAreCheckedRunAndLogged() async throws {
        try #require(Env.isRoot, "privileged test run without root")
        try await withService({ c in
            var n = NetworkSettings()
            n.allowMax = [IPv4Net("10.219.64.0/24")!]
            n.range = IPv4Net("10.213.251.0/24")!
            try! n.addHost("api.sandpit.test=10.219.64.7")
            n.hostResolver = false  // no query leaves this machine
            c.network = n
        }) { client, _ in
            // A UDP "connect" picks the route and source address without sending anything.
            let code = """
            import socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.connect((socket.gethostbyname("api.sandpit.test"), 443))
            print(s.getsockname()[0])
            """
            let body = #"{"code": \#(jsonString(code)), "network": {"allow": ["udp://api.sandpit.test:443", "10.219.64.0/28"]}, "network_rate": 65536}"#
            let r = try await client.post("/execute", body)
            #expect(r.status == .ok)
            let result = try #require(json(r.body) as? [String: Any])
            #expect(openAPI.validate(result, path: "/execute", method: "post", status: 200).isEmpty)
            #expect(result["status"] as? String == "ok", "\(result["error"] ?? "")")
            let address = (result["output"] as? String ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
            let net = try #require(result["network"] as? [String: Any])
            #expect(net["address"] as? String == address && address.hasPrefix("10.213.251."))
            #expect((net["dns_queries"] as? Int ?? 0) >= 1)
            #expect((net["rate_dropped"] as? [String: Any])?["packets"] as? Int == 0)
            let dests = net["destinations"] as? [[String: Any]] ?? []
            #expect(dests.map { $0["allow"] as? String ?? "" } == ["udp://api.sandpit.test:443", "10.219.64.0/28"])
            #expect(dests.first?["addresses"] as? [String] == ["10.219.64.7"])

            // The log keeps the breakdown.
            let rowID = try #require(r.headers[.init("X-Execution-Id")!].flatMap { Int($0) })
            let row = try #require(json(try await client.get("/executions/\(rowID)").body) as? [String: Any])
            #expect(openAPI.validate(row, path: "/executions/{id}", method: "get", status: 200).isEmpty)
            #expect((row["network"] as? [String: Any])?["address"] as? String == address)

            // Without a policy: loopback only, no breakdown.
            let plain = try #require(json(try await client.post("/execute", #"{"code": "print(1)", "network": "none"}"#).body) as? [String: Any])
            #expect(plain["network"] is NSNull && plain["output"] as? String == "1\n")
            // An empty allow-list: a link that reaches nothing (and its breakdown).
            let empty = try #require(json(try await client.post("/execute", #"{"code": "print(2)", "network": {"allow": []}}"#).body) as? [String: Any])
            #expect((empty["network"] as? [String: Any])?["destinations"] as? [Any] != nil && empty["output"] as? String == "2\n")

            // Asking for more than the operator allows, or nonsense: 400 with the reason.
            for (body, code) in [
                (#"{"code": "1", "network": {"allow": ["10.219.65.1:80"]}}"#, "invalid_network"),
                (#"{"code": "1", "network": {"allow": ["10.219.64.0/16"]}}"#, "invalid_network"),
                (#"{"code": "1", "network": {"allow": ["10.213.251.6:80"]}}"#, "invalid_network"),
                (#"{"code": "1", "network": {"allow": ["unknown.invalid:80"]}}"#, "invalid_network"),
                (#"{"code": "1", "network": {"allow": ["[::1]:80"]}}"#, "invalid_network"),
                (#"{"code": "1", "network": {"allow": ["10.219.64.1:99999"]}}"#, "invalid_network"),
                (#"{"code": "1", "network": {"allow": ["10.219.64.1"]}, "network_rate": 10}"#, "limit_out_of_range"),
                (#"{"code": "1", "network_rate": 100}"#, "limit_out_of_range"),
                (#"{"code": "1", "network_rate": 4096}"#, "invalid_request"),
                (#"{"code": "1", "network": "none", "network_rate": 4096}"#, "invalid_request"),
                (#"{"code": "1", "network": "all"}"#, "invalid_request"),
                (#"{"code": "1", "network": {"allow": "10.219.64.1"}}"#, "invalid_request"),
                (#"{"code": "1", "network": {"deny": []}}"#, "invalid_request"),
                (#"{"code": "1", "network": 1}"#, "invalid_request"),
            ] {
                let e = try await client.post("/execute", body)
                #expect(e.status == .badRequest, "\(body)")
                let obj = json(e.body) as? [String: Any]
                #expect(obj?["error"] as? String == code, "\(body): \(obj ?? [:])")
                #expect(openAPI.validate(obj as Any, path: "/execute", method: "post", status: 400).isEmpty)
            }
        }
    }

    @Test func aServerWithoutAllowMaxGivesNoNetwork() async throws {
        try #require(Env.isRoot, "privileged test run without root")
        try await withService({ _ in }) { client, _ in
            let e = try await client.post("/execute", #"{"code": "1", "network": {"allow": ["10.219.64.1:80"]}}"#)
            #expect(e.status == .badRequest)
            let obj = try #require(json(e.body) as? [String: Any])
            #expect(obj["error"] as? String == "invalid_network")
            #expect((obj["detail"] as? String ?? obj["message"] as? String ?? "").contains("--network-allow-max"), "\(obj)")
        }
    }
}
