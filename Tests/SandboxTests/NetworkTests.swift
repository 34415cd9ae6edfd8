import CgroupKit
import Foundation
import Testing
@testable import Sandbox

// Runs with network, against test hosts on this machine: network namespaces the
// tests make, each joined to the host by a veth pair, each running a small server.
// No packet goes anywhere but these namespaces and loopback.

/// A test host: a namespace `sptest-<pid>-<tag>` at 10.219.<k>.2 (the host's end .1),
/// running `server.py`: HTTP on 8080 (a payload of `payloadBytes`) and 8081, a UDP
/// sink on 9000 whose byte count HTTP on 8082 reports.
final class TestHost: @unchecked Sendable {
    let name: String, link: String, address: String, hostAddress: String
    let server: Process
    static let payloadBytes = 300_000

    static let script = #"""
    import http.server, socket, socketserver, sys, threading
    payload = b"x" * int(sys.argv[1])
    received = [0]
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = payload if self.server.server_address[1] == 8080 else (
                str(received[0]).encode() if self.server.server_address[1] == 8082 else b"other port")
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a): pass
    class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True
    for port in (8080, 8081, 8082):
        threading.Thread(target=S(("0.0.0.0", port), H).serve_forever, daemon=True).start()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", 9000))
    print("ready", flush=True)
    while True:
        data, _ = u.recvfrom(65536)
        received[0] += len(data)
    """#

    init(tag: String, index: Int) throws {
        let pid = getpid()
        name = "sptest-\(pid)-\(tag)"
        link = "spt\(pid % 1_000_000)\(tag)"
        hostAddress = "10.219.\(index).1"
        address = "10.219.\(index).2"
        TestHost.sh("ip netns del \(name) 2>/dev/null; ip link del \(link) 2>/dev/null; true")
        try TestHost.must("ip netns add \(name)")
        try TestHost.must("ip link add \(link) type veth peer name eth0 netns \(name)")
        try TestHost.must("ip addr add \(hostAddress)/30 dev \(link) && ip link set \(link) up")
        try TestHost.must("ip -n \(name) addr add \(address)/30 dev eth0 && ip -n \(name) link set eth0 up && ip -n \(name) link set lo up")
        let file = NSTemporaryDirectory() + "sandpit-testhost-\(pid).py"
        try TestHost.script.write(toFile: file, atomically: true, encoding: .utf8)
        server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        server.arguments = ["netns", "exec", name, "/usr/bin/python3", file, String(Self.payloadBytes)]
        let out = Pipe()
        server.standardOutput = out
        server.standardError = FileHandle.nullDevice
        try server.run()
        // Ready once it says so (its sockets are bound).
        let line = out.fileHandleForReading.availableData
        guard String(decoding: line, as: UTF8.self).hasPrefix("ready") else { throw TestHostError("\(name): server did not start") }
    }

    func stop() {
        if server.isRunning { kill(server.processIdentifier, SIGKILL) }
        server.waitUntilExit()
        TestHost.sh("ip netns del \(name) 2>/dev/null; ip link del \(link) 2>/dev/null; true")
    }

    /// The UDP bytes the sink has received (asked from the host side).
    func udpReceived() throws -> Int {
        let text = try TestHost.output("/usr/bin/python3 -c 'import urllib.request; print(urllib.request.urlopen(\"http://\(address):8082/\", timeout=5).read().decode())'")
        guard let n = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) else { throw TestHostError("udp count: \(text)") }
        return n
    }

    @discardableResult
    static func sh(_ cmd: String) -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", cmd]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        do { try p.run() } catch { return -1 }
        p.waitUntilExit()
        return p.terminationStatus
    }

    static func must(_ cmd: String) throws {
        guard sh(cmd) == 0 else { throw TestHostError("failed: \(cmd)") }
    }

    static func output(_ cmd: String) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", cmd]
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = FileHandle.nullDevice
        try p.run()
        let d = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return String(decoding: d, as: UTF8.self)
    }
}

struct TestHostError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// Two test hosts (A and B) for the suite, and a sandbox whose runs may allow them.
final class NetworkLab: @unchecked Sendable {
    let a: TestHost, b: TestHost
    let sandbox: Sandbox
    var settings: NetworkSettings { sandbox.settings.network }

    init(warm: [String] = []) throws {
        a = try TestHost(tag: "a", index: 1)
        do { b = try TestHost(tag: "b", index: 2) } catch { a.stop(); throw error }
        var s = SandboxSettings()
        s.prepareAhead = false
        s.warmTemplates = warm.map { try! WarmSpec(parsing: $0) }
        var n = NetworkSettings()
        n.allowMax = [IPv4Net("10.219.0.0/16")!, IPv4Net("169.254.0.0/16")!]
        // A small range: a run can try every other run's address.
        n.range = IPv4Net("10.213.250.0/24")!
        n.hostResolver = false  // no query leaves this machine
        n.hosts = ["a.sandpit.test": [IPv4Net.parseAddress(a.address)!], "b.sandpit.test": [IPv4Net.parseAddress(b.address)!]]
        s.network = n
        sandbox = Sandbox(settings: s)
    }

    func stop() {
        sandbox.shutdown()
        a.stop()
        b.stop()
    }

    func run(_ code: String, allow: [String]?, rate: UInt64? = nil, wall: Double = 10, warm: WarmChoice = .cold) async throws -> ExecutionResult {
        var req = ExecutionRequest(code: code)
        req.warm = warm
        req.limits.wallSeconds = wall * Env.slow
        if let allow { req.network = try NetworkPolicy.parse(allow, rate: rate).resolved(with: settings) }
        let r = await sandbox.run(req)
        await sandbox.quiesce()
        return r
    }

    /// Links, chains and locked slots of runs: none once every run is over.
    static func leftovers() -> [String] {
        var left = SysFile.list("/sys/class/net").filter { $0.hasPrefix(NetworkAttachment.linkPrefix) }
        let listing = NetworkAttachment.nft("list table inet \(NetworkAttachment.table)\n").output
        left += listing.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { $0.range(of: #"^chain (o|oa|i|ia|r)[0-9]+ "#, options: .regularExpression) != nil }
        left += listing.split(separator: "\n").filter { $0.contains("\"\(NetworkAttachment.linkPrefix)") && $0.contains("jump") }.map(String.init)
        let ct = SysFile.read("/proc/net/nf_conntrack") ?? ""
        left += ct.split(separator: "\n").filter { line in
            let mark = line.split(separator: " ").first { $0.hasPrefix("mark=") }.flatMap { UInt32($0.dropFirst(5)) } ?? 0
            return mark >> 24 == 0x5A || line.contains("src=10.213.250.")
        }.map(String.init)
        return left
    }
}

func breakdown(_ r: ExecutionResult) throws -> [String: Any] {
    let text = try #require(r.network, "no network breakdown: \(r.error ?? "")")
    return try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
}

func int(_ v: Any?) -> Int { (v as? NSNumber)?.intValue ?? -1 }

@Suite("Policies (unit)")
struct NetworkPolicyTests {
    @Test func entriesParse() throws {
        let r = try NetworkRule.parse("tcp://10.1.2.3:443")
        #expect(r.net == IPv4Net("10.1.2.3/32") && r.proto == .tcp && r.ports == 443...443)
        let n = try NetworkRule.parse("192.0.2.0/24")
        #expect(n.net?.prefix == 24 && n.ports == nil && n.proto == .any)
        let h = try NetworkRule.parse("DB.internal.:5432-5433")
        #expect(h.name == "db.internal" && h.ports == 5432...5433)
        for bad in ["", "10.1.2.3:0", "10.1.2.3:70000", "10.1.2/24", "300.1.1.1", "[::1]:80", "2001:db8::1", "icmp://1.2.3.4",
                    "10.0.0.1/33", "a..b", "-x.com", "x_y.com", "10.1.2.3:9-8", "01.2.3.4"] {
            #expect(throws: NetworkPolicyError.self, "\(bad)") { try NetworkRule.parse(bad) }
        }
    }

    @Test func limitsAreEnforced() throws {
        var s = NetworkSettings()
        let p = try NetworkPolicy.parse(["10.1.2.3:443"], rate: nil)
        #expect(throws: NetworkPolicyError.self) { try p.resolved(with: s) }  // no allow-max: no network
        s.allowMax = [IPv4Net("10.1.0.0/16")!]
        _ = try p.resolved(with: s)
        #expect(throws: NetworkPolicyError.self) { try NetworkPolicy.parse(["10.0.0.0/8"], rate: nil).resolved(with: s) }
        #expect(throws: NetworkPolicyError.self) { try NetworkPolicy.parse(["10.2.0.1"], rate: nil).resolved(with: s) }
        s.allowMax = [IPv4Net("0.0.0.0/0")!]
        #expect(throws: NetworkPolicyError.self) { try NetworkPolicy.parse(["10.213.0.9:80"], rate: nil).resolved(with: s) }
        try s.addHost("db.internal=10.1.2.4,10.1.2.5")
        let named = try NetworkPolicy.parse(["db.internal:5432"], rate: 4096).resolved(with: s)
        #expect(named.allow[0].addresses == [0x0A01_0204, 0x0A01_0205])
        #expect(named.names == ["db.internal": [0x0A01_0204, 0x0A01_0205]])
        // (no query to the host's resolver from a test: names only)
        s.hostResolver = false
        #expect(throws: NetworkPolicyError.self) { try NetworkPolicy.parse(["no-such-name.invalid"], rate: nil).resolved(with: s) }
        #expect(throws: NetworkPolicyError.self) { try NetworkPolicy.parse([], rate: 10) }
    }

    @Test func resolverAnswersOnlyItsNames() throws {
        // A query for a.test (A, IN), id 0x1234, RD.
        func query(_ name: String, type: UInt8 = 1) -> [UInt8] {
            var q: [UInt8] = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]
            for l in name.split(separator: ".") { q.append(UInt8(l.utf8.count)); q += Array(l.utf8) }
            return q + [0, 0, type, 0, 1]
        }
        let names: [String: [UInt32]] = ["a.test": [0x0A00_0001, 0x0A00_0002]]
        let yes = try #require(DNSResponder.answer(query("A.Test"), names: names))
        #expect(yes[0] == 0x12 && yes[1] == 0x34 && yes[3] & 0x0F == 0 && yes[7] == 2)
        #expect(Array(yes.suffix(4)) == [10, 0, 0, 2])
        let aaaa = try #require(DNSResponder.answer(query("a.test", type: 28), names: names))
        #expect(aaaa[3] & 0x0F == 0 && aaaa[7] == 0)  // no IPv6 answer, not an error
        let no = try #require(DNSResponder.answer(query("b.test"), names: names))
        #expect(no[3] & 0x0F == 3 && no[7] == 0)  // NXDOMAIN
        #expect(DNSResponder.answer([1, 2, 3], names: names) == nil)
        let truncated = try #require(DNSResponder.answer(Array(query("a.test").prefix(15)), names: names))
        #expect(truncated[3] & 0x0F == 1)  // FORMERR
    }
}

extension PrivilegedSandboxSuites {
@Suite("Network (root, test hosts in namespaces)", .serialized)
struct NetworkTests {
    /// Fresh test hosts for one test (stop them with `defer { lab.stop() }`).
    func lab() throws -> NetworkLab {
        try #require(Env.isRoot, "privileged test run without root")
        return try NetworkLab()
    }

    @Test func anAllowedHostIsReachableAndNothingElse() async throws {
        let lab = try lab()
        defer { lab.stop() }
        let code = #"""
        import socket, urllib.request, sys
        def get(url):
            try:
                return len(urllib.request.urlopen(url, timeout=3).read())
            except Exception as e:
                return type(e).__name__
        def connect(host, port):
            s = socket.socket()
            s.settimeout(3)
            try:
                s.connect((host, port)); return "connected"
            except Exception as e:
                return type(e).__name__
            finally:
                s.close()
        def resolve(name):
            try:
                return socket.gethostbyname(name)
            except Exception as e:
                return type(e).__name__
        gw = [l.split()[2] for l in open("/proc/net/route") if l.split()[1] == "00000000"][0]
        gw = socket.inet_ntoa(bytes.fromhex(gw)[::-1])
        print(get("http://a.sandpit.test:8080/"))
        print(connect("A", 8081))
        print(connect("B", 8080))
        print(connect(gw, 22))
        print(connect("HOSTADDR", 8080))
        print(connect("169.254.169.254", 80))
        print(resolve("a.sandpit.test"), resolve("b.sandpit.test"), resolve("example.com"))
        """#.replacingOccurrences(of: "\"A\"", with: "\"\(lab.a.address)\"")
            .replacingOccurrences(of: "\"B\"", with: "\"\(lab.b.address)\"")
            .replacingOccurrences(of: "HOSTADDR", with: lab.a.hostAddress)
        let r = try await lab.run(code, allow: ["tcp://a.sandpit.test:8080"])
        #expect(r.status == .ok, "\(r.error ?? "")")
        let lines = r.output.split(separator: "\n").map(String.init)
        try #require(lines.count == 7, "\(r.output)")
        #expect(lines[0] == String(TestHost.payloadBytes))
        #expect(lines[1] == "ConnectionRefusedError")  // A's other port: reset by the filter
        #expect(lines[2] == "ConnectionRefusedError")  // B
        #expect(lines[3] == "ConnectionRefusedError")  // the host, through the run's gateway
        #expect(lines[4] == "ConnectionRefusedError")  // the host's address on A's link
        // Link-local metadata: refused by the filter; where the host has no route to it
        // at all (the VM), its routing answers first (unreachable).
        #expect(["ConnectionRefusedError", "OSError"].contains(lines[5]), "\(lines[5])")
        #expect(lines[6] == "\(lab.a.address) gaierror gaierror")

        let b = try breakdown(r)
        let tcp = try #require((b["protocols"] as? [String: Any])?["tcp"] as? [String: Any])
        let sent = TestHost.payloadBytes
        // IP bytes: the payload, the HTTP head, TCP/IP headers (GRO merges segments).
        #expect(int(tcp["bytes_in"]) >= sent && int(tcp["bytes_in"]) <= sent + sent / 20 + 4096, "\(tcp)")
        #expect(int(tcp["bytes_out"]) > 100 && int(tcp["bytes_out"]) < 20_000, "\(tcp)")
        #expect(int(b["tcp_connections"]) == 1)
        #expect(int(b["refused"]) >= 4, "\(b)")
        #expect(int(b["dns_queries"]) >= 3 && int(b["dns_queries"]) <= 12, "\(b)")
        let dests = try #require(b["destinations"] as? [[String: Any]])
        #expect(dests.count == 1 && dests[0]["allow"] as? String == "tcp://a.sandpit.test:8080")
        #expect(dests.first?["addresses"] as? [String] == [lab.a.address])
        #expect(int(dests.first?["bytes_in"]) == int(tcp["bytes_in"]))
        #expect((r.networkIORx ?? 0) >= Int64(sent))  // the interface totals see it too
        #expect(NetworkLab.leftovers().isEmpty, "\(NetworkLab.leftovers())")
    }

    @Test func withoutNetworkNothingIsReachable() async throws {
        let lab = try lab()
        defer { lab.stop() }
        let r = try await lab.run("""
        import socket
        s = socket.socket(); s.settimeout(2)
        try:
            s.connect(("\(lab.a.address)", 8080)); print("connected")
        except OSError as e:
            print(type(e).__name__, e.errno)
        try:
            socket.gethostbyname("a.sandpit.test"); print("resolved")
        except OSError as e:
            print(type(e).__name__)
        """, allow: nil)
        #expect(r.output == "OSError 101\ngaierror\n", "\(r.output) \(r.error ?? "")")  // ENETUNREACH
        #expect(r.network == nil)
    }

    @Test(.enabled(if: !Env.inVM, "timing under emulation; the policy itself is checked in the VM by the other tests"))
    func theRateHoldsAFlood() async throws {
        let lab = try lab()
        defer { lab.stop() }
        let before = try lab.b.udpReceived()
        let rate: UInt64 = 200_000
        let r = try await lab.run("""
        import socket, time
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        chunk = b"u" * 1400
        sent = 0
        end = time.monotonic() + 2
        while time.monotonic() < end:
            try:
                sent += s.sendto(chunk, ("\(lab.b.address)", 9000))
            except OSError:
                pass
        print(sent)
        """, allow: ["udp://\(lab.b.address):9000"], rate: rate)
        #expect(r.status == .ok, "\(r.error ?? "")")
        let sent = Int(r.output.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        try await Task.sleep(for: .milliseconds(200))
        let got = try lab.b.udpReceived() - before
        // nftables' bucket starts full: one second at the rate plus the burst (rate / 4);
        // then 2 s at the rate, plus slack for the clock.
        let most = Int(Double(rate) * 2.5) + Int(rate) + Int(rate / 4)
        #expect(got <= most, "received \(got) of \(sent) sent; the most allowed \(most)")
        #expect(got >= Int(rate), "received \(got)")
        #expect(sent > got * 3, "the program sent \(sent): not a flood")
        let b = try breakdown(r)
        let udp = try #require((b["protocols"] as? [String: Any])?["udp"] as? [String: Any])
        #expect(int(udp["bytes_out"]) <= most + 64 * int(udp["packets_out"]))
        let dropped = try #require(b["rate_dropped"] as? [String: Any])
        #expect(int(dropped["packets"]) > 0)
    }

    @Test(.enabled(if: !Env.inVM, "timing under emulation; the policy itself is checked in the VM by the other tests"))
    func runsCannotReachEachOther() async throws {
        let lab = try lab()
        defer { lab.stop() }
        // One run listens; another, at the same time, tries every run address of the range.
        async let listener = lab.run("""
        import socket, time
        s = socket.socket(); s.bind(("0.0.0.0", 7000)); s.listen(); s.settimeout(4)
        try:
            s.accept(); print("accepted")
        except socket.timeout:
            print("nobody")
        """, allow: ["\(lab.a.address)"])
        try await Task.sleep(for: .milliseconds(800))
        let prober = try await lab.run("""
        import socket
        ok = []
        for i in range(1, 63):
            for host in (i * 4 + 1, i * 4 + 2):
                s = socket.socket(); s.settimeout(0.3)
                try:
                    s.connect(("10.213.250.%d" % host, 7000)); ok.append(host)
                except OSError:
                    pass
                s.close()
        print(ok)
        """, allow: ["\(lab.a.address)"], wall: 30)
        #expect(prober.output == "[]\n", "\(prober.output) \(prober.error ?? "")")
        #expect(try await listener.output == "nobody\n")
    }

    @Test(.enabled(if: !Env.inVM, "a numpy template takes minutes under emulation; warm runs are checked in the VM by WarmTests"))
    func aWarmRunGetsItsNetworkToo() async throws {
        try #require(Env.isRoot, "privileged test run without root")
        let lab = try NetworkLab(warm: ["numpy"])
        defer { lab.stop() }
        let ok = await WarmTestSupport.ready(lab.sandbox)
        try #require(ok, "\(lab.sandbox.warmStatus)")
        let code = """
        import numpy, urllib.request
        print(len(urllib.request.urlopen("http://a.sandpit.test:8080/", timeout=3).read()))
        try:
            urllib.request.urlopen("http://\(lab.b.address):8080/", timeout=3); print("reached B")
        except OSError as e:
            print(type(e).__name__)
        """
        let r = try await lab.run(code, allow: ["tcp://a.sandpit.test:8080"], warm: .named(try WarmSpec(parsing: "numpy")))
        #expect(r.start == .warm, "\(r.error ?? "")")
        #expect(r.output == "\(TestHost.payloadBytes)\nURLError\n", "\(r.output) \(r.error ?? "")")
        #expect(int(try breakdown(r)["tcp_connections"]) == 1)
        #expect(NetworkLab.leftovers().isEmpty, "\(NetworkLab.leftovers())")
    }

    /// A firewall reload that flushes the host's ruleset mid-run: the run keeps its
    /// limits (the copy in its own namespace), and the next run gets a new table.
    @Test(.enabled(if: !Env.inVM, "waits on the program's timing; the same kernel mechanisms as the host's"))
    func aFlushedHostRulesetFailsClosed() async throws {
        let lab = try lab()
        defer { lab.stop() }
        async let run = lab.run("""
        import socket, time
        time.sleep(1.5 * \(Env.slow))
        def connect(host, port):
            s = socket.socket(); s.settimeout(2)
            try:
                s.connect((host, port)); return "connected"
            except Exception as e:
                return type(e).__name__
        print(connect("\(lab.b.address)", 8080), connect("\(lab.a.address)", 8081))
        """, allow: ["tcp://\(lab.a.address):8080"])
        try await Task.sleep(for: .milliseconds(Int(700 * Env.slow)))
        #expect(NetworkAttachment.nft("delete table inet \(NetworkAttachment.table)\n").ok)
        let r: ExecutionResult = try await run
        #expect(r.output == "ConnectionRefusedError ConnectionRefusedError\n", "\(r.output) \(r.error ?? "")")
        let refused = int(try breakdown(r)["refused"])
        #expect(r.status == .ok && refused == 2, "\(refused)")
        // The next run: a table again, and its way out.
        let next = try await lab.run("""
        import urllib.request
        print(len(urllib.request.urlopen("http://\(lab.a.address):8080/", timeout=3).read()))
        """, allow: ["tcp://\(lab.a.address):8080"])
        #expect(next.output == "\(TestHost.payloadBytes)\n", "\(next.output) \(next.error ?? "")")
        // Forwarding sandpit turned on stays limited to runs after the table is remade.
        if access(NetworkAttachment.slotDirectory + "/forwarding-was-off", F_OK) == 0 {
            #expect(NetworkAttachment.nft("list table inet \(NetworkAttachment.table)\n").output.contains("forwarding was off before sandpit"))
        }
        #expect(NetworkLab.leftovers().isEmpty, "\(NetworkLab.leftovers())")
    }

    /// A process killed with runs in progress leaves their links and rules; the next
    /// start's sweep removes them (their slots' locks died with it).
    @Test func aCrashedProcessesLinksAreSwept() async throws {
        let lab = try lab()
        defer { lab.stop() }
        let cli = Process()
        cli.executableURL = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("sandpit")
        cli.arguments = ["run", "--network", "tcp://\(lab.a.address):8080", "--time-limit", "60", "-c", "import time; time.sleep(60)"]
        cli.standardOutput = FileHandle.nullDevice
        cli.standardError = FileHandle.nullDevice
        try cli.run()
        var links: [String] = []
        for _ in 0..<Int(200 * Env.slow) where links.isEmpty {
            try await Task.sleep(for: .milliseconds(50))
            links = SysFile.list("/sys/class/net").filter { $0.hasPrefix(NetworkAttachment.linkPrefix) }
        }
        try await Task.sleep(for: .milliseconds(300))
        kill(cli.processIdentifier, SIGKILL)
        cli.waitUntilExit()
        #expect(links.count == 1, "\(links)")
        #expect(!NetworkLab.leftovers().isEmpty)  // what it left
        let swept = NetworkAttachment.sweep(logger: lab.sandbox.logger)
        #expect(swept == links)
        lab.sandbox.sweepStale()  // (its run cgroup)
        #expect(NetworkLab.leftovers().isEmpty, "\(NetworkLab.leftovers())")
    }

    @Test func aHundredRunsLeaveNothing() async throws {
        let lab = try lab()
        defer { lab.stop() }
        let runs = Env.inVM ? 5 : 100
        for i in 0..<runs {
            let r = try await lab.run("""
            import socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(b"run \(i)", ("\(lab.b.address)", 9000))
            s.connect(("\(lab.b.address)", 9000))
            print(s.getsockname()[0])
            """, allow: ["udp://b.sandpit.test:9000"])
            #expect(r.status == .ok && r.output.hasPrefix("10.213.250."), "\(r.output) \(r.error ?? "")")
        }
        #expect(NetworkLab.leftovers().isEmpty, "\(NetworkLab.leftovers())")
    }

    /// What a hostile program tries with its link, each against an allowed host that
    /// counts what arrives.
    @Test(.enabled(if: !Env.inVM, "the same kernel mechanisms as the host's; too slow under emulation"), arguments: [
        ("raw socket", "socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)", "PermissionError"),
        ("packet socket (ARP)", "socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0x0806)", "OSError"),  // (seccomp: EAFNOSUPPORT)
        ("change its address", "import fcntl, struct; fcntl.ioctl(socket.socket(), 0x8916, struct.pack('16sH2s4s8s', b'eth0', socket.AF_INET, b'', socket.inet_aton('10.219.2.99'), b''))", "PermissionError"),
        ("IPv6 to the host", "s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM); s.settimeout(2); s.connect(('fe80::1%eth0', 80))", "OSError"),
        ("IPv6 out", "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.sendto(b'x', ('2001:db8::1', 9000))", "OSError"),
        ("forged source address", "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setsockopt(socket.SOL_IP, 15, 1); s.bind(('10.219.1.2', 0)); [s.sendto(b'f' * 1000, ('B', 9000)) for _ in range(50)]", "OSError"),  // (a non-local source does not route: ENETUNREACH)
    ] as [(String, String, String)])
    func hostileNetworkProgram(_ name: String, _ action: String, _ expected: String) async throws {
        let lab = try lab()
        defer { lab.stop() }
        let before = try lab.b.udpReceived()
        let r = try await lab.run("""
        import socket, time
        try:
            \(action.replacingOccurrences(of: "'B'", with: "'\(lab.b.address)'"))
            print("done")
        except OSError as e:
            print(type(e).__name__)
        """, allow: ["udp://\(lab.b.address):9000"])
        #expect(r.output == expected + "\n", "\(name): \(r.output) \(r.error ?? "")")
        try await Task.sleep(for: .milliseconds(100))
        #expect(try lab.b.udpReceived() == before, "\(name): the host received packets")
        #expect(NetworkLab.leftovers().isEmpty)
    }
}
}
