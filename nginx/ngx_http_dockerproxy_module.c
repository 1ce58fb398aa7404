/*
 * ngx_http_dockerproxy_module: turns an unmodified Nginx into a Docker/OCI registry mirror by
 * running libdockerproxy's exchange loop (routing, challenge rewriting, /v2/auth, redirect
 * policy, digest verification) while Nginx does all the I/O.
 *
 * Design (see README.md): the content handler drives a dp_exchange. Every DP_ACTION_SEND_UPSTREAM
 * becomes a subrequest to an internal location that does `proxy_pass $dp_upstream_url`. A header
 * filter catches the subrequest's response head and feeds it to the exchange; the next actions
 * decide what the subrequest's body filter does with the bytes:
 *   - DISCARD  the body is dropped (401 before a token retry, 307 before a redirect hop, errors);
 *   - BUFFER   the body is kept in memory up to the action's limit (tokens, manifests);
 *   - STREAM   the body goes to the client (blobs), through a dp_verifier when a digest is set:
 *              the held-back tail is only released once the digest matched.
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <stdio.h>

#include "dockerproxy.h"

#define DP_COPY_BUF_SIZE 65536
#define DP_RETRY_MS 20

typedef struct {
    ngx_str_t config_path;
    ngx_array_t *env; /* of ngx_keyval_t */
    ngx_str_t upstream_location;
    const dp_proxy *proxy;
} ngx_http_dp_main_conf_t;

typedef enum { DP_SUB_DISCARD = 0, DP_SUB_BUFFER, DP_SUB_STREAM } ngx_http_dp_sub_mode_e;

typedef enum { DP_CONTINUE = 0, DP_STOP, DP_FAIL } ngx_http_dp_step_e;

typedef struct ngx_http_dp_ctx_s ngx_http_dp_ctx_t;

/* The subrequest's context: which exchange it serves and what to send. */
typedef struct {
    ngx_http_dp_ctx_t *main;
    ngx_str_t url;
} ngx_http_dp_sub_ctx_t;

/* The main request's context. */
struct ngx_http_dp_ctx_s {
    ngx_http_request_t *r;
    dp_exchange *ex;
    dp_verifier *verifier;

    /* The next upstream request (copied out of the action). */
    ngx_str_t url;
    ngx_str_t method;
    ngx_str_t body;
    dp_header *headers;
    size_t header_count;

    ngx_http_dp_sub_mode_e mode;
    size_t limit;
    u_char *buf;
    size_t len;
    size_t cap;

    ngx_chain_t *free;
    ngx_chain_t *busy;
    ngx_event_t retry;

    unsigned have_request : 1;
    unsigned sub_active : 1;
    unsigned head_seen : 1;
    unsigned want_body : 1;
    unsigned body_complete : 1;
    unsigned body_too_large : 1;
    unsigned token_pending : 1;
    unsigned wait_pending : 1;
    unsigned responded : 1;
    unsigned streaming : 1;
    unsigned done : 1;
    unsigned finalized : 1;
};

