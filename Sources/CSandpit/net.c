// Network attachment of a run: the veth pair (rtnetlink), the addresses and routes
// on both ends (ioctl, inside the run's namespace from a thread of its own), and
// the host's filter through libnftables (loaded when the first run with network
// starts, so hosts that never allow network need not have it).
#define _GNU_SOURCE
#include "csandpit.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_link.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

// ---- rtnetlink ----

typedef struct {
    struct nlmsghdr h;
    char buf[1024];
} sp_nlreq;

static struct rtattr *nl_add(sp_nlreq *r, unsigned short type, const void *data, size_t len) {
    struct rtattr *a = (struct rtattr *)((char *)&r->h + NLMSG_ALIGN(r->h.nlmsg_len));
    a->rta_type = type;
    a->rta_len = (unsigned short)RTA_LENGTH(len);
    if (len) memcpy(RTA_DATA(a), data, len);
    r->h.nlmsg_len = NLMSG_ALIGN(r->h.nlmsg_len) + RTA_ALIGN(a->rta_len);
    return a;
}

static void nl_end(sp_nlreq *r, struct rtattr *nest) {
    nest->rta_len = (unsigned short)((char *)&r->h + r->h.nlmsg_len - (char *)nest);
}

/// Sends one request and waits for its acknowledgement: 0 or -errno.
static int nl_talk_proto(sp_nlreq *r, int proto) {
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, proto);
    if (fd < 0) return -errno;
    struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
    r->h.nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
    r->h.nlmsg_seq = 1;
    if (sendto(fd, &r->h, r->h.nlmsg_len, 0, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    char buf[4096];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            close(fd);
            return -e;
        }
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (unsigned)n); h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_type == NLMSG_ERROR) {
                struct nlmsgerr *e = NLMSG_DATA(h);
                close(fd);
                return e->error;  // 0 = ack
            }
        }
    }
}

static int nl_talk(sp_nlreq *r) { return nl_talk_proto(r, NETLINK_ROUTE); }

int sp_veth_create(const char *host_name, const char *peer_name, int peer_netns_fd) {
    if (strlen(host_name) >= IFNAMSIZ || strlen(peer_name) >= IFNAMSIZ) return -ENAMETOOLONG;
    sp_nlreq r;
    memset(&r, 0, sizeof r);
    r.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifinfomsg));
    r.h.nlmsg_type = RTM_NEWLINK;
    r.h.nlmsg_flags = NLM_F_CREATE | NLM_F_EXCL;
    nl_add(&r, IFLA_IFNAME, host_name, strlen(host_name) + 1);
    struct rtattr *info = nl_add(&r, IFLA_LINKINFO, NULL, 0);
    nl_add(&r, IFLA_INFO_KIND, "veth", 4);
    struct rtattr *data = nl_add(&r, IFLA_INFO_DATA, NULL, 0);
    struct rtattr *peer = nl_add(&r, VETH_INFO_PEER, NULL, 0);
    // The peer's attributes follow its own ifinfomsg.
    r.h.nlmsg_len = NLMSG_ALIGN(r.h.nlmsg_len) + (unsigned)NLMSG_ALIGN(sizeof(struct ifinfomsg));
    nl_add(&r, IFLA_IFNAME, peer_name, strlen(peer_name) + 1);
    uint32_t nsfd = (uint32_t)peer_netns_fd;
    nl_add(&r, IFLA_NET_NS_FD, &nsfd, sizeof nsfd);
    nl_end(&r, peer);
    nl_end(&r, data);
    nl_end(&r, info);
    return nl_talk(&r);
}

int sp_link_delete(const char *name) {
    unsigned idx = if_nametoindex(name);
    if (idx == 0) return -errno;
    sp_nlreq r;
    memset(&r, 0, sizeof r);
    r.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifinfomsg));
    r.h.nlmsg_type = RTM_DELLINK;
    struct ifinfomsg *ifi = NLMSG_DATA(&r.h);
    ifi->ifi_family = AF_UNSPEC;
    ifi->ifi_index = (int)idx;
    return nl_talk(&r);
}

#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>

