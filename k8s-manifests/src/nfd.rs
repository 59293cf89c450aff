//! NFD's NodeFeatureRule (`nfd.k8s-sigs.io/v1alpha1`), a CRD that k8s-openapi does not
//! have: the subset of its schema we write, as typed structs.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use crate::objects::labels;

/// The API version of the CRD.
pub const API_VERSION: &str = "nfd.k8s-sigs.io/v1alpha1";
/// The kind.
pub const KIND: &str = "NodeFeatureRule";

/// PCI device IDs (vendor 10de) of the Hopper GPUs that support confidential computing.
pub const CC_CAPABLE_HOPPER: [&str; 7] = ["2330", "2331", "2322", "2324", "2335", "2339", "233d"];

/// A NodeFeatureRule object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeFeatureRule {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always [`KIND`].
    pub kind: String,
    /// Name and labels.
    pub metadata: ObjectMeta,
    /// The rules.
    pub spec: NodeFeatureRuleSpec,
}

/// `spec` of a NodeFeatureRule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeFeatureRuleSpec {
    /// The rules, each labelling the nodes it matches.
    pub rules: Vec<Rule>,
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// The rule's name.
    pub name: String,
    /// Labels to put on the nodes that match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Terms that must all match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_features: Vec<FeatureMatcherTerm>,
}

/// Requirements on one feature set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeatureMatcherTerm {
    /// The feature set, e.g. `cpu.security` or `pci.device`.
    pub feature: String,
    /// Per-element expressions, all of which must hold.
    pub match_expressions: BTreeMap<String, MatchExpression>,
}

/// An expression on one element of a feature set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MatchExpression {
    /// The operator.
    pub op: MatchOp,
    /// Its operands.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub value: Vec<String>,
}

/// The operators of a [`MatchExpression`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MatchOp {
    /// The value is one of the operands.
    In,
    /// The value is none of the operands.
    NotIn,
    /// The value matches one of the regular expressions.
    InRegexp,
    /// The element exists.
    Exists,
    /// The element does not exist.
    DoesNotExist,
    /// Greater than the operand.
    Gt,
    /// Less than the operand.
    Lt,
    /// Between the two operands.
    GtLt,
    /// The value is true.
    IsTrue,
    /// The value is false.
    IsFalse,
}

fn expr(op: MatchOp, value: &[&str]) -> MatchExpression {
    MatchExpression {
        op,
        value: value.iter().map(|v| (*v).to_owned()).collect(),
    }
}

fn hopper_gpu() -> FeatureMatcherTerm {
    FeatureMatcherTerm {
        feature: "pci.device".to_owned(),
        match_expressions: BTreeMap::from([
            ("vendor".to_owned(), expr(MatchOp::In, &["10de"])),
            ("device".to_owned(), expr(MatchOp::In, &CC_CAPABLE_HOPPER)),
        ]),
    }
}

fn tee_rule(name: &str, element: &str, tee: &str) -> Rule {
    Rule {
        name: name.to_owned(),
        labels: BTreeMap::from([
            ("nvidia.com/cc.capable".to_owned(), "true".to_owned()),
            (
                format!("feature.node.kubernetes.io/kata-gpu.{tee}-hopper"),
                "true".to_owned(),
            ),
        ]),
        match_features: vec![
            FeatureMatcherTerm {
                feature: "cpu.security".to_owned(),
                match_expressions: BTreeMap::from([(
                    element.to_owned(),
                    expr(MatchOp::IsTrue, &[]),
                )]),
            },
            hopper_gpu(),
        ],
    }
}

/// The rule set: SEV-SNP hosts and TDX hosts with a CC-capable Hopper GPU get
/// `nvidia.com/cc.capable=true` and `feature.node.kubernetes.io/kata-gpu.<tee>-hopper=true`.
pub fn node_feature_rule() -> NodeFeatureRule {
    NodeFeatureRule {
        api_version: API_VERSION.to_owned(),
        kind: KIND.to_owned(),
        metadata: ObjectMeta {
            name: Some("kata-gpu-confidential-hopper".to_owned()),
            labels: Some(labels(None)),
            ..ObjectMeta::default()
        },
        spec: NodeFeatureRuleSpec {
            rules: vec![
                tee_rule(
                    "kata-gpu: AMD SEV-SNP host with a CC-capable Hopper GPU",
                    "sev.snp.enabled",
                    "snp",
                ),
                tee_rule(
                    "kata-gpu: Intel TDX host with a CC-capable Hopper GPU",
                    "tdx.enabled",
                    "tdx",
                ),
            ],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_list_is_the_shims() {
        let ours: Vec<u16> = CC_CAPABLE_HOPPER
            .iter()
            .map(|d| u16::from_str_radix(d, 16).expect("hex"))
            .collect();
        assert_eq!(ours, kata_gpu_plan::sandbox::CC_CAPABLE_GPUS);
    }

    #[test]
    fn rules_match_tee_and_gpu() {
        let nfr = node_feature_rule();
        let v = serde_json::to_value(&nfr).expect("json");
        assert_eq!(v["apiVersion"], API_VERSION);
        let rule = &v["spec"]["rules"][0];
        assert_eq!(
            rule["matchFeatures"][0]["matchExpressions"]["sev.snp.enabled"]["op"],
            "IsTrue"
        );
        assert!(
            rule["matchFeatures"][0]["matchExpressions"]["sev.snp.enabled"]
                .get("value")
                .is_none()
        );
        assert_eq!(
            rule["matchFeatures"][1]["matchExpressions"]["vendor"]["value"][0],
            "10de"
        );
        assert_eq!(
            v["spec"]["rules"][1]["labels"]["feature.node.kubernetes.io/kata-gpu.tdx-hopper"],
            "true"
        );
    }
}
