//! What the broker's cluster tests share (`cluster_*.rs`): a broker configuration on a
//! real etcd, and an etcd client looking on. Each test binary declares `mod support;`
//! and the etcd harness as `mod etcd;` (cluster/tests/support) beside this module.

#![allow(dead_code)]

use xenchan_broker::config::{Backend, Config};
use xenchan_cluster::{Cluster, Uuid};

use xenchan_broker::api::types::PrepareRequest;

use crate::support::{DEADLINE, Dirs, TestBroker, sample_config, wait_until};

/// A broker of the cluster at `url`, as `host`, under `prefix`, with short timeouts: a
/// call gives up after 3 s, a lost host's ownership goes after 2 s.
pub fn cluster_config(dirs: &Dirs, url: &str, prefix: &str, host: &str) -> Config {
    let mut c = dirs.config();
    c.store.backend = Backend::Etcd;
    c.store.endpoints = vec![url.to_string()];
    c.store.prefix = prefix.to_string();
    c.store.host = Some(host.to_string());
    c.store.timeouts.connect = 500;
    c.store.timeouts.request = 3000;
    c.store.timeouts.host_ttl = 2000;
    c
}

/// An etcd client looking on (as host `observer`), to read ownership and what etcd
/// holds as applied.
pub async fn observer(url: &str, prefix: &str) -> Cluster {
    crate::etcd::connect(&[url.to_string()], prefix, "observer", crate::etcd::quick()).await
}

/// Waits until etcd names `want` as the owner of VM `uuid`.
pub async fn owner_is(obs: &Cluster, uuid: &str, want: Option<&str>) {
    let u = Uuid::parse(uuid).unwrap();
    wait_until(&format!("owner {want:?}"), DEADLINE, || async {
        let o = obs.ownership(&u).await.unwrap();
        (o.owner.as_deref() == want).then_some(())
    })
    .await;
}

/// Waits until etcd holds generation `g` as what VM `uuid`'s agent applied.
pub async fn applied_in_etcd(obs: &Cluster, uuid: &str, g: u64) {
    let u = Uuid::parse(uuid).unwrap();
    wait_until(
        &format!("applied generation {g} in etcd"),
        DEADLINE,
        || async {
            obs.applied(&u)
                .await
                .unwrap()
                .filter(|a| a.generation == g)
                .map(drop)
        },
    )
    .await;
}

/// Prepares `web1` on `broker` as VM `uuid` and PUTs its sample configuration
/// (web1.example.com, 192.0.2.10/24) through it.
pub async fn run_web1(broker: &TestBroker, uuid: &str) {
    let req = PrepareRequest {
        uuid: Some(uuid.into()),
        ..PrepareRequest::default()
    };
    broker.client.prepare("web1", &req).await.unwrap();
    let cfg = sample_config("web1.example.com", "192.0.2.10/24");
    broker
        .client
        .put_config("web1", &cfg, Some(uuid))
        .await
        .unwrap();
}
