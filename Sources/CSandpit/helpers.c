// Helpers that need C for structs, variadic ioctls or a private thread.
#define _GNU_SOURCE
#include "csandpit.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <pthread.h>
#include <sched.h>
#include <seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/capability.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

struct sp_netfiles_arg {
    int nsfd;
    const char *const *names;
    size_t nnames;
    char *buf;
    size_t len;
    ssize_t result;
};

// Appends the whole of `path` to buf at *off (at most len - *off bytes). 0 or -errno.
static int sp_append_file(const char *path, char *buf, size_t len, size_t *off) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    for (;;) {
        if (*off >= len) break;
        ssize_t n = read(fd, buf + *off, len - *off);
        if (n < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            close(fd);
            return -e;
        }
        if (n == 0) break;
        *off += (size_t)n;
    }
    close(fd);
    return 0;
}

static void *sp_netfiles_thread(void *p) {
    struct sp_netfiles_arg *a = p;
    // setns(CLONE_NEWNET) changes only this thread; /proc/thread-self/net follows it.
    if (setns(a->nsfd, CLONE_NEWNET) < 0) {
        a->result = -errno;
        return NULL;
    }
    size_t off = 0;
    for (size_t i = 0; i < a->nnames; i++) {
        char path[128];
        snprintf(path, sizeof path, "/proc/thread-self/net/%s", a->names[i]);
        int r = sp_append_file(path, a->buf, a->len, &off);
        if (r < 0 && r != -ENOENT) {
            a->result = r;
            return NULL;
        }
        if (off < a->len) a->buf[off++] = 0;  // separator: each file's text ends with a NUL
    }
    a->result = (ssize_t)off;
    return NULL;
}

ssize_t sp_read_net_files_in_ns(int nsfd, const char *const *names, size_t nnames, char *buf, size_t len) {
    struct sp_netfiles_arg a = {nsfd, names, nnames, buf, len, -EIO};
    pthread_t t;
    int e = pthread_create(&t, NULL, sp_netfiles_thread, &a);
    if (e != 0) return -e;
    pthread_join(t, NULL);
    return a.result;
}

ssize_t sp_read_netdev_in_ns(int nsfd, char *buf, size_t len) {
    static const char *const dev[] = {"dev"};
    ssize_t n = sp_read_net_files_in_ns(nsfd, dev, 1, buf, len);
    return n > 0 ? n - 1 : n;  // without the separator
}

// Denies `nr` when its argument `arg` (an int in the kernel) is any value below
// `below` that is not in allowed[], or any value >= `below` (64-bit compare: an
// int argument with garbage in its upper half is denied too, since the kernel
// would truncate it to something the masked comparisons did not see).
static int sp_deny_int_arg_except(scmp_filter_ctx ctx, int nr, unsigned int arg, const int *allowed, size_t nallowed,
                                  int below, int err, const struct scmp_arg_cmp *also) {
    int rc;
    for (int v = 0; v < below; v++) {
        int ok = 0;
        for (size_t i = 0; i < nallowed; i++) ok |= allowed[i] == v;
        if (ok) continue;
        struct scmp_arg_cmp c = SCMP_CMP(arg, SCMP_CMP_MASKED_EQ, 0xffffffffULL, (uint64_t)v);
        rc = also ? seccomp_rule_add(ctx, SCMP_ACT_ERRNO(err), nr, 2, *also, c)
                  : seccomp_rule_add(ctx, SCMP_ACT_ERRNO(err), nr, 1, c);
        if (rc < 0) return rc;
    }
    struct scmp_arg_cmp c = SCMP_CMP(arg, SCMP_CMP_GE, (uint64_t)below);
    rc = also ? seccomp_rule_add(ctx, SCMP_ACT_ERRNO(err), nr, 2, *also, c)
              : seccomp_rule_add(ctx, SCMP_ACT_ERRNO(err), nr, 1, c);
    return rc;
}

