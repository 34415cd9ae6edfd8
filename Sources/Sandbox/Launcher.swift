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
    private let logger: Logger

    init(logger: Logger) {
        self.logger = logger
    }

    /// Starts the zygote now instead of at the first run.
    func warmUp() {
        lock.lock(); defer { lock.unlock() }
        if sock < 0 && !startFailed { startLocked() }
    }

    /// Same contract as sp_launch: the init's pid (> 0) and its pidfd, or -errno.
    func launch(_ spec: inout sp_launch_spec, pidfd: inout Int32) -> pid_t {
        lock.lock(); defer { lock.unlock() }
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
        let s = sp_zygote_start("/proc/self/exe", &p)
        guard s >= 0 else {
            startFailed = true
            logger.warning("launcher could not start (\(String(cString: strerror(-s)))); runs are cloned from this process")
            return
        }
        sock = s
        pid = p
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
