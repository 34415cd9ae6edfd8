// The sandbox child: clone3 from the (multithreaded) Swift parent, then a tiny
// init inside the new pid namespace that builds the root, forks the program,
// reaps everything and reports. Only raw syscalls and async-signal-safe libc
// wrappers run here: glibc still believes the process is multithreaded after a
// raw clone3, so set*id() must be raw syscalls (glibc's would try to broadcast
// to threads that only exist in the parent).
#define _GNU_SOURCE
#include "csandpit.h"
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif
#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

static int64_t sp_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int sp_write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int sp_write_file(const char *path, const char *s) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    int r = sp_write_all(fd, s, strlen(s));
    int e = errno;
    close(fd);
    errno = e;
    return r;
}

static _Noreturn void sp_init_fail(const sp_launch_spec *s, int stage, int detail) {
    sp_report r;
    memset(&r, 0, sizeof r);
    r.kind = SP_REPORT_SETUP_FAILED;
    r.stage = stage;
    r.err = errno;
    r.detail = detail;
    (void)sp_write_all(s->report_fd, &r, sizeof r);
    _exit(127);
}

static int64_t sp_init_cpu_usec;  // set by the init just before it forks the program

static _Noreturn void sp_prog_fail(const sp_launch_spec *s, int stage) {
    sp_exec_record rec;
    rec.stage = stage;
    rec.err = errno;
    rec.t_ns = sp_now_ns();
    rec.init_cpu_usec = sp_init_cpu_usec;
    (void)sp_write_all(s->exec_fd, &rec, sizeof rec);
    _exit(127);
}

// Closes every descriptor except those in keep[] (unsorted, -1 entries ignored).
static void sp_close_all_but(const int *keep, int nkeep) {
    int sorted[16];
    int n = 0;
    for (int i = 0; i < nkeep && n < 16; i++)
        if (keep[i] >= 0) sorted[n++] = keep[i];
    for (int i = 1; i < n; i++) {  // insertion sort, n is tiny
        int v = sorted[i], j = i - 1;
        while (j >= 0 && sorted[j] > v) { sorted[j + 1] = sorted[j]; j--; }
        sorted[j + 1] = v;
    }
    unsigned int from = 0;
    for (int i = 0; i < n; i++) {
        if ((unsigned int)sorted[i] > from)
            syscall(SYS_close_range, from, (unsigned int)sorted[i] - 1, 0);
        from = (unsigned int)sorted[i] + 1;
    }
    syscall(SYS_close_range, from, ~0U, 0);
}

static int sp_loopback_up(void) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    memcpy(ifr.ifr_name, "lo", 3);
    int r = ioctl(fd, SIOCGIFFLAGS, &ifr);
    if (r == 0) {
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        r = ioctl(fd, SIOCSIFFLAGS, &ifr);
    }
    int e = errno;
    close(fd);
    errno = e;
    return r;
}

static int sp_view_bound;  // SP_OP_VIEW bound the zygote's view (in this init)

