import ArgumentParser
import CgroupKit
import Foundation
import Logging
import Sandbox
import Service

@main
struct Sandpit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sandpit",
        abstract: "Run untrusted Python in a sandbox and report what it cost, from the kernel's own counters.",
        subcommands: [Run.self, Serve.self, SessionCommand.self, MCPCommand.self, Migrate.self, Doctor.self, History.self, TrendsCommand.self, Regressions.self])
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a Python program (FILE, -c CODE, or - for standard input) in a fresh sandbox.")

    @Argument(help: "A Python file, or - to read the program from standard input.")
    var file: String?
    @Argument(parsing: .postTerminator, help: "Arguments passed to the program (after --).")
    var args: [String] = []
    @Option(name: .customShort("c"), help: "Program text.")
    var code: String?
    @Flag(help: "Print the result object as JSON.")
    var json = false
    @Option(help: "Wall-clock limit in seconds.") var timeLimit: Double = 10
    @Option(help: "CPU time limit (user + system, all tasks) in seconds.") var cpuLimit: Double = 10
    @Option(help: "Memory limit in bytes.") var memoryLimit: UInt64 = 512 << 20
    @Option(help: "Maximum number of tasks (processes and threads).") var pidsLimit: UInt64 = 128
    @Option(help: "Cap of stdout and of stderr, each, in bytes.") var outputLimit: Int = 1 << 20
    @Option(help: "Size of the scratch filesystem (/tmp and /work) in bytes.") var scratchSize: UInt64 = 128 << 20
    @Option(help: "CPU bandwidth in cores (e.g. 0.5); default: no quota.") var cpus: Double?
    @Option(help: "The run's name (container_name).") var name: String = "Unnamed"
    @Option(help: "A prepared root directory to take system directories from.") var rootfs: String = "/"
    @Option(help: "The interpreter inside the sandbox.") var python: String = "/usr/bin/python3"
    @Option(help: "A file whose bytes become the program's standard input.") var stdin: String?
    @Flag(help: "Pass the program's output through as it comes, with a status line on stderr (elapsed, CPU, memory, I/O, tasks), redrawn in place on a terminal.")
    var live = false
    @Flag(help: "Print the run's events (started, stdout, stderr, sample, limit, result) as JSON lines on stdout.")
    var events = false
    @Option(help: "Seconds between samples for --live and --events (0.01 to 60).") var sampleInterval: Double = 0.25
    @Option(name: .customLong("label"), help: "A label of the run, KEY=VALUE (repeatable); stored with --log.") var labels: [String] = []
    @Option(name: .customLong("log"), help: "Also record the run in this execution log (the database `serve` writes), with its labels.")
    var logDB: String?
    @Option(name: .customLong("alert"), help: "An alert rule 'NAME: FIELD OP NUMBER' (repeatable); matched names are in the result's alerts.")
    var alertRules: [String] = []
    @Option(help: "Hand the run to a running `sandpit serve`: unix:PATH (its --socket) or http://HOST:PORT. SANDPIT_TOKEN is sent as its bearer token.")
    var server: String?
    @Option(help: "With --server: the warm template to fork from, by its modules ('numpy'), or 'auto' (the default: the one that fits the code's imports, else cold).")
    var warm: String?
    @Option(help: "The run's network: 'none' (the default: loopback only) or a comma-separated allow-list, e.g. '10.1.2.3:443,udp://192.0.2.0/24:53,db.internal:5432'.")
    var network: String = "none"
    @Option(help: "With --network: egress limit in bytes/s.") var networkRate: UInt64?
    @Option(help: "Addresses of runs with network: a private IPv4 range, one /30 per run.") var networkRange: String = "10.213.0.0/16"
    @Option(name: .customLong("network-host"), help: "A name the run's resolver answers, NAME=ADDRESS[,ADDRESS] (repeatable), before the host's resolver.")
    var networkHosts: [String] = []
    @Flag(help: "With --server: start python3 cold, never from a warm template.")
    var cold = false

    /// The --label pairs, checked as the API checks `labels`.
    func parsedLabels() throws -> [String: String] {
        var out: [String: String] = [:]
        for kv in labels {
            let (k, v) = try LogFilters.labelPair(kv)
            guard out[k] == nil else { throw ValidationError("--label \(k) is given twice") }
            out[k] = v
        }
        do { try Labels.validate(out) } catch { throw ValidationError(error.detail.replacingOccurrences(of: "'labels'", with: "--label")) }
        return out
    }

    func parsedAlertRules() throws -> [AlertRule] {
        do { return try AlertRule.parseAll(alertRules) } catch { throw ValidationError(error.message) }
    }

    func validate() throws {
        if code == nil && file == nil { throw ValidationError("give a FILE, -c CODE or - (standard input)") }
        if code != nil && file != nil && file != "-" {
            throw ValidationError("give either FILE or -c CODE, not both")
        }
        if timeLimit <= 0 || cpuLimit <= 0 { throw ValidationError("time limits must be positive") }
        if memoryLimit < 8 << 20 { throw ValidationError("--memory-limit must be at least 8 MiB") }
        if pidsLimit < 1 { throw ValidationError("--pids-limit must be at least 1") }
        if outputLimit < 0 { throw ValidationError("--output-limit must not be negative") }
        if scratchSize < 4 << 20 { throw ValidationError("--scratch-size must be at least 4 MiB") }
        if !(0.01...60).contains(sampleInterval) { throw ValidationError("--sample-interval must be between 0.01 and 60") }
        if [live, events, json].filter({ $0 }).count > 1 { throw ValidationError("--live, --events and --json exclude each other") }
        _ = try parsedLabels()
        _ = try parsedAlertRules()
        if server == nil {
            if warm != nil || cold { throw ValidationError("--warm and --cold need --server (a local run always starts cold)") }
        } else {
            if live || events { throw ValidationError("--live and --events are not available with --server (use the service's /executions/{id}/events)") }
            if logDB != nil || !alertRules.isEmpty { throw ValidationError("with --server the service logs the run and applies its own alert rules (--log, --alert)") }
            if rootfs != "/" || python != "/usr/bin/python3" || scratchSize != 128 << 20 || cpus != nil {
                throw ValidationError("--rootfs, --python, --scratch-size and --cpus are the service's with --server")
            }
            if warm != nil && cold { throw ValidationError("give either --warm or --cold") }
            if let w = warm, w != "auto" {
                do { _ = try WarmSpec(parsing: w) } catch { throw ValidationError("--warm: \(error.what)") }
            }
        }
    }

    /// The POST /execute body for --server.
    func remoteBody(program: String, stdinBytes: [UInt8]?) throws -> [UInt8] {
        var body: [String: Any] = [
            "code": program, "container_name": name, "time_limit": timeLimit, "cpu_limit": cpuLimit,
            "memory_limit": memoryLimit, "pids_limit": pidsLimit, "output_limit": outputLimit,
        ]
        if !args.isEmpty { body["args"] = args }
        let l = try parsedLabels()
        if !l.isEmpty { body["labels"] = l }
        if let bytes = stdinBytes {
            guard let text = String(validating: bytes, as: UTF8.self) else {
                throw ValidationError("--stdin must be UTF-8 text with --server (the API's stdin is a string)")
            }
            body["stdin"] = text
        }
        if cold {
            body["warm"] = false
        } else if let w = warm, w != "auto" {
            body["warm"] = w
        } else {
            body["warm"] = true
        }
        if let entries = Self.networkEntries(network) { body["network"] = ["allow": entries] }
        if let networkRate { body["network_rate"] = networkRate }
        return Array(try JSONSerialization.data(withJSONObject: body))
    }

    /// `--server`: the run through the service; the same output, table and exit status.
    func runRemote(_ server: String, program: String, stdinBytes: [UInt8]?) async throws -> Never {
        let token = ProcessInfo.processInfo.environment["SANDPIT_TOKEN"]
        let body: [UInt8]
        do {
            body = try await Remote.call(server: server, method: "POST", path: "/execute",
                                         body: try remoteBody(program: program, stdinBytes: stdinBytes), token: token)
        } catch let r as Remote.Refused {
            FileHandle.standardError.write(Data("sandpit: \(r.description)\n".utf8))
            throw ExitCode(125)
        }
        let result = try JSONDecoder().decode(ExecutionResult.self, from: Data(body))
        if json {
            print(result.jsonString(pretty: true))
        } else {
            FileHandle.standardOutput.write(Data(result.output.utf8))
            if let e = result.error { FileHandle.standardError.write(Data(e.utf8)) }
            FileHandle.standardError.write(Data(MetricsTable.render(result).utf8))
        }
        throw ExitCode(Int32(exitStatus(result)))
    }

    func run() async throws {
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var program: String
        if let code {
            program = code
        } else if file == "-" {
            program = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
        } else {
            guard let data = FileManager.default.contents(atPath: file!) else {
                throw ValidationError("cannot read \(file!)")
            }
            program = String(decoding: data, as: UTF8.self)
        }
        if let server {
            let bytes = try stdin.map { path -> [UInt8] in
                guard let data = FileManager.default.contents(atPath: path) else { throw ValidationError("cannot read \(path)") }
                return Array(data)
            }
            try await runRemote(server, program: program, stdinBytes: bytes)
        }
        var req = ExecutionRequest(code: program)
        req.args = args
        req.name = name
        req.rootfs = rootfs
        req.python = python
        req.limits.wallSeconds = timeLimit
        req.limits.cpuSeconds = cpuLimit
        req.limits.memoryBytes = memoryLimit
        req.limits.pids = pidsLimit
        req.limits.outputBytes = outputLimit
        req.limits.scratchBytes = scratchSize
        req.limits.cpuCores = cpus
        if let stdin {
            guard let data = FileManager.default.contents(atPath: stdin) else { throw ValidationError("cannot read \(stdin)") }
            req.stdin = Array(data)
        }
        // The CLI's caller is the operator: any destination outside the runs' range.
        var netSettings = NetworkSettings()
        netSettings.allowMax = [IPv4Net("0.0.0.0/0")!]
        do throws(NetworkPolicyError) {
            guard let range = IPv4Net(networkRange) else { throw NetworkPolicyError("--network-range: '\(networkRange)' is not an IPv4 network") }
            try NetworkSettings.checkRange(range)
            netSettings.range = range
            for h in networkHosts { try netSettings.addHost(h) }
            if let entries = Self.networkEntries(network) {
                req.network = try NetworkPolicy.parse(entries, rate: networkRate).resolved(with: netSettings)
            } else if networkRate != nil {
                throw NetworkPolicyError("--network-rate needs --network with an allow-list")
            }
        } catch {
            throw ValidationError(error.message)
        }
        var logger = Logger(label: "sandpit")
        logger.logLevel = ProcessInfo.processInfo.environment["SANDPIT_LOG"].flatMap { Logger.Level(rawValue: $0) } ?? .warning
        // One run: cloning this small process is cheaper than starting a launcher, and
        // nothing is prepared or kept for a next run.
        var settings = SandboxSettings.oneShot()
        settings.alertRules = try parsedAlertRules()
        settings.network = netSettings
        let sandbox = Sandbox(settings: settings, logger: logger)
        // The log is opened (and migrated) before the run: a bad path fails before any code runs.
        let store = try logDB.map { path -> ExecutionStore in
            try sqliteOnly(path)
            let s = try ExecutionStore(path: path)
            try s.prepare()
            return s
        }
        req.sampleInterval = (sampleInterval * 1000).rounded() / 1000
        let runEvents = live || events ? RunEvents() : nil
        let consumer = runEvents.map { ev in
            let stream = ev.subscribe()
            let (events, name) = (self.events, self.name)
            return Task { () -> [UInt8] in
                if events { await EventLines.print(stream, name: name); return [] }
                return await LiveStatus.follow(stream)
            }
        }
        let result = await sandbox.run(req, events: runEvents)
        let streamedStderr = await consumer?.value ?? []
        if events {
            // everything was in the events
        } else if live {
            // The program's stderr went by already; the sandbox's own reason did not.
            if let e = result.error, e != String(decoding: streamedStderr, as: UTF8.self) {
                FileHandle.standardError.write(Data(e.utf8))
            }
            FileHandle.standardError.write(Data(MetricsTable.render(result).utf8))
        } else if json {
            print(result.jsonString(pretty: true))
        } else {
            FileHandle.standardOutput.write(Data(result.output.utf8))
            if let e = result.error { FileHandle.standardError.write(Data(e.utf8)) }
            FileHandle.standardError.write(Data(MetricsTable.render(result).utf8))
        }
        if let store {
            // One row, written once the run is over (nothing stays `running` if this process dies).
            let rowID = try await store.begin(code: req.code, name: name, containerID: result.containerID,
                                              labels: try parsedLabels(), queuedAt: result.startedAt, startedAt: result.startedAt)
            try await store.finish(id: rowID, result: result, finishedAt: Date(), samples: [])
        }
        await sandbox.quiesce()  // the run's cgroup and scratch are gone before we exit
        sandbox.sweepStale()     // and so is anything an earlier, crashed sandpit left
        throw ExitCode(Int32(exitStatus(result)))
    }

    /// `--network`'s entries; nil for `none`.
    static func networkEntries(_ spec: String) -> [String]? {
        let s = spec.trimmingCharacters(in: .whitespaces)
        if s.isEmpty || s == "none" { return nil }
        return s.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }
    }

    func exitStatus(_ r: ExecutionResult) -> Int {
        if r.status == .internalError { return 125 }
        return r.exitCode ?? 1
    }
}

