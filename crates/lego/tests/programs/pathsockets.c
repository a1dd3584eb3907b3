/* Unix sockets at paths, as root and then as nobody: bind in a root 0755
 * directory (argv[1]) by absolute and relative path, connect, the socket
 * file's mode (after umask 027) and owner; then as nobody, bind there
 * (EACCES), connect to root's socket (mode 0750: EACCES), and bind in a
 * world-writable directory (argv[2]). Under Lego a socket file is a host
 * file the runtime's own unprivileged host identity could not create:
 * the answers must be the native ones all the same. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static void at(const char *dir, const char *name, int connecting) {
    char path[200];
    snprintf(path, sizeof path, "%s%s%s", dir, dir[0] ? "/" : "", name);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, path, sizeof addr.sun_path - 1);
    int ret = connecting ? connect(s, (struct sockaddr *)&addr, sizeof addr)
                         : bind(s, (struct sockaddr *)&addr, sizeof addr);
    if (!connecting && ret == 0)
        listen(s, 4);
    printf("%s %s: %s\n", connecting ? "connect" : "bind", name, ret ? strerror(errno) : "ok");
}

static void owner(const char *dir, const char *name) {
    char path[200];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (stat(path, &st) != 0)
        printf("%s: %s\n", name, strerror(errno));
    else
        printf("%s: mode %o uid %d socket %d\n", name, st.st_mode & 07777, st.st_uid, S_ISSOCK(st.st_mode));
}

int main(int argc, char **argv) {
    if (argc < 3)
        return 2;
    umask(027);
    if (chdir(argv[1]) != 0)
        return 3;
    at(argv[1], "root.sock", 0);
    at("", "relative.sock", 0);
    at("", "root.sock", 1);
    owner(argv[1], "root.sock");
    owner(argv[1], "relative.sock");
    if (setgid(65534) != 0 || setuid(65534) != 0)
        return 4;
    at(argv[1], "nobody.sock", 0);
    at(argv[1], "root.sock", 1);
    at(argv[2], "nobody.sock", 0);
    owner(argv[2], "nobody.sock");
    return 0;
}
