//! Text: Unicode and Arabic-aware normalization, the compact encoding the keyword automaton
//! reads, and the automaton itself. Pure.

pub mod compact;
pub mod matcher;
pub mod normalize;
pub mod number;
