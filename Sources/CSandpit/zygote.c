// The launcher ("zygote"): see csandpit.h. The service packs an sp_launch_spec
// into one SOCK_SEQPACKET message (pointers become offsets into the message,
// descriptors travel with SCM_RIGHTS); the zygote unpacks it, clones the init
// with CLONE_PARENT and sends back the result and the init's pidfd.
#define _GNU_SOURCE
#include "csandpit.h"
#include "internal.h"

#include <errno.h>
#include <sched.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_close_range
#define SYS_close_range 436
#endif

#define SP_Z_MAGIC 0x5a505353u  // "SSPZ"
#define SP_Z_MAXFDS 16
#define SP_Z_BUF (256 * 1024)

typedef struct sp_z_header {
    uint32_t magic;
    uint32_t nfds;
    sp_launch_spec spec;  // pointers as offsets into the message (0 = NULL), fds as indexes (-1 = none)
} sp_z_header;

typedef struct sp_z_reply {
    int32_t result;  // pid (> 0) or -errno
    int32_t pad;
} sp_z_reply;

// ---------------------------------------------------------------- packing (service side)

typedef struct packer {
    char *buf;
    size_t cap;
    size_t len;
    int err;
    int fds[SP_Z_MAXFDS];
    int nfds;
} packer;

static uintptr_t pk_put(packer *p, const void *src, size_t n) {
    size_t off = (p->len + 15) & ~(size_t)15;
    if (p->err || off + n > p->cap) {
        p->err = E2BIG;
        return 0;
    }
    if (n) memcpy(p->buf + off, src, n);
    p->len = off + n;
    return (uintptr_t)off;
}

static uintptr_t pk_str(packer *p, const char *s) { return s ? pk_put(p, s, strlen(s) + 1) : 0; }

static uintptr_t pk_strv(packer *p, const char *const *v) {
    if (!v) return 0;
    size_t n = 0;
    while (v[n]) n++;
    uintptr_t *tmp = calloc(n + 1, sizeof *tmp);
    if (!tmp) {
        p->err = ENOMEM;
        return 0;
    }
    for (size_t i = 0; i < n; i++) tmp[i] = pk_str(p, v[i]);
    uintptr_t r = pk_put(p, tmp, (n + 1) * sizeof *tmp);
    free(tmp);
    return r;
}

static int pk_fd(packer *p, int fd) {
    if (fd < 0) return -1;
    if (p->nfds == SP_Z_MAXFDS) {
        p->err = EMFILE;
        return -1;
    }
    p->fds[p->nfds] = fd;
    return p->nfds++;
}

static int sp_z_pack(packer *p, const sp_launch_spec *in) {
    sp_z_header h;
    memset(&h, 0, sizeof h);
    h.magic = SP_Z_MAGIC;
    p->len = sizeof h;  // the header is written last, at offset 0
    sp_launch_spec *o = &h.spec;
    *o = *in;
    o->cgroup_fd = pk_fd(p, in->cgroup_fd);
    o->cgroup_task_files = (const char *const *)pk_strv(p, in->cgroup_task_files);
    o->net_fd = pk_fd(p, in->net_fd);
    o->hostname = (const char *)pk_str(p, in->hostname);
    o->new_root = (const char *)pk_str(p, in->new_root);
    o->root_tmpfs_options = (const char *)pk_str(p, in->root_tmpfs_options);
    if (in->nops) {
        sp_mount_op *ops = calloc(in->nops, sizeof *ops);
        if (!ops) return -ENOMEM;
        for (size_t i = 0; i < in->nops; i++) {
            ops[i] = in->ops[i];
            ops[i].src = (const char *)pk_str(p, in->ops[i].src);
            ops[i].dst = (const char *)pk_str(p, in->ops[i].dst);
            ops[i].data = in->ops[i].data ? (const char *)pk_put(p, in->ops[i].data, in->ops[i].datalen) : NULL;
            if (in->ops[i].kind == SP_OP_MOVE_MOUNT) ops[i].fd = pk_fd(p, in->ops[i].fd);
        }
        o->ops = (const sp_mount_op *)pk_put(p, ops, in->nops * sizeof *ops);
        free(ops);
    }
    o->exe = (const char *)pk_str(p, in->exe);
    o->argv = (char *const *)pk_strv(p, (const char *const *)in->argv);
    o->envp = (char *const *)pk_strv(p, (const char *const *)in->envp);
    o->cwd = (const char *)pk_str(p, in->cwd);
    o->rlimits = in->nrlimits ? (const sp_rlimit *)pk_put(p, in->rlimits, in->nrlimits * sizeof *in->rlimits) : NULL;
    o->filter = in->filter ? (const void *)pk_put(p, in->filter, (size_t)in->filter_len * 8) : NULL;
    o->stdin_fd = pk_fd(p, in->stdin_fd);
    o->stdout_fd = pk_fd(p, in->stdout_fd);
    o->stderr_fd = pk_fd(p, in->stderr_fd);
    o->exec_fd = pk_fd(p, in->exec_fd);
    o->report_fd = pk_fd(p, in->report_fd);
    o->release_fd = pk_fd(p, in->release_fd);
    o->metrics_fd = pk_fd(p, in->metrics_fd);
    if (p->err) return -p->err;
    h.nfds = (uint32_t)p->nfds;
    memcpy(p->buf, &h, sizeof h);
    return 0;
}

