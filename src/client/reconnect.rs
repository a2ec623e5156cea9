//! [`Session`], the reconnecting client, and its policy (documented on the type).

use std::fmt;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout};

use super::backoff::{Backoff, Jitter};
use super::{Client, ClientError, Connector, MiopUrl, RecentIds, TlsOptions};
use crate::protocol::{
    Bind, BindAck, Body, Close, CloseReason, Credential, ErrorCode, ErrorFrame, Frame, Push,
    FLAG_ACK_REQUIRED, MAX_BIND_TOPICS, MAX_CREDENTIAL_LEN, MAX_DEVICE_ID_LEN, MAX_TOPIC_LEN,
};

/// How many state changes [`Session::events`] keeps for a slow reader.
pub const EVENT_BUFFER: usize = 64;

/// What a [`Session`] connects to, as whom, and how it retries.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Where and how to connect: the transport (TCP, TLS, WebSocket) and
    /// `host:port`, resolved again at every connection attempt. Every
    /// reconnect uses it again.
    pub connector: Connector,
    pub device_id: String,
    pub credential: Credential,
    /// Topics joined at every Bind (0 to 32 distinct names of 1 to 128 bytes).
    pub topics: Vec<String>,
    pub backoff: Backoff,
    /// Seed of the backoff's jitter, for reproducible delays in tests
    /// (see [`Jitter::seeded`]); `None` seeds from the OS, as devices should.
    pub jitter_seed: Option<u64>,
    /// Limit on connecting and binding (TCP connect, TLS and WebSocket
    /// handshakes, Bind to BindAck).
    pub bind_timeout: Duration,
    /// Pushes waiting for the application before the session stops reading
    /// (at least 1; see [`Session`] for what happens when it is full).
    pub push_buffer: usize,
}

impl SessionConfig {
    /// Plain TCP (`miop://`) to `addr` (`host:port`).
    pub fn new(
        addr: impl Into<String>,
        device_id: impl Into<String>,
        credential: Credential,
    ) -> SessionConfig {
        SessionConfig::with_connector(Connector::tcp(addr), device_id, credential)
    }

    /// Connections made by `connector` (any transport).
    pub fn with_connector(
        connector: Connector,
        device_id: impl Into<String>,
        credential: Credential,
    ) -> SessionConfig {
        SessionConfig {
            connector,
            device_id: device_id.into(),
            credential,
            topics: Vec::new(),
            backoff: Backoff::default(),
            jitter_seed: None,
            bind_timeout: Duration::from_secs(10),
            push_buffer: 64,
        }
    }

    /// The URL's transport, address, device id and credential. A TLS URL
    /// (`miops://`, `wss://`) trusts the system's CA certificates
    /// ([`TlsOptions::default`]); if there are none, every connection fails
    /// saying so (and the session keeps retrying): [`SessionConfig::from_url_tls`]
    /// reports that at once, and takes other [`TlsOptions`].
    pub fn from_url(url: &MiopUrl) -> SessionConfig {
        SessionConfig::with_connector(
            Connector::new_deferred(url),
            url.device_id.clone(),
            url.credential(),
        )
    }

    /// Like [`SessionConfig::from_url`], checking the server's certificate
    /// as `tls` says. Fails if the options do not make a TLS configuration
    /// (an unreadable CA or key file, no CA certificates on the system).
    pub fn from_url_tls(url: &MiopUrl, tls: &TlsOptions) -> Result<SessionConfig, ClientError> {
        Ok(SessionConfig::with_connector(
            Connector::new(url, tls)?,
            url.device_id.clone(),
            url.credential(),
        ))
    }

    /// Joins these topics at every Bind.
    pub fn topics<S: Into<String>>(mut self, topics: impl IntoIterator<Item = S>) -> Self {
        self.topics = topics.into_iter().map(Into::into).collect();
        self
    }

    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.jitter_seed = Some(seed);
        self
    }

    fn validate(&mut self) -> Result<(), SessionError> {
        let bad = |why: String| Err(SessionError::Config(why));
        let id = &self.device_id;
        if id.is_empty() || id.len() > MAX_DEVICE_ID_LEN {
            return bad(format!("device id must be 1 to {MAX_DEVICE_ID_LEN} bytes"));
        }
        if id.chars().any(char::is_control) {
            return bad("device id contains a control character".into());
        }
        let (Credential::AppKey(c) | Credential::Token(c)) = &self.credential;
        if c.len() > MAX_CREDENTIAL_LEN {
            return bad(format!("credential longer than {MAX_CREDENTIAL_LEN} bytes"));
        }
        check_topic_names(&self.topics).map_err(|e| SessionError::Config(e.to_string()))?;
        let mut topics = Vec::new();
        join(&mut topics, &self.topics);
        if topics.len() > MAX_BIND_TOPICS {
            return bad(format!("more than {MAX_BIND_TOPICS} topics"));
        }
        self.topics = topics;
        if self.backoff.base.is_zero() || self.backoff.cap < self.backoff.base {
            return bad("backoff needs 0 < base <= cap".into());
        }
        if self.push_buffer == 0 {
            return bad("push_buffer must be at least 1".into());
        }
        Ok(())
    }
}

