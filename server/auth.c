/* Credential verification (server/auth.h): JWTs with libjwt (keys pinned to
 * their algorithm; the header is read and checked before libjwt sees the
 * token, and the claims are read with jansson after the signature checks
 * out), passwords with libargon2, key files checked with OpenSSL. This file
 * includes OpenSSL headers and so never wolfSSL's. */
#include "server/auth.h"

#include <argon2.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <jwt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "common/assert.h"
#include "common/base64.h"
#include "common/pattern.h"

/* Key files are small; anything larger is not a key. */
#define KEY_FILE_BYTES_MAX (64u * 1024u)
/* A JWT header is a few dozen bytes of JSON. */
#define HEADER_JSON_BYTES_MAX 1024
/* RSA keys below this size are breakable. */
#define RSA_BITS_MIN 2048

typedef struct jwt_key {
    char kid[RB_AUTH_KID_BYTES_MAX + 1];
    rb_jwt_alg alg;
    unsigned char *bytes; /* secret or PEM text */
    size_t len;
} jwt_key;

typedef struct user {
    char name[RB_AUTH_USER_BYTES_MAX + 1];
    char hash[RB_AUTH_HASH_BYTES_MAX];
    uint32_t publish_rate;
    rb_policy *policy;
} user;

struct rb_auth {
    rb_auth_mode mode;
    uint32_t clock_skew_s;
    uint32_t key_count;
    jwt_key keys[RB_AUTH_JWT_KEYS_MAX];
    uint32_t user_count;
    user *users;
    rb_policy *anonymous; /* allow-all, for mode "none" */
    rb_policy *nobody;    /* deny-all, for a user a reload removed */
    char dummy_hash[RB_AUTH_HASH_BYTES_MAX];
};

#define unauthorized(err, ...) rb_err_set((err), RB_EINVAL, RB_WIRE_UNAUTHORIZED, __VA_ARGS__)

void rb_auth_escape(char *out, size_t cap, const uint8_t *text, size_t len)
{
    RB_ASSERT(cap > 0);
    size_t n = 0;
    for (size_t i = 0; i < len && n + 5 < cap; i++) {
        uint8_t c = text[i];
        if (c < 0x20 || c >= 0x7F || c == '"' || c == '\\') {
            n += (size_t)snprintf(out + n, cap - n, "\\x%02x", c);
        } else {
            out[n++] = (char)c;
        }
    }
    out[n] = '\0';
}

/* ---- key files ---- */

static int read_key_file(const rb_jwt_key_config *kc, unsigned char **out, size_t *out_len,
                         rb_err *err)
{
    int fd = open(kc->path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd == -1) {
        return rb_err_set(err, RB_ECONFIG, errno, "%s: cannot read \"%s\": %s", kc->where, kc->path,
                          strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > KEY_FILE_BYTES_MAX) {
        close(fd);
        return rb_err_set(err, RB_ECONFIG, 0,
                          "%s: \"%s\" is not a regular file of at most %u bytes", kc->where,
                          kc->path, KEY_FILE_BYTES_MAX);
    }
    unsigned char *buf = malloc((size_t)st.st_size + 1);
    size_t len = 0;
    while (buf != NULL && len < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + len, (size_t)st.st_size - len);
        if (n <= 0) {
            break;
        }
        len += (size_t)n;
    }
    close(fd);
    if (buf == NULL || len != (size_t)st.st_size) {
        free(buf);
        return rb_err_set(err, RB_ECONFIG, 0, "%s: cannot read \"%s\"", kc->where, kc->path);
    }
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    return 0;
}

