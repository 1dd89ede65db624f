/* ringbusd: command line, configuration, listeners, storage, shards, signals
 * and systemd notification. Everything per connection happens in shards. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "common/limits.h"
#include "common/log.h"
#include "config/config.h"
#include "server/auth.h"
#include "server/reload.h"
#include "server/server.h"
#include "server/watchdog.h"
#include "storage/pgwire.h"
#include "transports/quic.h"
#include "transports/tls.h"

/* Connections queued in the kernel before the acceptor takes them. */
#define LISTEN_BACKLOG 4096

static void usage(FILE *out)
{
    fprintf(out, "usage: ringbusd [--config PATH] [--pid-file PATH]\n"
                 "       ringbusd --reload [--pid PID | --pid-file PATH]\n"
                 "       ringbusd --config PATH --migrate-only\n"
                 "       ringbusd --check-config PATH\n"
                 "       ringbusd --hash-password < password\n"
                 "       ringbusd --version | --help\n"
                 "\n"
                 "Without --config, ringbusd runs the embedded default: the memory store and\n"
                 "one TCP listener on 127.0.0.1:7400, with auth.mode = \"none\" (no sign-in).\n"
                 "With [auth] mode = \"required\", every connection on every transport signs\n"
                 "in at HELLO (a JWT, or [[auth.user]] name and password) and its publish and\n"
                 "subscribe permissions are checked (docs/OPERATIONS.md, Security).\n"
                 "\n"
                 "  -c, --config PATH        load the TOML configuration at PATH; SIGHUP reads\n"
                 "                           it again (docs/OPERATIONS.md, Reload): log level,\n"
                 "                           timeouts, most limits, listeners, TLS files and\n"
                 "                           users, keys and permissions apply live; a bad\n"
                 "                           file keeps the running config\n"
                 "                           (error logged as file:line:column); settings that\n"
                 "                           need a restart are logged by name\n"
                 "      --pid-file PATH      write the daemon's pid to PATH (removed at exit)\n"
                 "      --reload             tell the running daemon to reload (SIGHUP): its\n"
                 "                           pid from --pid PID, else --pid-file PATH, else\n"
                 "                           $MAINPID (systemd's ExecReload); the result is in\n"
                 "                           the daemon's log\n"
                 "      --pid PID            the daemon --reload signals\n"
                 "      --migrate-only       apply the storage schema migrations and exit\n"
                 "      --check-config PATH  validate PATH (errors as file:line:column) and check\n"
                 "                           the files it names: TLS cert/key pairs (a test\n"
                 "                           signature), client_ca, the Postgres password_file,\n"
                 "                           JWT key files ([[auth.jwt_key]]), the [cluster]\n"
                 "                           secret_file (read, mode 0600 or stricter)\n"
                 "      --hash-password      read a password on stdin (one line), print its\n"
                 "                           argon2id hash for [[auth.user]] password_hash\n"
                 "  -v, --version            print the version\n"
                 "  -h, --help               print this help\n");
}

/* Binds the listener's socket; listen() comes later (listen_all), when
 * storage is ready, so that until then a client's connect is refused at
 * once instead of waiting in the backlog for a HELLO answer that cannot
 * come. Binding now still makes a port in use a start-up error. */
static int bind_one(rb_listener *l, rb_err *err)
{
    if (l->cfg.transport == RB_TRANSPORT_QUIC) {
        /* Each shard binds its own UDP socket (SO_REUSEPORT) at start. */
        return 0;
    }
    struct sockaddr_storage ss;
    socklen_t ss_len;
    memset(&ss, 0, sizeof ss);
    int family = strchr(l->cfg.address, ':') != NULL ? AF_INET6 : AF_INET;
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
        sin->sin_family = AF_INET;
        sin->sin_port = htons(l->cfg.port);
        inet_pton(AF_INET, l->cfg.address, &sin->sin_addr);
        ss_len = sizeof *sin;
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(l->cfg.port);
        inet_pton(AF_INET6, l->cfg.address, &sin6->sin6_addr);
        ss_len = sizeof *sin6;
    }
    const char *name = rb_transport_name(l->cfg.transport);
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return rb_err_set(err, RB_ESYS, errno, "%s listen %s:%u: socket", name, l->cfg.address,
                          l->cfg.port);
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* A port still held for a moment after a restart (the previous
     * process's sockets, another program between its stop and our start)
     * gets a few more tries before it is a start-up error. */
    for (unsigned attempt = 1;; attempt++) {
        if (bind(fd, (struct sockaddr *)&ss, ss_len) == 0) {
            break;
        }
        int e = errno;
        if (e != EADDRINUSE || attempt >= RB_BIND_ATTEMPTS_MAX) {
            close(fd);
            return rb_err_set(err, RB_ESYS, e, "%s listen %s:%u: bind", name, l->cfg.address,
                              l->cfg.port);
        }
        RB_LOG_WARN(0, "%s listen %s:%u: address in use, trying again in %u ms (%u of %u)", name,
                    l->cfg.address, l->cfg.port, RB_BIND_RETRY_MS, attempt, RB_BIND_ATTEMPTS_MAX);
        usleep(RB_BIND_RETRY_MS * 1000u);
    }
    l->fd = fd;
    return 0;
}

