// `npm pack` holds exactly the library, its types, README, license and
// package.json; the types name every runtime export and nothing else.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import * as lib from '../src/index.js';

const PKG = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

test('npm pack contains exactly the library, types, README and license', () => {
  const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: PKG, encoding: 'utf8' });
  const [info] = JSON.parse(out);
  assert.equal(info.name, '@ringbus/client');
  const files = info.files.map((f) => f.path).sort();
  const src = fs.readdirSync(path.join(PKG, 'src')).map((f) => `src/${f}`);
  assert.deepEqual(files, ['LICENSE', 'README.md', 'index.d.ts', 'package.json', ...src].sort());
  const pkg = JSON.parse(fs.readFileSync(path.join(PKG, 'package.json'), 'utf8'));
  assert.equal(pkg.dependencies, undefined, 'no runtime dependencies');
  assert.equal(pkg.type, 'module');
  assert.equal(pkg.peerDependenciesMeta.ws.optional, true);
});

test('index.d.ts declares every runtime export and nothing more', () => {
  const dts = fs.readFileSync(path.join(PKG, 'index.d.ts'), 'utf8');
  const declared = [...dts.matchAll(/^export declare (?:const|function|class) (\w+)/gm)].map((m) => m[1]).sort();
  assert.deepEqual(declared, Object.keys(lib).sort());
});
