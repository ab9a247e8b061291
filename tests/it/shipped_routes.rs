//! The shipped route files deliver every row of the contract's table.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

fn colvir(topic: &str, key: Option<&str>, v: &str) -> vedgate::tools::traffic::Record {
    record(topic, key, v.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_routes_deliver_every_contract_row_exactly() {
    let colvir_topic = unique("kz-bcc-colvir");
    let fea_topic = unique("bcc.business.fea.process.events");
    create_topic(&colvir_topic, 3).await;
    create_topic(&fea_topic, 3).await;
    let (db_url, db) = fresh_db().await;
    let fc = Receiver::start().await;
    let conv = Receiver::start().await;

    // Hand-made messages with exact expectations; odd spacing and key order
    // prove the original bytes are forwarded unchanged.
    let notif = r#"{"operationCode": "un_assignment",  "messageId": "0b6f3c1e-5b7a-4c1e-9a55-2f0d7c3e9a10",
 "createdAt": "2026-11-30T10:15:42+05:00",
 "payload": {"contractId": "FC-2026-004512", "clientCode": "C0012345", "unNumber": "0412/2026/00781", "currency": "USD", "amount": 98765432109876543.21, "assignedAt": "2026-11-30"}}"#;
    let rework = r#"{"operation": "foreign-contract-rework-request-update-status", "source": "GREEN_FRONT", "eventId": "e1",
 "payload": {"reworkRequestId": "RR/2026 000981?", "contractId": "FC-2026-004512", "status": "COMPLETED", "comment": "Documents provided", "updatedAt": "2026-11-30T12:00:00+05:00"}}"#;
    let forward = r#"{"operationCode": "conversion_notification", "messageId": "m2",
 "payload": {"conversionTypeCode": "FORWARD", "conversionId": "CNV-1", "status": "EXECUTED", "sellCurrency": "KZT", "sellAmount": 98765432109876543.21, "buyCurrency": "USD", "buyAmount": "190000.00", "rate": 515.2500}}"#;
    let spot = r#"{"operationCode": "conversion_notification", "payload": {"conversionTypeCode": "SPOT", "conversionId": "CNV-2"}}"#;
    let rates = r#"{"operationCode": "COLVIR.DOP_RATE_UPDATE", "messageId": "m3", "createdAt": "2026-11-30T09:00:01+05:00", "payload": {"rates": [
   {"currency": "USD", "rateType": "DOP", "buy": "512.35", "sell": 518.90, "validFrom": "2026-11-30T09:00:00+05:00"},
   {"currency": "EUR", "rateType": "DOP", "buy": 98765432109876543.21, "sell": "553.7500", "validFrom": "2026-11-30T09:00:00+05:00"}]}}"#;
    let doc_new = r#"{"meta": {"code": "DOC_STATUS", "source": "COLVIR", "ts": "2026-11-30T11:02:00+05:00"}, "payload": {"ordId": "5567001234", "status": "REJECTED", "reason": "Beneficiary bank not found", "docType": "MT103"}}"#;
    let doc_old = r#"{"meta": {"code": "DOC_STATUS", "source": "COLVIR", "ts": "2026-11-30T10:00:00+05:00"}, "payload": {"ordId": "5567001234", "status": "ACCEPTED", "docType": "MT103"}}"#;
    let doc_null = r#"{"meta": {"code": "DOC_STATUS", "ts": "2026-11-30T11:05:00+05:00"}, "payload": {"ordId": "5567009999", "status": "EXECUTED", "reason": null, "docType": "MT103"}}"#;
    let swift_ins = r#"{"meta": {"code": "BANK_SWIFT_DETAIL", "operation": "INSERT", "ts": "2026-11-30T11:00:00+05:00"}, "payload": {"bic": "TESTKZKAXXX", "bankName": "Example Bank JSC", "countryCode": "KZ", "city": "Almaty", "address": "1 Example Ave", "active": true}}"#;
    let swift_upd = r#"{"meta": {"code": "BANK_SWIFT_DETAIL", "operation": "UPDATE", "ts": "2026-11-30T11:30:00+05:00"}, "payload": {"bic": "TESTKZKAXXX", "bankName": "Example Bank JSC (renamed)", "countryCode": "KZ", "city": "Astana", "address": "2 Example Ave", "active": false}}"#;
    let unknown = r#"{"operationCode": "account_opened", "payload": {"contractId": "X"}}"#;
    let other_fea = r#"{"operation": "foreign-contract-created", "payload": {}}"#;

    let mut records = vec![
        colvir(&colvir_topic, Some("FC-2026-004512"), notif),
        colvir(&fea_topic, Some("FC-2026-004512"), rework),
        colvir(&colvir_topic, Some("CNV-1"), forward),
        colvir(&colvir_topic, Some("CNV-2"), spot),
        colvir(&colvir_topic, None, rates),
        colvir(&colvir_topic, Some("5567001234"), doc_new),
        colvir(&colvir_topic, Some("5567001234"), doc_old),
        colvir(&colvir_topic, Some("5567009999"), doc_null),
        colvir(&colvir_topic, Some("TESTKZKAXXX"), swift_ins),
        colvir(&colvir_topic, Some("TESTKZKAXXX"), swift_upd),
        colvir(&colvir_topic, None, unknown),
        colvir(&fea_topic, None, other_fea),
        record(&colvir_topic, None, b"not json at all"),
        colvir(&colvir_topic, Some("5567000001"), r#"{"meta": {"code": "DOC_STATUS", "ts": "2026-11-30T11:05:00+05:00"}, "payload": {"ordId": "5567000001", "status": "BOGUS"}}"#),
    ];
    // Plus a realistic bulk of every kind.
    let mut traffic = vedgate::tools::traffic::Traffic::new(7, &colvir_topic, &fea_topic);
    let bulk = traffic.mix(240);
    records.extend(bulk.iter().cloned());
    produce(&records).await;

    let dir = tempfile::tempdir().unwrap();
    let config = test_gateway_toml(dir.path());
    let mut env = base_env();
    env.set("TOPIC", colvir_topic.clone());
    env.set("FEA_TOPIC", fea_topic.clone());
    env.set("VED_FOREIGN_CONTRACTS_URL", fc.url.clone());
    env.set("VED_CONVERSIONS_URL", conv.url.clone());
    env.set("VED_DATABASE_URL", db_url.clone());
    let gw = Gateway::start(&config, &repo().join("routes"), env);

    let is = |r: &vedgate::tools::traffic::Record, kinds: &[&str]| kinds.iter().any(|k| r.kind == *k);
    let bulk_fc = bulk.iter().filter(|r| vedgate::tools::traffic::NOTIFICATION_CODES.contains(&r.kind.as_str()) || r.kind == "rework-request-update-status").count();
    let bulk_conv = bulk.iter().filter(|r| is(r, &["conversion_notification/FORWARD"])).count();
    let want_fc = 2 + bulk_fc;
    let want_conv = 1 + bulk_conv;
    wait_until("HTTP deliveries", Duration::from_secs(60), || fc.count() >= want_fc && conv.count() >= want_conv).await;

    // Every topic is consumed to its end and committed by every group.
    let groups_colvir = ["notification-dbp-foreign-contracts-sink", "notification-dbp-conversions-go-sink", "connect-dbp-international-transfers-sink"];
    let colvir_end = end_offsets(&colvir_topic, 3);
    let fea_end = end_offsets(&fea_topic, 3);
    wait_until("offsets committed to the end", Duration::from_secs(30), || {
        groups_colvir.iter().all(|g| committed(g, &colvir_topic, 3) == colvir_end)
            && committed("dbp-foreign-contract-process", &fea_topic, 3) == fea_end
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fc.count(), want_fc, "foreign-contracts: no message of another group or unknown code, none twice");
    assert_eq!(conv.count(), want_conv, "conversions: only FORWARD");

    // Row 1: notification forwarded byte for byte with the Kafka headers.
    let got = fc.requests();
    let n = got.iter().find(|r| r.body.as_ref() == notif.as_bytes()).expect("notification delivered unchanged");
    assert_eq!(n.method, "POST");
    assert_eq!(n.path, "/internal/colvir/notifications");
    assert_eq!(n.header("x-kafka-topic"), Some(colvir_topic.as_str()));
    assert_eq!(n.header("x-kafka-key"), Some("FC-2026-004512"));
    let (p, o) = (n.header("x-kafka-partition").unwrap(), n.header("x-kafka-offset").unwrap());
    assert_eq!(n.header("idempotency-key").unwrap(), format!("{colvir_topic}-{p}-{o}"));
    assert_eq!(n.header("content-type"), Some("application/json"));

    // Row 2: rework status, id percent-encoded as one segment, exact JSON body.
    let r = got.iter().find(|r| r.method == "PUT" && r.path.contains("RR%2F2026")).expect("rework status delivered");
    assert_eq!(r.path, "/internal/rework-requests/RR%2F2026%20000981%3F/status");
    assert_eq!(&r.body[..], br#"{"status":"COMPLETED","comment":"Documents provided","updatedAt":"2026-11-30T12:00:00+05:00"}"#);
    assert_eq!(r.header("x-kafka-topic"), Some(fea_topic.as_str()));
    let distinct: HashSet<_> = got.iter().map(|r| r.header("idempotency-key").unwrap().to_string()).collect();
    assert_eq!(distinct.len(), got.len(), "no duplicates");
    for r in &got {
        assert!(r.path == "/internal/colvir/notifications" || r.path.starts_with("/internal/rework-requests/"), "{}", r.path);
    }

    // Row 3: the payload object of FORWARD, decimals digit for digit.
    let cgot = conv.requests();
    let f = cgot.iter().find(|r| r.header("x-kafka-key") == Some("CNV-1")).expect("forward delivered");
    assert_eq!(f.method, "POST");
    assert_eq!(f.path, "/internal/conversions/forward/notifications");
    assert_eq!(
        std::str::from_utf8(&f.body).unwrap(),
        r#"{"conversionTypeCode":"FORWARD","conversionId":"CNV-1","status":"EXECUTED","sellCurrency":"KZT","sellAmount":98765432109876543.21,"buyCurrency":"USD","buyAmount":"190000.00","rate":515.2500}"#
    );
    for r in &cgot {
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["conversionTypeCode"], json!("FORWARD"));
    }

    // Row 4: one row per rate, exact decimals whether string or number.
    let rows = db
        .query("SELECT buy::text, sell::text, to_char(valid_from AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') FROM currency_rates WHERE valid_from = '2026-11-30T09:00:00+05:00' ORDER BY currency", &[])
        .await
        .unwrap();
    let got: Vec<(String, String, String)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(
        got,
        vec![
            ("98765432109876543.21".into(), "553.7500".into(), "2026-11-30 04:00".into()),
            ("512.35".into(), "518.90".into(), "2026-11-30 04:00".into()),
        ]
    );
    let bulk_rates: usize = bulk.iter().filter(|r| r.kind == "COLVIR.DOP_RATE_UPDATE").count();
    let n_rates: i64 = db.query_one("SELECT count(*) FROM currency_rates", &[]).await.unwrap().get(0);
    assert!(n_rates >= 2 + bulk_rates as i64, "{n_rates} rate rows");

    // Row 5: document status; the older status did not overwrite the newer one.
    let row = db
        .query_one("SELECT status, reason, doc_type, kafka_partition, kafka_offset FROM transfer_document_status WHERE ord_id = '5567001234'", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "REJECTED");
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("Beneficiary bank not found"));
    assert_eq!(row.get::<_, Option<String>>(2).as_deref(), Some("MT103"));
    assert!(row.get::<_, Option<i32>>(3).is_some() && row.get::<_, Option<i64>>(4).is_some());
    let null_reason: Option<String> = db.query_one("SELECT reason FROM transfer_document_status WHERE ord_id = '5567009999'", &[]).await.unwrap().get(0);
    assert_eq!(null_reason, None, "JSON null reaches SQL NULL");

    // Row 6: SWIFT directory upsert by BIC.
    let row = db.query_one("SELECT bank_name, city, address, active FROM bank_swift_details WHERE bic = 'TESTKZKAXXX'", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "Example Bank JSC (renamed)");
    assert_eq!(row.get::<_, String>(1), "Astana");
    assert!(!row.get::<_, bool>(3));

    // Counted: unmatched and invalid messages were skipped, not delivered.
    let skipped = gw.metrics.get(vedgate::metrics::MESSAGES_TOTAL, &[("group", "notification-dbp-foreign-contracts-sink"), ("route", vedgate::metrics::UNMATCHED_ROUTE), ("outcome", "skipped")]);
    assert!(skipped > 0);
    // A DOC_STATUS failing its schema is dead-lettered with the failing path, not written.
    let dlq = "connect-dbp-international-transfers-sink.dlq";
    let got = read_topic(dlq, Duration::from_secs(20), |rs| rs.iter().any(|r| r.headers.get("vedgate-original-topic") == Some(&colvir_topic) && r.headers["vedgate-error-class"] == "schema" && r.headers["vedgate-route"] == "doc-status"));
    let dl = got.iter().find(|r| r.headers.get("vedgate-original-topic") == Some(&colvir_topic) && r.headers["vedgate-error-class"] == "schema" && r.headers["vedgate-route"] == "doc-status").expect("schema dead letter");
    let ours: Vec<_> = got.iter().filter(|r| r.headers.get("vedgate-original-topic") == Some(&colvir_topic)).collect();
    assert!(ours.iter().all(|r| r.headers["vedgate-route"] == "doc-status" || r.headers["vedgate-route"] == "_invalid"), "only the bad messages are dead-lettered: {ours:?}");
    assert!(dl.headers["vedgate-error-reason"].contains("/payload/status"), "{}", dl.headers["vedgate-error-reason"]);
    assert_eq!(dl.headers["vedgate-route"], "doc-status");
    let n: i64 = db.query_one("SELECT count(*) FROM transfer_document_status WHERE ord_id = '5567000001'", &[]).await.unwrap().get(0);
    assert_eq!(n, 0);

    // The message that is not JSON went to each colvir group's dead-letter topic, bytes intact.
    for g in groups_colvir {
        let dlq = format!("{g}.dlq");
        let invalid = |r: &ReadBack| r.headers.get("vedgate-original-topic") == Some(&colvir_topic) && r.headers["vedgate-error-class"] == "invalid-message";
        let got = read_topic(&dlq, Duration::from_secs(20), |rs| rs.iter().any(invalid));
        let dl = got.iter().find(|r| invalid(r)).expect("dead letter");
        assert_eq!(dl.value.as_deref(), Some(&b"not json at all"[..]));
        assert_eq!(dl.headers["vedgate-error-class"], "invalid-message");
        assert_eq!(dl.headers["vedgate-group"], g);
        let n = gw.metrics.get(vedgate::metrics::MESSAGES_TOTAL, &[("group", g), ("route", vedgate::metrics::INVALID_ROUTE), ("outcome", "consumed")]);
        assert_eq!(n, 1);
    }
    gw.stop().await;
}