static int quic_check_send(void *ctx, const rb_quic_path *path, const uint8_t *p, size_t len)
{
    (void)ctx;
    (void)path;
    (void)p;
    (void)len;
    return 0;
}

/* A quic listener: its cert and key load into a QUIC engine (GnuTLS) the
 * way each shard's will; client certificates are not offered on QUIC. */
static int quic_prepare(const rb_listener_config *cfg, uint32_t index, rb_err *err)
{
    if (cfg->client_ca[0] != '\0') {
        return rb_err_set(err, RB_ECONFIG, 0,
                          "listener %u: client_ca is not supported on quic listeners", index);
    }
    rb_quic_config qc;
    rb_quic_config_default(&qc, RB_QUIC_SERVER);
    qc.conns_max = 1;
    qc.cert_file = cfg->cert;
    qc.key_file = cfg->key;
    rb_quic_handler h = {.send = quic_check_send};
    rb_quic_engine *e = NULL;
    rb_err e2;
    if (rb_quic_engine_new(&e, &qc, &h, &e2) != 0) {
        return rb_err_set(err, RB_ECONFIG, 0, "listener %u: %s", index, e2.msg);
    }
    rb_quic_engine_free(e);
    return 0;
}

/* What start-up checks of a listener before it binds, and what
 * --check-config checks the same way: the transport is built in, and a
 * tls or wss listener's cert, key and client_ca load and belong together.
 * *tls is the loaded context (the caller's), or NULL for other transports. */
static int listener_prepare(const rb_listener_config *cfg, uint32_t index, rb_tls_server **tls,
                            rb_err *err)
{
    *tls = NULL;
    if (cfg->transport == RB_TRANSPORT_QUIC) {
        return quic_prepare(cfg, index, err);
    }
    if (cfg->transport == RB_TRANSPORT_TLS || cfg->transport == RB_TRANSPORT_WSS) {
        return rb_tls_server_new(tls, cfg, err);
    }
    return 0;
}

static int open_listeners(rb_server *srv, rb_err *err)
{
    int src = rb_quic_secret_generate(srv->quic_secret, err);
    if (src != 0) {
        return src;
    }
    for (uint32_t i = 0; i < srv->cfg.listener_count; i++) {
        rb_listener *l = &srv->listeners[i];
        l->cfg = srv->cfg.listeners[i];
        l->fd = -1;
        l->index = i;
        int rc = listener_prepare(&l->cfg, i, &l->tls, err);
        rc = rc ? rc : bind_one(l, err);
        if (rc != 0) {
            rb_tls_server_free(l->tls);
            l->tls = NULL;
            return rc;
        }
        srv->listener_count++;
    }
    return 0;
}

/* Storage is ready: the bound sockets start listening. */
static int listen_all(rb_server *srv, rb_err *err)
{
    for (uint32_t i = 0; i < srv->listener_count; i++) {
        rb_listener *l = &srv->listeners[i];
        if (l->cfg.transport != RB_TRANSPORT_QUIC && listen(l->fd, LISTEN_BACKLOG) == -1) {
            return rb_err_set(err, RB_ESYS, errno, "%s listen %s:%u: listen",
                              rb_transport_name(l->cfg.transport), l->cfg.address, l->cfg.port);
        }
        RB_LOG_INFO(0, "listening on %s://%s:%u", rb_transport_name(l->cfg.transport),
                    l->cfg.address, l->cfg.port);
    }
    return 0;
}

/* ringbusd --check-config: after the file itself, the files start-up
 * opens are opened and checked the same way (certificates and keys, the
 * Postgres password file). Nothing is bound. */
