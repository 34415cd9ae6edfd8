import Prometheus
import Sandbox

/// The service's Prometheus metrics.
public final class ServiceMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
    let duration: DurationHistogram
    let inFlight: Gauge
    let queueDepth: Gauge
    let rejections: Counter
    private let byStatus: [String: Counter]

    public init() {
        duration = registry.makeDurationHistogram(
            name: "sandpit_execution_duration_seconds",
            buckets: [.milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250),
                      .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10), .seconds(30)],
            help: "Wall time of the program (execve to exit).")
        inFlight = registry.makeGauge(name: "sandpit_executions_in_flight", help: "Runs executing now.")
        queueDepth = registry.makeGauge(name: "sandpit_queue_depth", help: "Requests waiting for a slot.")
        rejections = registry.makeCounter(name: "sandpit_rejections_total", help: "Requests refused with 429 (queue full).")
        var m: [String: Counter] = [:]
        for s in RunStatus.allCases.map(\.rawValue) {
            m[s] = registry.makeCounter(name: "sandpit_executions_total", labels: [("status", s)],
                                        help: "Finished executions by status.")
        }
        byStatus = m
    }

    func finished(_ r: ExecutionResult) {
        byStatus[r.status.rawValue]?.increment()
        duration.record(.nanoseconds(Int64(r.executionTime * 1e9)))
    }

    public func text() -> String { registry.emitToString() }
}
