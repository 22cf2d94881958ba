//! [`run`]: one `muster` command from parsed arguments to printed output. Each command asks the API, then prints
//! the typed reply as text ([`crate::render`]) or, with `--json`, as the JSON document the API returned.

use std::io::{IsTerminal, Read, Write};

use muster_nats::unix_millis;
use muster_schemas::api::{
    BlueprintApplied, ComponentView, Endpoint, EnrollmentRecord, EnrollmentState, HostDetail, HostSummary,
    RequestCancelled, RequestCreated, RequestSpec, RequestSummary, RequestView, ServerStats, StackApplied, TokenRecord,
};
use muster_schemas::cluster::RequestAction;
use muster_schemas::cluster::TaskStatus;
use muster_schemas::{codec, limits};
use serde::Serialize;

use crate::args::{ActionArgs, Cli, Command, FileOp, HostsOp, Output, RequestOpts, TokenOp};
use crate::client::{Api, ApiParams};
use crate::error::CliError;
use crate::{render, token, watch};

/// What `blueprint apply --json` prints: the apply's reply and, when it started one, the request as it ended.
#[derive(Debug, Serialize)]
pub struct BlueprintOutcome {
    /// The `blueprint.apply` reply.
    pub applied: muster_schemas::api::Committed<BlueprintApplied>,
    /// The request that brought the hosts to the blueprint, followed to its end; `null` when none was needed.
    pub request: Option<RequestView>,
}

/// Runs one command, printing to stdout; an error is for `main` to print.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let out = &mut std::io::stdout();
    if let Command::Decode = cli.command {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf)?;
        let value =
            codec::to_json(&buf).map_err(|e| CliError::Decode { what: "MessagePack body", detail: e.to_string() })?;
        return print_json(out, &value);
    }
    match &cli.command {
        Command::Security { op } => return crate::security::security(&cli, op),
        Command::Creds { op } => return crate::security::creds(&cli, op).await,
        _ => {}
    }
    let api = Api::connect(ApiParams {
        nats: cli.nats.clone(),
        prefix: cli.prefix.clone(),
        trust: cli.trust(),
        read_timeout: cli.api_timeout,
        write_timeout: limits::CLI_WRITE_TIMEOUT,
    })
    .await?;
    let width = terminal_width();
    match cli.command {
        Command::Decode | Command::Security { .. } | Command::Creds { .. } => Ok(()),
        Command::Hosts { op: Some(op), .. } => hosts_op(&api, op, width).await,
        Command::Token { op } => token_op(&api, op, width).await,
        Command::Hosts { op: None, out: o } => {
            let rows: Vec<HostSummary> = api.read(Endpoint::Hosts, "", None).await?;
            print(out, o, &rows, || render::hosts(&rows, width))
        }
        Command::Host { id, out: o } => {
            let d: HostDetail = api.read(Endpoint::Host, &id, None).await?;
            print(out, o, &d, || render::host(&d, unix_millis()))
        }
        Command::Stats { out: o } => {
            let s: ServerStats = api.read(Endpoint::Stats, "", None).await?;
            print(out, o, &s, || render::stats(&s))
        }
        Command::Components { out: o } => {
            let rows: Vec<ComponentView> = api.read(Endpoint::Components, "", None).await?;
            print(out, o, &rows, || render::components(&rows, width))
        }
        Command::Requests { out: o } => {
            let rows: Vec<RequestSummary> = api.read(Endpoint::Requests, "", None).await?;
            print(out, o, &rows, || render::requests(&rows, unix_millis(), width))
        }
        Command::Request { id, watch: false, out: o } => {
            let v: RequestView = api.read(Endpoint::Request, &id.to_string(), None).await?;
            print(out, o, &v, || render::request(&v, unix_millis(), width))
        }
        Command::Request { id, watch: true, out: o } => {
            let feed = api.feed(shows_progress(o)).await?;
            let view = watch::follow(&api, feed, id, None, shows_progress(o)).await?;
            ended(out, o, view, width)
        }
        Command::Servers { id, out: o } => {
            let mut rows = api.servers().await?;
            if let Some(id) = id {
                let others = rows.len();
                rows.retain(|r| r.id == id);
                if rows.is_empty() {
                    return Err(CliError::NoServer {
                        subject: muster_schemas::Subjects::new(cli.prefix.as_str()).servers(),
                        detail: format!("instance {id} did not answer ({others} other instance(s) did)"),
                    });
                }
            }
            print(out, o, &rows, || render::servers(&rows, width))
        }
        Command::Cancel { id, out: o } => {
            let r = api.write::<RequestCancelled>(Endpoint::RequestCancel, &id.to_string()).await?;
            print(out, o, &r, || render::request_cancelled(&r.reply))
        }
        Command::Stack { op: FileOp::Apply { file, out: o } } => {
            let text = std::fs::read_to_string(&file)?;
            let r = api.write::<StackApplied>(Endpoint::StackApply, &text).await?;
            print(out, o, &r, || render::stack_applied(&r.reply))
        }
        Command::Blueprint { op: FileOp::Apply { file, out: o } } => {
            let text = std::fs::read_to_string(&file)?;
            // Subscribed before the apply: the request it starts may end before the reply arrives.
            let feed = api.feed(shows_progress(o)).await?;
            let applied = api.write::<BlueprintApplied>(Endpoint::BlueprintApply, &text).await?;
            if !o.json {
                write!(out, "{}", render::blueprint_applied(&applied.reply))?;
            }
            let Some(id) = applied.reply.request else {
                return if o.json { print_json(out, &BlueprintOutcome { applied, request: None }) } else { Ok(()) };
            };
            let view = watch::follow(&api, feed, id, Some(applied.seq), shows_progress(o)).await?;
            if o.json {
                let status = view.status;
                let detail = view.detail.clone();
                print_json(out, &BlueprintOutcome { applied, request: Some(view) })?;
                return completed(id, status, detail);
            }
            ended(out, o, view, width)
        }
        Command::Install(a) => action(&api, RequestAction::Install, a, width).await,
        Command::Start(a) => action(&api, RequestAction::Start, a, width).await,
        Command::Stop(a) => action(&api, RequestAction::Stop, a, width).await,
        Command::Restart(a) => action(&api, RequestAction::Restart, a, width).await,
        Command::Uninstall(a) => action(&api, RequestAction::Uninstall, a, width).await,
        Command::Custom { name, action: a } => action(&api, RequestAction::Custom(name), a, width).await,
        Command::Run { hosts, timeout, opts, argv } => {
            let spec = RequestSpec {
                action: RequestAction::Run,
                target: None,
                hosts,
                argv,
                timeout_secs: Some(timeout),
                batch: opts.batch,
                max_failures: opts.max_failures,
                success_factor: opts.success_factor,
                idempotency_key: None,
            };
            submit(&api, spec, &opts, width).await
        }
    }
}

