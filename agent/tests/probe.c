/* Syscall probe for the container tests: makes each call with harmless
 * arguments and prints "<name> <errno name>" (or "<name> ok"). Built with
 * `cc -static` at test time and run inside a container. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif

static void report(const char *name, long ret) {
    int e = errno;
    if (ret >= 0) {
        printf("%s ok\n", name);
    } else {
        const char *n = e == EPERM ? "EPERM" : e == ENOSYS ? "ENOSYS" : e == EINVAL ? "EINVAL" : e == EFAULT ? "EFAULT" : "other";
        printf("%s %s\n", name, n);
    }
}

#define PROBE(name, ...) do { errno = 0; report(name, syscall(__VA_ARGS__)); } while (0)

int main(void) {
    PROBE("keyctl", SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* session */, 0);
    PROBE("add_key", SYS_add_key, "user", "probe", "x", 1, -3);
    PROBE("request_key", SYS_request_key, "user", "probe", NULL, 0);
    PROBE("bpf", SYS_bpf, 0, NULL, 0);
    PROBE("perf_event_open", SYS_perf_event_open, NULL, 0, -1, -1, 0);
    PROBE("userfaultfd", SYS_userfaultfd, 0);
    PROBE("kexec_load", SYS_kexec_load, 0, 0, NULL, 0);
    PROBE("init_module", SYS_init_module, NULL, 0, "");
    PROBE("reboot", SYS_reboot, 0, 0, 0, NULL);
    PROBE("swapon", SYS_swapon, "/nonexistent", 0);
    PROBE("clock_settime", SYS_clock_settime, 0, NULL);
    PROBE("acct", SYS_acct, NULL);
    PROBE("iopl", SYS_iopl, 3);
    PROBE("io_uring_setup", SYS_io_uring_setup, 1, NULL);
    PROBE("open_by_handle_at", SYS_open_by_handle_at, -1, NULL, 0);
    PROBE("unshare_user", SYS_unshare, CLONE_NEWUSER);
    PROBE("socket_vsock", SYS_socket, AF_VSOCK, SOCK_STREAM, 0);
    PROBE("x32_keyctl", 0x40000000 | SYS_keyctl, 0, -3, 0);
    PROBE("clone3", SYS_clone3, NULL, 0);
    /* Allowed, for contrast. */
    PROBE("getpid", SYS_getpid);
    PROBE("socket_unix", SYS_socket, AF_UNIX, SOCK_STREAM, 0);
    return 0;
}
