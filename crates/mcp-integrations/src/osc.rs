//! VRChat OSC: the task types that talk to a running VRChat client over UDP
//! (`vrchat.osc.send`, `vrchat.chatbox`, `vrchat.avatar_parameter`) and a listener that turns
//! the avatar-parameter messages VRChat sends back into events on channel `vrchat.osc`.
//!
//! VRChat listens on `127.0.0.1:9000` and sends on `127.0.0.1:9001` by default. The chatbox
//! shows at most 144 characters on 9 lines and drops messages sent faster than about one per
//! 1.5 s, so chatbox messages are trimmed and spaced by a [`ChatboxLimiter`] (they wait for
//! their turn rather than fail).

use crate::{Adapter, AdapterHealth};
use async_trait::async_trait;
use mcp_core::events::{Event, EventBus};
use mcp_core::{Handler, HandlerError, HandlerRegistry, TaskContext};
use rosc::{OscMessage, OscPacket, OscType};
use serde_json::{Map, Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The channel the listener publishes on.
pub const OSC_CHANNEL: &str = "vrchat.osc";
/// The event type of an incoming avatar parameter.
pub const AVATAR_PARAMETER_EVENT: &str = "vrchat.osc.avatar_parameter";
/// The most characters VRChat's chatbox shows.
pub const CHATBOX_MAX_CHARS: usize = 144;
/// The most lines VRChat's chatbox shows.
pub const CHATBOX_MAX_LINES: usize = 9;
/// The spacing VRChat needs between chatbox messages.
pub const CHATBOX_INTERVAL: Duration = Duration::from_millis(1500);

const AVATAR_PREFIX: &str = "/avatar/parameters/";

/// Where the OSC task types send, and how chatbox messages are spaced.
#[derive(Debug, Clone)]
pub struct OscConfig {
    pub target: SocketAddr,
    pub chatbox_interval: Duration,
}

impl Default for OscConfig {
    fn default() -> Self {
        OscConfig {
            target: SocketAddr::from(([127, 0, 0, 1], 9000)),
            chatbox_interval: CHATBOX_INTERVAL,
        }
    }
}

/// Spaces chatbox messages: each call reserves the next free slot, at least `interval` after the
/// previous one. Pure bookkeeping on the instants it is given, so it is testable without a clock.
#[derive(Debug)]
pub struct ChatboxLimiter {
    interval: Duration,
    last: Mutex<Option<Instant>>,
}

impl ChatboxLimiter {
    pub fn new(interval: Duration) -> Self {
        ChatboxLimiter {
            interval,
            last: Mutex::new(None),
        }
    }

    /// Reserves a slot for a message wanting to go out at `now`; returns when it may be sent
    /// (`now` itself if the last slot is at least an interval ago).
    pub fn reserve(&self, now: Instant) -> Instant {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let slot = match *last {
            Some(previous) => now.max(previous + self.interval),
            None => now,
        };
        *last = Some(slot);
        slot
    }
}

/// The VRChat OSC adapter.
#[derive(Debug, Clone)]
pub struct OscAdapter {
    target: SocketAddr,
    limiter: Arc<ChatboxLimiter>,
}

impl OscAdapter {
    pub fn new(config: OscConfig) -> Self {
        OscAdapter {
            target: config.target,
            limiter: Arc::new(ChatboxLimiter::new(config.chatbox_interval)),
        }
    }

    fn sender(&self, kind: Kind) -> OscHandler {
        OscHandler {
            kind,
            target: self.target,
            limiter: self.limiter.clone(),
        }
    }
}

#[async_trait]
impl Adapter for OscAdapter {
    fn name(&self) -> &str {
        "vrchat_osc"
    }

    fn task_types(&self) -> Vec<String> {
        vec![
            "vrchat.avatar_parameter".into(),
            "vrchat.chatbox".into(),
            "vrchat.osc.send".into(),
        ]
    }

    async fn health(&self) -> AdapterHealth {
        // UDP has no connection to probe: sending works whether or not VRChat listens.
        AdapterHealth::Healthy
    }

    fn register(&self, registry: &mut HandlerRegistry) {
        registry.register(
            "vrchat.avatar_parameter",
            self.sender(Kind::AvatarParameter),
        );
        registry.register("vrchat.chatbox", self.sender(Kind::Chatbox));
        registry.register("vrchat.osc.send", self.sender(Kind::Send));
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Send,
    Chatbox,
    AvatarParameter,
}

struct OscHandler {
    kind: Kind,
    target: SocketAddr,
    limiter: Arc<ChatboxLimiter>,
}

/// What one task sends: messages in order, and whether the chatbox limiter applies.
struct Plan {
    messages: Vec<OscMessage>,
    chatbox: bool,
}

impl OscHandler {
    fn plan(&self, payload: &Value) -> Result<Plan, String> {
        let object = payload
            .as_object()
            .ok_or("the payload must be a JSON object")?;
        match self.kind {
            Kind::Send => plan_send(object),
            Kind::Chatbox => plan_chatbox(object),
            Kind::AvatarParameter => plan_avatar_parameter(object),
        }
    }
}

#[async_trait]
impl Handler for OscHandler {
    fn validate(&self, payload: &Value) -> Result<(), String> {
        self.plan(payload).map(|_| ())
    }

    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError> {
        let plan = self
            .plan(&ctx.task.payload)
            .map_err(HandlerError::permanent)?;
        let mut packets = Vec::with_capacity(plan.messages.len());
        for message in &plan.messages {
            let bytes = rosc::encoder::encode(&OscPacket::Message(message.clone()))
                .map_err(|e| HandlerError::permanent(format!("cannot encode OSC: {e}")))?;
            packets.push(bytes);
        }
        let bind: SocketAddr = if self.target.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let socket = UdpSocket::bind(bind)
            .await
            .map_err(|e| HandlerError::retryable(format!("cannot open a UDP socket: {e}")))?;
        for (index, bytes) in packets.iter().enumerate() {
            // Only the chatbox input message (the last one) is rate limited; the typing
            // indicator goes out at once.
            if plan.chatbox && index + 1 == packets.len() {
                let slot = self.limiter.reserve(Instant::now());
                tokio::select! {
                    _ = tokio::time::sleep_until(slot) => {}
                    _ = ctx.cancel.cancelled() => {
                        return Err(HandlerError::permanent("cancelled while waiting for the chatbox rate limit"));
                    }
                }
            }
            socket.send_to(bytes, self.target).await.map_err(|e| {
                HandlerError::retryable(format!("cannot send OSC to {}: {e}", self.target))
            })?;
        }
        let sent: Vec<Value> = plan
            .messages
            .iter()
            .map(|m| json!({"address": m.addr, "args": m.args.iter().map(osc_to_json).collect::<Vec<_>>()}))
            .collect();
        Ok(json!({"target": self.target.to_string(), "sent": sent}))
    }
}

fn plan_send(object: &Map<String, Value>) -> Result<Plan, String> {
    let address = object
        .get("address")
        .and_then(Value::as_str)
        .ok_or("`address` must be a string")?;
    check_address(address)?;
    let args = match object.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, arg)| typed_arg(arg).map_err(|e| format!("`args[{i}]`: {e}")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("`args` must be an array".into()),
    };
    Ok(Plan {
        messages: vec![OscMessage {
            addr: address.to_string(),
            args,
        }],
        chatbox: false,
    })
}

fn check_address(address: &str) -> Result<(), String> {
    if !address.starts_with('/') || address.len() < 2 {
        return Err("`address` must be an OSC address starting with `/`".into());
    }
    if let Some(c) = address
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "#*,?[]{}".contains(*c))
    {
        return Err(format!("`address` must not contain {c:?}"));
    }
    Ok(())
}

