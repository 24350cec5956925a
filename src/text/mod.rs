//! Text: Unicode and Arabic-aware normalization and the keyword automaton. Pure.

pub mod matcher;
pub mod normalize;
