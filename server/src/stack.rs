//! Stack and blueprint files: TOML an operator applies, parsed and validated here (pure) with errors that name the
//! line. The server stores the parsed definition together with the source text.
//!
//! ```toml
//! name = "toy"
//! [services.toy]
//! description = "a toy daemon"
//! [services.toy.components.master]
//! category = "daemon"                     # or "client"
//! install = { script = "mkdir -p /tmp/toy" }
//! start   = { argv = ["/opt/toy/start"], env = { PORT = "8080" }, timeout_secs = 30 }
//! stop    = { script = "..." }
//! status  = { script = "..." }            # exit 0 = running
//! [services.toy.components.worker]
//! category = "daemon"
//! depends_on = ["master"]                 # start after master, stop before it
//! custom.rebalance = { script = "..." }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;

use muster_schemas::cluster::{BlueprintDef, ComponentDef, HostGroup, ServiceDef, StackDef};
use muster_schemas::commands::{Category, CommandSpec};
use serde::Deserialize;
use toml::Spanned;

/// Default command timeout when a stack does not give one (Ambari's default agent task timeout is 900 s).
pub const DEFAULT_TIMEOUT_SECS: u64 = 600;
/// Longest command timeout accepted (stack files and `run` requests): a day.
pub const MAX_TIMEOUT_SECS: u64 = 86_400;
/// Largest stack or blueprint file.
pub const MAX_FILE_BYTES: usize = 256 * 1024;

/// A stack or blueprint file that cannot be applied: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for FileError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StackFile {
    name: Spanned<String>,
    #[serde(default)]
    services: BTreeMap<String, Spanned<ServiceFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceFile {
    #[serde(default)]
    description: String,
    #[serde(default)]
    components: BTreeMap<String, Spanned<ComponentFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ComponentFile {
    category: Category,
    #[serde(default)]
    depends_on: Vec<Spanned<String>>,
    install: Option<Spanned<CommandFile>>,
    start: Option<Spanned<CommandFile>>,
    stop: Option<Spanned<CommandFile>>,
    status: Option<Spanned<CommandFile>>,
    uninstall: Option<Spanned<CommandFile>>,
    #[serde(default)]
    custom: BTreeMap<String, Spanned<CommandFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandFile {
    argv: Option<Vec<String>>,
    script: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    timeout_secs: Option<u64>,
}

struct Ctx<'a> {
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> FileError {
        let line = self.text[..span.start.min(self.text.len())].matches('\n').count() + 1;
        FileError { line: Some(line), message: message.into() }
    }
}

fn toml_error(text: &str, e: toml::de::Error) -> FileError {
    let ctx = Ctx { text };
    let message = e.message().to_string();
    match e.span() {
        Some(span) => ctx.err(span, message),
        None => FileError { line: None, message },
    }
}

fn check_name(ctx: &Ctx, what: &str, name: &str, span: Range<usize>) -> Result<(), FileError> {
    let ok =
        !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ctx.err(span, format!("{what} name {name:?} must be 1-64 characters of letters, digits, '-' or '_'")))
    }
}

fn command(ctx: &Ctx, what: &str, c: &Spanned<CommandFile>) -> Result<CommandSpec, FileError> {
    let span = c.span();
    let c = c.get_ref();
    let argv = match (&c.argv, &c.script) {
        (Some(_), Some(_)) => return Err(ctx.err(span, format!("{what}: give either argv or script, not both"))),
        (None, None) => return Err(ctx.err(span, format!("{what}: needs argv or script"))),
        (Some(argv), None) if argv.is_empty() || argv[0].is_empty() => {
            return Err(ctx.err(span, format!("{what}: argv must name a program")))
        }
        (Some(argv), None) => argv.clone(),
        (None, Some(script)) => vec!["/bin/sh".into(), "-c".into(), script.clone()],
    };
    let timeout = c.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
    if timeout == 0 || timeout > MAX_TIMEOUT_SECS {
        return Err(ctx.err(span, format!("{what}: timeout_secs must be between 1 and {MAX_TIMEOUT_SECS}")));
    }
    Ok(CommandSpec { argv, env: c.env.clone(), timeout_ms: timeout * 1000 })
}