/// Where a [`Session`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionState {
    /// Opening a connection and binding. `attempt` 0 is the first connection;
    /// `n` ≥ 1 is the n-th reconnect since the session was last bound for
    /// [`Backoff::reset_after`], whose delay was at most `backoff.ceiling(n)`.
    Connecting { attempt: u32 },
    /// Bound: pushes flow.
    Bound {
        session_id: u64,
        heartbeat_interval: Duration,
    },
    /// The connection ended; the next attempt starts in `retry_in`.
    Disconnected {
        reason: Disconnect,
        retry_in: Duration,
    },
    /// For good: no more connections, the push channel ends once drained.
    Stopped { reason: Disconnect },
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disconnect {
    /// The server sent Close; `error` is the code of the Error frame before
    /// it, if there was one, and `retry_after` its retry-after hint.
    Closed {
        reason: u16,
        message: String,
        retry_after: Option<Duration>,
        error: Option<u16>,
    },
    /// The server sent an Error frame and the connection ended without the
    /// Close that should follow it.
    Rejected { code: u16, message: String },
    /// Connecting failed, or the connection ended without a Close: refused,
    /// reset, a failed TLS handshake (an untrusted certificate, say: the
    /// session retries, in case the server's certificate is being replaced)
    /// or WebSocket upgrade, end of stream, an undecodable frame, no BindAck
    /// within the bind timeout, a server silent for its heartbeat timeout.
    Lost(String),
    /// The application closed the session.
    Local,
}

impl Disconnect {
    /// The Close's reason, when the server sent one.
    pub fn close_reason(&self) -> Option<CloseReason> {
        match self {
            Disconnect::Closed { reason, .. } => CloseReason::from_u16(*reason),
            _ => None,
        }
    }
}

impl fmt::Display for Disconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Disconnect::Closed {
                reason,
                message,
                retry_after,
                ..
            } => {
                match CloseReason::from_u16(*reason) {
                    Some(r) => write!(f, "closed by the server: {} ({reason})", r.name())?,
                    None => write!(f, "closed by the server: reason {reason}")?,
                }
                if !message.is_empty() {
                    write!(f, ", {message:?}")?;
                }
                if let Some(ms) = retry_after {
                    write!(f, ", retry after {ms:?}")?;
                }
                Ok(())
            }
            Disconnect::Rejected { code, message } => {
                let name = ErrorCode::from_u16(*code).map_or("unknown", |c| c.name());
                write!(f, "error {name} ({code}) from the server: {message:?}")
            }
            Disconnect::Lost(why) => write!(f, "connection lost: {why}"),
            Disconnect::Local => write!(f, "closed by the application"),
        }
    }
}

/// A state change and when the session made it.
#[derive(Debug, Clone)]
pub struct SessionEvent {
    pub at: Instant,
    pub state: SessionState,
}

/// The outcome of [`Session::subscribe`] and [`Session::unsubscribe`]. Either
/// way the change is remembered and applied at every later Bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicsUpdate {
    /// The session was bound and the server acknowledged the change: this is
    /// the whole list of topics the session holds now, and pushes sent to them
    /// from now on reach it (PROTOCOL.md §10.11).
    Acked(Vec<String>),
    /// The session is not bound (or its connection ended before the
    /// acknowledgement, or the server does not know Subscribe): the change
    /// takes effect with the next Bind.
    Pending,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("invalid session config: {0}")]
    Config(String),
    #[error("invalid topics: {0}")]
    Topics(String),
    #[error("the session has stopped")]
    Stopped,
}

enum Command {
    Topics {
        join: bool,
        topics: Vec<String>,
        reply: oneshot::Sender<Result<TopicsUpdate, SessionError>>,
    },
    Close,
}

