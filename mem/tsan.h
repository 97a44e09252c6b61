/* ThreadSanitizer annotations for hand-offs TSan cannot see: blocks that mimalloc, uninstrumented,
 * passes from one thread to another. No-ops in other builds. */
#ifndef PITH_MEM_TSAN_H
#define PITH_MEM_TSAN_H

#if defined(PITH_TSAN) && PITH_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);

/* The thread that hands `p` over publishes what it wrote into it... */
#define tsan_release(p) __tsan_release((void *)(p))
/* ...and the thread that takes it acquires that. */
#define tsan_acquire(p) __tsan_acquire((void *)(p))
#else
#define tsan_release(p) ((void)(p))
#define tsan_acquire(p) ((void)(p))
#endif

#endif
