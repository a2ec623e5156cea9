//! wrk-style Lua scripts for miop-bench (`-s script.lua`).
//!
//! A script is a Lua 5.4 file that may define these global functions:
//!
//! - `init(args)`: called once per Lua state (one per worker thread, plus one in
//!   the main process for `done`) with the arguments given after `--` on the
//!   command line, as an array of strings.
//! - `delay()`: called before every heartbeat; returns how many milliseconds to
//!   wait before the next Ping, instead of the heartbeat interval the server
//!   announced. A result that is not a non-negative number is an error: it is
//!   reported once and the default interval is used.
//! - `done(summary, latency, latencies)`: called once at the end of the run, in
//!   the main process, after the results of every thread and process are
//!   merged. `summary` is a table like wrk's (`duration` in microseconds,
//!   `connections`, `binds`, `pings`, `pushes`, `requests` = binds + pings,
//!   `bytes` = 0, `peak_connected`, `errors = {connect, read, write, timeout,
//!   status, bind}`); `latency` is the heartbeat (Ping → Pong) latency;
//!   `latencies` is `{connect=, bind=, ping=, push=}`. Each latency object has
//!   wrk's interface, in microseconds: fields `min`, `max`, `mean`, `stdev`
//!   (and `count`, the number of samples), `latency:percentile(p)` with `p` in
//!   0..100, `#latency` (distinct recorded values) and `latency[i]` →
//!   `{value=, count=}` for the i-th of them.
//!
//! wrk's `setup`, `request` and `response` have no meaning for long-lived Miop
//! connections: a script defining them still loads, with a warning for each.
//!
//! A Lua state is not `Send`: every worker thread loads its own [`Script`].

use std::cell::Cell;
use std::fmt;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use hdrhistogram::Histogram;
use mlua::{Function, Lua, MetaMethod, Table, UserData, UserDataFields, UserDataMethods, Value};

use super::report::Summary;
use super::stats::{Latencies, Metric};

/// The longest think time `delay()` may ask for (one day); longer values are
/// clamped so that adding them to an `Instant` cannot overflow.
pub const MAX_DELAY_MS: u64 = 86_400_000;

/// wrk hooks that make no sense here, and why.
const IGNORED_HOOKS: [(&str, &str); 3] = [
    ("setup", "setup() is ignored: miop-bench has no wrk thread objects (use init(args) for per-thread set-up)"),
    ("request", "request() is ignored: miop-bench sends Miop heartbeats, not HTTP requests"),
    ("response", "response() is ignored: miop-bench receives Miop Pongs and pushes, not HTTP responses"),
];

/// So that a broken `delay()` is reported once per process, not once per
/// thread or per heartbeat.
static DELAY_ERROR_REPORTED: AtomicBool = AtomicBool::new(false);

/// One loaded script, with its own Lua state.
pub struct Script {
    lua: Lua,
    name: String,
    warnings: Vec<String>,
    delay: Option<Function>,
    done: Option<Function>,
    /// How many `delay()` calls failed.
    delay_errors: Cell<u64>,
}

impl fmt::Debug for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Script")
            .field("name", &self.name)
            .field("warnings", &self.warnings)
            .field("has_delay", &self.has_delay())
            .field("has_done", &self.has_done())
            .finish()
    }
}

impl Script {
    /// Loads and runs the file, then calls `init(args)` if defined. Errors are
    /// one readable line including the path and Lua's message.
    pub fn load(path: &Path, args: &[String]) -> Result<Script, String> {
        let name = path.display().to_string();
        let source =
            std::fs::read(path).map_err(|e| format!("cannot read Lua script {name}: {e}"))?;
        Script::from_bytes(&name, &source, args)
    }

    /// Like [`Script::load`], with the source given directly; `name` stands for
    /// the path in messages.
    pub fn from_source(name: &str, source: &str, args: &[String]) -> Result<Script, String> {
        Script::from_bytes(name, source.as_bytes(), args)
    }

