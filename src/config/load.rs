//! Loading: read the files, parse them, check everything, and compile routes.
//! Every problem is collected; nothing stops at the first error.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawGateway, RawPredicate, RawRoute, RawRouteFile, RawSink};
use super::{
    Config, Diagnostics, Env, KafkaSettings, RetryPolicy, Route, Settings, Shape, SinkKind, SinkSpec, SourceFile, Subscription,
    PROFILES,
};
use crate::routing::{JsonPath, MatchValue, Predicate, PredicateTest, RouteTable};
use crate::shape::sql::{rewrite_named_params, SqlShape};
use crate::shape::{Body, HttpShape, PathTemplate, Source, Template};

/// What to load and against which environment.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub config_path: PathBuf,
    /// A directory of `*.toml` route files, or one file.
    pub routes_path: PathBuf,
    /// `--env`; falls back to `VEDGATE_ENV`, then `[defaults] env`, then `local`.
    pub profile: Option<String>,
    pub env: Env,
}

/// Loads and checks everything. Returns the config with its warnings, or
/// every diagnostic when there is at least one error.
pub fn load(opts: &LoadOptions) -> Result<(Config, Diagnostics), Diagnostics> {
    let mut diags = Diagnostics::default();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut files = Vec::new();

    let gateway = match read(&opts.config_path) {
        Ok(src) => {
            src.text.hash(&mut hasher);
            files.push(src.path.clone());
            match toml::from_str::<RawGateway>(&src.text) {
                Ok(raw) => Some((src, raw)),
                Err(e) => {
                    diags.push(src.toml_error(&e));
                    None
                }
            }
        }
        Err(d) => {
            diags.push(d);
            None
        }
    };
    let (settings, kafka) = match &gateway {
        Some((src, raw)) => gateway_settings(src, raw, opts, &mut diags),
        None => (Settings::default(), KafkaSettings { profile: String::new(), brokers: vec![], properties: BTreeMap::new() }),
    };

    let mut compiler = Compiler { env: &opts.env, diags, subs: Vec::new(), sinks: Vec::new(), retry: settings.retry.clone(), schemas: HashMap::new() };
    match route_files(&opts.routes_path) {
        Ok(paths) if paths.is_empty() => compiler.diags.push(SourceFile::new(&opts.routes_path, String::new()).error(None, "no route files (*.toml) found")),
        Ok(paths) => {
            for path in paths {
                match read(&path) {
                    Ok(src) => {
                        src.text.hash(&mut hasher);
                        files.push(src.path.clone());
                        match toml::from_str::<RawRouteFile>(&src.text) {
                            Ok(raw) => compiler.file(&src, raw),
                            Err(e) => compiler.diags.push(src.toml_error(&e)),
                        }
                    }
                    Err(d) => compiler.diags.push(d),
                }
            }
        }
        Err(d) => compiler.diags.push(d),
    }
    let Compiler { mut diags, subs, sinks, .. } = compiler;
    for sub in &subs {
        let shadowed = sub.table.shadowed();
        for (a, b, what) in sub.table.overlaps() {
            if shadowed.iter().any(|(e, l)| (*e, *l) == (a, b)) {
                continue;
            }
            let (ra, rb) = (&sub.routes[a], &sub.routes[b]);
            diags.push(super::Diagnostic {
                severity: super::Severity::Warning,
                path: rb.file.clone(),
                line: 0,
                col: 0,
                message: format!("routes {:?} and {:?} of group {:?} both claim messages where {what}; the first ({:?}) takes them: there is no fan-out", ra.name, rb.name, sub.group, ra.name),
            });
        }
        for (earlier, later) in shadowed {
            let (e, l) = (&sub.routes[earlier], &sub.routes[later]);
            diags.push(super::Diagnostic {
                severity: super::Severity::Warning,
                path: l.file.clone(),
                line: 0,
                col: 0,
                message: format!(
                    "route {:?} can never match in group {:?}: route {:?} ({}) claims all its messages first",
                    l.name,
                    sub.group,
                    e.name,
                    e.file.display()
                ),
            });
        }
    }
    if diags.has_errors() {
        return Err(diags);
    }
    let config = Config { settings, kafka, subscriptions: subs, sinks, hash: format!("{:016x}", hasher.finish()), files };
    Ok((config, diags))
}

fn read(path: &Path) -> Result<SourceFile, super::Diagnostic> {
    match read_limited(path, 8 << 20) {
        Ok(text) => Ok(SourceFile::new(path, text)),
        Err(e) => Err(SourceFile::new(path, String::new()).error(None, format!("cannot read file: {e}"))),
    }
}

/// Reads a regular file of at most `limit` bytes: a FIFO would block and
/// /dev/zero never ends (found by fuzzing the loader).
fn read_limited(path: &Path, limit: u64) -> std::io::Result<String> {
    use std::io::Read;
    if !std::fs::metadata(path)?.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut text = String::new();
    std::fs::File::open(path)?.take(limit + 1).read_to_string(&mut text)?;
    if text.len() as u64 > limit {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("larger than {limit} bytes")));
    }
    Ok(text)
}

