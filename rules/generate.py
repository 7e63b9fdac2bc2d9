#!/usr/bin/env python3
"""Generates the shipped rule files from OpenMetadata's secret-field inventories.

    python3 rules/generate.py [--data-dir DIR] [--out DIR] [INVENTORY_JSON ...]

With no INVENTORY_JSON, reads every supported version's inventory from the data directory
(`--data-dir`, else $OMSP_INVENTORY_DIR, else ../shared/data next to the repository):
DEFAULT_INVENTORIES below. The rules are the union of the inventories, so that one rule set
serves every supported OpenMetadata version: a path that is a secret in any of them is a secret
path; each path keeps the connection types (inventory groups) it was found under in any of
them, for `explain`; `known_types` is the union of the types. The output does not depend on
the order of the arguments, and a re-run on the same inventories writes the same bytes.

To support the next OpenMetadata version: add its inventory to DEFAULT_INVENTORIES (or pass
every inventory on the command line), re-run, and commit the rule files it writes.
"""
import argparse
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# One inventory per supported OpenMetadata version (file names inside the data directory).
DEFAULT_INVENTORIES = [
    "openmetadata-secret-fields-1.9.17.6.json",
    "openmetadata-secret-fields-1.13.6.3.json",
    "openmetadata-secret-fields.json",  # 2.0.7
]

ENTITY_ROUTES = [
    {"methods": ["GET"], "path": "", "op": "read"},
    {"methods": ["POST", "PUT"], "path": "", "op": "create"},
    {"methods": ["GET"], "path": "/{id}", "op": "read"},
    {"methods": ["PATCH"], "path": "/{id}", "op": "patch"},
    {"methods": ["DELETE"], "path": "/{id}", "op": "delete"},
    {"methods": ["GET"], "path": "/name/{fqn}", "op": "read"},
    {"methods": ["PATCH"], "path": "/name/{fqn}", "op": "patch"},
    {"methods": ["DELETE"], "path": "/name/{fqn}", "op": "delete"},
    {"methods": ["GET"], "path": "/{id}/versions", "op": "read"},
    {"methods": ["GET"], "path": "/{id}/versions/{version}", "op": "read"},
    {"methods": ["PUT"], "path": "/restore", "op": "action"},
]

# Routes every ruled collection has besides the entity routes (OpenMetadata 2.0's EntityResource);
# listed first, so `/name/{fqn}/export` is not read as an entity named `<fqn>/export`.
COLLECTION_ROUTES = [
    {"methods": ["PUT"], "path": "/name/{name}/import", "op": "import"},
    {"methods": ["PUT"], "path": "/name/{name}/importAsync", "op": "import"},
    {"methods": ["GET"], "path": "/name/{name}/export", "op": "export"},
    {"methods": ["GET"], "path": "/name/{name}/exportAsync", "op": "export"},
    {"methods": ["DELETE"], "path": "/async/{id}", "op": "delete"},
    {"methods": ["DELETE"], "path": "/name/{fqn}/async", "op": "delete"},
]

# Service collections: the `fields` the gateway asks for when it reads an entity to patch
# (OpenMetadata's resource FIELDS); a server that refuses them is asked again without.
SERVICE_FIELDS = "pipelines,owners,tags,domains,followers"
KIND_FIELDS = {
    "pipelineService": "pipelines,owners,domains,followers",
    "metadataService": "pipelines,owners,tags,followers",
}

# Entity-kind knowledge beyond roots and paths, read by the gateway as typed rule keys.
KIND_EXTRAS = {
    "workflow": {"migrate": False, "masks_from_service": True},
    # Ingestion pipelines are named per service: the second of one name under another
    # service keeps its secrets under its own root (README, "Secret ids").
    "ingestionPipeline": {"scope": {"ref": "service", "root": "ingestion/{scope}/{name}"}},
    "user (bot user)": {
        "list_query": "isBot=true",
        "credentials_route": "/auth-mechanism/{id}",
        "permission_resource": "user",
    },
}

