//! muster's Debian packages as on a host that is not a container (docs/packages.md): muster-server, muster-agent
//! and muster-cli, made by cargo-deb from the debug binaries of `make build`, installed with `dpkg -i` in a Debian
//! trixie container that boots systemd as PID 1, and run from their units against a secured nats-server.
//!
//! - The shipped default configs name every setting of the binaries' settings tables, and no other (no Docker).
//! - After `dpkg -i`: the system user `muster`, /var/lib/muster (muster, 0750) and /var/lib/muster-agent (root,
//!   0700), the binaries, the example configs as conffiles, the units as shipped, enabled, and skipped (not failed)
//!   while /etc/muster/server.toml and agent.toml do not exist.
//! - With configs made from the shipped examples and the keys of `muster security init` in /etc/muster,
//!   `systemctl start` runs the server as `muster`; the agent, run as root with only an enrollment token, keeps the
//!   credentials it gets in its unit's state directory, registers and is HEALTHY, seen by the host's `muster`
//!   through the published NATS port and by the packaged `muster` inside.
//! - A daemon a command left running survives a restart of the agent (KillMode=process) and its stop; reinstalling
//!   the package restarts the agent and leaves the operator's config alone; the agent stops cleanly (exit 0).
//! - `dpkg --purge muster-agent` removes it and its state; `dpkg -r muster-server` stops it and keeps its data.
//!
//! Fails, not skips, without Docker.

use std::path::Path;
use std::time::{Duration, Instant};

use muster_schemas::api::HostSummary;
use muster_schemas::cluster::TaskStatus;
use muster_schemas::HostState;
use muster_security::roles::Role;
use muster_tests::cli::CALL_TIMEOUT as CALL;
use muster_tests::debian::{
    build_packages, check_example, configure, docs_settings, ensure_systemd_image, example_settings, require_docker,
    toml_string, Container,
};
use muster_tests::paths::{nats_server_bin, workspace_root};
use muster_tests::requests::{describe_request, wait_request_end};
use muster_tests::wait::{wait_until, Check};
use muster_tests::{Cli, Identities, TestDir};

/// The container's host name and the agent's host id.
const HOST: &str = "pkg-host";
/// How long the agent may take to register and report HEALTHY after its unit starts (or restarts).
const HEALTHY: Duration = Duration::from_secs(60);
/// How long an ad-hoc run may take end to end.
const RUN: Duration = Duration::from_secs(60);

/// The shipped example configs against the docs' settings tables, which the crates' own unit tests
/// (`docs_*_md_holds_the_settings_table`) hold equal to the tables the binaries load with: a setting renamed or
/// removed in the code fails here until the shipped config follows.
#[test]
fn shipped_configs_name_every_setting_and_no_other() {
    let root = workspace_root();
    for (example, docs, heading) in [
        ("packaging/agent/agent.toml.example", "docs/agent.md", "## Configuration"),
        ("packaging/server/server.toml.example", "docs/configuration.md", "## muster-server"),
    ] {
        let text = std::fs::read_to_string(root.join(example)).unwrap();
        let table = docs_settings(&std::fs::read_to_string(root.join(docs)).unwrap(), heading).unwrap();
        let settings = example_settings(&text).unwrap_or_else(|e| panic!("{example}: {e:#}"));
        let problems = check_example(&settings, &table);
        assert!(problems.is_empty(), "{example} against the table in {docs}:\n{}", problems.join("\n"));
    }
}

