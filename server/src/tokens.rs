//! The process-wide upstream token cache (COMPAT.md §4.3, SECURITY.md §2.10): the core's
//! [`TokenCache`] behind a mutex, plus the waiting the core leaves to the wrapper — an exchange
//! told [`TokenLookup::Wait`] sleeps until the fetching exchange stores or releases the key, then
//! looks up again.
//!
//! A fetch grant is released when its exchange is dropped without storing (the client went
//! away mid-fetch), so waiters never wait for a fetch nobody performs.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use dockerproxy_core::token::{FETCH_TIMEOUT, Token, TokenCache, TokenKey, TokenLookup};
use tokio::sync::Notify;

use crate::state;

/// The shared token cache.
#[derive(Debug, Default)]
pub struct Tokens {
    cache: Mutex<TokenCache>,
    changed: Notify,
}

impl Tokens {
    fn cache(&self) -> MutexGuard<'_, TokenCache> {
        // The cache holds plain data; a panic elsewhere leaves it usable.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Looks `key` up, waiting while another exchange fetches it. Returns `Hit` or `Fetch`
    /// (never `Wait`): after [`FETCH_TIMEOUT`] without news, the caller takes the fetch over.
    pub async fn lookup(&self, key: &TokenKey) -> TokenLookup {
        let deadline = tokio::time::Instant::now() + FETCH_TIMEOUT + Duration::from_secs(1);
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Register before looking, so a store between the lookup and the wait is not missed.
            notified.as_mut().enable();
            match self.cache().lookup(key, state::now()) {
                TokenLookup::Wait => {}
                other => return other,
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return TokenLookup::Fetch;
            }
        }
    }

    /// Ends a granted fetch: stores the token or releases the key, and wakes the waiters.
    pub fn store(&self, key: TokenKey, token: Option<Token>) {
        {
            let mut cache = self.cache();
            match token {
                Some(t) => cache.complete(key, t),
                None => cache.fail(&key),
            }
        }
        self.changed.notify_waiters();
    }

    /// Drops a token the registry refused.
    pub fn invalidate(&self, key: &TokenKey) {
        self.cache().invalidate(key);
    }
}

/// A fetch granted to one exchange; released (as failed) if dropped before it is stored.
#[derive(Debug)]
pub struct FetchGrant {
    tokens: Arc<Tokens>,
    key: Option<TokenKey>,
}

impl FetchGrant {
    /// A grant for `key`.
    pub fn new(tokens: Arc<Tokens>, key: TokenKey) -> Self {
        Self {
            tokens,
            key: Some(key),
        }
    }

    /// True when this grant is for `key`.
    pub fn is_for(&self, key: &TokenKey) -> bool {
        self.key.as_ref() == Some(key)
    }

    /// The exchange stored (or released) the key itself.
    pub fn settle(mut self) {
        self.key = None;
    }
}

impl Drop for FetchGrant {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.tokens.store(key, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dockerproxy_core::Timestamp;
    use dockerproxy_core::token::Identity;

    fn key() -> TokenKey {
        TokenKey::new(
            "docker.io",
            "https://auth.example/token",
            None,
            vec!["repository:a:pull".into()],
            Identity::Anonymous,
        )
    }

    fn token() -> Token {
        Token {
            value: "t".into(),
            expires_at: Timestamp::from_millis(u64::MAX / 2),
        }
    }

    #[tokio::test]
    async fn second_asker_waits_for_the_first_fetch() {
        let tokens = Arc::new(Tokens::default());
        assert_eq!(tokens.lookup(&key()).await, TokenLookup::Fetch);
        let t2 = tokens.clone();
        let waiter = tokio::spawn(async move { t2.lookup(&key()).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        tokens.store(key(), Some(token()));
        let got = tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, TokenLookup::Hit(token()));
    }

    #[tokio::test]
    async fn a_dropped_grant_releases_the_waiters() {
        let tokens = Arc::new(Tokens::default());
        assert_eq!(tokens.lookup(&key()).await, TokenLookup::Fetch);
        let grant = FetchGrant::new(tokens.clone(), key());
        let t2 = tokens.clone();
        let waiter = tokio::spawn(async move { t2.lookup(&key()).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(grant);
        let got = tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, TokenLookup::Fetch);
    }
}
