# ringbus build. `make` builds build/ringbusd, build/ringbus and libringbus
# (static and shared) at -O2; `make test` runs every test; `make test-asan`
# runs them again under ASan+UBSan. Objects go to build/<variant>/.

VARIANT   ?= release
BUILDDIR  ?= build/$(VARIANT)
PREFIX    ?= /usr/local
DESTDIR   ?=
CC        ?= cc
PYTHON    ?= /usr/bin/python3

# One semantic version for ringbusd --version, ringbus --version,
# ringbus_version() and ringbus.pc: the VERSION file, then the commit as
# build metadata (0.2.0+g1234abc, .dirty when tracked files changed) when
# this directory is a git checkout and git runs; else VERSION alone (a
# tarball or `git archive` export).
VERSION_BASE := $(shell cat VERSION 2>/dev/null)
ifeq ($(VERSION_BASE),)
$(error VERSION is missing or empty: it holds the release version, e.g. 0.2.0)
endif
GIT_HASH  := $(shell [ "$$(git rev-parse --show-toplevel 2>/dev/null)" = "$(CURDIR)" ] && \
               git rev-parse --short=7 HEAD 2>/dev/null)
GIT_DIRTY := $(if $(GIT_HASH),$(shell git status --porcelain --untracked-files=no 2>/dev/null))
VERSION   := $(VERSION_BASE)$(if $(GIT_HASH),+g$(GIT_HASH)$(if $(GIT_DIRTY),.dirty))
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
export SOURCE_DATE_EPOCH

# QUIC: ngtcp2 with its GnuTLS crypto backend, and nghttp3 for HTTP/3.
QUIC_PKGS := libngtcp2 libngtcp2_crypto_gnutls libnghttp3 gnutls
PKGS      := liburing libsystemd libpq wolfssl $(QUIC_PKGS)
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null | sed 's/-I/-isystem /g')
QUIC_LIBS := $(shell pkg-config --libs $(QUIC_PKGS) 2>/dev/null)
# -lssl goes before -lwolfssl: wolfSSL exports a few OpenSSL names, and the
# OpenSSL that libpq loads must bind to OpenSSL's own.
PKG_LIBS  := $(shell pkg-config --libs liburing libsystemd libpq libjwt libargon2 jansson libxxhash \
               2>/dev/null) -lssl -lcrypto $(shell pkg-config --libs wolfssl 2>/dev/null) \
             $(QUIC_LIBS)
CLIENT_LIBS := -lssl -lcrypto $(shell pkg-config --libs wolfssl 2>/dev/null) $(QUIC_LIBS) -lpthread
# The CLI parses its stream commands with libjansson (cli/cmdjson.c).
CLI_LIBS    := $(CLIENT_LIBS) $(shell pkg-config --libs jansson 2>/dev/null) -lm
CHECK_CFLAGS := $(shell pkg-config --cflags check 2>/dev/null | sed 's/-I/-isystem /g')
CHECK_LIBS := $(shell pkg-config --libs check 2>/dev/null)

WARN   := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 \
          -Wvla -Wdate-time
BASE_CFLAGS := -std=c11 -D_GNU_SOURCE $(WARN) -g -fno-omit-frame-pointer -fPIC \
          -ffile-prefix-map=$(CURDIR)=. -I. $(PKG_CFLAGS)

ifeq ($(VARIANT),asan)
OPT_CFLAGS := -O1 -fsanitize=address,undefined -fno-sanitize-recover=all -DRB_SLOW_CHECKS
OPT_LDFLAGS := -fsanitize=address,undefined
else ifeq ($(VARIANT),libfuzzer)
OPT_CFLAGS := -O1 -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all \
              -DRB_SLOW_CHECKS
OPT_LDFLAGS := -fsanitize=address,undefined
else ifeq ($(VARIANT),tsan)
OPT_CFLAGS := -O1 -fsanitize=thread -DRB_SLOW_CHECKS
OPT_LDFLAGS := -fsanitize=thread
else
OPT_CFLAGS := -O2
OPT_LDFLAGS :=
endif

CFLAGS  := $(BASE_CFLAGS) $(OPT_CFLAGS) $(EXTRA_CFLAGS)
LDFLAGS := $(OPT_LDFLAGS) $(EXTRA_LDFLAGS)
LIBS    := $(PKG_LIBS) -lpthread

