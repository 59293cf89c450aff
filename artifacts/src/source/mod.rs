//! Sources of a set: a directory, a tarball (`.tar`, `.tar.gz`) or an OCI image layout.
//!
//! Reading a source takes two passes. The scan reads names, kinds, sizes and link targets,
//! refuses any entry that would land outside the set, and writes nothing. The copy
//! then streams each file's bytes once to a sink (which copies and hashes them), checking
//! that nothing changed since the scan and that every OCI blob matches its descriptor.

mod dir;
mod oci;
mod tarball;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::digest::Sha256Digest;
use crate::error::{io_at, Error, Result};
use crate::layout::MANIFEST_FILE;
use crate::relpath::RelPath;

/// The kinds of source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A plain directory.
    Dir,
    /// A tar archive, gzip-compressed or not.
    Tar {
        /// Whether it is gzip-compressed.
        gzip: bool,
    },
    /// An OCI image layout (`index.json`, `blobs/sha256/...`).
    OciLayout,
}

/// Recognises a source by what it is, not only by its name.
pub fn detect(path: &Path) -> Result<SourceKind> {
    let meta = fs::metadata(path).map_err(io_at(path, "read source"))?;
    if meta.is_dir() {
        return Ok(if path.join("index.json").is_file() {
            SourceKind::OciLayout
        } else {
            SourceKind::Dir
        });
    }
    let mut head = [0u8; 512];
    let mut f = File::open(path).map_err(io_at(path, "open source"))?;
    let n = read_up_to(&mut f, &mut head).map_err(io_at(path, "read source"))?;
    let head = &head[..n];
    if head.starts_with(&[0x1f, 0x8b]) {
        return Ok(SourceKind::Tar { gzip: true });
    }
    let name = path.to_string_lossy();
    if head.get(257..262) == Some(b"ustar") || (name.ends_with(".tar") && n == 0) {
        return Ok(SourceKind::Tar { gzip: false });
    }
    Err(Error::UnknownSource {
        path: path.to_path_buf(),
    })
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Where a file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A file of a directory source.
    File(PathBuf),
    /// An OCI blob whose content is the file.
    Blob {
        /// The blob.
        path: PathBuf,
        /// Its descriptor's digest.
        digest: Sha256Digest,
    },
    /// An entry of `Scan::archives[i]`.
    Archive(usize),
}

/// A regular file of the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScannedFile {
    pub path: RelPath,
    pub size: u64,
    pub executable: bool,
    pub origin: Origin,
}

/// A tar stream of the source: the tarball itself or an OCI tar layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Archive {
    pub path: PathBuf,
    pub gzip: bool,
    /// The OCI descriptor's digest and size, for a layer.
    pub descriptor: Option<(Sha256Digest, u64)>,
}

/// What a source holds, checked.
#[derive(Debug, Clone)]
pub(crate) struct Scan {
    /// The source as given.
    pub label: PathBuf,
    /// Regular files, sorted by path.
    pub files: Vec<ScannedFile>,
    /// Links inside the set: (link, the file it leads to). Not installed.
    pub aliases: Vec<(RelPath, RelPath)>,
    /// Entries left out: a manifest of ours.
    pub skipped: Vec<RelPath>,
    pub archives: Vec<Archive>,
}

/// Scans a source; `oci_ref` picks a manifest of an OCI layout by its ref name.
pub(crate) fn scan(path: &Path, oci_ref: Option<&str>) -> Result<Scan> {
    match detect(path)? {
        SourceKind::Dir => dir::scan(path),
        SourceKind::Tar { gzip } => tarball::scan_file(path, gzip),
        SourceKind::OciLayout => oci::scan(path, oci_ref),
    }
}

/// A link as an entry names it.
#[derive(Debug, Clone)]
enum Link {
    Symbolic(RelPath),
    Hard(RelPath),
}

/// Collects a source's entries and refuses escapes, duplicates and odd kinds.
pub(crate) struct Listing {
    label: PathBuf,
    files: BTreeMap<RelPath, ScannedFile>,
    links: BTreeMap<RelPath, (Link, String)>,
    dirs: BTreeSet<RelPath>,
    skipped: Vec<RelPath>,
    archives: Vec<Archive>,
}

impl Listing {
    pub(crate) fn new(label: &Path) -> Self {
        Listing {
            label: label.to_path_buf(),
            files: BTreeMap::new(),
            links: BTreeMap::new(),
            dirs: BTreeSet::new(),
            skipped: Vec::new(),
            archives: Vec::new(),
        }
    }

    /// Parses an entry name; an escape is an error naming the entry.
    pub(crate) fn path(&self, raw: &str) -> Result<RelPath> {
        RelPath::parse(raw).map_err(|why| Error::Escape {
            source_path: self.label.clone(),
            entry: raw.to_owned(),
            reason: why.to_string(),
        })
    }

    pub(crate) fn unsupported(&self, raw: &str, what: &str) -> Error {
        Error::Unsupported {
            source_path: self.label.clone(),
            entry: raw.to_owned(),
            what: what.to_owned(),
        }
    }

    fn claim(&self, path: &RelPath) -> Result<()> {
        if self.files.contains_key(path)
            || self.links.contains_key(path)
            || self.dirs.contains(path)
        {
            return Err(Error::Duplicate {
                source_path: self.label.clone(),
                entry: path.to_string(),
            });
        }
        Ok(())
    }

    pub(crate) fn add_archive(&mut self, archive: Archive) -> usize {
        self.archives.push(archive);
        self.archives.len() - 1
    }

