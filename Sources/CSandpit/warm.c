// Warm templates (see csandpit.h, SP_TEMPLATE_ARG): a copy of the sandpit executable
// that loads the host's libpython, imports a set of modules once, and then serves
// launch specs exactly as the zygote does. Each run's init is cloned from it, builds
// the run's sandbox as for a cold run (cgroup, namespaces, root, uid, capabilities,
// no_new_privs, seccomp), and its program process, instead of exec'ing python3, runs
// the user's file in the interpreter it inherited, through the agent's `run()`.
//
// The template runs no user code: between its start and its end it only imports the
// modules it was given and clones inits.
#define _GNU_SOURCE
#include "csandpit.h"
#include "internal.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
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

typedef void PyObject;

// The few entry points of libpython a template uses (resolved with dlsym: sandpit does
// not link libpython, and needs it only where warm templates are configured).
static struct {
    void (*InitializeEx)(int);
    int (*RunSimpleString)(const char *);
    PyObject *(*CompileStringExFlags)(const char *, const char *, int, void *, int);
    PyObject *(*ImportExecCodeModule)(const char *, PyObject *);
    PyObject *(*ImportModule)(const char *);
    PyObject *(*GetAttrString)(PyObject *, const char *);
    PyObject *(*BytesFromStringAndSize)(const char *, ssize_t);
    PyObject *(*CallOneArg)(PyObject *, PyObject *);
    void (*ErrPrint)(void);
    void (*BeforeFork)(void);
    void (*AfterForkParent)(void);
    void (*AfterForkChild)(void);
} py;

#define SP_PY_FILE_INPUT 257  // Py_file_input

static void sp_before(void) { py.BeforeFork(); }
static void sp_after(void) { py.AfterForkParent(); }

// The program's process of a warm run: every step of the sandbox is done (see
// sp_program_main). Hands argv and the environment to the agent as one bytes object:
// "NARGS NENV\0" then each string NUL-terminated.
static void sp_warm_program(const sp_launch_spec *s) {
    py.AfterForkChild();
    size_t na = 0, ne = 0, len = 32;
    for (; s->argv && s->argv[na]; na++) len += strlen(s->argv[na]) + 1;
    for (; s->envp && s->envp[ne]; ne++) len += strlen(s->envp[ne]) + 1;
    char *blob = malloc(len);
    if (!blob) _exit(127);
    size_t n = (size_t)snprintf(blob, 32, "%zu %zu", na, ne) + 1;
    for (size_t i = 0; i < na; i++) { size_t k = strlen(s->argv[i]) + 1; memcpy(blob + n, s->argv[i], k); n += k; }
    for (size_t i = 0; i < ne; i++) { size_t k = strlen(s->envp[i]) + 1; memcpy(blob + n, s->envp[i], k); n += k; }
    PyObject *mod = py.ImportModule("_sandpit_warm");
    PyObject *run = mod ? py.GetAttrString(mod, "run") : NULL;
    PyObject *arg = run ? py.BytesFromStringAndSize(blob, (ssize_t)n) : NULL;
    if (arg) (void)py.CallOneArg(run, arg);  // run() ends the process itself
    py.ErrPrint();
    _exit(120);
}

static _Noreturn void sp_template_fail(int sock, const char *what, const char *detail) {
    char msg[1024];
    int k = snprintf(msg, sizeof msg, "failed\n%s%s%s", what, detail ? ": " : "", detail ? detail : "");
    (void)send(sock, msg, k > 0 ? (size_t)k : 0, MSG_NOSIGNAL);
    _exit(1);
}

