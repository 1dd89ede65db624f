// The chat demo (examples/chat) in headless Chromium against the real
// daemon, driven over the DevTools protocol: two tabs, a message typed in
// one appears in the other; a tab that leaves and comes back shows the
// history (from localStorage) and what it missed (from its saved cursor),
// each message once and in order; a screenshot is saved next to the build
// (chat.png in RINGBUS_BUILD).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import WebSocket from 'ws';
import { Daemon, ROOT, tmpDir, waitFor, sleep } from './harness.js';

const BUILD = path.resolve(ROOT, process.env.RINGBUS_BUILD ?? 'build/release');
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css' };

/** Serves examples/ and client/js/src/ of the repository, nothing else. */
function staticServer() {
  const server = http.createServer((req, res) => {
    const p = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    const file = path.join(ROOT, path.normalize(p));
    const allowed = [path.join(ROOT, 'examples') + path.sep, path.join(ROOT, 'client/js/src') + path.sep];
    if (!allowed.some((a) => file.startsWith(a)) || !fs.existsSync(file)) {
      res.writeHead(404).end('not found');
      return;
    }
    res.writeHead(200, { 'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream' });
    res.end(fs.readFileSync(file));
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

/** One DevTools connection to a page. */
class Page {
  constructor(wsUrl) {
    this.ws = new WebSocket(wsUrl, { perMessageDeflate: false });
    this.id = 0;
    this.waiting = new Map();
    this.ws.on('message', (data) => {
      const msg = JSON.parse(data);
      const w = this.waiting.get(msg.id);
      if (!w) return;
      this.waiting.delete(msg.id);
      if (msg.error) w.reject(new Error(`${w.method}: ${msg.error.message}`));
      else w.resolve(msg.result);
    });
    this.opened = new Promise((r, j) => {
      this.ws.once('open', r);
      this.ws.once('error', j);
    });
  }
  async send(method, params = {}) {
    await this.opened;
    const id = ++this.id;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject, method });
      this.ws.send(JSON.stringify({ id, method, params }));
    });
  }
  async eval(expr) {
    const r = await this.send('Runtime.evaluate', { expression: expr, returnByValue: true, awaitPromise: true });
    if (r.exceptionDetails) throw new Error(`${expr}: ${r.exceptionDetails.text}`);
    return r.result.value;
  }
  lines() {
    return this.eval(`[...document.querySelectorAll('#log li')].map((li) => li.textContent)`);
  }
  async ready() {
    await waitFor(async () => (await this.eval(`document.body?.dataset.ready === 'true'`).catch(() => false)) === true, 30000, 'the chat page to be ready');
  }
  async type(text) {
    await this.eval(`document.getElementById('text').focus()`);
    await this.send('Input.insertText', { text });
    for (const type of ['keyDown', 'keyUp']) {
      await this.send('Input.dispatchKeyEvent', { type, key: 'Enter', code: 'Enter', windowsVirtualKeyCode: 13, text: type === 'keyDown' ? '\r' : undefined });
    }
  }
  close() {
    this.ws.close();
  }
}

test('two Chromium tabs chat through the daemon; history survives leaving and coming back', async () => {
  const d = await new Daemon({ wss: false }).start();
  const server = await staticServer();
  const profile = tmpDir('rbjs-chromium-');
  const browser = spawn(
    'chromium',
    ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--remote-debugging-port=0', `--user-data-dir=${profile}`, 'about:blank'],
    { stdio: ['ignore', 'ignore', 'pipe'], detached: true },
  );
  let stderr = '';
  browser.stderr.on('data', (b) => (stderr = (stderr + b).slice(-4000)));
  const pages = [];
  try {
    const portFile = path.join(profile, 'DevToolsActivePort');
    await waitFor(() => fs.existsSync(portFile) && fs.readFileSync(portFile, 'utf8').includes('\n'), 60000, 'Chromium to listen');
    const devtools = Number(fs.readFileSync(portFile, 'utf8').split('\n')[0]);
    const room = `r${process.pid}`;
    const chatUrl = (who) =>
      `http://127.0.0.1:${server.address().port}/examples/chat/index.html?url=${encodeURIComponent(d.wsUrl)}&room=${room}&name=${who}`;
    const open = async (who) => {
      const r = await fetch(`http://127.0.0.1:${devtools}/json/new?${encodeURIComponent(chatUrl(who))}`, { method: 'PUT' });
      const page = new Page((await r.json()).webSocketDebuggerUrl);
      pages.push(page);
      await page.ready();
      return page;
    };
    const alice = await open('alice');
    const bob = await open('bob');
    await alice.type('hello from alice');
    await waitFor(async () => (await bob.lines()).includes('#1alicehello from alice'), 20000, 'bob to see alice');
    await bob.type('hi alice');
    await waitFor(async () => (await alice.lines()).includes('#2bobhi alice'), 20000, 'alice to see bob');
    // Bob leaves; alice writes meanwhile; bob comes back (a reload of the page).
    await bob.send('Page.navigate', { url: 'about:blank' });
    await sleep(200);
    await alice.type('while you were away');
    await waitFor(async () => (await alice.lines()).length === 3, 20000, 'alice to see her third');
    await bob.send('Page.navigate', { url: chatUrl('bob') });
    await sleep(200);
    await bob.ready();
    await waitFor(async () => (await bob.lines()).length >= 3, 20000, 'bob to catch up');
    await sleep(300);
    assert.deepEqual(await bob.lines(), ['#1alicehello from alice', '#2bobhi alice', '#3alicewhile you were away']);
    const stored = JSON.parse(await bob.eval(`localStorage.getItem('ringbus.chat.${room}')`));
    assert.equal(stored.seq, 3);
    const shot = await bob.send('Page.captureScreenshot', { format: 'png' });
    const png = Buffer.from(shot.data, 'base64');
    assert.deepEqual([...png.subarray(1, 4)], [0x50, 0x4e, 0x47]);
    fs.mkdirSync(BUILD, { recursive: true });
    fs.writeFileSync(path.join(BUILD, 'chat.png'), png);
  } catch (e) {
    e.message += `\nchromium: ${stderr}`;
    throw e;
  } finally {
    for (const p of pages) p.close();
    try {
      process.kill(-browser.pid, 'SIGKILL');
    } catch {
      // already gone
    }
    await new Promise((r) => (browser.exitCode !== null ? r() : browser.once('exit', r)));
    server.close();
    fs.rmSync(profile, { recursive: true, force: true });
    await d.stop();
  }
});
