//! Reports for people: the readable (Markdown) forms of what pgrehearse
//! measured. The JSON forms are the domain structs themselves.

pub mod email;
