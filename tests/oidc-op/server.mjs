// A real OpenID provider for the OIDC provider tests: node-oidc-provider (OpenID Certified) on
// loopback, with users and passwords, a `groups` claim, PKCE required, refresh tokens (scope
// offline_access, OIDC Core §11) and RS256 keys generated at start.
//
//   node server.mjs CONFIG.json READY.json
//
// CONFIG.json: {"clients": [{client_id, client_secret?, redirect_uris, ...}], "users": {"alice":
// {"password": "...", "groups": ["mcp-readers"]}}}; both optional. Once listening, the program
// writes READY.json: {"issuer": "http://127.0.0.1:PORT", "admin": "http://127.0.0.1:PORT2"}.
//
// The admin port is a separate loopback listener for the tests only (JSON in and out):
//   PUT    /test/clients/{id}         register or replace a client (metadata as in CONFIG.json)
//   PUT    /test/users/{id}           create or replace a user {password, groups, email?, name?}
//   POST   /test/users/{id}/groups    {"groups": [...]}: what the next ID token / userinfo says
//   DELETE /test/users/{id}           the account is gone (refresh tokens stop working)
//   POST   /test/keys/rotate          a new signing key, published first; older keys stay in the JWKS
//   POST   /test/tamper               {"id_token": MODE}: the next token response's ID token is altered
//   POST   /test/outage               {"status": 503, "paths": ["/token"]} (paths optional; status 0 ends it)
//   POST   /test/settings             {"rotateRefreshToken": true}
//   POST   /test/reset                the initial users; no tampering, outage or refresh token rotation
//   GET    /test/stats                requests served per path
//
// Resource indicators (RFC 8707) are on: a client naming an https `resource` (with api:read or
// api:write) at sign-in gets, at the token endpoint, a JWT access token for it.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';

import { Provider } from 'oidc-provider';

import { memoryAdapter } from './memory_adapter.mjs';

const [configPath, readyPath] = process.argv.slice(2);
if (!configPath || !readyPath) {
  console.error('usage: node server.mjs CONFIG.json READY.json');
  process.exit(2);
}
const config = JSON.parse(fs.readFileSync(configPath, 'utf8'));
const HOST = '127.0.0.1';
const API_SCOPES = 'api:read api:write'; // the scopes of any resource (RFC 8707) a client names

const initialUsers = JSON.stringify(config.users ?? {
  alice: { password: 'alice-password', groups: ['mcp-readers', 'mcp-writers'] },
  bob: { password: 'bob-password', groups: ['mcp-readers'] },
  carol: { password: 'carol-password', groups: [] },
});
const users = new Map(Object.entries(JSON.parse(initialUsers)));
const staticClients = (config.clients ?? []).map(withClientDefaults);
const cookieKeys = [crypto.randomBytes(32).toString('base64url')];
const state = {
  keys: [newSigningKey()],
  tamper: null,
  outage: null,
  rotateRefreshToken: false,
  stats: {},
};

// Storage shared by every Provider instance this program builds (they are rebuilt to rotate
// keys), so sessions, grants, tokens and clients registered at run time survive a rotation.
// The adapter interface is oidc-provider's documented one.
const SharedAdapter = memoryAdapter({ tolerance: 15 });

function withClientDefaults(client) {
  return {
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: client.client_secret ? 'client_secret_basic' : 'none',
    ...client,
  };
}

function newSigningKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: crypto.randomUUID(), alg: 'RS256', use: 'sig' };
}

// -- accounts ------------------------------------------------------------------------------
async function findAccount(ctx, id) {
  if (!users.has(id)) {
    return undefined;
  }
  return {
    accountId: id,
    async claims(use) {
      const user = users.get(id) ?? { groups: [] };
      const claims = {
        sub: id,
        email: user.email ?? `${id}@example.test`,
        email_verified: true,
        name: user.name ?? id[0].toUpperCase() + id.slice(1),
        preferred_username: id,
        groups: [...user.groups],
      };
      if (use === 'userinfo') {
        // Nested, and only at the userinfo endpoint: shows where groups_from_userinfo reads.
        claims.realm_access = { roles: [...user.groups] };
      }
      return claims;
    },
  };
}

