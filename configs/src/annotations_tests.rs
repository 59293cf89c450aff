//! Tests of the pod-annotation checks, one table per kind of refusal.

use super::*;

const BOTH: [AnnotationPolicy; 2] = [AnnotationPolicy::Confidential, AnnotationPolicy::Plain];
const CC: AnnotationPolicy = AnnotationPolicy::Confidential;

fn one(key: &str, value: &str) -> BTreeMap<String, String> {
    [(key.to_owned(), value.to_owned())].into()
}

#[test]
fn every_host_path_annotation_is_refused_by_name() {
    for name in HOST_PATH_ANNOTATIONS {
        let key = format!("{HYPERVISOR_ANNOTATION_PREFIX}{name}");
        let err =
            check_pod_annotations(&one(&key, "/tmp/evil"), CC).expect_err("should be refused");
        assert_eq!(err.annotation, key);
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("pod annotation {key} is refused: ")),
            "{msg}"
        );
        assert!(msg.contains(&format!("(`{name}`)")), "{msg}");
    }
}

#[test]
fn the_issue_list_is_covered() {
    for name in [
        "path",
        "kernel",
        "image",
        "initrd",
        "firmware",
        "jailer_path",
        "ctlpath",
        "virtio_fs_daemon",
        "virtio_fs_extra_args",
    ] {
        assert!(HOST_PATH_ANNOTATIONS.contains(&name), "{name}");
    }
}

#[test]
fn refused_switches_table() {
    let table = [
        ("io.katacontainers.config_path", "configuration file"),
        (
            "io.katacontainers.config.agent.debug_console_enabled",
            "debug console",
        ),
        (
            "io.katacontainers.config.agent.enable_debug",
            "debug logging",
        ),
        ("io.katacontainers.config.agent.enable_tracing", "trace"),
        ("io.katacontainers.config.hypervisor.enable_debug", "debug"),
        (
            "io.katacontainers.config.hypervisor.debug_console_enabled",
            "debug console",
        ),
    ];
    for (key, words) in table {
        let err = check_pod_annotation(key, "true", CC).expect_err("should be refused");
        assert_eq!(err.annotation, key);
        let msg = err.to_string();
        assert!(msg.contains(key) && msg.contains(words), "{msg}");
    }
}

#[test]
fn debug_kernel_params_table() {
    // (annotation value, the parameter named in the refusal, words in the message)
    let table = [
        (
            "agent.debug_console",
            "agent.debug_console",
            "debug console",
        ),
        (
            "quiet agent.debug_console_vport=1026",
            "agent.debug_console_vport=1026",
            "vsock",
        ),
        ("agent.log=debug", "agent.log=debug", "debug logging"),
        ("agent.log=trace", "agent.log=trace", "debug logging"),
        ("agent.log=DEBUG", "agent.log=DEBUG", "debug logging"),
        ("quiet\x0binit=/bin/sh", "init=/bin/sh", "init"),
        ("agent.log_vport=1025", "agent.log_vport=1025", "over vsock"),
        ("agent.devmode", "agent.devmode", "development mode"),
        ("agent.trace=true", "agent.trace=true", "tracing"),
        (
            "agent.debug-console",
            "agent.debug-console",
            "debug console",
        ),
        (
            "AGENT.DEBUG_CONSOLE",
            "AGENT.DEBUG_CONSOLE",
            "debug console",
        ),
        (
            "agent.config_file=/etc/evil.toml",
            "agent.config_file=/etc/evil.toml",
            "configuration",
        ),
        ("console=ttyS0", "console=ttyS0", "console"),
        ("earlyprintk=serial", "earlyprintk=serial", "console"),
        ("earlycon", "earlycon", "console"),
        ("init=/bin/sh", "init=/bin/sh", "init"),
        ("rdinit=/bin/sh", "rdinit=/bin/sh", "init"),
        (
            "agent.aa_kbc_params=cc_kbc::http://kbs:8080\tagent.debug_console",
            "agent.debug_console",
            "debug console",
        ),
    ];
    for (value, param, words) in table {
        let err = check_pod_annotations(&one(KERNEL_PARAMS_ANNOTATION, value), CC)
            .expect_err("should be refused");
        assert_eq!(err.annotation, KERNEL_PARAMS_ANNOTATION, "{value}");
        assert_eq!(
            err.reason,
            Refusal::KernelParam {
                param: param.to_owned(),
                what: debug_kernel_param(param).unwrap_or_default(),
            },
            "{value}"
        );
        let msg = err.to_string();
        assert!(msg.contains(KERNEL_PARAMS_ANNOTATION), "{msg}");
        assert!(msg.contains(&format!("{param:?}")), "{msg}");
        assert!(msg.contains(words), "{msg}");
    }
}

