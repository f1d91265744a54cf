// A real OAuth 2.1 / OpenID Connect authorization server for the gateway's tests:
// node-oidc-provider (pinned in package.json) on 127.0.0.1, driven by testbed/authserver.py.
//
//   node authserver.mjs --port PORT [--config FILE]      (or env PORT, AUTHSERVER_CONFIG)
//
// Issuer http://127.0.0.1:PORT. What oidc-provider serves: discovery (both
// /.well-known/openid-configuration and RFC 8414 /.well-known/oauth-authorization-server),
// /jwks, /auth (authorization code + PKCE S256 only), /token (authorization_code,
// refresh_token, client_credentials, and RFC 8693 token exchange registered below), /reg
// (open dynamic client registration), /token/introspection, /token/revocation, /me.
// Access tokens for a resource (RFC 8707 `resource`) are JWTs (typ at+jwt) whose aud is
// the resource; any resource matching `resourcePattern` (by default any loopback http(s)
// URL) is accepted.
//
// Around it, on the same port, loopback only and TEST ONLY:
//   GET/POST /interaction/:uid  login and consent without a browser (JSON with
//                               Accept: application/json; POST prompt=login&login=USER,
//                               prompt=consent, or prompt=abort)
//   GET  /__test__/health       200 once listening
//   GET  /__test__/keys         kids: published (in the JWKS), retired, foreign
//   POST /__test__/rotate       {"alg": "RS256", "keepOld": true} -> {"kid": new kid}
//   POST /__test__/sign         {"claims": {...}, "alg", "key", "kid", "header", ...} -> {"token"}
//   GET/POST /__test__/settings {"accessTokenTtl": seconds, "accessTokenAlg": "RS256"}
//
// The config file (JSON, all optional): `clients` (oidc-provider client metadata, registered
// statically), `scopes` (resource scopes, default mcp:tools mcp:admin), `accessTokenTtl`
// (seconds, default 300), `accessTokenAlg` (default RS256), `keyAlgs` (the first keys,
// default RS256 and ES256), `resourcePattern` (a RegExp source), `defaultResource`,
// `issuer`, `port`, and `stateDir`: keys, settings and dynamically registered clients are
// kept there, so a server stopped and started again on the same port comes back with them.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';

import Provider, { errors } from 'oidc-provider';

const EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const JWT_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
const EXCHANGEABLE = new Set([ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE]);
const LOOPBACK_RESOURCES = '^https?://(127\\.0\\.0\\.1|localhost|\\[::1\\])(:[0-9]+)?(/[^#]*)?$';
const BODY_LIMIT = 1 << 20;

// An answer of the test-only endpoints other than 200 (oidc-provider has its own errors).
class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// ------------------------------------------------------------------ configuration

function argument(name) {
  const index = process.argv.indexOf(`--${name}`);
  return index === -1 ? undefined : process.argv[index + 1];
}

const configFile = argument('config') ?? process.env.AUTHSERVER_CONFIG;
const config = configFile ? JSON.parse(fs.readFileSync(configFile, 'utf8')) : {};
const port = Number(argument('port') ?? process.env.PORT ?? config.port);
if (!Number.isInteger(port) || port <= 0) {
  throw new Error('authserver: give the port with --port, PORT or the config file');
}
const issuer = config.issuer ?? `http://127.0.0.1:${port}`;
const resourceScopes = config.scopes ?? ['mcp:tools', 'mcp:admin'];
const resourcePattern = new RegExp(config.resourcePattern ?? LOOPBACK_RESOURCES);
const stateDir = config.stateDir;
const stateFile = stateDir && path.join(stateDir, 'state.json');
const clientsFile = stateDir && path.join(stateDir, 'clients.json');

function readJson(file, fallback) {
  if (!file || !fs.existsSync(file)) return fallback;
  return JSON.parse(fs.readFileSync(file, 'utf8'));
}

function writeJson(file, value) {
  if (!file) return;
  const temporary = `${file}.tmp`;
  fs.writeFileSync(temporary, JSON.stringify(value));
  fs.renameSync(temporary, file);
}

// ------------------------------------------------------------------ signing keys

const CURVES = { ES256: 'P-256', ES384: 'P-384', ES512: 'P-521' };
const DIGESTS = { 256: 'sha256', 384: 'sha384', 512: 'sha512' };

