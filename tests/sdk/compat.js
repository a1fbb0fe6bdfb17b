#!/usr/bin/env node
// Drives keygate's key server with Stack Auth's own npm SDK (@stackframe/js) and checks every
// key it mints with Stack's own parser (parseProjectApiKey in @stackframe/stack-shared).
//
//   node compat.js <previous|current>
//
// Reads KEYGATE_URL (e.g. http://127.0.0.1:8102), KEYGATE_PROJECT_ID (a UUID: the SDK refuses
// anything else), KEYGATE_SECRET_SERVER_KEY, and optionally KEYGATE_SERVER_LOG (the key server's
// log file, checked for leaked keys). Prints one `PASS <case>` / `FAIL <case>: <why>` line per
// case and a last line `# <sdk>: done`; exits 1 if any case failed. Never prints a full key.
"use strict";

const path = require("node:path");
const fs = require("node:fs");
const { randomUUID } = require("node:crypto");

// ---------------------------------------------------------------------------------------------
// Output, with every key masked to its last four characters (the SDK's own logging included).

const minted = new Set();
const KEYLIKE = /\b([a-z]{2})_[A-Za-z0-9_]{60,}([A-Za-z0-9]{4})\b/g;
function mask(key) {
  return typeof key === "string" && key.length > 8 ? `${key.slice(0, 3)}…${key.slice(-4)}` : "<none>";
}
function scrub(text) {
  let out = String(text);
  for (const key of minted) out = out.split(key).join(mask(key));
  return out.replace(KEYLIKE, "$1_…$2");
}
const rawLog = console.log.bind(console);
for (const level of ["log", "info", "warn", "error", "debug", "trace"]) {
  const original = console[level].bind(console);
  console[level] = (...args) => original(...args.map((a) => scrub(typeof a === "string" ? a : safeInspect(a))));
}
function safeInspect(value) {
  if (value instanceof Error) return `${value.name}: ${value.message}`;
  try {
    return require("node:util").inspect(value, { depth: 2 });
  } catch {
    return String(value);
  }
}
function out(line) {
  rawLog(scrub(line));
}

// ---------------------------------------------------------------------------------------------
// Configuration and the SDK under test.

const which = process.argv[2];
const ALIASES = { previous: "stack-js-previous", current: "stack-js-current" };
if (!ALIASES[which]) {
  console.error("usage: node compat.js <previous|current>");
  process.exit(2);
}
const env = (name) => {
  const value = process.env[name];
  if (!value) {
    console.error(`${name} is not set`);
    process.exit(2);
  }
  return value;
};
const BASE_URL = env("KEYGATE_URL");
const PROJECT_ID = env("KEYGATE_PROJECT_ID");
const SECRET_SERVER_KEY = env("KEYGATE_SECRET_SERVER_KEY");
const SERVER_LOG = process.env.KEYGATE_SERVER_LOG || "";
const CASE_TIMEOUT_MS = Number(process.env.KEYGATE_CASE_TIMEOUT_MS || 20000);

const alias = ALIASES[which];
const sdkDir = path.resolve(path.dirname(require.resolve(alias)), "..");
const sdkVersion = JSON.parse(fs.readFileSync(path.join(sdkDir, "package.json"), "utf8")).version;
// The SDK's own copy of stack-shared (nested for the previous SDK, top-level for the current).
const fromSdk = (id) => require(require.resolve(id, { paths: [sdkDir] }));
const sharedVersionFrom = (dir) => {
  const root = path.resolve(path.dirname(require.resolve("@stackframe/stack-shared", { paths: [dir] })), "..");
  return JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8")).version;
};
const shared = fromSdk("@stackframe/stack-shared");
const sharedVersion = sharedVersionFrom(sdkDir);
const { createProjectApiKey } = fromSdk("@stackframe/stack-shared/dist/utils/api-keys");
// Stack's key parser: the SDK's own stack-shared and the pinned top-level one (the version the
// current SDK depends on), so keys minted while driving either SDK meet both parsers.
const parsers = new Map();
for (const dir of [sdkDir, __dirname]) {
  const version = sharedVersionFrom(dir);
  if (!parsers.has(version)) {
    parsers.set(version, require(require.resolve("@stackframe/stack-shared/dist/utils/api-keys", { paths: [dir] })));
  }
}
const { KnownErrors } = shared;
// The SDK's own translation of ApiKeyCreationOptions / ApiKeyUpdateOptions into request bodies
// (what user.createApiKey / apiKey.update send). The package's exports map hides the file, so
// it is loaded by path.
const { apiKeyCreationOptionsToCrud } = require(path.join(sdkDir, "dist/lib/stack-app/api-keys/index.js"));
const { StackServerApp } = require(alias);
const ServerInterface = shared.HexclaveServerInterface ?? shared.StackServerInterface;

