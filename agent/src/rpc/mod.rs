//! ttrpc service implementations: decode a request, log it with its ids, call the part
//! of the agent that owns it, and map the outcome onto a ttrpc status.

pub mod agent;
pub mod health;
