#!/usr/bin/env bash
# The TypeScript SDK's gate (clients/typescript): install from the lock file, check that the
# generated REST types match the hub's OpenAPI document, compile, and run the SDK's tests
# against the real binary. Node and npm are installed from Debian when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mkww-mcp/target}"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  apt-get update -q && apt-get install -y -q nodejs npm
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
  echo "the SDK needs Node 20 or newer (found $(node --version))" >&2
  exit 1
fi

# The same build as the test suite's (`cargo nextest` runs `cargo test --no-run --workspace`), so
# after it this builds nothing; `cargo build --bin` alone would unify features differently and
# rebuild most dependencies.
echo "== cargo test --workspace --no-run (the binary the SDK is generated from and tested against: target/debug/mkww-mcp)"
cargo test --workspace --no-run --quiet
export MKWW_MCP_BIN="$CARGO_TARGET_DIR/debug/mkww-mcp"

cd clients/typescript
echo "== npm ci"
npm ci --no-audit --no-fund
echo "== SDK: generated types match mkww-mcp openapi"
npm run --silent generate
if ! git diff --exit-code -- src/generated/openapi.ts; then
  echo "src/generated/openapi.ts is out of date: run \`npm run generate\` in clients/typescript and commit it" >&2
  exit 1
fi
echo "== SDK: tsc"
npm run --silent build
echo "== SDK: tests against the real binary"
npm test
