//! The only code that talks to AWS SQS: the push queue (`--sqs-queue-url`) that an EventBridge
//! rule fills with SSM status-change events. One long poll at a time (`WaitTimeSeconds=20`, up
//! to 10 messages); every message is handed to the tracker as a hint ([`crate::aws::eventbridge`]) and
//! then deleted, whatever it held; a receive that was not full is followed by a short pause, so
//! that a busy queue is read ten at a time; queue errors back off (1 s doubling to 60 s), are
//! logged and counted, and never stop polling, which stays correct without the queue.

use std::sync::Arc;
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{Region, SdkConfig};
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use aws_sdk_sqs::Client;
use tracing::{debug, info, warn};

use crate::aws::eventbridge::{self as events, Hint, Parsed};
use crate::runtime::metrics::Metrics;
use crate::tracking::tracker::Tracker;

/// SQS's longest long poll.
const WAIT_SECONDS: i32 = 20;
/// SQS's most messages per receive.
const MAX_MESSAGES: i32 = 10;
/// Longer than a long poll, so a receive is not cut short.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// After a receive that was not full, the next one waits this long: a busy queue is then
/// read ten messages a call instead of one or two (each call costs CPU here and a request at
/// AWS), and the tracker gathers the hints of [`HINT_COALESCE`] anyway.
///
/// [`HINT_COALESCE`]: crate::tracking::tracker::HINT_COALESCE
const GATHER: Duration = Duration::from_millis(50);
/// Backoff after a queue error: from this...
const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// ...doubling up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The push queue.
pub struct Queue {
    client: Client,
    url: String,
    metrics: Arc<Metrics>,
}

/// The region in a standard queue URL (`https://sqs.<region>.amazonaws.com/<account>/<name>`).
pub fn region_of(url: &str) -> Option<String> {
    let host = url.split("://").nth(1)?.split('/').next()?;
    let mut parts = host.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("sqs"), Some(region), Some("amazonaws")) => Some(region.to_string()),
        _ => None,
    }
}

impl Queue {
    /// The queue at `url`, with `base`'s credentials and endpoints (`AWS_ENDPOINT_URL_SQS`),
    /// in the region the URL names if it names one.
    pub fn new(base: &SdkConfig, url: String, metrics: Arc<Metrics>) -> Self {
        let mut config = aws_sdk_sqs::config::Builder::from(base).timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .operation_timeout(ATTEMPT_TIMEOUT * 3)
                .build(),
        );
        if let Some(region) = region_of(&url) {
            config = config.region(Region::new(region));
        }
        Self {
            client: Client::from_conf(config.build()),
            url,
            metrics,
        }
    }

    /// Receives, hands over and deletes messages until dropped: the tracker re-reads the
    /// nodes an event names, and `hinted` hears of every hint too (the controller wakes the
    /// `Command`s whose run it names).
    pub async fn consume(self, tracker: Arc<Tracker>, hinted: impl Fn(&Hint)) {
        info!(queue = %self.url, "consuming SSM events");
        let mut backoff = BACKOFF_MIN;
        loop {
            let received = self
                .client
                .receive_message()
                .queue_url(&self.url)
                .wait_time_seconds(WAIT_SECONDS)
                .max_number_of_messages(MAX_MESSAGES)
                .send()
                .await;
            let messages = match received {
                Ok(out) => {
                    backoff = BACKOFF_MIN;
                    tracker.push_reachable(true);
                    out.messages.unwrap_or_default()
                }
                Err(error) => {
                    tracker.push_reachable(false);
                    self.metrics.push_message("queue_error");
                    warn!(error = %DisplayErrorContext(&error), queue = %self.url, retry_in = ?backoff, "receiving from the SQS queue failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            let mut handled = Vec::new();
            for (n, message) in messages.iter().enumerate() {
                let kind = match events::parse(message.body().unwrap_or_default()) {
                    Parsed::Hint(hint) => {
                        debug!(command = %hint.command_id, instance = ?hint.instance_id, status = %hint.status, "SSM event");
                        tracker.hint(&hint);
                        hinted(&hint);
                        "hint"
                    }
                    Parsed::Foreign => "foreign",
                    Parsed::Malformed => "malformed",
                };
                self.metrics.push_message(kind);
                if let Some(handle) = message.receipt_handle() {
                    handled.push(
                        DeleteMessageBatchRequestEntry::builder()
                            .id(n.to_string())
                            .receipt_handle(handle)
                            .build(),
                    );
                }
            }
            self.delete(handled).await;
            if !messages.is_empty() && messages.len() < MAX_MESSAGES as usize {
                tokio::time::sleep(GATHER).await;
            }
        }
    }

    /// Deletes handled messages; one that cannot be deleted comes back later, and a repeated
    /// hint is harmless.
    async fn delete(
        &self,
        entries: Vec<Result<DeleteMessageBatchRequestEntry, aws_sdk_sqs::error::BuildError>>,
    ) {
        let entries: Vec<_> = entries.into_iter().filter_map(Result::ok).collect();
        if entries.is_empty() {
            return;
        }
        let result = self
            .client
            .delete_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await;
        match result {
            Ok(out) if out.failed().is_empty() => {}
            Ok(out) => {
                self.metrics.push_message("delete_error");
                warn!(
                    failed = out.failed().len(),
                    "some SQS messages could not be deleted"
                );
            }
            Err(error) => {
                self.metrics.push_message("delete_error");
                warn!(error = %DisplayErrorContext(&error), "deleting SQS messages failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_region_is_read_from_a_standard_queue_url() {
        assert_eq!(
            region_of("https://sqs.eu-west-1.amazonaws.com/111122223333/ssm-events"),
            Some("eu-west-1".into())
        );
        assert_eq!(region_of("http://127.0.0.1:4566/000000000000/q"), None);
        assert_eq!(region_of("garbage"), None);
    }
}