static int sp_do_op(const sp_mount_op *op) {
    switch (op->kind) {
    case SP_OP_MKDIR:
        if (mkdir(op->dst, op->mode) < 0 && errno != EEXIST) return -1;
        return 0;
    case SP_OP_BIND: {
        if (mount(op->src, op->dst, NULL, MS_BIND, NULL) < 0) {
            if (errno == ENOENT && (op->flags & SP_BIND_OPTIONAL)) return 0;
            return -1;
        }
        unsigned long f = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV;
        if (op->flags & SP_BIND_RO) f |= MS_RDONLY;
        if (op->flags & SP_BIND_NOEXEC) f |= MS_NOEXEC;
        return mount(NULL, op->dst, NULL, f, NULL);
    }
    case SP_OP_SYMLINK:
        return symlink(op->src, op->dst);
    case SP_OP_TMPFS:
        return mount("tmpfs", op->dst, "tmpfs", (unsigned long)op->flags, op->data);
    case SP_OP_PROC:
        return mount("proc", op->dst, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    case SP_OP_MKNOD:
        if (mknod(op->dst, S_IFCHR | op->mode, op->dev) < 0) return -1;
        return chmod(op->dst, op->mode);
    case SP_OP_FILE: {
        int fd = open(op->dst, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, op->mode);
        if (fd < 0) return -1;
        int r = sp_write_all(fd, op->data, op->datalen);
        if (r == 0 && op->uid != (uid_t)-1) r = fchown(fd, op->uid, op->gid);
        int e = errno;
        close(fd);
        errno = e;
        return r;
    }
    case SP_OP_BLOCKFS:
        return mount(op->src, op->dst, op->data, (unsigned long)op->flags, NULL);
    case SP_OP_CHOWN:
        if (chown(op->dst, op->uid, op->gid) < 0) return -1;
        return chmod(op->dst, op->mode);
    case SP_OP_UMOUNT:
        return umount2(op->dst, MNT_DETACH);
    case SP_OP_RMDIR:
        return rmdir(op->dst);
    case SP_OP_MOVE_MOUNT: {
        int r = (int)syscall(SYS_move_mount, op->fd, "", AT_FDCWD, op->dst, 0x00000004 /* MOVE_MOUNT_F_EMPTY_PATH */);
        int e = errno;
        close(op->fd);
        errno = e;
        return r;
    }
    case SP_OP_MASK: {
        // Hide a /proc entry: a directory under an empty read-only tmpfs (the first one
        // mounted; the others are binds of it, cheaper than a superblock each), anything
        // else under a bind of `src` (the run's /dev/null: reads nothing, keeps nothing).
        // Absent: nothing to hide.
        static const char *empty_dir;
        struct stat st;
        if (lstat(op->dst, &st) < 0) return errno == ENOENT ? 0 : -1;
        if (S_ISDIR(st.st_mode)) {
            if (empty_dir) return mount(empty_dir, op->dst, NULL, MS_BIND, NULL);
            if (mount("tmpfs", op->dst, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                      "size=4k,nr_inodes=1,mode=555") < 0)
                return -1;
            empty_dir = op->dst;
            return 0;
        }
        return mount(op->src, op->dst, NULL, MS_BIND, NULL);
    }
    case SP_OP_VIEW: {
        // The zygote's overlay of the host root, shared by every run it launches.
        struct statfs sf;
        if (statfs(op->src, &sf) < 0 || (unsigned long)sf.f_type != 0x794c7630UL /* OVERLAYFS_SUPER_MAGIC */) return 0;
        if (mount(op->src, op->dst, NULL, MS_BIND, NULL) < 0) return 0;  // the overlay below does it
        sp_view_bound = 1;
        return 0;
    }
    case SP_OP_OVERLAY:
        // The host's files through an overlay: mountinfo shows "overlay sandpit" and an
        // anonymous device where a bind would name the host's disk and its options.
        if (sp_view_bound) return 0;
        if (mount("sandpit", op->dst, "overlay", MS_RDONLY | MS_NOSUID | MS_NODEV, op->data) == 0) return 0;
        if (mount(op->src, op->dst, NULL, MS_BIND, NULL) < 0) return -1;
        return mount(NULL, op->dst, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL);
    case SP_OP_TOUCH: {
        int fd = open(op->dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, op->mode);
        if (fd < 0) return -1;
        close(fd);
        return 0;
    }
    default:
        errno = EINVAL;
        return -1;
    }
}

// Parses "read_bytes: N" / "write_bytes: N" out of /proc/self/io.
static int64_t sp_io_field(const char *buf, const char *key) {
    const char *p = strstr(buf, key);
    if (!p) return -1;
    p += strlen(key);
    while (*p == ' ' || *p == ':') p++;
    int64_t v = 0;
    while (*p >= '0' && *p <= '9') v = v * 10 + (*p++ - '0');
    return v;
}

static int sp_capset(uint32_t eff, uint32_t prm, uint32_t inh, uint32_t eff1, uint32_t prm1) {
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    data[0].effective = eff;
    data[0].permitted = prm;
    data[0].inheritable = inh;
    data[1].effective = eff1;
    data[1].permitted = prm1;
    return (int)syscall(SYS_capset, &hdr, data);
}

static char *sp_args_start, *sp_args_end;  // the process's argument area (see sp_record_args)
static char *sp_env_start, *sp_env_end;    // and its environment area

// Writes strings NUL-terminated into [start, end) and zeroes the rest; stops at the
// first that does not fit.
static void sp_fill_area(char *start, char *end, char *const *strs) {
    if (!start || end <= start) return;
    size_t cap = (size_t)(end - start), n = 0;
    for (size_t i = 0; strs && strs[i]; i++) {
        size_t k = strlen(strs[i]) + 1;
        if (n + k > cap) break;
        memcpy(start + n, strs[i], k);
        n += k;
    }
    memset(start + n, 0, cap - n);
}

// A warm program's /proc/self/cmdline and /proc/self/environ are read from the
// template's argument and environment areas: they get the run's argv and environment
// (the rest zeroed: nothing of how the template was started shows), and comm the
// interpreter's name. The areas keep their size (moving them takes CAP_SYS_RESOURCE),
// so both end in NUL padding.
static void sp_warm_identity(const sp_launch_spec *s) {
    const char *base = strrchr(s->exe, '/');
    (void)prctl(PR_SET_NAME, base ? base + 1 : s->exe, 0, 0, 0);
    sp_fill_area(sp_args_start, sp_args_end, s->argv);
    sp_fill_area(sp_env_start, sp_env_end, s->envp);
}

// Set only in a warm template (warm.c): the program runs the template's already
// loaded interpreter instead of exec'ing one.
void (*sp_program_hook)(const sp_launch_spec *s) = NULL;

static _Noreturn void sp_program_main(const sp_launch_spec *s) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    setsid();

    if (dup2(s->stdin_fd, 0) < 0 || dup2(s->stdout_fd, 1) < 0 || dup2(s->stderr_fd, 2) < 0)
        sp_prog_fail(s, SP_STAGE_STDIO);
    // fd 3: the custom-metrics pipe (kept across execve) when there is one; the exec
    // record's pipe (closed by execve) just above it. Both go above 9 first, so that
    // neither dup overwrites the other's source.
    int ex = fcntl(s->exec_fd, F_DUPFD_CLOEXEC, 10);
    if (ex < 0) sp_prog_fail(s, SP_STAGE_STDIO);
    int first = 3;
    if (s->metrics_fd >= 0) {
        int m = fcntl(s->metrics_fd, F_DUPFD_CLOEXEC, 10);
        if (m < 0 || dup2(m, 3) < 0) sp_prog_fail(s, SP_STAGE_STDIO);  // dup2: without CLOEXEC
        first = 4;
    }
    if (dup3(ex, first, O_CLOEXEC) < 0) sp_prog_fail(s, SP_STAGE_STDIO);
    syscall(SYS_close_range, (unsigned)first + 1, ~0U, 0);
    sp_launch_spec local = *s;
    local.exec_fd = first;
    local.metrics_fd = s->metrics_fd >= 0 ? 3 : -1;
    s = &local;

    if (s->cwd && chdir(s->cwd) < 0) sp_prog_fail(s, SP_STAGE_CHDIR);
    if (sp_program_hook) sp_warm_identity(s);
    for (size_t i = 0; i < s->nrlimits; i++) {
        struct rlimit rl = {(rlim_t)s->rlimits[i].soft, (rlim_t)s->rlimits[i].hard};
        if (setrlimit(s->rlimits[i].resource, &rl) < 0) sp_prog_fail(s, SP_STAGE_RLIMIT);
    }
    // Capabilities: empty the bounding and ambient sets while we still hold
    // CAP_SETPCAP, clear the inheritable set, then the uid change from 0 clears
    // permitted and effective (no SECBIT_KEEP_CAPS).
    for (int c = 0; c <= s->last_cap; c++)
        if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0 && errno != EINVAL) sp_prog_fail(s, SP_STAGE_CAPS);
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
        sp_prog_fail(s, SP_STAGE_CAPS);
    if (syscall(SYS_setgroups, 0, NULL) < 0) sp_prog_fail(s, SP_STAGE_SETGROUPS);
    if (syscall(SYS_setresgid, s->gid, s->gid, s->gid) < 0) sp_prog_fail(s, SP_STAGE_SETGID);
    if (syscall(SYS_setresuid, s->uid, s->uid, s->uid) < 0) sp_prog_fail(s, SP_STAGE_SETUID);
    if (sp_capset(0, 0, 0, 0, 0) < 0) sp_prog_fail(s, SP_STAGE_CAPS);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) sp_prog_fail(s, SP_STAGE_NO_NEW_PRIVS);
    // A warm program has no execve to make it dumpable again after the uid change, as a
    // cold one is: without this its /proc/self files would belong to root.
    if (sp_program_hook && prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) < 0) sp_prog_fail(s, SP_STAGE_CAPS);
    if (s->filter && s->filter_len > 0) {
        struct sock_fprog prog = {s->filter_len, (struct sock_filter *)s->filter};
        if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) < 0) sp_prog_fail(s, SP_STAGE_SECCOMP);
    }
    sp_exec_record rec = {SP_STAGE_NONE, 0, sp_now_ns(), sp_init_cpu_usec};
    (void)sp_write_all(s->exec_fd, &rec, sizeof rec);
    if (sp_program_hook) {
        close(s->exec_fd);  // EOF: the parent reads it as a successful exec
        sp_program_hook(s);
        _exit(127);
    }
    execve(s->exe, s->argv, s->envp);
    sp_prog_fail(s, SP_STAGE_EXEC);
}