static ngx_int_t ngx_http_dp_preconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_http_dp_postconfiguration(ngx_conf_t *cf);
static void *ngx_http_dp_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_dp_init_main_conf(ngx_conf_t *cf, void *conf);
static char *ngx_http_dp_env(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *ngx_http_dp_enable(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static void ngx_http_dp_drive(ngx_http_dp_ctx_t *ctx);

static ngx_http_output_header_filter_pt ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt ngx_http_next_body_filter;

static ngx_command_t ngx_http_dp_commands[] = {
    {ngx_string("dockerproxy_config"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_str_slot, NGX_HTTP_MAIN_CONF_OFFSET,
     offsetof(ngx_http_dp_main_conf_t, config_path), NULL},
    {ngx_string("dockerproxy_env"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE2, ngx_http_dp_env,
     NGX_HTTP_MAIN_CONF_OFFSET, 0, NULL},
    {ngx_string("dockerproxy_upstream_location"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_str_slot, NGX_HTTP_MAIN_CONF_OFFSET,
     offsetof(ngx_http_dp_main_conf_t, upstream_location), NULL},
    {ngx_string("dockerproxy"), NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS, ngx_http_dp_enable,
     NGX_HTTP_LOC_CONF_OFFSET, 0, NULL},
    ngx_null_command};

static ngx_http_module_t ngx_http_dp_module_ctx = {
    ngx_http_dp_preconfiguration,  /* preconfiguration */
    ngx_http_dp_postconfiguration, /* postconfiguration */
    ngx_http_dp_create_main_conf,  /* create main configuration */
    ngx_http_dp_init_main_conf,    /* init main configuration */
    NULL, NULL, NULL, NULL};

ngx_module_t ngx_http_dockerproxy_module = {NGX_MODULE_V1,
                                            &ngx_http_dp_module_ctx,
                                            ngx_http_dp_commands,
                                            NGX_HTTP_MODULE,
                                            NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                                            NGX_MODULE_V1_PADDING};

/* ---- configuration ------------------------------------------------------------------------ */

static void *ngx_http_dp_create_main_conf(ngx_conf_t *cf) {
    ngx_http_dp_main_conf_t *mcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_dp_main_conf_t));
    if (mcf == NULL) return NULL;
    mcf->env = ngx_array_create(cf->pool, 4, sizeof(ngx_keyval_t));
    if (mcf->env == NULL) return NULL;
    return mcf;
}

static char *ngx_http_dp_env(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) {
    ngx_http_dp_main_conf_t *mcf = conf;
    ngx_str_t *value = cf->args->elts;
    ngx_keyval_t *kv = ngx_array_push(mcf->env);
    (void)cmd;
    if (kv == NULL) return NGX_CONF_ERROR;
    kv->key = value[1];
    kv->value = value[2];
    return NGX_CONF_OK;
}

static void ngx_http_dp_free_proxy(void *data) {
    ngx_http_dp_main_conf_t *mcf = data;
    dp_proxy_free(mcf->proxy);
    mcf->proxy = NULL;
}

static char *ngx_http_dp_init_main_conf(ngx_conf_t *cf, void *conf) {
    ngx_http_dp_main_conf_t *mcf = conf;
    u_char *text = NULL;
    size_t text_len = 0;
    char err[1024];

    if (mcf->upstream_location.len == 0) {
        ngx_str_set(&mcf->upstream_location, "/_dp_upstream");
    }
    if (mcf->config_path.len == 0 && mcf->env->nelts == 0) return NGX_CONF_OK; /* module unused */

    if (mcf->config_path.len > 0) {
        char path[4096];
        if (mcf->config_path.len >= sizeof path) return "dockerproxy_config path is too long";
        ngx_memcpy(path, mcf->config_path.data, mcf->config_path.len);
        path[mcf->config_path.len] = '\0';
        FILE *f = fopen(path, "rb");
        if (f == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno, "cannot open \"%s\"", path);
            return NGX_CONF_ERROR;
        }
        size_t cap = 65536;
        text = ngx_pnalloc(cf->pool, cap);
        if (text == NULL) { fclose(f); return NGX_CONF_ERROR; }
        for (;;) {
            size_t n = fread(text + text_len, 1, cap - text_len, f);
            text_len += n;
            if (text_len < cap) break;
            u_char *bigger = ngx_pnalloc(cf->pool, cap * 2);
            if (bigger == NULL) { fclose(f); return NGX_CONF_ERROR; }
            ngx_memcpy(bigger, text, text_len);
            text = bigger;
            cap *= 2;
        }
        fclose(f);
    }

    dp_kv *env = ngx_pcalloc(cf->pool, sizeof(dp_kv) * (mcf->env->nelts + 1));
    if (env == NULL) return NGX_CONF_ERROR;
    ngx_keyval_t *kv = mcf->env->elts;
    for (ngx_uint_t i = 0; i < mcf->env->nelts; i++) {
        env[i].key = (const char *)kv[i].key.data;
        env[i].key_len = kv[i].key.len;
        env[i].value = (const char *)kv[i].value.data;
        env[i].value_len = kv[i].value.len;
    }

    dp_result rc = dp_proxy_new(DP_CONFIG_TOML, text, text_len, env, mcf->env->nelts,
                                &mcf->proxy, err, sizeof err);
    if (rc != DP_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "dockerproxy: %s: %s", dp_result_message(rc),
                           err);
        return NGX_CONF_ERROR;
    }
    for (size_t i = 0; i < dp_proxy_warning_count(mcf->proxy); i++) {
        dp_str w;
        if (dp_proxy_warning(mcf->proxy, i, &w) == DP_OK) {
            ngx_conf_log_error(NGX_LOG_WARN, cf, 0, "dockerproxy: %*s", w.len, w.data);
        }
    }
    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) return NGX_CONF_ERROR;
    cln->handler = ngx_http_dp_free_proxy;
    cln->data = mcf;
    return NGX_CONF_OK;
}

static ngx_int_t ngx_http_dp_handler(ngx_http_request_t *r);

static char *ngx_http_dp_enable(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) {
    ngx_http_core_loc_conf_t *clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    (void)cmd;
    (void)conf;
    clcf->handler = ngx_http_dp_handler;
    return NGX_CONF_OK;
}

/* $dp_upstream_url: the URL of the subrequest's upstream request. */
static ngx_int_t ngx_http_dp_url_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v,
                                          uintptr_t data) {
    ngx_http_dp_sub_ctx_t *sctx = ngx_http_get_module_ctx(r, ngx_http_dockerproxy_module);
    (void)data;
    if (sctx == NULL || r == r->main) {
        v->not_found = 1;
        return NGX_OK;
    }
    v->data = sctx->url.data;
    v->len = sctx->url.len;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    return NGX_OK;
}

static ngx_int_t ngx_http_dp_preconfiguration(ngx_conf_t *cf) {
    ngx_str_t name = ngx_string("dp_upstream_url");
    ngx_http_variable_t *var = ngx_http_add_variable(cf, &name, NGX_HTTP_VAR_NOCACHEABLE);
    if (var == NULL) return NGX_ERROR;
    var->get_handler = ngx_http_dp_url_variable;
    return NGX_OK;
}

/* ---- helpers ------------------------------------------------------------------------------ */

static ngx_int_t ngx_http_dp_copy(ngx_pool_t *pool, ngx_str_t *dst, dp_str src) {
    dst->len = src.len;
    dst->data = ngx_pnalloc(pool, src.len + 1);
    if (dst->data == NULL) return NGX_ERROR;
    if (src.len > 0) ngx_memcpy(dst->data, src.data, src.len);
    dst->data[src.len] = '\0';
    return NGX_OK;
}

static int ngx_http_dp_name_is(dp_str s, const char *lower) {
    size_t n = ngx_strlen(lower);
    return s.len == n && ngx_strncasecmp((u_char *)s.data, (u_char *)lower, n) == 0;
}

