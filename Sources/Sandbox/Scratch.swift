import CSandpit
import Foundation
import Synchronization

/// A run's writable area: an ext4 filesystem on its own loop device, sized to the
/// run's scratch limit, with `tmp` (1777) and `work` (the sandbox user's) on it. The
/// image has no name on the host (O_TMPFILE), the filesystem is mounted detached (in
/// no mount namespace: each run gets its own mount of it, attached by the sandbox
/// init), and the loop device clears itself (LO_FLAGS_AUTOCLEAR) once the last mount
/// is gone, so nothing can be left behind.
///
/// A service reuses a scratch for later runs after `reset()` has emptied it (see
/// `ReusePool`): attaching a loop device flushes its backing file to disk, and an
/// ext4 mount and unmount cost more than deleting a run's few files.
public struct Scratch: Sendable {
    public let loopFD: Int32
    /// The image file behind the loop device (no name on the host), kept to report
    /// how much host disk it holds.
    public let imageFD: Int32
    public let devicePath: String
    /// The filesystem's root, as a detached mount held by this process: it keeps the
    /// filesystem alive between runs and is the directory fd of all host-side work.
    public let rootFD: Int32
    public let size: UInt64
    /// Inodes in use when the scratch is empty (tmp/ and an empty work/).
    public let baselineInodes: UInt64
    /// Host disk the image held when the scratch was made (see `hostBytes`).
    public let baselineHostBytes: UInt64

    /// A new detached mount of the same filesystem for one run (the init moves it
    /// into the run's mount namespace; it goes away with that namespace).
    func mountForRun() throws(SandboxError) -> Int32 {
        let m = sp_mount_detached_ext4(devicePath)
        guard m >= 0 else { throw SandboxError(.scratch, "mount \(devicePath) (ext4) for the run", errno: -m) }
        return m
    }

    /// Writes the program as `work/<name>` (read-only, owned by the sandbox user).
    func writeProgram(_ code: [UInt8], as name: String, uid: UInt32, gid: UInt32) throws(SandboxError) {
        let path = "work/" + name
        let fd = sp_create_file_at(rootFD, path, 0o444)
        guard fd >= 0 else { throw SandboxError(.scratch, "create \(path)", errno: -fd) }
        defer { close(fd) }
        var off = 0
        while off < code.count {
            let n = code.withUnsafeBytes { write(fd, $0.baseAddress! + off, code.count - off) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SandboxError(.scratch, "write \(path)", errno: errno)
            }
            off += n
        }
        guard fchown(fd, uid, gid) == 0 else { throw SandboxError(.scratch, "chown \(path)", errno: errno) }
    }

    /// Drops this process's holds on the filesystem and the loop device; the device
    /// detaches once no run's mount of it remains.
    public func release() {
        close(rootFD)
        close(loopFD)
        close(imageFD)
    }

    /// Host disk the image holds now (allocated blocks of the backing file).
    public var hostBytes: UInt64 {
        var st = stat()
        return fstat(imageFD, &st) == 0 ? UInt64(st.st_blocks) * 512 : 0
    }

    /// Inodes in use now.
    func inodesInUse() -> UInt64? {
        let n = sp_inodes_in_use(rootFD)
        return n >= 0 ? UInt64(n) : nil
    }

    /// Empties the scratch after a run whose every process is gone: `work` is removed
    /// and made again, `tmp` is emptied. Returns false when the scratch must not be
    /// reused (the run left more than `maxEntries` inodes or a tree deeper than 32
    /// levels, or something could not be removed): it is then released instead.
    func reset(uid: UInt32, gid: UInt32, maxEntries: UInt64 = 256) -> Bool {
        guard let used = inodesInUse(), used <= baselineInodes + 1 + maxEntries else { return false }
        guard Tree.removeContents(of: rootFD, keep: ["lost+found", "tmp"], depth: 0),
              let tmp = Tree.openDirectory(rootFD, "tmp") else { return false }
        let emptied = Tree.removeContents(of: tmp, keep: [], depth: 1)
        close(tmp)
        // (The removed `work` may stay allocated a moment longer: the run's bind mount of
        // it goes away with the run's mount namespace, asynchronously. It has no name.)
        guard emptied, fchmodat(rootFD, "tmp", 0o1777, 0) == 0,
              mkdirat(rootFD, "work", 0o755) == 0, fchownat(rootFD, "work", uid, gid, 0) == 0 else { return false }
        // Give the freed blocks back to the host: the loop device punches holes in the
        // image for discarded ranges, so a kept scratch holds only what an empty one does
        // (not the largest run it ever held). Only when the image grew by more than 1 MiB:
        // most runs write nothing that reaches it, and a trim costs ~0.3 ms.
        return hostBytes <= baselineHostBytes + (1 << 20) || sp_fitrim(rootFD) >= 0
    }