int sp_seccomp_build(const char *const *denied, size_t ndenied, uint64_t clone_ns_mask, int deny_errno,
                     const int *families, size_t nfamilies, const int *netlink_protocols, size_t nnetlink,
                     void **out, size_t *out_bytes) {
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (!ctx) return -ENOMEM;
    int rc = 0;
    // Syscalls of another ABI (i386 via int 0x80, x32) match no native rule:
    // they must not slip through, so every one of them is denied.
    if ((rc = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_ERRNO(deny_errno))) < 0) goto out;
    for (size_t i = 0; i < ndenied; i++) {
        int nr = seccomp_syscall_resolve_name(denied[i]);
        if (nr == __NR_SCMP_ERROR) continue;  // unknown on this architecture
        if ((rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(deny_errno), nr, 0)) < 0) goto out;
    }
    for (int bit = 0; bit < 64; bit++) {
        uint64_t f = 1ULL << bit;
        if (!(clone_ns_mask & f)) continue;
        if ((rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(deny_errno), SCMP_SYS(clone), 1,
                                   SCMP_A0(SCMP_CMP_MASKED_EQ, f, f))) < 0)
            goto out;
    }
    // socket() and socketpair() only for the allowed address families (every other
    // family, AF_VSOCK first, reaches kernel code no network namespace confines);
    // netlink only for the allowed protocols.
    if (nfamilies > 0) {
        if ((rc = sp_deny_int_arg_except(ctx, SCMP_SYS(socket), 0, families, nfamilies, 64, EAFNOSUPPORT, NULL)) < 0) goto out;
        if ((rc = sp_deny_int_arg_except(ctx, SCMP_SYS(socketpair), 0, families, nfamilies, 64, EAFNOSUPPORT, NULL)) < 0) goto out;
        struct scmp_arg_cmp netlink = SCMP_CMP(0, SCMP_CMP_MASKED_EQ, 0xffffffffULL, 16 /* AF_NETLINK */);
        if ((rc = sp_deny_int_arg_except(ctx, SCMP_SYS(socket), 2, netlink_protocols, nnetlink, 32, EPROTONOSUPPORT,
                                         &netlink)) < 0)
            goto out;
    }
    // clone3 passes its flags in memory that seccomp cannot read: make libc fall back to clone().
    if ((rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0)) < 0) goto out;

    int fd = memfd_create("sandpit-seccomp", MFD_CLOEXEC);
    if (fd < 0) { rc = -errno; goto out; }
    if ((rc = seccomp_export_bpf(ctx, fd)) < 0) { close(fd); goto out; }
    off_t size = lseek(fd, 0, SEEK_END);
    void *buf = malloc((size_t)size);
    if (!buf) { close(fd); rc = -ENOMEM; goto out; }
    if (pread(fd, buf, (size_t)size, 0) != size) { free(buf); close(fd); rc = -EIO; goto out; }
    close(fd);
    *out = buf;
    *out_bytes = (size_t)size;
    rc = (int)(size / 8);
out:
    seccomp_release(ctx);
    return rc;
}

int sp_loop_attach(int backing_fd, int *index) {
    int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    if (ctl < 0) return -errno;
    for (int attempt = 0; attempt < 64; attempt++) {
        int n = ioctl(ctl, LOOP_CTL_GET_FREE);
        if (n < 0) { int e = errno; close(ctl); return -e; }
        char path[64];
        snprintf(path, sizeof path, "/dev/loop%d", n);
        int lfd = open(path, O_RDWR | O_CLOEXEC);
        if (lfd < 0) {
            if (errno == ENOENT) continue;  // node not created yet by devtmpfs
            int e = errno; close(ctl); return -e;
        }
        struct loop_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.fd = (unsigned int)backing_fd;
        cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR;
        if (ioctl(lfd, LOOP_CONFIGURE, &cfg) == 0) {
            close(ctl);
            *index = n;
            return lfd;
        }
        int e = errno;
        close(lfd);
        if (e != EBUSY) { close(ctl); return -e; }  // EBUSY: another run took it first
    }
    close(ctl);
    return -EBUSY;
}

int sp_last_cap(void) {
    int n = (int)cap_max_bits();
    return n > 0 ? n - 1 : 40;
}

int sp_seccomp_available(void) {
    // PR_GET_SECCOMP answers 0 when seccomp is built in and not yet in use.
    return prctl(PR_GET_SECCOMP, 0, 0, 0, 0) >= 0;
}

int sp_copy_sparse(int from_fd, int to_fd, uint64_t size) {
    off_t pos = 0;
    for (;;) {
        off_t data = lseek(from_fd, pos, SEEK_DATA);
        if (data < 0) {
            if (errno == ENXIO) break;
            return -errno;
        }
        off_t hole = lseek(from_fd, data, SEEK_HOLE);
        if (hole < 0) return -errno;
        off_t in = data, outp = data;
        while (in < hole) {
            ssize_t n = copy_file_range(from_fd, &in, to_fd, &outp, (size_t)(hole - in), 0);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && (errno == EXDEV || errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL)) {
                /* The two files are on filesystems copy_file_range cannot join (before
                   Linux 6.2 or through overlayfs, e.g. a template in an overlay's lower
                   layer and the image in its upper one): copy through a buffer. */
                char buf[65536];
                size_t want = (size_t)(hole - in) < sizeof buf ? (size_t)(hole - in) : sizeof buf;
                ssize_t r = pread(from_fd, buf, want, in);
                if (r < 0 && errno == EINTR) continue;
                if (r <= 0) return r < 0 ? -errno : -EIO;
                for (ssize_t done = 0; done < r;) {
                    ssize_t w = pwrite(to_fd, buf + done, (size_t)(r - done), outp + done);
                    if (w < 0 && errno == EINTR) continue;
                    if (w <= 0) return w < 0 ? -errno : -EIO;
                    done += w;
                }
                in += r;
                outp += r;
                continue;
            }
            if (n < 0) return -errno;
            if (n == 0) break;
        }
        pos = hole;
    }
    if (ftruncate(to_fd, (off_t)size) < 0) return -errno;
    return 0;
}