/// A device's connection that survives gateway restarts.
///
/// [`Client`] is one connection (TCP, TLS or WebSocket): when the gateway
/// restarts, drains or kicks it, the connection is over and the caller
/// starts again. A device wants the opposite: to *stay* reachable. A
/// `Session` runs a [`Client`] in a tokio task and keeps one bound, over the
/// transport of its [`SessionConfig::connector`]:
///
/// - it connects and binds with the device id, credential and topics of its
///   [`SessionConfig`] (plus the topics added with [`Session::subscribe`]
///   since, minus those left with [`Session::unsubscribe`]: membership belongs
///   to a connection, PROTOCOL.md §10.11, so every rebind joins them again, in
///   the Bind);
/// - it heartbeats at the BindAck's interval, and treats a server silent for
///   the BindAck's timeout as gone (§10.4);
/// - it acknowledges pushes and hands each message id to the application once,
///   across reconnects too (the last 1024 ids), which is where redeliveries
///   come from (§10.8);
/// - when the connection ends it reconnects after a jittered exponential
///   backoff ([`Backoff`], §10.10), waiting at least the server's retry-after
///   hint (§8.7), or stops for good, according to why it ended (§9.2):
///
/// | why | what the session does |
/// |---|---|
/// | `REPLACED` | stops: another connection is this device's session now, and taking it back would only make the two kick each other in turn |
/// | `AUTH_FAILED` (Close or Error) | stops: the same credential will fail again |
/// | `PROTOCOL_ERROR`, `RATE_LIMITED` | reconnects after a long backoff (`[cap/2, cap]`), and no sooner than the hint |
/// | anything else: `TRY_LATER`, `SERVER_SHUTDOWN`, `HEARTBEAT_TIMEOUT`, `BIND_TIMEOUT`, `ADMIN_KICK`, `SLOW_CONSUMER`, `NORMAL`, unknown reasons, a refused connection, an end without Close, a bind or heartbeat timeout | reconnects after the backoff, and no sooner than the hint |
/// | [`Session::close`], or the `Session` dropped | sends Close(`NORMAL`) if bound and stops |
///
/// The application sees three things: the pushes ([`Session::pushes`]), the
/// state changes ([`Session::events`], with the instant of each), and the
/// current state ([`Session::state`], [`Session::watch`]).
///
/// **Nothing grows if the application does not read.** Pushes wait in a
/// channel of [`SessionConfig::push_buffer`] entries. When it is full the
/// session holds the next push, unacknowledged, and stops reading the socket
/// (it keeps heartbeating and serving `subscribe`/`close`); TCP flow control
/// then stops the gateway, whose own slow-consumer policy applies (miopd:
/// `--outbound-limit`, then Close(`SLOW_CONSUMER`) or dropping that device's
/// oldest pushes). A push is acknowledged only once it is in the channel, so
/// a push the session held when its connection ended was never acknowledged
/// and the gateway may deliver it again (offline storage). The event channel
/// keeps the last 64 changes; a reader that falls further behind gets
/// `RecvError::Lagged` and continues with the newest.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use miop::client::{MiopUrl, Session, SessionConfig, SessionState};
/// let url: MiopUrl = "miop://phone-1:pk@127.0.0.1:7700/".parse()?;
/// let mut session = Session::start(SessionConfig::from_url(&url).topics(["news"]))?;
/// loop {
///     tokio::select! {
///         Some(push) = session.pushes.recv() => {
///             println!("message {}: {:?}", push.message_id, push.payload);
///         }
///         Ok(event) = session.events.recv() => {
///             if let SessionState::Stopped { reason } = event.state {
///                 println!("stopped: {reason}");
///                 break;
///             }
///         }
///     }
/// }
/// # Ok(()) }
/// ```
pub struct Session {
    /// Pushes, each message id once; ends after [`SessionState::Stopped`].
    pub pushes: mpsc::Receiver<Push>,
    /// Every state change, in order (the last [`EVENT_BUFFER`] for a slow
    /// reader); ends after [`SessionState::Stopped`].
    pub events: broadcast::Receiver<SessionEvent>,
    state: watch::Receiver<SessionState>,
    commands: mpsc::Sender<Command>,
    task: JoinHandle<()>,
}

impl Session {
    /// Starts the session's task (on the current tokio runtime): it connects
    /// at once. Fails only on an invalid config.
    pub fn start(mut config: SessionConfig) -> Result<Session, SessionError> {
        config.validate()?;
        let (push_tx, pushes) = mpsc::channel(config.push_buffer);
        let (events_tx, events) = broadcast::channel(EVENT_BUFFER);
        let (state_tx, state) = watch::channel(SessionState::Connecting { attempt: 0 });
        let (commands, command_rx) = mpsc::channel(16);
        let task = Task {
            jitter: config.jitter_seed.map_or_else(Jitter::new, Jitter::seeded),
            topics: std::mem::take(&mut config.topics),
            config,
            seen: RecentIds::default(),
            next_seq: 1,
            topic_frames: true,
            pushes: push_tx,
            state: state_tx,
            events: events_tx,
            commands: command_rx,
        };
        Ok(Session {
            pushes,
            events,
            state,
            commands,
            task: tokio::spawn(task.run()),
        })
    }

