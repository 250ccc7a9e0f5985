//! The tokenizer's chat template (Jinja, as transformers' `apply_chat_template` renders it).

use std::path::{Path, PathBuf};

use minijinja::{Environment, Error, ErrorKind, context};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::LoadError;

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl Message {
    fn to_value(&self) -> minijinja::Value {
        minijinja::Value::from(std::collections::BTreeMap::from([
            ("role", self.role.clone()),
            ("content", self.content.clone()),
        ]))
    }
}

/// A chat template read from a model directory: `chat_template.jinja`, or the
/// `chat_template` field of `tokenizer_config.json` (a string, or a list of named templates
/// of which `default` is used).
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
    path: PathBuf,
}

fn token_field(config: &Value, field: &str) -> String {
    match config.get(field) {
        Some(Value::String(s)) => s.clone(),
        // Older files store `{"content": "<s>", ...}` objects.
        Some(Value::Object(o)) => o
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    }
}

impl ChatTemplate {
    /// Reads the template of `dir`; `Ok(None)` when the directory has none.
    ///
    /// # Errors
    /// [`LoadError::Io`] or [`LoadError::Format`] for unreadable files.
    pub fn from_dir(dir: &Path) -> Result<Option<Self>, LoadError> {
        let config_path = dir.join("tokenizer_config.json");
        let config: Value = if config_path.is_file() {
            let text =
                std::fs::read_to_string(&config_path).map_err(LoadError::io(&config_path))?;
            serde_json::from_str(&text)
                .map_err(|e| LoadError::format(&config_path, e.to_string()))?
        } else {
            Value::Null
        };
        let jinja = dir.join("chat_template.jinja");
        let (source, path) = if jinja.is_file() {
            let text = std::fs::read_to_string(&jinja).map_err(LoadError::io(&jinja))?;
            (text, jinja)
        } else {
            let source = match config.get("chat_template") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(named)) => named
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        LoadError::format(&config_path, "chat_template list has no `default`")
                    })?
                    .to_owned(),
                _ => return Ok(None),
            };
            (source, config_path)
        };
        let template = ChatTemplate {
            source,
            bos_token: token_field(&config, "bos_token"),
            eos_token: token_field(&config, "eos_token"),
            path,
        };
        // Compile once now so a broken template fails at load, naming its file.
        template.environment()?;
        Ok(Some(template))
    }

    /// A template from its Jinja source (for tests and custom formats).
    pub fn new(source: impl Into<String>, bos_token: &str, eos_token: &str) -> Self {
        ChatTemplate {
            source: source.into(),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
            path: PathBuf::from("<chat template>"),
        }
    }

    fn environment(&self) -> Result<Environment<'_>, LoadError> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template("chat", &self.source)
            .map_err(|e| LoadError::format(&self.path, format!("chat template: {e}")))?;
        Ok(env)
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends with the opening of
    /// an assistant turn, as transformers' `apply_chat_template(..., tokenize=False)`.
    ///
    /// # Errors
    /// [`LoadError::Format`] naming the template's file when rendering fails (including
    /// the template's own `raise_exception`).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, LoadError> {
        let env = self.environment()?;
        let template = env
            .get_template("chat")
            .map_err(|e| LoadError::format(&self.path, e.to_string()))?;
        template
            .render(context! {
                messages => messages.iter().map(Message::to_value).collect::<Vec<_>>(),
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| LoadError::format(&self.path, format!("chat template: {e}")))
    }

    /// The end-of-sequence token named by `tokenizer_config.json` (empty when none).
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'].strip() + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    fn msg(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn renders_chatml_with_python_string_methods() {
        let t = ChatTemplate::new(CHATML, "", "<|im_end|>");
        let out = t
            .render(&[msg("user", " hi "), msg("assistant", "hello")], false)
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
        );
        let prompt = t.render(&[msg("user", "hi")], true).unwrap();
        assert!(prompt.ends_with("<|im_start|>assistant\n"));
        assert!(out.starts_with(prompt.as_str()));
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new(
            "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}",
            "",
            "",
        );
        let err = t.render(&[msg("system", "x")], false).unwrap_err();
        assert!(err.to_string().contains("user first"), "{err}");
    }

    #[test]
    fn reads_the_template_from_tokenizer_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            serde_json::json!({"chat_template": "{{ bos_token }}{{ messages[0].content }}", "bos_token": {"content": "<s>"}}).to_string(),
        )
        .unwrap();
        let t = ChatTemplate::from_dir(dir.path()).unwrap().unwrap();
        assert_eq!(t.render(&[msg("user", "x")], false).unwrap(), "<s>x");
        let empty = tempfile::tempdir().unwrap();
        assert!(ChatTemplate::from_dir(empty.path()).unwrap().is_none());
        std::fs::write(empty.path().join("chat_template.jinja"), "{% for %}").unwrap();
        let err = ChatTemplate::from_dir(empty.path()).unwrap_err();
        assert!(err.to_string().contains("chat_template.jinja"), "{err}");
    }
}
