#!/usr/bin/env node
// `npm run generate`: TypeScript code for segsrv.v1 from the repository's one proto/ tree
// (../../buf.yaml, module path proto) into src/gen/ with ts-proto, compiled by buf.
//
// buf comes from the npm package of this platform (@bufbuild/buf-linux-x64 or
// -linux-aarch64, pinned in optionalDependencies), else $BUF, else `buf` on PATH. (Not the
// @bufbuild/buf wrapper: it lists every platform's package, and a registry mirror that serves
// only Linux ones leaves package-lock.json incomplete, which `npm ci` refuses.)
"use strict";
const { execFileSync } = require("node:child_process");
const path = require("node:path");

const root = path.resolve(__dirname, "..");
const platformPackages = {
  "linux-x64": "@bufbuild/buf-linux-x64",
  "linux-arm64": "@bufbuild/buf-linux-aarch64",
};

function findBuf() {
  if (process.env.BUF) return process.env.BUF;
  const pkg = platformPackages[`${process.platform}-${process.arch}`];
  if (pkg) {
    try {
      return path.join(path.dirname(require.resolve(`${pkg}/package.json`, { paths: [root] })), "bin", "buf");
    } catch {
      // not installed (optional): fall through
    }
  }
  return "buf";
}

const buf = findBuf();
try {
  execFileSync(buf, ["generate", path.join("..", ".."), "--template", "buf.gen.yaml"], {
    cwd: root,
    stdio: "inherit",
  });
} catch (e) {
  if (e.code === "ENOENT") {
    console.error(`clients/node: no buf binary (tried ${buf}): set BUF or put buf on PATH`);
  }
  process.exit(typeof e.status === "number" ? e.status : 1);
}
