//! Confinement by nats-server itself, on the secured config `muster security init` writes: what each identity's
//! credentials may and may not do, connections without credentials or TLS, and revocation. Raw async-nats clients
//! with the minted credentials; a permission violation shows up as an `Event::ServerError` naming the subject
//! (nats-server answers `-ERR 'Permissions Violation for Publish to "..."'` and keeps the connection).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, consumer, stream};
use async_nats::{Client, ConnectOptions, Event};
use futures::StreamExt;
use muster_security::creds::Creds;
use muster_tests::secure::SecureNats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// How long a refused operation's error may take to come back.
const VIOLATION_WAIT: Duration = Duration::from_secs(2);
/// How long an allowed operation is watched for a violation before it counts as allowed.
const QUIET: Duration = Duration::from_millis(300);

/// A client and the events its connection reported.
struct Raw {
    client: Client,
    events: mpsc::UnboundedReceiver<Event>,
}

impl Raw {
    /// Connects with `creds` over TLS, its inbox `_INBOX.<public key>` as muster's connect sets it.
    async fn connect(nats: &SecureNats, creds: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(creds)?;
        let public = Creds::parse(&text)?.public_key()?;
        let (tx, events) = mpsc::unbounded_channel();
        let client = ConnectOptions::with_credentials(&text)?
            .add_root_certificates(nats.security().ca_cert())
            .require_tls(true)
            .custom_inbox_prefix(format!("_INBOX.{public}"))
            .request_timeout(Some(Duration::from_secs(2)))
            .event_callback(move |e| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(e);
                }
            })
            .connect(nats.url())
            .await?;
        Ok(Self { client, events })
    }

    fn drain(&mut self) -> Vec<String> {
        let mut seen = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            seen.push(e.to_string());
        }
        seen
    }

    /// Waits up to `limit` for a permission violation naming `subject`; returns what was seen.
    async fn violation(&mut self, kind: &str, subject: &str, limit: Duration) -> Option<String> {
        let want = format!("Permissions Violation for {kind} to \"{subject}\"");
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Event::ServerError(e))) if e.to_string().contains(&want) => return Some(e.to_string()),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    }

    async fn assert_publish_refused(&mut self, subject: &str) -> anyhow::Result<()> {
        self.drain();
        self.client.publish(subject.to_owned(), "x".into()).await?;
        self.client.flush().await?;
        self.violation("Publish", subject, VIOLATION_WAIT)
            .await
            .with_context(|| format!("publishing to {subject} was not refused"))?;
        Ok(())
    }

    async fn assert_subscribe_refused(&mut self, subject: &str) -> anyhow::Result<()> {
        self.drain();
        let _sub = self.client.subscribe(subject.to_owned()).await?;
        self.client.flush().await?;
        self.violation("Subscription", subject, VIOLATION_WAIT)
            .await
            .with_context(|| format!("subscribing to {subject} was not refused"))?;
        Ok(())
    }

    /// Publishes to `subject` and checks `watcher` (the server identity, subscribed to it) receives it. The
    /// publish is repeated until it arrives: async-nats's flush does not wait for nats-server to have processed the
    /// watcher's subscription, so the first publish may precede it.
    async fn assert_publish_delivered(&mut self, watcher: &Client, subject: &str) -> anyhow::Result<()> {
        let mut sub = watcher.subscribe(subject.to_owned()).await?;
        watcher.flush().await?;
        self.drain();
        let deadline = tokio::time::Instant::now() + VIOLATION_WAIT;
        let mut msg = None;
        while msg.is_none() && tokio::time::Instant::now() < deadline {
            self.client.publish(subject.to_owned(), "ok".into()).await?;
            self.client.flush().await?;
            msg = tokio::time::timeout(Duration::from_millis(100), sub.next()).await.ok().flatten();
        }
        anyhow::ensure!(msg.is_some(), "{subject}: not delivered; events {:?}", self.drain());
        anyhow::ensure!(self.violation("Publish", subject, QUIET).await.is_none(), "{subject} was refused");
        Ok(())
    }
}