fn typed_arg(arg: &Value) -> Result<OscType, String> {
    let kind = arg
        .get("type")
        .and_then(Value::as_str)
        .ok_or("`type` must be one of float, int, bool, string")?;
    let value = arg.get("value").ok_or("`value` is missing")?;
    match kind {
        "float" => value
            .as_f64()
            .map(|v| v as f32)
            .filter(|v| v.is_finite())
            .map(OscType::Float)
            .ok_or_else(|| "a float `value` must be a finite number".into()),
        "int" => value
            .as_i64()
            .and_then(|v| i32::try_from(v).ok())
            .map(OscType::Int)
            .ok_or_else(|| "an int `value` must be an integer in the 32-bit range".into()),
        "bool" => value
            .as_bool()
            .map(OscType::Bool)
            .ok_or_else(|| "a bool `value` must be true or false".into()),
        "string" => value
            .as_str()
            .map(|s| OscType::String(s.to_string()))
            .ok_or_else(|| "a string `value` must be a string".into()),
        other => Err(format!(
            "`type` {other:?} is not one of float, int, bool, string"
        )),
    }
}

fn optional_bool(object: &Map<String, Value>, key: &str) -> Result<Option<bool>, String> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(format!("`{key}` must be true or false")),
    }
}

fn plan_chatbox(object: &Map<String, Value>) -> Result<Plan, String> {
    let text = match object.get("text") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err("`text` must be a string".into()),
    };
    let typing = optional_bool(object, "typing")?;
    let send_immediately = optional_bool(object, "send_immediately")?.unwrap_or(true);
    let notify = optional_bool(object, "notify")?.unwrap_or(false);
    let mut messages = Vec::new();
    if let Some(typing) = typing {
        messages.push(OscMessage {
            addr: "/chatbox/typing".into(),
            args: vec![OscType::Bool(typing)],
        });
    }
    let chatbox = text.is_some();
    if let Some(text) = text {
        messages.push(OscMessage {
            addr: "/chatbox/input".into(),
            args: vec![
                OscType::String(trim_chatbox(text)),
                OscType::Bool(send_immediately),
                OscType::Bool(notify),
            ],
        });
    }
    if messages.is_empty() {
        return Err("`text` (a string) or `typing` (true or false) is required".into());
    }
    Ok(Plan { messages, chatbox })
}

