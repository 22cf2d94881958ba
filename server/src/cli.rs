//! The operator CLI `muster`: talks to the `muster` service over NATS; `decode` turns a MessagePack body into
//! JSON (use it as `nats sub 'muster.>' --translate 'muster decode'`).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use muster_schemas::api::{ComponentView, HostDetail, HostSummary, RequestSpec, RequestView};
use muster_schemas::cluster::TaskStatus;
use muster_schemas::{codec, Subjects};

/// Command line of `muster`.
#[derive(Debug, Parser)]
#[command(name = "muster", version, about = "Operate a muster cluster", long_about = None)]
pub struct Cli {
    /// NATS URL of the cluster.
    #[arg(long, global = true, env = "MUSTER_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats: String,
    /// Subject prefix of the cluster.
    #[arg(long, global = true, env = "MUSTER_PREFIX", default_value = muster_schemas::subjects::DEFAULT_PREFIX)]
    pub prefix: String,
    /// How long to wait for a server's answer.
    #[arg(long, global = true, default_value = "5s", value_parser = humantime_secs)]
    pub api_timeout: Duration,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List every host with its state and seconds since its last heartbeat.
    Hosts {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show everything known about one host.
    Host {
        /// Host id.
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show this server's role, epoch, applied sequence and counters.
    Stats {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Read one MessagePack body on stdin and print it as JSON.
    Decode,
    /// Apply a stack (`muster stack apply FILE`).
    Stack {
        /// What to do.
        #[command(subcommand)]
        op: FileOp,
    },
    /// Apply a blueprint (`muster blueprint apply FILE`).
    Blueprint {
        /// What to do.
        #[command(subcommand)]
        op: FileOp,
    },
    /// List every host component with its state and desired state.
    Components {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Install a service or component.
    Install(ActionArgs),
    /// Start a service or component (installing it first where needed).
    Start(ActionArgs),
    /// Stop a service or component.
    Stop(ActionArgs),
    /// Restart a service or component (stop where running, then start).
    Restart(ActionArgs),
    /// Uninstall a service or component (stopping it first).
    Uninstall(ActionArgs),
    /// Run a custom command of the stack: `muster custom rebalance worker --hosts 'web-*'`.
    Custom {
        /// The custom command's name (`custom.<name>` in the stack).
        name: String,
        /// Target and options.
        #[command(flatten)]
        action: ActionArgs,
    },
    /// Run a command on selected hosts: `muster run --hosts 'web-*' -- uptime`.
    Run {
        /// Host selector (see `muster help start`).
        #[arg(long)]
        hosts: Option<String>,
        /// Seconds before the agent kills the command.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Request options.
        #[command(flatten)]
        opts: RequestOpts,
        /// Program and arguments.
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// List requests, newest first.
    Requests {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one request with its stages and tasks.
    Request {
        /// Request id.
        id: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Follow progress until the request ends.
        #[arg(long)]
        watch: bool,
    },
    /// Every server instance: role, epoch, applied log sequence, lag, uptime and state digest.
    Servers {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a running request: queued tasks are dropped, running ones killed.
    Cancel {
        /// Request id.
        id: u64,
    },
}

/// `apply FILE`.
#[derive(Debug, Subcommand)]
pub enum FileOp {
    /// Validate and store the file.
    Apply {
        /// TOML file.
        file: std::path::PathBuf,
    },
}

/// Target and options of install/start/stop/restart/uninstall.
#[derive(Debug, clap::Args)]
pub struct ActionArgs {
    /// Service or component name.
    pub target: String,
    /// Host selector: comma-separated id globs (`web-*`), `label:key=value` or `state:HEALTHY`; a host matching any
    /// term is selected. Default: every host that has the component.
    #[arg(long)]
    pub hosts: Option<String>,
    /// Request options.
    #[command(flatten)]
    pub opts: RequestOpts,
}

/// Options shared by every request.
#[derive(Debug, clap::Args)]
pub struct RequestOpts {
    /// Hosts per rolling batch (0 = all at once).
    #[arg(long, default_value_t = 0)]
    pub batch: u32,
    /// Failed tasks tolerated before the request is aborted.
    #[arg(long, default_value_t = 0)]
    pub max_failures: u32,
    /// Fraction of each stage's tasks that must succeed.
    #[arg(long)]
    pub success_factor: Option<f64>,
    /// Return at once with the request id instead of showing progress.
    #[arg(long)]
    pub detach: bool,
}

fn humantime_secs(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let n: f64 = num.parse().map_err(|_| format!("not a duration: {s:?} (e.g. 5s, 500ms)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit in {s:?}; use ms, s or m")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// CLI failures, each with a message an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// NATS unreachable.
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        /// URL tried.
        url: String,
        /// Why.
        source: async_nats::ConnectError,
    },
    /// No server answered.
    #[error("no muster server answered on {subject} within {timeout:?}: {detail}")]
    NoAnswer {
        /// Subject asked.
        subject: String,
        /// Timeout.
        timeout: Duration,
        /// Detail.
        detail: String,
    },
    /// The server answered with an error.
    #[error("{status} (code {code})")]
    Api {
        /// Services-framework error code.
        code: String,
        /// Message.
        status: String,
    },
    /// Bad body.
    #[error("invalid reply or input: {0}")]
    Decode(String),
    /// stdin/stdout.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Runs the CLI, printing to stdout.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    if let Command::Decode = cli.command {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf)?;
        let value = codec::to_json(&buf).map_err(|e| CliError::Decode(e.to_string()))?;
        let out = serde_json::to_string_pretty(&value).map_err(|e| CliError::Decode(e.to_string()))?;
        writeln!(std::io::stdout(), "{out}")?;
        return Ok(());
    }
    let client = async_nats::ConnectOptions::new()
        .name("muster-cli")
        .connect(
            crate::server::server_addrs(&cli.nats)
                .map_err(|source| CliError::Connect { url: cli.nats.clone(), source })?,
        )
        .await
        .map_err(|source| CliError::Connect { url: cli.nats.clone(), source })?;
    let subjects = Subjects::new(&cli.prefix);
    let out = &mut std::io::stdout();
    match cli.command {
        Command::Hosts { json } => {
            let v = request(&client, &subjects.api("hosts"), "", cli.api_timeout).await?;
            if json {
                print_json(out, &v)?;
            } else {
                let rows: Vec<HostSummary> = from_value(v)?;
                print_hosts(out, &rows)?;
            }
        }
        Command::Host { id, json } => {
            let v = request(&client, &subjects.api("host"), &id, cli.api_timeout).await?;
            if json {
                print_json(out, &v)?;
            } else {
                let d: HostDetail = from_value(v)?;
                print_host(out, &d)?;
            }
        }
        Command::Stats { json } => {
            let v = request(&client, &subjects.api("stats"), "", cli.api_timeout).await?;
            if json {
                print_json(out, &v)?;
            } else {
                for (k, val) in v.as_object().into_iter().flatten() {
                    if k == "counters" {
                        writeln!(out, "counters:")?;
                        for (c, n) in val.as_object().into_iter().flatten() {
                            writeln!(out, "  {c:<36} {n}")?;
                        }
                    } else {
                        let val = val.as_str().map_or_else(|| val.to_string(), String::from);
                        writeln!(out, "{k:<12} {val}")?;
                    }
                }
            }
        }
        Command::Decode => unreachable!("handled above"),
        Command::Stack { op: FileOp::Apply { file } } => {
            let text = std::fs::read_to_string(&file)?;
            let v = request(&client, &subjects.api("stack.apply"), &text, cli.api_timeout).await?;
            writeln!(
                out,
                "stack {} version {}{}",
                v["stack"].as_str().unwrap_or(""),
                v["version"],
                if v["changed"] == false { " (unchanged)" } else { "" }
            )?;
        }
        Command::Blueprint { op: FileOp::Apply { file } } => {
            let text = std::fs::read_to_string(&file)?;
            let v = request(&client, &subjects.api("blueprint.apply"), &text, Duration::from_secs(70)).await?;
            writeln!(
                out,
                "blueprint {} version {}: {} component(s) newly mapped",
                v["blueprint"].as_str().unwrap_or(""),
                v["version"],
                v["mapped"]
            )?;
            if let Some(id) = v["request"].as_u64() {
                writeln!(out, "request {id} closes the gap")?;
                return follow(&client, &subjects, id, v["seq"].as_u64(), cli.api_timeout).await;
            }
        }
        Command::Components { json } => {
            let v = request(&client, &subjects.api("components"), "", cli.api_timeout).await?;
            if json {
                print_json(out, &v)?;
            } else {
                let rows: Vec<ComponentView> = from_value(v)?;
                writeln!(
                    out,
                    "{:<24} {:<16} {:<16} {:<16} {:<12} {:>10} RESTARTS",
                    "HOST", "SERVICE", "COMPONENT", "STATE", "DESIRED", "IN STATE"
                )?;
                for r in &rows {
                    let desired = serde_json::to_value(r.desired)
                        .ok()
                        .and_then(|d| d.as_str().map(String::from))
                        .unwrap_or_default();
                    writeln!(
                        out,
                        "{:<24} {:<16} {:<16} {:<16} {:<12} {:>10} {}",
                        r.host,
                        r.service,
                        r.component,
                        r.state.as_str(),
                        desired,
                        secs(Some(r.state_secs)),
                        r.auto_restarts
                    )?;
                }
                writeln!(out, "{} component(s)", rows.len())?;
            }
        }
        Command::Install(a) => return action(&client, &subjects, "install", a, cli.api_timeout).await,
        Command::Start(a) => return action(&client, &subjects, "start", a, cli.api_timeout).await,
        Command::Stop(a) => return action(&client, &subjects, "stop", a, cli.api_timeout).await,
        Command::Restart(a) => return action(&client, &subjects, "restart", a, cli.api_timeout).await,
        Command::Uninstall(a) => return action(&client, &subjects, "uninstall", a, cli.api_timeout).await,
        Command::Custom { name, action: a } => {
            return action(&client, &subjects, &format!("custom:{name}"), a, cli.api_timeout).await
        }
        Command::Run { hosts, timeout, opts, argv } => {
            let spec = RequestSpec {
                action: "run".into(),
                target: None,
                hosts,
                argv,
                timeout_secs: Some(timeout),
                batch: opts.batch,
                max_failures: opts.max_failures,
                success_factor: opts.success_factor,
            };
            return submit(&client, &subjects, spec, opts.detach, cli.api_timeout).await;
        }
        Command::Requests { json } => {
            let v = request(&client, &subjects.api("requests"), "", cli.api_timeout).await?;
            if json {
                print_json(out, &v)?;
            } else {
                writeln!(out, "{:>6} {:<14} {:>6}  DESCRIPTION", "ID", "STATUS", "TASKS")?;
                for r in v.as_array().into_iter().flatten() {
                    writeln!(
                        out,
                        "{:>6} {:<14} {:>6}  {}",
                        r["id"],
                        r["status"].as_str().unwrap_or(""),
                        r["tasks"],
                        r["description"].as_str().unwrap_or("")
                    )?;
                }
            }
        }
        Command::Request { id, json, watch } => {
            if watch {
                return follow(&client, &subjects, id, None, cli.api_timeout).await;
            }
            let v = request(&client, &subjects.api("request"), &id.to_string(), cli.api_timeout).await?;
            if json {
                print_json(out, &v)?;
            } else {
                print_request(out, &from_value(v)?)?;
            }
        }
        Command::Servers { json } => {
            let mut rows = servers(&client, &subjects, cli.api_timeout).await?;
            rows.sort_by_key(|v| v["id"].as_str().unwrap_or_default().to_string());
            if json {
                print_json(out, &serde_json::Value::Array(rows))?;
            } else {
                writeln!(
                    out,
                    "{:<20} {:<9} {:>8} {:>10} {:>6} {:>10}  DIGEST",
                    "ID", "ROLE", "EPOCH", "APPLIED", "LAG", "UPTIME"
                )?;
                for r in &rows {
                    writeln!(
                        out,
                        "{:<20} {:<9} {:>8} {:>10} {:>6} {:>10}  {}",
                        r["id"].as_str().unwrap_or(""),
                        r["role"].as_str().unwrap_or(""),
                        r["epoch"].to_string(),
                        r["applied_seq"].to_string(),
                        r["lag"].to_string(),
                        secs(r["uptime_secs"].as_f64()),
                        r["digest"].as_str().unwrap_or("-")
                    )?;
                }
                writeln!(out, "{} server(s)", rows.len())?;
            }
        }
        Command::Cancel { id } => {
            let v = request(&client, &subjects.api("request.cancel"), &id.to_string(), cli.api_timeout).await?;
            writeln!(out, "request {id} cancelled: {} task(s) aborted", v["aborted_tasks"])?;
        }
    }
    Ok(())
}

async fn action(
    client: &async_nats::Client,
    subjects: &Subjects,
    verb: &str,
    a: ActionArgs,
    timeout: Duration,
) -> Result<(), CliError> {
    let spec = RequestSpec {
        action: verb.into(),
        target: Some(a.target),
        hosts: a.hosts,
        argv: Vec::new(),
        timeout_secs: None,
        batch: a.opts.batch,
        max_failures: a.opts.max_failures,
        success_factor: a.opts.success_factor,
    };
    submit(client, subjects, spec, a.opts.detach, timeout).await
}

async fn submit(
    client: &async_nats::Client,
    subjects: &Subjects,
    spec: RequestSpec,
    detach: bool,
    timeout: Duration,
) -> Result<(), CliError> {
    let body = serde_json::to_string(&spec).map_err(|e| CliError::Decode(e.to_string()))?;
    let v = request(client, &subjects.api("request.create"), &body, Duration::from_secs(70)).await?;
    let id = v["request"].as_u64().ok_or_else(|| CliError::Decode("no request id in the answer".into()))?;
    let out = &mut std::io::stdout();
    writeln!(out, "request {id}: {} task(s) in {} stage(s)", v["tasks"], v["stages"])?;
    if let Some(skipped) = v["skipped_lost_hosts"].as_array().filter(|s| !s.is_empty()) {
        writeln!(
            out,
            "skipped (HEARTBEAT_LOST): {}",
            skipped.iter().filter_map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        )?;
    }
    if detach {
        writeln!(out, "follow it with: muster request {id} --watch")?;
        return Ok(());
    }
    follow(client, subjects, id, v["seq"].as_u64(), timeout).await
}

/// How often `--watch` polls the request, at most.
const WATCH_POLL: Duration = Duration::from_millis(300);
/// Polls are at least this many times as far apart as the last answer took: reading a 100,000-task request costs
/// the answering server a noticeable part of a core, and watching it must not slow down the request it watches.
const WATCH_POLL_COST_FACTOR: u32 = 5;

/// Shows a progress bar per stage until the request ends; fails (exit 1) unless it COMPLETED.
async fn follow(
    client: &async_nats::Client,
    subjects: &Subjects,
    id: u64,
    min_seq: Option<u64>,
    timeout: Duration,
) -> Result<(), CliError> {
    let bars = indicatif::MultiProgress::new();
    let style = indicatif::ProgressStyle::with_template("{prefix:<40} [{bar:30}] {pos}/{len} {msg}")
        .map_err(|e| CliError::Decode(e.to_string()))?
        .progress_chars("=> ");
    let mut stage_bars: Vec<indicatif::ProgressBar> = Vec::new();
    let view = loop {
        let asked = Instant::now();
        let v = request_at(client, &subjects.api("request"), &id.to_string(), timeout, min_seq).await?;
        let took = asked.elapsed();
        let view: RequestView = from_value(v)?;
        if stage_bars.is_empty() {
            for s in &view.stages {
                let b = bars.add(indicatif::ProgressBar::new(s.total));
                b.set_style(style.clone());
                b.set_prefix(s.name.clone());
                stage_bars.push(b);
            }
        }
        for (s, b) in view.stages.iter().zip(&stage_bars) {
            b.set_length(s.total);
            b.set_position(s.done);
            let running = if s.running > 0 { format!(", {} running", s.running) } else { String::new() };
            let failed = if s.failed > 0 { format!(", {} failed", s.failed) } else { String::new() };
            b.set_message(format!("{}{running}{failed}", s.status.as_str()));
            if s.status.is_terminal() && !b.is_finished() {
                b.finish();
            }
        }
        if view.status.is_terminal() {
            break view;
        }
        tokio::time::sleep(WATCH_POLL.max(took * WATCH_POLL_COST_FACTOR)).await;
    };
    for b in &stage_bars {
        b.finish();
    }
    drop(bars);
    let out = &mut std::io::stdout();
    print_request(out, &view)?;
    if view.status == TaskStatus::Completed {
        Ok(())
    } else {
        Err(CliError::Api {
            code: "request".into(),
            status: format!("request {id} ended {}: {}", view.status, view.detail),
        })
    }
}

fn print_request(out: &mut impl Write, v: &RequestView) -> Result<(), CliError> {
    writeln!(out, "request {}  {}  {}", v.id, v.status, v.description)?;
    if !v.detail.is_empty() {
        writeln!(out, "  {}", v.detail)?;
    }
    for (i, s) in v.stages.iter().enumerate() {
        writeln!(out, "  stage {} {} [{}] {}/{} done, {} failed", i + 1, s.name, s.status, s.done, s.total, s.failed)?;
        for t in v.tasks.iter().filter(|t| t.stage as usize == i) {
            let comp = t.component.clone().unwrap_or_default();
            let exit = t.exit_code.map_or("-".to_string(), |c| c.to_string());
            writeln!(
                out,
                "    task {:<6} {:<20} {:<8} {:<22} {:<14} exit {:<4} {}",
                t.id,
                t.host,
                t.command,
                comp,
                t.status.as_str(),
                exit,
                t.detail
            )?;
            let tail =
                |s: &str| s.lines().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" | ");
            if !t.stdout.trim().is_empty() && t.component.is_none() {
                writeln!(out, "      stdout: {}", tail(&t.stdout))?;
            }
            if !t.stderr.trim().is_empty() && t.status != TaskStatus::Completed {
                writeln!(out, "      stderr: {}", tail(&t.stderr))?;
            }
        }
    }
    if (v.tasks.len() as u64) < v.tasks_total {
        let counts: Vec<String> = v.counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
        writeln!(out, "  ({} of {} tasks listed; all: {})", v.tasks.len(), v.tasks_total, counts.join(", "))?;
    }
    Ok(())
}

/// How long `muster servers` keeps collecting answers after the last one arrived.
const SERVERS_QUIET: Duration = Duration::from_millis(300);

/// Asks every instance for its status and collects the answers until none has come for a moment.
async fn servers(
    client: &async_nats::Client,
    subjects: &Subjects,
    timeout: Duration,
) -> Result<Vec<serde_json::Value>, CliError> {
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.map_err(|e| CliError::Decode(e.to_string()))?;
    client
        .publish_with_reply(subjects.servers(), inbox, bytes::Bytes::new())
        .await
        .map_err(|e| CliError::Decode(e.to_string()))?;
    let mut rows = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let wait = if rows.is_empty() {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        } else {
            SERVERS_QUIET
        };
        match tokio::time::timeout(wait, futures::StreamExt::next(&mut sub)).await {
            Ok(Some(m)) => rows.push(serde_json::from_slice(&m.payload).map_err(|e| CliError::Decode(e.to_string()))?),
            _ => break,
        }
    }
    if rows.is_empty() {
        return Err(CliError::NoAnswer { subject: subjects.servers(), timeout, detail: "no server answered".into() });
    }
    Ok(rows)
}

async fn request(
    client: &async_nats::Client,
    subject: &str,
    body: &str,
    timeout: Duration,
) -> Result<serde_json::Value, CliError> {
    request_at(client, subject, body, timeout, None).await
}

/// A request whose answer must reflect the log up to `min_seq` (read your writes on any instance).
async fn request_at(
    client: &async_nats::Client,
    subject: &str,
    body: &str,
    timeout: Duration,
    min_seq: Option<u64>,
) -> Result<serde_json::Value, CliError> {
    let no_answer = |detail: String| CliError::NoAnswer { subject: subject.to_string(), timeout, detail };
    let mut headers = async_nats::HeaderMap::new();
    if let Some(seq) = min_seq {
        headers.insert(muster_schemas::headers::MIN_SEQ, seq.to_string().as_str());
    }
    let msg = tokio::time::timeout(
        timeout,
        client.request_with_headers(subject.to_string(), headers, body.to_string().into()),
    )
    .await
    .map_err(|_| no_answer("timed out".into()))?
    .map_err(|e| no_answer(e.to_string()))?;
    if let Some(h) = &msg.headers {
        if let Some(status) = h.get(async_nats::service::NATS_SERVICE_ERROR) {
            let code = h.get(async_nats::service::NATS_SERVICE_ERROR_CODE).map(|c| c.to_string()).unwrap_or_default();
            return Err(CliError::Api { code, status: status.to_string() });
        }
    }
    serde_json::from_slice(&msg.payload).map_err(|e| CliError::Decode(e.to_string()))
}

fn from_value<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, CliError> {
    serde_json::from_value(v).map_err(|e| CliError::Decode(e.to_string()))
}

fn print_json(out: &mut impl Write, v: &serde_json::Value) -> Result<(), CliError> {
    let s = serde_json::to_string_pretty(v).map_err(|e| CliError::Decode(e.to_string()))?;
    writeln!(out, "{s}")?;
    Ok(())
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |s| format!("{s:.1}s"))
}

fn print_hosts(out: &mut impl Write, rows: &[HostSummary]) -> Result<(), CliError> {
    writeln!(out, "{:<24} {:<32} {:>9} {:>10} {:<24} PROBLEMS", "HOST", "STATE", "LAST HB", "IN STATE", "HOSTNAME")?;
    for r in rows {
        writeln!(
            out,
            "{:<24} {:<32} {:>9} {:>10} {:<24} {}",
            r.id,
            r.state.as_str(),
            secs(r.last_heartbeat_secs),
            secs(Some(r.state_secs)),
            r.hostname,
            r.problems.join("; ")
        )?;
    }
    writeln!(out, "{} host(s)", rows.len())?;
    Ok(())
}

fn print_host(out: &mut impl Write, d: &HostDetail) -> Result<(), CliError> {
    let r = &d.record;
    let f = &r.facts;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    writeln!(out, "host            {}", r.id)?;
    writeln!(out, "state           {} (for {})", r.state, secs(Some(d.summary.state_secs)))?;
    writeln!(out, "last heartbeat  {}", secs(d.summary.last_heartbeat_secs))?;
    writeln!(out, "problems        {}", if r.problems.is_empty() { "none".into() } else { r.problems.join("; ") })?;
    writeln!(out, "hostname        {}", f.hostname)?;
    writeln!(out, "os              {} {} ({}, kernel {})", f.os_name, f.os_version, f.arch, f.kernel_version)?;
    writeln!(out, "cpus            {}", f.cpu_count)?;
    writeln!(
        out,
        "memory          {:.1} GiB total, {:.1} GiB available",
        gib(f.memory_total_bytes),
        gib(f.memory_available_bytes)
    )?;
    writeln!(out, "uptime          {} s", f.uptime_secs)?;
    writeln!(out, "timezone        {}", f.timezone)?;
    writeln!(out, "addresses       {}", f.ip_addresses.join(", "))?;
    writeln!(out, "agent           {} (started {})", r.agent_version, r.agent_started_at)?;
    writeln!(out, "registrations   {} (first {}, last {})", r.registrations, r.first_registered_at, r.registered_at)?;
    let labels: Vec<String> = r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    writeln!(out, "labels          {}", labels.join(", "))?;
    writeln!(out, "mounts")?;
    for m in &f.mounts {
        writeln!(
            out,
            "  {:<30} {:<8} {:>8.1} GiB free of {:.1} GiB",
            m.mount_point,
            m.fs_type,
            gib(m.available_bytes),
            gib(m.total_bytes)
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(humantime_secs("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(humantime_secs("250ms").unwrap(), Duration::from_millis(250));
        assert!(humantime_secs("5 parsecs").is_err());
    }

    #[test]
    fn cli_parses_documented_commands() {
        Cli::try_parse_from(["muster", "hosts", "--json"]).unwrap();
        Cli::try_parse_from(["muster", "--nats", "nats://h:1", "host", "web-1", "--json"]).unwrap();
        Cli::try_parse_from(["muster", "stats"]).unwrap();
        Cli::try_parse_from(["muster", "decode"]).unwrap();
        Cli::try_parse_from(["muster", "start", "toy", "--hosts", "web-*", "--batch", "2", "--detach"]).unwrap();
        Cli::try_parse_from(["muster", "run", "--hosts", "h1", "--", "uptime", "-p"]).unwrap();
        Cli::try_parse_from(["muster", "stack", "apply", "toy.toml"]).unwrap();
        Cli::try_parse_from(["muster", "request", "3", "--watch"]).unwrap();
        Cli::try_parse_from(["muster", "servers", "--json"]).unwrap();
        Cli::try_parse_from(["muster", "custom", "hello", "worker", "--hosts", "h1"]).unwrap();
        assert!(Cli::try_parse_from(["muster", "run", "--hosts", "h1"]).is_err(), "run needs argv");
    }
}