int sp_conntrack_flush_mark(uint32_t mark) {
    // A delete without a tuple flushes, filtered by CTA_MARK/CTA_MARK_MASK.
    sp_nlreq r;
    memset(&r, 0, sizeof r);
    r.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct nfgenmsg));
    r.h.nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE;
    struct nfgenmsg *g = NLMSG_DATA(&r.h);
    g->nfgen_family = AF_INET;
    g->version = NFNETLINK_V0;
    uint32_t m = htonl(mark), mask = 0xffffffffu;
    nl_add(&r, CTA_MARK, &m, sizeof m);
    nl_add(&r, CTA_MARK_MASK, &mask, sizeof mask);
    return nl_talk_proto(&r, NETLINK_NETFILTER);
}

// ---- addresses, routes (ioctl) ----

static int write_text(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    ssize_t n = write(fd, text, strlen(text));
    int e = errno;
    close(fd);
    return n < 0 ? -e : 0;
}

/// Address `addr`/`prefix` on `ifname`, the link up, IPv6 off on it (network byte order).
static int if_setup(int sock, const char *ifname, uint32_t addr, int prefix) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = addr;
    if (ioctl(sock, SIOCSIFADDR, &ifr) < 0) return -errno;
    sin->sin_addr.s_addr = prefix == 0 ? 0 : htonl(~0u << (32 - prefix));
    if (ioctl(sock, SIOCSIFNETMASK, &ifr) < 0) return -errno;
    char path[96];
    snprintf(path, sizeof path, "/proc/sys/net/ipv6/conf/%s/disable_ipv6", ifname);
    (void)write_text(path, "1");
    if (ioctl(sock, SIOCGIFFLAGS, &ifr) < 0) return -errno;
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(sock, SIOCSIFFLAGS, &ifr) < 0) return -errno;
    return 0;
}

int sp_net_host_side(const char *ifname, uint32_t addr, int prefix) {
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0) return -errno;
    int rc = if_setup(sock, ifname, addr, prefix);
    close(sock);
    // (no reverse-path filter: the run's chain drops forged sources itself, and counts them)
    return rc;
}

typedef struct {
    int netns_fd;
    const char *ifname;
    uint32_t addr, gateway;
    int prefix;
    int dns_fd;
    int result;
} sp_inside_args;

static void *inside_thread(void *p) {
    sp_inside_args *a = p;
    a->dns_fd = -1;
    if (setns(a->netns_fd, CLONE_NEWNET) < 0) { a->result = -errno; return NULL; }
    (void)write_text("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1");
    (void)write_text("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0) { a->result = -errno; return NULL; }
    int rc = if_setup(sock, a->ifname, a->addr, a->prefix);
    if (rc == 0) {
        struct rtentry rt;
        memset(&rt, 0, sizeof rt);
        struct sockaddr_in *dst = (struct sockaddr_in *)&rt.rt_dst, *gw = (struct sockaddr_in *)&rt.rt_gateway,
                           *mask = (struct sockaddr_in *)&rt.rt_genmask;
        dst->sin_family = gw->sin_family = mask->sin_family = AF_INET;
        gw->sin_addr.s_addr = a->gateway;
        rt.rt_flags = RTF_UP | RTF_GATEWAY;
        if (ioctl(sock, SIOCADDRT, &rt) < 0) rc = -errno;
    }
    close(sock);
    if (rc == 0) {
        // The run's resolver: 127.0.0.1:53 in its own namespace, answered by sandpit.
        // Port 53 is privileged; a process without CAP_NET_BIND_SERVICE (the systemd
        // unit's bounding set has none) lowers the bar in this namespace only, binds,
        // and puts it back.
        int d = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(53)};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int lowered = write_text("/proc/sys/net/ipv4/ip_unprivileged_port_start", "53") == 0;
        int b = d < 0 ? -1 : bind(d, (struct sockaddr *)&sa, sizeof sa);
        int e = errno;
        if (lowered) (void)write_text("/proc/sys/net/ipv4/ip_unprivileged_port_start", "1024");
        if (d < 0 || b < 0) {
            rc = -e;
            if (d >= 0) close(d);
        } else {
            a->dns_fd = d;
        }
    }
    a->result = rc;
    return NULL;
}

int sp_net_inside(int netns_fd, const char *ifname, uint32_t addr, int prefix, uint32_t gateway, int *dns_fd) {
    sp_inside_args a = {.netns_fd = netns_fd, .ifname = ifname, .addr = addr, .gateway = gateway, .prefix = prefix,
                        .dns_fd = -1, .result = -EIO};
    pthread_t t;
    int e = pthread_create(&t, NULL, inside_thread, &a);
    if (e != 0) return -e;
    pthread_join(t, NULL);
    *dns_fd = a.dns_fd;
    return a.result;
}