/// The streams as muster-server creates them (server/src/log.rs `ensure_work_streams`), with the server identity.
async fn create_work_streams(server: &Client) -> anyhow::Result<jetstream::Context> {
    let js = jetstream::new(server.clone());
    js.create_stream(stream::Config {
        name: "MUSTER_COMMANDS".into(),
        subjects: vec!["muster.cmd.*".into()],
        storage: stream::StorageType::File,
        allow_direct: true,
        ..Default::default()
    })
    .await?;
    js.create_stream(stream::Config {
        name: "MUSTER_REPORTS".into(),
        subjects: vec!["muster.report.*".into()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await?;
    Ok(js)
}

/// A pull consumer as agents once made it for their catch-up (now refused): named after the host, filtered to one
/// command subject.
fn catchup(name: &str, host: &str) -> consumer::pull::Config {
    consumer::pull::Config {
        name: Some(name.to_owned()),
        filter_subject: format!("muster.cmd.{host}"),
        deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: 1 },
        ack_policy: consumer::AckPolicy::None,
        inactive_threshold: Duration::from_secs(30),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_agent_reaches_only_its_own_subjects() -> anyhow::Result<()> {
    let nats = SecureNats::start().await?;
    let server = nats.connect_as(&nats.creds("server")).await?;
    let js = create_work_streams(&server).await?;
    for (host, n) in [("h1", 2), ("h2", 1)] {
        for i in 0..n {
            js.publish(format!("muster.cmd.{host}"), format!("secret {host} {i}").into()).await?.await?;
        }
    }
    let mut agent = Raw::connect(&nats, &nats.mint_agent("h1")?).await?;
    nats.mint_agent("h2")?;

    // Its own protocol: registration (request/reply through its own inbox), heartbeats, reports with acks.
    let mut reg = server.subscribe("muster.reg.*").await?;
    let responder = server.clone();
    tokio::spawn(async move {
        while let Some(m) = reg.next().await {
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, "accepted".into()).await;
            }
        }
    });
    server.flush().await?;
    // A round trip on the server's connection: nats-server has processed its subscription once it answers.
    js.query_account().await?;
    let answer = agent.client.request("muster.reg.h1", "hello".into()).await?;
    assert_eq!(&answer.payload[..], b"accepted");
    agent.assert_publish_delivered(&server, "muster.hb.h1").await?;
    let ajs = jetstream::new(agent.client.clone());
    let ack = ajs.publish("muster.report.h1", "report".into()).await?.await?;
    assert_eq!(ack.stream, "MUSTER_REPORTS");
    // Its commands: delivered live, and the last one read back by a direct get by subject (the rest of its catch-up
    // is a request the servers answer: `an_agent_creates_no_consumer_and_catches_up_only_through_its_own_subject`).
    let mut live = agent.client.subscribe("muster.cmd.h1").await?;
    // A round trip on the agent's connection, so its subscription is in place before the command is sent.
    agent.client.request("muster.reg.h1", "again".into()).await?;
    js.publish("muster.cmd.h1", "live".into()).await?.await?;
    let got = tokio::time::timeout(VIOLATION_WAIT, live.next()).await?.context("no live command")?;
    assert_eq!(&got.payload[..], b"live");
    let commands = ajs.get_stream_no_info("MUSTER_COMMANDS").await?;
    let last = commands.direct_get_last_for_subject("muster.cmd.h1").await?;
    assert_eq!(&last.payload[..], b"live");
    assert!(agent.drain().iter().all(|e| !e.contains("Violation")), "own protocol refused: {:?}", agent.drain());

    // Another host's subjects, any command subject, the log, the API's writes: refused by nats-server.
    for subject in [
        "muster.reg.h2",
        "muster.hb.h2",
        "muster.report.h2",
        "muster.cmd.h1",
        "muster.cmd.h2",
        "muster.txn",
        "muster.api.request.create",
        "muster.api.hosts",
        "muster.leader.request.create",
        "$JS.API.STREAM.CREATE.EVIL",
        "$JS.API.STREAM.MSG.GET.MUSTER_COMMANDS",
        "$JS.API.DIRECT.GET.MUSTER_COMMANDS",
        "$JS.API.DIRECT.GET.MUSTER_COMMANDS.muster.cmd.h2",
        "$KV.muster-election.leader",
    ] {
        agent.assert_publish_refused(subject).await?;
    }
    for subject in ["muster.cmd.h2", "muster.cmd.*", "muster.report.>", "muster.txn", "_INBOX.>", "muster.events.>"] {
        agent.assert_subscribe_refused(subject).await?;
    }
    // Reading another host's commands from MUSTER_COMMANDS: no consumer on its subject, under any name.
    for (name, host) in [("h2", "h2"), ("h1", "h2")] {
        agent.drain();
        let created = commands.create_consumer(catchup(name, host)).await;
        assert!(created.is_err(), "consumer {name} on muster.cmd.{host} was created");
        let subject = format!("$JS.API.CONSUMER.CREATE.MUSTER_COMMANDS.{name}.muster.cmd.{host}");
        assert!(agent.violation("Publish", &subject, VIOLATION_WAIT).await.is_some(), "{subject} not refused");
    }
    let unfiltered = commands.create_consumer(catchup("h1", "h1").with_no_filter()).await;
    assert!(unfiltered.is_err(), "an unfiltered consumer was created");
    Ok(())
}

#[tokio::test]
async fn an_agent_creates_no_consumer_and_catches_up_only_through_its_own_subject() -> anyhow::Result<()> {
    let nats = SecureNats::start().await?;
    let server = nats.connect_as(&nats.creds("server")).await?;
    let js = create_work_streams(&server).await?;
    js.publish("muster.cmd.h1", "secret h1".into()).await?.await?;
    let mut agent = Raw::connect(&nats, &nats.mint_agent("h1")?).await?;
    // What a push consumer with a deliver subject of the agent's choosing would make JetStream publish there.
    let mut txn = server.subscribe("muster.txn").await?;
    server.flush().await?;
    js.query_account().await?;

    // No consumer on MUSTER_COMMANDS, in any form, not even on its own subject; no other consumer call either.
    for subject in [
        "$JS.API.CONSUMER.CREATE.MUSTER_COMMANDS.h1.muster.cmd.h1",
        "$JS.API.CONSUMER.CREATE.MUSTER_COMMANDS.h1",
        "$JS.API.CONSUMER.CREATE.MUSTER_COMMANDS",
        "$JS.API.CONSUMER.DURABLE.CREATE.MUSTER_COMMANDS.h1",
        "$JS.API.CONSUMER.MSG.NEXT.MUSTER_COMMANDS.h1",
        "$JS.API.CONSUMER.DELETE.MUSTER_COMMANDS.h1",
        "$JS.API.CONSUMER.INFO.MUSTER_COMMANDS.h1",
        "$JS.API.CONSUMER.LIST.MUSTER_COMMANDS",
    ] {
        agent.assert_publish_refused(subject).await?;
    }
    let commands = jetstream::new(agent.client.clone()).get_stream_no_info("MUSTER_COMMANDS").await?;
    let push = consumer::push::Config {
        name: Some("h1".into()),
        filter_subject: "muster.cmd.h1".into(),
        deliver_subject: "muster.txn".into(),
        deliver_policy: consumer::DeliverPolicy::All,
        ..Default::default()
    };
    assert!(commands.create_consumer(push.clone()).await.is_err(), "a push consumer was created");
    let durable = consumer::push::Config { durable_name: Some("h1".into()), name: None, ..push };
    assert!(commands.create_consumer(durable).await.is_err(), "a durable push consumer was created");
    assert!(commands.create_consumer(catchup("h1", "h1")).await.is_err(), "a pull consumer was created");
    let info = jetstream::new(server.clone()).get_stream("MUSTER_COMMANDS").await?.info().await?.clone();
    assert_eq!(info.state.consumer_count, 0, "a consumer exists on MUSTER_COMMANDS");
    let leaked = tokio::time::timeout(QUIET, txn.next()).await;
    assert!(leaked.is_err(), "a stored command reached muster.txn: {leaked:?}");

    // Its catch-up is a request the servers answer: its own host's, not another's.
    let mut asks = server.subscribe("muster.catchup.*").await?;
    let responder = server.clone();
    tokio::spawn(async move {
        while let Some(m) = asks.next().await {
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, m.subject.as_str().to_owned().into()).await;
            }
        }
    });
    server.flush().await?;
    js.query_account().await?;
    agent.drain();
    let answer = agent.client.request("muster.catchup.h1", "from 1".into()).await?;
    assert_eq!(&answer.payload[..], b"muster.catchup.h1");
    assert!(agent.drain().iter().all(|e| !e.contains("Violation")), "own catch-up refused");
    for subject in ["muster.catchup.h2", "muster.catchup.h1.x"] {
        agent.assert_publish_refused(subject).await?;
    }
    Ok(())
}