enum MetricsTable {
    static func render(_ r: ExecutionResult) -> String {
        func f(_ v: Double?, _ digits: Int = 3) -> String { v.map { String(format: "%.\(digits)f", $0) } ?? "-" }
        func b(_ v: Int64?) -> String {
            guard let v else { return "-" }
            if v >= 1 << 20 { return String(format: "%.1f MiB", Double(v) / 1048576) }
            if v >= 1 << 10 { return String(format: "%.1f KiB", Double(v) / 1024) }
            return "\(v) B"
        }
        var lines = ["", "── sandpit \(r.containerID.prefix(12)) (\(r.containerName)) ──"]
        lines.append("status \(r.status.rawValue)  exit \(r.exitCode.map(String.init) ?? "-")  wall \(f(r.executionTime)) s"
            + (r.signal.map { "  signal \($0)" } ?? "")
            + (r.start == .warm ? "  warm (\(r.warmTemplate ?? "?"), shared \(b(r.memoryShared)))" : ""))
        lines.append("cpu    user \(f(r.cpuUserTime)) s  sys \(f(r.cpuSystemTime)) s  \(f(r.cpuPercent, 1)) %")
        lines.append("memory peak \(b(r.memoryPeak))  now \(b(r.memoryUsage))  limit \(b(r.memoryLimit))  \(f(r.memoryPercent, 1)) %")
        lines.append("io     read \(b(r.blockIORead))  write \(b(r.blockIOWrite))  net rx \(b(r.networkIORx)) tx \(b(r.networkIOTx))  tasks \(r.pidsCount.map(String.init) ?? "-")")
        for (name, m) in r.customMetrics.sorted(by: { $0.key < $1.key }) {
            lines.append("custom \(name) last \(m.last) min \(m.min) max \(m.max) n \(m.count)" + (m.unit.map { " \($0)" } ?? ""))
        }
        if !r.alerts.isEmpty { lines.append("alerts \(r.alerts.joined(separator: ", "))") }
        if r.customMetricsRejected > 0 { lines.append("custom metric lines rejected: \(r.customMetricsRejected)") }
        if r.stdoutTruncated || r.stderrTruncated {
            lines.append("output truncated: stdout \(r.stdoutTruncated) stderr \(r.stderrTruncated)")
        }
        return lines.joined(separator: "\n") + "\n"
    }
}

