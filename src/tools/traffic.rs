//! Realistic VED traffic: every message kind of the contract, keyed by its
//! business id, plus messages no shipped route claims. Deterministic per seed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// One record to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub topic: String,
    pub key: Option<String>,
    pub payload: Option<Vec<u8>>,
    /// What the message is, for summaries: e.g. `un_assignment`, `DOC_STATUS`.
    pub kind: String,
}

pub const NOTIFICATION_CODES: [&str; 8] = [
    "un_assignment",
    "repatriation_period_violation",
    "forward_contract_term_error",
    "forward_contract_sum_error",
    "forward_contract_closed",
    "forward_ps24_reminder",
    "forward_contract_ps24_error",
    "rework_required",
];

pub struct Traffic {
    rng: StdRng,
    pub colvir_topic: String,
    pub fea_topic: String,
    seq: u64,
}

impl Traffic {
    pub fn new(seed: u64, colvir_topic: &str, fea_topic: &str) -> Self {
        Traffic { rng: StdRng::seed_from_u64(seed), colvir_topic: colvir_topic.into(), fea_topic: fea_topic.into(), seq: 0 }
    }

    /// `n` records in a realistic mix; every kind appears when `n >= 12`.
    pub fn mix(&mut self, n: usize) -> Vec<Record> {
        (0..n).map(|i| self.kind(i % 12)).collect()
    }

    fn kind(&mut self, k: usize) -> Record {
        match k {
            0..=2 => self.notification(),
            3 => self.conversion(Some("FORWARD")),
            4 => self.conversion(None),
            5 => self.rates(),
            6 | 7 => self.doc_status(),
            8 => self.swift(),
            9 | 10 => self.rework(),
            _ => self.unclaimed(),
        }
    }

