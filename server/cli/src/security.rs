//! `muster security init` and `muster creds agent|swarm|revoke`: the operator commands on a security directory
//! ([`muster_security::dir`]), their I/O (parameters in [`crate::args`]): files, and for `revoke` one
//! connection as the system account's user; `revoke` also asks the muster API (as the directory's admin) for the
//! key a host enrolled with, and rejects that enrollment.

use std::io::Write;

use muster_schemas::HostId;
use muster_security::dir::{write_file, InitOptions, SecurityDir};

use crate::args::{Cli, CredsOp, SecurityOp};
use crate::client::{Api, ApiParams};
use crate::error::CliError;

/// Now in Unix seconds (what JWTs and the security directory's records use), from the one clock.
fn now() -> u64 {
    muster_nats::unix_millis() / 1000
}

fn err(e: impl std::fmt::Display) -> CliError {
    CliError::Security(e.to_string())
}

fn host_id(host: &str) -> Result<HostId, CliError> {
    HostId::new(host).map_err(err)
}

/// Runs `muster security <op>`.
pub fn security(cli: &Cli, op: &SecurityOp) -> Result<(), CliError> {
    let SecurityOp::Init { dir, hosts, force, if_missing } = op;
    let sd = SecurityDir::new(dir).map_err(err)?;
    // Complete: `init` writes the state file and then the configs last.
    if *if_missing && sd.state_file().is_file() && sd.cluster_conf().is_file() && sd.single_conf().is_file() {
        writeln!(std::io::stdout(), "{} is a security directory already; left as it is", sd.root().display())?;
        return Ok(());
    }
    sd.init(&InitOptions { prefix: cli.prefix.clone(), hosts: hosts.clone(), force: *force, now: now() })
        .map_err(err)?;
    let d = sd.root().display();
    let out = &mut std::io::stdout();
    writeln!(out, "wrote {d} (subject prefix {})", cli.prefix)?;
    writeln!(out, "  nats-server:  MUSTER_NATS_STORE_DIR=... nats-server -c {d}/nats-single.conf")?;
    writeln!(out, "  muster-server: MUSTER_NATS_CREDS={d}/server.creds MUSTER_NATS_CA={d}/ca.pem MUSTER_COMMAND_KEY={d}/command.nk")?;
    writeln!(out, "  muster CLI:   MUSTER_NATS_CREDS={d}/admin.creds MUSTER_NATS_CA={d}/ca.pem")?;
    writeln!(out, "  an agent:     muster creds agent HOST --dir {d}, then MUSTER_NATS_CREDS=<its creds> MUSTER_NATS_CA={d}/ca.pem MUSTER_TRUSTED_KEYS=@{d}/command.pub")?;
    Ok(())
}

/// Runs `muster creds <op>`.
pub async fn creds(cli: &Cli, op: &CredsOp) -> Result<(), CliError> {
    let out = &mut std::io::stdout();
    match op {
        CredsOp::Agent { host, dir, out: file } => {
            let host = host_id(host)?;
            let sd = SecurityDir::new(dir).map_err(err)?;
            let creds = sd.mint_agent(&host, now()).map_err(err)?;
            let path = file.clone().unwrap_or_else(|| sd.agent_creds(&host));
            write_file(&path, &creds.render(), true).map_err(err)?;
            let key = creds.public_key().map_err(err)?;
            writeln!(out, "wrote {} (agent {host}, user {key})", path.display())?;
        }
        CredsOp::Swarm { dir, out: file } => {
            let sd = SecurityDir::new(dir).map_err(err)?;
            let creds = sd.mint_swarm(now()).map_err(err)?;
            let path = file.clone().unwrap_or_else(|| sd.creds("swarm"));
            write_file(&path, &creds.render(), true).map_err(err)?;
            let key = creds.public_key().map_err(err)?;
            writeln!(out, "wrote {} (swarm, user {key})", path.display())?;
        }
        CredsOp::Revoke { host, dir } => {
            let host = host_id(host)?;
            let sd = SecurityDir::new(dir).map_err(err)?;
            reject_enrollment(cli, &sd, &host, out).await?;
            let plan = sd.plan_revoke(&host, now()).map_err(err)?;
            let mut params = muster_nats::ConnectParams::new(&cli.nats, "muster creds revoke")
                .map_err(|source| CliError::Urls { urls: cli.nats.clone(), source })?;
            params.trust =
                muster_nats::ClientTrust { credentials: Some(sd.creds("sys")), ca: Some(sd.ca_cert()), ..cli.trust() };
            let client = muster_nats::connect(params).await?;
            let reply = muster_security::revoke::push_account_jwt(&client, &plan.account_jwt).await.map_err(err)?;
            sd.commit_revoke(&plan).map_err(err)?;
            writeln!(out, "revoked host {host} ({reply}):")?;
            for key in &plan.keys {
                writeln!(out, "  {key}")?;
            }
        }
    }
    Ok(())
}

/// The cluster's side of a revocation: a key the host enrolled with (minted by the leader, so not in the security
/// directory) is recorded in the directory so it is revoked too, and the enrollment is rejected so the host cannot
/// enroll again with that key. Asked as the directory's admin; a cluster that cannot be reached is reported and
/// skipped (credentials minted offline are still revoked).
async fn reject_enrollment(cli: &Cli, sd: &SecurityDir, host: &HostId, out: &mut impl Write) -> Result<(), CliError> {
    use muster_schemas::api::{Committed, Endpoint, EnrollmentRecord, EnrollmentState};

    let params = ApiParams {
        nats: cli.nats.clone(),
        prefix: cli.prefix.clone(),
        trust: muster_nats::ClientTrust { credentials: Some(sd.creds("admin")), ca: Some(sd.ca_cert()), ..cli.trust() },
        read_timeout: cli.api_timeout,
        write_timeout: muster_schemas::limits::CLI_WRITE_TIMEOUT,
    };
    let enrolled = async {
        let api = Api::connect(params).await?;
        let all: Vec<EnrollmentRecord> = api.read(Endpoint::Enrollments, "", None).await?;
        Ok::<_, CliError>((api, all.into_iter().find(|r| &r.host == host)))
    };
    let (api, record) = match enrolled.await {
        Ok(found) => found,
        Err(e) => {
            writeln!(
                out,
                "note: could not ask the cluster for {host}'s enrollment ({e}); revoking the keys minted here"
            )?;
            return Ok(());
        }
    };
    let Some(record) = record else { return Ok(()) };
    let known = sd.state().map_err(err)?.minted.iter().any(|m| m.public_key == record.key);
    if !known {
        sd.record_agent(host, &record.key, now()).map_err(err)?;
    }
    if record.state != EnrollmentState::Rejected {
        let _: Committed<EnrollmentRecord> = api.write(Endpoint::HostReject, host.as_str()).await?;
        writeln!(out, "rejected {host}'s enrollment (key {}): it cannot enroll again with that key", record.key)?;
    }
    Ok(())
}
