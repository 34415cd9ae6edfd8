import CgroupKit
import Foundation
import Testing
@testable import Sandbox

// The adversarial suite: programs that try to get out of the sandbox, starve the
// host or falsify their metrics. Each runs through the real sandbox; each asserts
// what the program observed, the run's status, and that the host is unharmed.

/// Host-side fixtures shared by the suite: a sentinel process, a secret file, a TCP
/// server on the host's loopback, an environment variable that must not leak.
enum HostFixture {
    static let marker = "sandpit-hostile-\(getpid())"
    static let secretPath = "/var/tmp/\(marker).secret"
    static let secretContent = "host secret \(UInt64.random(in: 0...UInt64.max))\n"
    static let envName = "SANDPIT_HOSTILE_SECRET"

    /// Created once: the files, the environment variable, and a sentinel process:
    /// `cat` reading a pipe whose write end only this test process holds, so it ends
    /// with the test process and never holds the test runner's output open.
    static let sentinel: pid_t = {
        _ = FileManager.default.createFile(atPath: secretPath, contents: Data(secretContent.utf8))
        setenv(envName, secretContent, 1)
        var fds: [Int32] = [-1, -1]
        _ = fds.withUnsafeMutableBufferPointer { pipe($0.baseAddress!) }
        _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawn_file_actions_adddup2(&actions, fds[0], 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addclose(&actions, fds[0])
        var pid: pid_t = 0
        let args: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/cat"), nil]
        defer { args.forEach { free($0) } }
        posix_spawn(&pid, "/bin/cat", &actions, nil, args, environ)
        posix_spawn_file_actions_destroy(&actions)
        close(fds[0])
        return pid
    }()

    static var sentinelAlive: Bool {
        // Reap it if it died, so that kill(pid, 0) cannot see a zombie as alive.
        var st: Int32 = 0
        if waitpid(sentinel, &st, WNOHANG) == sentinel { return false }
        return kill(sentinel, 0) == 0
    }

    static let server = LoopbackServer()
}

/// A TCP server on the host's 127.0.0.1 that counts the connections it accepts.
final class LoopbackServer: @unchecked Sendable {
    let port: UInt16
    private let lock = NSLock()
    private var accepted = 0
    var connections: Int { lock.lock(); defer { lock.unlock() }; return accepted }