static int check_config(const char *path)
{
    static rb_config cfg;
    rb_err err;
    rb_err_clear(&err);
    int rc = rb_config_load_file(path, &cfg, &err);
    if (rc == 0) {
        rc = rb_tls_global_init(&err);
        for (uint32_t i = 0; rc == 0 && i < cfg.listener_count; i++) {
            rb_tls_server *tls = NULL;
            rc = listener_prepare(&cfg.listeners[i], i, &tls, &err);
            rb_tls_server_free(tls);
        }
        rb_tls_global_deinit();
    }
    if (rc == 0) {
        rb_auth *auth = NULL;
        rc = rb_auth_new(&cfg, &auth, &err);
        rb_auth_free(auth);
    }
    if (rc == 0 && cfg.storage_backend == RB_STORAGE_POSTGRES && cfg.pg_password_file[0] != '\0') {
        char password[RB_PG_PASSWORD_BYTES_MAX];
        rc = rb_pgwire_read_password(cfg.pg_password_file, password, sizeof password, &err);
        explicit_bzero(password, sizeof password);
    }
    if (rc != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    printf("%s: ok\n", path);
    return 0;
}

static void close_listeners(rb_server *srv)
{
    for (uint32_t i = 0; i < srv->listener_count; i++) {
        if (srv->listeners[i].fd >= 0) {
            close(srv->listeners[i].fd);
        }
        rb_tls_server_free(srv->listeners[i].tls);
        srv->listeners[i].tls = NULL;
    }
}

/* SIGHUP: every TLS listener loads its cert, key and client CA again for
 * new connections; one that fails keeps its old context. */
/* The config file SIGHUP reads again (NULL: the embedded default, nothing
 * to read), and the listener slots a reload removed (the main thread's
 * view; the acceptor shard keeps its own, rb_listener.retired). */
static const char *config_path;
static bool listener_removed[RB_LISTENERS_MAX];
/* A reload's new cert, key and client_ca paths for a running tls or wss
 * listener (NULL: its paths did not change); read by reload_tls. */
static const rb_listener_config *tls_paths_want[RB_LISTENERS_MAX];

static void copy_tls_paths(rb_listener_config *to, const rb_listener_config *from)
{
    memcpy(to->cert, from->cert, sizeof to->cert);
    memcpy(to->key, from->key, sizeof to->key);
    memcpy(to->client_ca, from->client_ca, sizeof to->client_ca);
}

/* The listener's TLS files again, from the paths a reload gave it if any;
 * on failure the previous context and paths stay. The shards read only
 * the listener's transport, never these paths. */
static int reload_one_tls(rb_listener *l, const rb_listener_config *want, rb_err *err)
{
    rb_listener_config was;
    if (want != NULL) {
        copy_tls_paths(&was, &l->cfg);
        copy_tls_paths(&l->cfg, want);
    }
    int rc = rb_tls_server_reload(l->tls, err);
    if (rc != 0 && want != NULL) {
        copy_tls_paths(&l->cfg, &was);
    }
    return rc;
}

static void reload_tls(rb_server *srv)
{
    for (uint32_t i = 0; i < srv->listener_count; i++) {
        rb_listener *l = &srv->listeners[i];
        if (l->tls == NULL || listener_removed[i]) {
            continue;
        }
        rb_err err;
        const rb_listener_config *want = tls_paths_want[i];
        tls_paths_want[i] = NULL;
        if (reload_one_tls(l, want, &err) != 0) {
            RB_LOG_ERROR(0, "reload: %s; keeping the previous certificate", err.msg);
        } else {
            RB_LOG_INFO(0, "reload: %s://%s:%u now serves %s", rb_transport_name(l->cfg.transport),
                        l->cfg.address, l->cfg.port, l->cfg.cert);
        }
    }
}

static bool is_loopback(const char *address)
{
    return strncmp(address, "127.", 4) == 0 || strcmp(address, "::1") == 0;
}

static bool same_listener(const rb_listener_config *a, const rb_listener_config *b)
{
    return a->transport == b->transport && a->port == b->port &&
           strcmp(a->address, b->address) == 0;
}

/* The running listener that fresh's listener matches (transport, address
 * and port), or -1. */
static int find_listener(const rb_server *srv, const rb_listener_config *want)
{
    for (uint32_t i = 0; i < srv->listener_count; i++) {
        if (!listener_removed[i] && same_listener(&srv->listeners[i].cfg, want)) {
            return (int)i;
        }
    }
    return -1;
}

static void log_listener_restart(const rb_listener_config *l, const char *what)
{
    RB_LOG_WARN(0, "reload: listener %s://%s:%u %s; restart to apply",
                rb_transport_name(l->transport), l->address, l->port, what);
}

/* A listener a reload adds: bound and listening in slot `slot` before any
 * shard knows of it. */
static int listener_add(rb_server *srv, uint32_t slot, const rb_listener_config *want, rb_err *err)
{
    rb_listener *l = &srv->listeners[slot];
    memset(l, 0, sizeof *l);
    l->cfg = *want;
    l->fd = -1;
    l->index = slot;
    int rc = listener_prepare(&l->cfg, slot, &l->tls, err);
    rc = rc ? rc : bind_one(l, err);
    if (rc == 0 && listen(l->fd, LISTEN_BACKLOG) == -1) {
        rc = rb_err_set(err, RB_ESYS, errno, "%s listen %s:%u: listen",
                        rb_transport_name(want->transport), want->address, want->port);
    }
    if (rc != 0) {
        if (l->fd >= 0) {
            close(l->fd);
        }
        rb_tls_server_free(l->tls);
        memset(l, 0, sizeof *l);
    }
    return rc;
}

/* Matches fresh's listeners with the running ones: new ones are bound and
 * listening in slots [srv->listener_count, *count), running ones fresh
 * lacks go to retired. quic listeners and a running listener whose other
 * settings changed are logged (restart). On error every new slot is
 * undone and nothing changed. */
static int reload_listeners(rb_server *srv, const rb_config *fresh, uint32_t *count,
                            uint32_t *retired, uint32_t *retired_count, rb_err *err)
{
    bool kept[RB_LISTENERS_MAX] = {false};
    uint32_t n = srv->listener_count;
    int rc = 0;
    for (uint32_t j = 0; rc == 0 && j < fresh->listener_count; j++) {
        const rb_listener_config *want = &fresh->listeners[j];
        int i = find_listener(srv, want);
        if (i >= 0) {
            kept[i] = true;
            rb_listener_config same_paths = srv->listeners[i].cfg;
            copy_tls_paths(&same_paths, want);
            if (memcmp(&srv->listeners[i].cfg, want, sizeof *want) == 0) {
                continue;
            }
            if (srv->listeners[i].tls != NULL && memcmp(&same_paths, want, sizeof *want) == 0) {
                tls_paths_want[i] = want; /* the certificate files moved: reload_tls */
            } else {
                log_listener_restart(want, "settings changed");
            }
        } else if (want->transport == RB_TRANSPORT_QUIC) {
            log_listener_restart(want, "added");
        } else if (n == RB_LISTENERS_MAX) {
            rc = rb_err_set(err, RB_ELIMIT, 0,
                            "listener %s://%s:%u: all %d listener slots of this process are used "
                            "(removed listeners keep theirs); restart to add it",
                            rb_transport_name(want->transport), want->address, want->port,
                            RB_LISTENERS_MAX);
        } else {
            rc = listener_add(srv, n, want, err);
            n += rc == 0 ? 1 : 0;
        }
    }
    if (rc != 0) {
        memset(tls_paths_want, 0, sizeof tls_paths_want);
        for (uint32_t k = srv->listener_count; k < n; k++) {
            close(srv->listeners[k].fd);
            rb_tls_server_free(srv->listeners[k].tls);
            memset(&srv->listeners[k], 0, sizeof srv->listeners[k]);
        }
        return rc;
    }
    *retired_count = 0;
    for (uint32_t i = 0; i < srv->listener_count; i++) {
        if (listener_removed[i] || kept[i]) {
            continue;
        }
        if (srv->listeners[i].cfg.transport == RB_TRANSPORT_QUIC) {
            log_listener_restart(&srv->listeners[i].cfg, "removed");
        } else {
            retired[(*retired_count)++] = i;
        }
    }
    *count = n;
    return 0;
}

static void notify_reloading(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    sd_notifyf(0, "RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC=%llu",
               (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000);
}

static bool has_passwords(const rb_config *cfg)
{
    for (uint32_t i = 0; i < cfg->auth_user_count; i++) {
        if (cfg->auth_users[i].password_hash[0] != '\0') {
            return true;
        }
    }
    return false;
}

/* Users and keys change live when the password workers they need run (they
 * start only when the start config has a password user). With JWT keys the
 * verifier is built again even when the file names the same ones: a key
 * file replaced in place (a rotated secret) is read again. */
static bool auth_live(const rb_server *srv, const rb_config *cur, const rb_config *fresh)
{
    if (!rb_reload_auth_changed(cur, fresh)) {
        if (fresh->auth_jwt_key_count == 0) {
            return false;
        }
        RB_LOG_INFO(0, "reload: reading the %u auth.jwt_key files again",
                    fresh->auth_jwt_key_count);
        return true;
    }
    if (srv->auth_pool == NULL && has_passwords(fresh)) {
        RB_LOG_WARN(0, "reload: auth.user: the first password_hash needs the auth workers, "
                       "which start only when the start config has one; restart to apply");
        return false;
    }
    return true;
}

/* Reads the file into g and plans it against what runs: the settings
 * (server/reload.c), users and keys (a new verifier in *auth) and the
 * listeners. Returns 0 or the error, logged. */
static int reload_plan(rb_server *srv, rb_reload_gen *g, rb_auth **auth, uint32_t *added,
                       uint32_t *removed)
{
    rb_config *fresh = rb_reload_gen_config(g);
    rb_err err;
    rb_err_clear(&err);
    if (rb_config_load_file(config_path, fresh, &err) != 0) {
        RB_LOG_ERROR(0, "reload: %s; keeping the running configuration", err.msg);
        return err.code;
    }
    const rb_config *cur = srv->reload_gen ? rb_reload_gen_config(srv->reload_gen) : &srv->cfg;
    bool auth_changes = auth_live(srv, cur, fresh);
    uint32_t live = rb_reload_diff(&srv->cfg, cur, fresh, auth_changes);
    int rc = auth_changes ? rb_auth_new(fresh, auth, &err) : 0;
    if (rc != 0) {
        RB_LOG_ERROR(0, "reload: %s; keeping the running configuration", err.msg);
        return rc;
    }
    uint32_t count = 0;
    uint32_t retired[RB_LISTENERS_MAX];
    uint32_t retired_count = 0;
    rc = reload_listeners(srv, fresh, &count, retired, &retired_count, &err);
    if (rc != 0) {
        RB_LOG_ERROR(0, "reload: %s; keeping the running configuration", err.msg);
        rb_auth_free(*auth);
        *auth = NULL;
        return rc;
    }
    rb_reload_gen_auth(g, *auth);
    rb_reload_gen_listeners(g, count, retired, retired_count);
    *added = count - srv->listener_count;
    *removed = retired_count;
    for (uint32_t i = 0; i < retired_count; i++) {
        listener_removed[retired[i]] = true;
    }
    for (uint32_t i = srv->listener_count; i < count; i++) {
        const rb_listener_config *l = &srv->listeners[i].cfg;
        RB_LOG_INFO(0, "reload: listening on %s://%s:%u", rb_transport_name(l->transport),
                    l->address, l->port);
        if (fresh->auth_mode == RB_AUTH_MODE_NONE && !is_loopback(l->address)) {
            RB_LOG_WARN(0,
                        "auth.mode = \"none\": anyone who reaches %s://%s:%u may publish and "
                        "subscribe",
                        rb_transport_name(l->transport), l->address, l->port);
        }
    }
    srv->listener_count = count;
    RB_LOG_INFO(0, "reload: %u settings change live", live);
    return 0;
}

/* log_level and log_format, at start and at every reload (both live: the
 * logger reads them atomically). The config checked both names. */
static void apply_log_settings(const rb_config *cfg)
{
    rb_log_level level = RB_LOG_INFO;
    if (rb_log_level_parse(cfg->log_level, &level) == 0) {
        rb_log_set_level(level);
    }
    rb_log_format format = RB_LOG_FORMAT_TEXT;
    if (rb_log_format_parse(cfg->log_format, &format) == 0) {
        rb_log_set_format(format);
    }
}

/* SIGHUP with shards running: the file is read again and every shard
 * switches to it (server/reload.c); the previous generation is freed once
 * all have. TLS files are read again in any case. */
static void reload(rb_server *srv)
{
    notify_reloading();
    rb_reload_gen *g = config_path != NULL ? rb_reload_gen_new() : NULL;
    uint32_t added = 0;
    uint32_t removed = 0;
    rb_auth *auth = NULL;
    if (config_path == NULL) {
        RB_LOG_INFO(0, "reload: no --config file; reloading TLS files only");
        reload_tls(srv);
    } else if (g == NULL) {
        RB_LOG_ERROR(0, "reload: out of memory; keeping the running configuration");
        reload_tls(srv);
    } else if (reload_plan(srv, g, &auth, &added, &removed) != 0) {
        rb_reload_gen_free(g);
        reload_tls(srv);
    } else {
        rb_err err;
        rb_reload_gen *prev = srv->reload_gen;
        atomic_store_explicit(&srv->cfg_shown, rb_reload_gen_config(g), memory_order_release);
        int rc = rb_reload_hand_over(srv, g, &err);
        srv->reload_gen = g;
        bool switched = rc == 0 && rb_reload_wait(srv, g, RB_RELOAD_SWITCH_MS_MAX);
        if (switched) {
            rb_reload_gen_free(prev);
        }
        if (auth != NULL) {
            /* The start verifier stays (the anonymous identity borrows from
             * it); a reloaded one goes once nothing uses it. */
            rb_auth *prev_auth = srv->reload_auth;
            srv->reload_auth = auth;
            if (srv->auth_pool != NULL) {
                rb_auth_pool_set_auth(srv->auth_pool, auth);
            }
            if (switched) {
                rb_auth_free(prev_auth);
            }
        }
        if (!switched) {
            /* A shard may still run prev: its memory stays. */
            RB_LOG_ERROR(0,
                         "reload: %s; a shard has not switched, the previous "
                         "configuration stays in memory",
                         rc != 0 ? err.msg : "timed out");
        }
        apply_log_settings(rb_reload_gen_config(g));
        reload_tls(srv);
        RB_LOG_INFO(0, "reload: %s applied (%u listeners added, %u removed)", config_path, added,
                    removed);
    }
    sd_notify(0, "READY=1\nSTATUS=serving");
}

/* ringbusd --hash-password: one line of stdin (without its newline) to an
 * argon2id PHC string on stdout. */
static int hash_password(void)
{
    char line[RB_AUTH_PASSWORD_BYTES_MAX + 2];
    size_t len = fread(line, 1, sizeof line, stdin);
    if (ferror(stdin)) {
        fprintf(stderr, "ringbusd: --hash-password: cannot read stdin\n");
        return 1;
    }
    char *nl = memchr(line, '\n', len);
    if (nl != NULL) {
        len = (size_t)(nl - line);
    } else if (len > RB_AUTH_PASSWORD_BYTES_MAX) {
        explicit_bzero(line, sizeof line);
        fprintf(stderr, "ringbusd: --hash-password: password above %d bytes\n",
                RB_AUTH_PASSWORD_BYTES_MAX);
        return 1;
    }
    if (len > 0 && line[len - 1] == '\r') {
        len--;
    }
    char hash[RB_AUTH_HASH_BYTES_MAX];
    rb_err err;
    int rc = rb_auth_hash_password((rb_bytes){(const uint8_t *)line, len}, hash, sizeof hash, &err);
    explicit_bzero(line, sizeof line);
    if (rc != 0) {
        fprintf(stderr, "ringbusd: --hash-password: %s\n", err.msg);
        return 1;
    }
    printf("%s\n", hash);
    return 0;
}

/* Loads the [auth] keys and users (what --check-config and start-up check
 * beyond the file itself); under mode "none" warns about each listener off
 * loopback, since anyone who reaches it may publish and subscribe. */
static int check_auth(const rb_config *cfg, rb_auth **out, rb_err *err)
{
    int rc = rb_auth_new(cfg, out, err);
    if (rc != 0) {
        return rc;
    }
    if (cfg->auth_mode == RB_AUTH_MODE_NONE) {
        for (uint32_t i = 0; i < cfg->listener_count; i++) {
            const rb_listener_config *l = &cfg->listeners[i];
            if (!is_loopback(l->address)) {
                RB_LOG_WARN(0,
                            "auth.mode = \"none\": anyone who reaches %s://%s:%u may publish and "
                            "subscribe",
                            rb_transport_name(l->transport), l->address, l->port);
            }
        }
    }
    return 0;
}

/* Blocks the signals ringbusd handles so that only sigwait sees them. */
static void block_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, set, NULL);
    signal(SIGPIPE, SIG_IGN);
}

