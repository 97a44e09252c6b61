/* A stand-in for the part of Criterion the Pith tests use, for ThreadSanitizer builds only:
 * Criterion's sandbox (BoxFort) maps its arena at addresses TSan reserves and aborts at start-up
 * (Snaipe/Criterion#274). Each test runs in a forked child; the runner (runner.c) prints TAP. */
#ifndef PITH_TEST_SHIM_CRITERION_H
#define PITH_TEST_SHIM_CRITERION_H

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

struct shim_test {
    const char *suite;
    const char *name;
    void (*fn)(void);
    double timeout; /* seconds; 0 for none */
    void (*init)(void);
    void (*fini)(void);
    bool disabled;
    int sentinel_;
    struct shim_test *next;
};

void shim_register(struct shim_test *t);
void shim_fail(const char *file, int line, const char *expr, const char *fmt, ...);
void shim_log(const char *fmt, ...);
void shim_skip(const char *fmt, ...);

#define SHIM_TEST_(Suite, Name, ...)                                                               \
    static void shim_fn_##Suite##_##Name(void);                                                    \
    static struct shim_test shim_t_##Suite##_##Name = {                                            \
        .suite = #Suite, .name = #Name, .fn = shim_fn_##Suite##_##Name, __VA_ARGS__};              \
    __attribute__((constructor)) static void shim_reg_##Suite##_##Name(void)                       \
    {                                                                                              \
        shim_register(&shim_t_##Suite##_##Name);                                                   \
    }                                                                                              \
    static void shim_fn_##Suite##_##Name(void)

#define Test(...) SHIM_TEST_(__VA_ARGS__, .sentinel_ = 0)

/* The message arguments are optional, as in Criterion; the "" appended keeps every variadic
 * list non-empty (ISO C) and gives an assertion without a message an empty format. */
#define SHIM_CHECK_(Cond, Expr, ...)                                                               \
    do {                                                                                           \
        if (!(Cond))                                                                               \
            shim_fail(__FILE__, __LINE__, Expr, __VA_ARGS__);                                      \
    } while (0)

#define SHIM_1_(A, ...)        SHIM_CHECK_((A), #A, __VA_ARGS__)
#define SHIM_NOT_(A, ...)      SHIM_CHECK_(!(A), "!(" #A ")", __VA_ARGS__)
#define SHIM_EQ_(A, B, ...)    SHIM_CHECK_((A) == (B), #A " == " #B, __VA_ARGS__)
#define SHIM_NEQ_(A, B, ...)   SHIM_CHECK_((A) != (B), #A " != " #B, __VA_ARGS__)
#define SHIM_LT_(A, B, ...)    SHIM_CHECK_((A) < (B), #A " < " #B, __VA_ARGS__)
#define SHIM_LEQ_(A, B, ...)   SHIM_CHECK_((A) <= (B), #A " <= " #B, __VA_ARGS__)
#define SHIM_GT_(A, B, ...)    SHIM_CHECK_((A) > (B), #A " > " #B, __VA_ARGS__)
#define SHIM_GEQ_(A, B, ...)   SHIM_CHECK_((A) >= (B), #A " >= " #B, __VA_ARGS__)
#define SHIM_STREQ_(A, B, ...) SHIM_CHECK_(strcmp((A), (B)) == 0, #A " equals " #B, __VA_ARGS__)
#define SHIM_STRNEQ_(A, B, ...)                                                                    \
    SHIM_CHECK_(strcmp((A), (B)) != 0, #A " differs from " #B, __VA_ARGS__)

#define cr_assert(...)          SHIM_1_(__VA_ARGS__, "")
#define cr_assert_not(...)      SHIM_NOT_(__VA_ARGS__, "")
#define cr_assert_null(...)     SHIM_NULL_(__VA_ARGS__, "")
#define SHIM_NULL_(A, ...)      SHIM_CHECK_((A) == NULL, #A " == NULL", __VA_ARGS__)
#define cr_assert_not_null(...) SHIM_NOTNULL_(__VA_ARGS__, "")
#define SHIM_NOTNULL_(A, ...)   SHIM_CHECK_((A) != NULL, #A " != NULL", __VA_ARGS__)
#define cr_assert_eq(...)       SHIM_EQ_(__VA_ARGS__, "")
#define cr_assert_neq(...)      SHIM_NEQ_(__VA_ARGS__, "")
#define cr_assert_lt(...)       SHIM_LT_(__VA_ARGS__, "")
#define cr_assert_leq(...)      SHIM_LEQ_(__VA_ARGS__, "")
#define cr_assert_gt(...)       SHIM_GT_(__VA_ARGS__, "")
#define cr_assert_geq(...)      SHIM_GEQ_(__VA_ARGS__, "")
#define cr_assert_str_eq(...)   SHIM_STREQ_(__VA_ARGS__, "")
#define cr_assert_str_neq(...)  SHIM_STRNEQ_(__VA_ARGS__, "")
#define cr_assert_fail(...)     SHIM_CHECK_(0, "failure", __VA_ARGS__, "")
#define cr_log_info(...)        shim_log(__VA_ARGS__)
#define cr_skip_test(...)       shim_skip(__VA_ARGS__)

#endif
