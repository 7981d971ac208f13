#!/usr/bin/env bash
# Bundles the CLI's own modules into dist/src/cli/main.js and a few chunks beside it (one per
# command, loaded when that command runs), over the one-module-per-file output of tsc: a
# `packager upload` of an unchanged tree spends a good part of its time loading modules, and
# one file loads in a fraction of the time of sixty. The small dependencies every command loads
# (commander, picomatch, p-limit) are bundled too; the others stay in node_modules, loaded by the
# chunks of the commands that use them (pino's transports, for one, must stay files of their own).
# The chunks sit in the same folder as main.js, so every path found from import.meta.url
# (the client runtime, the example client, the hashing thread) resolves as it does for tsc's files.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -f dist/src/cli/bundle-*
npx esbuild src/cli/main.ts src/fetch/hash-worker.ts \
  --bundle --splitting \
  --external:@aws-sdk/* --external:@smithy/* --external:etag --external:fastify --external:fresh \
  --external:pino --external:prom-client --external:range-parser --external:tar-stream \
  --platform=node --target=node20 --format=esm --log-level=warning \
  --banner:js="import { createRequire as __autotestRequire } from 'node:module'; const require = __autotestRequire(import.meta.url);" \
  --sourcemap --outdir=dist/src/cli --entry-names='[name]' --chunk-names='bundle-[hash]'
# The package's bin: executable of its own, so `npx autotest` runs it even where npm does not
# set the mode itself (a clone made again at a path npm has run it from before).
chmod +x dist/src/cli/main.js
