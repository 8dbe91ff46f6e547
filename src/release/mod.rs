//! Releases: the path from a rehearsed plan to live. So far the approval —
//! a person's (or CI's) yes to one plan hash, bound to the evidence of a
//! passing rehearsal of exactly that plan.

pub mod approval;
pub mod window;