static void ngx_http_dp_cleanup(void *data) {
    ngx_http_dp_ctx_t *ctx = data;
    if (ctx->retry.timer_set) ngx_del_timer(&ctx->retry);
    dp_verifier_free(ctx->verifier);
    ctx->verifier = NULL;
    dp_exchange_free(ctx->ex);
    ctx->ex = NULL;
}

/* Ends the client request once (rc as for ngx_http_finalize_request). */
static void ngx_http_dp_finish(ngx_http_dp_ctx_t *ctx, ngx_int_t rc) {
    ngx_http_request_t *r = ctx->r;
    if (ctx->finalized) return;
    ctx->finalized = 1;
    if (rc == NGX_OK && !ctx->responded) rc = NGX_HTTP_BAD_GATEWAY;
    if (rc == NGX_OK && ctx->streaming && !r->header_only) {
        rc = ngx_http_send_special(r, NGX_HTTP_LAST);
    }
    if (rc != NGX_OK && rc != NGX_AGAIN && ctx->responded) rc = NGX_ERROR;
    ngx_http_finalize_request(r, rc);
}

/* ---- responses to the client ---------------------------------------------------------- */

static ngx_int_t ngx_http_dp_send_head(ngx_http_request_t *r, const dp_action *a,
                                       const dp_response *resp, off_t *content_length) {
    r->headers_out.status = resp->status;
    r->headers_out.content_length_n = -1;
    *content_length = -1;
    for (size_t i = 0; i < resp->header_count; i++) {
        dp_str name, value;
        if (dp_action_header(a, i, &name, &value) != DP_OK) return NGX_ERROR;
        if (ngx_http_dp_name_is(name, "content-type")) {
            if (ngx_http_dp_copy(r->pool, &r->headers_out.content_type, value) != NGX_OK)
                return NGX_ERROR;
            r->headers_out.content_type_len = value.len;
            r->headers_out.content_type_lowcase = NULL;
            continue;
        }
        if (ngx_http_dp_name_is(name, "content-length")) {
            *content_length = ngx_atoof((u_char *)value.data, value.len);
            continue;
        }
        ngx_table_elt_t *h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) return NGX_ERROR;
        h->hash = 1;
        if (ngx_http_dp_copy(r->pool, &h->key, name) != NGX_OK ||
            ngx_http_dp_copy(r->pool, &h->value, value) != NGX_OK)
            return NGX_ERROR;
        h->lowcase_key = NULL;
#if defined(nginx_version) && nginx_version >= 1023000
        h->next = NULL;
#endif
    }
    return NGX_OK;
}

/* Sends a DP_ACTION_RESPOND. Streaming bodies flow later through the subrequest. */
static ngx_http_dp_step_e ngx_http_dp_respond(ngx_http_dp_ctx_t *ctx, const dp_action *a,
                                              int in_head) {
    ngx_http_request_t *r = ctx->r;
    dp_response resp;
    off_t cl;
    if (dp_action_response(a, &resp) != DP_OK) return DP_FAIL;
    if (resp.body_kind == DP_BODY_UPSTREAM && !in_head) return DP_FAIL;
    if (resp.body_kind == DP_BODY_CACHE) return DP_FAIL; /* no cache in this module */
    if (ngx_http_dp_send_head(r, a, &resp, &cl) != NGX_OK) return DP_FAIL;

    switch (resp.body_kind) {
    case DP_BODY_BYTES:
        r->headers_out.content_length_n = (off_t)resp.body.len;
        break;
    case DP_BODY_EMPTY:
        r->headers_out.content_length_n = r->method == NGX_HTTP_HEAD ? cl : 0;
        break;
    default:
        r->headers_out.content_length_n = cl;
        break;
    }
    if (resp.body_kind == DP_BODY_UPSTREAM && resp.verify.data != NULL) {
        if (dp_verifier_new(resp.verify.data, resp.verify.len, (int64_t)cl, &ctx->verifier) !=
            DP_OK)
            return DP_FAIL;
    }
    ctx->responded = 1;
    ngx_int_t rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK) return DP_FAIL;
    if (resp.body_kind == DP_BODY_UPSTREAM) {
        ctx->streaming = 1;
        ctx->mode = DP_SUB_STREAM;
        return DP_CONTINUE;
    }
    if (r->header_only) return DP_CONTINUE;
    ngx_buf_t *b;
    if (resp.body_kind == DP_BODY_BYTES && resp.body.len > 0) {
        b = ngx_create_temp_buf(r->pool, resp.body.len);
        if (b == NULL) return DP_FAIL;
        b->last = ngx_cpymem(b->last, resp.body.data, resp.body.len);
    } else {
        b = ngx_calloc_buf(r->pool);
        if (b == NULL) return DP_FAIL;
    }
    b->last_buf = 1;
    b->last_in_chain = 1;
    ngx_chain_t out = {b, NULL};
    rc = ngx_http_output_filter(r, &out);
    return rc == NGX_ERROR ? DP_FAIL : DP_CONTINUE;
}