// ---------------------------------------------------------------- unpacking (zygote side)

typedef struct unpacker {
    char *base;
    size_t len;
    int bad;
} unpacker;

static void *up_ptr(unpacker *u, uintptr_t off, size_t need) {
    if (off == 0) return NULL;
    if (off >= u->len || need > u->len - off) {
        u->bad = 1;
        return NULL;
    }
    return u->base + off;
}

static const char *up_str(unpacker *u, const char *enc) {
    const char *s = up_ptr(u, (uintptr_t)enc, 1);
    if (s && !memchr(s, 0, u->len - (size_t)(s - u->base))) {
        u->bad = 1;
        return NULL;
    }
    return s;
}

static char **up_strv(unpacker *u, const void *enc) {
    uintptr_t *v = up_ptr(u, (uintptr_t)enc, sizeof(uintptr_t));
    if (!v) return NULL;
    for (size_t i = 0;; i++) {
        if ((size_t)((char *)&v[i] - u->base) + sizeof(uintptr_t) > u->len) {
            u->bad = 1;
            return NULL;
        }
        if (v[i] == 0) break;
        v[i] = (uintptr_t)up_str(u, (const char *)v[i]);
    }
    return (char **)v;
}

static int up_fd(unpacker *u, int idx, const int *fds, int nfds) {
    if (idx < 0) return -1;
    if (idx >= nfds) {
        u->bad = 1;
        return -1;
    }
    return fds[idx];
}

static int sp_z_unpack(char *buf, size_t len, const int *fds, int nfds, sp_launch_spec *out) {
    unpacker u = {buf, len, 0};
    if (len < sizeof(sp_z_header)) return -EINVAL;
    sp_z_header *h = (sp_z_header *)buf;
    if (h->magic != SP_Z_MAGIC || (int)h->nfds != nfds) return -EINVAL;
    sp_launch_spec s = h->spec;
    s.cgroup_fd = up_fd(&u, s.cgroup_fd, fds, nfds);
    s.cgroup_task_files = (const char *const *)up_strv(&u, s.cgroup_task_files);
    s.net_fd = up_fd(&u, s.net_fd, fds, nfds);
    s.hostname = up_str(&u, s.hostname);
    s.new_root = up_str(&u, s.new_root);
    s.root_tmpfs_options = up_str(&u, s.root_tmpfs_options);
    if (s.nops) {
        if (s.nops > SP_Z_BUF / sizeof(sp_mount_op)) return -EINVAL;
        sp_mount_op *ops = up_ptr(&u, (uintptr_t)s.ops, s.nops * sizeof *ops);
        if (!ops) return -EINVAL;
        for (size_t i = 0; i < s.nops; i++) {
            ops[i].src = up_str(&u, ops[i].src);
            ops[i].dst = up_str(&u, ops[i].dst);
            ops[i].data = up_ptr(&u, (uintptr_t)ops[i].data, ops[i].datalen);
            if (ops[i].kind == SP_OP_MOVE_MOUNT) ops[i].fd = up_fd(&u, ops[i].fd, fds, nfds);
        }
        s.ops = ops;
    }
    s.exe = up_str(&u, s.exe);
    s.argv = up_strv(&u, s.argv);
    s.envp = up_strv(&u, s.envp);
    s.cwd = up_str(&u, s.cwd);
    s.rlimits = s.nrlimits ? up_ptr(&u, (uintptr_t)s.rlimits, s.nrlimits * sizeof(sp_rlimit)) : NULL;
    s.filter = s.filter ? up_ptr(&u, (uintptr_t)s.filter, (size_t)s.filter_len * 8) : NULL;
    s.stdin_fd = up_fd(&u, s.stdin_fd, fds, nfds);
    s.stdout_fd = up_fd(&u, s.stdout_fd, fds, nfds);
    s.stderr_fd = up_fd(&u, s.stderr_fd, fds, nfds);
    s.exec_fd = up_fd(&u, s.exec_fd, fds, nfds);
    s.report_fd = up_fd(&u, s.report_fd, fds, nfds);
    s.release_fd = up_fd(&u, s.release_fd, fds, nfds);
    s.metrics_fd = up_fd(&u, s.metrics_fd, fds, nfds);
    if (u.bad || !s.exe || !s.argv || !s.new_root) return -EINVAL;
    *out = s;
    return 0;
}

