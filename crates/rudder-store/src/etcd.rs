//! The etcd backend: a real etcd v3 cluster, for users who outgrow one
//! machine. Every key is stored under a configurable prefix.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType,
    GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::mpsc;

use crate::watch::WATCH_CHANNEL_CAPACITY;
use crate::{
    check_key, check_range, check_value, prefix_end, Event, EventKind, KeyValue, RangeRequest,
    RangeResponse, Result, Revision, Store, StoreError, WatchMessage, WatchStream,
};

#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// `http://host:port` of each member.
    pub endpoints: Vec<String>,
    /// Prepended to every key, like kube-apiserver's `--etcd-prefix`.
    pub prefix: String,
    /// How long a single call may take.
    pub request_timeout: Duration,
    /// How often an idle watch asks etcd for a progress notification.
    pub progress_interval: Duration,
}

impl EtcdConfig {
    /// Endpoints separated by commas, as `--datastore-endpoint` takes them.
    pub fn from_endpoints(endpoints: &str) -> Self {
        EtcdConfig {
            endpoints: endpoints
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_owned)
                .collect(),
            prefix: "/registry".into(),
            request_timeout: Duration::from_secs(10),
            progress_interval: Duration::from_secs(5),
        }
    }
}

#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
    progress_interval: Duration,
}

