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
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "common/limits.h"
#include "common/log.h"
#include "config/config.h"
#include "server/auth.h"
#include "server/server.h"
#include "server/watchdog.h"
#include "storage/pgwire.h"
#include "transports/quic.h"
#include "transports/tls.h"

/* Connections queued in the kernel before the acceptor takes them. */
#define LISTEN_BACKLOG 4096

static void usage(FILE *out)
{
    fprintf(out, "usage: ringbusd [--config PATH]\n"
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
                 "  -c, --config PATH        load the TOML configuration at PATH\n"
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
static void reload_tls(rb_server *srv)
{
    for (uint32_t i = 0; i < srv->listener_count; i++) {
        rb_listener *l = &srv->listeners[i];
        if (l->tls == NULL) {
            continue;
        }
        rb_err err;
        if (rb_tls_server_reload(l->tls, &err) != 0) {
            RB_LOG_ERROR(0, "reload: %s; keeping the previous certificate", err.msg);
        } else {
            RB_LOG_INFO(0, "reload: %s://%s:%u now serves %s", rb_transport_name(l->cfg.transport),
                        l->cfg.address, l->cfg.port, l->cfg.cert);
        }
    }
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

static bool is_loopback(const char *address)
{
    return strncmp(address, "127.", 4) == 0 || strcmp(address, "::1") == 0;
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
            RB_LOG_INFO(0, "SIGHUP received: reloading TLS certificates");
            reload_tls(srv);
            continue;
        }
        RB_LOG_INFO(0, "%s received: stopping", sig == SIGTERM ? "SIGTERM" : "SIGINT");
        return;
    }
}

/* Waits until the storage backend can serve (Postgres reached and
 * migrated; it logs why not meanwhile), answering SIGTERM and SIGINT, and
 * SIGHUP as when serving (a certificate replaced meanwhile must not wait
 * for a second SIGHUP). Returns false when told to stop first. */
static bool wait_storage_ready(rb_server *srv, const sigset_t *set)
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
            RB_LOG_INFO(0, "SIGHUP received: reloading TLS certificates");
            reload_tls(srv);
        }
        if (sig == SIGTERM || sig == SIGINT) {
            RB_LOG_INFO(0, "%s received while waiting for storage: stopping",
                        sig == SIGTERM ? "SIGTERM" : "SIGINT");
            return false;
        }
    }
    return true;
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
    if (!wait_storage_ready(srv, &set)) {
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
    wait_for_stop(srv, &set);
    sd_notify(0, "STOPPING=1");
    atomic_store(&srv->ready, false);
    /* Sign-ins still queued are cancelled; running ones still reach their
     * shard, which runs until rb_server_stop. */
    rb_auth_pool_stop(srv->auth_pool);
    srv->auth_pool = NULL;
    rb_server_stop(srv);
    rb_server_join(srv);
    close_listeners(srv);
    rb_tls_global_deinit();
    srv->storage_ops->close(srv->storage);
    rb_auth_free(srv->auth);
    RB_LOG_INFO(0, "stopped");
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},  {"check-config", required_argument, NULL, 'k'},
        {"migrate-only", no_argument, NULL, 'm'}, /* storage schema, then exit */
        {"hash-password", no_argument, NULL, 'p'}, {"version", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0},
    };
    const char *config_path = NULL;
    const char *check_path = NULL;
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
    static rb_server srv;
    rb_err err;
    rb_err_clear(&err);
    if (check_path != NULL) {
        return check_config(check_path);
    }
    if (config_path != NULL) {
        if (rb_config_load_file(config_path, &srv.cfg, &err) != 0) {
            fprintf(stderr, "ringbusd: %s\n", err.msg);
            return 1;
        }
    } else {
        rb_config_defaults(&srv.cfg);
    }
    rb_log_level level = RB_LOG_INFO;
    if (rb_log_level_parse(srv.cfg.log_level, &level) == 0) {
        rb_log_set_level(level);
    }
    rb_log_format format = RB_LOG_FORMAT_TEXT;
    if (rb_log_format_parse(srv.cfg.log_format, &format) == 0) {
        rb_log_set_format(format);
    }
    if (migrate) {
        return migrate_only(&srv.cfg);
    }
    return run(&srv);
}
