//! How the process learns that the embedded broker or the front died, so it can exit and be
//! restarted (crash-only: nothing here restarts anything).
//!
//! - [`StopSignal`]: set once, with a reason; [`StopSignal::stopped`] is the future a
//!   `BrokerHandle` or `FrontHandle` hands out.
//! - [`BrokerThreads`]: the names of one embedded broker's threads, the only place that knows
//!   them. rumqttd gives no handle to its router thread and catches nothing, so a panic there
//!   leaves the process up with no MQTT moving (SPEC.md §13); a process-wide panic hook,
//!   installed once and chained to the previous one (panics are still printed), recognizes
//!   these threads by name and sets their broker's signal.
//! - [`supervise_task`]: the same for a tokio task (the front's accept loop).
//!
//! Any panic on a broker thread counts as the broker being dead: rumqttd holds locks across
//! code that panics (a panic poisons them and every later connection fails), so nothing short
//! of a new process is trustworthy.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Once};

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Set once, with the reason; later reasons are ignored (the first cause is the one to read).
#[derive(Debug)]
pub(crate) struct StopSignal {
    reason: watch::Sender<Option<String>>,
}

impl StopSignal {
    pub(crate) fn new() -> Arc<StopSignal> {
        Arc::new(StopSignal {
            reason: watch::Sender::new(None),
        })
    }

    /// Records why it stopped, unless a reason is already recorded. Callable from any thread,
    /// inside or outside a runtime, including from a panic hook.
    pub(crate) fn stop(&self, reason: String) {
        self.reason.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(reason);
            true
        });
    }

    /// The reason, if it stopped.
    pub(crate) fn reason(&self) -> Option<String> {
        self.reason.borrow().clone()
    }

    /// Resolves with the reason once it stopped (at once if it already has).
    pub(crate) fn stopped(self: &Arc<Self>) -> impl Future<Output = String> + Send + 'static {
        let signal = self.clone();
        async move {
            let mut rx = signal.reason.subscribe();
            match rx.wait_for(Option::is_some).await {
                Ok(reason) => reason.clone().unwrap_or_default(),
                // Cannot happen: `signal` keeps the sender alive.
                Err(_) => "supervision ended".to_owned(),
            }
        }
    }
}

/// The threads of one embedded broker. Each broker started in this process gets its own
/// instance number, so a panic in one broker (tests run several) never stops another.
#[derive(Debug, Clone)]
pub(crate) struct BrokerThreads {
    instance: usize,
}

impl BrokerThreads {
    pub(crate) fn next() -> BrokerThreads {
        // From 1: rumqttd's default router id is 0, so another rumqttd in the process (none is
        // expected) would not share our names by default.
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        BrokerThreads {
            instance: NEXT.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// rumqttd's `Config::id`: rumqttd names its router thread `router-{id}`
    /// (`router/routing.rs`, `Router::spawn`) and uses the id for nothing else but metrics.
    pub(crate) fn router_id(&self) -> usize {
        self.instance
    }

    fn router(&self) -> String {
        format!("router-{}", self.instance)
    }

    /// rumqttd's `ServerSettings::name`: the v4 listener's thread is named after it
    /// (`server/broker.rs`, `Broker::start`), and every connection task runs on that thread.
    pub(crate) fn server(&self) -> String {
        format!("edgefleet-v4-{}", self.instance)
    }

    /// Our own thread, the one running `Broker::new` and `Broker::start()`.
    pub(crate) fn supervisor(&self) -> String {
        format!("mqtt-broker-{}", self.instance)
    }

    fn all(&self) -> [String; 3] {
        [self.router(), self.server(), self.supervisor()]
    }
}

/// Thread name → the signal of the broker it belongs to. Entries stay for the life of the
/// process, like the brokers (rumqttd cannot be stopped).
static BROKER_THREADS: LazyLock<Mutex<HashMap<String, Arc<StopSignal>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// From now on, a panic on any of `threads` sets `signal`. Call before the threads exist.
pub(crate) fn watch_broker_threads(threads: &BrokerThreads, signal: &Arc<StopSignal>) {
    install_panic_hook();
    let mut known = BROKER_THREADS.lock();
    for name in threads.all() {
        known.insert(name, signal.clone());
    }
}

fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            if let Some(name) = thread.name() {
                // Never held while anything that can panic runs, so never held here.
                let signal = BROKER_THREADS.lock().get(name).cloned();
                if let Some(signal) = signal {
                    let at = info
                        .location()
                        .map_or_else(|| "an unknown location".to_owned(), ToString::to_string);
                    signal.stop(format!(
                        "broker thread '{name}' panicked at {at}: {}",
                        panic_message(info.payload())
                    ));
                }
            }
            previous(info);
        }));
    });
}

