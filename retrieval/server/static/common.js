// What both pages share: the token in the page's URL (?token=...) sent on with every request, fetching JSON with
// the server's error detail as the message, and the status line.
"use strict";
const token = new URLSearchParams(location.search).get("token");
const auth = token ? { Authorization: "Bearer " + token } : {};
const withToken = (url) => (token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url);
const $ = (id) => document.getElementById(id);

function say(text, ok) {
  $("message").textContent = text;
  $("message").className = ok ? "ok" : "";
}

async function call(url, options) {
  const response = await fetch(url, { ...options, headers: { ...auth, ...(options || {}).headers } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail || body);
    throw new Error(detail || response.statusText);
  }
  return body;
}

// the links between the pages carry the token too
for (const link of document.querySelectorAll("header a")) link.href = withToken(link.getAttribute("href"));