fn route_files(path: &Path) -> Result<Vec<PathBuf>, super::Diagnostic> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path).map_err(|e| {
        SourceFile::new(path, String::new()).error(None, format!("cannot read routes directory: {e}"))
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

fn span<T>(s: &Spanned<T>) -> Option<Range<usize>> {
    Some(s.span())
}

fn positive(src: &SourceFile, v: &Option<Spanned<i64>>, name: &str, diags: &mut Diagnostics) -> Option<u64> {
    let v = v.as_ref()?;
    if *v.get_ref() <= 0 {
        diags.push(src.error(span(v), format!("{name} must be positive, got {}", v.get_ref())));
        return None;
    }
    Some(*v.get_ref() as u64)
}

fn nonneg(src: &SourceFile, v: &Option<Spanned<i64>>, name: &str, diags: &mut Diagnostics) -> Option<u64> {
    let v = v.as_ref()?;
    if *v.get_ref() < 0 {
        diags.push(src.error(span(v), format!("{name} must not be negative, got {}", v.get_ref())));
        return None;
    }
    Some(*v.get_ref() as u64)
}

fn gateway_settings(src: &SourceFile, raw: &RawGateway, opts: &LoadOptions, diags: &mut Diagnostics) -> (Settings, KafkaSettings) {
    let d = &raw.defaults;
    let mut s = Settings::default();
    let ms = Duration::from_millis;
    if let Some(v) = positive(src, &d.channels, "channels", diags) {
        s.channels = v as usize;
    }
    if let Some(v) = positive(src, &d.queue_capacity, "queue_capacity", diags) {
        s.queue_capacity = v as usize;
    }
    if let Some(v) = positive(src, &d.retry_initial_delay_ms, "retry_initial_delay_ms", diags) {
        s.retry_initial_delay = ms(v);
    }
    if let Some(v) = positive(src, &d.retry_max_delay_ms, "retry_max_delay_ms", diags) {
        s.retry_max_delay = ms(v);
    }
    if let Some(v) = positive(src, &d.commit_interval_ms, "commit_interval_ms", diags) {
        s.commit_interval = ms(v);
    }
    if let Some(v) = positive(src, &d.shutdown_grace_ms, "shutdown_grace_ms", diags) {
        s.shutdown_grace = ms(v);
    }
    if let Some(v) = positive(src, &d.session_timeout_ms, "session_timeout_ms", diags) {
        s.session_timeout_ms = v as u32;
    }
    if let Some(v) = positive(src, &d.http_timeout_ms, "http_timeout_ms", diags) {
        s.http_timeout = ms(v);
    }
    let admin_span = d.admin_addr.as_ref().map(|a| a.span());
    let admin_text = opts.env.raw("VEDGATE_ADMIN_ADDR").or(d.admin_addr.as_ref().map(|a| a.get_ref().as_str()));
    if let Some(text) = admin_text {
        s.admin_addr = if text.trim().is_empty() {
            None
        } else {
            match text.trim().parse() {
                Ok(a) => Some(a),
                Err(_) => {
                    diags.push(src.error(admin_span, format!("admin address {text:?} is not an address like 127.0.0.1:9898")));
                    None
                }
            }
        };
    }
    // The Go services' variables keep working.
    let env = &opts.env;
    if let Some(v) = env.get("CHANNELS_COUNT") {
        match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => s.channels = n,
            _ => diags.push(src.error(None, format!("CHANNELS_COUNT={v:?} is not a positive integer"))),
        }
    }
    if let Some(v) = env.get("SLEEP_SECOND") {
        match v.trim().parse::<f64>() {
            Ok(n) if n > 0.0 && n < 86_400.0 => {
                s.retry_initial_delay = Duration::from_secs_f64(n);
                s.retry_max_delay = s.retry_max_delay.max(s.retry_initial_delay);
            }
            _ => diags.push(src.error(None, format!("SLEEP_SECOND={v:?} is not a positive number of seconds"))),
        }
    }
    if let Some(v) = nonneg(src, &d.retry_max_attempts, "retry_max_attempts", diags) {
        s.retry.max_attempts = (v > 0).then_some(v as u32);
    }
    if let Some(v) = nonneg(src, &d.retry_max_duration_ms, "retry_max_duration_ms", diags) {
        s.retry.max_duration = (v > 0).then(|| ms(v));
    }
    if let Some(v) = positive(src, &d.max_message_bytes, "max_message_bytes", diags) {
        s.max_message_bytes = v as usize;
    }
    if let Some(v) = positive(src, &d.max_json_depth, "max_json_depth", diags) {
        s.max_json_depth = (v as usize).min(120); // serde_json refuses deeper than 128 anyway
    }
    if let Some(v) = positive(src, &d.stall_timeout_ms, "stall_timeout_ms", diags) {
        s.stall_timeout = ms(v);
    }
    s.retry.initial_delay = s.retry_initial_delay;
    s.retry.max_delay = s.retry_max_delay;
    if s.retry_max_delay < s.retry_initial_delay {
        diags.push(src.error(d.retry_max_delay_ms.as_ref().map(|v| v.span()), "retry_max_delay_ms is smaller than the initial delay"));
    }

    let profile = opts
        .profile
        .clone()
        .or_else(|| env.get("VEDGATE_ENV").map(str::to_string))
        .or_else(|| d.env.clone())
        .unwrap_or_else(|| "local".to_string());
    let mut kafka = KafkaSettings { profile: profile.clone(), brokers: vec![], properties: BTreeMap::new() };
    for name in raw.profile.keys() {
        if !PROFILES.contains(&name.as_str()) {
            diags.push(src.warning(span(&raw.profile[name]), format!("profile {name:?} is not one of the contract's: {}", PROFILES.join(", "))));
        }
    }
    match raw.profile.get(&profile) {
        Some(p) => {
            kafka.brokers = p.get_ref().brokers.iter().map(|b| b.trim().to_string()).collect();
            for (k, v) in &p.get_ref().kafka {
                let mut flat = Vec::new();
                flatten_kafka_prop(k.clone(), v, &mut flat);
                for (name, value) in flat {
                    let text = match value {
                        Ok(text) => text,
                        Err(kind) => {
                            diags.push(src.error(span(p), format!("profile {profile:?}: librdkafka property {name:?}: a {kind} is not a property value; write a string, an integer or a boolean")));
                            continue;
                        }
                    };
                    match env.expand(&text) {
                        Ok(x) => {
                            kafka.properties.insert(name, x);
                        }
                        Err(e) => diags.push(src.error(span(p), format!("profile {profile:?}: librdkafka property {name:?}: {e}"))),
                    }
                }
            }
        }
        None => diags.push(src.error(None, format!(
            "environment profile {profile:?} is not defined; gateway.toml defines: {}",
            raw.profile.keys().cloned().collect::<Vec<_>>().join(", ")
        ))),
    }
    if let Some(b) = env.get("BROKERS") {
        kafka.brokers = b.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect();
    }
    if kafka.brokers.is_empty() && !diags.has_errors() {
        diags.push(src.error(None, format!("profile {profile:?} has no brokers (set brokers or BROKERS)")));
    }
    (s, kafka)
}

struct Compiler<'a> {
    env: &'a Env,
    diags: Diagnostics,
    subs: Vec<Subscription>,
    sinks: Vec<SinkSpec>,
    /// Default retry policy from gateway.toml.
    retry: RetryPolicy,
    /// Compiled schemas by canonical path, shared by the routes that name them.
    schemas: HashMap<PathBuf, super::MessageSchema>,
}