#[tokio::test]
async fn packages_install_and_run_under_systemd() {
    let began = Instant::now();
    require_docker().await.unwrap();
    let dir = TestDir::new().unwrap();
    let identities = Identities::secured(dir.path()).unwrap();
    let sec = identities.security().unwrap().clone();

    let t = Instant::now();
    let debs = build_packages(&dir.join("packages")).await.unwrap();
    for deb in &debs {
        let size = std::fs::metadata(deb).unwrap().len();
        eprintln!("{}: {:.1} MiB", deb.file_name().unwrap().to_string_lossy(), size as f64 / 1048576.0);
    }
    eprintln!("packages made in {:.1?}", t.elapsed());
    let [server_deb, agent_deb, cli_deb] = [&debs[0], &debs[1], &debs[2]].map(|p| path(p));

    let t = Instant::now();
    ensure_systemd_image().await.unwrap();
    eprintln!("image ready in {:.1?}", t.elapsed());
    let nats = dir.join("nats-server");
    std::fs::copy(nats_server_bin().unwrap(), &nats).unwrap();

    let t = Instant::now();
    let mut c = Container::boot("packages", HOST, &[dir.path()], 4222).await.unwrap();
    for unit in ["muster-server", "muster-agent", "test-nats"] {
        c.watch(unit);
    }
    eprintln!("container {} booted in {:.1?}", c.name(), t.elapsed());

    // --- install -----------------------------------------------------------------------------------------------------
    let installed = c.exec(&["dpkg", "-i", &server_deb, &agent_deb, &cli_deb]).await.unwrap().success().unwrap();
    eprintln!("{installed}");
    let status = c
        .sh("dpkg-query -W -f '${Package} ${Status} ${Depends}\\n' muster-server muster-agent muster-cli")
        .await
        .unwrap();
    for package in ["muster-server", "muster-agent", "muster-cli"] {
        let line = status.lines().find(|l| l.starts_with(&format!("{package} "))).unwrap_or_default();
        assert!(line.contains("install ok installed"), "{package}: {status}");
        // libc6 (cargo-deb's $auto), and for the server what applies its sysusers.d entry.
        let depends = line.split("installed").nth(1).unwrap_or_default();
        let sysusers = "systemd | systemd-standalone-sysusers | systemd-sysusers";
        assert!(
            depends
                .split(',')
                .map(str::trim)
                .all(|d| d.is_empty() || d.starts_with("libc6") || (package == "muster-server" && d == sysusers)),
            "{package} should depend on libc alone (and the server on sysusers): {line}"
        );
    }

    // The user, its home and shell; the state directories.
    let passwd = c.sh("getent passwd muster").await.unwrap();
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    assert_eq!(fields.len(), 7, "{passwd}");
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "muster should be a system user: {passwd}");
    assert_eq!((fields[5], fields[6]), ("/var/lib/muster", "/usr/sbin/nologin"), "{passwd}");
    c.sh("getent group muster").await.unwrap();
    let dirs = c.sh("stat -c '%n %U:%G %a' /var/lib/muster /var/lib/muster-agent").await.unwrap();
    assert_eq!(dirs, "/var/lib/muster muster:muster 750\n/var/lib/muster-agent root:root 700\n");

    // The files, as shipped.
    let files = c
        .sh("stat -c '%n %U %a' /usr/bin/muster-server /usr/bin/muster-agent /usr/bin/muster \
             /etc/muster/server.toml.example /etc/muster/agent.toml.example")
        .await
        .unwrap();
    for (file, mode) in [
        ("/usr/bin/muster-server", "755"),
        ("/usr/bin/muster-agent", "755"),
        ("/usr/bin/muster", "755"),
        ("/etc/muster/server.toml.example", "644"),
        ("/etc/muster/agent.toml.example", "644"),
    ] {
        assert!(files.contains(&format!("{file} root {mode}")), "{file} should be root's, mode {mode}:\n{files}");
    }
    for (installed, shipped) in [
        ("/usr/lib/systemd/system/muster-server.service", "packaging/server/muster-server.service"),
        ("/usr/lib/systemd/system/muster-agent.service", "packaging/agent/muster-agent.service"),
        ("/etc/muster/server.toml.example", "packaging/server/server.toml.example"),
        ("/etc/muster/agent.toml.example", "packaging/agent/agent.toml.example"),
        ("/usr/lib/sysusers.d/muster-server.conf", "packaging/server/muster-server.sysusers"),
        ("/usr/lib/tmpfiles.d/muster-server.conf", "packaging/server/muster-server.tmpfile"),
        ("/usr/lib/tmpfiles.d/muster-agent.conf", "packaging/agent/muster-agent.tmpfile"),
    ] {
        let text = c.exec(&["cat", installed]).await.unwrap().success().unwrap();
        assert_eq!(text, std::fs::read_to_string(workspace_root().join(shipped)).unwrap(), "{installed}");
    }
    let conffiles = c.sh("dpkg-query -W -f '${Conffiles}\\n' muster-server muster-agent").await.unwrap();
    for file in ["/etc/muster/server.toml.example", "/etc/muster/agent.toml.example"] {
        assert!(conffiles.contains(file), "{file} should be a conffile: {conffiles}");
    }
    c.exec(&["systemd-analyze", "verify", "muster-server.service", "muster-agent.service"])
        .await
        .unwrap()
        .success()
        .unwrap();

    // Enabled, and skipped for want of a config: the postinst's start did not start them, and nothing failed.
    let enabled = c.sh("systemctl is-enabled muster-server muster-agent").await.unwrap();
    assert_eq!(enabled, "enabled\nenabled\n");
    for unit in ["muster-server", "muster-agent"] {
        let p = c.unit_properties(unit, &["ActiveState", "ConditionResult"]).await.unwrap();
        assert_eq!(
            (p["ActiveState"].as_str(), p["ConditionResult"].as_str()),
            ("inactive", "no"),
            "{unit} without its config: {p:?}"
        );
    }

    // --- configure as an operator: credentials in /etc/muster, configs from the examples -----------------------------
    // The server's identity, the command key, and the agent role's signing key with the account key beside it, as
    // enrollment wants them (readable by the service's user); the CA and the public command key for the agent.
    let install = |from: &Path, to: &str, mode: &str, group: &str| {
        format!("install -m {mode} -o root -g {group} {} {to}", from.display())
    };
    c.sh(&[
        install(&sec.creds("server"), "/etc/muster/server.creds", "0640", "muster"),
        install(&sec.command_seed(), "/etc/muster/command.nk", "0640", "muster"),
        install(&sec.ca_cert(), "/etc/muster/ca.pem", "0644", "root"),
        install(&sec.command_pub(), "/etc/muster/command.pub", "0644", "root"),
        "install -d -m 0750 -o root -g muster /etc/muster/security /etc/muster/security/signers \
         /etc/muster/security/accounts"
            .to_owned(),
        install(&sec.signer_seed(Role::Agent), "/etc/muster/security/signers/agent.nk", "0640", "muster"),
        install(&sec.account_file("MUSTER", "pub"), "/etc/muster/security/accounts/MUSTER.pub", "0644", "root"),
    ]
    .join(" && "))
        .await
        .unwrap();
    // nats-server inside the container, as a transient unit, on the config `muster security init` wrote.
    c.sh(&format!(
        "systemd-run --unit test-nats -p StateDirectory=test-nats --setenv MUSTER_NATS_STORE_DIR=/var/lib/test-nats \
         {} -c {}",
        nats.display(),
        sec.single_conf().display()
    ))
    .await
    .unwrap();

    let url = toml_string("nats://127.0.0.1:4222");
    let ca = toml_string("/etc/muster/ca.pem");
    let example = c.exec(&["cat", "/etc/muster/server.toml.example"]).await.unwrap().success().unwrap();
    let server_toml = configure(
        &example,
        &[
            ("nats_url", url.clone()),
            ("nats_creds", toml_string("/etc/muster/server.creds")),
            ("nats_ca", ca.clone()),
            ("command_key", toml_string("/etc/muster/command.nk")),
            ("agent_signer", toml_string("/etc/muster/security/signers/agent.nk")),
            ("server_id", toml_string("pkg-server")),
        ],
    )
    .unwrap();
    std::fs::write(dir.join("server.toml"), &server_toml).unwrap();
    c.sh(&install(&dir.join("server.toml"), "/etc/muster/server.toml", "0640", "muster")).await.unwrap();

    // --- start the server, enroll the agent with a token, start it ------------------------------------------------
    let t = Instant::now();
    c.sh("systemctl start muster-server").await.unwrap();
    let server_pid = main_pid(&c, "muster-server").await;
    let runs_as = c.sh(&format!("ps -o user= -p {server_pid}")).await.unwrap();
    assert_eq!(runs_as.trim(), "muster", "muster-server runs as");

    let port = c.published(4222).await.unwrap();
    let cli = Cli::new(format!("nats://127.0.0.1:{port}"), &identities).unwrap();
    let security_dir = path(sec.root());
    let create = ["token", "create", "--dir", security_dir.as_str(), "--hosts", HOST];
    let token = wait_until(Duration::from_secs(30), "muster token create (the server leads)", async || {
        let out = cli.output(&create, CALL).await?;
        Ok(if out.status.success() { Check::Done(out.stdout) } else { Check::NotYet(out.stderr) })
    })
    .await
    .unwrap();
    std::fs::write(dir.join("enroll.token"), token.trim()).unwrap();
    c.sh(&install(&dir.join("enroll.token"), "/etc/muster/enroll.token", "0600", "root")).await.unwrap();

    let example = c.exec(&["cat", "/etc/muster/agent.toml.example"]).await.unwrap().success().unwrap();
    let agent_toml = configure(
        &example,
        &[
            ("nats_url", url),
            ("nats_ca", ca),
            ("trusted_keys", toml_string("@/etc/muster/command.pub")),
            ("enroll_token", toml_string("@/etc/muster/enroll.token")),
            ("host_id", toml_string(HOST)),
            ("labels", "{ role = \"packaged\" }".to_owned()),
        ],
    )
    .unwrap();
    std::fs::write(dir.join("agent.toml"), &agent_toml).unwrap();
    c.sh(&install(&dir.join("agent.toml"), "/etc/muster/agent.toml", "0600", "root")).await.unwrap();
    c.sh("systemctl start muster-agent").await.unwrap();
    let agent_pid = main_pid(&c, "muster-agent").await;
    let runs_as = c.sh(&format!("ps -o user= -p {agent_pid}")).await.unwrap();
    assert_eq!(runs_as.trim(), "root", "muster-agent runs as");
    let registered = wait_registered(&cli, 0, "after it enrolled").await;
    eprintln!("server started, agent enrolled and HEALTHY in {:.1?}", t.elapsed());
    // Enrollment left the host's own credentials in the unit's state directory, and nothing else.
    let state = c.sh("cd /var/lib/muster-agent && stat -c '%n %U %a' *").await.unwrap();
    assert_eq!(state, "agent.creds root 600\n", "/var/lib/muster-agent after enrollment");

    // The packaged CLI, inside, with the admin's credentials.
    let admin = sec.creds("admin");
    let inside = c
        .exec(&["muster", "--creds", &path(&admin), "--ca", "/etc/muster/ca.pem", "hosts", "--json"])
        .await
        .unwrap()
        .success()
        .unwrap();
    let hosts: Vec<HostSummary> = serde_json::from_str(&inside).unwrap();
    assert!(hosts.iter().any(|h| h.id == HOST && h.state == HostState::Healthy), "{inside}");
    let redb = c.sh("stat -c '%U %a' /var/lib/muster/data/muster.redb").await.unwrap();
    assert!(redb.starts_with("muster "), "the state file should be muster's: {redb}");

    // --- a daemon left by a command survives the agent's restart (KillMode=process) ----------------------------------
    let id = cli
        .submit(&["run", "--hosts", HOST, "--", "sh", "-c", "sleep 600 >/dev/null 2>&1 </dev/null & echo $!"])
        .await
        .unwrap();
    let view = wait_request_end(&cli, id, RUN).await.unwrap();
    assert_eq!(view.status, TaskStatus::Completed, "{}", describe_request(&view));
    let daemon: u32 = view.tasks[0].stdout.trim().parse().unwrap();
    let t = Instant::now();
    c.sh("systemctl restart muster-agent").await.unwrap();
    eprintln!("agent restarted in {:.1?}", t.elapsed());
    let restarted_pid = main_pid(&c, "muster-agent").await;
    assert_ne!(restarted_pid, agent_pid);
    c.sh(&format!("kill -0 {daemon}")).await.expect("the daemon should survive the agent's restart");
    let registered = wait_registered(&cli, registered, "after the agent restarted").await;

    // --- an upgrade (the same package again) restarts the agent and keeps the operator's config ----------------------
    c.exec(&["dpkg", "-i", &agent_deb]).await.unwrap().success().unwrap();
    let upgraded_pid = main_pid(&c, "muster-agent").await;
    assert_ne!(upgraded_pid, restarted_pid, "reinstalling should restart the agent");
    let kept = c.exec(&["cat", "/etc/muster/agent.toml"]).await.unwrap().success().unwrap();
    assert_eq!(kept, agent_toml);
    wait_registered(&cli, registered, "after the package was reinstalled").await;

    // --- stop: SIGTERM to the agent alone, exit 0, the daemon left alone ---------------------------------------------
    let t = Instant::now();
    c.sh("systemctl stop muster-agent").await.unwrap();
    let stopped_in = t.elapsed();
    let p = c.unit_properties("muster-agent", &["ActiveState", "Result", "ExecMainStatus"]).await.unwrap();
    assert_eq!(
        (p["ActiveState"].as_str(), p["Result"].as_str(), p["ExecMainStatus"].as_str()),
        ("inactive", "success", "0"),
        "{p:?}"
    );
    assert!(stopped_in < Duration::from_secs(15), "the agent took {stopped_in:?} to stop with nothing running");
    c.sh(&format!("kill -0 {daemon}")).await.expect("the daemon should survive the agent's stop");

    // --- remove ------------------------------------------------------------------------------------------------------
    c.exec(&["dpkg", "--purge", "muster-agent"]).await.unwrap().success().unwrap();
    c.sh("for f in /usr/bin/muster-agent /var/lib/muster-agent /etc/muster/agent.toml.example \
          /usr/lib/systemd/system/muster-agent.service; do if [ -e $f ]; then echo $f left; exit 1; fi; done; \
          test -f /etc/muster/agent.toml")
        .await
        .expect("purging the agent removes its files and state, and leaves the operator's config");
    c.exec(&["dpkg", "-r", "muster-server"]).await.unwrap().success().unwrap();
    let p = c.unit_properties("muster-server", &["ActiveState", "LoadState"]).await.unwrap();
    assert_eq!(p["ActiveState"], "inactive", "{p:?}");
    c.sh("test ! -e /usr/bin/muster-server && test -f /var/lib/muster/data/muster.redb \
          && test -f /etc/muster/server.toml.example && getent passwd muster >/dev/null")
        .await
        .expect("removing the server stops it and keeps its data, its conffile and its user");
    eprintln!("the whole test took {:.1?}", began.elapsed());
}

