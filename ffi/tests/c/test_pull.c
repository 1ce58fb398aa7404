/* libdockerproxy: drives a whole anonymous Docker Hub pull to DP_ACTION_DONE by feeding fake
 * upstream responses to exchanges, the way a proxy embedding the library would:
 *   ping 401 -> /v2/auth realm discovery -> token -> manifest with Bearer -> blob 307 -> CDN
 *   without Authorization, streamed through a dp_verifier. */
#include "common.h"

#define NOW 1790000000000ULL
#define MAX_SENT 8

static const char *MANIFEST =
    "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\","
    "\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":"
    "\"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a\",\"size\":2},"
    "\"layers\":[]}";
static const char *MANIFEST_DIGEST =
    "sha256:f20c43161d73848408ef247f0ec7111b19fe58ffebc0cbcaa0d2c8bda4967268";
static const char *OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
static const char *BLOB = "layer bytes";
static const char *BLOB_DIGEST =
    "sha256:3997bfa39738f279d788e49d0cc743d02a512c8855f798b3ee1c0daf589a6b9a";
static const char *UNAUTHORIZED =
    "{\"errors\":[{\"code\":\"UNAUTHORIZED\",\"message\":\"authentication required\","
    "\"detail\":null}]}";

/* A fake upstream answer. */
typedef struct {
    int status;
    size_t header_count;
    dp_header headers[4];
    const char *body;
} reply;

/* What one exchange did. */
typedef struct {
    size_t sent;
    char urls[MAX_SENT][512];
    dp_purpose purposes[MAX_SENT];
    int had_authorization[MAX_SENT];
    int status;
    char www_authenticate[512];
    char content_type[256];
    char content_digest[256];
    char cache_control[64];
    char body[4096];
    size_t body_len;
    dp_body_kind body_kind;
    int verified;
    size_t stored;
    size_t token_actions;
} transcript;

static char location[512];

/* The fake Docker Hub: /v2/ challenges; manifests and blobs need "Bearer good"; blobs answer
 * 307 to a CDN that refuses any Authorization. */
static reply fake_hub(const char *url, const char *authorization) {
    reply r;
    memset(&r, 0, sizeof r);
    int authed = authorization != NULL && strcmp(authorization, "Bearer good") == 0;
    if (strncmp(url, "https://cdn.test/", 17) == 0) {
        if (authorization != NULL) {
            r.status = 400;
            r.body = "<Error>Authorization not allowed</Error>";
            return r;
        }
        r.status = 200;
        r.headers[r.header_count++] = hdr("content-type", "application/octet-stream");
        r.body = BLOB;
        return r;
    }
    if (strncmp(url, "https://auth.test/", 18) == 0) {
        r.status = 200;
        r.headers[r.header_count++] = hdr("content-type", "application/json");
        r.headers[r.header_count++] = hdr("set-cookie", "session=1");
        r.body = "{\"token\":\"good\",\"access_token\":\"good\",\"expires_in\":300}";
        return r;
    }
    if (strcmp(url, "https://registry.test/v2/") == 0 && !authed) {
        r.status = 401;
        r.headers[r.header_count++] = hdr(
            "www-authenticate",
            "Bearer realm=\"https://auth.test/token\",service=\"registry.docker.io\"");
        r.headers[r.header_count++] = hdr("content-type", "application/json");
        r.body = UNAUTHORIZED;
        return r;
    }
    if (!authed) {
        r.status = 401;
        r.headers[r.header_count++] =
            hdr("www-authenticate",
                "Bearer realm=\"https://auth.test/token\",service=\"registry.docker.io\","
                "scope=\"repository:library/busybox:pull\",error=\"insufficient_scope\"");
        r.headers[r.header_count++] = hdr("content-type", "application/json");
        r.body = UNAUTHORIZED;
        return r;
    }
    if (strstr(url, "/manifests/") != NULL) {
        r.status = 200;
        r.headers[r.header_count++] = hdr("content-type", OCI_MANIFEST);
        r.headers[r.header_count++] = hdr("docker-content-digest", MANIFEST_DIGEST);
        r.body = MANIFEST;
        return r;
    }
    if (strstr(url, "/blobs/") != NULL && strstr(url, BLOB_DIGEST) != NULL) {
        snprintf(location, sizeof location, "https://cdn.test/blob/%s?sig=secret", BLOB_DIGEST);
        r.status = 307;
        r.headers[r.header_count++] = hdr("location", location);
        r.body = "";
        return r;
    }
    r.status = 404;
    r.body = "{\"errors\":[{\"code\":\"BLOB_UNKNOWN\",\"message\":\"x\",\"detail\":null}]}";
    return r;
}