    /// The next push, or `None` once the session has stopped and every push
    /// before that was read.
    pub async fn next_push(&mut self) -> Option<Push> {
        self.pushes.recv().await
    }

    /// The current state.
    pub fn state(&self) -> SessionState {
        self.state.borrow().clone()
    }

    /// The current state, as a watch (intermediate states may be skipped;
    /// [`Session::events`] has them all).
    pub fn watch(&self) -> watch::Receiver<SessionState> {
        self.state.clone()
    }

    /// Joins `topics` (1 to 32 names of 1 to 128 bytes) now if bound, and at
    /// every later Bind. A session holds at most 32 topics: a request that
    /// would make more is refused here, without closing anything.
    pub async fn subscribe<S: Into<String>>(
        &self,
        topics: impl IntoIterator<Item = S>,
    ) -> Result<TopicsUpdate, SessionError> {
        self.topics(true, topics.into_iter().map(Into::into).collect())
            .await
    }

    /// Leaves `topics` (1 to 32 names; ones not joined are ignored) now if
    /// bound, and they are no longer joined at later Binds.
    pub async fn unsubscribe<S: Into<String>>(
        &self,
        topics: impl IntoIterator<Item = S>,
    ) -> Result<TopicsUpdate, SessionError> {
        self.topics(false, topics.into_iter().map(Into::into).collect())
            .await
    }

    async fn topics(&self, join: bool, topics: Vec<String>) -> Result<TopicsUpdate, SessionError> {
        if topics.is_empty() || topics.len() > MAX_BIND_TOPICS {
            return Err(SessionError::Topics(format!(
                "a request names 1 to {MAX_BIND_TOPICS} topics, not {}",
                topics.len()
            )));
        }
        check_topic_names(&topics)?;
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Topics {
                join,
                topics,
                reply,
            })
            .await
            .map_err(|_| SessionError::Stopped)?;
        answer.await.map_err(|_| SessionError::Stopped)?
    }

    /// Sends Close(`NORMAL`) if bound, stops reconnecting, and waits for the
    /// task to end. Pushes not read yet are dropped with the session (they
    /// were acknowledged). Dropping a `Session` closes it the same way,
    /// without waiting.
    pub async fn close(self) {
        let _ = self.commands.send(Command::Close).await;
        let _ = self.task.await;
    }
}

fn check_topic_names(topics: &[String]) -> Result<(), SessionError> {
    match topics
        .iter()
        .find(|t| t.is_empty() || t.len() > MAX_TOPIC_LEN)
    {
        Some(t) => Err(SessionError::Topics(format!(
            "a topic is 1 to {MAX_TOPIC_LEN} bytes, not {} ({t:?})",
            t.len()
        ))),
        None => Ok(()),
    }
}

/// Adds the topics of `more` that `set` does not have yet, in order.
fn join(set: &mut Vec<String>, more: &[String]) {
    for t in more {
        if !set.contains(t) {
            set.push(t.clone());
        }
    }
}

/// What to do after a connection ended.
#[derive(Debug, PartialEq, Eq)]
enum Reaction {
    Stop,
    Retry { hint: Option<Duration>, long: bool },
}

/// PROTOCOL.md §9.2's "client reaction" column (see [`Session`]).
/// `downgraded`: the server refused a Subscribe as an unknown opcode (a
/// revision-1 server), which is no client bug: the next Bind carries the topics.
fn reaction(why: &Disconnect, downgraded: bool) -> Reaction {
    let auth_failed = |code: u16| ErrorCode::from_u16(code) == Some(ErrorCode::AuthFailed);
    match why {
        Disconnect::Local => Reaction::Stop,
        Disconnect::Closed {
            reason,
            retry_after,
            error,
            ..
        } => {
            let hint = *retry_after;
            match CloseReason::from_u16(*reason) {
                Some(CloseReason::Replaced | CloseReason::AuthFailed) => Reaction::Stop,
                _ if error.is_some_and(auth_failed) => Reaction::Stop,
                Some(CloseReason::ProtocolError) if !downgraded => {
                    Reaction::Retry { hint, long: true }
                }
                Some(CloseReason::RateLimited) => Reaction::Retry { hint, long: true },
                _ => Reaction::Retry { hint, long: false },
            }
        }
        Disconnect::Rejected { code, .. } if auth_failed(*code) => Reaction::Stop,
        Disconnect::Rejected { .. } | Disconnect::Lost(_) => Reaction::Retry {
            hint: None,
            long: false,
        },
    }
}

/// How a connection ended.
struct Ended {
    why: Disconnect,
    /// When it was bound, if it got that far.
    bound_at: Option<Instant>,
    downgraded: bool,
}

