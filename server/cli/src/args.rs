//! [`Cli`]: the command line of `muster`, parsed by clap. Parameters only: what each command and option means and
//! its default; nothing here talks to NATS.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use muster_nats::settings;

/// Command line of `muster`.
#[derive(Debug, Parser)]
#[command(name = "muster", version, about = "Operate a muster cluster", long_about = None)]
pub struct Cli {
    /// NATS server URL; several (every node of a cluster) separated by commas.
    #[arg(long, global = true, env = settings::NATS_URL.env, default_value = muster_nats::urls::DEFAULT_NATS_URL)]
    pub nats: String,
    /// Subject prefix of the cluster; the same on every server, agent and CLI of a cluster.
    #[arg(long, global = true, env = settings::PREFIX.env, default_value = muster_schemas::subjects::DEFAULT_PREFIX)]
    pub prefix: String,
    /// How long to wait for a server's answer to a read (writes wait as long as the leader may take).
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    pub api_timeout: Duration,
    /// NATS credentials file (.creds), e.g. admin.creds or viewer.creds from `muster security init`.
    #[arg(long, global = true, env = muster_nats::connect::NATS_CREDS.env)]
    pub creds: Option<PathBuf>,
    /// CA certificate (PEM) of the NATS servers: TLS is then required and only this CA trusted.
    #[arg(long, global = true, env = muster_nats::connect::NATS_CA.env)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs --key.
    #[arg(long, global = true, env = muster_nats::connect::NATS_CERT.env, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, global = true, env = muster_nats::connect::NATS_KEY.env, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Do not warn about connecting without credentials to a NATS server that is not on loopback.
    #[arg(long, global = true, env = muster_nats::connect::INSECURE.env)]
    pub insecure: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Credentials and TLS of the connection, from --creds, --ca, --cert, --key and --insecure.
    pub fn trust(&self) -> muster_nats::ClientTrust {
        let client_cert = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(muster_nats::connect::ClientCert { cert: cert.clone(), key: key.clone() }),
            // clap refuses one without the other.
            _ => None,
        };
        muster_nats::ClientTrust {
            credentials: self.creds.clone(),
            ca: self.ca.clone(),
            client_cert,
            insecure: self.insecure,
        }
    }
}

/// `--json`: print the API's JSON (one document) instead of text, for scripts.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Output {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Every `muster` subcommand; each variant's doc is its line in `muster --help`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List every host with its state and the time since its last heartbeat; `pending`, `accept`, `reject`: hosts
    /// enrolling (docs/enrollment.md).
    Hosts {
        /// Enrollment decisions; without one, the host list.
        #[command(subcommand)]
        op: Option<HostsOp>,
        /// Text or JSON.
        #[command(flatten)]
        out: Output,
    },
    /// Enrollment tokens: `create` one from the security directory, `list` them, `revoke` one.
    Token {
        /// What to do.
        #[command(subcommand)]
        op: TokenOp,
    },
    /// Show everything known about one host.
    Host {
        /// Host id, as `muster hosts` lists it.
        id: String,
        /// Text or JSON.
        #[command(flatten)]
        out: Output,
    },
    /// Show the answering server's role, epoch, applied sequence and counters.
    Stats {
        /// Text or JSON.
        #[command(flatten)]
        out: Output,
    },
    /// Read one MessagePack body on stdin and print it as JSON (`nats sub 'muster.>' --translate 'muster decode'`).
    Decode,
    /// Apply a stack (`muster stack apply FILE`).
    Stack {
        /// What to do.
        #[command(subcommand)]
        op: FileOp,
    },
    /// Apply a blueprint (`muster blueprint apply FILE`) and follow the request that brings the hosts to it.
    Blueprint {
        /// What to do.
        #[command(subcommand)]
        op: FileOp,
    },
    /// List every host component with its state and desired state.
    Components {
        /// Text or JSON.
        #[command(flatten)]
        out: Output,
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
        /// Batch size, failures tolerated and success factor of the request.
        #[command(flatten)]
        opts: RequestOpts,
        /// Program and arguments.
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// List requests, newest first.
    Requests {
        /// Text or JSON.
        #[command(flatten)]
        out: Output,
    },
    /// Show one request with its stages and tasks.
    Request {
        /// Request id, as `muster requests` lists it.
        id: u64,
        /// Follow progress until the request ends (exit 1 unless it COMPLETED).
        #[arg(long)]
        watch: bool,
        /// Text or JSON (with `--watch`: the request as it ended).
        #[command(flatten)]
        out: Output,
    },
    /// Every server instance: role, epoch, applied log sequence, lag, uptime and state digest.
    Servers {
        /// Only the instance with this MUSTER_SERVER_ID, and fail unless it answers (a health check of one
        /// instance: it answers once its streams are set up and its API serves).
        #[arg(long, value_name = "ID")]
        id: Option<String>,
        /// Text or JSON.
        #[command(flatten)]
        out: Output,
    },
    /// Cancel a running request: queued tasks are dropped, running ones killed.
    Cancel {
        /// Id of the request to cancel, as `muster requests` lists it.
        id: u64,
        /// Text or JSON.
        #[command(flatten)]
        out: Output,
    },
    /// Write a security directory: `muster security init DIR [--host NAME]... [--force]`.
    Security {
        /// What to do.
        #[command(subcommand)]
        op: SecurityOp,
    },
    /// Mint or revoke credentials: `muster creds agent HOST`, `muster creds swarm`, `muster creds revoke HOST`.
    Creds {
        /// What to do.
        #[command(subcommand)]
        op: CredsOp,
    },
}

