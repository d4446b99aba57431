//! VRChat through the real binary: the REST passthroughs and task types against a fake of
//! VRChat's web API that demands an emailed code, and the OSC listener publishing avatar
//! parameters to a WebSocket subscriber.

#[path = "../../mcp-integrations/tests/fake_vrchat/mod.rs"]
mod fake_vrchat;
mod support;

use fake_vrchat::{PASSWORD, TwoFactor, USERNAME, WORLD_ID};
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;
use support::*;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn reads_vrchat_after_an_emailed_code_is_submitted() {
    let (base, fake) = fake_vrchat::start(TwoFactor::Email).await;
    let account = [
        ("MCP_VRCHAT_API_BASE", base),
        ("MCP_VRCHAT_USERNAME", USERNAME.into()),
        ("MCP_VRCHAT_PASSWORD", PASSWORD.into()),
    ];
    let server = Server::start(&account);
    let admin = client();
    let service = client_as("service", "bot");
    let user = client_as("user", "someone");
    let get = "GET";
    let post = "POST";

    let (status, body) = call(&service, get, server.url("/v1/vrchat/status"), None).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("logged_out")),
        "{body}"
    );

    // The first read logs in; VRChat emails a code, and the read answers that it waits for it.
    let world = server.url(&format!("/v1/vrchat/worlds/{WORLD_ID}"));
    let (status, body) = call(&service, get, world.clone(), None).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "vrchat_needs_code");
    assert!(
        body["error"]["request_id"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    let (_, body) = call(&service, get, server.url("/v1/vrchat/status"), None).await;
    assert_eq!(body["state"], "needs_code");
    assert_eq!(body["methods"], json!(["emailOtp"]));

    // Only an admin submits codes; a user may not read VRChat at all.
    let code = fake.lock().unwrap().emailed_code.clone();
    let submit = server.url("/v1/vrchat/auth/code");
    let (status, _) = call(&service, post, submit.clone(), Some(json!({"code": code}))).await;
    assert_eq!(status, 403);
    let (status, _) = call(&user, get, world.clone(), None).await;
    assert_eq!(status, 403);
    let (status, body) = call(&admin, post, submit.clone(), Some(json!({"code": "nope!"}))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_request")),
        "{body}"
    );
    let (status, body) = call(&admin, post, submit, Some(json!({"code": code}))).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("logged_in")),
        "{body}"
    );
    assert_eq!(body["display_name"], "Alice");

    let (status, body) = call(&service, get, world, None).await;
    assert_eq!(
        (status, body["name"].as_str()),
        (200, Some("The Great Pug")),
        "{body}"
    );
    let (status, body) = call(&service, get, server.url("/v1/vrchat/users/me"), None).await;
    assert_eq!((status, body["displayName"].as_str()), (200, Some("Alice")));
    let (status, body) = call(&service, get, server.url("/v1/vrchat/users/usr_2"), None).await;
    assert_eq!((status, body["displayName"].as_str()), (200, Some("Bob")));
    let location = format!("{WORLD_ID}:12345~region(eu)");
    let (status, body) = call(
        &service,
        get,
        server.url(&format!("/v1/vrchat/instances/{location}")),
        None,
    )
    .await;
    assert_eq!(
        (status, body["location"].as_str()),
        (200, Some(location.as_str())),
        "{body}"
    );
    let (status, body) = call(
        &service,
        get,
        server.url("/v1/vrchat/friends/online?n=2"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body.as_array().map(Vec::len), Some(2));
    let (status, body) = call(
        &service,
        get,
        server.url("/v1/vrchat/users/usr_nobody"),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("vrchat_not_found"))
    );
    let (status, body) = call(
        &service,
        get,
        server.url("/v1/vrchat/instances/wrld_only"),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_request"))
    );
    let (status, body) = call(
        &service,
        get,
        server.url("/v1/vrchat/friends/online?n=500"),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_request"))
    );

    // The same reads as tasks.
    let (status, task) = call(
        &service,
        post,
        server.url("/v1/tasks"),
        Some(json!({"type": "vrchat.instance.get", "payload": {"location": location}})),
    )
    .await;
    assert_eq!(status, 201, "{task}");
    let done = wait_for(&server, task["id"].as_str().unwrap(), is_final).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["n_users"], 5);

    // The integration is listed with its health; the password never shows.
    let (status, body) = call(&admin, get, server.url("/v1/integrations/vrchat"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["health"]["state"], "healthy", "{body}");
    assert!(!body.to_string().contains(PASSWORD));
    assert_eq!(fake.lock().unwrap().logins, 1);

    // Restarted, the hub resumes its session (kept sealed in the data directory): no new
    // login, no new emailed code.
    let kept = std::fs::read_to_string(server.data_dir.join("vrchat-session")).unwrap();
    assert!(!kept.contains("authcookie_"), "the cookies are sealed");
    let data_dir = server.data_dir.clone();
    drop(server);
    let server = Server::start_in(data_dir, &account);
    let (status, body) = call(&service, "GET", server.url("/v1/vrchat/users/me"), None).await;
    assert_eq!(
        (status, body["id"].as_str()),
        (200, Some(fake_vrchat::USER_ID)),
        "{body}"
    );
    assert_eq!(fake.lock().unwrap().logins, 1);
}

