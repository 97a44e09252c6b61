/* pith_version: the version this library was built as, to set beside the headers' PITH_VERSION. */
#include <pith/version.h>

const char *pith_version(void)
{
    return PITH_VERSION;
}
