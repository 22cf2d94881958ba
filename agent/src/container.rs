//! Whether the agent runs in a container, which one, and what its cgroup allows it — pure: every function takes
//! the text of a kernel file (`/proc/self/cgroup`, `/proc/self/mountinfo`, a cgroup's `memory.max`, `cpu.max`, ...)
//! and returns what it says; [`crate::facts`] reads the files and applies the result to the host facts.
//!
//! A container sees the host's `/proc/meminfo` and every CPU of the host, but may use only what its cgroup allows:
//! `memory.max` (v2) or `memory.limit_in_bytes` (v1), and a CPU quota `cpu.max` (v2) or `cpu.cfs_quota_us` over
//! `cpu.cfs_period_us` (v1). A limit can sit on any ancestor of the agent's cgroup (a Kubernetes pod's, a systemd
//! slice's), so the effective one is the lowest along the path up to the hierarchy's root ([`effective_limits`]).
//!
//! Bad input never panics: a file that does not parse counts as no limit, an unknown line is skipped.

use std::path::{Component, Path, PathBuf};

/// Length of a container id as Docker, Podman, containerd and CRI-O write it: 32 bytes in hex.
pub const CONTAINER_ID_LEN: usize = 64;

/// The default CFS period (100 ms), when `cpu.max` gives only a quota.
pub const DEFAULT_CPU_PERIOD_US: u64 = 100_000;

/// Mount points a container runtime bind-mounts from the container's own directory on the host
/// (`/var/lib/docker/containers/<id>/hostname`, Podman's `.../overlay-containers/<id>/userdata/hosts`).
const RUNTIME_BIND_MOUNTS: [&str; 3] = ["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"];

/// Directory names under which runtimes keep a container's files, named by its id.
const CONTAINER_DIRS: [&str; 2] = ["containers", "overlay-containers"];

/// Words in a cgroup path that only a container runtime puts there.
const RUNTIME_CGROUP_WORDS: [&str; 7] = ["docker", "kubepods", "libpod", "containerd", "crio", "lxc", "podman"];

/// What says "this is a container" besides the cgroup and mount files: files and variables runtimes create.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Markers {
    /// `/.dockerenv` exists (Docker).
    pub dockerenv: bool,
    /// `/run/.containerenv` exists (Podman, Buildah).
    pub containerenv: bool,
    /// The `container` variable is set (systemd-nspawn, Podman, LXC set it for the container's init).
    pub container_var: bool,
    /// `KUBERNETES_SERVICE_HOST` is set (every Kubernetes pod).
    pub kubernetes_var: bool,
}

/// Whether the process runs in a container, from `markers` and the texts of `/proc/self/cgroup` and
/// `/proc/self/mountinfo`.
pub fn in_container(markers: Markers, cgroup: &str, mountinfo: &str) -> bool {
    let Markers { dockerenv, containerenv, container_var, kubernetes_var } = markers;
    dockerenv
        || containerenv
        || container_var
        || kubernetes_var
        || id_from_mountinfo(mountinfo).is_some()
        || cgroup_lines(cgroup).any(|line| {
            let path = line.path.to_ascii_lowercase();
            RUNTIME_CGROUP_WORDS.iter().any(|word| path.contains(word))
        })
}

/// The container's id: from the host directory its runtime bind-mounts `/etc/hostname` and friends from, else
/// from its cgroup path (without a cgroup namespace the path names it: `/docker/<id>`,
/// `/system.slice/docker-<id>.scope`, `.../cri-containerd-<id>.scope`). `None` when neither names one (a
/// Kubernetes pod with its own cgroup namespace shows only `/`).
pub fn container_id(mountinfo: &str, cgroup: &str) -> Option<String> {
    id_from_mountinfo(mountinfo).or_else(|| id_from_cgroup(cgroup))
}

