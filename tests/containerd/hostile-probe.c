/* What a hostile container tries, for husk-scenarios.sh.
 *
 * hostile-probe vsock CID PORT: connects to vsock CID:PORT and sends one ttrpc request
 * (grpc.Health/Check, what the host's health check sends). Prints one line:
 *   "CID <cid>: refused (<error>)"   connect failed
 *   "CID <cid>: closed"              connected, but the peer closed without answering
 *   "CID <cid>: answered"            a ttrpc response came back
 *   "CID <cid>: silent"              nothing within 5 s
 *
 * hostile-probe xattr PATH NAME: sets extended attribute NAME on PATH; prints "ok" or the error. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static int probe_xattr(const char *path, const char *name) {
    if (setxattr(path, name, "x", 1, 0) == 0)
        printf("ok\n");
    else
        printf("%s\n", strerror(errno));
    return 0;
}

static int probe_vsock(const char *cid_arg, const char *port_arg) {
    unsigned cid = (unsigned)strtoul(cid_arg, NULL, 0);
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0) {
        printf("CID %u: refused (socket: %s)\n", cid, strerror(errno));
        return 0;
    }
    struct sockaddr_vm addr = {0};
    addr.svm_family = AF_VSOCK;
    addr.svm_cid = cid;
    addr.svm_port = (unsigned)strtoul(port_arg, NULL, 0);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        printf("CID %u: refused (%s)\n", cid, strerror(errno));
        return 0;
    }
    /* ttrpc frame: length (4, big endian), stream id (4), type 1 = request, flags 0; then a
     * Request message: service "grpc.Health", method "Check", empty payload. */
    static const unsigned char body[] = {
        0x0a, 11, 'g', 'r', 'p', 'c', '.', 'H', 'e', 'a', 'l', 't', 'h',
        0x12, 5, 'C', 'h', 'e', 'c', 'k',
        0x1a, 0,
    };
    unsigned char frame[10 + sizeof body] = {0, 0, 0, sizeof body, 0, 0, 0, 1, 1, 0};
    memcpy(frame + 10, body, sizeof body);
    if (write(fd, frame, sizeof frame) < 0) {
        printf("CID %u: closed\n", cid);
        return 0;
    }
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 5000) <= 0) {
        printf("CID %u: silent\n", cid);
        return 0;
    }
    unsigned char head[10];
    ssize_t n = read(fd, head, sizeof head);
    if (n == (ssize_t)sizeof head && head[8] == 2)
        printf("CID %u: answered\n", cid);
    else
        printf("CID %u: closed\n", cid);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "vsock") == 0)
        return probe_vsock(argv[2], argv[3]);
    if (argc == 4 && strcmp(argv[1], "xattr") == 0)
        return probe_xattr(argv[2], argv[3]);
    fprintf(stderr, "usage: hostile-probe vsock CID PORT | xattr PATH NAME\n");
    return 2;
}
