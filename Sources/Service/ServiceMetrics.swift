import Prometheus
import Sandbox

/// The service's Prometheus metrics.
public final class ServiceMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
    let duration: DurationHistogram
    let inFlight: Gauge
    let queueDepth: Gauge
    let rejections: Counter
    let cpuTime: ValueHistogram
    let memoryPeak: ValueHistogram
    let blockIO: ValueHistogram
    private let byStatus: [String: Counter]
    private let alerts: [String: Counter]

    public init(alertRules: [String] = []) {
        duration = registry.makeDurationHistogram(
            name: "sandpit_execution_duration_seconds",
            buckets: [.milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250),
                      .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10), .seconds(30)],
            help: "Wall time of the program (execve to exit).")
        inFlight = registry.makeGauge(name: "sandpit_executions_in_flight", help: "Runs executing now.")
        queueDepth = registry.makeGauge(name: "sandpit_queue_depth", help: "Requests waiting for a slot.")
        rejections = registry.makeCounter(name: "sandpit_rejections_total", help: "Requests refused with 429 (queue full).")
        // Per-run cost, for capacity planning and alerting (deploy/sandpit-alerts.yml).
        cpuTime = registry.makeValueHistogram(
            name: "sandpit_execution_cpu_seconds",
            buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
            help: "CPU time of a run (user + system, all its tasks).")
        memoryPeak = registry.makeValueHistogram(
            name: "sandpit_execution_memory_peak_bytes",
            buckets: [4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096].map { Double($0) * 1_048_576 },
            help: "Memory peak of a run's cgroup.")
        blockIO = registry.makeValueHistogram(
            name: "sandpit_execution_block_io_bytes",
            buckets: [0, 4096, 65536, 1_048_576, 16_777_216, 134_217_728, 1_073_741_824],
            help: "Block I/O of a run (read + write).")
        var m: [String: Counter] = [:]
        for s in RunStatus.allCases.map(\.rawValue) {
            m[s] = registry.makeCounter(name: "sandpit_executions_total", labels: [("status", s)],
                                        help: "Finished executions by status.")
        }
        byStatus = m
        // One series per configured rule, present at 0 before its first match.
        var a: [String: Counter] = [:]
        for rule in alertRules {
            a[rule] = registry.makeCounter(name: "sandpit_alerts_total", labels: [("rule", rule)],
                                           help: "Runs that matched an alert rule (serve --alert), by rule.")
        }
        alerts = a
    }

    func finished(_ r: ExecutionResult) {
        byStatus[r.status.rawValue]?.increment()
        for rule in r.alerts { alerts[rule]?.increment() }
        duration.record(.nanoseconds(Int64(r.executionTime * 1e9)))
        if let u = r.cpuUserTime, let s = r.cpuSystemTime { cpuTime.record(u + s) }
        if let p = r.memoryPeak { memoryPeak.record(Double(p)) }
        if let rd = r.blockIORead, let wr = r.blockIOWrite { blockIO.record(Double(rd + wr)) }
    }

    public func text() -> String { registry.emitToString() }
}