static void wait_for_stop(rb_server *srv, const sigset_t *set)
{
    /* The main thread's loop: it waits for signals, feeding the systemd
     * watchdog meanwhile. */
    for (;;) {
        int sig = rb_watchdog_sigwait(srv, set);
        if (sig == SIGHUP) {
            RB_LOG_INFO(0, "SIGHUP received: reloading %s",
                        config_path ? config_path : "TLS files");
            reload(srv);
            continue;
        }
        RB_LOG_INFO(0, "%s received: stopping", sig == SIGTERM ? "SIGTERM" : "SIGINT");
        return;
    }
}

/* Waits until the storage backend can serve (Postgres reached and
 * migrated; it logs why not meanwhile), answering SIGTERM and SIGINT, and
 * SIGHUP: TLS files at once (a certificate replaced meanwhile must not wait
 * for a second SIGHUP), the config file (*hup) once the shards run.
 * Returns false when told to stop first. */
static bool wait_storage_ready(rb_server *srv, const sigset_t *set, bool *hup)
{
    if (srv->storage_ops->ready == NULL || srv->storage_ops->ready(srv->storage)) {
        return true;
    }
    RB_LOG_INFO(0, "waiting for storage %s", srv->storage_ops->name);
    sd_notify(0, "STATUS=waiting for storage");
    while (!srv->storage_ops->ready(srv->storage)) {
        struct timespec wait = {.tv_sec = 0, .tv_nsec = 50 * 1000000L};
        int sig = sigtimedwait(set, NULL, &wait);
        if (sig == SIGHUP) {
            RB_LOG_INFO(0, "SIGHUP received: reloading TLS certificates; the configuration "
                           "file once serving");
            reload_tls(srv);
            *hup = true;
        }
        if (sig == SIGTERM || sig == SIGINT) {
            RB_LOG_INFO(0, "%s received while waiting for storage: stopping",
                        sig == SIGTERM ? "SIGTERM" : "SIGINT");
            return false;
        }
    }
    return true;
}

