/* The shim's stderr capture (see criterion.h): the read end of a pipe that replaced fd 2. */
#ifndef PITH_TEST_SHIM_REDIRECT_H
#define PITH_TEST_SHIM_REDIRECT_H

#include <stdio.h>

void cr_redirect_stderr(void);
FILE *cr_get_redirected_stderr(void);

#endif