    init() {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        listen(fd, 16)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        port = UInt16(bigEndian: addr.sin_port)
        Thread.detachNewThread { [self] in
            while true {
                let c = accept(fd, nil, nil)
                if c < 0 { if errno == EINTR { continue } else { return } }
                lock.lock(); accepted += 1; lock.unlock()
                close(c)
            }
        }
    }
}

/// Helpers every hostile program starts with: raw syscalls through libc and a
/// compact way to print an OSError's errno name.
let prelude = #"""
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return "ok" if r >= 0 else errno.errorcode.get(ctypes.get_errno(), "E?")
def tryop(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def machine_code(code, restype=ctypes.c_long):
    import mmap
    m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    m.write(code)
    f = ctypes.CFUNCTYPE(restype)(ctypes.addressof(ctypes.c_char.from_buffer(m)))
    return f()

"""#

struct Hostile: Sendable, CustomTestStringConvertible {
    let kind: String
    let name: String
    let code: String
    var edit: @Sendable (inout ExecutionRequest) -> Void = { _ in }
    let check: @Sendable (ExecutionResult) -> Void

    var testDescription: String { "\(kind): \(name)" }

    /// A call that must fail with EPERM, through the native ABI.
    static func denied(_ name: String, _ nr: Int, _ args: String = "0, 0, 0, 0, 0, 0") -> Hostile {
        Hostile(kind: "kernel", name: name, code: "print(sc(\(nr), \(args)))") { r in
            #expect(r.output == "EPERM\n", "\(name): \(r.output) \(r.error ?? "")")
            #expect(r.status == .ok)
        }
    }

    static let all: [Hostile] = files + processes + memory + network + kernel + output + leaks

    // MARK: files
    static let files: [Hostile] = [
        Hostile(kind: "files", name: "read /etc/shadow", code: #"print(tryop(lambda: open("/etc/shadow").read()))"#) { r in
            #expect(r.output == "ENOENT\n")
        },
        Hostile(kind: "files", name: "host home directories and top level", code: #"""
        print(os.path.exists("/root"), os.path.exists("/home"), os.path.exists("/var"), os.path.exists("/run"), os.path.exists("/boot"))
        print(sorted(os.listdir("/")))
        """#) { r in
            let lines = r.output.split(separator: "\n")
            #expect(lines.first == "False False False False False")
            for d in ["'root'", "'home'", "'var'", "'run'", "'sys'", "'opt'", "'mnt'", "'srv'", "'boot'", "'work'"] where d != "'work'" {
                #expect(!(lines.last ?? "").contains(d), "\(d) visible: \(lines.last ?? "")")
            }
            #expect((lines.last ?? "").contains("'work'") && (lines.last ?? "").contains("'tmp'"))
        },
        Hostile(kind: "files", name: "the service's state and a host secret file", code: """
        print(tryop(lambda: open("\(HostFixture.secretPath)").read()), os.path.exists("/var/lib/sandpit"))
        """) { r in
            #expect(r.output == "ENOENT False\n")
        },
        Hostile(kind: "files", name: "environ of every visible process", code: #"""
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
        found = []
        for p in pids:
            try:
                if b"SANDPIT_HOSTILE_SECRET" in open(f"/proc/{p}/environ", "rb").read(): found.append(p)
            except OSError as e:
                pass
        print(len(pids) <= 3, found, "SANDPIT_HOSTILE_SECRET" in os.environ)
        """#) { r in
            #expect(r.output == "True [] False\n")
        },
        Hostile(kind: "files", name: "write outside the scratch area", code: #"""
        out = []
        for p in ["/x", "/usr/x", "/usr/bin/python3", "/etc/passwd", "/etc/x", "/dev/x", "/proc/x", "/bin/x"]:
            out.append(tryop(lambda: open(p, "a").write("x")))
        print(out)
        """#) { r in
            #expect(!r.output.contains("'ok'"), "a write outside scratch succeeded: \(r.output)")
            #expect(r.output.hasPrefix("['EROFS'"))
        },
        Hostile(kind: "files", name: "write /proc/sys, /proc/sysrq-trigger, /sys, cgroup files", code: #"""
        print(tryop(lambda: open("/proc/sys/kernel/hostname", "w").write("pwned")),
              tryop(lambda: open("/proc/sysrq-trigger", "w").write("b")),
              tryop(lambda: open("/proc/sys/vm/drop_caches", "w").write("3")),
              os.path.exists("/sys"), os.path.exists("/sys/fs/cgroup"),
              tryop(lambda: open("/proc/self/cgroup").read()))
        """#) { r in
            let w = r.output.split(separator: " ")
            #expect(w.count == 6)
            #expect(!w.prefix(3).contains("ok"), "\(r.output)")
            #expect(w.dropFirst(3).prefix(2) == ["False", "False"])
        },
        Hostile(kind: "files", name: "mknod a device", code: #"""
        import stat
        print(tryop(lambda: os.mknod("/tmp/mem", 0o666 | stat.S_IFCHR, os.makedev(1, 1))),
              tryop(lambda: os.mknod("/tmp/sda", 0o666 | stat.S_IFBLK, os.makedev(8, 0))))
        """#) { r in
            #expect(r.output == "EPERM EPERM\n")
        },
        Hostile(kind: "files", name: "escape through /proc/self/root, /proc/1/root, /proc/*/cwd", code: #"""
        same = sorted(os.listdir("/proc/self/root")) == sorted(os.listdir("/"))
        print(same, tryop(lambda: os.listdir("/proc/1/root")), tryop(lambda: os.readlink("/proc/1/cwd")),
              os.path.exists("/proc/self/root/root"))
        """#) { r in
            #expect(r.output == "True EACCES EACCES False\n")
        },
        Hostile(kind: "files", name: "escape through .. and symlinks", code: #"""
        os.symlink("/../../../../etc", "/tmp/up")
        print(sorted(os.listdir("/../../../..")) == sorted(os.listdir("/")),
              os.path.realpath("/tmp/up"), os.path.exists("/tmp/up/shadow"))
        """#) { r in
            #expect(r.output == "True /etc False\n")
        },
        Hostile(kind: "files", name: "plant links for the cleanup", code: """
        for d in ["/tmp", "/work"]:
            os.symlink("\(HostFixture.secretPath)", d + "/victim")
            os.symlink("/", d + "/rootlink")
            os.symlink("/var/lib/sandpit", d + "/state")
        print(tryop(lambda: os.link("/etc/passwd", "/tmp/hard")), tryop(lambda: os.link("/usr/bin/python3", "/work/hard")))
        """) { r in
            #expect(r.output == "EXDEV EXDEV\n")
            // checked for every case too: the host file is intact after the teardown
        },
        Hostile(kind: "files", name: "fill the scratch area", code: #"""
        n = 0
        try:
            with open("/tmp/fill", "wb") as f:
                while True:
                    f.write(b"\0" * (1 << 20)); f.flush(); n += 1
        except OSError as e:
            print(errno.errorcode[e.errno], n <= 16)
        """#, edit: { $0.limits.scratchBytes = 16 << 20 }) { r in
            #expect(r.output == "ENOSPC True\n" || r.output == "EFBIG True\n", "\(r.output) \(r.error ?? "")")
            #expect(r.status == .ok)
            #expect((r.blockIOWrite ?? 0) >= 4 << 20)
        },
        Hostile(kind: "files", name: "fill /dev/shm", code: #"""
        n = 0
        try:
            with open("/dev/shm/fill", "wb") as f:
                while True:
                    f.write(b"\1" * (1 << 20)); f.flush(); n += 1
        except OSError as e:
            print(errno.errorcode[e.errno], n <= 64)
        """#, edit: { $0.limits.memoryBytes = 256 << 20 }) { r in
            #expect(r.output == "ENOSPC True\n", "\(r.output) \(r.error ?? "")")
            #expect(r.status == .ok)
        },
    ]

    // MARK: processes
    static let processes: [Hostile] = [
        Hostile(kind: "processes", name: "fork bomb", code: #"""
        import time
        n = 0
        try:
            while True:
                if os.fork() == 0:
                    time.sleep(30); os._exit(0)
                n += 1
        except OSError as e:
            print(errno.errorcode[e.errno], n)
        """#, edit: { $0.limits.pids = 32 }) { r in
            #expect(r.output == "EAGAIN 31\n", "\(r.output) \(r.error ?? "")")
            #expect(r.pidsCount == 32)
            #expect(r.status == .ok)
        },
        Hostile(kind: "processes", name: "thread bomb", code: #"""
        import threading, time
        n = 0
        try:
            while True:
                threading.Thread(target=time.sleep, args=(30,), daemon=True).start(); n += 1
        except RuntimeError:
            print("stopped", n)
        os._exit(0)
        """#, edit: { $0.limits.pids = 32 }) { r in
            #expect(r.output == "stopped 31\n")
            #expect(r.pidsCount == 32)
        },
        Hostile(kind: "processes", name: "kill(-1, SIGKILL)", code: #"""
        import signal, time
        child = os.fork()
        if child == 0:
            time.sleep(30); os._exit(0)
        r = tryop(lambda: os.kill(-1, signal.SIGKILL))
        _, st = os.waitpid(child, 0)
        print(r, os.WTERMSIG(st), tryop(lambda: os.kill(1, signal.SIGKILL)))
        """#) { r in
            #expect(r.output == "ok 9 EPERM\n")  // -1 reaches only the run's own processes
            #expect(HostFixture.sentinelAlive)
        },
        Hostile(kind: "processes", name: "ptrace", code: "print(sc(101, 0, 0, 0, 0), sc(101, 16, 1, 0, 0))") { r in
            #expect(r.output == "EPERM EPERM\n")
        },
        Hostile(kind: "processes", name: "setuid, setgid, setgroups", code: #"""
        print(tryop(lambda: os.setuid(0)), tryop(lambda: os.setgid(0)), tryop(lambda: os.setgroups([0])),
              tryop(lambda: os.setresuid(0, 0, 0)), os.getuid(), os.geteuid())
        """#) { r in
            #expect(r.output == "EPERM EPERM EPERM EPERM 65534 65534\n")
        },
        Hostile(kind: "processes", name: "every capability set empty", code: #"""
        st = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
        print([st[k].strip() for k in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"]])
        """#) { r in
            #expect(r.output == "['0000000000000000', '0000000000000000', '0000000000000000', '0000000000000000', '0000000000000000', '1', '2']\n")
        },
        Hostile(kind: "processes", name: "unshare namespaces", code: "print(sc(272, 0x10000000), sc(272, 0x20000), sc(272, 0x40000000), sc(272, 0x20000000))") { r in
            #expect(r.output == "EPERM EPERM EPERM EPERM\n")
        },
        Hostile(kind: "processes", name: "setns", code: #"""
        fd = os.open("/proc/self/ns/net", os.O_RDONLY)
        print(sc(308, fd, 0), tryop(lambda: os.open("/proc/1/ns/mnt", os.O_RDONLY)))
        """#) { r in
            #expect(r.output == "EPERM EACCES\n")
        },
        Hostile(kind: "processes", name: "clone with namespace flags, clone3", code: "print(sc(56, 0x10000000 | 17, 0, 0, 0, 0), sc(56, 0x20000 | 17, 0, 0, 0, 0), sc(435, 0, 0))") { r in
            #expect(r.output == "EPERM EPERM ENOSYS\n")
        },
        Hostile(kind: "processes", name: "double-forked daemon", code: """
        import time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv("/usr/bin/python3", ["python3", "-c", "import time; time.sleep(120)", "\(HostFixture.marker)-daemon"])
            os._exit(0)
        time.sleep(0.3)
        print("parent exits")
        """) { r in
            #expect(r.output == "parent exits\n")
            #expect(r.status == .ok)
            // checked after the teardown: no process with the marker on the host
        },
        Hostile(kind: "processes", name: "ignore SIGTERM and sleep past the wall limit", code: #"""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(60)
        """#, edit: { $0.limits.wallSeconds = 0.5 * Env.slow }) { r in
            #expect(r.status == .timeout && r.timedOut)
            #expect(r.executionTime < 0.5 * Env.slow + 1)
        },
        Hostile(kind: "processes", name: "spin past the CPU limit in threads", code: #"""
        import threading
        def spin():
            while True: pass
        for _ in range(4): threading.Thread(target=spin, daemon=True).start()
        spin()
        """#, edit: { $0.limits.cpuSeconds = 0.4 }) { r in
            #expect(r.status == .timeout)
            let cpu = (r.cpuUserTime ?? 0) + (r.cpuSystemTime ?? 0)
            #expect(cpu >= 0.39 && cpu < 0.7, "cpu \(cpu)")
        },
        Hostile(kind: "processes", name: "only fds 0, 1, 2 and the metrics pipe at start", code: #"""
        import stat
        print(sorted(os.listdir('/proc/self/fd')), stat.S_ISFIFO(os.fstat(3).st_mode), os.get_blocking(3),
              tryop(lambda: os.read(3, 1)))
        """#) { r in
            // 4 is listdir's own; 3 is the write end of the metrics pipe, nothing else.
            #expect(r.output == "['0', '1', '2', '3', '4'] True True EBADF\n", "\(r.output) \(r.error ?? "")")
        },
    ]

    // MARK: memory
    static let memory: [Hostile] = [
        Hostile(kind: "memory", name: "allocation bomb", code: #"""
        hog = []
        while True:
            hog.append(bytearray(16 << 20))
        """#, edit: { $0.limits.memoryBytes = 128 << 20 }) { r in
            #expect(r.status == .memoryLimit)
            #expect(r.oomKilled || r.error?.contains("thrashing") == true)
            #expect((r.memoryPeak ?? 0) <= (129 << 20))
        },
        Hostile(kind: "memory", name: "huge sparse mapping", code: #"""
        import mmap
        m = mmap.mmap(-1, 64 << 30, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x4000)
        for off in range(0, 64 << 30, 1 << 30): m[off] = 1
        print("mapped", len(m) >> 30)
        """#) { r in
            #expect(r.output == "mapped 64\n", "\(r.error ?? "")")
            // 64 touched pages; with transparent huge pages each may be 2 MiB (seen in the VM).
            #expect((r.memoryPeak ?? Int64.max) < 64 * (2 << 20) + (40 << 20))
        },
    ]

    // MARK: network
    static let network: [Hostile] = [
        Hostile(kind: "network", name: "connect to a server on the host's 127.0.0.1", code: """
        import socket
        print(tryop(lambda: socket.create_connection(("127.0.0.1", \(HostFixture.server.port)), timeout=2)))
        """) { r in
            #expect(r.output == "ECONNREFUSED\n")
            #expect(HostFixture.server.connections == 0)
        },
        Hostile(kind: "network", name: "raw and packet sockets", code: #"""
        import socket
        print(tryop(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)),
              tryop(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW)))
        """#) { r in
            // raw IP needs CAP_NET_RAW; AF_PACKET is not an allowed family at all
            #expect(r.output == "EPERM EAFNOSUPPORT\n")
        },
        Hostile(kind: "network", name: "socket families no network namespace confines (vsock, alg, key, tipc, rds, bluetooth, xdp)", code: #"""
        import socket
        fams = {"vsock": 40, "alg": 38, "key": 15, "tipc": 30, "rds": 21, "bluetooth": 31, "xdp": 44, "can": 29, "x25": 9}
        print({n: tryop(lambda f=f: socket.socket(f, socket.SOCK_SEQPACKET if f in (30, 31) else socket.SOCK_DGRAM)) for n, f in fams.items()})
        # the family in the upper half of the register is truncated by the kernel: still denied
        print(sc(41, (1 << 32) | 40, 1, 0), sc(53, 30, 5, 0, 0), sc(53, (1 << 32) | 40, 1, 0, 0))
        # netlink: only NETLINK_ROUTE (getaddrinfo, if_nameindex)
        print(tryop(lambda: socket.socket(16, socket.SOCK_RAW, 0)), tryop(lambda: socket.socket(16, socket.SOCK_RAW, 9)),
              tryop(lambda: socket.socket(16, socket.SOCK_RAW, 12)), sc(41, 16, 3, (1 << 32) | 9))
        print(tryop(lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM)), tryop(socket.socketpair),
              socket.getaddrinfo("localhost", 80, socket.AF_INET)[0][4], socket.if_nameindex())
        """#) { r in
            let lines = r.output.split(separator: "\n").map(String.init)
            #expect(lines.count == 4, "\(r.output) \(r.error ?? "")")
            #expect(lines.first == "{'vsock': 'EAFNOSUPPORT', 'alg': 'EAFNOSUPPORT', 'key': 'EAFNOSUPPORT', 'tipc': 'EAFNOSUPPORT', 'rds': 'EAFNOSUPPORT', 'bluetooth': 'EAFNOSUPPORT', 'xdp': 'EAFNOSUPPORT', 'can': 'EAFNOSUPPORT', 'x25': 'EAFNOSUPPORT'}")
            #expect(lines.dropFirst().first == "EAFNOSUPPORT EAFNOSUPPORT EAFNOSUPPORT")
            #expect(lines.dropFirst(2).first == "ok EPROTONOSUPPORT EPROTONOSUPPORT EPROTONOSUPPORT")
            #expect(lines.dropFirst(3).first == "ok ok ('127.0.0.1', 80) [(1, 'lo')]")
        },
        Hostile(kind: "network", name: "DNS", code: #"""
        import socket
        try:
            socket.getaddrinfo("example.com", 80); print("resolved")
        except socket.gaierror:
            print("no resolution")
        """#) { r in
            #expect(r.output == "no resolution\n")
        },
        Hostile(kind: "network", name: "interfaces and route changes", code: #"""
        import fcntl, socket, struct
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        down = tryop(lambda: fcntl.ioctl(s, 0x8914, struct.pack("16sH22x", b"lo", 0)))  # SIOCSIFFLAGS
        rt = tryop(lambda: fcntl.ioctl(s, 0x890B, b"\0" * 120))  # SIOCADDRT
        ifaces = [l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:]]
        print(down, rt, ifaces)
        """#) { r in
            #expect(r.output == "EPERM EPERM ['lo']\n")
        },
    ]

    // MARK: kernel surface, native and other ABIs
    static let kernel: [Hostile] = [
        denied("bpf", 321), denied("perf_event_open", 298), denied("userfaultfd", 323),
        denied("io_uring_setup", 425, "8, 0"), denied("keyctl", 250), denied("add_key", 248),
        denied("kexec_load", 246), denied("init_module", 175), denied("finit_module", 313),
        denied("reboot", 169, "0xfee1dead, 672274793, 0x4321fedc, 0"), denied("syslog", 103, "3, 0, 0"),
        denied("clock_settime", 227), denied("settimeofday", 164), denied("personality", 135, "0xffffffff"),
        denied("mount", 165), denied("umount2", 166), denied("pivot_root", 155), denied("chroot", 161),
        denied("swapon", 167), denied("acct", 163), denied("open_by_handle_at", 304),
        denied("process_vm_readv", 310), denied("quotactl", 179),
        // refused by Docker's default profile too
        denied("kcmp", 312, "1, 1, 0, 0, 0"), denied("get_mempolicy", 239), denied("set_mempolicy", 238),
        denied("mbind", 237), denied("move_pages", 279), denied("migrate_pages", 256),
        denied("set_mempolicy_home_node", 450), denied("sysfs", 139, "3, 0, 0"), denied("ustat", 136),
        denied("fanotify_init", 300), denied("modify_ldt", 154), denied("sethostname", 170, "0, 0"),
        denied("setdomainname", 171, "0, 0"),
        Hostile(kind: "kernel", name: "i386 ABI (int 0x80): getpid, bpf, mount", code: #"""
        print(machine_code(b"\xb8\x14\x00\x00\x00\xcd\x80\xc3", ctypes.c_int),
              machine_code(b"\xb8\x65\x01\x00\x00\xcd\x80\xc3", ctypes.c_int),
              machine_code(b"\xb8\x15\x00\x00\x00\xcd\x80\xc3", ctypes.c_int))
        """#) { r in
            #expect(r.output == "-1 -1 -1\n", "\(r.output) \(r.error ?? "")")  // -EPERM for every call
        },
        Hostile(kind: "kernel", name: "x32 ABI: getpid, bpf", code: #"""
        print(machine_code(b"\xb8\x27\x00\x00\x40\x0f\x05\xc3"), machine_code(b"\xb8\x41\x01\x00\x40\x0f\x05\xc3"))
        """#) { r in
            #expect(r.output == "-1 -1\n", "\(r.output) \(r.error ?? "")")
        },
    ]

    // MARK: output and metrics
    static let output: [Hostile] = [
        Hostile(kind: "output", name: "stdout flood", code: "while True: sys.stdout.write('x' * 65536)",
                edit: { $0.limits.outputBytes = 100_000 }) { r in
            #expect(r.status == .outputLimit && r.stdoutTruncated && !r.stderrTruncated)
            #expect(r.output.utf8.count == 100_000)
        },
        Hostile(kind: "output", name: "stderr flood", code: "while True: sys.stderr.write('e' * 65536)",
                edit: { $0.limits.outputBytes = 100_000 }) { r in
            #expect(r.status == .outputLimit && r.stderrTruncated && !r.stdoutTruncated)
            #expect(r.error?.utf8.count == 100_000)
        },
        Hostile(kind: "output", name: "invalid UTF-8 and NUL bytes", code: #"sys.stdout.buffer.write(b"\xff\xfe\x00\xc3(ok\x00")"#) { r in
            #expect(r.output == "\u{FFFD}\u{FFFD}\u{0}\u{FFFD}(ok\u{0}")
            #expect((try? JSONSerialization.jsonObject(with: Data(r.jsonString().utf8))) != nil)
        },
        Hostile(kind: "output", name: "tamper with the counters and the supervisor's pipes", code: #"""
        bad = [tryop(lambda fd=fd: os.write(fd, b"\1" * 64)) for fd in range(4, 64)]
        metrics = tryop(lambda: os.write(3, b"\1" * 64))  # its own metrics pipe: garbage, counted
        print(set(bad), metrics, tryop(lambda: os.listdir("/proc/1/fd")), tryop(lambda: open("/proc/1/mem", "rb")),
              tryop(lambda: open("/proc/self/io", "w")), tryop(lambda: open("/proc/1/io")))
        """#) { r in
            #expect(r.output == "{'EBADF'} ok EACCES EACCES EACCES EACCES\n", "\(r.output) \(r.error ?? "")")
            #expect(r.customMetricsRejected == 1 && r.customMetrics.isEmpty)
            #expect(r.status == .ok)
            #expect(r.pidsCount == 1)
            #expect((r.cpuUserTime ?? 99) < 5 && (r.blockIOWrite ?? -1) >= 0)
        },
    ]

    // MARK: leaks
    static let leaks: [Hostile] = [
        Hostile(kind: "leaks", name: "the host's disk through mountinfo", code: #"""
        print(open("/proc/self/mountinfo").read())
        """#) { r in
            // The host's root filesystem: its source (e.g. /dev/vda1) and device number.
            let text = SysFile.read("/proc/self/mountinfo") ?? ""
            let root = text.split(separator: "\n").last(where: { $0.split(separator: " ").dropFirst(4).first == "/" }) ?? ""
            #expect(!root.isEmpty, "no root mount in \(text)")
            let fields = root.split(separator: " ")
            let sep = fields.firstIndex(of: "-") ?? 0
            let device = fields.count > 2 ? String(fields[2]) : "?"
            let source = sep + 2 < fields.count ? String(fields[sep + 2]) : "?"
            #expect(r.status == .ok && r.output.contains(" /usr "), "\(r.output) \(r.error ?? "")")
            #expect(!r.output.contains(" \(device) "), "the host disk's device number \(device) shows: \(r.output)")
            #expect(!r.output.contains(" \(source) "), "the host disk \(source) shows: \(r.output)")
            #expect(r.output.contains(" - overlay sandpit ro,"), "\(r.output)")
        },
        Hostile(kind: "leaks", name: "the host through /proc: kernel symbols, config, memory map, keys, boot, disks", code: #"""
        def peek(p):
            try:
                with open("/proc/" + p, "rb") as f:
                    return len(f.read())
            except IsADirectoryError:
                return os.listdir("/proc/" + p)
            except OSError as e:
                return errno.errorcode.get(e.errno)
        names = ["kallsyms", "config.gz", "iomem", "ioports", "keys", "key-users", "cmdline", "modules", "interrupts",
                 "timer_list", "sched_debug", "partitions", "diskstats", "vmallocinfo", "acpi", "scsi", "driver"]
        print({n: v for n in names if (v := peek(n)) not in (0, [], "ENOENT")})
        print(open("/proc/1/cmdline", "rb").read().rstrip(b"\0"), open("/proc/1/comm").read().strip(),
              open("/proc/self/cmdline", "rb").read())
        print(tryop(lambda: open("/proc/bus/x", "w")), tryop(lambda: os.mkdir("/proc/acpi/x")),
              len(open("/proc/cpuinfo").read()) > 0, len(open("/proc/meminfo").read()) > 0, os.cpu_count() > 0)
        """#) { r in
            let lines = r.output.split(separator: "\n").map(String.init)
            #expect(lines.count == 3, "\(r.output) \(r.error ?? "")")
            #expect(lines.first == "{}", "readable host information: \(lines.first ?? "")")
            #expect(lines.dropFirst().first == "b'sandpit-init' sandpit-init b'/usr/bin/python3\\x00-s\\x00/work/main.py\\x00'")
            #expect(lines.dropFirst(2).first?.hasSuffix("True True True") == true, "what Python needs of /proc stays")
        },
        Hostile(kind: "leaks", name: "hostname and environment", code: #"""
        import socket
        print(socket.gethostname(), os.uname().nodename, sorted(os.environ))
        """#) { r in
            #expect(r.output == "sandpit sandpit ['HOME', 'LANG', 'MKL_NUM_THREADS', 'OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'PATH', 'PYTHONDONTWRITEBYTECODE', 'PYTHONUNBUFFERED', 'SANDPIT_METRICS', 'TMPDIR']\n")
        },
    ]
}

extension PrivilegedSandboxSuites {
@Suite("Hostile programs (root, real sandbox)")
struct HostileTests {
    static let sandbox = Sandbox()

    @Test(arguments: Hostile.all)
    func hostile(_ c: Hostile) async throws {
        try #require(Env.isRoot, "privileged test run without root")
        #expect(HostFixture.sentinelAlive)
        var req = ExecutionRequest(code: prelude + c.code)
        req.limits.wallSeconds = 10 * Env.slow
        c.edit(&req)
        let r = await Self.sandbox.run(req)
        #expect(r.status != .internalError, "\(c.testDescription): \(r.error ?? "")")
        c.check(r)

        // The host after the run: nothing of it remains, nothing of the host was touched.
        await Self.sandbox.quiesce()
        Self.sandbox.releaseSpares()
        let backend = try Cgroups.shared()
        let left = backend.parentDirectories.flatMap { SysFile.list($0) }.filter { $0.hasSuffix(r.containerID) }
        #expect(left.isEmpty, "cgroups left: \(left)")
        #expect(SysFile.read(HostFixture.secretPath) == HostFixture.secretContent)
        #expect(HostFixture.sentinelAlive)
        let daemons = SysFile.list("/proc").filter { Int($0) != nil }.filter {
            (SysFile.read("/proc/\($0)/cmdline") ?? "").contains(HostFixture.marker + "-daemon")
        }
        #expect(daemons.isEmpty, "a process of the run outlived it: \(daemons)")
        #expect(SysFile.list(SandboxSettings().stateDirectory + "/scratch").isEmpty)
    }

    @Test func concurrentRunsCannotSeeEachOther() async throws {
        try #require(Env.isRoot, "privileged test run without root")
        // B looks while A is surely running (python starts take ~0.5 s in the emulated VM).
        var a = ExecutionRequest(code: """
        import os, time
        open("/tmp/marker-a", "w").write("a"); open("/work/marker-a", "w").write("a")
        time.sleep(\(Env.inVM ? 6.0 : 1.5))
        print(sorted(os.listdir("/tmp")), sorted(p for p in os.listdir("/proc") if p.isdigit()))
        """)
        var b = ExecutionRequest(code: """
        import os, time
        time.sleep(\(Env.inVM ? 2.0 : 0.5))
        print(sorted(os.listdir("/tmp")), sorted(os.listdir("/work")), sorted(p for p in os.listdir("/proc") if p.isdigit()))
        """)
        a.limits.wallSeconds = 10 * Env.slow
        b.limits.wallSeconds = 10 * Env.slow
        async let ra = Self.sandbox.run(a)
        async let rb = Self.sandbox.run(b)
        let (x, y) = await (ra, rb)
        #expect(x.output == "['marker-a'] ['1', '2']\n")
        #expect(y.output == "[] ['main.py'] ['1', '2']\n")
    }
}
}
