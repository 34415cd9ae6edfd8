import CSandpit
import Foundation
import Logging
import Synchronization

/// The modules a warm template imports (`serve --warm numpy,pandas`), sorted and
/// without repeats: `numpy,pandas` and `pandas,numpy` are one template.
public struct WarmSpec: Sendable, Hashable, CustomStringConvertible {
    public let modules: [String]
    public var description: String { modules.joined(separator: ",") }

    /// Dotted Python module names separated by commas (`numpy`, `numpy,scipy.linalg`).
    public init(parsing text: String) throws(SandboxError) {
        let names = text.split(separator: ",", omittingEmptySubsequences: false)
            .map { $0.trimmingCharacters(in: .whitespaces) }
        for n in names {
            let parts = n.split(separator: ".", omittingEmptySubsequences: false)
            let ok = !n.isEmpty && parts.allSatisfy { p in
                guard let f = p.utf8.first, f == UInt8(ascii: "_") || (f | 0x20) >= UInt8(ascii: "a") && (f | 0x20) <= UInt8(ascii: "z")
                else { return false }
                return p.utf8.allSatisfy { c in
                    c == UInt8(ascii: "_") || (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9"))
                        || ((c | 0x20) >= UInt8(ascii: "a") && (c | 0x20) <= UInt8(ascii: "z"))
                }
            }
            guard ok else { throw SandboxError(.invalid, "not a Python module name: \"\(n)\"", errno: 0) }
        }
        modules = Array(Set(names)).sorted()
    }

    /// The top-level packages of its modules (`scipy.linalg` → `scipy`).
    public var topLevel: Set<String> { Set(modules.map { String($0.split(separator: ".")[0]) }) }
}

/// What a request asks for: a cold run, the template that fits its imports, or one
/// template by its modules.
public enum WarmChoice: Sendable, Equatable {
    case cold, auto
    case named(WarmSpec)
}

/// The top-level modules a program imports, as far as its text shows: every
/// `import a.b, c as d` and `from a.b import x` statement at any indentation (inside
/// functions and `try` blocks too), first name only; relative imports are skipped.
/// Imports made by `__import__`, `importlib` or `exec` are not seen.
public enum ImportScanner {
    public static func topLevelImports(_ code: String) -> Set<String> {
        var found = Set<String>()
        for raw in code.split(omittingEmptySubsequences: true, whereSeparator: { $0 == "\n" || $0 == ";" }) {
            let line = raw.drop(while: { $0 == " " || $0 == "\t" })
            if line.hasPrefix("import ") || line.hasPrefix("import\t") {
                let rest = line.dropFirst(7).prefix(while: { $0 != "#" })
                for item in rest.split(separator: ",") {
                    if let name = firstName(item) { found.insert(name) }
                }
            } else if line.hasPrefix("from ") || line.hasPrefix("from\t") {
                let rest = line.dropFirst(5).drop(while: { $0 == " " || $0 == "\t" })
                guard !rest.hasPrefix(".") else { continue }
                if let name = firstName(rest) { found.insert(name) }
            }
        }
        return found
    }

    private static func firstName(_ s: Substring) -> String? {
        let t = s.drop(while: { $0 == " " || $0 == "\t" || $0 == "(" })
        let name = t.prefix(while: { $0.isLetter || $0.isNumber || $0 == "_" })
        return name.isEmpty || name.first!.isNumber ? nil : String(name)
    }
}

/// Why a template could not start (its text goes to the log and to /health).
struct WarmFailure: Error { let text: String }

/// One warm template: a `sandpit-warm` process (warm.c) that has imported its modules
/// and clones each warm run's init, with what it reported when it became ready.
final class WarmTemplate: Sendable {
    struct Process {
        var sock: Int32
        var pid: pid_t
        /// Resident memory, top-level modules loaded, the standard library's names, and
        /// the files its modules came from with their (inode, mtime) when it started.
        var rss: Int64
        var modules: Set<String>
        var stdlib: Set<String>
        var files: [String: FileStamp]
        var startedNs: Int64
    }

    struct FileStamp: Equatable {
        var ino: UInt64
        var mtime: Int64
        init?(_ path: String) {
            var st = stat()
            guard stat(path, &st) == 0 else { return nil }
            ino = UInt64(st.st_ino)
            mtime = Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec)
        }
    }

    struct State {
        var current: Process?
        var failures = 0
        var lastFailureNs: Int64 = 0
        var lastError: String?
        var launches = 0
        var restarts = 0
    }

