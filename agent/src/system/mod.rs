//! The system layer: the only part of the agent that runs processes or reads
//! the machine's state.

pub mod blank;
pub mod boot;
pub mod checks;
pub mod health;
pub mod secrets;
pub mod seed;
pub mod switch;
pub mod volumes;