// The process's argument area (argv[0] .. the end of the last argument), recorded
// before main: the init clears its copy, so that /proc/1/cmdline inside a run shows
// "sandpit-init" and nothing of how the host started sandpit (the CLI's options,
// the service's flags).
__attribute__((constructor(101))) static void sp_record_args(int argc, char **argv, char **envp) {
    if (envp && envp[0]) {
        size_t n = 0;
        while (envp[n]) n++;
        sp_env_start = envp[0];
        sp_env_end = envp[n - 1] + strlen(envp[n - 1]) + 1;
    }
    if (argc < 1 || !argv || !argv[0] || !argv[argc - 1]) return;
    sp_args_start = argv[0];
    sp_args_end = argv[argc - 1] + strlen(argv[argc - 1]) + 1;
}

static void sp_hide_args(void) {
    (void)prctl(PR_SET_NAME, "sandpit-init", 0, 0, 0);
    if (!sp_args_start || sp_args_end <= sp_args_start) return;
    static const char name[] = "sandpit-init";
    size_t n = (size_t)(sp_args_end - sp_args_start);
    memset(sp_args_start, 0, n);
    memcpy(sp_args_start, name, n > sizeof name ? sizeof name : n - 1);
}

static int64_t sp_phase[5];  // see sp_report.phase_ns
static _Noreturn void sp_init_main(const sp_launch_spec *s) {
    sp_phase[0] = sp_now_ns();
    sp_hide_args();
    umask(0);
    int keep[16] = {s->stdin_fd, s->stdout_fd, s->stderr_fd, s->exec_fd, s->report_fd, s->release_fd, s->metrics_fd};
    int nkeep = 7;
    if (s->net_fd >= 0) keep[nkeep++] = s->net_fd;
    for (size_t i = 0; i < s->nops && nkeep < 16; i++)
        if (s->ops[i].kind == SP_OP_MOVE_MOUNT) keep[nkeep++] = s->ops[i].fd;
    sp_close_all_but(keep, nkeep);

    // Default dispositions (the parent may ignore SIGPIPE etc.), SIGCHLD via signalfd.
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = SIG_DFL;
        (void)sigaction(sig, &sa, NULL);
    }
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    if (sigprocmask(SIG_SETMASK, &chld, NULL) < 0) sp_init_fail(s, SP_STAGE_SIGNALS, 0);
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) sp_init_fail(s, SP_STAGE_SIGNALS, 0);

    // v1 placement: writing "0" to `tasks` moves only the calling thread, which
    // the kernel does without the threadgroup rwsem (and so without waiting for
    // an RCU grace period, unlike a write of a pid to cgroup.procs).
    if (s->cgroup_task_files) {
        for (const char *const *f = s->cgroup_task_files; *f; f++)
            if (sp_write_file(*f, "0") < 0) sp_init_fail(s, SP_STAGE_CGROUP_MOVE, (int)(f - s->cgroup_task_files));
    }
    if (s->new_cgroup_ns && unshare(CLONE_NEWCGROUP) < 0) sp_init_fail(s, SP_STAGE_CGROUP_NS, 0);
    if (s->net_fd >= 0) {
        if (setns(s->net_fd, CLONE_NEWNET) < 0) sp_init_fail(s, SP_STAGE_NETNS, 0);
        close(s->net_fd);
    }
    // The OOM killer should pick the program, not the init that reports on it. Needs
    // CAP_SYS_RESOURCE; without it the parent still tells an OOM kill from the counters.
    (void)sp_write_file("/proc/self/oom_score_adj", "-1000");
    if (s->hostname && sethostname(s->hostname, strlen(s->hostname)) < 0) sp_init_fail(s, SP_STAGE_HOSTNAME, 0);
    if (s->loopback_up && sp_loopback_up() < 0) sp_init_fail(s, SP_STAGE_LOOPBACK, 0);

    sp_phase[1] = sp_now_ns();
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) sp_init_fail(s, SP_STAGE_MOUNT_PRIVATE, 0);
    if (mount("tmpfs", s->new_root, "tmpfs", MS_NOSUID | MS_NODEV, s->root_tmpfs_options) < 0)
        sp_init_fail(s, SP_STAGE_ROOT_TMPFS, 0);
    for (size_t i = 0; i < s->nops; i++)
        if (sp_do_op(&s->ops[i]) < 0) sp_init_fail(s, SP_STAGE_MOUNT_OP, (int)i);
    if (chdir(s->new_root) < 0 || syscall(SYS_pivot_root, ".", ".") < 0 || umount2(".", MNT_DETACH) < 0 ||
        chdir("/") < 0)
        sp_init_fail(s, SP_STAGE_PIVOT_ROOT, 0);
    if (mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) < 0)
        sp_init_fail(s, SP_STAGE_REMOUNT_ROOT, 0);

    sp_phase[2] = sp_now_ns();
    // Baseline of init's own block I/O (it wrote the program file), subtracted by the parent.
    int64_t base_r = 0, base_w = 0;
    {
        char buf[512];
        int fd = open("/proc/self/io", O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            ssize_t n = read(fd, buf, sizeof buf - 1);
            close(fd);
            if (n > 0) {
                buf[n] = 0;
                base_r = sp_io_field(buf, "\nread_bytes");
                base_w = sp_io_field(buf, "\nwrite_bytes");
            }
        }
    }

    // init's own CPU time so far (mounts, pivot_root): set-up cost, not the program's.
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    (void)getrusage(RUSAGE_SELF, &ru);
    sp_init_cpu_usec = (int64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 + ru.ru_utime.tv_usec + ru.ru_stime.tv_usec;

    long prog = syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
    if (prog < 0) sp_init_fail(s, SP_STAGE_FORK, 0);
    sp_phase[3] = sp_now_ns();
    if (prog == 0) {
        close(sfd);
        close(s->report_fd);
        close(s->release_fd);
        sp_program_main(s);
    }
    close(s->stdin_fd);
    close(s->stdout_fd);
    close(s->stderr_fd);
    close(s->exec_fd);
    if (s->metrics_fd >= 0) close(s->metrics_fd);

    // Init keeps only CAP_KILL (to end the program's leftovers) and cannot gain more.
    for (int c = 0; c <= s->last_cap; c++)
        if (c != CAP_KILL) (void)prctl(PR_CAPBSET_DROP, c, 0, 0, 0);
    if (sp_capset(1U << CAP_KILL, 1U << CAP_KILL, 0, 0, 0) < 0) sp_init_fail(s, SP_STAGE_INIT_CAPS, 0);
    (void)prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    (void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);

    sp_report rep;
    memset(&rep, 0, sizeof rep);
    rep.kind = SP_REPORT_EXITED;
    rep.base_read_bytes = base_r;
    rep.base_write_bytes = base_w;
    rep.base_user_usec = (int64_t)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec;
    rep.base_sys_usec = (int64_t)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec;
    for (;;) {
        struct pollfd pfd[2] = {{sfd, POLLIN, 0}, {s->release_fd, POLLIN, 0}};
        int r = poll(pfd, 2, -1);
        if (r < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (pfd[1].revents) {
            // The parent is gone (EOF) or asks us to stop: end the whole run.
            kill(-1, SIGKILL);
            _exit(137);
        }
        if (pfd[0].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) > 0) {}
            int st;
            pid_t p;
            int done = 0;
            while ((p = waitpid(-1, &st, WNOHANG | __WALL)) > 0) {
                if (p == prog) {
                    rep.wait_status = st;
                    rep.exit_ns = sp_now_ns();
                    done = 1;
                }
            }
            if (done) break;
        }
    }
    // The program is gone: nothing of the run may outlive it.
    kill(-1, SIGKILL);
    while (waitpid(-1, NULL, __WALL) > 0 || errno == EINTR) {}
    sp_phase[4] = sp_now_ns();
    memcpy(rep.phase_ns, sp_phase, sizeof sp_phase);
    (void)sp_write_all(s->report_fd, &rep, sizeof rep);
    // Stay alive until the parent has read the counters (our /proc/<pid>/io, the
    // network namespace): it closes the release pipe, or dies.
    char b;
    while (read(s->release_fd, &b, 1) < 0 && errno == EINTR) {}
    _exit(0);
}

