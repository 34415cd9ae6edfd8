import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// Requests about a run or a session that another node on the same log holds, passed on
/// to that node (its row in `nodes` gives its address) and its answer streamed back.
struct Relay: Sendable {
    let svc: ServiceContext

    /// The node `host`, when a request about something it holds should go there: it is
    /// another node, live, with an address, and this request was not itself relayed
    /// (nothing is chased round the nodes).
    func owner(_ host: String?, _ request: Request) async throws -> NodeRow? {
        guard request.headers[forwardedBy] == nil, let host, host != svc.config.node else { return nil }
        let within = 3 * (svc.config.heartbeatInterval / .seconds(1))
        return try await svc.log.nodes().first { $0.name == host && $0.url != nil && $0.isLive(now: Date(), within: within) }
    }

    /// `request` (its method, path and query, `body`, the caller's credentials) sent to
    /// `owner`; the answer, whatever it is, passed back as it comes.
    func forward(_ request: Request, body: ByteBuffer?, to owner: NodeRow, what: String) async throws -> Response {
        var headers = [("X-Sandpit-Forwarded-By", svc.config.node)]
        if let auth = request.headers[.authorization] { headers.append(("Authorization", auth)) }
        if let accept = request.headers[.accept] { headers.append(("Accept", accept)) }
        let url = owner.url ?? ""
        let upstream: Remote.Stream
        do {
            upstream = try await Remote.stream(server: url, method: request.method.rawValue, path: request.uri.description, headers: headers,
                                               body: body.map { Array($0.readableBytesView) } ?? [],
                                               contentType: request.headers[.contentType] ?? "application/json")
        } catch {
            throw APIError(.badGateway, "node_unreachable", "\(what) is on node \(owner.name), which did not answer at \(url): \(error)")
        }
        var fields = HTTPFields()
        for (k, v) in upstream.headers where !Self.notPassed.contains(k) {
            if let name = HTTPField.Name(k) { fields.append(HTTPField(name: name, value: v)) }
        }
        fields[nodeHeader] = upstream.headers["x-sandpit-node"] ?? owner.name
        fields[HTTPField.Name("X-Sandpit-Relayed-By")!] = svc.config.node
        return Response(status: .init(code: upstream.status), headers: fields, body: ResponseBody { writer in
            defer { upstream.close() }
            for try await chunk in upstream.body {
                try await writer.write(ByteBuffer(bytes: chunk))
            }
            try await writer.finish(nil)
        })
    }

    /// Fields of the owner's answer that belong to its connection, not to the answer.
    static let notPassed: Set<String> = ["connection", "keep-alive", "transfer-encoding", "content-length", "date", "server", "x-sandpit-node", "x-sandpit-relayed-by"]
}

/// The header a node puts on a request it relays to another node.
let forwardedBy = HTTPField.Name("X-Sandpit-Forwarded-By")!
