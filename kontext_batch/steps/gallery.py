"""A run's review page: ``gallery.html`` beside ``results.csv``, inputs and output side by side.

One self-contained file (inline CSS and JS, nothing fetched but the run's own images) that works
opened from a local folder or served from the bucket, because every image link is relative to the
store's root: outputs at their ``output_name``, staged inputs at ``_inputs/<sha256>.<ext>``. Inputs
given as http(s) URLs keep their absolute URL; an input elsewhere (another bucket) is named, not shown.
A private bucket answers those relative links 403: :mod:`kontext_batch.steps.presigned` writes the
same page through the ``link`` seam, every link presigned.

The rows are embedded as JSON (a 40,000-row run stays one file) and drawn 100 per page, images
``loading="lazy"``. Prompts, ids and errors are data, never markup: the JSON is escaped so no
``</script>`` can end its block, and the page's script sets them with ``textContent`` only.

The reviewer filters by status (``#status=failed`` in the address works too), marks rows rejected
(kept in the browser's localStorage) and downloads their ids, one per line, for ``retry --ids``;
:func:`ids_from_file` reads that file back.
"""

from __future__ import annotations

import html
import json
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, unquote

from kontext_batch.coord.runs import RunStore
from kontext_batch.io.names import GALLERY_NAME, RESULTS_NAME, run_file  # reserved there: no output may take them
from kontext_batch.io.stores import ObjectStore
from kontext_batch.steps.results import result_lines

__all__ = [
    "GALLERY_NAME",
    "HTML",
    "READS",
    "RUN_PAGE_DEPTH",
    "Link",
    "gallery_rows",
    "ids_from_file",
    "put_gallery",
    "relative_link",
    "render_gallery",
    "render_page",
]

HTML: Final = "text/html; charset=utf-8"

PAGE_SIZE: Final = 100
#: How the page holds a link it would give relative to the store's root (a presigned page signs it).
Link = Callable[[str], str]
#: The order of each row's fields in the embedded JSON (arrays, not objects: a third of the size).
FIELDS: Final = ("row", "id", "status", "prompt", "error", "model", "seed", "inputs", "output", "run")
#: How many folders below the store's root a run's own page is (``runs/RUN_ID/gallery.html``).
RUN_PAGE_DEPTH: Final = 2


def relative_link(store_url: str, uri: str, *, up: int = 0) -> str | None:
    """How a page ``up`` folders below the store's root links to ``uri``: a relative path for an
    object of the store, the URL itself for http(s), None for anything a browser cannot fetch
    (another bucket)."""
    if not uri:
        return None
    base = store_url.partition("?")[0].rstrip("/") + "/"
    target = uri.partition("?")[0]
    if target.startswith(base) and len(target) > len(base):
        rel = target[len(base) :]
        # file: URIs come percent-encoded (Path.as_uri); object store names are raw.
        name = unquote(rel) if base.startswith("file:") else rel
        # ':' is encoded too, so no name can turn into a scheme (``javascript:``) in the page.
        return "../" * up + quote(name, safe="/")
    if uri.startswith(("http://", "https://")):
        return uri
    return None


def _as_is(href: str) -> str:
    return href


#: The columns of a results line that :func:`gallery_rows` reads: a page built from a results file
#: needs no others unescaped (:meth:`~kontext_batch.steps.ledger.Ledger.lines`).
READS: Final = (
    "row",
    "id",
    "status",
    "prompt",
    "error",
    "model",
    "seed",
    "output_seed",
    "input_uris",
    "output_uri",
    "output_name",
    "run_id",
)


