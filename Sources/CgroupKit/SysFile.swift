#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Errors of CgroupKit: the operation, the path and the errno.
public struct CgroupError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Code: String, Sendable {
        case noCgroupFilesystem, notWritable, controllerMissing, io, busy
    }
    public var code: Code
    public var operation: String
    public var path: String
    public var errno: Int32

    public init(_ code: Code, _ operation: String, path: String, errno: Int32 = 0) {
        self.code = code
        self.operation = operation
        self.path = path
        self.errno = errno
    }

    public var description: String {
        let reason = errno != 0 ? ": \(String(cString: strerror(errno)))" : ""
        return "\(operation) \(path)\(reason)"
    }
}

/// Small, allocation-light wrappers over open/read/write for cgroup and proc files.
/// Every function names the syscalls it uses; EINTR is retried.
public enum SysFile {
    /// open(2) + read(2) + close(2). Returns nil when the file does not exist or cannot be read.
    public static func read(_ path: String, maxBytes: Int = 1 << 20) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { return nil }
        defer { close(fd) }
        return readFD(fd, maxBytes: maxBytes)
    }

    /// Reads an open descriptor from its current offset to EOF.
    public static func readFD(_ fd: Int32, maxBytes: Int = 1 << 20) -> String? {
        var out = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 4096)
        while out.count < maxBytes {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                return nil
            }
            if n == 0 { break }
            out.append(contentsOf: chunk[0..<n])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// pread(2) of a kept-open descriptor from offset 0 (cheapest way to re-read a cgroup file).
    public static func pread(_ fd: Int32) -> String? {
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { Glibc.pread(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                return nil
            }
            // A full buffer may be a cut file (cgroup.procs of a big run): read it again, larger.
            if n == buf.count && buf.count < 1 << 20 {
                buf = [UInt8](repeating: 0, count: buf.count * 4)
                continue
            }
            return String(decoding: buf[0..<n], as: UTF8.self)
        }
    }

    /// open(2) O_WRONLY + write(2). Cgroup files take one value per write.
    public static func write(_ path: String, _ value: String) throws(CgroupError) {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        if fd < 0 { throw CgroupError(.io, "open", path: path, errno: errno) }
        defer { close(fd) }
        var bytes = Array(value.utf8)
        if bytes.isEmpty { bytes = [0x0a] }
        while true {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n >= 0 { return }
            if errno == EINTR { continue }
            throw CgroupError(.io, "write '\(value)' to", path: path, errno: errno)
        }
    }

    public static func exists(_ path: String) -> Bool {
        access(path, F_OK) == 0
    }

    public static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// mkdir(2); an existing directory is not an error when `allowExisting`.
    public static func mkdir(_ path: String, allowExisting: Bool = true) throws(CgroupError) {
        if Glibc.mkdir(path, 0o755) == 0 { return }
        if errno == EEXIST && allowExisting { return }
        throw CgroupError(.io, "mkdir", path: path, errno: errno)
    }

    /// Lists a directory's entries (without . and ..).
    public static func list(_ path: String) -> [String] {
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let ent = readdir(dir) {
            let name = withUnsafePointer(to: ent.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }
}
