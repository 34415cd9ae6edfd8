import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import Synchronization

/// The HTTP/1.1 connection limits of `sandpit serve`. Hummingbird's own idle timeout
/// counts a connection whose request head never completes as idle, and a request
/// that answers before reading its body (413) with `Connection: close` leaves the
/// client blocked in its send; these handlers close both holes.
public struct HTTPLimits: Sendable {
    /// A request's head and body must arrive within this time of its first byte (or of
    /// the connection, for its first request); else 408 and the connection is closed.
    public var readTimeout: Duration = .seconds(10)
    /// A connection with no request in progress is closed after this.
    public var idleTimeout: Duration = .seconds(60)
    /// Largest request body; a larger `Content-Length` gets 413 before the body is read.
    public var maxBodyBytes = 1 << 20
    /// After an answer given before the request's body was read (413, 408), the rest of
    /// the body is read and dropped for this long (at most `lingerBytes`), so that the
    /// client, still sending, gets to read the answer; then the connection is closed.
    public var linger: Duration = .seconds(2)
    public var lingerBytes = 64 << 20
    public init() {}
}

/// Open connections, with a cap: one more is closed as soon as it is accepted.
public final class ConnectionLimiter: Sendable {
    public let max: Int
    private let open = Atomic<Int>(0)
    private let refusedTotal = Atomic<Int>(0)
    public init(max: Int) { self.max = Swift.max(1, max) }
    public var count: Int { open.load(ordering: .relaxed) }
    public var refused: Int { refusedTotal.load(ordering: .relaxed) }
    func tryOpen() -> Bool {
        if open.wrappingAdd(1, ordering: .relaxed).newValue > max {
            open.wrappingSubtract(1, ordering: .relaxed)
            refusedTotal.wrappingAdd(1, ordering: .relaxed)
            return false
        }
        return true
    }
    func closed() { open.wrappingSubtract(1, ordering: .relaxed) }
}

/// HTTP/1.1 child channel: Hummingbird's HTTP1Channel pipeline with the two guards.
struct GuardedHTTP1Channel: HTTPChannelHandler {
    typealias Value = NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>
    let responder: HTTPChannelHandler.Responder
    let limits: HTTPLimits
    let connections: ConnectionLimiter

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            let conn = ConnectionGuard(limits: limits, connections: connections)
            let ops = channel.pipeline.syncOperations
            try ops.addHandler(conn)
            try ops.configureHTTPServerPipeline(
                withPipeliningAssistance: false, withErrorHandling: false, withOutboundHeaderValidation: false,
                withEncoderConfiguration: .init(), withDecoderLimitConfiguration: .init())
            try ops.addHandler(HTTP1ToHTTPServerCodec(secure: false))
            try ops.addHandler(RequestGuard(connection: conn, limits: limits))
            try ops.addHandler(HTTPConnectionStateHandler(idleTimeout: nil, logger: logger))
            return try NIOAsyncChannel(wrappingChannelSynchronously: channel,
                                       configuration: .init(isOutboundHalfClosureEnabled: true))
        }
    }

    func handle(value: Value, logger: Logger) async {
        await handleHTTP(asyncChannel: value, logger: logger)
    }
}

extension TimeAmount {
    init(_ d: Duration) {
        let (s, atto) = d.components
        self = .nanoseconds(s * 1_000_000_000 + atto / 1_000_000_000)
    }
}

