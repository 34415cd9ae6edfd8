import CSandpit
#if canImport(Glibc)
import Glibc
#endif

/// The seccomp policy, as data: every syscall here fails with EPERM inside the
/// sandbox; everything else is allowed (the other layers — namespaces, no
/// capabilities, an unprivileged uid, cgroups — confine what remains).
public enum SeccompPolicy {
    /// Calls that reach outside the sandbox or into kernel surfaces a program never needs.
    public static let denied: [String] = [
        // filesystems and namespaces
        "mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
        "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
        "open_by_handle_at", "name_to_handle_at", "quotactl", "quotactl_fd",
        // other processes
        "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "process_madvise",
        // the kernel itself
        "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
        "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
        "keyctl", "add_key", "request_key", "lookup_dcookie", "personality",
        "iopl", "ioperm", "uselib", "vhangup", "nfsservctl",
        // the machine
        "reboot", "swapon", "swapoff", "acct", "syslog",
        "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    ]

    /// clone() with any of these flags is denied (CLONE_NEWNS, NEWUTS, NEWIPC, NEWUSER,
    /// NEWPID, NEWNET, NEWCGROUP). clone3() fails with ENOSYS: its flags live in memory
    /// seccomp cannot inspect, and libc then falls back to clone().
    public static let cloneNamespaceFlags: UInt64 = 0x0002_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000
        | 0x2000_0000 | 0x4000_0000 | 0x0200_0000

    /// The BPF program, built once per process with libseccomp. Non-native ABIs
    /// (i386 through int 0x80, x32) get EPERM for every call.
    nonisolated(unsafe) public static let program: (pointer: UnsafeRawPointer?, instructions: Int) = {
        let cstrs = denied.map { strdup($0) }
        defer { cstrs.forEach { free($0) } }
        var out: UnsafeMutableRawPointer?
        var bytes = 0
        let n = cstrs.map { UnsafePointer($0) }.withUnsafeBufferPointer { buf in
            sp_seccomp_build(buf.baseAddress, buf.count, cloneNamespaceFlags, EPERM, &out, &bytes)
        }
        guard n > 0, let p = out else { return (nil, 0) }
        return (UnsafeRawPointer(p), Int(n))
    }()
}
