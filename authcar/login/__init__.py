"""Browser login (OIDC authorization code + PKCE): the parts that need no gate or session store yet.

- `redirects`: whether a return-to (`rd`) or post-logout target may be followed, else `/`;
- `state`: the signed, short-lived login-state cookie (state, nonce, PKCE verifier, return-to).

Nothing here is wired into the gate: AUTHCAR_LOGIN is refused at start until it is.
"""
