//! The deploy preflight (`vedgate check`) and group inspection (`vedgate
//! migrate status`): brokers, topics, groups, committed offsets and lag,
//! read from the cluster with blocking librdkafka calls.

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::config::Config;
use crate::consumer::{client_config, QuietContext};

const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize)]
pub struct Report {
    pub profile: String,
    pub brokers: Vec<BrokerCheck>,
    pub topics: Vec<TopicCheck>,
    pub groups: Vec<GroupCheck>,
    /// What the routes need and is missing or unreachable.
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct BrokerCheck {
    pub address: String,
    pub reachable: bool,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct TopicCheck {
    pub topic: String,
    pub exists: bool,
    pub partitions: Option<usize>,
    /// `route` or `dead-letter`.
    pub role: String,
}

#[derive(Debug, Serialize)]
pub struct GroupCheck {
    pub group: String,
    pub topic: String,
    pub state: Option<String>,
    pub members: Vec<Member>,
    pub partitions: Vec<PartitionLag>,
    pub total_lag: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct Member {
    pub client_id: String,
    pub host: String,
}

#[derive(Debug, Serialize)]
pub struct PartitionLag {
    pub partition: i32,
    /// `None` when the group has committed nothing for the partition.
    pub committed: Option<i64>,
    pub low: i64,
    pub high: i64,
    /// High watermark minus committed offset; `None` without a committed offset.
    pub lag: Option<i64>,
}

fn consumer(config: &Config, brokers: &str, group: Option<&str>) -> Result<BaseConsumer<QuietContext>, String> {
    let mut c = client_config(&config.kafka);
    c.set("bootstrap.servers", brokers);
    c.set("group.id", group.unwrap_or("vedgate-check"));
    c.set("enable.auto.commit", "false");
    c.create_with_context(QuietContext::new("check")).map_err(|e| e.to_string())
}

/// Checks everything the loaded routes need.
pub fn check(config: &Config) -> Report {
    let mut report = Report { profile: config.kafka.profile.clone(), brokers: vec![], topics: vec![], groups: vec![], problems: vec![] };
    // Every broker, each on its own: the bootstrap list and what the cluster advertises.
    let mut addresses: BTreeSet<String> = config.kafka.brokers.iter().cloned().collect();
    for b in &config.kafka.brokers {
        if let Ok(c) = consumer(config, b, None) {
            if let Ok(md) = c.fetch_metadata(None, TIMEOUT) {
                for br in md.brokers() {
                    addresses.insert(format!("{}:{}", br.host(), br.port()));
                }
                break;
            }
        }
    }
    for a in &addresses {
        let r = consumer(config, a, None).and_then(|c| c.fetch_metadata(None, TIMEOUT).map(|_| ()).map_err(|e| e.to_string()));
        if let Err(e) = &r {
            report.problems.push(format!("broker {a} is not reachable: {e}"));
        }
        report.brokers.push(BrokerCheck { address: a.clone(), reachable: r.is_ok(), error: r.err() });
    }
    let Some(bootstrap) = report.brokers.iter().find(|b| b.reachable).map(|b| b.address.clone()) else {
        report.problems.push("no broker is reachable".into());
        return report;
    };
    let Ok(meta_client) = consumer(config, &bootstrap, None) else { return report };
    let md = match meta_client.fetch_metadata(None, TIMEOUT) {
        Ok(md) => md,
        Err(e) => {
            report.problems.push(format!("cannot read cluster metadata: {e}"));
            return report;
        }
    };
    let partitions_of = |t: &str| md.topics().iter().find(|x| x.name() == t && x.error().is_none()).map(|x| x.partitions().len());
    let mut seen = BTreeSet::new();
    for s in &config.subscriptions {
        if seen.insert(s.topic.clone()) {
            let p = partitions_of(&s.topic);
            if p.is_none() {
                report.problems.push(format!("topic {} does not exist (routes of group {} read it)", s.topic, s.group));
            }
            report.topics.push(TopicCheck { topic: s.topic.clone(), exists: p.is_some(), partitions: p, role: "route".into() });
        }
        if let Some(d) = &s.dead_letter_topic {
            if seen.insert(d.clone()) {
                let p = partitions_of(d);
                report.topics.push(TopicCheck { topic: d.clone(), exists: p.is_some(), partitions: p, role: "dead-letter (created by the gateway when missing)".into() });
            }
        }
    }
    for s in &config.subscriptions {
        report.groups.push(group_status(config, &bootstrap, &s.group, &s.topic, partitions_of(&s.topic).unwrap_or(0)));
    }
    report
}

/// State, members, committed offsets and lag of one group on one topic.
pub fn group_status(config: &Config, bootstrap: &str, group: &str, topic: &str, partitions: usize) -> GroupCheck {
    let mut g = GroupCheck { group: group.into(), topic: topic.into(), state: None, members: vec![], partitions: vec![], total_lag: None };
    let Ok(c) = consumer(config, bootstrap, Some(group)) else { return g };
    if let Ok(list) = c.fetch_group_list(Some(group), TIMEOUT) {
        if let Some(info) = list.groups().iter().find(|x| x.name() == group) {
            g.state = Some(info.state().to_string());
            g.members = info.members().iter().map(|m| Member { client_id: m.client_id().to_string(), host: m.client_host().to_string() }).collect();
        }
    }
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition(topic, p);
    }
    let committed = c.committed_offsets(tpl, TIMEOUT).ok();
    let mut total = 0;
    let mut any = false;
    for p in 0..partitions as i32 {
        let (low, high) = c.fetch_watermarks(topic, p, TIMEOUT).unwrap_or((-1, -1));
        let off = committed.as_ref().and_then(|t| t.find_partition(topic, p)).and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        });
        let lag = match off {
            Some(o) if high >= 0 => Some((high - o).max(0)),
            _ => None,
        };
        if let Some(l) = lag {
            total += l;
            any = true;
        }
        g.partitions.push(PartitionLag { partition: p, committed: off, low, high, lag });
    }
    g.total_lag = any.then_some(total);
    g
}

