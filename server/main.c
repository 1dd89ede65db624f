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

#include "common/log.h"
#include "config/config.h"
#include "server/server.h"

/* Connections queued in the kernel before the acceptor takes them. */
#define LISTEN_BACKLOG 4096

static void usage(FILE *out)
{
    fprintf(out, "usage: ringbusd [--config PATH]\n"
                 "       ringbusd --check-config PATH\n"
                 "       ringbusd --version | --help\n"
                 "\n"
                 "Without --config, ringbusd runs the embedded default: the memory store and\n"
                 "one TCP listener on 127.0.0.1:7400.\n"
                 "\n"
                 "  -c, --config PATH        load the TOML configuration at PATH\n"
                 "      --check-config PATH  validate PATH, print errors as file:line:column\n"
                 "  -v, --version            print the version\n"
                 "  -h, --help               print this help\n");
}

static int listen_one(rb_listener *l, rb_err *err)
{
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
    if (bind(fd, (struct sockaddr *)&ss, ss_len) == -1) {
        int e = errno;
        close(fd);
        return rb_err_set(err, RB_ESYS, e, "%s listen %s:%u: bind", name, l->cfg.address,
                          l->cfg.port);
    }
    if (listen(fd, LISTEN_BACKLOG) == -1) {
        int e = errno;
        close(fd);
        return rb_err_set(err, RB_ESYS, e, "%s listen %s:%u: listen", name, l->cfg.address,
                          l->cfg.port);
    }
    l->fd = fd;
    return 0;
}

static int open_listeners(rb_server *srv, rb_err *err)
{
    for (uint32_t i = 0; i < srv->cfg.listener_count; i++) {
        rb_listener *l = &srv->listeners[i];
        l->cfg = srv->cfg.listeners[i];
        l->fd = -1;
        if (l->cfg.transport != RB_TRANSPORT_TCP) {
            return rb_err_set(err, RB_EUNSUPPORTED, 0,
                              "listener %u: transport \"%s\" is not built into this version", i,
                              rb_transport_name(l->cfg.transport));
        }
        int rc = listen_one(l, err);
        if (rc != 0) {
            return rc;
        }
        srv->listener_count++;
        RB_LOG_INFO(0, "listening on %s://%s:%u", rb_transport_name(l->cfg.transport),
                    l->cfg.address, l->cfg.port);
    }
    return 0;
}

static void close_listeners(rb_server *srv)
{
    for (uint32_t i = 0; i < srv->listener_count; i++) {
        if (srv->listeners[i].fd >= 0) {
            close(srv->listeners[i].fd);
        }
    }
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

static void wait_for_stop(const sigset_t *set)
{
    /* The main thread's loop: it only waits for signals. */
    for (;;) {
        int sig = 0;
        if (sigwait(set, &sig) != 0) {
            continue;
        }
        if (sig == SIGHUP) {
            RB_LOG_INFO(0, "SIGHUP received: reload is not implemented yet; nothing changed");
            continue;
        }
        RB_LOG_INFO(0, "%s received: stopping", sig == SIGTERM ? "SIGTERM" : "SIGINT");
        return;
    }
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
    int rc = open_listeners(srv, &err);
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
        return 1;
    }
    srv->shard_count = srv->cfg.shards;
    rc = rb_server_start(srv, &err);
    if (rc != 0) {
        fprintf(stderr, "ringbusd: %s\n", err.msg);
        /* Shards that started are told to stop and joined. */
        rb_server_stop(srv);
        _exit(1);
    }
    atomic_store(&srv->ready, true);
    RB_LOG_INFO(0, "ready: %u shards, storage %s, version %s", srv->shard_count,
                srv->storage_ops->name, RB_VERSION);
    sd_notify(0, "READY=1\nSTATUS=serving");
    wait_for_stop(&set);
    sd_notify(0, "STOPPING=1");
    atomic_store(&srv->ready, false);
    rb_server_stop(srv);
    rb_server_join(srv);
    close_listeners(srv);
    srv->storage_ops->close(srv->storage);
    RB_LOG_INFO(0, "stopped");
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check-config", required_argument, NULL, 'k'},
        {"version", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config_path = NULL;
    const char *check_path = NULL;
    int opt;
    while ((opt = getopt_long(argc, argv, "c:vh", opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            config_path = optarg;
            break;
        case 'k':
            check_path = optarg;
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
    static rb_server srv;
    rb_err err;
    rb_err_clear(&err);
    if (check_path != NULL) {
        if (rb_config_load_file(check_path, &srv.cfg, &err) != 0) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        printf("%s: ok\n", check_path);
        return 0;
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
    return run(&srv);
}
