//! Host facts (the hardware and OS profile sent on registration) and host health (sent in every heartbeat).
//!
//! [`FactSource`] is what a session asks; [`SystemFacts`] answers from the real machine through one long-lived
//! `sysinfo` state, and [`StaticFacts`] answers with fixed values (simulated hosts, tests). The shaping rules —
//! which mounts count, how full is too full, how big a report may get — are pure functions tested on their own.
//!
//! In a container [`SystemFacts`] reports the container: [`probe_container`] reads the kernel's files (what they
//! say is decided by the pure [`crate::container`]) and lowers the CPU count and memory to the cgroup's limits.
//! Addresses and mounts need nothing extra: they are read in the agent's own network and mount namespaces.

use std::net::IpAddr;
use std::path::Path;

use muster_schemas::host::{ContainerFacts, Mount};
use muster_schemas::{Health, HostFacts};
use sysinfo::{CpuRefreshKind, DiskRefreshKind, Disks, Networks, System};

use crate::container::{self, CgroupVersion, Level, Markers, Resources};

/// Filesystem types that are not storage: kernel and memory pseudo filesystems. Their sizes are meaningless or
/// zero, and a full `/dev/shm` is not a full disk.
pub const PSEUDO_FILESYSTEMS: &[&str] = &[
    "tmpfs",
    "devtmpfs",
    "proc",
    "sysfs",
    "devpts",
    "cgroup",
    "cgroup2",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "bpf",
    "configfs",
    "fusectl",
    "hugetlbfs",
    "binfmt_misc",
    "nsfs",
    "ramfs",
    "efivarfs",
    "autofs",
    "rpc_pipefs",
];

/// Read-only image filesystems are always 100% used by construction (snaps, ISOs): reported as facts, never a
/// health problem.
pub const IMAGE_FILESYSTEMS: &[&str] = &["squashfs", "iso9660", "udf", "erofs"];

/// Most mounts reported. A Docker or Kubernetes node can show one overlay per container; 128 mounts of ~150 bytes
/// keep the registration well under `MAX_REGISTER_BYTES` (64 KiB) with room left for labels.
pub const MAX_MOUNTS: usize = 128;

/// Most addresses reported: 64 covers multi-homed hosts with many bridges; ~40 bytes each.
pub const MAX_IP_ADDRESSES: usize = 64;

/// Most problems in one health report, so a heartbeat stays under `MAX_HEARTBEAT_BYTES` (4 KiB): 8 × 256 bytes
/// leaves room for the rest of the heartbeat.
pub const MAX_PROBLEMS: usize = 8;

/// Longest problem text in bytes (a mount point may be up to 4 KiB long).
pub const MAX_PROBLEM_LEN: usize = 256;

/// Something that can describe the host: the full profile on registration, health on each heartbeat.
pub trait FactSource: Send {
    /// The full hardware and OS profile. Called once per registration.
    fn facts(&mut self) -> HostFacts;
    /// The host's current health. Called once per heartbeat, so it must be cheap.
    fn health(&mut self) -> Health;
}

/// Why the real host could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    /// `sysinfo` does not support this platform.
    #[error("cannot read host facts on this platform: {0}")]
    Unsupported(sysinfo::Error),
}

/// Facts and health of the machine the agent runs on. Holds its `sysinfo` state for the agent's lifetime, so a
/// heartbeat refreshes disk usage in place instead of rebuilding the system view.
pub struct SystemFacts {
    system: System,
    disks: Disks,
    networks: Networks,
    disk_full_percent: u8,
}

impl std::fmt::Debug for SystemFacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemFacts").field("disk_full_percent", &self.disk_full_percent).finish_non_exhaustive()
    }
}

impl SystemFacts {
    /// Prepares the `sysinfo` state. `disk_full_percent` is the threshold for [`health`].
    pub fn new(disk_full_percent: u8) -> Result<Self, FactsError> {
        let mut system = System::new().map_err(FactsError::Unsupported)?;
        system.refresh_cpu_list(CpuRefreshKind::nothing());
        let disks = Disks::new().map_err(FactsError::Unsupported)?;
        let networks = Networks::new().map_err(FactsError::Unsupported)?;
        Ok(Self { system, disks, networks, disk_full_percent })
    }