// ---------------------------------------------------------------- messages with descriptors

// One message with up to SP_Z_MAXFDS descriptors. 0 or -errno.
static int sp_z_send(int sock, const void *buf, size_t len, const int *fds, int nfds) {
    union {
        char b[CMSG_SPACE(sizeof(int) * SP_Z_MAXFDS)];
        struct cmsghdr align;
    } cbuf;
    memset(&cbuf, 0, sizeof cbuf);
    struct iovec iov = {(void *)buf, len};
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    if (nfds > 0) {
        m.msg_control = cbuf.b;
        m.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    ssize_t w;
    do { w = sendmsg(sock, &m, MSG_NOSIGNAL); } while (w < 0 && errno == EINTR);
    return w < 0 ? -errno : 0;
}

// Receives one message; its descriptors (CLOEXEC) go to fds. Returns the length,
// 0 at EOF, -errno, or -EMSGSIZE when the message or its descriptors were cut.
static ssize_t sp_z_recv(int sock, void *buf, size_t cap, int *fds, int *nfds) {
    union {
        char b[CMSG_SPACE(sizeof(int) * SP_Z_MAXFDS)];
        struct cmsghdr align;
    } cbuf;
    struct iovec iov = {buf, cap};
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = cbuf.b;
    m.msg_controllen = sizeof cbuf.b;
    ssize_t n;
    do { n = recvmsg(sock, &m, MSG_CMSG_CLOEXEC); } while (n < 0 && errno == EINTR);
    *nfds = 0;
    if (n < 0) return -errno;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < k && *nfds < SP_Z_MAXFDS; i++) memcpy(&fds[(*nfds)++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
    }
    if (m.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) return -EMSGSIZE;
    return n;
}

// ---------------------------------------------------------------- the zygote process

static char sp_z_buf[SP_Z_BUF];

#define SP_OVERLAYFS_MAGIC 0x794c7630

// The view of the host root that runs bind their system directories from: in a mount
// namespace of the zygote's own (so nothing appears on the host, and it goes when the
// zygote does), a read-only overlay of "/" named "sandpit" at `view`, with an empty
// tmpfs at `empty` as its second lower layer. Each init copies this namespace and binds
// from the view: warm dentries, and mountinfo shows no host device. Best effort: when
// it fails, each run mounts an overlay of its own (see SP_OP_OVERLAY).
int sp_zygote_view(const char *view, const char *empty) {
    if (unshare(CLONE_NEWNS) < 0) return 0;
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) return 1;
    if (mount("tmpfs", empty, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,nr_inodes=1,mode=500") < 0)
        return 1;
    char opts[4200];
    snprintf(opts, sizeof opts, "lowerdir=/:%s", empty);
    (void)mount("sandpit", view, "overlay", MS_RDONLY | MS_NOSUID | MS_NODEV, opts);
    return 1;
}

static _Noreturn void sp_zygote_main(int sock) {
    (void)prctl(PR_SET_NAME, "sandpit-zygote", 0, 0, 0);
    (void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    syscall(SYS_close_range, 0U, (unsigned)sock - 1, 0);  // stdio too: it never prints
    syscall(SYS_close_range, (unsigned)sock + 1, ~0U, 0);
    sp_zygote_serve(sock, NULL, NULL);
}

_Noreturn void sp_zygote_serve(int sock, void (*before)(void), void (*after)(void)) {
    for (;;) {
        int fds[SP_Z_MAXFDS];
        int nfds = 0;
        ssize_t n = sp_z_recv(sock, sp_z_buf, sizeof sp_z_buf, fds, &nfds);
        if (n == 0 || (n < 0 && n != -EMSGSIZE)) _exit(0);  // the service closed its end, or died
        sp_z_reply rep = {0, 0};
        int pidfd = -1;
        sp_launch_spec spec;
        if (n < 0) {
            rep.result = -E2BIG;
        } else {
            int r = sp_z_unpack(sp_z_buf, (size_t)n, fds, nfds, &spec);
            if (r >= 0 && before) before();
            rep.result = r < 0 ? r : sp_launch_ex(&spec, CLONE_PARENT, &pidfd);
            if (r >= 0 && after) after();
        }
        // The init has its own copies now; holding ours would keep pipes open.
        for (int i = 0; i < nfds; i++) close(fds[i]);
        int sent = sp_z_send(sock, &rep, sizeof rep, &pidfd, rep.result > 0 && pidfd >= 0 ? 1 : 0);
        if (pidfd >= 0) close(pidfd);
        if (sent < 0) _exit(0);
    }
}

// Runs before Swift's main (and before any thread exists; after launch.c records the
// argument area) when this executable is
// started as a zygote; returns at once otherwise.
__attribute__((constructor(102))) static void sp_zygote_ctor(int argc, char **argv, char **envp) {
    (void)envp;
    if (argc < 3 || !argv || !argv[1] || strcmp(argv[1], SP_ZYGOTE_ARG) != 0) return;
    char *end = NULL;
    long fd = strtol(argv[2], &end, 10);
    if (!end || *end || fd < 0 || fd > 1000) _exit(2);
    if (argc >= 5 && argv[3][0] == '/' && argv[4][0] == '/') (void)sp_zygote_view(argv[3], argv[4]);
    sp_zygote_main((int)fd);
}

// ---------------------------------------------------------------- service side

int sp_spawn_helper(const char *exe, char *const argv[], char *const envp[], pid_t *pid_out) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) return -errno;
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&at);
    posix_spawn_file_actions_adddup2(&fa, sv[1], 3);  // dup2 clears CLOEXEC on fd 3
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &all);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    pid_t pid = -1;
    int r = posix_spawn(&pid, exe, &fa, &at, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    close(sv[1]);
    if (r != 0) {
        close(sv[0]);
        return -r;
    }
    *pid_out = pid;
    return sv[0];
}