static ngx_http_dp_step_e ngx_http_dp_local(ngx_http_dp_ctx_t *ctx, const dp_action *a) {
    ngx_http_request_t *r = ctx->r;
    dp_local_endpoint e;
    if (dp_action_local(a, &e) != DP_OK) return DP_FAIL;
    static u_char ok[] = "{\"status\":\"ok\"}\n";
    int found = e == DP_LOCAL_HEALTH || e == DP_LOCAL_READY;
    r->headers_out.status = found ? NGX_HTTP_OK : NGX_HTTP_NOT_FOUND;
    r->headers_out.content_length_n = found ? (off_t)(sizeof ok - 1) : 0;
    ngx_str_set(&r->headers_out.content_type, "application/json");
    ctx->responded = 1;
    ngx_int_t rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK) return DP_FAIL;
    if (r->header_only) return DP_CONTINUE;
    ngx_buf_t *b = ngx_calloc_buf(r->pool);
    if (b == NULL) return DP_FAIL;
    if (found) {
        b->pos = ok;
        b->last = ok + sizeof ok - 1;
        b->memory = 1;
    }
    b->last_buf = 1;
    ngx_chain_t out = {b, NULL};
    return ngx_http_output_filter(r, &out) == NGX_ERROR ? DP_FAIL : DP_CONTINUE;
}

/* ---- upstream requests -------------------------------------------------------------------- */

/* Copies a DP_ACTION_SEND_UPSTREAM into the context (the action dies at the next poll). */
static ngx_int_t ngx_http_dp_save_request(ngx_http_dp_ctx_t *ctx, const dp_action *a) {
    ngx_pool_t *pool = ctx->r->pool;
    dp_upstream_request req;
    if (dp_action_upstream(a, &req) != DP_OK) return NGX_ERROR;
    if (req.body_kind == DP_UPSTREAM_BODY_CLIENT) return NGX_ERROR; /* no push support */
    if (ngx_http_dp_copy(pool, &ctx->url, req.url) != NGX_OK ||
        ngx_http_dp_copy(pool, &ctx->method, req.method) != NGX_OK ||
        ngx_http_dp_copy(pool, &ctx->body, req.body) != NGX_OK)
        return NGX_ERROR;
    ctx->headers = ngx_pcalloc(pool, sizeof(dp_header) * (req.header_count + 1));
    if (ctx->headers == NULL) return NGX_ERROR;
    ctx->header_count = req.header_count;
    for (size_t i = 0; i < req.header_count; i++) {
        dp_str name, value;
        ngx_str_t n, v;
        if (dp_action_header(a, i, &name, &value) != DP_OK) return NGX_ERROR;
        if (ngx_http_dp_copy(pool, &n, name) != NGX_OK ||
            ngx_http_dp_copy(pool, &v, value) != NGX_OK)
            return NGX_ERROR;
        ctx->headers[i].name = (const char *)n.data;
        ctx->headers[i].name_len = n.len;
        ctx->headers[i].value = (const char *)v.data;
        ctx->headers[i].value_len = v.len;
    }
    ctx->have_request = 1;
    return NGX_OK;
}

static ngx_int_t ngx_http_dp_sub_done(ngx_http_request_t *sr, void *data, ngx_int_t rc) {
    ngx_http_dp_ctx_t *ctx = data;
    (void)sr;
    ctx->sub_active = 0;
    return rc;
}

/* Starts the saved upstream request as a subrequest to the internal proxy location. */
static ngx_int_t ngx_http_dp_launch(ngx_http_dp_ctx_t *ctx) {
    ngx_http_request_t *r = ctx->r, *sr;
    ngx_http_dp_main_conf_t *mcf = ngx_http_get_module_main_conf(r, ngx_http_dockerproxy_module);
    ngx_http_post_subrequest_t *ps = ngx_palloc(r->pool, sizeof(ngx_http_post_subrequest_t));
    ngx_http_dp_sub_ctx_t *sctx = ngx_pcalloc(r->pool, sizeof(ngx_http_dp_sub_ctx_t));
    if (ps == NULL || sctx == NULL) return NGX_ERROR;
    ps->handler = ngx_http_dp_sub_done;
    ps->data = ctx;
    if (ngx_http_subrequest(r, &mcf->upstream_location, NULL, &sr, ps, 0) != NGX_OK) {
        return NGX_ERROR;
    }
    sctx->main = ctx;
    sctx->url = ctx->url;
    ngx_http_set_ctx(sr, sctx, ngx_http_dockerproxy_module);

    sr->method_name = ctx->method;
    if (ctx->method.len == 4 && ngx_strncmp(ctx->method.data, "HEAD", 4) == 0) {
        sr->method = NGX_HTTP_HEAD;
    } else if (ctx->method.len == 4 && ngx_strncmp(ctx->method.data, "POST", 4) == 0) {
        sr->method = NGX_HTTP_POST;
    } else {
        sr->method = NGX_HTTP_GET;
    }

    /* The subrequest's request headers are exactly the core's (proxy_pass_request_headers). */
    ngx_memzero(&sr->headers_in, sizeof(ngx_http_headers_in_t));
    if (ngx_list_init(&sr->headers_in.headers, r->pool, ctx->header_count + 1,
                      sizeof(ngx_table_elt_t)) != NGX_OK)
        return NGX_ERROR;
    sr->headers_in.content_length_n = -1;
    sr->headers_in.keep_alive_n = -1;
    for (size_t i = 0; i < ctx->header_count; i++) {
        ngx_table_elt_t *h = ngx_list_push(&sr->headers_in.headers);
        if (h == NULL) return NGX_ERROR;
        h->key.data = (u_char *)ctx->headers[i].name;
        h->key.len = ctx->headers[i].name_len;
        h->value.data = (u_char *)ctx->headers[i].value;
        h->value.len = ctx->headers[i].value_len;
        h->lowcase_key = ngx_pnalloc(r->pool, h->key.len);
        if (h->lowcase_key == NULL) return NGX_ERROR;
        h->hash = ngx_hash_strlow(h->lowcase_key, h->key.data, h->key.len);
#if defined(nginx_version) && nginx_version >= 1023000
        h->next = NULL;
#endif
    }
    sr->request_body = NULL;
    if (ctx->body.len > 0) {
        ngx_http_request_body_t *rb = ngx_pcalloc(r->pool, sizeof(ngx_http_request_body_t));
        ngx_buf_t *b = ngx_calloc_buf(r->pool);
        ngx_chain_t *cl = ngx_alloc_chain_link(r->pool);
        if (rb == NULL || b == NULL || cl == NULL) return NGX_ERROR;
        b->pos = b->start = ctx->body.data;
        b->last = b->end = ctx->body.data + ctx->body.len;
        b->memory = 1;
        b->last_buf = 1;
        cl->buf = b;
        cl->next = NULL;
        rb->bufs = cl;
        sr->request_body = rb;
        sr->headers_in.content_length_n = (off_t)ctx->body.len;
    }

    ctx->have_request = 0;
    ctx->sub_active = 1;
    ctx->head_seen = 0;
    ctx->want_body = 0;
    ctx->body_complete = 0;
    ctx->body_too_large = 0;
    ctx->len = 0;
    ctx->mode = DP_SUB_DISCARD;
    return NGX_OK;
}

