//! AWS Secrets Manager (one secret per field, named by its id) and SSM Parameter Store
//! (SecureString parameters named by their id), through the AWS SDK on a rustls/ring client.
//! Credentials come from static keys in the config, else the default chain (env, profile,
//! web identity / IRSA, ECS, IMDS). Nothing is called at start-up.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

use super::{listing, SecretStore, StoreError, StoreFuture};
use crate::config::SecretsConfig;

const DESCRIPTION: &str = "OpenMetadata connection secret, stored by om-secrets-proxy";

/// The SDK config shared by both clients. Retries are the gateway's own (bounded, jittered).
pub async fn sdk_config(cfg: &SecretsConfig) -> SdkConfig {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(10))
                .build(),
        );
    if let Some(r) = &cfg.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some(e) = &cfg.endpoint_url {
        loader = loader.endpoint_url(e.clone());
    }
    if let (Some(a), Some(s)) = (&cfg.access_key_id, &cfg.secret_access_key) {
        loader = loader.credentials_provider(aws_credential_types::Credentials::new(
            a.clone(),
            s.clone(),
            None,
            None,
            "om-secrets-proxy-config",
        ));
    }
    loader.load().await
}

/// Maps an SDK error to the store taxonomy; `not_found` codes become `Ok(None)` upstream.
fn map_err<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> (Option<String>, StoreError) {
    match e {
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("Unknown").to_string();
            let d = format!("aws: {code}");
            let err = match code.as_str() {
                "AccessDeniedException"
                | "AccessDenied"
                | "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "ExpiredTokenException"
                | "UnauthorizedOperation" => StoreError::AccessDenied(d),
                "ThrottlingException"
                | "TooManyRequestsException"
                | "Throttling"
                | "LimitExceededException"
                | "TooManyUpdates"
                | "RequestLimitExceeded" => StoreError::Throttled(d),
                "InternalServiceError"
                | "InternalServerError"
                | "ServiceUnavailable"
                | "InternalFailure" => StoreError::Unavailable(d),
                _ => StoreError::Invalid(d),
            };
            (Some(code), err)
        }
        SdkError::TimeoutError(_) => (None, StoreError::Unavailable("aws: timeout".into())),
        SdkError::DispatchFailure(_) => {
            (None, StoreError::Unavailable("aws: cannot connect".into()))
        }
        SdkError::ResponseError(_) => (
            None,
            StoreError::Unavailable("aws: unreadable answer".into()),
        ),
        SdkError::ConstructionFailure(_) => (
            None,
            StoreError::Invalid(
                "aws: request could not be built (region or credentials missing?)".into(),
            ),
        ),
        _ => (None, StoreError::Unavailable("aws: request failed".into())),
    }
}

/// Ids this process has seen held by the store. A write to one updates it in one call instead
/// of trying a create first (AWS's write quotas are tight: Secrets Manager's `PutSecretValue`
/// and `UpdateSecret` share 50/s, SSM's `PutParameter` has less). Only a hint: an id deleted
/// meanwhile by another replica costs Secrets Manager one failed update before the create,
/// and makes SSM's overwrite create the parameter, which is then tagged.
#[derive(Default)]
struct Known(std::sync::Mutex<std::collections::HashSet<String>>);

impl Known {
    /// Ids remembered at most (then forgotten all at once).
    const MAX: usize = 100_000;

    fn set(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn has(&self, id: &str) -> bool {
        self.set().contains(id)
    }

    fn add(&self, id: &str) {
        let mut set = self.set();
        if set.len() >= Self::MAX {
            set.clear();
        }
        set.insert(id.to_string());
    }

    fn remove(&self, id: &str) {
        self.set().remove(id);
    }

    /// After a read: held or not.
    fn saw(&self, id: &str, held: bool) {
        if held {
            self.add(id)
        } else {
            self.remove(id)
        }
    }
}

// === Secrets Manager ===

pub struct SecretsManagerStore {
    client: aws_sdk_secretsmanager::Client,
    tags: Vec<(String, String)>,
    known: Known,
}

impl SecretsManagerStore {
    pub fn new(sdk: &SdkConfig, tags: Vec<(String, String)>) -> SecretsManagerStore {
        SecretsManagerStore {
            client: aws_sdk_secretsmanager::Client::new(sdk),
            tags,
            known: Known::default(),
        }
    }

