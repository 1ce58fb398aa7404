/* libdockerproxy: configuration errors, NULL arguments, result messages, routing and
 * classification through the C API. */
#include "common.h"

static void version_and_messages(void) {
    CHECK(strlen(dp_version()) > 0);
    CHECK(strcmp(dp_result_message(DP_OK), "success") == 0);
    CHECK(strstr(dp_result_message(DP_NULL_PARAMETER), "NULL") != NULL);
    CHECK(strcmp(dp_result_message(999999), "unknown result code") == 0);
}

static void config_error_names_the_key(void) {
    const char *toml = "[routes.\"docker.io\"]\nupstream = \"ftp://nope\"\n";
    const dp_proxy *proxy = (const dp_proxy *)0x1; /* must stay untouched on failure */
    char err[256];
    memset(err, 'x', sizeof err);
    dp_result r = dp_proxy_new(DP_CONFIG_TOML, (const uint8_t *)toml, strlen(toml), NULL, 0,
                               &proxy, err, sizeof err);
    CHECK(r == DP_CONFIG_ERROR);
    CHECK(proxy == (const dp_proxy *)0x1);
    CHECK(strstr(err, "routes.docker.io.upstream") != NULL);

    /* Truncated into a tiny buffer, still NUL-terminated. */
    char small[8];
    r = dp_proxy_new(DP_CONFIG_TOML, (const uint8_t *)toml, strlen(toml), NULL, 0, &proxy,
                     small, sizeof small);
    CHECK(r == DP_CONFIG_ERROR);
    CHECK(strlen(small) == 7);

    /* Broken TOML and broken JSON. */
    const char *bad = "routes = [";
    r = dp_proxy_new(DP_CONFIG_TOML, (const uint8_t *)bad, strlen(bad), NULL, 0, &proxy, err,
                     sizeof err);
    CHECK(r == DP_CONFIG_ERROR);
    CHECK(strlen(err) > 0);
    r = dp_proxy_new(DP_CONFIG_JSON, (const uint8_t *)"{", 1, NULL, 0, &proxy, err, sizeof err);
    CHECK(r == DP_CONFIG_ERROR);
    CHECK(strstr(err, "JSON") != NULL);

    /* A bad environment value. */
    dp_kv env[1] = {{"PORT", 4, "seventy", 7}};
    r = dp_proxy_new(DP_CONFIG_TOML, NULL, 0, env, 1, &proxy, err, sizeof err);
    CHECK(r == DP_CONFIG_ERROR);
    CHECK(strstr(err, "PORT") != NULL);

    /* Unknown format. */
    r = dp_proxy_new(7, NULL, 0, NULL, 0, &proxy, err, sizeof err);
    CHECK(r == DP_INVALID_ARGUMENT);
    CHECK(proxy == (const dp_proxy *)0x1);
}

static const dp_proxy *make_proxy(void) {
    dp_kv env[1] = {{"CUSTOM_DOMAIN", 13, "example.com", 11}};
    const char *json = "{\"routes\":{\"docker.io\":{\"upstream\":\"https://registry.test\"}}}";
    const dp_proxy *proxy = NULL;
    char err[256] = {0};
    dp_result r = dp_proxy_new(DP_CONFIG_JSON, (const uint8_t *)json, strlen(json), env, 1,
                               &proxy, err, sizeof err);
    if (r != DP_OK) fprintf(stderr, "config: %s\n", err);
    CHECK(r == DP_OK);
    CHECK(proxy != NULL);
    return proxy;
}