    fn refresh_disks(&mut self) {
        // `true` drops unmounted filesystems; the mount table is re-read so new mounts appear.
        self.disks.refresh_specifics(true, DiskRefreshKind::nothing().with_storage());
    }

    fn mounts(&self) -> Vec<Mount> {
        shape_mounts(self.disks.iter().map(|d| Mount {
            mount_point: d.mount_point().to_string_lossy().into_owned(),
            fs_type: d.file_system().to_string_lossy().into_owned(),
            total_bytes: d.total_space(),
            available_bytes: d.available_space(),
        }))
    }
}

impl FactSource for SystemFacts {
    fn facts(&mut self) -> HostFacts {
        self.system.refresh_memory();
        self.refresh_disks();
        self.networks.refresh(true);
        let cpu_count = match self.system.cpus().len() {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let addresses = self.networks.values().flat_map(|n| n.ip_networks().iter().map(|ip| ip.addr));
        let host = Resources {
            cpus: u32::try_from(cpu_count).unwrap_or(u32::MAX),
            memory_total: self.system.total_memory(),
            memory_available: self.system.available_memory(),
        };
        let (usable, container) = match probe_container(Path::new("/"), Markers::of_this_process(), host) {
            Some((usable, container)) => (usable, Some(container)),
            None => (host, None),
        };
        HostFacts {
            hostname: System::host_name().unwrap_or_default(),
            cpu_count: usable.cpus,
            memory_total_bytes: usable.memory_total,
            memory_available_bytes: usable.memory_available,
            mounts: self.mounts(),
            os_name: System::name().unwrap_or_default(),
            os_version: System::os_version().unwrap_or_default(),
            kernel_version: System::kernel_version().unwrap_or_default(),
            arch: System::cpu_arch(),
            ip_addresses: shape_addresses(addresses),
            uptime_secs: System::uptime().unwrap_or_default(),
            timezone: read_timezone(Path::new("/etc/timezone"), Path::new("/etc/localtime")),
            container,
        }
    }

    fn health(&mut self) -> Health {
        self.refresh_disks();
        let mounts = self.mounts();
        disk_health(&mounts, self.disk_full_percent)
    }
}

impl Markers {
    /// The markers of the running process: `/.dockerenv`, `/run/.containerenv`, `$container`,
    /// `$KUBERNETES_SERVICE_HOST`.
    pub fn of_this_process() -> Self {
        Self {
            dockerenv: Path::new("/.dockerenv").exists(),
            containerenv: Path::new("/run/.containerenv").exists(),
            container_var: std::env::var_os("container").is_some(),
            kubernetes_var: std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
        }
    }
}

/// When the process runs in a container (by `markers` or `/proc/self/{cgroup,mountinfo}`): the share of `host`
/// its cgroup and the cgroup's ancestors allow, and the container's facts. `None` outside a container: a limit
/// on a host's service (a systemd `MemoryMax`) says nothing about the host. `root` is where the machine's
/// filesystem is (`/`; tests use a directory tree). Unreadable files count as no limit.
pub fn probe_container(root: &Path, markers: Markers, host: Resources) -> Option<(Resources, ContainerFacts)> {
    let read = |path: &Path| {
        let relative = path.strip_prefix("/").unwrap_or(path);
        std::fs::read_to_string(root.join(relative)).unwrap_or_default()
    };
    let cgroup = read(Path::new("/proc/self/cgroup"));
    let mountinfo = read(Path::new("/proc/self/mountinfo"));
    if !container::in_container(markers, &cgroup, &mountinfo) {
        return None;
    }
    let dirs = container::cgroup_dirs(&cgroup, &mountinfo);
    let mut levels = Vec::new();
    if let Some(dir) = &dirs.memory {
        let (limit, used) = match dir.version {
            CgroupVersion::V2 => ("memory.max", "memory.current"),
            CgroupVersion::V1 => ("memory.limit_in_bytes", "memory.usage_in_bytes"),
        };
        levels.extend(dir.levels().iter().map(|level| Level {
            memory_limit: container::parse_memory_limit(&read(&level.join(limit))),
            memory_used: container::parse_count(&read(&level.join(used))),
            cpu_quota: None,
        }));
    }
    if let Some(dir) = &dirs.cpu {
        levels.extend(dir.levels().iter().map(|level| Level {
            cpu_quota: match dir.version {
                CgroupVersion::V2 => container::parse_cpu_max(&read(&level.join("cpu.max"))),
                CgroupVersion::V1 => container::parse_cfs(
                    &read(&level.join("cpu.cfs_quota_us")),
                    &read(&level.join("cpu.cfs_period_us")),
                ),
            },
            ..Level::default()
        }));
    }
    let facts = ContainerFacts {
        id: container::container_id(&mountinfo, &cgroup),
        host_cpu_count: host.cpus,
        host_memory_total_bytes: host.memory_total,
    };
    Some((container::effective_limits(host, &levels), facts))
}

/// Fixed facts and health: for simulated hosts (`muster-swarm`) and tests.
#[derive(Debug, Clone, Default)]
pub struct StaticFacts {
    /// Returned by every [`FactSource::facts`] call.
    pub facts: HostFacts,
    /// Returned by every [`FactSource::health`] call.
    pub health: Health,
}

impl FactSource for StaticFacts {
    fn facts(&mut self) -> HostFacts {
        self.facts.clone()
    }
    fn health(&mut self) -> Health {
        self.health.clone()
    }
}

/// The health implied by `facts`: one problem per real mount used above `disk_full_percent`.
pub fn health(facts: &HostFacts, disk_full_percent: u8) -> Health {
    disk_health(&facts.mounts, disk_full_percent)
}

fn disk_health(mounts: &[Mount], disk_full_percent: u8) -> Health {
    let problems = mounts
        .iter()
        .filter(|m| m.total_bytes > 0 && !IMAGE_FILESYSTEMS.contains(&m.fs_type.as_str()))
        .filter_map(|m| {
            let total = u128::from(m.total_bytes);
            let used = total.saturating_sub(u128::from(m.available_bytes));
            // Integer comparison: used/total > limit/100, without float rounding at the boundary.
            (used * 100 > total * u128::from(disk_full_percent)).then(|| {
                // Rounded up like df, so a mount reported over the limit never shows the limit itself.
                let percent = (used * 100).div_ceil(total);
                format!("mount {} is {percent}% full", m.mount_point)
            })
        })
        .collect();
    bound_health(Health { problems })
}

/// Caps a health report to [`MAX_PROBLEMS`] problems of at most [`MAX_PROBLEM_LEN`] bytes, so any source's report
/// fits in a heartbeat. Dropped problems are counted in a last entry.
pub fn bound_health(health: Health) -> Health {
    let total = health.problems.len();
    let mut problems: Vec<String> = health.problems.into_iter().take(MAX_PROBLEMS).map(truncate_problem).collect();
    if total > MAX_PROBLEMS {
        problems.truncate(MAX_PROBLEMS - 1);
        problems.push(format!("... and {} more problems", total - (MAX_PROBLEMS - 1)));
    }
    Health { problems }
}

fn truncate_problem(mut text: String) -> String {
    if text.len() > MAX_PROBLEM_LEN {
        let mut end = MAX_PROBLEM_LEN - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// Keeps real storage: drops pseudo filesystems, zero-sized mounts and repeated mount points (the last one
/// mounted wins, as in the kernel); orders shallow mount points first so `/` and top-level mounts survive the
/// [`MAX_MOUNTS`] cap.
pub fn shape_mounts(mounts: impl IntoIterator<Item = Mount>) -> Vec<Mount> {
    let mut kept: Vec<Mount> = Vec::new();
    for m in mounts {
        if m.total_bytes == 0 || PSEUDO_FILESYSTEMS.contains(&m.fs_type.as_str()) {
            continue;
        }
        kept.retain(|k| k.mount_point != m.mount_point);
        kept.push(m);
    }
    kept.sort_by(|a, b| depth(&a.mount_point).cmp(&depth(&b.mount_point)).then(a.mount_point.cmp(&b.mount_point)));
    kept.truncate(MAX_MOUNTS);
    kept
}

fn depth(mount_point: &str) -> usize {
    mount_point.split('/').filter(|s| !s.is_empty()).count()
}

/// Keeps addresses another host could use: no loopback, unspecified or IPv6 link-local (ambiguous without an
/// interface); sorted, deduplicated and capped at [`MAX_IP_ADDRESSES`].
pub fn shape_addresses(addresses: impl IntoIterator<Item = IpAddr>) -> Vec<String> {
    let mut kept: Vec<IpAddr> = addresses
        .into_iter()
        .filter(|a| !a.is_loopback() && !a.is_unspecified())
        .filter(|a| !matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
        .collect();
    kept.sort();
    kept.dedup();
    kept.truncate(MAX_IP_ADDRESSES);
    kept.iter().map(IpAddr::to_string).collect()
}

/// The host's timezone name from `/etc/timezone` (Debian) or the `/etc/localtime` symlink target; empty when
/// neither names one.
pub fn read_timezone(etc_timezone: &Path, localtime: &Path) -> String {
    let text = std::fs::read_to_string(etc_timezone).ok();
    let link = std::fs::read_link(localtime).ok();
    timezone_from(text.as_deref(), link.as_deref())
}

/// Pure part of [`read_timezone`].
pub fn timezone_from(etc_timezone: Option<&str>, localtime_target: Option<&Path>) -> String {
    if let Some(name) = etc_timezone.map(str::trim).filter(|s| !s.is_empty()) {
        return name.to_owned();
    }
    localtime_target
        .and_then(Path::to_str)
        .and_then(|target| target.split_once("zoneinfo/").map(|(_, name)| name.trim_matches('/').to_owned()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn mount(point: &str, fs: &str, total: u64, available: u64) -> Mount {
        Mount { mount_point: point.into(), fs_type: fs.into(), total_bytes: total, available_bytes: available }
    }

    fn facts_with(mounts: Vec<Mount>) -> HostFacts {
        HostFacts { mounts, ..HostFacts::default() }
    }

    #[test]
    fn full_mounts_are_problems() {
        let facts = facts_with(vec![
            mount("/", "ext4", 100 * GIB, 3 * GIB),
            mount("/data", "xfs", 100 * GIB, 50 * GIB),
            mount("/snap/core/1", "squashfs", GIB, 0),
        ]);
        assert_eq!(health(&facts, 95).problems, ["mount / is 97% full"]);
        assert!(health(&facts, 98).is_healthy());
        assert_eq!(health(&facts, 40).problems, ["mount / is 97% full", "mount /data is 50% full"]);
    }

    #[test]
    fn threshold_is_strictly_above_and_rounds_up_like_df() {
        // Exactly at the limit is fine; just above it is a problem shown above the limit.
        assert!(health(&facts_with(vec![mount("/", "ext4", 100, 5)]), 95).is_healthy());
        let h = health(&facts_with(vec![mount("/", "ext4", 1_000, 49)]), 95);
        assert_eq!(h.problems, ["mount / is 96% full"]);
        assert!(health(&facts_with(vec![mount("/", "ext4", 0, 0)]), 1).is_healthy());
        assert_eq!(health(&facts_with(vec![mount("/", "ext4", u64::MAX, 0)]), 100).problems.len(), 0);
    }

    #[test]
    fn health_reports_are_bounded() {
        let mounts = (0..20).map(|i| mount(&format!("/m{i}/{}", "x".repeat(400)), "ext4", 10, 0)).collect();
        let h = health(&facts_with(mounts), 95);
        assert_eq!(h.problems.len(), MAX_PROBLEMS);
        assert!(h.problems.iter().all(|p| p.len() <= MAX_PROBLEM_LEN));
        assert_eq!(h.problems.last().unwrap(), "... and 13 more problems");
        let hb = muster_schemas::Heartbeat {
            schema: muster_schemas::PROTOCOL_VERSION,
            host: muster_schemas::HostId::new("x".repeat(64)).unwrap(),
            seq: u64::MAX,
            sent_at: u64::MAX,
            health: h,
        };
        assert!(muster_schemas::encode(&hb).len() <= muster_schemas::limits::MAX_HEARTBEAT_BYTES);
    }

    #[test]
    fn mounts_skip_pseudo_and_empty_and_keep_shallow_first() {
        let shaped = shape_mounts(vec![
            mount("/var/lib/docker", "ext4", GIB, GIB),
            mount("/proc", "proc", 0, 0),
            mount("/dev/shm", "tmpfs", GIB, GIB),
            mount("/", "overlay", GIB, GIB),
            mount("/boot", "vfat", 0, 0),
            mount("/data", "xfs", GIB, 1),
            mount("/data", "xfs", 2 * GIB, 2),
        ]);
        let points: Vec<_> = shaped.iter().map(|m| (m.mount_point.as_str(), m.total_bytes)).collect();
        assert_eq!(points, [("/", GIB), ("/data", 2 * GIB), ("/var/lib/docker", GIB)]);

        let many = (0..500).map(|i| mount(&format!("/var/lib/docker/overlay2/{i}/merged"), "overlay", GIB, GIB));
        let shaped = shape_mounts(std::iter::once(mount("/", "ext4", GIB, GIB)).chain(many));
        assert_eq!(shaped.len(), MAX_MOUNTS);
        assert_eq!(shaped[0].mount_point, "/");
    }

    #[test]
    fn addresses_skip_loopback_and_link_local() {
        let addrs = ["127.0.0.1", "::1", "fe80::1", "192.0.2.2", "fd00::2", "192.0.2.2", "0.0.0.0", "172.17.0.1"];
        let shaped = shape_addresses(addrs.iter().map(|a| a.parse().unwrap()));
        assert_eq!(shaped, ["172.17.0.1", "192.0.2.2", "fd00::2"]);
    }

    #[test]
    fn timezone_prefers_etc_timezone_then_localtime_link() {
        assert_eq!(timezone_from(Some("Europe/Berlin\n"), None), "Europe/Berlin");
        let link = Path::new("../usr/share/zoneinfo/America/New_York");
        assert_eq!(timezone_from(Some("  \n"), Some(link)), "America/New_York");
        assert_eq!(timezone_from(None, Some(Path::new("/etc/some-file"))), "");
        assert_eq!(timezone_from(None, None), "");
    }

    /// A machine's files under a temporary root: `(path, contents)`.
    fn machine(files: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = root.path().join(path.trim_start_matches('/'));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        root
    }

    const HOST: Resources = Resources { cpus: 8, memory_total: 32 * GIB, memory_available: 20 * GIB };
    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn a_v2_container_reports_its_cgroup_limits_and_id() {
        let mountinfo = format!(
            "1 0 0:1 / / rw - overlay overlay rw\n\
             2 1 0:2 / /sys/fs/cgroup ro - cgroup2 cgroup rw\n\
             3 1 8:1 /var/lib/docker/containers/{ID}/hostname /etc/hostname rw - ext4 /dev/sda1 rw\n"
        );
        let root = machine(&[
            ("/proc/self/cgroup", "0::/\n"),
            ("/proc/self/mountinfo", &mountinfo),
            ("/sys/fs/cgroup/memory.max", "2147483648\n"),
            ("/sys/fs/cgroup/memory.current", "536870912\n"),
            ("/sys/fs/cgroup/cpu.max", "150000 100000\n"),
        ]);
        let (usable, container) = probe_container(root.path(), Markers::default(), HOST).expect("a container");
        assert_eq!(usable, Resources { cpus: 2, memory_total: 2 * GIB, memory_available: 3 * GIB / 2 });
        assert_eq!(
            container,
            ContainerFacts { id: Some(ID.into()), host_cpu_count: 8, host_memory_total_bytes: 32 * GIB }
        );
    }

    #[test]
    fn limits_of_ancestors_count_and_unlimited_files_do_not() {
        // No cgroup namespace: the path leads from the hierarchy's root down to the container; the pod above it
        // holds the memory limit, the container the CPU quota.
        let pod = "kubepods.slice/kubepods-pod1.slice";
        let cgroup = format!("0::/{pod}/cri-containerd-{ID}.scope\n");
        let dir = format!("/sys/fs/cgroup/{pod}/cri-containerd-{ID}.scope");
        let root = machine(&[
            ("/proc/self/cgroup", &cgroup),
            ("/proc/self/mountinfo", "2 1 0:2 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"),
            (&format!("{dir}/memory.max"), "max\n"),
            (&format!("{dir}/memory.current"), "1073741824\n"),
            (&format!("{dir}/cpu.max"), "100000 100000\n"),
            (&format!("/sys/fs/cgroup/{pod}/memory.max"), "4294967296\n"),
            (&format!("/sys/fs/cgroup/{pod}/memory.current"), "3221225472\n"),
            (&format!("/sys/fs/cgroup/{pod}/cpu.max"), "max 100000\n"),
        ]);
        let (usable, container) = probe_container(root.path(), Markers::default(), HOST).expect("a container");
        assert_eq!(usable, Resources { cpus: 1, memory_total: 4 * GIB, memory_available: GIB });
        assert_eq!(container.id.as_deref(), Some(ID));
    }

    #[test]
    fn a_v1_container_reads_the_v1_files() {
        let root = machine(&[
            ("/proc/self/cgroup", "4:memory:/docker/x\n3:cpu,cpuacct:/docker/x\n"),
            (
                "/proc/self/mountinfo",
                "5 1 0:5 /docker/x /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n\
                 6 1 0:6 /docker/x /sys/fs/cgroup/cpu,cpuacct ro - cgroup cgroup rw,cpu,cpuacct\n",
            ),
            ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "1073741824\n"),
            ("/sys/fs/cgroup/memory/memory.usage_in_bytes", "268435456\n"),
            ("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "250000\n"),
            ("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n"),
        ]);
        let markers = Markers { dockerenv: true, ..Markers::default() };
        let (usable, container) = probe_container(root.path(), markers, HOST).expect("a container");
        assert_eq!(usable, Resources { cpus: 3, memory_total: GIB, memory_available: 3 * GIB / 4 });
        assert_eq!(container.id, None, "no id in a path that is not one");
    }

    #[test]
    fn outside_a_container_limits_are_not_applied() {
        // A systemd service with a memory limit on a plain host: the host's facts stay the host's.
        let root = machine(&[
            ("/proc/self/cgroup", "0::/system.slice/muster-agent.service\n"),
            ("/proc/self/mountinfo", "2 1 0:2 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"),
            ("/sys/fs/cgroup/system.slice/muster-agent.service/memory.max", "1073741824\n"),
        ]);
        assert_eq!(probe_container(root.path(), Markers::default(), HOST), None);
        // In a container whose files cannot be read, the host's totals stand.
        let empty = machine(&[]);
        let markers = Markers { containerenv: true, ..Markers::default() };
        let (usable, container) = probe_container(empty.path(), markers, HOST).expect("a container");
        assert_eq!((usable, container.id), (HOST, None));
    }

    #[test]
    fn this_machine_has_facts() {
        let mut source = SystemFacts::new(100).expect("sysinfo supports the test machine");
        let facts = source.facts();
        assert!(facts.cpu_count > 0, "{facts:?}");
        assert!(facts.memory_total_bytes > 0, "{facts:?}");
        assert!(facts.memory_available_bytes <= facts.memory_total_bytes, "{facts:?}");
        assert!(!facts.hostname.is_empty(), "{facts:?}");
        assert!(!facts.kernel_version.is_empty(), "{facts:?}");
        assert!(!facts.arch.is_empty(), "{facts:?}");
        assert!(!facts.mounts.is_empty(), "{facts:?}");
        assert!(facts.uptime_secs > 0, "{facts:?}");
        // At 100% nothing can be "above"; health must be callable repeatedly on the same state.
        assert!(source.health().is_healthy());
        assert!(source.health().is_healthy());
        let encoded = muster_schemas::encode(&facts);
        assert!(encoded.len() < muster_schemas::limits::MAX_REGISTER_BYTES / 2, "{} bytes", encoded.len());
    }
}