/* ---- the exchange loop ---------------------------------------------------------------- */

static ngx_http_dp_step_e ngx_http_dp_client_body(ngx_http_dp_ctx_t *ctx, const dp_action *a) {
    ngx_http_request_t *r = ctx->r;
    size_t limit = 0, total = 0;
    uint64_t now = ngx_current_msec;
    if (dp_action_limit(a, &limit) != DP_OK) return DP_FAIL;
    if (r->request_body == NULL || r->request_body->temp_file != NULL) {
        return dp_exchange_client_body(ctx->ex, NULL, 0, now) == DP_OK ? DP_CONTINUE : DP_FAIL;
    }
    for (ngx_chain_t *cl = r->request_body->bufs; cl; cl = cl->next) {
        if (!ngx_buf_in_memory(cl->buf)) return DP_FAIL;
        total += (size_t)(cl->buf->last - cl->buf->pos);
    }
    if (total > limit) {
        return dp_exchange_client_body_failed(ctx->ex, now) == DP_OK ? DP_CONTINUE : DP_FAIL;
    }
    u_char *body = ngx_pnalloc(r->pool, total + 1), *p = body;
    if (body == NULL) return DP_FAIL;
    for (ngx_chain_t *cl = r->request_body->bufs; cl; cl = cl->next) {
        p = ngx_cpymem(p, cl->buf->pos, cl->buf->last - cl->buf->pos);
    }
    return dp_exchange_client_body(ctx->ex, body, total, now) == DP_OK ? DP_CONTINUE : DP_FAIL;
}

static ngx_http_dp_step_e ngx_http_dp_token(ngx_http_dp_ctx_t *ctx) {
    dp_result rc = dp_exchange_token_cache(ctx->ex, ngx_current_msec);
    if (rc == DP_TOKEN_WAIT) {
        ctx->token_pending = 1;
        return DP_STOP;
    }
    ctx->token_pending = 0;
    return rc == DP_OK ? DP_CONTINUE : DP_FAIL;
}

/* Handles one action. `in_head`: called from the subrequest's header filter. */
static ngx_http_dp_step_e ngx_http_dp_step(ngx_http_dp_ctx_t *ctx, const dp_action *a,
                                           int in_head) {
    uint64_t now = ngx_current_msec;
    switch (dp_action_get_kind(a)) {
    case DP_ACTION_SEND_UPSTREAM:
        if (ngx_http_dp_save_request(ctx, a) != NGX_OK) return DP_FAIL;
        if (!in_head && ngx_http_dp_launch(ctx) != NGX_OK) return DP_FAIL;
        return DP_STOP;
    case DP_ACTION_READ_UPSTREAM_BODY:
        if (!in_head) {
            return dp_exchange_upstream_error(ctx->ex, DP_UPSTREAM_BODY_FAILED, now) == DP_OK
                       ? DP_CONTINUE
                       : DP_FAIL;
        }
        if (dp_action_limit(a, &ctx->limit) != DP_OK) return DP_FAIL;
        ctx->mode = DP_SUB_BUFFER;
        ctx->want_body = 1;
        return DP_STOP;
    case DP_ACTION_READ_CLIENT_BODY:
        return ngx_http_dp_client_body(ctx, a);
    case DP_ACTION_CACHE_LOOKUP:
        return dp_exchange_cache_miss(ctx->ex, now) == DP_OK ? DP_CONTINUE : DP_FAIL;
    case DP_ACTION_RECORD_ACCESS:
    case DP_ACTION_TAG_VALIDATED:
    case DP_ACTION_TAG_DROP:
    case DP_ACTION_CACHE_STORE:
        return DP_CONTINUE; /* no cache store in this module */
    case DP_ACTION_TOKEN_LOOKUP:
    case DP_ACTION_TOKEN_STORE:
    case DP_ACTION_TOKEN_INVALIDATE:
        return ngx_http_dp_token(ctx);
    case DP_ACTION_RESPOND:
        return ngx_http_dp_respond(ctx, a, in_head);
    case DP_ACTION_LOCAL:
        return ngx_http_dp_local(ctx, a);
    case DP_ACTION_WAIT: {
        uint64_t deadline = 0;
        if (dp_action_wait_deadline(a, &deadline) != DP_OK) return DP_FAIL;
        ctx->wait_pending = 1;
        ngx_add_timer(&ctx->retry, deadline > now ? (ngx_msec_t)(deadline - now) : 1);
        return DP_STOP;
    }
    case DP_ACTION_DONE:
        ctx->done = 1;
        return DP_STOP;
    default:
        return DP_FAIL;
    }
}

