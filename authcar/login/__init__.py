"""Browser login (OIDC authorization code + PKCE): the parts that need no gate or session store yet.

- `redirects`: whether a return-to (`rd`) or post-logout target may be followed, else `/`;
- `state`: the signed, short-lived login-state cookie (state, nonce, PKCE verifier, return-to);
- `request`: the authorization request `/oauth2/start` sends the browser to;
- `callback`: what the provider's redirect to `/oauth2/callback` says (code or error, state, iss);
- `tokens`: the ID-token and logout-token claim checks beyond those of any token;
- `navigation`: whether a request is a page load (send it to sign in) or an API call (401 JSON);
- `pages`: the error and signed-out pages, self-contained, with their headers;
- `cookies`: the session and login-state cookies: read by exact name, removed before forwarding;
- `refresh`: when a session's access token is refreshed (a margin that scales with its lifetime).

Nothing here is wired into the gate: AUTHCAR_LOGIN is refused at start until it is. This module
imports nothing, so importing one part loads only that part.
"""
