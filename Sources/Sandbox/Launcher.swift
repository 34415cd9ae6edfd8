import CSandpit
import Foundation
import Logging

/// The launcher ("zygote", see csandpit.h): a small single-threaded copy of the
/// sandpit executable that clones each run's init from its own address space, so a
/// large multithreaded service never forks itself. Started on first use; when it
/// cannot start or dies, runs are launched directly (and it is restarted next time).
final class Launcher: @unchecked Sendable {
    private let lock = NSLock()
    private var sock: Int32 = -1
    private var pid: pid_t = -1
    private var startFailed = false
    private var startedNs: Int64 = 0
    private let logger: Logger
    /// Where the zygote mounts its overlay of the host root (in its own mount
    /// namespace), and the mount point of that overlay's empty lower layer.
    let view: String
    let viewEmpty: String

    init(logger: Logger, stateDirectory: String) {
        self.logger = logger
        view = stateDirectory + "/view"
        viewEmpty = stateDirectory + "/view-empty"
    }

    /// The overlay sees the host's files as they were when it was mounted (overlayfs
    /// does not promise more when its lower layer changes): the zygote, and with it the
    /// view, is replaced when older than `maxAge` seconds. Off a run's critical path.
    func refresh(maxAge: Double = 10) {
        lock.lock(); defer { lock.unlock() }
        guard sock >= 0, Double(monotonicNanos() - startedNs) / 1e9 > maxAge else { return }
        stopLocked()
        startLocked()
    }

    /// Starts the zygote now instead of at the first run.
    func warmUp() {
        lock.lock(); defer { lock.unlock() }
        if sock < 0 && !startFailed { startLocked() }
    }

    /// Same contract as sp_launch: the init's pid (> 0) and its pidfd, or -errno.
    func launch(_ spec: inout sp_launch_spec, pidfd: inout Int32) -> pid_t {
        lock.lock(); defer { lock.unlock() }
        if sock >= 0 && Double(monotonicNanos() - startedNs) / 1e9 > 60 {
            stopLocked()  // after a long idle time: a fresh view of the host's files
        }
        if sock < 0 && !startFailed { startLocked() }
        guard sock >= 0 else { return sp_launch(&spec, &pidfd) }
        let r = sp_zygote_launch(sock, &spec, &pidfd)
        if r == -EPIPE {
            // The zygote is gone and received nothing: launch this run directly.
            logger.warning("launcher (pid \(pid)) is gone; restarting it for the next run")
            stopLocked()
            return sp_launch(&spec, &pidfd)
        }
        if r == -E2BIG || r == -EMFILE {
            // The spec does not fit one message (very long argv): nothing was launched.
            return sp_launch(&spec, &pidfd)
        }
        if r == -ECONNRESET || r == -EPROTO {
            logger.error("launcher (pid \(pid)) failed mid-launch: \(String(cString: strerror(-r)))")
            stopLocked()
        }
        return r
    }

    /// Pid of the running zygote (tests and the debug log).
    var zygotePid: pid_t? {
        lock.lock(); defer { lock.unlock() }
        return sock >= 0 ? pid : nil
    }

    func stop() {
        lock.lock(); defer { lock.unlock() }
        stopLocked()
    }

    private func startLocked() {
        var p: pid_t = 0
        _ = mkdir((view as NSString).deletingLastPathComponent, 0o700)
        _ = mkdir(view, 0o700)
        _ = mkdir(viewEmpty, 0o500)
        let s = sp_zygote_start("/proc/self/exe", view, viewEmpty, &p)
        guard s >= 0 else {
            startFailed = true
            logger.warning("launcher could not start (\(String(cString: strerror(-s)))); runs are cloned from this process")
            return
        }
        sock = s
        pid = p
        startedNs = monotonicNanos()
    }

    private func stopLocked() {
        if sock >= 0 { close(sock) }
        sock = -1
        if pid > 0 {
            // It exits on the closed socket at once.
            var st: Int32 = 0
            while waitpid(pid, &st, 0) < 0 && errno == EINTR {}
        }
        pid = -1
    }

    deinit {
        stopLocked()
    }
}
