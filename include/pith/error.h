/* Pith's error conventions: every public function returns 0 or a negative errno value.
 * This header names those codes; it declares nothing that allocates or blocks. */
#ifndef PITH_ERROR_H
#define PITH_ERROR_H

#include <pith/api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A short English description of a code returned by any pith_ function. Accepts the negative
 * value as returned (or its absolute value). Never returns NULL; the string is static.
 * Callable from any thread. */
PITH_API const char *pith_strerror(int err);

/* The detail behind the most recent failure of pith_engine_start() on the calling thread
 * (for example "PITH_CPUS: CPU 97 does not exist; this machine has CPUs 0-1"), or "" when
 * there is none. The string is thread-local and valid until the next call that fails. */
PITH_API const char *pith_last_error(void);

#ifdef __cplusplus
}
#endif

#endif