/// `muster hosts enrollments|pending|accept|reject`: the operator's side of enrollment.
#[derive(Debug, Subcommand)]
pub enum HostsOp {
    /// List every host's enrollment (as `salt-key -L`): state (pending, accepted, rejected), key, token, since when.
    Enrollments {
        /// Text or JSON.
        #[command(flatten)]
        out: Output,
    },
    /// List the hosts whose enrollment waits for an operator (policy pending, or a host registered before).
    Pending {
        /// Text or JSON.
        #[command(flatten)]
        out: Output,
    },
    /// Accept a host's enrollment: its agent gets its credentials when it next asks (within seconds).
    Accept {
        /// Host id, as `muster hosts pending` lists it.
        host: String,
        /// Text or JSON.
        #[command(flatten)]
        out: Output,
    },
    /// Reject a host's enrollment: the key it asked with is refused; another key may enroll the host anew.
    Reject {
        /// Host id.
        host: String,
        /// Text or JSON.
        #[command(flatten)]
        out: Output,
    },
}

/// `muster token create|list|revoke`.
#[derive(Debug, Subcommand)]
pub enum TokenOp {
    /// Mint an enrollment token with the security directory's enroll signing key, record it at the leader (admin
    /// credentials), and print it: one line for the agents' MUSTER_ENROLL_TOKEN (details on stderr).
    Create {
        /// The directory `muster security init` wrote.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Host id glob the token may enroll (`web-*`) [default: any host].
        #[arg(long, value_name = "GLOB")]
        hosts: Option<String>,
        /// How many hosts it may enroll.
        #[arg(long, value_name = "N", default_value_t = 1)]
        uses: u32,
        /// How long it is valid (`30m`, `24h`, `7d`).
        #[arg(long, value_name = "D", default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        /// Write an enrollment bundle into this directory instead of printing the token: `token` (mode 0600), and
        /// `ca.pem` and `command.pub` from DIR — all an enrolling agent needs (MUSTER_ENROLL_TOKEN=@OUT/token,
        /// MUSTER_NATS_CA=OUT/ca.pem, MUSTER_TRUSTED_KEYS=@OUT/command.pub), and no key of DIR.
        #[arg(long, value_name = "OUT")]
        bundle: Option<PathBuf>,
        /// Print the token and its record as JSON instead.
        #[command(flatten)]
        out: Output,
    },
    /// List the enrollment tokens (ids, state, uses, expiry; never a secret).
    List {
        /// Text or JSON.
        #[command(flatten)]
        out: Output,
    },
    /// Revoke a token: it enrolls nothing more (hosts it enrolled keep their credentials).
    Revoke {
        /// The token's id, as `muster token list` shows it.
        id: String,
        /// Text or JSON.
        #[command(flatten)]
        out: Output,
    },
}

/// What can be done with a stack or blueprint file; `apply FILE` is the only operation.
#[derive(Debug, Subcommand)]
pub enum FileOp {
    /// Validate and store the file.
    Apply {
        /// Path of the TOML file; sent as written, the leader validates it.
        file: PathBuf,
        /// Text or JSON.
        #[command(flatten)]
        out: Output,
    },
}

/// Target and options of install/start/stop/restart/uninstall/custom.
#[derive(Debug, clap::Args)]
pub struct ActionArgs {
    /// Service or component name.
    pub target: String,
    /// Host selector: comma-separated id globs (`web-*`), `label:key=value` or `state:HEALTHY`; a host matching any
    /// term is selected. Default: every host that has the component.
    #[arg(long)]
    pub hosts: Option<String>,
    /// Batch size, failures tolerated and success factor of the request.
    #[command(flatten)]
    pub opts: RequestOpts,
}

/// Options of every command that starts a request.
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
    /// Return at once with the request id instead of following it to its end.
    #[arg(long)]
    pub detach: bool,
    /// Text or JSON (the request as it ended; with `--detach`, the reply that created it).
    #[command(flatten)]
    pub out: Output,
}