KINDS = {
    # kind: (root type, field base, safety-net subtrees, extra routes)
    "databaseService": ("database", "$.connection.config", ["$.connection.config"], []),
    "dashboardService": ("dashboard", "$.connection.config", ["$.connection.config"], []),
    "messagingService": ("messaging", "$.connection.config", ["$.connection.config"], []),
    "pipelineService": ("pipeline", "$.connection.config", ["$.connection.config"], []),
    "mlmodelService": ("mlmodel", "$.connection.config", ["$.connection.config"], []),
    "storageService": ("storage", "$.connection.config", ["$.connection.config"], []),
    "searchService": ("search", "$.connection.config", ["$.connection.config"], []),
    "metadataService": ("metadata", "$.connection.config", ["$.connection.config"], []),
    "apiService": ("api", "$.connection.config", ["$.connection.config"], []),
    "driveService": ("drive", "$.connection.config", ["$.connection.config"], []),
    "llmService": ("llm", "$.connection.config", ["$.connection.config"], []),
    "mcpService": ("mcp", "$.connection.config", ["$.connection.config"], []),
    "securityService": ("security", "$.connection.config", ["$.connection.config"], []),
    "ingestionPipeline": ("pipeline", "$", ["$.sourceConfig.config", "$.openMetadataServerConnection"], [
        {"methods": ["POST"], "path": "/deploy/{id}", "op": "action"},
        {"methods": ["POST"], "path": "/trigger/{id}", "op": "action"},
        {"methods": ["POST"], "path": "/toggleIngestion/{id}", "op": "action"},
        {"methods": ["POST"], "path": "/kill/{id}", "op": "action"},
    ]),
    "workflow": ("workflow", "$", ["$.request.connection.config", "$.openMetadataServerConnection"], [
        {"methods": ["POST"], "path": "/trigger/{id}", "op": "action"},
    ]),
    "user (bot user)": ("bot", "$.authenticationMechanism", ["$.authenticationMechanism.config"], [
        {"methods": ["GET"], "path": "/token/{id}", "op": "read", "response_at": "$.authenticationMechanism.config"},
        {"methods": ["GET"], "path": "/auth-mechanism/{id}", "op": "read", "response_at": "$.authenticationMechanism"},
        {"methods": ["PUT"], "path": "/generateToken/{id}", "op": "action", "response_at": "$.authenticationMechanism.config"},
        {"methods": ["PUT"], "path": "/revokeToken", "op": "action", "response_at": "$.authenticationMechanism.config"},
        # A person's own credentials: the password OpenMetadata hashes, the tokens it issues to
        # the caller. Not connection secrets: forwarded as they are, both ways.
        {"methods": ["POST"], "path": "/login", "op": "forward"},
        {"methods": ["POST"], "path": "/signup", "op": "forward"},
        {"methods": ["POST"], "path": "/refresh", "op": "forward"},
        {"methods": ["POST"], "path": "/logout", "op": "forward"},
        {"methods": ["POST"], "path": "/checkEmailInUse", "op": "forward"},
        {"methods": ["POST"], "path": "/generatePasswordResetLink", "op": "forward"},
        {"methods": ["POST"], "path": "/password/reset", "op": "forward"},
        {"methods": ["PUT"], "path": "/changePassword", "op": "forward"},
        {"methods": ["GET"], "path": "/registrationConfirmation", "op": "forward"},
        {"methods": ["GET"], "path": "/resendRegistrationToken", "op": "forward"},
        {"methods": ["GET", "PUT"], "path": "/security/token", "op": "forward"},
        {"methods": ["PUT"], "path": "/security/token/revoke", "op": "forward"},
    ]),
}

FILE_NAMES = {"user (bot user)": "botUser"}

# Inventory kinds that hold no secret and get no rule file (bots keep theirs on their user).
NO_RULE = {"bot"}


class Inventory:
    """One version's inventory: its ingestion package version and its secret paths."""

    def __init__(self, path, data):
        self.path = path
        self.data = data
        self.meta = data["_meta"]
        self.version = package_version(self.meta.get("source", ""), path)

    def kinds(self):
        return [k for k in self.data if k != "_meta"]

    def groups(self, kind):
        return self.data.get(kind, {})

    def only_in_entity(self, kind):
        return self.meta.get("createVsEntityDiff", {}).get(kind, {}).get("onlyInEntity", [])


