//! Shared by the fuzz targets: the contract's example messages, a fixed
//! record, and the message path (decode, match, schema, shape, SQL params).

#![allow(dead_code)]

use serde_json::Value;
use tokio_postgres::types::Type;
use vedgate::config::Config;
use vedgate::message::{decode, Limits};
use vedgate::shape::{RecordMeta, Request};
use vedgate::sinks::sql::PgValue;

/// The example messages of shared/contracts/ved-messages.md (plus a few
/// variants the routes care about), used when a fuzzed route file loads.
pub const CONTRACT_MESSAGES: &[&str] = &[
    r#"{"operationCode": "un_assignment", "messageId": "0b6f3c1e-5b7a-4c1e-9a55-2f0d7c3e9a10", "createdAt": "2026-11-30T10:15:42+05:00", "payload": {"contractId": "FC-2026-004512", "clientCode": "C0012345", "unNumber": "0412/2026/00781", "currency": "USD", "amount": "1250000.00", "assignedAt": "2026-11-30"}}"#,
    r#"{"operationCode": "conversion_notification", "messageId": "m-2", "createdAt": "2026-11-30T10:15:42+05:00", "payload": {"conversionTypeCode": "FORWARD", "conversionId": "CV-1", "status": "NEW", "sellCurrency": "KZT", "sellAmount": 98765432109876543.21, "buyCurrency": "USD", "buyAmount": "190000.00", "rate": 518.9}}"#,
    r#"{"operationCode": "COLVIR.DOP_RATE_UPDATE", "messageId": "m-3", "createdAt": "2026-11-30T09:00:01+05:00", "payload": {"rates": [{"currency": "USD", "rateType": "DOP", "buy": "512.35", "sell": "518.90", "validFrom": "2026-11-30T09:00:00+05:00"}, {"currency": "EUR", "rateType": "DOP", "buy": 545.10, "sell": "553.75", "validFrom": "2026-11-30T09:00:00+05:00"}]}}"#,
    r#"{"meta": {"code": "DOC_STATUS", "source": "COLVIR", "ts": "2026-11-30T11:02:00+05:00"}, "payload": {"ordId": "5567001234", "status": "REJECTED", "reason": "Beneficiary bank not found", "docType": "MT103"}}"#,
    r#"{"meta": {"code": "BANK_SWIFT_DETAIL", "operation": "INSERT", "ts": "2026-11-30T11:02:00+05:00"}, "payload": {"bic": "TESTKZKAXXX", "bankName": "Example Bank JSC", "countryCode": "KZ", "city": "Almaty", "address": "1 Example Ave", "active": true}}"#,
    r#"{"operation": "foreign-contract-rework-request-update-status", "source": "GREEN_FRONT", "eventId": "e-1", "payload": {"reworkRequestId": "RR-2026-000981", "contractId": "FC-2026-004512", "status": "COMPLETED", "comment": "Documents provided", "updatedAt": "2026-11-30T12:00:00+05:00"}}"#,
];

/// The column types a shaped SQL value is converted for.
pub const COLUMN_TYPES: [Type; 8] =
    [Type::NUMERIC, Type::TIMESTAMPTZ, Type::TEXT, Type::INT4, Type::BOOL, Type::INT8, Type::DATE, Type::TIMESTAMP];

pub fn meta() -> RecordMeta {
    RecordMeta {
        topic: "kz-bcc-colvir".into(),
        partition: 3,
        offset: 1_234_567,
        key: Some(b"FC-2026-004512".to_vec()),
        timestamp_ms: Some(1_796_016_942_000),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string()),
    }
}

/// Everything the consumer and a worker do with one record value before I/O.
/// Errors are fine; a panic is a bug.
pub fn message_path(config: &Config, raw: &[u8], meta: &RecordMeta) {
    let limits = Limits { max_bytes: config.settings.max_message_bytes, max_depth: config.settings.max_json_depth };
    let Ok(value) = decode(Some(raw), limits) else { return };
    for sub in &config.subscriptions {
        let Some(route) = sub.find(&value) else { continue };
        if let Some(schema) = &route.schema {
            // Shaping runs even when the schema rejects the message: it must
            // not panic on anything decode lets through.
            let _ = schema.check(&value);
        }
        if let Ok(req) = route.shape(raw, &value, meta) {
            sql_params(&req);
            let _ = serde_json::to_string(&req);
        }
    }
}

pub fn sql_params(req: &Request) {
    if let Request::Sql(sql) = req {
        for row in &sql.rows {
            for v in row {
                convert_all(v);
            }
        }
    }
}

pub fn convert_all(v: &Value) {
    for ty in &COLUMN_TYPES {
        let _ = PgValue::convert(v, ty);
    }
}