// -- interactions: a minimal login and consent UI ------------------------------------------
const page = (title, body) => `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${title}</title></head>
<body><h1>${title}</h1>${body}</body></html>`;
const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 65536) {
      throw new Error('body too large');
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function loginPage(uid, error) {
  return page('Sign in to the test OP', `
${error ? `<p id="error">${escape(error)}</p>` : ''}
<form id="login" method="post" action="/interaction/${uid}/login">
  <input type="text" name="login" autofocus><input type="password" name="password">
  <button type="submit">Sign in</button>
</form>
<form id="abort" method="post" action="/interaction/${uid}/abort"><button type="submit">Cancel</button></form>`);
}

function consentPage(uid, clientId, scopes) {
  return page('Authorize', `
<p>${escape(clientId)} asks for: ${escape(scopes)}</p>
<form id="consent" method="post" action="/interaction/${uid}/confirm"><button type="submit">Allow</button></form>
<form id="abort" method="post" action="/interaction/${uid}/abort"><button type="submit">Cancel</button></form>`);
}

async function interactions(ctx, next) {
  const match = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login|confirm|abort))?$/.exec(ctx.path);
  if (!match) {
    return next();
  }
  const [, uid, action] = match;
  const provider = ctx.app;
  ctx.set('cache-control', 'no-store');
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  if (details.uid !== uid) {
    ctx.throw(400, 'interaction mismatch');
  }
  const { prompt, params, session } = details;
  let result;
  if (ctx.method === 'GET' && !action) {
    ctx.type = 'html';
    ctx.body = prompt.name === 'login'
      ? loginPage(uid)
      : consentPage(uid, params.client_id, params.scope ?? '');
    return undefined;
  }
  if (ctx.method !== 'POST' || !action) {
    ctx.throw(405);
  }
  const form = new URLSearchParams(await readBody(ctx.req));
  if (action === 'abort') {
    result = { error: 'access_denied', error_description: 'End-User aborted interaction' };
  } else if (action === 'login') {
    const login = form.get('login') ?? '';
    const user = users.get(login);
    const given = Buffer.from(form.get('password') ?? '');
    const expected = Buffer.from(user?.password ?? crypto.randomBytes(16).toString('hex'));
    if (!user || given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) {
      ctx.status = 401;
      ctx.type = 'html';
      ctx.body = loginPage(uid, 'Invalid username or password.');
      return undefined;
    }
    result = { login: { accountId: login } };
  } else {
    if (prompt.name !== 'consent') {
      ctx.throw(400, 'not a consent prompt');
    }
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) {
      grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
    }
    if (prompt.details.missingOIDCClaims) {
      grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    }
    for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    result = { consent: { grantId: await grant.save() } };
  }
  const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, {
    mergeWithLastSubmission: action === 'confirm',
  });
  ctx.status = 303;
  ctx.redirect(returnTo);
  return undefined;
}

// -- test hooks that run inside the provider ------------------------------------------------
async function countAndFail(ctx, next) {
  state.stats[ctx.path] = (state.stats[ctx.path] ?? 0) + 1;
  const outage = state.outage;
  if (outage && (!outage.paths || outage.paths.includes(ctx.path))) {
    ctx.status = outage.status;
    ctx.body = { error: 'temporarily_unavailable', error_description: 'test outage' };
    return undefined;
  }
  await next();
  if (state.tamper && ctx.path === '/token' && ctx.status === 200 && ctx.body?.id_token) {
    const mode = state.tamper;
    state.tamper = null;
    ctx.body = { ...ctx.body, id_token: await tamper(ctx.body.id_token, mode) };
  }
  return undefined;
}

const b64 = (value) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');

function sign(header, claims, key) {
  const input = `${b64(header)}.${b64(claims)}`;
  if (header.alg === 'none') {
    return `${input}.`;
  }
  if (header.alg === 'HS256') {
    return `${input}.${crypto.createHmac('sha256', key).update(input).digest('base64url')}`;
  }
  const privateKey = crypto.createPrivateKey({ key, format: 'jwk' });
  return `${input}.${crypto.sign('sha256', Buffer.from(input), privateKey).toString('base64url')}`;
}

const TAMPER_MODES = new Set([
  'wrong_audience', 'extra_audience_with_azp', 'extra_audience_without_azp', 'wrong_azp', 'wrong_issuer',
  'expired', 'issued_in_future', 'no_nonce', 'wrong_nonce', 'no_subject', 'bad_signature', 'unknown_key',
  'alg_none', 'hs256_client_secret',
]);

