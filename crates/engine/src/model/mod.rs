//! The model: configuration, weight loading and the batched forward pass.

pub mod config;
pub mod forward;
pub mod load;

pub use config::{ModelConfig, RopeScaling, RopeStyle};
pub use forward::{Logits, Model, Scratch, SeqInput};
pub use load::{load, LayerWeights, WeightSummary, Weights};
