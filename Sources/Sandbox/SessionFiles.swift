import CSandpit
import Foundation

/// One entry of a session directory listing.
public struct SessionFileEntry: Sendable, Equatable {
    public enum Kind: String, Sendable { case file, directory, symlink, other }
    public let name: String
    /// Relative to /work.
    public let path: String
    public let kind: Kind
    public let size: Int64
    public let modified: Date
}

/// Files of a session's /work, reached from the host through the scratch's own mount.
/// Everything under /work belongs to untrusted code, so every step is one path
/// component opened with O_NOFOLLOW relative to the directory before it: a symlink
/// (anywhere in the path) or `..` is refused, and nothing outside /work is reachable
/// however the session rearranges its files meanwhile.
enum ConfinedPath {
    /// The components of `path` (relative to /work; a leading `/work/` or `/` is
    /// accepted), or an error naming what is wrong.
    static func components(_ path: String, allowEmpty: Bool) throws(SessionError) -> [String] {
        var p = Substring(path)
        if p.hasPrefix("/work/") { p = p.dropFirst(6) } else if p == "/work" { p = "" } else if p.hasPrefix("/") { p = p.dropFirst() }
        let parts = p.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        if parts.isEmpty && !allowEmpty { throw SessionError(.invalidPath, "the path names no file") }
        guard parts.count <= 64 else { throw SessionError(.invalidPath, "the path has more than 64 components") }
        for c in parts {
            if c == ".." || c == "." { throw SessionError(.invalidPath, "'.' and '..' are not allowed in a path") }
            if c.utf8.count > 255 { throw SessionError(.invalidPath, "a path component is longer than 255 bytes") }
            if c.utf8.contains(0) { throw SessionError(.invalidPath, "a path contains a NUL byte") }
        }
        return parts
    }

    /// `components` for a lookup: a path that cannot name anything under /work (`..`, a
    /// component too long) is not found rather than invalid — nothing is there to read.
    static func lookup(_ path: String, allowEmpty: Bool) throws(SessionError) -> [String] {
        do {
            return try components(path, allowEmpty: allowEmpty)
        } catch {
            throw SessionError(.notFound, "no such file under /work: \(error.what)")
        }
    }

    /// The directory `parts` under /work, opened without following any symlink;
    /// missing directories are made (owned by the sandbox user) when `create`.
    static func openDirectory(_ root: Int32, _ parts: [String], create: Bool, uid: UInt32, gid: UInt32) throws(SessionError) -> Int32 {
        var fd = openat(root, "work", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw SessionError(.io, "open /work: \(String(cString: strerror(errno)))") }
        for (i, c) in parts.enumerated() {
            var next = openat(fd, c, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if next < 0 && errno == ENOENT && create {
                if mkdirat(fd, c, 0o755) == 0 || errno == EEXIST {
                    _ = fchownat(fd, c, uid, gid, AT_SYMLINK_NOFOLLOW)
                    next = openat(fd, c, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                }
            }
            let e = errno
            close(fd)
            guard next >= 0 else {
                let at = parts[0...i].joined(separator: "/")
                switch e {
                case ENOENT: throw SessionError(.notFound, "no such directory: \(at)")
                case ELOOP, ENOTDIR: throw SessionError(.invalidPath, "\(at) is a symlink or not a directory")
                case ENOSPC, EDQUOT: throw SessionError(.noSpace, "the session's scratch is full")
                default: throw SessionError(.io, "open \(at): \(String(cString: strerror(e)))")
                }
            }
            fd = next
        }
        return fd
    }
}

extension ExecutionRequest {
    /// A request file's path, checked as session file paths are (relative to /work, no
    /// `.` or `..`); the path relative to /work, or why it is refused.
    public static func checkFilePath(_ path: String) throws(SessionError) -> String {
        try ConfinedPath.components(path, allowEmpty: false).joined(separator: "/")
    }
}

extension Session {
    /// Writes `bytes` to `path` under /work (made with its parent directories, owned by
    /// the sandbox user; an existing file is replaced). Returns the path relative to /work.
    @discardableResult
    public func writeFile(_ path: String, _ bytes: [UInt8]) throws(SessionError) -> String {
        try scratch.writeFile(path, bytes, uid: sandbox.settings.uid, gid: sandbox.settings.gid)
    }

    /// The bytes of the regular file `path` under /work; `.tooLarge` past `maxBytes`.
    public func readFile(_ path: String, maxBytes: Int) throws(SessionError) -> [UInt8] {
        try scratch.readFile(path, maxBytes: maxBytes)
    }

    /// The entries of directory `dir` under /work (sorted by name, at most `limit`).
    public func listFiles(_ dir: String, limit: Int = 10_000) throws(SessionError) -> [SessionFileEntry] {
        try scratch.listFiles(dir, limit: limit)
    }
}

extension Scratch {
    @discardableResult
    func writeFile(_ path: String, _ bytes: [UInt8], uid: UInt32, gid: UInt32) throws(SessionError) -> String {
        let parts = try ConfinedPath.components(path, allowEmpty: false)
        let dir = try ConfinedPath.openDirectory(rootFD, Array(parts.dropLast()), create: true, uid: uid, gid: gid)
        defer { Glibc.close(dir) }
        let name = parts.last!
        let fd = openat(dir, name, O_WRONLY | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            switch errno {
            case ELOOP: throw SessionError(.invalidPath, "\(path) is a symlink")
            case EISDIR: throw SessionError(.notAFile, "\(path) is a directory")
            case ENOSPC, EDQUOT: throw SessionError(.noSpace, "the session's scratch is full")
            default: throw SessionError(.io, "open \(path): \(String(cString: strerror(errno)))")
            }
        }
        defer { Glibc.close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { throw SessionError(.notAFile, "\(path) is not a regular file") }
        guard ftruncate(fd, 0) == 0 else { throw SessionError(.io, "truncate \(path): \(String(cString: strerror(errno)))") }
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + off, bytes.count - off) }
            if n < 0 {
                if errno == EINTR { continue }
                let e = errno
                _ = ftruncate(fd, 0)
                if e == ENOSPC || e == EDQUOT || e == EFBIG { throw SessionError(.noSpace, "the session's scratch is full") }
                throw SessionError(.io, "write \(path): \(String(cString: strerror(e)))")
            }
            off += n
        }
        _ = fchown(fd, uid, gid)
        return parts.joined(separator: "/")
    }

