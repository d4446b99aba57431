//! The MCP endpoint with a client the project did not write: the official Python SDK (`mcp` on
//! PyPI) runs `tests/mcp_python/client.py` against the real binary. Without the package the test
//! skips, except under `CI`, where it fails (`.ci/mcp.sh` installs it).

mod support;

use serde_json::Value;
use std::process::Command;
use support::*;

fn python() -> String {
    std::env::var("MCP_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Whether Python's `mcp` package can be imported; in CI its absence is a failure.
fn sdk_installed() -> bool {
    let found = Command::new(python())
        .args(["-c", "import mcp.client.session"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
            panic!("Python's `mcp` package is required in CI (.ci/mcp.sh installs it)");
        }
        eprintln!("skipping: Python's `mcp` package is not installed (pip install mcp)");
    }
    found
}

#[tokio::test]
async fn the_official_python_sdk_lists_tools_runs_a_task_and_is_refused_without_credentials() {
    if !sdk_installed() {
        return;
    }
    let server = Server::start(&[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp_python/client.py");
    let url = server.url("/mcp");
    let token = token("user", "python-sdk");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script)
            .env("MKWW_MCP_URL", url)
            .env("MKWW_MCP_TOKEN", token)
            .output()
            .expect("run python")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Python client failed:\n{stdout}\n{stderr}"
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no JSON summary ({e}):\n{stdout}\n{stderr}"));
    assert_eq!(seen["status"], "succeeded", "{seen}");
    assert_eq!(
        seen["result"],
        serde_json::json!({"from": "python"}),
        "{seen}"
    );
    assert_eq!(seen["missing_code"], "task_not_found", "{seen}");
    assert_eq!(seen["unauthenticated"]["status"], 401, "{seen}");
    // The task is the same one REST shows, created by the token's subject.
    let (status, task) = get(
        &server,
        &format!("/v1/tasks/{}", seen["task_id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(task["created_by"], "python-sdk");
    assert_eq!(task["status"], "succeeded");
}
