//! Helpers of tests/chart.rs: the tools it drives, a model of the chart's RBAC, and the
//! operator run as the chart's ServiceAccount.
#![allow(dead_code)]

pub mod operator_as_sa;
pub mod rbac;
pub mod tools;
