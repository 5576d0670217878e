// The review page: a page of duplicate groups from GET /dupes/groups, each a row of thumbnails with their
// scores and evidence; the suggested keeper is marked, a click on another member makes it the keeper, and
// "Move the others" sends POST /dupes/move (the server moves them as `dupes --move-to DIR --apply` does).
// No framework, nothing fetched from elsewhere; a token in the page's URL (?token=...) is sent on.
"use strict";
// common.js, loaded first, gives token, auth, withToken, $, say and call.
const LIMIT = 20;
let offset = 0;

function member(group, row, m) {
  const item = document.createElement("figure");
  item.className = "member" + (m.id === group.keep ? " keep" : "");
  item.dataset.id = m.id;
  const picture = document.createElement("img");
  picture.src = withToken("thumbnails/" + m.id);
  picture.alt = m.path;
  picture.title = "Keep this one";
  picture.addEventListener("click", () => {
    group.keep = m.id;
    for (const other of row.querySelectorAll(".member")) {
      const kept = Number(other.dataset.id) === m.id;
      other.classList.toggle("keep", kept);
      other.querySelector(".tag").textContent = kept ? "keep" : "";
    }
  });
  const caption = document.createElement("figcaption");
  caption.innerHTML = '<span class="tag"></span><br><span class="score"></span><br><a target="_blank"></a>';
  caption.querySelector(".tag").textContent = m.id === group.keep ? "keep (suggested)" : "";
  caption.querySelector(".score").textContent = m.score.toFixed(4) + " · " + m.evidence;
  const link = caption.querySelector("a");
  link.href = withToken("images/" + m.id);
  link.textContent = m.path;
  item.append(picture, caption);
  return item;
}

function show(page) {
  const list = $("groups");
  list.replaceChildren();
  for (const group of page.groups) {
    const row = document.createElement("section");
    row.className = "group";
    row.dataset.number = group.number;
    const title = document.createElement("h2");
    title.textContent = "Group " + group.number + " · " + group.members.length + " images";
    const members = document.createElement("div");
    members.className = "members";
    for (const m of group.members) members.append(member(group, members, m));
    row.append(title, members);
    if (page.movable) {
      const button = document.createElement("button");
      button.className = "move";
      button.textContent = "Move the others out";
      button.addEventListener("click", () => move(page.generation, group, button));
      row.append(button);
    }
    list.append(row);
  }
  const last = Math.min(page.offset + page.groups.length, page.total);
  $("showing").textContent = page.total ? "groups " + (page.offset + 1) + "–" + last + " of " + page.total : "no groups";
  $("previous").disabled = page.offset === 0;
  $("next").disabled = last >= page.total;
  const cut = page.threshold === null ? "hash evidence" : "cosine cut-off " + page.threshold.toFixed(5) + " (measured) and hashes";
  $("rule").textContent = cut + (page.movable ? "" : " · read-only: the server was started without --move-to");
  if (page.notes.length) say(page.notes.join("; "));
}

async function load() {
  try {
    const page = await call("dupes/groups?offset=" + offset + "&limit=" + LIMIT);
    if (!page.groups) {  // 202: still being found
      say("finding the groups (measuring the cut-off, then searching every image's neighbours) ...", true);
      setTimeout(load, 1000);
      return;
    }
    say("", true);
    show(page);
  } catch (error) {
    say("Could not load the groups: " + error.message);
  }
}

async function move(generation, group, button) {
  button.disabled = true;
  say("moving ...", true);
  try {
    const body = JSON.stringify({ generation, ids: group.members.map((m) => m.id), keep: group.keep });
    const answer = await call("dupes/move", { method: "POST", body, headers: { "Content-Type": "application/json" } });
    const done = answer.moves.filter((m) => m.done).length;
    const failed = answer.moves.filter((m) => !m.done).map((m) => m.source + ": " + m.problem);
    await load();
    say("moved " + done + " files; log: " + answer.log + (failed.length ? " · not moved: " + failed.join("; ") : ""), !failed.length);
  } catch (error) {
    button.disabled = false;
    say("Could not move: " + error.message);
  }
}

$("previous").addEventListener("click", () => { offset = Math.max(0, offset - LIMIT); load(); });
$("next").addEventListener("click", () => { offset += LIMIT; load(); });
call("info")
  .then((info) => { $("info").textContent = info.count + " images · " + info.model; })
  .catch((error) => say("The index cannot be reached: " + error.message));
load();