const char *sp_stage_name(int stage) {
    switch (stage) {
    case SP_STAGE_CGROUP_MOVE: return "cgroup placement";
    case SP_STAGE_CGROUP_NS: return "cgroup namespace";
    case SP_STAGE_HOSTNAME: return "sethostname";
    case SP_STAGE_LOOPBACK: return "loopback up";
    case SP_STAGE_MOUNT_PRIVATE: return "mount --make-rprivate /";
    case SP_STAGE_ROOT_TMPFS: return "root tmpfs";
    case SP_STAGE_MOUNT_OP: return "mount plan step";
    case SP_STAGE_PIVOT_ROOT: return "pivot_root";
    case SP_STAGE_REMOUNT_ROOT: return "read-only root";
    case SP_STAGE_INIT_CAPS: return "init capabilities";
    case SP_STAGE_FORK: return "fork";
    case SP_STAGE_STDIO: return "stdio";
    case SP_STAGE_CHDIR: return "chdir";
    case SP_STAGE_RLIMIT: return "setrlimit";
    case SP_STAGE_SETGROUPS: return "setgroups";
    case SP_STAGE_SETGID: return "setgid";
    case SP_STAGE_SETUID: return "setuid";
    case SP_STAGE_CAPS: return "capabilities";
    case SP_STAGE_NO_NEW_PRIVS: return "no_new_privs";
    case SP_STAGE_SECCOMP: return "seccomp";
    case SP_STAGE_EXEC: return "execve";
    case SP_STAGE_OOM_ADJ: return "oom_score_adj";
    case SP_STAGE_SIGNALS: return "signals";
    case SP_STAGE_NETNS: return "setns(network)";
    default: return NULL;
    }
}