/// Trims `text` to what the chatbox shows: at most 9 lines, then at most 144 characters.
pub fn trim_chatbox(text: &str) -> String {
    let lines: Vec<&str> = text.split('\n').take(CHATBOX_MAX_LINES).collect();
    lines.join("\n").chars().take(CHATBOX_MAX_CHARS).collect()
}

fn plan_avatar_parameter(object: &Map<String, Value>) -> Result<Plan, String> {
    let name = object
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or("`name` must be a non-empty string")?;
    let address = format!("{AVATAR_PREFIX}{name}");
    check_address(&address).map_err(|_| {
        "`name` must not contain whitespace, control characters or any of #*,?[]{}".to_string()
    })?;
    let value = match object.get("value") {
        Some(Value::Bool(b)) => OscType::Bool(*b),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) => OscType::Int(
                i32::try_from(i).map_err(|_| "an integer `value` must fit in 32 bits")?,
            ),
            None => match n.as_f64().map(|f| f as f32).filter(|f| f.is_finite()) {
                Some(f) => OscType::Float(f),
                None => return Err("`value` must be a finite number".into()),
            },
        },
        _ => return Err("`value` must be a bool, an integer or a number".into()),
    };
    Ok(Plan {
        messages: vec![OscMessage {
            addr: address,
            args: vec![value],
        }],
        chatbox: false,
    })
}

fn osc_to_json(arg: &OscType) -> Value {
    match arg {
        OscType::Int(i) => json!(i),
        OscType::Long(i) => json!(i),
        OscType::Float(f) => serde_json::Number::from_f64(f64::from(*f))
            .map(Value::Number)
            .unwrap_or(Value::Null),
        OscType::Double(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        OscType::Bool(b) => json!(b),
        OscType::String(s) => json!(s),
        _ => Value::Null,
    }
}

/// The events an OSC datagram carries: one `(name, value)` per avatar-parameter message, in
/// order, bundles included. Anything that does not decode gives nothing.
pub fn avatar_parameters(datagram: &[u8]) -> Vec<(String, Value)> {
    let mut found = Vec::new();
    if let Ok((_, packet)) = rosc::decoder::decode_udp(datagram) {
        collect(&packet, &mut found, 0);
    }
    found
}

fn collect(packet: &OscPacket, found: &mut Vec<(String, Value)>, depth: usize) {
    match packet {
        OscPacket::Message(message) => {
            let Some(name) = message.addr.strip_prefix(AVATAR_PREFIX) else {
                return;
            };
            let Some(value) = message.args.first().map(osc_to_json) else {
                return;
            };
            if !name.is_empty() && !value.is_null() {
                found.push((name.to_string(), value));
            }
        }
        OscPacket::Bundle(bundle) if depth < 8 => {
            for inner in &bundle.content {
                collect(inner, found, depth + 1);
            }
        }
        OscPacket::Bundle(_) => {}
    }
}

/// Binds the OSC listener on `addr`; returns the bound address (useful with port 0).
pub async fn bind_listener(addr: SocketAddr) -> std::io::Result<(UdpSocket, SocketAddr)> {
    let socket = UdpSocket::bind(addr).await?;
    let local = socket.local_addr()?;
    Ok((socket, local))
}

/// Receives OSC datagrams on `socket` until `cancel`, publishing each avatar parameter as a
/// `vrchat.osc.avatar_parameter` event (`{"name","value"}`) on channel `vrchat.osc`. Garbage
/// datagrams and other addresses are ignored.
pub async fn run_listener(socket: UdpSocket, bus: Arc<dyn EventBus>, cancel: CancellationToken) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let received = tokio::select! {
            _ = cancel.cancelled() => return,
            received = socket.recv_from(&mut buf) => received,
        };
        let len = match received {
            Ok((len, _)) => len,
            Err(e) => {
                // e.g. ICMP "port unreachable" surfacing on some platforms: keep listening.
                tracing::debug!(error = %e, "OSC listener receive failed");
                continue;
            }
        };
        for (name, value) in avatar_parameters(&buf[..len]) {
            let event = Event::new(
                AVATAR_PARAMETER_EVENT,
                json!({"name": name, "value": value}),
                None,
            );
            if let Err(e) = bus.publish(OSC_CHANNEL, Arc::new(event)).await {
                tracing::warn!(error = %e, "cannot publish an OSC event");
            }
        }
    }
}
