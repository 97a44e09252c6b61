/* ThreadSanitizer annotations for hand-offs TSan cannot see: Concurrency Kit's rings (shard/) and
 * blocks that mimalloc, uninstrumented, passes from one thread to another (mem/).
 * ck's loads, stores and fences are inline assembly that TSan cannot see; without these, every
 * batch handed from one shard to another would be reported as a race. No-ops in other builds. */
#ifndef PITH_MEM_TSAN_H
#define PITH_MEM_TSAN_H

#if defined(PITH_TSAN) && PITH_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
void AnnotateIgnoreReadsBegin(const char *file, int line);
void AnnotateIgnoreReadsEnd(const char *file, int line);
void AnnotateIgnoreWritesBegin(const char *file, int line);
void AnnotateIgnoreWritesEnd(const char *file, int line);

/* The producer publishes everything it wrote into `p` before the ring operation... */
#define tsan_release(p) __tsan_release((void *)(p))
/* ...and the consumer that took `p` from the ring acquires it. */
#define tsan_acquire(p) __tsan_acquire((void *)(p))
/* The ring's own slot copy (a plain memcpy inside ck) is ordered by ck's fences, which TSan
 * cannot see; these bracket exactly that ring operation and nothing else. */
#define tsan_ring_begin()                                                                          \
    do {                                                                                           \
        AnnotateIgnoreReadsBegin(__FILE__, __LINE__);                                              \
        AnnotateIgnoreWritesBegin(__FILE__, __LINE__);                                             \
    } while (0)
#define tsan_ring_end()                                                                            \
    do {                                                                                           \
        AnnotateIgnoreWritesEnd(__FILE__, __LINE__);                                               \
        AnnotateIgnoreReadsEnd(__FILE__, __LINE__);                                                \
    } while (0)
#else
#define tsan_release(p)   ((void)(p))
#define tsan_acquire(p)   ((void)(p))
#define tsan_ring_begin() ((void)0)
#define tsan_ring_end()   ((void)0)
#endif

#endif