/// The main PID of `unit`, which must be active.
async fn main_pid(c: &Container, unit: &str) -> u32 {
    let p = c.unit_properties(unit, &["ActiveState", "MainPID"]).await.unwrap();
    assert_eq!(p["ActiveState"], "active", "{unit}: {p:?}");
    p["MainPID"].parse().unwrap()
}

/// Waits until [`HOST`] has registered more than `before` times and is HEALTHY (`muster host`); returns its
/// registrations. Each start of the agent registers once, so a restart shows as one more.
async fn wait_registered(cli: &Cli, before: u64, when: &str) -> u64 {
    let what = format!("{HOST} registered again and HEALTHY {when}");
    let detail = wait_until(HEALTHY, &what, async || {
        let detail = cli.host(HOST).await?;
        let seen = format!("{:?} after {} registrations", detail.summary.state, detail.record.registrations);
        Ok(if detail.summary.state == HostState::Healthy && detail.record.registrations > before {
            Check::Done(detail)
        } else {
            Check::NotYet(seen)
        })
    })
    .await
    .unwrap();
    let labels: Vec<(&str, &str)> = detail.record.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(labels, [("role", "packaged")], "the labels of /etc/muster/agent.toml");
    detail.record.registrations
}

fn path(p: &Path) -> String {
    p.to_str().expect("test paths are UTF-8").to_owned()
}