static void null_arguments_are_refused(const dp_proxy *proxy) {
    dp_exchange *ex = NULL;
    const dp_action *a = NULL;
    dp_str s;
    size_t n;
    CHECK(dp_proxy_new(DP_CONFIG_TOML, NULL, 0, NULL, 0, NULL, NULL, 0) == DP_NULL_PARAMETER);
    CHECK(dp_proxy_new(DP_CONFIG_TOML, NULL, 5, NULL, 0, &proxy, NULL, 0) == DP_NULL_PARAMETER);
    CHECK(dp_exchange_new(NULL, "GET", 3, "/v2/", 4, NULL, 0, NULL, 0, false, 0, &ex) ==
          DP_NULL_PARAMETER);
    CHECK(dp_exchange_new(proxy, NULL, 3, "/v2/", 4, NULL, 0, NULL, 0, false, 0, &ex) ==
          DP_NULL_PARAMETER);
    CHECK(dp_exchange_new(proxy, "GET", 3, "/v2/", 4, NULL, 2, NULL, 0, false, 0, &ex) ==
          DP_NULL_PARAMETER);
    CHECK(dp_exchange_new(proxy, "GET", 3, "/v2/", 4, NULL, 0, NULL, 0, false, 0, NULL) ==
          DP_NULL_PARAMETER);
    CHECK(ex == NULL);
    CHECK(dp_exchange_poll(NULL, 0, &a) == DP_NULL_PARAMETER);
    CHECK(dp_exchange_upstream_head(NULL, 200, NULL, 0, 0) == DP_NULL_PARAMETER);
    CHECK(dp_exchange_upstream_body(NULL, NULL, 0, 0) == DP_NULL_PARAMETER);
    CHECK(dp_exchange_upstream_error(NULL, DP_UPSTREAM_TIMEOUT, 0) == DP_NULL_PARAMETER);
    CHECK(dp_exchange_cache_miss(NULL, 0) == DP_NULL_PARAMETER);
    CHECK(dp_exchange_client_body_failed(NULL, 0) == DP_NULL_PARAMETER);
    CHECK(dp_exchange_token_cache(NULL, 0) == DP_NULL_PARAMETER);
    CHECK(dp_exchange_timeout(NULL, 0) == DP_NULL_PARAMETER);
    CHECK(dp_action_get_kind(NULL) == DP_ACTION_NONE);
    CHECK(dp_action_header(NULL, 0, &s, &s) == DP_NULL_PARAMETER);
    CHECK(dp_action_limit(NULL, &n) == DP_NULL_PARAMETER);
    CHECK(dp_verifier_new(NULL, 0, -1, NULL) == DP_NULL_PARAMETER);
    CHECK(dp_route(proxy, "x", 1, NULL, 0, NULL, 0, NULL) == DP_NULL_PARAMETER);
    CHECK(dp_proxy_warning(proxy, 0, NULL) == DP_NULL_PARAMETER);
    /* Freeing NULL is a no-op. */
    dp_exchange_free(NULL);
    dp_proxy_free(NULL);
    dp_verifier_free(NULL);
    dp_route_result_free(NULL);

    /* Bad method, header and status. */
    dp_header bad = hdr("bad name", "v");
    CHECK(dp_exchange_new(proxy, "G T", 3, "/v2/", 4, NULL, 0, NULL, 0, false, 0, &ex) ==
          DP_INVALID_METHOD);
    CHECK(dp_exchange_new(proxy, "GET", 3, "/v2/", 4, &bad, 1, NULL, 0, false, 0, &ex) ==
          DP_INVALID_HEADER);
    CHECK(dp_exchange_new(proxy, "GET", 3, "/v2/", 4, NULL, 0, "nope", 4, false, 0, &ex) ==
          DP_INVALID_ARGUMENT);
    dp_header host = hdr("Host", "docker.example.com");
    CHECK_OK(dp_exchange_new(proxy, "GET", 3, "/v2/", 4, &host, 1, "127.0.0.1", 9, false, 0, &ex));
    CHECK(dp_exchange_token_cache(ex, 0) == DP_NO_ACTION);
    CHECK_OK(dp_exchange_poll(ex, 0, &a));
    CHECK(dp_action_get_kind(a) == DP_ACTION_SEND_UPSTREAM);
    CHECK(dp_action_limit(a, &n) == DP_WRONG_ACTION);
    CHECK(dp_action_header(a, 1000, &s, &s) == DP_OUT_OF_RANGE);
    CHECK(dp_exchange_upstream_head(ex, 42, NULL, 0, 0) == DP_INVALID_STATUS);
    CHECK(dp_exchange_upstream_error(ex, 99, 0) == DP_INVALID_ARGUMENT);
    CHECK_OK(dp_exchange_upstream_error(ex, DP_UPSTREAM_UNREACHABLE, 0));
    CHECK_OK(dp_exchange_poll(ex, 0, &a));
    CHECK(dp_action_get_kind(a) == DP_ACTION_RESPOND);
    dp_response resp;
    CHECK_OK(dp_action_response(a, &resp));
    CHECK(resp.status == 502);
    dp_exchange_free(ex);
}

static void routing_and_classification(const dp_proxy *proxy) {
    dp_route_result *rr = NULL;
    dp_route_info info;
    CHECK_OK(dp_route(proxy, "DOCKER.example.com.", 19, "/v2/library/alpine/manifests/3", 30,
                      NULL, 0, &rr));
    CHECK_OK(dp_route_result_info(rr, &info));
    CHECK(info.kind == DP_ROUTE_ROUTED);
    CHECK(str_eq(info.registry, "docker.io"));
    CHECK(info.host_kind == DP_HOST_ROUTE);
    CHECK(str_eq(info.public_host, "docker.example.com"));
    CHECK(str_eq(info.path, "/v2/library/alpine/manifests/3"));
    dp_route_result_free(rr);

    CHECK_OK(dp_route(proxy, "unknown.test", 12, "/v2/", 4, NULL, 0, &rr));
    CHECK_OK(dp_route_result_info(rr, &info));
    CHECK(info.kind == DP_ROUTE_UNKNOWN_HOST);
    CHECK(info.error_body.len > 0);
    dp_route_result_free(rr);

    uint8_t buf[512];
    dp_classification c;
    const char *p = "/v2/library/alpine/blobs/sha256:"
                    "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    CHECK_OK(dp_classify(p, strlen(p), buf, sizeof buf, &c));
    CHECK(c.kind == DP_REQUEST_BLOB);
    CHECK(str_eq(c.name, "library/alpine"));
    CHECK(c.reference_is_digest);
    CHECK(str_contains(c.reference, "sha256:2cf24dba"));
    CHECK(dp_classify(p, strlen(p), buf, 4, &c) == DP_OUT_OF_RANGE);

    const char *q = "/v2/Library/alpine/manifests/latest";
    CHECK_OK(dp_classify(q, strlen(q), buf, sizeof buf, &c));
    CHECK(c.kind == DP_REQUEST_INVALID);
    CHECK(c.error_status == 400);
    CHECK(str_eq(c.error_code, "NAME_INVALID"));

    const char *m = "/v2/a/b/manifests/v1.0";
    CHECK_OK(dp_classify(m, strlen(m), buf, sizeof buf, &c));
    CHECK(c.kind == DP_REQUEST_MANIFEST);
    CHECK(!c.reference_is_digest);
    CHECK(str_eq(c.reference, "v1.0"));
}

int main(void) {
    version_and_messages();
    config_error_names_the_key();
    const dp_proxy *proxy = make_proxy();
    null_arguments_are_refused(proxy);
    routing_and_classification(proxy);
    dp_proxy_free(proxy);
    printf("test_api: ok\n");
    return 0;
}
