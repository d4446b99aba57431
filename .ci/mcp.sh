#!/usr/bin/env bash
# The MCP end-to-end test (crates/mkww-mcp/tests/mcp_python.rs) runs the official Python SDK,
# `mcp` on PyPI; under CI it fails without it. Installs it when missing.
set -euo pipefail
python="${MCP_TEST_PYTHON:-python3}"
if ! "$python" -c "import mcp.client.session" >/dev/null 2>&1; then
  echo "installing Python's mcp (the MCP test's client)"
  "$python" -m pip install --quiet "mcp>=1.9,<3"
fi