/// `muster hosts enrollments|pending|accept|reject`.
async fn hosts_op(api: &Api, op: HostsOp, width: Option<usize>) -> Result<(), CliError> {
    let out = &mut std::io::stdout();
    let (endpoint, host, o) = match op {
        HostsOp::Pending { out: o } => {
            let all: Vec<EnrollmentRecord> = api.read(Endpoint::Enrollments, "", None).await?;
            let rows: Vec<EnrollmentRecord> = all.into_iter().filter(|r| r.state == EnrollmentState::Pending).collect();
            return print(out, o, &rows, || token::pending(&rows, unix_millis(), width));
        }
        HostsOp::Enrollments { out: o } => {
            let rows: Vec<EnrollmentRecord> = api.read(Endpoint::Enrollments, "", None).await?;
            return print(out, o, &rows, || token::enrollments(&rows, unix_millis(), width));
        }
        HostsOp::Accept { host, out: o } => (Endpoint::HostAccept, host, o),
        HostsOp::Reject { host, out: o } => (Endpoint::HostReject, host, o),
    };
    let r = api.write::<EnrollmentRecord>(endpoint, &host).await?;
    print(out, o, &r, || token::decided(&r.reply))
}

/// `muster token create|list|revoke`.
async fn token_op(api: &Api, op: TokenOp, width: Option<usize>) -> Result<(), CliError> {
    let out = &mut std::io::stdout();
    match op {
        TokenOp::Create { dir, hosts, uses, ttl, bundle, out: o } => {
            let new = token::mint(&dir, hosts, uses, ttl, unix_millis()).map_err(std::io::Error::other)?;
            let body = serde_json::to_string(&new.spec)
                .map_err(|e| CliError::Decode { what: "token spec", detail: e.to_string() })?;
            // The leader records a repeated token.create as the first (same id, same settings), so it is repeated
            // while no leader answers: a deployment's token job may run just as the first leader is elected.
            let r = api.write_idempotent::<TokenRecord>(Endpoint::TokenCreate, &body).await?;
            if let Some(bundle) = &bundle {
                token::write_bundle(&dir, bundle, &new.token).map_err(std::io::Error::other)?;
            }
            if o.json {
                #[derive(Serialize)]
                struct Created<'a> {
                    token: String,
                    record: &'a TokenRecord,
                    seq: u64,
                }
                return print_json(out, &Created { token: new.token.to_string(), record: &r.reply, seq: r.seq });
            }
            eprint!("{}", token::created(&r.reply));
            match &bundle {
                Some(b) => writeln!(out, "wrote the enrollment bundle {} (token, ca.pem, command.pub)", b.display())?,
                None => writeln!(out, "{}", new.token)?,
            }
            Ok(())
        }
        TokenOp::List { out: o } => {
            let rows: Vec<TokenRecord> = api.read(Endpoint::Tokens, "", None).await?;
            print(out, o, &rows, || token::tokens(&rows, unix_millis(), width))
        }
        TokenOp::Revoke { id, out: o } => {
            let r = api.write::<TokenRecord>(Endpoint::TokenRevoke, &id).await?;
            print(out, o, &r, || format!("token {} revoked\n", r.reply.id))
        }
    }
}