impl EtcdStore {
    /// Connects and checks that the cluster answers, so a wrong endpoint
    /// fails at start with a message naming it.
    pub async fn connect(config: EtcdConfig) -> Result<Self> {
        let location = config.endpoints.join(",");
        let open_error = |reason: String| StoreError::Open {
            location: location.clone(),
            reason,
        };
        if config.endpoints.is_empty() {
            return Err(open_error("no etcd endpoint given".into()));
        }
        for endpoint in &config.endpoints {
            if endpoint.starts_with("https://") {
                return Err(open_error(format!(
                    "{endpoint}: TLS to etcd is not supported yet; use an http:// endpoint"
                )));
            }
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(config.request_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let mut client = Client::connect(&config.endpoints, Some(options))
            .await
            .map_err(|e| open_error(e.to_string()))?;
        client
            .status()
            .await
            .map_err(|e| open_error(format!("etcd does not answer: {e}")))?;
        tracing::info!(endpoints = %location, prefix = %config.prefix, "connected to etcd");
        Ok(EtcdStore {
            client,
            prefix: config.prefix.trim_end_matches('/').to_owned(),
            progress_interval: config.progress_interval,
        })
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    fn strip<'a>(&self, key: &'a [u8]) -> Result<&'a str> {
        let key = std::str::from_utf8(key)
            .map_err(|_| StoreError::Corrupt("an etcd key is not UTF-8".into()))?;
        key.strip_prefix(&self.prefix)
            .ok_or_else(|| StoreError::Corrupt(format!("etcd key {key:?} is outside the prefix")))
    }

    fn convert(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
        Ok(KeyValue {
            key: self.strip(kv.key())?.to_owned(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            version: kv.version(),
        })
    }

    /// The outcome of a failed compare: the key's current value if the
    /// transaction's else-branch read one.
    fn current_from(&self, responses: Vec<TxnOpResponse>) -> Result<Option<KeyValue>> {
        for response in responses {
            if let TxnOpResponse::Get(get) = response {
                return get.kvs().first().map(|kv| self.convert(kv)).transpose();
            }
        }
        Ok(None)
    }
}

/// Maps etcd's revision errors to the store's typed ones.
fn map_error(err: etcd_client::Error, requested: Option<Revision>) -> StoreError {
    if let etcd_client::Error::GRpcStatus(status) = &err {
        let msg = status.message();
        if msg.contains("required revision has been compacted") {
            return StoreError::Compacted {
                requested: requested.unwrap_or(0),
                compacted: 0,
            };
        }
        if msg.contains("request is too large") {
            return StoreError::ValueTooLarge {
                size: 0,
                limit: crate::MAX_VALUE_BYTES,
            };
        }
        if msg.contains("required revision is a future revision") {
            return StoreError::FutureRevision {
                requested: requested.unwrap_or(0),
                latest: 0,
            };
        }
    }
    StoreError::from(err)
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| StoreError::Corrupt("etcd answered without a header".into()))
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(
        &self,
        key: &str,
        revision: Option<Revision>,
    ) -> Result<(Option<KeyValue>, Revision)> {
        check_key(key)?;
        let mut options = GetOptions::new();
        if let Some(rev) = revision {
            options = options.with_revision(rev);
        }
        let resp = self
            .client
            .kv_client()
            .get(self.full_key(key), Some(options))
            .await
            .map_err(|e| map_error(e, revision))?;
        let kv = resp.kvs().first().map(|kv| self.convert(kv)).transpose()?;
        Ok((kv, revision.unwrap_or(header_revision(resp.header())?)))
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        check_range(&req)?;
        let full_prefix = self.full_key(&req.prefix);
        let start = self.full_key(req.start.as_deref().unwrap_or(&req.prefix));
        let end = prefix_end(full_prefix.as_bytes()).unwrap_or_else(|| vec![0]);
        let mut options = GetOptions::new().with_range(end);
        if req.limit > 0 {
            options = options.with_limit(req.limit as i64);
        }
        if let Some(rev) = req.revision {
            options = options.with_revision(rev);
        }
        if req.count_only {
            options = options.with_count_only();
        }
        let resp = self
            .client
            .kv_client()
            .get(start, Some(options))
            .await
            .map_err(|e| map_error(e, req.revision))?;
        let kvs = resp
            .kvs()
            .iter()
            .map(|kv| self.convert(kv))
            .collect::<Result<Vec<_>>>()?;
        Ok(RangeResponse {
            kvs,
            more: resp.more(),
            count: resp.count(),
            revision: req.revision.unwrap_or(header_revision(resp.header())?),
        })
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision> {
        check_key(key)?;
        check_value(&value)?;
        let full = self.full_key(key);
        let txn = Txn::new()
            .when([Compare::mod_revision(full.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(full, value, None)]);
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(|e| map_error(e, None))?;
        if !resp.succeeded() {
            return Err(StoreError::AlreadyExists {
                key: key.to_owned(),
            });
        }
        header_revision(resp.header())
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<Revision> {
        check_key(key)?;
        check_value(&value)?;
        let full = self.full_key(key);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                full.clone(),
                CompareOp::Equal,
                expected,
            )])
            .and_then([TxnOp::put(full.clone(), value, None)])
            .or_else([TxnOp::get(full, None)]);
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(|e| map_error(e, None))?;
        if resp.succeeded() {
            return header_revision(resp.header());
        }
        match self.current_from(resp.op_responses())? {
            Some(current) => Err(StoreError::Conflict {
                key: key.to_owned(),
                expected,
                current: Box::new(current),
            }),
            None => Err(StoreError::NotFound(key.to_owned())),
        }
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(Revision, KeyValue)> {
        check_key(key)?;
        let full = self.full_key(key);
        // With no expected revision, still compare against the revision we
        // saw, so the deleted value we report is exactly the one removed.
        let mut expected_rev = expected;
        loop {
            let compare_rev = match expected_rev {
                Some(rev) => rev,
                None => match self.get(key, None).await?.0 {
                    Some(kv) => kv.mod_revision,
                    None => return Err(StoreError::NotFound(key.to_owned())),
                },
            };
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    full.clone(),
                    CompareOp::Equal,
                    compare_rev,
                )])
                .and_then([TxnOp::delete(
                    full.clone(),
                    Some(DeleteOptions::new().with_prev_key()),
                )])
                .or_else([TxnOp::get(full.clone(), None)]);
            let resp = self
                .client
                .kv_client()
                .txn(txn)
                .await
                .map_err(|e| map_error(e, None))?;
            let revision = header_revision(resp.header())?;
            let responses = resp.op_responses();
            if resp.succeeded() {
                for response in responses {
                    if let TxnOpResponse::Delete(del) = response {
                        if let Some(prev) = del.prev_kvs().first() {
                            return Ok((revision, self.convert(prev)?));
                        }
                    }
                }
                return Err(StoreError::NotFound(key.to_owned()));
            }
            match (self.current_from(responses)?, expected) {
                (None, _) => return Err(StoreError::NotFound(key.to_owned())),
                (Some(current), Some(expected)) => {
                    return Err(StoreError::Conflict {
                        key: key.to_owned(),
                        expected,
                        current: Box::new(current),
                    })
                }
                // Changed between our read and the delete: delete the new value.
                (Some(_), None) => expected_rev = None,
            }
        }
    }

    async fn watch(&self, prefix: &str, start_revision: Revision) -> Result<WatchStream> {
        let full_prefix = self.full_key(prefix);
        let end = prefix_end(full_prefix.as_bytes()).unwrap_or_else(|| vec![0]);
        let mut options = WatchOptions::new()
            .with_range(end)
            .with_prev_key()
            .with_progress_notify();
        if start_revision > 0 {
            options = options.with_start_revision(start_revision);
        }
        if start_revision > 0 {
            // etcd confirms a watch from a compacted revision and cancels it
            // only afterwards; a read at that revision fails at once instead.
            let probe = self
                .client
                .kv_client()
                .get(
                    full_prefix.clone(),
                    Some(
                        GetOptions::new()
                            .with_revision(start_revision)
                            .with_count_only(),
                    ),
                )
                .await
                .map_err(|e| map_error(e, Some(start_revision)));
            match probe {
                // Watching a revision that does not exist yet is fine.
                Ok(_) | Err(StoreError::FutureRevision { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        let mut stream = self
            .client
            .watch_client()
            .watch(full_prefix, Some(options))
            .await
            .map_err(|e| map_error(e, Some(start_revision)))?;
        // The first response confirms the watch, or cancels it at once
        // when the start revision is compacted.
        let first = stream
            .message()
            .await?
            .ok_or_else(|| StoreError::Unavailable("etcd closed the watch".into()))?;
        if first.canceled() {
            if first.compact_revision() > 0 {
                return Err(StoreError::Compacted {
                    requested: start_revision,
                    compacted: first.compact_revision(),
                });
            }
            return Err(StoreError::Unavailable(format!(
                "etcd refused the watch: {}",
                first.cancel_reason()
            )));
        }
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL_CAPACITY);
        let store = self.clone();
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(store.progress_interval);
            ticker.reset();
            let mut last = start_revision.max(1) - 1;
            // The creation answer carries the store's revision, not the
            // watch's progress, so it is not reported.
            let mut pending: Option<etcd_client::WatchResponse> = None;
            loop {
                let resp = match pending.take() {
                    Some(resp) => resp,
                    None => tokio::select! {
                        msg = stream.message() => match msg {
                            Ok(Some(resp)) => resp,
                            Ok(None) => {
                                let _ = tx.send(Err(StoreError::Unavailable("etcd closed the watch".into()))).await;
                                return;
                            }
                            Err(err) => {
                                let _ = tx.send(Err(err.into())).await;
                                return;
                            }
                        },
                        _ = ticker.tick() => {
                            if stream.request_progress().await.is_err() {
                                let _ = tx.send(Err(StoreError::Unavailable("etcd watch broke".into()))).await;
                                return;
                            }
                            continue;
                        }
                    },
                };
                if resp.canceled() {
                    let err = if resp.compact_revision() > 0 {
                        StoreError::Compacted {
                            requested: last + 1,
                            compacted: resp.compact_revision(),
                        }
                    } else {
                        StoreError::WatchClosed(resp.cancel_reason().to_owned())
                    };
                    let _ = tx.send(Err(err)).await;
                    return;
                }
                let mut events = Vec::with_capacity(resp.events().len());
                for event in resp.events() {
                    match store.convert_event(event) {
                        Ok(event) => events.push(event),
                        Err(err) => {
                            let _ = tx.send(Err(err)).await;
                            return;
                        }
                    }
                }
                let message = if let Some(event) = events.last() {
                    last = event.revision();
                    WatchMessage::Events(events)
                } else {
                    // A progress notification (or the creation answer): no
                    // change under the prefix up to the header's revision.
                    let Some(rev) = resp.header().map(|h| h.revision()) else {
                        continue;
                    };
                    if rev <= last {
                        continue;
                    }
                    last = rev;
                    WatchMessage::Progress(rev)
                };
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
            }
        });
        Ok(WatchStream::new(rx, task))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.client
            .kv_client()
            .compact(revision, Some(CompactionOptions::new().with_physical()))
            .await
            .map_err(|e| map_error(e, Some(revision)))?;
        Ok(())
    }

    async fn revisions(&self) -> Result<(Revision, Revision)> {
        // etcd does not report its compacted revision directly; a range at
        // revision 1 fails with the compacted revision when history is gone.
        let resp = self
            .client
            .kv_client()
            .get(
                self.full_key("/"),
                Some(GetOptions::new().with_count_only()),
            )
            .await?;
        Ok((header_revision(resp.header())?, 0))
    }

    fn backend(&self) -> &'static str {
        "etcd"
    }
}

impl EtcdStore {
    fn convert_event(&self, event: &etcd_client::Event) -> Result<Event> {
        let kv = event
            .kv()
            .ok_or_else(|| StoreError::Corrupt("an etcd event has no key".into()))?;
        let prev = event.prev_kv().map(|kv| self.convert(kv)).transpose()?;
        Ok(match event.event_type() {
            EventType::Put => Event {
                kind: EventKind::Put,
                kv: self.convert(kv)?,
                prev,
            },
            EventType::Delete => Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: self.strip(kv.key())?.to_owned(),
                    value: Vec::new(),
                    create_revision: 0,
                    mod_revision: kv.mod_revision(),
                    version: 0,
                },
                prev,
            },
        })
    }
}