// ---- libnftables ----

static void *(*nft_ctx_new_p)(uint32_t);
static void (*nft_ctx_free_p)(void *);
static int (*nft_run_cmd_from_buffer_p)(void *, const char *);
static int (*nft_ctx_buffer_output_p)(void *);
static int (*nft_ctx_buffer_error_p)(void *);
static const char *(*nft_ctx_get_output_buffer_p)(void *);
static const char *(*nft_ctx_get_error_buffer_p)(void *);
static void (*nft_ctx_output_set_flags_p)(void *, unsigned int);
static pthread_once_t nft_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t nft_lock = PTHREAD_MUTEX_INITIALIZER;
static int nft_loaded;

static void nft_load(void) {
    void *h = dlopen("libnftables.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) return;
    nft_ctx_new_p = dlsym(h, "nft_ctx_new");
    nft_ctx_free_p = dlsym(h, "nft_ctx_free");
    nft_run_cmd_from_buffer_p = dlsym(h, "nft_run_cmd_from_buffer");
    nft_ctx_buffer_output_p = dlsym(h, "nft_ctx_buffer_output");
    nft_ctx_buffer_error_p = dlsym(h, "nft_ctx_buffer_error");
    nft_ctx_get_output_buffer_p = dlsym(h, "nft_ctx_get_output_buffer");
    nft_ctx_get_error_buffer_p = dlsym(h, "nft_ctx_get_error_buffer");
    nft_ctx_output_set_flags_p = dlsym(h, "nft_ctx_output_set_flags");
    nft_loaded = nft_ctx_new_p && nft_ctx_free_p && nft_run_cmd_from_buffer_p && nft_ctx_buffer_output_p &&
                 nft_ctx_buffer_error_p && nft_ctx_get_output_buffer_p && nft_ctx_get_error_buffer_p &&
                 nft_ctx_output_set_flags_p;
}

int sp_nft_available(void) {
    pthread_once(&nft_once, nft_load);
    return nft_loaded;
}

#define SP_NFT_JSON (1u << 4)  // NFT_CTX_OUTPUT_JSON

int sp_nft_run(const char *commands, int json, char **output, char **error) {
    *output = NULL;
    *error = NULL;
    if (!sp_nft_available()) return -ENOSYS;
    pthread_mutex_lock(&nft_lock);
    void *ctx = nft_ctx_new_p(0);
    if (!ctx) {
        pthread_mutex_unlock(&nft_lock);
        return -ENOMEM;
    }
    if (json) nft_ctx_output_set_flags_p(ctx, SP_NFT_JSON);
    nft_ctx_buffer_output_p(ctx);
    nft_ctx_buffer_error_p(ctx);
    int rc = nft_run_cmd_from_buffer_p(ctx, commands);
    const char *o = nft_ctx_get_output_buffer_p(ctx), *e = nft_ctx_get_error_buffer_p(ctx);
    *output = strdup(o ? o : "");
    *error = strdup(e ? e : "");
    pthread_mutex_unlock(&nft_lock);
    // (closing the context's socket after a deletion waits for the kernel's RCU grace
    // period: outside the lock, so that other runs' commands do not queue behind it)
    nft_ctx_free_p(ctx);
    return rc == 0 ? 0 : -EINVAL;
}

typedef struct {
    int netns_fd;
    const char *commands;
    char *output, *error;
    int result;
} sp_nft_in_args;

static void *nft_in_thread(void *p) {
    sp_nft_in_args *a = p;
    if (setns(a->netns_fd, CLONE_NEWNET) < 0) { a->result = -errno; return NULL; }
    a->result = sp_nft_run(a->commands, 0, &a->output, &a->error);
    return NULL;
}

int sp_nft_run_in(int netns_fd, const char *commands, char **output, char **error) {
    sp_nft_in_args a = {.netns_fd = netns_fd, .commands = commands, .result = -EIO};
    *output = NULL;
    *error = NULL;
    pthread_t t;
    int e = pthread_create(&t, NULL, nft_in_thread, &a);
    if (e != 0) return -e;
    pthread_join(t, NULL);
    *output = a.output;
    *error = a.error;
    return a.result;
}
