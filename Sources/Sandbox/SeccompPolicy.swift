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
        // what Docker's default profile also refuses to a container without capabilities:
        // other processes' memory and files, NUMA placement, filesystem-wide watches,
        // the x86 LDT, obsolete information calls, and the run's own host and domain names
        "kcmp", "get_mempolicy", "set_mempolicy", "mbind", "move_pages", "migrate_pages",
        "set_mempolicy_home_node", "sysfs", "ustat", "fanotify_init", "modify_ldt",
        "sethostname", "setdomainname",
        // not implemented by Linux (ENOSYS today); denied so that a kernel that grows one is not reached
        "_sysctl", "afs_syscall", "create_module", "get_kernel_syms", "getpmsg", "putpmsg",
        "query_module", "security", "tuxcall", "vserver",
    ]

    /// Address families a program may open sockets of: AF_UNIX (1), AF_INET (2),
    /// AF_INET6 (10) and AF_NETLINK (16). Any other (AF_VSOCK, which no network
    /// namespace confines; AF_ALG, AF_KEY, AF_TIPC, AF_RDS, Bluetooth, AF_XDP, AF_PACKET,
    /// ...) fails with EAFNOSUPPORT, in socket() and socketpair().
    public static let socketFamilies: [Int32] = [1, 2, 10, 16]

    /// Netlink protocols allowed: NETLINK_ROUTE (0) only, which glibc's getaddrinfo
    /// (AI_ADDRCONFIG) and if_nameindex() use; others fail with EPROTONOSUPPORT.
    public static let netlinkProtocols: [Int32] = [0]

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
            socketFamilies.withUnsafeBufferPointer { fam in
                netlinkProtocols.withUnsafeBufferPointer { nl in
                    sp_seccomp_build(buf.baseAddress, buf.count, cloneNamespaceFlags, EPERM,
                                     fam.baseAddress, fam.count, nl.baseAddress, nl.count, &out, &bytes)
                }
            }
        }
        guard n > 0, let p = out else { return (nil, 0) }
        return (UnsafeRawPointer(p), Int(n))
    }()
}
