//! Plays a whole protocol v1 session through the real codec and session rules, and prints
//! what crosses the channel: stale replayed bytes, a modem prober's AT commands, the echo
//! of the broker's hello before the guest tty is raw, the handshake, a push and its
//! result, a keepalive, the broker going away, and a second broker re-attaching without a
//! re-push. `docs/PROTOCOL.md` shows this output.
//!
//! Run: `cargo run -p xenchan-protocol --example transcript`

use bytes::BytesMut;
use tokio_util::codec::Decoder;
use xenchan_protocol::config::GuestConfig;
use xenchan_protocol::message::{
    Applied, ApplyResult, Body, ConfigPush, Envelope, GuestFacts, Hello, ItemResult, ItemStatus,
    Role,
};
use xenchan_protocol::session::{SessionRules, negotiate};
use xenchan_protocol::{Capabilities, FrameCodec, Lineage, Nonce, SUPPORTED_VERSIONS, Verdict};

const CHANNEL: &str = "org.xenchan.agent.1";
const UUID: &str = "6f0c1e4e-9a3b-4a53-8d7e-0d9f3f1c2b7a";
/// The agent process's instance (random at its start; fixed here for a stable transcript).
const INSTANCE: u64 = 0x5e1f_a9c0_33d2_7b14;

/// One side's receive path: the codec plus the session rules.
struct Side {
    name: &'static str,
    codec: FrameCodec,
    buf: BytesMut,
    rules: SessionRules,
}

impl Side {
    fn new(name: &'static str, role: Role) -> Self {
        Side {
            name,
            codec: FrameCodec::default(),
            buf: BytesMut::new(),
            rules: SessionRules::new(role),
        }
    }

    /// Bytes arrive; returns the messages this side acts on, printing the fate of each.
    fn receive(&mut self, bytes: &[u8]) -> Vec<(Verdict, Envelope)> {
        let before = self.codec.stats().skipped();
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(msg) = self.codec.decode(&mut self.buf).expect("no I/O here") {
            let verdict = self.rules.classify(&msg);
            let note = match verdict {
                Verdict::Accept | Verdict::NewSession => "acted on",
                Verdict::Beacon => "beacon: answered with a hello, never taken as an answer",
                Verdict::OwnEcho => "own echo: ignored",
                Verdict::Stale => "stale session: ignored",
                Verdict::UnknownVersion => "unknown version: ignored",
            };
            println!("    {} <- {} [{}]", self.name, msg.kind(), note);
            if matches!(
                verdict,
                Verdict::Accept | Verdict::NewSession | Verdict::Beacon
            ) {
                out.push((verdict, msg));
            }
        }
        let skipped = self.codec.stats().skipped() - before;
        if skipped > 0 {
            println!("    {} skipped {skipped} line(s) of noise", self.name);
        }
        out
    }
}

fn wire(from: &str, to: &str, bytes: &[u8]) {
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        println!("{from} -> {to}: {}", shown(line));
    }
}

/// The bytes as text, with line ends and other control bytes made visible.
fn shown(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| match b {
            b'\n' => "\\n".to_string(),
            b'\r' => "\\r".to_string(),
            0x20..=0x7e => char::from(b).to_string(),
            _ => format!("\\x{b:02x}"),
        })
        .collect()
}

fn send(msg: &Envelope) -> Vec<u8> {
    FrameCodec::default()
        .encode_line(msg)
        .expect("small messages fit")
}

fn agent_hello(session: Option<Nonce>, applied: Option<Applied>) -> Envelope {
    Envelope::new(
        Role::Agent,
        session,
        Body::Hello(Hello {
            versions: Some(SUPPORTED_VERSIONS.to_vec()),
            channel: CHANNEL.into(),
            uuid: Some(UUID.into()),
            software: "xenchan-agent 0.1.0".into(),
            applied,
            instance: Some(Hello::new_instance(INSTANCE)),
            capabilities: Some(Capabilities::ours()),
            ..Hello::default()
        }),
    )
}

fn broker_hello(session: &Nonce) -> Envelope {
    Envelope::new(
        Role::Broker,
        Some(session.clone()),
        Body::Hello(Hello {
            versions: Some(SUPPORTED_VERSIONS.to_vec()),
            channel: CHANNEL.into(),
            domain: Some("web1".into()),
            uuid: Some(UUID.into()),
            software: "xenchan-broker 0.1.0".into(),
            ..Hello::default()
        }),
    )
}