impl Ended {
    fn before_bind(why: Disconnect) -> Ended {
        Ended {
            why,
            bound_at: None,
            downgraded: false,
        }
    }
}

/// A write to a server that stopped reading must not hang the session.
const WRITE_LIMIT: Duration = Duration::from_secs(10);

/// The session's task: owns the connection and everything that outlives it.
struct Task {
    config: SessionConfig,
    /// The topics to hold: the config's, plus subscribed, minus unsubscribed.
    topics: Vec<String>,
    jitter: Jitter,
    /// Push ids handed to the application, across connections.
    seen: RecentIds,
    next_seq: u32,
    /// False once the server refused a Subscribe as an unknown opcode
    /// (revision 1, PROTOCOL.md §11): topics then change only at Bind.
    topic_frames: bool,
    pushes: mpsc::Sender<Push>,
    state: watch::Sender<SessionState>,
    events: broadcast::Sender<SessionEvent>,
    commands: mpsc::Receiver<Command>,
}

impl Task {
    fn set(&self, state: SessionState) {
        let at = Instant::now();
        self.state.send_replace(state.clone());
        // No receiver left is fine: nobody is listening.
        let _ = self.events.send(SessionEvent { at, state });
    }

    fn seq(&mut self) -> u32 {
        let s = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        s
    }

    async fn run(mut self) {
        let mut attempt = 0u32;
        loop {
            self.set(SessionState::Connecting { attempt });
            let ended = self.connection().await;
            let (hint, long) = match reaction(&ended.why, ended.downgraded) {
                Reaction::Stop => {
                    return self.set(SessionState::Stopped { reason: ended.why });
                }
                Reaction::Retry { hint, long } => (hint, long),
            };
            let backoff = self.config.backoff;
            if ended
                .bound_at
                .is_some_and(|t| t.elapsed() >= backoff.reset_after)
            {
                attempt = 0;
            }
            attempt = attempt.saturating_add(1);
            let mut delay = if long {
                backoff.long_delay(&mut self.jitter)
            } else {
                backoff.delay(attempt, &mut self.jitter)
            };
            // §8.7/§10.10: never sooner than the server asked.
            delay = delay.max(hint.unwrap_or_default());
            self.set(SessionState::Disconnected {
                reason: ended.why,
                retry_in: delay,
            });
            if !self.wait(delay).await {
                return self.set(SessionState::Stopped {
                    reason: Disconnect::Local,
                });
            }
        }
    }

