//! The route-file loader: any bytes as a route file next to a fixed minimal
//! gateway.toml (and a copy of the shipped schemas) must load or be refused
//! with diagnostics, never panic. A file that loads then takes the contract's
//! example messages through the message path.

#![no_main]

#[path = "common.rs"]
mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vedgate::config::{load, Env, LoadOptions};

const GATEWAY_TOML: &str = "[defaults]\nenv = \"local\"\nadmin_addr = \"\"\n\n[profile.local]\nbrokers = [\"127.0.0.1:9092\"]\n";

struct Dir {
    gateway: PathBuf,
    routes: PathBuf,
    file: PathBuf,
}

fn dir() -> &'static Dir {
    static DIR: OnceLock<Dir> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("vedgate-fuzz-route-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let routes = root.join("routes");
        let schemas = root.join("schemas");
        std::fs::create_dir_all(&routes).unwrap();
        std::fs::create_dir_all(&schemas).unwrap();
        // Route files name schemas as ../schemas/NAME: copy the shipped ones.
        let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas");
        if let Ok(entries) = std::fs::read_dir(&shipped) {
            for e in entries.flatten() {
                if e.path().is_file() {
                    let _ = std::fs::copy(e.path(), schemas.join(e.file_name()));
                }
            }
        }
        let gateway = root.join("gateway.toml");
        std::fs::write(&gateway, GATEWAY_TOML).unwrap();
        let file = routes.join("fuzz.toml");
        Dir { gateway, routes, file }
    })
}

fuzz_target!(|data: &[u8]| {
    let d = dir();
    std::fs::write(&d.file, data).unwrap();
    let opts = LoadOptions { config_path: d.gateway.clone(), routes_path: d.routes.clone(), profile: None, env: Env::default() };
    let Ok((config, diags)) = load(&opts) else { return };
    let _ = diags.to_string();
    let meta = common::meta();
    for msg in common::CONTRACT_MESSAGES {
        common::message_path(&config, msg.as_bytes(), &meta);
    }
});
