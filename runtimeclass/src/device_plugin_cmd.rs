//! `kata-gpu device-plugin`: serve the host's passthrough GPUs and NVSwitches to kubelet
//! (under NVIDIA's sandbox device plugin's names, `nvidia.com/GH100_H100_PCIE`, or with
//! `--resource-naming pgpu` as `nvidia.com/pgpu`, `nvidia.com/nvswitch`) until SIGTERM or
//! SIGINT. One binary on the node
//! image runs both the set-up and the plugin, with the same `--host-root`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use kata_gpu_device_plugin::{run as run_plugin, Config, Naming, Strategy};

use crate::{Global, Outcome};

/// One form Allocate answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Form {
    /// CDI names in `cdi_devices` (kubelet 1.28 and later).
    CdiCri,
    /// CDI names as `cdi.k8s.io/*` annotations.
    CdiAnnotations,
    /// The VFIO device nodes themselves (kubelets and runtimes without CDI).
    DeviceSpecs,
}

/// Arguments of `kata-gpu device-plugin`.
#[derive(Debug, clap::Args)]
pub struct DevicePluginArgs {
    /// kubelet's device-plugins directory (under --host-root): its registration socket, and
    /// where the plugin's 0600 sockets go.
    #[arg(long, default_value = kata_gpu_kubelet_api::DEVICE_PLUGINS_DIR, value_name = "DIR")]
    plugins_dir: PathBuf,
    /// How often device health and kubelet's socket are checked; a change reaches kubelet
    /// within one interval.
    #[arg(long, default_value_t = 5, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    interval: u64,
    /// The forms Allocate answers in (repeat or comma-separate); default: all three, since
    /// the plugin cannot learn kubelet's version.
    #[arg(long = "allocate-form", value_enum, value_delimiter = ',',
          default_values_t = [Form::CdiCri, Form::CdiAnnotations, Form::DeviceSpecs])]
    forms: Vec<Form>,
    /// Resource names: `nvidia` (NVIDIA's sandbox device plugin's, one per device model from
    /// pci.ids: `nvidia.com/GH100_H100_PCIE`) or `pgpu` (`nvidia.com/pgpu`,
    /// `nvidia.com/nvswitch`).
    #[arg(long, default_value = "nvidia", value_name = "NAMING")]
    resource_naming: Naming,
}

/// Runs `kata-gpu device-plugin`.
pub fn run(args: DevicePluginArgs, global: &Global) -> anyhow::Result<Outcome> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let config = Config {
        plugins_dir: args.plugins_dir,
        interval: Duration::from_secs(args.interval),
        strategy: Strategy {
            cdi_cri: args.forms.contains(&Form::CdiCri),
            cdi_annotations: args.forms.contains(&Form::CdiAnnotations),
            device_specs: args.forms.contains(&Form::DeviceSpecs),
        },
        naming: args.resource_naming,
        ..Config::new(&global.host_root)
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the plugin's runtime")?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        run_plugin(config, stop)
            .await
            .context("the device plugin stopped")
    })?;
    Ok(Outcome::Clean)
}
