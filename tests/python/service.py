"""Drives the Python Azure IoT provisioning service client (azure-iot-deviceprovisioning, pinned in
requirements.txt) through every call it has, against zerotouch's admin API, asserting each result
(tests/tests/service_sdks.rs).

    python service.py CONFIG_JSON

CONFIG_JSON: {"connectionString": "..."} or {"endpoint": "https://host:port", "token": "<JWT>"} (a TokenCredential),
plus "prefix" (ids this run creates), "certificate" (a PEM for x509 attestations), "fleetGroup" and "fleet" (a group
whose devices registered, for the registration state calls). Trusts REQUESTS_CA_BUNDLE. Prints one JSON line per
step; exits 1 with the failing step and the service's answer on the first failure.
"""

import json
import re
import sys
import time
import traceback

from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError
from azure.iot.deviceprovisioning import DeviceProvisioningClient

config = json.loads(sys.argv[1])
P = config["prefix"]
KEY = re.compile(r"^[A-Za-z0-9+/]{86}==$")  # 64 bytes, base64: what the service generates


class StaticToken:
    """A TokenCredential handing out the test's JWT."""

    def get_token(self, *scopes, **kwargs):
        return AccessToken(config["token"], int(time.time()) + 3600)


if "connectionString" in config:
    client = DeviceProvisioningClient.from_connection_string(config["connectionString"])
else:
    client = DeviceProvisioningClient(endpoint=config["endpoint"], credential=StaticToken())


def step(name, fn):
    try:
        detail = fn() or {}
        print(json.dumps({"step": name, "ok": True, **detail}), flush=True)
    except Exception as e:  # noqa: BLE001 - report any failure with the service's answer
        answer = {}
        if isinstance(e, HttpResponseError) and e.response is not None:
            answer = {"statusCode": e.response.status_code, "body": e.response.text()}
        print(json.dumps({"step": name, "error": traceback.format_exc(), **answer}), file=sys.stderr, flush=True)
        sys.exit(1)


def fails_with(status, fn):
    try:
        fn()
    except HttpResponseError as e:
        assert e.status_code == status, f"expected HTTP {status}, got {e.status_code}: {e}"
        return
    raise AssertionError(f"expected HTTP {status}, but the call succeeded")


state = {}
individual_id = f"{P}-Individual-1"
group_id = f"{P}-Group"
bulk_ids = [f"{P}-bulk-{i}" for i in range(1, 6)]


def create_individual():
    created = client.enrollment.create_or_update(
        id=individual_id,
        enrollment={
            "registrationId": individual_id,
            "deviceId": f"{P}-dev:with.chars_-@$'()*+,;=%!#?",
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": "", "secondaryKey": ""}},
            "capabilities": {"iotEdge": True},
            "provisioningStatus": "enabled",
            "initialTwin": {"tags": {"site": "a"}, "properties": {"desired": {"interval": 30}}},
            "reprovisionPolicy": {"updateHubAssignment": True, "migrateDeviceData": True},
            "allocationPolicy": "hashed",
        },
    )
    assert created["registrationId"] == individual_id, created
    assert created["etag"], created
    state["individual"] = created


def get_individual():
    read = client.enrollment.get(id=individual_id.upper())
    assert read["registrationId"] == individual_id, read
    assert read["etag"] == state["individual"]["etag"], read
    assert read["capabilities"]["iotEdge"] is True, read


def attestation_mechanism():
    mechanism = client.enrollment.get_attestation_mechanism(id=individual_id)
    assert mechanism["type"] == "symmetricKey", mechanism
    assert KEY.match(mechanism["symmetricKey"]["primaryKey"]), mechanism
    assert KEY.match(mechanism["symmetricKey"]["secondaryKey"]), mechanism


def update_individual():
    old = state["individual"]
    changed = dict(old, initialTwin={"tags": {"site": "b"}})
    updated = client.enrollment.create_or_update(id=individual_id, enrollment=changed, if_match=old["etag"])
    assert updated["etag"] != old["etag"], updated
    assert updated["initialTwin"]["tags"] == {"site": "b"}, updated
    fails_with(412, lambda: client.enrollment.create_or_update(id=individual_id, enrollment=changed, if_match=old["etag"]))
    state["individual"] = updated


def x509_individual():
    x509 = client.enrollment.create_or_update(
        id=f"{P}-x509-1",
        enrollment={
            "registrationId": f"{P}-x509-1",
            "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": config["certificate"]}}}},
        },
    )
    assert x509["attestation"]["type"] == "x509", x509
    assert client.enrollment.get_attestation_mechanism(id=f"{P}-x509-1")["type"] == "x509"