    /// Copies a pre-formatted template (made once per size with mkfs.ext4) into an
    /// anonymous file, attaches it to a free loop device and mounts it detached.
    public static func make(stateDirectory: String, size: UInt64, uid: UInt32, gid: UInt32) throws(SandboxError) -> Scratch {
        let template = try templatePath(stateDirectory: stateDirectory, size: size)
        let src = open(template, O_RDONLY | O_CLOEXEC)
        guard src >= 0 else { throw SandboxError(.scratch, "open \(template)", errno: errno) }
        defer { close(src) }
        let img = sp_open_tmpfile(stateDirectory + "/scratch")
        guard img >= 0 else { throw SandboxError(.scratch, "anonymous file in \(stateDirectory)/scratch", errno: -img) }
        var keepImage = false
        defer { if !keepImage { close(img) } }
        let c = sp_copy_sparse(src, img, size)
        guard c == 0 else { throw SandboxError(.scratch, "copy scratch template", errno: -c) }
        var index: Int32 = -1
        let lfd = sp_loop_attach(img, &index)
        guard lfd >= 0 else { throw SandboxError(.scratch, "attach loop device", errno: -lfd) }
        let dev = "/dev/loop\(index)"
        let mfd = sp_mount_detached_ext4(dev)
        guard mfd >= 0 else {
            close(lfd)
            throw SandboxError(.scratch, "mount \(dev) (ext4)", errno: -mfd)
        }
        guard mkdirat(mfd, "tmp", 0o1777) == 0, fchmodat(mfd, "tmp", 0o1777, 0) == 0,
              mkdirat(mfd, "work", 0o755) == 0, fchownat(mfd, "work", uid, gid, 0) == 0 else {
            let e = errno
            close(mfd)
            close(lfd)
            throw SandboxError(.scratch, "prepare tmp and work on \(dev)", errno: e)
        }
        let inodes = sp_inodes_in_use(mfd)
        guard inodes >= 0 else {
            close(mfd)
            close(lfd)
            throw SandboxError(.scratch, "statfs \(dev)", errno: Int32(-inodes))
        }
        keepImage = true
        var st = stat()
        let held = fstat(img, &st) == 0 ? UInt64(st.st_blocks) * 512 : 0
        return Scratch(loopFD: lfd, imageFD: img, devicePath: dev, rootFD: mfd, size: size, baselineInodes: UInt64(inodes),
                       baselineHostBytes: held)
    }

    /// `<state>/templates/ext4-<size>.img`, created atomically on first use.
    static func templatePath(stateDirectory: String, size: UInt64) throws(SandboxError) -> String {
        let dir = stateDirectory + "/templates"
        let path = "\(dir)/ext4-\(size).img"
        if access(path, R_OK) == 0 { return path }
        for d in [stateDirectory, dir, stateDirectory + "/scratch", stateDirectory + "/root"] {
            if mkdir(d, 0o700) != 0 && errno != EEXIST { throw SandboxError(.scratch, "mkdir \(d)", errno: errno) }
        }
        // A name of its own: two threads of one process (a warm-up and a first run, or two
        // sandboxes sharing a state directory) may make the template at once; sharing a
        // temporary file (it was named by pid alone) let two mkfs runs write into one
        // image, which then failed every mount ("Structure needs cleaning").
        let tmp = "\(path).\(getpid()).\(UInt64.random(in: 0...UInt64.max)).tmp"
        let fd = open(tmp, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0o600)
        guard fd >= 0, ftruncate(fd, off_t(size)) == 0 else {
            throw SandboxError(.scratch, "create \(tmp)", errno: errno)
        }
        close(fd)
        // No journal: nothing on it outlives the process that mounted it. root_owner keeps
        // / owned by root.
        let status = Spawn.run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-m", "0", "-N", "16384",
                                "-E", "nodiscard,lazy_itable_init=1,root_owner=0:0", tmp])
        guard status == 0 else {
            unlink(tmp)
            throw SandboxError(.scratch, "mkfs.ext4 exited with \(status) (is e2fsprogs installed?)", errno: 0)
        }
        guard rename(tmp, path) == 0 else { throw SandboxError(.scratch, "rename \(tmp)", errno: errno) }
        return path
    }
}

/// Removal of what a finished run left in its scratch. Runs on the host as root
/// after every process of the run is gone, so nothing can race it; it never follows
/// a symlink (names come from the directory, directories are opened O_NOFOLLOW).
enum Tree {
    static func openDirectory(_ dirfd: Int32, _ name: String) -> Int32? {
        let fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        return fd >= 0 ? fd : nil
    }