/// `sandpit run --events`: each event as one JSON object with its name in `event`.
enum EventLines {
    static func print(_ stream: AsyncStream<RunEvent>, name: String) async {
        var encoder = EventEncoder(rowID: nil, name: name)
        for await e in stream {
            for (event, json) in encoder.encode(e) {
                let line = #"{"event":"\#(event)""# + (json == "{}" ? "}" : "," + json.dropFirst()) + "\n"
                FileHandle.standardOutput.write(Data(line.utf8))
            }
        }
    }
}

/// `sandpit run --live`: the program's output as it comes, and one status line on
/// stderr, redrawn in place on a terminal (a plain line per sample otherwise).
enum LiveStatus {
    /// Returns the stderr bytes it passed through.
    static func follow(_ stream: AsyncStream<RunEvent>) async -> [UInt8] {
        let tty = isatty(2) == 1
        var status = ""
        var stderr: [UInt8] = []
        func clear() { if tty && !status.isEmpty { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) } }
        func draw() { if tty && !status.isEmpty { FileHandle.standardError.write(Data(status.utf8)) } }
        for await e in stream {
            switch e {
            case .output(.stdout, let bytes):
                clear()
                FileHandle.standardOutput.write(Data(bytes))
                draw()
            case .output(.stderr, let bytes):
                stderr += bytes
                clear()
                FileHandle.standardError.write(Data(bytes))
                draw()
            case .sample(let s):
                clear()
                status = line(s)
                if tty { draw() } else { FileHandle.standardError.write(Data((status + "\n").utf8)) }
            case .limitHit(let kind):
                clear()
                FileHandle.standardError.write(Data("sandpit: limit reached: \(kind)\n".utf8))
                draw()
            case .result:
                clear()
                status = ""
            case .started, .metric:
                break
            }
        }
        return stderr
    }

    static func line(_ s: LiveSample) -> String {
        func b(_ v: Int64?) -> String {
            guard let v else { return "-" }
            if v >= 1 << 20 { return String(format: "%.1fM", Double(v) / 1048576) }
            if v >= 1 << 10 { return String(format: "%.1fK", Double(v) / 1024) }
            return "\(v)B"
        }
        let cpu = s.cpuPercent.map { String(format: "%.0f%%", $0) } ?? "-"
        return String(format: "[sandpit %.1fs] ", s.elapsed) + "cpu \(cpu)  mem \(b(s.memoryUsage)) peak \(b(s.memoryPeak))"
            + "  io r \(b(s.blockIORead)) w \(b(s.blockIOWrite))  net \(b(s.networkIORx))/\(b(s.networkIOTx))  tasks \(s.pidsCount.map(String.init) ?? "-")"
    }
}