/* The PEM must hold a public key of the kind the algorithm needs. */
static int check_public_key(const rb_jwt_key_config *kc, const unsigned char *pem, size_t len,
                            rb_err *err)
{
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    EVP_PKEY *pkey = bio != NULL ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    if (pkey == NULL) {
        return rb_err_set(err, RB_ECONFIG, 0, "%s: \"%s\" is not a PEM public key", kc->where,
                          kc->path);
    }
    int rc = 0;
    int id = EVP_PKEY_get_base_id(pkey);
    if (kc->algorithm == RB_JWT_RS256 && id != EVP_PKEY_RSA) {
        rc = rb_err_set(err, RB_ECONFIG, 0, "%s: \"%s\" is not an RSA key (RS256 needs one)",
                        kc->where, kc->path);
    } else if (kc->algorithm == RB_JWT_RS256 && EVP_PKEY_get_bits(pkey) < RSA_BITS_MIN) {
        rc = rb_err_set(err, RB_ECONFIG, 0, "%s: \"%s\" is a %d-bit RSA key; at least %d",
                        kc->where, kc->path, EVP_PKEY_get_bits(pkey), RSA_BITS_MIN);
    } else if (kc->algorithm == RB_JWT_ES256) {
        char group[64] = "";
        size_t glen = 0;
        if (id != EVP_PKEY_EC || EVP_PKEY_get_group_name(pkey, group, sizeof group, &glen) != 1 ||
            strcmp(group, "prime256v1") != 0) {
            rc = rb_err_set(err, RB_ECONFIG, 0,
                            "%s: \"%s\" is not an EC P-256 key (ES256 needs one)", kc->where,
                            kc->path);
        }
    }
    EVP_PKEY_free(pkey);
    return rc;
}

static int load_key(const rb_jwt_key_config *kc, jwt_key *key, rb_err *err)
{
    int rc = read_key_file(kc, &key->bytes, &key->len, err);
    if (rc != 0) {
        return rc;
    }
    snprintf(key->kid, sizeof key->kid, "%s", kc->kid);
    key->alg = kc->algorithm;
    if (kc->algorithm == RB_JWT_HS256) {
        /* One trailing newline (echo, editors) is not part of the secret. */
        if (key->len > 0 && key->bytes[key->len - 1] == '\n') {
            key->len--;
        }
        if (key->len < 32) {
            return rb_err_set(err, RB_ECONFIG, 0,
                              "%s: \"%s\" holds %zu bytes; HS256 needs at least 32", kc->where,
                              kc->path, key->len);
        }
        return 0;
    }
    return check_public_key(kc, key->bytes, key->len, err);
}

/* ---- users ---- */

static int compile_user(const rb_config *cfg, const rb_auth_user_config *uc, user *u, rb_err *err)
{
    snprintf(u->name, sizeof u->name, "%s", uc->name);
    snprintf(u->hash, sizeof u->hash, "%s", uc->password_hash);
    u->publish_rate = uc->publish_rate;
    u->policy = rb_policy_new();
    if (u->policy == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "%s: out of memory", uc->where);
    }
    static const struct {
        rb_policy_action action;
        bool deny;
    } lists[RB_PERM_LISTS] = {
        [RB_PERM_PUBLISH] = {RB_POLICY_PUBLISH, false},
        [RB_PERM_SUBSCRIBE] = {RB_POLICY_SUBSCRIBE, false},
        [RB_PERM_PUBLISH_DENY] = {RB_POLICY_PUBLISH, true},
        [RB_PERM_SUBSCRIBE_DENY] = {RB_POLICY_SUBSCRIBE, true},
    };
    for (int l = 0; l < RB_PERM_LISTS; l++) {
        for (uint32_t i = 0; i < uc->lists[l].count; i++) {
            rb_err why;
            rb_bytes pat = rb_config_pattern(cfg, uc->lists[l].first + i);
            if (rb_policy_add(u->policy, lists[l].action, lists[l].deny, pat, &why) != 0) {
                return rb_err_set(err, RB_ECONFIG, 0, "%s: %s", uc->where, why.msg);
            }
        }
    }
    return 0;
}

typedef struct argon2_cost {
    uint32_t t;
    uint32_t m;
    uint32_t p;
} argon2_cost;

static const argon2_cost default_cost = {RB_ARGON2_DEFAULT_TIME_COST, RB_ARGON2_DEFAULT_MEMORY_KIB,
                                         RB_ARGON2_DEFAULT_PARALLELISM};

