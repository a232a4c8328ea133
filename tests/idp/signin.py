"""The authorization endpoint's sign-in page: one button per user, the request carried in hidden fields.

No passwords: choosing a user is signing in as them. The form posts back to the authorization endpoint,
which checks the request again (the hidden fields are the browser's to change).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from html import escape

from tests.idp.provider import User

USER_FIELD = "user"  # the chosen user's sub; a form without it is a refusal (the Cancel button)
CANCEL_FIELD = "cancel"


def sign_in_page(action: str, params: Mapping[str, str], users: Iterable[User], client_id: str) -> str:
    hidden = "\n".join(
        f'    <input type="hidden" name="{escape(name)}" value="{escape(value)}">'
        for name, value in params.items()
        if name not in (USER_FIELD, CANCEL_FIELD)
    )
    buttons = "\n".join(
        f'    <li><button type="submit" name="{USER_FIELD}" value="{escape(user.sub)}"'
        f' data-user="{escape(user.sub)}">{escape(user.username)}</button>'
        f" <small>{escape(', '.join(user.roles))}</small></li>"
        for user in users
    )
    return f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Sign in to {escape(client_id)}</title></head>
<body>
<main>
  <h1>Sign in to {escape(client_id)}</h1>
  <form method="post" action="{escape(action)}">
{hidden}
    <ul>
{buttons}
    </ul>
    <button type="submit" name="{CANCEL_FIELD}" value="1" id="cancel">Cancel</button>
  </form>
</main>
</body>
</html>
"""