    let spec: WarmSpec
    /// One launch at a time through the socket; the monitor swaps processes under it.
    let state = Mutex(State())

    init(spec: WarmSpec) { self.spec = spec }

    var isReady: Bool { state.withLock { $0.current != nil } }
}

/// What `GET /health` shows of a template.
public struct WarmTemplateStatus: Sendable, Codable, Equatable {
    public var modules: String
    public var ready: Bool
    public var pid: Int32?
    public var memoryShared: Int64?
    public var launches: Int
    public var restarts: Int
    public var lastError: String?

    enum CodingKeys: String, CodingKey {
        case modules, ready, pid, launches, restarts
        case memoryShared = "memory_shared"
        case lastError = "last_error"
    }
}

/// The warm templates of a sandbox: started in the background, restarted when they
/// die, rebuilt when a file of their modules changes (or after `maxAge`, for a fresh
/// view of the host's files), and picked for each warm request.
final class WarmPool: Sendable {
    let templates: [WarmTemplate]
    let logger: Logger
    let view: String
    let viewEmpty: String
    /// The interpreter whose library the templates load: warm runs are for it only.
    static let interpreter = "/usr/bin/python3"
    let maxAgeSeconds: Double
    private let stopping = Mutex(false)
    private let wake = DispatchSemaphore(value: 0)
    private let monitorDone = DispatchSemaphore(value: 0)
    private let started = Mutex(false)
    private let libpython = Mutex<String?>(nil)

    /// PYTHONPATH of the templates (`SandboxSettings.warmExtraPath`).
    let extraPath: [String]

    init(specs: [WarmSpec], logger: Logger, view: String, viewEmpty: String, extraPath: [String] = [],
         maxAgeSeconds: Double = 600) {
        self.extraPath = extraPath
        var seen = Set<WarmSpec>()
        templates = specs.filter { seen.insert($0).inserted }.map(WarmTemplate.init)
        self.logger = logger
        self.view = view
        self.viewEmpty = viewEmpty
        self.maxAgeSeconds = maxAgeSeconds
    }

    /// Starts the templates and their monitor on a thread of its own.
    func start() {
        guard started.withLock({ s in defer { s = true }; return !s }) else { return }
        let t = Thread { self.monitor() }
        t.stackSize = 512 << 10
        t.start()
    }

    /// Waits (blocking; not on Swift's cooperative pool) until every template is
    /// ready or has failed at least once, up to `timeout` seconds. Tests and benchmarks.
    func waitReady(timeout: Double) -> Bool {
        let end = monotonicNanos() + Int64(timeout * 1e9)
        while monotonicNanos() < end {
            if templates.allSatisfy({ $0.isReady }) { return true }
            usleep(20_000)
        }
        return templates.allSatisfy { $0.isReady }
    }

    /// Ends the monitor and every template (idempotent).
    func stop() {
        let wasStarted = started.withLock { $0 }
        let first = stopping.withLock { s in defer { s = true }; return !s }
        wake.signal()
        if wasStarted && first { monitorDone.wait() }
        for t in templates {
            if let p = t.state.withLock({ s -> WarmTemplate.Process? in defer { s.current = nil }; return s.current }) {
                end(p)
            }
        }
    }

    var status: [WarmTemplateStatus] {
        templates.map { t in
            t.state.withLock { s in
                WarmTemplateStatus(modules: t.spec.description, ready: s.current != nil, pid: s.current?.pid,
                                   memoryShared: s.current?.rss, launches: s.launches, restarts: s.restarts,
                                   lastError: s.lastError)
            }
        }
    }

    /// The template for `request`, or nil for a cold run: the named one, or (auto) the
    /// one with the fewest modules that has loaded every module the code imports from
    /// outside the standard library. Only for the default root and interpreter.
    func pick(_ request: ExecutionRequest) -> WarmTemplate? {
        guard request.warm != .cold, request.rootfs == "/", request.runtime.interpreter == Self.interpreter else { return nil }
        if case .named(let spec) = request.warm {
            return templates.first { $0.spec == spec && $0.isReady }
        }
        let imports = ImportScanner.topLevelImports(request.code)
        var best: (WarmTemplate, Int, Int64)?
        for t in templates {
            guard let p = t.state.withLock({ $0.current }) else { continue }
            guard imports.subtracting(p.stdlib).isSubset(of: p.modules) else { continue }
            let score = (t.spec.modules.count, p.rss)
            if best == nil || score < (best!.1, best!.2) { best = (t, score.0, score.1) }
        }
        return best?.0
    }

