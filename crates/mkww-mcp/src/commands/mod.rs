//! The one-shot commands besides `serve` and `bench`: each loads the configuration, does its
//! one thing and exits.

pub mod doctor;
pub mod migrate;
pub mod token;
pub mod user;
