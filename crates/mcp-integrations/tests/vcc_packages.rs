//! VCC projects and packages against real folders and a fixture VPM repository served on
//! loopback: project JSON, the root checks, the repository cache with `ETag`s, resolution, and
//! installs that are all or nothing (checked file by file, byte for byte).

mod common;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::context;
use mcp_core::HandlerRegistry;
use mcp_integrations::Adapter;
use mcp_integrations::vcc::{VccAdapter, VccConfig, VccError, VccErrorKind, VccService};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use zip::write::SimpleFileOptions;

// ---------------------------------------------------------------------------------------------
// The fixture repository

#[derive(Default)]
struct RepoState {
    listing: Mutex<Value>,
    zips: Mutex<HashMap<String, Vec<u8>>>,
    full_answers: AtomicUsize,
    not_modified_answers: AtomicUsize,
    zip_downloads: AtomicUsize,
}

#[derive(Clone)]
struct FixtureRepo {
    state: Arc<RepoState>,
    base: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn listing(State(state): State<Arc<RepoState>>, headers: HeaderMap) -> Response {
    let body = serde_json::to_vec(&*state.listing.lock().unwrap()).unwrap();
    let etag = format!("\"{}\"", &sha256_hex(&body)[..16]);
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        state.not_modified_answers.fetch_add(1, Ordering::SeqCst);
        return StatusCode::NOT_MODIFIED.into_response();
    }
    state.full_answers.fetch_add(1, Ordering::SeqCst);
    (
        [
            (header::ETAG, etag),
            (header::CONTENT_TYPE, "application/json".into()),
        ],
        body,
    )
        .into_response()
}

