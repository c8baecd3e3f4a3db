//! The container user: CRI security context or image `User`, resolved against the image's
//! `/etc/passwd` and `/etc/group`, read inside the rootfs without following links out of it.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use skiff_cri::api;

use super::SpecError;

/// The largest `/etc/passwd` or `/etc/group` skiff reads from an image.
const MAX_DB_FILE: u64 = 8 << 20;

/// The user a container process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
    /// Supplementary group ids, the primary gid first (as containerd reports them).
    pub additional_gids: Vec<u32>,
    /// The user name, when the uid has an `/etc/passwd` entry or a name was given.
    pub username: Option<String>,
}

/// A user or group as asked: a number or a name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Id {
    Num(u32),
    Name(String),
}

/// One `/etc/passwd` line.
#[derive(Debug)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

/// One `/etc/group` line.
#[derive(Debug)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Converts a CRI id (int64) into a Linux id.
fn id_from_i64(value: i64) -> Result<u32, SpecError> {
    u32::try_from(value)
        .ok()
        .filter(|v| *v != u32::MAX)
        .ok_or_else(|| SpecError::InvalidUser {
            value: value.to_string(),
            reason: "ids must be between 0 and 4294967294",
        })
}

/// A numeric id if `s` is all digits, else a name.
fn parse_id(s: &str, whole: &str) -> Result<Id, SpecError> {
    if s.is_empty() {
        return Err(SpecError::InvalidUser {
            value: whole.to_string(),
            reason: "empty user or group name",
        });
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        let n: i64 = s.parse().map_err(|_| SpecError::InvalidUser {
            value: whole.to_string(),
            reason: "id out of range",
        })?;
        return id_from_i64(n).map(Id::Num);
    }
    Ok(Id::Name(s.to_string()))
}

/// The user (and optional group) the CRI config or the image asks for.
///
/// As containerd: `run_as_username` over `run_as_user`; `run_as_group` only with one of
/// them; the image's `User` (`uid`, `name`, `uid:gid`, `name:group`) only when the CRI
/// config names no user.
fn requested(
    sc: Option<&api::LinuxContainerSecurityContext>,
    image_user: &str,
) -> Result<Option<(Id, Option<Id>)>, SpecError> {
    let cri_user = match sc {
        Some(sc) if !sc.run_as_username.is_empty() => Some(Id::Name(sc.run_as_username.clone())),
        Some(sc) => sc
            .run_as_user
            .as_ref()
            .map(|u| id_from_i64(u.value).map(Id::Num))
            .transpose()?,
        None => None,
    };
    let cri_group = sc.and_then(|sc| sc.run_as_group.as_ref());
    match (cri_user, cri_group) {
        (None, Some(g)) => Err(SpecError::GroupWithoutUser { gid: g.value }),
        (Some(u), g) => Ok(Some((
            u,
            g.map(|g| id_from_i64(g.value).map(Id::Num)).transpose()?,
        ))),
        (None, None) => {
            let image_user = image_user.trim();
            if image_user.is_empty() {
                return Ok(None);
            }
            match image_user.split_once(':') {
                Some((u, g)) => Ok(Some((
                    parse_id(u, image_user)?,
                    Some(parse_id(g, image_user)?),
                ))),
                None => Ok(Some((parse_id(image_user, image_user)?, None))),
            }
        }
    }
}