// argv: name, SP_TEMPLATE_ARG, fd, view, empty, libpython, modules (comma-separated),
// home (an empty directory), padding; the agent's source is SANDPIT_WARM_AGENT. The socket is fd 3, stderr the service's; everything else is closed.
__attribute__((constructor(103))) static void sp_template_ctor(int argc, char **argv, char **envp) {
    (void)envp;
    if (argc < 9 || !argv || !argv[1] || strcmp(argv[1], SP_TEMPLATE_ARG) != 0) return;
    const int sock = 3;
    (void)prctl(PR_SET_NAME, "sandpit-warm", 0, 0, 0);
    (void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    syscall(SYS_close_range, 4U, ~0U, 0);
    int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (nul >= 0) {
        dup2(nul, 0);
        dup2(nul, 1);
        if (nul > 3) close(nul);
    }
    for (const char *p = argv[6]; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_' || *p == '.' || *p == ','))
            sp_template_fail(sock, "bad module list", argv[6]);
    // Its own mount namespace: the view of the host root that runs bind from (as the
    // zygote's), and a private home for what imports cache (matplotlib's font list),
    // gone with the namespace.
    int own = argv[3][0] == '/' && argv[4][0] == '/' && sp_zygote_view(argv[3], argv[4]);
    if (own && argv[7][0] == '/' && mount("tmpfs", argv[7], "tmpfs", MS_NOSUID | MS_NODEV, "size=64m,mode=700") == 0) {
        setenv("HOME", argv[7], 1);
        char mpl[4200];
        snprintf(mpl, sizeof mpl, "%s/matplotlib", argv[7]);
        setenv("MPLCONFIGDIR", mpl, 1);
        setenv("TMPDIR", argv[7], 1);
    } else {
        setenv("HOME", "/nonexistent", 1);
    }

    void *h = dlopen(argv[5], RTLD_NOW | RTLD_GLOBAL);
    if (!h) sp_template_fail(sock, "dlopen", dlerror());
#define SP_SYM(field, name)                                                   \
    do {                                                                      \
        *(void **)&py.field = dlsym(h, name);                                 \
        if (!py.field) sp_template_fail(sock, "libpython lacks", name);       \
    } while (0)
    SP_SYM(InitializeEx, "Py_InitializeEx");
    SP_SYM(RunSimpleString, "PyRun_SimpleString");
    SP_SYM(CompileStringExFlags, "Py_CompileStringExFlags");
    SP_SYM(ImportExecCodeModule, "PyImport_ExecCodeModule");
    SP_SYM(ImportModule, "PyImport_ImportModule");
    SP_SYM(GetAttrString, "PyObject_GetAttrString");
    SP_SYM(BytesFromStringAndSize, "PyBytes_FromStringAndSize");
    SP_SYM(CallOneArg, "PyObject_CallOneArg");
    SP_SYM(ErrPrint, "PyErr_Print");
    SP_SYM(BeforeFork, "PyOS_BeforeFork");
    SP_SYM(AfterForkParent, "PyOS_AfterFork_Parent");
    SP_SYM(AfterForkChild, "PyOS_AfterFork_Child");
#undef SP_SYM

    py.InitializeEx(1);
    const char *agent = getenv("SANDPIT_WARM_AGENT");
    if (!agent) sp_template_fail(sock, "no agent", NULL);
    PyObject *code = py.CompileStringExFlags(agent, "<sandpit-warm>", SP_PY_FILE_INPUT, NULL, -1);
    if (!code || !py.ImportExecCodeModule("_sandpit_warm", code)) {
        py.ErrPrint();
        sp_template_fail(sock, "the warm agent did not load", NULL);
    }
    // preload() imports the modules, checks that no thread was started, and sends the
    // ready message (or raises: the traceback goes to the service's stderr).
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "import _sandpit_warm\n_sandpit_warm.preload('%.4000s', %d)\n", argv[6], sock);
    if (py.RunSimpleString(cmd) != 0) sp_template_fail(sock, "import failed", argv[6]);
    sp_program_hook = sp_warm_program;
    sp_zygote_serve(sock, sp_before, sp_after);
}

int sp_template_start(const char *exe, const char *view, const char *empty, const char *libpython,
                      const char *modules, const char *agent, const char *home, const char *pythonpath,
                      pid_t *pid_out) {
    size_t alen = strlen(agent) + 32, plen = strlen(pythonpath ? pythonpath : "") + 16;
    char *agentvar = malloc(alen), *pathvar = malloc(plen);
    if (!agentvar || !pathvar) {
        free(agentvar);
        free(pathvar);
        return -ENOMEM;
    }
    snprintf(agentvar, alen, "SANDPIT_WARM_AGENT=%s", agent);
    snprintf(pathvar, plen, "PYTHONPATH=%s", pythonpath ? pythonpath : "");
    // The last argument leaves room in the argument area for a run's argv (see
    // sp_warm_identity); the agent's source travels in the environment, whose area
    // becomes the run's environment's.
    char pad[257];
    memset(pad, ' ', 256);
    pad[256] = 0;
    char *const argv[] = {"sandpit-warm", SP_TEMPLATE_ARG, "3", (char *)(view ? view : ""), (char *)(empty ? empty : ""),
                          (char *)libpython, (char *)modules, (char *)(home ? home : ""), pad, NULL};
    // What a template's imports see. One thread for BLAS and OpenMP: a pool started at
    // import would make the template multithreaded, and a fork keeps only one thread.
    char *const envp[] = {"PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", "PYTHONNOUSERSITE=1",
                          "PYTHONDONTWRITEBYTECODE=1", "OPENBLAS_NUM_THREADS=1", "OMP_NUM_THREADS=1",
                          "MKL_NUM_THREADS=1", "NUMEXPR_NUM_THREADS=1", "MPLBACKEND=Agg", agentvar,
                          pythonpath && *pythonpath ? pathvar : NULL, NULL};
    int r = sp_spawn_helper(exe, argv, envp, pid_out);
    free(agentvar);
    free(pathvar);
    return r;
}