    func readFile(_ path: String, maxBytes: Int) throws(SessionError) -> [UInt8] {
        let parts = try ConfinedPath.lookup(path, allowEmpty: false)
        let dir = try ConfinedPath.openDirectory(rootFD, Array(parts.dropLast()), create: false, uid: 0, gid: 0)
        defer { Glibc.close(dir) }
        let fd = openat(dir, parts.last!, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else {
            switch errno {
            case ENOENT: throw SessionError(.notFound, "no such file: \(path)")
            case ELOOP: throw SessionError(.invalidPath, "\(path) is a symlink")
            default: throw SessionError(.io, "open \(path): \(String(cString: strerror(errno)))")
            }
        }
        defer { Glibc.close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { throw SessionError(.notAFile, "\(path) is not a regular file") }
        guard st.st_size <= maxBytes else { throw SessionError(.tooLarge, "\(path) has \(st.st_size) bytes; at most \(maxBytes) are returned") }
        var out = [UInt8](repeating: 0, count: Int(st.st_size))
        var got = 0
        while got < out.count {
            let n = out.withUnsafeMutableBytes { read(fd, $0.baseAddress! + got, $0.count - got) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            got += n
        }
        return Array(out[0..<got])
    }

    func listFiles(_ dir: String, limit: Int = 10_000) throws(SessionError) -> [SessionFileEntry] {
        let parts = try ConfinedPath.lookup(dir, allowEmpty: true)
        let fd = try ConfinedPath.openDirectory(rootFD, parts, create: false, uid: 0, gid: 0)
        guard let d = fdopendir(fd) else {
            Glibc.close(fd)
            throw SessionError(.io, "opendir \(dir): \(String(cString: strerror(errno)))")
        }
        defer { closedir(d) }
        let prefix = parts.isEmpty ? "" : parts.joined(separator: "/") + "/"
        var out: [SessionFileEntry] = []
        while out.count < limit, let ent = readdir(d) {
            let name = withUnsafeBytes(of: ent.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            if name == "." || name == ".." { continue }
            var st = stat()
            guard fstatat(dirfd(d), name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { continue }
            let kind: SessionFileEntry.Kind
            switch st.st_mode & S_IFMT {
            case S_IFREG: kind = .file
            case S_IFDIR: kind = .directory
            case S_IFLNK: kind = .symlink
            default: kind = .other
            }
            let mtime = Date(timeIntervalSince1970: Double(st.st_mtim.tv_sec) + Double(st.st_mtim.tv_nsec) / 1e9)
            out.append(SessionFileEntry(name: name, path: prefix + name, kind: kind, size: Int64(st.st_size), modified: mtime))
        }
        return out.sorted { $0.name < $1.name }
    }

    /// Regular files under /work whose path (relative to /work) matches one of `globs`
    /// (fnmatch, `*` also crossing `/`), walked without following symlinks: at most
    /// `maxFiles` files and `maxBytes` bytes in all, the rest left out (`truncated`).
    func collect(_ globs: [String], maxFiles: Int, maxBytes: Int) -> (files: [(String, [UInt8])], truncated: Bool) {
        var out: [(String, [UInt8])] = []
        var total = 0
        var truncated = false
        var dirs: [(String, Int)] = [("", 0)]
        var seen = 0
        while let (dir, depth) = dirs.popLast() {
            guard let entries = try? listFiles(dir, limit: 10_000) else { continue }
            for e in entries {
                seen += 1
                if seen > 100_000 { return (out, true) }
                if e.kind == .directory && depth < 32 { dirs.append((e.path, depth + 1)); continue }
                guard e.kind == .file, e.path != SessionAgent.resultsFile, globs.contains(where: { fnmatch($0, e.path, 0) == 0 }) else { continue }
                guard out.count < maxFiles, total + Int(e.size) <= maxBytes, let bytes = try? readFile(e.path, maxBytes: maxBytes - total) else {
                    truncated = true
                    continue
                }
                total += bytes.count
                out.append((e.path, bytes))
            }
        }
        return (out.sorted { $0.0 < $1.0 }, truncated)
    }
}
