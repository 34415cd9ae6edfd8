import Testing
@testable import CgroupKit

/// Reads a fixture captured from a real kernel (v1: this hybrid host; v2: the VM).
func fixture(_ name: String, filePath: String = #filePath) -> String {
    let dir = filePath.split(separator: "/").dropLast().joined(separator: "/")
    return SysFile.read("/" + dir + "/Fixtures/" + name) ?? ""
}

@Suite("Detection")
struct DetectionTests {
    @Test func hybridHost() throws {
        let host = CgroupHost.detect(mountInfo: fixture("v1-hybrid/mountinfo.txt"),
                                     procCgroup: fixture("v1-hybrid/proc-cgroup.txt"),
                                     readControllers: { _ in "hugetlb\n" })
        #expect(host.mode == .hybrid)
        #expect(host.v2MountPoint == "/sys/fs/cgroup/unified")
        #expect(host.v2OwnDirectory == "/sys/fs/cgroup/unified")
        #expect(host.v2Controllers == ["hugetlb"])
        let mem = try #require(host.v1("memory"))
        #expect(mem.ownDirectory.hasPrefix("/sys/fs/cgroup/memory/process_api/"))
        #expect(host.v1("pids")?.ownDirectory == "/sys/fs/cgroup/pids")
        #expect(host.v1("cpuacct")?.mountPoint == "/sys/fs/cgroup/cpuacct")
        // name=systemd is not a resource hierarchy
        #expect(!host.v1Hierarchies.contains { $0.controllers.contains("name=systemd") })
    }

    @Test func unifiedHost() {
        let host = CgroupHost.detect(mountInfo: fixture("v2-vm/mountinfo.txt"),
                                     procCgroup: fixture("v2-vm/proc-cgroup.txt"),
                                     readControllers: { _ in "cpuset cpu io memory hugetlb pids rdma misc\n" })
        #expect(host.mode == .unified)
        #expect(host.v2OwnDirectory == "/sys/fs/cgroup")
        #expect(host.v2Controllers.contains("memory"))
        #expect(host.v1Hierarchies.isEmpty)
    }

    @Test func delegatedSubtreeAndNamespaceRoot() {
        // A cgroup namespace rooted at /system.slice/x.service: mountinfo root is that path.
        let mi = "30 25 0:26 /system.slice/x.service /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
        let host = CgroupHost.detect(mountInfo: mi, procCgroup: "0::/system.slice/x.service/sub\n",
                                     readControllers: { _ in "memory pids" })
        #expect(host.v2OwnDirectory == "/sys/fs/cgroup/sub")
        let legacy = CgroupHost.detect(
            mountInfo: "40 31 0:40 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n",
            procCgroup: "3:cpu,cpuacct:/user.slice\n")
        #expect(legacy.mode == .legacy)
        #expect(legacy.v1("cpuacct")?.ownDirectory == "/sys/fs/cgroup/cpu,cpuacct/user.slice")
    }

    @Test func octalEscapes() {
        let mi = "50 1 0:50 / /mnt/with\\040space rw - cgroup2 none rw\n"
        #expect(CgroupParse.mountInfo(mi).first?.mountPoint == "/mnt/with space")
        #expect(CgroupParse.mountInfo("garbage line\n").isEmpty)
    }

    @Test func procCgroupLines() {
        let e = CgroupParse.procCgroup(fixture("v1-hybrid/proc-cgroup.txt"))
        #expect(e.contains { $0.hierarchyID == 0 && $0.path == "/" && $0.controllers.isEmpty })
        #expect(e.contains { $0.controllers == ["memory"] && $0.path.hasPrefix("/process_api/") })
    }
}

@Suite("Stats parsers")
struct StatsParserTests {
    @Test func v2Files() {
        let cpu = StatParse.cpuStatV2(fixture("v2-vm/cpu.stat.txt"))
        #expect(cpu.usageUsec == 2_070_782)
        #expect(cpu.userUsec == 784_632)
        #expect(cpu.systemUsec == 1_286_150)
        let io = StatParse.ioStatV2(fixture("v2-vm/io.stat.txt"))
        #expect(io.writeBytes == 10240)
        #expect(io.readBytes == 5120)
        #expect(io.writeOps == 1)
        #expect(StatParse.single(fixture("v2-vm/memory.peak.txt")) == 65_241_088)
        #expect(StatParse.limit(fixture("v2-vm/memory.max.txt"))?.value == 199_999_488)  // rounded down to pages by the kernel
        #expect(StatParse.limit(fixture("v2-vm/pids.max.txt")) == .unlimited)
        let ev = StatParse.flatKeyed(fixture("v2-vm/memory.events.txt"))
        #expect(ev["oom_kill"] == 0)
        #expect(ev["max"] == 0)
        #expect(StatParse.flatKeyed(fixture("v2-vm/memory.stat.txt"))["anon"] != nil)
    }

    @Test func v1Files() {
        let cpu = StatParse.cpuacctV1(usage: fixture("v1-hybrid/cpuacct.usage.txt"),
                                      user: fixture("v1-hybrid/cpuacct.usage_user.txt"),
                                      sys: fixture("v1-hybrid/cpuacct.usage_sys.txt"))
        #expect(cpu.usageUsec == 253_406)
        #expect(cpu.userUsec == 51_981)
        #expect(cpu.systemUsec == 203_966)
        #expect(StatParse.single(fixture("v1-hybrid/memory.max_usage_in_bytes.txt")) == 63_664_128)
        // 9223372036854771712 is v1's "no limit"
        #expect(StatParse.limit(fixture("v1-hybrid/memory.limit_in_bytes.txt")) == .unlimited)
        #expect(StatParse.flatKeyed(fixture("v1-hybrid/memory.oom_control.txt"))["oom_kill"] == 0)
        let blk = StatParse.blkioV1(serviceBytes: fixture("v1-hybrid/blkio.throttle.io_service_bytes.txt"), serviced: nil)
        #expect(blk.writeBytes == 0)
        #expect(blk.writeOps == nil)
        #expect(StatParse.single(fixture("v1-hybrid/pids.peak.txt")) == 1)
    }

    @Test func procFiles() throws {
        let io = try #require(StatParse.procIO(fixture("v1-hybrid/proc-io.txt")))
        #expect(io.readBytes >= 0)
        let net = try #require(StatParse.netDev(fixture("v1-hybrid/net-dev.txt")))
        #expect(net.rxBytes == 259_773_488 && net.txBytes == 192_469)  // eth0 (ifb0, ifb1 are 0), not lo
        #expect(net.loopbackBytes == 3193 && !net.isQuiet)
        #expect(StatParse.netDev("Inter-|\n face |\n") == nil)
    }

    @Test(arguments: ["", "garbage", "max\n", "-1"])
    func missingOrOddValues(_ text: String) {
        #expect(StatParse.single(text) == nil)
    }

    @Test func runNames() throws {
        let name = RunName.make(id: "abc-def", ownerPID: 42, ownerStart: 777)
        #expect(name == "run-42-777-abc-def")
        let o = try #require(RunName.owner(of: name))
        #expect(o.pid == 42 && o.start == 777)
        #expect(RunName.owner(of: "supervisor") == nil)
        #expect(RunName.isStale("run-2147483000-1-x"))
        #expect(!RunName.isStale(RunName.make(id: "live")))
    }
}
