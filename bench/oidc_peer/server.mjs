// node-oidc-provider as the peer of bench/compare.py: refresh-token rotation, RFC 9068 JWT access
// tokens signed ES256 for one resource (the resource indicators feature), a public client allowed
// the authorization_code and refresh_token grants with PKCE. Loopback only; no test hooks.
//
//   node bench/oidc_peer/server.mjs PORT RESOURCE REDIRECT_URI
//
// oidc-provider comes from the test OP's node_modules (`make node-deps`), or from the directory in
// OIDC_PROVIDER_DIR. Storage is an in-memory adapter (oidc-provider's documented adapter interface;
// its built-in one is an LRU of 1,000 entries, too small for a benchmark): no Redis round trips, so
// this peer is an upper bound for a deployment that keeps its tokens in a shared store.
//
// Sign-in is one form, POST /interaction/{uid}/login with login and password: the user signs in
// and grants the requested resource scopes in one step (the benchmark drives it over HTTP to get
// real refresh tokens: /auth, this form, /auth/{uid}, then the code exchange at /token).
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

import { memoryAdapter } from '../../tests/oidc-op/memory_adapter.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const moduleDir = process.env.OIDC_PROVIDER_DIR
  ?? path.resolve(here, '../../tests/oidc-op/node_modules/oidc-provider');
const entry = JSON.parse(fs.readFileSync(path.join(moduleDir, 'package.json'), 'utf8')).main ?? 'lib/index.js';
const { Provider, errors } = await import(pathToFileURL(path.join(moduleDir, entry)).href);

const [port, RESOURCE, REDIRECT] = process.argv.slice(2);
if (!port || !RESOURCE || !REDIRECT) {
  console.error('usage: node server.mjs PORT RESOURCE REDIRECT_URI');
  process.exit(2);
}
const HOST = '127.0.0.1';
const issuer = `http://${HOST}:${port}`;
const USERS = new Map([['alice', 'demo-alice'], ['bob', 'demo-bob']]);

const MemoryAdapter = memoryAdapter();

function signingKey(type, options, alg) {
  const { privateKey } = crypto.generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), kid: crypto.randomUUID(), alg, use: 'sig' };
}

const provider = new Provider(issuer, {
  adapter: MemoryAdapter,
  clients: [{
    client_id: 'bench',
    token_endpoint_auth_method: 'none',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: [REDIRECT],
  }],
  async findAccount(ctx, id) {
    return USERS.has(id) ? { accountId: id, async claims() { return { sub: id }; } } : undefined;
  },
  jwks: { keys: [signingKey('ec', { namedCurve: 'P-256' }, 'ES256'), signingKey('rsa', { modulusLength: 2048 }, 'RS256')] },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => RESOURCE,
      useGrantedResource: async () => true, // a refresh without `resource` gets the granted one
      async getResourceServerInfo(ctx, indicator) {
        if (indicator !== RESOURCE) {
          throw new errors.InvalidTarget();
        }
        return {
          scope: 'notes:read notes:write',
          audience: RESOURCE,
          accessTokenTTL: 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  expiresWithSession: async () => false,
  rotateRefreshToken: true,
  ttl: {
    AccessToken: 600,
    AuthorizationCode: 60,
    Grant: 14 * 86400,
    Interaction: 600,
    RefreshToken: 14 * 86400,
    Session: 3600,
  },
});

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) {
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

provider.use(async (ctx, next) => {
  const match = /^\/interaction\/([A-Za-z0-9_-]+)\/login$/.exec(ctx.path);
  if (!match) {
    return next();
  }
  if (ctx.method !== 'POST') {
    ctx.throw(405);
  }
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  if (details.uid !== match[1]) {
    ctx.throw(400, 'interaction mismatch');
  }
  const form = new URLSearchParams(await readBody(ctx.req));
  const login = form.get('login') ?? '';
  const given = Buffer.from(form.get('password') ?? '');
  const expected = Buffer.from(USERS.get(login) ?? crypto.randomBytes(16).toString('hex'));
  if (!USERS.has(login) || given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) {
    ctx.throw(401, 'invalid username or password');
  }
  const { params } = details;
  const grant = new provider.Grant({ accountId: login, clientId: params.client_id });
  grant.addResourceScope(params.resource, params.scope ?? '');
  const result = { login: { accountId: login }, consent: { grantId: await grant.save() } };
  ctx.status = 303;
  ctx.redirect(await provider.interactionResult(ctx.req, ctx.res, result));
  return undefined;
});

const server = provider.listen(Number(port), HOST);
server.on('listening', () => console.log(`node-oidc-provider listening on ${issuer}`));
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    process.exit(0);
  });
}