const label = `[@stackframe/js ${sdkVersion}]`;

// ---------------------------------------------------------------------------------------------
// A tiny case runner: each case has a bounded time; a case whose inputs are missing fails.

let passed = 0;
let failed = 0;
function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms (${what})`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}
function describeError(e) {
  if (e && typeof e === "object") {
    const code = e.errorCode ? `${e.errorCode} ` : "";
    const status = e.statusCode ? `(${e.statusCode}) ` : "";
    const message = String(e.message ?? e).split("\n")[0];
    return `${code}${status}${message}`;
  }
  return String(e);
}
async function test(name, needs, body) {
  const missing = needs.filter((n) => n === undefined || n === null);
  if (missing.length > 0) {
    failed++;
    out(`FAIL ${label} ${name}: not run, an earlier case it needs failed`);
    return undefined;
  }
  try {
    const note = await withTimeout(Promise.resolve().then(body), CASE_TIMEOUT_MS, name);
    passed++;
    out(`PASS ${label} ${name}${typeof note === "string" && note ? ` (${note})` : ""}`);
    return note === undefined ? true : note;
  } catch (e) {
    failed++;
    out(`FAIL ${label} ${name}: ${describeError(e)}`);
    return undefined;
  }
}
class Mismatch extends Error {}
function expect(condition, message) {
  if (!condition) throw new Mismatch(message);
}
function expectEq(actual, expected, what) {
  expect(Object.is(actual, expected), `${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
}
const kindOther = (kind) => (kind === "user" ? "team" : "user");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const KEY_SHAPE = /^(sk|pk)_[a-z0-9]{45}[0-9a-f]{32}(user|team)[0-3]574ck4u7h[0-9a-f]{8}$/;

// ---------------------------------------------------------------------------------------------