/// `Config::filter_subject` cleared: async-nats then uses the create subject without a filter.
trait NoFilter {
    fn with_no_filter(self) -> Self;
}
impl NoFilter for consumer::pull::Config {
    fn with_no_filter(mut self) -> Self {
        self.filter_subject = String::new();
        self
    }
}

#[tokio::test]
async fn connections_without_credentials_or_without_tls_are_refused() -> anyhow::Result<()> {
    let nats = SecureNats::start().await?;
    // TLS, no credentials.
    let anonymous = ConnectOptions::new()
        .add_root_certificates(nats.security().ca_cert())
        .require_tls(true)
        .connect(nats.url())
        .await;
    let err = anonymous.err().context("a connection without credentials was accepted")?;
    assert!(err.to_string().to_lowercase().contains("authorization"), "{err}");
    // Credentials, no TLS: speak plain NATS on the socket; the server only answers with TLS.
    let mut tcp =
        tokio::net::TcpStream::connect(("127.0.0.1", nats.url().rsplit(':').next().unwrap_or("0").parse::<u16>()?))
            .await?;
    let mut buf = vec![0u8; 4096];
    let n = tcp.read(&mut buf).await?;
    let info = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(info.contains("\"tls_required\":true"), "{info}");
    tcp.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"tls_required\":false}\r\nPING\r\n").await?;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(!answer.contains("PONG"), "a plain-text connection was served: {answer}");
    // Credentials without trusting the CA: the server's certificate is not accepted.
    let text = std::fs::read_to_string(nats.creds("admin"))?;
    let untrusted = ConnectOptions::with_credentials(&text)?.require_tls(true).connect(nats.url()).await;
    assert!(untrusted.is_err(), "a client that does not trust the CA connected");
    Ok(())
}

