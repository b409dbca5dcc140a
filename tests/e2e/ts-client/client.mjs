// The MCP TypeScript SDK's own OAuth client against the real stack (broker + mcp_app), driven by
// tests/e2e/test_typescript_sdk_client.py. Everything OAuth (discovery from the 401, dynamic client
// registration, PKCE, the code exchange, refresh, step-up) is the SDK's code; this script only
// implements the SDK's OAuthClientProvider interface in memory and plays the browser when the SDK
// asks for a redirect (consent → LDAP login form → the 303 carrying the code).
//
// Usage: node client.mjs '<json config>'   config: {scenario, mcp_url, redirect_uri, username,
// password, timeout_ms (per request), script_timeout_ms}. Output: one JSON object per line on stdout, `event` being "http" (every
// request the SDK or the browser sends, with its status), "authorize" (each redirect the SDK asks
// for), "step" (the outcome of each step) and finally "done"; "fatal" and exit status 1 on a crash.
// Tokens, codes and the password are printed as fingerprints (sha256:<16 hex>), never in clear.

import { createHash, randomBytes } from 'node:crypto';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport, StreamableHTTPError } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError, auth, discoverOAuthServerInfo } from '@modelcontextprotocol/sdk/client/auth.js';

const config = JSON.parse(process.argv[2] ?? '{}');
const TIMEOUT = Number(config.timeout_ms ?? 15000);
const SECRET_FIELDS = new Set(['access_token', 'refresh_token', 'code', 'token', 'id_token', 'password']);
const mcpUrl = new URL(config.mcp_url);
let phase = 'start';

const emit = (record) => process.stdout.write(`${JSON.stringify(record)}\n`);
const fp = (value) => (value ? `sha256:${createHash('sha256').update(String(value)).digest('hex').slice(0, 16)}` : null);
const redact = (record) =>
    Object.fromEntries(Object.entries(record).map(([k, v]) => [k, SECRET_FIELDS.has(k) && typeof v === 'string' ? fp(v) : v]));
const describe = (error) => ({
    type: error?.constructor?.name ?? typeof error,
    message: String(error?.message ?? error),
    ...(error?.code !== undefined ? { code: error.code } : {}),
    ...(error?.errorCode !== undefined ? { oauth_error: error.errorCode } : {})
});

// A hard stop: a hung request must not hang the test.
setTimeout(() => {
    emit({ event: 'fatal', phase, error: 'the script ran out of time' });
    process.exit(1);
}, Number(config.script_timeout_ms ?? 90000)).unref();

function withTimeout(init) {
    const timeout = AbortSignal.timeout(TIMEOUT);
    return { ...init, signal: init?.signal ? AbortSignal.any([init.signal, timeout]) : timeout };
}

function requestBody(body) {
    if (body === undefined || body === null) return undefined;
    if (body instanceof URLSearchParams) return redact(Object.fromEntries(body));
    if (typeof body === 'string') {
        try {
            const parsed = JSON.parse(body);
            return parsed && typeof parsed === 'object' && !Array.isArray(parsed) && !('jsonrpc' in parsed) ? redact(parsed) : parsed;
        } catch {
            return redact(Object.fromEntries(new URLSearchParams(body)));
        }
    }
    return String(body);
}

