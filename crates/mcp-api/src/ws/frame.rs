//! The WebSocket frame decoder: client text frames → `ClientFrame`, or a `FrameError` carrying
//! the frame's `id` (when it had a usable one) and a stable code. Never panics, whatever arrives.

use mcp_core::events::StreamPosition;
use serde::Deserialize;
use serde_json::Value;

/// What a client asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Auth {
        token: String,
    },
    Subscribe {
        channel: String,
        since: Option<StreamPosition>,
    },
    Unsubscribe {
        channel: String,
    },
    Publish {
        channel: String,
        data: Value,
    },
    TaskCreate {
        task: Value,
    },
    TaskCancel {
        task_id: String,
    },
    Ping,
    WorkerRegister {
        types: Vec<String>,
        concurrency: usize,
    },
    TaskHeartbeat {
        task_id: String,
    },
    TaskComplete {
        task_id: String,
        result: Value,
    },
    TaskFail {
        task_id: String,
        error: WorkerError,
        retryable: bool,
        /// The worker got a remote 429 with `Retry-After`: reschedule the task this many
        /// milliseconds from now without spending the attempt.
        retry_after_ms: Option<u64>,
    },
    TaskProgress {
        task_id: String,
        progress: f64,
        message: Option<String>,
    },
}

impl Op {
    /// The op's name as the client wrote it (`task.create`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Op::Auth { .. } => "auth",
            Op::Subscribe { .. } => "subscribe",
            Op::Unsubscribe { .. } => "unsubscribe",
            Op::Publish { .. } => "publish",
            Op::TaskCreate { .. } => "task.create",
            Op::TaskCancel { .. } => "task.cancel",
            Op::Ping => "ping",
            Op::WorkerRegister { .. } => "worker.register",
            Op::TaskHeartbeat { .. } => "task.heartbeat",
            Op::TaskComplete { .. } => "task.complete",
            Op::TaskFail { .. } => "task.fail",
            Op::TaskProgress { .. } => "task.progress",
        }
    }
}

/// Why a worker's attempt failed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct WorkerError {
    pub message: String,
    #[serde(default)]
    pub details: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClientFrame {
    /// Echoed in the reply; `None` for fire-and-forget frames.
    pub id: Option<Value>,
    pub op: Op,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    pub id: Option<Value>,
    pub code: &'static str,
    pub message: String,
}

fn error(id: Option<Value>, code: &'static str, message: impl Into<String>) -> FrameError {
    FrameError {
        id,
        code,
        message: message.into(),
    }
}

#[derive(Deserialize)]
struct AuthFields {
    token: String,
}

#[derive(Deserialize)]
struct ChannelFields {
    channel: String,
    #[serde(default)]
    since: Option<StreamPosition>,
}

#[derive(Deserialize)]
struct PublishFields {
    channel: String,
    data: Value,
}

#[derive(Deserialize)]
struct TaskFields {
    task: Value,
}

#[derive(Deserialize)]
struct CancelFields {
    task_id: String,
}

#[derive(Deserialize)]
struct RegisterFields {
    types: Vec<String>,
    concurrency: usize,
}