async function main() {
  out(`# ${label} stack-shared ${sharedVersion}, key server ${BASE_URL}`);
  let app;
  let iface;
  await test("StackServerApp accepts the key server (baseUrl, project id, secret server key)", [], () => {
    app = new StackServerApp({
      baseUrl: BASE_URL,
      projectId: PROJECT_ID,
      secretServerKey: SECRET_SERVER_KEY,
      tokenStore: "memory",
    });
    // The SDK's own server interface (what every server-side API-key method calls).
    iface = app._interface;
    expect(iface instanceof ServerInterface, `app._interface is not the SDK's ${ServerInterface.name}`);
    expect(typeof app._serverApiKeyFromCrud === "function", "SDK internals changed: no _serverApiKeyFromCrud");
    return `${ServerInterface.name}`;
  });
  if (!iface) return;

  // Misconfiguration: the SDK must surface the server's known errors as its own error classes.
  async function refusal(options) {
    const other = new StackServerApp({
      baseUrl: BASE_URL,
      projectId: PROJECT_ID,
      secretServerKey: SECRET_SERVER_KEY,
      tokenStore: "memory",
      ...options,
    });
    try {
      await other._interface.listProjectApiKeys({ user_id: randomUUID() }, null, "server");
    } catch (e) {
      return e;
    }
    throw new Mismatch("the request was accepted");
  }
  await test("a wrong secret server key is refused (INVALID_SECRET_SERVER_KEY)", [], async () => {
    const error = await refusal({ secretServerKey: "ssk_not_the_right_one" });
    expect(KnownErrors.InvalidSecretServerKey.isInstance(error), `expected INVALID_SECRET_SERVER_KEY, got ${describeError(error)}`);
    expectEq(error.statusCode, 401, "status");
  });
  await test("an unknown project id is refused (CURRENT_PROJECT_NOT_FOUND)", [], async () => {
    const projectId = randomUUID();
    const error = await refusal({ projectId });
    expect(KnownErrors.CurrentProjectNotFound.isInstance(error), `expected CURRENT_PROJECT_NOT_FOUND, got ${describeError(error)}`);
    expectEq(JSON.stringify(error.constructorArgs), JSON.stringify([projectId]), "project id in the details");
  });

  // The SDK's own verdict on a key (null for every ApiKeyNotValid) and, to tell the reasons
  // apart, the known error the SDK parsed from the same request.
  async function checkReason(kind, apiKey) {
    const result = await iface.sendServerRequestAndCatchKnownError(
      `/${kind}-api-keys/check`,
      { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ api_key: apiKey }) },
      null,
      [KnownErrors.ApiKeyNotValid],
    );
    if (result.status === "error") return result.error;
    return null;
  }
  const getOwnerByKey = (kind, apiKey) => (kind === "user" ? app.getUser({ apiKey }) : app.getTeam({ apiKey }));

  const keys = []; // { kind, key, id, isPublic } for the parser cases

  for (const kind of ["user", "team"]) {
    const other = kind === "user" ? "team" : "user";
    const ownerField = `${kind}_id`;
    const owner = randomUUID();
    const ownerQuery = { [ownerField]: owner };
    const ownerProp = kind === "user" ? "userId" : "teamId";

    async function create(options) {
      const body = await apiKeyCreationOptionsToCrud(kind, owner, options);
      const crud = await iface.createProjectApiKey(body, null, "server");
      if (typeof crud.value === "string") {
        minted.add(crud.value);
        keys.push({ kind, key: crud.value, id: crud.id, isPublic: !!options.isPublic });
      }
      return crud;
    }
    function expectReadView(crud, key, what) {
      expect(crud && typeof crud === "object", `${what}: no key object`);
      expect(typeof crud.value === "object" && crud.value !== null, `${what}: value is not {last_four}`);
      expectEq(crud.value.last_four, key.slice(-4), `${what}: value.last_four`);
      expect(!JSON.stringify(crud).includes(key.slice(3, 48)), `${what}: the response holds the key's secret part`);
    }

    // -- create ---------------------------------------------------------------------------------
    let a; // { crud, key, obj }
    await test(`${kind}: create (full key shown once)`, [], async () => {
      const crud = await create({ description: "sdk compat A", expiresAt: null });
      expect(typeof crud.value === "string", "value is not the full key string");
      expect(KEY_SHAPE.test(crud.value), `value ${mask(crud.value)} is not a Stack API key`);
      expectEq(crud.value.slice(0, 3), "sk_", "prefix");
      expectEq(crud.value.slice(80, 84), kind, "type segment");
      expectEq(crud.value.slice(48, 80), crud.id.replace(/-/g, ""), "id segment");
      expectEq(crud.type, kind, "type");
      expectEq(crud[ownerField], owner, ownerField);
      expectEq(crud.description, "sdk compat A", "description");
      expectEq(crud.is_public, false, "is_public");
      expect(crud.expires_at_millis == null, "expires_at_millis set although expiresAt was null");
      expect(crud.manually_revoked_at_millis == null, "new key is revoked");
      expect(Math.abs(crud.created_at_millis - Date.now()) < 10 * 60 * 1000, "created_at_millis is not now");
      const obj = app._serverApiKeyFromCrud(crud);
      expectEq(obj.value, crud.value, "SDK ApiKey.value (first view)");
      expectEq(obj[ownerProp], owner, `SDK ApiKey.${ownerProp}`);
      expectEq(obj.type, kind, "SDK ApiKey.type");
      expectEq(obj.isValid(), true, "SDK ApiKey.isValid()");
      expectEq(obj.whyInvalid(), null, "SDK ApiKey.whyInvalid()");
      a = { crud, key: crud.value, obj };
      return mask(crud.value);
    });

    let b;
    const bExpiry = Date.now() + 24 * 3600 * 1000;
    await test(`${kind}: create with an expiry (expiresAt)`, [], async () => {
      const crud = await create({ description: "sdk compat B", expiresAt: new Date(bExpiry) });
      expectEq(crud.expires_at_millis, bExpiry, "expires_at_millis");
      const obj = app._serverApiKeyFromCrud(crud);
      expectEq(obj.expiresAt?.getTime(), bExpiry, "SDK ApiKey.expiresAt");
      expectEq(obj.whyInvalid(), null, "SDK ApiKey.whyInvalid()");
      b = { crud, key: crud.value, obj };
      return mask(crud.value);
    });

    let p;
    await test(`${kind}: create a public key (isPublic)`, [], async () => {
      const crud = await create({ description: "sdk compat public", expiresAt: null, isPublic: true });
      expectEq(crud.is_public, true, "is_public");
      expect(typeof crud.value === "string" && KEY_SHAPE.test(crud.value), "value is not a Stack API key");
      expectEq(crud.value.slice(0, 3), "pk_", "prefix");
      p = { crud, key: crud.value };
      return mask(crud.value);
    });

    // -- list -----------------------------------------------------------------------------------
    await test(`${kind}: list (newest first, last four only)`, [a, b, p], async () => {
      const items = await iface.listProjectApiKeys(ownerQuery, null, "server");
      expect(Array.isArray(items), "items is not an array");
      expectEq(items.map((i) => i.id).join(","), [p.crud.id, b.crud.id, a.crud.id].join(","), "ids, newest first");
      for (const [item, made] of [[items[0], p], [items[1], b], [items[2], a]]) {
        expectReadView(item, made.key, `list item ${item.id}`);
        const obj = app._serverApiKeyFromCrud(item);
        expectEq(obj.value.lastFour, made.key.slice(-4), "SDK ApiKey.value.lastFour");
        expectEq(obj[ownerProp], owner, `SDK ApiKey.${ownerProp}`);
      }
      for (const made of [a, b, p]) expect(!JSON.stringify(items).includes(made.key), "list holds a full key");
      const others = await iface.listProjectApiKeys({ [ownerField]: randomUUID() }, null, "server");
      expectEq(others.length, 0, "another owner's list length");
      return `${items.length} keys`;
    });

    // -- get ------------------------------------------------------------------------------------
    await test(`${kind}: get by id`, [a], async () => {
      const crud = await iface.getProjectApiKey(ownerQuery, a.crud.id, null, "server");
      expectEq(crud.id, a.crud.id, "id");
      expectEq(crud.type, kind, "type");
      expectEq(crud[ownerField], owner, ownerField);
      expectEq(crud.description, "sdk compat A", "description");
      expectEq(crud.created_at_millis, a.crud.created_at_millis, "created_at_millis");
      expectReadView(crud, a.key, "get");
    });

    await test(`${kind}: get an unknown id (API_KEY_NOT_FOUND)`, [], async () => {
      let error;
      try {
        await iface.getProjectApiKey(ownerQuery, randomUUID(), null, "server");
      } catch (e) {
        error = e;
      }
      expect(error !== undefined, "an unknown id was found");
      expect(KnownErrors.ApiKeyNotFound.isInstance(error), `expected API_KEY_NOT_FOUND, got ${describeError(error)}`);
    });

    // -- update ---------------------------------------------------------------------------------
    await test(`${kind}: update the description (ApiKey.update)`, [a], async () => {
      await a.obj.update({ description: "sdk compat A renamed" });
      const crud = await iface.getProjectApiKey(ownerQuery, a.crud.id, null, "server");
      expectEq(crud.description, "sdk compat A renamed", "description after update");
      expect(crud.manually_revoked_at_millis == null, "update revoked the key");
      expectReadView(crud, a.key, "get after update");
      const listed = (await iface.listProjectApiKeys(ownerQuery, null, "server")).find((i) => i.id === a.crud.id);
      expectEq(listed?.description, "sdk compat A renamed", "description in the list");
    });

    await test(`${kind}: update with expiresAt is refused like Stack (SCHEMA_ERROR)`, [b], async () => {
      let error;
      try {
        await b.obj.update({ expiresAt: new Date(bExpiry + 1000) });
      } catch (e) {
        error = e;
      }
      expect(KnownErrors.SchemaError.isInstance(error), `expected SCHEMA_ERROR, got ${error === undefined ? "success" : describeError(error)}`);
      const crud = await iface.getProjectApiKey(ownerQuery, b.crud.id, null, "server");
      expectEq(crud.expires_at_millis, bExpiry, "expires_at_millis after the refused update");
    });

    // -- check ----------------------------------------------------------------------------------
    await test(`${kind}: check a valid key`, [a, p], async () => {
      const crud = await iface.checkProjectApiKey(kind, a.key, null, "server");
      expect(crud !== null, "the SDK says the key is not valid");
      expectEq(crud.id, a.crud.id, "id");
      expectEq(crud.type, kind, "type");
      expectEq(crud[ownerField], owner, ownerField);
      expectEq(crud.is_public, false, "is_public");
      expectReadView(crud, a.key, "check");
      const pub = await iface.checkProjectApiKey(kind, p.key, null, "server");
      expect(pub !== null, "the SDK says the public key is not valid");
      expectEq(pub.is_public, true, "public key is_public");
    });

    await test(`${kind}: check an unknown key (API_KEY_NOT_FOUND, getUser/getTeam null)`, [], async () => {
      const unknown = createProjectApiKey({ id: randomUUID(), isPublic: false, isCloudVersion: false, type: kind });
      minted.add(unknown);
      expectEq(await iface.checkProjectApiKey(kind, unknown, null, "server"), null, "checkProjectApiKey");
      const error = await checkReason(kind, unknown);
      expectEq(error?.errorCode, "API_KEY_NOT_FOUND", "known error");
      expectEq(await getOwnerByKey(kind, unknown), null, `get${kind === "user" ? "User" : "Team"}({ apiKey })`);
      const garbage = await checkReason(kind, "not-a-key");
      expectEq(garbage?.errorCode, "API_KEY_NOT_FOUND", "known error for a non-key string");
    });

    await test(`${kind}: check with the wrong kind (WRONG_API_KEY_TYPE)`, [a], async () => {
      expectEq(await iface.checkProjectApiKey(other, a.key, null, "server"), null, `checkProjectApiKey("${other}")`);
      const error = await checkReason(other, a.key);
      expectEq(error?.errorCode, "WRONG_API_KEY_TYPE", "known error");
      expect(KnownErrors.WrongApiKeyType.isInstance(error), "not parsed as WrongApiKeyType");
      expectEq(JSON.stringify(error.constructorArgs), JSON.stringify([other, kind]), "expected/actual type");
      expectEq(await getOwnerByKey(other, a.key), null, `get${other === "user" ? "User" : "Team"}({ apiKey })`);
    });

    await test(`${kind}: check an expired key (API_KEY_EXPIRED, whyInvalid "expired")`, [], async () => {
      const past = Date.now() - 60 * 1000;
      const crud = await create({ description: "sdk compat expired", expiresAt: new Date(past) });
      expectEq(crud.expires_at_millis, past, "expires_at_millis");
      expectEq(app._serverApiKeyFromCrud(crud).whyInvalid(), "expired", "SDK ApiKey.whyInvalid()");
      expectEq(await iface.checkProjectApiKey(kind, crud.value, null, "server"), null, "checkProjectApiKey");
      const error = await checkReason(kind, crud.value);
      expectEq(error?.errorCode, "API_KEY_EXPIRED", "known error");
    });

    // -- revoke ---------------------------------------------------------------------------------
    let revokedAt;
    await test(`${kind}: revoke (ApiKey.revoke), then check says API_KEY_REVOKED`, [a], async () => {
      await a.obj.revoke();
      const crud = await iface.getProjectApiKey(ownerQuery, a.crud.id, null, "server");
      expect(typeof crud.manually_revoked_at_millis === "number", "manually_revoked_at_millis missing after revoke");
      expect(Math.abs(crud.manually_revoked_at_millis - Date.now()) < 10 * 60 * 1000, "manually_revoked_at_millis is not now");
      expectEq(app._serverApiKeyFromCrud(crud).whyInvalid(), "manually-revoked", "SDK ApiKey.whyInvalid()");
      expectEq(await iface.checkProjectApiKey(kind, a.key, null, "server"), null, "checkProjectApiKey");
      const error = await checkReason(kind, a.key);
      expectEq(error?.errorCode, "API_KEY_REVOKED", "known error");
      expectEq(await getOwnerByKey(kind, a.key), null, `get${kind === "user" ? "User" : "Team"}({ apiKey })`);
      const listed = (await iface.listProjectApiKeys(ownerQuery, null, "server")).find((i) => i.id === a.crud.id);
      expectEq(listed?.manually_revoked_at_millis, crud.manually_revoked_at_millis, "revoked key in the list");
      revokedAt = crud.manually_revoked_at_millis;
    });

    await test(`${kind}: revoke again keeps the first timestamp`, [revokedAt], async () => {
      await sleep(5); // a later revoke would stamp a later millisecond
      await a.obj.revoke();
      const crud = await iface.getProjectApiKey(ownerQuery, a.crud.id, null, "server");
      expectEq(crud.manually_revoked_at_millis, revokedAt, "manually_revoked_at_millis");
      const error = await checkReason(kind, a.key);
      expectEq(error?.errorCode, "API_KEY_REVOKED", "known error");
    });

    await test(`${kind}: other keys stay valid after a revoke`, [b, revokedAt], async () => {
      const crud = await iface.checkProjectApiKey(kind, b.key, null, "server");
      expectEq(crud?.id, b.crud.id, "checked id");
    });
  }

  // -- Stack's own key parser ---------------------------------------------------------------------
  for (const [version, { parseProjectApiKey, isApiKey }] of parsers) {
    await test(`parseProjectApiKey (stack-shared ${version}) accepts every minted key`, [keys.length > 0 || undefined], () => {
      for (const { kind, key, id, isPublic } of keys) {
        const parsed = parseProjectApiKey(key);
        const where = `key ${mask(key)}`;
        expectEq(parsed.id, id, `${where}: id`);
        expectEq(parsed.type, kind, `${where}: type`);
        expectEq(parsed.isPublic, isPublic, `${where}: isPublic`);
        expectEq(parsed.prefix, isPublic ? "pk" : "sk", `${where}: prefix`);
        expectEq(parsed.isCloudVersion, false, `${where}: isCloudVersion (keygate is self-hosted)`);
        expect(isApiKey(key), `${where}: isApiKey false`);
      }
      return `${keys.length} keys`;
    });

    await test(`parseProjectApiKey (stack-shared ${version}) rejects a corrupted key`, [keys[0]], () => {
      const { key } = keys[0];
      const at = 10; // a character of the secret part
      const corrupted = key.slice(0, at) + (key[at] === "a" ? "b" : "a") + key.slice(at + 1);
      minted.add(corrupted);
      const rejects = (candidate) => {
        try {
          parseProjectApiKey(candidate);
          return false;
        } catch {
          return true;
        }
      };
      expect(rejects(corrupted), "a key with a changed secret character parsed");
      expect(rejects(key.slice(0, -1)), "a truncated key parsed");
      expect(rejects(key.slice(0, 80) + (kindOther(key.slice(80, 84))) + key.slice(84)), "a key with its type segment swapped parsed");
    });
  }

  if (SERVER_LOG) {
    await test("the key server's log holds no minted key", [keys.length > 0 || undefined], () => {
      const log = fs.readFileSync(SERVER_LOG, "utf8");
      for (const { key } of keys) expect(!log.includes(key.slice(3, 48)), `the log holds the secret part of ${mask(key)}`);
      return `${log.split("\n").length} lines`;
    });
  }
}

main()
  .catch((e) => {
    failed++;
    out(`FAIL ${label} script: ${describeError(e)}`);
  })
  .finally(() => {
    out(`# ${label}: done, ${passed} passed, ${failed} failed`);
    // The SDK may leave retry timers behind; end now.
    process.exit(failed > 0 ? 1 : 0);
  });