int sp_zygote_start(const char *exe, const char *view, const char *empty, pid_t *pid_out) {
    char *const argv[] = {"sandpit-zygote", SP_ZYGOTE_ARG, "3", (char *)(view ? view : ""), (char *)(empty ? empty : ""), NULL};
    // Bind every symbol once in the zygote instead of lazily in each init it clones.
    char *const envp[] = {"LD_BIND_NOW=1", NULL};
    return sp_spawn_helper(exe, argv, envp, pid_out);
}

pid_t sp_zygote_launch(int sock, const sp_launch_spec *spec, int *pidfd_out) {
    // A usual spec takes ~20 KB: a buffer below malloc's mmap threshold first (a
    // 256 KB one would be mmap'ed and munmap'ed, with a TLB shootdown, per run).
    packer p;
    int r = -E2BIG;
    for (size_t cap = 64 * 1024; cap <= SP_Z_BUF && r == -E2BIG; cap *= 4) {
        memset(&p, 0, sizeof p);
        p.cap = cap;
        p.buf = malloc(cap);
        if (!p.buf) return -ENOMEM;
        r = sp_z_pack(&p, spec);
        if (r < 0) free(p.buf);
    }
    if (r < 0) return r;
    int sent = sp_z_send(sock, p.buf, p.len, p.fds, p.nfds);
    free(p.buf);
    if (sent < 0) return -EPIPE;  // nothing was launched: the caller may launch otherwise

    sp_z_reply rep;
    int rfds[SP_Z_MAXFDS];
    int nr = 0;
    ssize_t n = sp_z_recv(sock, &rep, sizeof rep, rfds, &nr);
    for (int i = 1; i < nr; i++) close(rfds[i]);
    int pidfd = nr > 0 ? rfds[0] : -1;
    if (n == 0) return -ECONNRESET;
    if (n < 0) {
        if (pidfd >= 0) close(pidfd);
        return (int)n;
    }
    if ((size_t)n != sizeof rep) {
        if (pidfd >= 0) close(pidfd);
        return -EPROTO;
    }
    if (rep.result > 0) {
        if (pidfd < 0) return -EPROTO;
        *pidfd_out = pidfd;
    }
    return rep.result;
}