async fn action(api: &Api, verb: RequestAction, a: ActionArgs, width: Option<usize>) -> Result<(), CliError> {
    let spec = RequestSpec {
        action: verb,
        target: Some(a.target),
        hosts: a.hosts,
        argv: Vec::new(),
        timeout_secs: None,
        batch: a.opts.batch,
        max_failures: a.opts.max_failures,
        success_factor: a.opts.success_factor,
        idempotency_key: None,
    };
    submit(api, spec, &a.opts, width).await
}

/// Creates a request (under a fresh idempotency key, so the retries of a failover create it once) and, unless
/// detached, follows it to its end.
async fn submit(api: &Api, spec: RequestSpec, opts: &RequestOpts, width: Option<usize>) -> Result<(), CliError> {
    let out = &mut std::io::stdout();
    let o = opts.out;
    let spec = RequestSpec { idempotency_key: Some(crate::client::fresh_idempotency_key()), ..spec };
    let body =
        serde_json::to_string(&spec).map_err(|e| CliError::Decode { what: "request spec", detail: e.to_string() })?;
    // Subscribed before the request exists, so its end cannot be missed however fast it comes.
    let feed = if opts.detach { None } else { Some(api.feed(shows_progress(o)).await?) };
    let created = api.write_idempotent::<RequestCreated>(Endpoint::RequestCreate, &body).await?;
    let id = created.reply.request;
    if o.json && opts.detach {
        return print_json(out, &created);
    }
    if !o.json {
        write!(out, "{}", render::request_created(&created.reply))?;
        if opts.detach {
            writeln!(out, "follow it with: muster request {id} --watch")?;
        }
    }
    let Some(feed) = feed else { return Ok(()) };
    out.flush()?;
    let view = watch::follow(api, feed, id, Some(created.seq), shows_progress(o)).await?;
    ended(out, o, view, width)
}

/// Prints a followed request as it ended; fails (exit 1) unless it COMPLETED.
fn ended(out: &mut impl Write, o: Output, view: RequestView, width: Option<usize>) -> Result<(), CliError> {
    print(out, o, &view, || render::request(&view, unix_millis(), width))?;
    completed(view.id, view.status, view.detail)
}

fn completed(id: u64, status: TaskStatus, detail: String) -> Result<(), CliError> {
    if status == TaskStatus::Completed {
        Ok(())
    } else {
        Err(CliError::RequestFailed { id, status, detail })
    }
}

/// Progress bars only for a person: not with `--json`, not when stderr is a file or a pipe.
fn shows_progress(o: Output) -> bool {
    !o.json && std::io::stderr().is_terminal()
}

fn print<T: Serialize>(
    out: &mut impl Write,
    o: Output,
    value: &T,
    text: impl FnOnce() -> String,
) -> Result<(), CliError> {
    if o.json {
        print_json(out, value)
    } else {
        write!(out, "{}", text())?;
        Ok(())
    }
}

fn print_json<T: Serialize>(out: &mut impl Write, value: &T) -> Result<(), CliError> {
    let s =
        serde_json::to_string_pretty(value).map_err(|e| CliError::Decode { what: "reply", detail: e.to_string() })?;
    writeln!(out, "{s}")?;
    Ok(())
}

/// The width to cut table lines to: the terminal's; when stdout is a file or a pipe, `COLUMNS` if set (as for
/// `muster requests | less -S` from a shell that exports it), else none.
fn terminal_width() -> Option<usize> {
    console::Term::stdout()
        .size_checked()
        .map(|(_, cols)| usize::from(cols))
        .or_else(|| std::env::var("COLUMNS").ok()?.trim().parse().ok())
}
