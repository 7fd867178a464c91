//! Disaggregated prefill/decode on the wire: a worker's role in discovery, the bootstrap info
//! a prefill worker hands the frontend (and the frontend forwards to a decode worker), and the
//! control messages of the KV transfer connection between the two workers.

use serde::{Deserialize, Serialize};

#[cfg(test)]
use crate::kv_transfer::KvDtype;
use crate::kv_transfer::KvLayout;

/// `--disaggregation-mode`: what a worker does with a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisaggregationMode {
    /// Aggregated: prefill and decode on the same worker.
    #[default]
    Null,
    /// Computes prompts' KV and serves it to decode workers.
    Prefill,
    /// Pulls prompts' KV from prefill workers and generates.
    Decode,
}

impl DisaggregationMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DisaggregationMode::Null => "null",
            DisaggregationMode::Prefill => "prefill",
            DisaggregationMode::Decode => "decode",
        }
    }
}

impl std::str::FromStr for DisaggregationMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "null" => Ok(DisaggregationMode::Null),
            "prefill" => Ok(DisaggregationMode::Prefill),
            "decode" => Ok(DisaggregationMode::Decode),
            other => Err(format!(
                "unknown disaggregation mode {other:?}; use prefill, decode or null"
            )),
        }
    }
}

/// Where a decode worker fetches a request's KV: the prefill worker's transfer server and the
/// room (a random 63-bit id) the prefill side keeps that request's KV under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapInfo {
    pub bootstrap_host: String,
    pub bootstrap_port: u16,
    pub bootstrap_room: u64,
    /// The prefill engine's `Bootstrap Room` span (a `traceparent`), so the decode engine's
    /// request span joins it; absent when the prefill engine does not trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_traceparent: Option<String>,
}

/// What the decode side says when it opens a transfer connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferHello {
    pub room: u64,
    /// Served model name of the decode worker.
    pub model: String,
    pub layout: KvLayout,
}

/// The prefill side's answer: its own model and layout, and why it refuses (if it does).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferWelcome {
    pub model: String,
    pub layout: KvLayout,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The decode side holds the first `skip_blocks` blocks already (its prefix cache): send the
/// rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferStart {
    pub skip_blocks: u32,
}

/// The end of a room's KV: the token the prefill side sampled after the prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferDone {
    pub first_token: u32,
    /// Blocks of the prompt in all (sent or skipped).
    pub blocks: u32,
    /// The first token's log probabilities, when the request asked for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprob: Option<crate::TokenLogprob>,
}

/// Why two engines cannot exchange KV (`None`: they can). Names both sides' values.
pub fn compatibility(
    ours_model: &str,
    ours: &KvLayout,
    theirs_model: &str,
    theirs: &KvLayout,
) -> Option<String> {
    if ours_model != theirs_model {
        return Some(format!(
            "model differs: this worker serves {ours_model:?}, the peer {theirs_model:?}"
        ));
    }
    if ours != theirs {
        return Some(format!(
            "KV layout differs: this worker has {ours}, the peer {theirs}"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(block_size: u32) -> KvLayout {
        KvLayout {
            layers: 30,
            kv_heads: 3,
            head_dim: 64,
            dtype: KvDtype::F32,
            block_size,
        }
    }

    #[test]
    fn modes_parse_and_name_the_accepted_values() {
        assert_eq!(
            "prefill".parse::<DisaggregationMode>().unwrap(),
            DisaggregationMode::Prefill
        );
        let e = "both".parse::<DisaggregationMode>().unwrap_err();
        assert!(e.contains("prefill, decode or null"), "{e}");
        let j = serde_json::to_string(&DisaggregationMode::Decode).unwrap();
        assert_eq!(j, "\"decode\"");
    }

    #[test]
    fn compatibility_names_both_sides() {
        assert_eq!(compatibility("m", &layout(16), "m", &layout(16)), None);
        let e = compatibility("m", &layout(16), "m", &layout(32)).unwrap();
        assert!(
            e.contains("block_size=16") && e.contains("block_size=32"),
            "{e}"
        );
        let e = compatibility("a", &layout(16), "b", &layout(16)).unwrap();
        assert!(e.contains("\"a\"") && e.contains("\"b\""), "{e}");
        let info = BootstrapInfo {
            bootstrap_host: "10.0.0.1".into(),
            bootstrap_port: 12345,
            bootstrap_room: (1 << 63) - 1,
            room_traceparent: None,
        };
        let back: BootstrapInfo =
            serde_json::from_str(&serde_json::to_string(&info).unwrap()).unwrap();
        assert_eq!(back, info);
    }
}