/// First in the pipeline (raw bytes): the connection cap, the read timeout from a
/// request's first byte, the idle timeout, and the lingering close.
final class ConnectionGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum Phase { case reading, handling, idle, lingering, closed }

    let limits: HTTPLimits
    let connections: ConnectionLimiter
    private var counted = false
    private(set) var phase = Phase.reading
    private var timer: Scheduled<Void>?
    private var context: ChannelHandlerContext?
    private var lingered = 0

    init(limits: HTTPLimits, connections: ConnectionLimiter) {
        self.limits = limits
        self.connections = connections
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { opened(context) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        opened(context)
        context.fireChannelActive()
    }

    private func opened(_ context: ChannelHandlerContext) {
        guard !counted, phase != .closed else { return }
        guard connections.tryOpen() else {
            phase = .closed
            context.close(promise: nil)
            return
        }
        counted = true
        arm(limits.readTimeout)  // the first request must arrive in time
    }

    func channelInactive(context: ChannelHandlerContext) {
        if counted { connections.closed() }
        counted = false
        phase = .closed
        timer?.cancel()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch phase {
        case .lingering:
            lingered += unwrapInboundIn(data).readableBytes
            if lingered > limits.lingerBytes { close() }
            return  // dropped: the answer is out, the request is not read any more
        case .closed:
            return
        case .idle:
            phase = .reading
            arm(limits.readTimeout)
        case .reading, .handling:
            break
        }
        context.fireChannelRead(data)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if phase == .lingering {
            context.read()  // keep draining the socket; nothing upstream asks for more
        } else {
            context.fireChannelReadComplete()
        }
    }

    // MARK: events from RequestGuard

    /// A whole request (head and body) has arrived: its handling takes as long as it takes.
    func requestComplete() {
        guard phase == .reading else { return }
        phase = .handling
        timer?.cancel()
        timer = nil
    }

    /// A response has been written. `requestOpen`: its request's body has not all arrived.
    func responseComplete(requestOpen: Bool, pendingRequests: Bool) {
        guard phase != .closed, phase != .lingering else { return }
        if requestOpen {
            phase = .lingering
            arm(limits.linger)
            context?.read()
        } else if pendingRequests {
            phase = .handling
        } else {
            phase = .idle
            arm(limits.idleTimeout)
        }
    }

    private func arm(_ after: Duration) {
        timer?.cancel()
        guard let context else { return }
        timer = context.eventLoop.assumeIsolated().scheduleTask(in: TimeAmount(after)) { [self] in
            timer = nil
            expired()
        }
    }

    private func expired() {
        switch phase {
        case .reading:
            // Head or body not complete in time: 408, as RFC 9110 has it, then close.
            let body = #"{"error":"request_timeout","detail":"the request was not received within the read timeout"}"#
            let text = "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
            if let context {
                phase = .lingering
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: text)), promise: nil)
                arm(limits.linger)
                context.read()
            }
        case .idle, .lingering:
            close()
        case .handling, .closed:
            break
        }
    }

    func close() {
        guard phase != .closed else { return }
        phase = .closed
        timer?.cancel()
        context?.close(promise: nil)
    }
}

/// After the HTTP codec: sees requests and responses as parts. Refuses a body
/// announced larger than the limit before reading it (413), answers
/// `Expect: 100-continue`, marks responses given before their request's body arrived
/// `Connection: close`, and tells the ConnectionGuard when requests and responses end.
final class RequestGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    let connection: ConnectionGuard
    let limits: HTTPLimits
    private var requestOpen = false
    private var rejecting = false
    private var requestsComplete = 0
    private var responsesComplete = 0

    init(connection: ConnectionGuard, limits: HTTPLimits) {
        self.connection = connection
        self.limits = limits
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        switch part {
        case .head(let head):
            requestOpen = true
            if let length = head.headerFields[.contentLength].flatMap({ Int($0) }), length > limits.maxBodyBytes {
                rejecting = true
                let body = #"{"error":"body_too_large","detail":"the body exceeds \#(limits.maxBodyBytes) bytes"}"#
                let response = HTTPResponse(status: .contentTooLarge, headerFields: [
                    .contentType: "application/json", .contentLength: String(body.utf8.count), .connection: "close",
                ])
                context.write(wrapOutboundOut(.head(response)), promise: nil)
                context.write(wrapOutboundOut(.body(ByteBuffer(string: body))), promise: nil)
                context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
                connection.responseComplete(requestOpen: true, pendingRequests: false)
                return
            }
            if head.headerFields[.expect]?.lowercased() == "100-continue" {
                context.writeAndFlush(wrapOutboundOut(.head(HTTPResponse(status: .continue))), promise: nil)
            }
        case .body:
            if rejecting { return }
        case .end:
            requestOpen = false
            requestsComplete += 1
            connection.requestComplete()
            if rejecting {
                connection.close()  // the client has sent everything and has its answer
                return
            }
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(var response) where response.status.kind != .informational && requestOpen:
            // Answered before the body arrived: the connection cannot carry another request.
            response.headerFields[.connection] = "close"
            context.write(wrapOutboundOut(.head(response)), promise: promise)
        case .end:
            responsesComplete += 1
            context.write(data, promise: promise)
            connection.responseComplete(requestOpen: requestOpen, pendingRequests: requestsComplete > responsesComplete)
        default:
            context.write(data, promise: promise)
        }
    }
}