fn main() {
    let config = GuestConfig::from_json(
        br#"{"hostname": "web1.example.com",
             "network": {"version": 2, "ethernets": {"eth0": {
                 "match": {"macaddress": "00:16:3e:12:34:56"},
                 "addresses": ["192.0.2.10/24"],
                 "routes": [{"to": "default", "via": "192.0.2.1"}]}}}}"#,
    )
    .expect("the example document is valid");
    let digest = config.digest();
    // The broker's store chose its lineage once (random; fixed here for a stable transcript).
    let lineage = Lineage::from_bits(0x7d3a_51c2_9e04_4b8f_a6d1_0c93_2f58_e174);

    let mut broker = Side::new("broker", Role::Broker);
    let mut agent = Side::new("agent", Role::Agent);

    println!("# 1. The agent starts before any broker and beacons. QEMU keeps these bytes.");
    let beacon = send(&agent_hello(None, None));
    let mut replay = beacon.clone();
    println!("agent -> (held by QEMU): {}", shown(&beacon));

    println!("\n# 2. A broker connects with a fresh nonce; QEMU replays the stale beacon and");
    println!("#    a modem prober's AT commands reach the broker too.");
    let n1 =
        Nonce::from_bytes(*b"\x9f\x2c\x11\x07\x42\x42\xaa\x01\x00\x10\x20\x30\x40\x50\x60\x70");
    let hello1 = send(&broker_hello(&n1));
    broker.rules.set_session(n1.clone());
    wire("broker", "agent", &hello1);
    replay.extend_from_slice(b"AT+CGMI\r\nATZ\r\n");
    wire("agent", "broker", &replay);
    for (verdict, _) in broker.receive(&replay) {
        assert_eq!(verdict, Verdict::Beacon);
    }

    println!("\n# 3. The guest tty is not raw yet: it echoes the broker's hello back.");
    wire("agent(echo)", "broker", &hello1);
    assert!(broker.receive(&hello1).is_empty());

    println!("\n# 4. The agent reads the hello, adopts the session, answers and reports facts.");
    for (verdict, msg) in agent.receive(&hello1) {
        assert_eq!(verdict, Verdict::NewSession);
        let session = msg.session.clone().expect("broker hellos carry a nonce");
        agent.rules.set_session(session);
    }
    let answer = send(&agent_hello(Some(n1.clone()), None));
    let facts = send(&Envelope::new(
        Role::Agent,
        Some(n1.clone()),
        Body::Facts(GuestFacts {
            agent: "xenchan-agent 0.1.0".into(),
            os: "Debian GNU/Linux 12 (bookworm)".into(),
            kernel: "6.1.0-28-amd64".into(),
            hostname: "localhost".into(),
            interfaces: Vec::new(),
            host_keys: Vec::new(),
        }),
    ));
    let mut bytes = answer.clone();
    bytes.extend_from_slice(&facts);
    wire("agent", "broker", &bytes);
    for (_, msg) in broker.receive(&bytes) {
        if let Body::Hello(h) = &msg.body {
            let v = negotiate(SUPPORTED_VERSIONS, h.versions.as_deref()).expect("common version");
            println!("    broker: negotiated version {v}; agent has applied nothing: push");
        }
    }

    println!("\n# 5. The push and its result.");
    let push = send(&Envelope::new(
        Role::Broker,
        Some(n1.clone()),
        Body::Config(ConfigPush::new(1, config.clone()).with_lineage(lineage.clone())),
    ));
    wire("broker", "agent", &push);
    for (_, msg) in agent.receive(&push) {
        if let Body::Config(p) = &msg.body {
            assert_eq!(p.config.digest(), p.digest, "the agent checks the digest");
            println!(
                "    agent: digest verified; applying items {:?}",
                p.config.items()
            );
        }
    }
    let result = send(&Envelope::new(
        Role::Agent,
        Some(n1.clone()),
        Body::Result(ApplyResult {
            generation: 1,
            digest: digest.clone(),
            items: vec![
                ItemResult::new("hostname", ItemStatus::Applied),
                ItemResult::new("network:eth0", ItemStatus::Applied),
            ],
        }),
    ));
    wire("agent", "broker", &result);
    broker.receive(&result);

    println!("\n# 6. Keepalive.");
    let ping = send(&Envelope::new(
        Role::Broker,
        Some(n1.clone()),
        Body::Ping { id: 1 },
    ));
    wire("broker", "agent", &ping);
    agent.receive(&ping);
    let pong = send(&Envelope::new(
        Role::Agent,
        Some(n1.clone()),
        Body::Pong { id: 1 },
    ));
    wire("agent", "broker", &pong);
    broker.receive(&pong);

    println!("\n# 7. The broker restarts. The agent cannot see it; a pong it wrote meanwhile is");
    println!("#    held by QEMU and replayed, stale, to the new broker, which says hello with a");
    println!("#    new nonce. The agent reports generation 1 applied: nothing is re-pushed.");
    let mut broker = Side::new("broker", Role::Broker);
    let n2 =
        Nonce::from_bytes(*b"\x51\x0e\x77\x3a\x00\x00\x00\x00\xde\xad\xbe\xef\x01\x02\x03\x04");
    broker.rules.set_session(n2.clone());
    let hello2 = send(&broker_hello(&n2));
    wire("broker", "agent", &hello2);
    wire("agent(replayed)", "broker", &pong);
    assert!(broker.receive(&pong).is_empty());
    for (verdict, msg) in agent.receive(&hello2) {
        assert_eq!(verdict, Verdict::NewSession);
        agent.rules.set_session(msg.session.expect("nonce"));
    }
    let answer2 = send(&agent_hello(
        Some(n2.clone()),
        Some(Applied {
            generation: 1,
            digest: digest.clone(),
            lineage: Some(lineage.clone()),
        }),
    ));
    wire("agent", "broker", &answer2);
    for (_, msg) in broker.receive(&answer2) {
        if let Body::Hello(Hello {
            applied: Some(a), ..
        }) = &msg.body
        {
            assert_eq!((a.generation, &a.digest), (1, &digest));
            println!("    broker: agent has generation 1 (desired 1): no push");
        }
    }
    let late = send(&Envelope::new(Role::Broker, Some(n1), Body::Ping { id: 2 }));
    println!("\n# 8. A ping of the old session arrives late at the agent: dropped.");
    wire("broker(old)", "agent", &late);
    agent.receive(&late);

    let bye = send(&Envelope::new(
        Role::Broker,
        Some(n2),
        Body::Bye {
            reason: "broker shutting down".into(),
        },
    ));
    println!("\n# 9. Orderly shutdown.");
    wire("broker", "agent", &bye);
    agent.receive(&bye);
    println!(
        "\nbroker decoder: {:?}\nagent decoder:  {:?}",
        broker.codec.stats(),
        agent.codec.stats()
    );
}