def package_version(source, path):
    """`2.0.7.0` from `openmetadata-ingestion 2.0.7.0 generated ...`."""
    m = re.search(r"openmetadata-ingestion (\d+(?:\.\d+)*)", source)
    if not m:
        sys.exit(f"{path}: _meta.source names no openmetadata-ingestion version: {source!r}")
    return m.group(1)


def version_key(version):
    return tuple(int(p) for p in version.split("."))


def server_version(package):
    """The OpenMetadata server line an ingestion package belongs to: `1.9.17.6` -> `1.9`."""
    return ".".join(package.split(".")[:2])


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("inventories", nargs="*", metavar="INVENTORY_JSON",
                   help="inventory files (default: DEFAULT_INVENTORIES in the data directory)")
    p.add_argument("--data-dir", default=os.environ.get("OMSP_INVENTORY_DIR")
                   or os.path.normpath(os.path.join(REPO, "..", "shared", "data")),
                   help="where the default inventories are (env OMSP_INVENTORY_DIR)")
    p.add_argument("--out", default=HERE, help="where the rule files go (default: rules/)")
    return p.parse_args(argv)


def load_inventories(paths):
    """Every inventory, oldest version first (the order of the arguments does not matter)."""
    invs = []
    for path in paths:
        try:
            with open(path) as f:
                invs.append(Inventory(path, json.load(f)))
        except OSError as e:
            sys.exit(f"{path}: {e.strerror} (inventories elsewhere: --data-dir DIR or OMSP_INVENTORY_DIR)")
    invs.sort(key=lambda inv: version_key(inv.version))
    seen = set()
    for inv in invs:
        if inv.version in seen:
            sys.exit(f"{inv.path}: a second inventory for openmetadata-ingestion {inv.version}")
        seen.add(inv.version)
    return invs


def check_kinds(invs):
    """Refuses an inventory kind with secrets that no rule would cover (a new kind needs a
    KINDS entry: its root, field base, safety net and routes)."""
    for inv in invs:
        for kind in inv.kinds():
            has_paths = any(inv.groups(kind).values())
            if kind not in KINDS and kind not in NO_RULE and has_paths:
                sys.exit(f"{inv.path}: kind {kind!r} has secret paths but no KINDS entry")
            if kind in NO_RULE and has_paths:
                sys.exit(f"{inv.path}: kind {kind!r} now has secret paths; give it a KINDS entry")


def collection(kind, invs):
    """The kind's REST collection; every inventory that names it must agree."""
    names = {inv.meta["collections"][kind] for inv in invs if kind in inv.meta["collections"]}
    if len(names) != 1:
        sys.exit(f"kind {kind!r}: the inventories name collections {sorted(names)}")
    return names.pop()


def type_order(types):
    """Types in alphabetical order, ignoring case (as the inventories list their groups)."""
    return sorted(types, key=lambda t: (t.casefold(), t))


def known_types(kind, invs):
    """Every connection type (inventory group) of the kind in any version."""
    return sorted({g for inv in invs for g in inv.groups(kind) if g != "_common"})


def secret_paths(kind, invs):
    """The union of the kind's secret paths, each with every type it was found under, sorted."""
    types = {}
    for inv in invs:
        for group, entries in inv.groups(kind).items():
            for e in entries:
                found_under = types.setdefault(e["path"], set())
                if group != "_common":
                    found_under.add(group)
        for p in inv.only_in_entity(kind):
            types.setdefault(p, set())
    return [{"path": p, "types": type_order(types[p])} for p in sorted(types)]


def description(invs):
    servers = ", ".join(server_version(inv.version) for inv in invs)
    packages = ", ".join(inv.version for inv in invs)
    return (f"Generated by rules/generate.py for OpenMetadata {servers} "
            f"(inventories of openmetadata-ingestion {packages}); edits are overwritten by a re-run.")


def kind_keys(kind, base):
    """Typed per-kind keys: migration, listing, permission resource, entity fields."""
    keys = dict(KIND_EXTRAS.get(kind, {}))
    if base == "$.connection.config":
        keys["entity_fields"] = KIND_FIELDS.get(kind, SERVICE_FIELDS)
    return keys