/* The lame-duck drain, seen from systemd: a STATUS= line when the count of
 * connections left has changed (at most every DRAIN_STATUS_MS) until every
 * shard's turns have ended, which is checked every 10 ms so that a stop
 * is not made longer. */
#define DRAIN_STATUS_MS 200

static void drain_status(rb_server *srv)
{
    unsigned last = ~0u;
    uint64_t last_ms = 0;
    for (;;) {
        bool done = true;
        unsigned left = 0;
        for (uint32_t i = 0; i < srv->shard_count; i++) {
            done = done && atomic_load(&srv->shards[i].finished);
            left += atomic_load(&srv->shards[i].conn_count);
        }
        if (done) {
            return;
        }
        uint64_t now_ms = rb_clock_ms();
        if (left != last && (last == ~0u || now_ms >= last_ms + DRAIN_STATUS_MS)) {
            sd_notifyf(0, "STATUS=draining: %u connections left", left);
            last = left;
            last_ms = now_ms;
        }
        usleep(10 * 1000);
    }
}

/* ringbusd --migrate-only: the backend's migrations, then exit. */
static int migrate_only(const rb_config *cfg)
{
    const rb_storage_ops *ops = rb_storage_ops_for(cfg);
    if (ops == NULL || ops->migrate == NULL) {
        printf("ringbusd: storage %s has no schema to migrate\n", ops ? ops->name : "?");
        return 0;
    }
    rb_err err;
    rb_err_clear(&err);
    if (ops->migrate(cfg, &err) != 0) {
        fprintf(stderr, "ringbusd: %s\n", err.msg);
        return 1;
    }
    printf("ringbusd: storage %s: schema is up to date\n", ops->name);
    return 0;
}