async fn zip_file(State(state): State<Arc<RepoState>>, UrlPath(file): UrlPath<String>) -> Response {
    state.zip_downloads.fetch_add(1, Ordering::SeqCst);
    if file.starts_with("com.flaky") {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    match state.zips.lock().unwrap().get(&file) {
        Some(bytes) => bytes.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A zip with `package.json` and one source file, both saying which version they are.
fn package_zip(name: &str, version: &str) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default();
    writer.start_file("package.json", options).unwrap();
    writer
        .write_all(
            json!({"name": name, "version": version})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    writer.add_directory("Runtime/", options).unwrap();
    writer.start_file("Runtime/Main.cs", options).unwrap();
    writer
        .write_all(format!("// {name} {version}\n").as_bytes())
        .unwrap();
    writer.finish().unwrap().into_inner()
}

/// A zip whose second entry climbs out of the package folder.
fn zip_slip_zip() -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default();
    writer.start_file("package.json", options).unwrap();
    writer.write_all(b"{}").unwrap();
    writer.start_file("../../evil.txt", options).unwrap();
    writer.write_all(b"pwned").unwrap();
    writer.finish().unwrap().into_inner()
}

/// A zip with a symlink entry pointing outside.
fn symlink_zip() -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default();
    writer.start_file("package.json", options).unwrap();
    writer.write_all(b"{}").unwrap();
    writer.add_symlink("escape", "/etc", options).unwrap();
    writer.finish().unwrap().into_inner()
}

impl FixtureRepo {
    async fn start() -> FixtureRepo {
        let state = Arc::new(RepoState::default());
        let app = Router::new()
            .route("/index.json", get(listing))
            .route("/zips/{file}", get(zip_file))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let repo = FixtureRepo {
            state,
            base: format!("http://{addr}"),
        };
        *repo.state.listing.lock().unwrap() = json!({"name": "Fixture", "id": "test.fixture", "url": repo.url(), "author": "tests", "packages": {}});
        repo.publish("com.base", "1.0.0", json!({}));
        repo.publish("com.base", "2.0.0", json!({}));
        repo.publish("com.base", "2.1.0", json!({}));
        repo.publish("com.base", "3.0.0-beta.1", json!({}));
        repo.publish("com.tool", "1.0.0", json!({"com.base": "1.0.0"}));
        repo.publish("com.tool", "2.0.0", json!({"com.base": "^2.0.0"}));
        repo.publish("com.strict", "1.0.0", json!({"com.base": "^1.0.0"}));
        // Needs com.base (fine), but its own zip does not match its hash.
        repo.publish("com.broken", "1.0.0", json!({"com.base": ">=2.0.0"}));
        repo.set_hash("com.broken", "1.0.0", &"AB".repeat(32));
        repo.publish("com.extra", "1.0.0", json!({}));
        // 2.0.0 brings a new dependency that sorts before it, installed first.
        repo.publish("com.zed", "1.0.0", json!({}));
        repo.publish("com.zed", "2.0.0", json!({"com.base": ">=2.0.0"}));
        repo.publish_zip("com.evil", "1.0.0", zip_slip_zip());
        // Its zip is answered with 503.
        repo.publish("com.flaky", "1.0.0", json!({}));
        repo.publish_zip("com.link", "1.0.0", symlink_zip());
        repo
    }

    fn url(&self) -> String {
        format!("{}/index.json", self.base)
    }

    fn publish(&self, name: &str, version: &str, deps: Value) {
        self.publish_with(name, version, deps, package_zip(name, version));
    }

    fn publish_zip(&self, name: &str, version: &str, zip: Vec<u8>) {
        self.publish_with(name, version, json!({}), zip);
    }

    fn publish_with(&self, name: &str, version: &str, deps: Value, zip: Vec<u8>) {
        let file = format!("{name}-{version}.zip");
        let entry = json!({
            "name": name,
            "version": version,
            "displayName": name.to_uppercase(),
            "url": format!("{}/zips/{file}", self.base),
            // Upper case on purpose: the comparison ignores case.
            "zipSHA256": sha256_hex(&zip).to_uppercase(),
            "vpmDependencies": deps,
            "dependencies": {},
            "unity": "2022.3",
            "legacyFolders": {},
        });
        self.state.zips.lock().unwrap().insert(file, zip);
        let mut listing = self.state.listing.lock().unwrap();
        listing["packages"][name]["versions"][version] = entry;
    }

    fn set_hash(&self, name: &str, version: &str, hash: &str) {
        self.state.listing.lock().unwrap()["packages"][name]["versions"][version]["zipSHA256"] =
            json!(hash);
    }
}

// ---------------------------------------------------------------------------------------------
// Fixture projects

struct Fixture {
    dir: tempfile::TempDir,
    root: PathBuf,
    service: VccService,
    repo: FixtureRepo,
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A Unity project at `root/name` with this manifest.
fn make_project(root: &Path, name: &str, manifest: Value) -> PathBuf {
    let path = root.join(name);
    write(
        &path.join("ProjectSettings/ProjectVersion.txt"),
        "m_EditorVersion: 2022.3.22f1\nm_EditorVersionWithRevision: 2022.3.22f1 (887be4894c44)\n",
    );
    write(
        &path.join("Packages/vpm-manifest.json"),
        &serde_json::to_string_pretty(&manifest).unwrap(),
    );
    path
}

fn config(dir: &Path, roots: Vec<PathBuf>) -> VccConfig {
    VccConfig {
        roots,
        state_file: dir.join("state/vcc.json"),
        // The fixture repository is a loopback server.
        outbound: Arc::new(mcp_core::outbound::Policy::new(true, &[]).unwrap()),
        ..VccConfig::default()
    }
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("projects");
        std::fs::create_dir_all(&root).unwrap();
        let service = VccService::new(config(dir.path(), vec![root.clone()])).unwrap();
        let repo = FixtureRepo::start().await;
        service.add_repository(&repo.url()).await.unwrap();
        Fixture {
            dir,
            root,
            service,
            repo,
        }
    }

    /// Registers an empty world project and returns its id.
    async fn world(&self) -> (String, PathBuf) {
        let path = make_project(
            &self.root,
            "World",
            json!({"dependencies": {}, "locked": {}}),
        );
        let project = self.service.register_project(&path).await.unwrap();
        (project.id, path)
    }
}

/// Every file and folder under `root`, with file contents: compares projects byte for byte.
fn snapshot(root: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Option<Vec<u8>>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let key = path.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                out.insert(key, None);
                walk(root, &path, out);
            } else {
                out.insert(key, Some(std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn manifest(project: &Path) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(project.join("Packages/vpm-manifest.json")).unwrap(),
    )
    .unwrap()
}

fn installed_version(project: &Path, name: &str) -> Option<String> {
    let text =
        std::fs::read_to_string(project.join("Packages").join(name).join("package.json")).ok()?;
    let json: Value = serde_json::from_str(&text).ok()?;
    json["version"].as_str().map(str::to_string)
}

fn locked_versions(project: &Path) -> BTreeMap<String, String> {
    manifest(project)["locked"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v["version"].as_str().unwrap().to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Projects

#[tokio::test]
async fn project_json_has_id_type_unity_version_and_packages() {
    let f = Fixture::new().await;
    let world = make_project(
        &f.root,
        "MyWorld",
        json!({
            "dependencies": {"com.vrchat.worlds": {"version": "3.5.0"}},
            "locked": {
                "com.vrchat.worlds": {"version": "3.5.2", "dependencies": {"com.vrchat.base": "3.5.2"}},
                "com.vrchat.base": {"version": "3.5.2"}
            }
        }),
    );
    let avatar = make_project(
        &f.root,
        "MyAvatar",
        json!({"dependencies": {}, "locked": {}}),
    );
    std::fs::create_dir_all(avatar.join("Packages/com.vrchat.avatars")).unwrap();
    let bare = f.root.join("Bare");
    std::fs::create_dir_all(bare.join("ProjectSettings")).unwrap();

    let project = f.service.register_project(&world).await.unwrap();
    let canonical = std::fs::canonicalize(&world).unwrap();
    let json = serde_json::to_value(&project).unwrap();
    assert_eq!(json["id"].as_str().unwrap().len(), 16);
    assert_eq!(
        json,
        json!({
            "id": project.id,
            "name": "MyWorld",
            "path": canonical.display().to_string(),
            "type": "world",
            "unity_version": "2022.3.22f1",
            "packages": [
                {"name": "com.vrchat.base", "version": null, "locked_version": "3.5.2"},
                {"name": "com.vrchat.worlds", "version": "3.5.0", "locked_version": "3.5.2"},
            ],
        })
    );
    let avatar = f.service.register_project(&avatar).await.unwrap();
    assert_eq!(serde_json::to_value(&avatar).unwrap()["type"], "avatar");
    let bare = f.service.register_project(&bare).await.unwrap();
    assert_eq!(serde_json::to_value(&bare).unwrap()["type"], "unknown");
    assert_eq!(bare.unity_version, None);
    assert!(bare.packages.is_empty());

    let names: Vec<String> = f
        .service
        .projects()
        .await
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, vec!["Bare", "MyAvatar", "MyWorld"]);
    assert_eq!(f.service.project(&project.id).await.unwrap(), project);
}

#[tokio::test]
async fn registering_is_idempotent_and_survives_a_restart() {
    let f = Fixture::new().await;
    let (id, path) = f.world().await;
    let again = f.service.register_project(&path).await.unwrap();
    assert_eq!(again.id, id);
    assert_eq!(f.service.projects().await.len(), 1);

    let restarted = VccService::new(config(f.dir.path(), vec![f.root.clone()])).unwrap();
    let projects = restarted.projects().await;
    assert_eq!(projects.len(), 1);
    assert_eq!(projects[0].id, id);
    // Repositories are persisted in the same state file.
    let repos = restarted.repositories().await;
    assert_eq!(repos.len(), 1);
    assert_eq!(repos[0].id, "test.fixture");

    restarted.unregister_project(&id).await.unwrap();
    assert!(f.service.projects().await.is_empty());
    let e = f.service.project(&id).await.unwrap_err();
    assert_eq!(
        (e.code(), e.kind()),
        ("project_not_found", VccErrorKind::NotFound)
    );
}

#[tokio::test]
async fn a_vanished_project_is_listed_with_an_error() {
    let f = Fixture::new().await;
    let (id, path) = f.world().await;
    std::fs::remove_dir_all(&path).unwrap();
    let projects = f.service.projects().await;
    assert_eq!(projects.len(), 1);
    assert_eq!(projects[0].id, id);
    assert!(projects[0].error.is_some());
}

#[tokio::test]
async fn refuses_paths_outside_the_roots() {
    let f = Fixture::new().await;
    let outside = make_project(f.dir.path(), "Outside", json!({}));
    let e = f.service.register_project(&outside).await.unwrap_err();
    assert_eq!(
        (e.code(), e.kind()),
        ("path_outside_roots", VccErrorKind::Invalid)
    );

    // `..` climbing out of a root.
    let climbing = f.root.join("..").join("Outside");
    let e = f.service.register_project(&climbing).await.unwrap_err();
    assert_eq!(e.code(), "path_outside_roots");

    // A symlink inside the root that points outside it.
    let link = f.root.join("Sneaky");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let e = f.service.register_project(&link).await.unwrap_err();
    assert_eq!(e.code(), "path_outside_roots");

    let e = f
        .service
        .register_project(Path::new("relative/Project"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "path_not_absolute");
    let e = f
        .service
        .register_project(&f.root.join("Missing"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.kind()),
        ("path_not_found", VccErrorKind::NotFound)
    );
    let plain = f.root.join("NotUnity");
    std::fs::create_dir_all(&plain).unwrap();
    let e = f.service.register_project(&plain).await.unwrap_err();
    assert_eq!(e.code(), "not_a_unity_project");
    assert!(f.service.projects().await.is_empty());
}

#[tokio::test]
async fn registering_without_roots_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let service = VccService::new(config(dir.path(), Vec::new())).unwrap();
    let project = make_project(dir.path(), "World", json!({}));
    let e = service.register_project(&project).await.unwrap_err();
    assert_eq!(
        (e.code(), e.kind()),
        ("vcc_roots_not_configured", VccErrorKind::Unavailable)
    );
}

#[tokio::test]
async fn corrupt_manifest_is_manifest_invalid() {
    let f = Fixture::new().await;
    let path = make_project(&f.root, "Broken", json!({}));
    write(
        &path.join("Packages/vpm-manifest.json"),
        "{\n  \"dependencies\": {,\n}",
    );
    let e = f.service.register_project(&path).await.unwrap_err();
    assert_eq!(
        (e.code(), e.kind()),
        ("manifest_invalid", VccErrorKind::Invalid)
    );
    assert!(e.to_string().contains("line 2"), "{e}");
}

#[tokio::test]
async fn vcc_settings_projects_and_repositories_are_included() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("projects");
    let inside = make_project(&root, "Listed", json!({}));
    let outside = make_project(dir.path(), "Elsewhere", json!({}));
    let settings = dir.path().join("settings.json");
    write(
        &settings,
        &json!({
            "userProjects": [inside, outside, dir.path().join("Gone")],
            "userRepos": [{"url": "http://127.0.0.1:9/index.json", "name": "Down", "headers": {}}],
            "unityEditors": [],
        })
        .to_string(),
    );
    let service = VccService::new(VccConfig {
        settings_file: Some(settings),
        ..config(dir.path(), vec![root])
    })
    .unwrap();
    let names: Vec<String> = service
        .projects()
        .await
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, vec!["Listed"]);
    let repos = service.repositories().await;
    assert_eq!(repos.len(), 1);
    assert_eq!(repos[0].source, "vcc_settings");
    assert_eq!(repos[0].package_count, None);
}

// ---------------------------------------------------------------------------------------------
// Repositories

#[tokio::test]
async fn listings_are_cached_with_their_etag() {
    let f = Fixture::new().await;
    let state = &f.repo.state;
    assert_eq!(state.full_answers.load(Ordering::SeqCst), 1);
    let repos = f.service.repositories().await;
    assert_eq!(repos[0].package_count, Some(9));
    assert_eq!(repos[0].name.as_deref(), Some("Fixture"));
    assert!(repos[0].fetched_at.is_some());

    f.service.refresh_repositories().await;
    f.service.refresh_repositories().await;
    assert_eq!(state.full_answers.load(Ordering::SeqCst), 1);
    assert_eq!(state.not_modified_answers.load(Ordering::SeqCst), 2);

    f.repo.publish("com.new", "1.0.0", json!({}));
    let repos = f.service.refresh_repositories().await;
    assert_eq!(state.full_answers.load(Ordering::SeqCst), 2);
    assert_eq!(repos[0].package_count, Some(10));

    // Installing uses the cache: no listing request at all.
    let (id, _) = f.world().await;
    f.service
        .add_package(&id, "com.new", None, false)
        .await
        .unwrap();
    assert_eq!(state.full_answers.load(Ordering::SeqCst), 2);
    assert_eq!(state.not_modified_answers.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn repositories_are_validated_and_removed() {
    let f = Fixture::new().await;
    let e = f.service.add_repository(&f.repo.url()).await.unwrap_err();
    assert_eq!(
        (e.code(), e.kind()),
        ("repository_exists", VccErrorKind::Conflict)
    );
    let e = f
        .service
        .add_repository(&format!("{}/zips/com.base-1.0.0.zip", f.repo.base))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "repository_invalid");
    let e = f
        .service
        .add_repository(&format!("{}/missing", f.repo.base))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "upstream_error");
    let e = f
        .service
        .add_repository("file:///etc/passwd")
        .await
        .unwrap_err();
    assert_eq!(e.code(), "repository_invalid");
    let e = f
        .service
        .add_repository("http://127.0.0.1:9/index.json")
        .await
        .unwrap_err();
    assert_eq!(e.code(), "network_error");
    assert!(e.is_retryable());

    f.service.remove_repository("test.fixture").await.unwrap();
    assert!(f.service.repositories().await.is_empty());
    let e = f
        .service
        .remove_repository("test.fixture")
        .await
        .unwrap_err();
    assert_eq!(e.code(), "repository_not_found");
}

// ---------------------------------------------------------------------------------------------
// Installs

#[tokio::test]
async fn add_installs_transitive_dependencies_and_writes_the_manifest() {
    let f = Fixture::new().await;
    let (id, path) = f.world().await;
    let summary = f
        .service
        .add_package(&id, "com.tool", None, false)
        .await
        .unwrap();
    let json = serde_json::to_value(&summary).unwrap();
    assert_eq!(
        json["changed"],
        json!([
            {"name": "com.base", "from": null, "to": "2.1.0"},
            {"name": "com.tool", "from": null, "to": "2.0.0"},
        ])
    );
    assert_eq!(json["project"]["id"], id);
    assert_eq!(
        installed_version(&path, "com.tool").as_deref(),
        Some("2.0.0")
    );
    assert_eq!(
        installed_version(&path, "com.base").as_deref(),
        Some("2.1.0")
    );
    assert_eq!(
        std::fs::read_to_string(path.join("Packages/com.tool/Runtime/Main.cs")).unwrap(),
        "// com.tool 2.0.0\n"
    );
    let m = manifest(&path);
    assert_eq!(m["dependencies"], json!({"com.tool": {"version": "2.0.0"}}));
    assert_eq!(
        m["locked"],
        json!({
            "com.base": {"version": "2.1.0", "dependencies": {}},
            "com.tool": {"version": "2.0.0", "dependencies": {"com.base": "^2.0.0"}},
        })
    );
    // No staging folder is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(path.join("Packages"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn upgrade_moves_to_the_newest_version() {
    let f = Fixture::new().await;
    let (id, path) = f.world().await;
    f.service
        .add_package(&id, "com.base", Some("1.0.0"), false)
        .await
        .unwrap();
    assert_eq!(
        installed_version(&path, "com.base").as_deref(),
        Some("1.0.0")
    );

    let summary = f
        .service
        .upgrade_package(&id, "com.base", Some("~2.0.0"))
        .await
        .unwrap();
    assert_eq!(summary.changed[0].to.as_deref(), Some("2.0.0"));
    let summary = f
        .service
        .upgrade_package(&id, "com.base", None)
        .await
        .unwrap();
    assert_eq!(summary.changed[0].from.as_deref(), Some("2.0.0"));
    assert_eq!(summary.changed[0].to.as_deref(), Some("2.1.0"));
    assert_eq!(
        installed_version(&path, "com.base").as_deref(),
        Some("2.1.0")
    );
    assert_eq!(
        manifest(&path)["dependencies"]["com.base"]["version"],
        "2.1.0"
    );
    // Nothing newer: nothing changes, nothing is downloaded.
    let downloads = f.repo.state.zip_downloads.load(Ordering::SeqCst);
    let summary = f
        .service
        .upgrade_package(&id, "com.base", None)
        .await
        .unwrap();
    assert!(summary.changed.is_empty());
    assert_eq!(f.repo.state.zip_downloads.load(Ordering::SeqCst), downloads);

    let e = f
        .service
        .upgrade_package(&id, "com.tool", None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "package_not_installed");
}

#[tokio::test]
async fn prereleases_are_installed_only_when_opted_in() {
    let f = Fixture::new().await;
    let (id, path) = f.world().await;
    f.service
        .add_package(&id, "com.base", None, false)
        .await
        .unwrap();
    assert_eq!(
        installed_version(&path, "com.base").as_deref(),
        Some("2.1.0")
    );
    f.service
        .add_package(&id, "com.base", None, true)
        .await
        .unwrap();
    assert_eq!(
        installed_version(&path, "com.base").as_deref(),
        Some("3.0.0-beta.1")
    );
    // Naming the pre-release is opting in too.
    f.service
        .add_package(&id, "com.base", Some("2.0.0"), false)
        .await
        .unwrap();
    f.service
        .add_package(&id, "com.base", Some("3.0.0-beta.1"), false)
        .await
        .unwrap();
    assert_eq!(
        installed_version(&path, "com.base").as_deref(),
        Some("3.0.0-beta.1")
    );
}

#[tokio::test]
async fn conflicts_name_the_package_and_who_asked() {
    let f = Fixture::new().await;
    let (id, path) = f.world().await;
    f.service
        .add_package(&id, "com.strict", None, false)
        .await
        .unwrap();
    assert_eq!(locked_versions(&path)["com.base"], "1.0.0");
    let before = snapshot(&path);

    // com.tool 2.0.0 needs com.base ^2.0.0, but com.base 1.0.0 is locked (com.strict needs ^1).
    let e = f
        .service
        .add_package(&id, "com.tool", None, false)
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.kind()),
        ("version_conflict", VccErrorKind::Conflict)
    );
    let message = e.to_string();
    assert!(message.contains("com.base"), "{message}");
    assert!(message.contains("com.tool@2.0.0"), "{message}");
    assert!(message.contains("com.strict@1.0.0"), "{message}");
    assert_eq!(snapshot(&path), before);

    let e = f
        .service
        .add_package(&id, "com.base", Some("^9"), false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "no_matching_version");
    let e = f
        .service
        .add_package(&id, "com.nothing", None, false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "package_not_found");
}

