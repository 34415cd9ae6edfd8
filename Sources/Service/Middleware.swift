import HTTPTypes
import Hummingbird

/// Names the node that answered (`X-Sandpit-Node`) on every answer, errors included, so
/// that behind a balancer a client and an operator can tell which one served a request.
/// A relayed answer keeps the name of the node that produced it.
struct NodeHeaderMiddleware<Context: RequestContext>: RouterMiddleware {
    let node: String

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            var response = try await next(request, context)
            if response.headers[nodeHeader] == nil { response.headers[nodeHeader] = node }
            return response
        } catch var error as APIError {
            if error.headers[nodeHeader] == nil { error.headers[nodeHeader] = node }
            throw error
        }
    }
}

let nodeHeader = HTTPField.Name("X-Sandpit-Node")!

/// Requires `Authorization: Bearer <token>` on every route but /health and the
/// dashboard's files (`/`, `/ui/...`: they hold no data; its script sends the token).
struct TokenMiddleware<Context: RequestContext>: RouterMiddleware {
    let token: String

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let path = request.uri.path
        if path == "/health" || path == "/" || path == "/ui" || path.hasPrefix("/ui/") { return try await next(request, context) }
        let given = request.headers[.authorization] ?? ""
        let expected = "Bearer " + token
        // constant-time comparison
        var diff = UInt8(given.utf8.count == expected.utf8.count ? 0 : 1)
        for (a, b) in zip(given.utf8, expected.utf8) { diff |= a ^ b }
        guard diff == 0 else {
            var e = APIError(.unauthorized, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required")
            e.headers[.wwwAuthenticate] = "Bearer"
            throw e
        }
        return try await next(request, context)
    }
}

/// The log could not be read or written (the database is away, full or locked): 503
/// with `Retry-After`, never a 500, and the service serves again once it is back.
struct StorageErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch {
            // (only the backends' own errors: anything else is still a 500, a bug to see)
            let module = String(reflecting: type(of: error)).split(separator: ".").first ?? ""
            guard ["GRDB", "PostgresNIO", "_ConnectionPoolModule", "NIOPosix", "NIOCore"].contains(module) || error is PostgresStore.LeaseTimeout || error is PostgresStore.StatementTimeout else { throw error }
            var e = APIError(.serviceUnavailable, "storage_unavailable", "the execution log cannot be reached: \(String(describing: error).prefix(300))")
            e.headers[.retryAfter] = "5"
            throw e
        }
    }
}

/// A method the document does not list on a path it does: 405 with `Allow`, as
/// RFC 9110 has it (the router alone answers 404).
struct MethodMiddleware<Context: RequestContext>: RouterMiddleware {
    static func allowed(_ path: String) -> String? {
        switch path {
        case "/execute": "POST"
        case "/sessions": "GET, HEAD, POST"
        case "/executions", "/executions/stats", "/executions/trends", "/executions/regressions", "/health", "/metrics",
             "/openapi.json", "/events", "/nodes", "/", "/ui", "/ui/": "GET, HEAD"
        default:
            if path.hasPrefix("/executions/") && !path.dropFirst(12).contains("/") { "GET, HEAD, DELETE" }
            else if path.hasPrefix("/executions/") && (path.hasSuffix("/events") || path.hasSuffix("/samples") || path.hasSuffix("/custom-metrics")) && path.split(separator: "/").count == 3 { "GET, HEAD" }
            else if DashboardController.isPage(path) { "GET, HEAD" }
            else if path.hasPrefix("/sessions/") { sessionAllowed(path.split(separator: "/", omittingEmptySubsequences: false).dropFirst(2)) }
            else { nil }
        }
    }

    /// /sessions/{id}[/...]: the methods of each session route.
    static func sessionAllowed(_ rest: ArraySlice<Substring>) -> String? {
        let parts = Array(rest)
        guard !parts.isEmpty, !parts[0].isEmpty else { return nil }
        if parts.count == 1 { return "GET, HEAD, DELETE" }
        switch parts[1] {
        case "restart", "execute": return parts.count == 2 ? "POST" : nil
        case "files": return parts.count == 2 ? "GET, HEAD" : "GET, HEAD, PUT"
        default: return nil
        }
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let e as HTTPError where e.status == .notFound {
            guard let allow = Self.allowed(request.uri.path) else { throw e }
            var err = APIError(.methodNotAllowed, "method_not_allowed", "\(request.method) is not allowed on \(request.uri.path); allowed: \(allow)")
            err.headers[.allow] = allow
            throw err
        }
    }
}

