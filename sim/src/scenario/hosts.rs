//! The scenarios that need several hosts on one etcd (`--hosts 2` or more): a live
//! migration of the target between hosts, and the loss of the target's host. Both are
//! judged from the guest's side (the channel's wiretap, the guest's files, its agent
//! process), from etcd itself (who owns the VM) and from the brokers' push counters.

use std::time::{Duration, Instant};

use xenchan_api::client::{Client, ClientError};
use xenchan_api::types::MigratePrepareRequest;

use super::{Play, ScenarioError, TARGET, mtime, prepare_request};
use crate::checks;
use crate::configs;
use crate::wait::Timeout;
use crate::world::SimError;

impl Play<'_> {
    /// The target's host and the next one (where it goes).
    fn source_and_destination(&self) -> Result<(usize, usize), ScenarioError> {
        let n = self.sim.hosts().len();
        let a = self
            .sim
            .host_of(TARGET)
            .ok_or_else(|| ScenarioError::Hosts(format!("{TARGET} runs on no host")))?;
        Ok((a, (a + 1) % n))
    }

    /// Waits until etcd names `want` as the owner of `name`'s VM; returns how long it took.
    async fn owner_becomes(
        &self,
        name: &str,
        want: Option<&str>,
    ) -> Result<Duration, ScenarioError> {
        let uuid = self.sim.domain(name)?.spec().uuid.clone();
        let cluster = self
            .sim
            .cluster()
            .ok_or_else(|| ScenarioError::Hosts("no hosts".into()))?;
        let start = Instant::now();
        let mut last;
        loop {
            match cluster.owner(&uuid).await {
                Ok(o) if o.as_deref() == want => return Ok(start.elapsed()),
                Ok(o) => last = format!("owner {o:?}"),
                Err(e) => last = format!("{:#}", anyhow::Error::new(e)),
            }
            if start.elapsed() > self.p.deadline {
                return Err(ScenarioError::Timeout(Timeout {
                    what: format!("etcd to name {want:?} as {name}'s owner"),
                    waited: start.elapsed(),
                    last,
                }));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Another domain asking for the target's address, through every live host's broker,
    /// is refused 409 naming the target (the VM holds its lease, whatever host runs it).
    async fn lease_held(&mut self, when: &str) -> Result<(), ScenarioError> {
        let other = self.others()[0].clone();
        let addr = configs::ipv4_for(self.numbers[TARGET]);
        let taken = self.config_with_address(&other, &addr)?;
        let uuid = self.sim.domain(&other)?.spec().uuid.clone();
        let clients: Vec<(String, Client)> = self
            .sim
            .hosts()
            .iter()
            .filter(|h| !h.lost)
            .map(|h| (h.name.clone(), h.client()))
            .collect();
        for (host, client) in clients {
            let name =
                format!("leases: {TARGET}'s address stays its own {when} (PUT through {host})");
            match client.put_config(&other, &taken, Some(&uuid)).await {
                Err(ClientError::Api { status: 409, error }) => self.check(
                    name,
                    error.domain.as_deref() == Some(TARGET),
                    format!("409 names {:?}", error.domain),
                ),
                r => self.check(
                    name,
                    false,
                    format!("PUT of {addr} for {other} answered {r:?}, want 409 naming {TARGET}"),
                ),
            }
        }
        Ok(())
    }

    /// A new configuration for the target through `client`; every domain converges and
    /// the check `what` holds when that generation reached the guest exactly once.
    async fn change_reaches_once(
        &mut self,
        client: &Client,
        names: &[String],
        what: &str,
    ) -> Result<(), ScenarioError> {
        let c = self.config_for(TARGET, 0, "-v2")?;
        let generation = self
            .put_through(client, TARGET, c)
            .await?
            .desired_generation
            .unwrap_or(0);
        self.converge(names).await?;
        let n = checks::pushes_of(self.sim.domain(TARGET)?, generation);
        self.check(
            what,
            n == 1,
            format!("generation {generation} reached the guest {n} times"),
        );
        Ok(())
    }

    /// Pushes counted by the brokers (`xenchan_pushes_total`, plus `before` for brokers
    /// no longer running) equal the config frames that reached the guests: every push
    /// the brokers made arrived once, and no guest got one the brokers did not count.
    async fn pushes_match(&mut self, before: u64) -> Result<(), ScenarioError> {
        let mut counted = before;
        let clients: Vec<Client> = self
            .sim
            .hosts()
            .iter()
            .filter(|h| !h.lost)
            .map(crate::cluster::SimHost::client)
            .collect();
        for c in clients {
            counted += checks::pushes_total(&c.metrics().await?).unwrap_or(0);
        }
        let frames: usize = self.sim.domains().map(checks::config_frames).sum();
        self.check(
            "pushes: the brokers' push counters equal the configs the guests received",
            counted == frames as u64,
            format!("brokers counted {counted}, guests received {frames}"),
        );
        let repeated: Vec<String> = self
            .sim
            .domains()
            .flat_map(checks::repeated_pushes)
            .collect();
        self.checks.push(checks::Check::from_problems(
            "pushes: no generation reached a guest twice",
            &repeated,
        ));
        Ok(())
    }

    /// `migrate`: the target, configured on host A, live-migrates to host B while it runs.
    pub(super) async fn migrate(&mut self) -> Result<(), ScenarioError> {
        self.plain().await?;
        let (src, dst) = self.source_and_destination()?;
        let (a_name, a_client) = (
            self.sim.hosts()[src].name.clone(),
            self.sim.hosts()[src].client(),
        );
        let (b_name, b_client) = (
            self.sim.hosts()[dst].name.clone(),
            self.sim.hosts()[dst].client(),
        );
        let b_dir = self.sim.hosts()[dst].socket_dir.clone();
        self.owner_becomes(TARGET, Some(&a_name)).await?;
        let d = self.sim.domain(TARGET)?;
        let uuid = d.spec().uuid.clone();
        let (pid, tty, boots, domid) = (
            d.agent_pid(),
            d.hvc_slave().map(std::path::Path::to_path_buf),
            d.boots(),
            d.domid(),
        );
        let old_socket = d.socket_path();
        let hostname_mtime = mtime(&d.root().join("etc/hostname"));
        let frames_before = checks::config_frames(d);

        // libvirt on B, `migrate begin`: the destination registers the incoming VM.
        self.log(&format!("migrating {TARGET} from {a_name} to {b_name}: prepare on {b_name} (libvirt's `migrate begin`, then `prepare begin`)"));
        let step = b_client
            .migrate_prepare(
                &uuid,
                &MigratePrepareRequest {
                    name: Some(TARGET.into()),
                },
            )
            .await?;
        self.check(
            "migrate: prepared on the destination while the source still owns",
            step.owner.as_deref() == Some(a_name.as_str())
                && step.incoming.as_deref() == Some(b_name.as_str()),
            format!("owner {:?}, incoming {:?}", step.owner, step.incoming),
        );
        b_client.prepare(TARGET, &prepare_request(&uuid)).await?;
        self.lease_held("after prepare").await?;

        // The switchover: the same guest, its channel now served by B's QEMU.
        self.log(&format!(
            "switchover: {TARGET}'s channel socket moves to {b_name}'s folder; {a_name}'s goes away"
        ));
        self.sim
            .domain_mut(TARGET)?
            .migrate(&b_dir)
            .await
            .map_err(|source| SimError::Domain {
                name: TARGET.into(),
                source,
            })?;
        let d = self.sim.domain(TARGET)?;
        let new_socket = d.socket_path();
        let (pid2, tty2, boots2, domid2, agent_up) = (
            d.agent_pid(),
            d.hvc_slave().map(std::path::Path::to_path_buf),
            d.boots(),
            d.domid(),
            d.agent_running(),
        );
        self.check(
            "migrate: the source's socket is gone and the destination's is there",
            !old_socket.exists() && new_socket.exists(),
            format!(
                "{} exists: {}; {} exists: {}",
                old_socket.display(),
                old_socket.exists(),
                new_socket.display(),
                new_socket.exists()
            ),
        );
        self.check(
            "migrate: the same guest moved (same agent process, same tty, no reboot), with a new domid",
            pid2 == pid && tty2 == tty && boots2 == boots && agent_up && domid2 != domid,
            format!(
                "agent {pid:?} -> {pid2:?}, tty {tty:?} -> {tty2:?}, boots {boots} -> {boots2}, domid {domid:?} -> {domid2:?}"
            ),
        );
        self.lease_held("during the hand-off").await?;

        // libvirt on B, `started begin`: ownership moves.
        self.log(&format!(
            "complete on {b_name} (libvirt's `started begin`); {a_name}'s libvirt releases it"
        ));
        let step = b_client.migrate_complete(&uuid).await?;
        self.check(
            "migrate: complete moved ownership to the destination",
            step.owner.as_deref() == Some(b_name.as_str()) && step.incoming.is_none(),
            format!("owner {:?}, incoming {:?}", step.owner, step.incoming),
        );
        a_client.release(TARGET).await?;
        let names = self.sim.names();
        self.converge(&names).await?;
        self.owner_becomes(TARGET, Some(&b_name)).await?;
        self.check(
            "migrate: etcd names the destination as the owner at the end",
            true,
            b_name.clone(),
        );
        let d = self.sim.domain(TARGET)?;
        let after = checks::config_frames(d);
        let mtime_after = mtime(&d.root().join("etc/hostname"));
        self.check(
            "migrate: nothing pushed to the guest by the hand-off",
            after == frames_before,
            format!(
                "{} config frame(s) reached it after the move",
                after - frames_before
            ),
        );
        self.check(
            "migrate: nothing applied again (etc/hostname not rewritten)",
            hostname_mtime.is_some() && hostname_mtime == mtime_after,
            format!("etc/hostname mtime {hostname_mtime:?} -> {mtime_after:?}"),
        );
        self.lease_held("after the migration").await?;

        // A change through the old source reaches the guest on the destination, once.
        self.log(&format!(
            "a new config for {TARGET} through {a_name}, the old source"
        ));
        self.change_reaches_once(
            &a_client,
            &names,
            "migrate: a PUT through the old source reached the guest on the destination exactly once",
        )
        .await?;
        self.pushes_match(0).await
    }

    /// libvirt's `prepare begin` of `name` on a host, retried as an orchestrator would while
    /// it is refused because another live host runs the VM (the lock-manager rule: that
    /// host may be dead, but until its etcd lease expires nobody can know). Returns the
    /// first refusal's message, if any.
    async fn prepare_when_free(
        &self,
        client: &Client,
        name: &str,
        uuid: &str,
    ) -> Result<Option<String>, ScenarioError> {
        let start = Instant::now();
        let mut first = None;
        loop {
            match client.prepare(name, &prepare_request(uuid)).await {
                Ok(_) => return Ok(first),
                Err(ClientError::Api { status: 409, error })
                    if error.path.as_deref() == Some("owner") =>
                {
                    if first.is_none() {
                        self.log(&format!(
                            "{name}: refused, as it should be: {}",
                            error.error
                        ));
                    }
                    let text = first.get_or_insert(error.error);
                    if start.elapsed() > self.p.deadline {
                        return Err(ScenarioError::Timeout(Timeout {
                            what: format!("{name}'s old host's lease to expire"),
                            waited: start.elapsed(),
                            last: text.clone(),
                        }));
                    }
                }
                Err(e) => return Err(e.into()),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `host-loss`: `kill -9` of the target's host's broker; the host's domains are
    /// restarted on the next host, which claims them when the dead host's lease expires.
    pub(super) async fn host_loss(&mut self) -> Result<(), ScenarioError> {
        self.plain().await?;
        let (src, dst) = self.source_and_destination()?;
        let a_name = self.sim.hosts()[src].name.clone();
        let (b_name, b_client) = (
            self.sim.hosts()[dst].name.clone(),
            self.sim.hosts()[dst].client(),
        );
        let b_dir = self.sim.hosts()[dst].socket_dir.clone();
        self.owner_becomes(TARGET, Some(&a_name)).await?;
        let lost: Vec<String> = self
            .sim
            .names()
            .into_iter()
            .filter(|n| self.sim.host_of(n) == Some(src))
            .collect();
        let mut before = Vec::new();
        for n in &lost {
            let d = self.sim.domain(n)?;
            let v = self.sim.client_for(n)?.get_domain(n).await?;
            before.push((
                n.clone(),
                d.domid(),
                mtime(&d.root().join("etc/hostname")),
                v.desired_generation,
            ));
        }
        let a_pushes =
            checks::pushes_total(&self.sim.hosts()[src].client().metrics().await?).unwrap_or(0);

        self.log(&format!(
            "host {a_name} dies: kill -9 of its broker; its domains ({}) die with it",
            lost.join(", ")
        ));
        let host = self.sim.host_mut(src)?;
        host.broker.kill().await;
        host.lost = true;
        let died = Instant::now();
        for n in &lost {
            self.sim.domain_mut(n)?.destroy().await;
        }
        self.log(&format!("restarting them on {b_name}: prepare with the UUID (libvirt's `prepare begin`), then boot with the same disk"));
        let mut refused = None;
        for n in &lost {
            let uuid = self.sim.domain(n)?.spec().uuid.clone();
            if let Some(r) = self.prepare_when_free(&b_client, n, &uuid).await? {
                refused.get_or_insert(r);
            }
            let d = self.sim.domain_mut(n)?;
            let booted = match d.set_socket_dir(&b_dir) {
                Ok(()) => d.boot().await,
                Err(e) => Err(e),
            };
            booted.map_err(|source| SimError::Domain {
                name: n.clone(),
                source,
            })?;
        }
        let took = self.owner_becomes(TARGET, Some(&b_name)).await?;
        let since_kill = died.elapsed();
        self.check(
            "host-loss: starting the VMs elsewhere is refused while the dead host's lease lives",
            refused.as_ref().is_some_and(|e| e.contains(&a_name)),
            refused.unwrap_or_else(|| "no refusal: started while the lease lived".into()),
        );
        self.log(&format!(
            "{b_name} owns {TARGET} {:.1} s after {a_name} was killed (host TTL {} s)",
            since_kill.as_secs_f64(),
            crate::cluster::HOST_TTL_MS / 1000
        ));
        self.check(
            "host-loss: the survivor claimed the domain once the dead host's lease expired",
            since_kill >= Duration::from_millis(crate::cluster::HOST_TTL_MS / 2),
            format!(
                "owner after {:.1} s (waited {:.1} s for it)",
                since_kill.as_secs_f64(),
                took.as_secs_f64()
            ),
        );
        let names = self.sim.names();
        self.converge(&names).await?;
        for (n, domid, hostname_mtime, generation) in before {
            let d = self.sim.domain(&n)?;
            let pushed = checks::pushes_in_boot(d, d.boots());
            let new_domid = d.domid();
            let mtime_after = mtime(&d.root().join("etc/hostname"));
            self.check(
                format!("host-loss: {n} restarted on {b_name} (new domid) got nothing pushed"),
                pushed == 0 && new_domid != domid,
                format!("{pushed} config frame(s); domid {domid:?} -> {new_domid:?}"),
            );
            self.check(
                format!("host-loss: {n}: nothing applied again (etc/hostname not rewritten)"),
                hostname_mtime.is_some() && hostname_mtime == mtime_after,
                format!("etc/hostname mtime {hostname_mtime:?} -> {mtime_after:?}"),
            );
            let v = b_client.get_domain(&n).await?;
            self.check(
                format!("host-loss: {n}: the desired configuration survived its host"),
                v.desired_generation == generation && v.applied_generation == generation,
                format!(
                    "desired {:?}, applied {:?}, before {generation:?}",
                    v.desired_generation, v.applied_generation
                ),
            );
        }
        self.lease_held("after its host was lost").await?;

        self.log(&format!("a new config for {TARGET} through {b_name}"));
        self.change_reaches_once(
            &b_client,
            &names,
            "host-loss: the next change reached the restarted guest exactly once",
        )
        .await?;
        self.pushes_match(a_pushes).await
    }
}
