//! One conformance suite for both memory stores: every case runs against SQLite (a fresh file)
//! and PostgreSQL (a fresh schema in `MCP_TEST_DATABASE_URL`, dropped afterwards). With
//! `CI` set (to any value) an unreachable PostgreSQL fails the suite instead of skipping it. Search cases pin
//! down that one query finds the same messages, in the same order, on both.

#[macro_use]
mod common;

use chrono::{DateTime, Duration as Span, Utc};
use mcp_core::StoreError;
use mcp_core::memory::{
    Conversation, ConversationFilter, ConversationPatch, MemoryStore, Message, MessagePage,
    MessagePatch, MessageRole, SearchQuery, SearchRequest, Summary, build_context, estimate_tokens,
};
use serde_json::json;
use uuid::Uuid;

conformance!(
    round_trips_conversations,
    refuses_a_taken_conversation_id,
    lists_conversations_newest_first_with_filters_and_cursor,
    patches_conversations,
    deleting_a_conversation_deletes_its_messages,
    appends_messages_in_order_and_pages_both_ways,
    appending_to_an_unknown_conversation_stores_nothing,
    a_batch_with_a_taken_message_id_stores_nothing,
    appending_revives_an_archived_conversation,
    patches_pins_and_deletes_messages,
    searches_words_phrases_exclusions_and_alternatives,
    search_stems_english_words_without_stop_words,
    search_ranks_better_matches_first_and_pages_by_offset,
    search_ranks_only_the_newest_matches_of_a_broad_query,
    search_filters_by_conversation_author_role_and_time,
    search_treats_fts_operators_as_plain_words,
    search_snippets_mark_matches_and_escape_html,
    search_follows_edits_and_deletes,
    builds_context_within_the_budget,
    stores_summaries,
    archives_and_deletes_idle_conversations,
);

mod cases {
    use super::*;

