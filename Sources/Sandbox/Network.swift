import CSandpit
import CgroupKit
import Dispatch
import Foundation
import Logging
import Synchronization

/// A run's way out: a veth pair between the host and the run's network namespace, a
/// /30 from the operator's range, NAT through the host, and the host's filter (a
/// chain of nftables rules per run in the table `inet sandpit`) that lets through only
/// what the run's policy allows. Made before the launch, read and removed before the
/// result is returned.
///
/// The table, shared by every sandpit process on the host:
///
///     forward (filter): from a run's veth, jump to its egress chain (o<slot>); to one,
///                       to its ingress chain (i<slot>); any other veth of ours: drop
///     input   (filter): from a run's veth, its egress chain (the host's own addresses
///                       are refused there unless a policy names one)
///     postrouting (nat): from a run's veth out of the host: masquerade
///
/// Each flow a run opens carries the run's own connection mark; its later packets and
/// the replies pass only with that mark, so a connection-tracking entry left by an
/// earlier run on the same address is worth nothing to the next one (and the run's
/// entries are flushed at the end).
public final class NetworkAttachment: @unchecked Sendable {
    public static let table = "sandpit"
    /// Host-side names: "spv" + slot number.
    public static let linkPrefix = "spv"

    let slot: Int
    let lockFD: Int32
    let hostName: String
    let net: IPv4Net
    var gateway: UInt32 { net.address + 1 }
    var address: UInt32 { net.address + 2 }
    let mark: UInt32
    let policy: NetworkPolicy
    /// Every run's addresses (`--network-range`): never reachable from a run.
    let range: IPv4Net
    /// The run's resolver (set once its socket is bound).
    private(set) var dns: DNSResponder?
    private var detached = false

    private init(slot: Int, lockFD: Int32, net: IPv4Net, mark: UInt32, policy: NetworkPolicy, range: IPv4Net) {
        self.range = range
        self.slot = slot
        self.lockFD = lockFD
        self.hostName = Self.linkPrefix + String(slot)
        self.net = net
        self.mark = mark
        self.policy = policy
    }

    /// Where slots are locked (host-wide: every sandpit process shares the names).
    static let slotDirectory = "/run/sandpit/net"

    static func fail(_ what: String, _ rc: Int32 = 0) -> SandboxError {
        SandboxError(.setup, "network: \(what)", errno: rc < 0 ? -rc : rc)
    }

    /// Gives the namespace `netns` its link out and the host's filter for `policy`
    /// (resolved). Throws when any step fails, with nothing of it left behind.
    static func attach(netns: Int32, policy: NetworkPolicy, settings: NetworkSettings, logger: Logger) throws(SandboxError) -> NetworkAttachment {
        guard sp_nft_available() != 0 else {
            throw fail("libnftables is not installed (Debian/Ubuntu: apt-get install nftables)")
        }
        let t0 = monotonicNanos()
        try ensureTable(logger: logger)
        let (slot, lock) = try takeSlot(range: settings.range, logger: logger)
        let t1 = monotonicNanos()
        let base = settings.range.address + UInt32(slot) * 4
        let mark = 0x5A00_0000 | UInt32.random(in: 1...0xFF_FFFF)
        let a = NetworkAttachment(slot: slot, lockFD: lock, net: IPv4Net(address: base, prefix: 30), mark: mark,
                                  policy: policy, range: settings.range)
        do throws(SandboxError) {
            try a.installRules()
            let t2 = monotonicNanos()
            var rc = sp_veth_create(a.hostName, "eth0", netns)
            let t3 = monotonicNanos()
            if rc < 0 { throw fail("veth \(a.hostName)", rc) }
            rc = sp_net_host_side(a.hostName, a.gateway.bigEndian, 30)
            if rc < 0 { throw fail("host side of \(a.hostName)", rc) }
            var dnsFD: Int32 = -1
            rc = sp_net_inside(netns, "eth0", a.address.bigEndian, 30, a.gateway.bigEndian, &dnsFD)
            if rc < 0 { throw fail("inside the run's namespace", rc) }
            do throws(SandboxError) { try a.installRunRules(netns: netns) } catch { close(dnsFD); throw error }
            a.dns = DNSResponder(fd: dnsFD, names: policy.names)
            if logger.logLevel <= .debug {
                logger.debug("network \(a.hostName) attach (ms): table+slot \(millis(t0, t1)) rules \(millis(t1, t2)) veth \(millis(t2, t3)) addresses+resolver \(millis(t3, monotonicNanos()))")
            }
            return a
        } catch {
            a.removeHostState(logger: logger)
            close(lock)
            a.detached = true
            throw error
        }
    }

