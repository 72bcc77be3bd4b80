"""The operations console: `promptbatch console` runs `streamlit run console/app.py`.

This script builds the context from Settings, gates on CONSOLE_PASSWORD, calls st.navigation once
and runs the chosen page (STYLE.md 8). Pages live in console/app_pages/.
"""

from __future__ import annotations

import hmac
from pathlib import Path

import streamlit as st

from console import context, data
from runner.settings import Settings

PAGES = Path(__file__).with_name("app_pages")


def signed_in(settings: Settings) -> bool:
    """True when no password is set or this session signed in; else shows the sign-in form.

    An empty CONSOLE_PASSWORD counts as unset (Settings), never as a password that matches "".
    """
    secret = settings.console_password
    if secret is None or st.session_state.get(context.AUTH_KEY):
        return True
    st.title("promptbatch console")
    with st.form("sign_in"):
        given = st.text_input("Password", type="password")
        if st.form_submit_button("Sign in", type="primary"):
            # Constant-time comparison: the time taken says nothing about the password.
            if hmac.compare_digest(given.encode(), secret.get_secret_value().encode()):
                st.session_state[context.AUTH_KEY] = True
                st.rerun()
            st.error("Wrong password.")
    return False


def sidebar(ctx: context.ConsoleContext) -> None:
    with st.sidebar:
        if st.button("Refresh now", icon=":material/refresh:"):
            data.clear()
        if ctx.read_only:
            st.info("Read-only console: no action is offered.")
        if ctx.password_required and st.button("Sign out"):
            st.session_state.pop(context.AUTH_KEY, None)
            st.rerun()


def main() -> None:
    st.set_page_config(
        page_title="promptbatch console", page_icon=":material/monitoring:", layout="wide"
    )
    settings = Settings()
    ctx = context.load(settings)
    if not signed_in(settings):
        return
    page = st.navigation(
        [
            st.Page(
                PAGES / "overview.py", title="Overview", icon=":material/monitoring:", default=True
            ),
            st.Page(PAGES / "jobs.py", title="Jobs", icon=":material/list:"),
            st.Page(PAGES / "failures.py", title="Failures", icon=":material/error:"),
            st.Page(PAGES / "prompts_models.py", title="Prompts & models", icon=":material/edit:"),
            st.Page(PAGES / "mentions.py", title="Mentions", icon=":material/campaign:"),
            st.Page(PAGES / "workers.py", title="Workers", icon=":material/dns:"),
        ]
    )
    sidebar(ctx)
    with data.database_banner():
        data.check_schema(ctx.database_url)
        page.run()


main()