    /// Now, at the microsecond precision both stores keep, so round trips compare equal.
    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap()
    }

    fn conversation(participants: &[&str]) -> Conversation {
        let at = now();
        Conversation {
            id: Uuid::now_v7(),
            title: Some("Deploys".into()),
            participants: participants.iter().map(|p| p.to_string()).collect(),
            metadata: json!({"guild": "mkww"}),
            archived: false,
            summary: None,
            created_by: Some("test".into()),
            created_at: at,
            updated_at: at,
        }
    }

    fn message(conversation: &Conversation, author: &str, content: &str) -> Message {
        Message {
            id: Uuid::now_v7(),
            conversation_id: conversation.id,
            author: author.into(),
            role: MessageRole::User,
            content: content.into(),
            metadata: json!({}),
            pinned: false,
            tokens: estimate_tokens(content),
            created_at: now(),
            created_by: Some(format!("key:{author}")),
        }
    }

    async fn with_messages(
        store: &dyn MemoryStore,
        texts: &[&str],
    ) -> (Conversation, Vec<Message>) {
        let c = conversation(&["ann"]);
        store.create_conversation(&c, None).await.unwrap();
        let messages: Vec<Message> = texts.iter().map(|t| message(&c, "ann", t)).collect();
        assert!(
            store
                .append_messages(c.id, &messages, now(), None)
                .await
                .unwrap()
        );
        (c, messages)
    }

    fn search(q: &str) -> SearchRequest {
        SearchRequest {
            query: SearchQuery::parse(q).unwrap(),
            conversation_id: None,
            author: None,
            role: None,
            since: None,
            until: None,
            offset: 0,
            limit: 50,
        }
    }

    /// The contents found, best first.
    async fn found(store: &dyn MemoryStore, request: SearchRequest) -> Vec<String> {
        store
            .search(&request)
            .await
            .unwrap()
            .into_iter()
            .map(|h| h.message.content)
            .collect()
    }

    async fn found_sorted(store: &dyn MemoryStore, q: &str) -> Vec<String> {
        let mut hits = found(store, search(q)).await;
        hits.sort();
        hits
    }

    pub async fn round_trips_conversations(store: &dyn MemoryStore) {
        let c = conversation(&["ann", "bot"]);
        store.create_conversation(&c, None).await.unwrap();
        assert_eq!(store.conversation(c.id).await.unwrap(), Some(c.clone()));
        assert_eq!(store.conversation(Uuid::now_v7()).await.unwrap(), None);
    }

    pub async fn refuses_a_taken_conversation_id(store: &dyn MemoryStore) {
        let c = conversation(&[]);
        store.create_conversation(&c, None).await.unwrap();
        let again = store.create_conversation(&c, None).await;
        assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    }

    pub async fn lists_conversations_newest_first_with_filters_and_cursor(store: &dyn MemoryStore) {
        let a = conversation(&["ann"]);
        let b = conversation(&["bob"]);
        let mut c = conversation(&["ann", "bob"]);
        c.archived = true;
        for x in [&a, &b, &c] {
            store.create_conversation(x, None).await.unwrap();
        }
        let ids = |list: Vec<Conversation>| list.into_iter().map(|c| c.id).collect::<Vec<_>>();
        let all = |filter: ConversationFilter| async move {
            ids(store.list_conversations(&filter).await.unwrap())
        };
        let page = ConversationFilter {
            limit: 10,
            ..Default::default()
        };
        assert_eq!(all(page.clone()).await, vec![c.id, b.id, a.id]);
        let ann = ConversationFilter {
            participant: Some("ann".into()),
            ..page.clone()
        };
        assert_eq!(all(ann).await, vec![c.id, a.id]);
        let live = ConversationFilter {
            archived: Some(false),
            ..page.clone()
        };
        assert_eq!(all(live).await, vec![b.id, a.id]);
        let next = ConversationFilter {
            before: Some(c.id),
            limit: 1,
            ..page
        };
        assert_eq!(all(next).await, vec![b.id]);
    }

    pub async fn patches_conversations(store: &dyn MemoryStore) {
        let c = conversation(&["ann"]);
        store.create_conversation(&c, None).await.unwrap();
        let later = now() + Span::seconds(5);
        let patched = store
            .update_conversation(
                c.id,
                &ConversationPatch {
                    title: Some(None),
                    participants: Some(vec!["ann".into(), "cat".into()]),
                    metadata: None,
                    archived: Some(true),
                },
                later,
                None,
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(patched.title, None);
        assert_eq!(patched.participants, vec!["ann", "cat"]);
        assert_eq!(patched.metadata, c.metadata);
        assert!(patched.archived);
        assert_eq!(patched.updated_at, later);
        let none = store
            .update_conversation(Uuid::now_v7(), &ConversationPatch::default(), later, None)
            .await
            .unwrap();
        assert_eq!(none, None);
    }

    pub async fn deleting_a_conversation_deletes_its_messages(store: &dyn MemoryStore) {
        let (c, messages) = with_messages(store, &["zebra crossing"]).await;
        assert!(store.delete_conversation(c.id, None).await.unwrap());
        assert!(!store.delete_conversation(c.id, None).await.unwrap());
        assert_eq!(store.message(c.id, messages[0].id).await.unwrap(), None);
        assert!(found(store, search("zebra")).await.is_empty());
    }

    pub async fn appends_messages_in_order_and_pages_both_ways(store: &dyn MemoryStore) {
        let texts: Vec<String> = (0..7).map(|i| format!("message {i}")).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let (c, messages) = with_messages(store, &refs).await;
        let contents = |list: Vec<Message>| list.into_iter().map(|m| m.content).collect::<Vec<_>>();
        let newest = store
            .list_messages(c.id, MessagePage::Newest, 3)
            .await
            .unwrap();
        assert_eq!(newest[0], messages[6], "messages round-trip whole");
        assert_eq!(contents(newest), ["message 6", "message 5", "message 4"]);
        let before = store
            .list_messages(c.id, MessagePage::Before(messages[4].id), 3)
            .await
            .unwrap();
        assert_eq!(contents(before), ["message 3", "message 2", "message 1"]);
        let after = store
            .list_messages(c.id, MessagePage::After(messages[4].id), 3)
            .await
            .unwrap();
        assert_eq!(contents(after), ["message 5", "message 6"]);
        let elsewhere = store
            .list_messages(Uuid::now_v7(), MessagePage::After(messages[0].id), 3)
            .await
            .unwrap();
        assert!(elsewhere.is_empty());
    }

    pub async fn appending_to_an_unknown_conversation_stores_nothing(store: &dyn MemoryStore) {
        let ghost = conversation(&[]);
        let m = message(&ghost, "ann", "hello");
        assert!(
            !store
                .append_messages(ghost.id, &[m], now(), None)
                .await
                .unwrap()
        );
        assert!(found(store, search("hello")).await.is_empty());
    }

    pub async fn a_batch_with_a_taken_message_id_stores_nothing(store: &dyn MemoryStore) {
        let (c, messages) = with_messages(store, &["first"]).await;
        let fresh = message(&c, "ann", "second");
        let result = store
            .append_messages(c.id, &[fresh.clone(), messages[0].clone()], now(), None)
            .await;
        assert!(matches!(result, Err(StoreError::Conflict(_))), "{result:?}");
        assert_eq!(store.message(c.id, fresh.id).await.unwrap(), None);
        assert!(found(store, search("second")).await.is_empty());
    }

    pub async fn appending_revives_an_archived_conversation(store: &dyn MemoryStore) {
        let mut c = conversation(&[]);
        c.archived = true;
        store.create_conversation(&c, None).await.unwrap();
        let later = now() + Span::seconds(1);
        let m = message(&c, "ann", "back again");
        assert!(
            store
                .append_messages(c.id, &[m], later, None)
                .await
                .unwrap()
        );
        let c = store.conversation(c.id).await.unwrap().unwrap();
        assert!(!c.archived);
        assert_eq!(c.updated_at, later);
    }

    pub async fn patches_pins_and_deletes_messages(store: &dyn MemoryStore) {
        let (c, messages) = with_messages(store, &["one", "two", "three"]).await;
        let later = now() + Span::seconds(3);
        let pinned = store
            .update_message(
                c.id,
                messages[0].id,
                &MessagePatch {
                    content: Some("one, edited at length".into()),
                    metadata: Some(json!({"edited": true})),
                    pinned: Some(true),
                },
                later,
                None,
            )
            .await
            .unwrap()
            .unwrap();
        assert!(pinned.pinned);
        assert_eq!(pinned.content, "one, edited at length");
        assert_eq!(pinned.tokens, estimate_tokens("one, edited at length"));
        assert_eq!(pinned.metadata, json!({"edited": true}));
        assert_eq!(
            store.conversation(c.id).await.unwrap().unwrap().updated_at,
            later
        );
        let pins = store.pinned_messages(c.id, 10).await.unwrap();
        assert_eq!(pins, vec![pinned.clone()]);
        let wrong_conversation = store
            .update_message(
                Uuid::now_v7(),
                messages[1].id,
                &MessagePatch::default(),
                later,
                None,
            )
            .await
            .unwrap();
        assert_eq!(wrong_conversation, None);
        assert!(
            store
                .delete_message(c.id, messages[1].id, later, None)
                .await
                .unwrap()
        );
        assert!(
            !store
                .delete_message(c.id, messages[1].id, later, None)
                .await
                .unwrap()
        );
        let left = store
            .list_messages(c.id, MessagePage::After(messages[0].id), 10)
            .await
            .unwrap();
        assert_eq!(left, vec![messages[2].clone()]);
    }

    pub async fn searches_words_phrases_exclusions_and_alternatives(store: &dyn MemoryStore) {
        with_messages(
            store,
            &[
                "the build failed on the runner",
                "failed build, retry later",
                "deploy finished without errors",
                "rollback of the deploy started",
                "coffee break",
            ],
        )
        .await;
        assert_eq!(
            found_sorted(store, "build failed").await,
            [
                "failed build, retry later",
                "the build failed on the runner"
            ]
        );
        assert_eq!(
            found_sorted(store, "\"build failed\"").await,
            ["the build failed on the runner"]
        );
        assert_eq!(
            found_sorted(store, "deploy -rollback").await,
            ["deploy finished without errors"]
        );
        assert_eq!(
            found_sorted(store, "coffee or rollback").await,
            ["coffee break", "rollback of the deploy started"]
        );
        assert_eq!(
            found_sorted(store, "build retry or deploy errors").await,
            [
                "deploy finished without errors",
                "failed build, retry later"
            ]
        );
        assert!(found(store, search("nothing-like-this")).await.is_empty());
    }

    pub async fn search_stems_english_words_without_stop_words(store: &dyn MemoryStore) {
        with_messages(
            store,
            &[
                "the servers were running hot",
                "a server runs",
                "it is what it is",
            ],
        )
        .await;
        assert_eq!(
            found_sorted(store, "server running").await,
            ["a server runs", "the servers were running hot"]
        );
        // Stop words are words like any other: "it is" finds the one message with them.
        assert_eq!(found_sorted(store, "\"it is\"").await, ["it is what it is"]);
        assert_eq!(
            found_sorted(store, "the").await,
            ["the servers were running hot"]
        );
    }

    pub async fn search_ranks_better_matches_first_and_pages_by_offset(store: &dyn MemoryStore) {
        with_messages(
            store,
            &[
                "kiwi",
                "kiwi kiwi kiwi and a few other words around it",
                "one kiwi among a great many other words that dilute the match quite a lot",
            ],
        )
        .await;
        let hits = store.search(&search("kiwi")).await.unwrap();
        assert_eq!(hits.len(), 3);
        assert!(hits.windows(2).all(|w| w[0].rank >= w[1].rank), "{hits:?}");
        assert!(hits[2].message.content.starts_with("one kiwi"), "{hits:?}");
        let mut second = search("kiwi");
        second.offset = 1;
        second.limit = 1;
        let page = store.search(&second).await.unwrap();
        assert_eq!(page[0].message, hits[1].message);
    }

    pub async fn search_ranks_only_the_newest_matches_of_a_broad_query(store: &dyn MemoryStore) {
        let bound = mcp_core::memory::RANKED_MATCHES as usize;
        let c = conversation(&["ann"]);
        store.create_conversation(&c, None).await.unwrap();
        // The oldest 20 would rank best, but more than `bound` newer messages match too.
        let mut texts: Vec<String> = (0..20)
            .map(|i| format!("lime lime lime special {i}"))
            .collect();
        texts.extend((0..bound + 30).map(|i| format!("lime among many other words here {i}")));
        let messages: Vec<Message> = texts.iter().map(|t| message(&c, "ann", t)).collect();
        for chunk in messages.chunks(500) {
            assert!(
                store
                    .append_messages(c.id, chunk, now(), None)
                    .await
                    .unwrap()
            );
        }
        let best = found(store, search("lime")).await;
        assert_eq!(best.len(), 50);
        assert!(
            best.iter().all(|t| !t.contains("special")),
            "only the newest {bound} matches are ranked"
        );
        let mut last = search("lime");
        last.offset = bound as u32 - 10;
        last.limit = 50;
        assert_eq!(
            found(store, last).await.len(),
            10,
            "results end at the bound"
        );
        // A narrower query reaches the old messages.
        assert_eq!(found(store, search("lime special")).await.len(), 20);
    }

    pub async fn search_filters_by_conversation_author_role_and_time(store: &dyn MemoryStore) {
        let (a, _) = with_messages(store, &["alpha report"]).await;
        let b = conversation(&[]);
        store.create_conversation(&b, None).await.unwrap();
        let mut by_bot = message(&b, "bot", "alpha answer");
        by_bot.role = MessageRole::Assistant;
        by_bot.created_at = now() - Span::days(2);
        assert!(
            store
                .append_messages(b.id, &[by_bot], now(), None)
                .await
                .unwrap()
        );
        let request = |f: &dyn Fn(&mut SearchRequest)| {
            let mut r = search("alpha");
            f(&mut r);
            r
        };
        assert_eq!(found(store, request(&|_| {})).await.len(), 2);
        assert_eq!(
            found(store, request(&|r| r.conversation_id = Some(a.id))).await,
            ["alpha report"]
        );
        assert_eq!(
            found(store, request(&|r| r.author = Some("bot".into()))).await,
            ["alpha answer"]
        );
        assert_eq!(
            found(store, request(&|r| r.role = Some(MessageRole::User))).await,
            ["alpha report"]
        );
        assert_eq!(
            found(store, request(&|r| r.since = Some(now() - Span::days(1)))).await,
            ["alpha report"]
        );
        assert_eq!(
            found(store, request(&|r| r.until = Some(now() - Span::days(1)))).await,
            ["alpha answer"]
        );
    }

    pub async fn search_treats_fts_operators_as_plain_words(store: &dyn MemoryStore) {
        with_messages(
            store,
            &["near the content column", "title: secret AND stuff", "a*b"],
        )
        .await;
        for q in [
            "NEAR(content column)",
            "content:near",
            "title:secret",
            "AND",
            "a*",
            "^near",
            "\"unbalanced",
            "(((",
            "col OR",
            "'quoted'",
        ] {
            let Ok(query) = SearchQuery::parse(q) else {
                continue;
            };
            let mut request = search("x");
            request.query = query;
            store
                .search(&request)
                .await
                .unwrap_or_else(|e| panic!("{q:?} failed: {e}"));
        }
        assert_eq!(
            found_sorted(store, "title:secret").await,
            ["title: secret AND stuff"]
        );
        assert_eq!(
            found_sorted(store, "and").await,
            ["title: secret AND stuff"]
        );
    }

    pub async fn search_snippets_mark_matches_and_escape_html(store: &dyn MemoryStore) {
        with_messages(store, &["<b>bold</b> & the walrus sings"]).await;
        let hits = store.search(&search("walrus")).await.unwrap();
        assert_eq!(hits.len(), 1);
        let snippet = &hits[0].snippet;
        assert!(snippet.contains("<mark>walrus</mark>"), "{snippet}");
        // SQLite keeps the tag as (escaped) text; PostgreSQL's parser drops markup-like tags.
        // Either way no markup from the content reaches the snippet.
        assert!(!snippet.contains("<b>"), "{snippet}");
        assert!(snippet.contains("&amp;"), "{snippet}");
    }

    pub async fn search_follows_edits_and_deletes(store: &dyn MemoryStore) {
        let (c, messages) = with_messages(store, &["original wording", "other"]).await;
        let patch = MessagePatch {
            content: Some("replaced phrasing".into()),
            ..Default::default()
        };
        store
            .update_message(c.id, messages[0].id, &patch, now(), None)
            .await
            .unwrap();
        assert!(found(store, search("original")).await.is_empty());
        assert_eq!(
            found(store, search("phrasing")).await,
            ["replaced phrasing"]
        );
        store
            .delete_message(c.id, messages[0].id, now(), None)
            .await
            .unwrap();
        assert!(found(store, search("phrasing")).await.is_empty());
    }

    pub async fn builds_context_within_the_budget(store: &dyn MemoryStore) {
        // Each message: 8 characters → 2 tokens + 4 overhead = 6 tokens.
        let texts = ["aaaaaaaa", "bbbbbbbb", "cccccccc", "dddddddd", "eeeeeeee"];
        let (c, messages) = with_messages(store, &texts).await;
        let pin = MessagePatch {
            pinned: Some(true),
            ..Default::default()
        };
        store
            .update_message(c.id, messages[0].id, &pin, now(), None)
            .await
            .unwrap();
        let summary = Summary {
            text: "ssss".into(),
            through: Some(messages[1].id),
            tokens: estimate_tokens("ssss"),
            updated_at: now(),
        };
        let c = store
            .set_summary(c.id, &summary, None)
            .await
            .unwrap()
            .unwrap();
        // 5 (summary) + 6 (pinned) + 2 × 6 (newest) = 23 ≤ 24 < 29.
        let context = build_context(store, &c, 24).await.unwrap();
        assert_eq!(context.summary, Some(summary));
        assert_eq!(context.pinned.len(), 1);
        assert_eq!(context.pinned[0].content, "aaaaaaaa");
        let contents: Vec<&str> = context
            .messages
            .iter()
            .map(|m| m.content.as_str())
            .collect();
        assert_eq!(contents, ["dddddddd", "eeeeeeee"]);
        assert_eq!(context.tokens, 23);
        let everything = build_context(store, &c, 1000).await.unwrap();
        assert_eq!(everything.messages.len(), 4);
        assert_eq!(everything.tokens, 5 + 5 * 6);
        let tiny = build_context(store, &c, 3).await.unwrap();
        assert_eq!(
            (
                tiny.summary,
                tiny.pinned.len(),
                tiny.messages.len(),
                tiny.tokens
            ),
            (None, 0, 0, 0)
        );
    }

    pub async fn stores_summaries(store: &dyn MemoryStore) {
        let c = conversation(&[]);
        store.create_conversation(&c, None).await.unwrap();
        let summary = Summary {
            text: "they talked".into(),
            through: None,
            tokens: estimate_tokens("they talked"),
            updated_at: now(),
        };
        let stored = store
            .set_summary(c.id, &summary, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.summary, Some(summary.clone()));
        assert_eq!(stored.updated_at, c.updated_at, "a summary is not activity");
        assert_eq!(
            store
                .set_summary(Uuid::now_v7(), &summary, None)
                .await
                .unwrap(),
            None
        );
    }

    pub async fn archives_and_deletes_idle_conversations(store: &dyn MemoryStore) {
        let mut old = conversation(&[]);
        old.updated_at = now() - Span::days(40);
        let mut idle = conversation(&[]);
        idle.updated_at = now() - Span::days(10);
        let fresh = conversation(&[]);
        for c in [&old, &idle, &fresh] {
            store.create_conversation(c, None).await.unwrap();
        }
        let m = message(&old, "ann", "ancient history");
        assert!(
            store
                .append_messages(old.id, &[m], old.updated_at, None)
                .await
                .unwrap()
        );
        assert_eq!(store.archive_idle(now() - Span::days(7)).await.unwrap(), 2);
        assert_eq!(store.archive_idle(now() - Span::days(7)).await.unwrap(), 0);
        assert!(store.conversation(idle.id).await.unwrap().unwrap().archived);
        assert!(
            !store
                .conversation(fresh.id)
                .await
                .unwrap()
                .unwrap()
                .archived
        );
        assert_eq!(store.delete_idle(now() - Span::days(30)).await.unwrap(), 1);
        assert_eq!(store.conversation(old.id).await.unwrap(), None);
        assert!(found(store, search("ancient")).await.is_empty());
        assert!(store.conversation(idle.id).await.unwrap().is_some());
    }
}
