//! The `ctr` battery on every containerd release: the proxy in front of that release's own
//! runc shim, driven by that release's `ctr`. One body, one `#[test]` per release; the steps
//! share one containerd (each cleans up after itself and checks that nothing is left), and
//! the releases run in parallel test threads.

use std::fs;

use kata_gpu_tests::shimrig::{
    err, out, pids_of, wait_for_exit, wait_until, Downstream, Rig, RUNTIME, SHIM,
};
use kata_gpu_tests::{available, Containerd};

kata_gpu_tests::tests_per_release!(battery:
    ctr_battery_on_containerd_1_6 = Debian,
    ctr_battery_on_containerd_1_7 = V1_7,
    ctr_battery_on_containerd_2_1 = V2_1,
    ctr_battery_on_containerd_2_3 = V2_3,
);

/// Every step, in order; the restart comes last, as it restarts the shared containerd.
fn battery(release: Containerd, test: &str) {
    let Some(_) = available(test, release.bin_dir()) else {
        return;
    };
    let mut rig = Rig::on(release, Downstream::Runc, "");
    let v = release.version().replace('.', "");
    run_rm_and_exit_codes(&rig, &v);
    a_long_running_task_answers_every_call(&rig, &v);
    a_tty(&rig, &v);
    a_pods_containers_share_one_proxy_and_downstream(&rig, &v);
    killing_the_downstream_reports_the_exit(&rig, &v);
    killing_the_proxy_lets_containerd_clean_up(&rig, &v);
    a_containerd_restarted_after_the_downstream_died_still_reaches_the_proxy(&mut rig, &v);
    tasks_survive_a_containerd_restart(&mut rig, &v);
}

