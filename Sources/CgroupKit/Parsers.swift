/// Pure parsers from the text of cgroup files to typed values. Each names the
/// file(s) it understands; none of them touches the filesystem.
public enum StatParse {
    /// "flat keyed" files: `key value` per line (cpu.stat, memory.stat, memory.events,
    /// memory.oom_control, cpuacct.stat, pids.events).
    public static func flatKeyed(_ text: String) -> [String: UInt64] {
        var out: [String: UInt64] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ", omittingEmptySubsequences: true)
            guard parts.count == 2, let v = UInt64(parts[1]) else { continue }
            out[String(parts[0])] = v
        }
        return out
    }

    /// A single number (memory.current, memory.peak, pids.current, cpuacct.usage_user...).
    public static func single(_ text: String) -> UInt64? {
        UInt64(text.trimmingWhitespace())
    }

    /// A limit that may be "max" (memory.max, pids.max) → nil for no limit.
    /// v1 reports "no limit" as a huge number (PAGE_COUNTER_MAX pages); values at or
    /// above `unlimitedFloor` are treated as no limit too.
    public static func limit(_ text: String, unlimitedFloor: UInt64 = 1 << 62) -> Limit? {
        let t = text.trimmingWhitespace()
        if t == "max" { return .unlimited }
        guard let v = UInt64(t) else { return nil }
        return v >= unlimitedFloor ? .unlimited : .bytes(v)
    }

    public enum Limit: Sendable, Equatable {
        case unlimited
        case bytes(UInt64)
        public var value: UInt64? {
            if case .bytes(let v) = self { return v }
            return nil
        }
    }

    /// v2 cpu.stat (microseconds).
    public static func cpuStatV2(_ text: String) -> CPUStats {
        let kv = flatKeyed(text)
        return CPUStats(usageUsec: kv["usage_usec"], userUsec: kv["user_usec"], systemUsec: kv["system_usec"],
                        throttledUsec: kv["throttled_usec"])
    }

    /// v1 cpuacct.usage, cpuacct.usage_user, cpuacct.usage_sys (nanoseconds each).
    public static func cpuacctV1(usage: String?, user: String?, sys: String?) -> CPUStats {
        func us(_ t: String?) -> UInt64? { t.flatMap(single).map { $0 / 1000 } }
        return CPUStats(usageUsec: us(usage), userUsec: us(user), systemUsec: us(sys))
    }

    /// v2 io.stat: `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=..` per device; summed.
    public static func ioStatV2(_ text: String) -> IOStats {
        var r: UInt64 = 0, w: UInt64 = 0, ro: UInt64 = 0, wo: UInt64 = 0
        for line in text.split(separator: "\n") {
            for field in line.split(separator: " ").dropFirst() {
                let kv = field.split(separator: "=", maxSplits: 1)
                guard kv.count == 2, let v = UInt64(kv[1]) else { continue }
                switch kv[0] {
                case "rbytes": r &+= v
                case "wbytes": w &+= v
                case "rios": ro &+= v
                case "wios": wo &+= v
                default: break
                }
            }
        }
        return IOStats(readBytes: r, writeBytes: w, readOps: ro, writeOps: wo)
    }

    /// v1 blkio.throttle.io_service_bytes / io_serviced: `MAJ:MIN Read N` lines and a `Total N` line.
    public static func blkioV1(serviceBytes: String?, serviced: String?) -> IOStats {
        func sums(_ text: String?) -> (UInt64, UInt64)? {
            guard let text else { return nil }
            var r: UInt64 = 0, w: UInt64 = 0
            for line in text.split(separator: "\n") {
                let p = line.split(separator: " ")
                guard p.count == 3, let v = UInt64(p[2]) else { continue }
                if p[1] == "Read" { r &+= v } else if p[1] == "Write" { w &+= v }
            }
            return (r, w)
        }
        let b = sums(serviceBytes), o = sums(serviced)
        return IOStats(readBytes: b?.0, writeBytes: b?.1, readOps: o?.0, writeOps: o?.1)
    }

    /// /proc/<pid>/io: `read_bytes` and `write_bytes` (block-layer bytes caused by the task and
    /// the children it reaped).
    /// /proc/<pid>/io: block reads, bytes dirtied for storage, and of those the ones
    /// whose writeback was cancelled (the file was truncated or deleted first).
    public static func procIO(_ text: String) -> (readBytes: UInt64, writeBytes: UInt64, cancelledWriteBytes: UInt64)? {
        let kv = flatKeyed(text.replacingColonSpace())
        guard let r = kv["read_bytes"], let w = kv["write_bytes"] else { return nil }
        return (r, w, kv["cancelled_write_bytes"] ?? 0)
    }

    /// /proc/net/dev of a namespace: rx/tx summed over its interfaces but `lo`, and the
    /// bytes through `lo` (each counted once: what was received there was sent there).
    public struct NetDevCounters: Sendable, Equatable {
        public var rxBytes: UInt64 = 0
        public var txBytes: UInt64 = 0
        public var loopbackBytes: UInt64 = 0
        public var loopbackTxBytes: UInt64 = 0
        public init() {}
        /// No byte went through any interface.
        public var isQuiet: Bool { rxBytes == 0 && txBytes == 0 && loopbackBytes == 0 && loopbackTxBytes == 0 }
    }

    public static func netDev(_ text: String) -> NetDevCounters? {
        var c = NetDevCounters()
        var seen = false
        for line in text.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = line[..<colon].split(separator: " ").last.map(String.init) ?? ""
            let fields = line[line.index(after: colon)...].split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 16, let r = UInt64(fields[0]), let t = UInt64(fields[8]) else { continue }
            if name == "lo" {
                c.loopbackBytes &+= r
                c.loopbackTxBytes &+= t
            } else {
                c.rxBytes &+= r
                c.txBytes &+= t
            }
            seen = true
        }
        return seen ? c : nil
    }
}

extension String {
    func trimmingWhitespace() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\n" || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\n" || l == "\t" { s = s.dropLast() }
        return String(s)
    }

    /// "key: value" → "key value" so that flatKeyed can read /proc/<pid>/io.
    func replacingColonSpace() -> String {
        String(self.map { $0 == ":" ? " " : $0 })
    }
}
