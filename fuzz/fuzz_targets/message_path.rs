//! The message path against the shipped routes: any record value is decoded
//! with the configured limits, matched in every subscription, checked against
//! the route's schema, shaped, and its SQL parameters converted for the usual
//! column types. Errors are fine; a panic is a bug.

#![no_main]

#[path = "common.rs"]
mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vedgate::config::{load, Config, Env, LoadOptions};
use vedgate::shape::RecordMeta;

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let opts = LoadOptions {
            config_path: root.join("gateway.toml"),
            routes_path: root.join("routes"),
            profile: None,
            env: Env::default(),
        };
        match load(&opts) {
            Ok((config, _)) => config,
            Err(diags) => panic!("the shipped routes do not load:\n{diags}"),
        }
    })
}

fn meta() -> &'static RecordMeta {
    static META: OnceLock<RecordMeta> = OnceLock::new();
    META.get_or_init(common::meta)
}

fuzz_target!(|data: &[u8]| {
    common::message_path(config(), data, meta());
});
