import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import Sandbox
import Testing
@testable import Service

/// A service on the log `db` named `name`, for the tests of several nodes on one log.
func openNode(_ db: String, _ name: String, maxConcurrency: Int = 2, beat: Duration = .milliseconds(200)) async throws -> ServiceContext {
    var config = ServiceConfig(databasePath: db)
    config.port = 0
    config.stateDirectory = serviceTestState
    config.nodeName = name
    config.maxConcurrency = maxConcurrency
    config.heartbeatInterval = beat
    var logger = Logger(label: "sandpit-test")
    logger.logLevel = .critical
    return try await ServiceContext.open(config: config, logger: logger)
}

func stopNode(_ svc: ServiceContext) async {
    await svc.close()
    await svc.sandbox.quiesce()
    svc.sandbox.shutdown()
}

@Suite("Service: nodes on one log — heartbeats, GET /nodes, each sweeps only its own runs (real SQLite, real HTTP)")
struct NodeTests {
    func open(_ db: String, _ name: String) async throws -> ServiceContext {
        try await openNode(db, name, maxConcurrency: name == "alpha" ? 3 : 2)
    }

    func stop(_ svc: ServiceContext) async { await stopNode(svc) }

    @Test func twoNodesShareALogAndSeeEachOther() async throws {
        let db = tempDB()
        defer { removeDB(db) }
        let alpha = try await open(db, "alpha")
        let beta = try await open(db, "beta")
        // alpha has a run in progress when it "crashes" (its row stays running).
        let orphan = try await alpha.log.begin(code: "pass", name: "orphan", containerID: "c-orphan", labels: [:], queuedAt: Date(), startedAt: Date())
        try await buildApplication(beta).test(.live) { client in
            var names: [String] = []
            for _ in 0..<100 {
                let r = try await client.get("/nodes")
                #expect(r.status == .ok)
                let obj = try #require(json(r.body) as? [String: Any])
                #expect(openAPI.validate(obj, path: "/nodes", method: "get", status: 200).isEmpty, "\(openAPI.validate(obj, path: "/nodes", method: "get", status: 200))")
                #expect(obj["node"] as? String == "beta")
                let nodes = obj["nodes"] as? [[String: Any]] ?? []
                names = nodes.compactMap { $0["name"] as? String }.sorted()
                if names == ["alpha", "beta"] {
                    let a = try #require(nodes.first { $0["name"] as? String == "alpha" })
                    #expect(a["live"] as? Bool == true && a["max_concurrency"] as? Int == 3 && a["stopped_at"] is NSNull)
                    break
                }
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(names == ["alpha", "beta"])
            #expect(try await client.get("/nodes?all=maybe").status == .badRequest)
            // alpha stops: not live any more, listed with all=true, its stop time set.
            await alpha.close()
            let live = try #require(json(try await client.get("/nodes").body) as? [String: Any])
            #expect((live["nodes"] as? [[String: Any]])?.compactMap { $0["name"] as? String } == ["beta"])
            let all = try #require(json(try await client.get("/nodes?all=true").body) as? [String: Any])
            let a = try #require((all["nodes"] as? [[String: Any]])?.first { $0["name"] as? String == "alpha" })
            #expect(a["live"] as? Bool == false && a["stopped_at"] is String)
            // beta's start did not sweep alpha's running row; alpha's next start does.
            #expect(try await beta.log.get(id: orphan)?.status == "running")
            #expect((try await beta.log.get(id: orphan))?.host == "alpha")
        }
        alpha.sandbox.shutdown()
        let again = try await open(db, "alpha")
        #expect(try await again.log.get(id: orphan)?.status == "interrupted")
        let h = try #require(json(try await buildApplication(again).test(.router) { try await $0.get("/health") }.body) as? [String: Any])
        #expect(h["node"] as? String == "alpha")
        await stop(again)
        await stop(beta)
    }
}
