/* Zero-copy payloads: a reference-counted buffer that messages carry by pointer (core.h,
 * AMSG_BUF). The count is shared between shards: acq_rel on the decrement, so that every
 * reader's accesses happen before the free, and relaxed on the increment, which only ever
 * happens while the caller holds a reference. */
#include "core.h"

#include <errno.h>

pith_buf_t *pith_buf_new(size_t len, void **data)
{
    if (data == NULL || len >= PITH_MSG_MAX) {
        errno = EINVAL;
        return NULL;
    }
    struct pith_buf *b = pith_malloc(sizeof(*b) + len);
    if (b == NULL)
        return NULL; /* errno from pith_malloc */
    atomic_init(&b->refs, 1);
    b->len = len;
    *data = b + 1;
    return b;
}

pith_buf_t *pith_buf_ref(pith_buf_t *buf)
{
    if (buf != NULL)
        atomic_fetch_add_explicit(&buf->refs, 1, memory_order_relaxed);
    return buf;
}

void pith_buf_release(pith_buf_t *buf)
{
    if (buf != NULL && atomic_fetch_sub_explicit(&buf->refs, 1, memory_order_acq_rel) == 1)
        pith_free(buf);
}

const void *pith_buf_data(const pith_buf_t *buf)
{
    return buf != NULL ? (const void *)(buf + 1) : NULL;
}

size_t pith_buf_len(const pith_buf_t *buf)
{
    return buf != NULL ? buf->len : 0;
}
