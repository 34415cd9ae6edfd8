/// How the host mounts cgroups.
public enum CgroupMode: String, Sendable, Codable {
    /// Only a cgroup2 hierarchy (all controllers live there).
    case unified
    /// v1 controller hierarchies plus a cgroup2 mount that holds few or no controllers.
    case hybrid
    /// v1 hierarchies only.
    case legacy
}

/// One line of /proc/self/mountinfo (see proc(5)).
public struct MountInfoEntry: Sendable, Equatable {
    public var mountID: Int
    public var parentID: Int
    public var root: String
    public var mountPoint: String
    public var mountOptions: String
    public var fsType: String
    public var source: String
    public var superOptions: String
}

/// One line of /proc/self/cgroup: `hierarchy-ID:controller-list:path`.
public struct ProcCgroupEntry: Sendable, Equatable {
    public var hierarchyID: Int
    public var controllers: [String]
    public var path: String
}

public enum CgroupParse {
    /// Undoes the octal escapes (\040 for space, \011, \012, \134) the kernel puts in mountinfo paths.
    static func unescapeOctal(_ s: Substring) -> String {
        guard s.contains("\\") else { return String(s) }
        let b = Array(s.utf8)
        var out = [UInt8]()
        var i = 0
        while i < b.count {
            if b[i] == UInt8(ascii: "\\"), i + 3 < b.count,
               let v = UInt8(String(decoding: b[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                out.append(v)
                i += 4
            } else {
                out.append(b[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Parses /proc/self/mountinfo. Malformed lines are skipped.
    public static func mountInfo(_ text: String) -> [MountInfoEntry] {
        var result: [MountInfoEntry] = []
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 10, let sep = fields.firstIndex(of: "-"), sep >= 6, sep + 2 < fields.count,
                  let id = Int(fields[0]), let parent = Int(fields[1]) else { continue }
            result.append(MountInfoEntry(
                mountID: id, parentID: parent,
                root: unescapeOctal(fields[3]),
                mountPoint: unescapeOctal(fields[4]),
                mountOptions: String(fields[5]),
                fsType: String(fields[sep + 1]),
                source: unescapeOctal(fields[sep + 2]),
                superOptions: sep + 3 < fields.count ? String(fields[sep + 3]) : ""))
        }
        return result
    }

    /// Parses /proc/self/cgroup.
    public static func procCgroup(_ text: String) -> [ProcCgroupEntry] {
        var result: [ProcCgroupEntry] = []
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3, let id = Int(parts[0]) else { continue }
            let controllers = parts[1].isEmpty ? [] : parts[1].split(separator: ",").map(String.init)
            result.append(ProcCgroupEntry(hierarchyID: id, controllers: controllers, path: String(parts[2])))
        }
        return result
    }
}

/// A v1 hierarchy: where it is mounted, its controllers and the caller's cgroup in it.
public struct V1Hierarchy: Sendable, Equatable {
    public var controllers: [String]
    public var mountPoint: String
    /// Absolute directory of the caller's cgroup in this hierarchy.
    public var ownDirectory: String
}

/// Everything sandpit needs to know about the host's cgroups, derived in one place.
public struct CgroupHost: Sendable, Equatable {
    public var mode: CgroupMode
    /// cgroup2 mount point, if any.
    public var v2MountPoint: String?
    /// The caller's cgroup path as /proc/self/cgroup shows it for cgroup2 ("0::/...").
    public var v2OwnPath: String?
    /// Absolute directory of the caller's cgroup2 group.
    public var v2OwnDirectory: String?
    /// Controllers available in the cgroup2 hierarchy at the caller's group.
    public var v2Controllers: [String]
    public var v1Hierarchies: [V1Hierarchy]

    /// The v1 hierarchy that carries `controller`, if mounted.
    public func v1(_ controller: String) -> V1Hierarchy? {
        v1Hierarchies.first { $0.controllers.contains(controller) }
    }

    /// Joins a mount point with a cgroup path relative to the mount's root.
    static func directory(mountPoint: String, mountRoot: String, path: String) -> String {
        var rel = path
        if mountRoot != "/" && (rel == mountRoot || rel.hasPrefix(mountRoot + "/")) {
            rel = String(rel.dropFirst(mountRoot.count))
        }
        if rel.isEmpty || rel == "/" { return mountPoint }
        return mountPoint + (rel.hasPrefix("/") ? rel : "/" + rel)
    }

    /// Pure detection from the text of /proc/self/mountinfo and /proc/self/cgroup.
    /// `readControllers` returns the content of a cgroup.controllers file (injected for tests).
    public static func detect(mountInfo: String, procCgroup: String,
                              readControllers: (String) -> String? = { SysFile.read($0) }) -> CgroupHost {
        let mounts = CgroupParse.mountInfo(mountInfo)
        let cgroups = CgroupParse.procCgroup(procCgroup)

        var v2Mount: MountInfoEntry?
        var v1: [V1Hierarchy] = []
        for m in mounts {
            if m.fsType == "cgroup2" {
                if v2Mount == nil { v2Mount = m }
            } else if m.fsType == "cgroup" {
                let opts = m.superOptions.split(separator: ",").map(String.init)
                let known = ["cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "blkio",
                             "perf_event", "net_prio", "hugetlb", "pids", "rdma", "misc"]
                let ctrls = opts.filter { known.contains($0) }
                let named = opts.first { $0.hasPrefix("name=") }
                guard !ctrls.isEmpty || named != nil else { continue }
                let key = ctrls.isEmpty ? [named!] : ctrls
                if v1.contains(where: { $0.controllers == key }) { continue }
                guard let entry = cgroups.first(where: { Set($0.controllers) == Set(key) }) else { continue }
                v1.append(V1Hierarchy(controllers: key, mountPoint: m.mountPoint,
                                      ownDirectory: directory(mountPoint: m.mountPoint, mountRoot: m.root,
                                                              path: entry.path)))
            }
        }
        let resourceV1 = v1.filter { !$0.controllers.contains(where: { $0.hasPrefix("name=") }) }

        var host = CgroupHost(mode: .legacy, v2MountPoint: nil, v2OwnPath: nil, v2OwnDirectory: nil,
                              v2Controllers: [], v1Hierarchies: resourceV1)
        if let m = v2Mount, let entry = cgroups.first(where: { $0.hierarchyID == 0 }) {
            host.v2MountPoint = m.mountPoint
            host.v2OwnPath = entry.path
            let dir = directory(mountPoint: m.mountPoint, mountRoot: m.root, path: entry.path)
            host.v2OwnDirectory = dir
            host.v2Controllers = (readControllers(dir + "/cgroup.controllers")
                ?? readControllers(m.mountPoint + "/cgroup.controllers") ?? "")
                .split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init)
        }
        if resourceV1.isEmpty {
            host.mode = host.v2MountPoint != nil ? .unified : .legacy
        } else {
            host.mode = host.v2MountPoint != nil ? .hybrid : .legacy
        }
        return host
    }

    /// Detection on the running system.
    public static func current() -> CgroupHost {
        detect(mountInfo: SysFile.read("/proc/self/mountinfo") ?? "",
               procCgroup: SysFile.read("/proc/self/cgroup") ?? "")
    }
}
