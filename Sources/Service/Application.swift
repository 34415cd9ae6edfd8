import Hummingbird
import HummingbirdCore

/// The one place the HTTP application is assembled; tests build the same one.
public func buildRouter(_ svc: ServiceContext) -> Router<BasicRequestContext> {
    let router = Router(context: BasicRequestContext.self)
    router.add(middleware: MethodMiddleware())
    if let t = svc.config.token, !t.isEmpty { router.add(middleware: TokenMiddleware(token: t)) }
    ExecuteController(svc: svc).addRoutes(to: router)
    ExecutionsController(svc: svc).addRoutes(to: router)
    LiveController(svc: svc).addRoutes(to: router)
    SystemController(svc: svc).addRoutes(to: router)
    return router
}

/// The application with its server configuration.
public func buildApplication(_ svc: ServiceContext) -> some ApplicationProtocol {
    var limits = HTTPLimits()
    limits.readTimeout = svc.config.readTimeout
    limits.idleTimeout = svc.config.idleTimeout
    limits.maxBodyBytes = svc.config.maxBodyBytes
    let connections = svc.connections
    let httpLimits = limits
    return Application(
        router: buildRouter(svc),
        server: HTTPServerBuilder { responder in
            GuardedHTTP1Channel(responder: responder, limits: httpLimits, connections: connections)
        },
        configuration: .init(address: .hostname(svc.config.host, port: svc.config.port), serverName: "sandpit"),
        // Under a `Type=notify` unit, `systemctl start` returns once the port answers.
        onServerRunning: { _ in SystemdNotify.send("READY=1") },
        logger: svc.logger)
}
