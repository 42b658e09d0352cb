//! Integration tests: real iroh endpoints on 127.0.0.1, real FsStores in temp dirs, and the
//! `bdc` binary for the command-line behaviour.

mod cli;
mod common;
mod compute;
mod disputes;
mod market;
mod multi;
mod paid;
mod transfer;
