import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import Sandbox

/// The dashboard: `/` redirects to `/ui/`, whose pages are one HTML shell (the script
/// renders the page its path names) plus a script, a stylesheet and an icon, all
/// compiled into the binary from `ui/`. None of it holds data: the script asks the API,
/// with the token the viewer typed, so these routes need no token.
struct DashboardController: Sendable {
    /// The dashboard's pages (each answers the shell).
    static let pages = ["", "new", "trends"]

    /// One file as served: its bytes, type and validator.
    struct Asset: Sendable {
        let body: ByteBuffer
        let type: String
        let etag: String
    }

    static let assets: [String: Asset] = {
        var out: [String: Asset] = [:]
        for (name, text) in UIAssets.files {
            let type: String
            switch name.split(separator: ".").last {
            case "html": type = "text/html; charset=utf-8"
            case "js": type = "text/javascript; charset=utf-8"
            case "css": type = "text/css; charset=utf-8"
            case "svg": type = "image/svg+xml"
            default: type = "application/octet-stream"
            }
            let digest = SHA256.hash(data: Data(text.utf8)).prefix(12).map { String(format: "%02x", $0) }.joined()
            out[name] = Asset(body: ByteBuffer(string: text), type: type, etag: "\"\(digest)\"")
        }
        return out
    }()

    /// What a page may do: its own script and style, the API on the same origin, images
    /// from data: URLs (plots in results), and nothing in frames.
    static let securityHeaders: HTTPFields = [
        HTTPField.Name("Content-Security-Policy")!: "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        HTTPField.Name("X-Content-Type-Options")!: "nosniff",
        HTTPField.Name("Referrer-Policy")!: "no-referrer",
    ]

    func addRoutes(to router: Router<BasicRequestContext>) {
        router.get("") { _, _ in Self.redirect("/ui/") }
        // The router takes "/ui" and "/ui/" for one path: the page is at the latter.
        router.get("ui") { request, _ in request.uri.path == "/ui/" ? Self.serve("index.html", request) : Self.redirect("/ui/") }
        for page in Self.pages where !page.isEmpty {
            router.get("ui/\(page)") { request, _ in Self.serve("index.html", request) }
        }
        router.get("ui/runs/:id") { request, context in
            guard let id = context.parameters.get("id", as: Int64.self), id >= 0 else {
                throw APIError(.notFound, "not_found", "no dashboard page at \(request.uri.path)")
            }
            return Self.serve("index.html", request)
        }
        router.get("ui/:file") { request, context in
            let name = context.parameters.get("file") ?? ""
            guard name != "index.html", Self.assets[name] != nil else {
                throw APIError(.notFound, "not_found", "no dashboard file \(name)")
            }
            return Self.serve(name, request)
        }
    }

    /// A path the dashboard answers (for 405s on other methods).
    static func isPage(_ path: String) -> Bool {
        guard path.hasPrefix("/ui/") else { return false }
        let rest = path.dropFirst(4)
        if pages.contains(String(rest)) || (assets[String(rest)] != nil && rest != "index.html") { return true }
        return rest.hasPrefix("runs/") && Int64(rest.dropFirst(5)).map { $0 >= 0 } == true
    }

    static func redirect(_ to: String) -> Response {
        Response(status: .found, headers: [.location: to, .contentType: "text/plain; charset=utf-8"],
                 body: .init(byteBuffer: ByteBuffer(string: "see \(to)\n")))
    }

    /// A file, or 304 when the client's copy (`If-None-Match`) is current.
    static func serve(_ name: String, _ request: Request) -> Response {
        let a = assets[name]!
        var h = securityHeaders
        h[.contentType] = a.type
        h[.eTag] = a.etag
        h[.cacheControl] = "no-cache"  // revalidated each time: a new binary serves new files at once
        if let given = request.headers[.ifNoneMatch], given.split(separator: ",").contains(where: { $0.trimmingCharacters(in: .whitespaces) == a.etag }) {
            return Response(status: .notModified, headers: h)
        }
        return Response(status: .ok, headers: h, body: .init(byteBuffer: a.body))
    }
}

/// GET /events: the service's runs as they start and end, as Server-Sent Events — first
/// `run_started` for each run in progress, then one event per start and end.
struct ServiceEventsController: Sendable {
    let svc: ServiceContext

    func addRoutes(to router: Router<BasicRequestContext>) {
        router.get("events", use: stream)
    }

    static func started(_ r: LiveRun) -> String {
        var w = JSONWriter()
        w.field("execution_id", r.rowID)
        w.field("container_name", r.request.name)
        w.field("labels", json: Labels.json(r.labels))
        w.field("session_id", r.sessionID)
        w.field("started_at", ExecutionResult.timestamp(r.startedAt))
        return w.finish()
    }

    static func finished(id: Int64, status: String, executionTime: Double) -> String {
        var w = JSONWriter()
        w.field("execution_id", id)
        w.field("status", status)
        w.field("execution_time", executionTime)
        return w.finish()
    }

    @Sendable func stream(_ request: Request, context: BasicRequestContext) async throws -> Response {
        let (now, changes) = svc.live.watch()
        let keepAlive = svc.config.keepAlive
        return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-store"], body: ResponseBody { writer in
            var seq = 0
            func frame(_ name: String, _ json: String) -> ByteBuffer {
                seq += 1
                return ByteBuffer(string: "id: \(seq)\nevent: \(name)\ndata: \(json)\n\n")
            }
            // The snapshot, then a comment so that a client knows the stream is live.
            var first = now.map { frame("run_started", Self.started($0)) }
            first.append(ByteBuffer(string: ": live\n\n"))
            try await writer.write(contentsOf: first)
            try await withKeepAlive(changes, every: keepAlive) { items in
                for await item in items {
                    switch item {
                    case .keepAlive: try await writer.write(ByteBuffer(string: ": keep-alive\n\n"))
                    case .event(.started(let r)): try await writer.write(frame("run_started", Self.started(r)))
                    case .event(.finished(let id, let status, let t)):
                        try await writer.write(frame("run_finished", Self.finished(id: id, status: status, executionTime: t)))
                    }
                }
            }
            try await writer.finish(nil)
        })
    }
}
