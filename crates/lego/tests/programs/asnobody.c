/* Drops root to nobody, then tries what nobody may not do on files
 * (argv[1] is a root 0755 directory holding a root 0600 file "secret"
 * and a 1777 directory "pub"; argv[2] names what this run creates in
 * pub) and what it may, printing each outcome and the owner of what it
 * created. Under Lego the storage manager must act as nobody. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char path[4096];
static const char *at(const char *dir, const char *name) {
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return path;
}
static void outcome(const char *what, int ok) {
    printf("%s: %s\n", what, ok ? "yes" : strerror(errno));
}
static void owner(const char *what, const char *p) {
    struct stat st;
    if (stat(p, &st) == 0)
        printf("%s owned by %d:%d mode %o\n", what, st.st_uid, st.st_gid, st.st_mode & 07777);
    else
        printf("%s: stat: %s\n", what, strerror(errno));
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    const char *dir = argv[1];
    char pub[4096], mine[4096], sub[4096];
    snprintf(pub, sizeof pub, "%s/pub", dir);
    snprintf(mine, sizeof mine, "%s/pub/%s", dir, argv[2]);
    snprintf(sub, sizeof sub, "%s/pub/%s.d", dir, argv[2]);
    if (setgroups(0, NULL) || setgid(65534) || setuid(65534)) { perror("drop"); return 1; }
    printf("uid %d euid %d gid %d\n", getuid(), geteuid(), getgid());
    outcome("read root 0600", open(at(dir, "secret"), O_RDONLY) >= 0);
    outcome("append root 0600", open(at(dir, "secret"), O_WRONLY | O_APPEND) >= 0);
    outcome("create in root 0755", open(at(dir, "new"), O_WRONLY | O_CREAT, 0644) >= 0);
    outcome("mkdir in root 0755", mkdir(at(dir, "newdir"), 0755) == 0);
    outcome("unlink root file", unlink(at(dir, "secret")) == 0);
    outcome("chmod root file", chmod(at(dir, "secret"), 0666) == 0);
    outcome("chown to self", chown(at(dir, "secret"), 65534, 65534) == 0);
    outcome("access root 0600", access(at(dir, "secret"), R_OK) == 0);
    umask(022);
    int fd = open(mine, O_WRONLY | O_CREAT | O_EXCL, 0666);
    outcome("create in 1777", fd >= 0);
    outcome("write own file", fd >= 0 && write(fd, "mine\n", 5) == 5);
    owner("created file", mine);
    outcome("mkdir in 1777", mkdir(sub, 0777) == 0);
    owner("created dir", sub);
    outcome("chmod own file", chmod(mine, 0600) == 0);
    owner("after chmod", mine);
    outcome("chown own file to root", chown(mine, 0, 0) == 0);
    /* Writes through a descriptor opened for writing go on after the
     * file is read-only (git makes its objects so). */
    char ro[4200];
    snprintf(ro, sizeof ro, "%s.ro", mine);
    int rofd = open(ro, O_WRONLY | O_CREAT | O_EXCL, 0444);
    outcome("write a 0444 file just made", rofd >= 0 && write(rofd, "ro\n", 3) == 3);
    outcome("open a directory for writing", open(pub, O_WRONLY) >= 0);
    return 0;
}