    /// Launches `spec` through `t`: the init's pid and pidfd, or -errno. -EAGAIN (not
    /// ready) and -EPIPE (gone before it received anything): nothing was launched, the
    /// caller launches cold. The template's resident size comes back in `shared`.
    func launch(_ t: WarmTemplate, spec: inout sp_launch_spec, pidfd: inout Int32, shared: inout Int64) -> pid_t {
        let (r, dead) = t.state.withLock { s -> (pid_t, WarmTemplate.Process?) in
            guard let p = s.current else { return (-EAGAIN, nil) }
            let r = sp_zygote_launch(p.sock, &spec, &pidfd)
            if r == -EPIPE || r == -ECONNRESET || r == -EPROTO {
                s.current = nil
                s.lastError = "gone during a launch (\(String(cString: strerror(-r))))"
                return (r, p)
            }
            if r > 0 {
                s.launches += 1
                shared = p.rss
            }
            return (r, nil)
        }
        if let p = dead {
            logger.warning("warm template \(t.spec) (pid \(p.pid)) is gone; it is restarted")
            end(p)
            wake.signal()
        }
        return r
    }

    // MARK: - the monitor

    private func monitor() {
        defer { monitorDone.signal() }
        var lastFileCheck: Int64 = 0
        while !stopping.withLock({ $0 }) {
            let now = monotonicNanos()
            let checkFiles = now - lastFileCheck > 5_000_000_000
            if checkFiles { lastFileCheck = now }
            for t in templates {
                if stopping.withLock({ $0 }) { break }
                tend(t, now: now, checkFiles: checkFiles)
            }
            _ = wake.wait(timeout: .now() + .milliseconds(500))
        }
    }

    /// Starts, restarts or rebuilds one template as needed.
    private func tend(_ t: WarmTemplate, now: Int64, checkFiles: Bool) {
        let (current, failures, lastFailure) = t.state.withLock { ($0.current, $0.failures, $0.lastFailureNs) }
        guard let p = current else {
            // After a failure: again in 1, 2, 4 ... 60 s.
            let backoff = Int64(min(60.0, pow(2.0, Double(max(0, failures - 1))))) * 1_000_000_000
            if failures == 0 || now - lastFailure >= backoff { replace(t, old: nil, why: failures == 0 ? "start" : "restart") }
            return
        }
        var st: Int32 = 0
        if waitpid(p.pid, &st, WNOHANG) == p.pid {
            let gone = t.state.withLock { s -> Bool in
                guard s.current?.pid == p.pid else { return false }
                s.current = nil
                s.lastError = "exited (wait status \(st))"
                s.failures += 1
                s.lastFailureNs = now
                return true
            }
            if gone {
                close(p.sock)
                logger.warning("warm template \(t.spec) (pid \(p.pid)) died (wait status \(st)); restarting it")
            }
            return
        }
        if Double(now - p.startedNs) / 1e9 > maxAgeSeconds {
            replace(t, old: p, why: "refresh after \(Int(maxAgeSeconds)) s")
        } else if checkFiles, let changed = p.files.first(where: { WarmTemplate.FileStamp($0.key) != $0.value })?.key {
            replace(t, old: p, why: "\(changed) changed")
        } else if checkFiles {
            t.state.withLock { s in if s.current?.pid == p.pid { s.current?.rss = Self.rss(of: p.pid) ?? p.rss } }
        }
    }

    /// Starts a new process for `t`; once it is ready it takes the old one's place.
    private func replace(_ t: WarmTemplate, old: WarmTemplate.Process?, why: String) {
        let t0 = monotonicNanos()
        switch startProcess(t.spec) {
        case .success(let p):
            let displaced = t.state.withLock { s -> WarmTemplate.Process? in
                let prev = s.current
                s.current = p
                s.failures = 0
                if old != nil || s.lastError != nil { s.restarts += 1 }
                return prev
            }
            logger.info("warm template \(t.spec) ready (\(why)): pid \(p.pid), \(p.rss >> 20) MiB resident, \(p.files.count) module files, \(millis(t0, monotonicNanos())) ms")
            if let d = displaced { end(d) }
        case .failure(let why):
            t.state.withLock { s in
                s.failures += 1
                s.lastFailureNs = monotonicNanos()
                s.lastError = why.text
            }
            logger.error("warm template \(t.spec) could not start: \(why.text)")
        }
    }

