//! TCP translation: see [`conn`].

pub mod conn;
