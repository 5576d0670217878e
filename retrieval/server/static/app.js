// The page: send an image (chosen, dropped or pasted) to POST /search, or an indexed image's id to
// GET /search?id=, and show the hits as a grid of thumbnails with their scores. No framework, no build
// step, nothing fetched from elsewhere: it works offline. A token in the page's URL (?token=...) is sent on.
"use strict";
// common.js, loaded first, gives token, auth, withToken, $, say and call.
let metric = "cosine";
let again = null; // the last search, run again when a filter changes
const FILTERS = ["folder", "modified_after", "modified_before", "min_size", "max_size"];

function filters() {
  // the filter fields given, as [name, value] pairs (the server reads and checks them)
  return FILTERS.map((name) => [name, $(name).value.trim()]).filter(([, value]) => value);
}

function showQuery(src, title) {
  $("query").hidden = false;
  $("query-image").src = src;
  $("query-title").textContent = title;
}

function showHits(hits) {
  const list = $("hits");
  list.replaceChildren();
  for (const hit of hits) {
    const item = document.createElement("li");
    item.dataset.id = hit.id;
    const picture = document.createElement("img");
    picture.src = withToken("thumbnails/" + hit.id);
    picture.alt = hit.path;
    picture.title = "Search by this image";
    picture.addEventListener("click", () => searchById(hit.id, hit.path));
    const caption = document.createElement("div");
    caption.className = "caption";
    const label = metric === "cosine" ? "similarity " : "distance ";
    caption.innerHTML = '<span class="score"></span><br><a target="_blank"></a>';
    caption.querySelector(".score").textContent = "#" + hit.rank + "  " + label + hit.score.toFixed(4);
    const link = caption.querySelector("a");
    link.href = withToken("images/" + hit.id);
    link.textContent = hit.path;
    item.append(picture, caption);
    list.append(item);
  }
  say(hits.length + " results", true);
}

async function searchByFile(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) {
    say(file.name + " is not an image file");
    return;
  }
  showQuery(URL.createObjectURL(file), "Query: " + file.name);
  say("searching ...", true);
  const form = new FormData();
  form.append("files", file);
  form.append("k", $("k").value);
  for (const [name, value] of filters()) form.append(name, value);
  again = () => searchByFile(file);
  try {
    const body = await call("search", { method: "POST", body: form });
    metric = body.metric;
    showHits(body.results[0]);
  } catch (error) {
    $("hits").replaceChildren();
    say("Could not search with " + file.name + ": " + error.message);
  }
}

async function searchById(id, path) {
  showQuery(withToken("thumbnails/" + id), "Neighbours of " + path);
  say("searching ...", true);
  try {
    const query = new URLSearchParams([["id", id], ["k", $("k").value], ...filters()]);
    again = () => searchById(id, path);
    const body = await call("search?" + query);
    metric = body.metric;
    showHits(body.results[0]);
  } catch (error) {
    say("Could not search: " + error.message);
  }
}

$("file").addEventListener("change", (event) => searchByFile(event.target.files[0]));
for (const name of [...FILTERS, "k"]) $(name).addEventListener("change", () => again && again());
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  searchByFile(event.dataTransfer.files[0]);
});
document.addEventListener("paste", (event) => {
  const item = [...event.clipboardData.items].find((i) => i.type.startsWith("image/"));
  if (item) searchByFile(item.getAsFile());
});
call("info")
  .then((info) => { $("info").textContent = info.count + " images · " + info.model + " · " + info.index_type; })
  .catch((error) => say("The index cannot be reached: " + error.message));