#[tokio::test]
async fn a_viewer_reads_but_cannot_write_and_an_admin_can() -> anyhow::Result<()> {
    let nats = SecureNats::start().await?;
    let server = nats.connect_as(&nats.creds("server")).await?;
    let mut api = server.subscribe("muster.api.>").await?;
    let responder = server.clone();
    tokio::spawn(async move {
        while let Some(m) = api.next().await {
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, m.subject.as_str().to_owned().into()).await;
            }
        }
    });
    server.flush().await?;
    jetstream::new(server.clone()).query_account().await?;
    let mut viewer = Raw::connect(&nats, &nats.creds("viewer")).await?;
    for read in ["muster.api.hosts", "muster.api.summary", "muster.api.request"] {
        let r = viewer.client.request(read.to_owned(), "".into()).await?;
        assert_eq!(&r.payload[..], read.as_bytes());
    }
    viewer.assert_publish_delivered(&server, "muster.servers").await?;
    for write in ["muster.api.request.create", "muster.api.stack.apply", "muster.api.request.cancel"] {
        viewer.assert_publish_refused(write).await?;
    }
    viewer.assert_publish_refused("muster.txn").await?;
    viewer.assert_subscribe_refused("muster.cmd.*").await?;
    let _feed = viewer.client.subscribe("muster.events.>").await?;
    viewer.client.flush().await?;
    assert!(viewer.violation("Subscription", "muster.events.>", QUIET).await.is_none());

    let admin = Raw::connect(&nats, &nats.creds("admin")).await?;
    let r = admin.client.request("muster.api.request.create", "{}".into()).await?;
    assert_eq!(&r.payload[..], b"muster.api.request.create");
    Ok(())
}