/* After SIGTERM or SIGINT: the drain, then everything start-up made. */
static void stop_serving(rb_server *srv)
{
    sd_notify(0, "STOPPING=1\nSTATUS=draining");
    atomic_store(&srv->ready, false);
    /* Sign-ins still queued are cancelled; running ones still reach their
     * shard, which runs until rb_server_stop. */
    rb_auth_pool_stop(srv->auth_pool);
    srv->auth_pool = NULL;
    rb_server_stop(srv);
    drain_status(srv);
    rb_server_join(srv);
    rb_reload_gen_free(srv->reload_gen);
    srv->reload_gen = NULL;
    rb_auth_free(srv->reload_auth);
    srv->reload_auth = NULL;
    rb_reload_deinit();
    close_listeners(srv);
    rb_tls_global_deinit();
    srv->storage_ops->close(srv->storage);
    rb_auth_free(srv->auth);
    RB_LOG_INFO(0, "stopped");
}

static int run(rb_server *srv)
{
    rb_err err;
    rb_err_clear(&err);
    if (rb_loop_probe(&err) != 0) {
        fprintf(stderr, "ringbusd: %s\n", err.msg);
        return 1;
    }
    sigset_t set;
    block_signals(&set);
    int rc = check_auth(&srv->cfg, &srv->auth, &err);
    if (rc == 0 && srv->cfg.auth_mode == RB_AUTH_MODE_NONE) {
        rc = rb_auth_verify(srv->auth, (rb_bytes){NULL, 0}, 0, &srv->anonymous, &err);
    }
    if (rc == 0 && rb_auth_has_passwords(srv->auth)) {
        rc = rb_auth_pool_start(&srv->auth_pool, srv->auth, srv->cfg.auth_workers, &err);
    }
    rc = rc ? rc : rb_tls_global_init(&err);
    rc = rc ? rc : open_listeners(srv, &err);
    if (rc == 0) {
        srv->storage_ops = rb_storage_ops_for(&srv->cfg);
        if (srv->storage_ops == NULL) {
            rc = rb_err_set(&err, RB_EUNSUPPORTED, 0, "storage backend not built in");
        }
    }
    if (rc == 0) {
        rc = srv->storage_ops->open(&srv->cfg, &srv->storage, &err);
    }
    if (rc != 0) {
        fprintf(stderr, "ringbusd: %s\n", err.msg);
        close_listeners(srv);
        rb_auth_pool_stop(srv->auth_pool);
        rb_auth_free(srv->auth);
        return 1;
    }
    bool hup = false;
    if (!wait_storage_ready(srv, &set, &hup)) {
        rb_auth_pool_stop(srv->auth_pool);
        srv->auth_pool = NULL;
        close_listeners(srv);
        rb_tls_global_deinit();
        srv->storage_ops->close(srv->storage);
        return 0;
    }
    srv->shard_count = srv->cfg.shards;
    rc = listen_all(srv, &err);
    srv->subsystems = rb_shard_subsystems;
    srv->subsystem_count = rb_shard_subsystem_count;
    srv->admin.version = RB_VERSION;
    rc = rc ? rc : rb_admin_add_json(&srv->admin, "/v1/cluster", rb_cluster_json, &err);
    rb_admin_set_ready_check(&srv->admin, rb_cluster_ready);
    rc = rc ? rc : rb_watchdog_init(srv->shard_count, &err);
    rc = rc ? rc : rb_server_start(srv, &err);
    if (rc != 0) {
        fprintf(stderr, "ringbusd: %s\n", err.msg);
        /* Shards that started are told to stop and joined. */
        rb_server_stop(srv);
        _exit(1);
    }
    atomic_store(&srv->ready, true);
    RB_LOG_INFO(0, "ready: %u shards, storage %s (epoch %016llx), version %s", srv->shard_count,
                srv->storage_ops->name, (unsigned long long)srv->storage_ops->epoch(srv->storage),
                RB_VERSION);
    sd_notify(0, "READY=1\nSTATUS=serving");
    if (hup) {
        reload(srv);
    }
    wait_for_stop(srv, &set);
    stop_serving(srv);
    return 0;
}