    /// Removes every entry of the directory `dirfd` but `keep`; false on any failure.
    static func removeContents(of dirfd: Int32, keep: Set<String>, depth: Int) -> Bool {
        guard depth <= 32 else { return false }
        // A readable descriptor of the same directory (a mount fd is O_PATH-like).
        let own = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard own >= 0 else { return false }
        guard let dir = fdopendir(own) else {
            close(own)
            return false
        }
        defer { closedir(dir) }
        var names: [(String, Bool)] = []
        while let e = readdir(dir) {
            let name = withUnsafePointer(to: e.pointee.d_name) { String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) }
            if name == "." || name == ".." || keep.contains(name) { continue }
            names.append((name, e.pointee.d_type == UInt8(DT_DIR)))
        }
        for (name, isDir) in names {
            if isDir {
                guard let sub = openDirectory(dirfd, name) else { return false }
                let ok = removeContents(of: sub, keep: [], depth: depth + 1)
                close(sub)
                guard ok, unlinkat(dirfd, name, AT_REMOVEDIR) == 0 else { return false }
            } else if unlinkat(dirfd, name, 0) != 0 {
                return false
            }
        }
        return true
    }
}

/// Resources emptied after their run and kept for the next ones (at most
/// `capacity`): scratch filesystems and quiet network namespaces.
final class ReusePool<T: Sendable>: @unchecked Sendable {
    private let idle = Mutex<[T]>([])
    private let dispose: (T) -> Void
    let capacity: Int

    init(capacity: Int, dispose: @escaping (T) -> Void) {
        self.capacity = capacity
        self.dispose = dispose
    }

    func take(where fits: (T) -> Bool = { _ in true }) -> T? {
        idle.withLock { list in list.lastIndex(where: fits).map { list.remove(at: $0) } }
    }

    func contains(where fits: (T) -> Bool = { _ in true }) -> Bool {
        idle.withLock { $0.contains(where: fits) }
    }

    /// Keeps `v` for a later run, or disposes of it when the pool is full.
    func put(_ v: T) {
        let keep = idle.withLock { list -> Bool in
            guard list.count < capacity else { return false }
            list.append(v)
            return true
        }
        if !keep { dispose(v) }
    }

    func drain() {
        let all = idle.withLock { list -> [T] in
            defer { list = [] }
            return list
        }
        for v in all { dispose(v) }
    }

    var items: [T] { idle.withLock { $0 } }
    var count: Int { idle.withLock { $0.count } }
}

/// posix_spawn + waitpid for helper programs (mkfs, python3 asked a question).
/// Blocking: call from a dedicated thread.
enum Spawn {
    /// Runs `argv` (PATH searched) with stdout to /dev/null; its exit status.
    static func run(_ argv: [String]) -> Int32 {
        spawn(argv, env: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], stdout: nil).0
    }

    /// Runs `argv` and returns its exit status and standard output (up to 64 KiB).
    static func capture(_ argv: [String]) -> (Int32, String) {
        var fds: [Int32] = [-1, -1]
        guard sp_pipe_cloexec(&fds) == 0 else { return (-1, "") }
        return spawn(argv, env: ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"], stdout: (fds[0], fds[1]))
    }

    private static func spawn(_ argv: [String], env: [String], stdout pipe: (Int32, Int32)?) -> (Int32, String) {
        var pid: pid_t = 0
        let cargs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { cargs.forEach { free($0) } }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let (_, w) = pipe {
            posix_spawn_file_actions_adddup2(&actions, w, 1)
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        } else {
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        }
        let cenv: [UnsafeMutablePointer<CChar>?] = env.map { strdup($0) } + [nil]
        defer { cenv.forEach { free($0) } }
        let r = posix_spawnp(&pid, argv[0], &actions, nil, cargs, cenv)
        if let (_, w) = pipe { close(w) }
        guard r == 0 else {
            if let (rd, _) = pipe { close(rd) }
            return (-1, "")
        }
        var out = [UInt8]()
        if let (rd, _) = pipe {
            var buf = [UInt8](repeating: 0, count: 4096)
            while out.count < 64 << 10 {
                let n = read(rd, &buf, buf.count)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                out += buf[0..<n]
            }
            close(rd)
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let code = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return (code, String(decoding: out, as: UTF8.self))
    }
}

/// Errors of the Sandbox module: what failed and the errno.
public struct SandboxError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable { case cgroup, scratch, launch, setup, invalid }
    public var code: Code
    public var what: String
    public var errno: Int32

    public init(_ code: Code, _ what: String, errno: Int32) {
        self.code = code
        self.what = what
        self.errno = errno
    }

    public var description: String {
        errno != 0 ? "\(what): \(String(cString: strerror(errno)))" : what
    }
}
