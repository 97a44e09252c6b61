/* Marks the declarations libpith exports; everything else in the library stays hidden. */
#ifndef PITH_API_H
#define PITH_API_H

#if defined(__GNUC__)
#define PITH_API __attribute__((visibility("default")))
#else
#define PITH_API
#endif

#endif
