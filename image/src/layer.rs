//! One image layer as a tar with nothing of the build machine in it: entries sorted by
//! path, parents before children, owner 0:0, mtime 0, fixed modes.

use std::collections::BTreeMap;
use std::path::Path;

use crate::{io_at, Error};

/// What a path in the layer is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A directory (0755).
    Dir,
    /// A file with these bytes and mode.
    File(Vec<u8>, u32),
    /// A symbolic link to this target.
    Symlink(String),
}

/// The entries of a layer by absolute path; parent directories are added as needed.
#[derive(Clone, Debug, Default)]
pub struct Layer {
    entries: BTreeMap<String, Entry>,
}

impl Layer {
    /// Adds `entry` at the absolute `path`, and its parent directories; a path added twice
    /// with different entries is an error.
    pub fn add(&mut self, path: &str, entry: Entry) -> Result<(), Error> {
        let rel = path
            .strip_prefix('/')
            .filter(|r| {
                !r.is_empty() && r.split('/').all(|c| !c.is_empty() && c != ".." && c != ".")
            })
            .ok_or_else(|| Error::Invalid(format!("{path:?} is not a clean absolute path")))?;
        let mut parent = String::new();
        for part in rel
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, p)| p)
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            match self.entries.get(&parent) {
                None => {
                    self.entries.insert(parent.clone(), Entry::Dir);
                }
                Some(Entry::Dir) => {}
                Some(_) => return Err(Error::Invalid(format!("/{parent} is not a directory"))),
            }
        }
        match self.entries.get(rel) {
            Some(old) if *old != entry => Err(Error::Invalid(format!("{path} is added twice"))),
            _ => {
                self.entries.insert(rel.to_owned(), entry);
                Ok(())
            }
        }
    }

    /// Adds the file at `source` (links followed) as `path` with `mode`.
    pub fn add_file(&mut self, path: &str, source: &Path, mode: u32) -> Result<(), Error> {
        let bytes = std::fs::read(source).map_err(io_at(source))?;
        self.add(path, Entry::File(bytes, mode))
    }

    /// Adds the tree at the directory `source` under `path`, walked without following
    /// links: a link stays a link, a file is 0755 if anyone may run it and 0644 if not, so
    /// that the layer does not depend on the build machine's umask. Anything else (a
    /// socket, a device) is refused.
    pub fn add_tree(&mut self, path: &str, source: &Path) -> Result<(), Error> {
        use std::os::unix::fs::PermissionsExt;
        self.add(path, Entry::Dir)?;
        let mut names = std::fs::read_dir(source)
            .map_err(io_at(source))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io_at(source))?;
        names.sort();
        for name in names {
            let from = source.join(&name);
            let Some(name) = name.to_str() else {
                return Err(Error::Invalid(format!(
                    "{}: the name is not UTF-8; rename it",
                    from.display()
                )));
            };
            let to = format!("{path}/{name}");
            let meta = std::fs::symlink_metadata(&from).map_err(io_at(&from))?;
            if meta.is_dir() {
                self.add_tree(&to, &from)?;
            } else if meta.is_symlink() {
                let target = std::fs::read_link(&from).map_err(io_at(&from))?;
                let Some(target) = target.to_str() else {
                    return Err(Error::Invalid(format!(
                        "{}: the link's target is not UTF-8",
                        from.display()
                    )));
                };
                self.add(&to, Entry::Symlink(target.to_owned()))?;
            } else if meta.is_file() {
                let mode = if meta.permissions().mode() & 0o111 != 0 {
                    0o755
                } else {
                    0o644
                };
                self.add_file(&to, &from, mode)?;
            } else {
                return Err(Error::Invalid(format!(
                    "{}: neither a file, a directory nor a link; remove it from the set",
                    from.display()
                )));
            }
        }
        Ok(())
    }

    /// Whether `path` is in the layer.
    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path.trim_start_matches('/'))
    }

    /// Every absolute path, sorted.
    pub fn paths(&self) -> Vec<String> {
        self.entries.keys().map(|p| format!("/{p}")).collect()
    }

    /// The layer as an uncompressed tar.
    pub fn to_tar(&self) -> Result<Vec<u8>, Error> {
        let mut tar = tar::Builder::new(Vec::new());
        let io = |e| Error::Io {
            path: "layer.tar".into(),
            source: e,
        };
        for (path, entry) in &self.entries {
            let mut h = tar::Header::new_ustar();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match entry {
                Entry::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    tar.append_data(&mut h, format!("{path}/"), &[][..])
                        .map_err(io)?;
                }
                Entry::File(bytes, mode) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(bytes.len() as u64);
                    tar.append_data(&mut h, path, &bytes[..]).map_err(io)?;
                }
                Entry::Symlink(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    tar.append_link(&mut h, path, target).map_err(io)?;
                }
            }
        }
        tar.into_inner().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_come_first_and_every_entry_is_anonymous() {
        let mut l = Layer::default();
        l.add("/usr/local/bin/a", Entry::File(b"x".to_vec(), 0o755))
            .expect("add");
        l.add("/usr/local/bin/b", Entry::Symlink("a".into()))
            .expect("add");
        let tar = l.to_tar().expect("tar");
        let mut archive = tar::Archive::new(&tar[..]);
        let mut seen = Vec::new();
        for e in archive.entries().expect("entries") {
            let e = e.expect("entry");
            let h = e.header();
            assert_eq!(
                (h.uid().ok(), h.gid().ok(), h.mtime().ok()),
                (Some(0), Some(0), Some(0))
            );
            seen.push(e.path().expect("path").display().to_string());
        }
        assert_eq!(
            seen,
            [
                "usr/",
                "usr/local/",
                "usr/local/bin/",
                "usr/local/bin/a",
                "usr/local/bin/b"
            ]
        );
    }

    #[test]
    fn a_tree_keeps_its_links_and_loses_its_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("sub/run"), b"x").expect("write");
        std::fs::set_permissions(
            dir.path().join("sub/run"),
            std::fs::Permissions::from_mode(0o700),
        )
        .expect("chmod");
        std::fs::write(dir.path().join("data"), b"y").expect("write");
        std::fs::set_permissions(
            dir.path().join("data"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod");
        std::os::unix::fs::symlink("data", dir.path().join("alias")).expect("link");
        let mut l = Layer::default();
        l.add_tree("/set", dir.path()).expect("tree");
        assert_eq!(
            l.paths(),
            [
                "/set",
                "/set/alias",
                "/set/data",
                "/set/sub",
                "/set/sub/run"
            ]
        );
        assert_eq!(l.entries["set/alias"], Entry::Symlink("data".into()));
        assert_eq!(l.entries["set/data"], Entry::File(b"y".to_vec(), 0o644));
        assert_eq!(l.entries["set/sub/run"], Entry::File(b"x".to_vec(), 0o755));
    }

    #[test]
    fn a_tree_with_a_socket_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("s");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        let err = Layer::default()
            .add_tree("/set", dir.path())
            .expect_err("a socket");
        assert_eq!(
            err.to_string(),
            format!(
                "{}: neither a file, a directory nor a link; remove it from the set",
                sock.display()
            )
        );
    }

    #[test]
    fn bad_paths_and_clashes_are_refused() {
        let mut l = Layer::default();
        for bad in ["relative", "/", "/a/../b", "/a//b"] {
            assert!(
                matches!(l.add(bad, Entry::Dir), Err(Error::Invalid(_))),
                "{bad}"
            );
        }
        l.add("/a", Entry::File(b"1".to_vec(), 0o644)).expect("add");
        let err = l
            .add("/a", Entry::File(b"2".to_vec(), 0o644))
            .expect_err("twice");
        assert_eq!(err.to_string(), "/a is added twice");
        let err = l.add("/a/b", Entry::Dir).expect_err("under a file");
        assert_eq!(err.to_string(), "/a is not a directory");
    }
}
