//! SQL sink (PostgreSQL): prepared statements over a connection pool, one
//! transaction per message. Parameters are bound by the type the server
//! infers for each `$n`, so decimals reach `numeric` digit for digit.

use std::error::Error;
use std::str::FromStr;

use bytes::BytesMut;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod};
use serde_json::Value;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::NoTls;

use super::DeliveryError;
use crate::shape::decimal::Decimal;
use crate::shape::SqlRequest;

pub struct SqlSink {
    pool: Pool,
}

impl SqlSink {
    pub fn new(url: &str, pool_size: usize) -> Result<Self, String> {
        let mut pg = tokio_postgres::Config::from_str(url).map_err(|e| format!("invalid PostgreSQL URL: {e}"))?;
        if pg.get_options().is_none() {
            // A locked table must not hold a delivery forever: the statement is
            // cancelled (57014) and retried.
            pg.options("-c statement_timeout=30000");
        }
        pg.connect_timeout(std::time::Duration::from_secs(5));
        let mgr = Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(mgr)
            .max_size(pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(std::time::Duration::from_secs(10)))
            .create_timeout(Some(std::time::Duration::from_secs(5)))
            .build()
            .map_err(|e| format!("cannot build pool: {e}"))?;
        Ok(SqlSink { pool })
    }

    pub async fn deliver(&self, req: &SqlRequest) -> Result<(), DeliveryError> {
        if req.rows.is_empty() {
            return Ok(());
        }
        let mut client = self.pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => classify(&e),
            other => DeliveryError::retryable(format!("database pool: {other}")),
        })?;
        let stmt = client.prepare_cached(&req.statement).await.map_err(|e| classify(&e))?;
        let types = stmt.params().to_vec();
        let tx = client.transaction().await.map_err(|e| classify(&e))?;
        for row in &req.rows {
            let values = row
                .iter()
                .zip(&types)
                .enumerate()
                .map(|(i, (v, ty))| PgValue::convert(v, ty).map_err(|e| DeliveryError::permanent(format!("parameter ${}: {e}", i + 1))))
                .collect::<Result<Vec<_>, _>>()?;
            let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
            tx.execute(&stmt, &refs).await.map_err(|e| classify(&e))?;
        }
        tx.commit().await.map_err(|e| classify(&e))?;
        Ok(())
    }
}

impl SqlSink {
    pub async fn health(&self) -> Result<(), String> {
        let check = async {
            let client = self.pool.get().await.map_err(|e| e.to_string())?;
            client.simple_query("SELECT 1").await.map(|_| ()).map_err(|e| e.to_string())
        };
        tokio::time::timeout(std::time::Duration::from_secs(2), check).await.map_err(|_| "timed out".to_string())?
    }

    /// Every row of every request in one transaction, pipelined on one
    /// connection: one round trip per batch instead of one per row.
    pub async fn deliver_batch(&self, reqs: &[&SqlRequest]) -> Result<(), DeliveryError> {
        let mut client = self.pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => classify(&e),
            other => DeliveryError::retryable(format!("database pool: {other}")),
        })?;
        // A batch nearly always repeats one or two statements: look each up once.
        let mut distinct: Vec<(&str, tokio_postgres::Statement)> = Vec::new();
        let mut prepared = Vec::with_capacity(reqs.len());
        for r in reqs {
            let st = match distinct.iter().find(|(text, _)| *text == &*r.statement) {
                Some((_, st)) => st.clone(),
                None => {
                    let st = client.prepare_cached(&r.statement).await.map_err(|e| classify(&e))?;
                    distinct.push((&*r.statement, st.clone()));
                    st
                }
            };
            prepared.push(st);
        }
        let mut rows: Vec<(usize, Vec<PgValue>)> = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            let types = prepared[i].params();
            for row in &r.rows {
                let values = row
                    .iter()
                    .zip(types)
                    .enumerate()
                    .map(|(n, (v, ty))| PgValue::convert(v, ty).map_err(|e| DeliveryError::permanent(format!("parameter ${}: {e}", n + 1))))
                    .collect::<Result<Vec<_>, _>>()?;
                rows.push((i, values));
            }
        }
        let tx = client.transaction().await.map_err(|e| classify(&e))?;
        let refs: Vec<(usize, Vec<&(dyn ToSql + Sync)>)> =
            rows.iter().map(|(i, vals)| (*i, vals.iter().map(|v| v as &(dyn ToSql + Sync)).collect())).collect();
        let futs = refs.iter().map(|(i, r)| tx.execute(&prepared[*i], r));
        futures::future::try_join_all(futs).await.map_err(|e| classify(&e))?;
        tx.commit().await.map_err(|e| classify(&e))?;
        Ok(())
    }
}

/// Connection trouble, serialization failures, deadlocks and resource
/// shortages are worth retrying; data and integrity errors are not.
fn classify(e: &tokio_postgres::Error) -> DeliveryError {
    let reason = match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => format!("database: {e}"),
    };
    let Some(code) = e.code().map(|c| c.code()) else {
        return DeliveryError::retryable(reason);
    };
    let retryable = code.starts_with("08") || code == "40001" || code == "40P01" || code.starts_with("53") || code.starts_with("57P") || code == "57014";
    if retryable {
        DeliveryError::retryable(reason)
    } else {
        DeliveryError::permanent(reason)
    }
}

/// A JSON value converted for the column type the server expects.
#[derive(Debug, Clone, PartialEq)]
pub enum PgValue {
    Null,
    Text(String),
    /// Binary `numeric`, built from the decimal's digits.
    Numeric(Vec<u8>),
    Timestamptz(DateTime<Utc>),
    Timestamp(NaiveDateTime),
    Date(NaiveDate),
    Bool(bool),
    I16(i16),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    Json(Value),
}

