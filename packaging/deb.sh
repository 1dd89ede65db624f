#!/usr/bin/env bash
# Builds the Debian package of ringbus with dpkg-deb from what `make install`
# installs (DESTDIR, PREFIX=/usr): ringbusd and ringbus, libringbus (.so.0,
# .so, .a), ringbus.h and ringbus.pc, the systemd unit, sysusers and
# tmpfiles snippets, the example config, and the man pages ringbusd(8) and
# ringbus(1). The maintainer scripts create the ringbus user and its
# directories and reload systemd; they neither enable nor start the service.
#
# usage: packaging/deb.sh VERSION OUTDIR   (run by `make deb` from the top)
set -euo pipefail

VERSION="$1"
OUT="$2"
ROOT="$OUT/debian/ringbus" # where dpkg-shlibdeps looks for a package's files
DEB_VERSION="${VERSION}-1"
ARCH="$(dpkg --print-architecture)"
# The maintainer: the last commit's author (a package built outside git
# says so).
MAINT="$(git log -1 --format='%an <%ae>' 2>/dev/null || true)"
MAINT="${MAINT:-ringbus maintainers <ringbus@localhost>}"
DOC="$ROOT/usr/share/doc/ringbus"

rm -rf "$OUT"
mkdir -p "$ROOT"
make --no-print-directory VARIANT=release PREFIX=/usr DESTDIR="$ROOT" install >/dev/null

# Debian policy: stripped binaries and shared library, compressed man pages
# and changelog, a copyright file, root-owned files, 0644/0755 modes.
strip --remove-section=.comment --remove-section=.note "$ROOT/usr/bin/ringbusd" \
  "$ROOT/usr/bin/ringbus"
strip --remove-section=.comment --remove-section=.note --strip-unneeded \
  "$ROOT/usr/lib/libringbus.so.0"
strip --strip-debug --remove-section=.comment --enable-deterministic-archives \
  "$ROOT/usr/lib/libringbus.a"
chmod 644 "$ROOT/usr/lib/libringbus.so.0"
install -d "$ROOT/usr/share/man/man1" "$ROOT/usr/share/man/man8" "$DOC"
gzip -9n < man/ringbus.1 > "$ROOT/usr/share/man/man1/ringbus.1.gz"
gzip -9n < man/ringbusd.8 > "$ROOT/usr/share/man/man8/ringbusd.8.gz"
install -m 644 packaging/copyright "$DOC/copyright"
DATE="$(date -u -R -d "@${SOURCE_DATE_EPOCH:-0}")"
printf 'ringbus (%s) unstable; urgency=medium\n\n  * Built from the ringbus tree at %s.\n\n -- %s  %s\n' \
  "$DEB_VERSION" "$VERSION" "$MAINT" "$DATE" | gzip -9n > "$DOC/changelog.Debian.gz"
find "$ROOT" -type d -exec chmod 755 {} +
find "$ROOT" -newermt "@${SOURCE_DATE_EPOCH:-0}" -exec touch -h -d "@${SOURCE_DATE_EPOCH:-0}" {} +

# Depends from the ELF files, as dpkg-shlibdeps reads them (from a
# debian/control beside the staging root, which has its DEBIAN/).
mkdir -p "$ROOT/DEBIAN"
printf 'Source: ringbus\n\nPackage: ringbus\nArchitecture: any\n' > "$OUT/debian/control"
DEPENDS="$(cd "$OUT" && dpkg-shlibdeps -O -edebian/ringbus/usr/bin/ringbusd \
  -edebian/ringbus/usr/bin/ringbus -edebian/ringbus/usr/lib/libringbus.so.0 \
  | sed -n 's/^shlibs:Depends=//p')"
test -n "$DEPENDS" || { echo "deb.sh: dpkg-shlibdeps found no dependencies" >&2; exit 1; }

cat > "$ROOT/DEBIAN/control" <<CONTROL
Package: ringbus
Version: $DEB_VERSION
Architecture: $ARCH
Maintainer: $MAINT
Installed-Size: $(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
Depends: $DEPENDS, systemd | systemd-standalone-sysusers
Section: net
Priority: optional
Description: message bus daemon with stored, gapless topic streams
 ringbusd is a message bus server: clients publish to named topics over
 TCP, TLS, WebSocket, WSS or QUIC, every message is stored with a per-topic
 sequence number, and a subscriber reads the history after its cursor, then
 the live messages, with no gap and no duplicate. Storage is in memory or in
 Postgres; several nodes form a cluster over one database.
 .
 This package holds the daemon (ringbusd, with its systemd unit), the
 command-line client (ringbus) and the C client library libringbus with its
 header and pkg-config file.
CONTROL
printf 'libringbus 0 ringbus (>= %s)\n' "$DEB_VERSION" > "$ROOT/DEBIAN/shlibs"
printf 'activate-noawait ldconfig\n' > "$ROOT/DEBIAN/triggers"
install -m 755 packaging/postinst packaging/postrm "$ROOT/DEBIAN/"
(cd "$ROOT" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z \
  | xargs -0 md5sum > DEBIAN/md5sums)
chmod 644 "$ROOT"/DEBIAN/{control,shlibs,triggers,md5sums}

DEB="$OUT/ringbus_${DEB_VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Zxz --build "$ROOT" "$DEB" >/dev/null
echo "$DEB"
