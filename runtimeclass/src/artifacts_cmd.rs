//! `kata-gpu artifacts install|list|verify|rollback|prune|remove`: the artifact store (kernel,
//! guest image, firmware, QEMU and base Kata config per runtime class), by the
//! `kata-gpu-artifacts` crate.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use kata_gpu_artifacts::layout::{self, current_config_path};
use kata_gpu_artifacts::{InstallOptions, InstallOutcome, SetInfo, Store, StoreConfig};
use serde::Serialize;

use crate::{Global, Outcome};
use kata_gpu_node::steps::removal;

/// The runtime class of the default profile (snp).
const DEFAULT_CLASS: &str = "kata-qemu-nvidia-gpu-snp";

/// Where the store is and which class to act on.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// The runtime class [default: kata-qemu-nvidia-gpu-snp; for list: every class].
    #[arg(long, value_name = "NAME")]
    class: Option<String>,
    /// The store root as the host sees it (under --host-root).
    #[arg(long, value_name = "DIR", default_value = layout::DEFAULT_ROOT)]
    root: PathBuf,
    /// The shim's state directory, as the host sees it: prune keeps (and remove refuses to
    /// remove) every set that a per-sandbox configuration.toml up to 4 levels below it names.
    #[arg(long, value_name = "DIR", default_value = layout::DEFAULT_SANDBOXES_DIR)]
    sandboxes_dir: PathBuf,
    /// Seconds to wait for another artifacts command to let go of the store lock.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    lock_timeout: u64,
}