    /// `PutSecretValue`; the error keeps AWS's code (`ResourceNotFoundException`).
    async fn update(&self, id: &str, value: &str) -> Result<(), (Option<String>, StoreError)> {
        self.client
            .put_secret_value()
            .secret_id(id)
            .secret_string(value)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| map_err(&e))
    }
}

impl SecretsManagerStore {
    /// Creates the secret with its tags and description; `Ok(false)` when the name exists.
    async fn create_secret(&self, id: &str, value: &str) -> Result<bool, StoreError> {
        let tags: Vec<aws_sdk_secretsmanager::types::Tag> = self
            .tags
            .iter()
            .map(|(k, v)| {
                aws_sdk_secretsmanager::types::Tag::builder()
                    .key(k)
                    .value(v)
                    .build()
            })
            .collect();
        let created = self
            .client
            .create_secret()
            .name(id)
            .description(DESCRIPTION)
            .secret_string(value)
            .set_tags((!tags.is_empty()).then_some(tags))
            .send()
            .await;
        match created {
            Ok(_) => Ok(true),
            Err(e) => match map_err(&e) {
                (Some(c), _) if c == "ResourceExistsException" => Ok(false),
                (_, err) => Err(err),
            },
        }
    }
}

impl SecretStore for SecretsManagerStore {
    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            let got = match self.client.get_secret_value().secret_id(id).send().await {
                Ok(out) => Ok(out.secret_string().map(str::to_string)),
                Err(e) => match map_err(&e) {
                    (Some(c), _) if c == "ResourceNotFoundException" => Ok(None),
                    (_, err) => Err(err),
                },
            };
            if let Ok(v) = &got {
                self.known.saw(id, v.is_some());
            }
            got
        })
    }

    /// An id known to exist is updated in one call; otherwise `CreateSecret` (with the tags)
    /// comes first and an existing secret is then updated.
    fn put<'a>(&'a self, id: &'a str, value: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if self.known.has(id) {
                match self.update(id, value).await {
                    Ok(()) => return Ok(()),
                    Err((Some(c), _)) if c == "ResourceNotFoundException" => self.known.remove(id),
                    Err((_, e)) => return Err(e),
                }
            }
            if !self.create_secret(id, value).await? {
                self.update(id, value).await.map_err(|(_, e)| e)?;
            }
            self.known.add(id);
            Ok(())
        })
    }

    /// `CreateSecret`, which AWS refuses for a name that exists.
    fn create<'a>(&'a self, id: &'a str, value: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let created = self.create_secret(id, value).await?;
            self.known.add(id);
            Ok(created)
        })
    }

    fn delete<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.known.remove(id);
            match self
                .client
                .delete_secret()
                .secret_id(id)
                .force_delete_without_recovery(true)
                .send()
                .await
            {
                Ok(_) => Ok(()),
                Err(e) => match map_err(&e) {
                    (Some(c), _) if c == "ResourceNotFoundException" => Ok(()),
                    (_, err) => Err(err),
                },
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType};
            let filter = Filter::builder()
                .key(FilterNameStringType::Name)
                .values(prefix)
                .build();
            let filter = &filter;
            listing::collect("aws secrets manager", prefix, |token| async move {
                let page = self
                    .client
                    .list_secrets()
                    .filters(filter.clone())
                    .set_next_token(token)
                    .max_results(100)
                    .send()
                    .await
                    .map_err(|e| map_err(&e).1)?;
                let names = page.secret_list().iter().filter_map(|s| s.name());
                Ok((
                    names.map(str::to_string).collect(),
                    page.next_token().map(str::to_string),
                ))
            })
            .await
        })
    }

    fn health(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.client
                .list_secrets()
                .max_results(1)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| map_err(&e).1)
        })
    }

    fn name(&self) -> &'static str {
        "aws-secrets-manager"
    }
}

// === SSM Parameter Store ===

pub(crate) struct SsmStore {
    client: aws_sdk_ssm::Client,
    tags: Vec<(String, String)>,
    known: Known,
}

impl SsmStore {
    pub(crate) fn new(sdk: &SdkConfig, tags: Vec<(String, String)>) -> SsmStore {
        SsmStore {
            client: aws_sdk_ssm::Client::new(sdk),
            tags,
            known: Known::default(),
        }
    }

    fn ssm_tags(&self) -> Vec<aws_sdk_ssm::types::Tag> {
        self.tags
            .iter()
            .filter_map(|(k, v)| {
                aws_sdk_ssm::types::Tag::builder()
                    .key(k)
                    .value(v)
                    .build()
                    .ok()
            })
            .collect()
    }