#[derive(Deserialize)]
struct ProgressFields {
    task_id: String,
    progress: f64,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct CompleteFields {
    task_id: String,
    #[serde(default)]
    result: Value,
}

fn retryable_by_default() -> bool {
    true
}

#[derive(Deserialize)]
struct FailFields {
    task_id: String,
    error: WorkerError,
    #[serde(default = "retryable_by_default")]
    retryable: bool,
    #[serde(default)]
    retry_after_ms: Option<u64>,
}

/// Longest channel name.
pub const MAX_CHANNEL_LEN: usize = 200;

/// Channel names: 1 to 200 visible ASCII characters.
pub fn valid_channel(channel: &str) -> bool {
    !channel.is_empty()
        && channel.len() <= MAX_CHANNEL_LEN
        && channel.bytes().all(|b| b.is_ascii_graphic())
}

pub fn decode(text: &str) -> Result<ClientFrame, FrameError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| error(None, "malformed_frame", format!("not JSON: {e}")))?;
    let Value::Object(object) = &value else {
        return Err(error(None, "malformed_frame", "a frame is a JSON object"));
    };
    let id = match object.get("id") {
        None | Some(Value::Null) => None,
        Some(id @ (Value::Number(_) | Value::String(_))) => Some(id.clone()),
        Some(_) => {
            return Err(error(
                None,
                "malformed_frame",
                "`id` must be a number or a string",
            ));
        }
    };
    let Some(op) = object.get("op").and_then(Value::as_str) else {
        return Err(error(id, "malformed_frame", "a frame needs an `op` string"));
    };
    let fields = |what: &str| {
        let id = id.clone();
        let what = what.to_owned();
        move |e: serde_json::Error| error(id, "invalid_request", format!("{what}: {e}"))
    };
    let op = match op {
        "auth" => {
            let f: AuthFields = serde_json::from_value(value.clone()).map_err(fields("auth"))?;
            Op::Auth { token: f.token }
        }
        "subscribe" | "unsubscribe" => {
            let f: ChannelFields = serde_json::from_value(value.clone()).map_err(fields(op))?;
            if !valid_channel(&f.channel) {
                return Err(error(
                    id,
                    "invalid_channel",
                    format!("a channel name has 1 to {MAX_CHANNEL_LEN} visible ASCII characters"),
                ));
            }
            if op == "subscribe" {
                Op::Subscribe {
                    channel: f.channel,
                    since: f.since,
                }
            } else {
                Op::Unsubscribe { channel: f.channel }
            }
        }
        "publish" => {
            let f: PublishFields =
                serde_json::from_value(value.clone()).map_err(fields("publish"))?;
            if !valid_channel(&f.channel) {
                return Err(error(
                    id,
                    "invalid_channel",
                    format!("a channel name has 1 to {MAX_CHANNEL_LEN} visible ASCII characters"),
                ));
            }
            Op::Publish {
                channel: f.channel,
                data: f.data,
            }
        }
        "task.create" => {
            let f: TaskFields =
                serde_json::from_value(value.clone()).map_err(fields("task.create"))?;
            Op::TaskCreate { task: f.task }
        }
        "task.cancel" => {
            let f: CancelFields =
                serde_json::from_value(value.clone()).map_err(fields("task.cancel"))?;
            Op::TaskCancel { task_id: f.task_id }
        }
        "ping" => Op::Ping,
        "worker.register" => {
            let f: RegisterFields =
                serde_json::from_value(value.clone()).map_err(fields("worker.register"))?;
            Op::WorkerRegister {
                types: f.types,
                concurrency: f.concurrency,
            }
        }
        "task.heartbeat" => {
            let f: CancelFields =
                serde_json::from_value(value.clone()).map_err(fields("task.heartbeat"))?;
            Op::TaskHeartbeat { task_id: f.task_id }
        }
        "task.complete" => {
            let f: CompleteFields =
                serde_json::from_value(value.clone()).map_err(fields("task.complete"))?;
            Op::TaskComplete {
                task_id: f.task_id,
                result: f.result,
            }
        }
        "task.fail" => {
            let f: FailFields =
                serde_json::from_value(value.clone()).map_err(fields("task.fail"))?;
            Op::TaskFail {
                task_id: f.task_id,
                error: f.error,
                retryable: f.retryable,
                retry_after_ms: f.retry_after_ms,
            }
        }
        "task.progress" => {
            let f: ProgressFields =
                serde_json::from_value(value.clone()).map_err(fields("task.progress"))?;
            Op::TaskProgress {
                task_id: f.task_id,
                progress: f.progress,
                message: f.message,
            }
        }
        other => {
            let shown: String = other.chars().take(64).collect();
            return Err(error(id, "unknown_op", format!("unknown op `{shown}`")));
        }
    };
    Ok(ClientFrame { id, op })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn decodes_every_op() {
        let cases = [
            (
                json!({"id":1,"op":"auth","token":"t"}),
                Op::Auth { token: "t".into() },
            ),
            (
                json!({"id":2,"op":"subscribe","channel":"tasks","since":{"offset":41,"epoch":"e"}}),
                Op::Subscribe {
                    channel: "tasks".into(),
                    since: Some(StreamPosition {
                        offset: 41,
                        epoch: "e".into(),
                    }),
                },
            ),
            (
                json!({"id":3,"op":"unsubscribe","channel":"tasks"}),
                Op::Unsubscribe {
                    channel: "tasks".into(),
                },
            ),
            (
                json!({"id":4,"op":"publish","channel":"room:lobby","data":{"a":1}}),
                Op::Publish {
                    channel: "room:lobby".into(),
                    data: json!({"a":1}),
                },
            ),
            (
                json!({"id":5,"op":"task.create","task":{"type":"noop"}}),
                Op::TaskCreate {
                    task: json!({"type":"noop"}),
                },
            ),
            (
                json!({"id":6,"op":"task.cancel","task_id":"x"}),
                Op::TaskCancel {
                    task_id: "x".into(),
                },
            ),
            (json!({"id":"seven","op":"ping"}), Op::Ping),
            (
                json!({"id":8,"op":"worker.register","types":["render.deploy"],"concurrency":4}),
                Op::WorkerRegister {
                    types: vec!["render.deploy".into()],
                    concurrency: 4,
                },
            ),
            (
                json!({"op":"task.heartbeat","task_id":"t"}),
                Op::TaskHeartbeat {
                    task_id: "t".into(),
                },
            ),
            (
                json!({"id":9,"op":"task.complete","task_id":"t","result":{"ok":1}}),
                Op::TaskComplete {
                    task_id: "t".into(),
                    result: json!({"ok":1}),
                },
            ),
            (
                json!({"id":10,"op":"task.fail","task_id":"t","error":{"message":"m"}}),
                Op::TaskFail {
                    task_id: "t".into(),
                    error: WorkerError {
                        message: "m".into(),
                        details: None,
                    },
                    retryable: true,
                    retry_after_ms: None,
                },
            ),
        ];
        for (frame, op) in cases {
            let decoded = decode(&frame.to_string()).unwrap();
            assert_eq!(decoded.op, op);
            assert_eq!(decoded.id.as_ref(), frame.get("id"));
        }
    }

    #[test]
    fn names_what_is_wrong_with_bad_frames() {
        let code = |text: &str| decode(text).unwrap_err().code;
        assert_eq!(code("not json"), "malformed_frame");
        assert_eq!(code("[1,2]"), "malformed_frame");
        assert_eq!(code(r#"{"id":1}"#), "malformed_frame");
        assert_eq!(code(r#"{"id":{},"op":"ping"}"#), "malformed_frame");
        assert_eq!(code(r#"{"id":1,"op":"launch"}"#), "unknown_op");
        assert_eq!(code(r#"{"id":1,"op":"subscribe"}"#), "invalid_request");
        assert_eq!(
            code(r#"{"id":1,"op":"subscribe","channel":""}"#),
            "invalid_channel"
        );
        assert_eq!(
            code(r#"{"id":1,"op":"subscribe","channel":"a b"}"#),
            "invalid_channel"
        );
        assert_eq!(
            code(r#"{"id":1,"op":"subscribe","channel":"t","since":{"offset":-1,"epoch":"e"}}"#),
            "invalid_request"
        );
        let unknown = decode(r#"{"id":9,"op":"launch"}"#).unwrap_err();
        assert_eq!(
            unknown.id,
            Some(json!(9)),
            "the id survives for the error reply"
        );
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(text in ".{0,200}") {
            let _ = decode(&text);
        }

        #[test]
        fn never_panics_on_arbitrary_json_objects(
            id in prop::option::of(any::<i64>()),
            op in "[a-z.]{0,12}",
            channel in ".{0,40}",
            offset in any::<i64>(),
        ) {
            let frame = json!({"id": id, "op": op, "channel": channel,
                               "since": {"offset": offset, "epoch": "e"}, "token": channel});
            let _ = decode(&frame.to_string());
        }
    }
}
