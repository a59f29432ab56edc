/* bakery's fork server for LLVM tools (bakery/bake/warm.py).
 *
 * A bake runs clang or opt once per module: GSL's 774 modules are about 950 processes. Each
 * start of Debian's clang-16 costs about 25 ms before any work (mapping and relocating
 * libLLVM and libclang-cpp, LLVM's static constructors). Preloaded into the tool, this file
 * takes over main() when BAKERY_FORKSERVER_FD names a socket: the tool is started once, and for
 * every request the already started process forks, and the child runs the tool's own main()
 * with the request's argv, cwd and standard streams. The children are what a fresh start
 * would be; only the start-up is shared.
 *
 * Protocol on a SOCK_SEQPACKET socket, one message each:
 *   server -> "bakery-forkserver 1" once, when ready;
 *   client -> "cwd\0argv0\0argv1\0...\0" with three file descriptors (SCM_RIGHTS): stdin,
 *             stdout and stderr of the child;
 *   server -> an int32: the child's exit status, or minus the signal that ended it.
 * The server ends when the client closes its end. Without BAKERY_FORKSERVER_FD the tool runs
 * as it always does.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

typedef int (*main_fn)(int, char **, char **);
typedef int (*start_fn)(main_fn, int, char **, void (*)(void), void (*)(void), void (*)(void), void *);

static main_fn real_main;
static char request[1 << 20];

static int serve(int sock) {
    static const char hello[] = "bakery-forkserver 1";
    if (send(sock, hello, sizeof hello - 1, MSG_NOSIGNAL) < 0) return 1;
    for (;;) {
        int fds[3];
        char control[CMSG_SPACE(sizeof fds)];
        struct iovec iov = {request, sizeof request - 1};
        struct msghdr msg;
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
        if (n == 0) return 0;  /* the client is done */
        if (n < 0) {
            if (errno == EINTR) continue;
            return 1;
        }
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        if ((msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || !c || c->cmsg_level != SOL_SOCKET ||
            c->cmsg_type != SCM_RIGHTS || c->cmsg_len != CMSG_LEN(sizeof fds) || request[n - 1] != 0)
            return 2;  /* not a request of ours: stop rather than guess */
        memcpy(fds, CMSG_DATA(c), sizeof fds);
        request[n] = 0;
        int argc = -1;  /* the first string is the cwd */
        for (ssize_t i = 0; i < n; i++) argc += request[i] == 0;
        char **argv = calloc((size_t)argc + 1, sizeof *argv);
        if (!argv || argc < 1) return 3;
        char *p = request, *cwd = p;
        p += strlen(p) + 1;
        for (int k = 0; k < argc; k++, p += strlen(p) + 1) argv[k] = p;
        pid_t pid = fork();
        if (pid == 0) {
            close(sock);
            for (int i = 0; i < 3; i++)
                if (dup2(fds[i], i) < 0) _exit(126);
            for (int i = 0; i < 3; i++)
                if (fds[i] > 2) close(fds[i]);
            if (chdir(cwd) != 0) _exit(126);
            exit(real_main(argc, argv, environ));  /* as a fresh start ends: atexit, static destructors */
        }
        for (int i = 0; i < 3; i++) close(fds[i]);
        free(argv);
        int32_t rc = 127;
        if (pid > 0) {
            int st = 0;
            while (waitpid(pid, &st, 0) < 0)
                if (errno != EINTR) break;
            rc = WIFEXITED(st) ? WEXITSTATUS(st) : WIFSIGNALED(st) ? -WTERMSIG(st) : 127;
        }
        if (send(sock, &rc, sizeof rc, MSG_NOSIGNAL) != sizeof rc) return 1;
    }
}

static int maybe_serve(int argc, char **argv, char **envp) {
    const char *fd = getenv("BAKERY_FORKSERVER_FD");
    if (!fd) return real_main(argc, argv, envp);
    int sock = atoi(fd);
    /* Nothing the children start is to be a server, or to preload this. */
    unsetenv("BAKERY_FORKSERVER_FD");
    unsetenv("LD_PRELOAD");
    return serve(sock);
}

int __libc_start_main(main_fn main, int argc, char **argv, void (*init)(void), void (*fini)(void),
                      void (*rtld_fini)(void), void *stack_end) {
    start_fn start = (start_fn)dlsym(RTLD_NEXT, "__libc_start_main");
    if (!start) return 127;
    real_main = main;
    return start(maybe_serve, argc, argv, init, fini, rtld_fini, stack_end);
}
