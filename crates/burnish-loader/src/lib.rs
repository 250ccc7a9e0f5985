#![doc = include_str!("../README.md")]

mod chat;
mod error;
mod export;
mod load;
mod naming;
mod safetensors_file;
mod tokenizer;
mod weights;

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burnish_models::{
    BertConfig, BertFlavor, BertModel, DECODER_TYPES, DebertaV2Config, DebertaV2Model, LlamaConfig,
    LlamaForCausalLm, ModelConfig, ModelError, ModernBertModel,
};

pub use chat::{ChatTemplate, Message};
pub use error::LoadError;
pub use export::{TOKENIZER_FILES, export_dir, save_module, write_module};
pub use load::{LoadOptions, LoadReport, load_module};
pub use naming::Naming;
pub use safetensors_file::{FloatDtype, SafetensorsFile, TensorEntry};
pub use tokenizer::{
    Encoded, HfTokenizer, Padding, PairIds, QaWindow, Side, TokenizerConfig, WordIds,
};
pub use weights::Weights;

/// A Hugging Face model directory with its parsed `config.json`.
#[derive(Debug, Clone)]
pub struct HfModelDir {
    path: PathBuf,
    config_json: serde_json::Value,
    config: ModelConfig,
}

/// The index of the encoder or decoder layer a tensor belongs to (`…layer.3.…`,
/// `…layers.3.…`).
fn layer_index(name: &str) -> Option<usize> {
    let mut parts = name.split('.');
    while let Some(part) = parts.next() {
        if part == "layer" || part == "layers" {
            return parts.next()?.parse().ok();
        }
    }
    None
}

