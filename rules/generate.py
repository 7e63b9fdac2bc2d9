#!/usr/bin/env python3
"""Generates the shipped rule files from OpenMetadata's secret-field inventory.

    python3 rules/generate.py [INVENTORY_JSON] [OUT_DIR]

Defaults: ../shared/data/openmetadata-secret-fields.json and rules/. Re-run it when a newer
inventory arrives; the files it writes are the rules the gateway ships. Each secret path keeps
the connection types (inventory groups) it was found under, for `explain`.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
INVENTORY = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "shared", "data", "openmetadata-secret-fields.json")
OUT = sys.argv[2] if len(sys.argv) > 2 else HERE

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
    ]),
}

FILE_NAMES = {"user (bot user)": "botUser"}


def main():
    inv = json.load(open(INVENTORY))
    collections = inv["_meta"]["collections"]
    only_in_entity = inv["_meta"].get("createVsEntityDiff", {})
    written = []
    for kind, (root, base, net, extra) in KINDS.items():
        groups = inv.get(kind, {})
        secrets = {}
        types = sorted(g for g in groups if g != "_common")
        for group, entries in groups.items():
            for e in entries:
                s = secrets.setdefault(e["path"], {"path": e["path"], "types": []})
                if group != "_common":
                    s["types"].append(group)
        for p in only_in_entity.get(kind, {}).get("onlyInEntity", []):
            secrets.setdefault(p, {"path": p, "types": []})
        rule = {
            "kind": FILE_NAMES.get(kind, kind),
            "inventory_kind": kind,
            "collection": collections[kind],
            "root": root + "/{name}",
            "field_base": base,
            "safety_net": net,
            "known_types": types,
            "routes": ENTITY_ROUTES + extra,
            "secrets": [secrets[p] for p in sorted(secrets)],
        }
        name = FILE_NAMES.get(kind, kind) + ".json"
        with open(os.path.join(OUT, name), "w") as f:
            json.dump(rule, f, indent=1, sort_keys=False)
            f.write("\n")
        written.append((name, len(rule["secrets"])))
    for name, n in written:
        print(f"{name}: {n} secret paths")


if __name__ == "__main__":
    main()
