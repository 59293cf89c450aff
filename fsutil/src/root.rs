//! Paths under a host root (`--host-root`, a DaemonSet's mount of the host): a symlink on
//! the way must resolve inside the root, as the host itself would see it, so that no write
//! lands outside. The kernel's `openat2(RESOLVE_IN_ROOT)` does this for one open; a writer
//! here creates temp files, renames and directories, so the whole path is resolved once.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// How many links one resolution follows before it gives up, as Linux does (`ELOOP`).
const MAX_LINKS: usize = 40;

/// Where `host` (a path as the host sees it) lies under `root`, with every symlink among its
/// parents followed the way the host would: an absolute target starts again at `root`, and
/// `..` never climbs above it. The last component is not followed (writers refuse a link
/// there themselves). With `root` `/` the path is returned as given. Components that do not
/// exist yet are kept as they are.
pub fn resolve_in_root(root: &Path, host: &Path) -> io::Result<PathBuf> {
    if root == Path::new("/") && host.is_absolute() {
        return Ok(host.to_path_buf());
    }
    let mut todo: VecDeque<OsString> = names(host).collect();
    let mut done: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            done.pop();
            continue;
        }
        if todo.is_empty() {
            done.push(name);
            break;
        }
        let here: PathBuf = std::iter::once(root.as_os_str())
            .chain(done.iter().map(OsString::as_os_str))
            .chain([name.as_os_str()])
            .collect();
        match std::fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "{}: more than {MAX_LINKS} symlinks on the way to {}",
                            here.display(),
                            host.display()
                        ),
                    ));
                }
                let target = std::fs::read_link(&here)?;
                if target.is_absolute() {
                    done.clear();
                }
                for n in names(&target).collect::<Vec<_>>().into_iter().rev() {
                    todo.push_front(n);
                }
            }
            Ok(_) => done.push(name),
            Err(e) if e.kind() == io::ErrorKind::NotFound => done.push(name),
            Err(e) => return Err(e),
        }
    }
    Ok(std::iter::once(root.as_os_str())
        .chain(done.iter().map(OsString::as_os_str))
        .collect())
}

/// The names of a path, `..` kept, `/` and `.` dropped.
fn names(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|c| match c {
        Component::Normal(n) => Some(n.to_owned()),
        Component::ParentDir => Some(OsString::from("..")),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_on_the_way_resolve_inside_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("run/cdi")).expect("mkdir");
        fs::create_dir_all(root.join("opt/real")).expect("mkdir");
        fs::create_dir_all(root.join("var")).expect("mkdir");
        symlink("/run", root.join("var/run")).expect("abs link");
        symlink("../opt/real", root.join("var/rel")).expect("rel link");
        symlink("../../../../..", root.join("var/up")).expect("climbing link");
        symlink("/var/run", root.join("var/chain")).expect("chain");
        symlink("loop", root.join("var/loop")).expect("loop");
        symlink("/nowhere", root.join("var/dangling")).expect("dangling");
        symlink("/x", root.join("opt/last")).expect("last");
        let table = [
            ("/etc/containerd/config.toml", "etc/containerd/config.toml"),
            ("/var/run/cdi/a.yaml", "run/cdi/a.yaml"),
            ("/var/rel/f", "opt/real/f"),
            ("/var/up/etc/f", "etc/f"),
            ("/var/chain/cdi/a.yaml", "run/cdi/a.yaml"),
            ("/var/dangling/sub/f", "nowhere/sub/f"),
            ("/../../etc/f", "etc/f"),
            ("/opt/last", "opt/last"),
            ("relative/./f", "relative/f"),
        ];
        for (host, want) in table {
            assert_eq!(
                resolve_in_root(&root, Path::new(host)).expect(host),
                root.join(want),
                "{host}"
            );
        }
        let err = resolve_in_root(&root, Path::new("/var/loop/f")).expect_err("loop");
        assert!(err.to_string().contains("more than 40 symlinks"), "{err}");
        assert_eq!(
            resolve_in_root(Path::new("/"), Path::new("/var/run/x")).expect("host"),
            PathBuf::from("/var/run/x")
        );
    }
}
