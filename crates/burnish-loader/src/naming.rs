//! Hugging Face parameter names ↔ burnish module paths, per architecture.

use burnish_params::ParamInfo;

/// How an architecture's module paths map to checkpoint names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// BERT (`bert.` prefix in task checkpoints): `self_attn` ↔ `self`,
    /// `layer_norm` ↔ `LayerNorm`, `gamma`/`beta` ↔ `weight`/`bias`.
    Bert,
    /// RoBERTa: as BERT, with the `roberta.` prefix.
    Roberta,
    /// Llama family: module paths are the HF names of `LlamaForCausalLM`
    /// (`model.layers.0.self_attn.q_proj.weight`, `lm_head.weight`).
    Llama,
}

impl Naming {
    /// The HF name this parameter is saved under (the canonical spelling).
    pub fn hf_name(self, info: &ParamInfo) -> String {
        match self {
            Naming::Llama => info.path.clone(),
            Naming::Bert | Naming::Roberta => {
                let norm = info.in_norm_module();
                let parts: Vec<&str> = info.path.split('.').collect();
                let last = parts.len().saturating_sub(1);
                parts
                    .iter()
                    .enumerate()
                    .map(|(i, part)| match *part {
                        "self_attn" => "self",
                        "layer_norm" => "LayerNorm",
                        "gamma" if norm && i == last => "weight",
                        "beta" if norm && i == last => "bias",
                        other => other,
                    })
                    .collect::<Vec<_>>()
                    .join(".")
            }
        }
    }

    /// Names to look for, in order: the canonical name, with the task-model prefix added
    /// (or removed, for a head module's `bert.` backbone), and legacy spellings (BERT checkpoints from TF conversions store LayerNorm
    /// `gamma`/`beta`; a bare `LlamaModel` has no `model.` prefix).
    pub fn candidates(self, info: &ParamInfo) -> Vec<String> {
        let name = self.hf_name(info);
        let mut out = vec![name.clone()];
        match self {
            Naming::Bert | Naming::Roberta => {
                let prefix = if self == Naming::Bert {
                    "bert."
                } else {
                    "roberta."
                };
                // A head module's backbone lives under the prefix; a bare encoder
                // checkpoint (all-MiniLM-L6-v2) has none, a task checkpoint has it.
                match name.strip_prefix(prefix) {
                    Some(bare) => out.push(bare.to_owned()),
                    None => out.push(format!("{prefix}{name}")),
                }
                if info.in_norm_module() {
                    let legacy = info
                        .path
                        .split('.')
                        .map(|p| match p {
                            "self_attn" => "self",
                            "layer_norm" => "LayerNorm",
                            other => other,
                        })
                        .collect::<Vec<_>>()
                        .join(".");
                    let other = match legacy.strip_prefix(prefix) {
                        Some(bare) => bare.to_owned(),
                        None => format!("{prefix}{legacy}"),
                    };
                    out.push(legacy);
                    out.push(other);
                }
            }
            Naming::Llama => {
                if let Some(bare) = name.strip_prefix("model.") {
                    out.push(bare.to_owned());
                }
            }
        }
        out
    }

    /// Whether the checkpoint stores this parameter transposed: torch's `Linear` weight is
    /// `[out, in]`, burn's is `[in, out]`.
    pub fn transposed(self, info: &ParamInfo) -> bool {
        info.owner == "Linear" && info.leaf() == "weight"
    }

    /// The name prefixes a task checkpoint of this family may put before the backbone.
    pub fn prefixes(self) -> &'static [&'static str] {
        match self {
            Naming::Bert => &["bert."],
            Naming::Roberta => &["roberta."],
            Naming::Llama => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(path: &str, owner: &str) -> ParamInfo {
        ParamInfo {
            path: path.into(),
            owner: owner.into(),
            shape: vec![],
        }
    }

    #[test]
    fn bert_names() {
        let n = Naming::Bert;
        assert_eq!(
            n.hf_name(&info(
                "encoder.layer.3.attention.self_attn.query.weight",
                "Linear"
            )),
            "encoder.layer.3.attention.self.query.weight"
        );
        assert_eq!(
            n.hf_name(&info(
                "encoder.layer.0.output.layer_norm.gamma",
                "LayerNorm"
            )),
            "encoder.layer.0.output.LayerNorm.weight"
        );
        let c = n.candidates(&info("embeddings.layer_norm.beta", "LayerNorm"));
        assert_eq!(
            c,
            [
                "embeddings.LayerNorm.bias",
                "bert.embeddings.LayerNorm.bias",
                "embeddings.LayerNorm.beta",
                "bert.embeddings.LayerNorm.beta"
            ]
        );
        let head = n.candidates(&info(
            "bert.encoder.layer.0.output.layer_norm.gamma",
            "LayerNorm",
        ));
        assert_eq!(
            head[..2],
            [
                "bert.encoder.layer.0.output.LayerNorm.weight",
                "encoder.layer.0.output.LayerNorm.weight"
            ]
        );
        assert!(n.transposed(&info("pooler.dense.weight", "Linear")));
        assert!(!n.transposed(&info("embeddings.word_embeddings.weight", "Embedding")));
    }

    #[test]
    fn llama_names() {
        let c = Naming::Llama.candidates(&info("model.layers.0.self_attn.q_proj.weight", "Linear"));
        assert_eq!(
            c,
            [
                "model.layers.0.self_attn.q_proj.weight",
                "layers.0.self_attn.q_proj.weight"
            ]
        );
        assert!(!Naming::Llama.transposed(&info("model.norm.weight", "RmsNorm")));
    }
}
