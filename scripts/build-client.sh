#!/usr/bin/env bash
# Bundles the client runtime (autotest client install|run) with its dependencies into
# dist/client-runtime/, which the packager puts into the client package under bin/: a test
# machine with Node.js and nothing else runs jobs from the unpacked package.
set -euo pipefail
cd "$(dirname "$0")/.."
# The client fetches from S3 with signed GETs (@smithy/signature-v4 and the credential chain,
# bundled); the full S3 client and multipart uploads serve the packager and the server only.
npx esbuild src/cli/client-main.ts src/fetch/hash-worker.ts \
  --bundle --minify --keep-names --platform=node --target=node20 --format=esm --log-level=warning \
  --external:@aws-sdk/client-s3 --external:@aws-sdk/lib-storage \
  --outdir=dist/client-runtime --entry-names='[name]' --out-extension:.js=.mjs \
  --banner:js="import { createRequire as __autotestRequire } from 'node:module'; const require = __autotestRequire(import.meta.url);"
mv dist/client-runtime/client-main.mjs dist/client-runtime/autotest-client.mjs
