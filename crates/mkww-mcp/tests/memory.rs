//! The memory service through the real binary: conversations and messages over REST, search,
//! context windows, summaries, export and import, retention, events and bad input.

mod support;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::*;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn patch(server: &Server, path: &str, body: Value) -> (u16, Value) {
    call(&client(), "PATCH", server.url(path), Some(body)).await
}

async fn delete(server: &Server, path: &str) -> u16 {
    call(&client(), "DELETE", server.url(path), None).await.0
}

async fn conversation(server: &Server) -> String {
    let (status, c) = post(
        server,
        "/v1/conversations",
        json!({"title": "ops", "participants": ["ann", "bot"]}),
    )
    .await;
    assert_eq!(status, 201, "{c}");
    c["id"].as_str().unwrap().to_owned()
}

async fn say(server: &Server, id: &str, texts: &[&str]) -> Vec<Value> {
    let messages: Vec<Value> = texts
        .iter()
        .map(|t| json!({"author": "ann", "content": t}))
        .collect();
    let (status, body) = post(
        server,
        &format!("/v1/conversations/{id}/messages"),
        json!({ "messages": messages }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["messages"].as_array().unwrap().clone()
}

fn contents(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect()
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn conversations_and_messages_round_trip_with_pages_both_ways() {
    let server = Server::start(&[]);
    let id = conversation(&server).await;
    let (status, one) = post(
        &server,
        &format!("/v1/conversations/{id}/messages"),
        json!({"content": "hello there", "role": "user"}),
    )
    .await;
    assert_eq!(status, 201, "{one}");
    assert_eq!(
        one["author"], "test-admin",
        "the author defaults to the caller"
    );
    assert_eq!(one["tokens"], 3 + 4);
    let texts: Vec<String> = (1..=5).map(|i| format!("line {i}")).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let batch = say(&server, &id, &refs).await;
    assert_eq!(batch.len(), 5);

    let base = format!("/v1/conversations/{id}/messages");
    let (_, newest) = get(&server, &format!("{base}?limit=2")).await;
    assert_eq!(contents(&newest["messages"]), ["line 4", "line 5"]);
    let cursor = newest["next_cursor"].as_str().unwrap();
    let (_, older) = get(&server, &format!("{base}?limit=3&before={cursor}")).await;
    assert_eq!(contents(&older["messages"]), ["line 1", "line 2", "line 3"]);
    let cursor = older["next_cursor"].as_str().unwrap();
    let (_, oldest) = get(&server, &format!("{base}?limit=3&before={cursor}")).await;
    assert_eq!(contents(&oldest["messages"]), ["hello there"]);
    assert!(oldest["next_cursor"].is_null());
    let first = one["id"].as_str().unwrap();
    let (_, forward) = get(&server, &format!("{base}?limit=4&after={first}")).await;
    assert_eq!(
        contents(&forward["messages"]),
        ["line 1", "line 2", "line 3", "line 4"]
    );
    let (status, body) = get(&server, &format!("{base}?before=nonsense")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_cursor"))
    );

    let message = batch[0]["id"].as_str().unwrap();
    let (status, pinned) = patch(
        &server,
        &format!("{base}/{message}"),
        json!({"pinned": true, "metadata": {"why": "important"}}),
    )
    .await;
    assert_eq!(status, 200, "{pinned}");
    assert_eq!(pinned["pinned"], true);
    assert_eq!(delete(&server, &format!("{base}/{message}")).await, 204);
    assert_eq!(delete(&server, &format!("{base}/{message}")).await, 404);

    let (status, renamed) = patch(
        &server,
        &format!("/v1/conversations/{id}"),
        json!({"title": null, "archived": true}),
    )
    .await;
    assert_eq!(status, 200, "{renamed}");
    assert!(renamed["title"].is_null());
    let (_, archived) = get(&server, "/v1/conversations?archived=true").await;
    assert_eq!(archived["conversations"][0]["id"], id.as_str());
    let (_, by_participant) = get(&server, "/v1/conversations?participant=nobody").await;
    assert_eq!(by_participant["conversations"], json!([]));

    assert_eq!(
        delete(&server, &format!("/v1/conversations/{id}")).await,
        204
    );
    let (status, body) = get(&server, &format!("/v1/conversations/{id}")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("conversation_not_found"))
    );
}

#[tokio::test]
async fn unknown_conversations_and_messages_are_404() {
    let server = Server::start(&[]);
    let ghost = uuid::Uuid::now_v7();
    for path in [
        format!("/v1/conversations/{ghost}"),
        format!("/v1/conversations/{ghost}/messages"),
        format!("/v1/conversations/{ghost}/context"),
        "/v1/conversations/not-a-uuid".to_owned(),
    ] {
        let (status, body) = get(&server, &path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error"]["code"], "conversation_not_found");
    }
    let (status, body) = post(
        &server,
        &format!("/v1/conversations/{ghost}/messages"),
        json!({"content": "hi"}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("conversation_not_found"))
    );
    let id = conversation(&server).await;
    let (status, body) = patch(
        &server,
        &format!("/v1/conversations/{id}/messages/{ghost}"),
        json!({"pinned": true}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("message_not_found"))
    );
}

#[tokio::test]
async fn bad_message_input_gets_specific_errors() {
    let server = Server::start(&[("MCP_MEMORY_MAX_MESSAGE_BYTES", "64".into())]);
    let id = conversation(&server).await;
    let path = format!("/v1/conversations/{id}/messages");
    let (status, body) = post(&server, &path, json!({"content": "x".repeat(65)})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("message_too_large"))
    );
    let (status, body) = post(
        &server,
        &path,
        json!({"messages": [{"content": "fine"}, {"content": "y".repeat(100)}]}),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["details"]["field"], "messages[1].content");
    let (status, body) = post(&server, &path, json!({"content": "nul \u{0} inside"})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_message"))
    );
    let (status, body) = post(&server, &path, json!({"content": "a", "role": "robot"})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_request"))
    );
    let (status, body) = post(&server, &path, json!({"messages": []})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_batch_size"))
    );
    let (status, body) = post(&server, &path, json!({"content": "a", "metadata": [1]})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_message"))
    );
    // Nothing of the refused batches was stored.
    let (_, page) = get(&server, &path).await;
    assert_eq!(page["messages"], json!([]));
    let (status, body) = post(&server, &path, json!({"content": "once", "id": id})).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = post(&server, &path, json!({"content": "twice", "id": id})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("message_exists"))
    );
}

#[tokio::test]
async fn searches_with_websearch_syntax_snippets_and_cursor() {
    let server = Server::start(&[]);
    let id = conversation(&server).await;
    say(
        &server,
        &id,
        &[
            "the deploy failed on staging",
            "deploy succeeded after the retry",
            "a failed build is not a failed deploy",
            "lunch <b>plans</b>",
        ],
    )
    .await;
    let search = |q: &str| format!("/v1/search/messages?q={}", encode(q));
    let (status, body) = get(&server, &search("\"deploy failed\"")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        contents(&body["messages"]),
        ["the deploy failed on staging"]
    );
    let hit = &body["messages"][0];
    assert!(
        hit["snippet"].as_str().unwrap().contains("<mark>deploy"),
        "{hit}"
    );
    assert!(hit["rank"].as_f64().unwrap() > 0.0);
    assert_eq!(hit["conversation_id"], id.as_str());

    let (_, body) = get(&server, &search("deploy -retry -staging")).await;
    assert_eq!(
        contents(&body["messages"]),
        ["a failed build is not a failed deploy"]
    );
    let (_, body) = get(&server, &search("lunch or succeeded")).await;
    assert_eq!(body["messages"].as_array().unwrap().len(), 2);
    let (_, body) = get(&server, &search("plans")).await;
    assert!(
        !body["messages"][0]["snippet"]
            .as_str()
            .unwrap()
            .contains("<b>")
    );

    // Pages of ranked results.
    let (_, first) = get(&server, &format!("{}&limit=2", search("deploy"))).await;
    assert_eq!(first["messages"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = get(
        &server,
        &format!("{}&limit=2&cursor={cursor}", search("deploy")),
    )
    .await;
    assert_eq!(second["messages"].as_array().unwrap().len(), 1);
    assert!(second["next_cursor"].is_null());

    // Filters.
    let (_, body) = get(&server, &format!("{}&role=assistant", search("deploy"))).await;
    assert_eq!(body["messages"], json!([]));
    let (_, body) = get(&server, &format!("{}&author=ann", search("deploy"))).await;
    assert_eq!(body["messages"].as_array().unwrap().len(), 3);
    let (status, _) = get(&server, &format!("{}&role=robot", search("deploy"))).await;
    assert_eq!(status, 400);
    let (status, _) = get(&server, &format!("{}&since=yesterday", search("deploy"))).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn hostile_queries_are_400_or_harmless_never_500() {
    let server = Server::start(&[]);
    let id = conversation(&server).await;
    say(&server, &id, &["NEAR the column AND stuff"]).await;
    for q in ["", "-only", "!!!", "a or -b", "\"\""] {
        let (status, body) = get(&server, &format!("/v1/search/messages?q={}", encode(q))).await;
        assert_eq!(status, 400, "{q:?}: {body}");
        assert_eq!(body["error"]["code"], "invalid_search_query", "{q:?}");
    }
    for raw in [
        "NEAR(the%20column)",
        "col%3Aumn",
        "stuff*",
        "%22unbalanced",
        "((((",
        "AND%20OR%20NOT",
        "%00%01%1F",
        "%FF%FE",
        "%E2%80%AEreversed",
        "'%3B%20DROP%20TABLE%20messages%3B--",
    ] {
        let (status, body) = get(&server, &format!("/v1/search/messages?q={raw}")).await;
        assert!(status == 200 || status == 400, "{raw}: {status} {body}");
    }
    let (_, body) = get(&server, "/v1/search/messages?q=AND").await;
    assert_eq!(contents(&body["messages"]), ["NEAR the column AND stuff"]);
    let (status, body) = get(&server, "/v1/search/messages?q=x&cursor=%%%").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = get(&server, "/v1/search/messages?q=x&cursor=bm9wZQ").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_cursor"))
    );
}

#[tokio::test]
async fn context_fits_the_budget_and_summaries_come_from_a_task() {
    let server = Server::start(&[]);
    let id = conversation(&server).await;
    // 8 characters: 2 tokens + 4 per message = 6 tokens each.
    let messages = say(
        &server,
        &id,
        &["Aaaaaaa.", "Bbbbbbb.", "Ccccccc.", "Ddddddd.", "Eeeeeee."],
    )
    .await;
    let first = messages[0]["id"].as_str().unwrap();
    patch(
        &server,
        &format!("/v1/conversations/{id}/messages/{first}"),
        json!({"pinned": true}),
    )
    .await;
    let (status, context) = get(
        &server,
        &format!("/v1/conversations/{id}/context?max_tokens=20"),
    )
    .await;
    assert_eq!(status, 200, "{context}");
    assert!(context["summary"].is_null());
    assert_eq!(contents(&context["pinned"]), ["Aaaaaaa."]);
    assert_eq!(contents(&context["messages"]), ["Ddddddd.", "Eeeeeee."]);
    assert_eq!(context["tokens"], 18);
    let (status, _) = get(
        &server,
        &format!("/v1/conversations/{id}/context?max_tokens=0"),
    )
    .await;
    assert_eq!(status, 400);

    let (status, task) = post(
        &server,
        "/v1/tasks",
        json!({"type": "memory.summarize", "payload": {"conversation_id": id}}),
    )
    .await;
    assert_eq!(status, 201, "{task}");
    let task = wait_for(&server, task["id"].as_str().unwrap(), is_final).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    let (_, context) = get(
        &server,
        &format!("/v1/conversations/{id}/context?max_tokens=1000"),
    )
    .await;
    let summary = context["summary"]["text"].as_str().unwrap();
    assert!(summary.starts_with("ann: Aaaaaaa."), "{summary}");
    assert!(summary.ends_with("ann: Eeeeeee."), "{summary}");

    // A worker with its own summary stores it directly.
    let (status, c) = post(
        &server,
        &format!("/v1/conversations/{id}/summary"),
        json!({"text": "Five letters were said.", "through": messages[4]["id"]}),
    )
    .await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["summary"]["text"], "Five letters were said.");
    let (status, body) = post(
        &server,
        "/v1/tasks",
        json!({"type": "memory.summarize", "payload": {"conversation": id}}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_payload"))
    );
}

#[tokio::test]
async fn export_and_import_round_trip_as_json_lines() {
    let server = Server::start(&[]);
    let id = conversation(&server).await;
    say(&server, &id, &["one", "two", "three"]).await;
    let response = client()
        .get(server.url(&format!("/v1/conversations/{id}/export")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    let exported = response.text().await.unwrap();
    let lines: Vec<Value> = exported
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["type"], "conversation");
    assert_eq!(lines[3]["content"], "three");

    let import = |body: String| {
        client()
            .post(server.url("/v1/conversations/import"))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
    };
    let response = import(exported.clone()).await.unwrap();
    assert_eq!(response.status(), 409, "the conversation exists");
    assert_eq!(
        delete(&server, &format!("/v1/conversations/{id}")).await,
        204
    );
    let response = import(exported.clone()).await.unwrap();
    assert_eq!(response.status(), 201);
    let (_, page) = get(&server, &format!("/v1/conversations/{id}/messages")).await;
    assert_eq!(contents(&page["messages"]), ["one", "two", "three"]);
    let (_, original) = get(&server, &format!("/v1/conversations/{id}")).await;
    assert_eq!(original["created_at"], lines[0]["created_at"]);

    let response = import("{\"type\":\"message\"}\n".into()).await.unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_import");
    let broken = exported.replacen("\"type\":\"message\"", "\"type\":\"message\",\"oops\":1", 1);
    assert_eq!(
        delete(&server, &format!("/v1/conversations/{id}")).await,
        204
    );
    let response = import(broken).await.unwrap();
    assert_eq!(
        response.status(),
        400,
        "a bad line refuses the whole import"
    );
    let (status, _) = get(&server, &format!("/v1/conversations/{id}")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn retention_archives_then_deletes_idle_conversations() {
    let server = Server::start(&[
        ("MCP_MEMORY_ARCHIVE_AFTER_DAYS", "2".into()),
        ("MCP_MEMORY_DELETE_AFTER_DAYS", "7".into()),
        ("MCP_MEMORY_RETENTION_INTERVAL_MS", "1000".into()),
    ]);
    let at = |days: i64| (chrono::Utc::now() - chrono::Duration::days(days)).to_rfc3339();
    let mut ids = Vec::new();
    for days in [3, 10, 0] {
        let id = uuid::Uuid::now_v7();
        let line = json!({"type": "conversation", "id": id, "created_at": at(days),
                          "updated_at": at(days)});
        let response = client()
            .post(server.url("/v1/conversations/import"))
            .body(format!("{line}\n"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        ids.push(id);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, idle) = get(&server, &format!("/v1/conversations/{}", ids[0])).await;
        let (old, _) = get(&server, &format!("/v1/conversations/{}", ids[1])).await;
        if idle["archived"] == true && old == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "retention did not run: {idle}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, fresh) = get(&server, &format!("/v1/conversations/{}", ids[2])).await;
    assert_eq!(fresh["archived"], false);
}

#[tokio::test]
async fn users_read_and_write_memory_but_only_operators_delete_conversations() {
    let server = Server::start(&[]);
    let user = client_as("user", "ann");
    let (status, c) = call(
        &user,
        "POST",
        server.url("/v1/conversations"),
        Some(json!({"title": "mine"})),
    )
    .await;
    assert_eq!(status, 201, "{c}");
    assert_eq!(c["created_by"], "ann");
    let id = c["id"].as_str().unwrap();
    let (status, _) = call(
        &user,
        "POST",
        server.url(&format!("/v1/conversations/{id}/messages")),
        Some(json!({"content": "hi"})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, body) = call(
        &user,
        "DELETE",
        server.url(&format!("/v1/conversations/{id}")),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let operator = client_as("operator", "op");
    let (status, _) = call(
        &operator,
        "DELETE",
        server.url(&format!("/v1/conversations/{id}")),
        None,
    )
    .await;
    assert_eq!(status, 204);
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_text(socket: &mut Socket) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("a frame within 20 s")
            .expect("open")
            .expect("frame")
        {
            Frame::Text(text) => return serde_json::from_str(&text).unwrap(),
            Frame::Close(frame) => panic!("closed: {frame:?}"),
            _ => continue,
        }
    }
}

#[tokio::test]
async fn changes_are_published_on_the_conversation_channel() {
    let server = Server::start(&[]);
    let id = conversation(&server).await;
    let mut request = (server.base.replacen("http://", "ws://", 1) + "/v1/ws")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token("admin", "watcher"))
            .parse()
            .unwrap(),
    );
    let mut socket = tokio_tungstenite::connect_async(request).await.unwrap().0;
    let channel = format!("conversation:{id}");
    socket
        .send(Frame::Text(
            json!({"id": 1, "op": "subscribe", "channel": channel})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(std::time::Instant::now() < deadline, "no reply within 30 s");
        let reply = next_text(&mut socket).await;
        if reply["id"] == 1 {
            assert_eq!(reply["ok"], true, "{reply}");
            break;
        }
    }
    let message = &say(&server, &id, &["news"]).await[0];
    let mid = message["id"].as_str().unwrap();
    patch(
        &server,
        &format!("/v1/conversations/{id}/messages/{mid}"),
        json!({"pinned": true}),
    )
    .await;
    delete(&server, &format!("/v1/conversations/{id}/messages/{mid}")).await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let frame = next_text(&mut socket).await;
        if frame["op"] == "event" {
            assert_eq!(frame["channel"], channel.as_str());
            seen.push(frame["event"]["type"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(
        seen,
        [
            "memory.message.created",
            "memory.message.updated",
            "memory.message.deleted"
        ]
    );
}

#[tokio::test]
async fn the_memory_service_works_on_postgres() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    {
        let server = Server::start(&schema.env());
        let id = conversation(&server).await;
        say(&server, &id, &["postgres keeps memories", "and finds them"]).await;
        let (status, body) = get(&server, "/v1/search/messages?q=memory%20keep").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(contents(&body["messages"]), ["postgres keeps memories"]);
        let (status, body) = get(&server, "/v1/search/messages?q=-only").await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_search_query"))
        );
        let (_, context) = get(&server, &format!("/v1/conversations/{id}/context")).await;
        assert_eq!(context["messages"].as_array().unwrap().len(), 2);
    }
    schema.drop_schema().await;
}
