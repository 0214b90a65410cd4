//! The agent finds its device however the link comes and goes: a link made after it
//! started, one that was there before, a link removed and re-made to another device, a
//! dangling link whose device appears later, and an explicit --device.

mod common;

use common::*;
use xenchan_protocol::Body;

#[tokio::test]
async fn finds_a_link_created_after_start() {
    let guest = Guest::new();
    let agent = start(guest.opts());
    // The channel folder does not exist yet: the agent watches its parent.
    eventually("the agent watches <root>/dev", || {
        inotify_watches(&guest.path("dev"))
    })
    .await;
    assert!(!guest.path("dev/xen-channel").exists());
    let pty = pty();
    let path = pty.path.clone();
    let mut broker = Broker::new(pty);
    guest.link_channel(1, &path, CHANNEL);
    let (_, hello) = broker.handshake().await;
    assert_eq!(hello.channel, CHANNEL);
    assert_eq!(hello.uuid.as_deref(), Some(UUID));
    assert_eq!(hello.versions, Some(vec![1]));
    assert!(hello.applied.is_none());
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn finds_a_link_that_existed_before_start() {
    let guest = Guest::new();
    let pty = pty();
    guest.link_channel(1, &pty.path, CHANNEL);
    let mut broker = Broker::new(pty);
    let agent = start(guest.opts());
    broker.handshake().await;
    broker.ping(7).await;
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn ignores_other_channels_links() {
    let guest = Guest::new();
    let other = pty();
    guest.link_channel(2, &other.path, "org.example.other.1");
    let mut other = Broker::new(other);
    let agent = start(guest.opts());
    let pty = pty();
    let mut broker = Broker::new(pty);
    guest.link_channel(1, &broker.pty.path.clone(), CHANNEL);
    broker.handshake().await;
    other
        .expect_none(
            "a message on another channel's device",
            std::time::Duration::from_millis(100),
            |_| true,
        )
        .await;
    assert_eq!(
        open_count(&other.pty.path),
        1,
        "only the test holds the other device"
    );
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn closes_the_device_when_the_link_goes_and_follows_a_new_one() {
    let guest = Guest::new();
    let first = pty();
    guest.link_channel(1, &first.path, CHANNEL);
    let mut first = Broker::new(first);
    let agent = start(guest.opts());
    first.handshake().await;
    assert_eq!(
        open_count(&first.pty.path),
        2,
        "test slave fd + the agent's"
    );

    guest.unlink_channel(CHANNEL);
    eventually("the agent closed the first device", || {
        open_count(&first.pty.path) == 1
    })
    .await;

    // A new console, on another hvc: the agent follows the link there.
    let second = pty();
    let mut second = Broker::new(second);
    guest.link_channel(2, &second.pty.path.clone(), CHANNEL);
    second.handshake().await;
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_link_replaced_to_point_elsewhere_is_followed() {
    let guest = Guest::new();
    let first = pty();
    guest.link_channel(1, &first.path, CHANNEL);
    let mut first = Broker::new(first);
    let agent = start(guest.opts());
    first.handshake().await;
    let second = pty();
    let mut second = Broker::new(second);
    // Renamed over the old link in one step, as xen-console-setup does.
    guest.link_channel(3, &second.pty.path.clone(), CHANNEL);
    second.handshake().await;
    eventually("the agent closed the first device", || {
        open_count(&first.pty.path) == 1
    })
    .await;
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_dangling_link_is_retried_until_its_device_appears() {
    let guest = Guest::new();
    // The link exists before its device does (like ENODEV right after hotplug).
    std::fs::create_dir_all(guest.path("dev/xen-channel")).unwrap();
    std::os::unix::fs::symlink("../hvc1", guest.path("dev/xen-channel").join(CHANNEL)).unwrap();
    let agent = start(guest.opts());
    let pty = pty();
    let mut broker = Broker::new(pty);
    // No folder event happens when the device appears: only the retry finds it.
    std::os::unix::fs::symlink(&broker.pty.path, guest.path("dev/hvc1")).unwrap();
    broker.handshake().await;
    assert!(agent.is_running());
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn virtio_folder_is_watched_too() {
    let guest = Guest::new();
    std::fs::create_dir_all(guest.path("dev/virtio-ports")).unwrap();
    let agent = start(guest.opts());
    eventually("the agent watches the virtio folder", || {
        inotify_watches(&guest.path("dev/virtio-ports"))
    })
    .await;
    let pty = pty();
    let mut broker = Broker::new(pty);
    std::os::unix::fs::symlink(
        &broker.pty.path,
        guest.path("dev/virtio-ports").join(CHANNEL),
    )
    .unwrap();
    broker.handshake().await;
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn explicit_device_skips_discovery() {
    let guest = Guest::new();
    let pty = pty();
    let mut opts = guest.opts();
    opts.device = Some(pty.path.clone());
    let mut broker = Broker::new(pty);
    let agent = start(opts);
    let (nonce, _) = broker.handshake().await;
    broker
        .send(&xenchan_protocol::Envelope::new(
            xenchan_protocol::Role::Broker,
            Some(nonce),
            Body::Bye {
                reason: "test".into(),
            },
        ))
        .await;
    // After bye the agent beacons again.
    broker.wait_for("a beacon after bye", is_beacon).await;
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_hung_up_device_is_reopened() {
    let guest = Guest::new();
    let first = pty();
    guest.link_channel(1, &first.path, CHANNEL);
    let mut first = Broker::new(first);
    let agent = start(guest.opts());
    first.handshake().await;
    // hvc1 first leads nowhere (so the agent cannot reopen a pts number another test
    // gets next), then its host side goes away for good: the agent's fd is hung up.
    let hvc = guest.path("dev/hvc1");
    std::fs::remove_file(&hvc).unwrap();
    std::os::unix::fs::symlink(guest.path("dev/nothing-yet"), &hvc).unwrap();
    drop(first);
    // The agent retries the same link (no folder event happens) until it works again.
    let second = pty();
    let tmp = guest.path("dev/.hvc1.new");
    std::os::unix::fs::symlink(&second.path, &tmp).unwrap();
    std::fs::rename(&tmp, &hvc).unwrap();
    let mut second = Broker::new(second);
    second.handshake().await;
    assert!(agent.is_running());
    agent.stop().await.unwrap();
}