def build_rule(kind, invs):
    root, base, net, extra = KINDS[kind]
    rule = {
        "kind": FILE_NAMES.get(kind, kind),
        "inventory_kind": kind,
        "description": description(invs),
        "collection": collection(kind, invs),
        "root": root + "/{name}",
    }
    rule.update(kind_keys(kind, base))
    rule.update({
        "field_base": base,
        "safety_net": net,
        "known_types": known_types(kind, invs),
        "routes": COLLECTION_ROUTES + extra + ENTITY_ROUTES,
        "secrets": secret_paths(kind, invs),
    })
    return rule


# Secrets OpenMetadata keeps outside connections (issue 15): the server needs them in clear (it
# signs webhooks, sends mail, binds to LDAP), so they stay upstream: `mask_only` rules mask
# them on reads and put back what a mask sent in a write stands for. No inventory lists them
# (they are not `format: password` in the ingestion package); the paths below are read from
# OpenMetadata 2.0.7's JSON schemas (entity/events/webhook.json and its authentication types,
# configuration/{smtpSettings,slackAppConfiguration,securityConfiguration,ldapConfiguration,
# ldapTrustStoreConfig/customTrustManagerConfig}.json, governance/workflows/.../sinkConfig/
# {git,webhook}SinkConfig.json, entity/applications/app.json).
MASK_ONLY_DESCRIPTION = ("Generated by rules/generate.py from OpenMetadata 2.0.7's JSON schemas "
                         "(mask_only: values stay upstream, masked on reads); edits are overwritten by a re-run.")

DESTINATION = "$.destinations[*].config"
SINK = "$.nodes[*].config.sinkConfig"
MASK_ONLY_KINDS = {
    "eventSubscription": {
        "collection": "/api/v1/events/subscriptions",
        "shape": ["$.destinations"],
        "net_markers": ["destinations"],
        "safety_net": ["$.destinations"],
        "current_route": "/name/{name}",
        "routes": [
            {"methods": ["GET"], "path": "/{id}/destinations", "op": "read", "response_at": "$.destinations"},
            # OpenMetadata's by-id route (EventSubscriptionResource): a bare array of destinations.
            {"methods": ["GET"], "path": "/id/{id}/destinations", "op": "read", "response_at": "$.destinations"},
            {"methods": ["GET"], "path": "/name/{name}/destinations", "op": "read", "response_at": "$.destinations"},
        ] + ENTITY_ROUTES,
        "secrets": [
            (f"{DESTINATION}.secretKey", ["Webhook"]),
            (f"{DESTINATION}.authType.secretKey", ["Webhook"]),
            (f"{DESTINATION}.authType.clientSecret", ["Webhook"]),
            (f"{DESTINATION}.headers.*", ["Webhook"]),
            (f"{DESTINATION}.endpoint", ["Slack", "MsTeams", "GChat", "Webhook"]),
        ],
    },
    "systemSettings": {
        "collection": "/api/v1/system/settings",
        "shape": ["$.config_value"],
        "net_markers": ["config_value"],
        "safety_net": ["$.config_value"],
        "current_route": "/{config_type}",
        "routes": [
            {"methods": ["GET"], "path": "", "op": "read"},
            {"methods": ["PUT"], "path": "", "op": "create"},
            {"methods": ["PUT"], "path": "/reset/{name}", "op": "action"},
            {"methods": ["GET"], "path": "/{name}", "op": "read"},
            {"methods": ["PATCH"], "path": "/{name}", "op": "patch", "body_at": "$.config_value"},
        ],
        "secrets": [
            ("$.config_value.password", ["emailConfiguration"]),
            ("$.config_value.clientSecret", ["slackAppConfiguration"]),
            ("$.config_value.signingSecret", ["slackAppConfiguration"]),
        ],
    },
    "securityConfig": {
        "collection": "/api/v1/system/security/config",
        "shape": ["$.authenticationConfiguration"],
        "net_markers": ["authenticationConfiguration"],
        "safety_net": ["$.authenticationConfiguration"],
        "current_route": "",
        "routes": [
            {"methods": ["GET"], "path": "", "op": "read"},
            {"methods": ["PUT"], "path": "", "op": "create"},
            {"methods": ["PATCH"], "path": "", "op": "patch"},
        ],
        "secrets": [
            ("$.authenticationConfiguration.oidcConfiguration.secret", ["oidc"]),
            ("$.authenticationConfiguration.ldapConfiguration.dnAdminPassword", ["ldap"]),
            ("$.authenticationConfiguration.ldapConfiguration.trustStoreConfig.customTrustManagerConfig.trustStoreFilePassword", ["ldap"]),
            ("$.authenticationConfiguration.samlConfiguration.sp.spPrivateKey", ["saml"]),
            ("$.authenticationConfiguration.samlConfiguration.security.keyStorePassword", ["saml"]),
        ],
    },
    "workflowDefinition": {
        "collection": "/api/v1/governance/workflowDefinitions",
        "shape": ["$.nodes"],
        "net_markers": ["sinkConfig"],
        "safety_net": ["$.nodes"],
        "current_route": "/name/{name}",
        "routes": ENTITY_ROUTES,
        "secrets": [
            (f"{SINK}.credentials.token", ["git"]),
            (f"{SINK}.credentials.privateKey", ["git"]),
            (f"{SINK}.credentials.passphrase", ["git"]),
            (f"{SINK}.authentication.token", ["webhook", "httpEndpoint"]),
            (f"{SINK}.authentication.password", ["webhook", "httpEndpoint"]),
            (f"{SINK}.authentication.apiKey", ["webhook", "httpEndpoint"]),
        ],
    },
    "app": {
        "collection": "/api/v1/apps",
        "shape": ["$.appConfiguration"],
        "net_markers": ["appConfiguration"],
        "safety_net": ["$.appConfiguration"],
        "current_route": "/name/{name}",
        "routes": [
            {"methods": ["POST"], "path": "/trigger/{name}", "op": "action", "body_at": "$.appConfiguration"},
            # Run logs may be text: read like a CSV export (UTF-8, no reference marker).
            {"methods": ["GET"], "path": "/name/{name}/logs", "op": "export"},
        ] + ENTITY_ROUTES,
        "secrets": [
            ("$.appConfiguration.connectionConfig.password", []),
            ("$.appConfiguration.connectionConfig.privateKey", []),
            ("$.appConfiguration.connectionConfig.snowflakePrivatekeyPassphrase", []),
            ("$.appConfiguration.userToken", ["SlackApplication"]),
            ("$.appConfiguration.botToken", ["SlackApplication"]),
        ],
    },
}


