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
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
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
    /// List every host with its state and the time since its last heartbeat.
    Hosts {
        /// Text or JSON.
        #[command(flatten)]
        out: Output,
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

/// `5s`, `500ms`, `2m`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let n: f64 = num.parse().map_err(|_| format!("not a duration: {s:?} (e.g. 5s, 500ms)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit in {s:?}; use ms, s or m")),
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
        Cli::try_parse_from(["muster", "custom", "hello", "worker", "--hosts", "h1"]).unwrap();
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