/* Polls and handles actions until the exchange waits for something. */
static ngx_http_dp_step_e ngx_http_dp_run(ngx_http_dp_ctx_t *ctx, int in_head) {
    for (int guard = 0; guard < 1000; guard++) {
        const dp_action *a = NULL;
        if (dp_exchange_poll(ctx->ex, ngx_current_msec, &a) != DP_OK) return DP_FAIL;
        ngx_http_dp_step_e st = ngx_http_dp_step(ctx, a, in_head);
        if (st != DP_CONTINUE) return st;
    }
    return DP_FAIL;
}

/* Continues the exchange from the main request (no subrequest running). */
static void ngx_http_dp_drive(ngx_http_dp_ctx_t *ctx) {
    ngx_http_request_t *r = ctx->r;
    uint64_t now = ngx_current_msec;
    if (ctx->finalized || ctx->sub_active) return;

    if (ctx->ex != NULL && !ctx->head_seen && ctx->url.len > 0 && !ctx->have_request &&
        !ctx->done && !ctx->token_pending && !ctx->wait_pending) {
        /* The last subrequest ended without a response head. */
        ctx->url.len = 0;
        if (dp_exchange_upstream_error(ctx->ex, DP_UPSTREAM_UNREACHABLE, now) != DP_OK) {
            ngx_http_dp_finish(ctx, NGX_HTTP_INTERNAL_SERVER_ERROR);
            return;
        }
    }
    if (ctx->want_body) {
        dp_result rc;
        ctx->want_body = 0;
        if (ctx->body_too_large) {
            rc = dp_exchange_upstream_error(ctx->ex, DP_UPSTREAM_TOO_LARGE, now);
        } else if (!ctx->body_complete) {
            rc = dp_exchange_upstream_error(ctx->ex, DP_UPSTREAM_BODY_FAILED, now);
        } else {
            rc = dp_exchange_upstream_body(ctx->ex, ctx->buf, ctx->len, now);
        }
        if (rc != DP_OK) {
            ngx_http_dp_finish(ctx, NGX_HTTP_INTERNAL_SERVER_ERROR);
            return;
        }
    }
    if (ctx->token_pending && ngx_http_dp_token(ctx) == DP_STOP) {
        if (!ctx->retry.timer_set) ngx_add_timer(&ctx->retry, DP_RETRY_MS);
        return;
    }
    if (ctx->have_request) {
        if (ngx_http_dp_launch(ctx) != NGX_OK) ngx_http_dp_finish(ctx, NGX_HTTP_BAD_GATEWAY);
        return;
    }
    if (ctx->done) {
        ngx_http_dp_finish(ctx, NGX_OK);
        return;
    }
    switch (ngx_http_dp_run(ctx, 0)) {
    case DP_FAIL:
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "dockerproxy: exchange failed");
        ngx_http_dp_finish(ctx, NGX_HTTP_BAD_GATEWAY);
        return;
    case DP_STOP:
        if (ctx->done) {
            ngx_http_dp_finish(ctx, NGX_OK);
        } else if (ctx->token_pending && !ctx->retry.timer_set) {
            ngx_add_timer(&ctx->retry, DP_RETRY_MS);
        }
        return;
    default:
        return;
    }
}

static void ngx_http_dp_retry(ngx_event_t *ev) {
    ngx_http_dp_ctx_t *ctx = ev->data;
    ngx_connection_t *c = ctx->r->connection;
    if (ctx->wait_pending) {
        ctx->wait_pending = 0;
        if (dp_exchange_timeout(ctx->ex, ngx_current_msec) != DP_OK) {
            ngx_http_dp_finish(ctx, NGX_HTTP_INTERNAL_SERVER_ERROR);
            ngx_http_run_posted_requests(c);
            return;
        }
    }
    ngx_http_dp_drive(ctx);
    ngx_http_run_posted_requests(c);
}

static void ngx_http_dp_wake(ngx_http_request_t *r) {
    ngx_http_dp_ctx_t *ctx = ngx_http_get_module_ctx(r, ngx_http_dockerproxy_module);
    if (ctx != NULL) ngx_http_dp_drive(ctx);
}

