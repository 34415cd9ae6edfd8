import Foundation
import Hummingbird
import Sandbox

/// Errors users cause, and the service's own refusals: always a JSON body
/// `{"error": code, "detail": text}`.
public struct APIError: HTTPResponseError {
    public let status: HTTPResponse.Status
    public let error: String
    public let detail: String
    public var headers: HTTPFields = [:]

    public init(_ status: HTTPResponse.Status, _ error: String, _ detail: String) {
        self.status = status
        self.error = error
        self.detail = detail
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var h = headers
        h[.contentType] = "application/json"
        let body = JSONBody.encode(["error": error, "detail": detail])
        return Response(status: status, headers: h, body: .init(byteBuffer: ByteBuffer(string: body)))
    }
}

enum JSONBody {
    static func encode(_ object: Any) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.withoutEscapingSlashes])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    static func response(_ text: String, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: text)))
    }
}

/// Ranges the service accepts for each limit (the defaults are `RunLimits()`'s).
public struct LimitRanges: Sendable {
    public var wallSeconds: ClosedRange<Double> = 0.001...300
    public var cpuSeconds: ClosedRange<Double> = 0.001...300
    public var memoryBytes: ClosedRange<UInt64> = (16 << 20)...(16 << 30)
    public var pids: ClosedRange<UInt64> = 1...4096
    public var outputBytes: ClosedRange<Int> = 0...(64 << 20)
    public var sampleSeconds: ClosedRange<Double> = 0.01...60
    public init() {}
}