/// The `artifacts` subcommands.
#[derive(Debug, Subcommand)]
pub enum ArtifactsCommand {
    /// Install a set (directory, .tar, .tar.gz or OCI image layout) and make it current;
    /// installing a set that is there already copies nothing new.
    Install {
        /// The source: a directory, a tarball or an OCI layout (e.g. from `oras pull --oci-layout`).
        #[arg(value_name = "SRC")]
        src: PathBuf,
        /// For an OCI layout holding several manifests: the tag of the one to install.
        #[arg(long = "ref", value_name = "TAG")]
        oci_ref: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List the installed sets, current first.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Re-hash the current set (or every set) and name any file that changed.
    Verify {
        /// Verify every installed set, not only the current one.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Switch `current` back to the previous set (run again to switch forward).
    Rollback {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove all but the N newest sets; never the current one nor one a running sandbox uses.
    Prune {
        /// How many sets to keep (current first, then previous, then newest).
        #[arg(long, value_name = "N")]
        keep: usize,
        /// Say what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove the class's whole store (every set, `current`, `previous`, the lock, the
    /// directory); refused, with nothing removed, while a running sandbox uses it.
    Remove {
        /// Say what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

impl StoreArgs {
    fn config(&self, global: &Global) -> StoreConfig {
        StoreConfig {
            host_root: global.host_root.clone(),
            root: self.root.clone(),
            sandboxes_dir: self.sandboxes_dir.clone(),
            lock_timeout: Duration::from_secs(self.lock_timeout),
        }
    }

    fn store(&self, global: &Global) -> anyhow::Result<Store> {
        let class = self.class.as_deref().unwrap_or(DEFAULT_CLASS);
        Ok(Store::new(self.config(global), class)?)
    }
}

/// Runs one `artifacts` subcommand.
pub fn run(cmd: ArtifactsCommand, global: &Global) -> anyhow::Result<Outcome> {
    match cmd {
        ArtifactsCommand::Install {
            src,
            oci_ref,
            store,
        } => install(&store.store(global)?, src, oci_ref, global),
        ArtifactsCommand::List { store } => list(&store, global),
        ArtifactsCommand::Verify { all, store } => verify(&store.store(global)?, all, global.json),
        ArtifactsCommand::Rollback { store } => rollback(&store.store(global)?, global.json),
        ArtifactsCommand::Prune {
            keep,
            dry_run,
            store,
        } => prune(&store.store(global)?, keep, dry_run, global.json),
        ArtifactsCommand::Remove { dry_run, store } => remove(
            &store.store(global)?,
            &global.host_root,
            dry_run,
            global.json,
        ),
    }
}

fn install(
    store: &Store,
    src: PathBuf,
    oci_ref: Option<String>,
    global: &Global,
) -> anyhow::Result<Outcome> {
    let report = kata_gpu_artifacts::install(store, &src, &InstallOptions { oci_ref })?;
    if global.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(Outcome::Clean);
    }
    let m = &report.manifest;
    let what = match report.outcome {
        InstallOutcome::Installed => "installed",
        InstallOutcome::Switched => "switched back to",
        InstallOutcome::Unchanged => "unchanged, current already:",
        InstallOutcome::Repaired => "repaired (its files had changed) and made current:",
    };
    println!(
        "{what} {} for {} ({} files, {}) from {}",
        report.version,
        store.class(),
        m.files.len(),
        size(m.total_size()),
        src.display()
    );
    for f in &m.files {
        println!(
            "  {:<8} {:>10}  {}",
            f.role.to_string(),
            size(f.size),
            f.path
        );
    }
    for c in &report.config_changes {
        println!(
            "  config {}: {} -> {}",
            c.key,
            c.old.as_deref().unwrap_or("(unset)"),
            c.new.as_deref().unwrap_or("(removed)")
        );
    }
    for (link, target) in &report.aliases {
        println!("  link {link} -> {target} (not installed; the config names {target})");
    }
    for s in &report.skipped {
        println!("  skipped {s} (an old manifest; the store writes its own)");
    }
    if let Some(p) = &report.previous {
        let hint = crate::command_line::rooted(
            "kata-gpu artifacts rollback switches back",
            &global.host_root,
        );
        println!("previous: {p} ({hint})");
    }
    println!(
        "config: {}",
        current_config_path(&store.config().root, store.class()).display()
    );
    Ok(Outcome::Clean)
}

#[derive(Serialize)]
struct ClassListing {
    class: String,
    dir: PathBuf,
    sets: Vec<SetInfo>,
}

fn list(args: &StoreArgs, global: &Global) -> anyhow::Result<Outcome> {
    let config = args.config(global);
    let classes = match &args.class {
        Some(c) => vec![c.clone()],
        None => kata_gpu_artifacts::classes(&config)?,
    };
    let mut listings = Vec::new();
    for class in classes {
        let store = Store::new(config.clone(), &class)?;
        listings.push(ClassListing {
            dir: store.class_dir(),
            sets: store.list()?,
            class,
        });
    }
    let broken = listings
        .iter()
        .flat_map(|l| &l.sets)
        .filter(|s| s.problem.is_some())
        .count();
    if global.json {
        println!("{}", serde_json::to_string_pretty(&listings)?);
    } else {
        if listings.is_empty() {
            println!("no artifact sets under {}", config.root.display());
        }
        for l in &listings {
            println!("{} ({})", l.class, l.dir.display());
            if l.sets.is_empty() {
                println!("  no sets installed");
            }
            for s in &l.sets {
                let mark = if s.current {
                    "current "
                } else if s.previous {
                    "previous"
                } else {
                    "        "
                };
                match (&s.manifest, &s.problem) {
                    (Some(m), _) => println!(
                        "  {mark} {}  {}  {} files, {}  from {}",
                        s.version,
                        utc(m.installed_at_ns),
                        m.files.len(),
                        size(m.total_size()),
                        m.source
                    ),
                    (None, p) => println!(
                        "  {mark} {}  broken: {}",
                        s.version,
                        p.as_deref().unwrap_or_default()
                    ),
                }
            }
        }
    }
    Ok(if broken == 0 {
        Outcome::Clean
    } else {
        Outcome::Findings
    })
}

fn verify(store: &Store, all: bool, json: bool) -> anyhow::Result<Outcome> {
    let reports = kata_gpu_artifacts::verify(store, all)?;
    let bad = reports.iter().filter(|r| !r.findings.is_empty()).count();
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in &reports {
            let cur = if r.current { " (current)" } else { "" };
            if r.findings.is_empty() {
                println!(
                    "ok      {}{cur}: {} files, {} re-hashed",
                    r.version,
                    r.files,
                    size(r.bytes)
                );
            } else {
                println!(
                    "changed {}{cur}: {} finding(s)",
                    r.version,
                    r.findings.len()
                );
                for f in &r.findings {
                    println!("  {f}");
                }
            }
        }
    }
    Ok(if bad == 0 {
        Outcome::Clean
    } else {
        Outcome::Findings
    })
}

fn rollback(store: &Store, json: bool) -> anyhow::Result<Outcome> {
    let s = kata_gpu_artifacts::rollback(store)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!(
            "rolled back {}: current is {} (was {}, now previous)",
            store.class(),
            s.to,
            s.from
        );
    }
    Ok(Outcome::Clean)
}

fn prune(store: &Store, keep: usize, dry_run: bool, json: bool) -> anyhow::Result<Outcome> {
    let r = kata_gpu_artifacts::prune(store, keep, dry_run)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(Outcome::Clean);
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    for v in &r.removed {
        println!("{verb} {v}");
    }
    for k in &r.kept {
        println!("kept    {}: {}", k.version, k.reasons.join(", "));
    }
    println!("{} set(s) {verb}, {} kept", r.removed.len(), r.kept.len());
    Ok(Outcome::Clean)
}

fn remove(store: &Store, root: &Path, dry_run: bool, json: bool) -> anyhow::Result<Outcome> {
    let r = kata_gpu_artifacts::remove_class(store, dry_run)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("{}", removal(&r, root, dry_run));
    }
    Ok(Outcome::Clean)
}

/// A size in the largest unit that keeps it above 1.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Nanoseconds since the epoch as `YYYY-MM-DD HH:MM:SSZ` (UTC).
fn utc(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_sizes_read_well() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(1_709_251_199 * 1_000_000_000), "2024-02-29 23:59:59Z");
        assert_eq!(size(512), "512 B");
        assert_eq!(size(512 << 20), "512.0 MiB");
    }
}
