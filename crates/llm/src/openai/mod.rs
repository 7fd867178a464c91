//! The OpenAI surface: request types with validation, response and chunk types, and the
//! error type every failure is rendered through.

pub mod cache_control;
pub mod error;
pub mod logprobs;
pub mod prompt;
pub mod request;
pub mod response;

pub use error::{ApiError, ErrorClass};