    /// The shared library of the default interpreter, asked of that interpreter once.
    private func findLibpython() -> Result<String, WarmFailure> {
        if let l = libpython.withLock({ $0 }) { return .success(l) }
        let (status, text) = Spawn.capture([Self.interpreter, "-I", "-c",
            "import sysconfig as s; print(s.get_config_var('LIBDIR') + '/' + s.get_config_var('INSTSONAME'))"])
        let path = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard status == 0, path.hasPrefix("/"), access(path, R_OK) == 0 else {
            return .failure(WarmFailure(text: "no shared libpython for \(Self.interpreter) (\(path.isEmpty ? "unknown" : path)); install libpython3.X"))
        }
        libpython.withLock { $0 = path }
        return .success(path)
    }

    private func startProcess(_ spec: WarmSpec) -> Result<WarmTemplate.Process, WarmFailure> {
        let lib: String
        switch findLibpython() {
        case .success(let l): lib = l
        case .failure(let e): return .failure(e)
        }
        _ = mkdir((view as NSString).deletingLastPathComponent, 0o700)
        _ = mkdir(view, 0o700)
        _ = mkdir(viewEmpty, 0o500)
        let home = (view as NSString).deletingLastPathComponent + "/warm-home"
        _ = mkdir(home, 0o700)
        var pid: pid_t = 0
        let sock = sp_template_start("/proc/self/exe", view, viewEmpty, lib, spec.description, WarmAgent.source, home,
                                     extraPath.joined(separator: ":"), &pid)
        guard sock >= 0 else { return .failure(WarmFailure(text: "spawn: \(String(cString: strerror(-sock)))")) }
        let started = monotonicNanos()
        // The imports take ~0.1-2 s here (and ~200 times that in an emulated VM).
        var buf = [UInt8](repeating: 0, count: 4 << 20)
        var n = -1
        while !stopping.withLock({ $0 }) {
            var pfd = pollfd(fd: sock, events: Int16(POLLIN), revents: 0)
            let r = poll(&pfd, 1, 250)
            if r < 0 && errno == EINTR { continue }
            if r != 0 {
                n = recv(sock, &buf, buf.count, 0)
                break
            }
            if Double(monotonicNanos() - started) / 1e9 > 900 { break }
        }
        let msg = n > 0 ? String(decoding: buf[0..<n], as: UTF8.self) : ""
        var lines = msg.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard lines.first == "ready", lines.count >= 4 else {
            let p = WarmTemplate.Process(sock: sock, pid: pid, rss: 0, modules: [], stdlib: [], files: [:], startedNs: started)
            end(p)
            if lines.first == "failed" { return .failure(WarmFailure(text: lines.dropFirst().joined(separator: " "))) }
            return .failure(WarmFailure(text: n == 0 ? "exited while importing \(spec) (its traceback is in the service's log)"
                                   : "no ready message (\(n < 0 ? String(cString: strerror(errno)) : "timeout or stop"))"))
        }
        lines.removeFirst()
        let rss = Int64(lines.removeFirst()) ?? 0
        let modules = Set(lines.removeFirst().split(separator: ",").map(String.init))
        let stdlib = Set(lines.removeFirst().split(separator: ",").map(String.init))
        var files: [String: WarmTemplate.FileStamp] = [:]
        for f in lines where !f.isEmpty { if let s = WarmTemplate.FileStamp(f) { files[f] = s } }
        return .success(WarmTemplate.Process(sock: sock, pid: pid, rss: rss, modules: modules, stdlib: stdlib,
                                             files: files, startedNs: started))
    }

    /// Ends a template process: its socket closed, it exits; killed if it does not
    /// within 2 s (still importing); reaped.
    private func end(_ p: WarmTemplate.Process) {
        close(p.sock)
        var st: Int32 = 0
        for _ in 0..<200 {
            let r = waitpid(p.pid, &st, WNOHANG)
            if r == p.pid || (r < 0 && errno == ECHILD) { return }
            usleep(10_000)
        }
        kill(p.pid, SIGKILL)
        while waitpid(p.pid, &st, 0) < 0 && errno == EINTR {}
    }

    static func rss(of pid: pid_t) -> Int64? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kb = Int64(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
        else { return nil }
        return kb * 1024
    }
}
