//! VRChat OSC over real UDP sockets on loopback: what each task type sends, chatbox trimming and
//! spacing, and the listener turning avatar parameters into `vrchat.osc` events.

mod common;

use common::context;
use mcp_core::events::{BusConfig, EventBus, LocalBus};
use mcp_core::{Handler, HandlerRegistry};
use mcp_integrations::Adapter;
use mcp_integrations::osc::{
    self, CHATBOX_MAX_CHARS, ChatboxLimiter, OSC_CHANNEL, OscAdapter, OscConfig, trim_chatbox,
};
use rosc::{OscMessage, OscPacket, OscType};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

/// A fake VRChat: a loopback socket, and handlers sending to it.
async fn setup(interval: Duration) -> (UdpSocket, HandlerRegistry) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target = socket.local_addr().unwrap();
    let mut registry = HandlerRegistry::default();
    OscAdapter::new(OscConfig {
        target,
        chatbox_interval: interval,
    })
    .register(&mut registry);
    (socket, registry)
}

async fn run(registry: &HandlerRegistry, task_type: &str, payload: Value) -> Value {
    let handler: Arc<dyn Handler> = registry.get(task_type).expect("registered").clone();
    handler.validate(&payload).expect("valid payload");
    handler
        .run(context(task_type, payload))
        .await
        .expect("sent")
}

async fn receive(socket: &UdpSocket) -> OscMessage {
    let mut buf = vec![0u8; 65_536];
    let (len, _) = timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
        .await
        .expect("a datagram in time")
        .unwrap();
    match rosc::decoder::decode_udp(&buf[..len]).expect("valid OSC").1 {
        OscPacket::Message(message) => message,
        OscPacket::Bundle(bundle) => panic!("unexpected bundle {bundle:?}"),
    }
}

#[tokio::test]
async fn osc_send_encodes_typed_args() {
    let (socket, registry) = setup(Duration::from_millis(10)).await;
    let result = run(
        &registry,
        "vrchat.osc.send",
        json!({"address": "/avatar/parameters/X", "args": [
            {"type": "float", "value": 0.5},
            {"type": "int", "value": -3},
            {"type": "bool", "value": true},
            {"type": "string", "value": "hi"},
        ]}),
    )
    .await;
    let message = receive(&socket).await;
    assert_eq!(message.addr, "/avatar/parameters/X");
    assert_eq!(
        message.args,
        vec![
            OscType::Float(0.5),
            OscType::Int(-3),
            OscType::Bool(true),
            OscType::String("hi".into()),
        ]
    );
    assert_eq!(result["sent"][0]["address"], "/avatar/parameters/X");
    assert_eq!(result["sent"][0]["args"], json!([0.5, -3, true, "hi"]));
}

#[tokio::test]
async fn avatar_parameter_takes_its_type_from_the_json_value() {
    let (socket, registry) = setup(Duration::from_millis(10)).await;
    for (value, expected) in [
        (json!(true), OscType::Bool(true)),
        (json!(7), OscType::Int(7)),
        (json!(0.25), OscType::Float(0.25)),
    ] {
        run(
            &registry,
            "vrchat.avatar_parameter",
            json!({"name": "VF/Mood", "value": value}),
        )
        .await;
        let message = receive(&socket).await;
        assert_eq!(message.addr, "/avatar/parameters/VF/Mood");
        assert_eq!(message.args, vec![expected]);
    }
}

#[tokio::test]
async fn chatbox_sends_typing_and_trimmed_input() {
    let (socket, registry) = setup(Duration::from_millis(10)).await;
    let long = "a".repeat(145);
    run(
        &registry,
        "vrchat.chatbox",
        json!({"text": long, "typing": false, "notify": true}),
    )
    .await;
    let typing = receive(&socket).await;
    assert_eq!(typing.addr, "/chatbox/typing");
    assert_eq!(typing.args, vec![OscType::Bool(false)]);
    let input = receive(&socket).await;
    assert_eq!(input.addr, "/chatbox/input");
    assert_eq!(
        input.args,
        vec![
            OscType::String("a".repeat(CHATBOX_MAX_CHARS)),
            OscType::Bool(true),
            OscType::Bool(true),
        ]
    );

    // Ten lines become nine.
    let lines: Vec<String> = (0..10).map(|i| format!("line {i}")).collect();
    run(
        &registry,
        "vrchat.chatbox",
        json!({"text": lines.join("\n"), "send_immediately": false}),
    )
    .await;
    let input = receive(&socket).await;
    assert_eq!(
        input.args,
        vec![
            OscType::String(lines[..9].join("\n")),
            OscType::Bool(false),
            OscType::Bool(false),
        ]
    );
}

#[test]
fn trimming_keeps_nine_lines_then_144_characters() {
    assert_eq!(trim_chatbox("short"), "short");
    assert_eq!(trim_chatbox(&"é".repeat(145)).chars().count(), 144);
    assert_eq!(trim_chatbox(&"x\n".repeat(10)), "x\n".repeat(9).trim_end());
}