pid_t sp_launch(const sp_launch_spec *spec, int *pidfd_out) {
    return sp_launch_ex(spec, 0, pidfd_out);
}

pid_t sp_launch_ex(const sp_launch_spec *spec, uint64_t extra_flags, int *pidfd_out) {
    struct clone_args args;
    memset(&args, 0, sizeof args);
    int pidfd = -1;
    args.flags = CLONE_PIDFD | spec->ns_flags | extra_flags;
    if (spec->cgroup_fd >= 0) {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = (uint64_t)spec->cgroup_fd;
    }
    args.pidfd = (uint64_t)(uintptr_t)&pidfd;
    // With CLONE_PARENT the child's exit signal is the caller's own (clone3 wants 0 here).
    args.exit_signal = (extra_flags & CLONE_PARENT) ? 0 : SIGCHLD;

    // No handler of the parent may run in the child before init resets them.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    long r = syscall(SYS_clone3, &args, sizeof args);
    if (r == 0) sp_init_main(spec);
    int e = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r < 0) return -e;
    *pidfd_out = pidfd;
    return (pid_t)r;
}

int sp_pidfd_send_signal(int pidfd, int sig) {
    return syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0) < 0 ? -errno : 0;
}

int sp_pidfd_open(int pid) {
    long fd = syscall(SYS_pidfd_open, pid, 0);
    return fd < 0 ? -errno : (int)fd;
}

int sp_pidfd_wait(int pidfd, int options, int *code_out, int *status_out) {
    siginfo_t info;
    memset(&info, 0, sizeof info);
    for (;;) {
        int r = waitid(P_PIDFD, (id_t)pidfd, &info, WEXITED | options);
        if (r == 0) break;
        if (errno == EINTR) continue;
        return -errno;
    }
    *code_out = info.si_code;
    *status_out = info.si_status;
    return info.si_pid == 0 ? 1 : 0;  // 1: not yet exited (WNOHANG)
}

int sp_have_clone_into_cgroup(void) {
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.flags = CLONE_INTO_CGROUP;
    args.cgroup = 0x7fffffff;  // a closed fd on purpose: the call can only fail
    args.exit_signal = SIGCHLD;
    long r = syscall(SYS_clone3, &args, sizeof args);
    if (r == 0) _exit(0);  // unreachable in practice
    if (r > 0) { waitpid((pid_t)r, NULL, 0); return 1; }
    return errno == EBADF;
}
