"""A C program that starts another one as fast as it can: the load of the continuous-replacement tests and
benchmark."""

#: starter PROG STOP: runs PROG again and again until STOP exists; prints "runs failures".
STARTER_C = r"""
#include <spawn.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
extern char **environ;
int main(int argc, char **argv) {
    long runs = 0, fails = 0;
    char *args[] = {argv[1], NULL};
    FILE *ready = fopen(argv[3], "w"); if (ready) fclose(ready);
    while (access(argv[2], F_OK) != 0) {
        pid_t pid; int st;
        runs++;
        if (posix_spawn(&pid, argv[1], NULL, NULL, args, environ) != 0) { fails++; continue; }
        if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) fails++;
    }
    printf("%ld %ld\n", runs, fails);
    return 0;
}
"""
