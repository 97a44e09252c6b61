/* pith_mem_advise: an application's hints about its memory, passed on to the kernel for the
 * whole pages of a range. */
#include <errno.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#include "mem.h"

#ifndef MADV_COLD
#define MADV_COLD 20
#endif

int pith_mem_advise(const void *p, size_t len, pith_mem_advice_t advice, size_t *granted)
{
    if (granted != NULL)
        *granted = 0;
    static const int kernel[] = {
        [PITH_MEM_NORMAL] = MADV_NORMAL,
        [PITH_MEM_WILLNEED] = MADV_WILLNEED,
        [PITH_MEM_SEQUENTIAL] = MADV_SEQUENTIAL,
        [PITH_MEM_DONE] = MADV_COLD,
    };
    if (p == NULL || (unsigned)advice >= sizeof(kernel) / sizeof(kernel[0]))
        return -EINVAL;
    uintptr_t lo, hi;
    if (!mem_whole_pages(p, len, &lo, &hi))
        return 0; /* no whole page inside */
    if (madvise((void *)lo, hi - lo, kernel[advice]) != 0)
        return -errno;
    if (granted != NULL)
        *granted = hi - lo;
    return 0;
}