/* --pid-file: the daemon's pid, for ringbusd --reload. */
static int write_pid_file(const char *path)
{
    FILE *f = fopen(path, "w");
    if (f == NULL || fprintf(f, "%ld\n", (long)getpid()) < 0 || fclose(f) != 0) {
        fprintf(stderr, "ringbusd: --pid-file %s: %s\n", path, strerror(errno));
        return 1;
    }
    return 0;
}

/* A pid as text: digits only, above 1, within pid_t. */
static pid_t parse_pid(const char *text)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno != 0 || end == text || (*end != '\0' && *end != '\n') || v <= 1 || v > 4194304) {
        return 0;
    }
    return (pid_t)v;
}

/* True when /proc says pid runs ringbusd (a stale pid file names another
 * program, which must not get SIGHUP). */
static bool is_ringbusd(pid_t pid)
{
    char path[64];
    char comm[32] = {0};
    snprintf(path, sizeof path, "/proc/%ld/comm", (long)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return false;
    }
    size_t n = fread(comm, 1, sizeof comm - 1, f);
    fclose(f);
    return n >= 8 && strncmp(comm, "ringbusd", 8) == 0 && (comm[8] == '\n' || comm[8] == '\0');
}

/* ringbusd --reload: SIGHUP to the daemon named by --pid, else the pid in
 * --pid-file, else $MAINPID (set by systemd for ExecReload). */