    fn next_id(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn amount(&mut self) -> String {
        let whole: u64 = self.rng.gen_range(1..10_000_000);
        let cents: u32 = self.rng.gen_range(0..100);
        format!("{whole}.{cents:02}")
    }

    fn uuid(&mut self) -> String {
        let a: u128 = self.rng.gen();
        let h = format!("{a:032x}");
        format!("{}-{}-4{}-a{}-{}", &h[0..8], &h[8..12], &h[13..16], &h[17..20], &h[20..32])
    }

    fn colvir(&self, key: Option<String>, v: serde_json::Value, kind: &str) -> Record {
        Record { topic: self.colvir_topic.clone(), key, payload: Some(serde_json::to_vec(&v).unwrap_or_default()), kind: kind.into() }
    }

    pub fn notification(&mut self) -> Record {
        let code = NOTIFICATION_CODES[self.rng.gen_range(0..NOTIFICATION_CODES.len())];
        let id = self.next_id();
        let contract = format!("FC-2026-{:06}", id % 5000);
        let mut payload = json!({"contractId": contract, "clientCode": format!("C{:07}", id % 99991)});
        match code {
            "un_assignment" => {
                payload["unNumber"] = json!(format!("{:04}/2026/{:05}", id % 9999, id % 99999));
                payload["currency"] = json!("USD");
                payload["amount"] = json!(self.amount());
                payload["assignedAt"] = json!("2026-11-30");
            }
            "repatriation_period_violation" => {
                payload["violationDays"] = json!(self.rng.gen_range(1..200));
                payload["dueDate"] = json!("2026-12-15");
            }
            "forward_contract_sum_error" => {
                payload["expectedAmount"] = json!(self.amount());
                payload["actualAmount"] = json!(self.amount());
            }
            "forward_ps24_reminder" | "forward_contract_ps24_error" => payload["ps24Number"] = json!(format!("PS24-{id:08}")),
            "rework_required" => payload["comment"] = json!("Приложите SWIFT-подтверждение / attach the SWIFT confirmation"),
            _ => {}
        }
        let v = json!({"operationCode": code, "messageId": self.uuid(), "createdAt": "2026-11-30T10:15:42+05:00", "payload": payload});
        self.colvir(Some(contract), v, code)
    }

    pub fn conversion(&mut self, kind: Option<&str>) -> Record {
        let t = kind.unwrap_or(if self.rng.gen_bool(0.5) { "SPOT" } else { "SWAP" });
        let id = format!("CNV-{:08}", self.next_id());
        let v = json!({"operationCode": "conversion_notification", "messageId": self.uuid(), "createdAt": "2026-11-30T10:20:00+05:00",
            "payload": {"conversionTypeCode": t, "conversionId": id, "status": "EXECUTED", "sellCurrency": "KZT",
                "sellAmount": self.amount(), "buyCurrency": "USD", "buyAmount": self.amount(), "rate": "515.25"}});
        self.colvir(Some(id), v, &format!("conversion_notification/{t}"))
    }

    pub fn rates(&mut self) -> Record {
        let n = self.next_id();
        let hour = n % 24;
        let day = 1 + (n / 24) % 28;
        let valid = format!("2026-11-{day:02}T{hour:02}:00:00+05:00");
        let mut rates = Vec::new();
        for (cur, base) in [("USD", 512), ("EUR", 545), ("RUB", 6)] {
            let buy = format!("{}.{:02}", base, self.rng.gen_range(0..100));
            let sell = format!("{}.{:02}", base + 6, self.rng.gen_range(0..100));
            rates.push(json!({"currency": cur, "rateType": "DOP", "buy": buy, "sell": sell, "validFrom": valid}));
        }
        let v = json!({"operationCode": "COLVIR.DOP_RATE_UPDATE", "messageId": self.uuid(), "createdAt": valid, "payload": {"rates": rates}});
        self.colvir(None, v, "COLVIR.DOP_RATE_UPDATE")
    }

    pub fn doc_status(&mut self) -> Record {
        let n = self.next_id();
        let ord = format!("{}", 5_567_000_000u64 + n % 400);
        let statuses = ["ACCEPTED", "EXECUTED", "REJECTED", "RETURNED"];
        let status = statuses[self.rng.gen_range(0..4)];
        let reason = if status == "REJECTED" { json!("Beneficiary bank not found") } else { json!(null) };
        let ts = format!("2026-11-30T{:02}:{:02}:{:02}+05:00", 8 + (n / 3600) % 12, (n / 60) % 60, n % 60);
        let v = json!({"meta": {"code": "DOC_STATUS", "source": "COLVIR", "ts": ts},
            "payload": {"ordId": ord, "status": status, "reason": reason, "docType": "MT103"}});
        self.colvir(Some(ord), v, "DOC_STATUS")
    }

    pub fn swift(&mut self) -> Record {
        let n = self.next_id();
        let bic = format!("TEST{}{}", ["KZKA", "KZKB", "KZKC"][n as usize % 3], ["XXX", "ALA", "AST"][(n / 3) as usize % 3]);
        let op = if n % 2 == 0 { "INSERT" } else { "UPDATE" };
        let v = json!({"meta": {"code": "BANK_SWIFT_DETAIL", "operation": op, "ts": format!("2026-11-30T11:{:02}:{:02}+05:00", (n / 60) % 60, n % 60)},
            "payload": {"bic": bic, "bankName": format!("Example Bank {n} JSC"), "countryCode": "KZ", "city": "Almaty", "address": "1 Example Ave", "active": n % 5 != 0}});
        self.colvir(Some(bic), v, "BANK_SWIFT_DETAIL")
    }

    pub fn rework(&mut self) -> Record {
        let n = self.next_id();
        let id = if n % 7 == 0 { format!("RR/2026 {:06}", n) } else { format!("RR-2026-{n:06}") };
        let contract = format!("FC-2026-{:06}", n % 5000);
        let v = json!({"operation": "foreign-contract-rework-request-update-status", "source": "GREEN_FRONT", "eventId": self.uuid(),
            "payload": {"reworkRequestId": id, "contractId": contract, "status": "COMPLETED", "comment": "Documents provided", "updatedAt": "2026-11-30T12:00:00+05:00"}});
        Record { topic: self.fea_topic.clone(), key: Some(contract), payload: Some(serde_json::to_vec(&v).unwrap_or_default()), kind: "rework-request-update-status".into() }
    }

    /// Messages of the same topics that no shipped route takes.
    pub fn unclaimed(&mut self) -> Record {
        let n = self.next_id();
        match self.rng.gen_range(0..3) {
            0 => {
                let v = json!({"operationCode": "account_opened", "messageId": self.uuid(), "payload": {"contractId": format!("FC-X-{n}")}});
                self.colvir(None, v, "unclaimed/account_opened")
            }
            1 => {
                let v = json!({"meta": {"code": "CLIENT_UPDATE", "ts": "2026-11-30T11:00:00+05:00"}, "payload": {"clientCode": "C1"}});
                self.colvir(None, v, "unclaimed/CLIENT_UPDATE")
            }
            _ => {
                let v = json!({"operation": "foreign-contract-created", "source": "GREEN_FRONT", "payload": {"contractId": format!("FC-X-{n}")}});
                Record { topic: self.fea_topic.clone(), key: None, payload: Some(serde_json::to_vec(&v).unwrap_or_default()), kind: "unclaimed/foreign-contract-created".into() }
            }
        }
    }
}