function keyType(alg) {
  if (/^(RS|PS)(256|384|512)$/.test(alg)) return 'RSA';
  if (CURVES[alg]) return 'EC';
  if (alg === 'EdDSA' || alg === 'Ed25519') return 'OKP';
  throw new HttpError(400, `unsupported signing algorithm ${alg}`);
}

function generateKey(alg) {
  let pair;
  switch (keyType(alg)) {
    case 'RSA': pair = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }); break;
    case 'EC': pair = crypto.generateKeyPairSync('ec', { namedCurve: CURVES[alg] }); break;
    default: pair = crypto.generateKeyPairSync('ed25519');
  }
  const jwk = pair.privateKey.export({ format: 'jwk' });
  const kid = `${alg.toLowerCase()}-${crypto.randomBytes(6).toString('base64url')}`;
  return { ...jwk, alg, use: 'sig', kid };
}

// published: in the JWKS, signing order (first of an alg signs); retired: rotated out,
// no longer verifiable; foreign: one per alg, never published (an unknown signer).
const state = readJson(stateFile, null) ?? {
  cookieKeys: [crypto.randomBytes(32).toString('base64url')],
  keys: {
    published: (config.keyAlgs ?? ['RS256', 'ES256']).map(generateKey),
    retired: [],
    foreign: {},
  },
  settings: {
    accessTokenTtl: config.accessTokenTtl ?? 300,
    accessTokenAlg: config.accessTokenAlg ?? 'RS256',
    defaultResource: config.defaultResource ?? null,
  },
};

function saveState() {
  writeJson(stateFile, state);
}

function findKey(kid) {
  const { published, retired, foreign } = state.keys;
  return [...published, ...retired, ...Object.values(foreign)].find((key) => key.kid === kid);
}

function currentKey(alg) {
  const kty = keyType(alg);
  const key = state.keys.published.find((k) => k.alg === alg)
    ?? state.keys.published.find((k) => k.kty === kty && (kty !== 'EC' || k.crv === CURVES[alg]));
  if (!key) throw new HttpError(400, `no published key for ${alg}`);
  return key;
}

function foreignKey(alg) {
  state.keys.foreign[alg] ??= generateKey(alg);
  saveState();
  return state.keys.foreign[alg];
}

// ------------------------------------------------------------------ JWS (node:crypto)

const b64url = (value) => Buffer.from(value).toString('base64url');

function signatureOptions(alg, keyObject) {
  const bits = alg.slice(-3);
  if (alg.startsWith('RS')) return [DIGESTS[bits], keyObject];
  if (alg.startsWith('PS')) {
    return [DIGESTS[bits], {
      key: keyObject,
      padding: crypto.constants.RSA_PKCS1_PSS_PADDING,
      saltLength: crypto.constants.RSA_PSS_SALTLEN_DIGEST,
    }];
  }
  if (alg.startsWith('ES')) return [DIGESTS[bits], { key: keyObject, dsaEncoding: 'ieee-p1363' }];
  if (alg === 'EdDSA' || alg === 'Ed25519') return [null, keyObject];
  throw new errors.InvalidRequest(`unsupported alg ${alg}`);
}

