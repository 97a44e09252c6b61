/* pith_strerror: names for every code the library returns. */
#include <errno.h>
#include <string.h>

#include <pith/error.h>

const char *pith_strerror(int err)
{
    if (err < 0)
        err = -err;
    switch (err) {
    case 0:
        return "success";
    case EINVAL:
        return "invalid argument or configuration";
    case EALREADY:
        return "the engine is already running";
    case ESHUTDOWN:
        return "the engine is not running or is stopping";
    case EAGAIN:
        return "backpressure: the destination's queue is full, retry later";
    case ENOMEM:
        return "out of memory";
    case EPERM:
        return "not allowed from this thread";
    case EDEADLK:
        return "would deadlock: called from a shard thread";
    case ENOENT:
        return "no such item";
    case ECANCELED:
        return "cancelled: the engine stopped before it ran";
    default:
        return strerror(err);
    }
}