static void ngx_http_dp_start(ngx_http_request_t *r) {
    ngx_http_dp_ctx_t *ctx = ngx_http_get_module_ctx(r, ngx_http_dockerproxy_module);
    ngx_http_dp_main_conf_t *mcf = ngx_http_get_module_main_conf(r, ngx_http_dockerproxy_module);
    ngx_list_part_t *part = &r->headers_in.headers.part;
    size_t n = 0;
    for (ngx_list_part_t *p = part; p; p = p->next) n += p->nelts;
    dp_header *h = ngx_pcalloc(r->pool, sizeof(dp_header) * (n + 1));
    if (h == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }
    size_t k = 0;
    for (ngx_list_part_t *p = part; p; p = p->next) {
        ngx_table_elt_t *e = p->elts;
        for (ngx_uint_t i = 0; i < p->nelts; i++) {
            h[k].name = (const char *)e[i].key.data;
            h[k].name_len = e[i].key.len;
            h[k].value = (const char *)e[i].value.data;
            h[k].value_len = e[i].value.len;
            k++;
        }
    }
    int tls = 0;
#if (NGX_HTTP_SSL)
    tls = r->connection->ssl != NULL;
#endif
    dp_result rc = dp_exchange_new(mcf->proxy, (const char *)r->method_name.data,
                                   r->method_name.len, (const char *)r->unparsed_uri.data,
                                   r->unparsed_uri.len, h, k,
                                   (const char *)r->connection->addr_text.data,
                                   r->connection->addr_text.len, tls, ngx_current_msec, &ctx->ex);
    if (rc != DP_OK) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0, "dockerproxy: bad request: %s",
                      dp_result_message(rc));
        ngx_http_finalize_request(r, NGX_HTTP_BAD_REQUEST);
        return;
    }
    r->write_event_handler = ngx_http_dp_wake;
    ngx_http_dp_drive(ctx);
}

static ngx_int_t ngx_http_dp_handler(ngx_http_request_t *r) {
    ngx_http_dp_main_conf_t *mcf = ngx_http_get_module_main_conf(r, ngx_http_dockerproxy_module);
    if (r != r->main) return NGX_DECLINED;
    if (mcf->proxy == NULL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "dockerproxy: no configuration (dockerproxy_config / dockerproxy_env)");
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ngx_http_dp_ctx_t *ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_dp_ctx_t));
    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(r->pool, 0);
    if (ctx == NULL || cln == NULL) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    ctx->r = r;
    ctx->retry.handler = ngx_http_dp_retry;
    ctx->retry.data = ctx;
    ctx->retry.log = r->connection->log;
    cln->handler = ngx_http_dp_cleanup;
    cln->data = ctx;
    ngx_http_set_ctx(r, ctx, ngx_http_dockerproxy_module);

    r->request_body_in_single_buf = 1;
    ngx_int_t rc = ngx_http_read_client_request_body(r, ngx_http_dp_start);
    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) return rc;
    return NGX_DONE;
}

/* ---- filters on the subrequest --------------------------------------------------------- */

static ngx_http_dp_ctx_t *ngx_http_dp_sub(ngx_http_request_t *r) {
    if (r == r->main) return NULL;
    ngx_http_dp_sub_ctx_t *sctx = ngx_http_get_module_ctx(r, ngx_http_dockerproxy_module);
    return sctx == NULL ? NULL : sctx->main;
}

static ngx_int_t ngx_http_dp_header_filter(ngx_http_request_t *r) {
    ngx_http_dp_ctx_t *ctx = ngx_http_dp_sub(r);
    if (ctx == NULL) return ngx_http_next_header_filter(r);
    uint64_t now = ngx_current_msec;
    ngx_http_upstream_t *u = r->upstream;
    dp_result rc;
    ctx->head_seen = 1;
    ctx->mode = DP_SUB_DISCARD;

    if (u == NULL || u->headers_in.status_n == 0) {
        /* Nginx's own error page: no upstream head (connect failure or timeout). */
        uint32_t err = r->headers_out.status == NGX_HTTP_GATEWAY_TIME_OUT ? DP_UPSTREAM_TIMEOUT
                                                                          : DP_UPSTREAM_UNREACHABLE;
        rc = dp_exchange_upstream_error(ctx->ex, err, now);
    } else {
        size_t n = 2;
        ngx_list_part_t *part = &r->headers_out.headers.part;
        for (ngx_list_part_t *p = part; p; p = p->next) n += p->nelts;
        dp_header *h = ngx_pcalloc(r->pool, sizeof(dp_header) * n);
        if (h == NULL) return NGX_ERROR;
        size_t k = 0;
        for (ngx_list_part_t *p = part; p; p = p->next) {
            ngx_table_elt_t *e = p->elts;
            for (ngx_uint_t i = 0; i < p->nelts; i++) {
                if (e[i].hash == 0) continue;
                h[k].name = (const char *)e[i].key.data;
                h[k].name_len = e[i].key.len;
                h[k].value = (const char *)e[i].value.data;
                h[k].value_len = e[i].value.len;
                k++;
            }
        }
        if (r->headers_out.content_type.len > 0) {
            h[k].name = "Content-Type";
            h[k].name_len = 12;
            h[k].value = (const char *)r->headers_out.content_type.data;
            h[k].value_len = r->headers_out.content_type.len;
            k++;
        }
        if (r->headers_out.content_length_n >= 0) {
            u_char *len = ngx_pnalloc(r->pool, NGX_OFF_T_LEN);
            if (len == NULL) return NGX_ERROR;
            h[k].name = "Content-Length";
            h[k].name_len = 14;
            h[k].value = (const char *)len;
            h[k].value_len = ngx_sprintf(len, "%O", r->headers_out.content_length_n) - len;
            k++;
        }
        rc = dp_exchange_upstream_head(ctx->ex, (uint16_t)u->headers_in.status_n, h, k, now);
    }
    if (rc != DP_OK) return NGX_ERROR;
    if (ngx_http_dp_run(ctx, 1) == DP_FAIL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "dockerproxy: exchange failed");
        return NGX_ERROR;
    }
    return NGX_OK;
}

