#!/usr/bin/env node
// Copies ABI + bytecode of the deployable contracts from forge's out/ into artifacts/, the
// committed files the Rust bindings (`sol!`) compile against, so `cargo build` needs no node.
'use strict';
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '..');
const names = ['BDCToken', 'DatasetRegistry', 'FeedRegistry', 'TransferEscrow'];
fs.mkdirSync(path.join(root, 'artifacts'), { recursive: true });
for (const name of names) {
  const src = path.join(root, 'out', `${name}.sol`, `${name}.json`);
  const a = JSON.parse(fs.readFileSync(src, 'utf8'));
  const slim = {
    contractName: name,
    abi: a.abi,
    bytecode: { object: a.bytecode.object },
    deployedBytecode: { object: a.deployedBytecode.object },
  };
  fs.writeFileSync(path.join(root, 'artifacts', `${name}.json`), JSON.stringify(slim, null, 2) + '\n');
}
console.log(`exported ${names.length} artifacts`);
