/* itch-gen: writes the synthetic ITCH 5.0 day of gen.h, framed as Nasdaq's binary files are,
 * to a file or to stdout. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gen.h"
#include "itch.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: itch-gen [-s SEED] [-n SYMBOLS] [-m MESSAGES] [-o FILE]\n"
            "  -s SEED      the day's seed (default 1); the same seed gives the same bytes\n"
            "  -n SYMBOLS   symbols in the directory, 1..65535 (default %u)\n"
            "  -m MESSAGES  order and trade messages in market hours (default %u)\n"
            "  -o FILE      where to write (default stdout)\n",
            GEN_DEFAULT_SYMBOLS, GEN_DEFAULT_MESSAGES);
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-')
        return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    struct gen_config cfg = {
        .seed = 1, .symbols = GEN_DEFAULT_SYMBOLS, .messages = GEN_DEFAULT_MESSAGES};
    const char *path = NULL;
    uint64_t v;
    int c;
    while ((c = getopt(argc, argv, "s:n:m:o:h")) != -1) {
        switch (c) {
        case 's':
            if (parse_u64(optarg, &cfg.seed) < 0)
                goto bad;
            break;
        case 'n':
            if (parse_u64(optarg, &v) < 0 || v == 0 || v > UINT16_MAX)
                goto bad;
            cfg.symbols = (uint32_t)v;
            break;
        case 'm':
            if (parse_u64(optarg, &cfg.messages) < 0)
                goto bad;
            break;
        case 'o':
            path = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }
    if (path == NULL && isatty(STDOUT_FILENO)) {
        fprintf(stderr, "itch-gen: not writing binary to a terminal; use -o FILE or a pipe\n");
        return 2;
    }
    FILE *f = path ? fopen(path, "wb") : stdout;
    if (f == NULL) {
        fprintf(stderr, "itch-gen: %s: %s\n", path, strerror(errno));
        return 1;
    }
    gen_t *g = gen_create(&cfg);
    if (g == NULL) {
        fprintf(stderr, "itch-gen: %s\n", strerror(errno));
        return 1;
    }
    struct itch_msg m;
    uint8_t frame[ITCH_MAX_FRAME];
    uint64_t count = 0;
    int r;
    while ((r = gen_next(g, &m)) == 1) {
        ssize_t n = itch_encode(&m, frame, sizeof frame);
        if (n < 0 || fwrite(frame, 1, (size_t)n, f) != (size_t)n) {
            r = n < 0 ? (int)n : -EIO;
            break;
        }
        count++;
    }
    gen_destroy(g);
    if (fflush(f) != 0 && r == 0)
        r = -EIO;
    if (path != NULL && fclose(f) != 0 && r == 0)
        r = -EIO;
    if (r != 0) {
        fprintf(stderr, "itch-gen: after %" PRIu64 " messages: %s\n", count, strerror(-r));
        return 1;
    }
    return 0;
bad:
    fprintf(stderr, "itch-gen: bad value for -%c: %s\n", c, optarg);
    usage(stderr);
    return 2;
}
