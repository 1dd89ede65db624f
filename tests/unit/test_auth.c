/* Tests of credential verification (server/auth.c) and the auth worker
 * pool (server/auth_pool.c): tokens signed by libjwt and keys made by
 * OpenSSL at test time, argon2id hashes made by libargon2 with test-sized
 * costs; every refusal of the list (expired, not yet valid, wrong
 * signature, alg none, HS/RS confusion, malformed, oversized, wrong
 * password, unknown user) with its reason. */
#include <argon2.h>
#include <jwt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <check.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "server/auth.h"
#include "server/auth_pool.h"

Suite *rb_auth_suite(void);

#define SECRET  "0123456789abcdef0123456789abcdef"
#define SECRET2 "ffffffffffffffffffffffffffffffff"

static rb_config cfg;
static char paths[4][64];
static int path_count;

static const char *write_file(const char *text, size_t len)
{
    char *path = paths[path_count++];
    snprintf(path, 64, "/tmp/rb_auth_test_XXXXXX");
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, text, len), (ssize_t)len);
    close(fd);
    return path;
}

static void teardown(void)
{
    for (int i = 0; i < path_count; i++) {
        unlink(paths[i]);
    }
    path_count = 0;
}

/* A key pair: the public PEM goes to a file for the config, the private
 * PEM stays in memory for signing. */
typedef struct keypair {
    char priv[8192];
    size_t priv_len;
    char pub[4096];
    size_t pub_len;
} keypair;

static void make_keypair(keypair *kp, EVP_PKEY *pkey)
{
    ck_assert_ptr_nonnull(pkey);
    BIO *b = BIO_new(BIO_s_mem());
    ck_assert_int_eq(PEM_write_bio_PrivateKey(b, pkey, NULL, NULL, 0, NULL, NULL), 1);
    kp->priv_len = (size_t)BIO_read(b, kp->priv, sizeof kp->priv - 1);
    kp->priv[kp->priv_len] = '\0';
    BIO_free(b);
    b = BIO_new(BIO_s_mem());
    ck_assert_int_eq(PEM_write_bio_PUBKEY(b, pkey), 1);
    kp->pub_len = (size_t)BIO_read(b, kp->pub, sizeof kp->pub - 1);
    kp->pub[kp->pub_len] = '\0';
    BIO_free(b);
    EVP_PKEY_free(pkey);
}

static void add_key(const char *kid, rb_jwt_alg alg, const char *file)
{
    rb_jwt_key_config *k = &cfg.auth_jwt_keys[cfg.auth_jwt_key_count++];
    snprintf(k->kid, sizeof k->kid, "%s", kid);
    k->algorithm = alg;
    snprintf(k->path, sizeof k->path, "%s", file);
    snprintf(k->where, sizeof k->where, "t.toml:%u:1: auth.jwt_key[%u]", cfg.auth_jwt_key_count,
             cfg.auth_jwt_key_count);
}

static void add_pattern(rb_auth_user_config *u, rb_perm_list list, const char *pat)
{
    if (u->lists[list].count == 0) {
        u->lists[list].first = cfg.auth_pattern_count;
    }
    size_t len = strlen(pat);
    memcpy(cfg.auth_pattern_bytes + cfg.auth_pattern_bytes_len, pat, len);
    cfg.auth_patterns[cfg.auth_pattern_count++] =
        (rb_pattern_ref){.off = cfg.auth_pattern_bytes_len, .len = (uint8_t)len};
    cfg.auth_pattern_bytes_len += (uint32_t)len;
    u->lists[list].count++;
}

/* A hash at a test-sized cost (config allows m >= 8). */
static void cheap_hash(const char *password, uint32_t m_kib, char *out, size_t cap)
{
    static const uint8_t salt[16] = "saltsaltsaltsalt";
    ck_assert_int_eq(argon2id_hash_encoded(1, m_kib, 1, password, strlen(password), salt,
                                           sizeof salt, 32, out, cap),
                     ARGON2_OK);
}

static rb_auth_user_config *add_user(const char *name, const char *password, uint32_t m_kib)
{
    rb_auth_user_config *u = &cfg.auth_users[cfg.auth_user_count++];
    snprintf(u->name, sizeof u->name, "%s", name);
    if (password != NULL) {
        cheap_hash(password, m_kib, u->password_hash, sizeof u->password_hash);
    }
    return u;
}

