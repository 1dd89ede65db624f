// The package README's example, run as written (only the URL points at the
// test daemon) through the package's own name, so the exports map is
// checked too.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { Daemon } from './harness.js';

const PKG = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

test('the README example is ten lines and runs against the daemon', async () => {
  const readme = fs.readFileSync(path.join(PKG, 'README.md'), 'utf8');
  const code = readme.match(/```js\n([\s\S]*?)```/)[1];
  assert.equal(code.trimEnd().split('\n').length, 10, code);
  assert.match(code, /from '@ringbus\/client'/);
  const d = await new Daemon({ wss: false }).start();
  // Inside the package directory, so that '@ringbus/client' resolves to itself.
  const file = path.join(PKG, 'test', `.readme-example-${process.pid}.mjs`);
  try {
    fs.writeFileSync(file, code.replace('ws://localhost:7402/ringbus', d.wsUrl));
    const { stdout } = await promisify(execFile)(process.execPath, [file], { timeout: 30000 });
    assert.deepEqual(stdout.trim().split('\n'), ['stored as seq 1', '1 hello']);
  } finally {
    fs.rmSync(file, { force: true });
    await d.stop();
  }
});