// The fetch handed to the SDK's transport (and so to every OAuth request it makes): logs each
// exchange, with the body of OAuth requests and answers, and bounds every request in time.
function loggingFetch(actor) {
    return async (url, init = {}) => {
        const headers = new Headers(init.headers);
        const bearer = (headers.get('authorization') ?? '').replace(/^Bearer\s+/i, '');
        const target = new URL(String(url instanceof Request ? url.url : url));
        const entry = { event: 'http', phase, actor, method: init.method ?? 'GET', url: target.href };
        if (bearer) entry.bearer = fp(bearer);
        if (headers.get('mcp-protocol-version')) entry.mcp_protocol_version = headers.get('mcp-protocol-version');
        const cookie = headers.get('cookie');
        if (cookie) entry.cookies = cookie.split(';').map((c) => c.split('=')[0].trim());
        entry.request = requestBody(init.body);
        const streaming = (headers.get('accept') ?? '') === 'text/event-stream';
        let response;
        try {
            response = await fetch(url, streaming ? init : withTimeout(init));
        } catch (error) {
            emit({ ...entry, error: describe(error) });
            throw error;
        }
        entry.status = response.status;
        const challenge = response.headers.get('www-authenticate');
        if (challenge) entry.www_authenticate = challenge;
        const type = response.headers.get('content-type') ?? '';
        const mcpEndpoint = target.origin === mcpUrl.origin && target.pathname === mcpUrl.pathname;
        if (!mcpEndpoint && type.includes('application/json')) {
            try {
                const json = await response.clone().json();
                entry.response = json && typeof json === 'object' && !Array.isArray(json) ? redact(json) : json;
            } catch {
                // not JSON after all
            }
        }
        emit(entry);
        return response;
    };
}

const sdkFetch = loggingFetch('sdk');

// A tiny cookie jar for the browser part.
class Browser {
    constructor() {
        this.cookies = new Map();
        this.fetch = loggingFetch('browser');
    }

