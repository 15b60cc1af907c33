// topicstream live topic board: polls /api/topics and draws the topics, no dependencies.
"use strict";
(function () {
  const REFRESH_MS = 3000;
  const PALETTE = ["#2f6fde", "#d9480f", "#2b8a3e", "#9c36b5", "#e67700", "#0c8599",
                   "#c2255c", "#5c940d", "#1864ab", "#862e9c", "#a61e4d", "#495057"];
  const $ = (id) => document.getElementById(id);
  const state = { data: null, timer: null, inflight: false, nChosen: false };

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function fmt(x, digits) {
    if (x === null || x === undefined) return "–";
    return Number(x).toLocaleString(undefined, { maximumFractionDigits: digits || 0 });
  }

  // an inline SVG sparkline of the topic's size over the board's samples
  function sparkline(values) {
    const NS = "http://www.w3.org/2000/svg";
    const w = 90, h = 24, pad = 2;
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("width", w);
    svg.setAttribute("height", h);
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    const vals = values.length ? values : [0];
    const pts = vals.length === 1 ? [vals[0], vals[0]] : vals;
    const lo = Math.min(...pts), hi = Math.max(...pts);
    const span = hi - lo || 1;
    const xy = pts.map((v, i) => [pad + (i * (w - 2 * pad)) / (pts.length - 1),
                                  hi > lo ? h - pad - ((v - lo) / span) * (h - 2 * pad) : h / 2]);
    const line = xy.map((p) => p[0].toFixed(1) + "," + p[1].toFixed(1)).join(" ");
    const area = document.createElementNS(NS, "polygon");
    area.setAttribute("class", "area");
    area.setAttribute("points", `${pad},${h - pad} ${line} ${w - pad},${h - pad}`);
    const poly = document.createElementNS(NS, "polyline");
    poly.setAttribute("points", line);
    const title = document.createElementNS(NS, "title");
    title.textContent = "size over the last samples: " + vals.join(", ");
    svg.append(title, area, poly);
    return svg;
  }

  function topicCard(t, color) {
    const card = el("article", "topic" + (t.emerging ? " is-emerging" : ""));
    card.dataset.id = t.id;
    card.style.borderLeftColor = t.emerging ? "" : color;
    const head = el("div", "head");
    const kw = el("div", "kw");
    const words = t.keywords.length ? t.keywords : ["(no keywords yet)"];
    kw.append(document.createTextNode(words.slice(0, 3).join(", ")));
    if (words.length > 3) kw.append(el("span", "rest", ", " + words.slice(3).join(", ")));
    const right = el("div", "id");
    if (t.emerging) right.append(el("span", "badge emerging", "emerging"), " ");
    right.append("#" + t.id);
    head.append(kw, right);
    const nums = el("div", "nums");
    const size = el("span", "size");
    size.append("size ", el("b", "", fmt(t.size)));
    const g = t.growth || 0;
    const growth = el("span", "growth " + (g > 0.5 ? "up" : g < -0.5 ? "down" : ""));
    growth.title = `${fmt(t.recent, 1)} documents in the current bucket, usually ${fmt(t.baseline, 1)}`;
    growth.append("growth ", el("b", "", (g > 0 ? "+" : "") + fmt(g, 1)));
    nums.append(size, growth, sparkline(t.history || []));
    card.append(head, nums);
    if (t.exemplars.length) {
      const ul = el("ul", "ex");
      for (const x of t.exemplars.slice(0, 2)) ul.append(el("li", "", x));
      card.append(ul);
    }
    return card;
  }

  function render() {
    const data = state.data;
    if (!data) return;
    const board = $("board");
    const topics = data.topics;
    $("empty").hidden = topics.length > 0;
    $("empty").textContent = data.clusters === 0
      ? "No topics yet: waiting for documents."
      : `No topic among ${fmt(data.clusters)} has a keyword matching “${data.query}”.`;
    const macros = new Map(data.macros.map((m, i) => [m.id, Object.assign({ color: PALETTE[i % PALETTE.length] }, m)]));
    const frag = document.createDocumentFragment();
    if ($("group").checked) {
      const groups = new Map();
      for (const t of topics) {
        if (!groups.has(t.macro)) groups.set(t.macro, []);
        groups.get(t.macro).push(t);
      }
      for (const [mid, members] of groups) {
        const m = macros.get(mid) || { keywords: [], color: "#868e96", members: members.length, size: 0 };
        const sec = el("section", "group");
        sec.dataset.macro = mid;
        const h2 = el("h2");
        const sw = el("span", "swatch");
        sw.style.background = m.color;
        h2.append(sw, el("span", "", m.keywords.slice(0, 4).join(" · ") || "topic " + mid),
                  el("span", "meta", `${m.members} ${m.members === 1 ? "cluster" : "clusters"}, ${fmt(m.size)} documents`));
        const grid = el("div", "grid");
        for (const t of members) grid.append(topicCard(t, m.color));
        sec.append(h2, grid);
        frag.append(sec);
      }
    } else {
      const grid = el("div", "grid");
      for (const t of topics) grid.append(topicCard(t, (macros.get(t.macro) || {}).color || "#868e96"));
      frag.append(grid);
    }
    board.replaceChildren(frag);
    const emerging = topics.filter((t) => t.emerging).length;
    const stamp = new Date().toLocaleTimeString();
    $("status").classList.remove("error");
    $("status").textContent = `model ${data.model} · version ${fmt(data.version)} · ` +
      `${fmt(data.documents)} documents · ${fmt(data.clusters)} clusters in ` +
      `${data.macros.length} macro topics · ${emerging} emerging shown · updated ${stamp}`;
  }

  async function load() {
    if (state.inflight) return;
    state.inflight = true;
    const params = new URLSearchParams({ sort: $("sort").value });
    if (state.nChosen) params.set("n", $("n").value);  // else the server's default
    const q = $("q").value.trim();
    if (q) params.set("q", q);
    try {
      const resp = await fetch("api/topics?" + params.toString(), { cache: "no-store" });
      const body = await resp.json();
      if (!resp.ok) throw new Error(body.error || resp.statusText);
      state.data = body;
      if (!state.nChosen) showN(body.n);
      render();
    } catch (err) {
      $("status").classList.add("error");
      $("status").textContent = "cannot load topics: " + err.message + " (retrying)";
    } finally {
      state.inflight = false;
    }
  }

  // the server's default count, shown in the selector (added to it when not one of its options)
  function showN(n) {
    const sel = $("n");
    if (![...sel.options].some((o) => Number(o.value) === n)) {
      const opt = el("option", "", String(n));
      const after = [...sel.options].find((o) => Number(o.value) > n);
      sel.insertBefore(opt, after || null);
    }
    sel.value = String(n);
  }

  function schedule() {
    clearInterval(state.timer);
    state.timer = setInterval(load, REFRESH_MS);
  }

  let typing = null;
  $("q").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(load, 250); });
  $("sort").addEventListener("change", load);
  $("n").addEventListener("change", () => { state.nChosen = true; load(); });
  $("group").addEventListener("change", render);
  $("every").textContent = REFRESH_MS / 1000;
  const asked = new URLSearchParams(location.search);  // a link may choose the view: ?sort=growth&q=flu
  if ([...$("sort").options].some((o) => o.value === asked.get("sort"))) $("sort").value = asked.get("sort");
  if (asked.get("q")) $("q").value = asked.get("q");
  load();
  schedule();
})();