async function tamper(idToken, mode) {
  const [rawHeader, rawClaims, signature] = idToken.split('.');
  const header = JSON.parse(Buffer.from(rawHeader, 'base64url'));
  const claims = JSON.parse(Buffer.from(rawClaims, 'base64url'));
  const key = state.keys.find((k) => k.kid === header.kid) ?? state.keys[0];
  const now = Math.floor(Date.now() / 1000);
  switch (mode) {
    case 'wrong_audience': return sign(header, { ...claims, aud: 'someone-else' }, key);
    case 'extra_audience_with_azp': return sign(header, { ...claims, aud: [claims.aud, 'other-rp'], azp: claims.aud }, key);
    case 'extra_audience_without_azp': {
      const { azp, ...rest } = claims;
      return sign(header, { ...rest, aud: [claims.aud, 'other-rp'] }, key);
    }
    case 'wrong_azp': return sign(header, { ...claims, aud: [claims.aud, 'other-rp'], azp: 'other-rp' }, key);
    case 'wrong_issuer': return sign(header, { ...claims, iss: `${claims.iss}/other` }, key);
    case 'expired': return sign(header, { ...claims, iat: now - 900, exp: now - 300 }, key);
    case 'issued_in_future': return sign(header, { ...claims, iat: now + 300, exp: now + 900 }, key);
    case 'no_nonce': {
      const { nonce, ...rest } = claims;
      return sign(header, rest, key);
    }
    case 'wrong_nonce': return sign(header, { ...claims, nonce: 'not-the-nonce' }, key);
    case 'no_subject': {
      const { sub, ...rest } = claims;
      return sign(header, rest, key);
    }
    case 'bad_signature': {
      const bytes = Buffer.from(signature, 'base64url');
      bytes[0] ^= 0xff;
      return `${rawHeader}.${rawClaims}.${bytes.toString('base64url')}`;
    }
    case 'unknown_key': return sign({ ...header, kid: `rogue-${crypto.randomUUID()}` }, claims, newSigningKey());
    case 'alg_none': return sign({ alg: 'none', typ: header.typ }, claims, null);
    case 'hs256_client_secret': {
      const client = await provider.Client.find(claims.aud);
      return sign({ alg: 'HS256', typ: header.typ }, claims, client?.clientSecret ?? 'secret');
    }
    default: throw new Error(`unknown tamper mode ${mode}`);
  }
}

// -- the provider (rebuilt on key rotation; storage and clients live on in the adapter) ------
let issuer;
let provider;
let handler;

function build() {
  const next = new Provider(issuer, {
    adapter: SharedAdapter,
    clients: staticClients,
    findAccount,
    jwks: { keys: state.keys },
    cookies: { keys: cookieKeys },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'preferred_username'],
      groups: ['groups', 'realm_access'],
    },
    scopes: ['openid', 'offline_access'],
    conformIdTokenClaims: false, // groups in the ID token, as most OPs do with a groups scope
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: false },
      rpInitiatedLogout: {
        enabled: true,
        logoutSource(ctx, form) {
          ctx.body = page('Sign out of the test OP', `${form}
<button type="submit" form="op.logoutForm" name="logout" value="yes">Sign out</button>`);
        },
        postLogoutSuccessSource(ctx) {
          ctx.body = page('Signed out', '<p>You are signed out of the test OP.</p>');
        },
      },
      // OpenID Connect Back-Channel Logout 1.0: a client registered with backchannel_logout_uri
      // (and backchannel_logout_session_required, for sid in its ID and logout tokens) gets a
      // signed logout token POSTed when the user signs out here (issue 15).
      backchannelLogout: { enabled: true },
      revocation: { enabled: true },
      // RFC 8707: an API's access token (a JWT whose aud is the resource) for a resource named
      // at sign-in, at the code exchange or at a refresh (delegated access, issue 14).
      resourceIndicators: {
        enabled: true,
        getResourceServerInfo: (ctx, resource) => ({
          scope: API_SCOPES,
          audience: resource,
          accessTokenFormat: 'jwt',
          accessTokenTTL: 600,
        }),
      },
    },
    rotateRefreshToken: () => state.rotateRefreshToken,
    // The library refuses to connect to special-use addresses (SSRF protection); the relying
    // parties of the tests (back-channel logout receivers) listen on loopback.
    fetch: (url, options) => {
      const { dispatcher: _loopbackAllowed, ...rest } = options;
      return globalThis.fetch(url, rest);
    },
    ttl: {
      AccessToken: 600,
      AuthorizationCode: 60,
      IdToken: 600,
      Interaction: 600,
      RefreshToken: 86400,
      Session: 3600,
      Grant: 86400,
    },
    renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = page('OP error', Object.entries(out).map(([k, v]) => `<p>${escape(k)}: ${escape(v)}</p>`).join(''));
    },
  });
  next.use(countAndFail);
  next.use(interactions);
  provider = next;
  handler = next.callback();
}

