/* libdockerproxy: the streaming verifier releases bytes only when they match. */
#include "common.h"

/* sha256("hello") */
static const char *HELLO = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

static void matching_bytes_are_all_released(void) {
    dp_verifier *v = NULL;
    CHECK_OK(dp_verifier_new(HELLO, strlen(HELLO), 5, &v));
    const uint8_t *out = NULL;
    size_t n = 99;
    CHECK_OK(dp_verifier_push(v, (const uint8_t *)"hel", 3, &out, &n));
    size_t released = n; /* the held-back tail keeps small bodies inside */
    CHECK_OK(dp_verifier_push(v, (const uint8_t *)"lo", 2, &out, &n));
    released += n;
    CHECK_OK(dp_verifier_finish(v, &out, &n));
    released += n;
    CHECK(released == 5);
    CHECK(n == 5 && memcmp(out, "hello", 5) == 0);
    CHECK(dp_verifier_push(v, (const uint8_t *)"x", 1, &out, &n) == DP_FINISHED);
    dp_verifier_free(v);
}

static void mismatch_drops_the_tail(void) {
    dp_verifier *v = NULL;
    CHECK_OK(dp_verifier_new(HELLO, strlen(HELLO), -1, &v));
    const uint8_t *out = NULL;
    size_t n = 0;
    CHECK_OK(dp_verifier_push(v, (const uint8_t *)"jello", 5, &out, &n));
    CHECK(n == 0);
    const uint8_t *before = out;
    size_t before_n = n;
    CHECK(dp_verifier_finish(v, &out, &n) == DP_DIGEST_MISMATCH);
    CHECK(out == before && n == before_n); /* outputs untouched on failure */
    dp_str actual;
    CHECK_OK(dp_verifier_actual_digest(v, &actual));
    CHECK(str_contains(actual, "sha256:"));
    CHECK(!str_eq(actual, HELLO));
    dp_verifier_free(v);
}

static void length_limits(void) {
    dp_verifier *v = NULL;
    const uint8_t *out;
    size_t n;
    CHECK_OK(dp_verifier_new(HELLO, strlen(HELLO), 4, &v));
    CHECK(dp_verifier_push(v, (const uint8_t *)"hello", 5, &out, &n) == DP_TOO_LONG);
    CHECK(dp_verifier_finish(v, &out, &n) == DP_FINISHED);
    dp_str actual;
    CHECK(dp_verifier_actual_digest(v, &actual) == DP_WRONG_ACTION);
    dp_verifier_free(v);

    CHECK_OK(dp_verifier_new(HELLO, strlen(HELLO), 6, &v));
    CHECK_OK(dp_verifier_push(v, (const uint8_t *)"hello", 5, &out, &n));
    CHECK(dp_verifier_finish(v, &out, &n) == DP_TOO_SHORT);
    dp_verifier_free(v);

    CHECK(dp_verifier_new("md5:abc", 7, -1, &v) == DP_INVALID_DIGEST);
    CHECK(dp_verifier_new("sha256:ABC", 10, -1, &v) == DP_INVALID_DIGEST);
    CHECK_OK(dp_verifier_new(HELLO, strlen(HELLO), -1, &v));
    CHECK(dp_verifier_push(v, NULL, 3, &out, &n) == DP_NULL_PARAMETER);
    CHECK(dp_verifier_push(v, NULL, 0, NULL, &n) == DP_NULL_PARAMETER);
    dp_verifier_free(v);
}

int main(void) {
    matching_bytes_are_all_released();
    mismatch_drops_the_tail();
    length_limits();
    printf("test_verifier: ok\n");
    return 0;
}
