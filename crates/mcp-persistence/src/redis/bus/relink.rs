//! The node's background task that keeps the bus linked to Redis: it links (pub/sub and
//! commands) with backoff while the bus is local, ends the Redis epochs of channels published to
//! locally meanwhile, switches the bus to shared, reads the link, and starts over when the link
//! drops or a command finds Redis gone.

use super::subscribers::{Local, Pending};
use super::{END_EPOCHS_BATCH, LINK_CHECK_EVERY, keys};
use crate::redis::link::{self, RETRY_MIN, RedisOptions};
use futures::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use std::sync::Arc;
use std::time::Duration;

/// Opens a pub/sub connection subscribed to `topic`.
async fn open_pubsub(
    client: &redis::Client,
    topic: &str,
    options: &RedisOptions,
) -> Result<(PubSubSink, PubSubStream), String> {
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(topic).await?;
        Ok::<_, redis::RedisError>(pubsub.split())
    };
    // A connect and a SUBSCRIBE, each bounded by the timeout.
    match tokio::time::timeout(options.timeout() * 2, connect).await {
        Ok(Ok(link)) => Ok(link),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out linking to Redis pub/sub".into()),
    }
}

/// Ends the Redis epoch of `pending`'s channels: a position from before the outage is not
/// recoverable any more, since events published here meanwhile never reached Redis.
async fn end_epochs(
    connection: &mut MultiplexedConnection,
    prefix: &str,
    pending: Pending,
    options: &RedisOptions,
) -> Result<(), String> {
    let epochs: Vec<String> = match pending {
        Pending::Channels(channels) => channels
            .iter()
            .map(|channel| keys(prefix, channel).epoch)
            .collect(),
        Pending::All => {
            let pattern = format!("{prefix}events:*:epoch");
            let mut found = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, batch): (u64, Vec<String>) = link::within(
                    options,
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(END_EPOCHS_BATCH)
                        .query_async(connection),
                )
                .await?;
                found.extend(batch);
                if next == 0 {
                    break found;
                }
                cursor = next;
            }
        }
    };
    for batch in epochs.chunks(END_EPOCHS_BATCH) {
        link::within(
            options,
            redis::cmd("DEL").arg(batch).query_async::<()>(connection),
        )
        .await?;
    }
    Ok(())
}

/// The node's background task: links to Redis (pub/sub and commands) with backoff while the bus
/// is local, switches it to shared, reads the link, and starts over when the link drops or a
/// command finds Redis gone.
pub(super) async fn keep_link(
    client: redis::Client,
    topic: String,
    prefix: String,
    options: RedisOptions,
    local: Arc<Local>,
) {
    let mut pause = Duration::ZERO;
    loop {
        tokio::time::sleep(pause).await;
        pause = if pause.is_zero() {
            RETRY_MIN
        } else {
            options.next_pause(pause)
        };
        let (mut sink, mut stream) = match open_pubsub(&client, &topic, &options).await {
            Ok(link) => link,
            Err(e) => {
                local.still_lost(e);
                continue;
            }
        };
        let mut connection = match link::open(&client, &options).await {
            Ok(connection) => connection,
            Err(e) => {
                local.still_lost(e);
                continue;
            }
        };
        let shared = loop {
            match local.go_shared(connection.clone()) {
                Ok(()) => break Ok(()),
                Err(pending) => {
                    if let Err(e) = end_epochs(&mut connection, &prefix, pending, &options).await {
                        break Err(e);
                    }
                }
            }
        };
        if let Err(e) = shared {
            // The channels stay noted: ended at the next attempt.
            local.still_lost(e);
            continue;
        }
        pause = Duration::ZERO;
        let mut check = tokio::time::interval(LINK_CHECK_EVERY);
        check.reset();
        let why = loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(message) => local.dispatch(message.get_payload_bytes()),
                    None => break "the Redis pub/sub link closed".to_owned(),
                },
                _ = check.tick() => {
                    let pong = tokio::time::timeout(options.timeout(), sink.ping::<redis::Value>())
                        .await;
                    if !matches!(pong, Ok(Ok(_))) {
                        break "Redis did not answer a PING on the pub/sub link".to_owned();
                    }
                }
                _ = local.trouble.notified() => {
                    break "a command found Redis unavailable".to_owned();
                }
            }
        };
        local.go_local(None, &why);
    }
}
