//! The one-shot commands besides `serve` and `bench`: each loads the configuration (`openapi`
//! needs none), does its one thing and exits.

pub mod doctor;
pub mod migrate;
pub mod openapi;
pub mod token;
pub mod user;