/// Parses and validates a stack file.
pub fn parse_stack(text: &str) -> Result<StackDef, FileError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(FileError { line: None, message: format!("file is larger than {MAX_FILE_BYTES} bytes") });
    }
    let ctx = Ctx { text };
    let file: StackFile = toml::from_str(text).map_err(|e| toml_error(text, e))?;
    check_name(&ctx, "stack", file.name.get_ref(), file.name.span())?;
    if file.services.is_empty() {
        return Err(FileError { line: None, message: "a stack needs at least one [services.<name>]".into() });
    }
    let mut seen: BTreeMap<String, Range<usize>> = BTreeMap::new();
    let mut services = Vec::new();
    let mut deps_to_check = Vec::new();
    for (sname, s) in &file.services {
        check_name(&ctx, "service", sname, s.span())?;
        let mut components = Vec::new();
        for (cname, c) in &s.get_ref().components {
            let span = c.span();
            check_name(&ctx, "component", cname, span.clone())?;
            if seen.insert(cname.clone(), span.clone()).is_some() {
                return Err(
                    ctx.err(span, format!("component {cname:?} is defined twice (names are unique in a stack)"))
                );
            }
            let cf = c.get_ref();
            let mut commands = BTreeMap::new();
            let fixed = [
                ("install", &cf.install),
                ("start", &cf.start),
                ("stop", &cf.stop),
                ("status", &cf.status),
                ("uninstall", &cf.uninstall),
            ];
            for (name, spec) in fixed {
                if let Some(spec) = spec {
                    commands.insert(name.to_string(), command(&ctx, &format!("{cname}.{name}"), spec)?);
                }
            }
            for (name, spec) in &cf.custom {
                check_name(&ctx, "custom command", name, spec.span())?;
                commands.insert(format!("custom.{name}"), command(&ctx, &format!("{cname}.custom.{name}"), spec)?);
            }
            let required: &[&str] = match cf.category {
                Category::Daemon => &["install", "start", "stop", "status"],
                Category::Client => &["install"],
            };
            for r in required {
                if !commands.contains_key(*r) {
                    let cat = if cf.category == Category::Daemon { "daemon" } else { "client" };
                    return Err(ctx.err(span.clone(), format!("{cat} component {cname:?} needs a `{r}` command")));
                }
            }
            for d in &cf.depends_on {
                if d.get_ref() == cname {
                    return Err(ctx.err(d.span(), format!("component {cname:?} cannot depend on itself")));
                }
                deps_to_check.push((d.get_ref().clone(), d.span()));
            }
            components.push(ComponentDef {
                name: cname.clone(),
                category: cf.category,
                commands,
                depends_on: cf.depends_on.iter().map(|d| d.get_ref().clone()).collect(),
            });
        }
        services.push(ServiceDef { name: sname.clone(), description: s.get_ref().description.clone(), components });
    }
    for (dep, span) in deps_to_check {
        if !seen.contains_key(&dep) {
            return Err(ctx.err(span, format!("depends_on names unknown component {dep:?}")));
        }
    }
    let def = StackDef { name: file.name.into_inner(), services };
    if let Some(cycle) = find_cycle(&def) {
        let span = seen.get(&cycle[0]).cloned().unwrap_or(0..0);
        return Err(ctx.err(span, format!("dependency cycle: {}", cycle.join(" -> "))));
    }
    Ok(def)
}

