"""Provisions one device with the real Python Azure IoT device SDK (azure-iot-device, MQTT on port 8883).

Usage: provision.py HOST ID_SCOPE REGISTRATION_ID TRUST_BUNDLE (--key BASE64 | --cert PEM --cert-key PEM) [--payload JSON]

Prints one JSON line: the SDK's RegistrationResult on success (exit 0), or {"error": ..., "message": ...} as the
SDK raised it (exit 1). Run by tests/tests/python_sdk.rs in the virtualenv that scripts/test makes.
"""

import argparse
import json
import sys

from azure.iot.device import X509, ProvisioningDeviceClient


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("id_scope")
    parser.add_argument("registration_id")
    parser.add_argument("trust_bundle")
    parser.add_argument("--key")
    parser.add_argument("--cert")
    parser.add_argument("--cert-key")
    parser.add_argument("--payload")
    args = parser.parse_args()

    with open(args.trust_bundle) as f:
        trust = f.read()
    common = dict(
        provisioning_host=args.host,
        registration_id=args.registration_id,
        id_scope=args.id_scope,
        server_verification_cert=trust,
    )
    if args.key:
        client = ProvisioningDeviceClient.create_from_symmetric_key(symmetric_key=args.key, **common)
    else:
        x509 = X509(cert_file=args.cert, key_file=args.cert_key)
        client = ProvisioningDeviceClient.create_from_x509_certificate(x509=x509, **common)
    if args.payload:
        client.provisioning_payload = json.loads(args.payload)
    try:
        result = client.register()
    except Exception as error:  # what the SDK raises is what the test checks
        cause = error.__cause__
        print(json.dumps({"error": type(error).__name__, "message": str(error),
                          "cause": f"{type(cause).__name__}: {cause}" if cause else None}))
        return 1
    state = result.registration_state
    print(json.dumps({
        "status": result.status,
        "operationId": result.operation_id,
        "deviceId": state.device_id if state else None,
        "assignedHub": state.assigned_hub if state else None,
        "substatus": state.sub_status if state else None,
        # The SDK gives the payload back as JSON text.
        "payload": json.loads(state.response_payload) if state else None,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
