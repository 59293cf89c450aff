//! A plain directory as a source.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use super::{Listing, Origin, Scan};
use crate::error::{io_at, Result};

/// Scans the directory `root` recursively, without following links.
pub(super) fn scan(root: &Path) -> Result<Scan> {
    let mut listing = Listing::new(root);
    walk(root, "", &mut listing)?;
    listing.finish()
}

fn walk(dir: &Path, prefix: &str, listing: &mut Listing) -> Result<()> {
    let mut entries: Vec<fs::DirEntry> = fs::read_dir(dir)
        .map_err(io_at(dir, "list"))?
        .collect::<std::io::Result<_>>()
        .map_err(io_at(dir, "list"))?;
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name();
        let raw = match name.to_str() {
            Some(n) => format!("{prefix}{n}"),
            None => {
                return Err(listing.unsupported(
                    &format!("{prefix}{}", name.to_string_lossy()),
                    "a name that is not UTF-8",
                ))
            }
        };
        let meta = fs::symlink_metadata(&path).map_err(io_at(&path, "read"))?;
        let kind = meta.file_type();
        if kind.is_file() {
            let exec = meta.permissions().mode() & 0o111 != 0;
            listing.add_file(&raw, meta.len(), exec, Origin::File(path))?;
        } else if kind.is_dir() {
            listing.add_dir(&raw)?;
            walk(&path, &format!("{raw}/"), listing)?;
        } else if kind.is_symlink() {
            let target = fs::read_link(&path).map_err(io_at(&path, "read link"))?;
            let Some(target) = target.to_str() else {
                return Err(listing.unsupported(&raw, "a link whose target is not UTF-8"));
            };
            listing.add_symlink(&raw, target)?;
        } else {
            let what = if kind.is_fifo() {
                "a FIFO"
            } else if kind.is_socket() {
                "a socket"
            } else {
                "a device node"
            };
            return Err(listing.unsupported(&raw, what));
        }
    }
    Ok(())
}