static int hash_with_salt(rb_bytes password, const uint8_t *salt, argon2_cost cost, char *out,
                          size_t cap, rb_err *err)
{
    int rc = argon2id_hash_encoded(cost.t, cost.m, cost.p, password.ptr, password.len, salt,
                                   RB_ARGON2_SALT_BYTES, RB_ARGON2_HASH_BYTES, out, cap);
    if (rc != ARGON2_OK) {
        return rb_err_set(err, RB_EINVAL, rc, "argon2id: %s", argon2_error_message(rc));
    }
    return 0;
}

int rb_auth_hash_password(rb_bytes password, char *out, size_t cap, rb_err *err)
{
    RB_ASSERT(out != NULL);
    if (password.len == 0 || password.len > RB_AUTH_PASSWORD_BYTES_MAX) {
        return rb_err_set(err, RB_EINVAL, 0, "password: %zu bytes, not in [1, %d]", password.len,
                          RB_AUTH_PASSWORD_BYTES_MAX);
    }
    uint8_t salt[RB_ARGON2_SALT_BYTES];
    if (getrandom(salt, sizeof salt, 0) != (ssize_t)sizeof salt) {
        return rb_err_set(err, RB_ESYS, errno, "getrandom");
    }
    return hash_with_salt(password, salt, default_cost, out, cap, err);
}

/* The dummy hash costs what the users' hashes cost (the first user's
 * parameters; config/ checked their syntax and bounds), so that checking an
 * unknown name takes as long as checking a known one. Without password
 * users there is nothing to hide and no dummy is made. */
static int make_dummy(rb_auth *a, rb_err *err)
{
    const user *model = NULL;
    for (uint32_t i = 0; i < a->user_count && model == NULL; i++) {
        model = a->users[i].hash[0] != '\0' ? &a->users[i] : NULL;
    }
    if (model == NULL) {
        return 0;
    }
    argon2_cost cost = default_cost;
    unsigned m = 0;
    unsigned t = 0;
    unsigned p = 0;
    if (sscanf(model->hash, "$argon2id$v=19$m=%u,t=%u,p=%u$", &m, &t, &p) == 3) {
        cost = (argon2_cost){t, m, p};
    }
    uint8_t salt[RB_ARGON2_SALT_BYTES];
    uint8_t pw[16];
    if (getrandom(salt, sizeof salt, 0) != (ssize_t)sizeof salt ||
        getrandom(pw, sizeof pw, 0) != (ssize_t)sizeof pw) {
        return rb_err_set(err, RB_ESYS, errno, "auth: getrandom");
    }
    return hash_with_salt((rb_bytes){pw, sizeof pw}, salt, cost, a->dummy_hash,
                          sizeof a->dummy_hash, err);
}

/* ---- build ---- */

int rb_auth_new(const rb_config *cfg, rb_auth **out, rb_err *err)
{
    RB_ASSERT(cfg != NULL);
    RB_ASSERT(cfg->auth_jwt_key_count <= RB_AUTH_JWT_KEYS_MAX);
    rb_auth *a = calloc(1, sizeof *a);
    if (a == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "auth: out of memory");
    }
    a->mode = cfg->auth_mode;
    a->clock_skew_s = cfg->auth_clock_skew_s;
    a->users = calloc(cfg->auth_user_count + 1u, sizeof *a->users);
    a->anonymous = rb_policy_new_allow_all();
    a->nobody = rb_policy_new();
    int rc = a->users == NULL || a->anonymous == NULL || a->nobody == NULL
                 ? rb_err_set(err, RB_ENOMEM, 0, "auth: out of memory")
                 : 0;
    for (uint32_t i = 0; rc == 0 && i < cfg->auth_jwt_key_count; i++) {
        rc = load_key(&cfg->auth_jwt_keys[i], &a->keys[i], err);
        a->key_count = i + 1;
    }
    for (uint32_t i = 0; rc == 0 && i < cfg->auth_user_count; i++) {
        rc = compile_user(cfg, &cfg->auth_users[i], &a->users[i], err);
        a->user_count = i + 1;
    }
    rc = rc ? rc : make_dummy(a, err);
    if (rc != 0) {
        rb_auth_free(a);
        return rc;
    }
    *out = a;
    return 0;
}

