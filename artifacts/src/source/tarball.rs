//! Tar streams: a `.tar`/`.tar.gz` source, or a tar layer of an OCI layout. Entries are
//! read, never unpacked by the tar crate: the store decides where every byte goes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use flate2::read::GzDecoder;

use super::{Archive, Listing, Origin, Scan, ScannedFile};
use crate::digest::HashingReader;
use crate::error::{io_at, Error, Result};
use crate::relpath::RelPath;

/// Scans a tarball source.
pub(super) fn scan_file(path: &Path, gzip: bool) -> Result<Scan> {
    let mut listing = Listing::new(path);
    let idx = listing.add_archive(Archive {
        path: path.to_path_buf(),
        gzip,
        descriptor: None,
    });
    let file = File::open(path).map_err(io_at(path, "open"))?;
    if gzip {
        let mut archive = tar::Archive::new(GzDecoder::new(BufReader::new(file)));
        let entries = archive.entries().map_err(io_at(path, "read tar"))?;
        list(entries, path, idx, &mut listing)?;
    } else {
        let mut archive = tar::Archive::new(file);
        let entries = archive
            .entries_with_seek()
            .map_err(io_at(path, "read tar"))?;
        list(entries, path, idx, &mut listing)?;
    }
    listing.finish()
}

/// Adds the entries of an OCI tar layer to `listing`; the layer's digest is checked.
pub(super) fn scan_layer(archive: Archive, listing: &mut Listing) -> Result<()> {
    let path = archive.path.clone();
    let (gzip, descriptor) = (archive.gzip, archive.descriptor);
    let idx = listing.add_archive(archive);
    let file = File::open(&path).map_err(io_at(&path, "open"))?;
    let mut hashing = HashingReader::new(BufReader::new(file));
    {
        let reader: Box<dyn Read + '_> = if gzip {
            Box::new(GzDecoder::new(&mut hashing))
        } else {
            Box::new(&mut hashing)
        };
        let mut tar = tar::Archive::new(reader);
        let entries = tar.entries().map_err(io_at(&path, "read tar layer"))?;
        list(entries, &path, idx, listing)?;
        io::copy(&mut tar.into_inner(), &mut io::sink()).map_err(io_at(&path, "read tar layer"))?;
    }
    check_descriptor(&path, hashing, descriptor)
}

fn check_descriptor<R: Read>(
    path: &Path,
    hashing: HashingReader<R>,
    descriptor: Option<(crate::digest::Sha256Digest, u64)>,
) -> Result<()> {
    let (size, digest) = hashing.finish().map_err(io_at(path, "read"))?;
    if let Some((want, want_size)) = descriptor {
        if digest != want {
            return Err(Error::DigestMismatch {
                file: path.to_path_buf(),
                expected: want.to_string(),
                actual: digest.to_string(),
            });
        }
        if size != want_size {
            return Err(Error::SizeMismatch {
                file: path.to_path_buf(),
                expected: want_size,
                actual: size,
            });
        }
    }
    Ok(())
}

fn utf8<'a>(bytes: &'a [u8], listing: &Listing, what: &str) -> Result<&'a str> {
    std::str::from_utf8(bytes)
        .map_err(|_| listing.unsupported(&String::from_utf8_lossy(bytes), what))
}

fn list<R: Read>(
    entries: tar::Entries<'_, R>,
    path: &Path,
    idx: usize,
    listing: &mut Listing,
) -> Result<()> {
    for entry in entries {
        let entry = entry.map_err(io_at(path, "read tar entry"))?;
        let kind = entry.header().entry_type();
        let name_bytes = entry.path_bytes();
        let name = utf8(&name_bytes, listing, "a name that is not UTF-8")?.to_owned();
        let link = entry.link_name_bytes();
        let link = match &link {
            Some(l) => Some(utf8(l, listing, "a link whose target is not UTF-8")?.to_owned()),
            None => None,
        };
        if kind.is_file() || kind == tar::EntryType::Continuous {
            let mode = entry.header().mode().unwrap_or(0o644);
            listing.add_file(&name, entry.size(), mode & 0o111 != 0, Origin::Archive(idx))?;
        } else if kind.is_dir() {
            listing.add_dir(&name)?;
        } else if kind.is_symlink() {
            listing.add_symlink(&name, link.as_deref().unwrap_or(""))?;
        } else if kind.is_hard_link() {
            listing.add_hardlink(&name, link.as_deref().unwrap_or(""))?;
        } else if kind.is_pax_global_extensions() {
            continue;
        } else {
            let what = match kind {
                tar::EntryType::Char | tar::EntryType::Block => "a device node",
                tar::EntryType::Fifo => "a FIFO",
                tar::EntryType::GNUSparse => "a sparse file",
                _ => "an entry of an unknown kind",
            };
            // An escaping name is the worse problem: report it first.
            listing.path(&name)?;
            return Err(listing.unsupported(&name, what));
        }
    }
    Ok(())
}

/// Streams the wanted regular files of one archive to `visit` (by index into `files`).
pub(super) fn copy(
    archive: &Archive,
    wanted: &HashMap<&RelPath, usize>,
    files: &[ScannedFile],
    visit: &mut dyn FnMut(usize, &mut dyn Read) -> Result<()>,
) -> Result<()> {
    let path = &archive.path;
    let file = File::open(path).map_err(io_at(path, "open"))?;
    let buffered = BufReader::with_capacity(1 << 20, file);
    if archive.descriptor.is_none() {
        return copy_stream(buffered, archive, wanted, files, visit);
    }
    let mut hashing = HashingReader::new(buffered);
    copy_stream(&mut hashing, archive, wanted, files, visit)?;
    check_descriptor(path, hashing, archive.descriptor)
}

fn copy_stream<R: Read>(
    mut raw: R,
    archive: &Archive,
    wanted: &HashMap<&RelPath, usize>,
    files: &[ScannedFile],
    visit: &mut dyn FnMut(usize, &mut dyn Read) -> Result<()>,
) -> Result<()> {
    let path = &archive.path;
    let changed = || Error::Changed { file: path.clone() };
    let reader: Box<dyn Read + '_> = if archive.gzip {
        Box::new(GzDecoder::new(&mut raw))
    } else {
        Box::new(&mut raw)
    };
    let mut tar = tar::Archive::new(reader);
    for entry in tar.entries().map_err(io_at(path, "read tar"))? {
        let mut entry = entry.map_err(io_at(path, "read tar entry"))?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            continue;
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Ok(rel) = RelPath::parse(&name) else {
            return Err(changed());
        };
        let Some(&i) = wanted.get(&rel) else {
            // Our own manifest, skipped by the scan; anything else is new.
            if rel.as_str() == crate::layout::MANIFEST_FILE {
                continue;
            }
            return Err(changed());
        };
        if entry.size() != files[i].size {
            return Err(changed());
        }
        visit(i, &mut entry)?;
    }
    io::copy(&mut tar.into_inner(), &mut io::sink()).map_err(io_at(path, "read tar"))?;
    Ok(())
}
