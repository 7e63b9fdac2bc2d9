#!/usr/bin/env python3
"""Validates the vendor emulators (tests/support/vendor_emulators.rs) with each vendor's own
Python client, so the Rust stores are tested against the vendors' shapes and not against our
own assumptions: azure-keyvault-secrets (static token credential, over HTTPS as the SDK
insists), google-cloud-secret-manager (REST transport, anonymous credentials, custom
endpoint; every answer is also parsed strictly against the API's protobuf messages, so a
misspelt field fails here instead of being ignored), and the kubernetes client. Each does put,
get, list, update and delete, plus the error cases the stores rely on.

Usage: vendor_sdk_check.py PATH/TO/examples/vendor-emulators
Prints one line per check and a closing "N passed, N failed"; exits 1 on any failure.
"""

import base64
import json
import subprocess
import sys
import tempfile
import time
import traceback

RESULTS = []


def check(name):
    def wrap(fn):
        def run(info):
            try:
                fn(info)
                RESULTS.append((name, None))
                print(f"ok   {name}")
            except Exception:  # noqa: BLE001 - every failure is reported, then counted
                RESULTS.append((name, traceback.format_exc()))
                print(f"FAIL {name}\n{traceback.format_exc()}")

        return run

    return wrap


def raises(exc_type, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except exc_type as e:
        return e
    raise AssertionError(f"expected {exc_type.__name__}")


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c ^= b
        for _ in range(8):
            c = (0x82F63B78 ^ (c >> 1)) if c & 1 else (c >> 1)
    return c ^ 0xFFFFFFFF


# === Azure Key Vault ===


def azure_client(info):
    from azure.core.credentials import AccessToken
    from azure.keyvault.secrets import SecretClient

    class StaticToken:
        def get_token(self, *scopes, **kwargs):
            return AccessToken(info["token"], int(time.time()) + 3600)

    return SecretClient(
        info["azure"],
        StaticToken(),
        verify_challenge_resource=False,
        connection_verify=info["azure_ca"],
        api_version="7.4",
        retry_total=0,
    )


@check("azure: set, get, versions, update properties")
def azure_put_get_update(info):
    c = azure_client(info)
    first = c.set_secret("sdk-a", "first", tags={"omsp-secret-id": "/sdk/a", "team": "data"})
    assert first.value == "first" and first.name == "sdk-a"
    assert first.properties.version and first.properties.created_on is not None
    assert first.properties.tags == {"omsp-secret-id": "/sdk/a", "team": "data"}
    assert first.properties.recovery_level == "Recoverable+Purgeable"
    got = c.get_secret("sdk-a")
    assert got.value == "first" and got.properties.version == first.properties.version
    second = c.set_secret("sdk-a", "second ✓ \"quoted\"")
    assert second.properties.version != first.properties.version
    assert c.get_secret("sdk-a").value == "second ✓ \"quoted\""
    assert c.get_secret("sdk-a", first.properties.version).value == "first"
    assert len(list(c.list_properties_of_secret_versions("sdk-a"))) == 2
    props = c.update_secret_properties("sdk-a", tags={"x": "y"}, content_type="text/plain")
    assert props.tags == {"x": "y"} and props.content_type == "text/plain"


@check("azure: list pages through nextLink")
def azure_list(info):
    c = azure_client(info)
    for i in range(30):
        c.set_secret(f"sdk-page-{i:02d}", "v", tags={"n": str(i)})
    names = [p.name for p in c.list_properties_of_secrets()]
    assert len([n for n in names if n.startswith("sdk-page-")]) == 30, names
    assert all(p.tags for p in c.list_properties_of_secrets() if p.name.startswith("sdk-page-"))


@check("azure: not found, bad name, oversized value")
def azure_errors(info):
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    c = azure_client(info)
    raises(ResourceNotFoundError, c.get_secret, "sdk-absent")
    e = raises(HttpResponseError, c.set_secret, "bad_name", "v")
    assert e.status_code == 400
    e = raises(HttpResponseError, c.set_secret, "sdk-big", "x" * (26 * 1024))
    assert e.status_code == 400


@check("azure: soft delete, recover, delete, purge")
def azure_delete(info):
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

    c = azure_client(info)
    c.set_secret("sdk-del", "keep me")
    deleted = c.begin_delete_secret("sdk-del").result()
    assert deleted.recovery_id and deleted.deleted_date and deleted.scheduled_purge_date
    assert c.get_deleted_secret("sdk-del").name == "sdk-del"
    raises(ResourceNotFoundError, c.get_secret, "sdk-del")
    raises(ResourceExistsError, c.set_secret, "sdk-del", "reuse")
    c.begin_recover_deleted_secret("sdk-del").result()
    assert c.get_secret("sdk-del").value == "keep me"
    c.begin_delete_secret("sdk-del").wait()
    c.purge_deleted_secret("sdk-del")
    raises(ResourceNotFoundError, c.get_deleted_secret, "sdk-del")
    assert c.set_secret("sdk-del", "fresh").value == "fresh"


# === Google Secret Manager ===


def gcp_client(info, seen):
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import secretmanager

    c = secretmanager.SecretManagerServiceClient(
        credentials=AnonymousCredentials(),
        transport="rest",
        client_options=ClientOptions(api_endpoint=info["gcp"]),
    )
    c._transport._session.hooks["response"].append(lambda r, *a, **k: seen.append(r))
    return c


def gcp_strict(seen):
    """Parses every successful answer strictly (unknown fields are errors) as its message."""
    from google.cloud import secretmanager
    from google.protobuf import empty_pb2, json_format

    assert len(seen) > 3, "the response hook saw no answers"
    for r in seen:
        if r.status_code >= 300:
            continue
        path = r.request.path_url.split("?")[0]
        method = r.request.method
        if path.endswith(":access"):
            msg = secretmanager.AccessSecretVersionResponse.pb()()
        elif path.endswith("/versions") and method == "GET":
            msg = secretmanager.ListSecretVersionsResponse.pb()()
        elif "/versions/" in path or path.endswith(":addVersion"):
            msg = secretmanager.SecretVersion.pb()()
        elif path.endswith("/secrets") and method == "GET":
            msg = secretmanager.ListSecretsResponse.pb()()
        elif method == "DELETE":
            msg = empty_pb2.Empty()
        else:
            msg = secretmanager.Secret.pb()()
        json_format.Parse(r.text, msg, ignore_unknown_fields=False)
    seen.clear()


@check("gcp: create, add versions, access with CRC32C, get, update labels")
def gcp_put_get_update(info):
    from google.cloud import secretmanager

    seen = []
    c = gcp_client(info, seen)
    parent = "projects/sdk-check"
    s = c.create_secret(
        request={
            "parent": parent,
            "secret_id": "sdk_a",
            "secret": {
                "replication": {"automatic": {}},
                "labels": {"team": "data"},
                "annotations": {"omsp-secret-id": "/sdk/a"},
            },
        }
    )
    assert s.name == f"{parent}/secrets/sdk_a", s.name
    assert s.labels["team"] == "data" and s.annotations["omsp-secret-id"] == "/sdk/a"
    assert s.create_time is not None
    v1 = c.add_secret_version(
        request={"parent": s.name, "payload": {"data": b"first", "data_crc32c": crc32c(b"first")}}
    )
    assert v1.name.endswith("/versions/1") and v1.state == secretmanager.SecretVersion.State.ENABLED
    assert v1.client_specified_payload_checksum
    r = c.access_secret_version(request={"name": f"{s.name}/versions/latest"})
    assert r.payload.data == b"first" and r.payload.data_crc32c == crc32c(b"first")
    value = "second ✓".encode()
    c.add_secret_version(request={"parent": s.name, "payload": {"data": value, "data_crc32c": crc32c(value)}})
    r = c.access_secret_version(request={"name": f"{s.name}/versions/latest"})
    assert r.payload.data == value and r.name.endswith("/versions/2")
    assert c.access_secret_version(request={"name": f"{s.name}/versions/1"}).payload.data == b"first"
    assert len(list(c.list_secret_versions(request={"parent": s.name}))) == 2
    got = c.get_secret(request={"name": s.name})
    assert got.annotations["omsp-secret-id"] == "/sdk/a"
    upd = c.update_secret(
        request={"secret": {"name": s.name, "labels": {"env": "test"}}, "update_mask": {"paths": ["labels"]}}
    )
    assert dict(upd.labels) == {"env": "test"}
    gcp_strict(seen)


@check("gcp: list pages, errors, disable and delete")
def gcp_list_errors_delete(info):
    from google.api_core import exceptions

    seen = []
    c = gcp_client(info, seen)
    parent = "projects/sdk-list"
    for i in range(5):
        c.create_secret(
            request={"parent": parent, "secret_id": f"s{i}", "secret": {"replication": {"automatic": {}}}}
        )
    names = [s.name for s in c.list_secrets(request={"parent": parent, "page_size": 2})]
    assert len(names) == 5, names
    raises(
        exceptions.Conflict,
        c.create_secret,
        request={"parent": parent, "secret_id": "s0", "secret": {"replication": {"automatic": {}}}},
    )
    raises(exceptions.NotFound, c.access_secret_version, request={"name": f"{parent}/secrets/s0/versions/latest"})
    raises(exceptions.NotFound, c.get_secret, request={"name": f"{parent}/secrets/absent"})
    e = raises(
        exceptions.BadRequest,
        c.add_secret_version,
        request={"parent": f"{parent}/secrets/s0", "payload": {"data": b"x", "data_crc32c": crc32c(b"y")}},
    )
    assert "Checksum mismatch" in str(e), e
    c.add_secret_version(request={"parent": f"{parent}/secrets/s0", "payload": {"data": b"x"}})
    c.disable_secret_version(request={"name": f"{parent}/secrets/s0/versions/1"})
    e = raises(
        exceptions.BadRequest,
        c.access_secret_version,
        request={"name": f"{parent}/secrets/s0/versions/latest"},
    )
    assert "DISABLED" in str(e), e
    c.delete_secret(request={"name": f"{parent}/secrets/s0"})
    raises(exceptions.NotFound, c.get_secret, request={"name": f"{parent}/secrets/s0"})
    gcp_strict(seen)


# === Kubernetes ===


def kube_api(info, token=None):
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = info["kube"]
    cfg.ssl_ca_cert = info["kube_ca"]
    cfg.api_key = {"authorization": token if token is not None else info["token"]}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    return client.CoreV1Api(client.ApiClient(cfg))


def b64(s):
    return base64.b64encode(s.encode()).decode()


LABELS = {"app": "openmetadata", "managed-by": "openmetadata-secrets-manager"}


@check("kubernetes: create, read, replace, conflict, patch")
def kube_put_get_update(info):
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = kube_api(info)
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name="sdk-a", labels=LABELS, annotations={"omsp-secret-id": "/sdk/a"}),
        data={"value": b64("first")},
        type="Opaque",
    )
    created = api.create_namespaced_secret("default", body)
    assert created.metadata.uid and created.metadata.resource_version and created.metadata.creation_timestamp
    assert created.kind == "Secret" and created.type == "Opaque"
    got = api.read_namespaced_secret("sdk-a", "default")
    assert base64.b64decode(got.data["value"]).decode() == "first"
    assert got.metadata.annotations["omsp-secret-id"] == "/sdk/a"
    stale = got.metadata.resource_version
    got.data["value"] = b64("second")
    replaced = api.replace_namespaced_secret("sdk-a", "default", got)
    assert replaced.metadata.resource_version != stale
    got.metadata.resource_version = stale
    e = raises(ApiException, api.replace_namespaced_secret, "sdk-a", "default", got)
    assert e.status == 409 and json.loads(e.body)["reason"] == "Conflict"
    patched = api.patch_namespaced_secret("sdk-a", "default", {"data": {"value": b64("third")}})
    assert base64.b64decode(patched.data["value"]).decode() == "third"
    e = raises(ApiException, api.create_namespaced_secret, "default", body)
    assert e.status == 409 and json.loads(e.body)["reason"] == "AlreadyExists"


