//! Parameter groups chosen by parameter *name*: which parameters decay, and at which lr.

use std::fmt;

use burnish_params::ParamInfo;
use serde::{Deserialize, Serialize};

use crate::OptimError;

/// How a [`GroupRule`] selects parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Matcher {
    /// transformers' no-decay rule: the parameter sits directly in a normalization module,
    /// or its lower-cased path contains `bias`, `layernorm` or `rmsnorm`, or has a `norm`
    /// component, or a component ending in `_norm`.
    HfNoDecay,
    /// A glob over the full dotted path, where `*` matches any run of characters
    /// (including dots): `encoder.layers.*.attention.*`, `*.bias`.
    Glob(String),
}

fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            backtrack = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((star, matched)) = backtrack {
            pi = star + 1;
            ti = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

fn hf_no_decay(info: &ParamInfo) -> bool {
    if info.in_norm_module() {
        return true;
    }
    let lower = info.path.to_lowercase();
    if ["bias", "layernorm", "rmsnorm"]
        .iter()
        .any(|needle| lower.contains(needle))
    {
        return true;
    }
    // `(^|\.)norm($|\.)` and `_norm($|\.)`: a path component equal to `norm` or ending in
    // `_norm`.
    lower
        .split('.')
        .any(|part| part == "norm" || part.ends_with("_norm"))
}

impl Matcher {
    /// Whether this matcher selects the parameter.
    pub fn matches(&self, info: &ParamInfo) -> bool {
        match self {
            Matcher::HfNoDecay => hf_no_decay(info),
            Matcher::Glob(pattern) => glob_match(pattern, &info.path),
        }
    }
}

/// One rule of a [`ParamGroups`] list: parameters it matches get its decay and lr scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRule {
    /// Name of the group, shown when listing membership.
    pub name: String,
    /// Which parameters belong to the group.
    pub matcher: Matcher,
    /// Weight decay of the group; `None` keeps the optimizer's.
    #[serde(default)]
    pub weight_decay: Option<f64>,
    /// Multiplier of the scheduled learning rate for the group.
    #[serde(default = "one")]
    pub lr_scale: f64,
}

fn one() -> f64 {
    1.0
}

impl GroupRule {
    /// transformers' no-decay group: biases and normalization weights get weight decay 0.
    pub fn hf_no_decay() -> Self {
        GroupRule {
            name: "no_decay".to_owned(),
            matcher: Matcher::HfNoDecay,
            weight_decay: Some(0.0),
            lr_scale: 1.0,
        }
    }
}

/// The settings one parameter trains with.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupAssignment {
    /// Name of the group that claimed the parameter (`"default"` when no rule matched).
    pub group: String,
    /// Weight decay applied to the parameter.
    pub weight_decay: f64,
    /// Multiplier of the scheduled learning rate.
    pub lr_scale: f64,
}

impl fmt::Display for GroupAssignment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (weight_decay {}, lr x{})",
            self.group, self.weight_decay, self.lr_scale
        )
    }
}

/// An ordered list of [`GroupRule`]s: the first rule that matches a parameter decides its
/// group; parameters no rule matches train with the optimizer's own settings.
///
/// The default is transformers' Trainer grouping, `[GroupRule::hf_no_decay()]`.
///
/// ```
/// use burnish_optim::{GroupRule, Matcher, ParamGroups};
/// // Head trains at 10x the lr, no decay on biases and norms.
/// let groups = ParamGroups::new(vec![
///     GroupRule::hf_no_decay(),
///     GroupRule { name: "head".into(), matcher: Matcher::Glob("classifier.*".into()),
///                 weight_decay: None, lr_scale: 10.0 },
/// ]);
/// # let _ = groups;
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ParamGroups {
    rules: Vec<GroupRule>,
}

impl Default for ParamGroups {
    fn default() -> Self {
        ParamGroups::new(vec![GroupRule::hf_no_decay()])
    }
}

impl ParamGroups {
    /// Groups from rules, tried in order.
    pub fn new(rules: Vec<GroupRule>) -> Self {
        ParamGroups { rules }
    }

    /// No rules: every parameter decays with the optimizer's settings (torch's plain AdamW).
    pub fn all_decay() -> Self {
        ParamGroups::new(Vec::new())
    }