fn run_rm_and_exit_codes(rig: &Rig, v: &str) {
    let hello = Rig::id(&format!("hello{v}"));
    let o = rig.run(
        &["--rm"],
        &hello,
        &["/bin/busybox", "echo", "hello through the proxy"],
    );
    assert!(o.status.success(), "{}\n{}", err(&o), rig.ctrd.log());
    assert_eq!(out(&o).trim(), "hello through the proxy");
    let seven = Rig::id(&format!("seven{v}"));
    let o = rig.run(&["--rm"], &seven, &["/bin/sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7), "{}", err(&o));
    rig.assert_clean();
}

fn a_long_running_task_answers_every_call(rig: &Rig, v: &str) {
    let id = Rig::id(&format!("long{v}"));
    // As PID 1 the process only ends on SIGTERM if it handles it.
    let o = rig.run(
        &["-d"],
        &id,
        &[
            "/bin/sh",
            "-c",
            "trap 'exit 42' TERM; /bin/busybox sleep 300 & wait",
        ],
    );
    assert!(o.status.success(), "{}", err(&o));
    assert!(rig.state_dir(&id).join("configuration.toml").is_file());
    let o = rig.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        &id,
        "/bin/sh",
        "-c",
        "echo in-exec; exit 3",
    ]);
    assert_eq!(
        (o.status.code(), out(&o).trim()),
        (Some(3), "in-exec"),
        "{}",
        err(&o)
    );
    let pids = out(&rig.ctr(&["tasks", "ps", &id]));
    // The header, the shell and its sleep.
    assert_eq!(pids.lines().count(), 3, "{pids}");
    let status = |id: &str| {
        out(&rig.ctr(&["tasks", "ls"]))
            .lines()
            .find(|l| l.starts_with(id))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let o = rig.ctr(&["tasks", "pause", &id]);
    assert!(o.status.success(), "pause: {}", err(&o));
    assert!(status(&id).contains("PAUSED"), "{}", status(&id));
    let o = rig.ctr(&["tasks", "resume", &id]);
    assert!(o.status.success(), "resume: {}", err(&o));
    assert!(status(&id).contains("RUNNING"), "{}", status(&id));
    let metrics = rig.ctr(&["tasks", "metrics", &id]);
    assert!(
        metrics.status.success() && out(&metrics).contains("METRIC"),
        "{}",
        err(&metrics)
    );
    let o = rig.kill_and_remove(&id, "SIGTERM");
    assert!(
        err(&o).contains("exit code 42"),
        "the exit status of the TERM handler: {}",
        err(&o)
    );
    assert!(!rig.state_dir(&id).exists(), "state removed with the task");
    rig.assert_clean();
}

fn a_tty(rig: &Rig, v: &str) {
    let id = Rig::id(&format!("tty{v}"));
    // ctr needs a terminal for -t: `script` gives it one.
    let command = format!(
        "{ctr} --address {addr} run --rm -t --runtime {RUNTIME} --rootfs {rootfs} {id} /bin/sh -c 'tty; echo tty-ok'",
        ctr = rig.ctrd.bin_dir().join("ctr").display(),
        addr = rig.ctrd.address().display(),
        rootfs = rig.rootfs.display(),
    );
    let o = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .expect("run script");
    let text = out(&o);
    assert!(o.status.success(), "{text}{}", err(&o));
    assert!(
        text.contains("/dev/pts/") && text.contains("tty-ok"),
        "{text}"
    );
    rig.assert_clean();
}

fn a_pods_containers_share_one_proxy_and_downstream(rig: &Rig, v: &str) {
    let pod = Rig::id(&format!("pod{v}"));
    let app = Rig::id(&format!("app{v}"));
    let member = format!("io.kubernetes.cri.sandbox-id={pod}");
    for (id, kind) in [(&pod, "sandbox"), (&app, "container")] {
        let kind = format!("io.kubernetes.cri.container-type={kind}");
        let o = rig.run(
            &["-d", "--annotation", &kind, "--annotation", &member],
            id,
            &["/bin/busybox", "sleep", "300"],
        );
        assert!(o.status.success(), "{id}: {}", err(&o));
    }
    let proxies = pids_of(rig, &[SHIM, "serve"]);
    assert_eq!(proxies.len(), 1, "one proxy for the pod: {proxies:?}");
    let runc_shims = pids_of(rig, &["containerd-shim-runc-v2", "-namespace"]);
    assert_eq!(
        runc_shims.len(),
        1,
        "one downstream for the pod: {runc_shims:?}"
    );
    let bundles = rig
        .ctrd
        .dir()
        .join("state/io.containerd.runtime.v2.task/default");
    let address =
        |id: &str| fs::read_to_string(bundles.join(id).join("address")).expect("address file");
    assert_eq!(address(&pod), address(&app));
    assert!(
        rig.state_dir(&pod).join("configuration.toml").is_file(),
        "the sandbox was planned"
    );
    assert!(
        !rig.state_dir(&app).exists(),
        "a pod's container is not planned on its own"
    );
    for id in [&app, &pod] {
        rig.kill_and_remove(id, "SIGKILL");
    }
    rig.assert_clean();
}

fn kill_9(pid: u32) {
    let raw = i32::try_from(pid).expect("a pid fits an i32");
    let killed = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(raw),
        nix::sys::signal::Signal::SIGKILL,
    );
    assert!(killed.is_ok(), "kill -9 {pid}: {killed:?}");
}

fn killing_the_downstream_reports_the_exit(rig: &Rig, v: &str) {
    let id = Rig::id(&format!("victim{v}"));
    let o = rig.run(&["-d"], &id, &["/bin/busybox", "sleep", "300"]);
    assert!(o.status.success(), "{}", err(&o));
    let downstream = pids_of(rig, &["containerd-shim-runc-v2", &format!("-id {id}")]);
    assert_eq!(downstream.len(), 1, "one downstream daemon: {downstream:?}");
    kill_9(downstream[0]);
    // The proxy reports the lost downstream as the task's exit.
    wait_for_exit(rig, &id);
    rig.remove_stopped(&id);
    rig.assert_clean();
    assert!(
        pids_of(rig, &["sleep 300"]).is_empty(),
        "the container's process was cleaned up"
    );
}

