#!/usr/bin/env bash
# The web console in a real browser: Debian's Chromium and playwright-core (installed when
# missing), the binary built by cargo into the same target directory as `.ci/run`, then the
# end-to-end tests of clients/console-tests. Screenshots go to a folder the tests print.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mkww-mcp/target}"
export CARGO_TERM_COLOR=never

if [ ! -x /usr/bin/chromium ]; then
  echo "== installing chromium"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi

cd clients/console-tests
if [ ! -d node_modules/playwright-core ]; then
  echo "== npm ci (console tests)"
  npm ci --no-audit --no-fund
fi
cd ../..

# The same build as the test suite's (`cargo nextest` runs `cargo test --no-run --workspace`), so
# after it this builds nothing; `cargo build --bin` alone would unify features differently and
# rebuild most dependencies.
echo "== cargo test --workspace --no-run (for the console tests: target/debug/mkww-mcp)"
cargo test --workspace --no-run --quiet

echo "== console tests in Chromium"
cd clients/console-tests
MKWW_MCP_BIN="$CARGO_TARGET_DIR/debug/mkww-mcp" npm test