#[tokio::test]
async fn a_revoked_agent_is_cut_off_at_once_and_cannot_reconnect() -> anyhow::Result<()> {
    let nats = SecureNats::start().await?;
    let h1 = nats.mint_agent("h1")?;
    let h2 = nats.mint_agent("h2")?;
    let mut agent = Raw::connect(&nats, &h1).await?;
    let mut other = Raw::connect(&nats, &h2).await?;
    agent.drain();
    let muster = muster_tests::paths::workspace_bin("muster")?;
    let revoke = |host: &str| {
        let mut cmd = std::process::Command::new(&muster);
        cmd.args(["creds", "revoke", host, "--dir"]).arg(nats.security().root());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("MUSTER_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("MUSTER_NATS_URL", nats.url());
        cmd.output()
    };
    let start = Instant::now();
    let out = revoke("h1")?;
    let command_done = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "revoke failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    let key = Creds::parse(&std::fs::read_to_string(&h1)?)?.public_key()?;
    assert!(stdout.contains(&key), "revoke did not print the key: {stdout}");
    let cut = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(e) = agent.events.recv().await {
            if matches!(e, Event::Disconnected) {
                return;
            }
        }
    })
    .await;
    let cut_after = start.elapsed();
    assert!(
        cut.is_ok() && cut_after < Duration::from_secs(5),
        "the revoked agent was still connected 5 s after revoke"
    );
    eprintln!(
        "revocation: `muster creds revoke` took {command_done:?}; the agent was cut off {cut_after:?} after it started"
    );
    // The revoked credentials are refused from now on; the other host's still work.
    let again = Raw::connect(&nats, &h1).await;
    assert!(again.is_err(), "the revoked agent reconnected");
    assert!(other.drain().iter().all(|e| e != "disconnected"), "the other agent was cut off too");
    other.assert_publish_refused("muster.hb.h1").await?;
    let server = nats.connect_as(&nats.creds("server")).await?;
    other.assert_publish_delivered(&server, "muster.hb.h2").await?;
    // Nothing left to revoke: the command fails.
    let out = revoke("h1")?;
    assert!(!out.status.success(), "a second revoke succeeded");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no unrevoked credentials"));
    Ok(())
}

/// The operator's view of the same rules, through `muster` on a running cluster: viewer credentials list hosts but a
/// write is refused by nats-server at once (not after the write timeout), and `muster creds revoke` cuts a live
/// agent off so that it goes HEARTBEAT_LOST within the detection window.
#[tokio::test]
async fn through_the_cli_a_viewer_cannot_write_and_a_revoked_host_goes_heartbeat_lost() -> anyhow::Result<()> {
    use muster_schemas::HostState;
    use muster_tests::{Cli, Identity, Muster};

    let mut m = Muster::start(&["h1", "h2"]).await?;
    m.wait_all(HostState::Healthy, Duration::from_secs(30)).await?;

    let viewer = Cli::as_identity(m.nats.url(), &m.identities, Identity::Viewer)?;
    let hosts = viewer.hosts().await?;
    assert_eq!(hosts.len(), 2, "the viewer should read every host: {hosts:?}");
    let started = Instant::now();
    let write = viewer.output(&["run", "--", "true"], Duration::from_secs(30)).await?;
    assert!(!write.status.success(), "a viewer's write ran: {}", write.stdout);
    assert!(
        write.stderr.contains("NATS refused this identity") && write.stderr.contains("muster.api.request.create"),
        "the refusal should name the permission and the subject: {}",
        write.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(5), "the refusal took {:?}", started.elapsed());

    let dir = m.identities.security().context("the cluster is secured")?.root().to_path_buf();
    let revoke = m.cli.run(&["creds", "revoke", "h1", "--dir", dir.to_str().context("UTF-8 path")?]).await?;
    assert!(revoke.contains("revoked host h1"), "{revoke}");
    // The agent keeps running (it retries its connection, refused); only its host's state matters here.
    let _cut_off = m.agents.remove("h1");
    let limit = m.timing.detection_window() + Duration::from_secs(10);
    m.wait_for_states(&[("h1", HostState::HeartbeatLost), ("h2", HostState::Healthy)], limit).await?;
    Ok(())
}