// -- the admin listener ----------------------------------------------------------------------
async function admin(req, res) {
  const reply = (status, body) => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body ?? {}));
  };
  try {
    const url = new URL(req.url, 'http://admin');
    const body = req.method === 'GET' || req.method === 'DELETE' ? {} : JSON.parse((await readBody(req)) || '{}');
    let m;
    if (req.method === 'PUT' && (m = /^\/test\/clients\/([^/]+)$/.exec(url.pathname))) {
      const metadata = withClientDefaults({ ...body, client_id: decodeURIComponent(m[1]) });
      await provider.Client.adapter.upsert(metadata.client_id, metadata);
      const found = await provider.Client.find(metadata.client_id);
      return reply(found ? 200 : 400, { client_id: metadata.client_id });
    }
    if (req.method === 'PUT' && (m = /^\/test\/users\/([^/]+)$/.exec(url.pathname))) {
      users.set(decodeURIComponent(m[1]), { groups: [], ...body });
      return reply(200);
    }
    if (req.method === 'POST' && (m = /^\/test\/users\/([^/]+)\/groups$/.exec(url.pathname))) {
      const user = users.get(decodeURIComponent(m[1]));
      if (!user) {
        return reply(404, { error: 'no such user' });
      }
      user.groups = [...body.groups];
      return reply(200, { groups: user.groups });
    }
    if (req.method === 'DELETE' && (m = /^\/test\/users\/([^/]+)$/.exec(url.pathname))) {
      return reply(users.delete(decodeURIComponent(m[1])) ? 200 : 404);
    }
    if (req.method === 'POST' && url.pathname === '/test/keys/rotate') {
      state.keys = [newSigningKey(), ...state.keys];
      build();
      return reply(200, { kids: state.keys.map((k) => k.kid) });
    }
    if (req.method === 'POST' && url.pathname === '/test/tamper') {
      if (body.id_token && !TAMPER_MODES.has(body.id_token)) {
        return reply(400, { error: `unknown tamper mode ${body.id_token}` });
      }
      state.tamper = body.id_token ?? null;
      return reply(200);
    }
    if (req.method === 'POST' && url.pathname === '/test/outage') {
      state.outage = body.status ? { status: body.status, paths: body.paths ?? null } : null;
      return reply(200);
    }
    if (req.method === 'POST' && url.pathname === '/test/settings') {
      if ('rotateRefreshToken' in body) {
        state.rotateRefreshToken = Boolean(body.rotateRefreshToken);
      }
      return reply(200);
    }
    if (req.method === 'POST' && url.pathname === '/test/reset') {
      users.clear();
      for (const [id, user] of Object.entries(JSON.parse(initialUsers))) {
        users.set(id, user);
      }
      Object.assign(state, { tamper: null, outage: null, rotateRefreshToken: false });
      return reply(200);
    }
    if (req.method === 'GET' && url.pathname === '/test/stats') {
      return reply(200, state.stats);
    }
    return reply(404, { error: 'not found' });
  } catch (error) {
    return reply(400, { error: String(error?.message ?? error) });
  }
}

function listen(server) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, HOST, () => resolve(server.address().port));
  });
}

const opServer = http.createServer((req, res) => handler(req, res));
const adminServer = http.createServer((req, res) => {
  admin(req, res);
});
const opPort = await listen(opServer);
const adminPort = await listen(adminServer);
issuer = `http://${HOST}:${opPort}`;
build();

const ready = { issuer, admin: `http://${HOST}:${adminPort}`, pid: process.pid };
fs.writeFileSync(`${readyPath}.tmp`, JSON.stringify(ready));
fs.renameSync(`${readyPath}.tmp`, readyPath);

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    opServer.close();
    adminServer.close();
    process.exit(0);
  });
}