fn id_from_mountinfo(mountinfo: &str) -> Option<String> {
    mountinfo.lines().filter_map(MountInfo::parse).find_map(|m| {
        if !RUNTIME_BIND_MOUNTS.contains(&m.mount_point.as_str()) {
            return None;
        }
        let segments: Vec<&str> = m.root.split('/').collect();
        segments
            .windows(2)
            .find(|pair| CONTAINER_DIRS.contains(&pair[0]) && is_container_id(pair[1]))
            .map(|pair| pair[1].to_owned())
    })
}

fn id_from_cgroup(cgroup: &str) -> Option<String> {
    // The unified line first: on a hybrid host it is the one the container runtime set up most precisely.
    let mut lines: Vec<CgroupLine> = cgroup_lines(cgroup).collect();
    lines.sort_by_key(|l| l.hierarchy != 0);
    lines.iter().find_map(|line| line.path.rsplit('/').find_map(hex_run))
}

/// The first run of exactly [`CONTAINER_ID_LEN`] lower-case hex digits in `segment` that is delimited by
/// non-alphanumeric characters (`docker-<id>.scope`, `<id>`).
fn hex_run(segment: &str) -> Option<String> {
    segment.split(|c: char| !c.is_ascii_alphanumeric()).find(|word| is_container_id(word)).map(str::to_owned)
}

fn is_container_id(word: &str) -> bool {
    word.len() == CONTAINER_ID_LEN && word.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// One line of `/proc/self/cgroup`: `hierarchy-id:controllers:path` (v2: `0::/path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLine {
    /// The hierarchy id; 0 is the unified (v2) hierarchy.
    pub hierarchy: u32,
    /// The v1 controllers of the hierarchy (`cpu,cpuacct`), empty for v2.
    pub controllers: Vec<String>,
    /// The process' cgroup, relative to the hierarchy's root as the process' cgroup namespace sees it.
    pub path: String,
}

/// The lines of `/proc/self/cgroup` that parse.
pub fn cgroup_lines(text: &str) -> impl Iterator<Item = CgroupLine> + '_ {
    text.lines().filter_map(|line| {
        let mut parts = line.splitn(3, ':');
        let hierarchy = parts.next()?.trim().parse().ok()?;
        let controllers = parts.next()?;
        let path = parts.next()?.trim();
        path.starts_with('/').then(|| CgroupLine {
            hierarchy,
            controllers: controllers.split(',').filter(|c| !c.is_empty()).map(str::to_owned).collect(),
            path: path.to_owned(),
        })
    })
}

/// What of one `/proc/self/mountinfo` line the cgroup lookup needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// The directory of the filesystem mounted here (field 4): `/` for a whole filesystem, a sub-path for a bind
    /// mount or a cgroup namespace's part of the hierarchy.
    pub root: String,
    /// Where it is mounted (field 5).
    pub mount_point: String,
    /// The filesystem type (after the ` - ` separator).
    pub fs_type: String,
    /// The super block options (last field): a v1 cgroup mount lists its controllers there.
    pub super_options: Vec<String>,
}

impl MountInfo {
    /// Parses one line; `None` when it has too few fields. Octal escapes (`\040` for a space) are decoded.
    pub fn parse(line: &str) -> Option<Self> {
        let (before, after) = line.split_once(" - ")?;
        let fields: Vec<&str> = before.split_whitespace().collect();
        let (root, mount_point) = (fields.get(3)?, fields.get(4)?);
        let mut after = after.split_whitespace();
        let fs_type = after.next()?;
        let _source = after.next();
        let super_options =
            after.next().unwrap_or("").split(',').filter(|o| !o.is_empty()).map(str::to_owned).collect();
        Some(Self {
            root: unescape(root),
            mount_point: unescape(mount_point),
            fs_type: fs_type.to_owned(),
            super_options,
        })
    }
}