static rb_auth *build(void)
{
    rb_auth *a = NULL;
    rb_err err = {0};
    ck_assert_msg(rb_auth_new(&cfg, &a, &err) == 0, "%s", err.msg);
    return a;
}

static void setup(void)
{
    rb_config_defaults(&cfg);
    cfg.auth_mode = RB_AUTH_MODE_REQUIRED;
    cfg.auth_clock_skew_s = 30;
}

static const int64_t NOW = 1900000000;

/* Signs claims (JSON) with alg and key (secret or private PEM). */
static char *sign(jwt_alg_t alg, const char *key, size_t key_len, const char *kid,
                  const char *claims)
{
    jwt_t *j = NULL;
    ck_assert_int_eq(jwt_new(&j), 0);
    ck_assert_int_eq(jwt_add_grants_json(j, claims), 0);
    if (kid != NULL) {
        ck_assert_int_eq(jwt_add_header(j, "kid", kid), 0);
    }
    ck_assert_int_eq(jwt_set_alg(j, alg, (const unsigned char *)key, (int)key_len), 0);
    char *tok = jwt_encode_str(j);
    ck_assert_ptr_nonnull(tok);
    jwt_free(j);
    return tok;
}

static char *hs(const char *claims)
{
    return sign(JWT_ALG_HS256, SECRET, strlen(SECRET), NULL, claims);
}

static int verify(const rb_auth *a, const char *tok, rb_identity *id, rb_err *err)
{
    return rb_auth_verify_token(a, (rb_bytes){(const uint8_t *)tok, strlen(tok)}, NOW, id, err);
}

static void expect_refused(const rb_auth *a, const char *tok, const char *why)
{
    rb_identity id;
    rb_err err = {0};
    ck_assert_int_eq(verify(a, tok, &id, &err), RB_EINVAL);
    ck_assert_int_eq(err.cause, RB_WIRE_UNAUTHORIZED);
    ck_assert_msg(strstr(err.msg, why) != NULL, "want \"%s\" in \"%s\"", why, err.msg);
    ck_assert_ptr_null(id.policy);
}

static rb_bytes b(const char *s)
{
    return (rb_bytes){(const uint8_t *)s, strlen(s)};
}

static rb_auth *hs_auth(void)
{
    add_key("", RB_JWT_HS256, write_file(SECRET "\n", strlen(SECRET) + 1));
    return build();
}

/* ---- tokens ---- */