#[test]
fn limiter_spaces_slots_without_a_clock() {
    let interval = Duration::from_millis(1500);
    let limiter = ChatboxLimiter::new(interval);
    let t0 = Instant::now();
    assert_eq!(limiter.reserve(t0), t0);
    // Asked again at once: waits a full interval; a third caller queues behind it.
    assert_eq!(limiter.reserve(t0), t0 + interval);
    assert_eq!(
        limiter.reserve(t0 + Duration::from_millis(100)),
        t0 + interval * 2
    );
    // Long after: sends at once.
    let later = t0 + Duration::from_secs(60);
    assert_eq!(limiter.reserve(later), later);
}

#[tokio::test]
async fn chatbox_messages_are_spaced_by_the_interval() {
    let interval = Duration::from_millis(300);
    let (socket, registry) = setup(interval).await;
    let registry = Arc::new(registry);
    let sends: Vec<_> = ["first", "second"]
        .into_iter()
        .map(|text| {
            let registry = registry.clone();
            tokio::spawn(
                async move { run(&registry, "vrchat.chatbox", json!({"text": text})).await },
            )
        })
        .collect();
    let first = receive(&socket).await;
    let first_at = Instant::now();
    let second = receive(&socket).await;
    let gap = first_at.elapsed();
    for send in sends {
        send.await.unwrap();
    }
    let texts: Vec<_> = [first, second].iter().map(|m| m.args[0].clone()).collect();
    assert!(texts.contains(&OscType::String("first".into())));
    assert!(texts.contains(&OscType::String("second".into())));
    assert!(
        gap + Duration::from_millis(50) >= interval,
        "chatbox messages {gap:?} apart, want about {interval:?}"
    );
}

#[test]
fn bad_payloads_are_refused_at_creation() {
    let mut registry = HandlerRegistry::default();
    OscAdapter::new(OscConfig::default()).register(&mut registry);
    let cases = [
        ("vrchat.osc.send", json!({"args": []})),
        ("vrchat.osc.send", json!({"address": "no-slash"})),
        ("vrchat.osc.send", json!({"address": "/a b"})),
        (
            "vrchat.osc.send",
            json!({"address": "/x", "args": [{"type": "int", "value": 1.5}]}),
        ),
        (
            "vrchat.osc.send",
            json!({"address": "/x", "args": [{"type": "int", "value": 5_000_000_000i64}]}),
        ),
        (
            "vrchat.osc.send",
            json!({"address": "/x", "args": [{"type": "blob", "value": 1}]}),
        ),
        (
            "vrchat.osc.send",
            json!({"address": "/x", "args": {"type": "bool"}}),
        ),
        ("vrchat.chatbox", json!({})),
        ("vrchat.chatbox", json!({"text": 5})),
        ("vrchat.chatbox", json!({"text": "hi", "notify": "yes"})),
        ("vrchat.avatar_parameter", json!({"name": "", "value": 1})),
        (
            "vrchat.avatar_parameter",
            json!({"name": "X", "value": "str"}),
        ),
        ("vrchat.avatar_parameter", json!({"name": "X"})),
        ("vrchat.avatar_parameter", json!([1, 2])),
    ];
    for (task_type, payload) in cases {
        let handler = registry.get(task_type).unwrap();
        assert!(
            handler.validate(&payload).is_err(),
            "{task_type} accepted {payload}"
        );
    }
}

fn encode(address: &str, args: Vec<OscType>) -> Vec<u8> {
    rosc::encoder::encode(&OscPacket::Message(OscMessage {
        addr: address.into(),
        args,
    }))
    .unwrap()
}

#[tokio::test]
async fn listener_publishes_avatar_parameters_and_ignores_garbage() {
    let bus: Arc<dyn EventBus> = Arc::new(LocalBus::new(BusConfig::default()));
    let mut events = bus.subscribe(OSC_CHANNEL).await.unwrap();
    let (socket, addr): (UdpSocket, SocketAddr) =
        osc::bind_listener("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
    let cancel = CancellationToken::new();
    let listener = tokio::spawn(osc::run_listener(socket, bus.clone(), cancel.clone()));

    let vrchat = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for garbage in [
        &b"\xff\x00garbage"[..],
        b"",
        b"/avatar/parameters/X\0\0\0\0,f\0\0\x01",
    ] {
        vrchat.send_to(garbage, addr).await.unwrap();
    }
    vrchat
        .send_to(
            &encode("/chatbox/input", vec![OscType::String("x".into())]),
            addr,
        )
        .await
        .unwrap();
    vrchat
        .send_to(
            &encode("/avatar/parameters/Smile", vec![OscType::Float(0.75)]),
            addr,
        )
        .await
        .unwrap();
    vrchat
        .send_to(
            &encode("/avatar/parameters/IsLocal", vec![OscType::Bool(true)]),
            addr,
        )
        .await
        .unwrap();

    let mut received = Vec::new();
    for _ in 0..2 {
        let delivery = timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("an event in time")
            .unwrap();
        assert_eq!(delivery.event.event_type, "vrchat.osc.avatar_parameter");
        received.push(delivery.event.data.clone());
    }
    assert_eq!(
        received,
        vec![
            json!({"name": "Smile", "value": 0.75}),
            json!({"name": "IsLocal", "value": true}),
        ]
    );
    // Nothing else was published, and the listener is still running.
    assert!(events.try_recv().is_err());
    assert!(!listener.is_finished());
    cancel.cancel();
    timeout(Duration::from_secs(5), listener)
        .await
        .unwrap()
        .unwrap();
}