#[tokio::test]
async fn a_hash_mismatch_leaves_the_project_unchanged() {
    let f = Fixture::new().await;
    let (id, path) = f.world().await;
    f.service
        .add_package(&id, "com.extra", None, false)
        .await
        .unwrap();
    let before = snapshot(&path);

    // com.base is downloaded and staged fine, then com.broken fails its hash.
    let downloads = f.repo.state.zip_downloads.load(Ordering::SeqCst);
    let e = f
        .service
        .add_package(&id, "com.broken", None, false)
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.kind()),
        ("hash_mismatch", VccErrorKind::Invalid)
    );
    assert!(e.to_string().contains("com.broken"));
    assert_eq!(
        f.repo.state.zip_downloads.load(Ordering::SeqCst),
        downloads + 2
    );
    assert_eq!(snapshot(&path), before);
}

#[tokio::test]
async fn unsafe_zips_are_refused_and_nothing_is_written() {
    let f = Fixture::new().await;
    let (id, path) = f.world().await;
    let before = snapshot(&path);
    let outside_before = snapshot(f.dir.path());
    for package in ["com.evil", "com.link"] {
        let e = f
            .service
            .add_package(&id, package, None, false)
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), e.kind()),
            ("zip_unsafe", VccErrorKind::Invalid),
            "{package}"
        );
        assert_eq!(snapshot(&path), before);
    }
    assert_eq!(snapshot(f.dir.path()), outside_before);
    assert!(!f.root.join("evil.txt").exists());
}