/// Resolves the container user as containerd does.
///
/// The primary gid comes from the group asked for, else the user's `/etc/passwd` entry,
/// else 0. Supplementary groups (policy `Merge`): the primary gid, every `/etc/group`
/// entry listing the user name, and the CRI `supplemental_groups`. With policy
/// `Strict` the image's `/etc/group` memberships are left out.
pub fn resolve_user(
    rootfs: &Path,
    sc: Option<&api::LinuxContainerSecurityContext>,
    image_user: &str,
) -> Result<ResolvedUser, SpecError> {
    let (user, group) = requested(sc, image_user)?.unwrap_or((Id::Num(0), None));
    let passwd = read_rootfs_file(rootfs, "etc/passwd")?
        .map(|s| parse_passwd(&s))
        .unwrap_or_default();
    let (uid, mut gid, username) =
        match &user {
            Id::Name(name) => {
                let entry = passwd.iter().find(|e| &e.name == name).ok_or_else(|| {
                    SpecError::UserNotFound {
                        user: name.clone(),
                        file: PathBuf::from("/etc/passwd"),
                    }
                })?;
                (entry.uid, entry.gid, Some(name.clone()))
            }
            Id::Num(uid) => match passwd.iter().find(|e| e.uid == *uid) {
                Some(e) => (*uid, e.gid, Some(e.name.clone())),
                None => (*uid, 0, None),
            },
        };
    let strict = sc.is_some_and(|sc| {
        sc.supplemental_groups_policy == api::SupplementalGroupsPolicy::Strict as i32
    });
    let needs_groups = matches!(group, Some(Id::Name(_))) || (!strict && username.is_some());
    let groups = if needs_groups {
        read_rootfs_file(rootfs, "etc/group")?
            .map(|s| parse_group(&s))
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    match group {
        Some(Id::Num(g)) => gid = g,
        Some(Id::Name(name)) => {
            gid = groups
                .iter()
                .find(|e| e.name == name)
                .map(|e| e.gid)
                .ok_or_else(|| SpecError::GroupNotFound {
                    group: name.clone(),
                    file: PathBuf::from("/etc/group"),
                })?;
        }
        None => {}
    }
    let mut additional = vec![gid];
    if !strict && let Some(name) = &username {
        additional.extend(
            groups
                .iter()
                .filter(|g| g.members.iter().any(|m| m == name))
                .map(|g| g.gid),
        );
    }
    if let Some(sc) = sc {
        for g in &sc.supplemental_groups {
            additional.push(id_from_i64(*g)?);
        }
    }
    let mut seen = std::collections::HashSet::new();
    additional.retain(|g| seen.insert(*g));
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: additional,
        username,
    })
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?.trim();
            let _password = f.next()?;
            let uid = f.next()?.trim().parse().ok()?;
            let gid = f.next()?.trim().parse().ok()?;
            (!name.is_empty()).then(|| PasswdEntry {
                name: name.to_string(),
                uid,
                gid,
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?.trim();
            let _password = f.next()?;
            let gid = f.next()?.trim().parse().ok()?;
            let members = f
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect();
            (!name.is_empty()).then(|| GroupEntry {
                name: name.to_string(),
                gid,
                members,
            })
        })
        .collect()
}

