import CSandpit
import Foundation
import Logging
import Synchronization

/// The launcher ("zygote", see csandpit.h): a small single-threaded copy of the
/// sandpit executable that clones each run's init from its own address space, so a
/// large multithreaded service never forks itself. Started on first use; when it
/// cannot start or dies, runs are launched directly (and it is restarted next time).
final class Launcher: Sendable {
    /// The zygote's control socket and pid, under one lock: a launch, a refresh and a
    /// stop never interleave.
    private struct State {
        var sock: Int32 = -1
        var pid: pid_t = -1
        var startFailed = false
        var startedNs: Int64 = 0
    }

    private let state = Mutex(State())
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
        state.withLock { st in
            guard st.sock >= 0, Double(monotonicNanos() - st.startedNs) / 1e9 > maxAge else { return }
            stop(&st)
            start(&st)
        }
    }

    /// Starts the zygote now instead of at the first run.
    func warmUp() {
        state.withLock { st in
            if st.sock < 0 && !st.startFailed { start(&st) }
        }
    }

    /// Same contract as sp_launch: the init's pid (> 0) and its pidfd, or -errno.
    func launch(_ spec: inout sp_launch_spec, pidfd: inout Int32) -> pid_t {
        state.withLock { st in
            if st.sock >= 0 && Double(monotonicNanos() - st.startedNs) / 1e9 > 60 {
                stop(&st)  // after a long idle time: a fresh view of the host's files
            }
            if st.sock < 0 && !st.startFailed { start(&st) }
            guard st.sock >= 0 else { return sp_launch(&spec, &pidfd) }
            let r = sp_zygote_launch(st.sock, &spec, &pidfd)
            if r == -EPIPE {
                // The zygote is gone and received nothing: launch this run directly.
                logger.warning("launcher (pid \(st.pid)) is gone; restarting it for the next run")
                stop(&st)
                return sp_launch(&spec, &pidfd)
            }
            if r == -E2BIG || r == -EMFILE {
                // The spec does not fit one message (very long argv): nothing was launched.
                return sp_launch(&spec, &pidfd)
            }
            if r == -ECONNRESET || r == -EPROTO {
                logger.error("launcher (pid \(st.pid)) failed mid-launch: \(String(cString: strerror(-r)))")
                stop(&st)
            }
            return r
        }
    }

    /// Pid of the running zygote (tests and the debug log).
    var zygotePid: pid_t? {
        state.withLock { $0.sock >= 0 ? $0.pid : nil }
    }

    func stop() {
        state.withLock { stop(&$0) }
    }

    private func start(_ st: inout State) {
        var p: pid_t = 0
        _ = mkdir((view as NSString).deletingLastPathComponent, 0o700)
        _ = mkdir(view, 0o700)
        _ = mkdir(viewEmpty, 0o500)
        let s = sp_zygote_start("/proc/self/exe", view, viewEmpty, &p)
        guard s >= 0 else {
            st.startFailed = true
            logger.warning("launcher could not start (\(String(cString: strerror(-s)))); runs are cloned from this process")
            return
        }
        st.sock = s
        st.pid = p
        st.startedNs = monotonicNanos()
    }

    private func stop(_ st: inout State) {
        if st.sock >= 0 { close(st.sock) }
        st.sock = -1
        if st.pid > 0 {
            // It exits on the closed socket at once.
            var status: Int32 = 0
            while waitpid(st.pid, &status, 0) < 0 && errno == EINTR {}
        }
        st.pid = -1
    }

    deinit {
        stop()
    }
}
