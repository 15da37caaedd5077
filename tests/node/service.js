// Drives the Node Azure IoT provisioning *service* SDK (azure-iot-provisioning-service, pinned in package.json)
// through every call it has, against zerotouch's admin API, asserting each result (tests/tests/service_sdks.rs).
//
//   node service.js CONFIG_JSON
// CONFIG_JSON: {"connectionString": "..."} or {"host": "...", "token": "<JWT>"} (the SDK's TokenCredential hook),
// plus "prefix" (ids this run creates), "certificate" (a PEM for x509 attestations), "fleetGroup" and "fleet" (a
// group whose devices registered, for the registration state calls). The SDK reaches port 443 of the host only.
// Prints one JSON line per step; exits 1 with the failing step and the service's answer on the first failure.
'use strict';

const assert = require('assert');
const { ProvisioningServiceClient } = require('azure-iot-provisioning-service');

const config = JSON.parse(process.argv[2]);
const client = config.connectionString
  ? ProvisioningServiceClient.fromConnectionString(config.connectionString)
  : ProvisioningServiceClient.fromTokenCredential(config.host, {
    getToken: async () => ({ token: config.token, expiresOnTimestamp: Date.now() + 3600 * 1000 }),
  });
const P = config.prefix;

function log(step, detail) {
  console.log(JSON.stringify({ step, ...detail }));
}

/** Runs `fn`, logging the step; a rejection is reported with the step's name. */
async function step(name, fn) {
  try {
    const detail = await fn();
    log(name, { ok: true, ...(detail || {}) });
  } catch (e) {
    const answer = e && e.response ? { statusCode: e.response.statusCode, body: e.responseBody } : {};
    console.error(JSON.stringify({ step: name, error: String(e && e.stack || e), ...answer }));
    process.exit(1);
  }
}

/** Expects `promise` to fail with HTTP `status`. */
async function failsWith(promise, status) {
  try {
    await promise;
  } catch (e) {
    const got = e && e.response && e.response.statusCode;
    assert.strictEqual(got, status, `expected HTTP ${status}, got ${got}: ${e}`);
    return;
  }
  assert.fail(`expected HTTP ${status}, but the call succeeded`);
}

/** All items of a query, page by page; returns the items and the number of pages. The promise form of `next`
 * takes the continuation token as its argument (without one it starts over), as the SDK's samples pass it. */
async function drain(query) {
  const items = [];
  let pages = 0;
  while (query.hasMoreResults) {
    const page = await query.next(query.continuationToken);
    items.push(...page.responseBody);
    pages += 1;
    assert.ok(pages < 1000, 'the query never ends');
  }
  return { items, pages };
}

/** runBulkEnrollmentOperation with a callback (without one, its promise never settles). */
function bulk(operation) {
  return new Promise((resolve, reject) => {
    client.runBulkEnrollmentOperation(operation, (err, result) => (err ? reject(err) : resolve(result)));
  });
}

const KEY = /^[A-Za-z0-9+/]{86}==$/; // 64 bytes, base64: what the service generates