impl HfModelDir {
    /// Reads and validates `dir/config.json`.
    ///
    /// # Errors
    /// [`LoadError::MissingFile`], [`LoadError::Io`], or [`LoadError::Config`] naming the
    /// file and the field.
    pub fn open(dir: &Path) -> Result<Self, LoadError> {
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(LoadError::MissingFile {
                path: dir.to_owned(),
                what: "config.json",
            });
        }
        let text = std::fs::read_to_string(&config_path).map_err(LoadError::io(&config_path))?;
        // Editors on Windows start files with a byte-order mark.
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let config = ModelConfig::from_json(text).map_err(|source| LoadError::Config {
            path: config_path.clone(),
            source,
        })?;
        let config_json = serde_json::from_str(text)
            .map_err(|e| LoadError::format(&config_path, e.to_string()))?;
        Ok(HfModelDir {
            path: dir.to_owned(),
            config_json,
            config,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// `config.json` as JSON, to carry unknown fields through an export.
    pub fn config_json(&self) -> &serde_json::Value {
        &self.config_json
    }

    /// The name mapping of this directory's architecture.
    pub fn naming(&self) -> Naming {
        match &self.config {
            ModelConfig::Bert(c) if c.flavor == BertFlavor::Roberta => Naming::Roberta,
            ModelConfig::Bert(c) if c.flavor == BertFlavor::DistilBert => Naming::DistilBert,
            ModelConfig::Bert(_) => Naming::Bert,
            ModelConfig::Deberta(_) => Naming::Deberta,
            ModelConfig::ModernBert(_) => Naming::ModernBert,
            ModelConfig::Llama(_) => Naming::Llama,
        }
    }

    /// Opens the checkpoint's weights and checks `config.json`'s sizes against them, so
    /// that a config describing another (or an absurdly large) model is refused before
    /// anything is allocated.
    ///
    /// # Errors
    /// See [`Weights::open_dir`]; [`LoadError::Format`] naming `config.json` when its
    /// vocabulary, hidden size or layer count does not match the weights.
    pub fn weights(&self) -> Result<Weights, LoadError> {
        let weights = Weights::open_dir(&self.path)?;
        self.check_sizes(&weights)?;
        Ok(weights)
    }

    fn check_sizes(&self, weights: &Weights) -> Result<(), LoadError> {
        let config_path = self.path.join("config.json");
        let [vocab, hidden] = self.config.embedding_shape();
        let layers = self.config.num_layers();
        let embedding = [
            "embeddings.word_embeddings.weight",
            "bert.embeddings.word_embeddings.weight",
            "roberta.embeddings.word_embeddings.weight",
            "distilbert.embeddings.word_embeddings.weight",
            "deberta.embeddings.word_embeddings.weight",
            "embeddings.tok_embeddings.weight",
            "model.embeddings.tok_embeddings.weight",
            "model.embed_tokens.weight",
            "embed_tokens.weight",
        ]
        .into_iter()
        .find_map(|name| Some((name, weights.entry(name)?)));
        if let Some((name, entry)) = embedding
            && entry.shape != [vocab, hidden]
        {
            return Err(LoadError::format(
                &config_path,
                format!(
                    "vocab_size {vocab} × hidden_size {hidden} does not match `{name}` of shape \
                     {:?} in the weights",
                    entry.shape
                ),
            ));
        }
        let held_layers = weights
            .names()
            .iter()
            .filter_map(|name| layer_index(name))
            .max()
            .map_or(0, |i| i + 1);
        if layers > held_layers {
            return Err(LoadError::format(
                &config_path,
                format!("num_hidden_layers is {layers}, but the weights hold {held_layers} layers"),
            ));
        }
        let held: u128 = weights
            .files()
            .iter()
            .flat_map(|file| file.tensors().values())
            .map(|entry| entry.shape.iter().map(|&d| d as u128).product::<u128>())
            .sum();
        let needed = self.config.min_parameters();
        if needed > held {
            return Err(LoadError::format(
                &config_path,
                format!(
                    "its sizes describe a model of at least {needed} parameters, but the \
                     weights hold {held} values"
                ),
            ));
        }
        Ok(())
    }

    fn bert_config(&self) -> Result<&BertConfig, LoadError> {
        match &self.config {
            ModelConfig::Bert(c) => Ok(c),
            other => Err(self.wrong_family(
                "a BERT-family encoder (bert, roberta, xlm-roberta, distilbert)",
                other.model_type(),
            )),
        }
    }

    fn llama_config(&self) -> Result<&LlamaConfig, LoadError> {
        match &self.config {
            ModelConfig::Llama(c) => Ok(c),
            other => {
                Err(self.wrong_family(&format!("a decoder ({DECODER_TYPES})"), other.model_type()))
            }
        }
    }

    /// Builds an encoder of another family with `init` (from the directory's config,
    /// or the family's `config` when `config` picks it) and loads it.
    fn load_encoder<B: Backend, M: burn::module::Module<B>>(
        &self,
        init: impl FnOnce(&ModelConfig) -> Option<Result<M, ModelError>>,
        expected: &str,
        options: &LoadOptions,
    ) -> Result<(M, LoadReport), LoadError> {
        let model = init(&self.config)
            .ok_or_else(|| self.wrong_family(expected, self.config.model_type()))?
            .map_err(|source| LoadError::Config {
                path: self.path.join("config.json"),
                source,
            })?;
        let weights = self.weights()?;
        load_module(model, &weights, self.naming(), options, &self.path)
    }

    /// Builds a DeBERTa-v2/v3 encoder from `config` and loads the directory's weights
    /// (bare or under a task model's `deberta.`).
    ///
    /// # Errors
    /// See [`load_module`]; [`LoadError::Format`] when the directory holds another family.
    pub fn load_deberta_with<B: Backend>(
        &self,
        config: &DebertaV2Config,
        device: &B::Device,
        options: &LoadOptions,
    ) -> Result<(DebertaV2Model<B>, LoadReport), LoadError> {
        self.load_encoder(
            |own| matches!(own, ModelConfig::Deberta(_)).then(|| config.init(device)),
            "a DeBERTa-v2 encoder (deberta-v2)",
            options,
        )
    }

    /// [`load_deberta_with`](Self::load_deberta_with) the directory's own config.
    ///
    /// # Errors
    /// See [`load_module`].
    pub fn load_deberta<B: Backend>(
        &self,
        device: &B::Device,
        options: &LoadOptions,
    ) -> Result<(DebertaV2Model<B>, LoadReport), LoadError> {
        self.load_encoder(
            |own| match own {
                ModelConfig::Deberta(c) => Some(c.init(device)),
                _ => None,
            },
            "a DeBERTa-v2 encoder (deberta-v2)",
            options,
        )
    }

    /// Builds a ModernBERT encoder from the directory's config and loads it (bare or
    /// under a task model's `model.`).
    ///
    /// # Errors
    /// See [`load_module`]; [`LoadError::Format`] when the directory holds another family.
    pub fn load_modernbert<B: Backend>(
        &self,
        device: &B::Device,
        options: &LoadOptions,
    ) -> Result<(ModernBertModel<B>, LoadReport), LoadError> {
        self.load_encoder(
            |own| match own {
                ModelConfig::ModernBert(c) => Some(c.init(device)),
                _ => None,
            },
            "a ModernBERT encoder (modernbert)",
            options,
        )
    }

    fn wrong_family(&self, expected: &str, found: &str) -> LoadError {
        LoadError::format(
            self.path.join("config.json"),
            format!("expected {expected}, config has model_type {found}"),
        )
    }

    /// Builds the encoder from the config and loads it; the pooler is built when the
    /// checkpoint has one. `config` overrides the directory's (to change dropout, say).
    ///
    /// # Errors
    /// See [`load_module`].
    pub fn load_bert_with<B: Backend>(
        &self,
        config: &BertConfig,
        device: &B::Device,
        options: &LoadOptions,
    ) -> Result<(BertModel<B>, LoadReport), LoadError> {
        let weights = self.weights()?;
        let naming = self.naming();
        let has_pooler = std::iter::once("")
            .chain(naming.prefixes().iter().copied())
            .any(|prefix| weights.contains(&format!("{prefix}pooler.dense.weight")));
        let model = config
            .init::<B>(has_pooler, device)
            .map_err(|source| LoadError::Config {
                path: self.path.join("config.json"),
                source,
            })?;
        load_module(model, &weights, naming, options, &self.path)
    }

    /// [`load_bert_with`](Self::load_bert_with) the directory's own config.
    ///
    /// # Errors
    /// See [`load_module`].
    pub fn load_bert<B: Backend>(
        &self,
        device: &B::Device,
        options: &LoadOptions,
    ) -> Result<(BertModel<B>, LoadReport), LoadError> {
        let config = self.bert_config()?.clone();
        self.load_bert_with(&config, device, options)
    }

    /// Loads `tokenizer.json` from the directory with the given settings.
    ///
    /// # Errors
    /// See [`HfTokenizer::from_file`].
    pub fn tokenizer(&self, config: TokenizerConfig) -> Result<HfTokenizer, LoadError> {
        HfTokenizer::from_file(&self.path.join("tokenizer.json"), config)
    }

    /// Builds the decoder with its LM head from the config and loads it.
    ///
    /// # Errors
    /// See [`load_module`].
    pub fn load_llama<B: Backend>(
        &self,
        device: &B::Device,
        options: &LoadOptions,
    ) -> Result<(LlamaForCausalLm<B>, LoadReport), LoadError> {
        let config = self.llama_config()?;
        let weights = self.weights()?;
        let model = config
            .init::<B>(device)
            .map_err(|source| LoadError::Config {
                path: self.path.join("config.json"),
                source,
            })?;
        load_module(model, &weights, Naming::Llama, options, &self.path)
    }
}
