//! The worker's `--enable-metrics` flags (SGLang's names and bucket syntax), turned into the
//! engine's metrics configuration.

use clap::Args;
use dynamo_engine::metrics::{buckets, MetricsConfig};

/// Engine metrics (`sglang:` families on the system port's /metrics).
#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Keep the engine's `sglang:` metrics (served on DYN_SYSTEM_PORT's /metrics).
    #[arg(long)]
    pub enable_metrics: bool,
    /// Buckets of sglang:time_to_first_token_seconds (seconds, ascending).
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    pub bucket_time_to_first_token: Option<Vec<f64>>,
    /// Buckets of sglang:inter_token_latency_seconds (seconds, ascending).
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    pub bucket_inter_token_latency: Option<Vec<f64>>,
    /// Buckets of sglang:e2e_request_latency_seconds (seconds, ascending).
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    pub bucket_e2e_request_latency: Option<Vec<f64>>,
    /// Also keep sglang:prompt_tokens_histogram and sglang:generation_tokens_histogram.
    #[arg(long)]
    pub collect_tokens_histogram: bool,
    /// Buckets of sglang:prompt_tokens_histogram: `default`, `tse MIDDLE BASE COUNT`
    /// (MIDDLE ± BASE^i for i in 1..=COUNT), `custom B1 B2 ...`, or just `B1 B2 ...`.
    #[arg(long, num_args = 1..)]
    pub prompt_tokens_buckets: Option<Vec<String>>,
    /// Buckets of sglang:generation_tokens_histogram (same syntax as --prompt-tokens-buckets).
    #[arg(long, num_args = 1..)]
    pub generation_tokens_buckets: Option<Vec<String>>,
}

/// Token-count buckets from SGLang's rule syntax.
fn token_buckets(flag: &str, words: &[String]) -> anyhow::Result<Vec<f64>> {
    let nums = |ws: &[String]| -> anyhow::Result<Vec<f64>> {
        ws.iter()
            .map(|w| {
                w.parse::<f64>()
                    .map_err(|_| anyhow::anyhow!("{flag}: {w:?} is not a number"))
            })
            .collect()
    };
    let mut b = match words.first().map(String::as_str) {
        None | Some("default") => return Ok(buckets::TOKENS.to_vec()),
        Some("tse") => {
            let v = nums(&words[1..])?;
            let [middle, base, count] = v[..] else {
                anyhow::bail!("{flag}: `tse` takes MIDDLE BASE COUNT");
            };
            if base <= 1.0 || count < 1.0 {
                anyhow::bail!("{flag}: `tse` needs BASE > 1 and COUNT >= 1");
            }
            let mut b = vec![middle];
            for i in 1..=count as i32 {
                let off = base.powi(i);
                b.push(middle + off);
                if middle - off > 0.0 {
                    b.push(middle - off);
                }
            }
            b
        }
        Some("custom") => nums(&words[1..])?,
        Some(_) => nums(words)?,
    };
    b.sort_by(f64::total_cmp);
    b.dedup();
    Ok(b)
}

impl MetricsArgs {
    /// `None` unless --enable-metrics.
    pub fn config(&self, model_name: &str) -> anyhow::Result<Option<MetricsConfig>> {
        if !self.enable_metrics {
            return Ok(None);
        }
        let mut c = MetricsConfig::new(model_name);
        if let Some(b) = &self.bucket_time_to_first_token {
            c.ttft_buckets = b.clone();
        }
        if let Some(b) = &self.bucket_inter_token_latency {
            c.itl_buckets = b.clone();
        }
        if let Some(b) = &self.bucket_e2e_request_latency {
            c.e2e_buckets = b.clone();
        }
        c.collect_tokens_histogram = self.collect_tokens_histogram;
        if let Some(w) = &self.prompt_tokens_buckets {
            c.prompt_tokens_buckets = token_buckets("--prompt-tokens-buckets", w)?;
        }
        if let Some(w) = &self.generation_tokens_buckets {
            c.generation_tokens_buckets = token_buckets("--generation-tokens-buckets", w)?;
        }
        Ok(Some(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn bucket_rules() {
        let f = "--prompt-tokens-buckets";
        assert_eq!(token_buckets(f, &w("default")).unwrap(), buckets::TOKENS);
        assert_eq!(
            token_buckets(f, &w("tse 1000 2 3")).unwrap(),
            vec![992.0, 996.0, 998.0, 1000.0, 1002.0, 1004.0, 1008.0]
        );
        assert_eq!(
            token_buckets(f, &w("custom 50 10 100")).unwrap(),
            vec![10.0, 50.0, 100.0]
        );
        assert_eq!(token_buckets(f, &w("5 1")).unwrap(), vec![1.0, 5.0]);
        let e = token_buckets(f, &w("tse 1 2")).unwrap_err().to_string();
        assert!(e.contains("--prompt-tokens-buckets"), "{e}");
        assert!(token_buckets(f, &w("custom x")).is_err());
    }
}