    /// Waits out a backoff delay, serving commands; false if told to stop.
    async fn wait(&mut self, delay: Duration) -> bool {
        let until = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                _ = sleep_until(until) => return true,
                cmd = self.commands.recv() => match cmd {
                    None | Some(Command::Close) => return false,
                    Some(Command::Topics { join, topics, reply }) => {
                        let r = self.change_topics(join, &topics);
                        let _ = reply.send(r.map(|()| TopicsUpdate::Pending));
                    }
                },
            }
        }
    }

    /// Applies a subscribe/unsubscribe to the remembered set.
    fn change_topics(&mut self, join_them: bool, topics: &[String]) -> Result<(), SessionError> {
        if join_them {
            let mut after = self.topics.clone();
            join(&mut after, topics);
            if after.len() > MAX_BIND_TOPICS {
                return Err(SessionError::Topics(format!(
                    "a session holds at most {MAX_BIND_TOPICS} topics; this would make {}",
                    after.len()
                )));
            }
            self.topics = after;
        } else {
            self.topics.retain(|t| !topics.contains(t));
        }
        Ok(())
    }

    /// One connection: connect, bind, serve until it ends.
    async fn connection(&mut self) -> Ended {
        let seq = self.seq();
        let bound_topics = self.topics.clone();
        let bind = Frame::new(
            seq,
            Body::Bind(Bind {
                device_id: self.config.device_id.clone(),
                credential: self.config.credential.clone(),
                topics: bound_topics.clone(),
            }),
        );
        let limit = self.config.bind_timeout;
        let connector = self.config.connector.clone();
        let handshake = timeout(limit, handshake(&connector, bind));
        tokio::pin!(handshake);
        let (mut client, ack) = loop {
            tokio::select! {
                r = &mut handshake => match r {
                    Ok(Ok(bound)) => break bound,
                    Ok(Err(why)) => return Ended::before_bind(why),
                    Err(_) => {
                        let why = format!("not bound within {limit:?}");
                        return Ended::before_bind(Disconnect::Lost(why));
                    }
                },
                cmd = self.commands.recv() => match cmd {
                    // Not bound yet: dropping the socket is the whole goodbye.
                    None | Some(Command::Close) => return Ended::before_bind(Disconnect::Local),
                    Some(Command::Topics { join, topics, reply }) => {
                        let r = self.change_topics(join, &topics);
                        let _ = reply.send(r.map(|()| TopicsUpdate::Pending));
                    }
                },
            }
        };
        let bound_at = Instant::now();
        self.set(SessionState::Bound {
            session_id: ack.session_id,
            heartbeat_interval: Duration::from_millis(ack.heartbeat_interval_ms as u64),
        });
        let mut conn = Conn::default();
        // Topics changed while the Bind was on its way: catch up.
        let joined: Vec<String> = (self.topics.iter())
            .filter(|t| !bound_topics.contains(t))
            .cloned()
            .collect();
        let left: Vec<String> = (bound_topics.iter())
            .filter(|t| !self.topics.contains(t))
            .cloned()
            .collect();
        let mut why = None;
        for (join, topics) in [(true, joined), (false, left)] {
            if why.is_none() && !topics.is_empty() && self.topic_frames {
                let frame = Frame::new(self.seq(), topics_body(join, topics));
                why = send(&mut client, &frame).await.err();
            }
        }
        let why = match why {
            Some(why) => why,
            None => self.serve(&mut client, ack, &mut conn).await,
        };
        for (_, reply) in conn.waiting.drain(..) {
            let _ = reply.send(Ok(TopicsUpdate::Pending));
        }
        if why == Disconnect::Local {
            let _ = timeout(Duration::from_secs(1), client.close()).await;
        }
        Ended {
            why,
            bound_at: Some(bound_at),
            downgraded: conn.downgraded,
        }
    }

    /// The bound connection: heartbeats, pushes, topic requests, until it ends.
    async fn serve(&mut self, client: &mut Client, ack: BindAck, conn: &mut Conn) -> Disconnect {
        let interval = Duration::from_millis(ack.heartbeat_interval_ms.max(10) as u64);
        // §10.4: a server silent this long is gone.
        let silence = Duration::from_millis(
            (ack.heartbeat_timeout_ms.max(ack.heartbeat_interval_ms)).max(10) as u64,
        );
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard = tokio::time::Instant::now();
        // Its own handle, so that a permit does not borrow `self`.
        let pushes = self.pushes.clone();
        loop {
            let step = tokio::select! {
                r = client.recv(), if conn.held.is_none() => {
                    heard = tokio::time::Instant::now();
                    match r {
                        Ok(Some(frame)) => self.on_frame(client, &pushes, frame, conn).await,
                        Ok(None) => Err(ended(
                            conn.error.take(),
                            "the server closed the connection without a Close".into(),
                        )),
                        Err(e) => Err(ended(conn.error.take(), e.to_string())),
                    }
                }
                permit = pushes.reserve(), if conn.held.is_some() => {
                    let (push, ack) = conn.held.take().expect("held");
                    // Reading again: the server's silence counts from now.
                    heard = tokio::time::Instant::now();
                    match permit {
                        Ok(permit) => self.deliver(client, permit, push, ack).await,
                        // The application is gone: the command channel says so next.
                        Err(_) => Ok(()),
                    }
                }
                _ = beat.tick() => {
                    let seq = self.seq();
                    send(client, &Frame::ping(seq)).await
                }
                _ = sleep_until(heard + silence), if conn.held.is_none() => {
                    return Disconnect::Lost(format!("nothing from the server for {silence:?}"));
                }
                cmd = self.commands.recv() => self.on_command(client, cmd, conn).await,
            };
            match step {
                Ok(()) => {}
                // A write can fail before the Close that explains it was read
                // (always, while a held push keeps the session from reading):
                // a REPLACED taken for a network error would kick the session
                // that replaced this one.
                Err(Disconnect::Lost(why)) => {
                    return last_words(client, conn)
                        .await
                        .unwrap_or(Disconnect::Lost(why))
                }
                Err(why) => return why,
            }
        }
    }

    async fn on_frame(
        &mut self,
        client: &mut Client,
        pushes: &mpsc::Sender<Push>,
        frame: Frame,
        conn: &mut Conn,
    ) -> Result<(), Disconnect> {
        let ack = frame.flags & FLAG_ACK_REQUIRED != 0;
        match frame.body {
            // §10.8: a duplicate is acknowledged again, but not delivered.
            Body::Push(p) if self.seen.contains(p.message_id) && ack => {
                let seq = self.seq();
                send(client, &Frame::push_ack(seq, p.message_id)).await?;
            }
            Body::Push(p) if self.seen.contains(p.message_id) => {}
            Body::Push(p) => match pushes.try_reserve() {
                Ok(permit) => self.deliver(client, permit, p, ack).await?,
                // Full (or the application is gone): hold it, stop reading.
                Err(_) => conn.held = Some((p, ack)),
            },
            Body::TopicsAck { topics } => {
                if let Some(i) = conn.waiting.iter().position(|(s, _)| *s == frame.seq) {
                    let (_, reply) = conn.waiting.swap_remove(i);
                    let _ = reply.send(Ok(TopicsUpdate::Acked(topics)));
                }
            }
            Body::Error(e) => {
                let refused_topics = conn.waiting.iter().any(|(s, _)| *s == frame.seq);
                if refused_topics && ErrorCode::from_u16(e.code) == Some(ErrorCode::UnknownOpcode) {
                    // A revision-1 server (§11): topics go in the Bind from now on.
                    self.topic_frames = false;
                    conn.downgraded = true;
                }
                // The Close that follows says what happens next.
                conn.error = Some(e);
            }
            Body::Close(c) => return Err(closed(c, conn.error.take())),
            _ => {}
        }
        Ok(())
    }

    async fn on_command(
        &mut self,
        client: &mut Client,
        cmd: Option<Command>,
        conn: &mut Conn,
    ) -> Result<(), Disconnect> {
        let Some(Command::Topics {
            join,
            topics,
            reply,
        }) = cmd
        else {
            // close(), or the Session dropped.
            return Err(Disconnect::Local);
        };
        if let Err(e) = self.change_topics(join, &topics) {
            let _ = reply.send(Err(e));
            return Ok(());
        }
        if !self.topic_frames {
            let _ = reply.send(Ok(TopicsUpdate::Pending));
            return Ok(());
        }
        let seq = self.seq();
        conn.waiting.push((seq, reply));
        send(client, &Frame::new(seq, topics_body(join, topics))).await
    }

    /// Hands a push to the application, then acknowledges it (§10.8: once
    /// the client has taken responsibility for it).
    async fn deliver(
        &mut self,
        client: &mut Client,
        permit: mpsc::Permit<'_, Push>,
        push: Push,
        ack: bool,
    ) -> Result<(), Disconnect> {
        let id = push.message_id;
        self.seen.insert(id);
        permit.send(push);
        if ack {
            let seq = self.seq();
            send(client, &Frame::push_ack(seq, id)).await?;
        }
        Ok(())
    }
}

