import Hummingbird
import HummingbirdCore

/// The one place the HTTP application is assembled; tests build the same one.
public func buildRouter(_ svc: ServiceContext) -> Router<BasicRequestContext> {
    let router = Router(context: BasicRequestContext.self)
    router.add(middleware: NodeHeaderMiddleware(node: svc.config.node))
    router.add(middleware: MethodMiddleware())
    router.add(middleware: StorageErrorMiddleware())
    if let t = svc.config.token, !t.isEmpty { router.add(middleware: TokenMiddleware(token: t)) }
    ExecuteController(svc: svc).addRoutes(to: router)
    ExecutionsController(svc: svc).addRoutes(to: router)
    LiveController(svc: svc).addRoutes(to: router)
    SessionController(svc: svc).addRoutes(to: router)
    SystemController(svc: svc).addRoutes(to: router)
    ServiceEventsController(svc: svc).addRoutes(to: router)
    DashboardController().addRoutes(to: router)
    return router
}

/// The application with its server configuration: on `config.host:config.port`, or,
/// with `unixSocket`, on that path (mode 0660 once listening; a stale file left by a
/// crashed instance is replaced).
public func buildApplication(_ svc: ServiceContext, unixSocket: String? = nil) -> some ApplicationProtocol {
    var limits = HTTPLimits()
    limits.readTimeout = svc.config.readTimeout
    limits.idleTimeout = svc.config.idleTimeout
    limits.maxBodyBytes = svc.config.maxBodyBytes
    let connections = svc.connections
    let httpLimits = limits
    let address: BindAddress
    if let path = unixSocket {
        UnixSocket.removeStale(path)
        address = .unixDomainSocket(path: path)
    } else {
        address = .hostname(svc.config.host, port: svc.config.port)
    }
    return Application(
        router: buildRouter(svc),
        server: HTTPServerBuilder { responder in
            GuardedHTTP1Channel(responder: responder, limits: httpLimits, connections: connections)
        },
        configuration: .init(address: address, serverName: "sandpit"),
        onServerRunning: { _ in
            if let path = unixSocket {
                _ = chmod(path, 0o660)
            } else {
                // Under a `Type=notify` unit, `systemctl start` returns once the port answers.
                SystemdNotify.send("READY=1")
            }
        },
        logger: svc.logger)
}

/// The service's unix socket (`serve --socket`), and its clients.
public enum UnixSocket {
    /// A stream socket connected to `path` (CLOEXEC), or -errno.
    public static func connect(_ path: String) -> Int32 {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { return -ENAMETOOLONG }
        withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in bytes.enumerated() { p[i] = b } }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return -errno }
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard r == 0 else {
            let e = errno
            close(fd)
            return -e
        }
        return fd
    }

    /// Removes `path` when it is a socket nobody listens on (left by a crashed
    /// instance); a live one is left alone, and binding then fails with a clear error.
    public static func removeStale(_ path: String) {
        var st = stat()
        guard lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFSOCK else { return }
        let fd = connect(path)
        if fd >= 0 { close(fd) } else if fd == -ECONNREFUSED { unlink(path) }
    }
}

#if canImport(Glibc)
import Glibc
#endif