/// A sink of the file being compiled.
struct LocalSink {
    index: usize,
    /// Whether it sends several messages per request.
    batching: bool,
    kind: String,
    base_url: String,
    headers: Vec<(String, String)>,
}

impl Compiler<'_> {
    fn expand(&mut self, src: &SourceFile, v: &Spanned<String>) -> Option<String> {
        match self.env.expand(v.get_ref()) {
            Ok(s) => Some(s),
            Err(e) => {
                self.diags.push(src.error(span(v), e.to_string()));
                None
            }
        }
    }

    fn file(&mut self, src: &SourceFile, raw: RawRouteFile) {
        let stem = src.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();

        // Subscriptions: local name -> index in self.subs (merged by topic and group).
        let mut subs: HashMap<String, usize> = HashMap::new();
        for s in &raw.subscription {
            let s = s.get_ref();
            let name = s.name.get_ref().clone();
            if subs.contains_key(&name) {
                self.diags.push(src.error(span(&s.name), format!("subscription {name:?} is declared twice in this file")));
                continue;
            }
            let (Some(topic), Some(group)) = (self.expand(src, &s.topic), self.expand(src, &s.group)) else { continue };
            if topic.is_empty() || group.is_empty() {
                self.diags.push(src.error(span(&s.topic), "topic and group must not be empty"));
                continue;
            }
            let dead_letter_topic = match (&s.dead_letter, &s.dead_letter_topic) {
                (Some(false), Some(t)) => {
                    self.diags.push(src.error(span(t), "dead_letter = false and dead_letter_topic contradict each other"));
                    continue;
                }
                (Some(false), None) => None,
                (_, Some(t)) => match self.expand(src, t) {
                    Some(x) if !x.is_empty() => Some(x),
                    Some(_) => {
                        self.diags.push(src.error(span(t), "dead_letter_topic must not be empty (use dead_letter = false)"));
                        continue;
                    }
                    None => continue,
                },
                (_, None) => Some(format!("{group}.dlq")),
            };
            let idx = match self.subs.iter().position(|x| x.topic == topic && x.group == group) {
                Some(i) => {
                    if self.subs[i].dead_letter_topic != dead_letter_topic {
                        self.diags.push(src.error(span(&s.name), format!(
                            "group {group:?} on {topic:?} is declared elsewhere with dead-letter topic {:?}; declare the same",
                            self.subs[i].dead_letter_topic
                        )));
                    }
                    i
                }
                None => {
                    self.subs.push(Subscription { topic, group, routes: Vec::new(), table: RouteTable::default(), dead_letter_topic });
                    self.subs.len() - 1
                }
            };
            subs.insert(name, idx);
        }

        let mut sinks: HashMap<String, LocalSink> = HashMap::new();
        for (name, sink) in &raw.sink {
            if let Some(local) = self.sink(src, &stem, name, sink) {
                sinks.insert(name.clone(), local);
            }
        }

        let mut used_sinks = HashSet::new();
        let mut new_routes: Vec<(usize, Route, Option<Vec<Predicate>>)> = Vec::new();
        for r in &raw.route {
            let r = r.get_ref();
            let route_sub = subs.get(r.subscription.get_ref()).copied();
            if route_sub.is_none() && !raw.subscription.iter().any(|s| s.get_ref().name.get_ref() == r.subscription.get_ref()) {
                let known: Vec<_> = raw.subscription.iter().map(|s| s.get_ref().name.get_ref().clone()).collect();
                self.diags.push(src.error(span(&r.subscription), format!(
                    "unknown subscription {:?}; this file declares: {}", r.subscription.get_ref(), if known.is_empty() { "none".to_string() } else { known.join(", ") }
                )));
            }
            let sink = sinks.get(r.sink.get_ref());
            if sink.is_none() && !raw.sink.contains_key(r.sink.get_ref()) {
                let known: Vec<_> = raw.sink.keys().cloned().collect();
                self.diags.push(src.error(span(&r.sink), format!(
                    "unknown sink {:?}; this file declares: {}", r.sink.get_ref(), if known.is_empty() { "none".to_string() } else { known.join(", ") }
                )));
            }
            used_sinks.insert(r.sink.get_ref().clone());
            let preds = self.predicates(src, &r.when);
            let shape = sink.and_then(|s| self.route_shape(src, r, s));
            if let (Some(sub), Some(sink), Some(preds), Some(shape)) = (route_sub, sink, preds, shape) {
                let name = r.name.get_ref().clone();
                let dup = self.subs[sub].routes.iter().any(|x| x.name == name) || new_routes.iter().any(|(s, x, _)| *s == sub && x.name == name);
                if name.is_empty() {
                    self.diags.push(src.error(span(&r.name), "route name must not be empty"));
                } else if dup {
                    self.diags.push(src.error(span(&r.name), format!("route name {name:?} is used twice in group {:?}", self.subs[sub].group)));
                }
                let enabled = r.enabled.unwrap_or(true);
                let retry = self.retry_policy(src, r);
                let schema = match &r.schema {
                    Some(p) => match self.schema(src, p) {
                        Some(s) => Some(s),
                        None => continue,
                    },
                    None => None,
                };
                if let Some(sc) = &schema {
                    let mut paths: Vec<&Spanned<String>> = r.when.iter().map(|p| &p.get_ref().path).collect();
                    if let Some(q) = &r.sql {
                        paths.extend(q.get_ref().params.values().filter(|v| v.get_ref().starts_with('$')));
                    }
                    for p in paths {
                        if let Ok(jp) = JsonPath::parse(p.get_ref()) {
                            if !sc.declares(&jp) {
                                self.diags.push(src.warning(span(p), format!("{} cannot match the route's schema {}: a property it names is not declared", p.get_ref(), sc.path.display())));
                            }
                        }
                    }
                }
                let order_key = match &r.order_key {
                    Some(k) => match Source::parse(k.get_ref()) {
                        Ok(s) if !s.is_element() => Some(s),
                        Ok(_) => {
                            self.diags.push(src.error(span(k), "order_key takes a message path ($.…) or kafka.key"));
                            continue;
                        }
                        Err(e) => {
                            self.diags.push(src.error(span(k), e));
                            continue;
                        }
                    },
                    None => None,
                };
                let observe = match r.mode.as_ref().map(|m| m.get_ref().as_str()) {
                    None | Some("deliver") => false,
                    Some("observe") => true,
                    Some(other) => {
                        self.diags.push(src.error(r.mode.as_ref().map(|m| m.span()), format!("unknown mode {other:?} (expected deliver or observe)")));
                        continue;
                    }
                };
                let mirror = match &r.mirror {
                    None => None,
                    Some(m) => match sinks.get(m.get_ref()) {
                        None => {
                            self.diags.push(src.error(span(m), format!("unknown mirror sink {:?}", m.get_ref())));
                            continue;
                        }
                        Some(ms) if ms.kind != sink.kind => {
                            self.diags.push(src.error(span(m), format!("mirror sink {:?} is {}, the route's sink is {}: a mirror gets the same request, so the kinds must match", m.get_ref(), ms.kind, sink.kind)));
                            continue;
                        }
                        Some(ms) => {
                            used_sinks.insert(m.get_ref().clone());
                            match self.route_shape(src, r, ms) {
                                Some(shape) => Some(super::Mirror { sink: ms.index, shape }),
                                None => continue,
                            }
                        }
                    },
                };
                new_routes.push((sub, Route { name, file: src.path.clone(), sink: sink.index, shape, retry, schema, order_key, observe, mirror }, enabled.then_some(preds)));
            }
        }
        for (name, sink) in &raw.sink {
            if !used_sinks.contains(name) {
                self.diags.push(src.warning(span(sink), format!("sink {name:?} is not used by any route")));
            }
        }
        // Rebuild the tables of the subscriptions this file added to.
        let touched: HashSet<usize> = new_routes.iter().map(|(s, _, _)| *s).collect();
        let mut preds_by_sub: HashMap<usize, Vec<Option<Vec<Predicate>>>> = HashMap::new();
        for (sub, route, preds) in new_routes {
            self.subs[sub].routes.push(route);
            preds_by_sub.entry(sub).or_default().push(preds);
        }
        for sub in touched {
            let mut all = std::mem::take(&mut self.subs[sub].table).into_predicates();
            all.extend(preds_by_sub.remove(&sub).unwrap_or_default());
            self.subs[sub].table = RouteTable::new(all);
        }
    }

    fn schema(&mut self, src: &SourceFile, p: &Spanned<String>) -> Option<super::MessageSchema> {
        let base = src.path.parent().unwrap_or(Path::new("."));
        let path = base.join(p.get_ref());
        let key = path.canonicalize().unwrap_or(path.clone());
        if let Some(s) = self.schemas.get(&key) {
            return Some(s.clone());
        }
        let text = match read_limited(&path, 1 << 20) {
            Ok(t) => t,
            Err(e) => {
                self.diags.push(src.error(span(p), format!("cannot read schema {}: {e}", path.display())));
                return None;
            }
        };
        let json: serde_json::Value = match serde_json::from_str(&text) {
            Ok(j) => j,
            Err(e) => {
                self.diags.push(src.error(span(p), format!("schema {} is not JSON: {e}", path.display())));
                return None;
            }
        };
        match jsonschema::validator_for(&json) {
            Ok(v) => {
                let s = super::MessageSchema { path, validator: Arc::new(v), json: Arc::new(json) };
                self.schemas.insert(key, s.clone());
                Some(s)
            }
            Err(e) => {
                self.diags.push(src.error(span(p), format!("schema {} is not a valid JSON Schema: {e}", path.display())));
                None
            }
        }
    }

    fn retry_policy(&mut self, src: &SourceFile, r: &RawRoute) -> RetryPolicy {
        let mut p = self.retry.clone();
        let Some(raw) = &r.retry else { return p };
        let sp = span(raw);
        let raw = raw.get_ref();
        let mut bad = |what: &str| self.diags.push(src.error(sp.clone(), format!("retry.{what} must not be negative")));
        let ms = |v: i64| Duration::from_millis(v as u64);
        if let Some(v) = raw.initial_delay_ms {
            if v <= 0 { bad("initial_delay_ms") } else { p.initial_delay = ms(v) }
        }
        if let Some(v) = raw.max_delay_ms {
            if v <= 0 { bad("max_delay_ms") } else { p.max_delay = ms(v) }
        }
        if let Some(v) = raw.max_attempts {
            if v < 0 { bad("max_attempts") } else { p.max_attempts = (v > 0).then_some(v as u32) }
        }
        if let Some(v) = raw.max_duration_ms {
            if v < 0 { bad("max_duration_ms") } else { p.max_duration = (v > 0).then(|| ms(v)) }
        }
        if p.max_delay < p.initial_delay {
            self.diags.push(src.error(sp, "retry.max_delay_ms is smaller than the initial delay"));
        }
        p
    }

    fn sink(&mut self, src: &SourceFile, stem: &str, name: &str, sink: &Spanned<RawSink>) -> Option<LocalSink> {
        let s = sink.get_ref();
        let kind = s.kind.get_ref().as_str();
        let id = format!("{stem}/{name}");
        let mut headers = Vec::new();
        for (k, v) in &s.headers {
            if let Some(x) = self.expand(src, v) {
                headers.push((k.clone(), x));
            }
        }
        let url = match &s.url {
            Some(u) => self.expand(src, u),
            None => None,
        };
        let (spec, base_url) = match kind {
            "http" => {
                let Some(url) = url else {
                    if s.url.is_none() {
                        self.diags.push(src.error(span(sink), format!("http sink {name:?} needs url")));
                    }
                    return None;
                };
                if let Err(e) = reqwest::Url::parse(&url) {
                    self.diags.push(src.error(s.url.as_ref().map(|u| u.span()), format!("sink {name:?}: invalid URL {url:?}: {e}")));
                    return None;
                }
                let timeout = s.timeout_ms.as_ref().map(|t| Duration::from_millis((*t.get_ref()).max(1) as u64)).unwrap_or(Duration::from_secs(10));
                let retryable_statuses = match &s.retryable_statuses {
                    Some(list) if list.get_ref().iter().all(|c| (100..600).contains(c)) => Some(list.get_ref().iter().map(|c| *c as u16).collect()),
                    Some(list) => {
                        self.diags.push(src.error(span(list), "retryable_statuses takes HTTP status codes (100-599)"));
                        return None;
                    }
                    None => None,
                };
                let mut file = |f: &Option<Spanned<String>>| -> Option<Option<PathBuf>> {
                    match f {
                        None => Some(None),
                        Some(p) => {
                            let path = self.expand(src, p)?;
                            let path = src.path.parent().unwrap_or(Path::new(".")).join(path);
                            if !path.is_file() {
                                self.diags.push(src.error(span(p), format!("no such file: {}", path.display())));
                                return None;
                            }
                            Some(Some(path))
                        }
                    }
                };
                let tls = super::HttpTls { ca_file: file(&s.ca_file)?, client_cert_file: file(&s.client_cert_file)?, client_key_file: file(&s.client_key_file)? };
                if tls.client_cert_file.is_some() != tls.client_key_file.is_some() {
                    self.diags.push(src.error(span(sink), "client_cert_file and client_key_file go together"));
                    return None;
                }
                let max_rows = s.batch_max_messages.as_ref().map(|b| (*b.get_ref()).clamp(1, 10_000) as usize).unwrap_or(1);
                let linger = Duration::from_millis(s.batch_linger_ms.as_ref().map(|b| (*b.get_ref()).clamp(0, 10_000) as u64).unwrap_or(0));
                let format = match s.batch_format.as_ref().map(|f| f.get_ref().as_str()) {
                    None | Some("json-array") => crate::shape::BatchFormat::JsonArray,
                    Some("ndjson") => crate::shape::BatchFormat::Ndjson,
                    Some(other) => {
                        self.diags.push(src.error(s.batch_format.as_ref().map(|f| f.span()), format!("unknown batch_format {other:?} (expected json-array or ndjson)")));
                        return None;
                    }
                };
                let batch = super::Batching { max_rows, linger, format: Some(format) };
                (SinkKind::Http { timeout, retryable_statuses, tls, batch }, url.trim_end_matches('/').to_string())
            }
            "sql" => {
                let Some(url) = url else {
                    if s.url.is_none() {
                        self.diags.push(src.error(span(sink), format!("sql sink {name:?} needs url (a postgres:// URL)")));
                    }
                    return None;
                };
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://") || url.contains('=')) {
                    self.diags.push(src.error(s.url.as_ref().map(|u| u.span()), format!("sink {name:?}: {url:?} is not a PostgreSQL URL")));
                    return None;
                }
                let pool_size = s.pool_size.as_ref().map(|p| (*p.get_ref()).max(1) as usize).unwrap_or(4);
                let max_rows = s.batch_max_rows.as_ref().map(|b| (*b.get_ref()).clamp(1, 10_000) as usize).unwrap_or(1);
                let linger = Duration::from_millis(s.batch_linger_ms.as_ref().map(|b| (*b.get_ref()).clamp(0, 10_000) as u64).unwrap_or(0));
                (SinkKind::Sql { url, pool_size, batch: super::Batching { max_rows, linger, format: None } }, String::new())
            }
            "blackhole" => (SinkKind::Blackhole, String::new()),
            other => {
                self.diags.push(src.error(span(&s.kind), format!("unknown sink type {other:?} (expected http, sql or blackhole)")));
                return None;
            }
        };
        let mut flow = super::FlowControl::default();
        for (v, what) in [(&s.rate_limit_per_s, "rate_limit_per_s"), (&s.max_in_flight, "max_in_flight")] {
            if let Some(v) = v {
                if *v.get_ref() <= 0 || *v.get_ref() > u32::MAX as i64 {
                    self.diags.push(src.error(span(v), format!("{what} must be a positive number")));
                    return None;
                }
            }
        }
        flow.rate_per_s = s.rate_limit_per_s.as_ref().map(|v| *v.get_ref() as u32);
        flow.max_in_flight = s.max_in_flight.as_ref().map(|v| *v.get_ref() as usize);
        self.sinks.push(SinkSpec { id, kind: spec, flow });
        let batching = self.sinks.last().is_some_and(|x| matches!(x.kind, SinkKind::Http { .. }) && x.batching().is_some());
        Some(LocalSink { index: self.sinks.len() - 1, batching, kind: kind.to_string(), base_url, headers })
    }

    fn predicates(&mut self, src: &SourceFile, when: &[Spanned<RawPredicate>]) -> Option<Vec<Predicate>> {
        let mut out = Vec::new();
        let mut ok = true;
        for p in when {
            let sp = span(p);
            let p = p.get_ref();
            let path = match JsonPath::parse(p.path.get_ref()) {
                Ok(x) => x,
                Err(e) => {
                    self.diags.push(src.error(span(&p.path), e));
                    ok = false;
                    continue;
                }
            };
            let scalar = |v: &toml::Value| -> Option<MatchValue> {
                Some(match v {
                    toml::Value::String(s) => MatchValue::Str(s.clone()),
                    toml::Value::Integer(i) => MatchValue::Num(i.to_string()),
                    toml::Value::Boolean(b) => MatchValue::Bool(*b),
                    _ => return None,
                })
            };
            let test = match (&p.equals, &p.one_of, &p.exists) {
                (Some(v), None, None) => match scalar(v.get_ref()) {
                    Some(m) => PredicateTest::Equals(m),
                    None => {
                        self.diags.push(src.error(span(v), "equals takes a string, integer or boolean"));
                        ok = false;
                        continue;
                    }
                },
                (None, Some(vs), None) => match vs.get_ref().iter().map(scalar).collect::<Option<Vec<_>>>() {
                    Some(ms) if !ms.is_empty() => PredicateTest::OneOf(ms),
                    _ => {
                        self.diags.push(src.error(span(vs), "one_of takes a non-empty list of strings, integers or booleans"));
                        ok = false;
                        continue;
                    }
                },
                (None, None, Some(b)) => PredicateTest::Exists(*b.get_ref()),
                _ => {
                    self.diags.push(src.error(sp, "a predicate needs exactly one of equals, one_of, exists"));
                    ok = false;
                    continue;
                }
            };
            out.push(Predicate { path, test });
        }
        ok.then_some(out)
    }

    fn route_shape(&mut self, src: &SourceFile, r: &RawRoute, sink: &LocalSink) -> Option<Shape> {
        match sink.kind.as_str() {
            "http" => {
                if let Some(sql) = &r.sql {
                    self.diags.push(src.error(span(sql), format!("route {:?} sends to http sink {:?}: use [route.http], not [route.sql]", r.name.get_ref(), r.sink.get_ref())));
                }
                let Some(h) = &r.http else {
                    self.diags.push(src.error(span(&r.sink), format!("route {:?} sends to http sink {:?} and needs [route.http] with a path", r.name.get_ref(), r.sink.get_ref())));
                    return None;
                };
                let h = h.get_ref();
                let method = h.method.as_ref().map(|m| m.get_ref().to_ascii_uppercase()).unwrap_or_else(|| "POST".into());
                if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
                    self.diags.push(src.error(h.method.as_ref().map(|m| m.span()), format!("unsupported HTTP method {method:?}")));
                    return None;
                }
                if sink.batching && h.path.get_ref().contains('{') {
                    self.diags.push(src.error(span(&h.path), "this sink batches messages into one request: the path must be fixed (no {placeholders})"));
                    return None;
                }
                let path = match PathTemplate::parse(h.path.get_ref()) {
                    Ok(p) => p,
                    Err(e) => {
                        self.diags.push(src.error(span(&h.path), e));
                        return None;
                    }
                };
                let mut headers = sink.headers.clone();
                for (k, v) in &h.headers {
                    headers.push((k.clone(), self.expand(src, v)?));
                }
                let body = match &h.body {
                    None => Body::Original,
                    Some(b) => {
                        let bs = Some(r.http.as_ref().map(|h| h.span()).unwrap_or_default());
                        match (b.original, &b.select, &b.template) {
                            (Some(true), None, None) => Body::Original,
                            (None, Some(sel), None) => match Source::parse(sel.get_ref()) {
                                Ok(s) if !s.is_element() => Body::Select(s),
                                Ok(_) => {
                                    self.diags.push(src.error(span(sel), "element paths (@) only work in SQL params with for_each"));
                                    return None;
                                }
                                Err(e) => {
                                    self.diags.push(src.error(span(sel), e));
                                    return None;
                                }
                            },
                            (None, None, Some(t)) => match Template::from_toml(t.get_ref()) {
                                Ok(t) => Body::Template(t),
                                Err(e) => {
                                    self.diags.push(src.error(span(t), e));
                                    return None;
                                }
                            },
                            _ => {
                                self.diags.push(src.error(bs, "body needs exactly one of original = true, select = \"$.path\", template = { ... }"));
                                return None;
                            }
                        }
                    }
                };
                Some(Shape::Http(HttpShape { method, base_url: sink.base_url.clone(), path, headers, body }))
            }
            "sql" => {
                if let Some(h) = &r.http {
                    self.diags.push(src.error(span(h), format!("route {:?} sends to sql sink {:?}: use [route.sql], not [route.http]", r.name.get_ref(), r.sink.get_ref())));
                }
                let Some(q) = &r.sql else {
                    self.diags.push(src.error(span(&r.sink), format!("route {:?} sends to sql sink {:?} and needs [route.sql] with a statement", r.name.get_ref(), r.sink.get_ref())));
                    return None;
                };
                let q = q.get_ref();
                let (statement, names) = rewrite_named_params(q.statement.get_ref());
                let for_each = match &q.for_each {
                    Some(f) => match JsonPath::parse(f.get_ref()) {
                        Ok(p) => Some(p),
                        Err(e) => {
                            self.diags.push(src.error(span(f), e));
                            return None;
                        }
                    },
                    None => None,
                };
                let mut ok = true;
                let mut params = Vec::new();
                for name in &names {
                    match q.params.get(name) {
                        None => {
                            self.diags.push(src.error(span(&q.statement), format!("statement uses :{name} but [route.sql.params] has no {name}")));
                            ok = false;
                        }
                        Some(v) => match Source::parse(v.get_ref()) {
                            Ok(s) if s.is_element() && for_each.is_none() => {
                                self.diags.push(src.error(span(v), "element paths (@) need for_each"));
                                ok = false;
                            }
                            Ok(s) => params.push(s),
                            Err(e) => {
                                self.diags.push(src.error(span(v), e));
                                ok = false;
                            }
                        },
                    }
                }
                for (k, v) in &q.params {
                    if !names.contains(k) {
                        self.diags.push(src.warning(span(v), format!("param {k:?} is not used by the statement")));
                    }
                }
                ok.then(|| Shape::Sql(SqlShape { statement: Arc::from(statement.as_str()), params, for_each }))
            }
            _ => Some(Shape::Discard),
        }
    }
}