impl PgValue {
    pub fn convert(v: &Value, ty: &Type) -> Result<PgValue, String> {
        if v.is_null() {
            return Ok(PgValue::Null);
        }
        let text = || -> String {
            match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }
        };
        let scalar_text = || -> Result<String, String> {
            match v {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                Value::Bool(b) => Ok(b.to_string()),
                other => Err(format!("{} is not a scalar for a {} column", kind(other), ty)),
            }
        };
        Ok(match *ty {
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => PgValue::Text(text()),
            Type::NUMERIC => {
                let t = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    other => return Err(format!("{} is not a decimal", kind(other))),
                };
                let d = Decimal::parse(&t).ok_or_else(|| format!("{t:?} is not a decimal"))?;
                PgValue::Numeric(d.to_pg_numeric().ok_or_else(|| format!("{t:?} is out of range for numeric"))?)
            }
            Type::TIMESTAMPTZ => PgValue::Timestamptz(parse_timestamptz(&scalar_text()?)?),
            Type::TIMESTAMP => PgValue::Timestamp(parse_timestamptz(&scalar_text()?)?.naive_utc()),
            Type::DATE => {
                let t = scalar_text()?;
                let d = NaiveDate::parse_from_str(&t, "%Y-%m-%d")
                    .or_else(|_| parse_timestamptz(&t).map(|x| x.date_naive()).map_err(|_| ()))
                    .map_err(|_| format!("{t:?} is not a date"))?;
                PgValue::Date(d)
            }
            Type::BOOL => match v {
                Value::Bool(b) => PgValue::Bool(*b),
                Value::String(s) if s == "true" || s == "false" => PgValue::Bool(s == "true"),
                other => return Err(format!("{other} is not a boolean")),
            },
            Type::INT2 => PgValue::I16(int(&scalar_text()?)?.try_into().map_err(|_| "out of range for smallint".to_string())?),
            Type::INT4 => PgValue::I32(int(&scalar_text()?)?.try_into().map_err(|_| "out of range for integer".to_string())?),
            Type::INT8 => PgValue::I64(int(&scalar_text()?)?),
            Type::FLOAT4 => PgValue::F32(scalar_text()?.parse().map_err(|_| format!("{v} is not a number"))?),
            Type::FLOAT8 => PgValue::F64(scalar_text()?.parse().map_err(|_| format!("{v} is not a number"))?),
            Type::JSON | Type::JSONB => PgValue::Json(v.clone()),
            ref other => return Err(format!("column type {other} is not supported; cast the parameter to text in the statement")),
        })
    }
}

fn int(t: &str) -> Result<i64, String> {
    t.trim().parse::<i64>().map_err(|_| format!("{t:?} is not an integer that fits 64 bits"))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// RFC 3339 (`2026-11-30T09:00:00+05:00`), the same with a space, or a bare
/// date (midnight UTC).
pub fn parse_timestamptz(t: &str) -> Result<DateTime<Utc>, String> {
    let t = t.trim();
    if let Ok(d) = DateTime::<FixedOffset>::parse_from_rfc3339(t) {
        return Ok(d.with_timezone(&Utc));
    }
    if let Ok(d) = DateTime::<FixedOffset>::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f%:z") {
        return Ok(d.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).map(|x| x.and_utc()).ok_or("bad date")?);
    }
    Err(format!("{t:?} is not a timestamp (expected RFC 3339 such as 2026-11-30T09:00:00+05:00)"))
}

impl ToSql for PgValue {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            PgValue::Null => Ok(IsNull::Yes),
            PgValue::Text(s) => s.as_str().to_sql(ty, out),
            PgValue::Numeric(b) => {
                out.extend_from_slice(b);
                Ok(IsNull::No)
            }
            PgValue::Timestamptz(d) => d.to_sql(ty, out),
            PgValue::Timestamp(d) => d.to_sql(ty, out),
            PgValue::Date(d) => d.to_sql(ty, out),
            PgValue::Bool(b) => b.to_sql(ty, out),
            PgValue::I16(i) => i.to_sql(ty, out),
            PgValue::I32(i) => i.to_sql(ty, out),
            PgValue::I64(i) => i.to_sql(ty, out),
            PgValue::F32(f) => f.to_sql(ty, out),
            PgValue::F64(f) => f.to_sql(ty, out),
            PgValue::Json(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        // The value was converted for the statement's own parameter type.
        true
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_by_column_type() {
        let n: Value = serde_json::from_str("98765432109876543.21").unwrap();
        assert_eq!(PgValue::convert(&n, &Type::NUMERIC).unwrap(), PgValue::Numeric(Decimal::parse("98765432109876543.21").unwrap().to_pg_numeric().unwrap()));
        assert_eq!(PgValue::convert(&Value::String("512.35".into()), &Type::NUMERIC).unwrap(), PgValue::Numeric(Decimal::parse("512.35").unwrap().to_pg_numeric().unwrap()));
        assert!(PgValue::convert(&Value::String("abc".into()), &Type::NUMERIC).is_err());
        assert_eq!(PgValue::convert(&Value::Null, &Type::NUMERIC).unwrap(), PgValue::Null);
        let ts = PgValue::convert(&Value::String("2026-11-30T09:00:00+05:00".into()), &Type::TIMESTAMPTZ).unwrap();
        assert_eq!(ts, PgValue::Timestamptz("2026-11-30T04:00:00Z".parse().unwrap()));
        assert_eq!(PgValue::convert(&serde_json::json!(7), &Type::TEXT).unwrap(), PgValue::Text("7".into()));
        assert!(PgValue::convert(&serde_json::json!("x"), &Type::INT4).is_err());
        assert_eq!(PgValue::convert(&serde_json::json!(true), &Type::BOOL).unwrap(), PgValue::Bool(true));
    }
}