/// Decodes mountinfo's `\ooo` octal escapes; anything that is not a valid escape is kept as it is.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape =
            bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match escape.map(|d| d.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0'))) {
            Some(code) if code <= 0xff => {
                out.push(code as u8);
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Which cgroup version a directory belongs to, so the right files are read in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// The unified hierarchy: `memory.max`, `memory.current`, `cpu.max`.
    V2,
    /// A v1 controller hierarchy: `memory.limit_in_bytes`, `memory.usage_in_bytes`, `cpu.cfs_quota_us`,
    /// `cpu.cfs_period_us`.
    V1,
}

/// The cgroup directories of this process that hold its memory and CPU controllers, each with its version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupDirs {
    /// Where the memory controller's files are, and the hierarchy's mount point (the walk up stops there).
    pub memory: Option<CgroupDir>,
    /// Where the CPU controller's files are.
    pub cpu: Option<CgroupDir>,
}

/// One cgroup directory and the mount point of its hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupDir {
    /// The version of the hierarchy.
    pub version: CgroupVersion,
    /// The process' own cgroup directory.
    pub dir: PathBuf,
    /// The mount point of the hierarchy: the highest directory whose limits apply.
    pub mount_point: PathBuf,
}

impl CgroupDir {
    /// The process' cgroup directory and each ancestor up to the mount point, innermost first.
    pub fn levels(&self) -> Vec<PathBuf> {
        let mut levels = vec![self.dir.clone()];
        let mut dir = self.dir.as_path();
        while dir != self.mount_point {
            let Some(parent) = dir.parent() else { break };
            levels.push(parent.to_path_buf());
            dir = parent;
        }
        levels
    }
}

/// Where this process' memory and CPU cgroup files are, from `/proc/self/cgroup` and `/proc/self/mountinfo`. A v1
/// controller wins over v2 for the controller it names (a hybrid host mounts both, and the controllers are
/// attached to v1 there).
pub fn cgroup_dirs(cgroup: &str, mountinfo: &str) -> CgroupDirs {
    let mounts: Vec<MountInfo> = mountinfo.lines().filter_map(MountInfo::parse).collect();
    let lines: Vec<CgroupLine> = cgroup_lines(cgroup).collect();
    let v1 = |controller: &str| {
        let line = lines.iter().find(|l| l.hierarchy != 0 && l.controllers.iter().any(|c| c == controller))?;
        let mount = mounts.iter().find(|m| m.fs_type == "cgroup" && m.super_options.iter().any(|o| o == controller))?;
        dir_in(mount, &line.path, CgroupVersion::V1)
    };
    let v2 = || {
        let line = lines.iter().find(|l| l.hierarchy == 0)?;
        let mount = mounts.iter().find(|m| m.fs_type == "cgroup2")?;
        dir_in(mount, &line.path, CgroupVersion::V2)
    };
    CgroupDirs { memory: v1("memory").or_else(v2), cpu: v1("cpu").or_else(v2) }
}

/// The directory of cgroup `path` under `mount`: the mount's root is where in the hierarchy the mount point
/// sits. `None` for a path outside what is mounted, or one that climbs (`/../..`, a cgroup outside the process'
/// cgroup namespace).
fn dir_in(mount: &MountInfo, path: &str, version: CgroupVersion) -> Option<CgroupDir> {
    let path = Path::new(path);
    let root = Path::new(&mount.root);
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return None;
    }
    // Inside its own cgroup namespace a container sees `/` for its cgroup and has that very cgroup mounted.
    let relative = path.strip_prefix(root).ok().or_else(|| (root == Path::new("/")).then_some(path))?;
    let mount_point = PathBuf::from(&mount.mount_point);
    let relative = relative.strip_prefix("/").unwrap_or(relative);
    let dir = if relative.as_os_str().is_empty() { mount_point.clone() } else { mount_point.join(relative) };
    Some(CgroupDir { version, dir, mount_point })
}

/// A memory limit file: `memory.max` (v2, `max` when unlimited) or `memory.limit_in_bytes` (v1, a huge number when
/// unlimited). `None` when unlimited or unreadable; v1's "unlimited" comes back as that huge number, which the
/// comparison with the host's memory then ignores.
pub fn parse_memory_limit(text: &str) -> Option<u64> {
    parse_count(text)
}

