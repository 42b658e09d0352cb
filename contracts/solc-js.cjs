#!/usr/bin/env node
// A stand-in for the native `solc` binary, for forge: no native solc is installable offline,
// but npm's solc-js (wasm) is. Answers `--version` like solc and compiles `--standard-json`
// input from stdin to stdout. Imports are resolved relative to the working directory.
'use strict';
const fs = require('fs');
const path = require('path');
const solc = require('solc');

const args = process.argv.slice(2);
if (args.includes('--version')) {
  process.stdout.write(`solc, the solidity compiler commandline interface\nVersion: ${solc.version()}\n`);
  process.exit(0);
}
if (!args.includes('--standard-json')) {
  process.stderr.write('solc-js wrapper: only --version and --standard-json are supported\n');
  process.exit(2);
}
const input = fs.readFileSync(0, 'utf8');
function findImports(p) {
  for (const base of ['.', 'node_modules']) {
    const full = path.resolve(base, p);
    if (fs.existsSync(full)) return { contents: fs.readFileSync(full, 'utf8') };
  }
  return { error: `file not found: ${p}` };
}
process.stdout.write(solc.compile(input, { import: findImports }));
