/* The version: the headers' macros agree with each other and with meson's project version, and
 * the library reports the version its headers carry. */
#include <stdio.h>
#include <string.h>

#include "util.h"

#if !defined(PITH_VERSION_NUMBER) || PITH_VERSION_NUMBER < 0
#error "pith/pith.h gives PITH_VERSION_NUMBER, usable in #if"
#endif

Test(version, library_reports_the_version_of_its_headers)
{
    cr_assert_str_eq(pith_version(), PITH_VERSION);
}

Test(version, header_version_is_the_project_version)
{
    /* PITH_TEST_PROJECT_VERSION: meson.project_version(), given by test/meson.build. */
    cr_assert_str_eq(PITH_VERSION, PITH_TEST_PROJECT_VERSION);
}

Test(version, string_and_number_are_made_of_major_minor_patch)
{
    char text[32];
    snprintf(text, sizeof(text), "%d.%d.%d", PITH_VERSION_MAJOR, PITH_VERSION_MINOR,
             PITH_VERSION_PATCH);
    cr_assert_str_eq(text, PITH_VERSION);
    cr_assert_eq(PITH_VERSION_NUMBER,
                 PITH_VERSION_MAJOR * 10000 + PITH_VERSION_MINOR * 100 + PITH_VERSION_PATCH);
    cr_assert_lt(PITH_VERSION_MINOR, 100);
    cr_assert_lt(PITH_VERSION_PATCH, 100);
}