#[cfg(unix)]
#[tokio::test]
async fn a_packages_folder_linked_out_of_the_project_is_refused() {
    let f = Fixture::new().await;
    let outside = f.dir.path().join("outside-packages");
    write(
        &outside.join("vpm-manifest.json"),
        &json!({"dependencies": {}, "locked": {}}).to_string(),
    );
    let path = f.root.join("Linked");
    write(
        &path.join("ProjectSettings/ProjectVersion.txt"),
        "m_EditorVersion: 2022.3.22f1\n",
    );
    std::os::unix::fs::symlink(&outside, path.join("Packages")).unwrap();
    let id = f.service.register_project(&path).await.unwrap().id;
    let before = snapshot(&outside);
    for e in [
        f.service
            .add_package(&id, "com.base", None, false)
            .await
            .unwrap_err(),
        f.service.remove_package(&id, "com.base").await.unwrap_err(),
    ] {
        assert_eq!(e.code(), "path_outside_roots", "{e}");
    }
    assert_eq!(snapshot(&outside), before);
}

#[cfg(unix)]
#[tokio::test]
async fn a_package_folder_linked_outside_is_replaced_without_touching_its_target() {
    let f = Fixture::new().await;
    let (id, path) = f.world().await;
    let outside = f.dir.path().join("my-dev-copy");
    write(&outside.join("package.json"), r#"{"version":"0.0.1"}"#);
    write(&outside.join("Runtime/Mine.cs"), "// mine\n");
    std::os::unix::fs::symlink(&outside, path.join("Packages/com.base")).unwrap();
    let before = snapshot(&outside);

    f.service
        .add_package(&id, "com.base", Some("2.0.0"), false)
        .await
        .unwrap();
    assert!(!path.join("Packages/com.base").is_symlink());
    assert_eq!(
        installed_version(&path, "com.base").as_deref(),
        Some("2.0.0")
    );
    assert_eq!(snapshot(&outside), before);

    // Removing a package whose folder is a link deletes the link only.
    std::fs::remove_dir_all(path.join("Packages/com.base")).unwrap();
    std::os::unix::fs::symlink(&outside, path.join("Packages/com.base")).unwrap();
    f.service.remove_package(&id, "com.base").await.unwrap();
    assert!(std::fs::symlink_metadata(path.join("Packages/com.base")).is_err());
    assert_eq!(snapshot(&outside), before);
}

#[cfg(unix)]
#[tokio::test]
async fn a_registered_project_swapped_for_a_link_out_of_the_roots_is_refused() {
    let f = Fixture::new().await;
    let (id, path) = f.world().await;
    let outside = make_project(
        f.dir.path(),
        "Outside",
        json!({"dependencies": {}, "locked": {}}),
    );
    std::fs::rename(&path, f.root.join("Moved")).unwrap();
    std::os::unix::fs::symlink(&outside, &path).unwrap();
    let before = snapshot(&outside);
    let e = f
        .service
        .add_package(&id, "com.base", None, false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "path_outside_roots", "{e}");
    assert_eq!(
        f.service.project(&id).await.unwrap_err().code(),
        "path_outside_roots"
    );
    assert_eq!(snapshot(&outside), before);
}

#[tokio::test]
async fn remove_refuses_a_package_others_need() {
    let f = Fixture::new().await;
    let (id, path) = f.world().await;
    f.service
        .add_package(&id, "com.tool", None, false)
        .await
        .unwrap();
    let before = snapshot(&path);
    let e = f.service.remove_package(&id, "com.base").await.unwrap_err();
    assert_eq!(
        (e.code(), e.kind()),
        ("package_required_by", VccErrorKind::Conflict)
    );
    assert!(e.to_string().contains("com.tool"));
    assert_eq!(snapshot(&path), before);

    let summary = f.service.remove_package(&id, "com.tool").await.unwrap();
    assert_eq!(
        serde_json::to_value(&summary.changed).unwrap(),
        json!([{"name": "com.tool", "from": "2.0.0", "to": null}])
    );
    assert!(!path.join("Packages/com.tool").exists());
    assert!(path.join("Packages/com.base").exists());
    let m = manifest(&path);
    assert_eq!(m["dependencies"], json!({}));
    assert_eq!(
        locked_versions(&path),
        BTreeMap::from([("com.base".into(), "2.1.0".into())])
    );

    f.service.remove_package(&id, "com.base").await.unwrap();
    assert!(!path.join("Packages/com.base").exists());
    let e = f.service.remove_package(&id, "com.base").await.unwrap_err();
    assert_eq!(
        (e.code(), e.kind()),
        ("package_not_installed", VccErrorKind::NotFound)
    );
}

// ---------------------------------------------------------------------------------------------
// The adapter

#[tokio::test]
async fn adapter_tasks_validate_payloads_and_map_errors() {
    let f = Fixture::new().await;
    let (id, path) = f.world().await;
    let adapter = VccAdapter::new(f.service.clone());
    let mut registry = HandlerRegistry::default();
    adapter.register(&mut registry);
    assert_eq!(registry.types(), adapter.task_types());
    assert!(adapter.health().await.is_healthy());

    let add = registry.get("vcc.package.add").unwrap().clone();
    assert!(
        add.validate(&json!({"project": id, "package": "com.tool"}))
            .is_ok()
    );
    assert!(
        add.validate(
            &json!({"project": id, "package": "com.tool", "version": "^1.0.0", "prerelease": true})
        )
        .is_ok()
    );
    assert!(
        add.validate(&json!({"project": id, "package": "com.tool", "extra": 1}))
            .is_err()
    );
    assert!(
        add.validate(&json!({"project": id, "package": "../x"}))
            .is_err()
    );
    assert!(
        add.validate(&json!({"project": id, "package": "com.tool", "version": ">=>"}))
            .is_err()
    );
    assert!(add.validate(&json!({"package": "com.tool"})).is_err());
    let remove = registry.get("vcc.package.remove").unwrap().clone();
    assert!(
        remove
            .validate(&json!({"project": id, "package": "com.tool", "version": "1"}))
            .is_err()
    );

    let payload = json!({"project": id, "package": "com.strict"});
    let result = add.run(context("vcc.package.add", payload)).await.unwrap();
    assert_eq!(
        result["changed"],
        json!([
            {"name": "com.base", "from": null, "to": "1.0.0"},
            {"name": "com.strict", "from": null, "to": "1.0.0"},
        ])
    );
    assert_eq!(result["project"]["id"], json!(id));
    // com.tool 1.0.0 accepts com.base 1.0.0 (a bare dependency version means "or later").
    f.service
        .add_package(&id, "com.tool", Some("^1.0.0"), false)
        .await
        .unwrap();
    assert_eq!(
        installed_version(&path, "com.tool").as_deref(),
        Some("1.0.0")
    );

    let upgrade = registry.get("vcc.package.upgrade").unwrap().clone();
    let e = upgrade
        .run(context(
            "vcc.package.upgrade",
            json!({"project": id, "package": "com.tool"}),
        ))
        .await
        .unwrap_err();
    assert!(!e.retryable);
    let details = e.details.clone().unwrap();
    assert_eq!(details["code"], "version_conflict");
    assert_eq!(details["package"], "com.base");
    assert_eq!(details["locked"], "1.0.0");

    let e = remove
        .run(context(
            "vcc.package.remove",
            json!({"project": "0000000000000000", "package": "com.tool"}),
        ))
        .await
        .unwrap_err();
    assert!(!e.retryable);
    assert_eq!(e.details.unwrap()["code"], "project_not_found");
}

#[tokio::test]
async fn downloads_that_fail_upstream_are_retryable_only_for_server_errors() {
    let f = Fixture::new().await;
    let (id, path) = f.world().await;
    let before = snapshot(&path);
    f.repo.state.zips.lock().unwrap().clear();
    let e: VccError = f
        .service
        .add_package(&id, "com.extra", None, false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "upstream_error");
    assert!(!e.is_retryable(), "a 404 will not fix itself");
    assert_eq!(snapshot(&path), before);
}

#[tokio::test]
async fn server_errors_make_package_tasks_retryable() {
    let f = Fixture::new().await;
    let (id, path) = f.world().await;
    let before = snapshot(&path);
    let adapter = VccAdapter::new(f.service.clone());
    let mut registry = HandlerRegistry::default();
    adapter.register(&mut registry);
    let add = registry.get("vcc.package.add").unwrap().clone();
    let e = add
        .run(context(
            "vcc.package.add",
            json!({"project": id, "package": "com.flaky"}),
        ))
        .await
        .unwrap_err();
    assert!(e.retryable, "{e:?}");
    assert_eq!(e.details.unwrap()["code"], "upstream_error");
    assert_eq!(snapshot(&path), before);
}

#[tokio::test]
async fn concurrent_changes_to_one_project_are_serialized() {
    let f = Fixture::new().await;
    let (id, path) = f.world().await;
    let (a, b) = tokio::join!(
        f.service.add_package(&id, "com.extra", None, false),
        f.service.add_package(&id, "com.tool", None, false),
    );
    a.unwrap();
    b.unwrap();
    let m = manifest(&path);
    assert_eq!(
        m["dependencies"],
        json!({"com.extra": {"version": "1.0.0"}, "com.tool": {"version": "2.0.0"}})
    );
    assert_eq!(
        locked_versions(&path).keys().collect::<Vec<_>>(),
        vec!["com.base", "com.extra", "com.tool"]
    );
}