static void append_body(transcript *t, const uint8_t *p, size_t n) {
    CHECK(t->body_len + n <= sizeof t->body);
    if (n > 0) memcpy(t->body + t->body_len, p, n);
    t->body_len += n;
}

/* Streams the current upstream body to the "client" through a verifier of `verify`. */
static void stream_verified(transcript *t, dp_str verify, const char *body) {
    dp_verifier *v = NULL;
    CHECK_OK(dp_verifier_new(verify.data, verify.len, -1, &v));
    const uint8_t *out = NULL;
    size_t n = 0;
    size_t len = strlen(body);
    /* Two chunks, as a network would deliver them. */
    CHECK_OK(dp_verifier_push(v, (const uint8_t *)body, len / 2, &out, &n));
    append_body(t, out, n);
    CHECK_OK(dp_verifier_push(v, (const uint8_t *)body + len / 2, len - len / 2, &out, &n));
    append_body(t, out, n);
    CHECK_OK(dp_verifier_finish(v, &out, &n));
    append_body(t, out, n);
    t->verified = 1;
    dp_verifier_free(v);
}

static void respond(transcript *t, const dp_action *a, const char *upstream_body) {
    dp_response resp;
    CHECK_OK(dp_action_response(a, &resp));
    t->status = resp.status;
    t->body_kind = resp.body_kind;
    for (size_t i = 0; i < resp.header_count; i++) {
        dp_str name, value;
        CHECK_OK(dp_action_header(a, i, &name, &value));
        if (str_eq(name, "www-authenticate")) str_copy(t->www_authenticate, 512, value);
        if (str_eq(name, "content-type")) str_copy(t->content_type, 256, value);
        if (str_eq(name, "docker-content-digest")) str_copy(t->content_digest, 256, value);
        if (str_eq(name, "cache-control")) str_copy(t->cache_control, 64, value);
        CHECK(!str_eq(name, "set-cookie"));
    }
    switch (resp.body_kind) {
    case DP_BODY_EMPTY:
        break;
    case DP_BODY_BYTES:
        append_body(t, (const uint8_t *)resp.body.data, resp.body.len);
        break;
    case DP_BODY_UPSTREAM:
        if (resp.verify.data != NULL) {
            stream_verified(t, resp.verify, upstream_body);
        } else {
            append_body(t, (const uint8_t *)upstream_body, strlen(upstream_body));
        }
        break;
    case DP_BODY_CACHE:
        CHECK(!"no cache in this test");
        break;
    }
}

static void send_upstream(transcript *t, dp_exchange *ex, const dp_action *a, reply *cur) {
    dp_upstream_request req;
    CHECK_OK(dp_action_upstream(a, &req));
    CHECK(t->sent < MAX_SENT);
    CHECK(!req.follow_redirects);
    str_copy(t->urls[t->sent], 512, req.url);
    t->purposes[t->sent] = req.purpose;
    char authorization[512];
    int has_auth = 0;
    for (size_t i = 0; i < req.header_count; i++) {
        dp_str name, value;
        CHECK_OK(dp_action_header(a, i, &name, &value));
        if (str_eq(name, "authorization")) {
            has_auth = 1;
            str_copy(authorization, sizeof authorization, value);
        }
    }
    t->had_authorization[t->sent] = has_auth;
    *cur = fake_hub(t->urls[t->sent], has_auth ? authorization : NULL);
    t->sent++;
    CHECK_OK(dp_exchange_upstream_head(ex, (uint16_t)cur->status, cur->headers,
                                       cur->header_count, NOW));
}