    /// Checks every rule: `lr_scale` finite and > 0, `weight_decay` finite and ≥ 0.
    ///
    /// # Errors
    /// [`OptimError::InvalidHyperParameter`] with field `lr_scale` or `weight_decay`.
    pub fn validate(&self) -> Result<(), OptimError> {
        for rule in &self.rules {
            let decay = rule.weight_decay.unwrap_or(0.0);
            for (field, value, ok) in [
                ("lr_scale", rule.lr_scale, rule.lr_scale > 0.0),
                ("weight_decay", decay, decay >= 0.0),
            ] {
                if !(ok && value.is_finite()) {
                    return Err(OptimError::InvalidHyperParameter { field, value });
                }
            }
        }
        Ok(())
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[GroupRule] {
        &self.rules
    }

    /// The group of one parameter, given the optimizer's default weight decay.
    pub fn assign(&self, info: &ParamInfo, default_weight_decay: f64) -> GroupAssignment {
        match self.rules.iter().find(|rule| rule.matcher.matches(info)) {
            Some(rule) => GroupAssignment {
                group: rule.name.clone(),
                weight_decay: rule.weight_decay.unwrap_or(default_weight_decay),
                lr_scale: rule.lr_scale,
            },
            None => GroupAssignment {
                group: "default".to_owned(),
                weight_decay: default_weight_decay,
                lr_scale: 1.0,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(path: &str, owner: &str) -> ParamInfo {
        ParamInfo {
            path: path.to_owned(),
            owner: owner.to_owned(),
            shape: vec![1],
        }
    }

    #[test]
    fn hf_rule_matches_transformers_names() {
        let no_decay = [
            (
                "bert.encoder.layer.0.attention.output.LayerNorm.weight",
                "X",
            ),
            ("bert.embeddings.LayerNorm.bias", "X"),
            ("classifier.bias", "Linear"),
            ("model.norm.weight", "X"),
            ("model.layers.0.input_layernorm.weight", "X"),
            ("model.layers.0.post_attention_layernorm.weight", "X"),
            ("transformer.ln_f.q_norm.weight", "X"),
            ("encoder.layers.0.attn_ln.gamma", "LayerNorm"),
            ("encoder.final.gamma", "RmsNorm"),
        ];
        for (path, owner) in no_decay {
            assert!(hf_no_decay(&info(path, owner)), "{path} should not decay");
        }
        let decay = [
            ("bert.embeddings.word_embeddings.weight", "Embedding"),
            ("model.layers.0.self_attn.q_proj.weight", "Linear"),
            ("lm_head.weight", "Linear"),
            ("normalizer.weight", "Linear"),
            ("model.enorm.weight", "Linear"),
        ];
        for (path, owner) in decay {
            assert!(!hf_no_decay(&info(path, owner)), "{path} should decay");
        }
    }

    #[test]
    fn glob_matches_whole_path() {
        assert!(glob_match("classifier.*", "classifier.weight"));
        assert!(glob_match("*.bias", "a.b.bias"));
        assert!(glob_match("enc.*.attn.*", "enc.3.attn.q.weight"));
        assert!(!glob_match("*.bias", "a.bias.x"));
        assert!(!glob_match("classifier.*", "x.classifier.weight"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXbYbZc"));
    }

    #[test]
    fn first_matching_rule_wins() {
        let groups = ParamGroups::new(vec![
            GroupRule::hf_no_decay(),
            GroupRule {
                name: "head".into(),
                matcher: Matcher::Glob("classifier.*".into()),
                weight_decay: None,
                lr_scale: 10.0,
            },
        ]);
        let bias = groups.assign(&info("classifier.bias", "Linear"), 0.01);
        assert_eq!((bias.group.as_str(), bias.weight_decay), ("no_decay", 0.0));
        let w = groups.assign(&info("classifier.weight", "Linear"), 0.01);
        assert_eq!(
            (w.group.as_str(), w.weight_decay, w.lr_scale),
            ("head", 0.01, 10.0)
        );
        let other = groups.assign(&info("encoder.weight", "Linear"), 0.01);
        assert_eq!(other.group, "default");
    }
}