def build_mask_only_rule(kind):
    spec = MASK_ONLY_KINDS[kind]
    return {
        "kind": kind,
        "mode": "mask_only",
        "description": MASK_ONLY_DESCRIPTION,
        "collection": spec["collection"],
        "field_base": "$",
        "shape": spec["shape"],
        "net_markers": spec["net_markers"],
        "safety_net": spec["safety_net"],
        "current_route": spec["current_route"],
        "routes": spec["routes"],
        "secrets": [{"path": p, "types": t} for p, t in spec["secrets"]],
    }


def write_rule(out, rule):
    name = rule["kind"] + ".json"
    with open(os.path.join(out, name), "w") as f:
        json.dump(rule, f, indent=1, sort_keys=False)
        f.write("\n")
    return name


def main(argv):
    args = parse_args(argv)
    paths = args.inventories or [os.path.join(args.data_dir, n) for n in DEFAULT_INVENTORIES]
    invs = load_inventories(paths)
    check_kinds(invs)
    for kind in KINDS:
        if not any(kind in inv.meta["collections"] for inv in invs):
            print(f"{kind}: in no inventory, not written")
            continue
        rule = build_rule(kind, invs)
        name = write_rule(args.out, rule)
        print(f"{name}: {len(rule['secrets'])} secret paths, {len(rule['known_types'])} types")
    for kind in MASK_ONLY_KINDS:
        rule = build_mask_only_rule(kind)
        name = write_rule(args.out, rule)
        print(f"{name}: {len(rule['secrets'])} mask_only paths")


if __name__ == "__main__":
    main(sys.argv[1:])