# Sorted source lists (reproducible builds).
COMMON_SRC     := $(sort $(wildcard common/*.c))
CONFIG_SRC     := $(sort $(wildcard config/*.c))
STORAGE_SRC    := $(sort $(wildcard storage/*.c))
TRANSPORTS_SRC := $(sort $(wildcard transports/*.c))
SERVER_SRC     := $(sort $(filter-out server/main.c,$(wildcard server/*.c)))
CLIENT_LIB_SRC := $(sort $(wildcard client/*.c))
CLI_SRC        := $(sort $(wildcard cli/*.c))
# bench/ also holds peerload.c and rpcload.c, the peer drivers built by bench/Makefile.
BENCH_SRC      := bench/bench.c
UNIT_SRC       := $(sort $(wildcard tests/unit/*.c))

obj = $(patsubst %.c,$(BUILDDIR)/obj/%.o,$(1))

CORE_OBJ   := $(call obj,$(COMMON_SRC) $(CONFIG_SRC))
SERVER_OBJ := $(CORE_OBJ) $(call obj,$(STORAGE_SRC) $(TRANSPORTS_SRC) $(SERVER_SRC))
CLIENT_OBJ := $(call obj,$(CLIENT_LIB_SRC))
CLI_OBJ    := $(call obj,$(CLI_SRC) $(BENCH_SRC))
# The client library needs only the codec, errors and logging of common/.
LIB_OBJ    := $(call obj,common/base64.c common/err.c common/frame.c common/log.c transports/quic.c \
                        transports/tls_pair.c transports/wsframe.c) $(CLIENT_OBJ)

RINGBUSD   := $(BUILDDIR)/ringbusd
RINGBUS    := $(BUILDDIR)/ringbus
LIBA       := $(BUILDDIR)/libringbus.a
LIBSO      := $(BUILDDIR)/libringbus.so
UNIT       := $(BUILDDIR)/unit_tests
# A QUIC/HTTP/3 test peer on the engine (tests/integration/quic_peer.c),
# and a TCP-to-QUIC relay on libringbus's quic transport (quic_relay.c).
QUIC_PEER  := $(BUILDDIR)/quic_peer
QUIC_RELAY := $(BUILDDIR)/quic_relay

.PHONY: all build run test test-unit test-integration test-fuzz test-chaos test-js chaos test-asan tsan \
        check format format-check install clean setup deps bench fuzz fuzz-smoke version deb FORCE

all: build
	@ln -sf $(VARIANT)/ringbusd build/ringbusd
	@ln -sf $(VARIANT)/ringbus build/ringbus
	@ln -sf $(VARIANT)/libringbus.a build/libringbus.a
	@ln -sf $(VARIANT)/libringbus.so build/libringbus.so

build: deps $(RINGBUSD) $(RINGBUS) $(LIBA) $(LIBSO) $(UNIT) $(QUIC_PEER) $(QUIC_RELAY)

# Installs the Debian packages the build and the tests need, once.
deps:
	@scripts/setup.sh --if-needed

setup:
	@scripts/setup.sh

$(BUILDDIR)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILDDIR)/obj/tests/unit/%.o: tests/unit/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(CHECK_CFLAGS) -MMD -MP -c $< -o $@

$(RINGBUSD): $(SERVER_OBJ) $(call obj,server/main.c)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(LIBA): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

# Only the files that print the version get it, and they are rebuilt when
# it changes (the stamp is rewritten only then), so a new commit never
# leaves a stale version in an incremental build.
VERSION_OBJ   := $(call obj,server/main.c client/ringbus.c)
VERSION_STAMP := $(BUILDDIR)/version.stamp
$(VERSION_OBJ): CFLAGS += -DRB_VERSION='"$(VERSION)"'
$(VERSION_OBJ): $(VERSION_STAMP)
$(VERSION_STAMP): FORCE
	@mkdir -p $(dir $@)
	@echo '$(VERSION)' | cmp -s - $@ || echo '$(VERSION)' > $@
FORCE:

# Prints the version the build stamps into the binaries.
version:
	@echo '$(VERSION)'

# libringbus exports ringbus_* alone: its objects hide every symbol that
# ringbus.h does not mark RINGBUS_API, and the version script makes the rest
# local (tests/integration/test_library.py checks the built .so with nm -D).
$(LIB_OBJ): CFLAGS += -fvisibility=hidden

$(LIBSO): $(LIB_OBJ) client/libringbus.map
	$(CC) $(LDFLAGS) -shared -Wl,-soname,libringbus.so.0 -Wl,--version-script=client/libringbus.map \
	  -o $@ $(LIB_OBJ) $(CLIENT_LIBS)

$(RINGBUS): $(CLI_OBJ) $(LIB_OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ $(CLI_LIBS)

# The unit runner links every suite; tests/unit/suites.h is generated from
# the suite functions the test files define.
$(BUILDDIR)/suites.h: $(UNIT_SRC)
	@mkdir -p $(dir $@)
	@grep -ho 'Suite \*rb_[a-z0-9_]*_suite(void)' $(filter-out tests/unit/main.c,$(UNIT_SRC)) \
	  | sed 's/Suite \*\(rb_[a-z0-9_]*_suite\)(void)/X(\1)/' | sort -u > $@.tmp && mv $@.tmp $@

$(BUILDDIR)/obj/tests/unit/main.o: $(BUILDDIR)/suites.h
$(BUILDDIR)/obj/tests/unit/main.o: CFLAGS += -I$(BUILDDIR)

$(UNIT): $(call obj,$(UNIT_SRC)) $(SERVER_OBJ) $(CLIENT_OBJ) $(call obj,$(filter-out cli/cli.c,$(CLI_SRC)))
	$(CC) $(LDFLAGS) -o $@ $^ $(CHECK_LIBS) $(LIBS) -lm

$(QUIC_PEER): $(call obj,tests/integration/quic_peer.c) $(SERVER_OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(QUIC_RELAY): $(call obj,tests/integration/quic_relay.c) $(SERVER_OBJ) $(CLIENT_OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

run: all
	$(RINGBUSD)

test: all
	$(MAKE) --no-print-directory test-unit test-fuzz test-integration test-chaos test-js

test-unit: build
	$(UNIT)

test-integration: build
	RINGBUS_BUILD=$(BUILDDIR) $(PYTHON) -m pytest -q -p no:cacheprovider tests/integration

# The JavaScript client (client/js): its node --test suites against the
# real daemon over ws and wss, the chat page in headless Chromium, the
# npm pack contents. Node and npm come from scripts/setup.sh.
test-js: build
	@client/js/test/node_setup.sh
	cd client/js && RINGBUS_BUILD=$(abspath $(BUILDDIR)) node --test --test-concurrency=1 test/

# The chaos suite (tests/chaos, docs/RELIABILITY.md): faults under load and
# one history checker for G1-G4. `make test` runs its short form (a few
# minutes); `make chaos` the long form (CHAOS_TRIALS=N, CHAOS_LOAD_S=S and
# CHAOS_SEED=N override it; CHAOS_RESULTS=FILE appends one line per scenario).
test-chaos: build
	RINGBUS_BUILD=$(BUILDDIR) $(PYTHON) -m pytest -q -p no:cacheprovider tests/chaos

chaos: all
	CHAOS_PROFILE=long RINGBUS_BUILD=$(BUILDDIR) $(PYTHON) -m pytest -q -p no:cacheprovider \
	  tests/chaos

test-asan:
	$(MAKE) --no-print-directory VARIANT=asan build
	$(MAKE) --no-print-directory VARIANT=asan test-unit test-fuzz test-integration test-chaos test-js

check: test-asan

tsan:
	$(MAKE) --no-print-directory VARIANT=tsan build
	$(MAKE) --no-print-directory VARIANT=tsan test-unit test-fuzz test-integration

FORMAT_FILES = $(sort $(wildcard common/*.[ch] config/*.[ch] storage/*.[ch] transports/*.[ch] \
               server/*.[ch] client/*.[ch] cli/*.[ch] tests/unit/*.[ch] tests/fuzz/*.[ch] bench/*.[ch]))

format:
	clang-format -i $(FORMAT_FILES)

format-check:
	clang-format --dry-run --Werror $(FORMAT_FILES)

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include \
	  $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/share/ringbus \
	  $(DESTDIR)$(PREFIX)/lib/systemd/system $(DESTDIR)$(PREFIX)/lib/sysusers.d \
	  $(DESTDIR)$(PREFIX)/lib/tmpfiles.d
	install -m 755 $(RINGBUSD) $(RINGBUS) $(DESTDIR)$(PREFIX)/bin/
	install -m 644 $(LIBA) $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(LIBSO) $(DESTDIR)$(PREFIX)/lib/libringbus.so.0
	ln -sf libringbus.so.0 $(DESTDIR)$(PREFIX)/lib/libringbus.so
	install -m 644 client/ringbus.h $(DESTDIR)$(PREFIX)/include/ringbus.h
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' client/ringbus.pc.in \
	  > $(DESTDIR)$(PREFIX)/lib/pkgconfig/ringbus.pc
	install -m 644 config/ringbusd.example.toml $(DESTDIR)$(PREFIX)/share/ringbus/
	sed -e 's|@PREFIX@|$(PREFIX)|g' systemd/ringbusd.service \
	  > $(DESTDIR)$(PREFIX)/lib/systemd/system/ringbusd.service
	install -m 644 systemd/ringbusd.sysusers $(DESTDIR)$(PREFIX)/lib/sysusers.d/ringbusd.conf
	install -m 644 systemd/ringbusd.tmpfiles $(DESTDIR)$(PREFIX)/lib/tmpfiles.d/ringbusd.conf

# Fuzz targets (tests/fuzz/fuzz_NAME.c, seeds in tests/fuzz/corpus/NAME).
# `make test-fuzz` replays every corpus through its target, linked with
# tests/fuzz/replay.c and built like the rest of the variant (so under
# ASan+UBSan in `make test-asan`). `make fuzz T=NAME [SECONDS=60]` builds
# the target with clang's libFuzzer and fuzzes it; new inputs go to
# build/libfuzzer/corpus/NAME, crashes to build/libfuzzer/crash-NAME-*.
# `make fuzz-smoke` fuzzes every target for FUZZ_SMOKE_SECONDS each.
FUZZ_TARGETS := $(sort $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c)))
FUZZ_REPLAY  := $(addprefix $(BUILDDIR)/fuzz/replay_,$(FUZZ_TARGETS))
SECONDS ?= 60
.SECONDARY: $(call obj,$(wildcard tests/fuzz/*.c))
FUZZ_SMOKE_SECONDS ?= 10

# Every target links the daemon's objects, libringbus and the CLI's parsers
# (not its main), so a target may reach any of them.
FUZZ_LINK_OBJ := $(SERVER_OBJ) $(CLIENT_OBJ) $(call obj,$(filter-out cli/cli.c,$(CLI_SRC)))

$(BUILDDIR)/fuzz/replay_%: $(call obj,tests/fuzz/replay.c) $(BUILDDIR)/obj/tests/fuzz/fuzz_%.o \
                          $(FUZZ_LINK_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS) -lm

$(BUILDDIR)/fuzz/fuzz_%: $(BUILDDIR)/obj/tests/fuzz/fuzz_%.o $(FUZZ_LINK_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -fsanitize=fuzzer -o $@ $^ $(LIBS) -lm

# fuzz_pgrows.c includes storage/postgres.c (to reach its static result
# handlers), so it links everything but that object.
FUZZ_PGROWS_OBJ := $(filter-out $(call obj,storage/postgres.c),$(FUZZ_LINK_OBJ))

$(BUILDDIR)/fuzz/replay_pgrows: $(call obj,tests/fuzz/replay.c) \
                               $(BUILDDIR)/obj/tests/fuzz/fuzz_pgrows.o $(FUZZ_PGROWS_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS) -lm

$(BUILDDIR)/fuzz/fuzz_pgrows: $(BUILDDIR)/obj/tests/fuzz/fuzz_pgrows.o $(FUZZ_PGROWS_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -fsanitize=fuzzer -o $@ $^ $(LIBS) -lm

test-fuzz: $(FUZZ_REPLAY)
	@for t in $(FUZZ_TARGETS); do \
	  printf 'fuzz replay %-8s ' "$$t"; \
	  $(BUILDDIR)/fuzz/replay_$$t tests/fuzz/corpus/$$t || exit 1; \
	done

fuzz:
	@test -n "$(T)" || { echo "usage: make fuzz T=<$(FUZZ_TARGETS)> [SECONDS=60]"; exit 2; }
	@test -f tests/fuzz/fuzz_$(T).c || { echo "no target tests/fuzz/fuzz_$(T).c"; exit 2; }
	@command -v clang-14 >/dev/null 2>&1 || scripts/setup.sh --fuzz
	$(MAKE) --no-print-directory VARIANT=libfuzzer CC=clang-14 build/libfuzzer/fuzz/fuzz_$(T)
	@mkdir -p build/libfuzzer/corpus/$(T)
	build/libfuzzer/fuzz/fuzz_$(T) -max_total_time=$(SECONDS) -timeout=10 -rss_limit_mb=2048 \
	  -artifact_prefix=build/libfuzzer/crash-$(T)- build/libfuzzer/corpus/$(T) tests/fuzz/corpus/$(T)

fuzz-smoke:
	@for t in $(FUZZ_TARGETS); do \
	  $(MAKE) --no-print-directory fuzz T=$$t SECONDS=$(FUZZ_SMOKE_SECONDS) || exit 1; \
	done

# Side-by-side benchmarks with NATS and Redis (docs/BENCHMARKS.md).
bench: all
	bench/run.sh

clean:
	rm -rf build

-include $(shell find build -name '*.d' -type f 2>/dev/null)

# The Debian package of the release build (packaging/deb.sh: `make install`
# into a staging root, then dpkg-deb), checked with lintian: no errors.
DEB_OUT := build/deb
deb:
	$(MAKE) --no-print-directory VARIANT=release all
	packaging/deb.sh '$(VERSION)' $(DEB_OUT)
