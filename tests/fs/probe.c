/* A static helper for the virtio-fs tests, run inside the guest from the share itself (the
 * guest's busybox has no xattr or mmap tools).
 *   probe xattr FILE   set, get, list and remove a trusted.* xattr (user.* needs host file-system support
 *                     that tmpfs in the test host lacks); exit 0 on success
 *   probe mmap FILE    write "mmap-ok" through a shared mapping and msync it */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/xattr.h>
#include <unistd.h>

static int fail(const char *what) { perror(what); return 1; }

static int do_xattr(const char *f) {
    char buf[64] = {0};
    if (setxattr(f, "trusted.husk", "value-1", 7, 0) != 0) return fail("setxattr");
    ssize_t n = getxattr(f, "trusted.husk", buf, sizeof buf);
    if (n != 7 || memcmp(buf, "value-1", 7) != 0) return fail("getxattr");
    char list[256];
    n = listxattr(f, list, sizeof list);
    if (n < 0) return fail("listxattr");
    int found = 0;
    for (char *p = list; p < list + n; p += strlen(p) + 1) found |= strcmp(p, "trusted.husk") == 0;
    if (!found) { fprintf(stderr, "listxattr: trusted.husk missing\n"); return 1; }
    if (removexattr(f, "trusted.husk") != 0) return fail("removexattr");
    if (getxattr(f, "trusted.husk", buf, sizeof buf) >= 0) { fprintf(stderr, "still there\n"); return 1; }
    return 0;
}

static int do_mmap(const char *f) {
    int fd = open(f, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return fail("open");
    if (ftruncate(fd, 4096) != 0) return fail("ftruncate");
    char *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) return fail("mmap");
    memcpy(m, "mmap-ok\n", 8);
    if (msync(m, 4096, MS_SYNC) != 0) return fail("msync");
    munmap(m, 4096);
    if (ftruncate(fd, 8) != 0) return fail("ftruncate");
    return close(fd) != 0;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: probe xattr|mmap FILE\n"); return 2; }
    if (strcmp(argv[1], "xattr") == 0) return do_xattr(argv[2]);
    if (strcmp(argv[1], "mmap") == 0) return do_mmap(argv[2]);
    return 2;
}
