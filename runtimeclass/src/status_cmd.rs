//! `kata-gpu status`: prints what [`kata_gpu_node::status::gather`] finds for a profile.

use crate::args::StatusArgs;
use crate::{Global, Outcome};
use kata_gpu_node::status::gather;

/// Runs `kata-gpu status`.
pub fn run(args: StatusArgs, global: &Global) -> anyhow::Result<Outcome> {
    let s = gather(&args.query(), &global.host_root)?;
    let handler = &s.handler;
    if global.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let maybe = |b: Option<bool>| b.map_or("unknown", yes);
        println!("{handler}:");
        println!("  installed:       {}", yes(s.installed));
        println!("  verified:        {}", maybe(s.verified));
        println!("  registered:      {}", yes(s.registered));
        println!("  loaded:          {}", maybe(s.loaded));
        println!("  restart pending: {}", yes(s.restart_pending));
        println!("  shim:            {}", yes(s.shim.is_some()));
        println!("  kata shim:       {}", yes(s.kata_shim));
        println!(
            "  kata runtime:    {}",
            s.kata_runtime.as_deref().unwrap_or("unknown")
        );
        println!(
            "  devices from:    {}",
            s.device_source.as_deref().unwrap_or("unknown")
        );
        for d in &s.details {
            println!("  {}", crate::command_line::rooted(d, &global.host_root));
        }
    }
    Ok(if s.ok() {
        Outcome::Clean
    } else {
        Outcome::Findings
    })
}