/// `5s`, `500ms`, `2m`, `24h`, `7d`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let n: f64 = num.parse().map_err(|_| format!("not a duration: {s:?} (e.g. 5s, 500ms)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => return Err(format!("unknown unit in {s:?}; use ms, s, m, h or d")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("not a duration: {s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
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
        let c = Cli::try_parse_from(["muster", "servers", "--id", "server-1"]).unwrap();
        assert!(matches!(c.command, Command::Servers { id: Some(ref id), .. } if id == "server-1"));
        Cli::try_parse_from(["muster", "custom", "hello", "worker", "--hosts", "h1"]).unwrap();
        let c = Cli::try_parse_from(["muster", "token", "create", "--dir", "sec", "--hosts", "web-*", "--uses", "3"]);
        assert!(matches!(c.unwrap().command, Command::Token { op: TokenOp::Create { uses: 3, .. } }));
        assert!(Cli::try_parse_from(["muster", "token", "create"]).is_err(), "token create needs --dir");
        let c = Cli::try_parse_from(["muster", "token", "create", "--dir", "sec", "--bundle", "boot"]).unwrap();
        assert!(matches!(c.command, Command::Token { op: TokenOp::Create { bundle: Some(_), .. } }));
        let c = Cli::try_parse_from(["muster", "security", "init", "sec", "--host", "n1", "--if-missing"]).unwrap();
        assert!(matches!(c.command, Command::Security { op: SecurityOp::Init { if_missing: true, .. } }));
        assert!(
            Cli::try_parse_from(["muster", "security", "init", "sec", "--if-missing", "--force"]).is_err(),
            "--if-missing and --force contradict each other"
        );
        Cli::try_parse_from(["muster", "token", "revoke", "UABC"]).unwrap();
        let c = Cli::try_parse_from(["muster", "hosts", "accept", "web-1"]).unwrap();
        assert!(matches!(c.command, Command::Hosts { op: Some(HostsOp::Accept { .. }), .. }));
        let c = Cli::try_parse_from(["muster", "hosts"]).unwrap();
        assert!(matches!(c.command, Command::Hosts { op: None, .. }));
        assert!(Cli::try_parse_from(["muster", "run", "--hosts", "h1"]).is_err(), "run needs argv");
    }

    #[test]
    fn every_command_that_prints_takes_json() {
        let printing = [
            vec!["hosts"],
            vec!["host", "h1"],
            vec!["stats"],
            vec!["components"],
            vec!["requests"],
            vec!["request", "3"],
            vec!["request", "3", "--watch"],
            vec!["servers"],
            vec!["cancel", "3"],
            vec!["stack", "apply", "s.toml"],
            vec!["blueprint", "apply", "b.toml"],
            vec!["start", "toy"],
            vec!["custom", "hello", "worker"],
            vec!["run", "--hosts", "h1", "--detach"],
            vec!["run", "--hosts", "h1"],
            vec!["hosts", "pending"],
            vec!["hosts", "accept", "h1"],
            vec!["hosts", "reject", "h1"],
            vec!["token", "list"],
            vec!["token", "revoke", "UABC"],
            vec!["token", "create", "--dir", "d"],
        ];
        for args in printing {
            let mut full = vec!["muster"];
            full.extend(&args);
            full.push("--json");
            if args[0] == "run" {
                full.extend(["--", "true"]);
            }
            Cli::try_parse_from(&full).unwrap_or_else(|e| panic!("{full:?}: {e}"));
        }
    }
}

/// `muster security ...`.
#[derive(Debug, Subcommand)]
pub enum SecurityOp {
    /// Write a security directory: operator, accounts and role signing keys, a CA and the nats-server certificate,
    /// server/admin/viewer/sys credentials, the command-signing key, and secured nats-server configs. The subject
    /// prefix is --prefix (the roles' permissions are built for it).
    Init {
        /// The directory to write (created, mode 0700).
        dir: PathBuf,
        /// A DNS name or IP address clients and the other cluster nodes reach a nats-server by, besides
        /// localhost/127.0.0.1/::1 (put in its certificate); repeat for each.
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Overwrite a directory that already holds files (every credential minted from it stops working).
        #[arg(long)]
        force: bool,
        /// Leave DIR as it is and succeed when it already is a complete security directory (its state file and
        /// nats-server configs exist): for a deployment's init job, which runs at every start.
        #[arg(long, conflicts_with = "force")]
        if_missing: bool,
    },
}

/// `muster creds ...`.
#[derive(Debug, Subcommand)]
pub enum CredsOp {
    /// Mint credentials for one host's agent (confined to that host's subjects).
    Agent {
        /// The host id the agent runs as.
        host: String,
        /// The security directory (`muster security init`).
        #[arg(long)]
        dir: PathBuf,
        /// Where to write the .creds file (mode 0600); default DIR/agents/HOST.creds.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Mint credentials for a swarm agent (every host's agent rights on one connection; load tests only).
    Swarm {
        /// The security directory.
        #[arg(long)]
        dir: PathBuf,
        /// Where to write the .creds file (mode 0600); default DIR/swarm.creds.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke every credential minted for a host: re-sign the account JWT with their keys revoked and push it to
    /// nats-server (MUSTER_NATS_URL) as the system account (DIR/sys.creds, DIR/ca.pem). Effective at once. The key
    /// the host enrolled with (asked of the cluster as DIR's admin) is revoked too, and its enrollment rejected.
    /// Fails when there is nothing to revoke.
    Revoke {
        /// The host id.
        host: String,
        /// The security directory.
        #[arg(long)]
        dir: PathBuf,
    },
}