/* Appends copies of `n` bytes to the output chain, recycling buffers. */
static ngx_int_t ngx_http_dp_emit(ngx_http_request_t *r, ngx_http_dp_ctx_t *ctx,
                                  ngx_chain_t ***ll, const uint8_t *p, size_t n) {
    while (n > 0) {
        ngx_chain_t *cl = ngx_chain_get_free_buf(r->pool, &ctx->free);
        if (cl == NULL) return NGX_ERROR;
        ngx_buf_t *b = cl->buf;
        if (b->start == NULL) {
            b->start = ngx_palloc(r->pool, DP_COPY_BUF_SIZE);
            if (b->start == NULL) return NGX_ERROR;
            b->end = b->start + DP_COPY_BUF_SIZE;
        }
        b->pos = b->last = b->start;
        b->temporary = 1;
        b->last_in_chain = 0;
        b->last_buf = 0;
        b->flush = 0;
        b->tag = (ngx_buf_tag_t)&ngx_http_dockerproxy_module;
        size_t take = n < (size_t)(b->end - b->start) ? n : (size_t)(b->end - b->start);
        b->last = ngx_cpymem(b->last, p, take);
        p += take;
        n -= take;
        **ll = cl;
        *ll = &cl->next;
    }
    return NGX_OK;
}

static ngx_int_t ngx_http_dp_body_filter(ngx_http_request_t *r, ngx_chain_t *in) {
    ngx_http_dp_ctx_t *ctx = ngx_http_dp_sub(r);
    if (ctx == NULL) return ngx_http_next_body_filter(r, in);
    if (ctx->mode == DP_SUB_STREAM && ctx->verifier == NULL) {
        return ngx_http_next_body_filter(r, in);
    }
    ngx_chain_t *out = NULL, **ll = &out;
    int last = 0;
    for (ngx_chain_t *cl = in; cl; cl = cl->next) {
        ngx_buf_t *b = cl->buf;
        if (!ngx_buf_in_memory(b) && ngx_buf_size(b) > 0) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "dockerproxy: upstream body in a file; set proxy_max_temp_file_size 0");
            return NGX_ERROR;
        }
        size_t size = ngx_buf_in_memory(b) ? (size_t)(b->last - b->pos) : 0;
        if (b->last_buf || b->last_in_chain) last = 1;
        if (ctx->mode == DP_SUB_BUFFER && size > 0) {
            if (ctx->len + size > ctx->limit) {
                ctx->body_too_large = 1;
            } else {
                if (ctx->len + size > ctx->cap) {
                    size_t cap = ngx_max(ctx->cap * 2, ctx->len + size);
                    u_char *nb = ngx_pnalloc(ctx->r->pool, cap);
                    if (nb == NULL) return NGX_ERROR;
                    if (ctx->len > 0) ngx_memcpy(nb, ctx->buf, ctx->len);
                    ctx->buf = nb;
                    ctx->cap = cap;
                }
                ngx_memcpy(ctx->buf + ctx->len, b->pos, size);
                ctx->len += size;
            }
        } else if (ctx->mode == DP_SUB_STREAM && size > 0) {
            const uint8_t *rel = NULL;
            size_t rel_len = 0;
            dp_result rc = dp_verifier_push(ctx->verifier, b->pos, size, &rel, &rel_len);
            if (rc != DP_OK) {
                ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                              "dockerproxy: blob verification failed: %s", dp_result_message(rc));
                return NGX_ERROR;
            }
            if (ngx_http_dp_emit(r, ctx, &ll, rel, rel_len) != NGX_OK) return NGX_ERROR;
        }
        if (ngx_buf_in_memory(b)) b->pos = b->last;
    }
    if (ctx->mode == DP_SUB_BUFFER && last) ctx->body_complete = 1;
    if (ctx->mode != DP_SUB_STREAM) return NGX_OK;

    if (last) {
        const uint8_t *rel = NULL;
        size_t rel_len = 0;
        dp_result rc = dp_verifier_finish(ctx->verifier, &rel, &rel_len);
        if (rc != DP_OK) {
            dp_str actual = {NULL, 0};
            dp_verifier_actual_digest(ctx->verifier, &actual);
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "dockerproxy: blob verification failed: %s (bytes hash to %*s)",
                          dp_result_message(rc), actual.len, actual.data);
            return NGX_ERROR;
        }
        if (ngx_http_dp_emit(r, ctx, &ll, rel, rel_len) != NGX_OK) return NGX_ERROR;
        ngx_chain_t *cl = ngx_chain_get_free_buf(r->pool, &ctx->free);
        if (cl == NULL) return NGX_ERROR;
        cl->buf->pos = cl->buf->last = cl->buf->start;
        cl->buf->temporary = 0;
        cl->buf->last_in_chain = 1;
        cl->buf->flush = 1;
        cl->buf->tag = (ngx_buf_tag_t)&ngx_http_dockerproxy_module;
        *ll = cl;
        ll = &cl->next;
    }
    if (out == NULL) return NGX_OK;
    ngx_int_t rc = ngx_http_next_body_filter(r, out);
    ngx_chain_update_chains(r->pool, &ctx->free, &ctx->busy, &out,
                            (ngx_buf_tag_t)&ngx_http_dockerproxy_module);
    return rc;
}

static ngx_int_t ngx_http_dp_postconfiguration(ngx_conf_t *cf) {
    (void)cf;
    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_dp_header_filter;
    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_dp_body_filter;
    return NGX_OK;
}
