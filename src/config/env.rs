//! Environment variables override the file (the contract's `[ENV]` names).

use super::raw::RawConfig;

fn env_nonempty(env: &dyn Fn(&str) -> Option<String>, key: &str) -> Option<String> {
    env(key).filter(|v| !v.is_empty())
}

/// Applies the environment's overrides; returns which keys they set, with the variable that
/// set each (the last one wins), so a problem with such a value can name its variable.
pub(super) fn apply_env(
    raw: &mut RawConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<(&'static str, &'static str)> {
    let from_env = std::cell::RefCell::new(Vec::new());
    let set = |slot: &mut String, key: &'static str, var: &'static str| {
        if let Some(v) = env_nonempty(env, var) {
            *slot = v;
            from_env.borrow_mut().push((key, var));
        }
    };
    set(&mut raw.server.listen, "server.listen", "OMSP_LISTEN");
    set(
        &mut raw.server.admin_listen,
        "server.admin_listen",
        "OMSP_ADMIN_LISTEN",
    );
    set(&mut raw.server.tls_cert, "server.tls_cert", "OMSP_TLS_CERT");
    set(&mut raw.server.tls_key, "server.tls_key", "OMSP_TLS_KEY");
    set(&mut raw.upstream.url, "upstream.url", "OMSP_UPSTREAM");
    set(
        &mut raw.upstream.service_token,
        "upstream.service_token",
        "OMSP_SERVICE_TOKEN",
    );
    set(&mut raw.rules.dir, "rules.dir", "OMSP_RULES_DIR");
    set(
        &mut raw.secrets_manager.provider,
        "secrets_manager.provider",
        "SECRET_MANAGER",
    );
    set(
        &mut raw.secrets_manager.cluster_name,
        "secrets_manager.cluster_name",
        "OPENMETADATA_CLUSTER_NAME",
    );
    set(
        &mut raw.secrets_manager.prefix,
        "secrets_manager.prefix",
        "SECRET_MANAGER_PREFIX",
    );
    if let Some(tags) = env_nonempty(env, "SECRET_MANAGER_TAGS") {
        from_env
            .borrow_mut()
            .push(("secrets_manager.tags", "SECRET_MANAGER_TAGS"));
        raw.secrets_manager.tags = tags
            .split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect();
    }
    let p = &mut raw.secrets_manager.parameters;
    set(
        &mut p.region,
        "secrets_manager.parameters.region",
        "OM_SM_REGION",
    );
    set(
        &mut p.access_key_id,
        "secrets_manager.parameters.access_key_id",
        "OM_SM_ACCESS_KEY_ID",
    );
    set(
        &mut p.secret_access_key,
        "secrets_manager.parameters.secret_access_key",
        "OM_SM_ACCESS_KEY",
    );
    set(
        &mut p.endpoint_url,
        "secrets_manager.parameters.endpoint_url",
        "AWS_ENDPOINT_URL",
    );
    set(
        &mut p.path,
        "secrets_manager.parameters.path",
        "OMSP_EMBEDDED_PATH",
    );
    // BAO_* wins over VAULT_* when both are set.
    set(
        &mut p.address,
        "secrets_manager.parameters.address",
        "VAULT_ADDR",
    );
    set(
        &mut p.address,
        "secrets_manager.parameters.address",
        "BAO_ADDR",
    );
    set(
        &mut p.token,
        "secrets_manager.parameters.token",
        "VAULT_TOKEN",
    );
    set(
        &mut p.token,
        "secrets_manager.parameters.token",
        "BAO_TOKEN",
    );
    // Azure Key Vault, Google Secret Manager and Kubernetes: OpenMetadata's own variables.
    set(
        &mut p.vault_name,
        "secrets_manager.parameters.vault_name",
        "OM_SM_VAULT_NAME",
    );
    set(
        &mut p.client_id,
        "secrets_manager.parameters.client_id",
        "OM_SM_CLIENT_ID",
    );
    set(
        &mut p.client_secret,
        "secrets_manager.parameters.client_secret",
        "OM_SM_CLIENT_SECRET",
    );
    set(
        &mut p.tenant_id,
        "secrets_manager.parameters.tenant_id",
        "OM_SM_TENANT_ID",
    );
    set(
        &mut p.authority_host,
        "secrets_manager.parameters.authority_host",
        "AZURE_AUTHORITY_HOST",
    );
    set(
        &mut p.project_id,
        "secrets_manager.parameters.project_id",
        "GOOGLE_CLOUD_PROJECT",
    );
    set(
        &mut p.project_id,
        "secrets_manager.parameters.project_id",
        "OM_SM_PROJECT_ID",
    );
    set(
        &mut p.namespace,
        "secrets_manager.parameters.namespace",
        "OM_SM_NAMESPACE",
    );
    set(
        &mut p.kubeconfig_path,
        "secrets_manager.parameters.kubeconfig_path",
        "OM_SM_KUBECONFIG_PATH",
    );
    if let Some(v) = env_nonempty(env, "OM_SM_IN_CLUSTER") {
        from_env
            .borrow_mut()
            .push(("secrets_manager.parameters.in_cluster", "OM_SM_IN_CLUSTER"));
        p.in_cluster = matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes");
    }
    set(&mut raw.fernet.key, "fernet.key", "FERNET_KEY");
    set(&mut raw.auth.jwks_url, "auth.jwks_url", "OMSP_JWKS_URL");
    set(&mut raw.logging.format, "logging.format", "OMSP_LOG_FORMAT");
    set(&mut raw.logging.level, "logging.level", "OMSP_LOG_LEVEL");
    from_env.into_inner()
}

pub(super) fn opt(s: String) -> Option<String> {
    let t = s.trim();
    if t.is_empty() {
        None
    } else {
        Some(t.to_string())
    }
}