def create_group():
    group = client.enrollment_group.create_or_update(
        id=group_id,
        enrollment_group={"enrollmentGroupId": group_id, "attestation": {"type": "symmetricKey"}},
    )
    assert group["enrollmentGroupId"] == group_id, group
    read = client.enrollment_group.get(id=group_id.lower())
    assert read["etag"] == group["etag"], read
    mechanism = client.enrollment_group.get_attestation_mechanism(id=group_id)
    assert KEY.match(mechanism["symmetricKey"]["primaryKey"]), mechanism
    updated = client.enrollment_group.create_or_update(
        id=group_id, enrollment_group=dict(read, provisioningStatus="disabled"), if_match=read["etag"]
    )
    assert updated["provisioningStatus"] == "disabled", updated
    state["group"] = updated


def bulk_create():
    result = client.enrollment.run_bulk_operation(
        bulk_operation={
            "mode": "create",
            "enrollments": [{"registrationId": i, "attestation": {"type": "symmetricKey"}} for i in bulk_ids],
        }
    )
    assert result["isSuccessful"] is True, result
    again = client.enrollment.run_bulk_operation(
        bulk_operation={"mode": "create", "enrollments": [{"registrationId": bulk_ids[0], "attestation": {"type": "symmetricKey"}}]}
    )
    assert again["isSuccessful"] is False and again["errors"][0]["registrationId"] == bulk_ids[0], again


def query_enrollments():
    pages = list(client.enrollment.query(query_specification={"query": "SELECT *"}, top=2).by_page())
    items = [e for page in pages for e in page]
    ours = [e for e in items if e["registrationId"].startswith(P)]
    assert len(ours) == 7, [e["registrationId"] for e in ours]
    assert len(pages) >= 4, len(pages)
    everything = list(client.enrollment.query(query_specification={"query": "SELECT * FROM enrollments"}))
    assert len([e for e in everything if e["registrationId"].startswith(P)]) == 7
    groups = list(client.enrollment_group.query(query_specification={"query": "*"}, top=1))
    assert any(g["enrollmentGroupId"] == group_id for g in groups), groups
    return {"pages": len(pages)}


def bulk_delete():
    result = client.enrollment.run_bulk_operation(
        bulk_operation={"mode": "delete", "enrollments": [{"registrationId": i} for i in bulk_ids]}
    )
    assert result["isSuccessful"] is True, result
    fails_with(404, lambda: client.enrollment.get(id=bulk_ids[0]))


def registration_states():
    pages = list(client.device_registration_state.query(id=config["fleetGroup"], top=2).by_page())
    items = [r for page in pages for r in page]
    assert sorted(r["registrationId"] for r in items) == sorted(config["fleet"]), items
    assert all(r["status"] == "assigned" and r["etag"] for r in items), items
    first, second = config["fleet"][0], config["fleet"][1]
    read = client.device_registration_state.get(id=first)
    assert read["registrationId"] == first and read["status"] == "assigned", read
    fails_with(412, lambda: client.device_registration_state.delete(id=first, if_match="stale"))
    client.device_registration_state.delete(id=first, if_match=read["etag"])
    fails_with(404, lambda: client.device_registration_state.get(id=first))
    client.device_registration_state.delete(id=second)
    fails_with(404, lambda: client.device_registration_state.get(id=second))
    return {"pages": len(pages)}


def deletes():
    fails_with(412, lambda: client.enrollment_group.delete(id=group_id, if_match="stale"))
    client.enrollment_group.delete(id=group_id, if_match=state["group"]["etag"])
    fails_with(404, lambda: client.enrollment_group.get(id=group_id))
    client.enrollment.delete(id=individual_id, if_match=state["individual"]["etag"])
    client.enrollment.delete(id=f"{P}-x509-1")
    fails_with(404, lambda: client.enrollment.get(id=individual_id))


step("enrollment.create_or_update (keys to generate)", create_individual)
step("enrollment.get", get_individual)
step("enrollment.get_attestation_mechanism", attestation_mechanism)
step("enrollment.create_or_update with if_match", update_individual)
step("enrollment.create_or_update (x509)", x509_individual)
step("enrollment_group create, get, attestation mechanism, update", create_group)
step("enrollment.run_bulk_operation create", bulk_create)
step("enrollment and enrollment_group queries, paged", query_enrollments)
step("enrollment.run_bulk_operation delete", bulk_delete)
step("device_registration_state query, get, delete", registration_states)
step("deletes with and without if_match", deletes)
client.close()
print(json.dumps({"done": True}), flush=True)