    fn from_bytes(name: &str, source: &[u8], args: &[String]) -> Result<Script, String> {
        let lua = Lua::new();
        lua.load(skip_shebang(source))
            .set_name(format!("@{name}"))
            .exec()
            .map_err(|e| describe(name, "failed to load", &e))?;
        let globals = lua.globals();
        if let Some(init) = hook(&lua, name, "init")? {
            let run = || -> mlua::Result<()> {
                let list = lua.create_sequence_from(args.iter().map(String::as_str))?;
                init.call::<()>(list)
            };
            let result = run();
            flush_lua_stdout(&lua);
            result.map_err(|e| describe(name, "init() failed", &e))?;
        }
        // Looked up after init(), which may define them.
        let delay = hook(&lua, name, "delay")?;
        let done = hook(&lua, name, "done")?;
        let warnings = IGNORED_HOOKS
            .iter()
            .filter(|(hook, _)| !matches!(globals.get::<Value>(*hook), Ok(Value::Nil)))
            .map(|(_, why)| (*why).to_owned())
            .collect();
        Ok(Script {
            lua,
            name: name.to_owned(),
            warnings,
            delay,
            done,
            delay_errors: Cell::new(0),
        })
    }

    /// One line per wrk hook the script defines that miop-bench ignores.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn has_delay(&self) -> bool {
        self.delay.is_some()
    }

    /// Calls `delay()`: `Some(ms)` on success (at most [`MAX_DELAY_MS`]), `None`
    /// if it is not defined or failed. The first failure in the process is
    /// logged; the caller falls back to the heartbeat interval.
    pub fn delay_ms(&self) -> Option<u64> {
        let f = self.delay.as_ref()?;
        let result = f
            .call::<Value>(())
            .map_err(|e| describe(&self.name, "delay() failed", &e))
            .and_then(|v| delay_value(&self.name, &v));
        match result {
            Ok(ms) => Some(ms),
            Err(why) => {
                self.delay_errors.set(self.delay_errors.get() + 1);
                if !DELAY_ERROR_REPORTED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "{why}; using the server's heartbeat interval instead (further delay() errors are not reported)"
                    );
                }
                None
            }
        }
    }

    pub fn has_done(&self) -> bool {
        self.done.is_some()
    }

    /// Calls `done(summary, latency, latencies)` if defined.
    pub fn done(&self, summary: &Summary, total: &Latencies) -> Result<(), String> {
        let Some(f) = &self.done else {
            return Ok(());
        };
        // Whatever the program printed comes before what the script prints.
        let _ = std::io::stdout().flush();
        let run = || -> mlua::Result<()> {
            let s = summary_table(&self.lua, summary)?;
            let latency = LatencyStats::new(total.get(Metric::Ping));
            let all = self.lua.create_table()?;
            for m in Metric::ALL {
                all.set(m.name(), LatencyStats::new(total.get(m)))?;
            }
            f.call::<()>((s, latency, all))
        };
        let result = run();
        flush_lua_stdout(&self.lua);
        result.map_err(|e| describe(&self.name, "done() failed", &e))
    }
}

/// Lua's `io.write` and `print` go through C's stdio buffer, not Rust's:
/// flush it so the script's output is not held back until exit.
fn flush_lua_stdout(lua: &Lua) {
    let _ = lua
        .load("if io and io.stdout then io.stdout:flush() end")
        .set_name("=flush")
        .exec();
}

/// The global function `hook`, if the script defines it.
fn hook(lua: &Lua, name: &str, hook: &str) -> Result<Option<Function>, String> {
    match lua.globals().get::<Value>(hook) {
        Ok(Value::Nil) => Ok(None),
        Ok(Value::Function(f)) => Ok(Some(f)),
        Ok(other) => Err(format!(
            "Lua script {name}: {hook} must be a function, got {}",
            other.type_name()
        )),
        Err(e) => Err(describe(name, &format!("cannot read {hook}"), &e)),
    }
}

/// Lua's loader skips a `#!` first line in files but not in strings; blank it
/// (keeping the newline so line numbers stay right).
fn skip_shebang(source: &[u8]) -> Vec<u8> {
    let mut out = source.to_vec();
    if out.first() == Some(&b'#') {
        let end = out.iter().position(|&b| b == b'\n').unwrap_or(out.len());
        out.drain(..end);
    }
    out
}