/// Per-connection state of [`Task::serve`].
#[derive(Default)]
struct Conn {
    /// Subscribe/Unsubscribe requests waiting for their TopicsAck, by seq.
    waiting: Vec<(u32, oneshot::Sender<Result<TopicsUpdate, SessionError>>)>,
    /// A push waiting for room in the channel (and whether it wants an ack);
    /// nothing is read from the server meanwhile.
    held: Option<(Push, bool)>,
    /// An Error frame, waiting for the Close that follows it.
    error: Option<ErrorFrame>,
    /// The server refused a Subscribe as an unknown opcode.
    downgraded: bool,
}

/// How long a failed connection is read for a Close that explains it.
const LAST_WORDS: Duration = Duration::from_secs(1);

/// The Close (or Error) still readable on a connection that failed, if any.
/// Pushes read here are dropped unacknowledged.
async fn last_words(client: &mut Client, conn: &mut Conn) -> Option<Disconnect> {
    let read = async {
        loop {
            match client.recv().await {
                Ok(Some(Frame {
                    body: Body::Close(c),
                    ..
                })) => return Some(closed(c, conn.error.take())),
                Ok(Some(Frame {
                    body: Body::Error(e),
                    ..
                })) => conn.error = Some(e),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    };
    let found = timeout(LAST_WORDS, read).await.ok().flatten();
    found.or_else(|| {
        conn.error.take().map(|e| Disconnect::Rejected {
            code: e.code,
            message: e.message,
        })
    })
}

fn topics_body(join: bool, topics: Vec<String>) -> Body {
    if join {
        Body::Subscribe { topics }
    } else {
        Body::Unsubscribe { topics }
    }
}

/// Connects (with the transport's handshakes) and binds; the bound client
/// and its BindAck.
async fn handshake(connector: &Connector, bind: Frame) -> Result<(Client, BindAck), Disconnect> {
    let mut client = Client::connect_with(connector).await.map_err(|e| match e {
        // They name the server themselves.
        ClientError::Tls(_) | ClientError::WebSocket(_) => Disconnect::Lost(e.to_string()),
        _ => Disconnect::Lost(format!("cannot connect to {}: {e}", connector.addr())),
    })?;
    send(&mut client, &bind).await?;
    let mut error = None;
    loop {
        match client.recv().await {
            Ok(Some(frame)) => match frame.body {
                Body::BindAck(ack) if frame.seq == bind.seq => return Ok((client, ack)),
                Body::Error(e) => error = Some(e),
                Body::Close(c) => return Err(closed(c, error)),
                _ => {}
            },
            Ok(None) => return Err(ended(error, "the server closed the connection".into())),
            Err(e) => return Err(ended(error, e.to_string())),
        }
    }
}

async fn send(client: &mut Client, frame: &Frame) -> Result<(), Disconnect> {
    match timeout(WRITE_LIMIT, client.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Disconnect::Lost(e.to_string())),
        Err(_) => Err(Disconnect::Lost(format!(
            "the server read nothing for {WRITE_LIMIT:?}"
        ))),
    }
}

fn closed(c: Close, error: Option<ErrorFrame>) -> Disconnect {
    Disconnect::Closed {
        reason: c.reason,
        message: c.message,
        retry_after: c.retry_after_ms.map(|ms| Duration::from_millis(ms.into())),
        error: error.map(|e| e.code),
    }
}

/// The connection ended without a Close (after an Error frame, if `error`).
fn ended(error: Option<ErrorFrame>, why: String) -> Disconnect {
    match error {
        Some(e) => Disconnect::Rejected {
            code: e.code,
            message: e.message,
        },
        None => Disconnect::Lost(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(reason: CloseReason, hint: Option<u64>, error: Option<ErrorCode>) -> Disconnect {
        Disconnect::Closed {
            reason: reason as u16,
            message: String::new(),
            retry_after: hint.map(Duration::from_millis),
            error: error.map(|e| e as u16),
        }
    }

    #[test]
    fn reactions_follow_the_close_reason() {
        use CloseReason::*;
        let retry = |hint: Option<u64>| Reaction::Retry {
            hint: hint.map(Duration::from_millis),
            long: false,
        };
        let long = |hint: Option<u64>| Reaction::Retry {
            hint: hint.map(Duration::from_millis),
            long: true,
        };
        for (why, expected) in [
            (close(Replaced, None, None), Reaction::Stop),
            (
                close(AuthFailed, None, Some(ErrorCode::AuthFailed)),
                Reaction::Stop,
            ),
            (
                Disconnect::Rejected {
                    code: ErrorCode::AuthFailed as u16,
                    message: String::new(),
                },
                Reaction::Stop,
            ),
            (Disconnect::Local, Reaction::Stop),
            (
                close(TryLater, Some(300), Some(ErrorCode::Unavailable)),
                retry(Some(300)),
            ),
            (close(TryLater, None, None), retry(None)),
            (close(RateLimited, Some(900), None), long(Some(900))),
            (
                close(ProtocolError, None, Some(ErrorCode::Malformed)),
                long(None),
            ),
            (close(ServerShutdown, None, None), retry(None)),
            (close(HeartbeatTimeout, None, None), retry(None)),
            (close(SlowConsumer, None, None), retry(None)),
            (close(AdminKick, None, None), retry(None)),
            (close(Normal, None, None), retry(None)),
            (
                Disconnect::Closed {
                    reason: 77,
                    message: String::new(),
                    retry_after: None,
                    error: None,
                },
                retry(None),
            ),
            (Disconnect::Lost("eof".into()), retry(None)),
        ] {
            assert_eq!(reaction(&why, false), expected, "{why}");
        }
        // A revision-1 server refusing Subscribe is no client bug.
        let refused = close(ProtocolError, None, Some(ErrorCode::UnknownOpcode));
        assert_eq!(reaction(&refused, true), retry(None));
    }

    #[test]
    fn configs_are_checked_before_anything_is_sent() {
        let ok = || SessionConfig::new("h:1", "dev", Credential::AppKey("k".into()));
        let mut c = ok().topics(["a", "b", "a"]);
        c.validate().unwrap();
        assert_eq!(c.topics, ["a", "b"]);
        for (mut c, why) in [
            (
                SessionConfig::new("h:1", "", Credential::AppKey("k".into())),
                "device id",
            ),
            (
                SessionConfig::new("h:1", "a\nb", Credential::AppKey("k".into())),
                "control",
            ),
            (ok().topics([""]), "topic"),
            (ok().topics((0..33).map(|i| i.to_string())), "32 topics"),
            (
                ok().backoff(Backoff {
                    base: Duration::ZERO,
                    ..Backoff::default()
                }),
                "backoff",
            ),
        ] {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn disconnects_read_well() {
        let d = close(
            CloseReason::TryLater,
            Some(300),
            Some(ErrorCode::Unavailable),
        );
        assert_eq!(
            d.to_string(),
            "closed by the server: try_later (9), retry after 300ms"
        );
        assert_eq!(d.close_reason(), Some(CloseReason::TryLater));
    }
}
