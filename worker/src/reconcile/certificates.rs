//! The platform certificates of the merchants with `download_platform_certificates`,
//! downloaded from `GET /v3/certificates` (<https://pay.weixin.qq.com/doc/v3/merchant/4012551764>)
//! at start and every `reconciler.platform_certificates_refresh_secs` (WeChat Pay's own
//! SDKs refresh every 24 h in Go, every 60 min in Java): a new certificate is in use here
//! at once and, through the platform keys stream (`wxpay_runtime::platform_keys`), in every
//! gateway and worker, before WeChat Pay signs with it.
//!
//! Each download is published whole, even when nothing is new: the stream's retention
//! drops old messages, and a process started later must still find the current
//! certificates there.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wxpay_runtime::config::Merchant;
use wxpay_runtime::platform_keys::{log_refused, report_expiry, SharedCertificates};
use wxpay_runtime::telemetry::{metric, step};

use super::metrics::reason;
use super::rate::RateLimiter;
use super::Reconciler;

/// After a failed download, the next try comes this soon (or at the refresh, if sooner).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(300);

/// `result` labels of `wxpay_reconciler_certificate_downloads_total` besides the
/// `QueryError` codes: the download was verified and its certificates published.
pub const OK: &str = "ok";

/// Every `result` label, registered at zero.
pub const RESULTS: [&str; 7] = [
    OK,
    reason::HTTP,
    reason::STATUS,
    reason::BAD_SIGNATURE,
    reason::MALFORMED,
    reason::CLIENT,
    reason::BROKER,
];

fn count(result: &'static str) {
    metrics::counter!(metric::RECONCILER_CERTIFICATE_DOWNLOADS_TOTAL, "result" => result)
        .increment(1);
}

impl Reconciler {
    /// Downloads the certificates of every merchant that asks for it, adds them here and
    /// publishes them to the stream. `true` when every download succeeded (or none was due).
    pub async fn refresh_certificates(&self) -> bool {
        let merchants = self.inner.merchants.current();
        let mut all_ok = true;
        for merchant in merchants
            .iter()
            .filter(|merchant| merchant.download_platform_certificates)
        {
            let result = self.refresh_merchant(merchant).await;
            count(result);
            all_ok &= result == OK;
        }
        all_ok
    }

    /// One merchant's download: the `result` label.
    async fn refresh_merchant(&self, merchant: &Merchant) -> &'static str {
        let mch_id = merchant.mch_id.as_str();
        let limiter = RateLimiter::per_second(self.inner.settings.rate_per_merchant);
        let downloaded = match self
            .inner
            .client
            .download_certificates(merchant, &limiter)
            .await
        {
            Ok(downloaded) => downloaded,
            Err(error) => {
                tracing::warn!(step = step::PLATFORM_KEYS, mch_id, %error, "platform certificates download failed; the keys held stay in use");
                return error.code();
            }
        };
        for (serial, error) in &downloaded.refused {
            log_refused(mch_id, serial, error);
        }
        let serials: Vec<&str> = downloaded
            .accepted
            .iter()
            .map(|certificate| certificate.serial.as_str())
            .collect();
        match self.inner.merchants.learn(mch_id, &downloaded.accepted) {
            Ok(added) if !added.is_empty() => {
                report_expiry(&self.inner.merchants.current());
                tracing::info!(step = step::PLATFORM_KEYS, mch_id, serials_added = %added.join(","), "platform certificates added");
            }
            Ok(_) => {}
            // Reloaded meanwhile without the merchant, or without its download: nothing to add.
            Err(error) => {
                tracing::warn!(step = step::PLATFORM_KEYS, mch_id, %error, "platform certificates not added")
            }
        }
        let message = SharedCertificates {
            mch_id: mch_id.to_owned(),
            data: downloaded.answer.data,
        };
        let published = match self.publisher().await {
            Ok(publisher) => {
                publisher
                    .publish_certificates(&self.inner.rabbitmq, &message.to_body())
                    .await
            }
            Err(error) => Err(error),
        };
        match published {
            Ok(()) => {
                tracing::info!(step = step::PLATFORM_KEYS, mch_id, serials = %serials.join(","), "platform certificates downloaded and shared");
                OK
            }
            Err(error) => {
                tracing::warn!(step = step::PLATFORM_KEYS, mch_id, %error, "platform certificates downloaded but not shared: the next refresh tries again");
                reason::BROKER
            }
        }
    }

    /// Downloads at once, then every `reconciler.platform_certificates_refresh_secs` (sooner
    /// after a failure), until `shutdown`.
    pub async fn refresh_certificates_until(&self, shutdown: CancellationToken) {
        let every = Duration::from_secs(
            self.inner
                .settings
                .platform_certificates_refresh_secs
                .max(1),
        );
        loop {
            let next = if self.refresh_certificates().await {
                every
            } else {
                every.min(RETRY_AFTER_FAILURE)
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(next) => {}
            }
        }
    }
}