START_TEST(test_auth_hs256_token_gives_sub_exp_and_claim_permissions)
{
    rb_auth *a = hs_auth();
    char *tok = hs("{\"sub\":\"svc-1\",\"exp\":1900000100,\"publish\":[\"orders.>\"],"
                   "\"subscribe\":[\"news.*\"],\"subscribe_deny\":[\"news.secret\"]}");
    rb_identity id;
    rb_err err = {0};
    ck_assert_msg(verify(a, tok, &id, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(id.source, RB_IDENTITY_TOKEN);
    ck_assert_str_eq(id.name, "svc-1");
    ck_assert_int_eq(id.expires_at_s, 1900000100);
    ck_assert(id.policy_owned);
    ck_assert(rb_policy_allows(id.policy, RB_POLICY_PUBLISH, b("orders.eu")));
    ck_assert(!rb_policy_allows(id.policy, RB_POLICY_SUBSCRIBE, b("orders.eu")));
    ck_assert(rb_policy_allows(id.policy, RB_POLICY_SUBSCRIBE, b("news.x")));
    ck_assert(!rb_policy_allows(id.policy, RB_POLICY_SUBSCRIBE, b("news.secret")));
    rb_identity_release(&id);
    ck_assert_ptr_null(id.policy);
    free(tok);
    rb_auth_free(a);
}
END_TEST

START_TEST(test_auth_token_without_permission_claims_may_do_nothing)
{
    rb_auth *a = hs_auth();
    char *tok = hs("{\"sub\":\"svc\",\"exp\":1900000100}");
    rb_identity id;
    rb_err err;
    ck_assert_int_eq(verify(a, tok, &id, &err), 0);
    ck_assert(!rb_policy_allows(id.policy, RB_POLICY_PUBLISH, b("a")));
    ck_assert(!rb_policy_allows(id.policy, RB_POLICY_SUBSCRIBE, b("a")));
    rb_identity_release(&id);
    free(tok);
    rb_auth_free(a);
}
END_TEST

START_TEST(test_auth_expiry_is_checked_with_the_configured_skew)
{
    rb_auth *a = hs_auth();
    char *late = hs("{\"sub\":\"s\",\"exp\":1899999969}"); /* 31 s ago */
    char *edge = hs("{\"sub\":\"s\",\"exp\":1899999970}"); /* 30 s ago */
    expect_refused(a, late, "token: expired 31 s ago");
    rb_identity id;
    rb_err err;
    ck_assert_int_eq(verify(a, edge, &id, &err), 0);
    rb_identity_release(&id);
    free(late);
    free(edge);
    rb_auth_free(a);
}
END_TEST

START_TEST(test_auth_not_yet_valid_token_is_refused_beyond_the_skew)
{
    rb_auth *a = hs_auth();
    char *early = hs("{\"sub\":\"s\",\"exp\":1900009999,\"nbf\":1900000031}");
    char *edge = hs("{\"sub\":\"s\",\"exp\":1900009999,\"nbf\":1900000030}");
    expect_refused(a, early, "token: not valid for another 31 s");
    rb_identity id;
    rb_err err;
    ck_assert_int_eq(verify(a, edge, &id, &err), 0);
    rb_identity_release(&id);
    free(early);
    free(edge);
    rb_auth_free(a);
}
END_TEST

START_TEST(test_auth_token_without_exp_or_sub_is_refused)
{
    rb_auth *a = hs_auth();
    char *no_exp = hs("{\"sub\":\"s\"}");
    char *no_sub = hs("{\"exp\":1900000100}");
    char *bad_sub = hs("{\"sub\":\"a b\",\"exp\":1900000100}");
    char *str_exp = hs("{\"sub\":\"s\",\"exp\":\"soon\"}");
    expect_refused(a, no_exp, "token: no exp (tokens must expire)");
    expect_refused(a, no_sub, "token: sub is missing or not a valid name");
    expect_refused(a, bad_sub, "token: sub is missing or not a valid name");
    expect_refused(a, str_exp, "token: claim exp is not a number");
    free(no_exp);
    free(no_sub);
    free(bad_sub);
    free(str_exp);
    rb_auth_free(a);
}
END_TEST

START_TEST(test_auth_wrong_signature_is_refused)
{
    rb_auth *a = hs_auth();
    char *tok =
        sign(JWT_ALG_HS256, SECRET2, strlen(SECRET2), NULL, "{\"sub\":\"s\",\"exp\":1900000100}");
    expect_refused(a, tok, "token: signature does not verify");
    /* A flipped byte of a good token's payload. */
    char *good = hs("{\"sub\":\"s\",\"exp\":1900000100}");
    char *dot = strchr(good, '.');
    dot[2] = dot[2] == 'A' ? 'B' : 'A';
    expect_refused(a, good, "token: ");
    free(tok);
    free(good);
    rb_auth_free(a);
}
END_TEST

START_TEST(test_auth_alg_none_is_refused)
{
    rb_auth *a = hs_auth();
    /* {"alg":"none","typ":"JWT"} . {"sub":"s","exp":1900000100} . (empty) */
    expect_refused(a, "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJzIiwiZXhwIjoxOTAwMDAwMTAwfQ.",
                   "token: alg \"none\" but the key is HS256");
    rb_auth_free(a);
}
END_TEST

START_TEST(test_auth_hs256_signed_with_the_rsa_public_key_is_refused)
{
    keypair kp;
    make_keypair(&kp, EVP_RSA_gen(2048));
    add_key("", RB_JWT_RS256, write_file(kp.pub, kp.pub_len));
    rb_auth *a = build();
    /* The classic confusion: the public PEM (which attackers know) used
     * as an HMAC secret. */
    char *tok = sign(JWT_ALG_HS256, kp.pub, kp.pub_len, NULL, "{\"sub\":\"s\",\"exp\":1900000100}");
    expect_refused(a, tok, "token: alg \"HS256\" but the key is RS256");
    char *good =
        sign(JWT_ALG_RS256, kp.priv, kp.priv_len, NULL, "{\"sub\":\"s\",\"exp\":1900000100}");
    rb_identity id;
    rb_err err = {0};
    ck_assert_msg(verify(a, good, &id, &err) == 0, "%s", err.msg);
    ck_assert_str_eq(id.name, "s");
    rb_identity_release(&id);
    free(tok);
    free(good);
    rb_auth_free(a);
}
END_TEST

START_TEST(test_auth_kid_selects_the_key_and_an_unknown_kid_is_refused_escaped)
{
    keypair ec;
    make_keypair(&ec, EVP_EC_gen("P-256"));
    add_key("k1", RB_JWT_HS256, write_file(SECRET, strlen(SECRET)));
    add_key("k2", RB_JWT_ES256, write_file(ec.pub, ec.pub_len));
    rb_auth *a = build();
    const char *claims = "{\"sub\":\"s\",\"exp\":1900000100}";
    char *t1 = sign(JWT_ALG_HS256, SECRET, strlen(SECRET), "k1", claims);
    char *t2 = sign(JWT_ALG_ES256, ec.priv, ec.priv_len, "k2", claims);
    char *t3 = sign(JWT_ALG_ES256, ec.priv, ec.priv_len, "k1", claims);
    char *t4 = sign(JWT_ALG_HS256, SECRET, strlen(SECRET), "k\"9\n", claims);
    char *t5 = sign(JWT_ALG_HS256, SECRET, strlen(SECRET), NULL, claims);
    rb_identity id;
    rb_err err = {0};
    ck_assert_msg(verify(a, t1, &id, &err) == 0, "%s", err.msg);
    rb_identity_release(&id);
    ck_assert_msg(verify(a, t2, &id, &err) == 0, "%s", err.msg);
    rb_identity_release(&id);
    expect_refused(a, t3, "token: alg \"ES256\" but the key is HS256");
    expect_refused(a, t4, "token: no key with kid \"k\\x229\\x0a\"");
    expect_refused(a, t5, "token: no kid and no key without kid");
    free(t1);
    free(t2);
    free(t3);
    free(t4);
    free(t5);
    rb_auth_free(a);
}
END_TEST

START_TEST(test_auth_malformed_tokens_are_refused)
{
    rb_auth *a = hs_auth();
    expect_refused(a, "abc", "token: not a signed JWT");
    expect_refused(a, "a.b.c.d.e", "token: not a signed JWT");
    expect_refused(a, "!!!.e30.x", "token: header is not base64url JSON");
    expect_refused(a, "W10.e30.x", "token: header is not base64url JSON"); /* [] */
    expect_refused(a, "e30.e30.x", "token: header has no alg");            /* {} */
    /* {"alg":"HS256","crit":["x"]} */
    expect_refused(a, "eyJhbGciOiJIUzI1NiIsImNyaXQiOlsieCJdfQ.e30.x", "crit");
    rb_auth_free(a);
}
END_TEST

START_TEST(test_auth_oversized_token_is_refused_before_parsing)
{
    rb_auth *a = hs_auth();
    static char big[RB_AUTH_TOKEN_BYTES_MAX + 2];
    memset(big, 'A', sizeof big - 1);
    expect_refused(a, big, "token: empty or above 8192 bytes");
    rb_auth_free(a);
}
END_TEST

START_TEST(test_auth_malformed_permission_claims_are_refused)
{
    rb_auth *a = hs_auth();
    char *t1 = hs("{\"sub\":\"s\",\"exp\":1900000100,\"publish\":\"orders.>\"}");
    char *t2 = hs("{\"sub\":\"s\",\"exp\":1900000100,\"subscribe\":[\"a.>.b\"]}");
    char *t3 = hs("{\"sub\":\"s\",\"exp\":1900000100,\"subscribe_deny\":[7]}");
    expect_refused(a, t1, "token: claim publish is not an array of patterns");
    expect_refused(a, t2, "token: claim subscribe holds a malformed pattern");
    expect_refused(a, t3, "token: claim subscribe_deny holds a malformed pattern");
    free(t1);
    free(t2);
    free(t3);
    rb_auth_free(a);
}
END_TEST

/* ---- key files ---- */

START_TEST(test_auth_rs256_key_must_be_rsa_of_2048_bits)
{
    keypair small;
    keypair ec;
    make_keypair(&small, EVP_RSA_gen(1024));
    make_keypair(&ec, EVP_EC_gen("P-256"));
    add_key("a", RB_JWT_RS256, write_file(small.pub, small.pub_len));
    rb_auth *a = NULL;
    rb_err err = {0};
    ck_assert_int_eq(rb_auth_new(&cfg, &a, &err), RB_ECONFIG);
    ck_assert_msg(strstr(err.msg, "t.toml:1:1: auth.jwt_key[1]: ") == err.msg, "%s", err.msg);
    ck_assert_msg(strstr(err.msg, "is a 1024-bit RSA key; at least 2048") != NULL, "%s", err.msg);
    cfg.auth_jwt_key_count = 0;
    add_key("a", RB_JWT_RS256, write_file(ec.pub, ec.pub_len));
    ck_assert_int_eq(rb_auth_new(&cfg, &a, &err), RB_ECONFIG);
    ck_assert_msg(strstr(err.msg, "is not an RSA key (RS256 needs one)") != NULL, "%s", err.msg);
}
END_TEST

START_TEST(test_auth_es256_key_must_be_p256_and_pem_must_parse)
{
    keypair p384;
    make_keypair(&p384, EVP_EC_gen("P-384"));
    add_key("a", RB_JWT_ES256, write_file(p384.pub, p384.pub_len));
    rb_auth *a = NULL;
    rb_err err = {0};
    ck_assert_int_eq(rb_auth_new(&cfg, &a, &err), RB_ECONFIG);
    ck_assert_msg(strstr(err.msg, "is not an EC P-256 key (ES256 needs one)") != NULL, "%s",
                  err.msg);
    cfg.auth_jwt_key_count = 0;
    const char *junk = "-----BEGIN PUBLIC KEY-----\nnot base64!\n-----END PUBLIC KEY-----\n";
    add_key("a", RB_JWT_ES256, write_file(junk, strlen(junk)));
    ck_assert_int_eq(rb_auth_new(&cfg, &a, &err), RB_ECONFIG);
    ck_assert_msg(strstr(err.msg, "is not a PEM public key") != NULL, "%s", err.msg);
}
END_TEST

/* ---- passwords ---- */

static double seconds_of(const rb_auth *a, const char *user, const char *pw, int *rc)
{
    struct timespec t0;
    struct timespec t1;
    rb_identity id;
    rb_err err;
    /* CPU time of this thread (argon2 with p = 1 runs on the caller): what
     * the hash costs, not how busy the machine is. */
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
    *rc = rb_auth_verify_password(a, b(user), b(pw), &id, &err);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
    if (*rc == 0) {
        rb_identity_release(&id);
    } else {
        ck_assert_str_eq(err.msg, "unknown user or wrong password");
    }
    return (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
}

START_TEST(test_auth_password_gives_the_users_identity_and_policy)
{
    rb_auth_user_config *u = add_user("alice", "hunter2", 64);
    add_pattern(u, RB_PERM_PUBLISH, "orders.>");
    add_pattern(u, RB_PERM_PUBLISH_DENY, "orders.secret");
    u->publish_rate = 5;
    rb_auth *a = build();
    rb_identity id;
    rb_err err = {0};
    ck_assert_msg(rb_auth_verify_password(a, b("alice"), b("hunter2"), &id, &err) == 0, "%s",
                  err.msg);
    ck_assert_int_eq(id.source, RB_IDENTITY_USER);
    ck_assert_str_eq(id.name, "alice");
    ck_assert_uint_eq(id.publish_rate, 5);
    ck_assert(!id.policy_owned);
    ck_assert(rb_policy_allows(id.policy, RB_POLICY_PUBLISH, b("orders.eu")));
    ck_assert(!rb_policy_allows(id.policy, RB_POLICY_PUBLISH, b("orders.secret")));
    rb_identity_release(&id);
    rb_auth_free(a);
}
END_TEST

START_TEST(test_auth_certificate_name_gives_the_users_identity_or_is_refused_escaped)
{
    rb_auth_user_config *u = add_user("carol", NULL, 0);
    add_pattern(u, RB_PERM_PUBLISH, "c.>");
    rb_auth *a = build();
    rb_identity id;
    rb_err err = {0};
    ck_assert_msg(rb_auth_verify_cert_user(a, b("carol"), &id, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(id.source, RB_IDENTITY_CERT);
    ck_assert_str_eq(id.name, "carol");
    ck_assert(rb_policy_allows(id.policy, RB_POLICY_PUBLISH, b("c.x")));
    ck_assert(!rb_policy_allows(id.policy, RB_POLICY_PUBLISH, b("d")));
    rb_identity_release(&id);
    ck_assert_int_eq(rb_auth_verify_cert_user(a, b("car\nol"), &id, &err), RB_EINVAL);
    ck_assert_uint_eq(err.cause, RB_WIRE_UNAUTHORIZED);
    ck_assert_str_eq(err.msg, "client certificate: \"car\\x0aol\" is no [[auth.user]]");
    rb_auth_free(a);
}
END_TEST

START_TEST(test_auth_wrong_password_and_unknown_user_look_the_same)
{
    add_user("alice", "hunter2", 16384);
    add_user("certonly", NULL, 0);
    rb_auth *a = build();
    int rc;
    /* Minimums over several runs: a busy machine only adds time. */
    double known = 1e9;
    double unknown = 1e9;
    for (int i = 0; i < 5; i++) {
        double k = seconds_of(a, "alice", "wrong", &rc);
        ck_assert_int_eq(rc, RB_EINVAL);
        double u = seconds_of(a, "mallory", "wrong", &rc);
        ck_assert_int_eq(rc, RB_EINVAL);
        known = k < known ? k : known;
        unknown = u < unknown ? u : unknown;
    }
    (void)seconds_of(a, "certonly", "x", &rc);
    ck_assert_int_eq(rc, RB_EINVAL);
    (void)seconds_of(a, "alic", "hunter2", &rc);
    ck_assert_int_eq(rc, RB_EINVAL);
    /* The unknown name is hashed too (the dummy), at the same cost. */
    ck_assert_msg(unknown > known * 0.2 && unknown < known * 5, "known %.4f s, unknown %.4f s",
                  known, unknown);
    rb_auth_free(a);
}
END_TEST

START_TEST(test_auth_hash_password_verifies_and_refuses_bad_lengths)
{
    char hash[RB_AUTH_HASH_BYTES_MAX];
    rb_err err;
    ck_assert_int_eq(rb_auth_hash_password(b("pw"), hash, sizeof hash, &err), 0);
    ck_assert_msg(strncmp(hash, "$argon2id$v=19$m=65536,t=3,p=1$", 31) == 0, "%s", hash);
    ck_assert_int_eq(argon2id_verify(hash, "pw", 2), ARGON2_OK);
    ck_assert_int_ne(argon2id_verify(hash, "pW", 2), ARGON2_OK);
    ck_assert_int_eq(rb_auth_hash_password(b(""), hash, sizeof hash, &err), RB_EINVAL);
}
END_TEST

/* ---- dispatch ---- */

START_TEST(test_auth_empty_credentials_depend_on_the_mode)
{
    rb_auth *a = hs_auth();
    rb_identity id;
    rb_err err;
    ck_assert_int_eq(rb_auth_verify(a, (rb_bytes){NULL, 0}, NOW, &id, &err), RB_EINVAL);
    ck_assert_str_eq(err.msg, "credentials required (auth.mode = required)");
    rb_auth_free(a);
    cfg.auth_mode = RB_AUTH_MODE_NONE;
    a = build();
    ck_assert_int_eq(rb_auth_verify(a, (rb_bytes){NULL, 0}, NOW, &id, &err), 0);
    ck_assert_int_eq(id.source, RB_IDENTITY_ANONYMOUS);
    ck_assert(rb_policy_allows(id.policy, RB_POLICY_PUBLISH, b("any.topic")));
    ck_assert(!rb_policy_allows(id.policy, RB_POLICY_PUBLISH, b("$sys.x")));
    rb_identity_release(&id);
    rb_auth_free(a);
}
END_TEST

START_TEST(test_auth_credentials_dispatch_to_token_and_password)
{
    add_key("", RB_JWT_HS256, write_file(SECRET, strlen(SECRET)));
    add_user("bob", "pw", 64);
    rb_auth *a = build();
    uint8_t cred[RB_AUTH_CREDENTIALS_BYTES_MAX];
    char *tok = hs("{\"sub\":\"t\",\"exp\":1900000100}");
    size_t n = rb_credentials_encode_token(cred, sizeof cred, b(tok));
    rb_identity id;
    rb_err err = {0};
    ck_assert_msg(rb_auth_verify(a, (rb_bytes){cred, n}, NOW, &id, &err) == 0, "%s", err.msg);
    ck_assert_str_eq(id.name, "t");
    ck_assert(!rb_auth_is_slow((rb_bytes){cred, n}));
    rb_identity_release(&id);
    n = rb_credentials_encode_password(cred, sizeof cred, b("bob"), b("pw"));
    ck_assert(rb_auth_is_slow((rb_bytes){cred, n}));
    ck_assert_int_eq(rb_auth_verify(a, (rb_bytes){cred, n}, NOW, &id, &err), 0);
    ck_assert_str_eq(id.name, "bob");
    rb_identity_release(&id);
    ck_assert_int_eq(rb_auth_verify(a, (rb_bytes){(const uint8_t *)"\x09", 1}, NOW, &id, &err),
                     RB_EINVAL);
    ck_assert_int_eq(err.cause, RB_WIRE_UNAUTHORIZED);
    free(tok);
    rb_auth_free(a);
}
END_TEST

START_TEST(test_auth_escape_hides_control_bytes_and_quotes)
{
    char out[32];
    rb_auth_escape(out, sizeof out, (const uint8_t *)"a\"b\\\n\x01\xff", 7);
    ck_assert_str_eq(out, "a\\x22b\\x5c\\x0a\\x01\\xff");
    rb_auth_escape(out, 8, (const uint8_t *)"\n\n\n", 3);
    ck_assert_uint_le(strlen(out), 7);
}
END_TEST

/* ---- the worker pool ---- */

typedef struct waiter {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int done;
} waiter;

static waiter w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};

static void job_done(rb_auth_job *job, void *ctx)
{
    (void)job;
    (void)ctx;
    pthread_mutex_lock(&w.lock);
    w.done++;
    pthread_cond_broadcast(&w.cond);
    pthread_mutex_unlock(&w.lock);
}

static void wait_done(int n)
{
    pthread_mutex_lock(&w.lock);
    while (w.done < n) {
        pthread_cond_wait(&w.cond, &w.lock);
    }
    pthread_mutex_unlock(&w.lock);
}

static void password_job(rb_auth_job *job, const char *user, const char *pw)
{
    memset(job, 0, sizeof *job);
    job->credentials_len = (uint32_t)rb_credentials_encode_password(
        job->credentials, sizeof job->credentials, b(user), b(pw));
    job->now_s = NOW;
    job->done = job_done;
}

START_TEST(test_auth_pool_verifies_off_the_caller_and_wipes_the_password)
{
    add_user("alice", "hunter2", 65536);
    rb_auth *a = build();
    rb_auth_pool *pool = NULL;
    rb_err err;
    ck_assert_int_eq(rb_auth_pool_start(&pool, a, 2, &err), 0);
    static rb_auth_job jobs[4];
    w.done = 0;
    for (int i = 0; i < 4; i++) {
        password_job(&jobs[i], "alice", i % 2 ? "wrong" : "hunter2");
        ck_assert_int_eq(rb_auth_pool_submit(pool, &jobs[i]), 0);
    }
    /* Submitting never waits for a hash: four 64 MiB hashes on two
     * workers are still under way when the last submit returns. */
    ck_assert_uint_ge(rb_auth_pool_pending(pool), 2);
    wait_done(4);
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(jobs[i].rc, i % 2 ? RB_EINVAL : 0);
        ck_assert_uint_eq(jobs[i].credentials_len, 0);
        ck_assert_ptr_null(memmem(jobs[i].credentials, sizeof jobs[i].credentials, "hunter2", 7));
        rb_identity_release(&jobs[i].identity);
    }
    ck_assert_str_eq(jobs[1].err.msg, "unknown user or wrong password");
    rb_auth_pool_stop(pool);
    rb_auth_free(a);
}
END_TEST

START_TEST(test_auth_pool_queue_is_bounded_and_stop_cancels_the_rest)
{
    cfg.auth_mode = RB_AUTH_MODE_NONE;
    add_user("slow", "pw", 65536);
    rb_auth *a = build();
    rb_auth_pool *pool = NULL;
    rb_err err;
    ck_assert_int_eq(rb_auth_pool_start(&pool, a, 1, &err), 0);
    static rb_auth_job slow;
    static rb_auth_job fill[RB_AUTH_QUEUE_MAX + 1];
    w.done = 0;
    password_job(&slow, "slow", "pw");
    ck_assert_int_eq(rb_auth_pool_submit(pool, &slow), 0);
    /* Let the one worker take the slow job, then fill the queue behind it. */
    while (rb_auth_pool_pending(pool) != 1) {
        usleep(100);
    }
    usleep(2000);
    int accepted = 0;
    for (int i = 0; i <= RB_AUTH_QUEUE_MAX; i++) {
        memset(&fill[i], 0, sizeof fill[i]);
        fill[i].done = job_done;
        int rc = rb_auth_pool_submit(pool, &fill[i]);
        if (rc == 0) {
            accepted++;
        } else {
            ck_assert_int_eq(rc, RB_ELIMIT);
        }
    }
    ck_assert_int_eq(accepted, RB_AUTH_QUEUE_MAX);
    rb_auth_pool_stop(pool);
    ck_assert_int_eq(w.done, 1 + RB_AUTH_QUEUE_MAX);
    ck_assert_int_eq(slow.rc, 0);
    rb_identity_release(&slow.identity);
    int cancelled = 0;
    for (int i = 0; i < accepted; i++) {
        cancelled += fill[i].rc == RB_ECLOSED;
        rb_identity_release(&fill[i].identity);
    }
    ck_assert_int_gt(cancelled, 0);
    rb_auth_free(a);
}
END_TEST

Suite *rb_auth_suite(void)
{
    Suite *s = suite_create("auth");
    TCase *tc = tcase_create("token");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_auth_hs256_token_gives_sub_exp_and_claim_permissions);
    tcase_add_test(tc, test_auth_token_without_permission_claims_may_do_nothing);
    tcase_add_test(tc, test_auth_expiry_is_checked_with_the_configured_skew);
    tcase_add_test(tc, test_auth_not_yet_valid_token_is_refused_beyond_the_skew);
    tcase_add_test(tc, test_auth_token_without_exp_or_sub_is_refused);
    tcase_add_test(tc, test_auth_wrong_signature_is_refused);
    tcase_add_test(tc, test_auth_alg_none_is_refused);
    tcase_add_test(tc, test_auth_hs256_signed_with_the_rsa_public_key_is_refused);
    tcase_add_test(tc, test_auth_kid_selects_the_key_and_an_unknown_kid_is_refused_escaped);
    tcase_add_test(tc, test_auth_malformed_tokens_are_refused);
    tcase_add_test(tc, test_auth_oversized_token_is_refused_before_parsing);
    tcase_add_test(tc, test_auth_malformed_permission_claims_are_refused);
    tcase_add_test(tc, test_auth_rs256_key_must_be_rsa_of_2048_bits);
    tcase_add_test(tc, test_auth_es256_key_must_be_p256_and_pem_must_parse);
    suite_add_tcase(s, tc);
    tc = tcase_create("password");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_auth_password_gives_the_users_identity_and_policy);
    tcase_add_test(tc, test_auth_certificate_name_gives_the_users_identity_or_is_refused_escaped);
    tcase_add_test(tc, test_auth_wrong_password_and_unknown_user_look_the_same);
    tcase_add_test(tc, test_auth_hash_password_verifies_and_refuses_bad_lengths);
    tcase_add_test(tc, test_auth_empty_credentials_depend_on_the_mode);
    tcase_add_test(tc, test_auth_credentials_dispatch_to_token_and_password);
    tcase_add_test(tc, test_auth_escape_hides_control_bytes_and_quotes);
    suite_add_tcase(s, tc);
    tc = tcase_create("pool");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_auth_pool_verifies_off_the_caller_and_wipes_the_password);
    tcase_add_test(tc, test_auth_pool_queue_is_bounded_and_stop_cancels_the_rest);
    suite_add_tcase(s, tc);
    return s;
}