void rb_auth_free(rb_auth *a)
{
    if (a == NULL) {
        return;
    }
    for (uint32_t i = 0; i < a->key_count; i++) {
        if (a->keys[i].bytes != NULL) {
            OPENSSL_cleanse(a->keys[i].bytes, a->keys[i].len);
        }
        free(a->keys[i].bytes);
    }
    for (uint32_t i = 0; i < a->user_count; i++) {
        rb_policy_free(a->users[i].policy);
    }
    free(a->users);
    rb_policy_free(a->anonymous);
    rb_policy_free(a->nobody);
    free(a);
}

void rb_identity_release(rb_identity *id)
{
    if (id->policy_owned) {
        rb_policy_free(id->policy);
    }
    memset(id, 0, sizeof *id);
}

/* ---- passwords ---- */

/* Compares a name against every user without stopping early, so the time
 * does not depend on where (or whether) the name is. */
static const user *find_user(const rb_auth *a, rb_bytes name)
{
    const user *found = NULL;
    for (uint32_t i = 0; i < a->user_count; i++) {
        const user *u = &a->users[i];
        size_t ulen = strlen(u->name);
        unsigned diff = (unsigned)(ulen ^ name.len);
        for (size_t j = 0; j < name.len; j++) {
            uint8_t c = j < ulen ? (uint8_t)u->name[j] : 0;
            diff |= (unsigned)(c ^ name.ptr[j]);
        }
        if (diff == 0) {
            found = u;
        }
    }
    return found;
}

bool rb_auth_identity_refresh(const rb_auth *a, rb_identity *id)
{
    RB_ASSERT(a != NULL && id != NULL);
    if (id->source != RB_IDENTITY_USER) {
        return true;
    }
    RB_ASSERT(!id->policy_owned);
    const user *u = find_user(a, (rb_bytes){(const uint8_t *)id->name, strlen(id->name)});
    if (u == NULL) {
        /* Never again the old verifier's, which goes away: nothing allowed. */
        id->policy = a->nobody;
        return false;
    }
    id->publish_rate = u->publish_rate;
    id->policy = u->policy;
    return true;
}

int rb_auth_verify_password(const rb_auth *a, rb_bytes name, rb_bytes password, rb_identity *out,
                            rb_err *err)
{
    RB_ASSERT(a != NULL);
    RB_ASSERT(out != NULL);
    memset(out, 0, sizeof *out);
    const user *u = find_user(a, name);
    /* A user without a hash signs in only by certificate: checked against
     * the dummy too, so it looks like any other failure. */
    const char *hash = u != NULL && u->hash[0] != '\0' ? u->hash : a->dummy_hash;
    if (hash[0] == '\0') {
        return unauthorized(err, "%s", "unknown user or wrong password");
    }
    int rc = argon2id_verify(hash, password.ptr, password.len);
    if (rc != ARGON2_OK || hash == a->dummy_hash) {
        return unauthorized(err, "%s", "unknown user or wrong password");
    }
    out->source = RB_IDENTITY_USER;
    snprintf(out->name, sizeof out->name, "%s", u->name);
    out->publish_rate = u->publish_rate;
    out->policy = u->policy;
    out->policy_owned = false;
    return 0;
}

int rb_auth_verify_cert_user(const rb_auth *a, rb_bytes name, rb_identity *out, rb_err *err)
{
    RB_ASSERT(a != NULL);
    memset(out, 0, sizeof *out);
    const user *u = find_user(a, name);
    if (u == NULL && a->mode != RB_AUTH_MODE_REQUIRED) {
        out->source = RB_IDENTITY_ANONYMOUS; /* as without a certificate */
        out->policy = a->anonymous;
        return 0;
    }
    if (u == NULL) {
        char shown[2 * RB_AUTH_USER_BYTES_MAX + 8];
        rb_auth_escape(shown, sizeof shown, name.ptr, name.len);
        return unauthorized(err, "client certificate: \"%s\" is no [[auth.user]]", shown);
    }
    out->source = RB_IDENTITY_CERT;
    snprintf(out->name, sizeof out->name, "%s", u->name);
    out->publish_rate = u->publish_rate;
    out->policy = u->policy;
    out->policy_owned = false;
    return 0;
}

