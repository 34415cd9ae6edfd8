#if canImport(Glibc)
import Glibc
#endif

/// A run cgroup's memory high-water mark, reset at will: the per-execution peak of a
/// long-lived group (a session). v1: `memory.max_usage_in_bytes` (writing 0 resets it
/// for everyone). v2: `memory.peak`, which from Linux 6.12 can be reset for one open
/// file (writing to it): that file then reports the peak since its reset.
public final class PeakMeter: @unchecked Sendable {
    private let fd: Int32
    private let version: CgroupVersion

    init?(path: String, version: CgroupVersion) {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        self.fd = fd
        self.version = version
        // A kernel without the per-file reset refuses the write.
        guard reset() else {
            close(fd)
            return nil
        }
    }

    /// Starts a new measurement; false when the kernel refused.
    @discardableResult
    public func reset() -> Bool {
        let text = version == .v1 ? "0" : "reset\n"
        return text.withCString { write(fd, $0, strlen($0)) } >= 0
    }

    /// Bytes: the most the group had charged at once since `reset()`.
    public func read() -> UInt64? {
        SysFile.pread(fd).flatMap(StatParse.single)
    }

    deinit { close(fd) }
}

extension CgroupBackend {
    /// A resettable memory peak of `run`, or nil where the kernel cannot reset it
    /// (cgroup v2 before Linux 6.12: the caller samples `memory.current` instead).
    public func peakMeter(_ run: RunCgroup) -> PeakMeter? {
        switch version {
        case .v1:
            return run.directory(for: "memory").flatMap { PeakMeter(path: $0 + "/memory.max_usage_in_bytes", version: .v1) }
        case .v2:
            return run.directories.first.flatMap { PeakMeter(path: $0 + "/memory.peak", version: .v2) }
        }
    }

    /// Freezes (or thaws) every task of `run` through the cgroup freezer and waits, up
    /// to `timeout` seconds, until the kernel says the group is in that state. A frozen
    /// group's tasks are stopped where they stand and use no CPU; their memory stays.
    /// v2: `cgroup.freeze` and the `frozen` key of `cgroup.events`; v1: `freezer.state`.
    public func setFrozen(_ run: RunCgroup, _ frozen: Bool, timeout: Double = 5) throws(CgroupError) {
        let control: String, check: () -> Bool
        switch version {
        case .v2:
            guard let d = run.directories.first else { throw CgroupError(.controllerMissing, "no cgroup directory", path: run.name) }
            try SysFile.write(d + "/cgroup.freeze", frozen ? "1" : "0")
            control = d + "/cgroup.freeze"
            check = { StatParse.flatKeyed(SysFile.read(d + "/cgroup.events") ?? "")["frozen"] == (frozen ? 1 : 0) }
        case .v1:
            guard let d = run.directory(for: "freezer") else {
                throw CgroupError(.controllerMissing, "no freezer hierarchy for", path: run.name)
            }
            control = d + "/freezer.state"
            try SysFile.write(control, frozen ? "FROZEN" : "THAWED")
            let want = frozen ? "FROZEN" : "THAWED"
            check = { SysFile.read(d + "/freezer.state")?.hasPrefix(want) ?? false }
        }
        var waited = 0.0
        while !check() {
            if waited >= timeout { throw CgroupError(.busy, frozen ? "freeze did not complete" : "thaw did not complete", path: control) }
            if version == .v1 && frozen { try? SysFile.write(control, "FROZEN") }  // v1 retries from FREEZING
            usleep(200)
            waited += 0.0002
        }
    }
}