#[test]
fn harmless_annotations_pass() {
    let ok = [
        (
            KERNEL_PARAMS_ANNOTATION,
            "agent.aa_kbc_params=cc_kbc::https://kbs.example:8080 nvrc.smi.srs=1",
        ),
        (KERNEL_PARAMS_ANNOTATION, "agent.log=info agent.log=warn"),
        (KERNEL_PARAMS_ANNOTATION, "agent.debug_consolex"),
        (KERNEL_PARAMS_ANNOTATION, ""),
        (
            "io.katacontainers.config.hypervisor.default_memory",
            "16384",
        ),
        (
            "io.katacontainers.config.hypervisor.cc_init_data",
            "H4sI...",
        ),
        ("io.kubernetes.cri.container-type", "sandbox"),
        ("cdi.k8s.io/vfio0", "nvidia.com/pgpu=0"),
    ];
    for (key, value) in ok {
        assert_eq!(
            check_pod_annotation(key, value, CC),
            Ok(()),
            "{key}={value}"
        );
    }
    let all: BTreeMap<String, String> = ok
        .iter()
        .filter(|(k, _)| *k != KERNEL_PARAMS_ANNOTATION)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(check_pod_annotations(&all, CC), Ok(()));
}

#[test]
fn first_refusal_in_key_order() {
    let mut a = one("io.katacontainers.config.hypervisor.path", "/x");
    a.insert(
        "io.katacontainers.config.hypervisor.initrd".into(),
        "/y".into(),
    );
    let err = check_pod_annotations(&a, CC).expect_err("should be refused");
    assert_eq!(err.annotation, "io.katacontainers.config.hypervisor.initrd");
}