#[tokio::test]
async fn without_an_account_vrchat_routes_say_so() {
    let server = Server::start(&[]);
    let (status, body) = get(&server, "/v1/vrchat/status").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("vrchat_not_configured"))
    );
    let (status, body) = post(
        &server,
        "/v1/tasks",
        json!({"type": "vrchat.world.get", "payload": {"world_id": WORLD_ID}}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("unknown_task_type")),
        "{body}"
    );
}

/// The next text frame within `wait`, if any.
async fn next_within(socket: &mut Socket, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let frame = tokio::time::timeout_at(deadline, socket.next())
            .await
            .ok()?;
        if let Message::Text(text) = frame.expect("open").expect("frame") {
            return serde_json::from_str(&text).ok();
        }
    }
}

#[tokio::test]
async fn publishes_incoming_avatar_parameters_on_the_vrchat_osc_channel() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Server::start(&[("MCP_VRCHAT_OSC_LISTEN", format!("127.0.0.1:{port}"))]);
    let mut socket = connect(&server, Some(&token("operator", "ops"))).await;
    let reply = request(
        &mut socket,
        json!({"id": 1, "op": "subscribe", "channel": "vrchat.osc"}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");

    // VRChat sends avatar parameters as OSC messages.
    let packet = rosc::encoder::encode(&rosc::OscPacket::Message(rosc::OscMessage {
        addr: "/avatar/parameters/VelocityZ".into(),
        args: vec![rosc::OscType::Float(0.5)],
    }))
    .unwrap();
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // UDP may be dropped before the listener runs: send until the event arrives.
    let mut event = None;
    for _ in 0..20 {
        udp.send_to(&packet, ("127.0.0.1", port)).await.unwrap();
        event = next_within(&mut socket, Duration::from_millis(500)).await;
        if event.is_some() {
            break;
        }
    }
    let event = event.expect("an OSC event on the socket");
    assert_eq!(event["channel"], "vrchat.osc", "{event}");
    assert_eq!(
        event["event"]["type"], "vrchat.osc.avatar_parameter",
        "{event}"
    );
    assert_eq!(event["event"]["data"]["name"], "VelocityZ", "{event}");
}

#[tokio::test]
async fn credentials_stored_sealed_through_the_api_log_in_with_totp_after_a_restart() {
    let (base, fake) = fake_vrchat::start(TwoFactor::Totp).await;
    let server = Server::start(&[]);
    let admin = client();
    let (status, body) = call(
        &admin,
        "PUT",
        server.url("/v1/integrations/vrchat"),
        Some(json!({
            "kind": "vrchat",
            "settings": {"api_base": base, "username": USERNAME},
            "secrets": {"password": PASSWORD, "totp_secret": fake_vrchat::TOTP_SECRET},
        })),
    )
    .await;
    assert_eq!(
        (status, body["applied"].as_str()),
        (200, Some("restart")),
        "{body}"
    );
    assert!(!body.to_string().contains(PASSWORD));
    let (status, _) = get(&server, "/v1/vrchat/status").await;
    assert_eq!(status, 404, "applies at the next start");

    let data_dir = server.data_dir.clone();
    drop(server);
    let server = Server::start_in(data_dir, &[]);
    let (status, body) = get(&server, "/v1/vrchat/users/me").await;
    assert_eq!(
        (status, body["id"].as_str()),
        (200, Some(fake_vrchat::USER_ID)),
        "{body}"
    );
    let fake = fake.lock().unwrap();
    assert_eq!(fake.logins, 1);
    assert_eq!(
        fake.calls["auth/twofactorauth/totp/verify"], 1,
        "the code was computed"
    );
}