def gallery_rows(
    lines: Iterable[Mapping[str, Any]], store_url: str, *, up: int = 0, link: Link = _as_is
) -> list[list[Any]]:
    """Each results line (raw values by column, as :func:`~kontext_batch.steps.results.result_lines`
    gives them) as a list in :data:`FIELDS` order, for a page ``up`` folders below the store's root.

    Every image link the page would have (:func:`relative_link`) is passed through ``link``.
    """
    out: list[list[Any]] = []
    for line in lines:
        status = str(line.get("status") or "pending")
        try:
            images = [str(u) for u in json.loads(str(line.get("input_uris") or "[]"))]
        except ValueError:
            images = []
        # Each input: [link, ""], or [None, its URI without the query] to name what cannot be shown.
        links = [(relative_link(store_url, u, up=up), u) for u in images]
        inputs = [[link(href), ""] if href else [None, uri.partition("?")[0]] for href, uri in links]
        output = None
        if status in ("succeeded", "skipped"):
            output = relative_link(store_url, str(line.get("output_uri") or ""), up=up)
            if output is None and line.get("output_name"):
                output = "../" * up + quote(str(line["output_name"]), safe="/")
            output = link(output) if output else None
        # The seed of the image shown: a skipped row's is the run's that made it.
        seed = line.get("output_seed") or line.get("seed")
        out.append(
            [
                line.get("row", ""),
                str(line.get("id") or line.get("row", "")),
                status,
                str(line.get("prompt") or ""),
                str(line.get("error") or ""),
                str(line.get("model") or ""),
                "" if seed is None else str(seed),
                inputs,
                output,
                str(line.get("run_id") or ""),
            ]
        )
    return out


def _json_for_script(data: object) -> str:
    """JSON that is safe inside ``<script>``: no ``<``, ``>``, ``&`` or line separators as such."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def render_page(rows: list[list[Any]], *, key: str, title: str, results_href: str = RESULTS_NAME) -> str:
    """The page of ``rows`` (:func:`gallery_rows`). ``key`` names the page's rejected rows in the
    browser (and their download); ``title`` heads it; ``results_href`` is its link to its results
    file (beside it, unless a presigned page says otherwise)."""
    counts = Counter(r[2] for r in rows)
    data = {"run": key, "title": title, "fields": FIELDS, "pageSize": PAGE_SIZE, "counts": counts, "rows": rows}
    # Only our own script runs (its nonce): a handler that slipped into the markup would not.
    nonce = secrets.token_urlsafe(16)
    return (
        _PAGE.replace("@NONCE@", nonce)
        .replace("@TITLE@", html.escape(f"kontext-batch {title}"))
        .replace("@STYLE@", _STYLE)
        .replace("@SCRIPT@", _SCRIPT)
        .replace("@RESULTS@", html.escape(results_href))
        .replace("@DATA@", _json_for_script(data))
    )


def render_gallery(
    runs: RunStore,
    run_id: str,
    store_url: str,
    *,
    up: int = 0,
    link: Link = _as_is,
    results_href: str = RESULTS_NAME,
) -> str:
    """The page of ``run_id``'s own rows, from Redis (rows not final yet show ``pending``), for a
    file ``up`` folders below the root of the store ``store_url``; ``link`` turns each image link
    into the one the page holds (a presigned page signs them)."""
    _, lines = result_lines(runs, run_id, strict=False)
    rows = gallery_rows((line for line, _ in lines), store_url, up=up, link=link)
    return render_page(rows, key=run_id, title=f"run {run_id}", results_href=results_href)


def put_gallery(runs: RunStore, run_id: str, store: ObjectStore) -> str:
    """Write the run's own page, ``runs/RUN_ID/gallery.html`` in ``store`` (its output); return its URI.

    Raises StorageError / StorageUnavailable when the store refuses the write.
    """
    page = render_gallery(runs, run_id, store.url, up=RUN_PAGE_DEPTH)
    return store.put(run_file(run_id, GALLERY_NAME), page.encode("utf-8"), content_type=HTML)


def ids_from_file(path: str | Path) -> list[str]:
    """Row ids from a file the gallery downloaded (one per line): blank lines and ``#`` comments
    skipped, surrounding spaces and a BOM dropped, duplicates kept once, in file order."""
    seen: dict[str, None] = {}
    for line in Path(path).read_text(encoding="utf-8-sig").splitlines():
        item = line.strip()
        if item and not item.startswith("#"):
            seen.setdefault(item, None)
    return list(seen)


_PAGE: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; img-src * file: data: blob:; style-src 'unsafe-inline'; script-src 'nonce-@NONCE@'">
<title>@TITLE@</title>
<style>@STYLE@</style>
</head>
<body data-images="pending">
<header>
<h1 id="title"></h1>
<p id="summary"></p>
<nav>
<label>status <select id="status"></select></label>
<label><input type="checkbox" id="only-rejected"> rejected only</label>
<button id="prev" type="button">&larr;</button> <span id="page"></span> <button id="next" type="button">&rarr;</button>
<button id="download" type="button">download rejected ids</button> <span id="nrejected"></span>
<a href="@RESULTS@">results.csv</a>
</nav>
</header>
<main id="rows"></main>
<script type="application/json" id="data">@DATA@</script>
<script nonce="@NONCE@">@SCRIPT@</script>
</body>
</html>
"""