/// One group's status for people.
pub fn render_group(g: &GroupCheck) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let members: Vec<String> = g.members.iter().map(|m| format!("{}@{}", m.client_id, m.host)).collect();
    let _ = writeln!(out, "group   {} on {}: state {}, {} member(s) {}", g.group, g.topic, g.state.clone().unwrap_or_else(|| "unknown".into()), g.members.len(), members.join(", "));
    for p in &g.partitions {
        let _ = writeln!(
            out,
            "        partition {:>3}  committed {:>10}  high {:>10}  lag {}",
            p.partition,
            p.committed.map(|c| c.to_string()).unwrap_or_else(|| "none".into()),
            p.high,
            p.lag.map(|l| l.to_string()).unwrap_or_else(|| "-".into())
        );
    }
    out
}

/// Partition count of a topic (0 when it does not exist).
pub fn partitions(config: &Config, bootstrap: &str, topic: &str) -> usize {
    consumer(config, bootstrap, None)
        .ok()
        .and_then(|c| c.fetch_metadata(Some(topic), TIMEOUT).ok())
        .and_then(|md| md.topics().first().filter(|t| t.error().is_none()).map(|t| t.partitions().len()))
        .unwrap_or(0)
}

/// The report for people.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "profile {}", r.profile);
    for b in &r.brokers {
        let _ = writeln!(out, "broker  {:<28} {}", b.address, if b.reachable { "reachable".to_string() } else { format!("UNREACHABLE: {}", b.error.clone().unwrap_or_default()) });
    }
    for t in &r.topics {
        let _ = writeln!(out, "topic   {:<48} {:<10} {}", t.topic, t.partitions.map(|p| format!("{p} part.")).unwrap_or_else(|| "MISSING".into()), t.role);
    }
    for g in &r.groups {
        out.push_str(&render_group(g));
    }
    for p in &r.problems {
        let _ = writeln!(out, "PROBLEM {p}");
    }
    out
}