fn killing_the_proxy_lets_containerd_clean_up(rig: &Rig, v: &str) {
    let id = Rig::id(&format!("orphan{v}"));
    let o = rig.run(&["-d"], &id, &["/bin/busybox", "sleep", "300"]);
    assert!(o.status.success(), "{}", err(&o));
    let proxy = pids_of(rig, &[SHIM, "serve", &format!("-id {id}")]);
    assert_eq!(proxy.len(), 1, "{proxy:?}");
    let downstream = rig.downstream_sockets();
    assert_eq!(downstream.len(), 1, "{downstream:?}");
    kill_9(proxy[0]);
    // containerd notices the lost shim, runs `shim delete` (which stops the downstream
    // through its own API) and drops the task.
    wait_until("containerd dropped the task", || {
        !out(&rig.ctr(&["tasks", "ls", "-q"])).contains(&id)
    });
    let o = rig.ctr(&["containers", "delete", &id]);
    assert!(o.status.success(), "{}", err(&o));
    rig.assert_clean();
    // The downstream removed the socket the bundle named (the dead proxy's); its own is
    // `delete`'s to remove.
    assert!(!downstream[0].exists(), "{} left", downstream[0].display());
    assert!(
        pids_of(rig, &["sleep 300"]).is_empty(),
        "the container's process was cleaned up"
    );
}

/// containerd 1.7 and 2.x reload a shim after a restart only if it answers `Connect`; one
/// that does not is forgotten (and never sent the Shutdown that ends a dead proxy): a proxy
/// whose downstream died must answer it, and exit once containerd is done with it.
fn a_containerd_restarted_after_the_downstream_died_still_reaches_the_proxy(
    rig: &mut Rig,
    v: &str,
) {
    let id = Rig::id(&format!("deadreload{v}"));
    let o = rig.run(&["-d"], &id, &["/bin/busybox", "sleep", "300"]);
    assert!(o.status.success(), "{}", err(&o));
    let downstream = pids_of(rig, &["containerd-shim-runc-v2", &format!("-id {id}")]);
    assert_eq!(downstream.len(), 1, "one downstream daemon: {downstream:?}");
    kill_9(downstream[0]);
    wait_for_exit(rig, &id);
    rig.ctrd.restart();
    // 1.6 and 2.3 keep the stopped task; 1.7 and 2.1 find it has no process (Pids) and
    // delete it as a leaked shim, through the proxy, as they do runc's own. Either way the
    // proxy is deleted through and shut down, and exits.
    let tasks = out(&rig.ctr(&["tasks", "ls"]));
    if tasks
        .lines()
        .any(|l| l.starts_with(&id) && l.contains("STOPPED"))
    {
        rig.remove_stopped(&id);
    } else {
        let o = rig.ctr(&["containers", "delete", &id]);
        assert!(o.status.success(), "{}", err(&o));
    }
    rig.assert_clean();
}

fn tasks_survive_a_containerd_restart(rig: &mut Rig, v: &str) {
    let id = Rig::id(&format!("survivor{v}"));
    let o = rig.run(&["-d"], &id, &["/bin/busybox", "sleep", "300"]);
    assert!(o.status.success(), "{}", err(&o));
    rig.ctrd.restart();
    // containerd reconnects to the proxy (1.x through the bundle's `address` file).
    let tasks = out(&rig.ctr(&["tasks", "ls"]));
    assert!(
        tasks
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("RUNNING")),
        "{tasks}\n{}",
        rig.ctrd.log()
    );
    let o = rig.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "after",
        &id,
        "/bin/sh",
        "-c",
        "echo still-here",
    ]);
    assert_eq!(out(&o).trim(), "still-here", "{}", err(&o));
    rig.kill_and_remove(&id, "SIGKILL");
    rig.assert_clean();
}
