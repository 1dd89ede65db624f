/* libFuzzer target for the credential and token parsers (common/frame.c
 * credentials, server/auth.c JWT header, signature and claims, and the
 * pattern syntax and trie of server/policy.c). Each input is tried as HELLO
 * credentials, as a JWT against an HS256 key and an ES256-less key set,
 * and as a permission pattern. Anything but a clean accept or refusal
 * traps: refusals must carry unauthorized, accepted tokens must carry a
 * sub and a policy.
 *
 * `make fuzz T=auth`; `make test` replays tests/fuzz/corpus/auth. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/pattern.h"
#include "server/auth.h"
#include "server/policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            __builtin_trap();                                                                      \
        }                                                                                          \
    } while (0)

/* The secret the corpus tokens are signed with. */
#define FUZZ_SECRET "ringbus-fuzz-secret-0123456789abcdef"

/* Seconds: the corpus tokens expire in 2033. */
#define FUZZ_NOW 1900000000

static rb_auth *auth;

static void init(void)
{
    static rb_config cfg;
    char path[] = "/tmp/rb_fuzz_auth_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    CHECK(write(fd, FUZZ_SECRET, strlen(FUZZ_SECRET)) == (ssize_t)strlen(FUZZ_SECRET));
    close(fd);
    rb_config_defaults(&cfg);
    cfg.auth_mode = RB_AUTH_MODE_REQUIRED;
    cfg.auth_jwt_key_count = 1;
    cfg.auth_jwt_keys[0].algorithm = RB_JWT_HS256;
    snprintf(cfg.auth_jwt_keys[0].path, sizeof cfg.auth_jwt_keys[0].path, "%s", path);
    rb_err err;
    CHECK(rb_auth_new(&cfg, &auth, &err) == 0);
    unlink(path);
}

static void check_identity(int rc, const rb_identity *id, const rb_err *err)
{
    CHECK(rc == 0 || rc == RB_EINVAL);
    if (rc != 0) {
        CHECK(err->cause == RB_WIRE_UNAUTHORIZED);
        CHECK(err->msg[0] != '\0');
        CHECK(id->policy == NULL);
        return;
    }
    CHECK(id->name[0] != '\0');
    CHECK(id->policy != NULL);
    CHECK(id->source == RB_IDENTITY_TOKEN);
    CHECK(id->expires_at_s != 0);
}

static void check_pattern(rb_bytes in)
{
    rb_err err;
    if (rb_pattern_validate(in, &err) != 0) {
        return;
    }
    rb_policy *p = rb_policy_new();
    CHECK(p != NULL);
    CHECK(rb_policy_add(p, RB_POLICY_SUBSCRIBE, false, in, &err) == 0);
    /* A pattern without wildcards matches itself as a topic. */
    bool literal = memchr(in.ptr, '*', in.len) == NULL && memchr(in.ptr, '>', in.len) == NULL;
    if (literal && in.ptr[0] != '$') {
        CHECK(rb_policy_allows(p, RB_POLICY_SUBSCRIBE, in));
    }
    CHECK(!rb_policy_allows(p, RB_POLICY_PUBLISH, in));
    rb_policy_free(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (auth == NULL) {
        init();
    }
    rb_bytes in = {data, size};
    rb_identity id;
    rb_err err;
    /* Password credentials would run argon2: this key set has no users, so
     * they are refused at once. */
    int rc = rb_auth_verify(auth, in, FUZZ_NOW, &id, &err);
    CHECK(rc == 0 || rc == RB_EINVAL);
    if (rc == 0) {
        rb_identity_release(&id);
    }
    if (size <= RB_AUTH_TOKEN_BYTES_MAX + 1) {
        rc = rb_auth_verify_token(auth, in, FUZZ_NOW, &id, &err);
        check_identity(rc, &id, &err);
        rb_identity_release(&id);
    }
    if (size >= 1 && size <= RB_TOPIC_BYTES_MAX) {
        check_pattern(in);
    }
    return 0;
}