function signJws(header, payload, alg, { jwk, secret }) {
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(payload))}`;
  if (alg === 'none') return `${input}.`;
  let signature;
  if (/^HS(256|384|512)$/.test(alg)) {
    signature = crypto.createHmac(DIGESTS[alg.slice(-3)], secret).update(input).digest();
  } else {
    const [digest, key] = signatureOptions(alg, crypto.createPrivateKey({ key: jwk, format: 'jwk' }));
    signature = crypto.sign(digest, Buffer.from(input), key);
  }
  return `${input}.${signature.toString('base64url')}`;
}

// A JWT this provider signed with a published key: its claims, or undefined.
function verifyJws(token) {
  const parts = token.split('.');
  if (parts.length !== 3) return undefined;
  let header;
  let payload;
  try {
    header = JSON.parse(Buffer.from(parts[0], 'base64url'));
    payload = JSON.parse(Buffer.from(parts[1], 'base64url'));
  } catch {
    return undefined;
  }
  const { alg, kid } = header ?? {};
  if (typeof alg !== 'string' || alg === 'none' || alg.startsWith('HS')) return undefined;
  const candidates = state.keys.published.filter((k) => (kid === undefined || k.kid === kid)
    && (k.alg === undefined || k.alg === alg));
  for (const jwk of candidates) {
    try {
      const { d, p, q, dp, dq, qi, ...publicJwk } = jwk;
      const keyObject = crypto.createPublicKey({ key: publicJwk, format: 'jwk' });
      const [digest, key] = signatureOptions(alg, keyObject);
      const signed = Buffer.from(`${parts[0]}.${parts[1]}`);
      if (crypto.verify(digest, signed, key, Buffer.from(parts[2], 'base64url'))) return payload;
    } catch {
      // wrong key type for alg: try the next
    }
  }
  return undefined;
}

// ------------------------------------------------------------------ storage adapter

// One in-memory store for every model (shared by each Provider instance a key rotation
// makes); registered clients are also written to stateDir so they survive a restart.
const store = new Map();
const grantMembers = new Map();
const sessionUids = new Map();
const userCodes = new Map();

function stored(key) {
  const entry = store.get(key);
  if (entry === undefined) return undefined;
  if (entry.expiresAt !== undefined && entry.expiresAt <= Date.now()) {
    store.delete(key);
    return undefined;
  }
  return entry.payload;
}

function persistClients() {
  if (!clientsFile) return;
  const clients = {};
  for (const [key, entry] of store) {
    if (key.startsWith('Client:')) clients[key.slice('Client:'.length)] = entry.payload;
  }
  writeJson(clientsFile, clients);
}

for (const [id, payload] of Object.entries(readJson(clientsFile, {}))) {
  store.set(`Client:${id}`, { payload, expiresAt: undefined });
}

setInterval(() => {
  const now = Date.now();
  for (const [key, entry] of store) {
    if (entry.expiresAt !== undefined && entry.expiresAt <= now) store.delete(key);
  }
}, 60_000).unref();

class TestAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : undefined;
    store.set(key, { payload, expiresAt });
    if (payload.grantId) {
      if (!grantMembers.has(payload.grantId)) grantMembers.set(payload.grantId, new Set());
      grantMembers.get(payload.grantId).add(key);
    }
    if (this.model === 'Session' && payload.uid) sessionUids.set(payload.uid, id);
    if (payload.userCode) userCodes.set(payload.userCode, id);
    if (this.model === 'Client') persistClients();
  }

  async find(id) {
    return stored(this.key(id));
  }

  async findByUid(uid) {
    const id = sessionUids.get(uid);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = userCodes.get(userCode);
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const payload = stored(this.key(id));
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    store.delete(this.key(id));
    if (this.model === 'Client') persistClients();
  }

  async revokeByGrantId(grantId) {
    for (const key of grantMembers.get(grantId) ?? []) store.delete(key);
    grantMembers.delete(grantId);
  }
}

// ------------------------------------------------------------------ the provider

function resourceServerInfo(indicator) {
  if (!resourcePattern.test(indicator)) {
    throw new errors.InvalidTarget(`resource ${indicator} is not served by this test server`);
  }
  return {
    scope: resourceScopes.join(' '),
    audience: indicator,
    accessTokenTTL: state.settings.accessTokenTtl,
    // A resource with an "/opaque/" path segment gets opaque tokens (for introspection).
    accessTokenFormat: new URL(indicator).pathname.includes('/opaque/') ? 'opaque' : 'jwt',
    jwt: { sign: { alg: state.settings.accessTokenAlg } },
  };
}

// Extra claims for the token a token-exchange request is issuing (keyed by its context).
const exchangeClaims = new WeakMap();

function makeProvider() {
  const provider = new Provider(issuer, {
    adapter: TestAdapter,
    clients: config.clients ?? [],
    jwks: { keys: state.keys.published },
    cookies: { keys: state.cookieKeys },
    scopes: ['openid', 'offline_access', ...resourceScopes],
    responseTypes: ['code'],
    pkce: { required: () => true },
    clientDefaults: {
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: 'RS256',
    },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      registration: { enabled: true, initialAccessToken: false },
      introspection: { enabled: true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (_ctx, _client, oneOf) => oneOf
          ?? state.settings.defaultResource ?? undefined,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, indicator) => resourceServerInfo(indicator),
      },
    },
    interactions: {
      url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
    },
    findAccount: async (_ctx, accountId) => ({
      accountId,
      claims: async () => ({ sub: accountId }),
    }),
    extraTokenClaims: async (ctx) => exchangeClaims.get(ctx),
    ttl: {
      AccessToken: (_ctx, token) => token.resourceServer?.accessTokenTTL
        ?? state.settings.accessTokenTtl,
      ClientCredentials: (_ctx, token) => token.resourceServer?.accessTokenTTL
        ?? state.settings.accessTokenTtl,
      AuthorizationCode: 60,
      IdToken: 600,
      Interaction: 600,
      Grant: 3600,
      Session: 3600,
      RefreshToken: 86400,
    },
    renderError: async (ctx, out) => {
      ctx.type = 'json';
      ctx.body = out;
    },
  });
  provider.registerGrantType(
    EXCHANGE,
    tokenExchange,
    ['subject_token', 'subject_token_type', 'actor_token', 'actor_token_type',
      'requested_token_type', 'audience', 'resource', 'scope'],
    ['resource', 'audience'],
  );
  provider.on('server_error', (_ctx, err) => console.error('server_error', err));
  return provider;
}

// The claims of a token this provider issued (a JWT signed with a published key, or an
// opaque one it stored), if still valid.
async function subjectOf(provider, token) {
  const now = Math.floor(Date.now() / 1000);
  const claims = verifyJws(token);
  if (claims) {
    if (claims.iss !== issuer) return undefined;
    if (typeof claims.exp === 'number' && claims.exp <= now) return undefined;
    if (typeof claims.nbf === 'number' && claims.nbf > now) return undefined;
    return claims;
  }
  const found = await provider.AccessToken.find(token) ?? await provider.ClientCredentials.find(token);
  if (!found || found.isExpired) return undefined;
  return { sub: found.accountId ?? found.clientId, scope: found.scope, client_id: found.clientId };
}

function single(value, name) {
  if (Array.isArray(value)) {
    if (value.length > 1) throw new errors.InvalidTarget(`only one ${name} value is supported`);
    return value[0];
  }
  return value;
}

// RFC 8693: a confidential client trades a token this server issued (subject_token) for
// an access token for `resource` (or `audience`), same `sub`, scope at most the subject's,
// with an `act` claim naming the client (nesting the subject token's own `act`).
async function tokenExchange(ctx) {
  const { client, params, provider } = ctx.oidc;
  if (client.clientAuthMethod === 'none') {
    throw new errors.UnauthorizedClient('token exchange is for confidential clients');
  }
  for (const name of ['subject_token', 'subject_token_type']) {
    if (!params[name]) throw new errors.InvalidRequest(`missing required parameter '${name}'`);
  }
  if (!EXCHANGEABLE.has(params.subject_token_type)) {
    throw new errors.InvalidRequest('unsupported subject_token_type');
  }
  if (params.requested_token_type && !EXCHANGEABLE.has(params.requested_token_type)) {
    throw new errors.InvalidRequest('unsupported requested_token_type');
  }
  if (params.actor_token) {
    throw new errors.InvalidRequest('actor_token is not supported by this test server');
  }
  const subject = await subjectOf(provider, params.subject_token);
  if (!subject?.sub) throw new errors.InvalidGrant('subject_token is invalid or expired');

  const resource = single(params.resource, 'resource');
  const audience = single(params.audience, 'audience');
  const target = resource ?? audience;
  if (!target) throw new errors.InvalidTarget('resource or audience is required');
  const info = resource || resourcePattern.test(target)
    ? resourceServerInfo(target)
    : { ...resourceServerInfo(issuer), audience: target };

  const granted = new Set(String(subject.scope ?? '').split(' ').filter(Boolean));
  let scopes = [...granted];
  if (params.scope) {
    scopes = params.scope.split(' ').filter(Boolean);
    const excess = scopes.filter((scope) => !granted.has(scope));
    if (excess.length) {
      throw new errors.InvalidScope('requested scope exceeds the subject token\'s', excess.join(' '));
    }
  }
  scopes = scopes.filter((scope) => resourceScopes.includes(scope));

  const token = new provider.AccessToken({
    accountId: String(subject.sub),
    client,
    gty: EXCHANGE,
    scope: scopes.join(' ') || undefined,
  });
  token.resourceServer = new provider.ResourceServer(target, info);
  exchangeClaims.set(ctx, {
    act: { sub: client.clientId, ...(subject.act ? { act: subject.act } : {}) },
  });
  ctx.oidc.entity('AccessToken', token);
  const value = await token.save();
  ctx.body = {
    access_token: value,
    issued_token_type: ACCESS_TOKEN_TYPE,
    token_type: 'Bearer',
    expires_in: token.expiration,
    scope: token.scope,
  };
}

let provider = makeProvider();
let providerCallback = provider.callback();

function rebuildProvider() {
  provider = makeProvider();
  providerCallback = provider.callback();
}

// ------------------------------------------------------------------ HTTP helpers

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > BODY_LIMIT) throw new HttpError(413, 'body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function readJsonBody(req) {
  const text = await readBody(req);
  if (!text) return {};
  try {
    return JSON.parse(text);
  } catch {
    throw new HttpError(400, 'the body is not JSON');
  }
}

function send(res, status, body, type = 'application/json') {
  const text = type === 'application/json' ? JSON.stringify(body) : body;
  res.writeHead(status, {
    'content-type': `${type}; charset=utf-8`,
    'cache-control': 'no-store',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

const htmlEscape = (value) => String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

// ------------------------------------------------------------------ interactions

function interactionPage(uid, prompt, params) {
  const action = `/interaction/${encodeURIComponent(uid)}`;
  const fields = prompt === 'login'
    ? '<label>User <input name="login" value="alice" autofocus></label>'
    : `<p>${htmlEscape(params.client_id)} asks for: ${htmlEscape(params.scope ?? '')}
       ${htmlEscape(params.resource ?? '')}</p>`;
  return `<!doctype html><html><head><title>test authorization server: ${prompt}</title></head>