/// Reads `rel` inside `rootfs` with every path component (symlinks included) resolved as
/// if `rootfs` were `/` (`openat2` with `RESOLVE_IN_ROOT`). `None` if it does not exist.
fn read_rootfs_file(rootfs: &Path, rel: &str) -> Result<Option<String>, SpecError> {
    let inner = PathBuf::from("/").join(rel);
    let root = rustix::fs::open(
        rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SpecError::Io {
        op: "open rootfs",
        path: rootfs.to_path_buf(),
        source: e.into(),
    })?;
    let fd = match rustix::fs::openat2(
        &root,
        rel,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => return Ok(None),
        Err(e) => {
            return Err(SpecError::Io {
                op: "open in rootfs",
                path: rootfs.join(rel),
                source: e.into(),
            });
        }
    };
    let bad = |reason| SpecError::BadImageFile {
        file: inner.clone(),
        rootfs: rootfs.to_path_buf(),
        reason,
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| SpecError::Io {
        op: "stat in rootfs",
        path: rootfs.join(rel),
        source: e.into(),
    })?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(bad("not a regular file"));
    }
    let mut bytes = Vec::new();
    File::from(fd)
        .take(MAX_DB_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(SpecError::io("read in rootfs", rootfs.join(rel)))?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_DB_FILE {
        return Err(bad("larger than 8 MiB"));
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::testutil::{rootfs_with, sc};

    #[test]
    fn default_is_root_with_passwd_gid_and_groups() {
        let root = rootfs_with(
            "root:x:0:0::/root:/bin/sh\n",
            "root:x:0:\nwheel:x:10:root\n",
        );
        let u = resolve_user(root.path(), None, "").unwrap();
        assert_eq!(
            u,
            ResolvedUser {
                uid: 0,
                gid: 0,
                additional_gids: vec![0, 10],
                username: Some("root".into()),
            }
        );
    }

    #[test]
    fn run_as_user_takes_gid_from_passwd_or_zero() {
        let root = rootfs_with(
            "app:x:1000:1001::/:/bin/sh\n",
            "app:x:1001:\nvideo:x:44:app,bob\n",
        );
        let mut s = sc();
        s.run_as_user = Some(api::Int64Value { value: 1000 });
        let u = resolve_user(root.path(), Some(&s), "nobody").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1001));
        assert_eq!(u.additional_gids, vec![1001, 44]);
        assert_eq!(u.username.as_deref(), Some("app"));
        s.run_as_user = Some(api::Int64Value { value: 4242 });
        let u = resolve_user(root.path(), Some(&s), "").unwrap();
        assert_eq!((u.uid, u.gid, u.username), (4242, 0, None));
        assert_eq!(u.additional_gids, vec![0]);
    }

    #[test]
    fn run_as_username_wins_over_run_as_user_and_needs_passwd() {
        let root = rootfs_with("app:x:1000:1001::/:/bin/sh\n", "");
        let mut s = sc();
        s.run_as_user = Some(api::Int64Value { value: 5 });
        s.run_as_username = "app".into();
        let u = resolve_user(root.path(), Some(&s), "").unwrap();
        assert_eq!(u.uid, 1000);
        s.run_as_username = "ghost".into();
        let err = resolve_user(root.path(), Some(&s), "").unwrap_err();
        assert!(matches!(&err, SpecError::UserNotFound { user, .. } if user == "ghost"));
        assert!(err.to_string().contains("/etc/passwd"), "{err}");
    }

    #[test]
    fn run_as_group_without_user_is_invalid() {
        let root = rootfs_with("", "");
        let mut s = sc();
        s.run_as_group = Some(api::Int64Value { value: 7 });
        let err = resolve_user(root.path(), Some(&s), "1000").unwrap_err();
        assert!(matches!(err, SpecError::GroupWithoutUser { gid: 7 }));
        assert!(err.to_string().contains("specified without user"));
    }

    #[test]
    fn run_as_group_overrides_the_primary_gid() {
        let root = rootfs_with("app:x:1000:1001::/:/bin/sh\n", "");
        let mut s = sc();
        s.run_as_user = Some(api::Int64Value { value: 1000 });
        s.run_as_group = Some(api::Int64Value { value: 3000 });
        let u = resolve_user(root.path(), Some(&s), "").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 3000));
        assert_eq!(u.additional_gids, vec![3000]);
    }

    #[test]
    fn image_user_forms() {
        let root = rootfs_with(
            "app:x:1000:1001::/:/bin/sh\n",
            "app:x:1001:\nstaff:x:50:\nextra:x:60:app\n",
        );
        let u = resolve_user(root.path(), None, "app").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1001));
        assert_eq!(u.additional_gids, vec![1001, 60]);
        let u = resolve_user(root.path(), None, "1000:50").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 50));
        let u = resolve_user(root.path(), None, "app:staff").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 50));
        let u = resolve_user(root.path(), None, "123").unwrap();
        assert_eq!((u.uid, u.gid), (123, 0));
        assert!(matches!(
            resolve_user(root.path(), None, "app:nogroup"),
            Err(SpecError::GroupNotFound { group, .. }) if group == "nogroup"
        ));
        assert!(matches!(
            resolve_user(root.path(), None, ":50"),
            Err(SpecError::InvalidUser { .. })
        ));
    }

    #[test]
    fn supplemental_groups_merge_and_strict() {
        let root = rootfs_with("app:x:1000:1001::/:/bin/sh\n", "extra:x:60:app\n");
        let mut s = sc();
        s.run_as_user = Some(api::Int64Value { value: 1000 });
        s.supplemental_groups = vec![70, 60, 1001];
        let u = resolve_user(root.path(), Some(&s), "").unwrap();
        assert_eq!(u.additional_gids, vec![1001, 60, 70]);
        s.supplemental_groups_policy = api::SupplementalGroupsPolicy::Strict as i32;
        let u = resolve_user(root.path(), Some(&s), "").unwrap();
        assert_eq!(u.additional_gids, vec![1001, 70, 60]);
    }

    #[test]
    fn out_of_range_ids_are_invalid() {
        let root = rootfs_with("", "");
        let mut s = sc();
        s.run_as_user = Some(api::Int64Value { value: -1 });
        assert!(matches!(
            resolve_user(root.path(), Some(&s), ""),
            Err(SpecError::InvalidUser { .. })
        ));
        assert!(matches!(
            resolve_user(root.path(), None, "99999999999"),
            Err(SpecError::InvalidUser { .. })
        ));
    }

    #[test]
    fn passwd_symlink_cannot_escape_the_rootfs() {
        // An image whose /etc/passwd points at an absolute host path: resolved inside the
        // rootfs, the link target does not exist there, so the user is not found.
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("passwd"), "evil:x:0:0::/:/bin/sh\n").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(host.path().join("passwd"), root.path().join("etc/passwd"))
            .unwrap();
        assert!(matches!(
            resolve_user(root.path(), None, "evil"),
            Err(SpecError::UserNotFound { .. })
        ));
        // A relative link that climbs out is clamped at the rootfs too.
        std::fs::remove_file(root.path().join("etc/passwd")).unwrap();
        std::fs::write(root.path().join("passwd.real"), "app:x:7:7::/:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("../../../../passwd.real", root.path().join("etc/passwd"))
            .unwrap();
        assert_eq!(resolve_user(root.path(), None, "app").unwrap().uid, 7);
    }

    #[test]
    fn passwd_that_is_not_a_file_is_refused() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc/passwd")).unwrap();
        assert!(matches!(
            resolve_user(root.path(), None, "app"),
            Err(SpecError::BadImageFile { .. })
        ));
    }

    #[test]
    fn parsers_skip_malformed_lines() {
        let p = parse_passwd("# comment\nbad\nx:x:notanumber:0\nok:x:5:6:gecos:/:/bin/sh\n");
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].uid, p[0].gid), (5, 6));
        let g = parse_group("g:x:9:a, b,,c\nh:x:10\n");
        assert_eq!(g[0].members, vec!["a", "b", "c"]);
        assert!(g[1].members.is_empty());
    }
}