/// A byte or microsecond count (`memory.current`, `cpu.cfs_period_us`); `None` for anything else.
pub fn parse_count(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// A CPU quota: `quota_us` of CPU time per `period_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuQuota {
    /// CPU time allowed per period, in microseconds.
    pub quota_us: u64,
    /// The period, in microseconds.
    pub period_us: u64,
}

impl CpuQuota {
    /// Whole CPUs the quota amounts to, rounded up (1.5 CPUs of time is work for 2); `None` for a zero period.
    pub fn cpus(self) -> Option<u32> {
        if self.period_us == 0 {
            return None;
        }
        let cpus = self.quota_us.div_ceil(self.period_us).max(1);
        Some(u32::try_from(cpus).unwrap_or(u32::MAX))
    }
}

/// `cpu.max` (v2): `max 100000` is no quota, `150000 100000` is 1.5 CPUs; a quota alone uses the default period.
pub fn parse_cpu_max(text: &str) -> Option<CpuQuota> {
    let mut fields = text.split_whitespace();
    let quota_us = fields.next()?.parse().ok()?;
    let period_us = match fields.next() {
        Some(period) => period.parse().ok()?,
        None => DEFAULT_CPU_PERIOD_US,
    };
    Some(CpuQuota { quota_us, period_us })
}

/// `cpu.cfs_quota_us` and `cpu.cfs_period_us` (v1): a quota of `-1` is none.
pub fn parse_cfs(quota: &str, period: &str) -> Option<CpuQuota> {
    let quota_us: i64 = quota.trim().parse().ok()?;
    let quota_us = u64::try_from(quota_us).ok()?;
    Some(CpuQuota { quota_us, period_us: parse_count(period)? })
}

/// What one cgroup directory says about memory and CPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Level {
    /// Its memory limit, if any.
    pub memory_limit: Option<u64>,
    /// The memory its processes use now (counts toward its limit).
    pub memory_used: Option<u64>,
    /// Its CPU quota, if any.
    pub cpu_quota: Option<CpuQuota>,
}

/// What the host offers and what the cgroup allows of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    /// Logical CPUs.
    pub cpus: u32,
    /// Total memory in bytes.
    pub memory_total: u64,
    /// Available memory in bytes.
    pub memory_available: u64,
}

