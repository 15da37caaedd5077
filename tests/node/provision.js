#!/usr/bin/env node
// Provisions one device with the real Azure IoT Node SDK (HTTPS transport, symmetric-key attestation) and prints
// the result as one JSON line on stdout; on failure prints the error (one JSON line on stderr) and exits 1.
//
//   node provision.js HOST ID_SCOPE REGISTRATION_ID DEVICE_KEY_BASE64
//   PROVISIONING_HOST=.. ID_SCOPE=.. REGISTRATION_ID=.. DEVICE_KEY=.. node provision.js
//
// The SDK always connects to port 443 of HOST. Trust a private CA with NODE_EXTRA_CA_CERTS=<bundle.pem>.
// Used by tests/tests/node_sdk.rs; install the SDK with `npm ci --prefix tests/node` (./scripts/test does).
'use strict';

const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { Http: Transport } = require('azure-iot-provisioning-device-http');
const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');

// The SDK has no overall deadline of its own; a server that never answers must not hang the test.
const DEADLINE_MS = Number(process.env.PROVISION_TIMEOUT_MS || 60000);

function fail(error) {
  const out = { error: String((error && error.message) || error), name: error && error.name };
  const response = error && (error.transportObject || error.response);
  if (response && response.statusCode) out.statusCode = response.statusCode;
  if (error && error.result !== undefined) out.body = error.result;
  process.stderr.write(JSON.stringify(out) + '\n');
  process.exit(1);
}

function main() {
  const args = process.argv.slice(2);
  const host = args[0] || process.env.PROVISIONING_HOST;
  const idScope = args[1] || process.env.ID_SCOPE;
  const registrationId = args[2] || process.env.REGISTRATION_ID;
  const deviceKey = args[3] || process.env.DEVICE_KEY;
  if (!host || !idScope || !registrationId || !deviceKey) {
    fail(new Error('usage: provision.js HOST ID_SCOPE REGISTRATION_ID DEVICE_KEY_BASE64 (or PROVISIONING_HOST, '
      + 'ID_SCOPE, REGISTRATION_ID, DEVICE_KEY)'));
  }

  const timer = setTimeout(() => fail(new Error(`no result within ${DEADLINE_MS} ms`)), DEADLINE_MS);
  const security = new SymmetricKeySecurityClient(registrationId, deviceKey);
  const client = ProvisioningDeviceClient.create(host, idScope, new Transport(), security);
  client.register((err, result) => {
    clearTimeout(timer);
    if (err) {
      fail(err);
      return;
    }
    const { assignedHub, deviceId, status, registrationId: id, substatus } = result;
    process.stdout.write(JSON.stringify({ assignedHub, deviceId, status, registrationId: id, substatus }) + '\n');
    process.exit(0);
  });
}

try {
  main();
} catch (error) {
  fail(error);
}
