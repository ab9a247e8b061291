//! The pure SQL helpers: named-parameter rewriting of any statement text, and
//! exact decimals (parse, PostgreSQL numeric encoding, and `PgValue::convert`
//! of the text as a string and, when it is one, as a JSON number).

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use vedgate::shape::decimal::Decimal;
use vedgate::shape::sql::rewrite_named_params;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (sql, names) = rewrite_named_params(text);
    // Each name gets one number, and every name is a parameter of the output.
    for (i, _) in names.iter().enumerate() {
        assert!(sql.contains(&format!("${}", i + 1)), "rewrite lost ${} of {text:?}", i + 1);
    }
    if let Some(d) = Decimal::parse(text) {
        if let Some(bytes) = d.to_pg_numeric() {
            // ndigits (read as uint16 by numeric_recv), weight, sign, dscale,
            // then ndigits base-10000 groups of 0..=9999.
            assert!(bytes.len() >= 8 && (bytes.len() - 8) % 2 == 0);
            let ndigits = u16::from_be_bytes([bytes[0], bytes[1]]) as usize;
            assert_eq!(ndigits, (bytes.len() - 8) / 2, "ndigits header of {text:?} does not match its groups");
            for g in bytes[8..].chunks(2) {
                assert!((0..=9999).contains(&i16::from_be_bytes([g[0], g[1]])), "group out of range in {text:?}");
            }
        }
    }
    common::convert_all(&Value::String(text.to_string()));
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        common::convert_all(&v);
    }
});