    deinit {
        if !detached { detach(logger: nil) }
    }

    /// Nothing of the run left on the host: its rules and counters (read `breakdown`
    /// first), its link, its tracked connections, its resolver; the slot is free again.
    public func detach(logger: Logger?) {
        guard !detached else { return }
        detached = true
        dns?.stop()
        removeHostState(logger: logger)
        close(lockFD)
    }

    private func removeHostState(logger: Logger?) {
        // The link's deletion and the rules' each wait for an RCU grace period in the
        // kernel (10-20 ms): side by side, on two threads.
        let t0 = monotonicNanos()
        let name = hostName
        let linkGone = DispatchSemaphore(value: 0)
        let linkDone = Mutex<Int64>(0)
        DispatchQueue.global().async {
            let rc = sp_link_delete(name)
            if rc < 0 && rc != -ENODEV { logger?.warning("network: deleting \(name): \(String(cString: strerror(-rc)))") }
            linkDone.withLock { $0 = monotonicNanos() }
            linkGone.signal()
        }
        Self.removeRules(slot: slot, logger: logger)
        let t2 = monotonicNanos()
        linkGone.wait()
        let t1 = linkDone.withLock { $0 }
        let f = sp_conntrack_flush_mark(mark)
        if f < 0 && f != -ENOENT { logger?.debug("network: conntrack flush for \(hostName): \(String(cString: strerror(-f)))") }
        if let logger, logger.logLevel <= .debug {
            logger.debug("network \(hostName) detach (ms): link \(millis(t0, t1)) rules \(millis(t0, t2)) (side by side), conntrack \(millis(max(t1, t2), monotonicNanos()))")
        }
    }

    /// What `doctor` reports: libnftables loads; the kernel answers nftables.
    public static func hostSupport() -> (libnftables: Bool, nfTables: Bool) {
        let lib = sp_nft_available() != 0
        return (lib, lib && nft("list tables\n").ok)
    }

    // MARK: the filter

    /// Runs nft commands on the host, or inside the namespace `netns`.
    static func nft(_ commands: String, in netns: Int32? = nil) -> (ok: Bool, output: String, error: String) {
        var out: UnsafeMutablePointer<CChar>?, err: UnsafeMutablePointer<CChar>?
        let rc = netns.map { sp_nft_run_in($0, commands, &out, &err) } ?? sp_nft_run(commands, 0, &out, &err)
        defer { free(out); free(err) }
        return (rc == 0, out.map { String(cString: $0) } ?? "", err.map { String(cString: $0) } ?? "")
    }

