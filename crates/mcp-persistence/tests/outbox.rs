//! One conformance suite for the webhook outbox and the pending Discord follow-ups of both task
//! stores: every case runs against SQLite (a fresh file) and PostgreSQL (a fresh schema in
//! `MCP_TEST_DATABASE_URL`, dropped afterwards). With `CI` set (to any value) an unreachable
//! PostgreSQL fails the suite instead of skipping it.

#[macro_use]
mod common;

use chrono::{Duration as Span, Utc};
use common::Backend;
use mcp_core::followups::{FollowupStore, PendingFollowup};
use mcp_core::memory::{
    ChangeEvent, Conversation, ConversationPatch, MEMORY_EVENTS, MemoryStore, Message,
    MessagePatch, MessageRole, Summary,
};
use mcp_core::task::{CreateTask, TaskDefaults};
use mcp_core::webhooks::{DELIVER_TASK, Outbox, TASK_EVENTS};
use mcp_core::{ClaimRequest, Completion, NewTask, Outcome, TaskError, TaskStatus, TaskStore};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

const OWNER: &str = "node-a";
const LEASE: Duration = Duration::from_secs(30);

fn new_task(task_type: &str) -> NewTask {
    CreateTask {
        task_type: task_type.into(),
        payload: Some(json!({"n": 1})),
        correlation_id: Some("corr-1".into()),
        ..Default::default()
    }
    .validate(&TaskDefaults::default(), Utc::now())
    .unwrap()
}

fn claim(types: &[&str]) -> ClaimRequest {
    ClaimRequest {
        owner: OWNER.into(),
        types: types.iter().map(|t| (*t).to_owned()).collect(),
        limit: 10,
        lease: LEASE,
        share: Default::default(),
    }
}

fn all_events() -> Vec<String> {
    TASK_EVENTS.iter().map(|e| (*e).to_owned()).collect()
}

