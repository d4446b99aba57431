//! The web console as HTTP sees it: its pages and assets come from the binary with a strict
//! Content Security Policy and revalidation headers, and it shadows no API route. What it does
//! in a browser is tested in Chromium by `clients/console-tests`.

mod support;

use reqwest::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use support::*;

fn assert_strict_policy(response: &reqwest::Response, path: &str) {
    let csp = response
        .headers()
        .get(CONTENT_SECURITY_POLICY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("{path}: no Content-Security-Policy"));
    for directive in [
        "default-src 'none'",
        "script-src 'self';",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{path}: {csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
    assert!(
        csp.contains(&format!("ws://{}", response.url().authority())),
        "{path}: {csp}"
    );
}

#[tokio::test]
async fn serves_the_console_pages_and_assets_with_a_strict_policy() {
    let server = Server::start(&[]);
    let http = reqwest::Client::new();
    for path in ["/", "/tasks/xyz", "/admin/api-keys"] {
        let response = http.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_strict_policy(&response, path);
        assert_eq!(
            response.headers()[CONTENT_TYPE],
            "text/html; charset=utf-8",
            "{path}"
        );
        let page = response.text().await.unwrap();
        assert!(
            page.contains(r#"<script type="module" src="/assets/app.js">"#),
            "{path}"
        );
        assert!(!page.contains("<script>"), "{path}: an inline script");
    }

    let asset = http.get(server.url("/assets/app.js")).send().await.unwrap();
    assert_eq!(asset.status(), 200);
    assert_strict_policy(&asset, "/assets/app.js");
    assert_eq!(
        asset.headers()[CONTENT_TYPE],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(asset.headers()[CACHE_CONTROL], "no-cache");
    let etag = asset.headers()[ETAG].clone();
    let again = http
        .get(server.url("/assets/app.js"))
        .header(IF_NONE_MATCH, etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
}

#[tokio::test]
async fn leaves_unknown_api_paths_to_the_json_404() {
    let server = Server::start(&[]);
    let http = reqwest::Client::new();
    for path in ["/v1/nope", "/v1", "/nope", "/assets/nope.js"] {
        let response = http.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{path}");
        assert!(body["error"]["request_id"].is_string(), "{path}");
    }
    // The API's own routes answer as before, beside the console's pages.
    let (status, _) = get(&server, "/v1/tasks").await;
    assert_eq!(status, 200);
    let health = http.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(health.headers().get(CONTENT_SECURITY_POLICY).is_none());
    // A page's path with another method is no page.
    let post = http.post(server.url("/tasks")).send().await.unwrap();
    assert_eq!(post.status(), 404);
}