_STYLE: Final = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f4f4f2;color:#222}
header{position:sticky;top:0;background:#fff;border-bottom:1px solid #ccc;padding:8px 16px;z-index:1}
h1{font-size:18px;margin:0}nav{display:flex;gap:12px;align-items:center;flex-wrap:wrap}
main{padding:8px 16px}
.row{display:grid;grid-template-columns:auto auto 1fr;gap:12px;background:#fff;margin:8px 0;padding:8px;
border-left:6px solid #999}
.row.succeeded,.row.skipped{border-color:#2a8}.row.failed,.row.invalid{border-color:#c33}
.row.moderated{border-color:#e90}.row.cancelled,.row.pending{border-color:#888}
.row.rejected{background:#fdd}
.imgs{display:flex;gap:6px}.imgs figure{margin:0;text-align:center;font-size:11px;color:#666}
.imgs img{display:block;max-width:180px;max-height:180px;background:#eee}
.missing{width:120px;height:120px;display:flex;align-items:center;justify-content:center;background:#eee;
color:#888;font-size:11px;word-break:break-all;padding:4px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 10px;margin:0}dt{color:#777}
dd{margin:0;white-space:pre-wrap;word-break:break-word}.error{color:#b22}
"""

_SCRIPT: Final = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("data").textContent);
  var F = {};
  data.fields.forEach(function (f, i) { F[f] = i; });
  var storeKey = "kontext-gallery-rejected:" + data.run;
  var rejected = {};
  try { rejected = JSON.parse(localStorage.getItem(storeKey) || "{}") || {}; } catch (e) { rejected = {}; }
  var state = {status: "", onlyRejected: false, page: 1};

  function el(tag, cls, text) {
    var n = document.createElement(tag);
    if (cls) n.className = cls;
    if (text !== undefined && text !== null) n.textContent = String(text);
    return n;
  }
  function readAddress() {
    var q = new URLSearchParams(location.search);
    var h = new URLSearchParams(location.hash.replace(/^#/, ""));
    state.status = h.get("status") || q.get("status") || "";
    state.onlyRejected = (h.get("rejected") || q.get("rejected")) === "1";
    state.page = Math.max(1, parseInt(h.get("page") || q.get("page") || "1", 10) || 1);
  }
  function writeAddress() {
    var h = new URLSearchParams();
    if (state.status) h.set("status", state.status);
    if (state.onlyRejected) h.set("rejected", "1");
    if (state.page > 1) h.set("page", String(state.page));
    var s = h.toString();
    history.replaceState(null, "", s ? "#" + s : location.pathname + location.search);
  }
  function saveRejected() {
    try { localStorage.setItem(storeKey, JSON.stringify(rejected)); } catch (e) { /* private mode */ }
    document.getElementById("nrejected").textContent = Object.keys(rejected).length + " rejected";
  }
  function visible() {
    return data.rows.filter(function (r) {
      if (state.status && r[F.status] !== state.status) return false;
      if (state.onlyRejected && !rejected[r[F.id]]) return false;
      return true;
    });
  }
  function image(link, label) {
    var fig = el("figure");
    if (link) {
      var img = el("img");
      img.loading = "lazy";
      img.alt = label;
      img.addEventListener("load", countImages);
      img.addEventListener("error", countImages);
      img.src = link;
      fig.appendChild(img);
    } else {
      fig.appendChild(el("div", "missing", label));
    }
    fig.appendChild(el("figcaption", null, label));
    return fig;
  }
  function field(dl, name, value, cls) {
    if (value === "" || value === null || value === undefined) return;
    dl.appendChild(el("dt", null, name));
    dl.appendChild(el("dd", cls, value));
  }
  function rowNode(r) {
    var id = r[F.id], node = el("section", "row " + r[F.status]);
    node.dataset.status = r[F.status];
    node.dataset.row = r[F.row];
    if (rejected[id]) node.classList.add("rejected");
    var ins = el("div", "imgs");
    r[F.inputs].forEach(function (inp, i) { ins.appendChild(image(inp[0], inp[0] ? "input " + (i + 1) : inp[1])); });
    if (!r[F.inputs].length) ins.appendChild(el("div", "missing", "no input"));
    var out = el("div", "imgs");
    out.appendChild(image(r[F.output], r[F.output] ? "output" : "no output"));
    var dl = el("dl");
    field(dl, "row", r[F.row]);
    field(dl, "id", id);
    field(dl, "status", r[F.status]);
    field(dl, "reason", r[F.error], "error");
    field(dl, "model", r[F.model]);
    field(dl, "seed", r[F.seed]);
    field(dl, "run", r[F.run]);
    field(dl, "prompt", r[F.prompt]);
    var mark = el("label", null, " rejected");
    var box = el("input");
    box.type = "checkbox";
    box.className = "reject";
    box.checked = !!rejected[id];
    box.addEventListener("change", function () {
      if (box.checked) rejected[id] = 1; else delete rejected[id];
      node.classList.toggle("rejected", box.checked);
      saveRejected();
    });
    mark.insertBefore(box, mark.firstChild);
    dl.appendChild(el("dt", null, "review"));
    var dd = el("dd");
    dd.appendChild(mark);
    dl.appendChild(dd);
    node.appendChild(ins);
    node.appendChild(out);
    node.appendChild(dl);
    return node;
  }
  function countImages() {
    var imgs = document.querySelectorAll("#rows img"), loaded = 0, failed = 0;
    imgs.forEach(function (img) {
      if (img.complete && img.naturalWidth > 0) loaded += 1;
      else if (img.complete) failed += 1;
    });
    document.body.dataset.imagesLoaded = String(loaded);
    document.body.dataset.imagesFailed = String(failed);
    document.body.dataset.imagesTotal = String(imgs.length);
    var settled = loaded + failed === imgs.length;
    document.body.dataset.images = loaded === imgs.length ? "complete" : (settled ? "errors" : "pending");
  }
  function render() {
    var rows = visible(), pages = Math.max(1, Math.ceil(rows.length / data.pageSize));
    state.page = Math.min(state.page, pages);
    var main = document.getElementById("rows");
    main.textContent = "";
    rows.slice((state.page - 1) * data.pageSize, state.page * data.pageSize).forEach(function (r) {
      main.appendChild(rowNode(r));
    });
    document.getElementById("page").textContent = "page " + state.page + " of " + pages + " (" + rows.length + " rows)";
    document.getElementById("prev").disabled = state.page <= 1;
    document.getElementById("next").disabled = state.page >= pages;
    document.getElementById("status").value = state.status;
    document.getElementById("only-rejected").checked = state.onlyRejected;
    document.body.dataset.page = String(state.page);
    document.body.dataset.shown = String(main.children.length);
    writeAddress();
    countImages();
  }
  function download() {
    var ids = data.rows.map(function (r) { return r[F.id]; }).filter(function (id) { return rejected[id]; });
    var blob = new Blob([ids.join("\n") + (ids.length ? "\n" : "")], {type: "text/plain"});
    var a = el("a");
    a.href = URL.createObjectURL(blob);
    a.download = data.run + "-rejected-ids.txt";
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }

  document.getElementById("title").textContent = data.title;
  document.title = "kontext-batch " + data.title;
  var summary = Object.keys(data.counts).sort().map(function (k) { return k + " " + data.counts[k]; });
  document.getElementById("summary").textContent = data.rows.length + " rows: " + summary.join(", ");
  var select = document.getElementById("status");
  select.appendChild(el("option", null, "all")).value = "";
  Object.keys(data.counts).sort().forEach(function (k) { select.appendChild(el("option", null, k)).value = k; });
  select.addEventListener("change", function () { state.status = select.value; state.page = 1; render(); });
  document.getElementById("only-rejected").addEventListener("change", function (e) {
    state.onlyRejected = e.target.checked; state.page = 1; render();
  });
  function turn(by) { state.page += by; render(); window.scrollTo(0, 0); }
  document.getElementById("prev").addEventListener("click", function () { turn(-1); });
  document.getElementById("next").addEventListener("click", function () { turn(1); });
  document.getElementById("download").addEventListener("click", download);
  window.addEventListener("hashchange", function () { readAddress(); render(); });
  readAddress();
  saveRejected();
  render();
})();
"""
