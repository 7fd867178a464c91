//! A parsed request before it becomes jobs: its model, parameters and prompt (chat messages,
//! or completions prompts, possibly a batch), and the prompt's tokenization into one entry per
//! generation, with the echo each completions prompt starts its choices with.

use super::pipeline::Echo;
use crate::openai::request::{GenParams, PromptInput, Prompts};
use crate::openai::ApiError;
use crate::preprocess::{Preprocessor, TemplateKwargs};

pub(super) struct Parsed {
    pub model: String,
    /// Body size: long prompts are tokenized on the blocking pool.
    pub body_len: usize,
    pub params: GenParams,
    pub prompt: Prompt,
}

pub(super) enum Prompt {
    /// Normalized messages and the request's `chat_template_kwargs`.
    Chat(Vec<serde_json::Value>, Option<TemplateKwargs>),
    /// One prompt or a batch.
    Completion(Prompts),
}

/// One generation's prompt: its token ids, and (completions with `echo`) what starts each of
/// its choices.
pub(super) type Tokenized = (Vec<u32>, Option<Echo>);

/// Tokenize every prompt of the request, in order.
pub(super) fn tokenize(
    pre: &Preprocessor,
    prompt: Prompt,
    echo: bool,
) -> Result<Vec<Tokenized>, ApiError> {
    match prompt {
        Prompt::Chat(msgs, kwargs) => Ok(vec![(pre.tokenize_chat(&msgs, kwargs.as_ref())?, None)]),
        Prompt::Completion(batch) => batch
            .0
            .into_iter()
            .map(|input| {
                let ids = pre.tokenize(&input)?;
                let echo = echo.then(|| echo_of(pre, input, &ids));
                Ok((ids, echo))
            })
            .collect(),
    }
}

/// The echo of a completions prompt: its text as given, or a token prompt decoded.
fn echo_of(pre: &Preprocessor, input: PromptInput, ids: &[u32]) -> Echo {
    let text = match input {
        PromptInput::Text(t) => t,
        PromptInput::Tokens(_) => pre.tokenizer.decode(ids, false).unwrap_or_default(),
    };
    Echo {
        text: text.into(),
        ids: ids.into(),
    }
}
