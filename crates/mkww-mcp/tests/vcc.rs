//! VCC through the real binary: projects registered under the configured roots, a VPM
//! repository served by a local HTTP server with real zips and SHA-256s, package tasks that
//! change the project (and are announced by the folder watcher), and build/deploy commands whose
//! output streams over the WebSocket, which cancellation and timeouts kill, process tree and all.

mod support;

use axum::Router;
use axum::routing::get as route_get;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;

fn package_zip(name: &str, version: &str) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    writer.start_file("package.json", options).unwrap();
    writer
        .write_all(
            json!({"name": name, "version": version})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    writer.start_file("Runtime/Tool.cs", options).unwrap();
    writer.write_all(b"// a tool\n").unwrap();
    writer.finish().unwrap().into_inner()
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A VPM repository: `com.example.tool` 1.0.0 (needs `com.example.core`), `com.example.core`
/// 1.2.0, and `com.example.broken` whose listed hash is wrong.
async fn repository() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let tool = package_zip("com.example.tool", "1.0.0");
    let core = package_zip("com.example.core", "1.2.0");
    let broken = package_zip("com.example.broken", "1.0.0");
    let version = |name: &str, v: &str, zip: &[u8], deps: Value| {
        json!({"versions": {v: {
            "name": name, "version": v, "displayName": name, "unity": "2022.3",
            "url": format!("{base}/{name}-{v}.zip"), "zipSHA256": hex_sha256(zip),
            "vpmDependencies": deps
        }}})
    };
    let mut broken_entry = version("com.example.broken", "1.0.0", &broken, json!({}));
    broken_entry["versions"]["1.0.0"]["zipSHA256"] = json!("00".repeat(32));
    let listing = json!({
        "name": "Example", "id": "com.example.repo", "author": "tests",
        "url": format!("{base}/index.json"),
        "packages": {
            "com.example.tool": version("com.example.tool", "1.0.0", &tool, json!({"com.example.core": "^1.0.0"})),
            "com.example.core": version("com.example.core", "1.2.0", &core, json!({})),
            "com.example.broken": broken_entry,
        }
    });
    let app = Router::new()
        .route(
            "/index.json",
            route_get(move || async move { axum::Json(listing) }),
        )
        .route(
            "/com.example.tool-1.0.0.zip",
            route_get(move || async move { tool }),
        )
        .route(
            "/com.example.core-1.2.0.zip",
            route_get(move || async move { core }),
        )
        .route(
            "/com.example.broken-1.0.0.zip",
            route_get(move || async move { broken }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("{base}/index.json")
}

/// A world project as VCC creates it.
fn world_project(root: &Path, name: &str) -> PathBuf {
    let path = root.join(name);
    std::fs::create_dir_all(path.join("ProjectSettings")).unwrap();
    std::fs::create_dir_all(path.join("Packages/com.vrchat.worlds")).unwrap();
    std::fs::write(
        path.join("ProjectSettings/ProjectVersion.txt"),
        "m_EditorVersion: 2022.3.22f1\nm_EditorVersionWithRevision: 2022.3.22f1 (887be4894c44)\n",
    )
    .unwrap();
    std::fs::write(
        path.join("Packages/vpm-manifest.json"),
        json!({
            "dependencies": {"com.vrchat.worlds": {"version": "3.5.0"}},
            "locked": {
                "com.vrchat.worlds": {"version": "3.5.0", "dependencies": {"com.vrchat.base": "3.5.0"}},
                "com.vrchat.base": {"version": "3.5.0"}
            }
        })
        .to_string(),
    )
    .unwrap();
    path
}

async fn connect_as(server: &Server, role: &str, subject: &str) -> Socket {
    connect(server, Some(&token(role, subject))).await
}

fn manifest(project: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(project.join("Packages/vpm-manifest.json")).unwrap())
        .unwrap()
}

struct Setup {
    server: Server,
    root: PathBuf,
    project: PathBuf,
    id: String,
}

/// A server with a project root, build and deploy commands, and one registered world project.
async fn setup() -> Setup {
    let root = temp_dir().join("projects");
    let project = world_project(&root, "Pug World");
    let server = Server::start(&[
        ("MCP_VCC_PROJECT_ROOTS", root.display().to_string()),
        (
            "MCP_VCC_BUILD_COMMAND",
            r#"["sh", "-c", "echo building {project_name}; echo careful >&2; echo done", "build"]"#.into(),
        ),
        (
            "MCP_VCC_DEPLOY_COMMAND",
            r#"["sh", "-c", "echo deploying; sleep 300 & echo $! > ../deploy-{task_id}.pid; wait", "deploy"]"#.into(),
        ),
        ("MCP_VCC_WATCH_DEBOUNCE_MS", "200".into()),
        // The test repository is a loopback server.
        ("MCP_OUTBOUND_ALLOW", r#"["127.0.0.1"]"#.into()),
    ]);
    let (status, body) = call(
        &client_as("operator", "ops"),
        "POST",
        server.url("/v1/vcc/projects"),
        Some(json!({"path": project.display().to_string()})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    Setup {
        server,
        root,
        project,
        id,
    }
}

#[tokio::test]
async fn registers_projects_under_the_roots_only_and_shows_them() {
    let Setup {
        server,
        root,
        project,
        id,
    } = setup().await;
    let operator = client_as("operator", "ops");
    let (status, body) = call(
        &client_as("user", "u"),
        "GET",
        server.url(&format!("/v1/vcc/projects/{id}")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let canonical = std::fs::canonicalize(&project).unwrap();
    assert_eq!(body["name"], "Pug World");
    assert_eq!(body["path"], canonical.display().to_string());
    assert_eq!(body["type"], "world");
    assert_eq!(body["unity_version"], "2022.3.22f1");
    assert_eq!(
        body["packages"],
        json!([
            {"name": "com.vrchat.base", "version": null, "locked_version": "3.5.0"},
            {"name": "com.vrchat.worlds", "version": "3.5.0", "locked_version": "3.5.0"},
        ])
    );
    let (_, list) = call(&operator, "GET", server.url("/v1/vcc/projects"), None).await;
    assert_eq!(list["projects"].as_array().map(Vec::len), Some(1), "{list}");

    // Registering again is idempotent; a user may not register at all.
    let register = |path: String| json!({"path": path});
    let (status, again) = call(
        &operator,
        "POST",
        server.url("/v1/vcc/projects"),
        Some(register(project.display().to_string())),
    )
    .await;
    assert_eq!((status, again["id"].as_str()), (201, Some(id.as_str())));
    let (status, _) = call(
        &client_as("user", "u"),
        "POST",
        server.url("/v1/vcc/projects"),
        Some(register(project.display().to_string())),
    )
    .await;
    assert_eq!(status, 403);

    // Outside the roots: directly, through `..`, and through a symlink.
    let outside = world_project(&temp_dir(), "Elsewhere");
    let sneaky = format!("{}/../{}", root.display(), "../..");
    std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
    for path in [
        outside.display().to_string(),
        sneaky,
        root.join("link").display().to_string(),
    ] {
        let (status, body) = call(
            &operator,
            "POST",
            server.url("/v1/vcc/projects"),
            Some(register(path.clone())),
        )
        .await;
        assert_eq!(status, 422, "{path}: {body}");
        assert_eq!(
            body["error"]["code"], "path_outside_roots",
            "{path}: {body}"
        );
        assert!(body["error"]["request_id"].is_string());
    }
    let (status, body) = call(
        &operator,
        "POST",
        server.url("/v1/vcc/projects"),
        Some(register(root.join("nope").display().to_string())),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("path_not_found")),
        "{body}"
    );
    // Outside the roots, whether a path exists is never told, and NUL is refused as input.
    for (path, code) in [
        (
            outside.join("nope").display().to_string(),
            "path_outside_roots",
        ),
        (format!("{}/bad\u{0}name", root.display()), "path_invalid"),
    ] {
        let (status, body) = call(
            &operator,
            "POST",
            server.url("/v1/vcc/projects"),
            Some(register(path.clone())),
        )
        .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (422, Some(code)),
            "{path:?}: {body}"
        );
    }
    let not_unity = root.join("notes");
    std::fs::create_dir_all(&not_unity).unwrap();
    let (status, body) = call(
        &operator,
        "POST",
        server.url("/v1/vcc/projects"),
        Some(register(not_unity.display().to_string())),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("not_a_unity_project")),
        "{body}"
    );
    let corrupt = world_project(&root, "Corrupt");
    std::fs::write(
        corrupt.join("Packages/vpm-manifest.json"),
        "{\"dependencies\": [",
    )
    .unwrap();
    let (status, body) = call(
        &operator,
        "POST",
        server.url("/v1/vcc/projects"),
        Some(register(corrupt.display().to_string())),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("manifest_invalid")),
        "{body}"
    );
    let (status, body) = call(
        &operator,
        "GET",
        server.url("/v1/vcc/projects/0123456789abcdef"),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("project_not_found"))
    );

    // Operators see the service among the integrations, with its health.
    let (status, integration) = get(&server, "/v1/integrations/vcc").await;
    assert_eq!(status, 200, "{integration}");
    assert_eq!(integration["health"]["state"], "healthy", "{integration}");
    assert_eq!(
        integration["settings"]["project_roots"],
        json!([root.display().to_string()])
    );
    assert_eq!(integration["settings"]["build_command"], true);

    // Registrations survive a restart (kept in the data directory); projects the
    // configuration lists are shown too, wherever they are.
    let data_dir = server.data_dir.clone();
    drop(server);
    let server = Server::start_in(
        data_dir,
        &[
            ("MCP_VCC_PROJECT_ROOTS", root.display().to_string()),
            (
                "MCP_VCC_PROJECTS",
                format!("[{:?}]", outside.display().to_string()),
            ),
        ],
    );
    let (status, body) = call(
        &operator,
        "GET",
        server.url(&format!("/v1/vcc/projects/{id}")),
        None,
    )
    .await;
    assert_eq!(
        (status, body["name"].as_str()),
        (200, Some("Pug World")),
        "{body}"
    );
    let (status, _) = call(
        &operator,
        "DELETE",
        server.url(&format!("/v1/vcc/projects/{id}")),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (_, list) = call(&operator, "GET", server.url("/v1/vcc/projects"), None).await;
    let names: Vec<&str> = list["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Elsewhere"], "{list}");
    assert!(
        project.join("Packages/vpm-manifest.json").exists(),
        "files are untouched"
    );
}

#[tokio::test]
async fn package_tasks_install_verified_zips_and_the_watcher_announces_them() {
    let Setup {
        server,
        project,
        id,
        ..
    } = setup().await;
    let operator = client_as("operator", "ops");
    let url = repository().await;
    let (status, repo) = call(
        &operator,
        "POST",
        server.url("/v1/vcc/repositories"),
        Some(json!({"url": url})),
    )
    .await;
    assert_eq!(status, 201, "{repo}");
    assert_eq!(repo["package_count"], 3);
    let (status, refreshed) = call(
        &operator,
        "POST",
        server.url("/v1/vcc/repositories/refresh"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{refreshed}");
    assert_eq!(
        refreshed["repositories"][0]["package_count"], 3,
        "{refreshed}"
    );
    assert_eq!(
        refreshed["repositories"][0]["error"],
        Value::Null,
        "{refreshed}"
    );
    let (status, body) = call(
        &operator,
        "POST",
        server.url("/v1/vcc/repositories"),
        Some(json!({"url": "http://127.0.0.1:1/index.json"})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (502, Some("network_error")),
        "{body}"
    );

    let mut socket = connect_as(&server, "operator", "ops").await;
    send(
        &mut socket,
        json!({"id": 1, "op": "subscribe", "channel": "vcc.projects"}),
    )
    .await;
    assert_eq!(next(&mut socket).await["ok"], true);

    let (status, task) = call(
        &operator,
        "POST",
        server.url("/v1/tasks"),
        Some(json!({"type": "vcc.package.add", "payload": {"project": id, "package": "com.example.tool"}})),
    )
    .await;
    assert_eq!(status, 201, "{task}");
    let done = wait_for(&server, task["id"].as_str().unwrap(), is_final).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let changed: Vec<&str> = done["result"]["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(changed, ["com.example.core", "com.example.tool"], "{done}");
    assert!(
        project
            .join("Packages/com.example.tool/Runtime/Tool.cs")
            .exists()
    );
    let written = manifest(&project);
    assert_eq!(
        written["dependencies"]["com.example.tool"]["version"], "1.0.0",
        "{written}"
    );
    assert_eq!(
        written["locked"]["com.example.core"]["version"], "1.2.0",
        "{written}"
    );
    assert_eq!(
        written["locked"]["com.vrchat.worlds"]["version"], "3.5.0",
        "kept"
    );

    // The watcher saw the new packages.
    let mut seen = Vec::new();
    while !(seen.contains(&"com.example.tool".to_owned())
        && seen.contains(&"com.example.core".to_owned()))
    {
        let event = next(&mut socket).await;
        assert_eq!(event["event"]["type"], "vcc.project.changed", "{event}");
        assert_eq!(event["event"]["data"]["project_id"], id.as_str());
        for package in event["event"]["data"]["packages"].as_array().unwrap() {
            seen.push(package.as_str().unwrap().to_owned());
        }
    }

    // A zip whose hash does not match changes nothing.
    let before = std::fs::read(project.join("Packages/vpm-manifest.json")).unwrap();
    let (_, task) = call(
        &operator,
        "POST",
        server.url("/v1/tasks"),
        Some(json!({"type": "vcc.package.add", "payload": {"project": id, "package": "com.example.broken"}})),
    )
    .await;
    let done = wait_for(&server, task["id"].as_str().unwrap(), is_final).await;
    assert_eq!(done["status"], "dead", "{done}");
    assert_eq!(done["error"]["details"]["code"], "hash_mismatch", "{done}");
    assert_eq!(
        std::fs::read(project.join("Packages/vpm-manifest.json")).unwrap(),
        before
    );
    assert!(!project.join("Packages/com.example.broken").exists());

    // Bad payloads and unknown packages are refused clearly.
    let (status, body) = call(
        &operator,
        "POST",
        server.url("/v1/tasks"),
        Some(
            json!({"type": "vcc.package.add", "payload": {"project": id, "package": "../escape"}}),
        ),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_payload")),
        "{body}"
    );
    let (_, task) = call(
        &operator,
        "POST",
        server.url("/v1/tasks"),
        Some(json!({"type": "vcc.package.add", "payload": {"project": id, "package": "com.example.missing"}})),
    )
    .await;
    let done = wait_for(&server, task["id"].as_str().unwrap(), is_final).await;
    assert_eq!(
        done["error"]["details"]["code"], "package_not_found",
        "{done}"
    );
}

#[tokio::test]
async fn builds_stream_their_output_and_deploys_can_be_cancelled_or_time_out() {
    let Setup {
        server, root, id, ..
    } = setup().await;
    let operator = client_as("operator", "ops");
    let create = |task_type: &str, extra: Value| {
        let mut body = json!({"type": task_type, "payload": {"project": id}, "max_attempts": 1});
        for (key, value) in extra.as_object().unwrap() {
            body[key] = value.clone();
        }
        call(&operator, "POST", server.url("/v1/tasks"), Some(body))
    };

    // A build: its result keeps the output's tail; its events can be replayed from the start.
    let (status, task) = create("vcc.build", json!({})).await;
    assert_eq!(status, 201, "{task}");
    assert_eq!(
        task["timeout_ms"], 3_600_000,
        "the VCC command timeout is the default"
    );
    let task_id = task["id"].as_str().unwrap().to_owned();
    let done = wait_for(&server, &task_id, is_final).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["exit_code"], 0);
    let tail: Vec<&str> = done["result"]["tail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(tail.contains(&"building Pug World"), "{tail:?}");
    assert!(tail.contains(&"careful"), "{tail:?}");

    // The channel's position names its epoch; from offset 0 of it, everything is replayed.
    // Only those who may see the task may listen.
    let channel = format!("vcc.build:{task_id}");
    let mut stranger = connect_as(&server, "service", "someone-else").await;
    send(
        &mut stranger,
        json!({"id": 1, "op": "subscribe", "channel": channel}),
    )
    .await;
    assert_eq!(next(&mut stranger).await["error"]["code"], "forbidden");
    let mut socket = connect_as(&server, "operator", "ops").await;
    send(
        &mut socket,
        json!({"id": 1, "op": "subscribe", "channel": channel}),
    )
    .await;
    let reply = next(&mut socket).await;
    let epoch = reply["result"]["epoch"].clone();
    assert!(epoch.is_string(), "{reply}");
    send(
        &mut socket,
        json!({"id": 2, "op": "unsubscribe", "channel": channel}),
    )
    .await;
    assert_eq!(next(&mut socket).await["ok"], true);
    send(
        &mut socket,
        json!({"id": 3, "op": "subscribe", "channel": channel, "since": {"offset": 0, "epoch": epoch}}),
    )
    .await;
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the build's events did not end within 60 s"
        );
        let frame = next(&mut socket).await;
        if frame.get("id").is_some() {
            assert_eq!(frame["ok"], true, "{frame}");
            continue;
        }
        if frame["channel"] != format!("vcc.build:{task_id}") {
            continue;
        }
        match frame["event"]["type"].as_str() {
            Some("vcc.build.output") => {
                for line in frame["event"]["data"]["lines"].as_array().unwrap() {
                    lines.push((
                        line["stream"].as_str().unwrap().to_owned(),
                        line["line"].as_str().unwrap().to_owned(),
                    ));
                }
            }
            Some("vcc.build.finished") => {
                assert_eq!(frame["event"]["data"]["exit_code"], 0, "{frame}");
                assert_eq!(frame["event"]["data"]["dropped"], 0, "{frame}");
                break;
            }
            other => panic!("unexpected {other:?}: {frame}"),
        }
    }
    assert!(
        lines.contains(&("stdout".into(), "building Pug World".into())),
        "{lines:?}"
    );
    assert!(
        lines.contains(&("stderr".into(), "careful".into())),
        "{lines:?}"
    );

    // A deploy that hangs: cancelling it kills the command and the process it started.
    let (_, task) = create("vcc.deploy", json!({})).await;
    let deploy_id = task["id"].as_str().unwrap().to_owned();
    let pid_file = root.join(format!("deploy-{deploy_id}.pid"));
    let pid = wait_for_pid(&pid_file).await;
    // Meanwhile the project is busy: another command is turned away (and would be retried).
    let (_, busy) = create("vcc.build", json!({})).await;
    let busy = wait_for(&server, busy["id"].as_str().unwrap(), is_final).await;
    assert_eq!(busy["status"], "dead", "{busy}");
    assert_eq!(busy["error"]["details"]["code"], "project_busy", "{busy}");
    let (status, body) = call(
        &operator,
        "POST",
        server.url(&format!("/v1/tasks/{deploy_id}/cancel")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let done = wait_for(&server, &deploy_id, is_final).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    wait_until_gone(pid).await;

    // One that outlives its timeout is killed and fails with its output.
    let (_, task) = create("vcc.deploy", json!({"timeout_ms": 2500})).await;
    let deploy_id = task["id"].as_str().unwrap().to_owned();
    let pid = wait_for_pid(&root.join(format!("deploy-{deploy_id}.pid"))).await;
    let done = wait_for(&server, &deploy_id, is_final).await;
    assert_eq!(done["status"], "dead", "{done}");
    assert_eq!(
        done["error"]["details"]["code"], "command_timed_out",
        "{done}"
    );
    assert_eq!(
        done["error"]["details"]["tail"],
        json!(["deploying"]),
        "{done}"
    );
    wait_until_gone(pid).await;

    // Bad payloads never run anything.
    let (status, body) = call(
        &operator,
        "POST",
        server.url("/v1/tasks"),
        Some(json!({"type": "vcc.build", "payload": {"project": id, "command": "rm -rf /"}})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_payload")),
        "{body}"
    );
}

async fn wait_for_pid(file: &Path) -> i32 {
    for _ in 0..200 {
        if let Some(pid) = std::fs::read_to_string(file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} was not written", file.display());
}

async fn wait_until_gone(pid: i32) {
    for _ in 0..200 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, or a zombie waiting for a parent that is itself gone.
        if stat.is_empty() || stat.split_whitespace().nth(2) == Some("Z") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("process {pid} still runs");
}

#[tokio::test]
async fn repositories_named_by_the_configuration_are_used_without_adding_them() {
    let url = repository().await;
    let root = temp_dir().join("projects");
    let project = world_project(&root, "Config World");
    let server = Server::start(&[
        (
            "MCP_VCC_PROJECTS",
            format!("[{:?}]", project.display().to_string()),
        ),
        ("MCP_VCC_REPOSITORIES", format!("[{url:?}]")),
        ("MCP_OUTBOUND_ALLOW", r#"["127.0.0.1"]"#.into()),
    ]);
    let operator = client_as("operator", "ops");
    let (status, list) = call(&operator, "GET", server.url("/v1/vcc/repositories"), None).await;
    assert_eq!(status, 200);
    assert_eq!(list["repositories"][0]["source"], "config", "{list}");
    assert_eq!(list["repositories"][0]["url"], url.as_str());
    let (_, projects) = call(&operator, "GET", server.url("/v1/vcc/projects"), None).await;
    let id = projects["projects"][0]["id"].as_str().unwrap().to_owned();

    let (status, task) = call(
        &operator,
        "POST",
        server.url("/v1/tasks"),
        Some(json!({"type": "vcc.package.add", "payload": {"project": id, "package": "com.example.core", "version": "^1.0.0"}})),
    )
    .await;
    assert_eq!(status, 201, "{task}");
    let done = wait_for(&server, task["id"].as_str().unwrap(), is_final).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        manifest(&project)["locked"]["com.example.core"]["version"],
        "1.2.0"
    );
    // Fetched when first needed, and shown so from then on.
    let (_, list) = call(&operator, "GET", server.url("/v1/vcc/repositories"), None).await;
    assert_eq!(list["repositories"][0]["package_count"], 3, "{list}");
}

#[tokio::test]
async fn a_deploy_left_running_by_a_killed_node_is_stopped_when_it_starts_again() {
    let Setup {
        mut server,
        root,
        id,
        ..
    } = setup().await;
    let (status, task) = call(
        &client_as("operator", "ops"),
        "POST",
        server.url("/v1/tasks"),
        Some(json!({"type": "vcc.deploy", "payload": {"project": id}})),
    )
    .await;
    assert_eq!(status, 201, "{task}");
    let task_id = task["id"].as_str().unwrap();
    let pid = wait_for_pid(&root.join(format!("deploy-{task_id}.pid"))).await;

    // kill -9: nothing of the hub stops the command, which keeps running.
    server.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z ")),
        "the command outlived its node"
    );

    // The node comes back, finds the command in its ledger, and stops it.
    let _server = Server::start_in(
        server.data_dir.clone(),
        &[("MCP_VCC_PROJECT_ROOTS", root.display().to_string())],
    );
    wait_until_gone(pid).await;
}
