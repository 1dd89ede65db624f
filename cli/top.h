/* `ringbus top`: a live view of one daemon from its admin routes, /metrics
 * and /v1/connz (docs/OPERATIONS.md "Introspection"), like `nats top`. */
#ifndef RB_CLI_TOP_H
#define RB_CLI_TOP_H

/* The admin URL top reads by default (an `http` listener's default). */
#define RB_TOP_DEFAULT_ADMIN "http://127.0.0.1:7420"

/* Runs `ringbus top` with its own arguments (argv after "top"); timeout_ms
 * bounds each HTTP request. Returns the exit status: 0, 1 when the daemon
 * could not be read, 2 for a usage error. */
int rb_top_cli(int argc, char **argv, int timeout_ms);

#endif