/* ---- tokens ---- */

/* Reads the header (first segment) and picks the key it names. */
static int pick_key(const rb_auth *a, rb_bytes token, const jwt_key **out, rb_err *err)
{
    const uint8_t *dot = memchr(token.ptr, '.', token.len);
    size_t dots = 0;
    for (size_t i = 0; i < token.len; i++) {
        dots += token.ptr[i] == '.';
    }
    if (dot == NULL || dots != 2) {
        return unauthorized(err, "%s", "token: not a signed JWT (three '.'-separated parts)");
    }
    uint8_t json[HEADER_JSON_BYTES_MAX];
    size_t n = 0;
    bool ok = rb_base64_decode((const char *)token.ptr, (size_t)(dot - token.ptr), json,
                               sizeof json, &n, RB_BASE64_URL | RB_BASE64_NOPAD, NULL) == 0;
    json_error_t jerr;
    json_t *h =
        ok && n > 0 ? json_loadb((const char *)json, n, JSON_REJECT_DUPLICATES, &jerr) : NULL;
    if (h == NULL || !json_is_object(h)) {
        json_decref(h);
        return unauthorized(err, "%s", "token: header is not base64url JSON");
    }
    const char *alg = json_string_value(json_object_get(h, "alg"));
    json_t *kid_v = json_object_get(h, "kid");
    const char *kid = json_string_value(kid_v);
    int rc = 0;
    char shown[64];
    if (json_object_get(h, "crit") != NULL) {
        rc = unauthorized(err, "%s", "token: header has crit extensions (none are supported)");
    } else if (alg == NULL) {
        rc = unauthorized(err, "%s", "token: header has no alg");
    } else if (kid_v != NULL && (kid == NULL || kid[0] == '\0')) {
        rc = unauthorized(err, "%s", "token: header kid is not a non-empty string");
    }
    const jwt_key *key = NULL;
    for (uint32_t i = 0; rc == 0 && i < a->key_count && key == NULL; i++) {
        if (strcmp(a->keys[i].kid, kid != NULL ? kid : "") == 0) {
            key = &a->keys[i];
        }
    }
    if (rc == 0 && key == NULL) {
        rb_auth_escape(shown, sizeof shown, (const uint8_t *)(kid ? kid : ""),
                       kid ? strlen(kid) : 0);
        rc = kid != NULL ? unauthorized(err, "token: no key with kid \"%s\"", shown)
                         : unauthorized(err, "%s", "token: no kid and no key without kid");
    } else if (rc == 0 && strcmp(alg, rb_jwt_alg_name(key->alg)) != 0) {
        /* Pinning the key's algorithm is what stops "none" and HS/RS
         * confusion (an RSA public key used as an HMAC secret). */
        rb_auth_escape(shown, sizeof shown, (const uint8_t *)alg, strlen(alg));
        char msg[160];
        snprintf(msg, sizeof msg, "token: alg \"%s\" but the key is %s", shown,
                 rb_jwt_alg_name(key->alg));
        rc = unauthorized(err, "%s", msg);
    }
    json_decref(h);
    *out = key;
    return rc;
}

