/* Who a connection is: verification of HELLO and AUTH credentials against
 * the [auth] configuration. It owns the loaded JWT keys (HS256 secrets,
 * RS256/ES256 public keys, each pinned to its algorithm), the users with
 * their argon2id hashes and compiled permission policies, and the dummy
 * hash that unknown users are checked against so that timing does not tell
 * which names exist. Sessions call it (through the worker pool for
 * passwords, server/auth_pool.h) and keep the resulting rb_identity; where
 * the checks happen in the protocol is left to the session, publish intake
 * and Mutate validation.
 *
 * An rb_auth is built at start (and again on reload) and is immutable
 * afterwards, so shards and workers read one concurrently. */
#ifndef RB_SERVER_AUTH_H
#define RB_SERVER_AUTH_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "common/frame.h"
#include "config/config.h"
#include "server/policy.h"

typedef struct rb_auth rb_auth;

typedef enum rb_identity_source {
    RB_IDENTITY_ANONYMOUS = 0, /* auth.mode = "none", no credentials */
    RB_IDENTITY_TOKEN = 1,     /* a JWT's sub */
    RB_IDENTITY_USER = 2,      /* [[auth.user]] name, by password */
    RB_IDENTITY_CERT = 3,      /* [[auth.user]] name, by client certificate */
} rb_identity_source;

/* A signed-in connection's identity. policy is owned by the identity when
 * policy_owned (a token's claims), else borrowed from the rb_auth that made
 * it, which must outlive the identity. */
typedef struct rb_identity {
    rb_identity_source source;
    char name[RB_AUTH_USER_BYTES_MAX + 1];
    int64_t expires_at_s;  /* token exp (Unix seconds); 0 = no expiry */
    uint32_t publish_rate; /* publishes per second; 0 = limits.publish_rate */
    rb_policy *policy;
    bool policy_owned;
} rb_identity;

/* The password hash cost that --hash-password uses and the dummy hash is
 * made with (RFC 9106's second recommendation, one lane). */
#define RB_ARGON2_DEFAULT_TIME_COST   3
#define RB_ARGON2_DEFAULT_MEMORY_KIB  65536
#define RB_ARGON2_DEFAULT_PARALLELISM 1
#define RB_ARGON2_SALT_BYTES          16
#define RB_ARGON2_HASH_BYTES          32

/* Builds the verifier for cfg: reads and checks every JWT key file (an
 * RS256 key must be RSA of at least 2048 bits, an ES256 key EC P-256; an
 * HS256 secret at least 32 bytes), compiles each user's policy and makes
 * the dummy hash (at the first password user's cost; none without password
 * users). Errors carry the config position of the key
 * ("ringbusd.toml:12:15: auth.jwt_key[1].public_key_file: ... is not an RSA
 * key"). On success *out is owned by the caller (rb_auth_free). */
int rb_auth_new(const rb_config *cfg, rb_auth **out, rb_err *err);
void rb_auth_free(rb_auth *auth);

/* Verifies a JWT (compact form) at now_s (Unix seconds). The header must
 * name a configured key (by kid, or the key without kid) and exactly that
 * key's algorithm; "none", other algorithms and JWE are refused. exp is
 * required, exp and nbf are checked with auth.clock_skew_s; sub (the
 * identity) is required; publish, subscribe, publish_deny and
 * subscribe_deny claims (arrays of patterns) become the policy. Returns 0
 * with *out filled (release it), or RB_EINVAL with err->cause =
 * RB_WIRE_UNAUTHORIZED and a reason safe to log (peer text escaped, no
 * token bytes). */
int rb_auth_verify_token(const rb_auth *auth, rb_bytes token, int64_t now_s, rb_identity *out,
                         rb_err *err);

/* Verifies a user name and password with argon2id; an unknown name is
 * checked against the dummy hash, so it costs the same, and both failures
 * read "unknown user or wrong password". Slow by design: call it on an auth
 * worker, never on a shard. Returns 0 with *out filled or RB_EINVAL
 * (cause RB_WIRE_UNAUTHORIZED). */
int rb_auth_verify_password(const rb_auth *auth, rb_bytes user, rb_bytes password, rb_identity *out,
                            rb_err *err);

/* Decodes HELLO credentials and verifies them as above. Empty credentials
 * give the anonymous identity under auth.mode = "none" and are refused
 * under "required". */
int rb_auth_verify(const rb_auth *auth, rb_bytes credentials, int64_t now_s, rb_identity *out,
                   rb_err *err);

/* True when some user has a password_hash. */
bool rb_auth_has_passwords(const rb_auth *auth);

/* The identity of the [[auth.user]] named by a verified client
 * certificate (its subject CN), for a HELLO without credentials on a
 * client_ca listener. 0, or RB_EINVAL (unauthorized) for a name that is
 * no user under auth.mode = "required" (under "none" such a connection is
 * anonymous, as without a certificate). */
int rb_auth_verify_cert_user(const rb_auth *auth, rb_bytes name, rb_identity *out, rb_err *err);

/* The configured mode. */
rb_auth_mode rb_auth_get_mode(const rb_auth *auth);

/* True when credentials need the slow path (a password): the session then
 * hands them to the worker pool instead of verifying inline. */
bool rb_auth_is_slow(rb_bytes credentials);

/* A reload: points a user's identity (RB_IDENTITY_USER, borrowing its
 * policy) at the same user of auth, a newer verifier. Returns false when
 * auth has no user of that name (the identity then borrows auth's
 * deny-all policy). Other identities own their policy or are anonymous:
 * true, unchanged. */
bool rb_auth_identity_refresh(const rb_auth *auth, rb_identity *id);

/* Frees what the identity owns and clears it. */
void rb_identity_release(rb_identity *id);

/* Hashes password with argon2id at the default cost and a random salt into
 * out as a PHC string ("$argon2id$v=19$m=65536,t=3,p=1$...$..."). Returns
 * 0, RB_EINVAL for a password outside 1..RB_AUTH_PASSWORD_BYTES_MAX, or
 * RB_ESYS when no randomness is available. */
int rb_auth_hash_password(rb_bytes password, char *out, size_t cap, rb_err *err);

/* Writes text to out (cap > 0) with bytes outside printable ASCII, '"' and
 * '\\' escaped as \xNN, cut to fit; for peer-supplied names in logs. */
void rb_auth_escape(char *out, size_t cap, const uint8_t *text, size_t len);

#endif