static int signal_reload(const char *pid_text, const char *pid_file)
{
    char buf[32] = {0};
    const char *from = "--pid";
    if (pid_text == NULL && pid_file != NULL) {
        from = pid_file;
        FILE *f = fopen(pid_file, "r");
        if (f == NULL) {
            fprintf(stderr, "ringbusd: --reload: %s: %s\n", pid_file, strerror(errno));
            return 1;
        }
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        pid_text = buf;
    } else if (pid_text == NULL) {
        from = "$MAINPID";
        pid_text = getenv("MAINPID");
        if (pid_text == NULL) {
            fprintf(stderr, "ringbusd: --reload: which daemon? Give --pid PID or --pid-file PATH "
                            "(outside systemd's ExecReload, $MAINPID is not set)\n");
            return 2;
        }
    }
    pid_t pid = parse_pid(pid_text);
    if (pid == 0) {
        fprintf(stderr, "ringbusd: --reload: %s: not a process id\n", from);
        return 1;
    }
    if (!is_ringbusd(pid)) {
        fprintf(stderr, "ringbusd: --reload: process %ld (from %s) is not ringbusd\n", (long)pid,
                from);
        return 1;
    }
    if (kill(pid, SIGHUP) != 0) {
        fprintf(stderr, "ringbusd: --reload: kill %ld: %s\n", (long)pid, strerror(errno));
        return 1;
    }
    printf("ringbusd: asked process %ld to reload; its log has the result\n", (long)pid);
    return 0;
}

/* The daemon (or --migrate-only): the config from --config or the
 * embedded default, then run, with the pid in pid_file (when not NULL)
 * meanwhile. */
static int daemon_main(const char *pid_file, bool migrate)
{
    static rb_server srv;
    rb_err err;
    rb_err_clear(&err);
    if (config_path != NULL) {
        if (rb_config_load_file(config_path, &srv.cfg, &err) != 0) {
            fprintf(stderr, "ringbusd: %s\n", err.msg);
            return 1;
        }
    } else {
        rb_config_defaults(&srv.cfg);
    }
    apply_log_settings(&srv.cfg);
    if (migrate) {
        return migrate_only(&srv.cfg);
    }
    if (pid_file != NULL && write_pid_file(pid_file) != 0) {
        return 1;
    }
    int rc = run(&srv);
    if (pid_file != NULL) {
        unlink(pid_file);
    }
    return rc;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check-config", required_argument, NULL, 'k'},
        {"migrate-only", no_argument, NULL, 'm'}, /* storage schema, then exit */
        {"hash-password", no_argument, NULL, 'p'},
        {"version", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {"reload", no_argument, NULL, 'r'},
        {"pid", required_argument, NULL, 'P'},
        {"pid-file", required_argument, NULL, 'f'},
        {NULL, 0, NULL, 0},
    };
    const char *check_path = NULL;
    const char *pid_text = NULL;
    const char *pid_file = NULL;
    bool reload_mode = false;
    bool migrate = false;
    int opt;
    while ((opt = getopt_long(argc, argv, "c:vh", opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            config_path = optarg;
            break;
        case 'k':
            check_path = optarg;
            break;
        case 'm':
            migrate = true;
            break;
        case 'p':
            return hash_password();
        case 'r':
            reload_mode = true;
            break;
        case 'P':
            pid_text = optarg;
            break;
        case 'f':
            pid_file = optarg;
            break;
        case 'v':
            printf("ringbusd %s\n", RB_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "ringbusd: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (check_path != NULL) {
        return check_config(check_path);
    }
    if (reload_mode) {
        return signal_reload(pid_text, pid_file);
    }
    return daemon_main(pid_file, migrate);
}
