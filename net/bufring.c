/* The shard's provided receive buffers: a ring of buffer descriptors that the kernel picks from
 * for every multishot receive, registered by hand (liburing 2.3 has io_uring_register_buf_ring
 * but not io_uring_setup_buf_ring). A buffer goes back to the ring as soon as the receive that
 * filled it has been handled. */
#include <errno.h>
#include <sys/mman.h>

#include "net.h"

int bufring_open(struct net_shard *ns)
{
    size_t page = 4096;
    ns->br_bytes = ((size_t)ns->nbufs * sizeof(struct io_uring_buf) + page - 1) & ~(page - 1);
    void *br = mmap(NULL, ns->br_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (br == MAP_FAILED)
        return -errno;
    ns->br = br;
    ns->bufs_bytes = (size_t)ns->nbufs * ns->buf_size;
    void *bufs =
        mmap(NULL, ns->bufs_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (bufs == MAP_FAILED)
        return -errno;
    ns->bufs = bufs;

    struct io_uring_buf_reg reg = {
        .ring_addr = (uint64_t)(uintptr_t)br,
        .ring_entries = ns->nbufs,
        .bgid = NET_BGID,
    };
    int err = io_uring_register_buf_ring(&ns->ring->ring, &reg, 0);
    if (err)
        return err;
    ns->br_registered = true;
    io_uring_buf_ring_init(ns->br);
    int mask = io_uring_buf_ring_mask(ns->nbufs);
    for (unsigned i = 0; i < ns->nbufs; i++)
        io_uring_buf_ring_add(ns->br, bufring_addr(ns, i), ns->buf_size, (unsigned short)i, mask,
                              (int)i);
    /* Publishes the descriptors with a release store of the tail: the kernel reads them only
     * after it sees the tail move. */
    io_uring_buf_ring_advance(ns->br, (int)ns->nbufs);
    return 0;
}

void bufring_put(struct net_shard *ns, unsigned bid)
{
    io_uring_buf_ring_add(ns->br, bufring_addr(ns, bid), ns->buf_size, (unsigned short)bid,
                          io_uring_buf_ring_mask(ns->nbufs), 0);
    io_uring_buf_ring_advance(ns->br, 1); /* release store: the descriptor before the tail */
}

void bufring_close(struct net_shard *ns)
{
    if (ns->br_registered)
        (void)io_uring_unregister_buf_ring(&ns->ring->ring, NET_BGID);
    ns->br_registered = false;
    if (ns->bufs != NULL)
        munmap(ns->bufs, ns->bufs_bytes);
    if (ns->br != NULL)
        munmap(ns->br, ns->br_bytes);
    ns->bufs = NULL;
    ns->br = NULL;
}