/// `[profile.X.kafka]` entries as `(dotted name, text)`; an unquoted dotted
/// key arrives as nested tables and is joined back. `Err` names a value
/// type librdkafka properties cannot take.
fn flatten_kafka_prop(name: String, v: &super::raw::KafkaProp, out: &mut Vec<(String, Result<String, &'static str>)>) {
    use super::raw::KafkaProp;
    match v {
        KafkaProp::Text(t) => out.push((name, Ok(t.clone()))),
        KafkaProp::Integer(i) => out.push((name, Ok(i.to_string()))),
        KafkaProp::Bool(b) => out.push((name, Ok(b.to_string()))),
        KafkaProp::Nested(m) => {
            for (k, inner) in m {
                flatten_kafka_prop(format!("{name}.{k}"), inner, out);
            }
        }
        KafkaProp::Other(other) => out.push((name, Err(other.type_str()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_with(gateway: &str) -> Result<(Config, Diagnostics), Diagnostics> {
        let dir = std::env::temp_dir().join(format!("vedgate-load-{}-{}", std::process::id(), gateway.len()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("gateway.toml"), gateway).unwrap();
        std::fs::write(
            dir.join("r.toml"),
            "[[subscription]]\nname = \"s\"\ntopic = \"t\"\ngroup = \"g\"\ndead_letter = false\n\n[sink.out]\ntype = \"blackhole\"\n\n[[route]]\nname = \"all\"\nsubscription = \"s\"\nwhen = [{ path = \"$.a\", exists = true }]\nsink = \"out\"\n",
        )
        .unwrap();
        load(&LoadOptions { config_path: dir.join("gateway.toml"), routes_path: dir.join("r.toml"), profile: None, env: Env::from_pairs([("PASS", "secret")]) })
    }

    #[test]
    fn librdkafka_properties_take_dotted_keys_numbers_and_booleans() {
        let (cfg, _) = load_with(
            "[profile.local]\nbrokers = [\"127.0.0.1:9092\"]\n[profile.local.kafka]\nfetch.wait.max.ms = 100\n\"socket.keepalive.enable\" = true\n\"sasl.password\" = \"${PASS}\"\n",
        )
        .unwrap();
        let p = &cfg.kafka.properties;
        assert_eq!(p.get("fetch.wait.max.ms").map(String::as_str), Some("100"), "{p:?}");
        assert_eq!(p.get("socket.keepalive.enable").map(String::as_str), Some("true"));
        assert_eq!(p.get("sasl.password").map(String::as_str), Some("secret"));
    }

    #[test]
    fn a_librdkafka_property_of_another_type_is_an_error_with_its_position() {
        let err = load_with("[profile.local]\nbrokers = [\"127.0.0.1:9092\"]\n[profile.local.kafka]\n\"fetch.wait.max.ms\" = [1, 2]\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("gateway.toml:1:"), "{text}");
        assert!(text.contains("librdkafka property \"fetch.wait.max.ms\": a array is not a property value"), "{text}");
    }
}
