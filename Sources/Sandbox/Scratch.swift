import CSandpit
import Foundation

/// A run's writable area: a fresh ext4 filesystem on its own loop device, sized
/// to the run's scratch limit, mounted detached (in no mount namespace) with `tmp`
/// (1777) and `work` (the sandbox user's) on it; the sandbox init attaches it. The
/// image has no name on the host (O_TMPFILE) and the loop device clears itself
/// (LO_FLAGS_AUTOCLEAR) once the mount is gone, so nothing can be left behind and
/// host-side cleanup never walks files the program controlled.
public struct Scratch: Sendable {
    public let loopFD: Int32
    public let devicePath: String
    /// The detached mount; handed to the init, which attaches it and closes its copy.
    public let mountFD: Int32
    public let size: UInt64

    /// Writes the program as `work/main.py` (read-only, owned by the sandbox user).
    func writeProgram(_ code: [UInt8], uid: UInt32, gid: UInt32) throws(SandboxError) {
        let fd = sp_create_file_at(mountFD, "work/main.py", 0o444)
        guard fd >= 0 else { throw SandboxError(.scratch, "create work/main.py", errno: -fd) }
        defer { close(fd) }
        var off = 0
        while off < code.count {
            let n = code.withUnsafeBytes { write(fd, $0.baseAddress! + off, code.count - off) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SandboxError(.scratch, "write work/main.py", errno: errno)
            }
            off += n
        }
        guard fchown(fd, uid, gid) == 0 else { throw SandboxError(.scratch, "chown work/main.py", errno: errno) }
    }

    /// Drops the parent's holds on the mount and the loop device; the device detaches
    /// once the run's mount namespace is gone.
    public func release() {
        close(mountFD)
        close(loopFD)
    }

    /// Copies a pre-formatted template (made once per size with mkfs.ext4) into an
    /// anonymous file, attaches it to a free loop device and mounts it detached.
    public static func make(stateDirectory: String, size: UInt64, uid: UInt32, gid: UInt32) throws(SandboxError) -> Scratch {
        let template = try templatePath(stateDirectory: stateDirectory, size: size)
        let src = open(template, O_RDONLY | O_CLOEXEC)
        guard src >= 0 else { throw SandboxError(.scratch, "open \(template)", errno: errno) }
        defer { close(src) }
        let img = sp_open_tmpfile(stateDirectory + "/scratch")
        guard img >= 0 else { throw SandboxError(.scratch, "O_TMPFILE in \(stateDirectory)/scratch", errno: -img) }
        defer { close(img) }
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
        let scratch = Scratch(loopFD: lfd, devicePath: dev, mountFD: mfd, size: size)
        guard mkdirat(mfd, "tmp", 0o1777) == 0, fchmodat(mfd, "tmp", 0o1777, 0) == 0,
              mkdirat(mfd, "work", 0o755) == 0, fchownat(mfd, "work", uid, gid, 0) == 0 else {
            let e = errno
            scratch.release()
            throw SandboxError(.scratch, "prepare tmp and work on \(dev)", errno: e)
        }
        return scratch
    }

    /// `<state>/templates/ext4-<size>.img`, created atomically on first use.
    static func templatePath(stateDirectory: String, size: UInt64) throws(SandboxError) -> String {
        let dir = stateDirectory + "/templates"
        let path = "\(dir)/ext4-\(size).img"
        if access(path, R_OK) == 0 { return path }
        for d in [stateDirectory, dir, stateDirectory + "/scratch", stateDirectory + "/root"] {
            if mkdir(d, 0o700) != 0 && errno != EEXIST { throw SandboxError(.scratch, "mkdir \(d)", errno: errno) }
        }
        let tmp = "\(path).\(getpid()).tmp"
        let fd = open(tmp, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0o600)
        guard fd >= 0, ftruncate(fd, off_t(size)) == 0 else {
            throw SandboxError(.scratch, "create \(tmp)", errno: errno)
        }
        close(fd)
        // No journal: the filesystem lives for one run. root_owner keeps / owned by root.
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

/// posix_spawnp + waitpid for helper programs (mkfs). Blocking: call from a dedicated thread.
enum Spawn {
    static func run(_ argv: [String]) -> Int32 {
        var pid: pid_t = 0
        let cargs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { cargs.forEach { free($0) } }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        let env: [UnsafeMutablePointer<CChar>?] = [strdup("PATH=/usr/sbin:/usr/bin:/sbin:/bin"), nil]
        defer { env.forEach { free($0) } }
        guard posix_spawnp(&pid, argv[0], &actions, nil, cargs, env) == 0 else { return -1 }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
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