/// Everything in the outbox, in order, as `(event type, task id, task status)`.
async fn drain(outbox: &Arc<dyn Outbox>) -> Vec<(String, String, String)> {
    let entries = outbox.claim_outbox(1000, LEASE).await.unwrap();
    let ids: Vec<i64> = entries.iter().map(|e| e.id).collect();
    assert_eq!(outbox.delete_outbox(&ids).await.unwrap(), ids.len() as u64);
    entries
        .into_iter()
        .map(|e| {
            let data = &e.event.data;
            (
                e.event.event_type,
                data["id"].as_str().unwrap().to_owned(),
                data["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

mod cases {
    use super::*;

    pub async fn transitions_record_nothing_while_no_event_is_wanted(backend: &Backend) {
        let tasks: Arc<dyn TaskStore> = backend.port();
        let outbox: Arc<dyn Outbox> = backend.port();
        tasks.insert(&[new_task("noop")]).await.unwrap();
        let claimed = tasks.claim(&claim(&["noop"])).await.unwrap();
        let done = Completion {
            id: claimed[0].id,
            outcome: Outcome::Succeeded(json!({"ok": true})),
        };
        tasks.complete(OWNER, &[done]).await.unwrap();
        assert_eq!(outbox.outbox_len().await.unwrap(), 0);
        assert!(outbox.claim_outbox(10, LEASE).await.unwrap().is_empty());
    }

    pub async fn every_transition_records_its_event_with_the_task_after_it(backend: &Backend) {
        let tasks: Arc<dyn TaskStore> = backend.port();
        let outbox: Arc<dyn Outbox> = backend.port();
        outbox.record_events(all_events());
        let a = new_task("noop");
        let b = new_task("noop");
        let c = new_task("noop");
        let (a_id, b_id, c_id) = (a.id, b.id, c.id);
        tasks.insert(&[a, b, c]).await.unwrap();
        let claimed = tasks.claim(&claim(&["noop"])).await.unwrap();
        assert_eq!(claimed.len(), 3);
        let error = TaskError {
            message: "boom".into(),
            attempt: 1,
            details: None,
        };
        let changed = tasks
            .complete(
                OWNER,
                &[
                    Completion {
                        id: a_id,
                        outcome: Outcome::Succeeded(json!({"answer": 42})),
                    },
                    Completion {
                        id: b_id,
                        outcome: Outcome::Dead(error.clone()),
                    },
                ],
            )
            .await
            .unwrap();
        assert_eq!(changed.len(), 2);
        assert_eq!(tasks.release(OWNER, &[c_id]).await.unwrap(), 1);
        tasks.retry(b_id).await.unwrap();
        tasks.cancel(c_id).await.unwrap();
        tasks.cancel(a_id).await.unwrap(); // already final: no event
        let entries = outbox.claim_outbox(1000, LEASE).await.unwrap();
        let first = &entries[0];
        assert_eq!(first.event.event_type, "task.created");
        assert_eq!(first.event.correlation_id.as_deref(), Some("corr-1"));
        assert_eq!(first.event.data["payload"], json!({"n": 1}));
        assert_eq!(first.event.data["type"], "noop");
        let succeeded = entries
            .iter()
            .find(|e| e.event.event_type == "task.succeeded")
            .unwrap();
        assert_eq!(succeeded.event.data["result"], json!({"answer": 42}));
        assert_eq!(succeeded.event.data["id"], json!(a_id));
        let dead = entries
            .iter()
            .find(|e| e.event.event_type == "task.dead")
            .unwrap();
        assert_eq!(dead.event.data["error"]["message"], "boom");
        let ids: Vec<i64> = entries.iter().map(|e| e.id).collect();
        outbox.delete_outbox(&ids).await.unwrap();
        let mut seen: Vec<(String, Uuid)> = entries
            .iter()
            .map(|e| {
                let id = e.event.data["id"].as_str().unwrap().parse().unwrap();
                (e.event.event_type.clone(), id)
            })
            .collect();
        // Each task's events in the order they happened.
        let of = |id: Uuid| -> Vec<String> {
            seen.iter()
                .filter(|(_, t)| *t == id)
                .map(|(e, _)| e.clone())
                .collect()
        };
        assert_eq!(of(a_id), ["task.created", "task.started", "task.succeeded"]);
        assert_eq!(
            of(b_id),
            ["task.created", "task.started", "task.dead", "task.retrying"]
        );
        assert_eq!(
            of(c_id),
            [
                "task.created",
                "task.started",
                "task.retrying",
                "task.cancelled"
            ]
        );
        seen.clear();
        assert_eq!(outbox.outbox_len().await.unwrap(), 0);
    }

    pub async fn records_only_the_wanted_events_and_never_delivery_tasks(backend: &Backend) {
        let tasks: Arc<dyn TaskStore> = backend.port();
        let outbox: Arc<dyn Outbox> = backend.port();
        outbox.record_events(vec!["task.succeeded".into()]);
        tasks
            .insert(&[new_task("noop"), new_task(DELIVER_TASK)])
            .await
            .unwrap();
        let claimed = tasks.claim(&claim(&["noop", DELIVER_TASK])).await.unwrap();
        let done: Vec<Completion> = claimed
            .iter()
            .map(|t| Completion {
                id: t.id,
                outcome: Outcome::Succeeded(Value::Null),
            })
            .collect();
        tasks.complete(OWNER, &done).await.unwrap();
        let recorded = drain(&outbox).await;
        assert_eq!(recorded.len(), 1, "{recorded:?}");
        assert_eq!(recorded[0].0, "task.succeeded");
        assert_eq!(recorded[0].2, TaskStatus::Succeeded.as_str());
        // Switched off again: nothing more.
        outbox.record_events(Vec::new());
        tasks.insert(&[new_task("noop")]).await.unwrap();
        assert_eq!(outbox.outbox_len().await.unwrap(), 0);
    }

    pub async fn a_claimed_entry_is_not_taken_again_until_its_lease_ends(backend: &Backend) {
        let tasks: Arc<dyn TaskStore> = backend.port();
        let outbox: Arc<dyn Outbox> = backend.port();
        outbox.record_events(all_events());
        tasks
            .insert(&[new_task("noop"), new_task("noop")])
            .await
            .unwrap();
        let first = outbox
            .claim_outbox(1, Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!(first.len(), 1);
        // The other dispatcher gets the next entry, not the one held.
        let second = outbox.claim_outbox(10, LEASE).await.unwrap();
        assert_eq!(second.len(), 1);
        assert!(second[0].id > first[0].id);
        assert!(outbox.claim_outbox(10, LEASE).await.unwrap().is_empty());
        // The holder died: its lease ends and the entry is taken again, the same entry.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let again = loop {
            let again = outbox.claim_outbox(10, LEASE).await.unwrap();
            if !again.is_empty() || tokio::time::Instant::now() > deadline {
                break again;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(again.len(), 1);
        assert_eq!(again[0], first[0]);
    }

    pub async fn rescued_tasks_record_retrying_or_dead(backend: &Backend) {
        let tasks: Arc<dyn TaskStore> = backend.port();
        let outbox: Arc<dyn Outbox> = backend.port();
        let mut once = new_task("noop");
        once.max_attempts = 1;
        tasks.insert(&[once, new_task("noop")]).await.unwrap();
        let mut short = claim(&["noop"]);
        short.lease = Duration::from_millis(1);
        assert_eq!(tasks.claim(&short).await.unwrap().len(), 2);
        outbox.record_events(all_events());
        tokio::time::sleep(Duration::from_millis(20)).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut rescued = 0;
        while rescued < 2 && tokio::time::Instant::now() < deadline {
            rescued += tasks.rescue().await.unwrap().len();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(rescued, 2);
        let mut events: Vec<String> = drain(&outbox).await.into_iter().map(|e| e.0).collect();
        events.sort();
        assert_eq!(events, ["task.dead", "task.retrying"]);
    }

    pub async fn memory_changes_record_their_wanted_event_with_the_change(backend: &Backend) {
        let memory: Arc<dyn MemoryStore> = backend.port();
        let outbox: Arc<dyn Outbox> = backend.port();
        let now = Utc::now();
        let conversation = Conversation {
            id: Uuid::now_v7(),
            title: Some("ops".into()),
            participants: vec![],
            metadata: json!({}),
            archived: false,
            summary: None,
            created_by: Some("ann".into()),
            created_at: now,
            updated_at: now,
        };
        let message = |text: &str| Message {
            id: Uuid::now_v7(),
            conversation_id: conversation.id,
            author: "ann".into(),
            role: MessageRole::User,
            content: text.into(),
            metadata: json!({}),
            pinned: false,
            tokens: 1,
            created_at: now,
            created_by: Some("ann".into()),
        };
        let event = |t| Some(ChangeEvent::new(t, Some("corr-m")));
        // Nothing wanted: the change is stored, nothing recorded.
        memory
            .create_conversation(&conversation, event("memory.conversation.created"))
            .await
            .unwrap();
        assert_eq!(outbox.outbox_len().await.unwrap(), 0);

        outbox.record_events(MEMORY_EVENTS.iter().map(|e| (*e).to_owned()).collect());
        let (first, second) = (message("one"), message("two"));
        let created = event("memory.message.created");
        assert!(
            memory
                .append_messages(
                    conversation.id,
                    &[first.clone(), second.clone()],
                    now,
                    created
                )
                .await
                .unwrap()
        );
        let pin = MessagePatch {
            pinned: Some(true),
            ..MessagePatch::default()
        };
        let updated = event("memory.message.updated");
        memory
            .update_message(conversation.id, first.id, &pin, now, updated)
            .await
            .unwrap();
        let deleted = event("memory.message.deleted");
        memory
            .delete_message(conversation.id, second.id, now, deleted)
            .await
            .unwrap();
        // A change that finds nothing records nothing.
        let ghost = event("memory.message.deleted");
        memory
            .delete_message(conversation.id, second.id, now, ghost)
            .await
            .unwrap();
        let summary = Summary {
            text: "short".into(),
            through: None,
            tokens: 1,
            updated_at: now,
        };
        let summarized = event("memory.conversation.summarized");
        memory
            .set_summary(conversation.id, &summary, summarized)
            .await
            .unwrap();
        let archive = ConversationPatch {
            archived: Some(true),
            ..ConversationPatch::default()
        };
        let changed = event("memory.conversation.updated");
        memory
            .update_conversation(conversation.id, &archive, now, changed)
            .await
            .unwrap();
        // The steps of an import make no event of their own.
        memory
            .append_messages(conversation.id, &[message("quiet")], now, None)
            .await
            .unwrap();
        let gone = event("memory.conversation.deleted");
        assert!(
            memory
                .delete_conversation(conversation.id, gone)
                .await
                .unwrap()
        );

        let entries = outbox.claim_outbox(100, LEASE).await.unwrap();
        let seen: Vec<(&str, &Value)> = entries
            .iter()
            .map(|e| (e.event.event_type.as_str(), &*e.event.data))
            .collect();
        let types: Vec<&str> = seen.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            types,
            [
                "memory.message.created",
                "memory.message.created",
                "memory.message.updated",
                "memory.message.deleted",
                "memory.conversation.summarized",
                "memory.conversation.updated",
                "memory.conversation.deleted",
            ]
        );
        // The data is what receivers always got: the message or conversation after the change.
        assert_eq!(seen[0].1, &json!(first));
        assert_eq!(seen[1].1["content"], "two");
        assert_eq!(seen[2].1["pinned"], true);
        assert_eq!(
            seen[3].1,
            &json!({"id": second.id, "conversation_id": conversation.id})
        );
        assert_eq!(seen[4].1["summary"]["text"], "short");
        assert_eq!(seen[5].1["archived"], true);
        assert_eq!(seen[6].1, &json!({"id": conversation.id}));
        assert!(
            entries
                .iter()
                .all(|e| e.event.correlation_id.as_deref() == Some("corr-m"))
        );
        // Memory and task events share one order.
        let tasks: Arc<dyn TaskStore> = backend.port();
        outbox.record_events(all_events());
        tasks.insert(&[new_task("noop")]).await.unwrap();
        let next = outbox.claim_outbox(100, LEASE).await.unwrap();
        assert_eq!(next.len(), 1);
        assert!(next[0].id > entries.last().unwrap().id);
    }

    pub async fn followups_come_due_when_their_task_is_final_or_stale(backend: &Backend) {
        let tasks: Arc<dyn TaskStore> = backend.port();
        let store: Arc<dyn FollowupStore> = backend.port();
        let now = Utc::now();
        let running = new_task("noop");
        let waiting = new_task("echo");
        let (running_id, waiting_id) = (running.id, waiting.id);
        tasks.insert(&[running, waiting]).await.unwrap();
        let followup = |task_id, age: Span| PendingFollowup {
            task_id,
            sealed: "sealed".into(),
            created_by: "discord:1".into(),
            created_at: now - age,
        };
        store
            .save_followup(&followup(running_id, Span::seconds(5)))
            .await
            .unwrap();
        // Saved twice (a retried interaction): one row, no error.
        store
            .save_followup(&followup(running_id, Span::seconds(5)))
            .await
            .unwrap();
        store
            .save_followup(&followup(waiting_id, Span::minutes(20)))
            .await
            .unwrap();
        let gone = Uuid::now_v7();
        store
            .save_followup(&followup(gone, Span::seconds(1)))
            .await
            .unwrap();
        let stale = now - Span::minutes(14);
        let due: Vec<Uuid> = store
            .due_followups(stale, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.task_id)
            .collect();
        // Oldest first: the stale one, then the one whose task is not stored.
        assert_eq!(due, [waiting_id, gone]);
        tasks.claim(&claim(&["noop"])).await.unwrap();
        tasks
            .complete(
                OWNER,
                &[Completion {
                    id: running_id,
                    outcome: Outcome::Succeeded(Value::Null),
                }],
            )
            .await
            .unwrap();
        let due = store.due_followups(stale, 10).await.unwrap();
        assert_eq!(due.len(), 3);
        let first = due.iter().find(|f| f.task_id == running_id).unwrap();
        assert_eq!(first.sealed, "sealed");
        assert_eq!(first.created_by, "discord:1");
        assert!(store.delete_followup(running_id).await.unwrap());
        assert!(!store.delete_followup(running_id).await.unwrap());
        assert_eq!(store.due_followups(stale, 10).await.unwrap().len(), 2);
    }

    pub async fn a_task_event_keeps_the_task_trace_context(backend: &Backend) {
        let tasks: Arc<dyn TaskStore> = backend.port();
        let outbox: Arc<dyn Outbox> = backend.port();
        outbox.record_events(all_events());
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut traced = new_task("noop");
        traced.traceparent = Some(parent.into());
        tasks.insert(&[traced, new_task("noop")]).await.unwrap();
        let entries = outbox.claim_outbox(10, LEASE).await.unwrap();
        let contexts: Vec<Option<&str>> =
            entries.iter().map(|e| e.traceparent.as_deref()).collect();
        assert_eq!(contexts, [Some(parent), None]);
        // Receivers see the trace id only.
        assert_eq!(
            entries[0].event.data["trace_id"],
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(entries[1].event.data.get("trace_id").is_none());
    }
}

conformance!(
    transitions_record_nothing_while_no_event_is_wanted,
    every_transition_records_its_event_with_the_task_after_it,
    records_only_the_wanted_events_and_never_delivery_tasks,
    a_claimed_entry_is_not_taken_again_until_its_lease_ends,
    rescued_tasks_record_retrying_or_dead,
    memory_changes_record_their_wanted_event_with_the_change,
    followups_come_due_when_their_task_is_final_or_stale,
    a_task_event_keeps_the_task_trace_context,
);
