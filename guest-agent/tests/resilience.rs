//! The channel's traps: noise (AT commands, NUL, a 1 MB line, truncated and corrupted
//! messages), the broker's own bytes echoed before the tty is raw, the agent's own bytes
//! replayed, a host that disconnects mid-message and comes back, a broker that goes
//! silent, and the handshake's refusals.

mod common;

use std::time::Duration;

use common::*;
use tokio::time::Instant;
use xenchan_protocol::message::{ErrorCode, Hello};
use xenchan_protocol::{Body, Envelope, Nonce, Role, Verdict};

fn is_error(code: ErrorCode) -> impl Fn(&Envelope) -> bool {
    move |m| matches!(&m.body, Body::Error(e) if e.code == code)
}

async fn session(guest: &Guest) -> (Broker, Running, Nonce) {
    let pty = pty();
    guest.link_channel(1, &pty.path, CHANNEL);
    let mut broker = Broker::new(pty);
    let agent = start(guest.opts());
    let (nonce, _) = broker.handshake().await;
    (broker, agent, nonce)
}

#[tokio::test]
async fn survives_noise_between_messages() {
    let guest = Guest::new();
    let (mut broker, agent, nonce) = session(&guest).await;
    // A modem prober's AT commands.
    broker
        .write_raw(b"AT\r\nATZ\r\nAT+CGMI\r\nAT+GCAP\r\n")
        .await;
    // NUL bytes and binary junk.
    broker.write_raw(b"\0\0\0\0\n\xff\xfe\x00junk\n").await;
    // A 1 MB line of garbage (bigger than any frame).
    let garbage: Vec<u8> = (0..1024 * 1024)
        .map(|i| b"abcdefghij{}\":,"[i % 15])
        .collect();
    broker.write_raw(&garbage).await;
    broker.write_raw(b"\n").await;
    // A truncated message, then one with a corrupted byte (its checksum fails).
    let ping = broker
        .codec
        .encode_line(&Envelope::new(
            Role::Broker,
            Some(nonce.clone()),
            Body::Ping { id: 99 },
        ))
        .unwrap();
    broker.write_raw(&ping[..ping.len() / 2]).await;
    broker.write_raw(b"\n").await;
    let mut corrupt = ping.clone();
    let i = corrupt.iter().position(|b| *b == b'9').unwrap();
    corrupt[i] = b'8';
    broker.write_raw(&corrupt).await;
    // Still the same session: a ping is answered, and only that one.
    broker.ping(5).await;
    assert!(
        !broker
            .seen
            .iter()
            .any(|m| m.from == Role::Agent && matches!(m.body, Body::Pong { id: 99 | 89 })),
        "the truncated or corrupted ping was answered"
    );
    let result = broker.push(1, &config(r#"{"hostname":"noisy"}"#)).await;
    assert!(result.all_ok(), "{result:?}");
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn broker_echo_before_raw_mode_is_flushed_and_ignored() {
    let guest = Guest::new();
    let pty = pty();
    let mut broker = Broker::new(pty);
    // A fresh pty is cooked with echo on, like hvc before the agent opens it: what the
    // broker writes now comes straight back to it, and waits in the tty's input queue.
    let stale = broker.send_hello().await;
    let echo = broker
        .next_until(Instant::now() + WAIT)
        .await
        .expect("the pty echoes the hello");
    assert_eq!(echo.from, Role::Broker);
    assert_eq!(broker.rules.classify(&echo), Verdict::OwnEcho);

    guest.link_channel(1, &broker.pty.path.clone(), CHANNEL);
    let agent = start(guest.opts());
    // The agent flushed that stale hello: it beacons instead of answering it.
    broker.wait_for("a beacon", is_beacon).await;
    let fresh = broker.send_hello().await;
    broker.wait_for_session_hello(&fresh).await;
    assert!(
        !broker
            .seen
            .iter()
            .any(|m| m.from == Role::Agent && m.session.as_ref() == Some(&stale)),
        "the agent answered a hello that was written before it opened the device"
    );
    // Raw mode: the broker's bytes are no longer echoed.
    broker.ping(1).await;
    assert_eq!(
        broker
            .seen
            .iter()
            .filter(|m| m.from == Role::Broker)
            .count(),
        1,
        "only the pre-open hello was echoed"
    );
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn agent_ignores_its_own_replayed_messages() {
    let guest = Guest::new();
    let (mut broker, agent, nonce) = session(&guest).await;
    // What QEMU replays: the agent's own beacon and answers, from before.
    let own = [
        Envelope::new(
            Role::Agent,
            None,
            Body::Hello(Hello {
                channel: CHANNEL.into(),
                ..Hello::default()
            }),
        ),
        Envelope::new(Role::Agent, Some(nonce.clone()), Body::Pong { id: 3 }),
        Envelope::new(Role::Agent, Some(nonce.clone()), Body::Ping { id: 4 }),
    ];
    for m in &own {
        broker.send(m).await;
    }
    broker
        .expect_none(
            "an answer to the agent's own message",
            Duration::from_millis(150),
            |_| true,
        )
        .await;
    broker.ping(8).await;
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn host_disconnects_mid_message_and_comes_back() {
    let guest = Guest::new();
    let (mut broker, agent, old) = session(&guest).await;
    // The broker dies halfway through a push: half a line, no newline.
    let push = Envelope::new(
        Role::Broker,
        Some(old.clone()),
        Body::Config(xenchan_protocol::message::ConfigPush::new(
            1,
            config(r#"{"hostname":"half"}"#),
        )),
    );
    let line = broker.codec.encode_line(&push).unwrap();
    broker.write_raw(&line[..line.len() - 20]).await;
    // A new broker connects; its hello lands on the same line as the fragment.
    broker.rules = xenchan_protocol::session::SessionRules::new(Role::Broker);
    let fresh = broker.send_hello().await;
    let hello = broker.wait_for_session_hello(&fresh).await;
    assert!(hello.applied.is_none(), "the half push was not applied");
    assert_eq!(
        std::fs::read_to_string(guest.path("etc/hostname")).unwrap(),
        "localhost\n"
    );
    // Late bytes of the old session are ignored.
    broker
        .send(&Envelope::new(
            Role::Broker,
            Some(old),
            Body::Ping { id: 41 },
        ))
        .await;
    broker.ping(42).await;
    assert!(
        !broker
            .seen
            .iter()
            .any(|m| matches!(m.body, Body::Pong { id: 41 }))
    );
    let result = broker.push(2, &config(r#"{"hostname":"whole"}"#)).await;
    assert!(result.all_ok());
    assert_eq!(
        std::fs::read_to_string(guest.path("etc/hostname")).unwrap(),
        "whole\n"
    );
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn silent_broker_is_given_up_after_three_keepalives() {
    let guest = Guest::new();
    let pty = pty();
    guest.link_channel(1, &pty.path, CHANNEL);
    let mut broker = Broker::new(pty);
    let mut opts = guest.opts();
    let keepalive = Duration::from_millis(100);
    opts.timing.keepalive = keepalive;
    let agent = start(opts);
    broker.handshake().await;
    let in_session = broker.seen.len();
    // Pings keep the session alive well past 3 keepalive intervals.
    let alive_until = Instant::now() + keepalive * 6;
    let mut id = 0;
    let mut last_ping = Instant::now();
    while Instant::now() < alive_until {
        id += 1;
        last_ping = Instant::now();
        broker.ping(id).await;
        tokio::time::sleep(keepalive / 2).await;
    }
    assert!(
        !broker.seen[in_session..]
            .iter()
            .any(|m| m.from == Role::Agent && is_beacon(m)),
        "the agent beaconed while the broker was pinging"
    );
    // Then silence: the agent goes back to beaconing 3 intervals after the last message
    // it got (the last ping), not before.
    broker
        .wait_for("a beacon after the broker went silent", is_beacon)
        .await;
    let waited = last_ping.elapsed();
    assert!(
        waited + Duration::from_millis(5) >= keepalive * 3,
        "gave up {waited:?} after the last ping"
    );
    // And a new broker gets a session.
    let fresh = broker.send_hello().await;
    broker.wait_for_session_hello(&fresh).await;
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_says_bye() {
    let guest = Guest::new();
    let (mut broker, agent, nonce) = session(&guest).await;
    agent.stop().await.unwrap();
    let bye = broker
        .wait_for("bye", |m| matches!(m.body, Body::Bye { .. }))
        .await;
    assert_eq!(bye.session, Some(nonce));
}

#[tokio::test]
async fn channel_mismatch_is_refused() {
    let guest = Guest::new();
    let pty = pty();
    guest.link_channel(1, &pty.path, CHANNEL);
    let mut broker = Broker::new(pty);
    broker.channel = "org.example.other.1".into();
    let agent = start(guest.opts());
    broker.wait_for("a beacon", is_beacon).await;
    let nonce = broker.send_hello().await;
    let err = broker
        .wait_for("channel-mismatch", is_error(ErrorCode::ChannelMismatch))
        .await;
    assert_eq!(err.session, Some(nonce.clone()));
    // Not adopted: the agent keeps announcing itself and never answers the hello.
    broker.wait_for("another beacon", is_beacon).await;
    assert!(!broker.seen.iter().any(|m| m.from == Role::Agent
        && m.session.as_ref() == Some(&nonce)
        && matches!(m.body, Body::Hello(_))));
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn identity_mismatch_is_refused() {
    let guest = Guest::new();
    let pty = pty();
    guest.link_channel(1, &pty.path, CHANNEL);
    let mut broker = Broker::new(pty);
    broker.uuid = Some("00000000-0000-4000-8000-000000000000".into());
    let agent = start(guest.opts());
    broker.wait_for("a beacon", is_beacon).await;
    broker.send_hello().await;
    let err = broker
        .wait_for("identity-mismatch", is_error(ErrorCode::IdentityMismatch))
        .await;
    let Body::Error(e) = err.body else {
        unreachable!()
    };
    assert!(e.message.contains(UUID), "{}", e.message);
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn no_common_version_is_refused() {
    let guest = Guest::new();
    let pty = pty();
    guest.link_channel(1, &pty.path, CHANNEL);
    let mut broker = Broker::new(pty);
    let agent = start(guest.opts());
    broker.wait_for("a beacon", is_beacon).await;
    let nonce = Nonce::from_bytes(rand::random());
    broker.rules.set_session(nonce.clone());
    let hello = Hello {
        versions: Some(vec![7, 8]),
        ..broker.hello_body()
    };
    broker
        .send(&Envelope::new(
            Role::Broker,
            Some(nonce),
            Body::Hello(hello),
        ))
        .await;
    let err = broker
        .wait_for("no-common-version", is_error(ErrorCode::NoCommonVersion))
        .await;
    let Body::Error(e) = err.body else {
        unreachable!()
    };
    assert!(e.message.contains("[7, 8]"), "{}", e.message);
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_push_with_a_wrong_digest_is_refused() {
    let guest = Guest::new();
    let (mut broker, agent, nonce) = session(&guest).await;
    let push = xenchan_protocol::message::ConfigPush {
        digest: config(r#"{"hostname":"other"}"#).digest(),
        ..xenchan_protocol::message::ConfigPush::new(3, config(r#"{"hostname":"evil"}"#))
    };
    broker
        .send(&Envelope::new(
            Role::Broker,
            Some(nonce),
            Body::Config(push),
        ))
        .await;
    broker
        .wait_for("bad-config", is_error(ErrorCode::BadConfig))
        .await;
    assert_eq!(
        std::fs::read_to_string(guest.path("etc/hostname")).unwrap(),
        "localhost\n"
    );
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn facts_describe_the_guest() {
    let guest = Guest::new();
    let pty = pty();
    guest.link_channel(1, &pty.path, CHANNEL);
    let mut broker = Broker::new(pty);
    let agent = start(guest.opts());
    broker.handshake().await;
    let facts = broker
        .seen
        .iter()
        .find_map(|m| match &m.body {
            Body::Facts(f) => Some(f.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(facts.os, "Debian GNU/Linux 12 (bookworm)");
    assert_eq!(facts.hostname, "localhost");
    assert_eq!(
        facts.agent,
        format!("xenchan-agent {}", env!("CARGO_PKG_VERSION"))
    );
    agent.stop().await.unwrap();
}

/// Every answer of one run of the agent carries the same instance, a repeated hello
/// included (the broker keeps its push in flight for it); a restarted agent has another.
#[tokio::test]
async fn answers_carry_one_instance_per_agent_run() {
    let guest = Guest::new();
    let (mut broker, agent, nonce) = session(&guest).await;
    let first = broker
        .seen
        .iter()
        .find_map(|m| match &m.body {
            Body::Hello(h) if m.from == Role::Agent && m.session.as_ref() == Some(&nonce) => {
                Some(h.clone())
            }
            _ => None,
        })
        .expect("the agent's answer");
    let instance = first.instance().expect("a usable instance").to_string();
    assert_eq!(instance.len(), 16, "{instance}");
    assert!(
        instance.bytes().all(|b| b.is_ascii_hexdigit()),
        "{instance}"
    );
    // The broker says hello again in the same session (it saw a beacon).
    broker
        .send(&Envelope::new(
            Role::Broker,
            Some(nonce.clone()),
            Body::Hello(broker.hello_body()),
        ))
        .await;
    let again = broker
        .wait_for("a second answer", |m| {
            matches!(m.body, Body::Hello(_)) && m.session.as_ref() == Some(&nonce)
        })
        .await;
    let Body::Hello(again) = again.body else {
        unreachable!()
    };
    assert_eq!(again.instance.as_deref(), Some(instance.as_str()));
    let beacon_instance = |b: &Body| match b {
        Body::Hello(h) => h.instance.clone(),
        _ => None,
    };
    assert!(
        broker
            .seen
            .iter()
            .filter(|m| is_beacon(m))
            .all(|m| beacon_instance(&m.body).as_deref() == Some(instance.as_str())),
        "beacons carry the instance too"
    );
    agent.stop().await.unwrap();

    // A new run of the agent.
    let agent = start(guest.opts());
    let (_, answer) = broker.handshake().await;
    let second = answer.instance().expect("a usable instance");
    assert_ne!(second, instance, "a restarted agent has a new instance");
    agent.stop().await.unwrap();
}
