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
    /// DeBERTa-v2/v3: as BERT, with the `deberta.` prefix.
    Deberta,
    /// ModernBERT: `Wqkv`, `Wo`, `Wi` for `wqkv`, `wo`, `wi`, `weight`/`bias` of norms,
    /// the `model.` prefix for a head's encoder.
    ModernBert,
    /// DistilBERT in a BERT module: `distilbert.` for the head's `bert.`,
    /// `transformer.layer.N` with `q_lin`/`k_lin`/`v_lin`/`out_lin`, `sa_layer_norm`,
    /// `ffn.lin1`/`ffn.lin2`, `output_layer_norm`, and the pooler as `pre_classifier`.
    DistilBert,
    /// Llama family: module paths are the HF names of `LlamaForCausalLM`
    /// (`model.layers.0.self_attn.q_proj.weight`, `lm_head.weight`).
    Llama,
}

impl Naming {
    /// The HF name this parameter is saved under (the canonical spelling).
    pub fn hf_name(self, info: &ParamInfo) -> String {
        match self {
            Naming::Llama => info.path.clone(),
            Naming::DistilBert => distilbert_name(&Naming::Bert.hf_name(info)),
            Naming::ModernBert => renamed(info, |part| match part {
                "wqkv" => Some("Wqkv"),
                "wo" => Some("Wo"),
                "wi" => Some("Wi"),
                _ => None,
            }),
            Naming::Bert | Naming::Roberta | Naming::Deberta => renamed(info, |part| match part {
                "self_attn" => Some("self"),
                "layer_norm" => Some("LayerNorm"),
                _ => None,
            }),
        }
    }

    /// Names to look for, in order: the canonical name, with the task-model prefix added
    /// (or removed, for a head module's `bert.` backbone), and legacy spellings (BERT checkpoints from TF conversions store LayerNorm
    /// `gamma`/`beta`; a bare `LlamaModel` has no `model.` prefix).
    pub fn candidates(self, info: &ParamInfo) -> Vec<String> {
        let name = self.hf_name(info);
        let mut out = vec![name.clone()];
        match self {
            Naming::DistilBert => match name.strip_prefix("distilbert.") {
                Some(bare) => out.push(bare.to_owned()),
                None if info.path.starts_with("encoder.")
                    || info.path.starts_with("embeddings.") =>
                {
                    out.push(format!("distilbert.{name}"));
                }
                None => {}
            },
            Naming::Bert | Naming::Roberta | Naming::Deberta | Naming::ModernBert => {
                let prefix = self.prefixes()[0];
                // A head module's backbone lives under the prefix; a bare encoder
                // checkpoint (all-MiniLM-L6-v2) has none, a task checkpoint has it.
                match name.strip_prefix(prefix) {
                    Some(bare) => out.push(bare.to_owned()),
                    None => out.push(format!("{prefix}{name}")),
                }
                if info.in_norm_module() && self != Naming::ModernBert {
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
            Naming::DistilBert => &["distilbert."],
            Naming::Deberta => &["deberta."],
            Naming::ModernBert => &["model."],
            Naming::Llama => &[],
        }
    }
}

/// `info`'s path with each segment `rename` knows replaced, and a norm module's
/// `gamma`/`beta` (burn's names) as `weight`/`bias`.
fn renamed(info: &ParamInfo, rename: impl Fn(&str) -> Option<&'static str>) -> String {
    let norm = info.in_norm_module();
    let parts: Vec<&str> = info.path.split('.').collect();
    let last = parts.len().saturating_sub(1);
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| match *part {
            "gamma" if norm && i == last => "weight",
            "beta" if norm && i == last => "bias",
            other => rename(other).unwrap_or(other),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// A BERT name (`bert.encoder.layer.3.attention.self.query.weight`) as DistilBERT writes
/// it (`distilbert.transformer.layer.3.attention.q_lin.weight`).
fn distilbert_name(bert: &str) -> String {
    let (prefix, rest) = match bert.strip_prefix("bert.") {
        Some(rest) => ("distilbert.", rest),
        None => ("", bert),
    };
    if let Some(leaf) = rest.strip_prefix("pooler.dense.") {
        return format!("pre_classifier.{leaf}");
    }
    let Some((index, inner)) = rest
        .strip_prefix("encoder.layer.")
        .and_then(|layer| layer.split_once('.'))
    else {
        return format!("{prefix}{rest}");
    };
    const RENAMES: [(&str, &str); 8] = [
        ("attention.self.query.", "attention.q_lin."),
        ("attention.self.key.", "attention.k_lin."),
        ("attention.self.value.", "attention.v_lin."),
        ("attention.output.dense.", "attention.out_lin."),
        ("attention.output.LayerNorm.", "sa_layer_norm."),
        ("intermediate.dense.", "ffn.lin1."),
        ("output.dense.", "ffn.lin2."),
        ("output.LayerNorm.", "output_layer_norm."),
    ];
    let inner = RENAMES
        .iter()
        .find_map(|(from, to)| inner.strip_prefix(from).map(|leaf| format!("{to}{leaf}")))
        .unwrap_or_else(|| inner.to_owned());
    format!("{prefix}transformer.layer.{index}.{inner}")
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
    fn distilbert_names() {
        let n = Naming::DistilBert;
        for (path, owner, hf) in [
            (
                "bert.encoder.layer.2.attention.self_attn.value.bias",
                "Linear",
                "distilbert.transformer.layer.2.attention.v_lin.bias",
            ),
            (
                "encoder.layer.0.attention.output.layer_norm.gamma",
                "LayerNorm",
                "transformer.layer.0.sa_layer_norm.weight",
            ),
            (
                "bert.encoder.layer.1.output.layer_norm.beta",
                "LayerNorm",
                "distilbert.transformer.layer.1.output_layer_norm.bias",
            ),
            (
                "bert.encoder.layer.1.intermediate.dense.weight",
                "Linear",
                "distilbert.transformer.layer.1.ffn.lin1.weight",
            ),
            (
                "bert.embeddings.layer_norm.gamma",
                "LayerNorm",
                "distilbert.embeddings.LayerNorm.weight",
            ),
            (
                "bert.pooler.dense.weight",
                "Linear",
                "pre_classifier.weight",
            ),
            ("classifier.bias", "Linear", "classifier.bias"),
        ] {
            assert_eq!(n.hf_name(&info(path, owner)), hf, "{path}");
        }
        let bare = n.candidates(&info("encoder.layer.0.output.dense.weight", "Linear"));
        assert_eq!(
            bare,
            [
                "transformer.layer.0.ffn.lin2.weight",
                "distilbert.transformer.layer.0.ffn.lin2.weight"
            ]
        );
    }

    #[test]
    fn deberta_and_modernbert_names() {
        let d = Naming::Deberta.candidates(&info(
            "deberta.encoder.layer.0.attention.self_attn.pos_key_proj.weight",
            "Linear",
        ));
        assert_eq!(
            d[..2],
            [
                "deberta.encoder.layer.0.attention.self.pos_key_proj.weight",
                "encoder.layer.0.attention.self.pos_key_proj.weight"
            ]
        );
        let m = Naming::ModernBert;
        assert_eq!(
            m.candidates(&info("layers.1.attn.wqkv.weight", "Linear")),
            [
                "layers.1.attn.Wqkv.weight",
                "model.layers.1.attn.Wqkv.weight"
            ]
        );
        assert_eq!(
            m.hf_name(&info("model.final_norm.gamma", "LayerNorm")),
            "model.final_norm.weight"
        );
        assert_eq!(
            m.hf_name(&info("head.norm.gamma", "LayerNorm")),
            "head.norm.weight"
        );
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