    async request(url, init = {}) {
        const headers = new Headers(init.headers);
        if (this.cookies.size) headers.set('cookie', [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; '));
        const response = await this.fetch(url, { ...init, headers, redirect: 'manual' });
        for (const line of response.headers.getSetCookie()) {
            const [pair, ...attributes] = line.split(';');
            const name = pair.slice(0, pair.indexOf('=')).trim();
            const value = pair.slice(pair.indexOf('=') + 1).trim();
            const expired = attributes.some((a) => /^\s*max-age\s*=\s*0\s*$/i.test(a)) || value === '' || value === '""';
            if (expired) this.cookies.delete(name);
            else this.cookies.set(name, value);
        }
        return response;
    }

    static hiddenInputs(html) {
        const unescape = (s) =>
            s
                .replace(/&#(\d+);/g, (_, n) => String.fromCharCode(Number(n)))
                .replace(/&#x([0-9a-f]+);/gi, (_, n) => String.fromCharCode(parseInt(n, 16)))
                .replace(/&quot;/g, '"')
                .replace(/&lt;/g, '<')
                .replace(/&gt;/g, '>')
                .replace(/&amp;/g, '&');
        const form = {};
        for (const m of html.matchAll(/<input type="hidden" name="([^"]+)" value="([^"]*)"/g)) form[m[1]] = unescape(m[2]);
        return form;
    }

    static action(html, base, fallback) {
        const m = html.match(/<form method="post" action="([^"]+)"/);
        return new URL(m ? m[1] : fallback, base);
    }

    // authorize → consent (approve, with the CSRF cookie) → login form → POST /login → 303 with the code.
    async signIn(authorizationUrl, username, password) {
        const consent = await this.request(authorizationUrl);
        const consentPage = await consent.text();
        if (consent.status !== 200) throw new Error(`authorize answered ${consent.status}: ${consentPage.slice(0, 300)}`);
        const consentForm = Browser.hiddenInputs(consentPage);
        const approved = await this.request(Browser.action(consentPage, authorizationUrl, '/consent'), {
            method: 'POST',
            headers: { 'content-type': 'application/x-www-form-urlencoded' },
            body: new URLSearchParams({ ...consentForm, decision: 'approve' }).toString()
        });
        if (approved.status !== 303) throw new Error(`consent answered ${approved.status}: ${(await approved.text()).slice(0, 300)}`);
        const loginUrl = new URL(approved.headers.get('location'), authorizationUrl);
        const loginPage = await this.request(loginUrl);
        const loginHtml = await loginPage.text();
        if (loginPage.status !== 200) throw new Error(`login page answered ${loginPage.status}: ${loginHtml.slice(0, 300)}`);
        const done = await this.request(Browser.action(loginHtml, loginUrl, '/login'), {
            method: 'POST',
            headers: { 'content-type': 'application/x-www-form-urlencoded' },
            body: new URLSearchParams({ ...Browser.hiddenInputs(loginHtml), username, password }).toString()
        });
        if (done.status !== 303) throw new Error(`login answered ${done.status}: ${(await done.text()).slice(0, 300)}`);
        return { consentFields: Object.keys(consentForm).sort(), redirect: new URL(done.headers.get('location')) };
    }
}

// The SDK's OAuthClientProvider, in memory. `interactive` false: the user is away, so a redirect
// the SDK asks for is recorded and not followed.
class ScriptedProvider {
    constructor({ label, username, password, redirectUri, grantTypes }) {
        Object.assign(this, { label, username, password, redirectUri, grantTypes });
        this.interactive = true;
        this.pendingCode = undefined;
        this.redirects = 0;
        this.invalidations = [];
        this._client = undefined;
        this._tokens = undefined;
        this._verifier = undefined;
        this._state = undefined;
    }

    get redirectUrl() {
        return this.redirectUri;
    }

    get clientMetadata() {
        return {
            client_name: `TypeScript SDK e2e client (${this.label})`,
            redirect_uris: [this.redirectUri],
            grant_types: this.grantTypes,
            response_types: ['code'],
            token_endpoint_auth_method: 'none'
        };
    }

    state() {
        this._state = randomBytes(16).toString('base64url');
        return this._state;
    }

    clientInformation() {
        return this._client;
    }

    saveClientInformation(info) {
        this._client = info;
    }

    tokens() {
        return this._tokens;
    }

    saveTokens(tokens) {
        this._tokens = tokens;
    }

    saveCodeVerifier(verifier) {
        this._verifier = verifier;
    }

    codeVerifier() {
        return this._verifier;
    }

    invalidateCredentials(scope) {
        this.invalidations.push(scope);
        if (scope === 'all' || scope === 'client') this._client = undefined;
        if (scope === 'all' || scope === 'tokens') this._tokens = undefined;
        if (scope === 'all' || scope === 'verifier') this._verifier = undefined;
    }

    async redirectToAuthorization(url) {
        this.redirects += 1;
        const params = Object.fromEntries(url.searchParams);
        const record = { event: 'authorize', phase, url: `${url.origin}${url.pathname}`, params, followed: this.interactive };
        if (!this.interactive) {
            emit(record);
            return;
        }
        const browser = new Browser();
        const { consentFields, redirect } = await browser.signIn(url, this.username, this.password);
        const back = Object.fromEntries(redirect.searchParams);
        const challenge = createHash('sha256').update(this._verifier ?? '').digest('base64url');
        Object.assign(record, {
            verifier_matches_challenge: challenge === params.code_challenge,
            consent_fields: consentFields,
            returned_to: `${redirect.origin}${redirect.pathname}`,
            returned: redact(back),
            state_matches: back.state === this._state
        });
        emit(record);
        if (!back.code) throw new Error(`no code in the redirect: ${JSON.stringify(redact(back))}`);
        this.pendingCode = back.code;
    }

    takeCode() {
        const code = this.pendingCode;
        this.pendingCode = undefined;
        if (!code) throw new Error('the SDK did not send the user to sign in');
        return code;
    }
}

function newProvider(label, grantTypes) {
    return new ScriptedProvider({
        label,
        username: config.username,
        password: config.password,
        redirectUri: config.redirect_uri,
        grantTypes
    });
}

function newClient(provider) {
    const transport = new StreamableHTTPClientTransport(mcpUrl, { authProvider: provider, fetch: sdkFetch });
    const client = new Client({ name: 'mcp-broker-e2e-ts', version: '1.0.0' });
    return { client, transport };
}

async function step(name, fn) {
    phase = name;
    const started = performance.now();
    try {
        const details = (await fn()) ?? {};
        emit({ event: 'step', step: name, ok: true, ms: Math.round(performance.now() - started), ...details });
        return details;
    } catch (error) {
        emit({ event: 'step', step: name, ok: false, ms: Math.round(performance.now() - started), error: describe(error) });
        return undefined;
    }
}

function tokenSummary(tokens) {
    return tokens
        ? {
              access_token: fp(tokens.access_token),
              refresh_token: fp(tokens.refresh_token),
              scope: tokens.scope ?? null,
              expires_in: tokens.expires_in ?? null,
              token_type: tokens.token_type ?? null,
              issuer: tokens.issuer ?? null
          }
        : null;
}

function toolResult(result) {
    const text = (result.content ?? []).filter((c) => c.type === 'text').map((c) => c.text);
    return { is_error: Boolean(result.isError), structured: result.structuredContent ?? null, text };
}

const call = (client, name, args = {}) => client.callTool({ name, arguments: args }, undefined, { timeout: TIMEOUT });

// Bare connect → 401 → the SDK discovers, registers and redirects (the provider signs in) →
// UnauthorizedError; then finishAuth(code) and a fresh transport: the SDK's documented flow.
async function signIn(provider) {
    let first;
    await step('connect_unauthenticated', async () => {
        first = newClient(provider);
        try {
            await first.client.connect(first.transport, { timeout: TIMEOUT });
        } catch (error) {
            if (!(error instanceof UnauthorizedError)) throw error;
            return { refused_with: describe(error), redirects: provider.redirects, code_received: Boolean(provider.pendingCode) };
        }
        throw new Error('connected without signing in');
    });
    await step('finish_auth', async () => {
        await first.transport.finishAuth(provider.takeCode());
        await first.client.close();
        return { tokens: tokenSummary(provider.tokens()), client_id: provider.clientInformation()?.client_id ?? null };
    });
    let connected;
    await step('reconnect', async () => {
        connected = newClient(provider);
        await connected.client.connect(connected.transport, { timeout: TIMEOUT });
        return { server: connected.client.getServerVersion() ?? null, protocol_version: connected.transport.protocolVersion ?? null };
    });
    return connected;
}

async function alice() {
    const provider = newProvider('alice', ['authorization_code', 'refresh_token']);
    const session = await signIn(provider);
    if (!session) return;
    const { client } = session;
    await step('tools_list', async () => {
        const { tools } = await client.listTools(undefined, { timeout: TIMEOUT });
        return { tools: tools.map((t) => t.name).sort() };
    });
    await step('whoami', async () => toolResult(await call(client, 'whoami')));
    const title = `ts-sdk note ${randomBytes(4).toString('hex')}`;
    await step('create_note', async () => toolResult(await call(client, 'create_note', { title, body: 'written by the TypeScript SDK' })));
    await step('list_notes', async () => ({ ...toolResult(await call(client, 'list_notes')), title }));

    // Refresh: the SDK refreshes only when a request is refused (it never looks at expires_in), and
    // mcp_app honours a token for 10 s past its expiry; so run the SDK's own auth() orchestrator
    // with tokens in store and no code: it discovers again and spends the refresh token.
    await step('refresh', async () => {
        const before = provider.tokens();
        const redirectsBefore = provider.redirects;
        const result = await auth(provider, { serverUrl: mcpUrl, fetchFn: sdkFetch });
        return {
            result,
            before: tokenSummary(before),
            after: tokenSummary(provider.tokens()),
            redirected: provider.redirects !== redirectsBefore
        };
    });
    await step('whoami_after_refresh', async () => ({
        ...toolResult(await call(client, 'whoami')),
        bearer: fp(provider.tokens()?.access_token)
    }));

    // Revocation (RFC 7009) of the access token, at the endpoint the SDK's discovery names.
    let revokedAt;
    await step('revoke', async () => {
        const info = await discoverOAuthServerInfo(mcpUrl, { fetchFn: sdkFetch });
        const endpoint = info.authorizationServerMetadata?.revocation_endpoint;
        if (!endpoint) throw new Error('no revocation_endpoint in the authorization server metadata');
        const token = provider.tokens().access_token;
        const response = await sdkFetch(endpoint, {
            method: 'POST',
            headers: { 'content-type': 'application/x-www-form-urlencoded' },
            body: new URLSearchParams({ token, token_type_hint: 'access_token', client_id: provider.clientInformation().client_id })
        });
        revokedAt = performance.now();
        return { endpoint, status: response.status, revoked: fp(token) };
    });
    // The user has gone: a redirect the SDK asks for is not followed.
    provider.interactive = false;
    await step('call_after_revocation', async () => {
        const deadline = revokedAt + 1000;
        let attempts = 0;
        for (;;) {
            attempts += 1;
            phase = `call_after_revocation#${attempts}`;
            try {
                await call(client, 'list_notes');
            } catch (error) {
                return {
                    attempts,
                    ms_after_revocation: Math.round(performance.now() - revokedAt),
                    refused_with: describe(error),
                    redirects_requested: provider.redirects,
                    invalidated: provider.invalidations,
                    tokens_left: tokenSummary(provider.tokens())
                };
            }
            if (performance.now() > deadline) throw new Error(`still accepted ${attempts} call(s) after revocation`);
            await new Promise((resolve) => setTimeout(resolve, 50));
        }
    });
    await client.close();
}

// Bob holds notes:read only; create_note needs notes:write: mcp_app answers 403 insufficient_scope.
async function stepUp(withRefreshToken) {
    const provider = newProvider(
        `bob, ${withRefreshToken ? 'refresh tokens' : 'no refresh token'}`,
        withRefreshToken ? ['authorization_code', 'refresh_token'] : ['authorization_code']
    );
    const session = await signIn(provider);
    if (!session) return;
    const { client } = session;
    await step('list_notes', async () => toolResult(await call(client, 'list_notes')));
    const title = `bob step-up ${randomBytes(4).toString('hex')}`;
    const redirectsBefore = provider.redirects;
    const tokensBefore = tokenSummary(provider.tokens());
    await step('create_note', async () => {
        try {
            return { unexpected: toolResult(await call(client, 'create_note', { title })) };
        } catch (error) {
            return {
                refused_with: describe(error),
                http_status: error instanceof StreamableHTTPError ? error.code : null,
                redirects_requested: provider.redirects - redirectsBefore,
                code_received: Boolean(provider.pendingCode),
                tokens_before: tokensBefore,
                tokens_after: tokenSummary(provider.tokens())
            };
        }
    });
    if (provider.pendingCode) {
        // The SDK sent the user back to the broker with the wider scope and the user signed in:
        // exchange the code, then try again on the same transport.
        await step('step_up_finish_auth', async () => {
            await session.transport.finishAuth(provider.takeCode());
            return { tokens: tokenSummary(provider.tokens()) };
        });
        await step('create_note_retry', async () => {
            try {
                return { unexpected: toolResult(await call(client, 'create_note', { title })) };
            } catch (error) {
                return {
                    refused_with: describe(error),
                    http_status: error instanceof StreamableHTTPError ? error.code : null,
                    redirects_requested: provider.redirects - redirectsBefore
                };
            }
        });
    }
    await step('list_notes_after_refusal', async () => ({ ...toolResult(await call(client, 'list_notes')), title }));
    await client.close();
}

const scenarios = {
    alice: () => alice(),
    'step-up-refresh-token': () => stepUp(true),
    'step-up-no-refresh-token': () => stepUp(false)
};

try {
    const scenario = scenarios[config.scenario];
    if (!scenario) throw new Error(`unknown scenario ${config.scenario}`);
    await scenario();
    emit({ event: 'done', scenario: config.scenario });
    process.exit(0);
} catch (error) {
    emit({ event: 'fatal', phase, error: describe(error), stack: String(error?.stack ?? '') });
    process.exit(1);
}