static int add_claim_patterns(json_t *claims, const char *name, rb_policy *p,
                              rb_policy_action action, bool deny, rb_err *err)
{
    json_t *arr = json_object_get(claims, name);
    if (arr == NULL) {
        return 0;
    }
    if (!json_is_array(arr)) {
        return unauthorized(err, "token: claim %s is not an array of patterns", name);
    }
    if (json_array_size(arr) > RB_PATTERNS_PER_LIST_MAX) {
        return unauthorized(err, "token: claim %s has more than 1024 patterns", name);
    }
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *item = json_array_get(arr, i);
        const char *s = json_string_value(item);
        rb_err why;
        if (s == NULL ||
            rb_policy_add(p, action, deny, (rb_bytes){(const uint8_t *)s, json_string_length(item)},
                          &why) != 0) {
            return unauthorized(err, "token: claim %s holds a malformed pattern", name);
        }
    }
    return 0;
}

/* A NumericDate claim: an integer, or absent (*present false). */
static int time_claim(json_t *claims, const char *name, int64_t *value, bool *present, rb_err *err)
{
    json_t *v = json_object_get(claims, name);
    *present = v != NULL;
    if (v == NULL) {
        return 0;
    }
    if (json_is_integer(v)) {
        *value = (int64_t)json_integer_value(v);
        return 0;
    }
    if (json_is_real(v) && json_real_value(v) > -9e15 && json_real_value(v) < 9e15) {
        *value = (int64_t)json_real_value(v);
        return 0;
    }
    return unauthorized(err, "token: claim %s is not a number", name);
}

static int check_times(const rb_auth *a, json_t *claims, int64_t now_s, rb_identity *out,
                       rb_err *err)
{
    int64_t exp = 0;
    int64_t nbf = 0;
    bool has_exp = false;
    bool has_nbf = false;
    int rc = time_claim(claims, "exp", &exp, &has_exp, err);
    rc = rc ? rc : time_claim(claims, "nbf", &nbf, &has_nbf, err);
    if (rc != 0) {
        return rc;
    }
    if (!has_exp) {
        return unauthorized(err, "%s", "token: no exp (tokens must expire)");
    }
    if (now_s > exp + (int64_t)a->clock_skew_s) {
        char msg[96];
        snprintf(msg, sizeof msg, "token: expired %lld s ago", (long long)(now_s - exp));
        return unauthorized(err, "%s", msg);
    }
    if (has_nbf && now_s + (int64_t)a->clock_skew_s < nbf) {
        char msg[96];
        snprintf(msg, sizeof msg, "token: not valid for another %lld s", (long long)(nbf - now_s));
        return unauthorized(err, "%s", msg);
    }
    out->expires_at_s = exp;
    return 0;
}

static int read_claims(const rb_auth *a, json_t *claims, int64_t now_s, rb_identity *out,
                       rb_err *err)
{
    int rc = check_times(a, claims, now_s, out, err);
    if (rc != 0) {
        return rc;
    }
    json_t *sub = json_object_get(claims, "sub");
    const char *name = json_string_value(sub);
    size_t len = json_string_length(sub);
    uint8_t cred[RB_AUTH_USER_BYTES_MAX + 8];
    rb_credentials c;
    /* A sub follows the rules of a user name on the wire. */
    if (name == NULL || len == 0 || len > RB_AUTH_USER_BYTES_MAX ||
        rb_credentials_decode(
            (rb_bytes){cred, rb_credentials_encode_password(cred, sizeof cred,
                                                            (rb_bytes){(const uint8_t *)name, len},
                                                            (rb_bytes){(const uint8_t *)"x", 1})},
            &c, NULL) != 0) {
        return unauthorized(err, "%s", "token: sub is missing or not a valid name");
    }
    if (len >= strlen(RB_ANON_ID_PREFIX) &&
        memcmp(name, RB_ANON_ID_PREFIX, strlen(RB_ANON_ID_PREFIX)) == 0) {
        return unauthorized(err, "token: sub starts with \"%s\", the prefix of server-assigned ids",
                            RB_ANON_ID_PREFIX);
    }
    out->source = RB_IDENTITY_TOKEN;
    memcpy(out->name, name, len);
    out->name[len] = '\0';
    out->policy = rb_policy_new();
    out->policy_owned = true;
    if (out->policy == NULL) {
        return rb_err_set(err, RB_ENOMEM, RB_WIRE_INTERNAL, "token: out of memory");
    }
    rc = add_claim_patterns(claims, "publish", out->policy, RB_POLICY_PUBLISH, false, err);
    rc = rc ? rc
            : add_claim_patterns(claims, "subscribe", out->policy, RB_POLICY_SUBSCRIBE, false, err);
    rc = rc ? rc
            : add_claim_patterns(claims, "publish_deny", out->policy, RB_POLICY_PUBLISH, true, err);
    rc = rc ? rc
            : add_claim_patterns(claims, "subscribe_deny", out->policy, RB_POLICY_SUBSCRIBE, true,
                                 err);
    return rc;
}