/// The host's resources as far as `levels` (the process' cgroup and its ancestors, any order) let the process use
/// them: the lowest memory limit below the host's memory is the total, and at each limited level
/// `limit - used` bounds what is available; the lowest CPU quota, rounded up to whole CPUs, bounds the count.
pub fn effective_limits(host: Resources, levels: &[Level]) -> Resources {
    let mut effective = host;
    for level in levels {
        if let Some(limit) = level.memory_limit.filter(|limit| *limit < host.memory_total) {
            effective.memory_total = effective.memory_total.min(limit);
            let free = limit.saturating_sub(level.memory_used.unwrap_or(0));
            effective.memory_available = effective.memory_available.min(free);
        }
        if let Some(cpus) = level.cpu_quota.and_then(CpuQuota::cpus) {
            effective.cpus = effective.cpus.min(cpus);
        }
    }
    effective.memory_available = effective.memory_available.min(effective.memory_total);
    effective
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899";
    const GIB: u64 = 1 << 30;

    /// A Docker container on a cgroup v2 host with its own cgroup namespace (Docker's default there).
    fn docker_v2_mountinfo() -> String {
        format!(
            "1094 1002 0:63 / / rw,relatime master:437 - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/X\n\
             1101 1094 0:67 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate\n\
             1108 1094 254:1 /var/lib/docker/containers/{ID}/resolv.conf /etc/resolv.conf rw,relatime - ext4 \
             /dev/vda1 rw\n\
             1109 1094 254:1 /var/lib/docker/containers/{ID}/hostname /etc/hostname rw,relatime - ext4 /dev/vda1 rw\n\
             1110 1094 254:1 /var/lib/docker/containers/{ID}/hosts /etc/hosts rw,relatime - ext4 /dev/vda1 rw\n"
        )
    }

    /// A Docker container on a cgroup v1 host (no cgroup namespace): the paths name the container.
    fn docker_v1_cgroup() -> String {
        format!("12:memory:/docker/{ID}\n4:cpu,cpuacct:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/system.slice\n")
    }

    fn docker_v1_mountinfo() -> String {
        format!(
            "30 25 0:26 /docker/{ID} /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory\n\
             31 25 0:27 /docker/{ID} /sys/fs/cgroup/cpu,cpuacct ro,nosuid - cgroup cgroup rw,cpu,cpuacct\n"
        )
    }

    #[test]
    fn ids_come_from_the_runtimes_bind_mounts() {
        assert_eq!(container_id(&docker_v2_mountinfo(), "0::/\n").as_deref(), Some(ID));
        // Docker with its data root on a file system of its own: the root is relative to that file system.
        let own_fs = format!("50 40 8:17 /containers/{ID}/hostname /etc/hostname rw - xfs /dev/sdb1 rw\n");
        assert_eq!(container_id(&own_fs, "").as_deref(), Some(ID));
        let podman = format!(
            "60 40 0:50 /containers/storage/overlay-containers/{ID}/userdata/hosts /etc/hosts rw - tmpfs tmpfs rw\n"
        );
        assert_eq!(container_id(&podman, "0::/").as_deref(), Some(ID));
        // A host running Docker mounts each container's shm *at* a path naming it: not this process' container.
        let host = format!("70 25 0:55 / /var/lib/docker/containers/{ID}/mounts/shm rw - tmpfs shm rw\n");
        assert_eq!(container_id(&host, "0::/system.slice/muster-agent.service\n"), None);
        // A Kubernetes sandbox's hostname names the pod's sandbox, not this container.
        let k8s = format!(
            "80 70 254:1 /var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/{ID}/hostname /etc/hostname rw - \
             ext4 /dev/vda1 rw\n"
        );
        assert_eq!(container_id(&k8s, "0::/\n"), None);
    }

    #[test]
    fn ids_come_from_cgroup_paths_without_a_namespace() {
        let cases = [
            format!("0::/system.slice/docker-{ID}.scope\n"),
            format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b.slice/cri-containerd-{ID}.scope"),
            format!("0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container\n"),
            docker_v1_cgroup(),
            format!("11:memory:/kubepods/burstable/pod0f8e-11/{ID}\n"),
        ];
        for cgroup in &cases {
            assert_eq!(container_id("", cgroup).as_deref(), Some(ID), "{cgroup}");
        }
        for cgroup in ["0::/\n", "0::/system.slice/muster-agent.service\n", "", "garbage", "0::/docker/ABCDEF\n"] {
            assert_eq!(container_id("", cgroup), None, "{cgroup:?}");
        }
        // 65 hex digits are not an id, nor are upper-case ones.
        assert_eq!(container_id("", &format!("0::/docker/{ID}0\n")), None);
        assert_eq!(container_id("", &format!("0::/docker/{}\n", ID.to_uppercase())), None);
    }

    #[test]
    fn containers_are_recognised_by_any_marker() {
        let host_cgroup = "0::/system.slice/muster-agent.service\n";
        assert!(!in_container(Markers::default(), host_cgroup, "22 1 0:21 / /proc rw - proc proc rw\n"));
        assert!(in_container(Markers { dockerenv: true, ..Markers::default() }, host_cgroup, ""));
        assert!(in_container(Markers { containerenv: true, ..Markers::default() }, "", ""));
        assert!(in_container(Markers { container_var: true, ..Markers::default() }, "", ""));
        assert!(in_container(Markers { kubernetes_var: true, ..Markers::default() }, "", ""));
        assert!(in_container(Markers::default(), "0::/\n", &docker_v2_mountinfo()));
        assert!(in_container(Markers::default(), &docker_v1_cgroup(), ""));
        assert!(in_container(Markers::default(), "0::/kubepods.slice/kubepods-pod1.slice\n", ""));
        assert!(in_container(Markers::default(), "0::/lxc.payload.web/\n", ""));
    }

    #[test]
    fn cgroup_dirs_follow_the_namespace_and_the_mount_root() {
        // v2 in its own cgroup namespace: `/` is the container's cgroup, mounted at /sys/fs/cgroup.
        let dirs = cgroup_dirs("0::/\n", &docker_v2_mountinfo());
        let v2 = CgroupDir {
            version: CgroupVersion::V2,
            dir: "/sys/fs/cgroup".into(),
            mount_point: "/sys/fs/cgroup".into(),
        };
        assert_eq!(dirs, CgroupDirs { memory: Some(v2.clone()), cpu: Some(v2.clone()) });
        assert_eq!(v2.levels(), [PathBuf::from("/sys/fs/cgroup")]);

        // v2 without a namespace: the whole hierarchy is mounted and the path leads down to the container.
        let host_ns = "25 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let dirs = cgroup_dirs(&format!("0::/system.slice/docker-{ID}.scope\n"), host_ns);
        let dir = dirs.memory.unwrap();
        assert_eq!(dir.dir, PathBuf::from(format!("/sys/fs/cgroup/system.slice/docker-{ID}.scope")));
        let levels = dir.levels();
        assert_eq!(levels.len(), 3, "{levels:?}");
        assert_eq!(levels[1], PathBuf::from("/sys/fs/cgroup/system.slice"));
        assert_eq!(levels[2], PathBuf::from("/sys/fs/cgroup"));

        // v1, the container's part of each hierarchy bind-mounted: its root is the container's cgroup.
        let dirs = cgroup_dirs(&docker_v1_cgroup(), &docker_v1_mountinfo());
        let memory = dirs.memory.unwrap();
        assert_eq!((memory.version, memory.dir.as_path()), (CgroupVersion::V1, Path::new("/sys/fs/cgroup/memory")));
        assert_eq!(dirs.cpu.unwrap().dir, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));

        // A cgroup outside the namespace's root, and a process with no cgroup mounted, have none.
        assert_eq!(cgroup_dirs("0::/../../system.slice\n", host_ns), CgroupDirs::default());
        assert_eq!(cgroup_dirs("0::/\n", "22 1 0:21 / /proc rw - proc proc rw\n"), CgroupDirs::default());
        assert_eq!(cgroup_dirs("", ""), CgroupDirs::default());
    }

    #[test]
    fn mountinfo_lines_parse_with_escapes_and_optional_fields() {
        let line =
            r"36 35 98:0 /mnt\040one /mnt/a\134b rw,noatime master:1 shared:2 - ext3 /dev/root rw,errors=continue";
        let m = MountInfo::parse(line).unwrap();
        assert_eq!((m.root.as_str(), m.mount_point.as_str(), m.fs_type.as_str()), ("/mnt one", "/mnt/a\\b", "ext3"));
        assert_eq!(m.super_options, ["rw", "errors=continue"]);
        for bad in ["", "36 35 98:0 /", "no separator here at all", " - ", "1 2 3 4 5 -", "1 2 3 4 5 - "] {
            assert_eq!(MountInfo::parse(bad), None, "{bad:?}");
        }
        // An escape out of range is kept as written; a missing source and options leave the options empty.
        let odd = MountInfo::parse(r"1 2 3 \999 /x - tmpfs").unwrap();
        assert_eq!(
            (odd.root.as_str(), odd.mount_point.as_str(), odd.super_options),
            (r"\999", "/x", Vec::<String>::new())
        );
        assert_eq!(unescape(r"a\04"), r"a\04");
        assert_eq!(unescape(r"\777"), r"\777");
    }

    #[test]
    fn limits_parse_from_v1_and_v2_files() {
        assert_eq!(parse_memory_limit("max\n"), None);
        assert_eq!(parse_memory_limit("536870912\n"), Some(512 << 20));
        assert_eq!(parse_memory_limit("9223372036854771712\n"), Some(9_223_372_036_854_771_712));
        for bad in ["", "-1", "12k", "1e9", " \n", "18446744073709551616"] {
            assert_eq!(parse_memory_limit(bad), None, "{bad:?}");
        }
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(CpuQuota { quota_us: 150_000, period_us: 100_000 }));
        assert_eq!(parse_cpu_max("50000"), Some(CpuQuota { quota_us: 50_000, period_us: DEFAULT_CPU_PERIOD_US }));
        for bad in ["", "max", "-1 100000", "100000 x", "\n"] {
            assert_eq!(parse_cpu_max(bad), None, "{bad:?}");
        }
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(parse_cfs("200000\n", "100000\n"), Some(CpuQuota { quota_us: 200_000, period_us: 100_000 }));
        assert_eq!(parse_cfs("200000", "garbage"), None);
        assert_eq!(parse_cfs("", "100000"), None);
    }

    #[test]
    fn cpu_quotas_round_up_to_whole_cpus() {
        let q = |quota_us, period_us| CpuQuota { quota_us, period_us }.cpus();
        assert_eq!(q(150_000, 100_000), Some(2));
        assert_eq!(q(200_000, 100_000), Some(2));
        assert_eq!(q(1_000, 100_000), Some(1));
        assert_eq!(q(0, 100_000), Some(1));
        assert_eq!(q(100_000, 0), None);
        assert_eq!(q(u64::MAX, 1), Some(u32::MAX));
    }

    #[test]
    fn effective_limits_take_the_lowest_level_below_the_host() {
        let host = Resources { cpus: 8, memory_total: 32 * GIB, memory_available: 20 * GIB };
        assert_eq!(effective_limits(host, &[]), host);
        assert_eq!(effective_limits(host, &[Level::default()]), host);

        // A 2 GiB container using 512 MiB, with 1.5 CPUs.
        let container = Level {
            memory_limit: Some(2 * GIB),
            memory_used: Some(GIB / 2),
            cpu_quota: Some(CpuQuota { quota_us: 150_000, period_us: 100_000 }),
        };
        let got = effective_limits(host, &[container]);
        assert_eq!(got, Resources { cpus: 2, memory_total: 2 * GIB, memory_available: 3 * GIB / 2 });

        // Its pod allows 4 GiB but the pod is nearly full: the pod's headroom is what is left.
        let pod = Level { memory_limit: Some(4 * GIB), memory_used: Some(4 * GIB - GIB / 4), cpu_quota: None };
        let got = effective_limits(host, &[container, pod]);
        assert_eq!((got.memory_total, got.memory_available), (2 * GIB, GIB / 4));

        // v1's "unlimited" (a huge number) and a limit above the host's memory change nothing.
        let unlimited =
            Level { memory_limit: Some(9_223_372_036_854_771_712), memory_used: Some(GIB), cpu_quota: None };
        assert_eq!(effective_limits(host, &[unlimited]), host);
        // A quota above the host's CPUs changes nothing; usage above the limit leaves nothing available.
        let loose = Level {
            memory_limit: Some(GIB),
            memory_used: Some(2 * GIB),
            cpu_quota: Some(CpuQuota { quota_us: 1_600_000, period_us: 100_000 }),
        };
        assert_eq!(effective_limits(host, &[loose]), Resources { cpus: 8, memory_total: GIB, memory_available: 0 });
        // A limit with no usage readable bounds the available memory by the limit.
        let unread = Level { memory_limit: Some(GIB), memory_used: None, cpu_quota: None };
        assert_eq!(effective_limits(host, &[unread]).memory_available, GIB);
    }
}