    /// Makes the shared table when the host has none (under a lock: two processes
    /// starting together must not both add its rules). Looked for at every attach: a
    /// firewall reload may have flushed it since. When IPv4 forwarding was off, sandpit
    /// turns it on for its runs and keeps it off for everything else: the table's
    /// forward chain then drops what neither comes from nor goes to a run.
    static func ensureTable(logger: Logger) throws(SandboxError) {
        try makeSlotDirectory()
        let lock = open(slotDirectory + "/.table.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lock >= 0 else { throw fail("\(slotDirectory)/.table.lock", errno) }
        defer { close(lock) }
        flock(lock, LOCK_EX)
        if !nft("list tables\n").output.split(separator: "\n").contains("table inet \(table)") {
            // (a marker remembers it across a flushed table and restarts: the forwarding
            // sandpit turned on is still not the host's)
            let marker = slotDirectory + "/forwarding-was-off"
            let forwardingWasOff = (SysFile.read("/proc/sys/net/ipv4/ip_forward") ?? "0").hasPrefix("0") || access(marker, F_OK) == 0
            if forwardingWasOff { close(open(marker, O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)) }
            var c = """
            add table inet \(table)
            add map inet \(table) egress { type ifname : verdict; }
            add map inet \(table) ingress { type ifname : verdict; }
            add chain inet \(table) forward { type filter hook forward priority filter; policy accept; }
            add rule inet \(table) forward iifname "\(linkPrefix)*" iifname vmap @egress
            add rule inet \(table) forward iifname "\(linkPrefix)*" drop
            add rule inet \(table) forward oifname "\(linkPrefix)*" oifname vmap @ingress
            add rule inet \(table) forward oifname "\(linkPrefix)*" drop

            """
            if forwardingWasOff {
                c += "add rule inet \(table) forward drop comment \"forwarding was off before sandpit: runs only\"\n"
            }
            c += """
            add chain inet \(table) input { type filter hook input priority filter; policy accept; }
            add rule inet \(table) input iifname "\(linkPrefix)*" iifname vmap @egress
            add rule inet \(table) input iifname "\(linkPrefix)*" drop
            add chain inet \(table) postrouting { type nat hook postrouting priority srcnat; policy accept; }
            add rule inet \(table) postrouting iifname "\(linkPrefix)*" oifname != "\(linkPrefix)*" masquerade

            """
            let r = nft(c)
            guard r.ok else { throw fail("creating the nftables table: \(r.error.prefix(300))") }
            if forwardingWasOff {
                logger.notice("network: IPv4 forwarding turned on for runs (table inet \(table) keeps other forwarding dropped)")
            }
        }
        guard writeText("/proc/sys/net/ipv4/ip_forward", "1") else { throw fail("turning IPv4 forwarding on", errno) }
    }

    static func writeText(_ path: String, _ text: String) -> Bool {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return write(fd, text, text.utf8.count) == text.utf8.count
    }

    static func makeSlotDirectory() throws(SandboxError) {
        for d in ["/run/sandpit", slotDirectory] where mkdir(d, 0o700) != 0 && errno != EEXIST {
            throw fail("mkdir \(d)", errno)
        }
    }

    /// Ranges that no policy reaches except by naming an address inside them.
    static let guarded = ["0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3"].map { IPv4Net($0)! }

    /// nft text of a rule's match: destination (or source, for the reply direction)
    /// addresses, protocol and ports.
    static func match(_ rule: NetworkRule, reply: Bool) -> [String] {
        let nets = rule.nets.map(\.description)
        let addr = reply ? "ip saddr" : "ip daddr"
        let set = nets.count == 1 ? nets[0] : "{ " + nets.joined(separator: ", ") + " }"
        let port = rule.ports.map { p in
            (reply ? "sport " : "dport ") + (p.lowerBound == p.upperBound ? "\(p.lowerBound)" : "\(p.lowerBound)-\(p.upperBound)")
        }
        switch (rule.proto, port) {
        case (.any, nil): return ["\(addr) \(set)"]
        case (.any, let p?): return ["\(addr) \(set) tcp \(p)", "\(addr) \(set) udp \(p)"]
        case (let proto, nil): return ["\(addr) \(set) meta l4proto \(proto.rawValue)"]
        case (let proto, let p?): return ["\(addr) \(set) \(proto.rawValue) \(p)"]
        }
    }

    /// The host's own IPv4 addresses (outside the guarded ranges and the runs' range,
    /// which are refused anyway).
    func hostAddresses() -> [IPv4Net] {
        var out = Set<IPv4Net>()
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return [] }
        defer { freeifaddrs(list) }
        var p = list
        while let a = p {
            if let sa = a.pointee.ifa_addr, sa.pointee.sa_family == UInt16(AF_INET) {
                let v = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt32(bigEndian: $0.pointee.sin_addr.s_addr) }
                let n = IPv4Net(address: v, prefix: 32)
                if !Self.guarded.contains(where: { $0.contains(n) }) && !range.contains(n) { out.insert(n) }
            }
            p = a.pointee.ifa_next
        }
        return out.sorted { $0.address < $1.address }
    }

    /// The allow entries that name addresses inside what is refused by default (the
    /// guarded ranges, the host's own addresses), which must come before that
    /// refusal, and the others.
    func split(hostAddresses: [IPv4Net]? = nil) -> (guarded: [NetworkRule], plain: [NetworkRule]) {
        let host = hostAddresses ?? self.hostAddresses()
        let inside = Self.guarded + host
        let g = policy.allow.filter { a in a.nets.allSatisfy { n in inside.contains { $0.contains(n) } } }
        return (g, policy.allow.filter { !g.contains($0) })
    }

    /// The same policy inside the run's own namespace (its output and input hooks), so
    /// that it holds even when the host's ruleset is flushed (a firewall reload): then
    /// the run loses its way out instead of its limits. The program cannot touch it: it
    /// has no CAP_NET_ADMIN, and seccomp refuses netfilter netlink sockets. Its counters
    /// are where refusals are counted (it refuses first).
    func installRunRules(netns: Int32) throws(SandboxError) {
        let t = "inet \(Self.table)"
        let host = hostAddresses()
        let (guardedRules, plainRules) = split(hostAddresses: host)
        var c = ["add table \(t)",
                 "add chain \(t) output { type filter hook output priority filter; policy drop; }",
                 "add chain \(t) input { type filter hook input priority filter; policy drop; }",
                 "add chain \(t) refuse"]
        func rule(_ chain: String, _ text: String) { c.append("add rule \(t) \(chain) \(text)") }
        rule("output", "oifname \"lo\" accept")
        rule("output", "meta nfproto != ipv4 counter drop comment \"ipv6\"")
        rule("output", "ct state established,related accept")
        rule("output", "ct state != new counter drop comment \"invalid\"")
        for a in guardedRules { for m in Self.match(a, reply: false) { rule("output", "\(m) accept") } }
        let refused = (Self.guarded + [range] + host).map(\.description).joined(separator: ", ")
        rule("output", "ip daddr { \(refused) } goto refuse")
        for a in plainRules { for m in Self.match(a, reply: false) { rule("output", "\(m) accept") } }
        rule("output", "goto refuse")
        rule("refuse", "counter comment \"refused\"")
        rule("refuse", "meta l4proto tcp reject with tcp reset")
        rule("refuse", "reject with icmpx admin-prohibited")
        rule("input", "iifname \"lo\" accept")
        rule("input", "ct state established,related accept")
        rule("input", "counter drop comment \"unsolicited\"")
        let res = Self.nft(c.joined(separator: "\n") + "\n", in: netns)
        guard res.ok else { throw Self.fail("nftables rules inside the run's namespace: \(res.error.prefix(400))") }
    }

    func installRules() throws(SandboxError) {
        let t = "inet \(Self.table)", n = slot
        let o = "o\(n)", oa = "oa\(n)", r = "r\(n)", i = "i\(n)", ia = "ia\(n)"
        let markHex = "0x" + String(mark, radix: 16)
        let runAddr = IPv4Net.format(address)
        var c = ["add chain \(t) \(o)", "add chain \(t) \(oa)", "add chain \(t) \(r)", "add chain \(t) \(i)", "add chain \(t) \(ia)"]
        func rule(_ chain: String, _ text: String) { c.append("add rule \(t) \(chain) \(text)") }
        // Egress: forged sources, the rate, then flows the run opened, then new flows.
        rule(o, "meta nfproto ipv6 counter drop comment \"ipv6\"")
        rule(o, "ip saddr != \(runAddr) counter drop comment \"spoofed\"")
        if let rate = policy.rate {
            let burst = max(16 << 10, min(rate / 4, 1 << 20))
            rule(o, "limit rate over \(rate) bytes/second burst \(burst) bytes counter drop comment \"rate\"")
        }
        rule(o, "ct mark \(markHex) ct state established,related goto \(oa)")
        rule(o, "ct state != new goto \(r)")
        let (guardedRules, plainRules) = split()
        for a in guardedRules { for m in Self.match(a, reply: false) { rule(o, "\(m) ct mark set \(markHex) goto \(oa)") } }
        rule(o, "fib daddr type { local, broadcast, anycast, multicast } goto \(r)")
        rule(o, "ip daddr { " + (Self.guarded + [range]).map(\.description).joined(separator: ", ") + " } goto \(r)")
        for a in plainRules { for m in Self.match(a, reply: false) { rule(o, "\(m) ct mark set \(markHex) goto \(oa)") } }
        rule(o, "goto \(r)")
        // Refused: counted once per flow attempt (each packet of a refused flow is new).
        rule(r, "counter comment \"refused\"")
        rule(r, "meta l4proto tcp reject with tcp reset")
        rule(r, "reject with icmpx admin-prohibited")
        // Accepted egress: per destination, new TCP connections, per protocol.
        for (k, a) in policy.allow.enumerated() {
            for m in Self.match(a, reply: false) { rule(oa, "\(m) counter comment \"d\(k)\"") }
        }
        rule(oa, "tcp flags & (syn | ack) == syn counter comment \"connect\"")
        for p in ["tcp", "udp", "icmp"] { rule(oa, "meta l4proto \(p) counter accept comment \"\(p)\"") }
        rule(oa, "counter accept comment \"other\"")
        // Ingress: replies to the run's own flows only.
        rule(i, "ct mark \(markHex) ct state established,related goto \(ia)")
        rule(i, "counter drop comment \"unsolicited\"")
        for (k, a) in policy.allow.enumerated() {
            for m in Self.match(a, reply: true) { rule(ia, "\(m) counter comment \"d\(k)\"") }
        }
        for p in ["tcp", "udp", "icmp"] { rule(ia, "meta l4proto \(p) counter accept comment \"\(p)\"") }
        rule(ia, "counter accept comment \"other\"")
        c.append("add element \(t) egress { \"\(hostName)\" : jump \(o) }")
        c.append("add element \(t) ingress { \"\(hostName)\" : jump \(i) }")
        let res = Self.nft(c.joined(separator: "\n") + "\n")
        guard res.ok else { throw Self.fail("nftables rules for \(hostName): \(res.error.prefix(400))") }
    }

    /// Removes a slot's map entries and chains (what exists of them).
    static func removeRules(slot n: Int, logger: Logger?) {
        let t = "inet \(table)", name = linkPrefix + String(n)
        let chains = ["o\(n)", "i\(n)", "oa\(n)", "ia\(n)", "r\(n)"]
        let elements = ["delete element \(t) egress { \"\(name)\" }", "delete element \(t) ingress { \"\(name)\" }"]
        // One transaction: the map entries (they reference the chains), then the chains,
        // flushed first (o jumps to oa and r).
        let all = elements + chains.map { "flush chain \(t) \($0)" } + chains.map { "delete chain \(t) \($0)" }
        if nft(all.joined(separator: "\n") + "\n").ok { return }
        // Something was missing (a half-made or half-swept slot): each on its own.
        for c in all { _ = nft(c + "\n") }
    }

    // MARK: slots

    /// A free slot, locked (flock: released when its holder exits, which is what makes
    /// a crashed process's slots sweepable). Starts at a random slot.
    static func takeSlot(range: IPv4Net, logger: Logger) throws(SandboxError) -> (Int, Int32) {
        try makeSlotDirectory()
        // The first and last /30 are left alone (the range's network and broadcast
        // addresses, should someone route it whole).
        let count = Int(min(range.size / 4, 1 << 20))
        guard count > 2 else { throw fail("the range \(range) is too small") }
        let start = Int.random(in: 1..<(count - 1))
        for k in 0..<(count - 2) {
            let slot = 1 + (start - 1 + k) % (count - 2)
            let fd = open(slotDirectory + "/\(linkPrefix)\(slot).lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw fail("slot lock", errno) }
            if flock(fd, LOCK_EX | LOCK_NB) != 0 { close(fd); continue }
            // Free: whatever a crashed holder left under this name goes first.
            if if_nametoindex(linkPrefix + String(slot)) != 0 || chainExists(slot) {
                logger.warning("network: slot \(slot) was left by a process that is gone; removing its link and rules")
                _ = sp_link_delete(linkPrefix + String(slot))
                removeRules(slot: slot, logger: logger)
            }
            return (slot, fd)
        }
        throw fail("every address of \(range) is in use")
    }

    static func chainExists(_ slot: Int) -> Bool { nft("list chain inet \(table) o\(slot)\n").ok }

    /// Removes the links and rules of slots no live process holds (after a crash).
    /// Returns the links' names.
    @discardableResult
    public static func sweep(logger: Logger) -> [String] {
        var slots = Set<Int>()
        for name in (try? FileManager.default.contentsOfDirectory(atPath: "/sys/class/net")) ?? []
        where name.hasPrefix(linkPrefix) {
            if let n = Int(name.dropFirst(linkPrefix.count)) { slots.insert(n) }
        }
        if sp_nft_available() != 0 {
            let listing = nft("list table inet \(table)\n").output
            for line in listing.split(separator: "\n") {
                let words = line.split(separator: " ")
                if words.count >= 2, words[0].hasSuffix("chain"), words[1].hasPrefix("o"), let n = Int(words[1].dropFirst()) {
                    slots.insert(n)
                }
            }
        }
        var swept: [String] = []
        for slot in slots.sorted() {
            let fd = open(slotDirectory + "/\(linkPrefix)\(slot).lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            guard flock(fd, LOCK_EX | LOCK_NB) == 0 else { continue }  // a live run's
            _ = sp_link_delete(linkPrefix + String(slot))
            if sp_nft_available() != 0 { removeRules(slot: slot, logger: logger) }
            swept.append(linkPrefix + String(slot))
        }
        if !swept.isEmpty { logger.warning("network: swept \(swept.count) link(s) and rule sets of gone processes: \(swept.joined(separator: ", "))") }
        return swept
    }

    // MARK: the breakdown

    /// The run's counters: per protocol in and out, connections, refusals, DNS, and
    /// per allowed destination.
    public func breakdown(netns: Int32) -> NetworkBreakdown {
        let t = "inet \(Self.table)", n = slot
        // (one listing of the table: nft 1.0's cache, asked for several chains in one
        // buffer, fetches only the last one)
        let listing = Self.nft("list table \(t)\n").output
        let inside = Self.nft("list table \(t)\n", in: netns).output
        let mine = Set(["oa", "ia", "o", "r", "i"].map { "\($0)\(n)" } + ["output", "input", "refuse"])
        var chain = ""
        var counts: [String: (packets: Int64, bytes: Int64)] = [:]
        for line in (listing + "\n" + inside).split(separator: "\n") {
            let s = line.trimmingCharacters(in: .whitespaces)
            if s.hasPrefix("chain ") { chain = String(s.dropFirst(6).prefix { $0 != " " }); continue }
            guard mine.contains(chain), let c = s.range(of: "counter packets "), let q = s.range(of: "comment \"") else { continue }
            let nums = s[c.upperBound...].split(separator: " ")
            guard nums.count >= 3, let p = Int64(nums[0]), let b = Int64(nums[2]) else { continue }
            let tag = s[q.upperBound...].prefix { $0 != "\"" }
            let kind = chain.hasPrefix("oa") ? "out" : chain.hasPrefix("ia") ? "in"
                : ["output", "input", "refuse"].contains(chain) ? "run" : "policy"
            let key = "\(kind).\(tag)"
            let old = counts[key] ?? (0, 0)
            counts[key] = (old.packets + p, old.bytes + b)
        }
        func flow(_ proto: String) -> NetworkBreakdown.Flow {
            let i = counts["in.\(proto)"] ?? (0, 0), o = counts["out.\(proto)"] ?? (0, 0)
            return .init(bytesIn: i.bytes, bytesOut: o.bytes, packetsIn: i.packets, packetsOut: o.packets)
        }
        var b = NetworkBreakdown(address: IPv4Net.format(address), tcp: flow("tcp"), udp: flow("udp"), icmp: flow("icmp"),
                                 other: flow("other"))
        b.tcpConnections = counts["out.connect"]?.packets ?? 0
        func packets(_ keys: String...) -> Int64 { keys.reduce(0) { $0 + (counts[$1]?.packets ?? 0) } }
        // (the run's own chain refuses first; the host's counts what got past it)
        b.refused = packets("policy.refused", "run.refused")
        b.unsolicitedDropped = packets("policy.unsolicited", "run.unsolicited")
        b.spoofedDropped = packets("policy.spoofed", "policy.ipv6", "run.ipv6")
        b.rateDropped = counts["policy.rate"].map { .init(packets: $0.packets, bytes: $0.bytes) }
        b.dnsQueries = dns?.queries ?? 0
        b.destinations = policy.allow.enumerated().map { k, a in
            let i = counts["in.d\(k)"] ?? (0, 0), o = counts["out.d\(k)"] ?? (0, 0)
            return .init(allow: a.text, addresses: a.nets.map(\.description),
                         flow: .init(bytesIn: i.bytes, bytesOut: o.bytes, packetsIn: i.packets, packetsOut: o.packets))
        }
        return b
    }
}

/// The `network` field of a result: what went through the run's link, as the host's
/// filter counted it (IP packets, headers included).
public struct NetworkBreakdown: Sendable, Equatable {
    public struct Flow: Sendable, Equatable {
        public var bytesIn, bytesOut, packetsIn, packetsOut: Int64
        var json: JSONValue {
            .object(["bytes_in": .number(Double(bytesIn)), "bytes_out": .number(Double(bytesOut)),
                     "packets_in": .number(Double(packetsIn)), "packets_out": .number(Double(packetsOut))])
        }
    }
    public struct Counted: Sendable, Equatable {
        public var packets, bytes: Int64
    }
    public struct Destination: Sendable, Equatable {
        public var allow: String
        public var addresses: [String]
        public var flow: Flow
    }
    public var address: String
    public var tcp, udp, icmp, other: Flow
    public var tcpConnections: Int64 = 0
    public var refused: Int64 = 0
    public var unsolicitedDropped: Int64 = 0
    public var spoofedDropped: Int64 = 0
    public var rateDropped: Counted?
    public var dnsQueries: Int64 = 0
    public var destinations: [Destination] = []

    public var json: JSONValue {
        let protocols: JSONValue = .object(["tcp": tcp.json, "udp": udp.json, "icmp": icmp.json, "other": other.json])
        return .object([
            "address": .string(address),
            "protocols": protocols,
            "tcp_connections": .number(Double(tcpConnections)),
            "refused": .number(Double(refused)),
            "unsolicited_dropped": .number(Double(unsolicitedDropped)),
            "spoofed_dropped": .number(Double(spoofedDropped)),
            "rate_dropped": rateDropped.map { .object(["packets": .number(Double($0.packets)), "bytes": .number(Double($0.bytes))]) } ?? .null,
            "dns_queries": .number(Double(dnsQueries)),
            "destinations": .array(destinations.map {
                .object(["allow": .string($0.allow), "addresses": .array($0.addresses.map(JSONValue.string)),
                         "bytes_in": .number(Double($0.flow.bytesIn)), "bytes_out": .number(Double($0.flow.bytesOut)),
                         "packets_in": .number(Double($0.flow.packetsIn)), "packets_out": .number(Double($0.flow.packetsOut))])
            }),
        ])
    }
}
