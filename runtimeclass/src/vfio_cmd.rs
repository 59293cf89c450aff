//! `kata-gpu vfio bind | unbind [BDF …]`: hand NVIDIA GPUs and NVSwitches, each with its
//! whole IOMMU group, to `vfio-pci`, and give them back to the driver they had.

use anyhow::Context;
use kata_gpu_plan::host::{Bdf, Host};
use kata_gpu_plan::vfio::{self, Step, Targets};

use crate::{Global, Outcome};

/// `kata-gpu vfio` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum VfioCommand {
    /// Bind GPUs and NVSwitches (all, or those named) and the rest of their IOMMU groups
    /// (bridges excepted) to vfio-pci; refuses a device in use, and a group holding a
    /// function not NVIDIA's unless --force. Each group is all or nothing: a function the
    /// kernel does not move puts its group back as it was.
    Bind(BindArgs),
    /// Hand them back from vfio-pci to the driver they had before `bind`, a group at a
    /// time and all or nothing, as `bind` does.
    Unbind(VfioArgs),
}

/// Arguments of `kata-gpu vfio bind` and `unbind`.
#[derive(Debug, clap::Args)]
pub struct VfioArgs {
    /// PCI addresses (0000:41:00.0) of GPUs or NVSwitches; none: every one on the host.
    #[arg(value_name = "BDF")]
    bdfs: Vec<Bdf>,
    /// Print the sysfs writes instead of making them.
    #[arg(long)]
    dry_run: bool,
}

/// Arguments of `kata-gpu vfio bind`.
#[derive(Debug, clap::Args)]
pub struct BindArgs {
    #[command(flatten)]
    common: VfioArgs,
    /// Bind functions that are not NVIDIA's too, when they share a GPU's IOMMU group
    /// (they leave the host; one in use is still refused). Without it, such a group is refused.
    #[arg(long)]
    force: bool,
}

/// Runs `kata-gpu vfio …`.
pub fn run(cmd: VfioCommand, global: &Global) -> anyhow::Result<Outcome> {
    let host = Host::new(&global.host_root);
    let (args, bind, force) = match cmd {
        VfioCommand::Bind(a) => (a.common, true, a.force),
        VfioCommand::Unbind(a) => (a, false, false),
    };
    let targets = if args.bdfs.is_empty() {
        Targets::All
    } else {
        Targets::Named(&args.bdfs)
    };
    let verb = if bind { "bind" } else { "unbind" };
    let steps = if bind {
        vfio::plan_bind(&host, targets, force)
    } else {
        vfio::plan_unbind(&host, targets)
    }
    .with_context(|| format!("nothing was changed: cannot {verb}"))?;
    if !args.dry_run {
        vfio::apply(&host, &vfio::KernelSysfs, &steps).with_context(|| format!("{verb} failed"))?;
    }
    let changed = steps.iter().filter(|s| !s.is_noop()).count();
    if global.json {
        let out = serde_json::json!({
            "action": verb,
            "dry_run": args.dry_run,
            "changed": changed,
            "steps": steps,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_text(&steps, args.dry_run, bind, changed);
    }
    Ok(if steps.is_empty() {
        Outcome::Findings
    } else {
        Outcome::Clean
    })
}

fn print_text(steps: &[Step], dry_run: bool, bind: bool, changed: usize) {
    if steps.is_empty() {
        println!("no NVIDIA GPU or NVSwitch on this host");
        return;
    }
    for s in steps {
        println!("{s}");
        if dry_run {
            for w in &s.writes {
                println!("  {w}");
            }
        }
    }
    let what = if bind {
        "bound to vfio-pci"
    } else {
        "handed back"
    };
    let unchanged = steps.len() - changed;
    if dry_run {
        println!("{changed} function(s) would be {what}, {unchanged} unchanged (dry run: nothing written)");
    } else {
        println!("{changed} function(s) {what}, {unchanged} unchanged");
    }
}
