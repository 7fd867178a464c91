//! Chat templates: Jinja (minijinja) with the Python-compatible methods Hugging Face templates
//! use (`.strip()`, `.startswith()`, …), `raise_exception`, and `strftime_now`.

use minijinja::{Environment, ErrorKind, Value};
use serde::Serialize;

/// Why a chat template could not be compiled, or messages not rendered with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("invalid chat template: {0}")]
    Invalid(String),
    /// Bad messages for this template, or the template raised.
    #[error("chat template: {0}")]
    Render(String),
}

/// The variables the server sets for every template.
const RESERVED: [&str; 5] = [
    "messages",
    "tools",
    "add_generation_prompt",
    "bos_token",
    "eos_token",
];

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

fn raise_exception(msg: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

fn strftime_now(fmt: String) -> String {
    // Templates use this for "today's date"; render a UTC date without extra dependencies.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let (y, m, d) = civil_from_days(days);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    fmt.replace("%Y", &y.to_string())
        .replace("%m", &format!("{m:02}"))
        .replace("%d", &format!("{d:02}"))
        .replace("%B", MONTHS[(m - 1) as usize])
        .replace("%b", &MONTHS[(m - 1) as usize][..3])
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl ChatTemplate {
    pub fn new(source: &str, bos: Option<&str>, eos: Option<&str>) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| TemplateError::Invalid(e.to_string()))?;
        Ok(ChatTemplate {
            env,
            bos: bos.unwrap_or_default().to_string(),
            eos: eos.unwrap_or_default().to_string(),
        })
    }

    /// Render `messages` (OpenAI-shaped JSON values) into the prompt text. `kwargs` are more
    /// template variables (a request's `chat_template_kwargs`, e.g. Qwen3's
    /// `enable_thinking`); they cannot replace the ones set here.
    pub fn render<M: Serialize>(
        &self,
        messages: &[M],
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
        kwargs: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Result<String, TemplateError> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| TemplateError::Render(e.to_string()))?;
        let base = minijinja::context! {
            messages => messages,
            tools => tools,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos,
            eos_token => self.eos,
        };
        let ctx = match kwargs {
            Some(k) => {
                if let Some(name) = RESERVED.iter().find(|r| k.contains_key(**r)) {
                    return Err(TemplateError::Render(format!(
                        "chat_template_kwargs cannot set `{name}`"
                    )));
                }
                minijinja::context! { ..base, ..Value::from_serialize(k) }
            }
            None => base,
        };
        tmpl.render(ctx)
            .map_err(|e| TemplateError::Render(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_with_python_helpers_and_raises() {
        let t = ChatTemplate::new(
            "{{ bos_token }}{% for m in messages %}{% if m['role'] not in ['user','assistant'] %}{{ raise_exception('bad role ' + m['role']) }}{% endif %}[{{ m['role'].upper() }}]{{ m['content'].strip() }}{% endfor %}{% if add_generation_prompt %}>{% endif %}",
            Some("<s>"),
            None,
        )
        .unwrap();
        let out = t
            .render(
                &[json!({"role":"user","content":"  hi "})],
                None,
                true,
                None,
            )
            .unwrap();
        assert_eq!(out, "<s>[USER]hi>");
        let err = t
            .render(&[json!({"role":"robot","content":"x"})], None, false, None)
            .unwrap_err();
        assert!(
            matches!(&err, TemplateError::Render(m) if m.contains("bad role robot")),
            "{err}"
        );
    }

    /// What Qwen3's template does with `enable_thinking` (an empty think block closes the
    /// reasoning when it is false), with the Python string methods such templates use.
    #[test]
    fn template_kwargs_reach_the_template_and_cannot_replace_its_variables() {
        let t = ChatTemplate::new(
            "{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + m.content.lstrip('\\n').split('</think>')[-1] + '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}",
            None,
            None,
        )
        .unwrap();
        let msgs = [json!({"role":"user","content":"\nhi"})];
        let plain = t.render(&msgs, None, true, None).unwrap();
        assert_eq!(
            plain,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        let off = serde_json::Map::from_iter([("enable_thinking".into(), json!(false))]);
        let no_think = t.render(&msgs, None, true, Some(&off)).unwrap();
        assert_eq!(no_think, format!("{plain}<think>\n\n</think>\n\n"));
        let on = serde_json::Map::from_iter([("enable_thinking".into(), json!(true))]);
        assert_eq!(t.render(&msgs, None, true, Some(&on)).unwrap(), plain);
        let bad = serde_json::Map::from_iter([("messages".into(), json!([]))]);
        let e = t.render(&msgs, None, true, Some(&bad)).unwrap_err();
        assert!(e.to_string().contains("cannot set `messages`"), "{e}");
    }

    /// The constructs Qwen3's template is built of (as its tokenizer_config.json writes them):
    /// a reversed slice, `namespace`, `is string`, `tojson`, chained Python string methods and
    /// loop variables.
    #[test]
    fn qwen3_template_constructs_render() {
        let t = ChatTemplate::new(
            "{%- set ns = namespace(last_query_index=messages|length - 1) %}\
             {%- for m in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}\
             {%- if m.role == 'user' and m.content is string and not m.content.startswith('<tool_response>') %}\
             {%- set ns.last_query_index = index %}{%- break %}{%- endif %}{%- endfor %}\
             {{- ns.last_query_index }}|\
             {%- for m in messages %}{%- if m.content is string %}\
             {{- m.content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') }}\
             {%- endif %}{{- '|' if not loop.last }}{%- endfor %}|{{ tools[0] | tojson }}",
            None,
            None,
        )
        .unwrap();
        let msgs = [
            json!({"role": "user", "content": "q1"}),
            json!({"role": "assistant", "content": "<think>\nwhy\n</think>\n\nans"}),
            json!({"role": "user", "content": "<tool_response>x</tool_response>"}),
        ];
        let tools = json!([{"function": {"name": "f"}}]);
        let out = t.render(&msgs, Some(&tools), false, None).unwrap();
        assert_eq!(
            out,
            r#"0|q1|why|<tool_response>x</tool_response>|{"function":{"name":"f"}}"#
        );
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_000), (2024, 10, 4));
    }

    #[test]
    fn invalid_template_is_an_error() {
        assert!(ChatTemplate::new("{% for %}", None, None).is_err());
    }
}