int rb_auth_verify_token(const rb_auth *a, rb_bytes token, int64_t now_s, rb_identity *out,
                         rb_err *err)
{
    RB_ASSERT(a != NULL);
    RB_ASSERT(out != NULL);
    memset(out, 0, sizeof *out);
    if (token.len == 0 || token.len > RB_AUTH_TOKEN_BYTES_MAX) {
        return unauthorized(err, "%s", "token: empty or above 8192 bytes");
    }
    const jwt_key *key = NULL;
    int rc = pick_key(a, token, &key, err);
    if (rc != 0) {
        return rc;
    }
    char text[RB_AUTH_TOKEN_BYTES_MAX + 1];
    memcpy(text, token.ptr, token.len);
    text[token.len] = '\0';
    jwt_t *jwt = NULL;
    if (jwt_decode(&jwt, text, key->bytes, (int)key->len) != 0 || jwt == NULL) {
        return unauthorized(err, "%s", "token: signature does not verify");
    }
    /* libjwt decided by the header; it must agree with the pinned key. */
    jwt_alg_t want = key->alg == RB_JWT_HS256   ? JWT_ALG_HS256
                     : key->alg == RB_JWT_RS256 ? JWT_ALG_RS256
                                                : JWT_ALG_ES256;
    char *grants = jwt_get_alg(jwt) == want ? jwt_get_grants_json(jwt, NULL) : NULL;
    jwt_free(jwt);
    json_error_t jerr;
    json_t *claims = grants != NULL ? json_loads(grants, JSON_REJECT_DUPLICATES, &jerr) : NULL;
    free(grants);
    if (claims == NULL || !json_is_object(claims)) {
        json_decref(claims);
        return unauthorized(err, "%s", "token: claims are not a JSON object");
    }
    rc = read_claims(a, claims, now_s, out, err);
    json_decref(claims);
    if (rc != 0) {
        rb_identity_release(out);
    }
    return rc;
}

/* ---- dispatch ---- */

bool rb_auth_has_passwords(const rb_auth *a)
{
    return a->dummy_hash[0] != '\0';
}

rb_auth_mode rb_auth_get_mode(const rb_auth *a)
{
    return a->mode;
}

bool rb_auth_is_slow(rb_bytes credentials)
{
    return credentials.len > 0 && credentials.ptr[0] == RB_CRED_PASSWORD;
}

int rb_auth_verify(const rb_auth *a, rb_bytes credentials, int64_t now_s, rb_identity *out,
                   rb_err *err)
{
    RB_ASSERT(a != NULL);
    rb_credentials c;
    memset(out, 0, sizeof *out);
    int rc = rb_credentials_decode(credentials, &c, err);
    if (rc != 0) {
        return rc;
    }
    switch ((rb_cred_kind)c.kind) {
    case RB_CRED_NONE:
        if (a->mode == RB_AUTH_MODE_REQUIRED) {
            return unauthorized(err, "%s", "credentials required (auth.mode = required)");
        }
        out->source = RB_IDENTITY_ANONYMOUS;
        out->policy = a->anonymous;
        return 0;
    case RB_CRED_TOKEN:
        return rb_auth_verify_token(a, c.token, now_s, out, err);
    case RB_CRED_PASSWORD:
        return rb_auth_verify_password(a, c.user, c.password, out, err);
    }
    RB_ASSERT(!"credentials kind");
    return RB_EINVAL;
}