fn delay_value(name: &str, v: &Value) -> Result<u64, String> {
    let ms = match *v {
        Value::Integer(i) if i >= 0 => i as u64,
        Value::Number(n) if n.is_finite() && n >= 0.0 => n.round() as u64,
        Value::Integer(i) => {
            return Err(format!(
                "Lua script {name}: delay() returned {i}, a negative delay"
            ))
        }
        Value::Number(n) => {
            return Err(format!(
                "Lua script {name}: delay() returned {n}, not a delay in milliseconds"
            ))
        }
        ref other => {
            return Err(format!(
                "Lua script {name}: delay() returned a {}, expected a number of milliseconds",
                other.type_name()
            ))
        }
    };
    Ok(ms.min(MAX_DELAY_MS))
}

/// "Lua script <what>: <Lua's message>" on one line, with the script's name if
/// Lua's message lacks it.
fn describe(name: &str, what: &str, e: &mlua::Error) -> String {
    let msg = lua_message(e);
    if msg.contains(name) {
        format!("Lua script {what}: {msg}")
    } else {
        format!("Lua script {name}: {what}: {msg}")
    }
}

/// Lua's own message, without the stack traceback and on one line.
fn lua_message(e: &mlua::Error) -> String {
    let full = match e {
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        mlua::Error::RuntimeError(m) | mlua::Error::MemoryError(m) => m.clone(),
        mlua::Error::CallbackError { cause, .. } => return lua_message(cause),
        other => other.to_string(),
    };
    let msg = full.split("\nstack traceback:").next().unwrap_or_default();
    msg.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// wrk's `summary` table, for Miop.
fn summary_table(lua: &Lua, s: &Summary) -> mlua::Result<Table> {
    let c = &s.counters;
    let errors = lua.create_table()?;
    errors.set("connect", int(c.connect_errors))?;
    errors.set("handshake", int(c.handshake_errors))?;
    errors.set("read", int(c.read_errors))?;
    errors.set("write", int(c.write_errors))?;
    errors.set("timeout", int(c.timeouts))?;
    errors.set("status", int(c.bind_errors))?;
    errors.set("bind", int(c.bind_errors))?;
    let t = lua.create_table()?;
    t.set("duration", (s.duration_s * 1e6).round() as i64)?;
    t.set("connections", int(s.connections))?;
    t.set("binds", int(c.binds))?;
    t.set("pings", int(c.pongs))?;
    t.set("pushes", int(c.pushes))?;
    t.set("requests", int(c.binds.saturating_add(c.pongs)))?;
    t.set("bytes", 0)?;
    t.set("peak_connected", int(s.peak_connected))?;
    t.set("errors", errors)?;
    Ok(t)
}

/// One latency histogram (microseconds) with wrk's stats interface.
struct LatencyStats {
    hist: Histogram<u64>,
    /// Distinct recorded values and their counts, ascending, for `#` and `[i]`.
    recorded: Vec<(u64, u64)>,
}

impl LatencyStats {
    fn new(h: &Histogram<u64>) -> LatencyStats {
        LatencyStats {
            hist: h.clone(),
            recorded: h
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        }
    }

    fn percentile(&self, p: f64) -> Result<u64, String> {
        if !(0.0..=100.0).contains(&p) {
            return Err(format!(
                "percentile({p}): expected a percentile between 0 and 100"
            ));
        }
        if self.hist.is_empty() {
            return Ok(0);
        }
        // p / 100 alone can be an ulp off the decimal quantile (99.9 / 100 >
        // 0.999), which moves the result to the next bucket when the rank falls
        // exactly on a boundary; rounding makes percentile(99.9) agree with
        // value_at_quantile(0.999), as used in the report.
        let q = (p / 100.0 * 1e12).round() / 1e12;
        Ok(self.hist.value_at_quantile(q))
    }

    fn nonempty<T: Default>(&self, f: impl FnOnce(&Histogram<u64>) -> T) -> T {
        if self.hist.is_empty() {
            T::default()
        } else {
            f(&self.hist)
        }
    }
}

impl UserData for LatencyStats {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("min", |_, s| Ok(int(s.nonempty(|h| h.min()))));
        fields.add_field_method_get("max", |_, s| Ok(int(s.nonempty(|h| h.max()))));
        fields.add_field_method_get("mean", |_, s| Ok(s.nonempty(|h| h.mean())));
        fields.add_field_method_get("stdev", |_, s| Ok(s.nonempty(|h| h.stdev())));
        fields.add_field_method_get("count", |_, s| Ok(int(s.hist.len())));
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("percentile", |_, s, p: f64| {
            s.percentile(p).map(int).map_err(mlua::Error::RuntimeError)
        });
        methods.add_meta_method(MetaMethod::Len, |_, s, ()| Ok(s.recorded.len()));
        // Fields and methods are looked up first; this serves `latency[i]`.
        methods.add_meta_method(MetaMethod::Index, |lua, s, key: Value| {
            let i = match key {
                Value::Integer(i) => i,
                Value::Number(n) if n.fract() == 0.0 => n as i64,
                _ => return Ok(None),
            };
            let Some(&(value, count)) = usize::try_from(i - 1).ok().and_then(|i| s.recorded.get(i))
            else {
                return Ok(None);
            };
            let t = lua.create_table()?;
            t.set("value", int(value))?;
            t.set("count", int(count))?;
            Ok(Some(t))
        });
        methods.add_meta_method(MetaMethod::ToString, |_, s, ()| {
            Ok(format!("latency ({} samples)", s.hist.len()))
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bench::stats::Counters;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn summary() -> Summary {
        Summary {
            url: "miop://host:***@127.0.0.1:7000/".into(),
            scenario: "steady".into(),
            threads: 2,
            procs: 1,
            connections: 100,
            duration_s: 12.5,
            peak_connected: 97,
            link_limit: None,
            counters: Counters {
                connected: 90,
                connects: 110,
                binds: 105,
                pings: 2000,
                pongs: 1990,
                pushes: 7,
                connect_errors: 1,
                bind_errors: 2,
                read_errors: 3,
                write_errors: 4,
                timeouts: 5,
                ..Counters::default()
            },
            latency: Default::default(),
            steps: Vec::new(),
            interrupted: None,
            push_requests: 0,
            push_errors: 0,
            push_recipients: 0,
            server_memory: None,
            ramp_s: None,
        }
    }

    fn latencies() -> Latencies {
        let mut l = Latencies::default();
        for i in 1..=1000u64 {
            l.record(Metric::Ping, Duration::from_micros(i * 7));
            l.record(Metric::Bind, Duration::from_micros(500 + i));
        }
        l.record(Metric::Connect, Duration::from_micros(42));
        l.record(Metric::Connect, Duration::from_micros(42));
        l.record(Metric::Connect, Duration::from_micros(100));
        l
    }

    fn global<T: mlua::FromLua>(s: &Script, name: &str) -> T {
        s.lua.globals().get(name).unwrap()
    }

    #[test]
    fn init_receives_args() {
        let src = r#"
            function init(args)
                n = #args
                first, second = args[1], args[2]
            end
        "#;
        let s = Script::from_source("init.lua", src, &args(&["a", "b c"])).unwrap();
        assert_eq!(global::<i64>(&s, "n"), 2);
        assert_eq!(global::<String>(&s, "first"), "a");
        assert_eq!(global::<String>(&s, "second"), "b c");
        assert!(s.warnings().is_empty());
        assert!(!s.has_delay());
        assert!(!s.has_done());
        assert_eq!(s.delay_ms(), None);

        let s = Script::from_source("init.lua", src, &[]).unwrap();
        assert_eq!(global::<i64>(&s, "n"), 0);
    }

    #[test]
    fn init_error_is_one_line_with_the_name() {
        let src = "function init(args)\n  error('need an argument')\nend\n";
        let e = Script::from_source("needs.lua", src, &[]).unwrap_err();
        assert!(e.contains("needs.lua:2:"), "{e}");
        assert!(e.contains("init() failed"), "{e}");
        assert!(e.contains("need an argument"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn delay_returns_values_in_range() {
        let s = Script::from_source(
            "d.lua",
            "function delay() return math.random(10, 50) end",
            &[],
        )
        .unwrap();
        assert!(s.has_delay());
        for _ in 0..1000 {
            let ms = s.delay_ms().unwrap();
            assert!((10..=50).contains(&ms), "{ms}");
        }
        let s = Script::from_source("f.lua", "function delay() return 12.6 end", &[]).unwrap();
        assert_eq!(s.delay_ms(), Some(13));
        let s = Script::from_source("big.lua", "function delay() return 1e300 end", &[]).unwrap();
        assert_eq!(s.delay_ms(), Some(MAX_DELAY_MS));
    }

    #[test]
    fn bad_delay_results_fall_back() {
        for body in [
            "return 'soon'",
            "return nil",
            "return -5",
            "return -0.5",
            "return 0/0",
            "return 1/0",
            "error('boom')",
            "return {}",
        ] {
            let src = format!("function delay() {body} end");
            let s = Script::from_source("bad.lua", &src, &[]).unwrap();
            assert!(s.has_delay());
            assert_eq!(s.delay_ms(), None, "{body}");
            assert_eq!(s.delay_ms(), None, "{body}");
            assert_eq!(s.delay_errors.get(), 2, "{body}");
        }
        // A delay that fails only sometimes still works the rest of the time.
        let src = "calls = 0\nfunction delay() calls = calls + 1; if calls == 1 then return 'x' end return 20 end";
        let s = Script::from_source("flaky.lua", src, &[]).unwrap();
        assert_eq!(s.delay_ms(), None);
        assert_eq!(s.delay_ms(), Some(20));
        assert_eq!(s.delay_errors.get(), 1);
    }

    #[test]
    fn delay_value_messages() {
        let e = delay_value("x.lua", &Value::Boolean(true)).unwrap_err();
        assert!(e.contains("x.lua") && e.contains("boolean"), "{e}");
        let e = delay_value("x.lua", &Value::Integer(-3)).unwrap_err();
        assert!(e.contains("-3") && e.contains("negative"), "{e}");
        assert_eq!(delay_value("x.lua", &Value::Integer(0)), Ok(0));
    }

    #[test]
    fn done_receives_the_numbers() {
        let src = r#"
            function done(summary, latency, latencies)
                got = {
                    duration = summary.duration,
                    connections = summary.connections,
                    binds = summary.binds,
                    pings = summary.pings,
                    pushes = summary.pushes,
                    requests = summary.requests,
                    bytes = summary.bytes,
                    peak = summary.peak_connected,
                    connect = summary.errors.connect,
                    read = summary.errors.read,
                    write = summary.errors.write,
                    timeout = summary.errors.timeout,
                    status = summary.errors.status,
                    bind = summary.errors.bind,
                    min = latency.min,
                    max = latency.max,
                    mean = latency.mean,
                    stdev = latency.stdev,
                    count = latency.count,
                    p99 = latency:percentile(99),
                    p0 = latency:percentile(0),
                    p100 = latency:percentile(100),
                    ping_p99 = latencies.ping:percentile(99),
                    bind_p50 = latencies.bind:percentile(50),
                    push_len = #latencies.push,
                    push_max = latencies.push.max,
                    connect_len = #latencies.connect,
                    connect_first_value = latencies.connect[1].value,
                    connect_first_count = latencies.connect[1].count,
                    connect_second_value = latencies.connect[2].value,
                    connect_second_count = latencies.connect[2].count,
                    connect_third = latencies.connect[3] == nil,
                    connect_zero = latencies.connect[0] == nil,
                    unknown_field = latency.nonsense == nil,
                    is_integer = math.type(summary.duration) == "integer"
                        and math.type(latency.min) == "integer"
                        and math.type(latency:percentile(50)) == "integer",
                }
                local total = 0
                for i = 1, #latency do
                    local v = latency[i]
                    assert(i == 1 or v.value > latency[i - 1].value, "values ascend")
                    total = total + v.count
                end
                got.sum_of_counts = total
                got.len = #latency
            end
        "#;
        let s = Script::from_source("done.lua", src, &[]).unwrap();
        assert!(s.has_done());
        let l = latencies();
        s.done(&summary(), &l).unwrap();
        let got: Table = global(&s, "got");
        let g = |k: &str| got.get::<Value>(k).unwrap();
        let i = |k: &str| match g(k) {
            Value::Integer(i) => i,
            other => panic!("{k} = {other:?}"),
        };
        assert_eq!(i("duration"), 12_500_000);
        assert_eq!(i("connections"), 100);
        assert_eq!(i("binds"), 105);
        assert_eq!(i("pings"), 1990);
        assert_eq!(i("pushes"), 7);
        assert_eq!(i("requests"), 105 + 1990);
        assert_eq!(i("bytes"), 0);
        assert_eq!(i("peak"), 97);
        assert_eq!(
            ["connect", "read", "write", "timeout", "status", "bind"].map(i),
            [1, 3, 4, 5, 2, 2]
        );
        let ping = l.get(Metric::Ping);
        assert_eq!(i("min"), ping.min() as i64);
        assert_eq!(i("max"), ping.max() as i64);
        assert_eq!(got.get::<f64>("mean").unwrap(), ping.mean());
        assert_eq!(got.get::<f64>("stdev").unwrap(), ping.stdev());
        assert_eq!(i("count"), 1000);
        assert_eq!(i("p99"), ping.value_at_quantile(0.99) as i64);
        assert_eq!(i("ping_p99"), ping.value_at_quantile(0.99) as i64);
        assert_eq!(i("p0"), ping.value_at_quantile(0.0) as i64);
        assert_eq!(i("p100"), ping.value_at_quantile(1.0) as i64);
        assert_eq!(
            i("bind_p50"),
            l.get(Metric::Bind).value_at_quantile(0.5) as i64
        );
        assert_eq!(i("push_len"), 0);
        assert_eq!(i("push_max"), 0);
        assert_eq!(i("connect_len"), 2);
        assert_eq!(i("connect_first_value"), 42);
        assert_eq!(i("connect_first_count"), 2);
        assert_eq!(i("connect_second_value"), 100);
        assert_eq!(i("connect_second_count"), 1);
        for k in [
            "connect_third",
            "connect_zero",
            "unknown_field",
            "is_integer",
        ] {
            assert!(got.get::<bool>(k).unwrap(), "{k}");
        }
        assert_eq!(i("sum_of_counts"), 1000);
        assert_eq!(i("len"), ping.iter_recorded().count() as i64);
    }

    #[test]
    fn percentile_matches_the_histogram() {
        let src = r#"
            function done(summary, latency)
                p = {}
                for _, q in ipairs({50, 90, 99, 99.9, 99.99}) do
                    p[#p + 1] = latency:percentile(q)
                end
            end
        "#;
        let s = Script::from_source("p.lua", src, &[]).unwrap();
        let l = latencies();
        s.done(&summary(), &l).unwrap();
        let p: Vec<u64> = global(&s, "p");
        let h = l.get(Metric::Ping);
        let want: Vec<u64> = [0.5, 0.9, 0.99, 0.999, 0.9999]
            .iter()
            .map(|q| h.value_at_quantile(*q))
            .collect();
        assert_eq!(p, want);
        assert_eq!(p[2], h.value_at_quantile(0.99));
    }

    #[test]
    fn done_errors_are_reported() {
        let s = Script::from_source("pct.lua", "function done(s, l) l:percentile(101) end", &[])
            .unwrap();
        let e = s.done(&summary(), &latencies()).unwrap_err();
        assert!(
            e.contains("pct.lua") && e.contains("between 0 and 100"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");

        let s =
            Script::from_source("err.lua", "function done()\n error('nope')\nend", &[]).unwrap();
        let e = s.done(&summary(), &latencies()).unwrap_err();
        assert!(e.contains("err.lua:2: nope"), "{e}");
        assert!(!e.contains('\n'), "{e}");

        // Empty histograms do not fail.
        let src = "function done(s, l) assert(l:percentile(99) == 0 and l.min == 0 and #l == 0 and l[1] == nil) end";
        let s = Script::from_source("empty.lua", src, &[]).unwrap();
        s.done(&summary(), &Latencies::default()).unwrap();

        // No done(): nothing to do.
        let s = Script::from_source("none.lua", "", &[]).unwrap();
        s.done(&summary(), &latencies()).unwrap();
    }

    #[test]
    fn syntax_error_names_the_file() {
        let e =
            Script::from_source("broken.lua", "function delay(\n  return 1\nend", &[]).unwrap_err();
        assert!(e.contains("broken.lua:2:"), "{e}");
        assert!(!e.contains('\n'), "{e}");

        let dir = std::env::temp_dir().join(format!("miop-script-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("syntax.lua");
        std::fs::write(&path, "x = = 1\n").unwrap();
        let e = Script::load(&path, &[]).unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("unexpected symbol"), "{e}");
        assert!(!e.contains('\n'), "{e}");

        let missing = dir.join("missing.lua");
        let e = Script::load(&missing, &[]).unwrap_err();
        assert!(e.contains(&missing.display().to_string()), "{e}");
    }

    #[test]
    fn runtime_error_at_load_and_bad_hooks() {
        let e = Script::from_source("rt.lua", "local x = nil\nprint(x.y)", &[]).unwrap_err();
        assert!(
            e.contains("rt.lua:2:") && e.contains("failed to load"),
            "{e}"
        );
        let e = Script::from_source("num.lua", "delay = 10", &[]).unwrap_err();
        assert!(
            e.contains("num.lua") && e.contains("delay must be a function"),
            "{e}"
        );
    }

    #[test]
    fn shebang_is_skipped() {
        let s = Script::from_source(
            "sb.lua",
            "#!/usr/bin/env lua\nfunction delay() return 5 end",
            &[],
        )
        .unwrap();
        assert_eq!(s.delay_ms(), Some(5));
        let e = Script::from_source("sb.lua", "#!/usr/bin/env lua\n\nerror('line 3')", &[])
            .unwrap_err();
        assert!(e.contains("sb.lua:3:"), "{e}");
    }

    #[test]
    fn wrk_only_hooks_warn() {
        let src = r#"
            function setup(thread) end
            request = function() return "GET / HTTP/1.1\r\n\r\n" end
            function response(status, headers, body) end
            function delay() return 10 end
        "#;
        let s = Script::from_source("wrk.lua", src, &[]).unwrap();
        let w = s.warnings();
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(
            w.iter().any(|w| w.starts_with("setup() is ignored")),
            "{w:?}"
        );
        assert!(
            w.iter().any(|w| w
                == "request() is ignored: miop-bench sends Miop heartbeats, not HTTP requests"),
            "{w:?}"
        );
        assert!(
            w.iter().any(|w| w.starts_with("response() is ignored")),
            "{w:?}"
        );
        assert_eq!(s.delay_ms(), Some(10));

        let s = Script::from_source("req.lua", "function init() function request() end end", &[])
            .unwrap();
        assert_eq!(s.warnings().len(), 1);
        assert!(s.warnings()[0].starts_with("request() is ignored"));
    }

    fn shipped(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scripts")
            .join(name)
    }

    #[test]
    fn shipped_delay_script_loads() {
        let s = Script::load(&shipped("delay.lua"), &[]).unwrap();
        assert!(s.warnings().is_empty(), "{:?}", s.warnings());
        assert!(s.has_delay());
        assert!(!s.has_done());
        for _ in 0..100 {
            assert!((10..=50).contains(&s.delay_ms().unwrap()));
        }
    }

    /// Runs report.lua's done() with io.write captured.
    fn run_report(script_args: &[&str]) -> String {
        let s = Script::load(&shipped("report.lua"), &args(script_args)).unwrap();
        assert!(s.warnings().is_empty(), "{:?}", s.warnings());
        assert!(s.has_done());
        assert!(!s.has_delay());
        s.lua
            .load("captured = {}\nio.write = function(...) for _, v in ipairs({...}) do captured[#captured + 1] = tostring(v) end end")
            .exec()
            .unwrap();
        s.done(&summary(), &latencies()).unwrap();
        let parts: Vec<String> = global(&s, "captured");
        parts.concat()
    }

    #[test]
    fn shipped_report_script_loads_and_reports() {
        let out = run_report(&[]);
        for want in [
            "Bind latency",
            "Ping latency",
            "99.9%",
            "connect 1, read 3, write 4, timeout 5, bind 2",
        ] {
            assert!(out.contains(want), "{want} not in:\n{out}");
        }
        let p99 = latencies().get(Metric::Ping).value_at_quantile(0.99);
        let csv = run_report(&["csv"]);
        assert!(csv.contains(&format!("ping_p99_us,{p99}\n")), "{csv}");
        assert!(csv.contains("errors_timeout,5\n"), "{csv}");

        let e = Script::load(&shipped("report.lua"), &args(&["xml"])).unwrap_err();
        assert!(e.contains("report.lua") && e.contains("xml"), "{e}");
    }
}