    /// `PutParameter` with `Overwrite` (AWS refuses tags with it); its answer's version.
    async fn overwrite(&self, id: &str, value: &str) -> Result<i64, StoreError> {
        self.client
            .put_parameter()
            .name(id)
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .tier(tier_for(value))
            .overwrite(true)
            .send()
            .await
            .map(|out| out.version())
            .map_err(|e| map_err(&e).1)
    }
}

/// Values over 4 KB need the advanced tier.
fn tier_for(value: &str) -> aws_sdk_ssm::types::ParameterTier {
    if value.len() > 4096 {
        aws_sdk_ssm::types::ParameterTier::Advanced
    } else {
        aws_sdk_ssm::types::ParameterTier::Standard
    }
}

impl SsmStore {
    /// Creates the SecureString parameter with its tags; `Ok(false)` when the name exists.
    async fn create_parameter(&self, id: &str, value: &str) -> Result<bool, StoreError> {
        use aws_sdk_ssm::types::ParameterType;
        let tags = self.ssm_tags();
        let created = self
            .client
            .put_parameter()
            .name(id)
            .value(value)
            .r#type(ParameterType::SecureString)
            .tier(tier_for(value))
            .description(DESCRIPTION)
            .set_tags((!tags.is_empty()).then_some(tags))
            .send()
            .await;
        match created {
            Ok(_) => Ok(true),
            Err(e) => match map_err(&e) {
                (Some(c), _) if c == "ParameterAlreadyExists" => Ok(false),
                (_, err) => Err(err),
            },
        }
    }
}

impl SecretStore for SsmStore {
    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            match self
                .client
                .get_parameter()
                .name(id)
                .with_decryption(true)
                .send()
                .await
            {
                Ok(out) => Ok(out.parameter().and_then(|p| p.value()).map(str::to_string)),
                Err(e) => match map_err(&e) {
                    (Some(c), _) if c == "ParameterNotFound" => Ok(None),
                    (_, err) => Err(err),
                },
            }
            .inspect(|v| self.known.saw(id, v.is_some()))
        })
    }

    /// Create with tags; AWS refuses tags together with `Overwrite`, so an existing parameter
    /// is overwritten without them. An id known to exist is overwritten in one call; should it
    /// have been deleted meanwhile, the overwrite made it (version 1) and it is tagged then.
    fn put<'a>(&'a self, id: &'a str, value: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if self.known.has(id) {
                let version = self.overwrite(id, value).await?;
                let tags = self.ssm_tags();
                if version == 1 && !tags.is_empty() {
                    self.client
                        .add_tags_to_resource()
                        .resource_type(aws_sdk_ssm::types::ResourceTypeForTagging::Parameter)
                        .resource_id(id)
                        .set_tags(Some(tags))
                        .send()
                        .await
                        .map_err(|e| map_err(&e).1)?;
                }
                return Ok(());
            }
            if !self.create_parameter(id, value).await? {
                self.overwrite(id, value).await?;
            }
            self.known.add(id);
            Ok(())
        })
    }

    /// `PutParameter` without `Overwrite`, which AWS refuses for a name that exists.
    fn create<'a>(&'a self, id: &'a str, value: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let created = self.create_parameter(id, value).await?;
            self.known.add(id);
            Ok(created)
        })
    }

    fn delete<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.known.remove(id);
            match self.client.delete_parameter().name(id).send().await {
                Ok(_) => Ok(()),
                Err(e) => match map_err(&e) {
                    (Some(c), _) if c == "ParameterNotFound" => Ok(()),
                    (_, err) => Err(err),
                },
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            let folder = match prefix.rfind('/') {
                Some(0) | None => "/".to_string(),
                Some(i) => prefix[..i].to_string(),
            };
            let folder = &folder;
            listing::collect("aws ssm", prefix, |token| async move {
                let page = self
                    .client
                    .get_parameters_by_path()
                    .path(folder)
                    .recursive(true)
                    .with_decryption(false)
                    .set_next_token(token)
                    .max_results(10)
                    .send()
                    .await
                    .map_err(|e| map_err(&e).1)?;
                let names = page.parameters().iter().filter_map(|p| p.name());
                Ok((
                    names.map(str::to_string).collect(),
                    page.next_token().map(str::to_string),
                ))
            })
            .await
        })
    }

    fn health(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.client
                .describe_parameters()
                .max_results(1)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| map_err(&e).1)
        })
    }

    fn name(&self) -> &'static str {
        "aws-ssm"
    }
}
