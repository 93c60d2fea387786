//! roomcast tuning kit: one table of kernel settings and limits for N connections (`profile`),
//! the live check and apply against it, and the capacity arithmetic (`plan`).
#![forbid(unsafe_code)]

pub mod apply;
pub mod check;
pub mod costs;
pub mod live;
pub mod plan;
pub mod profile;
pub mod render;