(async () => {
  const individualId = `${P}-Individual-1`;
  let individual;

  await step('createOrUpdateIndividualEnrollment (symmetric key, keys to generate)', async () => {
    const created = (await client.createOrUpdateIndividualEnrollment({
      registrationId: individualId,
      // Characters IoT Hub allows in a device id.
      deviceId: `${P}-dev:with.chars_-@$'()*+,;=%!#?`,
      attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: '', secondaryKey: '' } },
      capabilities: { iotEdge: false },
      provisioningStatus: 'enabled',
      initialTwin: { tags: { site: 'a' }, properties: { desired: { interval: 30 } } },
      reprovisionPolicy: { updateHubAssignment: true, migrateDeviceData: true },
      allocationPolicy: 'hashed',
    })).responseBody;
    assert.strictEqual(created.registrationId, individualId);
    assert.ok(created.etag, 'an etag');
    assert.strictEqual(created.attestation.type, 'symmetricKey');
    individual = created;
    return { etag: created.etag };
  });

  await step('getIndividualEnrollment', async () => {
    const read = (await client.getIndividualEnrollment(individualId.toLowerCase())).responseBody;
    assert.strictEqual(read.registrationId, individualId);
    assert.strictEqual(read.etag, individual.etag);
    assert.strictEqual(read.deviceId, individual.deviceId);
    assert.deepStrictEqual(read.initialTwin.tags, { site: 'a' });
  });

  await step('getIndividualEnrollmentAttestationMechanism', async () => {
    const mechanism = (await client.getIndividualEnrollmentAttestationMechanism(individualId)).responseBody;
    assert.strictEqual(mechanism.type, 'symmetricKey');
    assert.match(mechanism.symmetricKey.primaryKey, KEY);
    assert.match(mechanism.symmetricKey.secondaryKey, KEY);
    assert.notStrictEqual(mechanism.symmetricKey.primaryKey, mechanism.symmetricKey.secondaryKey);
  });

  await step('createOrUpdateIndividualEnrollment with the etag (If-Match)', async () => {
    const changed = { ...individual, initialTwin: { tags: { site: 'b' } } };
    const updated = (await client.createOrUpdateIndividualEnrollment(changed)).responseBody;
    assert.notStrictEqual(updated.etag, individual.etag);
    assert.deepStrictEqual(updated.initialTwin.tags, { site: 'b' });
    await failsWith(client.createOrUpdateIndividualEnrollment(changed), 412);
    individual = updated;
  });

  await step('createOrUpdateIndividualEnrollment (x509)', async () => {
    const x509 = (await client.createOrUpdateIndividualEnrollment({
      registrationId: `${P}-x509-1`,
      attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: config.certificate } } } },
    })).responseBody;
    assert.strictEqual(x509.attestation.type, 'x509');
    const mechanism = (await client.getIndividualEnrollmentAttestationMechanism(`${P}-x509-1`)).responseBody;
    assert.strictEqual(mechanism.type, 'x509');
  });

  const groupId = `${P}-Group`;
  let group;
  await step('createOrUpdateEnrollmentGroup', async () => {
    group = (await client.createOrUpdateEnrollmentGroup({
      enrollmentGroupId: groupId,
      attestation: { type: 'symmetricKey', symmetricKey: {} },
      provisioningStatus: 'enabled',
      reprovisionPolicy: { updateHubAssignment: true, migrateDeviceData: false },
    })).responseBody;
    assert.strictEqual(group.enrollmentGroupId, groupId);
    assert.ok(group.etag);
  });

  await step('getEnrollmentGroup', async () => {
    const read = (await client.getEnrollmentGroup(groupId.toUpperCase())).responseBody;
    assert.strictEqual(read.enrollmentGroupId, groupId);
    assert.strictEqual(read.etag, group.etag);
  });

  await step('getEnrollmentGroupAttestationMechanism', async () => {
    const mechanism = (await client.getEnrollmentGroupAttestationMechanism(groupId)).responseBody;
    assert.strictEqual(mechanism.type, 'symmetricKey');
    assert.match(mechanism.symmetricKey.primaryKey, KEY);
  });

  await step('createOrUpdateEnrollmentGroup with the etag', async () => {
    const updated = (await client.createOrUpdateEnrollmentGroup({ ...group, provisioningStatus: 'disabled' })).responseBody;
    assert.strictEqual(updated.provisioningStatus, 'disabled');
    assert.notStrictEqual(updated.etag, group.etag);
    await failsWith(client.createOrUpdateEnrollmentGroup({ ...group }), 412);
    group = updated;
  });

  const bulkIds = [1, 2, 3, 4, 5].map((i) => `${P}-bulk-${i}`);
  await step('runBulkEnrollmentOperation create', async () => {
    const result = await bulk({
      mode: 'create',
      enrollments: bulkIds.map((registrationId) => ({ registrationId, attestation: { type: 'symmetricKey' } })),
    });
    assert.strictEqual(result.isSuccessful, true, JSON.stringify(result));
    const again = await bulk({
      mode: 'create',
      enrollments: [{ registrationId: bulkIds[0], attestation: { type: 'symmetricKey' } }],
    });
    assert.strictEqual(again.isSuccessful, false);
    assert.strictEqual(again.errors.length, 1);
    assert.strictEqual(again.errors[0].registrationId, bulkIds[0]);
  });

  await step('createIndividualEnrollmentQuery, paged', async () => {
    const { items, pages } = await drain(client.createIndividualEnrollmentQuery({ query: '*' }, 2));
    const ours = items.filter((e) => e.registrationId.startsWith(P));
    assert.strictEqual(ours.length, 7, JSON.stringify(ours.map((e) => e.registrationId)));
    assert.ok(pages >= 4, `${pages} pages of 2`);
    assert.ok(ours.every((e) => !e.attestation.symmetricKey || !e.attestation.symmetricKey.primaryKey), 'no keys');
    const select = await drain(client.createIndividualEnrollmentQuery({ query: 'SELECT * FROM enrollments' }));
    assert.strictEqual(select.items.filter((e) => e.registrationId.startsWith(P)).length, 7);
    return { pages };
  });

  await step('createEnrollmentGroupQuery, paged', async () => {
    const { items } = await drain(client.createEnrollmentGroupQuery({ query: 'SELECT *' }, 1));
    assert.ok(items.some((g) => g.enrollmentGroupId === groupId), JSON.stringify(items));
  });

  await step('runBulkEnrollmentOperation delete', async () => {
    const result = await bulk({
      mode: 'delete',
      enrollments: bulkIds.map((registrationId) => ({ registrationId })),
    });
    assert.strictEqual(result.isSuccessful, true, JSON.stringify(result));
    await failsWith(client.getIndividualEnrollment(bulkIds[0]), 404);
  });

  await step('createEnrollmentGroupDeviceRegistrationStateQuery, paged', async () => {
    const { items, pages } = await drain(
      client.createEnrollmentGroupDeviceRegistrationStateQuery({ query: '*' }, config.fleetGroup, 2));
    const ids = items.map((r) => r.registrationId).sort();
    assert.deepStrictEqual(ids, [...config.fleet].sort());
    assert.ok(items.every((r) => r.status === 'assigned' && r.etag), JSON.stringify(items));
    return { pages };
  });

  await step('getDeviceRegistrationState and deleteDeviceRegistrationState (etag)', async () => {
    const [first, second] = config.fleet;
    const state = (await client.getDeviceRegistrationState(first)).responseBody;
    assert.strictEqual(state.registrationId, first);
    assert.strictEqual(state.status, 'assigned');
    await failsWith(client.deleteDeviceRegistrationState(first, 'not-the-etag'), 412);
    await client.deleteDeviceRegistrationState(first, state.etag);
    await failsWith(client.getDeviceRegistrationState(first), 404);
    const other = (await client.getDeviceRegistrationState(second)).responseBody;
    await client.deleteDeviceRegistrationState(other);
    await failsWith(client.getDeviceRegistrationState(second), 404);
  });

  await step('deleteEnrollmentGroup and deleteIndividualEnrollment (etag, object, id)', async () => {
    await failsWith(client.deleteEnrollmentGroup(groupId, 'stale'), 412);
    await client.deleteEnrollmentGroup(group);
    await failsWith(client.getEnrollmentGroup(groupId), 404);
    await client.deleteIndividualEnrollment(individualId, individual.etag);
    await client.deleteIndividualEnrollment(`${P}-x509-1`);
    await failsWith(client.getIndividualEnrollment(individualId), 404);
    await failsWith(client.deleteIndividualEnrollment(individualId), 404);
  });

  console.log(JSON.stringify({ done: true }));
})();
