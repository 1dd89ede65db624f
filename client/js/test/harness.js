// Test harness: the real ringbusd (RINGBUS_BUILD, default build/release)
// started from a TOML file in a temp dir on free 127.0.0.1 ports with a ws
// and a wss listener (a throwaway CA and certificate made by openssl),
// waited for until its log says "ready:", stopped with SIGTERM and a
// bounded wait, or killed with SIGKILL. A daemon whose log shows an
// assertion or a sanitizer report fails the stop.
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(HERE, '../../..');
const BUILD = path.resolve(ROOT, process.env.RINGBUS_BUILD ?? 'build/release');
export const RINGBUSD = path.join(BUILD, 'ringbusd');
export const RINGBUS = path.join(BUILD, 'ringbus');
const READY_WAIT_MS = 20000;
const STOP_WAIT_MS = 15000;
const BAD_LOG_MARKERS = ['assertion failed', 'AddressSanitizer', 'UndefinedBehaviorSanitizer', 'LeakSanitizer', 'runtime error:', 'ThreadSanitizer'];

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A free TCP port on 127.0.0.1 (bound and released). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

export function tmpDir(prefix = 'rbjs-') {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** A CA and a server certificate for localhost and 127.0.0.1. */
export function makeCerts(dir) {
  const run = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe', timeout: 30000 });
  run('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem',
    '-days', '2', '-subj', '/CN=ringbus js test ca', '-addext', 'basicConstraints=critical,CA:TRUE',
    '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  fs.writeFileSync(path.join(dir, 'server.ext'), 'basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n');
  run('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=localhost');
  run('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '2', '-extfile', 'server.ext');
  return { ca: path.join(dir, 'ca.pem'), cert: path.join(dir, 'server.pem'), key: path.join(dir, 'server.key') };
}

// Daemons still running when a test file ends (a test failed before its
// stop()) are killed, so that their child process does not keep the test
// process, and the whole run, waiting.
const running = new Set();
process.on('exit', () => {
  for (const p of running) {
    try {
      p.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

export class Daemon {
  /** extra: more TOML before the listeners; storage: 'memory' or 'postgres' (conninfo). */
  constructor({ shards = 2, extra = '', storage = 'memory', conninfo = null, wss = true } = {}) {
    this.dir = tmpDir('rbjsd-');
    this.shards = shards;
    this.extra = extra;
    this.storage = storage;
    this.conninfo = conninfo;
    this.wantWss = wss;
    this.proc = null;
    this.logPath = path.join(this.dir, 'ringbusd.log');
  }

  async start() {
    if (!this.ports) {
      this.ports = { ws: await freePort(), wss: await freePort() };
      if (this.wantWss) this.certs = makeCerts(this.dir);
    }
    let toml = `shards = ${this.shards}\nlog_level = "debug"\n${this.extra}\n`;
    if (this.storage === 'postgres') {
      toml += `[storage]\nbackend = "postgres"\n[storage.postgres]\nconninfo = "${this.conninfo}"\n`;
    }
    toml += `[[listener]]\ntransport = "ws"\naddress = "127.0.0.1"\nport = ${this.ports.ws}\n`;
    if (this.wantWss) {
      toml += `[[listener]]\ntransport = "wss"\naddress = "127.0.0.1"\nport = ${this.ports.wss}\ncert = "${this.certs.cert}"\nkey = "${this.certs.key}"\n`;
    }
    const conf = path.join(this.dir, 'ringbusd.toml');
    fs.writeFileSync(conf, toml);
    const log = fs.openSync(this.logPath, 'a');
    const env = { ...process.env };
    env.ASAN_OPTIONS ??= 'abort_on_error=1:detect_leaks=1';
    env.UBSAN_OPTIONS ??= 'halt_on_error=1:print_stacktrace=1';
    this.logStart = fs.existsSync(this.logPath) ? fs.statSync(this.logPath).size : 0;
    this.proc = spawn(RINGBUSD, ['--config', conf], { stdio: ['ignore', log, log], env });
    fs.closeSync(log);
    const proc = this.proc;
    running.add(proc);
    proc.once('exit', () => running.delete(proc));
    // A leftover daemon must not keep the event loop (and the test file) alive.
    proc.unref();
    this.exit = new Promise((resolve) => this.proc.once('exit', (code, signal) => resolve({ code, signal })));
    const deadline = Date.now() + READY_WAIT_MS;
    while (Date.now() < deadline) {
      if (this.proc.exitCode !== null) throw new Error(`ringbusd exited early:\n${this.log()}`);
      if (this.log().slice(this.logStart).includes('ready:')) return this;
      await sleep(20);
    }
    throw new Error(`ringbusd not ready in ${READY_WAIT_MS} ms:\n${this.log()}`);
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.ports.ws}/ringbus`;
  }
  get wssUrl() {
    return `wss://localhost:${this.ports.wss}/ringbus`;
  }
  /** Options for the `ws` package that trust the test CA. */
  get wsOptions() {
    return { ca: fs.readFileSync(this.certs.ca) };
  }

  log() {
    try {
      return fs.readFileSync(this.logPath, 'utf8');
    } catch {
      return '';
    }
  }

  badLogLines() {
    return this.log().split('\n').filter((l) => BAD_LOG_MARKERS.some((m) => l.includes(m)));
  }

  /** SIGTERM and a bounded wait; throws when it does not exit 0 or its log is bad. */
  async stop() {
    if (!this.proc) return;
    const p = this.proc;
    this.proc = null;
    if (p.exitCode === null && p.signalCode === null) p.kill('SIGTERM');
    const t = setTimeout(() => p.kill('SIGKILL'), STOP_WAIT_MS);
    const { code, signal } = await this.exit;
    clearTimeout(t);
    const bad = this.badLogLines();
    if (bad.length) throw new Error(`daemon log has sanitizer/assert lines: ${bad.join('\n')}`);
    if (code !== 0) throw new Error(`ringbusd exited ${code ?? signal}:\n${this.log().slice(-4000)}`);
  }

  /** SIGSTOP, and waits until every thread of the daemon is stopped. */
  async pause() {
    this.proc.kill('SIGSTOP');
    const pid = this.proc.pid;
    await waitFor(() => {
      const tasks = fs.readdirSync(`/proc/${pid}/task`);
      return tasks.every((t) => {
        const stat = fs.readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8');
        return stat.slice(stat.lastIndexOf(')') + 2).startsWith('T');
      });
    }, 5000, `ringbusd ${pid} to stop`);
  }

  resume() {
    this.proc.kill('SIGCONT');
  }

  async kill9() {
    const p = this.proc;
    this.proc = null;
    p.kill('SIGKILL');
    // The child is unref'd: a timer keeps the event loop up until it is reaped.
    const t = setTimeout(() => {}, STOP_WAIT_MS);
    await this.exit;
    clearTimeout(t);
  }
}

/** Waits until cond() holds (polling), or throws after timeoutMs. */
export async function waitFor(cond, timeoutMs = 20000, what = 'condition') {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(10);
  }
}

const PG_BIN = '/usr/lib/postgresql/15/bin';

function asPostgres(cmd, args) {
  return execFileSync('runuser', ['-u', 'postgres', '--', cmd, ...args], { stdio: 'pipe', timeout: 60000 });
}

/**
 * A throwaway Postgres 15 cluster (as tests/integration/pg.py makes it):
 * initdb as the postgres user into a temp dir, loopback TCP on a free
 * port, fsync off (tests kill the daemon, never the machine).
 */
export class PgCluster {
  async start() {
    this.dir = tmpDir('rbjspg-');
    fs.chmodSync(this.dir, 0o755);
    this.data = path.join(this.dir, 'data');
    this.sock = path.join(this.dir, 'sock');
    fs.mkdirSync(this.sock);
    execFileSync('chown', ['-R', 'postgres:postgres', this.dir]);
    this.port = await freePort();
    asPostgres(`${PG_BIN}/initdb`, ['-D', this.data, '-A', 'trust', '-U', 'postgres', '-E', 'UTF8', '--no-sync', '--no-instructions']);
    fs.appendFileSync(
      path.join(this.data, 'postgresql.conf'),
      `listen_addresses = '127.0.0.1'\nport = ${this.port}\nunix_socket_directories = '${this.sock}'\n` +
        'fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 100\n',
    );
    asPostgres(`${PG_BIN}/pg_ctl`, ['-D', this.data, '-l', path.join(this.dir, 'postgres.log'), '-w', '-t', '30', 'start']);
    return this;
  }
  conninfo() {
    return `host=127.0.0.1 port=${this.port} user=postgres dbname=postgres`;
  }
  stop() {
    try {
      asPostgres(`${PG_BIN}/pg_ctl`, ['-D', this.data, '-m', 'immediate', '-w', 'stop']);
    } finally {
      fs.rmSync(this.dir, { recursive: true, force: true });
    }
  }
}
