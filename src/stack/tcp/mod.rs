//! TCP translation (see `conn`).
