// CSandpit: the part of sandpit that must be C.
//
// Why C: the sandbox child is created with clone3() from a multithreaded Swift
// process. Between clone and execve only async-signal-safe code may run (no
// allocation, no locks, no Swift runtime), so the whole jail set-up (mounts,
// pivot_root, capabilities, rlimits, seccomp, setuid) and the tiny init that
// supervises the program inside its pid namespace live here. Everything the
// child needs is prepared by Swift in the parent and passed in `sp_launch_spec`.
//
// The rest are one-line wrappers for variadic or struct-heavy calls (ioctl,
// prctl, seccomp export) that Swift cannot call directly. Policy (what to mount,
// what to deny, retries) stays in Swift.
#ifndef CSANDPIT_H
#define CSANDPIT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/epoll.h>

#ifdef __cplusplus
extern "C" {
#endif

// ---- mount plan executed by the sandbox init before pivot_root ----
enum sp_op_kind {
    SP_OP_MKDIR = 1,      // mkdir(dst, mode)
    SP_OP_BIND = 2,       // bind src on dst; flags: SP_BIND_* ; dst must exist
    SP_OP_SYMLINK = 3,    // symlink(src, dst)
    SP_OP_TMPFS = 4,      // mount tmpfs on dst, data = options, flags = MS_*
    SP_OP_PROC = 5,       // mount a fresh proc on dst
    SP_OP_MKNOD = 6,      // mknod(dst, S_IFCHR|mode, dev)
    SP_OP_FILE = 7,       // create dst (mode) with `data` (datalen bytes), owner uid/gid
    SP_OP_BLOCKFS = 8,    // mount block device src (fstype = data) on dst, flags = MS_*
    SP_OP_CHOWN = 9,      // chown(dst, uid, gid) + chmod(dst, mode)
    SP_OP_UMOUNT = 10,    // umount2(dst, MNT_DETACH)
    SP_OP_RMDIR = 11,     // rmdir(dst)
    SP_OP_TOUCH = 12,     // create an empty file dst (bind target)
    SP_OP_MOVE_MOUNT = 13, // attach the detached mount `fd` on dst (move_mount), then close fd
    SP_OP_MASK = 14,      // hide dst: an empty read-only tmpfs on a directory, a read-only bind
                          // of src (a /dev/null) on anything else; skipped when dst is absent
    SP_OP_OVERLAY = 15,   // a read-only overlay named "sandpit" on dst with options `data`
                          // (lowerdir=...); without overlayfs, a read-only bind of src instead;
                          // nothing when an SP_OP_VIEW before it succeeded
    SP_OP_VIEW = 16,      // when src is an overlay mount (the zygote's view of the host root),
                          // bind it on dst; else nothing
};

#define SP_BIND_RO 0x1        // remount the bind read-only
#define SP_BIND_OPTIONAL 0x2  // skip silently when src does not exist
#define SP_BIND_NOEXEC 0x4

typedef struct sp_mount_op {
    int kind;
    int flags;             // SP_BIND_* for binds, MS_* for tmpfs / blockfs
    const char *src;
    const char *dst;       // absolute path (below the new root before pivot)
    const char *data;      // tmpfs options, fs type, or file content
    size_t datalen;
    unsigned int mode;
    unsigned long dev;     // for mknod: makedev(major, minor)
    uid_t uid;
    gid_t gid;
    int fd;                // for SP_OP_MOVE_MOUNT
} sp_mount_op;

typedef struct sp_rlimit {
    int resource;
    uint64_t soft;
    uint64_t hard;
} sp_rlimit;

// Stages reported by the child when a step fails (errno travels with it).
enum sp_stage {
    SP_STAGE_NONE = 0,
    SP_STAGE_CGROUP_MOVE = 1,
    SP_STAGE_CGROUP_NS = 2,
    SP_STAGE_HOSTNAME = 3,
    SP_STAGE_LOOPBACK = 4,
    SP_STAGE_MOUNT_PRIVATE = 5,
    SP_STAGE_ROOT_TMPFS = 6,
    SP_STAGE_MOUNT_OP = 7,        // + op index in `detail`
    SP_STAGE_PIVOT_ROOT = 8,
    SP_STAGE_REMOUNT_ROOT = 9,
    SP_STAGE_INIT_CAPS = 10,
    SP_STAGE_FORK = 11,
    SP_STAGE_STDIO = 12,
    SP_STAGE_CHDIR = 13,
    SP_STAGE_RLIMIT = 14,
    SP_STAGE_SETGROUPS = 15,
    SP_STAGE_SETGID = 16,
    SP_STAGE_SETUID = 17,
    SP_STAGE_CAPS = 18,
    SP_STAGE_NO_NEW_PRIVS = 19,
    SP_STAGE_SECCOMP = 20,
    SP_STAGE_EXEC = 21,
    SP_STAGE_OOM_ADJ = 22,
    SP_STAGE_SIGNALS = 23,
    SP_STAGE_NETNS = 24,
};

/// The name of a stage, for error messages ("sandbox setup failed at pivot_root"), or
/// NULL for a number this build does not know. The one table of stage names.
const char *sp_stage_name(int stage);

// Message sent once by the sandbox init to the parent on `report_fd`.
enum sp_report_kind { SP_REPORT_EXITED = 1, SP_REPORT_SETUP_FAILED = 2 };
typedef struct sp_report {
    int32_t kind;
    int32_t stage;         // for SETUP_FAILED
    int32_t err;           // errno for SETUP_FAILED
    int32_t detail;        // op index for SP_STAGE_MOUNT_OP
    int32_t wait_status;   // raw wait status of the program (EXITED)
    int32_t pad;
    int64_t exit_ns;       // CLOCK_MONOTONIC when the program was reaped
    int64_t base_read_bytes;   // init's own /proc/self/io before the program started
    int64_t base_write_bytes;
    int64_t base_user_usec;    // init's own CPU time before the program started (set-up work)
    int64_t base_sys_usec;
    // CLOCK_MONOTONIC at: init start, namespaces set, root built, program forked,
    // every task reaped (for the debug log of where a launch spends its time)
    int64_t phase_ns[5];
} sp_report;

// Record sent by the program's process on `exec_fd` just before execve; a
// second record follows only if execve (or a step before it) failed.
typedef struct sp_exec_record {
    int32_t stage;   // SP_STAGE_NONE for the timestamp record
    int32_t err;
    int64_t t_ns;    // CLOCK_MONOTONIC just before execve
    int64_t init_cpu_usec;  // the init's own CPU time (user + system) when it forked the
                            // program: set-up work charged to the run's cgroup, not the program's
} sp_exec_record;

typedef struct sp_launch_spec {
    // cgroup placement
    int cgroup_fd;                         // >= 0: clone3(CLONE_INTO_CGROUP)
    const char *const *cgroup_task_files;  // NULL-terminated; child writes "0" to each (v1)
    // namespaces (CLONE_NEW* flags, without CLONE_NEWCGROUP which is unshared after placement)
    uint64_t ns_flags;
    int new_cgroup_ns;
    int net_fd;                            // >= 0: join this prepared network namespace (setns)
    const char *hostname;
    int loopback_up;
    // filesystem
    const char *new_root;                  // an existing directory; a tmpfs is mounted on it
    const char *root_tmpfs_options;
    const sp_mount_op *ops;
    size_t nops;
    // the program
    const char *exe;
    char *const *argv;
    char *const *envp;
    const char *cwd;
    uid_t uid;
    gid_t gid;
    const sp_rlimit *rlimits;
    size_t nrlimits;
    const void *filter;                    // struct sock_filter[] (BPF), may be NULL
    unsigned short filter_len;             // number of instructions
    int last_cap;                          // highest capability number the kernel knows
    // descriptors (all owned by the parent; the child closes what it does not keep)
    int stdin_fd, stdout_fd, stderr_fd;
    int exec_fd;                           // write end, CLOEXEC
    int report_fd;                         // write end
    int release_fd;                        // read end; EOF means the parent is gone
    int metrics_fd;                        // write end of the custom-metrics pipe, or -1; the
                                           // program gets it as fd 3 (SANDPIT_METRICS=/dev/fd/3)
} sp_launch_spec;

/// Starts the sandbox init with clone3(). Returns its pid (> 0) and its pidfd in
/// *pidfd_out, or -errno. Only the parent returns.
pid_t sp_launch(const sp_launch_spec *spec, int *pidfd_out);
/// sp_launch with extra clone flags (the zygote passes CLONE_PARENT).
pid_t sp_launch_ex(const sp_launch_spec *spec, uint64_t extra_flags, int *pidfd_out);

// ---- the launcher ("zygote") ----
// A service's process is large and multithreaded: cloning it for every run copies
// its page tables and makes every page it writes afterwards a copy-on-write fault.
// The zygote is a fresh, single-threaded, idle copy of the sandpit executable
// (re-executed with the argument below, caught by a constructor before Swift's
// main runs) that receives launch specs over a socket and clones the sandbox init
// from its own small address space, with CLONE_PARENT: the init is the service's
// child, exactly as with sp_launch.
#define SP_ZYGOTE_ARG "--sandpit-internal-zygote"
/// Starts a zygote from executable `exe` (normally /proc/self/exe). Returns the
/// service's end of its socket (SOCK_SEQPACKET, CLOEXEC) and its pid in *pid_out,
/// or -errno. The zygote exits when the socket closes or this process dies.
/// `view` and `empty` (existing directories, or NULL): the zygote mounts, in a mount
/// namespace of its own, a read-only overlay of "/" at `view` for the runs' binds.
int sp_zygote_start(const char *exe, const char *view, const char *empty, pid_t *pid_out);
/// Launches `spec` through the zygote on `sock` (one caller at a time). Same
/// contract as sp_launch; -EPIPE / -ECONNRESET when the zygote is gone.
pid_t sp_zygote_launch(int sock, const sp_launch_spec *spec, int *pidfd_out);

// ---- warm templates (warm.c) ----
// A zygote that has loaded the host's libpython and imported a set of modules: it
// serves launch specs like the zygote, and the program of each run it launches runs
// the user's file in that interpreter (the module `_sandpit_warm`, the agent, whose
// source the service passes) instead of exec'ing python3. Everything else of the run
// is as for a cold one.
#define SP_TEMPLATE_ARG "--sandpit-internal-template"
/// Starts a template from `exe` (normally /proc/self/exe): it loads `libpython`
/// (RTLD_GLOBAL), runs `agent` as the module `_sandpit_warm`, imports `modules`
/// (comma-separated) and then sends one message on the returned socket: "ready\n..."
/// or "failed\n<why>". `home` (an existing empty directory) gets a tmpfs in the
/// template's own mount namespace for what imports cache; `pythonpath` (may be "")
/// becomes its PYTHONPATH. Launch through it with sp_zygote_launch. Returns the socket
/// or -errno, its pid in *pid_out.
int sp_template_start(const char *exe, const char *view, const char *empty, const char *libpython,
                      const char *modules, const char *agent, const char *home, const char *pythonpath,
                      pid_t *pid_out);

/// Creates a network namespace with `lo` up, on a short-lived helper thread, and
/// returns an fd that keeps it alive (or -errno). Used to take netns creation
/// (~0.6 ms) off a run's critical path.
int sp_new_netns(void);

// ---- a run's network attachment (net.c); addresses in network byte order ----
/// A veth pair: `host_name` here, `peer_name` in the namespace `peer_netns_fd`. 0 or -errno.
int sp_veth_create(const char *host_name, const char *peer_name, int peer_netns_fd);
/// Deletes the link `name` (a veth takes its peer with it). 0 or -errno.
int sp_link_delete(const char *name);
/// The host end: address, up, IPv6 off. 0 or -errno.
int sp_net_host_side(const char *ifname, uint32_t addr, int prefix);
/// Inside the namespace: address on `ifname`, up, default route via `gateway`, IPv6
/// off, and a UDP socket bound to 127.0.0.1:53 there (`*dns_fd`). 0 or -errno.
int sp_net_inside(int netns_fd, const char *ifname, uint32_t addr, int prefix, uint32_t gateway, int *dns_fd);
/// Deletes the tracked connections (all families) whose mark is `mark`. 0 or -errno.
int sp_conntrack_flush_mark(uint32_t mark);
/// 1 when libnftables.so.1 could be loaded.
int sp_nft_available(void);
/// Runs nft commands (the nft(8) language); output and error text are malloc'd
/// (free them). 0, -EINVAL when nft refused them, -ENOSYS without libnftables.
int sp_nft_run(const char *commands, int json, char **output, char **error);
/// The same, inside the network namespace `netns_fd` (from a thread of its own).
int sp_nft_run_in(int netns_fd, const char *commands, char **output, char **error);

/// pidfd_send_signal(2).
int sp_pidfd_send_signal(int pidfd, int sig);
/// pidfd_open(2), close-on-exec; -errno on failure.
int sp_pidfd_open(int pid);
/// waitid(P_PIDFD, pidfd, ..., WEXITED | options). Returns 0 and fills status/code.
int sp_pidfd_wait(int pidfd, int options, int *code_out, int *status_out);
/// True when clone3 with CLONE_INTO_CGROUP is known to the kernel (probe with an invalid fd).
int sp_have_clone_into_cgroup(void);

/// Reads `/proc/thread-self/net/dev` from inside the network namespace `nsfd`,
/// on a short-lived helper thread (setns affects only the calling thread).
/// Returns bytes read or -errno.
ssize_t sp_read_netdev_in_ns(int nsfd, char *buf, size_t len);
/// Reads `/proc/thread-self/net/<name>` for each name from inside the network
/// namespace `nsfd` (same helper-thread scheme), each file's text followed by a NUL
/// (an absent file contributes only the NUL). Returns bytes read or -errno.
ssize_t sp_read_net_files_in_ns(int nsfd, const char *const *names, size_t nnames, char *buf, size_t len);

/// Exports the seccomp program built by libseccomp from a policy. `denied` is
/// an array of syscall names; `clone_ns_mask` denies clone() with any of those
/// flags; clone3 fails with ENOSYS so that libc falls back to clone().
/// Returns the number of BPF instructions written into *out (malloc'ed), or -errno.
/// socket() and socketpair() fail with EAFNOSUPPORT for every address family not in
/// `families`; socket(AF_NETLINK, ...) fails with EPROTONOSUPPORT for every protocol
/// not in `netlink_protocols` (nfamilies == 0: no socket rules).
int sp_seccomp_build(const char *const *denied, size_t ndenied, uint64_t clone_ns_mask,
                     int deny_errno, const int *families, size_t nfamilies,
                     const int *netlink_protocols, size_t nnetlink, void **out, size_t *out_bytes);

/// Attaches `backing_fd` to a free loop device with LOOP_CONFIGURE and
/// LO_FLAGS_AUTOCLEAR. Returns the loop fd and its number in *index, or -errno.
int sp_loop_attach(int backing_fd, int *index);

/// Mounts the ext4 filesystem on block device `dev` as a detached mount
/// (fsopen/fsconfig/fsmount, nosuid,nodev): it belongs to no mount namespace until
/// the sandbox init attaches it with move_mount. Returns the mount fd or -errno.
int sp_mount_detached_ext4(const char *dev);
/// openat(dirfd, path, O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC, mode).
int sp_create_file_at(int dirfd, const char *path, unsigned int mode);

/// The highest capability the running kernel knows (libcap's cap_max_bits - 1).
int sp_last_cap(void);
/// CapEff of the calling thread is empty etc. (for doctor/tests): returns capability sets.
int sp_seccomp_available(void);

/// Wrapper for copy of data extents between files (SEEK_DATA / SEEK_HOLE).
int sp_copy_sparse(int from_fd, int to_fd, uint64_t size);

/// pipe2(O_CLOEXEC) and memfd_create(MFD_CLOEXEC), which Swift's Glibc module does not export.
int sp_pipe_cloexec(int fds[2]);
int sp_memfd(const char *name);
/// CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS.
uint64_t sp_sandbox_ns_flags(void);
/// open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC): a file with no name, gone when closed.
/// Where the filesystem has no O_TMPFILE: a file made in `dir` and unlinked at once.
int sp_open_tmpfile(const char *dir);
/// FITRIM on the filesystem whose directory (or mount) is `dirfd`: the free blocks
/// are discarded, which a loop device turns into holes in its backing file.
/// Returns the bytes trimmed, or -errno.
int64_t sp_fitrim(int dirfd);
/// Inodes in use on the filesystem of `fd` (fstatfs: f_files - f_ffree), or -errno.
int64_t sp_inodes_in_use(int fd);

#ifdef __cplusplus
}
#endif
#endif
