-- Target tables of the shipped routes (contract: ved-messages.md).
-- Safe to apply twice.

CREATE TABLE IF NOT EXISTS currency_rates (
    currency    text,
    rate_type   text,
    buy         numeric,
    sell        numeric,
    valid_from  timestamptz,
    updated_at  timestamptz,
    PRIMARY KEY (currency, rate_type, valid_from)
);

CREATE TABLE IF NOT EXISTS transfer_document_status (
    ord_id          text PRIMARY KEY,
    status          text NOT NULL,
    reason          text,
    doc_type        text,
    status_ts       timestamptz,
    kafka_partition int,
    kafka_offset    bigint
);

CREATE TABLE IF NOT EXISTS bank_swift_details (
    bic          text PRIMARY KEY,
    bank_name    text,
    country_code text,
    city         text,
    address      text,
    active       boolean,
    updated_at   timestamptz
);