<body><h1>${prompt === 'login' ? 'Sign in' : 'Authorize'}</h1>
<form method="post" action="${action}"><input type="hidden" name="prompt" value="${prompt}">
${fields}<button type="submit">${prompt === 'login' ? 'Sign in' : 'Allow'}</button></form>
<form method="post" action="${action}"><input type="hidden" name="prompt" value="abort">
<button type="submit">Deny</button></form></body></html>`;
}

async function interaction(req, res, uid) {
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    throw new HttpError(400, `no such interaction: ${err.error_description ?? err.message}`);
  }
  if (details.uid !== uid) throw new HttpError(400, 'interaction mismatch');
  const { prompt, params, session, grantId } = details;

  if (req.method === 'GET') {
    if ((req.headers.accept ?? '').includes('application/json')) {
      send(res, 200, {
        uid,
        prompt: prompt.name,
        reasons: prompt.reasons,
        details: prompt.details,
        params,
        account: session?.accountId ?? null,
      });
    } else {
      send(res, 200, interactionPage(uid, prompt.name, params), 'text/html');
    }
    return;
  }
  if (req.method !== 'POST') throw new HttpError(405, 'GET or POST');

  const form = new URLSearchParams(await readBody(req));
  switch (form.get('prompt')) {
    case 'abort':
      await provider.interactionFinished(req, res, {
        error: 'access_denied',
        error_description: 'End-User aborted interaction',
      }, { mergeWithLastSubmission: false });
      return;
    case 'login': {
      if (prompt.name !== 'login') throw new HttpError(400, `the prompt is ${prompt.name}`);
      const accountId = form.get('login') || 'alice';
      await provider.interactionFinished(req, res, { login: { accountId } }, {
        mergeWithLastSubmission: false,
      });
      return;
    }
    case 'consent': {
      if (prompt.name !== 'consent') throw new HttpError(400, `the prompt is ${prompt.name}`);
      const grant = grantId
        ? await provider.Grant.find(grantId)
        : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
      const { missingOIDCScope, missingOIDCClaims, missingResourceScopes } = prompt.details;
      if (missingOIDCScope) grant.addOIDCScope(missingOIDCScope.join(' '));
      if (missingOIDCClaims) grant.addOIDCClaims(missingOIDCClaims);
      for (const [indicator, scopes] of Object.entries(missingResourceScopes ?? {})) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
      await provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } }, {
        mergeWithLastSubmission: true,
      });
      return;
    }
    default:
      throw new HttpError(400, 'prompt must be login, consent or abort');
  }
}

// ------------------------------------------------------------------ test-only admin API

function keyInfo(key) {
  return { kid: key.kid, alg: key.alg, kty: key.kty };
}

function rotate({ alg = 'RS256', keepOld = true } = {}) {
  keyType(alg);
  const fresh = generateKey(alg);
  const { published, retired } = state.keys;
  const replaced = published.filter((key) => key.alg === alg);
  state.keys.published = [fresh, ...(keepOld ? published : published.filter((k) => k.alg !== alg))];
  if (!keepOld) state.keys.retired = [...replaced, ...retired];
  saveState();
  rebuildProvider();
  return { kid: fresh.kid, retired: keepOld ? [] : replaced.map((key) => key.kid) };
}

function sign(body) {
  const {
    claims = {}, alg = 'RS256', key = 'current', header = {}, secret, defaults = true,
    expiresIn = 300,
  } = body;
  let jwk;
  if (alg === 'none') {
    jwk = undefined;
  } else if (/^HS/.test(alg)) {
    if (typeof secret !== 'string') throw new HttpError(400, `${alg} needs a "secret"`);
  } else if (key === 'current') {
    jwk = currentKey(alg);
  } else if (key === 'foreign') {
    jwk = foreignKey(alg);
  } else {
    jwk = findKey(key);
    if (!jwk) throw new HttpError(400, `no key with kid ${key}`);
  }
  const now = Math.floor(Date.now() / 1000);
  const payload = defaults
    ? { iss: issuer, iat: now, exp: now + expiresIn, jti: crypto.randomUUID() }
    : {};
  for (const [name, value] of Object.entries(claims)) {
    if (value === null) delete payload[name];
    else payload[name] = value;
  }
  const fullHeader = { alg, typ: 'at+jwt', ...(jwk ? { kid: jwk.kid } : {}) };
  if ('kid' in body) fullHeader.kid = body.kid;
  for (const [name, value] of Object.entries(header)) fullHeader[name] = value;
  for (const [name, value] of Object.entries(fullHeader)) {
    if (value === null || value === undefined) delete fullHeader[name];
  }
  return { token: signJws(fullHeader, payload, alg, { jwk, secret }), header: fullHeader, claims: payload };
}

function settings(body) {
  if (body.accessTokenTtl !== undefined) {
    if (!Number.isInteger(body.accessTokenTtl) || body.accessTokenTtl <= 0) {
      throw new HttpError(400, 'accessTokenTtl must be a positive integer');
    }
    state.settings.accessTokenTtl = body.accessTokenTtl;
  }
  if (body.accessTokenAlg !== undefined) {
    currentKey(body.accessTokenAlg);
    state.settings.accessTokenAlg = body.accessTokenAlg;
  }
  if (body.defaultResource !== undefined) state.settings.defaultResource = body.defaultResource;
  saveState();
  return state.settings;
}

async function admin(req, res, route) {
  const address = req.socket.remoteAddress ?? '';
  if (!['127.0.0.1', '::1', '::ffff:127.0.0.1'].includes(address)) {
    throw new HttpError(403, 'test endpoints answer loopback callers only');
  }
  const post = req.method === 'POST';
  switch (`${req.method} ${route}`) {
    case 'GET health':
      return send(res, 200, { ok: true, issuer });
    case 'GET keys':
      return send(res, 200, {
        published: state.keys.published.map(keyInfo),
        retired: state.keys.retired.map(keyInfo),
        foreign: Object.values(state.keys.foreign).map(keyInfo),
      });
    case 'POST rotate':
      return send(res, 200, rotate(await readJsonBody(req)));
    case 'POST sign':
      return send(res, 200, sign(await readJsonBody(req)));
    case 'GET settings':
    case 'POST settings':
      return send(res, 200, settings(post ? await readJsonBody(req) : {}));
    default:
      throw new HttpError(404, `no test endpoint ${req.method} /__test__/${route}`);
  }
}

// ------------------------------------------------------------------ the server

const server = http.createServer((req, res) => {
  const { pathname } = new URL(req.url, issuer);
  const handle = async () => {
    if (pathname.startsWith('/__test__/')) return admin(req, res, pathname.slice('/__test__/'.length));
    const match = /^\/interaction\/([^/]+)$/.exec(pathname);
    if (match) return interaction(req, res, decodeURIComponent(match[1]));
    return providerCallback(req, res);
  };
  handle().catch((err) => {
    const status = err instanceof HttpError ? err.status : (err.statusCode ?? 500);
    if (status >= 500) console.error(err);
    if (!res.headersSent) {
      const error = err.error ?? ({ 404: 'not_found', 405: 'method_not_allowed' }[status]
        ?? (status >= 500 ? 'server_error' : 'invalid_request'));
      send(res, status, { error, error_description: err.message });
    } else {
      res.destroy();
    }
  });
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  });
}

saveState();
server.listen(port, '127.0.0.1', () => {
  console.log('ready');
});
