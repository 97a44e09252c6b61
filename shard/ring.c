/* The mesh ring's set-up; the operations are inline in ring.h. */
#include "ring.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int ring_init(struct ring *r, uint32_t cap)
{
    memset(r, 0, sizeof(*r));
    r->slots = aligned_alloc(RING_LINE, (size_t)cap * sizeof(struct envelope));
    if (r->slots == NULL)
        return -ENOMEM;
    memset(r->slots, 0, (size_t)cap * sizeof(struct envelope)); /* seq 0: never written */
    r->mask = cap - 1;
    return 0;
}

void ring_fini(struct ring *r)
{
    free(r->slots);
    r->slots = NULL;
}