/* Runs one client request to DP_ACTION_DONE. */
static void drive(const dp_proxy *proxy, const char *method, const char *target,
                  const dp_header *headers, size_t header_count, transcript *t) {
    memset(t, 0, sizeof *t);
    dp_exchange *ex = NULL;
    CHECK_OK(dp_exchange_new(proxy, method, strlen(method), target, strlen(target), headers,
                             header_count, "127.0.0.1", 9, false, NOW, &ex));
    reply cur;
    memset(&cur, 0, sizeof cur);
    cur.body = "";
    for (int step = 0; step < 100; step++) {
        const dp_action *a = NULL;
        CHECK_OK(dp_exchange_poll(ex, NOW, &a));
        size_t limit = 0;
        switch (dp_action_get_kind(a)) {
        case DP_ACTION_SEND_UPSTREAM:
            send_upstream(t, ex, a, &cur);
            break;
        case DP_ACTION_READ_UPSTREAM_BODY:
            CHECK_OK(dp_action_limit(a, &limit));
            if (strlen(cur.body) > limit) {
                CHECK_OK(dp_exchange_upstream_error(ex, DP_UPSTREAM_TOO_LARGE, NOW));
            } else {
                CHECK_OK(dp_exchange_upstream_body(ex, (const uint8_t *)cur.body,
                                                   strlen(cur.body), NOW));
            }
            break;
        case DP_ACTION_READ_CLIENT_BODY:
            CHECK_OK(dp_exchange_client_body_failed(ex, NOW));
            break;
        case DP_ACTION_CACHE_LOOKUP: {
            dp_cache_query q;
            CHECK_OK(dp_action_cache_query(a, &q));
            CHECK(str_eq(q.key.registry, "docker.io"));
            CHECK_OK(dp_exchange_cache_miss(ex, NOW));
            break;
        }
        case DP_ACTION_CACHE_STORE: {
            dp_manifest_entry e;
            CHECK_OK(dp_action_manifest_entry(a, &e));
            CHECK(str_eq(e.digest, MANIFEST_DIGEST));
            CHECK(str_eq(e.body, MANIFEST));
            CHECK(e.key.kind == DP_KEY_MANIFEST);
            t->stored++;
            break;
        }
        case DP_ACTION_RECORD_ACCESS: {
            dp_access_record r;
            CHECK_OK(dp_action_access_record(a, &r));
            CHECK(str_eq(r.repository, "library/busybox"));
            break;
        }
        case DP_ACTION_TAG_VALIDATED:
        case DP_ACTION_TAG_DROP: {
            dp_cache_key k;
            CHECK_OK(dp_action_cache_key(a, &k));
            CHECK(k.kind == DP_KEY_TAG);
            break;
        }
        case DP_ACTION_TOKEN_LOOKUP:
        case DP_ACTION_TOKEN_STORE:
        case DP_ACTION_TOKEN_INVALIDATE: {
            dp_token_key k;
            CHECK_OK(dp_action_token_key(a, &k));
            t->token_actions++;
            CHECK_OK(dp_exchange_token_cache(ex, NOW));
            break;
        }
        case DP_ACTION_RESPOND:
            CHECK(t->status == 0); /* one response per exchange */
            respond(t, a, cur.body);
            break;
        case DP_ACTION_LOCAL:
            CHECK(!"no local endpoint in this test");
            break;
        case DP_ACTION_WAIT:
            CHECK(!"the exchange waits without pending input");
            break;
        case DP_ACTION_DONE:
            dp_exchange_free(ex);
            return;
        default:
            CHECK(!"unknown action kind");
        }
    }
    CHECK(!"the exchange did not finish in 100 steps");
}

