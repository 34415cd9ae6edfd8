import CSandpit
import Foundation
import Synchronization

/// One step of building the sandbox's root, executed in order by the init in C.
public struct MountOp: Sendable, Equatable {
    public enum Kind: Int32, Sendable {
        case mkdir = 1, bind, symlink, tmpfs, proc, mknod, file, blockfs, chown, umount, rmdir, touch, moveMount, mask, overlay, view
    }
    public var kind: Kind
    public var flags: Int32 = 0
    public var src: String?
    public var dst: String
    public var data: [UInt8] = []
    public var mode: UInt32 = 0o755
    public var dev: UInt = 0
    public var uid: UInt32 = UInt32.max
    public var gid: UInt32 = UInt32.max
    public var fd: Int32 = -1
}

/// The filesystem of a run, as a plan: a tmpfs root holding read-only binds of a
/// source root's system directories ("/" or a prepared --rootfs), a fresh /proc,
/// a minimal /dev, and /tmp and /work on the run's block-backed scratch.
public struct RootPlan: Sendable {
    public var ops: [MountOp] = []
    public let newRoot: String

    /// Top-level directories taken from the source root (symlinks are recreated as such).
    static let systemDirs = ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"]
    /// /proc entries hidden from the run (an empty read-only tmpfs on directories, a
    /// read-only /dev/null on files): Docker's masked paths, plus what names or maps the
    /// host's kernel, devices and boot (symbols, config, memory and I/O maps, loaded
    /// modules, disks and partitions, the kernel command line).
    static let maskedProc = [
        // Docker's
        "acpi", "asound", "interrupts", "kcore", "keys", "latency_stats", "timer_list", "timer_stats",
        "sched_debug", "scsi",
        // sandpit's
        "kallsyms", "config.gz", "iomem", "ioports", "modules", "vmallocinfo", "key-users", "cmdline",
        "partitions", "diskstats", "swaps", "mtrr", "dma", "driver", "tty", "fb", "mdstat", "bootconfig",
        "softirqs", "slabinfo", "pagetypeinfo", "kpagecount", "kpageflags", "kpagecgroup", "misc",
    ]
    /// /proc entries the run sees read-only (Docker's list; /proc/sys is bound read-only too).
    static let readOnlyProc = ["bus", "fs", "irq", "sysrq-trigger"]

    /// /etc entries the runtime needs; /etc itself (shadow, the host's config) is never exposed.
    static let etcEntries = ["alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "ssl", "ca-certificates",
                             "localtime", "mime.types", "os-release"]

