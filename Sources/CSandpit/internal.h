// Declarations shared between the C files of CSandpit, not part of its Swift interface.
#ifndef CSANDPIT_INTERNAL_H
#define CSANDPIT_INTERNAL_H
#include "csandpit.h"

/// In a warm template: called in the program's process instead of execve (after every
/// step of the sandbox: uid, capabilities, no_new_privs, seccomp). Never returns.
extern void (*sp_program_hook)(const sp_launch_spec *s);

/// Unshares a mount namespace and mounts the read-only overlay of "/" at `view` (see
/// zygote.c). Returns 1 when the calling process is in a mount namespace of its own.
int sp_zygote_view(const char *view, const char *empty);

/// The zygote's loop on `sock`: receives launch specs, clones each init with
/// CLONE_PARENT, answers with its pidfd. `before` / `after` (may be NULL) run around each
/// clone. Exits the process when the socket closes.
_Noreturn void sp_zygote_serve(int sock, void (*before)(void), void (*after)(void));

/// Spawns `exe` with `argv` and `envp`, its end of a new SOCK_SEQPACKET pair as fd 3,
/// an empty signal mask and default dispositions. Returns our end or -errno.
int sp_spawn_helper(const char *exe, char *const argv[], char *const envp[], pid_t *pid_out);

#endif