    pub(crate) fn add_file(
        &mut self,
        raw: &str,
        size: u64,
        executable: bool,
        origin: Origin,
    ) -> Result<()> {
        let path = self.path(raw)?;
        if path.as_str() == MANIFEST_FILE {
            self.skipped.push(path);
            return Ok(());
        }
        self.claim(&path)?;
        self.files.insert(
            path.clone(),
            ScannedFile {
                path,
                size,
                executable,
                origin,
            },
        );
        Ok(())
    }

    pub(crate) fn add_dir(&mut self, raw: &str) -> Result<()> {
        match RelPath::parse(raw) {
            Err(crate::relpath::Unsafe::Empty) => Ok(()),
            _ => {
                let path = self.path(raw)?;
                if self.files.contains_key(&path) || self.links.contains_key(&path) {
                    return Err(Error::Duplicate {
                        source_path: self.label.clone(),
                        entry: raw.to_owned(),
                    });
                }
                self.dirs.insert(path);
                Ok(())
            }
        }
    }

    pub(crate) fn add_symlink(&mut self, raw: &str, target: &str) -> Result<()> {
        let path = self.path(raw)?;
        let to = path.symlink_target(target).map_err(|why| Error::Escape {
            source_path: self.label.clone(),
            entry: format!("{raw} -> {target}"),
            reason: why.to_string(),
        })?;
        self.claim(&path)?;
        self.links
            .insert(path, (Link::Symbolic(to), target.to_owned()));
        Ok(())
    }

    pub(crate) fn add_hardlink(&mut self, raw: &str, target: &str) -> Result<()> {
        let path = self.path(raw)?;
        let to = RelPath::parse(target).map_err(|why| Error::Escape {
            source_path: self.label.clone(),
            entry: format!("{raw} => {target}"),
            reason: format!("is a hard link whose target {why}"),
        })?;
        self.claim(&path)?;
        self.links.insert(path, (Link::Hard(to), target.to_owned()));
        Ok(())
    }

    /// Resolves links to the files they lead to and checks that no file sits under another.
    pub(crate) fn finish(self) -> Result<Scan> {
        let mut aliases = Vec::new();
        for (path, (link, raw_target)) in &self.links {
            let shown = format!("{path} -> {raw_target}");
            let mut to = match link {
                Link::Symbolic(t) | Link::Hard(t) => t.clone(),
            };
            let mut hops = 0;
            loop {
                if self.files.contains_key(&to) {
                    aliases.push((path.clone(), to));
                    break;
                }
                let next = match self.links.get(&to) {
                    Some((Link::Symbolic(t), _)) | Some((Link::Hard(t), _)) => t.clone(),
                    None if self.dirs.contains(&to) => {
                        return Err(self.unsupported(&shown, "a link to a directory"))
                    }
                    None => return Err(self.unsupported(&shown, "a link to nothing in the set")),
                };
                hops += 1;
                if hops > 32 {
                    return Err(self.unsupported(&shown, "a loop of links"));
                }
                to = next;
            }
        }
        for path in self
            .files
            .keys()
            .chain(self.links.keys())
            .chain(self.dirs.iter())
        {
            for up in path.ancestors() {
                if self.files.contains_key(&up) || self.links.contains_key(&up) {
                    return Err(self.unsupported(
                        path.as_str(),
                        &format!("under {up}, which is not a directory"),
                    ));
                }
            }
        }
        Ok(Scan {
            label: self.label,
            files: self.files.into_values().collect(),
            aliases,
            skipped: self.skipped,
            archives: self.archives,
        })
    }
}

/// What the sink made of one file: its size and digest as read.
pub(crate) type Copied = (u64, Sha256Digest);

/// Streams every file of `scan` once to `sink`; the result is in `scan.files` order.
pub(crate) fn copy_all(
    scan: &Scan,
    sink: &mut dyn FnMut(&ScannedFile, &mut dyn Read) -> Result<Copied>,
) -> Result<Vec<Copied>> {
    let mut done: Vec<Option<Copied>> = vec![None; scan.files.len()];
    for (i, file) in scan.files.iter().enumerate() {
        match &file.origin {
            Origin::File(p) => {
                let mut f = open_nofollow(p)?;
                let got = sink(file, &mut f)?;
                if got.0 != file.size {
                    return Err(Error::Changed { file: p.clone() });
                }
                done[i] = Some(got);
            }
            Origin::Blob { path, digest } => {
                let mut f = open_nofollow(path)?;
                let got = sink(file, &mut f)?;
                if got.1 != *digest {
                    return Err(Error::DigestMismatch {
                        file: path.clone(),
                        expected: digest.to_string(),
                        actual: got.1.to_string(),
                    });
                }
                if got.0 != file.size {
                    return Err(Error::SizeMismatch {
                        file: path.clone(),
                        expected: file.size,
                        actual: got.0,
                    });
                }
                done[i] = Some(got);
            }
            Origin::Archive(_) => {}
        }
    }
    for (a, archive) in scan.archives.iter().enumerate() {
        let wanted: HashMap<&RelPath, usize> = scan
            .files
            .iter()
            .enumerate()
            .filter(|(_, f)| f.origin == Origin::Archive(a))
            .map(|(i, f)| (&f.path, i))
            .collect();
        tarball::copy(archive, &wanted, &scan.files, &mut |i, r| {
            let got = sink(&scan.files[i], r)?;
            done[i] = Some(got);
            Ok(())
        })?;
    }
    done.into_iter()
        .zip(&scan.files)
        .map(|(d, f)| {
            d.ok_or_else(|| Error::Changed {
                file: scan.label.join(f.path.to_path()),
            })
        })
        .collect()
}

/// Opens a file for reading without following a link that replaced it since the scan.
fn open_nofollow(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(io_at(path, "open"))
}
