"""The sign-in of the worker's pages (/dashboard, /insights): their shells are open, their
data needs a bearer token (churnguard/http_access.py). A page asks for the token when a
request is answered 401, keeps it in the tab's sessionStorage (gone when the tab closes;
never a cookie, so no other site's page can make the browser send it), and sends it as
`Authorization: Bearer …` with every request through `authFetch`.

Each page adds LOGIN_STYLE to its style, LOGIN_HTML to its body and LOGIN_SCRIPT before
its own script (the content security policy hashes the whole script and style)."""

from __future__ import annotations

LOGIN_STYLE = """
#login { margin: 1rem 0; padding: .8rem 1rem; border: 1px solid #c9a227; background: #fff8dc;
  max-width: 36rem; }
#login[hidden], #logout[hidden] { display: none; }
#login label { display: block; margin-bottom: .4rem; }
#login input { width: 22rem; max-width: 100%; font: inherit; }
#logout { margin-left: 1rem; font: inherit; }
"""

LOGIN_HTML = """<form id="login" hidden>
<p id="login-message">Enter your access token.</p>
<label>access token <input id="login-token" type="password" autocomplete="off"
  spellcheck="false"></label>
<button type="submit">sign in</button>
</form>"""

LOGOUT_BUTTON = '<button id="logout" type="button" hidden>sign out</button>'

LOGIN_SCRIPT = r"""
const TOKEN_KEY = "churnguard.token";
let signInWaiters = [];
function storedToken() {
  try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch (error) { return ""; }
}
function showSignedIn() { document.getElementById("logout").hidden = !storedToken(); }
function askToken(message) {
  document.getElementById("login-message").textContent = message;
  document.getElementById("login").hidden = false;
  document.getElementById("login-token").focus();
  return new Promise(resolve => signInWaiters.push(resolve));
}
document.getElementById("login").addEventListener("submit", event => {
  event.preventDefault();
  const input = document.getElementById("login-token");
  const token = input.value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  input.value = "";
  document.getElementById("login").hidden = true;
  showSignedIn();
  const waiting = signInWaiters;
  signInWaiters = [];
  for (const resolve of waiting) resolve();
});
document.getElementById("logout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
});
// fetch() with the stored token; a 401 asks for one and tries again. `timeoutMs` bounds
// each attempt (not the time a person takes to sign in).
async function authFetch(url, init, timeoutMs) {
  for (;;) {
    const token = storedToken();
    const headers = Object.assign({}, init.headers || {});
    if (token) headers.Authorization = "Bearer " + token;
    const answer = await fetch(url, Object.assign({}, init,
      {headers: headers, signal: AbortSignal.timeout(timeoutMs)}));
    if (answer.status !== 401) return answer;
    if (token) sessionStorage.removeItem(TOKEN_KEY);
    showSignedIn();
    await askToken(token ? "That token was refused (unknown, or revoked): enter another."
      : "This page's data needs an access token: enter yours.");
  }
}
showSignedIn();
"""