int main(void) {
    const char *toml = "[routes.\"docker.io\"]\nupstream = \"https://registry.test\"\n";
    dp_kv env[1] = {{"CUSTOM_DOMAIN", 13, "example.com", 11}};
    const dp_proxy *proxy = NULL;
    char err[512] = {0};
    dp_result r = dp_proxy_new(DP_CONFIG_TOML, (const uint8_t *)toml, strlen(toml), env, 1,
                               &proxy, err, sizeof err);
    if (r != DP_OK) fprintf(stderr, "config: %s\n", err);
    CHECK(r == DP_OK);

    transcript t;
    dp_header host = hdr("Host", "docker.example.com");

    /* 1. Ping: 401 with the proxy's realm, upstream service kept. */
    drive(proxy, "GET", "/v2/", &host, 1, &t);
    CHECK(t.status == 401);
    CHECK(strcmp(t.www_authenticate, "Bearer realm=\"http://docker.example.com/v2/auth\","
                                     "service=\"registry.docker.io\"") == 0);
    CHECK(t.sent == 1 && t.purposes[0] == DP_PURPOSE_PING);

    /* 2. Token: realm discovery without credentials, then the token request with library/. */
    drive(proxy, "GET", "/v2/auth?scope=repository:busybox:pull&service=x", &host, 1, &t);
    CHECK(t.status == 200);
    CHECK(t.sent == 2);
    CHECK(t.purposes[0] == DP_PURPOSE_REALM_DISCOVERY);
    CHECK(!t.had_authorization[0]);
    CHECK(strncmp(t.urls[1], "https://auth.test/token?", 24) == 0);
    CHECK(strstr(t.urls[1], "service=registry.docker.io") != NULL);
    CHECK(strstr(t.urls[1], "scope=repository%3Alibrary%2Fbusybox%3Apull") != NULL ||
          strstr(t.urls[1], "scope=repository:library/busybox:pull") != NULL);
    CHECK(strstr(t.urls[1], "=x") == NULL);
    CHECK(strcmp(t.cache_control, "no-store") == 0);
    CHECK(t.body_len > 0 && strstr(t.body, "\"good\"") != NULL);

    /* 3. Manifest with the token: forwarded with Authorization, verified, served. */
    dp_header mh[3] = {host, hdr("Authorization", "Bearer good"), hdr("Accept", OCI_MANIFEST)};
    drive(proxy, "GET", "/v2/library/busybox/manifests/latest", mh, 3, &t);
    CHECK(t.status == 200);
    CHECK(t.sent == 1 && t.had_authorization[0]);
    CHECK(t.body_len == strlen(MANIFEST) && memcmp(t.body, MANIFEST, t.body_len) == 0);
    CHECK(strcmp(t.content_digest, MANIFEST_DIGEST) == 0);
    CHECK(strcmp(t.content_type, OCI_MANIFEST) == 0);

    /* 4. Blob: 307 to the CDN, followed without Authorization, streamed with verification. */
    char target[256];
    snprintf(target, sizeof target, "/v2/library/busybox/blobs/%s", BLOB_DIGEST);
    drive(proxy, "GET", target, mh, 2, &t);
    CHECK(t.status == 200);
    CHECK(t.sent == 2);
    CHECK(t.had_authorization[0]);
    CHECK(strncmp(t.urls[1], "https://cdn.test/blob/", 22) == 0);
    CHECK(t.purposes[1] == DP_PURPOSE_REDIRECT_HOP);
    CHECK(!t.had_authorization[1]);
    CHECK(t.body_kind == DP_BODY_UPSTREAM);
    CHECK(t.verified);
    CHECK(t.body_len == strlen(BLOB) && memcmp(t.body, BLOB, t.body_len) == 0);
    CHECK(strcmp(t.content_digest, BLOB_DIGEST) == 0);

    dp_proxy_free(proxy);
    printf("test_pull: ok\n");
    return 0;
}