/// A dependency cycle among components, if any, as the path that closes it.
fn find_cycle(def: &StackDef) -> Option<Vec<String>> {
    let deps: BTreeMap<&str, &[String]> = def.components().map(|(_, c)| (c.name.as_str(), &c.depends_on[..])).collect();
    fn visit<'a>(
        n: &'a str,
        deps: &BTreeMap<&'a str, &'a [String]>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| *p == n) {
            let mut cycle: Vec<String> = path[i..].iter().map(|s| s.to_string()).collect();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n);
        for d in deps.get(n).copied().unwrap_or_default() {
            if let Some(c) = visit(d, deps, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n);
        None
    }
    let mut done = BTreeSet::new();
    deps.keys().find_map(|n| visit(n, &deps, &mut Vec::new(), &mut done))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlueprintFile {
    name: Spanned<String>,
    stack: String,
    #[serde(default)]
    host_groups: BTreeMap<String, Spanned<HostGroupFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostGroupFile {
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    components: Vec<Spanned<String>>,
}

/// Parses a blueprint file and checks it against the stack it names (`stack` looks stacks up by name).
///
/// ```toml
/// name = "toy-cluster"
/// stack = "toy"
/// [host_groups.masters]
/// hosts = ["demo-1"]                 # id globs; omit to match any host
/// components = ["master"]
/// [host_groups.workers]
/// labels = { role = "worker" }       # all must match
/// components = ["worker"]
/// ```
pub fn parse_blueprint<'a>(
    text: &str,
    stack: impl Fn(&str) -> Option<&'a StackDef>,
) -> Result<BlueprintDef, FileError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(FileError { line: None, message: format!("file is larger than {MAX_FILE_BYTES} bytes") });
    }
    let ctx = Ctx { text };
    let file: BlueprintFile = toml::from_str(text).map_err(|e| toml_error(text, e))?;
    check_name(&ctx, "blueprint", file.name.get_ref(), file.name.span())?;
    let Some(def) = stack(&file.stack) else {
        return Err(FileError { line: None, message: format!("unknown stack {:?}: apply it first", file.stack) });
    };
    if file.host_groups.is_empty() {
        return Err(FileError { line: None, message: "a blueprint needs at least one [host_groups.<name>]".into() });
    }
    let mut groups = Vec::new();
    for (name, g) in &file.host_groups {
        check_name(&ctx, "host group", name, g.span())?;
        let gf = g.get_ref();
        for h in &gf.hosts {
            glob::Pattern::new(h.get_ref()).map_err(|e| ctx.err(h.span(), format!("bad host pattern: {e}")))?;
        }
        if gf.components.is_empty() {
            return Err(ctx.err(g.span(), format!("host group {name:?} lists no components")));
        }
        for c in &gf.components {
            if def.component(c.get_ref()).is_none() {
                return Err(ctx.err(c.span(), format!("stack {:?} has no component {:?}", def.name, c.get_ref())));
            }
        }
        groups.push(HostGroup {
            name: name.clone(),
            hosts: gf.hosts.iter().map(|h| h.get_ref().clone()).collect(),
            labels: gf.labels.clone(),
            components: gf.components.iter().map(|c| c.get_ref().clone()).collect(),
        });
    }
    Ok(BlueprintDef { name: file.name.into_inner(), stack: file.stack, host_groups: groups })
}

