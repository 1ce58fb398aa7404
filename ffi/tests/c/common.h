/* Helpers shared by the C tests of libdockerproxy: assertions that name the failing line, and
 * small conversions between C strings and the library's dp_str / dp_header. */
#ifndef DP_TEST_COMMON_H
#define DP_TEST_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dockerproxy.h"

#define CHECK(cond)                                                                \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            exit(1);                                                               \
        }                                                                          \
    } while (0)

#define CHECK_OK(expr)                                                             \
    do {                                                                           \
        dp_result r_ = (expr);                                                     \
        if (r_ != DP_OK) {                                                         \
            fprintf(stderr, "%s:%d: %s returned %u (%s)\n", __FILE__, __LINE__, #expr, \
                    (unsigned)r_, dp_result_message(r_));                          \
            exit(1);                                                               \
        }                                                                          \
    } while (0)

/* A header line from two C strings (they must outlive the call that reads the line). */
static inline dp_header hdr(const char *name, const char *value) {
    dp_header h;
    h.name = name;
    h.name_len = strlen(name);
    h.value = value;
    h.value_len = strlen(value);
    return h;
}

/* True when s holds exactly the C string c. */
static inline int str_eq(dp_str s, const char *c) {
    size_t n = strlen(c);
    return s.len == n && (n == 0 || memcmp(s.data, c, n) == 0);
}

/* True when s contains the C string c. */
static inline int str_contains(dp_str s, const char *c) {
    size_t n = strlen(c);
    if (n == 0) return 1;
    for (size_t i = 0; i + n <= s.len; i++) {
        if (memcmp(s.data + i, c, n) == 0) return 1;
    }
    return 0;
}

/* Copies s into buf (capacity cap) as a NUL-terminated string. */
static inline void str_copy(char *buf, size_t cap, dp_str s) {
    size_t n = s.len < cap - 1 ? s.len : cap - 1;
    if (n > 0) memcpy(buf, s.data, n);
    buf[n] = '\0';
}

#endif