int sp_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC) < 0 ? -errno : 0; }

int sp_memfd(const char *name) { int fd = memfd_create(name, MFD_CLOEXEC); return fd < 0 ? -errno : fd; }

uint64_t sp_sandbox_ns_flags(void) {
    return CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS;
}

int sp_open_tmpfile(const char *dir) {
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR)) return fd < 0 ? -errno : fd;
    /* The filesystem has no O_TMPFILE (overlayfs before Linux 6.6, 9p, some FUSE):
       a named file, unlinked at once. A crash between the two leaves a ".img-" file
       that the start-up sweep removes. */
    char path[4096];
    if (snprintf(path, sizeof path, "%s/.img-XXXXXX", dir) >= (int)sizeof path) return -ENAMETOOLONG;
    fd = mkostemp(path, O_CLOEXEC);
    if (fd < 0) return -errno;
    if (unlink(path) < 0) { int e = errno; close(fd); return -e; }
    return fd;
}

#ifndef FSCONFIG_SET_STRING
#define FSCONFIG_SET_FLAG 0
#define FSCONFIG_SET_STRING 1
#define FSCONFIG_CMD_CREATE 6
#endif
#define SP_FSOPEN_CLOEXEC 0x1
#define SP_FSMOUNT_CLOEXEC 0x1
#define SP_MOUNT_ATTR_NOSUID 0x2
#define SP_MOUNT_ATTR_NODEV 0x4

int sp_mount_detached_ext4(const char *dev) {
    int fs = (int)syscall(SYS_fsopen, "ext4", SP_FSOPEN_CLOEXEC);
    if (fs < 0) return -errno;
    // The filesystem lives for one run and its image is anonymous: no cache flushes
    // to the backing file (nobarrier: the unmount would fsync the loop's file, i.e.
    // real disk writes) and no background zeroing of inode tables (noinit_itable).
    // Both are optimisations: a kernel that rejects them still gets a working mount.
    (void)syscall(SYS_fsconfig, fs, FSCONFIG_SET_FLAG, "nobarrier", NULL, 0);
    (void)syscall(SYS_fsconfig, fs, FSCONFIG_SET_FLAG, "noinit_itable", NULL, 0);
    if (syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, "source", dev, 0) < 0 ||
        syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) {
        int e = errno;
        close(fs);
        return -e;
    }
    int m = (int)syscall(SYS_fsmount, fs, SP_FSMOUNT_CLOEXEC, SP_MOUNT_ATTR_NOSUID | SP_MOUNT_ATTR_NODEV);
    int e = errno;
    close(fs);
    return m < 0 ? -e : m;
}

int sp_create_file_at(int dirfd, const char *path, unsigned int mode) {
    int fd = openat(dirfd, path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    return fd < 0 ? -errno : fd;
}

#include <net/if.h>
#include <sys/socket.h>

static void *sp_netns_thread(void *p) {
    int *out = p;
    if (unshare(CLONE_NEWNET) < 0) { *out = -errno; return NULL; }
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock >= 0) {
        struct ifreq ifr;
        memset(&ifr, 0, sizeof ifr);
        memcpy(ifr.ifr_name, "lo", 3);
        if (ioctl(sock, SIOCGIFFLAGS, &ifr) == 0) {
            ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
            (void)ioctl(sock, SIOCSIFFLAGS, &ifr);
        }
        close(sock);
    }
    int fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    *out = fd < 0 ? -errno : fd;
    return NULL;
}

int sp_new_netns(void) {
    int result = -EIO;
    pthread_t t;
    int e = pthread_create(&t, NULL, sp_netns_thread, &result);
    if (e != 0) return -e;
    pthread_join(t, NULL);
    return result;
}

#include <sys/statfs.h>
int64_t sp_inodes_in_use(int fd) {
    struct statfs st;
    if (fstatfs(fd, &st) < 0) return -errno;
    return (int64_t)(st.f_files - st.f_ffree);
}

// From <linux/fs.h>, which clashes with <sys/mount.h>.
struct sp_fstrim_range {
    uint64_t start, len, minlen;
};
#define SP_FITRIM _IOWR('X', 121, struct sp_fstrim_range)

int64_t sp_fitrim(int dirfd) {
    int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -errno;
    struct sp_fstrim_range r;
    memset(&r, 0, sizeof r);
    r.len = UINT64_MAX;
    int rc = ioctl(fd, SP_FITRIM, &r);
    int e = errno;
    close(fd);
    return rc < 0 ? -e : (int64_t)r.len;
}