/// Whether a host (id + labels) belongs to a host group.
pub fn group_matches(g: &HostGroup, host: &str, labels: &BTreeMap<String, String>) -> bool {
    let id_ok = g.hosts.is_empty() || g.hosts.iter().any(|p| glob::Pattern::new(p).is_ok_and(|p| p.matches(host)));
    id_ok && g.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const TOY: &str = r#"
name = "toy"

[services.toy]
description = "toy"

[services.toy.components.master]
category = "daemon"
install = { script = "true" }
start = { script = "true", timeout_secs = 5 }
stop = { script = "true" }
status = { argv = ["/bin/true"] }

[services.toy.components.worker]
category = "daemon"
depends_on = ["master"]
install = { script = "true" }
start = { script = "true" }
stop = { script = "true" }
status = { script = "true" }
custom.rebalance = { script = "echo hi" }

[services.toy.components.cli]
category = "client"
install = { script = "true" }
"#;

    #[test]
    fn parses_a_valid_stack() {
        let s = parse_stack(TOY).unwrap();
        assert_eq!(s.name, "toy");
        let (_, w) = s.component("worker").unwrap();
        assert_eq!(w.depends_on, vec!["master"]);
        assert_eq!(w.commands["start"].argv, vec!["/bin/sh", "-c", "true"]);
        assert_eq!(w.commands["start"].timeout_ms, DEFAULT_TIMEOUT_SECS * 1000);
        assert!(w.commands.contains_key("custom.rebalance"));
        assert_eq!(s.component("master").unwrap().1.commands["start"].timeout_ms, 5000);
    }

    fn err(text: &str) -> FileError {
        parse_stack(text).unwrap_err()
    }

    #[test]
    fn errors_name_the_line() {
        let e = err(&TOY.replace("depends_on = [\"master\"]", "depends_on = [\"nope\"]"));
        assert_eq!(e.line, Some(16), "{e}");
        assert!(e.message.contains("unknown component \"nope\""), "{e}");

        let e = err(&TOY.replace("category = \"client\"", "category = \"deamon\""));
        assert_eq!(e.line, Some(24), "{e}");

        let e = err(&TOY.replace("stop = { script = \"true\" }\nstatus = { argv", "status = { argv"));
        assert!(e.message.contains("needs a `stop` command"), "{e}");
        assert_eq!(e.line, Some(7), "{e}");

        let e = err("name = \"x\"\n[services.a.components.b]\ncategory = \"client\"\ninstall = { }\n");
        assert_eq!(e.to_string(), "line 4: b.install: needs argv or script");

        let e = err("name = \"x\"\nbogus = 1\n");
        assert_eq!(e.line, Some(2), "{e}");

        let e = err("name = \"x\"\n[services.a.components.b]\ncategory = \"client\"\ninstall = { script = \"true\", timeout_secs = 0 }\n");
        assert!(e.message.contains("timeout_secs"), "{e}");
    }

    #[test]
    fn cycles_and_duplicates_are_refused() {
        let cyc = TOY.replace(
            "[services.toy.components.master]\ncategory = \"daemon\"",
            "[services.toy.components.master]\ncategory = \"daemon\"\ndepends_on = [\"worker\"]",
        );
        assert!(err(&cyc).message.contains("dependency cycle"), "{}", err(&cyc));
        let dup = format!(
            "{TOY}\n[services.other.components.master]\ncategory = \"client\"\ninstall = {{ script = \"true\" }}\n"
        );
        assert!(err(&dup).message.contains("defined twice"));
    }

    #[test]
    fn blueprints_check_components_and_match_hosts() {
        let stack = parse_stack(TOY).unwrap();
        let find = |n: &str| (n == "toy").then_some(&stack);
        let text = "name = \"bp\"\nstack = \"toy\"\n[host_groups.m]\nhosts = [\"demo-1\"]\ncomponents = [\"master\"]\n[host_groups.w]\nlabels = { role = \"w\" }\ncomponents = [\"worker\"]\n";
        let bp = parse_blueprint(text, find).unwrap();
        assert_eq!(bp.host_groups.len(), 2);
        let labels: BTreeMap<String, String> = [("role".to_string(), "w".to_string())].into();
        assert!(group_matches(&bp.host_groups[0], "demo-1", &BTreeMap::new()));
        assert!(!group_matches(&bp.host_groups[0], "demo-2", &BTreeMap::new()));
        assert!(group_matches(&bp.host_groups[1], "anything", &labels));
        assert!(!group_matches(&bp.host_groups[1], "anything", &BTreeMap::new()));

        let e = parse_blueprint(&text.replace("[\"worker\"]", "[\"ghost\"]"), find).unwrap_err();
        assert_eq!(e.line, Some(8), "{e}");
        let e = parse_blueprint(&text.replace("stack = \"toy\"", "stack = \"nope\""), find).unwrap_err();
        assert!(e.message.contains("unknown stack"));
    }
}
