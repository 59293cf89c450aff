//! The Kubernetes objects of a runtime class, built from typed structs (k8s-openapi for the
//! built-in kinds, [`nfd`] for NFD's NodeFeatureRule CRD), never from string templates
//! (ARCHITECTURE.md, "On a cluster"):
//!
//! - [`runtime_class`]: `node.k8s.io/v1` RuntimeClass with the handler, the pod overhead
//!   and a node selector;
//! - [`nfd::node_feature_rule`]: labels SNP/TDX hosts that carry a confidential-computing
//!   capable Hopper GPU;
//! - [`sample_pod`]: a CUDA vector-add pod asking for one passthrough GPU;
//! - [`deploy::Deployment`]: everything that runs kata-gpu on a cluster, checked by
//!   [`deploy_check::problems`].

pub mod deploy;
pub mod deploy_check;
pub mod nfd;
mod objects;

pub use objects::{
    ready_label, runtime_class, sample_pod, Options, DEFAULT_CPU_OVERHEAD, DEFAULT_GPU_RESOURCE,
    DEFAULT_MEMORY_OVERHEAD, MEMORY_ANNOTATION, PASSTHROUGH_LABEL, PGPU_RESOURCE, SAMPLE_IMAGE,
};

use kata_gpu_plan::Profile;
use serde::Serialize;

/// Why manifests could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// YAML serialization failed.
    #[error("cannot render YAML: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
    /// JSON serialization failed.
    #[error("cannot render JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A `--node-selector` that is not `key=value`.
    #[error("node selector {0:?} is not KEY=VALUE")]
    BadSelector(String),
    /// An overhead that is not a Kubernetes quantity.
    #[error("{0:?} is not a Kubernetes quantity (e.g. 2048Mi, 1, 500m)")]
    BadQuantity(String),
}

/// Checks a Kubernetes quantity (`resource.Quantity`): a decimal number and an optional
/// binary (Ki…Ei), decimal (n, u, m, k, M…E) or exponent (e3) suffix.
pub fn check_quantity(q: &str) -> Result<(), Error> {
    let bad = || Error::BadQuantity(q.to_owned());
    let digits_end = q
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || *c == '.' || (*i == 0 && (*c == '+' || *c == '-'))))
        .map_or(q.len(), |(i, _)| i);
    let (number, suffix) = q.split_at(digits_end);
    let number = number.trim_start_matches(['+', '-']);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(bad());
    }
    let suffixes = [
        "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E",
    ];
    let exponent = suffix
        .strip_prefix(['e', 'E'])
        .map(|e| e.trim_start_matches(['+', '-']))
        .is_some_and(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_digit()));
    if suffixes.contains(&suffix) || exponent {
        Ok(())
    } else {
        Err(bad())
    }
}

/// The three objects of one profile.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifests {
    /// The RuntimeClass.
    pub runtime_class: k8s_openapi::api::node::v1::RuntimeClass,
    /// The NodeFeatureRule.
    pub node_feature_rule: nfd::NodeFeatureRule,
    /// The sample pod.
    pub sample_pod: k8s_openapi::api::core::v1::Pod,
}

impl Manifests {
    /// The objects for `profile` with `opts`.
    pub fn new(profile: Profile, opts: &Options) -> Manifests {
        Manifests {
            runtime_class: runtime_class(profile, opts),
            node_feature_rule: nfd::node_feature_rule(),
            sample_pod: sample_pod(profile, &opts.gpu_resource),
        }
    }

    /// The RuntimeClass alone, as YAML: what `kata-gpu install` writes for `kubectl apply`.
    /// The NodeFeatureRule needs NFD's CRD and the sample pod is a workload, so neither is
    /// applied with the class.
    pub fn runtime_class_yaml(&self) -> Result<String, Error> {
        yaml_doc(&self.runtime_class)
    }

    /// As one multi-document YAML stream: RuntimeClass, NodeFeatureRule, Pod.
    pub fn to_yaml(&self) -> Result<String, Error> {
        Ok([
            yaml_doc(&self.runtime_class)?,
            yaml_doc(&self.node_feature_rule)?,
            yaml_doc(&self.sample_pod)?,
        ]
        .join("---\n"))
    }

    /// As a JSON array of the three objects.
    pub fn to_json(&self) -> Result<String, Error> {
        let list = [
            serde_json::to_value(&self.runtime_class)?,
            serde_json::to_value(&self.node_feature_rule)?,
            serde_json::to_value(&self.sample_pod)?,
        ];
        Ok(serde_json::to_string_pretty(&list)?)
    }
}

fn yaml_doc(object: &impl Serialize) -> Result<String, Error> {
    Ok(serde_yaml_ng::to_string(object)?)
}

/// Parses `KEY=VALUE` node selectors.
pub fn parse_selectors(pairs: &[String]) -> Result<Vec<(String, String)>, Error> {
    pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(Error::BadSelector(p.clone())),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_checked() {
        for ok in ["2048Mi", "1", "500m", "1.5", "2Gi", "1e3", "0.5"] {
            assert!(check_quantity(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Mi", "2 Gi", "2GB", "1..2", "abc", "1e"] {
            assert!(check_quantity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn selectors_parse() {
        let got = parse_selectors(&["a=b".to_owned(), "c=".to_owned()]).expect("ok");
        assert_eq!(
            got,
            [
                ("a".to_owned(), "b".to_owned()),
                ("c".to_owned(), String::new())
            ]
        );
        assert!(parse_selectors(&["=x".to_owned()]).is_err());
        assert!(parse_selectors(&["novalue".to_owned()]).is_err());
    }
}
