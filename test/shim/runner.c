/* The shim's runner (see criterion/criterion.h): runs each registered test in a forked child
 * under its timeout, and prints TAP on stdout. Understands --filter suite/name (fnmatch pattern);
 * Criterion's other options are accepted and ignored. */
#include <criterion/criterion.h>
#include <criterion/redirect.h>

#include <fnmatch.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../util.h"

static struct shim_test *registered;
static size_t nregistered;

void shim_register(struct shim_test *t)
{
    t->next = registered;
    registered = t;
    nregistered++;
}

/* Where assertion failures go: stderr, or its original descriptor once a test redirected it. */
static FILE *report;

static FILE *report_stream(void)
{
    return report != NULL ? report : stderr;
}

void shim_fail(const char *file, int line, const char *expr, const char *fmt, ...)
{
    FILE *out = report_stream();
    fprintf(out, "%s:%d: Assertion failed: %s", file, line, expr);
    if (fmt != NULL && fmt[0] != '\0') {
        va_list ap;
        va_start(ap, fmt);
        fputs(": ", out);
        vfprintf(out, fmt, ap);
        va_end(ap);
    }
    fputc('\n', out);
    fflush(NULL);
    /* exit, not _exit: ThreadSanitizer's exit hook turns reported races into exit code 66. */
    exit(1);
}

void shim_log(const char *fmt, ...)
{
    FILE *out = report_stream();
    va_list ap;
    va_start(ap, fmt);
    vfprintf(out, fmt, ap);
    va_end(ap);
    fputc('\n', out);
}

/* The exit status of a test that skipped itself (automake's convention). */
#define SKIP_STATUS 77

void shim_skip(const char *fmt, ...)
{
    FILE *out = report_stream();
    va_list ap;
    va_start(ap, fmt);
    fputs("skipped: ", out);
    vfprintf(out, fmt, ap);
    va_end(ap);
    fputc('\n', out);
    fflush(NULL);
    exit(SKIP_STATUS);
}

static FILE *redirected;

void cr_redirect_stderr(void)
{
    int fds[2];
    fflush(stderr);
    if (pipe(fds) != 0)
        shim_fail(__FILE__, __LINE__, "pipe() == 0", "");
    int saved = dup(STDERR_FILENO);
    if (saved >= 0)
        report = fdopen(saved, "w");
    dup2(fds[1], STDERR_FILENO);
    close(fds[1]);
    redirected = fdopen(fds[0], "r");
}

FILE *cr_get_redirected_stderr(void)
{
    return redirected;
}

static int by_name(const void *a, const void *b)
{
    const struct shim_test *x = *(struct shim_test *const *)a;
    const struct shim_test *y = *(struct shim_test *const *)b;
    int c = strcmp(x->suite, y->suite);
    return c != 0 ? c : strcmp(x->name, y->name);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void run_child(const struct shim_test *t, double multiplier)
{
    /* The tests' own stdout must not mix with the TAP stream. */
    dup2(STDERR_FILENO, STDOUT_FILENO);
    if (t->timeout > 0)
        alarm((unsigned)(t->timeout * multiplier + 0.999));
    if (t->init != NULL)
        t->init();
    t->fn();
    if (t->fini != NULL)
        t->fini();
    fflush(NULL);
    exit(0);
}

int main(int argc, char **argv)
{
    const char *filter = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--filter") == 0 && i + 1 < argc)
            filter = argv[++i];
        else if (strncmp(argv[i], "--filter=", 9) == 0)
            filter = argv[i] + 9;
    }

    struct shim_test **tests = calloc(nregistered ? nregistered : 1, sizeof *tests);
    if (tests == NULL)
        return 2;
    size_t n = 0;
    for (struct shim_test *t = registered; t != NULL; t = t->next) {
        char full[256];
        snprintf(full, sizeof full, "%s/%s", t->suite, t->name);
        if (filter == NULL || fnmatch(filter, full, 0) == 0)
            tests[n++] = t;
    }
    qsort(tests, n, sizeof *tests, by_name);

    double multiplier = test_timeout_multiplier();
    unsigned failed = 0;
    printf("TAP version 13\n1..%zu\n", n);
    fflush(stdout);
    for (size_t i = 0; i < n; i++) {
        const struct shim_test *t = tests[i];
        if (t->disabled) {
            printf("ok %zu - %s::%s # SKIP disabled\n", i + 1, t->suite, t->name);
            continue;
        }
        fflush(NULL);
        double t0 = now_s();
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 2;
        }
        if (pid == 0)
            run_child(t, multiplier);
        int status = 0;
        while (waitpid(pid, &status, 0) < 0)
            ;
        double took = now_s() - t0;
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
            printf("ok %zu - %s::%s (%.2fs)\n", i + 1, t->suite, t->name, took);
        } else if (WIFEXITED(status) && WEXITSTATUS(status) == SKIP_STATUS) {
            printf("ok %zu - %s::%s # SKIP\n", i + 1, t->suite, t->name);
        } else {
            failed++;
            if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM)
                printf("not ok %zu - %s::%s timed out (%.2fs)\n", i + 1, t->suite, t->name, took);
            else if (WIFSIGNALED(status))
                printf("not ok %zu - %s::%s killed by signal %d (%.2fs)\n", i + 1, t->suite,
                       t->name, WTERMSIG(status), took);
            else
                printf("not ok %zu - %s::%s exit status %d (%.2fs)\n", i + 1, t->suite, t->name,
                       WEXITSTATUS(status), took);
        }
        fflush(stdout);
    }
    fprintf(stderr, "shim: %zu tests, %u failed\n", n, failed);
    free(tests);
    return failed ? 1 : 0;
}