/// Sets `signal` when `task` ends: how it ended (returned with a reason, panicked, or was
/// aborted) becomes the reason. Spawns a small watcher task.
pub(crate) fn supervise_task(
    what: &'static str,
    task: JoinHandle<String>,
    signal: Arc<StopSignal>,
) {
    tokio::spawn(async move {
        let reason = match task.await {
            Ok(reason) => format!("{what} ended: {reason}"),
            Err(e) if e.is_panic() => {
                format!("{what} panicked: {}", panic_message(&*e.into_panic()))
            }
            Err(_) => format!("{what} was shut down"),
        };
        signal.stop(reason);
    });
}

/// The message of a panic payload (`panic!` gives a `&str` or a `String`).
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::FutureExt;

    use super::*;

    #[tokio::test]
    async fn the_first_reason_wins_and_late_waiters_get_it() {
        let signal = StopSignal::new();
        let early = signal.stopped();
        signal.stop("first".to_owned());
        signal.stop("second".to_owned());
        assert_eq!(early.await, "first");
        assert_eq!(signal.stopped().await, "first");
        assert_eq!(signal.reason().as_deref(), Some("first"));
    }

    #[tokio::test]
    async fn a_panicking_task_stops_its_signal_with_the_message() {
        let signal = StopSignal::new();
        let task = tokio::spawn(async {
            if std::hint::black_box(true) {
                panic!("accept loop exploded");
            }
            String::new()
        });
        supervise_task("the accept loop", task, signal.clone());
        let reason = tokio::time::timeout(Duration::from_secs(5), signal.stopped())
            .await
            .expect("a panicked task is noticed");
        assert_eq!(reason, "the accept loop panicked: accept loop exploded");
    }

    #[tokio::test]
    async fn an_aborted_or_finished_task_stops_its_signal() {
        let signal = StopSignal::new();
        let task = tokio::spawn(std::future::pending::<String>());
        let abort = task.abort_handle();
        supervise_task("the accept loop", task, signal.clone());
        assert!(signal.stopped().now_or_never().is_none());
        abort.abort();
        let reason = tokio::time::timeout(Duration::from_secs(5), signal.stopped()).await;
        assert_eq!(reason.unwrap(), "the accept loop was shut down");

        let signal = StopSignal::new();
        let task = tokio::spawn(async { "listener closed".to_owned() });
        supervise_task("the accept loop", task, signal.clone());
        let reason = tokio::time::timeout(Duration::from_secs(5), signal.stopped()).await;
        assert_eq!(reason.unwrap(), "the accept loop ended: listener closed");
    }

    #[test]
    fn a_panic_on_a_watched_thread_stops_only_its_broker() {
        let (mine, other) = (BrokerThreads::next(), BrokerThreads::next());
        let (signal, other_signal) = (StopSignal::new(), StopSignal::new());
        watch_broker_threads(&mine, &signal);
        watch_broker_threads(&other, &other_signal);
        let joined = std::thread::Builder::new()
            .name(mine.router())
            .spawn(|| panic!("index out of range"))
            .unwrap()
            .join();
        assert!(joined.is_err());
        let reason = signal.reason().expect("the panic hook set the signal");
        assert!(
            reason.starts_with(&format!("broker thread '{}' panicked at ", mine.router()))
                && reason.ends_with(": index out of range")
                && reason.contains("supervision.rs"),
            "{reason}"
        );
        assert_eq!(other_signal.reason(), None);
        // A panic on a thread that is no broker's is none of our business.
        let joined = std::thread::spawn(|| panic!("unrelated")).join();
        assert!(joined.is_err());
        assert_eq!(other_signal.reason(), None);
    }
}