@check("kubernetes: list with label selector and continue, delete, errors")
def kube_list_delete(info):
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = kube_api(info)
    for i in range(5):
        api.create_namespaced_secret(
            "paging",
            client.V1Secret(metadata=client.V1ObjectMeta(name=f"s{i}", labels=LABELS), data={"value": b64("v")}),
        )
    api.create_namespaced_secret("paging", client.V1Secret(metadata=client.V1ObjectMeta(name="unlabelled")))
    names, cont = [], None
    while True:
        page = api.list_namespaced_secret(
            "paging", label_selector="app=openmetadata,managed-by=openmetadata-secrets-manager", limit=2, _continue=cont
        )
        names += [s.metadata.name for s in page.items]
        cont = page.metadata._continue
        if not cont:
            break
    assert sorted(names) == [f"s{i}" for i in range(5)], names
    status = api.delete_namespaced_secret("s0", "paging")
    assert status["status"] == "Success", status
    e = raises(ApiException, api.read_namespaced_secret, "s0", "paging")
    assert e.status == 404 and json.loads(e.body)["reason"] == "NotFound"
    e = raises(ApiException, api.delete_namespaced_secret, "s0", "paging")
    assert e.status == 404
    e = raises(
        ApiException,
        api.create_namespaced_secret,
        "paging",
        client.V1Secret(metadata=client.V1ObjectMeta(name="Bad_Name")),
    )
    assert e.status == 422
    e = raises(ApiException, kube_api(info, token="wrong").read_namespaced_secret, "s1", "paging")
    assert e.status == 401


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([sys.argv[1], tmp], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            info = json.loads(proc.stdout.readline())
            for fn in (
                azure_put_get_update,
                azure_list,
                azure_errors,
                azure_delete,
                gcp_put_get_update,
                gcp_list_errors_delete,
                kube_put_get_update,
                kube_list_delete,
            ):
                fn(info)
        finally:
            proc.stdin.close()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
    failed = sum(1 for _, e in RESULTS if e)
    print(f"vendor SDK check: {len(RESULTS) - failed} passed, {failed} failed")
    return 1 if failed or not RESULTS else 0


if __name__ == "__main__":
    sys.exit(main())