/// One row per key off the lists: (key, refused under snp/tdx, refused under gpu, words
/// in the reason).
#[test]
fn every_kata_annotation_off_the_profiles_list_is_refused() {
    let table = [
        (
            "io.katacontainers.config.runtime.disable_guest_seccomp",
            true,
            true,
            "seccomp off",
        ),
        (
            "io.katacontainers.config.runtime.disable_new_netns",
            true,
            true,
            "network namespace",
        ),
        (
            "io.katacontainers.config.runtime.vfio_mode",
            true,
            true,
            "VFIO",
        ),
        (
            "io.katacontainers.config.runtime.experimental",
            true,
            true,
            "experimental",
        ),
        (
            "io.katacontainers.config.runtime.sandbox_cgroup_only",
            true,
            true,
            "cgroups",
        ),
        (
            "io.katacontainers.config.runtime.enable_pprof",
            true,
            true,
            "profiling",
        ),
        (
            "io.katacontainers.config.runtime.create_container_timeout",
            true,
            true,
            "timeout",
        ),
        (
            "io.katacontainers.config.runtime.internetworking_model",
            true,
            true,
            "networking",
        ),
        (
            "io.katacontainers.config.agent.kernel_modules",
            true,
            true,
            "kernel modules",
        ),
        (
            "io.katacontainers.config.agent.policy",
            true,
            true,
            "cc_init_data",
        ),
        (
            "io.katacontainers.config.agent.container_pipe_size",
            true,
            true,
            "pipe size",
        ),
        (
            "io.katacontainers.config.hypervisor.kernel_verity_params",
            true,
            true,
            "dm-verity",
        ),
        (
            "io.katacontainers.config.hypervisor.enable_iommu",
            true,
            false,
            "virtual IOMMU",
        ),
        (
            "io.katacontainers.config.hypervisor.cc_init_data",
            false,
            true,
            "no TEE",
        ),
        (
            "io.katacontainers.config.hypervisor.guest_hook_path",
            true,
            true,
            "allow-list",
        ),
        (
            "io.katacontainers.config.hypervisor.pathx",
            true,
            true,
            "allow-list",
        ),
        (
            "io.katacontainers.config.hypervisor.default_maxmemory",
            true,
            true,
            "allow-list",
        ),
        (
            "io.katacontainers.pkg.oci.container_type",
            true,
            true,
            "bookkeeping",
        ),
        (
            "io.katacontainers.container.resource.swappiness",
            true,
            true,
            "allow-list",
        ),
        ("io.katacontainers.something_new", true, true, "allow-list"),
    ];
    for (key, snp, gpu, words) in table {
        for (policy, refused) in [(CC, snp), (AnnotationPolicy::Plain, gpu)] {
            let got = check_pod_annotation(key, "1", policy);
            if !refused {
                assert_eq!(got, Ok(()), "{key} under {policy}");
                continue;
            }
            let err = got.expect_err("refused");
            assert_eq!(err.annotation, key);
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("pod annotation {key} is refused: ")),
                "{msg}"
            );
            assert!(msg.contains(words), "{key} under {policy}: {msg}");
            assert!(msg.ends_with("; remove it"), "{msg}");
        }
    }
    let err = check_pod_annotation("io.katacontainers.config.runtime.vfio_mode", "vfio", CC)
        .expect_err("refused");
    assert_eq!(
        err.to_string(),
        "pod annotation io.katacontainers.config.runtime.vfio_mode is refused: it would \
         change how VFIO devices reach the guest; a confidential profile (snp, tdx) lets a \
         pod set only kernel_params, default_memory, default_vcpus and cc_init_data \
         (io.katacontainers.config.hypervisor.*); remove it"
    );
}

#[test]
fn the_lists_and_what_is_not_katas() {
    for policy in BOTH {
        for key in policy.allowed() {
            assert_eq!(check_pod_annotation(key, "1", policy), Ok(()), "{key}");
        }
        for key in [
            "cdi.k8s.io/gpu",
            "io.kubernetes.cri.sandbox-id",
            "example.com/x",
        ] {
            assert_eq!(check_pod_annotation(key, "1", policy), Ok(()), "{key}");
        }
    }
}

/// The issue's cases: a quoted `init=` (Linux strips the quotes) and one behind a
/// no-break space (Kata splits on it) are refused, under every profile.
#[test]
fn kernel_params_the_guest_would_read_differently_are_refused() {
    let table = [
        ("\"init=/bin/sh\"", "a double quote"),
        ("quiet \"console=ttyS0\"", "a double quote"),
        ("agent.log='debug'", "a single quote"),
        ("quiet\u{a0}init=/bin/sh", "U+00A0"),
        ("quiet\u{85}agent.debug_console", "U+0085"),
        ("quiet\u{2028}init=/bin/sh", "U+2028"),
        ("quiet\0init=/bin/sh", "U+0000"),
    ];
    for policy in BOTH {
        for (value, found) in table {
            let err =
                check_pod_annotation(KERNEL_PARAMS_ANNOTATION, value, policy).expect_err("refused");
            assert_eq!(err.annotation, KERNEL_PARAMS_ANNOTATION);
            assert!(
                matches!(err.reason, Refusal::KernelParamsText { .. }),
                "{value:?}: {err}"
            );
            assert_eq!(
                err.to_string(),
                format!(
                    "pod annotation {KERNEL_PARAMS_ANNOTATION} is refused: it holds {found}, \
                     which Kata or the guest kernel reads differently from this check (Kata \
                     splits on Unicode whitespace, the kernel strips quotes); write the \
                     parameters in printable ASCII without quotes, separated by spaces"
                )
            );
        }
    }
}
