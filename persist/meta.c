/* The journal directory's persistence facts, in <dir>/actors.meta: a random 128-bit key (keys'
 * streams and home shards are SipHash under it, stable across restarts and unguessable by
 * whoever picks keys) and the number of shards it was made with. Made once, durably (a
 * temporary file, fsynced, renamed, and the directory fsynced). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <pith/engine.h>
#include <pith/hash.h>
#include <pith/journal.h>

#include "hooks.h"
#include "pst.h"
#include "vpersist.h"

#define META_MAGIC "PITHACT1"

struct meta_file {
    char magic[8];
    uint32_t shards;
    uint32_t crc; /* of the fields before it */
    unsigned char key[16];
};

static pthread_mutex_t meta_lock = PTHREAD_MUTEX_INITIALIZER;
static int meta_err = 1; /* 1: not loaded for this engine */
static unsigned char meta_key[16];

static uint32_t meta_crc(const struct meta_file *m)
{
    return pith_crc32c(0, m, offsetof(struct meta_file, crc));
}

static int meta_make(int dfd, unsigned shards)
{
    struct meta_file m = {.shards = shards};
    memcpy(m.magic, META_MAGIC, 8);
    size_t got = 0;
    while (got < sizeof(m.key)) {
        ssize_t r = getrandom(m.key + got, sizeof(m.key) - got, 0);
        if (r < 0 && errno != EINTR)
            return -errno;
        got += r > 0 ? (size_t)r : 0;
    }
    m.crc = meta_crc(&m);
    int fd = openat(dfd, "actors.meta.tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    int err = 0;
    if (write(fd, &m, sizeof(m)) != (ssize_t)sizeof(m) || fsync(fd) != 0)
        err = errno ? -errno : -EIO;
    close(fd);
    if (err == 0 && renameat(dfd, "actors.meta.tmp", dfd, "actors.meta") != 0)
        err = -errno;
    if (err == 0 && fsync(dfd) != 0)
        err = -errno;
    if (err == 0)
        memcpy(meta_key, m.key, sizeof(meta_key));
    return err;
}

static int meta_load(void)
{
    const pith_config_t *cfg = shard_config();
    if (cfg == NULL || cfg->journal.dir == NULL)
        return -ENOTCONN;
    if (mkdir(cfg->journal.dir, 0755) != 0 && errno != EEXIST) {
        set_last_error("persist: making %s: %s", cfg->journal.dir, strerror(errno));
        return -EIO;
    }
    int dfd = open(cfg->journal.dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        set_last_error("persist: opening %s: %s", cfg->journal.dir, strerror(errno));
        return -EIO;
    }
    unsigned shards = shard_count_here();
    struct meta_file m;
    int fd = openat(dfd, "actors.meta", O_RDONLY | O_CLOEXEC);
    int err = 0;
    if (fd < 0 && errno == ENOENT) {
        err = meta_make(dfd, shards);
        if (err)
            set_last_error("persist: making %s/actors.meta: %s", cfg->journal.dir, strerror(-err));
    } else if (fd < 0 || read(fd, &m, sizeof(m)) != (ssize_t)sizeof(m) ||
               memcmp(m.magic, META_MAGIC, 8) != 0 || m.crc != meta_crc(&m)) {
        set_last_error("persist: %s/actors.meta is unreadable or damaged", cfg->journal.dir);
        err = -EIO;
    } else if (m.shards != shards) {
        set_last_error("persist: %s was made with %u shards, the engine runs %u", cfg->journal.dir,
                       m.shards, shards);
        err = -EXDEV;
    } else {
        memcpy(meta_key, m.key, sizeof(meta_key));
    }
    if (fd >= 0)
        close(fd);
    close(dfd);
    return err == -ENOMEM ? -ENOMEM : err == -EXDEV ? -EXDEV : err ? -EIO : 0;
}

int pmeta_key(const unsigned char **key)
{
    pthread_mutex_lock(&meta_lock);
    if (meta_err == 1)
        meta_err = meta_load();
    int err = meta_err;
    pthread_mutex_unlock(&meta_lock);
    *key = meta_key;
    return err;
}

void pmeta_forget(void)
{
    pthread_mutex_lock(&meta_lock);
    meta_err = 1;
    pthread_mutex_unlock(&meta_lock);
}

uint64_t pmeta_stream(const unsigned char *key16, const pith_vtype_t *vt, const void *k,
                      uint32_t klen)
{
    unsigned char buf[PITH_NAME_MAX + 1 + PITH_VKEY_MAX];
    size_t nl = strlen(vt->name);
    memcpy(buf, vt->name, nl);
    buf[nl] = 0;
    if (klen > 0)
        memcpy(buf + nl + 1, k, klen);
    return pith_siphash(key16, buf, nl + 1 + klen, 1, 3);
}

uint32_t pmeta_tag(const pith_vtype_t *vt)
{
    return pith_crc32c(0, vt->name, strlen(vt->name));
}

unsigned pmeta_jump(uint64_t h, unsigned n)
{
    return vactor_jump(h, n); /* the directory's own jump consistent hash */
}
