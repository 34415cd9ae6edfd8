import ArgumentParser
import CSandpit
import CgroupKit
import Foundation
import Sandbox

/// `sandpit doctor`: what this host offers, and how to fix what is missing.
struct Doctor: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check whether sandpit can run here; print each missing piece with its fix.")

    @Option(help: "The interpreter to check.") var python: String = "/usr/bin/python3"

    func run() throws {
        var blocking: [String] = []
        var lines: [String] = []
        func ok(_ what: String, _ value: String) { lines.append("  ok    \(what): \(value)") }
        func warn(_ what: String, _ value: String, fix: String) { lines.append("  warn  \(what): \(value)\n          fix: \(fix)") }
        func fail(_ what: String, _ value: String, fix: String) {
            lines.append("  FAIL  \(what): \(value)\n          fix: \(fix)")
            blocking.append(what)
        }

        let host = CgroupHost.current()
        print("sandpit doctor — kernel \(Self.kernelRelease())")
        print("cgroups")
        lines.append("  mode: \(host.mode.rawValue)")
        if let own = host.v2OwnDirectory {
            lines.append("  cgroup2: \(host.v2MountPoint ?? "-"), own group \(host.v2OwnPath ?? "?") (\(own)), controllers: \(host.v2Controllers.joined(separator: " "))")
        }
        for h in host.v1Hierarchies { lines.append("  v1 \(h.controllers.joined(separator: ",")): own group \(h.ownDirectory)") }

        if geteuid() != 0 {
            fail("privileges", "not root", fix: "run sandpit as root (sudo), or as a systemd service with Delegate=yes")
        }
        do {
            let b = try Cgroups.shared()
            ok("backend", "\(b.version.rawValue), run cgroups get: \(b.controllers.joined(separator: " "))")
            let run = try b.createRun(name: RunName.make(id: "doctor"), limits: CgroupLimits(memoryBytes: 64 << 20, pidsMax: 8))
            defer { try? b.remove(run); b.removeParentIfEmpty() }
            ok("run cgroup", "created and removed under \(b.parentDirectories.joined(separator: ", "))")
            let mem = run.directory(for: "memory") ?? ""
            let pids = run.directory(for: "pids") ?? ""
            if b.version == .v2 {
                SysFile.exists(mem + "/memory.peak") ? ok("memory.peak", "present")
                    : warn("memory.peak", "missing — memory_peak will be null", fix: "memory.peak needs Linux >= 5.19")
                SysFile.exists(run.directories[0] + "/cgroup.kill") ? ok("cgroup.kill", "present")
                    : warn("cgroup.kill", "missing — kills fall back to freeze + SIGKILL", fix: "cgroup.kill needs Linux >= 5.14")
                sp_have_clone_into_cgroup() != 0 ? ok("clone3(CLONE_INTO_CGROUP)", "available")
                    : warn("clone3(CLONE_INTO_CGROUP)", "missing — the child moves itself", fix: "needs Linux >= 5.7")
            } else {
                SysFile.exists(mem + "/memory.max_usage_in_bytes") ? ok("memory peak", "memory.max_usage_in_bytes (v1)")
                    : warn("memory peak", "missing", fix: "mount the v1 memory controller")
                ok("cgroup.kill", "not in v1 — sandpit freezes the group and SIGKILLs every member")
                lines.append("  note  v1 blkio counters stay 0 on many kernels; block I/O comes from per-task accounting")
                lines.append("  note  for cgroup v2 boot with systemd.unified_cgroup_hierarchy=1 (and run under Delegate=yes)")
            }
            SysFile.exists(pids + "/pids.peak") ? ok("pids.peak", "present")
                : warn("pids.peak", "missing — pids_count falls back to sampling pids.current", fix: "pids.peak needs Linux >= 6.1")
        } catch {
            fail("cgroups", "\(error)", fix: host.mode == .unified
                ? "run under systemd with Delegate=yes (see README), or as root in a group whose parent enables memory and pids"
                : "mount the v1 memory and pids controllers, or boot with cgroup v2")
        }
        print(lines.joined(separator: "\n"))
        lines = []
        print("isolation")
        sp_seccomp_available() != 0 ? ok("seccomp", "available (filter mode)")
            : fail("seccomp", "unavailable", fix: "a kernel with CONFIG_SECCOMP_FILTER")
        let userns = (SysFile.read("/proc/sys/user/max_user_namespaces") ?? "0").trimmingCharacters(in: .whitespacesAndNewlines)
        (Int(userns) ?? 0) > 0 ? ok("user namespaces", "available (max \(userns); sandpit does not need them as root)")
            : warn("user namespaces", "disabled", fix: "sysctl user.max_user_namespaces=15000 (only needed for a future rootless mode)")
        SysFile.exists("/dev/loop-control") ? ok("loop devices", "/dev/loop-control")
            : fail("loop devices", "no /dev/loop-control", fix: "modprobe loop")
        let mkfs = ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"].first { (p: String) in access(p, X_OK) == 0 }
        mkfs != nil ? ok("mkfs.ext4", mkfs!) : fail("mkfs.ext4", "missing", fix: "apt-get install e2fsprogs")
        access(python, X_OK) == 0 ? ok("python", python) : fail("python", "\(python) missing", fix: "apt-get install python3 python3-numpy, or use --rootfs with rootfs/build")
        // Runs with network (optional: without it, every run is loopback only).
        let net = NetworkAttachment.hostSupport()
        if !net.libnftables {
            warn("runs with network", "libnftables.so.1 missing — requests with a network policy fail", fix: "apt-get install nftables")
        } else if !net.nfTables {
            warn("runs with network", "the kernel refuses nftables", fix: "modprobe nf_tables nft_ct nft_nat nft_masq nft_fib_inet nft_reject_inet nft_limit veth")
        } else {
            let forwarding = (SysFile.read("/proc/sys/net/ipv4/ip_forward") ?? "0").hasPrefix("1")
            ok("runs with network", "nftables ready; IPv4 forwarding " + (forwarding ? "on" : "off (turned on at the first run with network; other forwarding stays dropped)"))
        }
        let state = SandboxSettings().stateDirectory
        ok("state directory", state)
        print(lines.joined(separator: "\n"))
        if blocking.isEmpty {
            print("sandpit can run here.")
        } else {
            print("sandpit cannot run here: \(blocking.joined(separator: ", ")).")
            throw ExitCode(1)
        }
    }

    static func kernelRelease() -> String {
        var u = utsname()
        uname(&u)
        return withUnsafePointer(to: u.release) { $0.withMemoryRebound(to: CChar.self, capacity: 65) { String(cString: $0) } }
    }
}