    /// `extraEtc`: the runtime's own /etc entries (see `Runtime.etcEntries`). `view`:
    /// where the launcher keeps its overlay of the host root (used for source root "/").
    public init(newRoot: String, sourceRoot: String, extraEtc: [String] = [], view hostView: String? = nil,
                scratchMountFD: Int32,
                uid: UInt32, gid: UInt32, hostname: String, shmBytes: UInt64, network: Bool = false) {
        self.newRoot = newRoot
        let r = newRoot
        let src = sourceRoot == "/" ? "" : sourceRoot
        func add(_ op: MountOp) { ops.append(op) }

        // The source root is seen through a read-only overlay of it (lower layers: the
        // source root and an empty directory), mounted for the plan's binds and detached
        // after them. A bind's mountinfo line names the filesystem it was cloned from: an
        // overlay called "sandpit" on an anonymous device, not the host's disk and its
        // mount options. Entries on another filesystem than the root (a separate /usr)
        // are not in the overlay and are bound from the host directly.
        let view = "\(r)/.sandpit-view", empty = "\(r)/.sandpit-empty"
        let rootPath = src.isEmpty ? "/" : src
        let rootDevice = SourceEntry.device(rootPath)
        add(MountOp(kind: .mkdir, dst: view, mode: 0o700))
        add(MountOp(kind: .mkdir, dst: empty, mode: 0o500))
        // The launcher's overlay, shared by its runs (warm, mounted once), else one of our own.
        if src.isEmpty, let hostView { add(MountOp(kind: .view, src: hostView, dst: view)) }
        add(MountOp(kind: .overlay, src: rootPath, dst: view, data: Array("lowerdir=\(rootPath):\(empty)\0".utf8)))

        // A source entry appears as itself: a symlink is recreated, a directory or a file
        // is bound read-only onto a fresh mount point. Missing entries are skipped.
        func expose(_ sourcePath: String, at dst: String) {
            let entry = SourceEntry.of(sourcePath)
            var from = sourcePath
            if rootDevice != nil, SourceEntry.device(sourcePath) == rootDevice {
                from = view + String(sourcePath.dropFirst(src.count))
            }
            switch entry {
            case .symlink(let target):
                add(MountOp(kind: .symlink, src: target, dst: dst))
            case .directory:
                add(MountOp(kind: .mkdir, dst: dst))
                add(MountOp(kind: .bind, flags: SP_BIND_RO, src: from, dst: dst))
            case .file:
                add(MountOp(kind: .touch, dst: dst, mode: 0o644))
                add(MountOp(kind: .bind, flags: SP_BIND_RO, src: from, dst: dst))
            case .missing:
                break
            }
        }
        for d in Self.systemDirs { expose(src + "/" + d, at: "\(r)/\(d)") }
        add(MountOp(kind: .mkdir, dst: "\(r)/etc"))
        for e in Self.etcEntries + extraEtc { expose(src + "/etc/" + e, at: "\(r)/etc/\(e)") }
        let files: [(String, String)] = [
            ("passwd", "root:x:0:0:root:/:/usr/sbin/nologin\nsandbox:x:\(uid):\(gid):sandbox:/work:/bin/sh\n"),
            ("group", "root:x:0:\nsandbox:x:\(gid):\n"),
            ("hostname", hostname + "\n"),
            ("hosts", "127.0.0.1\tlocalhost \(hostname)\n::1\tlocalhost ip6-localhost\n"),
            // With network, the run's own resolver (sandpit answers it, see DNSResponder).
            ("resolv.conf", network ? "nameserver 127.0.0.1\noptions timeout:2 attempts:2\n" : ""),
            ("nsswitch.conf", "passwd: files\ngroup: files\nhosts: files\(network ? " dns" : "")\n"),
        ]
        for (name, content) in files {
            add(MountOp(kind: .file, dst: "\(r)/etc/\(name)", data: Array(content.utf8), mode: 0o644))
        }
        // The binds keep the overlay alive; its own mount point goes.
        add(MountOp(kind: .umount, dst: view))
        add(MountOp(kind: .rmdir, dst: view))
        add(MountOp(kind: .rmdir, dst: empty))

        // /proc of the run's pid namespace; /proc/sys read-only.
        add(MountOp(kind: .mkdir, dst: "\(r)/proc"))
        add(MountOp(kind: .proc, dst: "\(r)/proc"))
        add(MountOp(kind: .bind, flags: SP_BIND_RO, src: "\(r)/proc/sys", dst: "\(r)/proc/sys"))

        // A minimal /dev.
        add(MountOp(kind: .mkdir, dst: "\(r)/dev"))
        add(MountOp(kind: .tmpfs, flags: Int32(MS_NOSUID | MS_NOEXEC), dst: "\(r)/dev",
                    data: Array("mode=755,size=64k,nr_inodes=64\0".utf8)))
        for (name, minor) in [("null", 3), ("zero", 5), ("full", 7), ("random", 8), ("urandom", 9)] {
            add(MountOp(kind: .mknod, dst: "\(r)/dev/\(name)", mode: 0o666, dev: UInt(makedevice(1, UInt32(minor)))))
        }
        for (name, target) in [("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                               ("stderr", "/proc/self/fd/2")] {
            add(MountOp(kind: .symlink, src: target, dst: "\(r)/dev/\(name)"))
        }
        for p in Self.readOnlyProc {
            add(MountOp(kind: .bind, flags: SP_BIND_RO | SP_BIND_OPTIONAL, src: "\(r)/proc/\(p)", dst: "\(r)/proc/\(p)"))
        }
        for p in Self.maskedProc { add(MountOp(kind: .mask, src: "\(r)/dev/null", dst: "\(r)/proc/\(p)")) }
        add(MountOp(kind: .mkdir, dst: "\(r)/dev/shm"))
        add(MountOp(kind: .tmpfs, flags: Int32(MS_NOSUID | MS_NODEV), dst: "\(r)/dev/shm",
                    data: Array("mode=1777,size=\(shmBytes)\0".utf8)))

        // Scratch: the run's own ext4 (mounted detached by the parent, with tmp/, work/
        // and work/main.py on it), exposed as /tmp and /work.
        let s = "\(r)/.scratch"
        add(MountOp(kind: .mkdir, dst: s, mode: 0o700))
        add(MountOp(kind: .moveMount, dst: s, fd: scratchMountFD))
        for d in ["tmp", "work"] {
            add(MountOp(kind: .mkdir, dst: "\(r)/\(d)"))
            add(MountOp(kind: .bind, src: "\(s)/\(d)", dst: "\(r)/\(d)"))
        }
        add(MountOp(kind: .umount, dst: s))
        add(MountOp(kind: .rmdir, dst: s))
    }
}

/// What a path of the source root is. Every run builds the same plan, so the answer
/// is kept for 10 seconds (a package installed meanwhile shows up right after).
enum SourceEntry: Equatable, Sendable {
    case symlink(String), directory, file, missing

    private static let cache = Mutex<[String: (entry: SourceEntry, device: UInt64?, at: Int64)]>([:])

    /// What `path` is and the filesystem (st_dev) it is on itself (not following a
    /// final symlink), kept for 10 seconds.
    private static func lookup(_ path: String) -> (entry: SourceEntry, device: UInt64?) {
        let now = monotonicNanos()
        if let c = cache.withLock({ $0[path] }), now - c.at < 10_000_000_000 { return (c.entry, c.device) }
        var st = stat()
        let device: UInt64? = lstat(path, &st) == 0 ? UInt64(st.st_dev) : nil
        let e = classify(path)
        cache.withLock { $0[path] = (e, device, now) }
        return (e, device)
    }

    static func of(_ path: String) -> SourceEntry { lookup(path).entry }

    static func device(_ path: String) -> UInt64? { lookup(path).device }

    static func classify(_ path: String) -> SourceEntry {
        var st = stat()
        guard lstat(path, &st) == 0 else { return .missing }
        switch st.st_mode & S_IFMT {
        case S_IFLNK:
            var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            let n = readlink(path, &buf, buf.count - 1)
            guard n > 0 else { return .missing }
            return .symlink(String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self))
        case S_IFDIR:
            return .directory
        default:
            return access(path, R_OK) == 0 ? .file : .missing
        }
    }
}

@inline(__always) func makedevice(_ major: UInt32, _ minor: UInt32) -> UInt64 {
    // glibc's gnu_dev_makedev layout
    (UInt64(major & 0xfffff000) << 32) | (UInt64(major & 0xfff) << 8)
        | (UInt64(minor & 0xffffff00) << 12) | UInt64(minor & 0xff)
}
