//! Route JSONPaths: the first line of the input is a path (as a route file's
//! `when.path`, `body.select`, `for_each` or a `$`/`@` param would give it),
//! the rest a JSON document. Parsing must refuse or compile the path, and
//! evaluating it on any document must not panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use vedgate::routing::JsonPath;
use vedgate::shape::Source;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (path, doc) = text.split_once('\n').unwrap_or((text, "{}"));
    // Same depth bound as decoding a message (serde_json refuses past 128).
    let Ok(doc) = serde_json::from_str::<Value>(doc) else { return };
    let _ = Source::parse(path);
    if let Ok(p) = JsonPath::parse(path) {
        let _ = p.is_singular();
        let _ = p.steps();
        let _ = p.first(&doc);
        let _ = p.all(&doc);
    }
});
