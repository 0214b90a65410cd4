//! The light guest emulator behind the broker-scale figures: for each domain a unix
//! socket (where QEMU would listen) served by a task that speaks the agent's side of the
//! protocol with the real `FrameCodec`: it answers the broker's hello as this build's
//! agent does (`applied` absent, so every domain gets a push; `capabilities` naming every
//! item kind), answers a config with a result marking every item applied, and answers
//! pings. Nothing is applied: the figures are the broker's.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::FramedRead;
use xenchan_protocol::Capabilities;
use xenchan_protocol::message::{ApplyResult, Body, ConfigPush, Hello};
use xenchan_protocol::session::SessionRules;
use xenchan_protocol::{
    DEFAULT_CHANNEL, Envelope, FrameCodec, ItemResult, ItemStatus, MAX_FRAME_DEFAULT, Role,
    SUPPORTED_VERSIONS, Verdict,
};

/// A result for `push` with every item applied.
pub fn applied_result(push: &ConfigPush) -> ApplyResult {
    ApplyResult {
        generation: push.generation,
        digest: push.digest.clone(),
        items: push
            .config
            .items()
            .into_iter()
            .map(|i| ItemResult::new(i, ItemStatus::Applied))
            .collect(),
    }
}

/// The socket of domain `i` (1-based) in `dir`: short names, so that 10,000 of them fit
/// and the path stays far below the 107-byte limit.
pub fn socket_path(dir: &Path, prefix: &str, i: usize) -> PathBuf {
    dir.join(format!("{prefix}{i:05}.sock"))
}

/// The domain name of socket `i`.
pub fn domain_name(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:05}")
}

/// The VM UUID domain `i` (1-based) reports when the swarm runs with `--uuids` (cluster
/// mode: a domain's identity in etcd is its UUID, and a broker that recorded one pushes
/// nothing to an agent reporting none). Version 4 and RFC 4122 variant digits, the index
/// in the last group, so that it is unique per domain and readable in logs.
pub fn uuid_for(i: usize) -> String {
    format!("0bec0000-0000-4000-8000-{i:012}")
}

/// What the swarm has done, for its exit line.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Sessions answered.
    pub sessions: AtomicU64,
    /// Results sent.
    pub results: AtomicU64,
}

/// Serves one socket for ever, one client at a time (as QEMU does). Its hellos report
/// `uuid` as the VM's UUID (what the guest reads from `/sys/hypervisor/uuid`), if any.
pub async fn serve_socket(listener: UnixListener, counters: Arc<Counters>, uuid: Option<String>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        counters.connections.fetch_add(1, Ordering::Relaxed);
        serve_connection(stream, &counters, uuid.as_deref()).await;
    }
}

async fn serve_connection(stream: UnixStream, counters: &Counters, uuid: Option<&str>) {
    let (r, mut w) = stream.into_split();
    // A small read buffer: ten thousand of these live at once.
    let mut frames = FramedRead::with_capacity(r, FrameCodec::new(MAX_FRAME_DEFAULT), 2048);
    let codec = FrameCodec::new(MAX_FRAME_DEFAULT);
    let mut rules = SessionRules::new(Role::Agent);
    while let Some(Ok(env)) = frames.next().await {
        let reply = match rules.classify(&env) {
            Verdict::NewSession => {
                let Some(nonce) = env.session.clone() else {
                    continue;
                };
                rules.set_session(nonce.clone());
                counters.sessions.fetch_add(1, Ordering::Relaxed);
                // What this build's agent announces: every item kind it applies.
                let hello = Hello {
                    versions: Some(SUPPORTED_VERSIONS.to_vec()),
                    channel: DEFAULT_CHANNEL.to_string(),
                    software: "xenchan-bench-swarm".into(),
                    uuid: uuid.map(str::to_string),
                    capabilities: Some(Capabilities::ours()),
                    ..Hello::default()
                };
                Envelope::new(Role::Agent, Some(nonce), Body::Hello(hello))
            }
            Verdict::Accept => match env.body {
                Body::Config(push) => {
                    counters.results.fetch_add(1, Ordering::Relaxed);
                    Envelope::new(
                        Role::Agent,
                        env.session,
                        Body::Result(applied_result(&push)),
                    )
                }
                Body::Ping { id } => Envelope::new(Role::Agent, env.session, Body::Pong { id }),
                Body::Hello(_) => {
                    let hello = Hello {
                        versions: Some(SUPPORTED_VERSIONS.to_vec()),
                        channel: DEFAULT_CHANNEL.to_string(),
                        software: "xenchan-bench-swarm".into(),
                        capabilities: Some(Capabilities::ours()),
                        ..Hello::default()
                    };
                    Envelope::new(Role::Agent, env.session, Body::Hello(hello))
                }
                _ => continue,
            },
            _ => continue,
        };
        let Ok(line) = codec.encode_line(&reply) else {
            continue;
        };
        if w.write_all(&line).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

    #[test]
    fn names_are_short_and_ordered() {
        let p = socket_path(Path::new("/tmp/x"), "d", 42);
        assert_eq!(p, Path::new("/tmp/x/d00042.sock"));
        assert_eq!(domain_name("d", 10_000), "d10000");
        assert_eq!(domain_name("d", 100_000), "d100000");
    }

    #[test]
    fn uuids_are_valid_distinct_and_lowercase() {
        let a = uuid_for(1);
        let b = uuid_for(100_000);
        assert_eq!(a, "0bec0000-0000-4000-8000-000000000001");
        assert_ne!(a, b);
        for u in [&a, &b] {
            let groups: Vec<usize> = u.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12], "{u}");
            assert!(
                u.chars()
                    .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c))
            );
        }
    }

    /// The swarm answers a real session as an agent would: the broker's side of the
    /// latency measurement pushes to it and gets one applied item per config item.
    #[test]
    fn a_swarm_socket_answers_a_push() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path(), "d", 1);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(async { UnixListener::bind(&path) }).unwrap();
        let counters = Arc::new(Counters::default());
        let c2 = Arc::clone(&counters);
        let server = std::thread::spawn(move || {
            rt.block_on(async move {
                tokio::select! {
                    () = serve_socket(listener, c2, None) => {}
                    () = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
                }
            });
        });
        let config = crate::configs::latency_config(0, "00:16:3e:00:00:01");
        let (result, times) =
            wire::push_once(&path, &config, 7, std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(result.generation, 7);
        assert_eq!(result.items.len(), config.items().len());
        assert!(result.all_ok());
        assert!(times.handshake <= times.total);
        assert_eq!(counters.results.load(Ordering::Relaxed), 1);
        drop(server);
    }
}
